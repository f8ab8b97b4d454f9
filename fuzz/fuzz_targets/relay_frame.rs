//! Parses arbitrary bytes as a stream of relay frames. Parsing may fail but never panic,
//! and whatever parses must re-encode to the exact bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::frame::FrameDecoder;
use postern_proto::relay::{MAX_RELAY_FRAME_LEN, RelayFrame};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(MAX_RELAY_FRAME_LEN);
    decoder.push(data);
    while let Ok(Some(frame)) = decoder.next_frame() {
        if let Ok(relay) = RelayFrame::parse(&frame) {
            assert_eq!(relay.to_frame().unwrap(), frame);
        }
    }
});

//! Feeds arbitrary bytes, in arbitrary chunks, to the frame decoder, and every frame it
//! yields to the control-message decoder. Neither may panic, and the decoder must keep its
//! promise of never buffering an oversized frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::control::ControlCodec;
use postern_proto::frame::FrameDecoder;

const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let codec = ControlCodec {
        max_frame_len: MAX_FRAME,
        max_message_len: 1 << 20,
        compress_threshold: 256,
    };
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    for piece in rest.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() < MAX_FRAME);
                    if let Ok(message) = codec.decode(&frame) {
                        // Whatever decodes must encode again.
                        let _ = codec.encode(&message).unwrap();
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

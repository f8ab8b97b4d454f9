//! Parses arbitrary bytes as a funnel hop hello and as a reply, the way the node and the
//! ingress read them: the prefix first, then exactly one frame. Parsing may fail but never
//! panic, and a hello that parses must re-encode to the exact bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::funnel_hop::{FunnelHello, HopReply, hello_frame_len, reply_frame_len};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(len)) = hello_frame_len(data)
        && let Some(frame) = data.get(..len)
        && let Ok(hello) = FunnelHello::decode(frame)
    {
        assert_eq!(hello.encode().unwrap(), frame);
    }
    let _ = FunnelHello::decode(data);
    if let Ok(Some(len)) = reply_frame_len(data)
        && let Some(frame) = data.get(..len)
        && let Ok(reply) = HopReply::decode(frame)
    {
        // The re-encoded reply parses back to the same accept or refusal code (the reason
        // may be cut: lossy UTF-8 can grow past the length limit).
        let again = HopReply::decode(&reply.encode()).unwrap();
        match (reply, again) {
            (HopReply::Accepted, HopReply::Accepted) => {}
            (HopReply::Refused(a), HopReply::Refused(b)) => assert_eq!(a.code, b.code),
            (a, b) => panic!("{a:?} re-encoded as {b:?}"),
        }
    }
    let _ = HopReply::decode(data);
});

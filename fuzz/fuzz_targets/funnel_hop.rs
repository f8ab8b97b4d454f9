//! Parses arbitrary bytes as a funnel hop hello and as a reply, the way the node and the
//! ingress read them: the prefix first, then exactly one frame. Parsing may fail but never
//! panic, and a hello that parses must re-encode to the exact bytes it came from. The same
//! bytes are also read as the per-request context header of a pooled stream (whole, and
//! split at a `,` into several header values), which must round-trip too. Last, the bytes
//! (as text, split at `|`) are the identity a gate made from a request: the gate, the
//! principal, then attribute names and values; the ingress's lossy encoding of them must
//! succeed and decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::funnel_hop::{
    FunnelHello, FunnelHostname, HopReply, LossyAdmission, hello_frame_len, reply_frame_len,
};

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
    if let Ok(context) = FunnelHello::decode_context(data) {
        assert!(!context.per_request_context);
        let again = context.encode_context().unwrap();
        assert_eq!(
            FunnelHello::decode_context(again.as_bytes()).unwrap(),
            context
        );
    }
    let stream = FunnelHello {
        client: "0.0.0.0:0".parse().unwrap(),
        target_port: 3000,
        hostname: FunnelHostname::parse("hooks.example.com").unwrap(),
        admission: None,
        per_request_context: true,
    };
    if let Ok(context) = stream.request_context(data.split(|&b| b == b',')) {
        assert_eq!(context.target_port, stream.target_port);
        assert_eq!(context.hostname, stream.hostname);
    }

    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('|');
    let gate = parts.next().unwrap_or_default();
    let principal = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let attributes: Vec<(&str, &str)> = rest
        .chunks(2)
        .map(|pair| {
            let at = |i: usize| pair.get(i).copied().unwrap_or_default();
            (at(0), at(1))
        })
        .collect();
    let admission = LossyAdmission {
        gate,
        principal,
        attributes: &attributes,
    };
    let frame = FunnelHello::encode_lossy(
        "203.0.113.7:51000".parse().unwrap(),
        3000,
        &stream.hostname,
        Some(admission),
    )
    .unwrap();
    let hello = FunnelHello::decode(&frame).unwrap();
    assert!(hello.admission.is_some());
});

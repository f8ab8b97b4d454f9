//! Fuzzes the webhook signature-header parsers: Stripe-Signature, Paddle-Signature,
//! Standard Webhooks `v1,` lists, PagerDuty lists, timestamps, hex/base64 signatures and
//! Twilio form params. Nothing may panic.
//!
//! From the repository root: `cargo +nightly fuzz run signature_headers -- -max_total_time=30`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_ingress::gate::webhook::parse;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse::parse_stamped(&text, ',', "t", "v1");
    let _ = parse::parse_stamped(&text, ';', "ts", "h1");
    let _ = parse::parse_versioned_list(&text, "v1");
    let _ = parse::parse_versioned_list(&text, "v1a");
    let _ = parse::parse_prefixed_list(&text, "v1=");
    let _ = parse::parse_unix(&text);
    let _ = parse::parse_rfc3339(&text);
    let _ = parse::decode_hex(&text);
    // The stack form agrees with the heap form wherever the text fits.
    let mut buffer = [0u8; 64];
    if text.len() <= 128 {
        assert_eq!(
            parse::decode_hex_into(&text, &mut buffer).ok(),
            parse::decode_hex(&text).ok().as_deref()
        );
    }
    let _ = parse::decode_base64(&text);
    let _ = parse::parse_form(data);
    let _ = parse::url_query(&text);
});

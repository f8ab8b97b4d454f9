//! The SOCKS5 greeting and request parsers must answer "need more", a destination, or an
//! error for any bytes, never panic, and never claim more bytes than they were given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_node::userspace::socks5::{parse_greeting, parse_request, parse_request_target};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(consumed)) = parse_greeting(data) {
        assert!(consumed <= data.len());
    }
    if let Ok(Some((_, consumed))) = parse_request(data) {
        assert!(consumed <= data.len());
    }
    if let Ok(Some((_, consumed))) = parse_request_target(data) {
        assert!(consumed <= data.len());
    }
});

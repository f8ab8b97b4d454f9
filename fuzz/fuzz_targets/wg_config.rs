//! The wg-quick parser must return `Ok` or a located error for any text, never panic, and
//! never put key material into an error message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_node::wg_config::WgConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match WgConfig::parse("fuzz.conf", text) {
        Ok(config) => {
            // Debug output must redact secrets whatever the input was.
            let debug = format!("{config:?}");
            assert!(!debug.contains("PrivateKey([") && debug.contains("<redacted>"));
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("fuzz.conf"), "{message}");
        }
    }
});

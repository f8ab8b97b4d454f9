//! Fuzzes the OIDC gate's cookie decoder (session and login cookies): nothing may panic,
//! and nothing but a value this key signed may decode.
//!
//! From the repository root: `cargo +nightly fuzz run oidc_cookie -- -max_total_time=30`.

#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use postern_ingress::gate::Secret;
use postern_ingress::gate::oidc::{CookieCodec, CookieError, PendingLogin, Session};

fuzz_target!(|data: &[u8]| {
    let Ok(codec) = CookieCodec::new(Secret::new(vec![42u8; 32])) else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    assert!(codec.session(&text, "app.test", now).is_err());
    assert!(codec.decode::<PendingLogin>("login", &text).is_err());
    // A signed value survives the round trip whatever its contents,
    let session = Session {
        host: "app.test".into(),
        sub: text.to_string(),
        email: text.to_string(),
        name: None,
        groups: vec![text.to_string()],
        exp: 1_800_000_100,
    };
    // Whatever `encode` signs decodes again; what it refuses is refused for its size.
    match codec.encode("session", &session) {
        Ok(encoded) => assert_eq!(codec.session(&encoded, "app.test", now).ok(), Some(session)),
        Err(error) => assert!(matches!(error, CookieError::TooLarge(n) if n > 4096)),
    }
});

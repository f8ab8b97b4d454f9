//! Fuzzes the `ingress.toml` parser and the PEM certificate loader: nothing may panic.
//!
//! From the repository root: `cargo +nightly fuzz run ingress_config -- -max_total_time=30`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_ingress::certs::{StoredCert, certified_key_from_pem};
use postern_ingress::config::IngressConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(mut config) = IngressConfig::parse(&text) {
        // OIDC gates make their session key in the state directory: keep it in a
        // scratch directory, never where the fuzzed text points.
        let scratch = std::env::temp_dir().join("postern-fuzz-ingress-config");
        config.state_dir = scratch.clone();
        for funnel in &mut config.funnels {
            for gate in &mut funnel.gates {
                if let Some(oidc) = &mut gate.oidc {
                    oidc.session_key_file = Some(scratch.join("session.key"));
                }
                if let Some(mtls) = &mut gate.mtls {
                    mtls.ca = scratch.join("no-such-ca.pem");
                }
            }
        }
        let _ = config.validate();
        let _ = config.funnels(&|_| Some("secret".to_string()));
    }
    let _ = StoredCert::from_pem(text.to_string(), text.to_string(), "fuzz");
    let _ = certified_key_from_pem(&text, &text, "fuzz");
});

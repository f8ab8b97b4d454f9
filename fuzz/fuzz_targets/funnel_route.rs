//! Fuzzes building a funnel route's gate chain from the coordination server's JSON
//! (`FunnelRoute` with arbitrary `GateSpec`s, modes and rate limits): nothing may panic,
//! whatever the provider names, prefixes, CA text or limits.
//!
//! From the repository root: `cargo +nightly fuzz run funnel_route -- -max_total_time=30`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_ingress::routes::{OidcDefaults, chain_from_route};
use postern_proto::funnel::FunnelRoute;

fuzz_target!(|data: &[u8]| {
    let Ok(route) = serde_json::from_slice::<FunnelRoute>(data) else {
        return;
    };
    let state = std::env::temp_dir().join("postern-ingress-fuzz-funnel-route");
    let oidc = OidcDefaults {
        issuer: "https://idp.example".into(),
        client_id: "edge".into(),
        client_secret: None,
        scopes: None,
        session_ttl: None,
    };
    let _ = chain_from_route(&route, None, &state, 1 << 20);
    let _ = chain_from_route(&route, Some(&oidc), &state, 1 << 20);
});

//! The two curl commands `postern dev` prints: one signed the way GitHub signs webhook
//! deliveries (`X-Hub-Signature-256: sha256=HEX(HMAC-SHA256(secret, body))`), which the edge
//! admits, and one with a forged signature, which the edge refuses before anything enters
//! the mesh.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The demo delivery's body.
pub(crate) const DEMO_BODY: &str = r#"{"zen":"Keep it logically awesome.","hook_id":1}"#;

/// The demo secret's environment variable: `postern dev` reads the secret from it when set,
/// and otherwise uses a fixed demo value (printed, since it protects nothing but the demo).
pub(crate) const SECRET_ENV: &str = "POSTERN_DEV_WEBHOOK_SECRET";

/// The value used when [`SECRET_ENV`] is not set.
pub(crate) const DEMO_SECRET: &str = "postern-dev-demo-secret";

/// `sha256=HEX` of `body` under `secret`, as GitHub sends it.
pub(crate) fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The two curl command lines: (signed, forged). `connect` is `HOST:PORT:127.0.0.1` for
/// `--resolve`, so no DNS is needed.
pub(crate) fn curl_commands(url: &str, resolve: &str, ca: &str, secret: &[u8]) -> (String, String) {
    let signed = github_signature(secret, DEMO_BODY.as_bytes());
    let forged = github_signature(b"not-the-secret", DEMO_BODY.as_bytes());
    // The edge refuses a delivery id it has already admitted (a replay), so each run of
    // the command sends a new one, as GitHub does for each delivery.
    let line = |signature: &str| {
        format!(
            "curl -sS --cacert {ca} --resolve {resolve} -H 'Content-Type: application/json' \
             -H 'X-GitHub-Event: ping' -H \"X-GitHub-Delivery: postern-dev-$(date +%s%N)\" \
             -H 'X-Hub-Signature-256: {signature}' --data '{DEMO_BODY}' -w '\\n%{{http_code}}\\n' {url}"
        )
    };
    (line(&signed), line(&forged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_githubs_published_example() {
        // From GitHub's "Validating webhook deliveries" documentation.
        assert_eq!(
            github_signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn the_commands_differ_only_in_their_signature() {
        let (signed, forged) = curl_commands(
            "https://demo.funnel.localhost:8443/webhook",
            "demo.funnel.localhost:8443:127.0.0.1",
            "/tmp/ca.pem",
            DEMO_SECRET.as_bytes(),
        );
        assert!(signed.starts_with("curl "));
        assert!(forged.starts_with("curl "));
        assert_ne!(signed, forged);
        assert!(signed.contains(&github_signature(
            DEMO_SECRET.as_bytes(),
            DEMO_BODY.as_bytes()
        )));
    }
}

//! Test-only request builder and signers shared by the gate tests and benchmarks.
//!
//! The signers follow each provider's documented scheme; they exist so that providers
//! that publish no example vector can still be tested (each use says so).

#![allow(dead_code)]
// each test crate uses a different part
// Test-only helpers: a failed unwrap here is a broken test fixture, reported by the panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use postern_ingress::gate::{
    Decision, Gate, GateRequest, Provider, ReasonCode, Secret, WebhookGate, WebhookGateConfig,
};

/// A request to evaluate.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub truncated: bool,
}

impl Req {
    pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: Method::POST,
            url: url.to_string(),
            headers: HeaderMap::new(),
            body: body.into(),
            truncated: false,
        }
    }

    pub fn get(url: &str) -> Self {
        Self {
            method: Method::GET,
            ..Self::post(url, Vec::new())
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.headers.remove(name);
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn view(&self) -> GateRequest<'_> {
        GateRequest::new(
            &self.method,
            &self.url,
            &self.headers,
            &self.body,
            SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 40000)),
        )
        .with_body_truncated(self.truncated)
    }

    pub fn eval(&self, gate: &dyn Gate, now_secs: u64) -> Decision {
        gate.evaluate(&self.view(), at(now_secs))
    }
}

pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn gate(provider: Provider, secrets: &[&str]) -> WebhookGate {
    WebhookGate::new(WebhookGateConfig::new(
        provider,
        secrets.iter().map(|s| Secret::from(*s)).collect(),
    ))
    .unwrap()
}

pub fn gate_with(config: WebhookGateConfig) -> WebhookGate {
    WebhookGate::new(config).unwrap()
}

#[track_caller]
pub fn assert_allowed(decision: &Decision, principal: &str) {
    match decision {
        Decision::Allow { identity, .. } => assert_eq!(identity.principal, principal),
        other => panic!("expected Allow as {principal}, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_denied(decision: &Decision, reason: ReasonCode) {
    assert_eq!(
        decision.deny_reason(),
        Some(reason),
        "expected Deny({reason}), got {decision:?}"
    );
}

#[track_caller]
pub fn assert_responds(decision: &Decision, content_type: &str, body: &[u8]) {
    match decision {
        Decision::Respond {
            status,
            headers,
            body: got,
        } => {
            assert_eq!(status.as_u16(), 200);
            assert_eq!(headers[0].1, content_type);
            assert_eq!(
                String::from_utf8_lossy(got),
                String::from_utf8_lossy(body),
                "response body"
            );
        }
        other => panic!("expected Respond, got {other:?}"),
    }
}

// ---- test-only signers, following each provider's documented scheme ----

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn hexs(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// A fixed Ed25519 key for tests (never used outside them).
pub fn ed25519_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

pub fn ed25519_sign(key: &ed25519_dalek::SigningKey, message: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    key.sign(message).to_bytes().to_vec()
}

/// A fixed P-256 key for tests.
pub fn p256_key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
}

pub fn p256_public_der_b64(key: &p256::ecdsa::SigningKey) -> String {
    use p256::pkcs8::EncodePublicKey as _;
    b64(key.verifying_key().to_public_key_der().unwrap().as_bytes())
}

pub fn p256_sign_der(key: &p256::ecdsa::SigningKey, message: &[u8]) -> Vec<u8> {
    use p256::ecdsa::signature::Signer as _;
    let signature: p256::ecdsa::Signature = key.sign(message);
    signature.to_der().as_bytes().to_vec()
}

/// Signs a body as `provider` would, with `secret`, at `ts`, with delivery id `id`.
/// Covers every provider whose scheme is HMAC, for the tests and the benchmarks.
pub fn sign_hmac(provider: Provider, secret: &str, ts: u64, id: &str, req: Req) -> Req {
    let key = secret.as_bytes();
    let t = ts.to_string();
    let body = req.body.clone();
    match provider {
        Provider::Github => req
            .header(
                "x-hub-signature-256",
                &format!("sha256={}", hexs(&hmac_sha256(key, &[&body]))),
            )
            .header("x-github-delivery", id)
            .header("x-github-event", "push"),
        Provider::Stripe => req.header(
            "stripe-signature",
            &format!(
                "t={t},v1={}",
                hexs(&hmac_sha256(key, &[t.as_bytes(), b".", &body]))
            ),
        ),
        Provider::Slack => req
            .header(
                "x-slack-signature",
                &format!(
                    "v0={}",
                    hexs(&hmac_sha256(key, &[b"v0:", t.as_bytes(), b":", &body]))
                ),
            )
            .header("x-slack-request-timestamp", &t),
        Provider::Zoom => req
            .header(
                "x-zm-signature",
                &format!(
                    "v0={}",
                    hexs(&hmac_sha256(key, &[b"v0:", t.as_bytes(), b":", &body]))
                ),
            )
            .header("x-zm-request-timestamp", &t),
        Provider::Shopify => req
            .header("x-shopify-hmac-sha256", &b64(&hmac_sha256(key, &[&body])))
            .header("x-shopify-webhook-id", id),
        Provider::Linear => req
            .header("linear-signature", &hexs(&hmac_sha256(key, &[&body])))
            .header("linear-delivery", id),
        Provider::Pagerduty => req.header(
            "x-pagerduty-signature",
            &format!("v1={}", hexs(&hmac_sha256(key, &[&body]))),
        ),
        Provider::Paddle => req.header(
            "paddle-signature",
            &format!(
                "ts={t};h1={}",
                hexs(&hmac_sha256(key, &[t.as_bytes(), b":", &body]))
            ),
        ),
        Provider::Bitbucket => req
            .header(
                "x-hub-signature",
                &format!("sha256={}", hexs(&hmac_sha256(key, &[&body]))),
            )
            .header("x-request-uuid", id),
        Provider::Gitea => req
            .header("x-gitea-signature", &hexs(&hmac_sha256(key, &[&body])))
            .header("x-gitea-delivery", id),
        Provider::Intercom => req.header(
            "x-hub-signature",
            &format!("sha1={}", hexs(&hmac_sha1(key, &[&body]))),
        ),
        Provider::Square => {
            let url = req.url.clone();
            req.header(
                "x-square-hmacsha256-signature",
                &b64(&hmac_sha256(key, &[url.as_bytes(), &body])),
            )
        }
        Provider::Twitch => {
            let stamp = time::OffsetDateTime::from_unix_timestamp(ts as i64)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            req.header(
                "twitch-eventsub-message-signature",
                &format!(
                    "sha256={}",
                    hexs(&hmac_sha256(key, &[id.as_bytes(), stamp.as_bytes(), &body]))
                ),
            )
            .header("twitch-eventsub-message-id", id)
            .header("twitch-eventsub-message-timestamp", &stamp)
            .header("twitch-eventsub-message-type", "notification")
        }
        Provider::StandardWebhooks | Provider::Svix | Provider::GitlabSigned => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(secret.trim_start_matches("whsec_"))
                .unwrap();
            req.header("webhook-id", id)
                .header("webhook-timestamp", &t)
                .header(
                    "webhook-signature",
                    &format!(
                        "v1,{}",
                        b64(&hmac_sha256(
                            &raw,
                            &[id.as_bytes(), b".", t.as_bytes(), b".", &body]
                        ))
                    ),
                )
        }
        other => panic!("no HMAC signer for {other}"),
    }
}

//! Fuzzes every provider's whole webhook gate with the input as the value of every
//! signature, timestamp and id header and as the body: nothing may panic, whatever the
//! provider's family (HMAC, Ed25519, ECDSA, token, JSON and form bodies).
//!
//! From the repository root: `cargo +nightly fuzz run webhook_gate -- -max_total_time=30`.

#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use postern_ingress::gate::{Gate, GateRequest, Provider, Secret, WebhookGate, WebhookGateConfig};

fn gates() -> &'static Vec<WebhookGate> {
    static GATES: OnceLock<Vec<WebhookGate>> = OnceLock::new();
    GATES.get_or_init(|| {
        let secret_for = |provider: Provider| match provider {
            Provider::StandardWebhooks | Provider::Svix | Provider::GitlabSigned => {
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            }
            Provider::Discord => "dd74e21b0698ca4a6a983a7134a422d4b353611e0029dee93197d0cb57efee99",
            Provider::Sendgrid => "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==",
            _ => "fuzz-secret",
        };
        Provider::ALL
            .into_iter()
            .filter_map(|provider| {
                WebhookGate::new(WebhookGateConfig::new(
                    provider,
                    vec![Secret::from(secret_for(provider))],
                ))
                .ok()
            })
            .collect()
    })
}

const HEADERS: &[&str] = &[
    "stripe-signature",
    "paddle-signature",
    "webhook-signature",
    "webhook-timestamp",
    "webhook-id",
    "x-hub-signature-256",
    "x-hub-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-pagerduty-signature",
    "x-twilio-signature",
    "x-zm-signature",
    "x-zm-request-timestamp",
    "x-signature-ed25519",
    "x-signature-timestamp",
    "twitch-eventsub-message-signature",
    "twitch-eventsub-message-timestamp",
    "twitch-eventsub-message-id",
    "twitch-eventsub-message-type",
    "x-twilio-email-event-webhook-signature",
    "x-twilio-email-event-webhook-timestamp",
    "x-gitlab-token",
    "authorization",
    "x-okta-verification-challenge",
    "content-type",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // The whole gate: the input split into a header value and a body.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (value, body) = data.split_at(split);
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for name in HEADERS {
        headers.insert(HeaderName::from_static(name), value.clone());
    }
    let url = format!(
        "https://hook.example/in?bodySHA256={}",
        text.get(..8).unwrap_or("")
    );
    let client = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for method in [Method::POST, Method::GET] {
        let request = GateRequest::new(&method, &url, &headers, body, client);
        for gate in gates() {
            let _ = gate.evaluate(&request, now);
        }
    }

    // Past verification: sign the arbitrary body as Slack, Zoom and Twitch would, so the
    // handshake detection and JSON reading after a valid signature are fuzzed too.
    let stamp = "1700000000";
    let sign = |parts: &[&[u8]]| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"fuzz-secret").expect("any key length");
        for part in parts {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    };
    let slack_like = format!("v0={}", sign(&[b"v0:", stamp.as_bytes(), b":", data]));
    let twitch_stamp = "2023-11-14T22:13:20Z";
    let twitch = format!("sha256={}", sign(&[b"id-1", twitch_stamp.as_bytes(), data]));
    let mut signed = HeaderMap::new();
    for (name, value) in [
        ("x-slack-signature", slack_like.as_str()),
        ("x-slack-request-timestamp", stamp),
        ("x-zm-signature", slack_like.as_str()),
        ("x-zm-request-timestamp", stamp),
        ("twitch-eventsub-message-signature", twitch.as_str()),
        ("twitch-eventsub-message-timestamp", twitch_stamp),
        ("twitch-eventsub-message-id", "id-1"),
        (
            "twitch-eventsub-message-type",
            "webhook_callback_verification",
        ),
    ] {
        signed.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("ASCII header value"),
        );
    }
    let post = Method::POST;
    let request = GateRequest::new(&post, &url, &signed, data, client);
    for gate in gates() {
        let _ = gate.evaluate(&request, now);
    }
});

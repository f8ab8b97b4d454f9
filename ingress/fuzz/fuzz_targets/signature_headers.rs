//! Fuzzes the webhook signature-header parsers (Stripe-Signature, Paddle-Signature,
//! Standard Webhooks `v1,` lists, PagerDuty lists, timestamps, Twilio form params) and the
//! whole webhook gate with the input as header values and body: nothing may panic.
//!
//! Run: `cargo +nightly fuzz run signature_headers -- -max_total_time=30` from `ingress/`.

#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use postern_ingress::gate::webhook::parse;
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
    let _ = parse::parse_stamped(&text, ',', "t", "v1");
    let _ = parse::parse_stamped(&text, ';', "ts", "h1");
    let _ = parse::parse_versioned_list(&text, "v1");
    let _ = parse::parse_versioned_list(&text, "v1a");
    let _ = parse::parse_prefixed_list(&text, "v1=");
    let _ = parse::parse_unix(&text);
    let _ = parse::parse_rfc3339(&text);
    let _ = parse::decode_hex(&text);
    let _ = parse::decode_base64(&text);
    let _ = parse::parse_form(data);
    let _ = parse::url_query(&text);

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
    let url = format!("https://hook.example/in?bodySHA256={}", text.get(..8).unwrap_or(""));
    let client = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for method in [Method::POST, Method::GET] {
        let request = GateRequest::new(&method, &url, &headers, body, client);
        for gate in gates() {
            let _ = gate.evaluate(&request, now);
        }
    }
});

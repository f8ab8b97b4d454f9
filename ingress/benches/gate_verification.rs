//! Verification cost per request for each webhook verifier family, with 1 KiB and 64 KiB
//! bodies, against a no-gate baseline (a chain holding one pass-through gate) in the same
//! run. Every case runs through a one-gate `GateChain`, so the difference to the baseline
//! is the gate's own cost. Each iteration gets a freshly signed request with a new delivery
//! id (signing happens in criterion's untimed setup), so the replay cache admits it and its
//! cost is included.
//!
//! Run: `cargo bench -p postern-ingress --bench gate_verification`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/gate_support/mod.rs"]
mod gate_support;

use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gate_support::*;
use postern_ingress::gate::{GateChain, PassThroughGate, Provider};

const NOW: u64 = 1_700_000_000;
const SECRET: &str = "bench-secret-0123456789";
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A JSON body of exactly `size` bytes with a unique `id`.
fn body(size: usize, n: u64) -> String {
    let head = format!(r#"{{"id":"evt_{n:012}","pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

type Signer = Box<dyn Fn(usize, u64) -> Req>;

struct Case {
    family: &'static str,
    chain: GateChain,
    sign: Signer,
}

fn cases() -> Vec<Case> {
    let hmac = |provider: Provider, secret: &'static str| -> Signer {
        Box::new(move |size, n| {
            sign_hmac(
                provider,
                secret,
                NOW,
                &format!("id-{n}"),
                Req::post("https://hook.example/in", body(size, n)),
            )
        })
    };
    let discord_key = ed25519_key(9);
    let discord_public = hexs(discord_key.verifying_key().as_bytes());
    let sendgrid_key = p256_key(9);
    let sendgrid_public = p256_public_der_b64(&sendgrid_key);
    vec![
        Case {
            family: "baseline pass-through",
            chain: GateChain::gate(PassThroughGate),
            sign: Box::new(|size, n| Req::post("https://hook.example/in", body(size, n))),
        },
        Case {
            family: "hmac body (github)",
            chain: GateChain::gate(gate(Provider::Github, &[SECRET])),
            sign: hmac(Provider::Github, SECRET),
        },
        Case {
            family: "hmac body, rotation: 2nd of 2 secrets (github)",
            chain: GateChain::gate(gate(Provider::Github, &["the-new-secret", SECRET])),
            sign: hmac(Provider::Github, SECRET),
        },
        Case {
            family: "hmac ts+body (slack)",
            chain: GateChain::gate(gate(Provider::Slack, &[SECRET])),
            sign: hmac(Provider::Slack, SECRET),
        },
        Case {
            family: "hmac ts+body, json id (stripe)",
            chain: GateChain::gate(gate(Provider::Stripe, &[SECRET])),
            sign: hmac(Provider::Stripe, SECRET),
        },
        Case {
            family: "hmac id.ts.body (standard-webhooks)",
            chain: GateChain::gate(gate(Provider::StandardWebhooks, &[SW_SECRET])),
            sign: hmac(Provider::StandardWebhooks, SW_SECRET),
        },
        Case {
            family: "hmac url+body (square)",
            chain: GateChain::gate(gate(Provider::Square, &[SECRET])),
            sign: hmac(Provider::Square, SECRET),
        },
        Case {
            family: "hmac url+bodySHA256 (twilio json)",
            chain: GateChain::gate(gate(Provider::Twilio, &[SECRET])),
            sign: Box::new(|size, n| {
                let body = body(size, n);
                let hash = hexs(&<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
                let url = format!("https://hook.example/in?bodySHA256={hash}");
                let signature = b64(&hmac_sha1(SECRET.as_bytes(), &[url.as_bytes()]));
                Req::post(&url, body)
                    .header("content-type", "application/json")
                    .header("x-twilio-signature", &signature)
                    .header("i-twilio-idempotency-token", &format!("id-{n}"))
            }),
        },
        Case {
            family: "hmac fields in body (mailgun)",
            chain: GateChain::gate(gate(Provider::Mailgun, &[SECRET])),
            sign: Box::new(|size, n| {
                let token = format!("tok-{n}");
                let signature = hexs(&hmac_sha256(
                    SECRET.as_bytes(),
                    &[NOW.to_string().as_bytes(), token.as_bytes()],
                ));
                let head = format!(
                    r#"{{"signature":{{"timestamp":"{NOW}","token":"{token}","signature":"{signature}"}},"pad":""#
                );
                let pad = size.saturating_sub(head.len() + 2);
                Req::post(
                    "https://hook.example/in",
                    format!("{head}{}\"}}", "x".repeat(pad)),
                )
            }),
        },
        Case {
            family: "ed25519 (discord)",
            chain: GateChain::gate(gate(Provider::Discord, &[&discord_public])),
            sign: Box::new(move |size, n| {
                let body = body(size, n);
                let signature = ed25519_sign(&discord_key, format!("{NOW}{body}").as_bytes());
                Req::post("https://hook.example/in", body)
                    .header("x-signature-ed25519", &hexs(&signature))
                    .header("x-signature-timestamp", &NOW.to_string())
            }),
        },
        Case {
            family: "ecdsa p-256 (sendgrid)",
            chain: GateChain::gate(gate(Provider::Sendgrid, &[&sendgrid_public])),
            sign: Box::new(move |size, n| {
                let body = body(size, n);
                let signature = p256_sign_der(&sendgrid_key, format!("{NOW}{body}").as_bytes());
                Req::post("https://hook.example/in", body)
                    .header("x-twilio-email-event-webhook-signature", &b64(&signature))
                    .header("x-twilio-email-event-webhook-timestamp", &NOW.to_string())
            }),
        },
        Case {
            family: "static token (gitlab)",
            chain: GateChain::gate(gate(Provider::Gitlab, &[SECRET])),
            sign: Box::new(|size, n| {
                Req::post("https://hook.example/in", body(size, n))
                    .header("x-gitlab-token", SECRET)
                    .header("idempotency-key", &format!("id-{n}"))
            }),
        },
        Case {
            family: "static token, no delivery id (gitlab)",
            chain: GateChain::gate(gate(Provider::Gitlab, &[SECRET])),
            sign: Box::new(|size, n| {
                Req::post("https://hook.example/in", body(size, n)).header("x-gitlab-token", SECRET)
            }),
        },
    ]
}

fn verification(c: &mut Criterion) {
    for size in [1024usize, 64 * 1024] {
        let mut group = c.benchmark_group(format!("gate_verification/{}KiB", size / 1024));
        group.throughput(Throughput::Bytes(size as u64));
        for case in cases() {
            let counter = Cell::new(0u64);
            // Every request must be admitted: a denial would measure the cheap path.
            let probe = (case.sign)(size, u64::MAX);
            assert!(
                case.chain
                    .evaluate(&probe.view(), at(NOW))
                    .decision
                    .is_allow(),
                "{} does not admit its own signed request",
                case.family
            );
            group.bench_function(BenchmarkId::from_parameter(case.family), |b| {
                b.iter_batched_ref(
                    || {
                        counter.set(counter.get() + 1);
                        (case.sign)(size, counter.get())
                    },
                    |request| black_box(case.chain.evaluate(&request.view(), at(NOW))),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = verification
}
criterion_main!(benches);

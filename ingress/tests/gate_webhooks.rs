//! Webhook gate tests, one section per provider: the provider's own published example
//! vector where it publishes one (source URL next to it), otherwise a vector built with
//! the test-only signer from the documented scheme (said so at the test); then forged,
//! stale and truncated variants, secret rotation, replay, and the challenge answers.

mod gate_support;

use gate_support::*;
use postern_ingress::gate::{
    Decision, Provider, ReasonCode, Secret, WebhookGateConfig, webhook::DEFAULT_MAX_BODY_BYTES,
};

const NOW: u64 = 1_700_000_000;

// ---------------------------------------------------------------- GitHub

// https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_BODY: &str = "Hello, World!";
const GITHUB_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

fn github_request(signature: &str, delivery: &str) -> Req {
    Req::post("https://hook.example/gh", GITHUB_BODY)
        .header("x-hub-signature-256", signature)
        .header("x-github-delivery", delivery)
        .header("x-github-event", "push")
}

#[test]
fn github_documented_vector_is_admitted_with_delivery_and_event() {
    let gate = gate(Provider::Github, &[GITHUB_SECRET]);
    match github_request(GITHUB_SIGNATURE, "72d3162e-cc78-11e3-81ab-4c9367dc0958").eval(&gate, NOW)
    {
        Decision::Allow { gate, identity } => {
            assert_eq!(gate, "webhook:github");
            assert_eq!(identity.principal, "webhook:github");
            assert_eq!(
                identity.attributes,
                vec![
                    (
                        "Delivery".into(),
                        "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string()
                    ),
                    ("Event".into(), "push".to_string()),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn github_forged_truncated_and_missing_signatures_are_refused() {
    let gate = gate(Provider::Github, &[GITHUB_SECRET]);
    let forged = GITHUB_SIGNATURE.replace("757107", "757108");
    assert_denied(
        &github_request(&forged, "a").eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    // One hex digit cut: no longer hex.
    let odd = &GITHUB_SIGNATURE[..GITHUB_SIGNATURE.len() - 1];
    assert_denied(
        &github_request(odd, "b").eval(&gate, NOW),
        ReasonCode::SignatureMalformed,
    );
    // One byte cut: valid hex of the wrong length.
    let short = &GITHUB_SIGNATURE[..GITHUB_SIGNATURE.len() - 2];
    assert_denied(
        &github_request(short, "c").eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    // Wrong prefix (the SHA-1 header's format).
    let sha1 = GITHUB_SIGNATURE.replace("sha256=", "sha1=");
    assert_denied(
        &github_request(&sha1, "d").eval(&gate, NOW),
        ReasonCode::SignatureMalformed,
    );
    let missing = github_request(GITHUB_SIGNATURE, "e").without("x-hub-signature-256");
    assert_denied(&missing.eval(&gate, NOW), ReasonCode::SignatureMissing);
    // The body altered by one byte.
    let altered = github_request(GITHUB_SIGNATURE, "f").body("Hello, World?");
    assert_denied(&altered.eval(&gate, NOW), ReasonCode::SignatureMismatch);
    // The header repeated: which copy to trust is ambiguous.
    let twice =
        github_request(GITHUB_SIGNATURE, "g").header("x-hub-signature-256", GITHUB_SIGNATURE);
    assert_denied(&twice.eval(&gate, NOW), ReasonCode::SignatureMalformed);
}

#[test]
fn github_rotation_accepts_old_and_new_secret() {
    let gate = gate(Provider::Github, &["the new secret", GITHUB_SECRET]);
    assert_allowed(
        &github_request(GITHUB_SIGNATURE, "1").eval(&gate, NOW),
        "webhook:github",
    );
    let new = sign_hmac(
        Provider::Github,
        "the new secret",
        NOW,
        "2",
        Req::post("https://h/", "x"),
    );
    assert_allowed(&new.eval(&gate, NOW), "webhook:github");
    let retired = gate_support::gate(Provider::Github, &["the new secret"]);
    assert_denied(
        &github_request(GITHUB_SIGNATURE, "3").eval(&retired, NOW),
        ReasonCode::SignatureMismatch,
    );
}

#[test]
fn github_replayed_delivery_is_refused_inside_the_window_only() {
    let gate = gate(Provider::Github, &[GITHUB_SECRET]);
    let request = github_request(GITHUB_SIGNATURE, "delivery-1");
    assert_allowed(&request.eval(&gate, NOW), "webhook:github");
    assert_denied(
        &request.eval(&gate, NOW + 299),
        ReasonCode::ReplayedDelivery,
    );
    // Another delivery id is another delivery.
    assert_allowed(
        &github_request(GITHUB_SIGNATURE, "delivery-2").eval(&gate, NOW + 1),
        "webhook:github",
    );
    // After the window the id has been forgotten (GitHub signs no timestamp).
    assert_allowed(&request.eval(&gate, NOW + 301), "webhook:github");
    // The server may release an id whose delivery failed, so the retry gets in.
    gate.forget_delivery("delivery-1", None);
    assert_allowed(&request.eval(&gate, NOW + 302), "webhook:github");
}

#[test]
fn bodies_over_the_bound_are_refused_before_verification() {
    let mut config = WebhookGateConfig::new(Provider::Github, vec![Secret::from(GITHUB_SECRET)]);
    config.max_body_bytes = 8;
    let gate = gate_with(config);
    assert_denied(
        &github_request(GITHUB_SIGNATURE, "x").eval(&gate, NOW),
        ReasonCode::BodyTooLarge,
    );

    let gate = gate_support::gate(Provider::Github, &[GITHUB_SECRET]);
    let mut cut = github_request(GITHUB_SIGNATURE, "y");
    cut.truncated = true;
    assert_denied(&cut.eval(&gate, NOW), ReasonCode::BodyTooLarge);
    assert_eq!(DEFAULT_MAX_BODY_BYTES, 5 * 1024 * 1024);
}

#[test]
fn wrong_method_is_refused() {
    let gate = gate(Provider::Github, &[GITHUB_SECRET]);
    let mut request = github_request(GITHUB_SIGNATURE, "m");
    request.method = http::Method::PUT;
    assert_denied(&request.eval(&gate, NOW), ReasonCode::MethodNotAllowed);
}

// ---------------------------------------------------------------- Slack

// https://api.slack.com/authentication/verifying-requests-from-slack (worked example)
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_TS: u64 = 1_531_420_618;
const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

fn slack_request() -> Req {
    Req::post("https://hook.example/slack", SLACK_BODY)
        .header("x-slack-signature", SLACK_SIGNATURE)
        .header("x-slack-request-timestamp", &SLACK_TS.to_string())
}

#[test]
fn slack_documented_vector_window_and_forgery() {
    let gate = gate(Provider::Slack, &[SLACK_SECRET]);
    assert_allowed(&slack_request().eval(&gate, SLACK_TS + 10), "webhook:slack");
    assert_allowed(
        &slack_request().eval(&gate, SLACK_TS + 300),
        "webhook:slack",
    );
    assert_denied(
        &slack_request().eval(&gate, SLACK_TS + 301),
        ReasonCode::TimestampStale,
    );
    assert_denied(
        &slack_request().eval(&gate, SLACK_TS - 301),
        ReasonCode::TimestampStale,
    );
    // The timestamp is signed: moving it to look fresh breaks the signature.
    let moved = slack_request()
        .without("x-slack-request-timestamp")
        .header("x-slack-request-timestamp", &(SLACK_TS + 1000).to_string());
    assert_denied(
        &moved.eval(&gate, SLACK_TS + 1000),
        ReasonCode::SignatureMismatch,
    );
    let no_ts = slack_request().without("x-slack-request-timestamp");
    assert_denied(&no_ts.eval(&gate, SLACK_TS), ReasonCode::TimestampMissing);
    let bad_ts = slack_request()
        .without("x-slack-request-timestamp")
        .header("x-slack-request-timestamp", "15314e6");
    assert_denied(
        &bad_ts.eval(&gate, SLACK_TS),
        ReasonCode::TimestampMalformed,
    );
    let mut window = WebhookGateConfig::new(Provider::Slack, vec![Secret::from(SLACK_SECRET)]);
    window.tolerance_secs = Some(10);
    let strict = gate_with(window);
    assert_denied(
        &slack_request().eval(&strict, SLACK_TS + 11),
        ReasonCode::TimestampStale,
    );
}

#[test]
fn slack_url_verification_is_answered_after_verification() {
    // Slack publishes no signed url_verification example: built with the test signer.
    let gate = gate(Provider::Slack, &[SLACK_SECRET]);
    let body = r#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let request = sign_hmac(
        Provider::Slack,
        SLACK_SECRET,
        NOW,
        "",
        Req::post("https://h/slack", body),
    );
    assert_responds(
        &request.eval(&gate, NOW),
        "text/plain",
        b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
    );
    let unsigned = Req::post("https://h/slack", body);
    assert_denied(&unsigned.eval(&gate, NOW), ReasonCode::SignatureMissing);
}

// ---------------------------------------------------------------- Standard Webhooks / Svix

// The Standard Webhooks reference libraries' vector, TestSymmetricWebhookSign in
// https://github.com/standard-webhooks/standard-webhooks/blob/main/libraries/go/webhook_symmetric_test.go
// (the same vector is in each of the specification's reference libraries)
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: u64 = 1_614_265_330;
const SW_BODY: &str = r#"{"test": 2432232314}"#;
const SW_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn standard_request(prefix: &str, signature: &str) -> Req {
    Req::post("https://hook.example/sw", SW_BODY)
        .header(&format!("{prefix}-id"), SW_ID)
        .header(&format!("{prefix}-timestamp"), &SW_TS.to_string())
        .header(&format!("{prefix}-signature"), signature)
}

#[test]
fn standard_webhooks_spec_vector_with_either_header_prefix() {
    let gate = gate(Provider::StandardWebhooks, &[SW_SECRET]);
    assert_allowed(
        &standard_request("webhook", SW_SIGNATURE).eval(&gate, SW_TS),
        "webhook:standard-webhooks",
    );
    let svix = gate_support::gate(Provider::Svix, &[SW_SECRET]);
    assert_allowed(
        &standard_request("svix", SW_SIGNATURE).eval(&svix, SW_TS + 5),
        "webhook:svix",
    );
    // A bare base64 secret (without `whsec_`) is the same key.
    let bare = gate_support::gate(
        Provider::StandardWebhooks,
        &["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    );
    assert_allowed(
        &standard_request("webhook", SW_SIGNATURE).eval(&bare, SW_TS),
        "webhook:standard-webhooks",
    );
}

#[test]
fn standard_webhooks_rotation_list_forgery_staleness_and_replay() {
    let gate = gate(Provider::StandardWebhooks, &[SW_SECRET]);
    // Rotation: the sender signs with old and new secret; any one match admits.
    let listed =
        format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {SW_SIGNATURE} v2,ignored");
    assert_allowed(
        &standard_request("webhook", &listed).eval(&gate, SW_TS),
        "webhook:standard-webhooks",
    );
    assert_denied(
        &standard_request("webhook", &listed).eval(&gate, SW_TS + 1),
        ReasonCode::ReplayedDelivery,
    );
    let gate = gate_support::gate(Provider::StandardWebhooks, &[SW_SECRET]);
    let forged = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF=";
    assert_denied(
        &standard_request("webhook", forged).eval(&gate, SW_TS),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &standard_request("webhook", "v1g0hM9").eval(&gate, SW_TS),
        ReasonCode::SignatureMalformed,
    );
    assert_denied(
        &standard_request("webhook", "v2,abc").eval(&gate, SW_TS),
        ReasonCode::SignatureMalformed,
    );
    assert_denied(
        &standard_request("webhook", SW_SIGNATURE).eval(&gate, SW_TS + 301),
        ReasonCode::TimestampStale,
    );
    let other_id = standard_request("webhook", SW_SIGNATURE)
        .without("webhook-id")
        .header("webhook-id", "msg_other");
    assert_denied(&other_id.eval(&gate, SW_TS), ReasonCode::SignatureMismatch);
}

#[test]
fn standard_webhooks_retry_with_new_timestamp_is_not_a_replay() {
    // A provider retry re-signs the same id with a new timestamp: that is not a replay.
    // Built with the test signer (the scheme of the specification).
    let gate = gate(Provider::StandardWebhooks, &[SW_SECRET]);
    let first = sign_hmac(
        Provider::StandardWebhooks,
        SW_SECRET,
        NOW,
        "msg_1",
        Req::post("https://h/", "{}"),
    );
    let retry = sign_hmac(
        Provider::StandardWebhooks,
        SW_SECRET,
        NOW + 5,
        "msg_1",
        Req::post("https://h/", "{}"),
    );
    assert_allowed(&first.eval(&gate, NOW), "webhook:standard-webhooks");
    assert_allowed(&retry.eval(&gate, NOW + 5), "webhook:standard-webhooks");
    assert_denied(&retry.eval(&gate, NOW + 6), ReasonCode::ReplayedDelivery);
}

// TestAsymmetricWebhookSign in
// https://github.com/standard-webhooks/standard-webhooks/blob/main/libraries/go/webhook_asymmetric_test.go
// publishes the signing key (an Ed25519 seed) and the expected `v1a` signature; the edge
// only ever holds the public key, derived here from that seed.
#[test]
fn standard_webhooks_reference_v1a_vector() {
    use base64::Engine as _;
    let seed = base64::engine::general_purpose::STANDARD
        .decode("VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=")
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap());
    let public = format!("whpk_{}", b64(key.verifying_key().as_bytes()));
    let gate = gate(Provider::StandardWebhooks, &[&public]);
    let signature = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";
    assert_allowed(
        &standard_request("webhook", signature).eval(&gate, SW_TS),
        "webhook:standard-webhooks",
    );
    let forged = signature.replace("tQ9V", "tQ9W");
    let gate = gate_support::gate(Provider::StandardWebhooks, &[&public]);
    assert_denied(
        &standard_request("webhook", &forged).eval(&gate, SW_TS),
        ReasonCode::SignatureMismatch,
    );
}

#[test]
fn standard_webhooks_ed25519_v1a() {
    // The specification publishes no v1a example: a fixed test key signs `id.ts.body`.
    let key = ed25519_key(7);
    let public = format!("whpk_{}", b64(key.verifying_key().as_bytes()));
    let gate = gate(Provider::StandardWebhooks, &[&public]);
    let signed = format!("{SW_ID}.{SW_TS}.{SW_BODY}");
    let signature = format!("v1a,{}", b64(&ed25519_sign(&key, signed.as_bytes())));
    assert_allowed(
        &standard_request("webhook", &signature).eval(&gate, SW_TS),
        "webhook:standard-webhooks",
    );
    // The HMAC `v1` signature means nothing to an Ed25519-only gate.
    assert_denied(
        &standard_request("webhook", SW_SIGNATURE).eval(&gate, SW_TS),
        ReasonCode::SignatureMismatch,
    );
    // Rotation from HMAC to Ed25519: both keys configured, both accepted.
    let both = gate_support::gate(Provider::StandardWebhooks, &[&public, SW_SECRET]);
    assert_allowed(
        &standard_request("webhook", SW_SIGNATURE).eval(&both, SW_TS),
        "webhook:standard-webhooks",
    );
    let wrong_key = ed25519_key(8);
    let forged = format!("v1a,{}", b64(&ed25519_sign(&wrong_key, signed.as_bytes())));
    let fresh = gate_support::gate(Provider::StandardWebhooks, &[&public]);
    assert_denied(
        &standard_request("webhook", &forged).eval(&fresh, SW_TS),
        ReasonCode::SignatureMismatch,
    );
}

// ---------------------------------------------------------------- Stripe

#[test]
fn stripe_scheme_with_rotation_v0_and_replay() {
    // Stripe publishes no example vector; built with the test signer from
    // https://docs.stripe.com/webhooks#verify-manually (HMAC-SHA256 of `t.body`, hex).
    let secret = "whsec_test_stripe_secret";
    let gate = gate(Provider::Stripe, &["whsec_new", secret]);
    let body = r#"{"id":"evt_1","object":"event"}"#;
    let request = sign_hmac(
        Provider::Stripe,
        secret,
        NOW,
        "",
        Req::post("https://h/stripe", body),
    );
    assert_allowed(&request.eval(&gate, NOW), "webhook:stripe");
    assert_denied(&request.eval(&gate, NOW + 1), ReasonCode::ReplayedDelivery);

    let sig = request.headers["stripe-signature"]
        .to_str()
        .unwrap()
        .to_string();
    let v1 = sig.split_once("v1=").unwrap().1.to_string();
    let header =
        |value: &str| Req::post("https://h/stripe", body).header("stripe-signature", value);
    let fresh = gate_support::gate(Provider::Stripe, &[secret]);
    // Several v1 entries (Stripe sends one per active secret) and a v0 test signature.
    let rotated = format!(
        "t={NOW},v1={},v1={v1},v0=6ffbb59b2300aae63f27240606",
        "0".repeat(64)
    );
    assert_allowed(&header(&rotated).eval(&fresh, NOW), "webhook:stripe");
    let fresh = gate_support::gate(Provider::Stripe, &[secret]);
    assert_denied(
        &header(&format!("t={NOW},v0={v1}")).eval(&fresh, NOW),
        ReasonCode::SignatureMalformed,
    );
    assert_denied(
        &header(&format!("v1={v1}")).eval(&fresh, NOW),
        ReasonCode::TimestampMissing,
    );
    assert_denied(
        &header(&format!("t={},v1={v1}", NOW + 1)).eval(&fresh, NOW),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &header(&sig).eval(&fresh, NOW + 301),
        ReasonCode::TimestampStale,
    );
    assert_denied(
        &header(&format!("t=abc,v1={v1}")).eval(&fresh, NOW),
        ReasonCode::TimestampMalformed,
    );
}

// ---------------------------------------------------------------- Shopify

#[test]
fn shopify_base64_body_hmac() {
    // Shopify publishes no example vector; built with the test signer from
    // https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-5-verify-the-webhook
    let gate = gate(Provider::Shopify, &["shpss_secret"]);
    let request = sign_hmac(
        Provider::Shopify,
        "shpss_secret",
        NOW,
        "wh-1",
        Req::post("https://h/s", r#"{"id":1}"#),
    );
    assert_allowed(&request.eval(&gate, NOW), "webhook:shopify");
    assert_denied(&request.eval(&gate, NOW), ReasonCode::ReplayedDelivery);
    let forged = request
        .clone()
        .without("x-shopify-hmac-sha256")
        .header("x-shopify-hmac-sha256", "not base64!");
    assert_denied(&forged.eval(&gate, NOW), ReasonCode::SignatureMalformed);
    let wrong = sign_hmac(
        Provider::Shopify,
        "other",
        NOW,
        "wh-2",
        Req::post("https://h/s", "{}"),
    );
    assert_denied(&wrong.eval(&gate, NOW), ReasonCode::SignatureMismatch);
}

// ---------------------------------------------------------------- Twilio

// https://www.twilio.com/docs/usage/security#explore-the-algorithm-yourself
const TWILIO_TOKEN: &str = "12345";
const TWILIO_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
const TWILIO_FORM: &str = "CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
const TWILIO_SIGNATURE: &str = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";

fn twilio_form(url: &str, body: &str, signature: &str) -> Req {
    Req::post(url, body)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
}

#[test]
fn twilio_documented_form_vector_any_param_order_and_port_variant() {
    let gate = gate(Provider::Twilio, &[TWILIO_TOKEN]);
    assert_allowed(
        &twilio_form(TWILIO_URL, TWILIO_FORM, TWILIO_SIGNATURE).eval(&gate, NOW),
        "webhook:twilio",
    );
    let reordered = "To=%2B18005551212&Digits=1234&CallSid=CA1234567890ABCDE&From=%2B12349013030&Caller=%2B12349013030";
    assert_allowed(
        &twilio_form(TWILIO_URL, reordered, TWILIO_SIGNATURE).eval(&gate, NOW),
        "webhook:twilio",
    );
    // A proxy that shows the default port must not break verification.
    let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
    assert_allowed(
        &twilio_form(with_port, TWILIO_FORM, TWILIO_SIGNATURE).eval(&gate, NOW),
        "webhook:twilio",
    );
}

#[test]
fn twilio_tampered_params_url_and_truncated_signature_are_refused() {
    let gate = gate(Provider::Twilio, &[TWILIO_TOKEN]);
    let tampered = TWILIO_FORM.replace("Digits=1234", "Digits=9999");
    assert_denied(
        &twilio_form(TWILIO_URL, &tampered, TWILIO_SIGNATURE).eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    let other_url = "https://mycompany.com/myapp.php?foo=1&bar=3";
    assert_denied(
        &twilio_form(other_url, TWILIO_FORM, TWILIO_SIGNATURE).eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &twilio_form(TWILIO_URL, TWILIO_FORM, "0/KCTR6DLpKmkAf8muzZqo1nDg").eval(&gate, NOW),
        ReasonCode::SignatureMalformed,
    );
    assert_denied(
        &twilio_form(TWILIO_URL, "a=%zz", TWILIO_SIGNATURE).eval(&gate, NOW),
        ReasonCode::BodyMalformed,
    );
    // The URL the provider was given can be configured when the edge sees another one.
    let mut config = WebhookGateConfig::new(Provider::Twilio, vec![Secret::from(TWILIO_TOKEN)]);
    config.public_url = Some(TWILIO_URL.to_string());
    let pinned = gate_with(config);
    assert_allowed(
        &twilio_form("https://internal.example/x", TWILIO_FORM, TWILIO_SIGNATURE)
            .eval(&pinned, NOW),
        "webhook:twilio",
    );
}

// https://github.com/twilio/twilio-python/blob/main/tests/unit/test_request_validator.py
// (Twilio's own library vector for JSON bodies: the URL carries bodySHA256)
#[test]
fn twilio_json_body_sha256_vector() {
    let body = r#"{"property": "value", "boolean": true}"#;
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    let gate = gate(Provider::Twilio, &[TWILIO_TOKEN]);
    let request = |body: &str| {
        Req::post(url, body)
            .header("content-type", "application/json")
            .header("x-twilio-signature", "a9nBmqA0ju/hNViExpshrM61xv4=")
    };
    assert_allowed(&request(body).eval(&gate, NOW), "webhook:twilio");
    assert_denied(
        &request(&format!("{body} ")).eval(&gate, NOW),
        ReasonCode::BodyHashMismatch,
    );
    // A JSON body whose URL carries no hash is not covered by the signature.
    let unhashed = Req::post(TWILIO_URL, body)
        .header("content-type", "application/json")
        .header("x-twilio-signature", "a9nBmqA0ju/hNViExpshrM61xv4=");
    assert_denied(&unhashed.eval(&gate, NOW), ReasonCode::BodyHashMismatch);
}

#[test]
fn twilio_get_signs_the_url_alone() {
    // Built with the test signer from the documented scheme (GET: the full URL only).
    let gate = gate(Provider::Twilio, &[TWILIO_TOKEN]);
    let url = "https://mycompany.com/voice?CallSid=CA1&From=%2B1555";
    let signature = b64(&hmac_sha1(TWILIO_TOKEN.as_bytes(), &[url.as_bytes()]));
    let request = Req::get(url).header("x-twilio-signature", &signature);
    assert_allowed(&request.eval(&gate, NOW), "webhook:twilio");
    let mut changed = request.clone();
    changed.url = url.replace("CA1", "CA2");
    assert_denied(&changed.eval(&gate, NOW), ReasonCode::SignatureMismatch);
}

// ---------------------------------------------------------------- GitLab

#[test]
fn gitlab_token_and_signed_mode() {
    // GitLab's secret token is compared as-is (https://docs.gitlab.com/user/project/integrations/webhooks/#create-a-webhook);
    // no vector needed. Its signing-token mode uses the Standard Webhooks scheme.
    let gate = gate(Provider::Gitlab, &["glsecret", "glsecret-old"]);
    let request = |token: &str| {
        Req::post("https://h/gl", "{}")
            .header("x-gitlab-token", token)
            .header("x-gitlab-event", "Push Hook")
    };
    match request("glsecret-old").eval(&gate, NOW) {
        Decision::Allow { identity, .. } => assert_eq!(
            identity.attributes,
            vec![("Event".into(), "Push Hook".to_string())]
        ),
        other => panic!("{other:?}"),
    }
    assert_denied(
        &request("glsecre").eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &request("glsecrett").eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &Req::post("https://h/gl", "{}").eval(&gate, NOW),
        ReasonCode::SignatureMissing,
    );

    let signed = gate_support::gate(Provider::GitlabSigned, &[SW_SECRET]);
    assert_allowed(
        &standard_request("webhook", SW_SIGNATURE).eval(&signed, SW_TS),
        "webhook:gitlab-signed",
    );
}

// ---------------------------------------------------------------- Linear

#[test]
fn linear_body_hmac_with_timestamp_in_body() {
    // Linear publishes no vector; built with the test signer from
    // https://linear.app/developers/webhooks#securing-webhooks (hex HMAC-SHA256 of the body,
    // `webhookTimestamp` in ms inside the body, one minute window).
    let gate = gate(Provider::Linear, &["lin_wh_secret"]);
    let body = format!(
        r#"{{"action":"create","webhookTimestamp":{}}}"#,
        NOW * 1000 + 250
    );
    let request = sign_hmac(
        Provider::Linear,
        "lin_wh_secret",
        NOW,
        "d-1",
        Req::post("https://h/l", body.clone()),
    );
    assert_allowed(&request.eval(&gate, NOW + 30), "webhook:linear");
    assert_denied(&request.eval(&gate, NOW + 31), ReasonCode::ReplayedDelivery);
    let late = sign_hmac(
        Provider::Linear,
        "lin_wh_secret",
        NOW,
        "d-2",
        Req::post("https://h/l", body),
    );
    assert_denied(&late.eval(&gate, NOW + 61), ReasonCode::TimestampStale);
    let no_stamp = sign_hmac(
        Provider::Linear,
        "lin_wh_secret",
        NOW,
        "d-3",
        Req::post("https://h/l", "{}"),
    );
    assert_denied(&no_stamp.eval(&gate, NOW), ReasonCode::TimestampMissing);
}

// ---------------------------------------------------------------- PagerDuty

#[test]
fn pagerduty_signature_list() {
    // PagerDuty publishes no vector; built with the test signer from
    // https://developer.pagerduty.com/docs/webhooks-overview#verifying-signatures
    let gate = gate(Provider::Pagerduty, &["pd-secret"]);
    let body = r#"{"event":{"id":"01DEN4HPBQAAAG05V5QQYBRZMF","event_type":"incident.triggered"}}"#;
    let signed = sign_hmac(
        Provider::Pagerduty,
        "pd-secret",
        NOW,
        "",
        Req::post("https://h/pd", body),
    );
    let good = signed.headers["x-pagerduty-signature"]
        .to_str()
        .unwrap()
        .to_string();
    let listed = format!("v1={},{good}", "ab".repeat(32));
    let request = Req::post("https://h/pd", body).header("x-pagerduty-signature", &listed);
    assert_allowed(&request.eval(&gate, NOW), "webhook:pagerduty");
    assert_denied(&request.eval(&gate, NOW), ReasonCode::ReplayedDelivery);
    let request = Req::post("https://h/pd", body).header("x-pagerduty-signature", "v2=abcd");
    assert_denied(&request.eval(&gate, NOW), ReasonCode::SignatureMalformed);
}

// ---------------------------------------------------------------- Zoom

#[test]
fn zoom_signature_and_url_validation_challenge() {
    // Zoom publishes no vector; built with the test signer from
    // https://developers.zoom.us/docs/api/webhooks/#verify-with-zooms-header
    let gate = gate(Provider::Zoom, &["zoom-secret-token", "old-token"]);
    let event = Req::post("https://h/z", r#"{"event":"meeting.started"}"#);
    assert_allowed(
        &sign_hmac(Provider::Zoom, "old-token", NOW, "", event.clone()).eval(&gate, NOW),
        "webhook:zoom",
    );
    assert_denied(
        &sign_hmac(Provider::Zoom, "zoom-secret-token", NOW - 400, "", event).eval(&gate, NOW),
        ReasonCode::TimestampStale,
    );

    let challenge = r#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let request = sign_hmac(
        Provider::Zoom,
        "zoom-secret-token",
        NOW,
        "",
        Req::post("https://h/z", challenge),
    );
    let encrypted = hexs(&hmac_sha256(
        b"zoom-secret-token",
        &[b"qgg8vlvZRS6UYooatFL8Aw"],
    ));
    let expected =
        format!(r#"{{"encryptedToken":"{encrypted}","plainToken":"qgg8vlvZRS6UYooatFL8Aw"}}"#);
    assert_responds(
        &request.eval(&gate, NOW),
        "application/json",
        expected.as_bytes(),
    );
    let unsigned = Req::post("https://h/z", challenge);
    assert_denied(&unsigned.eval(&gate, NOW), ReasonCode::SignatureMissing);
}

// ---------------------------------------------------------------- Discord

fn discord_request(key: &ed25519_dalek::SigningKey, ts: u64, body: &str) -> Req {
    let signature = ed25519_sign(key, format!("{ts}{body}").as_bytes());
    Req::post("https://h/d", body)
        .header("x-signature-ed25519", &hexs(&signature))
        .header("x-signature-timestamp", &ts.to_string())
}

#[test]
fn discord_ed25519_and_ping() {
    // Discord publishes no vector; a fixed test key signs `timestamp + body` as described at
    // https://discord.com/developers/docs/interactions/overview#setting-up-an-endpoint-validating-security-request-headers
    let key = ed25519_key(3);
    let gate = gate(Provider::Discord, &[&hexs(key.verifying_key().as_bytes())]);
    assert_responds(
        &discord_request(&key, NOW, r#"{"type":1}"#).eval(&gate, NOW),
        "application/json",
        br#"{"type":1}"#,
    );
    let command = r#"{"type":2,"id":"786008729715212338"}"#;
    assert_allowed(
        &discord_request(&key, NOW, command).eval(&gate, NOW),
        "webhook:discord",
    );
    assert_denied(
        &discord_request(&key, NOW, command).eval(&gate, NOW),
        ReasonCode::ReplayedDelivery,
    );
    let stranger = ed25519_key(4);
    assert_denied(
        &discord_request(&stranger, NOW, r#"{"type":1}"#).eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &discord_request(&key, NOW - 301, r#"{"type":1}"#).eval(&gate, NOW),
        ReasonCode::TimestampStale,
    );
    let mut cut = discord_request(&key, NOW, r#"{"type":1}"#);
    let sig = cut.headers["x-signature-ed25519"].to_str().unwrap()[..126].to_string();
    cut = cut
        .without("x-signature-ed25519")
        .header("x-signature-ed25519", &sig);
    assert_denied(&cut.eval(&gate, NOW), ReasonCode::SignatureMalformed);
}

// ---------------------------------------------------------------- Paddle

#[test]
fn paddle_stamped_header_with_rotation() {
    // Paddle's docs show only the header shape (ts=1671552777;h1=eb4d0dc8...) without the
    // secret; built with the test signer from
    // https://developer.paddle.com/webhooks/signature-verification (hex HMAC-SHA256 of `ts:body`).
    let gate = gate(Provider::Paddle, &["pdl_ntfset_secret"]);
    let body = r#"{"event_id":"evt_01","notification_id":"ntf_01"}"#;
    let signed = sign_hmac(
        Provider::Paddle,
        "pdl_ntfset_secret",
        NOW,
        "",
        Req::post("https://h/p", body),
    );
    let header = signed.headers["paddle-signature"]
        .to_str()
        .unwrap()
        .to_string();
    let rotated = format!("{header};h1={}", "0".repeat(64));
    let request = Req::post("https://h/p", body).header("paddle-signature", &rotated);
    assert_allowed(&request.eval(&gate, NOW), "webhook:paddle");
    assert_denied(&request.eval(&gate, NOW), ReasonCode::ReplayedDelivery);
    assert_denied(&signed.eval(&gate, NOW + 301), ReasonCode::TimestampStale);
}

// ---------------------------------------------------------------- Bitbucket, Gitea, Intercom

#[test]
fn bitbucket_gitea_intercom_body_hmacs() {
    // None of the three publishes a vector; built with the test signer from
    // https://support.atlassian.com/bitbucket-cloud/docs/manage-webhooks/#Secure-webhooks,
    // https://docs.gitea.com/usage/webhooks and
    // https://developers.intercom.com/docs/webhooks/webhook-notifications#signed-notifications
    for (provider, id) in [
        (Provider::Bitbucket, "u-1"),
        (Provider::Gitea, "g-1"),
        (Provider::Intercom, ""),
    ] {
        let gate = gate(provider, &["shared"]);
        let request = sign_hmac(
            provider,
            "shared",
            NOW,
            id,
            Req::post("https://h/x", r#"{"id":"notif_1"}"#),
        );
        assert_allowed(&request.eval(&gate, NOW), &format!("webhook:{provider}"));
        assert_denied(&request.eval(&gate, NOW), ReasonCode::ReplayedDelivery);
        let wrong = sign_hmac(
            provider,
            "other",
            NOW,
            "x-2",
            Req::post("https://h/x", "{}"),
        );
        assert_denied(&wrong.eval(&gate, NOW), ReasonCode::SignatureMismatch);
    }
}

// ---------------------------------------------------------------- Square

// https://developer.squareup.com/docs/webhooks/step3validate (the sample: key asdf1234,
// URL https://example.com/webhook, body {"hello":"world"})
#[test]
fn square_documented_vector() {
    let gate = gate(Provider::Square, &["asdf1234"]);
    let request = |url: &str, body: &str| {
        Req::post(url, body).header(
            "x-square-hmacsha256-signature",
            "2kRE5qRU2tR+tBGlDwMEw2avJ7QM4ikPYD/PJ3bd9Og=",
        )
    };
    assert_allowed(
        &request("https://example.com/webhook", r#"{"hello":"world"}"#).eval(&gate, NOW),
        "webhook:square",
    );
    assert_denied(
        &request("https://example.com/webhook2", r#"{"hello":"world"}"#).eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &request("https://example.com/webhook", r#"{"hello":"world"} "#).eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
}

// ---------------------------------------------------------------- Twitch

#[test]
fn twitch_signature_window_and_callback_verification() {
    // Twitch publishes no vector; built with the test signer from
    // https://dev.twitch.tv/docs/eventsub/handling-webhook-events/#verifying-the-event-message
    let gate = gate(Provider::Twitch, &["twitch-secret"]);
    let event = Req::post("https://h/t", r#"{"subscription":{},"event":{}}"#);
    let request = sign_hmac(
        Provider::Twitch,
        "twitch-secret",
        NOW,
        "e6a1-1",
        event.clone(),
    );
    assert_allowed(&request.eval(&gate, NOW + 599), "webhook:twitch");
    assert_denied(
        &request.eval(&gate, NOW + 599),
        ReasonCode::ReplayedDelivery,
    );
    let old = sign_hmac(Provider::Twitch, "twitch-secret", NOW, "e6a1-2", event);
    assert_denied(&old.eval(&gate, NOW + 601), ReasonCode::TimestampStale);

    let body =
        r#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"id":"f1c2a387"}}"#;
    let verification = sign_hmac(
        Provider::Twitch,
        "twitch-secret",
        NOW,
        "e6a1-3",
        Req::post("https://h/t", body),
    )
    .without("twitch-eventsub-message-type")
    .header(
        "twitch-eventsub-message-type",
        "webhook_callback_verification",
    );
    assert_responds(
        &verification.eval(&gate, NOW),
        "text/plain",
        b"pogchamp-kappa-360noscope-vohiyo",
    );
}

// ---------------------------------------------------------------- Mailgun

#[test]
fn mailgun_fields_inside_json_and_form_bodies() {
    // Mailgun publishes no vector; built with the test signer from
    // https://documentation.mailgun.com/docs/mailgun/user-manual/tracking-messages/#securing-webhooks
    let key = "key-mailgun-signing";
    let ts = NOW.to_string();
    let signature = hexs(&hmac_sha256(key.as_bytes(), &[ts.as_bytes(), b"tok-1"]));
    let gate = gate(Provider::Mailgun, &[key]);
    let json = format!(
        r#"{{"signature":{{"timestamp":"{ts}","token":"tok-1","signature":"{signature}"}},"event-data":{{"event":"delivered"}}}}"#
    );
    assert_allowed(
        &Req::post("https://h/m", json.clone()).eval(&gate, NOW),
        "webhook:mailgun",
    );
    assert_denied(
        &Req::post("https://h/m", json).eval(&gate, NOW),
        ReasonCode::ReplayedDelivery,
    );

    let signature2 = hexs(&hmac_sha256(key.as_bytes(), &[ts.as_bytes(), b"tok-2"]));
    let form = format!("timestamp={ts}&token=tok-2&signature={signature2}&event=delivered");
    assert_allowed(
        &Req::post("https://h/m", form.clone()).eval(&gate, NOW),
        "webhook:mailgun",
    );
    let forged = form.replace("tok-2", "tok-3");
    assert_denied(
        &Req::post("https://h/m", forged).eval(&gate, NOW),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &Req::post("https://h/m", "{not json").eval(&gate, NOW),
        ReasonCode::BodyMalformed,
    );
    assert_denied(
        &Req::post("https://h/m", "event=x").eval(&gate, NOW),
        ReasonCode::SignatureMissing,
    );
    let stale = format!("timestamp={}&token=tok-9&signature=00", NOW - 1000);
    assert_denied(
        &Req::post("https://h/m", stale).eval(&gate, NOW),
        ReasonCode::TimestampStale,
    );
}

// ---------------------------------------------------------------- SendGrid

// SendGrid's own vector, in each of its official libraries' event-webhook tests, e.g.
// https://github.com/sendgrid/sendgrid-go/blob/main/helpers/eventwebhook/eventwebhook_test.go
const SENDGRID_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
const SENDGRID_SIGNATURE: &str = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
const SENDGRID_TS: u64 = 1_588_788_367;
const SENDGRID_BODY: &str =
    r#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;

fn sendgrid_request(signature: &str, body: &str) -> Req {
    Req::post("https://h/sg", body)
        .header("x-twilio-email-event-webhook-signature", signature)
        .header(
            "x-twilio-email-event-webhook-timestamp",
            &SENDGRID_TS.to_string(),
        )
}

#[test]
fn sendgrid_library_vector_and_variants() {
    let gate = gate(Provider::Sendgrid, &[SENDGRID_PUBLIC_KEY]);
    assert_allowed(
        &sendgrid_request(SENDGRID_SIGNATURE, SENDGRID_BODY).eval(&gate, SENDGRID_TS),
        "webhook:sendgrid",
    );
    // SendGrid's own failing-signature fixture (one digit changed).
    let failing = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=";
    assert_denied(
        &sendgrid_request(failing, SENDGRID_BODY).eval(&gate, SENDGRID_TS),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &sendgrid_request(SENDGRID_SIGNATURE, "[]").eval(&gate, SENDGRID_TS),
        ReasonCode::SignatureMismatch,
    );
    assert_denied(
        &sendgrid_request(&SENDGRID_SIGNATURE[..40], SENDGRID_BODY).eval(&gate, SENDGRID_TS),
        ReasonCode::SignatureMalformed,
    );
    assert_denied(
        &sendgrid_request(SENDGRID_SIGNATURE, SENDGRID_BODY).eval(&gate, SENDGRID_TS + 301),
        ReasonCode::TimestampStale,
    );

    // Rotation: a second (test) key signing raw r||s as well as DER.
    let key = p256_key(5);
    let both = gate_support::gate(
        Provider::Sendgrid,
        &[SENDGRID_PUBLIC_KEY, &p256_public_der_b64(&key)],
    );
    let message = format!("{SENDGRID_TS}{SENDGRID_BODY}");
    let der = p256_sign_der(&key, message.as_bytes());
    assert_allowed(
        &sendgrid_request(&b64(&der), SENDGRID_BODY).eval(&both, SENDGRID_TS),
        "webhook:sendgrid",
    );
    let raw = p256::ecdsa::Signature::from_der(&der).unwrap().to_bytes();
    assert_allowed(
        &sendgrid_request(&b64(&raw), SENDGRID_BODY).eval(&both, SENDGRID_TS),
        "webhook:sendgrid",
    );
}

// ---------------------------------------------------------------- Okta

#[test]
fn okta_token_and_verification_get() {
    // Okta's scheme is a static header value; the verification answer follows
    // https://developer.okta.com/docs/concepts/event-hooks/#one-time-verification-request
    let gate = gate(Provider::Okta, &["Basic b2t0YTpzZWNyZXQ="]);
    let verification = Req::get("https://h/okta")
        .header("authorization", "Basic b2t0YTpzZWNyZXQ=")
        .header(
            "x-okta-verification-challenge",
            "xzR6bXP5OFZsYkeiJD1t1bNOtMpv9xmF",
        );
    assert_responds(
        &verification.eval(&gate, NOW),
        "application/json",
        br#"{"verification":"xzR6bXP5OFZsYkeiJD1t1bNOtMpv9xmF"}"#,
    );
    let unauthenticated = verification.clone().without("authorization");
    assert_denied(
        &unauthenticated.eval(&gate, NOW),
        ReasonCode::SignatureMissing,
    );
    let event = Req::post("https://h/okta", r#"{"eventId":"b5a188b9"}"#)
        .header("authorization", "Basic b2t0YTpzZWNyZXQ=");
    assert_allowed(&event.eval(&gate, NOW), "webhook:okta");
    assert_denied(&event.eval(&gate, NOW), ReasonCode::ReplayedDelivery);
}

// ---------------------------------------------------------------- every provider

#[test]
fn every_provider_refuses_an_unsigned_request_as_signature_missing() {
    for provider in Provider::ALL {
        let secret = match provider {
            Provider::StandardWebhooks | Provider::Svix | Provider::GitlabSigned => SW_SECRET,
            Provider::Discord => "dd74e21b0698ca4a6a983a7134a422d4b353611e0029dee93197d0cb57efee99",
            Provider::Sendgrid => SENDGRID_PUBLIC_KEY,
            _ => "a-secret",
        };
        let gate = gate(provider, &[secret]);
        for body in ["", "{}", "a=b"] {
            let decision = Req::post("https://h/", body).eval(&gate, NOW);
            assert_eq!(
                decision.deny_reason(),
                Some(ReasonCode::SignatureMissing),
                "{provider} with body {body:?}: {decision:?}"
            );
        }
    }
}

#[test]
fn flipping_any_body_byte_of_a_published_vector_is_a_mismatch() {
    // Every position of every published body, one bit flipped, with the original headers.
    let github = gate(Provider::Github, &[GITHUB_SECRET]);
    let slack = gate(Provider::Slack, &[SLACK_SECRET]);
    let standard = gate(Provider::StandardWebhooks, &[SW_SECRET]);
    let sendgrid = gate(Provider::Sendgrid, &[SENDGRID_PUBLIC_KEY]);
    let square = gate(Provider::Square, &["asdf1234"]);
    let cases: Vec<(&dyn postern_ingress::gate::Gate, Req, u64)> = vec![
        (&github, github_request(GITHUB_SIGNATURE, "d"), NOW),
        (&slack, slack_request(), SLACK_TS),
        (&standard, standard_request("webhook", SW_SIGNATURE), SW_TS),
        (
            &sendgrid,
            sendgrid_request(SENDGRID_SIGNATURE, SENDGRID_BODY),
            SENDGRID_TS,
        ),
        (
            &square,
            Req::post("https://example.com/webhook", r#"{"hello":"world"}"#).header(
                "x-square-hmacsha256-signature",
                "2kRE5qRU2tR+tBGlDwMEw2avJ7QM4ikPYD/PJ3bd9Og=",
            ),
            NOW,
        ),
    ];
    // A forged copy never verifies, so it never reaches the replay cache.
    for (gate, request, now) in cases {
        for position in 0..request.body.len() {
            let mut forged = request.clone();
            forged.body[position] ^= 0x01;
            let decision = forged.eval(gate, now);
            assert_eq!(
                decision.deny_reason(),
                Some(ReasonCode::SignatureMismatch),
                "{} with byte {position} flipped: {decision:?}",
                gate.name()
            );
        }
    }
}

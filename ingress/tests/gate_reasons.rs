//! The texts people and machines read: reason codes, their statuses and descriptions,
//! configuration errors and parser errors.

mod gate_support;

use gate_support::*;
use postern_ingress::gate::webhook::parse::{self, ParseError};
use postern_ingress::gate::{
    ChainError, Decision, GateChain, PassThroughGate, Provider, ReasonCode, Secret,
    WebhookConfigError, WebhookGate, WebhookGateConfig, rewrite_identity_headers,
};

#[test]
fn reason_codes_are_stable_snake_case_with_statuses() {
    let table: Vec<(&str, u16)> = ReasonCode::ALL
        .iter()
        .map(|reason| (reason.as_str(), reason.status().as_u16()))
        .collect();
    assert_eq!(
        table,
        vec![
            ("signature_missing", 401),
            ("signature_malformed", 403),
            ("signature_mismatch", 403),
            ("timestamp_missing", 401),
            ("timestamp_malformed", 403),
            ("timestamp_stale", 403),
            ("replayed_delivery", 403),
            ("body_too_large", 413),
            ("body_malformed", 403),
            ("body_hash_mismatch", 403),
            ("method_not_allowed", 403),
            ("no_gate_admitted", 401),
            ("rate_limited", 429),
            ("token_missing", 401),
            ("token_malformed", 403),
            ("token_invalid", 403),
            ("token_expired", 403),
            ("token_claims_rejected", 403),
            ("idp_unavailable", 503),
            ("ip_denied", 403),
            ("client_cert_missing", 401),
            ("client_cert_rejected", 403),
            ("login_required", 401),
            ("login_not_allowed", 403),
            ("login_failed", 403),
        ]
    );
    for reason in ReasonCode::ALL {
        assert_eq!(reason.to_string(), reason.as_str());
        let text = reason.describe();
        assert!(text.len() > 20 && !text.ends_with('.'), "{reason}: {text}");
    }
    assert_eq!(
        ReasonCode::SignatureMismatch.describe(),
        "no configured secret produces this signature; check that the funnel's secret matches the provider's current secret"
    );
    assert_eq!(
        Decision::deny(ReasonCode::TimestampStale),
        Decision::Deny {
            status: http::StatusCode::FORBIDDEN,
            reason: ReasonCode::TimestampStale,
            headers: Vec::new(),
        }
    );
}

#[test]
fn configuration_errors_say_what_to_do() {
    let error = |provider, secrets: Vec<&str>| {
        WebhookGate::new(WebhookGateConfig::new(
            provider,
            secrets.into_iter().map(Secret::from).collect(),
        ))
        .unwrap_err()
    };
    assert_eq!(
        error(Provider::Stripe, vec![]).to_string(),
        "no secret given for the stripe webhook gate; pass one with --secret-env NAME (the environment variable holding the provider's signing secret)"
    );
    assert_eq!(
        error(Provider::Github, vec!["a", ""]).to_string(),
        "secret #2 for the github webhook gate is empty; check that the environment variable is set and not blank"
    );
    assert_eq!(
        error(Provider::Discord, vec!["not-hex"]).to_string(),
        "secret #1 for the discord webhook gate is not an Ed25519 public key in hex (64 characters, the application's PUBLIC KEY)"
    );
    assert_eq!(
        error(Provider::Sendgrid, vec!["bm90IGEga2V5"]).to_string(),
        "secret #1 for the sendgrid webhook gate is not a P-256 public key (base64 DER as shown by SendGrid, or PEM)"
    );
    assert!(matches!(
        error(Provider::StandardWebhooks, vec!["whsec_!!"]),
        WebhookConfigError::BadKey { index: 1, .. }
    ));
    let mut config = WebhookGateConfig::new(Provider::Twilio, vec![Secret::from("t")]);
    config.public_url = Some("mycompany.com/hook".into());
    assert_eq!(
        WebhookGate::new(config).unwrap_err().to_string(),
        "the public URL for the twilio webhook gate must be absolute, starting with https:// (the URL entered in the provider's dashboard)"
    );
    assert_eq!(
        "stripes".parse::<Provider>().unwrap_err().to_string(),
        "unknown webhook provider `stripes`; known providers: github, stripe, slack, standard-webhooks, svix, shopify, twilio, gitlab, gitlab-signed, linear, pagerduty, zoom, discord, paddle, bitbucket, gitea, intercom, square, twitch, mailgun, sendgrid, okta"
    );
    assert_eq!(
        GateChain::all_of(vec![]).unwrap_err(),
        ChainError::EmptyGroup("all-of")
    );
    assert_eq!(
        ChainError::EmptyGroup("any-of").to_string(),
        "an any-of group of gates is empty; give it at least one gate or remove the group (an empty group would admit or refuse everything)"
    );
}

#[test]
fn parser_errors_name_the_problem() {
    let cases: Vec<(ParseError, &str)> = vec![
        (
            parse::parse_stamped(" ", ',', "t", "v1").unwrap_err(),
            "the header is empty",
        ),
        (
            parse::parse_stamped("t=1,v1", ',', "t", "v1").unwrap_err(),
            "element 1 has no separator between its name and its value",
        ),
        (
            parse::parse_stamped("v1=a", ',', "t", "v1").unwrap_err(),
            "the header has no `t=` timestamp element",
        ),
        (
            parse::parse_stamped("ts=1;ts=2;h1=a", ';', "ts", "h1").unwrap_err(),
            "the header has more than one `ts=` timestamp element",
        ),
        (
            parse::parse_versioned_list("v1a,x", "v1").unwrap_err(),
            "the header has no `v1` signature",
        ),
        (
            parse::parse_prefixed_list(&"x,".repeat(33), "v1=").unwrap_err(),
            "the header has more than 32 elements",
        ),
        (
            parse::parse_unix("12a").unwrap_err(),
            "the timestamp is not a decimal number of seconds",
        ),
        (
            parse::parse_rfc3339("yesterday").unwrap_err(),
            "the timestamp is not an RFC 3339 date-time",
        ),
        (
            parse::decode_hex("zz").unwrap_err(),
            "the signature is not hexadecimal",
        ),
        (
            parse::decode_base64("***").unwrap_err(),
            "the signature is not base64",
        ),
        (
            parse::parse_form(b"a=%G1").unwrap_err(),
            "the form data has an invalid percent escape at byte 2",
        ),
        (
            parse::parse_form(b"a=%C3").unwrap_err(),
            "the form data is not UTF-8 after decoding",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}

#[test]
fn a_funnel_chain_of_webhook_gates_with_identity_headers() {
    // GitHub or Stripe may deliver to the same funnel; the chain admits whichever signed.
    let chain = GateChain::any_of(vec![
        GateChain::gate(gate(Provider::Github, &["It's a Secret to Everybody"])),
        GateChain::gate(gate(Provider::Stripe, &["whsec_x"])),
    ])
    .unwrap();
    let github = Req::post("https://hook.example/", "Hello, World!")
        .header(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )
        .header("x-github-delivery", "d-1")
        .header("postern-identity", "user:admin");
    let outcome = chain.evaluate(&github.view(), at(1_700_000_000));
    assert_eq!(outcome.trace.summary(), "webhook:github=allow");
    let Decision::Allow { gate, identity } = outcome.decision else {
        panic!("expected allow");
    };
    let mut headers = github.headers.clone();
    rewrite_identity_headers(&mut headers, Some((&gate, &identity)));
    assert_eq!(headers["postern-gate"], "webhook:github");
    assert_eq!(headers["postern-identity"], "webhook:github");
    assert_eq!(headers["postern-identity-delivery"], "d-1");

    // A Stripe-signed body with a forged signature: the chain reports the failed check,
    // not GitHub's missing header, and the trace shows both.
    let forged = Req::post("https://hook.example/", "{}").header(
        "stripe-signature",
        &format!("t=1700000000,v1={}", "0".repeat(64)),
    );
    let outcome = chain.evaluate(&forged.view(), at(1_700_000_000));
    assert_eq!(
        outcome.decision.deny_reason(),
        Some(ReasonCode::SignatureMismatch)
    );
    assert_eq!(
        outcome.trace.summary(),
        "webhook:github=signature_missing webhook:stripe=signature_mismatch"
    );

    // The baseline chain admits anything as anonymous.
    let open = GateChain::gate(PassThroughGate);
    assert!(open.evaluate(&forged.view(), at(0)).decision.is_allow());
}

#[test]
fn request_view_exposes_cookies_and_client_certificate() {
    let request = Req::post("https://h/", "").header("cookie", "a=1; postern_session=\"abc\"; b=2");
    let view = request
        .view()
        .with_client_cert_subject(Some("CN=ci-runner"));
    assert_eq!(view.cookie("postern_session"), Some("abc"));
    assert_eq!(view.cookie("b"), Some("2"));
    assert_eq!(view.cookie("missing"), None);
    assert_eq!(view.client_cert_subject(), Some("CN=ci-runner"));
    assert_eq!(view.client().to_string(), "203.0.113.7:40000");
}

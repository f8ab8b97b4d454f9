//! Gates through the real edge in-process: mTLS client certificates (right CA, another
//! CA, none), a JWT issued by the lab's real OpenID Provider (and one signed by another
//! key), a per-client rate limit with `Retry-After`, and a composed chain naming the
//! deciding gate in the audit. The counting origin proves no denied request reached it.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod edge_gate_support;
mod edge_support;

use std::sync::Arc;
use std::time::Duration;

use edge_gate_support::start_gated_edge;
use edge_support::Origin;
use postern_ingress::gate::{
    GateChain, IpRulesConfig, IpRulesGate, JwtConfig, JwtGate, MtlsConfig, MtlsConfigError,
    MtlsGate, PassThroughGate, RateLimit, RateLimitConfig, RateLimitKey,
};
use postern_lab::idp::{IdpConfig, OidcProvider, browser};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// A client certificate from `ca` as PEM (certificate then key), for reqwest.
fn client_identity(ca: &Ca, common_name: &str) -> reqwest::Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Example");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    reqwest::Identity::from_pem(pem.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_the_right_ca_and_refuses_others_before_the_origin() {
    let good = ca("Postern Test Clients CA");
    let other = ca("Some Other CA");
    let gate = MtlsGate::new(&MtlsConfig {
        ca_pem: good.cert.pem(),
        ca_source: "test".into(),
        required: true,
    })
    .unwrap();
    let origin = Origin::default();
    let edge = start_gated_edge(origin.start().await, GateChain::gate(gate)).await;

    let alice = edge
        .client_builder()
        .identity(client_identity(&good, "alice-laptop"))
        .build()
        .unwrap();
    let response = alice.get("https://app.test/").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(origin.count(), 1);
    {
        let received = origin.received.lock().unwrap();
        let headers = &received[0].0.headers;
        assert_eq!(headers["postern-gate"], "mtls");
        assert_eq!(
            headers["postern-identity"],
            "cert:CN=alice-laptop, O=Example"
        );
        assert_eq!(
            headers["postern-identity-cert-subject"],
            "CN=alice-laptop, O=Example"
        );
        assert_eq!(headers["postern-identity-cert-sha256"].len(), 64);
    }

    let mallory = edge
        .client_builder()
        .identity(client_identity(&other, "alice-laptop"))
        .build()
        .unwrap();
    let response = mallory.get("https://app.test/").send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await.unwrap(), "client_cert_rejected\n");

    let anonymous = edge.client();
    let response = anonymous.get("https://app.test/").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await.unwrap(), "client_cert_missing\n");

    assert_eq!(origin.count(), 1, "no refused request reached the origin");
    let summary = edge.audit.summary();
    assert_eq!(
        summary,
        vec![
            (Some("mtls".into()), "allow".into(), None, 200),
            (
                Some("mtls".into()),
                "deny".into(),
                Some("client_cert_rejected".into()),
                403
            ),
            (
                Some("mtls".into()),
                "deny".into(),
                Some("client_cert_missing".into()),
                401
            ),
        ]
    );
}

#[test]
fn a_ca_without_the_ca_basic_constraint_is_refused_at_configuration() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["leaf.test".into()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "leaf.test");
    let leaf = params.self_signed(&key).unwrap();
    let error = MtlsGate::new(&MtlsConfig {
        ca_pem: leaf.pem(),
        ca_source: "/etc/postern/clients-ca.pem".into(),
        required: true,
    })
    .unwrap_err();
    assert!(matches!(error, MtlsConfigError::NotCa { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "/etc/postern/clients-ca.pem: certificate #1 (CN=leaf.test) is not a CA (its basic constraints are not CA:TRUE); give the certificate of the CA that issues the client certificates, not a client or server certificate"
    );
    let error = MtlsGate::new(&MtlsConfig {
        ca_pem: "not pem".into(),
        ca_source: "ca.pem".into(),
        required: true,
    })
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "ca.pem: no CERTIFICATE block found; give the CA certificate in PEM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_from_the_real_idp_is_accepted_and_one_signed_by_another_key_refused() {
    let idp = OidcProvider::start(IdpConfig::default()).unwrap();
    let tokens = browser::device_flow_login(idp.issuer(), "alice@example.com", "alice-pw")
        .await
        .unwrap();
    let discovery: serde_json::Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", idp.issuer()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let jwks_url = discovery["jwks_uri"].as_str().unwrap();
    // No JWKS URL: the gate finds it in the IdP's discovery document, as the test did.
    let mut config = JwtConfig::discovered(idp.issuer(), vec![OidcProvider::CLI_CLIENT_ID.into()]);
    config.identity_claims = vec!["groups".into()];
    let origin = Origin::default();
    let edge = start_gated_edge(
        origin.start().await,
        GateChain::gate(JwtGate::new(config).unwrap()),
    )
    .await;
    let client = edge.client();

    let response = client
        .get("https://app.test/api")
        .bearer_auth(&tokens.id_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    {
        let received = origin.received.lock().unwrap();
        let headers = &received[0].0.headers;
        assert_eq!(headers["postern-identity"], "jwt:alice");
        assert_eq!(headers["postern-identity-email"], "alice@example.com");
        assert_eq!(headers["postern-identity-groups"], "eng,admins");
    }

    // The same claims under the kid of the IdP's ES256 key, signed by a key of ours.
    let jwks: serde_json::Value = reqwest::get(jwks_url).await.unwrap().json().await.unwrap();
    let es256_kid = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["alg"] == "ES256")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let claims = tokens.id_token_claims().unwrap();
    let ours = KeyPair::generate().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(es256_kid);
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(ours.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let response = client
        .get("https://app.test/api")
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await.unwrap(), "token_invalid\n");

    let response = client.get("https://app.test/api").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(origin.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after_and_names_itself_in_the_audit() {
    let mut config = RateLimitConfig::new(RateLimitKey::ClientIp, 1, Duration::from_secs(60));
    config.burst = 2;
    let chain = GateChain::rate_limited(
        GateChain::gate(PassThroughGate),
        Arc::new(RateLimit::new(config).unwrap()),
    );
    let origin = Origin::default();
    let edge = start_gated_edge(origin.start().await, chain).await;
    let client = edge.client();
    for _ in 0..2 {
        let response = client.get("https://app.test/").send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = client.get("https://app.test/").send().await.unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(response.text().await.unwrap(), "rate_limited\n");
    assert_eq!(origin.count(), 2);
    let summary = edge.audit.summary();
    assert_eq!(
        summary[2],
        (
            Some("rate-limit:client-ip".into()),
            "deny".into(),
            Some("rate_limited".into()),
            429
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_in_an_all_of_chain_refuse_before_the_origin() {
    let loopback_only = IpRulesGate::new(IpRulesConfig {
        rules: vec!["deny 127.0.0.0/8".parse().unwrap()],
        default: postern_ingress::gate::IpAction::Allow,
        trusted_proxies: vec![],
    })
    .unwrap();
    let chain = GateChain::all_of(vec![
        GateChain::gate(loopback_only),
        GateChain::gate(PassThroughGate),
    ])
    .unwrap();
    let origin = Origin::default();
    let edge = start_gated_edge(origin.start().await, chain).await;
    let response = edge.client().get("https://app.test/").send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await.unwrap(), "ip_denied\n");
    assert_eq!(origin.count(), 0);
    assert_eq!(
        edge.audit.summary(),
        vec![(
            Some("ip".into()),
            "deny".into(),
            Some("ip_denied".into()),
            403
        )]
    );
}

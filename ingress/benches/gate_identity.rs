//! Decision cost per request of the identity gates that are not webhooks: a JWT (ES256)
//! verified against a cached JWKS, an OIDC session cookie, an mTLS client chain, IP rules
//! and a rate-limit charge, each through a one-gate `GateChain` (sync path, no I/O),
//! against the same chain holding a pass-through gate in the same run.
//!
//! Run: `cargo bench -p postern-ingress --bench gate_identity`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::EncodePrivateKey as _;
use postern_ingress::gate::oidc::{SESSION_COOKIE, Session};
use postern_ingress::gate::{
    GateChain, GateRequest, IpAction, IpRulesConfig, IpRulesGate, JwtConfig, JwtGate, MtlsConfig,
    MtlsGate, OidcConfig, OidcGate, PassThroughGate, RateLimit, RateLimitConfig, RateLimitKey,
    Secret,
};
use rustls_pki_types::CertificateDer;
use serde_json::json;

const NOW: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

struct Case {
    name: &'static str,
    chain: GateChain,
    headers: HeaderMap,
    chain_der: Vec<CertificateDer<'static>>,
}

/// The JWT gate over one token: `cached` with its verified-token cache (every iteration
/// after the first is a cache hit, as for a client reusing its token), or without it
/// (the signature verified every time, as for a new token per request).
fn jwt_case(cached: bool) -> Case {
    let mut jwks = Vec::new();
    let mut signing = None;
    for n in 0..4 {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        jwks.push(json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": format!("k{n}"),
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }));
        signing = Some(secret);
    }
    let pem = signing.unwrap().to_pkcs8_pem(Default::default()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k3".into());
    let claims =
        json!({"iss": "https://i", "aud": "a", "sub": "svc", "exp": NOW + 600, "groups": ["x"]});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut config = JwtConfig::new("https://i/jwks", "https://i", vec!["a".into()]);
    config.identity_claims = vec!["groups".into()];
    if !cached {
        config.token_cache_capacity = 0;
    }
    let gate = JwtGate::new(config).unwrap();
    gate.install_jwks(
        &serde_json::to_vec(&json!({ "keys": jwks })).unwrap(),
        at(NOW),
    )
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    Case {
        name: if cached {
            "jwt ES256, 4-key JWKS, token reused (verified-token cache)"
        } else {
            "jwt ES256, 4-key JWKS"
        },
        chain: GateChain::gate(gate),
        headers,
        chain_der: Vec::new(),
    }
}

fn oidc_case() -> Case {
    let mut config = OidcConfig::new(
        "https://idp.example",
        "edge",
        "https://app.test/.postern/callback",
        Secret::new(vec![5u8; 32]),
    );
    config.allowed_groups = vec!["eng".into()];
    let gate = OidcGate::new(config).unwrap();
    let cookie = gate
        .codec()
        .encode(
            "session",
            &Session {
                host: "app.test".into(),
                sub: "alice".into(),
                email: "alice@example.com".into(),
                name: Some("Alice Example".into()),
                groups: vec!["eng".into(), "admins".into()],
                exp: NOW + 3600,
            },
        )
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "cookie",
        HeaderValue::from_str(&format!("{SESSION_COOKIE}={cookie}")).unwrap(),
    );
    Case {
        name: "oidc session cookie",
        chain: GateChain::gate(gate),
        headers,
        chain_der: Vec::new(),
    }
}

fn mtls_case() -> Case {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(vec![]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "client");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let gate = MtlsGate::new(&MtlsConfig {
        ca_pem: ca_cert.pem(),
        ca_source: "bench".into(),
        required: true,
    })
    .unwrap();
    Case {
        name: "mtls chain (P-256)",
        chain: GateChain::gate(gate),
        headers: HeaderMap::new(),
        chain_der: vec![leaf.der().clone()],
    }
}

fn cases() -> Vec<Case> {
    let ip = IpRulesGate::new(IpRulesConfig {
        rules: (0..10)
            .map(|n| format!("deny 10.{n}.0.0/16").parse().unwrap())
            .chain(["allow 192.0.2.0/24".parse().unwrap()])
            .collect(),
        default: IpAction::Deny,
        trusted_proxies: Vec::new(),
    })
    .unwrap();
    let mut limit = RateLimitConfig::new(RateLimitKey::ClientIp, u32::MAX, Duration::from_secs(1));
    limit.burst = u32::MAX;
    vec![
        Case {
            name: "baseline pass-through",
            chain: GateChain::gate(PassThroughGate),
            headers: HeaderMap::new(),
            chain_der: Vec::new(),
        },
        jwt_case(false),
        jwt_case(true),
        oidc_case(),
        mtls_case(),
        Case {
            name: "ip rules, 11th rule matches",
            chain: GateChain::gate(ip),
            headers: HeaderMap::new(),
            chain_der: Vec::new(),
        },
        Case {
            name: "rate limit per client ip",
            chain: GateChain::rate_limited(
                GateChain::gate(PassThroughGate),
                Arc::new(RateLimit::new(limit).unwrap()),
            ),
            headers: HeaderMap::new(),
            chain_der: Vec::new(),
        },
    ]
}

fn identity(c: &mut Criterion) {
    let mut group = c.benchmark_group("gate_identity");
    let method = Method::GET;
    for case in cases() {
        let request = GateRequest::new(
            &method,
            "https://app.test/x",
            &case.headers,
            b"",
            "192.0.2.7:40000".parse().unwrap(),
        )
        .with_client_cert_chain(&case.chain_der);
        let outcome = case.chain.evaluate(&request, at(NOW));
        assert!(
            outcome.decision.is_allow(),
            "{}: {:?}",
            case.name,
            outcome.decision
        );
        group.bench_function(BenchmarkId::from_parameter(case.name), |b| {
            b.iter(|| black_box(case.chain.evaluate(&request, at(NOW))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = identity
}
criterion_main!(benches);

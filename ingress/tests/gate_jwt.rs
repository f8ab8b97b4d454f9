//! The JWT bearer gate: tokens signed by test keys (ES256 and RS256 made here), the JWKS
//! served by a local HTTP server that counts fetches, and a fake clock.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::EncodePrivateKey as _;
use postern_ingress::gate::{
    Decision, Gate, GateRequest, JwtConfig, JwtConfigError, JwtGate, ReasonCode,
};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "api.app.test";
const NOW: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// An ES256 key: its encoding key and its public JWK.
struct EcKey {
    encoding: EncodingKey,
    jwk: Value,
}

fn ec_key(kid: &str) -> EcKey {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    EcKey {
        encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }),
    }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "svc-deploy", "email": "deploy@example.com",
        "exp": NOW + 300, "iat": NOW, "scope": "read deploy", "groups": ["ci", "ops"],
    })
}

fn token(key: &EcKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn jwks(keys: &[&EcKey]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }))
        .unwrap()
}

fn config() -> JwtConfig {
    let mut config = JwtConfig::new("https://issuer.test/jwks", ISSUER, vec![AUDIENCE.into()]);
    config.required_claims = vec!["scope=deploy".into()];
    config.identity_claims = vec!["groups".into()];
    config
}

fn decide_with(gate: &JwtGate, authorization: Option<&str>, now: SystemTime) -> Decision {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert("authorization", HeaderValue::from_str(value).unwrap());
    }
    let method = Method::POST;
    let request = GateRequest::new(
        &method,
        "https://app.test/deploy",
        &headers,
        b"",
        "192.0.2.1:4000".parse().unwrap(),
    );
    gate.evaluate(&request, now)
}

fn decide(gate: &JwtGate, token: &str) -> Decision {
    decide_with(gate, Some(&format!("Bearer {token}")), at(NOW))
}

#[test]
fn a_valid_token_is_admitted_with_its_claims_as_identity() {
    let key = ec_key("k1");
    let gate = JwtGate::new(config()).unwrap();
    gate.install_jwks(&jwks(&[&key]), at(NOW)).unwrap();
    match decide(&gate, &token(&key, Some("k1"), &claims())) {
        Decision::Allow { gate, identity } => {
            assert_eq!(gate, "jwt");
            assert_eq!(identity.principal, "jwt:svc-deploy");
            assert_eq!(
                identity.attributes,
                vec![
                    ("Subject".into(), "svc-deploy".to_string()),
                    ("Email".into(), "deploy@example.com".to_string()),
                    ("groups".into(), "ci,ops".to_string()),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    // A token without kid is tried against the keys.
    assert!(decide(&gate, &token(&key, None, &claims())).is_allow());
}

#[test]
fn denials_carry_the_right_reason() {
    let key = ec_key("k1");
    let other = ec_key("k1"); // same kid, another key: a forgery
    let gate = JwtGate::new(config()).unwrap();
    gate.install_jwks(&jwks(&[&key]), at(NOW)).unwrap();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims();
        change(&mut c);
        decide(&gate, &token(&key, Some("k1"), &c)).deny_reason()
    };

    assert_eq!(
        decide(&gate, &token(&other, Some("k1"), &claims())).deny_reason(),
        Some(ReasonCode::TokenInvalid)
    );
    assert_eq!(
        with(&|c| c["exp"] = json!(NOW - 61)),
        Some(ReasonCode::TokenExpired)
    );
    assert_eq!(
        with(&|c| c["exp"] = json!(NOW - 30)),
        None,
        "inside the 60 s skew"
    );
    assert_eq!(
        with(&|c| c["nbf"] = json!(NOW + 120)),
        Some(ReasonCode::TokenExpired)
    );
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        Some(ReasonCode::TokenClaimsRejected),
        "exp is required"
    );
    assert_eq!(
        with(&|c| c["iss"] = json!("https://evil.test")),
        Some(ReasonCode::TokenClaimsRejected)
    );
    assert_eq!(
        with(&|c| c["aud"] = json!("another-service")),
        Some(ReasonCode::TokenClaimsRejected)
    );
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
        Some(ReasonCode::TokenClaimsRejected)
    );
    assert_eq!(
        with(&|c| c["scope"] = json!("read")),
        Some(ReasonCode::TokenClaimsRejected),
        "required claim value"
    );
    assert_eq!(
        with(&|c| c["aud"] = json!([AUDIENCE, "other"])),
        None,
        "an audience list naming ours"
    );

    // An HS256 token (e.g. signed with the public key as an HMAC secret): refused.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(b"x")).unwrap();
    assert_eq!(
        decide(&gate, &hs).deny_reason(),
        Some(ReasonCode::TokenInvalid)
    );

    // alg "none": never.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
    let unsigned = format!("{none_header}.{payload}.");
    assert_eq!(
        decide(&gate, &unsigned).deny_reason(),
        Some(ReasonCode::TokenMalformed)
    );
}

#[test]
fn malformed_and_missing_tokens() {
    let key = ec_key("k1");
    let gate = JwtGate::new(config()).unwrap();
    gate.install_jwks(&jwks(&[&key]), at(NOW)).unwrap();
    match decide_with(&gate, None, at(NOW)) {
        Decision::Deny {
            status,
            reason,
            headers,
        } => {
            assert_eq!(status, 401);
            assert_eq!(reason, ReasonCode::TokenMissing);
            assert_eq!(headers[0].0, "www-authenticate");
            assert_eq!(headers[0].1, "Bearer");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decide_with(&gate, Some("Basic YWxpY2U6cHc="), at(NOW)).deny_reason(),
        Some(ReasonCode::TokenMissing)
    );
    for bad in [
        "abc",
        "a.b.c",
        "Zm9v.Zm9v",
        "....",
        "eyJhbGciOiJFUzI1NiJ9.e30",
    ] {
        assert_eq!(
            decide(&gate, bad).deny_reason(),
            Some(ReasonCode::TokenMalformed),
            "{bad}"
        );
    }
    let huge = "a".repeat(20_000);
    assert_eq!(
        decide(&gate, &huge).deny_reason(),
        Some(ReasonCode::TokenMalformed)
    );
}

#[test]
fn without_keys_the_idp_is_reported_unavailable() {
    let key = ec_key("k1");
    let gate = JwtGate::new(config()).unwrap();
    assert_eq!(
        decide(&gate, &token(&key, Some("k1"), &claims())).deny_reason(),
        Some(ReasonCode::IdpUnavailable)
    );
    assert!(gate.install_jwks(b"not json", at(NOW)).is_err());
    assert!(gate.install_jwks(br#"{"keys":[]}"#, at(NOW)).is_err());
    assert!(
        gate.install_jwks(
            br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
            at(NOW)
        )
        .is_err(),
        "a symmetric key is not usable"
    );
}

#[test]
fn configuration_errors_say_what_to_fix() {
    let error = |change: &dyn Fn(&mut JwtConfig)| {
        let mut c = config();
        change(&mut c);
        JwtGate::new(c).unwrap_err()
    };
    assert_eq!(
        error(&|c| c.algorithms = vec!["none".into()]),
        JwtConfigError::NoneAlgorithm
    );
    assert_eq!(
        error(&|c| c.algorithms = vec!["ES256".into(), "HS256".into()]).to_string(),
        "algorithm HS256 is an HMAC (shared-secret) algorithm, which a JWKS of public keys cannot verify; allow only public-key algorithms"
    );
    assert!(matches!(
        error(&|c| c.algorithms = vec!["XS256".into()]),
        JwtConfigError::UnknownAlgorithm(_)
    ));
    assert_eq!(
        error(&|c| c.jwks_url = Some("http://idp.example/jwks".into())).to_string(),
        "jwks_url \"http://idp.example/jwks\" must be an absolute https:// URL (http:// only for 127.0.0.1, ::1 or localhost)"
    );
    assert_eq!(error(&|c| c.audiences.clear()), JwtConfigError::NoAudience);
    assert_eq!(error(&|c| c.issuer.clear()), JwtConfigError::NoIssuer);
    assert!(matches!(
        error(&|c| c.identity_claims = vec!["bad name".into()]),
        JwtConfigError::ClaimName(_)
    ));
    let mut local = config();
    local.jwks_url = Some("http://127.0.0.1:9/jwks".into());
    JwtGate::new(local).unwrap();
}

/// A JWKS server whose document can be swapped; counts fetches.
#[derive(Clone, Default)]
struct JwksServer {
    document: Arc<Mutex<Vec<u8>>>,
    /// Served at `/.well-known/openid-configuration` when set (the JWKS everywhere else).
    discovery: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<_>| {
                        let server = server.clone();
                        async move {
                            server.fetches.fetch_add(1, Ordering::SeqCst);
                            let discovery = server.discovery.lock().unwrap().clone();
                            let body = match discovery {
                                Some(document)
                                    if request.uri().path()
                                        == "/.well-known/openid-configuration" =>
                                {
                                    document.into_bytes()
                                }
                                _ => server.document.lock().unwrap().clone(),
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        address
    }
}

/// A copy of `token` with the byte at `index` of its `part` (0 header, 1 payload, 2
/// signature) replaced by another base64url character.
fn one_byte_off(token: &str, part: usize, index: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let bytes = replace_char(&parts[part], index);
    parts[part] = bytes;
    parts.join(".")
}

fn replace_char(text: &str, index: usize) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    chars[index] = if chars[index] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[test]
fn a_cached_token_still_expires_on_time() {
    let key = ec_key("k1");
    let gate = JwtGate::new(config()).unwrap();
    gate.install_jwks(&jwks(&[&key]), at(NOW)).unwrap();
    let mut claims = claims();
    claims["nbf"] = json!(NOW + 100);
    let token = token(&key, Some("k1"), &claims);
    // Not valid yet at NOW (nbf NOW + 100, skew 60): refused, and not cached.
    assert_eq!(
        decide_with(&gate, Some(&format!("Bearer {token}")), at(NOW)).deny_reason(),
        Some(ReasonCode::TokenExpired)
    );
    assert_eq!(gate.cached_tokens(), 0);
    let bearer = format!("Bearer {token}");
    assert!(decide_with(&gate, Some(&bearer), at(NOW + 40)).is_allow());
    assert_eq!(gate.cached_tokens(), 1);
    // Served from the cache, the times are checked against each request's now: exp is
    // NOW + 300 with 60 s of skew.
    assert!(decide_with(&gate, Some(&bearer), at(NOW + 359)).is_allow());
    assert_eq!(
        decide_with(&gate, Some(&bearer), at(NOW + 360)).deny_reason(),
        Some(ReasonCode::TokenExpired)
    );
    // A clock set back before nbf - skew: not valid yet, even though it is cached.
    assert_eq!(
        decide_with(&gate, Some(&bearer), at(NOW + 39)).deny_reason(),
        Some(ReasonCode::TokenExpired)
    );
    assert!(decide_with(&gate, Some(&bearer), at(NOW + 41)).is_allow());
}

#[test]
fn a_token_one_byte_off_a_cached_one_is_checked_in_full() {
    let key = ec_key("k1");
    let gate = JwtGate::new(config()).unwrap();
    gate.install_jwks(&jwks(&[&key]), at(NOW)).unwrap();
    let good = token(&key, Some("k1"), &claims());
    assert!(decide(&gate, &good).is_allow());
    assert_eq!(gate.cached_tokens(), 1);
    for (part, index) in [(2, 20), (2, 0), (1, 10), (0, 5)] {
        let altered = one_byte_off(&good, part, index);
        assert_ne!(altered, good);
        let decision = decide(&gate, &altered);
        assert!(
            matches!(
                decision.deny_reason(),
                Some(ReasonCode::TokenInvalid | ReasonCode::TokenMalformed)
            ),
            "part {part} byte {index}: {decision:?}"
        );
    }
    assert_eq!(gate.cached_tokens(), 1, "refused tokens are not cached");
    assert!(decide(&gate, &good).is_allow());
}

#[test]
fn forged_and_refused_tokens_are_never_cached() {
    let key = ec_key("k1");
    let forger = ec_key("k1");
    let gate = JwtGate::new(config()).unwrap();
    gate.install_jwks(&jwks(&[&key]), at(NOW)).unwrap();
    let forged = token(&forger, Some("k1"), &claims());
    for _ in 0..3 {
        assert_eq!(
            decide(&gate, &forged).deny_reason(),
            Some(ReasonCode::TokenInvalid)
        );
    }
    let mut other_audience = claims();
    other_audience["aud"] = json!("someone-else");
    let mut no_scope = claims();
    no_scope["scope"] = json!("read");
    let mut expired = claims();
    expired["exp"] = json!(NOW - 100);
    for claims in [other_audience, no_scope, expired] {
        assert!(!decide(&gate, &token(&key, Some("k1"), &claims)).is_allow());
    }
    assert_eq!(gate.cached_tokens(), 0);
}

#[test]
fn the_token_cache_is_bounded() {
    let key = ec_key("k1");
    let mut config = config();
    config.token_cache_capacity = 3;
    let gate = JwtGate::new(config).unwrap();
    gate.install_jwks(&jwks(&[&key]), at(NOW)).unwrap();
    for n in 0..8 {
        let mut claims = claims();
        claims["sub"] = json!(format!("svc-{n}"));
        claims["exp"] = json!(NOW + 300 + n);
        assert!(decide(&gate, &token(&key, Some("k1"), &claims)).is_allow());
        assert!(gate.cached_tokens() <= 3);
    }
    assert_eq!(gate.cached_tokens(), 3);

    let mut config = self::config();
    config.token_cache_capacity = 0;
    let uncached = JwtGate::new(config).unwrap();
    uncached.install_jwks(&jwks(&[&key]), at(NOW)).unwrap();
    assert!(decide(&uncached, &token(&key, Some("k1"), &claims())).is_allow());
    assert_eq!(uncached.cached_tokens(), 0);
}

#[test]
fn a_changed_jwks_empties_the_token_cache() {
    let old = ec_key("k1");
    let new = ec_key("k2");
    let gate = JwtGate::new(config()).unwrap();
    gate.install_jwks(&jwks(&[&old]), at(NOW)).unwrap();
    let token = token(&old, Some("k1"), &claims());
    assert!(decide(&gate, &token).is_allow());
    // The same document fetched again keeps the verified tokens.
    gate.install_jwks(&jwks(&[&old]), at(NOW + 10)).unwrap();
    assert_eq!(gate.cached_tokens(), 1);
    // The issuer dropped the key: the cached token is checked in full and refused.
    gate.install_jwks(&jwks(&[&new]), at(NOW + 20)).unwrap();
    assert_eq!(gate.cached_tokens(), 0);
    assert_eq!(
        decide(&gate, &token).deny_reason(),
        Some(ReasonCode::TokenInvalid)
    );
}

async fn decide_async(gate: &JwtGate, token: &str, now: SystemTime) -> Decision {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let method = Method::GET;
    let request = GateRequest::new(
        &method,
        "https://app.test/",
        &headers,
        b"",
        "192.0.2.1:4000".parse().unwrap(),
    );
    gate.evaluate_async(&request, now).await
}

#[tokio::test]
async fn jwks_is_fetched_cached_and_refreshed_on_an_unknown_kid_at_a_bounded_rate() {
    let server = JwksServer::default();
    let address = server.start().await;
    let old = ec_key("old");
    let new = ec_key("new");
    *server.document.lock().unwrap() = jwks(&[&old]);
    let mut config = config();
    config.jwks_url = Some(format!("http://{address}/jwks"));
    let gate = JwtGate::new(config).unwrap();

    // First use fetches; later ones use the cache.
    for _ in 0..3 {
        assert!(
            decide_async(&gate, &token(&old, Some("old"), &claims()), at(NOW))
                .await
                .is_allow()
        );
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // The issuer rotates. A token with the new kid triggers a refresh only once the
    // minimum interval (30 s) has passed since the last fetch.
    *server.document.lock().unwrap() = jwks(&[&new]);
    let fresh = token(&new, Some("new"), &claims());
    assert_eq!(
        decide_async(&gate, &fresh, at(NOW + 5)).await.deny_reason(),
        Some(ReasonCode::TokenInvalid)
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1, "rate-limited");
    assert!(decide_async(&gate, &fresh, at(NOW + 31)).await.is_allow());
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);

    // A flood of made-up kids costs at most one fetch per interval.
    for n in 0..20 {
        let made_up = token(&old, Some(&format!("bogus-{n}")), &claims());
        assert_eq!(
            decide_async(&gate, &made_up, at(NOW + 40))
                .await
                .deny_reason(),
            Some(ReasonCode::TokenInvalid)
        );
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);

    // A broken JWKS keeps the cached keys.
    *server.document.lock().unwrap() = b"<html>oops</html>".to_vec();
    let unknown = token(&new, Some("another"), &claims());
    let _ = decide_async(&gate, &unknown, at(NOW + 100)).await;
    assert_eq!(server.fetches.load(Ordering::SeqCst), 3);
    assert!(decide_async(&gate, &fresh, at(NOW + 101)).await.is_allow());
}

#[tokio::test]
async fn without_a_jwks_url_the_keys_are_found_through_the_issuers_discovery_document() {
    let server = JwksServer::default();
    let address = server.start().await;
    let issuer = format!("http://{address}");
    let key = ec_key("k1");
    *server.document.lock().unwrap() = jwks(&[&key]);
    *server.discovery.lock().unwrap() =
        Some(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string());
    let mut config = config();
    config.jwks_url = None;
    config.issuer = issuer.clone();
    let gate = JwtGate::new(config).unwrap();
    let mut claims = claims();
    claims["iss"] = issuer.clone().into();
    assert!(
        decide_async(&gate, &token(&key, Some("k1"), &claims), at(NOW))
            .await
            .is_allow()
    );
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        2,
        "discovery, then JWKS"
    );

    // A discovery document that names another issuer is not believed.
    let other = JwksServer::default();
    let other_address = other.start().await;
    let other_issuer = format!("http://{other_address}");
    *other.document.lock().unwrap() = jwks(&[&key]);
    *other.discovery.lock().unwrap() = Some(
        json!({"issuer": "https://evil.example", "jwks_uri": format!("{other_issuer}/jwks")})
            .to_string(),
    );
    let gate = JwtGate::new(JwtConfig::discovered(&other_issuer, vec![AUDIENCE.into()])).unwrap();
    let error = gate.refresh(at(NOW)).await.unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "discovering the JWKS of {other_issuer} failed: the discovery document names issuer Some(\"https://evil.example\"), not this issuer"
        )
    );

    // An issuer that is not a URL cannot be discovered: the configuration says so.
    let error = JwtGate::new(JwtConfig::discovered("idp", vec![AUDIENCE.into()])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "issuer \"idp\" is not an https:// URL (http:// only on loopback), so its keys cannot be discovered; give jwks_url"
    );
}

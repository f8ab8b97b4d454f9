//! The JWT bearer gate: `Authorization: Bearer <JWT>` verified with the issuer's JWKS.
//!
//! **Keys and I/O.** The JWKS is fetched from `jwks_url`, or, without one, from the
//! `jwks_uri` of the issuer's OpenID Connect discovery document
//! (`{issuer}/.well-known/openid-configuration`, fetched once, its `issuer` checked), and
//! cached. The decision itself
//! ([`Gate::evaluate`]) is pure: it uses the cached keys and the `now` it is given. The
//! fetching happens in [`Gate::evaluate_async`], which the edge calls: before deciding, it
//! (re)fetches the JWKS when nothing is cached, when the cache is older than `cache_for`,
//! or when the token names a `kid` the cache does not hold (a key rotation). Fetches are
//! rate-limited to one per `min_refresh_interval`, so tokens with made-up `kid`s cannot
//! turn the edge into a flood against the IdP; concurrent requests share one fetch.
//!
//! **What is checked**: the algorithm is on the allowed list (never `none`; HMAC
//! algorithms are refused at configuration time, since a JWKS publishes public keys) and
//! matches the key's own `alg`; the signature; `exp` (required) and `nbf` against `now`
//! with the clock skew; `iss` and `aud` (both required); and the configured required
//! claims.
//!
//! **Verified tokens are cached.** A token that was admitted is remembered (at most
//! [`JwtConfig::token_cache_capacity`] of them, keyed by the SHA-256 of its exact bytes,
//! with the identity its claims gave), so a client that sends the same token again pays
//! no signature check: only `exp` and `nbf` are checked again, with the clock skew,
//! against the `now` of that request. Tokens that were refused are never cached. A JWKS
//! whose content differs from the installed one empties the cache; a changed gate
//! configuration builds a new gate, with an empty cache.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::verified_credentials::{
    CredentialDigest, VerifiedCredential, VerifiedCredentials, token_digest,
};
use super::{Decision, Gate, GateFuture, GateRequest, Identity, ReasonCode};

/// The largest JWKS document fetched, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The JWT gate's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// Where the issuer publishes its keys (`https://idp.example/.well-known/jwks.json`).
    /// `http` is accepted only for loopback hosts (tests, a local IdP). `None`: found
    /// through the issuer's discovery document (see the [module docs](self)).
    pub jwks_url: Option<String>,
    /// The exact `iss` the tokens must carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one of them.
    pub audiences: Vec<String>,
    /// Accepted algorithms (`RS256`, `ES256`, `PS256`, `EdDSA`, ...). `none` and `HS*`
    /// are refused.
    pub algorithms: Vec<String>,
    /// How far the edge's clock and the issuer's may disagree, for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// Claims that must be present: `name`, or `name=value` for a string claim equal to
    /// `value` or an array claim containing it (e.g. `scope=deploy`, `groups=eng`).
    pub required_claims: Vec<String>,
    /// Further claims passed to the origin as `Postern-Identity-<Claim>` (besides `sub`
    /// and `email`, which always are).
    pub identity_claims: Vec<String>,
    /// The shortest time between two JWKS fetches.
    pub min_refresh_interval: Duration,
    /// How long a fetched JWKS is used before it is fetched again.
    pub cache_for: Duration,
    /// How many verified tokens are remembered (see the [module docs](self)); `0`
    /// verifies every request's signature.
    pub token_cache_capacity: usize,
}

/// The default number of verified tokens a JWT gate remembers.
pub const DEFAULT_TOKEN_CACHE_CAPACITY: usize = 10_000;

impl JwtConfig {
    /// Settings with the defaults: `RS256` and `ES256`, 60 s of clock skew, a refetch at
    /// most every 30 s and at least every hour, [`DEFAULT_TOKEN_CACHE_CAPACITY`] verified
    /// tokens remembered.
    pub fn new(
        jwks_url: impl Into<String>,
        issuer: impl Into<String>,
        audiences: Vec<String>,
    ) -> Self {
        Self::with_jwks_url(Some(jwks_url.into()), issuer, audiences)
    }

    /// Like [`JwtConfig::new`], with the JWKS URL found through the issuer's OpenID Connect
    /// discovery document. The issuer must then be an https URL (http on loopback).
    pub fn discovered(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self::with_jwks_url(None, issuer, audiences)
    }

    fn with_jwks_url(
        jwks_url: Option<String>,
        issuer: impl Into<String>,
        audiences: Vec<String>,
    ) -> Self {
        Self {
            jwks_url,
            issuer: issuer.into(),
            audiences,
            algorithms: vec!["RS256".into(), "ES256".into()],
            clock_skew: Duration::from_secs(60),
            required_claims: Vec::new(),
            identity_claims: Vec::new(),
            min_refresh_interval: Duration::from_secs(30),
            cache_for: Duration::from_secs(3600),
            token_cache_capacity: DEFAULT_TOKEN_CACHE_CAPACITY,
        }
    }
}

/// Why the JWT gate's settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// The JWKS URL is not an absolute https URL (or http on loopback).
    #[error(
        "jwks_url {0:?} must be an absolute https:// URL (http:// only for 127.0.0.1, ::1 or localhost)"
    )]
    JwksUrl(String),
    /// No issuer.
    #[error("the JWT gate needs an issuer: the exact `iss` its tokens carry")]
    NoIssuer,
    /// Without a JWKS URL, the issuer must be a URL its discovery document can be read at.
    #[error(
        "issuer {0:?} is not an https:// URL (http:// only on loopback), so its keys cannot be discovered; give jwks_url"
    )]
    DiscoveryIssuer(String),
    /// No audience.
    #[error(
        "the JWT gate needs at least one audience, or it would accept tokens the issuer made for any other service"
    )]
    NoAudience,
    /// An algorithm is unknown.
    #[error(
        "algorithm {0:?} is unknown; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
    )]
    UnknownAlgorithm(String),
    /// `none` was allowed.
    #[error("algorithm \"none\" is never accepted: it means an unsigned token")]
    NoneAlgorithm,
    /// An HMAC algorithm was allowed.
    #[error(
        "algorithm {0} is an HMAC (shared-secret) algorithm, which a JWKS of public keys cannot verify; allow only public-key algorithms"
    )]
    HmacAlgorithm(String),
    /// No algorithms.
    #[error("the JWT gate needs at least one allowed algorithm")]
    NoAlgorithm,
    /// A claim name cannot be a header name.
    #[error("claim {0:?} cannot be used: claim names must be letters, digits, '-' or '_'")]
    ClaimName(String),
}

/// Why a JWKS could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The fetch failed.
    #[error("fetching the JWKS from {url} failed: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The document is not a JWKS.
    #[error("the JWKS is not a JSON Web Key Set: {0}")]
    Parse(String),
    /// No key in the set can be used.
    #[error("the JWKS holds no usable signing key")]
    NoUsableKey,
    /// The issuer's discovery document could not be used to find the JWKS.
    #[error("discovering the JWKS of {issuer} failed: {reason}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// What went wrong.
        reason: String,
    },
}

/// The JWT bearer gate (`jwt`). Admits as `jwt:<sub>` with the attributes `Subject`,
/// `Email` (when present) and the configured identity claims.
pub struct JwtGate {
    config: JwtConfig,
    algorithms: Vec<Algorithm>,
    validations: HashMap<Algorithm, Validation>,
    required: Vec<(String, Option<String>)>,
    keys: RwLock<KeyCache>,
    /// Bumped (under the `keys` write lock) whenever the installed keys change; verified
    /// tokens of an older generation never match.
    key_generation: AtomicU64,
    verified: VerifiedCredentials,
    last_fetch_attempt: Mutex<Option<SystemTime>>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// The JWKS URL read from the issuer's discovery document, once read.
    discovered_jwks_url: Mutex<Option<String>>,
    http: reqwest::Client,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<CachedKey>,
    fetched_at: Option<SystemTime>,
    /// The SHA-256 of the installed JWKS document, to tell a changed set from a re-fetch
    /// of the same one.
    document: Option<[u8; 32]>,
}

struct CachedKey {
    kid: Option<String>,
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

impl fmt::Debug for JwtGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtGate")
            .field("jwks_url", &self.config.jwks_url)
            .field("issuer", &self.config.issuer)
            .field("audiences", &self.config.audiences)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtGate {
    /// A gate from its settings (no fetch yet: keys come on first use or through
    /// [`JwtGate::install_jwks`]). Fails on an unusable setting, naming it.
    pub fn new(config: JwtConfig) -> Result<Self, JwtConfigError> {
        if config.issuer.is_empty() {
            return Err(JwtConfigError::NoIssuer);
        }
        match &config.jwks_url {
            Some(url) => check_jwks_url(url)?,
            None => check_jwks_url(&discovery_url(&config.issuer))
                .map_err(|_| JwtConfigError::DiscoveryIssuer(config.issuer.clone()))?,
        }
        if config.audiences.is_empty() || config.audiences.iter().any(String::is_empty) {
            return Err(JwtConfigError::NoAudience);
        }
        if config.algorithms.is_empty() {
            return Err(JwtConfigError::NoAlgorithm);
        }
        let mut algorithms = Vec::new();
        for name in &config.algorithms {
            if name.eq_ignore_ascii_case("none") {
                return Err(JwtConfigError::NoneAlgorithm);
            }
            let algorithm = Algorithm::from_str(name)
                .map_err(|_| JwtConfigError::UnknownAlgorithm(name.clone()))?;
            if matches!(
                algorithm,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            ) {
                return Err(JwtConfigError::HmacAlgorithm(name.clone()));
            }
            algorithms.push(algorithm);
        }
        let mut required = Vec::new();
        for claim in &config.required_claims {
            let (name, value) = match claim.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().to_string())),
                None => (claim.trim(), None),
            };
            check_claim_name(name)?;
            required.push((name.to_string(), value));
        }
        for claim in &config.identity_claims {
            check_claim_name(claim)?;
        }
        let validations = algorithms
            .iter()
            .map(|algorithm| {
                let mut validation = Validation::new(*algorithm);
                validation.validate_exp = false; // checked against `now` below
                validation.validate_nbf = false;
                validation.leeway = 0;
                validation.set_issuer(&[&config.issuer]);
                validation.set_audience(&config.audiences);
                validation.set_required_spec_claims(&["iss", "aud"]);
                (*algorithm, validation)
            })
            .collect();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let token_cache_capacity = config.token_cache_capacity;
        Ok(Self {
            config,
            algorithms,
            validations,
            required,
            keys: RwLock::new(KeyCache::default()),
            key_generation: AtomicU64::new(0),
            verified: VerifiedCredentials::new(token_cache_capacity),
            last_fetch_attempt: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            discovered_jwks_url: Mutex::new(None),
            http,
        })
    }

    /// Replaces the cached keys with the JWKS document `jwks` (JSON), as fetched at
    /// `now`. Keys of other types or uses (encryption) are skipped. Returns the number of
    /// usable keys; fails when there are none, keeping the previous keys.
    pub fn install_jwks(&self, jwks: &[u8], now: SystemTime) -> Result<usize, JwksError> {
        let set: JwkSet =
            serde_json::from_slice(jwks).map_err(|e| JwksError::Parse(e.to_string()))?;
        let keys: Vec<CachedKey> = set
            .keys
            .iter()
            .filter(|jwk| {
                !matches!(
                    jwk.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                ) && !matches!(
                    jwk.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
                )
            })
            .filter_map(|jwk| {
                let algorithm = match jwk.common.key_algorithm {
                    Some(declared) => Some(Algorithm::from_str(&declared.to_string()).ok()?),
                    None => None,
                };
                Some(CachedKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key: DecodingKey::from_jwk(jwk).ok()?,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        let count = keys.len();
        let document = document_digest(jwks);
        if let Ok(mut cache) = self.keys.write() {
            let changed = cache.document != Some(document);
            *cache = KeyCache {
                keys,
                fetched_at: Some(now),
                document: Some(document),
            };
            if changed {
                self.key_generation.fetch_add(1, Ordering::SeqCst);
                self.verified.clear();
            }
        }
        Ok(count)
    }

    /// How many verified tokens the gate remembers now (see the [module docs](self)).
    pub fn cached_tokens(&self) -> usize {
        self.verified.len()
    }

    /// Fetches the JWKS now and installs it. Called by [`Gate::evaluate_async`] when
    /// needed; the edge never needs to call it directly.
    pub async fn refresh(&self, now: SystemTime) -> Result<usize, JwksError> {
        let url = self.jwks_url().await?;
        let body = self
            .fetch_json(&url)
            .await
            .map_err(|reason| JwksError::Fetch {
                url: url.clone(),
                reason,
            })?;
        self.install_jwks(&body, now)
    }

    /// The JWKS URL: the configured one, or the discovery document's `jwks_uri` (read
    /// once; a failed read is tried again at the next refresh).
    async fn jwks_url(&self) -> Result<String, JwksError> {
        if let Some(url) = &self.config.jwks_url {
            return Ok(url.clone());
        }
        if let Some(url) = self
            .discovered_jwks_url
            .lock()
            .ok()
            .and_then(|cached| cached.clone())
        {
            return Ok(url);
        }
        let issuer = &self.config.issuer;
        let fail = |reason: String| JwksError::Discovery {
            issuer: issuer.clone(),
            reason,
        };
        let document = self
            .fetch_json(&discovery_url(issuer))
            .await
            .map_err(fail)?;
        let document: Value = serde_json::from_slice(&document)
            .map_err(|e| fail(format!("the discovery document is not JSON: {e}")))?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer it
        // was fetched for, or an attacker's document could point at its own keys.
        let named = document.get("issuer").and_then(Value::as_str);
        if named != Some(issuer.as_str()) {
            return Err(fail(format!(
                "the discovery document names issuer {named:?}, not this issuer"
            )));
        }
        let url = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("the discovery document has no jwks_uri".into()))?;
        check_jwks_url(url).map_err(|e| fail(e.to_string()))?;
        if let Ok(mut cached) = self.discovered_jwks_url.lock() {
            *cached = Some(url.to_owned());
        }
        tracing::info!(issuer = %issuer, jwks_url = url, "JWKS URL discovered");
        Ok(url.to_owned())
    }

    /// GETs `url` as JSON, refusing redirects and bodies over [`MAX_JWKS_BYTES`].
    async fn fetch_json(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Whether the cache should be refetched for a token naming `kid`, at `now`.
    fn wants_refresh(&self, kid: Option<&str>, now: SystemTime) -> bool {
        let Ok(cache) = self.keys.read() else {
            return false;
        };
        let stale = cache
            .fetched_at
            .is_none_or(|at| now.duration_since(at).unwrap_or_default() >= self.config.cache_for);
        let unknown =
            kid.is_some_and(|kid| !cache.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
        stale || unknown
    }

    /// Claims the right to fetch now, if the last attempt is old enough.
    fn may_fetch(&self, now: SystemTime) -> bool {
        let Ok(mut last) = self.last_fetch_attempt.lock() else {
            return false;
        };
        let allowed = last.is_none_or(|at| {
            now.duration_since(at).unwrap_or_default() >= self.config.min_refresh_interval
        });
        if allowed {
            *last = Some(now);
        }
        allowed
    }

    fn check(&self, request: &GateRequest<'_>, now: SystemTime) -> Result<Identity, ReasonCode> {
        let token = bearer_token(request)?;
        let digest = token_digest(token);
        let generation = self.key_generation.load(Ordering::SeqCst);
        let skew = self.config.clock_skew.as_secs();
        if let Some(cached) = self.verified.get(&digest, generation, unix_secs(now), skew) {
            return cached;
        }
        self.check_in_full(token, digest, now)
    }

    /// The full check of a token the cache does not hold; an admitted token is cached
    /// under the key generation it verified with.
    fn check_in_full(
        &self,
        token: &str,
        digest: CredentialDigest,
        now: SystemTime,
    ) -> Result<Identity, ReasonCode> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| ReasonCode::TokenMalformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(ReasonCode::TokenInvalid);
        }
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or(ReasonCode::TokenInvalid)?;
        let cache = self.keys.read().map_err(|_| ReasonCode::IdpUnavailable)?;
        // Read under the lock, so it is the generation of the keys used below.
        let generation = self.key_generation.load(Ordering::SeqCst);
        if cache.keys.is_empty() {
            return Err(ReasonCode::IdpUnavailable);
        }
        let candidates = cache.keys.iter().filter(|key| {
            key.algorithm.is_none_or(|declared| declared == header.alg)
                && match (&header.kid, &key.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        let mut outcome = Err(ReasonCode::TokenInvalid);
        for key in candidates.take(8) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(error) => {
                    let reason = reason_for(error.kind());
                    let stop = reason != ReasonCode::TokenInvalid;
                    outcome = Err(reason);
                    if stop {
                        break;
                    }
                }
            }
        }
        let claims = outcome?;
        drop(cache);
        let (expires, not_before) = self.check_times(&claims, now)?;
        for (name, value) in &self.required {
            let present = match (claims.get(name), value) {
                (None | Some(Value::Null), _) => false,
                (Some(_), None) => true,
                (Some(Value::String(text)), Some(wanted)) => {
                    text == wanted || text.split(' ').any(|part| part == wanted)
                }
                (Some(Value::Array(items)), Some(wanted)) => {
                    items.iter().any(|item| item.as_str() == Some(wanted))
                }
                (Some(other), Some(wanted)) => {
                    serde_json::from_str::<Value>(wanted).is_ok_and(|parsed| parsed == *other)
                }
            };
            if !present {
                return Err(ReasonCode::TokenClaimsRejected);
            }
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(ReasonCode::TokenClaimsRejected)?;
        let mut identity =
            Identity::new(format!("jwt:{subject}")).with_attribute("Subject", subject);
        if let Some(email) = claims.get("email").and_then(Value::as_str) {
            identity = identity.with_attribute("Email", email);
        }
        for name in &self.config.identity_claims {
            if let Some(value) = claims.get(name) {
                identity = identity.with_attribute(name.clone(), claim_text(value));
            }
        }
        self.verified.insert(
            digest,
            VerifiedCredential {
                admitted: identity.clone(),
                expires,
                not_before,
            },
            generation,
            unix_secs(now),
            self.config.clock_skew.as_secs(),
        );
        Ok(identity)
    }

    /// Checks `exp` (required) and `nbf` against `now` with the clock skew; returns them.
    fn check_times(
        &self,
        claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<(u64, Option<u64>), ReasonCode> {
        let now = unix_secs(now);
        let skew = self.config.clock_skew.as_secs();
        let number = |name: &str| -> Result<Option<u64>, ReasonCode> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value
                    .as_u64()
                    .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or(ReasonCode::TokenMalformed),
            }
        };
        let expires = number("exp")?.ok_or(ReasonCode::TokenClaimsRejected)?;
        if expires.saturating_add(skew) <= now {
            return Err(ReasonCode::TokenExpired);
        }
        let not_before = number("nbf")?;
        if not_before.is_some_and(|not_before| not_before > now.saturating_add(skew)) {
            return Err(ReasonCode::TokenExpired);
        }
        Ok((expires, not_before))
    }
}

impl Gate for JwtGate {
    fn name(&self) -> &str {
        "jwt"
    }

    fn evaluate(&self, request: &GateRequest<'_>, now: SystemTime) -> Decision {
        match self.check(request, now) {
            Ok(identity) => Decision::Allow {
                gate: self.name().to_string(),
                identity,
            },
            Err(ReasonCode::TokenMissing) => Decision::deny_with_header(
                ReasonCode::TokenMissing,
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            ),
            Err(reason) => Decision::deny(reason),
        }
    }

    fn evaluate_async<'a>(
        &'a self,
        request: &'a GateRequest<'a>,
        now: SystemTime,
    ) -> GateFuture<'a> {
        GateFuture::io(async move {
            let token = bearer_token(request).ok();
            // A token verified under the current keys needs no header decoding: only a
            // JWKS past `cache_for` is fetched again for it.
            let generation = self.key_generation.load(Ordering::SeqCst);
            let kid = match token {
                Some(token) if self.verified.contains(&token_digest(token), generation) => {
                    Some(None)
                }
                _ => token
                    .and_then(|token| jsonwebtoken::decode_header(token).ok())
                    .filter(|header| self.algorithms.contains(&header.alg))
                    .map(|header| header.kid),
            };
            if let Some(kid) = kid
                && self.wants_refresh(kid.as_deref(), now)
            {
                let _one_fetch_at_a_time = self.fetch_lock.lock().await;
                // Another request may have fetched while this one waited.
                if self.wants_refresh(kid.as_deref(), now) && self.may_fetch(now) {
                    match self.refresh(now).await {
                        Ok(count) => {
                            tracing::info!(issuer = %self.config.issuer, keys = count, "JWKS fetched");
                        }
                        Err(error) => {
                            tracing::warn!(%error, "JWKS refresh failed; using the cached keys");
                        }
                    }
                }
            }
            self.evaluate(request, now)
        })
    }
}

/// Unix seconds of `now` (0 before the epoch).
fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The SHA-256 of a fetched JWKS document.
fn document_digest(bytes: &[u8]) -> [u8; 32] {
    <sha2::Sha256 as sha2::Digest>::digest(bytes).into()
}

/// The token of `Authorization: Bearer <token>`.
fn bearer_token<'a>(request: &GateRequest<'a>) -> Result<&'a str, ReasonCode> {
    let value = request
        .single_header("authorization")
        .map_err(|_| ReasonCode::TokenMalformed)?
        .ok_or(ReasonCode::TokenMissing)?;
    let (scheme, token) = value.split_once(' ').ok_or(ReasonCode::TokenMissing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ReasonCode::TokenMissing);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > 16 * 1024 {
        return Err(ReasonCode::TokenMalformed);
    }
    Ok(token)
}

fn reason_for(kind: &ErrorKind) -> ReasonCode {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::RsaFailedSigning
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => ReasonCode::TokenInvalid,
        ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::InvalidSubject
        | ErrorKind::MissingRequiredClaim(_) => ReasonCode::TokenClaimsRejected,
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => ReasonCode::TokenExpired,
        _ => ReasonCode::TokenMalformed,
    }
}

/// A claim as header text: strings as they are, arrays of strings comma-joined, anything
/// else as compact JSON.
fn claim_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn check_claim_name(name: &str) -> Result<(), JwtConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(JwtConfigError::ClaimName(name.to_string()));
    }
    Ok(())
}

/// Where `issuer` publishes its OpenID Connect discovery document.
fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

fn check_jwks_url(url: &str) -> Result<(), JwtConfigError> {
    let bad = || JwtConfigError::JwksUrl(url.to_string());
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err(bad()),
    }
}

/// Whether a URL's host is loopback (`127.0.0.0/8`, `::1`, `localhost`).
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|host| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

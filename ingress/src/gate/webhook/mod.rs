//! The webhook signature gate: verifies that a request was sent by the configured provider.
//!
//! One [`WebhookGate`] per funnel and provider, built once from a [`WebhookGateConfig`]
//! (`postern funnel 3000 --verify-webhook stripe --secret-env STRIPE_SECRET`). The
//! provider table (see `docs/gates.md`) maps each provider to one verifier family:
//!
//! - HMAC over the body (GitHub, Shopify, Bitbucket, Gitea, Intercom, PagerDuty, Linear);
//! - HMAC over timestamp + separator + body (Stripe, Slack, Zoom, Paddle, Twitch,
//!   Standard Webhooks `v1`);
//! - HMAC over the URL and parameters (Twilio, Square);
//! - HMAC over fields inside the body (Mailgun);
//! - Ed25519 (Discord, Standard Webhooks `v1a`) and ECDSA P-256 (SendGrid);
//! - static tokens (GitLab, Okta).
//!
//! Signatures are computed over the raw body bytes and compared in constant time. Several
//! secrets may be configured during a secret rotation; any one matching admits. Signed
//! timestamps must fall inside the provider's window around `now`. A delivery id admitted
//! once is refused as a replay while its window lasts. Bodies over the bound are refused
//! before any work.

pub mod parse;
mod provider;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderName;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use subtle::ConstantTimeEq;

use provider::{
    Algorithm, Challenge, Encoding, Family, IdSource, KeyKind, Part, Scheme, SignatureFormat,
    SignatureSource, TimestampSource, UrlSigned,
};
pub use provider::{Provider, UnknownProvider};

use super::{
    Decision, Gate, GateRequest, HeaderProblem, Identity, ReasonCode, ReplayCache, Secret,
};

/// The default bound on a gated body: 5 MiB. Larger bodies are refused with
/// `body_too_large` before any signature work.
pub const DEFAULT_MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// The default number of delivery ids remembered for replay protection.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// How to build a [`WebhookGate`].
#[derive(Debug, Clone)]
pub struct WebhookGateConfig {
    /// The provider whose scheme to verify.
    pub provider: Provider,
    /// The accepted secrets (or public keys, for Discord, SendGrid and Standard Webhooks
    /// `whpk_` keys), newest first. During a rotation give both old and new; the first is
    /// used to answer Zoom's challenge.
    pub secrets: Vec<Secret>,
    /// The timestamp window in seconds, either side of `now`; `None` takes the provider's
    /// default (5 minutes, Linear 1, Twitch 10).
    pub tolerance_secs: Option<u64>,
    /// The largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How many delivery ids to remember for replay protection.
    pub replay_capacity: usize,
    /// The URL the provider was given, when it differs from the URL the edge sees
    /// (Twilio and Square sign the URL). `None` uses the request's URL.
    pub public_url: Option<String>,
}

impl WebhookGateConfig {
    /// A configuration with the defaults for `provider` and the given secrets.
    pub fn new(provider: Provider, secrets: Vec<Secret>) -> Self {
        Self {
            provider,
            secrets,
            tolerance_secs: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            public_url: None,
        }
    }
}

/// Why a [`WebhookGate`] could not be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookConfigError {
    /// No secret was given.
    #[error(
        "no secret given for the {0} webhook gate; pass one with --secret-env NAME (the environment variable holding the provider's signing secret)"
    )]
    NoSecret(Provider),
    /// A secret is empty.
    #[error(
        "secret #{index} for the {provider} webhook gate is empty; check that the environment variable is set and not blank"
    )]
    EmptySecret {
        /// The provider.
        provider: Provider,
        /// Position of the secret in the list (from 1).
        index: usize,
    },
    /// A key could not be decoded as the provider's key format.
    #[error("secret #{index} for the {provider} webhook gate is not {expected}")]
    BadKey {
        /// The provider.
        provider: Provider,
        /// Position of the secret in the list (from 1).
        index: usize,
        /// What the provider's key looks like.
        expected: &'static str,
    },
    /// The configured public URL is not an absolute http(s) URL.
    #[error(
        "the public URL for the {0} webhook gate must be absolute, starting with https:// (the URL entered in the provider's dashboard)"
    )]
    BadPublicUrl(Provider),
}

/// Verifies deliveries of one provider. See the module documentation.
#[derive(Debug)]
pub struct WebhookGate {
    provider: Provider,
    scheme: &'static Scheme,
    gate_name: String,
    keys: Vec<VerifierKey>,
    tolerance_secs: u64,
    max_body_bytes: usize,
    public_url: Option<String>,
    replay: ReplayCache,
    names: HotHeaders,
}

/// The names of the headers a webhook gate reads on every request, parsed once when the
/// gate is built: looking a header up by text parses and validates the name each time,
/// which was a fifth of a GitHub verification.
#[derive(Debug, Default)]
struct HotHeaders {
    /// The signature header of an HMAC-over-the-body scheme (GitHub, Shopify, ...).
    body_signature: Option<HeaderName>,
    /// The headers that carry the delivery id, in the order they are tried.
    delivery: Vec<HeaderName>,
    /// The header naming the event.
    event: Option<HeaderName>,
}

impl HotHeaders {
    fn of(scheme: &Scheme) -> Self {
        let parse = |name: &str| HeaderName::from_bytes(name.as_bytes()).ok();
        Self {
            body_signature: match &scheme.family {
                Family::HmacBody { header, .. } => parse(header),
                _ => None,
            },
            delivery: match scheme.replay_id {
                IdSource::Header(names) => names.iter().filter_map(|name| parse(name)).collect(),
                _ => Vec::new(),
            },
            event: scheme.event_header.and_then(parse),
        }
    }
}

/// A parsed verification key.
enum VerifierKey {
    Hmac(PreparedHmac),
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(Box<p256::ecdsa::VerifyingKey>),
    Token(Secret),
}

impl std::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifierKey::Hmac(prepared) => write!(f, "Hmac({:?})", prepared.secret),
            VerifierKey::Token(secret) => write!(f, "Token({secret:?})"),
            VerifierKey::Ed25519(_) => f.write_str("Ed25519(<public key>)"),
            VerifierKey::P256(_) => f.write_str("P256(<public key>)"),
        }
    }
}

/// An HMAC secret with its keyed states made once, when the gate is built: each request
/// clones the state (its inner and outer pads already hashed) instead of keying a new MAC.
struct PreparedHmac {
    secret: Secret,
    sha1: Hmac<sha1::Sha1>,
    sha256: Hmac<sha2::Sha256>,
}

impl PreparedHmac {
    fn new(secret: Secret) -> Result<Self, &'static str> {
        const EXPECTED: &str = "an HMAC key";
        Ok(Self {
            sha1: <Hmac<sha1::Sha1> as hmac::digest::KeyInit>::new_from_slice(secret.expose())
                .map_err(|_| EXPECTED)?,
            sha256: <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(secret.expose())
                .map_err(|_| EXPECTED)?,
            secret,
        })
    }

    /// Whether the MAC of `parts` equals `presented`, in constant time.
    fn matches(&self, algorithm: Algorithm, parts: &[&[u8]], presented: &[u8]) -> bool {
        fn run<M: Mac + Clone>(keyed: &M, parts: &[&[u8]], presented: &[u8]) -> bool {
            let mut mac = keyed.clone();
            for part in parts {
                mac.update(part);
            }
            bool::from(mac.finalize().into_bytes().as_slice().ct_eq(presented))
        }
        match algorithm {
            Algorithm::Sha1 => run(&self.sha1, parts, presented),
            Algorithm::Sha256 => run(&self.sha256, parts, presented),
        }
    }
}

impl WebhookGate {
    /// Builds the gate, decoding every key once. Fails when no secret is given, a secret
    /// is empty, or a key is not in the provider's format.
    pub fn new(config: WebhookGateConfig) -> Result<Self, WebhookConfigError> {
        let provider = config.provider;
        let scheme = provider.scheme();
        if config.secrets.is_empty() {
            return Err(WebhookConfigError::NoSecret(provider));
        }
        let mut keys = Vec::with_capacity(config.secrets.len());
        for (position, secret) in config.secrets.iter().enumerate() {
            let index = position + 1;
            if secret.is_empty() {
                return Err(WebhookConfigError::EmptySecret { provider, index });
            }
            keys.push(parse_key(scheme.key, secret).map_err(|expected| {
                WebhookConfigError::BadKey {
                    provider,
                    index,
                    expected,
                }
            })?);
        }
        if let Some(url) = &config.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(WebhookConfigError::BadPublicUrl(provider));
        }
        Ok(Self {
            provider,
            scheme,
            gate_name: format!("webhook:{}", provider.name()),
            keys,
            tolerance_secs: config.tolerance_secs.unwrap_or(scheme.tolerance_secs),
            max_body_bytes: config.max_body_bytes,
            public_url: config.public_url,
            replay: ReplayCache::new(config.replay_capacity),
            names: HotHeaders::of(scheme),
        })
    }

    /// The provider this gate verifies.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Forgets an admitted delivery, so that the provider's retry of it is admitted. Call
    /// when a request this gate admitted could not be handed to the target at all. `id` is
    /// the `Delivery` attribute of the admitted identity; `signed_timestamp` is the
    /// provider's timestamp for providers that sign one (a retry of those carries a new
    /// timestamp and is admitted anyway).
    pub fn forget_delivery(&self, id: &str, signed_timestamp: Option<u64>) {
        self.replay.forget(&self.replay_key(id, signed_timestamp));
    }

    /// The replay cache's key of a delivery: hashed as it is, never formatted.
    fn replay_key<'i>(
        &self,
        id: &'i str,
        signed_timestamp: Option<u64>,
    ) -> (&'static str, &'i str, Option<u64>) {
        (self.provider.name(), id, signed_timestamp)
    }
}

impl Gate for WebhookGate {
    fn name(&self) -> &str {
        &self.gate_name
    }

    fn reads_body(&self) -> bool {
        true
    }

    fn evaluate(&self, request: &GateRequest<'_>, now: SystemTime) -> Decision {
        match self.check(request, now) {
            Ok(decision) => decision,
            Err(reason) => Decision::deny(reason),
        }
    }
}

/// What a verified request told us.
struct Verified {
    timestamp: Option<u64>,
    id: Option<String>,
}

/// The body parsed as JSON at most once per request, on first use (replay ids, Linear's
/// timestamp and the handshakes all read it).
struct BodyJson<'b> {
    body: &'b [u8],
    parsed: std::cell::OnceCell<Option<serde_json::Value>>,
}

impl<'b> BodyJson<'b> {
    fn new(body: &'b [u8]) -> Self {
        Self {
            body,
            parsed: std::cell::OnceCell::new(),
        }
    }

    /// The parsed body, or `None` when it is not JSON.
    fn get(&self) -> Option<&serde_json::Value> {
        self.parsed
            .get_or_init(|| serde_json::from_slice(self.body).ok())
            .as_ref()
    }
}

impl WebhookGate {
    fn check(&self, request: &GateRequest<'_>, now: SystemTime) -> Result<Decision, ReasonCode> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        if !self.scheme.methods.contains(&request.method().as_str()) {
            return Err(ReasonCode::MethodNotAllowed);
        }
        if request.body_truncated() || request.body().len() > self.max_body_bytes {
            return Err(ReasonCode::BodyTooLarge);
        }

        let json = BodyJson::new(request.body());
        let verified = self.verify(request, now, &json)?;

        if let Some(challenge) = self.scheme.challenge
            && let Some(answer) = self.answer_challenge(challenge, request, &json)
        {
            return Ok(answer);
        }

        let id = match verified.id {
            Some(id) => Some(id),
            None => self.delivery_id(request, &json),
        };
        if let Some(id) = &id {
            let key = self.replay_key(id, verified.timestamp);
            let from = verified.timestamp.map_or(now, |t| t.max(now));
            let expires = from.saturating_add(self.tolerance_secs);
            if !self.replay.check_and_insert(&key, now, expires) {
                return Err(ReasonCode::ReplayedDelivery);
            }
        }

        let mut identity = Identity::new(self.gate_name.clone());
        if let Some(id) = id {
            identity = identity.with_attribute("Delivery", id);
        }
        if let Some(header) = &self.names.event
            && let Ok(Some(event)) = request.single_header(header)
        {
            identity = identity.with_attribute("Event", event);
        }
        Ok(Decision::Allow {
            gate: self.gate_name.clone(),
            identity,
        })
    }

    /// Runs the provider's family. On success returns the signed timestamp (if any) and
    /// any id the family itself read.
    fn verify(
        &self,
        request: &GateRequest<'_>,
        now: u64,
        json: &BodyJson<'_>,
    ) -> Result<Verified, ReasonCode> {
        let body = request.body();
        match &self.scheme.family {
            Family::HmacBody {
                algorithm,
                header,
                signature,
                encoding,
            } => {
                let value = match &self.names.body_signature {
                    Some(name) => required_header(request, name, ReasonCode::SignatureMissing)?,
                    None => required_header(request, *header, ReasonCode::SignatureMissing)?,
                };
                match signature {
                    SignatureFormat::Single { prefix } => {
                        // The usual case: one signature, decoded on the stack.
                        let text = value
                            .strip_prefix(prefix)
                            .ok_or(ReasonCode::SignatureMalformed)?;
                        let mut buffer = [0u8; DECODE_ON_STACK];
                        let presented = decode_one(text, *encoding, &mut buffer)?;
                        self.match_hmac(*algorithm, &[body], &[presented])?;
                    }
                    SignatureFormat::PrefixedList { prefix } => {
                        let presented = parse::parse_prefixed_list(value, prefix)
                            .map_err(|_| ReasonCode::SignatureMalformed)?;
                        let presented = decode_all(&presented, *encoding)?;
                        self.match_hmac(*algorithm, &[body], &presented)?;
                    }
                }
                Ok(Verified {
                    timestamp: None,
                    id: None,
                })
            }
            Family::HmacStamped {
                algorithm,
                signature,
                timestamp,
                message,
                encoding,
            } => {
                let (stamp_text, presented) = match signature {
                    SignatureSource::Header { name, prefix } => {
                        let value = required_header(request, *name, ReasonCode::SignatureMissing)?;
                        let one = value
                            .strip_prefix(prefix)
                            .ok_or(ReasonCode::SignatureMalformed)?;
                        (None, vec![one])
                    }
                    SignatureSource::Stamped {
                        name,
                        separator,
                        timestamp_key,
                        signature_key,
                    } => {
                        let value = required_header(request, *name, ReasonCode::SignatureMissing)?;
                        let stamped =
                            parse::parse_stamped(value, *separator, timestamp_key, signature_key)
                                .map_err(|error| match error {
                                parse::ParseError::NoTimestamp(_) => ReasonCode::TimestampMissing,
                                _ => ReasonCode::SignatureMalformed,
                            })?;
                        (Some(stamped.timestamp), stamped.signatures)
                    }
                };
                let (stamp_text, stamp) = self.timestamp(request, *timestamp, stamp_text, json)?;
                self.check_window(stamp, now)?;
                let id = match message.iter().any(|part| matches!(part, Part::Id)) {
                    true => self.delivery_id(request, json),
                    false => None,
                };
                let id_text = id.as_deref().unwrap_or("");
                if message.iter().any(|part| matches!(part, Part::Id)) && id.is_none() {
                    return Err(ReasonCode::SignatureMalformed);
                }
                let parts = message_parts(message, stamp_text, id_text, body);
                let presented = decode_all(&presented, *encoding)?;
                self.match_hmac(*algorithm, &parts, &presented)?;
                Ok(Verified {
                    timestamp: Some(stamp),
                    id,
                })
            }
            Family::HmacUrl {
                algorithm,
                header,
                encoding,
                with,
            } => {
                let value = required_header(request, *header, ReasonCode::SignatureMissing)?;
                let presented = decode_all(&[value], *encoding)?;
                let url = self.public_url.as_deref().unwrap_or(request.url());
                match with {
                    UrlSigned::Body => {
                        self.match_hmac(*algorithm, &[url.as_bytes(), body], &presented)?
                    }
                    UrlSigned::TwilioParams => {
                        self.verify_twilio(request, url, *algorithm, &presented)?
                    }
                }
                Ok(Verified {
                    timestamp: None,
                    id: None,
                })
            }
            Family::HmacBodyFields => self.verify_mailgun(request, now),
            Family::StandardWebhooks => self.verify_standard_webhooks(request, now),
            Family::Ed25519 {
                header,
                timestamp,
                message,
                encoding,
            } => {
                let value = required_header(request, *header, ReasonCode::SignatureMissing)?;
                let (stamp_text, stamp) = self.timestamp(request, *timestamp, None, json)?;
                self.check_window(stamp, now)?;
                let signature = decode_all(&[value], *encoding)?;
                let signature = signature
                    .first()
                    .and_then(|bytes| ed25519_dalek::Signature::from_slice(bytes).ok())
                    .ok_or(ReasonCode::SignatureMalformed)?;
                let signed = message_parts(message, stamp_text, "", body).concat();
                let admitted = self.keys.iter().any(|key| match key {
                    VerifierKey::Ed25519(public) => {
                        public.verify_strict(&signed, &signature).is_ok()
                    }
                    _ => false,
                });
                if !admitted {
                    return Err(ReasonCode::SignatureMismatch);
                }
                Ok(Verified {
                    timestamp: Some(stamp),
                    id: None,
                })
            }
            Family::EcdsaP256 {
                header,
                timestamp,
                message,
                encoding,
            } => {
                let value = required_header(request, *header, ReasonCode::SignatureMissing)?;
                let (stamp_text, stamp) = self.timestamp(request, *timestamp, None, json)?;
                self.check_window(stamp, now)?;
                let raw = decode_all(&[value], *encoding)?;
                let raw = raw.first().ok_or(ReasonCode::SignatureMalformed)?;
                let signature = p256::ecdsa::Signature::from_der(raw)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(raw))
                    .map_err(|_| ReasonCode::SignatureMalformed)?;
                let signed = message_parts(message, stamp_text, "", body).concat();
                let admitted = self.keys.iter().any(|key| match key {
                    VerifierKey::P256(public) => public.verify(&signed, &signature).is_ok(),
                    _ => false,
                });
                if !admitted {
                    return Err(ReasonCode::SignatureMismatch);
                }
                Ok(Verified {
                    timestamp: Some(stamp),
                    id: None,
                })
            }
            Family::StaticToken { header } => {
                let value = required_header(request, *header, ReasonCode::SignatureMissing)?;
                let admitted = self.keys.iter().any(|key| match key {
                    VerifierKey::Token(token) => token.ct_eq(value.as_bytes()),
                    _ => false,
                });
                if !admitted {
                    return Err(ReasonCode::SignatureMismatch);
                }
                Ok(Verified {
                    timestamp: None,
                    id: None,
                })
            }
        }
    }

    /// Any configured HMAC key over `parts` equal to any presented signature, in constant
    /// time per comparison.
    fn match_hmac<P: AsRef<[u8]>>(
        &self,
        algorithm: Algorithm,
        parts: &[&[u8]],
        presented: &[P],
    ) -> Result<(), ReasonCode> {
        for key in &self.keys {
            let VerifierKey::Hmac(prepared) = key else {
                continue;
            };
            if presented
                .iter()
                .any(|candidate| prepared.matches(algorithm, parts, candidate.as_ref()))
            {
                return Ok(());
            }
        }
        Err(ReasonCode::SignatureMismatch)
    }

    fn timestamp<'r>(
        &self,
        request: &GateRequest<'r>,
        source: TimestampSource,
        from_signature: Option<&'r str>,
        json: &BodyJson<'_>,
    ) -> Result<(&'r str, u64), ReasonCode> {
        match source {
            TimestampSource::InSignatureHeader => {
                let text = from_signature.ok_or(ReasonCode::TimestampMissing)?;
                let value = parse::parse_unix(text).map_err(|_| ReasonCode::TimestampMalformed)?;
                Ok((text, value))
            }
            TimestampSource::UnixHeader(name) => {
                let text = required_header(request, name, ReasonCode::TimestampMissing)?;
                let value = parse::parse_unix(text).map_err(|_| ReasonCode::TimestampMalformed)?;
                Ok((text, value))
            }
            TimestampSource::Rfc3339Header(name) => {
                let text = required_header(request, name, ReasonCode::TimestampMissing)?;
                let value =
                    parse::parse_rfc3339(text).map_err(|_| ReasonCode::TimestampMalformed)?;
                Ok((text, value))
            }
            TimestampSource::BodyJsonMillis(field) => {
                let json = json.get().ok_or(ReasonCode::BodyMalformed)?;
                let millis = json
                    .get(field)
                    .ok_or(ReasonCode::TimestampMissing)?
                    .as_u64()
                    .ok_or(ReasonCode::TimestampMalformed)?;
                Ok(("", millis / 1000))
            }
        }
    }

    fn check_window(&self, stamp: u64, now: u64) -> Result<(), ReasonCode> {
        if stamp.abs_diff(now) > self.tolerance_secs {
            return Err(ReasonCode::TimestampStale);
        }
        Ok(())
    }

    fn delivery_id(&self, request: &GateRequest<'_>, json: &BodyJson<'_>) -> Option<String> {
        match self.scheme.replay_id {
            IdSource::None => None,
            IdSource::Header(_) => self
                .names
                .delivery
                .iter()
                .find_map(|name| request.single_header(name).ok().flatten())
                .filter(|id| !id.is_empty())
                .map(str::to_string),
            IdSource::BodyJson(pointer) => json
                .get()?
                .pointer(pointer)
                .and_then(serde_json::Value::as_str)
                .filter(|id| !id.is_empty())
                .map(str::to_string),
        }
    }

    fn verify_twilio(
        &self,
        request: &GateRequest<'_>,
        url: &str,
        algorithm: Algorithm,
        presented: &[Vec<u8>],
    ) -> Result<(), ReasonCode> {
        let is_form = request
            .single_header("content-type")
            .ok()
            .flatten()
            .is_some_and(|kind| {
                kind.to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        let mut params = String::new();
        if request.method() == http::Method::POST && is_form {
            let mut pairs =
                parse::parse_form(request.body()).map_err(|_| ReasonCode::BodyMalformed)?;
            pairs.sort();
            for (name, value) in pairs {
                params.push_str(&name);
                params.push_str(&value);
            }
        } else if request.method() == http::Method::POST && !request.body().is_empty() {
            // A non-form body is covered through the `bodySHA256` query parameter.
            let query = parse::parse_form(parse::url_query(url).as_bytes())
                .map_err(|_| ReasonCode::BodyHashMismatch)?;
            let signed_hash = query
                .iter()
                .find(|(name, _)| name == "bodySHA256")
                .map(|(_, value)| value.to_ascii_lowercase())
                .ok_or(ReasonCode::BodyHashMismatch)?;
            let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(request.body()));
            if !bool::from(actual.as_bytes().ct_eq(signed_hash.as_bytes())) {
                return Err(ReasonCode::BodyHashMismatch);
            }
        }
        // Twilio's own libraries try the URL both with and without the default port,
        // because Twilio's signing and proxies disagree about including it.
        for candidate in url_port_variants(url) {
            if self
                .match_hmac(
                    algorithm,
                    &[candidate.as_bytes(), params.as_bytes()],
                    presented,
                )
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(ReasonCode::SignatureMismatch)
    }

    fn verify_mailgun(&self, request: &GateRequest<'_>, now: u64) -> Result<Verified, ReasonCode> {
        let body = request.body();
        let (timestamp, token, signature) = if body.first() == Some(&b'{') {
            let json: serde_json::Value =
                serde_json::from_slice(body).map_err(|_| ReasonCode::BodyMalformed)?;
            let field = |name: &str| {
                json.pointer(&format!("/signature/{name}"))
                    .and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
            };
            (field("timestamp"), field("token"), field("signature"))
        } else {
            let pairs = parse::parse_form(body).map_err(|_| ReasonCode::BodyMalformed)?;
            let field = |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
            };
            (field("timestamp"), field("token"), field("signature"))
        };
        let signature = signature.ok_or(ReasonCode::SignatureMissing)?;
        let timestamp = timestamp.ok_or(ReasonCode::TimestampMissing)?;
        let token = token.ok_or(ReasonCode::SignatureMalformed)?;
        let stamp = parse::parse_unix(&timestamp).map_err(|_| ReasonCode::TimestampMalformed)?;
        self.check_window(stamp, now)?;
        let presented = decode_all(&[signature.as_str()], Encoding::Hex)?;
        self.match_hmac(
            Algorithm::Sha256,
            &[timestamp.as_bytes(), token.as_bytes()],
            &presented,
        )?;
        Ok(Verified {
            timestamp: Some(stamp),
            id: Some(token),
        })
    }

    fn verify_standard_webhooks(
        &self,
        request: &GateRequest<'_>,
        now: u64,
    ) -> Result<Verified, ReasonCode> {
        let header = |suffix: &str, missing: ReasonCode| -> Result<&str, ReasonCode> {
            for prefix in ["webhook-", "svix-"] {
                if let Some(value) = request
                    .single_header(format!("{prefix}{suffix}"))
                    .map_err(|_| ReasonCode::SignatureMalformed)?
                {
                    return Ok(value);
                }
            }
            Err(missing)
        };
        let signatures = header("signature", ReasonCode::SignatureMissing)?;
        let stamp_text = header("timestamp", ReasonCode::TimestampMissing)?;
        let id = header("id", ReasonCode::SignatureMalformed)?;
        let stamp = parse::parse_unix(stamp_text).map_err(|_| ReasonCode::TimestampMalformed)?;
        self.check_window(stamp, now)?;

        let parts: [&[u8]; 5] = [
            id.as_bytes(),
            b".",
            stamp_text.as_bytes(),
            b".",
            request.body(),
        ];
        let hmac_signatures = parse::parse_versioned_list(signatures, "v1").ok();
        let ed_signatures = parse::parse_versioned_list(signatures, "v1a").ok();
        if hmac_signatures.is_none() && ed_signatures.is_none() {
            return Err(ReasonCode::SignatureMalformed);
        }
        let mut admitted = false;
        if let Some(list) = &hmac_signatures {
            let presented: Vec<Vec<u8>> = list
                .iter()
                .filter_map(|text| parse::decode_base64(text).ok())
                .collect();
            admitted = self
                .match_hmac(Algorithm::Sha256, &parts, &presented)
                .is_ok();
        }
        if !admitted && let Some(list) = &ed_signatures {
            let signed = parts.concat();
            let presented: Vec<ed25519_dalek::Signature> = list
                .iter()
                .filter_map(|text| parse::decode_base64(text).ok())
                .filter_map(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
                .collect();
            admitted = self.keys.iter().any(|key| match key {
                VerifierKey::Ed25519(public) => presented
                    .iter()
                    .any(|signature| public.verify_strict(&signed, signature).is_ok()),
                _ => false,
            });
        }
        if !admitted {
            return Err(ReasonCode::SignatureMismatch);
        }
        Ok(Verified {
            timestamp: Some(stamp),
            id: Some(id.to_string()),
        })
    }

    /// The handshake answer, when the verified request is the provider's challenge.
    fn answer_challenge(
        &self,
        challenge: Challenge,
        request: &GateRequest<'_>,
        json: &BodyJson<'_>,
    ) -> Option<Decision> {
        // Cheap checks first: most deliveries are not handshakes.
        let json = || json.get();
        match challenge {
            Challenge::SlackUrlVerification => {
                if !contains(request.body(), b"url_verification") {
                    return None;
                }
                let json = json()?;
                if json.get("type")?.as_str()? != "url_verification" {
                    return None;
                }
                let answer = json.get("challenge")?.as_str()?;
                Some(Decision::respond_ok(
                    "text/plain",
                    answer.as_bytes().to_vec(),
                ))
            }
            Challenge::ZoomUrlValidation => {
                if !contains(request.body(), b"endpoint.url_validation") {
                    return None;
                }
                let json = json()?;
                if json.get("event")?.as_str()? != "endpoint.url_validation" {
                    return None;
                }
                let plain = json.pointer("/payload/plainToken")?.as_str()?;
                let secret = self.keys.iter().find_map(|key| match key {
                    VerifierKey::Hmac(prepared) => Some(&prepared.secret),
                    _ => None,
                })?;
                let encrypted = hex::encode(hmac_parts(
                    Algorithm::Sha256,
                    secret.expose(),
                    &[plain.as_bytes()],
                ));
                let body = serde_json::json!({"plainToken": plain, "encryptedToken": encrypted});
                Some(Decision::respond_ok(
                    "application/json",
                    body.to_string().into_bytes(),
                ))
            }
            Challenge::DiscordPing => {
                let json = json()?;
                if json.get("type")?.as_u64()? != 1 {
                    return None;
                }
                Some(Decision::respond_ok(
                    "application/json",
                    br#"{"type":1}"#.to_vec(),
                ))
            }
            Challenge::TwitchCallbackVerification => {
                let kind = request
                    .single_header("twitch-eventsub-message-type")
                    .ok()??;
                if kind != "webhook_callback_verification" {
                    return None;
                }
                let json = json()?;
                let answer = json.get("challenge")?.as_str()?;
                Some(Decision::respond_ok(
                    "text/plain",
                    answer.as_bytes().to_vec(),
                ))
            }
            Challenge::OktaVerification => {
                if request.method() != http::Method::GET {
                    return None;
                }
                let value = request
                    .single_header("x-okta-verification-challenge")
                    .ok()??;
                let body = serde_json::json!({ "verification": value });
                Some(Decision::respond_ok(
                    "application/json",
                    body.to_string().into_bytes(),
                ))
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// The header's single value, or `missing` when absent; repeated or non-text headers are
/// malformed.
fn required_header<'r, K: http::header::AsHeaderName>(
    request: &GateRequest<'r>,
    name: K,
    missing: ReasonCode,
) -> Result<&'r str, ReasonCode> {
    match request.single_header(name) {
        Ok(Some(value)) if !value.is_empty() => Ok(value),
        Ok(_) => Err(missing),
        Err(HeaderProblem::Repeated | HeaderProblem::NotText) => {
            Err(ReasonCode::SignatureMalformed)
        }
    }
}

/// Signatures up to this many bytes (every HMAC the providers use) decode on the stack.
const DECODE_ON_STACK: usize = 64;

/// Decodes one presented signature into `buffer` when it fits (no allocation), or onto
/// the heap when it does not (it cannot match an HMAC then, but is still malformed or not
/// by the same rules as [`decode_all`]).
fn decode_one<'b>(
    text: &str,
    encoding: Encoding,
    buffer: &'b mut [u8; DECODE_ON_STACK],
) -> Result<std::borrow::Cow<'b, [u8]>, ReasonCode> {
    let decoded = match encoding {
        Encoding::Hex if text.len() <= 2 * DECODE_ON_STACK => {
            parse::decode_hex_into(text, buffer).map(std::borrow::Cow::Borrowed)
        }
        Encoding::Hex => parse::decode_hex(text).map(std::borrow::Cow::Owned),
        Encoding::Base64 => parse::decode_base64(text).map(std::borrow::Cow::Owned),
    };
    decoded.map_err(|_| ReasonCode::SignatureMalformed)
}

fn decode_all(texts: &[&str], encoding: Encoding) -> Result<Vec<Vec<u8>>, ReasonCode> {
    texts
        .iter()
        .map(|text| match encoding {
            Encoding::Hex => parse::decode_hex(text),
            Encoding::Base64 => parse::decode_base64(text),
        })
        .collect::<Result<_, _>>()
        .map_err(|_| ReasonCode::SignatureMalformed)
}

fn message_parts<'m>(
    message: &[Part],
    timestamp: &'m str,
    id: &'m str,
    body: &'m [u8],
) -> Vec<&'m [u8]> {
    message
        .iter()
        .map(|part| match part {
            Part::Literal(text) => text.as_bytes(),
            Part::Timestamp => timestamp.as_bytes(),
            Part::Id => id.as_bytes(),
            Part::Body => body,
        })
        .collect()
}

fn hmac_parts(algorithm: Algorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail; an empty MAC would only
        // ever mismatch.
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return Vec::new();
        };
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
    }
}

/// The URL as given, then with the scheme's default port added (or removed, if present).
fn url_port_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_string()];
    let (scheme, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        (("https://", rest), ":443")
    } else if let Some(rest) = url.strip_prefix("http://") {
        (("http://", rest), ":80")
    } else {
        return variants;
    };
    let (prefix, rest) = scheme;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    let other = if let Some(host) = host_port.strip_suffix(default_port) {
        format!("{prefix}{userinfo}{host}{tail}")
    } else if host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        && !host_port.ends_with(']')
    {
        return variants;
    } else {
        format!("{prefix}{userinfo}{host_port}{default_port}{tail}")
    };
    variants.push(other);
    variants
}

fn parse_key(kind: KeyKind, secret: &Secret) -> Result<VerifierKey, &'static str> {
    let text = std::str::from_utf8(secret.expose()).map(str::trim);
    match kind {
        KeyKind::HmacRaw => PreparedHmac::new(secret.clone()).map(VerifierKey::Hmac),
        KeyKind::Token => Ok(VerifierKey::Token(secret.clone())),
        KeyKind::StandardWebhooks => {
            const EXPECTED: &str = "a Standard Webhooks key: `whsec_` + base64 (signing secret) or `whpk_` + base64 (Ed25519 public key)";
            let text = text.map_err(|_| EXPECTED)?;
            if let Some(public) = text.strip_prefix("whpk_") {
                let bytes = parse::decode_base64(public).map_err(|_| EXPECTED)?;
                let bytes: [u8; 32] = bytes.try_into().map_err(|_| EXPECTED)?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| EXPECTED)?;
                return Ok(VerifierKey::Ed25519(key));
            }
            let encoded = text.strip_prefix("whsec_").unwrap_or(text);
            let bytes = parse::decode_base64(encoded).map_err(|_| EXPECTED)?;
            if bytes.is_empty() {
                return Err(EXPECTED);
            }
            PreparedHmac::new(Secret::new(bytes)).map(VerifierKey::Hmac)
        }
        KeyKind::Ed25519Hex => {
            const EXPECTED: &str =
                "an Ed25519 public key in hex (64 characters, the application's PUBLIC KEY)";
            let text = text.map_err(|_| EXPECTED)?;
            let bytes = parse::decode_hex(text).map_err(|_| EXPECTED)?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| EXPECTED)?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map(VerifierKey::Ed25519)
                .map_err(|_| EXPECTED)
        }
        KeyKind::P256 => {
            const EXPECTED: &str = "a P-256 public key (base64 DER as shown by SendGrid, or PEM)";
            let text = text.map_err(|_| EXPECTED)?;
            let key = if text.starts_with("-----BEGIN") {
                p256::ecdsa::VerifyingKey::from_public_key_pem(text).map_err(|_| EXPECTED)?
            } else {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(text.split_ascii_whitespace().collect::<String>())
                    .map_err(|_| EXPECTED)?;
                p256::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|_| EXPECTED)?
            };
            Ok(VerifierKey::P256(Box::new(key)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_variants_follow_twilio_libraries() {
        assert_eq!(
            url_port_variants("https://mycompany.com/myapp.php?foo=1"),
            vec![
                "https://mycompany.com/myapp.php?foo=1".to_string(),
                "https://mycompany.com:443/myapp.php?foo=1".to_string()
            ]
        );
        assert_eq!(
            url_port_variants("https://mycompany.com:443/x"),
            vec![
                "https://mycompany.com:443/x".to_string(),
                "https://mycompany.com/x".to_string()
            ]
        );
        assert_eq!(
            url_port_variants("https://mycompany.com:8443/x"),
            vec!["https://mycompany.com:8443/x".to_string()]
        );
    }

    #[test]
    fn gate_debug_never_shows_secrets() {
        let gate = WebhookGate::new(WebhookGateConfig::new(
            Provider::Github,
            vec![Secret::from("It's a Secret to Everybody")],
        ))
        .unwrap();
        let shown = format!("{gate:?}");
        assert!(!shown.contains("Everybody"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}

//! Identity gates: the checks a funnel runs at the edge before anything enters the mesh.
//!
//! Every funnel has an ordered [`GateChain`]. The HTTP server (built elsewhere) buffers the
//! request body up to a bound, builds a [`GateRequest`] view of the request, and calls
//! [`GateChain::evaluate`] with the current wall-clock time. The result is a [`Decision`]:
//!
//! - [`Decision::Allow`]: forward the request, after [`rewrite_identity_headers`] has
//!   stripped every client-sent `Postern-*` header and set the edge's own;
//! - [`Decision::Deny`]: answer with the status and reason code, forward nothing;
//! - [`Decision::Respond`]: answer a provider handshake (Slack, Zoom, Discord, Twitch and
//!   Okta challenges) at the edge, forward nothing.
//!
//! The chain also returns a [`ChainTrace`] of which gates ran and why they decided as they
//! did, for the audit log.
//!
//! This module is sans-IO: it reads no clock and no socket. Time is the `now` parameter,
//! which makes every decision reproducible in tests.
//!
//! The gates: [`WebhookGate`] (22 providers), [`JwtGate`], [`OidcGate`] (login for
//! people), [`MtlsGate`], [`IpRulesGate`], and [`RateLimit`] around a chain. Gates with
//! I/O (JWKS fetches, OIDC discovery and code exchange) do it in
//! [`Gate::evaluate_async`] and keep the decision itself in the pure [`Gate::evaluate`];
//! the edge runs [`GateChain::evaluate_async`].

mod chain;
mod identity_headers;
mod ip_rules;
pub mod jwt;
mod mtls;
pub mod oidc;
mod rate_limit;
mod replay;
mod secret;
mod verified_credentials;
pub mod webhook;

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use rustls_pki_types::CertificateDer;

pub use chain::{ChainError, ChainOutcome, ChainTrace, GateChain, TraceEntry, TraceOutcome};
pub use identity_headers::{
    GATE_HEADER, IDENTITY_ATTRIBUTE_PREFIX, IDENTITY_HEADER, IDENTITY_HEADER_PREFIX,
    rewrite_identity_headers,
};
pub use ip_rules::{IpAction, IpRule, IpRuleError, IpRulesConfig, IpRulesGate};
pub use jwt::{JwtConfig, JwtConfigError, JwtGate};
pub use mtls::{DeferredClientCertVerifier, MtlsConfig, MtlsConfigError, MtlsGate};
pub use oidc::{OidcConfig, OidcConfigError, OidcGate};
pub use rate_limit::{RateLimit, RateLimitConfig, RateLimitError, RateLimitKey};
pub use replay::ReplayCache;
pub use secret::Secret;
pub use webhook::{Provider, WebhookConfigError, WebhookGate, WebhookGateConfig};

/// One gate of a funnel's chain: webhook signature, OIDC session, JWT, mTLS, IP rule, rate
/// limit.
///
/// Implementations are pure: they look at the request view and `now`, and decide. They may
/// keep bounded internal state behind a lock (the webhook gate's replay cache), so `evaluate`
/// takes `&self` and a chain can be shared by every connection of a funnel.
pub trait Gate: Send + Sync + fmt::Debug {
    /// The gate's name as it appears in decisions, traces and the `Postern-Gate` header,
    /// e.g. `webhook:github`.
    fn name(&self) -> &str;

    /// Decides about one request. Call once per request, after the body has been buffered
    /// (up to the server's bound), with the current wall-clock time.
    ///
    /// Never panics on request input; anything malformed is a [`Decision::Deny`].
    fn evaluate(&self, request: &GateRequest<'_>, now: SystemTime) -> Decision;

    /// Decides about one request, doing the gate's I/O first where it has any: the JWT
    /// gate fetches its JWKS when a token names an unknown key, the OIDC gate redeems an
    /// authorization code at the IdP on its callback path. The edge's chain calls this one.
    ///
    /// The default runs [`Gate::evaluate`]: gates without I/O (webhooks, IP rules, rate
    /// limits, mTLS) implement only that. A gate that overrides this keeps the decision
    /// itself in `evaluate` (pure, testable with a fake clock) and does only the fetching
    /// here.
    fn evaluate_async<'a>(
        &'a self,
        request: &'a GateRequest<'a>,
        now: SystemTime,
    ) -> GateFuture<'a> {
        GateFuture::ready(self.evaluate(request, now))
    }

    /// Whether the gate decides on the request's body (webhook signatures cover it).
    ///
    /// The edge buffers a request's body for the chain, up to its bound, only when some gate
    /// of the chain reads it; for a chain of gates that decide on headers, the client's
    /// address or its certificate (OIDC sessions, JWT, mTLS, IP rules, rate limits), the
    /// body streams to the target once the chain admitted the request, unbuffered and
    /// unbounded, as for a funnel without gates, and those gates see an empty body.
    /// Defaults to `false`; a gate that reads [`GateRequest::body`] must say `true`.
    fn reads_body(&self) -> bool {
        false
    }

    /// The subjects of the CAs whose client certificates this gate accepts (mTLS gates),
    /// so the edge can ask clients for a certificate during the TLS handshake. Empty for
    /// every other gate.
    fn client_ca_subjects(&self) -> Vec<rustls::DistinguishedName> {
        Vec::new()
    }
}

/// The future returned by [`Gate::evaluate_async`]: a decision made already (no
/// allocation: what gates without I/O return), or a gate's I/O and then its decision.
pub enum GateFuture<'a> {
    /// Decided without I/O; `None` once the decision was taken.
    Ready(Option<Decision>),
    /// The gate's I/O, then its decision.
    Io(std::pin::Pin<Box<dyn std::future::Future<Output = Decision> + Send + 'a>>),
}

impl<'a> GateFuture<'a> {
    /// A decision made without I/O.
    pub fn ready(decision: Decision) -> Self {
        GateFuture::Ready(Some(decision))
    }

    /// A decision that needs the gate's I/O first.
    pub fn io(future: impl std::future::Future<Output = Decision> + Send + 'a) -> Self {
        GateFuture::Io(Box::pin(future))
    }
}

impl std::future::Future for GateFuture<'_> {
    type Output = Decision;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Decision> {
        match self.get_mut() {
            // Polled again after it completed: it never completes twice.
            GateFuture::Ready(decision) => decision
                .take()
                .map_or(std::task::Poll::Pending, std::task::Poll::Ready),
            GateFuture::Io(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for GateFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateFuture::Ready(decision) => f.debug_tuple("Ready").field(decision).finish(),
            GateFuture::Io(_) => f.write_str("Io(..)"),
        }
    }
}

/// A read-only view of one incoming request, as the edge received it.
///
/// Built by the HTTP server for each request that a gated funnel receives. Borrowing keeps
/// it free: nothing is copied.
#[derive(Debug, Clone, Copy)]
pub struct GateRequest<'a> {
    method: &'a Method,
    url: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    body_truncated: bool,
    client: SocketAddr,
    client_cert_subject: Option<&'a str>,
    client_cert_chain: &'a [CertificateDer<'static>],
    /// The digest of `client_cert_chain` when the edge computed it once for the connection
    /// ([`PresentedChain`]); the mTLS gate hashes the chain itself otherwise.
    client_cert_digest: Option<&'a verified_credentials::CredentialDigest>,
}

/// The certificate chain a client presented in its TLS handshake (leaf first, exactly as
/// received, unverified), with its digest computed once. Cloning is cheap (shared).
///
/// The edge builds one per TLS connection and hands it to the [`GateRequest`] of each of
/// the connection's requests ([`GateRequest::with_presented_chain`]): the chain cannot
/// change within a connection (rustls has neither renegotiation nor post-handshake client
/// authentication), so the mTLS gate looks up its verdict by this digest instead of
/// hashing the chain on every request. The digest is always the chain's own (the fields
/// are private, and only [`PresentedChain::new`] computes it), and the gate still checks
/// the chain's validity window against each request's `now`.
#[derive(Debug, Clone)]
pub struct PresentedChain {
    certs: Arc<[CertificateDer<'static>]>,
    digest: verified_credentials::CredentialDigest,
}

impl PresentedChain {
    /// The chain `certs` (leaf first; empty when the client presented none) and its
    /// digest. Call once per TLS connection, after the handshake.
    pub fn new(certs: Arc<[CertificateDer<'static>]>) -> Self {
        let digest = verified_credentials::chain_digest(&certs);
        Self { certs, digest }
    }

    /// The certificates, leaf first (empty when none were presented).
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

impl<'a> GateRequest<'a> {
    /// A view of a request.
    ///
    /// `url` is the URL as the sender saw it, scheme and host included
    /// (`https://name.funnel.example/hook?x=1`): Twilio and Square sign it. `body` is the raw
    /// body bytes as received (no decoding, no re-serialising): signatures cover those bytes.
    pub fn new(
        method: &'a Method,
        url: &'a str,
        headers: &'a HeaderMap,
        body: &'a [u8],
        client: SocketAddr,
    ) -> Self {
        Self {
            method,
            url,
            headers,
            body,
            body_truncated: false,
            client,
            client_cert_subject: None,
            client_cert_chain: &[],
            client_cert_digest: None,
        }
    }

    /// Marks the body as cut short: the server stopped buffering at its bound, so `body` is
    /// only a prefix. Gates that need the body then deny with
    /// [`ReasonCode::BodyTooLarge`].
    #[must_use]
    pub fn with_body_truncated(mut self, truncated: bool) -> Self {
        self.body_truncated = truncated;
        self
    }

    /// Sets the subject of the client's TLS certificate, when the client presented one
    /// (for mTLS gates).
    #[must_use]
    pub fn with_client_cert_subject(mut self, subject: Option<&'a str>) -> Self {
        self.client_cert_subject = subject;
        self
    }

    /// Sets the certificate chain the client presented in the TLS handshake, leaf first,
    /// exactly as received. The edge's TLS layer checks only that the client holds the
    /// leaf's private key; whether the chain is trusted is for the mTLS gate to decide
    /// ([`MtlsGate`]), so nothing else may treat these certificates as verified.
    #[must_use]
    pub fn with_client_cert_chain(mut self, chain: &'a [CertificateDer<'static>]) -> Self {
        self.client_cert_chain = chain;
        self.client_cert_digest = None;
        self
    }

    /// Like [`GateRequest::with_client_cert_chain`], with the chain's digest computed once
    /// per connection (see [`PresentedChain`]): what the edge calls.
    #[must_use]
    pub fn with_presented_chain(mut self, chain: &'a PresentedChain) -> Self {
        self.client_cert_chain = &chain.certs;
        self.client_cert_digest = Some(&chain.digest);
        self
    }

    /// The client's TLS certificate chain as presented (leaf first; empty when none was
    /// presented). Unverified: see [`GateRequest::with_client_cert_chain`].
    pub fn client_cert_chain(&self) -> &'a [CertificateDer<'static>] {
        self.client_cert_chain
    }

    /// The digest of [`GateRequest::client_cert_chain`] (see [`PresentedChain`]): the one
    /// computed for the connection, or computed now.
    pub(crate) fn client_cert_digest(&self) -> verified_credentials::CredentialDigest {
        match self.client_cert_digest {
            Some(digest) => *digest,
            None => verified_credentials::chain_digest(self.client_cert_chain),
        }
    }

    /// The request path, without the query string.
    pub fn path(&self) -> &'a str {
        let after_scheme = self
            .url
            .split_once("://")
            .map_or(self.url, |(_, rest)| rest);
        let path_and_query = after_scheme
            .find('/')
            .map_or("/", |at| after_scheme.get(at..).unwrap_or("/"));
        path_and_query.split(['?', '#']).next().unwrap_or("/")
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&'a str> {
        self.url
            .split_once('?')
            .map(|(_, query)| query.split('#').next().unwrap_or(""))
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The URL as the sender saw it, scheme and host included.
    pub fn url(&self) -> &'a str {
        self.url
    }

    /// All request headers, as received.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// The raw body bytes (possibly only a prefix: see [`GateRequest::body_truncated`]).
    pub fn body(&self) -> &[u8] {
        self.body
    }

    /// Whether the server stopped buffering the body at its bound.
    pub fn body_truncated(&self) -> bool {
        self.body_truncated
    }

    /// The client's address as the edge saw it.
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The subject of the client's TLS certificate, if it presented one.
    pub fn client_cert_subject(&self) -> Option<&str> {
        self.client_cert_subject
    }

    /// The value of a cookie from the `Cookie` header(s), if present. Values are returned
    /// as sent (no percent-decoding); headers that are not valid text are skipped.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|line| line.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.trim_matches('"'))
    }

    /// The single value of a header as text.
    ///
    /// Returns `Ok(None)` when absent, and an error when it is repeated or not visible
    /// ASCII: gates treat both as malformed rather than guessing which copy to trust.
    /// `name` may be text (`"x-github-event"`, parsed at every call) or a
    /// [`http::HeaderName`] parsed once, which the webhook gates keep for the headers they
    /// read on every request.
    pub fn single_header<K: http::header::AsHeaderName>(
        &self,
        name: K,
    ) -> Result<Option<&'a str>, HeaderProblem> {
        let mut values = self.headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(HeaderProblem::Repeated);
        }
        first
            .to_str()
            .map(|text| Some(text.trim()))
            .map_err(|_| HeaderProblem::NotText)
    }
}

/// Why [`GateRequest::single_header`] refused a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The header appeared more than once.
    Repeated,
    /// The header's value is not visible ASCII.
    NotText,
}

/// What a gate (or a whole chain) decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a gate decision must be acted on: forward, deny or respond"]
pub enum Decision {
    /// Forward the request: the named gate admitted it as the given identity.
    Allow {
        /// Which gate admitted, e.g. `webhook:github` (all-of chains join names with `+`).
        gate: String,
        /// As whom the request was admitted.
        identity: Identity,
    },
    /// Refuse the request; forward nothing.
    Deny {
        /// The status to answer with: 401 for missing credentials, 403 for wrong ones,
        /// 413 for a body over the bound, 429 for a rate limit.
        status: StatusCode,
        /// The machine-readable reason, also the response body and the audit field.
        reason: ReasonCode,
        /// Extra response headers, e.g. `Retry-After` on a rate limit or
        /// `WWW-Authenticate` on a missing bearer token. Usually empty.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Answer the request at the edge (a provider's verification handshake); forward
    /// nothing.
    Respond {
        /// Response status.
        status: StatusCode,
        /// Response headers.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Response body.
        body: Vec<u8>,
    },
}

impl Decision {
    /// A denial with the reason's usual status.
    pub fn deny(reason: ReasonCode) -> Self {
        Decision::Deny {
            status: reason.status(),
            reason,
            headers: Vec::new(),
        }
    }

    /// A denial with the reason's usual status and one extra response header.
    pub fn deny_with_header(reason: ReasonCode, name: HeaderName, value: HeaderValue) -> Self {
        Decision::Deny {
            status: reason.status(),
            reason,
            headers: vec![(name, value)],
        }
    }

    /// A `200 OK` handshake answer with the given content type and body.
    pub fn respond_ok(content_type: &'static str, body: Vec<u8>) -> Self {
        Decision::Respond {
            status: StatusCode::OK,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            )],
            body,
        }
    }

    /// Whether this decision forwards the request.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The denial reason, if this is a denial.
    pub fn deny_reason(&self) -> Option<ReasonCode> {
        match self {
            Decision::Deny { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// As whom a gate admitted a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The principal, e.g. `webhook:github`, `user:alice@example.com`, `ip:203.0.113.7`.
    pub principal: String,
    /// Extra facts for the target, each sent as `Postern-Identity-<Name>`
    /// (e.g. `Delivery` for a webhook's delivery id). Names are header-token text, most
    /// of them fixed (`&'static str`, no allocation per request).
    pub attributes: Vec<(Cow<'static, str>, String)>,
}

impl Identity {
    /// An identity with no attributes.
    pub fn new(principal: impl Into<String>) -> Self {
        Self {
            principal: principal.into(),
            attributes: Vec::new(),
        }
    }

    /// Adds one attribute.
    #[must_use]
    pub fn with_attribute(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Self {
        self.attributes.push((name.into(), value.into()));
        self
    }
}

/// Short machine-readable reasons for a denial. The text form ([`ReasonCode::as_str`]) is
/// stable: it appears in responses, audit records and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReasonCode {
    /// The signature (or token) header is absent.
    SignatureMissing,
    /// The signature header is present but cannot be parsed or decoded.
    SignatureMalformed,
    /// No accepted secret or key produced a matching signature.
    SignatureMismatch,
    /// The provider's timestamp is absent.
    TimestampMissing,
    /// The provider's timestamp cannot be parsed.
    TimestampMalformed,
    /// The provider's timestamp is outside the accepted window (too old or in the future).
    TimestampStale,
    /// The delivery id was already admitted inside the window.
    ReplayedDelivery,
    /// The body is larger than the gate's bound.
    BodyTooLarge,
    /// The body does not have the shape the provider's scheme needs (JSON or form fields).
    BodyMalformed,
    /// The body's hash does not match the signed hash (Twilio `bodySHA256`).
    BodyHashMismatch,
    /// The request method is not one the provider uses.
    MethodNotAllowed,
    /// No gate of the chain admitted the request (empty or all skipped).
    NoGateAdmitted,
    /// Too many requests (rate-limit gates).
    RateLimited,
    /// No `Authorization: Bearer` token (JWT gate).
    TokenMissing,
    /// The bearer token is not a well-formed JWT, or its header names no usable key.
    TokenMalformed,
    /// The token's signature does not verify with any key of the JWKS, or its algorithm is
    /// not allowed.
    TokenInvalid,
    /// The token has expired or is not valid yet (`exp`, `nbf`, with the clock skew).
    TokenExpired,
    /// The token's issuer, audience or required claims are not the configured ones.
    TokenClaimsRejected,
    /// The identity provider (JWKS or OIDC discovery) could not be reached and nothing
    /// usable is cached.
    IdpUnavailable,
    /// The client address is refused by the funnel's IP rules.
    IpDenied,
    /// No TLS client certificate was presented (mTLS gate).
    ClientCertMissing,
    /// The client certificate does not chain to the configured CA, has expired, or is not
    /// for client authentication.
    ClientCertRejected,
    /// No valid login session (OIDC gate), and the request is not one a browser can be
    /// redirected for.
    LoginRequired,
    /// The person logged in, but their email, domain or groups are not allowed here.
    LoginNotAllowed,
    /// The login callback failed: state mismatch, expired attempt, or the IdP refused the
    /// code or sent an invalid id_token.
    LoginFailed,
}

impl ReasonCode {
    /// Every reason code, for documentation and tests.
    pub const ALL: [ReasonCode; 25] = [
        ReasonCode::SignatureMissing,
        ReasonCode::SignatureMalformed,
        ReasonCode::SignatureMismatch,
        ReasonCode::TimestampMissing,
        ReasonCode::TimestampMalformed,
        ReasonCode::TimestampStale,
        ReasonCode::ReplayedDelivery,
        ReasonCode::BodyTooLarge,
        ReasonCode::BodyMalformed,
        ReasonCode::BodyHashMismatch,
        ReasonCode::MethodNotAllowed,
        ReasonCode::NoGateAdmitted,
        ReasonCode::RateLimited,
        ReasonCode::TokenMissing,
        ReasonCode::TokenMalformed,
        ReasonCode::TokenInvalid,
        ReasonCode::TokenExpired,
        ReasonCode::TokenClaimsRejected,
        ReasonCode::IdpUnavailable,
        ReasonCode::IpDenied,
        ReasonCode::ClientCertMissing,
        ReasonCode::ClientCertRejected,
        ReasonCode::LoginRequired,
        ReasonCode::LoginNotAllowed,
        ReasonCode::LoginFailed,
    ];

    /// The stable snake_case code, e.g. `signature_mismatch`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::SignatureMissing => "signature_missing",
            ReasonCode::SignatureMalformed => "signature_malformed",
            ReasonCode::SignatureMismatch => "signature_mismatch",
            ReasonCode::TimestampMissing => "timestamp_missing",
            ReasonCode::TimestampMalformed => "timestamp_malformed",
            ReasonCode::TimestampStale => "timestamp_stale",
            ReasonCode::ReplayedDelivery => "replayed_delivery",
            ReasonCode::BodyTooLarge => "body_too_large",
            ReasonCode::BodyMalformed => "body_malformed",
            ReasonCode::BodyHashMismatch => "body_hash_mismatch",
            ReasonCode::MethodNotAllowed => "method_not_allowed",
            ReasonCode::NoGateAdmitted => "no_gate_admitted",
            ReasonCode::RateLimited => "rate_limited",
            ReasonCode::TokenMissing => "token_missing",
            ReasonCode::TokenMalformed => "token_malformed",
            ReasonCode::TokenInvalid => "token_invalid",
            ReasonCode::TokenExpired => "token_expired",
            ReasonCode::TokenClaimsRejected => "token_claims_rejected",
            ReasonCode::IdpUnavailable => "idp_unavailable",
            ReasonCode::IpDenied => "ip_denied",
            ReasonCode::ClientCertMissing => "client_cert_missing",
            ReasonCode::ClientCertRejected => "client_cert_rejected",
            ReasonCode::LoginRequired => "login_required",
            ReasonCode::LoginNotAllowed => "login_not_allowed",
            ReasonCode::LoginFailed => "login_failed",
        }
    }

    /// The HTTP status a denial with this reason answers with.
    pub fn status(self) -> StatusCode {
        match self {
            ReasonCode::SignatureMissing
            | ReasonCode::TimestampMissing
            | ReasonCode::NoGateAdmitted
            | ReasonCode::TokenMissing
            | ReasonCode::ClientCertMissing
            | ReasonCode::LoginRequired => StatusCode::UNAUTHORIZED,
            ReasonCode::IdpUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ReasonCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ReasonCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ReasonCode::SignatureMalformed
            | ReasonCode::SignatureMismatch
            | ReasonCode::TimestampMalformed
            | ReasonCode::TimestampStale
            | ReasonCode::ReplayedDelivery
            | ReasonCode::BodyMalformed
            | ReasonCode::BodyHashMismatch
            | ReasonCode::MethodNotAllowed
            | ReasonCode::TokenMalformed
            | ReasonCode::TokenInvalid
            | ReasonCode::TokenExpired
            | ReasonCode::TokenClaimsRejected
            | ReasonCode::IpDenied
            | ReasonCode::ClientCertRejected
            | ReasonCode::LoginNotAllowed
            | ReasonCode::LoginFailed => StatusCode::FORBIDDEN,
        }
    }

    /// A sentence for the developer reading the audit log or `postern inspect`: what was
    /// wrong and what to check. Never contains request data or secrets.
    pub fn describe(self) -> &'static str {
        match self {
            ReasonCode::SignatureMissing => {
                "the request carries no signature or token header for this gate; check that the provider is configured to sign deliveries"
            }
            ReasonCode::SignatureMalformed => {
                "the signature header could not be parsed or decoded; the sender is not the configured provider or the header was altered"
            }
            ReasonCode::SignatureMismatch => {
                "no configured secret produces this signature; check that the funnel's secret matches the provider's current secret"
            }
            ReasonCode::TimestampMissing => {
                "the provider's timestamp header is absent; the request was not sent by the configured provider"
            }
            ReasonCode::TimestampMalformed => "the provider's timestamp could not be parsed",
            ReasonCode::TimestampStale => {
                "the provider's timestamp is outside the accepted window; check the edge's clock, or the request is a late replay"
            }
            ReasonCode::ReplayedDelivery => {
                "this delivery was already admitted inside the window; a copy of an earlier request was refused"
            }
            ReasonCode::BodyTooLarge => {
                "the body is larger than the gate's bound; raise the funnel's body limit if the provider really sends this much"
            }
            ReasonCode::BodyMalformed => {
                "the body lacks the fields the provider's scheme signs (JSON or form fields)"
            }
            ReasonCode::BodyHashMismatch => {
                "the body does not match the hash the sender signed in the URL (bodySHA256)"
            }
            ReasonCode::MethodNotAllowed => "the provider never sends requests with this method",
            ReasonCode::NoGateAdmitted => "no gate of the funnel's chain admitted the request",
            ReasonCode::RateLimited => "too many requests from this client; retry later",
            ReasonCode::TokenMissing => {
                "the request carries no Authorization: Bearer token; send the JWT issued for this funnel's audience"
            }
            ReasonCode::TokenMalformed => {
                "the bearer token is not a well-formed JWT (three base64url parts, a JSON header naming an allowed algorithm)"
            }
            ReasonCode::TokenInvalid => {
                "the token's signature does not verify with the issuer's published keys, or its algorithm is not allowed; check the token's issuer"
            }
            ReasonCode::TokenExpired => {
                "the token has expired or is not valid yet; get a fresh token, or check the clocks of the issuer and the edge"
            }
            ReasonCode::TokenClaimsRejected => {
                "the token's issuer, audience or required claims are not the ones this funnel accepts"
            }
            ReasonCode::IdpUnavailable => {
                "the identity provider's keys or discovery document could not be fetched; check that the IdP is reachable from the edge"
            }
            ReasonCode::IpDenied => "the client address is refused by the funnel's IP rules",
            ReasonCode::ClientCertMissing => {
                "no TLS client certificate was presented; this funnel needs one issued by its configured CA"
            }
            ReasonCode::ClientCertRejected => {
                "the TLS client certificate does not chain to this funnel's CA, has expired, or is not for client authentication"
            }
            ReasonCode::LoginRequired => {
                "no valid login session; open the funnel in a browser to sign in with the identity provider"
            }
            ReasonCode::LoginNotAllowed => {
                "the signed-in person's email, domain or groups are not on this funnel's allow lists"
            }
            ReasonCode::LoginFailed => {
                "the login could not be completed (stale or forged state, or the identity provider refused the code); start again from the funnel's URL"
            }
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gate that admits every request as `anonymous`: the chain of a funnel with no identity
/// gate, and the baseline the verification benchmarks compare against.
#[derive(Debug, Clone, Default)]
pub struct PassThroughGate;

impl Gate for PassThroughGate {
    fn name(&self) -> &str {
        "pass-through"
    }

    fn evaluate(&self, _request: &GateRequest<'_>, _now: SystemTime) -> Decision {
        Decision::Allow {
            gate: self.name().to_string(),
            identity: Identity::new("anonymous"),
        }
    }
}

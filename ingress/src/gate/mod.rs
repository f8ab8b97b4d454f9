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
//! Later gates (OIDC session cookies, JWT, mTLS subject, IP rules, rate limits) implement
//! the same [`Gate`] trait; [`GateRequest`] already carries cookies, the client address and
//! the client certificate subject for them.

mod chain;
mod identity_headers;
mod replay;
mod secret;
pub mod webhook;

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

pub use chain::{ChainError, ChainOutcome, ChainTrace, GateChain, TraceEntry, TraceOutcome};
pub use identity_headers::{
    GATE_HEADER, IDENTITY_ATTRIBUTE_PREFIX, IDENTITY_HEADER, IDENTITY_HEADER_PREFIX,
    rewrite_identity_headers,
};
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

    /// The request method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The URL as the sender saw it, scheme and host included.
    pub fn url(&self) -> &str {
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
    pub fn single_header(&self, name: &str) -> Result<Option<&'a str>, HeaderProblem> {
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
    /// (e.g. `Delivery` for a webhook's delivery id). Names are header-token text.
    pub attributes: Vec<(String, String)>,
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
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
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
}

impl ReasonCode {
    /// Every reason code, for documentation and tests.
    pub const ALL: [ReasonCode; 13] = [
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
        }
    }

    /// The HTTP status a denial with this reason answers with.
    pub fn status(self) -> StatusCode {
        match self {
            ReasonCode::SignatureMissing
            | ReasonCode::TimestampMissing
            | ReasonCode::NoGateAdmitted => StatusCode::UNAUTHORIZED,
            ReasonCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ReasonCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ReasonCode::SignatureMalformed
            | ReasonCode::SignatureMismatch
            | ReasonCode::TimestampMalformed
            | ReasonCode::TimestampStale
            | ReasonCode::ReplayedDelivery
            | ReasonCode::BodyMalformed
            | ReasonCode::BodyHashMismatch
            | ReasonCode::MethodNotAllowed => StatusCode::FORBIDDEN,
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

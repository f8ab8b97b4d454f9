//! Funnels on the wire: what a node asks the coordination server for, and what an ingress
//! learns about every funnel it must serve.
//!
//! The flow, in three messages:
//!
//! 1. `postern funnel 3000 --verify-webhook github …` makes the node send a
//!    [`FunnelRequest`] with a [`FunnelChange::Open`] carrying a [`FunnelSpec`] on its control
//!    channel.
//! 2. The coordination server checks the policy's funnel grant for the port (refusing with a
//!    [`FunnelRefusal`] that names what is missing), assigns the stable public hostname,
//!    stores the funnel and answers with a [`FunnelResponse`].
//! 3. Every ingress node's netmap carries a [`FunnelRoute`] per open funnel: the hostname,
//!    the target node and port, the gates to run and when the funnel expires. The ingress
//!    builds its routing table and gate chains from these alone.
//!
//! Gate secrets (webhook secrets) travel inside the encrypted control channel to the
//! coordination server and from there to ingress nodes only. [`GateSecret`] never prints
//! its value.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, UnixTime};
use crate::keys::NodePublicKey;

/// How the ingress carries a funnel's public traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunnelProtocol {
    /// HTTPS at the edge (TLS terminated by the ingress), gates run per request.
    #[default]
    Http,
    /// Raw TCP on a public port from the ingress's range; only connection-level gates (IP
    /// rules) apply.
    Tcp,
    /// TLS passed through by SNI: the node terminates TLS, the edge sees only the name.
    TlsPassthrough,
}

/// A secret a gate checks against (a webhook signing secret). `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GateSecret(String);

impl GateSecret {
    /// Wraps a secret read from a flag, a file or the environment.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, to build a verifier. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for GateSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GateSecret([redacted])")
    }
}

/// One gate of a funnel's chain, as set by `postern funnel` flags or required by policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GateSpec {
    /// A webhook signature check (`--verify-webhook github --secret-env GH_SECRET`).
    Webhook {
        /// Provider name as the ingress knows it (`github`, `stripe`, `slack`, …).
        provider: String,
        /// Accepted secrets (several during a rotation).
        secrets: Vec<GateSecret>,
        /// Largest accepted timestamp skew for providers that sign one, in seconds.
        #[serde(default)]
        tolerance_secs: Option<u64>,
    },
    /// A person logs in with the ingress's OIDC provider (`--login`); the lists admit.
    Login {
        /// Emails admitted (lowercase).
        #[serde(default)]
        allowed_emails: Vec<String>,
        /// Email domains admitted.
        #[serde(default)]
        allowed_domains: Vec<String>,
        /// IdP groups admitted.
        #[serde(default)]
        allowed_groups: Vec<String>,
    },
    /// A bearer JWT checked against an issuer's JWKS (`--jwt-issuer`, `--jwt-audience`).
    Jwt {
        /// Expected `iss`.
        issuer: String,
        /// Where the signing keys are; when absent, found by OIDC discovery on the issuer.
        #[serde(default)]
        jwks_url: Option<String>,
        /// Accepted `aud` values (at least one must match).
        #[serde(default)]
        audiences: Vec<String>,
    },
    /// Client addresses (`--allow-ip`, `--deny-ip`): deny wins, then allow if any is set.
    Ip {
        /// Admitted prefixes; empty admits any address not denied.
        #[serde(default)]
        allow: Vec<IpNet>,
        /// Refused prefixes.
        #[serde(default)]
        deny: Vec<IpNet>,
    },
    /// A client certificate signed by this CA (`--mtls-ca FILE`).
    Mtls {
        /// The CA certificates, PEM.
        ca_pem: String,
    },
}

impl GateSpec {
    /// The gate's kind as a short name (`webhook`, `login`, `jwt`, `ip`, `mtls`), for
    /// messages and audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            GateSpec::Webhook { .. } => "webhook",
            GateSpec::Login { .. } => "login",
            GateSpec::Jwt { .. } => "jwt",
            GateSpec::Ip { .. } => "ip",
            GateSpec::Mtls { .. } => "mtls",
        }
    }
}

/// How a chain's gates combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMode {
    /// Every gate must admit (the default).
    #[default]
    All,
    /// One admitting gate is enough.
    Any,
}

/// A per-client-address request budget: `requests` per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitSpec {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window, in seconds.
    pub per_secs: u64,
}

/// What `postern funnel` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelSpec {
    /// The node's local port to expose (the service on `127.0.0.1:PORT`).
    pub port: u16,
    /// A label for the hostname (`--name`); the node's name when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// HTTP, TCP or TLS passthrough.
    #[serde(default)]
    pub protocol: FunnelProtocol,
    /// Close the funnel this long after it opens (capped by the policy's `maxTTL`).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The gate chain, in order.
    #[serde(default)]
    pub gates: Vec<GateSpec>,
    /// How the gates combine.
    #[serde(default)]
    pub gate_mode: GateMode,
    /// Optional per-client rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A change a node asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FunnelChange {
    /// Open (or reopen with new settings) the funnel of `spec.port`.
    Open(FunnelSpec),
    /// Close the funnel of this local port.
    Close {
        /// The local port.
        port: u16,
    },
    /// List this node's funnels.
    List,
    /// Ingress nodes only: the certificate the coord stores for a funnel hostname, so
    /// ingress replicas share one certificate instead of each ordering its own. Answered
    /// with [`FunnelResponse::certificate`] set, or unset when none is stored; refused
    /// (`not_ingress`) for other nodes.
    GetCertificate {
        /// The funnel hostname.
        hostname: String,
    },
    /// Ingress nodes only: store this certificate for its hostname (replacing an older
    /// one) for the other ingress nodes, and drop this node's order claim on it. Answered
    /// with an empty list.
    PutCertificate(HostCertificate),
    /// Ingress nodes only: claim the right to order the certificate of a funnel hostname
    /// from the CA for a few minutes, so two ingress replicas never order the same
    /// hostname at once. Send it after [`FunnelChange::GetCertificate`] found none (or one
    /// due for renewal) and before ordering; send it again before each retry (a node
    /// renews its own claim). Answered with an empty list when the claim is this node's,
    /// refused with code `order_in_progress` (naming the other ingress and when its claim
    /// lapses) when another ingress is ordering: then wait and ask `GetCertificate` again.
    /// Storing the certificate ([`FunnelChange::PutCertificate`]) ends the claim.
    ClaimCertificateOrder {
        /// The funnel hostname.
        hostname: String,
    },
}

/// A TLS certificate chain and its private key for one funnel hostname, as ingress
/// replicas share it through the coord ([`FunnelChange::PutCertificate`],
/// [`FunnelChange::GetCertificate`]). It travels only inside the encrypted control channel
/// between the coord and ingress nodes. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCertificate {
    /// The hostname the certificate is for.
    pub hostname: String,
    /// The chain, leaf first (PEM).
    pub chain_pem: String,
    /// The leaf's private key (PEM). Never log it.
    pub key_pem: String,
    /// When the leaf expires.
    pub not_after: UnixTime,
}

impl fmt::Debug for HostCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCertificate")
            .field("hostname", &self.hostname)
            .field(
                "chain_pem",
                &format_args!("[{} bytes]", self.chain_pem.len()),
            )
            .field("key_pem", &format_args!("[redacted]"))
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Node → server: change or list this node's funnels. Sent on the control channel of a
/// registered node; answered by one [`FunnelResponse`] with the same `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelRequest {
    /// Chosen by the node to match the response.
    pub request_id: u64,
    /// What to do.
    pub change: FunnelChange,
}

/// One open funnel, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelInfo {
    /// The local port.
    pub port: u16,
    /// The label.
    pub name: String,
    /// The stable public hostname (same node, name and port → same hostname).
    pub hostname: String,
    /// The public URL (`https://HOST/` for HTTP, `tcp://HOST:PORT` for TCP).
    pub url: String,
    /// How it is carried.
    pub protocol: FunnelProtocol,
    /// The public port of a TCP funnel.
    #[serde(default)]
    pub public_port: Option<u16>,
    /// When it closes by itself.
    #[serde(default)]
    pub expires_at: Option<UnixTime>,
    /// The gate kinds in its chain (no secrets).
    #[serde(default)]
    pub gates: Vec<String>,
}

/// Why the server refused a funnel change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelRefusal {
    /// A stable machine-readable code: `no_grant`, `gate_required`, `ttl_too_long`,
    /// `name_taken`, `invalid`, `no_ingress`, `not_found`, `not_ingress`,
    /// `order_in_progress` (another ingress is ordering that certificate), `internal` (the
    /// server failed; try again).
    pub code: String,
    /// What was wrong and what to do, for a person.
    pub message: String,
}

/// Server → node: the outcome of a [`FunnelRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelResponse {
    /// The request's id.
    pub request_id: u64,
    /// The funnels of the node after the change (the opened one for `Open`, none for
    /// `Close`, all for `List`), or why not.
    pub result: Result<Vec<FunnelInfo>, FunnelRefusal>,
    /// The stored certificate, in the answer to [`FunnelChange::GetCertificate`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<HostCertificate>,
}

/// What an ingress needs to serve one funnel. Ingress nodes receive these in their
/// netmap's `funnel_routes`; other nodes receive none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelRoute {
    /// The public hostname.
    pub hostname: String,
    /// The node that funnels.
    pub node: NodeId,
    /// Its WireGuard key (to find it among the ingress's peers).
    pub node_key: NodePublicKey,
    /// Its owner's login, for audit records.
    pub owner: String,
    /// The node's local port the stream is for.
    pub port: u16,
    /// How it is carried.
    pub protocol: FunnelProtocol,
    /// The public port of a TCP funnel.
    #[serde(default)]
    pub public_port: Option<u16>,
    /// The gate chain, in order.
    #[serde(default)]
    pub gates: Vec<GateSpec>,
    /// How the gates combine.
    #[serde(default)]
    pub gate_mode: GateMode,
    /// Optional per-client rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// When the funnel closes; the ingress stops serving it then even without a new netmap.
    #[serde(default)]
    pub expires_at: Option<UnixTime>,
}

/// The most decisions one [`EdgeDecisionBatch`] may carry; a coord refuses larger batches.
pub const MAX_EDGE_BATCH: usize = 500;

/// The most decisions one [`FunnelLogResponse`] carries; larger `limit`s are capped.
pub const MAX_FUNNEL_LOG_LIMIT: u32 = 1000;

/// The longest a coord holds a [`FunnelLogRequest`] that asks to wait
/// ([`FunnelLogQuery::wait_ms`]): 25 s, under the node's 30 s wait for any answer, so a
/// held request is answered (empty) before the node gives up on it.
pub const MAX_FUNNEL_LOG_WAIT_MS: u32 = 25_000;

/// One request decision the edge made for a funnel: the ingress's audit record without
/// the owner and node (the coord knows them from the hostname). It never carries headers,
/// bodies or the query string (which may hold secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeDecision {
    /// The coord's id for the stored decision, increasing with arrival; 0 in a batch an
    /// ingress sends (the coord assigns it).
    #[serde(default)]
    pub id: u64,
    /// When the request arrived at the edge, Unix milliseconds.
    pub at_ms: i64,
    /// The funnel's public hostname.
    pub funnel: String,
    /// The client's address (`ip:port`).
    pub client: String,
    /// The request method (`TCP`/`TLS` for connection records, `-` for an expiry).
    pub method: String,
    /// The request path, without the query string.
    pub path: String,
    /// The gate that decided (`webhook:github`, `edge` for limits), if one did.
    #[serde(default)]
    pub gate: Option<String>,
    /// `allow`, `deny`, `respond`, `error` or `expire` (see `docs/ingress.md`).
    pub result: String,
    /// The reason code of a denial or error, e.g. `signature_mismatch`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The status sent to the client (0 when none was).
    #[serde(default)]
    pub status: u16,
    /// Response body bytes sent to the client.
    #[serde(default)]
    pub bytes: u64,
    /// Milliseconds from the request's arrival to the end of its response.
    #[serde(default)]
    pub duration_ms: u64,
}

impl EdgeDecision {
    /// Whether the edge refused the request (`result` is `deny`).
    pub fn is_denied(&self) -> bool {
        self.result == "deny"
    }
}

/// Ingress → server: the decisions the edge made since the last batch, for funnels the
/// coord routed to this ingress. At most [`MAX_EDGE_BATCH`] decisions. Answered by one
/// [`EdgeDecisionAck`] with the same `batch_id`; the ingress need not wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeDecisionBatch {
    /// Chosen by the ingress to match the acknowledgement.
    pub batch_id: u64,
    /// The decisions, oldest first.
    pub decisions: Vec<EdgeDecision>,
}

/// Server → ingress: what became of an [`EdgeDecisionBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeDecisionAck {
    /// The batch's id.
    pub batch_id: u64,
    /// Decisions stored.
    pub stored: u32,
    /// Decisions dropped: their hostname is not a funnel the coord routes to this ingress.
    #[serde(default)]
    pub dropped: u32,
    /// Why the whole batch was refused (the sender is not an ingress node, the batch is
    /// too large, the store failed), if it was.
    #[serde(default)]
    pub refusal: Option<FunnelRefusal>,
}

/// Which of its funnels' decisions a node asks for. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelLogQuery {
    /// The funnel's name (its `--name` label) or public hostname; all of the node's
    /// funnels when absent.
    #[serde(default)]
    pub funnel: Option<String>,
    /// Only decisions at or after this time.
    #[serde(default)]
    pub since: Option<UnixTime>,
    /// Only decisions with a larger id (to fetch what is new since the last answer).
    #[serde(default)]
    pub after_id: Option<u64>,
    /// At most this many, newest first (capped at [`MAX_FUNNEL_LOG_LIMIT`]; default 50).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only denials (`result` `deny`).
    #[serde(default)]
    pub denied_only: bool,
    /// When nothing matches yet, how long the coord may hold the answer for a matching
    /// decision to arrive (a long poll; capped at [`MAX_FUNNEL_LOG_WAIT_MS`]). The answer
    /// comes as soon as one arrives, or empty at the end of the wait. A coord that predates
    /// this field answers at once, so a node that asks to wait must not take a quick empty
    /// answer for the end of a wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u32>,
}

/// Node → server: the recent edge decisions of this node's own funnels. Sent on the map
/// stream's connection; answered by one [`FunnelLogResponse`] with the same `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelLogRequest {
    /// Chosen by the node to match the response.
    pub request_id: u64,
    /// What to list.
    pub query: FunnelLogQuery,
}

/// Server → node: the decisions asked for, newest first, or why not (code `invalid`,
/// `not_found` for a funnel name the node does not hold, `internal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelLogResponse {
    /// The request's id.
    pub request_id: u64,
    /// The decisions, newest first.
    pub result: Result<Vec<EdgeDecision>, FunnelRefusal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_query_that_does_not_wait_is_sent_as_before_and_old_queries_read() {
        let plain = FunnelLogQuery {
            denied_only: true,
            ..FunnelLogQuery::default()
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("wait_ms"), "{json}");
        let old: FunnelLogQuery =
            serde_json::from_str(r#"{"after_id": 41, "denied_only": true}"#).unwrap();
        assert_eq!(old.wait_ms, None);
        assert_eq!(old.after_id, Some(41));
        let waiting = FunnelLogQuery {
            wait_ms: Some(MAX_FUNNEL_LOG_WAIT_MS),
            ..plain
        };
        let json = serde_json::to_string(&waiting).unwrap();
        assert_eq!(
            serde_json::from_str::<FunnelLogQuery>(&json).unwrap(),
            waiting
        );
    }

    #[test]
    fn certificate_keys_never_print_and_answers_without_one_stay_compatible() {
        let cert = HostCertificate {
            hostname: "hooks.example.com".into(),
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: "-----BEGIN PRIVATE KEY----- hunter2".into(),
            not_after: UnixTime::from_secs(2_000_000_000),
        };
        let shown = format!("{cert:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let change = FunnelChange::PutCertificate(cert.clone());
        let json = serde_json::to_string(&change).unwrap();
        assert_eq!(serde_json::from_str::<FunnelChange>(&json).unwrap(), change);
        let old: FunnelResponse =
            serde_json::from_str(r#"{"request_id": 7, "result": {"Ok": []}}"#).unwrap();
        assert_eq!(old.certificate, None);
        let answer = FunnelResponse {
            request_id: 8,
            result: Ok(Vec::new()),
            certificate: Some(cert),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            serde_json::from_str::<FunnelResponse>(&json).unwrap(),
            answer
        );
    }

    #[test]
    fn gate_secrets_never_print() {
        let gate = GateSpec::Webhook {
            provider: "github".into(),
            secrets: vec![GateSecret::new("hunter2")],
            tolerance_secs: None,
        };
        let shown = format!("{gate:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn specs_round_trip_and_default_their_optional_parts() {
        let spec: FunnelSpec = serde_json::from_str(r#"{"port": 3000}"#).unwrap();
        assert_eq!(spec.protocol, FunnelProtocol::Http);
        assert_eq!(spec.gate_mode, GateMode::All);
        assert!(spec.gates.is_empty());
        let full = FunnelSpec {
            port: 3000,
            name: Some("hooks".into()),
            protocol: FunnelProtocol::Http,
            ttl_secs: Some(7200),
            gates: vec![
                GateSpec::Webhook {
                    provider: "github".into(),
                    secrets: vec![GateSecret::new("s")],
                    tolerance_secs: None,
                },
                GateSpec::Ip {
                    allow: vec!["192.0.2.0/24".parse().unwrap()],
                    deny: vec![],
                },
            ],
            gate_mode: GateMode::Any,
            rate_limit: Some(RateLimitSpec {
                requests: 10,
                per_secs: 1,
            }),
        };
        let json = serde_json::to_string(&full).unwrap();
        assert!(json.contains(r#""kind":"webhook""#), "{json}");
        let back: FunnelSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, full);
        assert_eq!(back.gates[1].kind(), "ip");
    }

    #[test]
    fn an_unknown_gate_kind_is_a_clear_error() {
        let error = serde_json::from_str::<GateSpec>(r#"{"kind": "telepathy"}"#).unwrap_err();
        assert!(error.to_string().contains("telepathy"), "{error}");
    }
}

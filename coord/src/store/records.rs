//! The rows of the store, as typed Rust values.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use postern_proto::funnel::{FunnelProtocol, GateMode, GateSpec, RateLimitSpec};
use postern_proto::netmap::RegionId;
use postern_proto::{DiscoPublicKey, MachinePublicKey, NodeId, NodePublicKey, UnixTime, UserId};

/// A user, created on first login from the IdP's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Stable id.
    pub id: UserId,
    /// Login (the IdP's `email` claim), unique.
    pub login: String,
    /// Display name.
    pub display_name: String,
    /// IdP groups, the policy's `group:` memberships.
    pub groups: Vec<String>,
    /// When the user was first seen.
    pub created_at: UnixTime,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Stable id.
    pub id: NodeId,
    /// Machine key, unique: one node per machine.
    pub machine_key: MachinePublicKey,
    /// Current node (WireGuard) key, unique.
    pub node_key: NodePublicKey,
    /// DNS-safe name, unique in the tailnet.
    pub name: String,
    /// Tailnet IPv4 address, unique.
    pub ipv4: Ipv4Addr,
    /// Tailnet IPv6 address, unique.
    pub ipv6: Ipv6Addr,
    /// Owner.
    pub user_id: UserId,
    /// ACL tags.
    pub tags: Vec<String>,
    /// When the node first registered.
    pub created_at: UnixTime,
    /// When the node last held a map stream.
    pub last_seen: Option<UnixTime>,
    /// When the node key expires.
    pub key_expiry: Option<UnixTime>,
    /// Removed when it goes offline.
    pub ephemeral: bool,
    /// Approved by an admin (or by an auth key).
    pub approved: bool,
    /// A Postern ingress, allowed to open funnel streams.
    pub is_ingress: bool,
    /// Last reported direct endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Last reported disco key (path discovery); `None` until the node reports one.
    pub disco_key: Option<DiscoPublicKey>,
    /// Last reported home relay region.
    pub home_relay: Option<RegionId>,
}

/// How a node can be reached, as it reports it in its map requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePaths {
    /// Its candidate direct UDP endpoints, best first.
    pub endpoints: Vec<SocketAddr>,
    /// Its disco key.
    pub disco_key: Option<DiscoPublicKey>,
    /// The relay region it is attached to.
    pub home_relay: Option<RegionId>,
}

impl NodeRecord {
    /// What the node last reported about how to reach it.
    pub fn paths(&self) -> NodePaths {
        NodePaths {
            endpoints: self.endpoints.clone(),
            disco_key: self.disco_key,
            home_relay: self.home_relay,
        }
    }
}

/// A node to insert; the store assigns the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    /// Machine key.
    pub machine_key: MachinePublicKey,
    /// Node key.
    pub node_key: NodePublicKey,
    /// DNS-safe name (the registry sanitises and de-duplicates).
    pub name: String,
    /// IPv4 address (the registry allocates).
    pub ipv4: Ipv4Addr,
    /// IPv6 address (the registry allocates).
    pub ipv6: Ipv6Addr,
    /// Owner.
    pub user_id: UserId,
    /// ACL tags.
    pub tags: Vec<String>,
    /// Registration time.
    pub created_at: UnixTime,
    /// Key expiry.
    pub key_expiry: Option<UnixTime>,
    /// Ephemeral node.
    pub ephemeral: bool,
    /// Approved already.
    pub approved: bool,
    /// Ingress node.
    pub is_ingress: bool,
}

/// A stored auth key. The key itself is never stored, only its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthKeyRecord {
    /// Row id, for listing and revoking.
    pub id: u64,
    /// The user the key registers nodes for, if any (tagged keys may have none).
    pub user_id: Option<UserId>,
    /// May register more than one node.
    pub reusable: bool,
    /// Nodes registered with it are ephemeral.
    pub ephemeral: bool,
    /// Tags given to nodes registered with it.
    pub tags: Vec<String>,
    /// Creation time.
    pub created_at: UnixTime,
    /// Expiry, if any.
    pub expires_at: Option<UnixTime>,
    /// How many registrations used it.
    pub used_count: u64,
    /// Nodes registered with it are ingress nodes.
    pub ingress: bool,
}

/// An auth key to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuthKey {
    /// The key's hash (see [`super::AuthKeyHash::of`]).
    pub hash: super::AuthKeyHash,
    /// The user it registers nodes for.
    pub user_id: Option<UserId>,
    /// Reusable.
    pub reusable: bool,
    /// Ephemeral nodes.
    pub ephemeral: bool,
    /// Tags for its nodes.
    pub tags: Vec<String>,
    /// Creation time.
    pub created_at: UnixTime,
    /// Expiry.
    pub expires_at: Option<UnixTime>,
    /// Its nodes are ingress nodes (`keys create --ingress`).
    pub ingress: bool,
}

/// An audit record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number, increasing in insertion order.
    pub id: u64,
    /// The record's content.
    pub record: NewAuditRecord,
}

/// An audit record to append. Records are never changed or deleted (the schema refuses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditRecord {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who acted (`user:alice@example.com`, `node:12`, `admin-cli`).
    pub actor: String,
    /// What they did (`node.register`, `funnel.gate.deny`).
    pub action: String,
    /// What it was done to (`node:12`, a hostname).
    pub target: String,
    /// The network address the action came from, if any.
    pub source_addr: Option<String>,
    /// More detail as JSON; never secrets.
    pub details: serde_json::Value,
}

/// Who holds the claim on ordering a hostname's certificate, and until when
/// ([`Store::claim_certificate_order`](super::Store::claim_certificate_order)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateOrderClaim {
    /// The ingress node that may order.
    pub node: NodeId,
    /// When its claim lapses.
    pub expires_at: UnixTime,
}

/// A TLS certificate for an ingress hostname.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// The hostname (or wildcard) it covers.
    pub hostname: String,
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// PEM private key. Never logged: `Debug` leaves it out.
    pub key_pem: String,
    /// Expiry of the leaf.
    pub not_after: UnixTime,
    /// When it was stored.
    pub updated_at: UnixTime,
}

impl std::fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRecord")
            .field("hostname", &self.hostname)
            .field("chain_pem_len", &self.chain_pem.len())
            .field("key_pem", &"[redacted]")
            .field("not_after", &self.not_after)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// A funnel as stored: a node's port exposed publicly under a stable hostname. A closed
/// funnel keeps its row, so its hostname and public port stay reserved for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelRecord {
    /// Row id.
    pub id: u64,
    /// The funnel's content.
    pub funnel: NewFunnel,
    /// When it was first created (the hostname's reservation).
    pub created_at: UnixTime,
}

/// A funnel to create or replace (keyed by node and port). `Debug` shows the gates' kinds
/// only: their secrets never print (see [`postern_proto::funnel::GateSecret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFunnel {
    /// The node exposing the port.
    pub node_id: NodeId,
    /// The funnel's label (`--name`, or the node's name), from which the hostname comes.
    pub name: String,
    /// The node's local port.
    pub port: u16,
    /// The public hostname, unique.
    pub hostname: String,
    /// How the ingress carries it.
    pub protocol: FunnelProtocol,
    /// The public port of a TCP funnel, unique.
    pub public_port: Option<u16>,
    /// The lifetime asked for (after the policy's cap), in seconds.
    pub ttl_secs: Option<u64>,
    /// The gate chain, secrets included.
    pub gates: Vec<GateSpec>,
    /// How the gates combine.
    pub gate_mode: GateMode,
    /// Per-client rate limit.
    pub rate_limit: Option<RateLimitSpec>,
    /// Open (served) or closed (hostname kept in reserve).
    pub is_open: bool,
    /// When it was last opened.
    pub opened_at: Option<UnixTime>,
    /// When it closes by itself.
    pub expires_at: Option<UnixTime>,
}

/// An edge decision to store: what an ingress reported, and which funnel and node the
/// coord found it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEdgeDecision {
    /// The funnel's row id.
    pub funnel_id: u64,
    /// The node owning the funnel (the only node that may read the decision).
    pub node_id: NodeId,
    /// The ingress node that reported it.
    pub ingress_id: NodeId,
    /// When the coord received it, in milliseconds since the Unix epoch (retention counts
    /// from this, not from the ingress's clock).
    pub received_ms: i64,
    /// The decision (its `id` is ignored: the store assigns one).
    pub decision: postern_proto::funnel::EdgeDecision,
}

/// Which stored edge decisions [`Store::edge_decisions`](super::Store::edge_decisions)
/// returns. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeDecisionFilter {
    /// Only decisions of funnels this node owns.
    pub node_id: Option<NodeId>,
    /// Only decisions for these hostnames (empty: any).
    pub hostnames: Vec<String>,
    /// Only decisions the edge made at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Only decisions with a larger id.
    pub after_id: Option<u64>,
    /// Only denials.
    pub denied_only: bool,
    /// At most this many, newest first.
    pub limit: u32,
}

/// How much of the edge log the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeRetention {
    /// The newest this many decisions of each funnel are kept.
    pub per_funnel: u32,
    /// Decisions received before this time (ms since the Unix epoch) go.
    pub received_before_ms: i64,
}

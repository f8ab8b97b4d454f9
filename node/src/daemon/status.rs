//! The status snapshot of a running node (`postern status`, `GET /v0/status`).
//!
//! [`Status::build`] is pure: it joins the netmap (who the peers are) with the engine's
//! counters (what happened on the wire) at a given wall-clock and monotonic time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use postern_proto::netmap::Netmap;
use postern_proto::{NodeId, NodePublicKey, UnixTime};
use serde::{Deserialize, Serialize};

use super::serves::{FunnelStatus, ServeEntry};
use crate::engine::{PathId, PeerStats};

/// The version of the `postern` that runs the daemon (the workspace version). The local API
/// sends it with every answer, so a CLI of another version can say so instead of
/// misreading the answer.
pub const DAEMON_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a running node knows about itself and its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    #[serde(rename = "self")]
    pub self_node: SelfStatus,
    /// The peers in the netmap, by name.
    pub peers: Vec<PeerStatus>,
    /// The coord this node is registered with.
    pub coord_url: String,
    /// Whether the node holds a live netmap stream to the coord now (when `false`, it runs
    /// on the last netmap it had).
    pub coord_connected: bool,
    /// The local UDP port WireGuard listens on.
    pub listen_port: u16,
    /// The endpoints this node reports to the coord.
    pub endpoints: Vec<SocketAddr>,
    /// The daemon's version ([`DAEMON_VERSION`]).
    #[serde(default)]
    pub version: String,
    /// The ports this node serves to the tailnet (`postern serve`, and the local side of
    /// funnels), by port; empty when the daemon runs without serves.
    #[serde(default)]
    pub serves: Vec<ServeEntry>,
    /// The node's public funnels with their URLs, by port.
    #[serde(default)]
    pub funnels: Vec<FunnelStatus>,
}

/// This node, in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfStatus {
    /// Node id at the coord.
    pub node_id: NodeId,
    /// Short name.
    pub name: String,
    /// Fully qualified name.
    pub fqdn: String,
    /// Tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// The owner's login.
    pub login: String,
    /// ACL tags.
    pub tags: Vec<String>,
    /// When the node key expires (Unix seconds); `None` if never.
    pub key_expiry: Option<i64>,
    /// The node's WireGuard public key.
    pub node_key: NodePublicKey,
}

/// One peer, in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Short name (`laptop`).
    pub name: String,
    /// Fully qualified name.
    pub fqdn: String,
    /// Tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// Whether the coord sees the peer online.
    pub online: bool,
    /// The owner's login.
    pub login: String,
    /// Whether the peer is an ingress.
    pub is_ingress: bool,
    /// The path packets to the peer take: `direct`, `relayed`, or `none` before the first
    /// handshake.
    pub path: String,
    /// The peer's current endpoint, if known.
    pub endpoint: Option<String>,
    /// When the last WireGuard handshake completed (Unix seconds).
    pub last_handshake: Option<i64>,
    /// Seconds since then.
    pub last_handshake_secs_ago: Option<u64>,
    /// IP bytes received from the peer.
    pub rx_bytes: u64,
    /// IP bytes sent to the peer.
    pub tx_bytes: u64,
    /// The peer's WireGuard public key.
    pub node_key: NodePublicKey,
}

/// What [`Status::build`] needs besides the netmap and counters.
#[derive(Debug, Clone)]
pub struct StatusContext {
    /// The coord URL.
    pub coord_url: String,
    /// Whether the netmap stream is live.
    pub coord_connected: bool,
    /// The WireGuard UDP port.
    pub listen_port: u16,
    /// The endpoints reported to the coord.
    pub endpoints: Vec<SocketAddr>,
    /// The node's WireGuard key.
    pub node_key: NodePublicKey,
}

impl Status {
    /// Joins `netmap` and the engine's per-peer `stats` (by WireGuard key), converting the
    /// engine's monotonic handshake times to wall-clock with the pair (`now`, `wall_now`)
    /// taken at the same moment.
    pub fn build(
        netmap: &Netmap,
        stats: &HashMap<NodePublicKey, PeerStats>,
        context: StatusContext,
        now: Instant,
        wall_now: SystemTime,
    ) -> Self {
        let me = &netmap.self_node;
        let self_node = SelfStatus {
            node_id: me.id,
            name: me.name.clone(),
            fqdn: me.fqdn.clone(),
            addresses: me.addresses.to_vec(),
            login: me.user.login.clone(),
            tags: me.tags.clone(),
            key_expiry: me.key_expiry.map(|t| t.0),
            node_key: context.node_key,
        };
        let domain = netmap.dns.tailnet_domain.trim_end_matches('.');
        let mut peers: Vec<PeerStatus> = netmap
            .peers
            .iter()
            .map(|peer| {
                let stat = stats.get(&peer.node_key).copied().unwrap_or_default();
                let ago = stat
                    .last_handshake
                    .map(|at| now.saturating_duration_since(at));
                let name = peer
                    .name
                    .strip_suffix(domain)
                    .and_then(|s| s.strip_suffix('.'))
                    .filter(|s| !s.is_empty() && !domain.is_empty())
                    .or_else(|| peer.name.split('.').next())
                    .unwrap_or_default()
                    .to_owned();
                PeerStatus {
                    name,
                    fqdn: peer.name.clone(),
                    addresses: peer.addresses.clone(),
                    online: peer.online,
                    login: peer.user.login.clone(),
                    is_ingress: peer.is_ingress,
                    path: describe_path(stat.endpoint).into(),
                    endpoint: stat.endpoint.map(|path| match path {
                        PathId::Direct(addr) => addr.to_string(),
                        PathId::Relay { region, .. } => format!("relay region {}", region.0),
                    }),
                    last_handshake: ago.map(|ago| unix_seconds(wall_now, ago)),
                    last_handshake_secs_ago: ago.map(|ago| ago.as_secs()),
                    rx_bytes: stat.rx_bytes,
                    tx_bytes: stat.tx_bytes,
                    node_key: peer.node_key,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            self_node,
            peers,
            coord_url: context.coord_url,
            coord_connected: context.coord_connected,
            listen_port: context.listen_port,
            endpoints: context.endpoints,
            version: DAEMON_VERSION.to_owned(),
            serves: Vec::new(),
            funnels: Vec::new(),
        }
    }

    /// The peer called `name` (short or full name), if any.
    pub fn peer(&self, name: &str) -> Option<&PeerStatus> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.peers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(&name) || p.fqdn.eq_ignore_ascii_case(&name))
    }
}

fn describe_path(path: Option<PathId>) -> &'static str {
    match path {
        Some(PathId::Direct(_)) => "direct",
        Some(PathId::Relay { .. }) => "relayed",
        None => "none",
    }
}

fn unix_seconds(wall_now: SystemTime, ago: Duration) -> i64 {
    UnixTime::from_system_time(wall_now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::netmap::{DnsConfig, NodeAddresses, Peer, RelayMap, SelfNode, UserProfile};
    use postern_proto::{NodePrivateKey, UserId};

    #[test]
    fn status_joins_netmap_and_counters() {
        let key = || NodePrivateKey::generate(&mut rand::rngs::OsRng).public_key();
        let user = UserProfile {
            id: UserId(1),
            login: "ci@example.com".into(),
            display_name: String::new(),
            groups: Vec::new(),
        };
        let (peer_key, idle_key, me_key) = (key(), key(), key());
        let peer = |id: u64, name: &str, node_key| Peer {
            id: NodeId(id),
            name: name.into(),
            node_key,
            disco_key: None,
            addresses: vec!["100.64.0.2".parse().unwrap()],
            allowed_ips: Vec::new(),
            endpoints: Vec::new(),
            home_relay: None,
            online: id == 2,
            key_expiry: None,
            user: user.clone(),
            tags: Vec::new(),
            is_ingress: false,
        };
        let netmap = Netmap {
            self_node: SelfNode {
                id: NodeId(1),
                name: "me".into(),
                fqdn: "me.t.test".into(),
                addresses: NodeAddresses {
                    ipv4: "100.64.0.1".parse().unwrap(),
                    ipv6: "fd7a::1".parse().unwrap(),
                },
                key_expiry: Some(UnixTime(1_900_000_000)),
                user: user.clone(),
                tags: vec!["tag:ci".into()],
            },
            peers: vec![
                peer(3, "zed.t.test", idle_key),
                peer(2, "alpha.t.test", peer_key),
            ],
            packet_filter: Vec::new(),
            relay_map: RelayMap::default(),
            dns: DnsConfig {
                tailnet_domain: "t.test".into(),
                names: Vec::new(),
            },
            funnel_grants: Vec::new(),
            funnel_routes: Vec::new(),
        };
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let stat = PeerStats {
            rx_bytes: 10,
            tx_bytes: 20,
            last_handshake: now.checked_sub(Duration::from_secs(5)),
            endpoint: Some(PathId::Direct("127.0.0.1:9".parse().unwrap())),
            ..PeerStats::default()
        };
        let stats = HashMap::from([(peer_key, stat)]);
        let context = StatusContext {
            coord_url: "http://c".into(),
            coord_connected: true,
            listen_port: 9,
            endpoints: Vec::new(),
            node_key: me_key,
        };
        let status = Status::build(&netmap, &stats, context, now, wall);
        assert_eq!(status.self_node.name, "me");
        assert_eq!(status.self_node.key_expiry, Some(1_900_000_000));
        assert_eq!(status.peers.len(), 2);
        let alpha = status.peer("alpha").unwrap();
        assert_eq!(alpha.name, "alpha");
        assert!(alpha.online);
        assert_eq!(alpha.path, "direct");
        assert_eq!(alpha.endpoint.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(alpha.last_handshake, Some(2_000_000_000 - 5));
        assert_eq!(alpha.last_handshake_secs_ago, Some(5));
        assert_eq!((alpha.rx_bytes, alpha.tx_bytes), (10, 20));
        let zed = status.peer("ZED.t.test.").unwrap();
        assert_eq!((zed.path.as_str(), zed.last_handshake), ("none", None));
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains("\"self\""), "{json}");
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
    }
}

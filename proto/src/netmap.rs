//! The netmap: everything a node needs to know about its tailnet, and deltas to it.
//!
//! The coordination server streams one [`Netmap`] to each node, then [`NetmapDelta`]s as
//! nodes join, leave, move or the policy changes. A node keeps the last netmap it had when
//! the stream drops, so established connections survive a coordination-server restart.
//!
//! [`Netmap::apply`] folds a delta into a netmap. It is pure and all-or-nothing: if any part
//! of the delta does not fit (a change to a peer the node does not know, say), the netmap is
//! left untouched and the error tells the node to ask for a full map again.
//!
//! Serialization is forward compatible: unknown fields are ignored and every list or
//! optional field defaults when absent, so a newer server can add fields without breaking
//! older nodes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::funnel::FunnelRoute;
use crate::ids::{NodeId, UnixTime, UserId};
use crate::keys::{DiscoPublicKey, NodePublicKey};

/// A node's complete view of its tailnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netmap {
    /// The node this netmap was computed for.
    pub self_node: SelfNode,
    /// The peers this node may see, in ascending id order after [`Netmap::apply`] or
    /// [`Netmap::normalize`].
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Inbound packet filter: a packet is accepted if any rule matches it.
    #[serde(default)]
    pub packet_filter: Vec<FilterRule>,
    /// Where the relays are.
    #[serde(default)]
    pub relay_map: RelayMap,
    /// Names the node should resolve inside the tailnet.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Ports this node may expose publicly through the ingress, and how.
    #[serde(default)]
    pub funnel_grants: Vec<FunnelGrant>,
    /// Every open funnel the ingress must serve; empty unless this node is an ingress.
    #[serde(default)]
    pub funnel_routes: Vec<FunnelRoute>,
}

/// The node's own identity and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfNode {
    /// Stable id.
    pub id: NodeId,
    /// Short DNS-safe name, unique in the tailnet (e.g. `laptop`).
    pub name: String,
    /// Fully qualified name (e.g. `laptop.example.ts.net`), without a trailing dot.
    pub fqdn: String,
    /// The node's tailnet addresses.
    pub addresses: NodeAddresses,
    /// When the node key expires and the node must log in again; `None` if it never does.
    #[serde(default)]
    pub key_expiry: Option<UnixTime>,
    /// The user who owns the node.
    pub user: UserProfile,
    /// ACL tags (`tag:server`); a tagged node is owned by its tags rather than its user.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A node's tailnet IPv4 (from 100.64.0.0/10) and IPv6 (from the tailnet's ULA /48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddresses {
    /// The IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The IPv6 address.
    pub ipv6: Ipv6Addr,
}

impl NodeAddresses {
    /// Both addresses, IPv4 first.
    pub fn to_vec(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }
}

/// Who a user is, as the peers and the serve proxy's identity headers see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    /// Stable id.
    pub id: UserId,
    /// Login name, usually the IdP's e-mail claim.
    pub login: String,
    /// Human-readable name.
    #[serde(default)]
    pub display_name: String,
    /// IdP groups (the policy's `group:` memberships).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A relay region id, as used in [`RelayMap`] and as a node's home relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegionId(pub u16);

/// Another node this node may talk to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Stable id.
    pub id: NodeId,
    /// Fully qualified DNS name.
    pub name: String,
    /// WireGuard public key.
    pub node_key: NodePublicKey,
    /// Disco key for path discovery; `None` if the peer has not reported one yet.
    #[serde(default)]
    pub disco_key: Option<DiscoPublicKey>,
    /// The peer's own tailnet addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Prefixes routed to this peer (its addresses as /32 and /128, plus subnet routes).
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
    /// Candidate direct UDP endpoints, best first.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// Relay region where the peer can be reached.
    #[serde(default)]
    pub home_relay: Option<RegionId>,
    /// Whether the peer currently holds a map stream open.
    #[serde(default)]
    pub online: bool,
    /// When the peer's key expires; `None` if never.
    #[serde(default)]
    pub key_expiry: Option<UnixTime>,
    /// The peer's owner.
    pub user: UserProfile,
    /// ACL tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// True if the peer is a Postern ingress allowed to open funnel streams.
    #[serde(default)]
    pub is_ingress: bool,
}

/// One inbound packet-filter rule: sources × destinations × protocols.
///
/// This is the plain wire form; the `postern-acl` crate compiles policy into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    /// Source prefixes the packet may come from.
    pub sources: Vec<IpNet>,
    /// Destination prefixes and port ranges the packet may go to.
    pub destinations: Vec<FilterDestination>,
    /// IP protocols this rule matches; empty means every protocol.
    #[serde(default)]
    pub protocols: Vec<IpProtocol>,
}

/// A destination prefix with the ports allowed on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterDestination {
    /// Destination prefix (usually one of the node's own addresses).
    pub prefix: IpNet,
    /// Allowed destination ports; ignored for protocols without ports (ICMP).
    pub ports: PortRange,
}

/// An inclusive range of ports, `first <= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PortRangeWire")]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// Why a port range is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortRangeError {
    /// The range ends before it starts.
    #[error("port range {first}-{last} ends before it starts; write the lower port first")]
    Reversed {
        /// First port given.
        first: u16,
        /// Last port given.
        last: u16,
    },
}

impl PortRange {
    /// Every port, 0-65535.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// The range `first..=last`; fails if `last < first`.
    pub fn new(first: u16, last: u16) -> Result<Self, PortRangeError> {
        if last < first {
            return Err(PortRangeError::Reversed { first, last });
        }
        Ok(Self { first, last })
    }

    /// The single port `port`.
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// First port of the range.
    pub const fn first(&self) -> u16 {
        self.first
    }

    /// Last port of the range (inclusive).
    pub const fn last(&self) -> u16 {
        self.last
    }

    /// Whether `port` is in the range.
    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[derive(Deserialize)]
struct PortRangeWire {
    first: u16,
    last: u16,
}

impl TryFrom<PortRangeWire> for PortRange {
    type Error = PortRangeError;

    fn try_from(wire: PortRangeWire) -> Result<Self, Self::Error> {
        PortRange::new(wire.first, wire.last)
    }
}

/// An IP protocol number (the IPv4 protocol / IPv6 next-header field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// ICMP for IPv4.
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// TCP.
    pub const TCP: IpProtocol = IpProtocol(6);
    /// UDP.
    pub const UDP: IpProtocol = IpProtocol(17);
    /// ICMP for IPv6.
    pub const ICMPV6: IpProtocol = IpProtocol(58);
    /// SCTP.
    pub const SCTP: IpProtocol = IpProtocol(132);
}

/// Where the relays are, by region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMap {
    /// Regions in ascending id order.
    #[serde(default)]
    pub regions: Vec<RelayRegion>,
}

/// One relay region: a set of interchangeable relay servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRegion {
    /// Region id, unique in the map.
    pub id: RegionId,
    /// Human-readable name (`eu-west`).
    pub name: String,
    /// The servers in the region.
    #[serde(default)]
    pub servers: Vec<RelayServer>,
}

/// One relay server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayServer {
    /// URL to dial for the relay (`https://relay.example.com/relay`).
    pub url: String,
    /// UDP port answering STUN on the same host; `None` if it runs no STUN.
    #[serde(default)]
    pub stun_port: Option<u16>,
}

/// DNS settings for the tailnet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// The tailnet's domain (`example.ts.net`), without a trailing dot.
    #[serde(default)]
    pub tailnet_domain: String,
    /// Names to resolve locally.
    #[serde(default)]
    pub names: Vec<DnsRecord>,
}

/// A name and the addresses it resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// Fully qualified name, without a trailing dot.
    pub name: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

/// Permission for this node to expose a local port publicly through the ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelGrant {
    /// Local port that may be funnelled.
    pub port: u16,
    /// Public hostname assigned to it.
    pub hostname: String,
    /// Gates the ingress must pass before forwarding (names from the policy, such as
    /// `github-webhook`); every one is required.
    #[serde(default)]
    pub gates_required: Vec<String>,
    /// Longest time the funnel may stay open, in seconds; `None` for no limit.
    #[serde(default)]
    pub max_ttl_secs: Option<u64>,
}

/// A change to a [`Netmap`]. Absent parts mean "unchanged".
///
/// [`Netmap::apply`] applies the parts in field order: removals, additions, changes,
/// endpoint moves, online flags, then the replacements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetmapDelta {
    /// Peers that are gone (deleted, or no longer visible under the policy).
    #[serde(default)]
    pub peers_removed: Vec<NodeId>,
    /// Peers that are new to this node.
    #[serde(default)]
    pub peers_added: Vec<Peer>,
    /// Peers whose record changed; each replaces the whole record.
    #[serde(default)]
    pub peers_changed: Vec<Peer>,
    /// Peers whose endpoints or home relay moved (the most frequent change).
    #[serde(default)]
    pub endpoints_changed: Vec<EndpointsChange>,
    /// Peers that came online or went offline.
    #[serde(default)]
    pub online_changed: Vec<OnlineChange>,
    /// The node's own record, if it changed (rename, new tags, new expiry).
    #[serde(default)]
    pub self_node: Option<SelfNode>,
    /// A new packet filter, replacing the old one.
    #[serde(default)]
    pub packet_filter: Option<Vec<FilterRule>>,
    /// A new relay map, replacing the old one.
    #[serde(default)]
    pub relay_map: Option<RelayMap>,
    /// New DNS settings, replacing the old ones.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// New funnel grants, replacing the old ones.
    #[serde(default)]
    pub funnel_grants: Option<Vec<FunnelGrant>>,
    /// New funnel routes (ingress nodes only), replacing the old ones.
    #[serde(default)]
    pub funnel_routes: Option<Vec<FunnelRoute>>,
}

/// New endpoints and home relay for one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsChange {
    /// Which peer.
    pub id: NodeId,
    /// Its new endpoints, replacing the old ones.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// Its new home relay.
    #[serde(default)]
    pub home_relay: Option<RegionId>,
}

/// A peer's new online state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineChange {
    /// Which peer.
    pub id: NodeId,
    /// Whether it is online now.
    pub online: bool,
}

/// Why a delta could not be applied. The netmap is unchanged; the node should request a
/// full netmap, since it and the server disagree about the peer set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The delta removes or changes a peer this netmap does not have.
    #[error("netmap delta refers to {id}, which is not in this netmap; request a full netmap")]
    UnknownPeer {
        /// The peer's id.
        id: NodeId,
    },
    /// The delta adds a peer this netmap already has.
    #[error("netmap delta adds {id}, which is already in this netmap; request a full netmap")]
    DuplicatePeer {
        /// The peer's id.
        id: NodeId,
    },
    /// The delta's self record is for another node.
    #[error("netmap delta carries the self record of {found}, but this netmap is for {expected}")]
    WrongSelf {
        /// This netmap's node.
        expected: NodeId,
        /// The node the delta's record is for.
        found: NodeId,
    },
}

impl Netmap {
    /// Sorts peers by id and drops duplicate ids (keeping the first). Call once on a full
    /// netmap received from the network before looking peers up with [`Netmap::peer`].
    pub fn normalize(&mut self) {
        self.peers.sort_by_key(|peer| peer.id);
        self.peers.dedup_by_key(|peer| peer.id);
    }

    /// The peer with this id, if visible. Requires peers in id order (see
    /// [`Netmap::normalize`]).
    pub fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.peers
            .binary_search_by_key(&id, |peer| peer.id)
            .ok()
            .and_then(|index| self.peers.get(index))
    }

    /// Applies `delta`, all or nothing. On success the peers are in id order. On error the
    /// netmap is unchanged.
    pub fn apply(&mut self, delta: &NetmapDelta) -> Result<(), DeltaError> {
        if let Some(self_node) = &delta.self_node
            && self_node.id != self.self_node.id
        {
            return Err(DeltaError::WrongSelf {
                expected: self.self_node.id,
                found: self_node.id,
            });
        }
        let mut peers: BTreeMap<NodeId, Peer> = self
            .peers
            .iter()
            .map(|peer| (peer.id, peer.clone()))
            .collect();
        for id in &delta.peers_removed {
            peers
                .remove(id)
                .ok_or(DeltaError::UnknownPeer { id: *id })?;
        }
        for peer in &delta.peers_added {
            if peers.insert(peer.id, peer.clone()).is_some() {
                return Err(DeltaError::DuplicatePeer { id: peer.id });
            }
        }
        for peer in &delta.peers_changed {
            let slot = peers
                .get_mut(&peer.id)
                .ok_or(DeltaError::UnknownPeer { id: peer.id })?;
            *slot = peer.clone();
        }
        for change in &delta.endpoints_changed {
            let peer = peers
                .get_mut(&change.id)
                .ok_or(DeltaError::UnknownPeer { id: change.id })?;
            peer.endpoints.clone_from(&change.endpoints);
            peer.home_relay = change.home_relay;
        }
        for change in &delta.online_changed {
            let peer = peers
                .get_mut(&change.id)
                .ok_or(DeltaError::UnknownPeer { id: change.id })?;
            peer.online = change.online;
        }

        self.peers = peers.into_values().collect();
        if let Some(self_node) = &delta.self_node {
            self.self_node = self_node.clone();
        }
        if let Some(filter) = &delta.packet_filter {
            self.packet_filter.clone_from(filter);
        }
        if let Some(relay_map) = &delta.relay_map {
            self.relay_map = relay_map.clone();
        }
        if let Some(dns) = &delta.dns {
            self.dns = dns.clone();
        }
        if let Some(grants) = &delta.funnel_grants {
            self.funnel_grants.clone_from(grants);
        }
        if let Some(routes) = &delta.funnel_routes {
            self.funnel_routes.clone_from(routes);
        }
        Ok(())
    }
}

impl NetmapDelta {
    /// True if the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self == &NetmapDelta::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn user(id: u64) -> UserProfile {
        UserProfile {
            id: UserId(id),
            login: format!("user{id}@example.com"),
            display_name: format!("User {id}"),
            groups: vec!["group:eng".into()],
        }
    }

    pub(crate) fn peer(id: u64) -> Peer {
        let v4 = Ipv4Addr::new(100, 64, 0, u8::try_from(id % 250).unwrap());
        Peer {
            id: NodeId(id),
            name: format!("peer{id}.example.ts.net"),
            node_key: NodePublicKey::from_bytes([u8::try_from(id % 256).unwrap(); 32]),
            disco_key: Some(DiscoPublicKey::from_bytes([1; 32])),
            addresses: vec![IpAddr::V4(v4)],
            allowed_ips: vec![IpNet::from(IpAddr::V4(v4))],
            endpoints: vec!["192.0.2.1:41641".parse().unwrap()],
            home_relay: Some(RegionId(1)),
            online: true,
            key_expiry: Some(UnixTime(1_900_000_000)),
            user: user(1),
            tags: vec![],
            is_ingress: false,
        }
    }

    pub(crate) fn netmap(peer_ids: &[u64]) -> Netmap {
        Netmap {
            self_node: SelfNode {
                id: NodeId(1000),
                name: "me".into(),
                fqdn: "me.example.ts.net".into(),
                addresses: NodeAddresses {
                    ipv4: Ipv4Addr::new(100, 64, 0, 1),
                    ipv6: "fd00:1:2::1".parse().unwrap(),
                },
                key_expiry: None,
                user: user(1),
                tags: vec!["tag:server".into()],
            },
            peers: peer_ids.iter().map(|id| peer(*id)).collect(),
            packet_filter: vec![FilterRule {
                sources: vec!["100.64.0.0/10".parse().unwrap()],
                destinations: vec![FilterDestination {
                    prefix: "100.64.0.1/32".parse().unwrap(),
                    ports: PortRange::new(80, 443).unwrap(),
                }],
                protocols: vec![IpProtocol::TCP],
            }],
            relay_map: RelayMap {
                regions: vec![RelayRegion {
                    id: RegionId(1),
                    name: "home".into(),
                    servers: vec![RelayServer {
                        url: "https://relay.example.com/relay".into(),
                        stun_port: Some(3478),
                    }],
                }],
            },
            dns: DnsConfig {
                tailnet_domain: "example.ts.net".into(),
                names: vec![],
            },
            funnel_grants: vec![FunnelGrant {
                port: 3000,
                hostname: "hook.funnel.example.com".into(),
                gates_required: vec!["github-webhook".into()],
                max_ttl_secs: Some(3600),
            }],
            funnel_routes: Vec::new(),
        }
    }

    #[test]
    fn apply_adds_changes_moves_and_removes_peers() {
        let mut map = netmap(&[3, 1, 2]);
        let mut changed = peer(2);
        changed.tags = vec!["tag:db".into()];
        let delta = NetmapDelta {
            peers_removed: vec![NodeId(1)],
            peers_added: vec![peer(4)],
            peers_changed: vec![changed.clone()],
            endpoints_changed: vec![EndpointsChange {
                id: NodeId(3),
                endpoints: vec!["198.51.100.7:9".parse().unwrap()],
                home_relay: Some(RegionId(2)),
            }],
            online_changed: vec![OnlineChange {
                id: NodeId(4),
                online: false,
            }],
            funnel_grants: Some(vec![]),
            ..NetmapDelta::default()
        };
        map.apply(&delta).unwrap();
        let ids: Vec<_> = map.peers.iter().map(|p| p.id.0).collect();
        assert_eq!(ids, [2, 3, 4]);
        assert_eq!(map.peer(NodeId(2)), Some(&changed));
        let moved = map.peer(NodeId(3)).unwrap();
        assert_eq!(
            moved.endpoints,
            ["198.51.100.7:9".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(moved.home_relay, Some(RegionId(2)));
        assert!(!map.peer(NodeId(4)).unwrap().online);
        assert!(map.funnel_grants.is_empty());
        assert_eq!(map.packet_filter.len(), 1, "absent parts stay unchanged");
    }

    #[test]
    fn a_bad_delta_leaves_the_netmap_untouched() {
        let original = netmap(&[1, 2]);
        let cases = [
            (
                NetmapDelta {
                    peers_removed: vec![NodeId(9)],
                    ..NetmapDelta::default()
                },
                "netmap delta refers to node:9, which is not in this netmap; request a full netmap",
            ),
            (
                NetmapDelta {
                    peers_removed: vec![NodeId(1)],
                    peers_added: vec![peer(2)],
                    ..NetmapDelta::default()
                },
                "netmap delta adds node:2, which is already in this netmap; request a full netmap",
            ),
            (
                NetmapDelta {
                    peers_removed: vec![NodeId(1)],
                    online_changed: vec![OnlineChange {
                        id: NodeId(1),
                        online: true,
                    }],
                    ..NetmapDelta::default()
                },
                "netmap delta refers to node:1, which is not in this netmap; request a full netmap",
            ),
        ];
        for (delta, message) in cases {
            let mut map = original.clone();
            let err = map.apply(&delta).unwrap_err();
            assert_eq!(err.to_string(), message);
            assert_eq!(map, original);
        }
        let mut other_self = original.self_node.clone();
        other_self.id = NodeId(5);
        let mut map = original.clone();
        let err = map
            .apply(&NetmapDelta {
                self_node: Some(other_self),
                ..NetmapDelta::default()
            })
            .unwrap_err();
        assert_eq!(
            err,
            DeltaError::WrongSelf {
                expected: NodeId(1000),
                found: NodeId(5)
            }
        );
    }

    #[test]
    fn port_ranges_are_validated_on_decode() {
        let err = serde_json::from_str::<PortRange>(r#"{"first":443,"last":80}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("port range 443-80 ends before it starts"),
            "{err}"
        );
        let ok: PortRange = serde_json::from_str(r#"{"first":80,"last":80}"#).unwrap();
        assert_eq!(ok.to_string(), "80");
        assert!(ok.contains(80) && !ok.contains(81));
        assert_eq!(PortRange::ALL.to_string(), "0-65535");
    }

    #[test]
    fn missing_optional_fields_default() {
        let json = r#"{"self_node":{"id":1,"name":"a","fqdn":"a.t","addresses":
            {"ipv4":"100.64.0.1","ipv6":"fd00::1"},"user":{"id":1,"login":"a@b"},
            "field_from_the_future":true}}"#;
        let map: Netmap = serde_json::from_str(json).unwrap();
        assert!(map.peers.is_empty());
        assert!(NetmapDelta::default().is_empty());
    }

    proptest! {
        // Applying a delta that adds a set of peers and removes another equals building
        // the result directly.
        #[test]
        fn apply_matches_a_set_model(
            start in proptest::collection::btree_set(0u64..40, 0..20),
            add in proptest::collection::btree_set(40u64..80, 0..10),
            remove_mask in proptest::collection::vec(any::<bool>(), 20),
        ) {
            let start: Vec<u64> = start.into_iter().collect();
            let removed: Vec<u64> = start
                .iter()
                .zip(remove_mask.iter().chain(std::iter::repeat(&false)))
                .filter(|(_, r)| **r)
                .map(|(id, _)| *id)
                .collect();
            let mut map = netmap(&start);
            map.apply(&NetmapDelta {
                peers_removed: removed.iter().map(|id| NodeId(*id)).collect(),
                peers_added: add.iter().map(|id| peer(*id)).collect(),
                ..NetmapDelta::default()
            }).unwrap();
            let mut expected: Vec<u64> =
                start.iter().filter(|id| !removed.contains(id)).copied().chain(add).collect();
            expected.sort_unstable();
            let got: Vec<u64> = map.peers.iter().map(|p| p.id.0).collect();
            prop_assert_eq!(got, expected);
        }
    }
}

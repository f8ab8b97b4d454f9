//! From a netmap to engine commands, without I/O: [`EngineTarget`] is what the engine should
//! hold for a netmap, and [`plan`] is the list of changes that takes the engine from one
//! target to the next.
//!
//! The runtime keeps the target it last applied, builds the new one with
//! [`EngineTarget::from_netmap`] on every netmap change and sends the [`EngineChange`]s
//! [`plan`] returns, in order. Peers are keyed by their WireGuard key: a peer that
//! re-keyed is removed and added again (its old session is useless). A peer's endpoint is
//! set only when the endpoint the netmap advertises changes, so an endpoint the engine
//! learnt by roaming is not overwritten by an unchanged netmap.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use postern_proto::NodePublicKey;
use postern_proto::netmap::{FilterRule, Netmap};

/// What the engine should hold for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTarget {
    /// The peer's WireGuard key.
    pub key: NodePublicKey,
    /// Its allowed IPs.
    pub allowed_ips: Vec<IpNet>,
    /// The direct endpoint to use, chosen from the netmap's candidates by
    /// [`choose_endpoint`]; `None` waits for the peer to reach us.
    pub endpoint: Option<SocketAddr>,
}

/// What the engine should hold for a netmap: peers and the inbound filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineTarget {
    /// The peers by key.
    pub peers: BTreeMap<NodePublicKey, PeerTarget>,
    /// The inbound filter rules; `None` before the first netmap.
    pub filter: Option<Vec<FilterRule>>,
}

/// One change to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineChange {
    /// Remove a peer (it left, or re-keyed).
    RemovePeer(NodePublicKey),
    /// Add a peer.
    AddPeer(PeerTarget),
    /// Replace a peer's allowed IPs.
    SetAllowedIps(NodePublicKey, Vec<IpNet>),
    /// Point a peer at a new direct endpoint.
    SetEndpoint(NodePublicKey, SocketAddr),
    /// Replace the inbound filter.
    SetFilter(Vec<FilterRule>),
}

impl EngineTarget {
    /// The target for `netmap`. Peers with no allowed IPs are still added (they may reach
    /// us; nothing routes to them). A peer whose key is `self_key` is skipped.
    pub fn from_netmap(netmap: &Netmap, self_key: &NodePublicKey) -> Self {
        let peers = netmap
            .peers
            .iter()
            .filter(|peer| peer.node_key != *self_key)
            .map(|peer| {
                let mut allowed_ips = peer.allowed_ips.clone();
                allowed_ips.sort();
                allowed_ips.dedup();
                let target = PeerTarget {
                    key: peer.node_key,
                    allowed_ips,
                    endpoint: choose_endpoint(&peer.endpoints),
                };
                (peer.node_key, target)
            })
            .collect();
        Self {
            peers,
            filter: Some(netmap.packet_filter.clone()),
        }
    }
}

/// The changes that take an engine holding `old` to `new`: removals first (so a network
/// that moved between peers ends on the new one), then additions, then per-peer updates,
/// then the filter.
pub fn plan(old: &EngineTarget, new: &EngineTarget) -> Vec<EngineChange> {
    let mut changes = Vec::new();
    for key in old.peers.keys() {
        if !new.peers.contains_key(key) {
            changes.push(EngineChange::RemovePeer(*key));
        }
    }
    for (key, peer) in &new.peers {
        if !old.peers.contains_key(key) {
            changes.push(EngineChange::AddPeer(peer.clone()));
        }
    }
    for (key, peer) in &new.peers {
        let Some(before) = old.peers.get(key) else {
            continue;
        };
        if before.allowed_ips != peer.allowed_ips {
            changes.push(EngineChange::SetAllowedIps(*key, peer.allowed_ips.clone()));
        }
        if before.endpoint != peer.endpoint
            && let Some(endpoint) = peer.endpoint
        {
            changes.push(EngineChange::SetEndpoint(*key, endpoint));
        }
    }
    if old.filter != new.filter
        && let Some(filter) = &new.filter
    {
        changes.push(EngineChange::SetFilter(filter.clone()));
    }
    changes
}

/// The direct endpoint to try among a peer's candidates: the first IPv4 one (the node's
/// WireGuard socket is IPv4), else none. Path discovery will replace this choice.
pub fn choose_endpoint(candidates: &[SocketAddr]) -> Option<SocketAddr> {
    candidates.iter().find(|addr| addr.is_ipv4()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::netmap::{DnsConfig, NodeAddresses, Peer, RelayMap, SelfNode, UserProfile};
    use postern_proto::{NodeId, NodePrivateKey, UserId};

    fn key() -> NodePublicKey {
        NodePrivateKey::generate(&mut rand::rngs::OsRng).public_key()
    }

    fn user() -> UserProfile {
        UserProfile {
            id: UserId(1),
            login: "a@example.com".into(),
            display_name: String::new(),
            groups: Vec::new(),
        }
    }

    fn peer(id: u64, key: NodePublicKey, ip: &str, endpoints: &[&str]) -> Peer {
        Peer {
            id: NodeId(id),
            name: format!("n{id}.tailnet.test"),
            node_key: key,
            disco_key: None,
            addresses: vec![ip.parse().unwrap()],
            allowed_ips: vec![format!("{ip}/32").parse().unwrap()],
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            home_relay: None,
            online: true,
            key_expiry: None,
            user: user(),
            tags: Vec::new(),
            is_ingress: false,
        }
    }

    fn netmap(self_key: NodePublicKey, peers: Vec<Peer>) -> (Netmap, NodePublicKey) {
        let map = Netmap {
            self_node: SelfNode {
                id: NodeId(1),
                name: "me".into(),
                fqdn: "me.tailnet.test".into(),
                addresses: NodeAddresses {
                    ipv4: "100.64.0.1".parse().unwrap(),
                    ipv6: "fd7a::1".parse().unwrap(),
                },
                key_expiry: None,
                user: user(),
                tags: Vec::new(),
            },
            peers,
            packet_filter: Vec::new(),
            relay_map: RelayMap::default(),
            dns: DnsConfig::default(),
            funnel_grants: Vec::new(),
            funnel_routes: Vec::new(),
        };
        (map, self_key)
    }

    #[test]
    fn first_netmap_adds_every_peer_and_sets_the_filter() {
        let (a, b, me) = (key(), key(), key());
        let (map, me) = netmap(
            me,
            vec![
                peer(2, a, "100.64.0.2", &["[2001:db8::1]:1", "192.0.2.1:41641"]),
                peer(3, b, "100.64.0.3", &[]),
            ],
        );
        let target = EngineTarget::from_netmap(&map, &me);
        let changes = plan(&EngineTarget::default(), &target);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes.contains(&EngineChange::AddPeer(PeerTarget {
            key: a,
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            endpoint: Some("192.0.2.1:41641".parse().unwrap()),
        })));
        assert!(matches!(&changes[2], EngineChange::SetFilter(rules) if rules.is_empty()));
        assert!(plan(&target, &target).is_empty(), "same target, no changes");
    }

    #[test]
    fn changes_are_minimal_and_ordered() {
        let (a, b, c, me) = (key(), key(), key(), key());
        let (old_map, me) = netmap(
            me,
            vec![
                peer(2, a, "100.64.0.2", &["192.0.2.1:1"]),
                peer(3, b, "100.64.0.3", &["192.0.2.2:1"]),
            ],
        );
        let mut moved = peer(2, a, "100.64.0.2", &["192.0.2.9:9"]);
        moved.allowed_ips.push("10.1.0.0/16".parse().unwrap());
        let (mut new_map, _) = netmap(me, vec![moved, peer(4, c, "100.64.0.4", &[])]);
        new_map.packet_filter = vec![FilterRule {
            sources: vec!["100.64.0.0/10".parse().unwrap()],
            destinations: Vec::new(),
            protocols: Vec::new(),
        }];
        let old = EngineTarget::from_netmap(&old_map, &me);
        let new = EngineTarget::from_netmap(&new_map, &me);
        let changes = plan(&old, &new);
        assert_eq!(
            changes,
            vec![
                EngineChange::RemovePeer(b),
                EngineChange::AddPeer(PeerTarget {
                    key: c,
                    allowed_ips: vec!["100.64.0.4/32".parse().unwrap()],
                    endpoint: None,
                }),
                EngineChange::SetAllowedIps(
                    a,
                    vec![
                        "10.1.0.0/16".parse().unwrap(),
                        "100.64.0.2/32".parse().unwrap()
                    ]
                ),
                EngineChange::SetEndpoint(a, "192.0.2.9:9".parse().unwrap()),
                EngineChange::SetFilter(new_map.packet_filter.clone()),
            ]
        );
    }

    #[test]
    fn a_rekeyed_peer_is_replaced_and_self_is_never_a_peer() {
        let (old_key, new_key, me) = (key(), key(), key());
        let (old_map, me) = netmap(me, vec![peer(2, old_key, "100.64.0.2", &[])]);
        let (new_map, _) = netmap(
            me,
            vec![
                peer(2, new_key, "100.64.0.2", &[]),
                peer(9, me, "100.64.0.1", &[]),
            ],
        );
        let changes = plan(
            &EngineTarget::from_netmap(&old_map, &me),
            &EngineTarget::from_netmap(&new_map, &me),
        );
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0], EngineChange::RemovePeer(old_key));
        assert!(matches!(&changes[1], EngineChange::AddPeer(p) if p.key == new_key));
    }

    #[test]
    fn an_endpoint_that_disappears_leaves_the_engine_alone() {
        let (a, me) = (key(), key());
        let (old_map, me) = netmap(me, vec![peer(2, a, "100.64.0.2", &["192.0.2.1:1"])]);
        let (new_map, _) = netmap(me, vec![peer(2, a, "100.64.0.2", &[])]);
        let changes = plan(
            &EngineTarget::from_netmap(&old_map, &me),
            &EngineTarget::from_netmap(&new_map, &me),
        );
        assert!(changes.is_empty(), "{changes:?}");
    }
}

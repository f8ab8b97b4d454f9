//! Netmaps: computing each node's view of the tailnet and the deltas between two views.
//!
//! [`build_netmap`] is pure: it takes the registered nodes, their users, who is online and
//! the node's compiled policy result ([`crate::policy`]), and returns one node's netmap:
//! the peers the policy lets it see, its packet filter and its funnel grants. [`diff`]
//! compares the last netmap sent to a node with a fresh one and returns the smallest
//! [`NetmapDelta`] that turns one into the other, so a session can recompute on every change
//! and send only what changed: a node whose compiled result and visible peers did not
//! change gets no delta.

pub mod filter;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::OnceLock;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use postern_acl::CompiledNode;
use postern_proto::funnel_hop::FUNNEL_HOP_PORT;
use postern_proto::netmap::{
    DnsConfig, DnsRecord, EndpointsChange, FilterDestination, FilterRule, IpProtocol, Netmap,
    NetmapDelta, NodeAddresses, OnlineChange, Peer, PortRange, RelayMap, SelfNode, UserProfile,
};
use postern_proto::{NodeId, UnixTime, UserId};

use crate::store::{FunnelRecord, NodeRecord, UserRecord};

pub use filter::{wire_filter, wire_funnel_grants};

/// The tailnet's IPv4 range (CGNAT space).
pub const TAILNET_IPV4: Ipv4Net = Ipv4Net::new_assert(std::net::Ipv4Addr::new(100, 64, 0, 0), 10);

/// Everything [`build_netmap`] needs about the tailnet, read once per change.
#[derive(Debug, Clone)]
pub struct TailnetView {
    /// Every registered node.
    pub nodes: Vec<NodeRecord>,
    /// Users by id.
    pub users: HashMap<UserId, UserRecord>,
    /// Nodes holding a map stream now.
    pub online: HashSet<NodeId>,
    /// The tailnet's DNS domain.
    pub tailnet_domain: String,
    /// The tailnet's ULA /48.
    pub ula: Option<Ipv6Net>,
    /// Funnels by node.
    pub funnels: HashMap<NodeId, Vec<FunnelRecord>>,
    /// When the view was read; keys that expired before it are expired.
    pub now: UnixTime,
    /// The relay map from the coord's configuration.
    pub relay_map: RelayMap,
    /// Positions in `nodes` by id, built on first use (see [`Self::node`]).
    index: OnceLock<HashMap<NodeId, usize>>,
}

impl Default for TailnetView {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            users: HashMap::new(),
            online: HashSet::new(),
            tailnet_domain: String::new(),
            ula: None,
            funnels: HashMap::new(),
            now: UnixTime(0),
            relay_map: RelayMap::default(),
            index: OnceLock::new(),
        }
    }
}

impl TailnetView {
    /// A view of these records, read at `now`, with the coord's relay map.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        nodes: Vec<NodeRecord>,
        users: HashMap<UserId, UserRecord>,
        online: HashSet<NodeId>,
        tailnet_domain: String,
        ula: Option<Ipv6Net>,
        funnels: HashMap<NodeId, Vec<FunnelRecord>>,
        now: UnixTime,
        relay_map: RelayMap,
    ) -> Self {
        Self {
            nodes,
            users,
            online,
            tailnet_domain,
            ula,
            funnels,
            now,
            relay_map,
            index: OnceLock::new(),
        }
    }

    /// The registered node `id`, found through an index built on the first call (a view
    /// is read once and then shared, so building it once pays for every session). If
    /// `nodes` was changed after the index was built, a stale entry is detected and the
    /// node is searched for, so the answer is always right.
    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        let index = self.index.get_or_init(|| {
            self.nodes
                .iter()
                .enumerate()
                .map(|(position, node)| (node.id, position))
                .collect()
        });
        index
            .get(&id)
            .and_then(|position| self.nodes.get(*position))
            .filter(|node| node.id == id)
            .or_else(|| self.nodes.iter().find(|node| node.id == id))
    }

    /// The policy's views of the eligible nodes (see [`Self::is_eligible`]).
    pub fn policy_views(&self) -> Vec<postern_acl::NodeView> {
        self.nodes
            .iter()
            .filter(|node| self.is_eligible(node))
            .map(|node| crate::policy::node_view(node, self.users.get(&node.user_id)))
            .collect()
    }

    /// Whether `node` takes part in the tailnet now: approved and its key not expired.
    /// Only these are compiled by the policy and appear in other nodes' netmaps.
    pub fn is_eligible(&self, node: &NodeRecord) -> bool {
        node.approved && !is_expired(node, self.now)
    }
}

/// Whether `node`'s key has expired at `now`.
pub fn is_expired(node: &NodeRecord, now: UnixTime) -> bool {
    node.key_expiry.is_some_and(|expiry| expiry <= now)
}

/// The netmap of node `id`, or `None` if it is not registered. `compiled` is the node's
/// policy result; `None` (an expired or unapproved node) gives a netmap with no peers, a
/// filter that denies everything and no funnel grants.
pub fn build_netmap(
    view: &TailnetView,
    id: NodeId,
    compiled: Option<&CompiledNode>,
) -> Option<Netmap> {
    let me = view.node(id)?;
    let fqdn = |name: &str| format!("{name}.{}", view.tailnet_domain);
    let self_node = SelfNode {
        id: me.id,
        name: me.name.clone(),
        fqdn: fqdn(&me.name),
        addresses: postern_proto::netmap::NodeAddresses {
            ipv4: me.ipv4,
            ipv6: me.ipv6,
        },
        key_expiry: me.key_expiry,
        user: profile(view, me.user_id),
        tags: me.tags.clone(),
    };
    // Only the peers the policy shows this node are looked at: the cost is the node's own
    // netmap, not the size of the tailnet.
    let mut peers: Vec<Peer> = compiled
        .map(|c| c.visible_peers.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|peer| view.node(NodeId(peer.0)))
        .filter(|node| node.id != id && view.is_eligible(node))
        .map(|node| Peer {
            id: node.id,
            name: fqdn(&node.name),
            node_key: node.node_key,
            disco_key: node.disco_key,
            addresses: vec![IpAddr::V4(node.ipv4), IpAddr::V6(node.ipv6)],
            allowed_ips: vec![
                IpNet::from(IpAddr::V4(node.ipv4)),
                IpNet::from(IpAddr::V6(node.ipv6)),
            ],
            endpoints: node.endpoints.clone(),
            home_relay: node.home_relay,
            online: view.online.contains(&node.id),
            key_expiry: node.key_expiry,
            user: profile(view, node.user_id),
            tags: node.tags.clone(),
            is_ingress: node.is_ingress,
        })
        .collect();
    peers.sort_by_key(|peer| peer.id);
    let mut names: Vec<DnsRecord> = std::iter::once(DnsRecord {
        name: self_node.fqdn.clone(),
        addresses: self_node.addresses.to_vec(),
    })
    .chain(peers.iter().map(|peer| DnsRecord {
        name: peer.name.clone(),
        addresses: peer.addresses.clone(),
    }))
    .collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    let (packet_filter, funnel_grants) = match compiled {
        Some(compiled) => {
            let mut filter = wire_filter(&compiled.packet_filter, &self_node.addresses);
            if !compiled.funnel_grants.is_empty() {
                filter.extend(funnel_hop_rule(view, me, &self_node.addresses));
            }
            (
                filter,
                wire_funnel_grants(
                    compiled,
                    view.funnels.get(&id).map(Vec::as_slice).unwrap_or_default(),
                ),
            )
        }
        None => (Vec::new(), Vec::new()),
    };
    let mut netmap = Netmap {
        self_node,
        peers,
        packet_filter,
        relay_map: view.relay_map.clone(),
        dns: DnsConfig {
            tailnet_domain: view.tailnet_domain.clone(),
            names,
        },
        funnel_grants,
        funnel_routes: Vec::new(),
    };
    netmap.normalize();
    Some(netmap)
}

/// The delta that turns `old` into `new` (empty if they are equal). Both must be for the
/// same node; if they are not, the self record is replaced.
pub fn diff(old: &Netmap, new: &Netmap) -> NetmapDelta {
    let before: BTreeMap<NodeId, &Peer> = old.peers.iter().map(|p| (p.id, p)).collect();
    let after: BTreeMap<NodeId, &Peer> = new.peers.iter().map(|p| (p.id, p)).collect();
    let mut delta = NetmapDelta::default();
    for id in before.keys() {
        if !after.contains_key(id) {
            delta.peers_removed.push(*id);
        }
    }
    for (id, peer) in &after {
        let Some(previous) = before.get(id) else {
            delta.peers_added.push((*peer).clone());
            continue;
        };
        if previous == peer {
            continue;
        }
        let mut moved = (*previous).clone();
        moved.endpoints = peer.endpoints.clone();
        moved.home_relay = peer.home_relay;
        let mut toggled = (*previous).clone();
        toggled.online = peer.online;
        if &&moved == peer {
            delta.endpoints_changed.push(EndpointsChange {
                id: *id,
                endpoints: peer.endpoints.clone(),
                home_relay: peer.home_relay,
            });
        } else if &&toggled == peer {
            delta.online_changed.push(OnlineChange {
                id: *id,
                online: peer.online,
            });
        } else {
            delta.peers_changed.push((*peer).clone());
        }
    }
    if old.self_node != new.self_node {
        delta.self_node = Some(new.self_node.clone());
    }
    if old.packet_filter != new.packet_filter {
        delta.packet_filter = Some(new.packet_filter.clone());
    }
    if old.relay_map != new.relay_map {
        delta.relay_map = Some(new.relay_map.clone());
    }
    if old.dns != new.dns {
        delta.dns = Some(new.dns.clone());
    }
    if old.funnel_grants != new.funnel_grants {
        delta.funnel_grants = Some(new.funnel_grants.clone());
    }
    if old.funnel_routes != new.funnel_routes {
        delta.funnel_routes = Some(new.funnel_routes.clone());
    }
    delta
}

/// The rule that lets every eligible ingress node reach `me`'s funnel acceptor (TCP
/// [`FUNNEL_HOP_PORT`]), for a node that holds funnel grants; `None` without ingress nodes.
/// (The policy's compiled filter already admits ingress nodes to the granted ports; the
/// hop port is Postern's own, so the coord adds it here.)
fn funnel_hop_rule(
    view: &TailnetView,
    me: &NodeRecord,
    addresses: &NodeAddresses,
) -> Option<FilterRule> {
    let sources: Vec<IpNet> = view
        .nodes
        .iter()
        .filter(|node| node.is_ingress && node.id != me.id && view.is_eligible(node))
        .flat_map(|node| {
            [
                IpNet::from(IpAddr::V4(node.ipv4)),
                IpNet::from(IpAddr::V6(node.ipv6)),
            ]
        })
        .collect();
    if sources.is_empty() {
        return None;
    }
    Some(FilterRule {
        sources,
        destinations: addresses
            .to_vec()
            .into_iter()
            .map(|addr| FilterDestination {
                prefix: IpNet::from(addr),
                ports: PortRange::single(FUNNEL_HOP_PORT),
            })
            .collect(),
        protocols: vec![IpProtocol::TCP],
    })
}

fn profile(view: &TailnetView, user: UserId) -> UserProfile {
    match view.users.get(&user) {
        Some(record) => UserProfile {
            id: record.id,
            login: record.login.clone(),
            display_name: record.display_name.clone(),
            groups: record.groups.clone(),
        },
        None => UserProfile {
            id: user,
            login: String::new(),
            display_name: String::new(),
            groups: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyEngine, PolicySource};
    use postern_proto::{MachinePrivateKey, NodePrivateKey};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn node(id: u64) -> NodeRecord {
        let rng = &mut rand::rngs::OsRng;
        NodeRecord {
            id: NodeId(id),
            machine_key: MachinePrivateKey::generate(rng).public_key(),
            node_key: NodePrivateKey::generate(rng).public_key(),
            name: format!("n{id}"),
            ipv4: Ipv4Addr::new(100, 64, 0, id as u8),
            ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, id as u16),
            user_id: UserId(1),
            tags: Vec::new(),
            created_at: UnixTime(0),
            last_seen: None,
            key_expiry: None,
            ephemeral: false,
            approved: true,
            is_ingress: false,
            endpoints: Vec::new(),
            disco_key: None,
            home_relay: None,
        }
    }

    fn user(id: u64, login: &str) -> UserRecord {
        UserRecord {
            id: UserId(id),
            login: login.into(),
            display_name: String::new(),
            groups: Vec::new(),
            created_at: UnixTime(0),
        }
    }

    fn view(nodes: Vec<NodeRecord>) -> TailnetView {
        TailnetView {
            nodes,
            users: [(UserId(1), user(1, "alice@example.com"))].into(),
            tailnet_domain: "example.test".into(),
            now: UnixTime(1000),
            ..TailnetView::default()
        }
    }

    /// The netmap under the built-in policy.
    fn netmap(view: &TailnetView, id: u64) -> Option<Netmap> {
        let engine = PolicyEngine::load(PolicySource::BuiltIn).unwrap();
        engine.sync(view.policy_views());
        engine.with_compiled(postern_acl::NodeId(id), |c| {
            build_netmap(view, NodeId(id), c)
        })
    }

    #[test]
    fn a_node_sees_the_eligible_nodes_the_policy_shows_it_and_their_names() {
        let mut unapproved = node(4);
        unapproved.approved = false;
        let mut expired = node(5);
        expired.key_expiry = Some(UnixTime(1000));
        let mut other_user = node(6);
        other_user.user_id = UserId(2);
        let mut v = view(vec![
            node(1),
            node(2),
            node(3),
            unapproved,
            expired,
            other_user,
        ]);
        v.users.insert(UserId(2), user(2, "bob@example.com"));
        let map = netmap(&v, 2).unwrap();
        let ids: Vec<_> = map.peers.iter().map(|p| p.id.0).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(map.self_node.fqdn, "n2.example.test");
        assert!(map.dns.names.iter().any(|r| r.name == "n3.example.test"));
        assert!(!map.packet_filter.is_empty());
        assert!(netmap(&v, 9).is_none());
        let lonely = netmap(&v, 6).unwrap();
        assert!(lonely.peers.is_empty());
        // Its filter admits only its own addresses (autogroup:self), none of alice's.
        for rule in &lonely.packet_filter {
            let alice = IpAddr::V4(v.nodes[0].ipv4);
            assert!(rule.sources.iter().all(|s| !s.contains(&alice)));
        }
        let gone = netmap(&v, 5).unwrap();
        assert!(gone.peers.is_empty() && gone.packet_filter.is_empty());
    }

    #[test]
    fn diff_applied_to_the_old_netmap_gives_the_new_one() {
        let mut v = view(vec![node(1), node(2), node(3)]);
        let old = netmap(&v, 1).unwrap();
        assert!(diff(&old, &old).is_empty());
        v.nodes.retain(|n| n.id != NodeId(2));
        v.nodes.push(node(4));
        v.nodes[1].endpoints = vec!["192.0.2.1:41641".parse().unwrap()];
        v.online.insert(NodeId(4));
        let new = netmap(&v, 1).unwrap();
        let delta = diff(&old, &new);
        assert_eq!(delta.peers_removed, vec![NodeId(2)]);
        assert_eq!(delta.peers_added.len(), 1);
        assert_eq!(delta.endpoints_changed.len(), 1);
        let mut applied = old.clone();
        applied.apply(&delta).unwrap();
        assert_eq!(applied, new);
    }

    #[test]
    fn an_online_flip_is_a_small_delta() {
        let mut v = view(vec![node(1), node(2)]);
        let old = netmap(&v, 1).unwrap();
        v.online.insert(NodeId(2));
        let new = netmap(&v, 1).unwrap();
        let delta = diff(&old, &new);
        assert_eq!(
            delta.online_changed,
            vec![OnlineChange {
                id: NodeId(2),
                online: true
            }]
        );
        assert!(delta.peers_changed.is_empty());
        assert!(delta.packet_filter.is_none());
    }
}

//! The nodes a policy is compiled against: who each node is, and indexes to find nodes by
//! user, tag, IdP group and address without scanning them all.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::UserLogin;

/// A node's stable identifier, as the coord's registry assigns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// What the policy needs to know about one node. The coord builds it from its registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node's identifier.
    pub id: NodeId,
    /// Its tailnet addresses (IPv4 and/or IPv6).
    pub addresses: Vec<IpAddr>,
    /// The login of the user who owns (or registered) it.
    pub user: UserLogin,
    /// The IdP's `groups` claim from the owner's login, names without `group:` (e.g. `eng`).
    /// `None` when the login carried no claim (auth keys, IdPs without groups); this matters
    /// with `"idpGroups": "idp"`.
    pub idp_groups: Option<Vec<String>>,
    /// Its tags, names without `tag:`. A tagged node is no longer its user's: user, group,
    /// `autogroup:member` and `autogroup:self` selectors do not match it.
    pub tags: Vec<String>,
    /// Whether the node is one of the coord's ingress (funnel edge) nodes.
    pub is_ingress: bool,
}

impl NodeView {
    /// Whether the node carries any tag.
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }
}

/// The current set of nodes, indexed for compilation. Insert, replace and remove nodes as
/// the registry changes; each change costs about O(log n) plus the size of the touched
/// index lists.
#[derive(Debug, Clone, Default)]
pub struct NodeSet {
    slots: Vec<Option<NodeView>>,
    free: Vec<u32>,
    by_id: HashMap<NodeId, u32>,
    pub(crate) by_user: HashMap<UserLogin, Vec<u32>>,
    pub(crate) by_tag: HashMap<String, Vec<u32>>,
    pub(crate) by_idp_group: HashMap<String, Vec<u32>>,
    pub(crate) untagged: Vec<u32>,
    pub(crate) tagged: Vec<u32>,
    pub(crate) ingress: Vec<u32>,
    /// Every address, sorted, with its node's slot: answers "which nodes are in this CIDR".
    addresses: Vec<(IpAddr, u32)>,
}

impl NodeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node, or replaces the node with the same id. Returns the replaced view.
    pub fn upsert(&mut self, node: NodeView) -> Option<NodeView> {
        let old = self.remove(node.id);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.index(slot, &node, true);
        self.by_id.insert(node.id, slot);
        if let Some(entry) = self.slots.get_mut(slot as usize) {
            *entry = Some(node);
        }
        old
    }

    /// Removes a node. Returns its view if it was present.
    pub fn remove(&mut self, id: NodeId) -> Option<NodeView> {
        let slot = self.by_id.remove(&id)?;
        let node = self.slots.get_mut(slot as usize)?.take()?;
        self.unindex(slot, &node);
        self.free.push(slot);
        Some(node)
    }

    /// The node with this id.
    pub fn get(&self, id: NodeId) -> Option<&NodeView> {
        self.by_id.get(&id).and_then(|slot| self.slot(*slot))
    }

    /// How many nodes the set holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every node, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &NodeView> {
        self.slots.iter().flatten()
    }

    pub(crate) fn slot(&self, slot: u32) -> Option<&NodeView> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn slot_of(&self, id: NodeId) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// One past the largest slot number (for bitsets over slots).
    pub(crate) fn slot_capacity(&self) -> usize {
        self.slots.len()
    }

    /// Calls `f` with the slot of every node that has an address in `prefix`.
    pub(crate) fn in_prefix(&self, prefix: &IpNet, mut f: impl FnMut(u32)) {
        let first = prefix.network();
        let last = prefix.broadcast();
        let start = self.addresses.partition_point(|(ip, _)| *ip < first);
        for (ip, slot) in self.addresses.iter().skip(start) {
            if *ip > last {
                break;
            }
            f(*slot);
        }
    }

    /// Every occupied slot.
    pub(crate) fn all_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id.values().copied()
    }

    fn index(&mut self, slot: u32, node: &NodeView, keep_sorted: bool) {
        if node.is_tagged() {
            self.tagged.push(slot);
            for tag in &node.tags {
                self.by_tag.entry(tag.clone()).or_default().push(slot);
            }
        } else {
            self.untagged.push(slot);
            self.by_user
                .entry(node.user.clone())
                .or_default()
                .push(slot);
            for group in node.idp_groups.iter().flatten() {
                self.by_idp_group
                    .entry(group.clone())
                    .or_default()
                    .push(slot);
            }
        }
        if node.is_ingress {
            self.ingress.push(slot);
        }
        for ip in &node.addresses {
            if keep_sorted {
                let at = self.addresses.partition_point(|e| *e < (*ip, slot));
                self.addresses.insert(at, (*ip, slot));
            } else {
                self.addresses.push((*ip, slot));
            }
        }
    }

    fn unindex(&mut self, slot: u32, node: &NodeView) {
        fn drop_from(list: &mut Vec<u32>, slot: u32) {
            if let Some(i) = list.iter().position(|s| *s == slot) {
                list.swap_remove(i);
            }
        }
        fn drop_keyed(map: &mut HashMap<String, Vec<u32>>, key: &str, slot: u32) {
            if let Some(list) = map.get_mut(key) {
                drop_from(list, slot);
                if list.is_empty() {
                    map.remove(key);
                }
            }
        }
        if node.is_tagged() {
            drop_from(&mut self.tagged, slot);
            for tag in &node.tags {
                drop_keyed(&mut self.by_tag, tag, slot);
            }
        } else {
            drop_from(&mut self.untagged, slot);
            drop_keyed(&mut self.by_user, &node.user, slot);
            for group in node.idp_groups.iter().flatten() {
                drop_keyed(&mut self.by_idp_group, group, slot);
            }
        }
        if node.is_ingress {
            drop_from(&mut self.ingress, slot);
        }
        self.addresses.retain(|(_, s)| *s != slot);
    }
}

impl FromIterator<NodeView> for NodeSet {
    fn from_iter<T: IntoIterator<Item = NodeView>>(iter: T) -> Self {
        // Bulk load: index everything, then sort the address index once.
        let mut set = NodeSet::new();
        for node in iter {
            if let Some(slot) = set.by_id.get(&node.id).copied() {
                if let Some(old) = set.slots.get_mut(slot as usize).and_then(Option::take) {
                    set.unindex(slot, &old);
                }
                set.by_id.remove(&node.id);
                set.free.push(slot);
            }
            let slot = match set.free.pop() {
                Some(slot) => slot,
                None => {
                    set.slots.push(None);
                    u32::try_from(set.slots.len() - 1).unwrap_or(u32::MAX)
                }
            };
            set.index(slot, &node, false);
            set.by_id.insert(node.id, slot);
            if let Some(entry) = set.slots.get_mut(slot as usize) {
                *entry = Some(node);
            }
        }
        set.addresses.sort_unstable();
        set
    }
}

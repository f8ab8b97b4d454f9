//! Per-node compilation: for one node and the current nodes, the peers it may see, the
//! inbound packet filter it enforces, its attributes and its funnel grants; and the
//! incremental [`PolicyCompiler`] that recompiles only the nodes a change touches.
//!
//! The policy's rules are indexed by what their `src` and `dst` name (tag, user, group,
//! autogroup, prefix), so finding the rules that concern a node costs the number of rules
//! that match it, not the number of rules. What a rule's `src` expands to (node addresses
//! merged into sorted ranges) is computed once per rule and shared by every node the rule
//! reaches; a node change invalidates only the rules whose selectors match that node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::eval::Subject;
use crate::filter::{AddrRanges, FilterEntry, FilterProto, PacketFilter};
use crate::model::{GateRequirements, IpProto, Policy, PortRange, RuleRef, Selector};
use crate::node::{NodeId, NodeSet, NodeView};

/// The attribute (in `nodeAttrs`) a node needs before any `funnels` rule applies to it.
pub const FUNNEL_ATTR: &str = "funnel";

/// What one node receives from the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledNode {
    /// The node.
    pub node: NodeId,
    /// The peers it may see: nodes it may reach plus nodes that may reach it (and, for
    /// funnels, the ingress nodes), sorted, without itself.
    pub visible_peers: Vec<NodeId>,
    /// The filter it applies to inbound traffic.
    pub packet_filter: PacketFilter,
    /// Its `nodeAttrs` attributes, sorted and deduplicated.
    pub node_attrs: Vec<String>,
    /// What it may funnel, in `funnels` order (the first grant covering a port decides).
    /// Empty unless the node has the `funnel` attribute.
    pub funnel_grants: Vec<FunnelGrant>,
    /// App capabilities peers have on this node (from grants' `app`).
    pub app_grants: Vec<AppGrant>,
    /// Whether a rule with `autogroup:internet` in `dst` lets this node use exit nodes.
    /// Postern has no exit nodes yet; this is carried so the node can be told once it has.
    pub internet_access: bool,
}

impl CompiledNode {
    /// The grant that decides a funnel of local `port`: the first covering it.
    pub fn funnel_grant_for(&self, port: u16) -> Option<&FunnelGrant> {
        self.funnel_grants
            .iter()
            .find(|g| g.ports.iter().any(|r| r.contains(port)))
    }
}

/// Permission for a node to funnel some local ports, and what the edge must enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelGrant {
    /// The `funnels` rule it comes from.
    pub rule: RuleRef,
    /// The local ports it covers.
    pub ports: Vec<PortRange>,
    /// The longest a funnel may stay open, if limited.
    pub max_ttl: Option<Duration>,
    /// Gates the edge must enforce.
    pub gates: GateRequirements,
}

/// App capabilities that peers from `src` hold on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct AppGrant {
    /// The grant it comes from.
    pub rule: RuleRef,
    /// Source addresses holding the capabilities.
    pub src: AddrRanges,
    /// Capability name to values, as written in the policy.
    pub caps: BTreeMap<String, Vec<serde_json::Value>>,
}

impl Policy {
    /// Compiles what `node` receives, given every current node.
    ///
    /// One-off convenience: it expands only the rules that concern this node, but shares
    /// nothing between calls. To compile many nodes, or to follow node joins and leaves,
    /// use [`PolicyCompiler`]. If `node` is not in `nodes` it is compiled as if it were.
    pub fn compile_for(&self, node: &NodeView, nodes: &NodeSet) -> CompiledNode {
        let mut cache = Cache::new(self);
        if let Some(slot) = nodes.slot_of(node.id)
            && nodes.slot(slot) == Some(node)
        {
            return compile_node(self, nodes, slot, &mut cache);
        }
        let mut with_node = nodes.clone();
        with_node.upsert(node.clone());
        match with_node.slot_of(node.id) {
            Some(slot) => compile_node(self, &with_node, slot, &mut cache),
            None => empty(node.id),
        }
    }
}

/// Keeps every node's compiled result current as nodes join, change and leave, recompiling
/// only the nodes a change touches.
///
/// A change to node X can only alter the results of X itself, of the nodes X may reach or
/// be reached by before or after the change (its visible peers), of the destinations of app
/// grants X holds, and, for funnels, of ingress nodes or funnelling nodes. Those are
/// recompiled; the shared per-rule expansions that mention X are invalidated and rebuilt
/// lazily.
#[derive(Debug, Clone)]
pub struct PolicyCompiler {
    policy: Arc<Policy>,
    nodes: NodeSet,
    cache: Cache,
    compiled: HashMap<NodeId, CompiledNode>,
}

impl PolicyCompiler {
    /// Compiles every node of `nodes` under `policy`.
    pub fn new(policy: Arc<Policy>, nodes: NodeSet) -> Self {
        let cache = Cache::new(&policy);
        let mut compiler = PolicyCompiler {
            policy,
            nodes,
            cache,
            compiled: HashMap::new(),
        };
        compiler.recompile_all();
        compiler
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The current nodes.
    pub fn nodes(&self) -> &NodeSet {
        &self.nodes
    }

    /// The current result for a node.
    pub fn compiled(&self, id: NodeId) -> Option<&CompiledNode> {
        self.compiled.get(&id)
    }

    /// Adds or changes a node. Returns the nodes whose results changed (including this one
    /// if it did), sorted: these are the netmaps to send.
    pub fn upsert_node(&mut self, node: NodeView) -> Vec<NodeId> {
        let id = node.id;
        let old = self.nodes.get(id).cloned();
        let mut affected = self.affected_by(old.as_ref());
        self.invalidate(old.as_ref());
        self.invalidate(Some(&node));
        self.nodes.upsert(node);
        let new_view = self.nodes.get(id).cloned();
        let mut self_changed = false;
        if let Some(slot) = self.nodes.slot_of(id) {
            let result = compile_node(&self.policy, &self.nodes, slot, &mut self.cache);
            self_changed = self.compiled.get(&id) != Some(&result);
            self.store(result);
        }
        affected.extend(self.affected_by(new_view.as_ref()));
        affected.remove(&id);
        let mut changed = self.recompile(affected);
        if self_changed {
            changed.push(id);
            changed.sort_unstable();
        }
        changed
    }

    /// Removes a node. Returns the other nodes whose results changed, sorted.
    pub fn remove_node(&mut self, id: NodeId) -> Vec<NodeId> {
        let Some(old) = self.nodes.get(id).cloned() else {
            return Vec::new();
        };
        let mut affected = self.affected_by(Some(&old));
        self.invalidate(Some(&old));
        self.nodes.remove(id);
        self.compiled.remove(&id);
        affected.remove(&id);
        self.recompile(affected)
    }

    /// Replaces the policy: everything is recompiled. Returns the nodes whose results
    /// changed, sorted.
    pub fn set_policy(&mut self, policy: Arc<Policy>) -> Vec<NodeId> {
        self.cache = Cache::new(&policy);
        self.policy = policy;
        let before = std::mem::take(&mut self.compiled);
        self.recompile_all();
        let mut changed: Vec<NodeId> = self
            .compiled
            .iter()
            .filter(|(id, c)| before.get(id) != Some(c))
            .map(|(id, _)| *id)
            .collect();
        changed.sort_unstable();
        changed
    }

    fn recompile_all(&mut self) {
        let slots: Vec<u32> = self.nodes.all_slots().collect();
        for slot in slots {
            let result = compile_node(&self.policy, &self.nodes, slot, &mut self.cache);
            self.compiled.insert(result.node, result);
        }
    }

    /// Recompiles `ids`; returns those whose result changed.
    fn recompile(&mut self, ids: BTreeSet<NodeId>) -> Vec<NodeId> {
        let mut changed = Vec::new();
        for id in ids {
            let Some(slot) = self.nodes.slot_of(id) else {
                continue;
            };
            let result = compile_node(&self.policy, &self.nodes, slot, &mut self.cache);
            if self.compiled.get(&id) != Some(&result) {
                changed.push(id);
            }
            self.store(result);
        }
        changed
    }

    fn store(&mut self, result: CompiledNode) {
        self.compiled.insert(result.node, result);
    }

    /// The nodes whose results may depend on `node` as it is now described.
    fn affected_by(&mut self, node: Option<&NodeView>) -> BTreeSet<NodeId> {
        let mut out = BTreeSet::new();
        let Some(node) = node else {
            return out;
        };
        let Some(slot) = self.nodes.slot_of(node.id) else {
            return out;
        };
        // Its peers as compiled now (its stored result is current for this view).
        let current = match self.compiled.get(&node.id) {
            Some(c) if self.nodes.get(node.id) == Some(node) => c.clone(),
            _ => compile_node(&self.policy, &self.nodes, slot, &mut self.cache),
        };
        out.extend(current.visible_peers.iter().copied());
        // Destinations of app grants it holds.
        let subject = Subject::of_node(node);
        for rule in &self.policy.app_rules {
            if rule
                .src
                .iter()
                .any(|s| self.policy.matches_src(s, &subject))
            {
                let mut slots = Vec::new();
                expand_dst(&self.policy, &self.nodes, &rule.dst, Some(node), &mut slots);
                out.extend(
                    slots
                        .iter()
                        .filter_map(|s| self.nodes.slot(*s))
                        .map(|n| n.id),
                );
            }
        }
        // Funnels: ingress nodes see funnelling nodes and the other way round.
        if node.is_ingress {
            let funnelling = funnel_slots(&self.policy, &self.nodes, &mut self.cache);
            out.extend(
                funnelling
                    .iter()
                    .filter_map(|s| self.nodes.slot(*s))
                    .map(|n| n.id),
            );
        }
        if !current.funnel_grants.is_empty() {
            out.extend(
                self.nodes
                    .ingress
                    .iter()
                    .filter_map(|s| self.nodes.slot(*s))
                    .map(|n| n.id),
            );
        }
        out
    }

    /// Drops cached expansions that `node` (as described) takes part in.
    fn invalidate(&mut self, node: Option<&NodeView>) {
        let Some(node) = node else {
            return;
        };
        let policy = &self.policy;
        let subject = Subject::of_node(node);
        let index = self.cache.index.clone();
        for (class, selectors) in index.src_lists.iter().enumerate() {
            if selectors.iter().any(|s| policy.matches_src(s, &subject))
                && let Some(entry) = self.cache.net_src.get_mut(class)
            {
                *entry = None;
            }
        }
        for (class, selectors) in index.dst_lists.iter().enumerate() {
            if selectors.iter().any(|s| policy.matches_src(s, &subject))
                && let Some(entry) = self.cache.net_dst.get_mut(class)
            {
                *entry = None;
            }
        }
        for (i, rule) in policy.app_rules.iter().enumerate() {
            if rule.src.iter().any(|s| policy.matches_src(s, &subject))
                && let Some(entry) = self.cache.app_src.get_mut(i)
            {
                *entry = None;
            }
        }
        self.cache.funnel_slots = None;
    }
}

// ----- the compilation of one node -----

/// A rule's source side expanded against the current nodes.
#[derive(Debug)]
struct Expansion {
    slots: Vec<u32>,
    ranges: Arc<AddrRanges>,
}

/// Per-rule expansions shared between the compilations of many nodes. Rules with the same
/// `src` (or `dst`) list share one expansion.
#[derive(Debug, Clone)]
struct Cache {
    index: Arc<RuleIndex>,
    net_src: Vec<Option<Arc<Expansion>>>,
    net_dst: Vec<Option<Arc<Vec<u32>>>>,
    app_src: Vec<Option<Arc<AddrRanges>>>,
    funnel_slots: Option<Arc<Vec<u32>>>,
}

impl Cache {
    fn new(policy: &Policy) -> Self {
        let index = policy.rule_index.clone();
        Cache {
            net_src: vec![None; index.src_lists.len()],
            net_dst: vec![None; index.dst_lists.len()],
            index,
            app_src: vec![None; policy.app_rules.len()],
            funnel_slots: None,
        }
    }

    fn net_src(&mut self, policy: &Policy, nodes: &NodeSet, rule: usize) -> Arc<Expansion> {
        let class = self
            .index
            .src_class
            .get(rule)
            .copied()
            .unwrap_or(usize::MAX);
        if let Some(Some(e)) = self.net_src.get(class) {
            return e.clone();
        }
        let selectors = self.index.src_lists.get(class).map_or(&[][..], |s| &s[..]);
        let e = Arc::new(expand_src(policy, nodes, selectors));
        if let Some(entry) = self.net_src.get_mut(class) {
            *entry = Some(e.clone());
        }
        e
    }

    fn net_dst(&mut self, policy: &Policy, nodes: &NodeSet, rule: usize) -> Arc<Vec<u32>> {
        let class = self
            .index
            .dst_class
            .get(rule)
            .copied()
            .unwrap_or(usize::MAX);
        if let Some(Some(e)) = self.net_dst.get(class) {
            return e.clone();
        }
        let selectors = self.index.dst_lists.get(class).map_or(&[][..], |s| &s[..]);
        let mut slots = Vec::new();
        expand_dst(policy, nodes, selectors, None, &mut slots);
        let e = Arc::new(slots);
        if let Some(entry) = self.net_dst.get_mut(class) {
            *entry = Some(e.clone());
        }
        e
    }

    fn app_src(&mut self, policy: &Policy, nodes: &NodeSet, rule: usize) -> Arc<AddrRanges> {
        if let Some(Some(e)) = self.app_src.get(rule) {
            return e.clone();
        }
        let selectors = policy.app_rules.get(rule).map_or(&[][..], |r| &r.src[..]);
        let e = expand_src(policy, nodes, selectors).ranges;
        if let Some(entry) = self.app_src.get_mut(rule) {
            *entry = Some(e.clone());
        }
        e
    }
}

fn empty(id: NodeId) -> CompiledNode {
    CompiledNode {
        node: id,
        visible_peers: Vec::new(),
        packet_filter: PacketFilter::deny_all(),
        node_attrs: Vec::new(),
        funnel_grants: Vec::new(),
        app_grants: Vec::new(),
        internet_access: false,
    }
}

fn compile_node(policy: &Policy, nodes: &NodeSet, slot: u32, cache: &mut Cache) -> CompiledNode {
    let Some(node) = nodes.slot(slot) else {
        return empty(NodeId(u64::MAX));
    };
    let subject = Subject::of_node(node);
    let index = cache.index.clone();
    let mut seen = SlotSet::new(nodes.slot_capacity());
    let mut sources: Vec<(FilterProto, PortRange, Arc<AddrRanges>)> = Vec::new();
    let mut internet_access = false;

    // Inbound: rules whose dst names this node.
    for rule_id in index.dst.candidates(policy, &subject) {
        let Some(rule) = policy.net_rules.get(rule_id as usize) else {
            continue;
        };
        if rule.caps.is_empty() {
            continue;
        }
        let expansion = cache.net_src(policy, nodes, rule_id as usize);
        seen.extend(&expansion.slots);
        push_caps(&rule.caps, &expansion.ranges, &mut sources);
    }
    // Inbound through autogroup:self: the same user's untagged nodes that match src.
    if !node.is_tagged() {
        for &rule_id in &index.dst.self_ {
            let Some(rule) = policy.net_rules.get(rule_id as usize) else {
                continue;
            };
            let own: Vec<u32> = nodes
                .by_user
                .get(&node.user)
                .into_iter()
                .flatten()
                .copied()
                .filter(|s| {
                    nodes.slot(*s).is_some_and(|n| {
                        let peer = Subject::of_node(n);
                        rule.src.iter().any(|sel| policy.matches_src(sel, &peer))
                    })
                })
                .collect();
            if own.is_empty() || rule.caps.is_empty() {
                continue;
            }
            seen.extend(&own);
            // A node named by identity sends from all its addresses; one matched only by
            // a prefix, from the addresses inside it.
            let ranges = Arc::new(AddrRanges::from_addresses(
                own.iter().filter_map(|s| nodes.slot(*s)).flat_map(|n| {
                    let peer = Subject::of_node(n);
                    let by_identity = rule.src.iter().any(|sel| {
                        !matches!(sel, Selector::Prefix(_) | Selector::Host { .. })
                            && policy.matches_src(sel, &peer)
                    });
                    n.addresses.iter().copied().filter(move |ip| {
                        by_identity
                            || rule.src.iter().any(|sel| match sel {
                                Selector::Prefix(p) | Selector::Host { prefix: p, .. } => {
                                    p.contains(ip)
                                }
                                _ => false,
                            })
                    })
                }),
            ));
            push_caps(&rule.caps, &ranges, &mut sources);
        }
    }
    // Outbound: rules whose src names this node make their destinations visible.
    for rule_id in index.src.candidates(policy, &subject) {
        let Some(rule) = policy.net_rules.get(rule_id as usize) else {
            continue;
        };
        if rule.caps.is_empty() {
            continue;
        }
        let dst = cache.net_dst(policy, nodes, rule_id as usize);
        seen.extend(&dst);
        if rule.dst.contains(&Selector::AutogroupSelf) && !node.is_tagged() {
            seen.extend(nodes.by_user.get(&node.user).map_or(&[][..], Vec::as_slice));
        }
        if rule.dst.contains(&Selector::AutogroupInternet) {
            internet_access = true;
        }
    }

    // Attributes and funnels.
    let mut node_attrs: Vec<String> = policy
        .node_attrs
        .iter()
        .filter(|r| r.target.iter().any(|s| policy.matches_src(s, &subject)))
        .flat_map(|r| r.attrs.iter().cloned())
        .collect();
    node_attrs.sort_unstable();
    node_attrs.dedup();
    let funnel_grants = funnel_grants(policy, &subject, &node_attrs);
    if !funnel_grants.is_empty() && !nodes.ingress.is_empty() {
        let ingress: Vec<u32> = nodes
            .ingress
            .iter()
            .copied()
            .filter(|s| *s != slot)
            .collect();
        seen.extend(&ingress);
        let ranges = Arc::new(AddrRanges::from_addresses(
            ingress
                .iter()
                .filter_map(|s| nodes.slot(*s))
                .flat_map(|n| n.addresses.iter().copied()),
        ));
        for grant in &funnel_grants {
            for ports in &grant.ports {
                sources.push((FilterProto::One(IpProto::TCP), *ports, ranges.clone()));
            }
        }
    }
    if node.is_ingress {
        let funnelling = funnel_slots(policy, nodes, cache);
        seen.extend(&funnelling);
    }

    // App capabilities held on this node.
    let mut app_grants = Vec::new();
    for (i, rule) in policy.app_rules.iter().enumerate() {
        let on_this = rule.dst.iter().any(|d| match d {
            Selector::AutogroupSelf => false,
            other => policy.matches_src(other, &subject),
        });
        if on_this {
            app_grants.push(AppGrant {
                rule: rule.origin.clone(),
                src: (*cache.app_src(policy, nodes, i)).clone(),
                caps: rule.caps.clone(),
            });
        }
    }

    let packet_filter =
        PacketFilter::build(sources.iter().map(|(proto, ports, src)| FilterEntry {
            proto: *proto,
            ports: *ports,
            src,
        }));
    seen.remove(slot);
    let mut visible_peers: Vec<NodeId> = seen
        .iter()
        .filter_map(|s| nodes.slot(s))
        .map(|n| n.id)
        .collect();
    visible_peers.sort_unstable();
    CompiledNode {
        node: node.id,
        visible_peers,
        packet_filter,
        node_attrs,
        funnel_grants,
        app_grants,
        internet_access,
    }
}

fn push_caps(
    caps: &[crate::model::NetCap],
    ranges: &Arc<AddrRanges>,
    out: &mut Vec<(FilterProto, PortRange, Arc<AddrRanges>)>,
) {
    for cap in caps {
        match cap.proto.protocols() {
            None => out.push((FilterProto::Any, PortRange::ALL, ranges.clone())),
            Some(protos) => {
                for proto in protos {
                    if proto.has_ports() {
                        for ports in &cap.ports {
                            out.push((FilterProto::One(proto), *ports, ranges.clone()));
                        }
                    } else {
                        out.push((FilterProto::One(proto), PortRange::ALL, ranges.clone()));
                    }
                }
            }
        }
    }
}

fn funnel_grants(policy: &Policy, subject: &Subject<'_>, attrs: &[String]) -> Vec<FunnelGrant> {
    if !attrs.iter().any(|a| a == FUNNEL_ATTR) {
        return Vec::new();
    }
    policy
        .funnels
        .iter()
        .filter(|r| r.src.iter().any(|s| policy.matches_src(s, subject)))
        .map(|r| FunnelGrant {
            rule: r.origin.clone(),
            ports: r.ports.clone(),
            max_ttl: r.max_ttl,
            gates: r.gates.clone(),
        })
        .collect()
}

/// The slots of nodes that hold at least one funnel grant.
fn funnel_slots(policy: &Policy, nodes: &NodeSet, cache: &mut Cache) -> Arc<Vec<u32>> {
    if let Some(slots) = &cache.funnel_slots {
        return slots.clone();
    }
    let slots: Vec<u32> = if policy.funnels.is_empty() {
        Vec::new()
    } else {
        nodes
            .all_slots()
            .filter(|s| {
                nodes.slot(*s).is_some_and(|n| {
                    let subject = Subject::of_node(n);
                    let attrs: Vec<String> = policy
                        .node_attrs
                        .iter()
                        .filter(|r| r.target.iter().any(|t| policy.matches_src(t, &subject)))
                        .flat_map(|r| r.attrs.iter().cloned())
                        .collect();
                    !funnel_grants(policy, &subject, &attrs).is_empty()
                })
            })
            .collect()
    };
    let slots = Arc::new(slots);
    cache.funnel_slots = Some(slots.clone());
    slots
}

/// Expands source selectors into node slots and allowed address ranges.
fn expand_src(policy: &Policy, nodes: &NodeSet, selectors: &[Selector]) -> Expansion {
    // Nodes named by identity contribute all their addresses; prefixes contribute
    // themselves (as in Tailscale, an IP selector allows that IP only), and the nodes
    // inside them only become visible peers.
    let mut slots = Vec::new();
    let mut by_prefix = Vec::new();
    let mut prefixes: Vec<IpNet> = Vec::new();
    for selector in selectors {
        match selector {
            Selector::Any => {
                prefixes.extend(
                    ["0.0.0.0/0", "::/0"]
                        .iter()
                        .filter_map(|p| p.parse::<IpNet>().ok()),
                );
                by_prefix.extend(nodes.all_slots());
            }
            Selector::Host { prefix, .. } | Selector::Prefix(prefix) => {
                prefixes.push(*prefix);
                nodes.in_prefix(prefix, |s| by_prefix.push(s));
            }
            other => expand_node_selector(policy, nodes, other, &mut slots),
        }
    }
    let addresses = AddrRanges::from_addresses(
        slots
            .iter()
            .filter_map(|s| nodes.slot(*s))
            .flat_map(|n| n.addresses.iter().copied()),
    );
    let ranges = if prefixes.is_empty() {
        addresses
    } else {
        AddrRanges::union([&AddrRanges::from_prefixes(&prefixes), &addresses])
    };
    slots.extend(by_prefix);
    slots.sort_unstable();
    slots.dedup();
    Expansion {
        slots,
        ranges: Arc::new(ranges),
    }
}

/// Expands destination selectors into node slots. `autogroup:self` needs the source node
/// (`from`); `autogroup:internet` names no node.
fn expand_dst(
    policy: &Policy,
    nodes: &NodeSet,
    selectors: &[Selector],
    from: Option<&NodeView>,
    out: &mut Vec<u32>,
) {
    for selector in selectors {
        match selector {
            Selector::Any => out.extend(nodes.all_slots()),
            Selector::Host { prefix, .. } | Selector::Prefix(prefix) => {
                nodes.in_prefix(prefix, |s| out.push(s));
            }
            Selector::AutogroupSelf => {
                if let Some(from) = from.filter(|n| !n.is_tagged()) {
                    out.extend(nodes.by_user.get(&from.user).into_iter().flatten());
                }
            }
            other => expand_node_selector(policy, nodes, other, out),
        }
    }
    out.sort_unstable();
    out.dedup();
}

/// Users, groups, tags and the member/tagged autogroups, by the node set's indexes.
fn expand_node_selector(policy: &Policy, nodes: &NodeSet, selector: &Selector, out: &mut Vec<u32>) {
    match selector {
        Selector::User(login) => out.extend(nodes.by_user.get(login).into_iter().flatten()),
        Selector::Tag(tag) => out.extend(nodes.by_tag.get(tag).into_iter().flatten()),
        Selector::AutogroupMember => out.extend(&nodes.untagged),
        Selector::AutogroupTagged => out.extend(&nodes.tagged),
        Selector::Group(name) => {
            let file_members = policy.groups.get(name).into_iter().flatten();
            let candidates = file_members
                .flat_map(|login| nodes.by_user.get(login).into_iter().flatten())
                .chain(nodes.by_idp_group.get(name).into_iter().flatten());
            for slot in candidates {
                if nodes
                    .slot(*slot)
                    .is_some_and(|n| policy.in_group(name, &Subject::of_node(n)))
                {
                    out.push(*slot);
                }
            }
        }
        Selector::Any
        | Selector::Host { .. }
        | Selector::Prefix(_)
        | Selector::AutogroupSelf
        | Selector::AutogroupInternet
        | Selector::AutogroupAdmin => {}
    }
}

// ----- the rule index -----

/// Rules by what one side (src or dst) of them names.
#[derive(Debug, Default, PartialEq)]
struct SideIndex {
    any: Vec<u32>,
    member: Vec<u32>,
    tagged: Vec<u32>,
    by_user: HashMap<String, Vec<u32>>,
    by_group: HashMap<String, Vec<u32>>,
    by_tag: HashMap<String, Vec<u32>>,
    prefixes: Vec<(IpNet, u32)>,
    /// Rules with `autogroup:self` on this side (dst only).
    self_: Vec<u32>,
}

/// Built once per policy, at parse time.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RuleIndex {
    src: SideIndex,
    dst: SideIndex,
    /// Rule to its class of identical `src` lists, and each class's list.
    src_class: Vec<usize>,
    src_lists: Vec<Vec<Selector>>,
    /// The same for `dst` lists.
    dst_class: Vec<usize>,
    dst_lists: Vec<Vec<Selector>>,
}

impl RuleIndex {
    pub(crate) fn build(policy: &Policy) -> Self {
        let mut src = SideIndex::default();
        let mut dst = SideIndex::default();
        let mut src_classes: HashMap<&[Selector], usize> = HashMap::new();
        let mut dst_classes: HashMap<&[Selector], usize> = HashMap::new();
        let mut src_class = Vec::new();
        let mut dst_class = Vec::new();
        let mut src_lists = Vec::new();
        let mut dst_lists = Vec::new();
        for (i, rule) in policy.net_rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            for s in &rule.src {
                src.add(s, i);
            }
            for d in &rule.dst {
                dst.add(d, i);
            }
            src_class.push(*src_classes.entry(&rule.src[..]).or_insert_with(|| {
                src_lists.push(rule.src.clone());
                src_lists.len() - 1
            }));
            dst_class.push(*dst_classes.entry(&rule.dst[..]).or_insert_with(|| {
                dst_lists.push(rule.dst.clone());
                dst_lists.len() - 1
            }));
        }
        RuleIndex {
            src,
            dst,
            src_class,
            src_lists,
            dst_class,
            dst_lists,
        }
    }
}

impl SideIndex {
    fn add(&mut self, selector: &Selector, rule: u32) {
        match selector {
            Selector::Any => self.any.push(rule),
            Selector::User(u) => self.by_user.entry(u.clone()).or_default().push(rule),
            Selector::Group(g) => self.by_group.entry(g.clone()).or_default().push(rule),
            Selector::Tag(t) => self.by_tag.entry(t.clone()).or_default().push(rule),
            Selector::Host { prefix, .. } | Selector::Prefix(prefix) => {
                self.prefixes.push((*prefix, rule));
            }
            Selector::AutogroupMember => self.member.push(rule),
            Selector::AutogroupTagged => self.tagged.push(rule),
            Selector::AutogroupSelf => self.self_.push(rule),
            Selector::AutogroupInternet | Selector::AutogroupAdmin => {}
        }
    }

    /// The rules (ids, sorted, once each) where a selector on this side other than
    /// `autogroup:self` matches the subject.
    fn candidates(&self, policy: &Policy, subject: &Subject<'_>) -> Vec<u32> {
        let mut out: Vec<u32> = self.any.clone();
        if subject.tags.is_empty() {
            if let Some(user) = subject.user {
                out.extend(&self.member);
                out.extend(self.by_user.get(user).into_iter().flatten());
                let file_groups = policy.user_groups.get(user).into_iter().flatten();
                let idp_groups = subject.idp_groups.into_iter().flatten();
                for group in file_groups.chain(idp_groups) {
                    if let Some(rules) = self.by_group.get(group)
                        && policy.in_group(group, subject)
                    {
                        out.extend(rules);
                    }
                }
            }
        } else {
            out.extend(&self.tagged);
            for tag in subject.tags {
                out.extend(self.by_tag.get(tag).into_iter().flatten());
            }
        }
        for (prefix, rule) in &self.prefixes {
            if subject.addresses.iter().any(|ip| prefix.contains(ip)) {
                out.push(*rule);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A set of node slots as a bitset (for deduplicating visible peers quickly).
struct SlotSet {
    words: Vec<u64>,
}

impl SlotSet {
    fn new(capacity: usize) -> Self {
        SlotSet {
            words: vec![0; capacity.div_ceil(64)],
        }
    }

    fn extend(&mut self, slots: &[u32]) {
        for s in slots {
            if let Some(w) = self.words.get_mut((*s / 64) as usize) {
                *w |= 1 << (s % 64);
            }
        }
    }

    fn remove(&mut self, slot: u32) {
        if let Some(w) = self.words.get_mut((slot / 64) as usize) {
            *w &= !(1 << (slot % 64));
        }
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, w)| {
            let base = u32::try_from(i * 64).unwrap_or(u32::MAX);
            (0..64u32)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| base + b)
        })
    }
}

//! Compilation against real node sets: peers, packet filters, attributes, funnels, IdP
//! groups, incremental recompilation, and a property test of the compiled packet filter and
//! peer lists against a simple reference evaluator written here from the policy's rules.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)] // test helpers may panic

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use postern_acl::{
    IpProto, NodeId, NodeSet, NodeView, Policy, PolicyCompiler, PortRange, ProtoMatch, Selector,
};
use proptest::prelude::*;

fn node(id: u64, user: &str, tags: &[&str]) -> NodeView {
    NodeView {
        id: NodeId(id),
        addresses: vec![
            format!("100.64.0.{id}").parse().unwrap(),
            format!("fd7a::{id}").parse().unwrap(),
        ],
        user: user.to_string(),
        idp_groups: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        is_ingress: false,
    }
}

fn ip(id: u64) -> IpAddr {
    format!("100.64.0.{id}").parse().unwrap()
}

const POLICY: &str = r#"{
  "groups": {"group:eng": ["alice@x.com"], "group:contractors": ["eve@y.com"]},
  "tagOwners": {"tag:web": ["group:eng"], "tag:db": [], "tag:ci": []},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"]},
    {"action": "accept", "src": ["tag:web"], "proto": "tcp", "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
  ],
  "grants": [
    {"src": ["group:eng"], "dst": ["tag:web"], "app": {"x.com/cap/deploy": [{"env": "prod"}]}},
  ],
  "nodeAttrs": [{"target": ["group:contractors", "tag:ci"], "attr": ["funnel", "x"]}],
  "funnels": [
    {"src": ["group:contractors"], "ports": ["3000-3999"], "maxTTL": "8h", "requireLogin": ["group:eng"]},
    {"src": ["tag:ci"], "ports": ["8080"], "requireWebhookSignature": true},
  ],
}"#;

fn fleet() -> Vec<NodeView> {
    let mut ingress = node(9, "admin@x.com", &["ci"]);
    ingress.tags.clear();
    ingress.is_ingress = true;
    vec![
        node(1, "alice@x.com", &[]),
        node(2, "alice@x.com", &[]),
        node(3, "alice@x.com", &["web"]), // tagged: no longer alice's
        node(4, "bob@x.com", &["db"]),
        node(5, "eve@y.com", &[]),
        node(6, "bob@x.com", &["ci"]),
        ingress,
    ]
}

#[test]
fn compiles_peers_filters_attrs_and_funnels() {
    let policy = Arc::new(Policy::parse("p.hujson", POLICY).unwrap());
    let compiler = PolicyCompiler::new(policy, fleet().into_iter().collect());
    let web = compiler.compiled(NodeId(3)).unwrap();
    // alice's two laptops reach the web node; it reaches the db.
    assert_eq!(web.visible_peers, vec![NodeId(1), NodeId(2), NodeId(4)]);
    assert!(web.packet_filter.allows(ip(1), 443, IpProto::TCP));
    assert!(web.packet_filter.allows(ip(2), 443, IpProto::UDP));
    assert!(!web.packet_filter.allows(ip(1), 22, IpProto::TCP));
    assert!(!web.packet_filter.allows(ip(5), 443, IpProto::TCP));
    assert_eq!(web.app_grants.len(), 1);
    assert!(web.app_grants[0].src.contains(ip(1)));
    assert!(!web.app_grants[0].src.contains(ip(5)));

    // autogroup:self: alice's untagged devices reach each other, not her tagged one.
    let laptop = compiler.compiled(NodeId(1)).unwrap();
    assert_eq!(laptop.visible_peers, vec![NodeId(2), NodeId(3)]);
    assert!(laptop.packet_filter.allows(ip(2), 22, IpProto::TCP));
    assert!(!laptop.packet_filter.allows(ip(3), 22, IpProto::TCP));

    let db = compiler.compiled(NodeId(4)).unwrap();
    assert!(db.packet_filter.allows(ip(3), 5432, IpProto::TCP));
    assert!(!db.packet_filter.allows(ip(3), 5432, IpProto::UDP));

    // Funnels: eve's node has the attribute and a grant; the ingress may reach its ports.
    let eve = compiler.compiled(NodeId(5)).unwrap();
    assert_eq!(eve.node_attrs, vec!["funnel".to_string(), "x".to_string()]);
    let grant = eve.funnel_grant_for(3001).unwrap();
    assert_eq!(
        grant.max_ttl,
        Some(std::time::Duration::from_secs(8 * 3600))
    );
    assert_eq!(
        grant.gates.require_login,
        vec![Selector::Group("eng".into())]
    );
    assert!(!grant.gates.allow_ungated);
    assert!(eve.funnel_grant_for(4000).is_none());
    assert!(eve.visible_peers.contains(&NodeId(9)));
    assert!(eve.packet_filter.allows(ip(9), 3001, IpProto::TCP));
    assert!(!eve.packet_filter.allows(ip(9), 4000, IpProto::TCP));
    let ci = compiler.compiled(NodeId(6)).unwrap();
    assert!(
        ci.funnel_grant_for(8080)
            .unwrap()
            .gates
            .require_webhook_signature
    );
    let ingress = compiler.compiled(NodeId(9)).unwrap();
    assert_eq!(ingress.visible_peers, vec![NodeId(5), NodeId(6)]);
    // alice has no funnel attribute: no grants.
    assert!(laptop.funnel_grants.is_empty());
}

#[test]
fn compile_for_matches_the_incremental_compiler() {
    let policy = Arc::new(Policy::parse("p.hujson", POLICY).unwrap());
    let nodes: NodeSet = fleet().into_iter().collect();
    let compiler = PolicyCompiler::new(policy.clone(), nodes.clone());
    for n in fleet() {
        assert_eq!(
            &policy.compile_for(&n, &nodes),
            compiler.compiled(n.id).unwrap()
        );
    }
}

#[test]
fn incremental_changes_touch_only_affected_nodes_and_agree_with_a_full_compile() {
    let policy = Arc::new(Policy::parse("p.hujson", POLICY).unwrap());
    let mut compiler = PolicyCompiler::new(policy.clone(), fleet().into_iter().collect());
    // bob's laptop joins: only it changes (it sees nobody; nobody sees it... except
    // autogroup:self has no other untagged bob node).
    let changed = compiler.upsert_node(node(7, "bob@x.com", &[]));
    assert_eq!(changed, vec![NodeId(7)]);
    // alice's third laptop joins: her other untagged laptops and the web node change.
    let changed = compiler.upsert_node(node(8, "alice@x.com", &[]));
    assert_eq!(changed, vec![NodeId(1), NodeId(2), NodeId(3), NodeId(8)]);
    // the web node is retagged as db: alice's laptops, old db peer and itself change.
    let changed = compiler.upsert_node(node(3, "alice@x.com", &["db"]));
    assert!(changed.contains(&NodeId(3)) && changed.contains(&NodeId(4)));
    assert!(!changed.contains(&NodeId(5)));
    // an untouched node's view equals what a full compile computes.
    let nodes = compiler.nodes().clone();
    let full = PolicyCompiler::new(policy.clone(), nodes.clone());
    for n in nodes.iter() {
        assert_eq!(compiler.compiled(n.id), full.compiled(n.id), "{}", n.id);
    }
    // leaving: alice's laptops drop node 8.
    let changed = compiler.remove_node(NodeId(8));
    assert_eq!(changed, vec![NodeId(1), NodeId(2)]);
    assert!(compiler.compiled(NodeId(8)).is_none());
}

#[test]
fn idp_groups_fill_merge_or_yield_by_mode() {
    let text = |mode: &str| {
        format!(
            r#"{{
          "idpGroups": "{mode}",
          "groups": {{"group:eng": ["alice@x.com"], "group:ops": []}},
          "tagOwners": {{"tag:web": []}},
          "acls": [
            {{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"]}},
            {{"action": "accept", "src": ["group:ops"], "dst": ["tag:web:22"]}},
          ],
        }}"#
        )
    };
    let mut alice = node(1, "alice@x.com", &[]);
    alice.idp_groups = Some(vec!["ops".into()]); // the IdP says ops, not eng
    let mut bob = node(2, "bob@x.com", &[]);
    bob.idp_groups = Some(vec!["eng".into()]); // the IdP says eng
    let carol = node(3, "carol@x.com", &[]); // no claim
    let web = node(4, "root@x.com", &["web"]);
    let nodes: NodeSet = [alice, bob, carol, web.clone()].into_iter().collect();
    let allows = |mode: &str, who: u64, port: u16| {
        let policy = Policy::parse("p.hujson", &text(mode)).unwrap();
        policy
            .compile_for(&web, &nodes)
            .packet_filter
            .allows(ip(who), port, IpProto::TCP)
    };
    // merge: file or claim.
    assert!(allows("merge", 1, 443) && allows("merge", 2, 443) && allows("merge", 1, 22));
    // file: eng is listed in the file, so the claim does not count; ops is `[]`: IdP fills it.
    assert!(allows("file", 1, 443) && !allows("file", 2, 443) && allows("file", 1, 22));
    // idp: a claim decides; no claim falls back to the file.
    assert!(!allows("idp", 1, 443) && allows("idp", 2, 443) && allows("idp", 1, 22));
    assert!(!allows("idp", 3, 443));
}

// ----- property test against a reference evaluator -----

const USERS: &[&str] = &["a@x", "b@x", "c@x"];
const TAGS: &[&str] = &["t1", "t2"];

fn arb_selector(dst: bool) -> impl Strategy<Value = String> {
    let mut choices: Vec<String> = vec![
        "*".into(),
        "autogroup:member".into(),
        "autogroup:tagged".into(),
    ];
    choices.extend(USERS.iter().map(|u| u.to_string()));
    choices.extend(TAGS.iter().map(|t| format!("tag:{t}")));
    choices.extend(
        [
            "group:g1",
            "group:g2",
            "100.64.0.0/30",
            "100.64.0.5",
            "fd7a::2",
        ]
        .map(String::from),
    );
    if dst {
        choices.push("autogroup:self".into());
    }
    proptest::sample::select(choices)
}

fn arb_rule() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(arb_selector(false), 1..3),
        proptest::collection::vec(
            (
                arb_selector(true),
                prop_oneof![Just("*"), Just("22"), Just("80-90"), Just("22,443")],
            ),
            1..3,
        ),
        prop_oneof![
            Just(None),
            Just(Some("tcp")),
            Just(Some("udp")),
            Just(Some("icmp"))
        ],
        any::<bool>(),
    )
        .prop_map(|(src, dst, proto, as_grant)| {
            let src = serde_json_list(&src);
            if as_grant {
                let dsts: Vec<String> = dst.iter().map(|(s, _)| s.clone()).collect();
                let ip = match proto {
                    Some(p) if p != "icmp" => format!("{p}:{}", dst[0].1),
                    Some(p) => format!("{p}:*"),
                    None => dst[0].1.to_string(),
                };
                format!(
                    r#"{{"src": {src}, "dst": {}, "ip": ["{ip}"]}}"#,
                    serde_json_list(&dsts)
                )
            } else {
                let dsts: Vec<String> = dst
                    .iter()
                    .map(|(s, p)| {
                        let p = if proto == Some("icmp") { "*" } else { p };
                        format!("{s}:{p}")
                    })
                    .collect();
                let proto = proto.map_or(String::new(), |p| format!(r#", "proto": "{p}""#));
                format!(
                    r#"{{"action": "accept", "src": {src}, "dst": {}{proto}}}"#,
                    serde_json_list(&dsts)
                )
            }
        })
}

fn serde_json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn arb_nodes() -> impl Strategy<Value = Vec<NodeView>> {
    proptest::collection::vec(
        (
            0..USERS.len(),
            proptest::sample::subsequence(TAGS.to_vec(), 0..=2),
            proptest::option::of(proptest::sample::subsequence(vec!["g1", "g2"], 0..=2)),
        ),
        1..7,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (user, tags, idp))| {
                let mut n = node(i as u64 + 1, USERS[user], &tags);
                n.idp_groups = idp.map(|g| g.into_iter().map(String::from).collect());
                n
            })
            .collect()
    })
}

/// The reference: does some network rule let `src` reach `dst` on `port`/`proto`? Written
/// directly from the rules' meaning, one node pair at a time.
fn reference(policy: &Policy, src: &NodeView, dst: &NodeView, port: u16, proto: IpProto) -> bool {
    // A packet comes from one address: prefixes in src match that address only.
    let mut src_one = src.clone();
    src_one.addresses.truncate(1);
    policy.net_rules().iter().any(|rule| {
        let src_ok = rule.src.iter().any(|s| match s {
            Selector::Prefix(_) | Selector::Host { .. } => ref_match(policy, s, &src_one, None),
            _ => ref_match(policy, s, src, None),
        });
        let dst_ok = rule
            .dst
            .iter()
            .any(|s| ref_match(policy, s, dst, Some(src)));
        let cap_ok = rule.caps.iter().any(|c| {
            let proto_ok = match &c.proto {
                ProtoMatch::All => true,
                ProtoMatch::One(p) => *p == proto,
                _ => [IpProto::TCP, IpProto::UDP, IpProto::ICMP, IpProto::ICMPV6].contains(&proto),
            };
            let port_ok = !matches!(proto, IpProto::TCP | IpProto::UDP)
                || c.ports
                    .iter()
                    .any(|r: &PortRange| r.first <= port && port <= r.last);
            proto_ok && port_ok
        });
        src_ok && dst_ok && cap_ok
    })
}

fn ref_match(policy: &Policy, sel: &Selector, n: &NodeView, from: Option<&NodeView>) -> bool {
    let owned = n.tags.is_empty();
    match sel {
        Selector::Any => true,
        Selector::User(u) => owned && &n.user == u,
        Selector::Group(g) => {
            // merge mode: file list or IdP claim.
            owned
                && (policy.groups().get(g).is_some_and(|m| m.contains(&n.user))
                    || n.idp_groups.iter().flatten().any(|x| x == g))
        }
        Selector::Tag(t) => n.tags.contains(t),
        Selector::Prefix(p) | Selector::Host { prefix: p, .. } => {
            n.addresses.iter().any(|a| p.contains(a))
        }
        Selector::AutogroupMember => owned,
        Selector::AutogroupTagged => !owned,
        Selector::AutogroupSelf => {
            from.is_some_and(|f| owned && f.tags.is_empty() && f.user == n.user)
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn compiled_filters_and_peers_agree_with_the_reference(
        rules in proptest::collection::vec(arb_rule(), 0..6),
        nodes in arb_nodes(),
        extra in arb_nodes(),
    ) {
        let (acls, grants): (Vec<_>, Vec<_>) = rules.iter().cloned().partition(|r| r.contains("action"));
        let text = format!(
            r#"{{"groups": {{"group:g1": ["a@x"], "group:g2": []}},
                "tagOwners": {{"tag:t1": [], "tag:t2": []}},
                "acls": [{}], "grants": [{}]}}"#,
            acls.join(","), grants.join(",")
        );
        let policy = Arc::new(Policy::parse("p.hujson", &text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?);
        let mut compiler = PolicyCompiler::new(policy.clone(), nodes.iter().cloned().collect());
        // Apply some joins/changes incrementally; the result must equal a full compile.
        for n in extra.iter().take(3) {
            let mut n = n.clone();
            n.id = NodeId(n.id.0 % 9 + 1); // sometimes a change, sometimes a join
            n.addresses = vec![format!("100.64.0.{}", n.id.0).parse().unwrap(), format!("fd7a::{}", n.id.0).parse().unwrap()];
            compiler.upsert_node(n);
        }
        let all: Vec<NodeView> = compiler.nodes().iter().cloned().collect();
        let full = PolicyCompiler::new(policy.clone(), all.iter().cloned().collect());
        for d in &all {
            let compiled = compiler.compiled(d.id).unwrap();
            prop_assert_eq!(Some(compiled), full.compiled(d.id));
            let mut expected_peers = BTreeSet::new();
            for s in &all {
                for port in [22u16, 80, 85, 91, 443] {
                    for proto in [IpProto::TCP, IpProto::UDP, IpProto::ICMP, IpProto(47)] {
                        let want = reference(&policy, s, d, port, proto);
                        if s.id != d.id {
                            // The node's own address may be allowed through a prefix rule;
                            // compare peers only.
                            let got = compiled.packet_filter.allows(s.addresses[0], port, proto);
                            prop_assert_eq!(got, want, "{} -> {} port {} proto {}\n{}", s.id, d.id, port, proto, text);
                        }
                    }
                }
                let reaches = |a: &NodeView, b: &NodeView| {
                    policy.net_rules().iter().any(|r| {
                        !r.caps.is_empty()
                            && r.src.iter().any(|s| ref_match(&policy, s, a, None))
                            && r.dst.iter().any(|x| ref_match(&policy, x, b, Some(a)))
                    })
                };
                if s.id != d.id && (reaches(s, d) || reaches(d, s)) {
                    expected_peers.insert(s.id);
                }
            }
            let got: BTreeSet<NodeId> = compiled.visible_peers.iter().copied().collect();
            prop_assert_eq!(got, expected_peers, "peers of {}\n{}", d.id, text);
        }
    }
}

#[test]
fn tag_owners_decide_who_may_apply_a_tag() {
    let policy = Policy::parse(
        "p.hujson",
        r#"{
          "groups": {"group:eng": ["alice@x.com"]},
          "tagOwners": {"tag:web": ["group:eng"], "tag:db": ["autogroup:admin"], "tag:mon": ["tag:web"]},
        }"#,
    )
    .unwrap();
    let alice = node(1, "alice@x.com", &[]);
    let bob = node(2, "bob@x.com", &[]);
    let web = node(3, "bob@x.com", &["web"]);
    let s = postern_acl::Subject::of_node;
    assert!(policy.may_apply_tag("web", &s(&alice), false));
    assert!(!policy.may_apply_tag("web", &s(&bob), false));
    assert!(!policy.may_apply_tag("db", &s(&alice), false));
    assert!(policy.may_apply_tag("db", &s(&bob), true));
    assert!(policy.may_apply_tag("mon", &s(&web), false));
    assert!(!policy.may_apply_tag("nope", &s(&alice), true));
}

#[test]
fn an_empty_policy_denies_everything_and_shows_no_peers() {
    let policy = Arc::new(Policy::parse("p.hujson", "{}").unwrap());
    let compiler = PolicyCompiler::new(policy, fleet().into_iter().collect());
    for n in fleet() {
        let c = compiler.compiled(n.id).unwrap();
        assert!(c.visible_peers.is_empty());
        assert!(c.packet_filter.is_deny_all());
    }
}

#[test]
fn an_ingress_joining_or_leaving_updates_the_funnelling_nodes() {
    let policy = Arc::new(Policy::parse("p.hujson", POLICY).unwrap());
    let without_ingress: Vec<NodeView> = fleet().into_iter().filter(|n| !n.is_ingress).collect();
    let mut compiler = PolicyCompiler::new(policy.clone(), without_ingress.into_iter().collect());
    assert!(
        !compiler
            .compiled(NodeId(5))
            .unwrap()
            .packet_filter
            .allows(ip(9), 3001, IpProto::TCP)
    );
    let ingress = fleet().into_iter().find(|n| n.is_ingress).unwrap();
    let changed = compiler.upsert_node(ingress);
    assert_eq!(changed, vec![NodeId(5), NodeId(6), NodeId(9)]);
    assert!(
        compiler
            .compiled(NodeId(5))
            .unwrap()
            .packet_filter
            .allows(ip(9), 3001, IpProto::TCP)
    );
    let full = PolicyCompiler::new(policy, compiler.nodes().clone());
    for n in compiler.nodes().iter() {
        assert_eq!(compiler.compiled(n.id), full.compiled(n.id), "{}", n.id);
    }
    assert_eq!(compiler.remove_node(NodeId(9)), vec![NodeId(5), NodeId(6)]);
}

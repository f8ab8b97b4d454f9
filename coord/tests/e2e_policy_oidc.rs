//! Issue 5, item 8, end to end with the real parts: the lab's OpenID Provider, the real
//! `postern-coord serve` binary, and node control clients (the agent's own) that follow
//! their netmaps.
//!
//! Alice (IdP groups `eng`, `admins`) and Bob (`contractors`) log their nodes in through
//! the IdP in a browser; a third node joins with an auth key tagged `tag:db`. The policy
//! lets `group:eng` (filled from the IdP's claim) reach `tag:db:5432`. Then:
//! - every node's netmap holds exactly the peers and packet filter the policy says;
//! - an edit of the policy file on disk reaches every node (the time it took is printed);
//! - an invalid edit (a parse error, then a failing policy test) is refused and audited,
//!   and no netmap changes;
//! - the coord is killed (SIGKILL) and started again: the registry is intact, and the nodes
//!   resume their streams with the same ids and addresses, without logging in again.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

mod oidc_lab;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use oidc_lab::{NodeIdentity, OidcLab, WAIT, fqdn, peer_names};
use postern_node::control::{ControlClient, RegistrationState};
use postern_proto::netmap::Netmap;

/// Engineers may reach the database on 5432; nothing else is allowed.
const POLICY: &str = r#"{
  // group:eng and group:contractors are filled from the IdP's groups claim.
  "groups": {"group:eng": [], "group:contractors": []},
  "tagOwners": {"tag:db": []},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "proto": "tcp", "dst": ["tag:db:5432"]},
  ],
}
"#;

/// An edit that changes every node's netmap: contractors may reach the database too, and
/// the database may scrape the engineers' metrics port.
const EDITED: &str = r#"{
  "groups": {"group:eng": [], "group:contractors": []},
  "tagOwners": {"tag:db": []},
  "acls": [
    {"action": "accept", "src": ["group:eng", "group:contractors"], "proto": "tcp", "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["tag:db"], "proto": "tcp", "dst": ["group:eng:9100"]},
  ],
}
"#;

/// Does not parse: a misspelt key on line 5.
const BROKEN: &str = r#"{
  "groups": {"group:eng": [], "group:contractors": []},
  "tagOwners": {"tag:db": []},
  "acls": [
    {"action": "accept", "src": ["*"], "dts": ["*:*"]},
  ],
}
"#;

/// Parses, but its own test fails: it would open everything to everyone.
const FAILS_ITS_TEST: &str = r#"{
  "groups": {"group:eng": [], "group:contractors": []},
  "tagOwners": {"tag:db": []},
  "acls": [
    {"action": "accept", "src": ["*"], "dst": ["*:*"]},
  ],
  "tests": [
    {"src": "bob@example.com", "deny": ["tag:db:5432"]},
  ],
}
"#;

/// The (source prefix, ports) pairs a node's packet filter admits, and whether every
/// destination is one of the node's own addresses.
fn admitted(map: &Netmap) -> BTreeSet<(String, String)> {
    let own = map.self_node.addresses.to_vec();
    let mut pairs = BTreeSet::new();
    for rule in &map.packet_filter {
        for destination in &rule.destinations {
            assert!(
                own.iter().any(|addr| destination.prefix.contains(addr)),
                "{} admits traffic to {} which is not its own: {map:#?}",
                map.self_node.name,
                destination.prefix
            );
            for source in &rule.sources {
                pairs.insert((source.to_string(), destination.ports.to_string()));
            }
        }
    }
    pairs
}

/// The pairs admitting `addresses` on `ports`.
fn from(addresses: &[IpAddr], ports: &str) -> BTreeSet<(String, String)> {
    addresses
        .iter()
        .map(|addr| {
            let bits = if addr.is_ipv4() { 32 } else { 128 };
            (format!("{addr}/{bits}"), ports.to_owned())
        })
        .collect()
}

/// Peer names and, for each, its addresses: what a node can see of the others.
fn peers(map: &Netmap) -> Vec<(String, Vec<IpAddr>)> {
    let mut peers: Vec<_> = map
        .peers
        .iter()
        .map(|p| {
            let mut addresses = p.addresses.clone();
            addresses.sort();
            (p.name.clone(), addresses)
        })
        .collect();
    peers.sort();
    peers
}

fn sorted(mut addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    addresses.sort();
    addresses
}

/// The three nodes and what the test knows about them.
struct Nodes {
    alice: ControlClient,
    bob: ControlClient,
    db: ControlClient,
    alice_ips: Vec<IpAddr>,
    bob_ips: Vec<IpAddr>,
    db_ips: Vec<IpAddr>,
}

impl Nodes {
    /// Waits until each node's netmap satisfies its predicate; returns the maps and how long
    /// after `since` the last one got there.
    async fn converge(
        &self,
        lab: &OidcLab,
        what: &str,
        alice: impl Fn(&Netmap) -> bool,
        bob: impl Fn(&Netmap) -> bool,
        db: impl Fn(&Netmap) -> bool,
        since: Instant,
    ) -> ([Netmap; 3], Duration) {
        let whats = [
            format!("alice's netmap {what}"),
            format!("bob's netmap {what}"),
            format!("db's netmap {what}"),
        ];
        let (a, b, d) = tokio::join!(
            lab.netmap(&self.alice, &whats[0], alice),
            lab.netmap(&self.bob, &whats[1], bob),
            lab.netmap(&self.db, &whats[2], db),
        );
        ([a, b, d], since.elapsed())
    }

    /// The initial policy in force: alice sees db, bob sees nobody, db admits alice on
    /// 5432 only.
    async fn initial_policy(&self, lab: &OidcLab, what: &str, since: Instant) -> Duration {
        let db_peer = vec![(fqdn("db"), sorted(self.db_ips.clone()))];
        let alice_peer = vec![(fqdn("alice-laptop"), sorted(self.alice_ips.clone()))];
        let alice_admitted = from(&self.alice_ips, "5432");
        let ([a, b, d], took) = self
            .converge(
                lab,
                what,
                |m| peers(m) == db_peer && m.packet_filter.is_empty(),
                |m| m.peers.is_empty() && m.packet_filter.is_empty(),
                |m| peers(m) == alice_peer && admitted(m) == alice_admitted,
                since,
            )
            .await;
        assert!(
            a.packet_filter.is_empty(),
            "nothing may reach alice: {a:#?}"
        );
        assert!(b.packet_filter.is_empty(), "nothing may reach bob: {b:#?}");
        // db's filter: alice's addresses on 5432 and nothing else (no bob, no other port).
        assert_eq!(admitted(&d), alice_admitted, "{d:#?}");
        for rule in &d.packet_filter {
            assert!(
                rule.sources
                    .iter()
                    .all(|s| !self.bob_ips.iter().any(|ip| s.contains(ip))),
                "bob must not be admitted: {d:#?}"
            );
        }
        took
    }

    /// The edited policy in force: bob sees db too, db admits both on 5432, alice admits
    /// db on 9100.
    async fn edited_policy(&self, lab: &OidcLab, since: Instant) -> Duration {
        let db_peer = vec![(fqdn("db"), sorted(self.db_ips.clone()))];
        let mut both = vec![
            (fqdn("alice-laptop"), sorted(self.alice_ips.clone())),
            (fqdn("bob-desktop"), sorted(self.bob_ips.clone())),
        ];
        both.sort();
        let db_admitted: BTreeSet<_> = from(&self.alice_ips, "5432")
            .union(&from(&self.bob_ips, "5432"))
            .cloned()
            .collect();
        let alice_admitted = from(&self.db_ips, "9100");
        let (_, took) = self
            .converge(
                lab,
                "after the edit",
                |m| peers(m) == db_peer && admitted(m) == alice_admitted,
                |m| peers(m) == db_peer && m.packet_filter.is_empty(),
                |m| peers(m) == both && admitted(m) == db_admitted,
                since,
            )
            .await;
        took
    }

    fn snapshot(&self) -> [Option<Netmap>; 3] {
        [
            self.alice.netmap().borrow().clone(),
            self.bob.netmap().borrow().clone(),
            self.db.netmap().borrow().clone(),
        ]
    }
}

/// The registry's view of the nodes, without what changes by itself (online, last seen).
fn registry(lab: &OidcLab) -> Vec<serde_json::Value> {
    let mut nodes: Vec<_> = lab
        .admin_json(&["nodes", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let mut n = n.clone();
            let object = n.as_object_mut().unwrap();
            object.retain(|key, _| !matches!(key.as_str(), "status" | "last_seen" | "online"));
            n
        })
        .collect();
    nodes.sort_by_key(|n| n["id"].as_u64());
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_log_in_through_the_idp_and_the_policy_shapes_every_netmap_live_and_across_restarts()
{
    let mut lab = OidcLab::start(POLICY, &[]);

    // Alice and Bob log their nodes in through the IdP.
    let alice_id = NodeIdentity::new("alice-laptop");
    let bob_id = NodeIdentity::new("bob-desktop");
    let db_id = NodeIdentity::new("db");
    let alice = lab.node(&alice_id, None);
    let bob = lab.node(&bob_id, None);
    let (status, page) = lab.browser_login(&alice, "alice@example.com").await;
    assert_eq!(status, 200, "{page}\n{}", lab.logs());
    let (status, page) = lab.browser_login(&bob, "bob@example.com").await;
    assert_eq!(status, 200, "{page}\n{}", lab.logs());
    // The database joins with a tagged auth key.
    let key = lab.auth_key(&["--tags", "tag:db"]);
    let db = lab.node(&db_id, Some(key));

    let alice_map = lab.netmap(&alice, "alice's first netmap", |_| true).await;
    let bob_map = lab.netmap(&bob, "bob's first netmap", |_| true).await;
    let db_map = lab.netmap(&db, "db's first netmap", |_| true).await;
    assert_eq!(alice_map.self_node.user.login, "alice@example.com");
    assert_eq!(alice_map.self_node.user.groups, ["eng", "admins"]);
    assert_eq!(bob_map.self_node.user.login, "bob@example.com");
    assert_eq!(bob_map.self_node.user.groups, ["contractors"]);
    assert_eq!(db_map.self_node.tags, ["tag:db"]);
    let nodes = Nodes {
        alice_ips: alice_map.self_node.addresses.to_vec(),
        bob_ips: bob_map.self_node.addresses.to_vec(),
        db_ips: db_map.self_node.addresses.to_vec(),
        alice,
        bob,
        db,
    };
    nodes
        .initial_policy(&lab, "under the first policy", Instant::now())
        .await;
    let registered = lab.audit_records("node.register");
    assert_eq!(registered.len(), 3, "{registered:?}");

    // An edit on disk reaches every node.
    let started = Instant::now();
    lab.write_policy(EDITED);
    let took = nodes.edited_policy(&lab, started).await;
    eprintln!(
        "policy edit on disk reached all 3 nodes in {} ms (policy file polled every 2 s)",
        took.as_millis()
    );
    let reload = lab.wait_audit("policy.reload", 1).await;
    assert_eq!(reload.last().unwrap()["actor"], "coord");

    // Invalid edits are refused and audited; nothing changes.
    let before = nodes.snapshot();
    let frames_before = lab.metric("postern_coord_netmap_frames_sent_total");
    lab.write_policy(BROKEN);
    let failed = lab.wait_audit("policy.reload.failed", 1).await;
    let errors = failed.last().unwrap()["details"]["errors"].to_string();
    assert!(errors.contains(":5:"), "the error names line 5: {errors}");
    lab.write_policy(FAILS_ITS_TEST);
    let failed = lab.wait_audit("policy.reload.failed", 2).await;
    let errors = failed.last().unwrap()["details"]["errors"].to_string();
    assert!(errors.contains("tag:db:5432"), "the failing test: {errors}");
    // Two more poll intervals: the refused files stay refused.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(nodes.snapshot(), before, "no netmap may change");
    assert_eq!(
        lab.metric("postern_coord_netmap_frames_sent_total"),
        frames_before,
        "no netmap frame was sent"
    );
    assert_eq!(lab.audit_records("policy.reload").len(), 1);
    // Putting the policy in force back on disk changes no netmap either.
    lab.write_policy(EDITED);
    lab.wait_audit("policy.reload", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(nodes.snapshot(), before, "no netmap may change");

    // Kill the coord and start it again: nothing is lost, the nodes resume.
    let registry_before = registry(&lab);
    assert_eq!(registry_before.len(), 3);
    let mut watches = [nodes.alice.netmap(), nodes.bob.netmap(), nodes.db.netmap()];
    for watch in &mut watches {
        watch.borrow_and_update();
    }
    lab.kill_coord();
    lab.start_coord();
    for (watch, name) in watches.iter_mut().zip(["alice", "bob", "db"]) {
        tokio::time::timeout(WAIT, watch.changed())
            .await
            .unwrap_or_else(|_| panic!("{name} got no netmap from the restarted coord"))
            .unwrap();
    }
    assert_eq!(registry(&lab), registry_before, "the registry survived");
    let deadline = Instant::now() + WAIT;
    while lab.metric("postern_coord_connected_nodes") != 3 {
        assert!(Instant::now() < deadline, "{}", lab.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        lab.metric("postern_coord_registrations_total"),
        0,
        "nobody had to register (or log in) again"
    );
    for client in [&nodes.alice, &nodes.bob, &nodes.db] {
        assert!(
            matches!(
                *client.registration().borrow(),
                RegistrationState::Authorized { .. }
            ),
            "{:?}",
            *client.registration().borrow()
        );
    }
    // Same ids, names and addresses: the same netmaps as before the restart (once every
    // node is back online in the others' maps).
    let [a, b, d] = before.clone();
    nodes
        .converge(
            &lab,
            "as before the restart",
            |m| Some(m) == a.as_ref(),
            |m| Some(m) == b.as_ref(),
            |m| Some(m) == d.as_ref(),
            Instant::now(),
        )
        .await;

    // The resumed streams are live: the first policy again reaches every node.
    let started = Instant::now();
    lab.write_policy(POLICY);
    let took = nodes
        .initial_policy(&lab, "after the restart and a second edit", started)
        .await;
    eprintln!(
        "policy edit after the restart reached all 3 nodes in {} ms",
        took.as_millis()
    );
    assert_eq!(
        peer_names(&nodes.alice.netmap().borrow().clone().unwrap()),
        [fqdn("db")]
    );
}

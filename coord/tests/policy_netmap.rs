//! The policy in the netmaps, through the real binary: `postern-coord serve --policy FILE`
//! with node control clients of different users; the file edited live (polled), a broken
//! edit refused while the old policy stays in force, and a reload on SIGHUP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{CoordProcess, client, peer_names, wait_for};
use postern_proto::netmap::{IpProtocol, Netmap};

/// Self only: every user's own devices, like the built-in policy.
const SELF_ONLY: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
  ],
}
"#;

/// Alice may reach Bob's devices on port 22; so they see each other.
const ALICE_TO_BOB_SSH: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["alice@example.com"], "proto": "tcp", "dst": ["bob@example.com:22"]},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["bob@example.com:22"], "deny": ["bob@example.com:80"]},
  ],
}
"#;

/// Broken on line 4: a misspelt key.
const BROKEN: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["*"], "dts": ["*:*"]},
  ],
}
"#;

/// Whether `map`'s filter lets `src` reach port `port` over TCP.
fn filter_allows_tcp(map: &Netmap, src: std::net::IpAddr, port: u16) -> bool {
    map.packet_filter.iter().any(|rule| {
        rule.sources.iter().any(|s| s.contains(&src))
            && (rule.protocols.is_empty() || rule.protocols.contains(&IpProtocol::TCP))
            && rule.destinations.iter().any(|d| d.ports.contains(port))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_policy_file_changes_who_sees_whom_live_and_a_broken_edit_is_refused() {
    let coord = CoordProcess::start(SELF_ONLY, &["--policy-poll-interval", "200ms"]).await;
    let alice_key = coord.auth_key(&["--user", "alice@example.com"]);
    let bob_key = coord.auth_key(&["--user", "bob@example.com"]);
    let carol_key = coord.auth_key(&["--user", "carol@example.com"]);
    let alice = client(&coord.addr, Some(alice_key), "alice-laptop");
    let bob = client(&coord.addr, Some(bob_key), "bob-server");
    let carol = client(&coord.addr, Some(carol_key), "carol-pc");
    let (mut a, mut b, mut c) = (alice.netmap(), bob.netmap(), carol.netmap());

    // Under "self only", nobody sees anybody.
    let a_map = wait_for(&mut a, "alice's netmap", |m| m.peers.is_empty()).await;
    let b_map = wait_for(&mut b, "bob's netmap", |m| m.peers.is_empty()).await;
    let c_map = wait_for(&mut c, "carol's netmap", |m| m.peers.is_empty()).await;
    let alice_ip = std::net::IpAddr::V4(a_map.self_node.addresses.ipv4);
    assert!(!filter_allows_tcp(&b_map, alice_ip, 22));
    // Let every session settle (all three streams open), then count frames.
    coord.wait_metric("postern_coord_connected_nodes 3").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frames_before = coord.metric("postern_coord_netmap_frames_sent_total").await;

    // Edit: alice may reach bob on 22. Both see each other; carol's netmap does not change.
    coord.write_policy(ALICE_TO_BOB_SSH);
    let a_map = wait_for(&mut a, "alice to see bob", |m| {
        peer_names(m) == ["bob-server.example.test"]
    })
    .await;
    let b_map = wait_for(&mut b, "bob to see alice", |m| {
        peer_names(m) == ["alice-laptop.example.test"]
    })
    .await;
    assert!(filter_allows_tcp(&b_map, alice_ip, 22), "{b_map:#?}");
    assert!(!filter_allows_tcp(&b_map, alice_ip, 80));
    let bob_ip = std::net::IpAddr::V4(b_map.self_node.addresses.ipv4);
    assert!(
        !filter_allows_tcp(&a_map, bob_ip, 22),
        "alice accepts nothing from bob"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *c.borrow(),
        Some(c_map.clone()),
        "carol's netmap must not change"
    );
    let frames_after = coord.metric("postern_coord_netmap_frames_sent_total").await;
    assert_eq!(
        frames_after,
        frames_before + 2,
        "only alice and bob get a delta"
    );

    // A broken edit: refused, logged with FILE:LINE:COL, old policy kept.
    coord.write_policy(BROKEN);
    let log = coord.wait_log("policy reload refused").await;
    let expected_position = format!("{}:4:", coord.policy_path.display());
    assert!(log.contains(&expected_position), "{log}");
    assert!(log.contains("did you mean \"dst\""), "{log}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        peer_names(&a.borrow().clone().unwrap()),
        ["bob-server.example.test"]
    );
    assert_eq!(
        peer_names(&b.borrow().clone().unwrap()),
        ["alice-laptop.example.test"]
    );

    // Fixing the file applies it again: back to self only.
    coord.write_policy(SELF_ONLY);
    wait_for(&mut a, "alice to lose bob", |m| m.peers.is_empty()).await;
    wait_for(&mut b, "bob to lose alice", |m| m.peers.is_empty()).await;

    // Each reload, applied or refused, is in the audit log with its errors.
    let audit = coord.admin_json(&["audit"]);
    let reloads: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("policy.reload"))
        .collect();
    let kinds: Vec<_> = reloads
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["policy.reload", "policy.reload.failed", "policy.reload"],
        "{audit:#}"
    );
    let errors = reloads[1]["details"]["errors"][0].as_str().unwrap();
    assert!(errors.starts_with(&expected_position), "{errors}");
    assert_eq!(reloads[0]["actor"], "coord");

    alice.shutdown();
    bob.shutdown();
    carol.shutdown();
    coord.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    // Polling is slow here, so only the signal can bring the change in time.
    let coord = CoordProcess::start(SELF_ONLY, &["--policy-poll-interval", "1h"]).await;
    let alice = client(
        &coord.addr,
        Some(coord.auth_key(&["--user", "alice@example.com"])),
        "alice-laptop",
    );
    let bob = client(
        &coord.addr,
        Some(coord.auth_key(&["--user", "bob@example.com"])),
        "bob-server",
    );
    let (mut a, mut b) = (alice.netmap(), bob.netmap());
    wait_for(&mut a, "alice's netmap", |m| m.peers.is_empty()).await;
    wait_for(&mut b, "bob's netmap", |m| m.peers.is_empty()).await;
    coord.write_policy(ALICE_TO_BOB_SSH);
    coord.signal("-HUP");
    wait_for(&mut a, "alice to see bob", |m| m.peers.len() == 1).await;
    wait_for(&mut b, "bob to see alice", |m| m.peers.len() == 1).await;
    coord.wait_log("policy reloaded").await;
    let audit = coord.admin_json(&["audit"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "policy.reload" && e["actor"] == "signal:SIGHUP"),
        "{audit:#}"
    );
    alice.shutdown();
    bob.shutdown();
    coord.stop();
}

#[test]
fn serve_refuses_to_start_on_a_broken_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.hujson");
    std::fs::write(&policy, BROKEN).unwrap();
    let out = std::process::Command::new(common::BIN)
        .arg("serve")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4:", policy.display())),
        "{stderr}"
    );
}

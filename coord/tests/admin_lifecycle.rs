//! The admin commands (`postern-coord nodes ...`, `audit`) against a running coord, and the
//! node lifecycle: approval, key expiry (by an admin and by time), ephemeral cleanup. Every
//! change must reach the netmaps of the node control clients at once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{CoordProcess, WAIT, client, client_with, peer_names, wait_for};
use postern_node::control::RegistrationState;
use postern_proto::MachinePrivateKey;

const SELF_ONLY: &str = r#"{
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_commands_reach_the_netmaps_at_once_and_are_audited() {
    let coord = CoordProcess::start(SELF_ONLY, &[]).await;
    let key = coord.auth_key(&["--reusable", "--user", "alice@example.com"]);
    let phone_machine = MachinePrivateKey::generate(&mut rand::rngs::OsRng);
    let laptop = client(&coord.addr, Some(key.clone()), "laptop");
    let phone = client_with(
        &coord.addr,
        Some(key.clone()),
        "phone",
        phone_machine.clone(),
        false,
    );
    let mut l = laptop.netmap();
    wait_for(&mut l, "laptop to see the phone online", |m| {
        m.peers.len() == 1 && m.peers[0].online
    })
    .await;

    let nodes = coord.admin_json(&["nodes", "list"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(
        nodes
            .iter()
            .all(|n| n["online"] == true && n["user"] == "alice@example.com")
    );
    let table = coord.admin(&["nodes", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("phone") && table.contains("online"),
        "{table}"
    );

    // Rename: the laptop sees the new name.
    let out = coord.admin(&["nodes", "rename", "phone", "pocket"]);
    assert!(out.starts_with("renamed node"), "{out}");
    wait_for(&mut l, "the new name", |m| {
        peer_names(m) == ["pocket.example.test"]
    })
    .await;
    let shown = coord.admin(&["nodes", "show", "pocket"]);
    assert!(
        shown.contains("fqdn:        pocket.example.test"),
        "{shown}"
    );

    // Tag: a tagged node is no longer alice's, so self-only hides it; untag brings it back.
    coord.admin(&["nodes", "tag", "pocket", "tag:ci"]);
    wait_for(&mut l, "the tagged node to vanish", |m| m.peers.is_empty()).await;
    coord.admin(&["nodes", "tag", "pocket"]);
    wait_for(&mut l, "the untagged node to return", |m| {
        m.peers.len() == 1
    })
    .await;

    // Expire: gone from the laptop's netmap until it registers again.
    coord.admin(&["nodes", "expire", "pocket"]);
    wait_for(&mut l, "the expired node to vanish", |m| m.peers.is_empty()).await;
    assert_eq!(
        coord.admin_json(&["nodes", "show", "pocket"])["expired"],
        true
    );
    phone.shutdown();
    let phone = client_with(
        &coord.addr,
        Some(key.clone()),
        "phone",
        phone_machine,
        false,
    );
    wait_for(&mut l, "the re-registered node", |m| {
        peer_names(m) == ["pocket.example.test"]
    })
    .await;
    let renewed = coord.admin_json(&["nodes", "show", "pocket"]);
    assert_eq!(renewed["expired"], false);
    assert!(renewed["key_expiry"].as_i64().unwrap() > 0);

    // Delete: the phone loses the laptop.
    let mut p = phone.netmap();
    wait_for(&mut p, "the phone to see the laptop", |m| {
        m.peers.len() == 1
    })
    .await;
    coord.admin(&["nodes", "delete", "laptop"]);
    wait_for(&mut p, "the deleted laptop to vanish", |m| {
        m.peers.is_empty()
    })
    .await;
    assert_eq!(
        coord
            .admin_json(&["nodes", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Mistakes are explained, exit 1.
    let out = coord.run(&["nodes", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node \"nope\""));
    let out = coord.run(&["nodes", "rename", "pocket", "Not A Label"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid node name"));
    let wrong = coord.dir.path().join("wrong.token");
    std::fs::write(&wrong, "pstn-admin-0000").unwrap();
    let out = coord.run(&[
        "nodes",
        "list",
        "--admin-token-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong admin token"));

    // Everything is in the audit log.
    let actions = coord.audit_actions();
    for action in [
        "authkey.create",
        "node.register",
        "node.rename",
        "node.tag",
        "node.expire",
        "node.delete",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} missing from {actions:?}"
        );
    }
    let recent = coord.admin(&["audit", "--since", "1h"]);
    assert!(recent.contains("admin  node.rename  node:"), "{recent}");
    assert!(recent.contains(r#""to":"pocket""#), "{recent}");
    let token = std::fs::read_to_string(coord.state_dir.join("admin.token")).unwrap();
    assert!(
        !coord.log().contains(token.trim()),
        "the admin token must never be logged"
    );

    laptop.shutdown();
    phone.shutdown();
    coord.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_nodes_wait_for_approval_when_required() {
    let coord = CoordProcess::start(SELF_ONLY, &["--require-approval"]).await;
    let key = coord.auth_key(&["--reusable", "--user", "alice@example.com"]);
    let machine = MachinePrivateKey::generate(&mut rand::rngs::OsRng);
    let waiting = client_with(
        &coord.addr,
        Some(key.clone()),
        "desk",
        machine.clone(),
        false,
    );
    let needs_approval =
        |s: &RegistrationState| matches!(s, RegistrationState::NeedsApproval { .. });
    let state = tokio::time::timeout(WAIT, waiting.registration().wait_for(needs_approval))
        .await
        .unwrap()
        .unwrap()
        .clone();
    let RegistrationState::NeedsApproval { node_id: id, name } = state else {
        unreachable!()
    };
    assert_eq!(name, "desk");
    let listed = coord.admin(&["nodes", "list"]);
    assert!(listed.contains("needs-approval"), "{listed}");
    assert!(
        !waiting.is_finished(),
        "a waiting node waits, it does not stop"
    );
    // Coming back before approval changes nothing: the same node, still waiting.
    waiting.shutdown();
    let desk = client_with(&coord.addr, Some(key.clone()), "desk", machine, false);
    let state = tokio::time::timeout(WAIT, desk.registration().wait_for(needs_approval))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(
        matches!(state, RegistrationState::NeedsApproval { node_id, .. } if node_id == id),
        "{state:?}"
    );

    // Approved: the waiting node gets its netmap on the connection it holds.
    let out = coord.admin(&["nodes", "approve", &id.0.to_string()]);
    assert!(out.starts_with("approved node"), "{out}");
    let mut d = desk.netmap();
    wait_for(&mut d, "the approved node's netmap", |m| {
        m.self_node.name == "desk"
    })
    .await;
    assert!(coord.audit_actions().iter().any(|a| a == "node.approve"));
    desk.shutdown();
    coord.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_by_time_except_tagged_ones_and_ephemeral_nodes_go_when_offline() {
    let coord = CoordProcess::start(
        SELF_ONLY,
        &["--key-expiry", "4s", "--ephemeral-timeout", "1s"],
    )
    .await;
    let key = coord.auth_key(&["--reusable", "--user", "alice@example.com"]);
    let ephemeral_key = coord.auth_key(&["--ephemeral", "--user", "alice@example.com"]);
    let tagged_key = coord.auth_key(&["--tags", "tag:ci"]);
    let a = client(&coord.addr, Some(key.clone()), "a");
    let b = client(&coord.addr, Some(key.clone()), "b");
    let e = client(&coord.addr, Some(ephemeral_key), "temp");
    let t = client(&coord.addr, Some(tagged_key), "runner");
    let mut a_rx = a.netmap();
    wait_for(&mut a_rx, "a to see b and the ephemeral node", |m| {
        peer_names(m) == ["b.example.test", "temp.example.test"]
    })
    .await;
    wait_for(&mut t.netmap(), "the tagged node's netmap", |_| true).await;
    assert_eq!(
        coord.admin_json(&["nodes", "show", "runner"])["key_expiry"],
        serde_json::Value::Null
    );

    // The ephemeral node goes offline: removed after the timeout.
    e.shutdown();
    wait_for(&mut a_rx, "the ephemeral node to be removed", |m| {
        peer_names(m) == ["b.example.test"]
    })
    .await;
    let listed = coord.admin(&["nodes", "list"]);
    assert!(!listed.contains("temp"), "{listed}");

    // Keys expire: a loses b (and b's own key too, so a's netmap empties).
    wait_for(&mut a_rx, "b's key to expire", |m| m.peers.is_empty()).await;
    assert_eq!(coord.admin_json(&["nodes", "show", "b"])["expired"], true);
    assert_eq!(
        coord.admin_json(&["nodes", "show", "runner"])["expired"],
        false
    );
    coord.wait_audit("node.expire").await;
    coord.wait_audit("node.delete").await;
    a.shutdown();
    b.shutdown();
    t.shutdown();
    coord.stop();
}

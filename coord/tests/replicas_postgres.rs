//! Two `postern-coord serve` replicas on one real PostgreSQL (from `postern-lab`): changes
//! made on one reach the nodes streaming from the other through the database (LISTEN /
//! NOTIFY), an edge log read waiting on one is answered by a decision an ingress reported
//! to the other, and the node lifecycle runs on one replica only. Needs the PostgreSQL server
//! installed (`scripts/install-deps`); fails, never skips, when it is missing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{
    CoordProcess, client, client_with, connected, edge_decision, open_webhook_funnel, peer_names,
    wait_for,
};
use postern_lab::postgres::PostgresCluster;
use postern_proto::MachinePrivateKey;
use postern_proto::funnel::FunnelLogQuery;

/// Each user's devices see each other (both replicas get the same file, as operators must).
const POLICY: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
  ],
}
"#;

fn postgres() -> (PostgresCluster, String) {
    let cluster = PostgresCluster::start()
        .expect("starting PostgreSQL for the replica tests (run scripts/install-deps)");
    let url = cluster.create_database("postern_replicas").unwrap();
    (cluster, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_one_replica_reach_nodes_streaming_from_the_other() {
    let (_cluster, url) = postgres();
    let a = CoordProcess::start(POLICY, &["--database", &url]).await;
    let b = CoordProcess::start(POLICY, &["--database", &url]).await;
    let key = a.auth_key(&[
        "--reusable",
        "--user",
        "alice@example.com",
        "--database",
        &url,
    ]);

    // The laptop registers and streams on replica A.
    let laptop = client(&a.addr, Some(key.clone()), "alice-laptop");
    let mut on_a = laptop.netmap();
    wait_for(&mut on_a, "the laptop's netmap", |m| m.peers.is_empty()).await;

    // The phone registers on replica B: the laptop, streaming from A, learns of it.
    let phone = client(&b.addr, Some(key), "alice-phone");
    let mut on_b = phone.netmap();
    wait_for(&mut on_b, "the laptop in the phone's netmap", |m| {
        peer_names(m) == ["alice-laptop.example.test"]
    })
    .await;
    wait_for(&mut on_a, "the phone in the laptop's netmap", |m| {
        peer_names(m) == ["alice-phone.example.test"]
    })
    .await;

    // An admin command on B reaches the node on A.
    b.admin(&["nodes", "rename", "alice-phone", "pocket"]);
    wait_for(&mut on_a, "the renamed phone in the laptop's netmap", |m| {
        peer_names(m) == ["pocket.example.test"]
    })
    .await;

    // A node deleted through A vanishes from the netmap of the node on B.
    a.admin(&["nodes", "delete", "alice-laptop"]);
    wait_for(&mut on_b, "the phone's netmap without the laptop", |m| {
        m.peers.is_empty()
    })
    .await;
    laptop.shutdown();
    phone.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_runs_the_lifecycle_and_respects_streams_on_the_other() {
    let (_cluster, url) = postgres();
    let extra = ["--database", url.as_str(), "--ephemeral-timeout", "1s"];
    let a = CoordProcess::start(POLICY, &extra).await;
    let b = CoordProcess::start(POLICY, &extra).await;
    let key = a.auth_key(&[
        "--reusable",
        "--ephemeral",
        "--user",
        "bob@example.com",
        "--database",
        &url,
    ]);

    // An ephemeral node streaming from B stays, whichever replica runs the lifecycle.
    let runner = client_with(
        &b.addr,
        Some(key.clone()),
        "ci-runner",
        MachinePrivateKey::generate(&mut rand::rngs::OsRng),
        true,
    );
    let mut map = runner.netmap();
    wait_for(&mut map, "the runner's netmap", |_| true).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let nodes = a.admin_json(&["nodes", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");

    // Once it is gone, it is deleted once: one node.delete record in the shared audit log.
    runner.shutdown();
    a.wait_audit("node.delete").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deletes = a
        .audit_actions()
        .iter()
        .filter(|action| *action == "node.delete")
        .count();
    assert_eq!(deletes, 1);
    assert!(
        a.admin_json(&["nodes", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    drop(b);
}

/// POLICY, and alice may funnel ports 3000 to 3009.
const FUNNEL_POLICY: &str = r#"{
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
  "nodeAttrs": [{"target": ["alice@example.com"], "attr": ["funnel"]}],
  "funnels": [{"src": ["alice@example.com"], "ports": ["3000-3009"]}],
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_log_read_waiting_on_one_replica_is_answered_from_the_other() {
    let (_cluster, url) = postgres();
    let extra = [
        "--database",
        url.as_str(),
        "--funnel-domain",
        "funnel.example.test",
    ];
    let a = CoordProcess::start(FUNNEL_POLICY, &extra).await;
    let b = CoordProcess::start(FUNNEL_POLICY, &extra).await;
    let alice = a.auth_key(&["--user", "alice@example.com", "--database", &url]);
    let edge_key = a.auth_key(&["--ingress", "--database", &url]);
    // The funnel's owner streams from A, the ingress from B.
    let laptop = client(&a.addr, Some(alice), "alice-laptop");
    let edge = client(&b.addr, Some(edge_key), "edge");
    connected(&laptop).await;
    connected(&edge).await;
    let hooks = open_webhook_funnel(&laptop, 3000, "hooks").await;

    let waiting = FunnelLogQuery {
        denied_only: true,
        wait_ms: Some(25_000),
        ..FunnelLogQuery::default()
    };
    let (answer, ()) = tokio::join!(laptop.funnel_log(waiting), async {
        a.wait_metric("postern_coord_edge_log_reads_waiting 1")
            .await;
        // B stores the denial once its view has the funnel (it learns it from A).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ack = edge
                .report_edge_decisions(vec![edge_decision(&hooks, 1, "deny")])
                .await
                .unwrap();
            if ack.stored == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica B never stored the denial: {ack:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Answered through B's announcement: without it, the read would end empty after
    // its 25 s.
    let answer = answer.unwrap();
    let paths: Vec<&str> = answer.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["/webhook/1"]);
    laptop.shutdown();
    edge.shutdown();
}

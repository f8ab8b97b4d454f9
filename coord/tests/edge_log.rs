//! The edge log through the real `postern-coord serve` and real control clients: an ingress
//! node reports decisions, funnel owners read back their own funnels' decisions only, a
//! node that is not an ingress is refused, unknown hostnames are dropped, and the
//! per-funnel bound holds. A log request that asks to wait is answered when the ingress
//! reports a matching decision, and does not hold up the node's netmap stream meanwhile.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{
    CoordProcess, client, connected, edge_decision as decision, open_webhook_funnel as open,
};
use postern_node::control::{ClientError, ControlClient};
use postern_proto::funnel::{EdgeDecision, FunnelChange, FunnelLogQuery, MAX_EDGE_BATCH};

const DOMAIN: &str = "funnel.example.test";

const POLICY: &str = r#"{
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
  "nodeAttrs": [{"target": ["alice@example.com", "bob@example.com"], "attr": ["funnel"]}],
  "funnels": [{"src": ["alice@example.com", "bob@example.com"], "ports": ["3000-3009"]}],
}"#;

async fn log(node: &ControlClient, query: FunnelLogQuery) -> Vec<EdgeDecision> {
    node.funnel_log(query).await.unwrap()
}

#[tokio::test]
async fn only_ingress_nodes_report_and_owners_read_only_their_own_funnels() {
    let coord =
        CoordProcess::start(POLICY, &["--funnel-domain", DOMAIN, "--edge-log-keep", "4"]).await;
    let alice = coord.auth_key(&["--user", "alice@example.com"]);
    let bob = coord.auth_key(&["--user", "bob@example.com"]);
    let edge_key = coord.auth_key(&["--ingress"]);
    let laptop = client(&coord.addr, Some(alice), "laptop");
    let bobs = client(&coord.addr, Some(bob), "bobs-box");
    let edge = client(&coord.addr, Some(edge_key), "edge");
    for node in [&laptop, &bobs, &edge] {
        connected(node).await;
    }
    let hooks = open(&laptop, 3000, "hooks").await;
    let docs = open(&bobs, 3001, "docs").await;
    // The ingress learns the routes; the coord accepts decisions for routed funnels only.
    let ack = edge
        .report_edge_decisions(vec![
            decision(&hooks, 1, "allow"),
            decision(&hooks, 2, "deny"),
            decision(&docs, 3, "deny"),
            decision("nobody.funnel.example.test", 4, "deny"),
        ])
        .await
        .unwrap();
    assert_eq!((ack.stored, ack.dropped, ack.refusal), (3, 1, None));

    // Each owner reads its own funnels' decisions, newest first, and nothing else.
    let mine = log(&laptop, FunnelLogQuery::default()).await;
    let paths: Vec<&str> = mine.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["/webhook/2", "/webhook/1"]);
    assert!(mine.iter().all(|d| d.funnel == hooks));
    assert_eq!(mine[0].reason.as_deref(), Some("signature_mismatch"));
    assert_eq!(mine[0].gate.as_deref(), Some("webhook:github"));
    assert_eq!(mine[0].client, "203.0.113.7:5002");
    assert_eq!(mine[0].status, 401);
    let theirs = log(&bobs, FunnelLogQuery::default()).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].funnel, docs);
    // Asking for another node's funnel by name or hostname is refused like a missing one.
    for other in ["docs", docs.as_str()] {
        let query = FunnelLogQuery {
            funnel: Some(other.into()),
            ..FunnelLogQuery::default()
        };
        match laptop.funnel_log(query).await {
            Err(ClientError::FunnelRefused(refusal)) => {
                assert_eq!(refusal.code, "not_found");
                assert!(refusal.message.contains("no funnel named"), "{refusal:?}");
            }
            other => panic!("laptop read bob's log: {other:?}"),
        }
    }
    // Filters: by name, by hostname, denials only, after an id, a limit.
    let by_name = FunnelLogQuery {
        funnel: Some("hooks".into()),
        denied_only: true,
        ..FunnelLogQuery::default()
    };
    let denied = log(&laptop, by_name).await;
    assert_eq!(denied.len(), 1);
    assert!(denied[0].is_denied());
    let after = FunnelLogQuery {
        funnel: Some(hooks.clone()),
        after_id: Some(mine[1].id),
        ..FunnelLogQuery::default()
    };
    assert_eq!(log(&laptop, after).await, mine[..1].to_vec());
    let one = FunnelLogQuery {
        limit: Some(1),
        ..FunnelLogQuery::default()
    };
    assert_eq!(log(&laptop, one).await.len(), 1);

    // A node that is not an ingress is refused whole, even for its own funnel.
    let ack = laptop
        .report_edge_decisions(vec![decision(&hooks, 5, "deny")])
        .await
        .unwrap();
    let refusal = ack.refusal.expect("refused");
    assert_eq!(refusal.code, "not_ingress");
    assert!(refusal.message.contains("--ingress"), "{refusal:?}");
    assert_eq!((ack.stored, ack.dropped), (0, 1));
    assert_eq!(log(&laptop, FunnelLogQuery::default()).await.len(), 2);

    // Too large a batch is refused.
    let big: Vec<EdgeDecision> = (0..=MAX_EDGE_BATCH as u64)
        .map(|n| decision(&hooks, n, "allow"))
        .collect();
    let ack = edge.report_edge_decisions(big).await.unwrap();
    assert_eq!(ack.refusal.unwrap().code, "invalid");

    // --edge-log-keep 4: only the newest four of a funnel stay.
    let more: Vec<EdgeDecision> = (10..16).map(|n| decision(&hooks, n, "deny")).collect();
    assert_eq!(edge.report_edge_decisions(more).await.unwrap().stored, 6);
    let kept = log(&laptop, FunnelLogQuery::default()).await;
    let paths: Vec<&str> = kept.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/webhook/15", "/webhook/14", "/webhook/13", "/webhook/12"]
    );
    assert_eq!(log(&bobs, FunnelLogQuery::default()).await.len(), 1);

    // The admin sees any funnel's log by hostname.
    let table = coord.admin(&["funnels", "log", &hooks]);
    assert!(table.starts_with("TIME "), "{table}");
    assert!(table.contains("deny: signature_mismatch"), "{table}");
    assert_eq!(
        table.lines().count(),
        5,
        "header and four decisions: {table}"
    );
    let json = coord.admin_json(&["funnels", "log", &docs, "--denied", "--limit", "1"]);
    let listed = json.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{json}");
    assert_eq!(listed[0]["funnel"], docs.as_str());
    let out = coord.run(&["funnels", "log", "nobody.funnel.example.test"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no funnel"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A closed funnel's decisions are dropped from then on; its log stays readable.
    laptop
        .funnel(FunnelChange::Close { port: 3000 })
        .await
        .unwrap();
    let ack = edge
        .report_edge_decisions(vec![decision(&hooks, 20, "deny")])
        .await
        .unwrap();
    assert_eq!((ack.stored, ack.dropped), (0, 1));
    let query = FunnelLogQuery {
        funnel: Some("hooks".into()),
        ..FunnelLogQuery::default()
    };
    assert_eq!(log(&laptop, query).await.len(), 4);
    coord.stop();
}

#[tokio::test]
async fn a_waiting_log_request_is_answered_when_the_ingress_reports_a_match() {
    let coord = CoordProcess::start(POLICY, &["--funnel-domain", DOMAIN]).await;
    let alice = coord.auth_key(&["--user", "alice@example.com"]);
    let edge_key = coord.auth_key(&["--ingress"]);
    let laptop = client(&coord.addr, Some(alice), "laptop");
    let edge = client(&coord.addr, Some(edge_key), "edge");
    for node in [&laptop, &edge] {
        connected(node).await;
    }
    let hooks = open(&laptop, 3000, "hooks").await;

    let waiting = FunnelLogQuery {
        denied_only: true,
        wait_ms: Some(25_000),
        ..FunnelLogQuery::default()
    };
    let (answer, ()) = tokio::join!(laptop.funnel_log(waiting), async {
        // Sent after the log request on the same stream, so answered after the coord took
        // it: a coord that did not hold it would have answered it (empty) already.
        let listed = laptop.funnel(FunnelChange::List).await.unwrap();
        assert_eq!(
            listed.len(),
            1,
            "the stream serves other requests meanwhile"
        );
        coord
            .wait_metric("postern_coord_edge_log_reads_waiting 1")
            .await;
        // An admission does not match a wait for denials; the denial after it does.
        let ack = edge
            .report_edge_decisions(vec![decision(&hooks, 1, "allow")])
            .await
            .unwrap();
        assert_eq!(ack.stored, 1);
        let ack = edge
            .report_edge_decisions(vec![decision(&hooks, 2, "deny")])
            .await
            .unwrap();
        assert_eq!(ack.stored, 1);
    });
    let answer = answer.unwrap();
    let paths: Vec<&str> = answer.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["/webhook/2"]);
    coord
        .wait_metric("postern_coord_edge_log_reads_waiting 0")
        .await;

    // Asking for what is newer than that, a short wait ends with an empty answer.
    let after = FunnelLogQuery {
        denied_only: true,
        after_id: Some(answer[0].id),
        wait_ms: Some(200),
        ..FunnelLogQuery::default()
    };
    assert!(log(&laptop, after).await.is_empty());
    coord.stop();
}

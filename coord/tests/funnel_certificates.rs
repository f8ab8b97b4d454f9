//! Funnel certificates shared by ingress replicas through the real `postern-coord serve`
//! (issue #8 item 7): an ingress stores one, another ingress gets it back exactly; other
//! nodes are refused both ways; hostnames outside the funnel domain are refused; the audit
//! record of a store carries no key. The ingress side is tested end to end in
//! `cli/tests/funnel_e2e.rs` (two ingresses, pebble).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use common::{CoordProcess, WAIT, client};
use postern_node::control::{ClientError, ControlClient};
use postern_proto::UnixTime;
use postern_proto::funnel::{FunnelChange, HostCertificate};

const DOMAIN: &str = "funnel.example.test";
const POLICY: &str = r#"{
  "nodeAttrs": [{"target": ["alice@example.com"], "attr": ["funnel"]}],
  "funnels": [{"src": ["alice@example.com"], "ports": ["*"], "allowUngated": true}],
}"#;

async fn connected(node: &ControlClient) {
    let deadline = Instant::now() + WAIT;
    while !node.is_connected() {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn refusal_code(result: Result<Option<HostCertificate>, ClientError>) -> String {
    match result {
        Err(ClientError::FunnelRefused(refusal)) => refusal.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn get(hostname: &str) -> FunnelChange {
    FunnelChange::GetCertificate {
        hostname: hostname.into(),
    }
}

#[tokio::test]
async fn ingress_nodes_share_certificates_and_no_one_else_sees_them() {
    let coord = CoordProcess::start(POLICY, &["--funnel-domain", DOMAIN]).await;
    let edge_key = coord.auth_key(&["--reusable", "--ingress"]);
    let alice = coord.auth_key(&["--user", "alice@example.com"]);
    let edge1 = client(&coord.addr, Some(edge_key.clone()), "edge1");
    let edge2 = client(&coord.addr, Some(edge_key), "edge2");
    let laptop = client(&coord.addr, Some(alice), "laptop");
    for node in [&edge1, &edge2, &laptop] {
        connected(node).await;
    }
    let host = format!("hooks.{DOMAIN}");
    assert_eq!(edge2.certificate(get(&host)).await.unwrap(), None);

    let cert = HostCertificate {
        hostname: host.clone(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nsecret-key-bytes\n-----END PRIVATE KEY-----\n"
            .into(),
        not_after: UnixTime::from_secs(2_000_000_000),
    };
    let stored = edge1
        .certificate(FunnelChange::PutCertificate(cert.clone()))
        .await
        .unwrap();
    assert_eq!(stored, None);
    assert_eq!(
        edge2.certificate(get(&host)).await.unwrap(),
        Some(cert.clone())
    );

    // A node that is not an ingress may neither read nor write.
    assert_eq!(
        refusal_code(laptop.certificate(get(&host)).await),
        "not_ingress"
    );
    let forged = HostCertificate {
        key_pem: "-----BEGIN PRIVATE KEY-----\nattacker\n-----END PRIVATE KEY-----\n".into(),
        ..cert.clone()
    };
    assert_eq!(
        refusal_code(
            laptop
                .certificate(FunnelChange::PutCertificate(forged))
                .await
        ),
        "not_ingress"
    );
    assert_eq!(
        edge2.certificate(get(&host)).await.unwrap(),
        Some(cert.clone())
    );

    // Only funnel hostnames, and only PEM of bounded size.
    assert_eq!(
        refusal_code(edge1.certificate(get("example.com")).await),
        "invalid"
    );
    assert_eq!(
        refusal_code(edge1.certificate(get(DOMAIN)).await),
        "invalid"
    );
    let junk = HostCertificate {
        chain_pem: "not pem".into(),
        ..cert.clone()
    };
    assert_eq!(
        refusal_code(edge1.certificate(FunnelChange::PutCertificate(junk)).await),
        "invalid"
    );

    coord.wait_audit("certificate.store").await;
    let audit = coord.admin(&["audit", "--json"]);
    assert!(audit.contains(&host), "{audit}");
    assert!(
        !audit.contains("secret-key-bytes"),
        "the key reached the audit log"
    );
    assert!(
        !coord.log().contains("secret-key-bytes"),
        "the key reached the log"
    );
}

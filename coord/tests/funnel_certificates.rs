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

/// A coord serving funnels, and three connected nodes: ingress nodes `edge1` and `edge2`,
/// and alice's `laptop`.
async fn two_ingresses_and_a_laptop() -> (CoordProcess, [ControlClient; 3]) {
    let coord = CoordProcess::start(POLICY, &["--funnel-domain", DOMAIN]).await;
    let edge_key = coord.auth_key(&["--reusable", "--ingress"]);
    let alice = coord.auth_key(&["--user", "alice@example.com"]);
    let edge1 = client(&coord.addr, Some(edge_key.clone()), "edge1");
    let edge2 = client(&coord.addr, Some(edge_key), "edge2");
    let laptop = client(&coord.addr, Some(alice), "laptop");
    for node in [&edge1, &edge2, &laptop] {
        connected(node).await;
    }
    (coord, [edge1, edge2, laptop])
}

#[tokio::test]
async fn ingress_nodes_share_certificates_and_no_one_else_sees_them() {
    let (coord, [edge1, edge2, laptop]) = two_ingresses_and_a_laptop().await;
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

#[tokio::test]
async fn one_ingress_at_a_time_may_order_a_hostnames_certificate() {
    let (_coord, [edge1, edge2, laptop]) = two_ingresses_and_a_laptop().await;
    let host = format!("new.{DOMAIN}");
    let claim = |hostname: &str| FunnelChange::ClaimCertificateOrder {
        hostname: hostname.into(),
    };

    // The first ingress to claim orders; the second is told who is ordering and waits.
    assert_eq!(edge1.certificate(claim(&host)).await.unwrap(), None);
    let refused = edge2.certificate(claim(&host)).await;
    let Err(ClientError::FunnelRefused(refusal)) = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!(refusal.code, "order_in_progress");
    assert!(
        refusal.message.contains("edge1") && refusal.message.contains(&host),
        "{}",
        refusal.message
    );
    // The holder renews its claim (before a retry); the other is still refused. A claim is
    // per hostname, and case does not make a new one.
    assert_eq!(edge1.certificate(claim(&host)).await.unwrap(), None);
    assert_eq!(
        refusal_code(edge2.certificate(claim(&host.to_uppercase())).await),
        "order_in_progress"
    );
    assert_eq!(
        edge2
            .certificate(claim(&format!("other.{DOMAIN}")))
            .await
            .unwrap(),
        None
    );
    // Only ingress nodes claim, only funnel hostnames.
    assert_eq!(
        refusal_code(laptop.certificate(claim(&host)).await),
        "not_ingress"
    );
    assert_eq!(
        refusal_code(edge1.certificate(claim("example.com")).await),
        "invalid"
    );

    // Storing the certificate ends the holder's claim: the other ingress finds the
    // certificate, and may claim the next order (a renewal) at once.
    let cert = HostCertificate {
        hostname: host.clone(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n".into(),
        not_after: UnixTime::from_secs(2_000_000_000),
    };
    edge1
        .certificate(FunnelChange::PutCertificate(cert.clone()))
        .await
        .unwrap();
    assert_eq!(edge2.certificate(get(&host)).await.unwrap(), Some(cert));
    assert_eq!(edge2.certificate(claim(&host)).await.unwrap(), None);
    assert_eq!(
        refusal_code(edge1.certificate(claim(&host)).await),
        "order_in_progress"
    );
}

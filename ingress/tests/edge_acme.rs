//! Certificates from pebble in strict mode (it really connects back to the ingress): HTTP-01
//! and TLS-ALPN-01 issuance, and a restart that reuses the stored certificate.

// Helper functions of these tests unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::panic)]

mod edge_support;

use std::time::Duration;

use edge_support::*;

const FUNNEL: &str = r#"
[[funnel]]
hostname = "cert.test"
target = "127.0.0.1:9"
"#;

async fn issues_with(challenge: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = strict_pebble(http_port, tls_port);
    let root = pebble.fetch_root().unwrap();
    let mut ingress = start_ingress(
        dir.path(),
        "1",
        &pebble,
        challenge,
        http_port,
        tls_port,
        FUNNEL,
        &[],
    );
    let client = client(&root, "cert.test", ingress.https);
    wait_for_certificate(&mut ingress, &client, "cert.test", Duration::from_secs(45)).await;
    let log = log_of(&ingress);
    let answered = match challenge {
        "http-01" => "answered an HTTP-01 validation",
        _ => "answered a TLS-ALPN-01 validation",
    };
    assert!(
        log.contains(answered),
        "pebble did not validate via {challenge}:\n{log}"
    );
    let key = dir.path().join("state/certs/cert.test/key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let account = std::fs::read_dir(dir.path().join("state/acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        account.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_is_issued_and_served() {
    issues_with("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificate_is_issued_and_served() {
    issues_with("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_same_state_issues_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = strict_pebble(http_port, tls_port);
    let root = pebble.fetch_root().unwrap();

    let mut first = start_ingress(
        dir.path(),
        "1",
        &pebble,
        "http-01",
        http_port,
        tls_port,
        FUNNEL,
        &[],
    );
    let client1 = client(&root, "cert.test", first.https);
    let leaf1 =
        wait_for_certificate(&mut first, &client1, "cert.test", Duration::from_secs(45)).await;
    first.process.stop();
    drop(first);

    let mut second = start_ingress(
        dir.path(),
        "2",
        &pebble,
        "http-01",
        http_port,
        tls_port,
        FUNNEL,
        &[],
    );
    let client2 = client(&root, "cert.test", second.https);
    let leaf2 =
        wait_for_certificate(&mut second, &client2, "cert.test", Duration::from_secs(20)).await;
    assert_eq!(
        leaf1, leaf2,
        "the restarted ingress serves a different certificate"
    );
    let log = log_of(&second);
    assert!(log.contains("using the stored certificate"), "{log}");
    assert!(
        !log.contains("ordering a certificate"),
        "the restart ordered again:\n{log}"
    );
    assert!(log.contains("using the stored ACME account"), "{log}");
}

//! End to end: pebble (strict) issues the certificate, the real `postern-ingress` binary
//! verifies GitHub signatures, and only signed deliveries reach the origin, byte for byte.

// Helper functions of these tests unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::panic)]

mod edge_support;

use std::time::Duration;

use edge_support::*;
use hmac::{Hmac, Mac};

const SECRET: &str = "it's a secret to everybody";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_validly_signed_github_deliveries_reach_the_origin() {
    let origin = Origin::default();
    let origin_address = origin.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = strict_pebble(http_port, tls_port);
    let root = pebble.fetch_root().unwrap();
    let funnel = format!(
        r#"
[[funnel]]
hostname = "hooks.test"
target = "{origin_address}"
[[funnel.gate]]
verify_webhook = "github"
secret_env = "GH_SECRET"
"#
    );
    let mut ingress = start_ingress(
        dir.path(),
        "1",
        &pebble,
        "tls-alpn-01",
        http_port,
        tls_port,
        &funnel,
        &[("GH_SECRET", SECRET)],
    );
    let client = client(&root, "hooks.test", ingress.https);
    wait_for_certificate(&mut ingress, &client, "hooks.test", Duration::from_secs(45)).await;
    assert_eq!(
        origin.count(),
        0,
        "the readiness probe (unsigned) reached the origin"
    );

    // Bytes a JSON re-serialiser would change: spacing, key order, unicode escapes.
    let body: &[u8] = b"{\"zen\":  \"Keep it logically awesome.\",\"a\":1, \"u\":\"\\u00e9\"}\n";
    let response = client
        .post("https://hooks.test/github?x=1")
        .header("x-hub-signature-256", sign(body))
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("x-github-event", "push")
        .header("content-type", "application/json")
        .header("postern-identity", "user:mallory")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", ingress.process.log_tail());
    assert_eq!(response.text().await.unwrap(), "origin ok");
    assert_eq!(origin.count(), 1);
    {
        let received = origin.received.lock().unwrap();
        let (parts, received_body) = &received[0];
        assert_eq!(received_body.as_ref(), body, "the body changed on the way");
        assert_eq!(parts.uri.to_string(), "/github?x=1");
        assert_eq!(parts.headers["host"], "hooks.test");
        assert_eq!(parts.headers["postern-gate"], "webhook:github");
        assert_ne!(parts.headers["postern-identity"], "user:mallory");
        assert_eq!(parts.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(parts.headers["x-forwarded-proto"], "https");
        assert_eq!(parts.headers["x-forwarded-host"], "hooks.test");
        assert!(parts.headers.contains_key("forwarded"));
    }

    // Forged: signed with another secret.
    let mut forged_mac = Hmac::<sha2::Sha256>::new_from_slice(b"guess").unwrap();
    forged_mac.update(body);
    let forged = client
        .post("https://hooks.test/github")
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hex::encode(forged_mac.finalize().into_bytes())),
        )
        .header("x-github-delivery", "00000000-0000-0000-0000-000000000001")
        .header("x-github-event", "push")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(forged.text().await.unwrap(), "signature_mismatch\n");

    // Unsigned.
    let unsigned = client
        .post("https://hooks.test/github")
        .header("x-github-event", "push")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(unsigned.text().await.unwrap(), "signature_missing\n");

    // Unknown hostname: a bare 404 that names nothing.
    let other = client_for_unknown(&root, ingress.https).await;
    assert_eq!(other.0, 404);
    assert_eq!(other.1, "not found\n");

    assert_eq!(origin.count(), 1, "a refused request reached the origin");

    // One audit line per decision, with the reason.
    let records = audit_records(&ingress, |records| {
        records.iter().filter(|r| r["path"] == "/github").count() >= 3
    })
    .await;
    let reasons: Vec<&str> = records
        .iter()
        .filter(|r| r["path"] == "/github")
        .map(|r| r["reason"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(
        reasons,
        ["none", "signature_mismatch", "signature_missing"],
        "{records:#?}"
    );
    let allowed = records.iter().find(|r| r["result"] == "allow").unwrap();
    assert_eq!(allowed["gate"], "webhook:github");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["bytes"], 9);
    assert_eq!(allowed["funnel"], "hooks.test");

    // The same decisions, counted on the metrics port: each series equals the number of
    // audit records with its labels (the readiness probes included).
    let metrics = reqwest::get(format!("http://{}/metrics", ingress.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = [
        ("hooks.test", "allow", "", 200),
        ("hooks.test", "deny", "signature_mismatch", 403),
        ("hooks.test", "deny", "signature_missing", 401),
        ("", "deny", "unknown_host", 404),
    ];
    let counted = |funnel: &str, result: &str, reason: &str, status: u16| -> u64 {
        let prefix = format!(
            r#"postern_ingress_requests_total{{funnel="{funnel}",result="{result}",reason="{reason}",status="{status}"}} "#
        );
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no series {prefix} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    let audited =
        |records: &[serde_json::Value], funnel: &str, result: &str, reason: &str, status: u16| {
            records
                .iter()
                .filter(|r| {
                    r["funnel"].as_str().unwrap_or("") == funnel
                        && r["result"] == result
                        && r["reason"].as_str().unwrap_or("") == reason
                        && r["status"] == status
                })
                .count() as u64
        };
    assert_eq!(counted("hooks.test", "allow", "", 200), 1);
    assert_eq!(counted("hooks.test", "deny", "signature_mismatch", 403), 1);
    let records = audit_records(&ingress, |records| {
        series
            .iter()
            .all(|&(f, r, why, st)| audited(records, f, r, why, st) == counted(f, r, why, st))
    })
    .await;
    assert!(audited(&records, "", "deny", "unknown_host", 404) >= 1);
    let health = reqwest::get(format!("http://{}/healthz", ingress.metrics))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let other = reqwest::get(format!("http://{}/", ingress.metrics))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

/// A request for a hostname no funnel serves, over a connection whose SNI is the known
/// funnel (the static/known certificate is what the client can verify).
async fn client_for_unknown(root: &str, ingress: std::net::SocketAddr) -> (u16, String) {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .resolve("hooks.test", ingress)
        .http1_only()
        .build()
        .unwrap();
    let response = client
        .get("https://hooks.test/")
        .header("host", "elsewhere.test")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

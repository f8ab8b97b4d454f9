//! Refused logins are audited: by the allowed groups or domains, by the identity provider,
//! and logins that expired, each with who (the person, if known), why, and from which
//! address, visible in `postern-coord audit --json` (the real binary, the lab's IdP, node
//! control clients and a headless browser).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod oidc_lab;

use oidc_lab::{NodeIdentity, OidcLab, get};
use postern_lab::idp::browser::HeadlessBrowser;
use postern_node::control::RegistrationState;
use serde_json::Value;

const OPEN: &str = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#;

fn rejected(state: &RegistrationState) -> Option<&str> {
    match state {
        RegistrationState::Rejected { reason } => Some(reason),
        _ => None,
    }
}

/// Checks the parts every refusal record has: the target machine, the hostname, and a
/// loopback source address.
fn check_record(record: &Value, hostname: &str, cause: &str) {
    assert_eq!(record["action"], "login.refused", "{record}");
    assert!(
        record["target"]
            .as_str()
            .unwrap()
            .starts_with("machine:mkey:"),
        "{record}"
    );
    assert_eq!(record["details"]["hostname"], hostname, "{record}");
    assert_eq!(record["details"]["cause"], cause, "{record}");
    assert!(
        record["source_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "the address it came from: {record}"
    );
    assert!(
        record["details"]["node_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "the node's address: {record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_refused_by_the_allowed_groups_or_domains_are_audited_with_who_why_and_where() {
    let lab = OidcLab::start(OPEN, &["--allowed-groups", "eng"]);
    let node = lab.node(&NodeIdentity::new("bobs-box"), None);
    let (status, page) = lab.browser_login(&node, "bob@example.com").await;
    assert_eq!(status, 403, "{page}");
    let expected = "bob@example.com may not log in: membership in one of the groups eng is required (your groups: contractors)";
    lab.registration(&node, "rejected", |s| rejected(s) == Some(expected))
        .await;
    let records = lab.wait_audit("login.refused", 1).await;
    let record = &records[0];
    check_record(record, "bobs-box", "admission");
    assert_eq!(record["actor"], "bob@example.com");
    assert_eq!(record["details"]["reason"], expected);
    assert_eq!(
        record["details"]["groups"],
        serde_json::json!(["contractors"])
    );
    // The person's browser, not the node, answered the IdP: a different connection.
    assert_ne!(record["source_addr"], record["details"]["node_addr"]);
    // The text form shows it too, with the address.
    let text = lab.admin(&["audit", "--since", "1h"]);
    assert!(
        text.contains("bob@example.com  login.refused  machine:mkey:"),
        "{text}"
    );
    assert!(text.contains("  from 127.0.0.1:"), "{text}");
    // Nothing was registered for bob.
    assert!(lab.audit_records("node.register").is_empty());

    let lab = OidcLab::start(OPEN, &["--allowed-domains", "corp.example"]);
    let node = lab.node(&NodeIdentity::new("carols-box"), None);
    let (status, page) = lab.browser_login(&node, "carol@example.com").await;
    assert_eq!(status, 403, "{page}");
    let records = lab.wait_audit("login.refused", 1).await;
    let record = &records[0];
    check_record(record, "carols-box", "admission");
    assert_eq!(record["actor"], "carol@example.com");
    assert_eq!(
        record["details"]["reason"],
        "carol@example.com may not log in: only accounts of corp.example are allowed on this tailnet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_refused_by_the_idp_or_left_to_expire_are_audited() {
    let lab = OidcLab::start(OPEN, &["--login-timeout", "5s"]);

    // The IdP refuses: `prompt=none` in a browser with no session there gets
    // `login_required` back at the callback.
    let node = lab.node(&NodeIdentity::new("kiosk"), None);
    let url = lab.login_url(&node).await;
    let browser = HeadlessBrowser::new().unwrap();
    let response = browser.client().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let mut authorize =
        reqwest::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    authorize.query_pairs_mut().append_pair("prompt", "none");
    let callback = browser
        .authorize(
            lab.idp.issuer(),
            authorize.as_str(),
            "alice@example.com",
            "alice-pw",
        )
        .await
        .unwrap();
    let (status, page) = get(&browser, callback.as_str()).await;
    assert_eq!(status, 403, "{page}");
    assert!(
        page.contains("the identity provider refused the login"),
        "{page}"
    );
    let state = lab
        .registration(&node, "rejected", |s| rejected(s).is_some())
        .await;
    assert!(
        rejected(&state).unwrap().contains("login_required"),
        "{state:?}"
    );
    let records = lab.wait_audit("login.refused", 1).await;
    let record = &records[0];
    check_record(record, "kiosk", "idp");
    assert_eq!(record["actor"], "anonymous", "nobody signed in");
    assert!(
        record["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("login_required"),
        "{record}"
    );

    // Expired: the person signs in at the IdP but comes back after the login timed out.
    let node = lab.node(&NodeIdentity::new("slowpoke"), None);
    let url = lab.login_url(&node).await;
    let browser = HeadlessBrowser::new().unwrap();
    let callback = browser
        .authorize(lab.idp.issuer(), &url, "alice@example.com", "alice-pw")
        .await
        .unwrap();
    let state = lab
        .registration(&node, "the login to expire", |s| rejected(s).is_some())
        .await;
    assert!(
        rejected(&state).unwrap().contains("not completed in time"),
        "{state:?}"
    );
    // The node's side: recorded from the node's address.
    let records = lab.wait_audit("login.refused", 2).await;
    let from_node = &records[1];
    check_record(from_node, "slowpoke", "expired");
    assert_eq!(from_node["actor"], "anonymous");
    assert_eq!(
        from_node["source_addr"], from_node["details"]["node_addr"],
        "{from_node}"
    );
    // The browser's late callback: refused, and recorded from the browser's address.
    let (status, page) = get(&browser, callback.as_str()).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unknown or has expired"), "{page}");
    let records = lab.wait_audit("login.refused", 3).await;
    let from_browser = &records[2];
    check_record(from_browser, "slowpoke", "expired");
    assert_ne!(
        from_browser["source_addr"],
        from_browser["details"]["node_addr"]
    );
    // Replaying that callback is not recorded again (anyone could send forged ones).
    let (status, _) = get(&browser, callback.as_str()).await;
    assert_eq!(status, 400);
    let mut forged = callback.clone();
    forged.set_query(Some("state=forged&code=x"));
    let (status, _) = get(&browser, forged.as_str()).await;
    assert_eq!(status, 400);
    assert_eq!(lab.audit_records("login.refused").len(), 3);
}

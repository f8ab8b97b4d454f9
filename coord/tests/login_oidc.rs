//! Interactive login end to end: the real `postern-coord` binary as the OIDC relying party
//! of the lab's real OpenID Provider, node control clients that register without an auth
//! key, and a headless browser playing the person.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod oidc_lab;

use oidc_lab::{NodeIdentity, OidcLab, WAIT, fqdn, get};
use postern_lab::idp::OidcProvider;
use postern_lab::idp::browser::HeadlessBrowser;
use postern_node::control::{ControlClient, RegistrationState};

/// Everyone may reach everyone: these tests are about who logs in, not the policy.
const ALLOW_ALL: &str = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#;

/// A node of `lab` that registers without an auth key, through a browser link or (with
/// `device`) the device grant.
fn login_node(lab: &OidcLab, hostname: &str, device: bool) -> ControlClient {
    lab.node_with(&NodeIdentity::new(hostname), None, device)
}

fn rejected_reason(state: &RegistrationState) -> Option<&str> {
    match state {
        RegistrationState::Rejected { reason } => Some(reason),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_and_carol_log_in_and_their_nodes_are_theirs_in_every_netmap() {
    let lab = OidcLab::start(ALLOW_ALL, &["--allowed-domains", "example.com"]);
    let laptop = login_node(&lab, "laptop", false);
    let url = lab.login_url(&laptop).await;
    assert!(
        url.starts_with(&format!("http://{}/login/", lab.addr)),
        "the link points at the coord: {url}"
    );
    assert_eq!(
        url.rsplit('/').next().unwrap().len(),
        64,
        "an unguessable id: {url}"
    );

    let browser = HeadlessBrowser::new().unwrap();
    let (status, page) = lab
        .browser_login_at(&browser, &url, "alice@example.com")
        .await;
    assert_eq!(status, 200, "{page}\n{}", lab.logs());
    assert!(page.contains("Logged in as alice@example.com"), "{page}");
    let state = lab
        .registration(&laptop, "authorized", |s| {
            matches!(s, RegistrationState::Authorized { .. })
        })
        .await;
    assert!(
        matches!(&state, RegistrationState::Authorized { user, name, .. } if user == "alice@example.com" && name == "laptop"),
        "{state:?}"
    );
    let map = lab.netmap(&laptop, "alice's netmap", |_| true).await;
    assert_eq!(map.self_node.user.login, "alice@example.com");
    assert_eq!(map.self_node.user.display_name, "Alice Example");
    assert_eq!(map.self_node.user.groups, ["eng", "admins"]);

    // A second person, a second browser: carol (no groups) on her desktop.
    let desktop = login_node(&lab, "desktop", false);
    let url = lab.login_url(&desktop).await;
    let (status, page) = lab
        .browser_login_at(&HeadlessBrowser::new().unwrap(), &url, "carol@example.com")
        .await;
    assert_eq!(status, 200, "{page}");
    let map = lab
        .netmap(&laptop, "carol's desktop as a peer", |m| {
            m.peers.iter().any(|p| p.name == fqdn("desktop"))
        })
        .await;
    let peer = map
        .peers
        .iter()
        .find(|p| p.name == fqdn("desktop"))
        .unwrap();
    assert_eq!(peer.user.login, "carol@example.com");
    assert!(peer.user.groups.is_empty());

    // The login link is spent: opening it again says so.
    let (status, page) = get(&browser, &url).await;
    assert_eq!(status, 404, "{page}");
    assert!(page.contains("already complete"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_outside_the_allowed_groups_or_domains_are_refused_with_the_reason() {
    let lab = OidcLab::start(ALLOW_ALL, &["--allowed-groups", "eng"]);
    let node = login_node(&lab, "bobs-box", false);
    let url = lab.login_url(&node).await;
    let (status, page) = lab
        .browser_login_at(&HeadlessBrowser::new().unwrap(), &url, "bob@example.com")
        .await;
    assert_eq!(status, 403, "{page}");
    let expected = "bob@example.com may not log in: membership in one of the groups eng is required (your groups: contractors)";
    assert!(page.contains(expected), "the browser says why: {page}");
    let state = lab
        .registration(&node, "rejected", |s| rejected_reason(s).is_some())
        .await;
    assert_eq!(
        rejected_reason(&state),
        Some(expected),
        "the node is told the same"
    );
    let result = tokio::time::timeout(WAIT, node.join()).await.unwrap();
    assert!(result.is_err(), "the client stops on a refusal");

    let lab = OidcLab::start(ALLOW_ALL, &["--allowed-domains", "corp.example"]);
    let node = login_node(&lab, "alices-box", false);
    let url = lab.login_url(&node).await;
    let (status, page) = lab
        .browser_login_at(&HeadlessBrowser::new().unwrap(), &url, "alice@example.com")
        .await;
    assert_eq!(status, 403, "{page}");
    assert!(
        page.contains(
            "alice@example.com may not log in: only accounts of corp.example are allowed"
        ),
        "{page}"
    );
    lab.registration(&node, "rejected", |s| rejected_reason(s).is_some())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_completes_when_the_code_is_entered_in_a_browser() {
    let lab = OidcLab::start(
        ALLOW_ALL,
        &["--oidc-device-client-id", OidcProvider::CLI_CLIENT_ID],
    );
    let server = login_node(&lab, "headless-server", true);
    let state = lab
        .registration(&server, "a device code", |s| {
            matches!(s, RegistrationState::DeviceCode { .. })
        })
        .await;
    let RegistrationState::DeviceCode {
        verification_uri,
        user_code,
        ..
    } = state
    else {
        unreachable!()
    };
    assert!(
        verification_uri.starts_with(lab.idp.issuer()),
        "{verification_uri}"
    );
    HeadlessBrowser::new()
        .unwrap()
        .approve_device(
            &verification_uri,
            &user_code,
            "alice@example.com",
            "alice-pw",
        )
        .await
        .unwrap();
    let map = lab
        .netmap(&server, "the netmap after device login", |_| true)
        .await;
    assert_eq!(map.self_node.user.login, "alice@example.com");
    assert_eq!(map.self_node.user.groups, ["eng", "admins"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_without_the_grant_is_refused_clearly() {
    // postern-web may not use the device grant at the lab IdP: the IdP's refusal reaches
    // the node as the reason.
    let lab = OidcLab::start(ALLOW_ALL, &[]);
    let server = login_node(&lab, "headless-server", true);
    let state = lab
        .registration(&server, "rejected", |s| rejected_reason(s).is_some())
        .await;
    let reason = rejected_reason(&state).unwrap();
    assert!(
        reason.contains("device authorization endpoint failed"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_state_nonce_other_browsers_and_replayed_callbacks_are_refused() {
    let lab = OidcLab::start(ALLOW_ALL, &[]);

    // A tampered nonce: the IdP signs it into the ID token, the coord expects its own.
    let node = login_node(&lab, "nonce", false);
    let url = lab.login_url(&node).await;
    let browser = HeadlessBrowser::new().unwrap();
    let response = browser.client().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let authorize = response.headers()["location"].to_str().unwrap().to_owned();
    let mut tampered = reqwest::Url::parse(&authorize).unwrap();
    let pairs: Vec<(String, String)> = tampered
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "nonce" {
                "forged-nonce".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    tampered.query_pairs_mut().clear().extend_pairs(pairs);
    let callback = browser
        .authorize(
            lab.idp.issuer(),
            tampered.as_str(),
            "alice@example.com",
            "alice-pw",
        )
        .await
        .unwrap();
    let (status, page) = get(&browser, callback.as_str()).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("could not be verified"), "{page}");
    let state = lab
        .registration(&node, "rejected", |s| rejected_reason(s).is_some())
        .await;
    assert!(
        rejected_reason(&state)
            .unwrap()
            .contains("could not be verified")
    );

    // A forged state, a callback from another browser, then the real one, then a replay.
    let node = login_node(&lab, "state", false);
    let url = lab.login_url(&node).await;
    let browser = HeadlessBrowser::new().unwrap();
    let callback = browser
        .authorize(lab.idp.issuer(), &url, "alice@example.com", "alice-pw")
        .await
        .unwrap();
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let (status, page) = get(&browser, forged.as_str()).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unknown or was already used"), "{page}");
    let (status, page) = get(&browser, callback.as_str()).await;
    assert_eq!(status, 200, "{page}");
    lab.registration(&node, "authorized", |s| {
        matches!(s, RegistrationState::Authorized { .. })
    })
    .await;
    let (status, page) = get(&browser, callback.as_str()).await;
    assert_eq!(status, 400, "a replayed callback is refused: {page}");
    assert!(page.contains("unknown or was already used"), "{page}");

    // The right callback carried to another browser (no binding cookie) is refused.
    let node = login_node(&lab, "elsewhere", false);
    let url = lab.login_url(&node).await;
    let callback = HeadlessBrowser::new()
        .unwrap()
        .authorize(lab.idp.issuer(), &url, "alice@example.com", "alice-pw")
        .await
        .unwrap();
    let (status, page) = get(&HeadlessBrowser::new().unwrap(), callback.as_str()).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("started in another browser"), "{page}");
    assert!(
        matches!(
            *node.registration().borrow(),
            RegistrationState::LoginRequired { .. }
        ),
        "the node still waits"
    );
}

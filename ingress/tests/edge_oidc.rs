//! The OIDC login gate end to end: the real OpenID Provider of the lab (panva's
//! oidc-provider), the real edge in-process, a cookie-keeping client playing the browser,
//! and a counting origin.
//!
//! alice (group `eng`) logs in and reaches the origin with her identity headers; bob
//! (`contractors`) logs in but is refused at the callback and never reaches the origin;
//! a forged `state` is refused; an API call without a session gets 401 instead of a
//! redirect; logout ends the session.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod edge_gate_support;
mod edge_support;

use edge_gate_support::{GatedEdge, start_gated_edge};
use edge_support::Origin;
use postern_ingress::gate::oidc::{LOGIN_COOKIE, SESSION_COOKIE};
use postern_ingress::gate::{GateChain, OidcConfig, OidcGate, Secret};
use postern_lab::idp::browser::HeadlessBrowser;
use postern_lab::idp::{IdpConfig, OidcProvider};

const CALLBACK: &str = "https://app.test/.postern/callback";

struct Setup {
    idp: OidcProvider,
    edge: GatedEdge,
    origin: Origin,
}

async fn setup() -> Setup {
    let idp = OidcProvider::start(IdpConfig {
        web_redirect_uris: vec![CALLBACK.to_string()],
        web_client_secret: "edge-test-secret".into(),
    })
    .unwrap();
    let mut config = OidcConfig::new(
        idp.issuer(),
        OidcProvider::WEB_CLIENT_ID,
        CALLBACK,
        Secret::new(vec![7u8; 32]),
    );
    config.client_secret = Some(Secret::from("edge-test-secret"));
    config.allowed_groups = vec!["eng".into()];
    let gate = OidcGate::new(config).unwrap();
    let origin = Origin::default();
    let origin_address = origin.start().await;
    let edge = start_gated_edge(origin_address, GateChain::gate(gate)).await;
    Setup { idp, edge, origin }
}

/// Starts a login at `path` like a browser: returns the IdP URL the edge redirected to.
async fn start_login(client: &reqwest::Client, path: &str) -> String {
    let response = client
        .get(format!("https://app.test{path}"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302, "{:?}", response.text().await);
    let set_cookie: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
    assert_eq!(set_cookie.len(), 1);
    let cookie = set_cookie[0].to_str().unwrap();
    assert!(cookie.starts_with(&format!("{LOGIN_COOKIE}=")), "{cookie}");
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let location = response.headers()["location"].to_str().unwrap().to_string();
    for parameter in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "response_type=code",
        "client_id=postern-web",
    ] {
        assert!(
            location.contains(parameter),
            "{parameter} missing in {location}"
        );
    }
    location
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_logs_in_and_reaches_the_origin_with_her_identity() {
    let setup = setup().await;
    let client = setup.edge.client();
    let authorize = start_login(&client, "/dashboard?tab=1").await;
    let browser = HeadlessBrowser::new().unwrap();
    let callback = browser
        .authorize(
            setup.idp.issuer(),
            &authorize,
            "alice@example.com",
            "alice-pw",
        )
        .await
        .unwrap();
    assert!(callback.as_str().starts_with(CALLBACK), "{callback}");
    assert_eq!(setup.origin.count(), 0);

    let response = client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/dashboard?tab=1");
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .unwrap();
    for attribute in [
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=43200",
    ] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains("Domain"), "{session}");
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with(&format!("{LOGIN_COOKIE}=;")) && c.contains("Max-Age=0")),
        "the login cookie is cleared: {cookies:?}"
    );
    assert_eq!(
        setup.origin.count(),
        0,
        "the callback itself is not forwarded"
    );

    // Identity headers a client sends are replaced by the edge's.
    let response = client
        .get("https://app.test/dashboard?tab=1")
        .header("postern-identity-login", "mallory@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "origin ok");
    assert_eq!(setup.origin.count(), 1);
    {
        let received = setup.origin.received.lock().unwrap();
        let headers = &received[0].0.headers;
        assert_eq!(headers["postern-gate"], "oidc");
        assert_eq!(headers["postern-identity"], "user:alice@example.com");
        assert_eq!(headers["postern-identity-login"], "alice@example.com");
        assert_eq!(headers.get_all("postern-identity-login").iter().count(), 1);
        assert_eq!(headers["postern-identity-groups"], "eng,admins");
        assert_eq!(headers["postern-identity-name"], "Alice Example");
    }

    // Logout clears the session: the next visit is sent to the IdP again.
    let response = client
        .get("https://app.test/.postern/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cleared = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with(&format!("{SESSION_COOKIE}=;")) && cleared.contains("Max-Age=0"));
    start_login(&client, "/dashboard").await;
    assert_eq!(setup.origin.count(), 1);

    let summary = setup.edge.audit.summary();
    assert!(
        summary.contains(&(Some("oidc".into()), "allow".into(), None, 200)),
        "{summary:?}"
    );
    assert!(
        summary.contains(&(Some("oidc".into()), "respond".into(), None, 302)),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_is_refused_and_never_reaches_the_origin() {
    let setup = setup().await;
    let client = setup.edge.client();
    let authorize = start_login(&client, "/").await;
    let browser = HeadlessBrowser::new().unwrap();
    let callback = browser
        .authorize(setup.idp.issuer(), &authorize, "bob@example.com", "bob-pw")
        .await
        .unwrap();
    let response = client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(
        response.headers().get_all("set-cookie").iter().all(|c| !c
            .to_str()
            .unwrap()
            .starts_with(&format!("{SESSION_COOKIE}="))),
        "no session for bob"
    );
    assert_eq!(response.text().await.unwrap(), "login_not_allowed\n");
    // Without a session he is sent back to the IdP, never to the origin.
    start_login(&client, "/").await;
    assert_eq!(setup.origin.count(), 0);
    let summary = setup.edge.audit.summary();
    assert!(
        summary.contains(&(
            Some("oidc".into()),
            "deny".into(),
            Some("login_not_allowed".into()),
            403
        )),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_state_missing_cookie_and_api_calls_are_refused() {
    let setup = setup().await;
    let client = setup.edge.client();
    let authorize = start_login(&client, "/").await;
    let browser = HeadlessBrowser::new().unwrap();
    let callback = browser
        .authorize(
            setup.idp.issuer(),
            &authorize,
            "alice@example.com",
            "alice-pw",
        )
        .await
        .unwrap();

    // The same code with another state: refused (login CSRF).
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "forged-state".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let response = client.get(forged.as_str()).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await.unwrap(), "login_failed\n");

    // The real callback in another browser (no login cookie): refused.
    let stranger = setup.edge.client();
    let response = stranger.get(callback.as_str()).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await.unwrap(), "login_failed\n");

    // An API call without a session is not redirected.
    let response = client
        .post("https://app.test/api")
        .header("accept", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await.unwrap(), "login_required\n");

    // A forged session cookie is no session.
    let response = stranger
        .get("https://app.test/")
        .header("cookie", format!("{SESSION_COOKIE}=eyJ4IjoxfQ.AAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(setup.origin.count(), 0);
}

//! The lab's OpenID Provider issues id_tokens with the right email and groups through both
//! flows, and rejects a wrong password.

// Test helpers outside #[test] fns may unwrap and panic too: a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use postern_lab::idp::browser::{
    AuthCodeClient, HeadlessBrowser, Tokens, auth_code_login, device_flow_login,
};
use postern_lab::idp::{IdpConfig, OidcProvider};
use serde_json::json;

const WEB_REDIRECT: &str = "http://127.0.0.1:1/oidc/callback";

fn start_idp() -> OidcProvider {
    OidcProvider::start(IdpConfig {
        web_redirect_uris: vec![
            WEB_REDIRECT.to_owned(),
            "http://127.0.0.1:2/ingress/callback".to_owned(),
        ],
        web_client_secret: "s3cret-for-test".to_owned(),
    })
    .unwrap()
}

fn assert_identity(tokens: &Tokens, email: &str, groups: serde_json::Value) {
    let claims = tokens.id_token_claims().unwrap();
    assert_eq!(claims["email"], email, "{claims}");
    assert_eq!(claims["groups"], groups, "{claims}");
}

fn web_client(idp: &OidcProvider) -> AuthCodeClient<'_> {
    AuthCodeClient {
        client_id: OidcProvider::WEB_CLIENT_ID,
        client_secret: Some(idp.web_client_secret()),
        redirect_uri: WEB_REDIRECT,
    }
}

#[tokio::test]
async fn alice_gets_her_groups_through_both_flows() {
    let idp = start_idp();
    let iss = idp.issuer();

    let device = device_flow_login(iss, "alice@example.com", "alice-pw")
        .await
        .unwrap();
    assert_identity(&device, "alice@example.com", json!(["eng", "admins"]));
    assert!(
        device.refresh_token.is_some(),
        "offline_access gives a refresh token"
    );
    let claims = device.id_token_claims().unwrap();
    assert_eq!(claims["iss"], iss);
    assert_eq!(claims["aud"], OidcProvider::CLI_CLIENT_ID);

    let code = auth_code_login(iss, web_client(&idp), "alice@example.com", "alice-pw")
        .await
        .unwrap();
    assert_identity(&code, "alice@example.com", json!(["eng", "admins"]));
    assert_eq!(
        code.id_token_claims().unwrap()["aud"],
        OidcProvider::WEB_CLIENT_ID
    );

    // The CLI's loopback redirect on an arbitrary port, public client (PKCE only).
    let cli = AuthCodeClient {
        client_id: OidcProvider::CLI_CLIENT_ID,
        client_secret: None,
        redirect_uri: "http://127.0.0.1:53682/callback",
    };
    let loopback = auth_code_login(iss, cli, "alice@example.com", "alice-pw")
        .await
        .unwrap();
    assert_identity(&loopback, "alice@example.com", json!(["eng", "admins"]));
}

#[tokio::test]
async fn bob_and_carol_get_their_own_groups() {
    let idp = start_idp();
    let iss = idp.issuer();
    let bob = device_flow_login(iss, "bob@example.com", "bob-pw")
        .await
        .unwrap();
    assert_identity(&bob, "bob@example.com", json!(["contractors"]));
    let bob = auth_code_login(iss, web_client(&idp), "bob@example.com", "bob-pw")
        .await
        .unwrap();
    assert_identity(&bob, "bob@example.com", json!(["contractors"]));
    let carol = auth_code_login(iss, web_client(&idp), "carol@example.com", "carol-pw")
        .await
        .unwrap();
    assert_identity(&carol, "carol@example.com", json!([]));
}

#[tokio::test]
async fn wrong_password_and_wrong_secret_fail() {
    let idp = start_idp();
    let iss = idp.issuer();
    let err = device_flow_login(iss, "alice@example.com", "bob-pw")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rejected the login"), "{err}");
    let err = auth_code_login(iss, web_client(&idp), "alice@example.com", "wrong")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rejected the login"), "{err}");
    let err = auth_code_login(iss, web_client(&idp), "mallory@example.com", "x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rejected the login"), "{err}");

    let bad_secret = AuthCodeClient {
        client_secret: Some("not-the-secret"),
        ..web_client(&idp)
    };
    let err = auth_code_login(iss, bad_secret, "alice@example.com", "alice-pw")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid_client"), "{err}");
}

#[tokio::test]
async fn browser_stops_at_the_relying_partys_callback() {
    let idp = start_idp();
    let browser = HeadlessBrowser::new().unwrap();
    // An unregistered redirect URI is refused by the IdP, not followed.
    let url = format!(
        "{}/auth?client_id=postern-web&response_type=code&scope=openid&state=s1\
         &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256\
         &redirect_uri=http%3A%2F%2F127.0.0.1%3A2%2Fingress%2Fcallback",
        idp.issuer()
    );
    let back = browser
        .authorize(idp.issuer(), &url, "bob@example.com", "bob-pw")
        .await
        .unwrap();
    assert_eq!(
        back.as_str().split('?').next(),
        Some("http://127.0.0.1:2/ingress/callback")
    );
    assert!(back.query_pairs().any(|(k, v)| k == "state" && v == "s1"));
    assert!(back.query_pairs().any(|(k, _)| k == "code"));

    let unregistered = url.replace("ingress%2Fcallback", "evil");
    let err = browser
        .authorize(idp.issuer(), &unregistered, "bob@example.com", "bob-pw")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redirect_uri"), "{err}");
}

#[test]
fn idp_runs_inside_a_lab_host_and_a_home_logs_in_through_the_nat() {
    use postern_lab::netlab::{Host, NatLab, NatLabConfig};
    let lab = NatLab::start(NatLabConfig::default()).unwrap();
    let idp = OidcProvider::start_in(
        lab.netns(Host::Coord),
        Host::Coord.addr(),
        9400,
        IdpConfig::default(),
    )
    .unwrap();
    assert_eq!(idp.issuer(), "http://198.18.0.10:9400");
    let issuer = idp.issuer().to_owned();
    let tokens = lab
        .run_in(Host::HomeB, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(device_flow_login(&issuer, "bob@example.com", "bob-pw"))
        })
        .unwrap()
        .unwrap();
    assert_identity(&tokens, "bob@example.com", json!(["contractors"]));
}

//! Interactive login end to end: the real `postern-coord` binary as the OIDC relying party
//! of the lab's real OpenID Provider, node control clients that register without an auth
//! key, and a headless browser playing the person.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use postern_lab::LabProcess;
use postern_lab::idp::browser::HeadlessBrowser;
use postern_lab::idp::{IdpConfig, OidcProvider};
use postern_node::control::{ClientConfig, ControlClient, RegistrationState, SessionConfig};
use postern_proto::netmap::Netmap;
use postern_proto::{DiscoPrivateKey, MachinePrivateKey, NodePrivateKey};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_postern-coord");
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "coord-test-secret";

/// The IdP and a coord that uses it, on loopback.
struct LoginLab {
    idp: OidcProvider,
    coord: LabProcess,
    addr: String,
    _dir: tempfile::TempDir,
}

impl LoginLab {
    /// Starts the IdP (with the coord's callback registered) and `postern-coord serve`
    /// with interactive login and `extra` flags, and waits until the coord answers.
    fn start(extra: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let idp = OidcProvider::start(IdpConfig {
            web_redirect_uris: vec![format!("http://{addr}/oidc/callback")],
            web_client_secret: SECRET.into(),
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("oidc-secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        // Everyone may reach everyone: these tests are about who logs in, not the policy.
        let policy = dir.path().join("policy.hujson");
        std::fs::write(
            &policy,
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#,
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--listen", &addr, "--admin-listen", "127.0.0.1:0"])
            .arg("--policy")
            .arg(&policy)
            .args(["--oidc-issuer", idp.issuer()])
            .args(["--oidc-client-id", OidcProvider::WEB_CLIENT_ID])
            .arg("--oidc-client-secret-file")
            .arg(&secret_file)
            .args(extra);
        let mut coord =
            LabProcess::spawn("postern-coord", cmd, &dir.path().join("coord.log")).unwrap();
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(&addr).is_err() {
            coord.check_running().unwrap();
            assert!(
                Instant::now() < deadline,
                "coord never listened: {}",
                coord.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            idp,
            coord,
            addr,
            _dir: dir,
        }
    }

    /// A node that registers without an auth key.
    fn node(&self, hostname: &str, device: bool) -> ControlClient {
        let rng = &mut rand::rngs::OsRng;
        let session = SessionConfig {
            node_key: NodePrivateKey::generate(rng).public_key(),
            disco_key: DiscoPrivateKey::generate(rng).public_key(),
            hostname: hostname.into(),
            auth_key: None,
            requested_tags: Vec::new(),
            ephemeral: false,
            endpoints: Vec::new(),
            home_relay: None,
        };
        let mut config = ClientConfig::new(&self.addr, MachinePrivateKey::generate(rng), session);
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(400);
        config.device_login = device;
        ControlClient::spawn(config)
    }

    fn logs(&self) -> String {
        format!(
            "coord log:\n{}\nIdP log:\n{}",
            self.coord.log_tail(),
            self.idp.log_tail()
        )
    }

    /// Waits until `client`'s registration satisfies `pred`.
    async fn registration(
        &self,
        client: &ControlClient,
        what: &str,
        pred: impl Fn(&RegistrationState) -> bool,
    ) -> RegistrationState {
        let mut rx = client.registration();
        let found = tokio::time::timeout(WAIT, rx.wait_for(|state| pred(state)))
            .await
            .map(|r| r.map(|state| state.clone()));
        match found {
            Ok(Ok(state)) => state,
            _ => panic!(
                "timed out waiting for {what}; registration: {:?}\n{}",
                *rx.borrow(),
                self.logs()
            ),
        }
    }

    async fn login_url(&self, client: &ControlClient) -> String {
        match self
            .registration(client, "a login link", |s| {
                matches!(s, RegistrationState::LoginRequired { .. })
            })
            .await
        {
            RegistrationState::LoginRequired { url } => url,
            other => panic!("{other:?}"),
        }
    }

    async fn netmap(
        &self,
        client: &ControlClient,
        what: &str,
        pred: impl Fn(&Netmap) -> bool,
    ) -> Netmap {
        let mut rx: watch::Receiver<Option<Netmap>> = client.netmap();
        let found = tokio::time::timeout(WAIT, rx.wait_for(|m| m.as_ref().is_some_and(&pred)))
            .await
            .map(|r| r.map(|map| map.clone()));
        match found {
            Ok(Ok(map)) => map.unwrap(),
            _ => panic!(
                "timed out waiting for {what}: {:?}\n{}",
                *rx.borrow(),
                self.logs()
            ),
        }
    }

    /// Logs in through the browser at `url` as `user` and returns the coord's answer page
    /// (status, body).
    async fn browser_login(
        &self,
        browser: &HeadlessBrowser,
        url: &str,
        user: &str,
    ) -> (u16, String) {
        let password = format!("{}-pw", user.split('@').next().unwrap());
        let callback = browser
            .authorize(self.idp.issuer(), url, user, &password)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        get(browser, callback.as_str()).await
    }
}

async fn get(browser: &HeadlessBrowser, url: &str) -> (u16, String) {
    let response = browser.client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn rejected_reason(state: &RegistrationState) -> Option<&str> {
    match state {
        RegistrationState::Rejected { reason } => Some(reason),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_and_carol_log_in_and_their_nodes_are_theirs_in_every_netmap() {
    let lab = LoginLab::start(&["--allowed-domains", "example.com"]);
    let laptop = lab.node("laptop", false);
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
    let (status, page) = lab.browser_login(&browser, &url, "alice@example.com").await;
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
    let desktop = lab.node("desktop", false);
    let url = lab.login_url(&desktop).await;
    let (status, page) = lab
        .browser_login(&HeadlessBrowser::new().unwrap(), &url, "carol@example.com")
        .await;
    assert_eq!(status, 200, "{page}");
    let map = lab
        .netmap(&laptop, "carol's desktop as a peer", |m| {
            m.peers.iter().any(|p| p.name == "desktop.tailnet.internal")
        })
        .await;
    let peer = map
        .peers
        .iter()
        .find(|p| p.name == "desktop.tailnet.internal")
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
    let lab = LoginLab::start(&["--allowed-groups", "eng"]);
    let node = lab.node("bobs-box", false);
    let url = lab.login_url(&node).await;
    let (status, page) = lab
        .browser_login(&HeadlessBrowser::new().unwrap(), &url, "bob@example.com")
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

    let lab = LoginLab::start(&["--allowed-domains", "corp.example"]);
    let node = lab.node("alices-box", false);
    let url = lab.login_url(&node).await;
    let (status, page) = lab
        .browser_login(&HeadlessBrowser::new().unwrap(), &url, "alice@example.com")
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
    let lab = LoginLab::start(&["--oidc-device-client-id", OidcProvider::CLI_CLIENT_ID]);
    let server = lab.node("headless-server", true);
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
    let lab = LoginLab::start(&[]);
    let server = lab.node("headless-server", true);
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
    let lab = LoginLab::start(&[]);

    // A tampered nonce: the IdP signs it into the ID token, the coord expects its own.
    let node = lab.node("nonce", false);
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
    let node = lab.node("state", false);
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
    let node = lab.node("elsewhere", false);
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

//! A lab for tests that log nodes in through the real OpenID Provider: the lab's IdP, the
//! real `postern-coord serve` (restartable on the same address and state), node control
//! clients, and a headless browser playing each person.

#![allow(
    dead_code, // each test file uses a different part
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use postern_lab::LabProcess;
use postern_lab::idp::browser::HeadlessBrowser;
use postern_lab::idp::{IdpConfig, OidcProvider};
use postern_node::control::{ClientConfig, ControlClient, RegistrationState, SessionConfig};
use postern_proto::control::AuthKeySecret;
use postern_proto::netmap::Netmap;
use postern_proto::{DiscoPrivateKey, MachinePrivateKey, NodePrivateKey};
use tokio::sync::watch;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_postern-coord");
/// How long to wait for anything (a loaded 2-core machine runs many tests at once).
pub const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "coord-test-secret";
/// The tailnet domain of the lab's coord.
pub const DOMAIN: &str = "example.test";

/// The IdP and a coord that uses it, on loopback.
pub struct OidcLab {
    pub idp: OidcProvider,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub policy_path: PathBuf,
    extra: Vec<String>,
    coord: Option<LabProcess>,
    starts: u32,
}

/// What a node needs to come back as the same machine.
#[derive(Clone)]
pub struct NodeIdentity {
    pub hostname: String,
    pub machine: MachinePrivateKey,
    pub node: NodePrivateKey,
    pub disco: DiscoPrivateKey,
}

impl NodeIdentity {
    /// Fresh keys for `hostname`.
    pub fn new(hostname: &str) -> Self {
        let rng = &mut rand::rngs::OsRng;
        Self {
            hostname: hostname.into(),
            machine: MachinePrivateKey::generate(rng),
            node: NodePrivateKey::generate(rng),
            disco: DiscoPrivateKey::generate(rng),
        }
    }
}

impl OidcLab {
    /// Starts the IdP (with the coord's callback registered) and `postern-coord serve`
    /// with interactive login, `policy` in its policy file and `extra` flags.
    pub fn start(policy: &str, extra: &[&str]) -> Self {
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
        std::fs::write(dir.path().join("oidc-secret"), format!("{SECRET}\n")).unwrap();
        let policy_path = dir.path().join("policy.hujson");
        std::fs::write(&policy_path, policy).unwrap();
        let mut lab = Self {
            idp,
            addr,
            state_dir: dir.path().join("state"),
            policy_path,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            coord: None,
            starts: 0,
        };
        lab.start_coord();
        lab
    }

    /// Starts the coord (again, after [`Self::kill_coord`]) on the same address, state
    /// directory and policy file, and waits until it answers `/healthz`.
    pub fn start_coord(&mut self) {
        assert!(self.coord.is_none(), "the coord is running");
        self.starts += 1;
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--listen", &self.addr, "--admin-listen", "127.0.0.1:0"])
            .args(["--tailnet-domain", DOMAIN])
            .arg("--policy")
            .arg(&self.policy_path)
            .args(["--oidc-issuer", self.idp.issuer()])
            .args(["--oidc-client-id", OidcProvider::WEB_CLIENT_ID])
            .arg("--oidc-client-secret-file")
            .arg(self.dir.path().join("oidc-secret"))
            .args(&self.extra)
            .env("RUST_LOG", "info");
        let log = self.dir.path().join(format!("coord-{}.log", self.starts));
        let mut coord = LabProcess::spawn("postern-coord", cmd, &log).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(answer) = plain_http::get(&self.addr, "/healthz")
                && answer.ends_with("ok\n")
            {
                break;
            }
            coord.check_running().unwrap();
            assert!(
                Instant::now() < deadline,
                "coord never became healthy: {}",
                coord.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.coord = Some(coord);
    }

    /// Kills the coord with SIGKILL (no chance to tidy up) and reaps it.
    pub fn kill_coord(&mut self) {
        let mut coord = self.coord.take().expect("the coord is running");
        let pid = coord.pid().to_string();
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
        );
        coord.stop(); // reaps it
    }

    /// The current coord's log.
    pub fn coord_log(&self) -> String {
        let log = self.dir.path().join(format!("coord-{}.log", self.starts));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// The coord's and the IdP's logs, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "coord log:\n{}\nIdP log:\n{}",
            self.coord_log(),
            self.idp.log_tail()
        )
    }

    /// Runs `postern-coord ARGS --state-dir STATE` and returns its standard output; fails
    /// the test on an error.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postern-coord {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs an admin command with `--json` and parses its output.
    pub fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.admin(&all)).unwrap()
    }

    /// The audit records (`postern-coord audit --json`) of `action`.
    pub fn audit_records(&self, action: &str) -> Vec<serde_json::Value> {
        self.admin_json(&["audit"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == action)
            .cloned()
            .collect()
    }

    /// Waits until there are at least `count` audit records of `action`; returns them.
    pub async fn wait_audit(&self, action: &str, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let records = self.audit_records(action);
            if records.len() >= count {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {count} {action} records: {records:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes an auth key with `keys create ARGS`.
    pub fn auth_key(&self, args: &[&str]) -> AuthKeySecret {
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        AuthKeySecret::new(self.admin(&all).trim())
    }

    /// Replaces the policy file atomically (as editors do: write aside, rename over).
    pub fn write_policy(&self, text: &str) {
        let aside = self.policy_path.with_extension("tmp");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, &self.policy_path).unwrap();
    }

    /// A node control client for `identity`, registering with `auth_key`, or through an
    /// interactive login without one.
    pub fn node(&self, identity: &NodeIdentity, auth_key: Option<AuthKeySecret>) -> ControlClient {
        self.node_with(identity, auth_key, false)
    }

    /// As [`Self::node`], asking for the device grant's login (`device_login`) instead of
    /// a browser link when it registers without an auth key.
    pub fn node_with(
        &self,
        identity: &NodeIdentity,
        auth_key: Option<AuthKeySecret>,
        device_login: bool,
    ) -> ControlClient {
        let session = SessionConfig {
            node_key: identity.node.public_key(),
            disco_key: identity.disco.public_key(),
            hostname: identity.hostname.clone(),
            auth_key,
            requested_tags: Vec::new(),
            ephemeral: false,
            endpoints: vec!["192.0.2.10:41641".parse().unwrap()],
            home_relay: None,
        };
        let mut config = ClientConfig::new(&self.addr, identity.machine.clone(), session);
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(400);
        config.device_login = device_login;
        ControlClient::spawn(config)
    }

    /// Waits until `client`'s registration satisfies `pred`.
    pub async fn registration(
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

    /// Waits for `client`'s login link.
    pub async fn login_url(&self, client: &ControlClient) -> String {
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

    /// Logs `client` in through a fresh browser as `user` (password `NAME-pw`); returns the
    /// coord's answer page (status, body).
    pub async fn browser_login(&self, client: &ControlClient, user: &str) -> (u16, String) {
        let url = self.login_url(client).await;
        self.browser_login_at(&HeadlessBrowser::new().unwrap(), &url, user)
            .await
    }

    /// Logs in as `user` through `browser` (keeping its cookies) at the login link `url`;
    /// returns the coord's answer page (status, body).
    pub async fn browser_login_at(
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

    /// Waits until `client`'s netmap satisfies `pred`.
    pub async fn netmap(
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
                "timed out waiting for {what}: {:#?}\n{}",
                *rx.borrow(),
                self.logs()
            ),
        }
    }

    /// The value of a metric (a counter or gauge without labels) of the running coord.
    pub fn metric(&self, name: &str) -> u64 {
        let text = plain_http::get(&self.addr, "/metrics").unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// GET through `browser` (with its cookies): (status, body).
pub async fn get(browser: &HeadlessBrowser, url: &str) -> (u16, String) {
    let response = browser.client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The peers' names, sorted.
pub fn peer_names(map: &Netmap) -> Vec<String> {
    let mut names: Vec<_> = map.peers.iter().map(|p| p.name.clone()).collect();
    names.sort();
    names
}

/// A node's tailnet name: `host.example.test`.
pub fn fqdn(host: &str) -> String {
    format!("{host}.{DOMAIN}")
}

/// Plain blocking HTTP without a client library: these helpers run on the test's threads.
mod plain_http {
    use std::io::{Read, Write};

    /// `GET path` on `addr` with HTTP/1.0; the body (or the whole answer if unparsable).
    pub fn get(addr: &str, path: &str) -> std::io::Result<String> {
        let mut tcp = std::net::TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        tcp.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or(out))
    }
}

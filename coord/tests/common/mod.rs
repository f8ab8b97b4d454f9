//! Helpers for tests that run the real `postern-coord` binary and node control clients.

#![allow(
    dead_code, // each test file uses a different part
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postern_node::control::{ClientConfig, ControlClient, SessionConfig};
use postern_proto::control::AuthKeySecret;
use postern_proto::netmap::Netmap;
use postern_proto::{DiscoPrivateKey, MachinePrivateKey, NodePrivateKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_postern-coord");

/// How long to wait for anything.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `postern-coord serve` with its own state directory and policy file; killed
/// on drop.
pub struct CoordProcess {
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub policy_path: PathBuf,
    pub log_path: PathBuf,
    pub addr: String,
    extra: Vec<String>,
    child: Option<Child>,
}

impl CoordProcess {
    /// Starts `serve` with `policy` in a file and `extra` arguments; waits for /healthz.
    pub async fn start(policy: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let policy_path = dir.path().join("policy.hujson");
        let log_path = dir.path().join("coord.log");
        std::fs::write(&policy_path, policy).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut coord = Self {
            dir,
            state_dir,
            policy_path,
            log_path,
            addr,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        coord.spawn().await;
        coord
    }

    /// Stops the coord (SIGTERM) and starts it again on the same address and state.
    pub async fn restart(mut self) -> Self {
        self.signal("-TERM");
        let mut child = self.child.take().unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "exit {status}: {}", self.log());
        self.spawn().await;
        self
    }

    async fn spawn(&mut self) {
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--listen", &self.addr, "--tailnet-domain", "example.test"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--policy")
            .arg(&self.policy_path)
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log_path)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.child = Some(child);
        let coord = self;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(answer) = http_get(&coord.addr, "/healthz").await
                && answer.ends_with("ok\n")
            {
                break;
            }
            if let Some(status) = coord.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("coord exited with {status}: {}", coord.log());
            }
            assert!(
                Instant::now() < deadline,
                "coord never became healthy: {}",
                coord.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `postern-coord ARGS --state-dir STATE`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .unwrap()
    }

    /// Runs an admin command and returns its standard output; fails the test on an error.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = self.run(args);
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

    /// The audit log's actions, oldest first.
    pub fn audit_actions(&self) -> Vec<String> {
        self.admin_json(&["audit"])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until the audit log has a record of `action` (the coord's own records, like
    /// an expiry it noticed, are written within a lifecycle tick).
    pub async fn wait_audit(&self, action: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let actions = self.audit_actions();
            if actions.iter().any(|a| a == action) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {action} record in {actions:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes an auth key with `keys create ARGS`.
    pub fn auth_key(&self, args: &[&str]) -> AuthKeySecret {
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        AuthKeySecret::new(String::from_utf8(out.stdout).unwrap().trim())
    }

    /// Replaces the policy file atomically (as editors do: write aside, rename over).
    pub fn write_policy(&self, text: &str) {
        let aside = self.policy_path.with_extension("tmp");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, &self.policy_path).unwrap();
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; returns the log.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a metric (a counter or gauge without labels).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = http_get(&self.addr, "/metrics").await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until /metrics has the line `line`.
    pub async fn wait_metric(&self, line: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = http_get(&self.addr, "/metrics").await.unwrap();
            if text.lines().any(|l| l == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never had {line:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`-HUP`, `-TERM`).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Stops the coord with SIGTERM and checks it exits cleanly.
    pub fn stop(mut self) {
        self.signal("-TERM");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}: {}", self.log());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("coord did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CoordProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A control client registering as `hostname`.
pub fn client(addr: &str, key: Option<AuthKeySecret>, hostname: &str) -> ControlClient {
    client_with(
        addr,
        key,
        hostname,
        MachinePrivateKey::generate(&mut rand::rngs::OsRng),
        false,
    )
}

/// A control client with a given machine key (to come back as the same machine).
pub fn client_with(
    addr: &str,
    key: Option<AuthKeySecret>,
    hostname: &str,
    machine: MachinePrivateKey,
    ephemeral: bool,
) -> ControlClient {
    let rng = &mut rand::rngs::OsRng;
    let session = SessionConfig {
        node_key: NodePrivateKey::generate(rng).public_key(),
        disco_key: DiscoPrivateKey::generate(rng).public_key(),
        hostname: hostname.into(),
        auth_key: key,
        requested_tags: Vec::new(),
        ephemeral,
        endpoints: vec!["192.0.2.10:41641".parse().unwrap()],
        home_relay: None,
    };
    let mut config = ClientConfig::new(addr, machine, session);
    // The default silence timeout (longer than the coord's keepalive interval): a shorter
    // one made clients redial on every quiet spell, and a redial after the node's own key
    // expired ends the client, which raced the tests that wait for expiry.
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(400);
    ControlClient::spawn(config)
}

/// Waits until the netmap satisfies `pred`.
pub async fn wait_for(
    rx: &mut watch::Receiver<Option<Netmap>>,
    what: &str,
    pred: impl Fn(&Netmap) -> bool,
) -> Netmap {
    let result = tokio::time::timeout(WAIT, rx.wait_for(|map| map.as_ref().is_some_and(&pred)))
        .await
        .map(|found| found.unwrap().clone());
    match result {
        Ok(found) => found.unwrap(),
        Err(_) => panic!(
            "timed out waiting for {what}; last netmap: {:?}",
            rx.borrow()
        ),
    }
}

/// The peers' names, sorted.
pub fn peer_names(map: &Netmap) -> Vec<String> {
    let mut names: Vec<_> = map.peers.iter().map(|p| p.name.clone()).collect();
    names.sort();
    names
}

/// A plain HTTP/1.0 GET; the whole answer.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await?;
    Ok(out)
}

/// Waits until `node` holds its control connection.
pub async fn connected(node: &ControlClient) {
    let deadline = Instant::now() + WAIT;
    while !node.is_connected() {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a GitHub-webhook-gated funnel of `port` named `name` on `node`; returns its
/// hostname.
pub async fn open_webhook_funnel(node: &ControlClient, port: u16, name: &str) -> String {
    use postern_proto::funnel::{
        FunnelChange, FunnelProtocol, FunnelSpec, GateMode, GateSecret, GateSpec,
    };
    let spec = FunnelSpec {
        port,
        name: Some(name.into()),
        protocol: FunnelProtocol::Http,
        ttl_secs: None,
        gates: vec![GateSpec::Webhook {
            provider: "github".into(),
            secrets: vec![GateSecret::new("s3cret")],
            tolerance_secs: None,
        }],
        gate_mode: GateMode::All,
        rate_limit: None,
    };
    let opened = node.funnel(FunnelChange::Open(spec)).await.unwrap();
    opened[0].hostname.clone()
}

/// The `n`th edge decision for `hostname`, as an ingress reports it: `result` `allow`
/// (200) or `deny` (401, `signature_mismatch`).
pub fn edge_decision(hostname: &str, n: u64, result: &str) -> postern_proto::funnel::EdgeDecision {
    postern_proto::funnel::EdgeDecision {
        id: 0,
        at_ms: 1_795_939_200_000 + i64::try_from(n).unwrap(),
        funnel: hostname.to_owned(),
        client: format!("203.0.113.7:{}", 5000 + n),
        method: "POST".into(),
        path: format!("/webhook/{n}"),
        gate: Some("webhook:github".into()),
        result: result.into(),
        reason: (result == "deny").then(|| "signature_mismatch".into()),
        status: if result == "deny" { 401 } else { 200 },
        bytes: 18,
        duration_ms: 2,
    }
}

//! Shared setup of the agent tests through the real binaries: a `postern-coord serve` on
//! loopback ([`Coord`]), nodes with their own state directories ([`Node`]), and `postern
//! nc` processes ([`Nc`]).
//!
//! `postern-coord` is found next to the `postern` binary (both are built by
//! `cargo build --bins`, which `scripts/test` runs first).

#![allow(
    dead_code, // each test binary uses a part of this module
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const POSTERN: &str = env!("CARGO_BIN_EXE_postern");

pub fn coord_bin() -> PathBuf {
    let path = Path::new(POSTERN).with_file_name("postern-coord");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (scripts/test does) before these tests",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A `postern-coord serve` on loopback with its own state directory.
pub struct Coord {
    pub state: PathBuf,
    pub addr: SocketAddr,
    pub child: Option<Child>,
    pub policy: Option<PathBuf>,
    /// Extra `postern-coord serve` arguments.
    pub extra_args: Vec<String>,
}

impl Coord {
    pub fn new(dir: &Path) -> Self {
        Self::with_policy(dir, None)
    }

    /// A coord enforcing the policy file `policy` (HuJSON; the built-in policy if `None`).
    pub fn with_policy(dir: &Path, policy: Option<PathBuf>) -> Self {
        Self::with_args(dir, policy, &[])
    }

    /// A coord with `policy` and extra `serve` arguments (`--funnel-domain D`).
    pub fn with_args(dir: &Path, policy: Option<PathBuf>, extra_args: &[&str]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::with_args_at(dir, addr, policy, extra_args)
    }

    /// Like [`Coord::with_args`], listening on `addr` (known before the coord starts, e.g.
    /// for the IdP's registered callback URL).
    pub fn with_args_at(
        dir: &Path,
        addr: SocketAddr,
        policy: Option<PathBuf>,
        extra_args: &[&str],
    ) -> Self {
        let mut coord = Self {
            state: dir.join("coord"),
            addr,
            child: None,
            policy,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        // Create the key first: the store exists before `serve` starts.
        coord.auth_key();
        coord.start();
        coord
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn auth_key(&self) -> String {
        self.auth_key_for(None)
    }

    /// A reusable auth key whose nodes belong to `user` (`tagged-devices` if `None`).
    pub fn auth_key_for(&self, user: Option<&str>) -> String {
        let mut command = Command::new(coord_bin());
        command
            .args(["keys", "create", "--reusable", "--state-dir"])
            .arg(&self.state);
        if let Some(user) = user {
            command.args(["--user", user]);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn start(&mut self) {
        let log = std::fs::File::create(self.state.with_extension("log")).unwrap();
        let child = Command::new(coord_bin())
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--listen")
            .arg(self.addr.to_string())
            // Several coords run at once: never the default admin port.
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(
                self.policy
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--policy"), p.as_os_str()]),
            )
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.addr;
        wait_for("the coord to answer", Duration::from_secs(20), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One node: a state directory and, while up, a `postern up` process.
pub struct Node {
    pub name: &'static str,
    pub state: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Node {
    pub fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            name,
            state: dir.join(name),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub fn postern(&self, args: &[&str]) -> Output {
        Command::new(POSTERN)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .env_remove("POSTERN_CONFIG")
            .env("XDG_CONFIG_HOME", self.state.with_extension("config"))
            .output()
            .unwrap()
    }

    /// `postern login --json --coord URL --hostname NAME --state-dir STATE`.
    fn login_command(&self, coord: &Coord) -> Command {
        let mut command = Command::new(POSTERN);
        command
            .args([
                "login",
                "--json",
                "--coord",
                &coord.url(),
                "--hostname",
                self.name,
            ])
            .arg("--state-dir")
            .arg(&self.state);
        command
    }

    pub fn login(&self, coord: &Coord, key: &str) {
        let key_file = self.state.with_extension("authkey");
        std::fs::write(&key_file, key).unwrap();
        let out = self
            .login_command(coord)
            .arg("--auth-key-file")
            .arg(&key_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "login of {}: {stderr}", self.name);
        assert!(!stderr.contains(key), "the auth key must not be printed");
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["name"], self.name, "{answer}");
    }

    /// `postern login` without an auth key, as a person does it: the command prints the
    /// coord's login URL and waits; a headless browser opens it, signs in at the lab's IdP
    /// as `user` (password `NAME-pw`) and follows the IdP's redirect back to the coord; the
    /// command then completes.
    pub fn login_oidc(&self, coord: &Coord, idp_issuer: &str, user: &str) {
        let mut child = self
            .login_command(coord)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The login URL is on standard error, on a line of its own.
        let stderr = child.stderr.take().unwrap();
        let (lines, printed) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        let url = loop {
            let line = printed
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no login URL from postern login: {seen:?}"));
            let trimmed = line.trim().to_owned();
            seen.push(line);
            if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
                break trimmed;
            }
        };
        let password = format!("{}-pw", user.split('@').next().unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let browser = postern_lab::idp::browser::HeadlessBrowser::new().unwrap();
            let callback = browser
                .authorize(idp_issuer, &url, user, &password)
                .await
                .unwrap_or_else(|e| panic!("signing in as {user} at the IdP: {e}"));
            let page = browser.client().get(callback).send().await.unwrap();
            assert!(
                page.status().is_success(),
                "the coord's callback answered {}",
                page.status()
            );
        });
        let status = wait_for("postern login to finish", Duration::from_secs(30), || {
            child.try_wait().unwrap()
        });
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        assert!(
            status.success(),
            "login of {} exited with {status}: {seen:?}",
            self.name
        );
        let answer: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(answer["name"], self.name, "{answer}");
    }

    pub fn up(&mut self) {
        self.up_with(&[]);
    }

    pub fn up_with(&mut self, extra: &[&str]) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(POSTERN)
            .arg("up")
            .args(extra)
            .arg("--state-dir")
            .arg(&self.state)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for(
            &format!("{} to answer status", self.name),
            Duration::from_secs(30),
            || {
                if let Some(child) = self.child.as_mut()
                    && let Some(status) = child.try_wait().unwrap()
                {
                    panic!("{} exited with {status}:\n{}", self.name, self.logs());
                }
                self.try_status()
            },
        );
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = self.postern(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("status of {} failed:\n{}", self.name, self.logs()))
    }

    pub fn peer(&self, name: &str) -> Option<Value> {
        let status = self.status();
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    /// `postern metrics`: the node's Prometheus text.
    #[allow(dead_code)] // not every test binary that shares this module reads metrics
    pub fn metrics(&self) -> Metrics {
        let out = self.postern(&["metrics"]);
        assert!(
            out.status.success(),
            "postern metrics on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Metrics(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `postern down`, and waits for the process to exit successfully.
    pub fn down(&mut self) {
        let out = self.postern(&["down"]);
        assert!(
            out.status.success(),
            "down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut child = self.child.take().unwrap();
        let status = wait_for("up to exit after down", Duration::from_secs(10), || {
            child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "up exited with {status}:\n{}",
            self.logs()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }
}

/// A `postern nc` process with its stdin open and its stdout read by a thread.
pub struct Nc {
    child: Child,
    stdin: Option<ChildStdin>,
    output: mpsc::Receiver<Vec<u8>>,
    received: Vec<u8>,
}

impl Nc {
    /// `postern nc -l PORT` on `node`; returns once it listens.
    pub fn listen(node: &Node, port: u16) -> Self {
        let mut nc = Self::spawn(node, &["nc", "-l", &port.to_string()]);
        let stderr = nc.child.stderr.take().unwrap();
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "nc -l said {line:?}");
        nc
    }

    pub fn connect(node: &Node, peer: &str, port: u16) -> Self {
        Self::spawn(node, &["nc", peer, &port.to_string()])
    }

    pub fn spawn(node: &Node, args: &[&str]) -> Self {
        let mut child = Command::new(POSTERN)
            .args(args)
            .arg("--state-dir")
            .arg(&node.state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            child,
            stdin,
            output: rx,
            received: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until `expected` arrived on stdout (after what arrived before).
    pub fn expect(&mut self, expected: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.received.len() < expected.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.received.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "expected {} bytes, got {}: {:?}",
                    expected.len(),
                    self.received.len(),
                    String::from_utf8_lossy(&self.received)
                ),
            }
        }
        let got: Vec<u8> = self.received.drain(..expected.len()).collect();
        assert_eq!(got, expected);
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    pub fn wait_success(mut self) {
        let status = wait_for("nc to exit", Duration::from_secs(20), || {
            self.child.try_wait().unwrap()
        });
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        assert!(status.success(), "nc exited with {status}: {stderr}");
    }
}

impl Drop for Nc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coord and two logged-in nodes, up and seeing each other online.
pub fn mesh(dir: &Path) -> (Coord, Node, Node) {
    mesh_with(dir, &[])
}

/// Like [`mesh`], with extra `postern up` arguments for alpha.
pub fn mesh_with(dir: &Path, alpha_args: &[&str]) -> (Coord, Node, Node) {
    mesh_custom(
        dir,
        &MeshOptions {
            alpha_args,
            ..MeshOptions::default()
        },
    )
}

/// How [`mesh_custom`] sets up the coord and the two nodes.
#[derive(Debug, Default)]
pub struct MeshOptions<'a> {
    /// Extra `postern up` arguments for alpha.
    pub alpha_args: &'a [&'a str],
    /// Extra `postern up` arguments for beta.
    pub beta_args: &'a [&'a str],
    /// The user alpha's auth key makes it belong to.
    pub alpha_user: Option<&'a str>,
    /// The user beta's auth key makes it belong to.
    pub beta_user: Option<&'a str>,
    /// The coord's policy file text (HuJSON).
    pub policy: Option<&'a str>,
    /// Extra `postern-coord serve` arguments.
    pub coord_args: &'a [&'a str],
}

/// A coord and two logged-in nodes as `options` says, up and seeing each other online.
pub fn mesh_custom(dir: &Path, options: &MeshOptions<'_>) -> (Coord, Node, Node) {
    let policy = options.policy.map(|text| {
        let path = dir.join("policy.hujson");
        std::fs::write(&path, text).unwrap();
        path
    });
    let coord = Coord::with_args(dir, policy, options.coord_args);
    let mut alpha = Node::new(dir, "alpha");
    let mut beta = Node::new(dir, "beta");
    alpha.login(&coord, &coord.auth_key_for(options.alpha_user));
    beta.login(&coord, &coord.auth_key_for(options.beta_user));
    alpha.up_with(options.alpha_args);
    beta.up_with(options.beta_args);
    for (node, other) in [(&alpha, "beta"), (&beta, "alpha")] {
        wait_for(
            &format!("{} to see {other} online", node.name),
            Duration::from_secs(30),
            || node.peer(other).filter(|p| p["online"] == true),
        );
        wait_for(
            &format!("{} to report the coord connected", node.name),
            Duration::from_secs(30),
            || (node.status()["coord_connected"] == true).then_some(()),
        );
    }
    (coord, alpha, beta)
}

/// What `postern metrics` printed.
#[allow(dead_code)] // not every test binary that shares this module reads metrics
pub struct Metrics(pub String);

#[allow(dead_code)]
impl Metrics {
    /// The value of one series, named with its labels as printed
    /// (`postern_node_peers`, `postern_node_peer_path{peer="a",path="direct"}`).
    pub fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{}", self.0))
    }
}

//! The agent through the real binaries: `postern-coord serve` on loopback, two `postern up`
//! nodes with their own state directories, and the commands a person types against them
//! (`login`, `status --json`, `nc`, `ping`, `down`).
//!
//! `postern-coord` is found next to the `postern` binary (both are built by
//! `cargo build --bins`, which `scripts/test` runs first).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const POSTERN: &str = env!("CARGO_BIN_EXE_postern");

fn coord_bin() -> PathBuf {
    let path = Path::new(POSTERN).with_file_name("postern-coord");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (scripts/test does) before these tests",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &mut Child) {
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
struct Coord {
    state: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Coord {
    fn new(dir: &Path) -> Self {
        let mut coord = Self {
            state: dir.join("coord"),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            child: None,
        };
        // Create the key first: the store exists before `serve` starts.
        coord.auth_key();
        coord.start();
        coord
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn auth_key(&self) -> String {
        let out = Command::new(coord_bin())
            .args(["keys", "create", "--reusable", "--state-dir"])
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.state.with_extension("log")).unwrap();
        let child = Command::new(coord_bin())
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--listen")
            .arg(self.addr.to_string())
            // Several coords run at once: never the default admin port.
            .args(["--admin-listen", "127.0.0.1:0"])
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

    fn stop(&mut self) {
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
struct Node {
    name: &'static str,
    state: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            name,
            state: dir.join(name),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    fn postern(&self, args: &[&str]) -> Output {
        Command::new(POSTERN)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .env_remove("POSTERN_CONFIG")
            .env("XDG_CONFIG_HOME", self.state.with_extension("config"))
            .output()
            .unwrap()
    }

    fn login(&self, coord: &Coord, key: &str) {
        let key_file = self.state.with_extension("authkey");
        std::fs::write(&key_file, key).unwrap();
        let out = Command::new(POSTERN)
            .args([
                "login",
                "--json",
                "--coord",
                &coord.url(),
                "--hostname",
                self.name,
            ])
            .arg("--auth-key-file")
            .arg(&key_file)
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "login of {}: {stderr}", self.name);
        assert!(!stderr.contains(key), "the auth key must not be printed");
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["name"], self.name, "{answer}");
    }

    fn up(&mut self) {
        self.up_with(&[]);
    }

    fn up_with(&mut self, extra: &[&str]) {
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

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_status(&self) -> Option<Value> {
        let out = self.postern(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("status of {} failed:\n{}", self.name, self.logs()))
    }

    fn peer(&self, name: &str) -> Option<Value> {
        let status = self.status();
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    /// `postern down`, and waits for the process to exit successfully.
    fn down(&mut self) {
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
struct Nc {
    child: Child,
    stdin: Option<ChildStdin>,
    output: mpsc::Receiver<Vec<u8>>,
    received: Vec<u8>,
}

impl Nc {
    /// `postern nc -l PORT` on `node`; returns once it listens.
    fn listen(node: &Node, port: u16) -> Self {
        let mut nc = Self::spawn(node, &["nc", "-l", &port.to_string()]);
        let stderr = nc.child.stderr.take().unwrap();
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "nc -l said {line:?}");
        nc
    }

    fn connect(node: &Node, peer: &str, port: u16) -> Self {
        Self::spawn(node, &["nc", peer, &port.to_string()])
    }

    fn spawn(node: &Node, args: &[&str]) -> Self {
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

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until `expected` arrived on stdout (after what arrived before).
    fn expect(&mut self, expected: &[u8]) {
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

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    fn wait_success(mut self) {
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
fn mesh(dir: &Path) -> (Coord, Node, Node) {
    mesh_with(dir, &[])
}

/// Like [`mesh`], with extra `postern up` arguments for alpha.
fn mesh_with(dir: &Path, alpha_args: &[&str]) -> (Coord, Node, Node) {
    let coord = Coord::new(dir);
    let key = coord.auth_key();
    let mut alpha = Node::new(dir, "alpha");
    let mut beta = Node::new(dir, "beta");
    alpha.login(&coord, &key);
    beta.login(&coord, &key);
    alpha.up_with(alpha_args);
    beta.up();
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

#[test]
fn two_nodes_carry_bytes_both_ways_and_show_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let socks5: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let socks5_arg = socks5.to_string();
    let (_coord, alpha, beta) = mesh_with(dir.path(), &["--socks5", &socks5_arg]);

    let status = alpha.status();
    assert_eq!(status["self"]["name"], "alpha");
    let alpha_ip = status["self"]["addresses"][0].as_str().unwrap().to_owned();
    assert!(alpha_ip.starts_with("100."), "{status}");

    // beta listens on its tailnet port 7000; alpha connects by short name.
    let mut server = Nc::listen(&beta, 7000);
    let mut client = Nc::connect(&alpha, "beta", 7000);
    client.send(b"hello from alpha\n");
    server.expect(b"hello from alpha\n");
    server.send(b"hello from beta\n");
    client.expect(b"hello from beta\n");
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    client.send(&big);
    server.expect(&big);
    client.close_stdin();
    server.close_stdin();
    client.wait_success();
    server.wait_success();

    // Both sides count the traffic and report a handshake on a direct path.
    for (node, other) in [(&alpha, "beta"), (&beta, "alpha")] {
        let peer = node.peer(other).unwrap();
        assert!(peer["last_handshake"].is_i64(), "{peer}");
        assert_eq!(peer["path"], "direct", "{peer}");
        assert!(peer["rx_bytes"].as_u64().unwrap() > 0, "{peer}");
        assert!(peer["tx_bytes"].as_u64().unwrap() > 0, "{peer}");
    }
    let received_by_beta = beta.peer("alpha").unwrap()["rx_bytes"].as_u64().unwrap();
    assert!(
        received_by_beta > 2_000_000,
        "beta counted {received_by_beta}"
    );

    // The full name and the IP address work too; ping goes through the mesh.
    let fqdn = alpha.peer("beta").unwrap()["fqdn"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = alpha.postern(&["ping", "-c", "1", "--json", &fqdn]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pong: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pong["path"], "direct", "{pong}");
    assert!(pong["rtt_ms"].as_f64().unwrap() >= 0.0);
    let out = beta.postern(&["ping", "-c", "1", &alpha_ip]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pong from"));

    // A host program reaches beta by name through alpha's SOCKS5 proxy (the name resolves
    // in the netmap, as `curl --socks5-hostname` would send it).
    let mut server = Nc::listen(&beta, 7001);
    let mut proxy = TcpStream::connect(socks5).unwrap();
    proxy
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    proxy.write_all(&[5, 1, 0]).unwrap();
    let mut answer = [0u8; 2];
    proxy.read_exact(&mut answer).unwrap();
    assert_eq!(answer, [5, 0]);
    let mut request = vec![5, 1, 0, 3, 4];
    request.extend_from_slice(b"beta");
    request.extend_from_slice(&7001u16.to_be_bytes());
    proxy.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    proxy.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "SOCKS5 CONNECT to beta:7001 failed: {reply:?}");
    proxy.write_all(b"via socks5\n").unwrap();
    server.expect(b"via socks5\n");
    server.send(b"back\n");
    let mut back = [0u8; 5];
    proxy.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back\n");
    drop(proxy);
    server.close_stdin();
    server.wait_success();

    // A name that is not in the netmap is a clear error.
    let out = alpha.postern(&["nc", "nobody", "80"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no peer called \"nobody\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = alpha.postern(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("beta") && table.contains("online"),
        "{table}"
    );
}

#[test]
fn a_connection_survives_a_coord_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, alpha, beta) = mesh(dir.path());
    let mut server = Nc::listen(&beta, 7100);
    let mut client = Nc::connect(&alpha, "beta", 7100);
    client.send(b"before\n");
    server.expect(b"before\n");

    coord.stop();
    wait_for(
        "alpha to notice the coord is gone",
        Duration::from_secs(20),
        || (alpha.status()["coord_connected"] == false).then_some(()),
    );
    client.send(b"while the coord is down\n");
    server.expect(b"while the coord is down\n");
    server.send(b"still here\n");
    client.expect(b"still here\n");
    // A new connection works too: the nodes still have their netmaps.
    let out = alpha.postern(&["ping", "-c", "1", "beta"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    coord.start();
    for node in [&alpha, &beta] {
        wait_for(
            &format!("{} to reconnect to the coord", node.name),
            Duration::from_secs(60),
            || (node.status()["coord_connected"] == true).then_some(()),
        );
    }
    client.send(b"after\n");
    server.expect(b"after\n");
    client.close_stdin();
    server.close_stdin();
    client.wait_success();
    server.wait_success();
}

#[test]
fn a_restarted_node_keeps_its_name_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, alpha, mut beta) = mesh(dir.path());
    let before = beta.status()["self"].clone();
    beta.down();
    let out = beta.postern(&["status"]);
    assert_eq!(out.status.code(), Some(3), "status of a stopped node");
    assert!(String::from_utf8_lossy(&out.stderr).contains("postern up"));

    beta.up();
    let after = beta.status()["self"].clone();
    assert_eq!(before["name"], after["name"]);
    assert_eq!(before["addresses"], after["addresses"]);
    assert_eq!(before["node_id"], after["node_id"]);
    // alpha learns beta's new UDP port from the coord and reaches it again.
    wait_for(
        "alpha to ping the restarted beta",
        Duration::from_secs(30),
        || {
            alpha
                .postern(&["ping", "-c", "1", "--timeout", "2s", "beta"])
                .status
                .success()
                .then_some(())
        },
    );
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "solo");

    // Not logged in: `up` says what to do, with its own exit code, and makes the keys.
    let out = node.postern(&["up"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("postern login"), "{stderr}");

    let key = node.state.join("node.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = node.postern(&["up"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node.key"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // Nothing runs here: the commands that need the daemon say so.
    for args in [
        &["status"][..],
        &["down"],
        &["ping", "x"],
        &["nc", "x", "1"],
    ] {
        let out = node.postern(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no postern daemon is running"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn login_with_a_wrong_auth_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::new(dir.path());
    let node = Node::new(dir.path(), "intruder");
    let out = Command::new(POSTERN)
        .args([
            "login",
            "--coord",
            &coord.url(),
            "--auth-key",
            "pstn-auth-0000",
        ])
        .arg("--state-dir")
        .arg(&node.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!node.state.join("login.json").exists());
}

//! `postern login` against a coord with `--require-approval`, through the real binaries:
//! the login says it waits for an admin (naming the command that approves it), keeps one
//! quiet connection instead of redialling, and completes once `postern-coord nodes approve`
//! runs.
//!
//! `postern-coord` is found next to the `postern` binary (both are built by
//! `cargo build --bins`, which `scripts/test` runs first).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POSTERN: &str = env!("CARGO_BIN_EXE_postern");
const WAIT: Duration = Duration::from_secs(30);

fn coord_bin() -> PathBuf {
    let path = Path::new(POSTERN).with_file_name("postern-coord");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (scripts/test does) before these tests",
        path.display()
    );
    path
}

/// Kills the child on drop (a failing test leaves nothing running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(addr: &str, name: &str) -> Option<u64> {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{addr}/metrics")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn login_waits_quietly_for_approval_and_completes_when_approved() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("coord");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let admin = |args: &[&str]| {
        let out = Command::new(coord_bin())
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postern-coord {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let key = admin(&["keys", "create", "--user", "alice@example.com"]);
    let coord_log = dir.path().join("coord.log");
    let _coord = Running(
        Command::new(coord_bin())
            .arg("serve")
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &addr, "--admin-listen", "127.0.0.1:0"])
            .arg("--require-approval")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&coord_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let coord_context = || std::fs::read_to_string(&coord_log).unwrap_or_default();
    wait_until(
        "the coord to answer",
        || metric(&addr, "postern_coord_connected_nodes").is_some(),
        coord_context,
    );

    let key_file = dir.path().join("authkey");
    std::fs::write(&key_file, key.trim()).unwrap();
    let mut login = Running(
        Command::new(POSTERN)
            .args([
                "login",
                "--json",
                "--coord",
                &format!("http://{addr}"),
                "--hostname",
                "desk",
            ])
            .arg("--auth-key-file")
            .arg(&key_file)
            .arg("--state-dir")
            .arg(dir.path().join("node"))
            .env_remove("POSTERN_CONFIG")
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Collect stderr as it comes.
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = login.0.stderr.take().unwrap();
    let sink = Arc::clone(&stderr);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let said = || stderr.lock().unwrap().clone();
    let expected = "waiting for an admin to approve this device (postern-coord nodes approve desk)";
    wait_until(
        "the login to say it waits",
        || said().contains(expected),
        said,
    );

    // Waiting is quiet: one registration, no redials, and the login keeps running.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        login.0.try_wait().unwrap().is_none(),
        "the login must wait, not stop: {}",
        said()
    );
    assert_eq!(
        metric(&addr, "postern_coord_registrations_rejected_total"),
        Some(1),
        "one registration answered NeedsApproval, and no redial registered again"
    );
    assert_eq!(said().matches(expected).count(), 1, "said once: {}", said());
    let listed = admin(&["nodes", "list"]);
    assert!(listed.contains("needs-approval"), "{listed}");
    let log = coord_context();
    assert_eq!(
        log.matches("node waits for approval").count(),
        1,
        "one waiting connection, no redials:\n{log}"
    );

    // Approved: the login completes on its own.
    let out = admin(&["nodes", "approve", "desk"]);
    assert!(out.starts_with("approved node"), "{out}");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = login.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "login did not complete after approval: {}",
            said()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    assert!(status.success(), "{}", said());
    let mut stdout = String::new();
    login
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["name"], "desk", "{answer}");
    assert!(dir.path().join("node/login.json").exists());
}

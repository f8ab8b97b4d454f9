//! The `postern-coord serve` and `keys create` subcommands, through the real binary.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions may unwrap

mod loopback_http;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loopback_http::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_postern-coord");

#[test]
fn keys_create_prints_the_key_once_and_serve_answers_until_sigterm() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("coord");

    let out = Command::new(BIN)
        .args([
            "keys",
            "create",
            "--reusable",
            "--tags",
            "tag:ci",
            "--expiry",
            "1h",
        ])
        .arg("--state-dir")
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.trim();
    assert!(key.starts_with("pstn-auth-"), "printed {stdout:?}");
    assert_eq!(stdout.lines().count(), 1, "only the key goes to stdout");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(key),
        "the key must not reach the logs"
    );
    let mode = std::fs::metadata(state_dir.join("coord.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "coord.key is private");

    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--listen")
        .arg(addr.to_string())
        .args(["--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        match http_get(addr, "/healthz") {
            Ok(answer) => break answer,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                let _ = child.kill();
                panic!("coord never answered on {addr}: {e}");
            }
        }
    };
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let key_answer = http_get(addr, "/key").unwrap();
    assert!(key_answer.contains("mkey:"), "{key_answer}");

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("coord did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "exit {status:?}, logs:\n{logs}");
    assert!(!logs.contains(key), "the auth key must never be logged");
}

#[test]
fn keys_create_refuses_a_bad_expiry_with_a_usage_error() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["keys", "create", "--expiry", "soon"])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--expiry"), "{stderr}");
}

//! `postern dev` the way the README runs it: start it, wait for the two curl commands it
//! prints, run them, and check that the signed delivery reaches the demo origin while the
//! forged one is refused at the edge. Then Ctrl-C, and a second start with the same state
//! directory prints the same public URL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// What `postern dev` printed before it settled: every line, in order.
struct Started {
    child: Child,
    lines: Vec<String>,
}

impl Started {
    fn curls(&self) -> Vec<&String> {
        self.lines
            .iter()
            .filter(|l| l.starts_with("curl "))
            .collect()
    }

    fn public_url(&self) -> String {
        let line = self
            .lines
            .iter()
            .find(|l| l.starts_with("Public URL:"))
            .expect("a Public URL line");
        line.split_whitespace().nth(2).unwrap().to_owned()
    }

    /// Sends SIGINT (Ctrl-C) and waits for a clean exit.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "postern dev exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "postern dev did not stop within 30 s of Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `postern dev` and reads its standard output until the second curl line.
fn start(state: &Path, https_port: u16) -> Started {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["dev", "--inspect", "off", "--https-port"])
        .arg(https_port.to_string())
        .arg("--state-dir")
        .arg(state)
        .env_remove("POSTERN_DEV_WEBHOOK_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while lines
        .iter()
        .filter(|l: &&String| l.starts_with("curl "))
        .count()
        < 2
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "postern dev printed no two curl lines within 180 s; it printed: {lines:#?}"
                );
            }
        }
    }
    Started { child, lines }
}

/// Runs one printed command with sh and returns (HTTP status, body).
fn run_curl(line: &str) -> (u16, String) {
    let out = Command::new("sh").arg("-c").arg(line).output().unwrap();
    assert!(
        out.status.success(),
        "{line}\nfailed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts: Vec<&str> = text.trim_end().lines().collect();
    let status = parts.pop().unwrap().trim().parse().unwrap();
    (status, parts.join("\n"))
}

#[test]
fn postern_dev_admits_the_signed_delivery_and_refuses_the_forged_one() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let dev = start(state.path(), port);
    let curls = dev.curls();
    assert_eq!(curls.len(), 2, "{:#?}", dev.lines);
    assert!(
        dev.lines.iter().any(|l| l.contains("dev-ca.pem")),
        "the CA's path is printed: {:#?}",
        dev.lines
    );

    let (status, body) = run_curl(curls[0]);
    assert!((200..300).contains(&status), "signed: {status} {body}");
    assert!(body.contains("from the demo origin"), "{body}");
    assert!(
        body.contains(r#""request":1"#),
        "the first request to reach the origin: {body}"
    );
    assert!(body.contains(r#""method":"POST""#), "{body}");

    let (status, body) = run_curl(curls[1]);
    assert!(
        status == 401 || status == 403,
        "forged: expected 401/403, got {status} {body}"
    );
    assert!(!body.contains("from the demo origin"), "{body}");

    // The forged delivery never reached the origin: the next signed one is its second.
    let (status, body) = run_curl(curls[0]);
    assert!(
        (200..300).contains(&status),
        "signed again: {status} {body}"
    );
    assert!(body.contains(r#""request":2"#), "{body}");

    let url = dev.public_url();
    dev.stop();

    // Same state directory, same hostname.
    let again = start(state.path(), port);
    assert_eq!(again.public_url(), url);
    again.stop();
}

//! `postern dev` the way the README runs it: start it, wait for the two curl commands it
//! prints, run them, and check that the signed delivery reaches the demo origin while the
//! forged one is refused at the edge. The edge's decisions reach the funnel's owner:
//! `postern funnel log` lists the denial with its reason and the admitted delivery,
//! `postern funnel log --follow`, started before the requests, prints each decision as it
//! is made, and request inspection lists the denial as denied at the edge. Then Ctrl-C, and a second
//! start with the same state directory prints the same public URL.

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

/// Two distinct free loopback ports (both listeners are held while the second is picked,
/// so the kernel cannot hand out the same port twice).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// Starts `postern dev` and reads its standard output until the second curl line.
fn start(state: &Path, https_port: u16, inspect: &str) -> Started {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["dev", "--inspect", inspect, "--https-port"])
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

/// Runs `postern ARGS --state-dir DIR`.
fn postern(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap()
}

/// Runs `postern ARGS --state-dir DIR`, which must succeed, and returns its output.
fn postern_out(state: &Path, args: &[&str]) -> String {
    let out = postern(state, args);
    assert!(
        out.status.success(),
        "postern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn postern_json(state: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&postern_out(state, args)).unwrap()
}

/// `postern funnel log NAME --follow --json` running, and its output lines.
struct Following {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Following {
    fn start(state: &Path, funnel: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["funnel", "log", funnel, "--follow", "--json", "--state-dir"])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The decisions printed until `enough` holds for them (30 s at most), one JSON object
    /// per line.
    fn until(&self, enough: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while !enough(&seen) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => seen.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")),
                ),
                Err(_) => panic!("--follow printed only {seen:#?} within 30 s"),
            }
        }
        seen
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it gives a value (30 s at most).
fn wait_for_json(
    what: &str,
    mut probe: impl FnMut() -> Option<serde_json::Value>,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not there within 30 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn postern_dev_admits_the_signed_delivery_and_refuses_the_forged_one() {
    let state = tempfile::tempdir().unwrap();
    let (port, inspect_port) = free_ports();
    let inspect = format!("127.0.0.1:{inspect_port}");
    let dev = start(state.path(), port, &inspect);
    let curls = dev.curls();
    assert_eq!(curls.len(), 2, "{:#?}", dev.lines);
    assert!(
        dev.lines.iter().any(|l| l.contains("dev-ca.pem")),
        "the CA's path is printed: {:#?}",
        dev.lines
    );

    let node_dir = state.path().join("node");
    let following = Following::start(&node_dir, "demo");

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

    // `--follow` printed each decision as it came, oldest first, one JSON object a line.
    let followed = following.until(|seen| seen.len() >= 3);
    let results: Vec<&str> = followed
        .iter()
        .map(|d| d["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["allow", "deny", "allow"], "{followed:#?}");
    assert_eq!(followed[1]["reason"], "signature_mismatch", "{followed:#?}");
    assert!(
        followed
            .windows(2)
            .all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()),
        "{followed:#?}"
    );
    drop(following);

    // The edge's decisions reached the owner: the denial with its reason, and the
    // admitted deliveries, through the dev node's local API and the coord.
    let log = wait_for_json("postern funnel log", || {
        let log = postern_json(&node_dir, &["funnel", "log", "demo", "--json"]);
        let decisions = log["decisions"].as_array().cloned().unwrap_or_default();
        let denied = decisions.iter().filter(|d| d["result"] == "deny").count();
        let allowed = decisions.iter().filter(|d| d["result"] == "allow").count();
        (denied >= 1 && allowed >= 2).then_some(log)
    });
    let decisions = log["decisions"].as_array().unwrap();
    let denial = decisions.iter().find(|d| d["result"] == "deny").unwrap();
    assert_eq!(denial["reason"], "signature_mismatch", "{log:#}");
    assert_eq!(denial["gate"], "webhook:github", "{log:#}");
    assert_eq!(denial["method"], "POST", "{log:#}");
    assert_eq!(denial["path"], "/webhook", "{log:#}");
    assert!(
        denial["status"] == 401 || denial["status"] == 403,
        "{log:#}"
    );
    assert!(
        denial["funnel"].as_str().unwrap().starts_with("demo."),
        "{log:#}"
    );
    // Newest first: the last signed delivery came after the forged one.
    assert_eq!(decisions[0]["result"], "allow", "{log:#}");
    // The funnel's local port names it too (the daemon turns it into the hostname).
    let origin = dev
        .lines
        .iter()
        .find(|l| l.starts_with("Origin:"))
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .trim()
        .to_owned();
    let by_port = postern_json(&node_dir, &["funnel", "log", &origin, "--json"]);
    assert_eq!(by_port["decisions"], log["decisions"], "{by_port:#}");
    assert!(
        dev.lines
            .iter()
            .any(|l| l.starts_with("Edge decisions: postern funnel log demo --state-dir")),
        "{:#?}",
        dev.lines
    );
    // --denied keeps only the denial; the table names the reason.
    let denied = postern_json(&node_dir, &["funnel", "log", "demo", "--denied", "--json"]);
    let only: Vec<_> = denied["decisions"].as_array().unwrap().iter().collect();
    assert_eq!(only.len(), 1, "{denied:#}");
    let table = postern_out(&node_dir, &["funnel", "log", "demo"]);
    assert!(table.starts_with("TIME "), "{table}");
    assert!(table.contains("deny: signature_mismatch"), "{table}");
    assert_eq!(
        table.lines().count(),
        4,
        "header and three decisions: {table}"
    );
    // A funnel this node does not have is an error that says so.
    let out = postern(&node_dir, &["funnel", "log", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no funnel named"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Request inspection lists the denial as denied at the edge, with its reason, through
    // its JSON API and `postern inspect list`.
    let requests = wait_for_json("the edge denial in the inspection API", || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{inspect}/api/requests"))
            .output()
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let has = value
            .as_array()
            .or_else(|| value["requests"].as_array())
            .is_some_and(|list| list.iter().any(|e| e["kind"] == "denied"));
        has.then_some(value)
    });
    let list = requests
        .as_array()
        .or_else(|| requests["requests"].as_array())
        .unwrap();
    let entry = list.iter().find(|e| e["kind"] == "denied").unwrap();
    assert_eq!(entry["reason"], "signature_mismatch", "{requests:#}");
    assert_eq!(entry["gate"], "webhook:github", "{requests:#}");
    assert_eq!(entry["path"], "/webhook", "{requests:#}");
    assert_eq!(
        list.iter().filter(|e| e["kind"] == "denied").count(),
        1,
        "pulled once, not on every poll: {requests:#}"
    );
    let listed = postern_json(&node_dir, &["inspect", "list", "--json"]);
    assert!(
        listed.to_string().contains("signature_mismatch"),
        "{listed:#}"
    );

    let url = dev.public_url();
    dev.stop();

    // Same state directory, same hostname.
    let again = start(state.path(), port, "off");
    assert_eq!(again.public_url(), url);
    again.stop();
}

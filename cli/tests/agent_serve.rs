//! `postern serve`, `postern funnel` and `postern inspect` through the real binaries: a
//! coord, node alpha (alice's) serving a local HTTP origin and node beta (bob's) reaching it
//! through its SOCKS5 proxy; identity headers, `--bg` across `kill -9`, foreground serves
//! that end with their command, request capture, and a policy that keeps bob out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

mod agent;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{Coord, MeshOptions, Node, POSTERN, free_port, mesh_custom, wait_for};
use postern_lab::idp::{IdpConfig, OidcProvider};
use serde_json::{Value, json};

/// Alice's and bob's nodes reach each other on every port; alice may funnel any port
/// behind a gate.
const ALLOW_BOTH: &str = r#"{
  // alice serves, bob calls, and back
  "acls": [
    {"action": "accept", "src": ["bob@example.com"], "dst": ["alice@example.com:*"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["bob@example.com:*"]},
  ],
  "nodeAttrs": [{"target": ["alice@example.com"], "attr": ["funnel"]}],
  "funnels": [{"src": ["alice@example.com"], "ports": ["*"], "maxTTL": "1d"}],
}"#;

/// Bob may reach alice's nodes on port 22 only.
const BOB_ONLY_SSH: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["bob@example.com"], "dst": ["alice@example.com:22"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["bob@example.com:*"]},
  ],
}"#;

/// Bob's IdP group may reach alice's nodes on every port (the group is filled from the IdP's
/// `groups` claim at login).
const CONTRACTORS_IN: &str = r#"{
  "groups": {"group:contractors": []},
  "acls": [
    {"action": "accept", "src": ["group:contractors"], "dst": ["alice@example.com:*"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["group:contractors:*"]},
  ],
}"#;

/// The same, with bob's group cut down to port 22.
const CONTRACTORS_SSH_ONLY: &str = r#"{
  "groups": {"group:contractors": []},
  "acls": [
    {"action": "accept", "src": ["group:contractors"], "dst": ["alice@example.com:22"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["group:contractors:*"]},
  ],
}"#;

/// A local HTTP origin recording the head of every request it gets.
struct Origin {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).to_lowercase());
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin",
                    );
                });
            }
        });
        Self { port, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// One HTTP GET of `path` on `host:port` through the SOCKS5 proxy at `socks5`, with a
/// forged identity header; the response body, or why not.
fn get_via_socks(socks5: SocketAddr, host: &str, port: u16, path: &str) -> Result<String, String> {
    let mut proxy = TcpStream::connect(socks5).map_err(|e| e.to_string())?;
    proxy
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    proxy.write_all(&[5, 1, 0]).map_err(|e| e.to_string())?;
    let mut answer = [0u8; 2];
    proxy.read_exact(&mut answer).map_err(|e| e.to_string())?;
    let mut request = vec![5, 1, 0, 3, u8::try_from(host.len()).unwrap()];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    proxy.write_all(&request).map_err(|e| e.to_string())?;
    let mut reply = [0u8; 10];
    proxy
        .read_exact(&mut reply)
        .map_err(|e| format!("no SOCKS5 reply: {e}"))?;
    if reply[1] != 0 {
        return Err(format!("SOCKS5 CONNECT refused with code {}", reply[1]));
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nPostern-User-Login: forged@evil.example\r\nConnection: close\r\n\r\n"
    );
    proxy
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    proxy
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected answer: {text}"));
    }
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

fn serve_status(node: &Node) -> Value {
    json_of(&node.postern(&["serve", "status", "--json"]))
}

#[test]
fn a_background_serve_shows_the_callers_identity_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let socks5: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let socks5_arg = socks5.to_string();
    let inspect_arg = format!("127.0.0.1:{}", free_port());
    let alpha_args = [
        "--inspect",
        &inspect_arg,
        "--inspect-serves",
        "--inspect-persist",
    ];
    let (_coord, mut alpha, _beta) = mesh_custom(
        dir.path(),
        &MeshOptions {
            alpha_args: &alpha_args,
            beta_args: &["--socks5", &socks5_arg, "--inspect", "off"],
            alpha_user: Some("alice@example.com"),
            beta_user: Some("bob@example.com"),
            policy: Some(ALLOW_BOTH),
            coord_args: &["--funnel-domain", "funnel.test"],
        },
    );
    let origin = Origin::start();
    let port = origin.port;

    let answer = json_of(&alpha.postern(&["serve", &port.to_string(), "--bg", "--json"]));
    let expected = json!({
        "serves": [{
            "port": port,
            "kind": "http",
            "path": "/",
            "origin": format!("http://127.0.0.1:{port}"),
            "funnel": false,
            "background": true,
        }],
        "funnels": [],
    });
    assert_eq!(answer, expected);
    assert_eq!(serve_status(&alpha), expected);
    let saved = alpha.state.join("serves.json");
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "serves.json must be private");

    // bob's node reaches it by name; the origin sees bob, not the forged header.
    let body = get_via_socks(socks5, "alpha", port, "/hello").unwrap();
    assert_eq!(body, "origin");
    let heads = origin.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    assert!(head.starts_with("get /hello "), "{head}");
    assert!(
        head.contains("postern-user-login: bob@example.com\r\n"),
        "{head}"
    );
    assert!(head.contains("postern-node-name: beta\r\n"), "{head}");
    assert!(
        !head.contains("forged"),
        "a forged identity header got through: {head}"
    );

    // Request inspection captured the exchange (--inspect-serves).
    let list = json_of(&alpha.postern(&["inspect", "list", "--json"]));
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/hello")
        .unwrap_or_else(|| panic!("no /hello in {list}"))
        .clone();
    assert_eq!(entry["source"], "serve", "{entry}");
    assert_eq!(entry["status"], 200, "{entry}");
    assert_eq!(entry["identity"], "bob@example.com", "{entry}");
    let id = entry["id"].as_u64().unwrap().to_string();
    let shown = json_of(&alpha.postern(&["inspect", "show", &id, "--json"]));
    assert_eq!(shown["entry"]["request"]["method"], "GET", "{shown}");
    let replayed = json_of(&alpha.postern(&["inspect", "replay", &id, "--json"]));
    assert_eq!(replayed["status"], 200, "{replayed}");
    assert_eq!(origin.heads().len(), 2, "the replay reaches the origin");
    let out = alpha.postern(&["inspect", "show", "99999"]);
    assert_eq!(out.status.code(), Some(1));

    // A funnel of another local port: the coord grants it and names its URL; without a
    // gate the policy refuses, and the coord's message says what to add.
    let funnel_origin = Origin::start();
    let fport = funnel_origin.port.to_string();
    let out = alpha.postern(&["funnel", &fport, "--bg"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("gate"),
        "{stderr}"
    );
    let funnel = json_of(&alpha.postern(&[
        "funnel",
        &fport,
        "--allow-ip",
        "0.0.0.0/0",
        "--name",
        "hooks",
        "--bg",
        "--json",
    ]));
    assert_eq!(funnel["url"], "https://hooks.funnel.test/", "{funnel}");
    assert_eq!(funnel["gates"], json!(["ip"]), "{funnel}");
    assert_eq!(funnel["background"], true, "{funnel}");
    let funnels = json_of(&alpha.postern(&["funnel", "status", "--json"]));
    assert_eq!(funnels["funnels"][0]["url"], "https://hooks.funnel.test/");
    let served = funnels["serves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["port"] == funnel_origin.port)
        .unwrap()
        .clone();
    assert_eq!(served["funnel"], true, "{served}");
    let out = alpha.postern(&["funnel", "status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("https://hooks.funnel.test/"));

    // `postern status` shows the serves and funnels next to the peers, in both forms.
    let status = alpha.status();
    assert_eq!(status["funnels"], funnels["funnels"], "{status}");
    assert_eq!(status["serves"], funnels["serves"], "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    let out = alpha.postern(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("funnels:") && text.contains("https://hooks.funnel.test/"),
        "{text}"
    );
    assert!(text.contains(&format!("tailnet :{port}")), "{text}");

    // A replay goes back to the service that answered the original (port `port`), not to
    // the funnelled one that now exists too.
    let (served_before, funnelled_before) = (origin.heads().len(), funnel_origin.heads().len());
    let replayed = json_of(&alpha.postern(&["inspect", "replay", &id, "--json"]));
    assert_eq!(replayed["status"], 200, "{replayed}");
    assert_eq!(
        origin.heads().len(),
        served_before + 1,
        "the replay missed its origin"
    );
    assert_eq!(
        funnel_origin.heads().len(),
        funnelled_before,
        "the replay went to the funnel"
    );

    // kill -9 of alpha's daemon, and a restart: the serve, name and addresses come back.
    let before = alpha.status()["self"].clone();
    let mut child = alpha.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    alpha.up_with(&alpha_args);
    let after = alpha.status()["self"].clone();
    // --inspect-persist: the captured exchange survived the kill -9, in a private file.
    let list = json_of(&alpha.postern(&["inspect", "list", "--json"]));
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/hello" && e["identity"] == "bob@example.com"),
        "captures were lost in the restart: {list}"
    );
    let mode = std::fs::metadata(alpha.state.join("inspect.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "inspect.jsonl is {mode:o}");
    assert_eq!(before["name"], after["name"]);
    assert_eq!(before["addresses"], after["addresses"]);
    assert_eq!(before["node_id"], after["node_id"]);
    let restored = serve_status(&alpha);
    // Serves are listed by port, and both ports are random: find ours by its port.
    let restored_serve = restored["serves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["port"] == expected["serves"][0]["port"])
        .cloned();
    assert_eq!(
        restored_serve.as_ref(),
        Some(&expected["serves"][0]),
        "{restored}"
    );
    assert_eq!(
        restored["serves"].as_array().map(Vec::len),
        Some(2),
        "{restored}"
    );
    assert_eq!(
        restored["funnels"][0]["url"], "https://hooks.funnel.test/",
        "{restored}"
    );
    let body = wait_for(
        "beta to reach the restored serve",
        Duration::from_secs(60),
        || get_via_socks(socks5, "alpha", port, "/again").ok(),
    );
    assert_eq!(body, "origin");
    assert!(
        origin.heads().iter().any(|h| h.starts_with("get /again ")),
        "{:?}",
        origin.heads()
    );

    // reset removes them, also from the saved file.
    let out = alpha.postern(&["funnel", "reset"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(serve_status(&alpha), expected);
    let out = alpha.postern(&["serve", "reset"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(serve_status(&alpha), json!({"serves": [], "funnels": []}));
    let saved: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(saved["serves"], json!([]));
}

#[test]
fn a_foreground_serve_lasts_while_its_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, alpha, _beta) = mesh_custom(
        dir.path(),
        &MeshOptions {
            alpha_args: &["--inspect", "off"],
            beta_args: &["--inspect", "off"],
            ..MeshOptions::default()
        },
    );
    let spawn_serve = |args: &[&str]| {
        let mut child = Command::new(POSTERN)
            .arg("serve")
            .args(args)
            .arg("--state-dir")
            .arg(&alpha.state)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The first line of output is the status once the daemon took the serve.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with('{'), "serve printed {line:?}");
        child
    };

    let mut serve = spawn_serve(&["7300", "http://127.0.0.1:9"]);
    let status = serve_status(&alpha);
    assert_eq!(status["serves"][0]["port"], 7300, "{status}");
    assert_eq!(status["serves"][0]["background"], false, "{status}");
    assert!(
        !alpha.state.join("serves.json").exists()
            || !std::fs::read_to_string(alpha.state.join("serves.json"))
                .unwrap()
                .contains("7300"),
        "a foreground serve must not be saved"
    );

    // Another kind on the same port is a conflict (usage error).
    let out = alpha.postern(&["serve", "--tcp", "7300", "9", "--bg"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serves"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kill -9 of the CLI: its API connection drops and the serve goes.
    serve.kill().unwrap();
    serve.wait().unwrap();
    wait_for(
        "the killed serve to be removed",
        Duration::from_secs(10),
        || (serve_status(&alpha)["serves"] == json!([])).then_some(()),
    );

    // `serve reset` ends a foreground serve; its command says so and exits 1.
    let mut serve = spawn_serve(&["--tcp", "7301", "9"]);
    let out = alpha.postern(&["serve", "reset"]);
    assert!(out.status.success());
    let code = wait_for("the serve command to exit", Duration::from_secs(10), || {
        serve.try_wait().unwrap()
    });
    assert_eq!(code.code(), Some(1));
    let mut stderr = String::new();
    serve
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("ended this serve"), "{stderr}");

    // SIGTERM (like Ctrl-C) stops a foreground serve cleanly.
    let serve = spawn_serve(&["7302", "9"]);
    Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    let out = serve.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    wait_for(
        "the stopped serve to be removed",
        Duration::from_secs(10),
        || (serve_status(&alpha)["serves"] == json!([])).then_some(()),
    );

    // A coord without a funnel domain refuses funnels; the command says so and fails.
    let out = alpha.postern(&["funnel", "7303", "--allow-ip", "10.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
    assert_eq!(serve_status(&alpha), json!({"serves": [], "funnels": []}));
    let out = alpha.postern(&["inspect", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--inspect off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_policy_that_denies_bob_keeps_him_from_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let socks5: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let socks5_arg = socks5.to_string();
    let metrics_at: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_arg = metrics_at.to_string();
    let (_coord, alpha, _beta) = mesh_custom(
        dir.path(),
        &MeshOptions {
            alpha_args: &["--inspect", "off", "--metrics", &metrics_arg],
            beta_args: &["--socks5", &socks5_arg, "--inspect", "off"],
            alpha_user: Some("alice@example.com"),
            beta_user: Some("bob@example.com"),
            policy: Some(BOB_ONLY_SSH),
            ..MeshOptions::default()
        },
    );
    let origin = Origin::start();
    let port = origin.port;
    json_of(&alpha.postern(&["serve", &port.to_string(), "--bg", "--json"]));
    let attempt = get_via_socks(socks5, "alpha", port, "/denied");
    assert!(attempt.is_err(), "bob got through: {attempt:?}");
    assert!(
        origin.heads().is_empty(),
        "the origin saw bob's attempt: {:?}",
        origin.heads()
    );
    // alpha's metrics count what its packet filter refused: `postern metrics`, and a
    // Prometheus scrape of `--metrics`.
    let filtered = "postern_node_dropped_packets_total{reason=\"filtered\"}";
    let counted = alpha.metrics().value(filtered);
    assert!(counted >= 1.0, "alpha filtered {counted} packets");
    let mut scrape = std::net::TcpStream::connect(metrics_at).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    scrape.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.contains("content-type: application/openmetrics-text"),
        "{answer}"
    );
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        agent::Metrics(body.to_owned()).value(filtered) >= counted,
        "{body}"
    );
}

/// Issue #7's end-to-end test as a person does it: alice and bob log their nodes in with
/// `postern login` through the lab's real OIDC provider (a headless browser signs in at the
/// printed URL); alice serves an origin; bob reaches it through his SOCKS5 proxy and the
/// origin sees who he is (login, name, IdP groups, node), not the header he forged; then an
/// edit of the policy file cuts bob's group down to port 22, and from then on the origin
/// sees none of his attempts.
#[test]
fn people_log_in_at_the_idp_and_the_origin_sees_who_calls_until_the_policy_says_no() {
    let dir = tempfile::tempdir().unwrap();
    let coord_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let idp = OidcProvider::start(IdpConfig {
        web_redirect_uris: vec![format!("http://{coord_addr}/oidc/callback")],
        web_client_secret: "agent-test-secret".into(),
    })
    .unwrap();
    let secret_file = dir.path().join("oidc-secret");
    std::fs::write(&secret_file, "agent-test-secret\n").unwrap();
    let policy = dir.path().join("policy.hujson");
    std::fs::write(&policy, CONTRACTORS_IN).unwrap();
    let coord = Coord::with_args_at(
        dir.path(),
        coord_addr,
        Some(policy.clone()),
        &[
            "--oidc-issuer",
            idp.issuer(),
            "--oidc-client-id",
            OidcProvider::WEB_CLIENT_ID,
            "--oidc-client-secret-file",
            secret_file.to_str().unwrap(),
        ],
    );

    let mut alpha = Node::new(dir.path(), "alpha");
    let mut beta = Node::new(dir.path(), "beta");
    alpha.login_oidc(&coord, idp.issuer(), "alice@example.com");
    beta.login_oidc(&coord, idp.issuer(), "bob@example.com");
    let socks5: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    alpha.up_with(&["--inspect", "off"]);
    beta.up_with(&["--socks5", &socks5.to_string(), "--inspect", "off"]);
    assert_eq!(alpha.status()["self"]["login"], "alice@example.com");
    assert_eq!(beta.status()["self"]["login"], "bob@example.com");
    wait_for("beta to see alpha online", Duration::from_secs(30), || {
        beta.peer("alpha").filter(|p| p["online"] == true)
    });

    let origin = Origin::start();
    let port = origin.port;
    json_of(&alpha.postern(&["serve", &port.to_string(), "--bg", "--json"]));
    let body = wait_for(
        "bob to reach alice's serve",
        Duration::from_secs(60),
        || get_via_socks(socks5, "alpha", port, "/hello").ok(),
    );
    assert_eq!(body, "origin");
    let heads = origin.heads();
    let head = heads
        .iter()
        .find(|h| h.starts_with("get /hello "))
        .unwrap_or_else(|| panic!("{heads:?}"));
    for expected in [
        "postern-user-login: bob@example.com\r\n",
        "postern-user-name: bob example\r\n",
        "postern-user-groups: contractors\r\n",
        "postern-node-name: beta\r\n",
    ] {
        assert!(head.contains(expected), "{expected:?} missing from {head}");
    }
    assert!(!head.contains("forged@evil.example"), "{head}");

    // The admins cut bob's group down to port 22: the coord reloads the file and the next
    // attempt dies in alice's packet filter, before her origin.
    std::fs::write(&policy, CONTRACTORS_SSH_ONLY).unwrap();
    wait_for(
        "the edit to reach alice's node",
        Duration::from_secs(30),
        || {
            get_via_socks(socks5, "alpha", port, "/probe")
                .is_err()
                .then_some(())
        },
    );
    let seen = origin.heads().len();
    let attempt = get_via_socks(socks5, "alpha", port, "/after-the-edit");
    assert!(attempt.is_err(), "bob got through: {attempt:?}");
    assert_eq!(
        origin.heads().len(),
        seen,
        "the origin saw bob's attempt: {:?}",
        origin.heads()
    );
    drop(coord);
}

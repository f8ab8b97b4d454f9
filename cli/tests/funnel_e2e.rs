//! Issue #8 end to end, through the real binaries in the NAT lab (`postern_lab::netlab`):
//!
//! ```text
//!   coord 198.18.0.10      postern-coord serve --relay --stun --funnel-domain funnel.test
//!   relay 198.18.0.20      pebble (strict: it dials the ingress's :80 to validate HTTP-01),
//!                          its mock DNS answers every name with 198.18.0.30
//!   ingress 198.18.0.30    postern-ingress serve (:443, :80, TCP 20000-20009) with its
//!                          embedded node, certificates from pebble
//!   homeA (easy NAT)       the public client: reqwest, tokio-tungstenite, psql
//!   homeB (hard NAT)       alice's laptop: `postern up`, `postern funnel`, local origins
//! ```
//!
//! The laptop sits behind the symmetric NAT: nothing reaches it unsolicited, and every
//! funnelled byte crosses the mesh (WireGuard, direct or through the coord's relay) from
//! the ingress's embedded node. The client trusts only pebble's issuing root (fetched from
//! its management API), so every HTTPS exchange proves a certificate pebble issued after
//! really validating the ingress.
//!
//! Each test builds its own lab; together they cover: a GitHub-signed delivery arriving byte
//! for byte while forged and unsigned ones stop at the edge (the origin's counter does not
//! move), an ingress restart that orders no new certificate, a WebSocket echo and an SSE
//! stream whose events arrive one by one, a psql session through a TCP funnel, and a funnel
//! that stops at its `--ttl`.
//!
//! The tests create network namespaces: they need root (CI runs as root) and fail with a
//! clear message otherwise. `postern-coord` and `postern-ingress` are found next to the
//! `postern` binary (`cargo build --bins`, which `scripts/test` runs first).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use postern_lab::LabProcess;
use postern_lab::netlab::{Host, NatKind, NatLab, NatLabConfig};
use postern_lab::pebble::{Pebble, PebbleConfig, PebbleMode};
use postern_lab::postgres::PostgresCluster;
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

const POSTERN: &str = env!("CARGO_BIN_EXE_postern");
const COORD_PORT: u16 = 8080;
const STUN_PORT: u16 = 3478;
const FUNNEL_DOMAIN: &str = "funnel.test";
const TCP_PORTS: &str = "20000-20009";
/// The ingress's `listen.metrics` port, on its namespace's loopback.
const METRICS_PORT: u16 = 9464;
const GH_SECRET: &str = "it's a secret to everybody";
/// Generous bound for anything that involves an ACME order or a netmap round.
const SERVE_WAIT: Duration = Duration::from_secs(90);

/// Alice's nodes may funnel any port, with or without a gate, for up to a day.
const POLICY: &str = r#"{
  "nodeAttrs": [{"target": ["alice@example.com"], "attr": ["funnel"]}],
  "funnels": [{"src": ["alice@example.com"], "ports": ["*"], "maxTTL": "1d", "allowUngated": true}],
}"#;

fn sibling_bin(name: &str) -> PathBuf {
    let path = Path::new(POSTERN).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (scripts/test does) before these tests",
        path.display()
    );
    path
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the NAT lab creates network namespaces and needs root: run the tests as root, as CI does"
    );
}

fn ingress_addr() -> SocketAddr {
    SocketAddr::from((Host::Ingress.addr(), 443))
}

fn coord_url() -> String {
    format!("http://{}:{COORD_PORT}", Host::Coord.addr())
}

fn hostname(name: &str) -> String {
    format!("{name}.{FUNNEL_DOMAIN}")
}

/// The lab with a coord, pebble, an ingress and alice's laptop (logged in and up), plus a
/// tokio runtime whose threads live in home A (the public client) and one in home B (the
/// laptop's local origins).
struct EdgeLab {
    client_rt: tokio::runtime::Runtime,
    home_rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    agent: Option<LabProcess>,
    ingress: Option<LabProcess>,
    ingress_runs: u32,
    coord: Option<LabProcess>,
    pebble: Pebble,
    root_pem: String,
    lab: NatLab,
    dir: tempfile::TempDir,
}

impl EdgeLab {
    fn start() -> Self {
        require_root();
        let lab = NatLab::start(NatLabConfig {
            home_a: NatKind::Easy,
            home_b: NatKind::Hard,
            ipv6: false,
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pebble = Pebble::start_in(
            lab.netns(Host::Relay),
            Host::Relay.addr(),
            PebbleConfig {
                mode: PebbleMode::Strict,
                http_port: 80,
                tls_port: 443,
                dns_answer: Host::Ingress.addr(),
            },
        )
        .unwrap();
        let root_pem = pebble.fetch_root().unwrap();
        let client_rt = runtime_in(&lab, Host::HomeA);
        let home_rt = runtime_in(&lab, Host::HomeB);
        let client = https_client(&root_pem);
        let mut edge = Self {
            client_rt,
            home_rt,
            client,
            agent: None,
            ingress: None,
            ingress_runs: 0,
            coord: None,
            pebble,
            root_pem,
            lab,
            dir,
        };
        let alice_key = edge.create_key(&["--reusable", "--user", "alice@example.com"]);
        let ingress_key = edge.create_key(&["--reusable", "--ingress"]);
        std::fs::write(edge.dir.path().join("ingress.authkey"), ingress_key).unwrap();
        edge.start_coord();
        edge.start_ingress();
        edge.start_agent(&alice_key);
        edge
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn create_key(&self, args: &[&str]) -> String {
        let out = Command::new(sibling_bin("postern-coord"))
            .args(["keys", "create"])
            .args(args)
            .arg("--state-dir")
            .arg(self.path("coord"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn start_coord(&mut self) {
        let policy = self.path("policy.hujson");
        std::fs::write(&policy, POLICY).unwrap();
        let listen = format!("{}:{COORD_PORT}", Host::Coord.addr());
        let stun = format!("{}:{STUN_PORT}", Host::Coord.addr());
        let mut command = self
            .lab
            .command(Host::Coord, sibling_bin("postern-coord").to_str().unwrap());
        command
            .arg("serve")
            .arg("--state-dir")
            .arg(self.path("coord"))
            .arg("--policy")
            .arg(&policy)
            .args(["--listen", &listen, "--admin-listen", "127.0.0.1:0"])
            .args(["--relay", "--stun", &stun])
            .args([
                "--funnel-domain",
                FUNNEL_DOMAIN,
                "--funnel-tcp-ports",
                TCP_PORTS,
            ])
            .env("RUST_LOG", "info");
        let coord = LabProcess::spawn("postern-coord", command, &self.path("coord.log")).unwrap();
        self.coord = Some(coord);
        let url = format!("{}/healthz", coord_url());
        wait_for("the coord to answer", Duration::from_secs(20), || {
            self.coord.as_mut().unwrap().check_running().unwrap();
            let out = self
                .lab
                .try_output(Host::Coord, &["curl", "-sf", "-m", "1", &url])
                .ok()?;
            out.status.success().then_some(())
        });
    }

    /// Starts (or restarts, with the same state) `postern-ingress serve` on the ingress host
    /// and waits until its TLS port accepts connections.
    fn start_ingress(&mut self) {
        self.ingress_runs += 1;
        let log = self.ingress_log_path(self.ingress_runs);
        self.ingress = Some(self.spawn_ingress(Host::Ingress, "edge", &log));
    }

    /// Starts an ingress named `name` (its node's hostname; state in `DIR/NAME`, audit log
    /// `DIR/NAME-audit.jsonl`) on `host`, listening on its :443 and :80, and waits until
    /// its TLS port accepts connections.
    fn spawn_ingress(&self, host: Host, name: &str, log: &Path) -> LabProcess {
        let config = format!(
            r#"
state_dir = "{state}"
audit_log = "{audit}"
[listen]
https = "0.0.0.0:443"
http = "0.0.0.0:80"
metrics = "127.0.0.1:{METRICS_PORT}"
tcp_port_range = "{TCP_PORTS}"
[acme]
directory = "{directory}"
ca_bundle = "{ca}"
challenge = "http-01"
[node]
coord_url = "{coord}"
auth_key_file = "{key}"
hostname = "{name}"
"#,
            state = self.path(name).display(),
            audit = self.path(&format!("{name}-audit.jsonl")).display(),
            directory = self.pebble.directory_url(),
            ca = self.pebble.api_ca_path().display(),
            coord = coord_url(),
            key = self.path("ingress.authkey").display(),
        );
        let config_path = self.path(&format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let mut command = self
            .lab
            .command(host, sibling_bin("postern-ingress").to_str().unwrap());
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info");
        let mut process = LabProcess::spawn("postern-ingress", command, log).unwrap();
        let address = SocketAddr::from((host.addr(), 443));
        wait_for(
            "the ingress's TLS port to accept connections",
            Duration::from_secs(30),
            || {
                if let Err(error) = process.check_running() {
                    panic!("{error}");
                }
                self.lab
                    .run_in(Host::HomeA, move || {
                        TcpStream::connect_timeout(&address, Duration::from_millis(300))
                    })
                    .unwrap()
                    .ok()
                    .map(drop)
            },
        );
        process
    }

    /// `GET /metrics` of the ingress on `Host::Ingress`, from inside its namespace (the
    /// metrics port is on its loopback).
    fn scrape_metrics(&self) -> String {
        self.lab
            .run_in(Host::Ingress, || {
                let mut stream = TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
                stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok::<_, std::io::Error>(answer)
            })
            .unwrap()
            .unwrap()
    }

    fn stop_ingress(&mut self) {
        if let Some(mut ingress) = self.ingress.take() {
            ingress.stop();
        }
    }

    fn ingress_log_path(&self, run: u32) -> PathBuf {
        self.path(&format!("ingress-{run}.log"))
    }

    fn ingress_log(&self, run: u32) -> String {
        std::fs::read_to_string(self.ingress_log_path(run)).unwrap_or_default()
    }

    fn audit_path(&self) -> PathBuf {
        self.path("edge-audit.jsonl")
    }

    /// Every record of the ingress's audit log so far.
    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    fn agent_state(&self) -> PathBuf {
        self.path("laptop")
    }

    /// Logs alice's laptop in from home B and runs `postern up` there.
    fn start_agent(&mut self, key: &str) {
        let state = self.agent_state();
        let key_file = self.path("laptop.authkey");
        std::fs::write(&key_file, key).unwrap();
        let out = self
            .lab
            .command(Host::HomeB, POSTERN)
            .args(["login", "--json", "--coord", &coord_url()])
            .args(["--hostname", "laptop", "--auth-key-file"])
            .arg(&key_file)
            .arg("--state-dir")
            .arg(&state)
            .env_remove("POSTERN_CONFIG")
            .env("XDG_CONFIG_HOME", state.with_extension("config"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "login of the laptop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut command = self.lab.command(Host::HomeB, POSTERN);
        command
            .args(["up", "--inspect", "off", "--state-dir"])
            .arg(&state)
            .env_remove("POSTERN_CONFIG")
            .env("XDG_CONFIG_HOME", state.with_extension("config"))
            .env("RUST_LOG", "info");
        self.agent = Some(LabProcess::spawn("laptop", command, &self.path("laptop.log")).unwrap());
        wait_for(
            "the laptop to report the coord connected",
            Duration::from_secs(30),
            || {
                self.agent.as_mut().unwrap().check_running().unwrap();
                let status = self.agent_json(&["status", "--json"])?;
                (status["coord_connected"] == true).then_some(())
            },
        );
    }

    /// `postern ARGS --state-dir LAPTOP` (talking to the laptop's daemon over its socket).
    fn agent_cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let state = self.agent_state();
        let mut command = Command::new(POSTERN);
        command
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .env_remove("POSTERN_CONFIG")
            .env("XDG_CONFIG_HOME", state.with_extension("config"));
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    }

    fn agent_json(&self, args: &[&str]) -> Option<Value> {
        let out = self.agent_cmd(args, &[]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `postern funnel ARGS --bg --json` on the laptop; its JSON answer.
    fn funnel(&self, args: &[&str], env: &[(&str, &str)]) -> Value {
        let mut all = vec!["funnel"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--bg", "--json"]);
        let out = self.agent_cmd(&all, env);
        assert!(
            out.status.success(),
            "postern {}: exit {:?}: {}",
            all.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        })
    }

    /// Runs `f` on the client runtime (home A) and returns its output.
    fn on_client<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.client_rt.block_on(self.client_rt.spawn(f)).unwrap()
    }

    /// Starts `origin` on the laptop's loopback (home B); returns its port.
    fn start_origin(&self, origin: &Origin) -> u16 {
        let origin = origin.clone();
        self.home_rt
            .block_on(self.home_rt.spawn(origin.serve()))
            .unwrap()
    }

    /// Polls `GET https://HOST/probe` from home A until it answers `expect` over a
    /// certificate chaining to pebble's root; returns the served leaf (DER).
    fn wait_until_served(&mut self, host: &str, expect: StatusCode) -> Vec<u8> {
        let client = self.client.clone();
        self.wait_until_served_by(&client, host, expect)
    }

    /// [`EdgeLab::wait_until_served`] with `client` (which decides the ingress).
    fn wait_until_served_by(
        &mut self,
        client: &reqwest::Client,
        host: &str,
        expect: StatusCode,
    ) -> Vec<u8> {
        let deadline = Instant::now() + SERVE_WAIT;
        loop {
            if let Some(ingress) = self.ingress.as_mut()
                && let Err(error) = ingress.check_running()
            {
                panic!("{error}");
            }
            let client = client.clone();
            let url = format!("https://{host}/probe");
            let answer = self.on_client(async move {
                let response = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let leaf = response
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec))
                    .unwrap_or_default();
                Ok::<_, String>((response.status(), leaf))
            });
            let last = match answer {
                Ok((status, leaf)) if status == expect => return leaf,
                other => format!("{other:?}"),
            };
            assert!(
                Instant::now() < deadline,
                "https://{host}/ did not answer {expect} within {SERVE_WAIT:?}; last: {last}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for run in 1..=self.ingress_runs {
            all += &format!("--- ingress run {run}:\n{}\n", tail(&self.ingress_log(run)));
        }
        if let Some(agent) = &self.agent {
            all += &format!("--- laptop:\n{}\n", agent.log_tail());
        }
        if let Some(coord) = &self.coord {
            all += &format!("--- coord:\n{}\n", coord.log_tail());
        }
        all += &format!("--- pebble:\n{}\n", self.pebble.log_tail());
        all
    }
}

impl Drop for EdgeLab {
    fn drop(&mut self) {
        // The daemons first (the lab's drop would kill them too, without the grace period).
        for process in [&mut self.agent, &mut self.ingress, &mut self.coord] {
            if let Some(mut p) = process.take() {
                p.stop();
            }
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// A multi-thread tokio runtime whose worker threads were started inside `host`'s namespace:
/// sockets its tasks open live there. Run work on it with `spawn` (not `block_on`, which
/// polls on the calling thread).
fn runtime_in(lab: &NatLab, host: Host) -> tokio::runtime::Runtime {
    lab.run_in(host, || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
    .unwrap()
}

/// An HTTPS client that trusts only pebble's issuing root and resolves every funnel
/// hostname of these tests to the ingress. No idle connections are kept, so each request
/// sees the ingress as it is now (e.g. after a restart).
fn https_client(root_pem: &str) -> reqwest::Client {
    https_client_to(root_pem, ingress_addr())
}

/// [`https_client`] sending every funnel hostname to `ingress`.
fn https_client_to(root_pem: &str, ingress: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0);
    for name in ["hooks", "streams", "brief"] {
        builder = builder.resolve(&hostname(name), ingress);
    }
    builder.build().unwrap()
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the origin saw of one request it answered.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

/// A local HTTP/1.1 origin on the laptop: counts every request, keeps plain requests,
/// echoes WebSockets on `/ws`, and streams three SSE events on `/events`, holding each
/// next event back until the test acknowledges the previous one.
#[derive(Clone)]
struct Origin {
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    acks_tx: tokio::sync::mpsc::UnboundedSender<()>,
    acks_rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<()>>>,
}

type OriginBody = UnsyncBoxBody<Bytes, Infallible>;

impl Origin {
    fn new() -> Self {
        let (acks_tx, acks_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            requests: Arc::default(),
            seen: Arc::default(),
            acks_tx,
            acks_rx: Arc::new(tokio::sync::Mutex::new(acks_rx)),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Binds 127.0.0.1:0 (in the runtime's namespace) and serves; returns the port.
    async fn serve(self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let origin = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let origin = origin.clone();
                        async move { Ok::<_, Infallible>(origin.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        port
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<OriginBody> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        match request.uri().path() {
            "/ws" => return websocket_echo(request),
            "/events" => return self.events(),
            _ => {}
        }
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
        });
        Response::new(Full::new(Bytes::from_static(b"origin ok")).boxed_unsync())
    }

    /// Three events; the second and third wait for an acknowledgement of the one before.
    fn events(&self) -> Response<OriginBody> {
        let acks = Arc::clone(&self.acks_rx);
        let stream = futures::stream::unfold(0u32, move |sent| {
            let acks = Arc::clone(&acks);
            async move {
                if sent == 3 {
                    return None;
                }
                if sent > 0 {
                    acks.lock().await.recv().await?;
                }
                let n = sent + 1;
                let event = format!("id: {n}\ndata: event {n}\n\n");
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), n))
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap()
    }
}

/// Answers a WebSocket upgrade and echoes every text and binary message.
fn websocket_echo(mut request: Request<Incoming>) -> Response<OriginBody> {
    let Some(accept) = request
        .headers()
        .get("sec-websocket-key")
        .map(|key| derive_accept_key(key.as_bytes()))
    else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::from_static(b"not a websocket")).boxed_unsync())
            .unwrap();
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                return;
            }
            let echo = message.is_text() || message.is_binary();
            if echo && ws.send(message).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-accept", accept)
        .body(Empty::new().boxed_unsync())
        .unwrap()
}

fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A GitHub-like delivery: a JSON body of about 200 KiB with non-ASCII text, CRLFs and
/// trailing spaces, so "byte for byte" means something.
fn delivery_body() -> Vec<u8> {
    let mut noise = vec![0u8; 100 * 1024];
    rand::thread_rng().fill_bytes(&mut noise);
    format!(
        "{{\"action\":\"opened\",\"zen\":\"Ünïcödé — ✓\",\"text\":\"a\\r\\nb  \",\"blob\":\"{}\"}}  \r\n",
        hex::encode(noise)
    )
    .into_bytes()
}

/// POSTs `body` to `https://hooks.funnel.test/hook` with `signature` (if any); returns the
/// status and the response body.
fn post_hook(
    edge: &EdgeLab,
    body: &[u8],
    delivery: &str,
    signature: Option<String>,
) -> (u16, String) {
    post_hook_via(edge, &edge.client, body, delivery, signature)
}

/// [`post_hook`] with `client` (which decides the ingress).
fn post_hook_via(
    edge: &EdgeLab,
    client: &reqwest::Client,
    body: &[u8],
    delivery: &str,
    signature: Option<String>,
) -> (u16, String) {
    let client = client.clone();
    let body = body.to_vec();
    let delivery = delivery.to_owned();
    edge.on_client(async move {
        let mut request = client
            .post(format!("https://{}/hook", hostname("hooks")))
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/e2e")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .body(body);
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    })
}

/// A thread that accepts on `host`'s 127.0.0.1 and pipes each connection to `target` in
/// the test's own namespace (where the lab's PostgreSQL listens): the laptop's "local
/// database". Returns the port it listens on.
fn bridge_into(lab: &NatLab, host: Host, target: SocketAddr) -> u16 {
    let listener = lab
        .run_in(host, || std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for inside in listener.incoming() {
            let Ok(inside) = inside else { return };
            std::thread::spawn(move || {
                let Ok(outside) = TcpStream::connect(target) else {
                    return;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    })
                };
                let a = pipe(inside.try_clone().unwrap(), outside.try_clone().unwrap());
                let b = pipe(outside, inside);
                let _ = a.join();
                let _ = b.join();
            });
        }
    });
    port
}

/// `psql` from home A against `host:port` (the ingress's public TCP funnel port).
fn psql_from_home_a(lab: &NatLab, port: u16, sql: &str) -> Output {
    lab.command(Host::HomeA, "psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &Host::Ingress.addr().to_string()])
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

/// Issue #8: a GitHub webhook funnel on a laptop behind a symmetric NAT. pebble validates
/// the ingress for real (HTTP-01 on :80); a delivery signed by the test arrives byte for
/// byte, forged, tampered and unsigned ones stop at the edge without the origin's counter
/// moving; then the ingress restarts and serves the same certificate without ordering.
#[test]
fn signed_webhooks_reach_the_laptop_and_forged_ones_stop_at_the_edge() {
    let mut edge = EdgeLab::start();
    let origin = Origin::new();
    let port = edge.start_origin(&origin).to_string();
    let funnel = edge.funnel(
        &[
            &port,
            "--name",
            "hooks",
            "--verify-webhook",
            "github",
            "--secret-env",
            "GH_SECRET",
        ],
        &[("GH_SECRET", GH_SECRET)],
    );
    let host = hostname("hooks");
    assert_eq!(funnel["url"], format!("https://{host}/"), "{funnel}");

    // A GET is no webhook delivery: the gate answers 403 (`method_not_allowed`) once the
    // route and pebble's certificate are in place, and the probe never reaches the origin.
    let leaf = edge.wait_until_served(&host, StatusCode::FORBIDDEN);
    assert_eq!(origin.requests(), 0, "a probe reached the origin");

    let body = delivery_body();
    let (status, answer) = post_hook(
        &edge,
        &body,
        "delivery-1",
        Some(github_signature(GH_SECRET, &body)),
    );
    assert_eq!(
        (status, answer.as_str()),
        (200, "origin ok"),
        "{}",
        edge.logs()
    );
    assert_eq!(origin.requests(), 1);
    let seen = origin.seen();
    let got = &seen[0];
    assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/hook"));
    assert!(
        got.body == body,
        "the body changed on the way ({} bytes sent, {} arrived)",
        body.len(),
        got.body.len()
    );
    let header = |name: &str| {
        got.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("x-github-delivery"), "delivery-1");
    assert_eq!(
        header("x-hub-signature-256"),
        github_signature(GH_SECRET, &body)
    );
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("host"), host);
    assert_eq!(header("x-forwarded-proto"), "https");
    // The client sits behind home A's NAT: the edge saw router A's public address.
    assert_eq!(header("x-forwarded-for"), Host::RouterA.addr().to_string());
    assert!(
        header("postern-gate").contains("github"),
        "{:?}",
        got.headers
    );

    // The ingress's /metrics: the edge's decision, and its embedded node's own series
    // (the data path that carried the delivery), in one OpenMetrics text.
    let scrape = edge.scrape_metrics();
    let series = |name: &str| -> Vec<(String, f64)> {
        scrape
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    let allowed: f64 = series("postern_ingress_requests_total{")
        .iter()
        .filter(|(key, _)| {
            key.contains(&format!("funnel=\"{host}\"")) && key.contains("result=\"allow\"")
        })
        .map(|(_, value)| value)
        .sum();
    assert!((allowed - 1.0).abs() < f64::EPSILON, "{scrape}");
    let received = series("postern_node_datagrams_received_total");
    assert!(
        received.len() == 1 && received[0].1 > 0.0,
        "the embedded node's datagrams: {scrape}"
    );
    assert!(
        series("postern_node_peers_online")
            .first()
            .is_some_and(|(_, online)| *online >= 1.0),
        "{scrape}"
    );
    assert!(
        !series("postern_node_netstack_tcp_sockets").is_empty(),
        "{scrape}"
    );
    assert_eq!(scrape.matches("# EOF").count(), 1, "{scrape}");
    assert!(scrape.trim_end().ends_with("# EOF"), "{scrape}");

    // Forged (wrong secret), tampered (signature of another body) and unsigned.
    let forged = github_signature("not the secret", &body);
    let (status, answer) = post_hook(&edge, &body, "delivery-2", Some(forged));
    assert_eq!(status, 403, "{answer}");
    let mut tampered = body.clone();
    tampered[20] ^= 1;
    let (status, answer) = post_hook(
        &edge,
        &tampered,
        "delivery-3",
        Some(github_signature(GH_SECRET, &body)),
    );
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = post_hook(&edge, &body, "delivery-4", None);
    assert_eq!(status, 401, "{answer}");
    assert_eq!(
        origin.requests(),
        1,
        "a refused delivery reached the origin"
    );

    // The ingress writes its audit lines from a writer thread, a moment after answering.
    let audit = wait_for(
        "the four decisions in the audit log",
        Duration::from_secs(10),
        || {
            let audit = edge.audit();
            let hook = audit
                .iter()
                .filter(|r| r["funnel"] == host.as_str() && r["path"] == "/hook")
                .count();
            (hook >= 4).then_some(audit)
        },
    );
    let allowed: Vec<&Value> = audit
        .iter()
        .filter(|r| r["funnel"] == host.as_str() && r["result"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 1, "{audit:#?}");
    assert_eq!(allowed[0]["owner"], "alice@example.com", "{}", allowed[0]);
    assert_eq!(allowed[0]["path"], "/hook", "{}", allowed[0]);
    let denied = audit
        .iter()
        .filter(|r| r["funnel"] == host.as_str() && r["result"] == "deny" && r["path"] == "/hook")
        .count();
    assert_eq!(denied, 3, "{audit:#?}");

    // Restart: the stored certificate is served again and nothing is ordered.
    let issued = edge.pebble.issued_certificates();
    assert_eq!(
        issued, 1,
        "pebble issued {issued} certificates for one hostname"
    );
    edge.stop_ingress();
    edge.start_ingress();
    let again = edge.wait_until_served(&host, StatusCode::FORBIDDEN);
    assert!(
        again == leaf,
        "the restarted ingress serves another certificate"
    );
    let log = edge.ingress_log(2);
    assert!(log.contains("using the stored certificate"), "{log}");
    assert!(
        !log.contains("ordering a certificate"),
        "the restart ordered again:\n{log}"
    );
    assert_eq!(
        edge.pebble.issued_certificates(),
        1,
        "pebble issued a certificate after the restart"
    );
    let (status, _) = post_hook(
        &edge,
        &body,
        "delivery-5",
        Some(github_signature(GH_SECRET, &body)),
    );
    assert_eq!(status, 200, "{}", edge.logs());
    assert_eq!(origin.requests(), 2);
}

/// An SSE stream and a WebSocket echo through an ungated funnel: each SSE event reaches the
/// client while the origin still holds the next one back (it sends the next only when the
/// client has acknowledged the previous, so a buffering edge would stall the test), and
/// WebSocket messages, text and a 64 KiB binary one, come back unchanged.
#[test]
fn websocket_and_sse_stream_through_the_edge() {
    let mut edge = EdgeLab::start();
    let origin = Origin::new();
    let port = edge.start_origin(&origin).to_string();
    let funnel = edge.funnel(&[&port, "--name", "streams"], &[]);
    let host = hostname("streams");
    assert_eq!(funnel["url"], format!("https://{host}/"), "{funnel}");
    edge.wait_until_served(&host, StatusCode::OK);

    let client = edge.client.clone();
    let acks = origin.acks_tx.clone();
    let url = format!("https://{host}/events");
    let events = edge.on_client(async move {
        let mut response = client
            .get(&url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        if response.status() != StatusCode::OK || content_type.as_deref() != Some("text/event-stream") {
            return Err(format!("{} {content_type:?}", response.status()));
        }
        let mut text = String::new();
        for n in 1..=3u32 {
            let want = format!("data: event {n}\n\n");
            while !text.contains(&want) {
                match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
                    Err(_) => {
                        return Err(format!(
                            "event {n} did not arrive within 30 s although the origin sent it (it holds the next back until then): the edge buffers; so far {text:?}"
                        ));
                    }
                    Ok(Err(e)) => return Err(format!("{e:?}")),
                    Ok(Ok(None)) => return Err(format!("the stream ended before event {n}: {text:?}")),
                    Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
                }
            }
            if n < 3 {
                acks.send(()).unwrap();
            }
        }
        // Then the stream ends (an empty last frame may come first).
        loop {
            match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
                Ok(Ok(None)) => return Ok(text),
                Ok(Ok(Some(chunk))) if chunk.is_empty() => {}
                other => return Err(format!("the stream did not end after event 3: {other:?}")),
            }
        }
    });
    let events = events.unwrap_or_else(|e| panic!("{e}\n{}", edge.logs()));
    assert_eq!(
        events,
        "id: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\nid: 3\ndata: event 3\n\n"
    );

    let root_pem = edge.root_pem.clone();
    let mut blob = vec![0u8; 64 * 1024];
    rand::thread_rng().fill_bytes(&mut blob);
    let sent = vec![
        Message::text("hello through the edge"),
        Message::binary(blob),
        Message::text("ünïcödé ✓"),
    ];
    let to_send = sent.clone();
    let echoed = edge.on_client(async move { websocket_exchange(&root_pem, &host, to_send).await });
    let echoed = echoed.unwrap_or_else(|e| panic!("{e}\n{}", edge.logs()));
    assert!(
        echoed == sent,
        "the WebSocket echo differs from what was sent"
    );
    assert!(
        origin.requests() >= 3,
        "the origin saw {} requests",
        origin.requests()
    );
}

/// Opens `wss://HOST/ws` at the ingress (TLS trusting only `root_pem`, HTTP/1.1), sends
/// each message and reads its echo; returns the echoes.
async fn websocket_exchange(
    root_pem: &str,
    host: &str,
    messages: Vec<Message>,
) -> Result<Vec<Message>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(ingress_addr())
        .await
        .map_err(|e| format!("connecting to the ingress: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with the ingress: {e}"))?;
    let (mut ws, response) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls)
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("handshake answered {}", response.status()));
    }
    let mut echoes = Vec::new();
    for message in messages {
        ws.send(message).await.map_err(|e| format!("send: {e}"))?;
        let echo = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| "no echo within 30 s".to_owned())?
            .ok_or("the WebSocket closed")?
            .map_err(|e| format!("receive: {e}"))?;
        echoes.push(echo);
    }
    let _ = ws.close(None).await;
    Ok(echoes)
}

/// A TCP funnel of the laptop's local PostgreSQL (the lab's cluster, reached from the
/// laptop's loopback through a bridge): psql from home A runs a session against the
/// ingress's public port, and a 20 000-row result arrives exactly as psql prints it when
/// connected directly. The ingress audits the connection with bytes both ways.
#[test]
fn a_tcp_funnel_carries_a_psql_session() {
    let edge = EdgeLab::start();
    let pg = PostgresCluster::start().unwrap();
    let local = bridge_into(
        &edge.lab,
        Host::HomeB,
        SocketAddr::from(([127, 0, 0, 1], pg.port())),
    );
    let funnel = edge.funnel(&[&local.to_string(), "--tcp", "--name", "db"], &[]);
    let url = funnel["url"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let prefix = format!("tcp://{}:", hostname("db"));
    let public: u16 = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} is not {prefix}PORT"))
        .parse()
        .unwrap();
    assert!((20000..=20009).contains(&public), "{url}");

    wait_for("psql to get through the TCP funnel", SERVE_WAIT, || {
        let out = psql_from_home_a(&edge.lab, public, "select 1");
        (out.status.success() && out.stdout == b"1\n").then_some(())
    });
    let out = psql_from_home_a(
        &edge.lab,
        public,
        "create table e2e (id int primary key, v text); \
         insert into e2e select g, md5(g::text) from generate_series(1, 20000) g; \
         select count(*) from e2e",
    );
    assert!(
        out.status.success(),
        "psql session: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        edge.logs()
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("INSERT 0 20000\n") && printed.ends_with("\n20000\n"),
        "{printed}"
    );
    let query = "select id, v from e2e order by id";
    let through = psql_from_home_a(&edge.lab, public, query);
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    let direct = pg.psql(query).unwrap();
    assert_eq!(through.stdout.len(), direct.len());
    assert!(
        through.stdout == direct.as_bytes(),
        "the result through the funnel differs from the direct one"
    );

    let record = wait_for("the connection records", Duration::from_secs(20), || {
        edge.audit()
            .into_iter()
            .filter(|r| r["kind"] == "tcp" && r["result"] == "allow")
            .max_by_key(|r| r["bytes_to_client"].as_u64().unwrap_or(0))
            .filter(|r| r["bytes_to_client"].as_u64().unwrap_or(0) > direct.len() as u64)
    });
    assert!(
        record["bytes_from_client"].as_u64().unwrap_or(0) > 0,
        "{record}"
    );
    assert_eq!(record["owner"], "alice@example.com", "{record}");
}

/// A funnel opened with `--ttl` serves until its expiry, then the ingress stops serving it
/// without a new request from anyone (no 200, the origin's counter stays still) and audits
/// the expiry.
#[test]
fn a_funnel_stops_at_its_expiry() {
    let mut edge = EdgeLab::start();
    let origin = Origin::new();
    let port = edge.start_origin(&origin).to_string();
    let funnel = edge.funnel(&[&port, "--name", "brief", "--ttl", "45s"], &[]);
    let host = hostname("brief");
    assert!(!funnel["expires_at"].is_null(), "{funnel}");
    edge.wait_until_served(&host, StatusCode::OK);

    let client = edge.client.clone();
    let url = format!("https://{host}/after");
    let get = move || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            match client.get(&url).send().await {
                Ok(response) => Ok(response.status()),
                Err(error) => Err(format!("{error:?}")),
            }
        }
    };
    let outcome = wait_for(
        "the funnel to expire",
        Duration::from_secs(120),
        || match edge.on_client(get()) {
            Ok(StatusCode::OK) => None,
            other => Some(other),
        },
    );
    eprintln!("after the expiry: {outcome:?}");
    assert!(
        matches!(outcome, Err(_) | Ok(StatusCode::NOT_FOUND)),
        "after the expiry: {outcome:?}"
    );
    let before = origin.requests();
    let again = edge.on_client(get());
    assert!(
        matches!(again, Err(_) | Ok(StatusCode::NOT_FOUND)),
        "a request after the expiry: {again:?}"
    );
    assert_eq!(
        origin.requests(),
        before,
        "a request after the expiry reached the origin"
    );
    wait_for("the expiry record", Duration::from_secs(10), || {
        edge.audit()
            .iter()
            .any(|r| {
                r["funnel"] == host.as_str() && r["result"] == "expire" && r["reason"] == "expired"
            })
            .then_some(())
    });
}

/// Issue #8 item 7: two ingresses serve the same funnels with one certificate. The first
/// orders it from pebble and stores it at the coord; the second (on another public host)
/// finds it there and orders nothing; both then carry signed deliveries to the laptop.
#[test]
fn two_ingresses_share_one_certificate_through_the_coord() {
    let mut edge = EdgeLab::start();
    let origin = Origin::new();
    let port = edge.start_origin(&origin).to_string();
    edge.funnel(
        &[
            &port,
            "--name",
            "hooks",
            "--verify-webhook",
            "github",
            "--secret-env",
            "GH_SECRET",
        ],
        &[("GH_SECRET", GH_SECRET)],
    );
    let host = hostname("hooks");
    let leaf = edge.wait_until_served(&host, StatusCode::FORBIDDEN);
    assert_eq!(edge.pebble.issued_certificates(), 1);
    wait_for(
        "the first ingress to share its certificate",
        Duration::from_secs(30),
        || {
            edge.ingress_log(1)
                .contains("certificate shared with the other ingresses")
                .then_some(())
        },
    );

    // The second ingress runs on the lab's relay host (198.18.0.20; pebble's mock DNS still
    // sends validations to the first, so an order by the second could not even succeed).
    let second_log = edge.path("edge2-1.log");
    let mut second = edge.spawn_ingress(Host::Relay, "edge2", &second_log);
    let second_client =
        https_client_to(&edge.root_pem, SocketAddr::from((Host::Relay.addr(), 443)));
    let leaf2 = edge.wait_until_served_by(&second_client, &host, StatusCode::FORBIDDEN);
    let log = std::fs::read_to_string(&second_log).unwrap();
    assert!(
        leaf2 == leaf,
        "the second ingress serves another certificate:\n{log}"
    );
    assert!(
        log.contains("using the certificate another ingress shared"),
        "{log}"
    );
    assert!(
        !log.contains("ordering a certificate"),
        "the second ingress ordered:\n{log}"
    );
    assert_eq!(edge.pebble.issued_certificates(), 1, "{log}");

    let body = delivery_body();
    for (client, delivery) in [(&second_client, "via-second"), (&edge.client, "via-first")] {
        let signature = github_signature(GH_SECRET, &body);
        let (status, answer) = post_hook_via(&edge, client, &body, delivery, Some(signature));
        assert_eq!((status, answer.as_str()), (200, "origin ok"), "{delivery}");
        let forged = github_signature("forged", &body);
        let (status, _) = post_hook_via(&edge, client, &body, delivery, Some(forged));
        assert_eq!(status, 403, "{delivery}");
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.body == body));

    // The second keeps the shared certificate in its own store: a restart asks nobody.
    second.stop();
    let restarted_log = edge.path("edge2-2.log");
    let _second = edge.spawn_ingress(Host::Relay, "edge2", &restarted_log);
    let leaf3 = edge.wait_until_served_by(&second_client, &host, StatusCode::FORBIDDEN);
    assert!(leaf3 == leaf);
    let log = std::fs::read_to_string(&restarted_log).unwrap();
    assert!(log.contains("using the stored certificate"), "{log}");
    assert_eq!(edge.pebble.issued_certificates(), 1);
}

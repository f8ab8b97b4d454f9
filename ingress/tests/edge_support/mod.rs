//! Shared pieces of the edge tests: free ports, a counting origin, and the real
//! `postern-ingress` binary started against pebble.

#![allow(dead_code)]
// each test crate uses a different part
// Test-only helpers: a failed unwrap here is a broken test fixture, reported by the panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_arguments
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_lab::LabProcess;
use postern_lab::pebble::{Pebble, PebbleConfig, PebbleMode};

/// A free loopback TCP port (bound then released).
///
/// Never the same port twice in one test process: the kernel may hand a port that was just
/// released to the next `bind(0)`, so two calls in a row (the HTTP and the TLS port) could
/// otherwise name one port, and the ingress would fail to bind its second listener.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A local HTTP/1.1 origin that counts requests and keeps what it received.
#[derive(Clone, Default)]
pub struct Origin {
    pub count: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<(http::request::Parts, Bytes)>>>,
}

impl Origin {
    /// Starts the origin on a free loopback port; returns its address.
    pub async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let origin = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let origin = origin.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let origin = origin.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                origin.count.fetch_add(1, Ordering::SeqCst);
                                origin.received.lock().unwrap().push((parts, body));
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from_static(b"origin ok"),
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        address
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Pebble in strict mode, validating against the given ports on 127.0.0.1.
pub fn strict_pebble(http_port: u16, tls_port: u16) -> Pebble {
    Pebble::start(PebbleConfig {
        mode: PebbleMode::Strict,
        http_port,
        tls_port,
        ..Default::default()
    })
    .unwrap()
}

/// One run of the real binary.
pub struct Ingress {
    pub process: LabProcess,
    pub https: SocketAddr,
    pub audit_log: PathBuf,
    /// Where it serves `/metrics` and `/healthz`.
    pub metrics: SocketAddr,
}

/// Writes a config and starts `postern-ingress serve` with it.
pub fn start_ingress(
    dir: &Path,
    run: &str,
    pebble: &Pebble,
    challenge: &str,
    http_port: u16,
    tls_port: u16,
    funnels_toml: &str,
    envs: &[(&str, &str)],
) -> Ingress {
    let audit_log = dir.join("audit.jsonl");
    let metrics_port = free_port();
    let config = format!(
        r#"
state_dir = "{state}"
audit_log = "{audit}"
[listen]
https = "127.0.0.1:{tls_port}"
http = "127.0.0.1:{http_port}"
metrics = "127.0.0.1:{metrics_port}"
[acme]
directory = "{directory}"
ca_bundle = "{ca}"
challenge = "{challenge}"
{funnels_toml}
"#,
        state = dir.join("state").display(),
        audit = audit_log.display(),
        directory = pebble.directory_url(),
        ca = pebble.api_ca_path().display(),
    );
    let config_path = dir.join("ingress.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern-ingress"));
    command.args(["serve", "--config"]).arg(&config_path);
    command.env("RUST_LOG", "info");
    for (name, value) in envs {
        command.env(name, value);
    }
    let process = LabProcess::spawn(
        "postern-ingress",
        command,
        &dir.join(format!("ingress-{run}.log")),
    )
    .unwrap();
    Ingress {
        process,
        https: format!("127.0.0.1:{tls_port}").parse().unwrap(),
        audit_log,
        metrics: format!("127.0.0.1:{metrics_port}").parse().unwrap(),
    }
}

/// A client that trusts `root_pem` and sends `host` to the ingress.
pub fn client(root_pem: &str, host: &str, ingress: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .resolve(host, ingress)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Polls `https://host/` until the TLS handshake succeeds with a certificate chaining to
/// the pebble root; returns the leaf certificate (DER). Fails after `limit`.
pub async fn wait_for_certificate(
    ingress: &mut Ingress,
    client: &reqwest::Client,
    host: &str,
    limit: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        ingress.process.check_running().unwrap();
        match client
            .get(format!("https://{host}/ready-probe"))
            .send()
            .await
        {
            Ok(response) => {
                let info = response
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .unwrap();
                return info.peer_certificate().unwrap().to_vec();
            }
            Err(error) => last = format!("{error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "no certificate for {host} after {limit:?}; last error: {last}\ningress log:\n{}",
        ingress.process.log_tail()
    );
}

/// The records of the ingress's audit log once `complete` says they are all there: the
/// ingress writes them from its own writer thread, a moment after it answered. Fails after
/// ten seconds, showing what was written.
pub async fn audit_records(
    ingress: &Ingress,
    complete: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&ingress.audit_log).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        if complete(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log never got the expected records:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ingress's log so far.
pub fn log_of(ingress: &Ingress) -> String {
    std::fs::read_to_string(ingress.process.log_path()).unwrap_or_default()
}

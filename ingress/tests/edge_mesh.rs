//! The funnel data path end to end, in process: a public HTTPS client → the `Edge` (TLS,
//! gate chain, audit) → `MeshUpstream` through the ingress's userspace WireGuard tunnel →
//! the developer node's funnel acceptor (`ServeRuntime`) → a local HTTP origin.
//!
//! Shows: the gate's identity reaches the origin as headers and client-forged `Postern-*`
//! headers do not; a streamed response streams; an upgrade becomes a byte pipe; the node
//! refuses a port it does not funnel and a peer that is not an ingress, and the edge
//! answers `502` and audits the refusal's code.

// Helper functions of these tests unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use postern_ingress::audit::{AuditRecord, AuditSink};
use postern_ingress::certs::{CertResolver, HttpChallenges, certified_key_from_pem};
use postern_ingress::edge::{Edge, Funnel, Limits, MeshUpstream};
use postern_ingress::gate::{Decision, Gate, GateChain, GateRequest, Identity};
use postern_node::serve::{
    NoopObserver, OriginUrl, PeerIdentity, ServeConfig, ServeRuntime, ServeTable, Service,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

mod common;
use common::{INGRESS_ADDR, NODE_ADDR, TunnelPair, tunnel_pair};

#[derive(Debug, Default)]
struct MemorySink(Mutex<Vec<AuditRecord>>);
impl AuditSink for MemorySink {
    fn record(&self, record: &AuditRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

/// Admits everything as a webhook delivery, with an attribute.
#[derive(Debug)]
struct TestGate;
impl Gate for TestGate {
    fn name(&self) -> &str {
        "webhook:test"
    }
    fn evaluate(&self, _request: &GateRequest<'_>, _now: SystemTime) -> Decision {
        Decision::Allow {
            gate: "webhook:test".into(),
            identity: Identity::new("webhook:test").with_attribute("Delivery", "d-42"),
        }
    }
}

/// A raw HTTP/1.1 origin: `/stream` sends one chunk, waits for `release`, sends another;
/// `/upgrade` answers 101 and echoes bytes; anything else answers with the request head it
/// received.
async fn start_origin(release: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let release = Arc::clone(&release);
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                if head.starts_with("GET /stream ") {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\nfirst\n\n\r\n").await.unwrap();
                    release.notified().await;
                    tcp.write_all(b"8\r\nsecond\n\n\r\n0\r\n\r\n")
                        .await
                        .unwrap();
                } else if head.starts_with("GET /upgrade ") {
                    tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").await.unwrap();
                    let mut buffer = [0u8; 64];
                    loop {
                        let n = tcp.read(&mut buffer).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        tcp.write_all(&buffer[..n]).await.unwrap();
                    }
                } else {
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    tcp.write_all(response.as_bytes()).await.unwrap();
                }
            });
        }
    });
    address
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(tcp: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

struct Fixture {
    edge_addr: SocketAddr,
    cert_pem: String,
    audit: Arc<MemorySink>,
    release: Arc<Notify>,
    ingress_is_ingress: Arc<AtomicBool>,
    _tunnels: TunnelPair,
    _runtime: ServeRuntime,
}

async fn start() -> Fixture {
    // The developer's node: funnels port 3000, serves 4000 on the tailnet only.
    let tunnels = tunnel_pair(31).await;
    let node = &tunnels.node;
    let release = Arc::new(Notify::new());
    let origin = start_origin(Arc::clone(&release)).await;
    let origin = OriginUrl::parse(&format!("http://{origin}")).unwrap();
    let mut config = ServeConfig::new();
    config
        .insert(Service::http(3000, origin.clone()).funnelled(true))
        .unwrap();
    config.insert(Service::http(4000, origin)).unwrap();
    let ingress_is_ingress = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&ingress_is_ingress);
    let directory = move |addr: IpAddr| {
        (addr == INGRESS_ADDR.parse::<IpAddr>().unwrap()).then(|| PeerIdentity {
            node_name: "ingress-1".into(),
            is_ingress: flag.load(Ordering::SeqCst),
            ..PeerIdentity::default()
        })
    };
    let runtime = ServeRuntime::start(
        node.netstack().clone(),
        ServeTable::new(config),
        Arc::new(directory),
        Arc::new(NoopObserver),
    )
    .unwrap();

    // The ingress's embedded node.
    let ingress = &tunnels.ingress;
    let node_ip: IpAddr = NODE_ADDR.parse().unwrap();
    let funnel = |hostname: &str, port: u16| Funnel {
        hostname: hostname.into(),
        upstream: Arc::new(
            MeshUpstream::new(ingress.netstack().clone(), node_ip, port, hostname).unwrap(),
        ),
        chain: GateChain::gate(TestGate),
        route: None,
    };

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["app.test".into(), "closed.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let resolver = Arc::new(CertResolver::new());
    resolver.set_static(certified_key_from_pem(&cert.pem(), &key.serialize_pem(), "test").unwrap());
    let audit = Arc::new(MemorySink::default());
    let edge = Arc::new(Edge::new(
        vec![funnel("app.test", 3000), funnel("closed.test", 4000)],
        Limits::default(),
        audit.clone(),
        Arc::new(HttpChallenges::default()),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_addr = listener.local_addr().unwrap();
    tokio::spawn(edge.serve_tls(listener, Edge::tls_config(resolver).unwrap()));
    Fixture {
        edge_addr,
        cert_pem: cert.pem(),
        audit,
        release,
        ingress_is_ingress,
        _tunnels: tunnels,
        _runtime: runtime,
    }
}

fn client(fixture: &Fixture) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fixture.cert_pem.as_bytes()).unwrap())
        .resolve("app.test", fixture.edge_addr)
        .resolve("closed.test", fixture.edge_addr)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The audit records so far (a record is written when its response body is over).
async fn audit_records(fixture: &Fixture, at_least: usize) -> Vec<AuditRecord> {
    for _ in 0..100 {
        let records = fixture.audit.0.lock().unwrap().clone();
        if records.len() >= at_least {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {at_least} audit records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_identity_reaches_the_origin_over_the_mesh_and_forgeries_do_not() {
    let fixture = start().await;
    let response = client(&fixture)
        .post("https://app.test/hook?x=1")
        .header("Postern-Identity", "user:admin")
        .header("postern-user-login", "root@evil")
        .header("Postern-Funnel-Host", "evil.test")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let head = response.text().await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("post /hook?x=1 http/1.1\r\n"), "{head}");
    assert!(head.contains("postern-funnel-host: app.test\r\n"), "{head}");
    assert!(head.contains("postern-gate: webhook:test\r\n"), "{head}");
    assert!(
        head.contains("postern-identity: webhook:test\r\n"),
        "{head}"
    );
    assert!(
        head.contains("postern-identity-delivery: d-42\r\n"),
        "{head}"
    );
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(!head.contains("user:admin"), "{head}");
    assert!(!head.contains("root@evil"), "{head}");
    assert!(!head.contains("evil.test"), "{head}");
    assert_eq!(head.matches("postern-identity:").count(), 1, "{head}");
    let records = audit_records(&fixture, 1).await;
    assert_eq!(records[0].result, "allow");
    assert_eq!(records[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_streams_through_the_mesh() {
    let fixture = start().await;
    let mut response = client(&fixture)
        .get("https://app.test/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The origin holds the second chunk until released: the first must arrive alone.
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first\n\n");
    fixture.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_becomes_a_byte_pipe_through_the_mesh() {
    let fixture = start().await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut fixture.cert_pem.as_bytes()) {
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
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(fixture.edge_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("app.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /upgrade HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"hello across the mesh").await.unwrap();
    let mut echoed = [0u8; 21];
    tls.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello across the mesh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refusals_become_502_with_an_audited_reason() {
    let fixture = start().await;
    let client = client(&fixture);
    // Port 4000 is served on the tailnet but not funnelled.
    let response = client.get("https://closed.test/").send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.text().await.unwrap(),
        "node_refused_port_not_funnelled\n"
    );
    // The node no longer sees the ingress as an ingress.
    fixture.ingress_is_ingress.store(false, Ordering::SeqCst);
    let response = client.get("https://app.test/").send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.text().await.unwrap(), "node_refused_not_ingress\n");

    let records = audit_records(&fixture, 2).await;
    assert_eq!(records[0].result, "error");
    assert_eq!(
        records[0].reason.as_deref(),
        Some("node_refused_port_not_funnelled")
    );
    assert_eq!(records[0].funnel.as_deref(), Some("closed.test"));
    assert_eq!(
        records[1].reason.as_deref(),
        Some("node_refused_not_ingress")
    );
}

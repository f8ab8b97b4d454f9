//! TLS passthrough on the edge's TLS port, in-process: curl sees the origin's own
//! certificate (not the edge's), an unknown SNI gets not a single byte, a PROXY v2 header
//! precedes the untouched ClientHello, and each connection is audited.

// Helper functions of these tests unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_ingress::audit::{AuditRecord, AuditSink, ConnectionRecord};
use postern_ingress::certs::{CertResolver, HttpChallenges, certified_key_from_pem};
use postern_ingress::edge::{Edge, Funnel, Limits, TcpUpstream};
use postern_ingress::gate::{GateChain, PassThroughGate};
use postern_ingress::tcp_funnel::{ClientLimiter, PassthroughFunnel, TcpLimits, TlsPortRouter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct MemorySink(Mutex<Vec<ConnectionRecord>>);
impl AuditSink for MemorySink {
    fn record(&self, _record: &AuditRecord) {}
    fn record_connection(&self, record: &ConnectionRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

impl MemorySink {
    async fn wait_for(&self, n: usize) -> Vec<ConnectionRecord> {
        for _ in 0..200 {
            let records = self.0.lock().unwrap().clone();
            if records.len() >= n {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} audit records: {:?}", self.0.lock().unwrap());
    }
}

struct Fixture {
    edge: SocketAddr,
    edge_cert_pem: String,
    origin_cert_pem: String,
    origin_accepted: Arc<AtomicUsize>,
    proxied_target: TcpListener,
    audit: Arc<MemorySink>,
    dir: tempfile::TempDir,
}

fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A TLS origin with its own certificate for `secure.test`: answers one HTTP/1.1 request.
async fn start_tls_origin(accepted: Arc<AtomicUsize>) -> (String, String) {
    let (cert_pem, key_pem) = self_signed("secure.test");
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\norigin-tls\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (address, cert_pem)
}

async fn start_edge() -> Fixture {
    let origin_accepted = Arc::new(AtomicUsize::new(0));
    let (origin, origin_cert_pem) = start_tls_origin(Arc::clone(&origin_accepted)).await;
    let proxied_target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (edge_cert_pem, edge_key_pem) = self_signed("app.test");
    let resolver = Arc::new(CertResolver::new());
    // A static certificate that would be served for any name the edge terminates.
    resolver.set_static(certified_key_from_pem(&edge_cert_pem, &edge_key_pem, "test").unwrap());
    let audit = Arc::new(MemorySink::default());
    let router = TlsPortRouter::new(
        vec![
            PassthroughFunnel {
                hostname: "Secure.Test".into(),
                upstream: Arc::new(TcpUpstream::new(origin)),
                proxy_protocol: false,
                route: None,
                gates: None,
            },
            PassthroughFunnel {
                hostname: "proxied.test".into(),
                upstream: Arc::new(TcpUpstream::new(
                    proxied_target.local_addr().unwrap().to_string(),
                )),
                proxy_protocol: true,
                route: None,
                gates: None,
            },
        ],
        TcpLimits::default(),
        ClientLimiter::new(Some(16)),
        audit.clone(),
    );
    let edge = Arc::new(
        Edge::new(
            vec![Funnel {
                hostname: "app.test".into(),
                upstream: Arc::new(TcpUpstream::new("127.0.0.1:9")),
                chain: GateChain::gate(PassThroughGate),
                route: None,
            }],
            Limits::default(),
            audit.clone(),
            Arc::new(HttpChallenges::default()),
        )
        .with_tls_router(Arc::new(router)),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(edge.serve_tls(listener, Edge::tls_config(resolver).unwrap()));
    Fixture {
        edge: address,
        edge_cert_pem,
        origin_cert_pem,
        origin_accepted,
        proxied_target,
        audit,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// Runs curl against `https://secure.test:PORT/` resolved to the edge, trusting `ca_pem`.
async fn curl(fixture: &Fixture, ca_pem: &str, name: &str) -> std::process::Output {
    let ca = fixture.dir.path().join(name);
    std::fs::write(&ca, ca_pem).unwrap();
    let port = fixture.edge.port();
    let resolve = format!("secure.test:{port}:127.0.0.1");
    let url = format!("https://secure.test:{port}/");
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve", &resolve, "--cacert"])
            .arg(&ca)
            .arg(&url)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The raw bytes of a ClientHello for `sni`, made by rustls.
fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
            .unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_the_origins_certificate_not_the_edges() {
    let fixture = start_edge().await;
    let output = curl(&fixture, &fixture.origin_cert_pem, "origin.pem").await;
    assert!(
        output.status.success(),
        "curl trusting only the origin's certificate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"origin-tls\n");

    // Trusting only the edge's certificate fails: the edge never terminated this TLS.
    let output = curl(&fixture, &fixture.edge_cert_pem, "edge.pem").await;
    assert!(
        !output.status.success(),
        "the edge's certificate was served"
    );
    assert_eq!(output.status.code(), Some(60), "curl: {output:?}"); // peer certificate not trusted

    let records = fixture.audit.wait_for(2).await;
    for record in &records {
        assert_eq!(record.kind, "tls-passthrough");
        assert_eq!(record.funnel.as_deref(), Some("secure.test"));
        assert_eq!(record.result, "allow");
        assert!(record.bytes_from_client > 0 && record.bytes_to_client > 0);
    }
    assert_eq!(fixture.origin_accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unknown_sni_gets_nothing() {
    let fixture = start_edge().await;
    let mut tcp = TcpStream::connect(fixture.edge).await.unwrap();
    tcp.write_all(&client_hello("nobody.test")).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(read.is_ok() || answer.is_empty(), "{read:?}");
    assert!(
        answer.is_empty(),
        "the edge answered {} bytes",
        answer.len()
    );
    let records = fixture.audit.wait_for(1).await;
    assert_eq!(records[0].kind, "tls");
    assert_eq!(records[0].funnel, None);
    assert_eq!(
        (records[0].result, records[0].reason.as_str()),
        ("deny", "unknown_sni")
    );
    assert_eq!(fixture.origin_accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn proxy_header_then_the_untouched_client_hello() {
    let fixture = start_edge().await;
    let hello = client_hello("proxied.test");
    let mut tcp = TcpStream::connect(fixture.edge).await.unwrap();
    let client = tcp.local_addr().unwrap();
    tcp.write_all(&hello).await.unwrap();
    let (mut target, _) = fixture.proxied_target.accept().await.unwrap();
    let mut header = [0u8; 28];
    target.read_exact(&mut header).await.unwrap();
    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(header[12..16], [0x21, 0x11, 0, 12]);
    assert_eq!(header[16..20], [127, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([header[24], header[25]]), client.port());
    assert_eq!(
        u16::from_be_bytes([header[26], header[27]]),
        fixture.edge.port()
    );
    let mut forwarded = vec![0u8; hello.len()];
    target.read_exact(&mut forwarded).await.unwrap();
    assert_eq!(forwarded, hello);
    // And the pipe carries the target's answer back.
    target
        .write_all(b"\x15\x03\x03\x00\x02\x02\x28")
        .await
        .unwrap();
    let mut back = [0u8; 7];
    tcp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"\x15\x03\x03\x00\x02\x02\x28");
}

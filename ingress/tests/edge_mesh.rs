//! The funnel data path end to end, in process: a public HTTPS client → the `Edge` (TLS,
//! gate chain, audit) → `MeshUpstream` through the ingress's userspace WireGuard tunnel →
//! the developer node's funnel acceptor (`ServeRuntime`) → a local HTTP origin.
//!
//! Shows: the gate's identity reaches the origin as headers and client-forged `Postern-*`
//! headers do not; a streamed response streams; an upgrade becomes a byte pipe; the node
//! refuses a port it does not funnel and a peer that is not an ingress, and the edge
//! answers `502` and audits the refusal's code. Pooling: sequential requests of different
//! clients and identities share a hop stream and each reaches the origin with its own
//! identity; a denied request never reaches the origin; a pooled stream of a peer that
//! lost its ingress mark carries no more requests.

// Helper functions of these tests unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use postern_ingress::audit::{AuditRecord, AuditSink};
use postern_ingress::certs::HttpChallenges;
use postern_ingress::edge::{Edge, Funnel, Limits, MeshUpstream};
use postern_ingress::gate::{Decision, Gate, GateChain, GateRequest, Identity, ReasonCode};
use postern_node::serve::{
    NoopObserver, OriginUrl, PeerIdentity, ServeConfig, ServeRuntime, ServeTable, Service,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

mod common;
mod local_tls;
use common::{INGRESS_ADDR, NODE_ADDR, TunnelPair, tunnel_pair};

#[derive(Debug, Default)]
struct MemorySink(Mutex<Vec<AuditRecord>>);
impl AuditSink for MemorySink {
    fn record(&self, record: &AuditRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

/// Admits everything as a webhook delivery, with an attribute; as `user:NAME` when the
/// request has `x-test-user: NAME`; denies a request with `x-test-deny`.
#[derive(Debug)]
struct TestGate;
impl Gate for TestGate {
    fn name(&self) -> &str {
        "webhook:test"
    }
    fn evaluate(&self, request: &GateRequest<'_>, _now: SystemTime) -> Decision {
        if request.headers().contains_key("x-test-deny") {
            return Decision::deny(ReasonCode::IpDenied);
        }
        if let Some(user) = request
            .headers()
            .get("x-test-user")
            .and_then(|v| v.to_str().ok())
        {
            return Decision::Allow {
                gate: "webhook:test".into(),
                identity: Identity::new(format!("user:{user}")).with_attribute("Name", user),
            };
        }
        Decision::Allow {
            gate: "webhook:test".into(),
            identity: Identity::new("webhook:test").with_attribute("Delivery", "d-42"),
        }
    }
}

/// A raw HTTP/1.1 origin: `/stream` sends one chunk, waits for `release`, sends another;
/// `/upgrade` answers 101 and echoes bytes; anything else answers with the request head it
/// received.
async fn start_origin(release: Arc<Notify>, requests: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let release = Arc::clone(&release);
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                if head.starts_with("POST /early ") {
                    // Refuses an upload before reading it, and closes with the body unread.
                    requests.fetch_add(1, Ordering::SeqCst);
                    tcp.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return;
                }
                // Read the body too, as a real origin does: one that answers and closes
                // with the body unread resets the connection under the node's client,
                // and the node then closes the hop stream whose request it could not
                // finish (which made the pooled-stream count vary under load).
                let mut body = vec![0u8; local_tls::content_length(&head)];
                tcp.read_exact(&mut body).await.unwrap();
                requests.fetch_add(1, Ordering::SeqCst);
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
    /// Requests the origin received.
    origin_requests: Arc<AtomicUsize>,
    /// How often the node looked the ingress up: once per hop stream it accepted, plus
    /// once per request on a pooled stream (the node re-checks the ingress mark).
    lookups: Arc<AtomicUsize>,
    _tunnels: TunnelPair,
    _runtime: ServeRuntime,
}

async fn start() -> Fixture {
    // The developer's node: funnels port 3000, serves 4000 on the tailnet only.
    let tunnels = tunnel_pair(31).await;
    let node = &tunnels.node;
    let release = Arc::new(Notify::new());
    let origin_requests = Arc::new(AtomicUsize::new(0));
    let origin = start_origin(Arc::clone(&release), Arc::clone(&origin_requests)).await;
    let origin = OriginUrl::parse(&format!("http://{origin}")).unwrap();
    let mut config = ServeConfig::new();
    config
        .insert(Service::http(3000, origin.clone()).funnelled(true))
        .unwrap();
    config.insert(Service::http(4000, origin)).unwrap();
    let ingress_is_ingress = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&ingress_is_ingress);
    let lookups = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&lookups);
    let directory = move |addr: IpAddr| {
        counter.fetch_add(1, Ordering::SeqCst);
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

    let (resolver, cert_pem) = local_tls::self_signed(&["app.test", "closed.test"]);
    let audit = Arc::new(MemorySink::default());
    let edge = Arc::new(Edge::new(
        vec![funnel("app.test", 3000), funnel("closed.test", 4000)],
        Limits::default(),
        audit.clone(),
        Arc::new(HttpChallenges::default()),
    ));
    let edge_addr = local_tls::serve_edge(edge, resolver).await;
    Fixture {
        edge_addr,
        cert_pem,
        audit,
        release,
        ingress_is_ingress,
        origin_requests,
        lookups,
        _tunnels: tunnels,
        _runtime: runtime,
    }
}

/// A well-formed context header value for app.test claiming `principal`: what a public
/// client might forge.
fn forged_context(principal: &str) -> String {
    use postern_proto::funnel_hop::{Admission, FunnelHello, FunnelHostname, IdentityText};
    FunnelHello {
        client: "198.51.100.66:1".parse().unwrap(),
        target_port: 3000,
        hostname: FunnelHostname::parse("app.test").unwrap(),
        admission: Some(Admission {
            gate: IdentityText::lossy("webhook:test"),
            principal: IdentityText::lossy(principal),
            attributes: Vec::new(),
        }),
        per_request_context: false,
    }
    .encode_context()
    .unwrap()
}

/// A client whose connections to the edge come from `source` (any 127.0.0.0/8 address).
fn client_from(fixture: &Fixture, source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fixture.cert_pem.as_bytes()).unwrap())
        .resolve("app.test", fixture.edge_addr)
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Hop streams the node accepted, given that `pooled_requests` requests went over pooled
/// streams (see [`Fixture::lookups`]).
fn hop_streams(fixture: &Fixture, pooled_requests: usize) -> usize {
    fixture.lookups.load(Ordering::SeqCst) - pooled_requests
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
        .header("Postern-Hop-Context", forged_context("user:admin"))
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
    assert!(!head.contains("postern-hop-context"), "{head}");
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
async fn an_upload_the_origin_refuses_unread_does_not_cost_the_pooled_hop_stream() {
    let fixture = start().await;
    let client = client(&fixture);
    let ok = client.get("https://app.test/first").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    ok.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The origin answers 413 without reading the 8 MiB and resets its connection. The
    // node reads the rest of the upload from the hop stream and drops it, so that stream
    // carries the next request.
    let refused = client
        .post("https://app.test/early")
        .body(vec![b'u'; 8 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);
    refused.bytes().await.unwrap();
    // The edge finishes sending the upload on the hop stream before the stream is idle
    // again (more than the node's and the origin's socket buffers hold, so the origin's
    // reset comes while the node is still forwarding it).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = client.get("https://app.test/after").send().await.unwrap();
    assert_eq!(after.status(), 200);
    after.bytes().await.unwrap();
    assert_eq!(fixture.origin_requests.load(Ordering::SeqCst), 3);
    let streams = hop_streams(&fixture, 3);
    assert_eq!(
        streams, 1,
        "{streams} hop streams for 3 sequential requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_becomes_a_byte_pipe_through_the_mesh() {
    let fixture = start().await;
    let mut tls = local_tls::connect(&fixture.cert_pem, fixture.edge_addr, "app.test").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_different_clients_share_a_hop_stream_each_with_its_own_identity() {
    let fixture = start().await;
    let alice = client_from(&fixture, "127.0.0.1");
    let bob = client_from(&fixture, "127.0.0.2");
    let rounds = 6;
    for round in 0..rounds {
        for (client, user, address, other) in [
            (&alice, "alice", "127.0.0.1", "bob"),
            (&bob, "bob", "127.0.0.2", "alice"),
        ] {
            // Bob also forges a context naming alice; the edge drops it.
            let response = client
                .post(format!("https://app.test/hook?round={round}"))
                .header("x-test-user", user)
                .header("Postern-Hop-Context", forged_context("user:alice"))
                .body("payload")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let head = response.text().await.unwrap().to_ascii_lowercase();
            assert!(
                head.contains(&format!("postern-identity: user:{user}\r\n")),
                "{head}"
            );
            assert!(
                head.contains(&format!("postern-identity-name: {user}\r\n")),
                "{head}"
            );
            assert!(
                head.contains(&format!("x-forwarded-for: {address}\r\n")),
                "{head}"
            );
            assert!(!head.contains(&format!("user:{other}")), "{head}");
            assert!(!head.contains("postern-hop-context"), "{head}");
            assert!(!head.contains("198.51.100.66"), "{head}");
            assert_eq!(head.matches("postern-identity:").count(), 1, "{head}");
            // Let the finished exchange's stream go back to the pool before the next
            // request (otherwise the pool may race it with a new stream).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let requests = 2 * rounds;
    assert_eq!(fixture.origin_requests.load(Ordering::SeqCst), requests);
    // A stream per request would be 12: one pooled stream carries them all, alice's and
    // bob's requests alternating on it. (It took more when the test origin answered
    // without reading the request body: the node's client then met a reset, and the node
    // closed the hop stream whose request it could not finish.)
    let streams = hop_streams(&fixture, requests);
    assert_eq!(
        streams, 1,
        "{streams} hop streams for {requests} sequential requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_never_reaches_the_origin_over_a_pooled_stream() {
    let fixture = start().await;
    let client = client(&fixture);
    let allowed = client.get("https://app.test/a").send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    allowed.text().await.unwrap();
    assert_eq!(fixture.origin_requests.load(Ordering::SeqCst), 1);
    let denied = client
        .get("https://app.test/b")
        .header("x-test-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.text().await.unwrap(), "ip_denied\n");
    let allowed = client.get("https://app.test/c").send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    let head = allowed.text().await.unwrap();
    assert!(head.starts_with("GET /c "), "{head}");
    assert_eq!(fixture.origin_requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_stream_carries_no_requests_once_the_peer_is_no_longer_an_ingress() {
    let fixture = start().await;
    let client = client(&fixture);
    let response = client.get("https://app.test/").send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    fixture.ingress_is_ingress.store(false, Ordering::SeqCst);
    // On the pooled stream the node refuses the request itself; on a new stream it
    // refuses the hello. Either way the origin sees nothing.
    for _ in 0..2 {
        let response = client.get("https://app.test/").send().await.unwrap();
        assert_eq!(response.status(), 502);
        assert_eq!(response.text().await.unwrap(), "node_refused_not_ingress\n");
    }
    assert_eq!(fixture.origin_requests.load(Ordering::SeqCst), 1);
    // Both refusals are audited as the node's, not as answers of the target.
    let records = audit_records(&fixture, 3).await;
    for record in &records[1..] {
        assert_eq!(record.result, "error", "{record:?}");
        assert_eq!(record.status, 502, "{record:?}");
        assert_eq!(
            record.reason.as_deref(),
            Some("node_refused_not_ingress"),
            "{record:?}"
        );
    }
}

//! Funnels from the netmap, end to end in process: netmaps carrying `funnel_routes` →
//! `RouteFollower` → the live `FunnelTable` → the `Edge` (TLS, gate chain built from the
//! route's `GateSpec`s, audit) → `MeshUpstream` through the ingress's userspace WireGuard
//! tunnel → the developer node's funnel acceptor → a local origin.
//!
//! Shows: a GitHub-signed delivery reaches the origin byte for byte while forged and
//! unsigned ones are refused and the origin's counter does not move; audit records name
//! the route's owner and node; a route past its expiry stops without a new netmap and is
//! audited `expire`; a login gate on an ingress without `[oidc]` serves 503; a TCP route
//! opens its public port, refuses by its IP gate, and closes it when the route goes; SSE,
//! WebSocket and a streamed
//! (unbuffered) request body pass through ungated routes; a TLS passthrough route pipes
//! the client's TLS to the node's own server and runs its IP gate.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
mod local_tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use postern_ingress::audit::{AuditRecord, AuditSink, ConnectionRecord};
use postern_ingress::certs::HttpChallenges;
use postern_ingress::config::TcpPortRange;
use postern_ingress::edge::{Edge, Limits};
use postern_ingress::routes::{FunnelTable, RouteBuilder, RouteBuilderConfig, RouteFollower};
use postern_ingress::tcp_funnel::{ClientLimiter, TcpLimits, TlsPortRouter};
use postern_node::serve::{
    NoopObserver, OriginUrl, PeerIdentity, ServeConfig, ServeRuntime, ServeTable, Service,
};
use postern_proto::funnel::{FunnelProtocol, FunnelRoute, GateMode, GateSecret, GateSpec};
use postern_proto::ids::{NodeId, UnixTime};
use postern_proto::netmap::Netmap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use common::{INGRESS_ADDR, NODE_ADDR, TunnelPair, tunnel_pair};

const SECRET: &str = "It's a Secret to Everybody";
const OWNER: &str = "alice@example.com";
const NODE_NAME: &str = "laptop.tail.test";

#[derive(Debug, Default)]
struct MemorySink {
    requests: Mutex<Vec<AuditRecord>>,
    connections: Mutex<Vec<ConnectionRecord>>,
}
impl AuditSink for MemorySink {
    fn record(&self, record: &AuditRecord) {
        self.requests.lock().unwrap().push(record.clone());
    }
    fn record_connection(&self, record: &ConnectionRecord) {
        self.connections.lock().unwrap().push(record.clone());
    }
}

/// What the origin saw.
#[derive(Debug, Default)]
struct OriginLog {
    hits: AtomicUsize,
    /// Set when `/upload` received its first chunk (before the client sent the second).
    first_chunk: Notify,
    release: Notify,
}

/// A raw HTTP/1.1 origin on the node's host. `/stream` sends one SSE event, waits for
/// `release`, sends another; `/upgrade` answers 101 and echoes; `/upload` reads a chunked
/// body, signalling `first_chunk` as soon as `part-one` arrived; anything else answers
/// with the exact body it received. Every request counts a hit.
async fn start_origin(log: Arc<OriginLog>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                if head.is_empty() {
                    return;
                }
                log.hits.fetch_add(1, Ordering::SeqCst);
                let lower = head.to_ascii_lowercase();
                if head.starts_with("GET /stream ") {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\nfirst\n\n\r\n").await.unwrap();
                    log.release.notified().await;
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
                } else if head.starts_with("POST /upload ") {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 1024];
                    let mut signalled = false;
                    while !seen.ends_with(b"0\r\n\r\n") {
                        let n = tcp.read(&mut buffer).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buffer[..n]);
                        if !signalled && contains(&seen, b"part-one") {
                            signalled = true;
                            log.first_chunk.notify_one();
                        }
                    }
                    let ok = contains(&seen, b"part-two");
                    let body = if ok { "both parts" } else { "missing" };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    tcp.write_all(response.as_bytes()).await.unwrap();
                } else {
                    let length = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    let mut body = vec![0u8; length];
                    tcp.read_exact(&mut body).await.unwrap();
                    let mut response =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                            .into_bytes();
                    response.extend_from_slice(&body);
                    tcp.write_all(&response).await.unwrap();
                }
            });
        }
    });
    address
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(tcp: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A TCP echo server on the node's host.
async fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut reader, mut writer) = tcp.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    address
}

/// A TLS origin on the node's host with its own certificate for `secure.funnel.test`:
/// answers `origin-tls` to anything. Returns its address and certificate.
async fn start_tls_origin() -> (SocketAddr, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["secure.funnel.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buffer = [0u8; 64];
                if tls.read(&mut buffer).await.unwrap_or(0) > 0 {
                    let _ = tls.write_all(b"origin-tls").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (address, cert.pem())
}

struct Fixture {
    origin_tls_cert: String,
    edge_addr: SocketAddr,
    cert_pem: String,
    audit: Arc<MemorySink>,
    origin: Arc<OriginLog>,
    table: Arc<FunnelTable>,
    netmaps: watch::Sender<Option<Arc<Netmap>>>,
    tcp_port: u16,
    tunnels: TunnelPair,
    _runtime: ServeRuntime,
    _state: tempfile::TempDir,
}

/// The node funnels 3000 (HTTP origin) and 5000 (TCP echo); the ingress follows netmaps
/// sent on `netmaps`.
async fn start(seed: u8) -> Fixture {
    let tunnels = tunnel_pair(seed).await;
    let origin = Arc::new(OriginLog::default());
    let origin_addr = start_origin(Arc::clone(&origin)).await;
    let echo = start_echo().await;
    let (tls_origin, origin_tls_cert) = start_tls_origin().await;
    let mut config = ServeConfig::new();
    config
        .insert(
            Service::http(
                3000,
                OriginUrl::parse(&format!("http://{origin_addr}")).unwrap(),
            )
            .funnelled(true),
        )
        .unwrap();
    config
        .insert(Service::tcp(5000, echo).funnelled(true))
        .unwrap();
    config
        .insert(Service::tcp(6000, tls_origin).funnelled(true))
        .unwrap();
    let directory = move |addr: IpAddr| {
        (addr == INGRESS_ADDR.parse::<IpAddr>().unwrap()).then(|| PeerIdentity {
            node_name: "ingress-1".into(),
            is_ingress: true,
            ..PeerIdentity::default()
        })
    };
    let runtime = ServeRuntime::start(
        tunnels.node.netstack().clone(),
        ServeTable::new(config),
        Arc::new(directory),
        Arc::new(NoopObserver),
    )
    .unwrap();

    let (resolver, cert_pem) = local_tls::self_signed(&["*.funnel.test"]);

    let state = tempfile::tempdir().unwrap();
    let tcp_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let audit = Arc::new(MemorySink::default());
    let table = Arc::new(FunnelTable::new());
    let builder = RouteBuilder::new(
        tunnels.ingress.netstack().clone(),
        RouteBuilderConfig {
            state_dir: state.path().to_path_buf(),
            max_body_bytes: Limits::default().max_body_bytes,
            tcp_port_range: Some(TcpPortRange {
                first: tcp_port,
                last: tcp_port,
            }),
            resolver: Some(Arc::clone(&resolver)),
            ..RouteBuilderConfig::default()
        },
    );
    let (netmaps, netmap_rx) = watch::channel(None);
    let follower = RouteFollower::new(builder, Arc::clone(&table), audit.clone())
        .with_tcp_listeners(
            "127.0.0.1".parse().unwrap(),
            TcpLimits::default(),
            ClientLimiter::new(None),
        );
    tokio::spawn(follower.run(netmap_rx));

    let router = TlsPortRouter::new(
        Vec::new(),
        TcpLimits::default(),
        ClientLimiter::new(None),
        audit.clone(),
    )
    .with_routes(Arc::clone(&table));
    let edge = Arc::new(
        Edge::new(
            Vec::new(),
            Limits::default(),
            audit.clone(),
            Arc::new(HttpChallenges::default()),
        )
        .with_tls_router(Arc::new(router))
        .with_routes(Arc::clone(&table)),
    );
    let edge_addr = local_tls::serve_edge(edge, resolver).await;
    Fixture {
        origin_tls_cert,
        edge_addr,
        cert_pem,
        audit,
        origin,
        table,
        netmaps,
        tcp_port,
        tunnels,
        _runtime: runtime,
        _state: state,
    }
}

impl Fixture {
    fn route(&self, hostname: &str, gates: Vec<GateSpec>) -> FunnelRoute {
        FunnelRoute {
            hostname: hostname.into(),
            node: NodeId(2),
            node_key: self.tunnels.node_key,
            owner: OWNER.into(),
            port: 3000,
            protocol: FunnelProtocol::Http,
            public_port: None,
            gates,
            gate_mode: GateMode::All,
            rate_limit: None,
            expires_at: None,
        }
    }

    /// Sends a netmap with `routes` and waits until the table holds `expect` HTTP and TCP
    /// routes.
    async fn publish(&self, routes: Vec<FunnelRoute>, expect: usize) {
        let map = netmap(&self.tunnels, routes);
        self.netmaps.send_replace(Some(Arc::new(map)));
        for _ in 0..200 {
            let set = self.table.snapshot();
            if set.http.len() + set.tcp.len() + set.passthrough.len() == expect {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the table never held {expect} routes");
    }

    fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(20));
        for host in [
            "hooks.funnel.test",
            "app.funnel.test",
            "login.funnel.test",
            "brief.funnel.test",
        ] {
            builder = builder.resolve(host, self.edge_addr);
        }
        builder.build().unwrap()
    }

    /// `url`'s host is unknown: `404 not found` on `open` (a client whose connection is
    /// already up) and the TLS port closes a new connection.
    async fn assert_gone(&self, url: &str, open: &reqwest::Client) {
        let response = open.post(url).body("late").send().await.unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(response.text().await.unwrap(), "not found\n");
        assert!(self.client().post(url).body("late").send().await.is_err());
    }

    fn hits(&self) -> usize {
        self.origin.hits.load(Ordering::SeqCst)
    }

    async fn requests(&self, at_least: usize) -> Vec<AuditRecord> {
        for _ in 0..200 {
            let records = self.audit.requests.lock().unwrap().clone();
            if records.len() >= at_least {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {at_least} audit records");
    }

    async fn tls(&self, host: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
        local_tls::connect(&self.cert_pem, self.edge_addr, host).await
    }
}

fn netmap(tunnels: &TunnelPair, routes: Vec<FunnelRoute>) -> Netmap {
    let mut map: Netmap = serde_json::from_value(serde_json::json!({
        "self_node": {
            "id": 1,
            "name": "ingress",
            "fqdn": "ingress.tail.test",
            "addresses": {"ipv4": INGRESS_ADDR, "ipv6": "fd7a:115c:a1e0::1"},
            "user": {"id": 1, "login": "ingress@example.com"}
        },
        "peers": [{
            "id": 2,
            "name": NODE_NAME,
            "node_key": tunnels.node_key,
            "addresses": [NODE_ADDR],
            "user": {"id": 2, "login": OWNER}
        }]
    }))
    .unwrap();
    map.funnel_routes = routes;
    map
}

fn github_gate() -> GateSpec {
    GateSpec::Webhook {
        provider: "github".into(),
        secrets: vec![GateSecret::new(SECRET)],
        tolerance_secs: None,
    }
}

fn github_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_route_from_the_netmap_admits_signed_deliveries_only() {
    let fixture = start(41).await;
    fixture
        .publish(
            vec![fixture.route("hooks.funnel.test", vec![github_gate()])],
            1,
        )
        .await;
    let client = fixture.client();
    let body = br#"{"zen":"Design for failure.","hook_id":1}"#.to_vec();

    let signed = client
        .post("https://hooks.funnel.test/hook")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "d-1")
        .header("x-hub-signature-256", github_signature(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    assert_eq!(signed.bytes().await.unwrap().to_vec(), body);
    assert_eq!(fixture.hits(), 1);

    let forged = client
        .post("https://hooks.funnel.test/hook")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "d-2")
        .header("x-hub-signature-256", github_signature(b"another body"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let unsigned = client
        .post("https://hooks.funnel.test/hook")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "d-3")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(fixture.hits(), 1, "a refused delivery reached the origin");

    let records = fixture.requests(3).await;
    let results: Vec<&str> = records.iter().map(|r| r.result).collect();
    assert_eq!(results, ["allow", "deny", "deny"]);
    for record in &records {
        assert_eq!(record.funnel.as_deref(), Some("hooks.funnel.test"));
        assert_eq!(record.owner.as_deref(), Some(OWNER));
        assert_eq!(record.node.as_deref(), Some(NODE_NAME));
    }
    assert_eq!(records[1].reason.as_deref(), Some("signature_mismatch"));
    assert_eq!(records[2].reason.as_deref(), Some("signature_missing"));

    // The route goes: the hostname is unknown again: 404 on the open connection, closed
    // at the TLS port on a new one.
    fixture.publish(Vec::new(), 0).await;
    fixture
        .assert_gone("https://hooks.funnel.test/hook", &client)
        .await;
    assert_eq!(fixture.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_stops_at_its_expiry_without_a_new_netmap() {
    let fixture = start(43).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut route = fixture.route("brief.funnel.test", Vec::new());
    route.expires_at = Some(UnixTime(i64::try_from(now).unwrap() + 3));
    fixture.publish(vec![route], 1).await;
    let client = fixture.client();
    let response = client
        .post("https://brief.funnel.test/")
        .body("before")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "before");
    assert_eq!(fixture.hits(), 1);

    let mut expired = None;
    for _ in 0..100 {
        let records = fixture.audit.requests.lock().unwrap().clone();
        expired = records.into_iter().find(|r| r.result == "expire");
        if expired.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired = expired.expect("no expire audit record within 10 s");
    assert_eq!(expired.funnel.as_deref(), Some("brief.funnel.test"));
    assert_eq!(expired.owner.as_deref(), Some(OWNER));
    assert_eq!(expired.node.as_deref(), Some(NODE_NAME));
    assert_eq!(expired.reason.as_deref(), Some("expired"));
    assert!(fixture.table.snapshot().http.is_empty());
    fixture
        .assert_gone("https://brief.funnel.test/", &client)
        .await;
    assert_eq!(fixture.hits(), 1, "an expired funnel reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_route_on_an_ingress_without_oidc_serves_503() {
    let fixture = start(45).await;
    let login = GateSpec::Login {
        allowed_emails: vec![OWNER.into()],
        allowed_domains: Vec::new(),
        allowed_groups: Vec::new(),
    };
    fixture
        .publish(vec![fixture.route("login.funnel.test", vec![login])], 1)
        .await;
    let response = fixture
        .client()
        .get("https://login.funnel.test/")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.text().await.unwrap(), "funnel_unavailable\n");
    assert_eq!(fixture.hits(), 0);
    let records = fixture.requests(1).await;
    assert_eq!(records[0].reason.as_deref(), Some("funnel_unavailable"));
    assert_eq!(records[0].owner.as_deref(), Some(OWNER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_route_opens_its_public_port_through_the_mesh_and_closes_it() {
    let fixture = start(47).await;
    let mut route = fixture.route("db.funnel.test", Vec::new());
    route.protocol = FunnelProtocol::Tcp;
    route.port = 5000;
    route.public_port = Some(fixture.tcp_port);
    fixture.publish(vec![route.clone()], 1).await;
    let public = SocketAddr::from(([127, 0, 0, 1], fixture.tcp_port));
    let mut tcp = TcpStream::connect(public).await.unwrap();
    tcp.write_all(b"SELECT 1; -- across the mesh")
        .await
        .unwrap();
    let mut echoed = [0u8; 28];
    tcp.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"SELECT 1; -- across the mesh");
    drop(tcp);

    // The same route with an IP gate refusing loopback: the port is reopened for the new
    // route, and connections are closed before anything reaches the node.
    let mut denied = route.clone();
    denied.gates = vec![GateSpec::Ip {
        allow: Vec::new(),
        deny: vec!["127.0.0.0/8".parse().unwrap()],
    }];
    fixture.publish(vec![denied], 1).await;
    // Until the new route is in place a connection may still reach the old one, or be
    // reset as the port is reopened: try until the IP gate's refusal is audited, and check
    // that the client saw that connection closed without an answer.
    let denied_record = |connections: &[ConnectionRecord]| {
        connections
            .iter()
            .any(|c| c.result == "deny" && c.reason == "ip_denied")
    };
    let mut refused = false;
    let mut connections = Vec::new();
    for _ in 0..100 {
        if let Ok(mut tcp) = TcpStream::connect(public).await {
            let _ = tcp.write_all(b"SELECT 2;").await;
            let mut buffer = [0u8; 16];
            refused = matches!(tcp.read(&mut buffer).await, Ok(0) | Err(_));
        }
        // The refusal's record is written as the connection closes: the client may see
        // the close first, so give the record a moment.
        for _ in 0..10 {
            connections = fixture.audit.connections.lock().unwrap().clone();
            if denied_record(&connections) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if denied_record(&connections) {
            break;
        }
    }
    assert!(denied_record(&connections), "{connections:?}");
    assert!(
        refused,
        "the IP gate of the TCP route did not refuse loopback"
    );

    // A route outside the range is refused; the old one goes, and its port closes.
    route.public_port = Some(fixture.tcp_port.wrapping_add(1));
    fixture.publish(vec![route], 0).await;
    let mut closed = false;
    for _ in 0..100 {
        if TcpStream::connect(public).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed,
        "the TCP funnel port stayed open after its route went"
    );
    // The piped connection's record is written when its pipe has ended both ways, through
    // the mesh: on a loaded machine that can come after all of the above.
    let mut connections = Vec::new();
    for _ in 0..250 {
        connections = fixture.audit.connections.lock().unwrap().clone();
        if connections.iter().any(|c| c.result == "allow") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let piped = connections
        .iter()
        .find(|c| c.result == "allow")
        .unwrap_or_else(|| panic!("no record of the piped connection: {connections:?}"));
    assert_eq!(piped.kind, "tcp");
    assert_eq!(piped.owner.as_deref(), Some(OWNER));
    assert_eq!(piped.node.as_deref(), Some(NODE_NAME));
    assert!(piped.bytes_from_client >= 28, "{piped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_websocket_and_streamed_bodies_pass_an_ungated_route() {
    let fixture = start(49).await;
    fixture
        .publish(vec![fixture.route("app.funnel.test", Vec::new())], 1)
        .await;

    // SSE: the first event arrives while the origin still holds the second.
    let mut response = fixture
        .client()
        .get("https://app.funnel.test/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first\n\n");
    fixture.origin.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second\n\n");

    // WebSocket: an upgrade becomes a byte pipe.
    let mut tls = fixture.tls("app.funnel.test").await;
    tls.write_all(b"GET /upgrade HTTP/1.1\r\nhost: app.funnel.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"hello across the mesh").await.unwrap();
    let mut echoed = [0u8; 21];
    tls.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello across the mesh");

    // A chunked upload: the origin sees the first part before the client sends the
    // second, so the edge did not buffer the body.
    let mut tls = fixture.tls("app.funnel.test").await;
    tls.write_all(b"POST /upload HTTP/1.1\r\nhost: app.funnel.test\r\ntransfer-encoding: chunked\r\n\r\n8\r\npart-one\r\n").await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        fixture.origin.first_chunk.notified(),
    )
    .await
    .expect("the origin did not get the first part before the body ended: the edge buffered it");
    tls.write_all(b"8\r\npart-two\r\n0\r\n\r\n").await.unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 10];
    tls.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"both parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_route_pipes_tls_to_the_node_and_runs_its_ip_gate() {
    let fixture = start(51).await;
    let mut route = fixture.route("secure.funnel.test", Vec::new());
    route.protocol = FunnelProtocol::TlsPassthrough;
    route.port = 6000;
    fixture.publish(vec![route.clone()], 1).await;

    // The client trusts only the origin's own certificate: the edge cannot terminate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut fixture.origin_tls_cert.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("secure.funnel.test").unwrap();
    let tcp = TcpStream::connect(fixture.edge_addr).await.unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert_eq!(answer, b"origin-tls");
    drop(tls);

    // An IP gate refusing loopback: closed before a byte reaches the node, audited.
    route.gates = vec![GateSpec::Ip {
        allow: Vec::new(),
        deny: vec!["127.0.0.0/8".parse().unwrap()],
    }];
    fixture.publish(vec![route], 1).await;
    let mut refused = false;
    for _ in 0..100 {
        let tcp = TcpStream::connect(fixture.edge_addr).await.unwrap();
        if connector.connect(name.clone(), tcp).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the passthrough route's IP gate did not refuse loopback"
    );
    let mut connections = Vec::new();
    for _ in 0..200 {
        connections = fixture.audit.connections.lock().unwrap().clone();
        if connections.iter().any(|c| c.result == "allow") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let piped = connections.iter().find(|c| c.result == "allow").unwrap();
    assert_eq!(piped.kind, "tls-passthrough");
    assert_eq!(piped.owner.as_deref(), Some(OWNER));
    assert!(
        connections
            .iter()
            .any(|c| c.result == "deny" && c.reason == "ip_denied"),
        "{connections:?}"
    );
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca(name: &str) -> Ca {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

fn client_identity(ca: &Ca) -> reqwest::Identity {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "alice-laptop");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    reqwest::Identity::from_pem(pem.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_route_asks_its_clients_for_a_certificate_of_its_ca() {
    let fixture = start(53).await;
    let good = ca("Route CA");
    let other = ca("Other CA");
    let mtls = GateSpec::Mtls {
        ca_pem: good.cert.pem(),
    };
    fixture
        .publish(vec![fixture.route("app.funnel.test", vec![mtls])], 1)
        .await;
    let client = |identity: Option<reqwest::Identity>| {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(fixture.cert_pem.as_bytes()).unwrap(),
            )
            .resolve("app.funnel.test", fixture.edge_addr)
            .timeout(Duration::from_secs(20));
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build().unwrap()
    };
    let admitted = client(Some(client_identity(&good)))
        .post("https://app.funnel.test/")
        .body("with a certificate")
        .send()
        .await
        .unwrap();
    assert_eq!(admitted.status(), 200);
    assert_eq!(admitted.text().await.unwrap(), "with a certificate");
    let wrong_ca = client(Some(client_identity(&other)))
        .post("https://app.funnel.test/")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_ca.status(), 403);
    let none = client(None)
        .post("https://app.funnel.test/")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(fixture.hits(), 1, "a refused client reached the origin");
}

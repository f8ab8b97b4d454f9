//! Serve and funnel on a real mesh: two userspace WireGuard tunnels on loopback, a
//! `ServeRuntime` on one of them, and local origins on the host.
//!
//! Tailnet serve: identity headers set from the peer directory and forged ones stripped,
//! path-prefix routes, a streamed response, an upgrade as a byte pipe, raw TCP serve, and
//! the exchange observer. Funnel acceptor: a hello from an ingress peer is accepted and
//! its identity becomes headers; a non-ingress peer and a non-funnelled port are refused
//! with the right codes.

// Test helpers unwrap: a panic is how they report a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use postern_netstack::TcpStream as TunnelStream;
use postern_node::inspect::{CaptureConfig, CaptureStore, Entry, EntryFilter, Source};
use postern_node::serve::{
    Exchange, ExchangeObserver, FUNNEL_HOP_PORT, InspectObserver, NoopObserver, OriginUrl,
    PeerIdentity, RoutePath, ServeConfig, ServeRuntime, ServeTable, Service, StaticPeerDirectory,
};
use postern_node::userspace::UserspaceTunnel;
use postern_node::wg_config::WgConfig;
use postern_proto::funnel_hop::{
    Admission, AttributeName, FunnelHello, FunnelHostname, HopReply, IdentityText, RefusalCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const CLIENT_ADDR: &str = "100.64.0.1";
const NODE_ADDR: &str = "100.64.0.2";

fn key_text(secret: &StaticSecret) -> String {
    base64::engine::general_purpose::STANDARD.encode(secret.to_bytes())
}

fn public_text(secret: &StaticSecret) -> String {
    base64::engine::general_purpose::STANDARD.encode(PublicKey::from(secret).as_bytes())
}

/// Two tunnels: the client (initiates) and the node (runs serve).
struct Mesh {
    client: UserspaceTunnel,
    node: UserspaceTunnel,
}

async fn mesh() -> Mesh {
    let client_key = StaticSecret::from([21; 32]);
    let node_key = StaticSecret::from([22; 32]);
    let node_config = WgConfig::parse(
        "node.conf",
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = {NODE_ADDR}/32\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {CLIENT_ADDR}/32\n",
            key_text(&node_key),
            public_text(&client_key)
        ),
    )
    .unwrap();
    let node = UserspaceTunnel::start(&node_config).await.unwrap();
    let port = node.local_addr().port();
    let client_config = WgConfig::parse(
        "client.conf",
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = {CLIENT_ADDR}/32\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {NODE_ADDR}/32\nEndpoint = 127.0.0.1:{port}\n",
            key_text(&client_key),
            public_text(&node_key)
        ),
    )
    .unwrap();
    let client = UserspaceTunnel::start(&client_config).await.unwrap();
    Mesh { client, node }
}

fn alice(is_ingress: bool) -> PeerIdentity {
    PeerIdentity {
        node_name: "alice-laptop.tail.test".into(),
        user_login: "alice@example.com".into(),
        user_name: "Alice".into(),
        groups: vec!["eng".into(), "ops".into()],
        tags: vec![],
        is_ingress,
    }
}

fn directory(is_ingress: bool) -> Arc<StaticPeerDirectory> {
    Arc::new(StaticPeerDirectory::new().with(CLIENT_ADDR.parse().unwrap(), alice(is_ingress)))
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Exchange>>);

impl ExchangeObserver for Recorder {
    fn capture_limit(&self) -> Option<usize> {
        Some(4)
    }
    fn record(&self, exchange: Exchange) {
        self.0.lock().unwrap().push(exchange);
    }
}

/// A raw HTTP/1.1 origin on the host, one request per connection (its answers say
/// `connection: close`, so a pooling proxy never reuses a connection the origin is
/// closing). `/stream` sends one chunk, waits for `release`, sends another; `/upgrade`
/// answers 101 and echoes bytes; `/pose-as-node` answers with the node's refusal header;
/// anything else answers with the request head it received (so tests can see what the
/// proxy forwarded), prefixed by `tag`.
async fn start_origin(tag: &'static str, release: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let release = Arc::clone(&release);
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                if head.starts_with("GET /stream ") {
                    tcp.write_all(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
                    )
                    .await
                    .unwrap();
                    release.notified().await;
                    tcp.write_all(b"7\r\nsecond\n\r\n0\r\n\r\n").await.unwrap();
                } else if head.starts_with("GET /pose-as-node ") {
                    // A target that tries to make the ingress audit a node's refusal.
                    tcp.write_all(b"HTTP/1.1 200 OK\r\npostern-hop-refusal: node_refused_not_ingress\r\nconnection: close\r\ncontent-length: 3\r\n\r\nok\n").await.unwrap();
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
                    let body = format!("{tag}\n{head}");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    tcp.write_all(response.as_bytes()).await.unwrap();
                }
            });
        }
    });
    address
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

async fn connect(mesh: &Mesh, port: u16) -> TunnelStream {
    let remote = SocketAddr::new(NODE_ADDR.parse().unwrap(), port);
    tokio::time::timeout(
        Duration::from_secs(15),
        mesh.client.netstack().connect_tcp(remote),
    )
    .await
    .expect("connecting over the mesh timed out")
    .unwrap()
}

/// Sends one `connection: close` request and returns the whole response, lower case.
async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
    extra_headers: &str,
) -> String {
    let text = format!(
        "GET {path} HTTP/1.1\r\nhost: node.test\r\nconnection: close\r\n{extra_headers}\r\n"
    );
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response))
        .await
        .expect("the response did not end")
        .unwrap();
    String::from_utf8_lossy(&response).to_ascii_lowercase()
}

fn origin_url(address: SocketAddr) -> OriginUrl {
    OriginUrl::parse(&format!("http://{address}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailnet_http_serve_sets_identity_headers_and_routes_by_path() {
    let mesh = mesh().await;
    let release = Arc::new(Notify::new());
    let web = start_origin("web", Arc::clone(&release)).await;
    let api = start_origin("api", Arc::clone(&release)).await;
    let mut config = ServeConfig::new();
    config
        .insert(Service::http(80, origin_url(web)).with_route(
            RoutePath::parse("/api").unwrap(),
            OriginUrl::parse(&format!("http://{api}/v1")).unwrap(),
        ))
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let runtime = ServeRuntime::start(
        mesh.node.netstack().clone(),
        ServeTable::new(config),
        directory(false),
        recorder.clone(),
    )
    .unwrap();

    let mut stream = connect(&mesh, 80).await;
    let response = request(
        &mut stream,
        "/hello?x=1",
        "postern-user-login: root@evil\r\nPostern-Node-Name: forged\r\npostern-whatever: x\r\n",
    )
    .await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains("\r\n\r\nweb\nget /hello?x=1 http/1.1"),
        "{response}"
    );
    assert!(
        response.contains("postern-user-login: alice@example.com"),
        "{response}"
    );
    assert!(response.contains("postern-user-name: alice"), "{response}");
    assert!(
        response.contains("postern-user-groups: eng, ops"),
        "{response}"
    );
    assert!(
        response.contains("postern-node-name: alice-laptop.tail.test"),
        "{response}"
    );
    assert!(
        response.contains(&format!("x-forwarded-for: {CLIENT_ADDR}")),
        "{response}"
    );
    assert!(!response.contains("root@evil"), "{response}");
    assert!(!response.contains("forged"), "{response}");
    assert!(!response.contains("postern-whatever"), "{response}");

    let mut stream = connect(&mesh, 80).await;
    let response = request(&mut stream, "/api/users", "").await;
    assert!(
        response.contains("\r\n\r\napi\nget /v1/users http/1.1"),
        "{response}"
    );
    let mut stream = connect(&mesh, 80).await;
    let response = request(&mut stream, "/apix", "").await;
    assert!(
        response.contains("\r\n\r\nweb\nget /apix http/1.1"),
        "{response}"
    );

    // The observer saw the first exchange, with its identity and a 4-byte body capture.
    let recorded = recorder.0.lock().unwrap().clone();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    let first = &recorded[0];
    assert_eq!(first.uri, "/hello?x=1");
    assert_eq!(first.port, 80);
    assert_eq!(first.status, 200);
    assert_eq!(first.upstream, format!("http://{web}/hello?x=1"));
    assert_eq!(
        first.request_headers["postern-user-login"],
        "alice@example.com"
    );
    assert_eq!(&first.response_body.bytes[..], b"web\n");
    assert!(first.response_body.truncated);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_observer_records_into_the_capture_store() {
    let mesh = mesh().await;
    let web = start_origin("web", Arc::new(Notify::new())).await;
    let mut config = ServeConfig::new();
    config.insert(Service::http(80, origin_url(web))).unwrap();
    let store = CaptureStore::open(CaptureConfig::default()).unwrap();
    let _runtime = ServeRuntime::start(
        mesh.node.netstack().clone(),
        ServeTable::new(config),
        directory(false),
        Arc::new(InspectObserver::new(store.clone())),
    )
    .unwrap();
    let mut stream = connect(&mesh, 80).await;
    let response = request(&mut stream, "/inspected?q=1", "").await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    let mut entry = None;
    for _ in 0..100 {
        if let Some(summary) = store.list(&EntryFilter::default()).first() {
            entry = store.get(summary.id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(Entry::Exchange(exchange)) = entry else {
        panic!("nothing recorded: {entry:?}");
    };
    assert_eq!(exchange.source, Source::Serve);
    let admission = exchange.admission.unwrap();
    assert_eq!(admission.gate, "tailnet");
    assert_eq!(admission.identity.as_deref(), Some("alice@example.com"));
    assert_eq!(exchange.request.path, "/inspected?q=1");
    assert!(
        exchange
            .request
            .headers
            .contains(&("postern-user-login".into(), "alice@example.com".into()))
    );
    let response = exchange.response.unwrap();
    assert_eq!(response.status, 200);
    assert!(response.body.bytes.starts_with(b"web\nGET /inspected?q=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailnet_http_serve_streams_and_upgrades() {
    let mesh = mesh().await;
    let release = Arc::new(Notify::new());
    let web = start_origin("web", Arc::clone(&release)).await;
    let mut config = ServeConfig::new();
    config.insert(Service::http(80, origin_url(web))).unwrap();
    let _runtime = ServeRuntime::start(
        mesh.node.netstack().clone(),
        ServeTable::new(config),
        directory(false),
        Arc::new(NoopObserver),
    )
    .unwrap();

    // The origin holds the second chunk until released: the first must arrive alone.
    let mut stream = connect(&mesh, 80).await;
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nhost: node.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first\n") {
        let mut buffer = [0u8; 256];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before the first chunk");
        seen.extend_from_slice(&buffer[..n]);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("second"));
    release.notify_one();
    while !String::from_utf8_lossy(&seen).contains("second\n") {
        let mut buffer = [0u8; 256];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before the second chunk");
        seen.extend_from_slice(&buffer[..n]);
    }

    let mut stream = connect(&mesh, 80).await;
    stream.write_all(b"GET /upgrade HTTP/1.1\r\nhost: node.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n").await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping over the mesh").await.unwrap();
    let mut echoed = [0u8; 18];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over the mesh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailnet_tcp_serve_pipes_bytes_and_follows_config_changes() {
    let mesh = mesh().await;
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let table = ServeTable::default();
    let _runtime = ServeRuntime::start(
        mesh.node.netstack().clone(),
        table.clone(),
        directory(false),
        Arc::new(NoopObserver),
    )
    .unwrap();
    table
        .update(|c| c.insert(Service::tcp(2222, echo_addr)))
        .unwrap();
    // The listener follows the table change; connect until it is there.
    let mut stream = None;
    for _ in 0..50 {
        let remote = SocketAddr::new(NODE_ADDR.parse().unwrap(), 2222);
        match mesh.client.netstack().connect_tcp(remote).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut stream = stream.expect("the TCP service never started listening");
    stream.write_all(b"raw bytes both ways").await.unwrap();
    let mut echoed = [0u8; 19];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"raw bytes both ways");
}

/// Connects to the hop port, sends `hello`, returns the stream and the node's reply.
async fn hop(mesh: &Mesh, hello: &FunnelHello) -> (TunnelStream, HopReply) {
    let mut stream = connect(mesh, FUNNEL_HOP_PORT).await;
    stream.write_all(&hello.encode().unwrap()).await.unwrap();
    let mut prefix = [0u8; 3];
    stream.read_exact(&mut prefix).await.unwrap();
    let mut frame = prefix.to_vec();
    frame.resize(3 + usize::from(prefix[2]), 0);
    stream.read_exact(&mut frame[3..]).await.unwrap();
    (stream, HopReply::decode(&frame).unwrap())
}

fn hello(port: u16) -> FunnelHello {
    FunnelHello {
        client: "203.0.113.7:40000".parse().unwrap(),
        target_port: port,
        hostname: FunnelHostname::parse("hooks.funnel.test").unwrap(),
        admission: Some(Admission {
            gate: IdentityText::lossy("webhook:github"),
            principal: IdentityText::lossy("webhook:github"),
            attributes: vec![(
                AttributeName::parse("Delivery").unwrap(),
                IdentityText::lossy("d-123"),
            )],
        }),
        per_request_context: false,
    }
}

/// Sends one keep-alive request with `extra_headers` and reads exactly its response (the
/// head and a `content-length` body), lower case; the stream stays open.
async fn keep_alive_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
    extra_headers: &str,
) -> String {
    let text = format!("GET {path} HTTP/1.1\r\nhost: node.test\r\n{extra_headers}\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(15), read_head(stream))
        .await
        .expect("no response head")
        .to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body).to_ascii_lowercase()
}

async fn funnel_node(mesh: &Mesh, is_ingress: bool) -> (ServeRuntime, SocketAddr) {
    let web = start_origin("web", Arc::new(Notify::new())).await;
    let mut config = ServeConfig::new();
    config
        .insert(Service::http(3000, origin_url(web)).funnelled(true))
        .unwrap();
    config.insert(Service::http(4000, origin_url(web))).unwrap();
    let runtime = ServeRuntime::start(
        mesh.node.netstack().clone(),
        ServeTable::new(config),
        directory(is_ingress),
        Arc::new(NoopObserver),
    )
    .unwrap();
    (runtime, web)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnel_acceptor_takes_identity_from_the_hello_only() {
    let mesh = mesh().await;
    let (_runtime, _) = funnel_node(&mesh, true).await;
    let (mut stream, reply) = hop(&mesh, &hello(3000)).await;
    assert_eq!(reply, HopReply::Accepted);
    let response = request(
        &mut stream,
        "/hook",
        "postern-identity: forged\r\npostern-user-login: root@evil\r\nx-forwarded-for: 203.0.113.7\r\n",
    )
    .await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("get /hook http/1.1"), "{response}");
    assert!(
        response.contains("postern-funnel-host: hooks.funnel.test"),
        "{response}"
    );
    assert!(
        response.contains("postern-gate: webhook:github"),
        "{response}"
    );
    assert!(
        response.contains("postern-identity: webhook:github"),
        "{response}"
    );
    assert!(
        response.contains("postern-identity-delivery: d-123"),
        "{response}"
    );
    assert!(!response.contains("forged"), "{response}");
    assert!(!response.contains("root@evil"), "{response}");
    // The ingress peer's own identity is not what the target sees.
    assert!(!response.contains("postern-user-login"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_funnel_streams_take_identity_from_each_request() {
    let mesh = mesh().await;
    let (_runtime, _) = funnel_node(&mesh, true).await;
    let stream_hello = FunnelHello {
        client: "0.0.0.0:0".parse().unwrap(),
        admission: None,
        per_request_context: true,
        ..hello(3000)
    };
    let (mut stream, reply) = hop(&mesh, &stream_hello).await;
    assert_eq!(reply, HopReply::Accepted);

    // Two requests of different clients and identities, one after the other on one stream.
    let github = hello(3000);
    let alice = FunnelHello {
        client: "198.51.100.20:5555".parse().unwrap(),
        admission: Some(Admission {
            gate: IdentityText::lossy("oidc"),
            principal: IdentityText::lossy("user:alice@example.com"),
            attributes: vec![],
        }),
        ..hello(3000)
    };
    for (context, expected, absent) in [
        (&github, "postern-identity: webhook:github", "alice"),
        (
            &alice,
            "postern-identity: user:alice@example.com",
            "webhook",
        ),
        (&github, "postern-identity-delivery: d-123", "alice"),
    ] {
        let header = format!(
            "postern-hop-context: {}\r\npostern-identity: forged\r\n",
            context.encode_context().unwrap()
        );
        let response = keep_alive_request(&mut stream, "/hook", &header).await;
        assert!(response.starts_with("http/1.1 200"), "{response}");
        assert!(response.contains(expected), "{response}");
        assert!(!response.contains(absent), "{response}");
        assert!(!response.contains("forged"), "{response}");
        // The context header itself never reaches the target.
        assert!(!response.contains("postern-hop-context"), "{response}");
        assert!(
            response.contains("postern-funnel-host: hooks.funnel.test"),
            "{response}"
        );
    }

    // A target's answer never carries the node's refusal header.
    let header = format!(
        "postern-hop-context: {}\r\n",
        github.encode_context().unwrap()
    );
    let response = keep_alive_request(&mut stream, "/pose-as-node", &header).await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(!response.contains("postern-hop-refusal"), "{response}");

    // A request without a context is refused, never forwarded, and the stream is closed;
    // the refusal says it is the node's (for the ingress's audit).
    let response = request(&mut stream, "/hook", "postern-identity: forged\r\n").await;
    assert!(response.starts_with("http/1.1 400"), "{response}");
    assert!(response.ends_with("hop_context_invalid\n"), "{response}");
    assert!(
        response.contains("postern-hop-refusal: node_refused_context_invalid"),
        "{response}"
    );
    assert!(!response.contains("get /hook"), "{response}");

    // So is one whose context names another port, or that is not a context at all.
    for bad in [
        hello(4000).encode_context().unwrap(),
        "not base64!".to_string(),
    ] {
        let (mut stream, _) = hop(&mesh, &stream_hello).await;
        let header = format!("postern-hop-context: {bad}\r\n");
        let response = request(&mut stream, "/hook", &header).await;
        assert!(response.starts_with("http/1.1 400"), "{response}");
        assert!(!response.contains("get /hook"), "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_stream_funnel_hellos_ignore_context_headers() {
    let mesh = mesh().await;
    let (_runtime, _) = funnel_node(&mesh, true).await;
    let (mut stream, reply) = hop(&mesh, &hello(3000)).await;
    assert_eq!(reply, HopReply::Accepted);
    let forged = FunnelHello {
        admission: Some(Admission {
            gate: IdentityText::lossy("oidc"),
            principal: IdentityText::lossy("user:root@example.com"),
            attributes: vec![],
        }),
        ..hello(3000)
    };
    let header = format!(
        "postern-hop-context: {}\r\n",
        forged.encode_context().unwrap()
    );
    let response = request(&mut stream, "/hook", &header).await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains("postern-identity: webhook:github"),
        "{response}"
    );
    assert!(!response.contains("root@example.com"), "{response}");
    assert!(!response.contains("postern-hop-context"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnel_acceptor_refuses_a_peer_that_is_not_an_ingress() {
    let mesh = mesh().await;
    let (_runtime, _) = funnel_node(&mesh, false).await;
    let (mut stream, reply) = hop(&mesh, &hello(3000)).await;
    let HopReply::Refused(refusal) = reply else {
        panic!("accepted a non-ingress peer");
    };
    assert_eq!(refusal.code, RefusalCode::NotIngress);
    assert_eq!(
        refusal.reason,
        format!("{CLIENT_ADDR} is not an ingress in this node's netmap")
    );
    // Nothing follows the refusal.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnel_acceptor_refuses_ports_it_does_not_funnel_and_bad_hellos() {
    let mesh = mesh().await;
    let (_runtime, _) = funnel_node(&mesh, true).await;
    // 4000 is served on the tailnet but not funnelled; 5000 is not served at all.
    for port in [4000, 5000] {
        let (_, reply) = hop(&mesh, &hello(port)).await;
        assert_eq!(
            reply,
            HopReply::refused(
                RefusalCode::PortNotFunnelled,
                format!("port {port} is not funnelled by this node")
            )
        );
    }
    // Something that is not a hop hello gets a refusal that says why.
    let mut stream = connect(&mesh, FUNNEL_HOP_PORT).await;
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let HopReply::Refused(refusal) = HopReply::decode(&reply).unwrap() else {
        panic!("accepted garbage");
    };
    assert_eq!(refusal.code, RefusalCode::UnsupportedVersion);
    assert!(
        refusal.reason.contains("hello version 71 is not supported"),
        "{}",
        refusal.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_addresses_are_not_served() {
    let mesh = mesh().await;
    let web = start_origin("web", Arc::new(Notify::new())).await;
    let mut config = ServeConfig::new();
    config.insert(Service::http(80, origin_url(web))).unwrap();
    let empty = Arc::new(|_: IpAddr| None::<PeerIdentity>);
    let _runtime = ServeRuntime::start(
        mesh.node.netstack().clone(),
        ServeTable::new(config),
        empty,
        Arc::new(NoopObserver),
    )
    .unwrap();
    let mut stream = connect(&mesh, 80).await;
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nhost: node.test\r\n\r\n")
        .await;
    let mut response = Vec::new();
    // Closed (FIN or RST) without a byte of answer.
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response))
        .await
        .expect("the connection was not closed");
    assert!(response.is_empty(), "an unknown peer got an answer");
}

/// An origin whose first connection answers one keep-alive request and then closes under
/// the next request without answering (an origin closing an idle connection just as the
/// proxy reuses it); later connections answer each request and close. Returns its address
/// and the count of requests it answered.
async fn start_closing_origin() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&answered);
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let counter = Arc::clone(&counter);
            let closing = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                counter.fetch_add(1, Ordering::SeqCst);
                let body = head.lines().next().unwrap_or_default().to_owned();
                let close = if closing { "" } else { "connection: close\r\n" };
                let response = format!(
                    "HTTP/1.1 200 OK\r\n{close}content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(response.as_bytes()).await.unwrap();
                if closing {
                    // The next request arrives on this kept-alive connection: close under it.
                    let _ = read_head(&mut tcp).await;
                }
            });
        }
    });
    (address, answered)
}

/// Serves [`start_closing_origin`] on port 80 of the node and sends it a first request,
/// which leaves its connection in the node's pool. Returns the runtime and the origin's
/// count of answered requests.
async fn serve_closing_origin(mesh: &Mesh) -> (ServeRuntime, Arc<std::sync::atomic::AtomicUsize>) {
    let (origin, answered) = start_closing_origin().await;
    let mut config = ServeConfig::new();
    config
        .insert(Service::http(80, origin_url(origin)))
        .unwrap();
    let runtime = ServeRuntime::start(
        mesh.node.netstack().clone(),
        ServeTable::new(config),
        directory(false),
        Arc::new(Recorder::default()),
    )
    .unwrap();
    let mut stream = connect(mesh, 80).await;
    let response = request(&mut stream, "/one", "").await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    (runtime, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_is_sent_again_when_the_origin_closes_its_pooled_connection() {
    let mesh = mesh().await;
    let (_runtime, answered) = serve_closing_origin(&mesh).await;
    // A second request goes out on the pooled connection; the origin closes without
    // answering; a GET is sent again on a fresh connection.
    let mut stream = connect(&mesh, 80).await;
    let response = request(&mut stream, "/two", "").await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.ends_with("get /two http/1.1"), "{response}");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_sent_twice() {
    let mesh = mesh().await;
    let (_runtime, answered) = serve_closing_origin(&mesh).await;
    let mut stream = connect(&mesh, 80).await;
    stream
        .write_all(b"POST /pay HTTP/1.1\r\nhost: node.test\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response))
        .await
        .expect("the response did not end")
        .unwrap();
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    // The origin may have acted on it: the client hears of the failure, the origin
    // sees it once.
    assert!(response.starts_with("http/1.1 502"), "{response}");
    assert!(response.ends_with("upstream_unreachable\n"), "{response}");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1);
}

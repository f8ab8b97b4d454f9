//! Keep-alive pooling of the edge's connections to a plain TCP target (`TcpUpstream`):
//! sequential requests reuse one origin connection; a connection the origin closed while
//! idle does not fail the next request; one the origin closes as a request goes out on it
//! is retried on a fresh connection when the request is idempotent and has no body, and
//! never otherwise; a client-forged hop context header never reaches the origin; a denied
//! request never reaches it either; client-forged identity headers are stripped, and the
//! edge writes its own only for an upstream that does not carry the admission itself.

// Helper functions of these tests unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postern_ingress::audit::{AuditRecord, AuditSink};
use postern_ingress::certs::HttpChallenges;
use postern_ingress::edge::{
    Connecting, Edge, EdgeBody, Funnel, Limits, Sending, TcpUpstream, Upstream, UpstreamContext,
};
use postern_ingress::gate::{GateChain, IpAction, IpRulesConfig, IpRulesGate, PassThroughGate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod local_tls;

#[derive(Debug, Default)]
struct NoAudit;
impl AuditSink for NoAudit {
    fn record(&self, _record: &AuditRecord) {}
}

/// What the origin counts.
#[derive(Debug, Default)]
struct Counts {
    accepts: AtomicUsize,
    requests: AtomicUsize,
}

/// A keep-alive HTTP/1.1 origin that answers every request (bodiless) with its head, and
/// closes connections as `kind` says, never announcing it (no `connection: close`), as a
/// server whose keep-alive timeout ran out does.
async fn start_origin(counts: Arc<Counts>, kind: OriginKind) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (close_after, answered) = match kind {
        OriginKind::KeepAlive => (usize::MAX, usize::MAX),
        OriginKind::ClosesWhenIdle => (1, 1),
        OriginKind::ClosesUnderTheSecondRequest => (2, 1),
    };
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            counts.accepts.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                for n in 1..=close_after {
                    let Some(head) = read_head(&mut tcp).await else {
                        return;
                    };
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    if n > answered {
                        return;
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    if tcp.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// The next request head, or `None` when the connection ends first.
async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8(head).unwrap())
}

struct Fixture {
    address: SocketAddr,
    cert_pem: String,
    counts: Arc<Counts>,
}

/// Which origin the edge forwards to.
enum OriginKind {
    /// Keeps connections open.
    KeepAlive,
    /// Closes each connection after its first response.
    ClosesWhenIdle,
    /// Answers the first request of each connection and closes the connection when the
    /// second request's head has arrived, without answering: the race of a server whose
    /// keep-alive timeout runs out just as the edge reuses the connection.
    ClosesUnderTheSecondRequest,
}

/// A plain TCP upstream that says it carries the admission itself, as the mesh hop does
/// (its node writes the identity headers): the edge must then write none.
#[derive(Debug)]
struct CarriesAdmission(TcpUpstream);

impl Upstream for CarriesAdmission {
    fn connect(&self) -> Connecting<'_> {
        self.0.connect()
    }

    fn send_request<'a>(
        &'a self,
        request: http::Request<EdgeBody>,
        context: &'a UpstreamContext,
    ) -> Sending<'a> {
        self.0.send_request(request, context)
    }

    fn carries_admission(&self) -> bool {
        true
    }
}

/// An edge with `app.test` (no gate), `gated.test` (an IP gate admitting only 127.0.0.2)
/// and `relay.test` (no gate, an upstream that carries the admission), all to one origin.
async fn start_edge(kind: OriginKind) -> Fixture {
    let counts = Arc::new(Counts::default());
    let origin = start_origin(Arc::clone(&counts), kind).await;
    let (resolver, cert_pem) = local_tls::self_signed(&["app.test", "gated.test", "relay.test"]);
    let gate = IpRulesGate::new(IpRulesConfig {
        rules: vec!["allow 127.0.0.2/32".parse().unwrap()],
        default: IpAction::Deny,
        trusted_proxies: Vec::new(),
    })
    .unwrap();
    let edge = Arc::new(Edge::new(
        vec![
            Funnel {
                hostname: "app.test".into(),
                upstream: Arc::new(TcpUpstream::new(origin.clone())),
                chain: GateChain::gate(PassThroughGate),
                route: None,
            },
            Funnel {
                hostname: "gated.test".into(),
                upstream: Arc::new(TcpUpstream::new(origin.clone())),
                chain: GateChain::gate(gate),
                route: None,
            },
            Funnel {
                hostname: "relay.test".into(),
                upstream: Arc::new(CarriesAdmission(TcpUpstream::new(origin))),
                chain: GateChain::gate(PassThroughGate),
                route: None,
            },
        ],
        Limits::default(),
        Arc::new(NoAudit),
        Arc::new(HttpChallenges::default()),
    ));
    let address = local_tls::serve_edge(edge, resolver).await;
    Fixture {
        address,
        cert_pem,
        counts,
    }
}

/// A client whose connections come from `source`.
fn client(fixture: &Fixture, source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fixture.cert_pem.as_bytes()).unwrap())
        .resolve("app.test", fixture.address)
        .resolve("gated.test", fixture.address)
        .resolve("relay.test", fixture.address)
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .header("postern-hop-context", "forged-by-the-client")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap().to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_the_edges_unless_the_upstream_carries_the_admission() {
    let fixture = start_edge(OriginKind::KeepAlive).await;
    let client = client(&fixture, "127.0.0.1");
    let head_of = |url: &'static str| {
        let client = client.clone();
        async move {
            let response = client
                .get(url)
                .header("Postern-Identity", "user:forged")
                .header("postern-gate", "forged")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap().to_ascii_lowercase()
        }
    };
    let head = head_of("https://app.test/plain").await;
    assert!(head.contains("postern-gate: pass-through\r\n"), "{head}");
    assert!(head.contains("postern-identity: anonymous\r\n"), "{head}");
    assert_eq!(head.matches("postern-identity:").count(), 1, "{head}");
    assert!(!head.contains("forged"), "{head}");

    let head = head_of("https://relay.test/carried").await;
    assert!(head.starts_with("get /carried http/1.1\r\n"), "{head}");
    assert!(!head.contains("postern-"), "{head}");
    assert!(!head.contains("forged"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_origin_connection() {
    let fixture = start_edge(OriginKind::KeepAlive).await;
    let first = client(&fixture, "127.0.0.1");
    let second = client(&fixture, "127.0.0.3");
    let requests = 20;
    for i in 0..requests {
        let (client, address) = if i % 2 == 0 {
            (&first, "127.0.0.1")
        } else {
            (&second, "127.0.0.3")
        };
        let (status, head) = get(client, &format!("https://app.test/n/{i}")).await;
        assert_eq!(status, 200);
        assert!(
            head.starts_with(&format!("get /n/{i} http/1.1\r\n")),
            "{head}"
        );
        assert!(
            head.contains(&format!("x-forwarded-for: {address}\r\n")),
            "{head}"
        );
        assert!(!head.contains("postern-hop-context"), "{head}");
        assert!(!head.contains("forged"), "{head}");
        // Let the finished exchange's connection go back to the pool first (otherwise
        // the pool may race it with a new connection).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fixture.counts.requests.load(Ordering::SeqCst), requests);
    // A connection per request would be 20.
    let accepts = fixture.counts.accepts.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&accepts),
        "{accepts} origin connections for {requests} sequential requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_origin_closed_while_idle_does_not_fail_the_next_request() {
    let fixture = start_edge(OriginKind::ClosesWhenIdle).await;
    let client = client(&fixture, "127.0.0.1");
    for i in 0..5 {
        let (status, head) = get(&client, &format!("https://app.test/after-close/{i}")).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.starts_with(&format!("get /after-close/{i} ")),
            "{head}"
        );
        // The origin's close reaches the pooled connection while it is idle.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fixture.counts.requests.load(Ordering::SeqCst), 5);
    assert_eq!(fixture.counts.accepts.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_the_origin_closed_under_is_sent_again_and_a_post_is_not() {
    let fixture = start_edge(OriginKind::ClosesUnderTheSecondRequest).await;
    let client = client(&fixture, "127.0.0.1");
    let (status, _) = get(&client, "https://app.test/first").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Goes out on the pooled connection, which the origin closes under it: sent again on
    // a fresh one, and the client sees only the answer.
    let (status, head) = get(&client, "https://app.test/second").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.starts_with("get /second "), "{head}");
    assert_eq!(fixture.counts.accepts.load(Ordering::SeqCst), 2);
    assert_eq!(fixture.counts.requests.load(Ordering::SeqCst), 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A POST with a body meets the same close: it could act twice, so it is not sent
    // again; the client gets 502 and the origin saw it once.
    let response = client
        .post("https://app.test/third")
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.text().await.unwrap(), "upstream_failed\n");
    assert_eq!(fixture.counts.accepts.load(Ordering::SeqCst), 2);
    assert_eq!(fixture.counts.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_never_reaches_the_origin() {
    let fixture = start_edge(OriginKind::KeepAlive).await;
    let admitted = client(&fixture, "127.0.0.2");
    let denied = client(&fixture, "127.0.0.1");
    let (status, _) = get(&admitted, "https://gated.test/ok").await;
    assert_eq!(status, 200);
    let (status, body) = get(&denied, "https://gated.test/no").await;
    assert_eq!(status, 403);
    assert_eq!(body, "ip_denied\n");
    let (status, head) = get(&admitted, "https://gated.test/ok-again").await;
    assert_eq!(status, 200);
    assert!(head.starts_with("get /ok-again "), "{head}");
    assert_eq!(fixture.counts.requests.load(Ordering::SeqCst), 2);
}

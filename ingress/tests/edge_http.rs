//! The HTTPS edge in-process with a static certificate: HTTP/2 with a streamed (SSE-like)
//! response, a WebSocket-style upgrade passed through as bytes, the body limit (for chains
//! that read bodies) and streaming (for those that do not), and the audit record.

// Helper functions of these tests unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use postern_ingress::audit::{AuditRecord, AuditSink};
use postern_ingress::certs::HttpChallenges;
use postern_ingress::edge::{Edge, Funnel, Limits, TcpUpstream};
use postern_ingress::gate::{
    Decision, Gate, GateChain, GateRequest, Identity, IpAction, IpRulesConfig, IpRulesGate,
    PassThroughGate, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

mod local_tls;

#[derive(Debug, Default)]
struct MemorySink(Mutex<Vec<AuditRecord>>);
impl AuditSink for MemorySink {
    fn record(&self, record: &AuditRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

/// A raw HTTP/1.1 origin: `/stream` sends one chunk, waits for `release`, sends another;
/// `/upgrade` answers 101 and echoes bytes; `POST /echo` answers with the body it received
/// (by its content-length: the edge forwards buffered bodies with one); anything else
/// counts and answers 200.
async fn start_origin(release: Arc<Notify>, hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let release = Arc::clone(&release);
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                if head.starts_with("GET /stream ") {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\nfirst\n\n\r\n").await.unwrap();
                    release.notified().await;
                    tcp.write_all(b"8\r\nsecond\n\n\r\n0\r\n\r\n")
                        .await
                        .unwrap();
                } else if head.starts_with("GET /upgrade ") {
                    assert!(
                        head.to_ascii_lowercase().contains("upgrade: websocket"),
                        "{head}"
                    );
                    tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").await.unwrap();
                    let mut buffer = [0u8; 64];
                    loop {
                        let n = tcp.read(&mut buffer).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        tcp.write_all(&buffer[..n]).await.unwrap();
                    }
                } else if head.starts_with("POST /early ") {
                    // Refuses an upload before reading it, and closes with the body unread.
                    tcp.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else if head.starts_with("POST /echo ") {
                    // No length and no chunking: a request without a body.
                    let length = local_tls::content_length(&head);
                    let mut body = vec![0u8; length];
                    tcp.read_exact(&mut body).await.unwrap();
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
                    tcp.write_all(head.as_bytes()).await.unwrap();
                    tcp.write_all(&body).await.unwrap();
                } else {
                    hits.fetch_add(1, Ordering::SeqCst);
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
            });
        }
    });
    address
}

async fn read_head(tcp: &mut TcpStream) -> String {
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

/// A gate that decides on the body, as webhook gates do: it admits a body unless it starts
/// with `forged`.
#[derive(Debug)]
struct BodyReadingGate;

impl Gate for BodyReadingGate {
    fn name(&self) -> &str {
        "body-reading"
    }

    fn reads_body(&self) -> bool {
        true
    }

    fn evaluate(&self, request: &GateRequest<'_>, _now: SystemTime) -> Decision {
        if request.body().starts_with(b"forged") {
            return Decision::deny(ReasonCode::SignatureMismatch);
        }
        Decision::Allow {
            gate: self.name().into(),
            identity: Identity::new("sender"),
        }
    }
}

fn ip_gate(allow: &str) -> GateChain {
    GateChain::gate(
        IpRulesGate::new(IpRulesConfig {
            rules: vec![format!("allow {allow}").parse().unwrap()],
            default: IpAction::Deny,
            trusted_proxies: Vec::new(),
        })
        .unwrap(),
    )
}

struct Fixture {
    address: std::net::SocketAddr,
    cert_pem: String,
    audit: Arc<MemorySink>,
    release: Arc<Notify>,
    hits: Arc<AtomicUsize>,
}

const HOSTS: [&str; 4] = ["app.test", "gated.test", "walled.test", "signed.test"];

async fn start_edge() -> Fixture {
    let release = Arc::new(Notify::new());
    let hits = Arc::new(AtomicUsize::new(0));
    let origin = start_origin(Arc::clone(&release), Arc::clone(&hits)).await;
    let (resolver, cert_pem) = local_tls::self_signed(&HOSTS);
    let audit = Arc::new(MemorySink::default());
    let limits = Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    };
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
                chain: ip_gate("127.0.0.0/8"),
                route: None,
            },
            Funnel {
                hostname: "walled.test".into(),
                upstream: Arc::new(TcpUpstream::new(origin.clone())),
                chain: ip_gate("192.0.2.0/24"),
                route: None,
            },
            Funnel {
                hostname: "signed.test".into(),
                upstream: Arc::new(TcpUpstream::new(origin)),
                // In a group with a gate that does not read bodies: the group still buffers.
                chain: GateChain::any_of(vec![
                    ip_gate("192.0.2.0/24"),
                    GateChain::gate(BodyReadingGate),
                ])
                .unwrap(),
                route: None,
            },
        ],
        limits,
        audit.clone(),
        Arc::new(HttpChallenges::default()),
    ));
    let address = local_tls::serve_edge(edge, resolver).await;
    Fixture {
        address,
        cert_pem,
        audit,
        release,
        hits,
    }
}

fn client(fixture: &Fixture) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fixture.cert_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    for host in HOSTS {
        builder = builder.resolve(host, fixture.address);
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_origin_refuses_unread_leaves_the_clients_connection_usable() {
    let fixture = start_edge().await;
    let mut tls = tls_connect(&fixture, "app.test").await;
    // 8 MiB: more than the edge's and the origin's socket buffers hold, so the origin's
    // reset comes while the edge is still forwarding the upload.
    let size = 8 * 1024 * 1024;
    let head = format!("POST /early HTTP/1.1\r\nhost: app.test\r\ncontent-length: {size}\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&vec![b'u'; size]).await.unwrap();
    tls.flush().await.unwrap();
    let answer = read_response_head(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    // The edge read the rest of the upload and dropped it: the connection carries the
    // next request (it would be closed if the edge had let the unread body go).
    tls.write_all(b"GET /after HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let answer = read_response_head(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
}

/// Reads one response's head and its `content-length` body from `tls`; empty if the
/// connection closed first.
async fn read_response_head<S: tokio::io::AsyncRead + Unpin>(tls: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut body = vec![0u8; local_tls::content_length(&head)];
    let _ = tls.read_exact(&mut body).await;
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_response_streams_before_the_origin_finishes() {
    let fixture = start_edge().await;
    let mut response = client(&fixture)
        .get("https://app.test/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    // The origin holds the second chunk until released: the first must arrive alone.
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first\n\n");
    fixture.release.notify_one();
    let second = response.chunk().await.unwrap().unwrap();
    assert_eq!(&second[..], b"second\n\n");
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"", "unexpected bytes after the last chunk");
    drop(response);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let records = fixture.audit.0.lock().unwrap().clone();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].result, "allow");
    assert_eq!(records[0].bytes, 15);
    assert_eq!(records[0].path, "/stream");
}

/// `POST url` with `body`, answered.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client.post(url).body(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_only_for_chains_that_read_them() {
    let fixture = start_edge().await;
    let client = client(&fixture);
    let large = vec![b'a'; 4096];
    // Without gates the body streams to the target, unbounded.
    let ungated = post(&client, "https://app.test/echo", large.clone()).await;
    assert_eq!(ungated.status(), 200);
    assert_eq!(ungated.bytes().await.unwrap(), large);
    // A gate that decides on the client's address does not wait for the body: it streams,
    // past max_body_bytes (1024 here), and arrives whole.
    let streamed = post(&client, "https://gated.test/echo", large.clone()).await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.bytes().await.unwrap(), large);
    // Refused by such a gate: nothing reaches the target.
    let refused = post(&client, "https://walled.test/x", large.clone()).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.text().await.unwrap(), "ip_denied\n");
    assert_eq!(fixture.hits.load(Ordering::SeqCst), 0);
    // A chain with a gate that reads bodies buffers them for it, up to max_body_bytes, and
    // the gate sees the bytes.
    let small = post(&client, "https://signed.test/echo", vec![b'a'; 1024]).await;
    assert_eq!(small.status(), 200);
    assert_eq!(small.bytes().await.unwrap().len(), 1024);
    let forged = post(&client, "https://signed.test/x", "forged payload").await;
    assert_eq!(forged.status(), 403);
    let oversized = post(&client, "https://signed.test/x", vec![b'a'; 1025]).await;
    assert_eq!(oversized.status(), 413);
    assert_eq!(oversized.text().await.unwrap(), "body_too_large\n");
    assert_eq!(fixture.hits.load(Ordering::SeqCst), 0);
    let records = fixture.audit.0.lock().unwrap().clone();
    let results: Vec<_> = records
        .iter()
        .map(|r| (r.funnel.clone().unwrap_or_default(), r.result))
        .collect();
    assert!(
        results.contains(&("walled.test".into(), "deny"))
            && results.contains(&("signed.test".into(), "deny")),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_curl_while_it_is_still_sending_the_body() {
    let fixture = start_edge().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &fixture.cert_pem).unwrap();
    let port = fixture.address.port();
    // curl sends half of a 64 KiB body (past the edge's 1 KiB bound), and the rest only
    // after a pause, so the edge's answer always comes while the body is unfinished: an IP
    // refusal, decided on the head, and a 413 of a chain that reads bodies. Unless the edge
    // goes on reading the body after answering, curl 7.88 loses the answer: over HTTP/2
    // the stream is reset ("Stream error in the HTTP/2 framing layer"), over HTTP/1.1 the
    // connection.
    let cases = [
        ("walled.test", "--http2", "403 2"),
        ("signed.test", "--http2", "413 2"),
        ("walled.test", "--http1.1", "403 1.1"),
        ("signed.test", "--http1.1", "413 1.1"),
    ];
    for (host, protocol, expected) in cases {
        let mut curl = tokio::process::Command::new("curl")
            .args(["-s", protocol, "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{http_version} %{errormsg}"])
            .arg("--cacert")
            .arg(&ca)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(["-H", "content-length: 65536", "-X", "POST"])
            .args(["--data-binary", "@-"])
            .arg(format!("https://{host}:{port}/x"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl is installed (scripts/install-deps)");
        let mut stdin = curl.stdin.take().unwrap();
        stdin.write_all(&[b'a'; 32 * 1024]).await.unwrap();
        stdin.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // curl may have given up already (the defect): then the pipe is closed.
        let _ = stdin.write_all(&[b'b'; 32 * 1024]).await;
        drop(stdin);
        let output = curl.wait_with_output().await.unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            said.starts_with(expected),
            "{host} {protocol}: curl said {said}"
        );
    }
    assert_eq!(fixture.hits.load(Ordering::SeqCst), 0);
    let records = fixture.audit.0.lock().unwrap().clone();
    let statuses: Vec<_> = records.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 413, 403, 413], "{records:?}");
}

/// Sends `POST path` to `host` with a chunked body, one chunk per write with a pause between
/// them (so the edge receives several body frames), and returns the raw response.
async fn post_chunked(fixture: &Fixture, host: &str, path: &str, chunks: &[Vec<u8>]) -> String {
    let mut tls = tls_connect(fixture, host).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    for chunk in chunks {
        // The edge may answer (413) and close before the last chunk: later writes may fail.
        let _ = tls
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = tls.write_all(chunk).await;
        let _ = tls.write_all(b"\r\n").await;
        let _ = tls.flush().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let _ = tls.flush().await;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn tls_connect(fixture: &Fixture, host: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    local_tls::connect(&fixture.cert_pem, fixture.address, host).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_bodies_in_many_frames_arrive_whole_and_stay_bounded() {
    let fixture = start_edge().await;
    // Three frames, 1024 bytes in all (the bound): buffered for the gate, forwarded whole
    // and in order, with a content-length.
    let chunks = vec![vec![b'a'; 300], vec![b'b'; 400], vec![b'c'; 324]];
    let response = post_chunked(&fixture, "signed.test", "/echo", &chunks).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    assert_eq!(body.as_bytes(), chunks.concat().as_slice());
    // One byte more, in frames (no content-length to refuse it early): 413, and nothing
    // reaches the origin.
    let hits = fixture.hits.load(Ordering::SeqCst);
    let chunks = vec![vec![b'a'; 600], vec![b'b'; 425]];
    let response = post_chunked(&fixture, "signed.test", "/x", &chunks).await;
    assert!(response.starts_with("HTTP/1.1 413 "), "{response}");
    assert!(response.ends_with("body_too_large\n"), "{response}");
    assert_eq!(fixture.hits.load(Ordering::SeqCst), hits);
    // An empty chunked body is a body of zero bytes (forwarded without a body).
    let response = post_chunked(&fixture, "signed.test", "/echo", &[]).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with("\r\n\r\n"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_becomes_a_byte_pipe() {
    let fixture = start_edge().await;
    let mut tls = tls_connect(&fixture, "app.test").await;
    tls.write_all(b"GET /upgrade HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tls.read(&mut byte).await.unwrap(),
            1,
            "closed during the head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"hello through the edge").await.unwrap();
    let mut echoed = [0u8; 22];
    tls.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello through the edge");
}

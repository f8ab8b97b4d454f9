//! Raw TCP funnels in-process on loopback: a PostgreSQL session through psql, a large
//! checksummed stream both ways, the PROXY v2 header a target sees, the per-client
//! connection limit, and the connection audit records.

// Helper functions of these tests unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_ingress::audit::{AuditRecord, AuditSink, ConnectionRecord};
use postern_ingress::edge::TcpUpstream;
use postern_ingress::tcp_funnel::{ClientLimiter, TcpFunnel, TcpLimits, serve_tcp_funnel};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct MemorySink(Mutex<Vec<ConnectionRecord>>);
impl AuditSink for MemorySink {
    fn record(&self, _record: &AuditRecord) {
        panic!("a TCP funnel wrote a request record");
    }
    fn record_connection(&self, record: &ConnectionRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

impl MemorySink {
    /// Waits (up to 10 s) until `n` records are written; returns them.
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

/// Starts a TCP funnel to `target` on a free loopback port; returns its address.
async fn start_funnel(
    target: String,
    proxy_protocol: bool,
    limiter: Arc<ClientLimiter>,
    audit: Arc<MemorySink>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let funnel = Arc::new(TcpFunnel {
        port: address.port(),
        upstream: Arc::new(TcpUpstream::new(target)),
        proxy_protocol,
        route: None,
        gates: None,
    });
    tokio::spawn(serve_tcp_funnel(
        listener,
        funnel,
        TcpLimits::default(),
        limiter,
        audit,
    ));
    address
}

/// An echo target; counts accepted connections.
async fn start_echo(accepted: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

/// Deterministic pseudo-random bytes (xorshift), so a lost, duplicated or reordered
/// chunk changes the checksum.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn large_stream_both_ways_arrives_intact_and_is_audited() {
    let audit = Arc::new(MemorySink::default());
    let target = start_echo(Arc::new(AtomicUsize::new(0))).await;
    let funnel = start_funnel(target, false, ClientLimiter::new(Some(8)), audit.clone()).await;

    const LEN: usize = 48 * 1024 * 1024;
    let data = pattern(LEN, 0x5eed);
    let sent_digest = Sha256::digest(&data);
    let stream = TcpStream::connect(funnel).await.unwrap();
    let client = stream.local_addr().unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&data).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = read.read(&mut buffer).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        received += n;
    }
    writer.await.unwrap();
    assert_eq!(received, LEN);
    assert_eq!(hasher.finalize(), sent_digest);

    let records = audit.wait_for(1).await;
    let record = &records[0];
    assert_eq!(record.kind, "tcp");
    assert_eq!(
        record.funnel.as_deref(),
        Some(&*format!("tcp:{}", funnel.port()))
    );
    assert_eq!(record.client, client.to_string());
    assert_eq!((record.result, record.reason.as_str()), ("allow", "closed"));
    assert_eq!(record.bytes_from_client, LEN as u64);
    assert_eq!(record.bytes_to_client, LEN as u64);
}

#[tokio::test]
async fn proxy_v2_header_names_the_public_client() {
    let audit = Arc::new(MemorySink::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let funnel = start_funnel(target, true, ClientLimiter::new(None), audit.clone()).await;

    let mut client = TcpStream::connect(funnel).await.unwrap();
    let client_address = client.local_addr().unwrap();
    client.write_all(b"ping").await.unwrap();
    let (mut seen, _) = listener.accept().await.unwrap();

    // The layout of section 2.2 of HAProxy's proxy-protocol.txt, read by hand.
    let mut fixed = [0u8; 16];
    seen.read_exact(&mut fixed).await.unwrap();
    assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "signature");
    assert_eq!(fixed[12], 0x21, "version 2, PROXY command");
    assert_eq!(fixed[13], 0x11, "TCP over IPv4");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]);
    assert_eq!(len, 12);
    let mut addresses = [0u8; 12];
    seen.read_exact(&mut addresses).await.unwrap();
    let source = SocketAddr::from((
        <[u8; 4]>::try_from(&addresses[0..4]).unwrap(),
        u16::from_be_bytes([addresses[8], addresses[9]]),
    ));
    let destination = SocketAddr::from((
        <[u8; 4]>::try_from(&addresses[4..8]).unwrap(),
        u16::from_be_bytes([addresses[10], addresses[11]]),
    ));
    assert_eq!(source, client_address);
    assert_eq!(destination, funnel);
    // Then the client's own bytes, unchanged.
    let mut ping = [0u8; 4];
    seen.read_exact(&mut ping).await.unwrap();
    assert_eq!(&ping, b"ping");
    seen.write_all(b"pong").await.unwrap();
    let mut pong = [0u8; 4];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");
}

#[tokio::test]
async fn the_connection_over_the_per_client_limit_is_refused_and_audited() {
    let audit = Arc::new(MemorySink::default());
    let accepted = Arc::new(AtomicUsize::new(0));
    let target = start_echo(Arc::clone(&accepted)).await;
    let funnel = start_funnel(target, false, ClientLimiter::new(Some(2)), audit.clone()).await;

    let mut open = Vec::new();
    for i in 0..2u8 {
        let mut stream = TcpStream::connect(funnel).await.unwrap();
        stream.write_all(&[i]).await.unwrap();
        let mut echo = [0u8; 1];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, [i]);
        open.push(stream);
    }
    let mut third = TcpStream::connect(funnel).await.unwrap();
    let _ = third.write_all(b"x").await;
    let mut buffer = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buffer))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "third got {read:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the target saw the third"
    );
    let records = audit.wait_for(1).await;
    assert_eq!(records[0].result, "deny");
    assert_eq!(records[0].reason, "too_many_connections");

    // Closing one frees its slot.
    drop(open.pop());
    audit.wait_for(2).await;
    let mut again = TcpStream::connect(funnel).await.unwrap();
    again.write_all(b"y").await.unwrap();
    let mut echo = [0u8; 1];
    again.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"y");
}

#[tokio::test]
async fn an_unreachable_target_is_audited_as_an_error() {
    let audit = Arc::new(MemorySink::default());
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = closed.local_addr().unwrap().to_string();
    drop(closed);
    let funnel = start_funnel(target, false, ClientLimiter::new(None), audit.clone()).await;
    let mut stream = TcpStream::connect(funnel).await.unwrap();
    let mut buffer = [0u8; 8];
    let read = stream.read(&mut buffer).await;
    assert!(matches!(read, Ok(0) | Err(_)));
    let records = audit.wait_for(1).await;
    assert_eq!(
        (records[0].result, records[0].reason.as_str()),
        ("error", "upstream_unreachable")
    );
}

/// psql talks to the lab's PostgreSQL through the funnel: a real session with several
/// statements and a result of a few megabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_session_runs_through_the_funnel() {
    let pg = postern_lab::postgres::PostgresCluster::start().unwrap();
    let audit = Arc::new(MemorySink::default());
    let funnel = start_funnel(
        format!("127.0.0.1:{}", pg.port()),
        false,
        ClientLimiter::new(None),
        audit.clone(),
    )
    .await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", funnel.port());
    let sql = "CREATE TABLE funnel_check (n int, s text); \
               INSERT INTO funnel_check SELECT g, md5(g::text) FROM generate_series(1, 50000) g; \
               SELECT count(*), md5(string_agg(s, ',' ORDER BY n)) FROM funnel_check; \
               SELECT string_agg(s, '') FROM funnel_check;";
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut lines = stdout.lines();
    let summary = lines.find(|l| l.starts_with("50000|")).unwrap();
    // The same query run directly (not through the funnel) gives the same digest.
    let direct = pg
        .psql("SELECT count(*), md5(string_agg(s, ',' ORDER BY n)) FROM funnel_check")
        .unwrap();
    assert_eq!(summary, direct.trim());
    let big = lines.next().unwrap();
    assert_eq!(big.len(), 50_000 * 32);

    let records = audit.wait_for(1).await;
    assert_eq!(
        (records[0].result, records[0].reason.as_str()),
        ("allow", "closed")
    );
    assert!(records[0].bytes_to_client > 1_600_000, "{:?}", records[0]);
}

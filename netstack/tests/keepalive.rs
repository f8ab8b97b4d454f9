//! TCP keep-alive (`TcpStream::set_keepalive`): a live peer keeps an idle connection open
//! by answering the probes, and a peer that vanishes without a word (the wire cut, no RST)
//! makes the connection fail instead of hanging.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const A_V4: &str = "100.64.0.1";
const B_V4: &str = "100.64.0.2";
const INTERVAL: Duration = Duration::from_millis(100);

struct Pair {
    _a: Netstack,
    _b: Netstack,
    wire: MemoryWire,
    client: TcpStream,
    server: TcpStream,
}

/// Two stacks over an in-memory wire and one established connection from `a` to `b`.
async fn connected() -> Pair {
    let config = |ip: &str| NetstackConfig::new([ip.parse::<IpAddr>().unwrap()]);
    let (a, seam_a) = Netstack::new(config(A_V4)).unwrap();
    let (b, seam_b) = Netstack::new(config(B_V4)).unwrap();
    let wire = MemoryWire::connect(seam_a, seam_b, Impairment::none());
    let listener = b.listen_tcp(8080).unwrap();
    let target = SocketAddr::new(B_V4.parse().unwrap(), 8080);
    let client = within(10, a.connect_tcp(target)).await.unwrap();
    let server = within(10, listener.accept()).await.unwrap();
    Pair {
        _a: a,
        _b: b,
        wire,
        client,
        server,
    }
}

/// Fails the test instead of hanging it.
async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test step took too long")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peer_keeps_an_idle_connection_open() {
    let mut p = connected().await;
    assert_eq!(p.client.keepalive(), None);
    p.client.set_keepalive(Some(INTERVAL));
    assert_eq!(p.client.keepalive(), Some(INTERVAL));
    let before = p.wire.stats().delivered;
    // Idle for ten intervals, more than the three that reset a silent peer.
    tokio::time::sleep(INTERVAL * 10).await;
    let probes_and_answers = p.wire.stats().delivered - before;
    assert!(
        probes_and_answers >= 2,
        "an idle connection with keep-alive sent {probes_and_answers} packets"
    );
    p.server.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    within(10, p.client.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"still here");
    p.client.write_all(b"me too").await.unwrap();
    let mut got = [0u8; 6];
    within(10, p.server.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"me too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_to_a_vanished_peer_fails() {
    let mut p = connected().await;
    p.client.set_keepalive(Some(INTERVAL));
    drop(p.wire); // the peer vanishes: nothing more arrives, not even a RST
    let mut buf = [0u8; 16];
    let error = within(10, p.client.read(&mut buf)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    let error = p.client.write_all(b"anyone?").await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_vanished_peer_fails() {
    let mut p = connected().await;
    p.client.set_keepalive(Some(INTERVAL));
    drop(p.wire);
    // Data waiting for an acknowledgement that never comes: the same silence resets it.
    p.client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let error = within(10, p.client.read(&mut buf)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_can_be_turned_off_again() {
    let p = connected().await;
    p.client.set_keepalive(Some(INTERVAL));
    // Turning it on sends a probe at once; let that exchange finish first.
    tokio::time::sleep(INTERVAL / 2).await;
    p.client.set_keepalive(None);
    assert_eq!(p.client.keepalive(), None);
    // A probe already scheduled still goes (smoltcp keeps its timer until it fires).
    tokio::time::sleep(INTERVAL * 2).await;
    let before = p.wire.stats().delivered;
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(p.wire.stats().delivered, before, "no probes once it is off");
}

//! Two netstacks wired back to back in memory (like a veth pair), talking TCP and UDP.

// Test helpers outside `#[test]` functions may unwrap too (clippy.toml covers only the
// test functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod transfer;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig, NetstackError};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transfer::{drain, pattern, transfer_checked};

const A_V4: &str = "100.64.0.1";
const B_V4: &str = "100.64.0.2";
const A_V6: &str = "fd7a:115c:a1e0::1";
const B_V6: &str = "fd7a:115c:a1e0::2";

struct Pair {
    a: Netstack,
    b: Netstack,
    wire: MemoryWire,
}

fn config(v4: &str, v6: &str) -> NetstackConfig {
    NetstackConfig::new([v4.parse::<IpAddr>().unwrap(), v6.parse::<IpAddr>().unwrap()])
}

fn pair_with(impairment: Impairment) -> Pair {
    let (a, seam_a) = Netstack::new(config(A_V4, A_V6)).unwrap();
    let (b, seam_b) = Netstack::new(config(B_V4, B_V6)).unwrap();
    let wire = MemoryWire::connect(seam_a, seam_b, impairment);
    Pair { a, b, wire }
}

fn pair() -> Pair {
    pair_with(Impairment::none())
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Fails the test instead of hanging it.
async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test step took too long")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_over_ipv4() {
    let p = pair();
    let listener = p.b.listen_tcp(7).unwrap();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        assert_eq!(stream.local_addr(), addr(B_V4, 7));
        assert_eq!(stream.peer_addr().ip(), A_V4.parse::<IpAddr>().unwrap());
        let (mut r, mut w) = tokio::io::split(&mut stream);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut client = within(10, p.a.connect_tcp(addr(B_V4, 7))).await.unwrap();
    assert!(!client.nodelay());
    client.set_nodelay(true);
    assert!(client.nodelay());
    assert_eq!(client.peer_addr(), addr(B_V4, 7));
    assert_eq!(client.local_addr().ip(), A_V4.parse::<IpAddr>().unwrap());
    for round in 0..20u8 {
        let msg = pattern(100 + usize::from(round) * 997, round);
        client.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        within(10, client.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, msg, "round {round}");
    }
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(10, client.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    within(10, server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_over_ipv6() {
    let p = pair();
    let listener = p.a.listen_tcp(443).unwrap();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        assert_eq!(stream.local_addr(), addr(A_V6, 443));
        assert_eq!(stream.peer_addr().ip(), B_V6.parse::<IpAddr>().unwrap());
        let mut buf = vec![0u8; 5000];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
        stream.shutdown().await.unwrap();
        stream.read_to_end(&mut Vec::new()).await.unwrap();
    });
    let mut client = within(10, p.b.connect_tcp(addr(A_V6, 443))).await.unwrap();
    assert!(client.local_addr().is_ipv6());
    let msg = pattern(5000, 6);
    client.write_all(&msg).await.unwrap();
    let mut back = Vec::new();
    within(10, client.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, msg);
    drop(client);
    within(10, server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way_arrive_intact() {
    const LEN: usize = 100 * 1000 * 1000;
    let p = pair();
    let listener = p.b.listen_tcp(5001).unwrap();
    let data_up = pattern(LEN, 1);
    let data_down = pattern(LEN, 2);
    let want_up = Sha256::digest(&data_up).to_vec();
    let want_down = Sha256::digest(&data_down).to_vec();

    let server = tokio::spawn(async move {
        let stream = listener.accept().await.unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        let reader = tokio::spawn(async move {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0;
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                total += n;
            }
            (total, hasher.finalize().to_vec())
        });
        for chunk in data_down.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        reader.await.unwrap()
    });

    let client = within(10, p.a.connect_tcp(addr(B_V4, 5001))).await.unwrap();
    let (mut r, mut w) = tokio::io::split(client);
    let writer = tokio::spawn(async move {
        for chunk in data_up.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        w
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    // On a stall, say where each end is.
    let (da, db) = (p.a.clone(), p.b.clone());
    let watchdog = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(20)).await;
            eprintln!("still running; a: {:?} {}", da.stats(), da.debug_sockets());
            eprintln!("still running; b: {:?} {}", db.stats(), db.debug_sockets());
        }
    });
    within(300, async {
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n;
        }
    })
    .await;
    watchdog.abort();
    assert_eq!(total, LEN);
    assert_eq!(hasher.finalize().to_vec(), want_down);
    let (up_len, up_hash) = within(300, server).await.unwrap();
    assert_eq!(up_len, LEN);
    assert_eq!(up_hash, want_up);
    within(10, writer).await.unwrap();
    assert_eq!(p.a.stats().malformed_dropped, 0);
    assert!(p.wire.stats().delivered > 2 * (LEN as u64) / 1400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    const CONNS: usize = 64;
    const LEN: usize = 200 * 1000;
    let p = pair();
    let listener = p.b.listen_tcp(9000).unwrap();
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..CONNS {
            let mut stream = listener.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                // Echo the digest of what came back, so the client can check it.
                let (len, digest) = drain(&mut stream).await;
                stream.write_all(&(len as u64).to_be_bytes()).await.unwrap();
                stream.write_all(&digest).await.unwrap();
                stream.shutdown().await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let mut clients = Vec::new();
    for i in 0..CONNS {
        let a = p.a.clone();
        clients.push(tokio::spawn(async move {
            let data = pattern(LEN, i as u8);
            let want = Sha256::digest(&data).to_vec();
            let mut stream = a.connect_tcp(addr(B_V4, 9000)).await.unwrap();
            stream.write_all(&data).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.unwrap();
            assert_eq!(&reply[..8], &(LEN as u64).to_be_bytes());
            assert_eq!(&reply[8..], &want[..]);
            stream.local_addr().port()
        }));
    }
    let mut ports = std::collections::HashSet::new();
    for client in clients {
        ports.insert(within(60, client).await.unwrap());
    }
    assert_eq!(ports.len(), CONNS, "each connection has its own port");
    within(60, server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    let p = pair();
    let listener = p.b.listen_tcp(80).unwrap();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        // The client has shut down its sending half: we read to EOF ...
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request, then FIN");
        // ... and can still answer, at length, afterwards.
        let reply = pattern(300_000, 9);
        stream.write_all(&reply).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    let mut client = within(10, p.a.connect_tcp(addr(B_V4, 80))).await.unwrap();
    client.write_all(b"request, then FIN").await.unwrap();
    client.shutdown().await.unwrap();
    let err = client.write_all(b"more").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    let mut reply = Vec::new();
    within(10, client.read_to_end(&mut reply)).await.unwrap();
    assert_eq!(reply, pattern(300_000, 9));
    within(10, server).await.unwrap();
}

/// Writing in place: what the fill writes is sent, an error of the fill (a source with
/// nothing to read yet) writes nothing, a full send buffer waits, and after
/// `shutdown_write` the stream refuses more as `poll_write` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_place_sends_what_the_fill_wrote_and_nothing_on_its_error() {
    use std::future::poll_fn;

    let p = pair();
    let listener = p.b.listen_tcp(81).unwrap();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    });
    let client = within(10, p.a.connect_tcp(addr(B_V4, 81))).await.unwrap();

    let nothing_yet = poll_fn(|cx| {
        client.poll_write_with(cx, |_| Err(io::Error::from(io::ErrorKind::WouldBlock)))
    })
    .await;
    assert_eq!(nothing_yet.unwrap_err().kind(), io::ErrorKind::WouldBlock);

    // 4 MiB through a 2 MiB send buffer: the fills must wait for room in between.
    let data = pattern(4 << 20, 3);
    let mut sent = 0;
    while sent < data.len() {
        let n = within(
            10,
            poll_fn(|cx| {
                client.poll_write_with(cx, |free| {
                    let n = free.len().min(data.len() - sent).min(10_000);
                    free[..n].copy_from_slice(&data[sent..sent + n]);
                    Ok(n)
                })
            }),
        )
        .await
        .unwrap();
        assert!(n > 0);
        sent += n;
    }
    client.shutdown_write().unwrap();
    let refused = poll_fn(|cx| client.poll_write_with(cx, |_| Ok(1))).await;
    assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    let got = within(20, server).await.unwrap();
    assert!(
        got == data,
        "received {} bytes, not the 4 MiB sent",
        got.len()
    );
}

/// Reading in place: an error of the drain consumes nothing, a partial drain leaves the
/// rest for the next call, everything arrives in order, and the end of the peer's
/// sending reads as 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_in_place_consumes_what_the_drain_took_and_ends_with_zero() {
    use std::future::poll_fn;

    let p = pair();
    let listener = p.b.listen_tcp(82).unwrap();
    let data = pattern(3 << 20, 5);
    let sent = data.clone();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        stream.write_all(&sent).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    let client = within(10, p.a.connect_tcp(addr(B_V4, 82))).await.unwrap();

    // Wait until something arrived, then refuse it: nothing may be consumed.
    let refused = within(
        10,
        poll_fn(|cx| {
            client.poll_read_with(cx, |_| Err(io::Error::from(io::ErrorKind::WouldBlock)))
        }),
    )
    .await;
    assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::WouldBlock);

    // Take at most 7,000 bytes per call (a sink that accepts part of what it is offered).
    let mut got = Vec::new();
    loop {
        let n = within(
            10,
            poll_fn(|cx| {
                client.poll_read_with(cx, |offered| {
                    let n = offered.len().min(7_000);
                    got.extend_from_slice(&offered[..n]);
                    Ok(n)
                })
            }),
        )
        .await
        .unwrap();
        if n == 0 {
            break;
        }
    }
    assert!(
        got == data,
        "received {} bytes, not the 3 MiB sent",
        got.len()
    );
    within(10, server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_port_nobody_listens_on_is_refused() {
    let p = pair();
    let _other = p.b.listen_tcp(81).unwrap();
    let err = within(10, p.a.connect_tcp(addr(B_V4, 82)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetstackError::ConnectionRefused { remote } if remote == addr(B_V4, 82)),
        "{err}"
    );
    let err = within(10, p.a.connect_tcp(addr(B_V6, 82)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetstackError::ConnectionRefused { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
    let io_err: io::Error = err.into();
    assert_eq!(io_err.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_port_listener_accepts_every_port_and_tells_which() {
    let p = pair();
    let any = p.b.listen_tcp_any_port().unwrap();
    assert_eq!(any.local_port(), None);
    let specific = p.b.listen_tcp(8080).unwrap();
    assert!(matches!(
        p.b.listen_tcp_any_port(),
        Err(NetstackError::AnyPortListenerExists)
    ));

    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut stream = any.accept().await.unwrap();
            let port = stream.local_addr().port();
            stream.write_all(&port.to_be_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            seen.push((stream.local_addr(), stream));
        }
        seen
    });
    let specific_server = tokio::spawn(async move {
        let mut stream = specific.accept().await.unwrap();
        stream.write_all(b"specific").await.unwrap();
        stream.shutdown().await.unwrap();
        stream
    });

    for target in [
        addr(B_V4, 22),
        addr(B_V4, 31337),
        addr(B_V6, 1),
        addr(B_V4, 65535),
    ] {
        let mut stream = within(10, p.a.connect_tcp(target)).await.unwrap();
        let mut reply = Vec::new();
        within(10, stream.read_to_end(&mut reply)).await.unwrap();
        assert_eq!(reply, target.port().to_be_bytes(), "connection to {target}");
    }
    let mut stream = within(10, p.a.connect_tcp(addr(B_V4, 8080))).await.unwrap();
    let mut reply = Vec::new();
    within(10, stream.read_to_end(&mut reply)).await.unwrap();
    assert_eq!(
        reply, b"specific",
        "a port's own listener wins over the any-port one"
    );

    let seen = within(10, server).await.unwrap();
    let locals: Vec<SocketAddr> = seen.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        locals,
        [
            addr(B_V4, 22),
            addr(B_V4, 31337),
            addr(B_V6, 1),
            addr(B_V4, 65535)
        ]
    );
    within(10, specific_server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_both_ways_over_ipv4_and_ipv6() {
    let p = pair();
    let a = p.a.bind_udp(0).unwrap();
    let b = p.b.bind_udp(53).unwrap();
    assert_eq!(b.local_port(), 53);
    assert!(a.local_port() >= 49152);
    assert!(matches!(
        p.b.bind_udp(53),
        Err(NetstackError::AddrInUse {
            protocol: "udp",
            port: 53
        })
    ));

    for (to_b, from_a) in [(addr(B_V4, 53), A_V4), (addr(B_V6, 53), A_V6)] {
        let query = pattern(1200, 3);
        assert_eq!(a.send_to(&query, to_b).await.unwrap(), 1200);
        let mut buf = [0u8; 2000];
        let (n, sender) = within(10, b.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], &query[..]);
        assert_eq!(sender, addr(from_a, a.local_port()));
        b.send_to(b"answer", sender).await.unwrap();
        let (n, sender) = within(10, a.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"answer");
        assert_eq!(sender, to_b);
    }

    let too_big = vec![0u8; 1500];
    let err = a.send_to(&too_big, addr(B_V4, 53)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("does not fit the tunnel MTU"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stack_sleeps() {
    let p = pair();
    let listener = p.b.listen_tcp(22).unwrap();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
        stream
    });
    let mut client = within(10, p.a.connect_tcp(addr(B_V4, 22))).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    within(10, client.read_exact(&mut buf)).await.unwrap();
    let _server_stream = within(10, server).await.unwrap();
    let _udp = p.a.bind_udp(0).unwrap();

    // Let the last ACKs settle, then count the owner loops' turns over an idle second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = (
        p.a.stats().poll_loop_iterations,
        p.b.stats().poll_loop_iterations,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (
        p.a.stats().poll_loop_iterations,
        p.b.stats().poll_loop_iterations,
    );
    let turns = (after.0 - before.0, after.1 - before.1);
    assert!(
        turns.0 <= 2 && turns.1 <= 2,
        "an idle stack turned its loop {turns:?} times in a second"
    );
    // And it is not asleep for good: the connection still works.
    client.write_all(b"again").await.unwrap();
    within(10, async {
        while p.a.stats().poll_loop_iterations == after.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    eprintln!("idle turns in one second: {turns:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_closes_it_after_its_data() {
    let p = pair();
    let listener = p.b.listen_tcp(25).unwrap();
    let data = pattern(500_000, 4);
    let sent = data.clone();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        stream.write_all(&sent).await.unwrap();
        // Dropped with data still in flight: it must be delivered, then FIN.
    });
    let mut client = within(10, p.a.connect_tcp(addr(B_V4, 25))).await.unwrap();
    within(10, server).await.unwrap();
    let mut got = Vec::new();
    within(10, client.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    drop(client);
    // The side that closed last (LAST-ACK) forgets the connection soon after; the other
    // one waits in TIME-WAIT. Nothing is left on `a` but the closed socket's removal.
    within(10, async {
        while p.a.stats().tcp_sockets != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_with_unread_data_resets_it() {
    let p = pair();
    let listener = p.b.listen_tcp(26).unwrap();
    let mut client = within(10, p.a.connect_tcp(addr(B_V4, 26))).await.unwrap();
    let server_stream = within(10, listener.accept()).await.unwrap();
    client.write_all(b"never read").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(server_stream);
    let mut buf = [0u8; 16];
    let err = within(10, client.read(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_completes_over_a_lossy_reordering_wire() {
    const LEN: usize = 4 * 1000 * 1000;
    let p = pair_with(Impairment::lossy(10, 20, 42));
    // The handshake itself may lose a packet (smoltcp retransmits the SYN after a second),
    // so the limit covers it too.
    transfer_checked(
        &p.a,
        &p.b,
        addr(B_V4, 5002),
        pattern(LEN, 5),
        Duration::from_secs(240),
    )
    .await;
    let stats = p.wire.stats();
    assert!(stats.lost > 0 && stats.reordered > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_dropped_and_counted() {
    let (stack, seam) = Netstack::new(config(A_V4, A_V6)).unwrap();
    let mut junk: Vec<bytes::Bytes> = vec![
        bytes::Bytes::new(),
        bytes::Bytes::from_static(&[0x45]),
        bytes::Bytes::from_static(&[0x60; 3]),
        bytes::Bytes::from_static(&[0xff; 64]),
        bytes::Bytes::from(vec![0x45; 60]),
    ];
    // Random bytes with a valid-looking first nibble.
    for seed in 0..200u8 {
        let mut p = pattern(20 + usize::from(seed) * 7, seed);
        p[0] = if seed % 2 == 0 { 0x45 } else { 0x60 };
        junk.push(p.into());
    }
    let count = junk.len() as u64;
    seam.to_stack.send(junk).await.unwrap();
    within(10, async {
        loop {
            let s = stack.stats();
            if s.malformed_dropped + s.not_local_dropped + s.packets_in == count {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stats = stack.stats();
    assert!(stats.malformed_dropped >= 200, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_stack_fails_its_sockets_cleanly() {
    let p = pair();
    let listener = p.b.listen_tcp(30).unwrap();
    let client = within(10, p.a.connect_tcp(addr(B_V4, 30))).await.unwrap();
    let mut server_stream = within(10, listener.accept()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        server_stream.read(&mut buf).await
    });
    drop(listener);
    let Pair { a, b, wire } = p;
    drop(b);
    let err = within(10, reader).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotConnected, "{err}");
    drop((a, wire, client));
}

/// Both ends time out with data in flight both ways, then see each other's ACKs late: a
/// stalled scheduler does this (here: one thread, blocked outright for longer than
/// smoltcp's 1 s minimum retransmission timeout). smoltcp 0.14 alone can deadlock here
/// (it did in some runs, depending on whether a stack sees its timer or the late packets
/// first); see `seq_repair` in the crate.
#[tokio::test(flavor = "current_thread")]
async fn tcp_survives_simultaneous_retransmissions() {
    const LEN: usize = 12 * 1000 * 1000;
    let p = pair();
    let listener = p.b.listen_tcp(6000).unwrap();
    let client = within(10, p.a.connect_tcp(addr(B_V4, 6000))).await.unwrap();
    let server = within(10, listener.accept()).await.unwrap();

    let mut tasks = Vec::new();
    for (stream, seed) in [(client, 11u8), (server, 12u8)] {
        let (mut r, mut w) = tokio::io::split(stream);
        tasks.push(tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                let data = pattern(LEN, seed);
                for chunk in data.chunks(64 * 1024) {
                    w.write_all(chunk).await.unwrap();
                }
                w.shutdown().await.unwrap();
                w
            });
            let (total, digest) = {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0;
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    total += n;
                }
                (total, hasher.finalize().to_vec())
            };
            let _w = writer.await.unwrap();
            (total, digest)
        }));
    }
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::thread::sleep(Duration::from_millis(1500));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(within(60, task).await.unwrap());
    }
    assert_eq!(results[0], (LEN, Sha256::digest(pattern(LEN, 12)).to_vec()));
    assert_eq!(results[1], (LEN, Sha256::digest(pattern(LEN, 11)).to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_listener_frees_its_port_and_refuses_newcomers() {
    let p = pair();
    let listener = p.b.listen_tcp(40).unwrap();
    assert!(matches!(
        p.b.listen_tcp(40),
        Err(NetstackError::AddrInUse {
            protocol: "tcp",
            port: 40
        })
    ));
    // A connection that completed its handshake but was never accepted is reset.
    let mut queued = within(10, p.a.connect_tcp(addr(B_V4, 40))).await.unwrap();
    drop(listener);
    let err = within(10, queued.read(&mut [0u8; 8])).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let err = within(10, p.a.connect_tcp(addr(B_V4, 40)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetstackError::ConnectionRefused { .. }),
        "{err}"
    );
    // The port can be listened on again.
    let again = p.b.listen_tcp(40).unwrap();
    let _client = within(10, p.a.connect_tcp(addr(B_V4, 40))).await.unwrap();
    let accepted = within(10, again.accept()).await.unwrap();
    assert_eq!(accepted.local_addr().port(), 40);

    let udp = p.b.bind_udp(41).unwrap();
    drop(udp);
    within(10, async {
        while p.b.bind_udp(41).is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_connections_reuse_closed_sockets_with_fresh_settings() {
    let p = pair();
    let listener = p.b.listen_tcp(80).unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok(mut stream) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = vec![0u8; 1024];
                stream.read_exact(&mut request).await.unwrap();
                stream.write_all(&request).await.unwrap();
                stream.shutdown().await.unwrap();
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
            });
        }
    });
    for round in 0..40u8 {
        let mut client = within(10, p.a.connect_tcp(addr(B_V4, 80))).await.unwrap();
        // A previous connection turned Nagle off; a reused socket must not inherit that.
        assert!(!client.nodelay(), "round {round}");
        client.set_nodelay(true);
        let request = pattern(1024, round);
        client.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        within(10, client.read_to_end(&mut answer)).await.unwrap();
        assert_eq!(answer, request, "round {round}");
        client.shutdown().await.unwrap();
        drop(client);
    }
    // Both sides made 40 sockets; with sockets reused most of them need no new buffers.
    // (A socket is reused once its close has finished, so not every one is.)
    let reused_a = p.a.stats().tcp_sockets_reused;
    let reused_b = p.b.stats().tcp_sockets_reused;
    assert!(reused_a >= 20, "client side reused {reused_a} of 40");
    assert!(reused_b >= 20, "server side reused {reused_b} of 40");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spare_sockets_nothing_is_reused() {
    let mut a_config = config(A_V4, A_V6);
    a_config.tcp_spare_sockets = 0;
    let (a, seam_a) = Netstack::new(a_config).unwrap();
    let (b, seam_b) = Netstack::new(config(B_V4, B_V6)).unwrap();
    let _wire = MemoryWire::connect(seam_a, seam_b, Impairment::none());
    let listener = b.listen_tcp(80).unwrap();
    let server = tokio::spawn(async move {
        while let Ok(stream) = listener.accept().await {
            drop(stream);
        }
    });
    for _ in 0..10 {
        let mut client = within(10, a.connect_tcp(addr(B_V4, 80))).await.unwrap();
        let mut rest = Vec::new();
        let _ = within(10, client.read_to_end(&mut rest)).await;
    }
    assert_eq!(a.stats().tcp_sockets_reused, 0);
    server.abort();
}

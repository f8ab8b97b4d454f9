//! Two peer engines over real UDP sockets on 127.0.0.1, driven by the tokio shell, exchange
//! IP packets through the batch channels.

// Test helpers outside `#[test]` functions: a panic is how they report a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use bytes::Bytes;
use postern_node::engine::{EngineConfig, Event, PathId, PeerConfig, PeerEngine};
use postern_node::udp::{EngineCommand, UdpEngine, UdpShellConfig};
use tokio::sync::oneshot;

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Bytes {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    Bytes::from(p)
}

/// Receives inbound batches until `n` packets arrived (or the deadline fails the test).
async fn receive(engine: &mut UdpEngine, n: usize) -> Vec<Bytes> {
    let mut got = Vec::new();
    let collect = async {
        while got.len() < n {
            let batch = engine.inbound.recv().await.expect("engine task ended");
            got.extend(batch);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .expect("packets did not arrive within 20 s");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_exchange_packets_over_loopback_udp() {
    let now = Instant::now();
    let (sa, sb) = (StaticSecret::from([7; 32]), StaticSecret::from([8; 32]));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let sock_a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock_b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (addr_a, addr_b) = (sock_a.local_addr().unwrap(), sock_b.local_addr().unwrap());

    let mut a = PeerEngine::new(EngineConfig::new(sa), now);
    a.add_peer(
        PeerConfig {
            public_key: pb,
            preshared_key: Some([9; 32]),
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            endpoint: Some(PathId::Direct(addr_b)),
            persistent_keepalive: None,
        },
        now,
    )
    .unwrap();
    let mut b = PeerEngine::new(EngineConfig::new(sb), now);
    b.add_peer(
        PeerConfig {
            public_key: pa,
            preshared_key: Some([9; 32]),
            allowed_ips: vec!["100.64.0.1/32".parse().unwrap()],
            endpoint: None, // b learns a's address from the handshake
            persistent_keepalive: None,
        },
        now,
    )
    .unwrap();

    let mut a = UdpEngine::spawn(a, sock_a, UdpShellConfig::default()).unwrap();
    let mut b = UdpEngine::spawn(b, sock_b, UdpShellConfig::default()).unwrap();
    assert_eq!(a.local_addr, addr_a);

    // a -> b: a batch of 200 packets of 1400 bytes; the first ones wait for the handshake.
    let to_b: Vec<Bytes> = (0..200u16)
        .map(|i| {
            udp4(
                [100, 64, 0, 1],
                [100, 64, 0, 2],
                4000,
                5000,
                &[i as u8; 1372],
            )
        })
        .collect();
    a.outbound.send(to_b[..100].to_vec()).await.unwrap();
    let first = receive(&mut b, 1).await;
    a.outbound.send(to_b[100..].to_vec()).await.unwrap();
    let mut got = first;
    got.extend(receive(&mut b, 100).await);
    // Loopback does not lose or reorder: the first 100 were queued during the handshake
    // (boringtun keeps up to 256), then 100 more.
    assert_eq!(got.len(), 200);
    assert_eq!(got, to_b);

    // b -> a: replies go to the endpoint b learnt.
    let to_a: Vec<Bytes> = (0..50u16)
        .map(|i| {
            udp4(
                [100, 64, 0, 2],
                [100, 64, 0, 1],
                5000,
                4000,
                &i.to_be_bytes(),
            )
        })
        .collect();
    b.outbound.send(to_a.clone()).await.unwrap();
    assert_eq!(receive(&mut a, 50).await, to_a);

    // Both sides saw the handshake; counters agree with what crossed.
    let handshake = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Event::HandshakeCompleted { peer }) = a.events.recv().await {
                return peer;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(handshake, pb);
    let (tx, rx) = oneshot::channel();
    b.commands
        .send(EngineCommand::PeerStats(pa, tx))
        .await
        .unwrap();
    let stats = rx.await.unwrap().unwrap();
    assert_eq!(stats.rx_packets, 200);
    assert_eq!(stats.tx_packets, 50);
    assert_eq!(stats.endpoint, Some(PathId::Direct(addr_a)));
    assert!(
        a.counters
            .datagrams_out
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 201
    );

    // Closing the outbound channel stops the task cleanly.
    drop(a.outbound);
    a.task.await.unwrap().unwrap();
}

/// A stack linked straight to the shell (no pump task): the shell reads the stack's
/// batches, delivers decrypted ones into the stack's channel, lets the tap take the packets
/// it claims, and keeps serving its own `outbound` channel alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_stack_exchanges_packets_and_its_tap_takes_what_it_claims() {
    use postern_node::udp::StackLink;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    let now = Instant::now();
    let (sa, sb) = (StaticSecret::from([17; 32]), StaticSecret::from([18; 32]));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let sock_a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock_b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr_b = sock_b.local_addr().unwrap();
    let peer = |key, ip: &str, endpoint| PeerConfig {
        public_key: key,
        preshared_key: None,
        allowed_ips: vec![ip.parse().unwrap()],
        endpoint,
        persistent_keepalive: None,
    };
    let mut a = PeerEngine::new(EngineConfig::new(sa), now);
    a.add_peer(peer(pb, "100.64.0.2/32", Some(PathId::Direct(addr_b))), now)
        .unwrap();
    let mut b = PeerEngine::new(EngineConfig::new(sb), now);
    b.add_peer(peer(pa, "100.64.0.1/32", None), now).unwrap();
    let a = UdpEngine::spawn(a, sock_a, UdpShellConfig::default()).unwrap();
    let b = UdpEngine::spawn(b, sock_b, UdpShellConfig::default()).unwrap();

    // a's stack: it sends through its link.
    let (a_stack_tx, a_from_stack) = mpsc::channel(8);
    let (a_to_stack, _a_stack_rx) = mpsc::channel(8);
    let link_a = StackLink {
        from_stack: a_from_stack,
        to_stack: a_to_stack,
        tap: None,
    };
    a.commands
        .send(EngineCommand::LinkStack(link_a))
        .await
        .unwrap();
    // b's stack: a tap takes the packets whose payload starts with 0xEE.
    let (_b_stack_tx, b_from_stack) = mpsc::channel(8);
    let (b_to_stack, mut b_stack_rx) = mpsc::channel(8);
    let tapped = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&tapped);
    let link_b = StackLink {
        from_stack: b_from_stack,
        to_stack: b_to_stack,
        tap: Some(Box::new(move |packet: &[u8]| {
            let claim = packet.get(28) == Some(&0xEE);
            if claim {
                seen.lock().unwrap().push(packet.to_vec());
            }
            claim
        })),
    };
    b.commands
        .send(EngineCommand::LinkStack(link_b))
        .await
        .unwrap();

    let packet = |i: u8| udp4([100, 64, 0, 1], [100, 64, 0, 2], 4000, 5000, &[i; 100]);
    let from_stack: Vec<Bytes> = (0..20).map(packet).collect();
    a_stack_tx.send(from_stack.clone()).await.unwrap();
    // The shell's own channel still works next to the link.
    let claimed = packet(0xEE);
    a.outbound.send(vec![claimed.clone()]).await.unwrap();

    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < from_stack.len() {
            got.extend(b_stack_rx.recv().await.expect("b's shell ended"));
        }
    })
    .await
    .expect("packets did not reach b's stack within 20 s");
    assert_eq!(got, from_stack);
    tokio::time::timeout(Duration::from_secs(20), async {
        while tapped.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the tap never saw the claimed packet");
    assert_eq!(tapped.lock().unwrap().as_slice(), &[claimed.to_vec()]);
    // The claimed packet did not also reach the stack.
    assert!(b_stack_rx.try_recv().is_err());
}

//! Two peer engines that can only reach each other through a real relay on loopback: the
//! WireGuard handshake and data go over `PathId::Relay`, the relay's counters prove it, an
//! unregistered node is refused, a relay restart is survived, and TLS works.

// Test helpers outside `#[test]` functions: a panic is how they report a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postern_node::engine::{EngineConfig, Event, PathId, PeerConfig, PeerEngine};
use postern_node::relay::{RelayClient, RelayClientConfig, RelayState};
use postern_proto::netmap::RegionId;
use postern_proto::{NodePrivateKey, NodePublicKey};
use postern_relay::{RelayConfig, RelayServer, ServeHandle, StaticAllowList};

const REGION: RegionId = RegionId(1);

fn udp4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Bytes {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    Bytes::from(p)
}

/// A node: an engine whose only path to its peer is the relay.
struct Node {
    key: NodePrivateKey,
    engine: PeerEngine,
    relay: RelayClient,
    inbound: Vec<Bytes>,
}

impl Node {
    fn new(key: NodePrivateKey, peer: NodePublicKey, peer_ip: [u8; 4], url: &str) -> Self {
        let now = Instant::now();
        let mut engine = PeerEngine::new(EngineConfig::new(key.to_x25519()), now);
        engine
            .add_peer(
                PeerConfig {
                    public_key: peer.to_x25519(),
                    preshared_key: None,
                    allowed_ips: vec![
                        format!("{}/32", std::net::Ipv4Addr::from(peer_ip))
                            .parse()
                            .unwrap(),
                    ],
                    endpoint: Some(PathId::Relay {
                        region: REGION,
                        peer,
                    }),
                    persistent_keepalive: None,
                },
                now,
            )
            .unwrap();
        let relay = RelayClient::spawn(RelayClientConfig::new(url, REGION, key.clone())).unwrap();
        Self {
            key,
            engine,
            relay,
            inbound: Vec::new(),
        }
    }

    /// Sends what the engine produced: relay paths to the relay client.
    fn flush(&mut self) {
        while let Some(t) = self.engine.poll_transmit() {
            let PathId::Relay { peer, .. } = t.dst else {
                panic!("the engine chose a non-relay path: {}", t.dst);
            };
            let _ = self.relay.sender().try_send(peer, t.payload);
        }
        while let Some(event) = self.engine.poll_event() {
            if let Event::InboundPacket { packet, .. } = event {
                self.inbound.push(packet);
            }
        }
    }
}

/// Drives both nodes (relay input, engine timers) until `done` or 20 s pass.
async fn drive(a: &mut Node, b: &mut Node, mut done: impl FnMut(&Node, &Node) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(a, b) {
        let tick = tokio::time::sleep(Duration::from_millis(50));
        tokio::select! {
            Some(d) = a.relay.recv() => {
                a.engine.handle_input(PathId::Relay { region: REGION, peer: d.src }, &d.packet, Instant::now());
            }
            Some(d) = b.relay.recv() => {
                b.engine.handle_input(PathId::Relay { region: REGION, peer: d.src }, &d.packet, Instant::now());
            }
            () = tick => {
                a.engine.handle_timeout(Instant::now());
                b.engine.handle_timeout(Instant::now());
            }
        }
        a.flush();
        b.flush();
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes did not finish within 20 s"
        );
    }
}

fn keys() -> (NodePrivateKey, NodePrivateKey) {
    (
        NodePrivateKey::generate(&mut rand::rngs::OsRng),
        NodePrivateKey::generate(&mut rand::rngs::OsRng),
    )
}

async fn start_relay(allowed: &[NodePublicKey], addr: &str) -> (RelayServer, ServeHandle) {
    let allow = Arc::new(StaticAllowList::new(allowed.iter().copied()));
    let relay = RelayServer::new(RelayConfig::default(), allow);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let handle = relay.serve(listener, None).unwrap();
    (relay, handle)
}

/// Sends `n` packets from a to b and waits for them all.
async fn send_a_to_b(a: &mut Node, b: &mut Node, n: usize) {
    let before = b.inbound.len();
    for i in 0..n {
        let packet = udp4([100, 64, 0, 1], [100, 64, 0, 2], &vec![i as u8; 1200]);
        a.engine.handle_outbound(&packet, Instant::now());
        a.flush();
    }
    drive(a, b, |_, b| b.inbound.len() >= before + n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wireguard_traffic_flows_only_through_the_relay() {
    let (ka, kb) = keys();
    let (pa, pb) = (ka.public_key(), kb.public_key());
    let (relay, handle) = start_relay(&[pa, pb], "127.0.0.1:0").await;
    let url = format!("http://{}/relay", handle.local_addr);
    let mut a = Node::new(ka, pb, [100, 64, 0, 2], &url);
    let mut b = Node::new(kb, pa, [100, 64, 0, 1], &url);
    a.relay
        .wait_attached(Duration::from_secs(10))
        .await
        .unwrap();
    b.relay
        .wait_attached(Duration::from_secs(10))
        .await
        .unwrap();

    send_a_to_b(&mut a, &mut b, 50).await;
    assert_eq!(b.inbound.len(), 50);
    assert_eq!(b.inbound[7].len(), 1228);
    assert!(
        a.engine
            .peer_stats(&pb.to_x25519())
            .unwrap()
            .last_handshake
            .is_some()
    );

    // Every byte crossed the relay: 50 data messages of 1228 + 32 bytes, plus the
    // handshake, each counted as sent by a and delivered to b.
    let sa = relay.client_stats(&pa).unwrap();
    let sb = relay.client_stats(&pb).unwrap();
    assert!(sa.rx_bytes >= 50 * 1260, "{sa:?}");
    assert!(sb.tx_packets >= 51, "{sb:?}");
    assert_eq!(sb.tx_bytes, sa.rx_bytes);
    assert_eq!(relay.stats().dropped_packets, 0);
    let _ = a.key.public_key();
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_node_is_refused_and_told_why() {
    let (registered, stranger) = keys();
    let (_relay, handle) = start_relay(&[registered.public_key()], "127.0.0.1:0").await;
    let url = format!("http://{}/relay", handle.local_addr);
    let client = RelayClient::spawn(RelayClientConfig::new(url, REGION, stranger.clone())).unwrap();
    let mut states = client.watch_state();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        states.wait_for(|s| matches!(s, RelayState::Refused(_))),
    )
    .await
    .expect("no refusal within 10 s")
    .unwrap()
    .clone();
    assert_eq!(
        refused,
        RelayState::Refused(format!(
            "node key {} is not registered with this tailnet's coord; register the node (postern login) first",
            stranger.public_key().short()
        ))
    );
    client.shutdown().await;
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reattach_after_a_relay_restart() {
    let (ka, kb) = keys();
    let (pa, pb) = (ka.public_key(), kb.public_key());
    let (_relay, handle) = start_relay(&[pa, pb], "127.0.0.1:0").await;
    let addr: SocketAddr = handle.local_addr;
    let url = format!("http://{addr}/relay");
    let mut a = Node::new(ka, pb, [100, 64, 0, 2], &url);
    let mut b = Node::new(kb, pa, [100, 64, 0, 1], &url);
    a.relay
        .wait_attached(Duration::from_secs(10))
        .await
        .unwrap();
    b.relay
        .wait_attached(Duration::from_secs(10))
        .await
        .unwrap();
    send_a_to_b(&mut a, &mut b, 5).await;

    handle.shutdown().await;
    let mut states = a.relay.watch_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        states.wait_for(|s| !matches!(s, RelayState::Attached)),
    )
    .await
    .expect("the client did not notice the relay going away")
    .unwrap();

    // A new relay process on the same address: both clients come back on their own.
    let (relay, handle) = start_relay(&[pa, pb], &addr.to_string()).await;
    a.relay
        .wait_attached(Duration::from_secs(15))
        .await
        .unwrap();
    b.relay
        .wait_attached(Duration::from_secs(15))
        .await
        .unwrap();
    send_a_to_b(&mut a, &mut b, 5).await;
    assert!(relay.client_stats(&pb).unwrap().tx_packets >= 5);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_works_over_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let server_tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client_tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let (ka, kb) = keys();
    let (pa, pb) = (ka.public_key(), kb.public_key());
    let allow = Arc::new(StaticAllowList::new([pa, pb]));
    let relay = RelayServer::new(RelayConfig::default(), allow);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = relay.serve(listener, Some(Arc::new(server_tls))).unwrap();
    let url = format!("https://localhost:{}/relay", handle.local_addr.port());
    let client_tls = Arc::new(client_tls);
    let connect = |key: NodePrivateKey| {
        let mut config = RelayClientConfig::new(url.clone(), REGION, key);
        config.tls = Some(client_tls.clone());
        RelayClient::spawn(config).unwrap()
    };
    let a = connect(ka);
    let mut b = connect(kb);
    a.wait_attached(Duration::from_secs(10)).await.unwrap();
    b.wait_attached(Duration::from_secs(10)).await.unwrap();
    a.sender()
        .try_send(pb, Bytes::from_static(b"sealed"))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.src, got.packet), (pa, Bytes::from_static(b"sealed")));

    // Plain HTTP to the TLS port does not attach.
    let plain = RelayClient::spawn(RelayClientConfig::new(
        format!("http://127.0.0.1:{}/relay", handle.local_addr.port()),
        REGION,
        NodePrivateKey::generate(&mut rand::rngs::OsRng),
    ))
    .unwrap();
    assert!(
        plain
            .wait_attached(Duration::from_millis(500))
            .await
            .is_err()
    );
    handle.shutdown().await;
}

//! The relay protocol end to end over in-memory pipes: attach with a key proof, refusal of
//! bad proofs and unregistered keys, forwarding by node key, and a slow receiver that must
//! not stall anyone else.

// Test helpers outside `#[test]` functions: a panic is how they report a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use postern_proto::frame::FrameDecoder;
use postern_proto::relay::{MAX_RELAY_FRAME_LEN, RelayFrame, attach_proof};
use postern_proto::{NodePrivateKey, NodePublicKey};
use postern_relay::{RelayConfig, RelayServer, StaticAllowList};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A bare relay client on one end of an in-memory pipe.
struct RawClient {
    io: DuplexStream,
    decoder: FrameDecoder,
}

impl RawClient {
    fn connect(relay: &RelayServer, pipe_bytes: usize) -> Self {
        let (client, server) = tokio::io::duplex(pipe_bytes);
        let relay = relay.clone();
        tokio::spawn(async move {
            let _ = relay.handle_connection(server).await;
        });
        Self {
            io: client,
            decoder: FrameDecoder::new(MAX_RELAY_FRAME_LEN),
        }
    }

    async fn send(&mut self, frame: RelayFrame) {
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next frame, or `None` when the relay closed the pipe.
    async fn recv(&mut self) -> Option<RelayFrame> {
        let mut buf = vec![0u8; 70_000];
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return Some(RelayFrame::parse(&frame).unwrap());
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.io.read(&mut buf))
                .await
                .expect("relay said nothing for 5 s")
                .unwrap();
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Runs the attach with `key`, proving `prover`'s key; returns the relay's answer.
    async fn attach_as(&mut self, key: NodePublicKey, prover: &NodePrivateKey) -> RelayFrame {
        let Some(RelayFrame::ServerChallenge { challenge }) = self.recv().await else {
            panic!("the relay must speak first with a challenge");
        };
        let proof = attach_proof(prover, &challenge).unwrap().to_vec();
        self.send(RelayFrame::ClientInfo {
            node_key: key,
            proof,
        })
        .await;
        self.recv().await.unwrap()
    }

    async fn attach(relay: &RelayServer, key: &NodePrivateKey) -> Self {
        let mut client = Self::connect(relay, 1 << 20);
        let answer = client.attach_as(key.public_key(), key).await;
        assert_eq!(answer, RelayFrame::Attached);
        client
    }

    /// The next packet, skipping keepalives.
    async fn recv_packet(&mut self) -> (NodePublicKey, Vec<u8>) {
        loop {
            match self.recv().await {
                Some(RelayFrame::RecvPacket { src, packet }) => return (src, packet),
                Some(RelayFrame::KeepAlive) => {}
                other => panic!("expected a packet, got {other:?}"),
            }
        }
    }
}

fn keys(n: usize) -> Vec<NodePrivateKey> {
    (0..n)
        .map(|_| NodePrivateKey::generate(&mut rand::rngs::OsRng))
        .collect()
}

fn relay_for(keys: &[NodePrivateKey], config: RelayConfig) -> (RelayServer, Arc<StaticAllowList>) {
    let allow = Arc::new(StaticAllowList::new(keys.iter().map(|k| k.public_key())));
    (RelayServer::new(config, allow.clone()), allow)
}

#[tokio::test]
async fn registered_nodes_exchange_packets_by_key_and_are_counted() {
    let k = keys(2);
    let (relay, _) = relay_for(&k, RelayConfig::default());
    let mut a = RawClient::attach(&relay, &k[0]).await;
    let mut b = RawClient::attach(&relay, &k[1]).await;
    for i in 0..10u8 {
        a.send(RelayFrame::SendPacket {
            dst: k[1].public_key(),
            packet: vec![i; 1000],
        })
        .await;
    }
    for i in 0..10u8 {
        assert_eq!(b.recv_packet().await, (k[0].public_key(), vec![i; 1000]));
    }
    b.send(RelayFrame::SendPacket {
        dst: k[0].public_key(),
        packet: b"reply".to_vec(),
    })
    .await;
    assert_eq!(
        a.recv_packet().await,
        (k[1].public_key(), b"reply".to_vec())
    );
    let sa = relay.client_stats(&k[0].public_key()).unwrap();
    let sb = relay.client_stats(&k[1].public_key()).unwrap();
    assert_eq!((sa.rx_packets, sa.rx_bytes), (10, 10_000));
    assert_eq!((sb.tx_packets, sb.tx_bytes), (10, 10_000));
    assert_eq!((sa.tx_packets, sb.rx_packets), (1, 1));
    let metrics = relay.encode_metrics();
    assert!(
        metrics.contains("postern_relay_forwarded_bytes_total 10005"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "postern_relay_client_tx_bytes_total{{node=\"{}\"}} 10000",
            k[1].public_key().short()
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unregistered_key_is_refused_with_a_reason() {
    let k = keys(2);
    let (relay, allow) = relay_for(&k[..1], RelayConfig::default());
    let mut stranger = RawClient::connect(&relay, 1 << 16);
    let answer = stranger.attach_as(k[1].public_key(), &k[1]).await;
    let RelayFrame::Health { problem } = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert_eq!(
        problem,
        format!(
            "node key {} is not registered with this tailnet's coord; register the node (postern login) first",
            k[1].public_key().short()
        )
    );
    assert_eq!(
        stranger.recv().await,
        None,
        "the relay closes after refusing"
    );
    assert!(!relay.is_attached(&k[1].public_key()));
    // Registering it lets it in.
    allow.insert(k[1].public_key());
    RawClient::attach(&relay, &k[1]).await;
    assert!(relay.is_attached(&k[1].public_key()));
    assert_eq!(relay.refused_attaches(), 1);
}

#[tokio::test]
async fn claiming_someone_elses_key_is_refused() {
    let k = keys(2);
    let (relay, _) = relay_for(&k, RelayConfig::default());
    let mut impostor = RawClient::connect(&relay, 1 << 16);
    // Names k[0]'s key but can only prove k[1]'s.
    let answer = impostor.attach_as(k[0].public_key(), &k[1]).await;
    assert_eq!(
        answer,
        RelayFrame::Health {
            problem:
                "the attach proof does not match the node key; the client does not hold that key"
                    .into()
        }
    );
    assert!(!relay.is_attached(&k[0].public_key()));
}

#[tokio::test]
async fn the_first_frame_must_be_client_info() {
    let k = keys(1);
    let (relay, _) = relay_for(&k, RelayConfig::default());
    let mut client = RawClient::connect(&relay, 1 << 16);
    assert!(matches!(
        client.recv().await,
        Some(RelayFrame::ServerChallenge { .. })
    ));
    client.send(RelayFrame::KeepAlive).await;
    assert_eq!(
        client.recv().await,
        Some(RelayFrame::Health {
            problem: "the first frame must be client-info".into()
        })
    );
}

#[tokio::test]
async fn a_slow_receiver_drops_its_own_packets_and_stalls_no_one() {
    let k = keys(4);
    let config = RelayConfig {
        queue_packets: 32,
        rate_bytes_per_second: None,
        ..RelayConfig::default()
    };
    let (relay, _) = relay_for(&k, config);
    let mut sender = RawClient::attach(&relay, &k[0]).await;
    // The slow receiver's pipe holds only a few packets and it never reads again.
    let mut slow = RawClient::connect(&relay, 4096);
    assert_eq!(
        slow.attach_as(k[1].public_key(), &k[1]).await,
        RelayFrame::Attached
    );
    let mut fast = RawClient::attach(&relay, &k[2]).await;
    let mut other_sender = RawClient::attach(&relay, &k[3]).await;

    const N: usize = 2000;
    for i in 0..N {
        let packet = (i as u32).to_be_bytes().repeat(250);
        sender
            .send(RelayFrame::SendPacket {
                dst: k[1].public_key(),
                packet: packet.clone(),
            })
            .await;
        other_sender
            .send(RelayFrame::SendPacket {
                dst: k[2].public_key(),
                packet,
            })
            .await;
        // The fast receiver keeps up, and gets every packet in order.
        let (src, got) = fast.recv_packet().await;
        assert_eq!(src, k[3].public_key());
        assert_eq!(got[..4], (i as u32).to_be_bytes());
    }
    let slow_stats = relay.client_stats(&k[1].public_key()).unwrap();
    let fast_stats = relay.client_stats(&k[2].public_key()).unwrap();
    assert!(
        slow_stats.dropped_queue_full > (N as u64) / 2,
        "slow receiver: {slow_stats:?}"
    );
    assert_eq!(fast_stats.tx_packets, N as u64);
    assert_eq!(fast_stats.dropped_queue_full, 0);
    drop(slow);
}

#[tokio::test]
async fn a_reattach_replaces_the_old_connection() {
    let k = keys(2);
    let (relay, _) = relay_for(&k, RelayConfig::default());
    let mut first = RawClient::attach(&relay, &k[0]).await;
    let mut second = RawClient::attach(&relay, &k[0]).await;
    assert_eq!(
        first.recv().await,
        None,
        "the replaced connection is closed"
    );
    let mut b = RawClient::attach(&relay, &k[1]).await;
    b.send(RelayFrame::SendPacket {
        dst: k[0].public_key(),
        packet: vec![1, 2, 3],
    })
    .await;
    assert_eq!(
        second.recv_packet().await,
        (k[1].public_key(), vec![1, 2, 3])
    );
    assert_eq!(relay.client_stats(&k[0].public_key()).unwrap().attaches, 2);
}

//! Short request/response connections between two netstacks (the shape of an HTTP funnel's
//! mesh hop, 32 at a time), with every segment acknowledged and with delayed
//! acknowledgements (`NetstackConfig::ack_delay`): every exchange completes, and delaying
//! ACKs sends fewer packets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const A: &str = "100.64.0.1";
const B: &str = "100.64.0.2";

fn config(ip: &str, ack_delay: Option<Duration>) -> NetstackConfig {
    let mut config = NetstackConfig::new([ip.parse::<IpAddr>().unwrap()]);
    config.ack_delay = ack_delay;
    config
}

/// Runs 32 clients of 30 exchanges each; returns the packets both stacks sent.
async fn run(ack_delay: Option<Duration>) -> u64 {
    let (a, seam_a) = Netstack::new(config(A, ack_delay)).unwrap();
    let (b, seam_b) = Netstack::new(config(B, ack_delay)).unwrap();
    let _wire = MemoryWire::connect(seam_a, seam_b, Impairment::none());
    let listener = b.listen_tcp(80).unwrap();
    tokio::spawn(async move {
        loop {
            let mut stream = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = [0u8; 300];
                stream.read_exact(&mut request).await.unwrap();
                stream.write_all(&[7u8; 2048]).await.unwrap();
                stream.shutdown().await.unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    let mut clients = Vec::new();
    for _ in 0..32 {
        let a = a.clone();
        clients.push(tokio::spawn(async move {
            for _ in 0..30 {
                let mut stream = a
                    .connect_tcp(SocketAddr::new(B.parse().unwrap(), 80))
                    .await
                    .unwrap();
                stream.set_nodelay(true);
                stream.write_all(&[1u8; 300]).await.unwrap();
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.unwrap();
                assert_eq!(answer.len(), 2048);
                stream.shutdown().await.unwrap();
            }
        }));
    }
    for client in clients {
        tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("the exchanges did not finish in time")
            .unwrap();
    }
    // Let the last closes finish before counting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.stats().packets_out + b.stats().packets_out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_acks_complete_every_exchange_with_fewer_packets() {
    let every_segment = run(None).await;
    let delayed = run(Some(Duration::from_millis(1))).await;
    // 960 exchanges of 300 bytes up and 2 KiB down: handshake, request, two response
    // segments and the closes, each acknowledged.
    assert!(every_segment >= 960 * 8, "{every_segment} packets");
    assert!(
        delayed < every_segment,
        "delayed ACKs sent {delayed} packets, acknowledging every segment {every_segment}"
    );
}

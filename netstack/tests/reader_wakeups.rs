//! A reader draining a received transfer does not turn the stack's owner task once per
//! read: a read wakes the owner only when it opened the receive window enough for a window
//! update (smoltcp patch 10, `window_update_due`). On the mesh that is a turn of the
//! receiving node's TCP, and a wake-up across threads, per read of the funnel's stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod transfer;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transfer::{drain, pattern, settled};

const LEN: usize = 1_000_000;
const READ: usize = 4 * 1024;
const SLOW_READS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wake_the_owner_only_for_window_updates() {
    let a_ip: IpAddr = "100.64.0.1".parse().unwrap();
    let b_ip: IpAddr = "100.64.0.2".parse().unwrap();
    let (a, seam_a) = Netstack::new(NetstackConfig::new([a_ip])).unwrap();
    let mut b_config = NetstackConfig::new([b_ip]);
    // Room for the whole transfer: it arrives before the reader reads anything.
    b_config.tcp_rx_buffer = 1 << 20;
    let (b, seam_b) = Netstack::new(b_config).unwrap();
    let _wire = MemoryWire::connect(seam_a, seam_b, Impairment::none());
    let listener = b.listen_tcp(5001).unwrap();
    let data = pattern(LEN, 9);

    let mut client = a.connect_tcp(SocketAddr::new(b_ip, 5001)).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    client.write_all(&data).await.unwrap();
    // Everything sent, acknowledged and buffered at b, both stacks quiet. The connection
    // stays open (after a FIN no window update is ever due).
    settled(&a).await;
    let before = settled(&b).await;

    // Slow reads, as a reader that writes each chunk on to a slower socket: the owner is
    // idle between them, so a read that woke it would cost a turn each.
    let mut buf = vec![0u8; READ];
    let mut total = 0;
    for _ in 0..SLOW_READS {
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(buf[..n], data[total..total + n]);
        total += n;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let turns = b.stats().poll_loop_iterations - before.poll_loop_iterations;
    eprintln!("{SLOW_READS} reads ({total} bytes), {turns} turns of the receiver's owner");
    // The window was advertised at about 48 KB and grows by 4 KiB a read: it doubles
    // (an update is due) three times in 400 KB. Waking the owner on every read made 100.
    assert!(
        turns <= 10,
        "{turns} turns of the owner for {SLOW_READS} reads: reads still wake it each time"
    );
    // And the updates that are due still go out (the peer learns of the room).
    assert!(
        turns >= 1,
        "no window update was sent after 400 KB of reads"
    );
    client.shutdown().await.unwrap();

    let (rest, rest_digest) = drain(&mut server).await;
    assert_eq!(total + rest, LEN);
    assert_eq!(rest_digest, Sha256::digest(&data[total..]).to_vec());
}

//! Receive coalescing over an in-memory wire: a bulk transfer arrives intact whether runs
//! of segments are joined or not, and joined runs are acknowledged once each, so the
//! receiver sends far fewer ACKs (issue #8: each ACK is a packet to encrypt, send and
//! decrypt on the mesh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod transfer;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig, NetstackStats};
use transfer::{pattern, settled, transfer_checked};

const A_V4: &str = "100.64.0.1";
const B_V4: &str = "100.64.0.2";
const LEN: usize = 8 * 1000 * 1000;

/// Moves `LEN` bytes from a stack to another with `coalescing` at the receiver, over
/// `impairment`, and returns what the sender sent and the receiver's counters.
async fn bulk(coalescing: Option<usize>, impairment: Impairment) -> (NetstackStats, NetstackStats) {
    let a_ip: IpAddr = A_V4.parse().unwrap();
    let b_ip: IpAddr = B_V4.parse().unwrap();
    let (a, seam_a) = Netstack::new(NetstackConfig::new([a_ip])).unwrap();
    let mut b_config = NetstackConfig::new([b_ip]);
    b_config.receive_coalescing = coalescing;
    let (b, seam_b) = Netstack::new(b_config).unwrap();
    let _wire = MemoryWire::connect(seam_a, seam_b, impairment);
    transfer_checked(
        &a,
        &b,
        SocketAddr::new(b_ip, 5001),
        pattern(LEN, 3),
        Duration::from_secs(120),
    )
    .await;
    (settled(&a).await, settled(&b).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_runs_are_acknowledged_once_each() {
    let (sender, receiver) = bulk(Some(65_535), Impairment::none()).await;
    eprintln!(
        "on: sender {} out, receiver {} in, {} out, {} runs of {} packets",
        sender.packets_out,
        receiver.packets_in,
        receiver.packets_out,
        receiver.coalesced_runs,
        receiver.coalesced_packets
    );
    // At least 8 MB / 1,380 bytes of data segments.
    assert!(sender.packets_out > 5_000, "{sender:?}");
    assert!(
        receiver.coalesced_runs > 0,
        "nothing was joined: {receiver:?}"
    );
    assert!(receiver.coalesced_packets >= 2 * receiver.coalesced_runs);
    // One ACK per run, not per segment: well under half as many packets back as in.
    assert!(
        receiver.packets_out * 3 < receiver.packets_in,
        "{} ACKs for {} segments: runs were not acknowledged once each",
        receiver.packets_out,
        receiver.packets_in
    );

    let (_, off) = bulk(None, Impairment::none()).await;
    eprintln!(
        "off: receiver {} in, {} out",
        off.packets_in, off.packets_out
    );
    assert_eq!((off.coalesced_runs, off.coalesced_packets), (0, 0));
    // Without it, most segments are acknowledged one by one (measured: 4,814 ACKs for
    // 5,802 segments, against 160 with coalescing).
    assert!(off.packets_out * 2 > off.packets_in, "{off:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_reordering_wire_still_delivers_every_byte() {
    // Loss and reordering cut runs short and leave holes that SACK must describe; joined
    // segments must never hide a hole or duplicate a byte.
    let (_, receiver) = bulk(Some(65_535), Impairment::lossy(20, 50, 8)).await;
    assert!(receiver.coalesced_runs > 0, "{receiver:?}");
}

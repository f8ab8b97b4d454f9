//! TCP pacing (`NetstackConfig::tcp_pacing`, the vendored smoltcp's patch 8) between two
//! netstacks over an in-memory wire: transfers complete with every byte intact, with and
//! without loss. The pacing gate itself (how many segments leave per interval, when the
//! socket asks to be polled) is tested with a fake clock in `third_party/smoltcp`; here the
//! point is that a paced sender driven by the stack's real timer never stalls: data held
//! back by pacing must go out when the timer fires, also at the end of a transfer when no
//! ACK is left to wake the sender. No assertion is on time (the timeout only guards against
//! a hang).

// Test helpers outside `#[test]` functions may unwrap too (clippy.toml covers only the
// test functions themselves).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

mod transfer;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig, TcpPacing, WireStats};
use transfer::{pattern, transfer_checked};

const A: &str = "100.64.0.1";
const B: &str = "100.64.0.2";

fn config(v4: &str) -> NetstackConfig {
    let mut config = NetstackConfig::new([v4.parse::<IpAddr>().unwrap()]);
    config.tcp_pacing = Some(TcpPacing::default());
    config
}

/// Sends `len` bytes from A to B, then `len` bytes back, each over its own connection,
/// with pacing on in both stacks; fails unless every byte arrives intact (or if it takes
/// more than 5 minutes, which only guards against a hang).
async fn paced_transfers(len: usize, impairment: Impairment) -> WireStats {
    let (a, seam_a) = Netstack::new(config(A)).unwrap();
    let (b, seam_b) = Netstack::new(config(B)).unwrap();
    let wire = MemoryWire::connect(seam_a, seam_b, impairment);
    for (from, to, to_addr, seed) in [(&a, &b, B, 0x17), (&b, &a, A, 0x29)] {
        let to_address = SocketAddr::new(to_addr.parse().unwrap(), 5000);
        let data = pattern(len, seed);
        transfer_checked(from, to, to_address, data, Duration::from_secs(300)).await;
    }
    let stats = wire.stats();
    eprintln!("paced, {len} bytes each way, {impairment:?}: {stats:?}");
    stats
}

/// 5 ms each way: the round trip (10 ms) is well above the 1 ms horizon, so the senders
/// are paced for most of the transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_transfer_over_a_delayed_wire_arrives_intact() {
    let stats = paced_transfers(
        4 << 20,
        Impairment::none().with_delay(Duration::from_millis(5)),
    )
    .await;
    assert_eq!(stats.lost, 0);
}

/// No delay: the round trip is far below the horizon, so pacing rarely holds anything back;
/// the transfer must still be intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_transfer_over_a_fast_wire_arrives_intact() {
    paced_transfers(8 << 20, Impairment::none()).await;
}

/// 1 % loss and some reordering each way, 5 ms each way: loss recovery and pacing together
/// (the first retransmission of an episode skips the pacing gate, later ones are paced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_transfer_over_a_lossy_wire_arrives_intact() {
    let stats = paced_transfers(
        2 << 20,
        Impairment::lossy(10, 10, 0x9ace).with_delay(Duration::from_millis(5)),
    )
    .await;
    assert!(stats.lost > 0, "the wire lost nothing: {stats:?}");
}

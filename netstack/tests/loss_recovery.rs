//! TCP loss recovery between two netstacks over a lossy, slow in-memory wire: what the
//! vendored smoltcp's SACK recovery (third_party/smoltcp/PATCHES.md) has to achieve. The
//! assertions are on counts the wire keeps (payload bytes lost, payload bytes sent again),
//! never on time.

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

use postern_netstack::{
    CongestionControl, Impairment, MemoryWire, Netstack, NetstackConfig, WireStats,
};
use transfer::{pattern, transfer_checked};

const A: &str = "100.64.0.1";
const B: &str = "100.64.0.2";

fn config(v4: &str, v6: &str, congestion_control: CongestionControl) -> NetstackConfig {
    let mut config =
        NetstackConfig::new([v4.parse::<IpAddr>().unwrap(), v6.parse::<IpAddr>().unwrap()]);
    config.congestion_control = congestion_control;
    config
}

/// Sends `len` bytes from one stack to the other over `impairment` and returns what the
/// wire counted. Fails if the bytes do not arrive intact (or take more than 10 minutes,
/// which only guards against a hang).
async fn transfer(
    len: usize,
    impairment: Impairment,
    congestion_control: CongestionControl,
) -> WireStats {
    let (a, seam_a) = Netstack::new(config(A, "fd7a:115c:a1e0::1", congestion_control)).unwrap();
    let (b, seam_b) = Netstack::new(config(B, "fd7a:115c:a1e0::2", congestion_control)).unwrap();
    let wire = MemoryWire::connect(seam_a, seam_b, impairment);
    let data = pattern(len, 0x91);
    let to_address = SocketAddr::new(B.parse().unwrap(), 5000);
    transfer_checked(&a, &b, to_address, data, Duration::from_secs(600)).await;
    let stats = wire.stats();
    eprintln!("{len} bytes, {impairment:?}, {congestion_control:?}: {stats:?}");
    stats
}

/// 5 % of the packets lost each way and 10 ms each way: every loss is repaired by sending
/// the lost segment again, hardly ever data that had arrived. Upstream smoltcp, which
/// ignores SACK and falls back on timeouts and their go-back-N for a window's second loss,
/// fails this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_segments_are_resent_without_resending_what_arrived() {
    let impairment = Impairment::lossy(50, 0, 7).with_delay(Duration::from_millis(10));
    let stats = transfer(4 << 20, impairment, CongestionControl::Cubic).await;
    assert!(stats.tcp_lost_bytes > 100_000, "{stats:?}");
    // Lost retransmissions are lost bytes too, so resent >= lost always; a timeout's
    // go-back-N resends data that had arrived. Measured with seed 7: the patched smoltcp
    // resends 1.15 times what was lost, 0.15 of it needlessly; upstream 0.14 resends 1.55
    // times, 0.57 of it needlessly, and takes 6 times as long.
    assert!(
        stats.tcp_resent_bytes <= stats.tcp_lost_bytes * 3 / 2,
        "resent {} bytes for {} lost: {stats:?}",
        stats.tcp_resent_bytes,
        stats.tcp_lost_bytes
    );
    assert!(
        stats.tcp_needlessly_resent_bytes <= stats.tcp_lost_bytes / 4,
        "resent {} bytes that had arrived, for {} lost: {stats:?}",
        stats.tcp_needlessly_resent_bytes,
        stats.tcp_lost_bytes
    );
}

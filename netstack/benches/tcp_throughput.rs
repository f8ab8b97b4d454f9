//! Single-flow TCP throughput between two netstacks wired back to back in memory, against
//! the named peer measured in the same run: a plain tokio `TcpStream` over the kernel's
//! loopback (127.0.0.1).
//!
//! Run: `cargo bench -p postern-netstack --bench tcp_throughput`. Each iteration moves
//! `BYTES_PER_ITER` one way over one long-lived connection; criterion reports bytes per
//! second (multiply GiB/s by 8.59 for Gbit/s). The `_32_idle` variants keep 32 more,
//! idle connections open between the two stacks during the transfer (issue #8: pooled
//! HTTP hop streams beside a funnel's TCP); the per-packet cost should not grow with them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_main};
use postern_netstack::{CongestionControl, Impairment, MemoryWire, Netstack, NetstackConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const BYTES_PER_ITER: u64 = 64 << 20;
const CHUNK: usize = 256 << 10;

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    }
}

/// Moves `total` bytes from `w` to `r` and returns how long it took.
async fn transfer<W, R>(mut w: W, mut r: R, total: u64) -> Duration
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin,
{
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; CHUNK];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(CHUNK as u64) as usize;
            w.write_all(&chunk[..n]).await.unwrap();
            sent += n as u64;
        }
        w
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < total {
        let n = r.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed early");
        got += n as u64;
    }
    let elapsed = start.elapsed();
    let _w = writer.await.unwrap();
    elapsed
}

fn config(ip: &str, congestion: CongestionControl, verify: bool) -> NetstackConfig {
    let mut config = NetstackConfig::new([ip.parse::<IpAddr>().unwrap()]);
    config.congestion_control = congestion;
    config.verify_checksums = verify;
    config
}

fn bench_netstack(
    c: &mut Criterion,
    name: &str,
    threads: usize,
    congestion: CongestionControl,
    verify: bool,
    idle: usize,
) {
    let rt = runtime(threads);
    let mut group = c.benchmark_group("single_flow_tcp");
    group.throughput(Throughput::Bytes(BYTES_PER_ITER));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let (a, seam_a) = Netstack::new(config("100.64.0.1", congestion, verify)).unwrap();
                let (bs, seam_b) = Netstack::new(config("100.64.0.2", congestion, verify)).unwrap();
                let _wire = MemoryWire::connect(seam_a, seam_b, Impairment::none());
                let _idle = idle_connections(&a, &bs, idle).await;
                let listener = bs.listen_tcp(5201).unwrap();
                let target: SocketAddr = "100.64.0.2:5201".parse().unwrap();
                let client = a.connect_tcp(target).await.unwrap();
                let server = listener.accept().await.unwrap();
                transfer(client, server, BYTES_PER_ITER * iters).await
            })
        });
    });
    group.finish();
}

/// `count` established, idle connections from `a` to `b`, both ends kept open.
async fn idle_connections(
    a: &Netstack,
    b: &Netstack,
    count: usize,
) -> Vec<(postern_netstack::TcpStream, postern_netstack::TcpStream)> {
    let listener = b.listen_tcp(80).unwrap();
    let target: SocketAddr = "100.64.0.2:80".parse().unwrap();
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let client = a.connect_tcp(target).await.unwrap();
        let server = listener.accept().await.unwrap();
        pairs.push((client, server));
    }
    pairs
}

fn bench_kernel(c: &mut Criterion, name: &str, threads: usize) {
    let rt = runtime(threads);
    let mut group = c.benchmark_group("single_flow_tcp");
    group.throughput(Throughput::Bytes(BYTES_PER_ITER));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let target = listener.local_addr().unwrap();
                let (client, accepted) =
                    tokio::join!(tokio::net::TcpStream::connect(target), listener.accept());
                let client = client.unwrap();
                let (server, _) = accepted.unwrap();
                client.set_nodelay(true).unwrap();
                transfer(client, server, BYTES_PER_ITER * iters).await
            })
        });
    });
    group.finish();
}

fn single_flow(c: &mut Criterion) {
    bench_kernel(c, "kernel_loopback_2_threads", 2);
    bench_netstack(
        c,
        "netstack_2_threads",
        2,
        CongestionControl::Cubic,
        true,
        0,
    );
    bench_netstack(c, "netstack_1_thread", 1, CongestionControl::Cubic, true, 0);
    bench_netstack(
        c,
        "netstack_2_threads_no_rx_checksum",
        2,
        CongestionControl::Cubic,
        false,
        0,
    );
    bench_netstack(
        c,
        "netstack_2_threads_32_idle",
        2,
        CongestionControl::Cubic,
        true,
        32,
    );
    bench_netstack(
        c,
        "netstack_1_thread_32_idle",
        1,
        CongestionControl::Cubic,
        true,
        32,
    );
}

// The macro's generated function has no doc comment of its own.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::single_flow);
}
use group::benches;
criterion_main!(benches);

//! Short TCP connections, one request each (the shape of a funnel's mesh hop: the edge
//! opens a connection per forwarded request), between two netstacks wired back to back in
//! memory: with spare sockets reused (the default) and without (every connection allocates
//! and zeroes its 2 × 2 MiB of buffers), against the named peer measured in the same run,
//! tokio `TcpStream`s over the kernel's loopback.
//!
//! Run: `cargo bench -p postern-netstack --bench short_connections`. Each iteration opens a
//! connection, writes a 1 KiB request, reads the 1 KiB answer and closes; criterion reports
//! connections per second ("elements").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_main};
use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const REQUEST: usize = 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The server side of one connection: read the request, answer it, close.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut request = [0u8; REQUEST];
    if stream.read_exact(&mut request).await.is_err() {
        return;
    }
    let _ = stream.write_all(&request).await;
    let _ = stream.shutdown().await;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
}

/// The client side of one connection.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let request = [0x5au8; REQUEST];
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::with_capacity(REQUEST);
    stream.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer.len(), REQUEST);
    stream.shutdown().await.unwrap();
}

/// The benchmark group every variant runs in: one connection per element.
fn group(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("short_connections");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group
}

fn bench_netstack(c: &mut Criterion, name: &str, spare_sockets: usize) {
    let rt = runtime();
    let config = |ip: &str| {
        let mut config = NetstackConfig::new([ip.parse::<IpAddr>().unwrap()]);
        config.tcp_spare_sockets = spare_sockets;
        config
    };
    let mut group = group(c);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let (a, seam_a) = Netstack::new(config("100.64.0.1")).unwrap();
                let (bs, seam_b) = Netstack::new(config("100.64.0.2")).unwrap();
                let _wire = MemoryWire::connect(seam_a, seam_b, Impairment::none());
                let listener = bs.listen_tcp(80).unwrap();
                let server = tokio::spawn(async move {
                    while let Ok(stream) = listener.accept().await {
                        tokio::spawn(answer(stream));
                    }
                });
                let target: SocketAddr = "100.64.0.2:80".parse().unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    ask(a.connect_tcp(target).await.unwrap()).await;
                }
                let elapsed = start.elapsed();
                server.abort();
                elapsed
            })
        });
    });
    group.finish();
}

fn bench_kernel(c: &mut Criterion, name: &str) {
    let rt = runtime();
    let mut group = group(c);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let target = listener.local_addr().unwrap();
                let server = tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(answer(stream));
                    }
                });
                let start = Instant::now();
                for _ in 0..iters {
                    let stream = tokio::net::TcpStream::connect(target).await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    ask(stream).await;
                }
                let elapsed = start.elapsed();
                server.abort();
                elapsed
            })
        });
    });
    group.finish();
}

fn short_connections(c: &mut Criterion) {
    bench_kernel(c, "kernel_loopback");
    bench_netstack(c, "netstack_spare_sockets_4", 4);
    bench_netstack(c, "netstack_spare_sockets_0", 0);
}

// The macro's generated function has no doc comment of its own.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::short_connections);
}
use group::benches;
criterion_main!(benches);

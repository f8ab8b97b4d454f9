//! Criterion benchmarks of the peer engine in memory: encrypt + decrypt of 1400-byte IP
//! packets through a pair of engines, against boringtun's raw `Tunn` pair with no engine
//! around it, in the same run. Results and the command are in docs/benchmarks.md.
//!
//! `cargo bench -p postern-node --bench engine`

// Benchmark set-up: a panic is how it reports a broken pair.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use criterion::{Criterion, Throughput, criterion_main};
use postern_node::engine::{EngineConfig, Event, PathId, PeerConfig, PeerEngine};

const PACKET: usize = 1400;
const BATCH: usize = 64;

fn udp4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0xabu8; PACKET];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

struct EnginePair {
    a: PeerEngine,
    b: PeerEngine,
    addr_a: SocketAddr,
    addr_b: SocketAddr,
    now: Instant,
}

impl EnginePair {
    fn new() -> Self {
        let now = Instant::now();
        let (sa, sb) = (StaticSecret::from([1; 32]), StaticSecret::from([2; 32]));
        let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
        let addr_a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let addr_b: SocketAddr = "192.0.2.2:2".parse().unwrap();
        let mut a = PeerEngine::new(EngineConfig::new(sa), now);
        let mut b = PeerEngine::new(EngineConfig::new(sb), now);
        a.add_peer(
            PeerConfig {
                public_key: pb,
                preshared_key: None,
                allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
                endpoint: Some(PathId::Direct(addr_b)),
                persistent_keepalive: None,
            },
            now,
        )
        .unwrap();
        b.add_peer(
            PeerConfig {
                public_key: pa,
                preshared_key: None,
                allowed_ips: vec!["100.64.0.1/32".parse().unwrap()],
                endpoint: Some(PathId::Direct(addr_a)),
                persistent_keepalive: None,
            },
            now,
        )
        .unwrap();
        let mut pair = Self {
            a,
            b,
            addr_a,
            addr_b,
            now,
        };
        // Handshake: the first packet starts it; pump until both sides are quiet.
        pair.a
            .handle_outbound(&udp4([100, 64, 0, 1], [100, 64, 0, 2]), now);
        for _ in 0..10 {
            pair.pump();
        }
        pair
    }

    /// Delivers everything in flight both ways; returns packets delivered to b.
    fn pump(&mut self) -> usize {
        let mut delivered = 0;
        while let Some(t) = self.a.poll_transmit() {
            self.b
                .handle_input(PathId::Direct(self.addr_a), &t.payload, self.now);
        }
        while let Some(t) = self.b.poll_transmit() {
            self.a
                .handle_input(PathId::Direct(self.addr_b), &t.payload, self.now);
        }
        while let Some(e) = self.b.poll_event() {
            if let Event::InboundPacket { packet, .. } = e {
                black_box(packet);
                delivered += 1;
            }
        }
        while self.a.poll_event().is_some() {}
        delivered
    }
}

fn tunn_pair() -> (Tunn, Tunn) {
    let (sa, sb) = (StaticSecret::from([1; 32]), StaticSecret::from([2; 32]));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let mut a = Tunn::new(sa, pb, None, None, 1, None);
    let mut b = Tunn::new(sb, pa, None, None, 2, None);
    let mut buf_a = vec![0u8; 2048];
    let mut buf_b = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut buf_a, false) else {
        panic!("no initiation")
    };
    let TunnResult::WriteToNetwork(resp) = b.decapsulate(None, init, &mut buf_b) else {
        panic!("no response")
    };
    let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, resp, &mut buf_a) else {
        panic!("no keepalive")
    };
    assert!(matches!(
        b.decapsulate(None, keepalive, &mut buf_b),
        TunnResult::Done
    ));
    (a, b)
}

fn bench(c: &mut Criterion) {
    let packet = udp4([100, 64, 0, 1], [100, 64, 0, 2]);
    let mut group = c.benchmark_group("encrypt+decrypt 1400 B");
    group.throughput(Throughput::Bytes((PACKET * BATCH) as u64));

    let mut pair = EnginePair::new();
    assert_eq!(
        {
            pair.a.handle_outbound(&packet, pair.now);
            pair.pump()
        },
        1,
        "the engine pair delivers"
    );
    group.bench_function("PeerEngine pair", |bench| {
        bench.iter(|| {
            for _ in 0..BATCH {
                pair.a.handle_outbound(black_box(&packet), pair.now);
            }
            let delivered = pair.pump();
            debug_assert_eq!(delivered, BATCH);
            delivered
        });
    });

    let (mut a, mut b) = tunn_pair();
    let mut wire = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    group.bench_function("raw boringtun Tunn pair", |bench| {
        bench.iter(|| {
            for _ in 0..BATCH {
                let TunnResult::WriteToNetwork(sealed) =
                    a.encapsulate(black_box(&packet), &mut wire)
                else {
                    panic!("encapsulate failed")
                };
                let TunnResult::WriteToTunnelV4(opened, _) = b.decapsulate(None, sealed, &mut out)
                else {
                    panic!("decapsulate failed")
                };
                black_box(opened);
            }
        });
    });
    group.finish();
}

// criterion's macro makes a public function it gives no doc comment.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}

criterion_main!(group::benches);

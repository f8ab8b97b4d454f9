#![no_main]

//! Feeds each input, split into packets, to one long-lived stack that has a listener, an
//! any-port listener, a UDP socket and an open connection, and waits until the stack has
//! looked at every packet. Nothing may panic.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use postern_netstack::{
    Impairment, MemoryWire, Netstack, NetstackConfig, PacketSeam, TcpListener, TcpStream, UdpSocket,
};
use tokio::sync::mpsc;

struct Harness {
    runtime: tokio::runtime::Runtime,
    stack: Netstack,
    to_stack: mpsc::Sender<Vec<Bytes>>,
    _keep: (
        Netstack,
        MemoryWire,
        TcpListener,
        TcpListener,
        UdpSocket,
        TcpStream,
        TcpStream,
    ),
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (stack, to_stack, keep) = runtime.block_on(async {
            let addrs: [IpAddr; 2] = ["100.64.0.1".parse().unwrap(), "fd7a::1".parse().unwrap()];
            let (stack, seam) = Netstack::new(NetstackConfig::new(addrs)).unwrap();
            // The peer stack talks to ours through a wire; the fuzzer injects extra packets
            // into our inbound channel beside the wire.
            let peer_addrs: [IpAddr; 2] =
                ["100.64.0.2".parse().unwrap(), "fd7a::2".parse().unwrap()];
            let (peer, peer_seam) = Netstack::new(NetstackConfig::new(peer_addrs)).unwrap();
            let to_stack = seam.to_stack.clone();
            let wire = MemoryWire::connect(
                PacketSeam {
                    to_stack: seam.to_stack,
                    from_stack: seam.from_stack,
                },
                peer_seam,
                Impairment::none(),
            );
            let listener = stack.listen_tcp(80).unwrap();
            let any = stack.listen_tcp_any_port().unwrap();
            let udp = stack.bind_udp(53).unwrap();
            let client = peer
                .connect_tcp("100.64.0.1:80".parse().unwrap())
                .await
                .unwrap();
            let server = listener.accept().await.unwrap();
            (
                stack,
                to_stack,
                (peer, wire, listener, any, udp, client, server),
            )
        });
        Harness {
            runtime,
            stack,
            to_stack,
            _keep: keep,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    // Split the input into packets at 0xa5 bytes, so one input can be a sequence.
    let packets: Vec<Bytes> = data
        .split(|b| *b == 0xa5)
        .map(Bytes::copy_from_slice)
        .collect();
    let count = packets.len() as u64;
    h.runtime.block_on(async {
        let before = h.stack.stats();
        let seen = |s: &postern_netstack::NetstackStats| {
            s.packets_in + s.malformed_dropped + s.not_local_dropped
        };
        h.to_stack.send(packets).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen(&h.stack.stats()) < seen(&before) + count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stack stopped processing"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
});

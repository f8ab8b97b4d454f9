//! A userspace TCP/IP stack for Postern nodes.
//!
//! This crate wraps [smoltcp](https://docs.rs/smoltcp/0.14) behind an IP-packet seam: IP
//! packets go in and come out, and applications get an async [`TcpListener`], [`TcpStream`]
//! (tokio's `AsyncRead`/`AsyncWrite`) and [`UdpSocket`], over IPv4 and IPv6. It is what lets
//! a node accept and open connections on its tailnet addresses without root and without a
//! TUN device.
//!
//! # What it owns, and what it never does
//!
//! It owns the node's userspace TCP/IP: its addresses, its sockets, their buffers and timers.
//! It never knows about WireGuard, peers or policy: it sees only IP packets, and packets
//! reach it already decrypted and filtered. It never busy-polls: the stack sleeps until a
//! packet, a socket call or its own timer needs it. It never panics on a packet from the
//! network: malformed packets are dropped and counted ([`NetstackStats`]).
//!
//! # The seam
//!
//! [`Netstack::new`] returns the stack and a [`PacketSeam`]: two bounded channels of packet
//! batches (`Vec<Bytes>`). The engine pushes decrypted inbound packets into
//! `PacketSeam::to_stack` and takes outbound packets from `PacketSeam::from_stack`. Channels,
//! rather than a trait the engine implements, let the engine and the stack run as two tasks
//! on two cores, hand packets over in batches, and push back on each other without calling
//! into each other (see the `seam` module source for the full reasoning).
//! [`MemoryWire`] joins two seams back to back for tests and benchmarks.
//!
//! # Design: one owner task, state behind a mutex
//!
//! One tokio task owns the smoltcp `Interface`: only it processes packets and timers. The
//! interface, the socket set and the bookkeeping sit behind one `std::sync::Mutex`, and
//! socket handles lock it briefly to copy bytes straight into or out of the smoltcp socket
//! buffers, register their waker with smoltcp, and nudge the owner (a `tokio::sync::Notify`)
//! when they queued something to send. A read nudges it only when it opened the receive
//! window enough for smoltcp to send a window update (smoltcp patch 10): a reader draining
//! a bulk transfer otherwise cost the owner a turn per read.
//!
//! This was chosen over message passing (socket handles sending requests to the owner over
//! channels) for throughput: a read or write costs one short lock and one copy into the
//! socket buffer, with no per-call message, no extra buffer and no round trip through
//! another task. The owner holds the lock only for short stretches (a few dozen packets),
//! so handles wait at most microseconds.
//!
//! # Performance choices
//!
//! - TCP buffers default to 2 MiB each way ([`NetstackConfig::tcp_rx_buffer`]), enough for
//!   the bandwidth-delay product of a fast tunnel; smoltcp scales the window to match.
//! - Receivers acknowledge every segment at once by default. [`NetstackConfig::ack_delay`]
//!   makes them acknowledge every second full-sized segment instead (half the ACK packets,
//!   each one a packet to encrypt and decrypt; the patched congestion controllers count
//!   acknowledged bytes, so the sender's window grows as fast); it is off until the
//!   latency tail it showed in the funnel benchmark is understood (see its docs).
//! - Nagle's algorithm is on by default, as in kernel sockets: smoltcp without it sends a
//!   tiny segment each time the congestion window grows by a few bytes (measured: 8x less
//!   throughput). [`TcpStream::set_nodelay`] turns it off for request/response traffic.
//! - TCP senders can pace their segments ([`NetstackConfig::tcp_pacing`], off by default;
//!   `POSTERN_TCP_PACING=on|off` through [`NetstackConfig::apply_env`]): data leaves spread
//!   over the round trip at about the congestion window per round trip times a gain,
//!   about a millisecond's worth per turn of the stack (tokio's timer granularity), instead
//!   of everything the windows allow the moment an ACK opens them.
//! - Ingress is processed per segment: each inbound segment is handed to smoltcp and the
//!   resulting ACK is sent before the next is looked at. Runs of in-order data segments of
//!   one connection that arrive in the same batch are first joined into one segment of up
//!   to 64 KiB ([`NetstackConfig::receive_coalescing`], on by default; software GRO, as
//!   Linux and gVisor do), so smoltcp copies the run into the socket once and sends one
//!   ACK for it instead of one per 1,380-byte segment (issue #8: a TCP funnel over the
//!   mesh went from 1.56 to 1.96 Gbit/s; `tests/coalescing.rs` counts about 30 times fewer
//!   ACKs). Joining only segments whose headers agree in everything but the sequence
//!   number keeps every signal the receiver acts on (SACK, FIN, PSH, window changes, holes).
//!   (Handing smoltcp a whole batch before sending any ACK would save ACKs too, but still
//!   cost smoltcp a pass and a copy per segment.) smoltcp is pointed at the
//!   segment's own connection (found by its 4-tuple) to process it (smoltcp patch 7,
//!   `poll_ingress_single_hinted`) and polls only that connection for egress (patch 6,
//!   `poll_egress_socket`), so the cost of a packet does not grow with idle connections
//!   (issue #8: a flow beside 32 idle ones moved 3 to 4 times less before). Packets of
//!   no known connection (a SYN nobody listens for, UDP, ICMP), or that their connection
//!   did not take, still get a full pass. [`NetstackStats::inbound_egress_visits`] counts
//!   the sockets it looks at.
//! - Each turn of the owner's loop then lets send only the sockets that need it: those a
//!   call changed (a write, a read that opened the window, a close) and those whose
//!   deadline came (retransmission, delayed ACK, keep-alive, pacing). Each socket's
//!   deadline is recorded whenever it changes (smoltcp patch 11, `poll_at_socket`), so
//!   the owner knows the earliest without asking every socket
//!   (`schedule::EgressSchedule`). Idle connections cost a turn nothing (issue #8:
//!   `tests/idle_connections.rs`); [`NetstackStats::turn_egress_visits`] counts the
//!   sockets turns look at. Debug builds check at the end of every turn that no
//!   socket wants egress earlier than its recorded deadline.
//! - [`TcpStream::set_keepalive`] turns TCP keep-alive on, so a peer that vanished
//!   without a RST (a node gone from the mesh) resets the connection after
//!   [`KEEPALIVE_PROBES`] silent intervals instead of leaving it open forever.
//! - The owner arms one timer at the earliest socket deadline and otherwise sleeps; a test counts
//!   its loop turns over an idle second.
//! - smoltcp computes checksums on transmit only; inbound checksums are verified once, in
//!   [`inspect_inbound`], which also counts the failures (or not at all, when the engine
//!   already authenticated the packets and [`NetstackConfig::verify_checksums`] is off).
//!
//! # Loss recovery: a patched smoltcp
//!
//! The workspace builds smoltcp from `third_party/smoltcp` (0.14.0 with a few patches;
//! `third_party/smoltcp/PATCHES.md` lists them and why). Upstream recovered from loss
//! poorly: a 1 s floor on the retransmission timeout, and a sender that ignored SACK, so a
//! second loss in a window waited for the timer and then resent everything after the hole.
//! Over a home link losing 5 % of packets with a 55 ms round trip that meant 30 to 62 KB/s.
//! The patched TCP retransmits only the holes the peer's SACK blocks show, handles partial
//! ACKs at once (NewReno), cuts the congestion window once per loss episode, floors the
//! timeout at 200 ms like Linux, and sends three SACK blocks instead of one. Over the same
//! link it reaches about 110 to 135 KB/s, close to what any loss-based congestion control
//! can do at 5 % random loss (Mathis: about 1.22 MSS / (RTT * sqrt(p))); see
//! [`CongestionControl`] for why the controller still backs off on loss.
//! `tests/loss_recovery.rs` checks the recovery by counting what is sent again.
//!
//! # Accepting on any port
//!
//! smoltcp has no listen backlog: a listening socket becomes the connection. So the stack
//! looks at each inbound SYN before smoltcp does, and if a listener covers its port (one
//! port, or [`Netstack::listen_tcp_any_port`]) it creates a listening socket for exactly that
//! SYN. Ports nobody listens on are answered with RST.
//!
//! # Limits
//!
//! At most one IPv4 and one IPv6 address. No IP fragmentation (fragments are dropped and
//! counted; UDP datagrams must fit the MTU). No ICMP echo replies.

mod coalesce;
mod config;
mod error;
mod packet;
mod schedule;
mod seam;
mod seq_repair;
mod stack;
mod tcp;
mod udp;
mod wire;

pub use config::{
    CongestionControl, NetstackConfig, OWNER_THREAD_ENV, OwnerThread, RECEIVE_COALESCING_ENV,
    TCP_PACING_ENV, TcpPacing,
};
pub use error::NetstackError;
pub use packet::{InboundPacket, MalformedPacket, Transport, inspect_inbound};
pub use seam::{PacketBatch, PacketSeam};
pub use stack::{Netstack, NetstackStats};
pub use tcp::{KEEPALIVE_PROBES, TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use wire::{Impairment, MemoryWire, WireStats};

/// Runs a batch through the receive coalescer as the stack does (packets that fail
/// [`inspect_inbound`] without checksum verification are left out), and returns what the
/// stack would hand to smoltcp. For the fuzz target; not part of the API.
#[doc(hidden)]
pub fn coalesce_batch(packets: Vec<bytes::Bytes>, max_len: usize) -> Vec<bytes::Bytes> {
    let mut coalescer = coalesce::Coalescer::new(max_len);
    let mut out = Vec::new();
    for packet in packets {
        if let Ok(info) = inspect_inbound(&packet, false) {
            out.extend(
                coalescer
                    .push(packet, info)
                    .into_iter()
                    .flatten()
                    .map(|(packet, _)| packet),
            );
        }
    }
    out.extend(coalescer.finish().map(|(packet, _)| packet));
    out
}

//! An in-memory wire between two packet seams, like a veth pair, for tests and benchmarks.
//!
//! It lets two [`Netstack`](crate::Netstack)s (or a netstack and a test harness) talk with
//! no engine and no kernel, optionally losing, reordering and delaying packets on the way.
//! It also counts the TCP payload it carries and how much of it was sent again, so tests
//! can judge a TCP's loss recovery by counts rather than by time.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, TcpSeqNumber};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::seam::{PacketBatch, PacketSeam};

/// How long a packet held back for reordering waits for a packet to overtake it.
const HOLD_LIMIT: Duration = Duration::from_millis(2);

/// Faults a [`MemoryWire`] injects, the same in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Impairment {
    /// Packets lost, per thousand.
    pub loss_per_mille: u32,
    /// Packets held back behind the next packet, per thousand.
    pub reorder_per_mille: u32,
    /// Seed of the fault pattern, so a failing run can be replayed.
    pub seed: u64,
    /// How long every packet takes to cross, each way (zero: at once). Packets keep their
    /// order apart from the reordering above.
    pub delay: Duration,
}

impl Impairment {
    /// A perfect wire: nothing lost, nothing reordered.
    pub fn none() -> Self {
        Self::default()
    }

    /// A wire that loses `loss_per_mille` and reorders `reorder_per_mille` of the packets,
    /// in a pattern fixed by `seed`.
    pub fn lossy(loss_per_mille: u32, reorder_per_mille: u32, seed: u64) -> Self {
        Self {
            loss_per_mille,
            reorder_per_mille,
            seed,
            delay: Duration::ZERO,
        }
    }

    /// The same faults, with every packet taking `delay` to cross each way (so the round
    /// trip grows by twice that).
    pub fn with_delay(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }
}

/// Two tasks that carry packets between two seams, each way. Dropping it cuts the wire.
#[derive(Debug)]
pub struct MemoryWire {
    tasks: [JoinHandle<()>; 2],
    counters: Arc<WireCounters>,
}

/// What a [`MemoryWire`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WireStats {
    /// Packets delivered.
    pub delivered: u64,
    /// Packets dropped on purpose.
    pub lost: u64,
    /// Packets delivered after a later one.
    pub reordered: u64,
    /// TCP payload bytes the stacks handed to the wire, lost ones included.
    pub tcp_payload_bytes: u64,
    /// Of those, bytes of sequence space the same flow had handed over before: its
    /// retransmissions.
    pub tcp_resent_bytes: u64,
    /// TCP payload bytes the wire dropped.
    pub tcp_lost_bytes: u64,
    /// Resent bytes the wire had delivered the first time: retransmissions the receiver did
    /// not need (a go-back-N after a timeout makes many; recovering from SACK information,
    /// almost none).
    pub tcp_needlessly_resent_bytes: u64,
}

#[derive(Debug, Default)]
struct WireCounters {
    delivered: AtomicU64,
    lost: AtomicU64,
    reordered: AtomicU64,
    tcp_payload_bytes: AtomicU64,
    tcp_resent_bytes: AtomicU64,
    tcp_lost_bytes: AtomicU64,
    tcp_needlessly_resent_bytes: AtomicU64,
}

impl MemoryWire {
    /// Connects two seams back to back: what `a` sends reaches `b` and the other way round.
    /// Must be called inside a tokio runtime.
    pub fn connect(a: PacketSeam, b: PacketSeam, impairment: Impairment) -> Self {
        let counters = Arc::new(WireCounters::default());
        let a_to_b = tokio::spawn(carry(
            a.from_stack,
            b.to_stack,
            impairment,
            Rng::new(impairment.seed),
            counters.clone(),
        ));
        let b_to_a = tokio::spawn(carry(
            b.from_stack,
            a.to_stack,
            impairment,
            Rng::new(impairment.seed ^ 0x9e37_79b9_7f4a_7c15),
            counters.clone(),
        ));
        Self {
            tasks: [a_to_b, b_to_a],
            counters,
        }
    }

    /// Counts of delivered, lost and reordered packets, both directions together.
    pub fn stats(&self) -> WireStats {
        WireStats {
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            lost: self.counters.lost.load(Ordering::Relaxed),
            reordered: self.counters.reordered.load(Ordering::Relaxed),
            tcp_payload_bytes: self.counters.tcp_payload_bytes.load(Ordering::Relaxed),
            tcp_resent_bytes: self.counters.tcp_resent_bytes.load(Ordering::Relaxed),
            tcp_lost_bytes: self.counters.tcp_lost_bytes.load(Ordering::Relaxed),
            tcp_needlessly_resent_bytes: self
                .counters
                .tcp_needlessly_resent_bytes
                .load(Ordering::Relaxed),
        }
    }
}

impl Drop for MemoryWire {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn carry(
    mut from: mpsc::Receiver<PacketBatch>,
    to: mpsc::Sender<PacketBatch>,
    impairment: Impairment,
    mut rng: Rng,
    counters: Arc<WireCounters>,
) {
    let mut held: Option<(Bytes, Instant)> = None;
    // Batches on their way, with the time each arrives (in order: the delay is fixed).
    let mut in_flight: VecDeque<(Instant, PacketBatch)> = VecDeque::new();
    let mut tally = TcpTally::default();
    loop {
        let arrival = in_flight.front().map(|(at, _)| *at);
        let hold_until = held.as_ref().map(|(_, since)| *since + HOLD_LIMIT);
        let batch = tokio::select! {
            () = sleep_until(arrival), if arrival.is_some() => {
                if let Some((_, batch)) = in_flight.pop_front()
                    && to.send(batch).await.is_err()
                {
                    return;
                }
                continue;
            }
            () = sleep_until(hold_until), if hold_until.is_some() => {
                // Nothing came to overtake it: let it go.
                if let Some((packet, _)) = held.take() {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    in_flight.push_back((Instant::now() + impairment.delay, vec![packet]));
                }
                continue;
            }
            batch = from.recv() => batch,
        };
        let Some(batch) = batch else {
            return;
        };
        let mut out = Vec::with_capacity(batch.len() + 1);
        for packet in batch {
            let segment = tally.on_packet(&packet, &counters);
            if rng.chance(impairment.loss_per_mille) {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                if let Some(segment) = segment {
                    counters
                        .tcp_lost_bytes
                        .fetch_add((segment.end - segment.start) as u64, Ordering::Relaxed);
                    tally.on_drop(segment);
                }
                continue;
            }
            if held.is_none() && rng.chance(impairment.reorder_per_mille) {
                held = Some((packet, Instant::now()));
                continue;
            }
            out.push(packet);
            if let Some((late, _)) = held.take() {
                counters.reordered.fetch_add(1, Ordering::Relaxed);
                out.push(late);
            }
        }
        if out.is_empty() {
            continue;
        }
        counters
            .delivered
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        if impairment.delay.is_zero() && in_flight.is_empty() {
            if to.send(out).await.is_err() {
                return;
            }
        } else {
            in_flight.push_back((Instant::now() + impairment.delay, out));
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for (the `select!` guards
/// keep that branch off then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// (source address, source port, destination address, destination port) of a TCP flow.
type FlowKey = (IpAddr, u16, IpAddr, u16);

/// Dropped ranges remembered per flow; beyond this the oldest are forgotten (their
/// retransmissions then count as needless, which only makes a test stricter).
const DROPPED_RANGES_KEPT: usize = 4096;

/// The payload of one TCP segment: its flow and sequence range.
#[derive(Debug, Clone, Copy)]
struct Segment {
    flow: FlowKey,
    start: TcpSeqNumber,
    end: TcpSeqNumber,
}

/// Per TCP flow: the highest sequence number handed to the wire, to tell first
/// transmissions from retransmissions, and the ranges the wire dropped and nobody has
/// resent yet, to tell needed retransmissions from needless ones.
#[derive(Default)]
struct TcpTally {
    highest: HashMap<FlowKey, TcpSeqNumber>,
    dropped: HashMap<FlowKey, VecDeque<(TcpSeqNumber, TcpSeqNumber)>>,
}

impl TcpTally {
    /// Remembers that the wire dropped `segment`.
    fn on_drop(&mut self, segment: Segment) {
        let dropped = self.dropped.entry(segment.flow).or_default();
        if dropped.len() == DROPPED_RANGES_KEPT {
            dropped.pop_front();
        }
        dropped.push_back((segment.start, segment.end));
    }

    /// Counts one packet's TCP payload (what of it was sent before, and what of that had
    /// been delivered); returns its segment if it carries payload.
    fn on_packet(&mut self, packet: &[u8], counters: &WireCounters) -> Option<Segment> {
        let (src, dst, segment) = match packet.first().map(|b| b >> 4) {
            Some(4) => match Ipv4Packet::new_checked(packet) {
                Ok(ip) if ip.next_header() == IpProtocol::Tcp => (
                    IpAddr::V4(ip.src_addr()),
                    IpAddr::V4(ip.dst_addr()),
                    ip.payload(),
                ),
                _ => return None,
            },
            Some(6) => match Ipv6Packet::new_checked(packet) {
                Ok(ip) if ip.next_header() == IpProtocol::Tcp => (
                    IpAddr::V6(ip.src_addr()),
                    IpAddr::V6(ip.dst_addr()),
                    ip.payload(),
                ),
                _ => return None,
            },
            _ => return None,
        };
        let Ok(tcp) = TcpPacket::new_checked(segment) else {
            return None;
        };
        let payload = segment.len().saturating_sub(usize::from(tcp.header_len()));
        let key = (src, tcp.src_port(), dst, tcp.dst_port());
        let start = tcp.seq_number() + usize::from(tcp.syn());
        let end = start + payload;
        if tcp.syn() {
            // A new connection (or its SYN again): its sequence space starts here.
            self.highest.insert(key, end);
        }
        if payload == 0 {
            return None;
        }
        let highest = self.highest.entry(key).or_insert(start);
        let resent = if *highest > start {
            (*highest).min(end) - start
        } else {
            0
        };
        let resent_to = (*highest).min(end);
        if end > *highest {
            *highest = end;
        }
        counters
            .tcp_payload_bytes
            .fetch_add(payload as u64, Ordering::Relaxed);
        if resent > 0 {
            // What of the resent part was dropped before is needed now (and no longer
            // counts as dropped); the rest had been delivered.
            let mut needed = 0;
            if let Some(dropped) = self.dropped.get_mut(&key) {
                let mut remaining = VecDeque::with_capacity(dropped.len() + 1);
                for &(left, right) in dropped.iter() {
                    let (l, r) = (left.max(start), right.min(resent_to));
                    if l < r {
                        needed += r - l;
                        if left < l {
                            remaining.push_back((left, l));
                        }
                        if r < right {
                            remaining.push_back((r, right));
                        }
                    } else {
                        remaining.push_back((left, right));
                    }
                }
                *dropped = remaining;
            }
            counters
                .tcp_resent_bytes
                .fetch_add(resent as u64, Ordering::Relaxed);
            counters
                .tcp_needlessly_resent_bytes
                .fetch_add(resent.saturating_sub(needed) as u64, Ordering::Relaxed);
        }
        Some(Segment {
            flow: key,
            start,
            end,
        })
    }
}

/// xorshift64*: a small, seedable generator; fault patterns need no more.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.next() % 1000 < u64::from(per_mille)
    }
}

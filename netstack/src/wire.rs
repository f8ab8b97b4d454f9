//! An in-memory wire between two packet seams, like a veth pair, for tests and benchmarks.
//!
//! It lets two [`Netstack`](crate::Netstack)s (or a netstack and a test harness) talk with
//! no engine and no kernel, optionally losing and reordering packets on the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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
        }
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
}

#[derive(Debug, Default)]
struct WireCounters {
    delivered: AtomicU64,
    lost: AtomicU64,
    reordered: AtomicU64,
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
    let mut held: Option<Bytes> = None;
    loop {
        let batch = match held.take() {
            None => from.recv().await,
            Some(packet) => {
                tokio::select! {
                    batch = from.recv() => {
                        held = Some(packet);
                        batch
                    }
                    () = tokio::time::sleep(HOLD_LIMIT) => {
                        // Nothing came to overtake it: let it go.
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                        if to.send(vec![packet]).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let Some(batch) = batch else {
            return;
        };
        let mut out = Vec::with_capacity(batch.len() + 1);
        for packet in batch {
            if rng.chance(impairment.loss_per_mille) {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if held.is_none() && rng.chance(impairment.reorder_per_mille) {
                held = Some(packet);
                continue;
            }
            out.push(packet);
            if let Some(late) = held.take() {
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
        if to.send(out).await.is_err() {
            return;
        }
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

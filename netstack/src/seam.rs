//! The IP-packet seam between the netstack and whoever carries its packets (the WireGuard
//! engine, or an in-memory wire in tests), and the smoltcp device behind it.
//!
//! The seam is a pair of bounded `tokio::sync::mpsc` channels of packet batches
//! (`Vec<Bytes>`), not a trait the engine implements:
//!
//! - the stack and the engine run as separate tasks, so on a multi-core machine encryption
//!   and TCP processing overlap instead of taking turns inside one task;
//! - a batch per channel operation amortises the cost of waking the other side over many
//!   packets (the firezone connlib habit), while each packet is still processed one at a
//!   time inside the stack;
//! - bounded channels give backpressure in both directions without the two sides calling
//!   into each other, so neither can deadlock the other: the stack never blocks on a full
//!   outbound channel (it holds the packets and pauses TCP output), and it always drains the
//!   inbound channel.

use bytes::{Bytes, BytesMut};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use tokio::sync::mpsc;

use crate::seq_repair::AckSeqRepair;

/// A batch of whole IP packets (IPv4 or IPv6, no link-layer header), in order.
pub type PacketBatch = Vec<Bytes>;

/// The engine's end of a [`Netstack`](crate::Netstack)'s packet seam.
///
/// Push decrypted inbound IP packets into [`to_stack`](Self::to_stack), and take the IP
/// packets the stack wants sent from [`from_stack`](Self::from_stack). Both channels are
/// bounded ([`NetstackConfig::seam_capacity`](crate::NetstackConfig::seam_capacity) batches).
/// The stack always drains `to_stack`, so sending into it only waits while the stack is busy.
/// If `from_stack` is not read, the stack stops sending TCP data (nothing is lost) until it
/// is; if it is dropped, outbound packets are discarded and counted.
#[derive(Debug)]
pub struct PacketSeam {
    /// Inbound: packets from the network, for the stack to process.
    pub to_stack: mpsc::Sender<PacketBatch>,
    /// Outbound: packets the stack sends, for the engine to deliver.
    pub from_stack: mpsc::Receiver<PacketBatch>,
}

/// The smoltcp device: one inbound packet at a time, and a bounded queue of outbound ones.
pub(crate) struct SeamDevice {
    /// The inbound packet being processed, if any.
    pub(crate) rx: Option<Bytes>,
    /// Outbound packets not yet handed to the engine.
    pub(crate) tx: Vec<Bytes>,
    /// When `tx` holds this many packets, smoltcp is told the device is busy.
    tx_limit: usize,
    caps: DeviceCapabilities,
    /// Fixes the sequence numbers of rewound pure ACKs (see `seq_repair`).
    pub(crate) repair: AckSeqRepair,
}

impl SeamDevice {
    pub(crate) fn new(mtu: usize, tx_limit: usize) -> Self {
        // `packet::inspect_inbound` verifies (and counts) IPv4, TCP and UDP checksums before
        // smoltcp sees a packet, when the configuration asks for it; smoltcp itself only
        // computes them on transmit, so no payload is summed twice.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = mtu;
        caps.checksum = checksum;
        Self {
            rx: None,
            tx: Vec::new(),
            tx_limit,
            caps,
            repair: AckSeqRepair::default(),
        }
    }

    /// Takes the outbound packets queued so far.
    pub(crate) fn take_tx(&mut self) -> PacketBatch {
        std::mem::take(&mut self.tx)
    }

    /// Puts back packets that could not be handed over, ahead of newer ones.
    pub(crate) fn restore_tx(&mut self, mut batch: PacketBatch) {
        batch.append(&mut self.tx);
        self.tx = batch;
    }

    /// Whether the outbound queue is full.
    pub(crate) fn tx_full(&self) -> bool {
        self.tx.len() >= self.tx_limit
    }
}

impl phy::Device for SeamDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.take()?;
        // Replies to an inbound packet (RST, ICMP errors) may go a little past the limit:
        // ingress must never stall on a busy engine, or the two could wait on each other.
        Some((
            RxToken(packet),
            TxToken {
                tx: &mut self.tx,
                repair: &mut self.repair,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx_full() {
            return None;
        }
        Some(TxToken {
            tx: &mut self.tx,
            repair: &mut self.repair,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

pub(crate) struct RxToken(Bytes);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

pub(crate) struct TxToken<'a> {
    tx: &'a mut Vec<Bytes>,
    repair: &'a mut AckSeqRepair,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = BytesMut::zeroed(len);
        let result = f(&mut buf);
        self.repair.on_transmit(&mut buf);
        self.tx.push(buf.freeze());
        result
    }
}

//! The inbound packet filter hook and the connection tracking that lets replies through.
//!
//! The receiving node enforces the policy: every decrypted packet is described by a
//! [`PacketMeta`] and, unless it answers a flow this node opened (tracked by [`FlowTable`]),
//! handed to the [`InboundFilter`]. The compiled ACL implements [`InboundFilter`]; until then
//! [`AllowAll`] and [`DenyAll`] exist for tests and for a node with no policy yet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// IP protocol numbers the filter and flow table treat specially.
pub mod ip_proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// What the filter sees of one IP packet: addresses, protocol and, for TCP and UDP, ports.
///
/// Built by [`PacketMeta::parse`] from the packet's first bytes; a packet too short or of an
/// unknown IP version has no meta and is dropped before any filter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketMeta {
    /// Source address (the remote peer's tailnet address for inbound packets).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (IPv4 protocol, or IPv6 next header when it is not an extension).
    pub protocol: u8,
    /// Source port for TCP and UDP; for ICMP echo, the echo identifier; else 0.
    pub src_port: u16,
    /// Destination port for TCP and UDP; for ICMP echo, the echo identifier; else 0.
    pub dst_port: u16,
}

impl PacketMeta {
    /// Reads the addresses, protocol and ports of an IPv4 or IPv6 packet.
    ///
    /// Returns `None` for anything that is not a well-formed start of an IP packet. Never
    /// panics, whatever the bytes.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let version = packet.first()? >> 4;
        let (src, dst, protocol, payload) = match version {
            4 => {
                let ihl = usize::from(packet.first()? & 0x0f) * 4;
                if ihl < 20 {
                    return None;
                }
                let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
                let protocol = *packet.get(9)?;
                // Only the first fragment carries ports.
                let frag_offset = u16::from_be_bytes(packet.get(6..8)?.try_into().ok()?) & 0x1fff;
                let payload = if frag_offset == 0 {
                    packet.get(ihl..).unwrap_or(&[])
                } else {
                    &[]
                };
                (IpAddr::from(src), IpAddr::from(dst), protocol, payload)
            }
            6 => {
                let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
                let protocol = *packet.get(6)?;
                let payload = packet.get(40..).unwrap_or(&[]);
                (IpAddr::from(src), IpAddr::from(dst), protocol, payload)
            }
            _ => return None,
        };
        let (src_port, dst_port) = match protocol {
            ip_proto::TCP | ip_proto::UDP => match (be16(payload, 0), be16(payload, 2)) {
                (Some(s), Some(d)) => (s, d),
                _ => (0, 0),
            },
            ip_proto::ICMP | ip_proto::ICMPV6 => {
                // Echo request/reply carry an identifier that pairs them, like a port.
                let is_echo = matches!(payload.first(), Some(0 | 8 | 128 | 129));
                match be16(payload, 4) {
                    Some(id) if is_echo => (id, id),
                    _ => (0, 0),
                }
            }
            _ => (0, 0),
        };
        Some(Self {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        })
    }

    /// The same flow seen from the other end (source and destination swapped).
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// Decides whether an inbound, decrypted packet that is not a reply to one of this node's own
/// flows may reach the local stack.
///
/// Called once per such packet on the data path, so it must be cheap and must not block. The
/// engine has already checked that the packet's source address is one of the sending peer's
/// allowed IPs, so `meta.src` is authenticated.
pub trait InboundFilter: Send {
    /// Whether `meta` may pass. `false` drops the packet (counted, no event).
    fn allows(&self, meta: &PacketMeta) -> bool;
}

/// A filter that lets every packet through (a node with no policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl InboundFilter for AllowAll {
    fn allows(&self, _meta: &PacketMeta) -> bool {
        true
    }
}

/// A filter that lets only replies to this node's own flows through.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl InboundFilter for DenyAll {
    fn allows(&self, _meta: &PacketMeta) -> bool {
        false
    }
}

/// Connection tracking for flows this node opened, so replies pass a restrictive filter.
///
/// Outbound packets record their flow; an inbound packet whose reversed flow is recorded and
/// not expired is a reply. Entries expire after [`FlowTable::IDLE_TCP`] (TCP) or
/// [`FlowTable::IDLE_OTHER`] (UDP, ICMP, the rest) without outbound traffic; expiry is driven by
/// the `now` given to [`FlowTable::expire`]. The table holds at most `capacity` flows: when
/// full it first drops expired ones, then the one closest to expiry.
#[derive(Debug)]
pub struct FlowTable {
    flows: HashMap<PacketMeta, Instant>,
    capacity: usize,
}

impl FlowTable {
    /// How long a TCP flow is remembered after its last outbound packet.
    pub const IDLE_TCP: Duration = Duration::from_secs(300);
    /// How long any other flow is remembered after its last outbound packet.
    pub const IDLE_OTHER: Duration = Duration::from_secs(120);

    /// An empty table that remembers at most `capacity` flows.
    pub fn new(capacity: usize) -> Self {
        Self {
            flows: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records that this node sent `meta` at `now`.
    pub fn note_outbound(&mut self, meta: &PacketMeta, now: Instant) {
        let idle = if meta.protocol == ip_proto::TCP {
            Self::IDLE_TCP
        } else {
            Self::IDLE_OTHER
        };
        let expires = now + idle;
        if let Some(at) = self.flows.get_mut(meta) {
            *at = expires;
            return;
        }
        if self.flows.len() >= self.capacity {
            self.expire(now);
        }
        if self.flows.len() >= self.capacity {
            let oldest = self
                .flows
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.flows.remove(&oldest);
            }
        }
        self.flows.insert(*meta, expires);
    }

    /// Whether inbound `meta` answers a live outbound flow at `now`.
    pub fn is_reply(&self, meta: &PacketMeta, now: Instant) -> bool {
        self.flows
            .get(&meta.reversed())
            .is_some_and(|expires| *expires > now)
    }

    /// Forgets flows idle past their timeout. Call from time to time (the engine does it on
    /// its timer).
    pub fn expire(&mut self, now: Instant) {
        self.flows.retain(|_, expires| *expires > now);
    }

    /// Number of flows remembered.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is remembered.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// The big-endian `u16` at `at`, if the slice is long enough.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_be_bytes(pair))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = ip_proto::UDP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn parses_udp_ports_and_rejects_garbage() {
        let m = PacketMeta::parse(&udp4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 53)).unwrap();
        assert_eq!(m.protocol, ip_proto::UDP);
        assert_eq!((m.src_port, m.dst_port), (1000, 53));
        assert_eq!(PacketMeta::parse(&[]), None);
        assert_eq!(PacketMeta::parse(&[0x45, 0, 0]), None);
        assert_eq!(PacketMeta::parse(&[0x15; 40]), None);
        assert_eq!(
            PacketMeta::parse(&[0x41; 40]),
            None,
            "IHL below 5 is invalid"
        );
    }

    #[test]
    fn replies_are_recognised_until_expiry() {
        let t0 = Instant::now();
        let mut flows = FlowTable::new(16);
        let out = PacketMeta::parse(&udp4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 53)).unwrap();
        flows.note_outbound(&out, t0);
        let reply = out.reversed();
        assert!(flows.is_reply(&reply, t0 + Duration::from_secs(1)));
        assert!(
            !flows.is_reply(&out, t0),
            "the same direction is not a reply"
        );
        let later = t0 + FlowTable::IDLE_OTHER + Duration::from_secs(1);
        assert!(!flows.is_reply(&reply, later));
        flows.expire(later);
        assert!(flows.is_empty());
    }

    #[test]
    fn a_full_table_evicts_the_oldest_flow() {
        let t0 = Instant::now();
        let mut flows = FlowTable::new(2);
        for (i, port) in [1u16, 2, 3].into_iter().enumerate() {
            let m = PacketMeta::parse(&udp4([10, 0, 0, 1], [10, 0, 0, 2], port, 53)).unwrap();
            flows.note_outbound(&m, t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(flows.len(), 2);
        let first = PacketMeta::parse(&udp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 53)).unwrap();
        assert!(!flows.is_reply(&first.reversed(), t0));
    }
}

//! Receive coalescing: consecutive in-order TCP data segments of one connection, arriving in
//! the same inbound batch, are joined into one larger segment before smoltcp sees them.
//!
//! This is what Linux does in GRO and gVisor (Tailscale's netstack) in its receive path,
//! done here in software because the packets reach the stack from the WireGuard engine, not
//! from a NIC. smoltcp then processes one segment, copies its payload into the socket once
//! and sends one ACK for the run instead of one per 1,380-byte segment: fewer packets to
//! encrypt, send, receive and decrypt on the way back, and less per-segment work on both
//! sides. The patched congestion controllers count acknowledged bytes, so a sender's window
//! grows as fast with one ACK per run as with one per segment.
//!
//! A packet joins the run before it only when nothing is lost by joining: same addresses,
//! ports, IP header fields, TCP options, acknowledgment number and window; its sequence
//! number is exactly where the run ends; its only flags are ACK (and PSH, which ends the
//! run); it carries data. Anything else (a SYN, FIN or RST, a pure ACK, a segment out of
//! order, options that differ, such as new SACK blocks) ends the run and is passed on alone,
//! so the order of the batch is kept.
//!
//! The joined segment's TCP checksum is not recomputed: every part was verified by
//! [`inspect_inbound`](crate::inspect_inbound) before it was joined (or verification is off
//! because the engine authenticated the packets), and smoltcp does not verify inbound
//! checksums. The IPv4 header checksum is recomputed.

use bytes::{Bytes, BytesMut};

use crate::packet::InboundPacket;

/// The largest IP packet a run is joined into: the largest an IPv4 header can describe.
pub(crate) const MAX_COALESCED_LEN: usize = 65_535;

/// TCP flag bits, from the 14th byte of the TCP header.
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// Joins runs of in-order TCP data segments (see the module docs).
///
/// Feed it the inspected packets of a batch in order with [`push`](Self::push), deliver what
/// each call returns, in order, and call [`finish`](Self::finish) at the end of the batch.
#[derive(Debug)]
pub(crate) struct Coalescer {
    /// Largest joined packet, in bytes of IP packet.
    max_len: usize,
    /// The packets of the current run (all coalescible with each other), in order, with
    /// their layouts.
    run: Vec<(Bytes, Layout)>,
    /// The inspection of the run's first packet, which is also the joined packet's.
    info: Option<InboundPacket>,
    /// Sequence number the next packet of the run must start at.
    next_seq: u32,
    /// Bytes of IP packet the run would join into.
    joined_len: usize,
    /// Runs joined (two packets or more), for the stack's counters.
    pub(crate) runs_joined: u64,
    /// Packets that went into those runs.
    pub(crate) packets_joined: u64,
}

/// Where the parts of a coalescible segment are.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Length of the IP header (20 for IPv4 without options, 40 for IPv6).
    ip_header: usize,
    /// Length of the TCP header, options included.
    tcp_header: usize,
    /// Length of the IP packet (trailing bytes past it are ignored).
    total: usize,
    /// The TCP sequence number.
    seq: u32,
    /// Whether PSH is set (the run ends with this segment).
    push: bool,
}

impl Layout {
    fn headers(&self) -> usize {
        self.ip_header + self.tcp_header
    }

    fn payload_len(&self) -> usize {
        self.total - self.headers()
    }
}

/// What [`Coalescer::push`] hands back for delivery, in order: at most two packets.
pub(crate) type Ready = [Option<(Bytes, InboundPacket)>; 2];

impl Coalescer {
    /// A coalescer that joins runs into packets of at most `max_len` bytes (capped at
    /// [`MAX_COALESCED_LEN`]). A `max_len` below two segments' worth joins nothing.
    pub(crate) fn new(max_len: usize) -> Self {
        Self {
            max_len: max_len.min(MAX_COALESCED_LEN),
            run: Vec::new(),
            info: None,
            next_seq: 0,
            joined_len: 0,
            runs_joined: 0,
            packets_joined: 0,
        }
    }

    /// Offers the next packet of the batch (already inspected: `info` is its inspection).
    ///
    /// Returns the packets to deliver now, in order: the run that this packet ended, if
    /// any, and this packet itself if it cannot start a run.
    pub(crate) fn push(&mut self, packet: Bytes, info: InboundPacket) -> Ready {
        let Some(layout) = coalescible(&packet) else {
            return [self.take_run(), Some((packet, info))];
        };
        if self.extends_run(&packet, &layout) {
            self.joined_len += layout.payload_len();
            self.next_seq = layout.seq.wrapping_add(payload_u32(&layout));
            let push = layout.push;
            self.run.push((packet, layout));
            let flushed = if push { self.take_run() } else { None };
            return [flushed, None];
        }
        let flushed = self.take_run();
        if layout.push {
            // A segment that ends a run by itself has nothing to join.
            return [flushed, Some((packet, info))];
        }
        self.next_seq = layout.seq.wrapping_add(payload_u32(&layout));
        self.joined_len = layout.total;
        self.info = Some(info);
        self.run.push((packet, layout));
        [flushed, None]
    }

    /// Hands back the run still held, if any: call it at the end of each batch.
    pub(crate) fn finish(&mut self) -> Option<(Bytes, InboundPacket)> {
        self.take_run()
    }

    /// Whether `packet` continues the current run.
    fn extends_run(&self, packet: &[u8], layout: &Layout) -> bool {
        let Some((first, head)) = self.run.first() else {
            return false;
        };
        if layout.seq != self.next_seq
            || self.joined_len + layout.payload_len() > self.max_len
            || layout.ip_header != head.ip_header
            || layout.tcp_header != head.tcp_header
        {
            return false;
        }
        let ip = head.ip_header;
        let same = |range: std::ops::Range<usize>| matches!((first.get(range.clone()), packet.get(range)), (Some(a), Some(b)) if a == b);
        let ip_same = if ip == IPV4_HEADER {
            // Version, IHL and TOS; identification may differ; flags, TTL, protocol;
            // addresses.
            same(0..2) && same(6..7) && same(8..10) && same(12..20)
        } else {
            // Version, traffic class and flow label; next header and hop limit; addresses.
            same(0..4) && same(6..40)
        };
        // TCP: ports; acknowledgment number; data offset; window; options (the flags were
        // checked by `coalescible`, the checksum was verified, urgent is never set).
        ip_same
            && same(ip..ip + 4)
            && same(ip + 8..ip + 13)
            && same(ip + 14..ip + 16)
            && same(ip + 20..ip + head.tcp_header)
    }

    /// Ends the current run: the packet itself if it holds one, the joined segment if more.
    fn take_run(&mut self) -> Option<(Bytes, InboundPacket)> {
        let info = self.info.take()?;
        let mut run = std::mem::take(&mut self.run);
        if run.len() == 1 {
            return run.pop().map(|(packet, _)| (packet, info));
        }
        self.runs_joined += 1;
        self.packets_joined += run.len() as u64;
        Some((join(&run, self.joined_len), info))
    }
}

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;

/// The layout of `packet` if it could be part of a run: IPv4 without options or IPv6
/// without extension headers, carrying a TCP segment with data whose flags are ACK or
/// ACK and PSH. Every length is checked, so it never panics, whatever the bytes.
fn coalescible(packet: &[u8]) -> Option<Layout> {
    let (ip_header, total) = match *packet.first()? >> 4 {
        4 => {
            let header: &[u8; IPV4_HEADER] = packet.get(..IPV4_HEADER)?.try_into().ok()?;
            // IHL 5 (no options), TCP, not a fragment (more-fragments or an offset).
            if header[0] != 0x45
                || header[9] != 6
                || header[6] & 0x20 != 0
                || u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0
            {
                return None;
            }
            (
                IPV4_HEADER,
                usize::from(u16::from_be_bytes([header[2], header[3]])),
            )
        }
        6 => {
            let header: &[u8; IPV6_HEADER] = packet.get(..IPV6_HEADER)?.try_into().ok()?;
            // TCP right after the fixed header (no extension headers).
            if header[6] != 6 {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
            (IPV6_HEADER, IPV6_HEADER + payload)
        }
        _ => return None,
    };
    let tcp = packet.get(ip_header..total)?;
    let fixed: &[u8; 20] = tcp.get(..20)?.try_into().ok()?;
    let tcp_header = usize::from(fixed[12] >> 4) * 4;
    if tcp_header < 20 || tcp_header >= tcp.len() {
        // Malformed, or no payload (a pure ACK is never joined).
        return None;
    }
    // Only ACK, or ACK and PSH: never SYN, FIN, RST, URG, ECE or CWR.
    let flags = fixed[13];
    if flags != ACK && flags != ACK | PSH {
        return None;
    }
    Some(Layout {
        ip_header,
        tcp_header,
        total,
        seq: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        push: flags & PSH != 0,
    })
}

fn payload_u32(layout: &Layout) -> u32 {
    // At most 65,535: a u16 length field bounds it.
    u32::try_from(layout.payload_len()).unwrap_or(u32::MAX)
}

/// Joins a run: the first packet's headers, then every payload in order; lengths, PSH and
/// the IPv4 header checksum updated.
fn join(run: &[(Bytes, Layout)], joined_len: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(joined_len);
    let ip = run.first().map_or(IPV4_HEADER, |(_, head)| head.ip_header);
    let mut push = false;
    for (packet, layout) in run {
        let from = if out.is_empty() { 0 } else { layout.headers() };
        out.extend_from_slice(packet.get(from..layout.total).unwrap_or_default());
        push |= layout.push;
    }
    let len = out.len();
    if push && let Some(flags) = out.get_mut(ip + 13) {
        *flags |= PSH;
    }
    let header_len = out.len().min(ip);
    let Some(header) = out.get_mut(..header_len) else {
        return out.freeze();
    };
    if let Ok(header) = <&mut [u8; IPV4_HEADER]>::try_from(&mut *header) {
        let total = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
        [header[2], header[3]] = total;
        [header[10], header[11]] = [0, 0];
        [header[10], header[11]] = (!internet_checksum(header)).to_be_bytes();
    } else if let Ok(header) = <&mut [u8; IPV6_HEADER]>::try_from(header) {
        let payload = u16::try_from(len - IPV6_HEADER).unwrap_or(u16::MAX);
        [header[4], header[5]] = payload.to_be_bytes();
    }
    out.freeze()
}

/// The ones' complement sum of `bytes` (RFC 1071), folded to 16 bits.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        if let [high, low] = *pair {
            sum += u32::from(u16::from_be_bytes([high, low]));
        }
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(0xffff)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr,
        TcpSeqNumber,
    };

    use super::*;
    use crate::packet::inspect_inbound;

    const SRC4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const DST4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

    /// What a test segment looks like; `Default` is a data segment of flow A.
    #[derive(Clone, Copy)]
    struct Seg {
        v6: bool,
        src_port: u16,
        seq: u32,
        ack: u32,
        window: u16,
        control: TcpControl,
        sack: Option<(u32, u32)>,
        len: usize,
        fill: u8,
    }

    impl Default for Seg {
        fn default() -> Self {
            Self {
                v6: false,
                src_port: 40000,
                seq: 1000,
                ack: 77,
                window: 512,
                control: TcpControl::None,
                sack: None,
                len: 1380,
                fill: 1,
            }
        }
    }

    impl Seg {
        fn at(seq: u32, fill: u8) -> Self {
            Self {
                seq,
                fill,
                ..Self::default()
            }
        }

        fn bytes(self) -> Bytes {
            let payload = vec![self.fill; self.len];
            let tcp = TcpRepr {
                src_port: self.src_port,
                dst_port: 80,
                control: self.control,
                seq_number: TcpSeqNumber(self.seq as i32),
                ack_number: Some(TcpSeqNumber(self.ack as i32)),
                window_len: self.window,
                window_scale: None,
                max_seg_size: None,
                sack_permitted: false,
                sack_ranges: [self.sack, None, None],
                timestamp: None,
                payload: &payload,
            };
            let caps = ChecksumCapabilities::default();
            let (src, dst) = if self.v6 {
                (
                    IpAddress::Ipv6(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 2)),
                    IpAddress::Ipv6(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 1)),
                )
            } else {
                (IpAddress::Ipv4(SRC4), IpAddress::Ipv4(DST4))
            };
            let ip = IpRepr::new(src, dst, IpProtocol::Tcp, tcp.buffer_len(), 64);
            let mut bytes = vec![0u8; ip.buffer_len()];
            ip.emit(&mut bytes[..], &caps);
            let tcp_at = ip.header_len();
            tcp.emit(
                &mut TcpPacket::new_unchecked(&mut bytes[tcp_at..]),
                &src,
                &dst,
                &caps,
            );
            Bytes::from(bytes)
        }
    }

    /// Runs `packets` through a coalescer as the stack does, and returns what it delivers.
    fn run(coalescer: &mut Coalescer, packets: &[Bytes]) -> Vec<Bytes> {
        let mut out = Vec::new();
        for packet in packets {
            let info = inspect_inbound(packet, true).expect("test packets are valid");
            out.extend(
                coalescer
                    .push(packet.clone(), info)
                    .into_iter()
                    .flatten()
                    .map(|(p, _)| p),
            );
        }
        out.extend(coalescer.finish().map(|(p, _)| p));
        out
    }

    fn joined(packets: &[Bytes]) -> Vec<Bytes> {
        run(&mut Coalescer::new(MAX_COALESCED_LEN), packets)
    }

    /// The sequence number, flags and payload of a delivered IPv4 or IPv6 segment.
    fn segment(packet: &[u8]) -> (u32, u8, Vec<u8>) {
        let tcp = if packet[0] >> 4 == 4 {
            let ip = Ipv4Packet::new_checked(packet).expect("valid IPv4");
            assert!(ip.verify_checksum(), "IPv4 header checksum");
            ip.payload().to_vec()
        } else {
            Ipv6Packet::new_checked(packet)
                .expect("valid IPv6")
                .payload()
                .to_vec()
        };
        let tcp = TcpPacket::new_checked(&tcp[..]).expect("valid TCP");
        (
            tcp.seq_number().0 as u32,
            tcp.as_ref()[13],
            tcp.payload().to_vec(),
        )
    }

    #[test]
    fn joins_a_run_of_in_order_segments_into_one() {
        let parts = [Seg::at(1000, 1), Seg::at(2380, 2), Seg::at(3760, 3)];
        let packets: Vec<Bytes> = parts.iter().map(|s| s.bytes()).collect();
        let mut coalescer = Coalescer::new(MAX_COALESCED_LEN);
        let out = run(&mut coalescer, &packets);
        assert_eq!(out.len(), 1);
        let (seq, flags, payload) = segment(&out[0]);
        assert_eq!(seq, 1000);
        assert_eq!(flags, ACK);
        let mut expected = vec![1u8; 1380];
        expected.extend(vec![2u8; 1380]);
        expected.extend(vec![3u8; 1380]);
        assert_eq!(payload, expected);
        assert_eq!((coalescer.runs_joined, coalescer.packets_joined), (1, 3));
        // It still reads as the same connection's segment.
        let info = inspect_inbound(&out[0], false).unwrap();
        assert_eq!(
            info.transport,
            crate::Transport::Tcp {
                from: SocketAddr::new(IpAddr::V4(SRC4), 40000),
                to: SocketAddr::new(IpAddr::V4(DST4), 80),
            }
        );
    }

    #[test]
    fn joins_ipv6_segments() {
        let parts = [
            Seg {
                v6: true,
                ..Seg::at(1, 1)
            },
            Seg {
                v6: true,
                ..Seg::at(1381, 2)
            },
        ];
        let packets: Vec<Bytes> = parts.iter().map(|s| s.bytes()).collect();
        let out = joined(&packets);
        assert_eq!(out.len(), 1);
        let (seq, _, payload) = segment(&out[0]);
        assert_eq!((seq, payload.len()), (1, 2760));
        assert_eq!(
            usize::from(u16::from_be_bytes([out[0][4], out[0][5]])),
            out[0].len() - 40
        );
    }

    #[test]
    fn keeps_order_and_joins_nothing_out_of_order() {
        let packets: Vec<Bytes> = [Seg::at(1000, 1), Seg::at(3760, 3), Seg::at(2380, 2)]
            .iter()
            .map(|s| s.bytes())
            .collect();
        assert_eq!(joined(&packets), packets);
    }

    #[test]
    fn a_segment_that_differs_in_any_header_field_ends_the_run() {
        let base = Seg::at(1000, 1);
        let next = Seg::at(2380, 2);
        let variants = [
            (
                "another connection",
                Seg {
                    src_port: 40001,
                    ..next
                },
            ),
            ("another acknowledgment", Seg { ack: 78, ..next }),
            (
                "another window",
                Seg {
                    window: 513,
                    ..next
                },
            ),
            (
                "SACK blocks",
                Seg {
                    sack: Some((9000, 9500)),
                    ..next
                },
            ),
            ("no data", Seg { len: 0, ..next }),
            (
                "FIN",
                Seg {
                    control: TcpControl::Fin,
                    ..next
                },
            ),
            (
                "RST",
                Seg {
                    control: TcpControl::Rst,
                    ..next
                },
            ),
            ("IPv6", Seg { v6: true, ..next }),
        ];
        for (what, variant) in variants {
            let packets = [base.bytes(), variant.bytes()];
            assert_eq!(joined(&packets), packets, "{what} was joined");
        }
        // The same in the first packet's place: nothing joins after a FIN either.
        let packets = [
            Seg {
                control: TcpControl::Fin,
                ..base
            }
            .bytes(),
            next.bytes(),
        ];
        assert_eq!(joined(&packets), packets);
    }

    #[test]
    fn a_run_joins_again_after_what_ended_it() {
        let ack_only = Seg {
            len: 0,
            ..Seg::at(5000, 0)
        }
        .bytes();
        let packets = [
            Seg::at(1000, 1).bytes(),
            Seg::at(2380, 2).bytes(),
            ack_only.clone(),
            Seg::at(3760, 3).bytes(),
            Seg::at(5140, 4).bytes(),
        ];
        let out = joined(&packets);
        assert_eq!(out.len(), 3);
        assert_eq!(segment(&out[0]).0, 1000);
        assert_eq!(segment(&out[0]).2.len(), 2760);
        assert_eq!(out[1], ack_only);
        assert_eq!(segment(&out[2]).0, 3760);
        assert_eq!(segment(&out[2]).2.len(), 2760);
    }

    #[test]
    fn push_ends_the_run_and_is_kept() {
        let packets = [
            Seg::at(1000, 1).bytes(),
            Seg {
                control: TcpControl::Psh,
                ..Seg::at(2380, 2)
            }
            .bytes(),
            Seg::at(3760, 3).bytes(),
        ];
        let out = joined(&packets);
        assert_eq!(out.len(), 2);
        let (seq, flags, payload) = segment(&out[0]);
        assert_eq!((seq, flags, payload.len()), (1000, ACK | PSH, 2760));
        assert_eq!(out[1], packets[2]);
    }

    #[test]
    fn runs_stop_at_the_size_limit() {
        // 48 segments of 1,380 bytes: 48 * 1380 + 40 > 65,535, so two runs.
        let packets: Vec<Bytes> = (0..48u32)
            .map(|i| Seg::at(1000 + i * 1380, i as u8).bytes())
            .collect();
        let out = joined(&packets);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|p| p.len() <= MAX_COALESCED_LEN));
        let total: usize = out.iter().map(|p| segment(p).2.len()).sum();
        assert_eq!(total, 48 * 1380);
        // A smaller limit makes smaller runs.
        let out = run(&mut Coalescer::new(3 * 1420), &packets[..6]);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let start = u32::MAX - 500;
        let packets = [
            Seg::at(start, 1).bytes(),
            Seg::at(start.wrapping_add(1380), 2).bytes(),
        ];
        let out = joined(&packets);
        assert_eq!(out.len(), 1);
        assert_eq!(segment(&out[0]).0, start);
    }

    #[test]
    fn never_panics_on_truncated_or_garbled_packets() {
        let good = Seg::at(1000, 1).bytes();
        let mut coalescer = Coalescer::new(MAX_COALESCED_LEN);
        let info = inspect_inbound(&good, true).unwrap();
        for cut in 0..good.len() {
            let _ = coalescer.push(good.slice(..cut), info);
            let mut garbled = good.to_vec();
            garbled[cut] ^= 0xff;
            let _ = coalescer.push(Bytes::from(garbled), info);
            // A header length that points past the packet.
            let mut long = good.to_vec();
            long[(cut % 60).max(2)] = 0xff;
            let _ = coalescer.push(Bytes::from(long), info);
        }
        let _ = coalescer.finish();
    }
}

//! A repair of outbound pure ACKs that keeps bidirectional TCP alive through retransmissions.
//!
//! smoltcp 0.14 rewinds its "next sequence number to send" to the oldest unacknowledged byte
//! when a retransmission timer fires, and stamps that rewound number on the pure ACKs it
//! sends afterwards. Its receiver, following RFC 9293, drops any segment whose sequence
//! number lies before its receive window *without reading the segment's ACK field*. When
//! both ends of a connection have data in flight and both time out (a loss burst, or a
//! stalled scheduler), each end's ACKs carry sequence numbers the other has already passed:
//! every ACK is dropped, neither send queue drains, and the connection hangs for good. It was
//! first seen in the 100 MB each-way test on a loaded machine (both ends: full send queue,
//! empty receive queue, only "segment not in receive window" and "zero-length segment not
//! inside window" in smoltcp's log). The `tcp_survives_simultaneous_retransmissions` test
//! provokes it by blocking the runtime's only thread; without this repair it hung in some of
//! its runs (the timer and the inbound packets race after the stall), with it in none.
//!
//! The repair: remember, per flow, the highest sequence number ever sent, and stamp it on
//! outgoing zero-length ACK segments whose number is older. That is the number RFC 9293 has
//! a pure ACK carry (SND.NXT as it was before the rewind); it is always inside the peer's
//! window, so the peer reads the ACK. Segments carrying data, SYN, FIN or RST, and
//! keep-alives (which carry one byte), are left alone.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, TcpSeqNumber};

/// (local address, local port, remote address, remote port) of a TCP flow.
type FlowKey = (IpAddr, u16, IpAddr, u16);

/// The highest sequence number sent on each flow; see the module docs.
#[derive(Default)]
pub(crate) struct AckSeqRepair {
    highest: HashMap<FlowKey, u32, BuildHasherDefault<FlowHasher>>,
}

/// A multiply-rotate hash (the FxHash recipe) for flow keys: this map is read for every
/// outbound segment, and SipHash showed up in profiles. Its keys are the stack's own open
/// connections, whose number the listeners' backlogs bound, so flooding it is not a concern.
#[derive(Default)]
pub(crate) struct FlowHasher(u64);

impl Hasher for FlowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.add(u64::from(*byte));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FlowHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl AckSeqRepair {
    /// Looks at one outbound packet (a whole IP packet built by smoltcp) and repairs it in
    /// place if it is a pure ACK with a rewound sequence number.
    pub(crate) fn on_transmit(&mut self, packet: &mut [u8]) {
        match packet.first().map(|b| b >> 4) {
            Some(4) => {
                let Ok(mut ip) = Ipv4Packet::new_checked(&mut *packet) else {
                    return;
                };
                if ip.next_header() != IpProtocol::Tcp {
                    return;
                }
                let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
                self.on_segment(src, dst, ip.payload_mut());
            }
            Some(6) => {
                let Ok(mut ip) = Ipv6Packet::new_checked(&mut *packet) else {
                    return;
                };
                if ip.next_header() != IpProtocol::Tcp {
                    return;
                }
                let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
                self.on_segment(src, dst, ip.payload_mut());
            }
            _ => {}
        }
    }

    /// Forgets a flow whose socket is gone.
    pub(crate) fn forget(&mut self, local: SocketAddr, remote: SocketAddr) {
        self.highest
            .remove(&(local.ip(), local.port(), remote.ip(), remote.port()));
    }

    fn on_segment(&mut self, src: IpAddr, dst: IpAddr, segment: &mut [u8]) {
        let (key, seq, end, pure_ack) = {
            let Ok(tcp) = TcpPacket::new_checked(&*segment) else {
                return;
            };
            if tcp.rst() {
                return;
            }
            let payload_len = segment.len().saturating_sub(usize::from(tcp.header_len()));
            let seq = tcp.seq_number();
            let end = seq + payload_len + usize::from(tcp.syn()) + usize::from(tcp.fin());
            let pure_ack = payload_len == 0 && tcp.ack() && !tcp.syn() && !tcp.fin();
            (
                (src, tcp.src_port(), dst, tcp.dst_port()),
                seq,
                end,
                pure_ack,
            )
        };
        let Some(highest) = self.highest.get_mut(&key) else {
            self.highest.insert(key, end.0 as u32);
            return;
        };
        let highest_seq = TcpSeqNumber(*highest as i32);
        if pure_ack && seq < highest_seq {
            let mut tcp = TcpPacket::new_unchecked(segment);
            tcp.set_seq_number(highest_seq);
            tcp.fill_checksum(&IpAddress::from(src), &IpAddress::from(dst));
        } else if end > highest_seq {
            *highest = end.0 as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Repr, TcpControl, TcpRepr};

    fn segment(seq: i32, payload: &[u8]) -> Vec<u8> {
        let src = std::net::Ipv4Addr::new(100, 64, 0, 1);
        let dst = std::net::Ipv4Addr::new(100, 64, 0, 2);
        let tcp = TcpRepr {
            src_port: 50000,
            dst_port: 80,
            control: TcpControl::None,
            seq_number: TcpSeqNumber(seq),
            ack_number: Some(TcpSeqNumber(7)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut bytes = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.emit(&mut packet, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &IpAddress::from(src),
            &IpAddress::from(dst),
            &caps,
        );
        bytes
    }

    fn seq_of(bytes: &[u8]) -> (i32, bool) {
        let ip = Ipv4Packet::new_checked(bytes).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let ok = tcp.verify_checksum(
            &IpAddress::from(ip.src_addr()),
            &IpAddress::from(ip.dst_addr()),
        );
        (tcp.seq_number().0, ok)
    }

    #[test]
    fn a_rewound_pure_ack_gets_the_highest_sequence_number() {
        let mut repair = AckSeqRepair::default();
        let mut data = segment(1000, &[1; 500]);
        repair.on_transmit(&mut data);
        // A retransmission from the rewound point is left as it is ...
        let mut retransmit = segment(1000, &[1; 100]);
        repair.on_transmit(&mut retransmit);
        assert_eq!(seq_of(&retransmit), (1000, true));
        // ... but a pure ACK sent after the rewind carries the highest number sent.
        let mut ack = segment(1100, &[]);
        repair.on_transmit(&mut ack);
        assert_eq!(seq_of(&ack), (1500, true));
        // A keep-alive (one byte, one below) is not touched.
        let mut keep_alive = segment(1499, &[0]);
        repair.on_transmit(&mut keep_alive);
        assert_eq!(seq_of(&keep_alive), (1499, true));
        // A forgotten flow starts afresh.
        repair.forget(
            "100.64.0.1:50000".parse().unwrap(),
            "100.64.0.2:80".parse().unwrap(),
        );
        let mut ack = segment(1100, &[]);
        repair.on_transmit(&mut ack);
        assert_eq!(seq_of(&ack), (1100, true));
    }

    #[test]
    fn garbage_is_left_alone() {
        let mut repair = AckSeqRepair::default();
        for junk in [&[][..], &[0x45, 0, 0][..], &[0x60; 50][..], &[0xff; 10][..]] {
            let mut copy = junk.to_vec();
            repair.on_transmit(&mut copy);
            assert_eq!(copy, junk);
        }
    }
}

//! A first look at each inbound IP packet, before smoltcp sees it.
//!
//! The stack reads every inbound packet once here: to drop (and count) malformed ones, and to
//! spot TCP SYNs so that a listening socket exists before smoltcp processes the SYN. This is
//! the only parser of network input in the crate; it has a fuzz target in `fuzz/`.

use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

/// What the stack needs to know about an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundPacket {
    /// Source address of the IP header.
    pub src: IpAddr,
    /// Destination address of the IP header.
    pub dst: IpAddr,
    /// The transport-layer content, as far as the stack cares.
    pub transport: Transport,
}

/// The transport-layer content of an [`InboundPacket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// A TCP segment that opens a connection (SYN set, ACK clear).
    TcpSyn {
        /// The connecting peer's address and port.
        from: SocketAddr,
        /// The address and port it connects to.
        to: SocketAddr,
    },
    /// Any other TCP segment.
    Tcp {
        /// The sending peer's address and port.
        from: SocketAddr,
        /// The address and port it is sent to.
        to: SocketAddr,
    },
    /// A UDP datagram.
    Udp,
    /// Another protocol (ICMP, or an IPv6 extension header first), by its number.
    Other(u8),
}

/// Why an inbound packet was dropped as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedPacket {
    /// The packet had no bytes.
    #[error("empty packet")]
    Empty,
    /// The first nibble was neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    UnknownVersion(u8),
    /// The IPv4 header was truncated or its lengths were inconsistent.
    #[error("truncated or inconsistent IPv4 header")]
    BadIpv4Header,
    /// The IPv4 header checksum did not match.
    #[error("IPv4 header checksum mismatch")]
    BadIpv4Checksum,
    /// The packet was an IPv4 fragment, which the stack does not reassemble.
    #[error("IPv4 fragment (fragments are not reassembled)")]
    Ipv4Fragment,
    /// The IPv6 header was truncated or its payload length was inconsistent.
    #[error("truncated or inconsistent IPv6 header")]
    BadIpv6Header,
    /// The TCP header was truncated or its data offset was wrong.
    #[error("truncated or inconsistent TCP header")]
    BadTcpHeader,
    /// The TCP checksum did not match.
    #[error("TCP checksum mismatch")]
    BadTcpChecksum,
    /// The UDP header was truncated or its length was wrong.
    #[error("truncated or inconsistent UDP header")]
    BadUdpHeader,
    /// The UDP checksum did not match.
    #[error("UDP checksum mismatch")]
    BadUdpChecksum,
}

/// Parses the IP and transport headers of one inbound packet.
///
/// Call it on each packet before handing it to smoltcp. With `verify_checksums`, IPv4 header,
/// TCP and UDP checksums are checked too. Never panics, whatever the bytes.
pub fn inspect_inbound(
    bytes: &[u8],
    verify_checksums: bool,
) -> Result<InboundPacket, MalformedPacket> {
    let first = *bytes.first().ok_or(MalformedPacket::Empty)?;
    match first >> 4 {
        4 => inspect_ipv4(bytes, verify_checksums),
        6 => inspect_ipv6(bytes, verify_checksums),
        version => Err(MalformedPacket::UnknownVersion(version)),
    }
}

fn inspect_ipv4(bytes: &[u8], verify: bool) -> Result<InboundPacket, MalformedPacket> {
    let packet = Ipv4Packet::new_checked(bytes).map_err(|_| MalformedPacket::BadIpv4Header)?;
    if verify && !packet.verify_checksum() {
        return Err(MalformedPacket::BadIpv4Checksum);
    }
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Err(MalformedPacket::Ipv4Fragment);
    }
    let src = IpAddr::V4(packet.src_addr());
    let dst = IpAddr::V4(packet.dst_addr());
    let protocol = packet.next_header();
    inspect_transport(src, dst, protocol, packet.payload(), verify)
}

fn inspect_ipv6(bytes: &[u8], verify: bool) -> Result<InboundPacket, MalformedPacket> {
    let packet = Ipv6Packet::new_checked(bytes).map_err(|_| MalformedPacket::BadIpv6Header)?;
    let src = IpAddr::V6(packet.src_addr());
    let dst = IpAddr::V6(packet.dst_addr());
    let protocol = packet.next_header();
    inspect_transport(src, dst, protocol, packet.payload(), verify)
}

fn inspect_transport(
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    payload: &[u8],
    verify: bool,
) -> Result<InboundPacket, MalformedPacket> {
    let (src_ip, dst_ip) = (IpAddress::from(src), IpAddress::from(dst));
    let transport = match protocol {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| MalformedPacket::BadTcpHeader)?;
            if verify && !tcp.verify_checksum(&src_ip, &dst_ip) {
                return Err(MalformedPacket::BadTcpChecksum);
            }
            let from = SocketAddr::new(src, tcp.src_port());
            let to = SocketAddr::new(dst, tcp.dst_port());
            if tcp.syn() && !tcp.ack() && !tcp.rst() {
                Transport::TcpSyn { from, to }
            } else {
                Transport::Tcp { from, to }
            }
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| MalformedPacket::BadUdpHeader)?;
            if verify && !udp.verify_checksum(&src_ip, &dst_ip) {
                return Err(MalformedPacket::BadUdpChecksum);
            }
            Transport::Udp
        }
        other => Transport::Other(u8::from(other)),
    };
    Ok(InboundPacket {
        src,
        dst,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber};

    fn syn_ipv4(verify_ok: bool) -> Vec<u8> {
        let src = std::net::Ipv4Addr::new(100, 64, 0, 2);
        let dst = std::net::Ipv4Addr::new(100, 64, 0, 1);
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1),
            ack_number: None,
            window_len: 1000,
            window_scale: None,
            max_seg_size: Some(1380),
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
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
        let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
        tcp.emit(
            &mut segment,
            &IpAddress::from(src),
            &IpAddress::from(dst),
            &caps,
        );
        if !verify_ok {
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
        }
        bytes
    }

    #[test]
    fn spots_a_syn() {
        let packet = inspect_inbound(&syn_ipv4(true), true).unwrap();
        assert_eq!(
            packet.transport,
            Transport::TcpSyn {
                from: "100.64.0.2:40000".parse().unwrap(),
                to: "100.64.0.1:80".parse().unwrap(),
            }
        );
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(inspect_inbound(&[], true), Err(MalformedPacket::Empty));
        assert_eq!(
            inspect_inbound(&[0x50], true),
            Err(MalformedPacket::UnknownVersion(5))
        );
        assert_eq!(
            inspect_inbound(&[0x45, 0, 0], true),
            Err(MalformedPacket::BadIpv4Header)
        );
        assert_eq!(
            inspect_inbound(&[0x60, 0, 0], true),
            Err(MalformedPacket::BadIpv6Header)
        );
        let mut bad = syn_ipv4(true);
        bad[10] ^= 0xff; // IPv4 header checksum
        assert_eq!(
            inspect_inbound(&bad, true),
            Err(MalformedPacket::BadIpv4Checksum)
        );
        // A corrupted TCP option byte breaks the TCP checksum only.
        let bad = syn_ipv4(false);
        assert_eq!(
            inspect_inbound(&bad, true),
            Err(MalformedPacket::BadTcpChecksum)
        );
        assert!(inspect_inbound(&bad, false).is_ok());
        let mut short = syn_ipv4(true);
        short.truncate(30);
        assert_eq!(
            inspect_inbound(&short, true),
            Err(MalformedPacket::BadIpv4Header)
        );
        assert_eq!(
            MalformedPacket::BadTcpChecksum.to_string(),
            "TCP checksum mismatch"
        );
    }
}

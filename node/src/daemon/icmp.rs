//! ICMPv4 echo (ping) packets, built and read without I/O.
//!
//! The userspace stack does not answer pings, so the runtime does it at the seam between the
//! engine and the stack: an echo request for one of this node's addresses is answered with
//! [`echo_reply_for`], and echo replies to this node's own pings ([`echo_request`]) are
//! taken out of the stream ([`parse_echo`]) and matched to the waiting `ping`.

use std::net::{IpAddr, Ipv4Addr};

/// ICMPv4 type of an echo reply.
const ECHO_REPLY: u8 = 0;
/// ICMPv4 type of an echo request.
const ECHO_REQUEST: u8 = 8;
/// IPv4 header length without options.
const IPV4_HEADER: usize = 20;
/// ICMP echo header length.
const ECHO_HEADER: usize = 8;
/// TTL of the packets built here.
const TTL: u8 = 64;

/// An ICMPv4 echo message seen in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// Request (`true`) or reply.
    pub is_request: bool,
    /// The packet's source.
    pub src: IpAddr,
    /// The packet's destination.
    pub dst: IpAddr,
    /// The echo identifier.
    pub ident: u16,
    /// The sequence number.
    pub seq: u16,
}

/// An IPv4 packet carrying an ICMP echo request from `src` to `dst`.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    build(src, dst, ECHO_REQUEST, ident, seq, payload)
}

/// Reads an unfragmented ICMPv4 echo request or reply with a valid ICMP checksum; `None`
/// for anything else. Never panics.
pub fn parse_echo(packet: &[u8]) -> Option<Echo> {
    let (header_len, src, dst, icmp) = split_ipv4_icmp(packet)?;
    let _ = header_len;
    let kind = *icmp.first()?;
    if kind != ECHO_REQUEST && kind != ECHO_REPLY {
        return None;
    }
    if *icmp.get(1)? != 0 || checksum(icmp) != 0 {
        return None;
    }
    let ident = u16::from_be_bytes(icmp.get(4..6)?.try_into().ok()?);
    let seq = u16::from_be_bytes(icmp.get(6..8)?.try_into().ok()?);
    Some(Echo {
        is_request: kind == ECHO_REQUEST,
        src: src.into(),
        dst: dst.into(),
        ident,
        seq,
    })
}

/// The echo reply answering `request` (an echo request packet), with the same identifier,
/// sequence number and payload; `None` if `request` is not a valid echo request.
pub fn echo_reply_for(request: &[u8]) -> Option<Vec<u8>> {
    let (_, src, dst, icmp) = split_ipv4_icmp(request)?;
    let echo = parse_echo(request)?;
    if !echo.is_request {
        return None;
    }
    let payload = icmp.get(ECHO_HEADER..)?;
    Some(build(dst, src, ECHO_REPLY, echo.ident, echo.seq, payload))
}

fn split_ipv4_icmp(packet: &[u8]) -> Option<(usize, Ipv4Addr, Ipv4Addr, &[u8])> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < IPV4_HEADER || *packet.get(9)? != 1 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes(packet.get(2..4)?.try_into().ok()?));
    let flags_frag = u16::from_be_bytes(packet.get(6..8)?.try_into().ok()?);
    if flags_frag & 0x3fff != 0 {
        return None; // a fragment
    }
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    let icmp = packet.get(header_len..total)?;
    if icmp.len() < ECHO_HEADER {
        return None;
    }
    Some((header_len, src.into(), dst.into(), icmp))
}

fn build(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let total = IPV4_HEADER + ECHO_HEADER + payload.len();
    let total_u16 = u16::try_from(total).unwrap_or(u16::MAX);
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total_u16.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, TTL, 1, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&packet);
    packet.splice(10..12, ip_sum.to_be_bytes());
    let icmp_start = packet.len();
    packet.extend_from_slice(&[kind, 0, 0, 0]);
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(payload);
    let icmp_sum = checksum(packet.get(icmp_start..).unwrap_or_default());
    packet.splice(icmp_start + 2..icmp_start + 4, icmp_sum.to_be_bytes());
    packet.truncate(usize::from(total_u16));
    packet
}

/// The Internet checksum (RFC 1071); 0 over data that includes a correct checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(u16::try_from(sum).unwrap_or(0xffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_into_its_reply() {
        let (a, b) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
        let request = echo_request(a, b, 0xbeef, 7, b"hello");
        assert_eq!(request.len(), 20 + 8 + 5);
        assert_eq!(checksum(&request[..20]), 0, "IPv4 header checksum");
        let echo = parse_echo(&request).unwrap();
        assert_eq!(
            echo,
            Echo {
                is_request: true,
                src: a.into(),
                dst: b.into(),
                ident: 0xbeef,
                seq: 7
            }
        );
        let reply = echo_reply_for(&request).unwrap();
        let echo = parse_echo(&reply).unwrap();
        assert!(!echo.is_request);
        assert_eq!((echo.src, echo.dst), (b.into(), a.into()));
        assert_eq!((echo.ident, echo.seq), (0xbeef, 7));
        assert_eq!(&reply[28..], b"hello");
        assert!(echo_reply_for(&reply).is_none(), "no reply to a reply");
    }

    #[test]
    fn anything_else_is_not_an_echo_and_never_panics() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let mut corrupt = echo_request(a, b, 1, 1, b"x");
        corrupt[28] ^= 0xff;
        assert!(parse_echo(&corrupt).is_none(), "bad ICMP checksum");
        let mut tcp = echo_request(a, b, 1, 1, b"x");
        tcp[9] = 6;
        assert!(parse_echo(&tcp).is_none());
        let good = echo_request(a, b, 1, 1, b"payload");
        for cut in 0..good.len() {
            assert!(parse_echo(&good[..cut]).is_none(), "cut at {cut}");
        }
        assert!(parse_echo(&[0x60; 60]).is_none(), "IPv6");
    }
}

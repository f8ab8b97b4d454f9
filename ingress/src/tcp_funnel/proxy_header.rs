//! The PROXY protocol v2 header (HAProxy's `proxy-protocol.txt`, section 2.2) that tells a
//! target who the public client was. Built with the `ppp` crate.

use std::net::{SocketAddr, SocketAddrV6};

use ppp::v2::{Builder, Command, Protocol, Version};

/// Why the PROXY header could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// The header builder failed (it writes to memory, so this is not expected).
    #[error("building the PROXY v2 header failed: {0}")]
    Build(#[from] std::io::Error),
}

/// The PROXY v2 header for a TCP connection from `client` to the edge's `local` address:
/// `PROXY` command, `STREAM` over `INET` or `INET6`, no TLVs. When one address is IPv4 and
/// the other IPv6, the IPv4 one is written IPv4-mapped so both share a family.
///
/// Write it to the target before any byte of the client's.
pub fn proxy_v2_header(client: SocketAddr, local: SocketAddr) -> Result<Vec<u8>, ProxyHeaderError> {
    let addresses = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        _ => (mapped(client), mapped(local)),
    };
    Ok(
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
            .build()?,
    )
}

fn mapped(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        SocketAddr::V6(_) => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNATURE: [u8; 12] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];

    /// Checked byte for byte against the layout of section 2.2 of the specification.
    #[test]
    fn ipv4_layout_matches_the_specification() {
        let header = proxy_v2_header(
            "203.0.113.7:51234".parse().unwrap(),
            "198.51.100.1:20001".parse().unwrap(),
        )
        .unwrap();
        let mut expected = SIGNATURE.to_vec();
        expected.push(0x21); // version 2, command PROXY
        expected.push(0x11); // AF_INET, STREAM
        expected.extend_from_slice(&12u16.to_be_bytes()); // 4 + 4 + 2 + 2
        expected.extend_from_slice(&[203, 0, 113, 7]);
        expected.extend_from_slice(&[198, 51, 100, 1]);
        expected.extend_from_slice(&51234u16.to_be_bytes());
        expected.extend_from_slice(&20001u16.to_be_bytes());
        assert_eq!(header, expected);
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let header = proxy_v2_header(
            "[2001:db8::7]:4000".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(header.len(), 16 + 36);
        assert_eq!(&header[..12], &SIGNATURE);
        assert_eq!(header[12..16], [0x21, 0x21, 0, 36]);
        let mixed = proxy_v2_header(
            "203.0.113.7:4000".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(mixed[13], 0x21);
        // ::ffff:203.0.113.7
        assert_eq!(mixed[16..32][10..], [0xff, 0xff, 203, 0, 113, 7]);
    }
}

//! Tailnet address allocation: IPv4 from 100.64.0.0/10, IPv6 from the tailnet's ULA /48.
//!
//! Allocation is deterministic: a node's IPv4 address is found by hashing its machine key
//! to a starting point in 100.64.0.0/10 and probing upwards (wrapping) for the first
//! usable address that no live node holds. The same machine in the same tailnet state
//! gets the same address, tests are reproducible, and replicas that race pick different
//! addresses most of the time (the store's unique constraint settles the rest). The IPv6
//! address is the ULA prefix with the IPv4 address in its low 32 bits, so it is unique
//! exactly when the IPv4 address is.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use sha2::{Digest, Sha256};

/// The shared address space nodes' IPv4 addresses come from (RFC 6598).
pub const IPV4_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

const IPV4_RANGE_SIZE: u32 = 1 << (32 - IPV4_RANGE.1);

/// Picks the IPv4 address for a node whose allocation seed (its machine key) is `seed`,
/// avoiding every address in `taken` and the reserved ones (see [`is_reserved_ipv4`]).
/// `None` only if the whole /10 is in use.
pub fn allocate_ipv4(seed: &[u8], taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let digest = Sha256::digest(seed);
    let start = digest
        .first_chunk::<4>()
        .map(|bytes| u32::from_be_bytes(*bytes) % IPV4_RANGE_SIZE)
        .unwrap_or_default();
    let base = u32::from(IPV4_RANGE.0);
    (0..IPV4_RANGE_SIZE)
        .map(|step| Ipv4Addr::from(base | ((start + step) % IPV4_RANGE_SIZE)))
        .find(|addr| !is_reserved_ipv4(*addr) && !taken.contains(addr))
}

/// Addresses in 100.64.0.0/10 never given to nodes: those ending in `.0` or `.255` (some
/// software mistakes them for network or broadcast addresses), 100.100.100.0/24 (kept for
/// tailnet services such as a DNS resolver) and 100.115.92.0/23 (used by ChromeOS).
pub fn is_reserved_ipv4(addr: Ipv4Addr) -> bool {
    let [a, b, c, d] = addr.octets();
    d == 0 || d == 255 || (a, b, c) == (100, 100, 100) || (a == 100 && b == 115 && c & 0xfe == 92)
}

/// A fresh random ULA /48 (`fdXX:XXXX:XXXX::/48`, RFC 4193) from 40 random bits.
pub fn random_ula_prefix<R: rand::RngCore>(rng: &mut R) -> Ipv6Net {
    let mut global_id = [0u8; 5];
    rng.fill_bytes(&mut global_id);
    let [g0, g1, g2, g3, g4] = global_id;
    let addr = Ipv6Addr::new(
        0xfd00 | u16::from(g0),
        u16::from_be_bytes([g1, g2]),
        u16::from_be_bytes([g3, g4]),
        0,
        0,
        0,
        0,
        0,
    );
    // A /48 is always a valid prefix length.
    Ipv6Net::new(addr, 48).unwrap_or_else(|_| Ipv6Net::from(addr))
}

/// The node IPv6 address matching `ipv4` inside `ula` (the /48's first subnet, with the
/// IPv4 address as the low 32 bits).
pub fn ipv6_for(ula: Ipv6Net, ipv4: Ipv4Addr) -> Ipv6Addr {
    let prefix = u128::from(ula.network()) & (u128::MAX << 80);
    Ipv6Addr::from(prefix | u128::from(u32::from(ipv4)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allocation_is_deterministic_and_skips_taken_and_reserved_addresses() {
        let first = allocate_ipv4(b"machine-a", &HashSet::new()).unwrap();
        assert_eq!(allocate_ipv4(b"machine-a", &HashSet::new()), Some(first));
        assert!(
            ipnet::Ipv4Net::new(IPV4_RANGE.0, IPV4_RANGE.1)
                .unwrap()
                .contains(&first)
        );
        let taken: HashSet<_> = [first].into();
        let second = allocate_ipv4(b"machine-a", &taken).unwrap();
        assert_ne!(second, first);
        assert!(!is_reserved_ipv4(second));
    }

    #[test]
    fn reserved_addresses() {
        for reserved in [
            "100.64.0.0",
            "100.64.1.255",
            "100.100.100.100",
            "100.115.93.7",
        ] {
            assert!(is_reserved_ipv4(reserved.parse().unwrap()), "{reserved}");
        }
        for usable in ["100.64.0.1", "100.115.94.1", "100.127.255.254"] {
            assert!(!is_reserved_ipv4(usable.parse().unwrap()), "{usable}");
        }
    }

    #[test]
    fn ula_prefixes_and_ipv6_addresses() {
        let ula = random_ula_prefix(&mut rand::rngs::OsRng);
        assert_eq!(ula.prefix_len(), 48);
        assert_eq!(ula.network().segments()[0] >> 8, 0xfd);
        let ula: Ipv6Net = "fd12:3456:789a::/48".parse().unwrap();
        assert_eq!(
            ipv6_for(ula, Ipv4Addr::new(100, 64, 0, 1)),
            "fd12:3456:789a::6440:1".parse::<Ipv6Addr>().unwrap()
        );
    }

    proptest! {
        #[test]
        fn never_hands_out_a_taken_address(
            seed in any::<[u8; 8]>(),
            taken in proptest::collection::hash_set(0u32..4096, 0..200),
        ) {
            // Crowd the neighbourhood of the seed's start to exercise probing.
            let start = allocate_ipv4(&seed, &HashSet::new()).unwrap();
            let taken: HashSet<Ipv4Addr> = taken
                .into_iter()
                .map(|off| Ipv4Addr::from(u32::from(start).wrapping_add(off)))
                .collect();
            let addr = allocate_ipv4(&seed, &taken).unwrap();
            prop_assert!(!taken.contains(&addr));
            prop_assert!(!is_reserved_ipv4(addr));
        }
    }
}

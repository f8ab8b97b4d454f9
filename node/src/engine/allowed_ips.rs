//! Longest-prefix match from IP addresses to peers (WireGuard's "cryptokey routing" table).
//!
//! Each address family keeps one hash table per prefix length in use, sorted longest
//! first. A lookup masks the address once per length in use and probes that
//! table, so it costs at most one hash probe per distinct prefix length (at most 33 for IPv4,
//! 129 for IPv6, usually two or three), whatever the number of routes: no linear scan over
//! peers or prefixes.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// A longest-prefix-match table from IP networks to values (the engine stores peer ids).
///
/// Inserting a network that is already present replaces its value, as `wg set` does when an
/// allowed IP moves from one peer to another. Host bits below the prefix are ignored
/// (`10.0.0.1/8` is `10.0.0.0/8`).
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: PrefixTables<u32, T>,
    v6: PrefixTables<u128, T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self {
            v4: PrefixTables::default(),
            v6: PrefixTables::default(),
        }
    }
}

impl<T: Clone + PartialEq> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `net` to `value`, replacing what `net` routed to before (returned).
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        match net {
            IpNet::V4(n) => self
                .v4
                .insert(u32::from(n.network()), n.prefix_len(), 32, value),
            IpNet::V6(n) => self
                .v6
                .insert(u128::from(n.network()), n.prefix_len(), 128, value),
        }
    }

    /// The value of the longest network that contains `addr`, if any.
    pub fn longest_match(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => self.v4.longest_match(u32::from(a), 32),
            IpAddr::V6(a) => self.v6.longest_match(u128::from(a), 128),
        }
    }

    /// Removes every network that routes to `value` (used when a peer is removed).
    pub fn remove_value(&mut self, value: &T) {
        self.v4.remove_value(value);
        self.v6.remove_value(value);
    }

    /// Number of networks in the table.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the table has no networks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One family's tables: (prefix length, masked address -> value), longest length first.
#[derive(Debug, Clone)]
struct PrefixTables<A, T> {
    tables: Vec<(u8, HashMap<A, T>)>,
}

impl<A, T> Default for PrefixTables<A, T> {
    fn default() -> Self {
        Self { tables: Vec::new() }
    }
}

trait AddressBits: Copy + Eq + std::hash::Hash {
    fn masked(self, prefix_len: u8, bits: u8) -> Self;
}

impl AddressBits for u32 {
    fn masked(self, prefix_len: u8, bits: u8) -> Self {
        let shift = bits.saturating_sub(prefix_len);
        self.checked_shr(u32::from(shift))
            .and_then(|v| v.checked_shl(u32::from(shift)))
            .unwrap_or(0)
    }
}

impl AddressBits for u128 {
    fn masked(self, prefix_len: u8, bits: u8) -> Self {
        let shift = bits.saturating_sub(prefix_len);
        self.checked_shr(u32::from(shift))
            .and_then(|v| v.checked_shl(u32::from(shift)))
            .unwrap_or(0)
    }
}

impl<A: AddressBits, T: Clone + PartialEq> PrefixTables<A, T> {
    fn insert(&mut self, addr: A, prefix_len: u8, bits: u8, value: T) -> Option<T> {
        let prefix_len = prefix_len.min(bits);
        let key = addr.masked(prefix_len, bits);
        // Longest first: find this length's table or where it belongs.
        match self.tables.iter().position(|(len, _)| *len <= prefix_len) {
            Some(at)
                if self
                    .tables
                    .get(at)
                    .is_some_and(|(len, _)| *len == prefix_len) =>
            {
                self.tables
                    .get_mut(at)
                    .and_then(|(_, table)| table.insert(key, value))
            }
            Some(at) => {
                self.tables
                    .insert(at, (prefix_len, HashMap::from([(key, value)])));
                None
            }
            None => {
                self.tables
                    .push((prefix_len, HashMap::from([(key, value)])));
                None
            }
        }
    }

    fn longest_match(&self, addr: A, bits: u8) -> Option<&T> {
        self.tables
            .iter()
            .find_map(|(len, table)| table.get(&addr.masked(*len, bits)))
    }

    fn remove_value(&mut self, value: &T) {
        for (_, table) in &mut self.tables {
            table.retain(|_, v| v != value);
        }
        self.tables.retain(|(_, table)| !table.is_empty());
    }

    fn len(&self) -> usize {
        self.tables.iter().map(|(_, table)| table.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_in_both_families() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), 0);
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("10.1.2.3/32"), 3);
        t.insert(net("fd00::/8"), 4);
        t.insert(net("fd00:1::/32"), 5);
        assert_eq!(t.longest_match(ip("10.1.2.3")), Some(&3));
        assert_eq!(t.longest_match(ip("10.1.2.4")), Some(&2));
        assert_eq!(t.longest_match(ip("10.2.0.1")), Some(&1));
        assert_eq!(t.longest_match(ip("192.168.0.1")), Some(&0));
        assert_eq!(t.longest_match(ip("fd00:1::9")), Some(&5));
        assert_eq!(t.longest_match(ip("fd99::1")), Some(&4));
        assert_eq!(t.longest_match(ip("2001:db8::1")), None);
    }

    #[test]
    fn host_bits_are_ignored_and_reinsert_replaces() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("10.9.9.9/8"), 1), None);
        assert_eq!(t.insert(net("10.0.0.0/8"), 2), Some(1));
        assert_eq!(t.longest_match(ip("10.200.0.1")), Some(&2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn remove_value_drops_only_that_peers_routes() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("fd00::/8"), 2);
        t.remove_value(&2);
        assert_eq!(t.longest_match(ip("10.1.0.1")), Some(&1));
        assert_eq!(t.longest_match(ip("fd00::1")), None);
        assert_eq!(t.len(), 1);
    }

    fn reference(routes: &[(IpNet, u32)], addr: IpAddr) -> Option<u32> {
        // Later inserts of the same network replace earlier ones.
        let mut best: Option<(u8, u32)> = None;
        let mut seen: Vec<(IpNet, u32)> = Vec::new();
        for (n, v) in routes {
            let n = n.trunc();
            seen.retain(|(m, _)| *m != n);
            seen.push((n, *v));
        }
        for (n, v) in seen {
            if n.contains(&addr) && best.is_none_or(|(len, _)| n.prefix_len() > len) {
                best = Some((n.prefix_len(), v));
            }
        }
        best.map(|(_, v)| v)
    }

    proptest! {
        #[test]
        fn matches_a_linear_reference(
            routes in proptest::collection::vec((any::<u32>(), 0u8..=32, 0u32..4), 0..24),
            probes in proptest::collection::vec(any::<u32>(), 1..32),
        ) {
            let routes: Vec<(IpNet, u32)> = routes
                .into_iter()
                .map(|(a, len, v)| {
                    let n = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap();
                    (IpNet::V4(n), v)
                })
                .collect();
            let mut t = AllowedIps::new();
            for (n, v) in &routes {
                t.insert(*n, *v);
            }
            // Probe both random addresses and addresses inside the routes.
            let inside = routes.iter().map(|(n, _)| u32::from(match n { IpNet::V4(n) => n.addr(), IpNet::V6(_) => unreachable!() }));
            for a in probes.into_iter().chain(inside) {
                let addr = IpAddr::V4(std::net::Ipv4Addr::from(a));
                prop_assert_eq!(t.longest_match(addr).copied(), reference(&routes, addr));
            }
        }
    }
}

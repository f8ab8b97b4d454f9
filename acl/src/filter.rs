//! The packet filter a node enforces on inbound traffic, built for per-packet speed.
//!
//! Layout: one table per IP protocol (plus one for "any protocol"). Each table splits the
//! port space into segments at every rule boundary; each segment holds the sorted, merged
//! source address ranges allowed on those ports. A lookup is two binary searches: the
//! port's segment, then the source address among the ranges. No rule is scanned.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{IpProto, PortRange};

/// Sorted, non-overlapping, non-adjacent inclusive address ranges, IPv4 and IPv6 apart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddrRanges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl AddrRanges {
    /// Builds the set from prefixes (in any order, overlapping or not).
    pub fn from_prefixes<'a>(prefixes: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for p in prefixes {
            push_prefix(p, &mut v4, &mut v6);
        }
        AddrRanges {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Builds the set from single addresses.
    pub fn from_addresses(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for ip in addresses {
            match ip {
                IpAddr::V4(a) => v4.push((u32::from(a), u32::from(a))),
                IpAddr::V6(a) => v6.push((u128::from(a), u128::from(a))),
            }
        }
        AddrRanges {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// The union of several sets.
    pub fn union<'a>(sets: impl IntoIterator<Item = &'a AddrRanges>) -> Self {
        let sets: Vec<&AddrRanges> = sets.into_iter().collect();
        match sets.as_slice() {
            [] => AddrRanges::default(),
            [one] => (*one).clone(),
            many => AddrRanges {
                v4: merge(many.iter().flat_map(|s| s.v4.iter().copied()).collect()),
                v6: merge(many.iter().flat_map(|s| s.v6.iter().copied()).collect()),
            },
        }
    }

    /// Whether the address is in the set. O(log n).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(a)),
            },
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The IPv4 ranges, inclusive, sorted.
    pub fn v4_ranges(&self) -> &[(u32, u32)] {
        &self.v4
    }

    /// The IPv6 ranges, inclusive, sorted.
    pub fn v6_ranges(&self) -> &[(u128, u128)] {
        &self.v6
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// Which protocols a filter entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FilterProto {
    /// Every protocol, every port.
    Any,
    /// One protocol.
    One(IpProto),
}

/// One input line of a filter: these sources may send this protocol to these ports.
#[derive(Debug, Clone)]
pub struct FilterEntry<'a> {
    /// The protocol(s).
    pub proto: FilterProto,
    /// Destination ports (ignored for protocols without ports).
    pub ports: PortRange,
    /// Allowed source addresses.
    pub src: &'a AddrRanges,
}

/// The inbound packet filter of one node. Build it with [`PacketFilter::build`]; ask it with
/// [`PacketFilter::allows`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PacketFilter {
    any: Option<AddrRanges>,
    /// Sorted by protocol.
    tables: Vec<(IpProto, PortTable)>,
}

/// Port segments of one protocol: `starts[i]..next start` allows `ranges[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTable {
    starts: Vec<u16>,
    ranges: Vec<AddrRanges>,
}

impl PacketFilter {
    /// A filter that denies everything.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Builds a filter from entries (any order, overlapping allowed).
    pub fn build<'a>(entries: impl IntoIterator<Item = FilterEntry<'a>>) -> Self {
        let mut any: Vec<&AddrRanges> = Vec::new();
        let mut by_proto: std::collections::BTreeMap<IpProto, Vec<(PortRange, &AddrRanges)>> =
            std::collections::BTreeMap::new();
        for e in entries {
            if e.src.is_empty() {
                continue;
            }
            match e.proto {
                FilterProto::Any => any.push(e.src),
                FilterProto::One(p) => {
                    let ports = if p.has_ports() {
                        e.ports
                    } else {
                        PortRange::ALL
                    };
                    by_proto.entry(p).or_default().push((ports, e.src));
                }
            }
        }
        // Protocols often share their sources (TCP, UDP, ICMP and ICMPv6 of one rule): each
        // distinct combination of source sets is merged once.
        let mut unions = HashMap::new();
        let tables = by_proto
            .into_iter()
            .map(|(proto, items)| (proto, PortTable::build(&items, &mut unions)))
            .collect();
        PacketFilter {
            any: (!any.is_empty()).then(|| AddrRanges::union(any)),
            tables,
        }
    }

    /// Whether a packet from `src` of protocol `proto` to `dst_port` (ignored for protocols
    /// without ports) may enter. O(log rules + log sources).
    pub fn allows(&self, src: IpAddr, dst_port: u16, proto: IpProto) -> bool {
        if self.any.as_ref().is_some_and(|a| a.contains(src)) {
            return true;
        }
        let Ok(i) = self.tables.binary_search_by_key(&proto, |(p, _)| *p) else {
            return false;
        };
        let port = if proto.has_ports() { dst_port } else { 0 };
        self.tables
            .get(i)
            .is_some_and(|(_, table)| table.lookup(port).is_some_and(|r| r.contains(src)))
    }

    /// Whether the filter allows nothing.
    pub fn is_deny_all(&self) -> bool {
        self.any.is_none() && self.tables.is_empty()
    }

    /// The sources allowed for every protocol and port, if any.
    pub fn any_protocol(&self) -> Option<&AddrRanges> {
        self.any.as_ref()
    }

    /// The per-protocol tables, sorted by protocol: each yields `(ports, sources)` segments.
    /// For shipping the filter to the node (the wire format is the proto crate's business).
    pub fn tables(&self) -> impl Iterator<Item = (IpProto, Vec<(PortRange, &AddrRanges)>)> {
        self.tables.iter().map(|(p, t)| (*p, t.segments()))
    }
}

impl PortTable {
    fn build(
        items: &[(PortRange, &AddrRanges)],
        unions: &mut HashMap<Vec<usize>, AddrRanges>,
    ) -> Self {
        let mut bounds: Vec<u32> = vec![0];
        for (r, _) in items {
            bounds.push(u32::from(r.first));
            bounds.push(u32::from(r.last) + 1);
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut starts = Vec::new();
        let mut ranges: Vec<AddrRanges> = Vec::new();
        let mut last_key: Option<Vec<usize>> = None;
        for start in bounds {
            let Ok(port) = u16::try_from(start) else {
                break; // 65536: past the last port
            };
            // The sets covering this port, identified by address (the same set is often
            // listed for several entries).
            let mut key: Vec<usize> = items
                .iter()
                .filter(|(r, _)| r.contains(port))
                .map(|(_, src)| std::ptr::from_ref::<AddrRanges>(src) as usize)
                .collect();
            key.sort_unstable();
            key.dedup();
            if last_key.as_ref() == Some(&key) {
                continue; // same as the previous segment: extend it
            }
            let set = match unions.get(&key) {
                Some(set) => set.clone(),
                None => {
                    let mut seen = Vec::new();
                    let covering: Vec<&AddrRanges> = items
                        .iter()
                        .filter(|(r, _)| r.contains(port))
                        .map(|(_, src)| *src)
                        .filter(|src| {
                            let id = std::ptr::from_ref::<AddrRanges>(src) as usize;
                            let fresh = !seen.contains(&id);
                            seen.push(id);
                            fresh
                        })
                        .collect();
                    let set = AddrRanges::union(covering);
                    unions.insert(key.clone(), set.clone());
                    set
                }
            };
            last_key = Some(key);
            starts.push(port);
            ranges.push(set);
        }
        PortTable { starts, ranges }
    }

    fn lookup(&self, port: u16) -> Option<&AddrRanges> {
        let i = self.starts.partition_point(|s| *s <= port).checked_sub(1)?;
        self.ranges.get(i)
    }

    fn segments(&self) -> Vec<(PortRange, &AddrRanges)> {
        let mut out = Vec::new();
        for (i, (start, set)) in self.starts.iter().zip(&self.ranges).enumerate() {
            let last = self
                .starts
                .get(i + 1)
                .map_or(u16::MAX, |next| next.saturating_sub(1));
            if !set.is_empty() {
                out.push((
                    PortRange {
                        first: *start,
                        last,
                    },
                    set,
                ));
            }
        }
        out
    }
}

fn push_prefix(p: &IpNet, v4: &mut Vec<(u32, u32)>, v6: &mut Vec<(u128, u128)>) {
    match p {
        IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
        IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
    }
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge<T: Copy + Ord + Step>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    // A stable sort: unions concatenate already sorted lists, and its run detection merges
    // them in about linear time.
    ranges.sort();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if first <= prev.1.next_or_max() => {
                if last > prev.1 {
                    prev.1 = last;
                }
            }
            _ => out.push((first, last)),
        }
    }
    out
}

fn find<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|(first, _)| *first <= x);
    i.checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|(_, last)| x <= *last)
}

/// `x + 1`, saturating: for merging adjacent ranges.
trait Step {
    fn next_or_max(self) -> Self;
}

impl Step for u32 {
    fn next_or_max(self) -> Self {
        self.saturating_add(1)
    }
}

impl Step for u128 {
    fn next_or_max(self) -> Self {
        self.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_merge_and_answer_membership() {
        let set = AddrRanges::from_prefixes(&[
            net("10.0.0.0/24"),
            net("10.0.1.0/24"),
            net("10.0.0.5/32"),
            net("fd00::/64"),
        ]);
        assert_eq!(set.v4_ranges().len(), 1, "adjacent /24s merge");
        assert!(set.contains("10.0.1.255".parse().unwrap()));
        assert!(!set.contains("10.0.2.0".parse().unwrap()));
        assert!(set.contains("fd00::1".parse().unwrap()));
        assert!(!set.contains("fd01::1".parse().unwrap()));
    }

    #[test]
    fn filter_splits_ports_into_segments() {
        let a = AddrRanges::from_prefixes(&[net("10.0.0.1/32")]);
        let b = AddrRanges::from_prefixes(&[net("10.0.0.2/32")]);
        let f = PacketFilter::build([
            FilterEntry {
                proto: FilterProto::One(IpProto::TCP),
                ports: PortRange {
                    first: 80,
                    last: 90,
                },
                src: &a,
            },
            FilterEntry {
                proto: FilterProto::One(IpProto::TCP),
                ports: PortRange {
                    first: 85,
                    last: 100,
                },
                src: &b,
            },
            FilterEntry {
                proto: FilterProto::One(IpProto::ICMP),
                ports: PortRange { first: 1, last: 1 },
                src: &b,
            },
        ]);
        let ip1 = "10.0.0.1".parse().unwrap();
        let ip2 = "10.0.0.2".parse().unwrap();
        assert!(f.allows(ip1, 80, IpProto::TCP));
        assert!(f.allows(ip1, 90, IpProto::TCP));
        assert!(!f.allows(ip1, 91, IpProto::TCP));
        assert!(!f.allows(ip2, 84, IpProto::TCP));
        assert!(f.allows(ip2, 100, IpProto::TCP));
        assert!(!f.allows(ip2, 101, IpProto::TCP));
        assert!(!f.allows(ip1, 80, IpProto::UDP));
        assert!(f.allows(ip2, 4242, IpProto::ICMP), "ICMP ignores ports");
        assert!(!f.allows(ip1, 0, IpProto::ICMP));
    }

    #[test]
    fn any_protocol_allows_everything_from_its_sources() {
        let a = AddrRanges::from_prefixes(&[net("0.0.0.0/0")]);
        let f = PacketFilter::build([FilterEntry {
            proto: FilterProto::Any,
            ports: PortRange::ALL,
            src: &a,
        }]);
        assert!(f.allows("1.2.3.4".parse().unwrap(), 1, IpProto(47)));
        assert!(!f.allows("::1".parse().unwrap(), 1, IpProto(47)));
        assert!(PacketFilter::deny_all().is_deny_all());
    }
}

//! The netmap's packet filter as the engine's [`InboundFilter`].
//!
//! The coord compiles the policy into [`FilterRule`]s for each node; [`NetmapFilter`] holds
//! them and answers the engine's question for every inbound packet that is not a reply to
//! one of this node's own flows. A packet passes if any rule matches it: its source is in
//! one of the rule's source prefixes, its protocol is one of the rule's protocols (or the
//! rule names none), and its destination is in one of the rule's destination prefixes with
//! its destination port in that destination's range (ports are ignored for protocols that
//! have none, such as ICMP). An empty rule list lets nothing in.

use postern_proto::netmap::{FilterRule, IpProtocol};

use crate::engine::filter::{InboundFilter, PacketMeta, ip_proto};

/// The inbound filter built from a netmap's `packet_filter`; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetmapFilter {
    rules: Vec<FilterRule>,
}

impl NetmapFilter {
    /// A filter that lets in what any of `rules` matches.
    pub fn new(rules: Vec<FilterRule>) -> Self {
        Self { rules }
    }

    /// The rules.
    pub fn rules(&self) -> &[FilterRule] {
        &self.rules
    }
}

impl InboundFilter for NetmapFilter {
    fn allows(&self, meta: &PacketMeta) -> bool {
        self.rules.iter().any(|rule| rule_matches(rule, meta))
    }
}

fn rule_matches(rule: &FilterRule, meta: &PacketMeta) -> bool {
    let protocol_ok =
        rule.protocols.is_empty() || rule.protocols.contains(&IpProtocol(meta.protocol));
    if !protocol_ok || !rule.sources.iter().any(|net| net.contains(&meta.src)) {
        return false;
    }
    let has_ports = matches!(meta.protocol, ip_proto::TCP | ip_proto::UDP)
        || meta.protocol == IpProtocol::SCTP.0;
    rule.destinations.iter().any(|dst| {
        dst.prefix.contains(&meta.dst) && (!has_ports || dst.ports.contains(meta.dst_port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::netmap::{FilterDestination, PortRange};

    fn meta(src: &str, dst: &str, protocol: u8, dst_port: u16) -> PacketMeta {
        PacketMeta {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            src_port: 40000,
            dst_port,
        }
    }

    fn web_rule() -> FilterRule {
        FilterRule {
            sources: vec!["100.64.0.0/24".parse().unwrap()],
            destinations: vec![FilterDestination {
                prefix: "100.64.0.9/32".parse().unwrap(),
                ports: PortRange::new(80, 443).unwrap(),
            }],
            protocols: vec![IpProtocol::TCP],
        }
    }

    #[test]
    fn a_rule_matches_source_destination_port_and_protocol() {
        let filter = NetmapFilter::new(vec![web_rule()]);
        assert!(filter.allows(&meta("100.64.0.3", "100.64.0.9", 6, 80)));
        assert!(filter.allows(&meta("100.64.0.3", "100.64.0.9", 6, 443)));
        assert!(
            !filter.allows(&meta("100.64.0.3", "100.64.0.9", 6, 22)),
            "port"
        );
        assert!(
            !filter.allows(&meta("100.64.1.3", "100.64.0.9", 6, 80)),
            "source"
        );
        assert!(
            !filter.allows(&meta("100.64.0.3", "100.64.0.8", 6, 80)),
            "dest"
        );
        assert!(
            !filter.allows(&meta("100.64.0.3", "100.64.0.9", 17, 80)),
            "proto"
        );
    }

    #[test]
    fn no_protocols_means_all_and_icmp_ignores_ports() {
        let mut rule = web_rule();
        rule.protocols.clear();
        let filter = NetmapFilter::new(vec![rule]);
        assert!(filter.allows(&meta("100.64.0.3", "100.64.0.9", 17, 80)));
        assert!(filter.allows(&meta("100.64.0.3", "100.64.0.9", 1, 4242)));
        assert!(!filter.allows(&meta("100.64.0.3", "100.64.0.9", 17, 8080)));
    }

    #[test]
    fn an_empty_filter_lets_nothing_in_and_any_rule_suffices() {
        assert!(!NetmapFilter::default().allows(&meta("100.64.0.3", "100.64.0.9", 6, 80)));
        let ssh = FilterRule {
            sources: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            destinations: vec![FilterDestination {
                prefix: "fd7a::/48".parse().unwrap(),
                ports: PortRange::single(22),
            }],
            protocols: Vec::new(),
        };
        let filter = NetmapFilter::new(vec![web_rule(), ssh]);
        assert!(filter.allows(&meta("fd7a::3", "fd7a::9", 6, 22)));
        assert!(filter.allows(&meta("100.64.0.3", "100.64.0.9", 6, 80)));
        assert!(!filter.allows(&meta("fd7a::3", "fd7a::9", 6, 23)));
    }
}

//! The policy's compiled results in the netmap's wire form: the packet filter as
//! [`FilterRule`]s and the funnel grants as [`FunnelGrant`]s.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};
use postern_acl::{AddrRanges, CompiledNode, GateRequirements, PacketFilter};
use postern_proto::netmap::{
    FilterDestination, FilterRule, FunnelGrant, IpProtocol, NodeAddresses, PortRange,
};

use crate::store::FunnelRecord;

/// The gate name a funnel needs when its rule has `requireLogin`.
pub const GATE_LOGIN: &str = "login";
/// The gate name a funnel needs when its rule has `requireWebhookSignature`.
pub const GATE_WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// The gate name saying "some gate is required" (the rule has no `allowUngated`).
pub const GATE_ANY: &str = "any";

/// `filter` (inbound, to the node at `me`) as wire rules: one rule for the sources allowed
/// everything, then one per distinct (ports, sources) with the protocols that share them.
/// Sources are the filter's address ranges as the fewest covering CIDR prefixes.
pub fn wire_filter(filter: &PacketFilter, me: &NodeAddresses) -> Vec<FilterRule> {
    let destinations = |ports: PortRange| -> Vec<FilterDestination> {
        me.to_vec()
            .into_iter()
            .map(|addr| FilterDestination {
                prefix: IpNet::from(addr),
                ports,
            })
            .collect()
    };
    let mut rules = Vec::new();
    if let Some(any) = filter.any_protocol() {
        rules.push(FilterRule {
            sources: prefixes(any),
            destinations: destinations(PortRange::ALL),
            protocols: Vec::new(),
        });
    }
    let mut grouped: BTreeMap<(u16, u16, Vec<IpNet>), Vec<IpProtocol>> = BTreeMap::new();
    for (proto, segments) in filter.tables() {
        for (ports, sources) in segments {
            if sources.is_empty() {
                continue;
            }
            grouped
                .entry((ports.first, ports.last, prefixes(sources)))
                .or_default()
                .push(IpProtocol(proto.0));
        }
    }
    for ((first, last, sources), protocols) in grouped {
        let Ok(ports) = PortRange::new(first, last) else {
            continue; // the acl crate never builds reversed ranges
        };
        rules.push(FilterRule {
            sources,
            destinations: destinations(ports),
            protocols,
        });
    }
    rules
}

/// The node's funnels that its compiled grants allow, as wire grants: the first grant
/// covering a funnel's port decides the gates, and the TTL is the shorter of the funnel's
/// and the grant's. Funnels no grant covers are left out.
pub fn wire_funnel_grants(compiled: &CompiledNode, funnels: &[FunnelRecord]) -> Vec<FunnelGrant> {
    let mut grants: Vec<FunnelGrant> = funnels
        .iter()
        .filter_map(|record| {
            let funnel = &record.funnel;
            let grant = compiled.funnel_grant_for(funnel.port)?;
            let grant_ttl = grant.max_ttl.map(|ttl| ttl.as_secs());
            let max_ttl_secs = match (grant_ttl, funnel.ttl_secs) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Some(FunnelGrant {
                port: funnel.port,
                hostname: funnel.hostname.clone(),
                gates_required: gate_names(&grant.gates),
                max_ttl_secs,
            })
        })
        .collect();
    grants.sort_by_key(|g| g.port);
    grants
}

/// The gates a grant's requirements name: `login:PRINCIPAL` per `requireLogin` entry,
/// `webhook-signature`, and `any` unless the rule allows ungated funnels.
pub fn gate_names(gates: &GateRequirements) -> Vec<String> {
    let mut names: Vec<String> = gates
        .require_login
        .iter()
        .map(|who| format!("{GATE_LOGIN}:{who}"))
        .collect();
    if gates.require_webhook_signature {
        names.push(GATE_WEBHOOK_SIGNATURE.to_owned());
    }
    if !gates.allow_ungated {
        names.push(GATE_ANY.to_owned());
    }
    names
}

/// The fewest CIDR prefixes covering exactly `ranges`.
fn prefixes(ranges: &AddrRanges) -> Vec<IpNet> {
    let v4 = ranges.v4_ranges().iter().flat_map(|(first, last)| {
        Ipv4Subnets::new(Ipv4Addr::from(*first), Ipv4Addr::from(*last), 0).map(IpNet::V4)
    });
    let v6 = ranges.v6_ranges().iter().flat_map(|(first, last)| {
        Ipv6Subnets::new(Ipv6Addr::from(*first), Ipv6Addr::from(*last), 0).map(IpNet::V6)
    });
    v4.chain(v6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_acl::{IpProto, NodeId, NodeSet, NodeView, Policy};

    fn node(id: u64, user: &str, tags: &[&str]) -> NodeView {
        NodeView {
            id: NodeId(id),
            addresses: vec![
                format!("100.64.0.{id}").parse().unwrap(),
                format!("fd00::{id}").parse().unwrap(),
            ],
            user: user.into(),
            idp_groups: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            is_ingress: false,
        }
    }

    /// Evaluates wire rules the way a node does.
    fn wire_allows(rules: &[FilterRule], src: &str, port: u16, proto: u8) -> bool {
        let src: std::net::IpAddr = src.parse().unwrap();
        rules.iter().any(|rule| {
            rule.sources.iter().any(|s| s.contains(&src))
                && (rule.protocols.is_empty() || rule.protocols.contains(&IpProtocol(proto)))
                && rule.destinations.iter().any(|d| d.ports.contains(port))
        })
    }

    #[test]
    fn the_wire_filter_allows_exactly_what_the_compiled_filter_allows() {
        let policy = Policy::parse(
            "p.hujson",
            r#"{
              "tagOwners": {"tag:web": [], "tag:db": []},
              "acls": [
                {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:80,443"]},
                {"action": "accept", "src": ["tag:db"], "proto": "udp", "dst": ["tag:web:5000-5999"]},
                {"action": "accept", "src": ["10.1.0.0/16"], "dst": ["tag:web:*"]},
              ],
              "grants": [{"src": ["bob@example.com"], "dst": ["tag:web"], "ip": ["*"]}],
            }"#,
        )
        .unwrap();
        let nodes: NodeSet = [
            node(1, "alice@example.com", &[]),
            node(2, "x@example.com", &["web"]),
            node(3, "x@example.com", &["db"]),
            node(4, "bob@example.com", &[]),
        ]
        .into_iter()
        .collect();
        let web = nodes.get(NodeId(2)).unwrap().clone();
        let compiled = policy.compile_for(&web, &nodes);
        let me = NodeAddresses {
            ipv4: "100.64.0.2".parse().unwrap(),
            ipv6: "fd00::2".parse().unwrap(),
        };
        let rules = wire_filter(&compiled.packet_filter, &me);
        let sources = [
            "100.64.0.1",
            "fd00::1",
            "100.64.0.3",
            "100.64.0.4",
            "10.1.200.3",
            "10.2.0.1",
            "100.64.0.9",
        ];
        for src in sources {
            for port in [22, 80, 443, 444, 5000, 5999, 6000] {
                for proto in [IpProto::TCP, IpProto::UDP, IpProto(1), IpProto(47)] {
                    assert_eq!(
                        wire_allows(&rules, src, port, proto.0),
                        compiled
                            .packet_filter
                            .allows(src.parse().unwrap(), port, proto),
                        "{src} -> {port}/{proto}"
                    );
                }
            }
        }
        assert!(rules.iter().all(|r| r.destinations.len() == 2));
    }

    #[test]
    fn ranges_become_the_fewest_prefixes() {
        let ranges = AddrRanges::from_addresses(
            [
                "100.64.0.4",
                "100.64.0.5",
                "100.64.0.6",
                "100.64.0.7",
                "fd00::1",
            ]
            .iter()
            .map(|a| a.parse().unwrap()),
        );
        let got: Vec<String> = prefixes(&ranges).iter().map(ToString::to_string).collect();
        assert_eq!(got, vec!["100.64.0.4/30", "fd00::1/128"]);
    }

    #[test]
    fn gates_are_named() {
        let gates = GateRequirements {
            require_login: vec![postern_acl::Selector::Group("eng".into())],
            require_webhook_signature: true,
            allow_ungated: false,
        };
        assert_eq!(
            gate_names(&gates),
            vec!["login:group:eng", "webhook-signature", "any"]
        );
    }
}

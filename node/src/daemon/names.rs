//! Who is who in the netmap: peer names to addresses, and tailnet addresses to identities.
//!
//! [`PeerDirectory`] is built from a netmap (cheap: it is rebuilt on every change) and
//! answers the two questions the rest of the node asks:
//!
//! - [`PeerDirectory::resolve`]: `laptop`, `laptop.TAILNET-DOMAIN` (a trailing dot and
//!   letter case do not matter) or an IP literal, to an address inside the tailnet;
//! - [`PeerDirectory::peer_by_addr`]: the [`PeerIdentity`] behind a source address, for the
//!   serve proxy's identity headers and the funnel acceptor's ingress check.

use std::collections::HashMap;
use std::net::IpAddr;

use postern_proto::netmap::Netmap;
use postern_proto::{NodeId, NodePublicKey};
use serde::{Deserialize, Serialize};

/// Who a tailnet peer is, as the netmap says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// The peer's node id.
    pub node_id: NodeId,
    /// Its short name (`laptop`).
    pub node_name: String,
    /// Its fully qualified name (`laptop.example.ts.net`).
    pub fqdn: String,
    /// Its WireGuard key.
    pub node_key: NodePublicKey,
    /// Its owner's login (an e-mail, or `tagged-devices`).
    pub login: String,
    /// Its owner's display name.
    pub display_name: String,
    /// Its owner's IdP groups.
    pub groups: Vec<String>,
    /// Its ACL tags.
    pub tags: Vec<String>,
    /// Whether the coord marked it as an ingress that may open funnel streams.
    pub is_ingress: bool,
    /// Its tailnet addresses.
    pub addresses: Vec<IpAddr>,
}

/// Name and address lookups over one netmap; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct PeerDirectory {
    by_name: HashMap<String, Vec<IpAddr>>,
    by_addr: HashMap<IpAddr, PeerIdentity>,
    tailnet_domain: String,
}

impl PeerDirectory {
    /// The directory of `netmap`: every peer by short and full name and by address, this
    /// node's own names, and the netmap's extra DNS records.
    pub fn new(netmap: &Netmap) -> Self {
        let domain = normalize(&netmap.dns.tailnet_domain);
        let mut by_name: HashMap<String, Vec<IpAddr>> = HashMap::new();
        let mut by_addr = HashMap::new();
        let mut insert = |name: &str, addresses: &[IpAddr]| {
            let fqdn = normalize(name);
            if fqdn.is_empty() {
                return;
            }
            if let Some(short) = short_name(&fqdn, &domain) {
                by_name
                    .entry(short.to_owned())
                    .or_insert_with(|| addresses.to_vec());
            }
            by_name.insert(fqdn, addresses.to_vec());
        };
        let me = &netmap.self_node;
        insert(&me.fqdn, &me.addresses.to_vec());
        for record in &netmap.dns.names {
            insert(&record.name, &record.addresses);
        }
        for peer in &netmap.peers {
            insert(&peer.name, &peer.addresses);
            let fqdn = normalize(&peer.name);
            let node_name = short_name(&fqdn, &domain)
                .or_else(|| fqdn.split('.').next())
                .unwrap_or_default()
                .to_owned();
            let identity = PeerIdentity {
                node_id: peer.id,
                node_name,
                fqdn,
                node_key: peer.node_key,
                login: peer.user.login.clone(),
                display_name: peer.user.display_name.clone(),
                groups: peer.user.groups.clone(),
                tags: peer.tags.clone(),
                is_ingress: peer.is_ingress,
                addresses: peer.addresses.clone(),
            };
            for addr in &peer.addresses {
                by_addr.insert(*addr, identity.clone());
            }
        }
        Self {
            by_name,
            by_addr,
            tailnet_domain: domain,
        }
    }

    /// The tailnet address `name` stands for: an IP literal as is, else a peer's (or this
    /// node's) short or full name, IPv4 preferred. `None` if the name is not in the netmap.
    pub fn resolve(&self, name: &str) -> Option<IpAddr> {
        let trimmed = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            return Some(ip);
        }
        let addresses = self.by_name.get(&normalize(name))?;
        addresses
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addresses.first())
            .copied()
    }

    /// The peer whose tailnet address is `addr`, if any.
    pub fn peer_by_addr(&self, addr: IpAddr) -> Option<&PeerIdentity> {
        self.by_addr.get(&addr)
    }

    /// The tailnet's DNS domain (lowercase, no trailing dot).
    pub fn tailnet_domain(&self) -> &str {
        &self.tailnet_domain
    }
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `laptop` for `laptop.example.ts.net` in `example.ts.net`.
fn short_name<'a>(fqdn: &'a str, domain: &str) -> Option<&'a str> {
    if domain.is_empty() {
        return None;
    }
    fqdn.strip_suffix(domain)?
        .strip_suffix('.')
        .filter(|short| !short.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::netmap::{
        DnsConfig, DnsRecord, NodeAddresses, Peer, RelayMap, SelfNode, UserProfile,
    };
    use postern_proto::{NodePrivateKey, UserId};

    fn user(login: &str) -> UserProfile {
        UserProfile {
            id: UserId(1),
            login: login.into(),
            display_name: "Alice".into(),
            groups: vec!["group:eng".into()],
        }
    }

    fn map() -> Netmap {
        let peer = Peer {
            id: NodeId(2),
            name: "laptop.corp.test".into(),
            node_key: NodePrivateKey::generate(&mut rand::rngs::OsRng).public_key(),
            disco_key: None,
            addresses: vec!["fd7a::2".parse().unwrap(), "100.64.0.2".parse().unwrap()],
            allowed_ips: Vec::new(),
            endpoints: Vec::new(),
            home_relay: None,
            online: true,
            key_expiry: None,
            user: user("alice@example.com"),
            tags: vec!["tag:dev".into()],
            is_ingress: true,
        };
        Netmap {
            self_node: SelfNode {
                id: NodeId(1),
                name: "me".into(),
                fqdn: "me.corp.test".into(),
                addresses: NodeAddresses {
                    ipv4: "100.64.0.1".parse().unwrap(),
                    ipv6: "fd7a::1".parse().unwrap(),
                },
                key_expiry: None,
                user: user("bob@example.com"),
                tags: Vec::new(),
            },
            peers: vec![peer],
            packet_filter: Vec::new(),
            relay_map: RelayMap::default(),
            dns: DnsConfig {
                tailnet_domain: "corp.test".into(),
                names: vec![DnsRecord {
                    name: "db.corp.test".into(),
                    addresses: vec!["100.64.0.7".parse().unwrap()],
                }],
            },
            funnel_grants: Vec::new(),
            funnel_routes: Vec::new(),
        }
    }

    #[test]
    fn short_full_dotted_and_mixed_case_names_resolve_ipv4_first() {
        let dir = PeerDirectory::new(&map());
        let v4: IpAddr = "100.64.0.2".parse().unwrap();
        for name in [
            "laptop",
            "laptop.corp.test",
            "LAPTOP.corp.test.",
            " laptop ",
        ] {
            assert_eq!(dir.resolve(name), Some(v4), "{name}");
        }
        assert_eq!(dir.resolve("me"), Some("100.64.0.1".parse().unwrap()));
        assert_eq!(dir.resolve("db"), Some("100.64.0.7".parse().unwrap()));
        assert_eq!(dir.resolve("[fd7a::9]"), Some("fd7a::9".parse().unwrap()));
        assert_eq!(dir.resolve("laptop.other.test"), None);
        assert_eq!(dir.resolve("nobody"), None);
        assert_eq!(dir.resolve(""), None);
    }

    #[test]
    fn identities_are_found_by_any_of_the_peer_addresses() {
        let dir = PeerDirectory::new(&map());
        for addr in ["100.64.0.2", "fd7a::2"] {
            let who = dir.peer_by_addr(addr.parse().unwrap()).unwrap();
            assert_eq!(who.node_name, "laptop");
            assert_eq!(who.fqdn, "laptop.corp.test");
            assert_eq!(who.login, "alice@example.com");
            assert_eq!(who.groups, vec!["group:eng".to_owned()]);
            assert!(who.is_ingress);
        }
        assert!(dir.peer_by_addr("100.64.0.1".parse().unwrap()).is_none());
    }
}

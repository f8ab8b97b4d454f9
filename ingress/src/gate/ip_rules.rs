//! IP rules: allow/deny CIDR lists, first match wins.

use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use super::{Decision, Gate, GateRequest, Identity, ReasonCode};

/// What a rule does with an address it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpAction {
    /// Admit (as `ip:<address>`).
    Allow,
    /// Refuse with `ip_denied` (403).
    Deny,
}

/// One rule: an action for a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRule {
    /// Allow or deny.
    pub action: IpAction,
    /// The network, e.g. `203.0.113.0/24` or `2001:db8::/32`; a bare address is a /32 or
    /// /128.
    pub network: IpNet,
}

impl std::str::FromStr for IpRule {
    type Err = IpRuleError;

    /// Parses `allow 10.0.0.0/8`, `deny 203.0.113.7` (action, whitespace, address or CIDR).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || IpRuleError::Rule(text.to_string());
        let (action, network) = text
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(bad)?;
        let action = match action {
            "allow" => IpAction::Allow,
            "deny" => IpAction::Deny,
            _ => return Err(bad()),
        };
        Ok(Self {
            action,
            network: parse_network(network.trim()).ok_or_else(bad)?,
        })
    }
}

/// The IP gate's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRulesConfig {
    /// The rules, tried in order; the first whose network holds the client decides.
    pub rules: Vec<IpRule>,
    /// What happens to an address no rule matches: [`IpAction::Deny`] unless set.
    pub default: IpAction,
    /// Proxies in front of the edge whose `X-Forwarded-For` is believed. Empty (the
    /// default) means the TCP peer is the client, and `X-Forwarded-For` is ignored.
    pub trusted_proxies: Vec<IpNet>,
}

/// Why an IP rule could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpRuleError {
    /// A rule is not `allow NET` or `deny NET`.
    #[error(
        "IP rule {0:?} is not \"allow NETWORK\" or \"deny NETWORK\" (NETWORK an address or CIDR such as 10.0.0.0/8 or 2001:db8::/32)"
    )]
    Rule(String),
    /// A trusted proxy is not an address or CIDR.
    #[error("trusted proxy {0:?} is not an address or CIDR such as 10.0.0.1 or 10.0.0.0/8")]
    Proxy(String),
    /// No rules and a default of deny would refuse everyone.
    #[error(
        "the IP gate has no rules and refuses by default, so it would refuse every request; add allow rules or remove the gate"
    )]
    Empty,
}

/// The IP-rules gate (`ip`). Admits as `ip:<address>` with the attribute `Client-Ip`.
#[derive(Debug, Clone)]
pub struct IpRulesGate {
    config: IpRulesConfig,
}

impl IpRulesGate {
    /// A gate from its settings. Fails when it could only ever refuse.
    pub fn new(config: IpRulesConfig) -> Result<Self, IpRuleError> {
        if config.rules.is_empty() && config.default == IpAction::Deny {
            return Err(IpRuleError::Empty);
        }
        Ok(Self { config })
    }

    /// Parses a trusted-proxy entry (address or CIDR).
    pub fn parse_proxy(text: &str) -> Result<IpNet, IpRuleError> {
        parse_network(text.trim()).ok_or_else(|| IpRuleError::Proxy(text.to_string()))
    }

    /// The client address the rules apply to: the TCP peer, or, when the peer is a
    /// trusted proxy, the right-most `X-Forwarded-For` entry that is not itself a trusted
    /// proxy. `None` when a trusted proxy sent an unreadable `X-Forwarded-For`.
    pub fn client_address(&self, request: &GateRequest<'_>) -> Option<IpAddr> {
        let peer = request.client().ip().to_canonical();
        if !self.trusted(peer) {
            return Some(peer);
        }
        let mut hops = Vec::new();
        for value in request.headers().get_all("x-forwarded-for") {
            for hop in value.to_str().ok()?.split(',') {
                hops.push(hop.trim().parse::<IpAddr>().ok()?.to_canonical());
            }
        }
        Some(
            hops.into_iter()
                .rev()
                .find(|hop| !self.trusted(*hop))
                .unwrap_or(peer),
        )
    }

    fn trusted(&self, address: IpAddr) -> bool {
        self.config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&address))
    }
}

impl Gate for IpRulesGate {
    fn name(&self) -> &str {
        "ip"
    }

    fn evaluate(&self, request: &GateRequest<'_>, _now: SystemTime) -> Decision {
        let Some(client) = self.client_address(request) else {
            return Decision::deny(ReasonCode::IpDenied);
        };
        let action = self
            .config
            .rules
            .iter()
            .find(|rule| rule.network.contains(&client))
            .map_or(self.config.default, |rule| rule.action);
        match action {
            IpAction::Allow => Decision::Allow {
                gate: self.name().to_string(),
                identity: Identity::new(format!("ip:{client}"))
                    .with_attribute("Client-Ip", client.to_string()),
            },
            IpAction::Deny => Decision::deny(ReasonCode::IpDenied),
        }
    }
}

fn parse_network(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|net| net.trunc())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::{HeaderMap, HeaderValue, Method};

    use super::*;

    fn decide(gate: &IpRulesGate, peer: &str, xff: Option<&str>) -> Decision {
        let mut headers = HeaderMap::new();
        if let Some(xff) = xff {
            headers.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        }
        let method = Method::GET;
        let client: SocketAddr = peer.parse().unwrap();
        let request = GateRequest::new(&method, "https://a.test/", &headers, b"", client);
        gate.evaluate(&request, SystemTime::UNIX_EPOCH)
    }

    fn gate(rules: &[&str], proxies: &[&str]) -> IpRulesGate {
        IpRulesGate::new(IpRulesConfig {
            rules: rules.iter().map(|r| r.parse().unwrap()).collect(),
            default: IpAction::Deny,
            trusted_proxies: proxies
                .iter()
                .map(|p| IpRulesGate::parse_proxy(p).unwrap())
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn first_match_wins_and_the_default_denies() {
        let gate = gate(
            &[
                "deny 10.1.0.0/16",
                "allow 10.0.0.0/8",
                "allow 2001:db8::/32",
            ],
            &[],
        );
        match decide(&gate, "10.2.3.4:5", None) {
            Decision::Allow { identity, .. } => {
                assert_eq!(identity.principal, "ip:10.2.3.4");
            }
            other => panic!("{other:?}"),
        }
        let denied = decide(&gate, "10.1.3.4:5", None);
        assert_eq!(denied.deny_reason(), Some(ReasonCode::IpDenied));
        assert_eq!(
            decide(&gate, "192.0.2.1:5", None).deny_reason(),
            Some(ReasonCode::IpDenied)
        );
        assert!(decide(&gate, "[2001:db8::1]:5", None).is_allow());
        // an IPv4-mapped IPv6 peer is matched as IPv4
        assert!(decide(&gate, "[::ffff:10.2.3.4]:5", None).is_allow());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let plain = gate(&["allow 198.51.100.7"], &[]);
        // not behind a trusted proxy: the header is ignored
        assert!(!decide(&plain, "192.0.2.1:5", Some("198.51.100.7")).is_allow());

        let proxied = gate(&["allow 198.51.100.7"], &["192.0.2.0/24"]);
        assert!(decide(&proxied, "192.0.2.1:5", Some("198.51.100.7")).is_allow());
        // a client-forged left-most entry does not help: the right-most untrusted hop counts
        assert!(!decide(&proxied, "192.0.2.1:5", Some("198.51.100.7, 203.0.113.9")).is_allow());
        // chains of trusted proxies are skipped
        assert!(decide(&proxied, "192.0.2.1:5", Some("198.51.100.7, 192.0.2.2")).is_allow());
        // unreadable header from a trusted proxy: refused
        assert_eq!(
            decide(&proxied, "192.0.2.1:5", Some("not-an-ip")).deny_reason(),
            Some(ReasonCode::IpDenied)
        );
        // an untrusted peer's header is ignored even when it names an allowed address
        assert!(!decide(&proxied, "203.0.113.1:5", Some("198.51.100.7")).is_allow());
    }

    #[test]
    fn malformed_rules_say_what_is_expected() {
        for bad in [
            "permit 10.0.0.0/8",
            "allow",
            "allow 10.0.0.0/33",
            "deny nonsense",
        ] {
            let error = bad.parse::<IpRule>().unwrap_err().to_string();
            assert!(error.contains("is not \"allow NETWORK\""), "{bad}: {error}");
        }
        let error = IpRulesGate::new(IpRulesConfig {
            rules: vec![],
            default: IpAction::Deny,
            trusted_proxies: vec![],
        })
        .unwrap_err();
        assert_eq!(error, IpRuleError::Empty);
        assert_eq!(
            "allow 10.1.2.3/8"
                .parse::<IpRule>()
                .unwrap()
                .network
                .to_string(),
            "10.0.0.0/8"
        );
    }
}

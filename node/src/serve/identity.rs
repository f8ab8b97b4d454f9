//! Who is on the other end of a served connection, and the headers that tell the target.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use postern_proto::funnel_hop::FunnelHello;
use postern_proto::netmap::Peer;

/// The prefix of every identity header; every incoming header with it is stripped.
pub const HEADER_PREFIX: &str = "postern-";
/// Tailnet serve: the connecting user's login (usually an e-mail address).
pub const USER_LOGIN_HEADER: &str = "postern-user-login";
/// Tailnet serve: the connecting user's display name (RFC 2047 encoded if not ASCII).
pub const USER_NAME_HEADER: &str = "postern-user-name";
/// Tailnet serve: the user's groups, comma-separated (`eng, ops`).
pub const USER_GROUPS_HEADER: &str = "postern-user-groups";
/// Tailnet serve: the connecting node's name.
pub const NODE_NAME_HEADER: &str = "postern-node-name";
/// Tailnet serve: the connecting node's tags, comma-separated (`tag:ci`), if it has any.
pub const NODE_TAGS_HEADER: &str = "postern-node-tags";
/// Funnel: the public hostname the request came in on.
pub const FUNNEL_HOST_HEADER: &str = "postern-funnel-host";
/// Funnel: the gate(s) that admitted the request (same as the edge's header).
pub const GATE_HEADER: &str = "postern-gate";
/// Funnel: the admitted principal (same as the edge's header).
pub const IDENTITY_HEADER: &str = "postern-identity";
/// Funnel: prefix of one header per identity attribute (`Postern-Identity-Delivery`).
pub const IDENTITY_ATTRIBUTE_PREFIX: &str = "postern-identity-";

/// What the node knows about a peer, from its netmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer node's name (its DNS name).
    pub node_name: String,
    /// The owning user's login, e.g. `alice@example.com`.
    pub user_login: String,
    /// The owning user's display name.
    pub user_name: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The node's tags (`tag:ci`).
    pub tags: Vec<String>,
    /// Whether the coord marked the peer as an ingress (only ingresses may open funnel
    /// streams).
    pub is_ingress: bool,
}

impl From<&Peer> for PeerIdentity {
    fn from(peer: &Peer) -> Self {
        Self {
            node_name: peer.name.clone(),
            user_login: peer.user.login.clone(),
            user_name: peer.user.display_name.clone(),
            groups: peer.user.groups.clone(),
            tags: peer.tags.clone(),
            is_ingress: peer.is_ingress,
        }
    }
}

/// Looks peers up by tailnet address. The node runtime implements it from the netmap;
/// tests use [`StaticPeerDirectory`] or a closure.
///
/// The address is the source of a connection that arrived through WireGuard, which already
/// checked it against the sending peer's allowed IPs: an address maps to the peer that
/// owns it. Called once per accepted connection, so it should be cheap (a map lookup).
pub trait PeerDirectory: Send + Sync {
    /// The peer owning `addr`, or `None` if no peer does.
    fn peer_by_addr(&self, addr: IpAddr) -> Option<PeerIdentity>;
}

impl<F> PeerDirectory for F
where
    F: Fn(IpAddr) -> Option<PeerIdentity> + Send + Sync,
{
    fn peer_by_addr(&self, addr: IpAddr) -> Option<PeerIdentity> {
        self(addr)
    }
}

/// A fixed address → peer map: for tests, and for a runtime that rebuilds it on each
/// netmap change.
#[derive(Debug, Clone, Default)]
pub struct StaticPeerDirectory {
    peers: HashMap<IpAddr, PeerIdentity>,
}

impl StaticPeerDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `addr` to `peer`.
    #[must_use]
    pub fn with(mut self, addr: IpAddr, peer: PeerIdentity) -> Self {
        self.peers.insert(addr, peer);
        self
    }

    /// Every address of every netmap peer.
    pub fn from_peers(peers: &[Peer]) -> Self {
        let mut directory = Self::new();
        for peer in peers {
            let identity = PeerIdentity::from(peer);
            for addr in &peer.addresses {
                directory.peers.insert(*addr, identity.clone());
            }
        }
        directory
    }
}

impl PeerDirectory for StaticPeerDirectory {
    fn peer_by_addr(&self, addr: IpAddr) -> Option<PeerIdentity> {
        self.peers.get(&addr).cloned()
    }
}

/// Who a proxied request came from: a tailnet peer, or a public client through a funnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOrigin {
    /// A tailnet peer connected to the node directly.
    Tailnet {
        /// The peer's tailnet address.
        addr: IpAddr,
        /// Who it is.
        peer: PeerIdentity,
    },
    /// The ingress forwarded an admitted public request.
    Funnel {
        /// The request's client, hostname and admitted identity: the stream's hello (a
        /// version 1 stream is for one client), or on a pooled stream (version 2) the
        /// context the request itself carried, so each request has its own identity.
        hello: FunnelHello,
    },
}

impl RequestOrigin {
    /// The address of the client the request is for (the peer, or the public client).
    pub fn client_ip(&self) -> IpAddr {
        match self {
            RequestOrigin::Tailnet { addr, .. } => *addr,
            RequestOrigin::Funnel { hello } => hello.client.ip(),
        }
    }
}

impl fmt::Display for RequestOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestOrigin::Tailnet { addr, peer } => {
                write!(f, "tailnet peer {} ({addr})", peer.node_name)
            }
            RequestOrigin::Funnel { hello } => {
                write!(f, "funnel {} client {}", hello.hostname, hello.client)
            }
        }
    }
}

/// Removes every `Postern-*` header from `headers`, then sets the identity headers of
/// `origin`. Call on every request before it reaches the target; this is what makes
/// identity headers unforgeable.
///
/// Values that are not printable ASCII are RFC 2047 encoded (`=?utf-8?b?...?=`); control
/// characters are dropped. A header that cannot be built is left out, never sent half-made.
pub fn set_identity_headers(headers: &mut HeaderMap, origin: &RequestOrigin) {
    strip_identity_headers(headers);
    let mut set = |name: &str, value: &str| {
        if let (Ok(name), Some(value)) =
            (HeaderName::from_bytes(name.as_bytes()), header_value(value))
        {
            headers.append(name, value);
        }
    };
    match origin {
        RequestOrigin::Tailnet { peer, .. } => {
            if !peer.user_login.is_empty() {
                set(USER_LOGIN_HEADER, &peer.user_login);
            }
            if !peer.user_name.is_empty() {
                set(USER_NAME_HEADER, &peer.user_name);
            }
            if !peer.groups.is_empty() {
                set(USER_GROUPS_HEADER, &peer.groups.join(", "));
            }
            set(NODE_NAME_HEADER, &peer.node_name);
            if !peer.tags.is_empty() {
                set(NODE_TAGS_HEADER, &peer.tags.join(", "));
            }
        }
        RequestOrigin::Funnel { hello } => {
            set(FUNNEL_HOST_HEADER, hello.hostname.as_str());
            if let Some(admission) = &hello.admission {
                set(GATE_HEADER, admission.gate.as_str());
                set(IDENTITY_HEADER, admission.principal.as_str());
                for (name, value) in &admission.attributes {
                    let full = format!(
                        "{IDENTITY_ATTRIBUTE_PREFIX}{}",
                        name.as_str().to_ascii_lowercase()
                    );
                    set(&full, value.as_str());
                }
            }
        }
    }
}

/// Removes every header whose name starts with `Postern-`.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let owned: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(HEADER_PREFIX))
        .cloned()
        .collect();
    for name in owned {
        headers.remove(&name);
    }
}

/// A header value for `text`: as is when printable ASCII, RFC 2047 base64 otherwise.
fn header_value(text: &str) -> Option<HeaderValue> {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return HeaderValue::from_str(clean.trim()).ok();
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(clean.as_bytes());
    HeaderValue::from_str(&format!("=?utf-8?b?{encoded}?=")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::funnel_hop::{Admission, AttributeName, FunnelHostname, IdentityText};

    fn alice() -> PeerIdentity {
        PeerIdentity {
            node_name: "alice-laptop.tail.example".into(),
            user_login: "alice@example.com".into(),
            user_name: "Alice Émile".into(),
            groups: vec!["eng".into(), "ops".into()],
            tags: vec![],
            is_ingress: false,
        }
    }

    #[test]
    fn tailnet_headers_replace_forged_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("postern-user-login", HeaderValue::from_static("root@evil"));
        headers.insert("Postern-Anything", HeaderValue::from_static("x"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let origin = RequestOrigin::Tailnet {
            addr: "100.64.0.2".parse().unwrap(),
            peer: alice(),
        };
        set_identity_headers(&mut headers, &origin);
        assert_eq!(headers[USER_LOGIN_HEADER], "alice@example.com");
        assert_eq!(headers.get_all(USER_LOGIN_HEADER).iter().count(), 1);
        assert_eq!(headers[USER_NAME_HEADER], "=?utf-8?b?QWxpY2Ugw4ltaWxl?=");
        assert_eq!(headers[USER_GROUPS_HEADER], "eng, ops");
        assert_eq!(headers[NODE_NAME_HEADER], "alice-laptop.tail.example");
        assert!(headers.get(NODE_TAGS_HEADER).is_none());
        assert!(headers.get("postern-anything").is_none());
        assert_eq!(headers["x-kept"], "1");
    }

    #[test]
    fn funnel_headers_come_from_the_hello() {
        let mut headers = HeaderMap::new();
        headers.insert("postern-identity", HeaderValue::from_static("forged"));
        let hello = FunnelHello {
            client: "203.0.113.9:1000".parse().unwrap(),
            target_port: 3000,
            hostname: FunnelHostname::parse("hooks.example.com").unwrap(),
            admission: Some(Admission {
                gate: IdentityText::lossy("webhook:github"),
                principal: IdentityText::lossy("webhook:github"),
                attributes: vec![(
                    AttributeName::parse("Delivery").unwrap(),
                    IdentityText::lossy("abc"),
                )],
            }),
            per_request_context: false,
        };
        set_identity_headers(&mut headers, &RequestOrigin::Funnel { hello });
        assert_eq!(headers[FUNNEL_HOST_HEADER], "hooks.example.com");
        assert_eq!(headers[GATE_HEADER], "webhook:github");
        assert_eq!(headers[IDENTITY_HEADER], "webhook:github");
        assert_eq!(headers["postern-identity-delivery"], "abc");
        assert_eq!(headers.len(), 4);
    }
}

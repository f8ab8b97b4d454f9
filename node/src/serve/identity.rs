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

    /// Whether the peer owning `addr` is an ingress. Asked for every request on a pooled
    /// funnel stream; the default looks the whole peer up, a directory that can answer
    /// without copying it should.
    fn is_ingress(&self, addr: IpAddr) -> bool {
        self.peer_by_addr(addr).is_some_and(|peer| peer.is_ingress)
    }
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

    fn is_ingress(&self, addr: IpAddr) -> bool {
        self.peers.get(&addr).is_some_and(|peer| peer.is_ingress)
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
    static USER_LOGIN: HeaderName = HeaderName::from_static(USER_LOGIN_HEADER);
    static USER_NAME: HeaderName = HeaderName::from_static(USER_NAME_HEADER);
    static USER_GROUPS: HeaderName = HeaderName::from_static(USER_GROUPS_HEADER);
    static NODE_NAME: HeaderName = HeaderName::from_static(NODE_NAME_HEADER);
    static NODE_TAGS: HeaderName = HeaderName::from_static(NODE_TAGS_HEADER);
    static FUNNEL_HOST: HeaderName = HeaderName::from_static(FUNNEL_HOST_HEADER);
    static GATE: HeaderName = HeaderName::from_static(GATE_HEADER);
    static IDENTITY: HeaderName = HeaderName::from_static(IDENTITY_HEADER);
    strip_identity_headers(headers);
    let mut set = |name: &HeaderName, value: &str| {
        if let Some(value) = identity_header_value(value) {
            headers.append(name.clone(), value);
        }
    };
    match origin {
        RequestOrigin::Tailnet { peer, .. } => {
            if !peer.user_login.is_empty() {
                set(&USER_LOGIN, &peer.user_login);
            }
            if !peer.user_name.is_empty() {
                set(&USER_NAME, &peer.user_name);
            }
            if !peer.groups.is_empty() {
                set(&USER_GROUPS, &peer.groups.join(", "));
            }
            set(&NODE_NAME, &peer.node_name);
            if !peer.tags.is_empty() {
                set(&NODE_TAGS, &peer.tags.join(", "));
            }
        }
        RequestOrigin::Funnel { hello } => {
            set(&FUNNEL_HOST, hello.hostname.as_str());
            if let Some(admission) = &hello.admission {
                set(&GATE, admission.gate.as_str());
                set(&IDENTITY, admission.principal.as_str());
                for (name, value) in &admission.attributes {
                    if let Some(name) = attribute_header_name(name.as_str()) {
                        set(&name, value.as_str());
                    }
                }
            }
        }
    }
}

/// The attribute names the built-in gates set, with their header names made once.
static KNOWN_ATTRIBUTES: [(&str, HeaderName); 11] = [
    (
        "Delivery",
        HeaderName::from_static("postern-identity-delivery"),
    ),
    ("Event", HeaderName::from_static("postern-identity-event")),
    ("Email", HeaderName::from_static("postern-identity-email")),
    ("Groups", HeaderName::from_static("postern-identity-groups")),
    ("Login", HeaderName::from_static("postern-identity-login")),
    ("Name", HeaderName::from_static("postern-identity-name")),
    (
        "Subject",
        HeaderName::from_static("postern-identity-subject"),
    ),
    ("From", HeaderName::from_static("postern-identity-from")),
    (
        "Client-Ip",
        HeaderName::from_static("postern-identity-client-ip"),
    ),
    (
        "Cert-Subject",
        HeaderName::from_static("postern-identity-cert-subject"),
    ),
    (
        "Cert-Sha256",
        HeaderName::from_static("postern-identity-cert-sha256"),
    ),
];

/// The header of identity attribute `name`: `postern-identity-<name>`, lower case, or
/// `None` when `name` is not header-name text. The edge and the node both name attribute
/// headers with it. The names of the built-in gates' attributes are made once; others are
/// built on the stack (no allocation besides the header name's own).
pub fn attribute_header_name(name: &str) -> Option<HeaderName> {
    if let Some((_, known)) = KNOWN_ATTRIBUTES.iter().find(|(known, _)| *known == name) {
        return Some(known.clone());
    }
    const PREFIX: &[u8] = IDENTITY_ATTRIBUTE_PREFIX.as_bytes();
    let mut buffer = [0u8; 96];
    let total = PREFIX.len() + name.len();
    match buffer.get_mut(..total) {
        Some(full) => {
            let (prefix, rest) = full.split_at_mut(PREFIX.len());
            prefix.copy_from_slice(PREFIX);
            rest.copy_from_slice(name.as_bytes());
            rest.make_ascii_lowercase();
            HeaderName::from_bytes(full).ok()
        }
        None => {
            let full = format!("{IDENTITY_ATTRIBUTE_PREFIX}{}", name.to_ascii_lowercase());
            HeaderName::from_bytes(full.as_bytes()).ok()
        }
    }
}

/// Removes every header whose name starts with `Postern-`.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let owned = |name: &HeaderName| name.as_str().starts_with(HEADER_PREFIX);
    // The usual request has none: look before collecting.
    if !headers.keys().any(owned) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|name| owned(name)).cloned().collect();
    for name in names {
        headers.remove(&name);
    }
}

/// A header value for identity `text`: as is (trimmed) when printable ASCII, RFC 2047
/// base64 otherwise; control characters are dropped. The edge and the node write identity
/// values with it, so a target sees the same value whichever of them wrote it.
pub fn identity_header_value(text: &str) -> Option<HeaderValue> {
    if text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        // The usual case: nothing to drop or encode, no intermediate copy.
        return HeaderValue::from_str(text.trim()).ok();
    }
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

    #[test]
    fn known_attribute_names_are_the_names_they_would_be_built_as() {
        for (name, header) in &KNOWN_ATTRIBUTES {
            let built = format!("{IDENTITY_ATTRIBUTE_PREFIX}{}", name.to_ascii_lowercase());
            assert_eq!(header.as_str(), built, "{name}");
        }
        assert_eq!(
            attribute_header_name("X-Custom").unwrap().as_str(),
            "postern-identity-x-custom"
        );
        assert!(attribute_header_name("bad name").is_none());
        assert!(attribute_header_name(&"a".repeat(200)).is_some());
    }

    #[test]
    fn values_lose_control_characters_and_non_ascii_is_encoded() {
        assert_eq!(
            identity_header_value("  plain text ").unwrap(),
            "plain text"
        );
        assert_eq!(identity_header_value("a\r\nb").unwrap(), "ab");
        assert_eq!(
            identity_header_value("Émile").unwrap(),
            "=?utf-8?b?w4ltaWxl?="
        );
    }
}

//! The wg-quick configuration format (`wg0.conf`), for `postern wg` and for interop tests.
//!
//! Accepted, as wg-quick accepts it: `[Interface]` with `PrivateKey`, `Address` (a comma
//! list of IPv4 and IPv6 addresses, each with an optional `/prefix`), `ListenPort`, `MTU`
//! and `DNS` (servers and search domains, stored); `[Peer]` with `PublicKey`,
//! `PresharedKey`, `AllowedIPs`, `Endpoint` (`host:port` or `[v6]:port`) and
//! `PersistentKeepalive` (seconds or `off`). Section names and keys are case-insensitive,
//! `#` starts a comment anywhere on a line, and list keys may repeat (their values add up).
//!
//! wg-quick's hooks (`PreUp`, `PostUp`, `PreDown`, `PostDown`), `Table`, `SaveConfig` and
//! `FwMark` are refused with an error saying so, rather than silently ignored: postern
//! runs no shell hooks and manages no routing tables.
//!
//! Errors read `FILE:LINE: message` and say what was expected. Private and preshared keys
//! never appear in error messages or in `Debug` output.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::engine::{EngineConfig, PathId, PeerConfig};

/// A parsed wg-quick configuration file.
#[derive(Debug, Clone)]
pub struct WgConfig {
    /// The `[Interface]` section.
    pub interface: Interface,
    /// The `[Peer]` sections, in file order.
    pub peers: Vec<Peer>,
}

/// The `[Interface]` section: this node.
#[derive(Debug, Clone)]
pub struct Interface {
    /// `PrivateKey`: this node's key.
    pub private_key: PrivateKey,
    /// `Address`: this node's tunnel addresses with their prefixes (a bare address is /32 or
    /// /128).
    pub addresses: Vec<IpNet>,
    /// `ListenPort`: the UDP port to listen on; `None` picks one.
    pub listen_port: Option<u16>,
    /// `MTU` of the tunnel.
    pub mtu: Option<u16>,
    /// `DNS` entries that are IP addresses: resolvers.
    pub dns_servers: Vec<IpAddr>,
    /// `DNS` entries that are names: search domains.
    pub dns_search: Vec<String>,
}

/// One `[Peer]` section.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `PublicKey`: identifies the peer.
    pub public_key: PublicKey,
    /// `PresharedKey`: an extra symmetric key mixed into handshakes.
    pub preshared_key: Option<PresharedKey>,
    /// `AllowedIPs`: networks routed to the peer and accepted from it.
    pub allowed_ips: Vec<IpNet>,
    /// `Endpoint`: where to reach the peer first.
    pub endpoint: Option<Endpoint>,
    /// `PersistentKeepalive` in seconds; `None` when absent or `off`.
    pub persistent_keepalive: Option<u16>,
}

/// A peer's `Endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A DNS name and port; the caller resolves it.
    Host {
        /// The name.
        host: String,
        /// The UDP port.
        port: u16,
    },
}

/// A WireGuard private key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

/// A WireGuard preshared key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct PresharedKey([u8; 32]);

/// A configuration file that could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{}{kind}", line.map(|l| format!("{l}: ")).unwrap_or_else(|| " ".to_owned()))]
pub struct ConfigError {
    /// The file name as given to the parser.
    pub file: String,
    /// The 1-based line the error is on, if it is about one line.
    pub line: Option<usize>,
    /// What was wrong.
    pub kind: ConfigErrorKind,
}

/// What was wrong with a configuration file. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Read(String),
    /// A `[...]` header other than `[Interface]` or `[Peer]`.
    #[error("unknown section `[{0}]`: expected `[Interface]` or `[Peer]`")]
    UnknownSection(String),
    /// A line that is neither a section header, a `Key = Value` pair, a comment nor empty.
    #[error("expected a section header like `[Peer]` or a `Key = Value` line")]
    Malformed,
    /// A `Key = Value` line before any section.
    #[error("`{0}` is outside any section: put it under `[Interface]` or `[Peer]`")]
    OutsideSection(String),
    /// A key this section does not have.
    #[error("unknown key `{key}` in [{section}]: expected one of {expected}")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// `Interface` or `Peer`.
        section: &'static str,
        /// The keys the section accepts.
        expected: &'static str,
    },
    /// A wg-quick key that postern deliberately does not support.
    #[error("`{key}` is not supported: {why}; remove the line")]
    Unsupported {
        /// The key as written.
        key: String,
        /// Why.
        why: &'static str,
    },
    /// A key with nothing after `=`.
    #[error("`{0}` has no value: expected `{0} = ...`")]
    EmptyValue(String),
    /// A single-valued key given twice in one section.
    #[error("`{key}` is given twice in this [{section}] section: keep one")]
    Duplicate {
        /// The key.
        key: &'static str,
        /// `Interface` or `Peer`.
        section: &'static str,
    },
    /// A key that is not 32 bytes of standard base64. The value is not echoed.
    #[error(
        "`{key}` is not a WireGuard key: expected 44 characters of base64 encoding 32 bytes \
         (as `wg genkey` or `wg pubkey` print), found {len} characters"
    )]
    BadKey {
        /// Which key (`PrivateKey`, `PublicKey`, `PresharedKey`).
        key: &'static str,
        /// How many characters were found.
        len: usize,
    },
    /// A bad address or network.
    #[error(
        "`{key}`: `{value}` is not an IP address with an optional /prefix (like `10.0.0.1/24` or `fd00::1/64`)"
    )]
    BadNetwork {
        /// Which key.
        key: &'static str,
        /// The offending list item.
        value: String,
    },
    /// A bad number.
    #[error("`{key}`: expected {expected}, found `{value}`")]
    BadNumber {
        /// Which key.
        key: &'static str,
        /// What range or form was expected.
        expected: &'static str,
        /// What was found.
        value: String,
    },
    /// A bad endpoint.
    #[error("`Endpoint`: expected `host:port`, `1.2.3.4:port` or `[v6addr]:port`, found `{0}`")]
    BadEndpoint(String),
    /// A bad DNS entry.
    #[error("`DNS`: `{0}` is neither an IP address nor a domain name")]
    BadDns(String),
    /// No `[Interface]` section.
    #[error("no [Interface] section: add one with at least `PrivateKey = ...`")]
    MissingInterface,
    /// Two `[Interface]` sections.
    #[error("a second [Interface] section: a file describes one interface")]
    SecondInterface,
    /// A section without its required key.
    #[error("this [{section}] section has no `{key}`: add `{key} = ...`")]
    MissingKey {
        /// The section.
        section: &'static str,
        /// The key.
        key: &'static str,
    },
    /// Two peers with one public key.
    #[error(
        "this peer's PublicKey is already used by the [Peer] on line {0}: merge the two sections"
    )]
    DuplicatePeer(usize),
}

impl WgConfig {
    /// Parses `text`, naming `file` in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        Parser::new(file).parse(text)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            kind: ConfigErrorKind::Read(e.to_string()),
        })?;
        Self::parse(&file, &text)
    }

    /// The engine configuration for this interface.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig::new(self.interface.private_key.0.clone())
    }
}

impl Peer {
    /// The engine's view of this peer. An `Endpoint` given as a host name must be resolved
    /// by the caller and passed as `resolved`; an IP endpoint is used as is.
    pub fn engine_peer(&self, resolved: Option<SocketAddr>) -> PeerConfig {
        let endpoint = match (&self.endpoint, resolved) {
            (_, Some(addr)) => Some(PathId::Direct(addr)),
            (Some(Endpoint::Addr(addr)), None) => Some(PathId::Direct(*addr)),
            _ => None,
        };
        PeerConfig {
            public_key: self.public_key,
            preshared_key: self.preshared_key.as_ref().map(|k| k.0),
            allowed_ips: self.allowed_ips.clone(),
            endpoint,
            persistent_keepalive: self.persistent_keepalive,
        }
    }
}

impl PrivateKey {
    /// The key for boringtun.
    pub fn secret(&self) -> &StaticSecret {
        &self.0
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.0)
    }
}

impl PresharedKey {
    /// The key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(addr) => write!(f, "{addr}"),
            Endpoint::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

const INTERFACE_KEYS: &str = "PrivateKey, Address, ListenPort, MTU, DNS";
const PEER_KEYS: &str = "PublicKey, PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive";

#[derive(Default)]
struct InterfaceDraft {
    line: usize,
    private_key: Option<PrivateKey>,
    addresses: Vec<IpNet>,
    listen_port: Option<u16>,
    mtu: Option<u16>,
    dns_servers: Vec<IpAddr>,
    dns_search: Vec<String>,
}

#[derive(Default)]
struct PeerDraft {
    line: usize,
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    allowed_ips: Vec<IpNet>,
    endpoint: Option<Endpoint>,
    persistent_keepalive: Option<Option<u16>>,
}

enum Section {
    None,
    Interface,
    Peer,
}

struct Parser<'f> {
    file: &'f str,
    line: usize,
    section: Section,
    interface: Option<InterfaceDraft>,
    /// The `[Peer]` being read; moved to `peers` when the next section starts.
    current_peer: Option<PeerDraft>,
    peers: Vec<PeerDraft>,
}

impl<'f> Parser<'f> {
    fn new(file: &'f str) -> Self {
        Self {
            file,
            line: 0,
            section: Section::None,
            interface: None,
            current_peer: None,
            peers: Vec::new(),
        }
    }

    fn error(&self, kind: ConfigErrorKind) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: Some(self.line),
            kind,
        }
    }

    fn parse(mut self, text: &str) -> Result<WgConfig, ConfigError> {
        for (n, raw) in text.lines().enumerate() {
            self.line = n + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| self.error(ConfigErrorKind::Malformed))?;
                self.start_section(name.trim())?;
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| self.error(ConfigErrorKind::Malformed))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(self.error(ConfigErrorKind::Malformed));
            }
            if value.is_empty() {
                return Err(self.error(ConfigErrorKind::EmptyValue(key.to_owned())));
            }
            match self.section {
                Section::None => {
                    return Err(self.error(ConfigErrorKind::OutsideSection(key.to_owned())));
                }
                Section::Interface => self.interface_key(key, value)?,
                Section::Peer => self.peer_key(key, value)?,
            }
        }
        self.finish()
    }

    fn start_section(&mut self, name: &str) -> Result<(), ConfigError> {
        if let Some(peer) = self.current_peer.take() {
            self.peers.push(peer);
        }
        if name.eq_ignore_ascii_case("interface") {
            if self.interface.is_some() {
                return Err(self.error(ConfigErrorKind::SecondInterface));
            }
            self.interface = Some(InterfaceDraft {
                line: self.line,
                ..InterfaceDraft::default()
            });
            self.section = Section::Interface;
        } else if name.eq_ignore_ascii_case("peer") {
            self.current_peer = Some(PeerDraft {
                line: self.line,
                ..PeerDraft::default()
            });
            self.section = Section::Peer;
        } else {
            return Err(self.error(ConfigErrorKind::UnknownSection(name.to_owned())));
        }
        Ok(())
    }

    fn interface_key(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let lower = key.to_ascii_lowercase();
        let result = match lower.as_str() {
            "privatekey" => parse_key("PrivateKey", value).and_then(|bytes| {
                let draft = self.interface_mut();
                if draft.private_key.is_some() {
                    return Err(ConfigErrorKind::Duplicate {
                        key: "PrivateKey",
                        section: "Interface",
                    });
                }
                draft.private_key = Some(PrivateKey(StaticSecret::from(bytes)));
                Ok(())
            }),
            "address" => parse_networks("Address", value).map(|nets| {
                self.interface_mut().addresses.extend(nets);
            }),
            "listenport" => {
                parse_number("ListenPort", value, "a UDP port number from 0 to 65535", 0).and_then(
                    |port| {
                        let draft = self.interface_mut();
                        if draft.listen_port.replace(port).is_some() {
                            return Err(ConfigErrorKind::Duplicate {
                                key: "ListenPort",
                                section: "Interface",
                            });
                        }
                        Ok(())
                    },
                )
            }
            "mtu" => parse_number("MTU", value, "a number of bytes from 576 to 65535", 576)
                .and_then(|mtu| {
                    let draft = self.interface_mut();
                    if draft.mtu.replace(mtu).is_some() {
                        return Err(ConfigErrorKind::Duplicate {
                            key: "MTU",
                            section: "Interface",
                        });
                    }
                    Ok(())
                }),
            "dns" => parse_dns(value).map(|(servers, search)| {
                let draft = self.interface_mut();
                draft.dns_servers.extend(servers);
                draft.dns_search.extend(search);
            }),
            "preup" | "postup" | "predown" | "postdown" => Err(ConfigErrorKind::Unsupported {
                key: key.to_owned(),
                why: "postern does not run wg-quick's shell hooks",
            }),
            "table" => Err(ConfigErrorKind::Unsupported {
                key: key.to_owned(),
                why: "postern manages no kernel routing tables",
            }),
            "saveconfig" => Err(ConfigErrorKind::Unsupported {
                key: key.to_owned(),
                why: "postern never writes this file back",
            }),
            "fwmark" => Err(ConfigErrorKind::Unsupported {
                key: key.to_owned(),
                why: "postern's userspace sockets are not marked",
            }),
            _ => Err(ConfigErrorKind::UnknownKey {
                key: key.to_owned(),
                section: "Interface",
                expected: INTERFACE_KEYS,
            }),
        };
        result.map_err(|kind| self.error(kind))
    }

    fn peer_key(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let lower = key.to_ascii_lowercase();
        let duplicate = |key| ConfigErrorKind::Duplicate {
            key,
            section: "Peer",
        };
        let result = match lower.as_str() {
            "publickey" => parse_key("PublicKey", value).and_then(|bytes| {
                let draft = self.peer_mut();
                if draft.public_key.replace(PublicKey::from(bytes)).is_some() {
                    return Err(duplicate("PublicKey"));
                }
                Ok(())
            }),
            "presharedkey" => parse_key("PresharedKey", value).and_then(|bytes| {
                let draft = self.peer_mut();
                if draft.preshared_key.replace(PresharedKey(bytes)).is_some() {
                    return Err(duplicate("PresharedKey"));
                }
                Ok(())
            }),
            "allowedips" => parse_networks("AllowedIPs", value).map(|nets| {
                self.peer_mut().allowed_ips.extend(nets);
            }),
            "endpoint" => parse_endpoint(value).and_then(|endpoint| {
                let draft = self.peer_mut();
                if draft.endpoint.replace(endpoint).is_some() {
                    return Err(duplicate("Endpoint"));
                }
                Ok(())
            }),
            "persistentkeepalive" => parse_keepalive(value).and_then(|keepalive| {
                let draft = self.peer_mut();
                if draft.persistent_keepalive.replace(keepalive).is_some() {
                    return Err(duplicate("PersistentKeepalive"));
                }
                Ok(())
            }),
            _ => Err(ConfigErrorKind::UnknownKey {
                key: key.to_owned(),
                section: "Peer",
                expected: PEER_KEYS,
            }),
        };
        result.map_err(|kind| self.error(kind))
    }

    fn interface_mut(&mut self) -> &mut InterfaceDraft {
        self.interface.get_or_insert_with(InterfaceDraft::default)
    }

    fn peer_mut(&mut self) -> &mut PeerDraft {
        self.current_peer.get_or_insert_with(PeerDraft::default)
    }

    fn finish(mut self) -> Result<WgConfig, ConfigError> {
        if let Some(peer) = self.current_peer.take() {
            self.peers.push(peer);
        }
        let at = |line: usize, kind| ConfigError {
            file: self.file.to_owned(),
            line: Some(line),
            kind,
        };
        let Some(iface) = self.interface else {
            return Err(ConfigError {
                file: self.file.to_owned(),
                line: None,
                kind: ConfigErrorKind::MissingInterface,
            });
        };
        let private_key = iface.private_key.ok_or_else(|| {
            at(
                iface.line,
                ConfigErrorKind::MissingKey {
                    section: "Interface",
                    key: "PrivateKey",
                },
            )
        })?;
        let mut peers: Vec<Peer> = Vec::with_capacity(self.peers.len());
        let mut seen: Vec<([u8; 32], usize)> = Vec::new();
        for draft in self.peers {
            let public_key = draft.public_key.ok_or_else(|| {
                at(
                    draft.line,
                    ConfigErrorKind::MissingKey {
                        section: "Peer",
                        key: "PublicKey",
                    },
                )
            })?;
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == public_key.to_bytes()) {
                return Err(at(draft.line, ConfigErrorKind::DuplicatePeer(*first)));
            }
            seen.push((public_key.to_bytes(), draft.line));
            peers.push(Peer {
                public_key,
                preshared_key: draft.preshared_key,
                allowed_ips: draft.allowed_ips,
                endpoint: draft.endpoint,
                persistent_keepalive: draft.persistent_keepalive.flatten(),
            });
        }
        Ok(WgConfig {
            interface: Interface {
                private_key,
                addresses: iface.addresses,
                listen_port: iface.listen_port,
                mtu: iface.mtu,
                dns_servers: iface.dns_servers,
                dns_search: iface.dns_search,
            },
            peers,
        })
    }
}

fn parse_key(key: &'static str, value: &str) -> Result<[u8; 32], ConfigErrorKind> {
    let bad = || ConfigErrorKind::BadKey {
        key,
        len: value.chars().count(),
    };
    if value.len() != 44 {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

fn parse_networks(key: &'static str, value: &str) -> Result<Vec<IpNet>, ConfigErrorKind> {
    value
        .split(',')
        .map(str::trim)
        .map(|item| {
            let parsed = if item.contains('/') {
                item.parse::<IpNet>().ok()
            } else {
                item.parse::<IpAddr>().ok().map(IpNet::from)
            };
            parsed.ok_or_else(|| ConfigErrorKind::BadNetwork {
                key,
                value: item.to_owned(),
            })
        })
        .collect()
}

fn parse_number(
    key: &'static str,
    value: &str,
    expected: &'static str,
    min: u16,
) -> Result<u16, ConfigErrorKind> {
    value
        .parse::<u16>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| ConfigErrorKind::BadNumber {
            key,
            expected,
            value: value.to_owned(),
        })
}

fn parse_keepalive(value: &str) -> Result<Option<u16>, ConfigErrorKind> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let seconds = parse_number(
        "PersistentKeepalive",
        value,
        "a number of seconds from 0 to 65535, or `off`",
        0,
    )?;
    Ok((seconds > 0).then_some(seconds))
}

fn parse_endpoint(value: &str) -> Result<Endpoint, ConfigErrorKind> {
    let bad = || ConfigErrorKind::BadEndpoint(value.to_owned());
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(Endpoint::Addr(addr));
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if !is_domain_name(host) {
        return Err(bad());
    }
    Ok(Endpoint::Host {
        host: host.to_owned(),
        port,
    })
}

fn parse_dns(value: &str) -> Result<(Vec<IpAddr>, Vec<String>), ConfigErrorKind> {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    for item in value.split(',').map(str::trim) {
        if let Ok(ip) = item.parse::<IpAddr>() {
            servers.push(ip);
        } else if is_domain_name(item) {
            search.push(item.to_owned());
        } else {
            return Err(ConfigErrorKind::BadDns(item.to_owned()));
        }
    }
    Ok((servers, search))
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
fn is_domain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // An all-numeric "name" is a mistyped IP address, not a host.
        && !s.chars().all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIV: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PUB: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const PSK: &str = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";

    fn good() -> String {
        format!(
            "# a comment\n\
             [Interface]\n\
             PrivateKey = {PRIV}\n\
             address = 10.0.0.1/24, fd00::1/64 # trailing comment\n\
             Address=10.0.1.1\n\
             ListenPort = 51820\n\
             MTU = 1420\n\
             DNS = 1.1.1.1, example.com\n\
             \n\
             [peer]\n\
             PublicKey = {PUB}\n\
             PresharedKey = {PSK}\n\
             AllowedIPs = 10.0.0.2/32, fd00::2/128\n\
             AllowedIPs = 192.168.0.0/16\n\
             Endpoint = [2001:db8::1]:51820\n\
             PersistentKeepalive = 25\n\
             [Peer]\n\
             PublicKey = {}\n\
             Endpoint = vpn.example.com:4500\n\
             PersistentKeepalive = off\n",
            PRIV.replace('y', "z")
        )
    }

    #[test]
    fn parses_a_full_file() {
        let c = WgConfig::parse("wg0.conf", &good()).unwrap();
        let i = &c.interface;
        assert_eq!(i.addresses.len(), 3);
        assert_eq!(i.addresses[2], "10.0.1.1/32".parse::<IpNet>().unwrap());
        assert_eq!(i.listen_port, Some(51820));
        assert_eq!(i.mtu, Some(1420));
        assert_eq!(i.dns_servers, vec!["1.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(i.dns_search, vec!["example.com".to_owned()]);
        assert_eq!(c.peers.len(), 2);
        let p = &c.peers[0];
        assert_eq!(p.allowed_ips.len(), 3);
        assert_eq!(
            p.endpoint,
            Some(Endpoint::Addr("[2001:db8::1]:51820".parse().unwrap()))
        );
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.preshared_key.is_some());
        assert_eq!(
            c.peers[1].endpoint,
            Some(Endpoint::Host {
                host: "vpn.example.com".into(),
                port: 4500
            })
        );
        assert_eq!(c.peers[1].persistent_keepalive, None);
        // The engine view carries the same peer.
        let ep = p.engine_peer(None);
        assert_eq!(ep.allowed_ips, p.allowed_ips);
        assert!(ep.endpoint.is_some());
        assert!(c.peers[1].engine_peer(None).endpoint.is_none());
    }

    #[test]
    fn secrets_never_reach_debug_or_errors() {
        let c = WgConfig::parse("wg0.conf", &good()).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(PRIV) && !debug.contains(PSK), "{debug}");
        assert!(debug.contains("<redacted>"));
        // A private key with one character too many: the error does not echo it.
        let text = format!("[Interface]\nPrivateKey = {PRIV}A\n");
        let err = WgConfig::parse("wg0.conf", &text).unwrap_err().to_string();
        assert!(!err.contains(&PRIV[..20]), "{err}");
        // A line without `=` that holds a key is not echoed either.
        let text = format!("[Interface]\nPrivateKey {PRIV}\n");
        let err = WgConfig::parse("wg0.conf", &text).unwrap_err().to_string();
        assert!(!err.contains(&PRIV[..20]), "{err}");
    }

    fn err(text: &str) -> String {
        WgConfig::parse("wg0.conf", text).unwrap_err().to_string()
    }

    #[test]
    fn each_mistake_has_a_located_message_that_says_what_is_expected() {
        let iface = format!("[Interface]\nPrivateKey = {PRIV}\n");
        let cases: Vec<(String, &str)> = vec![
            (
                "[Interfaces]\n".into(),
                "wg0.conf:1: unknown section `[Interfaces]`: expected `[Interface]` or `[Peer]`",
            ),
            (
                "[Interface\n".into(),
                "wg0.conf:1: expected a section header like `[Peer]` or a `Key = Value` line",
            ),
            (
                format!("{iface}just words\n"),
                "wg0.conf:3: expected a section header like `[Peer]` or a `Key = Value` line",
            ),
            (
                "PrivateKey = x\n".into(),
                "wg0.conf:1: `PrivateKey` is outside any section: put it under `[Interface]` or `[Peer]`",
            ),
            (
                format!("{iface}Foo = 1\n"),
                "wg0.conf:3: unknown key `Foo` in [Interface]: expected one of PrivateKey, Address, ListenPort, MTU, DNS",
            ),
            (
                format!("{iface}[Peer]\nPublicKey = {PUB}\nEndpoints = 1.2.3.4:1\n"),
                "wg0.conf:5: unknown key `Endpoints` in [Peer]: expected one of PublicKey, PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive",
            ),
            (
                format!("{iface}PostUp = iptables -A FORWARD\n"),
                "wg0.conf:3: `PostUp` is not supported: postern does not run wg-quick's shell hooks; remove the line",
            ),
            (
                format!("{iface}Table = off\n"),
                "wg0.conf:3: `Table` is not supported: postern manages no kernel routing tables; remove the line",
            ),
            (
                format!("{iface}Address =\n"),
                "wg0.conf:3: `Address` has no value: expected `Address = ...`",
            ),
            (
                format!("{iface}PrivateKey = {PRIV}\n"),
                "wg0.conf:3: `PrivateKey` is given twice in this [Interface] section: keep one",
            ),
            (
                "[Interface]\nPrivateKey = abc\n".into(),
                "wg0.conf:2: `PrivateKey` is not a WireGuard key: expected 44 characters of base64 encoding 32 bytes (as `wg genkey` or `wg pubkey` print), found 3 characters",
            ),
            (
                format!("{iface}[Peer]\nPublicKey = {}\n", "!".repeat(44)),
                "wg0.conf:4: `PublicKey` is not a WireGuard key: expected 44 characters of base64 encoding 32 bytes (as `wg genkey` or `wg pubkey` print), found 44 characters",
            ),
            (
                format!("{iface}Address = 10.0.0.1/24, 10.0.0.300/24\n"),
                "wg0.conf:3: `Address`: `10.0.0.300/24` is not an IP address with an optional /prefix (like `10.0.0.1/24` or `fd00::1/64`)",
            ),
            (
                format!("{iface}[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.0.0.0/33\n"),
                "wg0.conf:5: `AllowedIPs`: `10.0.0.0/33` is not an IP address with an optional /prefix (like `10.0.0.1/24` or `fd00::1/64`)",
            ),
            (
                format!("{iface}ListenPort = 70000\n"),
                "wg0.conf:3: `ListenPort`: expected a UDP port number from 0 to 65535, found `70000`",
            ),
            (
                format!("{iface}MTU = 100\n"),
                "wg0.conf:3: `MTU`: expected a number of bytes from 576 to 65535, found `100`",
            ),
            (
                format!("{iface}DNS = 1.1.1.1, not a name\n"),
                "wg0.conf:3: `DNS`: `not a name` is neither an IP address nor a domain name",
            ),
            (
                format!("{iface}[Peer]\nPublicKey = {PUB}\nEndpoint = 2001:db8::1:51820\n"),
                "wg0.conf:5: `Endpoint`: expected `host:port`, `1.2.3.4:port` or `[v6addr]:port`, found `2001:db8::1:51820`",
            ),
            (
                format!("{iface}[Peer]\nPublicKey = {PUB}\nEndpoint = host.example\n"),
                "wg0.conf:5: `Endpoint`: expected `host:port`, `1.2.3.4:port` or `[v6addr]:port`, found `host.example`",
            ),
            (
                format!("{iface}[Peer]\nPublicKey = {PUB}\nPersistentKeepalive = soon\n"),
                "wg0.conf:5: `PersistentKeepalive`: expected a number of seconds from 0 to 65535, or `off`, found `soon`",
            ),
            (
                format!("{iface}[Peer]\nAllowedIPs = 10.0.0.2/32\n"),
                "wg0.conf:3: this [Peer] section has no `PublicKey`: add `PublicKey = ...`",
            ),
            (
                "[Interface]\nListenPort = 1\n".into(),
                "wg0.conf:1: this [Interface] section has no `PrivateKey`: add `PrivateKey = ...`",
            ),
            (
                format!("{iface}[Interface]\n"),
                "wg0.conf:3: a second [Interface] section: a file describes one interface",
            ),
            (
                format!("{iface}[Peer]\nPublicKey = {PUB}\n[Peer]\nPublicKey = {PUB}\n"),
                "wg0.conf:5: this peer's PublicKey is already used by the [Peer] on line 3: merge the two sections",
            ),
            (
                format!("[Peer]\nPublicKey = {PUB}\n"),
                "wg0.conf: no [Interface] section: add one with at least `PrivateKey = ...`",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(err(&text), expected, "for input:\n{text}");
        }
    }

    #[test]
    fn reading_a_missing_file_names_it() {
        let e = WgConfig::load(std::path::Path::new("/nonexistent/wg9.conf")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/wg9.conf: cannot read the file:"),
            "{e}"
        );
    }
}

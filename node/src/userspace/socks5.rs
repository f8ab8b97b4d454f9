//! A SOCKS5 server (RFC 1928) that opens its connections inside the tunnel.
//!
//! Only what a tunnel proxy needs: no authentication (method `0x00`), the CONNECT command,
//! and IPv4 or IPv6 destinations. Domain-name destinations are refused with "address type
//! not supported" (`0x08`), because the tunnel has no resolver of its own and resolving on
//! the host would leak names and give host-side answers; a name that is an IP literal is
//! accepted. BIND and UDP ASSOCIATE are refused with "command not supported" (`0x07`).
//!
//! Written by hand rather than with a crate: the protocol subset is two tiny messages, the
//! crates on offer (e.g. `fast-socks5`) bring their own accept loops, timeouts and
//! resolver choices that would have to be worked around, and the parsers here are pure
//! functions ([`parse_greeting`], [`parse_request`]) that are fuzzed (`fuzz/`, `socks5`) and can
//! never panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use postern_netstack::{Netstack, NetstackError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a client has to send its greeting and request.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// SOCKS protocol version 5.
const VERSION: u8 = 5;
/// Authentication method "no authentication required".
const METHOD_NONE: u8 = 0x00;
/// "No acceptable methods".
const METHOD_REFUSED: u8 = 0xff;
/// The CONNECT command.
const CMD_CONNECT: u8 = 0x01;
const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;
/// Longest message a client sends: a request with a 255-byte domain name.
const MAX_MESSAGE: usize = 4 + 1 + 255 + 2;

/// A reply code of a SOCKS5 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyCode {
    /// `0x00`: succeeded.
    Succeeded = 0x00,
    /// `0x01`: general failure.
    GeneralFailure = 0x01,
    /// `0x03`: network unreachable.
    NetworkUnreachable = 0x03,
    /// `0x04`: host unreachable.
    HostUnreachable = 0x04,
    /// `0x05`: connection refused.
    ConnectionRefused = 0x05,
    /// `0x07`: command not supported.
    CommandNotSupported = 0x07,
    /// `0x08`: address type not supported.
    AddressTypeNotSupported = 0x08,
}

/// What was wrong with a client's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Socks5Error {
    /// The first byte is not 5.
    #[error("not SOCKS5: version byte {0:#04x}, expected 0x05")]
    Version(u8),
    /// The greeting offers no "no authentication" method.
    #[error("the client offers no method this server accepts (only 0x00, no authentication)")]
    NoAcceptableMethod,
    /// The reserved byte of a request is not zero.
    #[error("reserved byte of the request is {0:#04x}, expected 0x00")]
    Reserved(u8),
    /// A command other than CONNECT.
    #[error("command {0:#04x} not supported: only CONNECT (0x01)")]
    Command(u8),
    /// An address type other than IPv4, IPv6 or an IP-literal domain name.
    #[error("address type {0:#04x} not supported: give an IPv4 or IPv6 address")]
    AddressType(u8),
    /// A domain name that is not an IP literal.
    #[error(
        "domain-name destinations are not supported (the tunnel has no resolver): give an IP address"
    )]
    DomainName,
}

impl Socks5Error {
    /// The reply code to send for this error, if a reply is due (request errors).
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::Version(_) | Self::NoAcceptableMethod => None,
            Self::Reserved(_) => Some(ReplyCode::GeneralFailure),
            Self::Command(_) => Some(ReplyCode::CommandNotSupported),
            Self::AddressType(_) | Self::DomainName => Some(ReplyCode::AddressTypeNotSupported),
        }
    }
}

/// Parses a client greeting (`VER NMETHODS METHODS...`) from the start of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, `Ok(Some(consumed))` if the greeting is
/// complete and offers "no authentication", or the error.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<usize>, Socks5Error> {
    let Some((&version, rest)) = buf.split_first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let Some((&count, rest)) = rest.split_first() else {
        return Ok(None);
    };
    let Some(methods) = rest.get(..usize::from(count)) else {
        return Ok(None);
    };
    if !methods.contains(&METHOD_NONE) {
        return Err(Socks5Error::NoAcceptableMethod);
    }
    Ok(Some(2 + usize::from(count)))
}

/// Parses a request (`VER CMD RSV ATYP DST.ADDR DST.PORT`) from the start of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, `Ok(Some((destination, consumed)))` for a
/// CONNECT to an IP address, or the error (whose [`Socks5Error::reply_code`] is the reply
/// to send).
pub fn parse_request(buf: &[u8]) -> Result<Option<(SocketAddr, usize)>, Socks5Error> {
    match parse_request_target(buf)? {
        None => Ok(None),
        Some((Target::Addr(addr), consumed)) => Ok(Some((addr, consumed))),
        Some((Target::Name(..), _)) => Err(Socks5Error::DomainName),
    }
}

/// Where a CONNECT request goes: an address, or a name for the server to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IP address (or a domain name that is an IP literal) and port.
    Addr(SocketAddr),
    /// A domain name (not an IP literal) and port.
    Name(String, u16),
}

/// A name resolver for a SOCKS5 server: a name to a tunnel address, `None` if unknown.
pub type Resolver = std::sync::Arc<dyn Fn(&str) -> Option<IpAddr> + Send + Sync>;

/// Like [`parse_request`], but domain names that are not IP literals come back as
/// [`Target::Name`] (valid UTF-8 required) instead of an error.
pub fn parse_request_target(buf: &[u8]) -> Result<Option<(Target, usize)>, Socks5Error> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let &[version, command, reserved, atyp] = header else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    if reserved != 0 {
        return Err(Socks5Error::Reserved(reserved));
    }
    if command != CMD_CONNECT {
        return Err(Socks5Error::Command(command));
    }
    let rest = buf.get(4..).unwrap_or(&[]);
    let (ip, addr_len): (IpAddr, usize) = match atyp {
        ATYP_V4 => {
            let Some(bytes) = rest.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                return Ok(None);
            };
            (Ipv4Addr::from(bytes).into(), 4)
        }
        ATYP_V6 => {
            let Some(bytes) = rest.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) else {
                return Ok(None);
            };
            (Ipv6Addr::from(bytes).into(), 16)
        }
        ATYP_DOMAIN => {
            let Some((&len, name)) = rest.split_first() else {
                return Ok(None);
            };
            let Some(name) = name.get(..usize::from(len)) else {
                return Ok(None);
            };
            let name = std::str::from_utf8(name).map_err(|_| Socks5Error::DomainName)?;
            let literal = name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>();
            let consumed = 4 + 1 + usize::from(len) + 2;
            match literal {
                Ok(ip) => (ip, 1 + usize::from(len)),
                Err(_) => {
                    let Some(port) = rest
                        .get(1 + usize::from(len)..1 + usize::from(len) + 2)
                        .and_then(|b| <[u8; 2]>::try_from(b).ok())
                    else {
                        return Ok(None);
                    };
                    let target = Target::Name(name.to_owned(), u16::from_be_bytes(port));
                    return Ok(Some((target, consumed)));
                }
            }
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    let Some(port) = rest
        .get(addr_len..addr_len + 2)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    Ok(Some((
        Target::Addr(SocketAddr::new(ip, u16::from_be_bytes(port))),
        4 + addr_len + 2,
    )))
}

/// Encodes a reply with `code` and the bound address `bound`.
pub fn encode_reply(code: ReplyCode, bound: SocketAddr) -> Vec<u8> {
    let mut reply = vec![VERSION, code as u8, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            reply.push(ATYP_V4);
            reply.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            reply.push(ATYP_V6);
            reply.extend_from_slice(&ip.octets());
        }
    }
    reply.extend_from_slice(&bound.port().to_be_bytes());
    reply
}

/// Accepts SOCKS5 clients on `listener` and serves each, until `cancel`.
pub(super) async fn serve(listener: TcpListener, netstack: Netstack, cancel: CancellationToken) {
    serve_with_resolver(listener, netstack, None, cancel).await;
}

/// Accepts SOCKS5 clients on `listener` and serves each, opening connections on `netstack`,
/// until `cancel`. With a `resolver`, domain-name destinations are resolved by it (unknown
/// names are answered "host unreachable"); without one they are refused ("address type not
/// supported").
pub async fn serve_with_resolver(
    listener: TcpListener,
    netstack: Netstack,
    resolver: Option<Resolver>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, from) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a SOCKS5 client failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let netstack = netstack.clone();
        let cancel = cancel.clone();
        let resolver = resolver.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_client(client, &netstack, resolver.as_ref(), &cancel).await {
                tracing::debug!(%from, error = %e, "SOCKS5 client ended");
            }
        });
    }
}

async fn serve_client(
    mut client: TcpStream,
    netstack: &Netstack,
    resolver: Option<&Resolver>,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    let negotiated =
        tokio::time::timeout(NEGOTIATION_TIMEOUT, negotiate(&mut client, resolver)).await;
    let destination = match negotiated {
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(destination))) => destination,
    };
    let unspecified = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    let tunnel = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        tunnel = netstack.connect_tcp(destination) => tunnel,
    };
    match tunnel {
        Ok(tunnel) => {
            client
                .write_all(&encode_reply(ReplyCode::Succeeded, tunnel.local_addr()))
                .await?;
            super::forward::splice(client, tunnel, cancel).await;
            Ok(())
        }
        Err(e) => {
            let code = match &e {
                NetstackError::ConnectionRefused { .. } => ReplyCode::ConnectionRefused,
                NetstackError::ConnectTimedOut { .. } => ReplyCode::HostUnreachable,
                NetstackError::NoSourceAddress { .. } => ReplyCode::NetworkUnreachable,
                _ => ReplyCode::GeneralFailure,
            };
            tracing::debug!(%destination, error = %e, "SOCKS5 CONNECT failed");
            client.write_all(&encode_reply(code, unspecified)).await?;
            Ok(())
        }
    }
}

/// Reads the greeting and request; answers errors itself. `Ok(None)` means the client was
/// refused (and told so).
async fn negotiate(
    client: &mut TcpStream,
    resolver: Option<&Resolver>,
) -> std::io::Result<Option<SocketAddr>> {
    let unspecified = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    let mut buf = Vec::with_capacity(MAX_MESSAGE);
    let consumed = loop {
        match parse_greeting(&buf) {
            Ok(Some(consumed)) => break consumed,
            Ok(None) => read_more(client, &mut buf).await?,
            Err(Socks5Error::NoAcceptableMethod) => {
                client.write_all(&[VERSION, METHOD_REFUSED]).await?;
                return Ok(None);
            }
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    };
    buf.drain(..consumed);
    client.write_all(&[VERSION, METHOD_NONE]).await?;
    loop {
        match parse_request_target(&buf) {
            Ok(Some((Target::Addr(destination), _))) => return Ok(Some(destination)),
            Ok(Some((Target::Name(name, port), _))) => {
                let Some(resolver) = resolver else {
                    let code = ReplyCode::AddressTypeNotSupported;
                    client.write_all(&encode_reply(code, unspecified)).await?;
                    return Ok(None);
                };
                match resolver(&name) {
                    Some(ip) => return Ok(Some(SocketAddr::new(ip, port))),
                    None => {
                        tracing::debug!(%name, "SOCKS5 name not in the tailnet");
                        let code = ReplyCode::HostUnreachable;
                        client.write_all(&encode_reply(code, unspecified)).await?;
                        return Ok(None);
                    }
                }
            }
            Ok(None) => read_more(client, &mut buf).await?,
            Err(e) => {
                if let Some(code) = e.reply_code() {
                    client.write_all(&encode_reply(code, unspecified)).await?;
                }
                tracing::debug!(error = %e, "SOCKS5 request refused");
                return Ok(None);
            }
        }
    }
}

async fn read_more(client: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    if buf.len() >= MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "SOCKS5 message too long",
        ));
    }
    let mut chunk = [0u8; MAX_MESSAGE];
    let room = MAX_MESSAGE - buf.len();
    let n = client
        .read(chunk.get_mut(..room).unwrap_or(&mut []))
        .await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_needs_no_auth_method() {
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 2]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 2, 0]), Ok(Some(4)));
        assert_eq!(
            parse_greeting(&[5, 1, 2]),
            Err(Socks5Error::NoAcceptableMethod)
        );
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(Socks5Error::Version(4)));
    }

    #[test]
    fn request_parses_ipv4_ipv6_and_ip_literal_names() {
        let v4 = [5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x90];
        assert_eq!(
            parse_request(&v4),
            Ok(Some(("10.0.0.1:8080".parse().unwrap(), 10)))
        );
        for cut in 0..v4.len() {
            assert_eq!(parse_request(&v4[..cut]), Ok(None), "cut at {cut}");
        }
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&v6),
            Ok(Some(("[fd00::1]:80".parse().unwrap(), 22)))
        );
        let mut name = vec![5, 1, 0, 3, 8];
        name.extend_from_slice(b"10.1.2.3");
        name.extend_from_slice(&[0, 22]);
        assert_eq!(
            parse_request(&name),
            Ok(Some(("10.1.2.3:22".parse().unwrap(), 15)))
        );
    }

    #[test]
    fn request_errors_say_what_is_wrong_and_map_to_reply_codes() {
        let name = [
            5, 1, 0, 3, 7, b'e', b'x', b'.', b'c', b'o', b'm', b'x', 0, 80,
        ];
        let e = parse_request(&name).unwrap_err();
        assert_eq!(e, Socks5Error::DomainName);
        assert_eq!(e.reply_code(), Some(ReplyCode::AddressTypeNotSupported));
        assert!(e.to_string().contains("give an IP address"), "{e}");
        let e = parse_request(&[5, 2, 0, 1]).unwrap_err();
        assert_eq!(e, Socks5Error::Command(2));
        assert_eq!(e.reply_code(), Some(ReplyCode::CommandNotSupported));
        assert!(e.to_string().contains("only CONNECT"), "{e}");
        assert_eq!(
            parse_request(&[5, 1, 0, 9]),
            Err(Socks5Error::AddressType(9))
        );
        assert_eq!(parse_request(&[5, 1, 1, 1]), Err(Socks5Error::Reserved(1)));
        assert_eq!(parse_request(&[6, 1, 0, 1]), Err(Socks5Error::Version(6)));
    }

    #[test]
    fn names_come_back_as_targets_for_a_resolver() {
        let mut name = vec![5, 1, 0, 3, 6];
        name.extend_from_slice(b"laptop");
        name.extend_from_slice(&[0x1f, 0x90]);
        assert_eq!(
            parse_request_target(&name),
            Ok(Some((Target::Name("laptop".into(), 8080), 13)))
        );
        for cut in 0..name.len() {
            assert_eq!(parse_request_target(&name[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_request(&name), Err(Socks5Error::DomainName));
        let bad_utf8 = [5, 1, 0, 3, 1, 0xff, 0, 80];
        assert_eq!(
            parse_request_target(&bad_utf8),
            Err(Socks5Error::DomainName)
        );
    }

    #[test]
    fn reply_encodes_both_families() {
        assert_eq!(
            encode_reply(ReplyCode::Succeeded, "10.0.0.2:49152".parse().unwrap()),
            vec![5, 0, 0, 1, 10, 0, 0, 2, 0xc0, 0x00]
        );
        assert_eq!(
            encode_reply(ReplyCode::ConnectionRefused, "[::1]:1".parse().unwrap()).len(),
            22
        );
    }
}

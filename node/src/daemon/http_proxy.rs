//! An HTTP proxy into the tailnet, for programs that speak HTTP proxies but not SOCKS5.
//!
//! `CONNECT host:port` opens a tunnel (HTTPS, or any TCP); a request in absolute form
//! (`GET http://host:port/path HTTP/1.1`) is forwarded as is to `host:port`, whose server
//! must accept the absolute form (HTTP/1.1 servers do, RFC 9112 section 3.2.2). Hosts are
//! tailnet names or IP literals, resolved through the netmap: nothing resolves on the host.
//! No authentication: bind it to loopback.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use postern_netstack::Netstack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A name resolver: a tailnet name to an address, `None` if unknown.
pub type Resolver = Arc<dyn Fn(&str) -> Option<IpAddr> + Send + Sync>;

/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the proxy was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// `CONNECT` (a tunnel) or another method (forwarded).
    pub connect: bool,
    /// The host, without brackets.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// Why a request head is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyRequestError {
    /// Not `METHOD TARGET HTTP/x`.
    #[error("malformed request line")]
    RequestLine,
    /// The target is not `host:port` (CONNECT) or an `http://` URL.
    #[error("the target must be host:port for CONNECT or an http:// URL, got {0:?}")]
    Target(String),
}

/// Parses the request line of a complete head (`head` ends with the empty line).
pub fn parse_request_head(head: &[u8]) -> Result<ProxyRequest, ProxyRequestError> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(ProxyRequestError::RequestLine)?;
    let line = std::str::from_utf8(head.get(..line_end).unwrap_or_default())
        .map_err(|_| ProxyRequestError::RequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProxyRequestError::RequestLine);
    };
    if !version.starts_with("HTTP/") || method.is_empty() {
        return Err(ProxyRequestError::RequestLine);
    }
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let authority = if connect {
        target
    } else {
        let rest = target
            .strip_prefix("http://")
            .ok_or_else(|| ProxyRequestError::Target(target.to_owned()))?;
        rest.split(['/', '?']).next().unwrap_or_default()
    };
    let bad = || ProxyRequestError::Target(target.to_owned());
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (host.ends_with(']') || !host.contains(':')) => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ if connect => return Err(bad()),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(ProxyRequest {
        connect,
        host: host.to_owned(),
        port,
    })
}

/// Accepts proxy clients on `listener` and serves each over `netstack`, until `cancel`.
pub async fn serve(
    listener: TcpListener,
    netstack: Netstack,
    resolver: Resolver,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, from) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(%err, "accepting an HTTP proxy client failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (netstack, resolver, cancel) = (netstack.clone(), resolver.clone(), cancel.clone());
        tokio::spawn(async move {
            if let Err(err) = serve_client(client, &netstack, &resolver, &cancel).await {
                tracing::debug!(%from, %err, "HTTP proxy client ended");
            }
        });
    }
}

async fn serve_client(
    mut client: TcpStream,
    netstack: &Netstack,
    resolver: &Resolver,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(head) => head?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    let request = match parse_request_head(&head) {
        Ok(request) => request,
        Err(err) => return answer(&mut client, "400 Bad Request", &err.to_string()).await,
    };
    let Some(ip) = resolver(&request.host) else {
        let message = format!("{} is not a name in the tailnet", request.host);
        return answer(&mut client, "502 Bad Gateway", &message).await;
    };
    let mut upstream = match netstack
        .connect_tcp(SocketAddr::new(ip, request.port))
        .await
    {
        Ok(stream) => stream,
        Err(err) => return answer(&mut client, "502 Bad Gateway", &err.to_string()).await,
    };
    if request.connect {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
    } else {
        upstream.write_all(&head).await?;
    }
    tokio::select! {
        () = cancel.cancelled() => {}
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => { copied?; }
    }
    Ok(())
}

/// Reads up to and including the empty line that ends the head (bytes after it, if the
/// client pipelined, stay in the head and are forwarded with it).
async fn read_head(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

async fn answer(client: &mut TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{message}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_absolute_form_requests_parse() {
        let head = b"CONNECT laptop:443 HTTP/1.1\r\nHost: laptop:443\r\n\r\n";
        assert_eq!(
            parse_request_head(head),
            Ok(ProxyRequest {
                connect: true,
                host: "laptop".into(),
                port: 443
            })
        );
        let head = b"GET http://laptop.corp.test/x?y HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_request_head(head),
            Ok(ProxyRequest {
                connect: false,
                host: "laptop.corp.test".into(),
                port: 80
            })
        );
        let head = b"GET http://[fd7a::2]:8080/ HTTP/1.1\r\n\r\n";
        assert_eq!(parse_request_head(head).unwrap().host, "fd7a::2");
        assert_eq!(parse_request_head(head).unwrap().port, 8080);
    }

    #[test]
    fn bad_heads_say_what_is_wrong() {
        assert_eq!(
            parse_request_head(b"GET /x HTTP/1.1\r\n\r\n"),
            Err(ProxyRequestError::Target("/x".into()))
        );
        assert!(matches!(
            parse_request_head(b"CONNECT laptop HTTP/1.1\r\n\r\n"),
            Err(ProxyRequestError::Target(_))
        ));
        assert_eq!(
            parse_request_head(b"garbage\r\n\r\n"),
            Err(ProxyRequestError::RequestLine)
        );
        assert_eq!(
            parse_request_head(b"\xff"),
            Err(ProxyRequestError::RequestLine)
        );
        let err = parse_request_head(b"CONNECT a:99999 HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
    }
}

//! Hop-by-hop HTTP headers (RFC 9110 7.6.1), which a proxy must never forward: the fixed
//! list, the headers the `Connection` header names, and `Upgrade` (re-added by a proxy that
//! carries the upgrade itself).
//!
//! Every HTTP proxy in Postern calls [`strip`] on requests and responses it forwards: the
//! ingress edge, the node's serve proxy and the inspector's capturing proxy.

use http::{HeaderMap, HeaderName, header};

/// The headers that are hop-by-hop whatever `Connection` says.
pub const HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The comma-separated tokens of every `Connection` header, trimmed (values that are not
/// visible ASCII are skipped).
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes every hop-by-hop header from `headers`: those named by `Connection`, the fixed
/// [`HEADERS`], and `Upgrade`.
pub fn strip(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HEADERS {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_named_and_upgrade_headers_and_keeps_the_rest() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "keep-alive, X-Secret-Hop".parse().unwrap());
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("transfer-encoding", "chunked".parse().unwrap());
        headers.insert("proxy-authorization", "Basic eA==".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        headers.insert("content-type", "text/plain".parse().unwrap());
        strip(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("content-type"));
    }
}

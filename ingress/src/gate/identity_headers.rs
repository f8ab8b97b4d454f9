//! The identity headers the edge owns: stripped from every incoming request, set on
//! admitted ones.
//!
//! | header | value |
//! |---|---|
//! | `Postern-Gate` | the gate(s) that admitted, e.g. `webhook:github` |
//! | `Postern-Identity` | the principal, e.g. `webhook:github` |
//! | `Postern-Identity-<Name>` | one per identity attribute, e.g. `Postern-Identity-Delivery` |
//!
//! Every header whose name starts with `Postern-` is removed from the client's request,
//! whatever follows the prefix, so that a header a later gate introduces can never be
//! forged by a client of an older edge.

use http::{HeaderMap, HeaderName, HeaderValue};
use postern_node::serve::identity::{
    attribute_header_name, identity_header_value, strip_identity_headers,
};

use super::Identity;

/// The header naming the gate(s) that admitted the request.
pub use postern_node::serve::identity::GATE_HEADER;
/// The prefix of every header the edge owns; all of them are stripped from client requests.
pub use postern_node::serve::identity::HEADER_PREFIX as IDENTITY_HEADER_PREFIX;
/// The prefix of per-attribute identity headers (`Postern-Identity-Delivery`, ...).
pub use postern_node::serve::identity::IDENTITY_ATTRIBUTE_PREFIX;
/// The header carrying the admitted principal.
pub use postern_node::serve::identity::IDENTITY_HEADER;

/// Rewrites a request's headers before it is forwarded.
///
/// Call on every request that will be forwarded, with the admission (`Some((gate,
/// identity))`) from [`super::Decision::Allow`], or `None` for a funnel that forwards
/// without a gate or whose upstream carries the admission itself (the mesh hop). It
/// removes every `Postern-*` header the client sent, then sets `Postern-Gate`,
/// `Postern-Identity` and one `Postern-Identity-<Name>` per attribute. The names, the
/// stripping and the values are the node's (`postern_node::serve::identity`), so a target
/// sees the same headers whether the edge or the node wrote them.
///
/// Attribute names that are not valid header-name text are dropped; values lose control
/// characters and are RFC 2047 encoded when not printable ASCII. The identity itself is
/// always set.
pub fn rewrite_identity_headers(headers: &mut HeaderMap, admission: Option<(&str, &Identity)>) {
    strip_identity_headers(headers);
    let Some((gate, identity)) = admission else {
        return;
    };
    static GATE: HeaderName = HeaderName::from_static(GATE_HEADER);
    static IDENTITY: HeaderName = HeaderName::from_static(IDENTITY_HEADER);
    let value = |text: &str| identity_header_value(text).unwrap_or(HeaderValue::from_static(""));
    headers.reserve(2 + identity.attributes.len());
    headers.insert(GATE.clone(), value(gate));
    headers.insert(IDENTITY.clone(), value(&identity.principal));
    for (name, text) in &identity.attributes {
        if let Some(name) = attribute_header_name(name) {
            headers.append(name, value(text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_sent_identity_headers_are_stripped_and_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert("postern-identity", HeaderValue::from_static("user:admin"));
        headers.insert("Postern-Gate", HeaderValue::from_static("forged"));
        headers.insert(
            "postern-identity-groups",
            HeaderValue::from_static("admins"),
        );
        headers.insert("postern-future-thing", HeaderValue::from_static("x"));
        headers.insert("x-other", HeaderValue::from_static("kept"));

        let identity =
            Identity::new("webhook:github").with_attribute("Delivery", "72d3162e\r\nx: y");
        rewrite_identity_headers(&mut headers, Some(("webhook:github", &identity)));

        assert_eq!(headers["postern-gate"], "webhook:github");
        assert_eq!(headers["postern-identity"], "webhook:github");
        assert_eq!(headers["postern-identity-delivery"], "72d3162ex: y");
        assert!(headers.get("postern-identity-groups").is_none());
        assert!(headers.get("postern-future-thing").is_none());
        assert_eq!(headers["x-other"], "kept");
    }

    #[test]
    fn values_are_written_as_the_node_writes_them() {
        let mut headers = HeaderMap::new();
        let identity = Identity::new("user:Émile").with_attribute("Name", " Émile\u{7} ");
        rewrite_identity_headers(&mut headers, Some(("oidc", &identity)));
        assert_eq!(headers["postern-identity"], "=?utf-8?b?dXNlcjrDiW1pbGU=?=");
        assert_eq!(headers["postern-identity-name"], "=?utf-8?b?IMOJbWlsZSA=?=");
    }

    #[test]
    fn without_admission_only_strips() {
        let mut headers = HeaderMap::new();
        headers.insert("postern-identity", HeaderValue::from_static("user:admin"));
        rewrite_identity_headers(&mut headers, None);
        assert!(headers.is_empty());
    }

    #[test]
    fn bad_attribute_names_are_dropped() {
        let mut headers = HeaderMap::new();
        let identity = Identity::new("p").with_attribute("bad name", "v");
        rewrite_identity_headers(&mut headers, Some(("g", &identity)));
        assert_eq!(headers.len(), 2);
    }
}

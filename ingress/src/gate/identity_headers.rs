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
use postern_node::serve::identity::attribute_header_name;

use super::Identity;

/// The header naming the gate(s) that admitted the request.
pub const GATE_HEADER: &str = "postern-gate";
/// The header carrying the admitted principal.
pub const IDENTITY_HEADER: &str = "postern-identity";
/// The prefix of per-attribute identity headers (`Postern-Identity-Delivery`, ...).
pub const IDENTITY_ATTRIBUTE_PREFIX: &str = "postern-identity-";
/// The prefix of every header the edge owns; all of them are stripped from client requests.
pub const IDENTITY_HEADER_PREFIX: &str = "postern-";

/// Rewrites a request's headers before it is forwarded.
///
/// Call on every request that will be forwarded, with the admission (`Some((gate,
/// identity))`) from [`super::Decision::Allow`], or `None` for a funnel that forwards
/// without a gate. It removes every `Postern-*` header the client sent, then sets
/// `Postern-Gate`, `Postern-Identity` and one `Postern-Identity-<Name>` per attribute.
///
/// Attribute names that are not valid header-name text, and characters of values that are
/// not visible ASCII, are dropped rather than failing the request: the identity itself is
/// always set.
pub fn rewrite_identity_headers(headers: &mut HeaderMap, admission: Option<(&str, &Identity)>) {
    if headers
        .keys()
        .any(|name| name.as_str().starts_with(IDENTITY_HEADER_PREFIX))
    {
        let owned: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with(IDENTITY_HEADER_PREFIX))
            .cloned()
            .collect();
        for name in owned {
            headers.remove(&name);
        }
    }
    let Some((gate, identity)) = admission else {
        return;
    };
    static GATE: HeaderName = HeaderName::from_static(GATE_HEADER);
    static IDENTITY: HeaderName = HeaderName::from_static(IDENTITY_HEADER);
    headers.reserve(2 + identity.attributes.len());
    headers.insert(GATE.clone(), header_value(gate));
    headers.insert(IDENTITY.clone(), header_value(&identity.principal));
    for (name, value) in &identity.attributes {
        if let Some(name) = attribute_header_name(name) {
            headers.append(name, header_value(value));
        }
    }
}

/// A header value from text, keeping only visible ASCII and spaces.
fn header_value(text: &str) -> HeaderValue {
    let visible = |b: u8| b.is_ascii_graphic() || b == b' ';
    if text.bytes().all(visible) {
        // The usual case: nothing to drop, no intermediate copy.
        return HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""));
    }
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static(""))
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

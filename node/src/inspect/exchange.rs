//! What is captured: an [`Exchange`] (one request and its response) or a
//! [`DeniedDelivery`] (a request the edge refused), both held as an [`Entry`].
//!
//! These types are the persisted form (one JSON object per line in the state dir), the JSON
//! API's form (see `docs/inspect.md`) and what [`client`](super::client) decodes. Bodies are
//! stored as UTF-8 text when they are valid UTF-8 and as base64 otherwise.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One captured entry: an exchange that reached the local service, or a delivery the edge
/// denied. Serialized with a `kind` tag (`"exchange"` or `"denied"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A request that was proxied to the local service, with its response.
    Exchange(Exchange),
    /// A request the ingress refused before it entered the tunnel.
    Denied(DeniedDelivery),
}

/// Where an exchange came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Source {
    /// Through a public funnel: the ingress ran the gate chain first.
    Funnel,
    /// From a tailnet peer through `postern serve`.
    Serve,
    /// Re-sent from the inspection UI, API or CLI. Replays bypass the gate.
    Replay,
}

/// The gate that admitted a request, and as whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The gate's name as the ingress reports it, e.g. `webhook:github` or `oidc`.
    pub gate: String,
    /// The identity the gate established (a login, a webhook provider, a peer's name), if
    /// the gate establishes one.
    pub identity: Option<String>,
}

/// One request and its response, as the node proxied them to the local service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// Assigned by the store when the exchange is recorded; 0 before.
    #[serde(default)]
    pub id: u64,
    /// When the request arrived, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Funnel, serve or replay.
    pub source: Source,
    /// For a replay: the id of the exchange it re-sent.
    #[serde(default)]
    pub replay_of: Option<u64>,
    /// The node's served port the request came to (funnel or serve; a replay keeps its
    /// original's), so a replay goes to the same local service; `None` if not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The gate that admitted the request (funnel and serve), `None` for replays.
    #[serde(default)]
    pub admission: Option<Admission>,
    /// The request as it arrived (before hop-by-hop headers were dropped).
    pub request: CapturedRequest,
    /// The local service's response, `None` if it could not be reached.
    #[serde(default)]
    pub response: Option<CapturedResponse>,
    /// Why the exchange did not complete (local service unreachable, client went away).
    #[serde(default)]
    pub error: Option<String>,
    /// Milliseconds from the request's arrival to the end of the response body.
    pub duration_ms: u64,
}

/// The captured request of an [`Exchange`]. `Debug` masks secret headers and leaves the
/// body out (its size only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedRequest {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path and query, e.g. `/hooks/github?x=1`.
    pub path: String,
    /// The HTTP version as text, e.g. `HTTP/1.1`.
    pub version: String,
    /// The headers in arrival order, as `[name, value]` pairs (names lower case).
    pub headers: Vec<(String, String)>,
    /// The body, capped at the store's body limit.
    pub body: CapturedBody,
}

/// The captured response of an [`Exchange`]. `Debug` masks secret headers and leaves the
/// body out (its size only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedResponse {
    /// The status code.
    pub status: u16,
    /// The headers, as `[name, value]` pairs (names lower case).
    pub headers: Vec<(String, String)>,
    /// The body, capped at the store's body limit.
    pub body: CapturedBody,
}

impl std::fmt::Debug for CapturedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("headers", &MaskedHeaders(&self.headers))
            .field("body", &BodySize(&self.body))
            .finish()
    }
}

impl std::fmt::Debug for CapturedResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedResponse")
            .field("status", &self.status)
            .field("headers", &MaskedHeaders(&self.headers))
            .field("body", &BodySize(&self.body))
            .finish()
    }
}

/// Headers for `Debug`, secret values masked.
struct MaskedHeaders<'a>(&'a [(String, String)]);

impl std::fmt::Debug for MaskedHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, value)| {
                let shown = if is_secret_header(name) {
                    masked_value(value)
                } else {
                    value.clone()
                };
                (name, shown)
            }))
            .finish()
    }
}

/// A body for `Debug`: its sizes only.
struct BodySize<'a>(&'a CapturedBody);

impl std::fmt::Debug for BodySize<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "<{} bytes{}>",
            self.0.size,
            if self.0.truncated { ", truncated" } else { "" }
        )
    }
}

/// A body, or its first `cap` bytes. In JSON: `{"size", "truncated", "encoding", "data"}`,
/// where `encoding` is `utf8` (data is the text) or `base64`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "BodyRepr", try_from = "BodyRepr")]
pub struct CapturedBody {
    /// The captured bytes: the whole body, or its first bytes when `truncated`.
    pub bytes: Bytes,
    /// The body's full size in bytes as it passed through (at least `bytes.len()`).
    pub size: u64,
    /// Whether bytes past the cap were passed on but not kept.
    pub truncated: bool,
}

impl CapturedBody {
    /// A body captured whole.
    pub fn whole(bytes: Bytes) -> Self {
        Self {
            size: bytes.len() as u64,
            bytes,
            truncated: false,
        }
    }

    /// The first `cap` bytes of `bytes`, marked truncated when there were more.
    pub fn capped(bytes: &[u8], cap: usize) -> Self {
        let kept = bytes.get(..cap).unwrap_or(bytes);
        Self {
            bytes: Bytes::copy_from_slice(kept),
            size: bytes.len() as u64,
            truncated: kept.len() < bytes.len(),
        }
    }
}

/// A request the edge refused for one of this node's funnels (from the ingress audit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedDelivery {
    /// Assigned by the store when recorded; 0 before.
    #[serde(default)]
    pub id: u64,
    /// When the request arrived at the edge, RFC 3339 UTC.
    pub time: String,
    /// The funnel's hostname, when known.
    #[serde(default)]
    pub funnel: Option<String>,
    /// The request method.
    pub method: String,
    /// The request path (the audit leaves the query out: it may carry secrets).
    pub path: String,
    /// The gate that refused, e.g. `webhook:github`.
    #[serde(default)]
    pub gate: Option<String>,
    /// The reason code, e.g. `signature_mismatch`, `stale_timestamp`, `not_logged_in`.
    pub reason: String,
    /// The status the edge answered with.
    pub status: u16,
    /// The coordination server's id of the decision, for denials pulled from the edge log
    /// (`postern funnel log`); the inspector resumes after the newest one it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_id: Option<u64>,
}

/// Why an ingress audit line could not be read as a denial.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditLineError {
    /// Not a JSON audit record (see `docs/ingress.md` for the fields).
    #[error("not an ingress audit record: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl DeniedDelivery {
    /// Reads one ingress audit line (`ingress/src/audit.rs`'s JSON). Returns `Ok(None)` for
    /// records that are not denials (`result` other than `deny`), so a caller can feed every
    /// audit line for its funnels through this.
    ///
    /// Fails if the line is not a JSON audit record.
    pub fn from_audit_line(line: &str) -> Result<Option<Self>, AuditLineError> {
        #[derive(Deserialize)]
        struct AuditLine {
            time: String,
            #[serde(default)]
            funnel: Option<String>,
            method: String,
            path: String,
            #[serde(default)]
            gate: Option<String>,
            result: String,
            #[serde(default)]
            reason: Option<String>,
            status: u16,
        }
        let line: AuditLine = serde_json::from_str(line)?;
        if line.result != "deny" {
            return Ok(None);
        }
        Ok(Some(Self {
            id: 0,
            time: line.time,
            funnel: line.funnel,
            method: line.method,
            path: line.path,
            gate: line.gate,
            reason: line.reason.unwrap_or_else(|| "denied".to_owned()),
            status: line.status,
            edge_id: None,
        }))
    }
}

/// One line of the list: what the UI's table and `postern inspect list` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySummary {
    /// The entry's id.
    pub id: u64,
    /// `exchange` or `denied`.
    pub kind: String,
    /// When it arrived (RFC 3339).
    pub time: String,
    /// `funnel`, `serve` or `replay`; `None` for denials.
    pub source: Option<Source>,
    /// The request method.
    pub method: String,
    /// The request path (with query for exchanges).
    pub path: String,
    /// The response status (exchanges that got one) or the edge's status (denials).
    pub status: Option<u16>,
    /// Milliseconds to the end of the response (0 for denials).
    pub duration_ms: u64,
    /// For replays, the original's id.
    pub replay_of: Option<u64>,
    /// The gate that admitted or refused it.
    pub gate: Option<String>,
    /// As whom the gate admitted it.
    pub identity: Option<String>,
    /// For denials, the reason code; for failed exchanges, the error.
    pub reason: Option<String>,
    /// Request body size in bytes.
    pub request_size: u64,
    /// Response body size in bytes.
    pub response_size: u64,
}

impl Entry {
    /// The entry's id (0 until recorded).
    pub fn id(&self) -> u64 {
        match self {
            Entry::Exchange(e) => e.id,
            Entry::Denied(d) => d.id,
        }
    }

    /// Sets the id; the store calls this when it records the entry.
    pub(crate) fn set_id(&mut self, id: u64) {
        match self {
            Entry::Exchange(e) => e.id = id,
            Entry::Denied(d) => d.id = id,
        }
    }

    /// The entry's list line.
    pub fn summary(&self) -> EntrySummary {
        match self {
            Entry::Exchange(e) => EntrySummary {
                id: e.id,
                kind: "exchange".to_owned(),
                time: e.time.clone(),
                source: Some(e.source),
                method: e.request.method.clone(),
                path: e.request.path.clone(),
                status: e.response.as_ref().map(|r| r.status),
                duration_ms: e.duration_ms,
                replay_of: e.replay_of,
                gate: e.admission.as_ref().map(|a| a.gate.clone()),
                identity: e.admission.as_ref().and_then(|a| a.identity.clone()),
                reason: e.error.clone(),
                request_size: e.request.body.size,
                response_size: e.response.as_ref().map_or(0, |r| r.body.size),
            },
            Entry::Denied(d) => EntrySummary {
                id: d.id,
                kind: "denied".to_owned(),
                time: d.time.clone(),
                source: None,
                method: d.method.clone(),
                path: d.path.clone(),
                status: Some(d.status),
                duration_ms: 0,
                replay_of: None,
                gate: d.gate.clone(),
                identity: None,
                reason: Some(d.reason.clone()),
                request_size: 0,
                response_size: 0,
            },
        }
    }

    /// Roughly how many bytes the entry holds in memory: bodies, headers, strings, plus a
    /// fixed overhead. The store's byte budget counts this.
    pub fn footprint(&self) -> usize {
        const OVERHEAD: usize = 256;
        let headers = |h: &[(String, String)]| -> usize {
            h.iter().map(|(n, v)| n.len() + v.len() + 48).sum()
        };
        match self {
            Entry::Exchange(e) => {
                let response: usize = e
                    .response
                    .as_ref()
                    .map_or(0, |r| r.body.bytes.len() + headers(&r.headers));
                OVERHEAD
                    + e.time.len()
                    + e.request.path.len()
                    + e.request.method.len()
                    + headers(&e.request.headers)
                    + e.request.body.bytes.len()
                    + response
                    + e.error.as_ref().map_or(0, String::len)
            }
            Entry::Denied(d) => {
                OVERHEAD + d.time.len() + d.path.len() + d.method.len() + d.reason.len()
            }
        }
    }

    /// A copy with secret header values masked (see [`is_secret_header`]), for showing.
    pub fn masked(&self) -> Entry {
        match self {
            Entry::Exchange(e) => {
                let mut e = e.clone();
                mask_headers(&mut e.request.headers);
                if let Some(r) = e.response.as_mut() {
                    mask_headers(&mut r.headers);
                }
                Entry::Exchange(e)
            }
            Entry::Denied(d) => Entry::Denied(d.clone()),
        }
    }
}

/// Whether a header carries a secret that is masked unless the user reveals it:
/// `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, API-key headers, and
/// every header whose name contains `signature`, `token`, `secret` or `hmac` (the webhook
/// providers' `X-Hub-Signature-256`, `Stripe-Signature`, `X-Gitlab-Token`,
/// `X-Shopify-Hmac-Sha256`, ...).
pub fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie" | "x-api-key"
    ) || ["signature", "token", "secret", "hmac", "api-key", "apikey"]
        .iter()
        .any(|word| name.contains(word))
}

/// `time` as the captured entries write it: RFC 3339 UTC with milliseconds, e.g.
/// `2026-11-29T09:30:00.123Z`. For adapters that build an [`Exchange`] from another
/// proxy's record.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let time = time::OffsetDateTime::from(time);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time.format(&format).unwrap_or_else(|_| time.to_string())
}

/// Headers as the captured entries hold them: `[name, value]` pairs in order, names lower
/// case, values that are not UTF-8 converted lossily. For adapters that build an
/// [`Exchange`] from another proxy's record.
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// What a masked header value is shown as: it says how long the hidden value is and nothing
/// else.
pub fn masked_value(value: &str) -> String {
    format!("[masked: {} chars]", value.chars().count())
}

fn mask_headers(headers: &mut [(String, String)]) {
    for (name, value) in headers.iter_mut() {
        if is_secret_header(name) {
            *value = masked_value(value);
        }
    }
}

/// The JSON form of a [`CapturedBody`].
#[derive(Serialize, Deserialize)]
struct BodyRepr {
    size: u64,
    truncated: bool,
    encoding: BodyEncoding,
    data: String,
}

#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum BodyEncoding {
    Utf8,
    Base64,
}

impl From<CapturedBody> for BodyRepr {
    fn from(body: CapturedBody) -> Self {
        match std::str::from_utf8(&body.bytes) {
            Ok(text) => BodyRepr {
                size: body.size,
                truncated: body.truncated,
                encoding: BodyEncoding::Utf8,
                data: text.to_owned(),
            },
            Err(_) => BodyRepr {
                size: body.size,
                truncated: body.truncated,
                encoding: BodyEncoding::Base64,
                data: BASE64.encode(&body.bytes),
            },
        }
    }
}

impl TryFrom<BodyRepr> for CapturedBody {
    type Error = String;

    fn try_from(repr: BodyRepr) -> Result<Self, Self::Error> {
        let bytes = match repr.encoding {
            BodyEncoding::Utf8 => Bytes::from(repr.data.into_bytes()),
            BodyEncoding::Base64 => Bytes::from(
                BASE64
                    .decode(repr.data.as_bytes())
                    .map_err(|e| format!("body data is not base64: {e}"))?,
            ),
        };
        if (bytes.len() as u64) > repr.size {
            return Err(format!(
                "body data has {} bytes but size says {}",
                bytes.len(),
                repr.size
            ));
        }
        Ok(CapturedBody {
            bytes,
            size: repr.size,
            truncated: repr.truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Exchange {
        Exchange {
            id: 0,
            time: "2026-11-29T09:00:00.000Z".into(),
            source: Source::Funnel,
            replay_of: None,
            port: None,
            admission: Some(Admission {
                gate: "webhook:github".into(),
                identity: Some("github".into()),
            }),
            request: CapturedRequest {
                method: "POST".into(),
                path: "/hook".into(),
                version: "HTTP/1.1".into(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-hub-signature-256".into(), "sha256=abcdef".into()),
                ],
                body: CapturedBody::whole(Bytes::from_static(b"{\"a\":1}")),
            },
            response: Some(CapturedResponse {
                status: 200,
                headers: vec![("set-cookie".into(), "s=1".into())],
                body: CapturedBody::whole(Bytes::from_static(&[0xff, 0x00, 0x41])),
            }),
            error: None,
            duration_ms: 3,
        }
    }

    #[test]
    fn entries_round_trip_through_json_with_text_and_binary_bodies() {
        let entry = Entry::Exchange(sample());
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.contains("\"kind\":\"exchange\""), "{json}");
        assert!(json.contains("\"encoding\":\"utf8\""), "{json}");
        assert!(json.contains("\"encoding\":\"base64\""), "{json}");
        let back: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn body_repr_rejects_bad_base64_and_lying_sizes() {
        let err = serde_json::from_str::<CapturedBody>(
            r#"{"size":3,"truncated":false,"encoding":"base64","data":"!!"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        let err = serde_json::from_str::<CapturedBody>(
            r#"{"size":1,"truncated":false,"encoding":"utf8","data":"abc"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("size says 1"), "{err}");
    }

    #[test]
    fn capped_bodies_say_they_are_truncated() {
        let body = CapturedBody::capped(b"hello world", 5);
        assert_eq!(&body.bytes[..], b"hello");
        assert_eq!(body.size, 11);
        assert!(body.truncated);
        assert!(!CapturedBody::capped(b"hi", 5).truncated);
    }

    #[test]
    fn masking_hides_secret_headers_only() {
        let masked = Entry::Exchange(sample()).masked();
        let Entry::Exchange(e) = masked else {
            unreachable!()
        };
        assert_eq!(e.request.headers[0].1, "application/json");
        assert_eq!(e.request.headers[1].1, "[masked: 13 chars]");
        assert_eq!(e.response.unwrap().headers[0].1, "[masked: 3 chars]");
        for name in [
            "Authorization",
            "Cookie",
            "Stripe-Signature",
            "X-Gitlab-Token",
            "X-Shopify-Hmac-Sha256",
            "svix-signature",
        ] {
            assert!(is_secret_header(name), "{name}");
        }
        assert!(!is_secret_header("content-type"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_944_600_123);
        assert_eq!(rfc3339(time), "2026-11-29T09:30:00.123Z");
    }

    #[test]
    fn debug_output_hides_secret_headers_and_bodies() {
        let shown = format!("{:?}", Entry::Exchange(sample()));
        assert!(!shown.contains("sha256=abcdef"), "{shown}");
        assert!(!shown.contains("s=1"), "{shown}");
        assert!(shown.contains("[masked: 13 chars]"), "{shown}");
        assert!(shown.contains("<7 bytes>"), "{shown}");
    }

    #[test]
    fn audit_lines_become_denials_and_other_results_are_skipped() {
        let line = r#"{"time":"2026-11-29T08:00:00Z","funnel":"hooks.example","client":"203.0.113.7:5000","method":"POST","path":"/hook","gate":"webhook:github","result":"deny","reason":"signature_mismatch","status":403,"bytes":18,"duration_ms":2}"#;
        let denied = DeniedDelivery::from_audit_line(line).unwrap().unwrap();
        assert_eq!(denied.reason, "signature_mismatch");
        assert_eq!(denied.gate.as_deref(), Some("webhook:github"));
        let allowed = line.replace("\"deny\"", "\"allow\"");
        assert!(DeniedDelivery::from_audit_line(&allowed).unwrap().is_none());
        let err = DeniedDelivery::from_audit_line("{nope").unwrap_err();
        assert!(
            err.to_string().starts_with("not an ingress audit record"),
            "{err}"
        );
    }
}

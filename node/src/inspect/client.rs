//! A client of the inspection API, for `postern inspect list|show|replay ID`.
//!
//! ```no_run
//! # async fn example() -> Result<(), postern_node::inspect::client::ClientError> {
//! use postern_node::inspect::client::InspectClient;
//! use postern_node::inspect::EntryFilter;
//! let client = InspectClient::new("http://127.0.0.1:4040")?;
//! for entry in client.list(&EntryFilter::default()).await? {
//!     println!("{} {} {} {:?}", entry.id, entry.method, entry.path, entry.status);
//! }
//! let replayed = client.replay(1, &Default::default()).await?;
//! # let _ = replayed; Ok(()) }
//! ```
//!
//! The client sends neither `Origin` nor `Sec-Fetch-Site`, so the API's cross-site check
//! lets it through; its `Host` is the URL's, so point it at a loopback address.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use super::api::{ApiError, EntryDetail, InspectStatus};
use super::exchange::EntrySummary;
use super::proxy::{ReplayChanges, ReplayOutcome};
use super::store::EntryFilter;

/// Why a call to the inspection API failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not `http://HOST:PORT`.
    #[error("the inspector address {0:?} is not an http://HOST:PORT URL")]
    BadAddress(String),
    /// Nothing answered: the node is not running or was started with `--inspect off`.
    #[error(
        "cannot reach the inspector at {url}: {reason} (is `postern up` running with --inspect?)"
    )]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The connection error.
        reason: String,
    },
    /// The API answered with an error; `message` is its explanation.
    #[error("the inspector answered {status}: {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The API's `error` text, or the raw body.
        message: String,
    },
    /// The answer was not the JSON expected (a different program on that port?).
    #[error("the inspector's answer could not be read: {0}")]
    Decode(String),
}

/// A client of one inspector.
#[derive(Debug, Clone)]
pub struct InspectClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl InspectClient {
    /// A client of the inspector at `base` (e.g. `http://127.0.0.1:4040`).
    ///
    /// Fails if `base` is not an `http://` URL with a host.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let uri: Uri = base
            .parse()
            .map_err(|_| ClientError::BadAddress(base.to_owned()))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ClientError::BadAddress(base.to_owned()));
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// The entries matching `filter`, newest first.
    pub async fn list(&self, filter: &EntryFilter) -> Result<Vec<EntrySummary>, ClientError> {
        let query = filter_query(filter);
        self.json(Method::GET, &format!("/api/requests{query}"), None)
            .await
    }

    /// One entry; secret headers are masked unless `reveal`.
    pub async fn show(&self, id: u64, reveal: bool) -> Result<EntryDetail, ClientError> {
        let query = if reveal { "?reveal=1" } else { "" };
        self.json(Method::GET, &format!("/api/requests/{id}{query}"), None)
            .await
    }

    /// The request of entry `id` as a curl command line.
    pub async fn curl(&self, id: u64, reveal: bool) -> Result<String, ClientError> {
        let query = if reveal { "?reveal=1" } else { "" };
        let bytes = self
            .call(
                Method::GET,
                &format!("/api/requests/{id}/curl{query}"),
                None,
            )
            .await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Re-sends entry `id` to the local service with `changes`; the replay bypasses the
    /// gate and is recorded linked to the original.
    pub async fn replay(
        &self,
        id: u64,
        changes: &ReplayChanges,
    ) -> Result<ReplayOutcome, ClientError> {
        let body = serde_json::to_vec(changes).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.json(
            Method::POST,
            &format!("/api/requests/{id}/replay"),
            Some(Bytes::from(body)),
        )
        .await
    }

    /// Forgets every captured entry.
    pub async fn clear(&self) -> Result<(), ClientError> {
        self.call(Method::DELETE, "/api/requests", None).await?;
        Ok(())
    }

    /// The inspector's target, counts and bounds.
    pub async fn status(&self) -> Result<InspectStatus, ClientError> {
        self.json(Method::GET, "/api/status", None).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<T, ClientError> {
        let bytes = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| ClientError::BadAddress(url.clone()))?;
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            reason,
        };
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        Ok(bytes)
    }
}

/// `?name=value&...` for the filter's set fields (empty when none is set).
fn filter_query(filter: &EntryFilter) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    let mut text = |name, value: &Option<String>| {
        if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
            pairs.push((name, value.clone()));
        }
    };
    text("path", &filter.path);
    text("method", &filter.method);
    text("status", &filter.status);
    text("header", &filter.header);
    text("kind", &filter.kind);
    text("source", &filter.source);
    if let Some(ms) = filter.min_duration_ms {
        pairs.push(("min_duration_ms", ms.to_string()));
    }
    if let Some(ms) = filter.max_duration_ms {
        pairs.push(("max_duration_ms", ms.to_string()));
    }
    if let Some(limit) = filter.limit {
        pairs.push(("limit", limit.to_string()));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let joined: Vec<String> = pairs
        .into_iter()
        .map(|(name, value)| format!("{name}={}", percent_encode(&value)))
        .collect();
    format!("?{}", joined.join("&"))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_an_encoded_query() {
        assert_eq!(filter_query(&EntryFilter::default()), "");
        let filter = EntryFilter {
            path: Some("/hooks/a b".into()),
            header: Some("x-github-event: push".into()),
            min_duration_ms: Some(5),
            ..EntryFilter::default()
        };
        assert_eq!(
            filter_query(&filter),
            "?path=/hooks/a%20b&header=x-github-event%3A%20push&min_duration_ms=5"
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert!(matches!(
            InspectClient::new("127.0.0.1:4040"),
            Err(ClientError::BadAddress(_))
        ));
        assert!(InspectClient::new("http://127.0.0.1:4040/").is_ok());
    }
}

//! [`CapturingProxy`]: forwards HTTP requests to the local service and records each
//! exchange in an [`ExchangeRecorder`].
//!
//! Bodies stream through in both directions; only their first
//! [`ExchangeRecorder::max_body_bytes`] bytes are copied aside. The exchange is recorded
//! when the response body ends, or when it is dropped early (the client went away), so its
//! duration covers the whole response.
//!
//! Use it three ways:
//! - standalone: [`CapturingProxy::serve`] on a TCP listener (the test harness, and
//!   `postern funnel` before the mesh hop exists);
//! - from another proxy: [`CapturingProxy::forward`] one request with its
//!   [`ExchangeMeta`] (source, gate, identity);
//! - to replay: [`CapturingProxy::replay`] re-sends a captured request (optionally
//!   modified) and records the result linked to the original.
//!
//! WebSocket and other upgrades are not supported: the `Upgrade` header is dropped with the
//! other hop-by-hop headers.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::exchange::{
    Admission, CapturedBody, CapturedRequest, CapturedResponse, Entry, Exchange, Source,
    header_pairs, rfc3339,
};
use super::store::ExchangeRecorder;

/// A boxed error, as bodies carry them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type [`CapturingProxy::forward`] answers with.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The header a replayed request carries so the local service can tell it from a live one.
pub const REPLAY_HEADER: &str = "x-postern-replay-of";

/// How long [`CapturingProxy::replay`] waits for the whole response: 30 s.
pub const DEFAULT_REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a [`CapturingProxy`] knows about a request besides the request itself.
#[derive(Debug, Clone)]
pub struct ExchangeMeta {
    /// Funnel, serve or replay.
    pub source: Source,
    /// The gate that admitted it, and as whom.
    pub admission: Option<Admission>,
    /// For replays, the original's id.
    pub replay_of: Option<u64>,
    /// The node's served port the request came to (for a replay, the original's).
    pub port: Option<u16>,
}

impl ExchangeMeta {
    /// A funnel request with no gate information.
    pub fn funnel() -> Self {
        Self {
            source: Source::Funnel,
            admission: None,
            replay_of: None,
            port: None,
        }
    }
}

/// Why a [`CapturingProxy`] could not be built or a replay could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The target is not an `http://host:port` URL.
    #[error("the local target {target:?} is not an http://HOST:PORT URL: {reason}")]
    BadTarget {
        /// What was given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The entry to replay does not exist (evicted or cleared?) or is a denial.
    #[error("no captured exchange {0} to replay (it may have been evicted or cleared)")]
    NotFound(u64),
    /// The original's request body was truncated, so it cannot be re-sent as it was.
    #[error(
        "exchange {id}'s request body was truncated at {kept} of {size} bytes; replay it with a body of your own, or raise the body cap"
    )]
    TruncatedBody {
        /// The exchange.
        id: u64,
        /// Bytes kept.
        kept: usize,
        /// The body's real size.
        size: u64,
    },
    /// A modification is not valid HTTP (method, path or header).
    #[error("invalid replay modification: {0}")]
    BadModification(String),
}

/// Changes to make when replaying (all optional): `POST /api/requests/ID/replay`'s JSON
/// body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayChanges {
    /// A different method.
    #[serde(default)]
    pub method: Option<String>,
    /// A different path and query (must start with `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// The full header list to send instead of the original's. A value still equal to the
    /// masked form of the original's value (`[masked: N chars]`) is replaced by the
    /// original value, so an edited copy of a masked view keeps its secrets.
    #[serde(default)]
    pub headers: Option<Vec<(String, String)>>,
    /// A different body, as text.
    #[serde(default)]
    pub body: Option<String>,
}

/// The result of a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayOutcome {
    /// The new exchange's id.
    pub id: u64,
    /// The original's id.
    pub replay_of: u64,
    /// The local service's status, `None` if it could not be reached or did not answer in
    /// time.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Forwards requests to one local HTTP target and records every exchange.
#[derive(Debug, Clone)]
pub struct CapturingProxy {
    target: Uri,
    replay_timeout: Duration,
    recorder: Arc<dyn ExchangeRecorder>,
    client: Client<HttpConnector, ProxyBody>,
}

impl CapturingProxy {
    /// A proxy to `target` (`http://127.0.0.1:3000`, optionally with a path prefix) that
    /// records into `recorder`.
    ///
    /// Fails if the target is not an `http://` URL with a host.
    pub fn new(target: &str, recorder: Arc<dyn ExchangeRecorder>) -> Result<Self, ProxyError> {
        let bad = |reason: &str| ProxyError::BadTarget {
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = target.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported for the local service"));
        }
        if uri.authority().is_none() {
            return Err(bad("it has no host"));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            target: uri,
            replay_timeout: DEFAULT_REPLAY_TIMEOUT,
            recorder,
            client,
        })
    }

    /// The same proxy with replays abandoned after `timeout` (default
    /// [`DEFAULT_REPLAY_TIMEOUT`]) instead.
    pub fn with_replay_timeout(mut self, timeout: Duration) -> Self {
        self.replay_timeout = timeout;
        self
    }

    /// The target URL, e.g. `http://127.0.0.1:3000/`.
    pub fn target(&self) -> &Uri {
        &self.target
    }

    /// Forwards `request` to the target and answers with the target's response, streaming
    /// it; the exchange is recorded when that response body ends or is dropped. If the
    /// target cannot be reached, answers 502 with a plain-text reason (and records that).
    pub async fn forward<B>(&self, request: Request<B>, meta: ExchangeMeta) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let time = rfc3339(SystemTime::now());
        let cap = self.recorder.max_body_bytes();
        let (parts, body) = request.into_parts();
        let request_capture = Arc::new(Mutex::new(BodyCapture::new(cap)));
        let captured_request = CapturedRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            version: format!("{:?}", parts.version),
            headers: header_pairs(&parts.headers),
            body: CapturedBody::default(),
        };
        let mut pending = PendingExchange {
            exchange: Exchange {
                id: 0,
                time,
                source: meta.source,
                replay_of: meta.replay_of,
                port: meta.port,
                admission: meta.admission,
                request: captured_request,
                response: None,
                error: None,
                duration_ms: 0,
            },
            request_body: request_capture.clone(),
            response_body: None,
            started,
            recorder: self.recorder.clone(),
            finished: false,
        };

        let upstream = match self.upstream_request(
            &parts.method,
            &pending.exchange.request.path,
            &parts.headers,
        ) {
            Ok(builder) => builder,
            Err(reason) => return pending.fail(StatusCode::BAD_REQUEST, reason),
        };
        let body = CaptureBody {
            inner: body.map_err(Into::into).boxed_unsync(),
            capture: request_capture,
            finish: None,
        };
        let upstream = match upstream.body(body.boxed_unsync()) {
            Ok(request) => request,
            Err(e) => return pending.fail(StatusCode::BAD_REQUEST, format!("cannot forward: {e}")),
        };
        let response = match self.client.request(upstream).await {
            Ok(response) => response,
            Err(e) => {
                let reason = format!(
                    "the local service at {} did not answer: {}",
                    self.target,
                    error_chain(&e)
                );
                return pending.fail(StatusCode::BAD_GATEWAY, reason);
            }
        };
        let (mut parts, body) = response.into_parts();
        pending.exchange.response = Some(CapturedResponse {
            status: parts.status.as_u16(),
            headers: header_pairs(&parts.headers),
            body: CapturedBody::default(),
        });
        crate::hop_by_hop::strip(&mut parts.headers);
        let response_capture = Arc::new(Mutex::new(BodyCapture::new(cap)));
        pending.response_body = Some(response_capture.clone());
        let body = CaptureBody {
            inner: body.map_err(Into::into).boxed_unsync(),
            capture: response_capture,
            finish: Some(pending),
        };
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// Re-sends the request of exchange `original` (from `recorder`'s store), changed by
    /// `changes`, waits for the whole response, records it as a [`Source::Replay`] linked to
    /// the original, and returns the new id. The request carries `X-Postern-Replay-Of: ID`.
    /// Replays do not pass through any gate.
    ///
    /// Fails if the original is unknown, a denial, has a truncated body (and no new body is
    /// given) or a change is not valid HTTP. An unreachable or stalled local service is not
    /// a failure: it is recorded and reported in the outcome's `error` (a replay is
    /// abandoned after the replay timeout, 30 s by default).
    pub async fn replay(
        &self,
        original: Option<Entry>,
        original_id: u64,
        changes: &ReplayChanges,
    ) -> Result<ReplayOutcome, ProxyError> {
        let Some(Entry::Exchange(original)) = original else {
            return Err(ProxyError::NotFound(original_id));
        };
        let request = &original.request;
        let body = match &changes.body {
            Some(text) => Bytes::from(text.clone().into_bytes()),
            None if request.body.truncated => {
                return Err(ProxyError::TruncatedBody {
                    id: original.id,
                    kept: request.body.bytes.len(),
                    size: request.body.size,
                });
            }
            None => request.body.bytes.clone(),
        };
        let method = changes.method.as_deref().unwrap_or(&request.method);
        let method = http::Method::from_bytes(method.trim().as_bytes()).map_err(|_| {
            ProxyError::BadModification(format!("{method:?} is not an HTTP method"))
        })?;
        let path = changes.path.as_deref().unwrap_or(&request.path);
        if !path.starts_with('/') {
            return Err(ProxyError::BadModification(format!(
                "the path {path:?} must start with /"
            )));
        }
        let pairs = match &changes.headers {
            Some(edited) => unmask(edited, &request.headers),
            None => request.headers.clone(),
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in &pairs {
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                ProxyError::BadModification(format!("{name:?} is not a header name"))
            })?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| {
                ProxyError::BadModification(format!(
                    "the value of {name} is not a valid header value"
                ))
            })?;
            headers.append(name, value);
        }
        // The body may have changed; let hyper compute the length.
        headers.remove(http::header::CONTENT_LENGTH);
        headers.remove(http::header::TRANSFER_ENCODING);
        headers.insert(
            HeaderName::from_static(REPLAY_HEADER),
            HeaderValue::from(original.id),
        );
        let mut request = Request::new(Full::new(body).map_err(|e| match e {}));
        *request.method_mut() = method;
        *request.uri_mut() = path
            .parse()
            .map_err(|_| ProxyError::BadModification(format!("{path:?} is not a valid path")))?;
        *request.headers_mut() = headers;
        let meta = ExchangeMeta {
            source: Source::Replay,
            admission: None,
            replay_of: Some(original.id),
            port: original.port,
        };
        let ids = Arc::new(RecordedId::default());
        let proxy = CapturingProxy {
            recorder: Arc::new(IdCatcher {
                inner: self.recorder.clone(),
                id: ids.clone(),
            }),
            ..self.clone()
        };
        let exchange = async {
            let response = proxy.forward(request, meta).await;
            let status = response.status();
            let failed = response.headers().contains_key(PROXY_ERROR_HEADER);
            // Drain the body so the exchange completes and is recorded.
            let body = response
                .into_body()
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            (status, failed, body)
        };
        let (status, error) = match tokio::time::timeout(self.replay_timeout, exchange).await {
            Ok((status, false, _)) => (Some(status.as_u16()), None),
            Ok((_, true, body)) => (None, Some(String::from_utf8_lossy(&body).trim().to_owned())),
            Err(_) => (
                None,
                Some(format!(
                    "the local service at {} did not finish answering within {} ms; the replay was abandoned",
                    self.target,
                    self.replay_timeout.as_millis()
                )),
            ),
        };
        Ok(ReplayOutcome {
            id: ids.get(),
            replay_of: original.id,
            status,
            error,
        })
    }

    /// Serves HTTP/1.1 on `listener`, forwarding every request with `meta`, until
    /// `shutdown` is cancelled. Connections in progress finish on their own.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        meta: ExchangeMeta,
        shutdown: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, _) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "capturing proxy: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proxy = self.clone();
            let meta = meta.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let proxy = proxy.clone();
                        let meta = meta.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(proxy.forward(request, meta).await)
                        }
                    });
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "capturing proxy: connection ended with an error");
                }
            });
        }
    }

    fn upstream_request(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<http::request::Builder, String> {
        let base = self.target.path().trim_end_matches('/');
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.target.authority().map_or("", |a| a.as_str()))
            .path_and_query(format!("{base}{path}"))
            .build()
            .map_err(|e| format!("cannot build the target URL for {path:?}: {e}"))?;
        let mut headers = headers.clone();
        crate::hop_by_hop::strip(&mut headers);
        if let Some(host) = headers.remove(HOST) {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        if let Some(map) = builder.headers_mut() {
            *map = headers;
        }
        Ok(builder)
    }
}

/// A header the proxy puts on the answers it makes itself (502 when the target is down), so
/// a replay can tell them from the target's.
const PROXY_ERROR_HEADER: &str = "x-postern-proxy-error";

/// An exchange waiting for its response body to end.
struct PendingExchange {
    exchange: Exchange,
    request_body: Arc<Mutex<BodyCapture>>,
    response_body: Option<Arc<Mutex<BodyCapture>>>,
    started: Instant,
    recorder: Arc<dyn ExchangeRecorder>,
    finished: bool,
}

impl PendingExchange {
    /// Records the exchange as failed and answers `status` with `reason` as text.
    fn fail(mut self, status: StatusCode, reason: String) -> Response<ProxyBody> {
        tracing::debug!(%reason, "capturing proxy: request failed");
        self.exchange.error = Some(reason.clone());
        self.finished = true;
        drop(self);
        let mut response = Response::new(
            Full::new(Bytes::from(format!("{reason}\n")))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response.headers_mut().insert(
            HeaderName::from_static(PROXY_ERROR_HEADER),
            HeaderValue::from_static("1"),
        );
        response
    }
}

impl Drop for PendingExchange {
    fn drop(&mut self) {
        let mut exchange = std::mem::replace(&mut self.exchange, empty_exchange());
        exchange.duration_ms =
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        exchange.request.body = lock(&self.request_body).take();
        if let (Some(capture), Some(response)) = (&self.response_body, exchange.response.as_mut()) {
            let mut capture = lock(capture);
            if !capture.complete && !self.finished && exchange.error.is_none() {
                exchange.error = Some("the client went away before the response ended".to_owned());
            }
            response.body = capture.take();
        }
        if exchange.response.is_none() && exchange.error.is_none() && !self.finished {
            exchange.error = Some("abandoned before the local service answered".to_owned());
        }
        self.recorder.record(exchange);
    }
}

fn empty_exchange() -> Exchange {
    Exchange {
        id: 0,
        time: String::new(),
        source: Source::Funnel,
        replay_of: None,
        port: None,
        admission: None,
        request: CapturedRequest {
            method: String::new(),
            path: String::new(),
            version: String::new(),
            headers: Vec::new(),
            body: CapturedBody::default(),
        },
        response: None,
        error: None,
        duration_ms: 0,
    }
}

/// The first `cap` bytes of a body, and its full size.
#[derive(Debug)]
struct BodyCapture {
    kept: BytesMut,
    size: u64,
    cap: usize,
    complete: bool,
}

impl BodyCapture {
    fn new(cap: usize) -> Self {
        Self {
            kept: BytesMut::new(),
            size: 0,
            cap,
            complete: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.size = self.size.saturating_add(data.len() as u64);
        let room = self.cap.saturating_sub(self.kept.len());
        self.kept
            .extend_from_slice(data.get(..room).unwrap_or(data));
    }

    fn take(&mut self) -> CapturedBody {
        let bytes = std::mem::take(&mut self.kept).freeze();
        CapturedBody {
            truncated: (bytes.len() as u64) < self.size,
            size: self.size,
            bytes,
        }
    }
}

/// A body that copies what passes through into a [`BodyCapture`], and (for responses)
/// finishes the exchange when it ends or is dropped.
struct CaptureBody {
    inner: ProxyBody,
    capture: Arc<Mutex<BodyCapture>>,
    finish: Option<PendingExchange>,
}

impl Body for CaptureBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    lock(&this.capture).push(data);
                }
                // hyper stops polling a body that says it has ended (e.g. Content-Length
                // reached), so the `None` below may never come.
                if this.inner.is_end_stream() {
                    lock(&this.capture).complete = true;
                    this.finish.take();
                }
            }
            Poll::Ready(None) => {
                lock(&this.capture).complete = true;
                // Record now rather than whenever the body is dropped.
                this.finish.take();
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(pending) = this.finish.as_mut() {
                    pending.exchange.error = Some(format!("the body failed midway: {error}"));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CaptureBody {
    fn drop(&mut self) {
        // An empty body may be finished without ever being polled.
        if self.inner.is_end_stream() {
            lock(&self.capture).complete = true;
        }
        // `finish` (if still here) is dropped next and records the exchange.
    }
}

/// Passes records on and remembers the id the last one got (for [`CapturingProxy::replay`]).
#[derive(Debug)]
struct IdCatcher {
    inner: Arc<dyn ExchangeRecorder>,
    id: Arc<RecordedId>,
}

#[derive(Debug, Default)]
struct RecordedId(Mutex<u64>);

impl RecordedId {
    fn get(&self) -> u64 {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ExchangeRecorder for IdCatcher {
    fn record(&self, exchange: Exchange) -> u64 {
        let id = self.inner.record(exchange);
        *self
            .id
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = id;
        id
    }

    fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes()
    }
}

/// Replaces masked placeholders in `edited` with the original value of the same header.
fn unmask(edited: &[(String, String)], original: &[(String, String)]) -> Vec<(String, String)> {
    edited
        .iter()
        .map(|(name, value)| {
            let restored = original
                .iter()
                .find(|(n, v)| {
                    n.eq_ignore_ascii_case(name.trim()) && super::masked_value(v) == value.trim()
                })
                .map(|(_, v)| v.clone());
            (name.clone(), restored.unwrap_or_else(|| value.clone()))
        })
        .collect()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_capture_keeps_the_first_bytes_and_counts_all() {
        let mut capture = BodyCapture::new(4);
        capture.push(b"abc");
        capture.push(b"defg");
        let body = capture.take();
        assert_eq!(&body.bytes[..], b"abcd");
        assert_eq!(body.size, 7);
        assert!(body.truncated);
    }

    #[test]
    fn unmask_restores_only_untouched_placeholders() {
        let original = vec![
            ("x-hub-signature-256".to_owned(), "sha256=secret".to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        let edited = vec![
            (
                "X-Hub-Signature-256".to_owned(),
                "[masked: 13 chars]".to_owned(),
            ),
            ("content-type".to_owned(), "text/plain".to_owned()),
        ];
        let out = unmask(&edited, &original);
        assert_eq!(out[0].1, "sha256=secret");
        assert_eq!(out[1].1, "text/plain");
    }

    #[test]
    fn bad_targets_are_refused_with_the_reason() {
        let store = crate::inspect::CaptureStore::in_memory(Default::default());
        let err = CapturingProxy::new("https://127.0.0.1:3000", store.clone()).unwrap_err();
        assert!(err.to_string().contains("only http://"), "{err}");
        let err = CapturingProxy::new("127.0.0.1:3000", store).unwrap_err();
        assert!(err.to_string().contains("http://HOST:PORT"), "{err}");
    }
}

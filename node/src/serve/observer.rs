//! The request-capture hook: the HTTP proxy tells an [`ExchangeObserver`] about every
//! exchange it carried, so that request inspection (`postern inspect`, `node/src/inspect/`)
//! can store and show them.
//!
//! The proxy asks [`ExchangeObserver::capture_limit`] when a request arrives. `None` means
//! "not recording now": nothing is copied and nothing is reported, so the default
//! [`NoopObserver`] costs one virtual call per request. `Some(limit)` makes the proxy copy
//! up to `limit` bytes of each body (request and response) as they stream past (bodies are
//! never buffered or delayed for the observer) and call [`ExchangeObserver::record`] once
//! when the response body has ended, failed, or been dropped by the client.
//!
//! What the observer gets is what the target saw: headers after the identity headers were
//! set, including `Authorization` and cookies. A store that shows or persists exchanges
//! must treat them as secrets.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};

use super::identity::RequestOrigin;

/// Receives the exchanges the serve proxy carries. Implementations must be quick:
/// `record` runs on the connection's task (hand the exchange to a channel or a short lock).
pub trait ExchangeObserver: Send + Sync + fmt::Debug {
    /// How many bytes of each body to capture for the next exchange, or `None` to not
    /// record it at all.
    fn capture_limit(&self) -> Option<usize>;

    /// One finished exchange.
    fn record(&self, exchange: Exchange);
}

/// An observer that records nothing: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl ExchangeObserver for NoopObserver {
    fn capture_limit(&self) -> Option<usize> {
        None
    }

    fn record(&self, _exchange: Exchange) {}
}

/// One request and its response, as the local target saw them.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// When the request arrived (wall clock).
    pub started: SystemTime,
    /// From the request's arrival to the end of the response body.
    pub duration: Duration,
    /// Who sent it (tailnet peer, or funnel client and admitted identity).
    pub origin: RequestOrigin,
    /// The node's served port.
    pub port: u16,
    /// The request method.
    pub method: Method,
    /// The request target as the client sent it (path and query).
    pub uri: Uri,
    /// The HTTP version the client spoke.
    pub version: Version,
    /// The origin the request was sent to, e.g. `http://127.0.0.1:3000/users`; empty if no
    /// route matched.
    pub upstream: String,
    /// The request headers sent to the target (identity headers set, hop-by-hop removed).
    pub request_headers: HeaderMap,
    /// The captured request body.
    pub request_body: CapturedBody,
    /// The response status sent to the client (a `502` of the node's own if the target
    /// could not be reached: see `error`).
    pub status: StatusCode,
    /// Whether the response came from the origin (`false` when the node answered itself:
    /// no route, origin unreachable).
    pub answered_by_origin: bool,
    /// The response headers.
    pub response_headers: HeaderMap,
    /// The captured response body.
    pub response_body: CapturedBody,
    /// What went wrong, if the node answered on the target's behalf or a body failed.
    pub error: Option<String>,
}

/// The first bytes of a body, and how long it really was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedBody {
    /// Up to the capture limit.
    pub bytes: Bytes,
    /// The body's full length so far (counted even past the limit).
    pub total_len: u64,
    /// Whether `bytes` is shorter than the body.
    pub truncated: bool,
}

/// A body wrapper that copies the first `limit` bytes into a shared capture as they pass.
pub(super) struct TeeBody<B> {
    inner: B,
    capture: Arc<Mutex<Capture>>,
    limit: usize,
}

/// What a [`TeeBody`] has seen.
#[derive(Debug, Default)]
pub(super) struct Capture {
    bytes: BytesMut,
    total: u64,
    error: Option<String>,
}

impl Capture {
    pub(super) fn snapshot(&self) -> (CapturedBody, Option<String>) {
        let bytes = self.bytes.clone().freeze();
        let truncated = (bytes.len() as u64) < self.total;
        (
            CapturedBody {
                bytes,
                total_len: self.total,
                truncated,
            },
            self.error.clone(),
        )
    }
}

impl<B> TeeBody<B> {
    pub(super) fn new(inner: B, limit: usize) -> (Self, Arc<Mutex<Capture>>) {
        let capture = Arc::new(Mutex::new(Capture::default()));
        (
            Self {
                inner,
                capture: Arc::clone(&capture),
                limit,
            },
            capture,
        )
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(result)) = &polled {
            let mut capture = this.capture.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        capture.total += data.len() as u64;
                        let room = this.limit.saturating_sub(capture.bytes.len());
                        let take = room.min(data.len());
                        if let Some(head) = data.get(..take) {
                            capture.bytes.extend_from_slice(head);
                        }
                    }
                }
                Err(error) => capture.error = Some(error.to_string()),
            }
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

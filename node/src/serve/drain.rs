//! Request bodies that are read to their end even when whoever was sending them on stops
//! early: [`DrainOnDrop`].
//!
//! When a target answers before it read a request's body (a `401` or `413` to an upload)
//! and closes, the proxy in front of it stops forwarding that body. Left unread on the
//! incoming connection, the rest makes hyper close that connection after the answer: a
//! pooled hop stream between the ingress and the node is then lost, and a client that is
//! still uploading can lose the answer itself (an HTTP/2 reset, or a TCP reset under
//! HTTP/1.1). Reading the rest and dropping it, within bounds, keeps both, as nginx does
//! with the bodies it discards.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// How long the rest of an abandoned body is read at most.
pub const DRAIN_FOR: Duration = Duration::from_secs(5);

/// How many bytes of an abandoned body are read at most.
pub const DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// An incoming body that, if dropped before its end, reads and drops the rest in a task of
/// its own (at most [`DRAIN_FOR`] and [`DRAIN_BYTES`]) before it lets the body go.
///
/// Use it for a body forwarded to a target (the node's serve proxy), and to hold the
/// unread body of a request the edge answered itself.
#[derive(Debug)]
pub struct DrainOnDrop {
    body: Option<Incoming>,
    ended: bool,
}

impl DrainOnDrop {
    /// Wraps `body`.
    pub fn new(body: Incoming) -> Self {
        let ended = body.is_end_stream();
        Self {
            body: Some(body),
            ended,
        }
    }
}

impl Body for DrainOnDrop {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if self.ended || body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut read = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        read = read.saturating_add(data.len() as u64);
                        if read > DRAIN_BYTES {
                            return;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
        });
    }
}

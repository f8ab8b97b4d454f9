//! Response bodies that report their end: [`OnEndBody`].
//!
//! What happens after a response is built is decided by the body: it may stream for a long
//! time, fail half-way, or be dropped when the client goes. The records that describe a
//! response (the node's captured exchange, the edge's audit record with its byte count and
//! duration) are therefore written when its body ends, whichever way it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

/// A body that calls `on_end` once, with the number of data bytes that went through, when
/// the body ends, fails or is dropped (whichever comes first).
///
/// Wrap a response's body in it when something must be recorded once the response is
/// over; `on_end` runs on the task that polls or drops the body, so keep it short (hand
/// the record to a channel or a short lock).
pub struct OnEndBody<B, F: FnOnce(u64)> {
    inner: B,
    bytes: u64,
    on_end: Option<F>,
}

impl<B, F: FnOnce(u64)> OnEndBody<B, F> {
    /// Wraps `inner`; `on_end` gets the data bytes that went through.
    pub fn new(inner: B, on_end: F) -> Self {
        Self {
            inner,
            bytes: 0,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes);
        }
    }
}

impl<B: Body + Unpin, F: FnOnce(u64) + Unpin> Body for OnEndBody<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes = this
                        .bytes
                        .saturating_add(bytes::Buf::remaining(data) as u64);
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.end(),
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

impl<B, F: FnOnce(u64)> Drop for OnEndBody<B, F> {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<u64>>>, impl FnOnce(u64) + Unpin) {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&ends);
        (ends, move |bytes| seen.lock().unwrap().push(bytes))
    }

    #[tokio::test]
    async fn reports_once_with_the_bytes_at_the_end() {
        let (ends, on_end) = recorder();
        let chunks = futures::stream::iter([
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
        ]);
        let body = OnEndBody::new(StreamBody::new(chunks), on_end);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "hello world");
        assert_eq!(*ends.lock().unwrap(), [11]);
    }

    #[tokio::test]
    async fn a_body_dropped_half_way_reports_what_went_through() {
        let (ends, on_end) = recorder();
        let chunks = futures::stream::iter([
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from_static(b"never read"))),
        ]);
        let mut body = OnEndBody::new(StreamBody::new(chunks), on_end);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        assert!(ends.lock().unwrap().is_empty(), "not ended yet");
        drop(body);
        assert_eq!(*ends.lock().unwrap(), [3]);
    }

    #[tokio::test]
    async fn a_body_never_polled_reports_nothing_sent() {
        let (ends, on_end) = recorder();
        drop(OnEndBody::new(Full::new(Bytes::from_static(b"x")), on_end));
        assert_eq!(*ends.lock().unwrap(), [0]);
    }
}

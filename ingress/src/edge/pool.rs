//! Keep-alive HTTP/1.1 connections to one funnel target, reused across requests.
//!
//! Opening a connection per request costs the edge about a third of its CPU over plain
//! TCP, and over the mesh (a netstack stream plus the hop handshake, and 2 MiB socket
//! buffers on both ends) it is most of the cost of a request. An [`HttpPool`] keeps the
//! connections of one target open after their exchange and hands them to later requests.
//!
//! It is hyper-util's pooling client with a connector that asks the target's
//! [`Upstream`](super::Upstream) for a new stream, so the pool's rules are hyper's:
//! - a connection returns to the pool only when its response was read to the end (a
//!   response body dropped early, a failed exchange or a `101 Switching Protocols` upgrade
//!   closes it or hands it to the upgrade, never back to the pool);
//! - at most [`PoolLimits::max_idle`] idle connections per target, each closed after
//!   [`PoolLimits::idle_timeout`] without use;
//! - a pooled connection the target already closed is noticed when it is checked out (or
//!   when sending fails before the request was written) and the request goes out on a
//!   fresh connection; a request that was (partly) written is not sent again by the
//!   pool, the failure is the caller's: the edge sends a bodiless idempotent request
//!   (GET, HEAD, PUT, DELETE, ...) once more on a fresh connection, as nginx's
//!   `proxy_next_upstream` does, and anything else gets `502 upstream_failed`.
//!
//! Bodies stream both ways as before; the pool adds no buffering and no timeout of its own
//! (the edge's request timeout covers getting a connection, as it covered connecting).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::forward::EdgeBody;
use super::upstream::{Connecting, UpstreamError, UpstreamIo};

/// Idle connections kept per target by default (the benchmark's 32 concurrent clients
/// find a warm connection each).
pub const DEFAULT_MAX_IDLE_PER_TARGET: usize = 32;
/// How long an idle connection is kept by default: shorter than many servers' keep-alive
/// timeout (nginx: 75 s; for those with shorter ones, Apache's and Node.js's 5 s, the
/// stale-connection retry covers the race), long enough to carry bursts seconds apart.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of one target's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Most idle connections kept; `0` turns pooling off (a connection per request).
    pub max_idle: usize,
    /// How long an idle connection is kept before it is closed.
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    /// [`DEFAULT_MAX_IDLE_PER_TARGET`] connections, [`DEFAULT_IDLE_TIMEOUT`].
    fn default() -> Self {
        Self {
            max_idle: DEFAULT_MAX_IDLE_PER_TARGET,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Opens one new connection to the target for the pool.
pub type Dial = Arc<dyn Fn() -> Connecting<'static> + Send + Sync>;

/// Pooled HTTP/1.1 connections to one target; see the [module docs](self). Cloning shares
/// the pool.
#[derive(Clone)]
pub struct HttpPool {
    client: Client<Dialer, EdgeBody>,
    limits: PoolLimits,
}

impl HttpPool {
    /// A pool whose new connections come from `dial`. Needs no runtime until the first
    /// request.
    pub fn new(dial: Dial, limits: PoolLimits) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(limits.idle_timeout)
            .pool_max_idle_per_host(limits.max_idle)
            // The edge sets `Host` itself (the funnel's hostname).
            .set_host(false)
            .build(Dialer(dial));
        Self { client, limits }
    }

    /// Sends `request` (origin-form URI, e.g. `/hook?x=1`, HTTP/1.1) on an idle connection
    /// or a new one, and returns the response head with its body streaming. Fails with
    /// [`UpstreamError::Refused`] if the dialer's error carries a hop refusal,
    /// [`UpstreamError::Connect`] for other connect failures, [`UpstreamError::Http`] when
    /// the exchange failed.
    pub fn send(
        &self,
        mut request: Request<EdgeBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + 'static {
        // The client keys its pool by scheme and authority and wants them in the URI; every
        // request of this pool goes to the one target, whatever the name. It sends the
        // origin form on the wire.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(http::uri::Authority::from_static("funnel-target"));
        parts.path_and_query = request.uri().path_and_query().cloned();
        let uri = Uri::from_parts(parts);
        let client = self.client.clone();
        async move {
            *request.uri_mut() = uri.map_err(|error| UpstreamError::Http(Box::new(error)))?;
            client.request(request).await.map_err(pool_error)
        }
    }

    /// The pool's bounds.
    pub fn limits(&self) -> PoolLimits {
        self.limits
    }
}

impl fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPool")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The pool's connector: every URI leads to the one target `dial` opens.
#[derive(Clone)]
struct Dialer(Dial);

impl tower::Service<Uri> for Dialer {
    type Response = TokioIo<PooledStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _target: Uri) -> Self::Future {
        let connecting = (self.0)();
        Box::pin(async move { Ok(TokioIo::new(PooledStream(connecting.await?))) })
    }
}

/// A target stream as the pool wants it (hyper-util's `Connection`).
struct PooledStream(Box<dyn UpstreamIo>);

impl Connection for PooledStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for PooledStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PooledStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}

/// The pooling client's error as the edge's: a connect error keeps a hop refusal it
/// carries (so the audit says `node_refused_...`), anything else is an HTTP failure.
fn pool_error(error: hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        if let Some(io_error) = inner.downcast_ref::<io::Error>() {
            if let Some(refusal) = io_error
                .get_ref()
                .and_then(|e| e.downcast_ref::<postern_proto::funnel_hop::Refusal>())
            {
                return UpstreamError::Refused(refusal.clone());
            }
            if error.is_connect() {
                return UpstreamError::Connect(io::Error::new(
                    io_error.kind(),
                    io_error.to_string(),
                ));
            }
        }
        source = inner.source();
    }
    if error.is_connect() {
        UpstreamError::Connect(io::Error::other(error.to_string()))
    } else {
        UpstreamError::Http(Box::new(error))
    }
}

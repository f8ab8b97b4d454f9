//! How the edge reaches a funnel's target: byte streams, and HTTP exchanges over pooled
//! keep-alive connections.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::forward::EdgeBody;
use super::pool::{Dial, HttpPool, PoolLimits};
use crate::gate::Identity;

/// A bidirectional byte stream to a target (TCP, or the embedded node's netstack).
///
/// `Any`, so a relay can tell a stream of the mesh from others and take its faster path
/// (the TCP funnel's `pipe_to_mesh`).
pub trait UpstreamIo: AsyncRead + AsyncWrite + Send + Unpin + std::any::Any {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> UpstreamIo for T {}

/// The future of [`Upstream::connect`]: a stream to the target, or the connect error.
pub type Connecting<'a> =
    Pin<Box<dyn Future<Output = io::Result<Box<dyn UpstreamIo>>> + Send + 'a>>;

/// The future of [`Upstream::send_request`]: the target's response head (its body
/// streaming), or why there is none.
pub type Sending<'a> =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + 'a>>;

/// Why a request could not be sent to the target or got no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No stream to the target could be opened: `502 upstream_unreachable`.
    #[error("the target could not be reached: {0}")]
    Connect(io::Error),
    /// The target node refused the mesh hop: `502` with the refusal's code.
    #[error("{0}")]
    Refused(postern_proto::funnel_hop::Refusal),
    /// The HTTP exchange failed after the stream was open: `502 upstream_failed`.
    #[error("the target's HTTP connection failed: {0}")]
    Http(Box<dyn std::error::Error + Send + Sync>),
}

impl UpstreamError {
    /// A connect error: a [`Refusal`](postern_proto::funnel_hop::Refusal) inside it
    /// becomes [`UpstreamError::Refused`], anything else [`UpstreamError::Connect`].
    pub fn from_connect(error: io::Error) -> Self {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<postern_proto::funnel_hop::Refusal>())
        {
            Some(refusal) => UpstreamError::Refused(refusal.clone()),
            None => UpstreamError::Connect(error),
        }
    }
}

/// Opens byte streams to one funnel's target and sends it HTTP requests.
///
/// The edge calls [`Upstream::send_request`] once per admitted HTTP request (and per
/// WebSocket); TCP and passthrough funnels call [`Upstream::connect`] once per public
/// connection. A connect error becomes a `502 upstream_unreachable` answer and an `error`
/// audit record; an error whose inner error is a
/// [`Refusal`](postern_proto::funnel_hop::Refusal) (the target node refused the mesh hop)
/// becomes `502` with the refusal's code (e.g. `node_refused_not_ingress`) instead.
pub trait Upstream: Send + Sync + fmt::Debug {
    /// Opens a new stream to the target.
    fn connect(&self) -> Connecting<'_>;

    /// Opens a new stream for one admitted request. Upstreams that tell the target who
    /// the request is for (the [mesh hop](super::MeshUpstream)) use `context`; the default
    /// ignores it and calls [`Upstream::connect`].
    fn connect_for(&self, context: &UpstreamContext) -> Connecting<'_> {
        let _ = context;
        self.connect()
    }

    /// Whether this upstream tells the target who a request is for by itself: the [mesh
    /// hop](super::MeshUpstream) sends the admission in its own context, from which the
    /// node writes the identity headers. The edge then strips the client's `Postern-*`
    /// headers but does not write its own (they would cross the mesh only to be stripped
    /// and written again). `false`, the default: the edge writes them.
    fn carries_admission(&self) -> bool {
        false
    }

    /// The runtime that should drive byte pipes to this upstream (a TCP funnel's
    /// connections), or `None` (the default) for the caller's. The [mesh
    /// hop](super::MeshUpstream) names its netstack's runtime
    /// ([`Netstack::runtime`](postern_netstack::Netstack::runtime)), so that a pipe and the
    /// stack it feeds share a thread.
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        None
    }

    /// Sends one admitted HTTP/1.1 request (origin-form URI, headers already rewritten by
    /// the edge) and returns the response head; bodies stream both ways. A `101` response
    /// can be upgraded with `hyper::upgrade::on`.
    ///
    /// [`TcpUpstream`] and [`MeshUpstream`](super::MeshUpstream) send it over a pooled
    /// keep-alive connection ([`HttpPool`]). This default opens a new stream with
    /// [`Upstream::connect_for`] for every request and closes it after the exchange.
    fn send_request<'a>(
        &'a self,
        request: Request<EdgeBody>,
        context: &'a UpstreamContext,
    ) -> Sending<'a> {
        Box::pin(async move {
            let stream = self
                .connect_for(context)
                .await
                .map_err(UpstreamError::from_connect)?;
            let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|error| UpstreamError::Http(Box::new(error)))?;
            tokio::spawn(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "target connection ended with an error");
                }
            });
            sender
                .send_request(request)
                .await
                .map_err(|error| UpstreamError::Http(Box::new(error)))
        })
    }
}

/// What the edge knows about an admitted request when it sends it to the target.
#[derive(Debug, Clone)]
pub struct UpstreamContext {
    /// The public client's address.
    pub client: SocketAddr,
    /// The funnel's hostname.
    pub hostname: String,
    /// The gate that admitted the request and the identity it admitted, if the funnel has
    /// gates.
    pub admission: Option<(String, Identity)>,
}

/// A target reached by plain TCP at a fixed address (`host:port`); HTTP requests go over
/// pooled keep-alive connections.
#[derive(Debug, Clone)]
pub struct TcpUpstream {
    address: Arc<str>,
    pool: HttpPool,
}

impl TcpUpstream {
    /// A target at `address` (`127.0.0.1:8080`, `origin.internal:80`); resolved on each
    /// connect. Its HTTP pool has the default [`PoolLimits`].
    pub fn new(address: impl Into<String>) -> Self {
        let address: Arc<str> = Arc::from(address.into());
        let pool = tcp_pool(&address, PoolLimits::default());
        Self { address, pool }
    }

    /// Replaces the bounds of the HTTP pool (idle connections kept, idle timeout).
    #[must_use]
    pub fn with_pool_limits(mut self, limits: PoolLimits) -> Self {
        self.pool = tcp_pool(&self.address, limits);
        self
    }
}

impl Upstream for TcpUpstream {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(connect_tcp(Arc::clone(&self.address)))
    }

    fn send_request<'a>(
        &'a self,
        request: Request<EdgeBody>,
        _context: &'a UpstreamContext,
    ) -> Sending<'a> {
        Box::pin(self.pool.send(request))
    }
}

fn tcp_pool(address: &Arc<str>, limits: PoolLimits) -> HttpPool {
    let address = Arc::clone(address);
    let dial: Dial = Arc::new(move || Box::pin(connect_tcp(Arc::clone(&address))));
    HttpPool::new(dial, limits)
}

async fn connect_tcp(address: Arc<str>) -> io::Result<Box<dyn UpstreamIo>> {
    let stream = tokio::net::TcpStream::connect(&*address).await?;
    stream.set_nodelay(true)?;
    Ok(Box::new(stream) as Box<dyn UpstreamIo>)
}

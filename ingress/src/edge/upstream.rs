//! How the edge reaches a funnel's target: a byte stream per forwarded request.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::gate::Identity;

/// A bidirectional byte stream to a target (TCP today, the embedded node's netstack later).
pub trait UpstreamIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpstreamIo for T {}

/// The future of [`Upstream::connect`]: a stream to the target, or the connect error.
pub type Connecting<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn UpstreamIo>>> + Send + 'a>>;

/// Opens byte streams to one funnel's target.
///
/// Called once per forwarded request (and once per WebSocket). An error becomes a `502
/// upstream_unreachable` answer and an `error` audit record; an error whose inner error is
/// a [`Refusal`](postern_proto::funnel_hop::Refusal) (the target node refused the mesh
/// hop) becomes `502` with the refusal's code (e.g. `node_refused_not_ingress`) instead.
pub trait Upstream: Send + Sync + fmt::Debug {
    /// Opens a new stream to the target.
    fn connect(&self) -> Connecting<'_>;

    /// Opens a new stream for one admitted request; the edge calls this one. Upstreams
    /// that tell the target who the request is for (the [mesh hop](super::MeshUpstream))
    /// use `context`; the default ignores it and calls [`Upstream::connect`].
    fn connect_for(&self, context: &UpstreamContext) -> Connecting<'_> {
        let _ = context;
        self.connect()
    }
}

/// What the edge knows about an admitted request when it opens the stream for it.
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

/// A target reached by plain TCP at a fixed address (`host:port`).
#[derive(Debug, Clone)]
pub struct TcpUpstream {
    address: String,
}

impl TcpUpstream {
    /// A target at `address` (`127.0.0.1:8080`, `origin.internal:80`); resolved on each
    /// connect.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
        }
    }
}

impl Upstream for TcpUpstream {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn UpstreamIo>)
        })
    }
}

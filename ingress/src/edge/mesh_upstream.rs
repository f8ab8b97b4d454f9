//! Reaching a funnel's target node over the mesh: the ingress's end of the funnel hop.
//!
//! A hop stream is a TCP connection through the ingress's embedded node (its userspace
//! netstack) to the target node's tailnet address on [`FUNNEL_HOP_PORT`]. It starts with a
//! [`FunnelHello`] and the node's [`HopReply`]; on an accept the stream carries the
//! funnelled bytes. A refusal comes back as an `io::Error` whose inner error is the
//! [`Refusal`], so the edge answers `502` and audits the refusal's code
//! (`node_refused_port_not_funnelled`, ...).
//!
//! HTTP requests ([`Upstream::send_request`]) go over pooled hop streams ([`HttpPool`]):
//! a stream opens with a version 2 hello that names the port and hostname only, stays
//! open after its exchange and carries later requests of any client. Each request
//! carries its own context (client address, hostname, admitted gate and identity) in the
//! [`HOP_CONTEXT_HEADER`] header, set here after removing any such header the request
//! already had, so the node puts the identity of that request, and only that one, into
//! the headers the target sees. TCP and passthrough funnels ([`Upstream::connect`]) open
//! a stream per public connection with a version 1 hello, as before.
//!
//! Pooled streams have TCP keep-alive on ([`POOLED_HOP_KEEPALIVE`]): a node that vanishes
//! from the mesh sends no RST, so without it a request sent over an idle pooled stream to
//! that node would wait for the edge's own timeouts. With it, the stream is reset after
//! [`KEEPALIVE_PROBES`](postern_netstack::KEEPALIVE_PROBES) intervals of silence and the pool drops it.

use std::borrow::Cow;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use postern_netstack::Netstack;
use postern_proto::funnel_hop::{
    FUNNEL_HOP_PORT, FunnelHello, FunnelHostname, HOP_CONTEXT_HEADER, HOP_PREFIX_LEN,
    HOP_REFUSAL_HEADER, HopError, HopReply, LossyAdmission, Refusal, RefusalCode, reply_frame_len,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::forward::EdgeBody;
use super::pool::{Dial, HttpPool, PoolLimits};
use super::upstream::{Connecting, Sending, Upstream, UpstreamContext, UpstreamError, UpstreamIo};

/// How long opening the mesh stream plus the hop handshake may take by default.
pub const DEFAULT_HOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The TCP keep-alive interval of pooled HTTP hop streams: a probe after each 5 s without
/// a packet from the node, and a reset after [`KEEPALIVE_PROBES`](postern_netstack::KEEPALIVE_PROBES) such intervals (15 s),
/// whether the stream is idle in the pool or waits for a reply. A live node answers the
/// probes (its TCP does, however slow the target), so only a vanished one is cut off.
pub const POOLED_HOP_KEEPALIVE: Duration = Duration::from_secs(5);

/// A funnel target on a node of the mesh; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct MeshUpstream {
    hop: Arc<HopDialer>,
    pool: HttpPool,
}

/// What opening a hop stream needs.
#[derive(Debug, Clone)]
struct HopDialer {
    netstack: Netstack,
    node: SocketAddr,
    target_port: u16,
    hostname: FunnelHostname,
    timeout: Duration,
    nodelay: bool,
    /// Keep-alive interval of pooled streams ([`POOLED_HOP_KEEPALIVE`]; tests shorten it).
    pool_keepalive: Duration,
}

impl MeshUpstream {
    /// A funnel of `hostname` to port `target_port` of the node at tailnet address `node`,
    /// reached through `netstack` (the ingress's embedded node). Its HTTP pool has the
    /// default [`PoolLimits`]. Fails if `hostname` is not a DNS name.
    pub fn new(
        netstack: Netstack,
        node: IpAddr,
        target_port: u16,
        hostname: &str,
    ) -> Result<Self, HopError> {
        let hop = Arc::new(HopDialer {
            netstack,
            node: SocketAddr::new(node, FUNNEL_HOP_PORT),
            target_port,
            hostname: FunnelHostname::parse(hostname)?,
            timeout: DEFAULT_HOP_TIMEOUT,
            nodelay: true,
            pool_keepalive: POOLED_HOP_KEEPALIVE,
        });
        let pool = hop_pool(&hop, PoolLimits::default());
        Ok(Self { hop, pool })
    }

    /// Whether the hop stream sends each write at once (`true`, the default: right for
    /// HTTP exchanges, whose small writes must not wait) or keeps Nagle's algorithm on
    /// after the handshake (`false`: right for byte pipes such as TCP funnels, where
    /// the netstack would otherwise send a sliver of a segment every time its congestion
    /// window grows by a few bytes; measured in `docs/benchmarks.md`).
    #[must_use]
    pub fn with_nodelay(mut self, nodelay: bool) -> Self {
        Arc::make_mut(&mut self.hop).nodelay = nodelay;
        self.pool = hop_pool(&self.hop, self.pool.limits());
        self
    }

    /// Bounds opening the stream plus the handshake (default [`DEFAULT_HOP_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.hop).timeout = timeout;
        self.pool = hop_pool(&self.hop, self.pool.limits());
        self
    }

    /// Replaces the bounds of the pool of HTTP hop streams (idle streams kept, idle
    /// timeout).
    #[must_use]
    pub fn with_pool_limits(mut self, limits: PoolLimits) -> Self {
        self.pool = hop_pool(&self.hop, limits);
        self
    }
}

impl HopDialer {
    /// The version 1 hello of one request's context, or of a TCP connection (`context`
    /// `None`: no client, 0.0.0.0, and no admission), encoded by `encode`
    /// ([`FunnelHello::encode_lossy`] or [`FunnelHello::encode_context_lossy`]) straight
    /// from the admission: identity text is made safe rather than refused, attributes
    /// whose names are not header tokens are dropped (as the edge's own header rewrite
    /// does), and attributes that would make it too long are left out; the gate and
    /// principal always travel.
    fn hello<T>(
        &self,
        context: Option<&UpstreamContext>,
        encode: impl FnOnce(
            SocketAddr,
            u16,
            &FunnelHostname,
            Option<LossyAdmission<'_, Cow<'static, str>, String>>,
        ) -> Result<T, HopError>,
    ) -> Result<T, HopError> {
        let client = context.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.client);
        let admission = context
            .and_then(|c| c.admission.as_ref())
            .map(|(gate, identity)| LossyAdmission {
                gate,
                principal: &identity.principal,
                attributes: &identity.attributes,
            });
        encode(client, self.target_port, &self.hostname, admission)
    }

    /// The version 2 hello of a pooled HTTP stream: port and hostname, no client, no
    /// admission (each request brings its own).
    fn pooled_hello(&self) -> FunnelHello {
        FunnelHello {
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            target_port: self.target_port,
            hostname: self.hostname.clone(),
            admission: None,
            per_request_context: true,
        }
    }

    /// Opens a pooled HTTP hop stream: a version 2 hello, and keep-alive on.
    async fn open_pooled(&self) -> io::Result<Box<dyn UpstreamIo>> {
        let hello = self.pooled_hello().encode();
        self.open(hello, Some(self.pool_keepalive)).await
    }

    /// Opens a hop stream, sends `hello` and reads the node's reply; `keepalive` is the
    /// stream's TCP keep-alive interval, if any.
    async fn open(
        &self,
        hello: Result<Vec<u8>, HopError>,
        keepalive: Option<Duration>,
    ) -> io::Result<Box<dyn UpstreamIo>> {
        let hello = hello.map_err(invalid_hello)?;
        let handshake = async {
            let mut stream = self.netstack.connect_tcp(self.node).await?;
            stream.set_nodelay(true);
            stream.set_keepalive(keepalive);
            stream.write_all(&hello).await?;
            let mut frame = vec![0u8; HOP_PREFIX_LEN];
            stream.read_exact(&mut frame).await?;
            let total = reply_frame_len(&frame)
                .map_err(invalid_reply)?
                .unwrap_or(HOP_PREFIX_LEN);
            frame.resize(total, 0);
            if let Some(reason) = frame.get_mut(HOP_PREFIX_LEN..) {
                stream.read_exact(reason).await?;
            }
            match HopReply::decode(&frame).map_err(invalid_reply)? {
                HopReply::Accepted => {
                    stream.set_nodelay(self.nodelay);
                    Ok(Box::new(stream) as Box<dyn UpstreamIo>)
                }
                HopReply::Refused(refusal) => Err(refused(refusal)),
            }
        };
        tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the funnel hop to {} did not complete within {:?}",
                        self.node, self.timeout
                    ),
                )
            })?
    }
}

impl Upstream for MeshUpstream {
    /// Opens a hop stream for one connection of a TCP or passthrough funnel: a version 1
    /// hello that names no client (0.0.0.0) and no admission.
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Some(self.hop.netstack.runtime().clone())
    }

    /// The admission travels in the hop's context; the node writes the identity headers.
    fn carries_admission(&self) -> bool {
        true
    }

    fn connect(&self) -> Connecting<'_> {
        let hello = self.hop.hello(None, FunnelHello::encode_lossy);
        Box::pin(async move { self.hop.open(hello, None).await })
    }

    /// Opens a hop stream for one request, its context in a version 1 hello (the way
    /// before pooling; the edge sends HTTP with [`Upstream::send_request`] instead).
    fn connect_for(&self, context: &UpstreamContext) -> Connecting<'_> {
        let hello = self.hop.hello(Some(context), FunnelHello::encode_lossy);
        Box::pin(async move { self.hop.open(hello, None).await })
    }

    /// Sends the request over a pooled hop stream with its context in
    /// [`HOP_CONTEXT_HEADER`] (replacing any such header it had).
    fn send_request<'a>(
        &'a self,
        mut request: Request<EdgeBody>,
        context: &'a UpstreamContext,
    ) -> Sending<'a> {
        let headers = request.headers_mut();
        headers.remove(HOP_CONTEXT_HEADER);
        let value = self
            .hop
            .hello(Some(context), FunnelHello::encode_context_lossy)
            .map_err(invalid_hello)
            .and_then(|text| {
                HeaderValue::try_from(text)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))
            });
        match value {
            Ok(value) => {
                headers.insert(HeaderName::from_static(HOP_CONTEXT_HEADER), value);
                let sending = self.pool.send(request);
                Box::pin(async move { node_refusal(sending.await?) })
            }
            Err(error) => Box::pin(std::future::ready(Err(UpstreamError::Connect(error)))),
        }
    }
}

/// A response on a pooled stream that is the node's refusal of the request (it carries
/// [`HOP_REFUSAL_HEADER`]) becomes [`UpstreamError::Refused`], so that the edge answers and
/// audits it as the node's refusal (`502` with its code, result `error`) rather than as
/// the target's answer. The node strips the header from its targets' responses.
fn node_refusal(response: Response<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
    let Some(value) = response.headers().get(HOP_REFUSAL_HEADER) else {
        return Ok(response);
    };
    let code = RefusalCode::from_text(value.to_str().unwrap_or_default());
    Err(UpstreamError::Refused(Refusal {
        code,
        reason: "the node refused a request on a pooled stream".into(),
    }))
}

/// The pool of HTTP hop streams to `hop`'s target: each opened with a version 2 hello
/// and keep-alive on.
fn hop_pool(hop: &Arc<HopDialer>, limits: PoolLimits) -> HttpPool {
    let hop = Arc::clone(hop);
    let dial: Dial = Arc::new(move || {
        let hop = Arc::clone(&hop);
        Box::pin(async move { hop.open_pooled().await })
    });
    HttpPool::new(dial, limits)
}

fn refused(refusal: Refusal) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, refusal)
}

fn invalid_reply(error: HopError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn invalid_hello(error: HopError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Identity;
    use postern_netstack::{Impairment, MemoryWire, NetstackConfig};
    use postern_proto::funnel_hop::hello_frame_len;

    /// A pooled hop stream to a node that then vanishes (the in-memory wire cut: no RST,
    /// nothing at all) fails after the keep-alive's silence instead of hanging.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pooled_stream_to_a_vanished_node_fails() {
        let config = |ip: &str| NetstackConfig::new(vec![ip.parse().unwrap()]);
        let (edge, edge_seam) = Netstack::new(config("100.64.0.9")).unwrap();
        let (node, node_seam) = Netstack::new(config("100.64.0.2")).unwrap();
        let wire = MemoryWire::connect(edge_seam, node_seam, Impairment::none());
        // The node's end: accept the hop, check the hello is a pooled one, accept it.
        let listener = node.listen_tcp(FUNNEL_HOP_PORT).unwrap();
        let node_side = tokio::spawn(async move {
            let mut stream = listener.accept().await.unwrap();
            let mut hello = vec![0u8; HOP_PREFIX_LEN];
            stream.read_exact(&mut hello).await.unwrap();
            hello.resize(hello_frame_len(&hello).unwrap().unwrap(), 0);
            stream
                .read_exact(&mut hello[HOP_PREFIX_LEN..])
                .await
                .unwrap();
            assert!(FunnelHello::decode(&hello).unwrap().per_request_context);
            stream
                .write_all(&HopReply::Accepted.encode())
                .await
                .unwrap();
            stream
        });
        let mut upstream =
            MeshUpstream::new(edge, "100.64.0.2".parse().unwrap(), 3000, "app.test").unwrap();
        Arc::make_mut(&mut upstream.hop).pool_keepalive = Duration::from_millis(100);
        let mut stream = upstream.hop.open_pooled().await.unwrap();
        let _node_stream = node_side.await.unwrap();

        drop(wire);
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        let error = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the stream to a vanished node still hangs")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    }

    #[tokio::test]
    async fn hellos_carry_the_admission_and_drop_what_cannot_travel() {
        let (netstack, _seam) =
            Netstack::new(NetstackConfig::new(vec!["100.64.0.9".parse().unwrap()])).unwrap();
        let upstream =
            MeshUpstream::new(netstack, "100.64.0.2".parse().unwrap(), 3000, "Hooks.Test").unwrap();
        let mut identity = Identity::new("webhook:github\r\n").with_attribute("Delivery", "d1");
        identity = identity.with_attribute("bad name", "x");
        for i in 0..40 {
            identity = identity.with_attribute(format!("A{i}"), "v".repeat(1000));
        }
        let context = UpstreamContext {
            client: "203.0.113.1:999".parse().unwrap(),
            hostname: "hooks.test".into(),
            admission: Some(("webhook:github".into(), identity)),
        };
        let frame = upstream
            .hop
            .hello(Some(&context), FunnelHello::encode_lossy)
            .unwrap();
        let hello = FunnelHello::decode(&frame).unwrap();
        let context_text = upstream
            .hop
            .hello(Some(&context), FunnelHello::encode_context_lossy)
            .unwrap();
        assert_eq!(
            FunnelHello::decode_context(context_text.as_bytes()).unwrap(),
            hello
        );
        assert_eq!(hello.client, context.client);
        assert_eq!(hello.target_port, 3000);
        assert_eq!(hello.hostname.as_str(), "hooks.test");
        assert!(!hello.per_request_context);
        let admission = hello.admission.unwrap();
        assert_eq!(admission.gate.as_str(), "webhook:github");
        assert_eq!(admission.principal.as_str(), "webhook:github");
        assert_eq!(admission.attributes[0].0.as_str(), "Delivery");
        assert!(
            admission
                .attributes
                .iter()
                .all(|(n, _)| n.as_str() != "bad name")
        );
        assert!(admission.attributes.len() > 5 && admission.attributes.len() < 20);

        let bare =
            FunnelHello::decode(&upstream.hop.hello(None, FunnelHello::encode_lossy).unwrap())
                .unwrap();
        assert!(bare.admission.is_none());
        assert!(!bare.per_request_context);
        assert_eq!(bare.client, SocketAddr::from(([0, 0, 0, 0], 0)));
        let pooled = upstream.hop.pooled_hello();
        assert!(pooled.per_request_context && pooled.admission.is_none());
        assert_eq!(pooled.encode().unwrap()[0], 2);
        assert!(
            MeshUpstream::new(
                upstream.hop.netstack.clone(),
                "100.64.0.2".parse().unwrap(),
                1,
                "bad host!"
            )
            .is_err()
        );
    }
}

//! The first step on the TLS port: read the ClientHello, then terminate, pass through, or
//! close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{Accepted, Acceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;

use super::{
    ClientLimiter, ClientSlot, ConnectionAudit, TcpLimits, connect_target, connection_refusal,
    pipe, proxy_v2_header, refuse,
};
use crate::audit::AuditSink;
use crate::edge::Upstream;
use crate::routes::FunnelTable;

/// The most ClientHello bytes the edge reads before giving up on a connection. Real
/// ClientHellos (post-quantum key shares included) are far smaller.
const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024;

/// A hostname whose TLS the edge does not terminate: the target holds the certificate
/// and key, and the edge only sees the SNI.
#[derive(Debug, Clone)]
pub struct PassthroughFunnel {
    /// The public hostname (lower case).
    pub hostname: String,
    /// How to reach the target (which speaks TLS itself).
    pub upstream: Arc<dyn Upstream>,
    /// Whether the target first gets a PROXY protocol v2 header naming the client.
    pub proxy_protocol: bool,
    /// Owner, node and expiry of a funnel from the coordination server (for audit
    /// records); `None` for the configuration file's funnels.
    pub route: Option<Arc<crate::routes::RouteInfo>>,
    /// Connection-level gates (IP rules, a per-client rate limit), run with the client's
    /// address before anything is piped; `None` admits every connection.
    pub gates: Option<crate::gate::GateChain>,
}

/// What the TLS port does with a connection after [`TlsPortRouter::route`].
#[derive(Debug)]
pub enum TlsRoute {
    /// The SNI names a funnel the edge terminates (or there is no SNI): continue the
    /// handshake with `start.into_stream(config)`, and keep `slot` while the connection
    /// lives.
    Terminate {
        /// The read ClientHello and the connection.
        start: Box<StartHandshake<TcpStream>>,
        /// The client's connection slot.
        slot: ClientSlot,
    },
    /// The connection was piped to a passthrough target, refused, or closed; it is over
    /// and audited.
    Done,
}

/// Decides, from the ClientHello's SNI, what happens to each TLS-port connection.
#[derive(Debug)]
pub struct TlsPortRouter {
    passthrough: HashMap<String, Arc<PassthroughFunnel>>,
    limits: TcpLimits,
    limiter: Arc<ClientLimiter>,
    audit: Arc<dyn AuditSink>,
    routes: Option<Arc<FunnelTable>>,
}

impl TlsPortRouter {
    /// A router for `passthrough` funnels (hostnames matched case-insensitively), bounding
    /// passthrough pipes by `limits` and every TLS-port connection by `limiter`.
    pub fn new(
        passthrough: Vec<PassthroughFunnel>,
        limits: TcpLimits,
        limiter: Arc<ClientLimiter>,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        let passthrough = passthrough
            .into_iter()
            .map(|f| (f.hostname.to_ascii_lowercase(), Arc::new(f)))
            .collect();
        Self {
            passthrough,
            limits,
            limiter,
            audit,
            routes: None,
        }
    }

    /// Also passes through the passthrough funnels of `routes` (funnels from the
    /// coordination server), after the configuration file's.
    #[must_use]
    pub fn with_routes(mut self, routes: Arc<FunnelTable>) -> Self {
        self.routes = Some(routes);
        self
    }

    fn find_passthrough(&self, host: &str) -> Option<Arc<PassthroughFunnel>> {
        if let Some(funnel) = self.passthrough.get(host) {
            return Some(Arc::clone(funnel));
        }
        self.routes
            .as_ref()?
            .passthrough(host, std::time::SystemTime::now())
    }

    /// Whether `hostname` is a passthrough funnel.
    pub fn is_passthrough(&self, hostname: &str) -> bool {
        self.find_passthrough(&hostname.to_ascii_lowercase())
            .is_some()
    }

    /// Handles a fresh TLS-port connection up to the point where the edge's own TLS takes
    /// over:
    ///
    /// 1. takes the client's connection slot (over the limit: closed, audited
    ///    `too_many_connections`);
    /// 2. reads the ClientHello within `hello_timeout` (a malformed, oversized or late one
    ///    closes the connection; logged, not audited);
    /// 3. an SNI naming a passthrough funnel: connects to its target, sends the PROXY
    ///    header if asked, the ClientHello bytes, then pipes (audited when it ends);
    /// 4. an SNI for which `is_terminated` is false: closed without a byte sent (audited
    ///    `unknown_sni`); otherwise, and without SNI, [`TlsRoute::Terminate`].
    pub async fn route(
        &self,
        mut tcp: TcpStream,
        client: SocketAddr,
        hello_timeout: Duration,
        is_terminated: &(dyn Fn(&str) -> bool + Sync),
    ) -> TlsRoute {
        let Some(slot) = self.limiter.try_acquire(client.ip()) else {
            refuse(tcp, client, "tls", None, &*self.audit);
            return TlsRoute::Done;
        };
        let started = std::time::Instant::now();
        let (accepted, hello) =
            match tokio::time::timeout(hello_timeout, read_client_hello(&mut tcp)).await {
                Ok(Ok(read)) => read,
                Ok(Err(reason)) => {
                    tracing::debug!(%client, reason, "no usable ClientHello");
                    return TlsRoute::Done;
                }
                Err(_) => {
                    tracing::debug!(%client, "no ClientHello in time");
                    return TlsRoute::Done;
                }
            };
        let sni = accepted
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        let Some(sni) = sni else {
            return TlsRoute::Terminate {
                start: Box::new(StartHandshake::from_parts(accepted, tcp)),
                slot,
            };
        };
        if let Some(funnel) = self.find_passthrough(&sni) {
            drop(accepted);
            let mut audit = ConnectionAudit::new("tls-passthrough", Some(sni), client)
                .with_route(funnel.route.as_deref());
            audit.started = started;
            if let Some(refusal) = funnel
                .gates
                .as_ref()
                .and_then(|gates| connection_refusal(gates, client))
            {
                tracing::info!(%client, reason = refusal, "passthrough connection refused by its gates");
                drop(slot);
                self.audit.record_connection(&audit.denied(refusal));
                return TlsRoute::Done;
            }
            let record = self.pass_through(tcp, client, &funnel, &hello, audit).await;
            drop(slot);
            self.audit.record_connection(&record);
            return TlsRoute::Done;
        }
        if !is_terminated(&sni) {
            tracing::debug!(%client, "closed a connection for an unknown SNI");
            let mut audit = ConnectionAudit::new("tls", None, client);
            audit.started = started;
            self.audit.record_connection(&audit.denied("unknown_sni"));
            return TlsRoute::Done;
        }
        TlsRoute::Terminate {
            start: Box::new(StartHandshake::from_parts(accepted, tcp)),
            slot,
        }
    }

    async fn pass_through(
        &self,
        tcp: TcpStream,
        client: SocketAddr,
        funnel: &PassthroughFunnel,
        hello: &[u8],
        audit: ConnectionAudit,
    ) -> crate::audit::ConnectionRecord {
        let local = tcp.local_addr().unwrap_or(client);
        let _ = tcp.set_nodelay(true);
        let header = funnel
            .proxy_protocol
            .then(|| proxy_v2_header(client, local));
        let mut target = match connect_target(&*funnel.upstream, header, self.limits).await {
            Ok(target) => target,
            Err(reason) => return audit.failed(reason),
        };
        if target.write_all(hello).await.is_err() {
            return audit.failed("upstream_failed");
        }
        let mut outcome = pipe(tcp, target, self.limits, audit.started).await;
        outcome.bytes_from_client += hello.len() as u64;
        audit.piped(&outcome)
    }
}

/// Reads until rustls has a whole ClientHello; returns it with every byte read so far
/// (which a passthrough target must receive first). The error is a short reason for the
/// log.
async fn read_client_hello(tcp: &mut TcpStream) -> Result<(Accepted, Vec<u8>), &'static str> {
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|_| "read failed")?;
        let data = chunk
            .get(..n)
            .filter(|data| !data.is_empty())
            .ok_or("closed before a whole ClientHello")?;
        if seen.len() + data.len() > MAX_CLIENT_HELLO_BYTES {
            return Err("ClientHello too large");
        }
        seen.extend_from_slice(data);
        let mut rest = data;
        while !rest.is_empty() {
            let taken = acceptor
                .read_tls(&mut rest)
                .map_err(|_| "ClientHello too large")?;
            if taken == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok((accepted, seen)),
            Ok(None) => {}
            Err(_) => return Err("malformed ClientHello"),
        }
    }
}

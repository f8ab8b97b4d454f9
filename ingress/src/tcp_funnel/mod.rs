//! Byte-pipe funnels: raw TCP funnels on public ports, and TLS passthrough funnels on the
//! TLS port.
//!
//! - A **TCP funnel** owns one public port from the configured range. Each accepted
//!   connection takes a per-client slot ([`ClientLimiter`]), opens a stream to the funnel's
//!   [`Upstream`], optionally writes a PROXY protocol v2 header ([`proxy_v2_header`]) and
//!   then pipes bytes both ways under an idle and a total timeout ([`PipeClock`]).
//! - A **passthrough funnel** is a hostname on the TLS port that the edge does not
//!   terminate: [`TlsPortRouter`] reads the ClientHello with rustls' `Acceptor` (which
//!   consumes nothing it cannot give back: the edge keeps a copy of the bytes), and for a
//!   passthrough hostname forwards those bytes and then the rest of the connection to the
//!   target, which terminates TLS itself. Other known hostnames continue the edge's own
//!   handshake; an unknown SNI is closed without a byte sent.
//!
//! Every connection ends in one [`ConnectionRecord`](crate::audit::ConnectionRecord):
//! client, funnel, bytes each way, duration, and how it ended.

mod limiter;
mod passthrough;
mod pipe;
mod proxy_header;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::audit::{AuditSink, ConnectionRecord};
use crate::edge::Upstream;

pub use limiter::{ClientLimiter, ClientSlot};
pub use passthrough::{PassthroughFunnel, TlsPortRouter, TlsRoute};
pub use pipe::{PipeClock, PipeEnd, PipeOutcome, pipe, pipe_to_mesh};
pub use proxy_header::{ProxyHeaderError, proxy_v2_header};

/// A raw TCP funnel: a public port and where its connections go.
#[derive(Debug, Clone)]
pub struct TcpFunnel {
    /// The public port (one of the configured `tcp_port_range`).
    pub port: u16,
    /// How to reach the target.
    pub upstream: Arc<dyn Upstream>,
    /// Whether each connection to the target starts with a PROXY protocol v2 header naming
    /// the public client and the edge's public address.
    pub proxy_protocol: bool,
    /// Owner, node and expiry of a funnel from the coordination server (for audit records
    /// and expiry); `None` for the configuration file's funnels.
    pub route: Option<Arc<crate::routes::RouteInfo>>,
    /// Connection-level gates (IP rules, a per-client rate limit), run on each accepted
    /// connection with the client's address only; `None` admits every connection.
    pub gates: Option<crate::gate::GateChain>,
}

impl TcpFunnel {
    /// The funnel's name in audit records and logs: `tcp:PORT`.
    pub fn name(&self) -> String {
        format!("tcp:{}", self.port)
    }
}

/// Bounds on byte-pipe connections (TCP funnels and passthrough).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// A connection is closed this long after it was accepted, busy or not; `None` for no
    /// bound.
    pub total_timeout: Option<Duration>,
    /// How long opening the stream to the target may take.
    pub connect_timeout: Duration,
}

impl Default for TcpLimits {
    /// 5 minutes idle, no total bound, 10 s to connect.
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            total_timeout: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves one TCP funnel on `listener` until the listener fails: every connection runs on
/// its own task and ends in one connection record.
///
/// Over-the-limit clients (see [`ClientLimiter`]) are closed at once and audited as `deny
/// too_many_connections`; an unreachable target as `error upstream_unreachable`.
pub async fn serve_tcp_funnel(
    listener: TcpListener,
    funnel: Arc<TcpFunnel>,
    limits: TcpLimits,
    limiter: Arc<ClientLimiter>,
    audit: Arc<dyn AuditSink>,
) -> std::io::Result<()> {
    let runtime = funnel.upstream.runtime();
    loop {
        let (tcp, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, port = funnel.port, "accept failed on a TCP funnel port; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let audit = Arc::clone(&audit);
        let funnel = Arc::clone(&funnel);
        let Some(slot) = limiter.try_acquire(client.ip()) else {
            refuse(tcp, client, "tcp", Some(funnel.name()), &*audit);
            continue;
        };
        let connection = move |tcp: TcpStream| async move {
            let _slot = slot;
            let local = tcp.local_addr().unwrap_or(client);
            let audit_record = ConnectionAudit::new("tcp", Some(funnel.name()), client)
                .with_route(funnel.route.as_deref());
            if funnel
                .route
                .as_ref()
                .is_some_and(|route| route.expired(std::time::SystemTime::now()))
            {
                audit.record_connection(&audit_record.denied("funnel_expired"));
                return;
            }
            if let Some(refusal) = funnel
                .gates
                .as_ref()
                .and_then(|g| connection_refusal(g, client))
            {
                tracing::info!(%client, port = funnel.port, reason = refusal, "TCP funnel connection refused by its gates");
                audit.record_connection(&audit_record.denied(refusal));
                return;
            }
            let _ = tcp.set_nodelay(true);
            let header = funnel
                .proxy_protocol
                .then(|| proxy_v2_header(client, local));
            let record = match connect_target(&*funnel.upstream, header, limits).await {
                Ok(target) => {
                    let started = audit_record.started;
                    // A stream of the mesh takes the pipe without a buffer of its own.
                    let mesh = (&*target as &dyn std::any::Any).downcast_ref();
                    let outcome = match mesh {
                        Some(mesh) => pipe_to_mesh(tcp, mesh, limits, started).await,
                        None => pipe(tcp, target, limits, started).await,
                    };
                    audit_record.piped(&outcome)
                }
                Err(reason) => audit_record.failed(reason),
            };
            audit.record_connection(&record);
        };
        match runtime.as_ref() {
            None => drop(tokio::spawn(connection(tcp))),
            // The pipe runs where the upstream's streams are driven (the mesh hop's stack
            // thread), with the client's socket moved there.
            Some(runtime) => {
                let moved = tcp.into_std();
                drop(runtime.spawn(async move {
                    match moved.and_then(TcpStream::from_std) {
                        Ok(tcp) => connection(tcp).await,
                        Err(error) => {
                            tracing::warn!(%error, %client, "cannot move a TCP funnel connection to its upstream's runtime");
                        }
                    }
                }));
            }
        }
    }
}

/// Runs a TCP funnel's connection-level gates for `client`; the denial's reason code, or
/// `None` when admitted.
fn connection_refusal(gates: &crate::gate::GateChain, client: SocketAddr) -> Option<&'static str> {
    let (method, headers) = (http::Method::CONNECT, http::HeaderMap::new());
    let request = crate::gate::GateRequest::new(&method, "", &headers, &[], client);
    match gates
        .evaluate(&request, std::time::SystemTime::now())
        .decision
    {
        crate::gate::Decision::Allow { .. } => None,
        crate::gate::Decision::Deny { reason, .. } => Some(reason.as_str()),
        _ => Some("no_gate_admitted"),
    }
}

/// Opens the stream to a target and writes the PROXY header (when asked). The error is the
/// audit reason code.
async fn connect_target(
    upstream: &dyn Upstream,
    proxy_header: Option<Result<Vec<u8>, ProxyHeaderError>>,
    limits: TcpLimits,
) -> Result<Box<dyn crate::edge::UpstreamIo>, &'static str> {
    let connected = tokio::time::timeout(limits.connect_timeout, upstream.connect()).await;
    let mut target = match connected {
        Ok(Ok(target)) => target,
        Ok(Err(error)) => {
            tracing::warn!(%error, ?upstream, "TCP funnel target unreachable");
            return Err("upstream_unreachable");
        }
        Err(_) => return Err("upstream_timeout"),
    };
    if let Some(header) = proxy_header {
        let header = header.map_err(|error| {
            tracing::warn!(%error, "cannot build the PROXY v2 header");
            "proxy_header_failed"
        })?;
        target
            .write_all(&header)
            .await
            .map_err(|_| "upstream_failed")?;
    }
    Ok(target)
}

/// Closes an over-the-limit connection at once and audits it.
fn refuse(
    tcp: TcpStream,
    client: SocketAddr,
    kind: &'static str,
    funnel: Option<String>,
    audit: &dyn AuditSink,
) {
    drop(tcp);
    tracing::info!(%client, kind, "connection refused: too many connections from this client");
    let record = ConnectionAudit::new(kind, funnel, client);
    audit.record_connection(&record.denied("too_many_connections"));
}

/// The connection record being filled in while a connection lives.
#[derive(Debug)]
struct ConnectionAudit {
    record: ConnectionRecord,
    started: Instant,
}

impl ConnectionAudit {
    fn new(kind: &'static str, funnel: Option<String>, client: SocketAddr) -> Self {
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            record: ConnectionRecord {
                time,
                kind,
                funnel,
                owner: None,
                node: None,
                client: client.to_string(),
                result: "deny",
                reason: String::new(),
                bytes_from_client: 0,
                bytes_to_client: 0,
                duration_ms: 0,
            },
            started: Instant::now(),
        }
    }

    fn with_route(mut self, route: Option<&crate::routes::RouteInfo>) -> Self {
        if let Some(route) = route {
            self.record.owner = Some(route.owner.clone());
            self.record.node = Some(route.node.clone());
        }
        self
    }

    fn finish(mut self, result: &'static str, reason: &str) -> ConnectionRecord {
        self.record.result = result;
        self.record.reason = reason.to_string();
        self.record.duration_ms =
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.record
    }

    fn denied(self, reason: &str) -> ConnectionRecord {
        self.finish("deny", reason)
    }

    fn failed(self, reason: &str) -> ConnectionRecord {
        self.finish("error", reason)
    }

    fn piped(mut self, outcome: &PipeOutcome) -> ConnectionRecord {
        self.record.bytes_from_client = outcome.bytes_from_client;
        self.record.bytes_to_client = outcome.bytes_to_client;
        self.finish("allow", outcome.end.code())
    }
}

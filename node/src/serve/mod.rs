//! Serve and funnel, the node's side: sharing local ports with the tailnet and accepting
//! the ingress's funnel streams.
//!
//! - [`ServeConfig`] says what is served: one [`Service`] per tailnet port, an HTTP reverse
//!   proxy (path-prefix [`HttpRoute`]s to local origins) or a raw TCP pipe, optionally
//!   funnelled. It is serde-serializable so the agent can persist `--bg` serves.
//!   [`ServeTable`] is the live, shared copy listeners read.
//! - [`ServeRuntime::start`] runs it all on a node's netstack: a listener per served port
//!   for tailnet peers (flow 4 of the design), and the funnel acceptor on
//!   [`FUNNEL_HOP_PORT`] for the ingress (flow 5). Listeners follow [`ServeTable::set`].
//! - Identity comes from a [`PeerDirectory`] (the node runtime implements it from the
//!   netmap) for tailnet peers, and from the ingress's [`FunnelHello`] for funnel streams
//!   (believed only when the stream comes from a peer marked `is_ingress`). The proxy
//!   strips every incoming `Postern-*` header and sets its own (see [`identity`] for the
//!   names; docs/serve.md lists them).
//! - [`ExchangeObserver`] is the request-capture hook: the HTTP proxy reports each exchange
//!   to it; [`NoopObserver`] is the default (see [`observer`]), [`InspectObserver`] records
//!   into request inspection's capture store.
//!
//! A tailnet connection from an address no peer owns is closed without an answer: WireGuard
//! only delivers packets from known peers, so this means the netmap and the engine
//! disagree for a moment.
//!
//! [`FunnelHello`]: postern_proto::funnel_hop::FunnelHello

mod body_end;
mod capture;
mod config;
mod drain;
mod funnel;
pub mod identity;
pub mod observer;
mod proxy;

use std::collections::HashMap;
use std::sync::Arc;

use postern_netstack::{Netstack, NetstackError, TcpListener};
pub use postern_proto::funnel_hop::FUNNEL_HOP_PORT;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use body_end::OnEndBody;
pub use capture::InspectObserver;
pub use config::{
    HttpRoute, OriginUrl, RoutePath, ServeConfig, ServeConfigError, ServeTable, ServeTarget,
    Service,
};
pub use drain::{DRAIN_BYTES, DRAIN_FOR, DrainOnDrop};
pub use funnel::HELLO_TIMEOUT;
pub use identity::{PeerDirectory, PeerIdentity, RequestOrigin, StaticPeerDirectory};
pub use observer::{CapturedBody, Exchange, ExchangeObserver, NoopObserver};

use funnel::FunnelAcceptor;
use proxy::{HttpProxy, OriginPool};

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The funnel hop port is taken on the netstack (another runtime already runs).
    #[error(
        "cannot listen on the funnel hop port {FUNNEL_HOP_PORT} of the node's netstack: {0}; is another serve runtime running on this node?"
    )]
    HopPort(NetstackError),
}

/// Serve and funnel running on one node's netstack; see the [module docs](self).
///
/// Dropping it stops every listener and connection without waiting;
/// [`ServeRuntime::shutdown`] waits.
#[derive(Debug)]
pub struct ServeRuntime {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ServeRuntime {
    /// Starts the funnel acceptor and one tailnet listener per service of `table`, and
    /// keeps the listeners in step with the table.
    ///
    /// Must be called inside a tokio runtime. The table's ports listen when it returns.
    /// Fails if the hop port is taken. A served port that cannot be listened on (taken by
    /// something else on the netstack) is logged and retried at the next table change; the
    /// rest keep serving.
    pub fn start(
        netstack: Netstack,
        table: ServeTable,
        directory: Arc<dyn PeerDirectory>,
        observer: Arc<dyn ExchangeObserver>,
    ) -> Result<Self, ServeError> {
        let cancel = CancellationToken::new();
        let hop = netstack
            .listen_tcp(FUNNEL_HOP_PORT)
            .map_err(ServeError::HopPort)?;
        let origins = OriginPool::new();
        let acceptor = FunnelAcceptor {
            runtime: netstack.runtime().clone(),
            table: table.clone(),
            directory: Arc::clone(&directory),
            observer: Arc::clone(&observer),
            origins: origins.clone(),
        };
        let mut tailnet = TailnetListeners {
            netstack,
            table,
            directory,
            observer,
            origins,
            listening: HashMap::new(),
        };
        // The ports of the table as given listen before `start` returns, so a connection
        // made right after it is not refused; later changes are applied by the task.
        tailnet.reconcile(&cancel);
        let tasks = vec![
            tokio::spawn(acceptor.run(hop, cancel.clone())),
            tokio::spawn(tailnet.run(cancel.clone())),
        ];
        Ok(Self { cancel, tasks })
    }

    /// Stops every listener and connection and waits for the listener tasks to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for ServeRuntime {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The tailnet side: one netstack listener per served port, reconciled on every change.
struct TailnetListeners {
    netstack: Netstack,
    table: ServeTable,
    directory: Arc<dyn PeerDirectory>,
    observer: Arc<dyn ExchangeObserver>,
    origins: OriginPool,
    listening: HashMap<u16, CancellationToken>,
}

impl TailnetListeners {
    async fn run(mut self, cancel: CancellationToken) {
        let mut changes = self.table.subscribe();
        loop {
            self.reconcile(&cancel);
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    }

    fn reconcile(&mut self, cancel: &CancellationToken) {
        let config = self.table.current();
        self.listening.retain(|port, stop| {
            let keep = config.service(*port).is_some();
            if !keep {
                tracing::info!(port, "no longer serving on the tailnet");
                stop.cancel();
            }
            keep
        });
        for service in config.services() {
            let port = service.port;
            if self.listening.contains_key(&port) {
                continue;
            }
            match self.netstack.listen_tcp(port) {
                Ok(listener) => {
                    tracing::info!(port, "serving on the tailnet");
                    let stop = cancel.child_token();
                    self.listening.insert(port, stop.clone());
                    let context = PortContext {
                        runtime: self.netstack.runtime().clone(),
                        table: self.table.clone(),
                        directory: Arc::clone(&self.directory),
                        observer: Arc::clone(&self.observer),
                        origins: self.origins.clone(),
                    };
                    tokio::spawn(serve_port(listener, port, context, stop));
                }
                Err(error) => {
                    tracing::warn!(port, %error, "cannot serve this port on the tailnet");
                }
            }
        }
    }
}

/// What serving a tailnet port needs.
struct PortContext {
    /// The netstack's runtime, where TCP services' copies run ([`splice_on`]).
    runtime: tokio::runtime::Handle,
    table: ServeTable,
    directory: Arc<dyn PeerDirectory>,
    observer: Arc<dyn ExchangeObserver>,
    origins: OriginPool,
}

/// Accepts tailnet connections on one port until `stop`.
async fn serve_port(
    listener: TcpListener,
    port: u16,
    context: PortContext,
    stop: CancellationToken,
) {
    let PortContext {
        runtime,
        table,
        directory,
        observer,
        origins,
    } = context;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok(stream) = accepted else { return };
        let addr = stream.peer_addr().ip();
        let Some(peer) = directory.peer_by_addr(addr) else {
            tracing::info!(%addr, port, "closing a tailnet connection from an address no peer owns");
            continue;
        };
        let config = table.current();
        let Some(service) = config.service(port) else {
            continue;
        };
        let origin = RequestOrigin::Tailnet { addr, peer };
        tracing::debug!(%origin, port, "tailnet serve connection");
        let stop = stop.clone();
        match &service.target {
            ServeTarget::Tcp { target } => {
                let target = *target;
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    let local = tokio::time::timeout(
                        proxy::ORIGIN_CONNECT_TIMEOUT,
                        tokio::net::TcpStream::connect(target),
                    )
                    .await;
                    match local {
                        Ok(Ok(local)) => {
                            let _ = local.set_nodelay(true);
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = splice_on(&runtime, stream, local) => {}
                            }
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%origin, %target, %error, "the serve target could not be reached");
                        }
                        Err(_) => {
                            tracing::warn!(%origin, %target, "connecting to the serve target timed out");
                        }
                    }
                });
            }
            ServeTarget::Http { .. } => {
                let proxy = HttpProxy {
                    table: table.clone(),
                    port,
                    origin,
                    observer: Arc::clone(&observer),
                    ingress: None,
                    origins: origins.clone(),
                };
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = proxy.serve(stream) => {}
                    }
                });
            }
        }
    }
}

/// Copies both ways between the tailnet `stream` and the kernel socket `local` until both
/// are done, on the netstack's `runtime` ([`Netstack::runtime`]: with a dedicated stack
/// thread, the copies then hand off to the stack without waking another thread). The kernel
/// socket is moved to that runtime first. Dropping the returned future stops the copies.
async fn splice_on(
    runtime: &tokio::runtime::Handle,
    stream: postern_netstack::TcpStream,
    local: tokio::net::TcpStream,
) {
    let local = match local.into_std() {
        Ok(local) => local,
        Err(error) => {
            tracing::debug!(%error, "cannot move the served TCP connection to the data path");
            return;
        }
    };
    let copies = runtime.spawn(async move {
        match tokio::net::TcpStream::from_std(local) {
            Ok(local) => splice(stream, local).await,
            Err(error) => {
                tracing::debug!(%error, "cannot move the served TCP connection to the data path");
            }
        }
    });
    let _ = tokio_util::task::AbortOnDropHandle::new(copies).await;
}

/// Copies both ways between `a` and `b` (half-closes carried across) until both are done.
async fn splice<A, B>(mut a: A, mut b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    const BUFFER: usize = 256 << 10;
    match tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER, BUFFER).await {
        Ok((up, down)) => tracing::debug!(up, down, "served TCP connection closed"),
        Err(error) => tracing::debug!(%error, "served TCP connection ended with an error"),
    }
}

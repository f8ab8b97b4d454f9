//! The relay's tokio shell: HTTP upgrade, the attach handshake, one reader and one writer
//! per client around the shared [`RelayCore`].
//!
//! [`RelayServer::router`] is the `GET /relay` upgrade route (the coord merges it into its
//! own router); [`RelayServer::serve`] runs a standalone relay with `/healthz` and
//! `/metrics`, over TLS when given a rustls config. [`RelayServer::handle_connection`] runs
//! the relay protocol on any byte stream, which is what in-memory tests use.
//!
//! The attach: the relay sends [`RelayFrame::ServerChallenge`]; the client answers with
//! [`RelayFrame::ClientInfo`] carrying its node key and [`postern_proto::relay::attach_proof`];
//! the relay checks the proof, asks the [`NodeAuthorizer`], and answers
//! [`RelayFrame::Attached`], or a [`RelayFrame::Health`] saying what was wrong before closing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_proto::NodePublicKey;
use postern_proto::frame::{FrameDecoder, FrameError};
use postern_proto::relay::{
    AttachChallenge, MAX_HEALTH_LEN, MAX_RELAY_FRAME_LEN, RELAY_PATH, RELAY_UPGRADE, RelayFrame,
    RelayFrameError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::authorizer::NodeAuthorizer;
use crate::core::{ClientId, ClientStats, ProtocolError, RelayConfig, RelayCore, RelayStats};

/// How long a new connection has to send its [`RelayFrame::ClientInfo`].
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Most frames a writer takes from the core per lock.
const WRITE_BATCH: usize = 64;

/// Why a relay connection ended. Logged by the shell; clients see a health frame for the
/// attach errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Reading or writing the connection failed.
    #[error("relay connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The byte stream is not valid relay framing.
    #[error("relay connection framing broken: {0}")]
    Frame(#[from] FrameError),
    /// A frame did not parse.
    #[error("relay frame invalid: {0}")]
    RelayFrame(#[from] RelayFrameError),
    /// The client broke the protocol after attaching.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The client did not attach: bad proof, unregistered key, wrong first frame, timeout.
    #[error("attach refused: {0}")]
    AttachRefused(String),
}

/// The relay server; cheap to clone (all clones share one relay).
#[derive(Clone)]
pub struct RelayServer {
    shared: Arc<Shared>,
}

struct Shared {
    core: Mutex<RelayCore>,
    conns: Mutex<HashMap<ClientId, Conn>>,
    authorizer: Arc<dyn NodeAuthorizer>,
    shutdown: CancellationToken,
    refused: AtomicU64,
}

struct Conn {
    wake: Arc<Notify>,
    close: CancellationToken,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Where [`RelayServer::router`] serves the relay's counters (Prometheus text).
pub const RELAY_METRICS_PATH: &str = "/relay/metrics";

impl RelayServer {
    /// A relay that admits the node keys `authorizer` allows. Starts its timer task, so call
    /// it inside a tokio runtime; the task ends with [`Self::shutdown`].
    pub fn new(config: RelayConfig, authorizer: Arc<dyn NodeAuthorizer>) -> Self {
        let server = Self {
            shared: Arc::new(Shared {
                core: Mutex::new(RelayCore::new(config)),
                conns: Mutex::new(HashMap::new()),
                authorizer,
                shutdown: CancellationToken::new(),
                refused: AtomicU64::new(0),
            }),
        };
        tokio::spawn(server.clone().run_timers());
        server
    }

    /// The `GET /relay` upgrade route and the relay's counters at `GET /relay/metrics`, to
    /// merge into another router (the coord's, whose own `/metrics` is the coord's).
    pub fn router(&self) -> Router {
        Router::new()
            .route(RELAY_PATH, get(upgrade))
            .route(RELAY_METRICS_PATH, self.metrics_route())
            .with_state(self.clone())
    }

    /// [`Self::router`] plus `/healthz` and `/metrics`: what a standalone relay serves.
    pub fn standalone_router(&self) -> Router {
        self.router()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", self.metrics_route())
    }

    fn metrics_route<S: Clone + Send + Sync + 'static>(&self) -> axum::routing::MethodRouter<S> {
        let metrics_server = self.clone();
        get(move || {
            let text = metrics_server.encode_metrics();
            std::future::ready(
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response(),
            )
        })
    }

    /// Serves [`Self::standalone_router`] on `listener`, over TLS when `tls` is given (as in
    /// production on port 443) or plain HTTP (loopback tests, or behind a TLS terminator).
    pub fn serve(
        &self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<ServeHandle> {
        let local_addr = listener.local_addr()?;
        let app = self.standalone_router();
        let token = self.shared.shutdown.clone();
        let task = match tls {
            None => tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
            }),
            Some(tls) => tokio::spawn(serve_tls(listener, app, tls, token)),
        };
        tracing::info!(%local_addr, "relay listening");
        Ok(ServeHandle {
            local_addr,
            server: self.clone(),
            task,
        })
    }

    /// Runs the relay protocol on an accepted byte stream (an upgraded HTTP connection, or an
    /// in-memory pipe in tests) until the client leaves, breaks the protocol, is replaced or
    /// the relay shuts down.
    pub async fn handle_connection<S>(&self, stream: S) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut decoder = FrameDecoder::new(MAX_RELAY_FRAME_LEN);
        let mut buf = vec![0u8; 64 * 1024];
        let challenge = AttachChallenge::generate(&mut rand::rngs::OsRng);
        write_frames(&mut writer, &[challenge.frame()]).await?;

        let first = tokio::time::timeout(
            ATTACH_TIMEOUT,
            read_frame(&mut reader, &mut decoder, &mut buf),
        )
        .await;
        let node_key = match first {
            Err(_) => return Err(self.refuse(&mut writer, "no client-info within 10 s").await),
            Ok(Err(err)) => return Err(err),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(RelayFrame::ClientInfo { node_key, proof }))) => {
                if let Err(err) = challenge.verify(&node_key, &proof) {
                    return Err(self.refuse(&mut writer, &err.to_string()).await);
                }
                node_key
            }
            Ok(Ok(Some(_))) => {
                let problem = "the first frame must be client-info";
                return Err(self.refuse(&mut writer, problem).await);
            }
        };
        match self.shared.authorizer.authorize(&node_key).await {
            Ok(true) => {}
            Ok(false) => {
                let problem = format!(
                    "node key {} is not registered with this tailnet's coord; register the node (postern login) first",
                    node_key.short()
                );
                return Err(self.refuse(&mut writer, &problem).await);
            }
            Err(err) => {
                let problem = format!("{err}; try again later");
                return Err(self.refuse(&mut writer, &problem).await);
            }
        }

        let wake = Arc::new(Notify::new());
        let close = self.shared.shutdown.child_token();
        let id = {
            let mut core = self.core();
            let id = core.attach(node_key, Instant::now());
            self.conns().insert(
                id,
                Conn {
                    wake: wake.clone(),
                    close: close.clone(),
                },
            );
            id
        };
        self.dispatch();
        tracing::debug!(node = %node_key.short(), "relay client attached");
        let result = async {
            write_frames(&mut writer, &[RelayFrame::Attached]).await?;
            tokio::select! {
                result = self.read_loop(id, &mut reader, &mut decoder, &mut buf) => result,
                result = self.write_loop(id, &mut writer, &wake) => result,
                () = close.cancelled() => Ok(()),
            }
        }
        .await;
        self.core().detach(id);
        self.conns().remove(&id);
        self.dispatch();
        tracing::debug!(node = %node_key.short(), "relay client detached");
        result
    }

    /// Counters of `key` (kept across reconnects), or `None` if it never attached.
    pub fn client_stats(&self, key: &NodePublicKey) -> Option<ClientStats> {
        self.core().client_stats(key)
    }

    /// Relay-wide counters.
    pub fn stats(&self) -> RelayStats {
        self.core().stats()
    }

    /// Whether `key` is attached now.
    pub fn is_attached(&self, key: &NodePublicKey) -> bool {
        self.core().is_attached(key)
    }

    /// Connections refused at attach (bad proof, unregistered key, timeouts).
    pub fn refused_attaches(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// The relay's counters in the Prometheus text format (OpenMetrics).
    pub fn encode_metrics(&self) -> String {
        let (stats, clients) = {
            let core = self.core();
            (core.stats(), core.all_client_stats().collect::<Vec<_>>())
        };
        crate::metrics::encode(&stats, self.refused_attaches(), &clients)
    }

    /// Disconnects every client and stops the timer task and any [`Self::serve`] listener.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    fn core(&self) -> MutexGuard<'_, RelayCore> {
        // A panic while holding the lock cannot leave the core half-updated in a way that
        // matters more than stopping the relay would; keep serving.
        self.shared
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<ClientId, Conn>> {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes writers with new frames and closes replaced or idle clients.
    fn dispatch(&self) {
        let (wake, close) = {
            let mut core = self.core();
            let wake: Vec<_> = std::iter::from_fn(|| core.poll_wakeup()).collect();
            let close: Vec<_> = std::iter::from_fn(|| core.poll_closed()).collect();
            (wake, close)
        };
        if wake.is_empty() && close.is_empty() {
            return;
        }
        let conns = self.conns();
        for id in wake {
            if let Some(conn) = conns.get(&id) {
                conn.wake.notify_one();
            }
        }
        for id in close {
            if let Some(conn) = conns.get(&id) {
                conn.close.cancel();
            }
        }
    }

    async fn refuse<W: AsyncWrite + Unpin>(&self, writer: &mut W, problem: &str) -> SessionError {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        let mut text = problem.to_owned();
        while text.len() > MAX_HEALTH_LEN {
            text.pop();
        }
        let frame = RelayFrame::Health {
            problem: text.clone(),
        };
        if let Err(err) = write_frames(writer, &[frame]).await {
            tracing::debug!(%err, "could not tell a refused relay client why");
        }
        let _ = writer.shutdown().await;
        tracing::info!(problem = %text, "relay attach refused");
        SessionError::AttachRefused(text)
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        id: ClientId,
        reader: &mut R,
        decoder: &mut FrameDecoder,
        buf: &mut [u8],
    ) -> Result<(), SessionError> {
        loop {
            {
                let now = Instant::now();
                let mut core = self.core();
                while let Some(frame) = decoder.next_frame()? {
                    match RelayFrame::parse(&frame) {
                        Ok(frame) => core.handle_frame(id, frame, now)?,
                        // A newer client may send frames this relay does not know: skip them.
                        Err(RelayFrameError::UnknownType(_)) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            self.dispatch();
            let n = reader.read(buf).await?;
            if n == 0 {
                return Ok(());
            }
            decoder.push(buf.get(..n).unwrap_or_default());
        }
    }

    async fn write_loop<W: AsyncWrite + Unpin>(
        &self,
        id: ClientId,
        writer: &mut W,
        wake: &Notify,
    ) -> Result<(), SessionError> {
        let mut out = Vec::new();
        loop {
            loop {
                out.clear();
                {
                    let now = Instant::now();
                    let mut core = self.core();
                    for _ in 0..WRITE_BATCH {
                        let Some(frame) = core.poll_transmit(id, now) else {
                            break;
                        };
                        frame.encode(&mut out)?;
                    }
                }
                if out.is_empty() {
                    break;
                }
                writer.write_all(&out).await?;
            }
            writer.flush().await?;
            wake.notified().await;
        }
    }

    async fn run_timers(self) {
        let token = self.shared.shutdown.clone();
        loop {
            let next = self
                .core()
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
                .min(Instant::now() + Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = token.cancelled() => return,
            }
            self.core().handle_timeout(Instant::now());
            self.dispatch();
        }
    }
}

/// A relay started by [`RelayServer::serve`].
#[derive(Debug)]
pub struct ServeHandle {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    server: RelayServer,
    task: JoinHandle<std::io::Result<()>>,
}

impl ServeHandle {
    /// Shuts the relay down (every client is disconnected) and waits for the listener to
    /// close.
    pub async fn shutdown(self) {
        self.server.shutdown();
        let _ = self.task.await;
    }
}

async fn upgrade(State(server): State<RelayServer>, mut request: Request<Body>) -> Response {
    let wants_upgrade = request.headers().get(header::UPGRADE).is_some_and(|value| {
        value
            .as_bytes()
            .eq_ignore_ascii_case(RELAY_UPGRADE.as_bytes())
    });
    if !wants_upgrade {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, HeaderValue::from_static(RELAY_UPGRADE))],
            "this endpoint is a Postern relay; attach with a Postern node\n",
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "relay upgrade failed");
                return;
            }
        };
        if let Err(err) = server.handle_connection(TokioIo::new(upgraded)).await {
            tracing::debug!(%err, "relay connection ended with an error");
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static(RELAY_UPGRADE)),
        ],
    )
        .into_response()
}

async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    token: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = token.cancelled() => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::debug!(%peer, %err, "relay TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %err, "relay HTTPS connection ended");
            }
        });
    }
}

/// Reads the next relay frame; `Ok(None)` at a clean end of stream. Unknown frame types are
/// an error here (only used before attaching, when the client must send client-info).
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<Option<RelayFrame>, SessionError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(RelayFrame::parse(&frame)?));
        }
        let n = reader.read(buf).await?;
        if n == 0 {
            return Ok(None);
        }
        decoder.push(buf.get(..n).unwrap_or_default());
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[RelayFrame],
) -> Result<(), SessionError> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode(&mut out)?;
    }
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

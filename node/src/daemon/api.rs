//! The local API of a running node: HTTP/1.1 on a unix socket in the state directory
//! (`postern.sock`, mode `0600`, so only the node's owner can use it).
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v0/status` | the [`Status`](super::status::Status) as JSON |
//! | `GET /v0/resolve?name=N` | `{"name", "address"}`, 404 if `N` is not in the netmap |
//! | `POST /v0/ping?peer=N&timeout_ms=T` | one ICMP echo through the mesh: [`PingAnswer`] |
//! | `POST /v0/dial?peer=N&port=P` with `Upgrade: postern-stream` | 101, then the connection carries a TCP stream to `N:P` in the tailnet |
//! | `POST /v0/listen?port=P` with `Upgrade: postern-stream` | listens on tailnet port `P`; 101 once listening, then the connection carries the first TCP stream accepted |
//! | `POST /v0/shutdown` | asks the node to stop |
//! | `GET /v0/serve` | the serves and funnels: [`ServeStatus`](super::serves::ServeStatus) |
//! | `POST /v0/serve` with a JSON [`ServeRequest`](super::serves::ServeRequest) | adds a serve; `--bg` (`background: true`) answers [`ServeStatus`](super::serves::ServeStatus); a foreground serve needs `Upgrade: postern-stream`: 101, one JSON [`ServeStatus`](super::serves::ServeStatus) line, and the serve lasts until either side closes the stream |
//! | `POST /v0/serve/reset` | removes every serve (not funnels) |
//! | `GET /v0/funnel` | the same [`ServeStatus`](super::serves::ServeStatus) |
//! | `POST /v0/funnel` with a JSON [`FunnelRequestBody`](super::serves::FunnelRequestBody) | asks the coord for a funnel; answers [`FunnelStatus`](super::serves::FunnelStatus) (`--bg`) or, in the foreground, 101 and one JSON [`FunnelStatus`](super::serves::FunnelStatus) line, like `/v0/serve` |
//! | `POST /v0/funnel/reset` | closes every funnel |
//! | `GET /v0/funnel/log?funnel=NAME&limit=N&denied=true&since=UNIX&after_id=ID&wait=SECS` | the edge decisions of this node's funnels from the coord, newest first: [`FunnelLogAnswer`]; every parameter is optional (`funnel` is a name, hostname or local port; with `wait`, an answer that would be empty is held up to that many seconds, at most 25, for a decision to arrive) |
//! | `GET /v0/metrics` | Prometheus metrics (OpenMetrics text): peers, bytes, handshakes, paths, drops; see [`metrics`](super::metrics) |
//! | `GET /v0/inspect` | `{"addr": "127.0.0.1:4040"}`: where request inspection listens (`addr` null when off) |
//!
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it was (400 bad
//! request, 403 the coord refused a funnel, 404 unknown peer, 409 a port conflict, 501 no
//! funnel support, 502 the peer refused, 503 the coord cannot be asked, 504 no answer in
//! time).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRef, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use postern_netstack::NetstackError;
use postern_proto::funnel::{EdgeDecision, FunnelLogQuery};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixListener;

use super::serves::{
    FunnelCallError, FunnelRequestBody, FunnelStatus, ServeChangeError, ServeManager, ServeRequest,
};
use super::{NodeHandle, PING_TIMEOUT, RuntimeError};

/// The header in which the daemon states its version on every answer, and the CLI its own
/// on every request (see [`DAEMON_VERSION`](super::status::DAEMON_VERSION)).
pub const VERSION_HEADER: &str = "postern-version";

/// The `Upgrade` token of a byte stream carried over the local API.
pub const STREAM_UPGRADE: &str = "postern-stream";

/// Why the local API could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Another daemon answers on the socket.
    #[error(
        "another postern daemon already runs with this state directory (it answers on {0}); stop it with `postern down`"
    )]
    AlreadyRunning(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on the local API socket {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The answer to a ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingAnswer {
    /// The name asked for.
    pub peer: String,
    /// Its tailnet address.
    pub address: IpAddr,
    /// The round-trip time in milliseconds.
    pub rtt_ms: f64,
    /// The path the packets took: `direct` or `relayed` (as in [`PeerStatus::path`](super::status::PeerStatus::path)).
    pub path: String,
    /// The peer's endpoint on that path.
    pub endpoint: Option<String>,
}

/// The answer to a name lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveAnswer {
    /// The name asked for.
    pub name: String,
    /// Its tailnet address.
    pub address: IpAddr,
}

/// What the local API offers besides the node itself: the serve manager (without it the
/// serve and funnel routes answer 503) and where request inspection listens.
#[derive(Debug, Clone, Default)]
pub struct ApiExtras {
    /// The daemon's serves and funnels.
    pub serves: Option<Arc<ServeManager>>,
    /// The inspection UI's address, if it runs.
    pub inspect_addr: Option<SocketAddr>,
}

/// The answer of `GET /v0/funnel/log`: what `postern funnel log --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelLogAnswer {
    /// The decisions, newest first.
    pub decisions: Vec<EdgeDecision>,
}

/// The query of `GET /v0/funnel/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelLogParams {
    /// A funnel's name, hostname or local port; all funnels when absent.
    #[serde(default)]
    pub funnel: Option<String>,
    /// At most this many (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only denials.
    #[serde(default)]
    pub denied: bool,
    /// Only decisions at or after this Unix time (seconds).
    #[serde(default)]
    pub since: Option<i64>,
    /// Only decisions with a larger id.
    #[serde(default)]
    pub after_id: Option<u64>,
    /// When nothing matches yet, wait up to this many seconds (at most 25) for a matching
    /// decision and answer as soon as one arrives (empty at the end of the wait): what
    /// `postern funnel log --follow` asks.
    #[serde(default)]
    pub wait: Option<u32>,
}

impl FunnelLogParams {
    /// The query to send to the coord.
    pub fn to_query(&self) -> FunnelLogQuery {
        FunnelLogQuery {
            funnel: self.funnel.clone().filter(|f| !f.is_empty()),
            since: self.since.map(postern_proto::UnixTime),
            after_id: self.after_id,
            limit: self.limit,
            denied_only: self.denied,
            wait_ms: self.wait.filter(|secs| *secs > 0).map(|secs| {
                secs.saturating_mul(1000)
                    .min(postern_proto::funnel::MAX_FUNNEL_LOG_WAIT_MS)
            }),
        }
    }
}

/// The answer of `GET /v0/inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectAnswer {
    /// Where the inspection UI and API listen; `None` when the node runs `--inspect off`.
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
struct ApiContext {
    node: NodeHandle,
    extras: ApiExtras,
}

impl FromRef<ApiContext> for NodeHandle {
    fn from_ref(context: &ApiContext) -> Self {
        context.node.clone()
    }
}

/// Serves `node` on `listener` (from [`bind`] at `path`) until the node stops, then
/// removes the socket file. Without serve routes; see [`serve_with`].
pub async fn serve(node: NodeHandle, listener: UnixListener, path: &Path) {
    serve_with(node, ApiExtras::default(), listener, path).await;
}

/// Like [`serve`], with the serve and funnel routes of `extras`.
pub async fn serve_with(node: NodeHandle, extras: ApiExtras, listener: UnixListener, path: &Path) {
    let stop = node.clone();
    let context = ApiContext { node, extras };
    let router = Router::new()
        .route("/v0/status", get(status))
        .route("/v0/metrics", get(metrics))
        .route("/v0/resolve", get(resolve))
        .route("/v0/ping", post(ping))
        .route("/v0/dial", post(dial))
        .route("/v0/listen", post(listen))
        .route("/v0/shutdown", post(shutdown))
        .route("/v0/serve", get(serve_status).post(serve_add))
        .route("/v0/serve/reset", post(serve_reset))
        .route("/v0/funnel", get(serve_status).post(funnel_open))
        .route("/v0/funnel/reset", post(funnel_reset))
        .route("/v0/funnel/log", get(funnel_log))
        .route("/v0/inspect", get(inspect_addr))
        .layer(axum::middleware::map_response(stamp_version))
        .with_state(context);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(%err, "local API stopped");
    }
    let _ = std::fs::remove_file(path);
}

/// Serves `GET /metrics` (the same OpenMetrics text as `GET /v0/metrics`) on a TCP
/// listener, for a Prometheus scrape (`postern up --metrics ADDR`). Nothing else is
/// answered there. Returns when the node stops.
pub async fn serve_metrics(node: NodeHandle, extras: ApiExtras, listener: tokio::net::TcpListener) {
    let stop = node.clone();
    let router = Router::new()
        .route("/metrics", get(metrics))
        .with_state(ApiContext { node, extras });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(%err, "metrics listener stopped");
    }
}

/// Adds [`VERSION_HEADER`] to every answer.
async fn stamp_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        VERSION_HEADER,
        HeaderValue::from_static(super::status::DAEMON_VERSION),
    );
    response
}

/// Binds the local API socket at `path` with mode `0600`, replacing a stale socket nobody
/// answers on. Bind before starting the node, so a second daemon on the same state
/// directory stops early.
///
/// Fails if another daemon answers on the socket, or the socket cannot be created.
pub async fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ApiError::AlreadyRunning(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listen_error = |source| ApiError::Listen {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(listen_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_error)?;
    Ok(listener)
}

#[derive(Deserialize)]
struct NameQuery {
    name: String,
}

#[derive(Deserialize)]
struct PingQuery {
    peer: String,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct DialQuery {
    peer: String,
    port: u16,
}

#[derive(Deserialize)]
struct ListenQuery {
    port: u16,
}

/// The node's status with its serves and funnels.
async fn full_status(context: &ApiContext) -> Result<super::status::Status, RuntimeError> {
    let mut status = context.node.status().await?;
    if let Some(serves) = &context.extras.serves {
        let serving = serves.status();
        status.serves = serving.serves;
        status.funnels = serving.funnels;
    }
    Ok(status)
}

async fn status(State(context): State<ApiContext>) -> Response {
    match full_status(&context).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

async fn metrics(State(context): State<ApiContext>) -> Response {
    let snapshot = async {
        let status = full_status(&context).await?;
        let engine = context.node.engine_stats().await?;
        Ok::<_, RuntimeError>((status, engine, context.node.data_path_stats()))
    };
    match snapshot.await {
        Ok((status, engine, data_path)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(super::metrics::CONTENT_TYPE),
            )],
            super::metrics::encode(&status, &engine, &data_path),
        )
            .into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

async fn resolve(State(node): State<NodeHandle>, Query(query): Query<NameQuery>) -> Response {
    match node.resolve(&query.name) {
        Some(address) => Json(ResolveAnswer {
            name: query.name,
            address,
        })
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &RuntimeError::UnknownPeer(query.name).to_string(),
        ),
    }
}

async fn ping(State(node): State<NodeHandle>, Query(query): Query<PingQuery>) -> Response {
    let timeout = query
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(PING_TIMEOUT);
    match node.ping(&query.peer, timeout).await {
        Ok((address, rtt)) => {
            let peer = node
                .status()
                .await
                .ok()
                .and_then(|s| s.peers.into_iter().find(|p| p.addresses.contains(&address)));
            Json(PingAnswer {
                peer: query.peer,
                address,
                rtt_ms: rtt.as_secs_f64() * 1000.0,
                path: peer
                    .as_ref()
                    .map(|p| p.path.clone())
                    .unwrap_or_else(|| "direct".into()),
                endpoint: peer.and_then(|p| p.endpoint),
            })
            .into_response()
        }
        Err(err) => runtime_error(&err),
    }
}

async fn dial(
    State(node): State<NodeHandle>,
    Query(query): Query<DialQuery>,
    mut request: Request,
) -> Response {
    if !wants_stream(&request) {
        return error(StatusCode::BAD_REQUEST, "send `Upgrade: postern-stream`");
    }
    let stream = match node.dial(&query.peer, query.port).await {
        Ok(stream) => stream,
        Err(err) => return runtime_error(&err),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => splice(TokioIo::new(upgraded), stream, &node).await,
            Err(err) => tracing::debug!(%err, "local API upgrade failed"),
        }
    });
    switching_protocols()
}

async fn listen(
    State(node): State<NodeHandle>,
    Query(query): Query<ListenQuery>,
    mut request: Request,
) -> Response {
    if !wants_stream(&request) {
        return error(StatusCode::BAD_REQUEST, "send `Upgrade: postern-stream`");
    }
    let listener = match node.netstack().listen_tcp(query.port) {
        Ok(listener) => listener,
        Err(err) => return error(StatusCode::CONFLICT, &err.to_string()),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "local API upgrade failed");
                return;
            }
        };
        let accepted = tokio::select! {
            () = node.stopped() => return,
            accepted = listener.accept() => accepted,
        };
        drop(listener);
        match accepted {
            Ok(stream) => splice(TokioIo::new(upgraded), stream, &node).await,
            Err(err) => tracing::debug!(%err, "accepting on the tailnet failed"),
        }
    });
    switching_protocols()
}

async fn shutdown(State(node): State<NodeHandle>) -> Response {
    tracing::info!("stop requested through the local API");
    // Answer first; the graceful shutdown waits for this response to be written.
    let stopper = node.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stopper.stop();
    });
    Json(serde_json::json!({ "stopping": true })).into_response()
}

fn no_serves() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this daemon does not serve (it was started without the serve runtime)",
    )
}

async fn serve_status(State(context): State<ApiContext>) -> Response {
    match &context.extras.serves {
        Some(serves) => Json(serves.status()).into_response(),
        None => no_serves(),
    }
}

async fn inspect_addr(State(context): State<ApiContext>) -> Response {
    Json(InspectAnswer {
        addr: context.extras.inspect_addr,
    })
    .into_response()
}

async fn funnel_log(
    State(context): State<ApiContext>,
    Query(params): Query<FunnelLogParams>,
) -> Response {
    let Some(serves) = context.extras.serves.clone() else {
        return no_serves();
    };
    match serves.funnel_log(params.to_query()).await {
        Ok(decisions) => Json(FunnelLogAnswer { decisions }).into_response(),
        Err(err) => {
            let status = match &err {
                FunnelCallError::Refused(refusal) if refusal.code == "not_found" => {
                    StatusCode::NOT_FOUND
                }
                FunnelCallError::Refused(_) => StatusCode::FORBIDDEN,
                FunnelCallError::Unsupported => StatusCode::NOT_IMPLEMENTED,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let message = match &err {
                FunnelCallError::Refused(refusal) => refusal.message.clone(),
                other => other.to_string(),
            };
            error(status, &message)
        }
    }
}

async fn serve_reset(State(context): State<ApiContext>) -> Response {
    let Some(serves) = context.extras.serves.clone() else {
        return no_serves();
    };
    match serves.reset(false).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => change_error(&err),
    }
}

async fn funnel_reset(State(context): State<ApiContext>) -> Response {
    let Some(serves) = context.extras.serves.clone() else {
        return no_serves();
    };
    match serves.reset(true).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => change_error(&err),
    }
}

async fn serve_add(State(context): State<ApiContext>, mut request: Request) -> Response {
    let Some(serves) = context.extras.serves.clone() else {
        return no_serves();
    };
    let asked: ServeRequest = match json_body(&mut request).await {
        Ok(asked) => asked,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if asked.entry.background {
        return match serves.add_serve(asked.entry, None) {
            Ok(status) => Json(status).into_response(),
            Err(err) => change_error(&err),
        };
    }
    if !wants_stream(&request) {
        return error(
            StatusCode::BAD_REQUEST,
            "a foreground serve needs `Upgrade: postern-stream` (or set background)",
        );
    }
    let session = serves.new_session();
    let status = match serves.add_serve(asked.entry, Some(&session)) {
        Ok(status) => status,
        Err(err) => {
            serves.end_session(session).await;
            return change_error(&err);
        }
    };
    hold_session(context.node, serves, session, &status, &mut request)
}

async fn funnel_open(State(context): State<ApiContext>, mut request: Request) -> Response {
    let Some(serves) = context.extras.serves.clone() else {
        return no_serves();
    };
    let asked: FunnelRequestBody = match json_body(&mut request).await {
        Ok(asked) => asked,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if asked.background {
        return match serves.open_funnel(asked, None).await {
            Ok(status) => Json(status).into_response(),
            Err(err) => change_error(&err),
        };
    }
    if !wants_stream(&request) {
        return error(
            StatusCode::BAD_REQUEST,
            "a foreground funnel needs `Upgrade: postern-stream` (or set background)",
        );
    }
    let session = serves.new_session();
    let status: FunnelStatus = match serves.open_funnel(asked, Some(&session)).await {
        Ok(status) => status,
        Err(err) => {
            serves.end_session(session).await;
            return change_error(&err);
        }
    };
    hold_session(context.node, serves, session, &status, &mut request)
}

/// Answers 101 and keeps `session` until the CLI closes the stream, the session's entries
/// are removed by someone else, or the node stops; then ends it. The first line on the
/// stream is `answer` as JSON.
fn hold_session<T: Serialize>(
    node: NodeHandle,
    serves: Arc<ServeManager>,
    session: super::serves::Session,
    answer: &T,
    request: &mut Request,
) -> Response {
    let mut line = serde_json::to_vec(answer).unwrap_or_default();
    line.push(b'\n');
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let mut stream = TokioIo::new(upgraded);
                if stream.write_all(&line).await.is_ok() {
                    let mut sink = [0u8; 256];
                    tokio::select! {
                        () = node.stopped() => {}
                        () = session.ended() => {}
                        () = async {
                            // Anything the CLI sends is ignored; EOF or an error ends it.
                            while let Ok(n) = stream.read(&mut sink).await {
                                if n == 0 { break; }
                            }
                        } => {}
                    }
                }
                let _ = stream.shutdown().await;
            }
            Err(err) => tracing::debug!(%err, "local API upgrade failed"),
        }
        serves.end_session(session).await;
    });
    switching_protocols()
}

async fn json_body<T: serde::de::DeserializeOwned>(request: &mut Request) -> Result<T, String> {
    let body = std::mem::take(request.body_mut());
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|err| format!("cannot read the request: {err}"))?;
    serde_json::from_slice(&bytes).map_err(|err| format!("bad request body: {err}"))
}

fn change_error(err: &ServeChangeError) -> Response {
    let status = match err {
        ServeChangeError::Config(_) | ServeChangeError::BadFunnel(_) => StatusCode::BAD_REQUEST,
        ServeChangeError::Conflict { .. } => StatusCode::CONFLICT,
        ServeChangeError::Funnel(FunnelCallError::Refused(_)) => StatusCode::FORBIDDEN,
        ServeChangeError::Funnel(FunnelCallError::Unsupported) => StatusCode::NOT_IMPLEMENTED,
        ServeChangeError::Funnel(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &err.to_string())
}

async fn splice<A, B>(mut a: A, mut b: B, node: &NodeHandle)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        () = node.stopped() => {}
        copied = tokio::io::copy_bidirectional(&mut a, &mut b) => match copied {
            Ok((up, down)) => tracing::debug!(up, down, "local API stream closed"),
            Err(err) => tracing::debug!(%err, "local API stream ended with an error"),
        }
    }
}

fn wants_stream(request: &Request) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(STREAM_UPGRADE))
}

fn switching_protocols() -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(STREAM_UPGRADE));
    response
}

fn runtime_error(err: &RuntimeError) -> Response {
    let status = match err {
        RuntimeError::UnknownPeer(_) => StatusCode::NOT_FOUND,
        RuntimeError::PingNotIpv4(_) => StatusCode::BAD_REQUEST,
        RuntimeError::PingTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
        RuntimeError::Netstack(NetstackError::ConnectTimedOut { .. }) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        RuntimeError::Netstack(_) => StatusCode::BAD_GATEWAY,
        RuntimeError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &err.to_string())
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

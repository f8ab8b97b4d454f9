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
//!
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it was (400 bad
//! request, 404 unknown peer, 502 the peer refused, 504 no answer in time).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use postern_netstack::NetstackError;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use super::{NodeHandle, PING_TIMEOUT, RuntimeError};

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
    /// The path the packets took: `direct` (relayed paths come with the relay client).
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

/// Serves `node` on `listener` (from [`bind`] at `path`) until the node stops, then
/// removes the socket file.
pub async fn serve(node: NodeHandle, listener: UnixListener, path: &Path) {
    let stop = node.clone();
    let router = Router::new()
        .route("/v0/status", get(status))
        .route("/v0/resolve", get(resolve))
        .route("/v0/ping", post(ping))
        .route("/v0/dial", post(dial))
        .route("/v0/listen", post(listen))
        .route("/v0/shutdown", post(shutdown))
        .with_state(node);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(%err, "local API stopped");
    }
    let _ = std::fs::remove_file(path);
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

async fn status(State(node): State<NodeHandle>) -> Response {
    match node.status().await {
        Ok(status) => Json(status).into_response(),
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

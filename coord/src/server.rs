//! The coord's HTTP server: the control upgrade, `/key`, `/healthz` and `/metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use postern_node::control::ControlConnection;
use postern_node::control::connection::{CONTROL_PATH, CONTROL_UPGRADE, KEY_PATH};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::control::Coord;
use crate::control::session::run_session;

/// The HTTP routes of the coord.
pub fn router(coord: Coord) -> Router {
    Router::new()
        .route(KEY_PATH, get(key))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(CONTROL_PATH, post(control))
        .merge(crate::login::routes())
        .with_state(coord)
}

/// A server started by [`serve`].
#[derive(Debug)]
pub struct ServerHandle {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    coord: Coord,
    task: JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// Stops accepting, ends every session, closes the store and waits for the listener
    /// to be released.
    pub async fn shutdown(self) {
        self.coord.shutdown().await;
        let _ = self.task.await;
    }

    /// Waits until the server stops (it stops only on shutdown or a listener error).
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(std::io::Error::other(err)),
        }
    }
}

/// Serves the coord on `listener` until [`ServerHandle::shutdown`].
pub fn serve(coord: Coord, listener: TcpListener) -> std::io::Result<ServerHandle> {
    serve_with(coord, listener, Router::new())
}

/// Like [`serve`], with `extra` routes merged in (the embedded relay's `/relay`, from
/// `postern_relay::RelayServer::router`).
pub fn serve_with(
    coord: Coord,
    listener: TcpListener,
    extra: Router,
) -> std::io::Result<ServerHandle> {
    let local_addr = listener.local_addr()?;
    let token = coord.shutdown_token();
    let app = router(coord.clone()).merge(extra);
    coord.spawn_background_tasks();
    let task = tokio::spawn(async move {
        // Peer addresses reach handlers (login callbacks) and audit records.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });
    tracing::info!(%local_addr, coord_key = %coord.public_key(), "coord listening");
    Ok(ServerHandle {
        local_addr,
        coord,
        task,
    })
}

async fn key(State(coord): State<Coord>) -> String {
    format!("{}\n", coord.public_key())
}

async fn healthz(State(coord): State<Coord>) -> Response {
    // The store answering a trivial read is what "healthy" means here.
    match coord.registry.store().setting("ula_prefix").await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(err) => {
            tracing::warn!(%err, "health check: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

async fn metrics(State(coord): State<Coord>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        coord.metrics.encode(),
    )
        .into_response()
}

async fn control(State(coord): State<Coord>, mut request: Request<Body>) -> Response {
    let wants_upgrade = request.headers().get(header::UPGRADE).is_some_and(|value| {
        value
            .as_bytes()
            .eq_ignore_ascii_case(CONTROL_UPGRADE.as_bytes())
    });
    if !wants_upgrade {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, HeaderValue::from_static(CONTROL_UPGRADE))],
            "this endpoint speaks the Postern control protocol; use a Postern node\n",
        )
            .into_response();
    }
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let on_upgrade = hyper::upgrade::on(&mut request);
    let session = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "control upgrade failed");
                return;
            }
        };
        let token = coord.shutdown_token();
        let accept = ControlConnection::accept(TokioIo::new(upgraded), coord.private_key());
        let conn = tokio::select! {
            conn = accept => conn,
            () = token.cancelled() => return,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(err) => {
                coord.metrics.handshake_failures.inc();
                tracing::info!(%err, "control handshake failed");
                return;
            }
        };
        let machine = conn.remote_machine_key();
        if let Err(err) = run_session(coord, conn).await {
            tracing::info!(?machine, %err, "control session ended with an error");
        }
    };
    // Audit records written for this node (registrations, refused logins) name its address.
    match peer {
        Some(peer) => {
            tokio::spawn(crate::audit::CLIENT_ADDR.scope(peer, session));
        }
        None => {
            tokio::spawn(session);
        }
    }
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static(CONTROL_UPGRADE)),
        ],
    )
        .into_response()
}

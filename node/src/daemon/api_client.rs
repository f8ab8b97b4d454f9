//! A client of the local API (see [`super::api`]), for the CLI and tests.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::api::{STREAM_UPGRADE, VERSION_HEADER};
use super::status::DAEMON_VERSION;

/// A byte stream carried over the local API (a tailnet TCP connection).
pub type ApiStream = TokioIo<hyper::upgrade::Upgraded>;

/// Why a local API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiClientError {
    /// Nothing answers on the socket.
    #[error(
        "no postern daemon is running for this state directory (nothing answers on {socket}): start one with `postern up`"
    )]
    NotRunning {
        /// The socket path.
        socket: PathBuf,
    },
    /// The daemon runs another version of postern than this CLI, so their messages may not
    /// match. Only `postern down` still talks to it.
    #[error(
        "this postern is version {cli} but the running daemon is {daemon}: restart the daemon with this version (`postern down`, then `postern up`)"
    )]
    VersionMismatch {
        /// This CLI's version.
        cli: String,
        /// The daemon's version, or a description when it did not say.
        daemon: String,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The daemon's error message.
        message: String,
    },
    /// The exchange failed.
    #[error("local API exchange failed: {0}")]
    Http(String),
}

impl ApiClientError {
    /// The HTTP status of an error answer, if the daemon answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one daemon's local API socket.
#[derive(Debug, Clone)]
pub struct LocalApiClient {
    socket: PathBuf,
}

impl LocalApiClient {
    /// A client of the socket at `socket` (`STATE_DIR/postern.sock`).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, parsing the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiClientError> {
        let response = self.send(http::Method::GET, path, false, None).await?;
        json(response).await
    }

    /// `GET path`, returning the answer's text (for `/v0/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ApiClientError> {
        let response = self.send(http::Method::GET, path, false, None).await?;
        let body = success_body(response).await?;
        String::from_utf8(body.to_vec()).map_err(|err| ApiClientError::Http(err.to_string()))
    }

    /// `POST path`, parsing the JSON answer.
    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiClientError> {
        let response = self.send(http::Method::POST, path, false, None).await?;
        json(response).await
    }

    /// `POST path` with `body` as JSON, parsing the JSON answer.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiClientError> {
        let body = serde_json::to_vec(body).map_err(|err| ApiClientError::Http(err.to_string()))?;
        let response = self
            .send(http::Method::POST, path, false, Some(Bytes::from(body)))
            .await?;
        json(response).await
    }

    /// `POST path` with `body` as JSON and `Upgrade: postern-stream`: the daemon keeps the
    /// returned stream open for as long as what was asked for lasts (a foreground serve),
    /// and the caller keeps it open for as long as it wants it.
    pub async fn stream_json<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<ApiStream, ApiClientError> {
        let body = serde_json::to_vec(body).map_err(|err| ApiClientError::Http(err.to_string()))?;
        let response = self
            .send(http::Method::POST, path, true, Some(Bytes::from(body)))
            .await?;
        upgraded(response).await
    }

    /// `POST path` with `Upgrade: postern-stream`: the returned stream carries the bytes of
    /// a tailnet TCP connection (see `/v0/dial` and `/v0/listen`).
    pub async fn stream(&self, path: &str) -> Result<ApiStream, ApiClientError> {
        let response = self.send(http::Method::POST, path, true, None).await?;
        upgraded(response).await
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        upgrade: bool,
        body: Option<Bytes>,
    ) -> Result<http::Response<Incoming>, ApiClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|_| ApiClientError::NotRunning {
                    socket: self.socket.clone(),
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| ApiClientError::Http(err.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%err, "local API connection ended");
            }
        });
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "postern.local")
            .header(VERSION_HEADER, DAEMON_VERSION);
        if upgrade {
            request = request
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, STREAM_UPGRADE);
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|err| ApiClientError::Http(err.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| ApiClientError::Http(err.to_string()))?;
        if path != SHUTDOWN_PATH {
            check_version(&response)?;
        }
        Ok(response)
    }
}

/// The one call a CLI of another version may still make: stopping the daemon.
const SHUTDOWN_PATH: &str = "/v0/shutdown";

/// Refuses an answer from a daemon of another version than this CLI.
fn check_version(response: &http::Response<Incoming>) -> Result<(), ApiClientError> {
    let daemon = response
        .headers()
        .get(VERSION_HEADER)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    match daemon {
        Some(daemon) if daemon == DAEMON_VERSION => Ok(()),
        Some(daemon) => Err(ApiClientError::VersionMismatch {
            cli: DAEMON_VERSION.to_owned(),
            daemon: format!("version {daemon}"),
        }),
        None => Err(ApiClientError::VersionMismatch {
            cli: DAEMON_VERSION.to_owned(),
            daemon: "an older version that does not state it".to_owned(),
        }),
    }
}

async fn upgraded(response: http::Response<Incoming>) -> Result<ApiStream, ApiClientError> {
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(error_of(response).await);
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|err| ApiClientError::Http(err.to_string()))?;
    Ok(TokioIo::new(upgraded))
}

async fn json<T: DeserializeOwned>(
    response: http::Response<Incoming>,
) -> Result<T, ApiClientError> {
    let body = success_body(response).await?;
    serde_json::from_slice(&body).map_err(|err| ApiClientError::Http(err.to_string()))
}

/// The body of a successful answer, or the daemon's error.
async fn success_body(response: http::Response<Incoming>) -> Result<Bytes, ApiClientError> {
    if !response.status().is_success() {
        return Err(error_of(response).await);
    }
    Ok(response
        .into_body()
        .collect()
        .await
        .map_err(|err| ApiClientError::Http(err.to_string()))?
        .to_bytes())
}

async fn error_of(response: http::Response<Incoming>) -> ApiClientError {
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return ApiClientError::Http(err.to_string()),
    };
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("the daemon answered HTTP {status}"));
    ApiClientError::Api { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::Router;
    use axum::routing::{get, post};

    /// A stand-in daemon answering `{}` with `version` in the version header (or none).
    fn daemon_of_version(version: Option<&'static str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("postern.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let answer = move || async move {
            let mut response = axum::Json(serde_json::json!({})).into_response();
            if let Some(version) = version {
                response
                    .headers_mut()
                    .insert(VERSION_HEADER, http::HeaderValue::from_static(version));
            }
            response
        };
        let router = Router::new()
            .route("/v0/status", get(answer))
            .route(SHUTDOWN_PATH, post(answer));
        tokio::spawn(async move { axum::serve(listener, router).await });
        (dir, socket)
    }

    use axum::response::IntoResponse as _;

    #[tokio::test]
    async fn a_daemon_of_the_same_version_is_answered() {
        let (_dir, socket) = daemon_of_version(Some(DAEMON_VERSION));
        let client = LocalApiClient::new(socket);
        let answer: serde_json::Value = client.get("/v0/status").await.unwrap();
        assert_eq!(answer, serde_json::json!({}));
    }

    #[tokio::test]
    async fn a_daemon_of_another_version_is_named_and_the_fix_given() {
        let (_dir, socket) = daemon_of_version(Some("0.0.0-other"));
        let client = LocalApiClient::new(socket);
        let err = client
            .get::<serde_json::Value>("/v0/status")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "this postern is version {DAEMON_VERSION} but the running daemon is version 0.0.0-other: restart the daemon with this version (`postern down`, then `postern up`)"
            )
        );
        // Stopping it still works, so the fix can be applied.
        let stopped: serde_json::Value = client.post(SHUTDOWN_PATH).await.unwrap();
        assert_eq!(stopped, serde_json::json!({}));
    }

    #[tokio::test]
    async fn a_daemon_that_does_not_state_its_version_is_refused() {
        let (_dir, socket) = daemon_of_version(None);
        let client = LocalApiClient::new(socket);
        let err = client
            .get::<serde_json::Value>("/v0/status")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ApiClientError::VersionMismatch { daemon, .. } if daemon.contains("older version")),
            "{err}"
        );
    }
}

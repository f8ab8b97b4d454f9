//! The node the ingress embeds: a Postern node in-process on a userspace netstack, logged
//! in with an ingress auth key, through which the edge reaches funnel targets and whose
//! netmap lists the funnels to serve.
//!
//! [`start_node`] logs in the first time (the auth key from `[node] auth_key_file` or the
//! variable `auth_key_env`; never logged), checking the coordination server's key against
//! `[node] coord_key` when it is set, then starts the [`NodeRuntime`]. Later starts reuse
//! the login and keys in the node's state directory and need no auth key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use postern_node::daemon::state::StateDir;
use postern_node::daemon::{
    LoginProgress, LoginRequest, NodeRuntime, RuntimeConfig, RuntimeError, coord_addr, login,
};
use postern_proto::MachinePublicKey;
use postern_proto::control::AuthKeySecret;

use crate::config::{DEFAULT_AUTH_KEY_ENV, NodeSection};

/// Why the embedded node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedNodeError {
    /// The node's first login needs an auth key and none was given.
    #[error(
        "the embedded node is not logged in yet and has no auth key: set {env} (or [node] auth_key_file) to a key from `postern-coord keys create --ingress`"
    )]
    NoAuthKey {
        /// The variable that was read.
        env: String,
    },
    /// The auth key file could not be read.
    #[error("cannot read the auth key file {path}: {source}")]
    AuthKeyFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The coordination server's key is not the pinned one.
    #[error(
        "the coordination server at {url} presented key {found}, not the pinned [node] coord_key {pinned}; check coord_url, or update coord_key if the server's key really changed"
    )]
    CoordKeyMismatch {
        /// The coord URL.
        url: String,
        /// The pinned key.
        pinned: MachinePublicKey,
        /// The key the server presented (or the login holds).
        found: MachinePublicKey,
    },
    /// `coord_key` is not a key.
    #[error("[node] coord_key is not a coordination server key (mkey:…): {0}")]
    BadCoordKey(String),
    /// Login or start failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Logs the embedded node in if needed and starts it; see the [module docs](self).
/// `ingress_state` is the ingress's state directory (the node's default lives in
/// `node/` under it); `env` reads environment variables.
///
/// Waits, logging what it waits for, while the coordination server cannot be reached or
/// an admin must approve the node.
pub async fn start_node(
    section: &NodeSection,
    ingress_state: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NodeRuntime, EmbeddedNodeError> {
    let dir = section
        .state_dir
        .clone()
        .unwrap_or_else(|| ingress_state.join("node"));
    let state = StateDir::open(&dir).map_err(RuntimeError::from)?;
    let pinned = section
        .coord_key
        .as_deref()
        .map(|key| {
            key.parse::<MachinePublicKey>()
                .map_err(|e| EmbeddedNodeError::BadCoordKey(e.to_string()))
        })
        .transpose()?;
    let existing = state.login().map_err(RuntimeError::from)?;
    let login_state = match existing {
        Some(existing) => existing,
        None => {
            let auth_key = read_auth_key(section, env)?;
            if let Some(pinned) = pinned {
                let addr = coord_addr(&section.coord_url)?;
                let found = postern_node::control::fetch_coord_key(&addr)
                    .await
                    .map_err(|e| RuntimeError::CoordUnreachable {
                        url: section.coord_url.clone(),
                        reason: e.to_string(),
                    })?;
                if found != pinned {
                    return Err(EmbeddedNodeError::CoordKeyMismatch {
                        url: section.coord_url.clone(),
                        pinned,
                        found,
                    });
                }
            }
            tracing::info!(coord = %section.coord_url, "logging the embedded node in with the ingress auth key");
            let request = LoginRequest {
                coord_url: section.coord_url.clone(),
                auth_key: Some(auth_key),
                hostname: section.hostname.clone().unwrap_or_else(|| "ingress".into()),
                device: false,
            };
            login(&state, request, report_progress).await?
        }
    };
    if let Some(pinned) = pinned
        && login_state.coord_key != pinned
    {
        return Err(EmbeddedNodeError::CoordKeyMismatch {
            url: login_state.coord_url,
            pinned,
            found: login_state.coord_key,
        });
    }
    let runtime = NodeRuntime::start(RuntimeConfig {
        state_dir: dir,
        listen_port: section.listen_port,
        relay_ca: None,
        home_relay: None,
    })
    .await?;
    Ok(runtime)
}

fn read_auth_key(
    section: &NodeSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AuthKeySecret, EmbeddedNodeError> {
    if let Some(path) = &section.auth_key_file {
        let text =
            std::fs::read_to_string(path).map_err(|source| EmbeddedNodeError::AuthKeyFile {
                path: path.clone(),
                source,
            })?;
        return Ok(AuthKeySecret::new(text.trim()));
    }
    let name = section
        .auth_key_env
        .clone()
        .unwrap_or_else(|| DEFAULT_AUTH_KEY_ENV.into());
    match env(&name) {
        Some(key) if !key.trim().is_empty() => Ok(AuthKeySecret::new(key.trim())),
        _ => Err(EmbeddedNodeError::NoAuthKey { env: name }),
    }
}

fn report_progress(progress: LoginProgress) {
    match progress {
        LoginProgress::NeedsApproval { .. } => {
            tracing::info!("waiting for an admin to approve the ingress node");
        }
        LoginProgress::Waiting(waited) if waited.as_secs() % 10 == 0 && waited > Duration::ZERO => {
            tracing::info!(
                ?waited,
                "waiting for the coordination server to accept the ingress node"
            );
        }
        LoginProgress::LoginUrl(_) | LoginProgress::DeviceCode { .. } => {
            tracing::warn!(
                "the coordination server asked for an interactive login; the ingress auth key was not accepted"
            );
        }
        _ => {}
    }
}

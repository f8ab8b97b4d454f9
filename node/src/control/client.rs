//! The tokio shell of the control client: dial, drive a [`ControlSession`], redial.
//!
//! [`ControlClient::spawn`] runs until the coord refuses the node for good (or the handle
//! is aborted). It publishes the latest netmap through a `tokio::sync::watch`, redials with
//! exponential backoff when the connection drops, and treats a stream that stays silent
//! longer than [`ClientConfig::silence_timeout`] as dead (the coord sends keepalives well
//! within it).

use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use postern_proto::control::ControlMessage;

use postern_proto::netmap::{Netmap, RegionId};
use postern_proto::{MachinePrivateKey, MachinePublicKey, NodeId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::connection::{ConnectionError, dial, fetch_coord_key};
use super::session::{ControlSession, RegistrationState, SessionConfig, SessionError};

/// Default silence after which the client redials: 120 s.
pub const DEFAULT_SILENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// How a [`ControlClient`] connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The coord's `host:port`.
    pub coord_addr: String,
    /// The pinned coord key; `None` fetches it from `GET /key` on first contact and pins it
    /// for the life of the client.
    pub coord_key: Option<MachinePublicKey>,
    /// This machine's key (the Noise static key).
    pub machine_key: MachinePrivateKey,
    /// What to register and report.
    pub session: SessionConfig,
    /// Redial when nothing arrives for this long.
    pub silence_timeout: Duration,
    /// First redial delay; doubles up to `max_backoff`, resets after a netmap arrives.
    pub min_backoff: Duration,
    /// Longest redial delay.
    pub max_backoff: Duration,
    /// The node's id if it registered before: the client then resumes with a map request
    /// instead of registering (see [`ControlSession::resume`]).
    pub node_id: Option<NodeId>,
    /// Without an auth key: ask for a device-code login instead of a browser link.
    pub device_login: bool,
}

impl ClientConfig {
    /// A config with the default silence timeout and backoff of 100 ms to 30 s.
    pub fn new(
        coord_addr: impl Into<String>,
        machine_key: MachinePrivateKey,
        session: SessionConfig,
    ) -> Self {
        Self {
            coord_addr: coord_addr.into(),
            coord_key: None,
            machine_key,
            session,
            silence_timeout: DEFAULT_SILENCE_TIMEOUT,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            node_id: None,
            device_login: false,
        }
    }
}

/// Why the control client stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The coord refused the node; fix the cause (a new auth key, a login) and restart.
    #[error(transparent)]
    Session(SessionError),
}

/// A running control client.
#[derive(Debug)]
pub struct ControlClient {
    netmap: watch::Receiver<Option<Netmap>>,
    reported: watch::Sender<ReportedEndpoints>,
    connected: Arc<AtomicBool>,
    registration: watch::Receiver<RegistrationState>,
    task: JoinHandle<Result<(), ClientError>>,
}

impl ControlClient {
    /// Starts the client on the current tokio runtime.
    pub fn spawn(config: ClientConfig) -> Self {
        let (tx, rx) = watch::channel(None);
        let (reported, reported_rx) = watch::channel(ReportedEndpoints {
            endpoints: config.session.endpoints.clone(),
            home_relay: config.session.home_relay,
        });
        let connected = Arc::new(AtomicBool::new(false));
        let (registration_tx, registration) = watch::channel(RegistrationState::default());
        let task = tokio::spawn(run(
            config,
            tx,
            reported_rx,
            Arc::clone(&connected),
            registration_tx,
        ));
        Self {
            netmap: rx,
            reported,
            connected,
            registration,
            task,
        }
    }

    /// Reports new candidate UDP endpoints and home relay to the coord: at once on the open
    /// connection (a new map request), and on every later connection. Call it whenever the
    /// node's local or public endpoints change; a value equal to the last one sends nothing.
    pub fn update_endpoints(&self, endpoints: Vec<SocketAddr>, home_relay: Option<RegionId>) {
        let new = ReportedEndpoints {
            endpoints,
            home_relay,
        };
        self.reported.send_if_modified(|old| {
            if *old == new {
                false
            } else {
                *old = new;
                true
            }
        });
    }

    /// A receiver of where the registration stands: show the login link or device code
    /// while it is `LoginRequired`/`DeviceCode`, then the outcome.
    pub fn registration(&self) -> watch::Receiver<RegistrationState> {
        self.registration.clone()
    }

    /// A receiver of the latest netmap (`None` until the first one arrives).
    pub fn netmap(&self) -> watch::Receiver<Option<Netmap>> {
        self.netmap.clone()
    }

    /// Whether the client holds a live netmap stream now (a netmap or keepalive arrived on
    /// the current connection). While `false`, the node runs on its last netmap.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether the client stopped (the coord refused the node for good); [`Self::join`]
    /// then returns why at once.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the client and closes its connection.
    pub fn shutdown(self) {
        self.task.abort();
    }

    /// Waits for the client to stop by itself (only on a final refusal).
    pub async fn join(self) -> Result<(), ClientError> {
        match self.task.await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }
}

/// What the node reports about where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReportedEndpoints {
    endpoints: Vec<SocketAddr>,
    home_relay: Option<RegionId>,
}

enum Ended {
    Retry(String),
    Fatal(SessionError),
}

async fn run(
    mut config: ClientConfig,
    netmap: watch::Sender<Option<Netmap>>,
    mut reported: watch::Receiver<ReportedEndpoints>,
    live: Arc<AtomicBool>,
    registration: watch::Sender<RegistrationState>,
) -> Result<(), ClientError> {
    let mut session = match config.node_id {
        Some(id) => ControlSession::resume(config.session.clone(), id),
        None => ControlSession::new(config.session.clone()),
    };
    session.set_device_login(config.device_login);
    let mut backoff = config.min_backoff;
    loop {
        let mut got_netmap = false;
        let latest = reported.borrow_and_update().clone();
        // Not registered yet: nothing to send; the next connection's map request carries it.
        let _ = session.update_endpoints(latest.endpoints, latest.home_relay);
        let connected = connect_once(
            &mut config,
            &mut session,
            &netmap,
            &mut reported,
            &live,
            &registration,
            &mut got_netmap,
        );
        let ended = connected.await;
        live.store(false, Ordering::Relaxed);
        match ended {
            Ended::Fatal(err) => {
                tracing::error!(%err, "control client stopped");
                return Err(ClientError::Session(err));
            }
            Ended::Retry(why) => {
                if got_netmap {
                    backoff = config.min_backoff;
                }
                tracing::info!(reason = %why, retry_in = ?backoff, "control connection lost; redialling");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

async fn connect_once(
    config: &mut ClientConfig,
    session: &mut ControlSession,
    netmap: &watch::Sender<Option<Netmap>>,
    reported: &mut watch::Receiver<ReportedEndpoints>,
    live: &AtomicBool,
    registration: &watch::Sender<RegistrationState>,
    got_netmap: &mut bool,
) -> Ended {
    let coord_key = match config.coord_key {
        Some(key) => key,
        None => match fetch_coord_key(&config.coord_addr).await {
            Ok(key) => {
                tracing::info!(coord_key = %key, "pinned the coord key on first contact");
                config.coord_key = Some(key);
                key
            }
            Err(err) => return Ended::Retry(err.to_string()),
        },
    };
    let mut conn = match dial(&config.coord_addr, &config.machine_key, &coord_key).await {
        Ok(conn) => conn,
        Err(err) => return Ended::Retry(err.to_string()),
    };
    for message in session.on_connected() {
        if let Err(err) = conn.send(&message).await {
            return Ended::Retry(err.to_string());
        }
    }
    let mut reported_open = true;
    loop {
        // `recv` is cancel-safe, so an endpoint update may interrupt it.
        let received = tokio::select! {
            received = tokio::time::timeout(config.silence_timeout, conn.recv()) => received,
            changed = reported.changed(), if reported_open => {
                if changed.is_err() {
                    reported_open = false;
                    continue;
                }
                let latest = reported.borrow_and_update().clone();
                if let Some(request) = session.update_endpoints(latest.endpoints, latest.home_relay)
                    && let Err(err) = conn.send(&request).await
                {
                    return Ended::Retry(err.to_string());
                }
                continue;
            }
        };
        let message = match received {
            Err(_) => return Ended::Retry(format!("silent for {:?}", config.silence_timeout)),
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => return Ended::Retry("coord closed the connection".into()),
            Ok(Err(err)) => return Ended::Retry(describe(&err)),
        };
        if matches!(message, ControlMessage::MapResponse(_)) {
            live.store(true, Ordering::Relaxed);
        }
        let before = session.netmap_version();
        let handled = session.handle_message(message);
        publish_registration(registration, session);
        let replies = match handled {
            Ok(replies) => replies,
            Err(err) if err.is_retryable() => return Ended::Retry(err.to_string()),
            Err(err) => return Ended::Fatal(err),
        };
        if session.netmap_version() != before {
            *got_netmap = true;
            netmap.send_replace(session.netmap().cloned());
        }
        for reply in replies {
            if let Err(err) = conn.send(&reply).await {
                return Ended::Retry(err.to_string());
            }
        }
    }
}

fn publish_registration(registration: &watch::Sender<RegistrationState>, session: &ControlSession) {
    registration.send_if_modified(|state| {
        let changed = state != session.registration();
        if changed {
            *state = session.registration().clone();
        }
        changed
    });
}

fn describe(err: &ConnectionError) -> String {
    err.to_string()
}

//! The tokio shell of the control client: dial, drive a [`ControlSession`], redial.
//!
//! [`ControlClient::spawn`] runs until the coord refuses the node for good (or the handle
//! is aborted). It publishes the latest netmap through a `tokio::sync::watch`, redials with
//! exponential backoff when the connection drops, and treats a stream that stays silent
//! longer than [`ClientConfig::silence_timeout`] as dead (the coord sends keepalives well
//! within it).
//!
//! [`ControlClient::funnel`] asks the coord to open, close or list this node's funnels on
//! the open connection and waits for the answer; [`ControlClient::funnel_log`] reads the
//! edge decisions of the node's funnels, and [`ControlClient::report_edge_decisions`]
//! (ingress nodes) reports the edge's decisions, the same way.

use std::collections::HashMap;
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use postern_proto::control::ControlMessage;

use postern_proto::funnel::{
    EdgeDecision, EdgeDecisionAck, EdgeDecisionBatch, FunnelChange, FunnelInfo, FunnelLogQuery,
    FunnelLogRequest, FunnelRefusal, FunnelRequest,
};
use postern_proto::netmap::{Netmap, RegionId};
use postern_proto::{MachinePrivateKey, MachinePublicKey, NodeId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::connection::{ConnectionError, dial, fetch_coord_key};
use super::session::{ControlSession, RegistrationState, SessionConfig, SessionError};

/// Default silence after which the client redials: 120 s.
pub const DEFAULT_SILENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`ControlClient::funnel`] waits for the coord's answer: 30 s.
pub const FUNNEL_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How many funnel requests may wait to be sent at once.
const FUNNEL_QUEUE: usize = 16;

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

/// Why the control client stopped, or why a [`ControlClient::funnel`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The coord refused the node; fix the cause (a new auth key, a login) and restart.
    #[error(transparent)]
    Session(SessionError),
    /// The node has not registered (or not finished registering) with the coord.
    #[error("this node is not registered with the coordination server yet; log in first")]
    NotRegistered,
    /// No netmap stream is open now (the client redials by itself).
    #[error(
        "not connected to the coordination server right now; it is redialling, try again shortly"
    )]
    NotConnected,
    /// The connection dropped before the coord answered. The change may or may not have
    /// been applied: list the funnels to see.
    #[error(
        "the connection to the coordination server dropped before it answered; try again (list the funnels to see whether the change was applied)"
    )]
    ConnectionLost,
    /// The coord did not answer in time.
    #[error("the coordination server did not answer within {0:?}; try again")]
    Timeout(Duration),
    /// The client has stopped (the coord refused the node, or it was shut down).
    #[error("the control client has stopped; restart the node")]
    Stopped,
    /// The coord refused the funnel change; `code` is one of the codes listed on
    /// [`FunnelRefusal`], `message` says what is missing and what to do.
    #[error("the coordination server refused: {} ({})", .0.message, .0.code)]
    FunnelRefused(FunnelRefusal),
}

/// A running control client.
#[derive(Debug)]
pub struct ControlClient {
    netmap: watch::Receiver<Option<Netmap>>,
    reported: watch::Sender<ReportedEndpoints>,
    connected: Arc<AtomicBool>,
    registration: watch::Receiver<RegistrationState>,
    funnel_requests: mpsc::Sender<PendingRequest>,
    task: JoinHandle<Result<(), ClientError>>,
}

/// A request waiting to be sent on the netmap stream's connection, and where its answer
/// goes.
#[derive(Debug)]
enum PendingRequest {
    /// A funnel change.
    Funnel {
        change: FunnelChange,
        answer: oneshot::Sender<Result<Vec<FunnelInfo>, ClientError>>,
    },
    /// A read of the edge log.
    Log {
        query: FunnelLogQuery,
        answer: oneshot::Sender<Result<Vec<EdgeDecision>, ClientError>>,
    },
    /// A batch of edge decisions (ingress nodes).
    Edge {
        decisions: Vec<EdgeDecision>,
        answer: oneshot::Sender<Result<EdgeDecisionAck, ClientError>>,
    },
}

/// Where the answer to a request sent on the current connection goes.
#[derive(Debug)]
enum Waiting {
    Funnel(oneshot::Sender<Result<Vec<FunnelInfo>, ClientError>>),
    Log(oneshot::Sender<Result<Vec<EdgeDecision>, ClientError>>),
    Edge(oneshot::Sender<Result<EdgeDecisionAck, ClientError>>),
}

impl PendingRequest {
    /// Answers the caller with `err` instead of sending.
    fn fail(self, err: ClientError) {
        match self {
            Self::Funnel { answer, .. } => {
                let _ = answer.send(Err(err));
            }
            Self::Log { answer, .. } => {
                let _ = answer.send(Err(err));
            }
            Self::Edge { answer, .. } => {
                let _ = answer.send(Err(err));
            }
        }
    }

    /// The message to send with `id`, and where its answer goes.
    fn into_message(self, id: u64) -> (ControlMessage, Waiting) {
        match self {
            Self::Funnel { change, answer } => (
                ControlMessage::FunnelRequest(FunnelRequest {
                    request_id: id,
                    change,
                }),
                Waiting::Funnel(answer),
            ),
            Self::Log { query, answer } => (
                ControlMessage::FunnelLogRequest(FunnelLogRequest {
                    request_id: id,
                    query,
                }),
                Waiting::Log(answer),
            ),
            Self::Edge { decisions, answer } => (
                ControlMessage::EdgeDecisions(EdgeDecisionBatch {
                    batch_id: id,
                    decisions,
                }),
                Waiting::Edge(answer),
            ),
        }
    }
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
        let (funnel_requests, funnel_rx) = mpsc::channel(FUNNEL_QUEUE);
        let task = tokio::spawn(run(
            config,
            tx,
            reported_rx,
            Arc::clone(&connected),
            registration_tx,
            funnel_rx,
        ));
        Self {
            netmap: rx,
            reported,
            connected,
            registration,
            funnel_requests,
            task,
        }
    }

    /// Asks the coord to open, close or list this node's funnels, and waits (at most
    /// [`FUNNEL_ANSWER_TIMEOUT`]) for its answer:
    ///
    /// - `FunnelChange::Open(spec)`: the opened funnel (one [`FunnelInfo`] with its stable
    ///   hostname and URL). Opening a port that is open already replaces its settings.
    /// - `FunnelChange::Close { port }`: an empty list.
    /// - `FunnelChange::List`: the node's open funnels, by port.
    ///
    /// Call it while the node is registered and connected (any time after the first
    /// netmap; the request rides on the netmap stream). Errors:
    /// [`ClientError::FunnelRefused`] with the coord's code and message (no grant, a gate
    /// the policy requires, a TTL over the policy's maxTTL, a name taken, no such funnel…);
    /// [`ClientError::NotRegistered`] before registration; [`ClientError::NotConnected`]
    /// while redialling; [`ClientError::ConnectionLost`] if the connection drops before the
    /// answer; [`ClientError::Timeout`]; [`ClientError::Stopped`] once the client stopped.
    /// Cancel-safe: dropping the future abandons the answer (the change may still apply).
    pub async fn funnel(&self, change: FunnelChange) -> Result<Vec<FunnelInfo>, ClientError> {
        let (answer, answered) = oneshot::channel();
        self.ask(PendingRequest::Funnel { change, answer }, answered)
            .await
    }

    /// Asks the coord for the edge decisions of this node's funnels that match `query`
    /// (newest first) and waits at most [`FUNNEL_ANSWER_TIMEOUT`] for them. Errors as
    /// [`Self::funnel`]; a refusal (`not_found` for a funnel name this node does not hold)
    /// is [`ClientError::FunnelRefused`].
    pub async fn funnel_log(
        &self,
        query: FunnelLogQuery,
    ) -> Result<Vec<EdgeDecision>, ClientError> {
        let (answer, answered) = oneshot::channel();
        self.ask(PendingRequest::Log { query, answer }, answered)
            .await
    }

    /// Ingress nodes: reports the edge's `decisions` (at most
    /// [`MAX_EDGE_BATCH`](postern_proto::funnel::MAX_EDGE_BATCH)) and waits at most
    /// [`FUNNEL_ANSWER_TIMEOUT`] for the coord's acknowledgement, which says how many it
    /// stored (or why it refused the batch). Errors as [`Self::funnel`]; after
    /// [`ClientError::ConnectionLost`] or [`ClientError::Timeout`] the batch may or may
    /// not have been stored.
    pub async fn report_edge_decisions(
        &self,
        decisions: Vec<EdgeDecision>,
    ) -> Result<EdgeDecisionAck, ClientError> {
        let (answer, answered) = oneshot::channel();
        self.ask(PendingRequest::Edge { decisions, answer }, answered)
            .await
    }

    async fn ask<T>(
        &self,
        request: PendingRequest,
        answered: oneshot::Receiver<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        if self.task.is_finished() {
            return Err(ClientError::Stopped);
        }
        if !matches!(
            *self.registration.borrow(),
            RegistrationState::Authorized { .. }
        ) && self.netmap.borrow().is_none()
        {
            return Err(ClientError::NotRegistered);
        }
        if !self.is_connected() {
            return Err(ClientError::NotConnected);
        }
        let asked = async {
            self.funnel_requests
                .send(request)
                .await
                .map_err(|_| ClientError::Stopped)?;
            answered.await.map_err(|_| ClientError::ConnectionLost)?
        };
        tokio::time::timeout(FUNNEL_ANSWER_TIMEOUT, asked)
            .await
            .map_err(|_| ClientError::Timeout(FUNNEL_ANSWER_TIMEOUT))?
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

/// Funnel requests waiting to be sent, and the last request id used (ids are unique for
/// the life of the client).
#[derive(Debug)]
struct FunnelQueue {
    requests: mpsc::Receiver<PendingRequest>,
    last_id: u64,
}

impl FunnelQueue {
    fn next_id(&mut self) -> u64 {
        self.last_id = self.last_id.wrapping_add(1);
        self.last_id
    }
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
    funnel_requests: mpsc::Receiver<PendingRequest>,
) -> Result<(), ClientError> {
    let mut session = match config.node_id {
        Some(id) => ControlSession::resume(config.session.clone(), id),
        None => ControlSession::new(config.session.clone()),
    };
    session.set_device_login(config.device_login);
    let mut backoff = config.min_backoff;
    let mut funnels = FunnelQueue {
        requests: funnel_requests,
        last_id: 0,
    };
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
            &mut funnels,
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

// The shell's state, lent by parts so each borrow stays narrow.
#[allow(clippy::too_many_arguments)]
async fn connect_once(
    config: &mut ClientConfig,
    session: &mut ControlSession,
    netmap: &watch::Sender<Option<Netmap>>,
    reported: &mut watch::Receiver<ReportedEndpoints>,
    live: &AtomicBool,
    registration: &watch::Sender<RegistrationState>,
    got_netmap: &mut bool,
    funnels: &mut FunnelQueue,
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
    let mut funnels_open = true;
    // Funnel requests sent on this connection, waiting for their answers; dropped (so the
    // callers learn the connection was lost) when this connection ends.
    let mut waiting: HashMap<u64, Waiting> = HashMap::new();
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
            pending = funnels.requests.recv(), if funnels_open => {
                let Some(pending) = pending else {
                    funnels_open = false;
                    continue;
                };
                if !live.load(Ordering::Relaxed) {
                    pending.fail(ClientError::NotConnected);
                    continue;
                }
                let request_id = funnels.next_id();
                let (request, answer) = pending.into_message(request_id);
                if let Err(err) = conn.send(&request).await {
                    // Dropping `answer` tells the caller the connection was lost.
                    drop(answer);
                    return Ended::Retry(err.to_string());
                }
                waiting.insert(request_id, answer);
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
        match message {
            ControlMessage::FunnelResponse(response) => {
                match waiting.remove(&response.request_id) {
                    Some(Waiting::Funnel(answer)) => {
                        let _ = answer.send(response.result.map_err(ClientError::FunnelRefused));
                    }
                    _ => tracing::debug!(
                        request_id = response.request_id,
                        "a funnel answer nobody waits for"
                    ),
                }
                continue;
            }
            ControlMessage::FunnelLogResponse(response) => {
                match waiting.remove(&response.request_id) {
                    Some(Waiting::Log(answer)) => {
                        let _ = answer.send(response.result.map_err(ClientError::FunnelRefused));
                    }
                    _ => tracing::debug!(
                        request_id = response.request_id,
                        "a funnel log answer nobody waits for"
                    ),
                }
                continue;
            }
            ControlMessage::EdgeDecisionsAck(ack) => {
                match waiting.remove(&ack.batch_id) {
                    Some(Waiting::Edge(answer)) => {
                        let _ = answer.send(Ok(ack));
                    }
                    _ => tracing::debug!(
                        batch_id = ack.batch_id,
                        "an edge decision acknowledgement nobody waits for"
                    ),
                }
                continue;
            }
            _ => {}
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

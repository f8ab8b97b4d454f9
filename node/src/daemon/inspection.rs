//! Request inspection in the daemon (`postern up --inspect ADDR`): a capture store, the
//! observer the serve runtime reports to, and the inspection UI and JSON API on `ADDR`
//! (loopback by default; see [`crate::inspect`]).
//!
//! Funnelled requests are always captured; requests from tailnet peers to `postern serve`
//! ports only with `--inspect-serves`. A replay goes to the local origin that serves the
//! original's port and path now; without one (an old capture, a port no longer served),
//! to the origin of the first funnelled HTTP port, else of the first served HTTP port.
//!
//! Requests the edge refused never reach the node, so they cannot be captured: while the
//! node has funnels, the inspector keeps one request for the edge's new denials of this
//! node's funnels (`postern funnel log --denied`) waiting at the coord, which answers as
//! soon as the ingress reports one (a long poll, [`EDGE_DENIAL_WAIT_MS`]), and records each
//! as a denied entry (kind `denied`, with the gate and reason; no headers or body, not
//! replayable). A coord that cannot hold requests answers at once; the inspector then asks
//! every [`EDGE_DENIAL_POLL`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, UNIX_EPOCH};

use postern_proto::funnel::{EdgeDecision, FunnelLogQuery, MAX_FUNNEL_LOG_WAIT_MS};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::serves::{EntryTarget, FunnelCallError, ServeManager};
use crate::inspect::api::{self, ReplayerSource};
use crate::inspect::{
    CaptureConfig, CaptureStore, CapturingProxy, DeniedDelivery, ExchangeRecorder, rfc3339,
};
use crate::serve::{Exchange, ExchangeObserver, InspectObserver, RequestOrigin};

/// How often the inspector asks the coord for new edge denials when the coord answers at
/// once (one that predates waiting requests), or after a failed request: 2 s. Also how
/// often a node without funnels looks whether it has some now.
pub const EDGE_DENIAL_POLL: Duration = Duration::from_secs(2);

/// How long each request for new edge denials may wait at the coord: the most a coord
/// holds one ([`MAX_FUNNEL_LOG_WAIT_MS`], 25 s).
pub const EDGE_DENIAL_WAIT_MS: u32 = MAX_FUNNEL_LOG_WAIT_MS;

/// The most edge denials one poll fetches.
const EDGE_DENIAL_BATCH: u32 = 200;

/// Why inspection could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectionError {
    /// The UI's address could not be bound.
    #[error(
        "cannot listen for request inspection on {addr}: {source}; pick another with `--inspect ADDR` or turn it off with `--inspect off`"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The persisted captures could not be read or written.
    #[error("{0}; remove the file or start without --inspect-persist")]
    Persist(#[from] crate::inspect::CaptureError),
}

/// A running inspector: the store and the UI's listener.
#[derive(Debug)]
pub struct Inspection {
    store: Arc<CaptureStore>,
    addr: SocketAddr,
    observer: Arc<FilteringObserver>,
    serves: Arc<OnceLock<Weak<ServeManager>>>,
    stop: CancellationToken,
}

impl Inspection {
    /// Binds `addr` and serves the UI and API there until `stop`; captures serve exchanges
    /// from tailnet peers too when `capture_serves`; reloads and appends to
    /// `config.persist_path` when it is set. Call [`Self::attach`] once the serve
    /// manager runs, so replays find the local service.
    ///
    /// Fails if `addr` cannot be bound, or the persisted captures cannot be read or
    /// appended to.
    pub async fn start(
        addr: SocketAddr,
        capture_serves: bool,
        config: CaptureConfig,
        stop: CancellationToken,
    ) -> Result<Self, InspectionError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| InspectionError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| InspectionError::Bind { addr, source })?;
        // Without a `persist_path` this is an in-memory store.
        let store = CaptureStore::open(config)?;
        let recorder: Arc<dyn ExchangeRecorder> = store.clone();
        let observer = Arc::new(FilteringObserver {
            inner: InspectObserver::new(Arc::clone(&recorder)),
            capture_serves,
        });
        let serves: Arc<OnceLock<Weak<ServeManager>>> = Arc::new(OnceLock::new());
        let source: ReplayerSource = {
            let serves = Arc::clone(&serves);
            let recorder = Arc::clone(&recorder);
            Arc::new(move |original| {
                let manager = serves.get()?.upgrade()?;
                let origin = replay_origin(&manager, original)?;
                CapturingProxy::new(&origin, Arc::clone(&recorder)).ok()
            })
        };
        let router = api::router_with_replayer(Arc::clone(&store), source, stop.clone());
        let serve_stop = stop.clone();
        tokio::spawn(async move {
            if let Err(err) = api::serve(listener, router, serve_stop).await {
                tracing::warn!(%err, "request inspection stopped");
            }
        });
        tracing::info!(addr = %bound, capture_serves, "request inspection UI");
        Ok(Self {
            store,
            addr: bound,
            observer,
            serves,
            stop,
        })
    }

    /// The address the UI listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The capture store.
    pub fn store(&self) -> &Arc<CaptureStore> {
        &self.store
    }

    /// The observer to hand to the serve runtime.
    pub fn observer(&self) -> Arc<dyn ExchangeObserver> {
        self.observer.clone()
    }

    /// Lets replays find the local services of `serves`, and starts pulling the edge's
    /// denials of its funnels from the coord into the store (see the [module docs](self)).
    /// Call once, inside the tokio runtime; later calls do nothing.
    pub fn attach(&self, serves: &Arc<ServeManager>) {
        if self.serves.set(Arc::downgrade(serves)).is_ok() {
            tokio::spawn(pull_edge_denials(
                Arc::clone(&self.store),
                Arc::downgrade(serves),
                self.stop.clone(),
            ));
        }
    }
}

/// Keeps a request for new edge denials waiting at the coord while `serves` has funnels,
/// and records what comes back in `store`, until `stop` or the serve manager goes (see the
/// [module docs](self)).
async fn pull_edge_denials(
    store: Arc<CaptureStore>,
    serves: Weak<ServeManager>,
    stop: CancellationToken,
) {
    // A persisted store holds the denials pulled before a restart: resume after them.
    let mut last_id: Option<u64> = store.newest_edge_id();
    loop {
        let Some(manager) = serves.upgrade() else {
            return;
        };
        if !manager.has_funnels() {
            drop(manager);
            if paused(&stop, EDGE_DENIAL_POLL).await {
                return;
            }
            continue;
        }
        let query = FunnelLogQuery {
            after_id: last_id,
            limit: Some(EDGE_DENIAL_BATCH),
            denied_only: true,
            wait_ms: Some(EDGE_DENIAL_WAIT_MS),
            ..FunnelLogQuery::default()
        };
        let asked = tokio::time::Instant::now();
        let pulled = tokio::select! {
            () = stop.cancelled() => return,
            pulled = manager.funnel_log(query) => pulled,
        };
        drop(manager);
        let pause = match pulled {
            Ok(decisions) if decisions.is_empty() => {
                // Empty at once: a coord that does not hold requests. Ask as a poll would.
                EDGE_DENIAL_POLL.saturating_sub(asked.elapsed())
            }
            Ok(decisions) => {
                // Newest first from the coord; record oldest first.
                for decision in decisions.iter().rev() {
                    store.record_denied(denied_at_edge(decision));
                }
                let newest = decisions.iter().map(|d| d.id).max().unwrap_or(0);
                last_id = Some(last_id.unwrap_or(0).max(newest));
                Duration::ZERO
            }
            Err(FunnelCallError::Unsupported) => return,
            Err(err) => {
                tracing::debug!(%err, "cannot fetch the edge's denials yet");
                EDGE_DENIAL_POLL
            }
        };
        if !pause.is_zero() && paused(&stop, pause).await {
            return;
        }
    }
}

/// Sleeps `pause`; `true` when `stop` came first.
async fn paused(stop: &CancellationToken, pause: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(pause) => false,
    }
}

/// The inspection entry of a denial the edge reported.
pub fn denied_at_edge(decision: &EdgeDecision) -> DeniedDelivery {
    let millis = u64::try_from(decision.at_ms).unwrap_or(0);
    DeniedDelivery {
        id: 0,
        time: rfc3339(UNIX_EPOCH + Duration::from_millis(millis)),
        funnel: Some(decision.funnel.clone()),
        method: decision.method.clone(),
        path: decision.path.clone(),
        gate: decision.gate.clone(),
        reason: decision
            .reason
            .clone()
            .unwrap_or_else(|| "denied".to_owned()),
        status: decision.status,
        edge_id: Some(decision.id),
    }
}

/// Records funnel exchanges always, serve exchanges only when asked to.
#[derive(Debug)]
struct FilteringObserver {
    inner: InspectObserver,
    capture_serves: bool,
}

impl ExchangeObserver for FilteringObserver {
    fn capture_limit(&self) -> Option<usize> {
        self.inner.capture_limit()
    }

    fn record(&self, exchange: Exchange) {
        let wanted = match exchange.origin {
            RequestOrigin::Funnel { .. } => true,
            RequestOrigin::Tailnet { .. } => self.capture_serves,
        };
        if wanted {
            self.inner.record(exchange);
        }
    }
}

/// The origin a replay of `original` goes to: the HTTP entry serving the original's port
/// whose mount path is the longest prefix of its path; else (and for `None`) the first
/// funnelled HTTP entry's, else the first HTTP entry's.
fn replay_origin(
    manager: &ServeManager,
    original: Option<&crate::inspect::Exchange>,
) -> Option<String> {
    let status = manager.status();
    let same_service = original.and_then(|exchange| {
        let port = exchange.port?;
        let path = exchange.request.path.as_str();
        status
            .serves
            .iter()
            .filter(|entry| entry.port == port)
            .filter_map(|entry| match &entry.target {
                EntryTarget::Http {
                    path: mount,
                    origin,
                } if mount.strip(path).is_some() => {
                    Some((mount.as_str().len(), origin.to_string()))
                }
                _ => None,
            })
            .max_by_key(|(mount_len, _)| *mount_len)
            .map(|(_, origin)| origin)
    });
    if same_service.is_some() {
        return same_service;
    }
    let http = |funnel_only: bool| {
        status.serves.iter().find_map(|entry| match &entry.target {
            EntryTarget::Http { origin, .. } if entry.funnel || !funnel_only => {
                Some(origin.to_string())
            }
            _ => None,
        })
    };
    http(true).or_else(|| http(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::EntryFilter;

    #[test]
    fn an_edge_denial_becomes_a_denied_entry_with_its_reason_and_no_body() {
        let decision = EdgeDecision {
            id: 42,
            at_ms: 1_795_939_200_250,
            funnel: "demo.funnel.localhost".into(),
            client: "127.0.0.1:5000".into(),
            method: "POST".into(),
            path: "/webhook".into(),
            gate: Some("webhook:github".into()),
            result: "deny".into(),
            reason: Some("signature_mismatch".into()),
            status: 401,
            bytes: 18,
            duration_ms: 1,
        };
        let denied = denied_at_edge(&decision);
        assert_eq!(denied.time, "2026-11-29T08:00:00.250Z");
        assert_eq!(denied.reason, "signature_mismatch");
        assert_eq!(denied.gate.as_deref(), Some("webhook:github"));
        assert_eq!(denied.funnel.as_deref(), Some("demo.funnel.localhost"));
        assert_eq!(denied.edge_id, Some(42));
        let store = CaptureStore::in_memory(CaptureConfig::default());
        assert_eq!(store.newest_edge_id(), None);
        let id = store.record_denied(denied);
        assert_eq!(store.newest_edge_id(), Some(42));
        let listed = store.list(&EntryFilter {
            kind: Some("denied".into()),
            ..EntryFilter::default()
        });
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, id);
        assert_eq!(listed[0].reason.as_deref(), Some("signature_mismatch"));
        assert_eq!(listed[0].request_size, 0);
        let without_reason = EdgeDecision {
            reason: None,
            ..decision
        };
        assert_eq!(denied_at_edge(&without_reason).reason, "denied");
    }
}

//! Request inspection in the daemon (`postern up --inspect ADDR`): a capture store, the
//! observer the serve runtime reports to, and the inspection UI and JSON API on `ADDR`
//! (loopback by default; see [`crate::inspect`]).
//!
//! Funnelled requests are always captured; requests from tailnet peers to `postern serve`
//! ports only with `--inspect-serves`. A replay goes to the local origin that serves the
//! original's port and path now; without one (an old capture, a port no longer served),
//! to the origin of the first funnelled HTTP port, else of the first served HTTP port.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::serves::{EntryTarget, ServeManager};
use crate::inspect::api::{self, ReplayerSource};
use crate::inspect::{CaptureConfig, CaptureStore, CapturingProxy, ExchangeRecorder};
use crate::serve::{Exchange, ExchangeObserver, InspectObserver, RequestOrigin};

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
        let store = if config.persist_path.is_some() {
            CaptureStore::open(config)?
        } else {
            CaptureStore::in_memory(config)
        };
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
        tokio::spawn(async move {
            if let Err(err) = api::serve(listener, router, stop).await {
                tracing::warn!(%err, "request inspection stopped");
            }
        });
        tracing::info!(addr = %bound, capture_serves, "request inspection UI");
        Ok(Self {
            store,
            addr: bound,
            observer,
            serves,
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

    /// Lets replays find the local services of `serves`.
    pub fn attach(&self, serves: &Arc<ServeManager>) {
        let _ = self.serves.set(Arc::downgrade(serves));
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

//! The daemon's serves and funnels: the single owner of what this node shares.
//!
//! `postern serve` and `postern funnel` ask the running daemon through the local API
//! ([`super::api`]); [`ServeManager`] holds the answer:
//!
//! - a flat list of [`ServeEntry`]s (one per tailnet port, or per port and path for HTTP
//!   routes), from which it builds the [`ServeConfig`] the [`ServeRuntime`] on the node's
//!   netstack follows;
//! - the node's funnels ([`FunnelEntry`]), opened by asking the coordination server through
//!   a [`FunnelControl`] and served by the funnel acceptor (a funnelled entry);
//! - who owns each entry: the state directory (`--bg`: saved in [`SERVES_FILE`], mode
//!   `0600`, restored by [`ServeManager::start`] after a restart, even after `kill -9`), or
//!   one foreground CLI session ([`Session`]), whose entries are removed when the session
//!   ends (the CLI exits, is killed, or its API connection drops).
//!
//! Funnel specs carry gate secrets (webhook secrets); they are kept in [`SERVES_FILE`] for
//! `--bg` funnels, which is why the file is private, and never shown by status.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use postern_proto::funnel::{
    EdgeDecision, FunnelChange, FunnelInfo, FunnelLogQuery, FunnelProtocol, FunnelRefusal,
    FunnelSpec, HostCertificate,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::NodeHandle;
use crate::control::{ClientError, ControlClient};
use crate::serve::{
    self, ExchangeObserver, OriginUrl, RoutePath, ServeConfig, ServeConfigError, ServeError,
    ServeRuntime, ServeTable, Service,
};

/// The file in the state directory holding `--bg` serves and funnels.
pub const SERVES_FILE: &str = "serves.json";

/// How long a restored funnel waits between attempts to reopen it with the coord.
pub const FUNNEL_RESTORE_RETRY: Duration = Duration::from_secs(5);

/// One served tailnet port (or one path of an HTTP port), as `postern serve` asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeEntry {
    /// The node's tailnet TCP port.
    pub port: u16,
    /// Where its connections go.
    #[serde(flatten)]
    pub target: EntryTarget,
    /// Whether the ingress may funnel public traffic to it (set by `postern funnel`).
    #[serde(default)]
    pub funnel: bool,
    /// Whether it is kept across restarts (`--bg`); otherwise it belongs to the foreground
    /// CLI that asked for it.
    #[serde(default)]
    pub background: bool,
}

/// Where a [`ServeEntry`]'s connections go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryTarget {
    /// An HTTP reverse proxy with identity headers: requests under `path` go to `origin`.
    Http {
        /// The mount point (`/`, `/api`).
        path: RoutePath,
        /// The local origin.
        origin: OriginUrl,
    },
    /// A raw TCP pipe to a local address.
    Tcp {
        /// The local address.
        target: SocketAddr,
    },
}

/// One funnel of this node: what was asked (`spec`, with gate secrets, never shown) and
/// what the coord answered.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelEntry {
    /// What `postern funnel` asked for.
    pub spec: FunnelSpec,
    /// The coord's answer (public URL, hostname); `None` while a restored funnel waits for
    /// the coord.
    #[serde(default)]
    pub info: Option<FunnelInfo>,
    /// Whether it is kept across restarts (`--bg`).
    #[serde(default)]
    pub background: bool,
}

impl FunnelEntry {
    /// When the coord said the funnel closes by itself (Unix seconds).
    pub fn expires_at(&self) -> Option<i64> {
        self.info.as_ref()?.expires_at.map(|t| t.as_secs())
    }
}

impl fmt::Debug for FunnelEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The spec's secrets are redacted by GateSecret's own Debug.
        f.debug_struct("FunnelEntry")
            .field("spec", &self.spec)
            .field("info", &self.info)
            .field("background", &self.background)
            .finish()
    }
}

/// What `postern serve status --json` and `postern funnel status --json` print.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeStatus {
    /// Every served port (and path), by port.
    pub serves: Vec<ServeEntry>,
    /// Every funnel, by port.
    pub funnels: Vec<FunnelStatus>,
}

/// One funnel as status shows it (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelStatus {
    /// The local port.
    pub port: u16,
    /// The label (`--name`), if one was asked for.
    pub name: Option<String>,
    /// `http`, `tcp` or `tls_passthrough`.
    pub protocol: FunnelProtocol,
    /// The public URL, once the coord answered.
    pub url: Option<String>,
    /// The public hostname, once the coord answered.
    pub hostname: Option<String>,
    /// When the funnel closes by itself (Unix seconds).
    pub expires_at: Option<i64>,
    /// The gate kinds of its chain (`webhook`, `login`, …).
    pub gates: Vec<String>,
    /// Whether it is kept across restarts.
    pub background: bool,
}

/// A request to serve, from `postern serve` (the body of `POST /v0/serve`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeRequest {
    /// What to serve; `funnel` is ignored (funnels come from `postern funnel`).
    pub entry: ServeEntry,
}

/// A request to open a funnel, from `postern funnel` (the body of `POST /v0/funnel`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelRequestBody {
    /// What to ask the coord for.
    pub spec: FunnelSpec,
    /// Keep it across restarts.
    #[serde(default)]
    pub background: bool,
}

impl fmt::Debug for FunnelRequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunnelRequestBody")
            .field("spec", &self.spec)
            .field("background", &self.background)
            .finish()
    }
}

/// Why a funnel change through the coord failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FunnelCallError {
    /// This build's control client (or the coord) has no funnel support.
    #[error(
        "the coordination server does not support funnels yet (this node cannot ask it for one); serve on the tailnet with `postern serve` meanwhile"
    )]
    Unsupported,
    /// The coord refused; its message names what is missing (a grant, a gate).
    #[error("the coordination server refused the funnel: {} ({})", .0.message, .0.code)]
    Refused(FunnelRefusal),
    /// The coord could not be asked now (not connected, no answer in time).
    #[error(
        "cannot reach the coord to change the funnel: {0}; try again when `postern status` shows the coord connected"
    )]
    Unavailable(String),
}

/// The coord's side of funnels, as the daemon uses it: one call per [`FunnelChange`],
/// answered with the node's funnels after the change. [`ControlFunnels`] is the running
/// node's; [`UnsupportedFunnels`] answers every call with [`FunnelCallError::Unsupported`].
pub trait FunnelControl: Send + Sync + fmt::Debug {
    /// Sends `change` to the coord and waits for its answer.
    fn change(
        &self,
        change: FunnelChange,
    ) -> BoxFuture<'_, Result<Vec<FunnelInfo>, FunnelCallError>>;

    /// Asks the coord for the edge decisions of this node's funnels matching `query`,
    /// newest first. The default answers [`FunnelCallError::Unsupported`].
    fn log(
        &self,
        query: FunnelLogQuery,
    ) -> BoxFuture<'_, Result<Vec<EdgeDecision>, FunnelCallError>> {
        let _ = query;
        Box::pin(async { Err(FunnelCallError::Unsupported) })
    }
}

/// The [`FunnelControl`] of a running node: funnel requests on its control client's
/// netmap stream ([`ControlClient::funnel`](crate::control::ControlClient::funnel)).
#[derive(Debug, Clone)]
pub struct ControlFunnels {
    control: Weak<ControlClient>,
}

impl ControlFunnels {
    /// The funnel control of `node`.
    pub fn new(node: &NodeHandle) -> Self {
        Self {
            control: node.shared.control.clone(),
        }
    }

    /// Ingress nodes: gets (`GetCertificate`) or stores (`PutCertificate`) a funnel
    /// hostname's certificate at the coord; see
    /// [`ControlClient::certificate`](crate::control::ControlClient::certificate).
    pub async fn certificate(
        &self,
        change: FunnelChange,
    ) -> Result<Option<HostCertificate>, FunnelCallError> {
        let control = self
            .control
            .upgrade()
            .ok_or_else(|| FunnelCallError::Unavailable("the node is stopping".into()))?;
        control.certificate(change).await.map_err(|err| match err {
            ClientError::FunnelRefused(refusal) => FunnelCallError::Refused(refusal),
            other => FunnelCallError::Unavailable(other.to_string()),
        })
    }
}

impl FunnelControl for ControlFunnels {
    fn change(
        &self,
        change: FunnelChange,
    ) -> BoxFuture<'_, Result<Vec<FunnelInfo>, FunnelCallError>> {
        Box::pin(async move {
            let control = self
                .control
                .upgrade()
                .ok_or_else(|| FunnelCallError::Unavailable("the node is stopping".into()))?;
            control.funnel(change).await.map_err(call_error)
        })
    }

    fn log(
        &self,
        query: FunnelLogQuery,
    ) -> BoxFuture<'_, Result<Vec<EdgeDecision>, FunnelCallError>> {
        Box::pin(async move {
            let control = self
                .control
                .upgrade()
                .ok_or_else(|| FunnelCallError::Unavailable("the node is stopping".into()))?;
            control.funnel_log(query).await.map_err(call_error)
        })
    }
}

fn call_error(err: ClientError) -> FunnelCallError {
    match err {
        ClientError::FunnelRefused(refusal) => FunnelCallError::Refused(refusal),
        other => FunnelCallError::Unavailable(other.to_string()),
    }
}

/// A [`FunnelControl`] for a coord without funnel support.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnsupportedFunnels;

impl FunnelControl for UnsupportedFunnels {
    fn change(
        &self,
        _change: FunnelChange,
    ) -> BoxFuture<'_, Result<Vec<FunnelInfo>, FunnelCallError>> {
        Box::pin(async { Err(FunnelCallError::Unsupported) })
    }
}

/// Why a serve or funnel change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeChangeError {
    /// The resulting configuration is not valid (reserved port, bad route).
    #[error(transparent)]
    Config(#[from] ServeConfigError),
    /// The port already serves something of another kind.
    #[error(
        "tailnet port {port} already serves {existing}; remove it first (`postern serve reset`) or pick another port with --port"
    )]
    Conflict {
        /// The port.
        port: u16,
        /// What it serves now.
        existing: String,
    },
    /// The coord refused or could not be asked.
    #[error(transparent)]
    Funnel(#[from] FunnelCallError),
    /// The funnel spec is not usable.
    #[error("{0}")]
    BadFunnel(String),
    /// `--bg` state could not be saved.
    #[error("cannot save the background serves in {path}: {source}")]
    Save {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Why the serve manager could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeStartError {
    /// The serve runtime could not listen.
    #[error(transparent)]
    Runtime(#[from] ServeError),
    /// The saved serves could not be read.
    #[error(
        "cannot read the saved serves in {path}: {reason}; fix or delete the file (it holds only `postern serve --bg` settings)"
    )]
    Load {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// A foreground CLI's claim on the entries it added: they go when it ends.
#[derive(Debug)]
pub struct Session {
    id: u64,
    ended: CancellationToken,
}

impl Session {
    /// Completes when the session's entries were all removed by someone else (`postern
    /// serve reset`, or a newer serve on the same port).
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }
}

/// The owner of a node's serves and funnels; see the [module docs](self).
#[derive(Debug)]
pub struct ServeManager {
    table: ServeTable,
    state_file: PathBuf,
    funnels: Arc<dyn FunnelControl>,
    inner: Mutex<Inner>,
    _runtime: ServeRuntime,
}

#[derive(Debug, Default)]
struct Inner {
    serves: Vec<Owned<ServeEntry>>,
    funnels: Vec<Owned<FunnelEntry>>,
    sessions: HashMap<u64, CancellationToken>,
    next_session: u64,
}

#[derive(Debug, Clone)]
struct Owned<T> {
    item: T,
    session: Option<u64>,
}

/// What [`SERVES_FILE`] holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedServes {
    #[serde(default)]
    serves: Vec<ServeEntry>,
    #[serde(default)]
    funnels: Vec<FunnelEntry>,
}

impl ServeManager {
    /// Starts serving on `node`'s netstack: the funnel acceptor, and the `--bg` serves and
    /// funnels saved in the state directory (funnels are reopened with the coord in the
    /// background, retried while it cannot be reached). `observer` sees every HTTP
    /// exchange (request inspection).
    ///
    /// Fails if the funnel hop port is taken or the saved file is unreadable.
    pub fn start(
        node: &NodeHandle,
        funnels: Arc<dyn FunnelControl>,
        observer: Arc<dyn ExchangeObserver>,
    ) -> Result<Arc<Self>, ServeStartError> {
        let state_file = node.state_dir().path().join(SERVES_FILE);
        let saved = load(&state_file)?;
        let table = ServeTable::default();
        let directory: Arc<dyn serve::PeerDirectory> = Arc::new(node.clone());
        let runtime =
            ServeRuntime::start(node.netstack().clone(), table.clone(), directory, observer)?;
        let mut inner = Inner::default();
        let now = unix_now();
        let (live, expired): (Vec<FunnelEntry>, Vec<FunnelEntry>) = saved
            .funnels
            .into_iter()
            .partition(|f| f.expires_at().is_none_or(|at| at > now));
        for funnel in &expired {
            tracing::info!(
                port = funnel.spec.port,
                "a saved funnel expired while the node was down; not restoring it"
            );
        }
        for entry in saved.serves {
            if entry.funnel && expired.iter().any(|f| f.spec.port == entry.port) {
                continue;
            }
            inner.serves.push(Owned {
                item: ServeEntry {
                    background: true,
                    ..entry
                },
                session: None,
            });
        }
        for mut entry in live {
            // Reopening restarts the coord's TTL: ask for what is left of it.
            if let Some(at) = entry.expires_at() {
                entry.spec.ttl_secs = Some(u64::try_from(at - now).unwrap_or(1).max(1));
            }
            inner.funnels.push(Owned {
                item: FunnelEntry {
                    background: true,
                    ..entry
                },
                session: None,
            });
        }
        let config = build_config(&inner.serves).map_err(|err| ServeStartError::Load {
            path: state_file.clone(),
            reason: err.to_string(),
        })?;
        table.set(config);
        let restored: Vec<FunnelSpec> = inner.funnels.iter().map(|f| f.item.spec.clone()).collect();
        let manager = Arc::new(Self {
            table,
            state_file,
            funnels,
            inner: Mutex::new(inner),
            _runtime: runtime,
        });
        if !restored.is_empty() {
            let weak = Arc::downgrade(&manager);
            let stop = node.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.stopped() => {}
                    () = reopen_funnels(weak, restored) => {}
                }
            });
        }
        let count = manager.status().serves.len();
        if count > 0 {
            tracing::info!(count, "restored the background serves");
        }
        Ok(manager)
    }

    /// The live table the serve runtime follows.
    pub fn table(&self) -> &ServeTable {
        &self.table
    }

    /// What is served and funnelled now.
    pub fn status(&self) -> ServeStatus {
        let inner = self.lock();
        let mut serves: Vec<ServeEntry> = inner.serves.iter().map(|s| s.item.clone()).collect();
        serves.sort_by(|a, b| (a.port, a.target.path()).cmp(&(b.port, b.target.path())));
        let funnels = inner
            .funnels
            .iter()
            .map(|f| funnel_status(&f.item))
            .collect();
        ServeStatus { serves, funnels }
    }

    /// The edge decisions of this node's funnels matching `query`, newest first, from the
    /// coord. A `query.funnel` that is one of this node's funnel ports (`3000`) is turned
    /// into that funnel's hostname; names and hostnames go to the coord as they are.
    ///
    /// Fails as [`FunnelControl::log`]: refused (no such funnel), unavailable, unsupported.
    pub async fn funnel_log(
        &self,
        mut query: FunnelLogQuery,
    ) -> Result<Vec<EdgeDecision>, FunnelCallError> {
        if let Some(port) = query.funnel.as_deref().and_then(|f| f.parse::<u16>().ok()) {
            let hostname = self
                .lock()
                .funnels
                .iter()
                .find(|f| f.item.spec.port == port)
                .and_then(|f| f.item.info.as_ref().map(|i| i.hostname.clone()));
            if let Some(hostname) = hostname {
                query.funnel = Some(hostname);
            }
        }
        self.funnels.log(query).await
    }

    /// Whether this node has funnels open now (the inspection's puller asks the coord for
    /// edge denials only then).
    pub fn has_funnels(&self) -> bool {
        !self.lock().funnels.is_empty()
    }

    /// A new foreground session: add entries under it, and call [`Self::end_session`]
    /// when its CLI goes.
    pub fn new_session(&self) -> Session {
        let mut inner = self.lock();
        inner.next_session += 1;
        let id = inner.next_session;
        let ended = CancellationToken::new();
        inner.sessions.insert(id, ended.clone());
        Session { id, ended }
    }

    /// Adds (or replaces) a serve entry. With `session`, the entry goes when the session
    /// ends; otherwise `entry.background` says whether it is saved.
    ///
    /// Fails if the port serves something of another kind, the result is not a valid
    /// serve configuration, or the state file cannot be written.
    pub fn add_serve(
        &self,
        mut entry: ServeEntry,
        session: Option<&Session>,
    ) -> Result<ServeStatus, ServeChangeError> {
        entry.background = session.is_none() && entry.background;
        let mut inner = self.lock();
        let mut serves = inner.serves.clone();
        place(&mut serves, entry, session.map(|s| s.id))?;
        self.commit(&mut inner, serves, None)?;
        drop(inner);
        Ok(self.status())
    }

    /// Removes every serve (and, with `funnels`, closes every funnel with the coord);
    /// foreground CLIs whose entries went are told to exit.
    pub async fn reset(&self, funnels: bool) -> Result<ServeStatus, ServeChangeError> {
        let closing: Vec<u16> = if funnels {
            self.lock()
                .funnels
                .iter()
                .map(|f| f.item.spec.port)
                .collect()
        } else {
            Vec::new()
        };
        for port in &closing {
            if let Err(err) = self
                .funnels
                .change(FunnelChange::Close { port: *port })
                .await
            {
                tracing::warn!(port, %err, "the coord did not close the funnel; it is gone locally");
            }
        }
        let mut inner = self.lock();
        let serves: Vec<Owned<ServeEntry>> = if funnels {
            inner
                .serves
                .iter()
                .filter(|s| !s.item.funnel)
                .cloned()
                .collect()
        } else {
            inner
                .serves
                .iter()
                .filter(|s| s.item.funnel)
                .cloned()
                .collect()
        };
        let kept_funnels = if funnels {
            Vec::new()
        } else {
            inner.funnels.clone()
        };
        self.commit(&mut inner, serves, Some(kept_funnels))?;
        drop(inner);
        Ok(self.status())
    }

    /// Asks the coord for a funnel on `request.spec.port` and, once granted, funnels that
    /// port: an HTTP (or TCP) entry to `127.0.0.1:PORT` marked funnelled. With `session`
    /// it closes when the session ends.
    ///
    /// Fails with the coord's refusal, if the coord cannot be asked, or if the port already
    /// serves something else on the tailnet.
    pub async fn open_funnel(
        &self,
        request: FunnelRequestBody,
        session: Option<&Session>,
    ) -> Result<FunnelStatus, ServeChangeError> {
        let spec = request.spec;
        let entry = funnel_serve_entry(&spec)?;
        // Check the serve side first, so a conflict is not opened at the coord.
        {
            let inner = self.lock();
            let mut serves = inner.serves.clone();
            place(&mut serves, entry.clone(), session.map(|s| s.id))?;
            build_config(&serves)?;
        }
        let infos = self
            .funnels
            .change(FunnelChange::Open(spec.clone()))
            .await?;
        let info = infos
            .into_iter()
            .find(|i| i.port == spec.port)
            .ok_or_else(|| {
                FunnelCallError::Unavailable("the coord's answer did not include the funnel".into())
            })?;
        let background = session.is_none() && request.background;
        let funnel = FunnelEntry {
            spec,
            info: Some(info),
            background,
        };
        let mut inner = self.lock();
        let mut serves = inner.serves.clone();
        place(
            &mut serves,
            ServeEntry {
                background,
                ..entry
            },
            session.map(|s| s.id),
        )?;
        let mut funnels = inner.funnels.clone();
        funnels.retain(|f| f.item.spec.port != funnel.spec.port);
        funnels.push(Owned {
            item: funnel.clone(),
            session: session.map(|s| s.id),
        });
        funnels.sort_by_key(|f| f.item.spec.port);
        self.commit(&mut inner, serves, Some(funnels))?;
        Ok(funnel_status(&funnel))
    }

    /// Ends a foreground session: removes its entries and closes its funnels with the
    /// coord (best effort).
    pub async fn end_session(&self, session: Session) {
        let ports: Vec<u16> = {
            let mut inner = self.lock();
            inner.sessions.remove(&session.id);
            let ports = inner
                .funnels
                .iter()
                .filter(|f| f.session == Some(session.id))
                .map(|f| f.item.spec.port)
                .collect();
            let serves: Vec<_> = inner
                .serves
                .iter()
                .filter(|s| s.session != Some(session.id))
                .cloned()
                .collect();
            let funnels: Vec<_> = inner
                .funnels
                .iter()
                .filter(|f| f.session != Some(session.id))
                .cloned()
                .collect();
            if let Err(err) = self.commit(&mut inner, serves, Some(funnels)) {
                tracing::warn!(%err, "removing a foreground serve");
            }
            ports
        };
        for port in ports {
            if let Err(err) = self.funnels.change(FunnelChange::Close { port }).await {
                tracing::warn!(port, %err, "the coord did not close the foreground funnel");
            }
        }
        tracing::info!(session = session.id, "a foreground serve ended");
    }

    /// Installs `serves` (and `funnels`): the table, the state file, and ends sessions left
    /// without entries. Nothing changes if the configuration is invalid.
    fn commit(
        &self,
        inner: &mut Inner,
        serves: Vec<Owned<ServeEntry>>,
        funnels: Option<Vec<Owned<FunnelEntry>>>,
    ) -> Result<(), ServeChangeError> {
        let config = build_config(&serves)?;
        let funnels = funnels.unwrap_or_else(|| inner.funnels.clone());
        let saved = SavedServes {
            serves: serves
                .iter()
                .filter(|s| s.session.is_none() && s.item.background)
                .map(|s| s.item.clone())
                .collect(),
            funnels: funnels
                .iter()
                .filter(|f| f.session.is_none() && f.item.background)
                .map(|f| f.item.clone())
                .collect(),
        };
        save(&self.state_file, &saved)?;
        inner.serves = serves;
        inner.funnels = funnels;
        let live: std::collections::HashSet<u64> = inner
            .serves
            .iter()
            .filter_map(|s| s.session)
            .chain(inner.funnels.iter().filter_map(|f| f.session))
            .collect();
        inner.sessions.retain(|id, ended| {
            let keep = live.contains(id);
            if !keep {
                ended.cancel();
            }
            keep
        });
        self.table.set(config);
        Ok(())
    }

    /// Records the coord's answer for a restored funnel.
    fn restored(&self, info: FunnelInfo) {
        let mut inner = self.lock();
        for funnel in &mut inner.funnels {
            if funnel.item.spec.port == info.port {
                tracing::info!(port = info.port, url = %info.url, "funnel restored");
                funnel.item.info = Some(info.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EntryTarget {
    /// The mount path of an HTTP entry (`""` for TCP), for sorting and messages.
    pub fn path(&self) -> &str {
        match self {
            EntryTarget::Http { path, .. } => path.as_str(),
            EntryTarget::Tcp { .. } => "",
        }
    }

    /// `http://127.0.0.1:3000` or `tcp://127.0.0.1:5432`.
    pub fn describe(&self) -> String {
        match self {
            EntryTarget::Http { origin, .. } => origin.to_string(),
            EntryTarget::Tcp { target } => format!("tcp://{target}"),
        }
    }
}

impl serve::PeerDirectory for NodeHandle {
    fn peer_by_addr(&self, addr: IpAddr) -> Option<serve::PeerIdentity> {
        NodeHandle::peer_by_addr(self, addr).map(|peer| serve::PeerIdentity {
            node_name: peer.node_name,
            user_login: peer.login,
            user_name: peer.display_name,
            groups: peer.groups,
            tags: peer.tags,
            is_ingress: peer.is_ingress,
        })
    }

    fn is_ingress(&self, addr: IpAddr) -> bool {
        self.directory()
            .peer_by_addr(addr)
            .is_some_and(|peer| peer.is_ingress)
    }
}

/// The serve entry a funnel of `spec.port` needs.
fn funnel_serve_entry(spec: &FunnelSpec) -> Result<ServeEntry, ServeChangeError> {
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), spec.port);
    let target = match spec.protocol {
        FunnelProtocol::Http => EntryTarget::Http {
            path: RoutePath::root(),
            origin: OriginUrl::parse(&local.to_string())?,
        },
        FunnelProtocol::Tcp | FunnelProtocol::TlsPassthrough => EntryTarget::Tcp { target: local },
    };
    if spec.port == 0 {
        return Err(ServeChangeError::BadFunnel(
            "port 0 cannot be funnelled".into(),
        ));
    }
    Ok(ServeEntry {
        port: spec.port,
        target,
        funnel: true,
        background: false,
    })
}

/// Puts `entry` into `serves`, replacing the entry it supersedes.
fn place(
    serves: &mut Vec<Owned<ServeEntry>>,
    entry: ServeEntry,
    session: Option<u64>,
) -> Result<(), ServeChangeError> {
    for existing in serves.iter().filter(|s| s.item.port == entry.port) {
        let same_kind = matches!(
            (&existing.item.target, &entry.target),
            (EntryTarget::Http { .. }, EntryTarget::Http { .. })
                | (EntryTarget::Tcp { .. }, EntryTarget::Tcp { .. })
        );
        if !same_kind {
            return Err(ServeChangeError::Conflict {
                port: entry.port,
                existing: existing.item.target.describe(),
            });
        }
    }
    serves.retain(|s| !(s.item.port == entry.port && s.item.target.path() == entry.target.path()));
    serves.push(Owned {
        item: entry,
        session,
    });
    Ok(())
}

/// The serve configuration of `serves`: one service per port, HTTP routes merged; a port
/// is funnelled if any of its entries is.
fn build_config(serves: &[Owned<ServeEntry>]) -> Result<ServeConfig, ServeConfigError> {
    let mut config = ServeConfig::new();
    let mut ports: Vec<u16> = serves.iter().map(|s| s.item.port).collect();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let mut service: Option<Service> = None;
        let mut funnel = false;
        for entry in serves.iter().filter(|s| s.item.port == port) {
            funnel |= entry.item.funnel;
            service = Some(match (&entry.item.target, service) {
                (EntryTarget::Tcp { target }, _) => Service::tcp(port, *target),
                (EntryTarget::Http { path, origin }, None) => {
                    let root = Service::http(port, origin.clone());
                    if path.as_str() == "/" {
                        root
                    } else {
                        // Only this path is served: drop the root route.
                        Service {
                            target: serve::ServeTarget::Http {
                                routes: vec![serve::HttpRoute {
                                    path: path.clone(),
                                    origin: origin.clone(),
                                }],
                            },
                            ..root
                        }
                    }
                }
                (EntryTarget::Http { path, origin }, Some(existing)) => {
                    existing.with_route(path.clone(), origin.clone())
                }
            });
        }
        if let Some(service) = service {
            config.insert(service.funnelled(funnel))?;
        }
    }
    Ok(config)
}

fn funnel_status(funnel: &FunnelEntry) -> FunnelStatus {
    let info = funnel.info.as_ref();
    FunnelStatus {
        port: funnel.spec.port,
        name: funnel.spec.name.clone(),
        protocol: funnel.spec.protocol,
        url: info.map(|i| i.url.clone()),
        hostname: info.map(|i| i.hostname.clone()),
        expires_at: info.and_then(|i| i.expires_at).map(|t| t.as_secs()),
        gates: funnel
            .spec
            .gates
            .iter()
            .map(|g| g.kind().to_owned())
            .collect(),
        background: funnel.background,
    }
}

/// Reopens restored funnels with the coord, retrying while it cannot be asked.
async fn reopen_funnels(manager: std::sync::Weak<ServeManager>, specs: Vec<FunnelSpec>) {
    for spec in specs {
        loop {
            let Some(this) = manager.upgrade() else {
                return;
            };
            let port = spec.port;
            match this.funnels.change(FunnelChange::Open(spec.clone())).await {
                Ok(infos) => {
                    if let Some(info) = infos.into_iter().find(|i| i.port == port) {
                        this.restored(info);
                    }
                    break;
                }
                Err(FunnelCallError::Unavailable(reason)) => {
                    tracing::info!(port, %reason, "waiting for the coord to reopen a funnel");
                }
                Err(err) => {
                    tracing::warn!(port, %err, "a saved funnel could not be reopened; its port stays served on the tailnet");
                    break;
                }
            }
            drop(this);
            tokio::time::sleep(FUNNEL_RESTORE_RETRY).await;
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn load(path: &Path) -> Result<SavedServes, ServeStartError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(SavedServes::default()),
        Err(err) => {
            return Err(ServeStartError::Load {
                path: path.to_owned(),
                reason: err.to_string(),
            });
        }
    };
    serde_json::from_slice(&text).map_err(|err| ServeStartError::Load {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

/// Writes `saved` to `path` atomically with mode `0600` (it may hold webhook secrets).
fn save(path: &Path, saved: &SavedServes) -> Result<(), ServeChangeError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |source| ServeChangeError::Save {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(saved).map_err(|e| fail(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(&json).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(port: u16, path: &str, origin: &str) -> ServeEntry {
        ServeEntry {
            port,
            target: EntryTarget::Http {
                path: RoutePath::parse(path).unwrap(),
                origin: OriginUrl::parse(origin).unwrap(),
            },
            funnel: false,
            background: true,
        }
    }

    fn tcp(port: u16, target: &str) -> ServeEntry {
        ServeEntry {
            port,
            target: EntryTarget::Tcp {
                target: target.parse().unwrap(),
            },
            funnel: false,
            background: true,
        }
    }

    #[test]
    fn paths_of_one_port_merge_and_a_funnel_marks_the_port() {
        let mut serves = Vec::new();
        place(&mut serves, http(80, "/", "3000"), None).unwrap();
        place(&mut serves, http(80, "/api", "8080"), Some(1)).unwrap();
        let mut funnelled = http(80, "/hooks", "9000");
        funnelled.funnel = true;
        place(&mut serves, funnelled, None).unwrap();
        let config = build_config(&serves).unwrap();
        let service = config.service(80).unwrap();
        assert!(service.funnel);
        match &service.target {
            serve::ServeTarget::Http { routes } => assert_eq!(routes.len(), 3),
            other => panic!("{other:?}"),
        }
        // The same port and path again replaces the entry (and its owner).
        place(&mut serves, http(80, "/api", "8081"), None).unwrap();
        assert_eq!(serves.len(), 3);
        assert!(serves.iter().all(|s| s.session.is_none()));
    }

    #[test]
    fn http_and_tcp_on_one_port_conflict() {
        let mut serves = Vec::new();
        place(&mut serves, http(5432, "/", "3000"), None).unwrap();
        let err = place(&mut serves, tcp(5432, "127.0.0.1:5432"), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("already serves http://127.0.0.1:3000"),
            "{err}"
        );
        place(&mut serves, tcp(22, "127.0.0.1:22"), None).unwrap();
        place(&mut serves, tcp(22, "127.0.0.1:2222"), None).unwrap();
        assert_eq!(serves.len(), 2);
    }

    #[test]
    fn a_reserved_port_is_refused_with_the_reason() {
        let serves = vec![Owned {
            item: http(FUNNEL_HOP, "/", "3000"),
            session: None,
        }];
        let err = build_config(&serves).unwrap_err();
        assert!(err.to_string().contains("cannot be served"), "{err}");
    }

    const FUNNEL_HOP: u16 = crate::serve::FUNNEL_HOP_PORT;

    #[test]
    fn the_saved_file_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SERVES_FILE);
        let saved = SavedServes {
            serves: vec![http(3000, "/", "3000"), tcp(22, "127.0.0.1:22")],
            funnels: vec![FunnelEntry {
                spec: FunnelSpec {
                    port: 3000,
                    name: None,
                    protocol: FunnelProtocol::Http,
                    ttl_secs: None,
                    gates: vec![postern_proto::funnel::GateSpec::Webhook {
                        provider: "github".into(),
                        secrets: vec![postern_proto::funnel::GateSecret::new("s3cret")],
                        tolerance_secs: None,
                    }],
                    gate_mode: postern_proto::funnel::GateMode::All,
                    rate_limit: None,
                },
                info: None,
                background: true,
            }],
        };
        save(&path, &saved).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.serves, saved.serves);
        assert_eq!(loaded.funnels, saved.funnels);
        assert!(!format!("{:?}", loaded.funnels).contains("s3cret"));
        let status = funnel_status(&loaded.funnels[0]);
        assert_eq!(status.gates, ["webhook"]);
        assert!(!serde_json::to_string(&status).unwrap().contains("s3cret"));

        std::fs::write(&path, "{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains(SERVES_FILE) && err.contains("fix or delete"),
            "{err}"
        );
        assert!(
            load(&dir.path().join("absent.json"))
                .unwrap()
                .serves
                .is_empty()
        );
    }
}

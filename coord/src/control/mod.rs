//! The control plane: the coord's side of the control channel and the netmap stream.
//!
//! A node dials `POST /control` with `Upgrade: postern-control/1`; after the `101` the
//! connection runs the Noise IK handshake ([`postern_node::control::noise`]), in which the
//! coord learns and authenticates the node's machine key. Then framed control messages
//! flow: registration ([`auth`]), a map request, and the netmap stream ([`session`]) of a
//! full netmap, deltas on every change ([`hub`]) and keepalives.
//! `docs/coord.md` describes the protocol.

pub mod auth;
pub mod hub;
pub mod key;
pub mod metrics;
pub mod session;
pub mod tailnet;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postern_proto::{MachinePrivateKey, MachinePublicKey};
use tokio_util::sync::CancellationToken;

use crate::policy::{PolicyEngine, PolicyLoadError, PolicySource};
use crate::registry::{Registry, RegistryError};
use crate::store::{Store, StoreError};

pub use auth::{AuthKeyOptions, CreatedAuthKey, create_auth_key};
pub use hub::NetmapHub;
pub use key::{CoordKeyError, load_or_create_coord_key};
pub use metrics::ControlMetrics;

/// Default interval between keepalives on an idle map stream: 50 s.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(50);

/// Default lifetime of a node key: 180 days. Tagged nodes' keys do not expire.
pub const DEFAULT_KEY_EXPIRY: Duration = Duration::from_secs(180 * 24 * 60 * 60);

/// Default time an ephemeral node may stay offline before it is removed: 5 minutes.
pub const DEFAULT_EPHEMERAL_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Default interval between checks of the policy file for changes: 2 s.
pub const DEFAULT_POLICY_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How the coord's control plane runs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The state directory: the coord key, and the SQLite store unless `store` says otherwise.
    pub state_dir: PathBuf,
    /// The store location (see [`Store::open`]); `None` for SQLite in `state_dir`.
    pub store: Option<String>,
    /// The tailnet's DNS domain (`example.ts.net`).
    pub tailnet_domain: String,
    /// Keepalive interval on idle map streams.
    pub keepalive_interval: Duration,
    /// The policy: a file, or the built-in default (a user's own devices reach each other).
    pub policy: PolicySource,
    /// How often the policy file is checked for changes (SIGHUP reloads at once).
    pub policy_poll_interval: Duration,
    /// Lifetime of the node key of an untagged node from its registration; `None`: never
    /// expires. Registering again renews it.
    pub key_expiry: Option<Duration>,
    /// New nodes wait for an admin's approval (`postern-coord nodes approve`).
    pub require_approval: bool,
    /// How long an ephemeral node may stay offline before it is removed.
    pub ephemeral_timeout: Duration,
    /// How often key expiry and offline ephemeral nodes are checked.
    pub lifecycle_interval: Duration,
    /// The relay map every netmap carries (empty: no relays).
    pub relay_map: postern_proto::netmap::RelayMap,
    /// The DNS domain funnel hostnames live under (`funnel.example.com`, normalised with
    /// [`crate::funnel::hostname::parse_funnel_domain`]); `None`: funnels are refused.
    pub funnel_domain: Option<String>,
    /// The public ports TCP funnels are given; `None`: TCP funnels are refused.
    pub funnel_tcp_ports: Option<std::ops::RangeInclusive<u16>>,
    /// How many edge decisions (`postern funnel log`) are kept per funnel, newest first.
    pub edge_log_per_funnel: u32,
    /// How long edge decisions are kept after the coord received them.
    pub edge_log_max_age: Duration,
}

/// Default number of edge decisions kept per funnel: 1000.
pub const DEFAULT_EDGE_LOG_PER_FUNNEL: u32 = 1000;

/// Default age after which edge decisions go: 7 days.
pub const DEFAULT_EDGE_LOG_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl ControlConfig {
    /// SQLite in `state_dir`, the default keepalive.
    pub fn new(state_dir: impl Into<PathBuf>, tailnet_domain: impl Into<String>) -> Self {
        Self {
            state_dir: state_dir.into(),
            store: None,
            tailnet_domain: tailnet_domain.into(),
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            policy: PolicySource::BuiltIn,
            policy_poll_interval: DEFAULT_POLICY_POLL_INTERVAL,
            key_expiry: Some(DEFAULT_KEY_EXPIRY),
            require_approval: false,
            ephemeral_timeout: DEFAULT_EPHEMERAL_TIMEOUT,
            lifecycle_interval: Duration::from_secs(1),
            relay_map: postern_proto::netmap::RelayMap::default(),
            funnel_domain: None,
            funnel_tcp_ports: None,
            edge_log_per_funnel: DEFAULT_EDGE_LOG_PER_FUNNEL,
            edge_log_max_age: DEFAULT_EDGE_LOG_MAX_AGE,
        }
    }
}

/// Why the coord could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The coord key.
    #[error(transparent)]
    Key(#[from] CoordKeyError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The policy file is unreadable or invalid.
    #[error("the policy is not usable:\n{0}")]
    Policy(#[from] PolicyLoadError),
}

/// The running control plane: cheap to clone, shared by every session.
#[derive(Debug, Clone)]
pub struct Coord {
    /// The registry (and the store under it).
    pub registry: Registry,
    /// Online nodes and the change signal.
    pub hub: NetmapHub,
    /// Metrics.
    pub metrics: Arc<ControlMetrics>,
    /// Settings.
    pub config: Arc<ControlConfig>,
    /// Interactive (OIDC) login; `None`: only auth keys (see [`Coord::with_login`]).
    pub login: Option<Arc<crate::login::LoginService>>,
    /// The policy in force and every node's compiled result.
    pub policy: PolicyEngine,
    /// Wakes log requests waiting for new edge decisions of a node's funnels.
    pub edge_log: crate::funnel::edge_log::EdgeLogSignal,
    view_cache: tailnet::ViewCache,
    key: Arc<MachinePrivateKey>,
    shutdown: CancellationToken,
}

impl Coord {
    /// Opens the state directory (creating it, mode 0700), the coord key and the store.
    pub async fn open(config: ControlConfig) -> Result<Self, OpenError> {
        create_state_dir(&config.state_dir).map_err(|source| OpenError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let policy = PolicyEngine::load(config.policy.clone())?;
        let key = load_or_create_coord_key(&config.state_dir)?;
        let store = match &config.store {
            Some(location) => Store::open(location).await?,
            None => Store::open_sqlite(&config.state_dir).await?,
        };
        let registry = Registry::open(store, &config.tailnet_domain).await?;
        Ok(Self {
            registry,
            hub: NetmapHub::new(),
            metrics: Arc::new(ControlMetrics::new()),
            config: Arc::new(config),
            login: None,
            policy,
            edge_log: crate::funnel::edge_log::EdgeLogSignal::default(),
            view_cache: tailnet::ViewCache::default(),
            key: Arc::new(key),
            shutdown: CancellationToken::new(),
        })
    }

    /// Enables interactive login (OIDC) with `login`: interactive and device
    /// registrations get a login link or device code instead of a refusal.
    pub fn with_login(mut self, login: crate::login::LoginService) -> Self {
        self.login = Some(Arc::new(login));
        self
    }

    /// The coord's public key, which nodes pin.
    pub fn public_key(&self) -> MachinePublicKey {
        self.key.public_key()
    }

    /// The coord's static key, for accepting control connections.
    pub fn private_key(&self) -> &MachinePrivateKey {
        &self.key
    }

    /// The token cancelled when the coord shuts down; sessions end on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Ends every session and closes the store.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.registry.store().close().await;
    }
}

fn create_state_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

//! The node runtime: a logged-in node, up on the tailnet in userspace.
//!
//! [`NodeRuntime::start`] takes a state directory that `postern login` ([`login`]) filled,
//! and:
//!
//! 1. loads the keys ([`state`]; key files must be `0600`);
//! 2. binds the WireGuard UDP socket and starts the control client, which resumes the
//!    node's registration with a map request and reports the socket's local endpoints
//!    ([`endpoints`]);
//! 3. waits for the first netmap (or starts at once from the cached one, so a node restarted
//!    while the coord is down still works);
//! 4. brings up the [`UdpEngine`] and a [`Netstack`] on the node's tailnet addresses and
//!    joins them, answering pings at the seam ([`icmp`]);
//! 5. applies every netmap change to the engine: [`plan`] (pure) diffs what the engine holds
//!    against the new netmap into add/remove peer, allowed IPs, endpoint and filter
//!    ([`filter`]) commands;
//! 6. attaches to the home relay, learns its public endpoints with STUN, runs path
//!    discovery with its peers and reports endpoints and home relay to the coord
//!    ([`paths`]).
//!
//! When the coord goes away the control client redials in the background and the node keeps
//! its last netmap: established tailnet connections carry on.
//!
//! Other parts of the node hook in through [`NodeHandle`] (cheap to clone): the
//! [`Netstack`] to dial and listen on the tailnet, [`NodeHandle::peer_by_addr`] for the
//! identity behind a source address (serve's identity headers, funnel's ingress check),
//! [`NodeHandle::resolve`] for peer names, [`NodeHandle::netmap`] to follow netmap changes,
//! and [`NodeHandle::status`]. The local API ([`api`]) serves the same to the CLI.

pub mod api;
pub mod api_client;
pub mod endpoints;
pub mod filter;
pub mod http_proxy;
pub mod icmp;
pub mod inspection;
pub mod metrics;
pub mod names;
pub mod paths;
pub mod plan;
pub mod serves;
pub mod state;
pub mod status;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use postern_netstack::{Netstack, NetstackConfig, NetstackError, OwnerThread, TcpStream};
use postern_proto::control::AuthKeySecret;
use postern_proto::netmap::Netmap;
use postern_proto::{NodePublicKey, x25519};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::filter::NetmapFilter;
use self::names::{PeerDirectory, PeerIdentity};
use self::plan::{EngineChange, EngineTarget, plan};
use self::state::{LoginState, NodeKeys, StateDir, StateError};
use self::status::{Status, StatusContext};
use crate::control::{
    ClientConfig, ClientError, ControlClient, RegistrationState, SessionConfig, SessionError,
};
use crate::disco::PathSelector;
use crate::engine::{EngineConfig, Event, PathId, PeerConfig, PeerEngine};
use crate::udp::{EngineCommand, NewFilter, ShellCounters, StackLink, UdpEngine, UdpShellConfig};

/// The tunnel MTU of a node (WireGuard's usual figure).
pub const NODE_MTU: u16 = 1420;
/// How often the local endpoints are re-read and, if they changed, reported.
pub const ENDPOINT_REFRESH: Duration = Duration::from_secs(30);
/// How long a ping waits for its reply by default.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the runtime could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The state directory is unusable (permissions, corrupt files).
    #[error(transparent)]
    State(#[from] StateError),
    /// The node never logged in.
    #[error(
        "this node is not logged in (no login in {state_dir}): run `postern login --coord URL --auth-key KEY` first"
    )]
    NotLoggedIn {
        /// The state directory.
        state_dir: PathBuf,
    },
    /// The coord URL is not usable.
    #[error("bad coord URL {url:?}: {reason}")]
    BadCoordUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The coord could not be reached to pin its key.
    #[error(
        "cannot reach the coord at {url}: {reason}; check the URL and that the coord is running"
    )]
    CoordUnreachable {
        /// The coord URL.
        url: String,
        /// The error.
        reason: String,
    },
    /// The node is already logged in to another coord.
    #[error("already logged in to {current}; run `postern logout` first to join {requested}")]
    LoggedInElsewhere {
        /// The coord in the state.
        current: String,
        /// The coord asked for.
        requested: String,
    },
    /// The coord refused the node.
    #[error("the coord refused this node: {0}")]
    Refused(String),
    /// The WireGuard socket could not be bound.
    #[error("cannot bind the WireGuard UDP socket on {addr}: {source}; pick another --port")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The userspace stack failed.
    #[error("userspace network stack: {0}")]
    Netstack(#[from] NetstackError),
    /// A peer name is not in the netmap.
    #[error("no peer called {0:?} in the netmap; `postern status` lists the peers")]
    UnknownPeer(String),
    /// Ping needs an IPv4 tailnet address.
    #[error("cannot ping {0}: only IPv4 tailnet addresses answer pings")]
    PingNotIpv4(IpAddr),
    /// No echo reply came in time.
    #[error("no reply from {0} within {1:?}")]
    PingTimeout(IpAddr, Duration),
    /// The node is stopping.
    #[error("the node is shutting down")]
    Stopping,
    /// The trust roots for `https://` relays could not be set up (e.g. a bad `--relay-ca`).
    #[error(transparent)]
    RelayTrust(#[from] crate::relay::RelayTrustError),
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The state directory `postern login` wrote.
    pub state_dir: PathBuf,
    /// The WireGuard UDP port; 0 picks a free one.
    pub listen_port: u16,
    /// A PEM file of CA certificates to trust for `https://` relays, on top of the system's
    /// roots (for relays with a certificate from a private CA); `None` trusts the system's
    /// roots only. See [`crate::relay::relay_tls_config`].
    pub relay_ca: Option<PathBuf>,
    /// The home relay region to use instead of the one with the lowest measured latency
    /// (`postern up --home-relay`); ignored when the relay map has no such region.
    pub home_relay: Option<postern_proto::netmap::RegionId>,
}

/// What to log in with.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// The coord URL (`http://host:port`).
    pub coord_url: String,
    /// The auth key; `None` asks for interactive login.
    pub auth_key: Option<AuthKeySecret>,
    /// The hostname to register (the coord derives the node's name from it).
    pub hostname: String,
    /// Without an auth key: ask for a device code (enter a code on any device) instead of
    /// a browser link.
    pub device: bool,
}

/// What a waiting login reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginProgress {
    /// The coord wants a person to open this URL.
    LoginUrl(String),
    /// The coord wants a person to open `uri` on any device and enter `code`.
    DeviceCode {
        /// Where to enter the code.
        uri: String,
        /// The page with the code filled in, if the identity provider offers one.
        complete_uri: Option<String>,
        /// The code to enter.
        code: String,
    },
    /// An admin must approve the node (`postern-coord nodes approve NAME`); the login
    /// goes on waiting and completes once approved.
    NeedsApproval {
        /// The node's name at the coord (empty if the coord did not say).
        name: String,
    },
    /// Still waiting for the coord's answer, for this long so far.
    Waiting(Duration),
}

/// Registers this node with the coord: pins the coord's key, registers with the auth key
/// (or waits for an interactive login, reporting the URL through `progress`), waits for
/// the first netmap and saves the [`LoginState`] in `state`.
///
/// If the state already holds a login to the same coord, that login is returned as is.
/// Fails if the coord cannot be reached, refuses the node, or the state belongs to another
/// coord.
pub async fn login(
    state: &StateDir,
    request: LoginRequest,
    mut progress: impl FnMut(LoginProgress),
) -> Result<LoginState, RuntimeError> {
    let keys = state.load_or_create_keys()?;
    let coord_addr = coord_addr(&request.coord_url)?;
    if let Some(existing) = state.login()? {
        if coord_addr_or_raw(&existing.coord_url) == coord_addr {
            return Ok(existing);
        }
        return Err(RuntimeError::LoggedInElsewhere {
            current: existing.coord_url,
            requested: request.coord_url,
        });
    }
    let coord_key = crate::control::fetch_coord_key(&coord_addr)
        .await
        .map_err(|err| RuntimeError::CoordUnreachable {
            url: request.coord_url.clone(),
            reason: err.to_string(),
        })?;
    let started = Instant::now();
    let mut shown_url: Option<String> = None;
    loop {
        let mut config = ClientConfig::new(
            coord_addr.clone(),
            keys.machine.clone(),
            session_config(
                &keys,
                &request.hostname,
                request.auth_key.clone(),
                Vec::new(),
            ),
        );
        config.coord_key = Some(coord_key);
        config.device_login = request.device;
        let client = ControlClient::spawn(config);
        let mut netmap = client.netmap();
        let mut registration = client.registration();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let outcome = loop {
            tokio::select! {
                changed = netmap.changed() => {
                    if changed.is_err() {
                        break None;
                    }
                    let map = netmap.borrow_and_update().clone();
                    if let Some(map) = map {
                        break Some(map);
                    }
                }
                changed = registration.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let now = registration.borrow_and_update().clone();
                    match now {
                        RegistrationState::LoginRequired { url }
                            if shown_url.as_deref() != Some(url.as_str()) =>
                        {
                            progress(LoginProgress::LoginUrl(url.clone()));
                            shown_url = Some(url);
                        }
                        RegistrationState::DeviceCode {
                            verification_uri,
                            verification_uri_complete,
                            user_code,
                        } if shown_url.as_deref() != Some(user_code.as_str()) => {
                            progress(LoginProgress::DeviceCode {
                                uri: verification_uri,
                                complete_uri: verification_uri_complete,
                                code: user_code.clone(),
                            });
                            shown_url = Some(user_code);
                        }
                        RegistrationState::NeedsApproval { name, .. } => {
                            progress(LoginProgress::NeedsApproval { name });
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if client.is_finished() {
                        break None;
                    }
                    progress(LoginProgress::Waiting(started.elapsed()));
                }
            }
        };
        if let Some(map) = outcome {
            client.shutdown();
            let login = LoginState {
                coord_url: request.coord_url.clone(),
                coord_key,
                node_id: map.self_node.id,
                hostname: request.hostname.clone(),
                name: map.self_node.name.clone(),
            };
            state.save_login(&login)?;
            if let Err(err) = state.save_netmap(&map) {
                tracing::warn!(%err, "cannot cache the netmap");
            }
            return Ok(login);
        }
        match client.join().await {
            Err(ClientError::Session(SessionError::LoginRequired(url))) => {
                if shown_url.as_deref() != Some(url.as_str()) {
                    progress(LoginProgress::LoginUrl(url.clone()));
                    shown_url = Some(url);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(err) => return Err(RuntimeError::Refused(err.to_string())),
            Ok(()) => return Err(RuntimeError::Refused("the control client stopped".into())),
        }
    }
}

/// The `host:port` to dial for a coord URL: `http://host:port`, `http://host` (port 80)
/// or a bare `host:port`. `https` is refused until the control client speaks TLS (the
/// control channel is Noise-encrypted either way).
pub fn coord_addr(url: &str) -> Result<String, RuntimeError> {
    let bad = |reason| RuntimeError::BadCoordUrl {
        url: url.to_owned(),
        reason,
    };
    let trimmed = url.trim();
    if trimmed.starts_with("https://") {
        return Err(bad(
            "https is not supported yet: give the coord's plain http:// address (the control channel is encrypted with Noise)",
        ));
    }
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if rest.contains("://") {
        return Err(bad("only http:// URLs are supported"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(inside) = authority.strip_prefix('[') {
        let (host, after) = inside
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 host is missing its closing `]`"))?;
        match after {
            "" => (format!("[{host}]"), None),
            _ => match after.strip_prefix(':') {
                Some(port) => (format!("[{host}]"), Some(port)),
                None => return Err(bad("unexpected text after the IPv6 host")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
        None => 80,
    };
    Ok(format!("{host}:{port}"))
}

fn coord_addr_or_raw(url: &str) -> String {
    coord_addr(url).unwrap_or_else(|_| url.to_owned())
}

fn session_config(
    keys: &NodeKeys,
    hostname: &str,
    auth_key: Option<AuthKeySecret>,
    endpoints: Vec<SocketAddr>,
) -> SessionConfig {
    SessionConfig {
        node_key: keys.node.public_key(),
        disco_key: keys.disco.public_key(),
        hostname: hostname.to_owned(),
        auth_key,
        requested_tags: Vec::new(),
        ephemeral: false,
        endpoints,
        home_relay: None,
    }
}

/// A running node; see the [module docs](self). Dropping it stops everything without
/// waiting; [`NodeRuntime::shutdown`] waits.
#[derive(Debug)]
pub struct NodeRuntime {
    handle: NodeHandle,
    tasks: Vec<JoinHandle<()>>,
    engine_task: Option<JoinHandle<io::Result<()>>>,
}

/// A cheap, cloneable handle on a running node, for the local API and for the parts of the
/// node that hook in (serve, funnel, inspection).
#[derive(Debug, Clone)]
pub struct NodeHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: StateDir,
    login: LoginState,
    node_key: NodePublicKey,
    netstack: Netstack,
    commands: mpsc::Sender<EngineCommand>,
    to_engine: mpsc::Sender<Vec<Bytes>>,
    shell_counters: Arc<ShellCounters>,
    listen_port: u16,
    netmap: watch::Receiver<Option<Arc<Netmap>>>,
    directory: RwLock<Arc<PeerDirectory>>,
    endpoints: RwLock<Vec<SocketAddr>>,
    coord_connected: std::sync::atomic::AtomicBool,
    pings: Mutex<HashMap<(u16, u16), oneshot::Sender<Instant>>>,
    ping_ident: u16,
    ping_seq: AtomicU16,
    stop: CancellationToken,
    /// For funnel requests ([`serves::ControlFunnels`]); the netmap task owns the client.
    control: Weak<ControlClient>,
}

impl NodeRuntime {
    /// Starts the node described by `config`; see the [module docs](self). Returns once the
    /// node has a netmap and its stack is up. While the coord cannot be reached and no
    /// netmap is cached, it waits (logging what it waits for); `stop` on the returned handle
    /// or dropping the future ends the wait.
    ///
    /// Fails if the node is not logged in, a key file is not private, the coord refuses the
    /// node, or the UDP socket cannot be bound.
    pub async fn start(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let state = StateDir::open(&config.state_dir)?;
        let keys = state.load_or_create_keys()?;
        let login = state.login()?.ok_or_else(|| RuntimeError::NotLoggedIn {
            state_dir: config.state_dir.clone(),
        })?;
        let coord_addr = coord_addr(&login.coord_url)?;
        let relay_tls = crate::relay::relay_tls_config(config.relay_ca.as_deref())?;

        let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), config.listen_port);
        let socket = std::net::UdpSocket::bind(bind)
            .map_err(|source| RuntimeError::Bind { addr: bind, source })?;
        let listen_port = socket
            .local_addr()
            .map_err(|source| RuntimeError::Bind { addr: bind, source })?
            .port();
        let local = endpoints::local_endpoints(listen_port);

        let mut client_config = ClientConfig::new(
            coord_addr,
            keys.machine.clone(),
            session_config(&keys, &login.hostname, None, local.clone()),
        );
        client_config.coord_key = Some(login.coord_key);
        client_config.node_id = Some(login.node_id);
        let control = Arc::new(ControlClient::spawn(client_config));
        let mut control_netmap = control.netmap();

        let first = match state.cached_netmap() {
            Some(cached) if cached.self_node.id == login.node_id => {
                tracing::info!("starting from the cached netmap; the coord will refresh it");
                cached
            }
            _ => wait_for_netmap(&control, &mut control_netmap, &login.coord_url).await?,
        };

        let addresses = first.self_node.addresses.to_vec();
        let mut stack_config = NetstackConfig::new(addresses.clone());
        stack_config.mtu = usize::from(NODE_MTU);
        // The engine authenticated every packet and checked its source: checksums add nothing.
        stack_config.verify_checksums = false;
        // The data path (the engine's task, the stack's owner, the copies of served TCP
        // connections) shares one thread: see `OwnerThread`.
        stack_config.owner_thread = OwnerThread::Dedicated;
        // POSTERN_TCP_PACING, POSTERN_RECEIVE_COALESCING and POSTERN_NETSTACK_THREAD switch
        // the TCP senders' pacing, receive coalescing and the stack's thread (for benchmarks).
        stack_config.apply_env()?;
        let (netstack, seam) = Netstack::new(stack_config)?;

        let engine = PeerEngine::new(EngineConfig::new(keys.node.to_x25519()), Instant::now());
        let selector = PathSelector::new(
            keys.node.public_key(),
            keys.disco.to_x25519(),
            rand::random(),
        );
        let udp = {
            // The engine's task runs beside the stack's owner.
            let _data_path = netstack.runtime().enter();
            UdpEngine::spawn_with_paths(engine, socket, UdpShellConfig::default(), Some(selector))
                .map_err(|source| RuntimeError::Bind { addr: bind, source })?
        };
        let UdpEngine {
            outbound,
            events,
            commands,
            public_endpoints,
            task: engine_task,
            counters: shell_counters,
            ..
        } = udp;
        let (report_tx, reports) = watch::channel(paths::EndpointReport {
            endpoints: local.clone(),
            home_relay: None,
        });

        let (netmap_tx, netmap_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            state,
            login: login.clone(),
            node_key: keys.node.public_key(),
            netstack: netstack.clone(),
            commands: commands.clone(),
            to_engine: outbound.clone(),
            shell_counters,
            listen_port,
            netmap: netmap_rx,
            directory: RwLock::new(Arc::new(PeerDirectory::new(&first))),
            endpoints: RwLock::new(local),
            coord_connected: std::sync::atomic::AtomicBool::new(false),
            pings: Mutex::new(HashMap::new()),
            ping_ident: rand::random(),
            ping_seq: AtomicU16::new(0),
            stop: stop.clone(),
            control: Arc::downgrade(&control),
        });
        let handle = NodeHandle { shared };

        let mut applier = Applier {
            handle: handle.clone(),
            target: EngineTarget::default(),
            published: netmap_tx,
        };
        applier.apply(first).await;

        // The stack's seam goes straight to the engine's task (no pump task between them);
        // pings to this node and echo replies are taken out on the way in.
        let icmp = handle.clone();
        let link = StackLink {
            from_stack: seam.from_stack,
            to_stack: seam.to_stack,
            tap: Some(Box::new(move |packet: &[u8]| icmp.take_icmp(packet))),
        };
        if commands.send(EngineCommand::LinkStack(link)).await.is_err() {
            return Err(RuntimeError::Stopping);
        }
        drop(outbound);
        let tasks = vec![
            tokio::spawn(log_events(events, stop.clone())),
            tokio::spawn(paths::run(paths::PathsWiring {
                commands: commands.clone(),
                node_key: keys.node.clone(),
                relay_tls,
                home_relay: config.home_relay,
                listen_port,
                netmap: handle.netmap(),
                public: public_endpoints,
                report: report_tx,
                stop: stop.clone(),
            })),
            tokio::spawn(follow_netmaps(applier, control, control_netmap, reports)),
        ];
        tracing::info!(
            name = %login.name,
            addresses = ?addresses,
            listen_port,
            "node is up"
        );
        Ok(Self {
            handle,
            tasks,
            engine_task: Some(engine_task),
        })
    }

    /// The handle other parts of the node use.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node and waits for its tasks to end.
    pub async fn shutdown(mut self) {
        self.handle.stop();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        if let Some(task) = self.engine_task.take() {
            task.abort();
            let _ = task.await;
        }
        tracing::info!("node stopped");
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(task) = &self.engine_task {
            task.abort();
        }
    }
}

impl NodeHandle {
    /// The userspace stack on the node's tailnet addresses: dial peers and listen for them.
    pub fn netstack(&self) -> &Netstack {
        &self.shared.netstack
    }

    /// The latest netmap the node applied (follow it with `changed()`).
    pub fn netmap(&self) -> watch::Receiver<Option<Arc<Netmap>>> {
        self.shared.netmap.clone()
    }

    /// Ingress nodes: reports the edge's request decisions to the coord on the control
    /// connection and waits for its acknowledgement (see
    /// [`ControlClient::report_edge_decisions`]). Fails with
    /// [`crate::control::ClientError::Stopped`] once the node stops.
    pub async fn report_edge_decisions(
        &self,
        decisions: Vec<postern_proto::funnel::EdgeDecision>,
    ) -> Result<postern_proto::funnel::EdgeDecisionAck, crate::control::ClientError> {
        let control = self
            .shared
            .control
            .upgrade()
            .ok_or(crate::control::ClientError::Stopped)?;
        control.report_edge_decisions(decisions).await
    }

    /// Who the peer with tailnet address `addr` is, per the current netmap.
    pub fn peer_by_addr(&self, addr: IpAddr) -> Option<PeerIdentity> {
        self.directory().peer_by_addr(addr).cloned()
    }

    /// The tailnet address of `name` (`peer`, `peer.TAILNET-DOMAIN` or an IP literal).
    pub fn resolve(&self, name: &str) -> Option<IpAddr> {
        self.directory().resolve(name)
    }

    /// Opens a TCP connection to `port` on the peer called `name`.
    pub async fn dial(&self, name: &str, port: u16) -> Result<TcpStream, RuntimeError> {
        let ip = self
            .resolve(name)
            .ok_or_else(|| RuntimeError::UnknownPeer(name.to_owned()))?;
        Ok(self
            .shared
            .netstack
            .connect_tcp(SocketAddr::new(ip, port))
            .await?)
    }

    /// The engine's node-wide drop counters (for `GET /v0/metrics`).
    pub async fn engine_stats(&self) -> Result<crate::engine::EngineStats, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(EngineCommand::EngineStats(tx))
            .await
            .map_err(|_| RuntimeError::Stopping)?;
        rx.await.map_err(|_| RuntimeError::Stopping)
    }

    /// The data path's counters besides the engine's: the UDP socket's and the userspace
    /// stack's (for `GET /v0/metrics`).
    pub fn data_path_stats(&self) -> metrics::DataPathStats {
        metrics::DataPathStats::read(&self.shared.shell_counters, self.shared.netstack.stats())
    }

    /// The status snapshot: this node, its peers and their counters.
    pub async fn status(&self) -> Result<Status, RuntimeError> {
        let netmap = self
            .shared
            .netmap
            .borrow()
            .clone()
            .ok_or(RuntimeError::Stopping)?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(EngineCommand::AllPeerStats(tx))
            .await
            .map_err(|_| RuntimeError::Stopping)?;
        let stats = rx.await.map_err(|_| RuntimeError::Stopping)?;
        let stats = stats
            .into_iter()
            .map(|(key, stats)| (NodePublicKey::from(key), stats))
            .collect();
        let context = StatusContext {
            coord_url: self.shared.login.coord_url.clone(),
            coord_connected: self.shared.coord_connected.load(Ordering::Relaxed),
            listen_port: self.shared.listen_port,
            endpoints: self
                .shared
                .endpoints
                .read()
                .map(|e| e.clone())
                .unwrap_or_default(),
            node_key: self.shared.node_key,
        };
        Ok(Status::build(
            &netmap,
            &stats,
            context,
            Instant::now(),
            SystemTime::now(),
        ))
    }

    /// Sends one ICMP echo request through the mesh to the peer called `name` and waits up
    /// to `timeout` for the reply. Returns the peer's address and the round-trip time.
    pub async fn ping(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<(IpAddr, Duration), RuntimeError> {
        let target = self
            .resolve(name)
            .ok_or_else(|| RuntimeError::UnknownPeer(name.to_owned()))?;
        let IpAddr::V4(dst) = target else {
            return Err(RuntimeError::PingNotIpv4(target));
        };
        let src = self
            .shared
            .netstack
            .addresses()
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .ok_or(RuntimeError::PingNotIpv4(target))?;
        let seq = self.shared.ping_seq.fetch_add(1, Ordering::Relaxed);
        let ident = self.shared.ping_ident;
        let (tx, rx) = oneshot::channel();
        self.pings().insert((ident, seq), tx);
        let packet = icmp::echo_request(src, dst, ident, seq, b"postern ping");
        let sent_at = Instant::now();
        if self
            .shared
            .to_engine
            .send(vec![Bytes::from(packet)])
            .await
            .is_err()
        {
            self.pings().remove(&(ident, seq));
            return Err(RuntimeError::Stopping);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(at)) => Ok((target, at.saturating_duration_since(sent_at))),
            Ok(Err(_)) => Err(RuntimeError::Stopping),
            Err(_) => {
                self.pings().remove(&(ident, seq));
                Err(RuntimeError::PingTimeout(target, timeout))
            }
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &StateDir {
        &self.shared.state
    }

    /// Asks the node to stop; [`Self::stopped`] completes once it was asked.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// Completes when the node was asked to stop (by [`Self::stop`] or the local API).
    pub async fn stopped(&self) {
        self.shared.stop.cancelled().await;
    }

    fn directory(&self) -> Arc<PeerDirectory> {
        match self.shared.directory.read() {
            Ok(dir) => Arc::clone(&dir),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn pings(&self) -> std::sync::MutexGuard<'_, HashMap<(u16, u16), oneshot::Sender<Instant>>> {
        self.shared
            .pings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Waits for the control client's first netmap, saying what it waits for.
async fn wait_for_netmap(
    control: &ControlClient,
    netmap: &mut watch::Receiver<Option<Netmap>>,
    coord_url: &str,
) -> Result<Netmap, RuntimeError> {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            changed = netmap.changed() => {
                if changed.is_err() {
                    return Err(RuntimeError::Refused("the control client stopped".into()));
                }
                if let Some(map) = netmap.borrow_and_update().clone() {
                    return Ok(map);
                }
            }
            _ = tick.tick() => {
                if control.is_finished() {
                    return Err(RuntimeError::Refused(
                        "the coord ended the session; see the log above".into(),
                    ));
                }
                tracing::info!(coord = %coord_url, "waiting for the first netmap from the coord");
            }
        }
    }
}

/// Applies netmaps to the engine and publishes them.
struct Applier {
    handle: NodeHandle,
    target: EngineTarget,
    published: watch::Sender<Option<Arc<Netmap>>>,
}

impl Applier {
    async fn apply(&mut self, netmap: Netmap) {
        let shared = &self.handle.shared;
        let new = EngineTarget::from_netmap(&netmap, &shared.node_key);
        for change in plan(&self.target, &new) {
            tracing::debug!(?change, "applying a netmap change to the engine");
            if let Err(err) = self.execute(change).await {
                tracing::warn!(%err, "engine did not take a netmap change");
            }
        }
        self.target = new;
        let own: Vec<IpAddr> = netmap.self_node.addresses.to_vec();
        if !own.iter().all(|a| shared.netstack.addresses().contains(a)) {
            tracing::warn!(
                new = ?own,
                "the coord changed this node's addresses; restart the node to use them"
            );
        }
        let directory = Arc::new(PeerDirectory::new(&netmap));
        match shared.directory.write() {
            Ok(mut dir) => *dir = directory,
            Err(poisoned) => *poisoned.into_inner() = directory,
        }
        if let Err(err) = shared.state.save_netmap(&netmap) {
            tracing::warn!(%err, "cannot cache the netmap");
        }
        self.published.send_replace(Some(Arc::new(netmap)));
    }

    async fn execute(&self, change: EngineChange) -> Result<(), String> {
        let commands = &self.handle.shared.commands;
        let gone = |_| "engine stopped".to_owned();
        match change {
            EngineChange::RemovePeer(key) => {
                let (tx, rx) = oneshot::channel();
                commands
                    .send(EngineCommand::RemovePeer(key.to_x25519(), tx))
                    .await
                    .map_err(|_| "engine stopped".to_owned())?;
                rx.await.map_err(gone)?;
            }
            EngineChange::AddPeer(peer) => {
                let config = PeerConfig {
                    public_key: x25519::PublicKey::from(peer.key),
                    preshared_key: None,
                    allowed_ips: peer.allowed_ips,
                    endpoint: peer.endpoint.map(PathId::Direct),
                    persistent_keepalive: None,
                };
                let (tx, rx) = oneshot::channel();
                commands
                    .send(EngineCommand::AddPeer(config, tx))
                    .await
                    .map_err(|_| "engine stopped".to_owned())?;
                rx.await.map_err(gone)?.map_err(|e| e.to_string())?;
            }
            EngineChange::SetAllowedIps(key, nets) => {
                let (tx, rx) = oneshot::channel();
                commands
                    .send(EngineCommand::SetAllowedIps(key.to_x25519(), nets, tx))
                    .await
                    .map_err(|_| "engine stopped".to_owned())?;
                rx.await.map_err(gone)?;
            }
            EngineChange::SetEndpoint(key, endpoint) => {
                let (tx, rx) = oneshot::channel();
                commands
                    .send(EngineCommand::SetEndpoint(
                        key.to_x25519(),
                        PathId::Direct(endpoint),
                        tx,
                    ))
                    .await
                    .map_err(|_| "engine stopped".to_owned())?;
                rx.await.map_err(gone)?;
            }
            EngineChange::SetFilter(rules) => {
                commands
                    .send(EngineCommand::SetFilter(NewFilter(Box::new(
                        NetmapFilter::new(rules),
                    ))))
                    .await
                    .map_err(|_| "engine stopped".to_owned())?;
            }
        }
        Ok(())
    }
}

/// Applies every netmap the control client publishes, reports endpoint changes, and
/// tracks whether the coord is connected, until the node stops.
async fn follow_netmaps(
    mut applier: Applier,
    control: Arc<ControlClient>,
    mut netmaps: watch::Receiver<Option<Netmap>>,
    mut reports: watch::Receiver<paths::EndpointReport>,
) {
    let stop = applier.handle.shared.stop.clone();
    let mut reports_open = true;
    let mut status = tokio::time::interval(Duration::from_secs(1));
    let mut reported_refusal = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            changed = netmaps.changed() => {
                if changed.is_err() {
                    // The client stopped; keep serving on the last netmap.
                    netmaps = watch::channel(None).1;
                    continue;
                }
                let map = netmaps.borrow_and_update().clone();
                if let Some(map) = map {
                    applier.apply(map).await;
                }
            }
            changed = reports.changed(), if reports_open => {
                if changed.is_err() {
                    reports_open = false;
                    continue;
                }
                let report = reports.borrow_and_update().clone();
                let shared = &applier.handle.shared;
                if let Ok(mut endpoints) = shared.endpoints.write() {
                    endpoints.clone_from(&report.endpoints);
                }
                control.update_endpoints(report.endpoints, report.home_relay);
            }
            _ = status.tick() => {
                let connected = control.is_connected();
                let shared = &applier.handle.shared;
                let before = shared.coord_connected.swap(connected, Ordering::Relaxed);
                if before != connected {
                    if connected {
                        tracing::info!("connected to the coord");
                    } else {
                        tracing::warn!("lost the coord; running on the last netmap while redialling");
                    }
                }
                if control.is_finished() && !reported_refusal {
                    reported_refusal = true;
                    tracing::error!("the coord refused this node; it keeps running on its last netmap");
                }
            }
        }
    }
    // A funnel call in flight may hold the client a moment longer; it stops with the node.
    if let Ok(control) = Arc::try_unwrap(control) {
        control.shutdown();
    }
}

impl NodeHandle {
    /// Handles `packet` if it is an echo request for this node or a reply to one of its
    /// pings; returns whether it did.
    fn take_icmp(&self, packet: &[u8]) -> bool {
        let Some(echo) = icmp::parse_echo(packet) else {
            return false;
        };
        if !self.shared.netstack.addresses().contains(&echo.dst) {
            return false;
        }
        if echo.is_request {
            if let Some(reply) = icmp::echo_reply_for(packet) {
                // Best effort, like any ICMP: a full queue drops the reply.
                let _ = self.shared.to_engine.try_send(vec![Bytes::from(reply)]);
            }
            return true;
        }
        match self.pings().remove(&(echo.ident, echo.seq)) {
            Some(waiter) => {
                let _ = waiter.send(Instant::now());
                true
            }
            None => false,
        }
    }
}

async fn log_events(mut events: mpsc::Receiver<Event>, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            None => return,
            Some(Event::HandshakeCompleted { peer }) => {
                tracing::info!(peer = %NodePublicKey::from(peer).short(), "WireGuard handshake completed");
            }
            Some(other) => tracing::debug!(event = ?other, "WireGuard event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coord_urls_become_dial_addresses() {
        assert_eq!(
            coord_addr("http://127.0.0.1:8443").unwrap(),
            "127.0.0.1:8443"
        );
        assert_eq!(
            coord_addr("http://coord.example.com/").unwrap(),
            "coord.example.com:80"
        );
        assert_eq!(coord_addr("coord:9").unwrap(), "coord:9");
        assert_eq!(coord_addr("http://[::1]:7").unwrap(), "[::1]:7");
        assert_eq!(coord_addr("http://[::1]").unwrap(), "[::1]:80");
        let err = coord_addr("https://coord").unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
        assert!(coord_addr("http://").is_err());
        assert!(coord_addr("ftp://x").is_err());
        let err = coord_addr("http://c:99999").unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
    }
}

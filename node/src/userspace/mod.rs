//! The userspace tunnel: a WireGuard interface with no TUN device and no root.
//!
//! [`UserspaceTunnel::start`] takes a wg-quick configuration ([`WgConfig`]) and joins two
//! parts that already exist:
//!
//! - the [UDP shell](crate::udp) driving a [`PeerEngine`] (the `[Peer]` sections become
//!   engine peers, the private key the engine's key, `ListenPort` the socket's port);
//! - a [`Netstack`] (the `[Interface]`'s `Address` lines become the stack's addresses, `MTU`
//!   its MTU), through its [`PacketSeam`](postern_netstack::PacketSeam).
//!
//! The stack's seam is linked straight to the engine's task ([`StackLink`]): the engine
//! reads the stack's packet batches and puts decrypted batches into the stack's channel,
//! with no pump task between them (a task hop is a wake-up per batch on both sides). The
//! stack waits on the engine's bounded channel, so a slow engine pushes back on it; a full
//! stack drops inbound batches (counted), as a NIC does on a full ring.
//!
//! Applications on the host reach the tunnel through:
//!
//! - [`UserspaceTunnel::forward_tcp`]: a host TCP listener whose connections are carried to
//!   a fixed address inside the tunnel (like `ssh -L`);
//! - [`UserspaceTunnel::forward_udp`]: the same for UDP datagrams, with one tunnel socket per
//!   host client;
//! - [`UserspaceTunnel::socks5`]: a SOCKS5 server (CONNECT only, see [`socks5`]).
//!
//! [`UserspaceTunnel::shutdown`] stops every listener and connection, then the engine; it is
//! also what dropping the tunnel does, without waiting.

mod forward;
pub mod socks5;

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use postern_netstack::{Netstack, NetstackConfig, NetstackError, OwnerThread};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::{EngineError, Event, PeerEngine};
use crate::udp::{EngineCommand, ShellCounters, StackLink, UdpEngine, UdpShellConfig};
use crate::wg_config::{Endpoint, WgConfig};

/// The MTU used when the configuration has no `MTU` line (wg-quick's usual figure).
pub const DEFAULT_MTU: u16 = 1420;

/// Why a userspace tunnel could not start, or a forward could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The `[Interface]` has no `Address`: the userspace stack needs one.
    #[error(
        "the [Interface] section has no Address: add one (e.g. `Address = 10.0.0.2/32`) for the userspace stack"
    )]
    NoAddress,
    /// More than one address of a family: the userspace stack holds one of each.
    #[error(
        "the [Interface] section has more than one {family} Address ({first} and {second}); the userspace stack holds one IPv4 and one IPv6 address"
    )]
    TooManyAddresses {
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
        /// The first address of that family.
        first: IpAddr,
        /// The second.
        second: IpAddr,
    },
    /// A peer's `Endpoint` host name did not resolve.
    #[error("cannot resolve the Endpoint `{endpoint}` of peer {peer}: {reason}")]
    Resolve {
        /// The endpoint as written.
        endpoint: String,
        /// The peer's public key (base64).
        peer: String,
        /// The resolver's error.
        reason: String,
    },
    /// The engine refused a peer (a duplicate, or this node's own key).
    #[error("peer {peer} refused: {source}")]
    Peer {
        /// The peer's public key (base64).
        peer: String,
        /// Why.
        source: EngineError,
    },
    /// The WireGuard UDP socket could not be bound or set up.
    #[error("cannot bind the WireGuard UDP socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// A host listener for a forward or SOCKS5 server could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// `"tcp forward"`, `"udp forward"` or `"socks5"`.
        what: &'static str,
        /// The socket error.
        source: io::Error,
    },
    /// The engine's task ended before the stack could be joined to it (its socket failed).
    #[error("the WireGuard engine stopped while the tunnel was starting")]
    EngineStopped,
    /// The userspace stack refused its configuration.
    #[error("userspace network stack: {0}")]
    Netstack(#[from] NetstackError),
}

/// A running userspace WireGuard interface; see the [module docs](self).
///
/// Create it with [`UserspaceTunnel::start`] inside a tokio runtime. Dropping it stops
/// everything without waiting; [`UserspaceTunnel::shutdown`] waits for the engine to stop.
#[derive(Debug)]
pub struct UserspaceTunnel {
    netstack: Netstack,
    cancel: CancellationToken,
    local_addr: SocketAddr,
    engine_task: Option<JoinHandle<io::Result<()>>>,
    /// Keeps the engine's task running: it stops once this (its last outbound sender) is
    /// dropped.
    to_engine: Option<mpsc::Sender<Vec<Bytes>>>,
    counters: Arc<ShellCounters>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl UserspaceTunnel {
    /// Starts the tunnel described by `config`: binds the WireGuard UDP socket (on
    /// `ListenPort`, or any free port), adds the peers, creates the userspace stack on the
    /// interface's addresses and joins the two. Peers whose `Endpoint` is a host name are
    /// resolved here, once.
    ///
    /// Handshakes start on demand, with the first packet to a peer. Fails with a
    /// [`TunnelError`] that says which part of the configuration or which socket was wrong.
    pub async fn start(config: &WgConfig) -> Result<Self, TunnelError> {
        let addresses = stack_addresses(config)?;
        let mtu = config.interface.mtu.unwrap_or(DEFAULT_MTU);
        let mut stack_config = NetstackConfig::new(addresses);
        stack_config.mtu = usize::from(mtu);
        // The engine authenticated every packet (AEAD) and checked its source against the
        // peer's allowed IPs: checksums add nothing but cost.
        stack_config.verify_checksums = false;
        // The engine's task and the stack's owner share one thread (see `OwnerThread`); the
        // forwards and the SOCKS5 server stay on the caller's runtime.
        stack_config.owner_thread = OwnerThread::Dedicated;
        // POSTERN_TCP_PACING, POSTERN_RECEIVE_COALESCING and POSTERN_NETSTACK_THREAD switch
        // the TCP senders' pacing, receive coalescing and the stack's thread (for benchmarks).
        stack_config.apply_env()?;
        let (netstack, seam) = Netstack::new(stack_config)?;
        let udp = spawn_udp_engine(config, None, netstack.runtime()).await?;

        let cancel = CancellationToken::new();
        let UdpEngine {
            outbound,
            events,
            commands,
            local_addr,
            task: engine_task,
            counters,
            ..
        } = udp;
        let link = StackLink {
            from_stack: seam.from_stack,
            to_stack: seam.to_stack,
            tap: None,
        };
        if commands.send(EngineCommand::LinkStack(link)).await.is_err() {
            return Err(TunnelError::EngineStopped);
        }
        let tasks = vec![tokio::spawn(log_events(events, cancel.clone()))];
        tracing::info!(
            listen = %local_addr,
            addresses = ?netstack.addresses(),
            mtu,
            peers = config.peers.len(),
            "userspace WireGuard tunnel started"
        );
        Ok(Self {
            netstack,
            cancel,
            local_addr,
            engine_task: Some(engine_task),
            to_engine: Some(outbound),
            counters,
            tasks: Mutex::new(tasks),
        })
    }

    /// The local address of the WireGuard UDP socket (its port is the one peers reach).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The userspace stack, for opening connections into the tunnel directly.
    pub fn netstack(&self) -> &Netstack {
        &self.netstack
    }

    /// Listens on the host at `listen` (TCP) and carries each accepted connection to
    /// `remote` inside the tunnel. Returns the bound address (useful with port 0).
    ///
    /// A connection that cannot be opened in the tunnel (refused, timed out) is closed and
    /// logged; the listener keeps serving. Fails if `listen` cannot be bound.
    pub async fn forward_tcp(
        &self,
        listen: SocketAddr,
        remote: SocketAddr,
    ) -> Result<SocketAddr, TunnelError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| TunnelError::Listen {
                addr: listen,
                what: "tcp forward",
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TunnelError::Listen {
                addr: listen,
                what: "tcp forward",
                source,
            })?;
        tracing::info!(listen = %bound, %remote, "forwarding TCP into the tunnel");
        self.track(tokio::spawn(forward::serve_tcp(
            listener,
            remote,
            self.netstack.clone(),
            self.cancel.clone(),
        )));
        Ok(bound)
    }

    /// Listens on the host at `listen` (UDP) and carries datagrams to `remote` inside the
    /// tunnel; replies go back to the host client that sent the first datagram. Each host
    /// client gets its own tunnel port, forgotten after [`forward::UDP_IDLE`] without
    /// traffic. Returns the bound address. Fails if `listen` cannot be bound.
    pub async fn forward_udp(
        &self,
        listen: SocketAddr,
        remote: SocketAddr,
    ) -> Result<SocketAddr, TunnelError> {
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|source| TunnelError::Listen {
                addr: listen,
                what: "udp forward",
                source,
            })?;
        let bound = socket.local_addr().map_err(|source| TunnelError::Listen {
            addr: listen,
            what: "udp forward",
            source,
        })?;
        tracing::info!(listen = %bound, %remote, "forwarding UDP into the tunnel");
        self.track(tokio::spawn(forward::serve_udp(
            Arc::new(socket),
            remote,
            self.netstack.clone(),
            self.cancel.clone(),
        )));
        Ok(bound)
    }

    /// Runs a SOCKS5 server (no authentication, CONNECT to IP addresses only; see
    /// [`socks5`]) on the host at `listen`, opening its connections inside the tunnel.
    /// Returns the bound address. Bind it to loopback: it has no authentication.
    pub async fn socks5(&self, listen: SocketAddr) -> Result<SocketAddr, TunnelError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| TunnelError::Listen {
                addr: listen,
                what: "socks5",
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TunnelError::Listen {
                addr: listen,
                what: "socks5",
                source,
            })?;
        tracing::info!(listen = %bound, "SOCKS5 server into the tunnel");
        self.track(tokio::spawn(socks5::serve(
            listener,
            self.netstack.clone(),
            self.cancel.clone(),
        )));
        Ok(bound)
    }

    /// Stops every forward and connection, then the engine, and waits for the engine task
    /// to end. Returns the engine's socket error if it had failed.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        self.to_engine = None;
        let result = match self.engine_task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            None => Ok(()),
        };
        let stack = self.netstack.stats();
        tracing::info!(
            datagrams_in = self.counters.datagrams_in.load(Ordering::Relaxed),
            datagrams_out = self.counters.datagrams_out.load(Ordering::Relaxed),
            inbound_dropped = self.counters.inbound_dropped.load(Ordering::Relaxed),
            send_errors = self.counters.send_errors.load(Ordering::Relaxed),
            stack_packets_in = stack.packets_in,
            stack_packets_out = stack.packets_out,
            stack_turns = stack.poll_loop_iterations,
            "userspace WireGuard tunnel stopped"
        );
        result
    }

    fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

impl Drop for UserspaceTunnel {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.to_engine = None;
    }
}

/// Builds the engine for `config` (its key and peers, `Endpoint` host names resolved once)
/// and starts the [UDP shell](crate::udp) on `ListenPort` (or any free port), its task on
/// `runtime`. Shared by the userspace and the [kernel](crate::tun) modes. Must be called
/// inside a tokio runtime.
pub(crate) async fn spawn_udp_engine(
    config: &WgConfig,
    mark: Option<u32>,
    runtime: &tokio::runtime::Handle,
) -> Result<UdpEngine, TunnelError> {
    let now = Instant::now();
    let mut engine = PeerEngine::new(config.engine_config(), now);
    for peer in &config.peers {
        let resolved = match &peer.endpoint {
            Some(Endpoint::Host { host, port }) => Some(resolve(host, *port, peer).await?),
            _ => None,
        };
        engine
            .add_peer(peer.engine_peer(resolved), now)
            .map_err(|source| TunnelError::Peer {
                peer: encode_key(peer.public_key.as_bytes()),
                source,
            })?;
    }
    let bind = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        config.interface.listen_port.unwrap_or(0),
    );
    let socket = bind_udp(bind, mark).map_err(|source| TunnelError::Bind { addr: bind, source })?;
    let _runtime = runtime.enter();
    UdpEngine::spawn(engine, socket, UdpShellConfig::default())
        .map_err(|source| TunnelError::Bind { addr: bind, source })
}

/// Binds the WireGuard UDP socket on `bind`, with the firewall `mark` on its datagrams if
/// given (a kernel-mode full tunnel routes marked packets around the tunnel).
fn bind_udp(bind: SocketAddr, mark: Option<u32>) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// The stack's addresses: the host part of each `Address`, at most one per family.
fn stack_addresses(config: &WgConfig) -> Result<Vec<IpAddr>, TunnelError> {
    let mut v4: Option<Ipv4Addr> = None;
    let mut v6: Option<Ipv6Addr> = None;
    let mut seen = HashSet::new();
    for net in &config.interface.addresses {
        let addr = net.addr();
        if !seen.insert(addr) {
            continue;
        }
        match addr {
            IpAddr::V4(a) => match v4 {
                Some(first) => {
                    return Err(TunnelError::TooManyAddresses {
                        family: "IPv4",
                        first: first.into(),
                        second: a.into(),
                    });
                }
                None => v4 = Some(a),
            },
            IpAddr::V6(a) => match v6 {
                Some(first) => {
                    return Err(TunnelError::TooManyAddresses {
                        family: "IPv6",
                        first: first.into(),
                        second: a.into(),
                    });
                }
                None => v6 = Some(a),
            },
        }
    }
    let addresses: Vec<IpAddr> = v4
        .map(IpAddr::V4)
        .into_iter()
        .chain(v6.map(IpAddr::V6))
        .collect();
    if addresses.is_empty() {
        return Err(TunnelError::NoAddress);
    }
    Ok(addresses)
}

async fn resolve(
    host: &str,
    port: u16,
    peer: &crate::wg_config::Peer,
) -> Result<SocketAddr, TunnelError> {
    let error = |reason: String| TunnelError::Resolve {
        endpoint: format!("{host}:{port}"),
        peer: encode_key(peer.public_key.as_bytes()),
        reason,
    };
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| error(e.to_string()))?;
    // The WireGuard socket is IPv4 (see `start`): prefer an IPv4 answer.
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| error("no addresses".into()))
}

fn encode_key(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

pub(crate) async fn log_events(mut events: mpsc::Receiver<Event>, cancel: CancellationToken) {
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            None => return,
            Some(Event::HandshakeCompleted { .. }) => {
                tracing::info!(event = ?event, "WireGuard handshake completed");
            }
            Some(other) => tracing::debug!(event = ?other, "WireGuard event"),
        }
    }
}

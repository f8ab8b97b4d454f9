//! The stack itself: [`Netstack`], the state its sockets share, and the task that owns it.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use bytes::Bytes;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint};
use tokio::sync::{Notify, mpsc};

use crate::coalesce::Coalescer;
use crate::config::{CongestionControl, NetstackConfig, OwnerThread};
use crate::error::NetstackError;
use crate::packet::{InboundPacket, Transport, inspect_inbound};
use crate::schedule::{EgressSchedule, Turn};
use crate::seam::{PacketBatch, PacketSeam, SeamDevice};
use crate::tcp::{TcpListener, TcpStream};
use crate::udp::UdpSocket;

/// First port of the ephemeral range (RFC 6335), used for outbound connections and `bind(0)`.
const EPHEMERAL_FIRST: u16 = 49152;
/// Number of ports in the ephemeral range.
const EPHEMERAL_COUNT: u16 = 16384;
/// Inbound packets processed per hold of the state lock, so sockets get the lock in between.
const PACKETS_PER_LOCK: usize = 32;
/// Extra inbound batches taken in one turn of the owner loop before it flushes outbound.
const BATCHES_PER_TURN: usize = 8;
/// Guard against a smoltcp egress loop that would never report "nothing more to send".
const MAX_EGRESS_ROUNDS: usize = 1 << 16;
/// Longest the owner sleeps on smoltcp's timer in one go (it re-reads the timer after).
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(3600);

/// A userspace TCP/IP stack with its own addresses, driven through a [`PacketSeam`].
///
/// Create it with [`Netstack::new`]; it starts one task that owns the smoltcp interface, on
/// the caller's runtime or on a thread of its own ([`NetstackConfig::owner_thread`]).
/// Cloning the handle is cheap; when the last clone is dropped the stack
/// stops: its task ends, open connections are reset and every socket returns
/// [`NetstackError::Stopped`].
#[derive(Clone)]
pub struct Netstack {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    _stop: Arc<StopOnDrop>,
}

/// Counters of a [`Netstack`], for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetstackStats {
    /// Turns of the owner task's loop: each turn is one wake-up (a packet batch, a socket
    /// call or a timer). An idle stack does not turn.
    pub poll_loop_iterations: u64,
    /// Inbound packets handed to smoltcp.
    pub packets_in: u64,
    /// Outbound packets handed to the engine.
    pub packets_out: u64,
    /// Inbound packets dropped as malformed (bad header, length or checksum, or fragment).
    pub malformed_dropped: u64,
    /// Inbound packets dropped because their destination is not one of the stack's addresses.
    pub not_local_dropped: u64,
    /// Outbound packets discarded because the engine dropped its end of the seam.
    pub outbound_dropped: u64,
    /// Inbound connection attempts refused because the listener's backlog was full.
    pub backlog_refused: u64,
    /// TCP sockets the stack holds now (listening, open, closing).
    pub tcp_sockets: usize,
    /// UDP sockets the stack holds now.
    pub udp_sockets: usize,
    /// TCP connections that reused a spare socket instead of allocating new buffers.
    pub tcp_sockets_reused: u64,
    /// Sockets looked at by the egress that follows each inbound packet. A packet of a
    /// known TCP connection costs one per round (each round sends one packet, the last
    /// finds nothing), whatever the number of sockets; any other packet costs every
    /// socket of the stack per round. Egress at the end of each turn of the owner task
    /// (timers, application writes) is not counted.
    pub inbound_egress_visits: u64,
    /// Sockets looked at by the egress at the end of each turn of the owner task: the
    /// sockets that calls changed and those whose deadline came, each once per round (as
    /// above), or every socket per round when more than 1,024 sockets were touched since
    /// the turn before (then a full pass is cheaper to track). Idle connections are not
    /// visited.
    pub turn_egress_visits: u64,
    /// Runs of in-order TCP segments joined into one before smoltcp processed them
    /// ([`NetstackConfig::receive_coalescing`]).
    pub coalesced_runs: u64,
    /// Inbound packets that went into those runs (each is also in `packets_in`).
    pub coalesced_packets: u64,
}

impl std::fmt::Debug for Netstack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netstack")
            .field("addresses", &self.shared.config.addresses)
            .finish_non_exhaustive()
    }
}

impl Netstack {
    /// Creates a stack with `config`'s addresses and settings, and returns it with the
    /// engine's end of its packet seam.
    ///
    /// With [`OwnerThread::Shared`] (the default) it must be called inside a tokio runtime,
    /// which the owner task is spawned on; with [`OwnerThread::Dedicated`] it starts the
    /// stack's own thread instead. Fails if the configuration is invalid (the error names
    /// the field), if there is no runtime, or if the thread cannot be started.
    pub fn new(config: NetstackConfig) -> Result<(Self, PacketSeam), NetstackError> {
        config.validate()?;
        let (to_stack, inbound) = mpsc::channel(config.seam_capacity);
        let (outbound, from_stack) = mpsc::channel(config.seam_capacity);

        let epoch = std::time::Instant::now();
        let mut device = SeamDevice::new(config.mtu, config.outbound_queue);
        let mut iface_config = Config::new(HardwareAddress::Ip);
        let seed = random_u64();
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut device, SmolInstant::from_micros(0));
        let mut cidrs_ok = true;
        iface.update_ip_addrs(|addrs| {
            for addr in &config.addresses {
                let prefix = if addr.is_ipv4() { 32 } else { 128 };
                cidrs_ok &= addrs.push(IpCidr::new((*addr).into(), prefix)).is_ok();
            }
        });
        // Medium::Ip has no neighbours: a default route "via" the stack's own address makes
        // every destination reachable, and the engine decides where packets really go.
        let routes = iface.routes_mut();
        if let Some(IpAddr::V4(v4)) = config.ipv4() {
            cidrs_ok &= routes.add_default_ipv4_route(v4).is_ok();
        }
        if let Some(IpAddr::V6(v6)) = config.ipv6() {
            cidrs_ok &= routes.add_default_ipv6_route(v6).is_ok();
        }
        if !cidrs_ok {
            return Err(NetstackError::InvalidConfig(
                "too many addresses for the interface: at most one IPv4 and one IPv6".into(),
            ));
        }

        let state = StackState {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            stopped: false,
            tcp: HashMap::new(),
            udp: HashMap::new(),
            inbound_tuples: HashMap::new(),
            tcp_tuples: HashMap::new(),
            listeners: HashMap::new(),
            port_listeners: HashMap::new(),
            any_port_listener: None,
            next_listener_id: 0,
            pending: Vec::new(),
            orphans: Vec::new(),
            udp_orphans: Vec::new(),
            tcp_connect_ports: HashSet::new(),
            udp_ports: HashSet::new(),
            spare_tcp: Vec::new(),
            port_cursor: (seed % u64::from(EPHEMERAL_COUNT)) as u16,
            stats: NetstackStats::default(),
            config: config.clone(),
            schedule: EgressSchedule::default(),
            turn_sockets: Vec::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            epoch,
            config,
        });
        let owner = run_owner(shared.clone(), inbound, outbound);
        let runtime = match shared.config.owner_thread {
            OwnerThread::Shared => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| NetstackError::NoRuntime)?;
                drop(runtime.spawn(owner));
                runtime
            }
            OwnerThread::Dedicated => start_owner_thread(owner)?,
        };
        let stop = Arc::new(StopOnDrop(shared.clone()));
        Ok((
            Self {
                shared,
                runtime,
                _stop: stop,
            },
            PacketSeam {
                to_stack,
                from_stack,
            },
        ))
    }

    /// Opens a TCP connection from this stack to `remote`, and waits until it is established.
    ///
    /// The local address is the stack's address of `remote`'s family; the local port is a free
    /// ephemeral port. Fails with [`NetstackError::ConnectionRefused`] if the peer answers
    /// with RST, [`NetstackError::ConnectTimedOut`] after
    /// [`NetstackConfig::connect_timeout`] without an answer, or the errors for a bad or
    /// unreachable address.
    pub async fn connect_tcp(&self, remote: SocketAddr) -> Result<TcpStream, NetstackError> {
        if remote.port() == 0 || remote.ip().is_unspecified() || remote.ip().is_multicast() {
            return Err(NetstackError::InvalidRemote { remote });
        }
        let local_ip =
            self.shared
                .config
                .source_for(remote.ip())
                .ok_or(NetstackError::NoSourceAddress {
                    family: family(remote.ip()),
                    remote: remote.ip(),
                })?;
        let (handle, local) = {
            let mut st = self.shared.lock();
            st.check_running()?;
            let port = st.allocate_port(Protocol::Tcp)?;
            let local = SocketAddr::new(local_ip, port);
            let mut socket = st.new_tcp_socket();
            socket.set_timeout(Some(to_smol(self.shared.config.connect_timeout)));
            if socket
                .connect(st.iface.context(), remote, IpListenEndpoint::from(local))
                .is_err()
            {
                st.tcp_connect_ports.remove(&port);
                return Err(NetstackError::InvalidRemote { remote });
            }
            let handle = st.sockets.add(socket);
            st.tcp.insert(
                handle,
                TcpEntry {
                    role: TcpRole::Stream,
                    tuple: Some((local, remote)),
                    connect_port: Some(port),
                },
            );
            st.tcp_tuples.insert((local, remote), handle);
            st.touch(handle);
            (handle, local)
        };
        self.shared.wake_owner();
        // From here the stream owns the socket: if this future is dropped, so is the stream,
        // and its Drop closes the socket.
        let stream = TcpStream::new(self.shared.clone(), handle, local, remote);
        stream
            .wait_connected(self.shared.config.connect_timeout)
            .await?;
        Ok(stream)
    }

    /// Listens for TCP connections to `port` on every address of the stack.
    ///
    /// Connections to a port with no listener (and no any-port listener) are refused with
    /// RST. Fails with [`NetstackError::AddrInUse`] if another listener has the port.
    pub fn listen_tcp(&self, port: u16) -> Result<TcpListener, NetstackError> {
        if port == 0 {
            return Err(NetstackError::InvalidConfig(
                "cannot listen on TCP port 0; give a port, or use listen_tcp_any_port".into(),
            ));
        }
        let mut st = self.shared.lock();
        st.check_running()?;
        if st.port_listeners.contains_key(&port) {
            return Err(NetstackError::AddrInUse {
                protocol: "tcp",
                port,
            });
        }
        let id = st.add_listener(Some(port));
        st.port_listeners.insert(port, id);
        Ok(TcpListener::new(self.shared.clone(), id, Some(port)))
    }

    /// Listens for TCP connections to every port of the stack's addresses that has no
    /// listener of its own. Each accepted [`TcpStream`] tells the port it was made to in
    /// [`TcpStream::local_addr`]. This is what forwarding needs: a connection to any port
    /// can be accepted and handed on.
    ///
    /// Ports the stack uses for its own outbound connections are not accepted. Fails with
    /// [`NetstackError::AnyPortListenerExists`] if one already exists.
    pub fn listen_tcp_any_port(&self) -> Result<TcpListener, NetstackError> {
        let mut st = self.shared.lock();
        st.check_running()?;
        if st.any_port_listener.is_some() {
            return Err(NetstackError::AnyPortListenerExists);
        }
        let id = st.add_listener(None);
        st.any_port_listener = Some(id);
        Ok(TcpListener::new(self.shared.clone(), id, None))
    }

    /// Binds a UDP socket to `port` on every address of the stack; port 0 picks a free
    /// ephemeral port. Fails with [`NetstackError::AddrInUse`] if the port is taken.
    pub fn bind_udp(&self, port: u16) -> Result<UdpSocket, NetstackError> {
        let mut st = self.shared.lock();
        st.check_running()?;
        let port = if port == 0 {
            st.allocate_port(Protocol::Udp)?
        } else if st.udp_ports.insert(port) {
            port
        } else {
            return Err(NetstackError::AddrInUse {
                protocol: "udp",
                port,
            });
        };
        let config = &self.shared.config;
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; config.udp_datagrams],
                vec![0u8; config.udp_buffer],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        if socket.bind(port).is_err() {
            st.udp_ports.remove(&port);
            return Err(NetstackError::AddrInUse {
                protocol: "udp",
                port,
            });
        }
        let handle = st.sockets.add(socket);
        st.udp.insert(handle, port);
        drop(st);
        Ok(UdpSocket::new(self.shared.clone(), handle, port))
    }

    /// The runtime the stack's owner task runs on: the caller's runtime of
    /// [`Netstack::new`], or the stack's own thread's with [`OwnerThread::Dedicated`].
    ///
    /// Spawn the tasks that move a connection's bytes between this stack and a kernel
    /// socket here (creating or re-registering the kernel socket inside the task), so that
    /// with a dedicated thread they hand off to the stack without waking another thread.
    /// Tasks spawned on a dedicated thread's runtime are dropped when the stack stops.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The stack's own addresses.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.shared.config.addresses
    }

    /// A one-line-per-socket description of the TCP sockets, for debugging stalls.
    #[doc(hidden)]
    pub fn debug_sockets(&self) -> String {
        let mut st = self.shared.lock();
        let handles: Vec<SocketHandle> = st.tcp.keys().copied().collect();
        let mut out = format!("tx_queue={} ", st.device.tx.len());
        for handle in handles {
            if let Some(socket) = st.tcp_socket(handle) {
                out.push_str(&format!(
                    "[{:?} local={:?} remote={:?} sendq={} recvq={} can_send={} can_recv={}] ",
                    socket.state(),
                    socket.local_endpoint(),
                    socket.remote_endpoint(),
                    socket.send_queue(),
                    socket.recv_queue(),
                    socket.can_send(),
                    socket.can_recv()
                ));
            }
        }
        out
    }

    /// A snapshot of the stack's counters.
    pub fn stats(&self) -> NetstackStats {
        let st = self.shared.lock();
        let mut stats = st.stats.clone();
        stats.tcp_sockets = st.tcp.len();
        stats.udp_sockets = st.udp.len();
        stats
    }
}

/// Stops the stack when the last [`Netstack`] clone goes away.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stopping.store(true, Ordering::Release);
        self.0.wake_owner();
    }
}

/// What the owner task and the socket handles share.
pub(crate) struct Shared {
    state: Mutex<StackState>,
    /// Wakes the owner task: a socket call changed something that may need sending.
    wake: Notify,
    stopping: AtomicBool,
    epoch: std::time::Instant,
    pub(crate) config: NetstackConfig,
}

impl Shared {
    /// Locks the stack state. A panic while it was held (a bug) does not make it unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, StackState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the owner task to take a turn (send what a socket call queued).
    pub(crate) fn wake_owner(&self) {
        self.wake.notify_one();
    }

    fn now(&self) -> SmolInstant {
        let micros = i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX);
        SmolInstant::from_micros(micros)
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Protocol {
    Tcp,
    Udp,
}

/// What a TCP socket in the set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpRole {
    /// Owned by a `TcpStream` (connected, or connecting).
    Stream,
    /// Created for an inbound SYN; handshake not finished.
    Pending(u64),
    /// Handshake finished; waiting in the listener's accept queue.
    Ready(u64),
    /// Its owner is gone; it finishes closing and is then removed.
    Orphan,
}

pub(crate) struct TcpEntry {
    pub(crate) role: TcpRole,
    /// (local, remote), known from the SYN or the connect call.
    pub(crate) tuple: Option<(SocketAddr, SocketAddr)>,
    /// The ephemeral port of an outbound connection, released with the socket.
    connect_port: Option<u16>,
}

pub(crate) struct ListenerState {
    /// `None` for the any-port listener.
    port: Option<u16>,
    pub(crate) ready: VecDeque<SocketHandle>,
    pending: usize,
    pub(crate) waker: Option<Waker>,
}

/// Everything behind the lock: the smoltcp interface, its sockets and our bookkeeping.
pub(crate) struct StackState {
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    device: SeamDevice,
    pub(crate) stopped: bool,
    pub(crate) tcp: HashMap<SocketHandle, TcpEntry>,
    /// UDP sockets and their ports.
    pub(crate) udp: HashMap<SocketHandle, u16>,
    /// (local, remote) of sockets made for inbound SYNs, so a retransmitted SYN makes no twin.
    inbound_tuples: HashMap<(SocketAddr, SocketAddr), SocketHandle>,
    /// (local, remote) of every TCP socket with a known tuple (inbound and outbound), so an
    /// inbound segment's egress visits its own socket only.
    tcp_tuples: HashMap<(SocketAddr, SocketAddr), SocketHandle>,
    pub(crate) listeners: HashMap<u64, ListenerState>,
    port_listeners: HashMap<u16, u64>,
    any_port_listener: Option<u64>,
    next_listener_id: u64,
    /// Sockets in an inbound handshake.
    pending: Vec<SocketHandle>,
    /// TCP sockets whose stream or listener was dropped, finishing their close.
    orphans: Vec<SocketHandle>,
    /// UDP sockets whose owner was dropped, sending what they still hold.
    udp_orphans: Vec<SocketHandle>,
    tcp_connect_ports: HashSet<u16>,
    udp_ports: HashSet<u16>,
    /// Closed TCP sockets kept for reuse, so a new connection does not allocate and zero
    /// its buffers again (see [`NetstackConfig::tcp_spare_sockets`]).
    spare_tcp: Vec<tcp::Socket<'static>>,
    port_cursor: u16,
    pub(crate) stats: NetstackStats,
    config: NetstackConfig,
    /// Which sockets the owner's next turn lets send, and every socket's next deadline.
    schedule: EgressSchedule,
    /// The sockets of the current turn (kept to reuse its allocation).
    turn_sockets: Vec<SocketHandle>,
}

impl StackState {
    pub(crate) fn check_running(&self) -> Result<(), NetstackError> {
        if self.stopped {
            Err(NetstackError::Stopped)
        } else {
            Ok(())
        }
    }

    /// The TCP socket behind `handle`, if the stack still has it.
    pub(crate) fn tcp_socket(&mut self, handle: SocketHandle) -> Option<&mut tcp::Socket<'static>> {
        if self.tcp.contains_key(&handle) {
            Some(self.sockets.get_mut::<tcp::Socket<'static>>(handle))
        } else {
            None
        }
    }

    /// The TCP socket behind `handle` of a stream, or the error its user gets once the
    /// stack has stopped or dropped the socket ([`NetstackError::Stopped`]).
    pub(crate) fn live_tcp_socket(
        &mut self,
        handle: SocketHandle,
    ) -> std::io::Result<&mut tcp::Socket<'static>> {
        if self.stopped {
            return Err(NetstackError::Stopped.into());
        }
        self.tcp_socket(handle)
            .ok_or_else(|| NetstackError::Stopped.into())
    }

    /// Notes that a call changed the socket behind `handle`, so the owner's next turn lets
    /// it send (see [`EgressSchedule`]). Every change made to a socket outside the owner's
    /// turn must be noted so; wake the owner as well if it should go out now.
    pub(crate) fn touch(&mut self, handle: SocketHandle) {
        self.schedule.touch(handle);
    }

    /// The UDP socket behind `handle`, if the stack still has it.
    pub(crate) fn udp_socket(&mut self, handle: SocketHandle) -> Option<&mut udp::Socket<'static>> {
        if self.udp.contains_key(&handle) {
            Some(self.sockets.get_mut::<udp::Socket<'static>>(handle))
        } else {
            None
        }
    }

    /// A closed TCP socket with the configured buffers and the stack's TCP settings: a
    /// spare one if the stack kept one, else a new one.
    fn new_tcp_socket(&mut self) -> tcp::Socket<'static> {
        let mut socket = match self.spare_tcp.pop() {
            Some(socket) => {
                self.stats.tcp_sockets_reused += 1;
                socket
            }
            None => {
                let rx = tcp::SocketBuffer::new(vec![0u8; self.config.tcp_rx_buffer]);
                let tx = tcp::SocketBuffer::new(vec![0u8; self.config.tcp_tx_buffer]);
                tcp::Socket::new(rx, tx)
            }
        };
        // Everything a previous connection may have changed goes back to the stack's
        // settings (`connect` and `listen` reset the connection state and the buffers'
        // positions; the old bytes are never read again).
        socket.set_timeout(None);
        socket.set_keep_alive(None);
        socket.set_hop_limit(None);
        // `None` (the default) acknowledges every segment at once; a delay acknowledges
        // every second full segment (or a lone one after the delay). See
        // `NetstackConfig::ack_delay`.
        socket.set_ack_delay(self.config.ack_delay.map(to_smol));
        // Nagle on, as in kernel sockets: without it smoltcp sends a sliver of a segment for
        // every few bytes the congestion window grows (measured: 200-byte average segments
        // and 8x less throughput). `TcpStream::set_nodelay` turns it off per connection.
        socket.set_nagle_enabled(true);
        socket.set_congestion_control(match self.config.congestion_control {
            CongestionControl::None => tcp::CongestionControl::None,
            CongestionControl::Reno => tcp::CongestionControl::Reno,
            CongestionControl::Cubic => tcp::CongestionControl::Cubic,
        });
        // Off (`None`) is upstream smoltcp's behaviour; see `NetstackConfig::tcp_pacing`.
        socket.set_pacing(self.config.tcp_pacing.map(|pacing| tcp::Pacing {
            slow_start_percent: pacing.slow_start_percent,
            congestion_avoidance_percent: pacing.congestion_avoidance_percent,
            horizon: to_smol(pacing.horizon),
        }));
        socket
    }

    fn allocate_port(&mut self, protocol: Protocol) -> Result<u16, NetstackError> {
        for _ in 0..EPHEMERAL_COUNT {
            self.port_cursor = (self.port_cursor + 1) % EPHEMERAL_COUNT;
            let port = EPHEMERAL_FIRST + self.port_cursor;
            let free = match protocol {
                Protocol::Tcp => {
                    !self.port_listeners.contains_key(&port) && self.tcp_connect_ports.insert(port)
                }
                Protocol::Udp => self.udp_ports.insert(port),
            };
            if free {
                return Ok(port);
            }
        }
        Err(NetstackError::NoFreePort {
            protocol: match protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            },
        })
    }

    fn add_listener(&mut self, port: Option<u16>) -> u64 {
        let id = self.next_listener_id;
        self.next_listener_id += 1;
        self.listeners.insert(
            id,
            ListenerState {
                port,
                ready: VecDeque::new(),
                pending: 0,
                waker: None,
            },
        );
        id
    }

    /// Removes a listener: its queued and half-open connections are reset.
    pub(crate) fn remove_listener(&mut self, id: u64) {
        let Some(listener) = self.listeners.remove(&id) else {
            return;
        };
        match listener.port {
            Some(port) => {
                self.port_listeners.remove(&port);
            }
            None => self.any_port_listener = None,
        }
        let doomed: Vec<SocketHandle> = self
            .tcp
            .iter()
            .filter(|(_, e)| matches!(e.role, TcpRole::Pending(l) | TcpRole::Ready(l) if l == id))
            .map(|(h, _)| *h)
            .collect();
        for handle in doomed {
            self.pending.retain(|h| *h != handle);
            if let Some(socket) = self.tcp_socket(handle) {
                socket.abort();
            }
            self.orphan_tcp(handle);
            self.touch(handle);
        }
    }

    /// Hands a queued connection of listener `id` to its caller, as (socket, local, remote).
    pub(crate) fn pop_ready(&mut self, id: u64) -> Option<(SocketHandle, SocketAddr, SocketAddr)> {
        loop {
            let handle = self.listeners.get_mut(&id)?.ready.pop_front()?;
            let Some(entry) = self.tcp.get_mut(&handle) else {
                continue;
            };
            entry.role = TcpRole::Stream;
            if let Some((local, remote)) = entry.tuple {
                return Some((handle, local, remote));
            }
        }
    }

    /// Called when a `TcpStream` is dropped: its socket closes (FIN after the data already
    /// written, or RST if received data was never read) and is removed once closed.
    pub(crate) fn release_stream(&mut self, handle: SocketHandle) {
        let linger = to_smol(self.config.orphan_linger);
        if let Some(socket) = self.tcp_socket(handle) {
            if socket.can_recv() {
                socket.abort();
            } else {
                socket.close();
                // A peer that goes silent cannot keep the socket forever.
                socket.set_timeout(Some(linger));
            }
            self.orphan_tcp(handle);
            self.touch(handle);
        }
    }

    /// Called when a `UdpSocket` is dropped: datagrams still queued are sent, then it goes.
    pub(crate) fn release_udp(&mut self, handle: SocketHandle) {
        if self.udp.contains_key(&handle) {
            self.udp_orphans.push(handle);
            self.touch(handle);
        }
    }

    fn orphan_tcp(&mut self, handle: SocketHandle) {
        if let Some(entry) = self.tcp.get_mut(&handle) {
            entry.role = TcpRole::Orphan;
            self.orphans.push(handle);
        }
    }

    fn remove_tcp(&mut self, handle: SocketHandle) {
        let Some(entry) = self.tcp.remove(&handle) else {
            return;
        };
        self.schedule.forget(handle);
        if let smoltcp::socket::Socket::Tcp(mut socket) = self.sockets.remove(handle)
            && self.spare_tcp.len() < self.config.tcp_spare_sockets
        {
            // Removed from the set, an aborted socket sends nothing: it only goes back to
            // `Closed`, the state `connect` and `listen` start from.
            socket.abort();
            self.spare_tcp.push(socket);
        }
        if let Some(port) = entry.connect_port {
            self.tcp_connect_ports.remove(&port);
        }
        if let Some(tuple) = entry.tuple {
            self.device.repair.forget(tuple.0, tuple.1);
            if self.inbound_tuples.get(&tuple) == Some(&handle) {
                self.inbound_tuples.remove(&tuple);
            }
            if self.tcp_tuples.get(&tuple) == Some(&handle) {
                self.tcp_tuples.remove(&tuple);
            }
        }
        if let TcpRole::Pending(id) = entry.role
            && let Some(listener) = self.listeners.get_mut(&id)
        {
            listener.pending = listener.pending.saturating_sub(1);
        }
    }

    fn remove_udp(&mut self, handle: SocketHandle) {
        if let Some(port) = self.udp.remove(&handle) {
            self.schedule.forget(handle);
            self.sockets.remove(handle);
            self.udp_ports.remove(&port);
        }
    }

    /// Parses an inbound packet and checks it is for this stack; a packet that is not is
    /// dropped and counted here.
    fn inspect(&mut self, packet: &[u8]) -> Option<InboundPacket> {
        let info = match inspect_inbound(packet, self.config.verify_checksums) {
            Ok(info) => info,
            Err(why) => {
                self.stats.malformed_dropped += 1;
                tracing::trace!(%why, len = packet.len(), "dropped a malformed inbound packet");
                return None;
            }
        };
        if !self.config.addresses.contains(&info.dst) {
            self.stats.not_local_dropped += 1;
            tracing::trace!(dst = %info.dst, "dropped an inbound packet for another address");
            return None;
        }
        self.stats.packets_in += 1;
        Some(info)
    }

    /// Hands one inspected packet (or a coalesced run, see `coalesce`) to smoltcp, then
    /// sends what it caused: each segment is acknowledged before the next is looked at,
    /// which keeps the peer's ACK clock running.
    ///
    /// When the stack knows the packet's socket (a TCP segment of a known connection) and
    /// that socket takes it, smoltcp is pointed at it for ingress and polls only it for
    /// egress, so the per-packet cost does not grow with idle connections. Any other
    /// packet (one that another socket, or no socket, may have taken) gets the full pass.
    fn deliver(&mut self, packet: Bytes, info: InboundPacket, now: SmolInstant) {
        let (created, tuple) = match info.transport {
            Transport::TcpSyn { from, to } => (self.prepare_for_syn(from, to), Some((to, from))),
            Transport::Tcp { from, to } => (None, Some((to, from))),
            _ => (None, None),
        };
        // The packet's own socket, when the stack knows it: smoltcp offers the segment to
        // it first instead of searching every socket (smoltcp patch 7).
        let mut owner = tuple.and_then(|tuple| self.tcp_tuples.get(&tuple).copied());
        self.device.rx = Some(packet);
        let taken = match owner {
            Some(handle) => {
                let _ = self.iface.poll_ingress_single_hinted(
                    now,
                    &mut self.device,
                    &mut self.sockets,
                    handle,
                );
                self.iface.ingress_hint_taken()
            }
            None => {
                let _ = self
                    .iface
                    .poll_ingress_single(now, &mut self.device, &mut self.sockets);
                false
            }
        };
        self.device.rx = None;
        if let Some(handle) = created
            && let Some(socket) = self.tcp_socket(handle)
            && socket.state() == tcp::State::Listen
        {
            // The SYN did not take (smoltcp dropped it); do not leave a listener behind.
            self.pending.retain(|h| *h != handle);
            self.remove_tcp(handle);
            if owner == Some(handle) {
                owner = None;
            }
        }
        let visits = match owner {
            Some(handle) if taken => self.egress_socket(now, handle),
            _ => self.egress_everything(now),
        };
        self.stats.inbound_egress_visits += visits;
    }

    /// Makes a listening socket for an inbound SYN to a port someone listens on, so that
    /// smoltcp finds it when it processes the SYN. Returns the new socket, if one was made.
    fn prepare_for_syn(&mut self, from: SocketAddr, to: SocketAddr) -> Option<SocketHandle> {
        let port = to.port();
        let listener_id = match self.port_listeners.get(&port) {
            Some(id) => *id,
            None if !self.tcp_connect_ports.contains(&port) => self.any_port_listener?,
            None => return None,
        };
        if let Some(&existing) = self.inbound_tuples.get(&(to, from)) {
            let lingering = self
                .tcp
                .get(&existing)
                .is_some_and(|e| e.role == TcpRole::Orphan)
                && self.sockets.get::<tcp::Socket<'static>>(existing).state()
                    == tcp::State::TimeWait;
            if !lingering {
                return None; // a retransmitted SYN: its socket exists
            }
            // A new connection reusing the tuple of one in TIME-WAIT: let the old one go.
            self.orphans.retain(|h| *h != existing);
            self.remove_tcp(existing);
        }
        // Sockets whose handshake was reset fall back to LISTEN in smoltcp; drop them now so
        // that they cannot catch this SYN instead of the socket made for it.
        let relisten: Vec<SocketHandle> = self
            .pending
            .iter()
            .copied()
            .filter(|h| self.sockets.get::<tcp::Socket<'static>>(*h).state() == tcp::State::Listen)
            .collect();
        for handle in relisten {
            self.pending.retain(|h| *h != handle);
            self.remove_tcp(handle);
        }
        let backlog = self.config.listen_backlog;
        let listener = self.listeners.get_mut(&listener_id)?;
        if listener.pending + listener.ready.len() >= backlog {
            self.stats.backlog_refused += 1;
            return None; // smoltcp answers RST
        }
        listener.pending += 1;
        let mut socket = self.new_tcp_socket();
        socket.set_timeout(Some(to_smol(self.config.handshake_timeout)));
        if socket.listen(IpListenEndpoint::from(to)).is_err() {
            if let Some(listener) = self.listeners.get_mut(&listener_id) {
                listener.pending -= 1;
            }
            return None;
        }
        let handle = self.sockets.add(socket);
        self.tcp.insert(
            handle,
            TcpEntry {
                role: TcpRole::Pending(listener_id),
                tuple: Some((to, from)),
                connect_port: None,
            },
        );
        self.inbound_tuples.insert((to, from), handle);
        self.tcp_tuples.insert((to, from), handle);
        self.pending.push(handle);
        Some(handle)
    }

    /// Lets every socket send what it has, until smoltcp has nothing more or the outbound
    /// queue is full, then records every socket's deadline afresh. Returns how many
    /// sockets it looked at (every socket, each round).
    fn egress_everything(&mut self, now: SmolInstant) -> u64 {
        let per_round = (self.tcp.len() + self.udp.len()) as u64;
        let mut visits = 0;
        for _ in 0..MAX_EGRESS_ROUNDS {
            visits += per_round;
            match self
                .iface
                .poll_egress(now, &mut self.device, &mut self.sockets)
            {
                PollResult::None => break,
                PollResult::SocketStateChanged => {}
            }
        }
        self.schedule.clear_deadlines();
        for (handle, _) in self.sockets.iter() {
            let at = self.iface.poll_at_socket(now, &self.sockets, handle);
            self.schedule.set_deadline(handle, at);
        }
        visits
    }

    /// Lets one socket send what it has (smoltcp patch 6, `poll_egress_socket`), until it
    /// has nothing more or the outbound queue is full, then records its next deadline.
    /// Returns how many times it looked at the socket.
    fn egress_socket(&mut self, now: SmolInstant, handle: SocketHandle) -> u64 {
        let mut visits = 0;
        for _ in 0..MAX_EGRESS_ROUNDS {
            visits += 1;
            match self
                .iface
                .poll_egress_socket(now, &mut self.device, &mut self.sockets, handle)
            {
                PollResult::None => break,
                PollResult::SocketStateChanged => {}
            }
        }
        self.record_deadline(now, handle);
        visits
    }

    /// Records the next deadline smoltcp gives the socket behind `handle`.
    fn record_deadline(&mut self, now: SmolInstant, handle: SocketHandle) {
        let at = self.iface.poll_at_socket(now, &self.sockets, handle);
        self.schedule.set_deadline(handle, at);
    }

    /// A turn's egress: the sockets calls touched and those whose deadline has come, or
    /// every socket when the stack asked for that (see [`EgressSchedule`]).
    fn egress_turn(&mut self, now: SmolInstant) {
        let mut sockets = std::mem::take(&mut self.turn_sockets);
        match self.schedule.take_turn(now, &mut sockets) {
            Turn::Everything => {
                self.stats.turn_egress_visits += self.egress_everything(now);
            }
            Turn::These => {
                for &handle in &sockets {
                    if self.tcp.contains_key(&handle) || self.udp.contains_key(&handle) {
                        self.stats.turn_egress_visits += self.egress_socket(now, handle);
                    }
                }
            }
        }
        sockets.clear();
        self.turn_sockets = sockets;
    }

    /// How long the owner may sleep: until the earliest deadline of any socket.
    fn poll_delay(&mut self, now: SmolInstant) -> Option<SmolDuration> {
        self.schedule.next_deadline().map(|at| {
            if at > now {
                at - now
            } else {
                SmolDuration::ZERO
            }
        })
    }

    /// Debug builds check, at the end of each turn, that no socket's deadline is earlier
    /// than the one recorded for it: a change to a socket that was not noted
    /// ([`StackState::touch`]) would otherwise leave it waiting until something else woke
    /// the owner.
    #[cfg(debug_assertions)]
    fn check_deadlines(&mut self, now: SmolInstant) {
        let handles: Vec<SocketHandle> = self.sockets.iter().map(|(handle, _)| handle).collect();
        for handle in handles {
            let actual = self.iface.poll_at_socket(now, &self.sockets, handle);
            let recorded = self.schedule.deadline(handle);
            if let Some(actual) = actual {
                assert!(
                    recorded.is_some_and(|recorded| recorded <= actual),
                    "socket {handle} wants egress at {actual} but the schedule has {recorded:?}"
                );
            }
        }
    }

    /// After a turn: finished handshakes go to their listener, closed orphans go away.
    fn settle(&mut self, now: SmolInstant) {
        let mut index = 0;
        while let Some(&handle) = self.pending.get(index) {
            let socket = self.sockets.get_mut::<tcp::Socket<'static>>(handle);
            match socket.state() {
                tcp::State::SynReceived => index += 1,
                tcp::State::Listen => {
                    self.pending.swap_remove(index);
                    self.remove_tcp(handle);
                }
                tcp::State::Closed if socket.remote_endpoint().is_none() => {
                    self.pending.swap_remove(index);
                    self.remove_tcp(handle);
                }
                tcp::State::Closed => index += 1, // its RST is still to be sent
                _ => {
                    // Established (or already past it): an idle connection must not time out.
                    socket.set_timeout(None);
                    self.record_deadline(now, handle);
                    self.pending.swap_remove(index);
                    if let Some(entry) = self.tcp.get_mut(&handle)
                        && let TcpRole::Pending(id) = entry.role
                    {
                        entry.role = TcpRole::Ready(id);
                        if let Some(listener) = self.listeners.get_mut(&id) {
                            listener.pending = listener.pending.saturating_sub(1);
                            listener.ready.push_back(handle);
                            if let Some(waker) = listener.waker.take() {
                                waker.wake();
                            }
                        }
                    }
                }
            }
        }

        let mut index = 0;
        while let Some(&handle) = self.orphans.get(index) {
            let socket = self.sockets.get::<tcp::Socket<'static>>(handle);
            // An orphan in TIME-WAIT goes at once too: both sides have closed and every
            // byte was acknowledged. Holding its buffers (4 MiB at the defaults) for
            // smoltcp's 10 s of TIME-WAIT would make every short connection cost that
            // much memory for 10 s; the price is that a FIN retransmitted because our last
            // ACK was lost is answered with RST, which ends an already closed connection.
            let done = match socket.state() {
                tcp::State::Closed => socket.remote_endpoint().is_none(),
                tcp::State::TimeWait => true,
                _ => false,
            };
            if done {
                self.orphans.swap_remove(index);
                self.remove_tcp(handle);
            } else {
                index += 1;
            }
        }

        let mut index = 0;
        while let Some(&handle) = self.udp_orphans.get(index) {
            if self
                .sockets
                .get::<udp::Socket<'static>>(handle)
                .send_queue()
                == 0
            {
                self.udp_orphans.swap_remove(index);
                self.remove_udp(handle);
            } else {
                index += 1;
            }
        }
    }

    /// Stops the stack: every connection is reset and every waiting task is woken to see it.
    fn shut_down(&mut self, now: SmolInstant) {
        self.stopped = true;
        let tcp: Vec<SocketHandle> = self.tcp.keys().copied().collect();
        for handle in tcp {
            self.sockets.get_mut::<tcp::Socket<'static>>(handle).abort();
        }
        let udp: Vec<SocketHandle> = self.udp.keys().copied().collect();
        for handle in udp {
            self.sockets.get_mut::<udp::Socket<'static>>(handle).close();
        }
        for listener in self.listeners.values_mut() {
            if let Some(waker) = listener.waker.take() {
                waker.wake();
            }
        }
        self.egress_everything(now);
    }
}

/// The owner task: it alone polls the smoltcp interface. It sleeps until an inbound batch,
/// a socket call (`Shared::wake`), a free slot in the outbound channel, or smoltcp's next
/// timer, and never polls in a loop.
async fn run_owner(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<PacketBatch>,
    outbound: mpsc::Sender<PacketBatch>,
) {
    enum Event<'a> {
        Inbound(PacketBatch),
        InboundClosed,
        Permit(mpsc::Permit<'a, PacketBatch>),
        OutboundClosed,
        Wake,
        Timer,
    }

    let timer = tokio::time::sleep(MAX_SLEEP);
    tokio::pin!(timer);
    let mut timer_armed = false;
    let mut inbound_open = true;
    let mut outbound_open = true;
    // The outbound channel was full: packets wait in the device until a slot frees up.
    let mut blocked = false;

    loop {
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        let event = tokio::select! {
            batch = inbound.recv(), if inbound_open => match batch {
                Some(batch) => Event::Inbound(batch),
                None => Event::InboundClosed,
            },
            permit = outbound.reserve(), if blocked && outbound_open => match permit {
                Ok(permit) => Event::Permit(permit),
                Err(_) => Event::OutboundClosed,
            },
            () = shared.wake.notified() => Event::Wake,
            () = &mut timer, if timer_armed => Event::Timer,
        };

        match event {
            Event::Inbound(batch) => {
                ingest_batch(&shared, batch);
                for _ in 0..BATCHES_PER_TURN {
                    match inbound.try_recv() {
                        Ok(batch) => ingest_batch(&shared, batch),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            inbound_open = false;
                            break;
                        }
                    }
                }
            }
            Event::InboundClosed => inbound_open = false,
            Event::Permit(permit) => {
                let batch = {
                    let mut st = shared.lock();
                    let batch = st.device.take_tx();
                    st.stats.packets_out += batch.len() as u64;
                    batch
                };
                if !batch.is_empty() {
                    permit.send(batch);
                }
                blocked = false;
            }
            Event::OutboundClosed => {
                outbound_open = false;
                blocked = false;
            }
            Event::Wake | Event::Timer => {}
        }

        let now = shared.now();
        let (out, delay) = {
            let mut guard = shared.lock();
            let st = &mut *guard;
            st.stats.poll_loop_iterations += 1;
            st.iface.poll_maintenance(now);
            st.egress_turn(now);
            st.settle(now);
            #[cfg(debug_assertions)]
            st.check_deadlines(now);
            let out = if blocked {
                Vec::new()
            } else {
                st.device.take_tx()
            };
            let delay = st.poll_delay(now);
            (out, delay)
        };

        if !out.is_empty() {
            if !outbound_open {
                shared.lock().stats.outbound_dropped += out.len() as u64;
            } else {
                let count = out.len() as u64;
                match outbound.try_send(out) {
                    Ok(()) => shared.lock().stats.packets_out += count,
                    Err(mpsc::error::TrySendError::Full(out)) => {
                        blocked = true;
                        shared.lock().device.restore_tx(out);
                    }
                    Err(mpsc::error::TrySendError::Closed(out)) => {
                        outbound_open = false;
                        shared.lock().stats.outbound_dropped += out.len() as u64;
                    }
                }
            }
        }

        match delay {
            // While blocked, "send now" waits for the outbound slot instead of spinning.
            Some(delay) if !(blocked && delay == SmolDuration::ZERO) => {
                let delay = std::time::Duration::from_micros(delay.total_micros()).min(MAX_SLEEP);
                timer.as_mut().reset(tokio::time::Instant::now() + delay);
                timer_armed = true;
            }
            _ => timer_armed = false,
        }
    }

    let now = shared.now();
    let out = {
        let mut st = shared.lock();
        st.shut_down(now);
        st.device.take_tx()
    };
    if outbound_open && !out.is_empty() {
        let _ = outbound.try_send(out);
    }
}

/// Starts the threads of a stack with [`OwnerThread::Dedicated`] and runs `owner` there;
/// returns the handle of the owner's runtime.
///
/// The runtime is made, run and dropped on the `netstack-keeper` thread, never on the
/// caller's, which may be inside another runtime (where dropping one panics). The keeper
/// waits for the owner to end (the stack stopped), then drops the runtime with whatever
/// else still runs on it.
fn start_owner_thread(
    owner: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::runtime::Handle, NetstackError> {
    let (started, start) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("netstack-keeper".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("netstack")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started.send(Err(error));
                    return;
                }
            };
            let owner = runtime.spawn(owner);
            let _ = started.send(Ok(runtime.handle().clone()));
            let _ = runtime.block_on(owner);
            drop(runtime);
        })
        .map_err(NetstackError::Thread)?;
    match start.recv() {
        Ok(result) => result.map_err(NetstackError::Thread),
        Err(_) => Err(NetstackError::Thread(std::io::Error::other(
            "the netstack's thread ended while starting",
        ))),
    }
}

/// Processes an inbound batch one packet at a time (runs of in-order segments joined first,
/// when [`NetstackConfig::receive_coalescing`] is on), releasing the lock every few packets.
fn ingest_batch(shared: &Shared, batch: PacketBatch) {
    let mut coalescer = shared.config.receive_coalescing.map(Coalescer::new);
    let mut packets = batch.into_iter().peekable();
    while packets.peek().is_some() {
        let now = shared.now();
        let mut st = shared.lock();
        for packet in packets.by_ref().take(PACKETS_PER_LOCK) {
            let Some(info) = st.inspect(&packet) else {
                continue;
            };
            match coalescer.as_mut() {
                Some(coalescer) => {
                    for (packet, info) in coalescer.push(packet, info).into_iter().flatten() {
                        st.deliver(packet, info, now);
                    }
                }
                None => st.deliver(packet, info, now),
            }
        }
        if packets.peek().is_none()
            && let Some(coalescer) = coalescer.as_mut()
        {
            if let Some((packet, info)) = coalescer.finish() {
                st.deliver(packet, info, now);
            }
            st.stats.coalesced_runs += coalescer.runs_joined;
            st.stats.coalesced_packets += coalescer.packets_joined;
        }
    }
}

pub(crate) fn to_smol(duration: std::time::Duration) -> SmolDuration {
    SmolDuration::from_micros(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// A random number from the standard library's per-process hash keys (no extra crate):
/// seeds smoltcp's initial sequence numbers and the ephemeral port cursor.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

//! The UDP shell around the peer engine: one tokio task owns a UDP socket and a
//! [`PeerEngine`], and nothing else touches either.
//!
//! Datagrams move in batches: `recvmmsg` with GRO on receive and `sendmsg` with GSO on send
//! (through `quinn-udp`, which falls back to plain calls where the kernel lacks them). IP
//! packets cross the seam to the local stack as batches over bounded channels, the same shape
//! the netstack uses: `mpsc::Sender<Vec<Bytes>>` into the engine (outbound packets),
//! `mpsc::Receiver<Vec<Bytes>>` out of it (decrypted inbound packets).
//!
//! The task never blocks on the stack: when the inbound channel is full, the batch is
//! dropped and counted (as a NIC drops on a full ring), which also rules out a deadlock
//! between the two directions. The stack, in turn, may wait on the outbound channel: that is
//! the backpressure a slow socket should exert.
//!
//! Time: the task passes `Instant::now()` as `now` on every wake-up and arms a tokio timer at
//! the earliest `poll_timeout` of the machines it owns.
//!
//! With [`UdpEngine::spawn_with_paths`] the task also owns path discovery
//! ([`PathSelector`]), the STUN refresh ([`PublicEndpoints`]) and the relay client
//! ([`RelayClient`], set with [`EngineCommand::SetRelay`]). Datagrams are told apart on
//! arrival: STUN ([`postern_proto::stun::is_stun`]) goes to the refresh, disco
//! ([`crate::disco::message::is_disco`]) to the selector, the rest to the engine; the same
//! for datagrams from the relay. Transmits on [`PathId::Relay`] go to the relay client, the
//! rest to the socket. Each path the selector picks is set on the engine, with roaming off
//! for that peer.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::disco::{DiscoPeer, DiscoStats, PathEvent, PathSelector, PublicEndpoints};
use crate::relay::{RelayDatagram, RelaySet};
use postern_proto::NodePublicKey;
use postern_proto::netmap::RegionId;

use crate::engine::filter::InboundFilter;
use crate::engine::session::WireGuardResponder;
use crate::engine::{
    EngineError, EngineStats, Event, PathId, PeerConfig, PeerEngine, PeerStats, TransmitRun,
};
use boringtun::x25519::PublicKey;
use ipnet::IpNet;

/// Largest UDP payload one receive buffer holds (a full GRO batch is at most 64 KiB).
const RECV_BUF: usize = 65_536;
/// Socket buffer size asked for in each direction.
const SOCKET_BUFFER: usize = 4 << 20;
/// Most outbound packet batches taken from the channel before the socket is served again.
const OUTBOUND_BATCHES_PER_WAKE: usize = 16;
/// Most receive calls per wake-up before timers and outbound traffic get a turn.
const RECV_CALLS_PER_WAKE: usize = 8;
/// Most relay datagrams taken per wake-up.
const RELAY_DATAGRAMS_PER_WAKE: usize = 64;

/// How the shell is sized.
#[derive(Debug, Clone, Copy)]
pub struct UdpShellConfig {
    /// Capacity, in batches, of the channels to and from the local stack.
    pub channel_batches: usize,
    /// Capacity of the event channel (handshakes, roaming, ...); events beyond it are
    /// dropped, never waited for.
    pub event_capacity: usize,
}

impl Default for UdpShellConfig {
    fn default() -> Self {
        Self {
            channel_batches: 64,
            event_capacity: 256,
        }
    }
}

/// A command to the task that owns the engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineCommand {
    /// Add a peer; the result comes back on the channel.
    AddPeer(PeerConfig, oneshot::Sender<Result<(), EngineError>>),
    /// Remove a peer; whether it existed comes back.
    RemovePeer(PublicKey, oneshot::Sender<bool>),
    /// Read one peer's counters.
    PeerStats(PublicKey, oneshot::Sender<Option<PeerStats>>),
    /// Read the engine's drop counters.
    EngineStats(oneshot::Sender<EngineStats>),
    /// Point a peer at a new path; whether the peer exists comes back.
    SetEndpoint(PublicKey, PathId, oneshot::Sender<bool>),
    /// Replace a peer's allowed IPs; whether the peer exists comes back.
    SetAllowedIps(PublicKey, Vec<IpNet>, oneshot::Sender<bool>),
    /// Replace the inbound packet filter.
    SetFilter(NewFilter),
    /// Read every peer's counters.
    AllPeerStats(oneshot::Sender<Vec<(PublicKey, PeerStats)>>),
    /// Use these relay connections (the home relay, and other regions on demand) for
    /// relayed paths, or
    /// none; the previous client is shut down.
    SetRelay(Option<RelaySet>),
    /// Replace the peers path discovery probes (from the netmap). Ignored without paths.
    SetDiscoPeers(Vec<DiscoPeer>),
    /// Replace the STUN servers the public endpoints are learned from.
    SetStunServers(Vec<SocketAddr>),
    /// This node's local endpoints (what call-me-maybes carry besides the public ones).
    SetLocalEndpoints(Vec<SocketAddr>),
    /// Read path discovery's counters (`None` without paths).
    DiscoStats(oneshot::Sender<Option<DiscoStats>>),
    /// Join the local stack's seam straight to the task (see [`StackLink`]); from then on
    /// decrypted packets go to the stack instead of [`UdpEngine::inbound`].
    LinkStack(StackLink),
}

/// The local stack's end of the packet seam, joined straight to the shell's task with
/// [`EngineCommand::LinkStack`], so that no pump task sits between the stack and the engine
/// (each hop between tasks is a wake-up per batch on both sides).
///
/// Once linked, the shell reads outbound batches from `from_stack` as well as from
/// [`UdpEngine::outbound`] and puts decrypted batches into `to_stack` (dropped and counted in
/// [`ShellCounters::inbound_dropped`] when it is full, as without a link). The task still
/// ends when every [`UdpEngine::outbound`] sender is gone, not when the stack goes away.
pub struct StackLink {
    /// Packets the stack sends (a netstack seam's `from_stack`).
    pub from_stack: mpsc::Receiver<Vec<Bytes>>,
    /// Where decrypted packets go (a netstack seam's `to_stack`).
    pub to_stack: mpsc::Sender<Vec<Bytes>>,
    /// Sees each decrypted packet first; a packet it returns `true` for was consumed and is
    /// not handed to the stack (the node daemon answers pings this way). It runs on the
    /// engine's task, so it must be quick and never block.
    pub tap: Option<InboundTap>,
}

/// A look at decrypted packets before the stack gets them; see [`StackLink::tap`].
pub type InboundTap = Box<dyn FnMut(&[u8]) -> bool + Send>;

impl std::fmt::Debug for StackLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackLink")
            .field("tap", &self.tap.is_some())
            .finish_non_exhaustive()
    }
}

/// An inbound filter on its way to the engine (see [`EngineCommand::SetFilter`]).
pub struct NewFilter(pub Box<dyn InboundFilter>);

impl std::fmt::Debug for NewFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewFilter(..)")
    }
}

/// The handles of a running UDP engine task.
#[derive(Debug)]
pub struct UdpEngine {
    /// IP packets from the local stack to peers, in batches. Dropping every sender stops
    /// the task.
    pub outbound: mpsc::Sender<Vec<Bytes>>,
    /// Decrypted IP packets from peers that passed the filter, in batches (none once a
    /// stack is linked with [`EngineCommand::LinkStack`]: they go to the stack instead).
    pub inbound: mpsc::Receiver<Vec<Bytes>>,
    /// Everything but inbound packets: handshakes, expiry, roaming, no-route.
    pub events: mpsc::Receiver<Event>,
    /// Commands to the engine (peers, counters).
    pub commands: mpsc::Sender<EngineCommand>,
    /// Counters of the shell itself.
    pub counters: Arc<ShellCounters>,
    /// The socket's local address.
    pub local_addr: SocketAddr,
    /// The public endpoints STUN learned (empty until it learned some, or with UDP blocked).
    pub public_endpoints: watch::Receiver<Vec<SocketAddr>>,
    /// The task; it ends with `Ok` when `outbound` is closed, or with the socket's error.
    pub task: JoinHandle<io::Result<()>>,
}

/// What the shell dropped or did, beyond the engine's own counters.
#[derive(Debug, Default)]
pub struct ShellCounters {
    /// Inbound packets dropped because the local stack's channel was full.
    pub inbound_dropped: AtomicU64,
    /// Events dropped because the event channel was full.
    pub events_dropped: AtomicU64,
    /// Datagrams the socket refused to send (unreachable, too big, ...).
    pub send_errors: AtomicU64,
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Datagrams handed to the relay client.
    pub relay_out: AtomicU64,
    /// Datagrams received from the relay.
    pub relay_in: AtomicU64,
    /// Relayed datagrams dropped (no relay client, or its queue was full).
    pub relay_dropped: AtomicU64,
}

impl UdpEngine {
    /// Starts the task that drives `engine` over `socket` (bound, any blocking mode). Must be
    /// called inside a tokio runtime.
    ///
    /// Fails if the socket cannot be registered with tokio or set up for batched I/O.
    pub fn spawn<R>(
        engine: PeerEngine<R>,
        socket: std::net::UdpSocket,
        config: UdpShellConfig,
    ) -> io::Result<Self>
    where
        R: WireGuardResponder + 'static,
        R::Session: 'static,
    {
        Self::spawn_with_paths(engine, socket, config, None)
    }

    /// Like [`Self::spawn`], with path discovery: `paths` picks each managed peer's path
    /// (see the [module docs](self)); the relay client and STUN servers come later as
    /// commands.
    pub fn spawn_with_paths<R>(
        engine: PeerEngine<R>,
        socket: std::net::UdpSocket,
        config: UdpShellConfig,
        paths: Option<PathSelector>,
    ) -> io::Result<Self>
    where
        R: WireGuardResponder + 'static,
        R::Session: 'static,
    {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        // Best effort: bursts (a handshake flushing its queue, a GSO batch) should not
        // overflow a small default buffer. The kernel caps these at net.core.*mem_max.
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let local_addr = socket.local_addr()?;
        let capacity = config.channel_batches.max(1);
        let (outbound_tx, outbound_rx) = mpsc::channel(capacity);
        let (inbound_tx, inbound_rx) = mpsc::channel(capacity);
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let counters = Arc::new(ShellCounters::default());
        let (public_tx, public_endpoints) = watch::channel(Vec::new());
        let task = Shell {
            engine,
            socket,
            state,
            outbound: outbound_rx,
            inbound: inbound_tx,
            events: events_tx,
            commands: commands_rx,
            counters: Arc::clone(&counters),
            pending_inbound: Vec::new(),
            paths,
            public: PublicEndpoints::new(rand::random(), Instant::now()),
            public_tx,
            local_endpoints: Vec::new(),
            relay: None,
            link: None,
        };
        let task = tokio::spawn(task.run());
        Ok(Self {
            outbound: outbound_tx,
            inbound: inbound_rx,
            events: events_rx,
            commands: commands_tx,
            counters,
            local_addr,
            public_endpoints,
            task,
        })
    }
}

struct Shell<R: WireGuardResponder> {
    engine: PeerEngine<R>,
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    outbound: mpsc::Receiver<Vec<Bytes>>,
    inbound: mpsc::Sender<Vec<Bytes>>,
    events: mpsc::Sender<Event>,
    commands: mpsc::Receiver<EngineCommand>,
    counters: Arc<ShellCounters>,
    pending_inbound: Vec<Bytes>,
    paths: Option<PathSelector>,
    public: PublicEndpoints,
    public_tx: watch::Sender<Vec<SocketAddr>>,
    local_endpoints: Vec<SocketAddr>,
    relay: Option<RelaySet>,
    link: Option<StackLink>,
}

impl<R: WireGuardResponder> Shell<R> {
    async fn run(mut self) -> io::Result<()> {
        let mut bufs: Vec<Vec<u8>> = (0..quinn_udp::BATCH_SIZE)
            .map(|_| vec![0u8; RECV_BUF])
            .collect();
        let mut metas = vec![RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut commands_open = true;
        loop {
            self.drain_engine().await?;
            let deadline = self.next_deadline();
            tokio::select! {
                readable = self.socket.readable() => {
                    readable?;
                    self.receive(&mut bufs, &mut metas)?;
                }
                batch = self.outbound.recv() => {
                    let Some(batch) = batch else {
                        return Ok(());
                    };
                    let now = Instant::now();
                    for packet in batch {
                        self.engine.handle_outbound(&packet, now);
                    }
                    for _ in 1..OUTBOUND_BATCHES_PER_WAKE {
                        let Ok(batch) = self.outbound.try_recv() else { break };
                        for packet in batch {
                            self.engine.handle_outbound(&packet, now);
                        }
                    }
                }
                batch = recv_stack(&mut self.link) => {
                    match batch {
                        Some(batch) => self.seal_stack_batch(batch),
                        None => self.link = None,
                    }
                }
                datagram = recv_relay(&mut self.relay) => {
                    match datagram {
                        Some((region, datagram)) => self.relayed(region, datagram),
                        None => self.relay = None,
                    }
                    for _ in 1..RELAY_DATAGRAMS_PER_WAKE {
                        let Some((region, datagram)) = self.relay.as_mut().and_then(RelaySet::try_recv) else {
                            break;
                        };
                        self.relayed(region, datagram);
                    }
                }
                command = self.commands.recv(), if commands_open => {
                    match command {
                        Some(command) => self.command(command),
                        None => commands_open = false,
                    }
                }
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
            }
            if let Some(paths) = &mut self.paths
                && paths.poll_timeout().is_some_and(|t| t <= now)
            {
                paths.handle_timeout(now);
            }
            if self.public.poll_timeout().is_some_and(|t| t <= now) {
                self.public.handle_timeout(now);
            }
            if let Some(relay) = &mut self.relay
                && relay.poll_timeout().is_some_and(|t| t <= now)
            {
                relay.handle_timeout(now);
            }
        }
    }

    /// Encrypts a batch from the linked stack, and what else it queued meanwhile.
    fn seal_stack_batch(&mut self, batch: Vec<Bytes>) {
        let now = Instant::now();
        for packet in &batch {
            self.engine.handle_outbound(packet, now);
        }
        for _ in 1..OUTBOUND_BATCHES_PER_WAKE {
            let Some(Ok(batch)) = self.link.as_mut().map(|l| l.from_stack.try_recv()) else {
                break;
            };
            for packet in &batch {
                self.engine.handle_outbound(packet, now);
            }
        }
    }

    /// Hands decrypted packets to the linked stack (through its tap), or to
    /// [`UdpEngine::inbound`] without one; a full channel drops the batch and counts it.
    fn deliver_inbound(&mut self, mut batch: Vec<Bytes>) {
        let sent = match &mut self.link {
            Some(link) => {
                if let Some(tap) = &mut link.tap {
                    batch.retain(|packet| !tap(packet));
                }
                if batch.is_empty() {
                    return;
                }
                let len = batch.len() as u64;
                link.to_stack.try_send(batch).map_err(|_| len)
            }
            None => {
                let len = batch.len() as u64;
                self.inbound.try_send(batch).map_err(|_| len)
            }
        };
        if let Err(len) = sent {
            self.counters
                .inbound_dropped
                .fetch_add(len, Ordering::Relaxed);
        }
    }

    /// The earliest instant one of the machines wants to be woken at.
    fn next_deadline(&self) -> Instant {
        let engine = self
            .engine
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + crate::engine::TIMER_TICK);
        let paths = self.paths.as_ref().and_then(PathSelector::poll_timeout);
        let stun = self.public.poll_timeout();
        let relay = self.relay.as_ref().and_then(RelaySet::poll_timeout);
        [Some(engine), paths, stun, relay]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(engine)
    }

    /// A datagram from the relay of `region`: disco to the selector, the rest to the
    /// engine.
    fn relayed(&mut self, region: RegionId, datagram: RelayDatagram) {
        self.counters.relay_in.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if let Some(relay) = &mut self.relay {
            relay.note_received(region, now);
        }
        let from = PathId::Relay {
            region,
            peer: datagram.src,
        };
        if crate::disco::message::is_disco(&datagram.packet) {
            if let Some(paths) = &mut self.paths {
                paths.handle_input(from, &datagram.packet, now);
            }
        } else {
            self.engine.handle_input(from, &datagram.packet, now);
        }
    }

    /// Hands a datagram for a relayed path to the relay connection of `region`.
    fn send_relayed(&mut self, region: RegionId, peer: NodePublicKey, payload: Bytes) {
        let now = Instant::now();
        let sent = self
            .relay
            .as_mut()
            .is_some_and(|relay| relay.try_send(region, peer, payload, now).is_ok());
        let counter = if sent {
            &self.counters.relay_out
        } else {
            &self.counters.relay_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends one small datagram (disco, STUN) without waiting: dropped if the socket is
    /// busy, as the lossy protocols they are expect.
    fn send_direct(&self, dst: SocketAddr, payload: &[u8]) {
        match self.socket.try_send_to(payload, dst) {
            Ok(_) => self.counters.datagrams_out.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.send_errors.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Applies the selector's path changes to the engine.
    fn apply_paths(&mut self) {
        let Some(paths) = &mut self.paths else {
            return;
        };
        while let Some(event) = paths.poll_event() {
            match event {
                PathEvent::PathChanged { peer, path } => {
                    tracing::info!(peer = %peer.short(), %path, "path to peer changed");
                    let key = peer.to_x25519();
                    self.engine.set_endpoint(&key, path);
                    self.engine.set_roaming(&key, false);
                }
            }
        }
    }

    /// After the engine's endpoint for `key` was set from outside (netmap), puts back the
    /// path the selector chose, if it manages the peer.
    fn reassert_path(&mut self, key: &PublicKey) {
        let Some(paths) = &self.paths else {
            return;
        };
        let node = NodePublicKey::from(*key);
        if let Some(path) = paths.current_path(&node) {
            self.engine.set_endpoint(key, path);
            self.engine.set_roaming(key, false);
        }
    }

    /// The endpoints call-me-maybes carry: local, then public.
    fn own_endpoints(&self) -> Vec<SocketAddr> {
        let mut all = self.local_endpoints.clone();
        for addr in self.public.endpoints() {
            if !all.contains(addr) {
                all.push(*addr);
            }
        }
        all
    }

    fn receive(&mut self, bufs: &mut [Vec<u8>], metas: &mut [RecvMeta]) -> io::Result<()> {
        for _ in 0..RECV_CALLS_PER_WAKE {
            let mut slices: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let received = self.socket.try_io(Interest::READABLE, || {
                self.state.recv((&self.socket).into(), &mut slices, metas)
            });
            let count = match received {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // ICMP errors for earlier sends surface here; they are not fatal.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            for (meta, buf) in metas.iter().zip(bufs.iter()).take(count) {
                let data = buf.get(..meta.len).unwrap_or(&[]);
                let stride = if meta.stride == 0 {
                    meta.len
                } else {
                    meta.stride
                };
                for datagram in data.chunks(stride.max(1)) {
                    self.counters.datagrams_in.fetch_add(1, Ordering::Relaxed);
                    let from = PathId::Direct(meta.addr);
                    if matches!(datagram, [1..=4, 0, 0, 0, ..]) {
                        // The common case first: a WireGuard message.
                        self.engine.handle_input(from, datagram, now);
                    } else if postern_proto::stun::is_stun(datagram) {
                        self.public.handle_input(meta.addr, datagram);
                    } else if crate::disco::message::is_disco(datagram) {
                        if let Some(paths) = &mut self.paths {
                            paths.handle_input(from, datagram, now);
                        }
                    } else {
                        self.engine.handle_input(from, datagram, now);
                    }
                }
            }
        }
        Ok(())
    }

    fn command(&mut self, command: EngineCommand) {
        let now = Instant::now();
        // A requester that went away does not care about the answer.
        match command {
            EngineCommand::AddPeer(peer, reply) => {
                let key = peer.public_key;
                let _ = reply.send(self.engine.add_peer(peer, now));
                self.reassert_path(&key);
            }
            EngineCommand::RemovePeer(key, reply) => {
                let _ = reply.send(self.engine.remove_peer(&key));
            }
            EngineCommand::PeerStats(key, reply) => {
                let _ = reply.send(self.engine.peer_stats(&key));
            }
            EngineCommand::EngineStats(reply) => {
                let _ = reply.send(self.engine.stats());
            }
            EngineCommand::SetEndpoint(key, path, reply) => {
                let _ = reply.send(self.engine.set_endpoint(&key, path));
                self.reassert_path(&key);
            }
            EngineCommand::SetAllowedIps(key, allowed_ips, reply) => {
                let _ = reply.send(self.engine.set_allowed_ips(&key, &allowed_ips));
            }
            EngineCommand::SetFilter(NewFilter(filter)) => self.engine.set_filter(filter),
            EngineCommand::AllPeerStats(reply) => {
                let keys: Vec<PublicKey> = self.engine.peers().collect();
                let stats = keys
                    .into_iter()
                    .filter_map(|key| self.engine.peer_stats(&key).map(|s| (key, s)))
                    .collect();
                let _ = reply.send(stats);
            }
            EngineCommand::SetRelay(client) => {
                if let Some(old) = self.relay.take() {
                    tokio::spawn(old.shutdown());
                }
                let region = client.as_ref().map(RelaySet::home_region);
                self.relay = client;
                if let Some(paths) = &mut self.paths {
                    paths.set_home_relay(region, now);
                }
            }
            EngineCommand::SetDiscoPeers(peers) => {
                if let Some(paths) = &mut self.paths {
                    paths.set_peers(peers, now);
                }
            }
            EngineCommand::SetStunServers(servers) => self.public.set_servers(servers, now),
            EngineCommand::SetLocalEndpoints(endpoints) => {
                self.local_endpoints = endpoints;
                let own = self.own_endpoints();
                if let Some(paths) = &mut self.paths {
                    paths.set_own_endpoints(own);
                }
            }
            EngineCommand::DiscoStats(reply) => {
                let _ = reply.send(self.paths.as_ref().map(PathSelector::stats));
            }
            EngineCommand::LinkStack(link) => self.link = Some(link),
        }
    }

    /// Sends what the engine wants to send and hands events and packets on.
    async fn drain_engine(&mut self) -> io::Result<()> {
        self.apply_paths();
        self.drain_side_channels();
        while let Some(event) = self.engine.poll_event() {
            match event {
                Event::InboundPacket { packet, .. } => self.pending_inbound.push(packet),
                other => {
                    tracing::debug!(event = ?other, "peer engine event");
                    if self.events.try_send(other).is_err() {
                        self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if !self.pending_inbound.is_empty() {
            let batch = std::mem::take(&mut self.pending_inbound);
            self.deliver_inbound(batch);
        }
        let max_segments = self.state.max_gso_segments();
        while let Some(run) = self.engine.poll_transmit_run(max_segments) {
            match run.dst {
                PathId::Relay { region, peer } => {
                    for datagram in run.segments() {
                        self.send_relayed(region, peer, datagram);
                    }
                }
                PathId::Direct(_) => {
                    send_run(&self.socket, &self.state, &self.counters, &run).await?;
                }
            }
        }
        Ok(())
    }
}

impl<R: WireGuardResponder> Shell<R> {
    /// Sends what path discovery and the STUN refresh queued, and publishes new public
    /// endpoints.
    fn drain_side_channels(&mut self) {
        let now = Instant::now();
        let mut disco = Vec::new();
        if let Some(paths) = &mut self.paths {
            while let Some(t) = paths.poll_transmit() {
                disco.push(t);
            }
        }
        for t in disco {
            match t.dst {
                PathId::Direct(addr) => self.send_direct(addr, &t.payload),
                PathId::Relay { region, peer } => self.send_relayed(region, peer, t.payload),
            }
        }
        while let Some((server, request)) = self.public.poll_transmit(now) {
            self.send_direct(server, &request);
        }
        if self.public.take_changed() {
            let public = self.public.endpoints().to_vec();
            tracing::info!(?public, "public endpoints (STUN)");
            self.public_tx.send_replace(public);
            let own = self.own_endpoints();
            if let Some(paths) = &mut self.paths {
                paths.set_own_endpoints(own);
            }
        }
    }
}

/// The next batch from the linked stack (`None` once it closed), or never without one.
async fn recv_stack(link: &mut Option<StackLink>) -> Option<Vec<Bytes>> {
    match link {
        Some(link) => link.from_stack.recv().await,
        None => std::future::pending().await,
    }
}

/// The next datagram from the relay connections (with its region), or never without them.
async fn recv_relay(relay: &mut Option<RelaySet>) -> Option<(RegionId, RelayDatagram)> {
    match relay {
        Some(client) => client.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends one run of datagrams, waiting for the socket to be writable. A run the socket
/// refuses is counted in [`ShellCounters::send_errors`] and dropped.
async fn send_run(
    socket: &tokio::net::UdpSocket,
    state: &UdpSocketState,
    counters: &ShellCounters,
    run: &TransmitRun,
) -> io::Result<()> {
    let PathId::Direct(destination) = run.dst else {
        // Relay paths are carried by the relay client, not this socket.
        return Ok(());
    };
    let transmit = quinn_udp::Transmit {
        destination,
        ecn: None,
        contents: &run.contents,
        segment_size: run.segment_size,
        src_ip: None,
    };
    loop {
        socket.writable().await?;
        let sent = socket.try_io(Interest::WRITABLE, || {
            state.try_send((&socket).into(), &transmit)
        });
        match sent {
            Ok(()) => {
                counters
                    .datagrams_out
                    .fetch_add(run.count as u64, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if run.segment_size.is_some() && state.max_gso_segments() == 1 => {
                // The kernel refused GSO and quinn-udp turned it off: send one by one.
                tracing::debug!(error = %e, "GSO send failed; retrying datagrams singly");
                for segment in run.segments() {
                    let single = quinn_udp::Transmit {
                        destination,
                        ecn: None,
                        contents: &segment,
                        segment_size: None,
                        src_ip: None,
                    };
                    let sent = socket.try_io(Interest::WRITABLE, || {
                        state.try_send((&socket).into(), &single)
                    });
                    count_send(counters, sent);
                }
                return Ok(());
            }
            Err(e) => {
                // UDP is lossy anyway: a datagram the socket refuses (unreachable, too big,
                // a queued ICMP error) is dropped and counted; the engine keeps serving.
                if is_transient(&e) || is_per_datagram(&e) {
                    tracing::debug!(error = %e, %destination, "UDP send failed");
                } else {
                    tracing::warn!(error = %e, %destination, "UDP send failed");
                }
                counters
                    .send_errors
                    .fetch_add(run.count as u64, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
}

fn count_send(counters: &ShellCounters, sent: io::Result<()>) {
    match sent {
        Ok(()) => counters.datagrams_out.fetch_add(1, Ordering::Relaxed),
        Err(_) => counters.send_errors.fetch_add(1, Ordering::Relaxed),
    };
}

/// Errors about one destination or one datagram: drop it and keep serving.
fn is_per_datagram(e: &io::Error) -> bool {
    quinn_udp::is_msg_size_err(e)
        || matches!(
            e.kind(),
            io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::InvalidInput
                | io::ErrorKind::PermissionDenied
        )
}

/// Errors that an ICMP message for an earlier datagram leaves on the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

//! The sans-IO WireGuard peer engine.
//!
//! [`PeerEngine`] holds this node's WireGuard peers: for each, a session (boringtun's
//! `noise::Tunn` behind [`session::WireGuardSession`]), its allowed IPs, its current path
//! and its counters. It performs no I/O and reads no clock: the caller feeds it datagrams
//! from the network ([`PeerEngine::handle_input`]), IP packets from the local stack
//! ([`PeerEngine::handle_outbound`]) and the passing of time
//! ([`PeerEngine::handle_timeout`]), then drains what it produced:
//!
//! 1. [`PeerEngine::poll_transmit`] until `None`: datagrams to send;
//! 2. [`PeerEngine::poll_event`] until `None`: decrypted packets for the local stack and
//!    state changes (handshake completed, session expired, endpoint changed, no route);
//! 3. [`PeerEngine::poll_timeout`]: when to call [`PeerEngine::handle_timeout`] next.
//!
//! Do all three after every `handle_*` call (or after a batch of them). `now` must come
//! from one monotonic clock; the engine treats a `now` earlier than one it saw as that one.
//! See [`session`] for how boringtun's internal clock is kept on the engine's `now`, which
//! is what makes in-memory tests with a fake clock deterministic.
//!
//! What the engine does for each peer: handshakes on demand (the first outbound packet starts
//! one and is queued until it completes), rekeying after `REKEY_AFTER_TIME`, keepalives
//! (passive, and persistent when configured), session expiry, endpoint roaming (an
//! authenticated datagram from a new path becomes the peer's endpoint), cookie replies when
//! handshakes arrive faster than the configured rate, the cryptokey-routing check (a
//! decrypted packet's source must be one of the sender's allowed IPs) and the inbound
//! filter (see [`filter`]). Nothing from the network can make it panic: bad input is
//! counted in [`EngineStats`] and dropped.

pub mod allowed_ips;
pub mod filter;
pub mod path;
pub mod session;
mod transmit_queue;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;

use self::allowed_ips::AllowedIps;
use self::filter::{AllowAll, FlowTable, InboundFilter, PacketMeta};
pub use self::path::PathId;
use self::session::{
    Boringtun, Screened, SessionError, SessionOutput, WireGuardResponder, WireGuardSession,
};
use self::transmit_queue::TransmitQueue;
pub use self::transmit_queue::{MAX_RUN_BYTES, TransmitRun};

/// How often session timers run (boringtun asks for about every 250 ms).
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often the handshake rate limiter's count is reset.
pub const RATE_LIMIT_RESET: Duration = Duration::from_secs(1);
/// How often idle flows are forgotten.
pub const FLOW_EXPIRY_INTERVAL: Duration = Duration::from_secs(10);
/// Handshake messages per second the node accepts before answering with cookie replies
/// (boringtun's own device uses the same figure).
pub const DEFAULT_HANDSHAKES_PER_SECOND: u64 = 100;
/// Largest IP packet the engine accepts from the local stack.
pub const MAX_IP_PACKET: usize = 65_535;

/// Overhead WireGuard adds to an IP packet: 16-byte header and 16-byte tag.
const DATA_OVERHEAD: usize = 32;
/// Capacity of a new receive buffer: packets are split off it until it is used up, and it
/// is freed when the last of them is.
const RECEIVE_CHUNK: usize = 64 << 10;
/// Size of a WireGuard handshake initiation.
const HANDSHAKE_INIT_LEN: usize = 148;
/// Message type of a handshake initiation.
const MSG_HANDSHAKE_INIT: u8 = 1;
/// Message type of a handshake response.
const MSG_HANDSHAKE_RESPONSE: u8 = 2;
/// Message type of a transport data message.
const MSG_DATA: u8 = 4;
/// Peer indices are 24 bits: boringtun puts a session counter in the low 8 bits.
const INDEX_MASK: u32 = 0x00ff_ffff;

/// How the engine is set up.
pub struct EngineConfig {
    /// This node's WireGuard private key.
    pub private_key: StaticSecret,
    /// Handshake messages per second before cookie replies start; see
    /// [`DEFAULT_HANDSHAKES_PER_SECOND`].
    pub handshakes_per_second: u64,
    /// Most outbound flows remembered so replies pass the inbound filter.
    pub flow_capacity: usize,
}

impl EngineConfig {
    /// Defaults for everything but the key.
    pub fn new(private_key: StaticSecret) -> Self {
        Self {
            private_key,
            handshakes_per_second: DEFAULT_HANDSHAKES_PER_SECOND,
            flow_capacity: 65_536,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("private_key", &"<redacted>")
            .field("handshakes_per_second", &self.handshakes_per_second)
            .field("flow_capacity", &self.flow_capacity)
            .finish()
    }
}

/// One peer as the engine needs it.
#[derive(Clone)]
pub struct PeerConfig {
    /// The peer's static public key; it identifies the peer.
    pub public_key: PublicKey,
    /// Optional preshared key mixed into handshakes.
    pub preshared_key: Option<[u8; 32]>,
    /// Networks routed to this peer, and the only source addresses accepted from it.
    pub allowed_ips: Vec<IpNet>,
    /// Where to send to first; `None` waits for the peer to reach us.
    pub endpoint: Option<PathId>,
    /// Send a keepalive every this many seconds (keeps NAT mappings open).
    pub persistent_keepalive: Option<u16>,
}

impl std::fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("public_key", &self.public_key)
            .field("preshared_key", &self.preshared_key.map(|_| "<redacted>"))
            .field("allowed_ips", &self.allowed_ips)
            .field("endpoint", &self.endpoint)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

/// A datagram for the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The path to send it on.
    pub dst: PathId,
    /// The WireGuard message.
    pub payload: Bytes,
}

/// Something the caller should know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A decrypted IP packet from `peer` that passed the filter: give it to the local stack.
    InboundPacket {
        /// The sender.
        peer: PublicKey,
        /// The IP packet.
        packet: Bytes,
    },
    /// A handshake with `peer` completed: a fresh session is in use.
    HandshakeCompleted {
        /// The peer.
        peer: PublicKey,
    },
    /// The session with `peer` expired (no successful handshake for too long); the peer is
    /// idle until traffic starts a new handshake.
    SessionExpired {
        /// The peer.
        peer: PublicKey,
    },
    /// An authenticated datagram from `peer` arrived on a new path, which is now its
    /// endpoint (roaming).
    EndpointChanged {
        /// The peer.
        peer: PublicKey,
        /// The new path.
        path: PathId,
    },
    /// An outbound packet matched no peer's allowed IPs and was dropped (the local stack may
    /// answer with ICMP unreachable).
    NoRoute {
        /// The packet's destination.
        dst: IpAddr,
    },
}

/// Counters of one peer, for `postern status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PeerStats {
    /// IP packets sent to the peer (handed to its session).
    pub tx_packets: u64,
    /// Bytes of those IP packets.
    pub tx_bytes: u64,
    /// IP packets received from the peer and delivered.
    pub rx_packets: u64,
    /// Bytes of those IP packets.
    pub rx_bytes: u64,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
    /// The path datagrams for the peer go to.
    pub endpoint: Option<PathId>,
}

/// Node-wide counters of what was dropped and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EngineStats {
    /// Datagrams that were not valid WireGuard messages or failed authentication.
    pub invalid_datagrams: u64,
    /// Data messages replayed or outside the replay window.
    pub replayed: u64,
    /// Messages for a peer or session this engine does not have.
    pub unknown_session: u64,
    /// Handshake initiations from keys that are not peers.
    pub unknown_peer: u64,
    /// Cookie replies sent because handshakes arrived too fast.
    pub cookie_replies: u64,
    /// Handshake messages dropped under load without a source to send a cookie to.
    pub under_load: u64,
    /// Outbound packets that matched no peer.
    pub no_route: u64,
    /// Outbound IP packets that were not IP or too large.
    pub invalid_outbound: u64,
    /// Datagrams for peers with no known endpoint.
    pub no_endpoint: u64,
    /// Decrypted packets whose source was not one of the sender's allowed IPs.
    pub source_not_allowed: u64,
    /// Decrypted packets the inbound filter refused.
    pub filtered: u64,
}

/// Why a peer could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The key is already a peer; remove it first.
    #[error("peer {0} is already configured; remove it before adding it again")]
    PeerExists(String),
    /// The key is this node's own.
    #[error("a node cannot be its own peer: the peer's public key is this node's key")]
    SelfPeer,
    /// All 2^24 peer indices are in use.
    #[error("too many peers: no free peer index")]
    TooManyPeers,
}

/// The WireGuard peer engine; see the [module docs](self).
pub struct PeerEngine<R: WireGuardResponder = Boringtun> {
    responder: R,
    public_key: PublicKey,
    peers: HashMap<u32, Peer<R::Session>>,
    by_key: HashMap<[u8; 32], u32>,
    routes: AllowedIps<u32>,
    filter: Box<dyn InboundFilter>,
    flows: FlowTable,
    transmits: TransmitQueue,
    events: VecDeque<Event>,
    scratch: Vec<u8>,
    /// Where datagrams are decrypted: an accepted packet is split off it, not copied.
    received: BytesMut,
    stats: EngineStats,
    last_now: Instant,
    next_timers: Instant,
    next_rate_reset: Instant,
    next_flow_expiry: Instant,
    next_index: u32,
}

struct Peer<S> {
    public_key: PublicKey,
    session: S,
    stats: PeerStats,
    /// We answered an initiation; the handshake completes with the first data message.
    awaiting_confirmation: bool,
    /// `SessionExpired` was reported and no handshake completed since.
    expired: bool,
    /// Whether an authenticated datagram from a new path moves the endpoint there.
    roaming: bool,
}

impl PeerEngine<Boringtun> {
    /// An engine with no peers, using boringtun, created at `now`.
    pub fn new(config: EngineConfig, now: Instant) -> Self {
        let public_key = PublicKey::from(&config.private_key);
        let responder = Boringtun::new(now, config.private_key, config.handshakes_per_second);
        Self::with_responder(responder, public_key, config.flow_capacity, now)
    }
}

impl<R: WireGuardResponder> PeerEngine<R> {
    /// An engine over another WireGuard implementation. `public_key` is this node's key.
    pub fn with_responder(
        responder: R,
        public_key: PublicKey,
        flow_capacity: usize,
        now: Instant,
    ) -> Self {
        Self {
            responder,
            public_key,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            routes: AllowedIps::new(),
            filter: Box::new(AllowAll),
            flows: FlowTable::new(flow_capacity),
            transmits: TransmitQueue::default(),
            events: VecDeque::new(),
            scratch: vec![0u8; MAX_IP_PACKET + DATA_OVERHEAD + 256],
            received: BytesMut::new(),
            stats: EngineStats::default(),
            last_now: now,
            next_timers: now + TIMER_TICK,
            next_rate_reset: now + RATE_LIMIT_RESET,
            next_flow_expiry: now + FLOW_EXPIRY_INTERVAL,
            next_index: 1,
        }
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Adds a peer. Its allowed IPs take over any network routed to another peer before (as
    /// `wg set` does). Fails if the key is already a peer or is this node's own.
    pub fn add_peer(&mut self, config: PeerConfig, now: Instant) -> Result<(), EngineError> {
        let now = self.clock(now);
        let key = config.public_key.to_bytes();
        if key == self.public_key.to_bytes() {
            return Err(EngineError::SelfPeer);
        }
        if self.by_key.contains_key(&key) {
            return Err(EngineError::PeerExists(encode_key(&config.public_key)));
        }
        let index = self.free_index()?;
        let session = self.responder.new_session(
            now,
            &config.public_key,
            config.preshared_key,
            config.persistent_keepalive,
            index,
        );
        for net in &config.allowed_ips {
            self.routes.insert(*net, index);
        }
        self.by_key.insert(key, index);
        self.peers.insert(
            index,
            Peer {
                public_key: config.public_key,
                session,
                stats: PeerStats {
                    endpoint: config.endpoint,
                    ..PeerStats::default()
                },
                awaiting_confirmation: false,
                expired: false,
                roaming: true,
            },
        );
        Ok(())
    }

    /// Removes a peer, its session and its routes. Returns whether it was there.
    pub fn remove_peer(&mut self, peer: &PublicKey) -> bool {
        let Some(index) = self.by_key.remove(&peer.to_bytes()) else {
            return false;
        };
        self.routes.remove_value(&index);
        self.peers.remove(&index).is_some()
    }

    /// Sets where datagrams for `peer` go (e.g. after path discovery picked a better one).
    /// Returns whether the peer exists.
    pub fn set_endpoint(&mut self, peer: &PublicKey, path: PathId) -> bool {
        match self.peer_mut(peer) {
            Some(p) => {
                p.stats.endpoint = Some(path);
                true
            }
            None => false,
        }
    }

    /// Turns roaming for `peer` on (the default) or off. With roaming off, the endpoint
    /// changes only through [`Self::set_endpoint`]: call this when path discovery
    /// ([`crate::disco::PathSelector`]) picks the peer's path, so that a datagram that came
    /// the other way (through the relay while direct is chosen, or back) does not move it.
    /// Returns whether the peer exists.
    pub fn set_roaming(&mut self, peer: &PublicKey, roaming: bool) -> bool {
        match self.peer_mut(peer) {
            Some(p) => {
                p.roaming = roaming;
                true
            }
            None => false,
        }
    }

    /// Replaces `peer`'s allowed IPs (a netmap delta). As with [`Self::add_peer`], networks
    /// routed to another peer move to this one. Returns whether the peer exists.
    pub fn set_allowed_ips(&mut self, peer: &PublicKey, allowed_ips: &[IpNet]) -> bool {
        let Some(&index) = self.by_key.get(&peer.to_bytes()) else {
            return false;
        };
        self.routes.remove_value(&index);
        for net in allowed_ips {
            self.routes.insert(*net, index);
        }
        true
    }

    /// Replaces the inbound filter (by default [`AllowAll`]). Replies to flows this node
    /// opened pass whatever the filter says.
    pub fn set_filter(&mut self, filter: Box<dyn InboundFilter>) {
        self.filter = filter;
    }

    /// Counters of one peer, or `None` if it is not a peer.
    pub fn peer_stats(&self, peer: &PublicKey) -> Option<PeerStats> {
        let index = self.by_key.get(&peer.to_bytes())?;
        self.peers.get(index).map(|p| p.stats)
    }

    /// The public keys of all peers, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.peers.values().map(|p| p.public_key)
    }

    /// Node-wide drop counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Processes one datagram that arrived from the network on `from`.
    ///
    /// Call for every datagram received, then drain [`Self::poll_transmit`] and
    /// [`Self::poll_event`]. Invalid, unauthenticated or replayed datagrams are dropped and
    /// counted in [`EngineStats`].
    pub fn handle_input(&mut self, from: PathId, datagram: &[u8], now: Instant) {
        let now = self.clock(now);
        let src_ip = from.source_ip();
        let index = match self
            .responder
            .screen(now, src_ip, datagram, &mut self.scratch)
        {
            Screened::CookieReply(cookie) => {
                self.stats.cookie_replies += 1;
                self.transmits.push_copy(from, cookie);
                return;
            }
            Screened::Rejected(e) => {
                self.count_error(e);
                return;
            }
            Screened::Initiation { peer } => match self.by_key.get(&peer) {
                Some(index) => *index,
                None => {
                    self.stats.unknown_peer += 1;
                    return;
                }
            },
            Screened::ForIndex(receiver) => receiver >> 8,
        };
        let Some(peer) = self.peers.get_mut(&index) else {
            self.stats.unknown_session += 1;
            return;
        };
        let kind = datagram.first().copied().unwrap_or(0);
        // Decrypted into the receive buffer, so the packet leaves as a slice of it.
        let room = datagram.len().max(HANDSHAKE_INIT_LEN);
        if self.received.capacity() < room {
            self.received = BytesMut::with_capacity(room.max(RECEIVE_CHUNK));
        }
        self.received.clear();
        self.received.resize(room, 0);
        let base = self.received.as_ptr();
        match peer
            .session
            .decapsulate(now, src_ip, datagram, &mut self.received[..])
        {
            SessionOutput::WriteToNetwork(reply) => {
                self.transmits.push_copy(from, reply);
                roam(peer, from, &mut self.events);
                match kind {
                    MSG_HANDSHAKE_RESPONSE => handshake_completed(peer, now, &mut self.events),
                    MSG_HANDSHAKE_INIT => peer.awaiting_confirmation = true,
                    _ => {}
                }
                self.flush_queued(index, now);
            }
            SessionOutput::WriteToTunnel(packet) => {
                roam(peer, from, &mut self.events);
                if peer.awaiting_confirmation {
                    handshake_completed(peer, now, &mut self.events);
                }
                let accepted = accept_inbound(
                    packet,
                    index,
                    &self.routes,
                    &self.flows,
                    self.filter.as_ref(),
                    now,
                    &mut self.stats,
                );
                if accepted {
                    peer.stats.rx_packets += 1;
                    peer.stats.rx_bytes += packet.len() as u64;
                    let packet = if packet.as_ptr() == base {
                        let len = packet.len();
                        self.received.split_to(len).freeze()
                    } else {
                        Bytes::copy_from_slice(packet)
                    };
                    self.events.push_back(Event::InboundPacket {
                        peer: peer.public_key,
                        packet,
                    });
                }
            }
            SessionOutput::Done => {
                if kind == MSG_DATA {
                    // An authenticated keepalive.
                    roam(peer, from, &mut self.events);
                    if peer.awaiting_confirmation {
                        handshake_completed(peer, now, &mut self.events);
                    }
                }
            }
            SessionOutput::Error(e) => self.count_error(e),
        }
    }

    /// Sends one IP packet from the local stack to the peer whose allowed IPs contain its
    /// destination.
    ///
    /// Call for every outbound packet, then drain [`Self::poll_transmit`] and
    /// [`Self::poll_event`]. Without a session the packet is queued and a handshake starts.
    /// A packet for no peer is dropped with [`Event::NoRoute`].
    pub fn handle_outbound(&mut self, packet: &[u8], now: Instant) {
        let now = self.clock(now);
        let Some(meta) = PacketMeta::parse(packet).filter(|_| packet.len() <= MAX_IP_PACKET) else {
            self.stats.invalid_outbound += 1;
            return;
        };
        let Some(&index) = self.routes.longest_match(meta.dst) else {
            self.stats.no_route += 1;
            self.events.push_back(Event::NoRoute { dst: meta.dst });
            return;
        };
        let Some(peer) = self.peers.get_mut(&index) else {
            self.stats.no_route += 1;
            return;
        };
        self.flows.note_outbound(&meta, now);
        peer.stats.tx_packets += 1;
        peer.stats.tx_bytes += packet.len() as u64;
        let endpoint = peer.stats.endpoint;
        // Sealed straight into the transmit queue (a data message is the packet, padded
        // to 16 bytes, plus 32; a handshake initiation sent instead is 148).
        let room = (packet.len() + DATA_OVERHEAD + 16).max(HANDSHAKE_INIT_LEN);
        let (reservation, space) = self.transmits.reserve(room);
        let base = space.as_ptr();
        let written = match peer.session.encapsulate(now, packet, space) {
            SessionOutput::WriteToNetwork(datagram) if datagram.as_ptr() == base => {
                Ok(Some(datagram.len()))
            }
            // A session that wrote elsewhere (none does today): copied below.
            SessionOutput::WriteToNetwork(datagram) => Err(datagram.to_vec()),
            SessionOutput::Error(e) => {
                self.transmits.abandon(reservation);
                self.count_error(e);
                return;
            }
            SessionOutput::Done | SessionOutput::WriteToTunnel(_) => Ok(None),
        };
        match (written, endpoint) {
            (Ok(Some(len)), Some(dst)) => self.transmits.commit(reservation, dst, len),
            (Ok(None), _) => self.transmits.abandon(reservation),
            (Err(datagram), Some(dst)) => {
                self.transmits.abandon(reservation);
                self.transmits.push_copy(dst, &datagram);
            }
            (_, None) => {
                self.transmits.abandon(reservation);
                self.stats.no_endpoint += 1;
            }
        }
    }

    /// Runs timers that are due at `now`: session timers (handshake retransmission, rekey,
    /// keepalives, expiry) every [`TIMER_TICK`], the handshake rate limiter's reset every
    /// second, and flow expiry.
    ///
    /// Call when the instant from [`Self::poll_timeout`] is reached (calling earlier or more
    /// often is harmless), then drain [`Self::poll_transmit`] and [`Self::poll_event`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        if now >= self.next_rate_reset {
            self.responder.reset_rate_limit(now);
            self.next_rate_reset = now + RATE_LIMIT_RESET;
        }
        if now >= self.next_flow_expiry {
            self.flows.expire(now);
            self.next_flow_expiry = now + FLOW_EXPIRY_INTERVAL;
        }
        if now < self.next_timers {
            return;
        }
        self.next_timers = now + TIMER_TICK;
        for peer in self.peers.values_mut() {
            match peer.session.update_timers(now, &mut self.scratch) {
                SessionOutput::WriteToNetwork(datagram) => match peer.stats.endpoint {
                    Some(dst) => self.transmits.push_copy(dst, datagram),
                    None => self.stats.no_endpoint += 1,
                },
                SessionOutput::Error(SessionError::Expired) => {
                    if !peer.expired {
                        peer.expired = true;
                        self.events.push_back(Event::SessionExpired {
                            peer: peer.public_key,
                        });
                    }
                }
                SessionOutput::Error(_) | SessionOutput::Done | SessionOutput::WriteToTunnel(_) => {
                }
            }
        }
    }

    /// The next datagram to send, if any.
    ///
    /// Call after every `handle_*` call until it returns `None`; datagrams left in the
    /// queue are never sent.
    #[must_use = "a datagram the engine produced must be sent or deliberately dropped"]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop()
    }

    /// The next run of datagrams to send with one segmented send (UDP GSO), if any:
    /// consecutive datagrams to one destination, all of one size but a shorter last one, at
    /// most `max_segments` of them and [`MAX_RUN_BYTES`] in all. They lie back to back
    /// already, so taking them copies nothing.
    ///
    /// An alternative to [`Self::poll_transmit`] (the two take from the same queue), with
    /// the same duty: call until it returns `None`.
    #[must_use = "datagrams the engine produced must be sent or deliberately dropped"]
    pub fn poll_transmit_run(&mut self, max_segments: usize) -> Option<TransmitRun> {
        self.transmits.pop_run(max_segments)
    }

    /// The next event, if any.
    ///
    /// Call after every `handle_*` call until it returns `None`; inbound packets arrive
    /// this way.
    #[must_use = "events carry decrypted packets and state changes"]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    ///
    /// Call after every `handle_*` call and (re)arm the timer with the answer. It is always
    /// `Some`: the engine has periodic work (timers every [`TIMER_TICK`]).
    #[must_use = "the engine's timers only run if the caller arms a timer"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(
            self.next_timers
                .min(self.next_rate_reset)
                .min(self.next_flow_expiry),
        )
    }

    /// Keeps time monotonic whatever the caller passes.
    fn clock(&mut self, now: Instant) -> Instant {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    /// After a handshake: send what the session queued while it had no keys.
    fn flush_queued(&mut self, index: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        // Bounded by the session's own queue (boringtun keeps at most 256 packets); the
        // counter guards against a session that never says Done.
        for _ in 0..1024 {
            match peer.session.decapsulate(now, None, &[], &mut self.scratch) {
                SessionOutput::WriteToNetwork(datagram) => match peer.stats.endpoint {
                    Some(dst) => self.transmits.push_copy(dst, datagram),
                    None => self.stats.no_endpoint += 1,
                },
                SessionOutput::Error(e) => {
                    self.count_error(e);
                    break;
                }
                SessionOutput::Done | SessionOutput::WriteToTunnel(_) => break,
            }
        }
    }

    fn count_error(&mut self, e: SessionError) {
        match e {
            SessionError::Replay => self.stats.replayed += 1,
            SessionError::NoSession => self.stats.unknown_session += 1,
            SessionError::UnderLoad => self.stats.under_load += 1,
            SessionError::InvalidPacket
            | SessionError::Unauthenticated
            | SessionError::Expired
            | SessionError::Other(_) => self.stats.invalid_datagrams += 1,
        }
    }

    fn peer_mut(&mut self, peer: &PublicKey) -> Option<&mut Peer<R::Session>> {
        let index = self.by_key.get(&peer.to_bytes())?;
        self.peers.get_mut(index)
    }

    fn free_index(&mut self) -> Result<u32, EngineError> {
        for _ in 0..=INDEX_MASK {
            let candidate = self.next_index & INDEX_MASK;
            self.next_index = self.next_index.wrapping_add(1);
            if candidate != 0 && !self.peers.contains_key(&candidate) {
                return Ok(candidate);
            }
        }
        Err(EngineError::TooManyPeers)
    }
}

impl<R: WireGuardResponder> std::fmt::Debug for PeerEngine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEngine")
            .field("public_key", &encode_key(&self.public_key))
            .field("peers", &self.peers.len())
            .field("routes", &self.routes.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Base64 form of a public key, as `wg` prints it.
pub fn encode_key(key: &PublicKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

fn roam<S>(peer: &mut Peer<S>, from: PathId, events: &mut VecDeque<Event>) {
    if peer.stats.endpoint != Some(from) && (peer.roaming || peer.stats.endpoint.is_none()) {
        peer.stats.endpoint = Some(from);
        events.push_back(Event::EndpointChanged {
            peer: peer.public_key,
            path: from,
        });
    }
}

fn handshake_completed<S>(peer: &mut Peer<S>, now: Instant, events: &mut VecDeque<Event>) {
    peer.awaiting_confirmation = false;
    peer.expired = false;
    peer.stats.last_handshake = Some(now);
    events.push_back(Event::HandshakeCompleted {
        peer: peer.public_key,
    });
}

/// Cryptokey routing and the filter: may this decrypted packet from peer `index` pass?
fn accept_inbound(
    packet: &[u8],
    index: u32,
    routes: &AllowedIps<u32>,
    flows: &FlowTable,
    filter: &dyn InboundFilter,
    now: Instant,
    stats: &mut EngineStats,
) -> bool {
    let Some(meta) = PacketMeta::parse(packet) else {
        stats.invalid_datagrams += 1;
        return false;
    };
    if routes.longest_match(meta.src) != Some(&index) {
        stats.source_not_allowed += 1;
        return false;
    }
    if flows.is_reply(&meta, now) || filter.allows(&meta) {
        return true;
    }
    stats.filtered += 1;
    false
}

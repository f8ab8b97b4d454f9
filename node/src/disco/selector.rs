//! [`PathSelector`]: probes each peer's candidate paths and picks the one to use.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postern_proto::netmap::RegionId;
use postern_proto::{DiscoPublicKey, NodePublicKey, x25519};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::message::{self, DiscoBox, DiscoMessage, TxId};
use super::{
    CALL_ME_MAYBE_MIN_INTERVAL, HEARTBEAT, LEARNED_ENDPOINT_TTL, MAX_CANDIDATES, PING_TIMEOUT,
    TRUST,
};
use crate::engine::PathId;

/// One peer as path discovery needs it (from the netmap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoPeer {
    /// The peer's node (WireGuard) key.
    pub node_key: NodePublicKey,
    /// The peer's disco key.
    pub disco_key: DiscoPublicKey,
    /// The endpoints the peer reported (local and public).
    pub endpoints: Vec<SocketAddr>,
    /// The peer's home relay region, if it reported one.
    pub home_relay: Option<RegionId>,
}

/// A disco datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoTransmit {
    /// Where: a direct endpoint, or the relay to a peer.
    pub dst: PathId,
    /// The sealed message.
    pub payload: Bytes,
}

/// What the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathEvent {
    /// Send the peer's WireGuard datagrams on `path` from now on (the engine's
    /// `set_endpoint`).
    PathChanged {
        /// The peer.
        peer: NodePublicKey,
        /// The path chosen.
        path: PathId,
    },
}

/// Counters of what path discovery did and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoStats {
    /// Pings sent.
    pub pings_sent: u64,
    /// Pongs received that matched a ping.
    pub pongs_received: u64,
    /// Call-me-maybes sent through the relay.
    pub call_me_maybes_sent: u64,
    /// Disco datagrams dropped: unknown sender, failed authentication, malformed, or a
    /// pong nobody waited for.
    pub dropped: u64,
}

/// The sans-IO path selector; see the [module docs](super).
///
/// Call [`Self::handle_input`] for every disco datagram (from the socket or the relay),
/// [`Self::handle_timeout`] when [`Self::poll_timeout`] is due, and after each call drain
/// [`Self::poll_transmit`] and [`Self::poll_event`].
pub struct PathSelector {
    own_node_key: NodePublicKey,
    own_disco: x25519::StaticSecret,
    peers: HashMap<NodePublicKey, PeerPaths>,
    by_disco: HashMap<DiscoPublicKey, NodePublicKey>,
    home_relay: Option<RegionId>,
    own_endpoints: Vec<SocketAddr>,
    transmits: VecDeque<DiscoTransmit>,
    events: VecDeque<PathEvent>,
    rng: StdRng,
    nonce_prefix: [u8; 4],
    nonce_counter: u64,
    stats: DiscoStats,
}

impl std::fmt::Debug for PathSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathSelector")
            .field("own_node_key", &self.own_node_key)
            .field("peers", &self.peers.len())
            .field("home_relay", &self.home_relay)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Where a candidate endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The netmap: kept as long as the netmap lists it.
    Netmap,
    /// A call-me-maybe or the source of a ping: kept for [`LEARNED_ENDPOINT_TTL`].
    Learned,
}

#[derive(Debug)]
struct Candidate {
    addr: SocketAddr,
    source: Source,
    learned_at: Instant,
    last_pong: Option<Instant>,
    latency: Option<Duration>,
    last_ping: Option<Instant>,
}

struct PeerPaths {
    disco_key: DiscoPublicKey,
    sealer: DiscoBox,
    candidates: Vec<Candidate>,
    pending: HashMap<TxId, (SocketAddr, Instant)>,
    home_relay: Option<RegionId>,
    current: Option<PathId>,
    next_probe: Instant,
    last_call_me_maybe_pings: Option<Instant>,
}

impl PathSelector {
    /// A selector for the node with `own_node_key` and disco secret `own_disco`; `seed`
    /// feeds transaction ids and nonce prefixes (the shell passes a random one, tests a
    /// fixed one).
    pub fn new(own_node_key: NodePublicKey, own_disco: x25519::StaticSecret, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut nonce_prefix = [0u8; 4];
        rng.fill_bytes(&mut nonce_prefix);
        Self {
            own_node_key,
            own_disco,
            peers: HashMap::new(),
            by_disco: HashMap::new(),
            home_relay: None,
            own_endpoints: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            nonce_prefix,
            nonce_counter: 0,
            stats: DiscoStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> DiscoStats {
        self.stats
    }

    /// Whether `peer` is managed here (it has a disco key in the netmap). The engine should
    /// not roam such a peer on its own: this selector picks its path.
    pub fn manages(&self, peer: &NodePublicKey) -> bool {
        self.peers.contains_key(peer)
    }

    /// The path chosen for `peer`, if any.
    pub fn current_path(&self, peer: &NodePublicKey) -> Option<PathId> {
        self.peers.get(peer).and_then(|p| p.current)
    }

    /// Sets the relay region this node is attached to (`None` while it has none): relayed
    /// paths go through it.
    pub fn set_home_relay(&mut self, region: Option<RegionId>, now: Instant) {
        if self.home_relay != region {
            self.home_relay = region;
            let keys: Vec<NodePublicKey> = self.peers.keys().copied().collect();
            for key in keys {
                self.reselect(&key, now);
            }
        }
    }

    /// Sets this node's own endpoints (local and STUN-learned), which call-me-maybes carry.
    pub fn set_own_endpoints(&mut self, endpoints: Vec<SocketAddr>) {
        self.own_endpoints = endpoints;
    }

    /// Replaces the set of peers (from a netmap). New peers are probed at once; peers that
    /// left are forgotten; a peer whose disco key changed starts over.
    pub fn set_peers(&mut self, peers: Vec<DiscoPeer>, now: Instant) {
        let keep: std::collections::HashSet<NodePublicKey> =
            peers.iter().map(|p| p.node_key).collect();
        self.peers.retain(|key, _| keep.contains(key));
        for peer in peers {
            if peer.node_key == self.own_node_key {
                continue;
            }
            let restart = self
                .peers
                .get(&peer.node_key)
                .is_none_or(|p| p.disco_key != peer.disco_key);
            if restart {
                let Ok(sealer) = DiscoBox::new(&self.own_disco, &peer.disco_key) else {
                    tracing::debug!(peer = %peer.node_key.short(), "peer's disco key is weak; no path discovery");
                    self.peers.remove(&peer.node_key);
                    continue;
                };
                self.peers.insert(
                    peer.node_key,
                    PeerPaths {
                        disco_key: peer.disco_key,
                        sealer,
                        candidates: Vec::new(),
                        pending: HashMap::new(),
                        home_relay: peer.home_relay,
                        current: None,
                        next_probe: now,
                        last_call_me_maybe_pings: None,
                    },
                );
            }
            if let Some(paths) = self.peers.get_mut(&peer.node_key) {
                paths.home_relay = peer.home_relay;
                paths
                    .candidates
                    .retain(|c| c.source == Source::Learned || peer.endpoints.contains(&c.addr));
                for addr in &peer.endpoints {
                    if let Some(c) = paths.candidates.iter_mut().find(|c| c.addr == *addr) {
                        c.source = Source::Netmap;
                    } else if paths.candidates.len() < MAX_CANDIDATES {
                        // A new endpoint is worth a probe now, not at the next heartbeat.
                        paths.next_probe = paths.next_probe.min(now);
                        paths.candidates.push(Candidate {
                            addr: *addr,
                            source: Source::Netmap,
                            learned_at: now,
                            last_pong: None,
                            latency: None,
                            last_ping: None,
                        });
                    }
                }
            }
            self.reselect(&peer.node_key, now);
        }
        self.by_disco = self
            .peers
            .iter()
            .map(|(node, p)| (p.disco_key, *node))
            .collect();
    }

    /// Processes a disco datagram that arrived on `from` (the socket's source address, or
    /// the relay with the sender's node key). Bad or unexpected datagrams are counted in
    /// [`DiscoStats::dropped`].
    pub fn handle_input(&mut self, from: PathId, datagram: &[u8], now: Instant) {
        let Some(peer_key) = message::sender(datagram)
            .ok()
            .and_then(|disco| self.by_disco.get(&disco).copied())
        else {
            self.stats.dropped += 1;
            return;
        };
        let Some(peer) = self.peers.get(&peer_key) else {
            self.stats.dropped += 1;
            return;
        };
        let msg = match peer.sealer.open(datagram) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::trace!(%err, peer = %peer_key.short(), "disco datagram dropped");
                self.stats.dropped += 1;
                return;
            }
        };
        if let PathId::Relay { peer: via, .. } = from
            && via != peer_key
        {
            // The relay vouches for the sender's node key; it must be the disco key's owner.
            self.stats.dropped += 1;
            return;
        }
        match msg {
            DiscoMessage::Ping { tx, node_key } => {
                if node_key != peer_key {
                    self.stats.dropped += 1;
                    return;
                }
                self.on_ping(peer_key, from, tx, now);
            }
            DiscoMessage::Pong { tx, .. } => self.on_pong(peer_key, from, tx, now),
            DiscoMessage::CallMeMaybe { endpoints } => {
                self.on_call_me_maybe(peer_key, endpoints, now);
            }
        }
    }

    /// Runs what is due at `now`: heartbeats (pings, call-me-maybes), expiry of pings and
    /// learned endpoints, and path choice when a direct path's trust runs out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let keys: Vec<NodePublicKey> = self.peers.keys().copied().collect();
        for key in keys {
            let due = self.peers.get(&key).is_some_and(|p| p.next_probe <= now);
            if due {
                self.expire(&key, now);
                self.probe(&key, now);
                if let Some(p) = self.peers.get_mut(&key) {
                    p.next_probe = now + HEARTBEAT;
                }
            }
            self.reselect(&key, now);
        }
    }

    /// When [`Self::handle_timeout`] must run next: the next heartbeat, or the moment the
    /// chosen direct path's trust runs out. `None` without peers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                let trust_end = match p.current {
                    Some(PathId::Direct(addr)) => p
                        .candidates
                        .iter()
                        .find(|c| c.addr == addr)
                        .and_then(|c| c.last_pong)
                        .map(|at| at + TRUST),
                    _ => None,
                };
                [Some(p.next_probe), trust_end]
            })
            .flatten()
            .min()
    }

    /// The next disco datagram to send. Drain after every `handle_*` call.
    #[must_use = "disco datagrams must be sent for paths to be found"]
    pub fn poll_transmit(&mut self) -> Option<DiscoTransmit> {
        self.transmits.pop_front()
    }

    /// The next path change. Drain after every `handle_*` call.
    #[must_use = "a path change must reach the engine"]
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    fn on_ping(&mut self, peer_key: NodePublicKey, from: PathId, tx: TxId, now: Instant) {
        let observed = match from {
            PathId::Direct(addr) => addr,
            // Through the relay there is no address to report.
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        self.send(peer_key, from, &DiscoMessage::Pong { tx, observed });
        if let PathId::Direct(addr) = from {
            // The ping's source is where the peer's NAT maps it towards us: a candidate.
            // Without a direct path yet, ping back at once (at most once a second per
            // endpoint): the ping proves the peer's NAT lets our datagrams in now.
            let seeking = self
                .peers
                .get(&peer_key)
                .is_some_and(|p| trusted_direct(p, now).is_none());
            let new = self.peers.get_mut(&peer_key).is_some_and(|p| {
                match p.candidates.iter().position(|c| c.addr == addr) {
                    Some(i) => p.candidates.get_mut(i).is_some_and(|c| {
                        c.learned_at = now;
                        seeking
                            && c.last_ping.is_none_or(|at| {
                                now.saturating_duration_since(at) >= CALL_ME_MAYBE_MIN_INTERVAL
                            })
                    }),
                    None => learn(&mut p.candidates, addr, now),
                }
            });
            if new {
                self.ping(peer_key, addr, now);
            }
        }
    }

    fn on_pong(&mut self, peer_key: NodePublicKey, from: PathId, tx: TxId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&peer_key) else {
            return;
        };
        let Some((addr, sent)) = peer.pending.remove(&tx) else {
            self.stats.dropped += 1;
            return;
        };
        if from != PathId::Direct(addr) {
            // The answer came back another way: the path pinged is not proven.
            self.stats.dropped += 1;
            return;
        }
        self.stats.pongs_received += 1;
        if let Some(c) = peer.candidates.iter_mut().find(|c| c.addr == addr) {
            c.last_pong = Some(now);
            c.latency = Some(now.saturating_duration_since(sent));
        }
        self.reselect(&peer_key, now);
    }

    fn on_call_me_maybe(
        &mut self,
        peer_key: NodePublicKey,
        endpoints: Vec<SocketAddr>,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get_mut(&peer_key) else {
            return;
        };
        for addr in endpoints {
            if let Some(c) = peer.candidates.iter_mut().find(|c| c.addr == addr) {
                c.learned_at = now;
            } else {
                learn(&mut peer.candidates, addr, now);
            }
        }
        let recently = peer
            .last_call_me_maybe_pings
            .is_some_and(|at| now.saturating_duration_since(at) < CALL_ME_MAYBE_MIN_INTERVAL);
        if recently {
            return;
        }
        peer.last_call_me_maybe_pings = Some(now);
        let addrs: Vec<SocketAddr> = peer.candidates.iter().map(|c| c.addr).collect();
        for addr in addrs {
            self.ping(peer_key, addr, now);
        }
    }

    /// One heartbeat for a peer: ping the chosen direct path, or, without a trusted one,
    /// every candidate plus a call-me-maybe through the relay.
    fn probe(&mut self, peer_key: &NodePublicKey, now: Instant) {
        let Some(peer) = self.peers.get(peer_key) else {
            return;
        };
        let trusted = trusted_direct(peer, now);
        let targets: Vec<SocketAddr> = match trusted {
            Some(addr) => vec![addr],
            None => peer.candidates.iter().map(|c| c.addr).collect(),
        };
        for addr in targets {
            self.ping(*peer_key, addr, now);
        }
        if trusted.is_none()
            && let Some(relay) = self.relay_path(peer_key)
            && !self.own_endpoints.is_empty()
        {
            let msg = DiscoMessage::CallMeMaybe {
                endpoints: self.own_endpoints.clone(),
            };
            self.send(*peer_key, relay, &msg);
            self.stats.call_me_maybes_sent += 1;
        }
    }

    fn ping(&mut self, peer_key: NodePublicKey, addr: SocketAddr, now: Instant) {
        let mut tx = [0u8; message::TX_ID_LEN];
        self.rng.fill_bytes(&mut tx);
        let Some(peer) = self.peers.get_mut(&peer_key) else {
            return;
        };
        peer.pending.insert(tx, (addr, now));
        if let Some(c) = peer.candidates.iter_mut().find(|c| c.addr == addr) {
            c.last_ping = Some(now);
        }
        self.stats.pings_sent += 1;
        let msg = DiscoMessage::Ping {
            tx,
            node_key: self.own_node_key,
        };
        self.send(peer_key, PathId::Direct(addr), &msg);
    }

    fn send(&mut self, peer_key: NodePublicKey, dst: PathId, msg: &DiscoMessage) {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.nonce_prefix);
        nonce[4..].copy_from_slice(&self.nonce_counter.to_be_bytes());
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        let Some(peer) = self.peers.get(&peer_key) else {
            return;
        };
        let payload = Bytes::from(peer.sealer.seal(msg, nonce));
        self.transmits.push_back(DiscoTransmit { dst, payload });
    }

    fn expire(&mut self, peer_key: &NodePublicKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(peer_key) else {
            return;
        };
        peer.pending
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < PING_TIMEOUT);
        peer.candidates.retain(|c| {
            c.source == Source::Netmap
                || now.saturating_duration_since(
                    c.last_pong.unwrap_or(c.learned_at).max(c.learned_at),
                ) < LEARNED_ENDPOINT_TTL
        });
    }

    fn relay_path(&self, peer_key: &NodePublicKey) -> Option<PathId> {
        // Datagrams go to the peer's home relay, where it is attached (the shell's
        // RelaySet dials that region on demand); without a report, to this node's home.
        // With no home relay of its own this node has no relay connection at all.
        let home = self.home_relay?;
        let region = self
            .peers
            .get(peer_key)
            .and_then(|peer| peer.home_relay)
            .unwrap_or(home);
        Some(PathId::Relay {
            region,
            peer: *peer_key,
        })
    }

    /// Picks the path: a trusted direct endpoint (the current one while it stays trusted,
    /// else the fastest), else the relay, else whatever was chosen before.
    fn reselect(&mut self, peer_key: &NodePublicKey, now: Instant) {
        let relay = self.relay_path(peer_key);
        let Some(peer) = self.peers.get_mut(peer_key) else {
            return;
        };
        let current_trusted = match peer.current {
            Some(PathId::Direct(addr)) => peer
                .candidates
                .iter()
                .any(|c| c.addr == addr && is_trusted(c, now)),
            _ => false,
        };
        let choice = if current_trusted {
            peer.current
        } else {
            trusted_direct(peer, now)
                .map(PathId::Direct)
                .or(relay)
                .or(peer.current)
        };
        if choice != peer.current
            && let Some(path) = choice
        {
            tracing::debug!(peer = %peer_key.short(), %path, "path changed");
            peer.current = Some(path);
            self.events.push_back(PathEvent::PathChanged {
                peer: *peer_key,
                path,
            });
        }
    }
}

/// Adds `addr` as a learned candidate if there is room; returns whether it was added.
fn learn(candidates: &mut Vec<Candidate>, addr: SocketAddr, now: Instant) -> bool {
    if candidates.len() >= MAX_CANDIDATES {
        return false;
    }
    candidates.push(Candidate {
        addr,
        source: Source::Learned,
        learned_at: now,
        last_pong: None,
        latency: None,
        last_ping: None,
    });
    true
}

fn is_trusted(c: &Candidate, now: Instant) -> bool {
    c.last_pong
        .is_some_and(|at| now.saturating_duration_since(at) < TRUST)
}

/// The fastest candidate that answered within [`TRUST`].
fn trusted_direct(peer: &PeerPaths, now: Instant) -> Option<SocketAddr> {
    peer.candidates
        .iter()
        .filter(|c| is_trusted(c, now))
        .min_by_key(|c| c.latency.unwrap_or(Duration::MAX))
        .map(|c| c.addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::{DiscoPrivateKey, NodePrivateKey};

    const REGION: RegionId = RegionId(1);

    /// One node's selector and identity.
    struct Side {
        sel: PathSelector,
        node: NodePublicKey,
        disco: DiscoPublicKey,
        /// The address its datagrams come from, as the other side sees it.
        public: SocketAddr,
    }

    fn side(n: u8, public: &str) -> Side {
        let node = NodePrivateKey::from_bytes([n; 32]).public_key();
        let disco_key = DiscoPrivateKey::from_bytes([n + 100; 32]);
        let mut sel = PathSelector::new(node, disco_key.to_x25519(), u64::from(n));
        sel.set_home_relay(Some(REGION), Instant::now());
        Side {
            sel,
            node,
            disco: disco_key.public_key(),
            public: public.parse().unwrap(),
        }
    }

    fn as_peer(s: &Side, endpoints: &[SocketAddr]) -> DiscoPeer {
        DiscoPeer {
            node_key: s.node,
            disco_key: s.disco,
            endpoints: endpoints.to_vec(),
            home_relay: Some(REGION),
        }
    }

    /// A network between two sides: which direct datagrams get through. Relay datagrams
    /// always do.
    struct Net {
        a_to_b: bool,
        b_to_a: bool,
    }

    /// Delivers everything both sides queued (repeatedly, until quiet). Returns the path
    /// events of each side.
    fn exchange(
        a: &mut Side,
        b: &mut Side,
        net: &Net,
        now: Instant,
    ) -> (Vec<PathEvent>, Vec<PathEvent>) {
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let mut quiet = true;
            while let Some(t) = a.sel.poll_transmit() {
                quiet = false;
                match t.dst {
                    PathId::Direct(addr) if addr == b.public && net.a_to_b => {
                        b.sel
                            .handle_input(PathId::Direct(a.public), &t.payload, now)
                    }
                    PathId::Relay { peer, .. } if peer == b.node => b.sel.handle_input(
                        PathId::Relay {
                            region: REGION,
                            peer: a.node,
                        },
                        &t.payload,
                        now,
                    ),
                    _ => {}
                }
            }
            while let Some(t) = b.sel.poll_transmit() {
                quiet = false;
                match t.dst {
                    PathId::Direct(addr) if addr == a.public && net.b_to_a => {
                        a.sel
                            .handle_input(PathId::Direct(b.public), &t.payload, now)
                    }
                    PathId::Relay { peer, .. } if peer == a.node => a.sel.handle_input(
                        PathId::Relay {
                            region: REGION,
                            peer: b.node,
                        },
                        &t.payload,
                        now,
                    ),
                    _ => {}
                }
            }
            ea.extend(std::iter::from_fn(|| a.sel.poll_event()));
            eb.extend(std::iter::from_fn(|| b.sel.poll_event()));
            if quiet {
                break;
            }
        }
        (ea, eb)
    }

    fn step(
        a: &mut Side,
        b: &mut Side,
        net: &Net,
        now: Instant,
    ) -> (Vec<PathEvent>, Vec<PathEvent>) {
        a.sel.handle_timeout(now);
        b.sel.handle_timeout(now);
        exchange(a, b, net, now)
    }

    fn relayed(peer: &Side) -> PathId {
        PathId::Relay {
            region: REGION,
            peer: peer.node,
        }
    }

    fn pair() -> (Side, Side) {
        let mut a = side(1, "198.18.0.101:41641");
        let mut b = side(2, "198.18.0.102:41641");
        let t0 = Instant::now();
        // Each knows the other's public endpoint (STUN) and an unreachable LAN address.
        a.sel.set_peers(
            vec![as_peer(
                &b,
                &[b.public, "198.19.2.10:41641".parse().unwrap()],
            )],
            t0,
        );
        b.sel.set_peers(
            vec![as_peer(
                &a,
                &[a.public, "198.19.1.10:41641".parse().unwrap()],
            )],
            t0,
        );
        (a, b)
    }

    #[test]
    fn a_peer_starts_on_the_relay_and_moves_to_direct_once_pings_get_through() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        assert_eq!(
            a.sel.poll_event(),
            Some(PathEvent::PathChanged {
                peer: b.node,
                path: relayed(&b)
            })
        );
        assert_eq!(
            b.sel.poll_event(),
            Some(PathEvent::PathChanged {
                peer: a.node,
                path: relayed(&a)
            })
        );
        let net = Net {
            a_to_b: true,
            b_to_a: true,
        };
        let (ea, eb) = step(&mut a, &mut b, &net, t0);
        assert_eq!(
            ea,
            vec![PathEvent::PathChanged {
                peer: b.node,
                path: PathId::Direct(b.public)
            }]
        );
        assert_eq!(
            eb,
            vec![PathEvent::PathChanged {
                peer: a.node,
                path: PathId::Direct(a.public)
            }]
        );
        assert!(a.sel.stats().pongs_received >= 1);
    }

    #[test]
    fn a_peer_homed_in_another_region_is_relayed_through_its_home() {
        const FAR: RegionId = RegionId(7);
        let a = side(1, "198.18.0.101:41641");
        let b = side(2, "198.18.0.102:41641");
        let c = side(3, "198.18.0.103:41641");
        let mut sel = a.sel;
        sel.set_own_endpoints(vec![a.public]);
        let t0 = Instant::now();
        let mut far_peer = as_peer(&b, &[]);
        far_peer.home_relay = Some(FAR);
        let mut unreported = as_peer(&c, &[]);
        unreported.home_relay = None;
        sel.set_peers(vec![far_peer, unreported], t0);
        sel.handle_timeout(t0);
        let relayed: Vec<PathId> = std::iter::from_fn(|| sel.poll_transmit())
            .map(|t| t.dst)
            .filter(|dst| matches!(dst, PathId::Relay { .. }))
            .collect();
        assert!(
            relayed.contains(&PathId::Relay {
                region: FAR,
                peer: b.node
            }),
            "B's call-me-maybe goes to B's home region: {relayed:?}"
        );
        assert!(
            relayed.contains(&PathId::Relay {
                region: REGION,
                peer: c.node
            }),
            "a peer without a home report is tried on this node's home: {relayed:?}"
        );
        assert_eq!(
            sel.current_path(&b.node),
            Some(PathId::Relay {
                region: FAR,
                peer: b.node
            })
        );
        // B moves home (a new netmap): its relayed path follows.
        let mut moved = as_peer(&b, &[]);
        moved.home_relay = Some(REGION);
        sel.set_peers(vec![moved], t0);
        assert_eq!(
            sel.current_path(&b.node),
            Some(PathId::Relay {
                region: REGION,
                peer: b.node
            })
        );
    }

    #[test]
    fn call_me_maybe_through_the_relay_punches_a_hole_both_nats_filter() {
        // Stateful NATs: a direct datagram gets in only after the receiver sent one out to
        // the sender. Model it: the first pings of each side are lost, the replies to the
        // other's pings (sent after its own pings went out) pass.
        let (mut a, mut b) = pair();
        a.sel.set_own_endpoints(vec![a.public]);
        b.sel.set_own_endpoints(vec![b.public]);
        let _ = std::iter::from_fn(|| a.sel.poll_event()).count();
        let _ = std::iter::from_fn(|| b.sel.poll_event()).count();
        let t0 = Instant::now();
        // A's heartbeat runs alone: its pings die at B's NAT, but open A's; its call-me-maybe
        // rides the relay.
        a.sel.handle_timeout(t0);
        let sent: Vec<DiscoTransmit> = std::iter::from_fn(|| a.sel.poll_transmit()).collect();
        let cmm: Vec<&DiscoTransmit> = sent
            .iter()
            .filter(|t| matches!(t.dst, PathId::Relay { .. }))
            .collect();
        assert_eq!(cmm.len(), 1, "one call-me-maybe through the relay");
        assert_eq!(a.sel.stats().call_me_maybes_sent, 1);
        // B receives it and pings A's endpoints at once; A's NAT now lets them in.
        b.sel.handle_input(
            PathId::Relay {
                region: REGION,
                peer: a.node,
            },
            &cmm[0].payload,
            t0,
        );
        let net = Net {
            a_to_b: true,
            b_to_a: true,
        };
        let (ea, eb) = exchange(&mut a, &mut b, &net, t0);
        assert!(
            eb.contains(&PathEvent::PathChanged {
                peer: a.node,
                path: PathId::Direct(a.public)
            }),
            "{eb:?}"
        );
        assert!(
            ea.is_empty(),
            "A pinged B a moment ago; its next heartbeat gets the pong: {ea:?}"
        );
        // A second later, B's pings make A ping back; at the latest A's next heartbeat does.
        let t1 = t0 + HEARTBEAT;
        let (ea, _) = step(&mut a, &mut b, &net, t1);
        assert!(
            ea.contains(&PathEvent::PathChanged {
                peer: b.node,
                path: PathId::Direct(b.public)
            }),
            "{ea:?}"
        );
    }

    #[test]
    fn a_dead_direct_path_falls_back_to_the_relay_within_trust_and_recovers() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let up = Net {
            a_to_b: true,
            b_to_a: true,
        };
        let down = Net {
            a_to_b: false,
            b_to_a: false,
        };
        let _ = step(&mut a, &mut b, &up, t0);
        assert_eq!(a.sel.current_path(&b.node), Some(PathId::Direct(b.public)));
        // Steady state: heartbeats keep the path, and only the chosen path is pinged.
        let mut now = t0;
        for _ in 0..5 {
            now += HEARTBEAT;
            let (ea, _) = step(&mut a, &mut b, &up, now);
            assert!(ea.is_empty(), "{ea:?}");
        }
        let died = now;
        // The path dies. Drive the selector by its own timeouts: it gives up no later than
        // TRUST after the last pong.
        let mut fell_back = None;
        while let Some(at) = a.sel.poll_timeout() {
            now = at;
            let (ea, _) = step(&mut a, &mut b, &down, now);
            if ea.contains(&PathEvent::PathChanged {
                peer: b.node,
                path: relayed(&b),
            }) {
                fell_back = Some(now);
                break;
            }
            assert!(now < died + TRUST * 2, "never fell back");
        }
        let fell_back = fell_back.unwrap();
        assert!(
            fell_back <= died + TRUST,
            "fell back {:?} after the last pong",
            fell_back - died
        );
        // The path comes back: the next heartbeat moves it to direct again.
        let mut upgraded = false;
        for _ in 0..2 {
            now += HEARTBEAT;
            let (ea, _) = step(&mut a, &mut b, &up, now);
            upgraded |= ea.contains(&PathEvent::PathChanged {
                peer: b.node,
                path: PathId::Direct(b.public),
            });
        }
        assert!(upgraded);
    }

    #[test]
    fn without_any_direct_path_traffic_stays_on_the_relay() {
        let (mut a, mut b) = pair();
        let none = Net {
            a_to_b: false,
            b_to_a: false,
        };
        let mut now = Instant::now();
        let _ = std::iter::from_fn(|| a.sel.poll_event()).count();
        for _ in 0..10 {
            let (ea, _) = step(&mut a, &mut b, &none, now);
            assert!(ea.is_empty(), "{ea:?}");
            now += HEARTBEAT;
        }
        assert_eq!(a.sel.current_path(&b.node), Some(relayed(&b)));
        assert!(a.sel.stats().pings_sent >= 20);
    }

    #[test]
    fn forged_and_misdirected_messages_change_nothing() {
        let (mut a, mut b) = pair();
        let _ = std::iter::from_fn(|| a.sel.poll_event()).count();
        let t0 = Instant::now();
        // A stranger's key seals a pong: unknown sender.
        let mut mallory = side(9, "203.0.113.9:1");
        mallory.sel.set_peers(vec![as_peer(&a, &[a.public])], t0);
        mallory.sel.handle_timeout(t0);
        while let Some(t) = mallory.sel.poll_transmit() {
            a.sel
                .handle_input(PathId::Direct(mallory.public), &t.payload, t0);
        }
        assert!(a.sel.poll_transmit().is_none(), "no pong to a stranger");
        assert_eq!(a.sel.stats().dropped, 1);
        // B's genuine ping, but relayed under another node's name: dropped.
        b.sel.handle_timeout(t0);
        let t = b.sel.poll_transmit().unwrap();
        a.sel.handle_input(
            PathId::Relay {
                region: REGION,
                peer: mallory.node,
            },
            &t.payload,
            t0,
        );
        assert_eq!(a.sel.stats().dropped, 2);
        // A pong nobody asked for.
        assert!(a.sel.poll_event().is_none());
        assert_eq!(a.sel.current_path(&b.node), Some(relayed(&b)));
    }

    #[test]
    fn timers_follow_the_heartbeat() {
        let (mut a, _b) = pair();
        let t0 = Instant::now();
        assert!(a.sel.poll_timeout().unwrap() <= t0 + Duration::from_millis(1));
        a.sel.handle_timeout(t0);
        assert_eq!(a.sel.poll_timeout(), Some(t0 + HEARTBEAT));
        a.sel.set_peers(Vec::new(), t0);
        assert_eq!(a.sel.poll_timeout(), None);
    }
}

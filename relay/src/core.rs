//! The relay's routing logic as a sans-IO state machine.
//!
//! [`RelayCore`] knows which node key is attached on which connection ([`ClientId`]), holds
//! one bounded queue of frames per client, rate-limits what each client sends, counts
//! everything per node key, and decides when to send keepalives and drop silent clients. It
//! does no I/O and reads no clock: the shell (see [`crate::server`]) calls it under a lock.
//!
//! How the shell drives it:
//!
//! - after a connection proved its node key: [`RelayCore::attach`];
//! - for every frame read from a client: [`RelayCore::handle_frame`];
//! - when a connection ends: [`RelayCore::detach`];
//! - when [`RelayCore::poll_timeout`] is reached: [`RelayCore::handle_timeout`];
//! - after each of these, drain [`RelayCore::poll_wakeup`] (clients with new frames to write:
//!   wake their writers) and [`RelayCore::poll_closed`] (clients to disconnect);
//! - a client's writer drains [`RelayCore::poll_transmit`] for its id and writes the frames.
//!
//! A slow receiver only fills its own queue: once it holds [`RelayConfig::queue_packets`]
//! frames, further packets *to it* are dropped (and counted as its `dropped_queue_full`),
//! while everyone else's packets keep flowing. Nothing the core does ever waits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use postern_proto::NodePublicKey;
use postern_proto::relay::{PeerGoneReason, RelayFrame};

/// How the relay treats its clients.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most frames queued for one client before packets to it are dropped.
    pub queue_packets: usize,
    /// Sustained bytes per second one client may send through the relay; `None` for no limit.
    pub rate_bytes_per_second: Option<u64>,
    /// Bytes a client may send in a burst above its rate.
    pub rate_burst_bytes: u64,
    /// Send a keepalive to a client the relay has written nothing to for this long.
    pub keepalive_interval: Duration,
    /// Disconnect a client the relay has read nothing from for this long (clients send
    /// keepalives every [`Self::keepalive_interval`]).
    pub idle_timeout: Duration,
}

impl Default for RelayConfig {
    /// 512 frames per client, 10 MiB/s with a 2 MiB burst, keepalives every 25 s and a
    /// 75 s idle timeout.
    fn default() -> Self {
        Self {
            queue_packets: 512,
            rate_bytes_per_second: Some(10 * 1024 * 1024),
            rate_burst_bytes: 2 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// One attached connection, as the core names it. Ids are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// Counters of one node key, kept across reconnects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Packets the node sent into the relay (accepted or not).
    pub rx_packets: u64,
    /// Bytes of those packets.
    pub rx_bytes: u64,
    /// Packets the relay delivered to the node (written to its connection).
    pub tx_packets: u64,
    /// Bytes of those packets.
    pub tx_bytes: u64,
    /// Packets for the node dropped because its queue was full (it reads too slowly).
    pub dropped_queue_full: u64,
    /// Packets from the node dropped by its rate limit.
    pub dropped_rate_limited: u64,
    /// Packets from the node to a key that is not attached here.
    pub dropped_no_peer: u64,
    /// Times the node attached.
    pub attaches: u64,
}

/// Relay-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Clients attached now.
    pub clients: u64,
    /// Packets queued for delivery to another client.
    pub forwarded_packets: u64,
    /// Bytes of those packets.
    pub forwarded_bytes: u64,
    /// Packets dropped for any reason.
    pub dropped_packets: u64,
    /// Clients that were disconnected because a newer connection attached with their key.
    pub replaced: u64,
    /// Clients that were disconnected for silence.
    pub idle_disconnects: u64,
}

/// A client broke the protocol; close its connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame only the relay sends, or a second client-info, came from a client.
    #[error("client sent a {0} frame, which clients may not send after attaching")]
    UnexpectedFrame(&'static str),
    /// The client id is not attached (it was replaced or timed out).
    #[error("the connection is no longer attached")]
    NotAttached,
}

/// The relay's routing state machine; see the [module docs](self).
#[derive(Debug)]
pub struct RelayCore {
    config: RelayConfig,
    clients: HashMap<ClientId, Client>,
    by_key: HashMap<NodePublicKey, ClientId>,
    totals: HashMap<NodePublicKey, ClientStats>,
    wakeups: VecDeque<ClientId>,
    closed: VecDeque<ClientId>,
    stats: RelayStats,
    next_id: u64,
}

/// Most destinations one client remembers sending to (for peer-gone notices).
const MAX_REMEMBERED_DESTINATIONS: usize = 1024;

#[derive(Debug)]
struct Client {
    key: NodePublicKey,
    queue: VecDeque<RelayFrame>,
    wake_pending: bool,
    tokens: f64,
    last_refill: Instant,
    last_rx: Instant,
    last_tx: Instant,
    sent_to: HashSet<NodePublicKey>,
}

impl RelayCore {
    /// A relay with no clients.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            clients: HashMap::new(),
            by_key: HashMap::new(),
            totals: HashMap::new(),
            wakeups: VecDeque::new(),
            closed: VecDeque::new(),
            stats: RelayStats::default(),
            next_id: 1,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Attaches a connection that proved it holds `key` and is authorized. If the key was
    /// attached on another connection, that one is replaced: it appears in
    /// [`Self::poll_closed`] (the newest connection wins, as after a node restart).
    pub fn attach(&mut self, key: NodePublicKey, now: Instant) -> ClientId {
        let id = ClientId(self.next_id);
        self.next_id += 1;
        if let Some(old) = self.by_key.insert(key, id) {
            self.clients.remove(&old);
            self.closed.push_back(old);
            self.stats.replaced += 1;
        }
        self.clients.insert(
            id,
            Client {
                key,
                queue: VecDeque::new(),
                wake_pending: false,
                tokens: self.config.rate_burst_bytes as f64,
                last_refill: now,
                last_rx: now,
                last_tx: now,
                sent_to: HashSet::new(),
            },
        );
        self.totals.entry(key).or_default().attaches += 1;
        self.stats.clients = self.clients.len() as u64;
        id
    }

    /// Forgets a connection that ended. Clients that sent to its key learn with a
    /// [`RelayFrame::PeerGone`]. Unknown ids are ignored.
    pub fn detach(&mut self, id: ClientId) {
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        if self.by_key.get(&client.key) == Some(&id) {
            self.by_key.remove(&client.key);
        }
        self.stats.clients = self.clients.len() as u64;
        let senders: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.sent_to.contains(&client.key))
            .map(|(id, _)| *id)
            .collect();
        for sender in senders {
            self.enqueue(
                sender,
                RelayFrame::PeerGone {
                    peer: client.key,
                    reason: PeerGoneReason::Disconnected,
                },
            );
            if let Some(c) = self.clients.get_mut(&sender) {
                c.sent_to.remove(&client.key);
            }
        }
    }

    /// Processes one frame read from client `id`.
    ///
    /// A [`RelayFrame::SendPacket`] is rate-checked and queued for its destination (or
    /// dropped and counted: rate limit, no such peer, destination queue full); a keepalive
    /// only proves the client alive. Frames clients may not send are a [`ProtocolError`]:
    /// close the connection.
    pub fn handle_frame(
        &mut self,
        id: ClientId,
        frame: RelayFrame,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let rate = self.config.rate_bytes_per_second;
        let burst = self.config.rate_burst_bytes as f64;
        let client = self
            .clients
            .get_mut(&id)
            .ok_or(ProtocolError::NotAttached)?;
        client.last_rx = client.last_rx.max(now);
        let (dst, packet) = match frame {
            RelayFrame::SendPacket { dst, packet } => (dst, packet),
            RelayFrame::KeepAlive => return Ok(()),
            other => return Err(ProtocolError::UnexpectedFrame(frame_name(&other))),
        };
        let src = client.key;
        let len = packet.len() as u64;
        let allowed = match rate {
            None => true,
            Some(rate) => {
                let elapsed = now.saturating_duration_since(client.last_refill);
                client.last_refill = client.last_refill.max(now);
                client.tokens = (client.tokens + elapsed.as_secs_f64() * rate as f64).min(burst);
                if client.tokens >= len as f64 {
                    client.tokens -= len as f64;
                    true
                } else {
                    false
                }
            }
        };
        if client.sent_to.len() < MAX_REMEMBERED_DESTINATIONS {
            client.sent_to.insert(dst);
        }
        let totals = self.totals.entry(src).or_default();
        totals.rx_packets += 1;
        totals.rx_bytes += len;
        if !allowed {
            totals.dropped_rate_limited += 1;
            self.stats.dropped_packets += 1;
            return Ok(());
        }
        let Some(&dst_id) = self.by_key.get(&dst) else {
            totals.dropped_no_peer += 1;
            self.stats.dropped_packets += 1;
            self.enqueue(
                id,
                RelayFrame::PeerGone {
                    peer: dst,
                    reason: PeerGoneReason::NotHere,
                },
            );
            return Ok(());
        };
        if self.enqueue(dst_id, RelayFrame::RecvPacket { src, packet }) {
            self.stats.forwarded_packets += 1;
            self.stats.forwarded_bytes += len;
        } else {
            self.totals.entry(dst).or_default().dropped_queue_full += 1;
            self.stats.dropped_packets += 1;
        }
        Ok(())
    }

    /// The next frame to write to client `id`, or `None` when its queue is empty (or it is
    /// gone). Call from the client's writer after it is woken, until `None`.
    pub fn poll_transmit(&mut self, id: ClientId, now: Instant) -> Option<RelayFrame> {
        let client = self.clients.get_mut(&id)?;
        let frame = client.queue.pop_front();
        match &frame {
            Some(frame) => {
                client.last_tx = client.last_tx.max(now);
                if let RelayFrame::RecvPacket { packet, .. } = frame {
                    let totals = self.totals.entry(client.key).or_default();
                    totals.tx_packets += 1;
                    totals.tx_bytes += packet.len() as u64;
                }
            }
            None => client.wake_pending = false,
        }
        frame
    }

    /// A client whose writer should wake because it has frames to write. Drain after every
    /// `handle_*`, `attach` and `detach` call.
    pub fn poll_wakeup(&mut self) -> Option<ClientId> {
        self.wakeups.pop_front()
    }

    /// A client whose connection the shell should close (replaced by a newer connection
    /// with its key, or silent for too long). It is already detached.
    pub fn poll_closed(&mut self) -> Option<ClientId> {
        self.closed.pop_front()
    }

    /// Sends keepalives to clients the relay has not written to for
    /// [`RelayConfig::keepalive_interval`] and closes clients silent for
    /// [`RelayConfig::idle_timeout`]. Call at [`Self::poll_timeout`], then drain
    /// [`Self::poll_wakeup`] and [`Self::poll_closed`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let idle: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_rx) >= self.config.idle_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.detach(id);
            self.closed.push_back(id);
            self.stats.idle_disconnects += 1;
        }
        let quiet: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.queue.is_empty()
                    && now.saturating_duration_since(c.last_tx) >= self.config.keepalive_interval
            })
            .map(|(id, _)| *id)
            .collect();
        for id in quiet {
            self.enqueue(id, RelayFrame::KeepAlive);
            if let Some(c) = self.clients.get_mut(&id) {
                // Counted as written once queued, so a stalled writer is not re-sent one.
                c.last_tx = c.last_tx.max(now);
            }
        }
    }

    /// When [`Self::handle_timeout`] should run next; `None` with no clients.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.clients
            .values()
            .flat_map(|c| {
                [
                    c.last_tx + self.config.keepalive_interval,
                    c.last_rx + self.config.idle_timeout,
                ]
            })
            .min()
    }

    /// Whether `key` is attached now.
    pub fn is_attached(&self, key: &NodePublicKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Counters of `key` (kept after it detaches), or `None` if it never attached.
    pub fn client_stats(&self, key: &NodePublicKey) -> Option<ClientStats> {
        self.totals.get(key).copied()
    }

    /// Counters of every node key that ever attached, in no particular order.
    pub fn all_client_stats(&self) -> impl Iterator<Item = (NodePublicKey, ClientStats)> + '_ {
        self.totals.iter().map(|(k, s)| (*k, *s))
    }

    /// Relay-wide counters.
    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// Queues `frame` for `id`; false if the queue is full or the client is gone.
    fn enqueue(&mut self, id: ClientId, frame: RelayFrame) -> bool {
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        if client.queue.len() >= self.config.queue_packets {
            return false;
        }
        client.queue.push_back(frame);
        if !client.wake_pending {
            client.wake_pending = true;
            self.wakeups.push_back(id);
        }
        true
    }
}

fn frame_name(frame: &RelayFrame) -> &'static str {
    match frame {
        RelayFrame::ClientInfo { .. } => "client-info",
        RelayFrame::ServerChallenge { .. } => "server-challenge",
        RelayFrame::Attached => "attached",
        RelayFrame::SendPacket { .. } => "send-packet",
        RelayFrame::RecvPacket { .. } => "recv-packet",
        RelayFrame::KeepAlive => "keepalive",
        RelayFrame::PeerGone { .. } => "peer-gone",
        RelayFrame::Health { .. } => "health",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> NodePublicKey {
        NodePublicKey::from_bytes([byte; 32])
    }

    fn send(dst: u8, len: usize) -> RelayFrame {
        RelayFrame::SendPacket {
            dst: key(dst),
            packet: vec![dst; len],
        }
    }

    fn drain(core: &mut RelayCore, id: ClientId, now: Instant) -> Vec<RelayFrame> {
        std::iter::from_fn(|| core.poll_transmit(id, now)).collect()
    }

    fn unlimited() -> RelayConfig {
        RelayConfig {
            rate_bytes_per_second: None,
            queue_packets: 4,
            ..RelayConfig::default()
        }
    }

    #[test]
    fn packets_go_to_the_destination_key_with_the_source_key() {
        let now = Instant::now();
        let mut core = RelayCore::new(unlimited());
        let a = core.attach(key(1), now);
        let b = core.attach(key(2), now);
        core.handle_frame(a, send(2, 100), now).unwrap();
        assert_eq!(core.poll_wakeup(), Some(b));
        assert_eq!(core.poll_wakeup(), None);
        assert_eq!(
            drain(&mut core, b, now),
            vec![RelayFrame::RecvPacket {
                src: key(1),
                packet: vec![2; 100]
            }]
        );
        let (sa, sb) = (
            core.client_stats(&key(1)).unwrap(),
            core.client_stats(&key(2)).unwrap(),
        );
        assert_eq!((sa.rx_packets, sa.rx_bytes, sa.tx_packets), (1, 100, 0));
        assert_eq!((sb.tx_packets, sb.tx_bytes, sb.rx_packets), (1, 100, 0));
        assert_eq!(core.stats().forwarded_bytes, 100);
    }

    #[test]
    fn a_full_queue_drops_only_packets_for_that_receiver() {
        let now = Instant::now();
        let mut core = RelayCore::new(unlimited());
        let a = core.attach(key(1), now);
        let slow = core.attach(key(2), now);
        let fast = core.attach(key(3), now);
        for _ in 0..10 {
            core.handle_frame(a, send(2, 10), now).unwrap();
            core.handle_frame(a, send(3, 10), now).unwrap();
            assert_eq!(drain(&mut core, fast, now).len(), 1);
        }
        assert_eq!(core.client_stats(&key(2)).unwrap().dropped_queue_full, 6);
        assert_eq!(core.client_stats(&key(3)).unwrap().tx_packets, 10);
        assert_eq!(drain(&mut core, slow, now).len(), 4);
    }

    #[test]
    fn the_rate_limit_drops_above_the_burst_and_refills_with_time() {
        let now = Instant::now();
        let mut core = RelayCore::new(RelayConfig {
            rate_bytes_per_second: Some(1000),
            rate_burst_bytes: 1000,
            queue_packets: 100,
            ..RelayConfig::default()
        });
        let a = core.attach(key(1), now);
        let b = core.attach(key(2), now);
        for _ in 0..3 {
            core.handle_frame(a, send(2, 400), now).unwrap();
        }
        assert_eq!(core.client_stats(&key(1)).unwrap().dropped_rate_limited, 1);
        core.handle_frame(a, send(2, 400), now + Duration::from_millis(500))
            .unwrap();
        assert_eq!(core.client_stats(&key(1)).unwrap().dropped_rate_limited, 1);
        assert_eq!(drain(&mut core, b, now).len(), 3);
    }

    #[test]
    fn unknown_destinations_and_departures_are_reported() {
        let now = Instant::now();
        let mut core = RelayCore::new(unlimited());
        let a = core.attach(key(1), now);
        core.handle_frame(a, send(9, 1), now).unwrap();
        assert_eq!(
            drain(&mut core, a, now),
            vec![RelayFrame::PeerGone {
                peer: key(9),
                reason: PeerGoneReason::NotHere
            }]
        );
        assert_eq!(core.client_stats(&key(1)).unwrap().dropped_no_peer, 1);
        let b = core.attach(key(2), now);
        core.handle_frame(a, send(2, 1), now).unwrap();
        core.detach(b);
        assert!(!core.is_attached(&key(2)));
        assert_eq!(
            drain(&mut core, a, now),
            vec![RelayFrame::PeerGone {
                peer: key(2),
                reason: PeerGoneReason::Disconnected
            }]
        );
    }

    #[test]
    fn a_new_connection_with_the_same_key_replaces_the_old_one() {
        let now = Instant::now();
        let mut core = RelayCore::new(unlimited());
        let old = core.attach(key(1), now);
        let new = core.attach(key(1), now);
        assert_eq!(core.poll_closed(), Some(old));
        assert_eq!(
            core.handle_frame(old, RelayFrame::KeepAlive, now),
            Err(ProtocolError::NotAttached)
        );
        core.detach(old); // the old shell's cleanup must not detach the new connection
        assert!(core.is_attached(&key(1)));
        assert_eq!(core.client_stats(&key(1)).unwrap().attaches, 2);
        assert_eq!(
            core.handle_frame(new, RelayFrame::Attached, now)
                .unwrap_err()
                .to_string(),
            "client sent a attached frame, which clients may not send after attaching"
        );
    }

    #[test]
    fn keepalives_go_out_when_quiet_and_silent_clients_are_closed() {
        let t0 = Instant::now();
        let config = RelayConfig {
            keepalive_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            ..unlimited()
        };
        let mut core = RelayCore::new(config);
        let a = core.attach(key(1), t0);
        let b = core.attach(key(2), t0);
        assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        core.handle_timeout(t1);
        assert_eq!(drain(&mut core, a, t1), vec![RelayFrame::KeepAlive]);
        core.handle_frame(b, RelayFrame::KeepAlive, t0 + Duration::from_secs(25))
            .unwrap();
        core.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(core.poll_closed(), Some(a));
        assert_eq!(core.poll_closed(), None);
        assert!(core.is_attached(&key(2)));
        assert_eq!(core.stats().idle_disconnects, 1);
    }
}

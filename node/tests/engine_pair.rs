//! Deterministic in-memory tests of the peer engine: two (or more) engines joined by a
//! simulated network with a fake clock, stepped quinn-style. No sockets, no sleeping, no
//! real time: boringtun runs on the engines' `now` (see `postern_node::engine::session`).

// Test helpers outside `#[test]` functions: a panic is how they report a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use bytes::Bytes;
use postern_node::engine::filter::DenyAll;
use postern_node::engine::{EngineConfig, Event, PathId, PeerConfig, PeerEngine};

const A_IP: [u8; 4] = [100, 64, 0, 1];
const B_IP: [u8; 4] = [100, 64, 0, 2];

fn secret(seed: u8) -> StaticSecret {
    StaticSecret::from([seed; 32])
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An IPv4/UDP packet (checksums are not checked by anyone here).
fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// An IPv6/UDP packet.
fn udp6(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut p = vec![0u8; 48 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&1000u16.to_be_bytes());
    p[42..44].copy_from_slice(&2000u16.to_be_bytes());
    p[44..46].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[48..].copy_from_slice(payload);
    p
}

struct Node {
    engine: PeerEngine,
    addr: SocketAddr,
    events: Vec<Event>,
}

impl Node {
    fn inbound(&self) -> Vec<Bytes> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::InboundPacket { packet, .. } => Some(packet.clone()),
                _ => None,
            })
            .collect()
    }

    fn handshakes(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::HandshakeCompleted { .. }))
            .count()
    }
}

struct Datagram {
    deliver_at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    payload: Bytes,
}

/// Two engines on a simulated network, plus the network's knobs.
struct Pair {
    now: Instant,
    a: Node,
    b: Node,
    in_flight: Vec<Datagram>,
    latency: Duration,
    /// Up to this much extra delay per datagram, pseudo-random (reorders datagrams).
    jitter: Duration,
    rng: u64,
    /// Drop the next this many datagrams.
    drop_next: usize,
    /// Drop every n-th datagram.
    drop_every: Option<u64>,
    sent: u64,
    /// Every datagram put on the wire, for inspection.
    wire_log: VecDeque<(SocketAddr, SocketAddr, Bytes)>,
}

impl Pair {
    fn new() -> Self {
        Self::build(|_| {}, None)
    }

    fn with_config(tweak: impl Fn(&mut EngineConfig)) -> Self {
        Self::build(tweak, None)
    }

    /// `a_keepalive` is a's PersistentKeepalive towards b.
    fn build(tweak: impl Fn(&mut EngineConfig), a_keepalive: Option<u16>) -> Self {
        let now = Instant::now();
        let (sa, sb) = (secret(1), secret(2));
        let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
        let (addr_a, addr_b) = (sock("192.0.2.1:51820"), sock("198.51.100.2:51820"));
        let mut ca = EngineConfig::new(sa);
        let mut cb = EngineConfig::new(sb);
        tweak(&mut ca);
        tweak(&mut cb);
        let mut a = PeerEngine::new(ca, now);
        let mut b = PeerEngine::new(cb, now);
        a.add_peer(
            PeerConfig {
                public_key: pb,
                preshared_key: None,
                allowed_ips: vec![
                    "100.64.0.2/32".parse().unwrap(),
                    "fd7a::2/128".parse().unwrap(),
                ],
                endpoint: Some(PathId::Direct(addr_b)),
                persistent_keepalive: a_keepalive,
            },
            now,
        )
        .unwrap();
        b.add_peer(
            PeerConfig {
                public_key: pa,
                preshared_key: None,
                allowed_ips: vec![
                    "100.64.0.1/32".parse().unwrap(),
                    "fd7a::1/128".parse().unwrap(),
                ],
                endpoint: None,
                persistent_keepalive: None,
            },
            now,
        )
        .unwrap();
        Self {
            now,
            a: Node {
                engine: a,
                addr: addr_a,
                events: Vec::new(),
            },
            b: Node {
                engine: b,
                addr: addr_b,
                events: Vec::new(),
            },
            in_flight: Vec::new(),
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            rng: 0x9e37_79b9_7f4a_7c15,
            drop_next: 0,
            drop_every: None,
            sent: 0,
            wire_log: VecDeque::new(),
        }
    }

    fn key_a(&self) -> PublicKey {
        self.a.engine.public_key()
    }

    fn key_b(&self) -> PublicKey {
        self.b.engine.public_key()
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: deterministic jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Moves everything both engines want to send onto the simulated wire.
    fn collect(&mut self) {
        for side in [true, false] {
            loop {
                let node = if side { &mut self.a } else { &mut self.b };
                while let Some(ev) = node.engine.poll_event() {
                    node.events.push(ev);
                }
                let Some(t) = node.engine.poll_transmit() else {
                    break;
                };
                let from = node.addr;
                let PathId::Direct(to) = t.dst else {
                    unreachable!("only direct paths exist")
                };
                self.sent += 1;
                self.wire_log.push_back((from, to, t.payload.clone()));
                if self.drop_next > 0 {
                    self.drop_next -= 1;
                    continue;
                }
                if self.drop_every.is_some_and(|n| self.sent.is_multiple_of(n)) {
                    continue;
                }
                let jitter = if self.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    let j = self.next_random() % (self.jitter.as_micros() as u64);
                    Duration::from_micros(j)
                };
                self.in_flight.push(Datagram {
                    deliver_at: self.now + self.latency + jitter,
                    from,
                    to,
                    payload: t.payload,
                });
            }
        }
    }

    /// Delivers a datagram to whichever node owns its destination address (others are lost).
    fn deliver(&mut self, d: Datagram) {
        let now = self.now;
        for node in [&mut self.a, &mut self.b] {
            if node.addr == d.to {
                node.engine
                    .handle_input(PathId::Direct(d.from), &d.payload, now);
            }
        }
    }

    /// Runs the simulation for `duration` of fake time.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            self.collect();
            let next_delivery = self.in_flight.iter().map(|d| d.deliver_at).min();
            let next_timer = self
                .a
                .engine
                .poll_timeout()
                .into_iter()
                .chain(self.b.engine.poll_timeout())
                .min();
            let Some(next) = next_delivery.into_iter().chain(next_timer).min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            // Deliver everything due, in delivery-time order.
            self.in_flight.sort_by_key(|d| d.deliver_at);
            let due = self.in_flight.partition_point(|d| d.deliver_at <= self.now);
            let batch: Vec<Datagram> = self.in_flight.drain(..due).collect();
            for d in batch {
                self.deliver(d);
            }
            let now = self.now;
            for node in [&mut self.a, &mut self.b] {
                if node.engine.poll_timeout().is_some_and(|t| t <= now) {
                    node.engine.handle_timeout(now);
                }
            }
        }
        self.now = end;
        self.collect();
    }

    fn a_sends(&mut self, packet: &[u8]) {
        self.a.engine.handle_outbound(packet, self.now);
        self.collect();
    }

    fn b_sends(&mut self, packet: &[u8]) {
        self.b.engine.handle_outbound(packet, self.now);
        self.collect();
    }

    /// Handshake plus one packet each way.
    fn connect(&mut self) {
        self.a_sends(&udp4(A_IP, B_IP, 1000, 2000, b"hello"));
        self.run_for(Duration::from_secs(1));
        self.b_sends(&udp4(B_IP, A_IP, 2000, 1000, b"hello back"));
        self.run_for(Duration::from_secs(1));
        assert_eq!(self.a.handshakes(), 1, "a: {:?}", self.a.events);
        assert_eq!(self.b.handshakes(), 1, "b: {:?}", self.b.events);
    }
}

#[test]
fn handshake_then_first_packet_is_delivered() {
    let mut p = Pair::new();
    let packet = udp4(A_IP, B_IP, 1000, 2000, b"first");
    p.a_sends(&packet);
    // Nothing was sent in clear: the first datagram is a handshake initiation.
    assert_eq!(p.wire_log.front().unwrap().2[0], 1);
    p.run_for(Duration::from_secs(1));

    assert_eq!(p.b.inbound(), vec![Bytes::from(packet.clone())]);
    assert_eq!(p.a.handshakes(), 1);
    assert_eq!(p.b.handshakes(), 1);
    // b learnt a's endpoint from the handshake.
    assert!(p.b.events.iter().any(|e| matches!(
        e, Event::EndpointChanged { path: PathId::Direct(addr), .. } if *addr == p.a.addr
    )));
    let a_stats = p.a.engine.peer_stats(&p.key_b()).unwrap();
    assert_eq!(
        (a_stats.tx_packets, a_stats.tx_bytes),
        (1, packet.len() as u64)
    );
    assert!(a_stats.last_handshake.is_some());
    let b_stats = p.b.engine.peer_stats(&p.key_a()).unwrap();
    assert_eq!(
        (b_stats.rx_packets, b_stats.rx_bytes),
        (1, packet.len() as u64)
    );
    assert_eq!(b_stats.endpoint, Some(PathId::Direct(p.a.addr)));
}

#[test]
fn data_flows_both_ways_in_order() {
    let mut p = Pair::new();
    p.connect();
    let before_a = p.a.inbound().len();
    let before_b = p.b.inbound().len();
    let mut to_b = Vec::new();
    let mut to_a = Vec::new();
    for i in 0..200u16 {
        let x = udp4(A_IP, B_IP, 1000, 2000, &i.to_be_bytes().repeat(100));
        let y = udp4(B_IP, A_IP, 2000, 1000, &i.to_be_bytes().repeat(50));
        p.a_sends(&x);
        p.b_sends(&y);
        to_b.push(Bytes::from(x));
        to_a.push(Bytes::from(y));
    }
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.inbound()[before_b..], to_b[..]);
    assert_eq!(p.a.inbound()[before_a..], to_a[..]);
}

#[test]
fn ipv6_packets_route_by_allowed_ips_too() {
    let mut p = Pair::new();
    let x = udp6("fd7a::1", "fd7a::2", b"over v6");
    p.a_sends(&x);
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.inbound(), vec![Bytes::from(x)]);
    // A v6 source outside a's allowed IPs is refused by b.
    p.a_sends(&udp6("fd7a::99", "fd7a::2", b"spoofed"));
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.inbound().len(), 1);
    assert_eq!(p.b.engine.stats().source_not_allowed, 1);
}

#[test]
fn initiator_rekeys_after_rekey_after_time_without_losing_traffic() {
    let mut p = Pair::new();
    p.connect();
    let first =
        p.a.engine
            .peer_stats(&p.key_b())
            .unwrap()
            .last_handshake
            .unwrap();
    let mut sent = 0;
    // Two packets a second each way for 150 s: past REKEY_AFTER_TIME (120 s).
    for i in 0..300u32 {
        p.a_sends(&udp4(A_IP, B_IP, 1000, 2000, &i.to_be_bytes()));
        p.b_sends(&udp4(B_IP, A_IP, 2000, 1000, &i.to_be_bytes()));
        sent += 1;
        p.run_for(Duration::from_millis(500));
    }
    assert_eq!(
        p.a.handshakes(),
        2,
        "exactly one rekey in 150 s: {:?}",
        p.a.events
    );
    assert_eq!(p.b.handshakes(), 2);
    let second =
        p.a.engine
            .peer_stats(&p.key_b())
            .unwrap()
            .last_handshake
            .unwrap();
    let age = second - first;
    assert!(
        age >= Duration::from_secs(120) && age < Duration::from_secs(125),
        "rekey happened {age:?} after the first handshake"
    );
    // connect() delivered one packet each way before.
    assert_eq!(p.b.inbound().len(), sent + 1);
    assert_eq!(p.a.inbound().len(), sent + 1);
}

#[test]
fn handshake_recovers_from_lost_initiations() {
    let mut p = Pair::new();
    p.drop_next = 2; // the first initiation and its first retransmission
    p.a_sends(&udp4(A_IP, B_IP, 1000, 2000, b"queued"));
    p.run_for(Duration::from_secs(4));
    assert_eq!(p.a.handshakes(), 0, "nothing can have arrived yet");
    p.run_for(Duration::from_secs(20));
    assert_eq!(p.a.handshakes(), 1);
    // The packet queued before the handshake arrives once it completes.
    assert_eq!(p.b.inbound().len(), 1);
    let inits = p.wire_log.iter().filter(|(_, _, d)| d[0] == 1).count();
    assert_eq!(inits, 3, "two lost initiations, then one that worked");
}

#[test]
fn reordered_and_lossy_traffic_is_delivered_within_the_replay_window() {
    let mut p = Pair::new();
    p.connect();
    p.jitter = Duration::from_millis(40);
    p.drop_every = Some(5);
    let start = p.b.inbound().len();
    let mut expected = Vec::new();
    for i in 0..100u16 {
        let x = udp4(A_IP, B_IP, 1000, 2000, &i.to_be_bytes());
        p.a_sends(&x);
        expected.push(Bytes::from(x));
    }
    p.run_for(Duration::from_secs(1));
    let got: Vec<Bytes> = p.b.inbound()[start..].to_vec();
    assert_ne!(got, expected, "jitter should have reordered something");
    assert!(got.iter().all(|g| expected.contains(g)));
    // Every fifth datagram on the wire is lost; the rest arrive despite the reordering.
    assert!(
        got.len() >= 78 && got.len() <= 82,
        "got {} of 100",
        got.len()
    );
    assert_eq!(p.b.engine.stats().replayed, 0);
}

#[test]
fn roaming_peer_keeps_talking_from_a_new_address() {
    let mut p = Pair::new();
    p.connect();
    let new_b = sock("203.0.113.9:40000");
    p.b.addr = new_b; // b's NAT mapping changed: a's datagrams to the old one are lost.
    p.b_sends(&udp4(B_IP, A_IP, 2000, 1000, b"from my new address"));
    p.run_for(Duration::from_secs(1));
    assert!(p.a.events.iter().any(|e| matches!(
        e, Event::EndpointChanged { path: PathId::Direct(addr), .. } if *addr == new_b
    )));
    assert_eq!(
        p.a.engine.peer_stats(&p.key_b()).unwrap().endpoint,
        Some(PathId::Direct(new_b))
    );
    let before = p.b.inbound().len();
    p.a_sends(&udp4(
        A_IP,
        B_IP,
        1000,
        2000,
        b"reply reaches the new address",
    ));
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.inbound().len(), before + 1);
}

#[test]
fn handshake_flood_from_spoofed_sources_does_not_stop_a_real_peer() {
    let mut p = Pair::with_config(|c| c.handshakes_per_second = 10);
    // Attackers know b's public key (it is public), so their initiations carry a valid mac1
    // and must be rate limited rather than rejected cheaply.
    let mut flood = Vec::new();
    for seed in 10..40u8 {
        let mut attacker = PeerEngine::new(EngineConfig::new(secret(seed)), p.now);
        attacker
            .add_peer(
                PeerConfig {
                    public_key: p.key_b(),
                    preshared_key: None,
                    allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
                    endpoint: Some(PathId::Direct(p.b.addr)),
                    persistent_keepalive: None,
                },
                p.now,
            )
            .unwrap();
        attacker.handle_outbound(&udp4([10, 0, 0, seed], B_IP, 1, 2, b"x"), p.now);
        flood.push(attacker.poll_transmit().unwrap().payload);
    }
    let b_addr = p.b.addr;
    let flood_once = |p: &mut Pair, round: u32| {
        for (i, init) in flood.iter().enumerate() {
            let spoofed = SocketAddr::from(([172, 16, (round % 250) as u8, i as u8], 9999));
            assert_eq!(b_addr, p.b.addr);
            p.b.engine
                .handle_input(PathId::Direct(spoofed), init, p.now);
        }
        p.collect(); // cookie replies go to spoofed addresses: lost
    };
    flood_once(&mut p, 0);
    p.a_sends(&udp4(A_IP, B_IP, 1000, 2000, b"let me in"));
    // 30 initiations every 100 ms is 300 a second against a limit of 10.
    for round in 1..200 {
        flood_once(&mut p, round);
        p.run_for(Duration::from_millis(100));
    }
    let stats = p.b.engine.stats();
    assert!(
        stats.cookie_replies > 1000,
        "b answered the flood with cookies: {stats:?}"
    );
    assert_eq!(
        p.a.handshakes(),
        1,
        "the real peer got through: {:?}",
        p.a.events
    );
    assert_eq!(p.b.inbound().len(), 1);
    // The real peer first got a cookie reply (type 3), then came back with mac2.
    assert!(
        p.wire_log
            .iter()
            .any(|(from, to, d)| d[0] == 3 && *from == b_addr && *to == p.a.addr)
    );
}

#[test]
fn filter_drops_unsolicited_inbound_but_passes_replies() {
    let mut p = Pair::new();
    p.connect();
    p.b.engine.set_filter(Box::new(DenyAll));
    let before = p.b.inbound().len();

    p.a_sends(&udp4(A_IP, B_IP, 1000, 22, b"unsolicited"));
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.inbound().len(), before);
    assert_eq!(p.b.engine.stats().filtered, 1);

    // b opens a flow; a's reply on the same ports passes, a different port does not.
    p.b_sends(&udp4(B_IP, A_IP, 5353, 53, b"query"));
    p.run_for(Duration::from_secs(1));
    p.a_sends(&udp4(A_IP, B_IP, 53, 5353, b"answer"));
    p.a_sends(&udp4(A_IP, B_IP, 53, 5354, b"not an answer"));
    p.run_for(Duration::from_secs(1));
    let got = p.b.inbound();
    assert_eq!(got.len(), before + 1);
    assert!(got.last().unwrap().ends_with(b"answer"));
    assert_eq!(p.b.engine.stats().filtered, 2);

    // The flow expires: after 130 s of silence the same "reply" is unsolicited again.
    p.run_for(Duration::from_secs(130));
    p.a_sends(&udp4(A_IP, B_IP, 53, 5353, b"late answer"));
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.inbound().len(), before + 1);
    assert_eq!(p.b.engine.stats().filtered, 3);
}

#[test]
fn packets_from_a_source_outside_the_peers_allowed_ips_are_dropped() {
    let mut p = Pair::new();
    p.connect();
    let before = p.b.inbound().len();
    // a's tunnel carries a packet claiming to be from someone else.
    p.a_sends(&udp4(
        [100, 64, 0, 99],
        B_IP,
        1000,
        2000,
        b"spoofed inner source",
    ));
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.inbound().len(), before);
    assert_eq!(p.b.engine.stats().source_not_allowed, 1);
}

#[test]
fn allowed_ips_can_change_at_run_time() {
    let mut p = Pair::new();
    p.connect();
    let ka = p.key_a();
    // b stops accepting 100.64.0.1 from a and accepts 100.64.1.0/24 instead.
    assert!(
        p.b.engine
            .set_allowed_ips(&ka, &["100.64.1.0/24".parse().unwrap()])
    );
    let before = p.b.inbound().len();
    p.a_sends(&udp4(A_IP, B_IP, 1, 2, b"old address"));
    p.a_sends(&udp4([100, 64, 1, 7], B_IP, 1, 2, b"new range"));
    p.run_for(Duration::from_secs(1));
    let got = p.b.inbound();
    assert_eq!(got.len(), before + 1);
    assert!(got.last().unwrap().ends_with(b"new range"));
    assert_eq!(p.b.engine.stats().source_not_allowed, 1);
    // b's packets to the old address have no route any more.
    p.b_sends(&udp4(B_IP, A_IP, 2, 1, b"to old"));
    assert_eq!(p.b.engine.stats().no_route, 1);
    let unknown = PublicKey::from(&secret(99));
    assert!(!p.b.engine.set_allowed_ips(&unknown, &[]));
}

#[test]
fn unknown_destination_is_dropped_with_an_event() {
    let mut p = Pair::new();
    p.a_sends(&udp4(A_IP, [192, 0, 2, 77], 1, 2, b"nowhere"));
    assert!(p.a.events.iter().any(|e| matches!(
        e, Event::NoRoute { dst } if *dst == IpAddr::from([192, 0, 2, 77])
    )));
    assert_eq!(p.a.engine.stats().no_route, 1);
    assert!(p.wire_log.is_empty());
    // Not IP at all: counted, no event.
    p.a_sends(b"\x00not an ip packet");
    assert_eq!(p.a.engine.stats().invalid_outbound, 1);
}

#[test]
fn garbage_datagrams_are_dropped_and_counted() {
    let mut p = Pair::new();
    p.connect();
    let events_before = p.b.events.len();
    let from = PathId::Direct(sock("192.0.2.66:1"));
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![4, 0, 0, 0],
        vec![1; 148],                                // initiation-sized, bad mac1
        vec![2; 92],                                 // response-sized, bad mac1
        vec![3; 64],                                 // cookie reply for no session
        [vec![4, 0, 0, 0], vec![0xff; 60]].concat(), // data, unknown index
        vec![0xaa; 1500],
    ];
    for j in &junk {
        p.b.engine.handle_input(from, j, p.now);
    }
    // A real data datagram, corrupted in flight.
    p.a_sends(&udp4(A_IP, B_IP, 1, 2, b"to be corrupted"));
    let (_, _, data) = p.wire_log.back().unwrap().clone();
    p.in_flight.clear();
    let mut bad = data.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    p.b.engine
        .handle_input(PathId::Direct(p.a.addr), &bad, p.now);
    // And replayed: the genuine one twice.
    p.b.engine
        .handle_input(PathId::Direct(p.a.addr), &data, p.now);
    p.b.engine
        .handle_input(PathId::Direct(p.a.addr), &data, p.now);
    p.collect();

    let s = p.b.engine.stats();
    assert_eq!(s.replayed, 1, "{s:?}");
    assert!(
        s.invalid_datagrams + s.unknown_session >= junk.len() as u64,
        "{s:?}"
    );
    let new_events = &p.b.events[events_before..];
    assert_eq!(
        new_events.len(),
        1,
        "only the genuine packet: {new_events:?}"
    );
    // Nothing was roamed to the junk source.
    assert_eq!(
        p.b.engine.peer_stats(&p.key_a()).unwrap().endpoint,
        Some(PathId::Direct(p.a.addr))
    );
}

#[test]
fn idle_sessions_expire_and_traffic_brings_them_back() {
    let mut p = Pair::new();
    p.connect();
    // boringtun rekeys once more at 165 s (the initiator had received data on the session),
    // then REJECT_AFTER_TIME * 3 = 540 s without a new handshake ends the session.
    p.run_for(Duration::from_secs(800));
    assert!(
        p.a.events
            .iter()
            .any(|e| matches!(e, Event::SessionExpired { .. }))
    );
    assert!(
        p.b.events
            .iter()
            .any(|e| matches!(e, Event::SessionExpired { .. }))
    );
    let before = p.b.inbound().len();
    let handshakes = p.a.handshakes();
    p.a_sends(&udp4(A_IP, B_IP, 1000, 2000, b"wake up"));
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.b.inbound().len(), before + 1);
    assert_eq!(p.a.handshakes(), handshakes + 1);
}

#[test]
fn persistent_keepalive_sends_every_interval_and_only_when_configured() {
    // Keepalives are 32-byte data messages (type 4, empty payload).
    let keepalives_from_a = |p: &Pair| {
        p.wire_log
            .iter()
            .filter(|(from, _, d)| *from == p.a.addr && d[0] == 4 && d.len() == 32)
            .count()
    };
    let mut with = Pair::build(|_| {}, Some(25));
    with.connect();
    let before = keepalives_from_a(&with);
    with.run_for(Duration::from_secs(100));
    let sent = keepalives_from_a(&with) - before;
    assert!(
        (3..=5).contains(&sent),
        "25 s keepalive over 100 s idle sent {sent}"
    );

    let mut without = Pair::new();
    without.connect();
    let before = keepalives_from_a(&without);
    without.run_for(Duration::from_secs(100));
    // Only the passive keepalive answering b's last packet, if any.
    assert!(keepalives_from_a(&without) - before <= 1);
}

#[test]
fn peers_can_be_removed_and_unknown_ones_are_not_found() {
    let mut p = Pair::new();
    p.connect();
    let kb = p.key_b();
    assert!(p.a.engine.remove_peer(&kb));
    assert!(!p.a.engine.remove_peer(&kb));
    assert!(p.a.engine.peer_stats(&kb).is_none());
    p.a_sends(&udp4(A_IP, B_IP, 1, 2, b"gone"));
    assert_eq!(p.a.engine.stats().no_route, 1);
    // Datagrams from b now hit a removed session.
    p.b_sends(&udp4(B_IP, A_IP, 2, 1, b"still here"));
    p.run_for(Duration::from_secs(1));
    assert!(p.a.engine.stats().unknown_session >= 1);
    // Adding ourselves is refused with a clear error.
    let own = p.a.engine.public_key();
    let err =
        p.a.engine
            .add_peer(
                PeerConfig {
                    public_key: own,
                    preshared_key: None,
                    allowed_ips: vec![],
                    endpoint: None,
                    persistent_keepalive: None,
                },
                p.now,
            )
            .unwrap_err();
    assert!(err.to_string().contains("own peer"), "{err}");
}

#[test]
fn arbitrary_datagrams_never_panic() {
    let mut p = Pair::new();
    p.connect();
    let before = p.b.inbound().len();
    let mut seed = 1u64;
    let mut fed = 0;
    for len in [0usize, 1, 3, 4, 16, 31, 32, 33, 64, 92, 148, 200, 1500] {
        let mut d: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        // Each WireGuard message type, with and without the reserved bytes zeroed.
        for t in 1..=4u8 {
            for zero_reserved in [false, true] {
                if let Some(first) = d.first_mut() {
                    *first = t;
                }
                if zero_reserved && d.len() >= 4 {
                    d[1..4].fill(0);
                }
                p.b.engine
                    .handle_input(PathId::Direct(sock("192.0.2.9:9")), &d, p.now);
                fed += 1;
            }
        }
    }
    p.collect();
    assert_eq!(p.b.inbound().len(), before, "no junk was delivered");
    let s = p.b.engine.stats();
    assert_eq!(
        s.invalid_datagrams + s.unknown_session + s.unknown_peer,
        fed,
        "{s:?}"
    );
}

#[test]
fn engines_built_from_wg_quick_files_talk() {
    use base64::Engine as _;
    use postern_node::engine::encode_key;
    use postern_node::wg_config::WgConfig;
    let b64 = |bytes: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (sa, sb) = (secret(1), secret(2));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let (addr_a, addr_b) = (sock("192.0.2.1:51820"), sock("198.51.100.2:51820"));
    let file_a = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 100.64.0.1/32\n\n[Peer]\nPublicKey = {}\n\
         AllowedIPs = 100.64.0.2/32\nEndpoint = {addr_b}\n",
        b64(sa.to_bytes()),
        encode_key(&pb)
    );
    let file_b = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\n[Peer]\nPublicKey = {}\n\
         AllowedIPs = 100.64.0.1/32\n",
        b64(sb.to_bytes()),
        encode_key(&pa)
    );
    let now = Instant::now();
    let mut engines = Vec::new();
    for (name, text) in [("a.conf", &file_a), ("b.conf", &file_b)] {
        let config = WgConfig::parse(name, text).unwrap();
        let mut engine = PeerEngine::new(config.engine_config(), now);
        for peer in &config.peers {
            engine.add_peer(peer.engine_peer(None), now).unwrap();
        }
        engines.push(engine);
    }
    let mut b = engines.pop().unwrap();
    let mut a = engines.pop().unwrap();
    assert_eq!(a.public_key(), pa);
    let packet = udp4(A_IP, B_IP, 1, 2, b"configured by file");
    a.handle_outbound(&packet, now);
    let mut delivered = Vec::new();
    for _ in 0..4 {
        while let Some(t) = a.poll_transmit() {
            assert_eq!(t.dst, PathId::Direct(addr_b));
            b.handle_input(PathId::Direct(addr_a), &t.payload, now);
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_input(PathId::Direct(addr_b), &t.payload, now);
        }
        while let Some(e) = b.poll_event() {
            if let Event::InboundPacket { packet, .. } = e {
                delivered.push(packet);
            }
        }
    }
    assert_eq!(delivered, vec![Bytes::from(packet)]);
}

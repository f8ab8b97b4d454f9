//! Any datagram, from any source, must leave the peer engine standing: no panic, and no
//! decrypted packet can come out of bytes that were not sealed by the peer.
#![no_main]

use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use libfuzzer_sys::fuzz_target;
use postern_node::engine::{EngineConfig, Event, PathId, PeerConfig, PeerEngine};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut engine = PeerEngine::new(EngineConfig::new(StaticSecret::from([1; 32])), now);
    let peer = PublicKey::from(&StaticSecret::from([2; 32]));
    let from = PathId::Direct(([192, 0, 2, 1], 51820).into());
    let added = engine.add_peer(
        PeerConfig {
            public_key: peer,
            preshared_key: None,
            allowed_ips: vec!["0.0.0.0/0".parse().unwrap_or_else(|_| unreachable!())],
            endpoint: Some(from),
            persistent_keepalive: None,
        },
        now,
    );
    assert!(added.is_ok());
    // The input is a sequence of datagrams: a length byte, then that many bytes.
    let mut rest = data;
    let mut t = now;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        engine.handle_input(from, datagram, t);
        engine.handle_outbound(datagram, t);
        t += Duration::from_millis(300);
        engine.handle_timeout(t);
        while engine.poll_transmit().is_some() {}
        while let Some(event) = engine.poll_event() {
            assert!(!matches!(event, Event::InboundPacket { .. }));
        }
        rest = tail;
    }
});

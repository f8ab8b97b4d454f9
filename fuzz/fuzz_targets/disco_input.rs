//! Any datagram must leave path discovery standing: the header reader, the plaintext parser
//! and the selector itself never panic, and bytes that were not sealed by a peer change no
//! path.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use postern_node::disco::message::{self, DiscoMessage};
use postern_node::disco::{DiscoPeer, PathSelector};
use postern_node::engine::PathId;
use postern_proto::{DiscoPrivateKey, NodePrivateKey};

fuzz_target!(|data: &[u8]| {
    let _ = message::sender(data);
    if let Ok(DiscoMessage::CallMeMaybe { endpoints }) = message::parse_plaintext(data) {
        assert!(endpoints.len() <= message::MAX_ENDPOINTS);
    }
    let now = Instant::now();
    let me = NodePrivateKey::from_bytes([1; 32]).public_key();
    let mut selector = PathSelector::new(me, DiscoPrivateKey::from_bytes([2; 32]).to_x25519(), 7);
    let peer = DiscoPeer {
        node_key: NodePrivateKey::from_bytes([3; 32]).public_key(),
        disco_key: DiscoPrivateKey::from_bytes([4; 32]).public_key(),
        endpoints: vec![([192, 0, 2, 1], 41641).into()],
        home_relay: None,
    };
    selector.set_peers(vec![peer], now);
    while selector.poll_event().is_some() {}
    selector.handle_input(PathId::Direct(([192, 0, 2, 1], 41641).into()), data, now);
    assert!(
        selector.poll_event().is_none(),
        "unsealed bytes changed a path"
    );
});

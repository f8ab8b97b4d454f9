//! Path discovery ("disco"): finding a direct UDP path to each peer through NATs, and
//! choosing between it and the relay.
//!
//! - [`message`]: the wire format: pings, pongs and call-me-maybes sealed with the two
//!   nodes' disco keys (the netmap carries each peer's; each node reports its own).
//! - [`PathSelector`]: the sans-IO state machine. For every peer it pings each candidate
//!   endpoint (the peer's reported local and STUN-learned endpoints, the ones a
//!   call-me-maybe names, and addresses pings came from), sends a call-me-maybe through the
//!   relay while it has no direct path (so both NATs open mappings at the same time), and
//!   picks the path: the fastest direct endpoint that answered a ping within [`TRUST`], else
//!   the relay. It keeps pinging every [`HEARTBEAT`], so a dead direct path falls back to
//!   the relay within [`TRUST`] and a relayed peer moves to direct once a ping gets through.
//! - [`PublicEndpoints`]: sans-IO STUN refresh on the WireGuard socket every
//!   [`STUN_REFRESH`]: the node's public endpoints, which it reports to the coord.
//!
//! The UDP shell ([`crate::udp`]) owns both next to the peer engine: it hands disco
//! datagrams (told apart by [`message::is_disco`]) from the socket and the relay to
//! [`PathSelector::handle_input`], sends what [`PathSelector::poll_transmit`] yields, and
//! applies each [`PathEvent::PathChanged`] to the engine with `set_endpoint`.

pub mod message;
mod public;
mod selector;

use std::time::Duration;

pub use self::public::PublicEndpoints;
pub use self::selector::{DiscoPeer, DiscoStats, DiscoTransmit, PathEvent, PathSelector};

/// How often each peer's paths are probed.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// How long a direct path stays chosen after its last pong. Three heartbeats' pings may be
/// lost before a live path is given up... minus a little: two lost pings and a late third.
pub const TRUST: Duration = Duration::from_millis(6_500);
/// How often the public endpoints are refreshed with STUN (NATs forget idle UDP mappings
/// after 30 s; the refresh also keeps the mapping towards the STUN server open).
pub const STUN_REFRESH: Duration = Duration::from_secs(20);
/// How long an endpoint learned from a call-me-maybe or a ping's source is kept without a
/// pong.
pub const LEARNED_ENDPOINT_TTL: Duration = Duration::from_secs(60);
/// How long a ping waits for its pong before it is forgotten.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Most candidate endpoints kept per peer.
pub const MAX_CANDIDATES: usize = 16;
/// Least time between two rounds of pings a call-me-maybe triggers.
pub const CALL_ME_MAYBE_MIN_INTERVAL: Duration = Duration::from_secs(1);

//! The node's side of the relay: its home relay, the other regions its peers live in, and
//! STUN.
//!
//! [`RelaySet`] holds the connection to the home relay and opens one to a peer's home
//! region on demand, closing it when idle (see [`set`]). [`RelayClient`] keeps one attached connection to a relay server (redialling with
//! [`Backoff`] after failures), sends WireGuard datagrams to peers by node key and hands
//! back the datagrams peers sent. The engine names the relay as a path,
//! [`PathId::Relay`](crate::engine::PathId::Relay): a transmit on that path goes to
//! [`RelaySender::try_send`] with the path's peer key, and a datagram from
//! [`RelayClient::recv`] goes to the engine's `handle_input` with
//! `PathId::Relay { region, peer: src }`.
//!
//! [`stun`] learns the node's public UDP endpoint from a relay's STUN port.
//! [`relay_tls_config`] sets up which certificates `https://` relays may present.

mod client;
pub mod set;
pub mod stun;
mod trust;

use std::time::Duration;

pub use client::{
    RelayClient, RelayClientConfig, RelayClientError, RelayDatagram, RelaySendError, RelaySender,
    RelayState,
};
pub use set::{REGION_IDLE_TIMEOUT, RegionUse, RelaySet};
pub use trust::{RelayTrustError, relay_tls_config};

/// Redial delays after a failed or lost relay connection: exponential from
/// [`Backoff::MIN`] to [`Backoff::MAX`], back to the start after a successful attach. Pure:
/// the shell sleeps for what [`Backoff::next_delay`] says.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The first redial delay.
    pub const MIN: Duration = Duration::from_millis(100);
    /// The longest redial delay.
    pub const MAX: Duration = Duration::from_secs(10);

    /// How long to wait before the next dial; each call doubles the next answer, up to
    /// [`Self::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = Self::MIN
            .saturating_mul(1u32 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Call after a successful attach: the next failure waits [`Self::MIN`] again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[6], Duration::from_millis(6400));
        assert_eq!(delays[7], Backoff::MAX);
        assert_eq!(delays[9], Backoff::MAX);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Backoff::MIN);
    }
}

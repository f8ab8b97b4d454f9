//! The node's public endpoints, refreshed with STUN on the WireGuard socket.

use std::net::SocketAddr;
use std::time::Instant;

use postern_proto::stun::TransactionId;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::STUN_REFRESH;
use crate::relay::stun::StunProbe;

/// Most STUN servers queried per round.
const MAX_SERVERS: usize = 3;

/// Sans-IO STUN refresh: every [`STUN_REFRESH`] it queries each STUN server (from the relay
/// map) and keeps the mapped addresses of the last round, which are this node's public
/// endpoints.
///
/// Drive it like the engine: [`Self::handle_input`] for each STUN datagram from the socket,
/// [`Self::handle_timeout`] when [`Self::poll_timeout`] is due, then drain
/// [`Self::poll_transmit`]. [`Self::endpoints`] is the current answer; a change is reported
/// by [`Self::take_changed`].
#[derive(Debug)]
pub struct PublicEndpoints {
    servers: Vec<SocketAddr>,
    probes: Vec<StunProbe>,
    learned: Vec<SocketAddr>,
    round: Vec<SocketAddr>,
    next_round: Instant,
    changed: bool,
    rng: StdRng,
}

impl PublicEndpoints {
    /// No servers yet; `seed` makes transaction ids (tests pass a fixed one).
    pub fn new(seed: u64, now: Instant) -> Self {
        Self {
            servers: Vec::new(),
            probes: Vec::new(),
            learned: Vec::new(),
            round: Vec::new(),
            next_round: now,
            changed: false,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Replaces the STUN servers (the relay map changed); a new round starts at once.
    pub fn set_servers(&mut self, mut servers: Vec<SocketAddr>, now: Instant) {
        servers.truncate(MAX_SERVERS);
        if servers != self.servers {
            self.servers = servers;
            self.probes.clear();
            self.next_round = now;
        }
    }

    /// The public endpoints learned in the last complete round (or the one before, while a
    /// round runs), sorted and without duplicates.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.learned
    }

    /// Whether [`Self::endpoints`] changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Processes a STUN datagram from `from`. Returns whether a probe took it.
    pub fn handle_input(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        for probe in &mut self.probes {
            if let Some(mapped) = probe.handle_input(from, datagram) {
                if !self.round.contains(&mapped) {
                    self.round.push(mapped);
                }
                self.finish_round_if_done();
                return true;
            }
        }
        false
    }

    /// Starts a round when one is due and ends probes that gave up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_round && !self.servers.is_empty() {
            self.next_round = now + STUN_REFRESH;
            self.round.clear();
            let mut probes = Vec::with_capacity(self.servers.len());
            for server in &self.servers {
                let mut tx = [0u8; 12];
                self.rng.fill_bytes(&mut tx);
                probes.push(StunProbe::new(*server, TransactionId(tx), now));
            }
            self.probes = probes;
        }
        if self.probes.iter().any(|p| p.gave_up(now)) {
            self.probes
                .retain(|p| p.result().is_some() || !p.gave_up(now));
            self.finish_round_if_done();
        }
    }

    /// The next STUN request to send: `(server, datagram)`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.probes.iter_mut().find_map(|p| p.poll_transmit(now))
    }

    /// When [`Self::handle_timeout`] (and then [`Self::poll_transmit`]) has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probes = self.probes.iter().filter_map(StunProbe::poll_timeout).min();
        let round = (!self.servers.is_empty()).then_some(self.next_round);
        match (probes, round) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Once every probe of the round answered or gave up, the round's answers become the
    /// endpoints (a round where nobody answered clears them: UDP is blocked).
    fn finish_round_if_done(&mut self) {
        if self.probes.iter().any(|p| p.result().is_none()) {
            return;
        }
        let mut round = self.round.clone();
        round.sort();
        round.dedup();
        if round != self.learned {
            self.learned = round;
            self.changed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::stun;

    #[test]
    fn rounds_learn_the_mapped_address_and_refresh_it() {
        let t0 = Instant::now();
        let server: SocketAddr = "198.18.0.10:3478".parse().unwrap();
        let mut public = PublicEndpoints::new(1, t0);
        assert_eq!(public.poll_timeout(), None, "no servers, no work");
        public.set_servers(vec![server], t0);
        public.handle_timeout(t0);
        let (dst, request) = public.poll_transmit(t0).unwrap();
        assert_eq!(dst, server);
        let stun::StunMessage::BindingRequest { transaction } = stun::parse(&request).unwrap()
        else {
            panic!("not a request")
        };
        let mapped: SocketAddr = "198.18.0.101:41641".parse().unwrap();
        assert!(public.handle_input(server, &stun::binding_response(transaction, mapped)));
        assert_eq!(public.endpoints(), &[mapped]);
        assert!(public.take_changed());
        assert!(!public.take_changed());
        // The next round is due after the refresh interval, not before.
        assert_eq!(public.poll_timeout(), Some(t0 + STUN_REFRESH));
        let t1 = t0 + STUN_REFRESH;
        public.handle_timeout(t1);
        assert!(public.poll_transmit(t1).is_some());
        // Nobody answers this round: the endpoints go once the probe gives up.
        while let Some(at) = public.poll_timeout().filter(|at| *at < t1 + STUN_REFRESH) {
            public.handle_timeout(at);
            let _ = public.poll_transmit(at);
        }
        assert!(public.endpoints().is_empty(), "{:?}", public.endpoints());
        assert!(public.take_changed());
    }
}

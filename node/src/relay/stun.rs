//! Learning this node's public UDP endpoint from a relay's STUN port.
//!
//! [`StunProbe`] is the sans-IO client for one query: it produces the binding request (and
//! retransmissions), recognises the matching response and yields the mapped address. Run it
//! on the node's WireGuard socket so the answer is that socket's mapping: the UDP shell tells
//! STUN from WireGuard with [`postern_proto::stun::is_stun`] and feeds STUN datagrams to
//! [`StunProbe::handle_input`]. [`query_public_endpoint`] is a small async driver for a socket
//! nothing else reads (tests, and `postern netcheck`-style tools).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postern_proto::stun::{self, StunMessage, TransactionId};

/// How long to wait for the first answer before sending the request again; it doubles each
/// time.
pub const FIRST_RETRANSMIT: Duration = Duration::from_millis(250);
/// Requests sent before the probe gives up.
pub const MAX_REQUESTS: u32 = 5;

/// One STUN query to one server; see the [module docs](self).
#[derive(Debug)]
pub struct StunProbe {
    server: SocketAddr,
    transaction: TransactionId,
    sent: u32,
    next_send: Option<Instant>,
    interval: Duration,
    result: Option<SocketAddr>,
}

/// Why a probe ended without an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunProbeError {
    /// The server never answered.
    #[error(
        "STUN server {server} did not answer {requests} binding requests; is UDP to it blocked?"
    )]
    NoAnswer {
        /// The server.
        server: SocketAddr,
        /// Requests sent.
        requests: u32,
    },
    /// The socket failed.
    #[error("STUN socket failed: {0}")]
    Io(String),
}

impl StunProbe {
    /// A probe of `server`, ready to send its first request at `now`.
    pub fn new(server: SocketAddr, transaction: TransactionId, now: Instant) -> Self {
        Self {
            server,
            transaction,
            sent: 0,
            next_send: Some(now),
            interval: FIRST_RETRANSMIT,
            result: None,
        }
    }

    /// The request to send now, if one is due: `(destination, datagram)`. Call after
    /// [`Self::new`] and after every [`Self::handle_timeout`].
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let due = self.next_send.filter(|at| *at <= now)?;
        if self.result.is_some() || self.sent >= MAX_REQUESTS {
            self.next_send = None;
            return None;
        }
        self.sent += 1;
        self.next_send = Some(due.max(now) + self.interval);
        self.interval = self.interval.saturating_mul(2);
        Some((self.server, stun::binding_request(self.transaction)))
    }

    /// Processes a datagram that arrived on the probing socket. Returns the mapped address
    /// when this is the server's answer to this probe; anything else is ignored.
    pub fn handle_input(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<SocketAddr> {
        if from != self.server {
            return None;
        }
        match stun::parse(datagram) {
            Ok(StunMessage::BindingResponse {
                transaction,
                mapped,
            }) if transaction == self.transaction => {
                self.result = Some(mapped);
                self.next_send = None;
                Some(mapped)
            }
            _ => None,
        }
    }

    /// When [`Self::poll_transmit`] has something next; `None` when the probe is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_send
    }

    /// The answer, once one arrived.
    pub fn result(&self) -> Option<SocketAddr> {
        self.result
    }

    /// Whether the probe gave up (every request sent, the last one's wait over, no answer).
    pub fn gave_up(&self, now: Instant) -> bool {
        self.result.is_none()
            && self.sent >= MAX_REQUESTS
            && self.next_send.is_none_or(|at| at <= now)
    }
}

/// Asks the STUN server at `server` which address `socket`'s datagrams come from, with
/// retransmissions. Only for sockets nothing else reads: it consumes what arrives meanwhile.
pub async fn query_public_endpoint(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
) -> Result<SocketAddr, StunProbeError> {
    let io = |err: std::io::Error| StunProbeError::Io(err.to_string());
    let mut probe = StunProbe::new(
        server,
        TransactionId::generate(&mut rand::rngs::OsRng),
        Instant::now(),
    );
    let mut buf = vec![0u8; 1500];
    loop {
        let now = Instant::now();
        if let Some((dst, request)) = probe.poll_transmit(now) {
            socket.send_to(&request, dst).await.map_err(io)?;
        }
        if probe.gave_up(now) {
            return Err(StunProbeError::NoAnswer {
                server,
                requests: probe.sent,
            });
        }
        let deadline = probe
            .poll_timeout()
            .unwrap_or(now + FIRST_RETRANSMIT.saturating_mul(16));
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, from) = received.map_err(io)?;
                if let Some(mapped) = probe.handle_input(from, buf.get(..n).unwrap_or_default()) {
                    return Ok(mapped);
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_retransmits_with_backoff_and_takes_only_its_answer() {
        let t0 = Instant::now();
        let server: SocketAddr = "198.18.0.20:3478".parse().unwrap();
        let tx = TransactionId([1; 12]);
        let mut probe = StunProbe::new(server, tx, t0);
        let (dst, request) = probe.poll_transmit(t0).unwrap();
        assert_eq!(dst, server);
        assert!(probe.poll_transmit(t0).is_none());
        assert_eq!(probe.poll_timeout(), Some(t0 + FIRST_RETRANSMIT));
        let t1 = t0 + FIRST_RETRANSMIT;
        assert!(probe.poll_transmit(t1).is_some());
        assert_eq!(probe.poll_timeout(), Some(t1 + FIRST_RETRANSMIT * 2));

        let mapped: SocketAddr = "198.18.0.101:40000".parse().unwrap();
        let wrong_tx = stun::binding_response(TransactionId([2; 12]), mapped);
        assert_eq!(probe.handle_input(server, &wrong_tx), None);
        let right = stun::binding_response(tx, mapped);
        assert_eq!(
            probe.handle_input("1.2.3.4:5".parse().unwrap(), &right),
            None
        );
        assert_eq!(probe.handle_input(server, &request), None);
        assert_eq!(probe.handle_input(server, &right), Some(mapped));
        assert_eq!(probe.result(), Some(mapped));
        assert_eq!(probe.poll_timeout(), None);
    }

    #[test]
    fn probe_gives_up_after_its_requests() {
        let mut now = Instant::now();
        let mut probe = StunProbe::new(
            "192.0.2.1:3478".parse().unwrap(),
            TransactionId([1; 12]),
            now,
        );
        let mut sent = 0;
        while let Some(at) = probe.poll_timeout() {
            now = at;
            if probe.poll_transmit(now).is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, MAX_REQUESTS);
        assert!(probe.gave_up(now));
    }
}

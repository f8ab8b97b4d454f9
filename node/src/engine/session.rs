//! WireGuard sessions behind a small trait, and their boringtun implementation.
//!
//! The engine talks to WireGuard through two traits: [`WireGuardSession`] (one peer's Noise
//! state: handshakes, keys, timers) and [`WireGuardResponder`] (what is node-wide: the
//! handshake rate limiter with its cookie replies, and finding which peer sent an
//! initiation). [`Boringtun`] implements both over boringtun 0.7's `noise::Tunn`; another
//! implementation could be swapped in without touching the engine's routing, roaming,
//! filtering or counting.
//!
//! # Time
//!
//! The engine is sans-IO: it takes `now` everywhere and reads no clock. boringtun 0.7 reads
//! its own clock inside `Tunn` (timers, handshake retransmission, rate-limiter resets, cookie
//! rotation, TAI64N timestamps). With its `mock-instant` feature it reads
//! `mock_instant::MockClock` instead, a **thread-local** register that only moves when set.
//!
//! The choice made here:
//! - Before every call into boringtun, [`Boringtun`] sets `MockClock` to `now - epoch` (the
//!   engine's `now`, measured from the engine's creation). The engine never lets `now` go
//!   backwards, and it sets the register on the calling thread, so the value is right even
//!   when a tokio task moves between worker threads.
//! - The feature is enabled only by `postern-node`'s **dev-dependency** on boringtun. Tests of
//!   this crate therefore run boringtun on the engine's fake clock: a rekey after
//!   `REKEY_AFTER_TIME` (120 s) takes microseconds and never flakes. Production builds do
//!   not enable it, boringtun reads the real monotonic clock, and setting the unused register
//!   costs a thread-local store per call.
//! - Cargo unifies features per build: a `cargo test --workspace` run also builds the real
//!   binaries with `mock-instant`. That is still correct, because the I/O shell passes the
//!   real `Instant::now()` as `now` and boringtun then follows it through the register. This
//!   is why the register is set unconditionally rather than only in tests.
//!
//! Alternatives rejected: a clock trait of our own would mean forking boringtun; running
//! tests in real time would make a rekey test take two minutes and timing-dependent.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// What one call into a session produced. Borrowed from the caller's buffer.
#[derive(Debug)]
#[must_use = "a session output may be a datagram to send or a packet to deliver"]
pub enum SessionOutput<'a> {
    /// Nothing (more) to do.
    Done,
    /// Send these bytes to the peer. After a `decapsulate` that returned this, call
    /// `decapsulate` again with an empty datagram until it returns `Done`: queued packets
    /// are flushed that way.
    WriteToNetwork(&'a [u8]),
    /// A decrypted IP packet for the local stack.
    WriteToTunnel(&'a [u8]),
    /// The call failed; the input is dropped.
    Error(SessionError),
}

/// Why a session or the responder refused a datagram or could not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Not a WireGuard message, or a malformed one.
    #[error("not a valid WireGuard message")]
    InvalidPacket,
    /// The message's MAC or AEAD tag did not verify (wrong key, forged or corrupted).
    #[error("message failed authentication")]
    Unauthenticated,
    /// A data packet was replayed or is too old for the replay window.
    #[error("replayed or stale data packet")]
    Replay,
    /// A data packet arrived for a session that does not exist (expired or never made).
    #[error("no session for this message")]
    NoSession,
    /// The node is under handshake load and the source is not known, so no cookie could be
    /// sent; the message is dropped.
    #[error("under load and no source address to send a cookie to")]
    UnderLoad,
    /// The session expired (no handshake for REJECT_AFTER_TIME * 3, or REKEY_ATTEMPT_TIME of
    /// failed attempts). New outbound traffic starts a fresh handshake.
    #[error("session expired")]
    Expired,
    /// Anything else boringtun reported.
    #[error("WireGuard error: {0}")]
    Other(&'static str),
}

/// One peer's WireGuard state machine. Every method takes `now` and must be called with
/// non-decreasing `now` values.
pub trait WireGuardSession: Send {
    /// Encrypts an IP packet for the peer. Without a session, the packet is queued inside and
    /// a handshake initiation is returned instead (or `Done` if one is in flight).
    /// `dst` must be at least `packet.len() + 32` and at least 148 bytes.
    fn encapsulate<'a>(
        &mut self,
        now: Instant,
        packet: &[u8],
        dst: &'a mut [u8],
    ) -> SessionOutput<'a>;

    /// Processes a datagram from the peer (already routed here by the responder). An empty
    /// `datagram` flushes queued packets; see [`SessionOutput::WriteToNetwork`].
    fn decapsulate<'a>(
        &mut self,
        now: Instant,
        src: Option<IpAddr>,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> SessionOutput<'a>;

    /// Runs the session's timers (retransmit, rekey, keepalive, expiry). Call about every
    /// 250 ms; may return a datagram to send.
    fn update_timers<'a>(&mut self, now: Instant, dst: &'a mut [u8]) -> SessionOutput<'a>;
}

/// What the responder made of a datagram before any session saw it.
#[derive(Debug)]
pub enum Screened<'a> {
    /// Under load: send this cookie reply back to the source and drop the datagram.
    CookieReply(&'a [u8]),
    /// A handshake initiation from the peer with this static public key.
    Initiation {
        /// The initiator's static public key.
        peer: [u8; 32],
    },
    /// A message for the session that owns this receiver index.
    ForIndex(u32),
    /// Dropped.
    Rejected(SessionError),
}

/// The node-wide part of WireGuard: rate limiting handshakes (cookie replies under load),
/// identifying initiators, and making sessions.
pub trait WireGuardResponder: Send {
    /// The per-peer session type.
    type Session: WireGuardSession;

    /// Makes a session with `peer`. `index` is the engine's 24-bit peer index: the session's
    /// receiver indices must carry it in their top 24 bits so datagrams can be routed back.
    fn new_session(
        &self,
        now: Instant,
        peer: &PublicKey,
        preshared_key: Option<[u8; 32]>,
        persistent_keepalive: Option<u16>,
        index: u32,
    ) -> Self::Session;

    /// Looks at a datagram from `src` before any session: verifies MACs, applies the
    /// handshake rate limit, and says who it is for. `dst` receives a cookie reply if one is
    /// due (at least 64 bytes).
    fn screen<'a>(
        &self,
        now: Instant,
        src: Option<IpAddr>,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> Screened<'a>;

    /// Resets the handshake rate limiter's count. Call once a second.
    fn reset_rate_limit(&self, now: Instant);
}

/// boringtun 0.7's `noise` module as a [`WireGuardResponder`].
pub struct Boringtun {
    epoch: Instant,
    secret: StaticSecret,
    public: PublicKey,
    /// Screens datagrams before sessions: the real limit, cookie replies.
    limiter: Arc<RateLimiter>,
    /// Given to every `Tunn`: datagrams are already screened, so it only checks MACs again and
    /// never limits (its limit is unreachable), and the engine resets nothing in it.
    session_limiter: Arc<RateLimiter>,
}

impl Boringtun {
    /// A responder for the node with `secret`, allowing `handshakes_per_second` handshake
    /// messages each second before it answers with cookie replies. `now` is the engine's
    /// creation time (the epoch of boringtun's clock; see the module docs).
    pub fn new(now: Instant, secret: StaticSecret, handshakes_per_second: u64) -> Self {
        sync_clock(now, now);
        let public = PublicKey::from(&secret);
        Self {
            epoch: now,
            limiter: Arc::new(RateLimiter::new(&public, handshakes_per_second)),
            session_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            secret,
            public,
        }
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }
}

impl std::fmt::Debug for Boringtun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boringtun")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl WireGuardResponder for Boringtun {
    type Session = BoringtunSession;

    fn new_session(
        &self,
        now: Instant,
        peer: &PublicKey,
        preshared_key: Option<[u8; 32]>,
        persistent_keepalive: Option<u16>,
        index: u32,
    ) -> BoringtunSession {
        sync_clock(self.epoch, now);
        let tunn = Tunn::new(
            self.secret.clone(),
            *peer,
            preshared_key,
            persistent_keepalive,
            index,
            Some(Arc::clone(&self.session_limiter)),
        );
        BoringtunSession {
            epoch: self.epoch,
            tunn: Box::new(tunn),
        }
    }

    fn screen<'a>(
        &self,
        now: Instant,
        src: Option<IpAddr>,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> Screened<'a> {
        sync_clock(self.epoch, now);
        let packet = match self.limiter.verify_packet(src, datagram, dst) {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => return Screened::CookieReply(cookie),
            Err(TunnResult::Err(e)) => return Screened::Rejected(map_error(&e)),
            Err(_) => return Screened::Rejected(SessionError::InvalidPacket),
        };
        match packet {
            Packet::HandshakeInit(init) => {
                match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => Screened::Initiation {
                        peer: half.peer_static_public,
                    },
                    Err(e) => Screened::Rejected(map_error(&e)),
                }
            }
            Packet::HandshakeResponse(p) => Screened::ForIndex(p.receiver_idx),
            Packet::PacketCookieReply(p) => Screened::ForIndex(p.receiver_idx),
            Packet::PacketData(p) => Screened::ForIndex(p.receiver_idx),
        }
    }

    fn reset_rate_limit(&self, now: Instant) {
        sync_clock(self.epoch, now);
        self.limiter.reset_count();
    }
}

/// One boringtun `Tunn` as a [`WireGuardSession`].
pub struct BoringtunSession {
    epoch: Instant,
    tunn: Box<Tunn>,
}

impl std::fmt::Debug for BoringtunSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoringtunSession").finish_non_exhaustive()
    }
}

impl WireGuardSession for BoringtunSession {
    fn encapsulate<'a>(
        &mut self,
        now: Instant,
        packet: &[u8],
        dst: &'a mut [u8],
    ) -> SessionOutput<'a> {
        sync_clock(self.epoch, now);
        convert(self.tunn.encapsulate(packet, dst))
    }

    fn decapsulate<'a>(
        &mut self,
        now: Instant,
        src: Option<IpAddr>,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> SessionOutput<'a> {
        sync_clock(self.epoch, now);
        convert(self.tunn.decapsulate(src, datagram, dst))
    }

    fn update_timers<'a>(&mut self, now: Instant, dst: &'a mut [u8]) -> SessionOutput<'a> {
        sync_clock(self.epoch, now);
        convert(self.tunn.update_timers(dst))
    }
}

/// Points boringtun's clock (when built with `mock-instant`) at `now`; see the module docs.
fn sync_clock(epoch: Instant, now: Instant) {
    mock_instant::MockClock::set_time(now.saturating_duration_since(epoch));
}

fn convert(result: TunnResult<'_>) -> SessionOutput<'_> {
    match result {
        TunnResult::Done => SessionOutput::Done,
        TunnResult::Err(e) => SessionOutput::Error(map_error(&e)),
        TunnResult::WriteToNetwork(bytes) => SessionOutput::WriteToNetwork(bytes),
        TunnResult::WriteToTunnelV4(bytes, _) | TunnResult::WriteToTunnelV6(bytes, _) => {
            SessionOutput::WriteToTunnel(bytes)
        }
    }
}

fn map_error(e: &WireGuardError) -> SessionError {
    match e {
        WireGuardError::InvalidPacket
        | WireGuardError::IncorrectPacketLength
        | WireGuardError::WrongPacketType
        | WireGuardError::UnexpectedPacket => SessionError::InvalidPacket,
        WireGuardError::InvalidMac
        | WireGuardError::InvalidAeadTag
        | WireGuardError::WrongKey
        | WireGuardError::InvalidTai64nTimestamp
        | WireGuardError::WrongTai64nTimestamp => SessionError::Unauthenticated,
        WireGuardError::InvalidCounter | WireGuardError::DuplicateCounter => SessionError::Replay,
        WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => SessionError::NoSession,
        WireGuardError::UnderLoad => SessionError::UnderLoad,
        WireGuardError::ConnectionExpired => SessionError::Expired,
        WireGuardError::DestinationBufferTooSmall => SessionError::Other("buffer too small"),
        WireGuardError::LockFailed => SessionError::Other("lock failed"),
    }
}

//! The control channel's encryption: Noise IK, sans-IO.
//!
//! The node is the initiator and uses its machine key as its Noise static key; the coord
//! is the responder with its own static key, which the node knows in advance (pinned on
//! first contact or given with `--coord-key`). After the one round trip of IK both sides
//! are authenticated: the node knows it talks to the coord it pinned, and the coord learns
//! (and has proof of) the node's machine key.
//!
//! # Wire format
//!
//! Every Noise message travels as a *record*: a big-endian `u16` length, then the message.
//! The first record from the node is IK's first handshake message, the first record from
//! the coord is the second; every later record is a transport message carrying up to
//! [`MAX_PLAINTEXT_CHUNK`] bytes of application data. The application data is a plain byte
//! stream (the control protocol's length-prefixed frames), chunked at arbitrary points, so a
//! frame larger than one Noise message simply spans several records.
//!
//! # Use
//!
//! Feed every byte read from the connection to [`NoiseChannel::handle_input`]; write out
//! whatever [`NoiseChannel::poll_transmit`] returns after every call; read decrypted bytes
//! with [`NoiseChannel::take_plaintext`]. Once [`NoiseChannel::is_established`], queue
//! application bytes with [`NoiseChannel::send`]. Any error is final: a tampered, replayed or
//! reordered record, or a handshake with the wrong key, breaks the channel for good and the
//! connection must be closed.

use postern_proto::{MachinePrivateKey, MachinePublicKey};

/// The Noise protocol name, fixed for protocol version 1.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// The prologue both sides mix in, binding the handshake to this protocol.
pub const NOISE_PROLOGUE: &[u8] = b"postern control v1";

/// Largest Noise message (handshake or transport), fixed by the Noise specification.
pub const MAX_NOISE_MESSAGE: usize = 65535;

/// Length of the AEAD tag appended to every transport message.
const TAG_LEN: usize = 16;

/// Most application bytes one transport record carries.
pub const MAX_PLAINTEXT_CHUNK: usize = MAX_NOISE_MESSAGE - TAG_LEN;

/// Length of a record's length prefix.
const RECORD_PREFIX_LEN: usize = 2;

/// Why the control channel failed. Every error is final: close the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The handshake failed: usually the node pinned a different coord key than the coord
    /// has (the coord's state directory was replaced), or the coord does not accept this
    /// machine key.
    #[error(
        "control handshake failed ({0}); if the coord was reinstalled, check its key with `GET /key` and re-pin it"
    )]
    Handshake(snow::Error),
    /// A transport record did not decrypt: the bytes were altered, replayed or reordered
    /// on the way.
    #[error("control channel record failed to decrypt ({0}); the connection was tampered with")]
    Decrypt(snow::Error),
    /// Encrypting failed (a nonce ran out, which takes 2^64 records).
    #[error("control channel could not encrypt ({0}); reconnect")]
    Encrypt(snow::Error),
    /// Application data was queued before the handshake completed.
    #[error("control channel is not established yet; wait for the handshake")]
    NotEstablished,
    /// The channel failed earlier and is unusable.
    #[error("control channel failed earlier; reconnect")]
    Broken,
}

/// One side of a Noise IK control channel. See the module docs.
pub struct NoiseChannel {
    state: State,
    inbound: Vec<u8>,
    outbound: Vec<u8>,
    plaintext: Vec<u8>,
    remote_static: Option<MachinePublicKey>,
}

enum State {
    Handshake(Box<snow::HandshakeState>),
    Transport(Box<snow::TransportState>),
    Broken,
}

impl std::fmt::Debug for NoiseChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Handshake(_) => "handshake",
            State::Transport(_) => "established",
            State::Broken => "broken",
        };
        f.debug_struct("NoiseChannel")
            .field("state", &state)
            .field("remote_static", &self.remote_static)
            .finish_non_exhaustive()
    }
}

impl NoiseChannel {
    /// Starts the node's side: authenticates with `machine_key` and accepts only a coord
    /// whose static key is `coord_key`. The first handshake record is queued at once; send
    /// it with [`Self::poll_transmit`].
    pub fn initiator(
        machine_key: &MachinePrivateKey,
        coord_key: &MachinePublicKey,
    ) -> Result<Self, ChannelError> {
        let secret = zeroize::Zeroizing::new(machine_key.to_x25519().to_bytes());
        let mut handshake = builder()?
            .local_private_key(secret.as_slice())
            .and_then(|b| b.remote_public_key(coord_key.as_bytes()))
            .and_then(snow::Builder::build_initiator)
            .map_err(ChannelError::Handshake)?;
        let mut channel = Self::new(State::Broken);
        channel.remote_static = Some(*coord_key);
        let mut message = vec![0u8; MAX_NOISE_MESSAGE];
        let len = handshake
            .write_message(&[], &mut message)
            .map_err(ChannelError::Handshake)?;
        channel.push_record(message.get(..len).unwrap_or_default());
        channel.state = State::Handshake(Box::new(handshake));
        Ok(channel)
    }

    /// Starts the coord's side with its static key. Call [`Self::remote_static`] after
    /// [`Self::is_established`] to learn which machine connected.
    pub fn responder(coord_key: &MachinePrivateKey) -> Result<Self, ChannelError> {
        let secret = zeroize::Zeroizing::new(coord_key.to_x25519().to_bytes());
        let handshake = builder()?
            .local_private_key(secret.as_slice())
            .and_then(snow::Builder::build_responder)
            .map_err(ChannelError::Handshake)?;
        Ok(Self::new(State::Handshake(Box::new(handshake))))
    }

    /// Whether the handshake is complete and application data may flow.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Transport(_))
    }

    /// The other side's authenticated static key: on the coord, the node's machine key
    /// (known once established); on the node, the pinned coord key.
    pub fn remote_static(&self) -> Option<MachinePublicKey> {
        if self.is_established() {
            self.remote_static
        } else {
            None
        }
    }

    /// Processes bytes read from the connection, in pieces of any size. Completes the
    /// handshake (queuing the coord's reply record) or decrypts transport records into the
    /// plaintext buffer.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        if matches!(self.state, State::Broken) {
            return Err(ChannelError::Broken);
        }
        self.inbound.extend_from_slice(bytes);
        let result = self.drain_records();
        if result.is_err() {
            self.state = State::Broken;
            self.inbound.clear();
            self.outbound.clear();
        }
        result
    }

    /// Encrypts application bytes for sending, chunked into as many records as needed.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(), ChannelError> {
        let State::Transport(transport) = &mut self.state else {
            return Err(match self.state {
                State::Broken => ChannelError::Broken,
                _ => ChannelError::NotEstablished,
            });
        };
        let mut message = vec![0u8; MAX_NOISE_MESSAGE];
        for chunk in plaintext.chunks(MAX_PLAINTEXT_CHUNK) {
            let len = transport
                .write_message(chunk, &mut message)
                .map_err(ChannelError::Encrypt)?;
            let record = message.get(..len).unwrap_or_default();
            push_record(&mut self.outbound, record);
        }
        Ok(())
    }

    /// Bytes to write to the connection, if any. Call after every other method.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.outbound.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outbound))
        }
    }

    /// Decrypted application bytes received so far (emptied by this call).
    pub fn take_plaintext(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.plaintext)
    }

    fn new(state: State) -> Self {
        Self {
            state,
            inbound: Vec::new(),
            outbound: Vec::new(),
            plaintext: Vec::new(),
            remote_static: None,
        }
    }

    fn push_record(&mut self, message: &[u8]) {
        push_record(&mut self.outbound, message);
    }

    fn drain_records(&mut self) -> Result<(), ChannelError> {
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        loop {
            let Some(record) = take_record(&mut self.inbound) else {
                return Ok(());
            };
            match std::mem::replace(&mut self.state, State::Broken) {
                State::Handshake(mut handshake) => {
                    handshake
                        .read_message(&record, &mut buf)
                        .map_err(ChannelError::Handshake)?;
                    if !handshake.is_initiator() {
                        let len = handshake
                            .write_message(&[], &mut buf)
                            .map_err(ChannelError::Handshake)?;
                        push_record(&mut self.outbound, buf.get(..len).unwrap_or_default());
                        let remote = handshake
                            .get_remote_static()
                            .and_then(|key| <[u8; 32]>::try_from(key).ok())
                            .map(MachinePublicKey::from_bytes);
                        self.remote_static = remote;
                    }
                    let transport = handshake
                        .into_transport_mode()
                        .map_err(ChannelError::Handshake)?;
                    self.state = State::Transport(Box::new(transport));
                }
                State::Transport(mut transport) => {
                    let len = transport
                        .read_message(&record, &mut buf)
                        .map_err(ChannelError::Decrypt)?;
                    self.plaintext
                        .extend_from_slice(buf.get(..len).unwrap_or_default());
                    self.state = State::Transport(transport);
                }
                State::Broken => return Err(ChannelError::Broken),
            }
        }
    }
}

fn builder() -> Result<snow::Builder<'static>, ChannelError> {
    let params: snow::params::NoiseParams =
        NOISE_PARAMS.parse().map_err(ChannelError::Handshake)?;
    snow::Builder::new(params)
        .prologue(NOISE_PROLOGUE)
        .map_err(ChannelError::Handshake)
}

fn push_record(out: &mut Vec<u8>, message: &[u8]) {
    // Every message we produce is at most MAX_NOISE_MESSAGE, so it fits in a u16.
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
}

fn take_record(inbound: &mut Vec<u8>) -> Option<Vec<u8>> {
    let prefix: [u8; RECORD_PREFIX_LEN] = inbound.get(..RECORD_PREFIX_LEN)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes(prefix));
    let record = inbound
        .get(RECORD_PREFIX_LEN..RECORD_PREFIX_LEN + len)?
        .to_vec();
    inbound.drain(..RECORD_PREFIX_LEN + len);
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MachinePrivateKey {
        MachinePrivateKey::generate(&mut rand::rngs::OsRng)
    }

    /// Runs the handshake between two channels, moving bytes both ways.
    fn pump(a: &mut NoiseChannel, b: &mut NoiseChannel) -> Result<(), ChannelError> {
        for _ in 0..4 {
            if let Some(bytes) = a.poll_transmit() {
                b.handle_input(&bytes)?;
            }
            if let Some(bytes) = b.poll_transmit() {
                a.handle_input(&bytes)?;
            }
        }
        Ok(())
    }

    #[test]
    fn pair_authenticates_both_sides_and_carries_large_data() {
        let (machine, coord) = (key(), key());
        let mut node = NoiseChannel::initiator(&machine, &coord.public_key()).unwrap();
        let mut server = NoiseChannel::responder(&coord).unwrap();
        assert!(!server.is_established());
        assert!(matches!(
            server.send(b"x"),
            Err(ChannelError::NotEstablished)
        ));
        pump(&mut node, &mut server).unwrap();
        assert!(node.is_established() && server.is_established());
        assert_eq!(server.remote_static(), Some(machine.public_key()));
        assert_eq!(node.remote_static(), Some(coord.public_key()));

        // Larger than three Noise messages, delivered byte-sliced in odd pieces.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        node.send(&big).unwrap();
        let wire = node.poll_transmit().unwrap();
        for piece in wire.chunks(7_777) {
            server.handle_input(piece).unwrap();
        }
        assert_eq!(server.take_plaintext(), big);
        server.send(b"hello node").unwrap();
        node.handle_input(&server.poll_transmit().unwrap()).unwrap();
        assert_eq!(node.take_plaintext(), b"hello node");
    }

    #[test]
    fn wrong_pinned_coord_key_fails_the_handshake() {
        let (machine, coord, impostor) = (key(), key(), key());
        let mut node = NoiseChannel::initiator(&machine, &coord.public_key()).unwrap();
        let mut server = NoiseChannel::responder(&impostor).unwrap();
        let err = pump(&mut node, &mut server).unwrap_err();
        assert!(matches!(err, ChannelError::Handshake(_)), "{err}");
        assert!(!server.is_established());
        assert!(!node.is_established());
    }

    #[test]
    fn a_tampered_byte_breaks_the_channel_for_good() {
        let (machine, coord) = (key(), key());
        let mut node = NoiseChannel::initiator(&machine, &coord.public_key()).unwrap();
        let mut server = NoiseChannel::responder(&coord).unwrap();
        pump(&mut node, &mut server).unwrap();
        node.send(b"register me").unwrap();
        let mut wire = node.poll_transmit().unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 0x01;
        let err = server.handle_input(&wire).unwrap_err();
        assert!(matches!(err, ChannelError::Decrypt(_)), "{err}");
        assert!(server.take_plaintext().is_empty());
        node.send(b"again").unwrap();
        let err = server
            .handle_input(&node.poll_transmit().unwrap())
            .unwrap_err();
        assert!(matches!(err, ChannelError::Broken), "{err}");
    }

    #[test]
    fn a_replayed_record_is_refused() {
        let (machine, coord) = (key(), key());
        let mut node = NoiseChannel::initiator(&machine, &coord.public_key()).unwrap();
        let mut server = NoiseChannel::responder(&coord).unwrap();
        pump(&mut node, &mut server).unwrap();
        node.send(b"once").unwrap();
        let wire = node.poll_transmit().unwrap();
        server.handle_input(&wire).unwrap();
        assert!(server.handle_input(&wire).is_err());
    }
}

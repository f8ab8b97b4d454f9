//! Relay frames: what nodes and the relay server say to each other.
//!
//! The relay forwards already-encrypted WireGuard packets between nodes that cannot reach
//! each other directly, addressed by node public key. Relay frames ride in the common
//! [frame format](crate::frame) (u32 big-endian length, type byte, payload); this module
//! gives the payloads meaning. All fields are fixed binary layouts:
//!
//! | type | frame | payload |
//! |---|---|---|
//! | `0x10` | [`RelayFrame::ClientInfo`] | node key (32) + proof (0..=[`MAX_PROOF_LEN`]) |
//! | `0x11` | [`RelayFrame::ServerChallenge`] | relay's one-time x25519 public key (32) |
//! | `0x12` | [`RelayFrame::SendPacket`] | destination node key (32) + packet |
//! | `0x13` | [`RelayFrame::RecvPacket`] | source node key (32) + packet |
//! | `0x14` | [`RelayFrame::KeepAlive`] | empty |
//! | `0x15` | [`RelayFrame::PeerGone`] | node key (32) + reason (1) |
//! | `0x16` | [`RelayFrame::Health`] | UTF-8 problem text (0..=[`MAX_HEALTH_LEN`]); empty = healthy |
//! | `0x17` | [`RelayFrame::Attached`] | empty |
//!
//! An attach goes: relay → [`RelayFrame::ServerChallenge`], client →
//! [`RelayFrame::ClientInfo`] whose proof is [`attach_proof`], relay → [`RelayFrame::Attached`]
//! (or a [`RelayFrame::Health`] saying why not, then close). See [`attach_proof`].
//!
//! Packets are at most [`MAX_PACKET_LEN`] bytes; a decoder for relay connections should be
//! built with [`MAX_RELAY_FRAME_LEN`]. Parsing never panics and reports what was wrong.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{Frame, FrameError};
use crate::keys::{KEY_LEN, NodePrivateKey, NodePublicKey, x25519};

/// The HTTP path a relay connection upgrades on.
pub const RELAY_PATH: &str = "/relay";
/// The `Upgrade` protocol token of a relay connection.
pub const RELAY_UPGRADE: &str = "postern-relay/1";

/// Largest packet a relay frame carries: the largest UDP payload.
pub const MAX_PACKET_LEN: usize = 65_535;
/// Largest client proof accepted in [`RelayFrame::ClientInfo`].
pub const MAX_PROOF_LEN: usize = 1024;
/// Largest health message, in bytes.
pub const MAX_HEALTH_LEN: usize = 1024;
/// Largest relay frame (type byte plus payload); use it for the relay's
/// [`FrameDecoder`](crate::frame::FrameDecoder).
pub const MAX_RELAY_FRAME_LEN: usize = 1 + KEY_LEN + MAX_PACKET_LEN;

const TYPE_CLIENT_INFO: u8 = 0x10;
const TYPE_SERVER_CHALLENGE: u8 = 0x11;
const TYPE_SEND_PACKET: u8 = 0x12;
const TYPE_RECV_PACKET: u8 = 0x13;
const TYPE_KEEP_ALIVE: u8 = 0x14;
const TYPE_PEER_GONE: u8 = 0x15;
const TYPE_HEALTH: u8 = 0x16;
const TYPE_ATTACHED: u8 = 0x17;

/// One relay frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayFrame {
    /// Client → relay, first frame: who the client is.
    ClientInfo {
        /// The node key the client receives packets for.
        node_key: NodePublicKey,
        /// Proof that the client holds the node key and is registered. Its format is the
        /// relay's business (a placeholder until the relay handshake is specified).
        proof: Vec<u8>,
    },
    /// Relay → client, first frame: a fresh x25519 public key the client proves its node
    /// key against (see [`attach_proof`]).
    ServerChallenge {
        /// The relay's one-time public key for this connection.
        challenge: [u8; KEY_LEN],
    },
    /// Relay → client: the proof was good and the node is registered; packets may flow.
    Attached,
    /// Client → relay: forward `packet` to the node holding `dst`.
    SendPacket {
        /// Destination node key.
        dst: NodePublicKey,
        /// The encrypted packet.
        packet: Vec<u8>,
    },
    /// Relay → client: `packet` arrived from the node holding `src`.
    RecvPacket {
        /// Source node key.
        src: NodePublicKey,
        /// The encrypted packet.
        packet: Vec<u8>,
    },
    /// Either way: the connection is alive.
    KeepAlive,
    /// Relay → client: a peer the client sent to is no longer attached.
    PeerGone {
        /// The peer's node key.
        peer: NodePublicKey,
        /// Why.
        reason: PeerGoneReason,
    },
    /// Relay → client: the relay's health; an empty problem means healthy.
    Health {
        /// What is wrong, in words, or empty.
        problem: String,
    },
}

/// Why a peer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerGoneReason {
    /// It was attached and disconnected.
    Disconnected,
    /// It is not attached to this relay.
    NotHere,
    /// A reason this build does not know.
    Other(u8),
}

/// Why a relay frame could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayFrameError {
    /// The type byte names no relay frame this build knows (a newer peer may send it;
    /// callers may skip such frames).
    #[error("unknown relay frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The payload is shorter than the frame's fixed fields.
    #[error("{frame} frame payload is {found} bytes, shorter than the {needed} its fields need")]
    Truncated {
        /// Which frame.
        frame: &'static str,
        /// Minimum payload length.
        needed: usize,
        /// Actual payload length.
        found: usize,
    },
    /// The payload is longer than the frame allows.
    #[error("{frame} frame payload is {found} bytes, longer than the {max} allowed")]
    TooLong {
        /// Which frame.
        frame: &'static str,
        /// Maximum payload length.
        max: usize,
        /// Actual payload length.
        found: usize,
    },
    /// A health message that is not UTF-8.
    #[error("health frame text is not valid UTF-8")]
    HealthNotUtf8,
    /// The frame does not fit the framing (only when encoding).
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl RelayFrame {
    /// Parses a frame from a relay connection's [`FrameDecoder`](crate::frame::FrameDecoder).
    pub fn parse(frame: &Frame) -> Result<Self, RelayFrameError> {
        let payload = frame.payload.as_slice();
        match frame.frame_type {
            TYPE_CLIENT_INFO => {
                let (node_key, proof) = split_key("client-info", payload)?;
                check_max("client-info", proof.len(), MAX_PROOF_LEN, KEY_LEN)?;
                Ok(Self::ClientInfo {
                    node_key,
                    proof: proof.to_vec(),
                })
            }
            TYPE_SERVER_CHALLENGE => {
                let (challenge, rest) = split_key("server-challenge", payload)?;
                check_max("server-challenge", rest.len(), 0, KEY_LEN)?;
                Ok(Self::ServerChallenge {
                    challenge: *challenge.as_bytes(),
                })
            }
            TYPE_ATTACHED => {
                check_max("attached", payload.len(), 0, 0)?;
                Ok(Self::Attached)
            }
            TYPE_SEND_PACKET => {
                let (dst, packet) = split_key("send-packet", payload)?;
                check_max("send-packet", packet.len(), MAX_PACKET_LEN, KEY_LEN)?;
                Ok(Self::SendPacket {
                    dst,
                    packet: packet.to_vec(),
                })
            }
            TYPE_RECV_PACKET => {
                let (src, packet) = split_key("recv-packet", payload)?;
                check_max("recv-packet", packet.len(), MAX_PACKET_LEN, KEY_LEN)?;
                Ok(Self::RecvPacket {
                    src,
                    packet: packet.to_vec(),
                })
            }
            TYPE_KEEP_ALIVE => {
                check_max("keepalive", payload.len(), 0, 0)?;
                Ok(Self::KeepAlive)
            }
            TYPE_PEER_GONE => {
                let (peer, rest) = split_key("peer-gone", payload)?;
                let reason = match rest {
                    [reason] => PeerGoneReason::from_byte(*reason),
                    [] => {
                        return Err(RelayFrameError::Truncated {
                            frame: "peer-gone",
                            needed: KEY_LEN + 1,
                            found: payload.len(),
                        });
                    }
                    _ => {
                        return Err(RelayFrameError::TooLong {
                            frame: "peer-gone",
                            max: KEY_LEN + 1,
                            found: payload.len(),
                        });
                    }
                };
                Ok(Self::PeerGone { peer, reason })
            }
            TYPE_HEALTH => {
                check_max("health", payload.len(), MAX_HEALTH_LEN, 0)?;
                let problem =
                    std::str::from_utf8(payload).map_err(|_| RelayFrameError::HealthNotUtf8)?;
                Ok(Self::Health {
                    problem: problem.to_owned(),
                })
            }
            other => Err(RelayFrameError::UnknownType(other)),
        }
    }

    /// Builds the frame for this relay frame, checking the same bounds [`RelayFrame::parse`]
    /// enforces.
    pub fn to_frame(&self) -> Result<Frame, RelayFrameError> {
        let (frame_type, payload) = match self {
            Self::ClientInfo { node_key, proof } => {
                check_max("client-info", proof.len(), MAX_PROOF_LEN, KEY_LEN)?;
                (TYPE_CLIENT_INFO, keyed(node_key, proof))
            }
            Self::ServerChallenge { challenge } => (TYPE_SERVER_CHALLENGE, challenge.to_vec()),
            Self::Attached => (TYPE_ATTACHED, Vec::new()),
            Self::SendPacket { dst, packet } => {
                check_max("send-packet", packet.len(), MAX_PACKET_LEN, KEY_LEN)?;
                (TYPE_SEND_PACKET, keyed(dst, packet))
            }
            Self::RecvPacket { src, packet } => {
                check_max("recv-packet", packet.len(), MAX_PACKET_LEN, KEY_LEN)?;
                (TYPE_RECV_PACKET, keyed(src, packet))
            }
            Self::KeepAlive => (TYPE_KEEP_ALIVE, Vec::new()),
            Self::PeerGone { peer, reason } => (TYPE_PEER_GONE, keyed(peer, &[reason.to_byte()])),
            Self::Health { problem } => {
                check_max("health", problem.len(), MAX_HEALTH_LEN, 0)?;
                (TYPE_HEALTH, problem.as_bytes().to_vec())
            }
        };
        Ok(Frame::new(frame_type, payload))
    }

    /// Appends this frame's wire form (length prefix included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), RelayFrameError> {
        Ok(self.to_frame()?.encode(MAX_RELAY_FRAME_LEN, out)?)
    }
}

/// Length of the proof [`attach_proof`] makes.
pub const ATTACH_PROOF_LEN: usize = 32;

/// Domain separation for attach proofs, so the MAC means nothing anywhere else.
const ATTACH_PROOF_CONTEXT: &[u8] = b"postern relay attach v1";

/// Why an attach proof could not be made or does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachProofError {
    /// One of the keys is a low-order point, which would make the shared secret guessable.
    #[error("the relay challenge or the node key is a weak (low-order) x25519 key; refusing it")]
    WeakKey,
    /// The proof does not match: the client does not hold the node key it named.
    #[error("the attach proof does not match the node key; the client does not hold that key")]
    Mismatch,
}

/// The relay's side of one attach: a one-time x25519 key pair whose public half goes to the
/// client in [`RelayFrame::ServerChallenge`].
///
/// Make one per connection with [`AttachChallenge::generate`], send
/// [`AttachChallenge::challenge`], then check the client's [`RelayFrame::ClientInfo`] with
/// [`AttachChallenge::verify`]. Only the holder of the named node's private key can compute
/// the proof (x25519 between the node key and this one-time key, then an HMAC-SHA256 over
/// both public keys), and a proof is useless on any other connection.
pub struct AttachChallenge {
    secret: x25519::StaticSecret,
    public: [u8; KEY_LEN],
}

impl AttachChallenge {
    /// A fresh challenge from a cryptographic random number generator (`rand::rngs::OsRng`).
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        let secret = x25519::StaticSecret::random_from_rng(rng);
        let public = x25519::PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The public key to send in [`RelayFrame::ServerChallenge`].
    pub fn challenge(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// The frame to send first on a new relay connection.
    pub fn frame(&self) -> RelayFrame {
        RelayFrame::ServerChallenge {
            challenge: self.public,
        }
    }

    /// Checks a client's proof that it holds `node_key`, in constant time.
    ///
    /// Fails with [`AttachProofError::Mismatch`] for a wrong or truncated proof and
    /// [`AttachProofError::WeakKey`] for a low-order node key.
    pub fn verify(&self, node_key: &NodePublicKey, proof: &[u8]) -> Result<(), AttachProofError> {
        let shared = self.secret.diffie_hellman(&node_key.to_x25519());
        if !shared.was_contributory() {
            return Err(AttachProofError::WeakKey);
        }
        proof_mac(shared.as_bytes(), &self.public, node_key)
            .verify_slice(proof)
            .map_err(|_| AttachProofError::Mismatch)
    }
}

impl std::fmt::Debug for AttachChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachChallenge")
            .field("challenge", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// The client's answer to a [`RelayFrame::ServerChallenge`]: proof that it holds `node_key`,
/// to send as the proof of [`RelayFrame::ClientInfo`].
///
/// Fails with [`AttachProofError::WeakKey`] if the challenge is a low-order point (a broken
/// or hostile relay).
pub fn attach_proof(
    node_key: &NodePrivateKey,
    challenge: &[u8; KEY_LEN],
) -> Result<[u8; ATTACH_PROOF_LEN], AttachProofError> {
    let shared = node_key
        .to_x25519()
        .diffie_hellman(&x25519::PublicKey::from(*challenge));
    if !shared.was_contributory() {
        return Err(AttachProofError::WeakKey);
    }
    let mac = proof_mac(shared.as_bytes(), challenge, &node_key.public_key());
    Ok(mac.finalize().into_bytes().into())
}

fn proof_mac(
    shared: &[u8; KEY_LEN],
    challenge: &[u8; KEY_LEN],
    node_key: &NodePublicKey,
) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail; the fallback is never taken.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(shared)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(ATTACH_PROOF_CONTEXT);
    mac.update(challenge);
    mac.update(node_key.as_bytes());
    mac
}

impl PeerGoneReason {
    fn from_byte(byte: u8) -> Self {
        match byte {
            0 => Self::Disconnected,
            1 => Self::NotHere,
            other => Self::Other(other),
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Self::Disconnected => 0,
            Self::NotHere => 1,
            Self::Other(other) => other,
        }
    }
}

fn split_key<'a>(
    frame: &'static str,
    payload: &'a [u8],
) -> Result<(NodePublicKey, &'a [u8]), RelayFrameError> {
    let (key, rest) = payload
        .split_first_chunk::<KEY_LEN>()
        .ok_or(RelayFrameError::Truncated {
            frame,
            needed: KEY_LEN,
            found: payload.len(),
        })?;
    Ok((NodePublicKey::from_bytes(*key), rest))
}

/// Checks that a variable part of `len` bytes, after `fixed` fixed bytes, is within `max`.
fn check_max(
    frame: &'static str,
    len: usize,
    max: usize,
    fixed: usize,
) -> Result<(), RelayFrameError> {
    if len > max {
        return Err(RelayFrameError::TooLong {
            frame,
            max: max.saturating_add(fixed),
            found: len.saturating_add(fixed),
        });
    }
    Ok(())
}

fn keyed(key: &NodePublicKey, rest: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(KEY_LEN + rest.len());
    payload.extend_from_slice(key.as_bytes());
    payload.extend_from_slice(rest);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use proptest::prelude::*;

    fn key(byte: u8) -> NodePublicKey {
        NodePublicKey::from_bytes([byte; 32])
    }

    fn arb_frame() -> impl Strategy<Value = RelayFrame> {
        let bytes = |max| proptest::collection::vec(any::<u8>(), 0..max);
        prop_oneof![
            (any::<u8>(), bytes(MAX_PROOF_LEN)).prop_map(|(k, proof)| RelayFrame::ClientInfo {
                node_key: key(k),
                proof
            }),
            (any::<u8>(), bytes(2000)).prop_map(|(k, packet)| RelayFrame::SendPacket {
                dst: key(k),
                packet
            }),
            (any::<u8>(), bytes(2000)).prop_map(|(k, packet)| RelayFrame::RecvPacket {
                src: key(k),
                packet
            }),
            Just(RelayFrame::KeepAlive),
            Just(RelayFrame::Attached),
            any::<[u8; 32]>().prop_map(|challenge| RelayFrame::ServerChallenge { challenge }),
            (any::<u8>(), any::<u8>()).prop_map(|(k, r)| RelayFrame::PeerGone {
                peer: key(k),
                reason: PeerGoneReason::from_byte(r)
            }),
            "[^\u{0}]{0,100}".prop_map(|problem| RelayFrame::Health { problem }),
        ]
    }

    #[test]
    fn max_size_packets_fit_the_relay_frame_limit() {
        let frame = RelayFrame::SendPacket {
            dst: key(1),
            packet: vec![0; MAX_PACKET_LEN],
        };
        let mut wire = Vec::new();
        frame.encode(&mut wire).unwrap();
        let mut decoder = FrameDecoder::new(MAX_RELAY_FRAME_LEN);
        decoder.push(&wire);
        let parsed = RelayFrame::parse(&decoder.next_frame().unwrap().unwrap()).unwrap();
        assert_eq!(parsed, frame);

        let too_big = RelayFrame::RecvPacket {
            src: key(1),
            packet: vec![0; MAX_PACKET_LEN + 1],
        };
        assert_eq!(
            too_big.to_frame().unwrap_err().to_string(),
            "recv-packet frame payload is 65568 bytes, longer than the 65567 allowed"
        );
    }

    #[test]
    fn bad_frames_get_clear_errors() {
        let parse = |t: u8, payload: &[u8]| RelayFrame::parse(&Frame::new(t, payload.to_vec()));
        assert_eq!(
            parse(0x99, &[]).unwrap_err().to_string(),
            "unknown relay frame type 0x99"
        );
        assert_eq!(
            parse(TYPE_SEND_PACKET, &[1; 5]).unwrap_err().to_string(),
            "send-packet frame payload is 5 bytes, shorter than the 32 its fields need"
        );
        assert_eq!(
            parse(TYPE_KEEP_ALIVE, &[0]).unwrap_err().to_string(),
            "keepalive frame payload is 1 bytes, longer than the 0 allowed"
        );
        assert_eq!(
            parse(TYPE_PEER_GONE, &[0; 32]).unwrap_err().to_string(),
            "peer-gone frame payload is 32 bytes, shorter than the 33 its fields need"
        );
        assert_eq!(
            parse(TYPE_PEER_GONE, &[0; 34]).unwrap_err().to_string(),
            "peer-gone frame payload is 34 bytes, longer than the 33 allowed"
        );
        assert_eq!(
            parse(TYPE_HEALTH, &[0xff]).unwrap_err(),
            RelayFrameError::HealthNotUtf8
        );
        assert_eq!(
            parse(TYPE_CLIENT_INFO, &[0; 32 + MAX_PROOF_LEN + 1])
                .unwrap_err()
                .to_string(),
            "client-info frame payload is 1057 bytes, longer than the 1056 allowed"
        );
    }

    #[test]
    fn attach_proof_holds_only_for_the_key_holder_and_the_challenge() {
        let mut rng = rand::rngs::OsRng;
        let node = NodePrivateKey::generate(&mut rng);
        let other = NodePrivateKey::generate(&mut rng);
        let challenge = AttachChallenge::generate(&mut rng);
        let proof = attach_proof(&node, &challenge.challenge()).unwrap();
        challenge.verify(&node.public_key(), &proof).unwrap();
        // Someone else's key, a proof for another challenge, a truncated proof.
        assert_eq!(
            challenge.verify(&other.public_key(), &proof),
            Err(AttachProofError::Mismatch)
        );
        let elsewhere = AttachChallenge::generate(&mut rng);
        let replayed = attach_proof(&node, &elsewhere.challenge()).unwrap();
        assert_eq!(
            challenge
                .verify(&node.public_key(), &replayed)
                .unwrap_err()
                .to_string(),
            "the attach proof does not match the node key; the client does not hold that key"
        );
        assert_eq!(
            challenge.verify(&node.public_key(), &proof[..31]),
            Err(AttachProofError::Mismatch)
        );
        // Low-order points on either side are refused.
        assert_eq!(
            challenge.verify(&NodePublicKey::from_bytes([0; 32]), &[0; 32]),
            Err(AttachProofError::WeakKey)
        );
        assert_eq!(
            attach_proof(&node, &[0; 32]),
            Err(AttachProofError::WeakKey)
        );
        assert!(!format!("{challenge:?}").contains("secret"));
    }

    #[test]
    fn challenge_frames_parse_strictly() {
        let parse = |t: u8, payload: &[u8]| RelayFrame::parse(&Frame::new(t, payload.to_vec()));
        assert_eq!(
            parse(TYPE_SERVER_CHALLENGE, &[7; 32]).unwrap(),
            RelayFrame::ServerChallenge { challenge: [7; 32] }
        );
        assert_eq!(
            parse(TYPE_SERVER_CHALLENGE, &[7; 33])
                .unwrap_err()
                .to_string(),
            "server-challenge frame payload is 33 bytes, longer than the 32 allowed"
        );
        assert_eq!(
            parse(TYPE_ATTACHED, &[1]).unwrap_err().to_string(),
            "attached frame payload is 1 bytes, longer than the 0 allowed"
        );
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in arb_frame()) {
            let mut wire = Vec::new();
            frame.encode(&mut wire).unwrap();
            let mut decoder = FrameDecoder::new(MAX_RELAY_FRAME_LEN);
            decoder.push(&wire);
            let parsed = RelayFrame::parse(&decoder.next_frame().unwrap().unwrap()).unwrap();
            prop_assert_eq!(parsed, frame);
        }

        #[test]
        fn parsing_arbitrary_payloads_never_panics(
            t in 0x0fu8..0x18,
            payload in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            if let Ok(frame) = RelayFrame::parse(&Frame::new(t, payload.clone())) {
                // Whatever parses re-encodes to the same bytes.
                prop_assert_eq!(frame.to_frame().unwrap(), Frame::new(t, payload));
            }
        }
    }
}

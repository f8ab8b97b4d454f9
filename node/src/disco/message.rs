//! Disco messages on the wire: sealed pings, pongs and call-me-maybes.
//!
//! ```text
//! magic "PDISCO" (6) | version 1 (1) | sender disco public key (32) | nonce (12) | sealed
//! sealed = ChaCha20-Poly1305(key, nonce, plaintext), 16-byte tag at the end
//! key    = HKDF-SHA256(salt "postern disco v1", X25519(own disco secret, peer disco public))
//!
//! plaintext:
//!   1 Ping        | tx id (12) | sender node key (32)
//!   2 Pong        | tx id (12) | observed address of the ping's sender (addr)
//!   3 CallMeMaybe | count (1, at most 16) | addr * count
//! addr = 4 | ipv4 (4) | port (2)   or   6 | ipv6 (16) | port (2), big-endian
//! ```
//!
//! The magic cannot start a WireGuard message (whose first byte is 1 to 4 followed by three
//! zero bytes) nor a STUN message (whose two top bits are zero), so one UDP socket carries
//! all three. Only the holders of the two disco keys can seal or open a message, so a
//! stranger can neither forge a pong (to steer traffic) nor read the endpoints in a
//! call-me-maybe. Both directions use the same key: nonces are unique because each sealer
//! draws a random 4-byte prefix at start and counts up in the other 8 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use postern_proto::{DiscoPublicKey, NodePublicKey, x25519};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// The first bytes of every disco datagram.
pub const MAGIC: &[u8; 6] = b"PDISCO";
/// The wire format version this node speaks.
pub const VERSION: u8 = 1;
/// Most endpoints one call-me-maybe carries.
pub const MAX_ENDPOINTS: usize = 16;
/// Length of a transaction id.
pub const TX_ID_LEN: usize = 12;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_LEN + NONCE_LEN;
const TYPE_PING: u8 = 1;
const TYPE_PONG: u8 = 2;
const TYPE_CALL_ME_MAYBE: u8 = 3;

/// A ping's transaction id: the pong that answers it carries the same.
pub type TxId = [u8; TX_ID_LEN];

/// One disco message, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoMessage {
    /// "Can you hear me on this path?" Answer with a [`DiscoMessage::Pong`] on the path it
    /// came from.
    Ping {
        /// Echoed in the pong.
        tx: TxId,
        /// The sender's node key, which must match the netmap's entry for its disco key.
        node_key: NodePublicKey,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's transaction id.
        tx: TxId,
        /// The address the ping came from, as the answering node saw it (the sender's
        /// public endpoint towards this peer).
        observed: SocketAddr,
    },
    /// Sent through the relay: "here are my endpoints, ping me on them now" (so both NATs
    /// open a mapping at the same time).
    CallMeMaybe {
        /// The sender's endpoints, local and public.
        endpoints: Vec<SocketAddr>,
    },
}

/// Why a datagram is not a disco message this node can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoError {
    /// The datagram does not start with [`MAGIC`].
    #[error("not a disco message: it does not start with the disco magic")]
    NotDisco,
    /// The datagram ends before the header does.
    #[error(
        "disco message truncated: {len} bytes, the header alone needs {HEADER_LEN} plus a {TAG_LEN}-byte tag"
    )]
    TooShort {
        /// The datagram's length.
        len: usize,
    },
    /// Another wire version.
    #[error(
        "disco version {0} is not supported (this node speaks version {VERSION}); upgrade the older node"
    )]
    UnsupportedVersion(u8),
    /// Sealing with the sender's key failed: forged, corrupted, or sealed for another node.
    #[error(
        "disco message failed authentication: forged, corrupted, or sealed for another node's disco key"
    )]
    Unauthenticated,
    /// The plaintext names a message type this node does not know.
    #[error("disco message type {0} is unknown")]
    UnknownType(u8),
    /// The plaintext ends inside a field.
    #[error("disco {what} is truncated")]
    Truncated {
        /// The message or field that was cut short.
        what: &'static str,
    },
    /// An address has an unknown family byte.
    #[error("disco address family {0} is unknown (expected 4 or 6)")]
    BadAddressFamily(u8),
    /// A call-me-maybe lists too many endpoints.
    #[error("disco call-me-maybe lists {0} endpoints; at most {MAX_ENDPOINTS} are allowed")]
    TooManyEndpoints(usize),
    /// The peer's disco key is a low-order point: no secret can be agreed with it.
    #[error("the peer's disco key is a weak (low-order) key; it cannot seal messages")]
    WeakKey,
}

/// Whether `datagram` is a disco message (by its magic), before any check of its contents.
/// The UDP shell uses this to tell disco from WireGuard and STUN.
pub fn is_disco(datagram: &[u8]) -> bool {
    datagram.starts_with(MAGIC)
}

/// The sender's disco key of a disco datagram, read from its header (not yet
/// authenticated: open the message with [`DiscoBox::open`] to know it is genuine).
pub fn sender(datagram: &[u8]) -> Result<DiscoPublicKey, DiscoError> {
    if !is_disco(datagram) {
        return Err(DiscoError::NotDisco);
    }
    if datagram.len() < HEADER_LEN + TAG_LEN {
        return Err(DiscoError::TooShort {
            len: datagram.len(),
        });
    }
    let version = datagram.get(MAGIC.len()).copied().unwrap_or(0);
    if version != VERSION {
        return Err(DiscoError::UnsupportedVersion(version));
    }
    let key: [u8; KEY_LEN] = datagram
        .get(MAGIC.len() + 1..MAGIC.len() + 1 + KEY_LEN)
        .and_then(|k| k.try_into().ok())
        .ok_or(DiscoError::TooShort {
            len: datagram.len(),
        })?;
    Ok(DiscoPublicKey::from_bytes(key))
}

/// The shared key between this node's disco secret and one peer's disco public key: seals
/// messages for that peer and opens the peer's.
pub struct DiscoBox {
    key: LessSafeKey,
    own_public: DiscoPublicKey,
}

impl std::fmt::Debug for DiscoBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoBox")
            .field("own_public", &self.own_public)
            .finish_non_exhaustive()
    }
}

impl DiscoBox {
    /// Agrees the key with `peer`. Fails if the peer's key is a low-order point.
    pub fn new(own: &x25519::StaticSecret, peer: &DiscoPublicKey) -> Result<Self, DiscoError> {
        let shared = own.diffie_hellman(&peer.to_x25519());
        if !shared.was_contributory() {
            return Err(DiscoError::WeakKey);
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"postern disco v1");
        let prk = salt.extract(shared.as_bytes());
        let info: [&[u8]; 1] = [b"seal"];
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .map_err(|_| DiscoError::WeakKey)?;
        let key = LessSafeKey::new(UnboundKey::from(okm));
        Ok(Self {
            key,
            own_public: DiscoPublicKey::from(x25519::PublicKey::from(own)),
        })
    }

    /// Seals `message` with `nonce` (which must never repeat for this pair of keys; see the
    /// [module docs](self)).
    pub fn seal(&self, message: &DiscoMessage, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 64);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(self.own_public.as_bytes());
        out.extend_from_slice(&nonce);
        let mut body = encode(message);
        // Sealing in place cannot fail for a message this small (ring fails only above
        // 256 GiB); on the impossible error the datagram goes out unsealed and the peer drops
        // it as unauthenticated.
        if self
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
            .is_err()
        {
            body.clear();
        }
        out.extend_from_slice(&body);
        out
    }

    /// Opens a datagram the peer sealed. Fails if it is not a disco message, is another
    /// version, fails authentication or does not parse.
    pub fn open(&self, datagram: &[u8]) -> Result<DiscoMessage, DiscoError> {
        sender(datagram)?;
        let nonce: [u8; NONCE_LEN] = datagram
            .get(HEADER_LEN - NONCE_LEN..HEADER_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or(DiscoError::TooShort {
                len: datagram.len(),
            })?;
        let mut body = datagram.get(HEADER_LEN..).unwrap_or_default().to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
            .map_err(|_| DiscoError::Unauthenticated)?;
        decode(plain)
    }
}

fn encode(message: &DiscoMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match message {
        DiscoMessage::Ping { tx, node_key } => {
            out.push(TYPE_PING);
            out.extend_from_slice(tx);
            out.extend_from_slice(node_key.as_bytes());
        }
        DiscoMessage::Pong { tx, observed } => {
            out.push(TYPE_PONG);
            out.extend_from_slice(tx);
            encode_addr(&mut out, observed);
        }
        DiscoMessage::CallMeMaybe { endpoints } => {
            out.push(TYPE_CALL_ME_MAYBE);
            let count = endpoints.len().min(MAX_ENDPOINTS);
            out.push(count as u8);
            for addr in endpoints.iter().take(count) {
                encode_addr(&mut out, addr);
            }
        }
    }
    out
}

fn encode_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Reads fields off a plaintext, front to back.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DiscoError> {
        if self.rest.len() < n {
            return Err(DiscoError::Truncated { what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DiscoError> {
        self.take(N, what)?
            .try_into()
            .map_err(|_| DiscoError::Truncated { what })
    }

    fn addr(&mut self) -> Result<SocketAddr, DiscoError> {
        let [family] = self.array::<1>("address")?;
        let ip = match family {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>("IPv4 address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>("IPv6 address")?)),
            other => return Err(DiscoError::BadAddressFamily(other)),
        };
        let port = u16::from_be_bytes(self.array::<2>("port")?);
        Ok(SocketAddr::new(ip, port))
    }
}

/// Parses an opened plaintext (what [`DiscoBox::open`] does after authentication). Public
/// so the fuzz target reaches the parser without sealing every input; fails with a
/// [`DiscoError`] naming the field that is wrong.
pub fn parse_plaintext(plain: &[u8]) -> Result<DiscoMessage, DiscoError> {
    decode(plain)
}

fn decode(plain: &[u8]) -> Result<DiscoMessage, DiscoError> {
    let mut r = Reader { rest: plain };
    let [kind] = r.array::<1>("message type")?;
    // Trailing bytes are ignored: a later version may append fields.
    match kind {
        TYPE_PING => Ok(DiscoMessage::Ping {
            tx: r.array("ping")?,
            node_key: NodePublicKey::from_bytes(r.array("ping")?),
        }),
        TYPE_PONG => Ok(DiscoMessage::Pong {
            tx: r.array("pong")?,
            observed: r.addr()?,
        }),
        TYPE_CALL_ME_MAYBE => {
            let [count] = r.array::<1>("call-me-maybe")?;
            let count = usize::from(count);
            if count > MAX_ENDPOINTS {
                return Err(DiscoError::TooManyEndpoints(count));
            }
            let endpoints = (0..count)
                .map(|_| r.addr())
                .collect::<Result<Vec<_>, _>>()?;
            Ok(DiscoMessage::CallMeMaybe { endpoints })
        }
        other => Err(DiscoError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::DiscoPrivateKey;

    fn pair() -> (DiscoBox, DiscoBox) {
        let a = DiscoPrivateKey::from_bytes([1; 32]);
        let b = DiscoPrivateKey::from_bytes([2; 32]);
        let ab = DiscoBox::new(&a.to_x25519(), &b.public_key()).unwrap();
        let ba = DiscoBox::new(&b.to_x25519(), &a.public_key()).unwrap();
        (ab, ba)
    }

    #[test]
    fn every_message_round_trips_between_the_two_keys() {
        let (ab, ba) = pair();
        let messages = [
            DiscoMessage::Ping {
                tx: [7; 12],
                node_key: NodePublicKey::from_bytes([9; 32]),
            },
            DiscoMessage::Pong {
                tx: [7; 12],
                observed: "198.18.0.101:41641".parse().unwrap(),
            },
            DiscoMessage::Pong {
                tx: [1; 12],
                observed: "[2001:db8::1]:9".parse().unwrap(),
            },
            DiscoMessage::CallMeMaybe {
                endpoints: vec![
                    "198.19.1.10:41641".parse().unwrap(),
                    "[fd00::1]:41641".parse().unwrap(),
                ],
            },
        ];
        for (i, m) in messages.iter().enumerate() {
            let sealed = ab.seal(m, [i as u8; 12]);
            assert!(is_disco(&sealed));
            assert_eq!(
                sender(&sealed).unwrap(),
                DiscoPrivateKey::from_bytes([1; 32]).public_key()
            );
            assert_eq!(&ba.open(&sealed).unwrap(), m);
            // The same key opens in both directions.
            assert_eq!(&ab.open(&ba.seal(m, [99; 12])).unwrap(), m);
        }
    }

    #[test]
    fn a_stranger_cannot_forge_or_read_a_message() {
        let (ab, ba) = pair();
        let mallory = DiscoPrivateKey::from_bytes([3; 32]);
        let mb = DiscoBox::new(
            &mallory.to_x25519(),
            &DiscoPrivateKey::from_bytes([2; 32]).public_key(),
        )
        .unwrap();
        let ping = DiscoMessage::Ping {
            tx: [0; 12],
            node_key: NodePublicKey::from_bytes([1; 32]),
        };
        // Mallory seals with her own key: B's box for A does not open it.
        assert_eq!(
            ba.open(&mb.seal(&ping, [0; 12])),
            Err(DiscoError::Unauthenticated)
        );
        // A flipped bit anywhere in the sealed part fails authentication.
        let sealed = ab.seal(&ping, [5; 12]);
        for i in HEADER_LEN - NONCE_LEN..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(ba.open(&bad), Err(DiscoError::Unauthenticated), "byte {i}");
        }
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let (ab, ba) = pair();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![1, 0, 0, 0],
                "not a disco message: it does not start with the disco magic",
            ),
            (
                b"PDISCO\x01".to_vec(),
                "disco message truncated: 7 bytes, the header alone needs 51 plus a 16-byte tag",
            ),
            (
                {
                    let mut v = ab.seal(&DiscoMessage::CallMeMaybe { endpoints: vec![] }, [0; 12]);
                    v[6] = 9;
                    v
                },
                "disco version 9 is not supported (this node speaks version 1); upgrade the older node",
            ),
        ];
        for (bytes, message) in cases {
            assert_eq!(ba.open(&bytes).unwrap_err().to_string(), message);
        }
        // Plaintext errors, sealed properly so they get past authentication.
        let seal_raw = |plain: &[u8]| {
            let mut body = plain.to_vec();
            ab.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key([4; 12]),
                    Aad::empty(),
                    &mut body,
                )
                .unwrap();
            let mut out = MAGIC.to_vec();
            out.push(VERSION);
            out.extend_from_slice(ab.own_public.as_bytes());
            out.extend_from_slice(&[4; 12]);
            out.extend_from_slice(&body);
            out
        };
        let plain_cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "disco message type is truncated"),
            (vec![42], "disco message type 42 is unknown"),
            (vec![TYPE_PING, 1, 2], "disco ping is truncated"),
            (
                vec![TYPE_CALL_ME_MAYBE, 17],
                "disco call-me-maybe lists 17 endpoints; at most 16 are allowed",
            ),
            (
                vec![TYPE_CALL_ME_MAYBE, 1, 5, 0],
                "disco address family 5 is unknown (expected 4 or 6)",
            ),
            (
                vec![TYPE_CALL_ME_MAYBE, 1, 4, 1, 2],
                "disco IPv4 address is truncated",
            ),
            (
                [&[TYPE_PONG][..], &[0; 12], &[4, 1, 2, 3, 4, 0]].concat(),
                "disco port is truncated",
            ),
        ];
        for (plain, message) in plain_cases {
            assert_eq!(ba.open(&seal_raw(&plain)).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn a_weak_peer_key_is_refused() {
        let own = DiscoPrivateKey::from_bytes([1; 32]);
        let err =
            DiscoBox::new(&own.to_x25519(), &DiscoPublicKey::from_bytes([0; 32])).unwrap_err();
        assert_eq!(err, DiscoError::WeakKey);
    }

    #[test]
    fn disco_datagrams_are_told_from_wireguard_and_stun() {
        assert!(!is_disco(&[1, 0, 0, 0, 1, 2, 3]));
        assert!(!is_disco(&postern_proto::stun::binding_request(
            postern_proto::stun::TransactionId([0; 12])
        )));
        assert!(!postern_proto::stun::is_stun(MAGIC));
    }
}

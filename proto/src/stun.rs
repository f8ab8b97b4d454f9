//! STUN binding messages (RFC 5389): how a node learns its public UDP endpoint.
//!
//! A node sends a [binding request](binding_request) from its WireGuard UDP socket to a
//! relay's STUN port; the relay answers with a [binding response](binding_response) whose
//! XOR-MAPPED-ADDRESS is the source address it saw, which is the node's endpoint as the
//! internet sees it (after NAT). [`parse`] reads either message.
//!
//! Only the binding method is spoken, without authentication, fingerprints or the other
//! attributes of RFC 5389: that is all path discovery needs. This is hand-written rather
//! than taken from a crate because the two STUN crates we checked bring far more than this
//! (`stun_codec` 0.4 decodes through `unsafe` aliasing tricks and `trackable`; `stun-rs`
//! pulls in sixteen dependencies for usernames, TURN and ICE), while the subset here is a
//! 20-byte header and one attribute. `fuzz/` has a `stun` target for it.
//!
//! Parsing never panics; every length is checked and errors say what was wrong.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie every RFC 5389 message carries at bytes 4..8.
pub const MAGIC_COOKIE: u32 = 0x2112_a442;
/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// A STUN transaction id: 96 random bits that match a response to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// A fresh random id (pass `rand::rngs::OsRng` or any decent generator: the id only has
    /// to be unpredictable enough that an off-path sender cannot answer for the relay).
    pub fn generate<R: rand::RngCore>(rng: &mut R) -> Self {
        let mut id = [0u8; 12];
        rng.fill_bytes(&mut id);
        Self(id)
    }
}

/// A STUN message this module understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StunMessage {
    /// A binding request: "tell me where I come from".
    BindingRequest {
        /// The request's transaction id, to echo in the response.
        transaction: TransactionId,
    },
    /// A binding success response.
    BindingResponse {
        /// The transaction id of the request it answers.
        transaction: TransactionId,
        /// The requester's address as the server saw it.
        mapped: SocketAddr,
    },
}

/// Why bytes are not a STUN message this module understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Not STUN at all: too short, wrong leading bits or no magic cookie. On a socket shared
    /// with WireGuard this is the normal case for non-STUN datagrams.
    #[error("not a STUN message ({0})")]
    NotStun(&'static str),
    /// The header's length field disagrees with the datagram.
    #[error(
        "STUN length field says {declared} bytes of attributes but {found} followed the header"
    )]
    BadLength {
        /// The length the header declares.
        declared: usize,
        /// The bytes actually present after the header.
        found: usize,
    },
    /// A STUN message of a class or method other than binding request / success response.
    #[error("STUN message type 0x{0:04x} is not a binding request or success response")]
    Unsupported(u16),
    /// An attribute runs past the end of the message.
    #[error("STUN attribute 0x{attr:04x} declares {declared} bytes but only {found} remain")]
    TruncatedAttribute {
        /// Attribute type.
        attr: u16,
        /// Its declared length.
        declared: usize,
        /// Bytes left in the message.
        found: usize,
    },
    /// A (XOR-)MAPPED-ADDRESS whose family or length is wrong.
    #[error(
        "STUN address attribute 0x{attr:04x} is malformed (family 0x{family:02x}, {len} bytes)"
    )]
    BadAddress {
        /// Attribute type.
        attr: u16,
        /// The family byte found.
        family: u8,
        /// The attribute's length.
        len: usize,
    },
    /// A binding response with neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS.
    #[error("STUN binding response carries no mapped address")]
    NoMappedAddress,
}

/// A binding request with `transaction` (20 bytes, no attributes).
pub fn binding_request(transaction: TransactionId) -> Vec<u8> {
    header(BINDING_REQUEST, 0, transaction)
}

/// A binding success response telling the requester it came from `mapped`, carried in an
/// XOR-MAPPED-ADDRESS.
pub fn binding_response(transaction: TransactionId, mapped: SocketAddr) -> Vec<u8> {
    let (family, addr_len) = match mapped.ip() {
        IpAddr::V4(_) => (FAMILY_IPV4, 4usize),
        IpAddr::V6(_) => (FAMILY_IPV6, 16usize),
    };
    let value_len = 4 + addr_len;
    // value_len is 8 or 20: the casts below cannot truncate.
    let mut out = header(BINDING_SUCCESS, (4 + value_len) as u16, transaction);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value_len as u16).to_be_bytes());
    out.push(0);
    out.push(family);
    let port = mapped.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out.extend_from_slice(&port.to_be_bytes());
    let mask = xor_mask(transaction);
    let ip = match mapped.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    out.extend(ip.iter().zip(mask.iter()).map(|(a, b)| a ^ b));
    out
}

/// Whether `datagram` looks like STUN (leading zero bits and the magic cookie). Cheap; use
/// it to tell STUN from WireGuard on a shared socket before [`parse`].
pub fn is_stun(datagram: &[u8]) -> bool {
    matches!(
        datagram,
        [first, _, _, _, c0, c1, c2, c3, ..]
            if first & 0xc0 == 0
                && datagram.len() >= HEADER_LEN
                && u32::from_be_bytes([*c0, *c1, *c2, *c3]) == MAGIC_COOKIE
    )
}

/// Parses a binding request or binding success response.
pub fn parse(datagram: &[u8]) -> Result<StunMessage, StunError> {
    let (head, body) = datagram
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(StunError::NotStun("shorter than the 20-byte header"))?;
    let [t0, t1, l0, l1, c0, c1, c2, c3, txid @ ..] = *head;
    if t0 & 0xc0 != 0 {
        return Err(StunError::NotStun("the two leading bits are not zero"));
    }
    if u32::from_be_bytes([c0, c1, c2, c3]) != MAGIC_COOKIE {
        return Err(StunError::NotStun("no RFC 5389 magic cookie"));
    }
    let declared = usize::from(u16::from_be_bytes([l0, l1]));
    if declared != body.len() || declared % 4 != 0 {
        return Err(StunError::BadLength {
            declared,
            found: body.len(),
        });
    }
    let transaction = TransactionId(txid);
    match u16::from_be_bytes([t0, t1]) {
        BINDING_REQUEST => Ok(StunMessage::BindingRequest { transaction }),
        BINDING_SUCCESS => {
            let mut mapped = None;
            let mut plain = None;
            for attr in attributes(body) {
                let (kind, value) = attr?;
                match kind {
                    ATTR_XOR_MAPPED_ADDRESS => {
                        mapped = Some(read_address(kind, value, Some(transaction))?);
                    }
                    ATTR_MAPPED_ADDRESS => plain = Some(read_address(kind, value, None)?),
                    _ => {}
                }
            }
            let mapped = mapped.or(plain).ok_or(StunError::NoMappedAddress)?;
            Ok(StunMessage::BindingResponse {
                transaction,
                mapped,
            })
        }
        other => Err(StunError::Unsupported(other)),
    }
}

fn header(message_type: u16, length: u16, transaction: TransactionId) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + usize::from(length));
    out.extend_from_slice(&message_type.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&transaction.0);
    out
}

/// The 16 bytes an address is XORed with: the cookie, then the transaction id.
fn xor_mask(transaction: TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let (cookie, id) = mask.split_at_mut(4);
    cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    id.copy_from_slice(&transaction.0);
    mask
}

/// Iterates over `(type, value)` of the attributes in `body`, padding skipped.
fn attributes(mut body: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), StunError>> {
    std::iter::from_fn(move || {
        let (&[k0, k1, l0, l1], rest) = body.split_first_chunk::<4>()?;
        let kind = u16::from_be_bytes([k0, k1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let Some(value) = rest.get(..len) else {
            body = &[];
            return Some(Err(StunError::TruncatedAttribute {
                attr: kind,
                declared: len,
                found: rest.len(),
            }));
        };
        let padded = len.next_multiple_of(4);
        body = rest.get(padded..).unwrap_or_default();
        Some(Ok((kind, value)))
    })
}

/// Reads a MAPPED-ADDRESS value, or an XOR-MAPPED-ADDRESS one when `xor` gives the id.
fn read_address(
    attr: u16,
    value: &[u8],
    xor: Option<TransactionId>,
) -> Result<SocketAddr, StunError> {
    let bad = |family| StunError::BadAddress {
        attr,
        family,
        len: value.len(),
    };
    let [_, family, p0, p1, addr @ ..] = value else {
        return Err(bad(0));
    };
    let mask = xor.map(xor_mask).unwrap_or([0; 16]);
    let port = u16::from_be_bytes([*p0, *p1]) ^ xor.map_or(0, |_| (MAGIC_COOKIE >> 16) as u16);
    let mut octets = [0u8; 16];
    for ((out, byte), m) in octets.iter_mut().zip(addr).zip(mask) {
        *out = byte ^ m;
    }
    let ip = match (*family, addr.len()) {
        (FAMILY_IPV4, 4) => {
            let [a, b, c, d, ..] = octets;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
        (FAMILY_IPV6, 16) => IpAddr::V6(Ipv6Addr::from(octets)),
        _ => return Err(bad(*family)),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: TransactionId = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    #[test]
    fn rfc5769_ipv4_response_vector_parses() {
        // RFC 5769 section 2.2, "Sample IPv4 Response", without SOFTWARE, MESSAGE-INTEGRITY
        // and FINGERPRINT (which this module ignores) and with the length adjusted.
        let mut wire = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        wire.extend_from_slice(&TX.0);
        wire.extend_from_slice(&[
            0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
        ]);
        assert_eq!(
            parse(&wire).unwrap(),
            StunMessage::BindingResponse {
                transaction: TX,
                mapped: "192.0.2.1:32853".parse().unwrap(),
            }
        );
        assert_eq!(
            binding_response(TX, "192.0.2.1:32853".parse().unwrap()),
            wire
        );
    }

    #[test]
    fn rfc5769_ipv6_address_round_trips() {
        let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let wire = binding_response(TX, addr);
        // The XORed address bytes from RFC 5769 section 2.3.
        assert_eq!(
            wire[24..],
            [
                0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
                0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
        assert_eq!(
            parse(&wire).unwrap(),
            StunMessage::BindingResponse {
                transaction: TX,
                mapped: addr
            }
        );
    }

    #[test]
    fn request_round_trips_and_is_recognised() {
        let wire = binding_request(TX);
        assert_eq!(wire.len(), HEADER_LEN);
        assert!(is_stun(&wire));
        assert_eq!(
            parse(&wire).unwrap(),
            StunMessage::BindingRequest { transaction: TX }
        );
        // A WireGuard handshake initiation starts with type 1 and three zero bytes.
        let mut wg = vec![1u8, 0, 0, 0];
        wg.extend_from_slice(&[0x55; 144]);
        assert!(!is_stun(&wg));
    }

    #[test]
    fn bad_messages_get_clear_errors() {
        let msg = |e: StunError| e.to_string();
        assert_eq!(
            msg(parse(&[0; 5]).unwrap_err()),
            "not a STUN message (shorter than the 20-byte header)"
        );
        let mut wire = binding_request(TX);
        wire[4] = 0;
        assert_eq!(
            msg(parse(&wire).unwrap_err()),
            "not a STUN message (no RFC 5389 magic cookie)"
        );
        let mut wire = binding_request(TX);
        wire[3] = 4;
        assert_eq!(
            msg(parse(&wire).unwrap_err()),
            "STUN length field says 4 bytes of attributes but 0 followed the header"
        );
        let mut wire = binding_request(TX);
        wire[1] = 0x11;
        assert_eq!(
            msg(parse(&wire).unwrap_err()),
            "STUN message type 0x0011 is not a binding request or success response"
        );
        let mut wire = binding_response(TX, "192.0.2.1:1".parse().unwrap());
        wire[23] = 40;
        assert_eq!(
            msg(parse(&wire).unwrap_err()),
            "STUN attribute 0x0020 declares 40 bytes but only 8 remain"
        );
        let mut wire = binding_response(TX, "192.0.2.1:1".parse().unwrap());
        wire[25] = 9;
        assert_eq!(
            msg(parse(&wire).unwrap_err()),
            "STUN address attribute 0x0020 is malformed (family 0x09, 8 bytes)"
        );
        let mut wire = binding_request(TX);
        wire[0] = 0x01;
        wire[1] = 0x01;
        assert_eq!(
            msg(parse(&wire).unwrap_err()),
            "STUN binding response carries no mapped address"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = parse(&bytes);
            let _ = is_stun(&bytes);
        }

        #[test]
        fn responses_round_trip(ip in proptest::prelude::any::<std::net::IpAddr>(), port in proptest::prelude::any::<u16>(), id in proptest::prelude::any::<[u8; 12]>()) {
            let addr = SocketAddr::new(ip, port);
            let transaction = TransactionId(id);
            proptest::prop_assert_eq!(
                parse(&binding_response(transaction, addr)).unwrap(),
                StunMessage::BindingResponse { transaction, mapped: addr }
            );
        }
    }
}

//! Control-channel messages between a node and the coordination server.
//!
//! A node registers ([`RegisterRequest`] → [`RegisterResponse`]), then holds a map request
//! open ([`MapRequest`]) and receives [`MapResponse`]s: a full [`Netmap`], then deltas and
//! keepalives. On the same connection a node may change its funnels
//! ([`FunnelRequest`] → [`FunnelResponse`]) and read its funnels' edge log
//! ([`FunnelLogRequest`] → [`FunnelLogResponse`]); an ingress node reports the edge's
//! request decisions ([`EdgeDecisionBatch`] → [`EdgeDecisionAck`]).
//!
//! # Encoding
//!
//! Each message travels in one [`Frame`]. The payload is a JSON
//! envelope `{"v": PROTOCOL_VERSION, "msg": {"type": "...", ...}}`. JSON (not a compact
//! binary format) because the netmap evolves: unknown fields are ignored and new optional
//! fields default, so old and new nodes interoperate, and a captured message is readable in
//! a debugger. Size is handled by compression: a payload above
//! [`ControlCodec::compress_threshold`] is sent as an LZ4 block (frame type
//! [`FRAME_JSON_LZ4`]), which shrinks repetitive netmap JSON about 5-10×.
//!
//! A message with any other protocol version is refused with
//! [`MessageError::UnsupportedVersion`] before its body is interpreted.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::frame::{DEFAULT_MAX_FRAME_LEN, Frame, FrameError};
use crate::funnel::{
    EdgeDecisionAck, EdgeDecisionBatch, FunnelLogRequest, FunnelLogResponse, FunnelRequest,
    FunnelResponse,
};
use crate::ids::{NodeId, UnixTime};
use crate::keys::{DiscoPublicKey, NodePublicKey};
use crate::netmap::{Netmap, NetmapDelta, NodeAddresses, RegionId, UserProfile};

/// The control protocol version this build speaks. Bumped on incompatible changes only;
/// additive changes (new optional fields) keep it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Frame type of a plain JSON envelope.
pub const FRAME_JSON: u8 = 0x01;
/// Frame type of an LZ4-compressed JSON envelope: a u32 little-endian uncompressed length,
/// then an LZ4 block.
pub const FRAME_JSON_LZ4: u8 = 0x02;

/// Default largest decompressed message accepted: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Largest expansion an LZ4 block can encode.
const LZ4_MAX_RATIO: usize = 255;

/// Default size above which payloads are compressed: 4 KiB.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 4 * 1024;

/// Every message of the control protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlMessage {
    /// Node → server: register (or re-register) this node.
    RegisterRequest(RegisterRequest),
    /// Server → node: the outcome of a registration.
    RegisterResponse(RegisterResponse),
    /// Node → server: report endpoints and ask for the netmap.
    MapRequest(MapRequest),
    /// Server → node: netmap, delta or keepalive.
    MapResponse(MapResponse),
    /// Node → server: open, close or list this node's funnels (on the map stream's
    /// connection, after registration).
    FunnelRequest(FunnelRequest),
    /// Server → node: the outcome of a funnel request.
    FunnelResponse(FunnelResponse),
    /// Ingress node → server: a batch of the edge's request decisions (on the map
    /// stream's connection). Coords older than this message close the connection on it.
    EdgeDecisions(EdgeDecisionBatch),
    /// Server → ingress node: what became of a batch of decisions.
    EdgeDecisionsAck(EdgeDecisionAck),
    /// Node → server: the recent edge decisions of this node's funnels.
    FunnelLogRequest(FunnelLogRequest),
    /// Server → node: the decisions asked for.
    FunnelLogResponse(FunnelLogResponse),
}

/// A node asks to join the tailnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The node key the node will use for WireGuard.
    pub node_key: NodePublicKey,
    /// The machine's hostname; the server derives a DNS-safe name from it.
    pub hostname: String,
    /// How the node proves it may join.
    pub auth: RegisterAuth,
    /// Tags the node asks for (only granted if the auth key or policy allows them).
    #[serde(default)]
    pub requested_tags: Vec<String>,
    /// True if the node should be removed when it goes offline.
    #[serde(default)]
    pub ephemeral: bool,
}

/// How a registering node proves it may join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RegisterAuth {
    /// A pre-made auth key from the admin.
    AuthKey {
        /// The key.
        key: AuthKeySecret,
    },
    /// A person logs in through the browser; the server answers with a login URL.
    Interactive,
    /// A person logs in on another device with the IdP's device authorization grant
    /// (RFC 8628); the server answers with a verification URI and a user code. For nodes
    /// without a browser (servers, SSH sessions).
    Device,
}

/// An auth key as sent by a node. Never printed: `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthKeySecret(String);

impl AuthKeySecret {
    /// Wraps a key read from a flag, a file or the environment.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, to hash it. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKeySecret([redacted])")
    }
}

/// The outcome of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RegisterResponse {
    /// The node is in: it may send map requests now.
    Authorized {
        /// Its stable id.
        node_id: NodeId,
        /// Its DNS-safe name.
        name: String,
        /// Its tailnet addresses.
        addresses: NodeAddresses,
        /// Its owner.
        user: UserProfile,
        /// When its key expires, if ever.
        #[serde(default)]
        key_expiry: Option<UnixTime>,
    },
    /// A person must open this URL and log in. The node waits on the same connection: the
    /// coord sends the final answer (`Authorized` or `Rejected`) when the login completes,
    /// and keepalives (`MapResponse::KeepAlive`) meanwhile.
    LoginRequired {
        /// The URL to show to the person.
        login_url: String,
    },
    /// A person must open `verification_uri` on any device, enter `user_code` and log in;
    /// the node waits on the same connection for the final answer.
    DeviceCode {
        /// Where to enter the code.
        verification_uri: String,
        /// The same page with the code filled in, when the IdP offers one.
        #[serde(default)]
        verification_uri_complete: Option<String>,
        /// The code to enter (not a secret on its own: it works only with a login).
        user_code: String,
        /// How long the code stays valid, in seconds.
        expires_in_secs: u64,
    },
    /// Login succeeded but an admin must approve the node first. Current coords keep the
    /// connection open: the node sends its map request and waits on the same connection
    /// (keepalives meanwhile) for the netmap, which comes once an admin approves it.
    NeedsApproval {
        /// The node's id, for the admin.
        node_id: NodeId,
        /// The node's name, for the admin's `postern-coord nodes approve NAME` (empty from
        /// coords that did not send it).
        #[serde(default)]
        name: String,
    },
    /// The node may not join.
    Rejected {
        /// Why, in words for the person at the node.
        reason: String,
    },
}

/// A node reports its state and asks for the netmap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapRequest {
    /// The node key the node registered with.
    pub node_key: NodePublicKey,
    /// The node's current disco key.
    pub disco_key: DiscoPublicKey,
    /// The node's candidate UDP endpoints, best first.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// The relay region the node is attached to.
    #[serde(default)]
    pub home_relay: Option<RegionId>,
    /// What the node's software can do.
    pub capabilities: Capabilities,
    /// True to keep the response stream open for deltas; false for one netmap.
    #[serde(default)]
    pub stream: bool,
}

/// What a node's software version supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The node's software version, e.g. `0.1.0`.
    pub version: String,
    /// Named optional features (`funnel`, `ssh`), for gradual rollout.
    #[serde(default)]
    pub features: Vec<String>,
}

/// One message on the netmap stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MapResponse {
    /// A complete netmap, replacing whatever the node had.
    Full {
        /// The netmap.
        netmap: Box<Netmap>,
    },
    /// A change to the last netmap; apply with [`Netmap::apply`].
    Delta {
        /// The change.
        delta: Box<NetmapDelta>,
    },
    /// Nothing changed; the stream is alive.
    KeepAlive,
}

/// Why a control message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The frame is not a control message frame.
    #[error("unknown control frame type 0x{0:02x}; the peer speaks another protocol")]
    UnknownFrameType(u8),
    /// The message's protocol version is not one this build speaks.
    #[error(
        "control protocol version {found} is not supported (this build speaks version {supported}); upgrade the older side"
    )]
    UnsupportedVersion {
        /// The version in the message.
        found: u32,
        /// The version this build speaks.
        supported: u32,
    },
    /// The envelope has no `v` field.
    #[error(
        "control message has no protocol version field \"v\"; the peer speaks another protocol"
    )]
    MissingVersion,
    /// The compressed payload is damaged.
    #[error("compressed control message is damaged: {0}")]
    Decompress(String),
    /// The decompressed message would exceed the limit.
    #[error("control message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced or actual size.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The JSON does not describe a valid message.
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
    /// The message does not fit in a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Encodes and decodes control messages with size limits.
#[derive(Debug, Clone, Copy)]
pub struct ControlCodec {
    /// Largest frame produced (type byte plus payload).
    pub max_frame_len: usize,
    /// Largest decompressed JSON accepted or produced.
    pub max_message_len: usize,
    /// Payloads longer than this are compressed.
    pub compress_threshold: usize,
}

impl Default for ControlCodec {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
        }
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u32,
    msg: &'a ControlMessage,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    v: Option<u32>,
    #[serde(borrow)]
    msg: &'a serde_json::value::RawValue,
}

impl ControlCodec {
    /// Encodes `message` as a frame, compressing it if it is large.
    pub fn encode(&self, message: &ControlMessage) -> Result<Frame, MessageError> {
        let json = serde_json::to_vec(&EnvelopeOut {
            v: PROTOCOL_VERSION,
            msg: message,
        })?;
        if json.len() > self.max_message_len {
            return Err(MessageError::TooLarge {
                len: json.len(),
                max: self.max_message_len,
            });
        }
        let frame = if json.len() > self.compress_threshold {
            let len = u32::try_from(json.len()).map_err(|_| MessageError::TooLarge {
                len: json.len(),
                max: u32::MAX as usize,
            })?;
            let mut payload = len.to_le_bytes().to_vec();
            payload.extend_from_slice(&lz4_flex::block::compress(&json));
            Frame::new(FRAME_JSON_LZ4, payload)
        } else {
            Frame::new(FRAME_JSON, json)
        };
        let frame_len = frame.payload.len().saturating_add(1);
        if frame_len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len: frame_len,
                max: self.max_frame_len,
            }
            .into());
        }
        Ok(frame)
    }

    /// Encodes `message` straight to wire bytes (length prefix included).
    pub fn encode_to_bytes(&self, message: &ControlMessage) -> Result<Vec<u8>, MessageError> {
        Ok(self.encode(message)?.to_bytes(self.max_frame_len)?)
    }

    /// Decodes a frame received from a [`FrameDecoder`](crate::frame::FrameDecoder).
    pub fn decode(&self, frame: &Frame) -> Result<ControlMessage, MessageError> {
        match frame.frame_type {
            FRAME_JSON => decode_envelope(&frame.payload),
            FRAME_JSON_LZ4 => {
                let (len, block) = frame
                    .payload
                    .split_first_chunk::<4>()
                    .ok_or_else(|| MessageError::Decompress("missing length".into()))?;
                let len = usize::try_from(u32::from_le_bytes(*len)).unwrap_or(usize::MAX);
                if len > self.max_message_len {
                    return Err(MessageError::TooLarge {
                        len,
                        max: self.max_message_len,
                    });
                }
                // LZ4 cannot expand more than 255×; refuse before allocating `len` bytes.
                if len > block.len().saturating_mul(LZ4_MAX_RATIO).saturating_add(16) {
                    return Err(MessageError::Decompress(format!(
                        "announces {len} bytes from a {}-byte block, more than LZ4 can expand to",
                        block.len()
                    )));
                }
                let json = lz4_flex::block::decompress(block, len)
                    .map_err(|err| MessageError::Decompress(err.to_string()))?;
                decode_envelope(&json)
            }
            other => Err(MessageError::UnknownFrameType(other)),
        }
    }
}

fn decode_envelope(json: &[u8]) -> Result<ControlMessage, MessageError> {
    let envelope: EnvelopeIn<'_> = serde_json::from_slice(json)?;
    match envelope.v {
        None => Err(MessageError::MissingVersion),
        Some(PROTOCOL_VERSION) => Ok(serde_json::from_str(envelope.msg.get())?),
        Some(found) => Err(MessageError::UnsupportedVersion {
            found,
            supported: PROTOCOL_VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::funnel::{EdgeDecision, FunnelLogQuery, FunnelRefusal};
    use crate::netmap::tests::{netmap, peer, user};
    use proptest::prelude::*;

    fn edge_decision(id: u64, result: &str) -> EdgeDecision {
        EdgeDecision {
            id,
            at_ms: 1_700_000_000_123,
            funnel: "hooks.funnel.example.com".into(),
            client: "203.0.113.7:5000".into(),
            method: "POST".into(),
            path: "/webhook".into(),
            gate: Some("webhook:github".into()),
            result: result.into(),
            reason: (result == "deny").then(|| "signature_mismatch".into()),
            status: if result == "deny" { 401 } else { 200 },
            bytes: 18,
            duration_ms: 2,
        }
    }

    fn round_trip(message: &ControlMessage) -> ControlMessage {
        let codec = ControlCodec::default();
        let wire = codec.encode_to_bytes(message).unwrap();
        let mut decoder = FrameDecoder::new(codec.max_frame_len);
        decoder.push(&wire);
        let frame = decoder.next_frame().unwrap().unwrap();
        codec.decode(&frame).unwrap()
    }

    #[test]
    fn every_message_round_trips() {
        let messages = [
            ControlMessage::RegisterRequest(RegisterRequest {
                node_key: NodePublicKey::from_bytes([2; 32]),
                hostname: "Laptop.local".into(),
                auth: RegisterAuth::AuthKey {
                    key: AuthKeySecret::new("pk-auth-secret"),
                },
                requested_tags: vec!["tag:ci".into()],
                ephemeral: true,
            }),
            ControlMessage::RegisterResponse(RegisterResponse::LoginRequired {
                login_url: "https://coord.example.com/login/abc".into(),
            }),
            ControlMessage::RegisterRequest(RegisterRequest {
                node_key: NodePublicKey::from_bytes([2; 32]),
                hostname: "server".into(),
                auth: RegisterAuth::Device,
                requested_tags: vec![],
                ephemeral: false,
            }),
            ControlMessage::RegisterResponse(RegisterResponse::DeviceCode {
                verification_uri: "https://idp.example.com/device".into(),
                verification_uri_complete: None,
                user_code: "WDJB-MJHT".into(),
                expires_in_secs: 600,
            }),
            ControlMessage::RegisterResponse(RegisterResponse::Authorized {
                node_id: NodeId(4),
                name: "laptop".into(),
                addresses: netmap(&[]).self_node.addresses,
                user: user(1),
                key_expiry: Some(UnixTime(5)),
            }),
            ControlMessage::MapRequest(MapRequest {
                node_key: NodePublicKey::from_bytes([2; 32]),
                disco_key: DiscoPublicKey::from_bytes([3; 32]),
                endpoints: vec!["[2001:db8::1]:41641".parse().unwrap()],
                home_relay: Some(RegionId(1)),
                capabilities: Capabilities {
                    version: "0.1.0".into(),
                    features: vec![],
                },
                stream: true,
            }),
            ControlMessage::MapResponse(MapResponse::Full {
                netmap: Box::new(netmap(&[1, 2])),
            }),
            ControlMessage::MapResponse(MapResponse::Delta {
                delta: Box::new(NetmapDelta {
                    peers_added: vec![peer(9)],
                    ..NetmapDelta::default()
                }),
            }),
            ControlMessage::MapResponse(MapResponse::KeepAlive),
            ControlMessage::EdgeDecisions(EdgeDecisionBatch {
                batch_id: 7,
                decisions: vec![edge_decision(0, "deny"), edge_decision(0, "allow")],
            }),
            ControlMessage::EdgeDecisionsAck(EdgeDecisionAck {
                batch_id: 7,
                stored: 1,
                dropped: 1,
                refusal: None,
            }),
            ControlMessage::EdgeDecisionsAck(EdgeDecisionAck {
                batch_id: 8,
                stored: 0,
                dropped: 0,
                refusal: Some(FunnelRefusal {
                    code: "not_ingress".into(),
                    message: "only ingress nodes report edge decisions".into(),
                }),
            }),
            ControlMessage::FunnelLogRequest(FunnelLogRequest {
                request_id: 3,
                query: FunnelLogQuery {
                    funnel: Some("hooks".into()),
                    since: Some(UnixTime(1_700_000_000)),
                    after_id: Some(41),
                    limit: Some(20),
                    denied_only: true,
                    wait_ms: Some(25_000),
                },
            }),
            ControlMessage::FunnelLogResponse(FunnelLogResponse {
                request_id: 3,
                result: Ok(vec![edge_decision(42, "deny")]),
            }),
            ControlMessage::FunnelLogResponse(FunnelLogResponse {
                request_id: 4,
                result: Err(FunnelRefusal {
                    code: "not_found".into(),
                    message: "no funnel named nope".into(),
                }),
            }),
        ];
        for message in &messages {
            assert_eq!(&round_trip(message), message);
        }
    }

    #[test]
    fn large_netmaps_are_compressed() {
        let ids: Vec<u64> = (0..500).collect();
        let message = ControlMessage::MapResponse(MapResponse::Full {
            netmap: Box::new(netmap(&ids)),
        });
        let codec = ControlCodec::default();
        let frame = codec.encode(&message).unwrap();
        assert_eq!(frame.frame_type, FRAME_JSON_LZ4);
        let json_len = serde_json::to_vec(&message).unwrap().len();
        assert!(
            frame.payload.len() * 4 < json_len,
            "{} vs {json_len}",
            frame.payload.len()
        );
        assert_eq!(codec.decode(&frame).unwrap(), message);
    }

    #[test]
    fn auth_keys_never_print() {
        let auth = RegisterAuth::AuthKey {
            key: AuthKeySecret::new("pk-auth-hunter2"),
        };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn bad_input_errors_say_what_is_wrong() {
        let codec = ControlCodec::default();
        let decode = |t: u8, payload: &[u8]| codec.decode(&Frame::new(t, payload.to_vec()));

        let err = decode(FRAME_JSON, br#"{"v":2,"msg":{"type":"nonsense"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "control protocol version 2 is not supported (this build speaks version 1); upgrade the older side"
        );
        let err = decode(FRAME_JSON, br#"{"msg":{}}"#).unwrap_err();
        assert!(matches!(err, MessageError::MissingVersion), "{err}");
        let err = decode(FRAME_JSON, br#"{"v":1,"msg":{"type":"launch_missiles"}}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed control message: unknown variant `launch_missiles`"),
            "{err}"
        );
        let err = decode(FRAME_JSON, b"not json").unwrap_err();
        assert!(
            err.to_string().starts_with("malformed control message:"),
            "{err}"
        );
        let err = decode(0x7f, b"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown control frame type 0x7f; the peer speaks another protocol"
        );
        let err = decode(FRAME_JSON_LZ4, &[0xff, 0xff, 0xff, 0x7f, 1, 2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "control message of 2147483647 bytes exceeds the limit of 67108864 bytes"
        );
        let err = decode(FRAME_JSON_LZ4, &[0, 0, 0, 1, 0xf0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "compressed control message is damaged: announces 16777216 bytes from a 1-byte \
             block, more than LZ4 can expand to"
        );
        let err = decode(FRAME_JSON_LZ4, &[10, 0, 0, 0, 0xf0]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("compressed control message is damaged"),
            "{err}"
        );
        let err = decode(FRAME_JSON_LZ4, &[1]).unwrap_err();
        assert!(matches!(err, MessageError::Decompress(_)), "{err}");
    }

    fn arb_peer() -> impl Strategy<Value = crate::netmap::Peer> {
        use crate::netmap::Peer;
        use std::net::IpAddr;
        (
            (
                any::<u64>(),
                ".{0,30}",
                any::<[u8; 32]>(),
                proptest::option::of(any::<[u8; 32]>()),
            ),
            (
                any::<[u8; 4]>(),
                any::<[u8; 16]>(),
                0u8..=32,
                proptest::collection::vec((any::<[u8; 4]>(), any::<u16>()), 0..3),
            ),
            (
                proptest::option::of(any::<u16>()),
                any::<bool>(),
                proptest::option::of(any::<i64>()),
                any::<bool>(),
            ),
            (
                any::<u64>(),
                ".{0,20}",
                proptest::collection::vec("[a-z:]{1,12}", 0..3),
            ),
        )
            .prop_map(
                |(
                    (id, name, key, disco),
                    (v4, v6, bits, eps),
                    (relay, online, expiry, ingress),
                    (uid, login, tags),
                )| {
                    let v4 = IpAddr::from(v4);
                    Peer {
                        id: NodeId(id),
                        name,
                        node_key: NodePublicKey::from_bytes(key),
                        disco_key: disco.map(DiscoPublicKey::from_bytes),
                        addresses: vec![v4, IpAddr::from(v6)],
                        allowed_ips: vec![ipnet::IpNet::new(v4, bits).unwrap()],
                        endpoints: eps.into_iter().map(SocketAddr::from).collect(),
                        home_relay: relay.map(RegionId),
                        online,
                        key_expiry: expiry.map(UnixTime),
                        user: UserProfile {
                            id: crate::UserId(uid),
                            login: login.clone(),
                            display_name: login,
                            groups: tags.clone(),
                        },
                        tags,
                        is_ingress: ingress,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn arbitrary_netmaps_and_deltas_round_trip(
            peers in proptest::collection::vec(arb_peer(), 0..40),
            removed in proptest::collection::vec(any::<u64>(), 0..5),
            rule_ports in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..5),
        ) {
            use crate::netmap::{FilterDestination, FilterRule, IpProtocol, PortRange};
            let mut map = netmap(&[]);
            map.peers = peers.clone();
            map.packet_filter = rule_ports
                .iter()
                .map(|(a, b)| FilterRule {
                    sources: vec!["0.0.0.0/0".parse().unwrap()],
                    destinations: vec![FilterDestination {
                        prefix: "::/0".parse().unwrap(),
                        ports: PortRange::new(*a.min(b), *a.max(b)).unwrap(),
                    }],
                    protocols: vec![IpProtocol::TCP, IpProtocol(*a as u8)],
                })
                .collect();
            let full = ControlMessage::MapResponse(MapResponse::Full { netmap: Box::new(map.clone()) });
            prop_assert_eq!(round_trip(&full), full);
            let delta = ControlMessage::MapResponse(MapResponse::Delta {
                delta: Box::new(NetmapDelta {
                    peers_removed: removed.into_iter().map(NodeId).collect(),
                    peers_changed: peers,
                    packet_filter: Some(map.packet_filter),
                    ..NetmapDelta::default()
                }),
            });
            prop_assert_eq!(round_trip(&delta), delta);
        }

        #[test]
        fn arbitrary_edge_decisions_round_trip(
            decisions in proptest::collection::vec(
                (
                    (any::<u64>(), any::<i64>(), ".{0,40}", ".{0,30}"),
                    (".{0,8}", ".{0,60}", proptest::option::of(".{0,20}")),
                    (".{0,8}", proptest::option::of(".{0,20}"), any::<u16>(), any::<u64>(), any::<u64>()),
                ),
                0..40,
            ),
            batch_id in any::<u64>(),
            funnel in proptest::option::of(".{0,30}"),
            since in proptest::option::of(any::<i64>()),
            limit in proptest::option::of(any::<u32>()),
            denied_only in any::<bool>(),
        ) {
            let decisions: Vec<EdgeDecision> = decisions
                .into_iter()
                .map(|((id, at_ms, funnel, client), (method, path, gate), (result, reason, status, bytes, duration_ms))| {
                    EdgeDecision { id, at_ms, funnel, client, method, path, gate, result, reason, status, bytes, duration_ms }
                })
                .collect();
            let batch = ControlMessage::EdgeDecisions(EdgeDecisionBatch {
                batch_id,
                decisions: decisions.clone(),
            });
            prop_assert_eq!(round_trip(&batch), batch);
            let request = ControlMessage::FunnelLogRequest(FunnelLogRequest {
                request_id: batch_id,
                query: FunnelLogQuery {
                    funnel,
                    since: since.map(UnixTime),
                    after_id: Some(batch_id),
                    limit,
                    denied_only,
                    wait_ms: limit,
                },
            });
            prop_assert_eq!(round_trip(&request), request);
            let response = ControlMessage::FunnelLogResponse(FunnelLogResponse {
                request_id: batch_id,
                result: Ok(decisions),
            });
            prop_assert_eq!(round_trip(&response), response);
        }

        #[test]
        fn decoding_arbitrary_payloads_never_panics(
            t in prop_oneof![Just(FRAME_JSON), Just(FRAME_JSON_LZ4), any::<u8>()],
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = ControlCodec::default().decode(&Frame::new(t, payload));
        }

        #[test]
        fn hostnames_and_endpoints_round_trip(
            hostname in ".{0,40}",
            port in any::<u16>(),
            v4 in any::<[u8; 4]>(),
        ) {
            let message = ControlMessage::MapRequest(MapRequest {
                node_key: NodePublicKey::from_bytes([1; 32]),
                disco_key: DiscoPublicKey::from_bytes([2; 32]),
                endpoints: vec![SocketAddr::from((v4, port))],
                home_relay: None,
                capabilities: Capabilities { version: hostname.clone(), features: vec![hostname] },
                stream: false,
            });
            prop_assert_eq!(round_trip(&message), message);
        }
    }

    #[test]
    fn edge_log_wire_format_is_stable() {
        // What an older or newer peer may send: optional fields left out default.
        let json = br#"{"v":1,"msg":{"type":"edge_decisions","batch_id":1,"decisions":[{"at_ms":5,"funnel":"h.f","client":"192.0.2.1:9","method":"GET","path":"/","result":"deny"}]}}"#;
        let message = ControlCodec::default()
            .decode(&Frame::new(FRAME_JSON, json.to_vec()))
            .unwrap();
        let ControlMessage::EdgeDecisions(batch) = message else {
            panic!("{message:?}");
        };
        let decision = &batch.decisions[0];
        assert_eq!((decision.id, decision.status, decision.bytes), (0, 0, 0));
        assert!(decision.is_denied());
        assert_eq!(decision.gate, None);
        let json = br#"{"v":1,"msg":{"type":"funnel_log_request","request_id":2,"query":{}}}"#;
        let message = ControlCodec::default()
            .decode(&Frame::new(FRAME_JSON, json.to_vec()))
            .unwrap();
        assert_eq!(
            message,
            ControlMessage::FunnelLogRequest(FunnelLogRequest {
                request_id: 2,
                query: FunnelLogQuery::default(),
            })
        );
        let err = ControlCodec::default()
            .decode(&Frame::new(
                FRAME_JSON,
                br#"{"v":1,"msg":{"type":"edge_decisions","batch_id":1}}"#.to_vec(),
            ))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed control message: missing field `decisions`"),
            "{err}"
        );
    }

    #[test]
    fn device_login_wire_format_is_stable() {
        let auth: RegisterAuth = serde_json::from_str(r#"{"kind":"device"}"#).unwrap();
        assert_eq!(auth, RegisterAuth::Device);
        let response: RegisterResponse = serde_json::from_str(
            r#"{"status":"device_code","verification_uri":"https://idp/device","user_code":"AB-CD","expires_in_secs":600}"#,
        )
        .unwrap();
        assert_eq!(
            response,
            RegisterResponse::DeviceCode {
                verification_uri: "https://idp/device".into(),
                verification_uri_complete: None,
                user_code: "AB-CD".into(),
                expires_in_secs: 600,
            }
        );
    }
}

//! The funnel mesh hop: what the ingress says to a node before a funnelled stream.
//!
//! When the ingress has admitted a public request for a funnel, it opens a TCP stream over
//! the mesh to the target node's tailnet address on [`FUNNEL_HOP_PORT`] and first sends a
//! [`FunnelHello`]: who the public client is, which of the node's ports the funnel targets,
//! the funnel's public hostname and the identity the gate chain admitted. The node answers
//! with one [`HopReply`]: accepted, or refused with a [`RefusalCode`] and a reason the
//! ingress writes to its audit log. After an accept, the stream carries the funnelled bytes
//! (HTTP/1.1 requests, or a raw TCP stream) unchanged.
//!
//! # One request per stream, or many
//!
//! A version 1 hello describes the one client the stream is for: the node applies its
//! client and admission to everything on the stream. TCP funnels use it (a stream is one
//! public connection), and so did HTTP funnels before the ingress pooled hop streams.
//!
//! A version 2 hello ([`FunnelHello::per_request_context`]) opens a stream that the ingress
//! keeps alive and reuses for HTTP requests of different clients, admitted as different
//! identities. Its own client and admission describe no request (the ingress sends
//! `0.0.0.0:0` and none); instead every request on the stream carries its own context in
//! the [`HOP_CONTEXT_HEADER`] header: a version 1 hello of that request (client, port,
//! hostname, admission), base64url without padding ([`FunnelHello::encode_context`]). The
//! node reads and removes it from each request ([`FunnelHello::request_context`]) and
//! refuses a request without exactly one valid context. The ingress strips every
//! client-sent `Postern-*` header before it sets its own, so the header cannot be forged
//! from the public side. A node that only speaks version 1 refuses a version 2 hello with
//! [`RefusalCode::UnsupportedVersion`], so a new ingress and an old node fail cleanly
//! (`502 node_refused_unsupported_version`) instead of mixing up identities.
//!
//! The node believes the hello only because the stream comes from a peer the coord marked
//! as an ingress (WireGuard authenticated the source address); the bytes inside the stream
//! are never trusted for identity.
//!
//! # Wire format (hello versions 1 and 2, reply version 1)
//!
//! All integers are big-endian; `str8`/`str16` are a `u8`/`u16` length then that many bytes
//! of UTF-8.
//!
//! ```text
//! hello     = version:u8 (1 | 2)  body_len:u16 (<= MAX_HELLO_BODY_LEN)  body
//! body      = client  target_port:u16  hostname:str8  admission
//! client    = family:u8 (4 | 6)  address:[u8; 4 | 16]  port:u16
//! admission = 0x00                                      ; no gate (open funnel)
//!           | 0x01  gate:str16  principal:str16  count:u8  (name:str8 value:str16){count}
//! reply     = version:u8 (=1)  status:u8  reason:str8   ; status 0 = accepted
//! context   = base64url-nopad(hello of version 1)         ; the HOP_CONTEXT_HEADER value
//! ```
//!
//! Both messages start with a three-byte prefix from which [`hello_frame_len`] and
//! [`reply_frame_len`] tell the whole frame's length, so a reader can read exactly one
//! frame and leave the funnelled bytes that follow untouched.
//!
//! Parsing is "parse, don't validate": a decoded [`FunnelHello`] holds a checked
//! [`FunnelHostname`], [`AttributeName`]s and [`IdentityText`]s, so code that receives one
//! never re-checks. Nothing here panics on input; every failure is a [`HopError`] that says
//! what was wrong.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;

/// The tailnet TCP port every node's funnel acceptor listens on. `serve` must not use it.
pub const FUNNEL_HOP_PORT: u16 = 41_700;
/// The hello version of a stream for one client (TCP funnels; a request's context).
pub const HELLO_VERSION_PER_STREAM: u8 = 1;
/// The hello version of a pooled stream whose requests carry their own context in
/// [`HOP_CONTEXT_HEADER`].
pub const HELLO_VERSION_PER_REQUEST: u8 = 2;
/// The reply version this build speaks (the same for both hello versions).
pub const REPLY_VERSION: u8 = 1;
/// The request header that carries one request's context on a version 2 stream (lower
/// case, as `http::HeaderName` wants it). It starts with `postern-`, so the ingress strips
/// it from public requests and the node strips it before a request reaches the target.
pub const HOP_CONTEXT_HEADER: &str = "postern-hop-context";
/// The response header with which a node refuses one request of a version 2 stream (its
/// value is a [`RefusalCode`]'s text, e.g. `node_refused_not_ingress`), so that the
/// ingress audits the request as refused by the node rather than as the target's answer.
/// The node strips it from its targets' responses, so only the node itself can set it.
pub const HOP_REFUSAL_HEADER: &str = "postern-hop-refusal";
/// Largest [`HOP_CONTEXT_HEADER`] value: base64url of the largest hello frame.
pub const MAX_CONTEXT_HEADER_LEN: usize = (HOP_PREFIX_LEN + MAX_HELLO_BODY_LEN).div_ceil(3) * 4;
/// Length of the prefix of both frames that tells their full length.
pub const HOP_PREFIX_LEN: usize = 3;
/// Largest hello body accepted or sent.
pub const MAX_HELLO_BODY_LEN: usize = 16 * 1024;
/// Largest hostname, in bytes (the DNS limit).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Largest gate name, principal or attribute value, in bytes.
pub const MAX_IDENTITY_TEXT_LEN: usize = 1024;
/// Most identity attributes in one hello.
pub const MAX_ATTRIBUTES: usize = 32;
/// Largest attribute name, in bytes.
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 64;
/// Largest refusal reason, in bytes (it travels as a `str8`).
pub const MAX_REASON_LEN: usize = 255;

/// What the ingress tells the node before a funnelled stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelHello {
    /// The public client's address, as the ingress saw it.
    pub client: SocketAddr,
    /// The node's port the funnel targets (what `postern funnel PORT` funnels).
    pub target_port: u16,
    /// The funnel's public hostname.
    pub hostname: FunnelHostname,
    /// As whom the gate chain admitted the request; `None` for a funnel without gates.
    pub admission: Option<Admission>,
    /// Whether the stream is pooled and each HTTP request on it carries its own context in
    /// [`HOP_CONTEXT_HEADER`] (hello version 2); then `client` and `admission` describe no
    /// request. `false` for a stream of one client (version 1).
    pub per_request_context: bool,
}

/// The identity a gate admitted, for the node to put into identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The gate(s) that admitted, e.g. `webhook:github`.
    pub gate: IdentityText,
    /// The principal, e.g. `webhook:github` or `user:alice@example.com`.
    pub principal: IdentityText,
    /// Extra facts (at most [`MAX_ATTRIBUTES`]), e.g. `Delivery` = the webhook delivery id.
    pub attributes: Vec<(AttributeName, IdentityText)>,
}

/// The node's answer to a [`FunnelHello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopReply {
    /// The node accepted: the funnelled bytes follow.
    Accepted,
    /// The node refused; it closes the stream after this reply.
    Refused(Refusal),
}

/// Why a node refused a funnel stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The machine-readable cause.
    pub code: RefusalCode,
    /// Words for the audit log (at most [`MAX_REASON_LEN`] bytes; longer text is cut at a
    /// character boundary when encoding).
    pub reason: String,
}

/// The machine-readable cause of a [`Refusal`]. Its text form ([`RefusalCode::as_str`]) is
/// stable: the ingress writes it to audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The connecting peer is not marked as an ingress in the node's netmap.
    NotIngress,
    /// The node does not funnel the port the hello names.
    PortNotFunnelled,
    /// The node does not speak the hello's version.
    UnsupportedVersion,
    /// The hello could not be parsed.
    MalformedHello,
    /// The node's local target refused or could not be reached.
    TargetUnreachable,
    /// A request on a version 2 stream did not carry exactly one valid context
    /// ([`HOP_CONTEXT_HEADER`]); only sent in [`HOP_REFUSAL_HEADER`].
    ContextInvalid,
    /// A status byte this build does not know (a newer node); still a refusal.
    Unknown(u8),
}

impl RefusalCode {
    /// The stable text form, e.g. `node_refused_not_ingress`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::NotIngress => "node_refused_not_ingress",
            RefusalCode::PortNotFunnelled => "node_refused_port_not_funnelled",
            RefusalCode::UnsupportedVersion => "node_refused_unsupported_version",
            RefusalCode::MalformedHello => "node_refused_malformed_hello",
            RefusalCode::TargetUnreachable => "node_refused_target_unreachable",
            RefusalCode::ContextInvalid => "node_refused_context_invalid",
            RefusalCode::Unknown(_) => "node_refused_unknown",
        }
    }

    /// The code whose [text form](Self::as_str) is `text` (from a [`HOP_REFUSAL_HEADER`]);
    /// an unknown text (a newer node) is [`RefusalCode::Unknown`]`(0)`.
    pub fn from_text(text: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|code| code.as_str() == text)
            .unwrap_or(RefusalCode::Unknown(0))
    }

    /// Every code this build knows (all but [`RefusalCode::Unknown`]).
    pub const KNOWN: [RefusalCode; 6] = [
        RefusalCode::NotIngress,
        RefusalCode::PortNotFunnelled,
        RefusalCode::UnsupportedVersion,
        RefusalCode::MalformedHello,
        RefusalCode::TargetUnreachable,
        RefusalCode::ContextInvalid,
    ];

    fn to_byte(self) -> u8 {
        match self {
            RefusalCode::NotIngress => 1,
            RefusalCode::PortNotFunnelled => 2,
            RefusalCode::UnsupportedVersion => 3,
            RefusalCode::MalformedHello => 4,
            RefusalCode::TargetUnreachable => 5,
            RefusalCode::ContextInvalid => 6,
            RefusalCode::Unknown(byte) => byte,
        }
    }

    fn from_byte(byte: u8) -> Self {
        match byte {
            1 => RefusalCode::NotIngress,
            2 => RefusalCode::PortNotFunnelled,
            3 => RefusalCode::UnsupportedVersion,
            4 => RefusalCode::MalformedHello,
            5 => RefusalCode::TargetUnreachable,
            6 => RefusalCode::ContextInvalid,
            other => RefusalCode::Unknown(other),
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the node refused the funnel stream ({})", self.code)?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// A funnel's public hostname: lower-case DNS labels of `a-z`, `0-9` and `-`, at most
/// [`MAX_HOSTNAME_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunnelHostname(String);

impl FunnelHostname {
    /// Checks `text` (upper case is folded, one trailing dot is dropped). Fails with
    /// [`HopError::BadHostname`] saying which rule was broken.
    pub fn parse(text: &str) -> Result<Self, HopError> {
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let bad = |reason: &'static str| HopError::BadHostname {
            hostname: printable(&name),
            reason,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_HOSTNAME_LEN {
            return Err(bad("it is longer than 253 bytes"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(bad("it has an empty label"));
            }
            if label.len() > 63 {
                return Err(bad("a label is longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(bad("only letters, digits, '-' and '.' are allowed"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label starts or ends with '-'"));
            }
        }
        Ok(Self(name))
    }

    /// The hostname.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FunnelHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An identity attribute's name: 1 to [`MAX_ATTRIBUTE_NAME_LEN`] ASCII letters, digits and
/// `-`, so that `Postern-Identity-<Name>` is a valid header name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttributeName(String);

impl AttributeName {
    /// Checks `text`. Fails with [`HopError::BadAttributeName`].
    pub fn parse(text: &str) -> Result<Self, HopError> {
        if Self::is_valid(text) {
            Ok(Self(text.to_string()))
        } else {
            Err(HopError::BadAttributeName {
                name: printable(text),
            })
        }
    }

    /// Whether [`AttributeName::parse`] takes `text`.
    pub fn is_valid(text: &str) -> bool {
        !text.is_empty()
            && text.len() <= MAX_ATTRIBUTE_NAME_LEN
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A gate name, principal or attribute value: UTF-8 without control characters, at most
/// [`MAX_IDENTITY_TEXT_LEN`] bytes. Safe to put into a header after encoding non-ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityText(String);

impl IdentityText {
    /// Checks `text`. Fails with [`HopError::BadText`] naming `what` (e.g. `"principal"`).
    pub fn parse(what: &'static str, text: &str) -> Result<Self, HopError> {
        if text.len() > MAX_IDENTITY_TEXT_LEN {
            return Err(HopError::TooLong {
                what,
                len: text.len(),
                max: MAX_IDENTITY_TEXT_LEN,
            });
        }
        if text.chars().any(char::is_control) {
            return Err(HopError::BadText {
                what,
                reason: "it contains a control character",
            });
        }
        Ok(Self(text.to_string()))
    }

    /// Like [`IdentityText::parse`], but drops control characters and cuts the text at
    /// [`MAX_IDENTITY_TEXT_LEN`] bytes (on a character boundary) instead of failing. For
    /// the ingress, which must forward whatever identity a gate produced.
    pub fn lossy(text: &str) -> Self {
        Self(lossy_text(text).into_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdentityText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a hop frame could not be parsed or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HopError {
    /// The frame's version byte is not one this build speaks.
    #[error(
        "funnel hop: {what} version {got} is not supported (this build speaks {supported}); upgrade the ingress and the node to the same release"
    )]
    UnsupportedVersion {
        /// The message (`"hello"`, `"reply"`).
        what: &'static str,
        /// The version byte received.
        got: u8,
        /// The versions this build speaks, in words.
        supported: &'static str,
    },
    /// The frame ended before a field was complete.
    #[error(
        "funnel hop: the frame ended inside the {what}; the sender closed early or sent a short frame"
    )]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A length is over its bound.
    #[error("funnel hop: the {what} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Bytes were left after the last field of the frame.
    #[error("funnel hop: {count} unexpected bytes after the end of the {what}")]
    TrailingBytes {
        /// The message (`"hello"`).
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// The client address family byte is neither 4 nor 6.
    #[error("funnel hop: client address family {got} is unknown (expected 4 or 6)")]
    BadAddressFamily {
        /// The byte received.
        got: u8,
    },
    /// The hostname is not a DNS name.
    #[error("funnel hop: the hostname \"{hostname}\" is not valid: {reason}")]
    BadHostname {
        /// The hostname, with unprintable characters escaped.
        hostname: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// An attribute name is not 1-64 letters, digits and `-`.
    #[error(
        "funnel hop: the attribute name \"{name}\" is not valid: use 1 to 64 ASCII letters, digits and '-'"
    )]
    BadAttributeName {
        /// The name, with unprintable characters escaped.
        name: String,
    },
    /// A text field is not acceptable.
    #[error("funnel hop: the {what} is not valid: {reason}")]
    BadText {
        /// The field.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The admission flag byte is neither 0 nor 1.
    #[error("funnel hop: the admission flag is {got} (expected 0 for none or 1 for present)")]
    BadAdmissionFlag {
        /// The byte received.
        got: u8,
    },
    /// More attributes than [`MAX_ATTRIBUTES`].
    #[error("funnel hop: {count} identity attributes, more than the limit of {MAX_ATTRIBUTES}")]
    TooManyAttributes {
        /// How many there were.
        count: usize,
    },
    /// A request on a pooled (version 2) stream has no [`HOP_CONTEXT_HEADER`].
    #[error(
        "funnel hop: the request has no {HOP_CONTEXT_HEADER} header; on a pooled hop stream the ingress must send one with every request"
    )]
    MissingContext,
    /// A request on a pooled stream has more than one [`HOP_CONTEXT_HEADER`].
    #[error(
        "funnel hop: the request has {count} {HOP_CONTEXT_HEADER} headers; exactly one is allowed"
    )]
    RepeatedContext {
        /// How many there were.
        count: usize,
    },
    /// The [`HOP_CONTEXT_HEADER`] value is not base64url of a version 1 hello.
    #[error("funnel hop: the {HOP_CONTEXT_HEADER} header is not valid: {reason}")]
    BadContext {
        /// Why.
        reason: &'static str,
    },
    /// A request's context names another port or hostname than its stream's hello.
    #[error(
        "funnel hop: the request's context names {what} {got}, but its stream is for {expected}"
    )]
    ContextMismatch {
        /// The field (`"port"`, `"hostname"`).
        what: &'static str,
        /// The request's value.
        got: String,
        /// The stream's value.
        expected: String,
    },
}

/// The full length of the hello frame that starts `prefix`, or `None` if fewer than
/// [`HOP_PREFIX_LEN`] bytes are there yet.
///
/// Call it on the first bytes of a hop stream, then read exactly that many bytes and hand
/// them to [`FunnelHello::decode`]. Fails early on a wrong version or an oversized body, so
/// a reader never allocates for a bad length.
pub fn hello_frame_len(prefix: &[u8]) -> Result<Option<usize>, HopError> {
    let Some(&[version, hi, lo]) = prefix.get(..HOP_PREFIX_LEN) else {
        return Ok(None);
    };
    if version != HELLO_VERSION_PER_STREAM && version != HELLO_VERSION_PER_REQUEST {
        return Err(HopError::UnsupportedVersion {
            what: "hello",
            got: version,
            supported: "versions 1 and 2",
        });
    }
    let body = usize::from(u16::from_be_bytes([hi, lo]));
    if body > MAX_HELLO_BODY_LEN {
        return Err(HopError::TooLong {
            what: "hello body",
            len: body,
            max: MAX_HELLO_BODY_LEN,
        });
    }
    Ok(Some(HOP_PREFIX_LEN + body))
}

/// The full length of the reply frame that starts `prefix`, or `None` if fewer than
/// [`HOP_PREFIX_LEN`] bytes are there yet. Fails on a wrong version.
pub fn reply_frame_len(prefix: &[u8]) -> Result<Option<usize>, HopError> {
    let Some(&[version, _status, reason_len]) = prefix.get(..HOP_PREFIX_LEN) else {
        return Ok(None);
    };
    if version != REPLY_VERSION {
        return Err(HopError::UnsupportedVersion {
            what: "reply",
            got: version,
            supported: "version 1",
        });
    }
    Ok(Some(HOP_PREFIX_LEN + usize::from(reason_len)))
}

impl FunnelHello {
    /// Parses exactly one hello frame (prefix included; see [`hello_frame_len`]).
    pub fn decode(frame: &[u8]) -> Result<Self, HopError> {
        let Some(total) = hello_frame_len(frame)? else {
            return Err(HopError::Truncated {
                what: "hello prefix",
            });
        };
        let per_request_context = frame.first() == Some(&HELLO_VERSION_PER_REQUEST);
        let mut r = Reader {
            rest: frame.get(HOP_PREFIX_LEN..).unwrap_or_default(),
        };
        if frame.len() < total {
            return Err(HopError::Truncated { what: "hello body" });
        }
        if frame.len() > total {
            return Err(HopError::TrailingBytes {
                what: "hello",
                count: frame.len() - total,
            });
        }
        let family = r.u8("client address family")?;
        let ip = match family {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("client address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("client address")?)),
            got => return Err(HopError::BadAddressFamily { got }),
        };
        let client = SocketAddr::new(ip, r.u16("client port")?);
        let target_port = r.u16("target port")?;
        let raw_hostname = r.str8("hostname")?;
        let hostname = FunnelHostname::parse(raw_hostname)?;
        if hostname.as_str() != raw_hostname {
            return Err(HopError::BadHostname {
                hostname: printable(raw_hostname),
                reason: "on the wire it must be lower case without a trailing dot",
            });
        }
        let admission = match r.u8("admission flag")? {
            0 => None,
            1 => {
                let gate = IdentityText::parse("gate", r.str16("gate")?)?;
                let principal = IdentityText::parse("principal", r.str16("principal")?)?;
                let count = usize::from(r.u8("attribute count")?);
                if count > MAX_ATTRIBUTES {
                    return Err(HopError::TooManyAttributes { count });
                }
                let mut attributes = Vec::with_capacity(count);
                for _ in 0..count {
                    let name = AttributeName::parse(r.str8("attribute name")?)?;
                    let value =
                        IdentityText::parse("attribute value", r.str16("attribute value")?)?;
                    attributes.push((name, value));
                }
                Some(Admission {
                    gate,
                    principal,
                    attributes,
                })
            }
            got => return Err(HopError::BadAdmissionFlag { got }),
        };
        if !r.rest.is_empty() {
            return Err(HopError::TrailingBytes {
                what: "hello",
                count: r.rest.len(),
            });
        }
        Ok(Self {
            client,
            target_port,
            hostname,
            admission,
            per_request_context,
        })
    }

    /// The [`HOP_CONTEXT_HEADER`] value that carries this hello as one request's context:
    /// base64url (no padding) of the hello encoded as version 1, whatever
    /// [`FunnelHello::per_request_context`] says. Fails like [`FunnelHello::encode`].
    pub fn encode_context(&self) -> Result<String, HopError> {
        let frame = self.encode_version(HELLO_VERSION_PER_STREAM)?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(frame))
    }

    /// Parses one [`HOP_CONTEXT_HEADER`] value (see [`FunnelHello::encode_context`]). Fails
    /// with [`HopError::BadContext`] if it is too long, not base64url or holds a version 2
    /// hello, and with the hello's own errors if the frame inside does not parse.
    pub fn decode_context(value: &[u8]) -> Result<Self, HopError> {
        if value.len() > MAX_CONTEXT_HEADER_LEN {
            return Err(HopError::TooLong {
                what: "context header",
                len: value.len(),
                max: MAX_CONTEXT_HEADER_LEN,
            });
        }
        let frame = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| HopError::BadContext {
                reason: "it is not base64url without padding",
            })?;
        let hello = Self::decode(&frame)?;
        if hello.per_request_context {
            return Err(HopError::BadContext {
                reason: "it holds a version 2 hello; a request's context is a version 1 hello",
            });
        }
        Ok(hello)
    }

    /// On a stream opened with this (version 2) hello, the context of one request from
    /// the values of its [`HOP_CONTEXT_HEADER`] headers (all of them, in order). The node
    /// calls it for every request on a pooled stream and refuses the request on an error:
    /// [`HopError::MissingContext`] without one, [`HopError::RepeatedContext`] with several,
    /// [`HopError::ContextMismatch`] when it names another port or hostname than this
    /// hello, or the errors of [`FunnelHello::decode_context`].
    pub fn request_context<'a, I>(&self, values: I) -> Result<FunnelHello, HopError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut values = values.into_iter();
        let Some(value) = values.next() else {
            return Err(HopError::MissingContext);
        };
        let more = values.count();
        if more > 0 {
            return Err(HopError::RepeatedContext { count: more + 1 });
        }
        let context = Self::decode_context(value)?;
        if context.target_port != self.target_port {
            return Err(HopError::ContextMismatch {
                what: "port",
                got: context.target_port.to_string(),
                expected: self.target_port.to_string(),
            });
        }
        if context.hostname != self.hostname {
            return Err(HopError::ContextMismatch {
                what: "hostname",
                got: context.hostname.to_string(),
                expected: self.hostname.to_string(),
            });
        }
        Ok(context)
    }

    /// Encodes the hello as one frame (version 2 if [`FunnelHello::per_request_context`],
    /// else 1). Fails with [`HopError::TooManyAttributes`] or [`HopError::TooLong`] if the
    /// hello does not fit the bounds.
    pub fn encode(&self) -> Result<Vec<u8>, HopError> {
        let version = if self.per_request_context {
            HELLO_VERSION_PER_REQUEST
        } else {
            HELLO_VERSION_PER_STREAM
        };
        self.encode_version(version)
    }

    fn encode_version(&self, version: u8) -> Result<Vec<u8>, HopError> {
        let mut frame = Frame::start(version, self.client, self.target_port, &self.hostname)?;
        match &self.admission {
            None => frame.no_admission(),
            Some(admission) => {
                let count = u8::try_from(admission.attributes.len())
                    .ok()
                    .filter(|&c| usize::from(c) <= MAX_ATTRIBUTES)
                    .ok_or(HopError::TooManyAttributes {
                        count: admission.attributes.len(),
                    })?;
                frame.admission(admission.gate.as_str(), admission.principal.as_str(), count)?;
                for (name, value) in &admission.attributes {
                    frame.attribute(name.as_str(), value.as_str())?;
                }
            }
        }
        frame.finish()
    }

    /// Encodes the version 1 hello of one request (or of a TCP connection) straight from
    /// what the ingress holds, without building a [`FunnelHello`] first: the ingress calls
    /// it, through [`FunnelHello::encode_context_lossy`] for a request on a pooled stream,
    /// for every admitted request.
    ///
    /// Whatever identity a gate produced travels, made safe rather than refused: gate,
    /// principal and values as [`IdentityText::lossy`] makes them, attributes whose names
    /// are not [`AttributeName`]s dropped, at most [`MAX_ATTRIBUTES`] of the rest, and as
    /// many of those (in order) as fit [`MAX_HELLO_BODY_LEN`]. The gate and principal
    /// always fit, so this does not fail for an admission; it fails only as
    /// [`FunnelHello::encode`] would for the address and hostname (it cannot for a
    /// [`FunnelHostname`]). Decoding the result gives the same hello as building it with
    /// those rules and encoding it.
    pub fn encode_lossy<N, V>(
        client: SocketAddr,
        target_port: u16,
        hostname: &FunnelHostname,
        admission: Option<LossyAdmission<'_, N, V>>,
    ) -> Result<Vec<u8>, HopError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut frame = Frame::start(HELLO_VERSION_PER_STREAM, client, target_port, hostname)?;
        let Some(admission) = admission else {
            frame.no_admission();
            return frame.finish();
        };
        frame.admission(
            &lossy_text(admission.gate),
            &lossy_text(admission.principal),
            0,
        )?;
        // The count byte is the last written; it is set once the attributes that fit are in.
        let count_at = frame.buf.len().saturating_sub(1);
        let mut count: u8 = 0;
        let travelling = admission
            .attributes
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_ref()))
            .filter(|(name, _)| AttributeName::is_valid(name))
            .take(MAX_ATTRIBUTES);
        for (name, value) in travelling {
            let before = frame.buf.len();
            frame.attribute(name, &lossy_text(value))?;
            if frame.body_len() > MAX_HELLO_BODY_LEN {
                // The first that does not fit ends the list: the ones after it stay behind.
                frame.buf.truncate(before);
                break;
            }
            count += 1;
        }
        if let Some(byte) = frame.buf.get_mut(count_at) {
            *byte = count;
        }
        frame.finish()
    }

    /// [`FunnelHello::encode_lossy`] as a [`HOP_CONTEXT_HEADER`] value (see
    /// [`FunnelHello::encode_context`]).
    pub fn encode_context_lossy<N, V>(
        client: SocketAddr,
        target_port: u16,
        hostname: &FunnelHostname,
        admission: Option<LossyAdmission<'_, N, V>>,
    ) -> Result<String, HopError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let frame = Self::encode_lossy(client, target_port, hostname, admission)?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(frame))
    }
}

/// An admission as the ingress holds it, borrowed, for [`FunnelHello::encode_lossy`]:
/// the gate, the principal and the identity's attributes (name, value), in order.
#[derive(Debug)]
pub struct LossyAdmission<'a, N, V> {
    /// The gate(s) that admitted.
    pub gate: &'a str,
    /// The principal.
    pub principal: &'a str,
    /// The identity's attributes, any names (those that are not [`AttributeName`]s stay
    /// behind).
    pub attributes: &'a [(N, V)],
}

// Not derived: a borrow is `Copy` whatever `N` and `V` are.
impl<N, V> Clone for LossyAdmission<'_, N, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<N, V> Copy for LossyAdmission<'_, N, V> {}

/// A hello being encoded: the prefix (its length filled in by [`Frame::finish`]) and the
/// body so far, in one buffer.
struct Frame {
    buf: Vec<u8>,
}

impl Frame {
    fn start(
        version: u8,
        client: SocketAddr,
        target_port: u16,
        hostname: &FunnelHostname,
    ) -> Result<Self, HopError> {
        // Room for the usual hello (a hostname, a gate, a principal and two attributes).
        let mut buf = Vec::with_capacity(160);
        buf.extend_from_slice(&[version, 0, 0]);
        match client.ip() {
            IpAddr::V4(v4) => {
                buf.push(4);
                buf.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                buf.push(6);
                buf.extend_from_slice(&v6.octets());
            }
        }
        buf.extend_from_slice(&client.port().to_be_bytes());
        buf.extend_from_slice(&target_port.to_be_bytes());
        put_str8(&mut buf, "hostname", hostname.as_str())?;
        Ok(Self { buf })
    }

    fn body_len(&self) -> usize {
        self.buf.len().saturating_sub(HOP_PREFIX_LEN)
    }

    fn no_admission(&mut self) {
        self.buf.push(0);
    }

    fn admission(&mut self, gate: &str, principal: &str, count: u8) -> Result<(), HopError> {
        self.buf.push(1);
        put_str16(&mut self.buf, "gate", gate)?;
        put_str16(&mut self.buf, "principal", principal)?;
        self.buf.push(count);
        Ok(())
    }

    fn attribute(&mut self, name: &str, value: &str) -> Result<(), HopError> {
        put_str8(&mut self.buf, "attribute name", name)?;
        put_str16(&mut self.buf, "attribute value", value)
    }

    /// The frame, its body length filled in; fails if the body is over
    /// [`MAX_HELLO_BODY_LEN`].
    fn finish(mut self) -> Result<Vec<u8>, HopError> {
        let body_len = self.body_len();
        let len = u16::try_from(body_len)
            .ok()
            .filter(|_| body_len <= MAX_HELLO_BODY_LEN)
            .ok_or(HopError::TooLong {
                what: "hello body",
                len: body_len,
                max: MAX_HELLO_BODY_LEN,
            })?;
        if let Some(prefix) = self.buf.get_mut(1..HOP_PREFIX_LEN) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
        Ok(self.buf)
    }
}

/// `text` as [`IdentityText::lossy`] keeps it: control characters dropped, cut at
/// [`MAX_IDENTITY_TEXT_LEN`] bytes on a character boundary. Borrowed when nothing needs
/// dropping (the usual text).
fn lossy_text(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_IDENTITY_TEXT_LEN && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(MAX_IDENTITY_TEXT_LEN));
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_IDENTITY_TEXT_LEN {
            break;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

impl HopReply {
    /// A refusal with `code` and `reason`.
    pub fn refused(code: RefusalCode, reason: impl Into<String>) -> Self {
        HopReply::Refused(Refusal {
            code,
            reason: reason.into(),
        })
    }

    /// Parses exactly one reply frame (prefix included; see [`reply_frame_len`]). Status 0
    /// is an accept; any other status is a refusal, unknown ones as
    /// [`RefusalCode::Unknown`]. A reason that is not UTF-8 is kept lossily.
    pub fn decode(frame: &[u8]) -> Result<Self, HopError> {
        let Some(total) = reply_frame_len(frame)? else {
            return Err(HopError::Truncated {
                what: "reply prefix",
            });
        };
        if frame.len() < total {
            return Err(HopError::Truncated {
                what: "reply reason",
            });
        }
        if frame.len() > total {
            return Err(HopError::TrailingBytes {
                what: "reply",
                count: frame.len() - total,
            });
        }
        let status = frame.get(1).copied().unwrap_or_default();
        let reason = frame.get(HOP_PREFIX_LEN..total).unwrap_or_default();
        if status == 0 {
            return Ok(HopReply::Accepted);
        }
        Ok(HopReply::Refused(Refusal {
            code: RefusalCode::from_byte(status),
            reason: String::from_utf8_lossy(reason)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        }))
    }

    /// Encodes the reply as one frame. A reason longer than [`MAX_REASON_LEN`] bytes is cut
    /// at a character boundary; this never fails.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            HopReply::Accepted => vec![REPLY_VERSION, 0, 0],
            HopReply::Refused(refusal) => {
                let mut end = refusal.reason.len().min(MAX_REASON_LEN);
                while !refusal.reason.is_char_boundary(end) {
                    end -= 1;
                }
                let reason = refusal.reason.get(..end).unwrap_or_default();
                let mut status = refusal.code.to_byte();
                if status == 0 {
                    // `Unknown(0)` would read back as an accept; never send that.
                    status = RefusalCode::MalformedHello.to_byte();
                }
                let mut frame = vec![REPLY_VERSION, status, reason.len() as u8];
                frame.extend_from_slice(reason.as_bytes());
                frame
            }
        }
    }
}

/// A cursor over a frame body; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HopError> {
        if self.rest.len() < n {
            return Err(HopError::Truncated { what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], HopError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HopError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HopError> {
        Ok(u16::from_be_bytes(self.array::<2>(what)?))
    }

    fn str8(&mut self, what: &'static str) -> Result<&'a str, HopError> {
        let len = usize::from(self.u8(what)?);
        self.utf8(len, what)
    }

    fn str16(&mut self, what: &'static str) -> Result<&'a str, HopError> {
        let len = usize::from(self.u16(what)?);
        if len > MAX_IDENTITY_TEXT_LEN {
            return Err(HopError::TooLong {
                what,
                len,
                max: MAX_IDENTITY_TEXT_LEN,
            });
        }
        self.utf8(len, what)
    }

    fn utf8(&mut self, len: usize, what: &'static str) -> Result<&'a str, HopError> {
        std::str::from_utf8(self.take(len, what)?).map_err(|_| HopError::BadText {
            what,
            reason: "it is not UTF-8",
        })
    }
}

fn put_str8(out: &mut Vec<u8>, what: &'static str, text: &str) -> Result<(), HopError> {
    let len = u8::try_from(text.len()).map_err(|_| HopError::TooLong {
        what,
        len: text.len(),
        max: usize::from(u8::MAX),
    })?;
    out.push(len);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, what: &'static str, text: &str) -> Result<(), HopError> {
    if text.len() > MAX_IDENTITY_TEXT_LEN {
        return Err(HopError::TooLong {
            what,
            len: text.len(),
            max: MAX_IDENTITY_TEXT_LEN,
        });
    }
    let len = u16::try_from(text.len()).map_err(|_| HopError::TooLong {
        what,
        len: text.len(),
        max: MAX_IDENTITY_TEXT_LEN,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Text for an error message: at most 64 characters, control characters escaped.
fn printable(text: &str) -> String {
    text.chars().take(64).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_round_trip_through_their_text_and_byte() {
        for code in RefusalCode::KNOWN {
            assert_eq!(RefusalCode::from_text(code.as_str()), code);
            assert_eq!(RefusalCode::from_byte(code.to_byte()), code);
        }
        assert_eq!(
            RefusalCode::from_text("node_refused_something_new"),
            RefusalCode::Unknown(0)
        );
    }
    use proptest::prelude::*;

    fn hello() -> FunnelHello {
        FunnelHello {
            client: "203.0.113.7:51000".parse().unwrap(),
            target_port: 3000,
            hostname: FunnelHostname::parse("Hooks.Example.com.").unwrap(),
            admission: Some(Admission {
                gate: IdentityText::parse("gate", "webhook:github").unwrap(),
                principal: IdentityText::parse("principal", "webhook:github").unwrap(),
                attributes: vec![(
                    AttributeName::parse("Delivery").unwrap(),
                    IdentityText::parse("attribute value", "72d3162e-cc78").unwrap(),
                )],
            }),
            per_request_context: false,
        }
    }

    #[test]
    fn hello_round_trips_and_frame_len_matches() {
        let wire = hello().encode().unwrap();
        assert_eq!(hello_frame_len(&wire[..2]).unwrap(), None);
        assert_eq!(hello_frame_len(&wire).unwrap(), Some(wire.len()));
        let back = FunnelHello::decode(&wire).unwrap();
        assert_eq!(back, hello());
        assert_eq!(back.hostname.as_str(), "hooks.example.com");

        let open = FunnelHello {
            client: "[2001:db8::1]:443".parse().unwrap(),
            admission: None,
            ..hello()
        };
        assert_eq!(FunnelHello::decode(&open.encode().unwrap()).unwrap(), open);
    }

    #[test]
    fn replies_round_trip() {
        let accepted = HopReply::Accepted.encode();
        assert_eq!(accepted, [1, 0, 0]);
        assert_eq!(HopReply::decode(&accepted).unwrap(), HopReply::Accepted);
        let refused = HopReply::refused(RefusalCode::PortNotFunnelled, "port 22 is not funnelled");
        let wire = refused.encode();
        assert_eq!(reply_frame_len(&wire).unwrap(), Some(wire.len()));
        assert_eq!(HopReply::decode(&wire).unwrap(), refused);
        // An unknown status from a newer node is still a refusal.
        assert_eq!(
            HopReply::decode(&[1, 77, 2, b'h', b'i']).unwrap(),
            HopReply::refused(RefusalCode::Unknown(77), "hi")
        );
        // Long reasons are cut on a character boundary.
        let long = HopReply::refused(RefusalCode::NotIngress, "é".repeat(200)).encode();
        assert_eq!(long.len(), HOP_PREFIX_LEN + 254);
        assert!(HopReply::decode(&long).is_ok());
    }

    #[test]
    fn bad_frames_get_clear_errors() {
        let error = |bytes: &[u8]| FunnelHello::decode(bytes).unwrap_err().to_string();
        assert_eq!(
            error(b"GET / HTTP/1.1\r\n"),
            "funnel hop: hello version 71 is not supported (this build speaks versions 1 and 2); upgrade the ingress and the node to the same release"
        );
        assert_eq!(
            error(&[1, 0xff, 0xff]),
            "funnel hop: the hello body is 65535 bytes, more than the limit of 16384"
        );
        assert_eq!(
            error(&[1, 0, 3, 4, 10, 0]),
            "funnel hop: the frame ended inside the client address; the sender closed early or sent a short frame"
        );
        assert_eq!(
            error(&[1, 0, 1, 5]),
            "funnel hop: client address family 5 is unknown (expected 4 or 6)"
        );
        let mut wire = hello().encode().unwrap();
        wire.push(0);
        assert_eq!(
            error(&wire),
            "funnel hop: 1 unexpected bytes after the end of the hello"
        );
        let with_host = |host: &[u8], flag: u8| {
            let mut body = vec![4, 1, 2, 3, 4, 0, 80, 0x0b, 0xb8, host.len() as u8];
            body.extend_from_slice(host);
            body.push(flag);
            let mut frame = vec![1, 0, body.len() as u8];
            frame.extend_from_slice(&body);
            frame
        };
        assert_eq!(
            error(&with_host(b"evil host\n", 0)),
            "funnel hop: the hostname \"evil host\\n\" is not valid: only letters, digits, '-' and '.' are allowed"
        );
        assert_eq!(
            error(&with_host(b"a..b", 0)),
            "funnel hop: the hostname \"a..b\" is not valid: it has an empty label"
        );
        assert_eq!(
            error(&with_host(b"ok.example", 7)),
            "funnel hop: the admission flag is 7 (expected 0 for none or 1 for present)"
        );
        assert_eq!(
            error(&with_host(b"ok.example", 1)),
            "funnel hop: the frame ended inside the gate; the sender closed early or sent a short frame"
        );
        assert_eq!(
            AttributeName::parse("bad name").unwrap_err().to_string(),
            "funnel hop: the attribute name \"bad name\" is not valid: use 1 to 64 ASCII letters, digits and '-'"
        );
        assert_eq!(
            IdentityText::parse("principal", "a\r\nb")
                .unwrap_err()
                .to_string(),
            "funnel hop: the principal is not valid: it contains a control character"
        );
        let mut too_many = hello();
        if let Some(admission) = too_many.admission.as_mut() {
            let attribute = admission.attributes[0].clone();
            admission.attributes = vec![attribute; 33];
        }
        assert_eq!(
            too_many.encode().unwrap_err().to_string(),
            "funnel hop: 33 identity attributes, more than the limit of 32"
        );
        assert_eq!(
            HopReply::decode(&[2, 0, 0]).unwrap_err().to_string(),
            "funnel hop: reply version 2 is not supported (this build speaks version 1); upgrade the ingress and the node to the same release"
        );
        assert_eq!(
            HopReply::decode(&[1, 1, 5, b'a']).unwrap_err().to_string(),
            "funnel hop: the frame ended inside the reply reason; the sender closed early or sent a short frame"
        );
        assert_eq!(
            Refusal {
                code: RefusalCode::NotIngress,
                reason: "100.64.0.9 is not an ingress".into()
            }
            .to_string(),
            "the node refused the funnel stream (node_refused_not_ingress): 100.64.0.9 is not an ingress"
        );
    }

    #[test]
    fn per_request_hellos_are_version_2_and_contexts_travel_in_a_header() {
        let pooled = FunnelHello {
            client: "0.0.0.0:0".parse().unwrap(),
            admission: None,
            per_request_context: true,
            ..hello()
        };
        let wire = pooled.encode().unwrap();
        assert_eq!(wire[0], HELLO_VERSION_PER_REQUEST);
        assert_eq!(hello_frame_len(&wire).unwrap(), Some(wire.len()));
        assert_eq!(FunnelHello::decode(&wire).unwrap(), pooled);
        // A version 1 node refuses the version 2 hello by its version byte; what it says:
        let old_node = HopError::UnsupportedVersion {
            what: "hello",
            got: 2,
            supported: "version 1",
        };
        assert!(
            old_node
                .to_string()
                .contains("hello version 2 is not supported")
        );

        let request = hello();
        let value = request.encode_context().unwrap();
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            FunnelHello::decode_context(value.as_bytes()).unwrap(),
            request
        );
        // Whatever the flag says, a context is encoded as version 1.
        let flagged = FunnelHello {
            per_request_context: true,
            ..hello()
        };
        assert_eq!(flagged.encode_context().unwrap(), value);
        assert_eq!(pooled.request_context([value.as_bytes()]).unwrap(), request);
    }

    #[test]
    fn bad_request_contexts_get_clear_errors() {
        let pooled = FunnelHello {
            per_request_context: true,
            admission: None,
            ..hello()
        };
        let error = |values: &[&[u8]]| {
            pooled
                .request_context(values.iter().copied())
                .unwrap_err()
                .to_string()
        };
        let good = hello().encode_context().unwrap();
        assert_eq!(
            error(&[]),
            "funnel hop: the request has no postern-hop-context header; on a pooled hop stream the ingress must send one with every request"
        );
        assert_eq!(
            error(&[good.as_bytes(), good.as_bytes()]),
            "funnel hop: the request has 2 postern-hop-context headers; exactly one is allowed"
        );
        assert_eq!(
            error(&[b"AQ==".as_slice()]),
            "funnel hop: the postern-hop-context header is not valid: it is not base64url without padding"
        );
        assert_eq!(
            error(&[b"a+b/".as_slice()]),
            "funnel hop: the postern-hop-context header is not valid: it is not base64url without padding"
        );
        let long = vec![b'A'; MAX_CONTEXT_HEADER_LEN + 1];
        assert_eq!(
            error(&[long.as_slice()]),
            format!(
                "funnel hop: the context header is {} bytes, more than the limit of {MAX_CONTEXT_HEADER_LEN}",
                MAX_CONTEXT_HEADER_LEN + 1
            )
        );
        let nested = pooled.encode().unwrap();
        let nested = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nested);
        assert_eq!(
            error(&[nested.as_bytes()]),
            "funnel hop: the postern-hop-context header is not valid: it holds a version 2 hello; a request's context is a version 1 hello"
        );
        let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8, 0, 3, 4, 10, 0]);
        assert_eq!(
            error(&[short.as_bytes()]),
            "funnel hop: the frame ended inside the client address; the sender closed early or sent a short frame"
        );
        let other_port = FunnelHello {
            target_port: 22,
            ..hello()
        }
        .encode_context()
        .unwrap();
        assert_eq!(
            error(&[other_port.as_bytes()]),
            "funnel hop: the request's context names port 22, but its stream is for 3000"
        );
        let other_host = FunnelHello {
            hostname: FunnelHostname::parse("other.example.com").unwrap(),
            ..hello()
        }
        .encode_context()
        .unwrap();
        assert_eq!(
            error(&[other_host.as_bytes()]),
            "funnel hop: the request's context names hostname other.example.com, but its stream is for hooks.example.com"
        );
    }

    #[test]
    fn lossy_identity_text_drops_controls_and_cuts() {
        assert_eq!(IdentityText::lossy("a\r\nb").as_str(), "ab");
        let long = "é".repeat(MAX_IDENTITY_TEXT_LEN);
        let cut = IdentityText::lossy(&long);
        assert!(cut.as_str().len() <= MAX_IDENTITY_TEXT_LEN);
        assert!(IdentityText::parse("x", cut.as_str()).is_ok());
        // Text that needs nothing dropped is kept whole, up to the bound exactly.
        assert_eq!(
            IdentityText::lossy("webhook:github").as_str(),
            "webhook:github"
        );
        let full = "a".repeat(MAX_IDENTITY_TEXT_LEN);
        assert_eq!(IdentityText::lossy(&full).as_str(), full);
        let over = "a".repeat(MAX_IDENTITY_TEXT_LEN + 1);
        assert_eq!(
            IdentityText::lossy(&over).as_str().len(),
            MAX_IDENTITY_TEXT_LEN
        );
    }

    /// The hello [`FunnelHello::encode_lossy`] must encode, built the long way: every
    /// text through [`IdentityText::lossy`], names through [`AttributeName::parse`], at
    /// most [`MAX_ATTRIBUTES`], then attributes dropped from the end until it encodes.
    fn lossy_reference(
        client: SocketAddr,
        hostname: &FunnelHostname,
        gate: &str,
        principal: &str,
        attributes: &[(String, String)],
    ) -> FunnelHello {
        let mut hello = FunnelHello {
            client,
            target_port: 3000,
            hostname: hostname.clone(),
            admission: Some(Admission {
                gate: IdentityText::lossy(gate),
                principal: IdentityText::lossy(principal),
                attributes: attributes
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((AttributeName::parse(n).ok()?, IdentityText::lossy(v)))
                    })
                    .take(MAX_ATTRIBUTES)
                    .collect(),
            }),
            per_request_context: false,
        };
        while hello.encode().is_err() {
            hello.admission.as_mut().unwrap().attributes.pop().unwrap();
        }
        hello
    }

    #[test]
    fn a_lossy_hello_is_the_hello_built_with_the_lossy_rules() {
        let client: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
        let hostname = FunnelHostname::parse("hooks.example.com").unwrap();
        let mut attributes = vec![
            ("Delivery".to_string(), "72d3162e\r\n-cc78".to_string()),
            ("bad name".to_string(), "dropped".to_string()),
            ("Event".to_string(), "push".to_string()),
        ];
        for i in 0..40 {
            attributes.push((format!("A{i}"), "v".repeat(1000)));
        }
        let admission = LossyAdmission {
            gate: "webhook:github",
            principal: "user:\u{7}x",
            attributes: &attributes,
        };
        let frame = FunnelHello::encode_lossy(client, 3000, &hostname, Some(admission)).unwrap();
        let hello = FunnelHello::decode(&frame).unwrap();
        let reference = lossy_reference(
            client,
            &hostname,
            "webhook:github",
            "user:\u{7}x",
            &attributes,
        );
        assert_eq!(hello, reference);
        let kept = &hello.admission.as_ref().unwrap().attributes;
        assert_eq!(kept[0].1.as_str(), "72d3162e-cc78");
        assert_eq!(kept[1].0.as_str(), "Event");
        assert!(kept.len() > 5 && kept.len() < 20, "{} kept", kept.len());
        let last_kept = kept.len();
        assert_eq!(hello.admission.unwrap().principal.as_str(), "user:x");
        // The first attribute that does not fit ends the list, even if a smaller one after
        // it would fit.
        // (`attributes[1]` is the bad name, so the first left out is `attributes[last_kept + 1]`.)
        assert_eq!(attributes[last_kept + 1].1.len(), 1000);
        let mut with_small = attributes.clone();
        with_small.insert(last_kept + 2, ("Small".to_string(), "s".to_string()));
        let frame = FunnelHello::encode_lossy(
            client,
            3000,
            &hostname,
            Some(LossyAdmission {
                attributes: &with_small,
                ..admission
            }),
        )
        .unwrap();
        let hello = FunnelHello::decode(&frame).unwrap();
        assert_eq!(hello.admission.unwrap().attributes.len(), last_kept);
        assert_eq!(frame, reference.encode().unwrap());

        let context =
            FunnelHello::encode_context_lossy(client, 3000, &hostname, Some(admission)).unwrap();
        assert_eq!(
            FunnelHello::decode_context(context.as_bytes()).unwrap(),
            reference
        );

        let bare =
            FunnelHello::encode_lossy::<String, String>(client, 3000, &hostname, None).unwrap();
        let bare = FunnelHello::decode(&bare).unwrap();
        assert!(bare.admission.is_none() && !bare.per_request_context);
    }

    proptest! {
        #[test]
        fn lossy_hellos_match_the_reference(
            gate in "[a-z:\\x00-\\x1f\\u{80}-\\u{10ffff}]{0,40}",
            principal in "(?s).{0,1100}",
            attributes in proptest::collection::vec(
                ("[A-Za-z0-9-]{1,12}|[A-Za-z0-9 -]{0,70}", "(?s).{0,1100}"), 0..48),
        ) {
            let client: SocketAddr = "203.0.113.7:51000".parse().unwrap();
            let hostname = FunnelHostname::parse("hooks.example.com").unwrap();
            let admission = LossyAdmission { gate: &gate, principal: &principal, attributes: &attributes };
            let frame = FunnelHello::encode_lossy(client, 3000, &hostname, Some(admission)).unwrap();
            let reference = lossy_reference(client, &hostname, &gate, &principal, &attributes);
            prop_assert_eq!(FunnelHello::decode(&frame).unwrap(), reference.clone());
            prop_assert_eq!(frame, reference.encode().unwrap());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_reencodes(
            bytes in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            if let Ok(hello) = FunnelHello::decode(&bytes) {
                prop_assert_eq!(hello.encode().unwrap(), bytes.clone());
            }
            let _ = HopReply::decode(&bytes);
            if let Ok(context) = FunnelHello::decode_context(&bytes) {
                prop_assert!(!context.per_request_context);
                let again = context.encode_context().unwrap();
                prop_assert_eq!(FunnelHello::decode_context(again.as_bytes()).unwrap(), context);
            }
        }
    }
}

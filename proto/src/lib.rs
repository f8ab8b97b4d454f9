//! Wire types shared by every Postern component.
//!
//! This crate owns the vocabulary the coordination server, the nodes, the relay and the
//! ingress speak to each other: keys and node identifiers, control-channel messages,
//! relay frames and the netmap a node receives.
//!
//! It must never do I/O, read a clock or spawn tasks: every type here is plain data with
//! parsing and encoding. Parsers of bytes that came from the network return typed errors
//! and never panic.
//!
//! - [`keys`]: machine, node and disco keys (x25519, from `boringtun::x25519`);
//! - [`ids`]: stable node and user ids, wall-clock timestamps;
//! - [`netmap`]: the netmap a node receives and deltas to it;
//! - [`control`]: versioned control-channel messages and their encoding;
//! - [`frame`]: the length-prefixed framing both protocols use, with an incremental decoder;
//! - [`relay`]: binary relay frames and the relay attach proof;
//! - [`stun`]: STUN binding request and response (RFC 5389);
//! - [`funnel`]: funnel requests from nodes and the funnel routes ingress nodes receive;
//! - [`funnel_hop`]: the hello and reply the ingress and a node exchange before a funnelled
//!   stream.

pub mod control;
pub mod frame;
pub mod funnel;
pub mod funnel_hop;
pub mod ids;
pub mod keys;
pub mod netmap;
pub mod relay;
pub mod stun;

pub use ids::{NodeId, UnixTime, UserId};
pub use keys::{
    DiscoPrivateKey, DiscoPublicKey, MachinePrivateKey, MachinePublicKey, NodePrivateKey,
    NodePublicKey, x25519,
};

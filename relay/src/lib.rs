//! The Postern relay: forwards already-encrypted WireGuard packets between nodes that cannot
//! reach each other directly, and tells nodes their public UDP endpoint (STUN).
//!
//! Nodes attach over an HTTP upgrade (`GET /relay`, `Upgrade: postern-relay/1`; TLS on 443
//! in production), prove they hold their node key (an x25519 challenge, see
//! [`postern_proto::relay::attach_proof`]) and must be registered: the relay asks a
//! [`NodeAuthorizer`], which the coord implements from its registry when it embeds the relay,
//! and [`StaticAllowList`] implements for a standalone relay and tests. Then frames carry
//! packets addressed by destination node key (see `docs/relay.md`).
//!
//! - [`core`]: the sans-IO routing state machine (bounded per-client queues, rate limits,
//!   counters, keepalives);
//! - [`server`]: the tokio/hyper shell (upgrade, attach, one reader and writer per client);
//! - [`stun`]: the STUN binding responder on UDP;
//! - [`authorizer`]: who may attach;
//! - [`tls`]: loading the certificate for `https://` on 443.
//!
//! The relay never sees plaintext: WireGuard encrypts end to end between the nodes.

pub mod authorizer;
pub mod core;
mod metrics;
pub mod server;
pub mod stun;
pub mod tls;

pub use authorizer::{AuthorizeError, NodeAuthorizer, StaticAllowList};
pub use core::{ClientStats, RelayConfig, RelayStats};
pub use server::{RelayServer, ServeHandle};
pub use stun::StunServer;

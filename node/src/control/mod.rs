//! The control client: an authenticated, encrypted channel to the coordination server and
//! the netmap stream it carries.
//!
//! - [`noise`]: the sans-IO Noise IK channel (node = initiator with its machine key);
//! - [`connection`]: the async shell over a byte stream, and dialling the coord over an
//!   HTTP upgrade (shared with the coord, which accepts with the same type);
//! - [`session`]: the sans-IO node side of the protocol (register, map request, netmap);
//! - [`client`]: the tokio client that redials and publishes the netmap via `watch`.
//!
//! The protocol is described in `docs/coord.md`.

pub mod client;
pub mod connection;
pub mod noise;
pub mod session;

pub use client::{ClientConfig, ClientError, ControlClient};
pub use connection::{ConnectionError, ControlConnection, dial, fetch_coord_key};
pub use noise::{ChannelError, NoiseChannel};
pub use session::{ControlSession, RegistrationState, SessionConfig, SessionError};

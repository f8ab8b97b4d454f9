//! The Postern test lab: real third-party components for tests.
//!
//! Each launcher starts a real component in its own temporary directory and tears it down
//! on drop, even when the test panics, leaving no process or network namespace behind.
//!
//! It is only ever used by tests and benchmarks; no shipped crate depends on it.
//!
//! | launcher | gives you |
//! |---|---|
//! | [`postgres::PostgresCluster`] | a throwaway PostgreSQL cluster and its connection URL |
//! | [`netlab::NatLab`] | namespaces: public hosts, two homes behind easy/hard NAT; loss, delay |
//! | [`netns::Netns`] | one bare network namespace, emptied and deleted on drop |
//! | [`idp::OidcProvider`] | a real OpenID Provider with users, groups, device and code flows |
//! | [`idp::browser`] | headless logins to it: device flow, authorization code + PKCE |
//! | [`pebble::Pebble`] | the pebble ACME test server (always-valid or strict with mock DNS) |
//! | [`wireguard_go::WireguardGo`] | a stock WireGuard peer (wireguard-go + wg) in a namespace |
//! | [`delay::DelayForwarder`] | a UDP/TCP relay that adds a fixed delay (no netem here) |
//!
//! See `docs/lab.md` for how to use each one from a test and the gotchas behind them.

pub mod delay;
mod error;
pub mod idp;
pub mod netlab;
pub mod netns;
pub mod pebble;
pub mod postgres;
mod process;
mod tools;
pub mod wireguard_go;

pub use error::LabError;
pub use process::LabProcess;

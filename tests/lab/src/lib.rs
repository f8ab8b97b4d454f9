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
//! | [`delay::DelayForwarder`] | a UDP/TCP relay that adds a fixed delay (no netem here) |
//!
//! See `docs/lab.md` for how to use each one from a test and the gotchas behind them.

pub mod delay;
#[allow(dead_code)] // parts used by the launchers that land next
mod error;
pub mod netlab;
pub mod netns;
pub mod postgres;
mod process;
#[allow(dead_code)]
mod tools;

pub use error::LabError;
pub use process::LabProcess;

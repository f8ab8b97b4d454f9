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
//!
//! See `docs/lab.md` for how to use each one from a test and the gotchas behind them.

#[allow(dead_code)] // parts used by the launchers that land next
mod error;
pub mod postgres;
#[allow(dead_code)]
mod process;
#[allow(dead_code)]
mod tools;

pub use error::LabError;
pub use process::LabProcess;

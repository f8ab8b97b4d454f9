//! The Postern test lab: real third-party components for tests.
//!
//! Each launcher starts a real component in its own temporary directory and tears it down
//! on drop, even when the test panics, leaving no process or network namespace behind.
//!
//! It is only ever used by tests and benchmarks; no shipped crate depends on it.

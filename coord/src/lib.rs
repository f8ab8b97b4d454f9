//! The Postern coordination server.
//!
//! This crate owns identity (OIDC login, auth keys, key expiry), the node registry, the
//! policy in force, the streamed netmaps each node receives, the relay and STUN service,
//! the audit log and the SQL store (SQLite or PostgreSQL).
//!
//! It never sees traffic between nodes: it hands out keys, addresses and policy, and relays
//! only packets that are already encrypted end to end. It must never log a secret.

pub mod admin;
pub mod audit;
pub mod config;
pub mod control;
pub mod funnel;
pub mod lifecycle;
pub mod login;
pub mod netmap;
pub mod policy;
pub mod policy_admin;
pub mod registry;
pub mod relay;
pub mod replicas;
pub mod server;
pub mod store;

//! The Postern public edge.
//!
//! This crate owns the only public-facing piece of Postern: ACME certificates, TLS
//! termination, HTTP/1.1, HTTP/2, WebSocket, SSE and TCP funnels, the identity gate chain
//! (webhook signatures, OIDC login, JWT, mTLS, IP rules), and the audit of every decision.
//! It reaches funnel targets through an embedded node ([`embedded`]), whose netmap also
//! lists the funnels the coordination server opened ([`routes`]).
//!
//! It must never forward a request that failed its gate, never pass through identity
//! headers that came in from the client, and never log a secret.

pub mod audit;
pub mod certs;
pub mod config;
pub mod edge;
pub mod edge_log;
pub mod embedded;
pub mod gate;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod tcp_funnel;

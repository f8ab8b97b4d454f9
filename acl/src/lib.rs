//! Postern's policy language.
//!
//! Admins write one policy file (HuJSON, Tailscale-compatible where Tailscale has the
//! feature). This crate parses it with `FILE:LINE:COL` errors, validates it, runs the
//! policy's own `tests`, evaluates access questions and compiles, per node, the peers it
//! may see, the inbound packet filter it enforces and its funnel grants.
//!
//! It must never do I/O: the caller reads the file and hands over the text; the caller
//! supplies the set of nodes and identities. No clock is read.

//! A Postern mesh node.
//!
//! This crate owns everything a node does: the sans-IO WireGuard peer engine (sessions via
//! boringtun, path choice between direct and relayed, timers), the control client that
//! keeps the netmap, the relay client, the inbound packet filter, the local side of serve
//! and funnel, request capture, and the daemon with its local API. The ingress embeds it
//! as a library.
//!
//! The protocol cores are state machines that take `now` and do no I/O; thin tokio shells
//! drive them. It must never depend on the coordination server or the ingress.

pub mod control;
pub mod daemon;
pub mod disco;
pub mod engine;
pub mod hop_by_hop;
pub mod inspect;
pub mod relay;
pub mod serve;
pub mod tun;
pub mod udp;
pub mod userspace;
pub mod wg_config;

//! Wire types shared by every Postern component.
//!
//! This crate owns the vocabulary the coordination server, the nodes, the relay and the
//! ingress speak to each other: keys and node identifiers, control-channel messages,
//! relay frames and the netmap a node receives.
//!
//! It must never do I/O, read a clock or spawn tasks: every type here is plain data with
//! parsing and encoding. Parsers of bytes that came from the network return typed errors
//! and never panic.

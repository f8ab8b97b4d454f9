//! Paths: where a datagram came from or goes to, independent of how it travels.
//!
//! The session logic only ever stores and compares [`PathId`]s; the I/O shell maps each kind
//! to its transport. A relay path (datagrams carried by the relay server, addressed by node
//! key) is a new variant here plus a new arm in the shell, with no change to the sessions.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One way to reach a peer, or the way a datagram arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathId {
    /// Plain UDP to or from this socket address.
    Direct(SocketAddr),
}

impl PathId {
    /// The IP address that sent a datagram on this path, as WireGuard's cookie mechanism
    /// needs it (cookies bind an initiator to its source address).
    pub fn source_ip(&self) -> Option<IpAddr> {
        match self {
            PathId::Direct(addr) => Some(addr.ip()),
        }
    }
}

impl From<SocketAddr> for PathId {
    fn from(addr: SocketAddr) -> Self {
        PathId::Direct(addr)
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathId::Direct(addr) => write!(f, "udp:{addr}"),
        }
    }
}

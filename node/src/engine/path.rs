//! Paths: where a datagram came from or goes to, independent of how it travels.
//!
//! The session logic only ever stores and compares [`PathId`]s; the I/O shell maps each kind
//! to its transport. A relay path (datagrams carried by the relay server, addressed by node
//! key) is a new variant here plus a new arm in the shell, with no change to the sessions.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use postern_proto::NodePublicKey;
use postern_proto::netmap::RegionId;

/// One way to reach a peer, or the way a datagram arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathId {
    /// Plain UDP to or from this socket address.
    Direct(SocketAddr),
    /// Through the relay of `region`, addressed to (or arriving from) the node `peer`. The
    /// shell hands such transmits to its [`RelayClient`](crate::relay::RelayClient) for that
    /// region, and feeds datagrams from it with the sender as `peer`.
    Relay {
        /// The relay region carrying the datagrams.
        region: RegionId,
        /// The peer at the other end of the relay.
        peer: NodePublicKey,
    },
}

impl PathId {
    /// The IP address that sent a datagram on this path, as WireGuard's cookie mechanism
    /// needs it (cookies bind an initiator to its source address).
    pub fn source_ip(&self) -> Option<IpAddr> {
        match self {
            PathId::Direct(addr) => Some(addr.ip()),
            // The relay authenticated the sender's node key; there is no address to bind a
            // cookie to.
            PathId::Relay { .. } => None,
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
            PathId::Relay { region, peer } => write!(f, "relay:{}/{}", region.0, peer.short()),
        }
    }
}

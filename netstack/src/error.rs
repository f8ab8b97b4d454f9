//! Errors of the netstack's API.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What went wrong when creating the stack, a socket or a connection.
///
/// Socket I/O (`AsyncRead`, `AsyncWrite`, `send_to`, `recv_from`) returns [`std::io::Error`]
/// instead, as tokio's traits require; where the cause is one of these variants it is the
/// inner error of that `io::Error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetstackError {
    /// A field of [`NetstackConfig`](crate::NetstackConfig) is out of range, or an environment
    /// override ([`NetstackConfig::apply_env`](crate::NetstackConfig::apply_env)) is not understood.
    #[error("invalid netstack configuration: {0}")]
    InvalidConfig(String),
    /// `Netstack::new` was called outside a tokio runtime.
    #[error("no tokio runtime: create the Netstack from inside a tokio runtime")]
    NoRuntime,
    /// The thread of a stack with [`OwnerThread::Dedicated`](crate::OwnerThread::Dedicated)
    /// could not be started.
    #[error("cannot start the netstack's thread: {0}")]
    Thread(io::Error),
    /// Another socket of the same protocol already uses this port.
    #[error(
        "{protocol} port {port} is already in use on this netstack; pick another port or drop the other socket first"
    )]
    AddrInUse {
        /// `"tcp"` or `"udp"`.
        protocol: &'static str,
        /// The port asked for.
        port: u16,
    },
    /// A TCP listener on every port already exists.
    #[error("this netstack already has an any-port TCP listener; drop it before making another")]
    AnyPortListenerExists,
    /// Every ephemeral port (49152 to 65535) is taken.
    #[error("no free ephemeral {protocol} port: all 16384 are in use; close some sockets")]
    NoFreePort {
        /// `"tcp"` or `"udp"`.
        protocol: &'static str,
    },
    /// The stack has no address of the remote's family to send from.
    #[error(
        "this netstack has no {family} address to reach {remote} from; add one to NetstackConfig::addresses"
    )]
    NoSourceAddress {
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
        /// The address that could not be reached.
        remote: IpAddr,
    },
    /// The remote address cannot be connected or sent to.
    #[error("{remote} is not a valid remote: the address must be unicast and the port non-zero")]
    InvalidRemote {
        /// The address given.
        remote: SocketAddr,
    },
    /// The peer answered the connection attempt with RST: nothing listens there.
    #[error("connection to {remote} refused: the peer answered with RST (nothing listens there)")]
    ConnectionRefused {
        /// The address connected to.
        remote: SocketAddr,
    },
    /// The peer did not answer the connection attempt in time.
    #[error(
        "connection to {remote} timed out after {timeout:?} with no answer; is the peer up and reachable?"
    )]
    ConnectTimedOut {
        /// The address connected to.
        remote: SocketAddr,
        /// How long the stack waited.
        timeout: Duration,
    },
    /// A UDP datagram does not fit in one packet of the tunnel.
    #[error(
        "a UDP datagram of {len} bytes does not fit the tunnel MTU (at most {max} bytes of payload); send smaller datagrams"
    )]
    DatagramTooLarge {
        /// Payload length given.
        len: usize,
        /// Largest payload that fits.
        max: usize,
    },
    /// The [`Netstack`](crate::Netstack) was dropped, so its sockets no longer work.
    #[error("the netstack has stopped (its Netstack handle was dropped); create a new one")]
    Stopped,
}

impl From<NetstackError> for io::Error {
    fn from(err: NetstackError) -> Self {
        let kind = match &err {
            NetstackError::InvalidConfig(_)
            | NetstackError::InvalidRemote { .. }
            | NetstackError::DatagramTooLarge { .. } => io::ErrorKind::InvalidInput,
            NetstackError::NoRuntime | NetstackError::Stopped => io::ErrorKind::NotConnected,
            NetstackError::Thread(error) => error.kind(),
            NetstackError::AddrInUse { .. } | NetstackError::AnyPortListenerExists => {
                io::ErrorKind::AddrInUse
            }
            NetstackError::NoFreePort { .. } => io::ErrorKind::AddrNotAvailable,
            NetstackError::NoSourceAddress { .. } => io::ErrorKind::AddrNotAvailable,
            NetstackError::ConnectionRefused { .. } => io::ErrorKind::ConnectionRefused,
            NetstackError::ConnectTimedOut { .. } => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_kind_and_message() {
        let remote: SocketAddr = "100.64.0.2:80".parse().unwrap();
        let err: io::Error = NetstackError::ConnectionRefused { remote }.into();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(err.to_string().contains("100.64.0.2:80"), "{err}");
        let err: io::Error = NetstackError::DatagramTooLarge {
            len: 9000,
            max: 1392,
        }
        .into();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("9000 bytes"), "{err}");
    }
}

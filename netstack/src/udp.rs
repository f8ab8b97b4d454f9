//! UDP sockets of the netstack.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::SendError;
use smoltcp::wire::IpEndpoint;

use crate::error::NetstackError;
use crate::stack::Shared;

/// IPv4 header without options, in bytes.
const IPV4_HEADER: usize = 20;
/// IPv6 header without extension headers, in bytes.
const IPV6_HEADER: usize = 40;
/// UDP header, in bytes.
const UDP_HEADER: usize = 8;

/// A UDP socket of the netstack, bound to one port on every address of the stack.
///
/// Made by [`Netstack::bind_udp`](crate::Netstack::bind_udp). Datagrams must fit one packet
/// of the tunnel (no IP fragmentation). Dropping it frees the port once the datagrams it
/// still holds are sent.
pub struct UdpSocket {
    shared: Arc<Shared>,
    handle: SocketHandle,
    port: u16,
}

impl UdpSocket {
    pub(crate) fn new(shared: Arc<Shared>, handle: SocketHandle, port: u16) -> Self {
        Self {
            shared,
            handle,
            port,
        }
    }

    /// The port this socket is bound to.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// Sends one datagram to `target`, waiting while the socket's send buffer is full.
    ///
    /// Fails with `InvalidInput` if the target is unspecified or has port 0, or if the
    /// datagram does not fit one packet of the tunnel ([`NetstackError::DatagramTooLarge`]);
    /// with `AddrNotAvailable` if the stack has no address of the target's family.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        if target.port() == 0 || target.ip().is_unspecified() {
            return Err(NetstackError::InvalidRemote { remote: target }.into());
        }
        let source =
            self.shared
                .config
                .source_for(target.ip())
                .ok_or(NetstackError::NoSourceAddress {
                    family: if target.is_ipv4() { "IPv4" } else { "IPv6" },
                    remote: target.ip(),
                })?;
        let header = if target.is_ipv4() {
            IPV4_HEADER
        } else {
            IPV6_HEADER
        } + UDP_HEADER;
        let max = self
            .shared
            .config
            .mtu
            .saturating_sub(header)
            .min(self.shared.config.udp_buffer);
        if buf.len() > max {
            return Err(NetstackError::DatagramTooLarge {
                len: buf.len(),
                max,
            }
            .into());
        }
        poll_fn(|cx| self.poll_send_to(cx, buf, target, source)).await
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
        source: std::net::IpAddr,
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        if st.stopped {
            return Poll::Ready(Err(NetstackError::Stopped.into()));
        }
        let Some(socket) = st.udp_socket(self.handle) else {
            return Poll::Ready(Err(NetstackError::Stopped.into()));
        };
        let mut meta = smoltcp::socket::udp::UdpMetadata::from(IpEndpoint::from(target));
        meta.local_address = Some(source.into());
        match socket.send_slice(buf, meta) {
            Ok(()) => {
                st.touch(self.handle);
                drop(st);
                self.shared.wake_owner();
                Poll::Ready(Ok(buf.len()))
            }
            Err(SendError::BufferFull) => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            Err(SendError::Unaddressable) => {
                Poll::Ready(Err(NetstackError::InvalidRemote { remote: target }.into()))
            }
        }
    }

    /// Waits for one datagram and copies it into `buf`; returns its length and sender.
    ///
    /// A datagram longer than `buf` is cut to fit (the rest is lost), as with a kernel socket.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut st = self.shared.lock();
        if st.stopped {
            return Poll::Ready(Err(NetstackError::Stopped.into()));
        }
        let Some(socket) = st.udp_socket(self.handle) else {
            return Poll::Ready(Err(NetstackError::Stopped.into()));
        };
        match socket.recv() {
            Ok((data, meta)) => {
                let n = data.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), data.get(..n)) {
                    dst.copy_from_slice(src);
                }
                Poll::Ready(Ok((n, SocketAddr::from(meta.endpoint))))
            }
            Err(_) => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if !st.stopped {
            st.release_udp(self.handle);
            drop(st);
            self.shared.wake_owner();
        }
    }
}

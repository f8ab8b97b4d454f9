//! TCP sockets of the netstack: [`TcpListener`] and [`TcpStream`].

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{RecvError, State};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::NetstackError;
use crate::stack::{Shared, to_smol};

/// How many keep-alive intervals of silence from the peer reset a connection that has
/// keep-alive on (see [`TcpStream::set_keepalive`]): the first probe goes after one
/// interval, further ones after each further interval, and the reset after this many.
pub const KEEPALIVE_PROBES: u32 = 3;

/// Accepts TCP connections made to the netstack, on one port or on every port.
///
/// Made by [`Netstack::listen_tcp`](crate::Netstack::listen_tcp) or
/// [`Netstack::listen_tcp_any_port`](crate::Netstack::listen_tcp_any_port). Dropping it
/// frees the port and resets the connections that were not accepted yet.
pub struct TcpListener {
    shared: Arc<Shared>,
    id: u64,
    port: Option<u16>,
}

impl TcpListener {
    pub(crate) fn new(shared: Arc<Shared>, id: u64, port: Option<u16>) -> Self {
        Self { shared, id, port }
    }

    /// Waits for the next connection whose handshake has completed.
    ///
    /// Fails only with [`NetstackError::Stopped`] once the netstack is gone. Cancel-safe: a
    /// connection is taken from the queue only when this returns it.
    pub async fn accept(&self) -> Result<TcpStream, NetstackError> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next accepted connection; the poll form of [`accept`](Self::accept).
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<TcpStream, NetstackError>> {
        let mut st = self.shared.lock();
        if st.stopped {
            return Poll::Ready(Err(NetstackError::Stopped));
        }
        if let Some((handle, local, remote)) = st.pop_ready(self.id) {
            drop(st);
            return Poll::Ready(Ok(TcpStream::new(
                self.shared.clone(),
                handle,
                local,
                remote,
            )));
        }
        if let Some(listener) = st.listeners.get_mut(&self.id) {
            listener.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The port this listener accepts on, or `None` for the any-port listener.
    pub fn local_port(&self) -> Option<u16> {
        self.port
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if !st.stopped {
            st.remove_listener(self.id);
            drop(st);
            self.shared.wake_owner();
        }
    }
}

/// A TCP connection of the netstack; it implements tokio's [`AsyncRead`] and [`AsyncWrite`].
///
/// `poll_shutdown` closes the sending half (FIN) while reading goes on (half-close).
/// `poll_flush` returns at once: written bytes are in the connection's send buffer, as with
/// a kernel socket. Dropping the stream closes it: a FIN after the bytes already written,
/// or a RST if received bytes were never read (as Linux does).
///
/// Read errors: `ConnectionReset` after the peer reset the connection; end-of-file after
/// its FIN. Write errors: `BrokenPipe` after `shutdown`, `ConnectionReset` after a reset.
/// Once the netstack is gone every call fails with `NotConnected`.
pub struct TcpStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
    local: SocketAddr,
    peer: SocketAddr,
}

impl TcpStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        handle: SocketHandle,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Self {
        Self {
            shared,
            handle,
            local,
            peer,
        }
    }

    /// The stack's end of the connection: its address and the port the peer connected to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer's end of the connection.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Turns Nagle's algorithm off (`true`) or on (`false`, the default), like
    /// `TCP_NODELAY`. With it on, a segment smaller than the MSS waits while earlier data is
    /// unacknowledged, which keeps bulk transfers in full segments; turn it off for
    /// request/response traffic that writes small pieces and waits for answers.
    pub fn set_nodelay(&self, nodelay: bool) {
        let mut st = self.shared.lock();
        if let Some(socket) = st.tcp_socket(self.handle) {
            socket.set_nagle_enabled(!nodelay);
            st.touch(self.handle);
        }
        drop(st);
        self.shared.wake_owner();
    }

    /// Turns TCP keep-alive on (`Some(interval)`) or off (`None`, the default), so that a
    /// peer that vanished (its node gone from the mesh, no RST ever coming) is noticed.
    ///
    /// With it on, the connection sends a keep-alive probe at once, then after each
    /// `interval` in which nothing arrived from the peer, and is reset when the peer has sent nothing for
    /// [`KEEPALIVE_PROBES`] intervals, whether the connection is idle or has data waiting
    /// to be acknowledged. Reads and writes then fail with `ConnectionReset`. A live peer
    /// answers every probe, so an idle connection to it stays open. Pick an interval well
    /// above the path's round trip (seconds, not milliseconds): a peer silent for that long
    /// while data is outstanding is taken for dead. An interval of zero counts as
    /// one millisecond. Turning it off lets a probe already scheduled go out.
    pub fn set_keepalive(&self, interval: Option<Duration>) {
        let mut st = self.shared.lock();
        if let Some(socket) = st.tcp_socket(self.handle) {
            let interval = interval.map(|i| to_smol(i.max(Duration::from_millis(1))));
            socket.set_keep_alive(interval);
            socket.set_timeout(interval.map(|i| i * KEEPALIVE_PROBES));
            st.touch(self.handle);
        }
        drop(st);
        self.shared.wake_owner();
    }

    /// The keep-alive interval set with [`set_keepalive`](Self::set_keepalive), if any.
    pub fn keepalive(&self) -> Option<Duration> {
        let mut st = self.shared.lock();
        st.tcp_socket(self.handle)
            .and_then(|socket| socket.keep_alive())
            .map(|i| Duration::from_micros(i.total_micros()))
    }

    /// Whether Nagle's algorithm is off for this connection (see [`set_nodelay`](Self::set_nodelay)).
    pub fn nodelay(&self) -> bool {
        let mut st = self.shared.lock();
        st.tcp_socket(self.handle)
            .is_some_and(|socket| !socket.nagle_enabled())
    }

    /// Writes into the connection's send buffer in place: `fill` gets the free space (one
    /// contiguous part of it) and returns how many bytes it wrote there, which are then
    /// sent. A relay that reads from a kernel socket passes a `try_read` into that socket,
    /// so the bytes go from the kernel straight into the send buffer with no copy between.
    ///
    /// Takes `&self`, so one task can write this way while another reads. Pending (the
    /// waker registered) while the send buffer is full; `fill` is then not called. An error
    /// of `fill` is returned as it is, with nothing written (`WouldBlock` included: poll
    /// the source's readiness, then call again). Fails like [`AsyncWrite::poll_write`] once
    /// the connection is reset or its sending half closed.
    pub fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        let socket = match st.live_tcp_socket(self.handle) {
            Ok(socket) => socket,
            Err(error) => return Poll::Ready(Err(error)),
        };
        if !socket.may_send() {
            return Poll::Ready(Err(send_closed(socket, self.peer)));
        }
        if !socket.can_send() {
            socket.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        let written = socket.send(|free| {
            let room = free.len();
            match fill(free) {
                Ok(n) => (n.min(room), Ok(n.min(room))),
                Err(error) => (0, Err(error)),
            }
        });
        match written {
            Ok(Ok(n)) => {
                if n > 0 {
                    st.touch(self.handle);
                    drop(st);
                    self.shared.wake_owner();
                }
                Poll::Ready(Ok(n))
            }
            Ok(Err(error)) => Poll::Ready(Err(error)),
            Err(_) => Poll::Ready(Err(send_closed(socket, self.peer))),
        }
    }

    /// Closes the sending half (a FIN after the bytes already written), like
    /// [`AsyncWrite::poll_shutdown`] but through `&self`.
    pub fn shutdown_write(&self) -> io::Result<()> {
        let mut st = self.shared.lock();
        if st.stopped {
            return Err(stopped());
        }
        if let Some(socket) = st.tcp_socket(self.handle) {
            socket.close();
            st.touch(self.handle);
        }
        drop(st);
        self.shared.wake_owner();
        Ok(())
    }

    /// Waits until an outbound connection is established or has failed.
    pub(crate) async fn wait_connected(&self, timeout: Duration) -> Result<(), NetstackError> {
        let started = Instant::now();
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if st.stopped {
                return Poll::Ready(Err(NetstackError::Stopped));
            }
            let Some(socket) = st.tcp_socket(self.handle) else {
                return Poll::Ready(Err(NetstackError::Stopped));
            };
            match socket.state() {
                State::SynSent | State::SynReceived => {
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                }
                State::Closed | State::Listen => {
                    Poll::Ready(Err(if started.elapsed() >= timeout {
                        NetstackError::ConnectTimedOut {
                            remote: self.peer,
                            timeout,
                        }
                    } else {
                        NetstackError::ConnectionRefused { remote: self.peer }
                    }))
                }
                _ => {
                    // Established: from now on an idle connection lives until closed.
                    socket.set_timeout(None);
                    Poll::Ready(Ok(()))
                }
            }
        })
        .await
    }
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

fn stopped() -> io::Error {
    NetstackError::Stopped.into()
}

/// Why a connection takes no more bytes: reset by the peer, or its sending half closed.
fn send_closed(socket: &smoltcp::socket::tcp::Socket<'_>, peer: SocketAddr) -> io::Error {
    if socket.state() == State::Closed {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("connection with {peer} was reset"),
        )
    } else {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the sending half of this TCP stream is closed",
        )
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_shared(cx, buf)
    }
}

impl TcpStream {
    /// [`AsyncRead::poll_read`] through `&self`, so one task can read while another writes
    /// with [`Self::poll_write_with`].
    pub fn poll_read_shared(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        self.poll_read_with(cx, |data| {
            let n = data.len().min(buf.remaining());
            if let Some(chunk) = data.get(..n) {
                buf.put_slice(chunk);
            }
            Ok(n)
        })
        .map_ok(drop)
    }

    /// Reads from the connection's receive buffer in place: `drain` gets the received bytes
    /// (one contiguous part of them; called again for the rest when the buffer wraps and it
    /// took all of the first) and returns how many it consumed. A relay that writes to a
    /// kernel socket passes a `try_write` into that socket, so the bytes go from the
    /// receive buffer straight into the kernel.
    ///
    /// Ready with the bytes consumed, or with 0 once the peer has finished sending and
    /// every byte was read (`drain` is then not called). Pending (the waker registered)
    /// while nothing was received. An error of `drain` before it consumed anything is
    /// returned as it is (`WouldBlock` included: poll the sink's readiness, then call
    /// again); after it consumed some, the count is returned and the error comes back at
    /// the next call. `drain` must not return `Ok(0)` for bytes it was given unless it
    /// wants to stop.
    pub fn poll_read_with(
        &self,
        cx: &mut Context<'_>,
        mut drain: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        let socket = match st.live_tcp_socket(self.handle) {
            Ok(socket) => socket,
            Err(error) => return Poll::Ready(Err(error)),
        };
        let mut total = 0;
        // Two rounds: the receive buffer is a ring, and the data may wrap around its end.
        let mut outcome = Ok(());
        for _ in 0..2 {
            let consumed = socket.recv(|data| {
                let offered = data.len();
                if offered == 0 {
                    return (0, Ok((0, true)));
                }
                match drain(data) {
                    Ok(n) => {
                        let n = n.min(offered);
                        (n, Ok((n, n == offered)))
                    }
                    Err(error) => (0, Err(error)),
                }
            });
            match consumed {
                Ok(Ok((0, _))) => break,
                Ok(Ok((n, took_all))) => {
                    total += n;
                    if !took_all {
                        break;
                    }
                }
                Ok(Err(error)) => {
                    if total == 0 {
                        return Poll::Ready(Err(error));
                    }
                    break;
                }
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            }
        }
        if total > 0 {
            // Wake the owner only when the read opened the window enough for smoltcp to
            // send a window update (smoltcp patch 10): a reader draining a bulk transfer
            // reads thousands of times a second, and a turn of the owner for each one is
            // work and a cross-thread wake-up on the receiving path for nothing.
            // (Only then does the read change when the socket wants egress: smoltcp's
            // `poll_at` asks the same rule, so a read that makes no update due needs no
            // note in the schedule either.)
            let update = socket.window_update_due();
            if update {
                st.touch(self.handle);
            }
            drop(st);
            if update {
                self.shared.wake_owner();
            }
            return Poll::Ready(Ok(total));
        }
        match outcome {
            Ok(()) => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
            Err(RecvError::Finished) => Poll::Ready(Ok(0)),
            Err(RecvError::InvalidState) => Poll::Ready(Err(if socket.state() == State::Closed {
                io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("connection with {} was reset", self.peer),
                )
            } else {
                io::Error::new(io::ErrorKind::NotConnected, "TCP stream is not connected")
            })),
        }
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_write_with(cx, |free| {
            let n = free.len().min(buf.len());
            if let (Some(to), Some(from)) = (free.get_mut(..n), buf.get(..n)) {
                to.copy_from_slice(from);
            }
            Ok(n)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if !st.stopped {
            st.release_stream(self.handle);
            drop(st);
            self.shared.wake_owner();
        }
    }
}

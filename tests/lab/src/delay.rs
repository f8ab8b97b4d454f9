//! A userspace delay forwarder: relays UDP datagrams or TCP streams to a target, holding
//! each direction back by a fixed delay.
//!
//! The kernel here has no `netem`, so `tc qdisc ... delay` is not available; tests that need
//! latency put one of these between a client and a server: the client talks to the
//! forwarder's listen address instead of the server's.
//!
//! Run it on a thread of the test process ([`DelayForwarder::start`], or inside a lab host
//! with [`crate::netlab::NatLab::delay_forwarder`]), or as the `postern-lab-delay` program
//! (`postern-lab-delay udp|tcp LISTEN TARGET DELAY_MS`) under `ip netns exec`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::LabError;

/// Which transport a [`DelayForwarder`] relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayProtocol {
    /// Datagrams: one upstream socket per client address.
    Udp,
    /// Streams: one upstream connection per accepted connection.
    Tcp,
}

/// A running delay forwarder; stops (and closes its sockets) when dropped.
///
/// Each direction is delayed by the configured amount, so a round trip through it takes
/// twice that much longer. Order is preserved; nothing is dropped unless more than 4096
/// datagrams are in flight per direction.
#[derive(Debug)]
pub struct DelayForwarder {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayForwarder {
    /// Starts a forwarder on its own thread in the test process's network namespace,
    /// listening on `listen` (port 0 picks one: see [`DelayForwarder::local_addr`]) and
    /// relaying to `target` with `delay` added in each direction.
    ///
    /// Fails if `listen` cannot be bound.
    pub fn start(
        protocol: DelayProtocol,
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
    ) -> Result<Self, LabError> {
        Self::start_in(None, protocol, listen, target, delay, None)
    }

    /// Like [`DelayForwarder::start`], but the thread first enters the network namespace
    /// mounted at `netns` (e.g. `/run/netns/NAME`), so it listens and connects from there.
    /// With `upstream_bind`, a UDP forwarder sends to `target` from that address (so only
    /// one client can use it: a second one's socket cannot bind and its datagrams are
    /// dropped); without it, from a fresh ephemeral port per client.
    pub(crate) fn start_in(
        netns: Option<PathBuf>,
        protocol: DelayProtocol,
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
        upstream_bind: Option<SocketAddr>,
    ) -> Result<Self, LabError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, LabError>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("postern-lab-delay".into())
            .spawn(move || {
                if let Some(Err(e)) = netns.as_deref().map(crate::netns::enter) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(LabError::io("building a tokio runtime", e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let bound = match Bound::bind(protocol, listen).await {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(bound.local_addr()));
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = bound.serve(target, delay, upstream_bind) => {}
                    }
                });
            })
            .map_err(|e| LabError::io("starting the delay forwarder thread", e))?;
        let local_addr = ready_rx
            .recv()
            .map_err(|_| LabError::Invalid("delay forwarder thread died on start".into()))??;
        Ok(Self {
            local_addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address clients should talk to instead of the target.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for DelayForwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a forwarder in the calling thread until an I/O error ends it: what the
/// `postern-lab-delay` program does. Prints nothing; fails if `listen` cannot be bound.
pub fn run_forwarder(
    protocol: DelayProtocol,
    listen: SocketAddr,
    target: SocketAddr,
    delay: Duration,
) -> Result<(), LabError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::io("building a tokio runtime", e))?;
    runtime.block_on(async move {
        let bound = Bound::bind(protocol, listen).await?;
        bound.serve(target, delay, None).await;
        Ok(())
    })
}

enum Bound {
    Udp(Arc<UdpSocket>),
    Tcp(TcpListener),
}

impl Bound {
    async fn bind(protocol: DelayProtocol, listen: SocketAddr) -> Result<Self, LabError> {
        let what = format!("delay forwarder: binding {protocol:?} {listen}");
        Ok(match protocol {
            DelayProtocol::Udp => Self::Udp(Arc::new(
                UdpSocket::bind(listen)
                    .await
                    .map_err(|e| LabError::io(what, e))?,
            )),
            DelayProtocol::Tcp => Self::Tcp(
                TcpListener::bind(listen)
                    .await
                    .map_err(|e| LabError::io(what, e))?,
            ),
        })
    }

    fn local_addr(&self) -> SocketAddr {
        let addr = match self {
            Self::Udp(s) => s.local_addr(),
            Self::Tcp(l) => l.local_addr(),
        };
        addr.unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    async fn serve(self, target: SocketAddr, delay: Duration, upstream_bind: Option<SocketAddr>) {
        match self {
            Self::Udp(socket) => serve_udp(socket, target, delay, upstream_bind).await,
            Self::Tcp(listener) => serve_tcp(listener, target, delay).await,
        }
    }
}

/// Datagrams queued for sending once their time has come.
type DelayLine = mpsc::Sender<(Instant, Vec<u8>)>;

/// A task that sends each queued datagram on `socket` (to `to`, or connected if `None`)
/// when it is due. One queue per direction keeps the order.
fn udp_delay_line(socket: Arc<UdpSocket>, to: Option<SocketAddr>) -> DelayLine {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(4096);
    tokio::spawn(async move {
        while let Some((due, datagram)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            // A closed or unreachable peer is ignored, as a lossy link would.
            let _ = match to {
                Some(addr) => socket.send_to(&datagram, addr).await,
                None => socket.send(&datagram).await,
            };
        }
    });
    tx
}

async fn serve_udp(
    listener: Arc<UdpSocket>,
    target: SocketAddr,
    delay: Duration,
    upstream_bind: Option<SocketAddr>,
) {
    let unspecified: SocketAddr = upstream_bind.unwrap_or(if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    });
    let mut upstream: HashMap<SocketAddr, DelayLine> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, client)) = listener.recv_from(&mut buf).await else {
            continue;
        };
        let datagram = buf.get(..len).unwrap_or_default().to_vec();
        if let std::collections::hash_map::Entry::Vacant(slot) = upstream.entry(client) {
            let Ok(socket) = UdpSocket::bind(unspecified).await else {
                continue;
            };
            if socket.connect(target).await.is_err() {
                continue;
            }
            let socket = Arc::new(socket);
            let to_target = udp_delay_line(socket.clone(), None);
            let to_client = udp_delay_line(listener.clone(), Some(client));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match socket.recv(&mut buf).await {
                        Ok(len) => {
                            let reply = buf.get(..len).unwrap_or_default().to_vec();
                            let _ = to_client.try_send((Instant::now() + delay, reply));
                        }
                        // ICMP port unreachable from the target surfaces here; back off a bit.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
            slot.insert(to_target);
        }
        if let Some(line) = upstream.get(&client) {
            let _ = line.try_send((Instant::now() + delay, datagram));
        }
    }
}

async fn serve_tcp(listener: TcpListener, target: SocketAddr, delay: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                tcp_direction(client_read, server_write, delay),
                tcp_direction(server_read, client_write, delay),
            );
        });
    }
}

/// Copies one direction of a TCP connection, holding each chunk back by `delay`; a `None`
/// in the queue is the reader's end of stream, passed on as a write shutdown.
async fn tcp_direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(1024);
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 16384];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send((Instant::now() + delay, None)).await;
                    return;
                }
                Ok(len) => {
                    let chunk = buf.get(..len).unwrap_or_default().to_vec();
                    if tx
                        .send((Instant::now() + delay, Some(chunk)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

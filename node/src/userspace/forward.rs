//! TCP and UDP port forwards from the host into the tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_netstack::{Netstack, UdpSocket as TunnelUdpSocket};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How long a UDP forward keeps a host client's tunnel socket without a reply from the
/// tunnel side.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

/// Copy buffer per direction of a forwarded TCP connection: large enough that one read or
/// write moves many segments.
pub(super) const COPY_BUFFER: usize = 256 << 10;

/// Largest UDP datagram read from either side.
const UDP_BUFFER: usize = 65_535;

/// Accepts host connections and carries each to `remote` in the tunnel, until `cancel`.
pub(super) async fn serve_tcp(
    listener: TcpListener,
    remote: SocketAddr,
    netstack: Netstack,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, from) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly, keep serving.
                tracing::warn!(error = %e, "accepting a forwarded TCP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let netstack = netstack.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let tunnel = tokio::select! {
                () = cancel.cancelled() => return,
                stream = netstack.connect_tcp(remote) => stream,
            };
            match tunnel {
                Ok(tunnel) => {
                    tracing::debug!(%from, %remote, "forwarded TCP connection open");
                    splice(client, tunnel, &cancel).await;
                }
                Err(e) => {
                    tracing::warn!(%from, %remote, error = %e, "cannot open the forwarded connection in the tunnel")
                }
            }
        });
    }
}

/// Copies both ways between `a` and `b` (half-closes carried across) until both ends are
/// done, an error occurs, or `cancel` fires.
pub(super) async fn splice<A, B>(mut a: A, mut b: B, cancel: &CancellationToken)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        () = cancel.cancelled() => {}
        copied = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER) => {
            match copied {
                Ok((up, down)) => tracing::debug!(up, down, "connection closed"),
                Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
            }
        }
    }
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<TunnelUdpSocket>>>>;

/// Relays datagrams between host clients on `socket` and `remote` in the tunnel.
pub(super) async fn serve_udp(
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
    netstack: Netstack,
    cancel: CancellationToken,
) {
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, client) = match received {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "UDP forward receive failed");
                continue;
            }
        };
        let existing = sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client)
            .cloned();
        let tunnel = match existing {
            Some(tunnel) => tunnel,
            None => match netstack.bind_udp(0) {
                Ok(tunnel) => {
                    let tunnel = Arc::new(tunnel);
                    sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(client, Arc::clone(&tunnel));
                    tokio::spawn(udp_replies(
                        Arc::clone(&tunnel),
                        Arc::clone(&socket),
                        client,
                        Arc::clone(&sessions),
                        cancel.clone(),
                    ));
                    tunnel
                }
                Err(e) => {
                    tracing::warn!(%client, error = %e, "no tunnel UDP socket for a forward client");
                    continue;
                }
            },
        };
        let datagram = buf.get(..len).unwrap_or(&[]);
        if let Err(e) = tunnel.send_to(datagram, remote).await {
            tracing::debug!(%client, %remote, error = %e, "UDP datagram not sent into the tunnel");
        }
    }
}

/// Sends the tunnel's replies for one host client back to it, until idle or cancelled.
async fn udp_replies(
    tunnel: Arc<TunnelUdpSocket>,
    host: Arc<UdpSocket>,
    client: SocketAddr,
    sessions: Sessions,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(UDP_IDLE) => break,
            received = tunnel.recv_from(&mut buf) => received,
        };
        match received {
            Ok((len, _from)) => {
                let datagram = buf.get(..len).unwrap_or(&[]);
                if let Err(e) = host.send_to(datagram, client).await {
                    tracing::debug!(%client, error = %e, "UDP reply not delivered to the host client");
                }
            }
            Err(e) => {
                tracing::debug!(%client, error = %e, "tunnel UDP socket failed");
                break;
            }
        }
    }
    sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&client);
}

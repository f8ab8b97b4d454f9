//! The funnel acceptor: the node's end of the mesh hop.
//!
//! It listens on [`FUNNEL_HOP_PORT`] of the node's netstack. For each stream it reads one
//! [`FunnelHello`] (bounded, with a timeout), then accepts only if the stream's source
//! address belongs to a peer the netmap marks as an ingress and the hello's port is a
//! funnelled service of this node. Otherwise it answers with a refusal (code and reason,
//! which the ingress writes to its audit log) and closes. After an accept, an HTTP service
//! is proxied with the hello's identity as headers (on a pooled stream, a version 2 hello,
//! with the identity each request carries in its own context header; see
//! [`postern_proto::funnel_hop`]), a TCP service is piped.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_netstack::{TcpListener, TcpStream};
use postern_proto::funnel_hop::{
    FUNNEL_HOP_PORT, FunnelHello, HOP_PREFIX_LEN, HopError, HopReply, RefusalCode, hello_frame_len,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::config::{ServeTable, ServeTarget};
use super::identity::{PeerDirectory, RequestOrigin};
use super::observer::ExchangeObserver;
use super::proxy::{HttpProxy, ORIGIN_CONNECT_TIMEOUT, OriginPool};
use super::splice_on;

/// How long the ingress has to send its hello after connecting.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the acceptor needs from the node.
#[derive(Clone)]
pub(super) struct FunnelAcceptor {
    /// The netstack's runtime, where TCP funnels' copies run ([`super::splice_on`]).
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) table: ServeTable,
    pub(super) directory: Arc<dyn PeerDirectory>,
    pub(super) observer: Arc<dyn ExchangeObserver>,
    pub(super) origins: OriginPool,
}

impl FunnelAcceptor {
    /// Accepts hop streams on `listener` until `cancel`.
    pub(super) async fn run(self, listener: TcpListener, cancel: CancellationToken) {
        tracing::info!(port = FUNNEL_HOP_PORT, "funnel acceptor listening");
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "the funnel acceptor stopped: the netstack is gone");
                    return;
                }
            };
            let acceptor = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = acceptor.handle(stream) => {}
                }
            });
        }
    }

    async fn handle(self, mut stream: TcpStream) {
        let from = stream.peer_addr();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut stream)).await {
            Err(_) => {
                tracing::info!(%from, "funnel hop: no hello in time; closing");
                return;
            }
            Ok(Err(ReadHello::Io(error))) => {
                tracing::debug!(%from, %error, "funnel hop: the stream failed before the hello");
                return;
            }
            Ok(Err(ReadHello::Hop(error))) => {
                let code = match error {
                    HopError::UnsupportedVersion { .. } => RefusalCode::UnsupportedVersion,
                    _ => RefusalCode::MalformedHello,
                };
                refuse(&mut stream, from.ip(), code, error.to_string()).await;
                return;
            }
            Ok(Ok(hello)) => hello,
        };
        let is_ingress = self
            .directory
            .peer_by_addr(from.ip())
            .is_some_and(|peer| peer.is_ingress);
        if !is_ingress {
            let reason = format!("{} is not an ingress in this node's netmap", from.ip());
            refuse(&mut stream, from.ip(), RefusalCode::NotIngress, reason).await;
            return;
        }
        let config = self.table.current();
        let Some(service) = config.funnelled(hello.target_port) else {
            let reason = format!("port {} is not funnelled by this node", hello.target_port);
            refuse(
                &mut stream,
                from.ip(),
                RefusalCode::PortNotFunnelled,
                reason,
            )
            .await;
            return;
        };
        tracing::info!(
            ingress = %from.ip(),
            hostname = %hello.hostname,
            client = %hello.client,
            port = hello.target_port,
            pooled = hello.per_request_context,
            "funnel stream accepted"
        );
        match &service.target {
            ServeTarget::Tcp { target } => {
                let target = *target;
                let local = tokio::time::timeout(
                    ORIGIN_CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect(target),
                )
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))
                .and_then(|r| r);
                match local {
                    Ok(local) => {
                        let _ = local.set_nodelay(true);
                        if stream.write_all(&HopReply::Accepted.encode()).await.is_ok() {
                            splice_on(&self.runtime, stream, local).await;
                        }
                    }
                    Err(error) => {
                        let reason = format!("the local target {target} is unreachable: {error}");
                        refuse(
                            &mut stream,
                            from.ip(),
                            RefusalCode::TargetUnreachable,
                            reason,
                        )
                        .await;
                    }
                }
            }
            ServeTarget::Http { .. } => {
                if stream
                    .write_all(&HopReply::Accepted.encode())
                    .await
                    .is_err()
                {
                    return;
                }
                let proxy = HttpProxy {
                    table: self.table.clone(),
                    port: hello.target_port,
                    origin: RequestOrigin::Funnel { hello },
                    observer: Arc::clone(&self.observer),
                    ingress: Some((from.ip(), Arc::clone(&self.directory))),
                    origins: self.origins.clone(),
                };
                proxy.serve(stream).await;
            }
        }
    }
}

enum ReadHello {
    Io(io::Error),
    Hop(HopError),
}

/// Reads exactly one hello frame: the prefix, then the length it announces.
async fn read_hello(stream: &mut TcpStream) -> Result<FunnelHello, ReadHello> {
    let mut frame = vec![0u8; HOP_PREFIX_LEN];
    stream.read_exact(&mut frame).await.map_err(ReadHello::Io)?;
    let total = hello_frame_len(&frame)
        .map_err(ReadHello::Hop)?
        .unwrap_or(HOP_PREFIX_LEN);
    frame.resize(total, 0);
    if let Some(body) = frame.get_mut(HOP_PREFIX_LEN..) {
        stream.read_exact(body).await.map_err(ReadHello::Io)?;
    }
    FunnelHello::decode(&frame).map_err(ReadHello::Hop)
}

async fn refuse(stream: &mut TcpStream, from: IpAddr, code: RefusalCode, reason: String) {
    tracing::info!(%from, %code, %reason, "funnel stream refused");
    let reply = HopReply::refused(code, reason).encode();
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
    // Lingering close: read (and drop) what the sender already sent, briefly, so the close
    // is a FIN after the reply rather than a reset that could destroy the reply unread.
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    let _ = tokio::time::timeout(LINGER, async {
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// How long a refused stream is drained before it is closed.
const LINGER: Duration = Duration::from_secs(2);
/// How much of a refused stream is drained at most.
const LINGER_BYTES: usize = 64 * 1024;

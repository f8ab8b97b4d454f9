//! The relay client's tokio shell: dial, upgrade, attach, then move frames both ways.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use postern_proto::frame::{FrameDecoder, FrameError};
use postern_proto::netmap::RegionId;
use postern_proto::relay::{
    AttachProofError, MAX_RELAY_FRAME_LEN, RELAY_PATH, RELAY_UPGRADE, RelayFrame, RelayFrameError,
    attach_proof,
};
use postern_proto::{NodePrivateKey, NodePublicKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Backoff;

/// How to reach a relay.
#[derive(Clone)]
pub struct RelayClientConfig {
    /// The relay's URL from the relay map: `https://relay.example.com/relay` (or `http://` on
    /// loopback and in labs). A missing path means `/relay`.
    pub url: String,
    /// The relay's region, used to name the path ([`PathId::Relay`](crate::engine::PathId)).
    pub region: RegionId,
    /// This node's key: the relay delivers packets addressed to its public half.
    pub node_key: NodePrivateKey,
    /// Trust roots for `https://` relays; `None` refuses `https://` URLs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Send a keepalive after this long without writing.
    pub keepalive_interval: Duration,
    /// Redial after this long without hearing from the relay (it sends keepalives).
    pub idle_timeout: Duration,
    /// Datagrams queued each way before new ones are dropped.
    pub queue: usize,
}

impl RelayClientConfig {
    /// Defaults: keepalives every 25 s, 75 s idle timeout, 1024-datagram queues, no TLS roots.
    pub fn new(url: impl Into<String>, region: RegionId, node_key: NodePrivateKey) -> Self {
        Self {
            url: url.into(),
            region,
            node_key,
            tls: None,
            keepalive_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(75),
            queue: 1024,
        }
    }
}

impl std::fmt::Debug for RelayClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClientConfig")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("node_key", &self.node_key.public_key())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Where the connection to the relay stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayState {
    /// Dialling or attaching (also after a loss, while waiting to redial).
    Connecting,
    /// Attached: datagrams flow.
    Attached,
    /// The relay refused the attach and said why (e.g. the node is not registered).
    Refused(String),
    /// The connection failed or was lost; a redial follows.
    Lost(String),
}

/// A datagram a peer sent through the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDatagram {
    /// The sending peer's node key.
    pub src: NodePublicKey,
    /// The (WireGuard) datagram.
    pub packet: Bytes,
}

/// Why a datagram was not queued for the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelaySendError {
    /// The queue to the relay is full (the relay is slow or not attached): dropped, as a
    /// congested link would.
    #[error("relay send queue is full; datagram dropped")]
    Full,
    /// The client was shut down.
    #[error("relay client is shut down")]
    Closed,
}

/// Why a relay connection failed; the client redials after any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayClientError {
    /// The URL is not one the client can dial.
    #[error("relay URL {url:?} is not usable: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Connecting, reading or writing failed.
    #[error("relay connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP exchange or the TLS handshake failed.
    #[error("relay HTTP/TLS exchange failed: {0}")]
    Http(String),
    /// The relay's TLS certificate does not chain to a trusted root (or names another host,
    /// or has expired).
    #[error(
        "the relay's TLS certificate is not trusted ({0}); if the relay uses a private CA, give its certificate with `postern up --relay-ca FILE` (config: relay_ca)"
    )]
    UntrustedCertificate(String),
    /// The server answered the upgrade with something other than 101.
    #[error("the relay refused the upgrade with HTTP {0}; is the URL a Postern relay?")]
    UpgradeRefused(u16),
    /// The relay said why it will not attach this node.
    #[error("the relay refused this node: {0}")]
    Refused(String),
    /// The relay broke the protocol (or is not a Postern relay).
    #[error("relay protocol error: {0}")]
    Protocol(String),
    /// The relay's challenge was a weak key.
    #[error(transparent)]
    Proof(#[from] AttachProofError),
    /// The framing broke.
    #[error("relay framing broken: {0}")]
    Frame(#[from] FrameError),
    /// A frame did not parse.
    #[error("relay frame invalid: {0}")]
    RelayFrame(#[from] RelayFrameError),
    /// Nothing arrived from the relay for the idle timeout.
    #[error("the relay was silent for {0:?}; reconnecting")]
    IdleTimeout(Duration),
    /// The relay closed the connection.
    #[error("the relay closed the connection")]
    Closed,
}

/// Queues datagrams for peers through the relay; cheap to clone.
#[derive(Debug, Clone)]
pub struct RelaySender {
    tx: mpsc::Sender<(NodePublicKey, Bytes)>,
}

impl RelaySender {
    /// Queues `packet` for the peer holding `dst`. Never waits: a full queue drops the
    /// datagram ([`RelaySendError::Full`]), which WireGuard treats as loss.
    pub fn try_send(&self, dst: NodePublicKey, packet: Bytes) -> Result<(), RelaySendError> {
        self.tx.try_send((dst, packet)).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => RelaySendError::Full,
            mpsc::error::TrySendError::Closed(_) => RelaySendError::Closed,
        })
    }
}

/// One node's connection to one relay, kept up by a background task; see the
/// [module docs](super).
#[derive(Debug)]
pub struct RelayClient {
    region: RegionId,
    sender: RelaySender,
    inbound: mpsc::Receiver<RelayDatagram>,
    state: watch::Receiver<RelayState>,
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl RelayClient {
    /// Checks the URL and starts the connection task (call inside a tokio runtime). The
    /// task dials at once and redials with [`Backoff`] until [`Self::shutdown`].
    pub fn spawn(config: RelayClientConfig) -> Result<Self, RelayClientError> {
        let target = Target::parse(&config.url, config.tls.is_some())?;
        let (out_tx, out_rx) = mpsc::channel(config.queue.max(1));
        let (in_tx, inbound) = mpsc::channel(config.queue.max(1));
        let (state_tx, state) = watch::channel(RelayState::Connecting);
        let token = CancellationToken::new();
        let region = config.region;
        let task = tokio::spawn(run(config, target, out_rx, in_tx, state_tx, token.clone()));
        Ok(Self {
            region,
            sender: RelaySender { tx: out_tx },
            inbound,
            state,
            token,
            task,
        })
    }

    /// The relay's region.
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// A handle to queue datagrams for peers.
    pub fn sender(&self) -> RelaySender {
        self.sender.clone()
    }

    /// The next datagram a peer sent through the relay; `None` once shut down. Cancel-safe.
    pub async fn recv(&mut self) -> Option<RelayDatagram> {
        self.inbound.recv().await
    }

    /// Polls for the next datagram (for [`super::RelaySet`], which waits on several).
    pub(super) fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RelayDatagram>> {
        self.inbound.poll_recv(cx)
    }

    /// The next datagram a peer sent through the relay, if one is waiting now.
    pub fn try_recv(&mut self) -> Option<RelayDatagram> {
        self.inbound.try_recv().ok()
    }

    /// Where the connection stands now.
    pub fn state(&self) -> RelayState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change (for status output and tests).
    pub fn watch_state(&self) -> watch::Receiver<RelayState> {
        self.state.clone()
    }

    /// Waits until attached, or returns the state that was current when `timeout` ran out.
    pub async fn wait_attached(&self, timeout: Duration) -> Result<(), RelayState> {
        let mut state = self.state.clone();
        let attached = tokio::time::timeout(
            timeout,
            state.wait_for(|s| matches!(s, RelayState::Attached)),
        )
        .await;
        match attached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(self.state()),
        }
    }

    /// Closes the connection and stops redialling.
    pub async fn shutdown(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

/// A parsed relay URL.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    path: String,
    tls: bool,
}

impl Target {
    fn parse(url: &str, have_tls: bool) -> Result<Self, RelayClientError> {
        let bad = |reason| RelayClientError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be https:// (or http:// for tests)")),
        };
        if tls && !have_tls {
            return Err(bad("https:// needs TLS trust roots in the client config"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = match uri.path() {
            "" | "/" => RELAY_PATH.to_owned(),
            path => path.to_owned(),
        };
        Ok(Self {
            host,
            port,
            path,
            tls,
        })
    }
}

async fn run(
    config: RelayClientConfig,
    target: Target,
    mut out_rx: mpsc::Receiver<(NodePublicKey, Bytes)>,
    in_tx: mpsc::Sender<RelayDatagram>,
    state_tx: watch::Sender<RelayState>,
    token: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        state_tx.send_replace(RelayState::Connecting);
        let session = connect_and_run(
            &config,
            &target,
            &mut out_rx,
            &in_tx,
            &state_tx,
            &mut backoff,
        );
        let result = tokio::select! {
            result = session => result,
            () = token.cancelled() => return,
        };
        let state = match result {
            Ok(()) => return, // every sender was dropped: nothing left to do
            Err(RelayClientError::Refused(problem)) => {
                tracing::warn!(url = %config.url, %problem, "relay refused this node");
                RelayState::Refused(problem)
            }
            Err(err @ RelayClientError::UntrustedCertificate(_)) => {
                tracing::warn!(url = %config.url, %err, "cannot attach to the relay; redialling");
                RelayState::Lost(err.to_string())
            }
            Err(err) => {
                tracing::info!(url = %config.url, %err, "relay connection lost; redialling");
                RelayState::Lost(err.to_string())
            }
        };
        state_tx.send_replace(state);
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = token.cancelled() => return,
        }
    }
}

async fn connect_and_run(
    config: &RelayClientConfig,
    target: &Target,
    out_rx: &mut mpsc::Receiver<(NodePublicKey, Bytes)>,
    in_tx: &mpsc::Sender<RelayDatagram>,
    state_tx: &watch::Sender<RelayState>,
    backoff: &mut Backoff,
) -> Result<(), RelayClientError> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    let upgraded = match (&config.tls, target.tls) {
        (Some(tls), true) => {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|err| RelayClientError::Http(err.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(tls_handshake_error)?;
            upgrade(stream, target).await?
        }
        _ => upgrade(tcp, target).await?,
    };
    let mut session = Session {
        io: TokioIo::new(upgraded),
        decoder: FrameDecoder::new(MAX_RELAY_FRAME_LEN),
        buf: vec![0u8; 64 * 1024],
    };
    session.attach(&config.node_key).await?;
    backoff.reset();
    state_tx.send_replace(RelayState::Attached);
    tracing::info!(url = %config.url, "attached to the relay");
    session.run(config, out_rx, in_tx).await
}

/// A failed TLS handshake: [`RelayClientError::UntrustedCertificate`] when rustls refused
/// the relay's certificate, else the I/O error.
fn tls_handshake_error(err: std::io::Error) -> RelayClientError {
    let refused = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .filter(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)))
        .map(ToString::to_string);
    match refused {
        Some(reason) => RelayClientError::UntrustedCertificate(reason),
        None => RelayClientError::Io(err),
    }
}

async fn upgrade<I>(io: I, target: &Target) -> Result<hyper::upgrade::Upgraded, RelayClientError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |err: hyper::Error| RelayClientError::Http(err.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http_err)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "relay HTTP connection ended");
        }
    });
    let host = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = http::Request::get(target.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, RELAY_UPGRADE)
        .body(Empty::<Bytes>::new())
        .map_err(|err| RelayClientError::Http(err.to_string()))?;
    let response = sender.send_request(request).await.map_err(http_err)?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(RelayClientError::UpgradeRefused(response.status().as_u16()));
    }
    hyper::upgrade::on(response).await.map_err(http_err)
}

struct Session<S> {
    io: S,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

/// How long the relay has to answer each step of the attach.
const ATTACH_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most queued datagrams written per write call.
const WRITE_BATCH: usize = 64;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn attach(&mut self, node_key: &NodePrivateKey) -> Result<(), RelayClientError> {
        let challenge = match self.next_frame_within(ATTACH_STEP_TIMEOUT).await? {
            RelayFrame::ServerChallenge { challenge } => challenge,
            RelayFrame::Health { problem } => return Err(RelayClientError::Refused(problem)),
            other => {
                return Err(RelayClientError::Protocol(format!(
                    "expected a challenge, got {other:?}"
                )));
            }
        };
        let proof = attach_proof(node_key, &challenge)?;
        self.write(&[RelayFrame::ClientInfo {
            node_key: node_key.public_key(),
            proof: proof.to_vec(),
        }])
        .await?;
        match self.next_frame_within(ATTACH_STEP_TIMEOUT).await? {
            RelayFrame::Attached => Ok(()),
            RelayFrame::Health { problem } => Err(RelayClientError::Refused(problem)),
            other => Err(RelayClientError::Protocol(format!(
                "expected attached, got {other:?}"
            ))),
        }
    }

    async fn run(
        &mut self,
        config: &RelayClientConfig,
        out_rx: &mut mpsc::Receiver<(NodePublicKey, Bytes)>,
        in_tx: &mpsc::Sender<RelayDatagram>,
    ) -> Result<(), RelayClientError> {
        let mut last_rx = Instant::now();
        let mut last_tx = Instant::now();
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            tokio::select! {
                n = self.io.read(&mut self.buf) => {
                    let n = n?;
                    if n == 0 {
                        return Err(RelayClientError::Closed);
                    }
                    last_rx = Instant::now();
                    self.decoder.push(self.buf.get(..n).unwrap_or_default());
                    while let Some(frame) = self.decoder.next_frame()? {
                        let frame = match RelayFrame::parse(&frame) {
                            Ok(frame) => frame,
                            Err(RelayFrameError::UnknownType(_)) => continue,
                            Err(err) => return Err(err.into()),
                        };
                        deliver(frame, in_tx);
                    }
                }
                first = out_rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if first == 0 {
                        return Ok(());
                    }
                    let frames: Vec<RelayFrame> = batch
                        .drain(..)
                        .map(|(dst, packet)| RelayFrame::SendPacket { dst, packet: packet.to_vec() })
                        .collect();
                    self.write(&frames).await?;
                    last_tx = Instant::now();
                }
                () = tokio::time::sleep_until(last_tx + config.keepalive_interval) => {
                    self.write(&[RelayFrame::KeepAlive]).await?;
                    last_tx = Instant::now();
                }
                () = tokio::time::sleep_until(last_rx + config.idle_timeout) => {
                    return Err(RelayClientError::IdleTimeout(config.idle_timeout));
                }
            }
        }
    }

    async fn next_frame_within(&mut self, limit: Duration) -> Result<RelayFrame, RelayClientError> {
        tokio::time::timeout(limit, self.next_frame())
            .await
            .map_err(|_| RelayClientError::IdleTimeout(limit))?
    }

    async fn next_frame(&mut self) -> Result<RelayFrame, RelayClientError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(RelayFrame::parse(&frame)?);
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                return Err(RelayClientError::Closed);
            }
            self.decoder.push(self.buf.get(..n).unwrap_or_default());
        }
    }

    async fn write(&mut self, frames: &[RelayFrame]) -> Result<(), RelayClientError> {
        let mut out = Vec::new();
        for frame in frames {
            frame.encode(&mut out)?;
        }
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(())
    }
}

/// Hands a frame from the relay to the node.
fn deliver(frame: RelayFrame, in_tx: &mpsc::Sender<RelayDatagram>) {
    match frame {
        RelayFrame::RecvPacket { src, packet } => {
            let datagram = RelayDatagram {
                src,
                packet: Bytes::from(packet),
            };
            if in_tx.try_send(datagram).is_err() {
                tracing::trace!("relay inbound queue full; datagram dropped");
            }
        }
        RelayFrame::PeerGone { peer, reason } => {
            tracing::debug!(peer = %peer.short(), ?reason, "relay says the peer is gone");
        }
        RelayFrame::Health { problem } if !problem.is_empty() => {
            tracing::warn!(%problem, "relay reports a problem");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_dialling() {
        let t = Target::parse("http://127.0.0.1:8080", false).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str(), t.tls),
            ("127.0.0.1", 8080, "/relay", false)
        );
        let t = Target::parse("https://relay.example.com/r", true).unwrap();
        assert_eq!((t.port, t.path.as_str(), t.tls), (443, "/r", true));
        let t = Target::parse("http://[::1]:9/relay", false).unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(
            Target::parse("https://relay.example.com/relay", false)
                .unwrap_err()
                .to_string(),
            "relay URL \"https://relay.example.com/relay\" is not usable: https:// needs TLS trust roots in the client config"
        );
        assert_eq!(
            Target::parse("ftp://x/relay", false)
                .unwrap_err()
                .to_string(),
            "relay URL \"ftp://x/relay\" is not usable: the scheme must be https:// (or http:// for tests)"
        );
    }
}

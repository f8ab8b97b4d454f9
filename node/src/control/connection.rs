//! The control channel over a byte stream: Noise records carrying framed control messages.
//!
//! [`ControlConnection`] is the thin async shell around [`NoiseChannel`], the frame decoder
//! and the [`ControlCodec`]; both the node and the coord use it. [`dial`] opens one from the
//! node: a TCP connection, an HTTP/1.1 `POST /control` upgrade to [`CONTROL_UPGRADE`], then
//! the Noise IK handshake. [`fetch_coord_key`] reads the coord's public key from `GET /key`
//! for pinning on first contact.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use postern_proto::control::{ControlCodec, ControlMessage, MessageError};
use postern_proto::frame::{FrameDecoder, FrameError};
use postern_proto::keys::KeyParseError;
use postern_proto::{MachinePrivateKey, MachinePublicKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::noise::{ChannelError, NoiseChannel};

/// The `Upgrade` protocol token of the control channel.
pub const CONTROL_UPGRADE: &str = "postern-control/1";

/// The HTTP path the control channel upgrades on.
pub const CONTROL_PATH: &str = "/control";

/// The HTTP path that returns the coord's public key as text.
pub const KEY_PATH: &str = "/key";

/// Why the control connection failed. Every error ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The TCP connection or a read or write failed.
    #[error("control connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP request or upgrade failed.
    #[error("HTTP exchange with the coord failed: {0}")]
    Http(String),
    /// The coord answered the upgrade with something other than 101.
    #[error("the coord refused the control upgrade with HTTP {0}; is this a Postern coord?")]
    UpgradeRefused(u16),
    /// The coord's `/key` answer is not a key.
    #[error("the coord's /key answer is not a machine key: {0}")]
    BadCoordKey(KeyParseError),
    /// The Noise layer failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The framing is broken.
    #[error("control stream framing broken: {0}")]
    Frame(#[from] FrameError),
    /// A message could not be encoded or decoded.
    #[error("control message invalid: {0}")]
    Message(#[from] MessageError),
    /// The other side closed the connection in the middle of the handshake.
    #[error("the other side closed the control connection during the handshake")]
    ClosedDuringHandshake,
}

/// An established, authenticated control connection over `S`.
#[derive(Debug)]
pub struct ControlConnection<S> {
    stream: S,
    channel: NoiseChannel,
    decoder: FrameDecoder,
    codec: ControlCodec,
    read_buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ControlConnection<S> {
    /// Runs the node's side of the handshake on `stream`, authenticating with
    /// `machine_key` and accepting only `coord_key`.
    pub async fn initiate(
        stream: S,
        machine_key: &MachinePrivateKey,
        coord_key: &MachinePublicKey,
    ) -> Result<Self, ConnectionError> {
        let channel = NoiseChannel::initiator(machine_key, coord_key)?;
        Self::handshake(stream, channel).await
    }

    /// Runs the coord's side of the handshake on `stream` with its static key. The node's
    /// machine key is then [`Self::remote_machine_key`].
    pub async fn accept(stream: S, coord_key: &MachinePrivateKey) -> Result<Self, ConnectionError> {
        let channel = NoiseChannel::responder(coord_key)?;
        Self::handshake(stream, channel).await
    }

    /// The other side's authenticated static key (on the coord: the node's machine key).
    pub fn remote_machine_key(&self) -> Option<MachinePublicKey> {
        self.channel.remote_static()
    }

    /// Encrypts and writes one message.
    pub async fn send(&mut self, message: &ControlMessage) -> Result<(), ConnectionError> {
        let bytes = self.codec.encode_to_bytes(message)?;
        self.channel.send(&bytes)?;
        self.flush().await
    }

    /// Reads the next message; `Ok(None)` when the other side closed the connection cleanly.
    /// Cancel-safe: if the future is dropped, no received bytes are lost.
    pub async fn recv(&mut self) -> Result<Option<ControlMessage>, ConnectionError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(self.codec.decode(&frame)?));
            }
            let n = self.stream.read(&mut self.read_buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.channel
                .handle_input(self.read_buf.get(..n).unwrap_or_default())?;
            self.flush().await?;
            let plain = self.channel.take_plaintext();
            self.decoder.push(&plain);
        }
    }

    async fn handshake(stream: S, channel: NoiseChannel) -> Result<Self, ConnectionError> {
        let codec = ControlCodec::default();
        let mut conn = Self {
            stream,
            channel,
            decoder: FrameDecoder::new(codec.max_frame_len),
            codec,
            read_buf: vec![0u8; 64 * 1024],
        };
        conn.flush().await?;
        while !conn.channel.is_established() {
            let n = conn.stream.read(&mut conn.read_buf).await?;
            if n == 0 {
                return Err(ConnectionError::ClosedDuringHandshake);
            }
            conn.channel
                .handle_input(conn.read_buf.get(..n).unwrap_or_default())?;
            conn.flush().await?;
        }
        // Bytes after the handshake record in the same read are already decrypted.
        let plain = conn.channel.take_plaintext();
        conn.decoder.push(&plain);
        Ok(conn)
    }

    async fn flush(&mut self) -> Result<(), ConnectionError> {
        if let Some(bytes) = self.channel.poll_transmit() {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await?;
        }
        Ok(())
    }
}

/// The stream type of a dialled control connection.
pub type DialledStream = TokioIo<hyper::upgrade::Upgraded>;

/// Dials the coord at `addr` (`host:port`), upgrades to the control channel and runs the
/// Noise handshake. Fails if the coord's key is not `coord_key`.
pub async fn dial(
    addr: &str,
    machine_key: &MachinePrivateKey,
    coord_key: &MachinePublicKey,
) -> Result<ControlConnection<DialledStream>, ConnectionError> {
    let request = http::Request::post(CONTROL_PATH)
        .header(http::header::HOST, addr)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, CONTROL_UPGRADE)
        .body(Empty::<Bytes>::new())
        .map_err(|err| ConnectionError::Http(err.to_string()))?;
    let response = http_exchange(addr, request).await?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(ConnectionError::UpgradeRefused(response.status().as_u16()));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|err| ConnectionError::Http(err.to_string()))?;
    ControlConnection::initiate(TokioIo::new(upgraded), machine_key, coord_key).await
}

/// Reads the coord's public key from `GET /key` at `addr`. Use it only on first contact
/// (trust on first use) and pin the answer; later connections must use the pinned key.
pub async fn fetch_coord_key(addr: &str) -> Result<MachinePublicKey, ConnectionError> {
    let request = http::Request::get(KEY_PATH)
        .header(http::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|err| ConnectionError::Http(err.to_string()))?;
    let response = http_exchange(addr, request).await?;
    if !response.status().is_success() {
        return Err(ConnectionError::UpgradeRefused(response.status().as_u16()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| ConnectionError::Http(err.to_string()))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    text.trim().parse().map_err(ConnectionError::BadCoordKey)
}

async fn http_exchange(
    addr: &str,
    request: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, ConnectionError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|err| ConnectionError::Http(err.to_string()))?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "control HTTP connection ended");
        }
    });
    sender
        .send_request(request)
        .await
        .map_err(|err| ConnectionError::Http(err.to_string()))
}

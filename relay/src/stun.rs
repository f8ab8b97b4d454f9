//! The relay's STUN service: answers binding requests on UDP with the sender's address.
//!
//! [`answer`] is the whole logic (pure); [`StunServer`] is its tokio shell on one UDP
//! socket. Anything that is not a binding request is ignored, so the port is useless for
//! amplification: a response is at most 44 bytes for a 20-byte request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use postern_proto::stun::{self, StunMessage};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The response to send back to `from` for `datagram`, if it is a binding request.
pub fn answer(datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    match stun::parse(datagram) {
        Ok(StunMessage::BindingRequest { transaction }) => {
            Some(stun::binding_response(transaction, from))
        }
        _ => None,
    }
}

/// A running STUN responder; stop it with [`StunServer::shutdown`].
#[derive(Debug)]
pub struct StunServer {
    /// The address it answers on.
    pub local_addr: SocketAddr,
    answered: Arc<AtomicU64>,
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl StunServer {
    /// Answers binding requests on `socket` until shut down. Call inside a tokio runtime.
    pub fn spawn(socket: UdpSocket) -> std::io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let answered = Arc::new(AtomicU64::new(0));
        let token = CancellationToken::new();
        let task = tokio::spawn(run(socket, answered.clone(), token.clone()));
        tracing::info!(%local_addr, "STUN listening");
        Ok(Self {
            local_addr,
            answered,
            token,
            task,
        })
    }

    /// Binding requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops answering and waits for the socket to close.
    pub async fn shutdown(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

async fn run(socket: UdpSocket, answered: Arc<AtomicU64>, token: CancellationToken) {
    let mut buf = vec![0u8; 2048];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            () = token.cancelled() => return,
        };
        let (n, from) = match received {
            Ok(received) => received,
            Err(err) => {
                // ICMP errors from earlier sends surface here on Linux; keep serving.
                tracing::debug!(%err, "STUN receive failed");
                continue;
            }
        };
        if let Some(reply) = answer(buf.get(..n).unwrap_or_default(), from) {
            match socket.send_to(&reply, from).await {
                Ok(_) => {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => tracing::debug!(%from, %err, "STUN reply failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::stun::TransactionId;

    #[test]
    fn only_binding_requests_are_answered() {
        let from: SocketAddr = "198.18.0.101:4242".parse().unwrap();
        let tx = TransactionId([9; 12]);
        let reply = answer(&stun::binding_request(tx), from).unwrap();
        assert_eq!(
            stun::parse(&reply).unwrap(),
            StunMessage::BindingResponse {
                transaction: tx,
                mapped: from
            }
        );
        assert_eq!(answer(&reply, from), None);
        assert_eq!(answer(b"garbage", from), None);
    }
}

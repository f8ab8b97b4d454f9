//! What the netstack's integration tests share: deterministic data, sending it all and
//! closing, draining a stream into its length and SHA-256, and waiting for a stack's
//! counters to settle.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use postern_netstack::{Netstack, NetstackStats, TcpStream};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `data` from `from` to a listener on `to` at `to_address`, closes, and asserts
/// that exactly those bytes arrived (length and SHA-256). Fails after `limit` (a hang).
pub async fn transfer_checked(
    from: &Netstack,
    to: &Netstack,
    to_address: SocketAddr,
    data: Vec<u8>,
    limit: Duration,
) {
    let listener = to.listen_tcp(to_address.port()).unwrap();
    let len = data.len();
    let want = Sha256::digest(&data).to_vec();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let got = drain(&mut stream).await;
        stream.shutdown().await.unwrap();
        got
    });
    let run = async {
        let client = from.connect_tcp(to_address).await.unwrap();
        send_all_and_close(client, data).await;
        server.await.unwrap()
    };
    let (got_len, digest) = tokio::time::timeout(limit, run)
        .await
        .expect("the transfer hung");
    assert_eq!(got_len, len);
    assert_eq!(
        digest, want,
        "the bytes that arrived differ from those sent"
    );
}

/// Deterministic test data: `len` bytes of an xorshift stream seeded by `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes `data` in 64 KiB chunks, shuts the write side, and waits for the peer's close.
pub async fn send_all_and_close(mut stream: TcpStream, data: Vec<u8>) {
    for chunk in data.chunks(64 * 1024) {
        stream.write_all(chunk).await.unwrap();
    }
    stream.shutdown().await.unwrap();
    // Keep the stream until the peer has closed too, so the drop sends no RST.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
}

/// Reads to EOF, returning the length and SHA-256 of what came.
pub async fn drain(stream: &mut TcpStream) -> (usize, Vec<u8>) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    (total, hasher.finalize().to_vec())
}

/// Waits until a stack's counters stop moving (its last packets handed over and counted).
pub async fn settled(stack: &Netstack) -> NetstackStats {
    let mut last = stack.stats();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = stack.stats();
        if now == last {
            return now;
        }
        last = now;
    }
}

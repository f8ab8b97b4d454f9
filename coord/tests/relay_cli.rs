//! `postern-coord relay` through the real binary: nodes on the allow list attach and
//! exchange packets, STUN answers with the sender's address, and plain HTTP on a public
//! address is refused with advice.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use postern_node::relay::stun::query_public_endpoint;
use postern_node::relay::{RelayClient, RelayClientConfig};
use postern_proto::NodePrivateKey;
use postern_proto::netmap::RegionId;

const BIN: &str = env!("CARGO_BIN_EXE_postern-coord");

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Kills the relay when the test ends, also on panic.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_relay_forwards_between_allowed_nodes_and_answers_stun() {
    let dir = tempfile::tempdir().unwrap();
    let rng = &mut rand::rngs::OsRng;
    let (ka, kb) = (NodePrivateKey::generate(rng), NodePrivateKey::generate(rng));
    let allow = dir.path().join("nodes.txt");
    std::fs::write(
        &allow,
        format!("# allowed\n{}\n{}\n", ka.public_key(), kb.public_key()),
    )
    .unwrap();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let stun: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _relay = Relay(
        Command::new(BIN)
            .args([
                "relay",
                "--listen",
                &listen.to_string(),
                "--stun",
                &stun.to_string(),
            ])
            .arg("--allow-file")
            .arg(&allow)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}/relay");
    let connect = |key: &NodePrivateKey| {
        RelayClient::spawn(RelayClientConfig::new(
            url.clone(),
            RegionId(1),
            key.clone(),
        ))
        .unwrap()
    };
    let a = connect(&ka);
    let mut b = connect(&kb);
    a.wait_attached(Duration::from_secs(20)).await.unwrap();
    b.wait_attached(Duration::from_secs(20)).await.unwrap();
    a.sender()
        .try_send(kb.public_key(), Bytes::from_static(b"hello"))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.src, got.packet),
        (ka.public_key(), Bytes::from_static(b"hello"))
    );

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mapped = query_public_endpoint(&socket, stun).await.unwrap();
    assert_eq!(mapped, socket.local_addr().unwrap());
}

#[test]
fn plain_http_on_a_public_address_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("nodes.txt");
    std::fs::write(&allow, "").unwrap();
    let out = Command::new(BIN)
        .args(["relay", "--listen", "0.0.0.0:0"])
        .arg("--allow-file")
        .arg(&allow)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "refusing to serve the relay without TLS on 0.0.0.0:0: pass --tls-cert and --tls-key, or --plain-http if a TLS terminator fronts it"
        ),
        "{stderr}"
    );
}

#[test]
fn a_bad_allow_file_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("nodes.txt");
    std::fs::write(&allow, "nodekey:12\n").unwrap();
    let out = Command::new(BIN)
        .args(["relay", "--listen", "127.0.0.1:0"])
        .arg("--allow-file")
        .arg(&allow)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "allow list line 1: nodekey key has 2 hex digits after the prefix, expected 64"
        ),
        "{stderr}"
    );
}

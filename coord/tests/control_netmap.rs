//! End to end: the coord's HTTP server on loopback with SQLite in a temp dir, node control
//! clients registering with auth keys and following their netmap streams, a join seen by
//! everyone, and a coord restart the clients ride through.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::Duration;

use postern_coord::control::{AuthKeyOptions, ControlConfig, Coord, create_auth_key};
use postern_coord::server::{ServerHandle, serve};
use postern_node::control::{
    ClientConfig, ClientError, ControlClient, SessionConfig, SessionError,
};
use postern_proto::control::AuthKeySecret;
use postern_proto::netmap::Netmap;
use postern_proto::{DiscoPrivateKey, MachinePrivateKey, NodePrivateKey, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

async fn start(dir: &Path, addr: &str) -> ServerHandle {
    let mut config = ControlConfig::new(dir, "example.test");
    config.keepalive_interval = Duration::from_millis(500);
    let coord = Coord::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    serve(coord, listener).unwrap()
}

async fn auth_key(server_dir: &Path, options: AuthKeyOptions) -> AuthKeySecret {
    // Keys are made through the library against the same store the server uses.
    let store = postern_coord::store::Store::open_sqlite(server_dir)
        .await
        .unwrap();
    let created = create_auth_key(&store, &options, now()).await.unwrap();
    store.close().await;
    created.secret
}

fn now() -> UnixTime {
    UnixTime::from_system_time(std::time::SystemTime::now())
}

fn client(addr: &str, key: Option<AuthKeySecret>, hostname: &str) -> ControlClient {
    let rng = &mut rand::rngs::OsRng;
    let session = SessionConfig {
        node_key: NodePrivateKey::generate(rng).public_key(),
        disco_key: DiscoPrivateKey::generate(rng).public_key(),
        hostname: hostname.into(),
        auth_key: key,
        requested_tags: Vec::new(),
        ephemeral: false,
        endpoints: vec!["192.0.2.10:41641".parse().unwrap()],
        home_relay: None,
    };
    let mut config = ClientConfig::new(addr, MachinePrivateKey::generate(rng), session);
    config.silence_timeout = Duration::from_secs(3);
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(400);
    ControlClient::spawn(config)
}

async fn wait_for(
    rx: &mut watch::Receiver<Option<Netmap>>,
    what: &str,
    pred: impl Fn(&Netmap) -> bool,
) -> Netmap {
    let result = tokio::time::timeout(WAIT, rx.wait_for(|map| map.as_ref().is_some_and(&pred)))
        .await
        .map(|found| found.unwrap().clone());
    match result {
        Ok(found) => found.unwrap(),
        Err(_) => panic!(
            "timed out waiting for {what}; last netmap: {:?}",
            rx.borrow()
        ),
    }
}

fn peer_names(map: &Netmap) -> Vec<String> {
    let mut names: Vec<_> = map.peers.iter().map(|p| p.name.clone()).collect();
    names.sort();
    names
}

async fn http_get(addr: &str, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_see_each_other_then_a_fourth_then_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "127.0.0.1:0").await;
    let addr = server.local_addr.to_string();
    let key = auth_key(
        dir.path(),
        AuthKeyOptions {
            reusable: true,
            ..AuthKeyOptions::default()
        },
    )
    .await;

    let clients: Vec<_> = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|host| client(&addr, Some(key.clone()), host))
        .collect();
    let mut rxs: Vec<_> = clients.iter().map(ControlClient::netmap).collect();
    for (rx, me) in rxs.iter_mut().zip(["alpha", "bravo", "charlie"]) {
        let map = wait_for(rx, "two peers", |m| m.peers.len() == 2).await;
        assert_eq!(map.self_node.name, me);
        assert!(!peer_names(&map).iter().any(|n| n.starts_with(me)));
        assert!(
            map.dns
                .names
                .iter()
                .any(|r| r.name == format!("{me}.example.test"))
        );
        assert!(!map.packet_filter.is_empty());
    }

    let delta = client(&addr, Some(key.clone()), "delta");
    let mut delta_rx = delta.netmap();
    for rx in &mut rxs {
        let map = wait_for(rx, "the fourth node", |m| {
            m.peers
                .iter()
                .any(|p| p.name == "delta.example.test" && p.online)
        })
        .await;
        assert_eq!(map.peers.len(), 3);
    }
    let all_online = |m: &Netmap| {
        m.peers.len() == 3 && m.peers.iter().all(|p| p.online && !p.endpoints.is_empty())
    };
    let mut before = Vec::new();
    for rx in rxs.iter_mut().chain(std::iter::once(&mut delta_rx)) {
        before.push(wait_for(rx, "every peer online", all_online).await);
    }

    let metrics = http_get(&addr, "/metrics").await;
    assert!(
        metrics.contains("postern_coord_registrations_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("postern_coord_connected_nodes 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("postern_coord_netmap_frames_sent_total"),
        "{metrics}"
    );
    assert!(http_get(&addr, "/healthz").await.ends_with("ok\n"));

    // Restart the coord on the same address and state directory.
    server.shutdown().await;
    for rx in rxs.iter_mut().chain(std::iter::once(&mut delta_rx)) {
        rx.mark_unchanged();
    }
    let server = start(dir.path(), &addr).await;
    for (rx, old) in rxs
        .iter_mut()
        .chain(std::iter::once(&mut delta_rx))
        .zip(&before)
    {
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .unwrap()
            .unwrap();
        let map = wait_for(rx, "every peer online after the restart", all_online).await;
        assert_eq!(&map, old, "the netmap after the restart differs");
    }
    drop(clients);
    delta.shutdown();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_rejected_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "127.0.0.1:0").await;
    let addr = server.local_addr.to_string();

    let reason = |result: Result<(), ClientError>| match result {
        Err(ClientError::Session(SessionError::Rejected(reason))) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    };

    let unknown = client(&addr, Some(AuthKeySecret::new("pstn-auth-nope")), "a");
    assert!(reason(unknown.join().await).contains("not recognised"));

    let once = auth_key(dir.path(), AuthKeyOptions::default()).await;
    let first = client(&addr, Some(once.clone()), "first");
    wait_for(&mut first.netmap(), "a netmap", |_| true).await;
    let second = client(&addr, Some(once), "second");
    assert!(reason(second.join().await).contains("already used"));

    let expired = auth_key(
        dir.path(),
        AuthKeyOptions {
            expiry: Some(Duration::ZERO),
            ..AuthKeyOptions::default()
        },
    )
    .await;
    let late = client(&addr, Some(expired), "late");
    assert!(reason(late.join().await).contains("expired"));

    let interactive = client(&addr, None, "browser");
    assert!(reason(interactive.join().await).contains("interactive login not available yet"));

    first.shutdown();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pinning_the_wrong_coord_key_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "127.0.0.1:0").await;
    let addr = server.local_addr.to_string();
    let rng = &mut rand::rngs::OsRng;
    let pinned = postern_node::control::fetch_coord_key(&addr).await.unwrap();
    let machine = MachinePrivateKey::generate(rng);
    assert!(
        postern_node::control::dial(&addr, &machine, &pinned)
            .await
            .is_ok()
    );
    let wrong = MachinePrivateKey::generate(rng).public_key();
    let err = postern_node::control::dial(&addr, &machine, &wrong)
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    // The coord counts the failure when its side of the handshake ends, which may be just
    // after the node has given up: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = http_get(&addr, "/metrics").await;
        if metrics.contains("postern_coord_control_handshake_failures_total 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

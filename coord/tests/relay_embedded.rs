//! The relay embedded in the coord: registered nodes learn the relay map from their netmap,
//! attach with their node keys and exchange packets; a key the registry does not know is
//! refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postern_coord::control::{AuthKeyOptions, ControlConfig, Coord, create_auth_key};
use postern_coord::relay::{RegistryAuthorizer, single_relay_map};
use postern_coord::server::serve_with;
use postern_node::control::{ClientConfig, ControlClient, SessionConfig};
use postern_node::relay::{RelayClient, RelayClientConfig, RelayState};
use postern_proto::netmap::{Netmap, RegionId};
use postern_proto::{DiscoPrivateKey, MachinePrivateKey, NodePrivateKey, UnixTime};
use postern_relay::{RelayConfig, RelayServer};

fn client(
    addr: &str,
    key: &postern_proto::control::AuthKeySecret,
    node_key: &NodePrivateKey,
    name: &str,
) -> ControlClient {
    let rng = &mut rand::rngs::OsRng;
    let session = SessionConfig {
        node_key: node_key.public_key(),
        disco_key: DiscoPrivateKey::generate(rng).public_key(),
        hostname: name.into(),
        auth_key: Some(key.clone()),
        requested_tags: Vec::new(),
        ephemeral: false,
        endpoints: Vec::new(),
        home_relay: Some(RegionId(1)),
    };
    ControlClient::spawn(ClientConfig::new(
        addr,
        MachinePrivateKey::generate(rng),
        session,
    ))
}

async fn first_netmap(client: &ControlClient) -> Netmap {
    let mut rx = client.netmap();
    let map = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|m| m.is_some()))
        .await
        .expect("no netmap within 20 s")
        .unwrap();
    map.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_nodes_use_the_embedded_relay_from_their_netmap() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ControlConfig::new(dir.path(), "example.test");
    config.relay_map = single_relay_map(format!("http://{addr}/relay"), Some(3478));
    let coord = Coord::open(config).await.unwrap();
    let now = UnixTime::from_system_time(std::time::SystemTime::now());
    let options = AuthKeyOptions {
        reusable: true,
        ephemeral: false,
        tags: vec!["tag:test".into()],
        expiry: None,
        user: None,
        ingress: false,
    };
    let auth = create_auth_key(coord.registry.store(), &options, now)
        .await
        .unwrap()
        .secret;
    let authorizer = RegistryAuthorizer::new(coord.registry.store().clone());
    let relay = RelayServer::new(RelayConfig::default(), Arc::new(authorizer));
    let handle = serve_with(coord, listener, relay.router()).unwrap();

    let rng = &mut rand::rngs::OsRng;
    let (ka, kb) = (NodePrivateKey::generate(rng), NodePrivateKey::generate(rng));
    let ca = client(&addr.to_string(), &auth, &ka, "alpha");
    let cb = client(&addr.to_string(), &auth, &kb, "beta");
    let map = first_netmap(&ca).await;
    first_netmap(&cb).await;
    let region = &map.relay_map.regions[0];
    assert_eq!(region.id, RegionId(1));
    assert_eq!(region.servers[0].url, format!("http://{addr}/relay"));
    assert_eq!(region.servers[0].stun_port, Some(3478));

    let connect = |key: &NodePrivateKey| {
        RelayClient::spawn(RelayClientConfig::new(
            region.servers[0].url.clone(),
            region.id,
            key.clone(),
        ))
        .unwrap()
    };
    let a = connect(&ka);
    let mut b = connect(&kb);
    a.wait_attached(Duration::from_secs(10)).await.unwrap();
    b.wait_attached(Duration::from_secs(10)).await.unwrap();
    a.sender()
        .try_send(kb.public_key(), Bytes::from_static(b"wg"))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.src, got.packet),
        (ka.public_key(), Bytes::from_static(b"wg"))
    );
    assert_eq!(relay.client_stats(&kb.public_key()).unwrap().tx_packets, 1);

    // A node key the registry has never seen is refused.
    let stranger = connect(&NodePrivateKey::generate(rng));
    let mut states = stranger.watch_state();
    let state = tokio::time::timeout(
        Duration::from_secs(10),
        states.wait_for(|s| matches!(s, RelayState::Refused(_))),
    )
    .await
    .expect("no refusal within 10 s")
    .unwrap()
    .clone();
    let RelayState::Refused(problem) = state else {
        unreachable!()
    };
    assert!(
        problem.contains("is not registered with this tailnet's coord"),
        "{problem}"
    );

    ca.shutdown();
    cb.shutdown();
    relay.shutdown();
    handle.shutdown().await;
}

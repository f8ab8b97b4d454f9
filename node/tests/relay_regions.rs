//! `RelaySet` with two real relays on loopback, one per region: node A is homed in region
//! 1, node B in region 2. A reaches B by dialling region 2 on demand, B answers through
//! region 1 (A's home), each datagram arrives tagged with the region it crossed, and the
//! extra connection closes once idle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postern_node::relay::{REGION_IDLE_TIMEOUT, RelayClient, RelayClientConfig, RelaySet};
use postern_proto::NodePrivateKey;
use postern_proto::netmap::{RegionId, RelayMap, RelayRegion, RelayServer as MapServer};
use postern_relay::{RelayConfig, RelayServer, ServeHandle, StaticAllowList};

const R1: RegionId = RegionId(1);
const R2: RegionId = RegionId(2);

async fn start_relay(allow: Arc<StaticAllowList>) -> (String, RelayServer, ServeHandle) {
    let relay = RelayServer::new(RelayConfig::default(), allow);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/relay", listener.local_addr().unwrap());
    let handle = relay.serve(listener, None).unwrap();
    (url, relay, handle)
}

async fn recv(set: &mut RelaySet) -> (RegionId, Bytes) {
    let (region, datagram) = tokio::time::timeout(Duration::from_secs(10), set.recv())
        .await
        .expect("nothing arrived within 10 s")
        .unwrap();
    (region, datagram.packet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_homed_in_another_region_is_reached_there_and_the_extra_connection_idles_out() {
    let rng = &mut rand::rngs::OsRng;
    let (ka, kb) = (NodePrivateKey::generate(rng), NodePrivateKey::generate(rng));
    let allow = Arc::new(StaticAllowList::new([ka.public_key(), kb.public_key()]));
    let (url1, relay1, _h1) = start_relay(Arc::clone(&allow)).await;
    let (url2, relay2, _h2) = start_relay(allow).await;
    let map = RelayMap {
        regions: [(R1, &url1), (R2, &url2)]
            .into_iter()
            .map(|(id, url)| RelayRegion {
                id,
                name: format!("r{}", id.0),
                servers: vec![MapServer {
                    url: url.clone(),
                    stun_port: None,
                }],
            })
            .collect(),
    };
    let home = |key: &NodePrivateKey, region: RegionId, url: &str| {
        RelayClient::spawn(RelayClientConfig::new(url, region, key.clone())).unwrap()
    };
    let a_home = home(&ka, R1, &url1);
    let b_home = home(&kb, R2, &url2);
    a_home.wait_attached(Duration::from_secs(10)).await.unwrap();
    b_home.wait_attached(Duration::from_secs(10)).await.unwrap();
    let mut a = RelaySet::new(a_home, &map, &ka, None);
    let mut b = RelaySet::new(b_home, &map, &kb, None);
    assert_eq!(a.open_regions(), Vec::<RegionId>::new());

    // A sends to B's home: region 2 is dialled now; the datagram waits for the attach.
    let t0 = Instant::now();
    a.try_send(R2, kb.public_key(), Bytes::from_static(b"to b"), t0)
        .unwrap();
    assert_eq!(a.open_regions(), vec![R2]);
    assert_eq!(recv(&mut b).await, (R2, Bytes::from_static(b"to b")));
    // B answers at A's home, region 1, which B dials in turn.
    b.try_send(R1, ka.public_key(), Bytes::from_static(b"to a"), t0)
        .unwrap();
    assert_eq!(recv(&mut a).await, (R1, Bytes::from_static(b"to a")));
    assert_eq!(b.open_regions(), vec![R1]);
    assert_eq!(relay1.stats().clients, 2, "A at home and B visiting");
    assert_eq!(relay2.stats().clients, 2, "B at home and A visiting");

    // A region the map does not list goes through B's home (region 2), where A is
    // still attached as a visitor.
    b.try_send(RegionId(9), ka.public_key(), Bytes::from_static(b"?"), t0)
        .unwrap();
    assert_eq!(recv(&mut a).await, (R2, Bytes::from_static(b"?")));

    // Idle for the timeout: the extra connection closes, the home one stays.
    let deadline = a.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + REGION_IDLE_TIMEOUT);
    a.handle_timeout(deadline);
    assert_eq!(a.open_regions(), Vec::<RegionId>::new());
    assert_eq!(a.poll_timeout(), None);
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while relay2.stats().clients != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "region 2 still has {} clients",
        relay2.stats().clients
    );
    // B still reaches A through A's home; a new datagram from A reopens region 2.
    b.try_send(R1, ka.public_key(), Bytes::from_static(b"still"), t0)
        .unwrap();
    assert_eq!(recv(&mut a).await, (R1, Bytes::from_static(b"still")));
    a.try_send(R2, kb.public_key(), Bytes::from_static(b"again"), deadline)
        .unwrap();
    assert_eq!(recv(&mut b).await, (R2, Bytes::from_static(b"again")));
    assert_eq!(a.open_regions(), vec![R2]);
}

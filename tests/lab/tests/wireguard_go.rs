//! Two stock wireguard-go peers in two namespaces ping each other, directly and across the
//! NAT lab. Needs root.

// Test helpers outside #[test] fns may unwrap and panic too: a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use postern_lab::netlab::{Host, NatLab, NatLabConfig};
use postern_lab::netns::{Netns, unique_prefix};
use postern_lab::wireguard_go::{WgPeer, WireguardGo};

fn ping(ns: &Netns, to: &str) {
    let out = ns
        .try_output(&["ping", "-c3", "-i0.2", "-w12", to])
        .unwrap();
    assert!(
        out.status.success(),
        "ping {to} from {} failed:\n{}",
        ns.name(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn two_wireguard_go_peers_ping_each_other() {
    let prefix = unique_prefix();
    let ns_a = Netns::create(&prefix, "wgA", false).unwrap();
    let ns_b = Netns::create(&prefix, "wgB", false).unwrap();
    ns_a.veth_to("eth0", &ns_b, "eth0").unwrap();
    ns_a.ip(&["addr", "add", "198.18.200.1/24", "dev", "eth0"])
        .unwrap();
    ns_b.ip(&["addr", "add", "198.18.200.2/24", "dev", "eth0"])
        .unwrap();

    // Responder first, so A's first initiation finds B configured.
    let b = WireguardGo::start(&ns_b, "198.19.200.2/24", 51821).unwrap();
    let a = WireguardGo::start(&ns_a, "198.19.200.1/24", 51820).unwrap();
    assert_ne!(a.ifname(), b.ifname());
    assert!(a.ifname().len() <= 15);
    b.set_peer(&WgPeer::new(a.public_key(), &["198.19.200.1/32"]))
        .unwrap();
    a.set_peer(&WgPeer {
        endpoint: Some("198.18.200.2:51821".parse().unwrap()),
        persistent_keepalive: Some(25),
        ..WgPeer::new(b.public_key(), &["198.19.200.2/32"])
    })
    .unwrap();

    ping(&ns_a, "198.19.200.2");
    ping(&ns_b, "198.19.200.1");
    let dump = a.dump().unwrap();
    assert!(dump.contains(b.public_key()), "{dump}");
    assert!(dump.contains("198.18.200.2:51821"), "{dump}");
    assert!(
        !format!("{:?}", a.keys()).contains(&a.keys().private_key),
        "Debug must hide the private key"
    );

    let socket = a.uapi_socket();
    assert!(socket.exists());
    drop(a);
    assert!(!socket.exists(), "UAPI socket left behind");
}

#[test]
fn peer_behind_nat_reaches_public_peer_which_learns_its_endpoint() {
    let lab = NatLab::start(NatLabConfig::default()).unwrap();
    let relay = WireguardGo::start(lab.netns(Host::Relay), "198.19.200.2/24", 51821).unwrap();
    let home = WireguardGo::start(lab.netns(Host::HomeB), "198.19.200.1/24", 51820).unwrap();
    // The public peer has no endpoint for the home: it learns the NATed one (roaming).
    relay
        .set_peer(&WgPeer::new(home.public_key(), &["198.19.200.1/32"]))
        .unwrap();
    home.set_peer(&WgPeer {
        endpoint: Some("198.18.0.20:51821".parse().unwrap()),
        persistent_keepalive: Some(25),
        ..WgPeer::new(relay.public_key(), &["198.19.200.2/32"])
    })
    .unwrap();

    ping(lab.netns(Host::HomeB), "198.19.200.2");
    ping(lab.netns(Host::Relay), "198.19.200.1");
    let dump = relay.dump().unwrap();
    assert!(
        dump.contains("198.18.0.102:"),
        "relay should see the home's NATed endpoint:\n{dump}"
    );
}

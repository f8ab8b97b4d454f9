//! The in-process mesh of the mesh tests: two userspace WireGuard tunnels on loopback,
//! the ingress's embedded node and a developer's node, each with a userspace netstack.

#![allow(dead_code)]
// each test crate uses a different part
// Test-only helpers: a failed unwrap here is a broken test fixture, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use base64::Engine as _;
use postern_node::userspace::UserspaceTunnel;
use postern_node::wg_config::WgConfig;
use postern_proto::NodePublicKey;
use postern_proto::x25519::{PublicKey, StaticSecret};

/// The ingress's tailnet address.
pub const INGRESS_ADDR: &str = "100.64.0.1";
/// The developer node's tailnet address.
pub const NODE_ADDR: &str = "100.64.0.2";

/// The ingress's tunnel and the node's, peered with each other.
pub struct TunnelPair {
    /// The ingress's end (dial the node through `ingress.netstack()`).
    pub ingress: UserspaceTunnel,
    /// The node's end (serve on `node.netstack()`).
    pub node: UserspaceTunnel,
    /// The node's WireGuard key, as a netmap names it.
    pub node_key: NodePublicKey,
}

impl TunnelPair {
    /// The node's tailnet address.
    pub fn node_ip(&self) -> IpAddr {
        NODE_ADDR.parse().unwrap()
    }

    /// The ingress's tailnet address.
    pub fn ingress_ip(&self) -> IpAddr {
        INGRESS_ADDR.parse().unwrap()
    }
}

/// Starts the pair; `seed` picks the keys (`[seed; 32]` and `[seed + 1; 32]`).
pub async fn tunnel_pair(seed: u8) -> TunnelPair {
    let ingress_key = StaticSecret::from([seed; 32]);
    let node_key = StaticSecret::from([seed.wrapping_add(1); 32]);
    let node_config = WgConfig::parse(
        "node.conf",
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = {NODE_ADDR}/32\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {INGRESS_ADDR}/32\n",
            key_text(&node_key),
            public_text(&ingress_key)
        ),
    )
    .unwrap();
    let node = UserspaceTunnel::start(&node_config).await.unwrap();
    let ingress_config = WgConfig::parse(
        "ingress.conf",
        &format!(
            "[Interface]\nPrivateKey = {}\nAddress = {INGRESS_ADDR}/32\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {NODE_ADDR}/32\nEndpoint = 127.0.0.1:{}\n",
            key_text(&ingress_key),
            public_text(&node_key),
            node.local_addr().port()
        ),
    )
    .unwrap();
    let ingress = UserspaceTunnel::start(&ingress_config).await.unwrap();
    TunnelPair {
        ingress,
        node,
        node_key: NodePublicKey::from_bytes(*PublicKey::from(&node_key).as_bytes()),
    }
}

fn key_text(secret: &StaticSecret) -> String {
    base64::engine::general_purpose::STANDARD.encode(secret.to_bytes())
}

fn public_text(secret: &StaticSecret) -> String {
    base64::engine::general_purpose::STANDARD.encode(PublicKey::from(secret).as_bytes())
}

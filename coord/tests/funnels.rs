//! End to end: the real `postern-coord serve` with a funnel domain, node control clients
//! opening, listing and closing funnels on their map streams, an ingress node receiving the
//! routes, expiry, policy edits, a coord restart and the admin commands.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use common::{CoordProcess, WAIT, client, wait_for};
use postern_node::control::{ClientError, ControlClient};
use postern_proto::funnel::{
    FunnelChange, FunnelInfo, FunnelProtocol, FunnelSpec, GateMode, GateSecret, GateSpec,
};
use postern_proto::funnel_hop::FUNNEL_HOP_PORT;
use postern_proto::netmap::{IpProtocol, Netmap};

const DOMAIN: &str = "funnel.example.test";

const POLICY: &str = r#"{
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
  "nodeAttrs": [{"target": ["alice@example.com"], "attr": ["funnel"]}],
  "funnels": [
    {"src": ["alice@example.com"], "ports": ["3000-3009"], "maxTTL": "24h"},
    {"src": ["alice@example.com"], "ports": ["22"], "allowUngated": true},
  ],
}"#;

/// The same policy with the webhook ports now requiring a login.
const POLICY_LOGIN: &str = r#"{
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
  "nodeAttrs": [{"target": ["alice@example.com"], "attr": ["funnel"]}],
  "funnels": [
    {"src": ["alice@example.com"], "ports": ["3000-3009"], "maxTTL": "24h", "requireLogin": ["alice@example.com"]},
    {"src": ["alice@example.com"], "ports": ["22"], "allowUngated": true},
  ],
}"#;

/// No funnels at all.
const POLICY_NONE: &str = r#"{
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
}"#;

fn webhook(secret: &str) -> GateSpec {
    GateSpec::Webhook {
        provider: "github".into(),
        secrets: vec![GateSecret::new(secret)],
        tolerance_secs: None,
    }
}

fn http(port: u16, name: Option<&str>, gates: Vec<GateSpec>) -> FunnelSpec {
    FunnelSpec {
        port,
        name: name.map(str::to_owned),
        protocol: FunnelProtocol::Http,
        ttl_secs: None,
        gates,
        gate_mode: GateMode::All,
        rate_limit: None,
    }
}

async fn open(node: &ControlClient, spec: FunnelSpec) -> Result<FunnelInfo, ClientError> {
    let mut opened = node.funnel(FunnelChange::Open(spec)).await?;
    assert_eq!(opened.len(), 1, "{opened:?}");
    Ok(opened.remove(0))
}

fn refused(result: Result<FunnelInfo, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::FunnelRefused(refusal)) => (refusal.code, refusal.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits until the client has a live stream (funnel requests need one).
async fn connected(node: &ControlClient) {
    let deadline = Instant::now() + WAIT;
    while !node.is_connected() {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route_hosts(map: &Netmap) -> Vec<String> {
    map.funnel_routes
        .iter()
        .map(|r| r.hostname.clone())
        .collect()
}

async fn start() -> CoordProcess {
    CoordProcess::start(
        POLICY,
        &[
            "--funnel-domain",
            DOMAIN,
            "--funnel-tcp-ports",
            "20000-20099",
        ],
    )
    .await
}

#[tokio::test]
async fn funnels_open_with_a_grant_reach_ingress_nodes_and_survive_a_restart() {
    let mut coord = start().await;
    let alice = coord.auth_key(&["--reusable", "--user", "alice@example.com"]);
    let bob = coord.auth_key(&["--user", "bob@example.com"]);
    let edge_key = coord.auth_key(&["--ingress"]);

    let laptop = client(&coord.addr, Some(alice.clone()), "laptop");
    let desk = client(&coord.addr, Some(alice.clone()), "desk");
    let bobs = client(&coord.addr, Some(bob), "bobs-box");
    let edge = client(&coord.addr, Some(edge_key), "edge");
    for node in [&laptop, &desk, &bobs, &edge] {
        connected(node).await;
    }
    let listed = coord.admin_json(&["nodes", "show", "edge"]);
    assert_eq!(listed["is_ingress"], true, "{listed}");
    assert!(coord.admin(&["nodes", "list"]).contains("ingress"));

    // No grant: the message names the missing attribute.
    let (code, message) = refused(open(&bobs, http(3000, None, vec![webhook("x")])).await);
    assert_eq!(code, "no_grant");
    assert!(
        message.starts_with("node bobs-box has no `funnel` attribute in nodeAttrs"),
        "{message}"
    );
    // A port no rule covers, a missing gate, a TTL over maxTTL.
    let (code, message) = refused(open(&laptop, http(8080, None, vec![webhook("x")])).await);
    assert_eq!(code, "no_grant");
    assert!(
        message.starts_with("no `funnels` rule covers port 8080 for alice@example.com"),
        "{message}"
    );
    let (code, message) = refused(open(&laptop, http(3000, None, vec![])).await);
    assert_eq!(code, "gate_required");
    assert!(message.contains("allowUngated false"), "{message}");
    let mut long = http(3000, None, vec![webhook("x")]);
    long.ttl_secs = Some(48 * 3600);
    let (code, message) = refused(open(&laptop, long).await);
    assert_eq!(code, "ttl_too_long");
    assert!(message.contains("maxTTL 1day"), "{message}");

    // With the grant: the node's name is the hostname, the TTL is capped to maxTTL.
    let hook = open(&laptop, http(3000, None, vec![webhook("s3cret")]))
        .await
        .unwrap();
    assert_eq!(hook.hostname, format!("laptop.{DOMAIN}"));
    assert_eq!(hook.url, format!("https://laptop.{DOMAIN}/"));
    assert_eq!(hook.gates, ["webhook"]);
    assert!(hook.expires_at.is_some());
    // A second port of the same node without a name, a named one, and a TCP one.
    let second = open(&laptop, http(3001, None, vec![webhook("s")]))
        .await
        .unwrap();
    assert_eq!(second.hostname, format!("laptop-3001.{DOMAIN}"));
    let named = open(&laptop, http(3002, Some("hooks"), vec![webhook("s")]))
        .await
        .unwrap();
    assert_eq!(named.hostname, format!("hooks.{DOMAIN}"));
    let mut ssh = http(22, None, vec![]);
    ssh.protocol = FunnelProtocol::Tcp;
    let ssh = open(&laptop, ssh).await.unwrap();
    let public_port = ssh.public_port.unwrap();
    assert!((20000..=20099).contains(&public_port), "{ssh:?}");
    assert_eq!(
        ssh.url,
        format!("tcp://laptop-22.{DOMAIN}:{public_port}"),
        "{ssh:?}"
    );
    // Another node asking for the same name is refused.
    let (code, message) = refused(open(&desk, http(3000, Some("hooks"), vec![webhook("s")])).await);
    assert_eq!(code, "name_taken");
    assert!(message.contains(&format!("hooks.{DOMAIN}")), "{message}");

    // The ingress node receives every route, secrets included; other nodes none.
    let mut edge_rx = edge.netmap();
    let map = wait_for(&mut edge_rx, "four routes", |m| m.funnel_routes.len() == 4).await;
    let route = map
        .funnel_routes
        .iter()
        .find(|r| r.hostname == hook.hostname)
        .unwrap();
    assert_eq!(route.port, 3000);
    assert_eq!(route.owner, "alice@example.com");
    match route.gates.as_slice() {
        [GateSpec::Webhook { secrets, .. }] => assert_eq!(secrets[0].expose(), "s3cret"),
        other => panic!("unexpected gates {other:?}"),
    }
    assert!(route.expires_at.is_some());
    let tcp_route = map
        .funnel_routes
        .iter()
        .find(|r| r.protocol == FunnelProtocol::Tcp)
        .unwrap();
    assert_eq!(tcp_route.public_port, Some(public_port));
    let laptop_id = laptop.netmap().borrow().as_ref().unwrap().self_node.id;
    assert_eq!(route.node, laptop_id);
    let laptop_peer = map.peers.iter().find(|p| p.id == laptop_id).unwrap();
    assert_eq!(route.node_key, laptop_peer.node_key);
    assert!(
        map.peers.iter().any(|p| p.id == laptop_id),
        "the edge sees the laptop"
    );
    let desk_map = desk.netmap().borrow().clone().unwrap();
    assert!(desk_map.funnel_routes.is_empty());
    assert!(
        laptop
            .netmap()
            .borrow()
            .as_ref()
            .unwrap()
            .funnel_routes
            .is_empty()
    );
    // The laptop's filter lets the edge reach its funnel acceptor.
    let edge_ip = std::net::IpAddr::V4(map.self_node.addresses.ipv4);
    let mut laptop_rx = laptop.netmap();
    wait_for(&mut laptop_rx, "the hop rule", |m| {
        m.packet_filter.iter().any(|rule| {
            rule.sources.iter().any(|s| s.contains(&edge_ip))
                && rule.protocols.contains(&IpProtocol::TCP)
                && rule
                    .destinations
                    .iter()
                    .any(|d| d.ports.contains(FUNNEL_HOP_PORT))
        })
    })
    .await;

    // List, close.
    let mine = laptop.funnel(FunnelChange::List).await.unwrap();
    assert_eq!(
        mine.iter().map(|f| f.port).collect::<Vec<_>>(),
        [22, 3000, 3001, 3002]
    );
    assert!(
        laptop
            .funnel(FunnelChange::Close { port: 3001 })
            .await
            .unwrap()
            .is_empty()
    );
    let closed_host = second.hostname.clone();
    wait_for(&mut edge_rx, "the closed route to go", |m| {
        !route_hosts(m).contains(&closed_host)
    })
    .await;
    let err = laptop
        .funnel(FunnelChange::Close { port: 3001 })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::FunnelRefused(r) if r.code == "not_found"),
        "{err}"
    );

    // The audit log has the opens and the close, without secrets.
    let audit = coord.admin_json(&["audit"]);
    let records = audit.as_array().unwrap();
    let opened = records
        .iter()
        .find(|r| r["action"] == "funnel.open" && r["target"] == hook.hostname)
        .unwrap();
    assert_eq!(opened["details"]["port"], 3000);
    assert_eq!(opened["details"]["gates"], serde_json::json!(["webhook"]));
    assert_eq!(opened["details"]["ttl_secs"], 86_400);
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "funnel.close" && r["target"] == closed_host)
    );
    assert!(!audit.to_string().contains("s3cret"));

    // The admin listing: no secrets either.
    let listing = coord.admin(&["funnels", "list"]);
    assert!(
        listing.contains(&hook.hostname) && listing.contains("closed"),
        "{listing}"
    );
    let listing = coord.admin_json(&["funnels", "list"]);
    assert!(!listing.to_string().contains("s3cret"), "{listing}");

    // A restart: the same node, name and port get the same hostname, and the closed
    // funnel's hostname stays reserved for it.
    coord = coord.restart().await;
    connected_again(&laptop).await;
    let again = open(&laptop, http(3000, None, vec![webhook("s3cret")]))
        .await
        .unwrap();
    assert_eq!(again.hostname, hook.hostname);
    let reopened = open(&laptop, http(3001, None, vec![webhook("s")]))
        .await
        .unwrap();
    assert_eq!(reopened.hostname, closed_host);
    let mut ssh = http(22, None, vec![]);
    ssh.protocol = FunnelProtocol::Tcp;
    assert_eq!(
        open(&laptop, ssh).await.unwrap().public_port,
        Some(public_port)
    );

    // An admin closes one: it leaves the routes.
    let out = coord.admin(&["funnels", "close", &format!("hooks.{DOMAIN}")]);
    assert!(out.starts_with("closed funnel hooks."), "{out}");
    let named_host = named.hostname.clone();
    let mut edge_rx = edge.netmap();
    wait_for(&mut edge_rx, "the admin-closed route to go", |m| {
        !route_hosts(m).contains(&named_host) && route_hosts(m).contains(&closed_host)
    })
    .await;
    // Released, its name is free for the desk.
    coord.admin(&["funnels", "close", &format!("hooks.{DOMAIN}"), "--release"]);
    let desk_hooks = open(&desk, http(3000, Some("hooks"), vec![webhook("s")]))
        .await
        .unwrap();
    assert_eq!(desk_hooks.hostname, named_host);

    // Unmarking the ingress takes its routes away.
    coord.admin(&["nodes", "ingress", "edge", "--off"]);
    wait_for(&mut edge_rx, "no routes", |m| m.funnel_routes.is_empty()).await;
    coord.admin(&["nodes", "ingress", "edge"]);
    wait_for(&mut edge_rx, "routes back", |m| !m.funnel_routes.is_empty()).await;
    coord.stop();
}

/// Waits for a live stream after a coord restart.
async fn connected_again(node: &ControlClient) {
    let deadline = Instant::now() + WAIT;
    loop {
        if node.is_connected()
            && let Ok(_) = node.funnel(FunnelChange::List).await
        {
            return;
        }
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn funnels_expire_and_lose_their_routes_when_the_policy_changes() {
    let coord = start().await;
    let alice = coord.auth_key(&["--reusable", "--user", "alice@example.com"]);
    let edge_key = coord.auth_key(&["--ingress"]);
    let laptop = client(&coord.addr, Some(alice), "laptop");
    let edge = client(&coord.addr, Some(edge_key), "edge");
    connected(&laptop).await;
    connected(&edge).await;

    // A short TTL: the route goes and `funnel.expire` is written.
    let mut short = http(3000, None, vec![webhook("s")]);
    short.ttl_secs = Some(2);
    let short = open(&laptop, short).await.unwrap();
    let mut edge_rx = edge.netmap();
    wait_for(&mut edge_rx, "the short route", |m| {
        route_hosts(m).contains(&short.hostname)
    })
    .await;
    wait_for(&mut edge_rx, "the short route to expire", |m| {
        !route_hosts(m).contains(&short.hostname)
    })
    .await;
    coord.wait_audit("funnel.expire").await;
    assert!(laptop.funnel(FunnelChange::List).await.unwrap().is_empty());

    // A policy edit requiring a login drops the webhook-only funnel; the TCP one stays.
    let hook = open(&laptop, http(3001, None, vec![webhook("s")]))
        .await
        .unwrap();
    let mut ssh = http(22, None, vec![]);
    ssh.protocol = FunnelProtocol::Tcp;
    let ssh = open(&laptop, ssh).await.unwrap();
    wait_for(&mut edge_rx, "both routes", |m| m.funnel_routes.len() == 2).await;
    coord.write_policy(POLICY_LOGIN);
    let map = wait_for(&mut edge_rx, "the hook route to go", |m| {
        route_hosts(m) == [ssh.hostname.clone()]
    })
    .await;
    assert_eq!(map.funnel_routes.len(), 1);
    coord.wait_audit("funnel.revoke").await;
    let audit = coord.admin_json(&["audit"]);
    let revoked = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "funnel.revoke")
        .unwrap();
    assert_eq!(revoked["target"], hook.hostname);
    assert!(
        revoked["details"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("requireLogin"),
        "{revoked}"
    );

    // Removing every funnel rule removes the last route.
    coord.write_policy(POLICY_NONE);
    wait_for(&mut edge_rx, "no routes", |m| m.funnel_routes.is_empty()).await;
    let (code, message) = refused(open(&laptop, http(3000, None, vec![webhook("s")])).await);
    assert_eq!(code, "no_grant");
    assert!(message.contains("no `funnel` attribute"), "{message}");
    coord.stop();
}

#[tokio::test]
async fn without_a_funnel_domain_funnels_are_refused_clearly() {
    let coord = CoordProcess::start(POLICY, &[]).await;
    let alice = coord.auth_key(&["--user", "alice@example.com"]);
    let laptop = client(&coord.addr, Some(alice), "laptop");
    connected(&laptop).await;
    let (code, message) = refused(open(&laptop, http(3000, None, vec![webhook("s")])).await);
    assert_eq!(code, "no_ingress");
    assert!(message.contains("--funnel-domain"), "{message}");
    coord.stop();
}

#[tokio::test]
async fn a_client_that_is_not_connected_says_so() {
    // Nothing listens here: the client never registers.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = client(&format!("127.0.0.1:{port}"), None, "lonely");
    let err = node.funnel(FunnelChange::List).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRegistered), "{err}");
    assert!(err.to_string().contains("not registered"), "{err}");
}

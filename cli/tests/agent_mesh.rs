//! The agent through the real binaries: `postern-coord serve` on loopback, two `postern up`
//! nodes with their own state directories, and the commands a person types against them
//! (`login`, `status --json`, `nc`, `ping`, `down`).
//!
//! The shared setup is in `agent/mod.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

mod agent;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use agent::{Coord, Nc, Node, POSTERN, free_port, mesh, mesh_with, wait_for};
use serde_json::Value;

#[test]
fn two_nodes_carry_bytes_both_ways_and_show_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let socks5: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let socks5_arg = socks5.to_string();
    let (_coord, alpha, beta) = mesh_with(dir.path(), &["--socks5", &socks5_arg]);

    let status = alpha.status();
    assert_eq!(status["self"]["name"], "alpha");
    let alpha_ip = status["self"]["addresses"][0].as_str().unwrap().to_owned();
    assert!(alpha_ip.starts_with("100."), "{status}");

    // beta listens on its tailnet port 7000; alpha connects by short name.
    let mut server = Nc::listen(&beta, 7000);
    let mut client = Nc::connect(&alpha, "beta", 7000);
    client.send(b"hello from alpha\n");
    server.expect(b"hello from alpha\n");
    server.send(b"hello from beta\n");
    client.expect(b"hello from beta\n");
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    client.send(&big);
    server.expect(&big);
    client.close_stdin();
    server.close_stdin();
    client.wait_success();
    server.wait_success();

    // Both sides count the traffic and report a handshake on a direct path.
    for (node, other) in [(&alpha, "beta"), (&beta, "alpha")] {
        let peer = node.peer(other).unwrap();
        assert!(peer["last_handshake"].is_i64(), "{peer}");
        assert_eq!(peer["path"], "direct", "{peer}");
        assert!(peer["rx_bytes"].as_u64().unwrap() > 0, "{peer}");
        assert!(peer["tx_bytes"].as_u64().unwrap() > 0, "{peer}");
    }
    let received_by_beta = beta.peer("alpha").unwrap()["rx_bytes"].as_u64().unwrap();
    assert!(
        received_by_beta > 2_000_000,
        "beta counted {received_by_beta}"
    );

    // `postern metrics` says the same in the Prometheus text format.
    let metrics = beta.metrics();
    let value = |series: &str| metrics.value(series);
    assert!(
        value("postern_node_peer_received_bytes_total{peer=\"alpha\"}") >= received_by_beta as f64
    );
    assert!(value("postern_node_peer_sent_bytes_total{peer=\"alpha\"}") > 0.0);
    assert!(value("postern_node_peer_last_handshake_timestamp_seconds{peer=\"alpha\"}") > 1.7e9);
    assert_eq!(
        value("postern_node_peer_path{peer=\"alpha\",path=\"direct\"}"),
        1.0
    );
    assert_eq!(value("postern_node_coord_connected"), 1.0);
    assert_eq!(value("postern_node_peers"), 1.0);
    assert_eq!(value("postern_node_peers_online"), 1.0);
    assert_eq!(
        value("postern_node_dropped_packets_total{reason=\"filtered\"}"),
        0.0
    );
    // The data path's own counters: 2 MB arrived as some 1,500 packets of at most 1,420
    // bytes, each a datagram, and the userspace stack took every one in.
    let stack_in = value("postern_node_netstack_packets_total{direction=\"in\"}");
    assert!(stack_in > 1_400.0, "stack took {stack_in} packets in");
    assert!(value("postern_node_netstack_packets_total{direction=\"out\"}") > 0.0);
    assert!(value("postern_node_datagrams_received_total") >= stack_in);
    assert!(value("postern_node_datagrams_sent_total") > 0.0);
    // Present (the connection is closed by now, so the count itself may be 0).
    assert!(value("postern_node_netstack_tcp_sockets") >= 0.0);
    assert_eq!(
        value("postern_node_netstack_dropped_packets_total{reason=\"malformed\"}"),
        0.0
    );
    assert!(
        metrics
            .0
            .contains("postern_node_info{name=\"beta\",version="),
        "{}",
        metrics.0
    );
    assert!(metrics.0.ends_with("# EOF\n"), "{}", metrics.0);

    // The full name and the IP address work too; ping goes through the mesh.
    let fqdn = alpha.peer("beta").unwrap()["fqdn"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = alpha.postern(&["ping", "-c", "1", "--json", &fqdn]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pong: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pong["path"], "direct", "{pong}");
    assert!(pong["rtt_ms"].as_f64().unwrap() >= 0.0);
    let out = beta.postern(&["ping", "-c", "1", &alpha_ip]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pong from"));

    // A host program reaches beta by name through alpha's SOCKS5 proxy (the name resolves
    // in the netmap, as `curl --socks5-hostname` would send it).
    let mut server = Nc::listen(&beta, 7001);
    let mut proxy = TcpStream::connect(socks5).unwrap();
    proxy
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    proxy.write_all(&[5, 1, 0]).unwrap();
    let mut answer = [0u8; 2];
    proxy.read_exact(&mut answer).unwrap();
    assert_eq!(answer, [5, 0]);
    let mut request = vec![5, 1, 0, 3, 4];
    request.extend_from_slice(b"beta");
    request.extend_from_slice(&7001u16.to_be_bytes());
    proxy.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    proxy.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "SOCKS5 CONNECT to beta:7001 failed: {reply:?}");
    proxy.write_all(b"via socks5\n").unwrap();
    server.expect(b"via socks5\n");
    server.send(b"back\n");
    let mut back = [0u8; 5];
    proxy.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back\n");
    drop(proxy);
    server.close_stdin();
    server.wait_success();

    // A name that is not in the netmap is a clear error.
    let out = alpha.postern(&["nc", "nobody", "80"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no peer called \"nobody\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = alpha.postern(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("beta") && table.contains("online"),
        "{table}"
    );
}

#[test]
fn a_connection_survives_a_coord_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, alpha, beta) = mesh(dir.path());
    let mut server = Nc::listen(&beta, 7100);
    let mut client = Nc::connect(&alpha, "beta", 7100);
    client.send(b"before\n");
    server.expect(b"before\n");

    coord.stop();
    wait_for(
        "alpha to notice the coord is gone",
        Duration::from_secs(20),
        || (alpha.status()["coord_connected"] == false).then_some(()),
    );
    client.send(b"while the coord is down\n");
    server.expect(b"while the coord is down\n");
    server.send(b"still here\n");
    client.expect(b"still here\n");
    // A new connection works too: the nodes still have their netmaps.
    let out = alpha.postern(&["ping", "-c", "1", "beta"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    coord.start();
    for node in [&alpha, &beta] {
        wait_for(
            &format!("{} to reconnect to the coord", node.name),
            Duration::from_secs(60),
            || (node.status()["coord_connected"] == true).then_some(()),
        );
    }
    client.send(b"after\n");
    server.expect(b"after\n");
    client.close_stdin();
    server.close_stdin();
    client.wait_success();
    server.wait_success();
}

#[test]
fn a_restarted_node_keeps_its_name_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, alpha, mut beta) = mesh(dir.path());
    let before = beta.status()["self"].clone();
    beta.down();
    let out = beta.postern(&["status"]);
    assert_eq!(out.status.code(), Some(3), "status of a stopped node");
    assert!(String::from_utf8_lossy(&out.stderr).contains("postern up"));

    beta.up();
    let after = beta.status()["self"].clone();
    assert_eq!(before["name"], after["name"]);
    assert_eq!(before["addresses"], after["addresses"]);
    assert_eq!(before["node_id"], after["node_id"]);
    // alpha learns beta's new UDP port from the coord and reaches it again.
    wait_for(
        "alpha to ping the restarted beta",
        Duration::from_secs(30),
        || {
            alpha
                .postern(&["ping", "-c", "1", "--timeout", "2s", "beta"])
                .status
                .success()
                .then_some(())
        },
    );
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "solo");

    // Not logged in: `up` says what to do, with its own exit code, and makes the keys.
    let out = node.postern(&["up"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("postern login"), "{stderr}");

    let key = node.state.join("node.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = node.postern(&["up"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node.key"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // Nothing runs here: the commands that need the daemon say so.
    for args in [
        &["status"][..],
        &["metrics"],
        &["down"],
        &["ping", "x"],
        &["nc", "x", "1"],
    ] {
        let out = node.postern(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no postern daemon is running"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn login_with_a_wrong_auth_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::new(dir.path());
    let node = Node::new(dir.path(), "intruder");
    let out = Command::new(POSTERN)
        .args([
            "login",
            "--coord",
            &coord.url(),
            "--auth-key",
            "pstn-auth-0000",
        ])
        .arg("--state-dir")
        .arg(&node.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!node.state.join("login.json").exists());
}

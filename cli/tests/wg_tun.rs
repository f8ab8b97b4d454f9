//! `postern wg up --tun` (kernel mode) against a stock wireguard-go peer, in network
//! namespaces (needs root, as CI runs). The layout is in `common/mod.rs`: wireguard-go in
//! "srv" at 198.19.200.1 and fd00:200::1, postern in "cli" with a TUN device `wg0` at
//! 198.19.200.2/32 and fd00:200::2/128, routing the peer's AllowedIPs through it.
//!
//! Shown: the device gets the addresses, MTU and routes; ping both ways over IPv4 and
//! IPv6; 100 MB of TCP each way at once (echo, SHA-256 compared) through the kernel's own
//! TCP; the device and its routes vanish when postern stops. And without root, a clear
//! error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::{CLI_V4, CLI_V6, SRV_V4, SRV_V6, WgLab, echo_transfer, spawn_tcp_echo, stop};

const TRANSFER: usize = 100 * 1000 * 1000;

#[test]
fn tun_mode_pings_both_ways_and_carries_tcp_to_wireguard_go() {
    let lab = WgLab::start(true);
    let config = lab.write_config(
        &format!("{CLI_V4}/32, {CLI_V6}/128"),
        "198.19.200.0/24, fd00:200::/64",
        "",
    );
    let (mut postern, log) = lab.spawn_postern(&config, &["--tun"]);

    // The device is named after the file (wg0.conf → wg0), as wg-quick names it.
    lab.wait_ready(&mut postern, &log);
    let link = lab
        .cli
        .output(&["ip", "-o", "link", "show", "wg0"])
        .unwrap();
    assert!(link.contains("mtu 1420") && link.contains("UP"), "{link}");
    let addresses = lab
        .cli
        .output(&["ip", "-o", "addr", "show", "dev", "wg0"])
        .unwrap();
    assert!(addresses.contains(&format!("{CLI_V4}/32")), "{addresses}");
    assert!(addresses.contains(&format!("{CLI_V6}/128")), "{addresses}");
    let routes = lab
        .cli
        .output(&["ip", "-4", "route", "show", "dev", "wg0"])
        .unwrap();
    assert!(routes.contains("198.19.200.0/24"), "{routes}");
    let routes = lab
        .cli
        .output(&["ip", "-6", "route", "show", "dev", "wg0"])
        .unwrap();
    assert!(routes.contains("fd00:200::/64"), "{routes}");

    // postern first (it has the endpoint), then wireguard-go back (it learnt postern's).
    for (ns, target) in [
        (&lab.cli, SRV_V4),
        (&lab.srv, CLI_V4),
        (&lab.cli, SRV_V6),
        (&lab.srv, CLI_V6),
    ] {
        let out = ns
            .try_output(&["ping", "-c", "3", "-i", "0.2", "-w", "10", target])
            .unwrap();
        assert!(
            out.status.success(),
            "ping {target} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            lab.logs(&postern)
        );
    }

    let server: SocketAddr = format!("{SRV_V4}:7000").parse().unwrap();
    spawn_tcp_echo(&lab.srv, server);
    let started = Instant::now();
    let outcome = lab
        .cli
        .run_in(move || echo_transfer(server, TRANSFER))
        .unwrap()
        .unwrap_or_else(|e| panic!("transfer failed: {e}\n{}", lab.logs(&postern)));
    outcome.assert_complete(TRANSFER, || lab.logs(&postern));
    eprintln!(
        "--tun: {} MB each way in {:?}",
        TRANSFER / 1_000_000,
        started.elapsed()
    );

    stop(&mut postern, &log, "kernel-mode WireGuard tunnel stopped");
    let gone = lab.cli.try_output(&["ip", "link", "show", "wg0"]).unwrap();
    assert!(!gone.status.success(), "wg0 outlived postern");
    let routes = lab.cli.output(&["ip", "-4", "route"]).unwrap();
    assert!(!routes.contains("198.19.200.0/24"), "{routes}");
}

/// A full tunnel (`AllowedIPs = 0.0.0.0/0`) as wg-quick makes one: a host beyond the peer
/// (203.0.113.7, only on wireguard-go's side) is reached through the tunnel by the default
/// route, while WireGuard's own datagrams to the endpoint still leave by the veth (were
/// they routed into the tunnel too, no handshake could complete); the policy-routing rules
/// are there while postern runs and gone after.
#[test]
fn a_default_route_makes_a_full_tunnel_that_spares_wireguards_own_datagrams() {
    let lab = WgLab::start(false);
    lab.srv
        .ip(&["addr", "add", "203.0.113.7/32", "dev", "lo"])
        .unwrap();
    let config = lab.write_config(&format!("{CLI_V4}/32"), "0.0.0.0/0", "");
    let (mut postern, log) = lab.spawn_postern(&config, &["--tun"]);
    lab.wait_ready(&mut postern, &log);

    let rules = lab.cli.output(&["ip", "-4", "rule", "show"]).unwrap();
    assert!(
        rules.contains("not from all fwmark 0xca6c lookup 51820"),
        "{rules}"
    );
    assert!(
        rules.contains("lookup main suppress_prefixlength 0"),
        "{rules}"
    );
    let table = lab
        .cli
        .output(&["ip", "-4", "route", "show", "table", "51820"])
        .unwrap();
    assert!(table.contains("default dev wg0"), "{table}");
    // The kernel picks the tunnel for the far host and the veth for the endpoint.
    let far = lab
        .cli
        .output(&["ip", "-4", "route", "get", "203.0.113.7"])
        .unwrap();
    assert!(far.contains("dev wg0"), "{far}");

    for target in ["203.0.113.7", SRV_V4] {
        let out = lab
            .cli
            .try_output(&["ping", "-c", "3", "-i", "0.2", "-w", "10", target])
            .unwrap();
        assert!(
            out.status.success(),
            "ping {target} through the full tunnel failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            lab.logs(&postern)
        );
    }
    let server: SocketAddr = "203.0.113.7:7001".parse().unwrap();
    spawn_tcp_echo(&lab.srv, server);
    let outcome = lab
        .cli
        .run_in(move || echo_transfer(server, 10 * 1000 * 1000))
        .unwrap()
        .unwrap_or_else(|e| panic!("transfer failed: {e}\n{}", lab.logs(&postern)));
    outcome.assert_complete(10 * 1000 * 1000, || lab.logs(&postern));

    stop(&mut postern, &log, "kernel-mode WireGuard tunnel stopped");
    let rules = lab.cli.output(&["ip", "-4", "rule", "show"]).unwrap();
    assert!(!rules.contains("51820"), "rules outlived postern: {rules}");
    assert!(!rules.contains("suppress_prefixlength"), "{rules}");
}

/// The same as a user without CAP_NET_ADMIN: exit 1 and a message that says what to do,
/// and no device left behind.
#[test]
fn tun_mode_without_root_says_it_needs_root() {
    let lab = WgLab::start(false);
    let config = lab.write_config(&format!("{CLI_V4}/32"), "198.19.200.0/24", "");
    // The unprivileged user must be able to read the file (it is still 0600 to its owner).
    nix::unistd::chown(&config, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    std::fs::set_permissions(
        lab.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = lab
        .cli
        .try_output(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            env!("CARGO_BIN_EXE_postern"),
            "wg",
            "up",
            config.to_str().unwrap(),
            "--tun",
        ])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs root (CAP_NET_ADMIN)"), "{stderr}");
    assert!(stderr.contains("drop --tun"), "{stderr}");
    assert!(!stderr.contains(&lab.keys.private_key), "{stderr}");
    let gone = lab.cli.try_output(&["ip", "link", "show", "wg0"]).unwrap();
    assert!(!gone.status.success(), "a device was left behind");
}

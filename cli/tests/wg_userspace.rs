//! `postern wg up` in userspace mode against a stock wireguard-go peer, in network
//! namespaces (needs root, as CI runs). The layout is in `common/mod.rs`: wireguard-go in
//! "srv" at 198.19.200.1 (fd00:200::1), postern in "cli" at 198.19.200.2 (fd00:200::2)
//! with no TUN device, reached through `--forward` and `--socks5` on the cli's loopback.
//!
//! - TCP: 100 MB each way at once through a forward to an echo server (the SHA-256 of what
//!   was sent must equal that of what came back), PresharedKey on and off;
//! - UDP: thousands of datagrams of every size through a UDP forward to an echo server;
//! - SOCKS5: curl fetches a file from an HTTP server behind wireguard-go;
//! - IPv6 inside the tunnel: TCP to wireguard-go's IPv6 tunnel address.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{
    CLI_V4, CLI_V6, SRV_V4, SRV_V6, WgLab, echo_transfer, random_bytes, sha256, spawn_http_server,
    spawn_tcp_echo, spawn_udp_echo, stop,
};

const TRANSFER: usize = 100 * 1000 * 1000;
const STOPPED: &str = "userspace WireGuard tunnel stopped";

#[test]
fn tcp_forward_carries_100_mb_each_way_to_wireguard_go() {
    run_transfer(false);
}

#[test]
fn tcp_forward_carries_100_mb_each_way_with_preshared_key() {
    run_transfer(true);
}

fn run_transfer(preshared_key: bool) {
    let lab = WgLab::start(false);
    let psk_line = if preshared_key {
        format!("PresharedKey = {}\n", lab.set_preshared_key())
    } else {
        String::new()
    };
    let config = lab.write_config(&format!("{CLI_V4}/32"), "198.19.200.0/24", &psk_line);
    spawn_tcp_echo(&lab.srv, format!("{SRV_V4}:7000").parse().unwrap());
    let forward = format!("tcp:127.0.0.1:17000:{SRV_V4}:7000");
    let (mut postern, log) = lab.spawn_postern(&config, &["--forward", &forward]);

    let started = Instant::now();
    let outcome = lab
        .cli
        .run_in(|| echo_transfer("127.0.0.1:17000".parse().unwrap(), TRANSFER))
        .unwrap();
    let elapsed = started.elapsed();
    postern
        .check_running()
        .unwrap_or_else(|e| panic!("postern died: {e}"));
    let outcome =
        outcome.unwrap_or_else(|e| panic!("transfer failed: {e}\n{}", lab.logs(&postern)));
    outcome.assert_complete(TRANSFER, || lab.logs(&postern));
    eprintln!(
        "psk={preshared_key}: {} MB each way in {elapsed:?}",
        TRANSFER / 1_000_000
    );
    let dump = lab.wg.dump().unwrap();
    assert!(
        dump.contains(&lab.keys.public_key),
        "wireguard-go has no such peer:\n{dump}"
    );
    stop(&mut postern, &log, STOPPED);
}

/// Datagrams of every size from 1 to 1,372 bytes (the most a 1420-byte tunnel MTU carries
/// in IPv4 + UDP), each with a sequence number, sent one at a time through the UDP forward
/// and echoed back. Each must come back intact; a lost one is sent again (UDP may drop, the
/// test is about what arrives), and the hash of everything echoed must match.
#[test]
fn udp_forward_carries_datagrams_to_wireguard_go() {
    const DATAGRAMS: usize = 3000;
    const MAX_PAYLOAD: usize = 1372;
    let lab = WgLab::start(false);
    let config = lab.write_config(&format!("{CLI_V4}/32"), "198.19.200.0/24", "");
    spawn_udp_echo(&lab.srv, format!("{SRV_V4}:7001").parse().unwrap());
    let forward = format!("udp:127.0.0.1:17001:{SRV_V4}:7001");
    let (mut postern, log) = lab.spawn_postern(&config, &["--forward", &forward]);
    lab.wait_ready(&mut postern, &log);

    let outcome = lab
        .cli
        .run_in(move || -> Result<(Vec<u8>, Vec<u8>, usize), String> {
            let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            socket
                .connect("127.0.0.1:17001")
                .map_err(|e| e.to_string())?;
            let payloads = random_bytes(MAX_PAYLOAD * 2, 7);
            let mut sent_all = Vec::new();
            let mut echoed_all = Vec::new();
            let mut resent = 0;
            let mut buf = vec![0u8; 65_535];
            for i in 0..DATAGRAMS {
                let len = 1 + i % MAX_PAYLOAD;
                let mut datagram = payloads[i % MAX_PAYLOAD..][..len].to_vec();
                datagram[..len.min(4)].copy_from_slice(&(i as u32).to_be_bytes()[..len.min(4)]);
                // The first datagrams wait for the handshake: be patient with them.
                let timeout = if i == 0 { 2000 } else { 500 };
                socket
                    .set_read_timeout(Some(Duration::from_millis(timeout)))
                    .map_err(|e| e.to_string())?;
                let mut tries = 0;
                let echoed = 'datagram: loop {
                    if tries == 10 {
                        return Err(format!("datagram {i} ({len} bytes) never came back"));
                    }
                    tries += 1;
                    socket.send(&datagram).map_err(|e| e.to_string())?;
                    loop {
                        match socket.recv(&mut buf) {
                            Ok(n) if buf[..n] == datagram[..] => break 'datagram buf[..n].to_vec(),
                            // This datagram's sequence number, other bytes: keep it, and
                            // let the hashes differ.
                            Ok(n) if len >= 4 && n >= 4 && buf[..4] == datagram[..4] => {
                                break 'datagram buf[..n].to_vec();
                            }
                            // A late echo of an earlier datagram that was sent twice.
                            Ok(_) => {}
                            Err(_) => {
                                resent += 1;
                                break;
                            }
                        }
                    }
                };
                sent_all.extend_from_slice(&datagram);
                echoed_all.extend_from_slice(&echoed);
            }
            Ok((sha256(&sent_all), sha256(&echoed_all), resent))
        })
        .unwrap();
    let (sent_hash, echoed_hash, resent) =
        outcome.unwrap_or_else(|e| panic!("UDP forward failed: {e}\n{}", lab.logs(&postern)));
    assert_eq!(
        sent_hash, echoed_hash,
        "echoed datagrams differ from those sent"
    );
    eprintln!("{DATAGRAMS} datagrams echoed, {resent} sent again after a timeout");
    stop(&mut postern, &log, STOPPED);
}

/// curl, through postern's SOCKS5 proxy, fetches 2 MB from an HTTP server on wireguard-go's
/// tunnel address; a host name that is not an IP literal is refused (no resolver in the
/// tunnel), and curl says so.
#[test]
fn socks5_carries_curl_to_an_http_server_behind_wireguard_go() {
    let lab = WgLab::start(false);
    let config = lab.write_config(&format!("{CLI_V4}/32"), "198.19.200.0/24", "");
    let body = random_bytes(2 << 20, 9);
    let expected = sha256(&body);
    spawn_http_server(&lab.srv, format!("{SRV_V4}:8080").parse().unwrap(), body);
    let (mut postern, log) = lab.spawn_postern(&config, &["--socks5", "127.0.0.1:1080"]);
    lab.wait_ready(&mut postern, &log);

    let out_file = lab.dir.path().join("fetched");
    let url = format!("http://{SRV_V4}:8080/file");
    let mut fetched = None;
    // Retry while postern is still binding its proxy.
    for _ in 0..50 {
        let out = lab
            .cli
            .try_output(&[
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "20",
                "--socks5-hostname",
                "127.0.0.1:1080",
                "-o",
                out_file.to_str().unwrap(),
                &url,
            ])
            .unwrap();
        if out.status.success() {
            fetched = Some(std::fs::read(&out_file).unwrap());
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Failed to connect") || stderr.contains("Connection refused"),
            "curl failed: {stderr}\n{}",
            lab.logs(&postern)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetched =
        fetched.unwrap_or_else(|| panic!("the proxy never answered\n{}", lab.logs(&postern)));
    assert_eq!(fetched.len(), 2 << 20);
    assert_eq!(sha256(&fetched), expected, "the fetched body differs");

    let out = lab
        .cli
        .try_output(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--socks5-hostname",
            "127.0.0.1:1080",
            "http://server.invalid:8080/",
        ])
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // curl prints SOCKS5 reply code 8, "address type not supported".
    assert!(
        stderr.contains("Can't complete SOCKS5 connection to server.invalid. (8)"),
        "curl should report the SOCKS5 refusal: {stderr}"
    );
    stop(&mut postern, &log, STOPPED);
}

/// Both tunnel ends have an IPv6 address as well; 10 MB each way of TCP go to wireguard-go's
/// IPv6 tunnel address through a forward.
#[test]
fn ipv6_inside_the_tunnel_carries_tcp() {
    const BYTES: usize = 10 * 1000 * 1000;
    let lab = WgLab::start(true);
    let config = lab.write_config(
        &format!("{CLI_V4}/32, {CLI_V6}/128"),
        "198.19.200.0/24, fd00:200::/64",
        "",
    );
    let server: SocketAddr = format!("[{SRV_V6}]:7000").parse().unwrap();
    spawn_tcp_echo(&lab.srv, server);
    let forward = format!("tcp:127.0.0.1:17002:[{SRV_V6}]:7000");
    let (mut postern, log) = lab.spawn_postern(&config, &["--forward", &forward]);
    let outcome = lab
        .cli
        .run_in(|| echo_transfer("127.0.0.1:17002".parse().unwrap(), BYTES))
        .unwrap()
        .unwrap_or_else(|e| panic!("transfer over IPv6 failed: {e}\n{}", lab.logs(&postern)));
    outcome.assert_complete(BYTES, || lab.logs(&postern));
    stop(&mut postern, &log, STOPPED);
}

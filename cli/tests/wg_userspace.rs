//! `postern wg up` in userspace mode against a stock wireguard-go peer, in network
//! namespaces (needs root, as CI runs).
//!
//! ```text
//!  ns "srv": wireguard-go, tunnel 198.19.200.1/24, TCP echo server on 198.19.200.1:7000
//!     veth 198.19.100.1/24
//!        |
//!     veth 198.19.100.2/24
//!  ns "cli": postern wg up (tunnel address 198.19.200.2, no TUN)
//!            --forward tcp:127.0.0.1:17000:198.19.200.1:7000
//! ```
//!
//! 100 MB go each way at once through the forward (the echo sends back what it receives);
//! the SHA-256 of what was sent must equal that of what came back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use postern_lab::LabProcess;
use postern_lab::netns::{Netns, unique_prefix};
use postern_lab::wireguard_go::{WgKeyPair, WgPeer, WireguardGo};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

const TRANSFER: usize = 100 * 1000 * 1000;
const FORWARD_PORT: u16 = 17000;

#[test]
fn tcp_forward_carries_100_mb_each_way_to_wireguard_go() {
    run_transfer(false);
}

#[test]
fn tcp_forward_carries_100_mb_each_way_with_preshared_key() {
    run_transfer(true);
}

fn run_transfer(preshared_key: bool) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and needs root: run the tests as root, as CI does"
    );
    let prefix = unique_prefix();
    let srv = Netns::create(&prefix, "srv", false).unwrap();
    let cli = Netns::create(&prefix, "cli", false).unwrap();
    srv.veth_to("eth0", &cli, "eth0").unwrap();
    srv.ip(&["addr", "add", "198.19.100.1/24", "dev", "eth0"])
        .unwrap();
    cli.ip(&["addr", "add", "198.19.100.2/24", "dev", "eth0"])
        .unwrap();

    let wg = WireguardGo::start(&srv, "198.19.200.1/24", 51820).unwrap();
    let postern_keys = WgKeyPair::generate().unwrap();
    wg.set_peer(&WgPeer::new(&postern_keys.public_key, &["198.19.200.2/32"]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let psk_line = if preshared_key {
        let psk = postern_keys_psk();
        let psk_file = dir.path().join("psk");
        std::fs::write(&psk_file, format!("{psk}\n")).unwrap();
        let status = Command::new("ip")
            .args([
                "netns",
                "exec",
                srv.name(),
                "wg",
                "set",
                wg.ifname(),
                "peer",
            ])
            .arg(&postern_keys.public_key)
            .arg("preshared-key")
            .arg(&psk_file)
            .status()
            .unwrap();
        assert!(status.success(), "wg set preshared-key failed");
        format!("PresharedKey = {psk}\n")
    } else {
        String::new()
    };
    let config = dir.path().join("wg0.conf");
    std::fs::write(
        &config,
        format!(
            "[Interface]\nPrivateKey = {}\nAddress = 198.19.200.2/32\n\n[Peer]\nPublicKey = {}\n{psk_line}AllowedIPs = 198.19.200.0/24\nEndpoint = 198.19.100.1:51820\n",
            postern_keys.private_key,
            wg.public_key()
        ),
    )
    .unwrap();

    // The echo server, inside srv, on its tunnel address.
    let listener = srv
        .run_in(|| TcpListener::bind("198.19.200.1:7000"))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });

    let forward = format!("tcp:127.0.0.1:{FORWARD_PORT}:198.19.200.1:7000");
    let log = dir.path().join("postern.log");
    let mut postern = cli
        .spawn(
            &[
                env!("CARGO_BIN_EXE_postern"),
                "wg",
                "up",
                config.to_str().unwrap(),
                "--forward",
                &forward,
            ],
            &log,
        )
        .unwrap();

    let started = Instant::now();
    let outcome = cli
        .run_in(move || transfer_through_forward(TRANSFER))
        .unwrap();
    let elapsed = started.elapsed();
    postern
        .check_running()
        .unwrap_or_else(|e| panic!("postern died: {e}"));
    let (sent, received, sent_hash, received_hash) = match outcome {
        Ok(result) => result,
        Err(e) => panic!(
            "transfer failed: {e}\npostern log:\n{}\nwireguard-go log:\n{}",
            postern.log_tail(),
            wg.log_tail()
        ),
    };
    assert_eq!(sent, TRANSFER);
    assert_eq!(received, TRANSFER, "postern log:\n{}", postern.log_tail());
    assert_eq!(
        sent_hash, received_hash,
        "the echoed bytes differ from those sent"
    );
    eprintln!(
        "psk={preshared_key}: {} MB each way in {elapsed:?}",
        TRANSFER / 1_000_000
    );
    let dump = wg.dump().unwrap();
    assert!(
        dump.contains(&postern_keys.public_key),
        "wireguard-go has no such peer:\n{dump}"
    );
    stop(&mut postern, &log);
}

fn postern_keys_psk() -> String {
    let out = Command::new("wg").arg("genpsk").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

type Outcome = (usize, usize, Vec<u8>, Vec<u8>);

/// Connects to the forward (retrying until postern listens), sends `total` pseudo-random
/// bytes while reading the echo, and returns the counts and both hashes.
fn transfer_through_forward(total: usize) -> Result<Outcome, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", FORWARD_PORT)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("postern's forward never listened: {e}")),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> Result<(usize, Vec<u8>), String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut chunk = vec![0u8; 64 << 10];
        let mut hash = Sha256::new();
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            rng.fill_bytes(&mut chunk[..n]);
            writer
                .write_all(&chunk[..n])
                .map_err(|e| format!("send: {e}"))?;
            hash.update(&chunk[..n]);
            sent += n;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| e.to_string())?;
        Ok((sent, hash.finalize().to_vec()))
    });
    let mut reader = stream;
    let mut hash = Sha256::new();
    let mut received = 0;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                received += n;
            }
            Err(e) => return Err(format!("receive after {received} bytes: {e}")),
        }
    }
    let (sent, sent_hash) = sender.join().map_err(|_| "sender panicked".to_owned())??;
    Ok((sent, received, sent_hash, hash.finalize().to_vec()))
}

/// SIGTERM must end postern cleanly (exit 0).
fn stop(postern: &mut LabProcess, log: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(postern.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if postern.check_running().is_err() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                text.contains("userspace WireGuard tunnel stopped"),
                "{text}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "postern did not stop within 5 s of SIGTERM:\n{}",
        postern.log_tail()
    );
}

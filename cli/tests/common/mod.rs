//! Shared setup of the `postern wg up` tests against wireguard-go in network namespaces.
//!
//! ```text
//!  ns "srv": wireguard-go, tunnel 198.19.200.1/24 (and fd00:200::1/64 with IPv6),
//!            test servers on its tunnel addresses
//!     veth 198.19.100.1/24
//!        |
//!     veth 198.19.100.2/24
//!  ns "cli": postern wg up (tunnel address 198.19.200.2, fd00:200::2)
//! ```

#![allow(
    dead_code, // each test binary uses a part of this module
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_lab::LabProcess;
use postern_lab::netns::{Netns, unique_prefix};
use postern_lab::wireguard_go::{WgKeyPair, WgPeer, WireguardGo};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// wireguard-go's tunnel addresses.
pub const SRV_V4: &str = "198.19.200.1";
pub const SRV_V6: &str = "fd00:200::1";
/// postern's tunnel addresses.
pub const CLI_V4: &str = "198.19.200.2";
pub const CLI_V6: &str = "fd00:200::2";
/// wireguard-go's endpoint.
pub const ENDPOINT: &str = "198.19.100.1:51820";

/// Two namespaces joined by a veth, wireguard-go in "srv" with postern's key as its peer.
pub struct WgLab {
    pub srv: Netns,
    pub cli: Netns,
    pub wg: WireguardGo,
    pub keys: WgKeyPair,
    pub dir: tempfile::TempDir,
    pub ipv6: bool,
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and needs root: run the tests as root, as CI does"
    );
}

impl WgLab {
    /// Sets up the namespaces and wireguard-go; with `ipv6`, both tunnel ends also get an
    /// IPv6 address and wireguard-go allows postern's.
    pub fn start(ipv6: bool) -> Self {
        require_root();
        let prefix = unique_prefix();
        let srv = Netns::create(&prefix, "srv", ipv6).unwrap();
        let cli = Netns::create(&prefix, "cli", ipv6).unwrap();
        srv.veth_to("eth0", &cli, "eth0").unwrap();
        srv.ip(&["addr", "add", "198.19.100.1/24", "dev", "eth0"])
            .unwrap();
        cli.ip(&["addr", "add", "198.19.100.2/24", "dev", "eth0"])
            .unwrap();
        let wg = WireguardGo::start(&srv, &format!("{SRV_V4}/24"), 51820).unwrap();
        let keys = WgKeyPair::generate().unwrap();
        let cli_v4 = format!("{CLI_V4}/32");
        let cli_v6 = format!("{CLI_V6}/128");
        let mut allowed = vec![cli_v4.as_str()];
        if ipv6 {
            srv.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{SRV_V6}/64"),
                "dev",
                wg.ifname(),
            ])
            .unwrap();
            allowed.push(&cli_v6);
        }
        wg.set_peer(&WgPeer::new(&keys.public_key, &allowed))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        Self {
            srv,
            cli,
            wg,
            keys,
            dir,
            ipv6,
        }
    }

    /// Gives the peer a fresh preshared key on wireguard-go's side; returns it for the
    /// config file.
    pub fn set_preshared_key(&self) -> String {
        let out = Command::new("wg").arg("genpsk").output().unwrap();
        assert!(out.status.success());
        let psk = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let psk_file = self.dir.path().join("psk");
        std::fs::write(&psk_file, format!("{psk}\n")).unwrap();
        let status = self
            .srv
            .command("wg")
            .args(["set", self.wg.ifname(), "peer", &self.keys.public_key])
            .arg("preshared-key")
            .arg(&psk_file)
            .status()
            .unwrap();
        assert!(status.success(), "wg set preshared-key failed");
        psk
    }

    /// Writes postern's wg-quick file (`wg0.conf`) with `address` on the interface and
    /// `allowed_ips` for wireguard-go's peer section; `extra` goes into the peer section.
    pub fn write_config(&self, address: &str, allowed_ips: &str, extra: &str) -> PathBuf {
        let config = self.dir.path().join("wg0.conf");
        std::fs::write(
            &config,
            format!(
                "[Interface]\nPrivateKey = {}\nAddress = {address}\n\n[Peer]\nPublicKey = {}\n{extra}AllowedIPs = {allowed_ips}\nEndpoint = {ENDPOINT}\n",
                self.keys.private_key,
                self.wg.public_key()
            ),
        )
        .unwrap();
        config
    }

    /// Starts `postern wg up CONFIG ARGS...` in "cli"; its log is `postern.log`.
    pub fn spawn_postern(&self, config: &Path, args: &[&str]) -> (LabProcess, PathBuf) {
        let log = self.dir.path().join("postern.log");
        let mut argv = vec![
            env!("CARGO_BIN_EXE_postern"),
            "wg",
            "up",
            config.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        (self.cli.spawn(&argv, &log).unwrap(), log)
    }

    /// Waits (up to 10 s) until postern logs that it is ready: its device, forwards and
    /// proxy are up.
    pub fn wait_ready(&self, postern: &mut LabProcess, log: &Path) {
        let ready = wait_until(Duration::from_secs(10), || {
            postern.check_running().is_ok()
                && std::fs::read_to_string(log).is_ok_and(|t| t.contains(" ready"))
        });
        assert!(
            ready,
            "postern did not become ready\n{}",
            self.logs(postern)
        );
    }

    /// A failure message with both daemons' logs.
    pub fn logs(&self, postern: &LabProcess) -> String {
        format!(
            "postern log:\n{}\nwireguard-go log:\n{}",
            postern.log_tail(),
            self.wg.log_tail()
        )
    }
}

/// A TCP echo server in `ns` on `addr` (each connection: echo until EOF, then half-close).
pub fn spawn_tcp_echo(ns: &Netns, addr: SocketAddr) {
    let listener = ns.run_in(move || TcpListener::bind(addr)).unwrap().unwrap();
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
}

/// A UDP echo server in `ns` on `addr`.
pub fn spawn_udp_echo(ns: &Netns, addr: SocketAddr) {
    let socket = ns.run_in(move || UdpSocket::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
}

/// A minimal HTTP/1.1 server in `ns` on `addr`: every request gets `body` and the
/// connection is closed.
pub fn spawn_http_server(ns: &Netns, addr: SocketAddr, body: Vec<u8>) {
    let listener = ns.run_in(move || TcpListener::bind(addr)).unwrap().unwrap();
    let body = std::sync::Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let body = std::sync::Arc::clone(&body);
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
}

/// Pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// What an echo transfer saw: bytes sent, bytes received, and the SHA-256 of each.
#[derive(Debug)]
pub struct Echoed {
    pub sent: usize,
    pub received: usize,
    pub sent_hash: Vec<u8>,
    pub received_hash: Vec<u8>,
}

impl Echoed {
    /// Panics unless `total` bytes went out and the same bytes came back.
    pub fn assert_complete(&self, total: usize, logs: impl FnOnce() -> String) {
        assert_eq!(self.sent, total);
        assert_eq!(self.received, total, "{}", logs());
        assert_eq!(
            self.sent_hash, self.received_hash,
            "the echoed bytes differ from those sent"
        );
    }
}

/// Connects to `addr` (retrying for up to 10 s while nothing listens yet), sends `total`
/// pseudo-random bytes while reading the echo, and returns what it saw. Run it inside the
/// client's namespace ([`Netns::run_in`]).
pub fn echo_transfer(addr: SocketAddr, total: usize) -> Result<Echoed, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("cannot connect to {addr}: {e}")),
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
    Ok(Echoed {
        sent,
        received,
        sent_hash,
        received_hash: hash.finalize().to_vec(),
    })
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM must end postern cleanly, with `last_line` in its log.
pub fn stop(postern: &mut LabProcess, log: &Path, last_line: &str) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(postern.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = wait_until(Duration::from_secs(5), || postern.check_running().is_err());
    assert!(
        stopped,
        "postern did not stop within 5 s of SIGTERM:\n{}",
        postern.log_tail()
    );
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(text.contains(last_line), "{text}");
}

//! A stock WireGuard peer: Debian's `wireguard-go` (userspace, on `/dev/net/tun`) inside a
//! network namespace, configured with `wg` — the interop partner for Postern's node.
//!
//! ```no_run
//! # fn main() -> Result<(), postern_lab::LabError> {
//! use postern_lab::wireguard_go::{WgPeer, WireguardGo};
//! # let (ns_a, ns_b): (postern_lab::netns::Netns, postern_lab::netns::Netns) = todo!();
//! // The responder first: an initiation that reaches an unconfigured peer is lost and
//! // wireguard-go retries only after 5 s.
//! let b = WireguardGo::start(&ns_b, "198.19.200.2/24", 51821)?;
//! let a = WireguardGo::start(&ns_a, "198.19.200.1/24", 51820)?;
//! b.set_peer(&WgPeer::new(a.public_key(), &["198.19.200.1/32"]))?;
//! a.set_peer(&WgPeer {
//!     endpoint: Some("198.18.200.2:51821".parse().unwrap()),
//!     persistent_keepalive: Some(25),
//!     ..WgPeer::new(b.public_key(), &["198.19.200.2/32"])
//! })?;
//! # Ok(()) }
//! ```
//!
//! Gotchas this module takes care of:
//! - The UAPI socket `/var/run/wireguard/IFNAME.sock` is a filesystem path shared by all
//!   namespaces: interface names are machine-unique ([`crate::netns::short_unique_name`]).
//! - `wireguard-go -f` stays in the foreground, so the lab owns its pid; it is killed on drop.
//! - Never run `wireguard-go -h`: this version takes `-h` as an interface name.
//! - `wg setconf`/`wg set` take only wg(8) keys; the address and MTU are set with `ip`.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::netns::{Netns, short_unique_name};
use crate::tools::{find_program, poll_until, run};
use crate::{LabError, LabProcess};

/// The MTU wireguard-go defaults to; pinned explicitly so peers agree.
pub const MTU: u32 = 1420;

/// A WireGuard key pair, base64 as `wg` prints it. `Debug` hides the private key.
#[derive(Clone)]
pub struct WgKeyPair {
    /// The private key (base64). Keep it out of logs.
    pub private_key: String,
    /// The public key (base64).
    pub public_key: String,
}

impl std::fmt::Debug for WgKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgKeyPair")
            .field("private_key", &"<redacted>")
            .field("public_key", &self.public_key)
            .finish()
    }
}

impl WgKeyPair {
    /// Generates a key pair with `wg genkey` and `wg pubkey`.
    ///
    /// Fails if `wg` (wireguard-tools) is missing.
    pub fn generate() -> Result<Self, LabError> {
        let wg = find_program("wg")?;
        let private_key = run("wg genkey", Command::new(&wg).arg("genkey"))?
            .trim()
            .to_owned();
        let public_key = public_key_of(&private_key)?;
        Ok(Self {
            private_key,
            public_key,
        })
    }
}

/// The public key (base64) of a base64 private key, computed by `wg pubkey`.
pub fn public_key_of(private_key: &str) -> Result<String, LabError> {
    use std::io::Write;
    let wg = find_program("wg")?;
    let mut child = Command::new(wg)
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| LabError::io("running wg pubkey", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{private_key}\n").as_bytes())
            .map_err(|e| LabError::io("feeding wg pubkey", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io("running wg pubkey", e))?;
    if !out.status.success() {
        return Err(LabError::Command {
            what: "deriving a public key".into(),
            command: "wg pubkey".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One `[Peer]` of a WireGuard interface, for [`WireguardGo::set_peer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    /// The peer's public key (base64).
    pub public_key: String,
    /// Allowed IPs in CIDR form, e.g. `198.19.200.2/32`.
    pub allowed_ips: Vec<String>,
    /// Where to send to first; `None` lets the peer's first handshake teach it (roaming).
    pub endpoint: Option<SocketAddr>,
    /// Keepalive interval in seconds (25 keeps NAT mappings alive).
    pub persistent_keepalive: Option<u16>,
}

impl WgPeer {
    /// A peer with no endpoint and no keepalive.
    pub fn new(public_key: &str, allowed_ips: &[&str]) -> Self {
        Self {
            public_key: public_key.to_owned(),
            allowed_ips: allowed_ips.iter().map(|s| (*s).to_owned()).collect(),
            endpoint: None,
            persistent_keepalive: None,
        }
    }
}

/// A running `wireguard-go` interface in a namespace; killed on drop (which removes its TUN
/// device and UAPI socket).
#[derive(Debug)]
pub struct WireguardGo {
    process: LabProcess,
    netns: String,
    ifname: String,
    keys: WgKeyPair,
    listen_port: u16,
    dir: tempfile::TempDir,
}

impl WireguardGo {
    /// Starts `wireguard-go -f IFNAME` in `netns` with a fresh key pair, listening on UDP
    /// `listen_port`, with `address` (CIDR, e.g. `198.19.200.1/24`) on the interface, MTU
    /// [`MTU`], and the link up. Waits (up to 10 s) for its UAPI socket.
    ///
    /// Fails if wireguard-go or wg are missing (run `scripts/install-deps`), if not root, or
    /// if a configuration command fails.
    pub fn start(netns: &Netns, address: &str, listen_port: u16) -> Result<Self, LabError> {
        crate::tools::require_root("wireguard-go (TUN device in a namespace)")?;
        let keys = WgKeyPair::generate()?;
        Self::start_with_keys(netns, address, listen_port, keys)
    }

    /// Like [`WireguardGo::start`] with a given key pair (e.g. to pin a public key a test
    /// has already handed to the system under test).
    pub fn start_with_keys(
        netns: &Netns,
        address: &str,
        listen_port: u16,
        keys: WgKeyPair,
    ) -> Result<Self, LabError> {
        let binary = find_program("wireguard-go")?;
        find_program("wg")?;
        let ifname = short_unique_name("wg");
        let dir = tempfile::Builder::new()
            .prefix("postern-lab-wg-")
            .tempdir()
            .map_err(|e| LabError::io("creating the wireguard-go temp dir", e))?;
        let mut cmd = netns.command(&binary.to_string_lossy());
        cmd.args(["-f", &ifname]).env("LOG_LEVEL", "verbose");
        let mut process = LabProcess::spawn(
            &format!("wireguard-go {ifname}"),
            cmd,
            &dir.path().join(format!("{ifname}.log")),
        )?;
        let socket = uapi_socket(&ifname);
        let log = process.log_path().to_owned();
        poll_until(
            &format!("wireguard-go {ifname} UAPI socket"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                process.check_running()?;
                Ok(socket.exists().then_some(()))
            },
            || format!("check its log:\n{}", crate::tools::log_tail(&log)),
        )?;
        let peer = Self {
            process,
            netns: netns.name().to_owned(),
            ifname,
            keys,
            listen_port,
            dir,
        };
        let key_file = peer.write_private_key()?;
        peer.wg(&[
            "set",
            &peer.ifname,
            "private-key",
            &key_file.to_string_lossy(),
            "listen-port",
            &listen_port.to_string(),
        ])?;
        peer.ip(&["addr", "add", address, "dev", &peer.ifname])?;
        peer.ip(&["link", "set", &peer.ifname, "mtu", &MTU.to_string(), "up"])?;
        Ok(peer)
    }

    /// Adds or updates a peer (`wg set IF peer ...`).
    pub fn set_peer(&self, peer: &WgPeer) -> Result<(), LabError> {
        let allowed = peer.allowed_ips.join(",");
        let mut args = vec![
            "set".to_owned(),
            self.ifname.clone(),
            "peer".to_owned(),
            peer.public_key.clone(),
            "allowed-ips".to_owned(),
            allowed,
        ];
        if let Some(endpoint) = peer.endpoint {
            args.push("endpoint".to_owned());
            args.push(endpoint.to_string());
        }
        if let Some(seconds) = peer.persistent_keepalive {
            args.push("persistent-keepalive".to_owned());
            args.push(seconds.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.wg(&args).map(drop)
    }

    /// Removes a peer by public key.
    pub fn remove_peer(&self, public_key: &str) -> Result<(), LabError> {
        self.wg(&["set", &self.ifname, "peer", public_key, "remove"])
            .map(drop)
    }

    /// `wg show IF dump`: the interface line, then one tab-separated line per peer (public
    /// key, preshared key, endpoint, allowed ips, latest handshake, rx, tx, keepalive).
    pub fn dump(&self) -> Result<String, LabError> {
        self.wg(&["show", &self.ifname, "dump"])
    }

    /// The interface name (machine-unique, at most 15 characters).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// This peer's public key (base64).
    pub fn public_key(&self) -> &str {
        &self.keys.public_key
    }

    /// This peer's key pair.
    pub fn keys(&self) -> &WgKeyPair {
        &self.keys
    }

    /// The UDP port it listens on.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Its UAPI socket, `/var/run/wireguard/IFNAME.sock` (speak the cross-platform UAPI
    /// there, e.g. `get=1\n\n`).
    pub fn uapi_socket(&self) -> PathBuf {
        uapi_socket(&self.ifname)
    }

    /// The end of wireguard-go's log (verbose level).
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    fn wg(&self, args: &[&str]) -> Result<String, LabError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "wg"]).args(args);
        run(
            &format!("wg {} in {}", args.join(" "), self.netns),
            &mut cmd,
        )
    }

    fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.netns]).args(args);
        run(
            &format!("ip {} in {}", args.join(" "), self.netns),
            &mut cmd,
        )
    }

    fn write_private_key(&self) -> Result<PathBuf, LabError> {
        use std::io::Write;
        let path = self.dir.path().join("private.key");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| LabError::io("writing the private key file", e))?;
        file.write_all(self.keys.private_key.as_bytes())
            .map_err(|e| LabError::io("writing the private key file", e))?;
        Ok(path)
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        self.process.stop();
        // wireguard-go removes its socket on a clean exit; after a SIGKILL it may be left.
        let _ = std::fs::remove_file(self.uapi_socket());
    }
}

fn uapi_socket(ifname: &str) -> PathBuf {
    PathBuf::from("/var/run/wireguard").join(format!("{ifname}.sock"))
}

//! Kernel mode: a WireGuard interface backed by a TUN device (Linux, root only).
//!
//! [`KernelTunnel::start`] does what `wg-quick up` does with a wireguard-go interface, with
//! Postern's own engine in place of wireguard-go:
//!
//! - creates a TUN device (through the `tun-rs` crate), gives it the `[Interface]`'s
//!   `Address` lines and `MTU`, and brings it up;
//! - routes every peer's `AllowedIPs` through it (`ip route replace NET dev NAME`, as
//!   wg-quick does; a default route becomes a full tunnel with wg-quick's policy routing,
//!   the WireGuard socket's datagrams marked so they bypass it; see [`routes`]);
//! - starts the [UDP shell](crate::udp) with the `[Peer]` sections, and two tasks that move
//!   IP packets between the device and the engine in batches.
//!
//! The host's own kernel TCP/IP stack then carries every application's traffic: no
//! forwards or proxies are needed, unlike the [userspace mode](crate::userspace).
//!
//! # Batches and offload
//!
//! The device is opened with `IFF_VNET_HDR` and TCP (and, where the kernel has it, UDP)
//! segmentation offload, as wireguard-go does since 2023: the kernel hands the reader
//! 64 KiB TCP super-packets, which are split into MTU-sized IP packets (one read, dozens of
//! packets), and the writer coalesces the decrypted packets of each TCP flow back into
//! super-packets (GRO), so the kernel's TCP stack sees a few large packets instead of
//! many small ones. If the kernel refuses offload, the device works packet by packet.
//!
//! Backpressure: the reader waits for room in the engine's bounded channel (a full channel
//! makes the TUN queue fill, and the kernel then drops, as on a busy NIC); the engine never
//! waits for the writer (it drops and counts a batch when the writer falls behind).
//!
//! # Lifetime
//!
//! The device is not persistent: it and its routes vanish when the tunnel is dropped or
//! [`KernelTunnel::shutdown`] returns, and also if the process dies. A full tunnel's two
//! policy-routing rules are removed by [`KernelTunnel::shutdown`] (and replaced, not
//! duplicated, by the next start if the process died).

mod pump;
pub mod routes;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ipnet::IpNet;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::udp::{ShellCounters, UdpEngine};
use crate::userspace::{DEFAULT_MTU, TunnelError, log_events, spawn_udp_engine};
use crate::wg_config::WgConfig;

/// The device name used when none is given and the configuration file's name is not a
/// valid interface name.
pub const DEFAULT_NAME: &str = "postern0";

/// Longest Linux interface name (`IFNAMSIZ` less the terminating NUL).
pub const MAX_NAME_LEN: usize = 15;

/// The Linux capability needed to create TUN devices and change routes.
const CAP_NET_ADMIN: u32 = 12;

/// Why a kernel-mode tunnel could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunError {
    /// The process may not create network devices.
    #[error(
        "creating the TUN device `{name}` needs root (CAP_NET_ADMIN): run `postern wg up --tun` as root, or drop --tun to run in userspace mode without root"
    )]
    NotPermitted {
        /// The device name asked for.
        name: String,
    },
    /// The interface name is not one Linux accepts.
    #[error(
        "`{name}` is not a valid interface name: use 1 to 15 letters, digits, `_`, `-`, `.`, `=` or `+`"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The device could not be created or configured.
    #[error("cannot set up the TUN device `{name}`: {source}")]
    Device {
        /// The device name.
        name: String,
        /// The system's error.
        source: io::Error,
    },
    /// An `AllowedIPs` route could not be installed, or is not supported.
    #[error(transparent)]
    Route(#[from] routes::RouteError),
    /// The engine or its UDP socket could not start (see [`TunnelError`]).
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
}

/// How to create the device.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TunOptions {
    /// The device name; `None` uses [`DEFAULT_NAME`].
    pub name: Option<String>,
    /// Turn segmentation offload off (packet-by-packet reads and writes). On by default;
    /// off is for measuring what offload brings, or for kernels that misbehave with it.
    pub no_offload: bool,
}

impl TunOptions {
    /// Options for a device called `name` (`None`: [`DEFAULT_NAME`]), offload on.
    pub fn new(name: Option<String>) -> Self {
        Self {
            name,
            no_offload: false,
        }
    }
}

/// A running kernel-mode WireGuard interface; see the [module docs](self).
///
/// Create it with [`KernelTunnel::start`] inside a tokio runtime. Dropping it stops the
/// tasks and removes the device without waiting; [`KernelTunnel::shutdown`] waits.
#[derive(Debug)]
pub struct KernelTunnel {
    name: String,
    offload: bool,
    routes: Vec<IpNet>,
    full_tunnel: Option<routes::FullTunnel>,
    local_addr: SocketAddr,
    counters: Arc<ShellCounters>,
    cancel: CancellationToken,
    engine_task: Option<JoinHandle<io::Result<()>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl KernelTunnel {
    /// Creates the TUN device described by `config` and `options`, routes the peers'
    /// allowed IPs through it and starts moving packets.
    ///
    /// Fails with [`TunError::NotPermitted`] without CAP_NET_ADMIN (root), with
    /// [`TunError::Route`] for a route or full-tunnel rule `ip` refuses (see [`routes`]),
    /// and with the other variants for a device, socket or peer problem.
    /// Nothing is left behind on failure: the device goes with the error.
    pub async fn start(config: &WgConfig, options: &TunOptions) -> Result<Self, TunError> {
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        if !is_valid_name(&name) {
            return Err(TunError::InvalidName { name });
        }
        let plan = routes::plan(config);
        if !has_net_admin() {
            return Err(TunError::NotPermitted { name });
        }
        let mtu = config.interface.mtu.unwrap_or(DEFAULT_MTU);
        let device = create_device(&name, config, mtu, !options.no_offload)?;
        let offload = device.tcp_gso();
        for net in &plan.routes {
            routes::add(&name, *net).await?;
        }
        let mark = plan.full_tunnel().then_some(routes::FULL_TUNNEL_MARK);
        let udp = spawn_udp_engine(config, mark, &tokio::runtime::Handle::current()).await?;
        // After the socket is marked: from here on everything unmarked enters the tunnel.
        let full_tunnel = routes::FullTunnel::install(&name, &plan).await?;
        let UdpEngine {
            outbound,
            inbound,
            events,
            local_addr,
            task: engine_task,
            counters,
            ..
        } = udp;
        let device = Arc::new(device);
        let cancel = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(pump::device_to_engine(
                Arc::clone(&device),
                outbound,
                usize::from(mtu),
                cancel.clone(),
            )),
            tokio::spawn(pump::engine_to_device(device, inbound, cancel.clone())),
            tokio::spawn(log_events(events, cancel.clone())),
        ];
        tracing::info!(
            device = %name,
            listen = %local_addr,
            addresses = ?config.interface.addresses,
            routes = ?plan.routes,
            full_tunnel = plan.full_tunnel(),
            mtu,
            offload,
            peers = config.peers.len(),
            "kernel-mode WireGuard tunnel started"
        );
        Ok(Self {
            name,
            offload,
            routes: plan.routes,
            full_tunnel,
            local_addr,
            counters,
            cancel,
            engine_task: Some(engine_task),
            tasks,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device runs with segmentation offload (large reads and writes).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// The routes installed through the device (a full tunnel's default route aside).
    pub fn routes(&self) -> &[IpNet] {
        &self.routes
    }

    /// Whether a default route sends everything else through the device too.
    pub fn full_tunnel(&self) -> bool {
        self.full_tunnel.is_some()
    }

    /// The local address of the WireGuard UDP socket (its port is the one peers reach).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops moving packets, closes the device (its addresses and routes go with it) and
    /// waits for the engine task to end. Returns the engine's socket error if it had failed.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.cancel.cancel();
        if let Some(full_tunnel) = self.full_tunnel.take() {
            full_tunnel.remove().await;
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let result = match self.engine_task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            None => Ok(()),
        };
        let c = &self.counters;
        tracing::info!(
            device = %self.name,
            datagrams_in = c.datagrams_in.load(Ordering::Relaxed),
            datagrams_out = c.datagrams_out.load(Ordering::Relaxed),
            inbound_dropped = c.inbound_dropped.load(Ordering::Relaxed),
            send_errors = c.send_errors.load(Ordering::Relaxed),
            "kernel-mode WireGuard tunnel stopped"
        );
        result
    }
}

impl Drop for KernelTunnel {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The device name for a configuration file: its stem, as wg-quick names `wg0.conf`'s
/// interface `wg0`, when that is a valid interface name; otherwise [`DEFAULT_NAME`].
pub fn name_for_config_file(path: &std::path::Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| is_valid_name(s))
        .map_or_else(|| DEFAULT_NAME.to_owned(), str::to_owned)
}

/// Whether Linux accepts `name` as an interface name (wg-quick's rule: 1 to 15 of
/// `[a-zA-Z0-9_=+.-]`).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b'+' | b'.' | b'-'))
}

/// Whether this process holds CAP_NET_ADMIN (root normally does), read from
/// `/proc/self/status`. If that cannot be read, assume yes and let the device creation
/// report the error.
fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    cap_eff_has(&status, CAP_NET_ADMIN).unwrap_or(true)
}

/// Whether the `CapEff:` line of a `/proc/PID/status` text has capability bit `cap`.
fn cap_eff_has(status: &str, cap: u32) -> Option<bool> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let mask = u64::from_str_radix(line.trim(), 16).ok()?;
    Some(mask & (1u64 << cap) != 0)
}

/// Creates and configures the device: addresses, MTU, offload, up.
fn create_device(
    name: &str,
    config: &WgConfig,
    mtu: u16,
    offload: bool,
) -> Result<AsyncDevice, TunError> {
    let error = |source: io::Error| {
        if source.kind() == io::ErrorKind::PermissionDenied {
            TunError::NotPermitted {
                name: name.to_owned(),
            }
        } else {
            TunError::Device {
                name: name.to_owned(),
                source,
            }
        }
    };
    let mut builder = DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .offload(offload)
        .enable(true);
    let mut extra_v4 = Vec::new();
    for net in &config.interface.addresses {
        match net {
            IpNet::V4(v4) => {
                if extra_v4.is_empty() {
                    builder = builder.ipv4(v4.addr(), v4.prefix_len(), None);
                }
                extra_v4.push(*v4);
            }
            IpNet::V6(v6) => builder = builder.ipv6(v6.addr(), v6.prefix_len()),
        }
    }
    let device = builder.build_async().map_err(error)?;
    // The builder holds one IPv4 address; the others are added to the live device.
    for v4 in extra_v4.iter().skip(1) {
        device
            .add_address_v4(v4.addr(), v4.prefix_len())
            .map_err(error)?;
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn device_is_named_after_the_config_file_as_wg_quick_does() {
        assert_eq!(
            name_for_config_file(Path::new("/etc/wireguard/wg0.conf")),
            "wg0"
        );
        assert_eq!(
            name_for_config_file(Path::new("office-vpn.conf")),
            "office-vpn"
        );
        assert_eq!(
            name_for_config_file(Path::new("a-name-longer-than-fifteen.conf")),
            DEFAULT_NAME
        );
        assert_eq!(
            name_for_config_file(Path::new("bad name.conf")),
            DEFAULT_NAME
        );
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        assert!(is_valid_name("wg0"));
        assert!(is_valid_name("a.b-c_d=e+f"));
        assert!(is_valid_name("fifteen-chars-x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("sixteen-chars-xx"));
        assert!(!is_valid_name("wg/0"));
        assert!(!is_valid_name("wg 0"));
    }

    #[test]
    fn net_admin_is_read_from_the_effective_capabilities() {
        let root = "Name:\tpostern\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff_has(root, CAP_NET_ADMIN), Some(true));
        let user = "Name:\tpostern\nCapEff:\t0000000000000000\n";
        assert_eq!(cap_eff_has(user, CAP_NET_ADMIN), Some(false));
        let only_net_admin = "CapEff:\t0000000000001000\n";
        assert_eq!(cap_eff_has(only_net_admin, CAP_NET_ADMIN), Some(true));
        assert_eq!(cap_eff_has("Name:\tx\n", CAP_NET_ADMIN), None);
    }
}

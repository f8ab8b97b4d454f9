//! `postern wg`: plain WireGuard from a wg-quick configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Args, Subcommand};
use postern_node::tun::{self, KernelTunnel, TunError, TunOptions};
use postern_node::userspace::UserspaceTunnel;
use postern_node::wg_config::WgConfig;

use crate::{EXIT_FAILURE, EXIT_USAGE};

/// `postern wg ...`
#[derive(Debug, Subcommand)]
pub(crate) enum WgCommand {
    /// Bring up a WireGuard interface from a wg-quick configuration file.
    ///
    /// By default the interface lives in userspace: no root, no TUN device. Its addresses
    /// (the [Interface] Address lines) exist only inside postern, and host programs reach
    /// the tunnel through --forward and --socks5. Runs until interrupted (Ctrl-C or
    /// SIGTERM).
    ///
    /// With --tun (root only) it is a kernel interface instead, as wg-quick makes one: a
    /// TUN device with the Address lines and the MTU, brought up, with a route through it
    /// for every peer's AllowedIPs; every program on the host uses it directly. The device
    /// and its routes disappear when postern exits. A default route (AllowedIPs 0.0.0.0/0
    /// or ::/0) makes a full tunnel as wg-quick makes one: the default route goes in
    /// routing table 51820, a rule sends everything not marked 51820 there, and
    /// WireGuard's own datagrams carry that mark so they still leave by the normal routes;
    /// the rules are removed when postern exits.
    ///
    /// The file is parsed as wg-quick does, except that PreUp/PostUp/PreDown/PostDown,
    /// Table, SaveConfig and FwMark are refused. Errors name FILE:LINE. Private keys are
    /// never printed.
    ///
    /// In userspace mode, POSTERN_TCP_PACING=on makes the tunnel's TCP senders pace their
    /// segments over the round trip instead of sending window-sized bursts (off by
    /// default; see docs/benchmarks.md).
    ///
    /// Examples:
    ///   postern wg up wg0.conf --forward tcp:127.0.0.1:8080:10.0.0.1:80 --socks5 127.0.0.1:1080
    ///   sudo postern wg up /etc/wireguard/wg0.conf --tun
    Up(UpArgs),
}

/// Arguments of `postern wg up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The wg-quick configuration file (e.g. /etc/wireguard/wg0.conf).
    config: PathBuf,

    /// Forward a host port into the tunnel:
    /// PROTO:LISTEN_ADDR:LISTEN_PORT:REMOTE_IP:REMOTE_PORT, PROTO being tcp or udp.
    /// IPv6 addresses go in brackets: tcp:[::1]:8080:[fd00::1]:80. Repeatable.
    #[arg(long = "forward", value_name = "SPEC", conflicts_with = "tun")]
    forwards: Vec<ForwardSpec>,

    /// Run a SOCKS5 proxy (no authentication, CONNECT to IP addresses) at ADDR, opening
    /// connections inside the tunnel. Bind it to loopback, e.g. 127.0.0.1:1080.
    #[arg(long, value_name = "ADDR", conflicts_with = "tun")]
    socks5: Option<SocketAddr>,

    /// Kernel mode (root only): create a TUN device called NAME (default: the config
    /// file's name without .conf, as wg-quick does, e.g. wg0; else postern0), give it the
    /// interface's addresses and MTU, and route the peers' AllowedIPs through it.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    tun: Option<String>,

    /// With --tun: read and write the device packet by packet, without segmentation
    /// offload (for comparing; offload is faster).
    #[arg(long, requires = "tun")]
    no_offload: bool,
}

/// Which transport a forward carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForwardProto {
    Tcp,
    Udp,
}

/// One `--forward` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardSpec {
    proto: ForwardProto,
    listen: SocketAddr,
    remote: SocketAddr,
}

impl FromStr for ForwardSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const SHAPE: &str = "expected PROTO:LISTEN_ADDR:LISTEN_PORT:REMOTE_IP:REMOTE_PORT, e.g. tcp:127.0.0.1:8080:10.0.0.1:80";
        let (proto, rest) = s.split_once(':').ok_or_else(|| format!("`{s}`: {SHAPE}"))?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => ForwardProto::Tcp,
            "udp" => ForwardProto::Udp,
            other => return Err(format!("`{other}` is not a protocol: use tcp or udp")),
        };
        let (listen, rest) =
            split_socket_addr(rest).map_err(|e| format!("listen address: {e}; {SHAPE}"))?;
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("`{s}`: no remote address; {SHAPE}"))?;
        let (remote, rest) =
            split_socket_addr(rest).map_err(|e| format!("remote address: {e}; {SHAPE}"))?;
        if !rest.is_empty() {
            return Err(format!("`{s}`: unexpected `{rest}` at the end; {SHAPE}"));
        }
        Ok(Self {
            proto,
            listen,
            remote,
        })
    }
}

/// Takes `IP:PORT` or `[IPv6]:PORT` from the start of `s`; returns it and what follows.
fn split_socket_addr(s: &str) -> Result<(SocketAddr, &str), String> {
    let (host, after_host) = if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: `[` without `]`"))?;
        (host, after)
    } else {
        match s.find(':') {
            Some(i) => s.split_at(i),
            None => return Err(format!("`{s}`: no port")),
        }
    };
    let ip = host
        .parse::<std::net::IpAddr>()
        .map_err(|_| format!("`{host}` is not an IP address"))?;
    let after_colon = after_host
        .strip_prefix(':')
        .ok_or_else(|| format!("`{s}`: no port after `{host}`"))?;
    let end = after_colon.find(':').unwrap_or(after_colon.len());
    let (port, rest) = after_colon.split_at(end);
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("`{port}` is not a port (0 to 65535)"))?;
    Ok((SocketAddr::new(ip, port), rest))
}

/// Runs a `postern wg` subcommand.
pub(crate) fn run(command: WgCommand) -> ExitCode {
    match command {
        WgCommand::Up(args) => up(args),
    }
}

fn up(args: UpArgs) -> ExitCode {
    let config = match WgConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("postern: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match args.tun.clone() {
        Some(name) => runtime.block_on(up_kernel(config, args, name)),
        None => runtime.block_on(up_userspace(config, args)),
    }
}

async fn up_kernel(config: WgConfig, args: UpArgs, name: String) -> ExitCode {
    let name = if name.is_empty() {
        tun::name_for_config_file(&args.config)
    } else {
        name
    };
    let mut options = TunOptions::new(Some(name));
    options.no_offload = args.no_offload;
    let tunnel = match KernelTunnel::start(&config, &options).await {
        Ok(tunnel) => tunnel,
        Err(e @ TunError::InvalidName { .. }) => {
            eprintln!("{}: {e}", args.config.display());
            return ExitCode::from(EXIT_USAGE);
        }
        Err(TunError::Tunnel(e)) => {
            eprintln!("{}: {e}", args.config.display());
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    tracing::info!(device = tunnel.name(), "ready");
    wait_for_signal().await;
    tracing::info!("shutting down");
    match tunnel.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: the WireGuard socket failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn up_userspace(config: WgConfig, args: UpArgs) -> ExitCode {
    let tunnel = match UserspaceTunnel::start(&config).await {
        Ok(tunnel) => tunnel,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for forward in &args.forwards {
        let bound = match forward.proto {
            ForwardProto::Tcp => tunnel.forward_tcp(forward.listen, forward.remote).await,
            ForwardProto::Udp => tunnel.forward_udp(forward.listen, forward.remote).await,
        };
        if let Err(e) = bound {
            eprintln!("postern: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    if let Some(addr) = args.socks5
        && let Err(e) = tunnel.socks5(addr).await
    {
        eprintln!("postern: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    tracing::info!("ready");
    wait_for_signal().await;
    tracing::info!("shutting down");
    match tunnel.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: the WireGuard socket failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops postern");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs_parse_both_families() {
        let spec: ForwardSpec = "tcp:127.0.0.1:8080:10.0.0.1:80".parse().unwrap();
        assert_eq!(spec.proto, ForwardProto::Tcp);
        assert_eq!(spec.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(spec.remote, "10.0.0.1:80".parse().unwrap());
        let spec: ForwardSpec = "UDP:[::1]:53:[fd00::1]:5353".parse().unwrap();
        assert_eq!(spec.proto, ForwardProto::Udp);
        assert_eq!(spec.listen, "[::1]:53".parse().unwrap());
        assert_eq!(spec.remote, "[fd00::1]:5353".parse().unwrap());
    }

    #[test]
    fn forward_spec_errors_say_what_is_wrong() {
        let e = "sctp:1.2.3.4:1:5.6.7.8:2"
            .parse::<ForwardSpec>()
            .unwrap_err();
        assert!(e.contains("use tcp or udp"), "{e}");
        let e = "tcp:127.0.0.1:8080".parse::<ForwardSpec>().unwrap_err();
        assert!(e.contains("no remote address"), "{e}");
        let e = "tcp:localhost:8080:10.0.0.1:80"
            .parse::<ForwardSpec>()
            .unwrap_err();
        assert!(e.contains("`localhost` is not an IP address"), "{e}");
        let e = "tcp:127.0.0.1:99999:10.0.0.1:80"
            .parse::<ForwardSpec>()
            .unwrap_err();
        assert!(e.contains("`99999` is not a port"), "{e}");
        let e = "tcp:127.0.0.1:1:10.0.0.1:80:9"
            .parse::<ForwardSpec>()
            .unwrap_err();
        assert!(e.contains("unexpected `:9`"), "{e}");
    }
}

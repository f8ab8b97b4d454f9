//! The NAT lab: a small simulated internet made of network namespaces.
//!
//! ```text
//!                     <p>-inet (bridge br0, 198.18.0.1 = the "ISP" router)
//!     ┌──────────┬──────────┬───────────┴────┬───────────────────┐
//!   coord      relay      ingress         routerA (NAT)        routerB (NAT)
//!   .10        .20        .30             wan 198.18.0.101     wan 198.18.0.102
//!                                         lan 198.19.1.1/24    lan 198.19.2.1/24
//!                                          ├ homeA  .10         └ homeB 198.19.2.10
//!                                          └ homeA2 .11
//! ```
//!
//! The public segment is 198.18.0.0/24; the two home LANs sit behind their own NAT router,
//! each "easy" (plain `masquerade`: the source port is kept, so in practice an
//! endpoint-independent mapping) or "hard" (`masquerade fully-random`: a new port per
//! destination, a symmetric NAT), chosen by [`NatLabConfig`]. Routers forward only LAN to
//! WAN and replies (conntrack), so nothing reaches a home unsolicited. Only 198.18.0.0/15
//! is used. The root namespace is never touched.
//!
//! Every lab gets its own namespace names (`pl<pid>x<n>-<host>`), so tests run in parallel.
//! On drop every process in the lab's namespaces is killed and the namespaces are deleted;
//! each new lab first sweeps namespaces left by test processes that died.
//!
//! Needs root (CI runs as root); without it [`NatLab::start`] fails with
//! [`LabError::NotRoot`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::delay::{DelayForwarder, DelayProtocol};
use crate::netns::{Netns, sweep_stale_namespaces, unique_prefix};
use crate::tools::require_root;
use crate::{LabError, LabProcess};

/// Home A's router on its LAN (the homes' gateway).
const LAN_A: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
/// Home B's router on its LAN.
const LAN_B: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);

/// How a home's NAT router maps outgoing flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// `masquerade`: keeps the source port when free, so one local socket gets the same
    /// public endpoint towards every destination (endpoint-independent mapping, "cone").
    /// Hole punching between two easy homes works.
    Easy,
    /// `masquerade fully-random`: a new random public port per destination
    /// (endpoint-dependent, symmetric mapping). Direct paths to it need a relay.
    Hard,
}

/// Options for [`NatLab::start`].
#[derive(Debug, Clone, Copy)]
pub struct NatLabConfig {
    /// The NAT in front of home A (hosts [`Host::HomeA`], [`Host::HomeA2`]).
    pub home_a: NatKind,
    /// The NAT in front of home B ([`Host::HomeB`]).
    pub home_b: NatKind,
    /// Leave IPv6 enabled in the namespaces (link-local only; no IPv6 addresses or routes are
    /// set up). Off by default: no DAD or router solicitations in captures.
    pub ipv6: bool,
}

impl Default for NatLabConfig {
    /// Home A behind an easy NAT, home B behind a hard one, IPv6 off.
    fn default() -> Self {
        Self {
            home_a: NatKind::Easy,
            home_b: NatKind::Hard,
            ipv6: false,
        }
    }
}

/// A machine in the lab; each is its own network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The public segment's bridge and default router, 198.18.0.1.
    Internet,
    /// A public host meant for the coordination server, 198.18.0.10.
    Coord,
    /// A public host meant for the relay, 198.18.0.20.
    Relay,
    /// A public host meant for the ingress, 198.18.0.30.
    Ingress,
    /// Home A's NAT router: WAN 198.18.0.101, LAN 198.19.1.1.
    RouterA,
    /// Home B's NAT router: WAN 198.18.0.102, LAN 198.19.2.1.
    RouterB,
    /// A machine in home A, 198.19.1.10.
    HomeA,
    /// A second machine in home A, 198.19.1.11 (same LAN as [`Host::HomeA`]).
    HomeA2,
    /// A machine in home B, 198.19.2.10.
    HomeB,
}

impl Host {
    /// Every host, in the order they are built.
    pub const ALL: [Host; 9] = [
        Host::Internet,
        Host::Coord,
        Host::Relay,
        Host::Ingress,
        Host::RouterA,
        Host::RouterB,
        Host::HomeA,
        Host::HomeA2,
        Host::HomeB,
    ];

    /// The host's address: its public address for public hosts and routers (the WAN side),
    /// its LAN address for home machines.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Host::Internet => Ipv4Addr::new(198, 18, 0, 1),
            Host::Coord => Ipv4Addr::new(198, 18, 0, 10),
            Host::Relay => Ipv4Addr::new(198, 18, 0, 20),
            Host::Ingress => Ipv4Addr::new(198, 18, 0, 30),
            Host::RouterA => Ipv4Addr::new(198, 18, 0, 101),
            Host::RouterB => Ipv4Addr::new(198, 18, 0, 102),
            Host::HomeA => Ipv4Addr::new(198, 19, 1, 10),
            Host::HomeA2 => Ipv4Addr::new(198, 19, 1, 11),
            Host::HomeB => Ipv4Addr::new(198, 19, 2, 10),
        }
    }

    /// The address the rest of the world sees this host's traffic come from: the router's
    /// WAN address for home machines, the host's own address otherwise.
    pub fn public_addr(self) -> Ipv4Addr {
        match self {
            Host::HomeA | Host::HomeA2 => Host::RouterA.addr(),
            Host::HomeB => Host::RouterB.addr(),
            other => other.addr(),
        }
    }

    /// Short role name, used in namespace names.
    pub fn role(self) -> &'static str {
        match self {
            Host::Internet => "inet",
            Host::Coord => "coord",
            Host::Relay => "relay",
            Host::Ingress => "ingress",
            Host::RouterA => "natA",
            Host::RouterB => "natB",
            Host::HomeA => "homeA",
            Host::HomeA2 => "homeA2",
            Host::HomeB => "homeB",
        }
    }

    /// The interface that links this host to its upstream: `wan` on routers, `eth0` on
    /// public hosts and home machines, none on the internet bridge itself.
    fn uplink(self) -> Option<&'static str> {
        match self {
            Host::Internet => None,
            Host::RouterA | Host::RouterB => Some("wan"),
            _ => Some("eth0"),
        }
    }
}

/// A fault injected on a host's uplink with [`NatLab::set_link_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Drop this percentage (0 to 100) of packets, independently in each direction
    /// (nftables `numgen random mod 100 < N drop`).
    Loss {
        /// Share of packets dropped per direction, in percent.
        percent: u8,
    },
    /// Drop every UDP packet both ways (e.g. a UDP-hostile network: force the relay/TCP path).
    DropUdp,
    /// Drop every packet both ways (the link is cut).
    DropAll,
}

/// A running NAT lab; everything in it is removed on drop.
#[derive(Debug)]
pub struct NatLab {
    config: NatLabConfig,
    prefix: String,
    // Namespaces go first (killing their processes), then the temp dir with the logs.
    hosts: Hosts,
    state: tempfile::TempDir,
}

impl NatLab {
    /// Builds the lab (about half a second): namespaces, veths, bridges, addresses, routes and
    /// the routers' nftables NAT and filter rules. First sweeps stale namespaces left by dead
    /// test processes.
    ///
    /// Fails with [`LabError::NotRoot`] when not root, with [`LabError::MissingTool`] if `ip`,
    /// `nft` or `sysctl` are missing, or with the failing command's message.
    pub fn start(config: NatLabConfig) -> Result<Self, LabError> {
        require_root("the NAT lab (network namespaces, nftables)")?;
        crate::tools::find_program("ip")?;
        crate::tools::find_program("nft")?;
        sweep_stale_namespaces();
        let prefix = unique_prefix();
        let state = tempfile::Builder::new()
            .prefix(&format!("postern-lab-{prefix}-"))
            .tempdir()
            .map_err(|e| LabError::io("creating the lab's temp dir", e))?;
        let hosts = Hosts::build(&prefix, config)?;
        Ok(Self {
            config,
            prefix,
            hosts,
            state,
        })
    }

    /// The configuration the lab was built with.
    pub fn config(&self) -> NatLabConfig {
        self.config
    }

    /// The namespace name of `host`, for `ip netns exec NAME ...` by hand.
    pub fn namespace(&self, host: Host) -> &str {
        self.netns(host).name()
    }

    /// The [`Netns`] of `host`: for [`Netns::run_in`], [`Netns::command`] and friends.
    pub fn netns(&self, host: Host) -> &Netns {
        self.hosts.get(host)
    }

    /// A [`Command`] that runs `program` on `host`.
    pub fn command(&self, host: Host, program: &str) -> Command {
        self.netns(host).command(program)
    }

    /// Runs `args` (program first) on `host` and returns its standard output; fails with the
    /// exit status and standard error if it exits non-zero.
    pub fn output(&self, host: Host, args: &[&str]) -> Result<String, LabError> {
        self.netns(host).output(args)
    }

    /// Runs `args` on `host` and returns the full [`Output`] whatever the exit status, for
    /// checks that expect failure.
    pub fn try_output(&self, host: Host, args: &[&str]) -> Result<Output, LabError> {
        self.netns(host).try_output(args)
    }

    /// Starts a long-running program on `host`, killed when the returned [`LabProcess`] or
    /// the lab is dropped. Its output goes to a log file in the lab's temp dir
    /// ([`LabProcess::log_path`]).
    pub fn spawn(&self, host: Host, args: &[&str]) -> Result<LabProcess, LabError> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let program = args.first().copied().unwrap_or("process");
        let base = std::path::Path::new(program)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("process");
        let log = self
            .state
            .path()
            .join(format!("{}-{base}-{n}.log", host.role()));
        self.netns(host).spawn(args, &log)
    }

    /// Runs the closure on a thread inside `host`'s namespace; sockets made there stay there.
    /// See [`Netns::run_in`].
    pub fn run_in<T: Send + 'static>(
        &self,
        host: Host,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        self.netns(host).run_in(f)
    }

    /// Starts a [`DelayForwarder`] on `host`: it listens on `listen` there and relays to
    /// `target` with `delay` added in each direction. Clients on other hosts then talk to
    /// `listen` instead of `target` to see the extra latency.
    pub fn delay_forwarder(
        &self,
        host: Host,
        protocol: DelayProtocol,
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
    ) -> Result<DelayForwarder, LabError> {
        DelayForwarder::start_in(
            Some(self.netns(host).path()),
            protocol,
            listen,
            target,
            delay,
            None,
        )
    }

    /// Delays one UDP flow of a home on its router, in both directions, as a slow home link
    /// would: datagrams from the home's port `home_port` (any home machine) to `remote` are
    /// redirected (nftables `dnat` in the router's prerouting) to a [`DelayForwarder`] on the
    /// router, which sends them on to `remote` from the router's WAN address and the same
    /// port `home_port`, and hands the replies back (conntrack undoes the `dnat`, so the home
    /// sees them come from `remote`). Each direction is `delay` late; the peer sees the same
    /// public endpoint an easy NAT would have given the home (`wan:home_port`).
    ///
    /// Call it before the home sends anything to `remote`: a flow that conntrack already
    /// tracks keeps its old (undelayed) NAT. Only one home machine can use the delayed flow
    /// at a time. The delay lasts until the returned forwarder is dropped (after which the
    /// flow is cut, not restored). Fails for a host that is not a router, or with the
    /// failing command's message.
    pub fn delay_home_udp(
        &self,
        router: Host,
        home_port: u16,
        remote: SocketAddr,
        delay: Duration,
    ) -> Result<DelayForwarder, LabError> {
        let lan = match router {
            Host::RouterA => LAN_A,
            Host::RouterB => LAN_B,
            other => {
                return Err(LabError::Invalid(format!(
                    "{other:?} is not a NAT router: use Host::RouterA or Host::RouterB"
                )));
            }
        };
        let SocketAddr::V4(remote_v4) = remote else {
            return Err(LabError::Invalid(format!(
                "{remote} is not IPv4: the lab's homes reach the internet over IPv4 only"
            )));
        };
        let forwarder = DelayForwarder::start_in(
            Some(self.netns(router).path()),
            DelayProtocol::Udp,
            SocketAddr::from((lan, 0)),
            remote,
            delay,
            Some(SocketAddr::from((router.addr(), home_port))),
        )?;
        let listen = forwarder.local_addr();
        self.netns(router).nft(&format!(
            "table ip postern_lab_delay {{
  chain pre {{ type nat hook prerouting priority dstnat - 1; policy accept; }}
}}
add rule ip postern_lab_delay pre iifname \"br-lan\" udp sport {home_port} ip daddr {} udp dport {} dnat to {listen}
",
            remote_v4.ip(),
            remote_v4.port()
        ))?;
        Ok(forwarder)
    }

    /// Injects `fault` on `host`'s uplink (both directions), replacing any earlier fault
    /// there. On a router this hits everything the home sends or receives.
    pub fn set_link_fault(&self, host: Host, fault: LinkFault) -> Result<(), LabError> {
        let verdict = match fault {
            LinkFault::Loss { percent } if percent > 100 => {
                return Err(LabError::Invalid(format!(
                    "loss of {percent}%: give 0 to 100"
                )));
            }
            LinkFault::Loss { percent } => format!("numgen random mod 100 < {percent} drop"),
            LinkFault::DropUdp => "meta l4proto udp drop".to_owned(),
            LinkFault::DropAll => "drop".to_owned(),
        };
        let (inbound, outbound) = match host.uplink() {
            Some(dev) => (format!("iifname \"{dev}\" "), format!("oifname \"{dev}\" ")),
            None => (String::new(), String::new()),
        };
        self.clear_link_fault(host)?;
        // Postrouting sees every packet that leaves, forwarded or sent by the host itself;
        // an output chain as well would hit the host's own packets twice (e.g. a router's
        // delay forwarder, see `delay_home_udp`, would lose 1 - 0.95² of them at 5 %).
        self.netns(host).nft(&format!(
            "table inet postern_lab_fault {{
  chain pre {{ type filter hook prerouting priority -300; policy accept; {inbound}{verdict}; }}
  chain post {{ type filter hook postrouting priority 300; policy accept; {outbound}{verdict}; }}
}}
"
        ))
    }

    /// Removes any fault set with [`NatLab::set_link_fault`] on `host`.
    pub fn clear_link_fault(&self, host: Host) -> Result<(), LabError> {
        // `destroy` would be idempotent but needs nftables 1.0.8; add-then-delete is.
        self.netns(host)
            .nft("table inet postern_lab_fault {}\ndelete table inet postern_lab_fault\n")
    }

    /// Forgets every NAT mapping of `router` (conntrack flush), as a NAT reboot or a mapping
    /// timeout would: the next packet out gets a fresh mapping, and replies to old ones are
    /// dropped. Needs the `conntrack` tool.
    pub fn flush_nat_mappings(&self, router: Host) -> Result<(), LabError> {
        if !matches!(router, Host::RouterA | Host::RouterB) {
            return Err(LabError::Invalid(format!(
                "{router:?} is not a NAT router: use Host::RouterA or Host::RouterB"
            )));
        }
        crate::tools::find_program("conntrack")?;
        self.output(router, &["conntrack", "-F"]).map(drop)
    }

    /// The lab's temp dir (process logs live here).
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().to_owned()
    }

    /// The unique prefix of this lab's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The lab's namespaces. Fields drop in declaration order: homes first, the internet last;
/// each [`Netns`] kills what runs inside it and deletes itself.
#[derive(Debug)]
struct Hosts {
    home_a: Netns,
    home_a2: Netns,
    home_b: Netns,
    router_a: Netns,
    router_b: Netns,
    coord: Netns,
    relay: Netns,
    ingress: Netns,
    internet: Netns,
}

impl Hosts {
    fn get(&self, host: Host) -> &Netns {
        match host {
            Host::Internet => &self.internet,
            Host::Coord => &self.coord,
            Host::Relay => &self.relay,
            Host::Ingress => &self.ingress,
            Host::RouterA => &self.router_a,
            Host::RouterB => &self.router_b,
            Host::HomeA => &self.home_a,
            Host::HomeA2 => &self.home_a2,
            Host::HomeB => &self.home_b,
        }
    }

    fn build(prefix: &str, config: NatLabConfig) -> Result<Self, LabError> {
        let ipv6 = config.ipv6;
        let gw = Host::Internet.addr().to_string();

        let internet = Netns::create(prefix, Host::Internet.role(), ipv6)?;
        internet.ip(&["link", "add", "br0", "type", "bridge"])?;
        internet.ip(&["link", "set", "br0", "up"])?;
        internet.ip(&["addr", "add", &format!("{gw}/24"), "dev", "br0"])?;
        internet.sysctl(&["net.ipv4.ip_forward=1"])?;
        no_bridge_netfilter(&internet)?;

        let public_host = |host: Host| -> Result<Netns, LabError> {
            let ns = Netns::create(prefix, host.role(), ipv6)?;
            let port = format!("p-{}", host.role());
            veth(&ns, "eth0", &internet, &port)?;
            internet.ip(&["link", "set", &port, "master", "br0"])?;
            ns.ip(&["addr", "add", &format!("{}/24", host.addr()), "dev", "eth0"])?;
            ns.ip(&["route", "add", "default", "via", &gw])?;
            Ok(ns)
        };
        let coord = public_host(Host::Coord)?;
        let relay = public_host(Host::Relay)?;
        let ingress = public_host(Host::Ingress)?;

        let router = |host: Host, lan: Ipv4Addr, kind: NatKind| -> Result<Netns, LabError> {
            let ns = Netns::create(prefix, host.role(), ipv6)?;
            let port = format!("p-{}", host.role());
            veth(&ns, "wan", &internet, &port)?;
            internet.ip(&["link", "set", &port, "master", "br0"])?;
            ns.ip(&["addr", "add", &format!("{}/24", host.addr()), "dev", "wan"])?;
            ns.ip(&["route", "add", "default", "via", &gw])?;
            ns.ip(&["link", "add", "br-lan", "type", "bridge"])?;
            ns.ip(&["link", "set", "br-lan", "up"])?;
            ns.ip(&["addr", "add", &format!("{lan}/24"), "dev", "br-lan"])?;
            no_bridge_netfilter(&ns)?;
            ns.sysctl(&["net.ipv4.ip_forward=1"])?;
            ns.nft(&nat_ruleset(kind))?;
            Ok(ns)
        };
        let (lan_a, lan_b) = (LAN_A, LAN_B);
        let router_a = router(Host::RouterA, lan_a, config.home_a)?;
        let router_b = router(Host::RouterB, lan_b, config.home_b)?;

        let home = |host: Host, router: &Netns, gateway: Ipv4Addr| -> Result<Netns, LabError> {
            let ns = Netns::create(prefix, host.role(), ipv6)?;
            let port = format!("l-{}", host.role());
            veth(&ns, "eth0", router, &port)?;
            router.ip(&["link", "set", &port, "master", "br-lan"])?;
            ns.ip(&["addr", "add", &format!("{}/24", host.addr()), "dev", "eth0"])?;
            ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
            Ok(ns)
        };
        let home_a = home(Host::HomeA, &router_a, lan_a)?;
        let home_a2 = home(Host::HomeA2, &router_a, lan_a)?;
        let home_b = home(Host::HomeB, &router_b, lan_b)?;

        Ok(Self {
            home_a,
            home_a2,
            home_b,
            router_a,
            router_b,
            coord,
            relay,
            ingress,
            internet,
        })
    }
}

/// The router's NAT and filter rules: masquerade out of `wan`; forward only LAN to WAN and
/// replies; accept input only from the LAN, loopback, replies and ICMP.
fn nat_ruleset(kind: NatKind) -> String {
    let masquerade = match kind {
        NatKind::Easy => "masquerade",
        // nft spells it fully-random (random-fully is iptables' spelling, a syntax error here).
        NatKind::Hard => "masquerade fully-random",
    };
    format!(
        "table inet postern_lab_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" {masquerade}
  }}
}}
table inet postern_lab_filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"br-lan\" oifname \"wan\" accept
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
    iifname \"br-lan\" accept
    meta l4proto icmp accept
  }}
}}
"
    )
}

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), LabError> {
    a.veth_to(a_if, b, b_if)
}

/// With bridge netfilter on (the default in every new namespace here), frames bridged
/// between two LAN ports traverse the nft forward hook (policy drop) and LAN hosts cannot
/// reach each other. Switch it off in namespaces that hold a bridge.
fn no_bridge_netfilter(ns: &Netns) -> Result<(), LabError> {
    // Absent keys (br_netfilter not loaded) are fine: then bridged frames skip nft anyway.
    ns.try_output(&[
        "sysctl",
        "-qw",
        "net.bridge.bridge-nf-call-iptables=0",
        "net.bridge.bridge-nf-call-ip6tables=0",
        "net.bridge.bridge-nf-call-arptables=0",
    ])
    .map(drop)
}

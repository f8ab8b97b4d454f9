//! Routes for the peers' `AllowedIPs` through the TUN device, as wg-quick installs them.
//!
//! [`plan`] decides which networks to route (pure, tested below); [`add`] installs one with
//! `ip route replace NET dev NAME` from iproute2, the same tool wg-quick uses. `replace`
//! makes a restart idempotent. Routes live on the device, so the kernel removes them with
//! it.
//!
//! A default route (`0.0.0.0/0` or `::/0`, a "full tunnel") cannot be routed plainly: it
//! would also capture the tunnel's own UDP datagrams to the peers' endpoints. As wg-quick
//! does, [`FullTunnel::install`] puts the default route in a table of its own
//! ([`FULL_TUNNEL_TABLE`]) and sends everything without the WireGuard socket's firewall
//! mark ([`FULL_TUNNEL_MARK`]) there, while a second rule keeps the main table's more
//! specific routes (the local networks, the endpoints' routes) in force. The rules are not
//! tied to the device, so [`FullTunnel::remove`] takes them away again at exit; rules
//! left by a crash are replaced, not duplicated, at the next start.

use std::collections::BTreeSet;
use std::process::Stdio;

use ipnet::IpNet;

use crate::wg_config::WgConfig;

/// Why a route was not installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// `ip` refused a policy-routing rule of a full tunnel.
    #[error("`ip {command}` failed: {stderr}")]
    Rule {
        /// The `ip` arguments.
        command: String,
        /// What `ip` printed.
        stderr: String,
    },
    /// `ip` could not be run.
    #[error("cannot run `ip` (iproute2) to add the route {net}: {reason}; install iproute2")]
    Spawn {
        /// The route.
        net: IpNet,
        /// The system's error.
        reason: String,
    },
    /// `ip` refused the route.
    #[error("`ip route replace {net} dev {device}` failed: {stderr}")]
    Refused {
        /// The route.
        net: IpNet,
        /// The device.
        device: String,
        /// What `ip` printed.
        stderr: String,
    },
}

/// The routing table of a full tunnel's default route (wg-quick's default, too).
pub const FULL_TUNNEL_TABLE: u32 = 51820;

/// The firewall mark of the WireGuard socket's datagrams in a full tunnel: marked packets
/// skip the tunnel's table and leave by the main table's routes.
pub const FULL_TUNNEL_MARK: u32 = 51820;

/// What to route through the device: see [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Networks routed with [`add`].
    pub routes: Vec<IpNet>,
    /// Whether a peer's `AllowedIPs` holds `0.0.0.0/0` (an IPv4 full tunnel).
    pub full_tunnel_v4: bool,
    /// Whether a peer's `AllowedIPs` holds `::/0` (an IPv6 full tunnel).
    pub full_tunnel_v6: bool,
}

impl RoutePlan {
    /// Whether any family is fully tunnelled (the WireGuard socket then needs
    /// [`FULL_TUNNEL_MARK`]).
    pub fn full_tunnel(&self) -> bool {
        self.full_tunnel_v4 || self.full_tunnel_v6
    }
}

/// The networks to route through the device: every peer's `AllowedIPs`, normalised
/// (`10.0.0.1/24` becomes `10.0.0.0/24`) and deduplicated, less those the kernel already
/// routes to the device because an `Address` of the interface has exactly that network;
/// default routes become a full tunnel of their family (see the [module docs](self)).
pub fn plan(config: &WgConfig) -> RoutePlan {
    let on_link: BTreeSet<IpNet> = config
        .interface
        .addresses
        .iter()
        .map(IpNet::trunc)
        .filter(|net| net.prefix_len() < net.max_prefix_len())
        .collect();
    let mut routes = BTreeSet::new();
    let mut plan = RoutePlan::default();
    for peer in &config.peers {
        for net in &peer.allowed_ips {
            let net = net.trunc();
            match net {
                IpNet::V4(_) if net.prefix_len() == 0 => plan.full_tunnel_v4 = true,
                IpNet::V6(_) if net.prefix_len() == 0 => plan.full_tunnel_v6 = true,
                _ if on_link.contains(&net) => {}
                _ => {
                    routes.insert(net);
                }
            }
        }
    }
    plan.routes = routes.into_iter().collect();
    plan
}

/// The policy routing of a full tunnel, installed by [`FullTunnel::install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullTunnel {
    families: Vec<&'static str>,
}

impl FullTunnel {
    /// Routes everything of the planned families through `device`, except packets marked
    /// with [`FULL_TUNNEL_MARK`] (the WireGuard socket's own), as wg-quick does:
    ///
    /// ```text
    /// ip -4 route replace default dev DEVICE table 51820
    /// ip -4 rule add not fwmark 51820 table 51820
    /// ip -4 rule add table main suppress_prefixlength 0
    /// ```
    ///
    /// (and the same with `-6`), plus `net.ipv4.conf.all.src_valid_mark = 1` so that the
    /// reverse-path filter takes the mark into account. Stale copies of the two rules (from
    /// a run that crashed) are removed first. Returns `None` when the plan has no full
    /// tunnel.
    ///
    /// Fails if `ip` refuses a route or a rule; the rules added so far are removed again.
    pub async fn install(device: &str, plan: &RoutePlan) -> Result<Option<Self>, RouteError> {
        let mut families = Vec::new();
        if plan.full_tunnel_v4 {
            families.push("-4");
        }
        if plan.full_tunnel_v6 {
            families.push("-6");
        }
        if families.is_empty() {
            return Ok(None);
        }
        let table = FULL_TUNNEL_TABLE.to_string();
        let mark = FULL_TUNNEL_MARK.to_string();
        let installed = Self { families };
        for family in &installed.families {
            let steps: [&[&str]; 3] = [
                &[
                    family, "route", "replace", "default", "dev", device, "table", &table,
                ],
                &[
                    family, "rule", "add", "not", "fwmark", &mark, "table", &table,
                ],
                &[
                    family,
                    "rule",
                    "add",
                    "table",
                    "main",
                    "suppress_prefixlength",
                    "0",
                ],
            ];
            installed.remove_rules(family).await;
            for step in steps {
                if let Err(err) = run_ip(step).await {
                    installed.remove().await;
                    return Err(err);
                }
            }
        }
        if plan.full_tunnel_v4
            && let Err(err) =
                tokio::fs::write("/proc/sys/net/ipv4/conf/all/src_valid_mark", "1\n").await
        {
            tracing::warn!(%err, "cannot set net.ipv4.conf.all.src_valid_mark; a strict reverse-path filter may drop the tunnel's replies");
        }
        tracing::info!(families = ?installed.families, table, "full tunnel: default route through the device");
        Ok(Some(installed))
    }

    /// Removes the two policy-routing rules of each family (the table's default route goes
    /// with the device). Call at exit; errors are logged, not returned.
    pub async fn remove(&self) {
        for family in &self.families {
            self.remove_rules(family).await;
        }
    }

    /// Deletes every copy of the full tunnel's two rules in `family`.
    async fn remove_rules(&self, family: &str) {
        let table = FULL_TUNNEL_TABLE.to_string();
        let mark = FULL_TUNNEL_MARK.to_string();
        let rules: [&[&str]; 2] = [
            &[
                family, "rule", "del", "not", "fwmark", &mark, "table", &table,
            ],
            &[
                family,
                "rule",
                "del",
                "table",
                "main",
                "suppress_prefixlength",
                "0",
            ],
        ];
        for rule in rules {
            // `ip rule del` removes one copy per call and fails once none is left.
            for _ in 0..16 {
                if run_ip(rule).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Runs `ip ARGS`, failing with what it printed.
async fn run_ip(args: &[&str]) -> Result<(), RouteError> {
    let command = args.join(" ");
    let output = tokio::process::Command::new(ip_program())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| RouteError::Rule {
            command: command.clone(),
            stderr: format!("cannot run ip: {e}; install iproute2"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RouteError::Rule {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Installs `net` through `device` with `ip route replace`.
pub async fn add(device: &str, net: IpNet) -> Result<(), RouteError> {
    let family = match net {
        IpNet::V4(_) => "-4",
        IpNet::V6(_) => "-6",
    };
    let output = tokio::process::Command::new(ip_program())
        .args([family, "route", "replace", &net.to_string(), "dev", device])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| RouteError::Spawn {
            net,
            reason: e.to_string(),
        })?;
    if output.status.success() {
        tracing::debug!(%net, device, "route added");
        Ok(())
    } else {
        Err(RouteError::Refused {
            net,
            device: device.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// `ip` from PATH, or from the sbin directories root's PATH usually has.
fn ip_program() -> std::path::PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "ip".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addresses: &str, allowed: &[&str]) -> WgConfig {
        let mut text = format!(
            "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = {addresses}\n"
        );
        let keys = [
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
            "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=",
        ];
        for (key, ips) in keys.iter().zip(allowed) {
            text.push_str(&format!(
                "\n[Peer]\nPublicKey = {key}\nAllowedIPs = {ips}\n"
            ));
        }
        WgConfig::parse("test.conf", &text).unwrap()
    }

    #[test]
    fn routes_are_normalised_deduplicated_and_skip_the_on_link_network() {
        let c = config(
            "10.0.0.2/24, fd00::2/64",
            &[
                "10.0.0.0/24, 10.1.2.3/16, fd00::/64, fd01::/48",
                "10.1.0.0/16, 192.168.7.9/32",
            ],
        );
        let routes: Vec<String> = plan(&c).routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            ["10.1.0.0/16", "192.168.7.9/32", "fd01::/48"],
            "10.0.0.0/24 and fd00::/64 are the addresses' own networks"
        );
    }

    #[test]
    fn a_host_address_does_not_hide_a_host_route() {
        let c = config("10.0.0.2/32", &["10.0.0.2/32, 10.0.0.1/32"]);
        let routes: Vec<String> = plan(&c).routes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.0.0.1/32", "10.0.0.2/32"]);
    }

    #[test]
    fn default_routes_make_a_full_tunnel_of_their_family() {
        let c = config("10.0.0.2/32", &["0.0.0.0/0", "10.9.0.0/16"]);
        let p = plan(&c);
        assert!(p.full_tunnel_v4 && !p.full_tunnel_v6 && p.full_tunnel());
        assert_eq!(p.routes, vec!["10.9.0.0/16".parse::<IpNet>().unwrap()]);
        let p = plan(&config("10.0.0.2/32", &["::/0"]));
        assert!(!p.full_tunnel_v4 && p.full_tunnel_v6);
        assert!(p.routes.is_empty());
        assert!(!plan(&config("10.0.0.2/32", &["10.0.0.0/8"])).full_tunnel());
    }
}

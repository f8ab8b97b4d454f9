//! Routes for the peers' `AllowedIPs` through the TUN device, as wg-quick installs them.
//!
//! [`plan`] decides which networks to route (pure, tested below); [`add`] installs one with
//! `ip route replace NET dev NAME` from iproute2, the same tool wg-quick uses. `replace`
//! makes a restart idempotent. Routes live on the device, so the kernel removes them with
//! it: nothing needs undoing at exit.
//!
//! A default route (`0.0.0.0/0` or `::/0`) is refused for now: routed plainly, it would
//! also capture the tunnel's own UDP datagrams to the peers' endpoints. wg-quick avoids
//! that with a firewall mark on the WireGuard socket and a policy-routing table; Postern
//! does not do that yet, and says so ([`RouteError::DefaultRoute`]).

use std::collections::BTreeSet;
use std::process::Stdio;

use ipnet::IpNet;

use crate::wg_config::WgConfig;

/// Why a route was not installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A peer's `AllowedIPs` holds a default route, which kernel mode does not route yet.
    #[error(
        "AllowedIPs = {net}: a default route through the tunnel (full tunnel) is not supported in --tun mode yet, because it would also capture WireGuard's own datagrams; list the networks to route instead (e.g. 10.0.0.0/8), or use userspace mode"
    )]
    DefaultRoute {
        /// The default route as written.
        net: IpNet,
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

/// The networks to route through the device: every peer's `AllowedIPs`, normalised
/// (`10.0.0.1/24` becomes `10.0.0.0/24`) and deduplicated, less those the kernel already
/// routes to the device because an `Address` of the interface has exactly that network.
///
/// Fails on a default route (see the [module docs](self)).
pub fn plan(config: &WgConfig) -> Result<Vec<IpNet>, RouteError> {
    let on_link: BTreeSet<IpNet> = config
        .interface
        .addresses
        .iter()
        .map(IpNet::trunc)
        .filter(|net| net.prefix_len() < net.max_prefix_len())
        .collect();
    let mut routes = BTreeSet::new();
    for peer in &config.peers {
        for net in &peer.allowed_ips {
            let net = net.trunc();
            if net.prefix_len() == 0 {
                return Err(RouteError::DefaultRoute { net });
            }
            if !on_link.contains(&net) {
                routes.insert(net);
            }
        }
    }
    Ok(routes.into_iter().collect())
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
        let routes: Vec<String> = plan(&c).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            ["10.1.0.0/16", "192.168.7.9/32", "fd01::/48"],
            "10.0.0.0/24 and fd00::/64 are the addresses' own networks"
        );
    }

    #[test]
    fn a_host_address_does_not_hide_a_host_route() {
        let c = config("10.0.0.2/32", &["10.0.0.2/32, 10.0.0.1/32"]);
        let routes: Vec<String> = plan(&c).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.0.0.1/32", "10.0.0.2/32"]);
    }

    #[test]
    fn default_routes_are_refused_with_a_reason() {
        for all in ["0.0.0.0/0", "::/0"] {
            let c = config("10.0.0.2/32", &[all]);
            let e = plan(&c).unwrap_err().to_string();
            assert!(e.contains(all), "{e}");
            assert!(e.contains("not supported in --tun mode yet"), "{e}");
        }
    }
}

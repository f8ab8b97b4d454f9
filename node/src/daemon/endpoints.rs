//! The node's local UDP endpoints: where peers may reach its WireGuard socket directly.
//!
//! The socket listens on every IPv4 interface, so each interface address with the socket's
//! port is a candidate. [`order_candidates`] (pure) puts routable addresses first and
//! loopback last: a peer on another machine tries the routable ones, and two nodes on one
//! machine (tests, `postern dev`) still reach each other. Public endpoints learnt through
//! STUN will join these when the relay client lands.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The candidate endpoints of a socket bound to every IPv4 interface on `port`, from the
/// machine's interface addresses. An error listing interfaces yields loopback only.
pub fn local_endpoints(port: u16) -> Vec<SocketAddr> {
    let addresses: Vec<Ipv4Addr> = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces
            .filter_map(|interface| {
                let address = interface.address?;
                let inet = address.as_sockaddr_in()?;
                Some(inet.ip())
            })
            .collect(),
        Err(err) => {
            tracing::warn!(%err, "cannot list network interfaces; reporting loopback only");
            vec![Ipv4Addr::LOCALHOST]
        }
    };
    order_candidates(&addresses, port)
}

/// Orders interface addresses into endpoints: routable first (in the order given), then
/// loopback; link-local, unspecified, broadcast and multicast addresses and duplicates are
/// left out.
pub fn order_candidates(addresses: &[Ipv4Addr], port: u16) -> Vec<SocketAddr> {
    let usable = |a: &&Ipv4Addr| {
        !(a.is_link_local() || a.is_unspecified() || a.is_broadcast() || a.is_multicast())
    };
    let mut ordered: Vec<SocketAddr> = Vec::new();
    let routable = addresses.iter().filter(usable).filter(|a| !a.is_loopback());
    let loopback = addresses.iter().filter(usable).filter(|a| a.is_loopback());
    for address in routable.chain(loopback) {
        let endpoint = SocketAddr::new(IpAddr::V4(*address), port);
        if !ordered.contains(&endpoint) {
            ordered.push(endpoint);
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routable_first_loopback_last_and_junk_left_out() {
        let addresses: Vec<Ipv4Addr> = [
            "127.0.0.1",
            "192.168.1.5",
            "169.254.3.3",
            "0.0.0.0",
            "10.0.0.2",
            "192.168.1.5",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let ordered = order_candidates(&addresses, 41641);
        let expected: Vec<SocketAddr> = ["192.168.1.5:41641", "10.0.0.2:41641", "127.0.0.1:41641"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(ordered, expected);
    }

    #[test]
    fn this_machine_has_at_least_loopback() {
        let endpoints = local_endpoints(9);
        assert!(
            endpoints.contains(&"127.0.0.1:9".parse().unwrap()),
            "{endpoints:?}"
        );
    }
}

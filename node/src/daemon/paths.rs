//! The node's paths to its peers: the home relay, STUN servers, path discovery's peers, and
//! the endpoints reported to the coord.
//!
//! [`run`] follows the netmap the runtime applies and keeps the UDP shell
//! ([`crate::udp`]) supplied:
//!
//! - the relay map → the home region (the configured one, else by measured latency when
//!   there are several; see [`choose_home_region`]) → a [`RelaySet`] attached to it, which
//!   dials other regions when a peer lives there ([`EngineCommand::SetRelay`]), and the
//!   STUN servers of every region, home first ([`EngineCommand::SetStunServers`]);
//! - the peers with disco keys → [`EngineCommand::SetDiscoPeers`];
//! - the local endpoints (re-read every [`ENDPOINT_REFRESH`]) and the public ones STUN
//!   learned → an [`EndpointReport`] for the control client, which sends it to the coord so
//!   peers learn where to probe this node and which relay reaches it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_proto::NodePrivateKey;
use postern_proto::netmap::{Netmap, RegionId, RelayMap};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{ENDPOINT_REFRESH, endpoints};
use crate::disco::DiscoPeer;
use crate::relay::{RelayClient, RelayClientConfig, RelaySet};
use crate::udp::EngineCommand;

/// How long the latency measurement of one relay region may take.
pub const REGION_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the node tells the coord about where it can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointReport {
    /// Local endpoints, then public (STUN) ones.
    pub endpoints: Vec<SocketAddr>,
    /// The home relay region.
    pub home_relay: Option<RegionId>,
}

/// Everything [`run`] needs.
#[derive(Debug)]
pub struct PathsWiring {
    /// Commands to the UDP shell.
    pub commands: mpsc::Sender<EngineCommand>,
    /// This node's key, to attach to the relay.
    pub node_key: NodePrivateKey,
    /// Trust roots for `https://` relays ([`crate::relay::relay_tls_config`]).
    pub relay_tls: Arc<rustls::ClientConfig>,
    /// The home region to use instead of measuring ([`crate::daemon::RuntimeConfig::home_relay`]).
    pub home_relay: Option<RegionId>,
    /// The WireGuard socket's port (for the local endpoints).
    pub listen_port: u16,
    /// The netmaps the runtime applied.
    pub netmap: watch::Receiver<Option<Arc<Netmap>>>,
    /// The public endpoints the shell learned.
    pub public: watch::Receiver<Vec<SocketAddr>>,
    /// Where the report for the coord goes.
    pub report: watch::Sender<EndpointReport>,
    /// Ends the task.
    pub stop: CancellationToken,
}

/// Keeps relay, STUN, disco peers and the endpoint report current until `stop`; see the
/// [module docs](self).
pub async fn run(mut wiring: PathsWiring) {
    let mut relay_map: Option<RelayMap> = None;
    let mut home: Option<RegionId> = None;
    let mut local = endpoints::local_endpoints(wiring.listen_port);
    let mut refresh = tokio::time::interval(ENDPOINT_REFRESH);
    let mut netmap = wiring.netmap.clone();
    netmap.mark_changed();
    loop {
        tokio::select! {
            () = wiring.stop.cancelled() => break,
            changed = netmap.changed() => {
                if changed.is_err() {
                    break;
                }
                let map = netmap.borrow_and_update().clone();
                let Some(map) = map else { continue };
                if wiring.commands.send(EngineCommand::SetDiscoPeers(disco_peers(&map))).await.is_err() {
                    break;
                }
                if relay_map.as_ref() != Some(&map.relay_map) {
                    relay_map = Some(map.relay_map.clone());
                    home = apply_relay_map(&wiring, &map.relay_map).await;
                }
            }
            changed = wiring.public.changed() => {
                if changed.is_err() {
                    break;
                }
                wiring.public.borrow_and_update();
            }
            _ = refresh.tick() => {
                local = endpoints::local_endpoints(wiring.listen_port);
                if wiring.commands.send(EngineCommand::SetLocalEndpoints(local.clone())).await.is_err() {
                    break;
                }
            }
        }
        let public = wiring.public.borrow().clone();
        let report = EndpointReport {
            endpoints: merge_endpoints(&local, &public),
            home_relay: home,
        };
        wiring.report.send_if_modified(|old| {
            let changed = *old != report;
            if changed {
                *old = report;
            }
            changed
        });
    }
    let _ = wiring.commands.send(EngineCommand::SetRelay(None)).await;
}

/// The peers of `netmap` that path discovery can probe (those with a disco key).
pub fn disco_peers(netmap: &Netmap) -> Vec<DiscoPeer> {
    netmap
        .peers
        .iter()
        .filter_map(|peer| {
            Some(DiscoPeer {
                node_key: peer.node_key,
                disco_key: peer.disco_key?,
                endpoints: peer.endpoints.clone(),
                home_relay: peer.home_relay,
            })
        })
        .collect()
}

/// Local endpoints first, then public ones not already listed.
pub fn merge_endpoints(local: &[SocketAddr], public: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut all = local.to_vec();
    for addr in public {
        if !all.contains(addr) {
            all.push(*addr);
        }
    }
    all
}

/// The home region: the one with the lowest measured latency; without any measurement,
/// the first region. `None` for an empty map.
pub fn choose_home_region(measured: &[(RegionId, Option<Duration>)]) -> Option<RegionId> {
    measured
        .iter()
        .filter_map(|(region, latency)| latency.map(|l| (l, *region)))
        .min()
        .map(|(_, region)| region)
        .or_else(|| measured.first().map(|(region, _)| *region))
}

/// Picks the home region, attaches to it and tells the shell the STUN servers. Returns the
/// home region.
async fn apply_relay_map(wiring: &PathsWiring, map: &RelayMap) -> Option<RegionId> {
    let regions: Vec<_> = map
        .regions
        .iter()
        .filter(|r| !r.servers.is_empty())
        .collect();
    let forced = wiring
        .home_relay
        .filter(|id| regions.iter().any(|r| r.id == *id));
    if let Some(id) = wiring.home_relay
        && forced.is_none()
    {
        tracing::warn!(
            region = id.0,
            "the configured home relay region is not in the relay map; choosing by latency"
        );
    }
    let measured = if let Some(id) = forced {
        vec![(id, None)]
    } else if regions.len() > 1 {
        let mut measured = Vec::with_capacity(regions.len());
        for region in &regions {
            let latency = match region.servers.first() {
                Some(server) => measure(&server.url).await,
                None => None,
            };
            tracing::debug!(region = region.id.0, ?latency, "relay region latency");
            measured.push((region.id, latency));
        }
        measured
    } else {
        regions.iter().map(|r| (r.id, None)).collect()
    };
    let home = choose_home_region(&measured);
    let client = home
        .and_then(|id| regions.iter().find(|r| r.id == id))
        .and_then(|region| {
            let server = region.servers.first()?;
            let mut config =
                RelayClientConfig::new(server.url.clone(), region.id, wiring.node_key.clone());
            config.tls = Some(Arc::clone(&wiring.relay_tls));
            match RelayClient::spawn(config) {
                Ok(client) => {
                    tracing::info!(region = %region.name, url = %server.url, "home relay");
                    Some(client)
                }
                Err(err) => {
                    tracing::warn!(%err, region = %region.name, "cannot use the home relay");
                    None
                }
            }
        });
    let home = client.as_ref().map(RelayClient::region);
    let set = client.map(|home| {
        RelaySet::new(
            home,
            map,
            &wiring.node_key,
            Some(Arc::clone(&wiring.relay_tls)),
        )
    });
    let _ = wiring.commands.send(EngineCommand::SetRelay(set)).await;
    let mut stun = Vec::new();
    let ordered = regions
        .iter()
        .filter(|r| Some(r.id) == home)
        .chain(regions.iter().filter(|r| Some(r.id) != home));
    for region in ordered {
        for server in &region.servers {
            let Some(port) = server.stun_port else {
                continue;
            };
            let Some((host, _)) = url_host_port(&server.url) else {
                continue;
            };
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => stun.extend(addrs.filter(SocketAddr::is_ipv4).take(1)),
                Err(err) => tracing::debug!(%err, %host, "cannot resolve the STUN server"),
            }
        }
    }
    let _ = wiring
        .commands
        .send(EngineCommand::SetStunServers(stun))
        .await;
    home
}

/// The round trip of a TCP connect to the relay, or `None` if it failed or took too long.
async fn measure(url: &str) -> Option<Duration> {
    let (host, port) = url_host_port(url)?;
    let started = Instant::now();
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(REGION_PROBE_TIMEOUT, connect).await {
        Ok(Ok(_)) => Some(started.elapsed()),
        _ => None,
    }
}

/// The host and port of a relay URL (default ports 443 and 80).
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let tls = uri.scheme_str() == Some("https");
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some((host, uri.port_u16().unwrap_or(if tls { 443 } else { 80 })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_measured_region_is_home() {
        let ms = Duration::from_millis;
        assert_eq!(
            choose_home_region(&[
                (RegionId(1), Some(ms(40))),
                (RegionId(2), None),
                (RegionId(3), Some(ms(12))),
            ]),
            Some(RegionId(3))
        );
        assert_eq!(
            choose_home_region(&[(RegionId(4), None), (RegionId(5), None)]),
            Some(RegionId(4)),
            "nothing measured: the first region"
        );
        assert_eq!(choose_home_region(&[]), None);
    }

    #[test]
    fn public_endpoints_follow_local_ones_without_duplicates() {
        let a: SocketAddr = "198.19.1.10:41641".parse().unwrap();
        let b: SocketAddr = "198.18.0.101:41641".parse().unwrap();
        assert_eq!(merge_endpoints(&[a], &[b, a]), vec![a, b]);
    }

    #[test]
    fn relay_urls_give_host_and_port() {
        assert_eq!(
            url_host_port("https://relay.example.com/relay"),
            Some(("relay.example.com".into(), 443))
        );
        assert_eq!(
            url_host_port("http://198.18.0.10:8080/relay"),
            Some(("198.18.0.10".into(), 8080))
        );
        assert_eq!(url_host_port("not a url"), None);
    }
}

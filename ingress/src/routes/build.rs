//! Netmap → [`RouteSet`]: what the edge serves for each `FunnelRoute`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postern_netstack::Netstack;
use postern_proto::funnel::{FunnelProtocol, FunnelRoute, GateSpec};
use postern_proto::netmap::Netmap;

use super::gates::chain_from_route;
use super::{HttpRoute, RouteInfo, RouteSet};
use crate::certs::CertResolver;
use crate::config::TcpPortRange;
use crate::edge::{Edge, Funnel, MeshUpstream, PoolLimits};
use crate::gate::{GateChain, Secret};
use crate::tcp_funnel::{PassthroughFunnel, TcpFunnel};

/// The ingress's own OIDC client (the `[oidc]` section), used by every route with a login
/// gate.
#[derive(Debug, Clone)]
pub struct OidcDefaults {
    /// The IdP's issuer URL.
    pub issuer: String,
    /// The client id registered at the IdP (with `https://*/.postern/callback` redirect
    /// URIs for the funnel domain).
    pub client_id: String,
    /// The client secret, for confidential clients.
    pub client_secret: Option<Secret>,
    /// Scopes besides `openid`; the gate's default when `None`.
    pub scopes: Option<Vec<String>>,
    /// Session lifetime; the gate's default when `None`.
    pub session_ttl: Option<Duration>,
}

/// What [`RouteBuilder`] needs besides the netmap.
#[derive(Debug, Clone, Default)]
pub struct RouteBuilderConfig {
    /// The ingress's OIDC client for login gates; without it, routes with a login gate are
    /// refused.
    pub oidc: Option<OidcDefaults>,
    /// The ingress's state directory (OIDC session keys go to `oidc/<hostname>.key`).
    pub state_dir: PathBuf,
    /// The body bound of gated requests (webhook gates check it too).
    pub max_body_bytes: usize,
    /// The public ports TCP routes may use; without it TCP routes are refused.
    pub tcp_port_range: Option<TcpPortRange>,
    /// Ports already taken (the TLS and HTTP ports, the configuration file's TCP funnels).
    pub reserved_ports: HashSet<u16>,
    /// Hostnames of the configuration file's funnels: they win over routes.
    pub static_hostnames: HashSet<String>,
    /// The certificate resolver, to build the TLS configuration of funnels with an mTLS
    /// gate (asking clients for a certificate). Without it such funnels use the default.
    pub resolver: Option<Arc<CertResolver>>,
    /// The bounds of each HTTP route's pool of hop streams to its node.
    pub pool_limits: PoolLimits,
}

/// Builds [`RouteSet`]s from netmaps, reusing what it built for routes that did not
/// change; see the [module docs](super).
#[derive(Debug)]
pub struct RouteBuilder {
    netstack: Netstack,
    config: RouteBuilderConfig,
    cache: HashMap<String, Cached>,
}

#[derive(Debug)]
struct Cached {
    route: FunnelRoute,
    address: Option<IpAddr>,
    built: Built,
}

#[derive(Debug, Clone)]
enum Built {
    Http(HttpRoute),
    Passthrough(Arc<PassthroughFunnel>),
    Tcp(Arc<TcpFunnel>),
    Skipped,
}

impl RouteBuilder {
    /// A builder whose funnels reach their nodes through `netstack` (the embedded node's).
    pub fn new(netstack: Netstack, config: RouteBuilderConfig) -> Self {
        Self {
            netstack,
            config,
            cache: HashMap::new(),
        }
    }

    /// The routes of `netmap` at `now`. Routes already expired at `now` are left out;
    /// routes that cannot be served are logged (once, when they first appear or change)
    /// and either kept as [`HttpRoute::Refused`] (HTTP) or left out (TCP, passthrough).
    pub fn build(&mut self, netmap: &Netmap, now: SystemTime) -> RouteSet {
        let mut set = RouteSet::default();
        let mut cache = HashMap::new();
        for route in &netmap.funnel_routes {
            let host = route.hostname.trim_end_matches('.').to_ascii_lowercase();
            let expires_at = route.expires_at.and_then(|at| at.to_system_time());
            if expires_at.is_some_and(|at| at <= now) {
                tracing::debug!(%host, "ignoring a funnel route that already expired");
                continue;
            }
            if cache.contains_key(&host) {
                tracing::warn!(%host, "two funnel routes share a hostname; serving the first");
                continue;
            }
            let peer = netmap
                .peers
                .iter()
                .find(|peer| peer.node_key == route.node_key);
            let address = peer.and_then(|peer| {
                peer.addresses
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or_else(|| peer.addresses.first())
                    .copied()
            });
            let built = match self.cache.remove(&host) {
                Some(old) if old.route == *route && old.address == address => old.built,
                _ => {
                    let info = Arc::new(RouteInfo {
                        hostname: host.clone(),
                        owner: route.owner.clone(),
                        node: peer.map_or_else(
                            || format!("node:{}", route.node.0),
                            |peer| peer.name.clone(),
                        ),
                        expires_at,
                    });
                    self.build_route(route, &host, address, info)
                }
            };
            match &built {
                Built::Http(http) => {
                    set.http.insert(host.clone(), http.clone());
                }
                Built::Passthrough(funnel) => {
                    set.passthrough.insert(host.clone(), Arc::clone(funnel));
                }
                Built::Tcp(funnel) => match set.tcp.entry(funnel.port) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        tracing::warn!(%host, port = funnel.port, "two funnel routes share a public port; serving the first");
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(Arc::clone(funnel));
                    }
                },
                Built::Skipped => {}
            }
            cache.insert(
                host,
                Cached {
                    route: route.clone(),
                    address,
                    built,
                },
            );
        }
        self.cache = cache;
        set
    }

    /// The connection-level chain of a TCP or passthrough route: IP gates and the rate
    /// limit only (the edge sees no requests); `None` when it has neither.
    fn connection_gates(&self, route: &FunnelRoute) -> Result<Option<GateChain>, String> {
        if let Some(gate) = route
            .gates
            .iter()
            .find(|gate| !matches!(gate, GateSpec::Ip { .. }))
        {
            return Err(format!(
                "a TCP or TLS passthrough funnel can only run ip gates (the edge sees no requests), not {}",
                gate.kind()
            ));
        }
        if route.gates.is_empty() && route.rate_limit.is_none() {
            return Ok(None);
        }
        chain_from_route(
            route,
            None,
            &self.config.state_dir,
            self.config.max_body_bytes,
        )
        .map(Some)
    }

    fn build_route(
        &self,
        route: &FunnelRoute,
        host: &str,
        address: Option<IpAddr>,
        info: Arc<RouteInfo>,
    ) -> Built {
        let refuse = |reason: String| {
            tracing::error!(%host, owner = %info.owner, node = %info.node, %reason, "cannot serve this funnel route");
            reason
        };
        if self.config.static_hostnames.contains(host) {
            refuse("the configuration file has a funnel of the same hostname, which wins".into());
            return Built::Skipped;
        }
        let Some(address) = address else {
            let reason = refuse(
                "its node is not among this ingress's peers in the netmap (is the node offline or hidden by the policy?)"
                    .into(),
            );
            return match route.protocol {
                FunnelProtocol::Http => Built::Http(HttpRoute::Refused {
                    route: info,
                    reason,
                }),
                _ => Built::Skipped,
            };
        };
        let upstream = match MeshUpstream::new(self.netstack.clone(), address, route.port, host) {
            // HTTP exchanges want each write sent at once; byte pipes (TCP and TLS
            // passthrough funnels) want full segments (see `MeshUpstream::with_nodelay`).
            Ok(upstream) => Arc::new(
                upstream
                    .with_nodelay(matches!(route.protocol, FunnelProtocol::Http))
                    .with_pool_limits(self.config.pool_limits),
            ),
            Err(error) => {
                refuse(format!("the hostname is not usable: {error}"));
                return Built::Skipped;
            }
        };
        match route.protocol {
            FunnelProtocol::Http => {
                let chain = match chain_from_route(
                    route,
                    self.config.oidc.as_ref(),
                    &self.config.state_dir,
                    self.config.max_body_bytes,
                ) {
                    Ok(chain) => chain,
                    Err(error) => {
                        let reason = refuse(error);
                        return Built::Http(HttpRoute::Refused {
                            route: info,
                            reason,
                        });
                    }
                };
                let hints = chain.client_ca_subjects();
                let tls = match (&self.config.resolver, hints.is_empty()) {
                    (Some(resolver), false) => {
                        match Edge::tls_config_with_client_certs(Arc::clone(resolver), hints) {
                            Ok(tls) => Some(tls),
                            Err(error) => {
                                let reason =
                                    refuse(format!("TLS setup for its mTLS gate: {error}"));
                                return Built::Http(HttpRoute::Refused {
                                    route: info,
                                    reason,
                                });
                            }
                        }
                    }
                    _ => None,
                };
                tracing::info!(%host, owner = %info.owner, node = %info.node, gates = route.gates.len(), "serving a funnel route");
                Built::Http(HttpRoute::Serve {
                    funnel: Arc::new(Funnel {
                        hostname: host.to_string(),
                        upstream,
                        chain,
                        route: Some(info),
                    }),
                    tls,
                })
            }
            FunnelProtocol::TlsPassthrough => {
                let gates = match self.connection_gates(route) {
                    Ok(gates) => gates,
                    Err(error) => {
                        refuse(error);
                        return Built::Skipped;
                    }
                };
                tracing::info!(%host, owner = %info.owner, node = %info.node, "serving a TLS passthrough route");
                Built::Passthrough(Arc::new(PassthroughFunnel {
                    hostname: host.to_string(),
                    upstream,
                    proxy_protocol: false,
                    route: Some(info),
                    gates,
                }))
            }
            FunnelProtocol::Tcp => {
                let Some(port) = route.public_port else {
                    refuse("a TCP route without a public port".into());
                    return Built::Skipped;
                };
                let Some(range) = self.config.tcp_port_range else {
                    refuse(format!(
                        "TCP funnels need listen.tcp_port_range (asked for port {port})"
                    ));
                    return Built::Skipped;
                };
                if !range.contains(port) || self.config.reserved_ports.contains(&port) {
                    refuse(format!(
                        "public port {port} is outside listen.tcp_port_range {}-{} or already taken",
                        range.first, range.last
                    ));
                    return Built::Skipped;
                }
                let gates = match self.connection_gates(route) {
                    Ok(gates) => gates,
                    Err(error) => {
                        refuse(error);
                        return Built::Skipped;
                    }
                };
                tracing::info!(%host, port, owner = %info.owner, node = %info.node, "serving a TCP funnel route");
                Built::Tcp(Arc::new(TcpFunnel {
                    port,
                    upstream,
                    proxy_protocol: false,
                    route: Some(info),
                    gates,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use postern_netstack::NetstackConfig;
    use postern_proto::funnel::{GateMode, GateSpec};
    use postern_proto::ids::{NodeId, UnixTime};
    use postern_proto::keys::NodePublicKey;

    use super::*;

    const NODE_KEY: NodePublicKey = NodePublicKey::from_bytes([9; 32]);

    fn builder(config: RouteBuilderConfig) -> RouteBuilder {
        let (netstack, _seam) =
            Netstack::new(NetstackConfig::new(vec!["100.64.0.1".parse().unwrap()])).unwrap();
        RouteBuilder::new(netstack, config)
    }

    fn route(host: &str) -> FunnelRoute {
        FunnelRoute {
            hostname: host.into(),
            node: NodeId(2),
            node_key: NODE_KEY,
            owner: "alice@example.com".into(),
            port: 3000,
            protocol: FunnelProtocol::Http,
            public_port: None,
            gates: Vec::new(),
            gate_mode: GateMode::All,
            rate_limit: None,
            expires_at: None,
        }
    }

    fn netmap(routes: Vec<FunnelRoute>, with_peer: bool) -> Netmap {
        let peers = if with_peer {
            serde_json::json!([{
                "id": 2,
                "name": "laptop.tail.test",
                "node_key": NODE_KEY,
                "addresses": ["100.64.0.2", "fd7a:115c:a1e0::2"],
                "user": {"id": 2, "login": "alice@example.com"}
            }])
        } else {
            serde_json::json!([])
        };
        let mut map: Netmap = serde_json::from_value(serde_json::json!({
            "self_node": {
                "id": 1, "name": "ingress", "fqdn": "ingress.tail.test",
                "addresses": {"ipv4": "100.64.0.1", "ipv6": "fd7a:115c:a1e0::1"},
                "user": {"id": 1, "login": "ingress@example.com"}
            },
            "peers": peers
        }))
        .unwrap();
        map.funnel_routes = routes;
        map
    }

    fn served(set: &RouteSet, host: &str) -> Arc<Funnel> {
        match set.http.get(host) {
            Some(HttpRoute::Serve { funnel, .. }) => Arc::clone(funnel),
            other => panic!("{host}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn unchanged_routes_keep_their_built_gates_and_changed_ones_are_rebuilt() {
        let mut builder = builder(RouteBuilderConfig::default());
        let now = SystemTime::now();
        let first = builder.build(
            &netmap(vec![route("A.funnel.test"), route("b.funnel.test")], true),
            now,
        );
        let a = served(&first, "a.funnel.test");
        let info = a.route.clone().unwrap();
        assert_eq!(info.owner, "alice@example.com");
        assert_eq!(info.node, "laptop.tail.test");
        let mut changed = route("b.funnel.test");
        changed.port = 3001;
        let second = builder.build(&netmap(vec![route("A.funnel.test"), changed], true), now);
        assert!(Arc::ptr_eq(&a, &served(&second, "a.funnel.test")));
        assert!(!Arc::ptr_eq(
            &served(&first, "b.funnel.test"),
            &served(&second, "b.funnel.test")
        ));
        let third = builder.build(&netmap(Vec::new(), true), now);
        assert!(third.http.is_empty());
    }

    #[tokio::test]
    async fn unservable_routes_are_refused_or_left_out() {
        let mut config = RouteBuilderConfig {
            tcp_port_range: Some(TcpPortRange {
                first: 20000,
                last: 20010,
            }),
            ..RouteBuilderConfig::default()
        };
        config.static_hostnames.insert("static.funnel.test".into());
        config.reserved_ports.insert(20005);
        let mut builder = builder(config);
        let now = SystemTime::now();

        let lost = builder.build(&netmap(vec![route("lost.funnel.test")], false), now);
        assert!(matches!(
            lost.http.get("lost.funnel.test"),
            Some(HttpRoute::Refused { reason, .. }) if reason.contains("not among this ingress's peers")
        ));
        let login = GateSpec::Login {
            allowed_emails: vec!["a@example.com".into()],
            allowed_domains: Vec::new(),
            allowed_groups: Vec::new(),
        };
        let mut gated = route("login.funnel.test");
        gated.gates = vec![login];
        let mut expired = route("old.funnel.test");
        expired.expires_at = Some(UnixTime::from_system_time(now - Duration::from_secs(1)));
        let tcp = |host: &str, port: u16| {
            let mut r = route(host);
            r.protocol = FunnelProtocol::Tcp;
            r.public_port = Some(port);
            r
        };
        let mut gated_tcp = tcp("gated-db.funnel.test", 20002);
        gated_tcp.gates = vec![GateSpec::Jwt {
            issuer: "https://idp.example".into(),
            jwks_url: Some("https://idp.example/jwks".into()),
            audiences: vec!["db".into()],
        }];
        let mut ip_tcp = tcp("office-db.funnel.test", 20003);
        ip_tcp.gates = vec![GateSpec::Ip {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: Vec::new(),
        }];
        let set = builder.build(
            &netmap(
                vec![
                    gated,
                    expired,
                    route("static.funnel.test"),
                    tcp("db.funnel.test", 20001),
                    tcp("far.funnel.test", 30000),
                    tcp("taken.funnel.test", 20005),
                    gated_tcp,
                    ip_tcp,
                    tcp("twin.funnel.test", 20001),
                ],
                true,
            ),
            now,
        );
        assert!(matches!(
            set.http.get("login.funnel.test"),
            Some(HttpRoute::Refused { reason, .. }) if reason.contains("[oidc]")
        ));
        assert_eq!(set.http.len(), 1, "{:?}", set.http.keys());
        assert_eq!(set.tcp.len(), 2);
        let db = &set.tcp[&20001];
        assert_eq!(db.route.as_ref().unwrap().hostname, "db.funnel.test");
        assert!(db.gates.is_none());
        assert!(set.tcp[&20003].gates.is_some());
        assert_eq!(set.next_expiry(), None);
    }

    #[tokio::test]
    async fn expiry_removes_only_what_is_due() {
        let mut builder = builder(RouteBuilderConfig::default());
        let now = SystemTime::now();
        let soon = UnixTime::from_system_time(now + Duration::from_secs(60));
        let mut brief = route("brief.funnel.test");
        brief.expires_at = Some(soon);
        let set = builder.build(&netmap(vec![brief, route("long.funnel.test")], true), now);
        let due = soon.to_system_time().unwrap();
        assert_eq!(set.next_expiry(), Some(due));
        let (kept, gone) = set.without_expired(now);
        assert!(gone.is_empty());
        assert_eq!(kept.http.len(), 2);
        let (kept, gone) = set.without_expired(due);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].hostname, "brief.funnel.test");
        assert_eq!(kept.http.len(), 1);

        let table = super::super::FunnelTable::new();
        table.replace(set);
        assert!(table.terminates("brief.funnel.test", now));
        assert!(!table.terminates("brief.funnel.test", due));
        assert!(table.terminates("long.funnel.test", due));
    }
}

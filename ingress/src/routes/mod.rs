//! Funnels from the coordination server: the live funnel table an ingress builds from its
//! netmap's `funnel_routes`.
//!
//! The flow:
//!
//! 1. The embedded node ([`crate::embedded`]) follows its netmap. Each new netmap goes to
//!    [`RouteBuilder::build`], which turns every [`FunnelRoute`] into what the edge serves:
//!    an HTTP [`Funnel`] with its [`GateChain`] (built from the route's `GateSpec`s by
//!    [`chain_from_route`]) and a [`MeshUpstream`](crate::edge::MeshUpstream) to the
//!    route's node, a TLS passthrough funnel, or a TCP funnel on the route's public port.
//!    Routes whose gates cannot be built (a login gate on an ingress without `[oidc]`, a
//!    bad CA) are kept as [`HttpRoute::Refused`]: their hostname answers `503
//!    funnel_unavailable` and nothing reaches the node. Unchanged routes keep their built
//!    gates, so rate-limit buckets, replay caches and JWKS caches survive netmap changes.
//! 2. [`RouteFollower`] swaps the result into the shared [`FunnelTable`] that the edge and
//!    the TLS port read on every request, opens and closes TCP funnel listeners, asks for
//!    certificates for new hostnames, and at each route's `expires_at` removes it (audited
//!    `expire`) even when no new netmap arrives.
//!
//! Funnels of the configuration file are not in the table: the edge looks them up first
//! and they win over a route with the same hostname (the route is logged and ignored).

mod build;
mod follow;
mod gates;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

pub use build::{OidcDefaults, RouteBuilder, RouteBuilderConfig};
pub use follow::{RouteFollower, expiry_record};
pub use gates::chain_from_route;
pub use postern_proto::funnel::FunnelRoute;

use crate::edge::Funnel;
use crate::tcp_funnel::{PassthroughFunnel, TcpFunnel};

/// Who a funnel from the coordination server belongs to and when it ends: carried by the
/// funnel for its audit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The public hostname (lower case).
    pub hostname: String,
    /// The owner's login.
    pub owner: String,
    /// The node the funnel leads to: its name in the netmap, or `node:ID` if the netmap
    /// does not list it.
    pub node: String,
    /// When the funnel stops; `None` for never.
    pub expires_at: Option<SystemTime>,
}

impl RouteInfo {
    /// Whether the funnel is over at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// One HTTP hostname of the table.
#[derive(Debug, Clone)]
pub enum HttpRoute {
    /// Served: the funnel, and the TLS configuration to use for it when it differs from
    /// the edge's default (a funnel with an mTLS gate asks for client certificates).
    Serve {
        /// The funnel (its `route` is set).
        funnel: Arc<Funnel>,
        /// The TLS configuration for this hostname, if not the default.
        tls: Option<Arc<rustls::ServerConfig>>,
    },
    /// Known but not servable (its gates could not be built, or its node is not in the
    /// netmap): answered `503 funnel_unavailable`, forwarded nowhere.
    Refused {
        /// The route.
        route: Arc<RouteInfo>,
        /// Why, for the log (never sent to the client).
        reason: String,
    },
}

impl HttpRoute {
    /// The route's information.
    pub fn info(&self) -> Option<&Arc<RouteInfo>> {
        match self {
            HttpRoute::Serve { funnel, .. } => funnel.route.as_ref(),
            HttpRoute::Refused { route, .. } => Some(route),
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.info().is_some_and(|info| info.expired(now))
    }
}

/// Everything built from one netmap: HTTP hostnames, passthrough hostnames, TCP ports.
#[derive(Debug, Clone, Default)]
pub struct RouteSet {
    /// HTTP funnels by lower-case hostname.
    pub http: HashMap<String, HttpRoute>,
    /// TLS passthrough funnels by lower-case hostname.
    pub passthrough: HashMap<String, Arc<PassthroughFunnel>>,
    /// TCP funnels by public port.
    pub tcp: HashMap<u16, Arc<TcpFunnel>>,
}

impl RouteSet {
    /// Every route's information (HTTP, passthrough and TCP).
    pub fn infos(&self) -> Vec<Arc<RouteInfo>> {
        let http = self.http.values().filter_map(|r| r.info().cloned());
        let passthrough = self.passthrough.values().filter_map(|f| f.route.clone());
        let tcp = self.tcp.values().filter_map(|f| f.route.clone());
        http.chain(passthrough).chain(tcp).collect()
    }

    /// The earliest expiry of any route, for the expiry timer.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.infos().iter().filter_map(|info| info.expires_at).min()
    }

    /// This set without the routes expired at `now`, and the ones it dropped.
    pub fn without_expired(&self, now: SystemTime) -> (RouteSet, Vec<Arc<RouteInfo>>) {
        let mut kept = self.clone();
        let mut gone = Vec::new();
        kept.http.retain(|_, route| {
            let expired = route.expired(now);
            if expired && let Some(info) = route.info() {
                gone.push(Arc::clone(info));
            }
            !expired
        });
        kept.passthrough
            .retain(|_, funnel| keep(funnel.route.as_ref(), now, &mut gone));
        kept.tcp
            .retain(|_, funnel| keep(funnel.route.as_ref(), now, &mut gone));
        (kept, gone)
    }
}

fn keep(info: Option<&Arc<RouteInfo>>, now: SystemTime, gone: &mut Vec<Arc<RouteInfo>>) -> bool {
    match info {
        Some(info) if info.expired(now) => {
            gone.push(Arc::clone(info));
            false
        }
        _ => true,
    }
}

/// What the edge finds for a hostname in the table.
#[derive(Debug, Clone)]
pub enum HttpLookup {
    /// Serve it.
    Serve(Arc<Funnel>, Option<Arc<rustls::ServerConfig>>),
    /// Known, not servable: answer `503`.
    Refused(Arc<RouteInfo>),
    /// Not in the table (or expired).
    Unknown,
}

/// The live table of funnels from the coordination server, shared by the edge, the TLS
/// port and the [`RouteFollower`] that replaces it on every netmap change. Lookups check
/// expiry against the clock they are given, so a funnel stops at its expiry even before
/// the follower removes it.
#[derive(Debug, Default)]
pub struct FunnelTable {
    current: RwLock<Arc<RouteSet>>,
}

impl FunnelTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the whole table.
    pub fn replace(&self, set: RouteSet) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
    }

    /// The current set.
    pub fn snapshot(&self) -> Arc<RouteSet> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The HTTP funnel of `host` (lower case) at `now`.
    pub fn http(&self, host: &str, now: SystemTime) -> HttpLookup {
        let set = self.snapshot();
        match set.http.get(host) {
            Some(route) if route.expired(now) => HttpLookup::Unknown,
            Some(HttpRoute::Serve { funnel, tls }) => {
                HttpLookup::Serve(Arc::clone(funnel), tls.clone())
            }
            Some(HttpRoute::Refused { route, .. }) => HttpLookup::Refused(Arc::clone(route)),
            None => HttpLookup::Unknown,
        }
    }

    /// The passthrough funnel of `host` (lower case) at `now`.
    pub fn passthrough(&self, host: &str, now: SystemTime) -> Option<Arc<PassthroughFunnel>> {
        let set = self.snapshot();
        let funnel = set.passthrough.get(host)?;
        if funnel.route.as_ref().is_some_and(|info| info.expired(now)) {
            return None;
        }
        Some(Arc::clone(funnel))
    }

    /// The TCP funnel on `port` at `now`.
    pub fn tcp(&self, port: u16, now: SystemTime) -> Option<Arc<TcpFunnel>> {
        let set = self.snapshot();
        let funnel = set.tcp.get(&port)?;
        if funnel.route.as_ref().is_some_and(|info| info.expired(now)) {
            return None;
        }
        Some(Arc::clone(funnel))
    }

    /// Whether the edge terminates TLS for `host` at `now` (an HTTP route, served or
    /// refused).
    pub fn terminates(&self, host: &str, now: SystemTime) -> bool {
        !matches!(self.http(host, now), HttpLookup::Unknown)
    }
}

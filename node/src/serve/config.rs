//! What a node serves: one [`Service`] per tailnet port, its target, and whether it is
//! funnelled. Serializable, so the agent can persist `--bg` serves.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use postern_proto::funnel_hop::FUNNEL_HOP_PORT;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Everything a node serves, by tailnet port. Build it with [`ServeConfig::insert`] or
/// deserialize it (JSON or TOML); both check it, so a `ServeConfig` is always valid: ports
/// are unique, nonzero and not [`FUNNEL_HOP_PORT`], and every HTTP service has a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ServeConfigFile", into = "ServeConfigFile")]
pub struct ServeConfig {
    services: Vec<Service>,
}

/// One served port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The node's tailnet TCP port peers connect to (and the port a funnel names).
    pub port: u16,
    /// Where connections go.
    pub target: ServeTarget,
    /// Whether the ingress may funnel public traffic to this port. A funnelled port is also
    /// served on the tailnet (subject to the policy, like any port).
    #[serde(default)]
    pub funnel: bool,
}

/// Where a service's connections go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServeTarget {
    /// An HTTP reverse proxy with identity headers, routed by path prefix.
    Http {
        /// The routes; the longest matching prefix wins.
        routes: Vec<HttpRoute>,
    },
    /// A raw byte pipe to a local TCP address.
    Tcp {
        /// The local address, e.g. `127.0.0.1:22`.
        target: SocketAddr,
    },
}

/// One path-prefix route of an HTTP service (`--set-path /api http://127.0.0.1:8080`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// The mount point, e.g. `/` or `/api`.
    pub path: RoutePath,
    /// The origin the route proxies to.
    pub origin: OriginUrl,
}

/// A route's mount point: starts with `/`, no trailing `/` except for the root, no `?`,
/// `#` or whitespace. Matches itself and everything below it on a segment boundary:
/// `/api` matches `/api` and `/api/users`, not `/apix`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoutePath(String);

/// An origin to proxy to: `http://HOST:PORT` with an optional base path, e.g.
/// `http://127.0.0.1:8080` or `http://localhost:3000/app`. Only plain HTTP: the origin is
/// local, the tailnet hop is already encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OriginUrl {
    authority: String,
    base_path: String,
}

/// Why a serve configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeConfigError {
    /// Two services on one port.
    #[error("port {port} is served twice; remove one (`postern serve --remove {port}`)")]
    DuplicatePort {
        /// The port.
        port: u16,
    },
    /// A port the node reserves.
    #[error("port {port} cannot be served: {reason}; pick another tailnet port")]
    ReservedPort {
        /// The port.
        port: u16,
        /// Why it is reserved.
        reason: &'static str,
    },
    /// An HTTP service without routes.
    #[error("the HTTP service on port {port} has no routes; give at least one target")]
    NoRoutes {
        /// The port.
        port: u16,
    },
    /// Two routes with the same mount point.
    #[error("the HTTP service on port {port} has two routes for {path}; keep one")]
    DuplicateRoute {
        /// The port.
        port: u16,
        /// The mount point.
        path: String,
    },
    /// A mount point that is not a clean absolute path.
    #[error(
        "{path:?} is not a route path: it must start with '/', have no trailing '/', and contain no '?', '#' or spaces (e.g. /api)"
    )]
    BadRoutePath {
        /// What was given.
        path: String,
    },
    /// An origin that is not `http://HOST:PORT[/path]`.
    #[error(
        "{url:?} is not an origin to proxy to: {reason} (expected http://HOST:PORT[/path], e.g. http://127.0.0.1:3000)"
    )]
    BadOrigin {
        /// What was given.
        url: String,
        /// What was wrong.
        reason: &'static str,
    },
}

impl ServeConfig {
    /// An empty configuration: nothing served.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the service on `service.port`. Fails if the port is reserved or
    /// the service is not valid (an HTTP service without routes, duplicate mount points).
    pub fn insert(&mut self, service: Service) -> Result<(), ServeConfigError> {
        check_service(&service)?;
        self.services.retain(|s| s.port != service.port);
        self.services.push(service);
        self.services.sort_by_key(|s| s.port);
        Ok(())
    }

    /// Removes the service on `port`; returns it if there was one.
    pub fn remove(&mut self, port: u16) -> Option<Service> {
        let index = self.services.iter().position(|s| s.port == port)?;
        Some(self.services.remove(index))
    }

    /// The services, by port.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The service on `port`, if any.
    pub fn service(&self, port: u16) -> Option<&Service> {
        self.services.iter().find(|s| s.port == port)
    }

    /// The service on `port` if it is funnelled.
    pub fn funnelled(&self, port: u16) -> Option<&Service> {
        self.service(port).filter(|s| s.funnel)
    }
}

impl Service {
    /// An HTTP service on `port` proxying everything to `origin`.
    pub fn http(port: u16, origin: OriginUrl) -> Self {
        Self {
            port,
            target: ServeTarget::Http {
                routes: vec![HttpRoute {
                    path: RoutePath::root(),
                    origin,
                }],
            },
            funnel: false,
        }
    }

    /// A raw TCP service on `port` piping to `target`.
    pub fn tcp(port: u16, target: SocketAddr) -> Self {
        Self {
            port,
            target: ServeTarget::Tcp { target },
            funnel: false,
        }
    }

    /// Adds (or replaces) the route at `path` of an HTTP service; no effect on a TCP
    /// service.
    #[must_use]
    pub fn with_route(mut self, path: RoutePath, origin: OriginUrl) -> Self {
        if let ServeTarget::Http { routes } = &mut self.target {
            routes.retain(|r| r.path != path);
            routes.push(HttpRoute { path, origin });
        }
        self
    }

    /// Marks the service as funnelled (or not).
    #[must_use]
    pub fn funnelled(mut self, funnel: bool) -> Self {
        self.funnel = funnel;
        self
    }
}

impl RoutePath {
    /// The root mount point, `/`.
    pub fn root() -> Self {
        Self("/".into())
    }

    /// Checks a mount point. Fails with [`ServeConfigError::BadRoutePath`].
    pub fn parse(path: &str) -> Result<Self, ServeConfigError> {
        let ok = path.starts_with('/')
            && (path == "/" || !path.ends_with('/'))
            && !path.contains("//")
            && !path
                .chars()
                .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control());
        if ok {
            Ok(Self(path.to_string()))
        } else {
            Err(ServeConfigError::BadRoutePath {
                path: path.to_string(),
            })
        }
    }

    /// The mount point.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// If `request_path` is at or below this mount point, what is left of it (always
    /// starting with `/`); `None` otherwise.
    pub fn strip<'a>(&self, request_path: &'a str) -> Option<&'a str> {
        if self.0 == "/" {
            return Some(request_path);
        }
        let rest = request_path.strip_prefix(self.0.as_str())?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }
}

impl OriginUrl {
    /// Parses `http://HOST:PORT[/path]`; a bare port (`3000`) or `HOST:PORT` means
    /// `http://127.0.0.1:3000` / `http://HOST:PORT`. Fails with
    /// [`ServeConfigError::BadOrigin`].
    pub fn parse(text: &str) -> Result<Self, ServeConfigError> {
        let bad = |reason| ServeConfigError::BadOrigin {
            url: text.to_string(),
            reason,
        };
        if let Ok(port) = text.parse::<u16>() {
            if port == 0 {
                return Err(bad("port 0 is not a port"));
            }
            return Ok(Self {
                authority: format!("127.0.0.1:{port}"),
                base_path: String::new(),
            });
        }
        let rest = match text.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(bad(
                    "https origins are not supported; use http to a local port",
                ));
            }
            Some(_) => return Err(bad("only the http scheme is supported")),
            None => text,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let uri_authority: http::uri::Authority = authority
            .parse()
            .map_err(|_| bad("the host:port is not valid"))?;
        if uri_authority.port_u16().is_none_or(|p| p == 0) {
            return Err(bad("it needs a port"));
        }
        if authority.contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if path.contains(['?', '#']) || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the path may not have a query, fragment or spaces"));
        }
        Ok(Self {
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `HOST:PORT`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The base path without a trailing `/` (empty for none).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }
}

impl fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.base_path)
    }
}

impl fmt::Display for RoutePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The live serve configuration a node's listeners read: cheap to clone, shared between
/// the agent (which changes it) and the [`ServeRuntime`](super::ServeRuntime) (which
/// opens and closes listeners to match).
#[derive(Debug, Clone)]
pub struct ServeTable {
    current: Arc<RwLock<Arc<ServeConfig>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl ServeTable {
    /// A table holding `config`.
    pub fn new(config: ServeConfig) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            current: Arc::new(RwLock::new(Arc::new(config))),
            changed: Arc::new(changed),
        }
    }

    /// The configuration now. Connections look their service up here when they arrive, so
    /// a change applies to the next connection.
    pub fn current(&self) -> Arc<ServeConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the configuration; listeners follow at once.
    pub fn set(&self, config: ServeConfig) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Changes the configuration with `edit`; nothing changes if `edit` fails.
    pub fn update<E>(&self, edit: impl FnOnce(&mut ServeConfig) -> Result<(), E>) -> Result<(), E> {
        let mut config = (*self.current()).clone();
        edit(&mut config)?;
        self.set(config);
        Ok(())
    }

    /// A receiver that sees every change (for the runtime).
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

impl Default for ServeTable {
    fn default() -> Self {
        Self::new(ServeConfig::default())
    }
}

/// The serialized form of [`ServeConfig`]: a list, so that TOML (string keys only) can
/// hold it as well as JSON.
#[derive(Serialize, Deserialize)]
struct ServeConfigFile {
    #[serde(default)]
    services: Vec<Service>,
}

impl TryFrom<ServeConfigFile> for ServeConfig {
    type Error = ServeConfigError;

    fn try_from(file: ServeConfigFile) -> Result<Self, Self::Error> {
        let mut config = ServeConfig::new();
        for service in file.services {
            if config.service(service.port).is_some() {
                return Err(ServeConfigError::DuplicatePort { port: service.port });
            }
            config.insert(service)?;
        }
        Ok(config)
    }
}

impl From<ServeConfig> for ServeConfigFile {
    fn from(config: ServeConfig) -> Self {
        Self {
            services: config.services,
        }
    }
}

impl TryFrom<String> for RoutePath {
    type Error = ServeConfigError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<RoutePath> for String {
    fn from(path: RoutePath) -> Self {
        path.0
    }
}

impl TryFrom<String> for OriginUrl {
    type Error = ServeConfigError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<OriginUrl> for String {
    fn from(url: OriginUrl) -> Self {
        url.to_string()
    }
}

fn check_service(service: &Service) -> Result<(), ServeConfigError> {
    let port = service.port;
    if port == 0 {
        return Err(ServeConfigError::ReservedPort {
            port,
            reason: "port 0 is not a port",
        });
    }
    if port == FUNNEL_HOP_PORT {
        return Err(ServeConfigError::ReservedPort {
            port,
            reason: "it is the node's funnel hop port",
        });
    }
    if let ServeTarget::Http { routes } = &service.target {
        if routes.is_empty() {
            return Err(ServeConfigError::NoRoutes { port });
        }
        let mut paths: Vec<&str> = routes.iter().map(|r| r.path.as_str()).collect();
        paths.sort_unstable();
        if let Some(pair) = paths.windows(2).find(|w| w.first() == w.get(1))
            && let Some(path) = pair.first()
        {
            return Err(ServeConfigError::DuplicateRoute {
                port,
                path: (*path).to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_paths_match_on_segment_boundaries() {
        let api = RoutePath::parse("/api").unwrap();
        assert_eq!(api.strip("/api"), Some("/"));
        assert_eq!(api.strip("/api/users"), Some("/users"));
        assert_eq!(api.strip("/apix"), None);
        assert_eq!(RoutePath::root().strip("/x"), Some("/x"));
        for bad in ["api", "/api/", "/a b", "/a?b", "//x"] {
            assert!(RoutePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_parse_and_errors_say_what_to_write() {
        let o = OriginUrl::parse("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!(o.authority(), "127.0.0.1:8080");
        assert_eq!(o.base_path(), "/base");
        assert_eq!(o.to_string(), "http://127.0.0.1:8080/base");
        assert_eq!(
            OriginUrl::parse("3000").unwrap().to_string(),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            OriginUrl::parse("localhost:5173").unwrap().to_string(),
            "http://localhost:5173"
        );
        assert_eq!(
            OriginUrl::parse("https://x:1").unwrap_err().to_string(),
            "\"https://x:1\" is not an origin to proxy to: https origins are not supported; use http to a local port (expected http://HOST:PORT[/path], e.g. http://127.0.0.1:3000)"
        );
        assert_eq!(
            OriginUrl::parse("http://localhost")
                .unwrap_err()
                .to_string(),
            "\"http://localhost\" is not an origin to proxy to: it needs a port (expected http://HOST:PORT[/path], e.g. http://127.0.0.1:3000)"
        );
    }

    #[test]
    fn config_round_trips_through_json_and_toml_and_refuses_bad_files() {
        let mut config = ServeConfig::new();
        config
            .insert(
                Service::http(3000, OriginUrl::parse("3000").unwrap())
                    .with_route(
                        RoutePath::parse("/api").unwrap(),
                        OriginUrl::parse("http://127.0.0.1:8080").unwrap(),
                    )
                    .funnelled(true),
            )
            .unwrap();
        config
            .insert(Service::tcp(22, "127.0.0.1:22".parse().unwrap()))
            .unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<ServeConfig>(&json).unwrap(), config);
        let toml_text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<ServeConfig>(&toml_text).unwrap(), config);
        assert_eq!(config.services()[0].port, 22);
        assert!(config.funnelled(3000).is_some());
        assert!(config.funnelled(22).is_none());

        let duplicate = r#"{"services":[
            {"port":1,"target":{"kind":"tcp","target":"127.0.0.1:1"}},
            {"port":1,"target":{"kind":"tcp","target":"127.0.0.1:2"}}]}"#;
        let error = serde_json::from_str::<ServeConfig>(duplicate).unwrap_err();
        assert!(
            error.to_string().contains("port 1 is served twice"),
            "{error}"
        );
        let hop = format!(
            r#"{{"services":[{{"port":{FUNNEL_HOP_PORT},"target":{{"kind":"tcp","target":"127.0.0.1:1"}}}}]}}"#
        );
        let error = serde_json::from_str::<ServeConfig>(&hop).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("port 41700 cannot be served: it is the node's funnel hop port"),
            "{error}"
        );
        let bad_path = r#"{"services":[{"port":80,"target":{"kind":"http","routes":[
            {"path":"api","origin":"3000"}]}}]}"#;
        let error = serde_json::from_str::<ServeConfig>(bad_path).unwrap_err();
        assert!(
            error.to_string().contains("\"api\" is not a route path"),
            "{error}"
        );
        let no_routes = r#"{"services":[{"port":80,"target":{"kind":"http","routes":[]}}]}"#;
        let error = serde_json::from_str::<ServeConfig>(no_routes).unwrap_err();
        assert!(error.to_string().contains("has no routes"), "{error}");
    }

    #[test]
    fn table_updates_are_atomic() {
        let table = ServeTable::default();
        let changes = table.subscribe();
        table
            .update(|c| c.insert(Service::tcp(22, "127.0.0.1:22".parse().unwrap())))
            .unwrap();
        assert!(changes.has_changed().unwrap());
        let failed = table.update(|c| c.insert(Service::tcp(0, "127.0.0.1:1".parse().unwrap())));
        assert!(failed.is_err());
        assert_eq!(table.current().services().len(), 1);
    }
}

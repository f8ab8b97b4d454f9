//! The `ingress.toml` configuration file (see `docs/ingress.md` for a full example).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::certs::{AcmeConfig, ChallengeKind};
use crate::edge::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_IDLE_PER_TARGET, Funnel, Limits, PoolLimits, TcpUpstream,
};
use crate::gate::oidc::load_or_create_session_key;
use crate::gate::{
    GateChain, IpAction, IpRule, IpRulesConfig, IpRulesGate, JwtConfig, JwtGate, MtlsConfig,
    MtlsGate, OidcConfig, OidcGate, PassThroughGate, Provider, RateLimit, RateLimitConfig,
    RateLimitKey, Secret, WebhookGate, WebhookGateConfig,
};
use crate::routes::OidcDefaults;
use crate::tcp_funnel::{ClientLimiter, PassthroughFunnel, TcpFunnel, TcpLimits};

/// The default of `limits.max_connections_per_client`.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// Where the ACME account and issued certificates live.
    pub state_dir: PathBuf,
    /// Where audit records go: a file path, or `-` for stdout (the default).
    #[serde(default = "default_audit_log")]
    pub audit_log: String,
    /// Listening addresses.
    pub listen: ListenConfig,
    /// ACME certificates (one per funnel hostname).
    pub acme: Option<AcmeSection>,
    /// A static certificate and key, used for every hostname without its own certificate.
    pub static_cert: Option<StaticCertSection>,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The funnels.
    #[serde(default, rename = "funnel")]
    pub funnels: Vec<FunnelSection>,
    /// Raw TCP funnels, each on a port of `listen.tcp_port_range`.
    #[serde(default, rename = "tcp_funnel")]
    pub tcp_funnels: Vec<TcpFunnelSection>,
    /// TLS passthrough funnels: hostnames on the TLS port whose TLS the target terminates.
    #[serde(default, rename = "passthrough_funnel")]
    pub passthrough_funnels: Vec<PassthroughFunnelSection>,
    /// The embedded node: with it, the ingress joins the tailnet and serves the funnels
    /// the coordination server lists in its netmap, besides the file's.
    pub node: Option<NodeSection>,
    /// The ingress's OIDC client, used by every funnel route with a login gate.
    pub oidc: Option<OidcDefaultsSection>,
}

/// The default `node.auth_key_env`.
pub const DEFAULT_AUTH_KEY_ENV: &str = "POSTERN_AUTH_KEY";

/// `[node]`: the node the ingress embeds to reach funnel targets over the mesh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The coordination server, `http://host:port`.
    pub coord_url: String,
    /// The coordination server's key (`mkey:…`, from `postern-coord key`): checked at the
    /// first login instead of trusting the first key seen.
    pub coord_key: Option<String>,
    /// The environment variable holding the ingress auth key (`postern-coord keys create
    /// --ingress`), needed for the first login only. Default `POSTERN_AUTH_KEY`.
    pub auth_key_env: Option<String>,
    /// A file holding the auth key instead (mode 0600 advised); wins over the variable.
    pub auth_key_file: Option<PathBuf>,
    /// Where the node keeps its keys and login (default `<state_dir>/node`).
    pub state_dir: Option<PathBuf>,
    /// The hostname to register (default `ingress`).
    pub hostname: Option<String>,
    /// The WireGuard UDP port (default 0: any free port).
    #[serde(default)]
    pub listen_port: u16,
}

/// `[oidc]`: the ingress's own OIDC client for login gates of funnel routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcDefaultsSection {
    /// The IdP's issuer URL.
    pub issuer: String,
    /// The client id registered at the IdP; its redirect URIs must include
    /// `https://<funnel hostname>/.postern/callback`.
    pub client_id: String,
    /// The environment variable holding the client secret (confidential clients).
    pub client_secret_env: Option<String>,
    /// Scopes besides `openid` (default `["email", "profile", "groups"]`).
    pub scopes: Option<Vec<String>>,
    /// Session lifetime in seconds (default 43200).
    pub session_ttl_secs: Option<u64>,
}

/// One `[[tcp_funnel]]`: a public port piped to a target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFunnelSection {
    /// The public port; must lie in `listen.tcp_port_range`.
    pub port: u16,
    /// The target, `host:port`.
    pub target: String,
    /// Send a PROXY protocol v2 header to the target first (default false).
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// One `[[passthrough_funnel]]`: a hostname on the TLS port piped, still encrypted, to a
/// target that terminates TLS itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughFunnelSection {
    /// The public hostname (the SNI clients send).
    pub hostname: String,
    /// The target, `host:port`, speaking TLS.
    pub target: String,
    /// Send a PROXY protocol v2 header to the target first (default false).
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `listen.tcp_port_range`: the public ports TCP funnels may use, `"FIRST-LAST"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TcpPortRange {
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range (inclusive).
    pub last: u16,
}

impl TcpPortRange {
    /// Whether `port` lies in the range.
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl TryFrom<String> for TcpPortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "tcp_port_range {text:?} is not \"FIRST-LAST\" with 1 <= FIRST <= LAST <= 65535 (e.g. \"20000-20999\")"
            )
        };
        let (first, last) = text.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// The TLS port, e.g. `0.0.0.0:443`.
    pub https: SocketAddr,
    /// The plain HTTP port (HTTP-01 challenges, redirects), e.g. `0.0.0.0:80`.
    pub http: Option<SocketAddr>,
    /// The ports TCP funnels may listen on (on the IP of `https`), e.g. `"20000-20999"`.
    pub tcp_port_range: Option<TcpPortRange>,
    /// Where to serve `GET /metrics` (Prometheus) and `GET /healthz`, e.g.
    /// `127.0.0.1:9443`. Unset: not served. Keep it private: the series name the funnels.
    pub metrics: Option<SocketAddr>,
}

/// `[acme]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The CA's directory URL.
    pub directory: String,
    /// A PEM root for the CA's API certificate (private CAs, pebble).
    pub ca_bundle: Option<PathBuf>,
    /// Account contact address.
    pub email: Option<String>,
    /// `http-01` (default) or `tls-alpn-01`.
    #[serde(default = "default_challenge")]
    pub challenge: ChallengeKind,
}

/// `[static_cert]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCertSection {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Largest gated request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds a connection may wait idle for a request head.
    pub idle_timeout_secs: u64,
    /// Seconds for the body to arrive and the target to answer with a head.
    pub request_timeout_secs: u64,
    /// Concurrent connections one client IP may hold open (TLS port and TCP funnels
    /// together); `0` for no bound.
    pub max_connections_per_client: usize,
    /// Seconds a TCP or passthrough connection may move no byte before it is closed.
    pub tcp_idle_timeout_secs: u64,
    /// Seconds after which a TCP or passthrough connection is closed however busy; `0` for
    /// no bound.
    pub tcp_total_timeout_secs: u64,
    /// Idle keep-alive connections kept per HTTP funnel target (a mesh node or a plain
    /// TCP target) for reuse by later requests; `0` opens a connection per request.
    pub upstream_max_idle: usize,
    /// Seconds an idle pooled upstream connection is kept before it is closed; shorter
    /// than the target's own keep-alive timeout is best (then the edge closes first).
    pub upstream_idle_timeout_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_header_bytes: limits.max_header_bytes,
            max_body_bytes: limits.max_body_bytes,
            idle_timeout_secs: limits.idle_timeout.as_secs(),
            request_timeout_secs: limits.request_timeout.as_secs(),
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            tcp_idle_timeout_secs: TcpLimits::default().idle_timeout.as_secs(),
            tcp_total_timeout_secs: 0,
            upstream_max_idle: DEFAULT_MAX_IDLE_PER_TARGET,
            upstream_idle_timeout_secs: DEFAULT_IDLE_TIMEOUT.as_secs(),
        }
    }
}

/// One `[[funnel]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelSection {
    /// The public hostname.
    pub hostname: String,
    /// The target, `host:port`, reached over plain TCP (HTTP/1.1).
    pub target: String,
    /// How the gates combine when `require` is absent: `any-of` (default) or `all-of`.
    #[serde(default = "default_gate_mode")]
    pub gate_mode: String,
    /// How the gates combine, by name, nested: `"sso"`, `{ any = ["github", "sso"] }`,
    /// `{ all = ["office", { any = ["jwt", "sso"] }] }`. Every gate must be used.
    pub require: Option<toml::Value>,
    /// Rate limits around the whole chain.
    pub rate_limit: Option<RateLimitSection>,
    /// The gates; none means every request is forwarded (as `anonymous`).
    #[serde(default, rename = "gate")]
    pub gates: Vec<GateSection>,
}

/// `[funnel.rate_limit]`: token buckets, each optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Per client address (charged before any gate runs).
    pub per_client_ip: Option<BucketSection>,
    /// One bucket for the whole funnel (charged before any gate runs).
    pub per_funnel: Option<BucketSection>,
    /// Per admitted principal (charged after the chain admitted).
    pub per_identity: Option<BucketSection>,
}

/// One token bucket: `requests` per `per_secs`, up to `burst` at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSection {
    /// Requests per period, on average.
    pub requests: u32,
    /// The period in seconds (default 1).
    #[serde(default = "default_per_secs")]
    pub per_secs: u64,
    /// The bucket size (default: `requests`).
    pub burst: Option<u32>,
}

/// One `[[funnel.gate]]`: exactly one of `verify_webhook`, `jwt`, `oidc`, `mtls`, `ip`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    /// The name `require` refers to it by (default: the provider for webhooks, else
    /// the kind: `jwt`, `oidc`, `mtls`, `ip`).
    pub name: Option<String>,
    /// Verify webhook deliveries of this provider (`github`, `stripe`, ...).
    pub verify_webhook: Option<String>,
    /// A JWT bearer gate.
    pub jwt: Option<JwtSection>,
    /// An OIDC login gate.
    pub oidc: Option<OidcSection>,
    /// An mTLS gate.
    pub mtls: Option<MtlsSection>,
    /// An IP-rules gate.
    pub ip: Option<IpSection>,
    /// Environment variables holding the secret(s), newest first: a single name or
    /// `secret_envs` for a rotation.
    pub secret_env: Option<String>,
    /// Several secret variables (rotation), newest first.
    #[serde(default)]
    pub secret_envs: Vec<String>,
    /// Timestamp window in seconds (provider default when absent).
    pub tolerance_secs: Option<u64>,
    /// The public URL given to the provider, when the edge sees another (Twilio, Square).
    pub public_url: Option<String>,
}

/// `[funnel.gate.jwt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// The issuer's JWKS URL; without it, found through the issuer's OpenID Connect
    /// discovery document.
    pub jwks_url: Option<String>,
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Allowed algorithms (default `["RS256", "ES256"]`).
    pub algorithms: Option<Vec<String>>,
    /// Clock skew in seconds (default 60).
    pub clock_skew_secs: Option<u64>,
    /// Claims that must be present (`name` or `name=value`).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claims passed to the origin as `Postern-Identity-<Claim>`.
    #[serde(default)]
    pub identity_claims: Vec<String>,
}

/// `[funnel.gate.oidc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The IdP's issuer URL.
    pub issuer: String,
    /// The client id registered at the IdP.
    pub client_id: String,
    /// The environment variable holding the client secret (confidential clients).
    pub client_secret_env: Option<String>,
    /// The callback URL registered at the IdP (default
    /// `https://<hostname>/.postern/callback`).
    pub redirect_url: Option<String>,
    /// The sign-out path (default `/.postern/logout`).
    pub logout_path: Option<String>,
    /// Scopes besides `openid` (default `["email", "profile", "groups"]`).
    pub scopes: Option<Vec<String>>,
    /// Emails admitted.
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    /// Email domains admitted.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Groups admitted.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Session lifetime in seconds (default 43200, 12 hours).
    pub session_ttl_secs: Option<u64>,
    /// The session key file (default `<state_dir>/oidc/<hostname>.key`; made, 0600, if
    /// missing).
    pub session_key_file: Option<PathBuf>,
}

/// `[funnel.gate.mtls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSection {
    /// PEM file of the CA(s) that issue client certificates.
    pub ca: PathBuf,
    /// Whether a certificate is required (default true).
    #[serde(default = "default_true")]
    pub required: bool,
}

/// `[funnel.gate.ip]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpSection {
    /// Rules, first match wins: `"allow 10.0.0.0/8"`, `"deny 203.0.113.7"`.
    pub rules: Vec<String>,
    /// `deny` (default) or `allow` for addresses no rule matches.
    #[serde(default = "default_deny")]
    pub default: String,
    /// Proxies whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/missing fields.
    #[error("{path} is not a valid ingress configuration: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A semantic problem, described in full.
    #[error("{0}")]
    Invalid(String),
}

impl IngressConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The limits as the edge uses them.
    pub fn limits(&self) -> Limits {
        Limits {
            max_header_bytes: self.limits.max_header_bytes,
            max_body_bytes: self.limits.max_body_bytes,
            idle_timeout: Duration::from_secs(self.limits.idle_timeout_secs),
            request_timeout: Duration::from_secs(self.limits.request_timeout_secs),
        }
    }

    /// The bounds of each HTTP funnel target's pool of upstream connections.
    pub fn pool_limits(&self) -> PoolLimits {
        PoolLimits {
            max_idle: self.limits.upstream_max_idle,
            idle_timeout: Duration::from_secs(self.limits.upstream_idle_timeout_secs),
        }
    }

    /// The bounds of TCP and passthrough connections.
    pub fn tcp_limits(&self) -> TcpLimits {
        TcpLimits {
            idle_timeout: Duration::from_secs(self.limits.tcp_idle_timeout_secs),
            total_timeout: (self.limits.tcp_total_timeout_secs > 0)
                .then(|| Duration::from_secs(self.limits.tcp_total_timeout_secs)),
            ..TcpLimits::default()
        }
    }

    /// The per-client connection limiter (shared by the TLS port and the TCP funnels).
    pub fn client_limiter(&self) -> Arc<ClientLimiter> {
        let max = self.limits.max_connections_per_client;
        ClientLimiter::new((max > 0).then_some(max))
    }

    /// The TCP funnels, each reaching its target over plain TCP.
    pub fn tcp_funnels(&self) -> Vec<TcpFunnel> {
        self.tcp_funnels
            .iter()
            .map(|section| TcpFunnel {
                port: section.port,
                upstream: Arc::new(TcpUpstream::new(section.target.clone())),
                proxy_protocol: section.proxy_protocol,
                route: None,
                gates: None,
            })
            .collect()
    }

    /// The passthrough funnels, each reaching its target over plain TCP.
    pub fn passthrough_funnels(&self) -> Vec<PassthroughFunnel> {
        self.passthrough_funnels
            .iter()
            .map(|section| PassthroughFunnel {
                hostname: section.hostname.to_ascii_lowercase(),
                upstream: Arc::new(TcpUpstream::new(section.target.clone())),
                proxy_protocol: section.proxy_protocol,
                route: None,
                gates: None,
            })
            .collect()
    }

    /// The `[oidc]` section as the route builder uses it, reading the client secret
    /// through `env`. Fails if the secret's variable is not set.
    pub fn oidc_defaults(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<OidcDefaults>, ConfigError> {
        let Some(oidc) = &self.oidc else {
            return Ok(None);
        };
        let client_secret = match &oidc.client_secret_env {
            Some(name) => Some(Secret::from(env(name).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "[oidc]: the environment variable {name} (the client secret) is not set"
                ))
            })?)),
            None => None,
        };
        Ok(Some(OidcDefaults {
            issuer: oidc.issuer.clone(),
            client_id: oidc.client_id.clone(),
            client_secret,
            scopes: oidc.scopes.clone(),
            session_ttl: oidc.session_ttl_secs.map(Duration::from_secs),
        }))
    }

    /// The ACME settings, if certificates come from a CA.
    pub fn acme(&self) -> Option<AcmeConfig> {
        self.acme.as_ref().map(|acme| AcmeConfig {
            directory_url: acme.directory.clone(),
            ca_bundle: acme.ca_bundle.clone(),
            email: acme.email.clone(),
            challenge: acme.challenge,
        })
    }

    /// Checks the cross-field rules: a certificate source, unique hostnames, an HTTP port
    /// for HTTP-01.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.acme.is_none() && self.static_cert.is_none() {
            return Err(ConfigError::Invalid(
                "no certificate source: add an [acme] section or a [static_cert] (or pass --cert and --key)".into(),
            ));
        }
        if let Some(acme) = &self.acme
            && acme.challenge == ChallengeKind::Http01
            && self.listen.http.is_none()
        {
            return Err(ConfigError::Invalid(
                "the http-01 challenge needs the HTTP port: set listen.http (e.g. \"0.0.0.0:80\") or use challenge = \"tls-alpn-01\"".into(),
            ));
        }
        if let Some(node) = &self.node {
            postern_node::daemon::coord_addr(&node.coord_url)
                .map_err(|e| ConfigError::Invalid(format!("[node] coord_url: {e}")))?;
            if let Some(key) = &node.coord_key {
                key.parse::<postern_proto::MachinePublicKey>().map_err(|e| {
                    ConfigError::Invalid(format!(
                        "[node] coord_key {key:?} is not a coordination server key (mkey:…): {e}"
                    ))
                })?;
            }
        }
        let mut seen = std::collections::HashSet::new();
        for funnel in &self.funnels {
            if !seen.insert(funnel.hostname.to_ascii_lowercase()) {
                return Err(ConfigError::Invalid(format!(
                    "hostname {} appears in two funnels; each hostname maps to one funnel",
                    funnel.hostname
                )));
            }
        }
        self.validate_byte_funnels(&mut seen)
    }

    fn validate_byte_funnels(
        &self,
        hostnames: &mut std::collections::HashSet<String>,
    ) -> Result<(), ConfigError> {
        for funnel in &self.passthrough_funnels {
            if !hostnames.insert(funnel.hostname.to_ascii_lowercase()) {
                return Err(ConfigError::Invalid(format!(
                    "hostname {} appears in two funnels (passthrough or not); each hostname maps to one funnel",
                    funnel.hostname
                )));
            }
        }
        let mut ports = std::collections::HashSet::new();
        for funnel in &self.tcp_funnels {
            let port = funnel.port;
            let Some(range) = self.listen.tcp_port_range else {
                return Err(ConfigError::Invalid(format!(
                    "tcp_funnel on port {port}: set listen.tcp_port_range (e.g. \"20000-20999\") to the ports TCP funnels may use"
                )));
            };
            if !range.contains(port) {
                return Err(ConfigError::Invalid(format!(
                    "tcp_funnel on port {port}: the port is outside listen.tcp_port_range {}-{}",
                    range.first, range.last
                )));
            }
            let taken = Some(port) == Some(self.listen.https.port())
                || Some(port) == self.listen.http.map(|a| a.port());
            if taken || !ports.insert(port) {
                return Err(ConfigError::Invalid(format!(
                    "tcp_funnel on port {port}: the port is already used by another funnel or listener"
                )));
            }
        }
        Ok(())
    }

    /// Builds the funnels, reading each gate's secret from the environment through `env`,
    /// CA files, and OIDC session keys (made in the state directory when missing).
    pub fn funnels(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<Funnel>, ConfigError> {
        self.funnels
            .iter()
            .map(|section| build_funnel(section, env, &self.state_dir, self.pool_limits()))
            .collect()
    }
}

fn build_funnel(
    section: &FunnelSection,
    env: &dyn Fn(&str) -> Option<String>,
    state_dir: &Path,
    pool_limits: PoolLimits,
) -> Result<Funnel, ConfigError> {
    let host = section.hostname.to_ascii_lowercase();
    let invalid = |message: String| ConfigError::Invalid(format!("funnel {host}: {message}"));
    let mut named: Vec<(String, GateChain)> = Vec::new();
    for (index, gate) in section.gates.iter().enumerate() {
        let (default_name, chain) =
            build_gate(gate, index + 1, &host, env, state_dir).map_err(invalid)?;
        let name = gate.name.clone().unwrap_or(default_name);
        if named.iter().any(|(existing, _)| *existing == name) {
            return Err(invalid(format!(
                "two gates are named {name:?}; give each a distinct `name` so `require` can tell them apart"
            )));
        }
        named.push((name, chain));
    }
    let chain = match (&section.require, named.len()) {
        (Some(_), 0) => {
            return Err(invalid(
                "`require` is set but the funnel has no [[funnel.gate]]".into(),
            ));
        }
        (None, 0) => GateChain::gate(PassThroughGate),
        (Some(expression), _) => {
            let mut used = vec![false; named.len()];
            let chain = parse_require(expression, &named, &mut used)
                .map_err(|e| invalid(format!("require: {e}")))?;
            if let Some((name, _)) = named
                .iter()
                .zip(&used)
                .find(|(_, used)| !**used)
                .map(|(entry, _)| entry)
            {
                return Err(invalid(format!(
                    "gate {name:?} is defined but `require` does not use it; add it to `require` or remove it"
                )));
            }
            chain
        }
        (None, _) => {
            let members = named.into_iter().map(|(_, chain)| chain).collect();
            match section.gate_mode.as_str() {
                "any-of" => GateChain::any_of(members),
                "all-of" => GateChain::all_of(members),
                other => {
                    return Err(invalid(format!(
                        "gate_mode {other:?} is not \"any-of\" or \"all-of\""
                    )));
                }
            }
            .map_err(|e| invalid(e.to_string()))?
        }
    };
    let chain = wrap_rate_limits(chain, section.rate_limit.as_ref()).map_err(invalid)?;
    Ok(Funnel {
        hostname: host,
        upstream: Arc::new(TcpUpstream::new(section.target.clone()).with_pool_limits(pool_limits)),
        chain,
        route: None,
    })
}

/// Builds one gate; returns its default name and the gate.
fn build_gate(
    gate: &GateSection,
    position: usize,
    host: &str,
    env: &dyn Fn(&str) -> Option<String>,
    state_dir: &Path,
) -> Result<(String, GateChain), String> {
    let kinds: Vec<&str> = [
        gate.verify_webhook.as_ref().map(|_| "verify_webhook"),
        gate.jwt.as_ref().map(|_| "jwt"),
        gate.oidc.as_ref().map(|_| "oidc"),
        gate.mtls.as_ref().map(|_| "mtls"),
        gate.ip.as_ref().map(|_| "ip"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let which = format!("gate #{position}");
    if kinds.len() != 1 {
        return Err(format!(
            "{which} must have exactly one of verify_webhook, [jwt], [oidc], [mtls], [ip] (found {})",
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(", ")
            }
        ));
    }
    let webhook_fields = gate.secret_env.is_some()
        || !gate.secret_envs.is_empty()
        || gate.tolerance_secs.is_some()
        || gate.public_url.is_some();
    if gate.verify_webhook.is_none() && webhook_fields {
        return Err(format!(
            "{which}: secret_env, secret_envs, tolerance_secs and public_url belong to verify_webhook gates only"
        ));
    }
    if let Some(provider) = &gate.verify_webhook {
        let provider: Provider = provider.parse().map_err(|e| format!("{which}: {e}"))?;
        let names: Vec<&String> = gate.secret_env.iter().chain(&gate.secret_envs).collect();
        let mut secrets = Vec::new();
        for name in names {
            let value = env(name).ok_or_else(|| {
                format!(
                    "the environment variable {name} (secret of the {provider} gate) is not set"
                )
            })?;
            secrets.push(Secret::new(value.into_bytes()));
        }
        let mut config = WebhookGateConfig::new(provider, secrets);
        config.tolerance_secs = gate.tolerance_secs;
        config.public_url = gate.public_url.clone();
        let built = WebhookGate::new(config).map_err(|e| e.to_string())?;
        return Ok((provider.to_string(), GateChain::gate(built)));
    }
    if let Some(jwt) = &gate.jwt {
        let mut config = match &jwt.jwks_url {
            Some(url) => JwtConfig::new(url, &jwt.issuer, jwt.audiences.clone()),
            None => JwtConfig::discovered(&jwt.issuer, jwt.audiences.clone()),
        };
        if let Some(algorithms) = &jwt.algorithms {
            config.algorithms = algorithms.clone();
        }
        if let Some(skew) = jwt.clock_skew_secs {
            config.clock_skew = Duration::from_secs(skew);
        }
        config.required_claims = jwt.required_claims.clone();
        config.identity_claims = jwt.identity_claims.clone();
        let built = JwtGate::new(config).map_err(|e| format!("{which} (jwt): {e}"))?;
        return Ok(("jwt".into(), GateChain::gate(built)));
    }
    if let Some(oidc) = &gate.oidc {
        let key_path = oidc
            .session_key_file
            .clone()
            .unwrap_or_else(|| state_dir.join("oidc").join(format!("{host}.key")));
        let key =
            load_or_create_session_key(&key_path).map_err(|e| format!("{which} (oidc): {e}"))?;
        let redirect = oidc
            .redirect_url
            .clone()
            .unwrap_or_else(|| format!("https://{host}/.postern/callback"));
        let mut config = OidcConfig::new(&oidc.issuer, &oidc.client_id, redirect, key);
        if let Some(name) = &oidc.client_secret_env {
            let value = env(name).ok_or_else(|| {
                format!(
                    "the environment variable {name} (client secret of the oidc gate) is not set"
                )
            })?;
            config.client_secret = Some(Secret::from(value));
        }
        if let Some(path) = &oidc.logout_path {
            config.logout_path = path.clone();
        }
        if let Some(scopes) = &oidc.scopes {
            config.scopes = scopes.clone();
        }
        config.allowed_emails = oidc.allowed_emails.clone();
        config.allowed_domains = oidc.allowed_domains.clone();
        config.allowed_groups = oidc.allowed_groups.clone();
        if let Some(ttl) = oidc.session_ttl_secs {
            config.session_ttl = Duration::from_secs(ttl);
        }
        let built = OidcGate::new(config).map_err(|e| format!("{which} (oidc): {e}"))?;
        return Ok(("oidc".into(), GateChain::gate(built)));
    }
    if let Some(mtls) = &gate.mtls {
        let pem = std::fs::read_to_string(&mtls.ca).map_err(|e| {
            format!(
                "{which} (mtls): cannot read the CA file {}: {e}",
                mtls.ca.display()
            )
        })?;
        let built = MtlsGate::new(&MtlsConfig {
            ca_pem: pem,
            ca_source: mtls.ca.display().to_string(),
            required: mtls.required,
        })
        .map_err(|e| format!("{which} (mtls): {e}"))?;
        return Ok(("mtls".into(), GateChain::gate(built)));
    }
    if let Some(ip) = &gate.ip {
        let rules = ip
            .rules
            .iter()
            .map(|rule| rule.parse::<IpRule>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{which} (ip): {e}"))?;
        let default = match ip.default.as_str() {
            "deny" => IpAction::Deny,
            "allow" => IpAction::Allow,
            other => {
                return Err(format!(
                    "{which} (ip): default {other:?} is not \"allow\" or \"deny\""
                ));
            }
        };
        let trusted_proxies = ip
            .trusted_proxies
            .iter()
            .map(|proxy| IpRulesGate::parse_proxy(proxy))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{which} (ip): {e}"))?;
        let built = IpRulesGate::new(IpRulesConfig {
            rules,
            default,
            trusted_proxies,
        })
        .map_err(|e| format!("{which} (ip): {e}"))?;
        return Ok(("ip".into(), GateChain::gate(built)));
    }
    Err(format!("{which} has no kind"))
}

/// Parses a `require` expression: a gate name, `{ any = [...] }` or `{ all = [...] }`.
pub fn parse_require(
    expression: &toml::Value,
    named: &[(String, GateChain)],
    used: &mut [bool],
) -> Result<GateChain, String> {
    match expression {
        toml::Value::String(name) => {
            let position = named
                .iter()
                .position(|(existing, _)| existing == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
                    format!(
                        "unknown gate {name:?} (the gates of this funnel are: {})",
                        known.join(", ")
                    )
                })?;
            if let Some(flag) = used.get_mut(position) {
                *flag = true;
            }
            named
                .get(position)
                .map(|(_, chain)| chain.clone())
                .ok_or_else(|| format!("unknown gate {name:?}"))
        }
        toml::Value::Table(table) => {
            let mut entries = table.iter();
            let (Some((key, members)), None) = (entries.next(), entries.next()) else {
                return Err(
                    "a group must be a table with exactly one key, `any` or `all`, e.g. { any = [\"github\", \"sso\"] }".into(),
                );
            };
            let toml::Value::Array(members) = members else {
                return Err(format!("`{key}` must be a list of gate names or groups"));
            };
            let members = members
                .iter()
                .map(|member| parse_require(member, named, used))
                .collect::<Result<Vec<_>, _>>()?;
            match key.as_str() {
                "any" => GateChain::any_of(members),
                "all" => GateChain::all_of(members),
                other => {
                    return Err(format!(
                        "unknown group {other:?}; use `any` (one member must admit) or `all` (every member must)"
                    ));
                }
            }
            .map_err(|e| e.to_string())
        }
        other => Err(format!(
            "{other} is neither a gate name (a string) nor a group ({{ any = [...] }} or {{ all = [...] }})"
        )),
    }
}

fn wrap_rate_limits(
    mut chain: GateChain,
    section: Option<&RateLimitSection>,
) -> Result<GateChain, String> {
    let Some(section) = section else {
        return Ok(chain);
    };
    // Innermost first: identity after the chain, then funnel, then client address
    // outermost (checked first).
    for (key, bucket) in [
        (RateLimitKey::Identity, &section.per_identity),
        (RateLimitKey::Funnel, &section.per_funnel),
        (RateLimitKey::ClientIp, &section.per_client_ip),
    ] {
        let Some(bucket) = bucket else { continue };
        let mut config =
            RateLimitConfig::new(key, bucket.requests, Duration::from_secs(bucket.per_secs));
        if let Some(burst) = bucket.burst {
            config.burst = burst;
        }
        let limit = RateLimit::new(config)
            .map_err(|e| format!("rate_limit.per_{}: {e}", key.as_str().replace('-', "_")))?;
        chain = GateChain::rate_limited(chain, Arc::new(limit));
    }
    Ok(chain)
}

fn default_audit_log() -> String {
    "-".into()
}

fn default_challenge() -> ChallengeKind {
    ChallengeKind::Http01
}

fn default_gate_mode() -> String {
    "any-of".into()
}

fn default_per_secs() -> u64 {
    1
}

fn default_true() -> bool {
    true
}

fn default_deny() -> String {
    "deny".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
state_dir = "/var/lib/postern-ingress"
[listen]
https = "0.0.0.0:443"
http = "0.0.0.0:80"
[acme]
directory = "https://acme.example/dir"
challenge = "tls-alpn-01"
[[funnel]]
hostname = "Hooks.Example.com"
target = "127.0.0.1:8080"
[[funnel.gate]]
verify_webhook = "github"
secret_env = "GH_SECRET"
"#;

    #[test]
    fn example_parses_and_builds() {
        let config = IngressConfig::parse(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.acme().unwrap().challenge, ChallengeKind::TlsAlpn01);
        let funnels = config
            .funnels(&|name| (name == "GH_SECRET").then(|| "s3cret".to_string()))
            .unwrap();
        assert_eq!(funnels[0].hostname, "hooks.example.com");
    }

    #[test]
    fn upstream_pool_limits_come_from_the_limits_section() {
        let config = IngressConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.pool_limits(), PoolLimits::default());
        let text = EXAMPLE.replace(
            "[acme]",
            "[limits]\nupstream_max_idle = 0\nupstream_idle_timeout_secs = 5\n[acme]",
        );
        let config = IngressConfig::parse(&text).unwrap();
        assert_eq!(
            config.pool_limits(),
            PoolLimits {
                max_idle: 0,
                idle_timeout: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn byte_funnels_parse_and_validate() {
        let text = format!(
            "{}{}",
            EXAMPLE.replace(
                "http = \"0.0.0.0:80\"",
                "http = \"0.0.0.0:80\"\ntcp_port_range = \"20000-20010\""
            ),
            r#"
[limits]
max_connections_per_client = 4
tcp_total_timeout_secs = 3600
[[tcp_funnel]]
port = 20001
target = "127.0.0.1:5432"
proxy_protocol = true
[[passthrough_funnel]]
hostname = "Secure.Example.com"
target = "127.0.0.1:8443"
"#
        );
        let config = IngressConfig::parse(&text).unwrap();
        config.validate().unwrap();
        let tcp = config.tcp_funnels();
        assert_eq!((tcp[0].port, tcp[0].proxy_protocol), (20001, true));
        assert_eq!(
            config.passthrough_funnels()[0].hostname,
            "secure.example.com"
        );
        assert_eq!(
            config.tcp_limits().total_timeout,
            Some(Duration::from_secs(3600))
        );
        assert_eq!(config.tcp_limits().idle_timeout, Duration::from_secs(300));

        let outside = text.replace("port = 20001", "port = 30000");
        let err = IngressConfig::parse(&outside)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outside listen.tcp_port_range 20000-20010"),
            "{err}"
        );
        let no_range = text.replace("tcp_port_range = \"20000-20010\"", "");
        let err = IngressConfig::parse(&no_range)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("set listen.tcp_port_range"), "{err}");
        let twice = text.replace("Secure.Example.com", "hooks.example.com");
        let err = IngressConfig::parse(&twice)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("appears in two funnels"), "{err}");
        for bad in ["20010-20000", "0-5", "20000", "a-b"] {
            let err = IngressConfig::parse(&text.replace("20000-20010", bad)).unwrap_err();
            assert!(err.contains("is not \"FIRST-LAST\""), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_say_what_to_fix() {
        let config = IngressConfig::parse(EXAMPLE).unwrap();
        let err = config.funnels(&|_| None).unwrap_err().to_string();
        assert!(
            err.contains("GH_SECRET") && err.contains("not set"),
            "{err}"
        );
        let err = IngressConfig::parse("state_dir = 1").unwrap_err();
        assert!(err.contains("state_dir"), "{err}");
        let no_cert = EXAMPLE.replace("[acme]", "[unused]");
        assert!(IngressConfig::parse(&no_cert).is_err());
        let bad = EXAMPLE.replace("\"github\"", "\"githib\"");
        let err = IngressConfig::parse(&bad)
            .unwrap()
            .funnels(&|_| Some("x".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown webhook provider"), "{err}");
    }

    fn composed(require: &str, gates: &str) -> Result<Vec<Funnel>, String> {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
state_dir = "{state}"
[listen]
https = "127.0.0.1:443"
[static_cert]
cert = "c.pem"
key = "k.pem"
[[funnel]]
hostname = "App.Example.com"
target = "127.0.0.1:3000"
{require}
{gates}
"#,
            state = dir.path().display()
        );
        let config = IngressConfig::parse(&text)?;
        config.validate().map_err(|e| e.to_string())?;
        config
            .funnels(&|name| (name == "GH").then(|| "s3cret".to_string()))
            .map_err(|e| e.to_string())
    }

    const GATES: &str = r#"
[[funnel.gate]]
name = "office"
ip = { rules = ["allow 10.0.0.0/8"] }
[[funnel.gate]]
verify_webhook = "github"
secret_env = "GH"
[[funnel.gate]]
name = "api"
jwt = { jwks_url = "https://idp.example/jwks", issuer = "https://idp.example", audiences = ["app"] }
[[funnel.gate]]
name = "sso"
[funnel.gate.oidc]
issuer = "https://idp.example"
client_id = "edge"
allowed_domains = ["example.com"]
"#;

    #[test]
    fn require_composes_named_gates_and_rate_limits_wrap_them() {
        let funnels = composed(
            r#"require = { all = ["office", { any = ["github", "api", "sso"] }] }
[funnel.rate_limit]
per_client_ip = { requests = 10, per_secs = 60 }
per_identity = { requests = 100, per_secs = 3600, burst = 5 }"#,
            GATES,
        )
        .unwrap();
        let GateChain::RateLimited(inner, outer) = &funnels[0].chain else {
            panic!("{:?}", funnels[0].chain);
        };
        assert_eq!(outer.name(), "rate-limit:client-ip");
        let GateChain::RateLimited(inner, limit) = &**inner else {
            panic!("{inner:?}");
        };
        assert_eq!(limit.name(), "rate-limit:identity");
        let GateChain::AllOf(members) = &**inner else {
            panic!("{inner:?}");
        };
        assert!(matches!(&members[1], GateChain::AnyOf(any) if any.len() == 3));
        assert_eq!(funnels[0].hostname, "app.example.com");
    }

    #[test]
    fn composition_errors_name_the_funnel_and_the_fix() {
        let error = |require: &str, gates: &str| composed(require, gates).unwrap_err();
        let unknown = error(r#"require = { any = ["github", "sso2"] }"#, GATES);
        assert_eq!(
            unknown,
            "funnel app.example.com: require: unknown gate \"sso2\" (the gates of this funnel are: office, github, api, sso)"
        );
        let unused = error(r#"require = { any = ["github", "api", "sso"] }"#, GATES);
        assert_eq!(
            unused,
            "funnel app.example.com: gate \"office\" is defined but `require` does not use it; add it to `require` or remove it"
        );
        let group = error(r#"require = { either = ["github"] }"#, GATES);
        assert!(group.contains("unknown group \"either\""), "{group}");
        let two_keys = error(r#"require = { any = ["a"], all = ["b"] }"#, GATES);
        assert!(two_keys.contains("exactly one key"), "{two_keys}");
        let empty = error(r#"require = { any = [] }"#, GATES);
        assert!(empty.contains("any-of group of gates is empty"), "{empty}");
        let number = error("require = 3", GATES);
        assert!(number.contains("neither a gate name"), "{number}");
        let two_kinds = error(
            "",
            r#"[[funnel.gate]]
verify_webhook = "github"
secret_env = "GH"
ip = { rules = ["allow 10.0.0.0/8"] }"#,
        );
        assert_eq!(
            two_kinds,
            "funnel app.example.com: gate #1 must have exactly one of verify_webhook, [jwt], [oidc], [mtls], [ip] (found verify_webhook, ip)"
        );
        let stray = error(
            "",
            r#"[[funnel.gate]]
secret_env = "GH"
ip = { rules = ["allow 10.0.0.0/8"] }"#,
        );
        assert!(
            stray.contains("belong to verify_webhook gates only"),
            "{stray}"
        );
        let duplicate = error(
            "",
            r#"[[funnel.gate]]
ip = { rules = ["allow 10.0.0.0/8"] }
[[funnel.gate]]
ip = { rules = ["allow 192.168.0.0/16"] }"#,
        );
        assert!(
            duplicate.contains("two gates are named \"ip\""),
            "{duplicate}"
        );
        let bad_rule = error(
            "",
            "[[funnel.gate]]\nip = { rules = [\"permit 10.0.0.0/8\"] }",
        );
        assert!(
            bad_rule.contains("gate #1 (ip): IP rule \"permit 10.0.0.0/8\""),
            "{bad_rule}"
        );
        let no_list = error(
            "",
            "[[funnel.gate]]\noidc = { issuer = \"https://idp.example\", client_id = \"edge\" }",
        );
        assert!(
            no_list.contains("at least one of allowed_emails"),
            "{no_list}"
        );
        let hs = error(
            "",
            "[[funnel.gate]]\njwt = { jwks_url = \"https://i/jwks\", issuer = \"https://i\", audiences = [\"a\"], algorithms = [\"HS256\"] }",
        );
        assert!(hs.contains("HMAC"), "{hs}");
        let zero = error("[funnel.rate_limit]\nper_funnel = { requests = 0 }", "");
        assert!(
            zero.contains("rate_limit.per_funnel") && zero.contains("above zero"),
            "{zero}"
        );
        let unknown_key = error("", "[[funnel.gate]]\njwt = { jwks = \"x\" }");
        assert!(unknown_key.contains("unknown field"), "{unknown_key}");
    }

    #[test]
    fn the_oidc_session_key_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oidc").join("app.key");
        let key = load_or_create_session_key(&path).unwrap();
        assert_eq!(key.len(), 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_session_key(&path).unwrap(), key);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create_session_key(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }
}

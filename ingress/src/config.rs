//! The `ingress.toml` configuration file (see `docs/ingress.md` for a full example).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::certs::{AcmeConfig, ChallengeKind};
use crate::edge::{Funnel, Limits, TcpUpstream};
use crate::tcp_funnel::{ClientLimiter, PassthroughFunnel, TcpFunnel, TcpLimits};

/// The default of `limits.max_connections_per_client`.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
use crate::gate::{GateChain, PassThroughGate, Provider, Secret, WebhookGate, WebhookGateConfig};

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
    /// How the gates combine: `any-of` (default) or `all-of`.
    #[serde(default = "default_gate_mode")]
    pub gate_mode: String,
    /// The gates; none means every request is forwarded (as `anonymous`).
    #[serde(default, rename = "gate")]
    pub gates: Vec<GateSection>,
}

/// One `[[funnel.gate]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    /// Verify webhook deliveries of this provider (`github`, `stripe`, ...).
    pub verify_webhook: String,
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
            })
            .collect()
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

    /// Builds the funnels, reading each gate's secret from the environment through `env`.
    pub fn funnels(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<Funnel>, ConfigError> {
        self.funnels
            .iter()
            .map(|section| build_funnel(section, env))
            .collect()
    }
}

fn build_funnel(
    section: &FunnelSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Funnel, ConfigError> {
    let host = &section.hostname;
    let mut members = Vec::new();
    for gate in &section.gates {
        let provider: Provider = gate
            .verify_webhook
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("funnel {host}: {e}")))?;
        let names: Vec<&String> = gate.secret_env.iter().chain(&gate.secret_envs).collect();
        let mut secrets = Vec::new();
        for name in names {
            let value = env(name).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "funnel {host}: the environment variable {name} (secret of the {provider} gate) is not set"
                ))
            })?;
            secrets.push(Secret::new(value.into_bytes()));
        }
        let mut config = WebhookGateConfig::new(provider, secrets);
        config.tolerance_secs = gate.tolerance_secs;
        config.public_url = gate.public_url.clone();
        let gate = WebhookGate::new(config)
            .map_err(|e| ConfigError::Invalid(format!("funnel {host}: {e}")))?;
        members.push(GateChain::gate(gate));
    }
    let chain = match (members.len(), section.gate_mode.as_str()) {
        (0, _) => Ok(GateChain::gate(PassThroughGate)),
        (_, "any-of") => GateChain::any_of(members),
        (_, "all-of") => GateChain::all_of(members),
        (_, other) => {
            return Err(ConfigError::Invalid(format!(
                "funnel {host}: gate_mode {other:?} is not \"any-of\" or \"all-of\""
            )));
        }
    }
    .map_err(|e| ConfigError::Invalid(format!("funnel {host}: {e}")))?;
    Ok(Funnel {
        hostname: host.to_ascii_lowercase(),
        upstream: Arc::new(TcpUpstream::new(section.target.clone())),
        chain,
    })
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
}

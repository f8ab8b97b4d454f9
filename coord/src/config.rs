//! The configuration files of `postern-coord serve` (`coord.toml`) and `postern-coord relay`
//! (`relay.toml`); see `deploy/coord.example.toml`, `deploy/relay.example.toml` and
//! `docs/coord.md`.
//!
//! Every key is optional: a flag given on the command line wins over the file, the file
//! wins over the built-in default. The binary merges them; this module only parses, checks
//! and resolves secret references. Secrets are never written inline as required values:
//! the OIDC client secret and a store URL that carries a password are named by a file
//! (`*_file`) or an environment variable (`*_env`).
//!
//! Unknown keys and wrong types are errors that name `FILE:LINE:COLUMN` and the key
//! ([`ConfigError::Parse`]); [`CoordFile::validate`] and [`RelayFile::validate`] check
//! values the types cannot (a funnel domain, a non-zero edge log size, pairs of keys that
//! go together).

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `coord.toml`: the settings of `postern-coord serve`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordFile {
    /// The state directory (`--state-dir`): the coord key and the SQLite store.
    pub state_dir: Option<PathBuf>,
    /// The store URL inline (`--database`), for URLs without a password
    /// (`sqlite:///var/lib/...`, `postgres://postern@/postern?host=/run/postgresql`).
    /// Its `Debug` output is redacted.
    pub database: Option<StoreUrl>,
    /// The environment variable holding the store URL (e.g. one with a password).
    pub database_env: Option<String>,
    /// A file holding the store URL (one line; mode 0640 root:postern-coord advised).
    pub database_file: Option<PathBuf>,
    /// The tailnet's DNS domain (`--tailnet-domain`).
    pub tailnet_domain: Option<String>,
    /// The HTTP listener (`--listen`).
    pub listen: Option<SocketAddr>,
    /// The admin API's listener (`--admin-listen`); keep it on loopback.
    pub admin_listen: Option<SocketAddr>,
    /// `[policy]`: the policy file and the node lifecycle.
    #[serde(default)]
    pub policy: PolicySection,
    /// `[relay]`: the embedded relay and the relay map.
    #[serde(default)]
    pub relay: EmbeddedRelaySection,
    /// `[stun]`: the STUN responder.
    #[serde(default)]
    pub stun: StunSection,
    /// `[oidc]`: interactive login.
    pub oidc: Option<OidcSection>,
    /// `[funnel]`: funnels through ingress nodes.
    #[serde(default)]
    pub funnel: FunnelSection,
    /// `[edge_log]`: how much of the edge's decisions to keep.
    #[serde(default)]
    pub edge_log: EdgeLogSection,
}

/// `[policy]` of `coord.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// The policy file (`--policy`); absent: the built-in policy.
    pub file: Option<PathBuf>,
    /// How long an untagged node's key lasts (`--key-expiry`, e.g. `"90d"`); `"0s"` turns
    /// expiry off.
    pub key_expiry: Option<ConfigDuration>,
    /// New nodes wait for an admin's approval (`--require-approval`).
    pub require_approval: Option<bool>,
    /// How long an ephemeral node may stay offline (`--ephemeral-timeout`).
    pub ephemeral_timeout: Option<ConfigDuration>,
    /// How often the policy file is checked for changes (`--policy-poll-interval`).
    pub poll_interval: Option<ConfigDuration>,
}

/// `[relay]` of `coord.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedRelaySection {
    /// Run the relay inside the coord at `/relay` (`--relay`).
    pub enabled: Option<bool>,
    /// The URL nodes dial for the embedded relay (`--relay-url`).
    pub url: Option<String>,
    /// A TOML relay map listing every region (`--relay-map`).
    pub map: Option<PathBuf>,
}

/// `[stun]` of `coord.toml` and `relay.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StunSection {
    /// Answer STUN binding requests on this UDP address (`--stun`).
    pub listen: Option<SocketAddr>,
}

/// `[oidc]` of `coord.toml`: interactive login through the organisation's IdP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The IdP's issuer URL (`--oidc-issuer`).
    pub issuer: Option<String>,
    /// The coord's client id at the IdP (`--oidc-client-id`).
    pub client_id: Option<String>,
    /// A file holding the client secret (`--oidc-client-secret-file`).
    pub client_secret_file: Option<PathBuf>,
    /// The environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// The client id for device login (`--oidc-device-client-id`).
    pub device_client_id: Option<String>,
    /// The coord's URL as browsers reach it (`--public-url`).
    pub public_url: Option<String>,
    /// Email domains that may log in (`--allowed-domains`).
    pub allowed_domains: Option<Vec<String>>,
    /// IdP groups whose members may log in (`--allowed-groups`).
    pub allowed_groups: Option<Vec<String>>,
    /// How long a login link or device code stays usable (`--login-timeout`).
    pub login_timeout: Option<ConfigDuration>,
}

/// `[funnel]` of `coord.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelSection {
    /// The DNS domain funnel hostnames live under (`--funnel-domain`).
    pub domain: Option<String>,
    /// The public ports TCP funnels get, `"FIRST-LAST"` (`--funnel-tcp-ports`).
    pub tcp_ports: Option<PortRange>,
}

/// `[edge_log]` of `coord.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeLogSection {
    /// Edge decisions kept per funnel (`--edge-log-keep`), at least 1.
    pub keep: Option<u32>,
    /// How long edge decisions are kept (`--edge-log-max-age`).
    pub max_age: Option<ConfigDuration>,
}

/// `relay.toml`: the settings of `postern-coord relay`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// The relay's listener (`--listen`).
    pub listen: Option<SocketAddr>,
    /// The node keys allowed to attach, one `nodekey:...` per line (`--allow-file`).
    pub allow_file: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address, behind a TLS terminator
    /// (`--plain-http`).
    pub plain_http: Option<bool>,
    /// `[tls]`: the certificate and key.
    pub tls: Option<TlsSection>,
    /// `[stun]`: the STUN responder.
    #[serde(default)]
    pub stun: StunSection,
}

/// `[tls]` of `relay.toml`: both keys or neither.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The PEM certificate chain (`--tls-cert`).
    pub cert: PathBuf,
    /// The PEM private key (`--tls-key`); readable by the service's user only.
    pub key: PathBuf,
}

/// A store URL written inline; `Debug` shows only its scheme, in case it carries a
/// password after all.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.0.split_once("://").map_or("?", |(scheme, _)| scheme);
        write!(f, "StoreUrl({scheme}://…)")
    }
}

/// A duration written as text, `"90d"`, `"12h"`, `"5m"`, `"2s"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ConfigDuration(pub Duration);

impl TryFrom<String> for ConfigDuration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        humantime::parse_duration(&text).map(Self).map_err(|e| {
            format!("{text:?} is not a duration ({e}); write e.g. \"90d\", \"12h\", \"5m\"")
        })
    }
}

/// A port range written as `"FIRST-LAST"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange(pub RangeInclusive<u16>);

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        crate::funnel::parse_port_range(&text).map(Self)
    }
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not TOML, has an unknown key, or a value of the wrong type.
    #[error("{path}:{line}:{column}: {}{message}", key_prefix(key))]
    Parse {
        /// The file (or `-` for text not from a file).
        path: PathBuf,
        /// The 1-based line of the problem.
        line: usize,
        /// The 1-based column (in characters) of the problem.
        column: usize,
        /// The dotted key, e.g. `oidc.issuer`; empty when the problem is not at a key.
        key: String,
        /// What the parser said.
        message: String,
    },
    /// A value the types accept but the coord cannot use, or keys that go together.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

impl CoordFile {
    /// Reads and parses `coord.toml` (types and keys only; call [`Self::validate`] next).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        parse(path, &text)
    }

    /// Parses `coord.toml` text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        parse(path, text)
    }

    /// Checks what the types cannot: a valid funnel domain, `edge_log.keep` of at least 1,
    /// an OIDC client id with an issuer, one store URL source and one client secret source.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_owned(),
            problem,
        };
        let sources = [
            self.database.is_some(),
            self.database_env.is_some(),
            self.database_file.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() > 1 {
            return Err(invalid(
                "database",
                "give one of database, database_env and database_file".into(),
            ));
        }
        if let Some(domain) = &self.funnel.domain {
            crate::funnel::hostname::parse_funnel_domain(domain)
                .map_err(|e| invalid("funnel.domain", e.to_string()))?;
        }
        if self.edge_log.keep == Some(0) {
            return Err(invalid("edge_log.keep", "must be at least 1".into()));
        }
        if self.relay.url.is_some() && self.relay.enabled != Some(true) {
            return Err(invalid(
                "relay.url",
                "names the embedded relay's URL: set relay.enabled = true too".into(),
            ));
        }
        if let Some(oidc) = &self.oidc {
            if oidc.client_secret_file.is_some() && oidc.client_secret_env.is_some() {
                return Err(invalid(
                    "oidc.client_secret_file",
                    "give client_secret_file or client_secret_env, not both".into(),
                ));
            }
            if oidc.issuer.is_some() != oidc.client_id.is_some() {
                return Err(invalid(
                    if oidc.issuer.is_some() {
                        "oidc.client_id"
                    } else {
                        "oidc.issuer"
                    },
                    "oidc.issuer and oidc.client_id go together (the IdP and the coord's client there)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The store URL the file names (inline, through `database_env` or `database_file`),
    /// reading the variable with `env`. `Ok(None)` when the file names none.
    pub fn database_url(
        &self,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        if let Some(url) = &self.database {
            return Ok(Some(url.0.clone()));
        }
        resolve_secret(
            path,
            "database",
            self.database_env.as_deref(),
            self.database_file.as_deref(),
            env,
        )
    }
}

impl OidcSection {
    /// The client secret the section names (`client_secret_file` or `client_secret_env`),
    /// trimmed; `Ok(None)` for a public client. `path` names the configuration file in
    /// errors.
    pub fn client_secret(
        &self,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        resolve_secret(
            path,
            "oidc.client_secret",
            self.client_secret_env.as_deref(),
            self.client_secret_file.as_deref(),
            env,
        )
    }
}

impl RelayFile {
    /// Reads and parses `relay.toml` (types and keys only; call [`Self::validate`] next).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        parse(path, &text)
    }

    /// Parses `relay.toml` text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        parse(path, text)
    }

    /// Checks what the types cannot: TLS or plain HTTP on a non-loopback listener.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if let Some(listen) = self.listen
            && self.tls.is_none()
            && self.plain_http != Some(true)
            && !listen.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "listen".into(),
                problem: format!(
                    "{listen} is not loopback: add a [tls] section (cert, key), or plain_http = true if a TLS terminator fronts the relay"
                ),
            });
        }
        Ok(())
    }
}

/// `"key: "` or nothing.
fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Deserialises `text`, turning the parser's byte span into a line and column and its
/// path into a dotted key.
fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let key = dotted_key(error.path());
        let inner = error.into_inner();
        let offset = inner.span().map_or(0, |span| span.start);
        let (line, column) = line_column(text, offset);
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            key,
            message: inner.message().trim_end().to_owned(),
        }
    })
}

/// The path as `a.b.c` (`[n]` for array elements), without the `?` of unknown places.
fn dotted_key(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Enum { variant } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    key
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// A secret named by an environment variable or a file, trimmed.
fn resolve_secret(
    path: &Path,
    key: &str,
    env_name: Option<&str>,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_owned(),
        problem,
    };
    if let Some(name) = env_name {
        let value = env(name)
            .ok_or_else(|| invalid(format!("the environment variable {name} is not set")))?;
        return Ok(Some(value.trim().to_owned()));
    }
    if let Some(file) = file {
        let value = std::fs::read_to_string(file)
            .map_err(|e| invalid(format!("cannot read {}: {e}", file.display())))?;
        return Ok(Some(value.trim().to_owned()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coord(text: &str) -> Result<CoordFile, ConfigError> {
        CoordFile::parse(Path::new("coord.toml"), text)
    }

    fn relay(text: &str) -> Result<RelayFile, ConfigError> {
        RelayFile::parse(Path::new("relay.toml"), text)
    }

    #[test]
    fn a_full_coord_file_parses() {
        let file = coord(
            "state_dir = \"/var/lib/postern-coord\"\nlisten = \"0.0.0.0:8443\"\n\
             [policy]\nkey_expiry = \"90d\"\nrequire_approval = true\n\
             [relay]\nenabled = true\n[stun]\nlisten = \"0.0.0.0:3478\"\n\
             [oidc]\nissuer = \"https://idp\"\nclient_id = \"coord\"\nallowed_domains = [\"example.com\"]\n\
             [funnel]\ndomain = \"funnel.example.com\"\ntcp_ports = \"20000-20999\"\n\
             [edge_log]\nkeep = 10\nmax_age = \"1d\"\n",
        )
        .unwrap();
        file.validate(Path::new("coord.toml")).unwrap();
        assert_eq!(
            file.policy.key_expiry,
            Some(ConfigDuration(Duration::from_secs(90 * 86400)))
        );
        assert_eq!(file.funnel.tcp_ports, Some(PortRange(20000..=20999)));
        assert_eq!(file.stun.listen, Some("0.0.0.0:3478".parse().unwrap()));
        assert_eq!(file.relay.enabled, Some(true));
    }

    #[test]
    fn an_unknown_key_names_file_line_column_and_key() {
        let err = coord("listen = \"127.0.0.1:1\"\n[oidc]\nissuer = \"x\"\nclient_idd = \"y\"\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("coord.toml:4:1: oidc.client_idd: unknown field `client_idd`"),
            "{text}"
        );
        let err = coord("lisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("coord.toml:1:1: lisen: unknown field `lisen`, expected one of"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_type_names_file_line_column_and_key() {
        let err = coord("[edge_log]\nkeep = \"ten\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "coord.toml:2:8: edge_log.keep: invalid type: string \"ten\", expected u32"
        );
        let err = coord("[policy]\nkey_expiry = \"soon\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("coord.toml:2:14: policy.key_expiry: \"soon\" is not a duration"),
            "{err}"
        );
        let err = coord("listen = \"nowhere\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("coord.toml:1:10: listen: invalid socket address"),
            "{err}"
        );
        let err = coord("[funnel]\ntcp_ports = \"9-1\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "coord.toml:2:13: funnel.tcp_ports: invalid port range \"9-1\": give FIRST-LAST, e.g. 20000-20999"
        );
    }

    #[test]
    fn broken_toml_names_the_place() {
        let err = coord("listen = \n").unwrap_err();
        let ConfigError::Parse { line, key, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((*line, key.as_str()), (1, ""));
        assert!(err.to_string().starts_with("coord.toml:1:"), "{err}");
    }

    #[test]
    fn values_the_types_accept_are_still_checked() {
        let path = Path::new("coord.toml");
        let check = |text: &str| coord(text).unwrap().validate(path).unwrap_err().to_string();
        assert_eq!(
            check("[edge_log]\nkeep = 0\n"),
            "coord.toml: edge_log.keep: must be at least 1"
        );
        assert!(
            check("[funnel]\ndomain = \"bad domain\"\n").starts_with("coord.toml: funnel.domain: ")
        );
        assert_eq!(
            check("[oidc]\nissuer = \"https://idp\"\n"),
            "coord.toml: oidc.client_id: oidc.issuer and oidc.client_id go together (the IdP and the coord's client there)"
        );
        assert_eq!(
            check("database = \"sqlite://x\"\ndatabase_env = \"DB\"\n"),
            "coord.toml: database: give one of database, database_env and database_file"
        );
        assert_eq!(
            check("[relay]\nurl = \"https://coord/relay\"\n"),
            "coord.toml: relay.url: names the embedded relay's URL: set relay.enabled = true too"
        );
    }

    #[test]
    fn secrets_come_from_the_named_variable_or_file() {
        let path = Path::new("coord.toml");
        let file = coord("database_env = \"DB_URL\"\n[oidc]\nissuer = \"i\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\n").unwrap();
        let env = |name: &str| (name == "DB_URL").then(|| "postgres://u:p@h/db\n".to_owned());
        assert_eq!(
            file.database_url(path, &env).unwrap().as_deref(),
            Some("postgres://u:p@h/db")
        );
        let err = file
            .oidc
            .as_ref()
            .unwrap()
            .client_secret(path, &env)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "coord.toml: oidc.client_secret: the environment variable SECRET is not set"
        );
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let oidc = OidcSection {
            client_secret_file: Some(secret),
            ..OidcSection::default()
        };
        assert_eq!(
            oidc.client_secret(path, &env).unwrap().as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn relay_files_parse_and_are_checked() {
        let path = Path::new("relay.toml");
        let file = relay(
            "listen = \"0.0.0.0:443\"\nallow_file = \"/etc/postern/relay-nodes.txt\"\n\
             [tls]\ncert = \"/etc/postern/tls/relay.pem\"\nkey = \"/etc/postern/tls/relay.key\"\n\
             [stun]\nlisten = \"0.0.0.0:3478\"\n",
        )
        .unwrap();
        file.validate(path).unwrap();
        let err = relay("listen = \"0.0.0.0:443\"\n")
            .unwrap()
            .validate(path)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("relay.toml: listen: 0.0.0.0:443 is not loopback"),
            "{err}"
        );
        let err = relay("[tls]\ncert = \"c.pem\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("relay.toml:1:1: tls: missing field `key`"),
            "{err}"
        );
        let err = relay("plain_http = \"yes\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "relay.toml:1:14: plain_http: invalid type: string \"yes\", expected a boolean"
        );
    }

    #[test]
    fn an_inline_store_url_is_not_shown_by_debug() {
        let file = coord("database = \"postgres://u:hunter2@db/postern\"\n").unwrap();
        let shown = format!("{file:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("StoreUrl(postgres://…)"), "{shown}");
    }

    #[test]
    fn lines_and_columns_count_characters() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é = 1\nx", 7), (2, 1));
        assert_eq!(line_column("abc", 99), (1, 4));
    }
}

//! Where the node's state lives, and the TOML config file that mirrors the flags.
//!
//! Every flag of `login` and `up` can also be set in the config file; a flag given on the
//! command line wins over the file, and the file wins over the built-in default. The file
//! is `--config FILE`, else `$POSTERN_CONFIG`, else `/etc/postern/config.toml` for root and
//! `$XDG_CONFIG_HOME/postern/config.toml` (or `~/.config/postern/config.toml`) for other
//! users; a missing default file is fine, a missing `--config` file is an error.
//!
//! ```toml
//! state_dir = "/var/lib/postern"
//! coord = "http://coord.example.com:8443"
//! hostname = "build-box"
//! auth_key_file = "/etc/postern/auth-key"
//! port = 41641
//! socks5 = "127.0.0.1:1080"
//! http_proxy = "127.0.0.1:8080"
//! metrics = "127.0.0.1:9101"      # Prometheus metrics at http://127.0.0.1:9101/metrics
//! inspect = "127.0.0.1:4040"      # or "off"
//! inspect_serves = false
//! inspect_persist = false         # keep captures in STATE_DIR/inspect.jsonl
//! inspect_max_mb = 100
//! inspect_max_body_kb = 1024
//! relay_ca = "/etc/postern/relay-ca.pem"   # trust a private CA for https:// relays
//! home_relay = 2                            # this relay region is home (default: fastest)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use postern_node::daemon::api_client::LocalApiClient;
use postern_node::daemon::state::API_SOCKET_FILE;
use serde::Deserialize;

/// The options every node command takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Global {
    /// The node's state directory (keys, login, local API socket). Default: /var/lib/postern
    /// for root, else $XDG_STATE_HOME/postern (~/.local/state/postern).
    #[arg(long, global = true, env = "POSTERN_STATE_DIR", value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,

    /// The TOML config file (see `postern help up` for its keys).
    #[arg(long, global = true, env = "POSTERN_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// The config file's contents; every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) coord: Option<String>,
    pub(crate) hostname: Option<String>,
    pub(crate) auth_key_file: Option<PathBuf>,
    pub(crate) port: Option<u16>,
    pub(crate) socks5: Option<SocketAddr>,
    pub(crate) http_proxy: Option<SocketAddr>,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) inspect: Option<String>,
    pub(crate) inspect_serves: Option<bool>,
    pub(crate) inspect_persist: Option<bool>,
    pub(crate) inspect_max_mb: Option<u64>,
    pub(crate) inspect_max_body_kb: Option<u64>,
    pub(crate) relay_ca: Option<PathBuf>,
    pub(crate) home_relay: Option<u16>,
}

impl Global {
    /// Reads the config file (see the module docs). The error names the file and the
    /// problem.
    pub(crate) fn config_file(&self) -> Result<ConfigFile, String> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => match default_config_path() {
                Some(path) => (path, false),
                None => return Ok(ConfigFile::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ConfigFile::default());
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                ));
            }
        };
        parse_config(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// The config file and the state directory, or the message and exit code to stop with.
    pub(crate) fn resolve(&self) -> Result<(ConfigFile, PathBuf), (String, u8)> {
        let file = self.config_file().map_err(|e| (e, crate::EXIT_USAGE))?;
        let state_dir = self.state_dir(&file);
        Ok((file, state_dir))
    }

    /// A client of the local API of the daemon running on this state directory.
    pub(crate) fn api_client(&self) -> Result<LocalApiClient, (String, u8)> {
        let (_, state_dir) = self.resolve()?;
        Ok(LocalApiClient::new(state_dir.join(API_SOCKET_FILE)))
    }

    /// The daemon's local API client and a runtime to call it on; on failure, the exit
    /// code, the message already printed.
    pub(crate) fn daemon(
        &self,
    ) -> Result<(LocalApiClient, tokio::runtime::Runtime), std::process::ExitCode> {
        let client = self
            .api_client()
            .map_err(|(message, code)| crate::fail(&message, code))?;
        let runtime = crate::tokio_runtime()?;
        Ok((client, runtime))
    }

    /// The state directory: the flag, else the config file's, else the default.
    pub(crate) fn state_dir(&self, file: &ConfigFile) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(default_state_dir)
    }
}

/// Parses a config file's text.
pub(crate) fn parse_config(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/postern");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("postern");
    }
    match home() {
        Some(home) => home.join(".local/state/postern"),
        None => PathBuf::from(".postern"),
    }
}

fn default_config_path() -> Option<PathBuf> {
    if is_root() {
        return Some(PathBuf::from("/etc/postern/config.toml"));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("postern/config.toml"));
    }
    home().map(|home| home.join(".config/postern/config.toml"))
}

/// This machine's hostname, for registering (`node` if it cannot be read).
pub(crate) fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_and_unknown_keys_are_refused() {
        let file = parse_config(
            "state_dir = \"/s\"\ncoord = \"http://c:1\"\nhostname = \"h\"\nauth_key_file = \"/k\"\nport = 7\nsocks5 = \"127.0.0.1:1080\"\nhttp_proxy = \"127.0.0.1:8080\"\nmetrics = \"127.0.0.1:9101\"\ninspect = \"off\"\ninspect_serves = true\ninspect_persist = true\ninspect_max_mb = 5\ninspect_max_body_kb = 64\nrelay_ca = \"/ca.pem\"\nhome_relay = 2\n",
        )
        .unwrap();
        assert_eq!(file.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(file.coord.as_deref(), Some("http://c:1"));
        assert_eq!(file.port, Some(7));
        assert_eq!(file.socks5, Some("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(file.metrics, Some("127.0.0.1:9101".parse().unwrap()));
        assert_eq!(file.inspect.as_deref(), Some("off"));
        assert_eq!(file.inspect_serves, Some(true));
        assert_eq!(file.inspect_persist, Some(true));
        assert_eq!(file.inspect_max_mb, Some(5));
        assert_eq!(file.inspect_max_body_kb, Some(64));
        assert_eq!(file.relay_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(file.home_relay, Some(2));
        let err = parse_config("cord = \"x\"").unwrap_err();
        assert!(err.contains("cord"), "{err}");
        let err = parse_config("port = \"many\"").unwrap_err();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn the_flag_beats_the_file() {
        let global = Global {
            state_dir: Some(PathBuf::from("/flag")),
            config: None,
        };
        let file = ConfigFile {
            state_dir: Some(PathBuf::from("/file")),
            ..ConfigFile::default()
        };
        assert_eq!(global.state_dir(&file), PathBuf::from("/flag"));
        let global = Global {
            state_dir: None,
            config: None,
        };
        assert_eq!(global.state_dir(&file), PathBuf::from("/file"));
    }
}

//! A real OpenID Provider: panva's `oidc-provider` (npm, pinned by
//! `tests/lab/fixtures/idp/package-lock.json`) running `fixtures/idp/idp.mjs` under node.
//!
//! ```no_run
//! # async fn example() -> Result<(), postern_lab::LabError> {
//! use postern_lab::idp::{IdpConfig, OidcProvider, browser};
//! let idp = OidcProvider::start(IdpConfig {
//!     web_redirect_uris: vec!["http://127.0.0.1:8080/oidc/callback".into()],
//!     ..IdpConfig::default()
//! })?;
//! let tokens = browser::device_flow_login(idp.issuer(), "alice@example.com", "alice-pw").await?;
//! let claims = tokens.id_token_claims()?; // claims["groups"] == ["eng", "admins"]
//! # let _ = claims; Ok(()) }
//! ```
//!
//! What it serves:
//! - users `alice@example.com` / `alice-pw` (groups `eng`, `admins`), `bob@example.com` /
//!   `bob-pw` (`contractors`), `carol@example.com` / `carol-pw` (no groups);
//! - client [`OidcProvider::CLI_CLIENT_ID`] (public: device flow, and authorization code with
//!   PKCE on `http://127.0.0.1:ANY_PORT/callback`), and client
//!   [`OidcProvider::WEB_CLIENT_ID`] (confidential, `client_secret_basic`, the secret and
//!   redirect URIs from [`IdpConfig`]);
//! - scopes `openid email profile groups offline_access`; `email` and `groups` are in the
//!   id_token; PKCE (S256) is required for every code flow; signing keys are new at every
//!   start (fetch `jwks_uri`).
//!
//! The login form checks the password; consent is implicit for both clients.
//! [`browser`] drives it like a person would.

pub mod browser;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::netns::Netns;
use crate::tools::{find_program, free_tcp_port, http_status, poll_until};
use crate::{LabError, LabProcess};

/// What [`OidcProvider::start`] configures.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// Redirect URIs registered for the confidential web client (`postern-web`): the coord's
    /// and ingress's callbacks on the ports the test chose. Exact matches only.
    pub web_redirect_uris: Vec<String>,
    /// The web client's secret (`client_secret_basic`).
    pub web_client_secret: String,
}

impl Default for IdpConfig {
    /// One redirect URI, `http://127.0.0.1:8080/oidc/callback`, and secret
    /// `postern-web-secret`.
    fn default() -> Self {
        Self {
            web_redirect_uris: vec!["http://127.0.0.1:8080/oidc/callback".to_owned()],
            web_client_secret: "postern-web-secret".to_owned(),
        }
    }
}

/// A running OpenID Provider; killed on drop.
#[derive(Debug)]
pub struct OidcProvider {
    issuer: String,
    web_client_secret: String,
    process: LabProcess,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    /// The public client for the command line: device flow and loopback authorization code.
    pub const CLI_CLIENT_ID: &'static str = "postern-cli";
    /// The confidential client for the coordination server (and ingress).
    pub const WEB_CLIENT_ID: &'static str = "postern-web";

    /// Starts the provider on a free port of 127.0.0.1 and waits (up to 20 s) until its
    /// discovery document answers. Takes about a second.
    ///
    /// Fails if node or the fixture's `node_modules` are missing (run `scripts/install-deps`),
    /// or if the provider exits or does not answer (the error carries its log).
    pub fn start(config: IdpConfig) -> Result<Self, LabError> {
        let mut last = None;
        for _ in 0..3 {
            let port = free_tcp_port()?;
            match Self::launch(None, Ipv4Addr::LOCALHOST, port, &config) {
                Ok(idp) => return Ok(idp),
                // Someone took the port between our check and node's bind: try another.
                Err(e @ LabError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| LabError::Invalid("the IdP never started".into())))
    }

    /// Starts the provider inside `netns`, listening on `addr:port` (e.g. a lab host's
    /// address): the issuer is `http://addr:port`. Readiness is checked from inside the
    /// namespace. Clients must then reach it from a namespace that routes to `addr`.
    pub fn start_in(
        netns: &Netns,
        addr: Ipv4Addr,
        port: u16,
        config: IdpConfig,
    ) -> Result<Self, LabError> {
        Self::launch(Some(netns), addr, port, &config)
    }

    /// The issuer URL, e.g. `http://127.0.0.1:34567` (no trailing slash); discovery is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The web client's secret, as given in [`IdpConfig`].
    pub fn web_client_secret(&self) -> &str {
        &self.web_client_secret
    }

    /// The provider's log (node's output), for diagnosing a failing test.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The fixture directory holding `idp.mjs`, `package.json` and the lockfile.
    pub fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/idp")
    }

    fn launch(
        netns: Option<&Netns>,
        addr: Ipv4Addr,
        port: u16,
        config: &IdpConfig,
    ) -> Result<Self, LabError> {
        let node = find_program("node")?;
        let fixture = Self::fixture_dir();
        if !fixture.join("node_modules/oidc-provider").is_dir() {
            return Err(LabError::MissingTool {
                tool: "npm package oidc-provider".to_owned(),
                looked: format!("{}/node_modules", fixture.display()),
            });
        }
        if config
            .web_redirect_uris
            .iter()
            .any(|u| u.is_empty() || u.contains(','))
        {
            return Err(LabError::Invalid(
                "web_redirect_uris must be non-empty and contain no commas".into(),
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("postern-lab-idp-")
            .tempdir()
            .map_err(|e| LabError::io("creating the IdP temp dir", e))?;
        let issuer = format!("http://{addr}:{port}");
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = ns.command(&node.to_string_lossy());
                cmd.arg(fixture.join("idp.mjs"));
                cmd
            }
            None => {
                let mut cmd = Command::new(&node);
                cmd.arg(fixture.join("idp.mjs"));
                cmd
            }
        };
        cmd.current_dir(&fixture)
            .env("IDP_HOST", addr.to_string())
            .env("IDP_PORT", port.to_string())
            .env("IDP_ISSUER", &issuer)
            .env("IDP_WEB_REDIRECT_URIS", config.web_redirect_uris.join(","))
            .env("IDP_WEB_CLIENT_SECRET", &config.web_client_secret);
        let mut process = LabProcess::spawn(
            "oidc-provider (node idp.mjs)",
            cmd,
            &dir.path().join("idp.log"),
        )?;

        let target = SocketAddr::from((addr, port));
        let probe = || -> Result<bool, LabError> {
            let path = "/.well-known/openid-configuration";
            Ok(match netns {
                Some(ns) => ns.run_in(move || http_status(target, path))?,
                None => http_status(target, path),
            } == Some(200))
        };
        let log = process.log_path().to_owned();
        poll_until(
            "oidc-provider discovery",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                process.check_running()?;
                Ok(probe()?.then_some(()))
            },
            || format!("check its log:\n{}", crate::tools::log_tail(&log)),
        )?;
        Ok(Self {
            issuer,
            web_client_secret: config.web_client_secret.clone(),
            process,
            _dir: dir,
        })
    }
}

//! `postern-ingress`: the public edge binary. Argument parsing and wiring only.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use postern_ingress::audit::{AuditSink, JsonLinesSink};
use postern_ingress::config::{IngressConfig, NodeSection, StaticCertSection};
use postern_ingress::server::{Mesh, run_with_mesh};

/// mimalloc instead of glibc's malloc, as in `postern` (see `cli/src/main.rs`): the embedded
/// node's data path allocates per packet on one thread and frees on another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Postern's public edge: TLS termination, identity gates and forwarding for funnels.
#[derive(Debug, Parser)]
#[command(
    name = "postern-ingress",
    version,
    long_about = "postern-ingress terminates TLS for public funnel hostnames, checks every request \
against the funnel's identity gates (e.g. webhook signatures), and forwards only admitted \
requests to the funnel's target. Certificates come from an ACME CA (one per hostname, \
HTTP-01 or TLS-ALPN-01, stored in the state directory and renewed two thirds into their \
lifetime) or from a static certificate and key. Every decision is written as one JSON line \
to the audit log.",
    after_long_help = "EXAMPLES:\n    postern-ingress serve --config /etc/postern/ingress.toml\n    \
postern-ingress serve --config ingress.toml --cert wildcard.pem --key wildcard.key\n\n\
ENVIRONMENT:\n    Gate secrets are read from the variables named by secret_env in the config.\n    \
POSTERN_AUTH_KEY holds the ingress auth key for the embedded node's first login.\n    \
RUST_LOG sets the log filter (default: info). Logs go to stderr.\n\n\
FILES:\n    <state_dir>/acme/account-*.json   the ACME account key (mode 0600)\n    \
<state_dir>/certs/<host>/          issued certificates (key.pem mode 0600)\n    \
<state_dir>/node/                  the embedded node's keys and login\n\n\
EXIT STATUS:\n    0 on SIGINT/SIGTERM, 1 on a runtime failure, 2 on a configuration error.\n\n\
See docs/ingress.md for the configuration file."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the funnels in a configuration file until SIGINT or SIGTERM.
    Serve {
        /// The TOML configuration file (listen addresses, certificates, funnels, gates).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// A static certificate chain (PEM, leaf first), e.g. a wildcard; overrides
        /// [static_cert] in the file. Needs --key.
        #[arg(long, value_name = "PEM", requires = "key")]
        cert: Option<PathBuf>,
        /// The private key (PEM) of --cert.
        #[arg(long, value_name = "PEM", requires = "cert")]
        key: Option<PathBuf>,
        #[command(flatten)]
        node: NodeFlags,
    },
    /// Check a configuration file (and that every gate secret is set), then exit.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        node: NodeFlags,
    },
}

/// The embedded node's settings, overriding `[node]` in the file.
#[derive(Debug, clap::Args)]
struct NodeFlags {
    /// Join the tailnet of this coordination server (http://host:port) and serve the
    /// funnels it lists; sets [node] coord_url.
    #[arg(long, value_name = "URL")]
    coord: Option<String>,
    /// The coordination server's key (mkey:…), checked at the first login.
    #[arg(long, value_name = "KEY")]
    coord_key: Option<String>,
    /// A file holding the ingress auth key (first login only). Without it the key is read
    /// from POSTERN_AUTH_KEY (or [node] auth_key_env).
    #[arg(long, value_name = "FILE")]
    auth_key_file: Option<PathBuf>,
    /// Where the embedded node keeps its keys and login (default <state_dir>/node).
    #[arg(long, value_name = "DIR")]
    node_state_dir: Option<PathBuf>,
}

impl NodeFlags {
    /// Folds the flags into the file's `[node]` (creating it when --coord is given).
    fn apply(self, config: &mut IngressConfig) -> Result<(), String> {
        if let Some(coord_url) = self.coord {
            match &mut config.node {
                Some(node) => node.coord_url = coord_url,
                None => {
                    config.node = Some(NodeSection {
                        coord_url,
                        coord_key: None,
                        auth_key_env: None,
                        auth_key_file: None,
                        state_dir: None,
                        hostname: None,
                        listen_port: 0,
                    });
                }
            }
        }
        let any = self.coord_key.is_some()
            || self.auth_key_file.is_some()
            || self.node_state_dir.is_some();
        let Some(node) = &mut config.node else {
            return if any {
                Err("--coord-key, --auth-key-file and --node-state-dir need --coord or a [node] section".into())
            } else {
                Ok(())
            };
        };
        if let Some(key) = self.coord_key {
            node.coord_key = Some(key);
        }
        if let Some(file) = self.auth_key_file {
            node.auth_key_file = Some(file);
        }
        if let Some(dir) = self.node_state_dir {
            node.state_dir = Some(dir);
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (path, cert, key, serve, node_flags) = match cli.command {
        Command::Serve {
            config,
            cert,
            key,
            node,
        } => (config, cert, key, true, node),
        Command::CheckConfig { config, node } => (config, None, None, false, node),
    };
    let mut config = match IngressConfig::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("postern-ingress: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = node_flags.apply(&mut config) {
        eprintln!("postern-ingress: {error}");
        return ExitCode::from(2);
    }
    let oidc = match config.oidc_defaults(&|name| std::env::var(name).ok()) {
        Ok(oidc) => oidc,
        Err(error) => {
            eprintln!("postern-ingress: {}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    if let (Some(cert), Some(key)) = (cert, key) {
        config.static_cert = Some(StaticCertSection { cert, key });
    }
    let funnels = match config
        .validate()
        .and_then(|()| config.funnels(&|name| std::env::var(name).ok()))
    {
        Ok(funnels) => funnels,
        Err(error) => {
            eprintln!("postern-ingress: {}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    if !serve {
        println!("{}: ok ({} funnels)", path.display(), funnels.len());
        return ExitCode::SUCCESS;
    }
    let opened = if config.audit_log == "-" {
        JsonLinesSink::new(Box::new(std::io::stdout()))
    } else {
        JsonLinesSink::append_to(std::path::Path::new(&config.audit_log))
    };
    let audit: Arc<dyn AuditSink> = match opened {
        Ok(sink) => Arc::new(sink),
        Err(error) => {
            eprintln!(
                "postern-ingress: cannot open the audit log {}: {error}",
                config.audit_log
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("postern-ingress: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let node = match &config.node {
            Some(section) => {
                let started =
                    postern_ingress::embedded::start_node(section, &config.state_dir, &|name| {
                        std::env::var(name).ok()
                    })
                    .await
                    .map_err(|error| error.to_string())?;
                Some(started)
            }
            None => None,
        };
        let mesh = node.as_ref().map(|node| Mesh {
            node: node.handle(),
            oidc,
        });
        let result = run_with_mesh(&config, funnels, Arc::clone(&audit), mesh)
            .await
            .map_err(|error| error.to_string());
        // Every decision taken before the shutdown is on disk before the process ends.
        audit.flush();
        if let Some(node) = node {
            node.shutdown().await;
        }
        result
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("postern-ingress: {error}");
            ExitCode::FAILURE
        }
    }
}

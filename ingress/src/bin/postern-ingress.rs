//! `postern-ingress`: the public edge binary. Argument parsing and wiring only.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use postern_ingress::audit::{AuditSink, JsonLinesSink};
use postern_ingress::config::{IngressConfig, StaticCertSection};

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
RUST_LOG sets the log filter (default: info). Logs go to stderr.\n\n\
FILES:\n    <state_dir>/acme/account-*.json   the ACME account key (mode 0600)\n    \
<state_dir>/certs/<host>/          issued certificates (key.pem mode 0600)\n\n\
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
    },
    /// Check a configuration file (and that every gate secret is set), then exit.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
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
    let (path, cert, key, serve) = match cli.command {
        Command::Serve { config, cert, key } => (config, cert, key, true),
        Command::CheckConfig { config } => (config, None, None, false),
    };
    let mut config = match IngressConfig::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("postern-ingress: {error}");
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
    let audit: Arc<dyn AuditSink> = if config.audit_log == "-" {
        Arc::new(JsonLinesSink::new(Box::new(std::io::stdout())))
    } else {
        match JsonLinesSink::append_to(std::path::Path::new(&config.audit_log)) {
            Ok(sink) => Arc::new(sink),
            Err(error) => {
                eprintln!(
                    "postern-ingress: cannot open the audit log {}: {error}",
                    config.audit_log
                );
                return ExitCode::from(2);
            }
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("postern-ingress: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(postern_ingress::server::run(&config, funnels, audit)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("postern-ingress: {error}");
            ExitCode::FAILURE
        }
    }
}

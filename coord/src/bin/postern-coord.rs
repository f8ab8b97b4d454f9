//! `postern-coord`: the coordination server binary. Argument parsing and wiring only.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use postern_coord::control::{AuthKeyOptions, ControlConfig, Coord, create_auth_key};
use postern_coord::policy_admin::{self, CommandOutput};
use postern_proto::UnixTime;

/// The Postern coordination server and its admin commands.
#[derive(Debug, Parser)]
#[command(name = "postern-coord", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and query a policy file (HuJSON, Tailscale-compatible; see docs/policy.md).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the coordination server: the control endpoint nodes register with and stream
    /// their netmaps from, plus /key, /healthz and /metrics.
    ///
    /// Nodes register with auth keys (see `postern-coord keys create`). Stop it with Ctrl-C
    /// or SIGTERM; its state (key, SQLite store) stays in the state directory.
    ///
    /// Example: postern-coord serve --state-dir /var/lib/postern-coord --listen 0.0.0.0:8443
    Serve {
        #[command(flatten)]
        state: StateArgs,
        /// Address to listen on for HTTP (control upgrade, /key, /healthz, /metrics).
        #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR:PORT")]
        listen: SocketAddr,
        #[command(flatten)]
        relay: EmbeddedRelayArgs,
    },
    /// Run a standalone relay (for more regions): forwards encrypted WireGuard packets between
    /// nodes that cannot reach each other directly, and answers STUN.
    ///
    /// Nodes attach over HTTPS (TLS on 443 with --tls-cert/--tls-key) and prove they hold a
    /// node key listed in --allow-file. List the relay in the coord's --relay-map so nodes
    /// learn of it. See docs/relay.md.
    ///
    /// Example: postern-coord relay --listen 0.0.0.0:443 --stun 0.0.0.0:3478 --tls-cert fullchain.pem --tls-key key.pem --allow-file nodes.txt
    Relay(StandaloneRelayArgs),
    /// Manage auth keys, which let a node register without an interactive login.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// The relay inside `serve`.
#[derive(Debug, Args)]
struct EmbeddedRelayArgs {
    /// Run the relay inside the coord, at /relay on --listen; registered nodes may attach.
    #[arg(long)]
    relay: bool,
    /// The URL nodes dial for the embedded relay (default: http://LISTEN/relay; use an
    /// https:// URL when a TLS terminator fronts the coord).
    #[arg(long, value_name = "URL", requires = "relay")]
    relay_url: Option<String>,
    /// Answer STUN binding requests on this UDP address (nodes learn their public endpoint).
    #[arg(long, value_name = "ADDR:PORT")]
    stun: Option<SocketAddr>,
    /// A TOML relay map listing every region (see docs/relay.md); replaces the default
    /// single region of the embedded relay.
    #[arg(long, value_name = "FILE")]
    relay_map: Option<PathBuf>,
}

/// `postern-coord relay`.
#[derive(Debug, Args)]
struct StandaloneRelayArgs {
    /// Address to listen on for relay connections (HTTPS, or HTTP with --plain-http).
    #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Answer STUN binding requests on this UDP address (3478 is STUN's port).
    #[arg(long, value_name = "ADDR:PORT")]
    stun: Option<SocketAddr>,
    /// PEM certificate chain for TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS terminator).
    #[arg(long)]
    plain_http: bool,
    /// Node keys allowed to attach, one `nodekey:...` per line (# comments allowed).
    #[arg(long, value_name = "FILE")]
    allow_file: PathBuf,
}

/// Where the coord keeps its state.
#[derive(Debug, Args)]
struct StateArgs {
    /// The state directory: the coord key, and the SQLite store unless --database is given.
    #[arg(
        long,
        env = "POSTERN_COORD_STATE_DIR",
        default_value = "/var/lib/postern-coord"
    )]
    state_dir: PathBuf,
    /// The store: sqlite://FILE or postgres://USER@HOST/DB (default: SQLite in the state dir).
    #[arg(long, env = "POSTERN_COORD_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// The tailnet's DNS domain; node names live under it.
    #[arg(long, default_value = "tailnet.internal", value_name = "DOMAIN")]
    tailnet_domain: String,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make an auth key and print it once. Only its hash is stored: keep the printed key
    /// somewhere safe, it cannot be shown again.
    ///
    /// Example: postern-coord keys create --reusable --tags tag:ci --expiry 1h
    Create {
        #[command(flatten)]
        state: StateArgs,
        /// The key may register many nodes (default: one).
        #[arg(long)]
        reusable: bool,
        /// Nodes registered with it are removed once they go offline.
        #[arg(long)]
        ephemeral: bool,
        /// Tags its nodes get, comma-separated (tag:ci,tag:db).
        #[arg(long, value_delimiter = ',', value_name = "TAGS")]
        tags: Vec<String>,
        /// How long the key stays valid (e.g. 1h, 7d); default: no expiry.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        expiry: Option<Duration>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and run its tests.
    ///
    /// Exit status: 0 when the policy is valid and every test passes (a one-line summary is
    /// printed), 1 when it is not (each problem is printed as FILE:LINE:COL: message),
    /// 2 when the file cannot be read.
    Check {
        /// The policy file.
        file: PathBuf,
        /// Print the result as one JSON object on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Ask whether an identity may reach HOST:PORT under a policy file.
    ///
    /// Prints the rule that allows it and exits 0, or prints "denied" and exits 1. Exits 2
    /// when the file cannot be read, the policy is invalid, or an argument is malformed.
    ///
    /// Example: postern-coord policy test policy.hujson --src alice@example.com --dst tag:web:443
    Test {
        /// The policy file.
        file: PathBuf,
        /// Who connects: a user login (alice@example.com), a tag (tag:ci), a host alias or an IP.
        #[arg(long, value_name = "IDENTITY")]
        src: String,
        /// What is connected to: HOST:PORT, HOST being a user login, a tag, a host alias or an IP.
        #[arg(long, value_name = "HOST:PORT")]
        dst: String,
        /// The protocol: tcp, udp, icmp, sctp, ... or a number.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Print the verdict as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = match cli.command {
        Command::Serve {
            state,
            listen,
            relay,
        } => return run_async(serve(state, listen, relay)),
        Command::Relay(args) => return run_async(relay_standalone(args)),
        Command::Keys(KeysCommand::Create {
            state,
            reusable,
            ephemeral,
            tags,
            expiry,
        }) => {
            let options = AuthKeyOptions {
                reusable,
                ephemeral,
                tags,
                expiry,
                user: None,
            };
            return run_async(keys_create(state, options));
        }
        Command::Policy(PolicyCommand::Check { file, json }) => {
            with_file(&file, |name, text| policy_admin::check(name, text, json))
        }
        Command::Policy(PolicyCommand::Test {
            file,
            src,
            dst,
            proto,
            json,
        }) => with_file(&file, |name, text| {
            policy_admin::test(name, text, &src, &dst, &proto, json)
        }),
    };
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    ExitCode::from(output.exit_code)
}

/// Runs an async command on a fresh runtime; errors print as `postern-coord: ...`, exit 1.
fn run_async(command: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("postern-coord: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-coord: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn control_config(state: StateArgs) -> ControlConfig {
    let mut config = ControlConfig::new(state.state_dir, state.tailnet_domain);
    config.store = state.database;
    config
}

async fn serve(
    state: StateArgs,
    listen: SocketAddr,
    relay: EmbeddedRelayArgs,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut config = control_config(state);
    if let Some(path) = &relay.relay_map {
        config.relay_map = postern_coord::relay::load_relay_map(path)?;
    } else if relay.relay {
        let url = (relay.relay_url.clone()).unwrap_or_else(|| format!("http://{listen}/relay"));
        config.relay_map =
            postern_coord::relay::single_relay_map(url, relay.stun.map(|addr| addr.port()));
    }
    let coord = Coord::open(config)
        .await
        .context("cannot open the coord's state")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mut extra = axum::Router::new();
    let mut relay_server = None;
    if relay.relay {
        let authorizer =
            postern_coord::relay::RegistryAuthorizer::new(coord.registry.store().clone());
        let server =
            postern_relay::RelayServer::new(Default::default(), std::sync::Arc::new(authorizer));
        extra = server.router();
        relay_server = Some(server);
    }
    let stun = start_stun(relay.stun).await?;
    let handle = postern_coord::server::serve_with(coord.clone(), listener, extra)
        .with_context(|| format!("cannot serve on {listen}"))?;
    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    if let Some(server) = relay_server {
        server.shutdown();
    }
    if let Some(stun) = stun {
        stun.shutdown().await;
    }
    handle.shutdown().await;
    coord.shutdown().await;
    Ok(())
}

async fn relay_standalone(args: StandaloneRelayArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(postern_relay::tls::server_config_from_pem_files(cert, key)?)
        }
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.plain_http {
        anyhow::bail!(
            "refusing to serve the relay without TLS on {}: pass --tls-cert and --tls-key, or --plain-http if a TLS terminator fronts it",
            args.listen
        );
    }
    let text = std::fs::read_to_string(&args.allow_file)
        .with_context(|| format!("cannot read {}", args.allow_file.display()))?;
    let allow = postern_relay::StaticAllowList::parse(&text)
        .with_context(|| format!("in {}", args.allow_file.display()))?;
    let server = postern_relay::RelayServer::new(Default::default(), std::sync::Arc::new(allow));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let stun = start_stun(args.stun).await?;
    let handle = server
        .serve(listener, tls)
        .with_context(|| format!("cannot serve on {}", args.listen))?;
    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    if let Some(stun) = stun {
        stun.shutdown().await;
    }
    handle.shutdown().await;
    Ok(())
}

async fn start_stun(addr: Option<SocketAddr>) -> anyhow::Result<Option<postern_relay::StunServer>> {
    use anyhow::Context as _;
    let Some(addr) = addr else {
        return Ok(None);
    };
    let socket = tokio::net::UdpSocket::bind(addr)
        .await
        .with_context(|| format!("cannot listen for STUN on UDP {addr}"))?;
    Ok(Some(postern_relay::StunServer::spawn(socket)?))
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn keys_create(state: StateArgs, options: AuthKeyOptions) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let coord = Coord::open(control_config(state))
        .await
        .context("cannot open the coord's state")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| UnixTime(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
        .context("the system clock is before 1970")?;
    let created = create_auth_key(coord.registry.store(), &options, now)
        .await
        .context("cannot store the auth key")?;
    coord.shutdown().await;
    // The key is printed once, on standard output only, so it can be captured by a script.
    println!("{}", created.secret.expose());
    Ok(())
}

fn with_file(path: &PathBuf, run: impl FnOnce(&str, &str) -> CommandOutput) -> CommandOutput {
    match std::fs::read_to_string(path) {
        Ok(text) => run(&path.display().to_string(), &text),
        Err(e) => CommandOutput {
            stdout: String::new(),
            stderr: format!("postern-coord: cannot read {}: {e}\n", path.display()),
            exit_code: policy_admin::EXIT_ERROR,
        },
    }
}

//! `postern-coord`: the coordination server binary. Argument parsing and wiring only.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use postern_coord::admin::client::{
    AdminClient, format_audit, format_edge_log, format_funnel_table, format_node, format_node_table,
};
use postern_coord::config::{CoordFile, OidcSection, RelayFile};
use postern_coord::control::{AuthKeyOptions, ControlConfig, Coord, create_auth_key};
use postern_coord::policy::PolicySource;
use postern_coord::policy_admin::{self, CommandOutput};
use postern_proto::UnixTime;

/// mimalloc instead of glibc's malloc, as in `postern` (see `cli/src/main.rs`); the coord
/// also runs the embedded relay, which moves every relayed packet between threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Postern coordination server and its admin commands.
#[derive(Debug, Parser)]
#[command(name = "postern-coord", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of `Serve`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Check and query a policy file (HuJSON, Tailscale-compatible; see docs/policy.md).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the coordination server: the control endpoint nodes register with and stream
    /// their netmaps from, plus /key, /healthz and /metrics.
    ///
    /// Settings come from flags, from a TOML file (--config; every flag has a key, see
    /// deploy/coord.example.toml), or both: a flag given on the command line wins over the
    /// file. Nodes register with auth keys (see `postern-coord keys create`). Stop it with
    /// Ctrl-C or SIGTERM; its state (key, SQLite store) stays in the state directory.
    ///
    /// Example: postern-coord serve --config /etc/postern/coord.toml
    Serve(ServeArgs),
    /// Check a configuration file (coord.toml, or relay.toml with --relay) without
    /// starting: syntax, keys, types, values, and that the secrets it names (files,
    /// environment variables) can be read. Exit status 0 when valid, 2 when not.
    ///
    /// Example: postern-coord check-config --config /etc/postern/coord.toml
    CheckConfig {
        /// The configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// The file is a relay.toml for `postern-coord relay`.
        #[arg(long)]
        relay: bool,
    },
    /// List and manage the tailnet's nodes through the running coord's admin API.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Show the coord's audit log: registrations, approvals, expiries, deletions, renames,
    /// tag changes, auth keys made and policy reloads.
    ///
    /// Example: postern-coord audit --since 1h
    Audit {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only records from the last DURATION (e.g. 30m, 1h, 7d); default: all.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        since: Option<Duration>,
    },
    /// Run a standalone relay (for more regions): forwards encrypted WireGuard packets between
    /// nodes that cannot reach each other directly, and answers STUN.
    ///
    /// Nodes attach over HTTPS (TLS on 443 with --tls-cert/--tls-key) and prove they hold a
    /// node key listed in --allow-file. List the relay in the coord's --relay-map so nodes
    /// learn of it. Settings come from flags, a TOML file (--config; see
    /// deploy/relay.example.toml), or both (flags win). See docs/relay.md.
    ///
    /// Example: postern-coord relay --config /etc/postern/relay.toml
    Relay(StandaloneRelayArgs),
    /// Manage auth keys, which let a node register without an interactive login.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List and close the tailnet's funnels through the running coord's admin API.
    #[command(subcommand)]
    Funnels(FunnelsCommand),
}

#[derive(Debug, Subcommand)]
enum FunnelsCommand {
    /// List every funnel: hostname, open or closed (a closed funnel keeps its hostname for
    /// its node and port), node and owner, port, protocol, gate kinds, expiry and URL.
    /// Gate secrets are never shown.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Close a funnel by its hostname: ingress nodes stop serving it at once. The node may
    /// open it again (if the policy allows); --release also frees the hostname.
    ///
    /// Example: postern-coord funnels close laptop.funnel.example.com
    Close {
        #[command(flatten)]
        admin: AdminArgs,
        /// The funnel's hostname.
        hostname: String,
        /// Also forget the funnel, freeing its hostname and public port for others.
        #[arg(long)]
        release: bool,
    },
    /// Show the edge's recent decisions for a funnel (what ingress nodes reported): time,
    /// client, request, gate, result and reason, status, milliseconds; oldest first.
    ///
    /// Example: postern-coord funnels log laptop.funnel.example.com --denied
    Log {
        #[command(flatten)]
        admin: AdminArgs,
        /// The funnel's hostname.
        hostname: String,
        /// Show at most this many, the newest.
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        /// Show only the requests the edge refused.
        #[arg(long)]
        denied: bool,
    },
}

/// `postern-coord serve`: every flag is optional, so that a value from the configuration
/// file applies unless the flag is given.
#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration file (TOML; see deploy/coord.example.toml and docs/coord.md).
    /// Flags given on the command line win over its keys.
    #[arg(long, short = 'c', env = "POSTERN_COORD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
    /// Address to listen on for HTTP (control upgrade, /key, /healthz, /metrics).
    /// Default: 127.0.0.1:8443. Key: listen.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    policy: ServePolicyArgs,
    #[command(flatten)]
    relay: EmbeddedRelayArgs,
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    funnels: FunnelArgs,
    /// Address of the admin API (used by `postern-coord nodes` and `audit`); keep it on
    /// loopback. Its bound address goes to STATE_DIR/admin.addr, its token is
    /// STATE_DIR/admin.token (mode 0600). Default: 127.0.0.1:8444. Key: admin_listen.
    #[arg(long, value_name = "ADDR:PORT")]
    admin_listen: Option<SocketAddr>,
}

/// The policy and the node lifecycle of `serve`.
#[derive(Debug, Args)]
struct ServePolicyArgs {
    /// The policy file (HuJSON; see docs/policy.md). Reloaded on SIGHUP and when its
    /// contents change (checked every 2 s); an invalid new version is refused and the
    /// previous policy stays in force. Default: the built-in policy, which lets each user's
    /// own devices reach each other and nothing else. Key: policy.file.
    #[arg(long, env = "POSTERN_COORD_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,
    /// How long an untagged node's key lasts from its registration (e.g. 90d, 12h); the
    /// node must register again before then. Tagged nodes' keys never expire. `0s` turns
    /// expiry off. Default: 180d. Key: policy.key_expiry.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    key_expiry: Option<Duration>,
    /// New nodes wait for an admin's `postern-coord nodes approve` before they join.
    /// Key: policy.require_approval.
    #[arg(long)]
    require_approval: bool,
    /// How long an ephemeral node may stay offline before it is removed. Default: 5m.
    /// Key: policy.ephemeral_timeout.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    ephemeral_timeout: Option<Duration>,
    /// How often the policy file is checked for changes.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", hide = true)]
    policy_poll_interval: Option<Duration>,
}

/// Funnels (`postern funnel`) served through this coord's ingress nodes (docs/coord.md).
#[derive(Debug, Args)]
struct FunnelArgs {
    /// The DNS domain funnel hostnames live under: a funnel gets NAME.DOMAIN (point a
    /// wildcard DNS record for it at the ingress nodes). Without it, funnels are refused.
    /// Key: funnel.domain.
    #[arg(long, env = "POSTERN_COORD_FUNNEL_DOMAIN", value_name = "DOMAIN")]
    funnel_domain: Option<String>,
    /// The public ports TCP funnels are given, FIRST-LAST (e.g. 20000-20999); each
    /// node and port keeps its public port. Without it, TCP funnels are refused.
    /// Key: funnel.tcp_ports.
    #[arg(long, value_parser = postern_coord::funnel::parse_port_range, value_name = "FIRST-LAST")]
    funnel_tcp_ports: Option<std::ops::RangeInclusive<u16>>,
    /// How many edge decisions (what ingress nodes report for `postern funnel log`) to
    /// keep per funnel; older ones are dropped. Default: 1000. Key: edge_log.keep.
    #[arg(long, value_name = "N")]
    edge_log_keep: Option<u32>,
    /// How long to keep edge decisions after they arrive (e.g. 7d, 12h). Default: 7d.
    /// Key: edge_log.max_age.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    edge_log_max_age: Option<Duration>,
}

/// The relay inside `serve`.
#[derive(Debug, Args)]
struct EmbeddedRelayArgs {
    /// Run the relay inside the coord, at /relay on --listen; registered nodes may attach.
    /// Key: relay.enabled.
    #[arg(long)]
    relay: bool,
    /// The URL nodes dial for the embedded relay (default: http://LISTEN/relay; use an
    /// https:// URL when a TLS terminator fronts the coord). Key: relay.url.
    #[arg(long, value_name = "URL")]
    relay_url: Option<String>,
    /// Answer STUN binding requests on this UDP address (nodes learn their public
    /// endpoint). Key: stun.listen.
    #[arg(long, value_name = "ADDR:PORT")]
    stun: Option<SocketAddr>,
    /// A TOML relay map listing every region (see docs/relay.md); replaces the default
    /// single region of the embedded relay. Key: relay.map.
    #[arg(long, value_name = "FILE")]
    relay_map: Option<PathBuf>,
}

/// `postern-coord relay`.
#[derive(Debug, Args)]
struct StandaloneRelayArgs {
    /// The configuration file (TOML; see deploy/relay.example.toml). Flags given on the
    /// command line win over its keys.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for relay connections (HTTPS, or HTTP with --plain-http).
    /// Default: 0.0.0.0:443. Key: listen.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Answer STUN binding requests on this UDP address (3478 is STUN's port).
    /// Key: stun.listen.
    #[arg(long, value_name = "ADDR:PORT")]
    stun: Option<SocketAddr>,
    /// PEM certificate chain for TLS. Key: tls.cert.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS. Key: tls.key.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS terminator).
    /// Key: plain_http.
    #[arg(long)]
    plain_http: bool,
    /// Node keys allowed to attach, one `nodekey:...` per line (# comments allowed).
    /// Required here or in the file. Key: allow_file.
    #[arg(long, value_name = "FILE")]
    allow_file: Option<PathBuf>,
}

/// Where the coord keeps its state.
#[derive(Debug, Args)]
struct StateArgs {
    /// The state directory: the coord key, and the SQLite store unless --database is given.
    /// Default: /var/lib/postern-coord. Key: state_dir.
    #[arg(long, env = "POSTERN_COORD_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The store: sqlite://FILE or postgres://USER@HOST/DB (default: SQLite in the state
    /// dir). Keys: database, database_env, database_file.
    #[arg(long, env = "POSTERN_COORD_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// The tailnet's DNS domain; node names live under it. Default: tailnet.internal.
    /// Key: tailnet_domain.
    #[arg(long, value_name = "DOMAIN")]
    tailnet_domain: Option<String>,
}

/// Interactive login through the organisation's OpenID Connect provider (docs/coord.md).
#[derive(Debug, Args)]
struct LoginArgs {
    /// The IdP's issuer URL; enables interactive login (`postern login` without a key).
    /// Key: oidc.issuer.
    #[arg(long, env = "POSTERN_COORD_OIDC_ISSUER", value_name = "URL")]
    oidc_issuer: Option<String>,
    /// The coord's client id at the IdP. Key: oidc.client_id.
    #[arg(long, env = "POSTERN_COORD_OIDC_CLIENT_ID", value_name = "ID")]
    oidc_client_id: Option<String>,
    /// A file holding the client secret (one line); omit for a public client.
    /// Keys: oidc.client_secret_file, oidc.client_secret_env.
    #[arg(
        long,
        env = "POSTERN_COORD_OIDC_CLIENT_SECRET_FILE",
        value_name = "FILE"
    )]
    oidc_client_secret_file: Option<PathBuf>,
    /// The client id to use for device login, if the IdP allows the device grant only for
    /// another (public) client; default: --oidc-client-id. Key: oidc.device_client_id.
    #[arg(long, value_name = "ID")]
    oidc_device_client_id: Option<String>,
    /// The coord's URL as browsers reach it; register {URL}/oidc/callback at the IdP.
    /// Default: http://<--listen>. Key: oidc.public_url.
    #[arg(long, env = "POSTERN_COORD_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// Only these email domains may log in, comma-separated (default: any).
    /// Key: oidc.allowed_domains.
    #[arg(long, value_delimiter = ',', value_name = "DOMAINS")]
    allowed_domains: Vec<String>,
    /// Only members of one of these IdP groups may log in, comma-separated (default:
    /// any). Key: oidc.allowed_groups.
    #[arg(long, value_delimiter = ',', value_name = "GROUPS")]
    allowed_groups: Vec<String>,
    /// How long a login link or device code stays usable. Default: 10m.
    /// Key: oidc.login_timeout.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    login_timeout: Option<Duration>,
}

/// How an admin command reaches the running coord.
#[derive(Debug, Args)]
struct AdminArgs {
    /// The coord's state directory: its admin.addr and admin.token are read from here.
    #[arg(
        long,
        env = "POSTERN_COORD_STATE_DIR",
        default_value = "/var/lib/postern-coord"
    )]
    state_dir: PathBuf,
    /// The admin API's URL (default: from STATE_DIR/admin.addr).
    #[arg(long, env = "POSTERN_COORD_ADMIN_URL", value_name = "URL")]
    admin_url: Option<String>,
    /// The admin token's file (default: STATE_DIR/admin.token).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// List every node: id, name, address, user, tags, status (online, offline, expired,
    /// needs-approval) and when it was last seen.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one node (by id or name).
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's id or name.
        node: String,
    },
    /// Rename a node; the new name must be a free DNS label.
    Rename {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's id or name.
        node: String,
        /// The new name.
        name: String,
    },
    /// Replace a node's tags (none given: remove them all). A tagged node is no longer its
    /// user's, and its key does not expire.
    ///
    /// Example: postern-coord nodes tag build-7 tag:ci,tag:linux
    Tag {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's id or name.
        node: String,
        /// The tags, comma-separated (tag:NAME).
        #[arg(value_delimiter = ',', value_name = "TAGS")]
        tags: Vec<String>,
    },
    /// Delete a node: it leaves every netmap at once, and its name and addresses are freed.
    Delete {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's id or name.
        node: String,
    },
    /// Expire a node's key now: it vanishes from its peers' netmaps until it registers again.
    Expire {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's id or name.
        node: String,
    },
    /// Approve a node waiting for approval (serve --require-approval).
    Approve {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's id or name.
        node: String,
    },
    /// Mark a node as an ingress (a public edge, `postern-ingress`): it receives every open
    /// funnel's route and may open streams to funnelling nodes. --off unmarks it.
    ///
    /// Example: postern-coord nodes ingress edge-1
    Ingress {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's id or name.
        node: String,
        /// Unmark it: a plain node again.
        #[arg(long)]
        off: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make an auth key and print it once. Only its hash is stored: keep the printed key
    /// somewhere safe, it cannot be shown again.
    ///
    /// Example: postern-coord keys create --reusable --tags tag:ci --expiry 1h
    Create {
        /// The coord's configuration file, for its state_dir and store (flags win).
        #[arg(long, short = 'c', env = "POSTERN_COORD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
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
        /// The user its nodes belong to (a login, e.g. alice@example.com); created if
        /// unknown. Default: the built-in `tagged-devices` user.
        #[arg(long, value_name = "LOGIN")]
        user: Option<String>,
        /// Nodes registered with it are ingress nodes (`postern-ingress` edges): they
        /// receive every open funnel's route, gate secrets included. Keep such keys safe.
        #[arg(long)]
        ingress: bool,
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
        Command::Serve(args) => {
            let settings = match ServeSettings::resolve(args) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("postern-coord: {e:#}");
                    return ExitCode::from(2);
                }
            };
            return run_async(serve(settings));
        }
        Command::CheckConfig { config, relay } => return check_config(&config, relay),
        Command::Nodes(command) => return run_admin(nodes_command(command)),
        Command::Funnels(command) => return run_admin(funnels_command(command)),
        Command::Audit { admin, since } => return run_admin(audit_command(admin, since)),
        Command::Relay(args) => {
            let settings = match RelaySettings::resolve(args) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("postern-coord: {e:#}");
                    return ExitCode::from(2);
                }
            };
            return run_async(relay_standalone(settings));
        }
        Command::Keys(KeysCommand::Create {
            config,
            state,
            reusable,
            ephemeral,
            tags,
            expiry,
            user,
            ingress,
        }) => {
            let options = AuthKeyOptions {
                reusable,
                ephemeral,
                tags,
                expiry,
                user: None,
                ingress,
            };
            let file = match config.as_deref().map(load_coord_file).transpose() {
                Ok(file) => file,
                Err(e) => {
                    eprintln!("postern-coord: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let control = match control_config(state, config.as_deref().zip(file.as_ref())) {
                Ok(control) => control,
                Err(e) => {
                    eprintln!("postern-coord: {e:#}");
                    return ExitCode::from(2);
                }
            };
            return run_async(keys_create(control, options, user));
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

/// The default of `--state-dir` (key `state_dir`).
const DEFAULT_STATE_DIR: &str = "/var/lib/postern-coord";
/// The default of `--tailnet-domain` (key `tailnet_domain`).
const DEFAULT_TAILNET_DOMAIN: &str = "tailnet.internal";
/// The default of `serve --listen` (key `listen`).
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8443);
/// The default of `relay --listen` (key `listen` of relay.toml).
const DEFAULT_RELAY_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 443);

fn load_coord_file(path: &std::path::Path) -> anyhow::Result<CoordFile> {
    let file = CoordFile::load(path)?;
    file.validate(path)?;
    Ok(file)
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The state directory, store and tailnet domain: flags, then the file, then defaults.
fn control_config(
    state: StateArgs,
    file: Option<(&std::path::Path, &CoordFile)>,
) -> anyhow::Result<ControlConfig> {
    let state_dir = state
        .state_dir
        .or_else(|| file.and_then(|(_, f)| f.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let tailnet_domain = state
        .tailnet_domain
        .or_else(|| file.and_then(|(_, f)| f.tailnet_domain.clone()))
        .unwrap_or_else(|| DEFAULT_TAILNET_DOMAIN.to_owned());
    let mut config = ControlConfig::new(state_dir, tailnet_domain);
    config.store = match (state.database, file) {
        (Some(url), _) => Some(url),
        (None, Some((path, file))) => file.database_url(path, &env_var)?,
        (None, None) => None,
    };
    Ok(config)
}

/// Everything `serve` needs, merged from flags, the file and defaults, with secrets read.
struct ServeSettings {
    control: ControlConfig,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    relay: bool,
    relay_url: Option<String>,
    relay_map: Option<PathBuf>,
    stun: Option<SocketAddr>,
    login: Option<LoginSettings>,
}

/// Interactive login, resolved; the client secret already read.
struct LoginSettings {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    device_client_id: Option<String>,
    public_url: Option<String>,
    allowed_domains: Vec<String>,
    allowed_groups: Vec<String>,
    login_timeout: Duration,
}

impl ServeSettings {
    /// Merges `args` over the file `--config` names (if any) over the defaults, and reads
    /// the secrets the result names. Errors are configuration errors (exit status 2).
    fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => load_coord_file(path)?,
            None => CoordFile::default(),
        };
        let path = args.config.clone().unwrap_or_default();
        let mut control = control_config(args.state, Some((&path, &file)))?;
        let policy = args.policy;
        control.policy = match policy.policy.or_else(|| file.policy.file.clone()) {
            Some(path) => PolicySource::File(path),
            None => PolicySource::BuiltIn,
        };
        let key_expiry = policy
            .key_expiry
            .or(file.policy.key_expiry.map(|d| d.0))
            .unwrap_or(Duration::from_secs(180 * 24 * 3600));
        control.key_expiry = (!key_expiry.is_zero()).then_some(key_expiry);
        control.require_approval =
            policy.require_approval || file.policy.require_approval.unwrap_or(false);
        control.ephemeral_timeout = policy
            .ephemeral_timeout
            .or(file.policy.ephemeral_timeout.map(|d| d.0))
            .unwrap_or(Duration::from_secs(5 * 60));
        control.policy_poll_interval = policy
            .policy_poll_interval
            .or(file.policy.poll_interval.map(|d| d.0))
            .unwrap_or(Duration::from_secs(2));

        let funnels = args.funnels;
        if let Some(domain) = funnels.funnel_domain.or(file.funnel.domain.clone()) {
            control.funnel_domain = Some(postern_coord::funnel::hostname::parse_funnel_domain(
                &domain,
            )?);
        }
        control.funnel_tcp_ports =
            funnels
                .funnel_tcp_ports
                .or(file.funnel.tcp_ports.clone().map(|r| r.0));
        let keep = funnels
            .edge_log_keep
            .or(file.edge_log.keep)
            .unwrap_or(postern_coord::control::DEFAULT_EDGE_LOG_PER_FUNNEL);
        anyhow::ensure!(keep >= 1, "--edge-log-keep must be at least 1");
        control.edge_log_per_funnel = keep;
        control.edge_log_max_age = funnels
            .edge_log_max_age
            .or(file.edge_log.max_age.map(|d| d.0))
            .unwrap_or(postern_coord::control::DEFAULT_EDGE_LOG_MAX_AGE);

        let relay = args.relay.relay || file.relay.enabled.unwrap_or(false);
        let relay_url = args.relay.relay_url.or(file.relay.url.clone());
        anyhow::ensure!(
            relay_url.is_none() || relay,
            "--relay-url names the embedded relay's URL: pass --relay (or relay.enabled = true) too"
        );
        let login = resolve_login(args.login, file.oidc.as_ref(), &path)?;
        Ok(Self {
            control,
            listen: args.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or(postern_coord::admin::DEFAULT_ADMIN_LISTEN.parse()?),
            relay,
            relay_url,
            relay_map: args.relay.relay_map.or(file.relay.map.clone()),
            stun: args.relay.stun.or(file.stun.listen),
            login,
        })
    }
}

/// The login settings: flags over `[oidc]`; `None` without an issuer.
fn resolve_login(
    args: LoginArgs,
    file: Option<&OidcSection>,
    path: &std::path::Path,
) -> anyhow::Result<Option<LoginSettings>> {
    use anyhow::Context as _;
    let empty = OidcSection::default();
    let file = file.unwrap_or(&empty);
    let issuer = args.oidc_issuer.or(file.issuer.clone());
    let client_id = args.oidc_client_id.or(file.client_id.clone());
    let Some(issuer) = issuer else {
        anyhow::ensure!(client_id.is_none(), "--oidc-client-id needs --oidc-issuer");
        return Ok(None);
    };
    let client_id = client_id
        .context("--oidc-issuer needs --oidc-client-id (the coord's client at the IdP)")?;
    let client_secret = match &args.oidc_client_secret_file {
        Some(secret) => Some(
            std::fs::read_to_string(secret)
                .with_context(|| {
                    format!("cannot read the client secret file {}", secret.display())
                })?
                .trim()
                .to_owned(),
        ),
        None => file.client_secret(path, &env_var)?,
    };
    let or_file = |flag: Vec<String>, file: &Option<Vec<String>>| {
        if flag.is_empty() {
            file.clone().unwrap_or_default()
        } else {
            flag
        }
    };
    Ok(Some(LoginSettings {
        issuer,
        client_id,
        client_secret,
        device_client_id: args.oidc_device_client_id.or(file.device_client_id.clone()),
        public_url: args.public_url.or(file.public_url.clone()),
        allowed_domains: or_file(args.allowed_domains, &file.allowed_domains),
        allowed_groups: or_file(args.allowed_groups, &file.allowed_groups),
        login_timeout: args
            .login_timeout
            .or(file.login_timeout.map(|d| d.0))
            .unwrap_or(Duration::from_secs(10 * 60)),
    }))
}

/// Everything `relay` needs, merged from flags, the file and defaults.
struct RelaySettings {
    listen: SocketAddr,
    stun: Option<SocketAddr>,
    tls: Option<(PathBuf, PathBuf)>,
    plain_http: bool,
    allow_file: PathBuf,
}

impl RelaySettings {
    /// Merges `args` over the file `--config` names (if any) over the defaults.
    fn resolve(args: StandaloneRelayArgs) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let file = match &args.config {
            Some(path) => {
                let file = RelayFile::load(path)?;
                file.validate(path)?;
                file
            }
            None => RelayFile::default(),
        };
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => file.tls.map(|tls| (tls.cert, tls.key)),
        };
        let listen = args.listen.or(file.listen).unwrap_or(DEFAULT_RELAY_LISTEN);
        let plain_http = args.plain_http || file.plain_http.unwrap_or(false);
        if tls.is_none() && !listen.ip().is_loopback() && !plain_http {
            anyhow::bail!(
                "refusing to serve the relay without TLS on {listen}: pass --tls-cert and --tls-key, or --plain-http if a TLS terminator fronts it"
            );
        }
        Ok(Self {
            listen,
            stun: args.stun.or(file.stun.listen),
            tls,
            plain_http,
            allow_file: args.allow_file.or(file.allow_file).context(
                "no allow file: pass --allow-file FILE or set allow_file in the configuration file",
            )?,
        })
    }
}

/// `check-config`: resolves the file as `serve` (or `relay`) would, without starting.
fn check_config(path: &std::path::Path, relay: bool) -> ExitCode {
    let result = if relay {
        let args = StandaloneRelayArgs {
            config: Some(path.to_path_buf()),
            listen: None,
            stun: None,
            tls_cert: None,
            tls_key: None,
            plain_http: false,
            allow_file: None,
        };
        RelaySettings::resolve(args).map(|settings| {
            format!(
                "{}: ok (relay on {}{}, {})",
                path.display(),
                settings.listen,
                settings
                    .stun
                    .map(|stun| format!(", STUN on {stun}"))
                    .unwrap_or_default(),
                if settings.tls.is_some() {
                    "TLS"
                } else if settings.plain_http {
                    "plain HTTP"
                } else {
                    "plain HTTP on loopback"
                }
            )
        })
    } else {
        let args = ServeArgs {
            config: Some(path.to_path_buf()),
            state: StateArgs {
                state_dir: None,
                database: None,
                tailnet_domain: None,
            },
            listen: None,
            policy: ServePolicyArgs {
                policy: None,
                key_expiry: None,
                require_approval: false,
                ephemeral_timeout: None,
                policy_poll_interval: None,
            },
            relay: EmbeddedRelayArgs {
                relay: false,
                relay_url: None,
                stun: None,
                relay_map: None,
            },
            login: LoginArgs {
                oidc_issuer: None,
                oidc_client_id: None,
                oidc_client_secret_file: None,
                oidc_device_client_id: None,
                public_url: None,
                allowed_domains: Vec::new(),
                allowed_groups: Vec::new(),
                login_timeout: None,
            },
            funnels: FunnelArgs {
                funnel_domain: None,
                funnel_tcp_ports: None,
                edge_log_keep: None,
                edge_log_max_age: None,
            },
            admin_listen: None,
        };
        ServeSettings::resolve(args).map(|settings| {
            format!(
                "{}: ok (listen {}, admin {}, relay {}, login {})",
                path.display(),
                settings.listen,
                settings.admin_listen,
                if settings.relay { "embedded" } else { "off" },
                if settings.login.is_some() {
                    "OIDC"
                } else {
                    "off"
                },
            )
        })
    };
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postern-coord: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(settings: ServeSettings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    // Installed first: a SIGHUP must never find the default action (terminate).
    let hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let ServeSettings {
        mut control,
        listen,
        admin_listen,
        relay,
        relay_url,
        relay_map,
        stun,
        login,
    } = settings;
    if let Some(path) = &relay_map {
        control.relay_map = postern_coord::relay::load_relay_map(path)?;
    } else if relay {
        let url = relay_url.unwrap_or_else(|| format!("http://{listen}/relay"));
        control.relay_map =
            postern_coord::relay::single_relay_map(url, stun.map(|addr| addr.port()));
    }
    let login = match login {
        Some(login) => Some(login_service(login, listen).await?),
        None => None,
    };
    let mut coord = Coord::open(control)
        .await
        .context("cannot start the coord")?;
    if let Some(login) = login {
        coord = coord.with_login(login);
    }
    tracing::info!(policy = %coord.policy.source(), "policy in force: {}", coord.policy.summary());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mut extra = axum::Router::new();
    let mut relay_server = None;
    if relay {
        let authorizer =
            postern_coord::relay::RegistryAuthorizer::new(coord.registry.store().clone());
        let server =
            postern_relay::RelayServer::new(Default::default(), std::sync::Arc::new(authorizer));
        extra = server.router();
        relay_server = Some(server);
    }
    let stun = start_stun(stun).await?;
    let handle = postern_coord::server::serve_with(coord.clone(), listener, extra)
        .with_context(|| format!("cannot serve on {listen}"))?;
    let admin_listener = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on {admin_listen} for the admin API"))?;
    postern_coord::admin::serve_admin(coord.clone(), admin_listener)
        .context("cannot start the admin API")?;
    let reloader = tokio::spawn(reload_on_sighup(coord.clone(), hangups));
    wait_for_shutdown_signal().await?;
    reloader.abort();
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

/// Reloads the policy on every SIGHUP.
async fn reload_on_sighup(coord: Coord, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the policy");
        coord.reload_policy("signal:SIGHUP", true).await;
    }
}

async fn relay_standalone(args: RelaySettings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let tls = match &args.tls {
        Some((cert, key)) => Some(postern_relay::tls::server_config_from_pem_files(cert, key)?),
        None => None,
    };
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

/// The login service: discovers the IdP now, so a wrong issuer fails at start rather than
/// at the first login.
async fn login_service(
    args: LoginSettings,
    listen: SocketAddr,
) -> anyhow::Result<postern_coord::login::LoginService> {
    use anyhow::Context as _;
    use postern_coord::login::{Admission, LoginConfig, LoginService};
    let public_url = args
        .public_url
        .unwrap_or_else(|| format!("http://{listen}"));
    let mut config = LoginConfig::new(args.issuer, args.client_id, args.client_secret, public_url);
    config.oidc.device_client_id = args.device_client_id;
    config.admission = Admission {
        domains: args.allowed_domains,
        groups: args.allowed_groups,
    };
    config.login_ttl = args.login_timeout;
    tracing::info!(
        issuer = %config.oidc.issuer,
        redirect_url = %config.oidc.redirect_url,
        allowed_domains = ?config.admission.domains,
        allowed_groups = ?config.admission.groups,
        "interactive login enabled"
    );
    LoginService::discover(config)
        .await
        .context("cannot set up interactive login")
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

async fn keys_create(
    control: ControlConfig,
    mut options: AuthKeyOptions,
    user: Option<String>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let coord = Coord::open(control)
        .await
        .context("cannot open the coord's state")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| UnixTime(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
        .context("the system clock is before 1970")?;
    let store = coord.registry.store();
    if let Some(login) = &user {
        let record = match store.user_by_login(login).await? {
            Some(record) => record,
            None => store.upsert_user(login, "", &[], now).await?,
        };
        options.user = Some(record.id);
    }
    let created = create_auth_key(store, &options, now)
        .await
        .context("cannot store the auth key")?;
    coord
        .audit(
            postern_coord::audit::ACTOR_ADMIN,
            postern_coord::audit::AUTH_KEY_CREATE,
            &format!("authkey:{}", created.record.id),
            serde_json::json!({
                "user": user,
                "reusable": options.reusable,
                "ephemeral": options.ephemeral,
                "tags": options.tags,
                "ingress": options.ingress,
                "expires_at": created.record.expires_at.map(|t| t.0),
            }),
        )
        .await;
    coord.shutdown().await;
    // The key is printed once, on standard output only, so it can be captured by a script.
    println!("{}", created.secret.expose());
    Ok(())
}

/// Runs an admin command: prints its output, or `postern-coord: ERROR` and exits 1.
fn run_admin(command: impl std::future::Future<Output = anyhow::Result<String>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("postern-coord: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postern-coord: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn admin_client(admin: &AdminArgs) -> anyhow::Result<AdminClient> {
    Ok(AdminClient::new(
        &admin.state_dir,
        admin.admin_url.as_deref(),
        admin.admin_token_file.as_deref(),
    )?)
}

async fn nodes_command(command: NodesCommand) -> anyhow::Result<String> {
    let (admin, node, verb) = match command {
        NodesCommand::List { admin } => {
            let nodes = admin_client(&admin)?.nodes().await?;
            return Ok(if admin.json {
                serde_json::to_string_pretty(&nodes)? + "\n"
            } else {
                format_node_table(&nodes)
            });
        }
        NodesCommand::Show { admin, node } => {
            let info = admin_client(&admin)?.node(&node).await?;
            return Ok(if admin.json {
                serde_json::to_string_pretty(&info)? + "\n"
            } else {
                format_node(&info)
            });
        }
        NodesCommand::Rename { admin, node, name } => {
            let info = admin_client(&admin)?.rename(&node, &name).await?;
            (admin, info, "renamed")
        }
        NodesCommand::Tag { admin, node, tags } => {
            let info = admin_client(&admin)?.tag(&node, &tags).await?;
            (admin, info, "tagged")
        }
        NodesCommand::Delete { admin, node } => {
            let info = admin_client(&admin)?.delete(&node).await?;
            (admin, info, "deleted")
        }
        NodesCommand::Expire { admin, node } => {
            let info = admin_client(&admin)?.expire(&node).await?;
            (admin, info, "expired")
        }
        NodesCommand::Approve { admin, node } => {
            let info = admin_client(&admin)?.approve(&node).await?;
            (admin, info, "approved")
        }
        NodesCommand::Ingress { admin, node, off } => {
            let info = admin_client(&admin)?.set_ingress(&node, !off).await?;
            let verb = if off {
                "unmarked as ingress"
            } else {
                "marked as ingress"
            };
            (admin, info, verb)
        }
    };
    Ok(if admin.json {
        serde_json::to_string_pretty(&node)? + "\n"
    } else {
        let tags = if node.tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", node.tags.join(","))
        };
        format!("{verb} node {} ({}){tags}\n", node.id, node.name)
    })
}

async fn funnels_command(command: FunnelsCommand) -> anyhow::Result<String> {
    match command {
        FunnelsCommand::List { admin } => {
            let funnels = admin_client(&admin)?.funnels().await?;
            Ok(if admin.json {
                serde_json::to_string_pretty(&funnels)? + "\n"
            } else {
                format_funnel_table(&funnels)
            })
        }
        FunnelsCommand::Log {
            admin,
            hostname,
            limit,
            denied,
        } => {
            let decisions = admin_client(&admin)?
                .funnel_log(&hostname, limit, denied)
                .await?;
            Ok(if admin.json {
                serde_json::to_string_pretty(&decisions)? + "\n"
            } else {
                format_edge_log(&decisions)
            })
        }
        FunnelsCommand::Close {
            admin,
            hostname,
            release,
        } => {
            let info = admin_client(&admin)?
                .close_funnel(&hostname, release)
                .await?;
            Ok(if admin.json {
                serde_json::to_string_pretty(&info)? + "\n"
            } else if release {
                format!("closed and released funnel {}\n", info.hostname)
            } else {
                format!("closed funnel {}\n", info.hostname)
            })
        }
    }
}

async fn audit_command(admin: AdminArgs, since: Option<Duration>) -> anyhow::Result<String> {
    let since_ms = match since {
        Some(window) => {
            let now_ms = postern_coord::audit::now_ms();
            now_ms.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
        }
        None => 0,
    };
    let entries = admin_client(&admin)?.audit(since_ms).await?;
    Ok(if admin.json {
        serde_json::to_string_pretty(&entries)? + "\n"
    } else {
        format_audit(&entries)
    })
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

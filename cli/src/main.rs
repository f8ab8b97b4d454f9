//! `postern`: the command people type. Argument parsing and wiring only; all logic lives
//! in the library crates. Each subcommand is one module.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

mod config;
mod dev;
mod funnel;
mod funnel_log;
mod inspect;
mod login;
mod metrics;
mod nc;
mod ping;
mod serve;
mod status;
mod up;
mod wg;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the data path allocates a buffer per packet on one
/// thread and frees it on another, which glibc's per-thread arenas answer with page faults
/// and trimming (5 to 10 % of a node's CPU in `perf record` of a mesh transfer).
///
/// Built with mimalloc's `no_thp` (workspace `Cargo.toml`): it does not ask for transparent
/// huge pages, which tripled a node's resident memory under load (2 MB pages backing
/// sparsely used arenas) without a measurable gain in throughput (docs/benchmarks.md,
/// run 17).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Exit code for usage and configuration errors (as clap uses for usage errors).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code for failures at run time (a socket, the network).
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit code when the node is not ready for the command: not logged in, or not running.
pub(crate) const EXIT_NOT_READY: u8 = 3;

/// Postern: a self-hosted, identity-gated WireGuard mesh with public ingress.
///
/// Postern connects the machines of a tailnet with WireGuard, lets people in by their
/// identity, and publishes chosen services to the internet through an ingress.
///
/// A node starts with `postern login --coord URL --auth-key-file FILE` (once), then runs
/// with `postern up`; `postern status`, `postern ping`, `postern nc`, `postern serve`,
/// `postern funnel`, `postern inspect` and `postern down` talk to the running node
/// through its local API socket in the state directory.
///
/// Logs go to standard error; set RUST_LOG (e.g. RUST_LOG=debug or
/// RUST_LOG=postern_node=trace) to see more. Exit status: 0 on success, 1 when something
/// failed at run time, 2 for usage or configuration errors, 3 when the node is not logged
/// in or not running.
#[derive(Debug, Parser)]
#[command(name = "postern", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register this node with a coordination server.
    ///
    /// Makes the node's keys (machine, node and disco keys, mode 0600 in the state
    /// directory), fetches and pins the coord's key, and registers: with an auth key the
    /// node is in at once; without one, the coord answers with a login URL to open, and
    /// login waits until a person has logged in there. The coord URL, its pinned key and
    /// the node's id are saved in the state directory, so `postern up` needs no flags.
    ///
    /// Logging in again to the same coord does nothing; to join another coord, run
    /// `postern logout` first.
    ///
    /// Examples:
    ///   postern login --coord http://coord.example.com:8443 --auth-key-file /etc/postern/key
    ///   POSTERN_AUTH_KEY=pstn-auth-... postern login --coord http://10.0.0.1:8443
    #[command(verbatim_doc_comment)]
    Login(login::LoginArgs),
    /// Run the node in the foreground until Ctrl-C, SIGTERM or `postern down`.
    ///
    /// Brings the node up in userspace (no root, no TUN device): a WireGuard engine on a
    /// UDP port and a userspace TCP/IP stack on the node's tailnet addresses. Follows the
    /// coord's netmap (peers joining and leaving, endpoints, the packet filter) and keeps
    /// the last netmap while the coord is unreachable, so tailnet connections survive a
    /// coord restart. Host programs reach the tailnet through --socks5 / --http-proxy and
    /// `postern nc`; `postern status` shows what the node sees.
    ///
    /// The local API listens on STATE_DIR/postern.sock (mode 0600).
    ///
    /// Request inspection (a web UI and JSON API of captured funnel requests, see
    /// `postern inspect`) runs on --inspect, 127.0.0.1:4040 by default. Serves and funnels
    /// kept with --bg come back at each start.
    ///
    /// Config file keys (see --config): state_dir, coord, hostname, auth_key_file, port,
    /// socks5, http_proxy, inspect, inspect_serves; flags win over the file.
    ///
    /// Examples:
    ///   postern up
    ///   postern up --socks5 127.0.0.1:1080 && curl --socks5-hostname 127.0.0.1:1080 http://laptop:8000/
    #[command(verbatim_doc_comment)]
    Up(up::UpArgs),
    /// Stop the node running on this state directory.
    Down(up::DownArgs),
    /// Forget this node's login and node key (stopping the node if it runs).
    ///
    /// The machine key stays; the next `postern login` registers a new node. The coord
    /// keeps listing the old node until an admin removes it.
    Logout(login::LogoutArgs),
    /// Show this node, its peers and their connections.
    ///
    /// For each peer: name, addresses, online (as the coord sees it), the path (direct
    /// and its endpoint), the last WireGuard handshake and bytes received and sent.
    Status(status::StatusArgs),
    /// Print the running node's metrics in the Prometheus text format.
    ///
    /// Peers in the netmap and online, bytes received and sent and the last handshake per
    /// peer, the path in use (direct, relayed), packets the WireGuard engine dropped by
    /// reason (`filtered`: refused by the tailnet policy), the coord connection, the key's
    /// expiry, serves and funnels. The same series answer `GET /v0/metrics` on the local
    /// API socket, for a scraper on this machine:
    ///   curl --unix-socket STATE_DIR/postern.sock http://postern/v0/metrics
    #[command(verbatim_doc_comment)]
    Metrics(metrics::MetricsArgs),
    /// Carry standard input and output over a TCP connection in the tailnet.
    ///
    /// `postern nc PEER PORT` connects to PORT on PEER; `postern nc -l PORT` listens on
    /// this node's tailnet port PORT and serves the first connection. End of input
    /// half-closes the connection; nc exits when the other side closes.
    ///
    /// Examples:
    ///   postern nc -l 7000 > received.bin          (on node b)
    ///   postern nc b 7000 < file.bin               (on node a)
    #[command(verbatim_doc_comment)]
    Nc(nc::NcArgs),
    /// Send pings through the mesh to a peer and show the round-trip time and path.
    ///
    /// The ping is an ICMP echo inside the tunnel, so it shows that WireGuard and the
    /// packet filter let traffic through. The path is `direct` (UDP straight to the peer);
    /// relayed paths come with the relay.
    Ping(ping::PingArgs),
    /// Share a local service with the tailnet (not the internet; see `postern funnel`).
    ///
    /// The running daemon (`postern up`) listens on a tailnet port of this node and
    /// proxies connections to a local service. HTTP serves (the default) add the caller's
    /// identity as request headers after removing any such headers that came in:
    /// Postern-User-Login, Postern-User-Name, Postern-User-Groups, Postern-Node-Name and
    /// Postern-Node-Tags (see docs/serve.md). --tcp serves pipe raw bytes. The policy
    /// decides which peers may connect; others never reach the service.
    ///
    /// By default the serve lasts while this command runs (Ctrl-C removes it, as does
    /// killing it); with --bg it is saved in the state directory and comes back when the
    /// daemon restarts, until `postern serve reset`.
    ///
    /// Forms:
    ///   postern serve 3000                                (tailnet :3000 -> http://127.0.0.1:3000)
    ///   postern serve 80 http://127.0.0.1:3000/app        (tailnet :80 -> that origin)
    ///   postern serve --set-path /api 80 8080             (tailnet :80/api/* -> 127.0.0.1:8080/*)
    ///   postern serve --tcp 5432 5432                     (tailnet :5432 -> tcp 127.0.0.1:5432)
    ///   postern serve 3000 --bg                           (kept across restarts)
    ///   postern serve status [--json]
    ///   postern serve reset
    ///
    /// Exit status: 0 when served (foreground: when stopped with Ctrl-C), 1 when the
    /// daemon removed a foreground serve or something failed, 2 for a bad target or a
    /// port conflict, 3 when no daemon runs (start one with `postern up`).
    #[command(verbatim_doc_comment)]
    Serve(serve::ServeArgs),
    /// Publish a local service to the internet through the ingress, behind gates.
    ///
    /// The daemon asks the coordination server for a funnel of PORT; the policy must
    /// grant it (a refusal prints the coord's message, naming the missing grant, and
    /// exits 1). On success it prints the public URL, which stays the same for the same
    /// node, name and port. Public requests pass the gates at the ingress and reach
    /// 127.0.0.1:PORT with the admitted identity as Postern-Gate / Postern-Identity
    /// headers. Funnelled requests are captured by request inspection
    /// (`postern inspect list`).
    ///
    /// Gates (combined: every gate must admit, or any one with --any):
    ///   --verify-webhook PROVIDER --secret-env VAR | --secret-file FILE
    ///   --login [--allow-email E] [--allow-domain D] [--allow-group G]
    ///   --jwt-issuer URL [--jwt-audience A] [--jwks-url U]
    ///   --allow-ip CIDR, --deny-ip CIDR, --mtls-ca FILE, --rate-limit 10/s
    /// Secrets are never taken on the command line.
    ///
    /// Like serve, a funnel lasts while this command runs unless --bg.
    ///
    /// Examples:
    ///   GH_SECRET=... postern funnel 3000 --verify-webhook github --secret-env GH_SECRET
    ///   postern funnel 8080 --name docs --login --allow-domain example.com --ttl 2h --bg
    ///   postern funnel status --json
    ///   postern funnel log hooks --denied     (why the edge refused deliveries)
    ///   postern funnel reset
    ///
    /// Exit status: 0 on success, 1 when the coord refused or could not be asked, 2 for
    /// bad flags, 3 when no daemon runs.
    #[command(verbatim_doc_comment)]
    Funnel(Box<funnel::FunnelArgs>),
    /// List, show and replay the requests the node captured (request inspection).
    ///
    /// The daemon captures every funnelled request (and, with `postern up
    /// --inspect-serves`, every request to a serve) and serves a web UI and JSON API on
    /// `--inspect` (default http://127.0.0.1:4040). These commands use that API; they ask
    /// the daemon where it listens unless --inspect-url is given.
    ///
    /// Examples:
    ///   postern inspect list --json
    ///   postern inspect show 4 --reveal
    ///   postern inspect replay 4
    ///
    /// Exit status: 0 on success, 1 for an unknown id or a failed replay, 3 when no daemon
    /// runs or inspection is off.
    #[command(verbatim_doc_comment)]
    Inspect(inspect::InspectArgs),
    /// Plain WireGuard: bring up a wg-quick configuration without a coordination server.
    #[command(subcommand)]
    Wg(wg::WgCommand),
    /// Everything on one machine for a first look (not built yet: says what it will do).
    Dev(dev::DevArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Login(args) => login::run_login(args),
        Command::Up(args) => up::run_up(args),
        Command::Down(args) => up::run_down(&args),
        Command::Logout(args) => login::run_logout(&args),
        Command::Status(args) => status::run(&args),
        Command::Metrics(args) => metrics::run(&args),
        Command::Nc(args) => nc::run(&args),
        Command::Ping(args) => ping::run(&args),
        Command::Serve(args) => serve::run(args),
        Command::Funnel(args) => funnel::run(*args),
        Command::Inspect(args) => inspect::run(args),
        Command::Wg(command) => wg::run(command),
        Command::Dev(args) => dev::run(&args),
    }
}

/// Prints `postern: MESSAGE` to standard error and returns `code`.
pub(crate) fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("postern: {message}");
    ExitCode::from(code)
}

/// A tokio runtime for a command, or the exit code after saying why there is none.
pub(crate) fn tokio_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            fail(
                &format!("cannot start the async runtime: {e}"),
                EXIT_FAILURE,
            )
        })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

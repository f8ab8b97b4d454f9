//! `postern serve`: share a local service with the tailnet, through the running daemon.
//! Also the plumbing `postern funnel` shares: holding a foreground session open, and
//! turning local API errors into exit codes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use postern_node::daemon::api_client::{ApiClientError, ApiStream, LocalApiClient};
use postern_node::daemon::serves::{EntryTarget, ServeEntry, ServeRequest, ServeStatus};
use postern_node::serve::{OriginUrl, RoutePath};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::config::Global;
use crate::{EXIT_FAILURE, EXIT_NOT_READY, EXIT_USAGE, fail};

/// Arguments of `postern serve`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ServeArgs {
    #[command(subcommand)]
    command: Option<ServeCommand>,

    /// `[PORT] TARGET`: what to serve, and optionally on which tailnet port. TARGET is a
    /// local port (`3000`), `HOST:PORT`, or an origin URL (`http://127.0.0.1:8080/app`);
    /// with --tcp, a port or `HOST:PORT`. PORT defaults to TARGET's port.
    #[arg(value_name = "[PORT] TARGET", num_args = 1..=2)]
    target: Vec<String>,

    /// Serve raw TCP (a byte pipe to TARGET) instead of HTTP.
    #[arg(long)]
    tcp: bool,

    /// Serve TARGET under this path prefix only (e.g. /api): requests for /api/x go to
    /// TARGET/x. Several paths on one tailnet port share it.
    #[arg(long, value_name = "PATH", conflicts_with = "tcp")]
    set_path: Option<String>,

    /// Keep the serve after this command exits and across daemon restarts (saved in the
    /// state directory). Without it, the serve lasts while this command runs.
    #[arg(long)]
    bg: bool,

    /// Print the resulting serve status as JSON on standard output.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    global: Global,
}

#[derive(Debug, Subcommand)]
enum ServeCommand {
    /// Show what this node serves and funnels.
    ///
    /// One line per served tailnet port (and path): the port, the target, whether it is
    /// funnelled and whether it is kept across restarts (`bg`) or belongs to a running
    /// `postern serve` (`foreground`).
    Status(StatusArgs),
    /// Stop serving everything (funnels stay; see `postern funnel reset`).
    ///
    /// Foreground `postern serve` commands see their serve go and exit with status 1.
    Reset(ResetArgs),
}

/// Arguments of `postern serve status` and `postern funnel status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON on standard output: `{"serves": [{port, kind, path, origin | target,
    /// funnel, background}], "funnels": [{port, name, protocol, url, hostname, expires_at,
    /// gates, background}]}`.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) global: Global,
}

/// Arguments of `postern serve reset` and `postern funnel reset`.
#[derive(Debug, Args)]
pub(crate) struct ResetArgs {
    #[command(flatten)]
    pub(crate) global: Global,
}

/// Runs `postern serve`.
pub(crate) fn run(args: ServeArgs) -> ExitCode {
    match args.command {
        Some(ServeCommand::Status(status)) => return run_status(&status),
        Some(ServeCommand::Reset(reset)) => return run_reset(&reset.global, "/v0/serve/reset"),
        None => {}
    }
    if args.target.is_empty() {
        return fail(
            "nothing to serve: give a local port or URL (`postern serve 3000`), or use `postern serve status` / `postern serve reset`",
            EXIT_USAGE,
        );
    }
    let entry = match entry_from_args(&args.target, args.tcp, args.set_path.as_deref(), args.bg) {
        Ok(entry) => entry,
        Err(message) => return fail(&message, EXIT_USAGE),
    };
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    let request = ServeRequest { entry };
    runtime.block_on(async move {
        if request.entry.background {
            return match client
                .post_json::<_, ServeStatus>("/v0/serve", &request)
                .await
            {
                Ok(status) => {
                    report(&status, args.json);
                    eprintln!("postern: serving in the background; `postern serve reset` stops it");
                    ExitCode::SUCCESS
                }
                Err(e) => api_fail(&e),
            };
        }
        let signals = Signals::install();
        let (stream, status) =
            match open_session::<_, ServeStatus>(&client, "/v0/serve", &request).await {
                Ok(opened) => opened,
                Err(e) => return api_fail(&e),
            };
        report(&status, args.json);
        eprintln!(
            "postern: serving tailnet port {} until Ctrl-C (use --bg to keep it)",
            request.entry.port
        );
        hold(stream, signals, "serve").await
    })
}

/// Runs `postern serve status` (and `postern funnel status` with `funnels`).
pub(crate) fn run_status(args: &StatusArgs) -> ExitCode {
    run_status_of(args, false)
}

/// The status of serves, or of funnels when `funnels`.
pub(crate) fn run_status_of(args: &StatusArgs, funnels: bool) -> ExitCode {
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    let path = if funnels { "/v0/funnel" } else { "/v0/serve" };
    match runtime.block_on(client.get::<ServeStatus>(path)) {
        Ok(status) => {
            if args.json {
                print_json(&status)
            } else {
                if funnels {
                    print!("{}", render_funnels(&status));
                } else {
                    print!("{}", render(&status));
                }
                ExitCode::SUCCESS
            }
        }
        Err(e) => api_fail(&e),
    }
}

/// Posts to a reset route and prints what is left.
pub(crate) fn run_reset(global: &Global, path: &str) -> ExitCode {
    let (client, runtime) = match global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    match runtime.block_on(client.post::<ServeStatus>(path)) {
        Ok(_) => {
            eprintln!("postern: reset");
            ExitCode::SUCCESS
        }
        Err(e) => api_fail(&e),
    }
}

/// Opens a foreground session: the daemon answers 101 and one JSON line.
pub(crate) async fn open_session<B: serde::Serialize, T: DeserializeOwned>(
    client: &LocalApiClient,
    path: &str,
    body: &B,
) -> Result<(BufReader<ApiStream>, T), ApiClientError> {
    let stream = client.stream_json(path, body).await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .map_err(|e| ApiClientError::Http(e.to_string()))?;
    let answer = serde_json::from_str(&line)
        .map_err(|e| ApiClientError::Http(format!("the daemon's answer could not be read: {e}")))?;
    Ok((reader, answer))
}

/// Keeps a foreground session until Ctrl-C/SIGTERM (exit 0) or until the daemon ends it
/// (exit 1: a reset, a replacing serve, or the daemon stopped).
pub(crate) async fn hold(
    mut stream: BufReader<ApiStream>,
    mut signals: Signals,
    what: &str,
) -> ExitCode {
    let mut sink = [0u8; 256];
    let ended = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = signals.recv() => {
            eprintln!("postern: stopping the {what}");
            ExitCode::SUCCESS
        }
        () = ended => fail(
            &format!("the daemon ended this {what} (it was reset or replaced, or the node stopped)"),
            EXIT_FAILURE,
        ),
    }
}

/// SIGINT and SIGTERM, watched from before a foreground session opens (so a signal right
/// after the daemon took the serve still ends it cleanly).
pub(crate) struct Signals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts watching; call inside the tokio runtime.
    pub(crate) fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Completes on the first SIGINT or SIGTERM.
    pub(crate) async fn recv(&mut self) {
        async fn one(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = one(self.interrupt.as_mut()) => {}
            () = one(self.terminate.as_mut()) => {}
        }
    }
}

/// The exit for a failed local API call: 3 when no daemon runs, 2 for a request the daemon
/// found invalid, 1 otherwise.
pub(crate) fn api_fail(error: &ApiClientError) -> ExitCode {
    let code = match error {
        ApiClientError::NotRunning { .. } => EXIT_NOT_READY,
        ApiClientError::Api {
            status: 400 | 409, ..
        } => EXIT_USAGE,
        _ => EXIT_FAILURE,
    };
    fail(&error.to_string(), code)
}

/// Prints `value` as pretty JSON in one write. A closed standard output (`| head -1`) is
/// not an error: a foreground serve keeps running.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> ExitCode {
    use std::io::Write as _;
    match serde_json::to_string_pretty(value) {
        Ok(json) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(format!("{json}\n").as_bytes());
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), EXIT_FAILURE),
    }
}

fn report(status: &ServeStatus, json: bool) {
    if json {
        let _ = print_json(status);
    } else {
        use std::io::Write as _;
        let _ = std::io::stdout()
            .lock()
            .write_all(render(status).as_bytes());
    }
}

/// The serve entry `postern serve [--tcp] [--set-path P] [PORT] TARGET` asks for.
fn entry_from_args(
    positional: &[String],
    tcp: bool,
    set_path: Option<&str>,
    background: bool,
) -> Result<ServeEntry, String> {
    let (port, target) = match positional {
        [target] => (None, target.as_str()),
        [port, target] => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{port:?} is not a tailnet port (1-65535)"))?;
            (Some(port), target.as_str())
        }
        _ => return Err("give `[PORT] TARGET`".into()),
    };
    let (target, default_port) = if tcp {
        let addr = tcp_target(target)?;
        (EntryTarget::Tcp { target: addr }, addr.port())
    } else {
        let origin = OriginUrl::parse(target).map_err(|e| e.to_string())?;
        let default_port = origin
            .authority()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(80);
        let path = match set_path {
            Some(path) => RoutePath::parse(path).map_err(|e| e.to_string())?,
            None => RoutePath::root(),
        };
        (EntryTarget::Http { path, origin }, default_port)
    };
    Ok(ServeEntry {
        port: port.unwrap_or(default_port),
        target,
        funnel: false,
        background,
    })
}

/// `5432` → `127.0.0.1:5432`; `HOST:PORT` resolved.
fn tcp_target(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        if port == 0 {
            return Err("port 0 is not a port".into());
        }
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("{text:?} is not a TCP target: give a port (5432) or HOST:PORT"))
}

/// The serve lines of a status.
pub(crate) fn render(status: &ServeStatus) -> String {
    if status.serves.is_empty() {
        return "nothing served; `postern serve 3000` shares local port 3000 with the tailnet\n"
            .into();
    }
    let mut out = String::new();
    for entry in &status.serves {
        let path = match &entry.target {
            EntryTarget::Http { path, .. } => path.as_str(),
            EntryTarget::Tcp { .. } => "(tcp)",
        };
        out.push_str(&format!(
            "tailnet :{:<5} {:<8} -> {:<32} {}{}\n",
            entry.port,
            path,
            entry.target.describe(),
            if entry.background { "bg" } else { "foreground" },
            if entry.funnel { ", funnelled" } else { "" },
        ));
    }
    out
}

/// The funnel lines of a status.
pub(crate) fn render_funnels(status: &ServeStatus) -> String {
    if status.funnels.is_empty() {
        return "no funnels; `postern funnel 3000` asks the coord for one\n".into();
    }
    let mut out = String::new();
    for funnel in &status.funnels {
        out.push_str(&format!(
            "port {:<5} {:<40} gates: {:<20} {}\n",
            funnel.port,
            funnel.url.as_deref().unwrap_or("(waiting for the coord)"),
            if funnel.gates.is_empty() {
                "none".to_owned()
            } else {
                funnel.gates.join(",")
            },
            if funnel.background {
                "bg"
            } else {
                "foreground"
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_port_serves_http_on_the_same_tailnet_port() {
        let entry = entry_from_args(&args(&["3000"]), false, None, false).unwrap();
        assert_eq!(entry.port, 3000);
        assert_eq!(entry.target.describe(), "http://127.0.0.1:3000");
        assert_eq!(entry.target.path(), "/");
    }

    #[test]
    fn tcp_and_paths_and_explicit_ports() {
        let entry = entry_from_args(&args(&["5432", "5433"]), true, None, true).unwrap();
        assert_eq!(entry.port, 5432);
        assert_eq!(entry.target.describe(), "tcp://127.0.0.1:5433");
        assert!(entry.background);
        let entry = entry_from_args(
            &args(&["http://127.0.0.1:8080"]),
            false,
            Some("/api"),
            false,
        )
        .unwrap();
        assert_eq!(entry.port, 8080);
        assert_eq!(entry.target.path(), "/api");
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        let err = entry_from_args(&args(&["0", "3000"]), false, None, false).unwrap_err();
        assert!(err.contains("tailnet port"), "{err}");
        let err = entry_from_args(&args(&["https://x:1"]), false, None, false).unwrap_err();
        assert!(err.contains("https"), "{err}");
        let err = entry_from_args(&args(&["3000"]), false, Some("api"), false).unwrap_err();
        assert!(err.contains("route path"), "{err}");
        let err = entry_from_args(&args(&["nope"]), true, None, false).unwrap_err();
        assert!(err.contains("TCP target"), "{err}");
    }
}

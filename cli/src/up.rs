//! `postern up` (the node daemon, in the foreground) and `postern down`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use postern_node::daemon::api_client::{ApiClientError, LocalApiClient};
use postern_node::daemon::inspection::Inspection;
use postern_node::daemon::serves::{ControlFunnels, ServeManager};
use postern_node::daemon::state::{API_SOCKET_FILE, StateDir};
use postern_node::daemon::{NodeRuntime, RuntimeConfig, RuntimeError, api, http_proxy};
use postern_node::inspect::CaptureConfig;
use postern_node::serve::{ExchangeObserver, NoopObserver};
use postern_node::userspace::socks5;
use tokio_util::sync::CancellationToken;

use crate::config::Global;
use crate::{EXIT_FAILURE, EXIT_NOT_READY, EXIT_USAGE, fail};

/// Arguments of `postern up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The WireGuard UDP port; 0 picks a free port at each start (config: `port`).
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,

    /// Run a SOCKS5 proxy into the tailnet at ADDR (no authentication: bind it to
    /// loopback, e.g. 127.0.0.1:1080). Peer names resolve through the netmap
    /// (`laptop`, `laptop.TAILNET-DOMAIN`); use socks5h:// in curl (config: `socks5`).
    #[arg(long, value_name = "ADDR")]
    socks5: Option<SocketAddr>,

    /// Run an HTTP proxy into the tailnet at ADDR (CONNECT and absolute-form requests; no
    /// authentication: bind it to loopback) (config: `http_proxy`).
    #[arg(long, value_name = "ADDR")]
    http_proxy: Option<SocketAddr>,

    /// Serve the node's Prometheus metrics at http://ADDR/metrics (what `postern metrics`
    /// prints; no authentication: bind it to loopback or a private address) (config:
    /// `metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Run request inspection's web UI and JSON API at ADDR, or `off`. Default
    /// 127.0.0.1:4040; if that default is taken (another node on this machine), the node
    /// runs without it and says so. Funnelled requests are captured (config: `inspect`).
    #[arg(long, value_name = "ADDR|off")]
    inspect: Option<String>,

    /// Capture requests from tailnet peers to `postern serve` ports too (config:
    /// `inspect_serves`).
    #[arg(long)]
    inspect_serves: bool,

    /// Keep captured requests across restarts, in STATE_DIR/inspect.jsonl (mode 0600; it
    /// holds request bodies and headers, secrets included) (config: `inspect_persist`).
    #[arg(long)]
    inspect_persist: bool,

    /// Megabytes of captured requests to keep, oldest evicted first; default 100
    /// (config: `inspect_max_mb`).
    #[arg(long, value_name = "MB")]
    inspect_max_mb: Option<u64>,

    /// Kilobytes of each request or response body to capture (the rest passes through
    /// uncaptured); default 1024 (config: `inspect_max_body_kb`).
    #[arg(long, value_name = "KB")]
    inspect_max_body_kb: Option<u64>,

    /// Trust the CA certificates in FILE (PEM) for https:// relays, on top of the system's
    /// trust roots: for relays whose certificate comes from a private CA. A relay whose
    /// certificate chains to neither is refused, and the log says so (config: `relay_ca`).
    #[arg(long, value_name = "FILE")]
    relay_ca: Option<PathBuf>,

    /// Use the relay region with this id (from the coord's relay map) as home, instead of
    /// the one with the lowest measured latency; peers reach this node through it
    /// (config: `home_relay`).
    #[arg(long, value_name = "REGION_ID")]
    home_relay: Option<u16>,

    #[command(flatten)]
    global: Global,
}

/// Arguments of `postern down`.
#[derive(Debug, Args)]
pub(crate) struct DownArgs {
    #[command(flatten)]
    global: Global,
}

/// Runs `postern up`.
pub(crate) fn run_up(args: UpArgs) -> ExitCode {
    let (file, state_dir) = match args.global.resolve() {
        Ok(resolved) => resolved,
        Err((message, code)) => return fail(&message, code),
    };
    let runtime = match crate::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let config = RuntimeConfig {
        state_dir: state_dir.clone(),
        listen_port: args.port.or(file.port).unwrap_or(0),
        relay_ca: args.relay_ca.or(file.relay_ca),
        home_relay: args
            .home_relay
            .or(file.home_relay)
            .map(postern_proto::netmap::RegionId),
    };
    let socks5_addr = args.socks5.or(file.socks5);
    let http_proxy_addr = args.http_proxy.or(file.http_proxy);
    let metrics_addr = args.metrics.or(file.metrics);
    let inspect = match inspect_setting(args.inspect.as_deref().or(file.inspect.as_deref())) {
        Ok(inspect) => inspect,
        Err(message) => return fail(&message, EXIT_USAGE),
    };
    let inspect_serves = args.inspect_serves || file.inspect_serves.unwrap_or(false);
    let capture = match capture_config(
        &state_dir,
        args.inspect_persist || file.inspect_persist.unwrap_or(false),
        args.inspect_max_mb.or(file.inspect_max_mb),
        args.inspect_max_body_kb.or(file.inspect_max_body_kb),
    ) {
        Ok(capture) => capture,
        Err(message) => return fail(&message, EXIT_USAGE),
    };
    runtime.block_on(async move {
        if let Err(e) = StateDir::open(&state_dir) {
            return fail(&e.to_string(), EXIT_USAGE);
        }
        let socket = state_dir.join(API_SOCKET_FILE);
        let listener = match api::bind(&socket).await {
            Ok(listener) => listener,
            Err(e) => return fail(&e.to_string(), EXIT_FAILURE),
        };
        let started = tokio::select! {
            started = NodeRuntime::start(config) => started,
            () = wait_for_signal() => {
                let _ = std::fs::remove_file(&socket);
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let node = match started {
            Ok(node) => node,
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                let code = match e {
                    RuntimeError::NotLoggedIn { .. } => EXIT_NOT_READY,
                    RuntimeError::State(_)
                    | RuntimeError::BadCoordUrl { .. }
                    | RuntimeError::RelayTrust(_) => EXIT_USAGE,
                    _ => EXIT_FAILURE,
                };
                return fail(&e.to_string(), code);
            }
        };
        let handle = node.handle();
        let cancel = CancellationToken::new();
        let resolver = {
            let handle = handle.clone();
            Arc::new(move |name: &str| handle.resolve(name))
        };
        if let Some(addr) = socks5_addr {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let resolver: socks5::Resolver = resolver.clone();
                    tokio::spawn(socks5::serve_with_resolver(
                        listener,
                        handle.netstack().clone(),
                        Some(resolver),
                        cancel.clone(),
                    ));
                    tracing::info!(%addr, "SOCKS5 proxy into the tailnet");
                }
                Err(e) => {
                    node.shutdown().await;
                    return fail(
                        &format!("cannot listen on {addr} (socks5): {e}"),
                        EXIT_FAILURE,
                    );
                }
            }
        }
        if let Some(addr) = http_proxy_addr {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let resolver: http_proxy::Resolver = resolver.clone();
                    tokio::spawn(http_proxy::serve(
                        listener,
                        handle.netstack().clone(),
                        resolver,
                        cancel.clone(),
                    ));
                    tracing::info!(%addr, "HTTP proxy into the tailnet");
                }
                Err(e) => {
                    node.shutdown().await;
                    return fail(
                        &format!("cannot listen on {addr} (http proxy): {e}"),
                        EXIT_FAILURE,
                    );
                }
            }
        }
        let inspection = match inspect {
            InspectSetting::Off => None,
            InspectSetting::At { addr, explicit } => {
                match Inspection::start(addr, inspect_serves, capture, cancel.clone()).await {
                    Ok(inspection) => Some(inspection),
                    Err(e) if !explicit => {
                        tracing::warn!(%e, "running without request inspection");
                        None
                    }
                    Err(e) => {
                        node.shutdown().await;
                        return fail(&e.to_string(), EXIT_FAILURE);
                    }
                }
            }
        };
        let observer: Arc<dyn ExchangeObserver> = match &inspection {
            Some(inspection) => inspection.observer(),
            None => Arc::new(NoopObserver),
        };
        let serves =
            match ServeManager::start(&handle, Arc::new(ControlFunnels::new(&handle)), observer) {
                Ok(serves) => serves,
                Err(e) => {
                    node.shutdown().await;
                    return fail(&e.to_string(), EXIT_FAILURE);
                }
            };
        if let Some(inspection) = &inspection {
            inspection.attach(&serves);
        }
        let extras = api::ApiExtras {
            serves: Some(Arc::clone(&serves)),
            inspect_addr: inspection.as_ref().map(Inspection::addr),
        };
        if let Some(addr) = metrics_addr {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    tokio::spawn(api::serve_metrics(handle.clone(), extras.clone(), listener));
                    tracing::info!(%addr, "Prometheus metrics at /metrics");
                }
                Err(e) => {
                    node.shutdown().await;
                    return fail(
                        &format!("cannot listen on {addr} (metrics): {e}"),
                        EXIT_FAILURE,
                    );
                }
            }
        }
        let api_task = tokio::spawn({
            let handle = handle.clone();
            let socket = socket.clone();
            async move { api::serve_with(handle, extras, listener, &socket).await }
        });
        if let Ok(status) = handle.status().await {
            let addresses: Vec<String> = status
                .self_node
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect();
            eprintln!(
                "postern: up as {} ({}); {} peer(s); local API at {}",
                status.self_node.fqdn,
                addresses.join(", "),
                status.peers.len(),
                socket.display()
            );
        }
        tokio::select! {
            () = wait_for_signal() => tracing::info!("signal received; stopping"),
            () = handle.stopped() => {}
        }
        cancel.cancel();
        node.shutdown().await;
        let _ = api_task.await;
        ExitCode::SUCCESS
    })
}

/// The capture store's bounds and file, from the flags and the config file.
fn capture_config(
    state_dir: &std::path::Path,
    persist: bool,
    max_mb: Option<u64>,
    max_body_kb: Option<u64>,
) -> Result<CaptureConfig, String> {
    let mut config = CaptureConfig::default();
    if let Some(mb) = max_mb {
        if mb == 0 || mb > 64 * 1024 {
            return Err(format!(
                "--inspect-max-mb {mb}: give 1 to 65536 megabytes (the default is 100)"
            ));
        }
        config.max_total_bytes = usize::try_from(mb << 20).unwrap_or(usize::MAX);
    }
    if let Some(kb) = max_body_kb {
        if kb == 0 || (kb << 10) > config.max_total_bytes as u64 {
            return Err(format!(
                "--inspect-max-body-kb {kb}: give at least 1, and no more than the whole capture budget"
            ));
        }
        config.max_body_bytes = usize::try_from(kb << 10).unwrap_or(usize::MAX);
    }
    if persist {
        config.persist_path = Some(state_dir.join(INSPECT_FILE));
    }
    Ok(config)
}

/// The file persisted captures go to, in the state directory.
const INSPECT_FILE: &str = "inspect.jsonl";

/// Where request inspection runs.
enum InspectSetting {
    Off,
    At { addr: SocketAddr, explicit: bool },
}

fn inspect_setting(value: Option<&str>) -> Result<InspectSetting, String> {
    match value {
        None => Ok(InspectSetting::At {
            addr: postern_node::inspect::api::DEFAULT_ADDR,
            explicit: false,
        }),
        Some("off") => Ok(InspectSetting::Off),
        Some(text) => text
            .parse()
            .map(|addr| InspectSetting::At {
                addr,
                explicit: true,
            })
            .map_err(|_| format!("--inspect {text:?}: give an address (127.0.0.1:4040) or `off`")),
    }
}

/// Runs `postern down`.
pub(crate) fn run_down(args: &DownArgs) -> ExitCode {
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    match runtime.block_on(stop_daemon(&client, Duration::from_secs(10))) {
        Ok(()) => {
            eprintln!("postern: the node stopped");
            ExitCode::SUCCESS
        }
        Err(e @ ApiClientError::NotRunning { .. }) => fail(&e.to_string(), EXIT_NOT_READY),
        Err(e) => fail(&e.to_string(), EXIT_FAILURE),
    }
}

/// Asks the daemon behind `client` to stop and waits up to `wait` for its socket to go.
pub(crate) async fn stop_daemon(
    client: &LocalApiClient,
    wait: Duration,
) -> Result<(), ApiClientError> {
    client.post::<serde_json::Value>("/v0/shutdown").await?;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if tokio::net::UnixStream::connect(client.socket())
            .await
            .is_err()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ApiClientError::Http(format!(
        "the node did not stop within {wait:?}"
    )))
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops postern");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

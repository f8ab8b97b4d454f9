//! `postern dev`: the whole system on one machine, for a first look.
//!
//! In one process, on loopback only, with no root and nothing else installed:
//!
//! 1. a coordination server (SQLite in the dev state directory) with an embedded relay,
//!    a dev policy that lets the dev user funnel any port behind a gate, and the funnel
//!    domain `funnel.localhost`;
//! 2. an ingress with a local CA this command makes ([`ca`]) and a wildcard certificate
//!    for the funnel domain, running its own embedded node (an ingress node);
//! 3. a node (the developer's machine) with request inspection on 127.0.0.1:4040;
//! 4. a demo origin ([`origin`]) unless `--port` names the developer's own service;
//! 5. a funnel of the origin behind a GitHub webhook gate, opened through the node's
//!    control channel exactly as `postern funnel` does.
//!
//! It then prints the public URL, the inspection UI's URL and two curl commands
//! ([`webhook_demo`]): one correctly signed, which reaches the origin, and one forged, which
//! the edge refuses before anything enters the mesh. Ctrl-C stops everything. The state
//! directory keeps keys, the CA and the hostname, so a second run prints the same URL.

mod ca;
mod origin;
mod webhook_demo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use postern_coord::control::auth::{AuthKeyOptions, create_auth_key};
use postern_coord::control::{ControlConfig, Coord};
use postern_coord::policy::PolicySource;
use postern_ingress::audit::{AuditSink, JsonLinesSink};
use postern_ingress::config::IngressConfig;
use postern_ingress::server::{Mesh, run_with_mesh};
use postern_node::daemon::inspection::Inspection;
use postern_node::daemon::serves::{
    ControlFunnels, FunnelCallError, FunnelRequestBody, ServeChangeError, ServeManager,
};
use postern_node::daemon::state::StateDir;
use postern_node::daemon::{LoginRequest, NodeRuntime, RuntimeConfig, login};
use postern_node::inspect::store::CaptureConfig;
use postern_proto::UnixTime;
use postern_proto::funnel::{FunnelProtocol, FunnelSpec, GateMode, GateSecret, GateSpec};
use tokio_util::sync::CancellationToken;

use crate::{EXIT_FAILURE, EXIT_USAGE, fail};

/// The DNS domain of dev funnels. Names under `.localhost` resolve to loopback in curl and
/// in browsers, and the printed commands also pass `--resolve`, so no DNS is needed.
const FUNNEL_DOMAIN: &str = "funnel.localhost";
/// The dev user: the owner of the dev node.
const DEV_USER: &str = "dev@postern.localhost";
/// The tailnet domain of the dev tailnet.
const TAILNET_DOMAIN: &str = "dev.postern.internal";

/// Run a coordination server, a relay, an ingress, a node and a demo origin in one process.
///
/// Starts, on loopback only: an embedded coordination server (SQLite in the state
/// directory) with a relay, an ingress with a local CA it creates (the CA's path is
/// printed; give it to curl with --cacert), a node with request inspection, and a small
/// demo origin. It funnels the origin behind a GitHub-style webhook gate and prints the
/// public URL, the inspection UI's URL and two curl commands: the first carries a valid
/// signature and reaches the origin; the second is forged and the edge refuses it (401)
/// before anything reaches this machine's service. Ctrl-C stops everything.
///
/// The webhook secret is read from POSTERN_DEV_WEBHOOK_SECRET, or is a fixed demo value.
/// The state directory keeps keys, the CA and the funnel's hostname across runs.
///
/// Examples:
///   postern dev
///   postern dev --port 3000          # funnel your own service on 127.0.0.1:3000
///   postern dev --https-port 9443 --inspect off
#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Funnel this local port (your service on 127.0.0.1:PORT) instead of the demo origin.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,

    /// The ingress's HTTPS port on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 8443)]
    https_port: u16,

    /// Where the inspection UI listens, or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:4040")]
    inspect: String,

    /// The funnel's name: the public hostname is NAME.funnel.localhost.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    name: String,

    /// Where the dev tailnet keeps its state (default: $XDG_STATE_HOME/postern/dev, or
    /// ~/.local/state/postern/dev).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// Runs `postern dev` until Ctrl-C.
pub(crate) fn run(args: &DevArgs) -> ExitCode {
    let state = match args.state_dir.clone().or_else(default_state_dir) {
        Some(dir) => dir,
        None => {
            return fail(
                "cannot find a state directory: pass --state-dir",
                EXIT_USAGE,
            );
        }
    };
    let inspect: Option<SocketAddr> = match args.inspect.as_str() {
        "off" => None,
        text => match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                return fail(
                    &format!("--inspect {text:?}: give an address (127.0.0.1:4040) or `off`"),
                    EXIT_USAGE,
                );
            }
        },
    };
    let runtime = match crate::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        match run_dev(args, &state, inspect).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail(&message, EXIT_FAILURE),
        }
    })
}

async fn run_dev(args: &DevArgs, state: &Path, inspect: Option<SocketAddr>) -> Result<(), String> {
    make_private_dir(state)?;
    let stop = CancellationToken::new();
    let secret = std::env::var(webhook_demo::SECRET_ENV)
        .unwrap_or_else(|_| webhook_demo::DEMO_SECRET.to_owned());

    // The CA and the edge certificate.
    let ca_dir = state.join("ca");
    make_private_dir(&ca_dir)?;
    let ca = ca::load_or_create(&ca_dir, FUNNEL_DOMAIN)?;

    // The coordination server, with an embedded relay.
    let coord_dir = state.join("coord");
    let policy_path = state.join("policy.hujson");
    std::fs::write(&policy_path, dev_policy())
        .map_err(|e| format!("{}: {e}", policy_path.display()))?;
    let listener = bind_saved(state, "coord-port", "the coord").await?;
    let coord_addr = listener
        .local_addr()
        .map_err(|e| format!("coord listener: {e}"))?;
    let coord_url = format!("http://{coord_addr}");
    let mut config = ControlConfig::new(&coord_dir, TAILNET_DOMAIN);
    config.policy = PolicySource::File(policy_path);
    config.funnel_domain = Some(FUNNEL_DOMAIN.to_owned());
    config.relay_map = postern_coord::relay::single_relay_map(format!("{coord_url}/relay"), None);
    let coord = Coord::open(config)
        .await
        .map_err(|e| format!("cannot start the coord: {e}"))?;
    let authorizer = postern_coord::relay::RegistryAuthorizer::new(coord.registry.store().clone());
    let relay = postern_relay::RelayServer::new(Default::default(), Arc::new(authorizer));
    let coord_server = postern_coord::server::serve_with(coord.clone(), listener, relay.router())
        .map_err(|e| format!("cannot serve the coord: {e}"))?;

    // The developer's node and the ingress's node log in with auth keys on their first
    // run; later runs find their logins in the state directory.
    let node_dir = state.join("node");
    let ingress_dir = state.join("ingress");
    make_private_dir(&ingress_dir)?;
    ensure_logged_in(&coord, &coord_url, &node_dir, "laptop", false).await?;
    ensure_logged_in(
        &coord,
        &coord_url,
        &ingress_dir.join("node"),
        "ingress",
        true,
    )
    .await?;

    // The ingress and its embedded node.
    let ingress_config = ingress_config(&ingress_dir, args.https_port, &ca, &coord_url)?;
    let ingress_node = postern_ingress::embedded::start_node(
        ingress_config
            .node
            .as_ref()
            .ok_or("the dev ingress has no [node] section")?,
        &ingress_config.state_dir,
        &|_| None,
    )
    .await
    .map_err(|e| format!("the ingress's node: {e}"))?;
    let audit_path = ingress_dir.join("audit.jsonl");
    let audit: Arc<dyn AuditSink> = Arc::new(
        JsonLinesSink::append_to(&audit_path)
            .map_err(|e| format!("cannot open {}: {e}", audit_path.display()))?,
    );
    let mesh = Mesh {
        node: ingress_node.handle(),
        oidc: None,
    };
    let ingress_task = tokio::spawn({
        let config = ingress_config.clone();
        async move { run_with_mesh(&config, Vec::new(), audit, Some(mesh)).await }
    });

    // The developer's node, its inspection UI and serve manager.
    let node = NodeRuntime::start(RuntimeConfig {
        state_dir: node_dir.clone(),
        listen_port: 0,
        relay_ca: None,
        home_relay: None,
    })
    .await
    .map_err(|e| format!("the dev node: {e}"))?;
    let handle = node.handle();
    let inspection = match inspect {
        Some(addr) => Some(
            Inspection::start(addr, false, CaptureConfig::default(), stop.clone())
                .await
                .map_err(|e| format!("{e} (or pass --inspect off)"))?,
        ),
        None => None,
    };
    let observer = match &inspection {
        Some(inspection) => inspection.observer(),
        None => Arc::new(postern_node::serve::NoopObserver),
    };
    let serves = ServeManager::start(&handle, Arc::new(ControlFunnels::new(&handle)), observer)
        .map_err(|e| format!("the dev node's serve manager: {e}"))?;
    if let Some(inspection) = &inspection {
        inspection.attach(&serves);
    }
    // The dev node's local API, so `postern funnel log`, `postern inspect` and the other
    // node commands work with `--state-dir STATE/node`.
    let socket = node_dir.join(postern_node::daemon::state::API_SOCKET_FILE);
    let api_listener = postern_node::daemon::api::bind(&socket)
        .await
        .map_err(|e| format!("the dev node's local API: {e}"))?;
    let api_task = tokio::spawn({
        let extras = postern_node::daemon::api::ApiExtras {
            serves: Some(Arc::clone(&serves)),
            inspect_addr: inspection.as_ref().map(Inspection::addr),
        };
        let handle = handle.clone();
        let socket = socket.clone();
        async move {
            postern_node::daemon::api::serve_with(handle, extras, api_listener, &socket).await;
        }
    });

    // The origin and its funnel.
    let (origin_port, demo) = match args.port {
        Some(port) => (port, None),
        None => {
            let listener = bind_saved(state, "origin-port", "the demo origin").await?;
            let demo = origin::start(listener, stop.clone())?;
            (demo.addr.port(), Some(demo))
        }
    };
    let spec = FunnelSpec {
        port: origin_port,
        name: Some(args.name.clone()),
        protocol: FunnelProtocol::Http,
        ttl_secs: None,
        gates: vec![GateSpec::Webhook {
            provider: "github".into(),
            secrets: vec![GateSecret::new(secret.clone())],
            tolerance_secs: None,
        }],
        gate_mode: GateMode::All,
        rate_limit: None,
    };
    let funnel = open_funnel_when_ready(&serves, spec).await?;
    let url = funnel
        .url
        .clone()
        .ok_or("the coord did not give the funnel a URL")?;
    let hostname = funnel.hostname.clone().unwrap_or_default();
    wait_for_route(&ingress_node.handle(), &hostname).await?;
    let public = format!("https://{hostname}:{}/", args.https_port);
    let resolve = format!("{hostname}:{}:127.0.0.1", args.https_port);
    let (signed, forged) = webhook_demo::curl_commands(
        &format!("{public}webhook"),
        &resolve,
        &ca.ca_cert.display().to_string(),
        secret.as_bytes(),
    );

    println!(
        "postern dev is running (Ctrl-C stops it). State: {}",
        state.display()
    );
    println!();
    println!("Public URL:     {public}   (coord's URL for it: {url})");
    match &demo {
        Some(demo) => println!("Origin:         the demo origin on {}", demo.addr),
        None => println!("Origin:         your service on 127.0.0.1:{origin_port}"),
    }
    match &inspection {
        Some(inspection) => println!("Inspect:        http://{}/", inspection.addr()),
        None => println!("Inspect:        off"),
    }
    println!("Local CA:       {}", ca.ca_cert.display());
    println!("Coordination:   {coord_url}");
    println!("Edge audit log: {}", audit_path.display());
    println!(
        "Edge decisions: postern funnel log {} --state-dir {}",
        args.name,
        node_dir.display()
    );
    println!();
    println!("A delivery signed with the webhook secret reaches the origin:");
    println!("{signed}");
    println!();
    println!("A forged one is refused at the edge and never reaches this machine's service:");
    println!("{forged}");
    println!();

    tokio::select! {
        () = crate::up::wait_for_signal() => {}
        result = ingress_task => {
            // The ingress stops by itself on Ctrl-C too; anything else is a failure.
            let reason = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("the ingress stopped: {e}")),
                Err(e) => Some(format!("the ingress failed: {e}")),
            };
            if let Some(reason) = reason {
                stop.cancel();
                node.shutdown().await;
                return Err(reason);
            }
        }
    }
    eprintln!("postern dev: stopping");
    stop.cancel();
    node.shutdown().await;
    let _ = api_task.await;
    ingress_node.shutdown().await;
    relay.shutdown();
    coord_server.shutdown().await;
    coord.shutdown().await;
    Ok(())
}

/// The dev tailnet's policy: everyone reaches everyone, and the dev user may funnel any
/// port as long as the funnel has a gate.
fn dev_policy() -> String {
    format!(
        r#"// Written by `postern dev` at each start; edits are overwritten.
{{
  "acls": [{{"action": "accept", "src": ["*"], "dst": ["*:*"]}}],
  "nodeAttrs": [{{"target": ["{DEV_USER}"], "attr": ["funnel"]}}],
  "funnels": [{{"src": ["{DEV_USER}"], "ports": ["*"]}}],
}}
"#
    )
}

/// Logs the node whose state is in `dir` in with a fresh auth key, unless it already is.
async fn ensure_logged_in(
    coord: &Coord,
    coord_url: &str,
    dir: &Path,
    hostname: &str,
    ingress: bool,
) -> Result<(), String> {
    let state = StateDir::open(dir).map_err(|e| e.to_string())?;
    if state.login().map_err(|e| e.to_string())?.is_some() {
        return Ok(());
    }
    let store = coord.registry.store();
    let now = unix_now();
    let user = if ingress {
        None
    } else {
        let record = match store.user_by_login(DEV_USER).await {
            Ok(Some(record)) => record,
            _ => store
                .upsert_user(DEV_USER, "Postern Dev", &[], now)
                .await
                .map_err(|e| format!("cannot create the dev user: {e}"))?,
        };
        Some(record.id)
    };
    let options = AuthKeyOptions {
        reusable: false,
        ephemeral: false,
        tags: Vec::new(),
        expiry: Some(Duration::from_secs(600)),
        user,
        ingress,
    };
    let key = create_auth_key(store, &options, now)
        .await
        .map_err(|e| format!("cannot make an auth key: {e}"))?;
    let request = LoginRequest {
        coord_url: coord_url.to_owned(),
        auth_key: Some(key.secret),
        hostname: hostname.to_owned(),
        device: false,
    };
    login(&state, request, |_| {})
        .await
        .map_err(|e| format!("logging {hostname} in: {e}"))?;
    Ok(())
}

/// The ingress's configuration: HTTPS on 127.0.0.1, the dev CA's wildcard as the static
/// certificate, no ACME, and the embedded node.
fn ingress_config(
    dir: &Path,
    https_port: u16,
    ca: &ca::DevCa,
    coord_url: &str,
) -> Result<IngressConfig, String> {
    let text = format!(
        r#"state_dir = {state:?}
audit_log = {audit:?}

[listen]
https = "127.0.0.1:{https_port}"

[static_cert]
cert = {cert:?}
key = {key:?}

[node]
coord_url = {coord_url:?}
hostname = "ingress"
"#,
        state = dir.display().to_string(),
        audit = dir.join("audit.jsonl").display().to_string(),
        cert = ca.edge_cert.display().to_string(),
        key = ca.edge_key.display().to_string(),
    );
    IngressConfig::parse(&text).map_err(|e| format!("the dev ingress's configuration: {e}"))
}

/// Opens the funnel, retrying for a while: the node may still be connecting its control
/// channel when this is first called.
async fn open_funnel_when_ready(
    serves: &ServeManager,
    spec: FunnelSpec,
) -> Result<postern_node::daemon::serves::FunnelStatus, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let request = FunnelRequestBody {
            spec: spec.clone(),
            background: false,
        };
        match serves.open_funnel(request, None).await {
            Ok(status) => return Ok(status),
            Err(ServeChangeError::Funnel(FunnelCallError::Unavailable(why)))
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(%why, "the coord cannot be asked yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(format!("cannot open the dev funnel: {e}")),
        }
    }
}

/// Waits until the ingress's netmap holds the funnel's route, so the printed commands work
/// at once.
async fn wait_for_route(
    ingress: &postern_node::daemon::NodeHandle,
    hostname: &str,
) -> Result<(), String> {
    let mut netmaps = ingress.netmap();
    let wait = async {
        loop {
            let ready = netmaps
                .borrow_and_update()
                .as_ref()
                .is_some_and(|map| map.funnel_routes.iter().any(|r| r.hostname == hostname));
            if ready {
                return true;
            }
            if netmaps.changed().await.is_err() {
                return false;
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(true) => Ok(()),
        _ => Err(format!(
            "the ingress did not learn the route for {hostname} within 30 s"
        )),
    }
}

/// A loopback listener on the port of the first run, kept in the state directory in
/// `file`: the nodes' stored logins name the coord's port, and the funnel's hostname
/// belongs to the origin's port.
async fn bind_saved(
    state: &Path,
    file: &str,
    what: &str,
) -> Result<tokio::net::TcpListener, String> {
    let saved = state.join(file);
    let port: u16 = std::fs::read_to_string(&saved)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| {
            format!(
                "cannot listen on 127.0.0.1:{port} for {what}: {e} (is another `postern dev` \
                 running with this state directory?)"
            )
        })?;
    if port == 0 {
        let chosen = listener
            .local_addr()
            .map_err(|e| format!("coord listener: {e}"))?
            .port();
        std::fs::write(&saved, format!("{chosen}\n"))
            .map_err(|e| format!("{}: {e}", saved.display()))?;
    }
    Ok(listener)
}

fn default_state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("postern").join("dev"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".local/state/postern/dev"))
}

fn make_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn unix_now() -> UnixTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UnixTime(i64::try_from(secs).unwrap_or(i64::MAX))
}

//! The coord scale benchmark (issue 5 item 9): thousands of light simulated nodes speaking
//! the real control protocol (HTTP upgrade, Noise IK, framed messages) to one
//! `postern-coord serve` process on SQLite; then one node joins; then one policy edit.
//!
//! Run it with `bench/coord-scale/run.sh` (it raises the open-file limit and builds in
//! release mode). It prints what it measured, and the same as JSON with `--json FILE`.
//!
//! The tailnet: `nodes` member devices, `devices-per-user` per user (the policy's
//! `autogroup:self` rule lets a user's devices see each other), `shared` servers tagged
//! `tag:shared` that every member may reach on 443, and `monitors` nodes tagged
//! `tag:monitor` that nobody sees at first. The joiner is one more `tag:shared` server, so
//! every member must learn it. The policy edit lets `tag:monitor` reach every member on
//! 9100, so every member's netmap gains the monitors and a new packet filter.
//!
//! Phases and what is timed:
//! 1. registration: every node registers with an auth key over its own connection (setup;
//!    its rate is reported but it is not one of the targets);
//! 2. initial sync: every node redials and opens its map stream (like a coord restart);
//!    timed until every node holds its full netmap, and until the coord falls quiet (the
//!    online flips of the others have reached everyone);
//! 3. join: the joiner registers and streams; timed until every member's netmap has it;
//! 4. policy edit: the file is rewritten and the coord sent SIGHUP; timed until every
//!    member's netmap has the monitors.
//!
//! Coord CPU seconds and RSS come from `/proc/PID/stat` and `/proc/PID/status`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use postern_coord::control::{AuthKeyOptions, create_auth_key};
use postern_coord::store::Store;
use postern_node::control::{ControlConnection, ControlSession, SessionConfig, dial};
use postern_proto::control::{AuthKeySecret, ControlMessage, MapResponse, RegisterResponse};
use postern_proto::netmap::Peer;
use postern_proto::{
    DiscoPrivateKey, MachinePrivateKey, MachinePublicKey, NodePrivateKey, UnixTime, UserId,
};
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(about = "Scale benchmark of postern-coord: many simulated nodes, a join, a policy edit")]
struct Args {
    /// The postern-coord binary.
    #[arg(long)]
    coord_bin: PathBuf,
    /// Member devices.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Devices per user.
    #[arg(long, default_value_t = 4)]
    devices_per_user: usize,
    /// `tag:shared` servers every member may reach.
    #[arg(long, default_value_t = 10)]
    shared: usize,
    /// `tag:monitor` nodes the policy edit reveals.
    #[arg(long, default_value_t = 5)]
    monitors: usize,
    /// Connections being dialled at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Where to keep the coord's state (a fresh temporary directory if absent).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Register every node through the control protocol (slow: see docs/benchmarks.md)
    /// instead of writing the registry rows directly before the coord starts.
    #[arg(long)]
    register: bool,
    /// Give up on a phase after this long.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    phase_timeout: Duration,
}

const DOMAIN: &str = "scale.test";

fn policy(with_monitor_rule: bool) -> String {
    let monitor = if with_monitor_rule {
        r#"    {"action": "accept", "src": ["tag:monitor"], "proto": "tcp", "dst": ["autogroup:member:9100"]},
"#
    } else {
        ""
    };
    format!(
        r#"{{
  "tagOwners": {{"tag:shared": ["autogroup:admin"], "tag:monitor": ["autogroup:admin"]}},
  "acls": [
    {{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}},
    {{"action": "accept", "src": ["autogroup:member"], "proto": "tcp", "dst": ["tag:shared:443"]}},
{monitor}  ],
}}
"#
    )
}

/// What kind of simulated node this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Member,
    Shared,
    Monitor,
}

struct SimNode {
    role: Role,
    hostname: String,
    machine: MachinePrivateKey,
    session: SessionConfig,
}

/// Shared counters every client task updates.
#[derive(Default)]
struct Progress {
    full_netmaps: AtomicU64,
    frames: AtomicU64,
    frame_bytes_hint: AtomicU64,
    last_frame_us: AtomicU64,
    members_with_joiner: AtomicU64,
    last_join_seen_us: AtomicU64,
    members_with_monitors: AtomicU64,
    last_edit_seen_us: AtomicU64,
    errors: AtomicU64,
    edit_started: AtomicBool,
}

struct Clock(Instant);

impl Clock {
    fn us(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    nodes_total: usize,
    members: usize,
    registration_secs: f64,
    initial_full_netmaps_secs: f64,
    initial_quiet_secs: f64,
    initial_frames: u64,
    join_visible_to_all_members_secs: f64,
    join_members: u64,
    policy_edit_reached_all_members_secs: f64,
    edit_members: u64,
    coord_cpu_secs_registration: f64,
    coord_cpu_secs_initial_sync: f64,
    coord_cpu_secs_join: f64,
    coord_cpu_secs_policy_edit: f64,
    coord_peak_rss_mib: f64,
    coord_rss_after_mib: f64,
    harness_cpu_secs: f64,
    client_errors: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let temp;
    let work = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let state_dir = work.join("state");
    let policy_path = work.join("policy.hujson");
    std::fs::write(&policy_path, policy(false))?;
    std::fs::create_dir_all(&state_dir)?;

    println!(
        "setup: {} members ({} per user), {} shared, {} monitors",
        args.nodes, args.devices_per_user, args.shared, args.monitors
    );
    let (nodes, joiner) = prepare(&args, &state_dir).await?;
    if !args.register {
        let started = Instant::now();
        preseed(&state_dir, &nodes).await?;
        println!(
            "registry rows written directly in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let members = nodes.iter().filter(|n| n.role == Role::Member).count();

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut coord = CoordChild::start(&args.coord_bin, &state_dir, &policy_path, &addr)?;
    let coord_key = wait_for_coord(&addr).await?;
    let pid = coord.pid();
    let mut report = Report {
        nodes_total: nodes.len(),
        members,
        ..Report::default()
    };

    // 1. Registration.
    let cpu0 = proc_cpu_secs(pid)?;
    let nodes = Arc::new(nodes);
    if args.register {
        let started = Instant::now();
        register_all(&addr, &coord_key, &nodes, args.concurrency).await?;
        report.registration_secs = started.elapsed().as_secs_f64();
        println!(
            "registration: {} nodes in {:.1} s",
            nodes.len(),
            report.registration_secs
        );
    }
    let cpu1 = proc_cpu_secs(pid)?;
    report.coord_cpu_secs_registration = cpu1 - cpu0;

    // 2. Initial sync.
    let clock = Arc::new(Clock(Instant::now()));
    let progress = Arc::new(Progress::default());
    let dials = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(nodes.len() + 1);
    for index in 0..nodes.len() {
        tasks.push(tokio::spawn(run_client(
            addr.clone(),
            coord_key,
            nodes.clone(),
            index,
            false,
            dials.clone(),
            progress.clone(),
            clock.clone(),
        )));
    }
    let total = nodes.len() as u64;
    wait_until(args.phase_timeout, "every full netmap", || {
        progress.full_netmaps.load(Ordering::Relaxed) >= total
    })
    .await?;
    report.initial_full_netmaps_secs = clock.0.elapsed().as_secs_f64();
    println!(
        "initial sync: every node has its full netmap after {:.2} s",
        report.initial_full_netmaps_secs
    );
    wait_quiet(
        &progress,
        &clock,
        Duration::from_secs(3),
        args.phase_timeout,
    )
    .await?;
    report.initial_quiet_secs = progress.last_frame_us.load(Ordering::Relaxed) as f64 / 1e6;
    report.initial_frames = progress.frames.load(Ordering::Relaxed);
    let cpu2 = proc_cpu_secs(pid)?;
    report.coord_cpu_secs_initial_sync = cpu2 - cpu1;
    println!(
        "initial sync: last frame (online flips settled) at {:.2} s, {} frames, coord CPU {:.1} s",
        report.initial_quiet_secs, report.initial_frames, report.coord_cpu_secs_initial_sync
    );

    // 3. Join.
    let joiner = Arc::new(vec![joiner]);
    let join_start = clock.us();
    tasks.push(tokio::spawn(run_client(
        addr.clone(),
        coord_key,
        joiner,
        0,
        true,
        dials.clone(),
        progress.clone(),
        clock.clone(),
    )));
    let want = members as u64;
    wait_until(args.phase_timeout, "every member to see the joiner", || {
        progress.members_with_joiner.load(Ordering::Relaxed) >= want
    })
    .await?;
    report.join_members = progress.members_with_joiner.load(Ordering::Relaxed);
    report.join_visible_to_all_members_secs =
        (progress.last_join_seen_us.load(Ordering::Relaxed) - join_start) as f64 / 1e6;
    wait_quiet(
        &progress,
        &clock,
        Duration::from_secs(2),
        args.phase_timeout,
    )
    .await?;
    let cpu3 = proc_cpu_secs(pid)?;
    report.coord_cpu_secs_join = cpu3 - cpu2;
    println!(
        "join: visible to all {} members after {:.3} s, coord CPU {:.2} s",
        report.join_members, report.join_visible_to_all_members_secs, report.coord_cpu_secs_join
    );

    // 4. Policy edit.
    std::fs::write(&policy_path, policy(true))?;
    progress.edit_started.store(true, Ordering::SeqCst);
    let edit_start = clock.us();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -HUP {pid} failed");
    }
    wait_until(
        args.phase_timeout,
        "every member to see the monitors",
        || progress.members_with_monitors.load(Ordering::Relaxed) >= want,
    )
    .await?;
    report.edit_members = progress.members_with_monitors.load(Ordering::Relaxed);
    report.policy_edit_reached_all_members_secs =
        (progress.last_edit_seen_us.load(Ordering::Relaxed) - edit_start) as f64 / 1e6;
    wait_quiet(
        &progress,
        &clock,
        Duration::from_secs(2),
        args.phase_timeout,
    )
    .await?;
    let cpu4 = proc_cpu_secs(pid)?;
    report.coord_cpu_secs_policy_edit = cpu4 - cpu3;
    println!(
        "policy edit: reached all {} members after {:.3} s, coord CPU {:.2} s",
        report.edit_members,
        report.policy_edit_reached_all_members_secs,
        report.coord_cpu_secs_policy_edit
    );

    let (peak, now) = proc_rss_mib(pid)?;
    report.coord_peak_rss_mib = peak;
    report.coord_rss_after_mib = now;
    report.harness_cpu_secs = proc_cpu_secs(std::process::id())?;
    report.client_errors = progress.errors.load(Ordering::Relaxed);
    println!(
        "coord: peak RSS {:.0} MiB (now {:.0} MiB); harness CPU {:.1} s; client errors {}",
        peak, now, report.harness_cpu_secs, report.client_errors
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    for task in tasks {
        task.abort();
    }
    coord.stop();
    Ok(())
}

/// Makes the users and auth keys in the store, and the simulated nodes' keys.
async fn prepare(args: &Args, state_dir: &Path) -> Result<(Vec<SimNode>, SimNode)> {
    let store = Store::open_sqlite(state_dir).await?;
    let now = UnixTime::from_system_time(std::time::SystemTime::now());
    let mut nodes = Vec::new();
    let users = args.nodes.div_ceil(args.devices_per_user.max(1));
    for u in 0..users {
        let user = store
            .upsert_user(&format!("user{u}@example.com"), "", &[], now)
            .await?;
        let key = make_key(&store, Some(user.id), &[], now).await?;
        for d in 0..args.devices_per_user {
            if nodes.len() >= args.nodes {
                break;
            }
            nodes.push(sim_node(
                Role::Member,
                format!("m{u}-{d}"),
                Some(key.clone()),
            ));
        }
    }
    let shared_key = make_key(&store, None, &["tag:shared"], now).await?;
    for i in 0..args.shared {
        nodes.push(sim_node(
            Role::Shared,
            format!("shared-{i}"),
            Some(shared_key.clone()),
        ));
    }
    let monitor_key = make_key(&store, None, &["tag:monitor"], now).await?;
    for i in 0..args.monitors {
        nodes.push(sim_node(
            Role::Monitor,
            format!("monitor-{i}"),
            Some(monitor_key.clone()),
        ));
    }
    let joiner = sim_node(Role::Shared, "joiner".into(), Some(shared_key));
    store.close().await;
    Ok((nodes, joiner))
}

/// Writes the nodes' registry rows straight into the store (what registering them would
/// leave behind: sequential addresses, names from the hostnames), before the coord starts.
async fn preseed(state_dir: &Path, nodes: &[SimNode]) -> Result<()> {
    let store = Store::open_sqlite(state_dir).await?;
    let registry = postern_coord::registry::Registry::open(store.clone(), DOMAIN).await?;
    let ula = registry.ula_prefix();
    let now = UnixTime::from_system_time(std::time::SystemTime::now());
    let tagged = store.upsert_user("tagged-devices", "", &[], now).await?;
    let mut users = std::collections::HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let n = u32::try_from(i)?;
        // 100.64.1.1 upwards, skipping .0 and .255.
        let host = 0x0100 + (n / 254) * 256 + (n % 254) + 1;
        let ipv4 =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + host);
        let mut v6 = ula.network().octets();
        v6[12..].copy_from_slice(&ipv4.octets());
        let (user_id, tags, key_expiry) = match node.role {
            Role::Member => {
                let login = format!(
                    "user{}@example.com",
                    node.hostname
                        .trim_start_matches('m')
                        .split('-')
                        .next()
                        .unwrap_or("0")
                );
                let id = match users.get(&login) {
                    Some(id) => *id,
                    None => {
                        let user = store.upsert_user(&login, "", &[], now).await?;
                        users.insert(login, user.id);
                        user.id
                    }
                };
                (id, Vec::new(), Some(UnixTime(now.0 + 180 * 86_400)))
            }
            Role::Shared => (tagged.id, vec!["tag:shared".to_owned()], None),
            Role::Monitor => (tagged.id, vec!["tag:monitor".to_owned()], None),
        };
        store
            .insert_node(&postern_coord::store::NewNode {
                machine_key: node.machine.public_key(),
                node_key: node.session.node_key,
                name: node.hostname.clone(),
                ipv4,
                ipv6: std::net::Ipv6Addr::from(v6),
                user_id,
                tags,
                created_at: now,
                key_expiry,
                ephemeral: false,
                approved: true,
                is_ingress: false,
            })
            .await?;
    }
    store.close().await;
    Ok(())
}

async fn make_key(
    store: &Store,
    user: Option<UserId>,
    tags: &[&str],
    now: UnixTime,
) -> Result<AuthKeySecret> {
    let options = AuthKeyOptions {
        reusable: true,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        user,
        ..AuthKeyOptions::default()
    };
    Ok(create_auth_key(store, &options, now).await?.secret)
}

fn sim_node(role: Role, hostname: String, auth_key: Option<AuthKeySecret>) -> SimNode {
    let rng = &mut rand::rngs::OsRng;
    SimNode {
        role,
        machine: MachinePrivateKey::generate(rng),
        session: SessionConfig {
            node_key: NodePrivateKey::generate(rng).public_key(),
            disco_key: DiscoPrivateKey::generate(rng).public_key(),
            hostname: hostname.clone(),
            auth_key,
            requested_tags: Vec::new(),
            ephemeral: false,
            endpoints: vec![std::net::SocketAddr::from(([192, 0, 2, 1], 41641))],
            home_relay: None,
        },
        hostname,
    }
}

/// Registers every node over its own connection, `concurrency` at a time.
async fn register_all(
    addr: &str,
    coord_key: &MachinePublicKey,
    nodes: &Arc<Vec<SimNode>>,
    concurrency: usize,
) -> Result<()> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(nodes.len());
    for index in 0..nodes.len() {
        let permit = permits.clone().acquire_owned().await?;
        let (addr, key, nodes) = (addr.to_owned(), *coord_key, nodes.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let node = &nodes[index];
            let mut conn = dial(&addr, &node.machine, &key).await?;
            let mut session = ControlSession::new(node.session.clone());
            for message in session.on_connected() {
                conn.send(&message).await?;
            }
            match conn.recv().await? {
                Some(ControlMessage::RegisterResponse(RegisterResponse::Authorized { .. })) => {
                    Ok(())
                }
                other => bail!("{}: registration answered {other:?}", node.hostname),
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// One simulated node's stream: dial, map request (registering first if `register`), then
/// fold every frame into its netmap and record when the join and the edit reach it.
#[allow(clippy::too_many_arguments)]
async fn run_client(
    addr: String,
    coord_key: MachinePublicKey,
    nodes: Arc<Vec<SimNode>>,
    index: usize,
    register: bool,
    dials: Arc<Semaphore>,
    progress: Arc<Progress>,
    clock: Arc<Clock>,
) {
    let node = &nodes[index];
    let result = async {
        let permit = dials.acquire().await?;
        let mut conn = dial(&addr, &node.machine, &coord_key).await?;
        drop(permit);
        let mut session = ControlSession::new(node.session.clone());
        let mut first = if register {
            session.on_connected()
        } else {
            // Registered in phase 1: a map request straight away.
            session.handle_message(ControlMessage::RegisterResponse(
                RegisterResponse::Authorized {
                    node_id: postern_proto::NodeId(0),
                    name: String::new(),
                    addresses: postern_proto::netmap::NodeAddresses {
                        ipv4: std::net::Ipv4Addr::UNSPECIFIED,
                        ipv6: std::net::Ipv6Addr::UNSPECIFIED,
                    },
                    user: postern_proto::netmap::UserProfile {
                        id: UserId(0),
                        login: String::new(),
                        display_name: String::new(),
                        groups: Vec::new(),
                    },
                    key_expiry: None,
                },
            ))?
        };
        for message in first.drain(..) {
            conn.send(&message).await?;
        }
        follow(&mut conn, &mut session, node.role, &progress, &clock).await
    }
    .await;
    if let Err(err) = result {
        progress.errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("{}: {err:#}", node.hostname);
    }
}

async fn follow<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut ControlConnection<S>,
    session: &mut ControlSession,
    role: Role,
    progress: &Progress,
    clock: &Clock,
) -> Result<()> {
    let mut saw_joiner = false;
    let mut saw_monitors = false;
    let joiner_prefix = "joiner.";
    let monitor_prefix = "monitor-";
    loop {
        let Some(message) = conn.recv().await? else {
            bail!("the coord closed the stream");
        };
        let now = clock.us();
        progress.frames.fetch_add(1, Ordering::Relaxed);
        progress.last_frame_us.fetch_max(now, Ordering::Relaxed);
        let (full, added): (bool, Option<&[Peer]>) = match &message {
            ControlMessage::MapResponse(MapResponse::Full { netmap }) => {
                (true, Some(netmap.peers.as_slice()))
            }
            ControlMessage::MapResponse(MapResponse::Delta { delta }) => {
                (false, Some(delta.peers_added.as_slice()))
            }
            _ => (false, None),
        };
        if let Some(added) = added
            && role == Role::Member
        {
            if !saw_joiner && added.iter().any(|p| p.name.starts_with(joiner_prefix)) {
                saw_joiner = true;
                progress.members_with_joiner.fetch_add(1, Ordering::Relaxed);
                progress.last_join_seen_us.fetch_max(now, Ordering::Relaxed);
            }
            if !saw_monitors
                && progress.edit_started.load(Ordering::Relaxed)
                && added.iter().any(|p| p.name.starts_with(monitor_prefix))
            {
                saw_monitors = true;
                progress
                    .members_with_monitors
                    .fetch_add(1, Ordering::Relaxed);
                progress.last_edit_seen_us.fetch_max(now, Ordering::Relaxed);
            }
        }
        let _ = progress.frame_bytes_hint.load(Ordering::Relaxed);
        let replies = session.handle_message(message)?;
        if full {
            progress.full_netmaps.fetch_add(1, Ordering::Relaxed);
        }
        for reply in replies {
            conn.send(&reply).await?;
        }
    }
}

struct CoordChild(Child);

impl CoordChild {
    fn start(bin: &Path, state_dir: &Path, policy: &Path, addr: &str) -> Result<Self> {
        let log = std::fs::File::create(state_dir.join("../coord.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--listen", addr, "--tailnet-domain", DOMAIN])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--policy")
            .arg(policy)
            .args(["--policy-poll-interval", "1h"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for CoordChild {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_for_coord(addr: &str) -> Result<MachinePublicKey> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match postern_node::control::fetch_coord_key(addr).await {
            Ok(key) => return Ok(key),
            Err(err) if Instant::now() > deadline => bail!("the coord did not start: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn wait_until(timeout: Duration, what: &str, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Waits until no frame has arrived for `quiet`.
async fn wait_quiet(
    progress: &Progress,
    clock: &Clock,
    quiet: Duration,
    timeout: Duration,
) -> Result<()> {
    let quiet_us = u64::try_from(quiet.as_micros())?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = progress.last_frame_us.load(Ordering::Relaxed);
        if clock.us().saturating_sub(last) >= quiet_us {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the coord never fell quiet");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// User + system CPU seconds of process `pid`.
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak and current RSS of `pid` in MiB.
fn proc_rss_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("odd /proc status")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

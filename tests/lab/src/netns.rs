//! One network namespace owned by a test: created with a unique name, emptied and deleted
//! on drop.
//!
//! The [`crate::netlab::NatLab`] and [`crate::wireguard_go`] build on this; tests may use it
//! directly for a bare namespace.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::tools::{command_line, require_root, run, tail};
use crate::{LabError, LabProcess};

/// Every namespace this crate creates is named `pl<pid>x<counter>-<role>`: the pid of the
/// test process that owns it, so a later run can sweep namespaces whose owner died.
const NAME_PREFIX: &str = "pl";

/// A network namespace created by the lab, named uniquely per test process and instance.
///
/// On drop every process inside it is killed (SIGTERM, then SIGKILL) and the namespace is
/// deleted. Creating one needs root.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace `<prefix>-<role>` (see [`unique_prefix`]) with `lo` up and,
    /// unless `ipv6` is set, IPv6 disabled (no DAD or router-solicitation noise).
    ///
    /// Fails if not root or if `ip netns add` fails (e.g. the name exists).
    pub fn create(prefix: &str, role: &str, ipv6: bool) -> Result<Self, LabError> {
        require_root("creating a network namespace")?;
        let name = format!("{prefix}-{role}");
        run(
            &format!("creating namespace {name}"),
            Command::new(ip()?).args(["netns", "add", &name]),
        )?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        if !ipv6 {
            ns.sysctl(&[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])?;
        }
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it (`ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`Command`] that runs `program` inside this namespace (`ip netns exec NAME program`).
    ///
    /// `ip` execs the program, so a spawned child's pid is the program's own pid.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args` (program first) inside the namespace and returns its standard output.
    ///
    /// Fails with the command's exit status and standard error if it exits non-zero.
    pub fn output(&self, args: &[&str]) -> Result<String, LabError> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Invalid("output() needs a program".into()))?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        run(&format!("`{}` in {}", args.join(" "), self.name), &mut cmd)
    }

    /// Runs `args` inside the namespace and returns its full [`Output`] whatever its exit
    /// status: for checks that expect a failure (e.g. a ping that must not get through).
    pub fn try_output(&self, args: &[&str]) -> Result<Output, LabError> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Invalid("try_output() needs a program".into()))?;
        let mut cmd = self.command(program);
        cmd.args(rest).stdin(Stdio::null());
        cmd.output()
            .map_err(|e| LabError::io(format!("running `{}`", command_line(&cmd)), e))
    }

    /// Starts a long-running program inside the namespace; it is killed when the returned
    /// [`LabProcess`] is dropped (and, at the latest, when the namespace is dropped).
    ///
    /// Its output goes to `log`.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Result<LabProcess, LabError> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Invalid("spawn() needs a program".into()))?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        LabProcess::spawn(&format!("`{}` in {}", args.join(" "), self.name), cmd, log)
    }

    /// Runs the closure `f` on a fresh thread that has entered this namespace, and returns
    /// its result. Sockets created inside `f` stay in the namespace when handed back: this
    /// is how a test binds a listener "on" a lab host without a separate process.
    ///
    /// Fails if the namespace cannot be entered (needs root).
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let path = self.path();
        let handle = std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || enter(&path).map(|()| f()))
            .map_err(|e| LabError::io("starting a thread for the namespace", e))?;
        handle
            .join()
            .map_err(|_| LabError::Invalid(format!("closure run in {} panicked", self.name)))?
    }

    /// The bind-mount that holds the namespace, `/run/netns/NAME`.
    pub fn path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME args...` (e.g. `["addr", "add", "10.0.0.1/24", "dev", "eth0"]`) and
    /// returns its output; fails with `ip`'s message.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        run(
            &format!("`ip {}` in {}", args.join(" "), self.name),
            Command::new(ip()?).arg("-n").arg(&self.name).args(args),
        )
    }

    /// Creates a veth pair between this namespace (`my_if`) and `other` (`other_if`),
    /// directly inside both (names never clash with the root namespace), both ends up.
    pub fn veth_to(&self, my_if: &str, other: &Netns, other_if: &str) -> Result<(), LabError> {
        run(
            &format!(
                "creating veth {}:{my_if} <-> {}:{other_if}",
                self.name, other.name
            ),
            Command::new(ip()?).args([
                "link",
                "add",
                "name",
                my_if,
                "netns",
                &self.name,
                "type",
                "veth",
                "peer",
                "name",
                other_if,
                "netns",
                &other.name,
            ]),
        )?;
        self.ip(&["link", "set", my_if, "up"])?;
        other.ip(&["link", "set", other_if, "up"])?;
        Ok(())
    }

    /// Sets sysctls inside the namespace.
    pub(crate) fn sysctl(&self, settings: &[&str]) -> Result<(), LabError> {
        let mut args = vec!["sysctl", "-qw"];
        args.extend_from_slice(settings);
        self.output(&args).map(drop)
    }

    /// Loads an nftables ruleset (the text of an `nft -f` file) into the namespace.
    pub(crate) fn nft(&self, ruleset: &str) -> Result<(), LabError> {
        let mut file = tempfile::NamedTempFile::new()
            .map_err(|e| LabError::io("creating a temp file for an nft ruleset", e))?;
        std::io::Write::write_all(&mut file, ruleset.as_bytes())
            .map_err(|e| LabError::io("writing an nft ruleset", e))?;
        let path = file.path().to_string_lossy().into_owned();
        self.output(&["nft", "-f", &path])
            .map(drop)
            .map_err(|e| match e {
                LabError::Command {
                    what,
                    command,
                    status,
                    stderr,
                } => LabError::Command {
                    what,
                    command,
                    status,
                    stderr: format!("{stderr}\nruleset:\n{}", tail(ruleset, 2000)),
                },
                other => other,
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A prefix unique to this process and call, `pl<pid>x<n>`, for naming namespaces and
/// machine-wide interface names (at most 13 characters for pids up to 7 digits and
/// n < 1000, leaving room under the 15-character interface-name limit only for short
/// suffixes: use [`short_unique_name`] for interface names).
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}x{n}", std::process::id())
}

/// A machine-unique interface name of at most 15 characters, `<tag><pid base36><n base36>`,
/// for devices whose names are global (wireguard-go's UAPI sockets in `/var/run/wireguard`).
///
/// `tag` should be one or two letters.
pub fn short_unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{}{}", base36(std::process::id()), base36(n));
    name.chars().take(15).collect()
}

/// Deletes namespaces named by this crate whose owning test process is gone (it was killed
/// before its drops ran), after killing what still runs inside them.
///
/// Called at the start of every [`crate::netlab::NatLab`]; cheap when there is nothing to do.
pub fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(owner) = owner_pid(&name) else {
            continue;
        };
        let alive = owner == std::process::id()
            || kill(Pid::from_raw(owner as i32), None::<Signal>).is_ok()
            || Path::new(&format!("/proc/{owner}")).exists();
        if !alive {
            kill_all_in(&name);
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The pid in a name of the form `pl<pid>x<n>-...`, if it is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let (counter, _role) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(counter) {
        return None;
    }
    pid.parse().ok()
}

/// Kills every process in namespace `name` (`ip netns pids`): SIGTERM, a short grace, SIGKILL.
pub(crate) fn kill_all_in(name: &str) {
    let pids = || -> Vec<Pid> {
        Command::new("ip")
            .args(["netns", "pids", name])
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .filter(|&p| p != std::process::id() as i32)
                    .map(Pid::from_raw)
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = pids();
    if first.is_empty() {
        return;
    }
    for pid in &first {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if first.iter().all(|p| !alive(*p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids() {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Moves the calling thread into the namespace mounted at `path`.
pub(crate) fn enter(path: &Path) -> Result<(), LabError> {
    let file =
        File::open(path).map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| LabError::io(format!("entering {}", path.display()), e.into()))
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn ip() -> Result<std::path::PathBuf, LabError> {
    crate::tools::find_program("ip")
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS.get((n % 36) as usize).copied().unwrap_or(b'0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_our_names() {
        assert_eq!(owner_pid("pl1234x0-coord"), Some(1234));
        assert_eq!(owner_pid("pl1234x12-natA"), Some(1234));
        assert_eq!(owner_pid("wm-coord"), None);
        assert_eq!(owner_pid("plx0-coord"), None);
        assert_eq!(owner_pid("pl12a4x0-coord"), None);
        assert_eq!(owner_pid("pl1234x0"), None);
    }

    #[test]
    fn short_names_fit_interface_limit() {
        let name = short_unique_name("wg");
        assert!(name.len() <= 15, "{name}");
        assert_ne!(name, short_unique_name("wg"));
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36), "10");
    }
}

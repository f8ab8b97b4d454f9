//! Small shared pieces: finding programs, running commands, free ports, bounded polling.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::LabError;

/// Finds `name` on `PATH` (or in the usual sbin directories, which a non-login root shell
/// may lack).
pub(crate) fn find_program(name: &str) -> Result<PathBuf, LabError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| LabError::MissingTool {
            tool: name.to_owned(),
            looked: "PATH, /usr/sbin, /sbin".to_owned(),
        })
}

/// Fails with [`LabError::NotRoot`] unless the process runs as root.
pub(crate) fn require_root(what: &str) -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot {
            what: what.to_owned(),
        })
    }
}

/// Runs `cmd` to completion and returns its standard output, or a [`LabError::Command`]
/// that names `what` and carries the end of standard error.
pub(crate) fn run(what: &str, cmd: &mut Command) -> Result<String, LabError> {
    let line = command_line(cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| LabError::io(format!("{what}: cannot run `{line}`"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        Err(LabError::Command {
            what: what.to_owned(),
            command: line,
            status: out.status.to_string(),
            stderr: tail(&text, 2000),
        })
    }
}

/// The command as a shell-like line, for error messages.
pub(crate) fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// A loopback TCP port that was free a moment ago (another process may still take it:
/// launchers retry on a bind failure).
pub(crate) fn free_tcp_port() -> Result<u16, LabError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LabError::io("picking a free loopback TCP port", e))
}

/// A loopback port free for both TCP and UDP a moment ago (for a mock DNS server).
pub(crate) fn free_tcp_udp_port() -> Result<u16, LabError> {
    for _ in 0..50 {
        let port = free_tcp_port()?;
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LabError::Invalid(
        "found no loopback port free for both TCP and UDP in 50 tries".to_owned(),
    ))
}

/// Calls `check` every `every` until it returns `Some`, or fails after `limit` with a
/// [`LabError::Timeout`] whose hint comes from `hint()` (called only on failure).
pub(crate) fn poll_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>, LabError>,
    hint: impl FnOnce() -> String,
) -> Result<T, LabError> {
    let start = Instant::now();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if start.elapsed() >= limit {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                waited: start.elapsed(),
                hint: hint(),
            });
        }
        std::thread::sleep(every);
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default().trim_end().to_owned()
}

/// The end of a log file, or a note saying it cannot be read.
pub(crate) fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), 3000),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Sends `GET path` over plain HTTP/1.0 to `addr` and returns the status code, or `None` if
/// nothing answers (yet). For readiness polls; call it inside a namespace via `run_in`.
pub(crate) fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(500);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

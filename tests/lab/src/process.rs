//! A child process that is stopped when its handle is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::LabError;
use crate::tools::{command_line, log_tail};

/// A long-running process started by the lab, killed when dropped.
///
/// Drop sends SIGTERM, waits up to two seconds, then SIGKILLs and reaps it; this also runs
/// while a panicking test unwinds. Standard output and error go to a log file, whose end
/// [`LabProcess::log_tail`] returns for error messages.
#[derive(Debug)]
pub struct LabProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl LabProcess {
    /// Starts `cmd` with its standard output and error written to `log` and stdin closed;
    /// `name` appears in error messages. Use it for any daemon a test starts (e.g. the
    /// binary under test, built from [`crate::netlab::NatLab::command`] to run on a lab host
    /// with extra environment variables).
    ///
    /// Fails if the program cannot be started (missing binary, bad working directory) or the
    /// log cannot be created.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, LabError> {
        let out = File::create(log)
            .map_err(|e| LabError::io(format!("creating log {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| LabError::io(format!("duplicating log {}", log.display()), e))?;
        let line = command_line(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| LabError::io(format!("starting {name}: `{line}`"), e))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The process id (inside a namespace started with `ip netns exec`, this is the
    /// program's own pid: `ip` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The path of the log file holding its standard output and error.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last few kilobytes of its log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Fails with [`LabError::Exited`] (carrying the log's end) if the process has exited.
    ///
    /// Call it while waiting for readiness, so a daemon that died on start-up is reported
    /// at once instead of after the timeout.
    pub fn check_running(&mut self) -> Result<(), LabError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(LabError::Exited {
                what: self.name.clone(),
                status: status.to_string(),
                log: self.log_tail(),
            }),
            Err(e) => Err(LabError::io(format!("checking on {}", self.name), e)),
        }
    }

    /// Stops the process now (SIGTERM, then SIGKILL after two seconds) and reaps it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

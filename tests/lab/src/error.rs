//! The one error type every launcher returns.

use std::time::Duration;

/// What went wrong while starting, driving or stopping a lab component.
///
/// Every message says what failed and what to check, so a failing test explains itself
/// (e.g. "pebble not found: run scripts/install-deps").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A program the launcher needs is not installed.
    #[error("{tool} not found ({looked}): run scripts/install-deps")]
    MissingTool {
        /// The program that is missing, e.g. `pebble`.
        tool: String,
        /// Where it was looked for.
        looked: String,
    },
    /// The launcher needs root (network namespaces, nftables, TUN devices) and is not root.
    #[error("{what} needs root (CAP_NET_ADMIN): run the tests as root, as CI does")]
    NotRoot {
        /// What needed root.
        what: String,
    },
    /// A helper command ran but failed.
    #[error("{what} failed: `{command}` exited with {status}: {stderr}")]
    Command {
        /// What the command was meant to do.
        what: String,
        /// The command line, for copy-pasting into a shell.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error (and output).
        stderr: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A component did not become ready in time.
    #[error("{what} not ready after {waited:?}; {hint}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// What to check, usually with the end of the component's log.
        hint: String,
    },
    /// A component exited while we still needed it.
    #[error("{what} exited early with {status}; its log ends with:\n{log}")]
    Exited {
        /// Which component.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// An HTTP exchange with a component failed or gave an unexpected answer.
    #[error("{what}: {detail}")]
    Http {
        /// What was being done, e.g. "device-flow login as alice".
        what: String,
        /// What went wrong, with the status or body where useful.
        detail: String,
    },
    /// A launcher was given an argument it cannot use.
    #[error("invalid lab setup: {0}")]
    Invalid(String),
}

impl LabError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// An HTTP-level failure.
    pub(crate) fn http(what: impl Into<String>, detail: impl ToString) -> Self {
        Self::Http {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let missing = LabError::MissingTool {
            tool: "pebble".into(),
            looked: "PATH".into(),
        };
        assert_eq!(
            missing.to_string(),
            "pebble not found (PATH): run scripts/install-deps"
        );
        let root = LabError::NotRoot {
            what: "the NAT lab".into(),
        };
        assert!(root.to_string().contains("run the tests as root"), "{root}");
        let timeout = LabError::Timeout {
            what: "pebble".into(),
            waited: Duration::from_secs(20),
            hint: "check its log".into(),
        };
        assert!(
            timeout.to_string().starts_with("pebble not ready after 20"),
            "{timeout}"
        );
    }
}

//! The admin's policy commands, `postern-coord policy check` and `policy test`: the logic
//! behind them, with the output they print and the exit code they end with. The binary only
//! reads the file and prints.

use postern_acl::{AccessVerdict, Policy, PolicyErrors};
use serde_json::json;

/// Exit code: the policy is valid, or the access is allowed.
pub const EXIT_OK: u8 = 0;
/// Exit code: the policy is invalid (`check`), or the access is denied (`test`).
pub const EXIT_REJECTED: u8 = 1;
/// Exit code: the question could not be answered (unreadable file, invalid policy for
/// `test`, malformed `--src`/`--dst`/`--proto`).
pub const EXIT_ERROR: u8 = 2;

/// What a command prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Text for standard output (ends with a newline).
    pub stdout: String,
    /// Text for standard error (empty or ends with a newline).
    pub stderr: String,
    /// The process exit code.
    pub exit_code: u8,
}

/// `policy check FILE [--json]`: parses `text` (read from `file_name`), runs its tests, and
/// reports a one-line summary (exit 0) or every error as `FILE:LINE:COL: message` (exit 1).
pub fn check(file_name: &str, text: &str, json: bool) -> CommandOutput {
    match Policy::parse(file_name, text) {
        Ok(policy) => {
            let s = policy.summary();
            let stdout = if json {
                json!({
                    "valid": true,
                    "file": file_name,
                    "summary": {
                        "acls": s.acls,
                        "grants": s.grants,
                        "groups": s.groups,
                        "tags": s.tags,
                        "hosts": s.hosts,
                        "nodeAttrs": s.node_attrs,
                        "funnels": s.funnels,
                        "testsPassed": s.tests_passed,
                    },
                })
                .to_string()
            } else {
                format!("{file_name}: valid: {s}")
            };
            CommandOutput {
                stdout: stdout + "\n",
                stderr: String::new(),
                exit_code: EXIT_OK,
            }
        }
        Err(errors) => {
            if json {
                CommandOutput {
                    stdout: json!({
                        "valid": false,
                        "file": file_name,
                        "errors": errors_json(&errors),
                    })
                    .to_string()
                        + "\n",
                    stderr: String::new(),
                    exit_code: EXIT_REJECTED,
                }
            } else {
                CommandOutput {
                    stdout: String::new(),
                    stderr: format!("{errors}\n"),
                    exit_code: EXIT_REJECTED,
                }
            }
        }
    }
}

/// `policy test FILE --src IDENTITY --dst HOST:PORT [--proto P] [--json]`: whether
/// IDENTITY (a user login, a tag, a host alias or an IP) may reach HOST:PORT. Exit 0 naming
/// the rule that allows it, exit 1 with `denied`, exit 2 if the policy is invalid or the
/// question malformed.
pub fn test(
    file_name: &str,
    text: &str,
    src: &str,
    dst: &str,
    proto: &str,
    json: bool,
) -> CommandOutput {
    let policy = match Policy::parse(file_name, text) {
        Ok(p) => p,
        Err(errors) => {
            return CommandOutput {
                stdout: String::new(),
                stderr: format!(
                    "{errors}\n{file_name}: the policy is invalid; fix it first (see `postern-coord policy check`)\n"
                ),
                exit_code: EXIT_ERROR,
            };
        }
    };
    match policy.test_access(src, dst, proto) {
        Ok(AccessVerdict::Allowed(rule)) => CommandOutput {
            stdout: if json {
                json!({
                    "verdict": "allowed",
                    "src": src, "dst": dst, "proto": proto,
                    "rule": format!("{}[{}]", rule.section, rule.index),
                    "position": rule.position.to_string(),
                })
                .to_string()
                    + "\n"
            } else {
                format!("allowed by {rule}\n")
            },
            stderr: String::new(),
            exit_code: EXIT_OK,
        },
        Ok(_) => CommandOutput {
            stdout: if json {
                json!({"verdict": "denied", "src": src, "dst": dst, "proto": proto}).to_string()
                    + "\n"
            } else {
                "denied\n".to_string()
            },
            stderr: String::new(),
            exit_code: EXIT_REJECTED,
        },
        Err(e) => CommandOutput {
            stdout: String::new(),
            stderr: format!("{e}\n"),
            exit_code: EXIT_ERROR,
        },
    }
}

fn errors_json(errors: &PolicyErrors) -> serde_json::Value {
    errors
        .errors()
        .iter()
        .map(|e| {
            json!({
                "file": e.position.file.as_ref(),
                "line": e.position.line,
                "col": e.position.col,
                "message": e.kind.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{
      "tagOwners": {"tag:web": []},
      "acls": [{"action": "accept", "src": ["alice@x.com"], "dst": ["tag:web:443"]}],
      "tests": [{"src": "alice@x.com", "accept": ["tag:web:443"]}],
    }"#;

    #[test]
    fn check_summarises_a_valid_policy() {
        let out = check("p.hujson", POLICY, false);
        assert_eq!(out.exit_code, EXIT_OK);
        assert_eq!(
            out.stdout,
            "p.hujson: valid: 1 acls, 0 grants, 0 groups, 1 tags, 0 hosts, 0 nodeAttrs, 0 funnels, 1 tests passed\n"
        );
    }

    #[test]
    fn test_names_the_rule_or_says_denied() {
        let out = test(
            "p.hujson",
            POLICY,
            "alice@x.com",
            "tag:web:443",
            "tcp",
            false,
        );
        assert_eq!(out.stdout, "allowed by acls[0] (p.hujson:3:16)\n");
        let out = test("p.hujson", POLICY, "bob@x.com", "tag:web:443", "tcp", false);
        assert_eq!(
            (out.stdout.as_str(), out.exit_code),
            ("denied\n", EXIT_REJECTED)
        );
        let out = test("p.hujson", POLICY, "tag:nope", "tag:web:443", "tcp", false);
        assert_eq!(out.exit_code, EXIT_ERROR);
    }
}

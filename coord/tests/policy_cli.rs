//! `postern-coord policy check` and `policy test`: exit codes, output shape, `--json`.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)] // test helpers may panic

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;

const VALID: &str = r#"// comments and trailing commas are fine
{
  "groups": {"group:eng": ["alice@example.com"]},
  "tagOwners": {"tag:web": ["group:eng"]},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"]},
    {"action": "accept", "src": ["tag:web"], "proto": "udp", "dst": ["tag:web:53"]},
  ],
  "tests": [{"src": "alice@example.com", "accept": ["tag:web:443"], "deny": ["tag:web:22"]}],
}
"#;

const INVALID: &str = r#"{
  "tagOwners": {"tag:web": []},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dts": ["tag:web:443"]},
  ],
}
"#;

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn coord() -> Command {
    Command::new(env!("CARGO_BIN_EXE_postern-coord"))
}

#[test]
fn check_accepts_a_valid_policy_with_a_one_line_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "policy.hujson", VALID);
    coord()
        .args(["policy", "check"])
        .arg(&path)
        .assert()
        .code(0)
        .stdout(predicate::str::ends_with(
            "valid: 2 acls, 0 grants, 1 groups, 1 tags, 0 hosts, 0 nodeAttrs, 0 funnels, 1 tests passed\n",
        ))
        .stdout(predicate::str::contains('\n').count(1));
}

#[test]
fn check_rejects_an_invalid_policy_with_file_line_col_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "bad.hujson", INVALID);
    let shown = path.display().to_string();
    coord()
        .args(["policy", "check"])
        .arg(&path)
        .assert()
        .code(1)
        .stdout("")
        .stderr(format!(
            "{shown}:4:5: missing \"dst\" in an acls entry\n\
             {shown}:4:34: group:eng is not defined in \"groups\"\n\
             {shown}:4:48: unknown key \"dts\" in an acls entry; did you mean \"dst\"?\n"
        ));
}

#[test]
fn check_json_reports_summary_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = file(&dir, "good.hujson", VALID);
    let out = coord()
        .args(["policy", "check", "--json"])
        .arg(&good)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["summary"]["acls"], 2);
    assert_eq!(v["summary"]["testsPassed"], 1);

    let bad = file(&dir, "bad.hujson", INVALID);
    let out = coord()
        .args(["policy", "check", "--json"])
        .arg(&bad)
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3);
    assert_eq!(errors[2]["line"], 4);
    assert_eq!(errors[2]["col"], 48);
    assert!(
        errors[2]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean \"dst\"")
    );
}

#[test]
fn check_of_a_missing_file_exits_2() {
    coord()
        .args(["policy", "check", "/nonexistent/policy.hujson"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read /nonexistent/policy.hujson",
        ));
}

#[test]
fn test_names_the_allowing_rule_or_says_denied() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "policy.hujson", VALID);
    let shown = path.display().to_string();
    coord()
        .args(["policy", "test"])
        .arg(&path)
        .args(["--src", "alice@example.com", "--dst", "tag:web:443"])
        .assert()
        .code(0)
        .stdout(format!("allowed by acls[0] ({shown}:6:5)\n"));
    coord()
        .args(["policy", "test"])
        .arg(&path)
        .args(["--src", "alice@example.com", "--dst", "tag:web:22"])
        .assert()
        .code(1)
        .stdout("denied\n");
    coord()
        .args(["policy", "test"])
        .arg(&path)
        .args(["--src", "tag:web", "--dst", "tag:web:53", "--proto", "udp"])
        .assert()
        .code(0)
        .stdout(format!("allowed by acls[1] ({shown}:7:5)\n"));
    coord()
        .args(["policy", "test"])
        .arg(&path)
        .args(["--src", "tag:web", "--dst", "tag:web:53"])
        .assert()
        .code(1)
        .stdout("denied\n");
}

#[test]
fn test_json_and_malformed_questions() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "policy.hujson", VALID);
    let out = coord()
        .args(["policy", "test", "--json"])
        .arg(&path)
        .args(["--src", "alice@example.com", "--dst", "tag:web:443"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["verdict"], "allowed");
    assert_eq!(v["rule"], "acls[0]");
    coord()
        .args(["policy", "test"])
        .arg(&path)
        .args(["--src", "tag:nope", "--dst", "tag:web:443"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--src \"tag:nope\""));
    coord()
        .args(["policy", "test"])
        .arg(&path)
        .args(["--src", "alice@example.com", "--dst", "tag:web"])
        .assert()
        .code(2);
    let bad = file(&dir, "bad.hujson", INVALID);
    coord()
        .args(["policy", "test"])
        .arg(&bad)
        .args(["--src", "alice@example.com", "--dst", "tag:web:443"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the policy is invalid"));
}

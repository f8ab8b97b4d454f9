//! The real `postern-ingress` binary's embedded-node wiring: `[node]` and the `--coord`
//! flags are checked up front, a first start without an auth key says which variable to
//! set, and the auth key never reaches the output when the coordination server cannot be
//! reached.

#![allow(clippy::unwrap_used)] // a failure to start the binary is the test failing

use std::path::Path;
use std::process::{Command, Output};

const SECRET_KEY: &str = "pstn-auth-0123456789abcdef-do-not-print";

fn config(dir: &Path, node: &str) -> std::path::PathBuf {
    let path = dir.join("ingress.toml");
    let text = format!(
        r#"state_dir = "{state}"
[listen]
https = "127.0.0.1:0"
[static_cert]
cert = "unused.pem"
key = "unused.key"
{node}
"#,
        state = dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn ingress(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern-ingress"));
    command.args(args).arg("--config").arg(config).env_clear();
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

#[test]
fn node_settings_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bare = config(dir.path(), "");
    let output = ingress(&["check-config", "--coord-key", "mkey:00"], &bare, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("need --coord or a [node] section"),
        "{stderr}"
    );

    let bad_key = config(
        dir.path(),
        "[node]\ncoord_url = \"http://127.0.0.1:9\"\ncoord_key = \"not-a-key\"",
    );
    let output = ingress(&["check-config"], &bad_key, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("[node] coord_key \"not-a-key\""),
        "{stderr}"
    );

    let https = config(dir.path(), "");
    let output = ingress(
        &["check-config", "--coord", "https://coord.example"],
        &https,
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[node] coord_url"), "{stderr}");

    let oidc = config(
        dir.path(),
        "[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"edge\"\nclient_secret_env = \"OIDC_SECRET\"",
    );
    let output = ingress(&["check-config"], &oidc, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OIDC_SECRET") && stderr.contains("not set"),
        "{stderr}"
    );
    let output = ingress(&["check-config"], &oidc, &[("OIDC_SECRET", "s")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_first_start_without_an_auth_key_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let output = ingress(&["serve", "--coord", "http://127.0.0.1:9"], &path, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("set POSTERN_AUTH_KEY") && stderr.contains("keys create --ingress"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_coord_is_reported_without_the_auth_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("auth-key");
    std::fs::write(&key_file, format!("{SECRET_KEY}\n")).unwrap();
    let path = config(dir.path(), "");
    for extra in [vec!["--auth-key-file", key_file.to_str().unwrap()], vec![]] {
        let mut args = vec!["serve", "--coord", "http://127.0.0.1:9"];
        args.extend(extra);
        let output = ingress(&args, &path, &[("POSTERN_AUTH_KEY", SECRET_KEY)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("cannot reach the coord at http://127.0.0.1:9"),
            "{stderr}"
        );
        assert!(!stderr.contains(SECRET_KEY) && !stdout.contains(SECRET_KEY));
    }
}

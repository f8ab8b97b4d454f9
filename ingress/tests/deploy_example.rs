//! Keeps `deploy/ingress.example.toml`, the example configuration of the operator guide,
//! valid: the real binary's `check-config` must accept it when its gate secrets are set,
//! and must name a missing secret when one is not.

#![allow(clippy::unwrap_used)] // a failure to start the binary is the test failing

use std::path::PathBuf;
use std::process::{Command, Output};

/// The gate secrets the example names in `secret_env` and `secret_envs`.
const SECRET_VARS: [&str; 3] = [
    "POSTERN_GITHUB_WEBHOOK_SECRET",
    "POSTERN_STRIPE_SECRET_NEW",
    "POSTERN_STRIPE_SECRET_OLD",
];

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/ingress.example.toml")
}

fn check_config(secrets: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern-ingress"));
    command
        .arg("check-config")
        .arg("--config")
        .arg(example_path())
        .env_clear();
    for name in secrets {
        command.env(name, "example-secret-value");
    }
    command.output().unwrap()
}

#[test]
fn example_config_passes_check_config() {
    let output = check_config(&SECRET_VARS);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check-config refused deploy/ingress.example.toml ({}):\n{stderr}",
        output.status
    );
    assert!(stdout.contains("ok (2 funnels)"), "stdout: {stdout}");
}

#[test]
fn example_config_without_a_secret_is_refused_naming_it() {
    let output = check_config(&SECRET_VARS[..2]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("POSTERN_STRIPE_SECRET_OLD") && stderr.contains("not set"),
        "stderr: {stderr}"
    );
}

//! `postern serve`, `funnel` and `inspect` without a running daemon: help pages, usage
//! errors and the "start the daemon" message, through the real binary (assert_cmd).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test code

use assert_cmd::Command;
use predicates::prelude::*;

/// `postern ARGS --state-dir STATE` with no config file.
fn postern(state: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::cargo_bin("postern").unwrap();
    command
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("POSTERN_CONFIG")
        .env("XDG_CONFIG_HOME", state.join("config"));
    command
}

#[test]
fn help_pages_read_like_man_pages() {
    let dir = tempfile::tempdir().unwrap();
    postern(dir.path(), &["serve", "--help"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("Postern-User-Login")
                .and(predicate::str::contains("--bg"))
                .and(predicate::str::contains("--set-path"))
                .and(predicate::str::contains("postern serve --tcp 5432 5432"))
                .and(predicate::str::contains("Exit status")),
        );
    postern(dir.path(), &["funnel", "--help"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("--verify-webhook")
                .and(predicate::str::contains("--secret-env"))
                .and(predicate::str::contains("--allow-email"))
                .and(predicate::str::contains("--jwt-issuer"))
                .and(predicate::str::contains("--mtls-ca"))
                .and(predicate::str::contains("--rate-limit"))
                .and(predicate::str::contains("--any"))
                .and(predicate::str::contains("Exit status")),
        );
    postern(dir.path(), &["inspect", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("replay").and(predicate::str::contains("--inspect")));
    for sub in [
        &["serve", "status", "--help"][..],
        &["serve", "reset", "--help"],
        &["funnel", "status", "--help"],
        &["inspect", "list", "--help"],
        &["inspect", "show", "--help"],
    ] {
        postern(dir.path(), sub).assert().success();
    }
    postern(dir.path(), &["up", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--inspect-serves"));
}

#[test]
fn without_a_daemon_the_commands_say_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["serve", "3000"][..],
        &["serve", "3000", "--bg"],
        &["serve", "status"],
        &["serve", "status", "--json"],
        &["serve", "reset"],
        &["funnel", "3000"],
        &["funnel", "status"],
        &["funnel", "reset"],
        &["inspect", "list"],
    ] {
        postern(dir.path(), args).assert().code(3).stderr(
            predicate::str::contains("no postern daemon is running")
                .and(predicate::str::contains("postern up")),
        );
    }
}

#[test]
fn usage_errors_exit_2_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["serve"], "nothing to serve"),
        (&["serve", "--tcp", "nope"], "TCP target"),
        (&["serve", "https://127.0.0.1:3000"], "https"),
        (&["serve", "--set-path", "api", "3000"], "route path"),
        (&["funnel"], "no port"),
        (
            &["funnel", "3000", "--verify-webhook", "github"],
            "--secret-env",
        ),
        (
            &[
                "funnel",
                "3000",
                "--verify-webhook",
                "github",
                "--secret-env",
                "POSTERN_TEST_UNSET_VAR",
            ],
            "POSTERN_TEST_UNSET_VAR is not set",
        ),
    ];
    for (args, message) in cases {
        postern(dir.path(), args)
            .env_remove("POSTERN_TEST_UNSET_VAR")
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    }
    // clap's own checks: a flag that needs another, a bad rate.
    postern(
        dir.path(),
        &["funnel", "3000", "--allow-email", "a@example.com"],
    )
    .assert()
    .code(2)
    .stderr(predicate::str::contains("--login"));
    postern(dir.path(), &["funnel", "3000", "--rate-limit", "fast"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("N/s"));
    postern(dir.path(), &["up", "--inspect", "nowhere"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("off"));
}

//! The inspection UI in a real browser: Debian's `chromium`, headless, driven by
//! `playwright-core` (npm, pinned by `node/tests/fixtures/inspect-ui/package-lock.json`)
//! running `fixtures/inspect-ui/ui-test.mjs`.
//!
//! The script opens the UI, POSTs a webhook through the capturing proxy and waits for it to
//! appear live, checks the masked detail, replays it and waits for the replay in the list,
//! replays it again with a changed body, opens a denial and narrows the list with a filter.
//! This test then checks that the replay reached the local service and was recorded
//! linked to the original. Screenshots go to `target/inspect-ui-artifacts/` (or
//! `$POSTERN_TEST_ARTIFACTS/inspect-ui/`).
//!
//! Needs `/usr/bin/chromium` and the fixture's `node_modules`: `scripts/install-deps`
//! installs both. Without them the test fails and says so.

#![allow(clippy::unwrap_used, clippy::panic)] // test helpers outside #[test] functions may unwrap

mod inspect_harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use inspect_harness::{Harness, SIGNATURE};
use postern_node::inspect::{CaptureConfig, DeniedDelivery, Entry, Source};

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_a_webhook_live_and_replays_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inspect-ui");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-deps (it installs Debian's chromium)"
    );
    assert!(
        fixture.join("node_modules/playwright-core").exists(),
        "playwright-core is missing in {}: run scripts/install-deps (npm ci there)",
        fixture.display()
    );
    let artifacts = artifacts_dir();
    let _ = std::fs::remove_dir_all(&artifacts);

    let harness = Harness::start(CaptureConfig::default()).await;
    harness.store.record_denied(DeniedDelivery {
        id: 0,
        time: "2026-11-29T09:00:00Z".into(),
        funnel: Some("hooks.example".into()),
        method: "POST".into(),
        path: "/hooks/github".into(),
        gate: Some("webhook:github".into()),
        reason: "signature_mismatch".into(),
        status: 403,
        edge_id: None,
    });
    let child = tokio::process::Command::new("node")
        .arg("ui-test.mjs")
        .current_dir(&fixture)
        .env("UI_URL", &harness.ui_url)
        .env("PROXY_URL", &harness.proxy_url)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", CHROMIUM)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node should start (scripts/install-deps installs nodejs)");
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the browser test should finish within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser script failed ({}); screenshots in {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status,
        artifacts.display()
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap_or_else(|e| {
            panic!("the script's last line is not its JSON result ({e}): {stdout}")
        });
    let original = result["original"].as_u64().unwrap();
    let replay = result["replay"].as_u64().unwrap();

    // The replay reached the local service with the original's secrets, marked as a replay.
    let seen = harness.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(&seen[2].body[..], br#"{"ref":"refs/heads/dev"}"#);
    assert_eq!(seen[2].header("x-hub-signature-256"), Some(SIGNATURE));
    assert_eq!(seen[1].path, "/hooks/github");
    assert_eq!(seen[1].header("x-hub-signature-256"), Some(SIGNATURE));
    assert_eq!(
        seen[1].header("x-postern-replay-of"),
        Some(original.to_string().as_str())
    );
    assert_eq!(seen[0].body, seen[1].body);
    let Some(Entry::Exchange(replayed)) = harness.store.get(replay) else {
        panic!("replay {replay} is not in the store")
    };
    assert_eq!(replayed.source, Source::Replay);
    assert_eq!(replayed.replay_of, Some(original));

    for name in [
        "01-empty.png",
        "02-webhook-arrived-live.png",
        "03-detail-masked.png",
        "04-replayed.png",
        "05-replay-with-changes.png",
        "06-denied.png",
    ] {
        let size = std::fs::metadata(artifacts.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(
            size > 1000,
            "screenshot {name} missing or empty in {}",
            artifacts.display()
        );
    }
}

fn artifacts_dir() -> PathBuf {
    match std::env::var_os("POSTERN_TEST_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir).join("inspect-ui"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/inspect-ui-artifacts"),
    }
}

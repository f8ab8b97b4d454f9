//! The store suite on SQLite (a file in a temp dir), plus SQLite-only checks: file mode,
//! pragmas, and that acknowledged writes survive `kill -9`.

// Test helpers outside #[test] fns may unwrap and panic too: a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod store_suite;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use postern_coord::store::{NewAuditRecord, SQLITE_FILE_NAME, Store};
use store_suite::Fresh;

fn fresh_sqlite() -> (tempfile::TempDir, Fresh) {
    let dir = tempfile::tempdir().unwrap();
    let location = format!("sqlite://{}", dir.path().join(SQLITE_FILE_NAME).display());
    (dir, Fresh { location })
}

store_suite_tests!(fresh_sqlite);

#[tokio::test]
async fn state_dir_store_is_private_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let file = dir.path().join(SQLITE_FILE_NAME);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the store holds key material");
    store.close().await;

    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let (journal,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
}

#[tokio::test]
async fn unsupported_locations_are_explained() {
    let err = Store::open("mysql://root:hunter2@db/postern")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("unsupported store location"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

const CRASH_CHILD_ENV: &str = "POSTERN_STORE_CRASH_CHILD_DIR";

/// The parent re-runs this very test as a child process that appends audit records as fast
/// as it can, printing each id once `append_audit` returned; after 200 acknowledgements it
/// is killed with SIGKILL mid-burst. Every acknowledged record must be in the reopened store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    if let Ok(dir) = std::env::var(CRASH_CHILD_ENV) {
        let store = Store::open(&dir).await.unwrap();
        for n in 0.. {
            let id = store
                .append_audit(&NewAuditRecord {
                    at_ms: n,
                    actor: "crash-test".into(),
                    action: "burst".into(),
                    target: format!("record-{n}"),
                    source_addr: None,
                    details: serde_json::json!({ "n": n }),
                })
                .await
                .unwrap();
            println!("acked {id}");
        }
        unreachable!();
    }

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_writes_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 200 {
        let line = lines
            .next()
            .expect("child exited before 200 writes")
            .unwrap();
        if let Some(id) = line.strip_prefix("acked ") {
            acked.push(id.parse::<u64>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Drain what the child printed before it died: those were acknowledged too.
    for line in lines {
        if let Some(id) = line.unwrap().strip_prefix("acked ") {
            acked.push(id.parse().unwrap());
        }
    }

    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let stored: std::collections::HashSet<u64> = store
        .audit_after(0, 1_000_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );
}

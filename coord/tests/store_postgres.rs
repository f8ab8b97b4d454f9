//! The store suite on a real PostgreSQL started by `postern-lab` (one throwaway cluster per
//! test). Needs the PostgreSQL server installed (`scripts/install-deps`); fails, never
//! skips, when it is missing.

// Test helpers outside #[test] fns may unwrap and panic too: a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod store_suite;

use postern_coord::store::{BackendKind, Store, StoreError};
use postern_lab::postgres::PostgresCluster;
use store_suite::Fresh;

/// Starts a cluster (blocking for about a second; fine inside the multi-threaded test
/// runtime) and creates the case's database.
fn fresh_postgres() -> (PostgresCluster, Fresh) {
    let cluster = PostgresCluster::start()
        .expect("starting PostgreSQL for the store tests (run scripts/install-deps)");
    let location = cluster.create_database("postern_store").unwrap();
    (cluster, Fresh { location })
}

store_suite_tests!(fresh_postgres);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_urls_select_the_postgres_backend() {
    let (_cluster, fresh) = fresh_postgres();
    let store = Store::open(&fresh.location).await.unwrap();
    assert_eq!(store.backend_kind(), BackendKind::Postgres);
}

#[tokio::test]
async fn connection_errors_name_the_server_but_not_the_password() {
    // Port 9 on loopback: nothing listens there.
    let err = Store::open("postgres://coord:hunter2@127.0.0.1:9/postern")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ConnectPostgres { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("postgres://coord:***@127.0.0.1:9/postern"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

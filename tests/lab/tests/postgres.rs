//! The throwaway PostgreSQL cluster starts, answers queries and is gone after drop.

// Test helpers outside #[test] fns may unwrap and panic too: a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use postern_lab::postgres::PostgresCluster;

#[test]
fn cluster_answers_a_query_and_is_removed_on_drop() {
    let pg = PostgresCluster::start().unwrap();
    assert!(pg.url().starts_with("postgres://postgres@127.0.0.1:"));
    assert_eq!(pg.psql("select 1 + 1").unwrap().trim(), "2");

    // A query through the URL with psql itself, as a client would.
    let out = std::process::Command::new("psql")
        .args(["-X", "-At", "-d", &pg.url(), "-c", "select current_user"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");

    let db = pg.create_database("lab_test").unwrap();
    assert!(db.ends_with("/lab_test"));
    let bad = pg.create_database("Robert'); DROP").unwrap_err();
    assert!(bad.to_string().contains("lowercase"), "{bad}");
    let sql_error = pg.psql("select * from no_such_table").unwrap_err();
    assert!(
        sql_error.to_string().contains("no_such_table"),
        "{sql_error}"
    );

    let dir = pg.socket_dir().to_owned();
    let port = pg.port();
    drop(pg);
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server still listening on {port} after drop"
    );
}

#[test]
fn two_clusters_run_side_by_side() {
    let a = PostgresCluster::start().unwrap();
    let b = PostgresCluster::start().unwrap();
    assert_ne!(a.port(), b.port());
    a.psql("create table only_in_a (x int)").unwrap();
    assert!(b.psql("select * from only_in_a").is_err());
}

#[test]
fn a_panicking_test_stops_the_cluster() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let inner = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let pg = PostgresCluster::start().unwrap();
        *inner.lock().unwrap() = Some((pg.port(), pg.socket_dir().to_owned()));
        panic!("the test fails while the cluster runs");
    });
    assert!(result.is_err());
    let (port, dir) = seen.lock().unwrap().clone().unwrap();
    assert!(!dir.exists(), "{} survived the panic", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// `psql -d URL -c SQL`, its output or its error.
fn psql_url(url: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args(["-X", "-At", "-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_tls_cluster_speaks_tls_only_with_a_certificate_from_its_own_ca() {
    let pg = PostgresCluster::start_tls().unwrap();
    let ca = pg.tls_ca_path().unwrap();
    assert!(
        std::fs::read_to_string(&ca)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    // Verified against the CA, by host name and by address.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!(
            "postgres://postgres@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg.port(),
            ca.display()
        );
        let ssl = psql_url(
            &url,
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        )
        .unwrap();
        assert_eq!(ssl, "t", "{host}");
    }
    // Without TLS the server refuses.
    let plain = format!("{}?sslmode=disable", pg.url());
    let refused = psql_url(&plain, "select 1").unwrap_err();
    assert!(refused.contains("pg_hba.conf"), "{refused}");
    // The lab's own psql helper still works (libpq prefers TLS).
    assert_eq!(pg.psql("select 1").unwrap().trim(), "1");
    // A plain cluster has no CA.
    assert!(PostgresCluster::start().unwrap().tls_ca_path().is_none());
}

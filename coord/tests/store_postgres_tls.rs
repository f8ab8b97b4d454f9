//! The coord's store over TLS to a real PostgreSQL from the lab (`ssl=on`, TCP without TLS
//! rejected by `pg_hba.conf`, a certificate from a CA made for the test): `verify-full`
//! with `sslrootcert` connects, a wrong CA or a missing TLS server is refused with an error
//! that says what to fix, through the library and through the real binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

use postern_coord::store::{Store, StoreError};
use postern_lab::postgres::PostgresCluster;

const BIN: &str = env!("CARGO_BIN_EXE_postern-coord");

fn url(pg: &PostgresCluster, host: &str, db: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/{db}?{params}", pg.port())
}

fn verify_full(pg: &PostgresCluster, host: &str, db: &str, ca: &Path) -> String {
    url(
        pg,
        host,
        db,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connects_with_verify_full_and_refuses_a_wrong_ca_clearly() {
    let pg = PostgresCluster::start_tls().unwrap();
    let other = PostgresCluster::start_tls().unwrap();
    pg.create_database("coord_tls").unwrap();
    let ca = pg.tls_ca_path().unwrap();
    let wrong_ca = other.tls_ca_path().unwrap();

    // verify-full against the right CA, by name and by address. The server rejects TCP
    // without TLS, so a working store is a TLS store.
    for host in ["localhost", "127.0.0.1"] {
        let store = Store::open(&verify_full(&pg, host, "coord_tls", &ca))
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        let probe = format!("tls_probe_{host}");
        assert_eq!(store.setting_or_insert(&probe, host).await.unwrap(), host);
        assert_eq!(store.setting(&probe).await.unwrap().as_deref(), Some(host));
        store.close().await;
    }

    // require: TLS without checking the certificate.
    let store = Store::open(&url(&pg, "127.0.0.1", "coord_tls", "sslmode=require"))
        .await
        .unwrap();
    store.close().await;

    // Another CA: refused, and the error says why and what to do.
    let err = Store::open(&verify_full(&pg, "localhost", "coord_tls", &wrong_ca))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PostgresTls { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("TLS to PostgreSQL at"), "{message}");
    // Both lab CAs have the same name: rustls finds "the" issuer and the signature fails.
    assert!(
        message.contains("UnknownIssuer") || message.contains("BadSignature"),
        "{message}"
    );
    assert!(
        message.contains("not signed by a CA the coord trusts"),
        "{message}"
    );

    // No sslrootcert: the public roots do not know the lab's CA either.
    let err = Store::open(&url(&pg, "localhost", "coord_tls", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PostgresTls { .. }), "{err:?}");

    // Without TLS the server refuses (pg_hba.conf): a connection error, not a TLS one.
    let err = Store::open(&url(&pg, "127.0.0.1", "coord_tls", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ConnectPostgres { .. }), "{err:?}");
    assert!(err.to_string().contains("pg_hba.conf"), "{err}");

    // A server without TLS, asked for TLS.
    let plain = PostgresCluster::start().unwrap();
    let err = Store::open(&url(&plain, "127.0.0.1", "postgres", "sslmode=require"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PostgresTls { .. }), "{err:?}");
    assert!(err.to_string().contains("TLS off"), "{err}");
}

#[test]
fn the_binary_uses_tls_to_postgres_and_says_what_is_wrong_with_a_wrong_ca() {
    let pg = PostgresCluster::start_tls().unwrap();
    let other = PostgresCluster::start_tls().unwrap();
    pg.create_database("coord_bin").unwrap();
    let state = tempfile::tempdir().unwrap();
    let keys_create = |database: &str| {
        Command::new(BIN)
            .args(["keys", "create", "--database", database])
            .arg("--state-dir")
            .arg(state.path())
            .output()
            .unwrap()
    };

    let ok = keys_create(&verify_full(
        &pg,
        "localhost",
        "coord_bin",
        &pg.tls_ca_path().unwrap(),
    ));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("pstn-auth-"));

    let refused = keys_create(&verify_full(
        &pg,
        "localhost",
        "coord_bin",
        &other.tls_ca_path().unwrap(),
    ));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("TLS to PostgreSQL at"), "{stderr}");
    assert!(
        stderr.contains("add sslrootcert=/path/ca.pem with the CA that signed it"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty(), "no key printed on failure");
}

//! The coordination server's SQL store: one interface, two backends.
//!
//! [`Store`] holds either a SQLite pool (the default: one file in the state directory,
//! nothing to install) or a PostgreSQL pool (for several coord replicas behind a load
//! balancer). It is an enum over the two pools rather than a trait object: every query is
//! written once, with `$1`-style parameters that both SQLite and PostgreSQL accept, and a
//! small macro runs it on whichever pool is open, type-checked against each driver. The
//! schema differs only in dialect details (`AUTOINCREMENT` vs identity columns, trigger
//! syntax), so each backend has its own migration folder, `coord/migrations/sqlite/` and
//! `coord/migrations/postgres/`, embedded at build time with `sqlx::migrate!` and applied
//! when the store opens. No query needs a database at build time.
//!
//! # Durability
//!
//! Every method that writes returns only after the write is durable: SQLite runs in WAL
//! mode with `synchronous=FULL` (a commit fsyncs the WAL, so a `kill -9` or power loss right
//! after an acknowledged write loses nothing; `NORMAL` would only risk the last commits on
//! power loss, but the coord acknowledges registrations to nodes, so we pay the fsync), and
//! PostgreSQL commits with its default `synchronous_commit=on`. Each write is a single
//! statement, so it is atomic on both backends; uniqueness (names, addresses, keys) is
//! enforced by the schema and surfaces as [`StoreError::Conflict`], which lets several
//! replicas allocate optimistically and retry.
//!
//! The store file holds certificate private keys and auth-key hashes: it is created with
//! mode 0600 (SQLite gives its WAL and shared-memory files the same mode).

mod audit;
mod auth_keys;
mod certificates;
mod edge_decisions;
mod funnels;
mod logins;
mod nodes;
mod records;
mod replicas;
mod row;
mod settings;
mod users;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use auth_keys::{AuthKeyHash, AuthKeyRejection};
pub use logins::UserLogin;
pub use records::{
    AuditRecord, AuthKeyRecord, CertificateOrderClaim, CertificateRecord, EdgeDecisionFilter,
    EdgeRetention, FunnelRecord, NewAuditRecord, NewAuthKey, NewEdgeDecision, NewFunnel, NewNode,
    NodePaths, NodeRecord, UserRecord,
};
pub use replicas::{
    Announcement, CHANGES_CHANNEL, ChangeListener, EDGE_LOG_CHANNEL, LIFECYCLE_LOCK_KEY, Lease,
};

/// File name of the SQLite store inside the state directory.
pub const SQLITE_FILE_NAME: &str = "coord.sqlite3";

/// The coordination server's database. Cheap to clone (pools are shared handles).
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Which database a [`Store`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendKind {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The SQLite file could not be created or opened.
    #[error(
        "cannot open the SQLite store {path}: {source}; check the state directory exists and is writable"
    )]
    OpenSqlite {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// PostgreSQL could not be reached or refused the login.
    #[error(
        "cannot connect to PostgreSQL at {url}: {source}; check the URL, the server and its credentials"
    )]
    ConnectPostgres {
        /// The URL with any password removed.
        url: String,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// The TLS connection to PostgreSQL failed (`sslmode=require`, `verify-ca` or
    /// `verify-full`): the server has no TLS, its certificate is not signed by a trusted
    /// CA, or it does not name the host, or `sslrootcert` cannot be read.
    #[error("TLS to PostgreSQL at {url} failed: {reason}; {hint}")]
    PostgresTls {
        /// The URL with any password removed.
        url: String,
        /// What the TLS layer said.
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// The store location is neither a path, a `sqlite:` URL nor a `postgres://` URL.
    #[error(
        "unsupported store location {0:?}: give a directory path, sqlite://FILE or postgres://USER@HOST/DB"
    )]
    UnsupportedLocation(String),
    /// Applying the schema migrations failed.
    #[error(
        "applying the store's schema migrations failed: {0}; the database may be from a newer Postern"
    )]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A unique value (name, address, key, hostname) is already in use.
    #[error("{what} is already taken")]
    Conflict {
        /// What collided, from the database's constraint message.
        what: String,
    },
    /// The thing asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// A stored value cannot be read back (edited by hand, or a bug).
    #[error("the store holds an unreadable value in {table}.{column}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
                what: conflict_subject(db.as_ref()),
            },
            _ => StoreError::Database(err),
        }
    }
}

impl Store {
    /// Opens the store named by `location`: a `postgres://` or `postgresql://` URL, a
    /// `sqlite://FILE` URL, or a directory path (the state directory, which gets
    /// [`SQLITE_FILE_NAME`]). Applies pending migrations.
    pub async fn open(location: &str) -> Result<Self, StoreError> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            Self::connect_postgres(location).await
        } else if let Some(file) = location.strip_prefix("sqlite://") {
            Self::open_sqlite_file(Path::new(file)).await
        } else if location.contains("://") {
            Err(StoreError::UnsupportedLocation(redact_url(location)))
        } else {
            Self::open_sqlite(Path::new(location)).await
        }
    }

    /// Opens (creating if needed) the SQLite store in `state_dir` and migrates it.
    pub async fn open_sqlite(state_dir: &Path) -> Result<Self, StoreError> {
        Self::open_sqlite_file(&state_dir.join(SQLITE_FILE_NAME)).await
    }

    /// Opens (creating if needed, mode 0600) the SQLite database file `path` and migrates
    /// it. WAL, `synchronous=FULL`, foreign keys on, 10 s busy timeout.
    pub async fn open_sqlite_file(path: &Path) -> Result<Self, StoreError> {
        let open_error =
            |source: Box<dyn std::error::Error + Send + Sync>| StoreError::OpenSqlite {
                path: path.to_owned(),
                source,
            };
        create_private_file(path).map_err(|err| open_error(err.into()))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|err| open_error(err.into()))?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self {
            backend: Backend::Sqlite(pool),
        })
    }

    /// Connects to PostgreSQL at `url` and migrates the database.
    ///
    /// TLS follows the URL like libpq: `sslmode=disable`, `prefer` (the default: TLS if
    /// the server offers it, certificate not checked), `require` (TLS, certificate not
    /// checked), `verify-ca` (signed by a trusted CA) or `verify-full` (and naming the
    /// URL's host); `sslrootcert=FILE` adds the PEM CA(s) to trust to the public roots.
    /// A TLS failure is [`StoreError::PostgresTls`], saying what to fix.
    pub async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        let connect_error = |source: sqlx::Error| StoreError::ConnectPostgres {
            url: redact_url(url),
            source,
        };
        let options = PgConnectOptions::from_str(url).map_err(connect_error)?;
        check_root_cert(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|source| match tls_failure(&source) {
                Some((reason, hint)) => StoreError::PostgresTls {
                    url: redact_url(url),
                    reason,
                    hint,
                },
                None => connect_error(source),
            })?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self {
            backend: Backend::Postgres(pool),
        })
    }

    /// Which database this store uses.
    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Closes the pool, waiting for connections to finish. Writes already acknowledged are
    /// durable whether or not this is called.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool) => pool.close().await,
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

/// Runs `$body` with `$pool` bound to whichever pool `$store` holds. The body is compiled
/// once per backend, so each driver type-checks the binds and reads.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            crate::store::Backend::Sqlite($pool) => $body,
            crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// A stored id from a typed id; ids beyond `i64::MAX` cannot exist, so they map to -1,
/// which matches no row.
pub(crate) fn db_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(-1)
}

fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    Ok(())
}

/// Names what collided, from the driver's message (`UNIQUE constraint failed: nodes.name`)
/// or PostgreSQL's constraint name (`nodes_name_key`).
fn conflict_subject(db: &dyn sqlx::error::DatabaseError) -> String {
    if let Some(constraint) = db.constraint() {
        // PostgreSQL names unique constraints TABLE_COLUMN_key.
        let unsuffixed = constraint.strip_suffix("_key").unwrap_or(constraint);
        return match db.table() {
            Some(table) => match unsuffixed
                .strip_prefix(table)
                .and_then(|c| c.strip_prefix('_'))
            {
                Some(columns) => format!("{table}.{columns}"),
                None => unsuffixed.to_owned(),
            },
            None => unsuffixed.to_owned(),
        };
    }
    let message = db.message();
    message
        .strip_prefix("UNIQUE constraint failed: ")
        .map(str::to_owned)
        .unwrap_or_else(|| message.to_owned())
}

/// Checks that the `sslrootcert` file of a PostgreSQL URL, if any, can be read and holds a
/// PEM certificate (sqlx would report a missing file without its name).
fn check_root_cert(url: &str) -> Result<(), StoreError> {
    let Some(path) = url_parameter(url, "sslrootcert") else {
        return Ok(());
    };
    let failed = |reason: String| StoreError::PostgresTls {
        url: redact_url(url),
        reason,
        hint: "sslrootcert= must name a readable PEM file with the CA certificate(s) that signed the server's certificate",
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|err| failed(format!("cannot read sslrootcert {path}: {err}")))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(failed(format!(
            "sslrootcert {path} holds no PEM certificate"
        )));
    }
    Ok(())
}

/// The value of query parameter `name` in `url`, percent-decoded.
fn url_parameter(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// If `err` is a TLS failure, what happened and what to do.
fn tls_failure(err: &sqlx::Error) -> Option<(String, &'static str)> {
    let reason = match err {
        sqlx::Error::Tls(source) => source.to_string(),
        // The handshake's certificate checks surface as I/O errors carrying rustls's error.
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            let inner = io.get_ref()?;
            inner.downcast_ref::<rustls::Error>()?;
            inner.to_string()
        }
        _ => return None,
    };
    let hint = if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        "the server's certificate is not signed by a CA the coord trusts: add sslrootcert=/path/ca.pem with the CA that signed it"
    } else if reason.contains("NotValidForName") {
        "the server's certificate does not name the host in the URL: connect by a name the certificate holds, or use sslmode=verify-ca"
    } else if reason.contains("does not support TLS") {
        "the server has TLS off: turn on ssl in postgresql.conf, or use sslmode=disable on a trusted network"
    } else if reason.contains("Expired") || reason.contains("NotValidYet") {
        "the server's certificate is outside its validity period: renew it (and check the clocks)"
    } else {
        "check sslmode, sslrootcert and the server's certificate"
    };
    Some((reason, hint))
}

/// The URL with any password replaced by `***`, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(index) => rest.split_at(index),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(
            redact_url("postgres://coord:s3cret@db.example:5432/postern?sslmode=require"),
            "postgres://coord:***@db.example:5432/postern?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://coord@db/postern"),
            "postgres://coord@db/postern"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn url_parameters_are_found_and_decoded() {
        let url = "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem#frag";
        assert_eq!(
            url_parameter(url, "sslmode").as_deref(),
            Some("verify-full")
        );
        assert_eq!(
            url_parameter(url, "sslrootcert").as_deref(),
            Some("/etc/ca x.pem")
        );
        assert_eq!(url_parameter(url, "sslcert"), None);
        assert_eq!(url_parameter("postgres://u@h/db", "sslmode"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[tokio::test]
    async fn an_unreadable_or_empty_root_certificate_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let url = format!(
            "postgres://coord:s3cretpass@127.0.0.1:1/db?sslmode=verify-full&sslrootcert={}",
            missing.display()
        );
        let err = Store::connect_postgres(&url).await.unwrap_err().to_string();
        assert!(err.contains("cannot read sslrootcert"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(!err.contains("s3cretpass"), "no password in errors: {err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let url = format!(
            "postgres://coord@127.0.0.1:1/db?sslmode=verify-full&sslrootcert={}",
            empty.display()
        );
        let err = Store::connect_postgres(&url).await.unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}

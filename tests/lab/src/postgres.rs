//! A throwaway PostgreSQL cluster for store tests.
//!
//! ```no_run
//! # fn main() -> Result<(), postern_lab::LabError> {
//! let pg = postern_lab::postgres::PostgresCluster::start()?;
//! let url = pg.url(); // postgres://postgres@127.0.0.1:PORT/postgres
//! let db = pg.create_database("store_test")?; // a fresh database per test, if you like
//! # let _ = (url, db);
//! # Ok(()) }
//! ```
//!
//! The cluster lives in its own temporary directory (data, unix socket, log), listens on a
//! free loopback port with `trust` authentication, and is stopped (`pg_ctl -m immediate
//! stop`) and deleted when the handle is dropped. `initdb` refuses to run as root, so when
//! the tests run as root the server runs as the `postgres` user, which owns the directory.
//!
//! [`PostgresCluster::start_tls`] starts one that speaks TLS only on TCP (`ssl=on`, and
//! `pg_hba.conf` rejects TCP connections without TLS), with a server certificate for
//! `localhost` and `127.0.0.1` from a throwaway CA made for it:
//!
//! ```no_run
//! # fn main() -> Result<(), postern_lab::LabError> {
//! let pg = postern_lab::postgres::PostgresCluster::start_tls()?;
//! if let Some(ca) = pg.tls_ca_path() {
//!     let url = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(), ca.display());
//! #   let _ = url;
//! }
//! # Ok(()) }
//! ```

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::unistd::{Gid, Uid, User, chown};

use crate::LabError;
use crate::tools::{free_tcp_port, log_tail, run};

/// A running throwaway PostgreSQL cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<(Uid, Gid)>,
    tls: bool,
    stopped: bool,
}

impl PostgresCluster {
    /// Creates a cluster with `initdb` and starts it with `pg_ctl -w`, on a free loopback port.
    ///
    /// Takes about a second. Fails if the PostgreSQL server is not installed
    /// (`/usr/lib/postgresql/*/bin/initdb`; run `scripts/install-deps`), if we are root and
    /// there is no `postgres` user, or if the server does not start (the error carries the
    /// end of the server log).
    pub fn start() -> Result<Self, LabError> {
        Self::start_with_tls(false)
    }

    /// Like [`PostgresCluster::start`], but TCP connections must use TLS: the server has
    /// `ssl=on` with a certificate for `localhost` and `127.0.0.1` signed by a CA made for
    /// this cluster ([`PostgresCluster::tls_ca_path`]), and `pg_hba.conf` rejects TCP
    /// connections without TLS (`hostnossl ... reject`). The unix socket stays plain.
    /// `psql` (libpq's default `sslmode=prefer`) keeps working.
    ///
    /// Fails like [`PostgresCluster::start`], or if the certificates cannot be made.
    pub fn start_tls() -> Result<Self, LabError> {
        Self::start_with_tls(true)
    }

    fn start_with_tls(tls: bool) -> Result<Self, LabError> {
        let bin = server_bin_dir()?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = User::from_name("postgres")
                .map_err(|e| LabError::io("looking up the postgres user", e.into()))?
                .ok_or_else(|| LabError::MissingTool {
                    tool: "the `postgres` user (initdb refuses to run as root)".to_owned(),
                    looked: "/etc/passwd".to_owned(),
                })?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("postern-lab-pg-")
            .tempdir()
            .map_err(|e| LabError::io("creating the PostgreSQL temp dir", e))?;
        if let Some((uid, gid)) = run_as {
            chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| LabError::io("handing the temp dir to the postgres user", e.into()))?;
        }
        let mut cluster = Self {
            dir,
            bin,
            port: 0,
            run_as,
            tls,
            stopped: true,
        };
        cluster.init()?;
        if tls {
            cluster.set_up_tls()?;
        }
        // The port was free a moment ago; another test may take it first: try a few.
        let mut last_error = None;
        for _ in 0..4 {
            cluster.port = free_tcp_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.stopped = false;
                    return Ok(cluster);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| LabError::Invalid("PostgreSQL never started".into())))
    }

    /// The connection URL of the `postgres` database as the `postgres` superuser, e.g.
    /// `postgres://postgres@127.0.0.1:55432/postgres`. No password is needed (`trust`).
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The connection URL of database `name` on this cluster (it must exist: see
    /// [`PostgresCluster::create_database`]).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The PEM file of the CA that signed the server's certificate, for clients' trust
    /// (`sslrootcert=`); `None` unless started with [`PostgresCluster::start_tls`].
    pub fn tls_ca_path(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join(TLS_CA_FILE))
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates database `name` and returns its URL. Handy to give each test its own database
    /// on a shared cluster.
    ///
    /// `name` must be lowercase ASCII letters, digits and `_` (it is not quoted); fails
    /// otherwise, or if the database exists.
    pub fn create_database(&self, name: &str) -> Result<String, LabError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(LabError::Invalid(format!(
                "database name {name:?}: use lowercase letters, digits and _"
            )));
        }
        self.psql(&format!("CREATE DATABASE {name}"))?;
        Ok(self.database_url(name))
    }

    /// Runs SQL with `psql` against the `postgres` database and returns its unaligned,
    /// tuples-only output (`psql -At`), e.g. `"2\n"` for `select 1+1`.
    ///
    /// Fails with the server's message if the SQL fails (`ON_ERROR_STOP` is set), or if
    /// `psql` is missing.
    pub fn psql(&self, sql: &str) -> Result<String, LabError> {
        let psql = crate::tools::find_program("psql")?;
        run(
            "running SQL with psql",
            Command::new(psql)
                .args([
                    "-X",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    &self.url(),
                    "-c",
                    sql,
                ])
                .env("PGCONNECT_TIMEOUT", "10"),
        )
    }

    /// The path of the server log, for diagnosing a failing test.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn init(&self) -> Result<(), LabError> {
        let data = self.data_dir();
        run(
            "initdb of a throwaway PostgreSQL cluster",
            self.as_server_user(self.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale"])
                .arg("--no-sync"),
        )
        .map(drop)
    }

    /// Writes the CA, the server's certificate and key (owned by the server user, 0600)
    /// and a `pg_hba.conf` that rejects TCP without TLS.
    fn set_up_tls(&self) -> Result<(), LabError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let certs = TlsFiles::generate()?;
        let write = |name: &str, text: &str, mode: u32| -> Result<(), LabError> {
            let path = self.dir.path().join(name);
            let what = format!("writing {}", path.display());
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| LabError::io(what.clone(), e))?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .map_err(|e| LabError::io(what.clone(), e))?;
            if let Some((uid, gid)) = self.run_as {
                chown(&path, Some(uid), Some(gid))
                    .map_err(|e| LabError::io(what.clone(), e.into()))?;
            }
            Ok(())
        };
        write(TLS_CA_FILE, &certs.ca_pem, 0o644)?;
        write("server.crt", &certs.cert_pem, 0o644)?;
        write("server.key", &certs.key_pem, 0o600)?;
        write(
            "data/pg_hba.conf",
            "# postern-lab: TCP only with TLS\n\
             local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n",
            0o600,
        )
    }

    fn pg_ctl_start(&self) -> Result<(), LabError> {
        let log = self.log_path();
        // A fresh log per attempt, so the error shows this attempt's reason.
        let _ = fs::remove_file(&log);
        let mut options = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {} -c fsync=off -c full_page_writes=off",
            self.dir.path().display(),
            self.port
        );
        if self.tls {
            let dir = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
            ));
        }
        let result = run(
            "pg_ctl start",
            self.as_server_user(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-o", &options, "-l"])
                .arg(&log)
                .args(["-w", "-t", "30", "start"]),
        );
        match result {
            Ok(_) => Ok(()),
            Err(LabError::Command {
                what,
                command,
                status,
                stderr,
            }) => Err(LabError::Command {
                what,
                command,
                status,
                stderr: format!("{stderr}\nserver log:\n{}", log_tail(&log)),
            }),
            Err(e) => Err(e),
        }
    }

    fn as_server_user(&self, program: PathBuf) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let stopped = run(
            "pg_ctl stop",
            self.as_server_user(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "10", "stop"]),
        );
        if stopped.is_err() {
            kill_postmaster(&self.data_dir());
        }
        self.stopped = true;
        // The TempDir field removes the directory after this.
    }
}

/// File name of the CA certificate of a TLS cluster, in its temp dir.
const TLS_CA_FILE: &str = "ca.pem";

/// A throwaway CA and the server certificate a TLS cluster serves.
struct TlsFiles {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TlsFiles {
    fn generate() -> Result<Self, LabError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let fail = |e: rcgen::Error| {
            LabError::Invalid(format!("generating the PostgreSQL TLS certificates: {e}"))
        };
        let ca_key = KeyPair::generate().map_err(fail)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "postern-lab PostgreSQL CA (test only)");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
        let key = KeyPair::generate().map_err(fail)?;
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(fail)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(fail)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Last resort when `pg_ctl stop` failed: SIGKILL the pid in `postmaster.pid`.
fn kill_postmaster(data: &Path) {
    let Ok(text) = fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    if let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline
            && nix::sys::signal::kill(pid, None::<nix::sys::signal::Signal>).is_ok()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that holds `initdb`.
fn server_bin_dir() -> Result<PathBuf, LabError> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| LabError::MissingTool {
            tool: "PostgreSQL server (initdb)".to_owned(),
            looked: "/usr/lib/postgresql/*/bin/initdb".to_owned(),
        })
}

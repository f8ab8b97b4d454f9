//! Let's Encrypt's ACME test server, pebble (Debian's package), with a throwaway TLS
//! certificate for its API and, in strict mode, `pebble-challtestsrv` as mock DNS.
//!
//! ```no_run
//! # fn main() -> Result<(), postern_lab::LabError> {
//! use postern_lab::pebble::{Pebble, PebbleConfig, PebbleMode};
//! let pebble = Pebble::start(PebbleConfig {
//!     mode: PebbleMode::Strict,
//!     http_port: 5002, // where the test's HTTP-01 responder listens
//!     ..PebbleConfig::default()
//! })?;
//! let directory = pebble.directory_url(); // https://127.0.0.1:PORT/dir
//! let api_ca = pebble.api_ca_path();      // trust this to talk to the ACME API
//! let root = pebble.fetch_root()?;        // issued chains verify against this (new each start)
//! # let _ = (directory, api_ca, root); Ok(()) }
//! ```
//!
//! - Always-valid mode (`PEBBLE_VA_ALWAYS_VALID=1`) issues without checking challenges.
//! - Strict mode really validates: every DNS name resolves (mock DNS) to
//!   [`PebbleConfig::dns_answer`], and pebble dials `name:http_port` (HTTP-01) or
//!   `name:tls_port` (TLS-ALPN-01) there. challtestsrv's own responders are disabled so
//!   they do not take the ports the client under test must answer on.
//! - `PEBBLE_VA_NOSLEEP=1` (no random 0 to 15 s wait before validating) and
//!   `PEBBLE_WFE_NONCEREJECT=0` (pebble otherwise rejects 5% of good nonces with `badNonce`)
//!   keep tests fast and deterministic.
//! - Debian ships no test certificates for pebble's own API, so each start makes a CA and a
//!   server certificate (SANs `localhost`, `127.0.0.1` and the listen address):
//!   [`Pebble::api_ca_pem`]. Certificates pebble *issues* chain to a different root,
//!   regenerated at every start: fetch it with [`Pebble::fetch_root`].

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::netns::Netns;
use crate::tools::{find_program, free_tcp_port, free_tcp_udp_port, poll_until};
use crate::{LabError, LabProcess};

/// Whether pebble checks challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PebbleMode {
    /// Every challenge is accepted unchecked (`PEBBLE_VA_ALWAYS_VALID=1`).
    AlwaysValid,
    /// Challenges are really validated, against mock DNS.
    Strict,
}

/// What [`Pebble::start`] sets up.
#[derive(Debug, Clone)]
pub struct PebbleConfig {
    /// Always-valid or strict.
    pub mode: PebbleMode,
    /// The port pebble dials for HTTP-01 validation (default 5002; 80 for a realistic
    /// ingress inside a namespace). Tests running in parallel on loopback need distinct ports.
    pub http_port: u16,
    /// The port pebble dials for TLS-ALPN-01 validation (default 5001; 443 in a namespace).
    pub tls_port: u16,
    /// The IPv4 address the mock DNS gives for every name (strict mode), i.e. where the
    /// challenge responder runs. Default 127.0.0.1.
    pub dns_answer: Ipv4Addr,
}

impl Default for PebbleConfig {
    /// Strict mode, HTTP-01 on 5002, TLS-ALPN-01 on 5001, every name resolving to 127.0.0.1.
    fn default() -> Self {
        Self {
            mode: PebbleMode::Strict,
            http_port: 5002,
            tls_port: 5001,
            dns_answer: Ipv4Addr::LOCALHOST,
        }
    }
}

/// A running pebble (and mock DNS in strict mode); killed and deleted on drop.
#[derive(Debug)]
pub struct Pebble {
    // Processes first: they are stopped before their temp dir goes.
    pebble: LabProcess,
    challtestsrv: Option<LabProcess>,
    netns: Option<PathBuf>,
    addr: Ipv4Addr,
    acme_port: u16,
    management_port: u16,
    api_ca_pem: String,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts pebble on 127.0.0.1 with free ports for its API, management API and mock DNS,
    /// and waits (up to 20 s) until they accept connections.
    ///
    /// Fails if pebble is not installed (run `scripts/install-deps`) or does not come up
    /// (the error carries its log).
    pub fn start(config: PebbleConfig) -> Result<Self, LabError> {
        let ports = Ports {
            acme: free_tcp_port()?,
            management: free_tcp_port()?,
            dns: free_tcp_udp_port()?,
            dns_management: free_tcp_port()?,
        };
        Self::launch(None, Ipv4Addr::LOCALHOST, ports, &config)
    }

    /// Starts pebble inside `netns`, listening on `addr` (a lab host's address): ACME API on
    /// 14000, management on 15000, mock DNS on 8053 (its management on 8055). Clients must
    /// reach `addr` from their namespace; [`Pebble::fetch_root`] runs inside `netns`.
    pub fn start_in(netns: &Netns, addr: Ipv4Addr, config: PebbleConfig) -> Result<Self, LabError> {
        let ports = Ports {
            acme: 14000,
            management: 15000,
            dns: 8053,
            dns_management: 8055,
        };
        Self::launch(Some(netns), addr, ports, &config)
    }

    /// The ACME directory URL, `https://ADDR:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}:{}/dir", self.addr, self.acme_port)
    }

    /// The management API's base URL, `https://ADDR:PORT` (`/roots/0`, `/intermediates/0`,
    /// `/cert-status-by-serial/SERIAL`), served with the same certificate as the ACME API.
    pub fn management_url(&self) -> String {
        format!("https://{}:{}", self.addr, self.management_port)
    }

    /// The PEM of the CA that signed the certificate pebble serves its APIs with: add it to
    /// the ACME client's trust store (reqwest `add_root_certificate`, a rustls
    /// `RootCertStore`, instant-acme `Account::builder_with_root`).
    pub fn api_ca_pem(&self) -> &str {
        &self.api_ca_pem
    }

    /// The same CA as a file, for clients that want a path.
    pub fn api_ca_path(&self) -> PathBuf {
        self.dir.path().join("api-ca.pem")
    }

    /// Fetches the root that issued certificates chain to (`GET /roots/0` on the management
    /// API), as PEM. It changes at every pebble start: never bake it into a test.
    ///
    /// Blocks (it runs its own small runtime on a thread, inside pebble's namespace if any),
    /// so it may be called from sync or async tests. Fails if the API does not answer 200.
    pub fn fetch_root(&self) -> Result<String, LabError> {
        self.fetch_management("/roots/0")
    }

    /// Fetches any management API path (e.g. `/intermediates/0`) as text; see
    /// [`Pebble::fetch_root`].
    pub fn fetch_management(&self, path: &str) -> Result<String, LabError> {
        let url = format!("{}{path}", self.management_url());
        let ca = self.api_ca_pem.clone();
        let netns = self.netns.clone();
        let what = format!("fetching {url}");
        std::thread::spawn(move || -> Result<String, LabError> {
            if let Some(path) = &netns {
                crate::netns::enter(path)?;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| LabError::io("building a tokio runtime", e))?;
            runtime.block_on(async {
                let cert = reqwest::Certificate::from_pem(ca.as_bytes())
                    .map_err(|e| LabError::http(&what, e))?;
                let client = reqwest::Client::builder()
                    .add_root_certificate(cert)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| LabError::http(&what, e))?;
                let response = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| LabError::http(&what, e))?;
                let status = response.status();
                let body = response
                    .text()
                    .await
                    .map_err(|e| LabError::http(&what, e))?;
                if status.is_success() {
                    Ok(body)
                } else {
                    Err(LabError::http(&what, format!("{status}: {body}")))
                }
            })
        })
        .join()
        .map_err(|_| LabError::Invalid("the fetch thread panicked".into()))?
    }

    /// The end of pebble's log, for diagnosing a failing test.
    pub fn log_tail(&self) -> String {
        self.pebble.log_tail()
    }

    /// The path of pebble's log file.
    pub fn log_path(&self) -> &Path {
        self.pebble.log_path()
    }

    /// How many certificates pebble has issued since it started (its log has one
    /// `Issued certificate serial ... for order ...` line per certificate): count before
    /// and after a step to prove it ordered nothing. An unreadable log counts as none.
    pub fn issued_certificates(&self) -> usize {
        std::fs::read_to_string(self.pebble.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("Issued certificate serial"))
            .count()
    }

    fn launch(
        netns: Option<&Netns>,
        addr: Ipv4Addr,
        ports: Ports,
        config: &PebbleConfig,
    ) -> Result<Self, LabError> {
        let pebble_bin = find_program("pebble")?;
        let dir = tempfile::Builder::new()
            .prefix("postern-lab-pebble-")
            .tempdir()
            .map_err(|e| LabError::io("creating the pebble temp dir", e))?;
        let tls = ApiCertificate::generate(addr)?;
        let write = |name: &str, text: &str| -> Result<PathBuf, LabError> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)
                .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
            Ok(path)
        };
        write("api-ca.pem", &tls.ca_pem)?;
        let cert = write("api-cert.pem", &tls.cert_pem)?;
        let key = write("api-key.pem", &tls.key_pem)?;
        let pebble_config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("{addr}:{}", ports.acme),
                "managementListenAddress": format!("{addr}:{}", ports.management),
                "certificate": cert,
                "privateKey": key,
                "httpPort": config.http_port,
                "tlsPort": config.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_path = write("pebble-config.json", &pebble_config.to_string())?;

        let command = |program: &Path| -> Command {
            let mut cmd = match netns {
                Some(ns) => ns.command(&program.to_string_lossy()),
                None => Command::new(program),
            };
            cmd.current_dir(dir.path());
            cmd
        };

        let mut args = vec![
            "-config".to_owned(),
            config_path.to_string_lossy().into_owned(),
        ];
        let mut challtestsrv = None;
        if config.mode == PebbleMode::Strict {
            let bin = find_program("pebble-challtestsrv")?;
            let mut cmd = command(&bin);
            cmd.args(["-dns01", &format!("{addr}:{}", ports.dns)])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("{addr}:{}", ports.dns_management)])
                .args(["-defaultIPv4", &config.dns_answer.to_string()])
                .args(["-defaultIPv6", ""]);
            challtestsrv = Some(LabProcess::spawn(
                "pebble-challtestsrv",
                cmd,
                &dir.path().join("challtestsrv.log"),
            )?);
            args.push("-dnsserver".to_owned());
            args.push(format!("{addr}:{}", ports.dns));
        }
        let mut cmd = command(&pebble_bin);
        cmd.args(&args)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0");
        if config.mode == PebbleMode::AlwaysValid {
            cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
        }
        let mut pebble = LabProcess::spawn("pebble", cmd, &dir.path().join("pebble.log"))?;

        let mut wanted = vec![ports.acme, ports.management];
        if challtestsrv.is_some() {
            wanted.push(ports.dns);
        }
        let probe = move || -> bool {
            wanted.iter().all(|port| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((addr, *port)),
                    Duration::from_millis(300),
                )
                .is_ok()
            })
        };
        let log = pebble.log_path().to_owned();
        let dns_log = dir.path().join("challtestsrv.log");
        poll_until(
            "pebble",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                pebble.check_running()?;
                if let Some(dns) = challtestsrv.as_mut() {
                    dns.check_running()?;
                }
                let up = match netns {
                    Some(ns) => ns.run_in(probe.clone())?,
                    None => probe(),
                };
                Ok(up.then_some(()))
            },
            || {
                format!(
                    "check pebble's log:\n{}\nchalltestsrv's log:\n{}",
                    crate::tools::log_tail(&log),
                    crate::tools::log_tail(&dns_log)
                )
            },
        )?;
        Ok(Self {
            pebble,
            challtestsrv,
            netns: netns.map(Netns::path),
            addr,
            acme_port: ports.acme,
            management_port: ports.management,
            api_ca_pem: tls.ca_pem,
            dir,
        })
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.pebble.stop();
        if let Some(dns) = self.challtestsrv.as_mut() {
            dns.stop();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    acme: u16,
    management: u16,
    dns: u16,
    dns_management: u16,
}

/// A throwaway CA and the server certificate pebble serves its APIs with.
struct ApiCertificate {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl ApiCertificate {
    fn generate(addr: Ipv4Addr) -> Result<Self, LabError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let fail =
            |e: rcgen::Error| LabError::Invalid(format!("generating pebble's API cert: {e}"));
        let ca_key = KeyPair::generate().map_err(fail)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "postern-lab pebble API CA (test only)");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;

        let key = KeyPair::generate().map_err(fail)?;
        let mut names = vec![
            "localhost".to_owned(),
            "pebble".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        if addr != Ipv4Addr::LOCALHOST {
            names.push(addr.to_string());
        }
        let mut server = CertificateParams::new(names).map_err(fail)?;
        server.distinguished_name.push(DnType::CommonName, "pebble");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(fail)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

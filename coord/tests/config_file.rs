//! `coord.toml` and `relay.toml` through the real binary: the examples in `deploy/` pass
//! `check-config`, a bad file is refused naming FILE:LINE:COLUMN and the key, a missing
//! secret is named, and `serve --config` / `relay --config` take their listeners from the
//! file unless a flag overrides them.

#![allow(clippy::unwrap_used, clippy::panic)] // test code

mod loopback_http;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use loopback_http::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_postern-coord");

/// The secrets `deploy/coord.example.toml` names by variable.
const COORD_SECRET_VARS: [&str; 2] = [
    "POSTERN_COORD_DATABASE_URL",
    "POSTERN_COORD_OIDC_CLIENT_SECRET",
];

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn check_config(args: &[&str], file: &Path, secrets: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("check-config")
        .args(args)
        .arg("--config")
        .arg(file)
        .env_clear();
    for name in secrets {
        command.env(name, "postgres://postern:example@db.example.com/postern");
    }
    command.output().unwrap()
}

/// Kills the process when the test ends, also on panic.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Waits until `addr` answers `path` with 200, or fails with the process's logs.
    fn wait_for_ok(&mut self, addr: SocketAddr, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut logs = String::new();
                self.0
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut logs)
                    .unwrap();
                panic!("exited ({status}) before answering on {addr}:\n{logs}");
            }
            match http_get(addr, path) {
                Ok(answer) => return answer,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("nothing answered on {addr}: {e}"),
            }
        }
    }
}

#[test]
fn the_example_coord_config_passes_check_config() {
    let output = check_config(&[], &deploy("coord.example.toml"), &COORD_SECRET_VARS);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check-config refused deploy/coord.example.toml ({}):\n{stderr}",
        output.status
    );
    assert!(
        stdout
            .contains("ok (listen 0.0.0.0:8443, admin 127.0.0.1:8444, relay embedded, login OIDC)"),
        "stdout: {stdout}"
    );
    assert!(
        !stdout.contains("example@") && !stderr.contains("example@"),
        "a secret was printed"
    );
}

#[test]
fn the_example_coord_config_without_its_secret_is_refused_naming_it() {
    let output = check_config(&[], &deploy("coord.example.toml"), &COORD_SECRET_VARS[..1]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(
            "coord.example.toml: oidc.client_secret: the environment variable POSTERN_COORD_OIDC_CLIENT_SECRET is not set"
        ),
        "stderr: {stderr}"
    );
}

#[test]
fn the_example_relay_config_passes_check_config() {
    let output = check_config(&["--relay"], &deploy("relay.example.toml"), &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check-config refused deploy/relay.example.toml ({}):\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("ok (relay on 0.0.0.0:443, STUN on 0.0.0.0:3478, TLS)"),
        "stdout: {stdout}"
    );
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_with_file_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coord.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8443\"\n\n[relay]\nenabled = true\nurll = \"https://x/relay\"\n",
    )
    .unwrap();
    let output = check_config(&[], &file, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "postern-coord: {}:5:1: relay.urll: unknown field `urll`, expected one of `enabled`, `url`, `map`",
            file.display()
        )),
        "stderr: {stderr}"
    );

    std::fs::write(&file, "[edge_log]\nkeep = -3\n").unwrap();
    let output = check_config(&[], &file, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:8: edge_log.keep: invalid value: integer `-3`, expected u32",
            file.display()
        )),
        "stderr: {stderr}"
    );

    let relay = dir.path().join("relay.toml");
    std::fs::write(&relay, "listen = \"127.0.0.1:443\"\n[stun]\nport = 3478\n").unwrap();
    let output = check_config(&["--relay"], &relay, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3:1: stun.port: unknown field `port`, expected `listen`",
            relay.display()
        )),
        "stderr: {stderr}"
    );
}

#[test]
fn a_relay_file_without_an_allow_file_or_tls_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let relay = dir.path().join("relay.toml");
    std::fs::write(&relay, "listen = \"127.0.0.1:4443\"\n").unwrap();
    let output = check_config(&["--relay"], &relay, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("no allow file: pass --allow-file FILE or set allow_file"),
        "stderr: {stderr}"
    );
    std::fs::write(
        &relay,
        "listen = \"0.0.0.0:443\"\nallow_file = \"nodes.txt\"\n",
    )
    .unwrap();
    let output = check_config(&["--relay"], &relay, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("listen: 0.0.0.0:443 is not loopback: add a [tls] section"),
        "stderr: {stderr}"
    );
}

/// The file's listener is used; `--listen` on the command line replaces it.
#[test]
fn serve_takes_its_settings_from_the_file_and_a_flag_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let from_file: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let from_flag: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let file = dir.path().join("coord.toml");
    std::fs::write(
        &file,
        format!(
            "state_dir = {:?}\nlisten = \"{from_file}\"\nadmin_listen = \"127.0.0.1:0\"\n\
             tailnet_domain = \"example.internal\"\n[relay]\nenabled = true\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let spawn = |extra: &[String]| {
        Running(
            Command::new(BIN)
                .arg("serve")
                .arg("--config")
                .arg(&file)
                .args(extra)
                .env_remove("POSTERN_COORD_STATE_DIR")
                .env_remove("POSTERN_COORD_DATABASE")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };

    let mut coord = spawn(&[]);
    let health = coord.wait_for_ok(from_file, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        dir.path().join("state/coord.key").exists(),
        "state_dir from the file was not used"
    );
    // relay.enabled from the file: the embedded relay answers at /relay (an upgrade is
    // expected, so a plain GET is refused by the relay rather than 404 from the router).
    let relay = http_get(from_file, "/relay").unwrap();
    assert!(!relay.starts_with("HTTP/1.1 404"), "{relay}");
    drop(coord);

    let mut coord = spawn(&["--listen".into(), from_flag.to_string()]);
    let health = coord.wait_for_ok(from_flag, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        TcpStream::connect_timeout(&from_file, Duration::from_millis(500)).is_err(),
        "the file's listener is still used although --listen overrides it"
    );
}

/// `keys create --config`: the state directory comes from the file.
#[test]
fn keys_create_reads_the_state_directory_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coord.toml");
    std::fs::write(
        &file,
        format!("state_dir = {:?}\n", dir.path().join("from-file")),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["keys", "create", "--config"])
        .arg(&file)
        .env_remove("POSTERN_COORD_STATE_DIR")
        .env_remove("POSTERN_COORD_DATABASE")
        .env_remove("POSTERN_COORD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pstn-auth-"));
    assert!(dir.path().join("from-file/coord.key").exists());
}

/// `relay --config`: the allow file and listener come from the file; `--listen` wins.
#[test]
fn relay_takes_its_settings_from_the_file_and_a_flag_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("nodes.txt");
    std::fs::write(&allow, "# nobody yet\n").unwrap();
    let from_file: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let from_flag: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        format!("listen = \"{from_file}\"\nallow_file = {allow:?}\n"),
    )
    .unwrap();
    let mut relay = Running(
        Command::new(BIN)
            .args(["relay", "--config"])
            .arg(&file)
            .args(["--listen", &from_flag.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let answer = relay.wait_for_ok(from_flag, "/relay");
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(
        TcpStream::connect_timeout(&from_file, Duration::from_millis(500)).is_err(),
        "the file's listener is used although --listen overrides it"
    );
}

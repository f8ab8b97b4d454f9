//! Mints an OIDC login gate's session cookie, for the funnel benchmark
//! (`bench/funnel/run.sh`), with the gate's own cookie code and the funnel's session key.
//!
//! ```text
//! bench_session_cookie KEY_FILE HOSTNAME EMAIL TTL_SECS
//! ```
//!
//! Prints the value of `__Host-postern-session` that the gate would have set after a
//! login of `EMAIL` on `HOSTNAME`, valid for `TTL_SECS`. The key file is the gate's
//! `session_key_file` (made, 0600, when missing, exactly as the ingress does). Whoever can
//! read that file can mint sessions this way: it is the gate's secret.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use postern_ingress::gate::oidc::{CookieCodec, Session, load_or_create_session_key};

fn main() -> ExitCode {
    match run() {
        Ok(cookie) => match writeln!(std::io::stdout(), "{cookie}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "bench_session_cookie: {error}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key_file, host, email, ttl] = args.as_slice() else {
        return Err("usage: bench_session_cookie KEY_FILE HOSTNAME EMAIL TTL_SECS".into());
    };
    let ttl: u64 = ttl
        .parse()
        .map_err(|_| format!("TTL_SECS {ttl:?} is not a number of seconds"))?;
    let key = load_or_create_session_key(&PathBuf::from(key_file)).map_err(|e| e.to_string())?;
    let codec = CookieCodec::new(key).map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let session = Session {
        host: host.to_ascii_lowercase(),
        sub: format!("bench-{email}"),
        email: email.clone(),
        name: None,
        groups: Vec::new(),
        exp: now + ttl,
    };
    codec
        .encode("session", &session)
        .map_err(|e| format!("encoding the session: {e}"))
}

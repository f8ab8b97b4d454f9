//! `postern login` and `postern logout`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use postern_node::daemon::api_client::ApiClientError;
use postern_node::daemon::state::StateDir;
use postern_node::daemon::{LoginProgress, LoginRequest, RuntimeError, login};
use postern_proto::control::AuthKeySecret;

use crate::config::{Global, machine_hostname};
use crate::{EXIT_FAILURE, EXIT_USAGE, fail};

/// Arguments of `postern login`.
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The coordination server, e.g. http://coord.example.com:8443 (config: `coord`).
    #[arg(long, value_name = "URL")]
    coord: Option<String>,

    /// Register with this auth key (from `postern-coord keys create`). It shows in the
    /// process list: prefer --auth-key-file or $POSTERN_AUTH_KEY.
    #[arg(
        long,
        env = "POSTERN_AUTH_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    auth_key: Option<String>,

    /// Read the auth key from FILE (config: `auth_key_file`).
    #[arg(long, value_name = "FILE", conflicts_with = "auth_key")]
    auth_key_file: Option<PathBuf>,

    /// The hostname to register; the coord derives the node's name from it. Default: this
    /// machine's hostname (config: `hostname`).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,

    /// Without an auth key: log in with a device code (open a URL on any device, phone
    /// included, and enter the code shown) instead of a browser link. Needs an identity
    /// provider that offers the device authorization grant.
    #[arg(long, conflicts_with_all = ["auth_key", "auth_key_file"])]
    device: bool,

    /// Print the result as JSON on standard output.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    global: Global,
}

/// Arguments of `postern logout`.
#[derive(Debug, Args)]
pub(crate) struct LogoutArgs {
    #[command(flatten)]
    global: Global,
}

/// Runs `postern login`.
pub(crate) fn run_login(args: LoginArgs) -> ExitCode {
    let (file, state_dir) = match args.global.resolve() {
        Ok(resolved) => resolved,
        Err((message, code)) => return fail(&message, code),
    };
    let Some(coord) = args.coord.or(file.coord) else {
        return fail(
            "give the coordination server with --coord URL (or `coord` in the config file)",
            EXIT_USAGE,
        );
    };
    let auth_key = match (args.auth_key, args.auth_key_file.or(file.auth_key_file)) {
        (Some(key), _) => Some(AuthKeySecret::new(key.trim())),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Some(AuthKeySecret::new(text.trim())),
            Ok(_) => {
                return fail(
                    &format!("auth key file {} is empty", path.display()),
                    EXIT_USAGE,
                );
            }
            Err(e) => {
                return fail(
                    &format!("cannot read the auth key file {}: {e}", path.display()),
                    EXIT_USAGE,
                );
            }
        },
        (None, None) => None,
    };
    let hostname = args
        .hostname
        .or(file.hostname)
        .unwrap_or_else(machine_hostname);
    let state = match StateDir::open(&state_dir) {
        Ok(state) => state,
        Err(e) => return fail(&e.to_string(), EXIT_USAGE),
    };
    let runtime = match crate::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let request = LoginRequest {
        coord_url: coord,
        auth_key,
        hostname,
        device: args.device,
    };
    let live = std::io::stderr().is_terminal();
    let mut awaiting_approval = false;
    let result = runtime.block_on(login(&state, request, |progress| match progress {
        LoginProgress::LoginUrl(url) => {
            eprintln!("\nTo authorize this node, open:\n\n    {url}\n");
        }
        LoginProgress::DeviceCode {
            uri,
            complete_uri,
            code,
        } => {
            eprintln!("\nTo authorize this node, open {uri} on any device and enter the code:\n\n    {code}\n");
            if let Some(complete) = complete_uri {
                eprintln!("(or open {complete}, which has the code filled in)\n");
            }
        }
        LoginProgress::NeedsApproval { name } => {
            if live {
                eprint!("\r\x1b[K");
            }
            let name = if name.is_empty() { "NODE".to_owned() } else { name };
            eprintln!(
                "waiting for an admin to approve this device (postern-coord nodes approve {name})"
            );
            awaiting_approval = true;
        }
        LoginProgress::Waiting(waited) if live => {
            let what = if awaiting_approval {
                "waiting for an admin's approval"
            } else {
                "waiting for the coord to authorize this node"
            };
            eprint!("\r{what} ({}s)", waited.as_secs());
            let _ = std::io::stderr().flush();
        }
        _ => {}
    }));
    if live {
        eprint!("\r\x1b[K");
    }
    match result {
        Ok(login) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "coord_url": login.coord_url,
                        "coord_key": login.coord_key.to_string(),
                        "node_id": login.node_id.0,
                        "name": login.name,
                        "state_dir": state_dir,
                    })
                );
            } else {
                eprintln!(
                    "logged in to {} as {} ({}); start the node with `postern up`",
                    login.coord_url, login.name, login.node_id
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = match e {
                RuntimeError::BadCoordUrl { .. }
                | RuntimeError::LoggedInElsewhere { .. }
                | RuntimeError::State(_) => EXIT_USAGE,
                _ => EXIT_FAILURE,
            };
            fail(&e.to_string(), code)
        }
    }
}

/// Runs `postern logout`.
pub(crate) fn run_logout(args: &LogoutArgs) -> ExitCode {
    let (_, state_dir) = match args.global.resolve() {
        Ok(resolved) => resolved,
        Err((message, code)) => return fail(&message, code),
    };
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    match runtime.block_on(crate::up::stop_daemon(&client, Duration::from_secs(10))) {
        Ok(()) => eprintln!("stopped the running node"),
        Err(ApiClientError::NotRunning { .. }) => {}
        Err(e) => return fail(&format!("cannot stop the running node: {e}"), EXIT_FAILURE),
    }
    let state = match StateDir::open(&state_dir) {
        Ok(state) => state,
        Err(e) => return fail(&e.to_string(), EXIT_USAGE),
    };
    match state.logout() {
        Ok(()) => {
            eprintln!(
                "logged out: this node's key is forgotten (the coord lists the node until an admin removes it)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), EXIT_FAILURE),
    }
}

//! `postern inspect list|show|replay`: the captured requests of the running node.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use postern_node::daemon::api::InspectAnswer;
use postern_node::inspect::client::{ClientError, InspectClient};
use postern_node::inspect::{EntryFilter, ReplayChanges};

use crate::config::Global;
use crate::serve::{api_fail, print_json};
use crate::{EXIT_FAILURE, EXIT_NOT_READY, EXIT_USAGE, fail};

/// Arguments of `postern inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    #[command(subcommand)]
    command: InspectCommand,
}

#[derive(Debug, Subcommand)]
enum InspectCommand {
    /// List captured requests, newest first: id, time, source, method, path, status,
    /// duration, and the gate and identity that admitted it.
    List(ListArgs),
    /// Show one captured exchange: request line, headers, body, response, timing.
    ///
    /// Secret headers (Authorization, cookies, signatures) are masked unless --reveal.
    Show(ShowArgs),
    /// Send a captured request again to the local service, bypassing the gates.
    ///
    /// The replay is captured too, linked to the original (X-Postern-Replay-Of).
    Replay(ShowArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// The inspector's URL (default: ask the running node where it listens).
    #[arg(long, value_name = "URL")]
    inspect_url: Option<String>,

    /// Print JSON on standard output.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    global: Global,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only entries whose path contains this text.
    #[arg(long)]
    path: Option<String>,

    /// Only this method.
    #[arg(long)]
    method: Option<String>,

    /// Only this status (404) or class (4xx).
    #[arg(long)]
    status: Option<String>,

    /// At most this many entries.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,

    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The entry's id (from `postern inspect list`).
    id: u64,

    /// Show secret header values instead of masking them (show only).
    #[arg(long)]
    reveal: bool,

    #[command(flatten)]
    common: Common,
}

/// Runs `postern inspect`.
pub(crate) fn run(args: InspectArgs) -> ExitCode {
    let common = match &args.command {
        InspectCommand::List(list) => &list.common,
        InspectCommand::Show(show) | InspectCommand::Replay(show) => &show.common,
    };
    let runtime = match crate::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let client = match inspector(common).await {
            Ok(client) => client,
            Err(code) => return code,
        };
        let json = common.json;
        match &args.command {
            InspectCommand::List(list) => {
                let filter = EntryFilter {
                    path: list.path.clone(),
                    method: list.method.clone(),
                    status: list.status.clone(),
                    limit: list.limit,
                    ..EntryFilter::default()
                };
                match client.list(&filter).await {
                    Ok(entries) if json => print_json(&entries),
                    Ok(entries) => {
                        if entries.is_empty() {
                            println!("nothing captured yet");
                        }
                        for e in entries {
                            println!(
                                "{:>5} {} {:<7} {:<6} {:<40} {:>4} {:>6}ms {}",
                                e.id,
                                e.time,
                                e.source
                                    .map(|s| format!("{s:?}").to_lowercase())
                                    .unwrap_or_else(|| "denied".into()),
                                e.method,
                                e.path,
                                e.status
                                    .map(|s| s.to_string())
                                    .unwrap_or_else(|| "-".into()),
                                e.duration_ms,
                                match (&e.gate, &e.identity) {
                                    (Some(g), Some(i)) => format!("{g} as {i}"),
                                    (Some(g), None) => g.clone(),
                                    _ => String::new(),
                                }
                            );
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => client_fail(&e),
                }
            }
            InspectCommand::Show(show) => match client.show(show.id, show.reveal).await {
                Ok(detail) if json => print_json(&detail),
                Ok(detail) => match serde_json::to_string_pretty(&detail.entry) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e.to_string(), EXIT_FAILURE),
                },
                Err(e) => client_fail(&e),
            },
            InspectCommand::Replay(show) => {
                match client.replay(show.id, &ReplayChanges::default()).await {
                    Ok(outcome) if json => print_json(&outcome),
                    Ok(outcome) => {
                        println!(
                            "replayed {} as {}: {}",
                            outcome.replay_of,
                            outcome.id,
                            outcome
                                .status
                                .map(|s| format!("status {s}"))
                                .unwrap_or_else(|| "no answer".into())
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => client_fail(&e),
                }
            }
        }
    })
}

/// The inspector's client: `--inspect-url`, or where the running daemon says it listens.
async fn inspector(common: &Common) -> Result<InspectClient, ExitCode> {
    let url = match &common.inspect_url {
        Some(url) => url.clone(),
        None => {
            let api = common
                .global
                .api_client()
                .map_err(|(message, code)| fail(&message, code))?;
            let answer = api
                .get::<InspectAnswer>("/v0/inspect")
                .await
                .map_err(|e| api_fail(&e))?;
            match answer.addr {
                Some(addr) => format!("http://{addr}"),
                None => {
                    return Err(fail(
                        "request inspection is off on this node (it runs with `--inspect off`); restart it with `postern up --inspect 127.0.0.1:4040`",
                        EXIT_NOT_READY,
                    ));
                }
            }
        }
    };
    InspectClient::new(&url).map_err(|e| fail(&e.to_string(), EXIT_USAGE))
}

fn client_fail(error: &ClientError) -> ExitCode {
    let code = match error {
        ClientError::Unreachable { .. } => EXIT_NOT_READY,
        ClientError::Api { status, .. } if status.as_u16() == 404 => EXIT_FAILURE,
        ClientError::BadAddress(_) => EXIT_USAGE,
        _ => EXIT_FAILURE,
    };
    fail(&error.to_string(), code)
}

//! `postern ping`: round trips through the mesh to a peer.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use postern_node::daemon::api::PingAnswer;
use postern_node::daemon::api_client::ApiClientError;

use crate::config::Global;
use crate::{EXIT_FAILURE, EXIT_NOT_READY, fail};

/// Arguments of `postern ping`.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// The peer: its name (`laptop`, `laptop.TAILNET-DOMAIN`) or tailnet IPv4 address.
    peer: String,

    /// How many pings to send, one a second.
    #[arg(short = 'c', long, default_value_t = 4, value_name = "N")]
    count: u32,

    /// How long to wait for each reply.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Duration,

    /// Print one JSON object per reply on standard output.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    global: Global,
}

/// Runs `postern ping`.
pub(crate) fn run(args: &PingArgs) -> ExitCode {
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    let path = format!(
        "/v0/ping?peer={}&timeout_ms={}",
        args.peer.replace(
            |c: char| !c.is_ascii_alphanumeric() && !".-:_".contains(c),
            ""
        ),
        args.timeout.as_millis()
    );
    runtime.block_on(async {
        let mut replies = 0u32;
        for i in 0..args.count.max(1) {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match client.post::<PingAnswer>(&path).await {
                Ok(answer) => {
                    replies += 1;
                    if args.json {
                        match serde_json::to_string(&answer) {
                            Ok(line) => println!("{line}"),
                            Err(e) => return fail(&e.to_string(), EXIT_FAILURE),
                        }
                    } else {
                        println!(
                            "pong from {} ({}) via {} {} in {:.2} ms",
                            answer.peer,
                            answer.address,
                            answer.path,
                            answer.endpoint.as_deref().unwrap_or("-"),
                            answer.rtt_ms
                        );
                    }
                }
                Err(e @ ApiClientError::NotRunning { .. }) => {
                    return fail(&e.to_string(), EXIT_NOT_READY);
                }
                Err(e @ ApiClientError::Api { status: 404, .. }) => {
                    return fail(&e.to_string(), EXIT_FAILURE);
                }
                Err(e) => eprintln!("postern ping: {e}"),
            }
        }
        if replies == 0 {
            return fail(&format!("no replies from {}", args.peer), EXIT_FAILURE);
        }
        ExitCode::SUCCESS
    })
}

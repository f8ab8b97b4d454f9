//! `postern metrics`: the running node's Prometheus metrics.

use std::process::ExitCode;

use clap::Args;
use postern_node::daemon::api_client::ApiClientError;

use crate::config::Global;
use crate::{EXIT_FAILURE, EXIT_NOT_READY, fail};

/// Arguments of `postern metrics`.
#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    #[command(flatten)]
    global: Global,
}

/// Runs `postern metrics`: prints what `GET /v0/metrics` on the local API answers.
pub(crate) fn run(args: &MetricsArgs) -> ExitCode {
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    match runtime.block_on(client.get_text("/v0/metrics")) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e @ ApiClientError::NotRunning { .. }) => fail(&e.to_string(), EXIT_NOT_READY),
        Err(e) => fail(&e.to_string(), EXIT_FAILURE),
    }
}

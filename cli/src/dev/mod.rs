//! `postern dev`: everything on one machine, for a first look.
//!
//! Not built yet. Until it is, the command says what it will do and which parts already
//! exist, and exits with status 1 so no script mistakes it for a running tailnet.

mod ca;
mod origin;
mod webhook_demo;

use std::process::ExitCode;

use clap::Args;

use crate::EXIT_FAILURE;

/// Run a coordination server, a relay, an ingress, a node and a demo origin in one process.
///
/// When built, `postern dev` starts an embedded coord (SQLite in its state directory), a
/// relay, an ingress on loopback with a local CA it creates, a node, and a small demo origin;
/// funnels the origin behind a GitHub-style webhook gate with a demo secret; and prints the
/// public URL, the inspection UI's URL and two curl commands: one correctly signed (it reaches
/// the origin) and one forged (the edge refuses it).
#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Funnel this local port instead of the demo origin.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
}

/// Says what `postern dev` will do; it is not wired up yet.
pub(crate) fn run(args: &DevArgs) -> ExitCode {
    let target = match args.port {
        Some(port) => format!("your local port {port}"),
        None => "a demo origin".to_owned(),
    };
    eprintln!(
        "postern dev is not built yet. When it is, it will start a coordination server, a relay,\n\
         an ingress with a local CA, a node and {target} on this machine, funnel it behind a\n\
         GitHub webhook gate, and print two curl commands: a signed one that gets through and a\n\
         forged one that the edge refuses.\n\
         \n\
         What runs today: `postern wg up CONFIG` (userspace WireGuard), `postern-coord policy\n\
         check|test`, and `postern-ingress serve`. See docs/status.md."
    );
    ExitCode::from(EXIT_FAILURE)
}

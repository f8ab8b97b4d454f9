//! `postern`: the command people type. Argument parsing and wiring only; all logic lives
//! in the library crates. Each subcommand is one module.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

mod dev;
mod wg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for usage and configuration errors (as clap uses for usage errors).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code for failures at run time (a socket, the network).
pub(crate) const EXIT_FAILURE: u8 = 1;

/// Postern: a self-hosted, identity-gated WireGuard mesh with public ingress.
///
/// Postern connects the machines of a tailnet with WireGuard, lets people in by their
/// identity, and publishes chosen services to the internet through an ingress.
///
/// Logs go to standard error; set RUST_LOG (e.g. RUST_LOG=debug or
/// RUST_LOG=postern_node=trace) to see more. Exit status: 0 on success, 1 when something
/// failed at run time, 2 for usage or configuration errors.
#[derive(Debug, Parser)]
#[command(name = "postern", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plain WireGuard: bring up a wg-quick configuration without a coordination server.
    #[command(subcommand)]
    Wg(wg::WgCommand),
    /// Everything on one machine for a first look (not built yet: says what it will do).
    Dev(dev::DevArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Wg(command) => wg::run(command),
        Command::Dev(args) => dev::run(&args),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

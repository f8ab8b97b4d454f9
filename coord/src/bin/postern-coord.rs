//! `postern-coord`: the coordination server binary. Argument parsing and wiring only.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postern_coord::policy_admin::{self, CommandOutput};

/// The Postern coordination server and its admin commands.
#[derive(Debug, Parser)]
#[command(name = "postern-coord", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and query a policy file (HuJSON, Tailscale-compatible; see docs/policy.md).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and run its tests.
    ///
    /// Exit status: 0 when the policy is valid and every test passes (a one-line summary is
    /// printed), 1 when it is not (each problem is printed as FILE:LINE:COL: message),
    /// 2 when the file cannot be read.
    Check {
        /// The policy file.
        file: PathBuf,
        /// Print the result as one JSON object on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Ask whether an identity may reach HOST:PORT under a policy file.
    ///
    /// Prints the rule that allows it and exits 0, or prints "denied" and exits 1. Exits 2
    /// when the file cannot be read, the policy is invalid, or an argument is malformed.
    ///
    /// Example: postern-coord policy test policy.hujson --src alice@example.com --dst tag:web:443
    Test {
        /// The policy file.
        file: PathBuf,
        /// Who connects: a user login (alice@example.com), a tag (tag:ci), a host alias or an IP.
        #[arg(long, value_name = "IDENTITY")]
        src: String,
        /// What is connected to: HOST:PORT, HOST being a user login, a tag, a host alias or an IP.
        #[arg(long, value_name = "HOST:PORT")]
        dst: String,
        /// The protocol: tcp, udp, icmp, sctp, ... or a number.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Print the verdict as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = match cli.command {
        Command::Policy(PolicyCommand::Check { file, json }) => {
            with_file(&file, |name, text| policy_admin::check(name, text, json))
        }
        Command::Policy(PolicyCommand::Test {
            file,
            src,
            dst,
            proto,
            json,
        }) => with_file(&file, |name, text| {
            policy_admin::test(name, text, &src, &dst, &proto, json)
        }),
    };
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    ExitCode::from(output.exit_code)
}

fn with_file(path: &PathBuf, run: impl FnOnce(&str, &str) -> CommandOutput) -> CommandOutput {
    match std::fs::read_to_string(path) {
        Ok(text) => run(&path.display().to_string(), &text),
        Err(e) => CommandOutput {
            stdout: String::new(),
            stderr: format!("postern-coord: cannot read {}: {e}\n", path.display()),
            exit_code: policy_admin::EXIT_ERROR,
        },
    }
}

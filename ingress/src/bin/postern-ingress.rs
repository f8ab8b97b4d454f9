//! `postern-ingress`: the public edge binary. Argument parsing and wiring only.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

fn main() -> std::process::ExitCode {
    eprintln!("postern-ingress: not built yet; see docs/architecture.md");
    std::process::ExitCode::from(2)
}

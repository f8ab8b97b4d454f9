//! `postern`: the command people type. Argument parsing and wiring only; all logic lives
//! in the library crates.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

fn main() -> std::process::ExitCode {
    eprintln!("postern: not built yet; see README.md");
    std::process::ExitCode::from(2)
}

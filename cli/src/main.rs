//! `postern`: the command people type. Argument parsing and wiring only; all logic lives
//! in the library crates.

fn main() -> std::process::ExitCode {
    eprintln!("postern: not built yet; see README.md");
    std::process::ExitCode::from(2)
}

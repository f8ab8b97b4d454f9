//! `postern-coord`: the coordination server binary. Argument parsing and wiring only.

fn main() -> std::process::ExitCode {
    eprintln!("postern-coord: not built yet; see docs/architecture.md");
    std::process::ExitCode::from(2)
}

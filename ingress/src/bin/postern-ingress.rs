//! `postern-ingress`: the public edge binary. Argument parsing and wiring only.

fn main() -> std::process::ExitCode {
    eprintln!("postern-ingress: not built yet; see docs/architecture.md");
    std::process::ExitCode::from(2)
}

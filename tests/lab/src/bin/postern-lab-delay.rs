//! `postern-lab-delay udp|tcp LISTEN TARGET DELAY_MS`: relays UDP datagrams or TCP streams
//! from LISTEN to TARGET, holding each direction back by DELAY_MS milliseconds.
//!
//! The test kernel has no `netem`; run this inside a lab namespace
//! (`ip netns exec NS postern-lab-delay ...`) to add latency to a path. It runs until
//! killed. See `postern_lab::delay` for the same forwarder on a thread.

#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its user

use std::process::ExitCode;
use std::time::Duration;

use postern_lab::delay::{DelayProtocol, run_forwarder};

const USAGE: &str = "usage: postern-lab-delay udp|tcp LISTEN_ADDR:PORT TARGET_ADDR:PORT DELAY_MS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [proto, listen, target, delay] => parse(proto, listen, target, delay),
        _ => Err(USAGE.to_owned()),
    };
    let (protocol, listen, target, delay) = match parsed {
        Ok(p) => p,
        Err(message) => {
            eprintln!("postern-lab-delay: {message}");
            return ExitCode::from(2);
        }
    };
    match run_forwarder(protocol, listen, target, delay) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-lab-delay: {e}");
            ExitCode::FAILURE
        }
    }
}

type Parsed = (
    DelayProtocol,
    std::net::SocketAddr,
    std::net::SocketAddr,
    Duration,
);

fn parse(proto: &str, listen: &str, target: &str, delay: &str) -> Result<Parsed, String> {
    let protocol = match proto {
        "udp" => DelayProtocol::Udp,
        "tcp" => DelayProtocol::Tcp,
        other => {
            return Err(format!(
                "protocol {other:?} is neither udp nor tcp; {USAGE}"
            ));
        }
    };
    let listen = listen
        .parse()
        .map_err(|e| format!("listen address {listen:?}: {e}; {USAGE}"))?;
    let target = target
        .parse()
        .map_err(|e| format!("target address {target:?}: {e}; {USAGE}"))?;
    let millis: u64 = delay
        .parse()
        .map_err(|e| format!("delay {delay:?} is not a number of milliseconds: {e}"))?;
    Ok((protocol, listen, target, Duration::from_millis(millis)))
}

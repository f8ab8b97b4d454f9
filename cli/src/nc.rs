//! `postern nc`: standard input and output over a TCP connection in the tailnet.

use std::process::ExitCode;

use clap::Args;
use postern_node::daemon::api_client::{ApiClientError, ApiStream};
use tokio::io::{AsyncWriteExt, split};

use crate::config::Global;
use crate::{EXIT_FAILURE, EXIT_NOT_READY, EXIT_USAGE, fail};

/// Arguments of `postern nc`.
#[derive(Debug, Args)]
pub(crate) struct NcArgs {
    /// Listen on tailnet port PORT of this node and serve the first connection, instead of
    /// connecting out.
    #[arg(short = 'l', long, value_name = "PORT", conflicts_with_all = ["peer", "port"])]
    listen: Option<u16>,

    /// The peer: its name (`laptop`, `laptop.TAILNET-DOMAIN`) or tailnet address.
    #[arg(required_unless_present = "listen")]
    peer: Option<String>,

    /// The TCP port on the peer.
    #[arg(required_unless_present = "listen")]
    port: Option<u16>,

    #[command(flatten)]
    global: Global,
}

/// Runs `postern nc`.
pub(crate) fn run(args: &NcArgs) -> ExitCode {
    let client = match args.global.api_client() {
        Ok(client) => client,
        Err((message, code)) => return fail(&message, code),
    };
    let path = match (&args.listen, &args.peer, args.port) {
        (Some(port), _, _) => format!("/v0/listen?port={port}"),
        (None, Some(peer), Some(port)) => {
            format!("/v0/dial?peer={}&port={port}", encode_query(peer))
        }
        _ => return fail("give PEER PORT, or -l PORT", EXIT_USAGE),
    };
    let runtime = match crate::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let stream = match client.stream(&path).await {
            Ok(stream) => stream,
            Err(e @ ApiClientError::NotRunning { .. }) => {
                return fail(&e.to_string(), EXIT_NOT_READY);
            }
            Err(e) => return fail(&e.to_string(), EXIT_FAILURE),
        };
        if let Some(port) = args.listen {
            eprintln!("postern nc: listening on tailnet port {port}");
        }
        match carry(stream).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("connection failed: {e}"), EXIT_FAILURE),
        }
    })
}

/// Copies stdin to the stream (half-closing it at end of input) and the stream to stdout,
/// until the other side closes.
async fn carry(stream: ApiStream) -> std::io::Result<()> {
    let (mut from_peer, mut to_peer) = split(stream);
    let upload = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let copied = tokio::io::copy(&mut stdin, &mut to_peer).await;
        let _ = to_peer.shutdown().await;
        copied
    });
    let mut stdout = tokio::io::stdout();
    tokio::io::copy(&mut from_peer, &mut stdout).await?;
    stdout.flush().await?;
    // The peer is done; stop reading stdin (it may never end).
    upload.abort();
    Ok(())
}

/// Percent-encodes a query value (names are plain, but be safe).
pub(crate) fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("laptop.corp.test"), "laptop.corp.test");
        assert_eq!(encode_query("fd7a::1"), "fd7a::1");
        assert_eq!(encode_query("a b&c"), "a%20b%26c");
    }
}

//! `postern status`: what the running node knows about itself and its peers.

use std::process::ExitCode;

use clap::Args;
use postern_node::daemon::api_client::ApiClientError;
use postern_node::daemon::serves::ServeStatus;
use postern_node::daemon::status::Status;

use crate::config::Global;
use crate::{EXIT_FAILURE, EXIT_NOT_READY, fail};

/// Arguments of `postern status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print the full status as JSON on standard output (fields: self, peers, coord_url,
    /// coord_connected, listen_port, endpoints, version, serves, funnels).
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    global: Global,
}

/// Runs `postern status`.
pub(crate) fn run(args: &StatusArgs) -> ExitCode {
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    let status = match runtime.block_on(client.get::<Status>("/v0/status")) {
        Ok(status) => status,
        Err(e @ ApiClientError::NotRunning { .. }) => return fail(&e.to_string(), EXIT_NOT_READY),
        Err(e) => return fail(&e.to_string(), EXIT_FAILURE),
    };
    if args.json {
        match serde_json::to_string_pretty(&status) {
            Ok(json) => println!("{json}"),
            Err(e) => return fail(&e.to_string(), EXIT_FAILURE),
        }
    } else {
        print!("{}", render(&status));
    }
    ExitCode::SUCCESS
}

/// The human-readable table.
fn render(status: &Status) -> String {
    let me = &status.self_node;
    let mut out = String::new();
    let addresses = |list: &[std::net::IpAddr]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    out.push_str(&format!(
        "{:<16} {:<40} {} (this node; {})\n",
        me.name,
        addresses(&me.addresses),
        me.login,
        key_expiry(me.key_expiry, now),
    ));
    for peer in &status.peers {
        let handshake = match peer.last_handshake_secs_ago {
            Some(ago) => format!("handshake {}s ago", ago),
            None => "no handshake".to_owned(),
        };
        let path = match &peer.endpoint {
            Some(endpoint) => format!("{} {endpoint}", peer.path),
            None => "-".to_owned(),
        };
        out.push_str(&format!(
            "{:<16} {:<40} {:<8} {:<28} {:<22} rx {} tx {}\n",
            peer.name,
            addresses(&peer.addresses),
            if peer.online { "online" } else { "offline" },
            path,
            handshake,
            bytes(peer.rx_bytes),
            bytes(peer.tx_bytes),
        ));
    }
    if !status.serves.is_empty() || !status.funnels.is_empty() {
        let serving = ServeStatus {
            serves: status.serves.clone(),
            funnels: status.funnels.clone(),
        };
        out.push_str("\nserves:\n");
        out.push_str(&crate::serve::render(&serving));
        out.push_str("\nfunnels:\n");
        out.push_str(&crate::serve::render_funnels(&serving));
    }
    let coord = if status.coord_connected {
        "connected"
    } else {
        "unreachable (running on the last netmap)"
    };
    out.push_str(&format!("\ncoord {}: {coord}\n", status.coord_url));
    out
}

/// When the node key expires, relative to `now` (Unix seconds).
fn key_expiry(expiry: Option<i64>, now: i64) -> String {
    let Some(at) = expiry else {
        return "key never expires".to_owned();
    };
    let left = at.saturating_sub(now);
    match left {
        ..=0 => "key EXPIRED: run `postern login` again".to_owned(),
        1..86_400 => format!("key expires in {}h", (left + 3599) / 3600),
        _ => format!("key expires in {} days", left / 86_400),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match UNITS.get(unit) {
        Some(&"B") | None => format!("{n} B"),
        Some(name) => format!("{value:.1} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_expiry_reads_well() {
        assert_eq!(key_expiry(None, 1000), "key never expires");
        assert_eq!(
            key_expiry(Some(900), 1000),
            "key EXPIRED: run `postern login` again"
        );
        assert_eq!(key_expiry(Some(1000 + 90 * 60), 1000), "key expires in 2h");
        assert_eq!(
            key_expiry(Some(1000 + 180 * 86_400), 1000),
            "key expires in 180 days"
        );
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
    }
}

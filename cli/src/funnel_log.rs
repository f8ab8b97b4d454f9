//! `postern funnel log`: the edge's recent decisions for this node's funnels, from the
//! coord through the daemon.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use postern_node::daemon::api::FunnelLogAnswer;
use postern_proto::funnel::EdgeDecision;

use crate::config::Global;
use crate::serve::{api_fail, print_json};
use crate::{EXIT_USAGE, fail};

/// Arguments of `postern funnel log`.
#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// The funnel: its name (--name), public hostname or local port. Default: every
    /// funnel of this node.
    #[arg(value_name = "NAME")]
    funnel: Option<String>,

    /// Show at most this many decisions, the newest (at most 1000).
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: u32,

    /// Show only the requests the edge refused.
    #[arg(long)]
    denied: bool,

    /// Show only decisions newer than this (e.g. 10m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<Duration>,

    /// Print `{"decisions": [{id, at_ms, funnel, client, method, path, gate, result,
    /// reason, status, bytes, duration_ms}]}` (newest first) on standard output.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    global: Global,
}

/// Runs `postern funnel log`.
pub(crate) fn run(args: &LogArgs) -> ExitCode {
    if args.limit == 0 || args.limit > 1000 {
        return fail("--limit takes 1 to 1000", EXIT_USAGE);
    }
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    let path = query_path(args, SystemTime::now());
    runtime.block_on(async move {
        match client.get::<FunnelLogAnswer>(&path).await {
            Ok(answer) if args.json => print_json(&answer),
            Ok(answer) => {
                if answer.decisions.is_empty() {
                    eprintln!(
                        "postern: no edge decisions{} yet",
                        args.funnel
                            .as_deref()
                            .map(|f| format!(" for {f}"))
                            .unwrap_or_default()
                    );
                } else {
                    print!("{}", render(&answer.decisions));
                }
                ExitCode::SUCCESS
            }
            Err(e) => api_fail(&e),
        }
    })
}

/// The local API path of the query `args` ask for at `now`.
fn query_path(args: &LogArgs, now: SystemTime) -> String {
    let mut path = format!("/v0/funnel/log?limit={}", args.limit);
    if let Some(funnel) = &args.funnel {
        path.push_str("&funnel=");
        path.push_str(&crate::nc::encode_query(funnel));
    }
    if args.denied {
        path.push_str("&denied=true");
    }
    if let Some(since) = args.since {
        let at = now
            .checked_sub(since)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        path.push_str(&format!("&since={at}"));
    }
    path
}

/// The table: oldest first, so the newest is at the bottom, like a log.
fn render(decisions: &[EdgeDecision]) -> String {
    const PATH_MAX: usize = 60;
    let rows: Vec<[String; 7]> = decisions
        .iter()
        .rev()
        .map(|d| {
            let mut request = format!("{} {}", d.method, d.path);
            if request.chars().count() > PATH_MAX {
                request = request.chars().take(PATH_MAX - 1).collect::<String>() + "…";
            }
            let result = match &d.reason {
                Some(reason) => format!("{}: {reason}", d.result),
                None => d.result.clone(),
            };
            [
                time_of(d.at_ms),
                d.client.clone(),
                request,
                d.gate.clone().unwrap_or_else(|| "-".into()),
                result,
                if d.status == 0 {
                    "-".into()
                } else {
                    d.status.to_string()
                },
                d.duration_ms.to_string(),
            ]
        })
        .collect();
    let header = [
        "TIME", "CLIENT", "REQUEST", "GATE", "RESULT", "STATUS", "MS",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            // Numbers right-aligned, text left-aligned; no padding after the last column.
            if i >= 5 {
                line.push_str(&format!("{cell:>width$}"));
            } else {
                line.push_str(&format!("{cell:<width$}"));
            }
            if i < 6 {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2026-11-29T08:00:00.250Z`.
fn time_of(at_ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: u64, result: &str, reason: Option<&str>, status: u16) -> EdgeDecision {
        EdgeDecision {
            id,
            at_ms: 1_795_939_200_250 + i64::try_from(id).unwrap() * 1000,
            funnel: "demo.funnel.localhost".into(),
            client: "127.0.0.1:51234".into(),
            method: "POST".into(),
            path: "/webhook".into(),
            gate: Some("webhook:github".into()),
            result: result.into(),
            reason: reason.map(str::to_owned),
            status,
            bytes: 10,
            duration_ms: id * 3,
        }
    }

    #[test]
    fn the_table_reads_oldest_first_with_the_reason() {
        let table = render(&[
            decision(2, "deny", Some("signature_mismatch"), 401),
            decision(1, "allow", None, 200),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("TIME "), "{table}");
        assert!(lines[0].ends_with("STATUS  MS"), "{table}");
        assert!(
            lines[1].starts_with(
                "2026-11-29T08:00:01.250Z  127.0.0.1:51234  POST /webhook  webhook:github  allow "
            ),
            "{table}"
        );
        assert!(
            lines[2].contains("deny: signature_mismatch     401   6"),
            "{table}"
        );
    }

    #[test]
    fn the_query_carries_every_filter() {
        let args = LogArgs {
            funnel: Some("demo hooks&x".into()),
            limit: 20,
            denied: true,
            since: Some(Duration::from_secs(60)),
            json: false,
            global: Global {
                state_dir: None,
                config: None,
            },
        };
        let path = query_path(&args, UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(
            path,
            "/v0/funnel/log?limit=20&funnel=demo%20hooks%26x&denied=true&since=940"
        );
    }
}

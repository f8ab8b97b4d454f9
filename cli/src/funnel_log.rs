//! `postern funnel log`: the edge's recent decisions for this node's funnels, from the
//! coord through the daemon.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use postern_node::daemon::api::FunnelLogAnswer;
use postern_node::daemon::api_client::{ApiClientError, LocalApiClient};
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

    /// Keep printing decisions as the edge makes them, like `tail -f`, until interrupted
    /// (Ctrl-C). Each arrives within about a second of the request: the coord answers a
    /// waiting request as soon as the ingress reports a decision.
    #[arg(long, short = 'f')]
    follow: bool,

    /// Print `{"decisions": [{id, at_ms, funnel, client, method, path, gate, result,
    /// reason, status, bytes, duration_ms}]}` (newest first) on standard output. With
    /// --follow, one decision per line instead (JSON Lines), oldest first.
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
    let now = SystemTime::now();
    let path = query_path(args, now);
    let filters = filters(args, now);
    runtime.block_on(async move {
        let answer = match client.get::<FunnelLogAnswer>(&path).await {
            Ok(answer) => answer,
            Err(e) => return api_fail(&e),
        };
        if args.follow {
            return follow(&client, args, &filters, answer).await;
        }
        if args.json {
            print_json(&answer)
        } else if answer.decisions.is_empty() {
            eprintln!("postern: no edge decisions{} yet", for_funnel(args));
            ExitCode::SUCCESS
        } else {
            print!("{}", render(&answer.decisions));
            ExitCode::SUCCESS
        }
    })
}

/// How long one request of `--follow` may wait for new decisions (the most the coord
/// holds one).
const FOLLOW_WAIT_SECS: u32 = postern_proto::funnel::MAX_FUNNEL_LOG_WAIT_MS / 1000;

/// How long `--follow` pauses after a failed request, or between requests answered empty
/// at once (a daemon or coord that does not hold them).
const FOLLOW_PAUSE: Duration = Duration::from_secs(2);

/// `--follow`: prints `first` (the answer to the plain query), then every newer decision
/// matching `filters` ([`filters`]) as the daemon reports it, until interrupted or the
/// daemon goes away.
async fn follow(
    client: &LocalApiClient,
    args: &LogArgs,
    filters: &str,
    first: FunnelLogAnswer,
) -> ExitCode {
    let mut out = FollowOutput::new(args.json);
    if first.decisions.is_empty() && !args.json {
        eprintln!(
            "postern: no edge decisions{} yet; waiting for some (Ctrl-C to stop)",
            for_funnel(args)
        );
    }
    let mut last = first.decisions.iter().map(|d| d.id).max();
    out.print(&first.decisions);
    let mut warned = false;
    loop {
        let asked = std::time::Instant::now();
        let pause = match client
            .get::<FunnelLogAnswer>(&follow_path(filters, last))
            .await
        {
            Ok(answer) => {
                if warned {
                    eprintln!("postern: receiving edge decisions again");
                    warned = false;
                }
                if let Some(newest) = answer.decisions.iter().map(|d| d.id).max() {
                    last = Some(last.unwrap_or(0).max(newest));
                }
                let pause = if answer.decisions.is_empty() {
                    FOLLOW_PAUSE.saturating_sub(asked.elapsed())
                } else {
                    Duration::ZERO
                };
                out.print(&answer.decisions);
                pause
            }
            // The coord is out of reach for now (the daemon says so): keep following.
            Err(ApiClientError::Api {
                status: 503,
                message,
            }) => {
                if !warned {
                    eprintln!("postern: {message}; still following, retrying");
                    warned = true;
                }
                FOLLOW_PAUSE
            }
            Err(e) => return api_fail(&e),
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// The query of one `--follow` request: the decisions matching `filters` newer than
/// `last`, every one of them (up to the most one answer carries, so none is skipped),
/// waiting for some when there are none.
fn follow_path(filters: &str, last: Option<u64>) -> String {
    let mut followed = format!("/v0/funnel/log?limit=1000{filters}&wait={FOLLOW_WAIT_SECS}");
    if let Some(last) = last {
        followed.push_str(&format!("&after_id={last}"));
    }
    followed
}

/// ` for NAME` when the command names a funnel.
fn for_funnel(args: &LogArgs) -> String {
    args.funnel
        .as_deref()
        .map(|f| format!(" for {f}"))
        .unwrap_or_default()
}

/// Where `--follow` prints: table rows whose columns only widen, under one header, or
/// JSON Lines.
struct FollowOutput {
    json: bool,
    table: Table,
}

impl FollowOutput {
    fn new(json: bool) -> Self {
        Self {
            json,
            table: Table::default(),
        }
    }

    /// Prints `decisions` (newest first, as the daemon answers) oldest first, and flushes.
    fn print(&mut self, decisions: &[EdgeDecision]) {
        use std::io::Write as _;
        if decisions.is_empty() {
            return;
        }
        let text = if self.json {
            decisions
                .iter()
                .rev()
                .filter_map(|d| serde_json::to_string(d).ok())
                .map(|line| line + "\n")
                .collect()
        } else {
            self.table.render(decisions)
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }
}

/// The local API path of the query `args` ask for at `now`.
fn query_path(args: &LogArgs, now: SystemTime) -> String {
    format!("/v0/funnel/log?limit={}{}", args.limit, filters(args, now))
}

/// The query's parameters besides `limit`, each with its leading `&`: the funnel,
/// `--denied`, `--since` as of `now`.
fn filters(args: &LogArgs, now: SystemTime) -> String {
    let mut path = String::new();
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
    Table::default().render(decisions)
}

/// The table's columns.
const HEADER: [&str; 7] = [
    "TIME", "CLIENT", "REQUEST", "GATE", "RESULT", "STATUS", "MS",
];

/// A table printed in parts (`--follow`): the header once, and column widths that only
/// grow, so later rows line up with earlier ones unless a cell is wider than any before.
struct Table {
    widths: [usize; 7],
    header_done: bool,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            widths: HEADER.map(|h| h.chars().count()),
            header_done: false,
        }
    }
}

impl Table {
    /// The rows of `decisions` (newest first), oldest first, after the header the first
    /// time.
    fn render(&mut self, decisions: &[EdgeDecision]) -> String {
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
        for row in &rows {
            for (width, cell) in self.widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header = HEADER.map(String::from);
        let header = (!self.header_done).then_some(&header);
        self.header_done = true;
        let mut out = String::new();
        for row in header.into_iter().chain(&rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(self.widths).enumerate() {
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
    fn a_followed_table_has_one_header_and_rows_that_line_up() {
        let mut table = Table::default();
        let first = table.render(&[decision(1, "allow", None, 200)]);
        let later = table.render(&[decision(2, "deny", Some("signature_missing"), 401)]);
        assert!(first.starts_with("TIME "), "{first}");
        assert_eq!(later.lines().count(), 1, "no second header: {later}");
        let first_row = first.lines().nth(1).unwrap();
        let later_row = later.lines().next().unwrap();
        // The same columns start at the same place (the client's, after the time).
        assert_eq!(
            first_row.find("127.0.0.1"),
            later_row.find("127.0.0.1"),
            "{first}{later}"
        );
    }

    #[test]
    fn following_asks_for_everything_newer_and_waits() {
        assert_eq!(
            follow_path("&funnel=hooks&denied=true&since=940", Some(41)),
            "/v0/funnel/log?limit=1000&funnel=hooks&denied=true&since=940&wait=25&after_id=41"
        );
        assert_eq!(follow_path("", None), "/v0/funnel/log?limit=1000&wait=25");
    }

    #[test]
    fn the_query_carries_every_filter() {
        let args = LogArgs {
            funnel: Some("demo hooks&x".into()),
            limit: 20,
            denied: true,
            since: Some(Duration::from_secs(60)),
            json: false,
            follow: false,
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

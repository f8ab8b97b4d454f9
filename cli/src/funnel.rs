//! `postern funnel`: ask the coord for a public funnel to a local port, through the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use postern_node::daemon::serves::{FunnelRequestBody, FunnelStatus};
use postern_proto::funnel::{
    FunnelProtocol, FunnelSpec, GateMode, GateSecret, GateSpec, RateLimitSpec,
};

use crate::config::Global;
use crate::serve::{
    ResetArgs, Signals, StatusArgs, api_fail, hold, open_session, print_json, run_reset,
    run_status_of,
};
use crate::{EXIT_USAGE, fail};

/// Arguments of `postern funnel`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct FunnelArgs {
    #[command(subcommand)]
    command: Option<FunnelCommand>,

    /// The local port to publish (the service on 127.0.0.1:PORT).
    #[arg(value_name = "PORT")]
    port: Option<u16>,

    /// A label for the public hostname (default: the node's name). The URL stays the same
    /// for the same node, name and port.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Close the funnel by itself after this long (e.g. 30m, 2h; capped by the policy).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,

    /// Publish raw TCP on a public port instead of HTTPS (only --allow-ip/--deny-ip apply).
    #[arg(long)]
    tcp: bool,

    #[command(flatten)]
    gates: GateArgs,

    /// Keep the funnel after this command exits and across daemon restarts.
    #[arg(long)]
    bg: bool,

    /// Print the funnel (port, name, protocol, url, hostname, expires_at, gates,
    /// background) as JSON on standard output.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    global: Global,
}

/// The gate flags: each adds a gate to the funnel's chain, in this order.
#[derive(Debug, Clone, Default, Args)]
struct GateArgs {
    /// Check webhook signatures from PROVIDER (github, stripe, slack, ...). Needs the
    /// secret from --secret-env or --secret-file (never on the command line).
    #[arg(long, value_name = "PROVIDER", help_heading = "Gates")]
    verify_webhook: Option<String>,

    /// Read the webhook secret from this environment variable (repeat during a rotation).
    #[arg(long, value_name = "VAR", help_heading = "Gates")]
    secret_env: Vec<String>,

    /// Read the webhook secret from this file (repeat during a rotation).
    #[arg(long, value_name = "FILE", help_heading = "Gates")]
    secret_file: Vec<PathBuf>,

    /// Require a login with the ingress's identity provider.
    #[arg(long, help_heading = "Gates")]
    login: bool,

    /// With --login: admit this e-mail address (repeatable).
    #[arg(long, value_name = "EMAIL", requires = "login", help_heading = "Gates")]
    allow_email: Vec<String>,

    /// With --login: admit this e-mail domain (repeatable).
    #[arg(
        long,
        value_name = "DOMAIN",
        requires = "login",
        help_heading = "Gates"
    )]
    allow_domain: Vec<String>,

    /// With --login: admit members of this group (repeatable).
    #[arg(long, value_name = "GROUP", requires = "login", help_heading = "Gates")]
    allow_group: Vec<String>,

    /// Require a bearer JWT from this issuer.
    #[arg(long, value_name = "URL", help_heading = "Gates")]
    jwt_issuer: Option<String>,

    /// With --jwt-issuer: an accepted audience (repeatable).
    #[arg(
        long,
        value_name = "AUD",
        requires = "jwt_issuer",
        help_heading = "Gates"
    )]
    jwt_audience: Vec<String>,

    /// With --jwt-issuer: where the signing keys are (default: OIDC discovery).
    #[arg(
        long,
        value_name = "URL",
        requires = "jwt_issuer",
        help_heading = "Gates"
    )]
    jwks_url: Option<String>,

    /// Admit only clients in this CIDR (repeatable; a bare address means just it).
    #[arg(long, value_name = "CIDR", value_parser = parse_net, help_heading = "Gates")]
    allow_ip: Vec<IpNet>,

    /// Refuse clients in this CIDR (repeatable; wins over --allow-ip).
    #[arg(long, value_name = "CIDR", value_parser = parse_net, help_heading = "Gates")]
    deny_ip: Vec<IpNet>,

    /// Require a client certificate signed by the CA in this PEM file.
    #[arg(long, value_name = "FILE", help_heading = "Gates")]
    mtls_ca: Option<PathBuf>,

    /// Admit a request when any one gate admits it (default: every gate must).
    #[arg(long, help_heading = "Gates")]
    any: bool,

    /// Limit each client address to N requests per second, minute or hour (10/s, 100/m).
    #[arg(long, value_name = "N/UNIT", value_parser = parse_rate, help_heading = "Gates")]
    rate_limit: Option<RateLimitSpec>,
}

#[derive(Debug, Subcommand)]
enum FunnelCommand {
    /// Show this node's funnels: port, public URL, gates, and whether each is kept (bg).
    Status(StatusArgs),
    /// Close every funnel of this node (the tailnet serves stay).
    Reset(ResetArgs),
    /// Show the edge's recent decisions for this node's funnels: who asked what, which
    /// gate decided, and why a request was refused.
    ///
    /// The ingress reports every request decision to the coordination server, which keeps
    /// the newest of each funnel for its owner. The table is oldest first: time, client,
    /// method and path (no query string), gate, result and reason, status, milliseconds.
    ///
    /// Examples:
    ///   postern funnel log                    (every funnel of this node)
    ///   postern funnel log hooks --denied     (why were deliveries refused?)
    ///   postern funnel log hooks -f           (watch decisions as they happen)
    ///   postern funnel log 3000 --since 10m --json
    #[command(verbatim_doc_comment)]
    Log(crate::funnel_log::LogArgs),
}

/// Runs `postern funnel`.
pub(crate) fn run(args: FunnelArgs) -> ExitCode {
    match args.command {
        Some(FunnelCommand::Status(status)) => return run_status_of(&status, true),
        Some(FunnelCommand::Reset(reset)) => return run_reset(&reset.global, "/v0/funnel/reset"),
        Some(FunnelCommand::Log(log)) => return crate::funnel_log::run(&log),
        None => {}
    }
    let Some(port) = args.port else {
        return fail(
            "no port: give the local port to publish (`postern funnel 3000`), or use `postern funnel status` / `postern funnel reset`",
            EXIT_USAGE,
        );
    };
    let spec = match spec_from_args(
        port,
        args.name.clone(),
        args.ttl,
        args.tcp,
        &args.gates,
        |var| std::env::var(var).ok(),
    ) {
        Ok(spec) => spec,
        Err(message) => return fail(&message, EXIT_USAGE),
    };
    let (client, runtime) = match args.global.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    let body = FunnelRequestBody {
        spec,
        background: args.bg,
    };
    runtime.block_on(async move {
        if body.background {
            return match client
                .post_json::<_, FunnelStatus>("/v0/funnel", &body)
                .await
            {
                Ok(status) => {
                    report(&status, args.json);
                    eprintln!(
                        "postern: funnelled in the background; `postern funnel reset` closes it"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => api_fail(&e),
            };
        }
        let signals = Signals::install();
        let (stream, status) =
            match open_session::<_, FunnelStatus>(&client, "/v0/funnel", &body).await {
                Ok(opened) => opened,
                Err(e) => return api_fail(&e),
            };
        report(&status, args.json);
        eprintln!("postern: funnel open until Ctrl-C (use --bg to keep it)");
        hold(stream, signals, "funnel").await
    })
}

fn report(status: &FunnelStatus, json: bool) {
    if json {
        let _ = print_json(status);
    } else {
        println!("{}", status.url.as_deref().unwrap_or("(no public URL yet)"));
    }
}

/// The funnel spec the flags ask for; `env` reads environment variables (for tests).
fn spec_from_args(
    port: u16,
    name: Option<String>,
    ttl: Option<Duration>,
    tcp: bool,
    gates: &GateArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<FunnelSpec, String> {
    if port == 0 {
        return Err("port 0 cannot be funnelled".into());
    }
    let mut chain = Vec::new();
    if let Some(provider) = &gates.verify_webhook {
        let mut secrets = Vec::new();
        for var in &gates.secret_env {
            let value = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!("--secret-env {var}: the environment variable {var} is not set or empty")
            })?;
            secrets.push(GateSecret::new(value));
        }
        for file in &gates.secret_file {
            let value = std::fs::read_to_string(file)
                .map_err(|e| format!("--secret-file {}: cannot read it: {e}", file.display()))?;
            let value = value.trim_end_matches(['\r', '\n']).to_owned();
            if value.is_empty() {
                return Err(format!(
                    "--secret-file {}: the file is empty",
                    file.display()
                ));
            }
            secrets.push(GateSecret::new(value));
        }
        if secrets.is_empty() {
            return Err(format!(
                "--verify-webhook {provider} needs the signing secret: --secret-env VAR or --secret-file FILE (never on the command line)"
            ));
        }
        chain.push(GateSpec::Webhook {
            provider: provider.to_ascii_lowercase(),
            secrets,
            tolerance_secs: None,
        });
    } else if !gates.secret_env.is_empty() || !gates.secret_file.is_empty() {
        return Err("--secret-env and --secret-file go with --verify-webhook PROVIDER".into());
    }
    if gates.login {
        chain.push(GateSpec::Login {
            allowed_emails: gates
                .allow_email
                .iter()
                .map(|e| e.to_ascii_lowercase())
                .collect(),
            allowed_domains: gates
                .allow_domain
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            allowed_groups: gates.allow_group.clone(),
        });
    }
    if let Some(issuer) = &gates.jwt_issuer {
        chain.push(GateSpec::Jwt {
            issuer: issuer.clone(),
            jwks_url: gates.jwks_url.clone(),
            audiences: gates.jwt_audience.clone(),
        });
    }
    if !gates.allow_ip.is_empty() || !gates.deny_ip.is_empty() {
        chain.push(GateSpec::Ip {
            allow: gates.allow_ip.clone(),
            deny: gates.deny_ip.clone(),
        });
    }
    if let Some(file) = &gates.mtls_ca {
        let ca_pem = std::fs::read_to_string(file)
            .map_err(|e| format!("--mtls-ca {}: cannot read it: {e}", file.display()))?;
        if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "--mtls-ca {}: no PEM certificate in it",
                file.display()
            ));
        }
        chain.push(GateSpec::Mtls { ca_pem });
    }
    if tcp && chain.iter().any(|g| !matches!(g, GateSpec::Ip { .. })) {
        return Err(
            "a --tcp funnel carries raw bytes: only --allow-ip/--deny-ip apply to it".into(),
        );
    }
    if gates.any && chain.len() < 2 {
        return Err("--any combines two or more gates; give at least two".into());
    }
    Ok(FunnelSpec {
        port,
        name,
        protocol: if tcp {
            FunnelProtocol::Tcp
        } else {
            FunnelProtocol::Http
        },
        ttl_secs: ttl.map(|t| t.as_secs().max(1)),
        gates: chain,
        gate_mode: if gates.any {
            GateMode::Any
        } else {
            GateMode::All
        },
        rate_limit: gates.rate_limit,
    })
}

/// `10.0.0.0/8`, or a bare address as a single-host network.
fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not an address or CIDR (e.g. 203.0.113.0/24)"))
}

/// `10/s`, `100/m`, `1000/h`.
fn parse_rate(text: &str) -> Result<RateLimitSpec, String> {
    let bad = || format!("{text:?} is not a rate: give N/s, N/m or N/h (e.g. 10/s)");
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let requests: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(bad)?;
    let per_secs = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        _ => return Err(bad()),
    };
    Ok(RateLimitSpec { requests, per_secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn plain_funnel() {
        let spec = spec_from_args(3000, None, None, false, &GateArgs::default(), no_env).unwrap();
        assert_eq!(spec.port, 3000);
        assert!(spec.gates.is_empty());
        assert_eq!(spec.protocol, FunnelProtocol::Http);
    }

    #[test]
    fn webhook_secret_comes_from_the_environment() {
        let gates = GateArgs {
            verify_webhook: Some("GitHub".into()),
            secret_env: vec!["GH".into()],
            ..GateArgs::default()
        };
        let spec = spec_from_args(
            3000,
            Some("hooks".into()),
            Some(Duration::from_secs(7200)),
            false,
            &gates,
            |v| (v == "GH").then(|| "s3cret".to_owned()),
        )
        .unwrap();
        assert_eq!(spec.ttl_secs, Some(7200));
        match &spec.gates[..] {
            [
                GateSpec::Webhook {
                    provider, secrets, ..
                },
            ] => {
                assert_eq!(provider, "github");
                assert_eq!(secrets[0].expose(), "s3cret");
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{spec:?}").contains("s3cret"));
        let err = spec_from_args(3000, None, None, false, &gates, no_env).unwrap_err();
        assert!(err.contains("GH is not set"), "{err}");
    }

    #[test]
    fn mistakes_are_explained() {
        let webhook = GateArgs {
            verify_webhook: Some("stripe".into()),
            ..GateArgs::default()
        };
        let err = spec_from_args(1, None, None, false, &webhook, no_env).unwrap_err();
        assert!(err.contains("--secret-env"), "{err}");
        let any = GateArgs {
            login: true,
            any: true,
            ..GateArgs::default()
        };
        let err = spec_from_args(1, None, None, false, &any, no_env).unwrap_err();
        assert!(err.contains("--any"), "{err}");
        let tcp_login = GateArgs {
            login: true,
            ..GateArgs::default()
        };
        let err = spec_from_args(1, None, None, true, &tcp_login, no_env).unwrap_err();
        assert!(err.contains("--tcp"), "{err}");
    }

    #[test]
    fn gates_combine_in_order() {
        let gates = GateArgs {
            login: true,
            allow_domain: vec!["Example.com".into()],
            jwt_issuer: Some("https://issuer".into()),
            allow_ip: vec![parse_net("10.0.0.1").unwrap()],
            any: true,
            rate_limit: Some(parse_rate("10/s").unwrap()),
            ..GateArgs::default()
        };
        let spec = spec_from_args(8080, None, None, false, &gates, no_env).unwrap();
        let kinds: Vec<_> = spec.gates.iter().map(GateSpec::kind).collect();
        assert_eq!(kinds, ["login", "jwt", "ip"]);
        assert_eq!(spec.gate_mode, GateMode::Any);
        assert_eq!(
            spec.rate_limit,
            Some(RateLimitSpec {
                requests: 10,
                per_secs: 1
            })
        );
    }

    #[test]
    fn rates_and_networks_parse_or_explain() {
        assert_eq!(parse_rate("100/m").unwrap().per_secs, 60);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10/d").unwrap_err().contains("N/s"));
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("nope").unwrap_err().contains("CIDR"));
    }
}

//! A route's `GateSpec`s → the edge's [`GateChain`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postern_proto::funnel::{FunnelRoute, GateMode, GateSpec};

use super::OidcDefaults;
use crate::gate::oidc::load_or_create_session_key;
use crate::gate::{
    GateChain, IpAction, IpRule, IpRulesConfig, IpRulesGate, JwtConfig, JwtGate, MtlsConfig,
    MtlsGate, OidcConfig, OidcGate, PassThroughGate, Provider, RateLimit, RateLimitConfig,
    RateLimitKey, Secret, WebhookGate, WebhookGateConfig,
};

/// Builds the gate chain of `route`: each `GateSpec` mapped onto the gate of the same
/// kind, combined by the route's `GateMode`, wrapped in its per-client rate limit; a
/// route without gates gets the pass-through gate.
///
/// - `webhook`: the provider by name, every secret accepted (rotation), its tolerance;
/// - `login`: the ingress's own OIDC client (`oidc`, the `[oidc]` section) with the
///   route's allow lists, the callback on the funnel's hostname and a session key in
///   `<state_dir>/oidc/<hostname>.key`; refused when the ingress has no `[oidc]`;
/// - `jwt`: the issuer, its JWKS URL (required for now: discovery is not done here) and
///   audiences;
/// - `ip`: the deny prefixes first (deny wins), then the allow prefixes; an address no
///   prefix matches is admitted only when there is no allow list;
/// - `mtls`: the CA PEM, a certificate required.
///
/// Fails with a message naming the gate and what is wrong; the caller refuses the route.
pub fn chain_from_route(
    route: &FunnelRoute,
    oidc: Option<&OidcDefaults>,
    state_dir: &Path,
    max_body_bytes: usize,
) -> Result<GateChain, String> {
    let host = route.hostname.to_ascii_lowercase();
    let members = route
        .gates
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            gate_from_spec(spec, &host, oidc, state_dir, max_body_bytes)
                .map_err(|e| format!("gate #{} ({}): {e}", index + 1, spec.kind()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let chain = if members.is_empty() {
        GateChain::gate(PassThroughGate)
    } else {
        match route.gate_mode {
            GateMode::Any => GateChain::any_of(members),
            GateMode::All => GateChain::all_of(members),
        }
        .map_err(|e| e.to_string())?
    };
    let Some(limit) = route.rate_limit else {
        return Ok(chain);
    };
    let config = RateLimitConfig::new(
        RateLimitKey::ClientIp,
        limit.requests,
        Duration::from_secs(limit.per_secs),
    );
    let limit = RateLimit::new(config).map_err(|e| format!("rate limit: {e}"))?;
    Ok(GateChain::rate_limited(chain, Arc::new(limit)))
}

fn gate_from_spec(
    spec: &GateSpec,
    host: &str,
    oidc: Option<&OidcDefaults>,
    state_dir: &Path,
    max_body_bytes: usize,
) -> Result<GateChain, String> {
    match spec {
        GateSpec::Webhook {
            provider,
            secrets,
            tolerance_secs,
        } => {
            let provider: Provider = provider.parse().map_err(|e| format!("{e}"))?;
            let secrets = secrets
                .iter()
                .map(|s| Secret::new(s.expose().as_bytes().to_vec()))
                .collect();
            let mut config = WebhookGateConfig::new(provider, secrets);
            config.tolerance_secs = *tolerance_secs;
            config.max_body_bytes = max_body_bytes;
            Ok(GateChain::gate(
                WebhookGate::new(config).map_err(|e| e.to_string())?,
            ))
        }
        GateSpec::Login {
            allowed_emails,
            allowed_domains,
            allowed_groups,
        } => {
            let defaults = oidc.ok_or(
                "this ingress has no [oidc] section, so it cannot run login gates; add one (issuer, client_id) to ingress.toml",
            )?;
            let key =
                load_or_create_session_key(&state_dir.join("oidc").join(format!("{host}.key")))
                    .map_err(|e| e.to_string())?;
            let mut config = OidcConfig::new(
                &defaults.issuer,
                &defaults.client_id,
                format!("https://{host}/.postern/callback"),
                key,
            );
            config.client_secret.clone_from(&defaults.client_secret);
            if let Some(scopes) = &defaults.scopes {
                config.scopes.clone_from(scopes);
            }
            if let Some(ttl) = defaults.session_ttl {
                config.session_ttl = ttl;
            }
            config.allowed_emails.clone_from(allowed_emails);
            config.allowed_domains.clone_from(allowed_domains);
            config.allowed_groups.clone_from(allowed_groups);
            Ok(GateChain::gate(
                OidcGate::new(config).map_err(|e| e.to_string())?,
            ))
        }
        GateSpec::Jwt {
            issuer,
            jwks_url,
            audiences,
        } => {
            let config = match jwks_url {
                Some(url) => JwtConfig::new(url, issuer, audiences.clone()),
                None => JwtConfig::discovered(issuer, audiences.clone()),
            };
            Ok(GateChain::gate(
                JwtGate::new(config).map_err(|e| e.to_string())?,
            ))
        }
        GateSpec::Ip { allow, deny } => {
            let rules = deny
                .iter()
                .map(|network| IpRule {
                    action: IpAction::Deny,
                    network: *network,
                })
                .chain(allow.iter().map(|network| IpRule {
                    action: IpAction::Allow,
                    network: *network,
                }))
                .collect();
            let default = if allow.is_empty() {
                IpAction::Allow
            } else {
                IpAction::Deny
            };
            let gate = IpRulesGate::new(IpRulesConfig {
                rules,
                default,
                trusted_proxies: Vec::new(),
            })
            .map_err(|e| e.to_string())?;
            Ok(GateChain::gate(gate))
        }
        GateSpec::Mtls { ca_pem } => {
            let gate = MtlsGate::new(&MtlsConfig {
                ca_pem: ca_pem.clone(),
                ca_source: format!("the mTLS CA of funnel {host}"),
                required: true,
            })
            .map_err(|e| e.to_string())?;
            Ok(GateChain::gate(gate))
        }
        other => Err(format!(
            "this ingress does not know gates of kind {:?}; upgrade it",
            other.kind()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::SystemTime;

    use http::{HeaderMap, Method};
    use postern_proto::funnel::{FunnelProtocol, GateSecret, RateLimitSpec};
    use postern_proto::ids::NodeId;
    use postern_proto::keys::NodePublicKey;

    use super::*;
    use crate::gate::{Decision, GateRequest};

    fn route(gates: Vec<GateSpec>, mode: GateMode) -> FunnelRoute {
        FunnelRoute {
            hostname: "Hooks.Funnel.Test".into(),
            node: NodeId(2),
            node_key: NodePublicKey::from_bytes([7; 32]),
            owner: "alice@example.com".into(),
            port: 3000,
            protocol: FunnelProtocol::Http,
            public_port: None,
            gates,
            gate_mode: mode,
            rate_limit: None,
            expires_at: None,
        }
    }

    fn build(route: &FunnelRoute, oidc: Option<&OidcDefaults>) -> Result<GateChain, String> {
        let dir = tempfile::tempdir().unwrap();
        chain_from_route(route, oidc, dir.path(), 1 << 20)
    }

    fn decide(chain: &GateChain, client: &str) -> Decision {
        let (method, headers) = (Method::GET, HeaderMap::new());
        let client: SocketAddr = client.parse().unwrap();
        let request = GateRequest::new(&method, "https://h/", &headers, b"", client);
        chain.evaluate(&request, SystemTime::now()).decision
    }

    #[test]
    fn no_gates_is_the_pass_through_gate() {
        let chain = build(&route(Vec::new(), GateMode::All), None).unwrap();
        assert!(chain.is_pass_through());
    }

    #[test]
    fn ip_specs_deny_first_then_allow() {
        let ip = GateSpec::Ip {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            deny: vec!["192.0.2.66/32".parse().unwrap()],
        };
        let chain = build(&route(vec![ip], GateMode::All), None).unwrap();
        assert!(!chain.is_pass_through());
        assert!(decide(&chain, "192.0.2.1:5000").is_allow());
        assert!(!decide(&chain, "192.0.2.66:5000").is_allow());
        assert!(!decide(&chain, "198.51.100.1:5000").is_allow());
        let deny_only = GateSpec::Ip {
            allow: Vec::new(),
            deny: vec!["192.0.2.66/32".parse().unwrap()],
        };
        let chain = build(&route(vec![deny_only], GateMode::All), None).unwrap();
        assert!(decide(&chain, "198.51.100.1:5000").is_allow());
        assert!(!decide(&chain, "192.0.2.66:5000").is_allow());
    }

    #[test]
    fn modes_and_rate_limits_compose() {
        let office = GateSpec::Ip {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: Vec::new(),
        };
        let lab = GateSpec::Ip {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            deny: Vec::new(),
        };
        let any = build(
            &route(vec![office.clone(), lab.clone()], GateMode::Any),
            None,
        )
        .unwrap();
        assert!(matches!(&any, GateChain::AnyOf(members) if members.len() == 2));
        assert!(decide(&any, "192.0.2.1:1").is_allow());
        let all = build(&route(vec![office, lab], GateMode::All), None).unwrap();
        assert!(!decide(&all, "192.0.2.1:1").is_allow());

        let mut limited = route(Vec::new(), GateMode::All);
        limited.rate_limit = Some(RateLimitSpec {
            requests: 1,
            per_secs: 60,
        });
        let chain = build(&limited, None).unwrap();
        assert!(matches!(chain, GateChain::RateLimited(..)));
        assert!(decide(&chain, "192.0.2.1:1").is_allow());
        assert!(!decide(&chain, "192.0.2.1:1").is_allow());
        assert!(decide(&chain, "192.0.2.2:1").is_allow());
    }

    #[test]
    fn refusals_name_the_gate_and_the_fix() {
        let login = GateSpec::Login {
            allowed_emails: vec!["alice@example.com".into()],
            allowed_domains: Vec::new(),
            allowed_groups: Vec::new(),
        };
        let error = build(&route(vec![login.clone()], GateMode::All), None).unwrap_err();
        assert!(
            error.starts_with("gate #1 (login): this ingress has no [oidc] section"),
            "{error}"
        );
        let oidc = OidcDefaults {
            issuer: "https://idp.example".into(),
            client_id: "edge".into(),
            client_secret: None,
            scopes: None,
            session_ttl: None,
        };
        build(&route(vec![login], GateMode::All), Some(&oidc)).unwrap();

        let unknown = GateSpec::Webhook {
            provider: "githib".into(),
            secrets: vec![GateSecret::new("s")],
            tolerance_secs: None,
        };
        let ip = GateSpec::Ip {
            allow: Vec::new(),
            deny: Vec::new(),
        };
        let error = build(&route(vec![ip, unknown], GateMode::All), None).unwrap_err();
        assert!(error.starts_with("gate #2 (webhook): "), "{error}");
        assert!(error.contains("githib"), "{error}");

        // Without a JWKS URL the keys are discovered, so the issuer must be a URL.
        let jwt = GateSpec::Jwt {
            issuer: "idp.example".into(),
            jwks_url: None,
            audiences: vec!["app".into()],
        };
        let error = build(&route(vec![jwt], GateMode::All), None).unwrap_err();
        assert!(
            error.contains("cannot be discovered; give jwks_url"),
            "{error}"
        );
        let jwt = GateSpec::Jwt {
            issuer: "https://idp.example".into(),
            jwks_url: None,
            audiences: vec!["app".into()],
        };
        assert!(build(&route(vec![jwt], GateMode::All), None).is_ok());
        let mtls = GateSpec::Mtls {
            ca_pem: "not a pem".into(),
        };
        let error = build(&route(vec![mtls], GateMode::All), None).unwrap_err();
        assert!(error.starts_with("gate #1 (mtls): "), "{error}");
        let github = GateSpec::Webhook {
            provider: "github".into(),
            secrets: vec![GateSecret::new("s3cret")],
            tolerance_secs: None,
        };
        let chain = build(&route(vec![github], GateMode::All), None).unwrap();
        assert!(!format!("{chain:?}").contains("s3cret"));
    }
}

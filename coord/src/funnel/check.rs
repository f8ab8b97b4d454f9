//! Whether a funnel may open: the request's own sanity, then the policy's grant for the
//! port (the `funnel` attribute, a `funnels` rule covering the port, the gates the rule
//! requires and its `maxTTL`). Every refusal names what is missing and what to do.

use std::time::Duration;

use postern_acl::{CompiledNode, FUNNEL_ATTR, FunnelGrant};
use postern_proto::funnel::{FunnelProtocol, FunnelRefusal, FunnelSpec, GateMode, GateSpec};
use postern_proto::funnel_hop::FUNNEL_HOP_PORT;

/// Refusal code: the policy gives the node no grant for the port.
pub const NO_GRANT: &str = "no_grant";
/// Refusal code: the grant requires gates the funnel lacks.
pub const GATE_REQUIRED: &str = "gate_required";
/// Refusal code: the TTL asked for is longer than the grant's `maxTTL`.
pub const TTL_TOO_LONG: &str = "ttl_too_long";
/// Refusal code: another funnel holds the hostname.
pub const NAME_TAKEN: &str = "name_taken";
/// Refusal code: the request itself is malformed.
pub const INVALID: &str = "invalid";
/// Refusal code: this coord serves no funnels (no funnel domain, no public TCP ports).
pub const NO_INGRESS: &str = "no_ingress";
/// Refusal code: no such funnel.
pub const NOT_FOUND: &str = "not_found";
/// Refusal code: the coord failed (its store); try again.
pub const INTERNAL: &str = "internal";

/// The most gates one funnel may have.
pub const MAX_GATES: usize = 16;
/// The most secrets one webhook gate may carry (several during a rotation).
pub const MAX_SECRETS: usize = 8;
/// The longest secret, issuer, provider or list entry accepted, in bytes.
pub const MAX_FIELD_LEN: usize = 2048;
/// The most entries of one gate's lists (emails, domains, groups, prefixes, audiences).
pub const MAX_LIST_LEN: usize = 1024;
/// The largest CA bundle of an mTLS gate.
pub const MAX_CA_PEM_LEN: usize = 64 * 1024;

/// Who a node funnels as, for messages: its name and owner (login, or its tags).
#[derive(Debug, Clone, Copy)]
pub struct Funneller<'a> {
    /// The node's name.
    pub node: &'a str,
    /// Its owner's login, or its tags joined by commas for a tagged node.
    pub owner: &'a str,
}

/// A refusal with `code` and `message`.
pub fn refusal(code: &str, message: impl Into<String>) -> FunnelRefusal {
    FunnelRefusal {
        code: code.to_owned(),
        message: message.into(),
    }
}

/// Checks the request alone: the port, TTL, rate limit and each gate's fields, and that a
/// TCP or TLS-passthrough funnel has only IP gates (the edge sees no HTTP request there).
pub fn validate_spec(spec: &FunnelSpec) -> Result<(), FunnelRefusal> {
    let invalid = |message: String| Err(refusal(INVALID, message));
    if spec.port == 0 {
        return invalid(
            "port 0 cannot be funnelled: give the local port the service listens on".into(),
        );
    }
    if spec.port == FUNNEL_HOP_PORT {
        return invalid(format!(
            "port {FUNNEL_HOP_PORT} cannot be funnelled: it is the node's funnel hop port"
        ));
    }
    if spec.ttl_secs == Some(0) {
        return invalid("a ttl of 0 would close the funnel at once: give a positive --ttl".into());
    }
    if let Some(limit) = &spec.rate_limit
        && (limit.requests == 0 || limit.per_secs == 0)
    {
        return invalid(format!(
            "rate limit {}/{}s admits nothing: give at least 1 request per at least 1 second",
            limit.requests, limit.per_secs
        ));
    }
    if spec.gates.len() > MAX_GATES {
        return invalid(format!(
            "{} gates is too many: at most {MAX_GATES}",
            spec.gates.len()
        ));
    }
    for gate in &spec.gates {
        validate_gate(gate).map_err(|why| refusal(INVALID, why))?;
    }
    if spec.protocol != FunnelProtocol::Http
        && let Some(gate) = spec
            .gates
            .iter()
            .find(|g| !matches!(g, GateSpec::Ip { .. }))
    {
        return invalid(format!(
            "a {} funnel can only have --allow-ip/--deny-ip gates: the ingress does not see its requests, so a {} gate cannot run; use an http funnel",
            protocol_name(spec.protocol),
            gate.kind()
        ));
    }
    Ok(())
}

/// Checks `spec` against the node's compiled policy result and returns the funnel's TTL:
/// the one asked for, or the grant's `maxTTL` when none was asked for. `compiled` is
/// `None` for a node the policy does not cover (unapproved, or its key expired).
pub fn check_grant(
    who: Funneller<'_>,
    compiled: Option<&CompiledNode>,
    spec: &FunnelSpec,
) -> Result<Option<u64>, FunnelRefusal> {
    let grant = grant_for(who, compiled, spec.port)?;
    check_gates(grant, spec)?;
    let max = grant.max_ttl.map(|ttl| ttl.as_secs());
    match (spec.ttl_secs, max) {
        (Some(asked), Some(max)) if asked > max => Err(refusal(
            TTL_TOO_LONG,
            format!(
                "ttl {} exceeds the policy's maxTTL {} (rule {}); ask for --ttl {} or less",
                human(asked),
                human(max),
                grant.rule,
                human(max)
            ),
        )),
        (asked, max) => Ok(asked.or(max)),
    }
}

/// The grant that decides a funnel of `port`, or a refusal naming what is missing.
pub fn grant_for<'c>(
    who: Funneller<'_>,
    compiled: Option<&'c CompiledNode>,
    port: u16,
) -> Result<&'c FunnelGrant, FunnelRefusal> {
    let Some(compiled) = compiled else {
        return Err(refusal(
            NO_GRANT,
            format!(
                "node {} is not in the tailnet's policy now (it waits for approval or its key expired)",
                who.node
            ),
        ));
    };
    if !compiled.node_attrs.iter().any(|a| a == FUNNEL_ATTR) {
        return Err(refusal(
            NO_GRANT,
            format!(
                "node {} has no `{FUNNEL_ATTR}` attribute in nodeAttrs; an admin must add one whose target matches {} (docs/policy.md, nodeAttrs)",
                who.node, who.owner
            ),
        ));
    }
    compiled.funnel_grant_for(port).ok_or_else(|| {
        refusal(
            NO_GRANT,
            format!(
                "no `funnels` rule covers port {port} for {} (node {}); an admin must add one, or funnel a port a rule covers",
                who.owner, who.node
            ),
        )
    })
}

/// Whether the funnel's gates satisfy what `grant` requires of the edge.
pub fn check_gates(grant: &FunnelGrant, spec: &FunnelSpec) -> Result<(), FunnelRefusal> {
    let required = &grant.gates;
    let http_only = if spec.protocol == FunnelProtocol::Http {
        ""
    } else {
        " (login gates need an http funnel)"
    };
    if !required.require_login.is_empty() {
        let principals: Vec<String> = required
            .require_login
            .iter()
            .map(ToString::to_string)
            .collect();
        if !spec
            .gates
            .iter()
            .any(|g| matches!(g, GateSpec::Login { .. }))
        {
            return Err(refusal(
                GATE_REQUIRED,
                format!(
                    "requireLogin: the funnel needs a --login gate (rule {} requires a login by {}){http_only}",
                    grant.rule,
                    principals.join(", ")
                ),
            ));
        }
        if spec.gate_mode == GateMode::Any && spec.gates.len() > 1 {
            return Err(refusal(
                GATE_REQUIRED,
                format!(
                    "requireLogin: with --gate-mode any another gate could admit a request without the login rule {} requires; use --gate-mode all",
                    grant.rule
                ),
            ));
        }
    }
    if required.require_webhook_signature {
        let unsigned = spec
            .gates
            .iter()
            .any(|g| matches!(g, GateSpec::Webhook { secrets, .. } if secrets.is_empty()));
        if unsigned {
            return Err(refusal(
                GATE_REQUIRED,
                format!(
                    "requireWebhookSignature: the webhook gate must verify signatures (rule {}); give it a secret (--secret-env NAME)",
                    grant.rule
                ),
            ));
        }
    }
    if !required.allow_ungated && spec.gates.is_empty() {
        return Err(refusal(
            GATE_REQUIRED,
            format!(
                "the policy requires a gate for this funnel (rule {} has allowUngated false); add --verify-webhook, --login, --jwt-issuer, --allow-ip or --mtls-ca",
                grant.rule
            ),
        ));
    }
    Ok(())
}

/// `secs` as a short duration (`24h`, `90m`, `1h 30m`).
pub fn human(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The protocol's name in messages.
pub fn protocol_name(protocol: FunnelProtocol) -> &'static str {
    match protocol {
        FunnelProtocol::Http => "http",
        FunnelProtocol::Tcp => "tcp",
        FunnelProtocol::TlsPassthrough => "tls-passthrough",
    }
}

fn validate_gate(gate: &GateSpec) -> Result<(), String> {
    let field = |what: &str, value: &str| -> Result<(), String> {
        if value.is_empty() {
            Err(format!("the {} gate's {what} is empty", gate.kind()))
        } else if value.len() > MAX_FIELD_LEN {
            Err(format!(
                "the {} gate's {what} is longer than {MAX_FIELD_LEN} bytes",
                gate.kind()
            ))
        } else {
            Ok(())
        }
    };
    let list = |what: &str, len: usize| -> Result<(), String> {
        if len > MAX_LIST_LEN {
            Err(format!(
                "the {} gate lists {len} {what}: at most {MAX_LIST_LEN}",
                gate.kind()
            ))
        } else {
            Ok(())
        }
    };
    match gate {
        GateSpec::Webhook {
            provider, secrets, ..
        } => {
            field("provider", provider)?;
            if secrets.len() > MAX_SECRETS {
                return Err(format!(
                    "the webhook gate has {} secrets: at most {MAX_SECRETS}",
                    secrets.len()
                ));
            }
            for secret in secrets {
                // Never the secret itself in the message.
                field("secret", secret.expose())?;
            }
        }
        GateSpec::Login {
            allowed_emails,
            allowed_domains,
            allowed_groups,
        } => {
            list("emails", allowed_emails.len())?;
            list("domains", allowed_domains.len())?;
            list("groups", allowed_groups.len())?;
            for entry in allowed_emails
                .iter()
                .chain(allowed_domains)
                .chain(allowed_groups)
            {
                field("list entry", entry)?;
            }
        }
        GateSpec::Jwt {
            issuer,
            jwks_url,
            audiences,
        } => {
            field("issuer", issuer)?;
            if let Some(url) = jwks_url {
                field("jwks_url", url)?;
            }
            list("audiences", audiences.len())?;
            for audience in audiences {
                field("audience", audience)?;
            }
        }
        GateSpec::Ip { allow, deny } => {
            list("prefixes", allow.len() + deny.len())?;
        }
        GateSpec::Mtls { ca_pem } => {
            if ca_pem.len() > MAX_CA_PEM_LEN {
                return Err(format!(
                    "the mtls gate's CA bundle is larger than {MAX_CA_PEM_LEN} bytes"
                ));
            }
            if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err("the mtls gate's CA bundle holds no PEM certificate".into());
            }
        }
        _ => return Err(format!("this coord does not know {} gates", gate.kind())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_acl::{NodeId, NodeSet, NodeView, Policy};
    use postern_proto::funnel::{GateSecret, RateLimitSpec};

    const WHO: Funneller<'static> = Funneller {
        node: "laptop",
        owner: "alice@example.com",
    };

    fn compiled(policy: &str, user: &str, tags: &[&str]) -> CompiledNode {
        let policy = Policy::parse("policy.hujson", policy).unwrap();
        let me = NodeView {
            id: NodeId(1),
            addresses: vec!["100.64.0.1".parse().unwrap()],
            user: user.into(),
            idp_groups: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            is_ingress: false,
        };
        let nodes: NodeSet = [me.clone()].into_iter().collect();
        policy.compile_for(&me, &nodes)
    }

    const POLICY: &str = r#"{
      "groups": {"group:eng": ["alice@example.com"]},
      "nodeAttrs": [{"target": ["alice@example.com"], "attr": ["funnel"]}],
      "funnels": [
        {"src": ["alice@example.com"], "ports": ["3000"], "maxTTL": "24h"},
        {"src": ["alice@example.com"], "ports": ["4000"], "requireLogin": ["group:eng"]},
        {"src": ["alice@example.com"], "ports": ["5000"], "requireWebhookSignature": true, "allowUngated": true},
        {"src": ["alice@example.com"], "ports": ["6000"], "allowUngated": true},
      ],
    }"#;

    fn spec(port: u16, gates: Vec<GateSpec>) -> FunnelSpec {
        FunnelSpec {
            port,
            name: None,
            protocol: FunnelProtocol::Http,
            ttl_secs: None,
            gates,
            gate_mode: GateMode::All,
            rate_limit: None,
        }
    }

    fn webhook(secrets: &[&str]) -> GateSpec {
        GateSpec::Webhook {
            provider: "github".into(),
            secrets: secrets.iter().map(|s| GateSecret::new(*s)).collect(),
            tolerance_secs: None,
        }
    }

    fn login() -> GateSpec {
        GateSpec::Login {
            allowed_emails: vec![],
            allowed_domains: vec!["example.com".into()],
            allowed_groups: vec![],
        }
    }

    fn ip() -> GateSpec {
        GateSpec::Ip {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            deny: vec![],
        }
    }

    #[test]
    fn a_node_without_the_attribute_is_told_so() {
        let c = compiled(POLICY, "bob@example.com", &[]);
        let who = Funneller {
            node: "bobs-box",
            owner: "bob@example.com",
        };
        let err = check_grant(who, Some(&c), &spec(3000, vec![ip()])).unwrap_err();
        assert_eq!(err.code, NO_GRANT);
        assert_eq!(
            err.message,
            "node bobs-box has no `funnel` attribute in nodeAttrs; an admin must add one whose target matches bob@example.com (docs/policy.md, nodeAttrs)"
        );
        let err = check_grant(who, None, &spec(3000, vec![ip()])).unwrap_err();
        assert_eq!(err.code, NO_GRANT);
        assert!(
            err.message.contains("not in the tailnet's policy"),
            "{err:?}"
        );
    }

    #[test]
    fn a_port_no_rule_covers_is_named() {
        let c = compiled(POLICY, "alice@example.com", &[]);
        let err = check_grant(WHO, Some(&c), &spec(3001, vec![ip()])).unwrap_err();
        assert_eq!(err.code, NO_GRANT);
        assert_eq!(
            err.message,
            "no `funnels` rule covers port 3001 for alice@example.com (node laptop); an admin must add one, or funnel a port a rule covers"
        );
    }

    #[test]
    fn ungated_funnels_are_refused_unless_allowed() {
        let c = compiled(POLICY, "alice@example.com", &[]);
        let err = check_grant(WHO, Some(&c), &spec(3000, vec![])).unwrap_err();
        assert_eq!(err.code, GATE_REQUIRED);
        assert!(
            err.message.starts_with(
                "the policy requires a gate for this funnel (rule funnels[0] (policy.hujson:"
            ),
            "{}",
            err.message
        );
        assert!(err.message.contains("has allowUngated false); add --verify-webhook, --login, --jwt-issuer, --allow-ip or --mtls-ca"), "{}", err.message);
        assert_eq!(check_grant(WHO, Some(&c), &spec(6000, vec![])), Ok(None));
    }

    #[test]
    fn required_login_and_signatures_are_enforced() {
        let c = compiled(POLICY, "alice@example.com", &[]);
        let err = check_grant(WHO, Some(&c), &spec(4000, vec![ip()])).unwrap_err();
        assert_eq!(err.code, GATE_REQUIRED);
        assert!(
            err.message
                .starts_with("requireLogin: the funnel needs a --login gate (rule funnels[1]"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("requires a login by group:eng"),
            "{}",
            err.message
        );
        assert!(check_grant(WHO, Some(&c), &spec(4000, vec![login(), ip()])).is_ok());
        let mut any = spec(4000, vec![login(), ip()]);
        any.gate_mode = GateMode::Any;
        let err = check_grant(WHO, Some(&c), &any).unwrap_err();
        assert!(err.message.contains("--gate-mode all"), "{}", err.message);
        let err = check_grant(WHO, Some(&c), &spec(5000, vec![webhook(&[])])).unwrap_err();
        assert_eq!(err.code, GATE_REQUIRED);
        assert!(
            err.message.starts_with("requireWebhookSignature"),
            "{}",
            err.message
        );
        assert!(check_grant(WHO, Some(&c), &spec(5000, vec![webhook(&["s"])])).is_ok());
    }

    #[test]
    fn ttls_are_capped_by_the_grant() {
        let c = compiled(POLICY, "alice@example.com", &[]);
        assert_eq!(
            check_grant(WHO, Some(&c), &spec(3000, vec![ip()])),
            Ok(Some(86_400))
        );
        let mut short = spec(3000, vec![ip()]);
        short.ttl_secs = Some(3600);
        assert_eq!(check_grant(WHO, Some(&c), &short), Ok(Some(3600)));
        let mut long = spec(3000, vec![ip()]);
        long.ttl_secs = Some(48 * 3600);
        let err = check_grant(WHO, Some(&c), &long).unwrap_err();
        assert_eq!(err.code, TTL_TOO_LONG);
        assert!(
            err.message
                .starts_with("ttl 2days exceeds the policy's maxTTL 1day (rule funnels[0]"),
            "{}",
            err.message
        );
        assert!(
            err.message.ends_with("ask for --ttl 1day or less"),
            "{}",
            err.message
        );
    }

    #[test]
    fn malformed_requests_are_invalid_and_never_echo_secrets() {
        let cases: Vec<(FunnelSpec, &str)> = vec![
            (spec(0, vec![]), "port 0"),
            (spec(FUNNEL_HOP_PORT, vec![]), "funnel hop port"),
            (
                FunnelSpec {
                    ttl_secs: Some(0),
                    ..spec(1, vec![])
                },
                "ttl of 0",
            ),
            (
                FunnelSpec {
                    rate_limit: Some(RateLimitSpec {
                        requests: 0,
                        per_secs: 1,
                    }),
                    ..spec(1, vec![])
                },
                "admits nothing",
            ),
            (spec(1, vec![ip(); MAX_GATES + 1]), "too many"),
            (spec(1, vec![webhook(&[""])]), "secret is empty"),
            (
                spec(1, vec![webhook(&[&"x".repeat(MAX_FIELD_LEN + 1)])]),
                "longer than",
            ),
            (
                spec(
                    1,
                    vec![GateSpec::Mtls {
                        ca_pem: "nope".into(),
                    }],
                ),
                "no PEM certificate",
            ),
            (
                FunnelSpec {
                    protocol: FunnelProtocol::Tcp,
                    ..spec(1, vec![webhook(&["hunter2"])])
                },
                "a tcp funnel can only have --allow-ip/--deny-ip gates",
            ),
        ];
        for (spec, expected) in cases {
            let err = validate_spec(&spec).unwrap_err();
            assert_eq!(err.code, INVALID);
            assert!(err.message.contains(expected), "{}", err.message);
            assert!(!err.message.contains("hunter2"), "{}", err.message);
        }
        let tcp = FunnelSpec {
            protocol: FunnelProtocol::Tcp,
            ..spec(22, vec![ip()])
        };
        assert!(validate_spec(&tcp).is_ok());
    }
}

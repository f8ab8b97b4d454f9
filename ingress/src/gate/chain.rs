//! The gate chain: gates composed with any-of / all-of, nested, evaluated in order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Decision, Gate, GateRequest, Identity, RateLimit, RateLimitKey, ReasonCode};

/// A funnel's gates, composed.
///
/// - `Gate`: one gate.
/// - `AnyOf`: members are tried in order; the first `Allow` admits, the first `Respond`
///   answers; if every member denies, the chain denies with the most telling reason (a
///   failed check beats a missing header: see [`GateChain::evaluate`]).
/// - `AllOf`: members are tried in order; the first `Deny` or `Respond` ends the chain;
///   if every member allows, the chain admits with the names and principals of all of
///   them joined by `+`.
///
/// Build with [`GateChain::gate`], [`GateChain::any_of`] and [`GateChain::all_of`]; empty
/// groups are refused at build time because an empty all-of would admit everything.
#[derive(Debug, Clone)]
pub enum GateChain {
    /// One gate.
    Gate(Arc<dyn Gate>),
    /// Admit when any member admits.
    AnyOf(Vec<GateChain>),
    /// Admit when every member admits.
    AllOf(Vec<GateChain>),
    /// A rate limit around a chain: see [`GateChain::rate_limited`].
    RateLimited(Box<GateChain>, Arc<RateLimit>),
}

/// Why a chain could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// An any-of or all-of group with no members.
    #[error(
        "an {0} group of gates is empty; give it at least one gate or remove the group (an empty group would admit or refuse everything)"
    )]
    EmptyGroup(&'static str),
}

/// The decision of a whole chain, with the trace of how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a chain decision must be acted on"]
pub struct ChainOutcome {
    /// What to do with the request.
    pub decision: Decision,
    /// Which gates ran, in order, and what each decided: for the audit record.
    pub trace: ChainTrace,
    /// The gate whose decision this is (joined names for an all-of admission); `None`
    /// when no gate decided (`no_gate_admitted`).
    pub decided_by: Option<String>,
}

/// The ordered record of gate evaluations in one chain run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainTrace {
    /// One entry per gate evaluated, in evaluation order. Gates that a short-circuit
    /// skipped do not appear.
    pub entries: Vec<TraceEntry>,
}

/// One gate's evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// The gate's name.
    pub gate: String,
    /// Nesting depth in the chain (0 for a top-level gate).
    pub depth: usize,
    /// What the gate decided.
    pub outcome: TraceOutcome,
}

/// A gate's decision, reduced to what an audit record keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceOutcome {
    /// Admitted as this principal.
    Allowed(String),
    /// Denied for this reason.
    Denied(ReasonCode),
    /// Answered a handshake with this status.
    Responded(u16),
}

impl ChainTrace {
    /// A compact one-line form for logs: `webhook:github=signature_mismatch webhook:stripe=allow`.
    pub fn summary(&self) -> String {
        self.entries
            .iter()
            .map(|entry| match &entry.outcome {
                TraceOutcome::Allowed(_) => format!("{}=allow", entry.gate),
                TraceOutcome::Denied(reason) => format!("{}={reason}", entry.gate),
                TraceOutcome::Responded(status) => format!("{}=respond:{status}", entry.gate),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl GateChain {
    /// A chain of one gate.
    pub fn gate(gate: impl Gate + 'static) -> Self {
        GateChain::Gate(Arc::new(gate))
    }

    /// Admit when any member admits. Fails on an empty list.
    pub fn any_of(mut members: Vec<GateChain>) -> Result<Self, ChainError> {
        match members.len() {
            0 => Err(ChainError::EmptyGroup("any-of")),
            // A group of one decides as its member does: the member itself, which runs
            // without the group's fold (a funnel's single gate takes the fast path).
            1 => Ok(members.remove(0)),
            _ => Ok(GateChain::AnyOf(members)),
        }
    }

    /// Admit when every member admits. Fails on an empty list. A list of one is that
    /// member (it decides the same).
    pub fn all_of(mut members: Vec<GateChain>) -> Result<Self, ChainError> {
        match members.len() {
            0 => Err(ChainError::EmptyGroup("all-of")),
            1 => Ok(members.remove(0)),
            _ => Ok(GateChain::AllOf(members)),
        }
    }

    /// Wraps `inner` in a rate limit. A limit keyed by client address or by funnel is
    /// charged *before* `inner` runs, so refused floods cost no signature check or IdP
    /// round trip; a limit keyed by identity is charged after `inner` admitted, with the
    /// admitted principal. Without a token the request is denied with `rate_limited`
    /// (429 and `Retry-After`), and the trace names the limit (e.g.
    /// `rate-limit:client-ip`).
    pub fn rate_limited(inner: GateChain, limit: Arc<RateLimit>) -> Self {
        GateChain::RateLimited(Box::new(inner), limit)
    }

    /// Runs the chain on one request with the gates' sync paths only (no I/O). Call once
    /// per request with the current wall-clock time; act on `decision` and write `trace`
    /// to the audit log. The edge uses [`GateChain::evaluate_async`], which lets the JWT
    /// and OIDC gates fetch keys and redeem codes; this one is for tests, benchmarks and
    /// chains of I/O-free gates.
    ///
    /// In an any-of group where every member denied, the reported denial is the first one
    /// whose reason is not "nothing was presented" (`signature_missing`,
    /// `timestamp_missing`, `token_missing`, `client_cert_missing`, `login_required`),
    /// else the first denial: a GitHub-signed request with a bad signature reports
    /// `signature_mismatch` even when a Stripe gate later in the group found no Stripe
    /// header. [`ChainOutcome::decided_by`] names the gate whose decision was reported.
    pub fn evaluate(&self, request: &GateRequest<'_>, now: SystemTime) -> ChainOutcome {
        let mut trace = ChainTrace::default();
        let (decision, decided_by) = self.run(request, now, 0, &mut trace);
        ChainOutcome {
            decision,
            trace,
            decided_by,
        }
    }

    /// Runs the chain on one request, letting each gate do its I/O
    /// ([`Gate::evaluate_async`]). Same rules and result as [`GateChain::evaluate`]; call
    /// it from the edge once per request.
    pub async fn evaluate_async(&self, request: &GateRequest<'_>, now: SystemTime) -> ChainOutcome {
        let mut trace = ChainTrace::default();
        let (decision, decided_by) = match self {
            // The usual chain, one gate: no boxed recursion (and, for a gate without
            // I/O, no allocation at all: its `GateFuture` is ready).
            GateChain::Gate(gate) => {
                let decision = gate.evaluate_async(request, now).await;
                record(&mut trace, gate.name(), 0, &decision);
                (decision, Some(gate.name().to_string()))
            }
            _ => self.run_async(request, now, 0, &mut trace).await,
        };
        ChainOutcome {
            decision,
            trace,
            decided_by,
        }
    }

    /// Whether the chain is the lone [`PassThroughGate`](super::PassThroughGate) of a
    /// funnel without gates. (Whether the edge buffers bodies is
    /// [`GateChain::reads_body`].)
    pub fn is_pass_through(&self) -> bool {
        matches!(self, GateChain::Gate(gate) if gate.name() == "pass-through")
    }

    /// Whether any gate of the chain reads the request's body ([`Gate::reads_body`]): the
    /// edge then buffers the body, up to its bound, before it runs the chain; otherwise the
    /// chain decides on an empty body and the body streams to the target.
    pub fn reads_body(&self) -> bool {
        match self {
            GateChain::Gate(gate) => gate.reads_body(),
            GateChain::AnyOf(members) | GateChain::AllOf(members) => {
                members.iter().any(GateChain::reads_body)
            }
            GateChain::RateLimited(inner, _) => inner.reads_body(),
        }
    }

    /// The subjects of the CAs of every mTLS gate in the chain: the edge asks TLS clients
    /// for a certificate when this is not empty.
    pub fn client_ca_subjects(&self) -> Vec<rustls::DistinguishedName> {
        match self {
            GateChain::Gate(gate) => gate.client_ca_subjects(),
            GateChain::AnyOf(members) | GateChain::AllOf(members) => members
                .iter()
                .flat_map(GateChain::client_ca_subjects)
                .collect(),
            GateChain::RateLimited(inner, _) => inner.client_ca_subjects(),
        }
    }

    fn run(
        &self,
        request: &GateRequest<'_>,
        now: SystemTime,
        depth: usize,
        trace: &mut ChainTrace,
    ) -> Decided {
        match self {
            GateChain::Gate(gate) => {
                let decision = gate.evaluate(request, now);
                record(trace, gate.name(), depth, &decision);
                (decision, Some(gate.name().to_string()))
            }
            GateChain::AnyOf(members) => {
                let mut fold = AnyOfFold::default();
                for member in members {
                    if let Some(done) = fold.push(member.run(request, now, depth + 1, trace)) {
                        return done;
                    }
                }
                fold.finish()
            }
            GateChain::AllOf(members) => {
                let mut fold = AllOfFold::default();
                for member in members {
                    if let Some(done) = fold.push(member.run(request, now, depth + 1, trace)) {
                        return done;
                    }
                }
                fold.finish()
            }
            GateChain::RateLimited(inner, limit) => {
                if let Some(refused) = charge_before(request, limit, now, depth, trace) {
                    return refused;
                }
                let inner = inner.run(request, now, depth + 1, trace);
                charge_identity(inner, limit, now, depth, trace)
            }
        }
    }

    fn run_async<'a>(
        &'a self,
        request: &'a GateRequest<'a>,
        now: SystemTime,
        depth: usize,
        trace: &'a mut ChainTrace,
    ) -> Pin<Box<dyn Future<Output = Decided> + Send + 'a>> {
        Box::pin(async move {
            match self {
                GateChain::Gate(gate) => {
                    let decision = gate.evaluate_async(request, now).await;
                    record(trace, gate.name(), depth, &decision);
                    (decision, Some(gate.name().to_string()))
                }
                GateChain::AnyOf(members) => {
                    let mut fold = AnyOfFold::default();
                    for member in members {
                        let decided = member.run_async(request, now, depth + 1, trace).await;
                        if let Some(done) = fold.push(decided) {
                            return done;
                        }
                    }
                    fold.finish()
                }
                GateChain::AllOf(members) => {
                    let mut fold = AllOfFold::default();
                    for member in members {
                        let decided = member.run_async(request, now, depth + 1, trace).await;
                        if let Some(done) = fold.push(decided) {
                            return done;
                        }
                    }
                    fold.finish()
                }
                GateChain::RateLimited(inner, limit) => {
                    if let Some(refused) = charge_before(request, limit, now, depth, trace) {
                        return refused;
                    }
                    let inner = inner.run_async(request, now, depth + 1, trace).await;
                    charge_identity(inner, limit, now, depth, trace)
                }
            }
        })
    }
}

/// A decision and the name of the gate (or joined gates) that made it.
type Decided = (Decision, Option<String>);

fn record(trace: &mut ChainTrace, gate: &str, depth: usize, decision: &Decision) {
    trace.entries.push(TraceEntry {
        gate: gate.to_string(),
        depth,
        outcome: match decision {
            Decision::Allow { identity, .. } => TraceOutcome::Allowed(identity.principal.clone()),
            Decision::Deny { reason, .. } => TraceOutcome::Denied(*reason),
            Decision::Respond { status, .. } => TraceOutcome::Responded(status.as_u16()),
        },
    });
}

/// Charges a client-address or funnel limit before the inner chain runs.
fn charge_before(
    request: &GateRequest<'_>,
    limit: &RateLimit,
    now: SystemTime,
    depth: usize,
    trace: &mut ChainTrace,
) -> Option<Decided> {
    let key = match limit.key() {
        RateLimitKey::ClientIp => request.client().ip().to_string(),
        RateLimitKey::Funnel => String::new(),
        RateLimitKey::Identity => return None,
    };
    let denial = limit.charge(&key, now).err()?;
    record(trace, limit.name(), depth, &denial);
    Some((denial, Some(limit.name().to_string())))
}

/// Charges an identity limit after the inner chain admitted.
fn charge_identity(
    inner: Decided,
    limit: &RateLimit,
    now: SystemTime,
    depth: usize,
    trace: &mut ChainTrace,
) -> Decided {
    let (decision, decided_by) = inner;
    let Decision::Allow { identity, .. } = &decision else {
        return (decision, decided_by);
    };
    if limit.key() != RateLimitKey::Identity {
        return (decision, decided_by);
    }
    match limit.charge(&identity.principal, now) {
        Ok(()) => (decision, decided_by),
        Err(denial) => {
            record(trace, limit.name(), depth, &denial);
            (denial, Some(limit.name().to_string()))
        }
    }
}

/// Any-of: the first allow or respond ends the group; otherwise the most telling denial.
#[derive(Default)]
struct AnyOfFold {
    denials: Vec<Decided>,
}

impl AnyOfFold {
    fn push(&mut self, decided: Decided) -> Option<Decided> {
        if matches!(decided.0, Decision::Deny { .. }) {
            self.denials.push(decided);
            None
        } else {
            Some(decided)
        }
    }

    fn finish(mut self) -> Decided {
        let telling = self
            .denials
            .iter()
            .position(|(decision, _)| !decision.deny_reason().is_some_and(is_absence))
            .unwrap_or(0);
        if telling < self.denials.len() {
            self.denials.swap_remove(telling)
        } else {
            (Decision::deny(ReasonCode::NoGateAdmitted), None)
        }
    }
}

/// All-of: the first deny or respond ends the group; otherwise every admission joined.
#[derive(Default)]
struct AllOfFold {
    gates: Vec<String>,
    principals: Vec<String>,
    attributes: Vec<(std::borrow::Cow<'static, str>, String)>,
}

impl AllOfFold {
    fn push(&mut self, decided: Decided) -> Option<Decided> {
        match decided.0 {
            Decision::Allow { gate, identity } => {
                self.gates.push(gate);
                self.principals.push(identity.principal);
                self.attributes.extend(identity.attributes);
                None
            }
            refused_or_answered => Some((refused_or_answered, decided.1)),
        }
    }

    fn finish(self) -> Decided {
        if self.gates.is_empty() {
            return (Decision::deny(ReasonCode::NoGateAdmitted), None);
        }
        let gate = self.gates.join("+");
        (
            Decision::Allow {
                gate: gate.clone(),
                identity: Identity {
                    principal: self.principals.join("+"),
                    attributes: self.attributes,
                },
            },
            Some(gate),
        )
    }
}

fn is_absence(reason: ReasonCode) -> bool {
    matches!(
        reason,
        ReasonCode::SignatureMissing
            | ReasonCode::TimestampMissing
            | ReasonCode::NoGateAdmitted
            | ReasonCode::TokenMissing
            | ReasonCode::ClientCertMissing
            | ReasonCode::LoginRequired
    )
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use http::{HeaderMap, Method};

    use super::*;
    use crate::gate::PassThroughGate;

    #[derive(Debug)]
    struct Fixed(&'static str, Decision);

    impl Gate for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn evaluate(&self, _: &GateRequest<'_>, _: SystemTime) -> Decision {
            self.1.clone()
        }
    }

    fn deny(name: &'static str, reason: ReasonCode) -> GateChain {
        GateChain::gate(Fixed(name, Decision::deny(reason)))
    }

    fn allow(name: &'static str) -> GateChain {
        GateChain::gate(Fixed(
            name,
            Decision::Allow {
                gate: name.to_string(),
                identity: Identity::new(format!("id:{name}")).with_attribute("From", name),
            },
        ))
    }

    fn run(chain: &GateChain) -> ChainOutcome {
        let headers = HeaderMap::new();
        let method = Method::POST;
        let request = GateRequest::new(
            &method,
            "https://a.example/",
            &headers,
            b"",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
        );
        chain.evaluate(&request, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn only_chains_with_a_gate_that_reads_bodies_buffer_them() {
        use crate::gate::{
            IpAction, IpRulesConfig, IpRulesGate, Provider, RateLimitConfig, Secret, WebhookGate,
            WebhookGateConfig,
        };
        let webhook = || {
            GateChain::gate(
                WebhookGate::new(WebhookGateConfig::new(
                    Provider::Github,
                    vec![Secret::from("s3cret")],
                ))
                .unwrap(),
            )
        };
        let ip = || {
            GateChain::gate(
                IpRulesGate::new(IpRulesConfig {
                    rules: vec!["allow 10.0.0.0/8".parse().unwrap()],
                    default: IpAction::Deny,
                    trusted_proxies: Vec::new(),
                })
                .unwrap(),
            )
        };
        let limit = || {
            Arc::new(
                RateLimit::new(RateLimitConfig::new(
                    RateLimitKey::ClientIp,
                    10,
                    std::time::Duration::from_secs(1),
                ))
                .unwrap(),
            )
        };
        assert!(webhook().reads_body());
        assert!(!ip().reads_body());
        assert!(!allow("a").reads_body());
        assert!(
            GateChain::any_of(vec![ip(), webhook()])
                .unwrap()
                .reads_body()
        );
        assert!(
            GateChain::all_of(vec![webhook(), ip()])
                .unwrap()
                .reads_body()
        );
        assert!(
            !GateChain::all_of(vec![ip(), allow("a")])
                .unwrap()
                .reads_body()
        );
        assert!(GateChain::rate_limited(webhook(), limit()).reads_body());
        assert!(!GateChain::rate_limited(ip(), limit()).reads_body());
        let nested = GateChain::all_of(vec![
            ip(),
            GateChain::any_of(vec![allow("a"), webhook()]).unwrap(),
        ])
        .unwrap();
        assert!(nested.reads_body());
    }

    #[test]
    fn a_group_of_one_is_its_member() {
        for group in [GateChain::all_of, GateChain::any_of] {
            let chain = group(vec![allow("a")]).unwrap();
            assert!(matches!(chain, GateChain::Gate(_)));
            let outcome = run(&chain);
            let Decision::Allow { gate, identity } = &outcome.decision else {
                panic!("{:?}", outcome.decision);
            };
            assert_eq!((gate.as_str(), identity.principal.as_str()), ("a", "id:a"));
            assert_eq!(identity.attributes, [("From".into(), "a".to_string())]);
            assert_eq!(outcome.decided_by.as_deref(), Some("a"));

            let outcome = run(&group(vec![deny("b", ReasonCode::SignatureMismatch)]).unwrap());
            assert!(
                matches!(
                    outcome.decision,
                    Decision::Deny {
                        reason: ReasonCode::SignatureMismatch,
                        ..
                    }
                ),
                "{:?}",
                outcome.decision
            );
            assert_eq!(outcome.decided_by.as_deref(), Some("b"));
        }
    }

    #[test]
    fn empty_groups_are_refused_at_build_time() {
        assert_eq!(
            GateChain::all_of(vec![]).unwrap_err(),
            ChainError::EmptyGroup("all-of")
        );
        assert_eq!(
            GateChain::any_of(vec![]).unwrap_err(),
            ChainError::EmptyGroup("any-of")
        );
    }

    #[test]
    fn any_of_admits_on_first_allow_and_skips_the_rest() {
        let chain = GateChain::any_of(vec![
            deny("a", ReasonCode::SignatureMissing),
            allow("b"),
            deny("c", ReasonCode::SignatureMismatch),
        ])
        .unwrap();
        let outcome = run(&chain);
        assert!(
            matches!(&outcome.decision, Decision::Allow { gate, .. } if gate == "b"),
            "{outcome:?}"
        );
        assert_eq!(outcome.trace.summary(), "a=signature_missing b=allow");
    }

    #[test]
    fn any_of_reports_a_failed_check_over_a_missing_header() {
        let chain = GateChain::any_of(vec![
            deny("a", ReasonCode::SignatureMissing),
            deny("b", ReasonCode::SignatureMismatch),
        ])
        .unwrap();
        let outcome = run(&chain);
        assert_eq!(
            outcome.decision.deny_reason(),
            Some(ReasonCode::SignatureMismatch)
        );
        assert_eq!(outcome.trace.entries.len(), 2);
    }

    #[test]
    fn all_of_needs_every_member_and_joins_identities() {
        let chain = GateChain::all_of(vec![allow("ip"), allow("hook")]).unwrap();
        match run(&chain).decision {
            Decision::Allow { gate, identity } => {
                assert_eq!(gate, "ip+hook");
                assert_eq!(identity.principal, "id:ip+id:hook");
                assert_eq!(identity.attributes.len(), 2);
            }
            other => panic!("expected allow, got {other:?}"),
        }

        let chain = GateChain::all_of(vec![
            allow("ip"),
            deny("hook", ReasonCode::TimestampStale),
            allow("never"),
        ])
        .unwrap();
        let outcome = run(&chain);
        assert_eq!(
            outcome.decision.deny_reason(),
            Some(ReasonCode::TimestampStale)
        );
        assert_eq!(outcome.trace.summary(), "ip=allow hook=timestamp_stale");
    }

    #[test]
    fn nested_groups_record_depth_and_respond_short_circuits() {
        let answer = Decision::respond_ok("text/plain", b"challenge".to_vec());
        let chain = GateChain::all_of(vec![
            GateChain::gate(PassThroughGate),
            GateChain::any_of(vec![
                deny("x", ReasonCode::SignatureMissing),
                GateChain::gate(Fixed("slack", answer.clone())),
            ])
            .unwrap(),
            deny("never", ReasonCode::SignatureMismatch),
        ])
        .unwrap();
        let outcome = run(&chain);
        assert_eq!(outcome.decision, answer);
        let depths: Vec<_> = outcome.trace.entries.iter().map(|e| e.depth).collect();
        assert_eq!(depths, vec![1, 2, 2]);
        assert_eq!(
            outcome.trace.summary(),
            "pass-through=allow x=signature_missing slack=respond:200"
        );
    }
}

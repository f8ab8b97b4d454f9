//! The gate chain: gates composed with any-of / all-of, nested, evaluated in order.

use std::sync::Arc;
use std::time::SystemTime;

use super::{Decision, Gate, GateRequest, Identity, ReasonCode};

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
    pub fn any_of(members: Vec<GateChain>) -> Result<Self, ChainError> {
        if members.is_empty() {
            return Err(ChainError::EmptyGroup("any-of"));
        }
        Ok(GateChain::AnyOf(members))
    }

    /// Admit when every member admits. Fails on an empty list.
    pub fn all_of(members: Vec<GateChain>) -> Result<Self, ChainError> {
        if members.is_empty() {
            return Err(ChainError::EmptyGroup("all-of"));
        }
        Ok(GateChain::AllOf(members))
    }

    /// Runs the chain on one request. Call once per request with the current wall-clock
    /// time; act on `decision` and write `trace` to the audit log.
    ///
    /// In an any-of group where every member denied, the reported denial is the first one
    /// whose reason is not "nothing was presented" (`signature_missing`,
    /// `timestamp_missing`), else the first denial: a GitHub-signed request with a bad
    /// signature reports `signature_mismatch` even when a Stripe gate later in the group
    /// found no Stripe header.
    pub fn evaluate(&self, request: &GateRequest<'_>, now: SystemTime) -> ChainOutcome {
        let mut trace = ChainTrace::default();
        let decision = self.run(request, now, 0, &mut trace);
        ChainOutcome { decision, trace }
    }

    fn run(
        &self,
        request: &GateRequest<'_>,
        now: SystemTime,
        depth: usize,
        trace: &mut ChainTrace,
    ) -> Decision {
        match self {
            GateChain::Gate(gate) => {
                let decision = gate.evaluate(request, now);
                trace.entries.push(TraceEntry {
                    gate: gate.name().to_string(),
                    depth,
                    outcome: match &decision {
                        Decision::Allow { identity, .. } => {
                            TraceOutcome::Allowed(identity.principal.clone())
                        }
                        Decision::Deny { reason, .. } => TraceOutcome::Denied(*reason),
                        Decision::Respond { status, .. } => {
                            TraceOutcome::Responded(status.as_u16())
                        }
                    },
                });
                decision
            }
            GateChain::AnyOf(members) => {
                let mut denials = Vec::new();
                for member in members {
                    match member.run(request, now, depth + 1, trace) {
                        Decision::Deny { status, reason } => denials.push((status, reason)),
                        admitted_or_answered => return admitted_or_answered,
                    }
                }
                let telling = denials
                    .iter()
                    .find(|(_, reason)| !is_absence(*reason))
                    .or_else(|| denials.first());
                match telling {
                    Some((status, reason)) => Decision::Deny {
                        status: *status,
                        reason: *reason,
                    },
                    None => Decision::deny(ReasonCode::NoGateAdmitted),
                }
            }
            GateChain::AllOf(members) => {
                let mut gates = Vec::new();
                let mut principals = Vec::new();
                let mut attributes = Vec::new();
                for member in members {
                    match member.run(request, now, depth + 1, trace) {
                        Decision::Allow { gate, identity } => {
                            gates.push(gate);
                            principals.push(identity.principal);
                            attributes.extend(identity.attributes);
                        }
                        refused_or_answered => return refused_or_answered,
                    }
                }
                if gates.is_empty() {
                    return Decision::deny(ReasonCode::NoGateAdmitted);
                }
                Decision::Allow {
                    gate: gates.join("+"),
                    identity: Identity {
                        principal: principals.join("+"),
                        attributes,
                    },
                }
            }
        }
    }
}

fn is_absence(reason: ReasonCode) -> bool {
    matches!(
        reason,
        ReasonCode::SignatureMissing | ReasonCode::TimestampMissing | ReasonCode::NoGateAdmitted
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

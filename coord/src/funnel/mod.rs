//! The funnel registry: nodes open and close funnels on their control channel, ingress
//! nodes learn every open funnel's route in their netmaps, and the lifecycle closes funnels
//! that expire or lose their grant.
//!
//! - [`Coord::handle_funnel_request`] answers a node's [`FunnelRequest`] (sent on its map
//!   stream): `Open` checks the request ([`check::validate_spec`]) and the policy's grant
//!   for the port ([`check::check_grant`]), assigns the stable hostname
//!   ([`hostname`]) and, for TCP, a public port from `--funnel-tcp-ports`, stores the
//!   funnel and writes `funnel.open`; `Close` closes it (`funnel.close`); `List` lists the
//!   node's open funnels.
//! - [`judge`] decides, for one stored funnel at one moment, whether ingress nodes serve it
//!   ([`FunnelVerdict::Serve`] with its [`FunnelRoute`]), whether it has expired, or whether
//!   its grant no longer allows it (the node lost the `funnel` attribute or the rule, or the
//!   rule now requires gates the funnel lacks). Netmaps carry only served funnels, so a
//!   policy edit removes a route at once; [`crate::lifecycle`] then closes the funnel and
//!   writes `funnel.expire` or `funnel.revoke`.
//!
//! Gate secrets are stored with the funnel (the store file is 0600) and sent to ingress
//! nodes only, inside their encrypted control channel; audit records and admin listings
//! carry gate kinds, never secrets.

pub mod certificates;
pub mod check;
pub mod edge_log;
pub mod hostname;

use std::collections::HashSet;
use std::ops::RangeInclusive;

use postern_acl::{CompiledNode, IdpGroupsMode, Policy, Selector};
use postern_proto::funnel::{
    FunnelChange, FunnelInfo, FunnelProtocol, FunnelRefusal, FunnelRequest, FunnelResponse,
    FunnelRoute, FunnelSpec, GateMode, GateSpec,
};
use postern_proto::{NodeId, UnixTime};
use serde_json::json;

use crate::audit;
use crate::control::Coord;
use crate::control::tailnet::now;
use crate::netmap::TailnetView;
use crate::store::{FunnelRecord, NewFunnel, NodeRecord, StoreError};
use check::{
    Funneller, INTERNAL, INVALID, NAME_TAKEN, NO_INGRESS, NOT_FOUND, check_gates, check_grant,
    grant_for, refusal, validate_spec,
};
use hostname::{funnel_label, hostname_candidates, pick_public_port};

/// What the lifecycle and the netmaps make of one stored funnel now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunnelVerdict {
    /// Closed: nothing to do.
    Closed,
    /// Open and allowed: ingress nodes serve this route.
    Serve(Box<FunnelRoute>),
    /// Its time is up (its own TTL, or the grant's `maxTTL` counted from its opening).
    Expired {
        /// When it expired.
        at: UnixTime,
    },
    /// The policy no longer allows it; the reason says what is missing.
    Revoked {
        /// The refusal an `Open` would get now.
        reason: FunnelRefusal,
    },
}

/// Parses `--funnel-tcp-ports` (`20000-20999`, or one port).
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("invalid port range {text:?}: give FIRST-LAST, e.g. 20000-20999");
    let (first, last) = match text.trim().split_once('-') {
        Some((first, last)) => (first.trim(), last.trim()),
        None => (text.trim(), text.trim()),
    };
    let first: u16 = first.parse().map_err(|_| bad())?;
    let last: u16 = last.parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(bad());
    }
    Ok(first..=last)
}

/// The public URL of a funnel: `https://HOST/`, or `tcp://HOST:PORT` for TCP.
pub fn funnel_url(funnel: &NewFunnel) -> String {
    match (funnel.protocol, funnel.public_port) {
        (FunnelProtocol::Tcp, Some(port)) => format!("tcp://{}:{port}", funnel.hostname),
        _ => format!("https://{}/", funnel.hostname),
    }
}

/// A stored funnel as its owner sees it (gate kinds, no secrets).
pub fn funnel_info(funnel: &NewFunnel) -> FunnelInfo {
    FunnelInfo {
        port: funnel.port,
        name: funnel.name.clone(),
        hostname: funnel.hostname.clone(),
        url: funnel_url(funnel),
        protocol: funnel.protocol,
        public_port: funnel.public_port,
        expires_at: funnel.expires_at,
        gates: gate_kinds(funnel),
    }
}

/// The kinds of a funnel's gates, in order (`webhook`, `ip`, …), for listings and audit.
pub fn gate_kinds(funnel: &NewFunnel) -> Vec<String> {
    funnel.gates.iter().map(|g| g.kind().to_owned()).collect()
}

/// Whom a node funnels as: its tags (comma-separated) if tagged, else its user's login.
pub fn owner_of(view: &TailnetView, node: &NodeRecord) -> String {
    if node.tags.is_empty() {
        view.users
            .get(&node.user_id)
            .map(|user| user.login.clone())
            .unwrap_or_default()
    } else {
        node.tags.join(",")
    }
}

/// Decides what `record` is at `now`, given the tailnet, the policy in force and the
/// node's compiled result under it.
///
/// A served route carries the funnel's own gates, plus what `requireLogin` demands: the
/// rule's principals as a login gate's lists (`policy_login_gate`). If the funnel's only
/// login gate admits anyone who logs in, its lists are filled in; otherwise the policy's
/// login gate is appended, and the chain's mode is `all`, so both must admit.
pub fn judge(
    view: &TailnetView,
    policy: &Policy,
    record: &FunnelRecord,
    compiled: Option<&CompiledNode>,
    now: UnixTime,
) -> FunnelVerdict {
    let funnel = &record.funnel;
    if !funnel.is_open {
        return FunnelVerdict::Closed;
    }
    let Some(node) = view.node(funnel.node_id) else {
        return FunnelVerdict::Revoked {
            reason: refusal(NOT_FOUND, "its node is gone"),
        };
    };
    let owner = owner_of(view, node);
    let who = Funneller {
        node: &node.name,
        owner: &owner,
    };
    let compiled = compiled.filter(|_| view.is_eligible(node));
    let grant = match grant_for(who, compiled, funnel.port) {
        Ok(grant) => grant,
        Err(reason) => return FunnelVerdict::Revoked { reason },
    };
    if let Err(reason) = check_gates(grant, &spec_of(funnel)) {
        return FunnelVerdict::Revoked { reason };
    }
    let grant_end = grant
        .max_ttl
        .zip(funnel.opened_at)
        .map(|(ttl, opened)| later(opened, ttl.as_secs()));
    let expires_at = match (funnel.expires_at, grant_end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(at) = expires_at
        && at <= now
    {
        return FunnelVerdict::Expired { at };
    }
    let mut gates = funnel.gates.clone();
    let mut gate_mode = funnel.gate_mode;
    if let Some(required) = policy_login_gate(policy, &grant.gates.require_login, view) {
        gate_mode = GateMode::All;
        let open_logins: Vec<usize> = gates
            .iter()
            .enumerate()
            .filter(|(_, g)| matches!(g, GateSpec::Login { .. }))
            .map(|(i, _)| i)
            .collect();
        match open_logins.as_slice() {
            [only]
                if matches!(gates.get(*only), Some(GateSpec::Login { allowed_emails, allowed_domains, allowed_groups })
                    if allowed_emails.is_empty() && allowed_domains.is_empty() && allowed_groups.is_empty()) =>
            {
                if let Some(slot) = gates.get_mut(*only) {
                    *slot = required;
                }
            }
            _ => gates.push(required),
        }
    }
    FunnelVerdict::Serve(Box::new(FunnelRoute {
        hostname: funnel.hostname.clone(),
        node: node.id,
        node_key: node.node_key,
        owner: view
            .users
            .get(&node.user_id)
            .map(|user| user.login.clone())
            .unwrap_or(owner),
        port: funnel.port,
        protocol: funnel.protocol,
        public_port: funnel.public_port,
        gates,
        gate_mode,
        rate_limit: funnel.rate_limit,
        expires_at,
    }))
}

/// The login gate `requireLogin: principals` stands for: users become admitted emails,
/// groups their members' emails from the file and (unless the file's list decides alone,
/// `idpGroups: "file"` with members listed) the IdP group name, `autogroup:member` every
/// user's login. `None` when anyone may pass (`*`) or nothing is required.
pub fn policy_login_gate(
    policy: &Policy,
    principals: &[Selector],
    view: &TailnetView,
) -> Option<GateSpec> {
    if principals.is_empty() || principals.contains(&Selector::Any) {
        return None;
    }
    let mut emails = std::collections::BTreeSet::new();
    let mut groups = std::collections::BTreeSet::new();
    for principal in principals {
        match principal {
            Selector::User(login) => {
                emails.insert(login.to_ascii_lowercase());
            }
            Selector::Group(name) => {
                let members = policy.groups().get(name);
                emails.extend(
                    members
                        .into_iter()
                        .flatten()
                        .map(|m| m.to_ascii_lowercase()),
                );
                let file_decides = policy.idp_groups_mode() == IdpGroupsMode::File
                    && members.is_some_and(|m| !m.is_empty());
                if !file_decides {
                    groups.insert(name.clone());
                }
            }
            Selector::AutogroupMember => emails.extend(
                view.users
                    .values()
                    .filter(|user| user.login.contains('@'))
                    .map(|user| user.login.to_ascii_lowercase()),
            ),
            // Tags, hosts and addresses cannot log in.
            _ => {}
        }
    }
    Some(GateSpec::Login {
        allowed_emails: emails.into_iter().collect(),
        allowed_domains: Vec::new(),
        allowed_groups: groups.into_iter().collect(),
    })
}

impl Coord {
    /// Answers a node's funnel request (see the module docs). Never fails: store errors
    /// become an `internal` refusal (and a log line).
    pub async fn handle_funnel_request(
        &self,
        node_id: NodeId,
        request: FunnelRequest,
    ) -> FunnelResponse {
        let result = match request.change {
            FunnelChange::Open(spec) => self.open_funnel(node_id, spec).await.map(|i| vec![i]),
            FunnelChange::Close { port } => self
                .close_node_funnel(node_id, port)
                .await
                .map(|_| Vec::new()),
            FunnelChange::List => self.node_funnels(node_id).await,
            FunnelChange::GetCertificate { hostname } => {
                return match self.funnel_certificate(node_id, &hostname).await {
                    Ok(certificate) => FunnelResponse {
                        request_id: request.request_id,
                        result: Ok(Vec::new()),
                        certificate,
                    },
                    Err(refused) => FunnelResponse {
                        request_id: request.request_id,
                        result: Err(refused),
                        certificate: None,
                    },
                };
            }
            FunnelChange::PutCertificate(cert) => self
                .store_funnel_certificate(node_id, cert)
                .await
                .map(|()| Vec::new()),
            FunnelChange::ClaimCertificateOrder { hostname } => self
                .claim_certificate_order(node_id, &hostname)
                .await
                .map(|()| Vec::new()),
            _ => Err(refusal(
                INVALID,
                "this coord does not know that funnel change; upgrade the coord",
            )),
        };
        FunnelResponse {
            request_id: request.request_id,
            result,
            certificate: None,
        }
    }

    /// Every route ingress nodes serve at `view.now`: the open, unexpired funnels whose
    /// nodes hold a grant their gates satisfy, by hostname.
    pub fn funnel_routes(&self, view: &TailnetView) -> Vec<FunnelRoute> {
        let policy = self.policy.policy();
        let mut routes: Vec<FunnelRoute> = view
            .funnels
            .values()
            .flatten()
            .filter_map(|record| {
                let id = postern_acl::NodeId(record.funnel.node_id.0);
                match self
                    .policy
                    .with_compiled(id, |c| judge(view, &policy, record, c, view.now))
                {
                    FunnelVerdict::Serve(route) => Some(*route),
                    _ => None,
                }
            })
            .collect();
        routes.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        routes
    }

    /// Opens (or reopens with new settings) node `node_id`'s funnel of `spec.port`.
    pub async fn open_funnel(
        &self,
        node_id: NodeId,
        spec: FunnelSpec,
    ) -> Result<FunnelInfo, FunnelRefusal> {
        let Some(domain) = self.config.funnel_domain.as_deref() else {
            return Err(refusal(
                NO_INGRESS,
                "this coord serves no funnels: its operator must start it with --funnel-domain DOMAIN (docs/coord.md)",
            ));
        };
        validate_spec(&spec)?;
        let view = self.tailnet_view().await.map_err(internal)?;
        let node = view
            .node(node_id)
            .cloned()
            .ok_or_else(|| refusal(NOT_FOUND, "this node is not registered"))?;
        let owner = owner_of(&view, &node);
        let who = Funneller {
            node: &node.name,
            owner: &owner,
        };
        let ttl = self
            .policy
            .with_compiled(postern_acl::NodeId(node_id.0), |compiled| {
                check_grant(who, compiled.filter(|_| view.is_eligible(&node)), &spec)
            })?;
        let store = self.registry.store();
        let all = store.list_funnels().await.map_err(internal)?;
        let existing = all
            .iter()
            .find(|f| f.funnel.node_id == node_id && f.funnel.port == spec.port);
        let label = funnel_label(spec.name.as_deref(), &node.name)
            .map_err(|err| refusal(INVALID, err.to_string()))?;
        let (name, hostname) = match existing {
            // Same node, port and name (or no name given): the same hostname.
            Some(record) if spec.name.is_none() || record.funnel.name == label => {
                (record.funnel.name.clone(), record.funnel.hostname.clone())
            }
            _ => {
                let candidates =
                    hostname_candidates(&label, spec.port, spec.name.is_some(), domain);
                let free = candidates.iter().find(|candidate| {
                    all.iter().all(|f| {
                        &f.funnel.hostname != *candidate
                            || (f.funnel.node_id == node_id && f.funnel.port == spec.port)
                    })
                });
                match free {
                    Some(hostname) => (label, hostname.clone()),
                    None => return Err(name_taken(&candidates, spec.name.is_some())),
                }
            }
        };
        let public_port = match spec.protocol {
            FunnelProtocol::Tcp => Some(self.public_port(&all, existing, node_id, spec.port)?),
            _ => None,
        };
        let at = now();
        let funnel = NewFunnel {
            node_id,
            name,
            port: spec.port,
            hostname,
            protocol: spec.protocol,
            public_port,
            ttl_secs: ttl,
            gates: spec.gates,
            gate_mode: spec.gate_mode,
            rate_limit: spec.rate_limit,
            is_open: true,
            opened_at: Some(at),
            expires_at: ttl.map(|secs| later(at, secs)),
        };
        let record = match store.upsert_funnel(&funnel, at).await {
            Ok(record) => record,
            Err(StoreError::Conflict { what }) if what.contains("hostname") => {
                return Err(name_taken(std::slice::from_ref(&funnel.hostname), true));
            }
            Err(err) => return Err(internal(err)),
        };
        let funnel = record.funnel;
        tracing::info!(node = %node_id, hostname = %funnel.hostname, port = funnel.port, "funnel opened");
        self.audit(
            &format!("node:{}", node_id.0),
            audit::FUNNEL_OPEN,
            &funnel.hostname,
            json!({
                "node": node.name,
                "owner": owner,
                "port": funnel.port,
                "name": funnel.name,
                "protocol": check::protocol_name(funnel.protocol),
                "public_port": funnel.public_port,
                "gates": gate_kinds(&funnel),
                "gate_mode": funnel.gate_mode,
                "ttl_secs": funnel.ttl_secs,
                "expires_at": funnel.expires_at.map(|t| t.0),
            }),
        )
        .await;
        self.hub.notify();
        Ok(funnel_info(&funnel))
    }

    /// Closes node `node_id`'s funnel of `port` at its request (`funnel.close`).
    pub async fn close_node_funnel(
        &self,
        node_id: NodeId,
        port: u16,
    ) -> Result<FunnelRecord, FunnelRefusal> {
        match self.registry.store().close_funnel(node_id, port).await {
            Ok(record) => {
                self.record_close(
                    &record,
                    &format!("node:{}", node_id.0),
                    audit::FUNNEL_CLOSE,
                    json!({}),
                )
                .await;
                Ok(record)
            }
            Err(StoreError::NotFound { .. }) => Err(refusal(
                NOT_FOUND,
                format!(
                    "this node has no open funnel on port {port}; `postern funnel --list` shows its funnels"
                ),
            )),
            Err(err) => Err(internal(err)),
        }
    }

    /// Closes an open funnel (by the admin, or the lifecycle), writing `action` with
    /// `details` as `actor`; notifies the netmaps.
    pub async fn record_close(
        &self,
        record: &FunnelRecord,
        actor: &str,
        action: &str,
        details: serde_json::Value,
    ) {
        let funnel = &record.funnel;
        tracing::info!(node = %funnel.node_id, hostname = %funnel.hostname, port = funnel.port, action, "funnel closed");
        let mut all = json!({
            "node_id": funnel.node_id.0,
            "port": funnel.port,
            "name": funnel.name,
        });
        if let (Some(all), Some(extra)) = (all.as_object_mut(), details.as_object()) {
            all.extend(extra.clone());
        }
        self.audit(actor, action, &funnel.hostname, all).await;
        self.hub.notify();
    }

    /// Closes the funnels that expired or lost their grant by `now`, writing
    /// `funnel.expire` or `funnel.revoke` for each; the lifecycle calls it every tick.
    /// Returns how many it closed.
    pub async fn close_ended_funnels(&self, now: UnixTime) -> Result<usize, StoreError> {
        let view = self.tailnet_view().await?;
        let policy = self.policy.policy();
        let ended: Vec<(&FunnelRecord, FunnelVerdict)> = view
            .funnels
            .values()
            .flatten()
            .filter_map(|record| {
                let id = postern_acl::NodeId(record.funnel.node_id.0);
                let verdict = self
                    .policy
                    .with_compiled(id, |c| judge(&view, &policy, record, c, now));
                matches!(
                    verdict,
                    FunnelVerdict::Expired { .. } | FunnelVerdict::Revoked { .. }
                )
                .then_some((record, verdict))
            })
            .collect();
        let mut closed = 0;
        for (record, verdict) in ended {
            let funnel = &record.funnel;
            let Some(opened_at) = funnel.opened_at else {
                continue;
            };
            let store = self.registry.store();
            // Only if it was not reopened since the view was read.
            match store
                .close_funnel_opened_at(funnel.node_id, funnel.port, opened_at)
                .await
            {
                Ok(record) => {
                    let (action, details) = match verdict {
                        FunnelVerdict::Expired { at } => {
                            (audit::FUNNEL_EXPIRE, json!({"expires_at": at.0}))
                        }
                        FunnelVerdict::Revoked { reason } => (
                            audit::FUNNEL_REVOKE,
                            json!({"code": reason.code, "reason": reason.message}),
                        ),
                        _ => continue,
                    };
                    self.record_close(&record, audit::ACTOR_COORD, action, details)
                        .await;
                    closed += 1;
                }
                Err(StoreError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(closed)
    }

    /// Node `node_id`'s open, unexpired funnels, by port.
    pub async fn node_funnels(&self, node_id: NodeId) -> Result<Vec<FunnelInfo>, FunnelRefusal> {
        let at = now();
        Ok(self
            .registry
            .store()
            .funnels_of_node(node_id)
            .await
            .map_err(internal)?
            .iter()
            .filter(|f| f.funnel.is_open && f.funnel.expires_at.is_none_or(|t| t > at))
            .map(|f| funnel_info(&f.funnel))
            .collect())
    }

    /// The public port of a TCP funnel: its earlier one if it had one in range, else a
    /// free one.
    fn public_port(
        &self,
        all: &[FunnelRecord],
        existing: Option<&FunnelRecord>,
        node_id: NodeId,
        port: u16,
    ) -> Result<u16, FunnelRefusal> {
        let Some(range) = self.config.funnel_tcp_ports.clone() else {
            return Err(refusal(
                NO_INGRESS,
                "this coord has no public TCP ports for funnels: its operator must start it with --funnel-tcp-ports FIRST-LAST (docs/coord.md)",
            ));
        };
        if let Some(kept) = existing.and_then(|f| f.funnel.public_port)
            && range.contains(&kept)
        {
            return Ok(kept);
        }
        let taken: HashSet<u16> = all.iter().filter_map(|f| f.funnel.public_port).collect();
        pick_public_port(range.clone(), node_id.0, port, &taken).ok_or_else(|| {
            refusal(
                NO_INGRESS,
                format!(
                    "every public TCP port of {}-{} is held by a funnel; ask the operator to widen --funnel-tcp-ports or release funnels",
                    range.start(),
                    range.end()
                ),
            )
        })
    }
}

/// The spec a stored funnel was opened with (for re-checking its gates).
fn spec_of(funnel: &NewFunnel) -> FunnelSpec {
    FunnelSpec {
        port: funnel.port,
        name: Some(funnel.name.clone()),
        protocol: funnel.protocol,
        ttl_secs: None,
        gates: funnel.gates.clone(),
        gate_mode: funnel.gate_mode,
        rate_limit: funnel.rate_limit,
    }
}

fn name_taken(candidates: &[String], explicit: bool) -> FunnelRefusal {
    let which = candidates.join(" and ");
    let advice = if explicit {
        "choose another --name"
    } else {
        "give the funnel a --name"
    };
    refusal(
        NAME_TAKEN,
        format!(
            "{which} {} held by another funnel of this tailnet; {advice}",
            if candidates.len() > 1 { "are" } else { "is" }
        ),
    )
}

/// `secs` seconds after `at`, saturating.
fn later(at: UnixTime, secs: u64) -> UnixTime {
    at.saturating_add_secs(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn internal(err: StoreError) -> FunnelRefusal {
    tracing::error!(%err, "funnel request failed in the store");
    refusal(
        INTERNAL,
        "the coordination server could not store the change; try again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_or_say_what_to_give() {
        assert_eq!(parse_port_range("20000-20999"), Ok(20000..=20999));
        assert_eq!(parse_port_range("2222"), Ok(2222..=2222));
        for bad in ["", "0-10", "10-5", "a-b", "1-70000"] {
            let err = parse_port_range(bad).unwrap_err();
            assert!(err.contains("give FIRST-LAST"), "{err}");
        }
    }

    #[test]
    fn name_taken_names_the_hostnames() {
        let one = name_taken(&["hooks.f.example".into()], true);
        assert_eq!(one.code, NAME_TAKEN);
        assert_eq!(
            one.message,
            "hooks.f.example is held by another funnel of this tailnet; choose another --name"
        );
        let two = name_taken(&["a.f".into(), "a-1.f".into()], false);
        assert_eq!(
            two.message,
            "a.f and a-1.f are held by another funnel of this tailnet; give the funnel a --name"
        );
    }
}

#[cfg(test)]
mod judge_tests {
    use super::*;
    use crate::store::UserRecord;
    use postern_proto::UserId;
    use postern_proto::funnel::GateSecret;

    const POLICY: &str = r#"{
      "groups": {"group:eng": ["bob@example.com"]},
      "nodeAttrs": [{"target": ["alice@example.com"], "attr": ["funnel"]}],
      "funnels": [
        {"src": ["alice@example.com"], "ports": ["3000"], "maxTTL": "1h",
         "requireLogin": ["alice@example.com", "group:eng"]},
        {"src": ["alice@example.com"], "ports": ["22"], "allowUngated": true},
      ],
    }"#;

    fn node() -> NodeRecord {
        let rng = &mut rand::rngs::OsRng;
        NodeRecord {
            id: NodeId(1),
            machine_key: postern_proto::MachinePrivateKey::generate(rng).public_key(),
            node_key: postern_proto::NodePrivateKey::generate(rng).public_key(),
            name: "laptop".into(),
            ipv4: "100.64.0.1".parse().unwrap(),
            ipv6: "fd00::1".parse().unwrap(),
            user_id: UserId(1),
            tags: Vec::new(),
            created_at: UnixTime(0),
            last_seen: None,
            key_expiry: None,
            ephemeral: false,
            approved: true,
            is_ingress: false,
            endpoints: Vec::new(),
            disco_key: None,
            home_relay: None,
        }
    }

    fn view() -> TailnetView {
        let alice = UserRecord {
            id: UserId(1),
            login: "alice@example.com".into(),
            display_name: String::new(),
            groups: Vec::new(),
            created_at: UnixTime(0),
        };
        TailnetView::new(
            vec![node()],
            [(UserId(1), alice)].into(),
            Default::default(),
            "example.test".into(),
            None,
            Default::default(),
            UnixTime(0),
            Default::default(),
        )
    }

    fn record(port: u16, gates: Vec<GateSpec>) -> FunnelRecord {
        FunnelRecord {
            id: 1,
            funnel: NewFunnel {
                node_id: NodeId(1),
                name: "laptop".into(),
                port,
                hostname: "laptop.f.example".into(),
                protocol: FunnelProtocol::Http,
                public_port: None,
                ttl_secs: None,
                gates,
                gate_mode: GateMode::Any,
                rate_limit: None,
                is_open: true,
                opened_at: Some(UnixTime(1000)),
                expires_at: None,
            },
            created_at: UnixTime(1000),
        }
    }

    fn open_login() -> GateSpec {
        GateSpec::Login {
            allowed_emails: vec![],
            allowed_domains: vec![],
            allowed_groups: vec![],
        }
    }

    fn verdict(policy: &str, record: &FunnelRecord, now: i64) -> FunnelVerdict {
        let policy = Policy::parse("p.hujson", policy).unwrap();
        let view = view();
        let me = crate::policy::node_view(&view.nodes[0], view.users.get(&UserId(1)));
        let nodes: postern_acl::NodeSet = [me.clone()].into_iter().collect();
        let compiled = policy.compile_for(&me, &nodes);
        judge(&view, &policy, record, Some(&compiled), UnixTime(now))
    }

    #[test]
    fn a_served_route_carries_the_required_login_and_the_rule_ttl() {
        let FunnelVerdict::Serve(route) = verdict(POLICY, &record(3000, vec![open_login()]), 1500)
        else {
            panic!("not served");
        };
        assert_eq!(route.expires_at, Some(UnixTime(4600)));
        assert_eq!(route.gate_mode, GateMode::All);
        assert_eq!(route.owner, "alice@example.com");
        assert_eq!(
            route.gates,
            vec![GateSpec::Login {
                allowed_emails: vec!["alice@example.com".into(), "bob@example.com".into()],
                allowed_domains: vec![],
                allowed_groups: vec!["eng".into()],
            }]
        );
        // A narrower login gate of the funnel's own stays, and the policy's is added.
        let narrow = GateSpec::Login {
            allowed_emails: vec!["alice@example.com".into()],
            allowed_domains: vec![],
            allowed_groups: vec![],
        };
        let FunnelVerdict::Serve(route) =
            verdict(POLICY, &record(3000, vec![narrow.clone()]), 1500)
        else {
            panic!("not served");
        };
        assert_eq!(route.gates.len(), 2);
        assert_eq!(route.gates[0], narrow);
    }

    #[test]
    fn expired_and_revoked_funnels_are_not_served() {
        assert_eq!(
            verdict(POLICY, &record(3000, vec![open_login()]), 4600),
            FunnelVerdict::Expired { at: UnixTime(4600) }
        );
        let webhook = GateSpec::Webhook {
            provider: "github".into(),
            secrets: vec![GateSecret::new("s")],
            tolerance_secs: None,
        };
        match verdict(POLICY, &record(3000, vec![webhook]), 1500) {
            FunnelVerdict::Revoked { reason } => {
                assert_eq!(reason.code, check::GATE_REQUIRED);
                assert!(reason.message.starts_with("requireLogin"), "{reason:?}");
            }
            other => panic!("{other:?}"),
        }
        match verdict(POLICY, &record(4000, vec![open_login()]), 1500) {
            FunnelVerdict::Revoked { reason } => assert_eq!(reason.code, check::NO_GRANT),
            other => panic!("{other:?}"),
        }
        let mut closed = record(22, vec![]);
        closed.funnel.is_open = false;
        assert_eq!(verdict(POLICY, &closed, 1500), FunnelVerdict::Closed);
        // Without a rule requiring a login, the funnel's gates go through unchanged.
        let FunnelVerdict::Serve(route) = verdict(POLICY, &record(22, vec![]), 1500) else {
            panic!("not served");
        };
        assert!(route.gates.is_empty());
        assert_eq!(route.gate_mode, GateMode::Any);
        assert_eq!(route.expires_at, None);
    }
}

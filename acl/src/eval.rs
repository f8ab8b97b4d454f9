//! Evaluation: does a selector match a node or principal, and is an access allowed (and by
//! which rule)? Used by the policy's `tests`, by `postern-coord policy test`, and as the
//! meaning that compilation must agree with.

use std::fmt;
use std::net::IpAddr;

use crate::error::{ErrorKind, PolicyError};
use crate::model::{
    IdpGroupsMode, IpProto, Policy, PolicyTest, RuleRef, Selector, TestSource, TestTarget,
};
use crate::node::NodeView;
use crate::parse::{parse_prefix, split_host_ports};

/// Who someone or something is, as far as selectors care. Borrowed from a [`NodeView`] or
/// built from a [`TestSource`].
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The owning user's login, if any.
    pub user: Option<&'a str>,
    /// Tags (without `tag:`). Non-empty means the node is tagged and not its user's.
    pub tags: &'a [String],
    /// The IdP's groups claim (without `group:`), if the login carried one.
    pub idp_groups: Option<&'a [String]>,
    /// Addresses.
    pub addresses: &'a [IpAddr],
}

impl<'a> Subject<'a> {
    /// The subject of a node.
    pub fn of_node(node: &'a NodeView) -> Self {
        Subject {
            user: Some(&node.user),
            tags: &node.tags,
            idp_groups: node.idp_groups.as_deref(),
            addresses: &node.addresses,
        }
    }

    /// The subject of a test principal: a user on one of their untagged devices, a device
    /// carrying one tag, or a bare address.
    pub fn of_principal(principal: &'a TestSource) -> Self {
        match principal {
            TestSource::User(user) => Subject {
                user: Some(user),
                tags: &[],
                idp_groups: None,
                addresses: &[],
            },
            TestSource::Tag(tag) => Subject {
                user: None,
                tags: std::slice::from_ref(tag),
                idp_groups: None,
                addresses: &[],
            },
            TestSource::Address { ip, .. } => Subject {
                user: None,
                tags: &[],
                idp_groups: None,
                addresses: std::slice::from_ref(ip),
            },
        }
    }

    /// A user's untagged device, the only kind user selectors match.
    fn member(&self) -> Option<&'a str> {
        if self.tags.is_empty() {
            self.user
        } else {
            None
        }
    }
}

/// The answer to an access question.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessVerdict {
    /// Allowed; the first rule (in file order) that allows it.
    Allowed(RuleRef),
    /// No rule allows it (default deny).
    Denied,
}

impl fmt::Display for AccessVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessVerdict::Allowed(rule) => write!(f, "allowed by {rule}"),
            AccessVerdict::Denied => f.write_str("denied"),
        }
    }
}

/// A malformed access question (e.g. from `postern-coord policy test`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The source is not a user login, a defined tag, a host alias or an IP.
    #[error(
        "--src \"{0}\" is not a user login (user@domain), a tag defined in tagOwners, a host alias or an IP"
    )]
    BadSource(String),
    /// The destination is not `HOST:PORT` with a known host.
    #[error(
        "--dst \"{0}\" is not HOST:PORT with HOST a user login, a defined tag, a host alias or an IP"
    )]
    BadDestination(String),
    /// The protocol is unknown.
    #[error("--proto \"{0}\" is not a protocol name (tcp, udp, icmp, sctp, ...) or number")]
    BadProto(String),
}

impl Policy {
    /// Whether `src` may open `proto` traffic to `dst` on `port`, and by which rule.
    ///
    /// `dst` stands for one device; `autogroup:self` matches when both are the same user's
    /// untagged devices.
    pub fn access(
        &self,
        src: &Subject<'_>,
        dst: &Subject<'_>,
        port: u16,
        proto: IpProto,
    ) -> AccessVerdict {
        for rule in &self.net_rules {
            if rule.caps.iter().any(|c| c.allows(port, proto))
                && rule.src.iter().any(|s| self.matches_src(s, src))
                && rule.dst.iter().any(|d| self.matches_dst(d, dst, src))
            {
                return AccessVerdict::Allowed(rule.origin.clone());
            }
        }
        AccessVerdict::Denied
    }

    /// Answers `policy test --src IDENTITY --dst HOST:PORT --proto P` from text.
    pub fn test_access(
        &self,
        src: &str,
        dst: &str,
        proto: &str,
    ) -> Result<AccessVerdict, QueryError> {
        let proto = IpProto::parse(proto).ok_or_else(|| QueryError::BadProto(proto.into()))?;
        let src_principal = self
            .principal(src)
            .ok_or_else(|| QueryError::BadSource(src.into()))?;
        let (host, port) = split_host_ports(dst)
            .and_then(|(h, p)| Some((self.principal(h)?, p.parse::<u16>().ok()?)))
            .ok_or_else(|| QueryError::BadDestination(dst.into()))?;
        Ok(self.access(
            &Subject::of_principal(&src_principal),
            &Subject::of_principal(&host),
            port,
            proto,
        ))
    }

    /// Parses a principal as `tests` and `policy test` write it.
    pub fn principal(&self, text: &str) -> Option<TestSource> {
        if let Some(tag) = text.strip_prefix("tag:") {
            return self
                .tag_owners
                .contains_key(tag)
                .then(|| TestSource::Tag(tag.to_string()));
        }
        if text.contains('@') && !text.contains(':') {
            return Some(TestSource::User(text.to_string()));
        }
        let ip = match text.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => self.hosts.get(text)?.addr(),
        };
        Some(TestSource::Address {
            written: text.to_string(),
            ip,
        })
    }

    /// Whether a node is in `group:name`, by the file, the IdP claim, or both (see
    /// [`IdpGroupsMode`]).
    pub fn in_group(&self, name: &str, subject: &Subject<'_>) -> bool {
        let Some(user) = subject.member() else {
            return false;
        };
        let file_list = self.groups.get(name);
        let by_file = file_list.is_some_and(|m| m.contains(user));
        let by_idp = subject
            .idp_groups
            .is_some_and(|g| g.iter().any(|x| x == name));
        match self.idp_groups {
            IdpGroupsMode::Merge => by_file || by_idp,
            IdpGroupsMode::File => {
                if file_list.is_some_and(|m| !m.is_empty()) {
                    by_file
                } else {
                    by_idp
                }
            }
            IdpGroupsMode::Idp => match subject.idp_groups {
                Some(_) => by_idp,
                None => by_file,
            },
        }
    }

    /// Whether a source selector matches the subject.
    pub fn matches_src(&self, selector: &Selector, subject: &Subject<'_>) -> bool {
        match selector {
            Selector::Any => true,
            Selector::User(login) => subject.member() == Some(login.as_str()),
            Selector::Group(name) => self.in_group(name, subject),
            Selector::Tag(tag) => subject.tags.iter().any(|t| t == tag),
            Selector::Host { prefix, .. } | Selector::Prefix(prefix) => {
                subject.addresses.iter().any(|ip| prefix.contains(ip))
            }
            Selector::AutogroupMember => subject.member().is_some(),
            Selector::AutogroupTagged => !subject.tags.is_empty(),
            Selector::AutogroupSelf | Selector::AutogroupInternet | Selector::AutogroupAdmin => {
                false
            }
        }
    }

    /// Whether a destination selector matches `dst` for traffic from `src`.
    pub fn matches_dst(&self, selector: &Selector, dst: &Subject<'_>, src: &Subject<'_>) -> bool {
        match selector {
            Selector::AutogroupSelf => dst.member().is_some() && dst.member() == src.member(),
            Selector::AutogroupInternet => {
                dst.user.is_none()
                    && dst.tags.is_empty()
                    && !dst.addresses.is_empty()
                    && dst.addresses.iter().all(|ip| is_internet(*ip))
            }
            other => self.matches_src(other, dst),
        }
    }

    /// Whether a user (or a node owned by them, holding `tags`) may apply `tag`, by
    /// `tagOwners`. `is_admin` says whether the user is one of the coord's administrators.
    pub fn may_apply_tag(&self, tag: &str, owner: &Subject<'_>, is_admin: bool) -> bool {
        let Some(owners) = self.tag_owners.get(tag) else {
            return false;
        };
        is_admin
            || owners.iter().any(|o| match o {
                Selector::AutogroupAdmin => is_admin,
                other => self.matches_src(other, owner),
            })
    }
}

/// Runs the policy's `tests`; each failure names the test, the expectation and the rule that
/// decided.
pub(crate) fn run_tests(policy: &Policy) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    for test in &policy.tests {
        for target in &test.accept {
            check(policy, test, target, true, &mut errors);
        }
        for target in &test.deny {
            check(policy, test, target, false, &mut errors);
        }
    }
    errors
}

fn check(
    policy: &Policy,
    test: &PolicyTest,
    target: &TestTarget,
    expect_accept: bool,
    errors: &mut Vec<PolicyError>,
) {
    let verdict = policy.access(
        &Subject::of_principal(&test.src),
        &Subject::of_principal(&target.host),
        target.port,
        test.proto,
    );
    let outcome = match (&verdict, expect_accept) {
        (AccessVerdict::Allowed(_), true) | (AccessVerdict::Denied, false) => return,
        (AccessVerdict::Allowed(rule), false) => format!("{rule} accepts it"),
        (AccessVerdict::Denied, true) => {
            "it was denied: no rule in acls or grants allows it".into()
        }
    };
    errors.push(PolicyError {
        position: target
            .position
            .clone()
            .unwrap_or_else(|| test.origin.position.clone()),
        kind: ErrorKind::TestFailed {
            test: format!("tests[{}]", test.origin.index),
            src: test.src.to_string(),
            dst: target.to_string(),
            proto: test.proto.to_string(),
            expected: if expect_accept { "accepted" } else { "denied" },
            outcome,
        },
    });
}

/// Whether an address is on the public internet (not private, loopback, link-local, CGNAT,
/// unique-local or multicast): what `autogroup:internet` covers.
pub fn is_internet(ip: IpAddr) -> bool {
    const PRIVATE: &[&str] = &[
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/3",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ];
    !PRIVATE
        .iter()
        .filter_map(|p| parse_prefix(p))
        .any(|p| p.contains(&ip))
}

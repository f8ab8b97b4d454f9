//! The typed policy: what a policy file means once it has been parsed and checked.
//!
//! Every string of the file that names something (a selector, a port list, a protocol) has
//! become a typed value here; nothing downstream re-parses strings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

use crate::source::Position;

/// A user's login as the identity provider reports it, e.g. `alice@example.com`.
pub type UserLogin = String;

/// Which rule of the policy a verdict or a filter entry came from: its section, its index
/// in that section and where it starts in the file. Displays as `acls[2] (policy.hujson:14:5)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    /// The top-level section the rule is in.
    pub section: Section,
    /// The rule's index in that section, from 0.
    pub index: usize,
    /// Where the rule starts in the policy file.
    pub position: Position,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}] ({})", self.section, self.index, self.position)
    }
}

/// A top-level section of the policy file that holds a list of rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Section {
    /// `acls`: Tailscale's classic access rules.
    Acls,
    /// `grants`: Tailscale's newer access rules with network and app capabilities.
    Grants,
    /// `nodeAttrs`: attributes given to nodes.
    NodeAttrs,
    /// `tests`: the policy's own assertions.
    Tests,
    /// `funnels`: Postern's funnel permissions.
    Funnels,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Acls => "acls",
            Section::Grants => "grants",
            Section::NodeAttrs => "nodeAttrs",
            Section::Tests => "tests",
            Section::Funnels => "funnels",
        })
    }
}

/// One entry of a `src`, `dst`, `target` or owner list, already resolved to what it means.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Selector {
    /// `*`: every node (as a source: every address).
    Any,
    /// `user@domain`: the user's untagged nodes.
    User(UserLogin),
    /// `group:NAME`: the untagged nodes of the group's members (file and/or IdP, see
    /// [`IdpGroupsMode`]). Holds the name without the `group:` prefix.
    Group(String),
    /// `tag:NAME`: the nodes carrying the tag. Holds the name without the `tag:` prefix.
    Tag(String),
    /// A host alias from `hosts`, resolved to its prefix.
    Host {
        /// The alias as written.
        name: String,
        /// The address or network it stands for.
        prefix: IpNet,
    },
    /// A literal IP address (as a /32 or /128) or CIDR.
    Prefix(IpNet),
    /// `autogroup:member`: every untagged node (a node owned by a user).
    AutogroupMember,
    /// `autogroup:tagged`: every tagged node.
    AutogroupTagged,
    /// `autogroup:self` (destinations only): the source user's own untagged nodes.
    AutogroupSelf,
    /// `autogroup:internet` (destinations only): the internet through an exit node.
    AutogroupInternet,
    /// `autogroup:admin` or `autogroup:owner` (tag owners only): the coord's administrators.
    AutogroupAdmin,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::User(u) => f.write_str(u),
            Selector::Group(g) => write!(f, "group:{g}"),
            Selector::Tag(t) => write!(f, "tag:{t}"),
            Selector::Host { name, .. } => f.write_str(name),
            Selector::Prefix(p) => {
                if p.prefix_len() == p.max_prefix_len() {
                    write!(f, "{}", p.addr())
                } else {
                    write!(f, "{p}")
                }
            }
            Selector::AutogroupMember => f.write_str("autogroup:member"),
            Selector::AutogroupTagged => f.write_str("autogroup:tagged"),
            Selector::AutogroupSelf => f.write_str("autogroup:self"),
            Selector::AutogroupInternet => f.write_str("autogroup:internet"),
            Selector::AutogroupAdmin => f.write_str("autogroup:admin"),
        }
    }
}

/// An inclusive range of ports, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Every port, `0..=65535`.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortRange::ALL {
            f.write_str("*")
        } else if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// An IP protocol number (6 = TCP, 17 = UDP, 1 = ICMP, 58 = ICMPv6, 132 = SCTP, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProto(pub u8);

impl IpProto {
    /// ICMP for IPv4.
    pub const ICMP: IpProto = IpProto(1);
    /// TCP.
    pub const TCP: IpProto = IpProto(6);
    /// UDP.
    pub const UDP: IpProto = IpProto(17);
    /// ICMP for IPv6.
    pub const ICMPV6: IpProto = IpProto(58);
    /// SCTP.
    pub const SCTP: IpProto = IpProto(132);

    /// Whether packets of this protocol carry ports (TCP, UDP, SCTP). For the others a
    /// rule's ports must be `*` and a packet filter ignores the port.
    pub fn has_ports(self) -> bool {
        matches!(self, IpProto::TCP | IpProto::UDP | IpProto::SCTP)
    }

    /// Parses a protocol as written in a policy (`tcp`, `udp`, `icmp`, `ipv6-icmp`, `sctp`,
    /// `igmp`, `gre`, `esp`, `ah`, `ipv4`/`ip-in-ip`, `egp`, `igp`, or a number 0-255).
    /// Returns `None` for anything else.
    pub fn parse(text: &str) -> Option<IpProto> {
        let lower = text.to_ascii_lowercase();
        let number = match lower.as_str() {
            "icmp" => 1,
            "igmp" => 2,
            "ipv4" | "ip-in-ip" => 4,
            "tcp" => 6,
            "egp" => 8,
            "igp" => 9,
            "udp" => 17,
            "gre" => 47,
            "esp" => 50,
            "ah" => 51,
            "ipv6-icmp" | "icmpv6" => 58,
            "sctp" => 132,
            other => return other.parse::<u8>().ok().map(IpProto),
        };
        Some(IpProto(number))
    }
}

impl fmt::Display for IpProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IpProto::TCP => f.write_str("tcp"),
            IpProto::UDP => f.write_str("udp"),
            IpProto::ICMP => f.write_str("icmp"),
            IpProto::ICMPV6 => f.write_str("ipv6-icmp"),
            IpProto::SCTP => f.write_str("sctp"),
            IpProto(n) => write!(f, "{n}"),
        }
    }
}

/// Which protocols a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtoMatch {
    /// No `proto` given: TCP, UDP, ICMP and ICMPv6 (Tailscale's default).
    Default,
    /// Exactly this protocol.
    One(IpProto),
    /// Every protocol (a grant's `ip: ["*"]`).
    All,
}

impl ProtoMatch {
    /// Whether the protocol is allowed.
    pub fn matches(&self, proto: IpProto) -> bool {
        match self {
            ProtoMatch::Default => matches!(
                proto,
                IpProto::TCP | IpProto::UDP | IpProto::ICMP | IpProto::ICMPV6
            ),
            ProtoMatch::One(p) => *p == proto,
            ProtoMatch::All => true,
        }
    }

    /// The protocols as a list, `None` meaning every protocol.
    pub fn protocols(&self) -> Option<Vec<IpProto>> {
        match self {
            ProtoMatch::Default => Some(vec![
                IpProto::ICMP,
                IpProto::TCP,
                IpProto::UDP,
                IpProto::ICMPV6,
            ]),
            ProtoMatch::One(p) => Some(vec![*p]),
            ProtoMatch::All => None,
        }
    }
}

/// Whether a node is in `group:x` by the file's lists, the IdP's `groups` claim, or both.
///
/// Set with the top-level key `"idpGroups"`; see `docs/policy.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdpGroupsMode {
    /// `"merge"` (default): a member by the file's list or by the IdP's claim.
    #[default]
    Merge,
    /// `"file"`: a group with members listed in the file uses that list only; a group
    /// defined as `[]` is filled from the IdP's claim.
    File,
    /// `"idp"`: a node whose login carried a `groups` claim is a member exactly when the
    /// claim lists the group; a node without a claim (auth key, IdP without groups) falls
    /// back to the file's lists.
    Idp,
}

/// A network rule: sources may reach destinations on some ports and protocols. Made from
/// one `acls` destination entry or one `grants` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NetRule {
    /// Where in the file the rule came from.
    pub origin: RuleRef,
    /// Who may connect.
    pub src: Vec<Selector>,
    /// Which nodes (or prefixes) may be connected to.
    pub dst: Vec<Selector>,
    /// On which protocols and ports.
    pub caps: Vec<NetCap>,
}

/// Protocols and ports of a network rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetCap {
    /// Which protocols.
    pub proto: ProtoMatch,
    /// Which destination ports (ignored for protocols without ports).
    pub ports: Vec<PortRange>,
}

impl NetCap {
    /// Whether a packet of `proto` to `port` is covered.
    pub fn allows(&self, port: u16, proto: IpProto) -> bool {
        self.proto.matches(proto)
            && (!proto.has_ports() || self.ports.iter().any(|r| r.contains(port)))
    }
}

/// An application capability grant: sources get capabilities on destinations, which the
/// destination node receives with its peers (Tailscale's grants `app`).
#[derive(Debug, Clone, PartialEq)]
pub struct AppRule {
    /// Where in the file the rule came from.
    pub origin: RuleRef,
    /// Who gets the capabilities.
    pub src: Vec<Selector>,
    /// On which nodes.
    pub dst: Vec<Selector>,
    /// Capability name to its values (any JSON), carried through unchanged.
    pub caps: BTreeMap<String, Vec<serde_json::Value>>,
}

/// A `nodeAttrs` entry: nodes matching `target` get `attrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAttrRule {
    /// Where in the file the entry came from.
    pub origin: RuleRef,
    /// Which nodes.
    pub target: Vec<Selector>,
    /// The attribute names, e.g. `funnel`.
    pub attrs: Vec<String>,
}

/// A `funnels` entry (Postern's own section): which nodes may funnel which local ports, for
/// how long, behind which gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelRule {
    /// Where in the file the entry came from.
    pub origin: RuleRef,
    /// Whose nodes may funnel: users, groups, tags, `autogroup:member`, `*`.
    pub src: Vec<Selector>,
    /// Which local ports.
    pub ports: Vec<PortRange>,
    /// The longest a funnel may stay open; `None` means no limit from this rule.
    pub max_ttl: Option<Duration>,
    /// The gates the edge must enforce on matching funnels.
    pub gates: GateRequirements,
}

/// What the edge (ingress) must enforce for a funnel, from the rule that allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GateRequirements {
    /// If not empty, the funnel must require an OIDC login, and only these principals (users,
    /// groups, tags) may pass it.
    pub require_login: Vec<Selector>,
    /// Webhook funnels (those gated by a webhook gate) must verify the request's signature.
    pub require_webhook_signature: bool,
    /// Whether a funnel with no gate at all may be opened. Default `false`: refused.
    pub allow_ungated: bool,
}

/// A `tests` entry: assertions checked every time the policy is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTest {
    /// Where in the file the test is.
    pub origin: RuleRef,
    /// Who connects.
    pub src: TestSource,
    /// The protocol; TCP unless given.
    pub proto: IpProto,
    /// Destinations that must be allowed.
    pub accept: Vec<TestTarget>,
    /// Destinations that must be denied.
    pub deny: Vec<TestTarget>,
}

/// The source of an access question: a user (as on one of their untagged devices), a
/// tagged device, or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TestSource {
    /// A user login.
    User(UserLogin),
    /// A tag (a device carrying just this tag). Without the `tag:` prefix.
    Tag(String),
    /// An address, written as an IP or a host alias.
    Address {
        /// As written.
        written: String,
        /// The address.
        ip: std::net::IpAddr,
    },
}

impl fmt::Display for TestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestSource::User(u) => f.write_str(u),
            TestSource::Tag(t) => write!(f, "tag:{t}"),
            TestSource::Address { written, .. } => f.write_str(written),
        }
    }
}

/// The destination of an access question: `HOST:PORT` where HOST is a user's device, a
/// tagged device or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TestTarget {
    /// What is connected to.
    pub host: TestSource,
    /// The destination port.
    pub port: u16,
    /// Where the entry is written in the file, when it comes from a file.
    pub position: Option<Position>,
}

impl fmt::Display for TestTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A checked policy. Build one with [`Policy::parse`](crate::Policy::parse).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The file name errors and rule references use.
    pub(crate) file_name: String,
    /// `groups`: group name (without `group:`) to member logins.
    pub(crate) groups: BTreeMap<String, BTreeSet<UserLogin>>,
    /// Login to the file groups it is in (the inverse of `groups`).
    pub(crate) user_groups: BTreeMap<UserLogin, BTreeSet<String>>,
    /// How IdP group claims combine with the file's groups.
    pub(crate) idp_groups: IdpGroupsMode,
    /// `hosts`: alias to prefix.
    pub(crate) hosts: BTreeMap<String, IpNet>,
    /// `tagOwners`: tag name (without `tag:`) to who may apply it.
    pub(crate) tag_owners: BTreeMap<String, Vec<Selector>>,
    /// Network rules from `acls` and `grants`, in file order.
    pub(crate) net_rules: Vec<NetRule>,
    /// App capability rules from `grants`.
    pub(crate) app_rules: Vec<AppRule>,
    /// `nodeAttrs`.
    pub(crate) node_attrs: Vec<NodeAttrRule>,
    /// `funnels`.
    pub(crate) funnels: Vec<FunnelRule>,
    /// `tests`.
    pub(crate) tests: Vec<PolicyTest>,
    /// Number of entries in `acls` and `grants` (for summaries).
    pub(crate) acl_count: usize,
    /// Number of entries in `grants`.
    pub(crate) grant_count: usize,
    /// The rules indexed by what their src and dst name (for compilation).
    pub(crate) rule_index: std::sync::Arc<crate::compile::RuleIndex>,
}

impl Policy {
    /// The file name given to [`Policy::parse`].
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// The network rules (from `acls` and `grants`) in file order.
    pub fn net_rules(&self) -> &[NetRule] {
        &self.net_rules
    }

    /// The app capability rules from `grants`.
    pub fn app_rules(&self) -> &[AppRule] {
        &self.app_rules
    }

    /// The `nodeAttrs` entries.
    pub fn node_attr_rules(&self) -> &[NodeAttrRule] {
        &self.node_attrs
    }

    /// The `funnels` entries.
    pub fn funnel_rules(&self) -> &[FunnelRule] {
        &self.funnels
    }

    /// The `tests` entries (all of which passed when the policy was loaded).
    pub fn tests(&self) -> &[PolicyTest] {
        &self.tests
    }

    /// The groups defined in the file, name (without `group:`) to member logins.
    pub fn groups(&self) -> &BTreeMap<String, BTreeSet<UserLogin>> {
        &self.groups
    }

    /// The host aliases.
    pub fn hosts(&self) -> &BTreeMap<String, IpNet> {
        &self.hosts
    }

    /// The tags defined in `tagOwners` with who may apply them.
    pub fn tag_owners(&self) -> &BTreeMap<String, Vec<Selector>> {
        &self.tag_owners
    }

    /// How IdP group claims combine with the file's groups.
    pub fn idp_groups_mode(&self) -> IdpGroupsMode {
        self.idp_groups
    }

    /// A summary of what the policy holds, for `policy check`.
    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            acls: self.acl_count,
            grants: self.grant_count,
            groups: self.groups.len(),
            tags: self.tag_owners.len(),
            hosts: self.hosts.len(),
            node_attrs: self.node_attrs.len(),
            funnels: self.funnels.len(),
            tests_passed: self.tests.len(),
        }
    }
}

/// Counts of what a policy holds, e.g. for `postern-coord policy check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySummary {
    /// Entries in `acls`.
    pub acls: usize,
    /// Entries in `grants`.
    pub grants: usize,
    /// Groups in `groups`.
    pub groups: usize,
    /// Tags in `tagOwners`.
    pub tags: usize,
    /// Aliases in `hosts`.
    pub hosts: usize,
    /// Entries in `nodeAttrs`.
    pub node_attrs: usize,
    /// Entries in `funnels`.
    pub funnels: usize,
    /// Tests run on load (all passed, or the policy would not have loaded).
    pub tests_passed: usize,
}

impl fmt::Display for PolicySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acls, {} grants, {} groups, {} tags, {} hosts, {} nodeAttrs, {} funnels, {} tests passed",
            self.acls,
            self.grants,
            self.groups,
            self.tags,
            self.hosts,
            self.node_attrs,
            self.funnels,
            self.tests_passed
        )
    }
}

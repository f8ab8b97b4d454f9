//! From HuJSON text to a typed [`Policy`].
//!
//! The text is parsed by `jsonc-parser` into a syntax tree whose every node carries its byte
//! range (it accepts `//` and `/* */` comments and trailing commas, HuJSON's additions to
//! JSON). This module walks that tree once, turning each value into its typed meaning and
//! collecting every problem it finds with its position, so an admin sees all of them at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use jsonc_parser::ast::{Array, Object, ObjectProp, ObjectPropName, Value};
use jsonc_parser::common::Range;
use jsonc_parser::{CollectOptions, ParseOptions};

use crate::error::{ErrorKind, PolicyError, PolicyErrors, nearest};
use crate::model::{
    AppRule, FunnelRule, GateRequirements, IdpGroupsMode, IpProto, NetCap, NetRule, NodeAttrRule,
    Policy, PolicyTest, PortRange, ProtoMatch, RuleRef, Section, Selector, TestSource, TestTarget,
};
use crate::source::SourceText;

/// The largest policy file accepted, in bytes. Larger files are refused before parsing.
pub const MAX_POLICY_BYTES: usize = 8 * 1024 * 1024;

const TOP_KEYS: &[&str] = &[
    "groups",
    "hosts",
    "tagOwners",
    "acls",
    "grants",
    "nodeAttrs",
    "tests",
    "funnels",
    "idpGroups",
];
/// Tailscale keys for features Postern does not have: refused with a clear message rather
/// than silently ignored, so nobody believes they are enforced.
const TAILSCALE_ONLY_TOP_KEYS: &[&str] = &[
    "ssh",
    "sshTests",
    "autoApprovers",
    "postures",
    "defaultSrcPosture",
    "ipsets",
    "derpMap",
    "disableIPv4",
    "randomizeClientPort",
    "OneCGNATRoute",
];
const ACL_KEYS: &[&str] = &["action", "src", "dst", "proto", "users", "ports"];
const GRANT_KEYS: &[&str] = &["src", "dst", "ip", "app"];
const NODE_ATTR_KEYS: &[&str] = &["target", "attr"];
const TEST_KEYS: &[&str] = &["src", "proto", "accept", "deny"];
const FUNNEL_KEYS: &[&str] = &[
    "src",
    "ports",
    "maxTTL",
    "requireLogin",
    "requireWebhookSignature",
    "allowUngated",
];

impl Policy {
    /// Parses and checks a policy file, then runs its `tests`.
    ///
    /// `file_name` is only used in messages (`FILE:LINE:COL: ...`) and rule references; this
    /// crate does no I/O, the caller reads the file. On failure every problem found is
    /// returned, in file order; a failing test rejects the whole policy.
    pub fn parse(file_name: &str, text: &str) -> Result<Policy, PolicyErrors> {
        let source = SourceText::new(file_name, text);
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyErrors(vec![PolicyError {
                position: source.position(0),
                kind: ErrorKind::InvalidValue {
                    expected: format!("a policy file of at most {MAX_POLICY_BYTES} bytes"),
                    found: format!("{} bytes", text.len()),
                },
            }]));
        }
        if let Some(offset) = too_deep(text) {
            return Err(PolicyErrors(vec![PolicyError {
                position: source.position(offset),
                kind: ErrorKind::InvalidValue {
                    expected: format!("at most {MAX_NESTING} nested objects and arrays"),
                    found: "deeper nesting".to_string(),
                },
            }]));
        }
        let parse_options = ParseOptions {
            allow_comments: true,
            allow_loose_object_property_names: false,
            allow_trailing_commas: true,
        };
        let ast = match jsonc_parser::parse_to_ast(text, &CollectOptions::default(), &parse_options)
        {
            Ok(ast) => ast,
            Err(e) => {
                return Err(PolicyErrors(vec![PolicyError {
                    position: source.position(e.range().start),
                    kind: ErrorKind::Syntax {
                        message: syntax_message(&e),
                    },
                }]));
            }
        };
        // jsonc-parser tolerates a missing comma between members; HuJSON does not.
        if let Some(value) = &ast.value
            && let Some(offset) = missing_comma(text, value)
        {
            return Err(PolicyErrors(vec![PolicyError {
                position: source.position(offset),
                kind: ErrorKind::Syntax {
                    message: "expected ',' between members; add a comma after this value"
                        .to_string(),
                },
            }]));
        }
        let mut reader = Reader {
            source: &source,
            errors: Vec::new(),
            groups: BTreeMap::new(),
            hosts: BTreeMap::new(),
            tags: BTreeSet::new(),
        };
        let policy = match &ast.value {
            Some(Value::Object(root)) => reader.policy(root),
            Some(other) => {
                reader.wrong_type(other, "an object at the top level");
                None
            }
            None => {
                reader.error(
                    0,
                    ErrorKind::WrongType {
                        expected: "an object at the top level",
                        found: "an empty file",
                    },
                );
                None
            }
        };
        let mut errors = reader.errors;
        if let Some(policy) = &policy
            && errors.is_empty()
        {
            errors.extend(crate::eval::run_tests(policy));
        }
        match policy {
            Some(policy) if errors.is_empty() => Ok(policy),
            _ => {
                errors.sort_by(|a, b| a.position.cmp(&b.position));
                Err(PolicyErrors(errors))
            }
        }
    }
}

/// Where a selector is used; decides which selectors make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Src,
    Dst,
    Target,
    TagOwner,
    FunnelSrc,
    Login,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Src => "src",
            Place::Dst => "dst",
            Place::Target => "a nodeAttrs target",
            Place::TagOwner => "tagOwners",
            Place::FunnelSrc => "a funnels src",
            Place::Login => "requireLogin",
        }
    }
}

struct Reader<'s, 't> {
    source: &'s SourceText<'t>,
    errors: Vec<PolicyError>,
    groups: BTreeMap<String, BTreeSet<String>>,
    hosts: BTreeMap<String, IpNet>,
    tags: BTreeSet<String>,
}

/// The properties of an object by key, after unknown and duplicate keys were reported.
type Fields<'a, 'v> = HashMap<&'static str, &'v ObjectProp<'a>>;

impl<'a> Reader<'_, '_> {
    fn policy(&mut self, root: &Object<'a>) -> Option<Policy> {
        let fields = self.fields(root, "the policy", TOP_KEYS, TAILSCALE_ONLY_TOP_KEYS);
        let value = |k: &str| fields.get(k).map(|p| &p.value);

        // Definitions first, so rules can refer to them wherever they are in the file.
        let idp_groups = value("idpGroups")
            .and_then(|v| self.idp_groups(v))
            .unwrap_or_default();
        if let Some(v) = value("tagOwners") {
            self.declare_tags(v);
        }
        if let Some(v) = value("groups") {
            self.groups_section(v);
        }
        if let Some(v) = value("hosts") {
            self.hosts_section(v);
        }
        let tag_owners = value("tagOwners")
            .map(|v| self.tag_owners(v))
            .unwrap_or_default();

        let mut net_rules = Vec::new();
        let mut app_rules = Vec::new();
        let mut acl_count = 0;
        let mut grant_count = 0;
        if let Some(v) = value("acls") {
            for (index, entry) in self.array_items(v, "an array of acl rules") {
                acl_count += 1;
                let origin = self.rule_ref(Section::Acls, index, entry);
                net_rules.extend(self.acl(entry, origin));
            }
        }
        if let Some(v) = value("grants") {
            for (index, entry) in self.array_items(v, "an array of grants") {
                grant_count += 1;
                let origin = self.rule_ref(Section::Grants, index, entry);
                let (net, app) = self.grant(entry, origin);
                net_rules.extend(net);
                app_rules.extend(app);
            }
        }
        let mut node_attrs = Vec::new();
        if let Some(v) = value("nodeAttrs") {
            for (index, entry) in self.array_items(v, "an array of nodeAttrs entries") {
                let origin = self.rule_ref(Section::NodeAttrs, index, entry);
                node_attrs.extend(self.node_attr(entry, origin));
            }
        }
        let mut funnels = Vec::new();
        if let Some(v) = value("funnels") {
            for (index, entry) in self.array_items(v, "an array of funnels rules") {
                let origin = self.rule_ref(Section::Funnels, index, entry);
                funnels.extend(self.funnel(entry, origin));
            }
        }
        let mut tests = Vec::new();
        if let Some(v) = value("tests") {
            for (index, entry) in self.array_items(v, "an array of tests") {
                let origin = self.rule_ref(Section::Tests, index, entry);
                tests.extend(self.test(entry, origin));
            }
        }

        let mut user_groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (group, members) in &self.groups {
            for member in members {
                user_groups
                    .entry(member.clone())
                    .or_default()
                    .insert(group.clone());
            }
        }
        let mut policy = Policy {
            rule_index: Default::default(),
            file_name: self.source.file.to_string(),
            groups: std::mem::take(&mut self.groups),
            user_groups,
            idp_groups,
            hosts: std::mem::take(&mut self.hosts),
            tag_owners,
            net_rules,
            app_rules,
            node_attrs,
            funnels,
            tests,
            acl_count,
            grant_count,
        };
        policy.rule_index = std::sync::Arc::new(crate::compile::RuleIndex::build(&policy));
        Some(policy)
    }

    // ----- sections -----

    fn idp_groups(&mut self, v: &Value<'a>) -> Option<IdpGroupsMode> {
        let (text, range) = self.string(v, "\"merge\", \"file\" or \"idp\"")?;
        match text {
            "merge" => Some(IdpGroupsMode::Merge),
            "file" => Some(IdpGroupsMode::File),
            "idp" => Some(IdpGroupsMode::Idp),
            other => {
                self.invalid(range, "\"merge\", \"file\" or \"idp\"", other);
                None
            }
        }
    }

    fn declare_tags(&mut self, v: &Value<'a>) {
        let Value::Object(obj) = v else {
            return; // reported by `tag_owners`
        };
        for prop in &obj.properties {
            let name = prop_name(&prop.name);
            if let Some(tag) = name.strip_prefix("tag:")
                && valid_name(tag)
            {
                self.tags.insert(tag.to_string());
            }
        }
    }

    fn tag_owners(&mut self, v: &Value<'a>) -> BTreeMap<String, Vec<Selector>> {
        let mut out = BTreeMap::new();
        let Some(obj) = self.object(v, "an object of \"tag:NAME\": [owners]") else {
            return out;
        };
        let mut seen = BTreeSet::new();
        for prop in &obj.properties {
            let name = prop_name(&prop.name);
            let name_range = prop_name_range(&prop.name);
            if !seen.insert(name.clone()) {
                self.error(name_range.start, ErrorKind::DuplicateKey { key: name });
                continue;
            }
            let Some(tag) = name.strip_prefix("tag:").filter(|t| valid_name(t)) else {
                self.invalid(name_range, "a tag name like \"tag:server\"", &name);
                continue;
            };
            let owners = self.selectors(&prop.value, Place::TagOwner);
            out.insert(tag.to_string(), owners);
        }
        out
    }

    fn groups_section(&mut self, v: &Value<'a>) {
        let Some(obj) = self.object(v, "an object of \"group:NAME\": [users]") else {
            return;
        };
        for prop in &obj.properties {
            let name = prop_name(&prop.name);
            let name_range = prop_name_range(&prop.name);
            let Some(group) = name.strip_prefix("group:").filter(|g| valid_name(g)) else {
                self.invalid(name_range, "a group name like \"group:eng\"", &name);
                continue;
            };
            if self.groups.contains_key(group) {
                self.error(
                    name_range.start,
                    ErrorKind::DuplicateKey { key: name.clone() },
                );
                continue;
            }
            let mut members = BTreeSet::new();
            for (text, range) in self.strings(&prop.value, "an array of user logins") {
                if text.starts_with("group:") {
                    self.error(
                        range.start,
                        ErrorKind::NestedGroup {
                            member: text.to_string(),
                        },
                    );
                } else if is_login(text) {
                    members.insert(text.to_string());
                } else {
                    self.invalid(range, "a user login (user@domain)", text);
                }
            }
            self.groups.insert(group.to_string(), members);
        }
    }

    fn hosts_section(&mut self, v: &Value<'a>) {
        let Some(obj) = self.object(v, "an object of \"name\": \"IP or CIDR\"") else {
            return;
        };
        for prop in &obj.properties {
            let name = prop_name(&prop.name);
            let name_range = prop_name_range(&prop.name);
            if !valid_host_name(&name) {
                self.invalid(
                    name_range,
                    "a host alias made of letters, digits, '-', '_' and '.'",
                    &name,
                );
                continue;
            }
            if self.hosts.contains_key(&name) {
                self.error(name_range.start, ErrorKind::DuplicateKey { key: name });
                continue;
            }
            let Some((text, range)) = self.string(&prop.value, "an IP address or CIDR") else {
                continue;
            };
            match parse_prefix(text) {
                Some(prefix) => {
                    self.hosts.insert(name, prefix);
                }
                None => self.invalid(range, "an IP address or CIDR", text),
            }
        }
    }

    fn acl(&mut self, v: &Value<'a>, origin: RuleRef) -> Vec<NetRule> {
        let Some(obj) = self.object(v, "an acl rule object") else {
            return Vec::new();
        };
        let f = self.fields(obj, "an acls entry", ACL_KEYS, &["srcPosture"]);
        match f.get("action") {
            None => self.missing(obj.range, "action", "an acls entry"),
            Some(p) => {
                if let Some((text, range)) = self.string(&p.value, "\"accept\"")
                    && text != "accept"
                {
                    self.invalid(range, "\"accept\" (the only action)", text);
                }
            }
        }
        let src = match (f.get("src"), f.get("users")) {
            (Some(p), _) | (None, Some(p)) => self.selectors(&p.value, Place::Src),
            (None, None) => {
                self.missing(obj.range, "src", "an acls entry");
                Vec::new()
            }
        };
        let proto = match f.get("proto") {
            None => Some(ProtoMatch::Default),
            Some(p) => self.proto(&p.value).map(ProtoMatch::One),
        };
        let dst_prop = match (f.get("dst"), f.get("ports")) {
            (Some(p), _) | (None, Some(p)) => Some(*p),
            (None, None) => {
                self.missing(obj.range, "dst", "an acls entry");
                None
            }
        };
        let mut rules = Vec::new();
        let Some(dst_prop) = dst_prop else {
            return rules;
        };
        for (text, range) in self.strings(&dst_prop.value, "an array of \"SELECTOR:PORTS\"") {
            let Some((sel_text, ports_text)) = split_host_ports(text) else {
                self.invalid(
                    range,
                    "a destination of the form SELECTOR:PORTS, e.g. \"tag:web:443\"",
                    text,
                );
                continue;
            };
            let Some(ports) = parse_ports(ports_text) else {
                self.invalid(
                    range,
                    "ports as *, 22, 80,443 or 8000-8099 after the last ':'",
                    text,
                );
                continue;
            };
            let Some(selector) = self.selector(sel_text, range, Place::Dst) else {
                continue;
            };
            let Some(proto) = proto.clone() else {
                continue;
            };
            if let ProtoMatch::One(p) = proto
                && !p.has_ports()
                && ports != vec![PortRange::ALL]
            {
                self.invalid(
                    range,
                    "ports \"*\" for a protocol without ports (only tcp, udp and sctp have ports)",
                    text,
                );
                continue;
            }
            rules.push(NetRule {
                origin: origin.clone(),
                src: src.clone(),
                dst: vec![selector],
                caps: vec![NetCap { proto, ports }],
            });
        }
        rules
    }

    fn grant(&mut self, v: &Value<'a>, origin: RuleRef) -> (Option<NetRule>, Option<AppRule>) {
        let Some(obj) = self.object(v, "a grant object") else {
            return (None, None);
        };
        let f = self.fields(obj, "a grants entry", GRANT_KEYS, &["via", "srcPosture"]);
        let src = match f.get("src") {
            Some(p) => self.selectors(&p.value, Place::Src),
            None => {
                self.missing(obj.range, "src", "a grants entry");
                Vec::new()
            }
        };
        let dst = match f.get("dst") {
            Some(p) => self.selectors(&p.value, Place::Dst),
            None => {
                self.missing(obj.range, "dst", "a grants entry");
                Vec::new()
            }
        };
        if !f.contains_key("ip") && !f.contains_key("app") {
            self.error(
                obj.range.start,
                ErrorKind::MissingKey {
                    key: "ip\" or \"app",
                    context: "a grants entry",
                },
            );
        }
        let net = f.get("ip").map(|p| {
            let mut caps = Vec::new();
            for (text, range) in self.strings(&p.value, "an array of \"PROTO:PORTS\"") {
                match parse_grant_ip(text) {
                    Some(cap) => caps.push(cap),
                    None => self.invalid(
                        range,
                        "\"*\", PORTS or PROTO:PORTS, e.g. \"tcp:443\", \"8000-8099\", \"udp:*\"",
                        text,
                    ),
                }
            }
            NetRule {
                origin: origin.clone(),
                src: src.clone(),
                dst: dst.clone(),
                caps,
            }
        });
        let app = f.get("app").and_then(|p| {
            let obj = self.object(&p.value, "an object of capability name to [values]")?;
            let mut caps = BTreeMap::new();
            for prop in &obj.properties {
                let Some(values) = self.array(&prop.value, "an array of capability values") else {
                    continue;
                };
                caps.insert(
                    prop_name(&prop.name),
                    values.elements.iter().map(to_json).collect(),
                );
            }
            Some(AppRule {
                origin: origin.clone(),
                src: src.clone(),
                dst: dst.clone(),
                caps,
            })
        });
        (net, app)
    }

    fn node_attr(&mut self, v: &Value<'a>, origin: RuleRef) -> Option<NodeAttrRule> {
        let obj = self.object(v, "a nodeAttrs object")?;
        let f = self.fields(obj, "a nodeAttrs entry", NODE_ATTR_KEYS, &["app", "ipPool"]);
        let target = match f.get("target") {
            Some(p) => self.selectors(&p.value, Place::Target),
            None => {
                self.missing(obj.range, "target", "a nodeAttrs entry");
                Vec::new()
            }
        };
        let attrs = match f.get("attr") {
            Some(p) => self
                .strings(&p.value, "an array of attribute names")
                .into_iter()
                .map(|(s, _)| s.to_string())
                .collect(),
            None => {
                self.missing(obj.range, "attr", "a nodeAttrs entry");
                Vec::new()
            }
        };
        Some(NodeAttrRule {
            origin,
            target,
            attrs,
        })
    }

    fn funnel(&mut self, v: &Value<'a>, origin: RuleRef) -> Option<FunnelRule> {
        let obj = self.object(v, "a funnels rule object")?;
        let f = self.fields(obj, "a funnels entry", FUNNEL_KEYS, &[]);
        let src = match f.get("src") {
            Some(p) => self.selectors(&p.value, Place::FunnelSrc),
            None => {
                self.missing(obj.range, "src", "a funnels entry");
                Vec::new()
            }
        };
        let mut ports = Vec::new();
        match f.get("ports") {
            Some(p) => {
                for (text, range) in self.strings(&p.value, "an array of ports") {
                    match parse_ports(text) {
                        Some(r) => ports.extend(r),
                        None => self.invalid(range, "ports as *, 3000, 80,443 or 3000-3999", text),
                    }
                }
            }
            None => self.missing(obj.range, "ports", "a funnels entry"),
        }
        let max_ttl = f.get("maxTTL").and_then(|p| self.duration(&p.value));
        let require_login = f
            .get("requireLogin")
            .map(|p| self.selectors(&p.value, Place::Login))
            .unwrap_or_default();
        let require_webhook_signature = f
            .get("requireWebhookSignature")
            .and_then(|p| self.boolean(&p.value))
            .unwrap_or(false);
        let allow_ungated = f
            .get("allowUngated")
            .and_then(|p| self.boolean(&p.value))
            .unwrap_or(false);
        Some(FunnelRule {
            origin,
            src,
            ports,
            max_ttl,
            gates: GateRequirements {
                require_login,
                require_webhook_signature,
                allow_ungated,
            },
        })
    }

    fn test(&mut self, v: &Value<'a>, origin: RuleRef) -> Option<PolicyTest> {
        let obj = self.object(v, "a test object")?;
        let f = self.fields(obj, "a tests entry", TEST_KEYS, &["srcPostureAttrs"]);
        let src = match f.get("src") {
            Some(p) => {
                let (text, range) = self.string(&p.value, "a user, tag, host alias or IP")?;
                self.test_host(text, range, "src")
            }
            None => {
                self.missing(obj.range, "src", "a tests entry");
                None
            }
        };
        let proto = match f.get("proto") {
            Some(p) => self.proto(&p.value),
            None => Some(IpProto::TCP),
        };
        let mut targets = |key: &str| {
            let mut out = Vec::new();
            if let Some(p) = f.get(key) {
                for (text, range) in self.strings(&p.value, "an array of \"HOST:PORT\"") {
                    out.extend(self.test_target(text, range));
                }
            }
            out
        };
        let accept = targets("accept");
        let deny = targets("deny");
        Some(PolicyTest {
            origin,
            src: src?,
            proto: proto?,
            accept,
            deny,
        })
    }

    // ----- selectors and values -----

    fn selectors(&mut self, v: &Value<'a>, place: Place) -> Vec<Selector> {
        self.strings(v, "an array of strings")
            .into_iter()
            .filter_map(|(text, range)| self.selector(text, range, place))
            .collect()
    }

    fn selector(&mut self, text: &str, range: Range, place: Place) -> Option<Selector> {
        let not_here = |reason: &'static str| ErrorKind::NotAllowedHere {
            selector: text.to_string(),
            place: place.name(),
            reason,
        };
        let selector = if text == "*" {
            Selector::Any
        } else if let Some(auto) = text.strip_prefix("autogroup:") {
            match auto {
                "member" => Selector::AutogroupMember,
                "tagged" => Selector::AutogroupTagged,
                "self" => Selector::AutogroupSelf,
                "internet" => Selector::AutogroupInternet,
                "admin" | "owner" => Selector::AutogroupAdmin,
                _ => {
                    self.error(
                        range.start,
                        not_here(
                            "Postern knows autogroup:member, autogroup:tagged, autogroup:self, autogroup:internet and (in tagOwners) autogroup:admin",
                        ),
                    );
                    return None;
                }
            }
        } else if let Some(group) = text.strip_prefix("group:") {
            if !self.groups.contains_key(group) {
                let suggestion = nearest(group, self.groups.keys().map(String::as_str))
                    .map(|g| format!("group:{g}"));
                self.error(
                    range.start,
                    ErrorKind::UndefinedGroup {
                        name: group.to_string(),
                        suggestion,
                    },
                );
                return None;
            }
            Selector::Group(group.to_string())
        } else if let Some(tag) = text.strip_prefix("tag:") {
            if !self.tags.contains(tag) {
                let suggestion =
                    nearest(tag, self.tags.iter().map(String::as_str)).map(|t| format!("tag:{t}"));
                self.error(
                    range.start,
                    ErrorKind::UndefinedTag {
                        name: tag.to_string(),
                        suggestion,
                    },
                );
                return None;
            }
            Selector::Tag(tag.to_string())
        } else if text.contains('@') {
            if !is_login(text) {
                self.invalid(range, "a user login (user@domain)", text);
                return None;
            }
            Selector::User(text.to_string())
        } else if let Some(prefix) = parse_prefix(text) {
            Selector::Prefix(prefix)
        } else if let Some(prefix) = self.hosts.get(text) {
            Selector::Host {
                name: text.to_string(),
                prefix: *prefix,
            }
        } else {
            let suggestion = nearest(text, self.hosts.keys().map(String::as_str));
            self.error(
                range.start,
                ErrorKind::UndefinedHost {
                    name: text.to_string(),
                    suggestion,
                },
            );
            return None;
        };
        let allowed = match (&selector, place) {
            (Selector::AutogroupAdmin, Place::TagOwner) => true,
            (Selector::AutogroupAdmin, _) => {
                self.error(
                    range.start,
                    not_here("autogroup:admin only names who may apply a tag, in tagOwners"),
                );
                return None;
            }
            (Selector::AutogroupSelf | Selector::AutogroupInternet, Place::Dst) => true,
            (Selector::AutogroupSelf | Selector::AutogroupInternet, _) => {
                self.error(range.start, not_here("it may only be used in dst"));
                return None;
            }
            (_, Place::Src | Place::Dst | Place::Target) => true,
            (
                Selector::User(_)
                | Selector::Group(_)
                | Selector::Tag(_)
                | Selector::AutogroupMember,
                Place::TagOwner,
            ) => true,
            (_, Place::TagOwner) => false,
            (
                Selector::Any
                | Selector::User(_)
                | Selector::Group(_)
                | Selector::Tag(_)
                | Selector::AutogroupMember
                | Selector::AutogroupTagged,
                Place::FunnelSrc,
            ) => true,
            (_, Place::FunnelSrc) => false,
            (Selector::User(_) | Selector::Group(_) | Selector::AutogroupMember, Place::Login) => {
                true
            }
            (_, Place::Login) => false,
        };
        if !allowed {
            let reason = match place {
                Place::TagOwner => "tag owners are users, groups, tags or autogroup:admin",
                Place::FunnelSrc => "funnels are granted to users, groups, tags or autogroups",
                _ => "a login is required of users, groups or autogroup:member",
            };
            self.error(range.start, not_here(reason));
            return None;
        }
        Some(selector)
    }

    /// A test's source or destination host: a user, a tag, a host alias or an IP.
    fn test_host(&mut self, text: &str, range: Range, what: &'static str) -> Option<TestSource> {
        if let Some(tag) = text.strip_prefix("tag:") {
            if !self.tags.contains(tag) {
                let suggestion =
                    nearest(tag, self.tags.iter().map(String::as_str)).map(|t| format!("tag:{t}"));
                self.error(
                    range.start,
                    ErrorKind::UndefinedTag {
                        name: tag.to_string(),
                        suggestion,
                    },
                );
                return None;
            }
            return Some(TestSource::Tag(tag.to_string()));
        }
        if is_login(text) {
            return Some(TestSource::User(text.to_string()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(TestSource::Address {
                written: text.to_string(),
                ip,
            });
        }
        if let Some(prefix) = self.hosts.get(text) {
            return Some(TestSource::Address {
                written: text.to_string(),
                ip: prefix.addr(),
            });
        }
        if text.contains(':') || text == "*" {
            self.error(
                range.start,
                ErrorKind::NotAllowedHere {
                    selector: text.to_string(),
                    place: what,
                    reason: "a test names one user, tag, host alias or IP address",
                },
            );
            return None;
        }
        let suggestion = nearest(text, self.hosts.keys().map(String::as_str));
        self.error(
            range.start,
            ErrorKind::UndefinedHost {
                name: text.to_string(),
                suggestion,
            },
        );
        None
    }

    fn test_target(&mut self, text: &str, range: Range) -> Option<TestTarget> {
        let Some((host, port)) = split_host_ports(text) else {
            self.invalid(range, "HOST:PORT, e.g. \"tag:web:443\"", text);
            return None;
        };
        let Ok(port) = port.parse::<u16>() else {
            self.invalid(
                range,
                "HOST:PORT with one port number, e.g. \"tag:web:443\"",
                text,
            );
            return None;
        };
        let host = self.test_host(host, range, "a test destination")?;
        Some(TestTarget {
            host,
            port,
            position: Some(self.source.position(range.start)),
        })
    }

    fn proto(&mut self, v: &Value<'a>) -> Option<IpProto> {
        let expected = "a protocol name (tcp, udp, icmp, sctp, ...) or number 0-255";
        match v {
            Value::NumberLit(n) => match n.value.parse::<u8>() {
                Ok(p) => Some(IpProto(p)),
                Err(_) => {
                    self.invalid(n.range, expected, n.value);
                    None
                }
            },
            _ => {
                let (text, range) = self.string(v, expected)?;
                let proto = IpProto::parse(text);
                if proto.is_none() {
                    self.invalid(range, expected, text);
                }
                proto
            }
        }
    }

    fn duration(&mut self, v: &Value<'a>) -> Option<Duration> {
        let (text, range) = self.string(v, "a duration like \"8h\" or \"30m\"")?;
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                self.invalid(range, "a duration like \"8h\", \"30m\" or \"7d\"", text);
                None
            }
        }
    }

    // ----- JSON shapes -----

    /// Reports unknown, unsupported and duplicate keys; returns the known ones.
    fn fields<'v>(
        &mut self,
        obj: &'v Object<'a>,
        context: &'static str,
        known: &'static [&'static str],
        unsupported: &[&str],
    ) -> Fields<'a, 'v> {
        let mut out = HashMap::new();
        for prop in &obj.properties {
            let name = prop_name(&prop.name);
            let start = prop_name_range(&prop.name).start;
            match known.iter().find(|k| **k == name) {
                Some(key) => {
                    if out.contains_key(key) {
                        self.error(start, ErrorKind::DuplicateKey { key: name });
                    } else {
                        out.insert(*key, prop);
                    }
                }
                None if unsupported.contains(&name.as_str()) => {
                    self.error(start, ErrorKind::UnsupportedKey { key: name });
                }
                None => {
                    let suggestion = nearest(&name, known.iter().copied());
                    self.error(
                        start,
                        ErrorKind::UnknownKey {
                            key: name,
                            context,
                            suggestion,
                            expected: known,
                        },
                    );
                }
            }
        }
        out
    }

    fn array_items<'v>(
        &mut self,
        v: &'v Value<'a>,
        expected: &'static str,
    ) -> impl Iterator<Item = (usize, &'v Value<'a>)> + use<'v, 'a> {
        let items: &'v [Value<'a>] = match self.array(v, expected) {
            Some(array) => &array.elements,
            None => &[],
        };
        items.iter().enumerate()
    }

    fn object<'v>(&mut self, v: &'v Value<'a>, expected: &'static str) -> Option<&'v Object<'a>> {
        match v {
            Value::Object(o) => Some(o),
            _ => {
                self.wrong_type(v, expected);
                None
            }
        }
    }

    fn array<'v>(&mut self, v: &'v Value<'a>, expected: &'static str) -> Option<&'v Array<'a>> {
        match v {
            Value::Array(a) => Some(a),
            _ => {
                self.wrong_type(v, expected);
                None
            }
        }
    }

    fn string<'v>(&mut self, v: &'v Value<'a>, expected: &'static str) -> Option<(&'v str, Range)> {
        match v {
            Value::StringLit(s) => Some((&s.value, s.range)),
            _ => {
                self.wrong_type(v, expected);
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'a>) -> Option<bool> {
        match v {
            Value::BooleanLit(b) => Some(b.value),
            _ => {
                self.wrong_type(v, "true or false");
                None
            }
        }
    }

    /// The strings of an array of strings; wrong elements are reported and skipped.
    fn strings<'v>(&mut self, v: &'v Value<'a>, expected: &'static str) -> Vec<(&'v str, Range)> {
        let Some(array) = self.array(v, expected) else {
            return Vec::new();
        };
        array
            .elements
            .iter()
            .filter_map(|e| self.string(e, "a string"))
            .collect()
    }

    // ----- errors -----

    fn rule_ref(&self, section: Section, index: usize, v: &Value<'a>) -> RuleRef {
        RuleRef {
            section,
            index,
            position: self.source.position(value_range(v).start),
        }
    }

    fn error(&mut self, offset: usize, kind: ErrorKind) {
        self.errors.push(PolicyError {
            position: self.source.position(offset),
            kind,
        });
    }

    fn invalid(&mut self, range: Range, expected: &str, found: &str) {
        self.error(
            range.start,
            ErrorKind::InvalidValue {
                expected: expected.to_string(),
                found: found.to_string(),
            },
        );
    }

    fn missing(&mut self, range: Range, key: &'static str, context: &'static str) {
        self.error(range.start, ErrorKind::MissingKey { key, context });
    }

    fn wrong_type(&mut self, v: &Value<'a>, expected: &'static str) {
        let found = match v {
            Value::StringLit(_) => "a string",
            Value::NumberLit(_) => "a number",
            Value::BooleanLit(_) => "a boolean",
            Value::Object(_) => "an object",
            Value::Array(_) => "an array",
            Value::NullKeyword(_) => "null",
        };
        self.error(
            value_range(v).start,
            ErrorKind::WrongType { expected, found },
        );
    }
}

// ----- free helpers -----

fn syntax_message(e: &jsonc_parser::errors::ParseError) -> String {
    use jsonc_parser::errors::ParseErrorKind as K;
    let hint = match e.kind() {
        K::ExpectedStringObjectProperty => "; keys must be in double quotes",
        K::UnexpectedToken | K::UnexpectedWord => {
            "; strings must be in double quotes, and values separated by commas"
        }
        K::UnterminatedArray => "; add the closing ']'",
        K::UnterminatedObject => "; add the closing '}'",
        K::ExpectedColonAfterObjectKey => "; write \"key\": value",
        _ => "",
    };
    format!("{}{hint}", e.kind())
}

/// How deeply objects and arrays may nest. Policies need about 6 levels; the limit keeps
/// the recursive parser far from the end of the stack on hostile input.
pub const MAX_NESTING: usize = 64;

/// The offset of the first `[` or `{` nested deeper than [`MAX_NESTING`], skipping strings
/// and comments.
fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    match c {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while bytes.get(i).is_some_and(|c| *c != b'\n') {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while bytes.get(i).is_some()
                    && !(bytes.get(i) == Some(&b'*') && bytes.get(i + 1) == Some(&b'/'))
                {
                    i += 1;
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The end offset of the first member (of any object or array) not followed by a comma
/// before its next sibling.
fn missing_comma(text: &str, v: &Value<'_>) -> Option<usize> {
    let ranges: Vec<Range> = match v {
        Value::Object(o) => o.properties.iter().map(|p| p.range).collect(),
        Value::Array(a) => a.elements.iter().map(value_range).collect(),
        _ => return None,
    };
    for pair in ranges.windows(2) {
        if let [a, b] = pair {
            let gap = text.get(a.end..b.start).unwrap_or(",");
            if strip_comments(gap).trim() != "," {
                return Some(a.end);
            }
        }
    }
    let children: Vec<&Value<'_>> = match v {
        Value::Object(o) => o.properties.iter().map(|p| &p.value).collect(),
        Value::Array(a) => a.elements.iter().collect(),
        _ => Vec::new(),
    };
    children.into_iter().find_map(|c| missing_comma(text, c))
}

/// The text between two values with its `//` and `/* */` comments removed.
fn strip_comments(gap: &str) -> String {
    let mut out = String::new();
    let mut rest = gap;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after
                .find('\n')
                .map_or("", |i| after.get(i..).unwrap_or(""));
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after
                .find("*/")
                .map_or("", |i| after.get(i + 2..).unwrap_or(""));
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
    }
    out
}

fn value_range(v: &Value<'_>) -> Range {
    match v {
        Value::StringLit(x) => x.range,
        Value::NumberLit(x) => x.range,
        Value::BooleanLit(x) => x.range,
        Value::Object(x) => x.range,
        Value::Array(x) => x.range,
        Value::NullKeyword(x) => x.range,
    }
}

fn prop_name(name: &ObjectPropName<'_>) -> String {
    match name {
        ObjectPropName::String(s) => s.value.to_string(),
        ObjectPropName::Word(w) => w.value.to_string(),
    }
}

fn prop_name_range(name: &ObjectPropName<'_>) -> Range {
    match name {
        ObjectPropName::String(s) => s.range,
        ObjectPropName::Word(w) => w.range,
    }
}

fn to_json(v: &Value<'_>) -> serde_json::Value {
    match v {
        Value::StringLit(s) => serde_json::Value::String(s.value.to_string()),
        Value::NumberLit(n) => n
            .value
            .parse::<serde_json::Number>()
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::BooleanLit(b) => serde_json::Value::Bool(b.value),
        Value::Object(o) => serde_json::Value::Object(
            o.properties
                .iter()
                .map(|p| (prop_name(&p.name), to_json(&p.value)))
                .collect(),
        ),
        Value::Array(a) => serde_json::Value::Array(a.elements.iter().map(to_json).collect()),
        Value::NullKeyword(_) => serde_json::Value::Null,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_host_name(name: &str) -> bool {
    valid_name(name) && parse_prefix(name).is_none()
}

fn is_login(text: &str) -> bool {
    match text.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty()
                && !domain.contains('@')
                && !text.chars().any(|c| c.is_whitespace() || c == ':')
        }
        None => false,
    }
}

/// An IP (as a host prefix) or a CIDR (host bits cleared).
pub(crate) fn parse_prefix(text: &str) -> Option<IpNet> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    text.parse::<IpNet>().ok().map(|net| net.trunc())
}

/// Splits `HOST:PORTS` at the last colon; `[v6]:PORTS` is accepted too.
pub(crate) fn split_host_ports(text: &str) -> Option<(&str, &str)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, ports) = rest.split_once("]:")?;
        return Some((host, ports));
    }
    let (host, ports) = text.rsplit_once(':')?;
    (!host.is_empty() && !ports.is_empty()).then_some((host, ports))
}

/// `*`, `22`, `80,443`, `8000-8099`, or a comma list of those.
pub(crate) fn parse_ports(text: &str) -> Option<Vec<PortRange>> {
    if text == "*" {
        return Some(vec![PortRange::ALL]);
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let range = match part.split_once('-') {
            Some((a, b)) => {
                let first = a.trim().parse::<u16>().ok()?;
                let last = b.trim().parse::<u16>().ok()?;
                (first <= last).then_some(PortRange { first, last })?
            }
            None => {
                let p = part.parse::<u16>().ok()?;
                PortRange { first: p, last: p }
            }
        };
        out.push(range);
    }
    Some(out)
}

/// A grant's `ip` entry: `*`, `PORTS` or `PROTO:PORTS`.
fn parse_grant_ip(text: &str) -> Option<NetCap> {
    if text == "*" {
        return Some(NetCap {
            proto: ProtoMatch::All,
            ports: vec![PortRange::ALL],
        });
    }
    match text.split_once(':') {
        Some((proto, ports)) => {
            let proto = IpProto::parse(proto)?;
            let ports = parse_ports(ports)?;
            if !proto.has_ports() && ports != vec![PortRange::ALL] {
                return None;
            }
            Some(NetCap {
                proto: ProtoMatch::One(proto),
                ports,
            })
        }
        None => Some(NetCap {
            proto: ProtoMatch::Default,
            ports: parse_ports(text)?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_all_forms() {
        assert_eq!(parse_ports("*"), Some(vec![PortRange::ALL]));
        assert_eq!(
            parse_ports("22,80-90"),
            Some(vec![
                PortRange {
                    first: 22,
                    last: 22
                },
                PortRange {
                    first: 80,
                    last: 90
                }
            ])
        );
        assert_eq!(parse_ports("90-80"), None);
        assert_eq!(parse_ports("70000"), None);
        assert_eq!(parse_ports(""), None);
    }

    #[test]
    fn host_ports_split_at_the_last_colon() {
        assert_eq!(split_host_ports("tag:web:443"), Some(("tag:web", "443")));
        assert_eq!(split_host_ports("fd7a::1:22"), Some(("fd7a::1", "22")));
        assert_eq!(split_host_ports("[fd7a::1]:22"), Some(("fd7a::1", "22")));
        assert_eq!(split_host_ports("web"), None);
    }
}

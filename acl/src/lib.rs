//! Postern's policy language.
//!
//! Admins write one policy file (HuJSON, Tailscale-compatible where Tailscale has the
//! feature). This crate parses it with `FILE:LINE:COL` errors, validates it, runs the
//! policy's own `tests`, evaluates access questions and compiles, per node, the peers it
//! may see, the inbound packet filter it enforces and its funnel grants.
//!
//! It must never do I/O: the caller reads the file and hands over the text; the caller
//! supplies the set of nodes and identities. No clock is read.
//!
//! # Use from the coord
//!
//! ```
//! use std::sync::Arc;
//! use postern_acl::{NodeId, NodeSet, NodeView, Policy, PolicyCompiler, IpProto};
//!
//! let text = r#"{
//!   "groups": {"group:eng": ["alice@example.com"]},
//!   "tagOwners": {"tag:web": ["group:eng"]},
//!   "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"]}],
//!   "tests": [{"src": "alice@example.com", "accept": ["tag:web:443"], "deny": ["tag:web:22"]}],
//! }"#;
//! let policy = Arc::new(Policy::parse("policy.hujson", text).map_err(|e| e.to_string())?);
//! let laptop = NodeView {
//!     id: NodeId(1),
//!     addresses: vec!["100.64.0.1".parse()?],
//!     user: "alice@example.com".into(),
//!     idp_groups: None,
//!     tags: vec![],
//!     is_ingress: false,
//! };
//! let web = NodeView {
//!     id: NodeId(2),
//!     addresses: vec!["100.64.0.2".parse()?],
//!     user: "bob@example.com".into(),
//!     idp_groups: None,
//!     tags: vec!["web".into()],
//!     is_ingress: false,
//! };
//! let mut compiler = PolicyCompiler::new(policy, [laptop].into_iter().collect::<NodeSet>());
//! let changed = compiler.upsert_node(web);
//! assert_eq!(changed, vec![NodeId(1), NodeId(2)]);
//! let server = compiler.compiled(NodeId(2)).ok_or("compiled")?;
//! assert_eq!(server.visible_peers, vec![NodeId(1)]);
//! assert!(server.packet_filter.allows("100.64.0.1".parse()?, 443, IpProto::TCP));
//! assert!(!server.packet_filter.allows("100.64.0.1".parse()?, 22, IpProto::TCP));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod compile;
mod error;
mod eval;
mod filter;
mod model;
mod node;
mod parse;
mod source;

pub use compile::{AppGrant, CompiledNode, FUNNEL_ATTR, FunnelGrant, PolicyCompiler};
pub use error::{ErrorKind, PolicyError, PolicyErrors};
pub use eval::{AccessVerdict, QueryError, Subject, is_internet};
pub use filter::{AddrRanges, FilterEntry, FilterProto, PacketFilter, PortTable};
pub use model::{
    AppRule, FunnelRule, GateRequirements, IdpGroupsMode, IpProto, NetCap, NetRule, NodeAttrRule,
    Policy, PolicySummary, PolicyTest, PortRange, ProtoMatch, RuleRef, Section, Selector,
    TestSource, TestTarget, UserLogin,
};
pub use node::{NodeId, NodeSet, NodeView};
pub use parse::{MAX_NESTING, MAX_POLICY_BYTES};
pub use source::Position;

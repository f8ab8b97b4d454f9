//! The policy in force at the coord: loading it, keeping every node's compiled result
//! current, and reloading it when the file changes.
//!
//! [`PolicyEngine`] owns a [`PolicyCompiler`] over the nodes that may take part in the
//! tailnet (approved, key not expired). [`PolicyEngine::sync`] brings the compiler's node
//! set in line with the registry and returns the nodes whose compiled result changed;
//! [`PolicyEngine::reload`] re-reads the policy file and swaps the policy in only if it is
//! valid (an invalid file keeps the old policy in force). The netmap builder reads each
//! node's result with [`PolicyEngine::with_compiled`].
//!
//! Without a policy file the coord runs [`DEFAULT_POLICY`]: each user's own devices reach
//! each other, and nothing else is allowed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use postern_acl::{CompiledNode, NodeId, NodeSet, NodeView, Policy, PolicyCompiler, PolicyErrors};

use crate::store::{NodeRecord, UserRecord};

/// The name the built-in policy's errors and rule references carry.
pub const DEFAULT_POLICY_NAME: &str = "<built-in policy>";

/// The policy in force when `serve` gets no `--policy`: a user's own (untagged) devices may
/// reach each other on every port; tagged devices and other users' devices are unreachable.
pub const DEFAULT_POLICY: &str = r#"{
  // Postern's built-in policy: each user's own devices reach each other. Nothing else.
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
  ],
}
"#;

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PolicySource {
    /// [`DEFAULT_POLICY`].
    #[default]
    BuiltIn,
    /// A HuJSON file, re-read on [`PolicyEngine::reload`].
    File(PathBuf),
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicySource::BuiltIn => f.write_str(DEFAULT_POLICY_NAME),
            PolicySource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyLoadError {
    /// The file could not be read.
    #[error("cannot read the policy file {path}: {source}; check the path and its permissions")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The policy is invalid or one of its tests failed; one `FILE:LINE:COL: message` line
    /// per problem.
    #[error("{0}")]
    Invalid(PolicyErrors),
}

/// What a [`PolicyEngine::reload`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// The file's contents are what is already in force (or the policy is built in).
    Unchanged,
    /// The new policy is in force; these nodes' results changed.
    Applied {
        /// The nodes whose compiled results changed.
        changed: Vec<NodeId>,
        /// A one-line summary of the new policy.
        summary: String,
    },
    /// The file could not be loaded; the previous policy stays in force.
    Failed(PolicyLoadError),
}

/// The policy in force and every eligible node's compiled result. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    source: PolicySource,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    compiler: PolicyCompiler,
    /// The text last tried (in force, or refused), so an unchanged file is not re-parsed
    /// and a broken one is reported once.
    last_text: String,
    /// Whether `last_text` was refused (the policy in force is older).
    last_refused: bool,
    /// The last error reading the file, if the last read failed.
    last_read_error: Option<String>,
}

impl PolicyEngine {
    /// Loads the policy from `source` with no nodes yet. Fails if the file cannot be read
    /// or the policy is invalid: the coord should not start on a broken policy.
    pub fn load(source: PolicySource) -> Result<Self, PolicyLoadError> {
        let text = read_source(&source)?;
        let policy = parse(&source, &text).map_err(PolicyLoadError::Invalid)?;
        Ok(Self {
            source,
            inner: Arc::new(Mutex::new(Inner {
                compiler: PolicyCompiler::new(Arc::new(policy), NodeSet::new()),
                last_text: text,
                last_refused: false,
                last_read_error: None,
            })),
        })
    }

    /// Where the policy comes from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// A one-line summary of the policy in force.
    pub fn summary(&self) -> String {
        self.lock().compiler.policy().summary().to_string()
    }

    /// Re-reads the policy source. With `force` false, an unchanged file (same text as
    /// last tried) is not parsed again and reports [`ReloadOutcome::Unchanged`]; with
    /// `force` true (SIGHUP, an admin's request) a file whose text was refused before is
    /// checked again. A valid new policy is put in force; anything else leaves the old one.
    pub fn reload(&self, force: bool) -> ReloadOutcome {
        if self.source == PolicySource::BuiltIn {
            return ReloadOutcome::Unchanged;
        }
        let read = read_source(&self.source);
        let mut inner = self.lock();
        let text = match read {
            Ok(text) => {
                inner.last_read_error = None;
                text
            }
            Err(err) => {
                // A missing or unreadable file is reported once (and on every forced reload),
                // not at every poll.
                let message = err.to_string();
                if !force && inner.last_read_error.as_deref() == Some(message.as_str()) {
                    return ReloadOutcome::Unchanged;
                }
                inner.last_read_error = Some(message);
                return ReloadOutcome::Failed(err);
            }
        };
        // Unchanged text that is in force never needs a reload; unchanged text that was
        // refused is checked (and refused) again only when forced.
        if text == inner.last_text && (!inner.last_refused || !force) {
            return ReloadOutcome::Unchanged;
        }
        inner.last_text.clone_from(&text);
        match parse(&self.source, &text) {
            Ok(policy) => {
                inner.last_refused = false;
                let summary = policy.summary().to_string();
                let changed = inner.compiler.set_policy(Arc::new(policy));
                ReloadOutcome::Applied { changed, summary }
            }
            Err(errors) => {
                inner.last_refused = true;
                ReloadOutcome::Failed(PolicyLoadError::Invalid(errors))
            }
        }
    }

    /// Makes the compiler's nodes exactly `nodes` (the eligible nodes, as views). Returns
    /// the nodes whose compiled results changed, sorted.
    pub fn sync(&self, nodes: Vec<NodeView>) -> Vec<NodeId> {
        let mut inner = self.lock();
        let compiler = &mut inner.compiler;
        let mut changed = Vec::new();
        let keep: std::collections::HashSet<NodeId> = nodes.iter().map(|n| n.id).collect();
        let gone: Vec<NodeId> = compiler
            .nodes()
            .iter()
            .map(|n| n.id)
            .filter(|id| !keep.contains(id))
            .collect();
        for id in gone {
            changed.extend(compiler.remove_node(id));
        }
        for view in nodes {
            if compiler.nodes().get(view.id) != Some(&view) {
                changed.extend(compiler.upsert_node(view));
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Runs `f` with node `id`'s compiled result (`None` if the node is not eligible).
    pub fn with_compiled<R>(&self, id: NodeId, f: impl FnOnce(Option<&CompiledNode>) -> R) -> R {
        f(self.lock().compiler.compiled(id))
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.lock().compiler.policy().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the compiler half-updated in a way
        // that matters more than stopping the coord would: keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The policy's view of a registered node: addresses, owner login, the owner's IdP groups
/// (an empty stored list counts as "no claim"), tags without `tag:`, ingress flag.
pub fn node_view(node: &NodeRecord, user: Option<&UserRecord>) -> NodeView {
    let groups = user.map(|u| u.groups.clone()).unwrap_or_default();
    NodeView {
        id: NodeId(node.id.0),
        addresses: vec![node.ipv4.into(), node.ipv6.into()],
        user: user.map(|u| u.login.clone()).unwrap_or_default(),
        idp_groups: (!groups.is_empty()).then(|| {
            groups
                .iter()
                .map(|g| g.strip_prefix("group:").unwrap_or(g).to_owned())
                .collect()
        }),
        tags: node
            .tags
            .iter()
            .map(|t| t.strip_prefix("tag:").unwrap_or(t).to_owned())
            .collect(),
        is_ingress: node.is_ingress,
    }
}

fn read_source(source: &PolicySource) -> Result<String, PolicyLoadError> {
    match source {
        PolicySource::BuiltIn => Ok(DEFAULT_POLICY.to_owned()),
        PolicySource::File(path) => read_file(path),
    }
}

fn read_file(path: &Path) -> Result<String, PolicyLoadError> {
    std::fs::read_to_string(path).map_err(|source| PolicyLoadError::Unreadable {
        path: path.to_owned(),
        source,
    })
}

fn parse(source: &PolicySource, text: &str) -> Result<Policy, PolicyErrors> {
    Policy::parse(&source.to_string(), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_acl::IpProto;

    fn view(id: u64, user: &str, tags: &[&str]) -> NodeView {
        NodeView {
            id: NodeId(id),
            addresses: vec![format!("100.64.0.{id}").parse().unwrap()],
            user: user.into(),
            idp_groups: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            is_ingress: false,
        }
    }

    #[test]
    fn the_built_in_policy_lets_a_users_own_devices_reach_each_other_only() {
        let engine = PolicyEngine::load(PolicySource::BuiltIn).unwrap();
        engine.sync(vec![
            view(1, "alice@example.com", &[]),
            view(2, "alice@example.com", &[]),
            view(3, "bob@example.com", &[]),
            view(4, "alice@example.com", &["web"]),
        ]);
        engine.with_compiled(NodeId(1), |c| {
            let c = c.unwrap();
            assert_eq!(c.visible_peers, vec![NodeId(2)]);
            assert!(
                c.packet_filter
                    .allows("100.64.0.2".parse().unwrap(), 22, IpProto::TCP)
            );
            assert!(
                !c.packet_filter
                    .allows("100.64.0.3".parse().unwrap(), 22, IpProto::TCP)
            );
        });
        engine.with_compiled(NodeId(4), |c| assert!(c.unwrap().visible_peers.is_empty()));
    }

    #[test]
    fn sync_reports_only_the_nodes_whose_results_changed() {
        let engine = PolicyEngine::load(PolicySource::BuiltIn).unwrap();
        let a1 = view(1, "alice@example.com", &[]);
        let b = view(3, "bob@example.com", &[]);
        assert_eq!(
            engine.sync(vec![a1.clone(), b.clone()]),
            vec![NodeId(1), NodeId(3)]
        );
        assert!(engine.sync(vec![a1.clone(), b.clone()]).is_empty());
        let a2 = view(2, "alice@example.com", &[]);
        assert_eq!(
            engine.sync(vec![a1.clone(), a2, b.clone()]),
            vec![NodeId(1), NodeId(2)]
        );
        assert_eq!(engine.sync(vec![a1, b]), vec![NodeId(1)]);
    }

    #[test]
    fn a_broken_file_keeps_the_old_policy_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.hujson");
        std::fs::write(&path, DEFAULT_POLICY).unwrap();
        let engine = PolicyEngine::load(PolicySource::File(path.clone())).unwrap();
        engine.sync(vec![view(1, "a@x", &[]), view(2, "a@x", &[])]);
        assert!(matches!(engine.reload(false), ReloadOutcome::Unchanged));
        std::fs::write(&path, "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dts\": [\"*:*\"]},\n  ],\n}\n").unwrap();
        let ReloadOutcome::Failed(err) = engine.reload(false) else {
            panic!("expected a failure");
        };
        let message = err.to_string();
        assert!(message.contains("policy.hujson:3:"), "{message}");
        assert!(message.contains("did you mean \"dst\""), "{message}");
        // Reported once; forced, it is checked again.
        assert!(matches!(engine.reload(false), ReloadOutcome::Unchanged));
        assert!(matches!(engine.reload(true), ReloadOutcome::Failed(_)));
        engine.with_compiled(NodeId(1), |c| {
            assert_eq!(c.unwrap().visible_peers, vec![NodeId(2)])
        });
        std::fs::write(&path, r#"{"acls": []}"#).unwrap();
        let ReloadOutcome::Applied { changed, .. } = engine.reload(false) else {
            panic!("expected the new policy to apply");
        };
        assert_eq!(changed, vec![NodeId(1), NodeId(2)]);
        engine.with_compiled(NodeId(1), |c| assert!(c.unwrap().visible_peers.is_empty()));
        // A file that disappears is reported once; the policy in force stays.
        std::fs::remove_file(&path).unwrap();
        let ReloadOutcome::Failed(err) = engine.reload(false) else {
            panic!("expected a failure");
        };
        assert!(
            err.to_string().contains("cannot read the policy file"),
            "{err}"
        );
        assert!(matches!(engine.reload(false), ReloadOutcome::Unchanged));
        assert!(matches!(engine.reload(true), ReloadOutcome::Failed(_)));
        assert_eq!(engine.summary(), engine.policy().summary().to_string());
    }
}

//! Who may attach: the relay asks a [`NodeAuthorizer`] whether a node key (already proven
//! held by the client) belongs to a registered node.
//!
//! The coord embeds the relay and answers from its registry; a standalone relay uses a
//! [`StaticAllowList`] (also what tests use).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

use postern_proto::NodePublicKey;

/// What [`NodeAuthorizer::authorize`] returns.
pub type AuthorizeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<bool, AuthorizeError>> + Send + 'a>>;

/// Decides whether a node key may attach to the relay.
pub trait NodeAuthorizer: Send + Sync + 'static {
    /// Whether `node_key` is a registered, unexpired node that may use the relay.
    ///
    /// Called once per attach, after the client proved it holds the key. `Ok(false)` refuses
    /// the client with "not registered"; an error refuses it with "cannot check right now"
    /// (the client retries later).
    fn authorize<'a>(&'a self, node_key: &'a NodePublicKey) -> AuthorizeFuture<'a>;
}

/// The authorizer could not answer (its store is down, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot check the node's registration: {0}")]
pub struct AuthorizeError(pub String);

/// A fixed set of allowed node keys, changeable at run time.
#[derive(Debug, Default)]
pub struct StaticAllowList {
    keys: RwLock<HashSet<NodePublicKey>>,
}

impl StaticAllowList {
    /// Allows exactly `keys`.
    pub fn new(keys: impl IntoIterator<Item = NodePublicKey>) -> Self {
        Self {
            keys: RwLock::new(keys.into_iter().collect()),
        }
    }

    /// Reads `nodekey:…` lines (blank lines and `#` comments ignored), as written for
    /// `postern-coord relay --allow-file`. Fails on the first line that is not a node key,
    /// naming it.
    pub fn parse(text: &str) -> Result<Self, AllowListError> {
        let mut keys = HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.parse().map_err(|source| AllowListError {
                line: index + 1,
                source,
            })?;
            keys.insert(key);
        }
        Ok(Self {
            keys: RwLock::new(keys),
        })
    }

    /// Allows `key` from now on.
    pub fn insert(&self, key: NodePublicKey) {
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(key);
        }
    }

    /// Refuses `key` from now on (connections already attached stay until they reconnect).
    pub fn remove(&self, key: &NodePublicKey) {
        if let Ok(mut keys) = self.keys.write() {
            keys.remove(key);
        }
    }

    /// How many keys are allowed.
    pub fn len(&self) -> usize {
        self.keys.read().map(|k| k.len()).unwrap_or(0)
    }

    /// Whether no key is allowed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NodeAuthorizer for StaticAllowList {
    fn authorize<'a>(&'a self, node_key: &'a NodePublicKey) -> AuthorizeFuture<'a> {
        let result = self
            .keys
            .read()
            .map(|keys| keys.contains(node_key))
            .map_err(|_| AuthorizeError("the allow list lock is poisoned".into()));
        Box::pin(std::future::ready(result))
    }
}

/// A line of an allow-list file is not a node key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allow list line {line}: {source}")]
pub struct AllowListError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub source: postern_proto::keys::KeyParseError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allow_list_parses_and_answers() {
        let key = NodePublicKey::from_bytes([7; 32]);
        let list = StaticAllowList::parse(&format!("# nodes\n\n{key}\n")).unwrap();
        assert!(list.authorize(&key).await.unwrap());
        assert!(
            !list
                .authorize(&NodePublicKey::from_bytes([8; 32]))
                .await
                .unwrap()
        );
        list.remove(&key);
        assert!(list.is_empty());
        let err = StaticAllowList::parse(&format!("{key}\nmkey:00\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "allow list line 2: wrong kind of key: expected a \"nodekey:\" key, found \"mkey:\"; check which key was copied"
        );
    }
}

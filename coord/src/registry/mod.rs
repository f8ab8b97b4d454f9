//! The node registry: who is in the tailnet, under which name and addresses.
//!
//! [`Registry`] combines the pure allocation rules ([`names`], [`addresses`]) with the
//! [`Store`]. Registering a machine that is already known keeps its id, name and
//! addresses and only swaps its node key; a new machine gets a sanitised, de-duplicated
//! name and fresh addresses. Allocation is optimistic: read what is taken, pick, insert,
//! and retry if a concurrent registration on another coord replica took the same name or
//! address first; the store's unique constraints make that safe. Within one process,
//! allocations take turns (an async mutex), so many machines with the same hostname
//! registering at once do not keep colliding on the same next name.

pub mod addresses;
pub mod names;

use std::collections::HashSet;
use std::sync::Arc;

use ipnet::Ipv6Net;
use postern_proto::{MachinePublicKey, NodeId, NodePublicKey, UnixTime, UserId};

use crate::store::{NewNode, NodeRecord, Store, StoreError};

/// Settings key under which the tailnet's ULA prefix is stored.
pub const ULA_PREFIX_SETTING: &str = "ula_prefix";

/// How often a registration retries after losing a race for a name or address.
const MAX_ALLOCATION_ATTEMPTS: usize = 16;

/// The node registry of one tailnet.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    tailnet_domain: String,
    ula: Ipv6Net,
    /// Serialises this process's allocations (read taken set, pick, insert).
    allocation: Arc<tokio::sync::Mutex<()>>,
}

/// A machine asking to join, as established by the login or auth key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The machine's key (proved by the control channel).
    pub machine_key: MachinePublicKey,
    /// The node key it will use.
    pub node_key: NodePublicKey,
    /// Its hostname, to derive the name from.
    pub hostname: String,
    /// Owner.
    pub user_id: UserId,
    /// Tags granted.
    pub tags: Vec<String>,
    /// Ephemeral node.
    pub ephemeral: bool,
    /// Approved already (auth key, or approval not required).
    pub approved: bool,
    /// A Postern ingress.
    pub is_ingress: bool,
    /// When its key expires.
    pub key_expiry: Option<UnixTime>,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A requested name is not a DNS label.
    #[error(
        "{name:?} is not a valid node name: use 1-63 of a-z, 0-9 and '-', not starting or ending with '-' (try {suggestion:?})"
    )]
    InvalidName {
        /// The name asked for.
        name: String,
        /// A valid name derived from it.
        suggestion: String,
    },
    /// A requested name belongs to another node.
    #[error("the name {name:?} is taken by another node; pick another or rename that node first")]
    NameTaken {
        /// The name asked for.
        name: String,
    },
    /// A tag does not look like `tag:NAME`.
    #[error("{tag:?} is not a tag: tags look like \"tag:NAME\" with NAME of a-z, 0-9 and '-'")]
    InvalidTag {
        /// The offending tag.
        tag: String,
    },
    /// No address is free, or every attempt lost a race.
    #[error("could not allocate a name and addresses after {attempts} attempts: {last}")]
    AllocationFailed {
        /// Attempts made.
        attempts: usize,
        /// The last reason.
        last: String,
    },
    /// The node does not exist.
    #[error("{0} is not registered")]
    UnknownNode(NodeId),
    /// The stored ULA prefix is not a /48.
    #[error(
        "the stored ULA prefix {0:?} is not an IPv6 /48; fix the `settings` row or restore a backup"
    )]
    BadUlaPrefix(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Registry {
    /// Opens the registry of the tailnet `tailnet_domain` (e.g. `example.ts.net`) on
    /// `store`, generating and storing the tailnet's ULA prefix on first use.
    pub async fn open(store: Store, tailnet_domain: &str) -> Result<Self, RegistryError> {
        let fresh = addresses::random_ula_prefix(&mut rand::rngs::OsRng);
        let stored = store
            .setting_or_insert(ULA_PREFIX_SETTING, &fresh.to_string())
            .await?;
        let ula: Ipv6Net = stored
            .parse()
            .map_err(|_| RegistryError::BadUlaPrefix(stored.clone()))?;
        if ula.prefix_len() != 48 {
            return Err(RegistryError::BadUlaPrefix(stored));
        }
        Ok(Self {
            store,
            tailnet_domain: tailnet_domain.trim_end_matches('.').to_owned(),
            ula,
            allocation: Arc::default(),
        })
    }

    /// The tailnet's ULA /48, from which nodes' IPv6 addresses come.
    pub fn ula_prefix(&self) -> Ipv6Net {
        self.ula
    }

    /// The tailnet's DNS domain.
    pub fn tailnet_domain(&self) -> &str {
        &self.tailnet_domain
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A node's fully qualified name.
    pub fn fqdn(&self, name: &str) -> String {
        format!("{name}.{}", self.tailnet_domain)
    }

    /// Registers a machine. A known machine keeps its id, name and addresses and gets the
    /// new node key, expiry and approval; a new machine gets a name derived from its
    /// hostname and fresh addresses.
    pub async fn register(
        &self,
        registration: &Registration,
        now: UnixTime,
    ) -> Result<NodeRecord, RegistryError> {
        validate_tags(&registration.tags)?;
        if let Some(existing) = self
            .store
            .node_by_machine_key(&registration.machine_key)
            .await?
        {
            return Ok(self
                .store
                .rekey_node(
                    existing.id,
                    &registration.node_key,
                    registration.key_expiry,
                    registration.approved,
                )
                .await?);
        }
        let base = names::sanitise_hostname(&registration.hostname);
        let turn = self.allocation.lock().await;
        let mut last = String::new();
        for _ in 0..MAX_ALLOCATION_ATTEMPTS {
            let in_use = self.store.node_names_and_addresses().await?;
            let taken_names: HashSet<String> = in_use.iter().map(|(n, _, _)| n.clone()).collect();
            let taken_v4: HashSet<_> = in_use.iter().map(|(_, v4, _)| *v4).collect();
            let name = names::unique_name(&base, &taken_names);
            let ipv4 = addresses::allocate_ipv4(registration.machine_key.as_bytes(), &taken_v4)
                .ok_or_else(|| RegistryError::AllocationFailed {
                    attempts: 1,
                    last: "every address in 100.64.0.0/10 is in use".into(),
                })?;
            let node = NewNode {
                machine_key: registration.machine_key,
                node_key: registration.node_key,
                name,
                ipv4,
                ipv6: addresses::ipv6_for(self.ula, ipv4),
                user_id: registration.user_id,
                tags: registration.tags.clone(),
                created_at: now,
                key_expiry: registration.key_expiry,
                ephemeral: registration.ephemeral,
                approved: registration.approved,
                is_ingress: registration.is_ingress,
            };
            match self.store.insert_node(&node).await {
                Ok(record) => {
                    tracing::info!(node = %record.id, name = %record.name, ipv4 = %record.ipv4, "node registered");
                    return Ok(record);
                }
                Err(StoreError::Conflict { what }) if what.contains("machine_key") => {
                    // The same machine registered concurrently: treat as a re-registration.
                    drop(turn);
                    return Box::pin(self.register(registration, now)).await;
                }
                Err(StoreError::Conflict { what }) => {
                    tracing::debug!(%what, "lost an allocation race; retrying");
                    last = format!("{what} is already taken");
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(RegistryError::AllocationFailed {
            attempts: MAX_ALLOCATION_ATTEMPTS,
            last,
        })
    }

    /// Renames a node. The name must already be a DNS label (the error suggests one) and
    /// free; renaming a node to its current name succeeds.
    pub async fn rename(&self, id: NodeId, name: &str) -> Result<NodeRecord, RegistryError> {
        if !names::is_dns_label(name) {
            return Err(RegistryError::InvalidName {
                name: name.to_owned(),
                suggestion: names::sanitise_hostname(name),
            });
        }
        match self.store.set_node_name(id, name).await {
            Ok(record) => Ok(record),
            Err(StoreError::Conflict { .. }) => Err(RegistryError::NameTaken {
                name: name.to_owned(),
            }),
            Err(StoreError::NotFound { .. }) => Err(RegistryError::UnknownNode(id)),
            Err(other) => Err(other.into()),
        }
    }

    /// Replaces a node's tags (each `tag:NAME`); duplicates are dropped, order kept.
    pub async fn set_tags(&self, id: NodeId, tags: &[String]) -> Result<NodeRecord, RegistryError> {
        validate_tags(tags)?;
        let mut seen = HashSet::new();
        let tags: Vec<String> = tags
            .iter()
            .filter(|tag| seen.insert(*tag))
            .cloned()
            .collect();
        match self.store.set_node_tags(id, &tags).await {
            Err(StoreError::NotFound { .. }) => Err(RegistryError::UnknownNode(id)),
            other => Ok(other?),
        }
    }

    /// Deletes a node; its name and addresses become free.
    pub async fn delete(&self, id: NodeId) -> Result<(), RegistryError> {
        match self.store.delete_node(id).await {
            Err(StoreError::NotFound { .. }) => Err(RegistryError::UnknownNode(id)),
            other => Ok(other?),
        }
    }
}

/// Checks tags look like `tag:NAME` with NAME a DNS label.
fn validate_tags(tags: &[String]) -> Result<(), RegistryError> {
    for tag in tags {
        let valid = tag.strip_prefix("tag:").is_some_and(names::is_dns_label);
        if !valid {
            return Err(RegistryError::InvalidTag { tag: tag.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_must_be_tag_colon_label() {
        assert!(validate_tags(&["tag:web".into(), "tag:db-1".into()]).is_ok());
        let err = validate_tags(&["web".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"web\" is not a tag: tags look like \"tag:NAME\" with NAME of a-z, 0-9 and '-'"
        );
        assert!(validate_tags(&["tag:".into()]).is_err());
        assert!(validate_tags(&["tag:Web".into()]).is_err());
    }
}

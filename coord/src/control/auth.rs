//! Auth keys and registration: who may join, and the answer a registering node gets.

use std::time::Duration;

use postern_proto::control::{AuthKeySecret, RegisterAuth, RegisterRequest, RegisterResponse};
use postern_proto::netmap::{NodeAddresses, UserProfile};
use postern_proto::{MachinePublicKey, UnixTime, UserId};
use rand::RngCore;

use crate::registry::{Registration, Registry, RegistryError};
use crate::store::{AuthKeyHash, AuthKeyRecord, NewAuthKey, Store, StoreError};

/// Prefix of every auth key, so a leaked one is recognisable (secret scanners).
pub const AUTH_KEY_PREFIX: &str = "pstn-auth-";

/// Login of the user that owns nodes registered with an auth key made for no user.
pub const TAGGED_DEVICES_LOGIN: &str = "tagged-devices";

/// The answer given to interactive registrations until OIDC login lands.
pub const INTERACTIVE_UNAVAILABLE: &str =
    "interactive login not available yet; register with an auth key (`postern-coord keys create`)";

/// What kind of auth key to make.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthKeyOptions {
    /// May register many nodes.
    pub reusable: bool,
    /// Its nodes are removed when they go offline.
    pub ephemeral: bool,
    /// Tags its nodes get (`tag:ci`).
    pub tags: Vec<String>,
    /// How long it stays valid; `None` for ever.
    pub expiry: Option<Duration>,
    /// The user its nodes belong to; `None` for tagged devices.
    pub user: Option<UserId>,
    /// Its nodes are ingress nodes: they receive every open funnel's route and may open
    /// funnel streams to funnelling nodes.
    pub ingress: bool,
}

/// A freshly made auth key: the secret (show it once, never store it) and its record.
#[derive(Debug, Clone)]
pub struct CreatedAuthKey {
    /// The key to hand to the node. Only its hash is stored.
    pub secret: AuthKeySecret,
    /// The stored record.
    pub record: AuthKeyRecord,
}

/// Why a registration could not be processed (not a refusal: those are answers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry failed (a bad tag, no free address).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Makes an auth key with `options`, stores its hash and returns the secret.
pub async fn create_auth_key(
    store: &Store,
    options: &AuthKeyOptions,
    now: UnixTime,
) -> Result<CreatedAuthKey, StoreError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 24]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut_slice());
    let secret = AuthKeySecret::new(format!("{AUTH_KEY_PREFIX}{}", hex::encode(*bytes)));
    let expires_at = options.expiry.map(|ttl| {
        UnixTime(
            now.0
                .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        )
    });
    let record = store
        .insert_auth_key(&NewAuthKey {
            hash: AuthKeyHash::of(secret.expose()),
            user_id: options.user,
            reusable: options.reusable,
            ephemeral: options.ephemeral,
            tags: options.tags.clone(),
            created_at: now,
            expires_at,
            ingress: options.ingress,
        })
        .await?;
    Ok(CreatedAuthKey { secret, record })
}

/// Handles a registration from the machine `machine_key` (authenticated by the control
/// channel). Returns the answer for the node: authorized, waiting for approval, or
/// rejected with a reason. `config` decides key expiry and whether approval is needed
/// ([`crate::lifecycle::registration_terms`]).
pub async fn register(
    registry: &Registry,
    config: &super::ControlConfig,
    machine_key: MachinePublicKey,
    request: &RegisterRequest,
    now: UnixTime,
) -> Result<RegisterResponse, RegisterError> {
    let store = registry.store();
    let key = match &request.auth {
        RegisterAuth::AuthKey { key } => key,
        RegisterAuth::Interactive => return Ok(rejected(INTERACTIVE_UNAVAILABLE)),
        _ => {
            return Ok(rejected(
                "unsupported registration method; upgrade the coord",
            ));
        }
    };
    let record = match store
        .use_auth_key(&AuthKeyHash::of(key.expose()), now)
        .await?
    {
        Ok(record) => record,
        Err(rejection) => return Ok(rejected(&rejection.to_string())),
    };
    let user = match record.user_id {
        Some(id) => store.user(id).await?,
        None => None,
    };
    let user = match user {
        Some(user) => user,
        None => {
            store
                .upsert_user(TAGGED_DEVICES_LOGIN, "Tagged devices", &[], now)
                .await?
        }
    };
    let existing = store.node_by_machine_key(&machine_key).await?;
    let terms = crate::lifecycle::registration_terms(config, existing.as_ref(), &record.tags, now);
    let registration = Registration {
        machine_key,
        node_key: request.node_key,
        hostname: request.hostname.clone(),
        user_id: user.id,
        tags: record.tags.clone(),
        ephemeral: record.ephemeral || request.ephemeral,
        approved: terms.approved,
        is_ingress: record.ingress,
        key_expiry: terms.key_expiry,
    };
    let node = match registry.register(&registration, now).await {
        // A known machine registering again with an ingress key becomes an ingress.
        Ok(node) if record.ingress && !node.is_ingress => {
            store.set_node_flags(node.id, node.approved, true).await?
        }
        Ok(node) => node,
        Err(RegistryError::InvalidTag { tag }) => {
            return Ok(rejected(&format!(
                "the auth key carries an invalid tag {tag:?}"
            )));
        }
        Err(err) => return Err(err.into()),
    };
    if !node.approved {
        return Ok(RegisterResponse::NeedsApproval {
            node_id: node.id,
            name: node.name,
        });
    }
    Ok(RegisterResponse::Authorized {
        node_id: node.id,
        name: node.name,
        addresses: NodeAddresses {
            ipv4: node.ipv4,
            ipv6: node.ipv6,
        },
        user: UserProfile {
            id: user.id,
            login: user.login,
            display_name: user.display_name,
            groups: user.groups,
        },
        key_expiry: node.key_expiry,
    })
}

fn rejected(reason: &str) -> RegisterResponse {
    RegisterResponse::Rejected {
        reason: reason.to_owned(),
    }
}

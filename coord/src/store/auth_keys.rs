//! Auth keys: pre-made credentials that register nodes without a browser login.
//!
//! Only the SHA-256 hash of a key is stored, so a leaked database does not leak usable
//! keys. Keys are looked up by hash; the lookup's timing can only reveal bits of the hash,
//! which says nothing useful about the key (SHA-256 is preimage resistant), so no
//! constant-time comparison is needed here.

use postern_proto::{UnixTime, UserId};
use sha2::{Digest, Sha256};

use super::row::{RowRead, to_json};
use super::{AuthKeyRecord, NewAuthKey, Store, StoreError, db_id, on_pool};

const COLUMNS: &str =
    "id, user_id, reusable, ephemeral, tags, created_at, expires_at, used_count, ingress";

/// The SHA-256 hash of an auth key, as lowercase hex. Safe to log and store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthKeyHash(String);

impl AuthKeyHash {
    /// Hashes a key as presented by a node or printed to the admin.
    pub fn of(key: &str) -> Self {
        Self(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why an auth key was not accepted. Shown to the person registering the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthKeyRejection {
    /// No such key (mistyped, or deleted).
    #[error("auth key not recognised; check it was copied whole, or ask an admin for a new one")]
    Unknown,
    /// The key has expired.
    #[error("auth key expired; ask an admin for a new one")]
    Expired,
    /// A single-use key was used already.
    #[error("auth key was already used and is not reusable; ask an admin for a new one")]
    AlreadyUsed,
}

impl Store {
    /// Stores a new auth key and returns its record.
    pub async fn insert_auth_key(&self, key: &NewAuthKey) -> Result<AuthKeyRecord, StoreError> {
        let sql = format!(
            "INSERT INTO auth_keys (key_hash, user_id, reusable, ephemeral, tags, created_at, expires_at, ingress) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(key.hash.as_str())
                .bind(key.user_id.map(|id| db_id(id.0)))
                .bind(key.reusable)
                .bind(key.ephemeral)
                .bind(to_json(&key.tags))
                .bind(key.created_at.as_secs())
                .bind(key.expires_at.map(UnixTime::as_secs))
                .bind(key.ingress)
                .fetch_one(pool)
                .await?;
            auth_key_from_row(&row)
        })
    }

    /// Uses an auth key for one registration: atomically checks it exists, has not
    /// expired at `now` and is reusable or unused, and counts the use. The outer error is a
    /// database failure; the inner one says why the key was refused.
    pub async fn use_auth_key(
        &self,
        hash: &AuthKeyHash,
        now: UnixTime,
    ) -> Result<Result<AuthKeyRecord, AuthKeyRejection>, StoreError> {
        let sql = format!(
            "UPDATE auth_keys SET used_count = used_count + 1 \
             WHERE key_hash = $1 AND (expires_at IS NULL OR expires_at > $2) \
             AND (reusable OR used_count = 0) RETURNING {COLUMNS}"
        );
        let used = on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(hash.as_str())
                .bind(now.as_secs())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(auth_key_from_row).transpose()
        })?;
        if let Some(record) = used {
            return Ok(Ok(record));
        }
        // Refused: find out why, for the person at the node.
        let sql = format!("SELECT {COLUMNS} FROM auth_keys WHERE key_hash = $1");
        let existing = on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(hash.as_str())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(auth_key_from_row).transpose()
        })?;
        Ok(Err(match existing {
            None => AuthKeyRejection::Unknown,
            Some(key) if key.expires_at.is_some_and(|at| at <= now) => AuthKeyRejection::Expired,
            Some(_) => AuthKeyRejection::AlreadyUsed,
        }))
    }

    /// Every auth key, by id (hashes are not returned).
    pub async fn list_auth_keys(&self) -> Result<Vec<AuthKeyRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM auth_keys ORDER BY id");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(auth_key_from_row).collect()
        })
    }

    /// Deletes (revokes) an auth key.
    pub async fn delete_auth_key(&self, id: u64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM auth_keys WHERE id = $1")
                .bind(db_id(id))
                .execute(pool)
                .await?;
            if done.rows_affected() == 0 {
                Err(StoreError::NotFound {
                    what: format!("auth key {id}"),
                })
            } else {
                Ok(())
            }
        })
    }
}

fn auth_key_from_row(row: &impl RowRead) -> Result<AuthKeyRecord, StoreError> {
    const T: &str = "auth_keys";
    Ok(AuthKeyRecord {
        id: row.unsigned(T, "id")?,
        user_id: row
            .opt_int(T, "user_id")?
            .map(|id| {
                u64::try_from(id)
                    .map(UserId)
                    .map_err(|_| StoreError::Corrupt {
                        table: T,
                        column: "user_id",
                        detail: format!("{id} is negative"),
                    })
            })
            .transpose()?,
        reusable: row.flag(T, "reusable")?,
        ephemeral: row.flag(T, "ephemeral")?,
        tags: row.json(T, "tags")?,
        created_at: row.time(T, "created_at")?,
        expires_at: row.opt_time(T, "expires_at")?,
        used_count: row.unsigned(T, "used_count")?,
        ingress: row.flag(T, "ingress")?,
    })
}

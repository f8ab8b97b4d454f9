//! Tailnet-wide settings, such as the ULA prefix generated once per tailnet.

use super::row::RowRead;
use super::{Store, StoreError, on_pool};

impl Store {
    /// The setting `key`, if set.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?;
            row.as_ref()
                .map(|row| row.text("settings", "value"))
                .transpose()
        })
    }

    /// Sets `key` to `value` unless it is already set, and returns the value in force. Safe
    /// against concurrent replicas: exactly one first value wins.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(value)
            .execute(pool)
            .await?;
            Ok::<(), StoreError>(())
        })?;
        self.setting(key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("setting {key}"),
            })
    }
}

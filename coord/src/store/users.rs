//! Users: created or refreshed on each login from the IdP's claims.

use postern_proto::{UnixTime, UserId};

use super::row::{RowRead, to_json};
use super::{Store, StoreError, UserRecord, db_id, on_pool};

const COLUMNS: &str = "id, login, display_name, idp_groups, created_at";

impl Store {
    /// Creates the user `login`, or refreshes its display name and groups if it exists
    /// (the IdP is the source of truth). Returns the stored user.
    pub async fn upsert_user(
        &self,
        login: &str,
        display_name: &str,
        groups: &[String],
        now: UnixTime,
    ) -> Result<UserRecord, StoreError> {
        let sql = format!(
            "INSERT INTO users (login, display_name, idp_groups, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (login) DO UPDATE SET display_name = excluded.display_name, \
             idp_groups = excluded.idp_groups RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(login)
                .bind(display_name)
                .bind(to_json(groups))
                .bind(now.as_secs())
                .fetch_one(pool)
                .await?;
            user_from_row(&row)
        })
    }

    /// The user with this id.
    pub async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(id.0))
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(user_from_row).transpose()
        })
    }

    /// The user with this login.
    pub async fn user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE login = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(login).fetch_optional(pool).await?;
            row.as_ref().map(user_from_row).transpose()
        })
    }

    /// Every user, by id.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM users ORDER BY id");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(user_from_row).collect()
        })
    }
}

fn user_from_row(row: &impl RowRead) -> Result<UserRecord, StoreError> {
    const T: &str = "users";
    Ok(UserRecord {
        id: UserId(row.unsigned(T, "id")?),
        login: row.text(T, "login")?,
        display_name: row.text(T, "display_name")?,
        groups: row.json(T, "idp_groups")?,
        created_at: row.time(T, "created_at")?,
    })
}

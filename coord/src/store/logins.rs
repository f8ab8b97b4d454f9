//! OIDC logins: the IdP subject behind a user, and their last login.

use postern_proto::{UnixTime, UserId};

use super::row::RowRead;
use super::{Store, StoreError, db_id, on_pool};

/// The IdP identity last seen for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLogin {
    /// The issuer that vouched.
    pub issuer: String,
    /// The IdP's subject id.
    pub subject: String,
    /// When.
    pub at: UnixTime,
}

impl Store {
    /// Records that `user` just logged in as `subject` at `issuer`.
    pub async fn record_user_login(
        &self,
        user: UserId,
        issuer: &str,
        subject: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let sql =
            "UPDATE users SET idp_issuer = $1, idp_subject = $2, last_login_at = $3 WHERE id = $4";
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(issuer)
                .bind(subject)
                .bind(now.as_secs())
                .bind(db_id(user.0))
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// The last login of `user`, if they ever logged in through the IdP.
    pub async fn user_login(&self, user: UserId) -> Result<Option<UserLogin>, StoreError> {
        let sql = "SELECT idp_issuer, idp_subject, last_login_at FROM users \
                   WHERE id = $1 AND last_login_at IS NOT NULL";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(db_id(user.0))
                .fetch_optional(pool)
                .await?;
            row.as_ref()
                .map(|row| {
                    const T: &str = "users";
                    Ok(UserLogin {
                        issuer: row.text(T, "idp_issuer")?,
                        subject: row.text(T, "idp_subject")?,
                        at: row.time(T, "last_login_at")?,
                    })
                })
                .transpose()
        })
    }
}

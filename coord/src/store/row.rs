//! Reading typed values out of a row of either backend.
//!
//! Record decoders are written once against [`RowRead`], which both `SqliteRow` and
//! `PgRow` implement. Stored text that does not parse (a key, an address, JSON) becomes
//! [`StoreError::Corrupt`] naming the table and column, never a panic.

use std::str::FromStr;

use postern_proto::UnixTime;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::StoreError;

/// Typed column access shared by the two backends' rows.
pub(crate) trait RowRead {
    /// The table the row came from, for error messages.
    fn int(&self, table: &'static str, column: &'static str) -> Result<i64, StoreError>;
    fn opt_int(&self, table: &'static str, column: &'static str)
    -> Result<Option<i64>, StoreError>;
    fn text(&self, table: &'static str, column: &'static str) -> Result<String, StoreError>;
    fn opt_text(
        &self,
        table: &'static str,
        column: &'static str,
    ) -> Result<Option<String>, StoreError>;
    fn flag(&self, table: &'static str, column: &'static str) -> Result<bool, StoreError>;

    /// A non-negative integer as `u64`.
    fn unsigned(&self, table: &'static str, column: &'static str) -> Result<u64, StoreError> {
        let value = self.int(table, column)?;
        u64::try_from(value).map_err(|_| StoreError::Corrupt {
            table,
            column,
            detail: format!("{value} is negative"),
        })
    }

    /// A Unix timestamp.
    fn time(&self, table: &'static str, column: &'static str) -> Result<UnixTime, StoreError> {
        self.int(table, column).map(UnixTime::from_secs)
    }

    /// An optional Unix timestamp.
    fn opt_time(
        &self,
        table: &'static str,
        column: &'static str,
    ) -> Result<Option<UnixTime>, StoreError> {
        Ok(self.opt_int(table, column)?.map(UnixTime::from_secs))
    }

    /// Text parsed with `FromStr` (keys, addresses).
    fn parsed<T>(&self, table: &'static str, column: &'static str) -> Result<T, StoreError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let text = self.text(table, column)?;
        text.parse().map_err(|err: T::Err| StoreError::Corrupt {
            table,
            column,
            detail: err.to_string(),
        })
    }

    /// Text holding JSON.
    fn json<T: DeserializeOwned>(
        &self,
        table: &'static str,
        column: &'static str,
    ) -> Result<T, StoreError> {
        let text = self.text(table, column)?;
        serde_json::from_str(&text).map_err(|err| StoreError::Corrupt {
            table,
            column,
            detail: err.to_string(),
        })
    }
}

macro_rules! impl_row_read {
    ($row:ty) => {
        impl RowRead for $row {
            fn int(&self, table: &'static str, column: &'static str) -> Result<i64, StoreError> {
                self.try_get(column)
                    .map_err(|err| corrupt(table, column, err))
            }
            fn opt_int(
                &self,
                table: &'static str,
                column: &'static str,
            ) -> Result<Option<i64>, StoreError> {
                self.try_get(column)
                    .map_err(|err| corrupt(table, column, err))
            }
            fn text(
                &self,
                table: &'static str,
                column: &'static str,
            ) -> Result<String, StoreError> {
                self.try_get(column)
                    .map_err(|err| corrupt(table, column, err))
            }
            fn opt_text(
                &self,
                table: &'static str,
                column: &'static str,
            ) -> Result<Option<String>, StoreError> {
                self.try_get(column)
                    .map_err(|err| corrupt(table, column, err))
            }
            fn flag(&self, table: &'static str, column: &'static str) -> Result<bool, StoreError> {
                self.try_get(column)
                    .map_err(|err| corrupt(table, column, err))
            }
        }
    };
}

impl_row_read!(SqliteRow);
impl_row_read!(PgRow);

fn corrupt(table: &'static str, column: &'static str, err: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        table,
        column,
        detail: err.to_string(),
    }
}

/// JSON text for a list or value column.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Serializing strings, socket addresses and `serde_json::Value` cannot fail; fall back
    // to an empty list rather than panicking if that ever changes.
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

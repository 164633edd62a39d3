use thiserror::Error;

/// What a store operation can fail with. The hub maps `NotFound` to 404, `Conflict` to 409,
/// `Invalid` to 400, `Unavailable` to 503 and logs `Other`/`Migrate` without showing them.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule or the current state forbids the change.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input breaks a rule of the store (a name, a limit, a credential that does not match).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database cannot be reached now (it is down, restarting, refusing connections, or no
    /// connection came free within the pool's acquire timeout): worth trying again later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    /// Constraint violations become `Conflict` (unique), `NotFound` (a referenced row is gone) or
    /// `Invalid` (check); a database out of reach is `Unavailable` ([`is_unavailable`]);
    /// everything else is `Other`.
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            return StoreError::Unavailable(e);
        }
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(match db.constraint() {
                    Some(c) => format!("already exists ({c})"),
                    None => "already exists".to_owned(),
                })
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_check_violation() => {
                StoreError::Invalid(db.message().to_owned())
            }
            // PostgreSQL's character_not_in_repertoire and untranslatable_character: a NUL in
            // text or jsonb, which SQLite would store. The input is at fault, not the store.
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021" | "22P05")) =>
            {
                StoreError::Invalid(format!(
                    "a value the database cannot store: {}",
                    db.message()
                ))
            }
            _ => StoreError::Other(e),
        }
    }
}

impl StoreError {
    /// Whether the database was out of reach (see [`StoreError::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Whether `e` says the database is out of reach rather than that the statement is wrong: no
/// connection within the acquire timeout, a closed pool, a connection that broke (I/O, TLS, a
/// protocol stream cut short), and the server's own words for it: PostgreSQL's SQLSTATE class
/// 08 (connection exception), 57P01-57P03 (shutting down, crashed, not accepting connections
/// yet) and 53300 (too many connections); SQLite's "busy" and "locked" once its busy timeout is
/// spent.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        // A reply cut off by a server going away ("unexpected EOF", "connection closed").
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) if code.starts_with("08") => true,
            Some("57P01" | "57P02" | "57P03" | "53300") => true,
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            Some(code) => {
                db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && code.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
            }
            None => false,
        },
        _ => false,
    }
}

/// A value read from a column that does not parse (a JSON or enum text column).
pub(crate) fn corrupt(column: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(
        format!("column {column}: {detail}").into(),
    ))
}

/// Maps a unique violation to `Conflict(message)`, anything else as usual.
pub(crate) fn conflict_as(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(message()),
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_databases_are_told_from_wrong_statements() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(refused),
        ] {
            assert!(StoreError::from(e).is_unavailable());
        }
        assert!(matches!(
            StoreError::from(sqlx::Error::RowNotFound),
            StoreError::NotFound
        ));
        assert!(!StoreError::from(sqlx::Error::ColumnNotFound("x".into())).is_unavailable());
    }
}

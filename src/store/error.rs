use thiserror::Error;

/// What a store operation can fail with. The hub maps `NotFound` to 404, `Conflict` to 409,
/// `Invalid` to 400 and logs `Other`/`Migrate` without showing them.
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
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    /// Constraint violations become `Conflict` (unique), `NotFound` (a referenced row is gone) or
    /// `Invalid` (check); everything else is `Other`.
    fn from(e: sqlx::Error) -> Self {
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

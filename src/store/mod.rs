//! The hub's persistence: users, groups, servers, API tokens, OAuth clients and codes, browser
//! sessions and the audit log, in SQLite (`sqlite://…`, the default) or PostgreSQL
//! (`postgres://…`).
//!
//! All state lives in the database, so several hub processes on one PostgreSQL database serve the
//! same users: state changes that could race (a server's start and stop, an OAuth code's
//! exchange) are single conditional statements, never read-then-write in memory.
//!
//! Queries are runtime `sqlx::query_as` + `FromRow` (no database is needed at build time); every
//! method is written once, in SQL both engines accept (one exception: a user's group names
//! aggregated into a JSON array, `json_agg` or `json_group_array`), and compiled for each pool
//! by [`on_pool!`]. Migrations live in `migrations/sqlite` and `migrations/postgres` and run on
//! [`Store::connect`].
//!
//! Costs on request paths: a token or session check is one indexed lookup of a hash joined with
//! its user (a token seen in the last seconds costs none: `hub::auth::cache`, voided through
//! [`Store::auth_epoch`]); a user with their servers and groups is one statement
//! ([`Store::get_user_detail`]; none for the same user again within two seconds when nothing was
//! written through this store meanwhile: [`Store::get_recent_user_detail`], `GET /hub/api/user`'s
//! read), a page of users two sent at once whatever its size
//! ([`Store::list_users`]); nothing on a request path reads every user. PostgreSQL connections
//! are pinged when the pool takes them back (sqlx always does) and before they are handed out
//! only after a second idle, not before every statement.

mod audit;
mod auth;
mod error;
mod hub_ext;
mod jobs;
pub mod models;
mod oidc_ext;
mod recent;
mod servers;
#[cfg(test)]
mod sql_tests;
pub mod tokens;
mod users;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Connection as _;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use audit::{AuditQuery, NewAuditEvent, new_audit_key};
pub use auth::{
    NewOAuthClient, NewOAuthCode, NewSession, NewToken, PurgeCounts, SESSION_ADMIN_UNVERIFIED,
    oauth_client_id,
};
pub use error::{Result, StoreError, is_unavailable};
pub use hub_ext::{RunningPage, ServerChanges};
pub use jobs::{Job, JobPage, JobUpdate, NewJob, parse_phase};
pub use models::*;
pub use recent::{RECENT_TTL, Recent};
pub use servers::StartRequest;
pub use users::{GroupPage, UserPage, UserQuery, UserSort, UserStateFilter, UserSubset};

/// The database engine behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Pool size; by default 10 for PostgreSQL, 4 for an SQLite file and 1 for an in-memory
    /// SQLite database (each connection to `sqlite::memory:` would be a database of its own).
    pub max_connections: Option<u32>,
    /// How long a statement waits for a connection (a free one, or a new one while the database
    /// refuses them) before it fails with [`StoreError::Unavailable`]; by default
    /// [`DEFAULT_ACQUIRE_TIMEOUT`]. Bounds how long a request hangs while the database is away.
    pub acquire_timeout: Option<Duration>,
}

/// How long [`Store::connect`] waits for a database that refuses connections (still starting).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(30);

/// The default of [`StoreOptions::acquire_timeout`].
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The hub's store: a pool on SQLite or PostgreSQL. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Bumped by every write through this store that can end or narrow a token's identity
    /// (see [`Store::auth_epoch`]); shared by the clones.
    auth_epoch: Arc<AtomicU64>,
    /// Moved by every write to users, servers, groups or memberships through this store (see
    /// [`Store::users_epoch`]); shared by the clones.
    users_epoch: Arc<AtomicU64>,
    /// Users' details read a moment ago ([`Store::get_recent_user_detail`]); shared by the clones.
    recent: Arc<recent::Recent<Arc<UserDetail>>>,
}

/// Runs `$body` with `$p` bound to the store's pool, compiled once per engine. `$body` may use
/// `?` and `.await`.
macro_rules! on_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($p) => $body,
            $crate::store::Pool::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Starts a transaction that will write. On SQLite it takes the write lock up front
/// (`BEGIN IMMEDIATE`), so that a transaction which reads first does not fail with "database is
/// locked" when another connection wrote in between.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>>;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.begin_with("BEGIN IMMEDIATE").await?)
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.begin().await?)
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://…` or
    /// `postgresql://…`) and runs the pending migrations. An SQLite file is created if missing.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, &StoreOptions::default()).await
    }

    /// [`Store::connect`] with explicit options.
    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Store> {
        let acquire_timeout = options.acquire_timeout.unwrap_or(DEFAULT_ACQUIRE_TIMEOUT);
        let pool = if url.starts_with("sqlite:") {
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let mut connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                // A page of users is 200+ rows: the default (50) makes the worker thread hand
                // them over in many small batches (bench/README.md, "Hub").
                .row_buffer_size(256);
            if !in_memory {
                connect = connect
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal);
            }
            let mut pool = SqlitePoolOptions::new()
                .max_connections(
                    options
                        .max_connections
                        .unwrap_or(if in_memory { 1 } else { 4 }),
                )
                .acquire_timeout(acquire_timeout)
                // A connection to a file cannot go away: no ping before each statement (a round
                // trip to the connection's worker thread).
                .test_before_acquire(false);
            if in_memory {
                // The database lives as long as its one connection: never let it go.
                pool = pool
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            }
            Pool::Sqlite(pool.connect_with(connect).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Lazily: the first connection is made by the migrations below, which wait for a
            // database that is still starting up longer than one acquire timeout.
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(options.max_connections.unwrap_or(10))
                    .acquire_timeout(acquire_timeout)
                    // sqlx pings every connection it hands out (a round trip before each
                    // statement) and again when it takes it back. The second ping is enough
                    // for a connection in use; one idle for a while (the database may have
                    // restarted meanwhile) is pinged before it is handed out.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IDLE_AFTER {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_lazy(url)?,
            )
        } else {
            return Err(StoreError::Invalid(
                "database URL must start with sqlite:, postgres:// or postgresql://".to_owned(),
            ));
        };
        let store = Store {
            pool,
            auth_epoch: Arc::default(),
            users_epoch: Arc::default(),
            recent: Arc::default(),
        };
        let deadline = tokio::time::Instant::now() + FIRST_CONNECT_WAIT.max(acquire_timeout);
        loop {
            match store.migrate().await {
                Err(StoreError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for the database");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)))
                    if is_unavailable(&e) && tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!(error = %e, "waiting for the database");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => break other.map(|()| store),
            }
        }
    }

    /// A counter that moves whenever this store deleted a token (directly, or with its user,
    /// session, OAuth client or server), changed a user's name or admin flag, or changed group
    /// memberships: what a cache of resolved tokens must drop. Writes made by other processes
    /// sharing the database do not move it.
    pub fn auth_epoch(&self) -> u64 {
        self.auth_epoch.load(Ordering::Acquire)
    }

    /// Moves [`Store::auth_epoch`].
    pub(crate) fn auth_changed(&self) {
        self.auth_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Runs the migrations not yet applied; a no-op when all are. Safe to run from several
    /// processes at once (sqlx takes a lock).
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => SQLITE_MIGRATOR.run(p).await?,
            Pool::Postgres(p) => POSTGRES_MIGRATOR.run(p).await?,
        }
        Ok(())
    }

    /// Which engine this store runs on.
    pub fn engine(&self) -> Engine {
        match &self.pool {
            Pool::Sqlite(_) => Engine::Sqlite,
            Pool::Postgres(_) => Engine::Postgres,
        }
    }

    /// Moves `table.last_activity` of row `id` forward to `at`; an older `at` changes nothing.
    /// Returns whether it moved. `table` is one of the store's own table names.
    async fn touch_last_activity(
        &self,
        table: &'static str,
        id: i64,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let _changed = matches!(table, "users" | "servers").then(|| self.users_changing());
        let sql = format!(
            "UPDATE {table} SET last_activity = $2 \
             WHERE id = $1 AND (last_activity IS NULL OR last_activity < $2)"
        );
        let moved = on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(ts(at))
            .execute(p)
            .await?
            .rows_affected());
        Ok(moved > 0)
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// The current time, at the microsecond precision both engines store.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `t` at the precision both engines store, so a value reads back as it was written.
pub(crate) fn ts(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// `value` as the text of a JSON column.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(format!("not JSON: {e}")))
}

/// A JSON column's text as a value.
pub(crate) fn from_json<T: DeserializeOwned>(column: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| error::corrupt(column, e))
}

/// Checks that `value` is a JSON object (the object-valued columns).
pub(crate) fn object_json(what: &str, value: &serde_json::Value) -> Result<String> {
    if !value.is_object() {
        return Err(StoreError::Invalid(format!("{what} must be a JSON object")));
    }
    to_json(value)
}

/// `$first, $first+1, …` for `n` bind parameters (an `IN (…)` list). `n` must not be 0.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    debug_assert!(n > 0, "an empty IN list is not SQL");
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A PostgreSQL connection idle this long is pinged before it is handed out (one in use is
/// pinged each time the pool takes it back).
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Largest page a list method returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// `limit` as a bind value, if it is 1 to [`MAX_PAGE_LIMIT`].
pub(crate) fn check_limit(limit: u32) -> Result<i64> {
    if limit == 0 || limit > MAX_PAGE_LIMIT {
        return Err(StoreError::Invalid(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT}"
        )));
    }
    Ok(i64::from(limit))
}

/// `'a', 'b'` for an `IN` list of server states (fixed strings, no user input).
pub(crate) fn state_list(states: &[models::ServerState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Ok` if a statement that deletes by key deleted a row, else `NotFound`.
pub(crate) fn found(rows_affected: u64) -> Result<()> {
    if rows_affected == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Longest user, server or group name the store accepts.
pub use crate::policy::names::MAX_NAME_LEN;

/// The normalised form of a user or server name, which must be unique (per user, for servers):
/// the name lowercased. Only ASCII names are accepted (Unicode normalisation would need NFKC),
/// without control characters, whitespace or `/`.
///
/// The hub's own name rules (`policy::names`) are stricter; these are the ones the store
/// enforces on every write, so that no two names can ever map to the same Kubernetes object
/// name through case folding (the class of KubeSpawner's CVE-2020-15110).
pub fn normalize_name(what: &str, name: &str) -> Result<String> {
    crate::policy::names::normalize_name(what, name).map_err(StoreError::Invalid)
}

/// A fresh in-memory store holding `user`, a member of `group` (the unit tests' world).
#[cfg(test)]
pub(crate) async fn memory_with_member(user: &str, group: &str) -> (Store, User) {
    let store = Store::connect("sqlite::memory:").await.expect("store");
    let member = store.create_user(user, false).await.expect("user");
    store
        .create_group(group, &serde_json::json!({}))
        .await
        .expect("group");
    store
        .add_group_members(group, &[user.to_owned()])
        .await
        .expect("member");
    (store, member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_ascii_case_and_refuse_the_rest() {
        assert_eq!(normalize_name("user", "Alice").unwrap(), "alice");
        assert_eq!(normalize_name("server", "").unwrap(), "");
        for bad in ["al ice", "al/ice", "ålice", "ａlice", "a\u{0}b"] {
            assert!(matches!(
                normalize_name("user", bad),
                Err(StoreError::Invalid(_))
            ));
        }
        assert!(normalize_name("user", &"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn placeholders_number_from_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
    }
}

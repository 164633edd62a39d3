//! A cache of resolved API tokens: the caller (user or service, effective scopes) a token's hash
//! stands for, so that a request with a recently seen token reads nothing from the database to
//! authenticate (`GET /hub/api/user` from jupyterhub-singleuser on every request it serves, the
//! culler's pages).
//!
//! When an entry stops being used:
//! - at once, on this hub, after any write through its store that can end or narrow a token
//!   (a token, session, OAuth client, server or user deleted; a user renamed or made or unmade
//!   admin; group memberships changed): [`Store::auth_epoch`](crate::store::Store::auth_epoch)
//!   moves and every entry filled before is ignored;
//! - at the token's expiry;
//! - [`TOKEN_CACHE_TTL`] after it was read from the database, whatever happened: the bound for
//!   a change made by another hub sharing the PostgreSQL database (a token revoked there stops
//!   working here within that time), or by hand in the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Caller;

/// How long a resolved token is trusted without reading the database again: the longest a
/// change made by another process (a second hub on the same database) takes to apply here, the
/// same bound as for the users' details `GET /hub/api/user` answers with (`store::recent`).
pub const TOKEN_CACHE_TTL: Duration = crate::store::RECENT_TTL;

/// Entries kept at most; the cache is emptied when full (it refills from the tokens in use).
const MAX_ENTRIES: usize = 10_000;

/// Resolved tokens by token hash.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

struct Entry {
    caller: Caller,
    expires_at: Option<DateTime<Utc>>,
    last_activity: Option<DateTime<Utc>>,
    epoch: u64,
    read_at: Instant,
}

/// A cache hit: the caller and the token's last recorded use.
pub struct Hit {
    pub caller: Caller,
    pub last_activity: Option<DateTime<Utc>>,
}

impl TokenCache {
    /// The caller of the token with hash `hash`, if it was resolved under the store's current
    /// `epoch`, less than [`TOKEN_CACHE_TTL`] ago, and has not expired at `now`.
    pub fn get(&self, hash: &str, epoch: u64, now: DateTime<Utc>) -> Option<Hit> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(hash)?;
        let fresh = entry.epoch == epoch
            && entry.read_at.elapsed() < TOKEN_CACHE_TTL
            && entry.expires_at.is_none_or(|at| at > now);
        fresh.then(|| Hit {
            caller: entry.caller.clone(),
            last_activity: entry.last_activity,
        })
    }

    /// Keeps what token `hash` resolved to, read from the database under `epoch` (the store's
    /// epoch taken *before* the read, so that a change committed meanwhile voids it).
    pub fn put(
        &self,
        hash: String,
        caller: Caller,
        expires_at: Option<DateTime<Utc>>,
        last_activity: Option<DateTime<Utc>>,
        epoch: u64,
        read_at: Instant,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&hash) {
            entries.clear();
        }
        entries.insert(
            hash,
            Entry {
                caller,
                expires_at,
                last_activity,
                epoch,
                read_at,
            },
        );
    }

    /// Records that the token's last use was written at `at`.
    pub fn note_activity(&self, hash: &str, at: DateTime<Utc>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(hash) {
            entry.last_activity = Some(at);
        }
    }
}

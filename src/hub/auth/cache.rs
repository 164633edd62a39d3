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

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Caller;
use crate::store::Recent;

/// How long a resolved token is trusted without reading the database again: the longest a
/// change made by another process (a second hub on the same database) takes to apply here, the
/// same bound as for the users' details `GET /hub/api/user` answers with (`store::recent`).
pub const TOKEN_CACHE_TTL: Duration = crate::store::RECENT_TTL;

/// Resolved tokens by token hash, kept as the store keeps recent reads ([`Recent`]).
#[derive(Default, Debug)]
pub struct TokenCache {
    entries: Recent<Hit>,
}

/// A cache hit: the caller, the token's expiry and its last recorded use.
#[derive(Clone)]
pub struct Hit {
    pub caller: Caller,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_activity: Option<DateTime<Utc>>,
}

impl TokenCache {
    /// The caller of the token with hash `hash`, if it was resolved under the store's current
    /// `epoch`, less than [`TOKEN_CACHE_TTL`] ago, and has not expired at `now`.
    pub fn get(&self, hash: &str, epoch: u64, now: DateTime<Utc>) -> Option<Hit> {
        self.entries
            .get_if(hash, epoch, |hit| hit.expires_at.is_none_or(|at| at > now))
    }

    /// Keeps what token `hash` resolved to, read from the database at `read_at` under `epoch`
    /// (the store's epoch taken *before* the read, so that a change committed meanwhile voids
    /// it).
    pub fn put(&self, hash: &str, hit: Hit, epoch: u64, read_at: Instant) {
        self.entries.put(hash, hit, epoch, read_at);
    }

    /// Records that the token's last use was written at `at`.
    pub fn note_activity(&self, hash: &str, at: DateTime<Utc>) {
        self.entries
            .update(hash, |hit| hit.last_activity = Some(at));
    }
}

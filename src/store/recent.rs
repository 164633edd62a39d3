//! Users' details as read a moment ago: what `GET /hub/api/user` answers with, without a
//! statement when the same user asked in the last [`RECENT_TTL`] and nothing was written since.
//!
//! JupyterHub answers that request from the objects it keeps in memory; Atelier reads the
//! database, so that several hubs on one PostgreSQL agree. This keeps the answer of a read for
//! a moment, with the token cache's rule (`hub::auth::cache`):
//!
//! - any write through this store to a user, a server, a group or a membership voids every
//!   entry ([`Store::users_epoch`]), so this hub never answers with what it changed since;
//! - an entry is used at most [`RECENT_TTL`] after it was read, whatever happened: the bound
//!   for a change made by another hub sharing the database, or by hand in the database.
//!
//! Only [`Store::get_recent_user_detail`] reads through it; every other read goes to the
//! database.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Result, Store, UserDetail};

/// How long a read is trusted without reading the database again: the longest a change made by
/// another process (a second hub on the same database) takes to show here.
pub const RECENT_TTL: Duration = Duration::from_secs(2);

/// Entries kept at most; the map is emptied when full (it refills from the users asking).
const MAX_ENTRIES: usize = 10_000;

/// Details by user name, each with the epoch it was read under.
#[derive(Default)]
pub(crate) struct RecentDetails {
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for RecentDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentDetails").finish_non_exhaustive()
    }
}

struct Entry {
    detail: Arc<UserDetail>,
    epoch: u64,
    read_at: Instant,
}

impl RecentDetails {
    fn get(&self, name: &str, epoch: u64) -> Option<Arc<UserDetail>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(name)?;
        (entry.epoch == epoch && entry.read_at.elapsed() < RECENT_TTL).then(|| entry.detail.clone())
    }

    fn put(&self, name: &str, detail: Arc<UserDetail>, epoch: u64, read_at: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(name) {
            entries.clear();
        }
        entries.insert(
            name.to_owned(),
            Entry {
                detail,
                epoch,
                read_at,
            },
        );
    }
}

/// Moves [`Store::users_epoch`] when dropped: held by each write to users, servers, groups or
/// memberships from its start, it moves the epoch after the write has committed, or failed, or
/// was abandoned halfway (a request future dropped when its client went away).
#[must_use]
pub(crate) struct UsersChanging<'a>(&'a Store);

impl Drop for UsersChanging<'_> {
    fn drop(&mut self) {
        self.0.users_epoch.fetch_add(1, Ordering::AcqRel);
    }
}

impl Store {
    /// A counter that moves after every write through this store to a user, a server, a group
    /// or a group's members. Writes by other processes sharing the database do not move it.
    pub fn users_epoch(&self) -> u64 {
        self.users_epoch.load(Ordering::Acquire)
    }

    /// Held by a write to users, servers, groups or memberships (see [`UsersChanging`]).
    pub(crate) fn users_changing(&self) -> UsersChanging<'_> {
        UsersChanging(self)
    }

    /// [`Store::get_user_detail`] (active servers only) as read at most [`RECENT_TTL`] ago and
    /// not written through this store since; read from the database otherwise.
    pub async fn get_recent_user_detail(&self, name: &str) -> Result<Arc<UserDetail>> {
        // Taken before the read: a write committed after it voids what is read.
        let epoch = self.users_epoch();
        if let Some(detail) = self.recent.get(name, epoch) {
            return Ok(detail);
        }
        let read_at = Instant::now();
        let detail = Arc::new(self.get_user_detail(name, false).await?);
        self.recent.put(name, detail.clone(), epoch, read_at);
        Ok(detail)
    }
}

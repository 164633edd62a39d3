//! Users' details as read a moment ago: what `GET /hub/api/user` answers with, without a
//! statement when the same user asked in the last [`RECENT_TTL`] and nothing was written since.
//!
//! JupyterHub answers that request from the objects it keeps in memory; Atelier reads the
//! database, so that several hubs on one PostgreSQL agree. This keeps the answer of a read for
//! a moment, in a [`Recent`] (the token cache, `hub::auth::cache`, keeps resolved tokens in one):
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

/// Entries a [`Recent`] keeps at most; it is emptied when full (it refills from what is asked).
const MAX_ENTRIES: usize = 10_000;

/// What was read from the database a moment ago, by key, each entry with the store epoch it
/// was read under and when: an entry serves while that epoch holds and for less than
/// [`RECENT_TTL`]. The users' details here and the hub's resolved tokens
/// (`hub::auth::cache::TokenCache`) are both kept in one.
pub struct Recent<V> {
    entries: Mutex<HashMap<String, Entry<V>>>,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            entries: Mutex::default(),
        }
    }
}

impl<V> std::fmt::Debug for Recent<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent").finish_non_exhaustive()
    }
}

struct Entry<V> {
    value: V,
    epoch: u64,
    read_at: Instant,
}

impl<V: Clone> Recent<V> {
    /// The value kept for `key`, if it was read under `epoch` less than [`RECENT_TTL`] ago and
    /// `usable` accepts it (a token's expiry, say).
    pub fn get_if(&self, key: &str, epoch: u64, usable: impl FnOnce(&V) -> bool) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(key)?;
        (entry.epoch == epoch && entry.read_at.elapsed() < RECENT_TTL && usable(&entry.value))
            .then(|| entry.value.clone())
    }

    /// [`Recent::get_if`] with nothing more to check.
    pub fn get(&self, key: &str, epoch: u64) -> Option<V> {
        self.get_if(key, epoch, |_| true)
    }

    /// Keeps `value`, read from the database at `read_at` under `epoch`: the store's epoch
    /// taken *before* the read, so that a write committed meanwhile voids it.
    pub fn put(&self, key: &str, value: V, epoch: u64, read_at: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
            entries.clear();
        }
        entries.insert(
            key.to_owned(),
            Entry {
                value,
                epoch,
                read_at,
            },
        );
    }

    /// Changes the value kept for `key`, if any, in place: what this process itself just
    /// wrote, keeping its epoch and read time.
    pub fn update(&self, key: &str, change: impl FnOnce(&mut V)) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(key) {
            change(&mut entry.value);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_serves_under_its_epoch_within_the_bound_only() {
        let recent = Recent::<u32>::default();
        let now = Instant::now();
        recent.put("a", 1, 7, now);
        assert_eq!(recent.get("a", 7), Some(1));
        assert_eq!(recent.get("a", 8), None, "a write since voids it");
        assert_eq!(recent.get("b", 7), None);
        assert_eq!(
            recent.get_if("a", 7, |v| *v > 1),
            None,
            "refused by the check"
        );
        assert_eq!(recent.get_if("a", 7, |v| *v == 1), Some(1));

        let old = now
            .checked_sub(RECENT_TTL)
            .expect("monotonic clock past the bound");
        recent.put("old", 2, 7, old);
        assert_eq!(recent.get("old", 7), None, "read too long ago");
    }

    #[test]
    fn update_changes_a_kept_value_in_place_and_adds_none() {
        let recent = Recent::<u32>::default();
        recent.put("a", 1, 0, Instant::now());
        recent.update("a", |v| *v = 5);
        recent.update("b", |v| *v = 5);
        assert_eq!(recent.get("a", 0), Some(5));
        assert_eq!(recent.get("b", 0), None);
    }

    #[test]
    fn a_full_cache_is_emptied_before_a_new_key() {
        let recent = Recent::<usize>::default();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES {
            recent.put(&i.to_string(), i, 0, now);
        }
        recent.put("0", 42, 0, now);
        assert_eq!(
            recent.get("1", 0),
            Some(1),
            "replacing a key keeps the rest"
        );
        recent.put("new", 1, 0, now);
        assert_eq!(recent.get("1", 0), None);
        assert_eq!(recent.get("new", 0), Some(1));
    }
}

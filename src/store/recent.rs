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

#[cfg(test)]
mod tests {
    /// The store's sources, which the check below reads.
    const SOURCES: &[(&str, &str)] = &[
        ("audit.rs", include_str!("audit.rs")),
        ("auth.rs", include_str!("auth.rs")),
        ("hub_ext.rs", include_str!("hub_ext.rs")),
        ("jobs.rs", include_str!("jobs.rs")),
        ("mod.rs", include_str!("mod.rs")),
        ("oidc_ext.rs", include_str!("oidc_ext.rs")),
        ("servers.rs", include_str!("servers.rs")),
        ("users.rs", include_str!("users.rs")),
    ];

    /// The tables a user's detail is read from.
    const TABLES: &[&str] = &["users", "servers", "groups", "user_groups"];

    /// Every function of the store that writes a table a user's detail is read from holds
    /// `users_changing()`: one that did not would leave this hub answering `GET /user` with what
    /// it had before the write, for up to `RECENT_TTL`.
    #[test]
    fn every_write_to_a_users_table_moves_the_epoch() {
        let mut checked = 0;
        let mut missing = Vec::new();
        for (file, text) in SOURCES {
            // The store's files hold their tests elsewhere; a function ends where the next
            // one starts.
            let mut functions: Vec<(String, String)> = Vec::new();
            for line in text.lines() {
                let head = line.trim_start();
                let is_fn = ["pub async fn ", "async fn ", "pub(crate) async fn "]
                    .iter()
                    .any(|p| head.starts_with(p));
                if is_fn {
                    functions.push((head.to_owned(), String::new()));
                } else if let Some((_, body)) = functions.last_mut() {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            for (head, body) in functions {
                let writes = TABLES.iter().any(|t| {
                    [
                        format!("INSERT INTO {t} "),
                        format!("UPDATE {t} "),
                        format!("DELETE FROM {t} "),
                    ]
                    .iter()
                    .any(|w| body.contains(w.as_str()))
                }) || body.contains("UPDATE {table} ");
                if !writes {
                    continue;
                }
                checked += 1;
                if !body.contains("self.users_changing()") {
                    missing.push(format!("{file}: {head}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "writes without users_changing():\n{}",
            missing.join("\n")
        );
        // The check found the writes it is about (create_user, begin_start, …).
        assert!(checked >= 20, "only {checked} writes found");
    }
}

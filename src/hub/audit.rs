//! Writing the audit log, through database outages: every audit event of the hub goes through
//! [`AuditLog::record`].
//!
//! An event is stamped when the action happens (its time, and a random key, see
//! [`store::new_audit_key`]) and inserted at once. When the database is out of reach
//! ([`StoreError::Unavailable`]) the action may still have happened (a server the backend
//! stopped, a token revoked just before the database went), so the event goes to a spool
//! instead: a bounded queue, mirrored in an append-only JSON-lines file in the hub's state
//! directory ([`spool_path`], each line flushed to disk with `fsync` before `record` returns),
//! that a task writes to the database in order, backing off while it is away. While the spool
//! holds events, new ones queue behind them, so the log keeps the order of the actions. A hub
//! stopped during an outage finds the file at its next start and writes it ([`AuditLog::open`],
//! which also takes over the files of other hub processes gone from a shared state directory);
//! the file is emptied once the spool is.
//!
//! The insert is idempotent (`ON CONFLICT (event_key) DO NOTHING`): an event whose insert was
//! committed but whose answer was lost is spooled and written again without a second row, and so
//! is an event replayed from the file after a crash between its insert and the file's truncation.
//!
//! Other errors (an event the store refuses) are logged, not spooled. A full spool
//! ([`SpoolOptions`]) drops the new event with an error naming it. Events never hold credentials
//! (what the call sites put in `detail`); the file holds what the table holds, and is made
//! readable by the hub's user only.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{self, AuditAction, NewAuditEvent, Store, StoreError};

/// Hub processes that may share a state directory, each with a spool file of its own.
pub const MAX_SPOOLS: usize = 16;

/// The spool file of slot `n` in the hub's state directory (`--state-dir`).
pub fn spool_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("audit-spool-{n}.jsonl"))
}

/// The events of the spool file `path` (none if it is missing), skipping unreadable lines.
fn read_spool(path: &Path) -> std::io::Result<Vec<StampedEvent>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut events = Vec::new();
    for (n, text) in BufReader::new(file).lines().enumerate() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        match Line::parse(&text) {
            Ok(event) => events.push(event),
            Err(e) => tracing::error!(
                path = %path.display(), line = n + 1, error = %e,
                "audit spool: an unreadable line (cut short by a crash?) is skipped"
            ),
        }
    }
    Ok(events)
}

/// A file holding this many lines more than twice the events still queued is rewritten.
const COMPACT_SLACK: usize = 1024;

/// An event, stamped when its action happened.
#[derive(Debug, Clone, PartialEq)]
pub struct StampedEvent {
    /// Unique among all events: a second insert of the same event is a no-op.
    pub key: String,
    /// When the action happened (not when the row was written).
    pub occurred_at: DateTime<Utc>,
    pub event: NewAuditEvent,
}

impl StampedEvent {
    /// `event`, happening now.
    pub fn now(event: NewAuditEvent) -> StampedEvent {
        StampedEvent {
            key: store::new_audit_key(),
            occurred_at: store::now(),
            event,
        }
    }
}

/// A line of the spool's file.
#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    occurred_at: DateTime<Utc>,
    action: String,
    actor: Option<String>,
    target_user: Option<String>,
    target_server: Option<String>,
    detail: Value,
}

impl Line {
    fn of(e: &StampedEvent) -> String {
        let line = Line {
            key: e.key.clone(),
            occurred_at: e.occurred_at,
            action: e.event.action.as_str().to_owned(),
            actor: e.event.actor.clone(),
            target_user: e.event.target_user.clone(),
            target_server: e.event.target_server.clone(),
            detail: e.event.detail.clone(),
        };
        let mut text = serde_json::to_string(&line).expect("an audit event is JSON");
        text.push('\n');
        text
    }

    fn parse(text: &str) -> Result<StampedEvent, String> {
        let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let action = AuditAction::parse(&line.action)
            .ok_or_else(|| format!("unknown action {:?}", line.action))?;
        Ok(StampedEvent {
            key: line.key,
            occurred_at: line.occurred_at,
            event: NewAuditEvent {
                action,
                actor: line.actor,
                target_user: line.target_user,
                target_server: line.target_server,
                detail: line.detail,
            },
        })
    }
}

/// Where events are written: the store, or a test's stand-in.
pub trait AuditSink: Send + Sync + 'static {
    /// Inserts `event` unless one with its key is there; returns whether it inserted it.
    fn insert(&self, event: &StampedEvent)
    -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl AuditSink for Store {
    async fn insert(&self, e: &StampedEvent) -> Result<bool, StoreError> {
        let stored = self
            .insert_audit_once(&e.key, e.occurred_at, &e.event)
            .await?;
        Ok(stored.is_some())
    }
}

/// The spool's bounds and pace.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Events it holds at most; past it new events are dropped (with an error).
    pub max_events: usize,
    /// Bytes of events (as JSON lines) it holds at most.
    pub max_bytes: u64,
    /// The first wait before writing again to a database out of reach; it doubles up to
    /// `retry_max`.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// Attempts at an event the database refuses for another reason than an outage before it is
    /// dropped (with an error).
    pub other_error_tries: u32,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_events: 100_000,
            max_bytes: 64 << 20,
            retry_first: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            other_error_tries: 5,
        }
    }
}

/// The audit log's writer (cheap to clone: one spool behind).
pub struct AuditLog<S: AuditSink = Store> {
    inner: Arc<Inner<S>>,
}

impl<S: AuditSink> Clone for AuditLog<S> {
    fn clone(&self) -> Self {
        AuditLog {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    sink: S,
    options: SpoolOptions,
    state: Mutex<Spool>,
}

#[derive(Default)]
struct Spool {
    queue: VecDeque<(StampedEvent, u64)>,
    /// Bytes of the queued events' lines.
    bytes: u64,
    file: Option<SpoolFile>,
    /// Whether a task is writing the queue to the database.
    draining: bool,
    /// The lock of the file's slot, held while the process runs.
    lock: Option<File>,
    dropped: u64,
}

struct SpoolFile {
    path: PathBuf,
    file: File,
    /// Lines in the file: the queued events and those written since the last truncation.
    lines: usize,
}

impl<S: AuditSink> AuditLog<S> {
    /// A log writing to `sink`, whose spool is in memory only (lost with the process).
    pub fn new(sink: S) -> AuditLog<S> {
        AuditLog::with_options(sink, SpoolOptions::default())
    }

    /// [`AuditLog::new`] with `options`.
    pub fn with_options(sink: S, options: SpoolOptions) -> AuditLog<S> {
        AuditLog {
            inner: Arc::new(Inner {
                sink,
                options,
                state: Mutex::new(Spool::default()),
            }),
        }
    }

    /// A log writing to `sink` whose spool is kept in a file of `dir` (the hub's state
    /// directory; created if missing): `audit-spool-<n>.jsonl`, `n` the first slot no running
    /// process holds (several hub processes may share a state directory; each holds the lock
    /// `audit-spool-<n>.lock` of its slot while it runs). Events left in that file, and in the
    /// files of other slots no process holds (hubs gone), are queued by time and written to the
    /// database from now on (a line cut short by a crash is skipped); the file is rewritten
    /// with them, the others removed. Files are readable by this user only.
    pub fn open(sink: S, dir: &Path, options: SpoolOptions) -> std::io::Result<AuditLog<S>> {
        std::fs::create_dir_all(dir)?;
        let mut mine = None;
        let mut orphans = Vec::new();
        for n in 0..MAX_SPOOLS {
            let has_events = spool_path(dir, n).exists();
            if mine.is_some() && !has_events {
                continue;
            }
            let lock = create_private(&dir.join(format!("audit-spool-{n}.lock")), true)?;
            match lock.try_lock() {
                Ok(()) if mine.is_none() => mine = Some((n, lock)),
                Ok(()) => orphans.push((n, lock)),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        let Some((slot, lock)) = mine else {
            return Err(std::io::Error::other(format!(
                "all {MAX_SPOOLS} audit spool slots of {} are held by running processes",
                dir.display()
            )));
        };
        let path = spool_path(dir, slot);
        let mut events = read_spool(&path)?;
        for (n, _) in &orphans {
            events.extend(read_spool(&spool_path(dir, *n))?);
        }
        events.sort_by_key(|e| e.occurred_at);
        let log = AuditLog::with_options(sink, options);
        let mut replayed = 0usize;
        {
            let mut spool = log.lock();
            for event in events {
                if log.admit(&mut spool, event, "replaying the spool files") {
                    replayed += 1;
                }
            }
            // Rewritten with the events read: a line cut short is gone, the next one starts
            // on its own line.
            spool.file = Some(SpoolFile::rewrite(&path, &spool.queue)?);
            spool.lock = Some(lock);
        }
        for (n, _lock) in orphans {
            let orphan = spool_path(dir, n);
            if let Err(e) = std::fs::remove_file(&orphan) {
                tracing::error!(path = %orphan.display(), error = %e, "audit spool: cannot remove a replayed file");
            }
        }
        if replayed > 0 {
            tracing::warn!(
                path = %path.display(), events = replayed,
                "audit spool: writing the events hub processes left"
            );
            log.start_draining();
        }
        Ok(log)
    }

    /// Appends `event` to the audit log, stamped now: inserted at once, or spooled when the
    /// database is out of reach (or when earlier events still wait in the spool). Never fails:
    /// an event the store refuses, or one a full spool cannot take, is logged as an error.
    pub async fn record(&self, event: NewAuditEvent) {
        self.record_stamped(StampedEvent::now(event)).await;
    }

    /// [`AuditLog::record`] of an event already stamped.
    pub async fn record_stamped(&self, event: StampedEvent) {
        if self.pending() == 0 {
            match self.inner.sink.insert(&event).await {
                Ok(_) => return,
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(
                        error = %e, action = event.event.action.as_str(), key = %event.key,
                        "database unavailable: audit event spooled"
                    );
                }
                Err(e) => {
                    lost(&event, &e.to_string());
                    return;
                }
            }
        }
        let log = self.clone();
        let start = tokio::task::spawn_blocking(move || {
            let mut spool = log.lock();
            if !log.admit(&mut spool, event, "") {
                return false;
            }
            !std::mem::replace(&mut spool.draining, true)
        })
        .await
        .unwrap_or(false);
        if start {
            self.spawn_drain();
        }
    }

    /// Events waiting in the spool.
    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    /// Events a full spool dropped since the start.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    fn lock(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding it leaves a consistent queue (each step is a push or a pop).
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `event` (and appends it to the file, flushed), unless the spool is full; returns
    /// whether it did.
    fn admit(&self, spool: &mut Spool, event: StampedEvent, context: &str) -> bool {
        let line = Line::of(&event);
        let size = line.len() as u64;
        let options = &self.inner.options;
        if spool.queue.len() >= options.max_events || spool.bytes + size > options.max_bytes {
            spool.dropped += 1;
            let why = format!(
                "the audit spool is full ({} events, {} bytes){}{context}: the event is dropped \
                 ({} dropped since the start)",
                spool.queue.len(),
                spool.bytes,
                if context.is_empty() { "" } else { " " },
                spool.dropped
            );
            lost(&event, &why);
            return false;
        }
        if let Some(file) = &mut spool.file
            && let Err(e) = file.append(&line)
        {
            tracing::error!(
                path = %file.path.display(), error = %e, key = %event.key,
                "audit spool: cannot write the event to the file; it is kept in memory only"
            );
        }
        spool.bytes += size;
        spool.queue.push_back((event, size));
        true
    }

    fn start_draining(&self) {
        let start = !std::mem::replace(&mut self.lock().draining, true);
        if start {
            self.spawn_drain();
        }
    }

    fn spawn_drain(&self) {
        tokio::spawn(self.clone().drain());
    }

    /// Writes the queue to the sink, first to last, until it is empty.
    async fn drain(self) {
        let options = self.inner.options.clone();
        let mut wait = options.retry_first;
        let mut refusals = 0u32;
        loop {
            let next = {
                let mut spool = self.lock();
                match spool.queue.front() {
                    Some((event, _)) => event.clone(),
                    None => {
                        spool.draining = false;
                        return;
                    }
                }
            };
            match self.inner.sink.insert(&next).await {
                Ok(inserted) => {
                    tracing::debug!(key = %next.key, inserted, "audit spool: event written");
                    wait = options.retry_first;
                    refusals = 0;
                    self.pop(next.key).await;
                }
                Err(e) if e.is_unavailable() => {
                    tracing::debug!(error = %e, pending = self.pending(), "audit spool: database still unavailable");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(options.retry_max);
                }
                Err(e) => {
                    refusals += 1;
                    if refusals >= options.other_error_tries {
                        lost(&next, &format!("the database refuses it: {e}"));
                        refusals = 0;
                        self.pop(next.key).await;
                    } else {
                        tracing::warn!(error = %e, key = %next.key, "audit spool: cannot write an event; trying again");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(options.retry_max);
                    }
                }
            }
        }
    }

    /// Removes the first event (`key`) from the queue; empties the file when the queue is
    /// empty, rewrites it when it holds mostly written events.
    async fn pop(&self, key: String) {
        let log = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut spool = log.lock();
            if spool.queue.front().is_some_and(|(e, _)| e.key == key)
                && let Some((_, size)) = spool.queue.pop_front()
            {
                spool.bytes -= size;
            }
            let Spool { queue, file, .. } = &mut *spool;
            let Some(f) = file else { return };
            let result = if queue.is_empty() {
                f.truncate()
            } else if f.lines > 2 * queue.len() + COMPACT_SLACK {
                SpoolFile::rewrite(&f.path, queue).map(|new| *f = new)
            } else {
                Ok(())
            };
            if let Err(e) = result {
                tracing::error!(path = %f.path.display(), error = %e, "audit spool: cannot shrink the file");
            }
        });
        if let Err(e) = done.await {
            tracing::error!(error = %e, "audit spool: the bookkeeping task failed");
        }
    }
}

impl SpoolFile {
    /// Writes `queue` to `path` anew (through a temporary file renamed over it, both flushed),
    /// and opens it for appending.
    fn rewrite(path: &Path, queue: &VecDeque<(StampedEvent, u64)>) -> std::io::Result<SpoolFile> {
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut out = std::io::BufWriter::new(create_private(&tmp, false)?);
            for (event, _) in queue {
                out.write_all(Line::of(event).as_bytes())?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(SpoolFile {
            path: path.to_owned(),
            file: create_private(path, true)?,
            lines: queue.len(),
        })
    }

    /// Appends `line`, flushed to disk.
    fn append(&mut self, line: &str) -> std::io::Result<()> {
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        self.lines += 1;
        Ok(())
    }

    fn truncate(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.lines = 0;
        Ok(())
    }
}

/// Opens `path` for writing (appending, or truncated), created with mode 0600.
fn create_private(path: &Path, append: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).mode(0o600);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    options.open(path)
}

/// Logs an event that will not be in the audit log, with everything it said.
fn lost(event: &StampedEvent, why: &str) {
    let e = &event.event;
    tracing::error!(
        key = %event.key,
        occurred_at = %event.occurred_at,
        action = e.action.as_str(),
        actor = e.actor.as_deref().unwrap_or("-"),
        target_user = e.target_user.as_deref().unwrap_or("-"),
        target_server = e.target_server.as_deref().unwrap_or("-"),
        detail = %e.detail,
        "AUDIT EVENT LOST: {why}"
    );
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;

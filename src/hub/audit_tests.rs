use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use super::*;

/// A database that can be switched off, and that can lose the answer of an insert it made.
#[derive(Default)]
struct FakeDb {
    down: AtomicBool,
    /// The next insert is made, and then answered as an outage.
    lose_answer: AtomicBool,
    rows: Mutex<Vec<StampedEvent>>,
}

impl AuditSink for Arc<FakeDb> {
    async fn insert(&self, e: &StampedEvent) -> Result<bool, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        if !e.event.detail.is_object() {
            return Err(StoreError::Invalid(
                "audit detail must be a JSON object".into(),
            ));
        }
        let inserted = {
            let mut rows = self.rows.lock().unwrap();
            let new = !rows.iter().any(|r| r.key == e.key);
            if new {
                rows.push(e.clone());
            }
            new
        };
        if self.lose_answer.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Unavailable(sqlx::Error::Io(
                std::io::ErrorKind::ConnectionReset.into(),
            )));
        }
        Ok(inserted)
    }
}

impl FakeDb {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The `n` field of each row's detail, in insertion order.
    fn order(&self) -> Vec<u64> {
        let rows = self.rows.lock().unwrap();
        rows.iter()
            .map(|r| r.event.detail["n"].as_u64().unwrap())
            .collect()
    }
}

fn event(n: u64) -> NewAuditEvent {
    let mut e = NewAuditEvent::new(AuditAction::ServerStop);
    e.actor = Some("alice".into());
    e.target_user = Some("alice".into());
    e.detail = json!({ "n": n });
    e
}

fn fast() -> SpoolOptions {
    SpoolOptions {
        retry_first: Duration::from_millis(1),
        retry_max: Duration::from_millis(5),
        ..SpoolOptions::default()
    }
}

/// Waits until the spool is empty (a bound, not a measurement: it fails only if it never is).
async fn drained<S: AuditSink>(log: &AuditLog<S>) {
    for _ in 0..2000 {
        if log.pending() == 0 && !log.lock().draining {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the spool still holds {} events", log.pending());
}

fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("atelier-audit-{}", store::new_audit_key()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn events_go_straight_to_a_database_that_answers() {
    let db = Arc::new(FakeDb::default());
    let log = AuditLog::with_options(db.clone(), fast());
    log.record(event(1)).await;
    log.record(event(2)).await;
    assert_eq!(db.order(), [1, 2]);
    assert_eq!(log.pending(), 0);
}

#[tokio::test]
async fn an_outage_spools_events_and_they_are_written_in_order_when_it_ends() {
    let db = Arc::new(FakeDb::default());
    let dir = temp_dir();
    let path = spool_path(&dir, 0);
    let log = AuditLog::open(db.clone(), &dir, fast()).unwrap();
    log.record(event(1)).await;
    db.set_down(true);
    for n in 2..=4 {
        log.record(event(n)).await;
    }
    assert_eq!(log.pending(), 3);
    assert_eq!(
        file_lines(&path).len(),
        3,
        "each spooled event is in the file"
    );
    assert_eq!(db.order(), [1]);
    db.set_down(false);
    // Behind the spooled ones, though the database answers again.
    log.record(event(5)).await;
    drained(&log).await;
    assert_eq!(db.order(), [1, 2, 3, 4, 5]);
    assert!(
        file_lines(&path).is_empty(),
        "the file is emptied with the spool"
    );
    // The original times are kept.
    let rows = db.rows.lock().unwrap();
    let times: Vec<_> = rows.iter().map(|r| r.occurred_at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_full_spool_drops_new_events_and_counts_them() {
    let db = Arc::new(FakeDb::default());
    let log = AuditLog::with_options(
        db.clone(),
        SpoolOptions {
            max_events: 3,
            ..fast()
        },
    );
    db.set_down(true);
    for n in 1..=5 {
        log.record(event(n)).await;
    }
    assert_eq!(log.pending(), 3);
    assert_eq!(log.dropped(), 2);
    db.set_down(false);
    drained(&log).await;
    assert_eq!(db.order(), [1, 2, 3]);

    // The byte bound: room for two and a half lines (their lengths differ by a few digits of
    // the time).
    let line = Line::of(&StampedEvent::now(event(1))).len() as u64;
    let db = Arc::new(FakeDb::default());
    let log = AuditLog::with_options(
        db.clone(),
        SpoolOptions {
            max_bytes: line * 5 / 2,
            ..fast()
        },
    );
    db.set_down(true);
    for n in 1..=5 {
        log.record(event(n)).await;
    }
    assert_eq!(log.pending(), 2, "a line is about {line} bytes");
    assert_eq!(log.dropped(), 3);
}

/// A runtime of its own: dropping it ends the tasks of the log it made, as the process's end.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_hub_stopped_during_an_outage_writes_its_spool_at_the_next_start() {
    let dir = temp_dir();
    let path = spool_path(&dir, 0);
    let mut stamped = Vec::new();
    {
        let rt = runtime();
        let before = Arc::new(FakeDb::default());
        before.set_down(true);
        rt.block_on(async {
            let first = AuditLog::open(before, &dir, fast()).unwrap();
            for n in 1..=3 {
                let e = StampedEvent::now(event(n));
                stamped.push(e.clone());
                first.record_stamped(e).await;
            }
        });
        assert_eq!(file_lines(&path).len(), 3);
        // The process dies here: its spool in memory is gone, the file stays.
    }

    let rt = runtime();
    let after = Arc::new(FakeDb::default());
    let second = rt.block_on(async {
        let second = AuditLog::open(after.clone(), &dir, fast()).unwrap();
        drained(&second).await;
        second
    });
    assert_eq!(
        *after.rows.lock().unwrap(),
        stamped,
        "the same events (keys, times, fields), in order"
    );
    assert!(file_lines(&path).is_empty());
    drop(second);
    drop(rt);

    // Opened again (a crash before the truncation was flushed would leave the lines): nothing to
    // replay, and replaying written events would change nothing.
    let third = runtime().block_on(async { AuditLog::open(after.clone(), &dir, fast()).unwrap() });
    assert_eq!(third.pending(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hubs_sharing_a_state_directory_keep_a_file_each_and_take_over_those_of_hubs_gone() {
    let dir = temp_dir();
    let down = Arc::new(FakeDb::default());
    down.set_down(true);
    let rt = runtime();
    // Two running hubs: two slots.
    let a = rt.block_on(async { AuditLog::open(down.clone(), &dir, fast()).unwrap() });
    let mut stamped = Vec::new();
    {
        let gone_rt = runtime();
        gone_rt.block_on(async {
            let b = AuditLog::open(down.clone(), &dir, fast()).unwrap();
            for n in 1..=2 {
                let e = StampedEvent::now(event(n));
                stamped.push(e.clone());
                b.record_stamped(e).await;
            }
        });
        rt.block_on(a.record(event(10)));
        assert_eq!(file_lines(&spool_path(&dir, 0)).len(), 1);
        assert_eq!(file_lines(&spool_path(&dir, 1)).len(), 2);
        // b's process dies.
    }
    // A new hub takes a free slot (b's) and b's events, while a keeps its own.
    let up = Arc::new(FakeDb::default());
    rt.block_on(async {
        let c = AuditLog::open(up.clone(), &dir, fast()).unwrap();
        drained(&c).await;
    });
    assert_eq!(*up.rows.lock().unwrap(), stamped);
    assert_eq!(a.pending(), 1);
    assert_eq!(file_lines(&spool_path(&dir, 0)).len(), 1, "a's file is a's");
    // A file further on, of a hub gone (no lock held): taken over by the next hub, and removed.
    let left = StampedEvent::now(event(20));
    std::fs::write(spool_path(&dir, 5), Line::of(&left)).unwrap();
    rt.block_on(async {
        let d = AuditLog::open(up.clone(), &dir, fast()).unwrap();
        drained(&d).await;
    });
    assert_eq!(up.order(), [1, 2, 20]);
    assert!(!spool_path(&dir, 5).exists());
    assert_eq!(a.pending(), 1);
    drop(rt);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_line_cut_short_by_a_crash_is_skipped_and_the_next_line_stands_alone() {
    let dir = temp_dir();
    let path = spool_path(&dir, 0);
    let mut text = String::new();
    for n in 1..=2 {
        text.push_str(&Line::of(&StampedEvent::now(event(n))));
    }
    let torn = Line::of(&StampedEvent::now(event(99)));
    text.push_str(&torn[..torn.len() / 2]);
    std::fs::write(&path, text).unwrap();

    let db = Arc::new(FakeDb::default());
    db.set_down(true);
    let log = AuditLog::open(db.clone(), &dir, fast()).unwrap();
    assert_eq!(log.pending(), 2);
    log.record(event(3)).await;
    let lines = file_lines(&path);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        Line::parse(line).expect("every line parses");
    }
    db.set_down(false);
    drained(&log).await;
    assert_eq!(db.order(), [1, 2, 3]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_insert_whose_answer_was_lost_is_written_once() {
    let db = Arc::new(FakeDb::default());
    let log = AuditLog::with_options(db.clone(), fast());
    db.lose_answer.store(true, Ordering::SeqCst);
    log.record(event(1)).await;
    assert_eq!(
        log.pending(),
        1,
        "spooled: the hub cannot know it was written"
    );
    drained(&log).await;
    assert_eq!(db.order(), [1]);
    let keys: BTreeSet<_> = db
        .rows
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(keys.len(), 1);
}

#[tokio::test]
async fn an_event_the_store_refuses_is_not_spooled() {
    let db = Arc::new(FakeDb::default());
    let log = AuditLog::with_options(db.clone(), fast());
    let mut bad = event(1);
    bad.detail = json!(["not", "an", "object"]);
    log.record(bad).await;
    assert_eq!(log.pending(), 0);
    assert!(db.rows.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_store_writes_a_keyed_event_once_with_its_own_time() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let log = AuditLog::with_options(store.clone(), fast());
    let mut e = StampedEvent::now(event(7));
    e.occurred_at = store::now() - chrono::Duration::minutes(5);
    log.record_stamped(e.clone()).await;
    // Written again (a replay): no second row.
    assert!(!AuditSink::insert(&store, &e).await.unwrap());
    let rows = store
        .list_audit(&crate::store::AuditQuery::default())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].occurred_at, e.occurred_at);
    assert_eq!(rows[0].detail, json!({"n": 7}));
}

/// The hub writes every audit event through `AuditLog::record`: no module calls the store's
/// insert itself (it would lose its event in an outage).
#[test]
fn no_hub_module_appends_to_the_store_directly() {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("audit_tests.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    if line.contains("append_audit(") || line.contains("insert_audit_once(") {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hub"),
        &mut found,
    );
    // The one call: the sink of `AuditLog`.
    found.retain(|f| !f.contains("src/hub/audit.rs:"));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

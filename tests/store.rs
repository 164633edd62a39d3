//! The store's stories, each run on SQLite (a fresh temporary file per test) and on PostgreSQL
//! (a fresh database per test) when `ATELIER_TEST_POSTGRES_URL` is set, e.g.
//! `ATELIER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo test --test store`.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use atelier::store::tokens::{generate_token, hash_token, pkce_s256_challenge};
use atelier::store::{
    AuditAction, AuditQuery, Engine, NewAuditEvent, NewOAuthClient, NewOAuthCode, NewSession,
    NewToken, PkceMethod, RECENT_TTL, ServerChanges, ServerState, StartRequest, Store, StoreError,
    TokenOwner, UserQuery, UserSort, UserStateFilter, UserSubset, new_audit_key, now,
    oauth_client_id,
};
use chrono::Duration;
use serde_json::json;
use sqlx::{PgPool, SqlitePool};
use tracing::Instrument as _;

mod common;

use common::with_database;

// ---- harness ------------------------------------------------------------------------------

/// A fresh, migrated database with a store on it, removed when dropped (also on panic).
struct TestDb {
    store: Store,
    url: String,
    raw: Raw,
    /// Dropped last, after the pools.
    _db: common::TestDb,
}

/// A second pool on the same database, beside the store: what an operator with `psql` or
/// `sqlite3` could do.
enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let db = common::TestDb::sqlite("atelier-store");
        let url = db.url().to_owned();
        let store = Store::connect(&url).await.expect("connect to SQLite");
        let raw = Raw::Sqlite(SqlitePool::connect(&url).await.expect("raw SQLite pool"));
        TestDb {
            store,
            url,
            raw,
            _db: db,
        }
    }

    /// `None` (after saying so loudly) when `ATELIER_TEST_POSTGRES_URL` is not set.
    async fn postgres() -> Option<TestDb> {
        let db = common::TestDb::postgres("atelier_test", "PostgreSQL store tests").await?;
        let url = db.url().to_owned();
        let store = Store::connect(&url).await.expect("connect to PostgreSQL");
        let raw = Raw::Postgres(PgPool::connect(&url).await.expect("raw PostgreSQL pool"));
        Some(TestDb {
            store,
            url,
            raw,
            _db: db,
        })
    }

    async fn close(&self) {
        self.store.close().await;
        match &self.raw {
            Raw::Sqlite(p) => p.close().await,
            Raw::Postgres(p) => p.close().await,
        }
    }

    /// Runs `sql` outside the store.
    async fn raw_execute(&self, sql: &'static str) -> Result<u64, sqlx::Error> {
        Ok(match &self.raw {
            Raw::Sqlite(p) => sqlx::query(sql).execute(p).await?.rows_affected(),
            Raw::Postgres(p) => sqlx::query(sql).execute(p).await?.rows_affected(),
        })
    }

    /// `sql` with text parameters returning one count, outside the store.
    async fn raw_count(&self, sql: &'static str, params: &[&str]) -> i64 {
        match &self.raw {
            Raw::Sqlite(p) => {
                let mut query = sqlx::query_scalar(sql);
                for param in params {
                    query = query.bind(*param);
                }
                query.fetch_one(p).await
            }
            Raw::Postgres(p) => {
                let mut query = sqlx::query_scalar(sql);
                for param in params {
                    query = query.bind(*param);
                }
                query.fetch_one(p).await
            }
        }
        .expect("raw count")
    }
}

/// One test per engine for each story: `<story>::sqlite` and `<story>::postgres`.
macro_rules! stories {
    ($($(#[$attr:meta])* $story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test]
            $(#[$attr])*
            async fn sqlite() {
                let db = super::TestDb::sqlite().await;
                assert_eq!(db.store.engine(), super::Engine::Sqlite);
                super::$story(&db).await;
                db.close().await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn postgres() {
                let Some(db) = super::TestDb::postgres().await else { return };
                assert_eq!(db.store.engine(), super::Engine::Postgres);
                super::$story(&db).await;
                db.close().await;
            }
        }
    )*};
}

stories!(
    users_and_groups,
    server_lifecycle,
    users_pagination,
    api_tokens,
    oauth,
    sessions,
    audit_log,
    audit_events_written_once,
    two_stores,
    recent_user_details,
    migrations_rerun,
    servers_are_modified,
    running_servers_and_name_filter,
    oidc_identities,
    batch_jobs,
    #[ignore = "builds 10,000 users; run with --ignored --nocapture to see the timings"]
    scale,
);

// ---- counting statements ------------------------------------------------------------------

/// Statements of `Store::list_users` and `Store::get_user_detail`, which name themselves in an
/// SQL comment (`/* list_users:… */`, `/* user_details:… */`); sqlx logs every statement it
/// runs as a `sqlx::query` event, on both engines. Only events inside the span `counting` opens
/// are counted: other tests list users at the same time, on other threads (sqlx carries the
/// caller's span to SQLite's worker thread, and PostgreSQL's statements run in the caller's task).
static LISTING_STATEMENTS: AtomicUsize = AtomicUsize::new(0);

/// Held while counting, so that two tests' listings are not counted together.
static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct StatementCounter;

/// The span `counting` runs its future in.
const COUNTING_SPAN: &str = "counting_listing_statements";

impl<S> tracing_subscriber::Layer<S> for StatementCounter
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        metadata.target() == "sqlx::query" || metadata.name() == COUNTING_SPAN
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let counted = ctx
            .event_scope(event)
            .is_some_and(|mut scope| scope.any(|span| span.name() == COUNTING_SPAN));
        if !counted {
            return;
        }
        let mut text = FieldText(String::new());
        event.record(&mut text);
        if text.0.contains("/* list_users:") || text.0.contains("/* user_details:") {
            LISTING_STATEMENTS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_str(&mut self, _: &tracing::field::Field, value: &str) {
        self.0.push_str(value);
        self.0.push('\n');
    }

    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = writeln!(self.0, "{value:?}");
    }
}

/// Awaits `fut` and returns its output with the number of listing statements it ran.
async fn counting<T>(fut: impl Future<Output = T>) -> (T, usize) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(StatementCounter),
        )
        .expect("install the statement counter");
    });
    let _lock = COUNTING.lock().await;
    let before = LISTING_STATEMENTS.load(Ordering::SeqCst);
    let out = fut.instrument(tracing::info_span!(COUNTING_SPAN)).await;
    (out, LISTING_STATEMENTS.load(Ordering::SeqCst) - before)
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
}

fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
}

/// The names of every user `query` lists, walking its pages by offset; checks each page's total.
async fn walk_users(s: &Store, mut query: UserQuery) -> Vec<String> {
    let mut seen = Vec::new();
    let mut total = None;
    loop {
        let page = s.list_users(&query).await.unwrap();
        assert_eq!(*total.get_or_insert(page.total), page.total);
        seen.extend(page.items.iter().map(|u| u.user.name.clone()));
        match page.next_offset {
            Some(next) => query.offset = next,
            None => break,
        }
    }
    assert_eq!(total, Some(seen.len() as u64));
    seen
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---- stories ------------------------------------------------------------------------------

async fn users_and_groups(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    assert!(!alice.admin && alice.last_activity.is_none());
    let bob = s.create_user("Bob", true).await.unwrap();
    assert_eq!(s.get_user("alice").await.unwrap(), alice);
    assert_eq!(s.get_user_by_id(bob.id).await.unwrap(), bob);
    assert_not_found(s.get_user("carol").await);
    // Lookups are exact; uniqueness ignores ASCII case.
    assert_not_found(s.get_user("ALICE").await);
    assert_conflict(s.create_user("alice", false).await);
    assert_conflict(s.create_user("ALICE", false).await);
    assert_conflict(s.create_user("bob", false).await);
    assert_invalid(s.create_user("ålice", false).await);
    assert_invalid(s.create_user("", false).await);
    assert_invalid(s.create_user("a/b", false).await);

    let alice = s.set_user_admin("alice", true).await.unwrap();
    assert!(alice.admin);
    assert_not_found(s.set_user_admin("carol", true).await);
    let renamed = s.rename_user("alice", "alice2").await.unwrap();
    assert_eq!((renamed.id, renamed.name.as_str()), (alice.id, "alice2"));
    assert_conflict(s.rename_user("alice2", "BOB").await);
    assert_not_found(s.rename_user("nobody", "x").await);
    s.rename_user("alice2", "alice").await.unwrap();

    // Activity only moves forward.
    let t1 = now();
    assert!(s.touch_user_activity(alice.id, t1).await.unwrap());
    assert!(
        !s.touch_user_activity(alice.id, t1 - Duration::minutes(5))
            .await
            .unwrap()
    );
    assert_eq!(s.get_user("alice").await.unwrap().last_activity, Some(t1));
    let t2 = t1 + Duration::seconds(90);
    assert!(s.touch_user_activity(alice.id, t2).await.unwrap());
    assert_eq!(s.get_user("alice").await.unwrap().last_activity, Some(t2));

    // Groups.
    let physics = s
        .create_group("physics", &json!({"quota": "10Gi"}))
        .await
        .unwrap();
    assert_eq!(physics.properties, json!({"quota": "10Gi"}));
    assert_conflict(s.create_group("physics", &json!({})).await);
    assert_invalid(s.create_group("", &json!({})).await);
    assert_invalid(
        s.create_group("chem", &json!(["not", "an", "object"]))
            .await,
    );
    s.add_group_members("physics", &names(&["alice", "Bob"]))
        .await
        .unwrap();
    // Adding again is fine; an unknown user changes nothing.
    s.add_group_members("physics", &names(&["alice"]))
        .await
        .unwrap();
    s.create_group("chem", &json!({})).await.unwrap();
    assert_not_found(
        s.add_group_members("chem", &names(&["alice", "carol"]))
            .await,
    );
    assert!(s.get_group("chem").await.unwrap().users.is_empty());
    assert_not_found(s.add_group_members("nogroup", &names(&["alice"])).await);
    let detail = s.get_group("physics").await.unwrap();
    assert_eq!(detail.users, names(&["Bob", "alice"]));
    assert_eq!(detail.group.id, physics.id);
    let group = s
        .set_group_properties("physics", &json!({"quota": "20Gi"}))
        .await
        .unwrap();
    assert_eq!(group.properties, json!({"quota": "20Gi"}));
    assert_invalid(s.set_group_properties("physics", &json!(3)).await);
    s.remove_group_members("physics", &names(&["Bob", "carol"]))
        .await
        .unwrap();
    assert_eq!(
        s.get_group("physics").await.unwrap().users,
        names(&["alice"])
    );

    // Syncing a user's groups (from an identity provider) creates missing groups.
    s.set_user_groups(bob.id, &names(&["physics", "astro", "chem"]))
        .await
        .unwrap();
    assert_eq!(
        s.user_groups(bob.id).await.unwrap(),
        names(&["astro", "chem", "physics"])
    );
    s.set_user_groups(bob.id, &names(&["chem"])).await.unwrap();
    assert_eq!(s.user_groups(bob.id).await.unwrap(), names(&["chem"]));
    s.set_user_groups(bob.id, &[]).await.unwrap();
    assert!(s.user_groups(bob.id).await.unwrap().is_empty());
    assert_not_found(s.set_user_groups(9_999_999, &names(&["chem"])).await);

    let page = s.list_groups(0, 2).await.unwrap();
    assert_eq!(page.total, 3);
    let listed: Vec<_> = page.items.iter().map(|g| g.group.name.as_str()).collect();
    assert_eq!(listed, ["astro", "chem"]);
    assert_eq!(page.next_offset, Some(2));
    let page = s.list_groups(2, 2).await.unwrap();
    assert_eq!(page.items[0].group.name, "physics");
    assert_eq!(page.items[0].users, names(&["alice"]));
    assert_eq!(page.next_offset, None);
    assert_invalid(s.list_groups(0, 0).await);

    let (detail, statements) = counting(s.get_user_detail("alice", true)).await;
    let detail = detail.unwrap();
    assert_eq!(statements, 1, "the user with servers and groups, at once");
    assert_eq!(detail.groups, names(&["physics"]));
    assert!(detail.servers.is_empty());

    s.delete_group("astro").await.unwrap();
    assert_not_found(s.delete_group("astro").await);
    assert_not_found(s.get_group("astro").await);

    s.delete_user("alice").await.unwrap();
    assert_not_found(s.get_user("alice").await);
    assert_not_found(s.delete_user("alice").await);
    assert!(s.get_group("physics").await.unwrap().users.is_empty());
    // The name is free again.
    s.create_user("Alice", false).await.unwrap();
}

async fn server_lifecycle(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    let bob = s.create_user("bob", false).await.unwrap();

    let default = s.create_server(alice.id, "").await.unwrap();
    assert_eq!(default.name, "");
    assert_eq!(default.state, ServerState::Stopped);
    assert!(default.stopped() && !default.ready() && default.pending().is_none());
    let named = s.create_server(alice.id, "analysis").await.unwrap();
    // Names that collide once case is folded are refused; non-ASCII names are refused.
    assert_conflict(s.create_server(alice.id, "Analysis").await);
    assert_conflict(s.create_server(alice.id, "ANALYSIS").await);
    assert_conflict(s.create_server(alice.id, "").await);
    assert_invalid(s.create_server(alice.id, "anålysis").await);
    assert_invalid(s.create_server(alice.id, "an alysis").await);
    assert_not_found(s.create_server(9_999_999, "x").await);
    // Another user may use the same name.
    let bobs = s.create_server(bob.id, "analysis").await.unwrap();

    assert_eq!(s.get_server(alice.id, "analysis").await.unwrap(), named);
    assert_eq!(
        s.get_server_by_names("alice", "analysis").await.unwrap(),
        named
    );
    assert_eq!(
        s.get_server_by_names("bob", "analysis").await.unwrap(),
        bobs
    );
    assert_not_found(s.get_server_by_names("alice", "nope").await);
    let servers = s.list_user_servers(alice.id).await.unwrap();
    let listed: Vec<_> = servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(listed, ["", "analysis"]);
    // A user's details list the servers by name (byte order), whatever order they were made
    // in: one server made after the others sorts between them.
    let middle = s.create_server(alice.id, "Zz-middle").await.unwrap();
    let detail = s.get_user_detail("alice", true).await.unwrap();
    let listed: Vec<_> = detail.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(listed, ["", "Zz-middle", "analysis"]);
    let page = s
        .list_users(&UserQuery {
            include_stopped_servers: true,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    let alices = page.items.iter().find(|d| d.user.name == "alice").unwrap();
    assert_eq!(alices.servers, detail.servers);
    s.delete_server(middle.id).await.unwrap();

    // Stopped -> Starting -> Running -> Stopping -> Stopped.
    let t0 = now();
    let request = StartRequest {
        profile: Some("pangeo".into()),
        user_options: Some(json!({"cpu": 2})),
        display_name: Some("Analysis".into()),
    };
    let starting = s.begin_start(named.id, &request, t0).await.unwrap();
    assert_eq!(starting.state, ServerState::Starting);
    assert_eq!(starting.pending(), Some("spawn"));
    assert!(!starting.ready() && !starting.stopped());
    assert_eq!(starting.started, Some(t0));
    assert_eq!(starting.last_activity, Some(t0));
    assert_eq!(starting.profile.as_deref(), Some("pangeo"));
    assert_eq!(starting.user_options, json!({"cpu": 2}));
    assert_eq!(starting.display_name.as_deref(), Some("Analysis"));
    assert_conflict(s.begin_start(named.id, &request, t0).await);
    assert_not_found(s.begin_start(9_999_999, &request, t0).await);

    let t1 = t0 + Duration::seconds(5);
    let handle = json!({"pid": 4242, "port": 8888});
    let running = s
        .mark_running(
            named.id,
            "http://127.0.0.1:8888/user/alice/analysis/",
            &handle,
            t1,
        )
        .await
        .unwrap();
    assert_eq!(running.state, ServerState::Running);
    assert!(running.ready() && running.pending().is_none());
    assert_eq!(running.spawner_state, handle);
    assert_eq!(running.last_activity, Some(t1));
    assert_conflict(s.mark_running(named.id, "http://x/", &handle, t1).await);
    assert_conflict(s.delete_server(named.id).await);

    // Activity only moves forward.
    assert!(!s.touch_server_activity(named.id, t0).await.unwrap());
    let t2 = t1 + Duration::minutes(1);
    assert!(s.touch_server_activity(named.id, t2).await.unwrap());
    assert_eq!(
        s.get_server_by_id(named.id).await.unwrap().last_activity,
        Some(t2)
    );

    let running_now = s
        .list_servers_in_states(&[ServerState::Running], None, 10)
        .await
        .unwrap();
    assert_eq!(running_now.len(), 1);
    assert_eq!(running_now[0].user_name, "alice");
    assert_eq!(running_now[0].server.id, named.id);

    let stopping = s.begin_stop(named.id).await.unwrap();
    assert_eq!(stopping.pending(), Some("stop"));
    assert_conflict(s.begin_stop(named.id).await);
    let stopped = s.mark_stopped(named.id).await.unwrap();
    assert_eq!(stopped.state, ServerState::Stopped);
    assert!(stopped.url.is_none());
    assert_eq!(
        stopped.spawner_state, handle,
        "the handle stays for cleanup"
    );
    assert!(
        s.list_servers_in_states(&[ServerState::Running], None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let cleared = s.set_spawner_state(named.id, &json!({})).await.unwrap();
    assert_eq!(cleared.spawner_state, json!({}));
    assert_invalid(s.set_spawner_state(named.id, &json!("x")).await);

    // A start without options reuses the previous ones; a failed start can be retried.
    let t3 = t2 + Duration::minutes(1);
    let again = s
        .begin_start(named.id, &StartRequest::default(), t3)
        .await
        .unwrap();
    assert_eq!(again.user_options, json!({"cpu": 2}));
    assert_eq!(again.profile.as_deref(), Some("pangeo"));
    assert_eq!(again.started, Some(t3));
    let failed = s.mark_failed(named.id).await.unwrap();
    assert_eq!(failed.state, ServerState::Failed);
    assert!(failed.stopped() && failed.pending().is_none());
    assert_conflict(s.mark_failed(named.id).await);
    assert_conflict(s.begin_stop(named.id).await);
    s.begin_start(named.id, &StartRequest::default(), t3)
        .await
        .unwrap();
    s.mark_stopped(named.id).await.unwrap();

    // Paging over active servers across users by id.
    for server in [default.id, bobs.id] {
        s.begin_start(server, &StartRequest::default(), t3)
            .await
            .unwrap();
    }
    let first = s
        .list_servers_in_states(&ServerState::ACTIVE, None, 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let rest = s
        .list_servers_in_states(&ServerState::ACTIVE, Some(first[0].server.id), 10)
        .await
        .unwrap();
    let mut owners: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|s| s.user_name.clone())
        .collect();
    owners.sort();
    assert_eq!(owners, names(&["alice", "bob"]));

    s.delete_server(named.id).await.unwrap();
    assert_not_found(s.get_server_by_id(named.id).await);
    assert_not_found(s.delete_server(named.id).await);
    // Deleting the user deletes their servers.
    s.delete_user("bob").await.unwrap();
    assert_not_found(s.get_server_by_id(bobs.id).await);
}

async fn users_pagination(db: &TestDb) {
    let s = &db.store;
    const USERS: usize = 250;
    let t0 = now();
    s.create_group("every-fifth", &json!({})).await.unwrap();
    let mut fifth = Vec::new();
    let (mut running, mut starting) = (0u64, 0u64);
    for i in 0..USERS {
        let user = s.create_user(&format!("user-{i:03}"), false).await.unwrap();
        let server = s.create_server(user.id, "").await.unwrap();
        s.create_server(user.id, "extra").await.unwrap();
        if i % 3 == 0 {
            s.begin_start(server.id, &StartRequest::default(), t0)
                .await
                .unwrap();
            s.mark_running(
                server.id,
                &format!("http://10.0.0.1:{}/", 9000 + i),
                &json!({}),
                t0,
            )
            .await
            .unwrap();
            s.touch_user_activity(user.id, t0 + Duration::seconds(i as i64))
                .await
                .unwrap();
            running += 1;
        } else if i % 10 == 1 {
            s.begin_start(server.id, &StartRequest::default(), t0)
                .await
                .unwrap();
            starting += 1;
        }
        if i % 5 == 0 {
            fifth.push(user.name.clone());
        }
    }
    s.add_group_members("every-fifth", &fifth).await.unwrap();

    // Default order (id), offset pagination: four statements per page whatever its size.
    let mut query = UserQuery {
        limit: 100,
        ..UserQuery::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (page, statements) = counting(s.list_users(&query)).await;
        let page = page.unwrap();
        assert_eq!(
            statements, 2,
            "the count, and the page with servers and groups"
        );
        assert_eq!(page.total, USERS as u64);
        pages += 1;
        for item in &page.items {
            let i: usize = item.user.name[5..].parse().unwrap();
            // Only active servers by default.
            let active: Vec<_> = item.servers.iter().map(|s| s.state).collect();
            match (i % 3, i % 10) {
                (0, _) => assert_eq!(active, [ServerState::Running]),
                (_, 1) => assert_eq!(active, [ServerState::Starting]),
                _ => assert!(active.is_empty()),
            }
            let groups: &[&str] = if i.is_multiple_of(5) {
                &["every-fifth"]
            } else {
                &[]
            };
            assert_eq!(item.groups, groups);
            seen.push(item.user.name.clone());
        }
        match page.next_offset {
            Some(next) => {
                assert_eq!(page.items.len(), 100);
                query.offset = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<_> = (0..USERS).map(|i| format!("user-{i:03}")).collect();
    assert_eq!(seen, expected);

    // Keyset pagination by name, stopped servers included.
    let mut query = UserQuery {
        sort: UserSort::Name,
        limit: 120,
        include_stopped_servers: true,
        ..UserQuery::default()
    };
    let (page, statements) = counting(s.list_users(&query)).await;
    let page = page.unwrap();
    assert_eq!(statements, 2);
    assert_eq!(page.items.len(), 120);
    assert_eq!(page.next_after.as_deref(), Some("user-119"));
    assert!(page.items.iter().all(|u| u.servers.len() == 2));
    assert_eq!(page.items[0].servers[0].name, "");
    query.after = page.next_after.clone();
    let page = s.list_users(&query).await.unwrap();
    assert_eq!(page.items[0].user.name, "user-120");
    query.after = page.next_after.clone();
    let page = s.list_users(&query).await.unwrap();
    assert_eq!(page.items.len(), 10);
    assert_eq!(page.items.last().unwrap().user.name, "user-249");
    assert_eq!((page.next_after, page.next_offset), (None, None));
    // Descending.
    let page = s
        .list_users(&UserQuery {
            sort: UserSort::Name,
            descending: true,
            after: Some("user-100".into()),
            limit: 2,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    let listed: Vec<_> = page.items.iter().map(|u| u.user.name.as_str()).collect();
    assert_eq!(listed, ["user-099", "user-098"]);

    // State filters: ready, active, inactive, each counted without reading every user.
    let mut query = UserQuery {
        state: Some(UserStateFilter::Ready),
        limit: 50,
        ..UserQuery::default()
    };
    let (page, statements) = counting(s.list_users(&query)).await;
    let page = page.unwrap();
    assert_eq!(statements, 2);
    assert_eq!(page.total, running);
    assert_eq!(page.items.len(), 50);
    assert!(
        page.items
            .iter()
            .all(|u| u.servers.iter().any(|s| s.ready()))
    );
    query.offset = page.next_offset.unwrap();
    let page = s.list_users(&query).await.unwrap();
    assert_eq!(page.items.len() as u64, running - 50);
    assert_eq!(page.next_offset, None);

    let active = s
        .list_users(&UserQuery {
            state: Some(UserStateFilter::Active),
            limit: 1000,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(active.total, running + starting);
    assert_eq!(active.items.len() as u64, running + starting);
    // The walk by id over ready or active users (whose ids come off the servers' index) agrees
    // with the same walk filtered by a name every user's contains (the general statement), in
    // both directions, page after page.
    for (state, count) in [
        (UserStateFilter::Ready, running),
        (UserStateFilter::Active, running + starting),
    ] {
        for descending in [false, true] {
            let query = UserQuery {
                state: Some(state),
                descending,
                limit: 7,
                ..UserQuery::default()
            };
            let by_index = walk_users(s, query.clone()).await;
            let general = walk_users(
                s,
                UserQuery {
                    name_filter: Some("user-".into()),
                    ..query
                },
            )
            .await;
            assert_eq!(by_index.len() as u64, count, "{state:?} {descending}");
            assert_eq!(by_index, general, "{state:?} {descending}");
            let mut sorted = by_index.clone();
            sorted.sort();
            if descending {
                sorted.reverse();
            }
            assert_eq!(by_index, sorted);
        }
    }
    let inactive = s
        .list_users(&UserQuery {
            state: Some(UserStateFilter::Inactive),
            limit: 1000,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(inactive.total, USERS as u64 - running - starting);
    assert!(inactive.items.iter().all(|u| u.servers.is_empty()));

    // Most recently active first; never active users last.
    let page = s
        .list_users(&UserQuery {
            sort: UserSort::LastActivity,
            descending: true,
            limit: 2,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    let listed: Vec<_> = page.items.iter().map(|u| u.user.name.as_str()).collect();
    assert_eq!(listed, ["user-249", "user-246"]);
    let page = s
        .list_users(&UserQuery {
            sort: UserSort::LastActivity,
            limit: 1,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert!(page.items[0].user.last_activity.is_none());

    // A subset: named users and members of named groups (scoped `list:users`).
    let subset = UserSubset {
        users: names(&["user-001", "user-002"]),
        groups: names(&["every-fifth"]),
    };
    let (page, statements) = counting(s.list_users(&UserQuery {
        only: Some(subset.clone()),
        limit: 1000,
        ..UserQuery::default()
    }))
    .await;
    let page = page.unwrap();
    assert_eq!(statements, 2);
    assert_eq!((page.total, page.items.len()), (52, 52));
    assert_eq!(page.items[1].user.name, "user-001");
    let page = s
        .list_users(&UserQuery {
            only: Some(subset.clone()),
            state: Some(UserStateFilter::Ready),
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 17, "every fifteenth user");
    assert!(page.items.iter().all(|u| u.groups == ["every-fifth"]));
    let page = s
        .list_users(&UserQuery {
            only: Some(subset),
            sort: UserSort::Name,
            after: Some("user-100".into()),
            limit: 2,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    let listed: Vec<_> = page.items.iter().map(|u| u.user.name.as_str()).collect();
    assert_eq!(listed, ["user-105", "user-110"]);
    assert_eq!(page.total, 52);
    let page = s
        .list_users(&UserQuery {
            only: Some(UserSubset::default()),
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!((page.total, page.items.len()), (0, 0));

    // An empty page costs the same two statements.
    let (page, statements) = counting(s.list_users(&UserQuery {
        offset: 10_000,
        ..UserQuery::default()
    }))
    .await;
    assert!(page.unwrap().items.is_empty());
    assert_eq!(statements, 2);

    assert_invalid(
        s.list_users(&UserQuery {
            limit: 0,
            ..UserQuery::default()
        })
        .await,
    );
    assert_invalid(
        s.list_users(&UserQuery {
            limit: 1001,
            ..UserQuery::default()
        })
        .await,
    );
    assert_invalid(
        s.list_users(&UserQuery {
            after: Some("user-001".into()),
            ..UserQuery::default()
        })
        .await,
    );
    assert_eq!(
        UserSort::parse("-last_activity"),
        Some((UserSort::LastActivity, true))
    );
    assert_eq!(
        UserStateFilter::parse("ready"),
        Some(UserStateFilter::Ready)
    );
}

async fn api_tokens(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    let t0 = now();
    let mut new = NewToken::new(
        TokenOwner::User(alice.id),
        names(&["read:users", "servers"]),
    );
    new.note = Some("laptop".into());
    new.expires_at = Some(t0 + Duration::hours(1));
    let (value, token) = s.create_token(&new).await.unwrap();
    assert_eq!(value.len(), 64);
    assert_eq!(token.prefix, value[..4]);
    assert_eq!(token.owner, TokenOwner::User(alice.id));
    assert_eq!(token.scopes, names(&["read:users", "servers"]));
    assert_eq!(token.note.as_deref(), Some("laptop"));
    // Only the hash is stored.
    let by_hash = "SELECT COUNT(*) FROM api_tokens WHERE hash = $1";
    assert_eq!(db.raw_count(by_hash, &[&hash_token(&value)]).await, 1);
    assert_eq!(db.raw_count(by_hash, &[&value]).await, 0);

    let identity = s.lookup_token(&value, t0).await.unwrap();
    assert_eq!(identity.token, token);
    assert_eq!(identity.user.as_ref().unwrap(), &alice);
    assert_not_found(s.lookup_token(&generate_token(), t0).await);
    // Expiry.
    assert!(!token.is_expired(t0));
    assert!(token.is_expired(t0 + Duration::hours(2)));
    assert_not_found(s.lookup_token(&value, t0 + Duration::hours(2)).await);

    // Last use only moves forward.
    let t1 = t0 + Duration::seconds(30);
    assert!(s.touch_token_activity(token.id, t1).await.unwrap());
    assert!(!s.touch_token_activity(token.id, t0).await.unwrap());
    assert_eq!(s.get_token(token.id).await.unwrap().last_activity, Some(t1));

    // A service's token, with a value from the configuration.
    let service_value = "0123456789abcdef0123456789abcdef";
    let culler = NewToken::new(
        TokenOwner::Service("idle-culler".into()),
        names(&["admin:servers"]),
    );
    let service_token = s
        .create_token_with_value(service_value, &culler)
        .await
        .unwrap();
    let identity = s.lookup_token(service_value, t0).await.unwrap();
    assert_eq!(identity.user, None);
    assert_eq!(
        identity.token.owner,
        TokenOwner::Service("idle-culler".into())
    );
    assert_conflict(s.create_token_with_value(service_value, &culler).await);
    assert_invalid(s.create_token_with_value("short", &culler).await);
    assert_invalid(
        s.create_token(&NewToken::new(TokenOwner::Service(String::new()), vec![]))
            .await,
    );
    assert_not_found(
        s.create_token(&NewToken::new(TokenOwner::User(9_999_999), vec![]))
            .await,
    );
    assert_eq!(
        s.list_tokens(&TokenOwner::Service("idle-culler".into()))
            .await
            .unwrap(),
        std::slice::from_ref(&service_token)
    );

    let (second, _) = s
        .create_token(&NewToken::new(TokenOwner::User(alice.id), vec![]))
        .await
        .unwrap();
    assert_eq!(
        s.list_tokens(&TokenOwner::User(alice.id))
            .await
            .unwrap()
            .len(),
        2
    );
    s.revoke_token(token.id).await.unwrap();
    assert_not_found(s.revoke_token(token.id).await);
    assert_not_found(s.get_token(token.id).await);
    assert_eq!(
        s.list_tokens(&TokenOwner::User(alice.id))
            .await
            .unwrap()
            .len(),
        1
    );

    // Purging removes expired tokens only.
    let mut expired = NewToken::new(TokenOwner::User(alice.id), vec![]);
    expired.expires_at = Some(t0 - Duration::seconds(1));
    s.create_token(&expired).await.unwrap();
    let purged = s.purge_expired(t0).await.unwrap();
    assert_eq!(purged.tokens, 1);
    assert!(s.lookup_token(&second, t0).await.is_ok());

    // Deleting the user deletes their tokens.
    s.delete_user("alice").await.unwrap();
    assert_not_found(s.lookup_token(&second, t0).await);
    assert!(s.lookup_token(service_value, t0).await.is_ok());
}

async fn oauth(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    let server = s.create_server(alice.id, "").await.unwrap();
    let client_id = oauth_client_id("alice", "");
    assert_eq!(client_id, "jupyterhub-user-alice");
    assert_eq!(oauth_client_id("alice", "gpu"), "jupyterhub-user-alice~gpu");

    // The server's API token is the client's secret.
    let (api_token, _) = s
        .create_token(&NewToken::new(TokenOwner::User(alice.id), vec![]))
        .await
        .unwrap();
    let mut new_client = NewOAuthClient {
        client_id: client_id.clone(),
        description: "Server at /user/alice/".into(),
        secret: api_token.clone(),
        redirect_uri: "/user/alice/oauth_callback".into(),
        server_id: Some(server.id),
        allowed_scopes: names(&["access:servers!server=alice/"]),
    };
    let client = s.upsert_oauth_client(&new_client).await.unwrap();
    assert_eq!(client.redirect_uri, "/user/alice/oauth_callback");
    assert_eq!(s.get_oauth_client(&client_id).await.unwrap(), client);
    assert_eq!(
        s.verify_oauth_client(&client_id, &api_token).await.unwrap(),
        client
    );
    assert_invalid(s.verify_oauth_client(&client_id, "wrong").await);
    assert_not_found(
        s.verify_oauth_client("jupyterhub-user-nobody", &api_token)
            .await,
    );
    // A new start updates the client in place.
    new_client.secret = generate_token();
    new_client.redirect_uri = "/user/alice/oauth_callback2".into();
    let updated = s.upsert_oauth_client(&new_client).await.unwrap();
    assert_eq!(updated.id, client.id);
    assert_eq!(updated.redirect_uri, "/user/alice/oauth_callback2");
    assert_invalid(s.verify_oauth_client(&client_id, &api_token).await);
    assert!(
        s.verify_oauth_client(&client_id, &new_client.secret)
            .await
            .is_ok()
    );
    // User "alice-x"'s default server and alice's server "x" have different client ids (with
    // JupyterHub's `-` both would be `jupyterhub-user-alice-x`); a client id held by another
    // server, as one registered under that earlier naming, is refused.
    let alice_x = s.create_user("alice-x", false).await.unwrap();
    let other = s.create_server(alice_x.id, "").await.unwrap();
    let x = s.create_server(alice.id, "x").await.unwrap();
    assert_ne!(
        oauth_client_id("alice-x", ""),
        oauth_client_id("alice", "x")
    );
    let mut clash = NewOAuthClient {
        client_id: oauth_client_id("alice-x", ""),
        server_id: Some(other.id),
        ..new_client.clone()
    };
    s.upsert_oauth_client(&clash).await.unwrap();
    clash.server_id = Some(x.id);
    assert_conflict(s.upsert_oauth_client(&clash).await);
    assert_eq!(
        s.get_oauth_client(&clash.client_id)
            .await
            .unwrap()
            .server_id,
        Some(other.id)
    );
    // A server's clients go by server, whatever their ids.
    let legacy = NewOAuthClient {
        client_id: "jupyterhub-user-alice-x-legacy".into(),
        server_id: Some(x.id),
        ..new_client.clone()
    };
    s.upsert_oauth_client(&legacy).await.unwrap();
    assert_eq!(s.delete_server_oauth_clients(x.id).await.unwrap(), 1);
    assert_not_found(s.get_oauth_client(&legacy.client_id).await);
    assert!(s.get_oauth_client(&clash.client_id).await.is_ok());

    // Authorization codes: PKCE, single use.
    let t0 = now();
    let (cookie, session) = s
        .create_session(&NewSession {
            user_id: Some(alice.id),
            next: None,
            data: json!({}),
            expires_at: t0 + Duration::hours(8),
        })
        .await
        .unwrap();
    let verifier = generate_token();
    let redirect = "/user/alice/oauth_callback2";
    let new_code = NewOAuthCode {
        client_id: client_id.clone(),
        user_id: alice.id,
        session_id: Some(session.id),
        redirect_uri: redirect.into(),
        code_challenge: Some(pkce_s256_challenge(&verifier)),
        code_challenge_method: Some(PkceMethod::S256),
        scopes: names(&["access:servers!server=alice/"]),
        expires_at: t0 + Duration::minutes(10),
    };
    let (code, issued) = s.create_oauth_code(&new_code).await.unwrap();
    assert_eq!(
        db.raw_count(
            "SELECT COUNT(*) FROM oauth_codes WHERE code_hash = $1",
            &[&code]
        )
        .await,
        0
    );
    assert_eq!(issued.code_challenge_method, Some(PkceMethod::S256));
    let exchanged = s
        .exchange_oauth_code(&code, &client_id, redirect, Some(&verifier), t0)
        .await
        .unwrap();
    assert_eq!(exchanged, issued);
    assert_eq!(exchanged.session_id, Some(session.id));
    // A replayed code fails.
    assert_not_found(
        s.exchange_oauth_code(&code, &client_id, redirect, Some(&verifier), t0)
            .await,
    );
    // A wrong verifier fails and uses the code up.
    let (code, _) = s.create_oauth_code(&new_code).await.unwrap();
    assert_invalid(
        s.exchange_oauth_code(&code, &client_id, redirect, Some("wrong"), t0)
            .await,
    );
    assert_not_found(
        s.exchange_oauth_code(&code, &client_id, redirect, Some(&verifier), t0)
            .await,
    );
    let (code, _) = s.create_oauth_code(&new_code).await.unwrap();
    assert_invalid(
        s.exchange_oauth_code(&code, &client_id, redirect, None, t0)
            .await,
    );
    let (code, _) = s.create_oauth_code(&new_code).await.unwrap();
    assert_invalid(
        s.exchange_oauth_code(&code, &client_id, "/elsewhere", Some(&verifier), t0)
            .await,
    );
    let (code, _) = s.create_oauth_code(&new_code).await.unwrap();
    assert_invalid(
        s.exchange_oauth_code(
            &code,
            "jupyterhub-user-alice-x",
            redirect,
            Some(&verifier),
            t0,
        )
        .await,
    );
    let (code, _) = s.create_oauth_code(&new_code).await.unwrap();
    assert_invalid(
        s.exchange_oauth_code(
            &code,
            &client_id,
            redirect,
            Some(&verifier),
            t0 + Duration::minutes(11),
        )
        .await,
    );
    // Plain PKCE and no PKCE.
    let plain = NewOAuthCode {
        code_challenge: Some(verifier.clone()),
        code_challenge_method: Some(PkceMethod::Plain),
        ..new_code.clone()
    };
    let (code, _) = s.create_oauth_code(&plain).await.unwrap();
    assert!(
        s.exchange_oauth_code(&code, &client_id, redirect, Some(&verifier), t0)
            .await
            .is_ok()
    );
    let no_pkce = NewOAuthCode {
        code_challenge: None,
        code_challenge_method: None,
        ..new_code.clone()
    };
    let (code, _) = s.create_oauth_code(&no_pkce).await.unwrap();
    assert!(
        s.exchange_oauth_code(&code, &client_id, redirect, None, t0)
            .await
            .is_ok()
    );
    assert_invalid(
        s.create_oauth_code(&NewOAuthCode {
            code_challenge_method: None,
            ..new_code.clone()
        })
        .await,
    );
    assert_not_found(
        s.create_oauth_code(&NewOAuthCode {
            client_id: "unknown".into(),
            ..new_code.clone()
        })
        .await,
    );

    // Two exchanges of one code at once: exactly one wins.
    let (code, _) = s.create_oauth_code(&new_code).await.unwrap();
    let (a, b) = tokio::join!(
        s.exchange_oauth_code(&code, &client_id, redirect, Some(&verifier), t0),
        s.exchange_oauth_code(&code, &client_id, redirect, Some(&verifier), t0),
    );
    assert_eq!(u8::from(a.is_ok()) + u8::from(b.is_ok()), 1, "{a:?} {b:?}");

    // The access token issued to the client carries the client and session.
    let mut access = NewToken::new(TokenOwner::User(alice.id), exchanged.scopes.clone());
    access.oauth_client_id = Some(client_id.clone());
    access.session_id = Some(session.id);
    let (access_value, _) = s.create_token(&access).await.unwrap();
    let identity = s.lookup_token(&access_value, t0).await.unwrap();
    assert_eq!(
        identity.token.oauth_client_id.as_deref(),
        Some(client_id.as_str())
    );
    assert_eq!(identity.token.session_id, Some(session.id));
    // Logging out revokes the tokens issued in the session.
    s.delete_session(&cookie).await.unwrap();
    assert_not_found(s.lookup_token(&access_value, t0).await);
    // Deleting a client deletes the tokens issued to it.
    access.session_id = None;
    let (access_value, _) = s.create_token(&access).await.unwrap();
    s.delete_oauth_client(&client_id).await.unwrap();
    assert_not_found(s.lookup_token(&access_value, t0).await);
    assert_not_found(s.delete_oauth_client(&client_id).await);
    // Deleting a server deletes its client.
    s.delete_server(other.id).await.unwrap();
    assert_not_found(s.get_oauth_client(&oauth_client_id("alice-x", "")).await);
}

async fn sessions(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    let t0 = now();
    // Before login: no user, where to go next, login flow state.
    let (cookie, session) = s
        .create_session(&NewSession {
            user_id: None,
            next: Some("/hub/spawn".into()),
            data: json!({"oidc_state": "s", "nonce": "n"}),
            expires_at: t0 + Duration::minutes(10),
        })
        .await
        .unwrap();
    assert_eq!(session.csrf_token.len(), 64);
    assert_ne!(session.csrf_token, cookie);
    assert_eq!(
        db.raw_count(
            "SELECT COUNT(*) FROM sessions WHERE id_hash = $1",
            &[&cookie]
        )
        .await,
        0
    );
    let identity = s.get_session(&cookie, t0).await.unwrap();
    assert_eq!(identity.session, session);
    assert_eq!(identity.user, None);
    assert_eq!(identity.session.next.as_deref(), Some("/hub/spawn"));
    assert_eq!(identity.session.data["nonce"], "n");
    assert_not_found(s.get_session(&cookie, t0 + Duration::minutes(11)).await);
    assert_not_found(s.get_session(&generate_token(), t0).await);
    assert_invalid(
        s.create_session(&NewSession {
            user_id: None,
            next: None,
            data: json!(1),
            expires_at: t0,
        })
        .await,
    );

    // After login.
    let (user_cookie, user_session) = s
        .create_session(&NewSession {
            user_id: Some(alice.id),
            next: None,
            data: json!({}),
            expires_at: t0 + Duration::hours(8),
        })
        .await
        .unwrap();
    let identity = s.get_session(&user_cookie, t0).await.unwrap();
    assert_eq!(identity.user.as_ref().unwrap(), &alice);
    assert!(s.touch_session_activity(user_session.id, t0).await.unwrap());
    assert!(
        !s.touch_session_activity(user_session.id, t0 - Duration::seconds(1))
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_session(&user_cookie, t0)
            .await
            .unwrap()
            .session
            .last_activity,
        Some(t0)
    );
    assert_not_found(
        s.create_session(&NewSession {
            user_id: Some(9_999_999),
            next: None,
            data: json!({}),
            expires_at: t0,
        })
        .await,
    );

    // Logout; logout everywhere; purge.
    s.delete_session(&user_cookie).await.unwrap();
    assert_not_found(s.get_session(&user_cookie, t0).await);
    assert_not_found(s.delete_session(&user_cookie).await);
    for _ in 0..2 {
        s.create_session(&NewSession {
            user_id: Some(alice.id),
            next: None,
            data: json!({}),
            expires_at: t0 + Duration::hours(1),
        })
        .await
        .unwrap();
    }
    assert_eq!(s.delete_user_sessions(alice.id).await.unwrap(), 2);
    let purged = s.purge_expired(t0 + Duration::minutes(30)).await.unwrap();
    assert_eq!(purged.sessions, 1, "the pre-login session expired");
}

async fn audit_log(db: &TestDb) {
    let s = &db.store;
    let before = now();
    let login = s
        .append_audit(&NewAuditEvent {
            actor: Some("alice".into()),
            target_user: Some("alice".into()),
            ..NewAuditEvent::new(AuditAction::Login)
        })
        .await
        .unwrap();
    assert!(login.occurred_at >= before);
    assert_eq!(login.detail, json!({}));
    let start = s
        .append_audit(&NewAuditEvent {
            actor: Some("alice".into()),
            target_user: Some("alice".into()),
            target_server: Some("gpu".into()),
            detail: json!({"profile": "pangeo"}),
            ..NewAuditEvent::new(AuditAction::ServerStart)
        })
        .await
        .unwrap();
    let admin = s
        .append_audit(&NewAuditEvent {
            actor: Some("root".into()),
            target_user: Some("bob".into()),
            detail: json!({"what": "set admin"}),
            ..NewAuditEvent::new(AuditAction::Admin)
        })
        .await
        .unwrap();
    s.append_audit(&NewAuditEvent::new(AuditAction::ServerStop))
        .await
        .unwrap();
    assert_invalid(
        s.append_audit(&NewAuditEvent {
            detail: json!("text"),
            ..NewAuditEvent::new(AuditAction::Logout)
        })
        .await,
    );

    let all = s.list_audit(&AuditQuery::default()).await.unwrap();
    let actions: Vec<_> = all.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            AuditAction::ServerStop,
            AuditAction::Admin,
            AuditAction::ServerStart,
            AuditAction::Login
        ]
    );
    assert_eq!(all[2], start);
    let alices = s
        .list_audit(&AuditQuery {
            target_user: Some("alice".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(alices, [start.clone(), login.clone()]);
    let page = s
        .list_audit(&AuditQuery {
            before_id: Some(admin.id),
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page, std::slice::from_ref(&start));
    let by_root = s
        .list_audit(&AuditQuery {
            actor: Some("root".into()),
            action: Some(AuditAction::Admin),
            since: Some(before),
            until: Some(now() + Duration::seconds(1)),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(by_root, [admin]);
    assert!(
        s.list_audit(&AuditQuery {
            until: Some(before),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert_invalid(
        s.list_audit(&AuditQuery {
            limit: 0,
            ..AuditQuery::default()
        })
        .await,
    );

    // Append-only, even outside the store.
    assert!(
        db.raw_execute("UPDATE audit_events SET actor = 'mallory'")
            .await
            .is_err()
    );
    assert!(db.raw_execute("DELETE FROM audit_events").await.is_err());
    assert_eq!(s.list_audit(&AuditQuery::default()).await.unwrap(), all);
}

/// A keyed event (the hub's audit spool writes again what an outage may have cut short) is
/// stored once, with the time it was given, however often it is written; keys are unique, events
/// without one (written before keys) do not collide.
async fn audit_events_written_once(db: &TestDb) {
    let s = &db.store;
    let key = new_audit_key();
    assert_eq!(key.len(), 32);
    assert_ne!(key, new_audit_key());
    let at = now() - Duration::minutes(3);
    let event = NewAuditEvent {
        action: AuditAction::TokenRevoke,
        actor: Some("alice".into()),
        target_user: Some("alice".into()),
        target_server: None,
        detail: json!({"token_id": "a7"}),
    };
    let first = s
        .insert_audit_once(&key, at, &event)
        .await
        .unwrap()
        .expect("inserted");
    assert_eq!(first.occurred_at, at, "the action's time, not the insert's");
    assert_eq!(first.detail, json!({"token_id": "a7"}));
    // Again, and again from another store (another hub process replaying its spool).
    assert_eq!(s.insert_audit_once(&key, at, &event).await.unwrap(), None);
    let other = Store::connect(&db.url).await.unwrap();
    let later = now();
    assert_eq!(
        other.insert_audit_once(&key, later, &event).await.unwrap(),
        None
    );
    other.close().await;
    // Concurrent writes of one new key: one row.
    let twin = new_audit_key();
    let (a, b) = tokio::join!(
        s.insert_audit_once(&twin, at, &event),
        s.insert_audit_once(&twin, at, &event)
    );
    assert_eq!(
        [a.unwrap().is_some(), b.unwrap().is_some()]
            .iter()
            .filter(|x| **x)
            .count(),
        1
    );
    // Unkeyed events beside them.
    s.append_audit(&event).await.unwrap();
    s.append_audit(&event).await.unwrap();
    assert_eq!(
        db.raw_count(
            "SELECT count(*) FROM audit_events WHERE event_key = $1",
            &[&key]
        )
        .await,
        1
    );
    assert_eq!(
        db.raw_count(
            "SELECT count(*) FROM audit_events WHERE event_key IS NULL AND actor = $1",
            &["alice"]
        )
        .await,
        2
    );
    let all = s.list_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    // A detail that is not an object is refused, not stored.
    let mut bad = event.clone();
    bad.detail = json!([1]);
    assert_invalid(s.insert_audit_once(&new_audit_key(), at, &bad).await);
}

async fn two_stores(db: &TestDb) {
    let a = &db.store;
    let b = Store::connect(&db.url).await.unwrap();
    let t0 = now();

    let alice = a.create_user("alice", false).await.unwrap();
    assert_eq!(b.get_user("alice").await.unwrap(), alice);
    assert_conflict(b.create_user("Alice", false).await);

    // One server, started from both hubs at once: exactly one start wins.
    let server = b.create_server(alice.id, "").await.unwrap();
    let request = StartRequest::default();
    let (ra, rb) = tokio::join!(
        a.begin_start(server.id, &request, t0),
        b.begin_start(server.id, &request, t0),
    );
    assert_eq!(
        u8::from(ra.is_ok()) + u8::from(rb.is_ok()),
        1,
        "{ra:?} {rb:?}"
    );
    assert_conflict(if ra.is_ok() { rb } else { ra });
    a.mark_running(server.id, "http://127.0.0.1:9999/", &json!({"pid": 1}), t0)
        .await
        .unwrap();
    assert!(b.get_server_by_id(server.id).await.unwrap().ready());
    let page = b
        .list_users(&UserQuery {
            state: Some(UserStateFilter::Ready),
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);

    // Credentials made by one hub work on the other.
    let (token, _) = a
        .create_token(&NewToken::new(TokenOwner::User(alice.id), vec![]))
        .await
        .unwrap();
    assert_eq!(
        b.lookup_token(&token, t0).await.unwrap().user.unwrap().name,
        "alice"
    );
    let (cookie, _) = b
        .create_session(&NewSession {
            user_id: Some(alice.id),
            next: None,
            data: json!({}),
            expires_at: t0 + Duration::hours(1),
        })
        .await
        .unwrap();
    assert!(a.get_session(&cookie, t0).await.is_ok());
    b.delete_session(&cookie).await.unwrap();
    assert_not_found(a.get_session(&cookie, t0).await);

    // Activity from either hub only moves forward.
    assert!(
        b.touch_server_activity(server.id, t0 + Duration::seconds(10))
            .await
            .unwrap()
    );
    assert!(
        !a.touch_server_activity(server.id, t0 + Duration::seconds(5))
            .await
            .unwrap()
    );
    assert_eq!(
        a.get_server_by_id(server.id).await.unwrap().last_activity,
        Some(t0 + Duration::seconds(10))
    );

    a.append_audit(&NewAuditEvent::new(AuditAction::ServerStart))
        .await
        .unwrap();
    assert_eq!(b.list_audit(&AuditQuery::default()).await.unwrap().len(), 1);
    b.close().await;
}

/// `get_recent_user_detail` (what `GET /hub/api/user` answers with): a second read in a moment
/// costs no statement; any write through the store to the user's row, servers, groups or
/// memberships is seen by the next read; another store's write (a second hub) is seen within
/// `RECENT_TTL`.
async fn recent_user_details(db: &TestDb) {
    let a = &db.store;
    let b = Store::connect(&db.url).await.unwrap();
    let t0 = now();
    let alice = a.create_user("alice", false).await.unwrap();
    a.create_user("bob", false).await.unwrap();
    let server = a.create_server(alice.id, "").await.unwrap();

    let (first, statements) = counting(a.get_recent_user_detail("alice")).await;
    assert_eq!(statements, 1);
    assert!(first.unwrap().servers.is_empty(), "no active server yet");
    let (again, statements) = counting(a.get_recent_user_detail("alice")).await;
    assert_eq!(statements, 0, "read a moment ago, nothing written since");
    assert_eq!(again.unwrap().user, alice);

    // Each write through this store is seen by the next read.
    a.begin_start(server.id, &StartRequest::default(), t0)
        .await
        .unwrap();
    let (d, statements) = counting(a.get_recent_user_detail("alice")).await;
    assert_eq!(statements, 1, "a start voids what was read");
    assert_eq!(d.unwrap().servers[0].state, ServerState::Starting);
    a.mark_running(server.id, "http://127.0.0.1:9999/", &json!({}), t0)
        .await
        .unwrap();
    assert!(a.get_recent_user_detail("alice").await.unwrap().servers[0].ready());
    let later = t0 + Duration::seconds(5);
    a.touch_server_activity(server.id, later).await.unwrap();
    let d = a.get_recent_user_detail("alice").await.unwrap();
    assert_eq!(d.servers[0].last_activity, Some(later));
    a.touch_user_activity(alice.id, later).await.unwrap();
    let d = a.get_recent_user_detail("alice").await.unwrap();
    assert_eq!(d.user.last_activity, Some(later));
    a.create_group("ocean", &json!({})).await.unwrap();
    a.add_group_members("ocean", &names(&["alice"]))
        .await
        .unwrap();
    assert_eq!(
        a.get_recent_user_detail("alice").await.unwrap().groups,
        ["ocean"]
    );
    a.set_user_groups(alice.id, &names(&["land"]))
        .await
        .unwrap();
    assert_eq!(
        a.get_recent_user_detail("alice").await.unwrap().groups,
        ["land"]
    );
    a.set_user_admin("alice", true).await.unwrap();
    assert!(a.get_recent_user_detail("alice").await.unwrap().user.admin);
    // A write about someone else voids it too (one epoch for all).
    a.set_user_admin("bob", true).await.unwrap();
    let (_, statements) = counting(a.get_recent_user_detail("alice")).await;
    assert_eq!(statements, 1);
    a.begin_stop(server.id).await.unwrap();
    a.mark_stopped(server.id).await.unwrap();
    assert!(
        a.get_recent_user_detail("alice")
            .await
            .unwrap()
            .servers
            .is_empty()
    );
    a.rename_user("alice", "alicia").await.unwrap();
    assert_not_found(a.get_recent_user_detail("alice").await);
    assert_eq!(
        a.get_recent_user_detail("alicia").await.unwrap().user.name,
        "alicia"
    );

    // Another store's write (a second hub on the database) shows within RECENT_TTL.
    let read_at = std::time::Instant::now();
    assert!(a.get_recent_user_detail("alicia").await.unwrap().user.admin);
    b.set_user_admin("alicia", false).await.unwrap();
    loop {
        let admin = a.get_recent_user_detail("alicia").await.unwrap().user.admin;
        if !admin {
            break;
        }
        assert!(
            read_at.elapsed() < RECENT_TTL + std::time::Duration::from_millis(500),
            "the other store's write not seen after {:?}",
            read_at.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // What was read before the other store's write was answered until then.
    assert!(read_at.elapsed() >= std::time::Duration::from_millis(100));
    b.close().await;
}

async fn migrations_rerun(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    // Running the migrations again, directly and through a second connect, changes nothing.
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    let again = Store::connect(&db.url).await.unwrap();
    assert_eq!(again.get_user("alice").await.unwrap(), alice);
    again.close().await;

    let dir = match s.engine() {
        Engine::Sqlite => "migrations/sqlite",
        Engine::Postgres => "migrations/postgres",
    };
    let files = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count() as i64;
    assert_eq!(
        db.raw_count("SELECT COUNT(*) FROM _sqlx_migrations WHERE success", &[])
            .await,
        files
    );
}

/// The size: 10,000 users (each with a token), 2,000 of them running a server. Checks
/// the statement counts at that size and prints the times of the request-path operations.
async fn scale(db: &TestDb) {
    use futures::StreamExt;
    use std::time::Instant;

    const USERS: usize = 10_000;
    const RUNNING: usize = 2_000;
    let s = &db.store;
    let t0 = now();
    let started = Instant::now();
    let tokens: Vec<String> = futures::stream::iter(0..USERS)
        .map(|i| async move {
            let user = s.create_user(&format!("user-{i:05}"), false).await.unwrap();
            let server = s.create_server(user.id, "").await.unwrap();
            if i % (USERS / RUNNING) == 0 {
                s.begin_start(server.id, &StartRequest::default(), t0)
                    .await
                    .unwrap();
                s.mark_running(server.id, "http://10.0.0.1:8888/", &json!({}), t0)
                    .await
                    .unwrap();
            }
            s.create_token(&NewToken::new(TokenOwner::User(user.id), vec![]))
                .await
                .unwrap()
                .0
        })
        .buffer_unordered(8)
        .collect()
        .await;
    eprintln!("{:?}: setup {:?}", s.engine(), started.elapsed());

    // The culler's sweep: every ready user, 200 per page.
    let started = Instant::now();
    let mut query = UserQuery {
        state: Some(UserStateFilter::Ready),
        limit: 200,
        ..UserQuery::default()
    };
    let (mut pages, mut ready) = (0, 0);
    loop {
        let (page, statements) = counting(s.list_users(&query)).await;
        let page = page.unwrap();
        assert_eq!(statements, 2);
        assert_eq!(page.total, RUNNING as u64);
        pages += 1;
        ready += page.items.len();
        match page.next_offset {
            Some(next) => query.offset = next,
            None => break,
        }
    }
    assert_eq!((pages, ready), (RUNNING / 200, RUNNING));
    eprintln!(
        "{:?}: {pages} pages of ready users: {:?} per page",
        s.engine(),
        started.elapsed() / pages as u32
    );

    // The last page of all users, by offset and by name cursor.
    let started = Instant::now();
    let page = s
        .list_users(&UserQuery {
            offset: (USERS - 200) as u64,
            limit: 200,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 200);
    assert_eq!(page.next_offset, None);
    eprintln!(
        "{:?}: last page by offset {:?}",
        s.engine(),
        started.elapsed()
    );
    let started = Instant::now();
    let page = s
        .list_users(&UserQuery {
            sort: UserSort::Name,
            after: Some(format!("user-{:05}", USERS - 201)),
            limit: 200,
            ..UserQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 200);
    eprintln!(
        "{:?}: last page by name cursor {:?}",
        s.engine(),
        started.elapsed()
    );

    // The proxy's routing table.
    let started = Instant::now();
    let first = s
        .list_servers_in_states(&[ServerState::Running], None, 1000)
        .await
        .unwrap();
    let rest = s
        .list_servers_in_states(
            &[ServerState::Running],
            Some(first.last().unwrap().server.id),
            1000,
        )
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), RUNNING);
    eprintln!(
        "{:?}: all running servers in 2 pages {:?}",
        s.engine(),
        started.elapsed()
    );

    // name_filter: a substring match over every name (JupyterHub's ILIKE '%…%').
    let started = Instant::now();
    let (page, statements) = counting(s.list_users(&UserQuery {
        name_filter: Some("R-0999".into()),
        limit: 200,
        ..UserQuery::default()
    }))
    .await;
    let page = page.unwrap();
    assert_eq!(statements, 2);
    assert_eq!(page.total, 10);
    assert_eq!(page.items.len(), 10);
    eprintln!(
        "{:?}: name_filter over {USERS} users {:?}",
        s.engine(),
        started.elapsed()
    );

    // The routing table of GET /hub/api/proxy, by pages of 200.
    let started = Instant::now();
    let mut offset = 0;
    while offset < RUNNING as u64 {
        let page = s.running_servers_page(offset, 200).await.unwrap();
        assert_eq!(page.total, RUNNING as u64);
        offset += page.items.len() as u64;
    }
    eprintln!(
        "{:?}: routing table in {} pages of 200: {:?} per page",
        s.engine(),
        RUNNING / 200,
        started.elapsed() / (RUNNING / 200) as u32
    );

    // Token checks.
    let started = Instant::now();
    for token in tokens.iter().step_by(10) {
        s.lookup_token(token, t0).await.unwrap();
    }
    eprintln!(
        "{:?}: token lookup {:?} each",
        s.engine(),
        started.elapsed() / (USERS / 10) as u32
    );
}

/// Single sign-on identities: `(provider, sub)` links to one account, an account to one identity
/// (two logins racing to claim one pre-created account cannot both link it), and deleting the
/// account deletes its identity.
async fn oidc_identities(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    let bob = s.create_user("bob", false).await.unwrap();
    assert!(!s.user_has_oidc_identity(alice.id).await.unwrap());
    s.link_oidc_identity("egi", "sub-1", alice.id)
        .await
        .unwrap();
    assert!(s.user_has_oidc_identity(alice.id).await.unwrap());
    assert_eq!(
        s.oidc_identity_user("egi", "sub-1")
            .await
            .unwrap()
            .map(|u| u.name),
        Some("alice".to_owned())
    );
    // The same identity cannot link a second account, nor a second identity the same account.
    assert_conflict(s.link_oidc_identity("egi", "sub-1", bob.id).await);
    assert_conflict(s.link_oidc_identity("centre", "sub-9", alice.id).await);
    assert_eq!(s.oidc_identity_user("centre", "sub-9").await.unwrap(), None);
    // The same subject at another provider is another identity.
    s.link_oidc_identity("centre", "sub-1", bob.id)
        .await
        .unwrap();
    s.delete_user("alice").await.unwrap();
    assert_eq!(s.oidc_identity_user("egi", "sub-1").await.unwrap(), None);
    let carol = s.create_user("carol", false).await.unwrap();
    s.link_oidc_identity("egi", "sub-1", carol.id)
        .await
        .unwrap();
}

/// JupyterHub 6's `PATCH /users/{name}/servers/{server}`: rename, display name and options of a
/// stopped server, in one transaction.
async fn servers_are_modified(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    let lab = s.create_server(alice.id, "lab").await.unwrap();
    let other = s.create_server(alice.id, "other").await.unwrap();
    s.upsert_oauth_client(&NewOAuthClient {
        client_id: oauth_client_id("alice", "lab"),
        description: "alice/lab".into(),
        secret: "s3cret".into(),
        redirect_uri: "http://x/user/alice/lab/oauth_callback".into(),
        server_id: Some(lab.id),
        allowed_scopes: vec![],
    })
    .await
    .unwrap();

    // Rename with display name and options.
    let changed = s
        .modify_server(
            lab.id,
            &ServerChanges {
                name: Some("notebook".into()),
                display_name: Some("My notebook".into()),
                user_options: Some(json!({"image": "pangeo"})),
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.id, lab.id);
    assert_eq!(changed.name, "notebook");
    assert_eq!(changed.display_name.as_deref(), Some("My notebook"));
    assert_eq!(changed.user_options, json!({"image": "pangeo"}));
    assert_not_found(s.get_server(alice.id, "lab").await);
    assert_eq!(s.get_server(alice.id, "notebook").await.unwrap().id, lab.id);
    // The old name's OAuth client (and what it issued) went with the rename.
    assert_not_found(s.get_oauth_client(&oauth_client_id("alice", "lab")).await);

    // `None` keeps values; only the display name changes.
    let changed = s
        .modify_server(
            lab.id,
            &ServerChanges {
                display_name: Some("Renamed again".into()),
                ..ServerChanges::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.name, "notebook");
    assert_eq!(changed.user_options, json!({"image": "pangeo"}));

    // Names collide ignoring case; the default name and invalid names are refused.
    let rename = |name: &str| ServerChanges {
        name: Some(name.to_owned()),
        ..ServerChanges::default()
    };
    assert_conflict(s.modify_server(lab.id, &rename("OTHER")).await);
    assert_invalid(s.modify_server(lab.id, &rename("")).await);
    assert_invalid(s.modify_server(lab.id, &rename("a/b")).await);
    assert_invalid(
        s.modify_server(
            lab.id,
            &ServerChanges {
                user_options: Some(json!([1])),
                ..ServerChanges::default()
            },
        )
        .await,
    );
    // A case-only rename of the server itself is its own name.
    assert_eq!(
        s.modify_server(other.id, &rename("Other"))
            .await
            .unwrap()
            .name,
        "Other"
    );
    assert_not_found(s.modify_server(999_999, &rename("x")).await);

    // Only stopped or failed servers change.
    let t0 = now();
    s.begin_start(lab.id, &StartRequest::default(), t0)
        .await
        .unwrap();
    assert_invalid(s.modify_server(lab.id, &rename("running")).await);
    s.mark_running(lab.id, "http://127.0.0.1:1/", &json!({}), t0)
        .await
        .unwrap();
    assert_invalid(s.modify_server(lab.id, &rename("running")).await);
    assert_eq!(s.get_server_by_id(lab.id).await.unwrap().name, "notebook");
    s.begin_stop(lab.id).await.unwrap();
    assert_invalid(s.modify_server(lab.id, &rename("running")).await);
    s.mark_failed(lab.id).await.unwrap();
    assert_eq!(
        s.modify_server(lab.id, &rename("revived"))
            .await
            .unwrap()
            .name,
        "revived"
    );
}

/// The routing table's page of running servers, and the users list's `name_filter`.
async fn running_servers_and_name_filter(db: &TestDb) {
    let s = &db.store;
    let t0 = now();
    for name in ["carol", "Alice", "bob", "al_x", "alfred", "zed%"] {
        let user = s.create_user(name, false).await.unwrap();
        for server in ["", "lab"] {
            let row = s.create_server(user.id, server).await.unwrap();
            if name != "bob" && !(name == "alfred" && server == "lab") {
                s.begin_start(row.id, &StartRequest::default(), t0)
                    .await
                    .unwrap();
                s.mark_running(row.id, "http://127.0.0.1:9/", &json!({}), t0)
                    .await
                    .unwrap();
            }
        }
    }
    // 5 users with "", 4 with "lab": by owner, then server name.
    let page = s.running_servers_page(0, 3).await.unwrap();
    assert_eq!(page.total, 9);
    let keys = |items: &[atelier::store::ServerWithOwner]| -> Vec<String> {
        items
            .iter()
            .map(|s| format!("{}/{}", s.user_name, s.server.name))
            .collect()
    };
    assert_eq!(keys(&page.items), ["Alice/", "Alice/lab", "al_x/"]);
    let page = s.running_servers_page(3, 100).await.unwrap();
    assert_eq!(
        keys(&page.items),
        [
            "al_x/lab",
            "alfred/",
            "carol/",
            "carol/lab",
            "zed%/",
            "zed%/lab"
        ]
    );
    assert!(
        s.running_servers_page(9, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_invalid(s.running_servers_page(0, 0).await);

    // name_filter: a substring, ignoring ASCII case; `%` and `_` are literal.
    let filtered = |f: &str| UserQuery {
        sort: UserSort::Name,
        name_filter: Some(f.to_owned()),
        ..UserQuery::default()
    };
    let found = |page: atelier::store::UserPage| -> Vec<String> {
        page.items.into_iter().map(|d| d.user.name).collect()
    };
    let page = s.list_users(&filtered("AL")).await.unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(found(page), ["Alice", "al_x", "alfred"]);
    assert_eq!(
        found(s.list_users(&filtered("l_")).await.unwrap()),
        ["al_x"]
    );
    assert_eq!(found(s.list_users(&filtered("%")).await.unwrap()), ["zed%"]);
    assert_eq!(found(s.list_users(&filtered("ob")).await.unwrap()), ["bob"]);
    assert!(found(s.list_users(&filtered("nobody")).await.unwrap()).is_empty());
    // With a state filter, a subset and pagination.
    let page = s
        .list_users(&UserQuery {
            state: Some(UserStateFilter::Ready),
            limit: 1,
            ..filtered("al")
        })
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.next_offset, Some(1));
    assert_eq!(found(page), ["Alice"]);
    let page = s
        .list_users(&UserQuery {
            only: Some(UserSubset {
                users: names(&["alfred", "bob"]),
                groups: vec![],
            }),
            ..filtered("al")
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(found(page), ["alfred"]);
    // The listing still costs its two statements.
    let (page, statements) = counting(s.list_users(&filtered("al"))).await;
    page.unwrap();
    assert_eq!(statements, 2);
}

// ---- engine-independent -------------------------------------------------------------------

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.create_user("alice", false).await.unwrap();
    // Sequential uses of the pool see one database.
    for _ in 0..3 {
        assert_eq!(store.get_user("alice").await.unwrap().name, "alice");
    }
    store.close().await;
}

#[tokio::test]
async fn unknown_url_is_invalid() {
    assert_invalid(Store::connect("mysql://localhost/x").await);
}

#[test]
fn with_database_replaces_the_path() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}

async fn batch_jobs(db: &TestDb) {
    use atelier::api::v1alpha1::BatchJobPhase;
    use atelier::store::{JobUpdate, NewJob};
    let s = &db.store;
    let alice = s.create_user("alice", false).await.unwrap();
    let bob = s.create_user("bob", false).await.unwrap();
    let new = |name: &str, user_id: i64| NewJob {
        name: name.to_owned(),
        user_id,
        profile: "python".into(),
        command: vec!["python3".into(), "-c".into(), "print(1)".into()],
        spec: json!({"user": "alice", "command": ["python3"], "profile": "python", "deadlineSeconds": 60}),
        node_pool: Some("batch".into()),
        system: "local".into(),
    };
    let a1 = s.create_job(&new("alice-aaaaa", alice.id)).await.unwrap();
    assert_eq!(a1.phase, BatchJobPhase::Pending);
    assert_eq!((a1.user_name.as_str(), a1.command.len()), ("alice", 3));
    assert_eq!(a1.spec["deadlineSeconds"], 60);
    assert!(!a1.cancel_requested && a1.exit_code.is_none() && a1.started.is_none());
    // Names are unique across users; a job of a missing user is NotFound.
    assert!(matches!(
        s.create_job(&new("alice-aaaaa", bob.id)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_not_found(s.create_job(&new("ghost-aaaaa", 9_999)).await);
    assert!(matches!(
        s.create_job(&NewJob {
            spec: json!([1]),
            ..new("alice-bbbbb", alice.id)
        })
        .await,
        Err(StoreError::Invalid(_))
    ));
    let a2 = s.create_job(&new("alice-ccccc", alice.id)).await.unwrap();
    let b1 = s.create_job(&new("bob-ddddd", bob.id)).await.unwrap();
    // A user's job is found only under its owner.
    assert_eq!(s.get_job(alice.id, "alice-aaaaa").await.unwrap(), a1);
    assert_not_found(s.get_job(bob.id, "alice-aaaaa").await);
    // Newest first, paginated.
    let page = s.list_jobs(alice.id, 0, 1).await.unwrap();
    assert_eq!((page.total, page.next_offset), (2, Some(1)));
    assert_eq!(page.items[0].name, a2.name);
    let page = s.list_jobs(alice.id, 1, 1).await.unwrap();
    assert_eq!(
        (page.items[0].name.as_str(), page.next_offset),
        ("alice-aaaaa", None)
    );
    assert!(s.list_jobs(alice.id, 0, 0).await.is_err());
    // Updates: running, then finished, which is final.
    let started = now();
    let running = JobUpdate {
        phase: BatchJobPhase::Running,
        system_id: Some("alice-aaaaa".into()),
        exit_code: None,
        reason: None,
        message: None,
        pid: Some(4242),
        started: Some(started),
        finished: None,
    };
    let a1 = s.update_job(a1.id, &running).await.unwrap();
    assert_eq!(
        (a1.phase, a1.pid, a1.started),
        (BatchJobPhase::Running, Some(4242), Some(started))
    );
    let failed = JobUpdate {
        phase: BatchJobPhase::Failed,
        exit_code: Some(3),
        reason: Some("Error".into()),
        message: Some("exited with code 3".into()),
        finished: Some(now()),
        ..running.clone()
    };
    let a1 = s.update_job(a1.id, &failed).await.unwrap();
    assert_eq!((a1.phase, a1.exit_code), (BatchJobPhase::Failed, Some(3)));
    assert!(matches!(
        s.update_job(a1.id, &running).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.request_job_cancel(a1.id).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get_job_by_id(a1.id).await.unwrap().phase,
        BatchJobPhase::Failed
    );
    // Only unfinished jobs are polled, by id.
    let active: Vec<String> = s
        .list_active_jobs(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(active, [a2.name.clone(), b1.name.clone()]);
    let after: Vec<String> = s
        .list_active_jobs(Some(a2.id), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(after, [b1.name.as_str()]);
    // Those sharing a pool's caps: the pool's unfinished jobs only.
    let g1 = s
        .create_job(&NewJob {
            node_pool: Some("gpu".into()),
            ..new("alice-ggggg", alice.id)
        })
        .await
        .unwrap();
    let on = |pool: &'static str, after: Option<i64>| async move {
        s.list_active_jobs_on_pool(pool, after, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.name)
            .collect::<Vec<String>>()
    };
    assert_eq!(on("batch", None).await, [a2.name.clone(), b1.name.clone()]);
    assert_eq!(on("batch", Some(a2.id)).await, [b1.name.as_str()]);
    assert_eq!(on("gpu", None).await, [g1.name.as_str()]);
    assert!(on("cpu", None).await.is_empty());
    assert!(s.request_job_cancel(a2.id).await.unwrap().cancel_requested);
    // A user's jobs go with the user.
    s.delete_user("bob").await.unwrap();
    assert_not_found(s.get_job_by_id(b1.id).await);
}

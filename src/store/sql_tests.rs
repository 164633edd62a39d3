//! Checks over the store's own SQL, read from its source files.

/// The store's sources, which the checks below read (a new file of the store goes here).
const SOURCES: &[(&str, &str)] = &[
    ("audit.rs", include_str!("audit.rs")),
    ("auth.rs", include_str!("auth.rs")),
    ("hub_ext.rs", include_str!("hub_ext.rs")),
    ("jobs.rs", include_str!("jobs.rs")),
    ("mod.rs", include_str!("mod.rs")),
    ("oidc_ext.rs", include_str!("oidc_ext.rs")),
    ("recent.rs", include_str!("recent.rs")),
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

/// No statement binds its `LIMIT` directly: SQLite (3.4x) reads the value bound to a `LIMIT`
/// parameter while planning, and then marks the statement to be prepared again whenever that
/// parameter is bound, which sqlx does on every execution (the culler's page was parsed and
/// planned anew each time: 12 % of it, bench/hub). `LIMIT CAST($n AS BIGINT)` is not read while
/// planning; PostgreSQL takes it alike.
#[test]
fn no_limit_is_a_bare_parameter() {
    let mut bare = Vec::new();
    for (file, text) in SOURCES {
        for (n, line) in text.lines().enumerate() {
            if line.contains("LIMIT $") {
                bare.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "LIMIT bound directly:\n{}",
        bare.join("\n")
    );
}

/// The statements of `bench/hub`'s PostgreSQL floor (`ready_page.sql`, `ready_count.sql`,
/// which pgbench runs alone next to the hub) are those [`list_users_sql`] writes for the
/// culler's walk, with pgbench's `:limit` and `:offset` for `$1` and `$2`, and
/// without the label comment.
#[test]
fn the_benchmark_floor_runs_the_culler_page_statements() {
    use super::users::list_users_sql;
    use super::{Engine, UserQuery, UserStateFilter};

    let q = UserQuery {
        state: Some(UserStateFilter::Ready),
        limit: 200,
        ..UserQuery::default()
    };
    let sql = list_users_sql(Engine::Postgres, &q).expect("the culler's query");
    assert!(sql.subset_binds.is_empty());
    let statement = |file: &str| -> String {
        let text =
            std::fs::read_to_string(format!("{}/bench/hub/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap_or_else(|e| panic!("bench/hub/{file}: {e}"));
        let sql: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("--") && !l.starts_with('\\'))
            .collect();
        sql.join(" ")
            .trim()
            .trim_end_matches(';')
            .replace(":limit", "$1")
            .replace(":offset", "$2")
    };
    // Without the label comment: pgbench would read its `:page` as a variable.
    let unlabelled = |sql: &str, label: &str| {
        let prefix = format!("/* {label} */ ");
        sql.strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{label}: no label comment"))
            .to_owned()
    };
    assert_eq!(
        statement("ready_page.sql"),
        unlabelled(&sql.page, "list_users:page"),
        "bench/hub/ready_page.sql"
    );
    assert_eq!(
        statement("ready_count.sql"),
        unlabelled(&sql.count, "list_users:count"),
        "bench/hub/ready_count.sql"
    );
}

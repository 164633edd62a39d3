//! The test-database harness shared by the integration tests: a fresh SQLite file or a fresh,
//! uniquely named PostgreSQL database (created from `ATELIER_TEST_POSTGRES_URL`), removed when
//! dropped (also on panic), and `say` to write past the test harness's capture.
//!
//! Each test file includes it with `mod common;` and uses what it needs.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Once;

use atelier::store::tokens::generate_token;
use sqlx::Connection as _;

pub mod chromium;
pub mod gateway;
pub mod hub;
pub mod kernel;
pub mod launch;
pub mod oidc;
pub mod resilience;
pub mod s3;
pub mod slurm;
pub mod stack;
pub mod story;

pub const POSTGRES_VAR: &str = "ATELIER_TEST_POSTGRES_URL";

/// Whether a `Set-Cookie` value clears its cookie: an empty value, `Max-Age` of zero or less,
/// or an `Expires` in 1970 (what servers send to delete one). Only the attributes count: a value
/// that happens to contain `1970` (a random hex token does, about once in a thousand) is a
/// cookie like any other.
pub fn cookie_cleared(set_cookie: &str) -> bool {
    let mut parts = set_cookie.split(';');
    let value = parts
        .next()
        .and_then(|pair| pair.split_once('='))
        .map_or("", |(_, v)| v.trim());
    if value.is_empty() || value == "\"\"" {
        return true;
    }
    parts.any(|attribute| {
        let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
        let (key, val) = (key.trim().to_ascii_lowercase(), val.trim());
        (key == "max-age" && val.parse::<i64>().is_ok_and(|n| n <= 0))
            || (key == "expires" && val.contains("1970"))
    })
}

/// Writes to the process's stderr past the test harness's capture (which takes `eprintln!`).
pub fn say(message: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// A fresh database, removed when dropped (also on panic).
pub struct TestDb {
    url: String,
    _cleanup: Cleanup,
}

enum Cleanup {
    /// Nothing to remove here (e.g. the file lies in a directory its owner removes).
    Nothing,
    SqliteFile(PathBuf),
    Postgres {
        admin_url: String,
        database: String,
    },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::Nothing => {}
            Cleanup::SqliteFile(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            Cleanup::Postgres {
                admin_url,
                database,
            } => {
                let (admin_url, name) = (admin_url.clone(), database.clone());
                // Drop runs inside the test's runtime: drop the database from a thread of its own.
                let dropped = std::thread::spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(async move {
                            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                            sqlx::query(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            )))
                            .execute(&mut admin)
                            .await?;
                            admin.close().await
                        })
                })
                .join();
                if !matches!(dropped, Ok(Ok(()))) {
                    eprintln!("could not drop test database {database}");
                }
            }
        }
    }
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    format!("{base}/{database}{query}")
}

impl TestDb {
    /// A fresh SQLite file `<temp dir>/<prefix>-<random>.db`, removed (with its `-wal` and `-shm`)
    /// when dropped.
    pub fn sqlite(prefix: &str) -> TestDb {
        let path = std::env::temp_dir().join(format!("{prefix}-{}.db", &generate_token()[..16]));
        TestDb {
            url: format!("sqlite://{}", path.display()),
            _cleanup: Cleanup::SqliteFile(path),
        }
    }

    /// SQLite at `path`, left in place when dropped (its directory's owner removes it).
    pub fn sqlite_at(path: PathBuf) -> TestDb {
        TestDb {
            url: format!("sqlite://{}", path.display()),
            _cleanup: Cleanup::Nothing,
        }
    }

    /// A fresh PostgreSQL database `<prefix>_<random>` on the server of
    /// `ATELIER_TEST_POSTGRES_URL`, dropped (`WITH (FORCE)`) when dropped; `None` (after saying
    /// `SKIPPED: <what> (set ATELIER_TEST_POSTGRES_URL)` once) when the variable is not set.
    pub async fn postgres(prefix: &str, what: &str) -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(POSTGRES_VAR) else {
            static SAID: Once = Once::new();
            SAID.call_once(|| say(format!("SKIPPED: {what} (set {POSTGRES_VAR})")));
            return None;
        };
        let database = format!("{prefix}_{}", &generate_token()[..16]);
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to ATELIER_TEST_POSTGRES_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database}\""
        )))
        .execute(&mut admin)
        .await
        .expect("create the test database");
        admin.close().await.expect("close the admin connection");
        Some(TestDb {
            url: with_database(&admin_url, &database),
            _cleanup: Cleanup::Postgres {
                admin_url,
                database,
            },
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

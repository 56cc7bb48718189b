//! Which store the integration tests run against, and a database of its
//! own for each test on the PostgreSQL server of the postgres pass.
//!
//! `JOBBOX_TEST_STORE` chooses the backend: `sqlite` (the default) or
//! `postgres`. For `postgres`, every test harness makes a fresh database
//! with [`Database::create`] on the server that `JOBBOX_TEST_PG` names
//! (default [`DEFAULT_SERVER`]), named `jobbox_t_<pid>_<n>`, and drops it
//! (`WITH (FORCE)`) when it is done, so tests run in parallel on one server.
//!
//! The blocking `postgres` client drives a runtime of its own, which cannot
//! run inside the tests' tokio runtimes: everything here talks to the
//! server from a thread of its own.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use postgres::{Client, NoTls};

/// The server of the postgres pass unless `JOBBOX_TEST_PG` says otherwise.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long connecting to the test server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The store the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The backend `JOBBOX_TEST_STORE` names (`sqlite` if it is unset).
///
/// # Panics
///
/// If it names something else.
pub fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| match std::env::var("JOBBOX_TEST_STORE") {
        Err(_) => Backend::Sqlite,
        Ok(v) => match v.trim() {
            "" | "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            other => panic!("JOBBOX_TEST_STORE={other:?}: expected `sqlite` or `postgres`"),
        },
    })
}

/// The URL of the server the postgres pass uses: `JOBBOX_TEST_PG`, else
/// [`DEFAULT_SERVER`]. Its database is the one connected to for creating
/// and dropping the tests' databases.
pub fn server_url() -> String {
    match std::env::var("JOBBOX_TEST_PG") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => DEFAULT_SERVER.to_owned(),
    }
}

/// `url` with its database replaced by `database` (any `?options` kept).
///
/// # Panics
///
/// If `url` is not a `postgres://` or `postgresql://` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or_else(|| panic!("JOBBOX_TEST_PG: expected a postgres:// URL, got {url:?}"));
    let scheme = &url[..url.len() - rest.len()];
    let (rest, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    format!("{scheme}{authority}/{database}{query}")
}

/// Whether the test server answers (checked once per test process).
pub fn reachable() -> Result<(), String> {
    static REACHABLE: OnceLock<Result<(), String>> = OnceLock::new();
    REACHABLE
        .get_or_init(|| {
            let url = server_url();
            off_runtime(move || {
                connect(&url)
                    .and_then(|mut c| c.simple_query("SELECT 1").map_err(|e| e.to_string()))
                    .map(drop)
                    .map_err(|e| format!("the PostgreSQL server at {url} is unreachable: {e}"))
            })
        })
        .clone()
}

/// Runs `f` on a thread of its own (the blocking client cannot run on a
/// tokio runtime's thread), passing on its panic.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Connects to `url` (call it off the runtime: see [`off_runtime`]).
pub fn connect(url: &str) -> Result<Client, String> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| format!("invalid PostgreSQL URL {url:?}: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("jobbox-tests");
    config.connect(NoTls).map_err(|e| e.to_string())
}

/// A database of one test's own on the test server, dropped with it.
#[derive(Debug)]
pub struct Database {
    name: String,
    url: String,
    server: String,
}

impl Database {
    /// Creates a fresh, empty database `jobbox_t_<pid>_<n>`.
    ///
    /// # Panics
    ///
    /// If the server is unreachable or refuses.
    pub fn create() -> Database {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let server = server_url();
        if let Err(e) = reachable() {
            panic!(
                "JOBBOX_TEST_STORE=postgres, but {e} (set JOBBOX_TEST_PG to a server's URL, or \
                 unset JOBBOX_TEST_STORE to test SQLite)"
            );
        }
        let name = format!(
            "jobbox_t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let url = with_database(&server, &name);
        off_runtime(|| -> Result<(), String> {
            let mut c = connect(&server)?;
            // A leftover of an earlier run whose process had the same id.
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .map_err(|e| e.to_string())?;
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("cannot create test database {name} on {server}: {e}"));
        Database { name, url, server }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL (the server's, with this database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `sql` (one or more statements) in the database.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        off_runtime(|| {
            connect(&self.url)?
                .batch_execute(sql)
                .map_err(|e| e.to_string())
        })
    }

    /// The first column of the one row `sql` returns, as an integer.
    pub fn query_i64(&self, sql: &str) -> Result<i64, String> {
        off_runtime(|| {
            let row = connect(&self.url)?
                .query_one(sql, &[])
                .map_err(|e| e.to_string())?;
            row.try_get::<_, i64>(0).map_err(|e| e.to_string())
        })
    }
}

impl Drop for Database {
    /// Drops the database, ending any connection still open on it.
    fn drop(&mut self) {
        let result = off_runtime(|| -> Result<(), String> {
            connect(&self.server)?
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = result {
            // Not a panic: this may run while a failed test unwinds.
            eprintln!("cannot drop test database {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "t2"),
            "postgresql://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "t3"), "postgres://h:1/t3");
        assert_eq!(
            with_database("postgres://h?x=y", "t4"),
            "postgres://h/t4?x=y"
        );
    }
}

//! For the store's unit tests: a scratch database of a test's own on the
//! PostgreSQL at `JOBBOX_TEST_PG_URL` (default: the local server, user
//! `postgres`), dropped (with any connection left) at the end.

use std::time::Duration;

use postgres::{Client, NoTls};

use super::{PgOptions, PgStore};

pub(super) struct Scratch {
    admin: Client,
    name: String,
    pub(super) url: String,
}

impl Scratch {
    /// A fresh database named after `prefix`, or `None` (saying why) when
    /// no server is reachable.
    pub(super) fn new(prefix: &str) -> Option<Scratch> {
        let admin_url = std::env::var("JOBBOX_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut config: postgres::Config = admin_url.parse().ok()?;
        config.connect_timeout(Duration::from_secs(2));
        let mut admin = match config.connect(NoTls) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: no PostgreSQL at {admin_url}: {e}");
                return None;
            }
        };
        let name = format!(
            "jobbox_{prefix}_{}_{:08x}",
            std::process::id(),
            fastrand::u32(..)
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = match admin_url.rfind('/') {
            Some(i) if admin_url[..i].contains('@') => format!("{}/{name}", &admin_url[..i]),
            _ => format!("{admin_url} dbname={name}"),
        };
        Some(Scratch { admin, name, url })
    }

    pub(super) fn open(&self) -> PgStore {
        PgStore::open(&PgOptions {
            pool: 2,
            listen: false,
            ..PgOptions::new(self.url.clone())
        })
        .unwrap()
    }

    /// A connection of the test's own to the scratch database.
    pub(super) fn client(&self) -> Client {
        self.url
            .parse::<postgres::Config>()
            .unwrap()
            .connect(NoTls)
            .unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

//! `jobbox migrate` and `jobbox store copy`: the database itself.

use clap::Subcommand;

use crate::config::Config;
use crate::store::postgres::PgStore;
use crate::store::{StoreOptions, copy};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy everything jobbox keeps (jobs, attempts, schedules, kv, outbox,
    /// breakers, rate limits, pauses) from one database to another, e.g.
    /// from the embedded SQLite file to PostgreSQL. Stop the hosts on the
    /// source first: jobs finished after the copy began are not copied.
    Copy {
        /// The source: a SQLite file or a postgres:// URL (default: the
        /// configured store).
        #[arg(long, value_name = "PATH|URL")]
        from: Option<String>,
        /// The target: a SQLite file or a postgres:// URL.
        #[arg(long, value_name = "PATH|URL")]
        to: String,
        /// Delete what the target holds first (else a target with any
        /// jobbox data is refused).
        #[arg(long)]
        replace: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn main(config: &Config, cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Copy {
            from,
            to,
            replace,
            json,
        } => {
            let from = from
                .map(|f| StoreOptions::from_arg(&f))
                .unwrap_or_else(|| config.store.clone());
            let to = StoreOptions::from_arg(&to);
            let started = std::time::Instant::now();
            let report = copy::copy(&from, &to, replace).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
                return Ok(());
            }
            outln!("{}", report.to_string().trim_end())?;
            let total: u64 = report.tables.iter().map(|(_, n)| n).sum();
            outln!(
                "copied {total} rows from {} to {} in {:.1}s",
                from.describe(),
                to.describe(),
                started.elapsed().as_secs_f64()
            )?;
            Ok(())
        }
    }
}

/// `jobbox migrate`: brings the configured database's schema up to this
/// binary's version (hosts also do it as they start), and says what it did.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let opts = config.store.clone();
    let (before, opened) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let before = schema_version(&opts)?;
        Ok((before, crate::store::open(&opts)?))
    })
    .await??;
    opened.store.close().await?;
    let now = match &config.store {
        StoreOptions::Sqlite(_) => crate::store::sqlite::SCHEMA_VERSION,
        StoreOptions::Postgres(_) => crate::store::postgres::SCHEMA_VERSION,
    };
    if before == now {
        outln!(
            "{}: schema version {now}, up to date",
            config.store.describe()
        )?;
    } else {
        outln!(
            "{}: migrated from schema version {before} to {now}",
            config.store.describe()
        )?;
    }
    Ok(())
}

/// The schema version of the database `opts` names, without migrating
/// (0: none yet).
fn schema_version(opts: &StoreOptions) -> anyhow::Result<usize> {
    Ok(match opts {
        StoreOptions::Postgres(o) => PgStore::schema_version(o)?,
        StoreOptions::Sqlite(o) => {
            if !o.path.exists() {
                return Ok(0);
            }
            let conn = rusqlite::Connection::open_with_flags(
                &o.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            v as usize
        }
    })
}

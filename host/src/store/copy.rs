//! `jobbox store copy`: moves everything jobbox keeps from one database to
//! another (SQLite to PostgreSQL when one machine is no longer enough, or
//! back), keeping ids, epochs, attempts and their recordings, schedules
//! and their fires, kv entries and tombstones, outbox events and the
//! safeguards' state.
//!
//! Both ends are opened through their stores first, so both carry the
//! current schema. The source is read in one snapshot (a read transaction)
//! and the target written in one transaction: a copy that fails writes
//! nothing. A target that already holds jobbox data is refused unless the
//! caller asks to replace it. Host heartbeats are not copied: they belong
//! to the hosts of the old database.

use std::fmt;

use anyhow::{anyhow, bail};

use postgres::types::{ToSql, Type};
use rusqlite::OptionalExtension;

use super::StoreOptions;
use super::postgres::PgOptions;
use super::sqlite::SqliteOptions;

type Result<T> = anyhow::Result<T>;

/// The tables copied, parents before children.
pub const TABLES: &[&str] = &[
    "jobs",
    "attempts",
    "kv",
    "outbox",
    "kv_writes",
    "schedules",
    "schedule_fires",
    "breakers",
    "rate_limits",
    "pauses",
];

/// Rows copied per table, in [`TABLES`] order.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (table, n) in &self.tables {
            writeln!(f, "{table:<16} {n:>10}")?;
        }
        Ok(())
    }
}

/// One cell, in the types both schemas share.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A whole table: its column names and rows.
#[derive(Debug)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

/// Copies every table of [`TABLES`] from `from` to `to`. With `replace`,
/// the target's rows are deleted first (in the same transaction);
/// without, a target holding any is refused.
pub async fn copy(
    from: &StoreOptions,
    to: &StoreOptions,
    replace: bool,
) -> anyhow::Result<CopyReport> {
    if same_place(from, to) {
        bail!("the source and the target are the same database");
    }
    // Open (and so create or migrate) both ends through their stores.
    for opts in [from, to] {
        let opts = opts.clone();
        let opened = tokio::task::spawn_blocking(move || super::open(&opts)).await??;
        opened.store.close().await?;
    }
    let (from, to) = (from.clone(), to.clone());
    tokio::task::spawn_blocking(move || {
        let tables = match &from {
            StoreOptions::Sqlite(o) => read_sqlite(o)?,
            StoreOptions::Postgres(o) => read_postgres(o)?,
        };
        match &to {
            StoreOptions::Sqlite(o) => write_sqlite(o, &tables, replace)?,
            StoreOptions::Postgres(o) => write_postgres(o, &tables, replace)?,
        }
        Ok(CopyReport {
            tables: TABLES
                .iter()
                .zip(&tables)
                .map(|(name, t)| (name.to_string(), t.rows.len() as u64))
                .collect(),
        })
    })
    .await?
}

fn same_place(a: &StoreOptions, b: &StoreOptions) -> bool {
    match (a, b) {
        (StoreOptions::Sqlite(a), StoreOptions::Sqlite(b)) => {
            let canon = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
            canon(&a.path) == canon(&b.path)
        }
        (StoreOptions::Postgres(a), StoreOptions::Postgres(b)) => a.target() == b.target(),
        _ => false,
    }
}

fn refuse_non_empty(table: &str, rows: i64) -> anyhow::Error {
    anyhow!(
        "the target is not empty (table {table} has {rows} rows): pass --replace to delete \
         what it holds first"
    )
}

fn read_sqlite(o: &SqliteOptions) -> Result<Vec<Table>> {
    let mut conn =
        rusqlite::Connection::open_with_flags(&o.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| anyhow!("opening {}: {e}", o.path.display()))?;
    conn.busy_timeout(o.busy_timeout)?;
    // One read transaction: every table from the same snapshot.
    let tx = conn.transaction()?;
    let mut out = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let mut stmt = tx.prepare(&format!("SELECT * FROM {table}"))?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let n = columns.len();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                            rusqlite::types::ValueRef::Real(v) => Value::Real(v),
                            rusqlite::types::ValueRef::Text(t) => {
                                Value::Text(String::from_utf8_lossy(t).into_owned())
                            }
                            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<Value>>>()
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        out.push(Table { columns, rows });
    }
    Ok(out)
}

fn write_sqlite(o: &SqliteOptions, tables: &[Table], replace: bool) -> Result<()> {
    let mut conn = rusqlite::Connection::open(&o.path)
        .map_err(|e| anyhow!("opening {}: {e}", o.path.display()))?;
    conn.busy_timeout(o.busy_timeout)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for table in TABLES {
        let rows: i64 = tx
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        if rows > 0 && !replace {
            return Err(refuse_non_empty(table, rows));
        }
    }
    for table in TABLES.iter().rev() {
        tx.execute(&format!("DELETE FROM {table}"), [])?;
    }
    for (name, table) in TABLES.iter().zip(tables) {
        let sql = format!(
            "INSERT INTO {name} ({}) VALUES ({})",
            table.columns.join(", "),
            (1..=table.columns.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut stmt = tx.prepare(&sql)?;
        for row in &table.rows {
            let params: Vec<rusqlite::types::Value> = row
                .iter()
                .map(|v| match v {
                    Value::Null => rusqlite::types::Value::Null,
                    Value::Int(i) => rusqlite::types::Value::Integer(*i),
                    Value::Real(r) => rusqlite::types::Value::Real(*r),
                    Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
                    Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
                })
                .collect();
            stmt.execute(rusqlite::params_from_iter(params))?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn pg_client(o: &PgOptions) -> Result<postgres::Client> {
    let mut config: postgres::Config = o
        .url
        .parse()
        .map_err(|e| anyhow!("invalid PostgreSQL URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(o.connect_timeout);
    }
    config
        .connect(postgres::NoTls)
        .map_err(|e| anyhow!("cannot connect to PostgreSQL at {}: {e}", o.target()))
}

fn read_postgres(o: &PgOptions) -> Result<Vec<Table>> {
    let mut client = pg_client(o)?;
    // One snapshot for every table.
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let mut out = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let stmt = tx.prepare(&format!("SELECT * FROM {table}"))?;
        let columns: Vec<String> = stmt
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
        let rows = tx
            .query(&stmt, &[])?
            .iter()
            .map(|r| {
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| pg_value(r, i, t))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Table { columns, rows });
    }
    tx.commit()?;
    Ok(out)
}

fn pg_value(r: &postgres::Row, i: usize, t: &Type) -> Result<Value> {
    Ok(match *t {
        Type::INT2 => r.get::<_, Option<i16>>(i).map(|v| Value::Int(v.into())),
        Type::INT4 => r.get::<_, Option<i32>>(i).map(|v| Value::Int(v.into())),
        Type::INT8 => r.get::<_, Option<i64>>(i).map(Value::Int),
        Type::BOOL => r.get::<_, Option<bool>>(i).map(|v| Value::Int(v.into())),
        Type::FLOAT8 => r.get::<_, Option<f64>>(i).map(Value::Real),
        Type::FLOAT4 => r.get::<_, Option<f32>>(i).map(|v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR => r.get::<_, Option<String>>(i).map(Value::Text),
        Type::BYTEA => r.get::<_, Option<Vec<u8>>>(i).map(Value::Blob),
        ref other => {
            bail!(
                "column {} has type {other}, which copy does not know",
                r.columns()[i].name()
            );
        }
    }
    .unwrap_or(Value::Null))
}

/// `v` as a parameter of PostgreSQL type `t`.
fn pg_param(v: &Value, t: &Type, column: &str) -> Result<Box<dyn ToSql + Sync>> {
    let mismatch = || anyhow!("column {column}: cannot store {v:?} as PostgreSQL {t}");
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    Ok(match (v, t) {
        (Value::Null, &Type::INT4) => Box::new(None::<i32>),
        (Value::Null, &Type::INT8) => Box::new(None::<i64>),
        (Value::Null, &Type::BOOL) => Box::new(None::<bool>),
        (Value::Null, &Type::FLOAT8) => Box::new(None::<f64>),
        (Value::Null, &Type::TEXT) => Box::new(None::<String>),
        (Value::Null, &Type::BYTEA) => Box::new(None::<Vec<u8>>),
        (_, &Type::INT4) => Box::new(
            int(v)
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(mismatch)?,
        ),
        (_, &Type::INT8) => Box::new(int(v).ok_or_else(mismatch)?),
        (_, &Type::BOOL) => Box::new(int(v).ok_or_else(mismatch)? != 0),
        (Value::Real(r), &Type::FLOAT8) => Box::new(*r),
        (Value::Int(i), &Type::FLOAT8) => Box::new(*i as f64),
        (Value::Text(s), &Type::TEXT) => Box::new(s.clone()),
        (Value::Blob(b), &Type::BYTEA) => Box::new(b.clone()),
        // SQLite may hold text in a blob column and the other way round.
        (Value::Text(s), &Type::BYTEA) => Box::new(s.clone().into_bytes()),
        (Value::Blob(b), &Type::TEXT) => {
            Box::new(String::from_utf8(b.clone()).map_err(|_| mismatch())?)
        }
        _ => return Err(mismatch()),
    })
}

fn write_postgres(o: &PgOptions, tables: &[Table], replace: bool) -> Result<()> {
    let mut client = pg_client(o)?;
    let mut tx = client.transaction()?;
    for table in TABLES {
        let rows: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
            .get(0);
        if rows > 0 && !replace {
            return Err(refuse_non_empty(table, rows));
        }
    }
    tx.batch_execute(&format!("TRUNCATE {}", TABLES.join(", ")))?;
    for (name, table) in TABLES.iter().zip(tables) {
        if table.rows.is_empty() {
            continue;
        }
        let columns = table.columns.join(", ");
        let types: Vec<Type> = tx
            .prepare(&format!("SELECT {columns} FROM {name}"))?
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        // Binary COPY: one stream per table, no statement per row.
        let sink = tx.copy_in(&format!("COPY {name} ({columns}) FROM STDIN BINARY"))?;
        let mut writer = postgres::binary_copy::BinaryCopyInWriter::new(sink, &types);
        for row in &table.rows {
            let params = row
                .iter()
                .zip(&types)
                .zip(&table.columns)
                .map(|((v, t), c)| pg_param(v, t, c))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
            writer.write(&refs)?;
        }
        writer.finish()?;
    }
    // New ids continue after the copied ones.
    for (table, seq) in [("jobs", "jobs_id_seq"), ("outbox", "outbox_id_seq")] {
        tx.execute(
            &format!(
                "SELECT setval('{seq}', GREATEST((SELECT max(id) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )?;
    }
    tx.commit()?;
    Ok(())
}

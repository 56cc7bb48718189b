//! jobbox: a durable job executor that runs each job's side effect inside a
//! sandboxed WebAssembly component.
//!
//! Code map:
//! - [`job`]: the job lifecycle ([`job::JobState`]) and the records that
//!   cross the store boundary. No SQL, no wasmtime.
//! - [`store`]: the [`store::Store`] trait (every transition fenced) and the
//!   embedded SQLite backend with its single group-committing writer.
//! - [`sandbox`]: the wasmtime engine, plugin compilation, and one limited
//!   instance per attempt (fuel, epoch deadline, memory), with the host's
//!   imports: `log`, buffered `kv` and `outbox`, allowlisted wasi:http.
//!   No SQL.
//! - [`plugins`]: discovery of `<kind>.wasm` files and each kind's
//!   [`plugins::PluginSettings`].
//! - [`policy`]: retry policy, circuit breaker and rate limit (GCRA) as
//!   values; their state lives in the store.
//! - [`schedule`]: recurring schedules: definitions, cadences (cron with
//!   time zones, or fixed intervals), and the plan of one fire. No SQL.
//! - [`enqueue`]: the checks every enqueue passes, whoever enqueues.
//! - [`retention`]: how long finished work is kept.
//! - [`executor`]: the [`executor::Host`]: producer, attempts, lease
//!   keeper, rescuer, outbox relay, scheduler, cleaner, graceful shutdown.
//! - [`health`]: each loop's iterations and freshness: readiness.
//! - [`config`]: raw TOML and the validated [`config::Config`], composed of
//!   the settings types the modules above own.
//! - [`time`]: milliseconds since the epoch and the injectable clock.
//! - [`metrics`]: counters the host keeps about itself.
//! - [`outbox`]: outbox events, their delivery states and the backlog cap.
//! - [`api`]: the admin HTTP API (axum), `/metrics`, `/healthz`, `/readyz`.
//! - [`admin`]: operators' actions on schedules, shared by the CLI and the API.
//! - [`cli`]: the `jobbox` command line; `main.rs` only calls into it.
//! - [`bench`]: `jobbox bench`, the end-to-end benchmark and its floors.

pub mod admin;
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod enqueue;
pub mod executor;
pub mod health;
pub mod job;
pub mod metrics;
pub mod outbox;
pub mod plugins;
pub mod policy;
pub mod replay;
pub mod retention;
pub mod sandbox;
pub mod scaffold;
pub mod schedule;
pub mod store;
pub mod testing;
pub mod throughput;
pub mod time;

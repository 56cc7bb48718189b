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
//! - [`plugins`]: discovery of `<kind>.wasm` files.
//! - [`executor`]: the [`executor::Host`]: producer, attempts, lease
//!   keeper, rescuer, outbox relay, graceful shutdown.
//! - [`config`]: raw TOML and the validated [`config::Config`].
//! - [`time`]: milliseconds since the epoch and the injectable clock.
//! - [`metrics`]: counters the host keeps about itself.
//! - [`outbox`]: outbox events, their delivery states and the backlog cap.
//! - [`cli`]: the `jobbox` command line; `main.rs` only calls into it.
//! - [`bench`]: `jobbox bench`, the end-to-end benchmark and its floors.

pub mod bench;
pub mod cli;
pub mod config;
pub mod executor;
pub mod job;
pub mod metrics;
pub mod outbox;
pub mod plugins;
pub mod sandbox;
pub mod store;
pub mod time;

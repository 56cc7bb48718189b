//! jobbox integration tests: one binary, a module per area.
//!
//! Tests drive the library API (`Host`, `Store`, `Sandbox`) and the `jobbox`
//! binary, against real SQLite files in temporary directories and the real
//! plugins built from `plugins/` by `tests/build.rs`.
//!
//! The same tests run against PostgreSQL with `JOBBOX_TEST_STORE=postgres`
//! (each test on a database of its own on the server `JOBBOX_TEST_PG`
//! names; see `support.rs` and `jobbox_tests::pg`); `scripts/test` runs the
//! modules that touch the store a second time that way. `postgres.rs` holds
//! what only PostgreSQL does (skipped, saying so, in the SQLite pass).

mod api;
mod authoring;
mod binary;
mod cli;
mod dashboard;
mod faulty;
mod http;
mod kv;
mod limits;
mod outbox;
mod plugins;
mod polish;
mod postgres;
mod queue;
mod reload;
mod retention;
mod retry;
mod safeguards;
mod schedules;
mod server;
mod store;
mod support;

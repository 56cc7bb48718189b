//! jobbox integration tests: one binary, a module per area.
//!
//! Tests drive the library API (`Host`, `Store`, `Sandbox`) and the `jobbox`
//! binary, against real SQLite files in temporary directories and the real
//! plugins built from `plugins/` by `tests/build.rs`.

mod api;
mod authoring;
mod binary;
mod cli;
mod faulty;
mod http;
mod kv;
mod limits;
mod outbox;
mod plugins;
mod polish;
mod queue;
mod reload;
mod retention;
mod retry;
mod safeguards;
mod schedules;
mod server;
mod support;

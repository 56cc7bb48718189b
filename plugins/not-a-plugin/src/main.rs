//! Test artifact `not-a-plugin`: an ordinary WASI command.
//!
//! Built for `wasm32-wasip2` it is a valid component, but one that exports
//! `wasi:cli/run` instead of the jobbox `plugin` world's `run`: the host must
//! refuse to load it as a plugin.

fn main() {
    println!("hi");
}

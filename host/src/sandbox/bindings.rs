//! Host bindings generated from `wit/plugin.wit`.
//!
//! Imports and exports are async: the host's `log` import never blocks, but
//! host calls that wait on I/O will, and every export runs on a fiber so the
//! epoch callback can yield to tokio in the middle of guest code.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async },
    exports: { default: async },
});

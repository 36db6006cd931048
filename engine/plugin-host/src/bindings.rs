//! Host bindings generated from `plugins/wit/<version>/`, one module per `kiln:plugin` version
//! this engine serves. The capabilities implement the newest version's host traits; `v0_1`
//! components are served through `capability::v0_1`, which converts and delegates.

/// `kiln:plugin@0.1.0`, as released (kept for components built against it).
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../plugins/wit/0.1.0",
        world: "plugin",
        imports: { default: async },
        exports: { default: async },
    });
}

/// `kiln:plugin@0.2.0`, the current version.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../../plugins/wit/0.2.0",
        world: "plugin",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use v0_2::kiln::plugin::{log, process, progress, types};

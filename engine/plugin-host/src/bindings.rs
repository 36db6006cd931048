//! Host bindings generated from `plugins/wit` (kiln:plugin@0.1.0).

wasmtime::component::bindgen!({
    path: "../../plugins/wit",
    world: "plugin",
    imports: { default: async },
    exports: { default: async },
});

pub use kiln::plugin::{log, process, progress, types};

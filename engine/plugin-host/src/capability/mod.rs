//! Host capabilities, one module each. Each implements its generated WIT host trait and checks
//! its own grants; a plugin reaches the engine through these alone. `v0_1` serves components
//! built against `kiln:plugin@0.1.0` by converting their calls to the current version's.

pub mod files;
pub mod log;
pub mod process;
pub mod progress;
mod v0_1;

impl crate::bindings::types::Host for crate::sandbox::StepState {}

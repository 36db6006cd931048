//! Host capabilities, one module each. Each implements its generated WIT host trait and checks
//! its own grants; a plugin reaches the engine through these alone.

pub mod files;
pub mod log;
pub mod process;
pub mod progress;

impl crate::bindings::types::Host for crate::sandbox::StepState {}

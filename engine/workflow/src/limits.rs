//! Every bound on what a workflow file may ask for, in one place.
//!
//! Each keeps the work of reading, validating or rendering a workflow bounded and linear in
//! the size of the file, whatever the file holds. A file beyond a limit is refused with a
//! diagnostic that names the limit, never with a panic or an exhausted machine.

pub use crate::expr::{MAX_DEPTH as MAX_EXPRESSION_DEPTH, MAX_EXPRESSION_LEN};
pub use crate::expr::{MAX_RENDER_WORK, MAX_RENDERED_BYTES};

/// Largest workflow file, in bytes.
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting of mappings and lists in a workflow file.
pub const MAX_YAML_DEPTH: usize = 64;
/// Most YAML nodes (scalars, mappings, lists, aliases) in a workflow file.
pub const MAX_YAML_NODES: usize = 1_000_000;
/// Most steps in a workflow.
pub const MAX_STEPS: usize = 10_000;
/// Shortest step `timeout`: below it, a step that finishes at its first poll would never be
/// held to it.
pub const MIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest step `timeout` (a year).
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Checks that a YAML text from outside (a dataset's `data.yaml`, a `--param` value) is within
/// [`MAX_FILE_BYTES`], [`MAX_YAML_DEPTH`] and [`MAX_YAML_NODES`] before a YAML library reads
/// it: deep nesting costs the library quadratic time. The error says where and why.
pub fn check_yaml(source: &str) -> Result<(), String> {
    if source.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes of YAML; at most {MAX_FILE_BYTES} are read",
            source.len()
        ));
    }
    crate::position::PositionIndex::build(source)
        .map(drop)
        .map_err(|e| {
            format!(
                "line {}, column {}: {}",
                e.pos.line, e.pos.column, e.message
            )
        })
}

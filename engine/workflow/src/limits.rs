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

/// Reads the text file `path`, at most `max` bytes of it: anything but a regular file (a FIFO
/// that would block, `/dev/zero` that never ends, a directory) and anything larger is refused
/// before it is read, with an error that says which. `NotFound` stays `NotFound`.
pub fn read_text(path: &std::path::Path, max: usize) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    // Looked at before it is opened: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max as u64 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} bytes; at most {max} are read", meta.len()),
        ));
    }
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    file.take(max as u64 + 1).read_to_string(&mut text)?;
    if text.len() > max {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("more than {max} bytes; at most {max} are read"),
        ));
    }
    Ok(text)
}

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

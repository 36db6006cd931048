//! Ultralytics arguments: the known keys, config merging and CLI rendering.
//!
//! Pure functions only (no host calls), so they are unit-tested natively.
//!
//! - `keys`: the arguments Ultralytics knows and what kind of value each takes; the keys user
//!   mode may override and those the plugin owns.
//! - `values`: checking and coercing one value.
//! - `config`: the base config, overrides merged onto it, the plugin's own keys, the config
//!   `train` is handed.
//! - `options`: the options a training form offers (resolve-config's `options` output).
//! - `render`: the `yolo` argument list and the config as YAML.
//! - `shell`: the shell-style preview of a command line.

mod config;
mod keys;
mod options;
mod render;
mod shell;
mod values;

pub use config::{
    Mode, Rejected, ResolveRequest, Resolved, check_config, parse_base_config, resolve,
    resolve_reporting, set_plugin_keys, split_output_dir,
};
pub use keys::{
    DEFAULT_EPOCHS, DEFAULT_IMGSZ, KNOWN_KEYS, Kind, RESERVED_KEYS, TASKS, USER_KEYS, closest_key,
    kind_of,
};
pub use options::{description, option_type, options};
pub use render::{key_values, ordered_keys, render_value, resume_args, to_yaml, train_args};
pub use shell::preview;
pub use values::{check_value, int_of};

#[cfg(test)]
mod tests;

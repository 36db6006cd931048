//! What the operator grants each plugin: `configs/plugins.yaml`.
//!
//! ```yaml
//! defaults:
//!   memory_mb: 256             # linear memory cap per plugin instance
//!   cpu_seconds_per_call: 10   # guest CPU time per call (time spent waiting in host calls excluded)
//! plugins:
//!   ultralytics:
//!     programs: [yolo]         # programs it may launch, found on the engine's search path
//!     env: [CUDA_HOME]         # engine environment variables passed on to those programs
//!     memory_mb: 512
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(
        "{path}: {message}\n  help: see the comment at the top of configs/plugins.yaml for the format"
    )]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    memory_mb: Option<u64>,
    cpu_seconds_per_call: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginEntry {
    #[serde(default)]
    programs: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    memory_mb: Option<u64>,
    cpu_seconds_per_call: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    defaults: Option<Limits>,
    #[serde(default)]
    plugins: BTreeMap<String, PluginEntry>,
}

/// Largest `memory_mb`: a wasm32 instance cannot address more than 4 GiB.
pub const MAX_MEMORY_MB: u64 = 4096;
/// Largest `cpu_seconds_per_call` (a day); the smallest is a millisecond.
pub const MAX_CPU_SECONDS: f64 = 86_400.0;
const MIN_CPU_SECONDS: f64 = 0.001;

fn check_limits(at: &str, memory_mb: Option<u64>, cpu_seconds: Option<f64>) -> Result<(), String> {
    if let Some(mb) = memory_mb
        && !(1..=MAX_MEMORY_MB).contains(&mb)
    {
        return Err(format!(
            "`{at}.memory_mb` must be between 1 and {MAX_MEMORY_MB} (MiB of the plugin's \
             linear memory), got {mb}"
        ));
    }
    if let Some(seconds) = cpu_seconds
        && !(seconds.is_finite() && (MIN_CPU_SECONDS..=MAX_CPU_SECONDS).contains(&seconds))
    {
        return Err(format!(
            "`{at}.cpu_seconds_per_call` must be a number of seconds between {MIN_CPU_SECONDS} \
             and {MAX_CPU_SECONDS}, got {seconds}"
        ));
    }
    Ok(())
}

/// A program name: looked up on the search path, never a path itself.
fn check_program(at: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!(
            "`{at}` lists `{name}`, which is not a program name: give the name only (e.g. \
             `yolo`); it is looked up in the workspace's .venv/bin, then on PATH"
        ));
    }
    Ok(())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn check_env(at: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{at}` lists `{name}`, which is not an environment variable name \
             (letters, digits and `_`, not starting with a digit)"
        ));
    }
    Ok(())
}

impl GrantsFile {
    /// Every value in range, every name a name: errors name the key.
    fn check(&self) -> Result<(), String> {
        if let Some(d) = &self.defaults {
            check_limits("defaults", d.memory_mb, d.cpu_seconds_per_call)?;
        }
        for (name, entry) in &self.plugins {
            let at = format!("plugins.{name}");
            check_limits(&at, entry.memory_mb, entry.cpu_seconds_per_call)?;
            for program in &entry.programs {
                check_program(&format!("{at}.programs"), program)?;
            }
            for var in &entry.env {
                check_env(&format!("{at}.env"), var)?;
            }
        }
        Ok(())
    }
}

/// The resolved grant of one plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginGrant {
    pub programs: Vec<String>,
    /// Names of engine environment variables passed on to launched programs.
    pub env: Vec<String>,
    pub memory_bytes: usize,
    pub cpu_per_call: std::time::Duration,
}

/// Grants of all plugins.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    file: GrantsFile,
}

const DEFAULT_MEMORY_MB: u64 = 256;
const DEFAULT_CPU_SECONDS: f64 = 10.0;

impl Grants {
    /// Grants from the text of `path` (which only names the file in errors). The caller reads
    /// the file, and checks its size and depth first (`kiln_workflow::limits::check_yaml`).
    pub fn parse(text: &str, path: &Path) -> Result<Self, GrantError> {
        let error = |message: String| GrantError::Parse {
            path: path.to_owned(),
            message,
        };
        // serde names the Rust type it expected; a person reads what the file must be.
        let file: GrantsFile = serde_norway::from_str(text).map_err(|e| {
            error(e.to_string().replace(
                "struct GrantsFile",
                "a mapping with `defaults` and `plugins`",
            ))
        })?;
        file.check().map_err(error)?;
        Ok(Self { file })
    }

    /// The plugins the file names.
    pub fn plugin_names(&self) -> impl Iterator<Item = &str> {
        self.file.plugins.keys().map(String::as_str)
    }

    /// The grant of plugin `name` (defaults and no programs when it is not listed).
    pub fn for_plugin(&self, name: &str) -> PluginGrant {
        let defaults = self.file.defaults.as_ref();
        let entry = self.file.plugins.get(name);
        let memory_mb = entry
            .and_then(|e| e.memory_mb)
            .or(defaults.and_then(|d| d.memory_mb))
            .unwrap_or(DEFAULT_MEMORY_MB);
        let cpu = entry
            .and_then(|e| e.cpu_seconds_per_call)
            .or(defaults.and_then(|d| d.cpu_seconds_per_call))
            .unwrap_or(DEFAULT_CPU_SECONDS);
        PluginGrant {
            programs: entry.map(|e| e.programs.clone()).unwrap_or_default(),
            env: entry.map(|e| e.env.clone()).unwrap_or_default(),
            // In range: checked when the file was parsed.
            memory_bytes: (memory_mb as usize).saturating_mul(1024 * 1024),
            cpu_per_call: std::time::Duration::from_secs_f64(
                cpu.clamp(MIN_CPU_SECONDS, MAX_CPU_SECONDS),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_entries_override_defaults() {
        let g = Grants::parse(
            "defaults: {memory_mb: 64}\nplugins:\n  ultralytics: {programs: [yolo], cpu_seconds_per_call: 2}\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        let u = g.for_plugin("ultralytics");
        assert_eq!(u.programs, vec!["yolo"]);
        assert_eq!(u.memory_bytes, 64 << 20);
        assert_eq!(u.cpu_per_call, std::time::Duration::from_secs(2));
        assert!(g.for_plugin("other").programs.is_empty());
    }

    #[test]
    fn out_of_range_values_are_errors_naming_the_key() {
        for (text, wanted) in [
            (
                "defaults: {memory_mb: 0}",
                "`defaults.memory_mb` must be between 1 and 4096",
            ),
            ("defaults: {memory_mb: 5000}", "got 5000"),
            ("defaults: {memory_mb: -1}", "memory_mb"),
            ("defaults: {memory_mb: 1e99}", "memory_mb"),
            ("defaults: {memory_mb: .nan}", "memory_mb"),
            (
                "plugins: {u: {cpu_seconds_per_call: .inf}}",
                "`plugins.u.cpu_seconds_per_call`",
            ),
            ("plugins: {u: {cpu_seconds_per_call: -.inf}}", "got -inf"),
            ("plugins: {u: {cpu_seconds_per_call: .nan}}", "got NaN"),
            ("plugins: {u: {cpu_seconds_per_call: 0}}", "got 0"),
            ("plugins: {u: {cpu_seconds_per_call: -3}}", "got -3"),
            (
                "plugins: {u: {cpu_seconds_per_call: 1e300}}",
                "between 0.001 and 86400",
            ),
            (
                "plugins: {u: {cpu_seconds_per_call: x}}",
                "cpu_seconds_per_call",
            ),
            (
                "plugins: {u: {programs: [/bin/sh]}}",
                "`plugins.u.programs` lists `/bin/sh`",
            ),
            ("plugins: {u: {programs: ['']}}", "not a program name"),
            ("plugins: {u: {programs: [..]}}", "not a program name"),
            (
                "plugins: {u: {env: ['A=B']}}",
                "not an environment variable name",
            ),
            (
                "plugins: {u: {env: ['1X']}}",
                "not an environment variable name",
            ),
        ] {
            let e = Grants::parse(text, Path::new("configs/plugins.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("configs/plugins.yaml") && e.contains(wanted),
                "{text}: {e}"
            );
        }
        let g = Grants::parse(
            "defaults: {memory_mb: 4096, cpu_seconds_per_call: 0.001}",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(g.for_plugin("x").memory_bytes, 4096 << 20);
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_named() {
        let e = Grants::parse(
            "plugins: {x: {programz: [a]}}",
            Path::new("configs/plugins.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("configs/plugins.yaml") && e.contains("programz"),
            "{e}"
        );
    }
}

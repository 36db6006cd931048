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
    #[error("cannot read plugin grants {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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
    /// Read grants from `path`; a missing file grants nothing beyond the default limits.
    pub fn load(path: &Path) -> Result<Self, GrantError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(GrantError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, GrantError> {
        let file: GrantsFile = serde_norway::from_str(text).map_err(|e| GrantError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self { file })
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
            memory_bytes: (memory_mb as usize).saturating_mul(1024 * 1024),
            cpu_per_call: std::time::Duration::from_secs_f64(cpu.max(0.001)),
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

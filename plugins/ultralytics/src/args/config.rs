//! The training config: a base config parsed and checked, overrides merged onto it (by mode),
//! the keys the plugin owns set, and a config handed to `train` checked again.

use kiln_plugin_sdk::StepError;
use kiln_plugin_sdk::inputs::type_name;
use serde_json::{Map, Value};

use super::keys::{Kind, USER_KEYS, kind_of, reserved_reason, unknown_key_error};
use super::values::check_value;

/// `user` or `developer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    User,
    Developer,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "user" => Some(Mode::User),
            "developer" => Some(Mode::Developer),
            _ => None,
        }
    }
}

/// Parse a base config YAML text into a checked mapping.
pub fn parse_base_config(origin: &str, yaml: &str) -> Result<Map<String, Value>, StepError> {
    let value: Value = if yaml.trim().is_empty() {
        Value::Null
    } else {
        serde_norway::from_str(yaml)
            .map_err(|e| StepError::invalid_input(format!("{origin}: not valid YAML: {e}")))?
    };
    let map = match value {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        other => {
            return Err(StepError::invalid_input(format!(
                "{origin}: must be a mapping of Ultralytics arguments, got {}",
                type_name(&other)
            )));
        }
    };
    let mut out = Map::new();
    for (key, value) in &map {
        if let Some(why) = reserved_reason(key) {
            return Err(StepError::invalid_input(format!(
                "{origin}: '{key}' must not be set in a base config: {why}"
            )));
        }
        out.insert(key.clone(), check_value(origin, key, value)?);
    }
    Ok(out)
}

/// Everything resolve-config needs, already read from the inputs and the config directory.
#[derive(Debug, Clone)]
pub struct ResolveRequest<'a> {
    pub mode: Mode,
    /// Host path of data.yaml.
    pub data: &'a str,
    pub overrides: &'a Map<String, Value>,
    /// The checked base config ([`parse_base_config`]).
    pub base: Map<String, Value>,
    /// Host path of the training-output directory.
    pub output_host: &'a str,
    /// In user mode, drop keys that only developer mode may override and report them
    /// ([`Resolved::rejected`]) instead of failing. Unknown, reserved and mistyped keys still fail.
    pub report_rejected: bool,
}

/// An override that user mode dropped (with [`ResolveRequest::report_rejected`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: String,
    pub reason: String,
}

/// What [`resolve_reporting`] returns.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Map<String, Value>,
    /// Empty unless [`ResolveRequest::report_rejected`] was set.
    pub rejected: Vec<Rejected>,
}

/// Merge the overrides onto the base config and set the plugin-owned keys.
pub fn resolve(req: &ResolveRequest<'_>) -> Result<Map<String, Value>, StepError> {
    resolve_reporting(req).map(|r| r.config)
}

/// [`resolve`], also returning the overrides user mode dropped when `report_rejected` is set.
pub fn resolve_reporting(req: &ResolveRequest<'_>) -> Result<Resolved, StepError> {
    let mut config = req.base.clone();
    let mut rejected = Vec::new();
    for (key, value) in req.overrides {
        let origin = "input 'overrides'";
        if kind_of(key).is_none() {
            return Err(unknown_key_error(origin, key));
        }
        if let Some(why) = reserved_reason(key) {
            return Err(StepError::invalid_input(format!(
                "{origin}: '{key}' cannot be overridden: {why}"
            )));
        }
        if req.mode == Mode::User && !USER_KEYS.contains(&key.as_str()) {
            if req.report_rejected {
                rejected.push(Rejected {
                    key: key.clone(),
                    reason: format!(
                        "only developer mode may override '{key}'; user mode allows: {}",
                        USER_KEYS.join(", ")
                    ),
                });
                continue;
            }
            return Err(StepError::invalid_input(format!(
                "{origin}: '{key}' cannot be overridden in user mode; allowed keys: {}. \
                 Set `mode: developer` to override any Ultralytics argument",
                USER_KEYS.join(", ")
            )));
        }
        config.insert(key.clone(), check_value(origin, key, value)?);
    }
    set_plugin_keys(&mut config, req.data, req.output_host);
    Ok(Resolved { config, rejected })
}

/// Set data/project/name/exist_ok so Ultralytics' save_dir is exactly `output_host`.
pub fn set_plugin_keys(config: &mut Map<String, Value>, data: &str, output_host: &str) {
    let (project, name) = split_output_dir(output_host);
    config.insert("data".into(), Value::String(data.to_string()));
    config.insert("project".into(), Value::String(project));
    config.insert("name".into(), Value::String(name));
    config.insert("exist_ok".into(), Value::Bool(true));
}

/// `(project, name)` with `project/name == output_host`.
pub fn split_output_dir(output_host: &str) -> (String, String) {
    let trimmed = output_host.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => ("/".to_string(), trimmed[1..].to_string()),
        Some(i) => (trimmed[..i].to_string(), trimmed[i + 1..].to_string()),
        None => (".".to_string(), trimmed.to_string()),
    }
}

/// Check a resolved config handed to `train` (it may have been edited on the way).
pub fn check_config(config: &Map<String, Value>) -> Result<Map<String, Value>, StepError> {
    let mut out = Map::new();
    for (key, value) in config {
        let origin = "input 'config'";
        if matches!(key.as_str(), "task" | "mode" | "resume" | "save_dir") {
            return Err(StepError::invalid_input(format!(
                "{origin}: '{key}' must not be in the config: {}",
                reserved_reason(key).unwrap_or("the plugin sets it")
            )));
        }
        if value.is_null() && kind_of(key).is_some_and(|k| k != Kind::Any) {
            return Err(StepError::invalid_input(format!(
                "{origin}: '{key}' must not be null"
            )));
        }
        let checked = if value.is_null() {
            Value::Null
        } else {
            check_value(origin, key, value)?
        };
        out.insert(key.clone(), checked);
    }
    Ok(out)
}

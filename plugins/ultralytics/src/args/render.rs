//! Rendering a config: the `yolo` argument list (values as Ultralytics' CLI parses them back)
//! and the YAML that resolve-config shows.

use kiln_plugin_sdk::StepError;
use serde_json::{Map, Value};

/// The order keys are rendered in: model and data first, the rest alphabetically,
/// then project, name, exist_ok.
pub fn ordered_keys(config: &Map<String, Value>) -> Vec<&str> {
    const FIRST: &[&str] = &["model", "data"];
    const LAST: &[&str] = &["project", "name", "exist_ok"];
    let mut keys: Vec<&str> = FIRST
        .iter()
        .copied()
        .filter(|k| config.contains_key(*k))
        .collect();
    let mut middle: Vec<&str> = config
        .keys()
        .map(String::as_str)
        .filter(|k| !FIRST.contains(k) && !LAST.contains(k))
        .collect();
    middle.sort_unstable();
    keys.extend(middle);
    keys.extend(LAST.iter().copied().filter(|k| config.contains_key(*k)));
    keys
}

/// A value the way Ultralytics' CLI parses it back (True/False/None, Python literals in lists).
pub fn render_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => python_literal(other),
    }
}

fn python_literal(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(python_literal)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!(
                    "{}:{}",
                    python_literal(&Value::String(k.clone())),
                    python_literal(v)
                ))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// The `key=value` arguments of a config, in [`ordered_keys`] order.
pub fn key_values(config: &Map<String, Value>) -> Vec<String> {
    ordered_keys(config)
        .into_iter()
        .map(|k| format!("{k}={}", render_value(&config[k])))
        .collect()
}

/// The full argument list of `yolo` for training: `<task> train key=value...`.
pub fn train_args(task: &str, config: &Map<String, Value>) -> Vec<String> {
    let mut args = vec![task.to_string(), "train".to_string()];
    args.extend(key_values(config));
    args
}

/// The argument list for resuming from a checkpoint.
pub fn resume_args(task: &str, last_pt_host: &str) -> Vec<String> {
    vec![
        task.to_string(),
        "train".to_string(),
        "resume".to_string(),
        format!("model={last_pt_host}"),
    ]
}

/// The resolved config as YAML (with task and mode on top, like Ultralytics' args.yaml).
pub fn to_yaml(task: &str, config: &Map<String, Value>) -> Result<String, StepError> {
    let mut mapping = serde_norway::Mapping::new();
    mapping.insert("task".into(), task.into());
    mapping.insert("mode".into(), "train".into());
    for key in ordered_keys(config) {
        let value = serde_norway::to_value(&config[key])
            .map_err(|e| StepError::internal(format!("rendering '{key}' as YAML: {e}")))?;
        mapping.insert(key.into(), value);
    }
    serde_norway::to_string(&mapping)
        .map_err(|e| StepError::internal(format!("rendering the config as YAML: {e}")))
}

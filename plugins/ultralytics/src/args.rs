//! Ultralytics arguments: the known keys, config merging and CLI rendering.
//!
//! Pure functions only (no host calls), so they are unit-tested natively.

use kiln_plugin_sdk::StepError;
use serde_json::{Map, Number, Value};

/// How a value of a key is checked (and coerced from strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Float,
    Str,
    /// Several types accepted, or `null` by default: only objects are refused.
    Any,
    /// Special cases checked by name (epochs, imgsz, batch, patience, device).
    Special,
}

/// Every argument Ultralytics 8.4.190 knows (the keys of its `args.yaml`), in its order,
/// with the type its default has.
pub const KNOWN_KEYS: &[(&str, Kind)] = {
    use Kind::*;
    &[
        ("task", Str),
        ("mode", Str),
        ("model", Str),
        ("data", Str),
        ("epochs", Special),
        ("time", Any),
        ("patience", Special),
        ("batch", Special),
        ("imgsz", Special),
        ("save", Bool),
        ("save_period", Int),
        ("cache", Any),
        ("device", Special),
        ("workers", Int),
        ("project", Str),
        ("name", Str),
        ("exist_ok", Bool),
        ("pretrained", Any),
        ("cls_remap", Bool),
        ("optimizer", Str),
        ("verbose", Bool),
        ("seed", Int),
        ("deterministic", Bool),
        ("single_cls", Bool),
        ("rect", Bool),
        ("cos_lr", Bool),
        ("close_mosaic", Int),
        ("resume", Any),
        ("amp", Bool),
        ("fraction", Float),
        ("profile", Bool),
        ("freeze", Any),
        ("multi_scale", Any),
        ("compile", Any),
        ("channels_last", Any),
        ("overlap_mask", Bool),
        ("mask_ratio", Int),
        ("dropout", Float),
        ("val", Bool),
        ("split", Str),
        ("save_json", Bool),
        ("conf", Any),
        ("iou", Float),
        ("max_det", Int),
        ("quantize", Any),
        ("dnn", Bool),
        ("plots", Bool),
        ("nms", Any),
        ("source", Any),
        ("vid_stride", Int),
        ("stream_buffer", Bool),
        ("visualize", Bool),
        ("augment", Bool),
        ("agnostic_nms", Bool),
        ("classes", Any),
        ("retina_masks", Bool),
        ("embed", Any),
        ("show", Bool),
        ("save_frames", Bool),
        ("save_txt", Bool),
        ("save_conf", Bool),
        ("save_crop", Bool),
        ("show_labels", Bool),
        ("show_conf", Bool),
        ("show_boxes", Bool),
        ("line_width", Any),
        ("format", Str),
        ("optimize", Bool),
        ("dynamic", Bool),
        ("simplify", Bool),
        ("opset", Any),
        ("workspace", Any),
        ("lr0", Float),
        ("lrf", Float),
        ("momentum", Float),
        ("weight_decay", Float),
        ("warmup_epochs", Float),
        ("warmup_momentum", Float),
        ("warmup_bias_lr", Float),
        ("distill_model", Any),
        ("dis", Float),
        ("box", Float),
        ("cls", Float),
        ("cls_pw", Float),
        ("dfl", Float),
        ("pose", Float),
        ("kobj", Float),
        ("rle", Float),
        ("angle", Float),
        ("dlog", Float),
        ("dgrad", Float),
        ("dlam", Float),
        ("nbs", Int),
        ("hsv_h", Float),
        ("hsv_s", Float),
        ("hsv_v", Float),
        ("degrees", Float),
        ("translate", Float),
        ("scale", Float),
        ("shear", Float),
        ("perspective", Float),
        ("flipud", Float),
        ("fliplr", Float),
        ("bgr", Float),
        ("mosaic", Float),
        ("mixup", Float),
        ("cutmix", Float),
        ("copy_paste", Float),
        ("copy_paste_mode", Str),
        ("auto_augment", Str),
        ("erasing", Float),
        ("cfg", Any),
        ("tracker", Str),
        ("save_dir", Str),
    ]
};

/// The keys user mode may override.
pub const USER_KEYS: &[&str] = &[
    "epochs", "imgsz", "batch", "amp", "patience", "save", "device",
];

/// Keys the plugin sets itself (or that the `train` action controls); never overridable.
pub const RESERVED_KEYS: &[(&str, &str)] = &[
    ("data", "it comes from the 'data' input"),
    (
        "project",
        "the plugin points it at the training-output directory",
    ),
    ("name", "it comes from the 'training_name' input"),
    (
        "exist_ok",
        "the plugin always sets exist_ok=True so weights land in the training-output directory",
    ),
    ("task", "it comes from the 'task' input"),
    ("mode", "the plugin always runs mode 'train'"),
    ("resume", "use the train action's 'resume' input"),
    ("save_dir", "Ultralytics derives it from project and name"),
];

pub const TASKS: &[&str] = &["detect", "segment"];

/// Ultralytics' own defaults for the two values resolve-config reports, when the config lacks them.
pub const DEFAULT_EPOCHS: i64 = 100;
pub const DEFAULT_IMGSZ: i64 = 640;

pub fn kind_of(key: &str) -> Option<Kind> {
    KNOWN_KEYS.iter().find(|(k, _)| *k == key).map(|(_, t)| *t)
}

fn reserved_reason(key: &str) -> Option<&'static str> {
    RESERVED_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, why)| *why)
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest known key, when it is close enough to be a likely typo.
pub fn closest_key(key: &str) -> Option<&'static str> {
    let key_lower = key.to_ascii_lowercase().replace('-', "_");
    KNOWN_KEYS
        .iter()
        .map(|(k, _)| (*k, distance(&key_lower, k)))
        .filter(|(k, d)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

fn unknown_key_error(origin: &str, key: &str) -> StepError {
    let hint = match closest_key(key) {
        Some(k) => format!(" (did you mean '{k}'?)"),
        None => String::new(),
    };
    StepError::invalid_input(format!(
        "{origin}: '{key}' is not an Ultralytics argument{hint}"
    ))
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn float_value(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Check a value for `key` and return it normalised (numeric and boolean strings become
/// numbers and booleans, integral floats of integer keys become integers).
pub fn check_value(origin: &str, key: &str, value: &Value) -> Result<Value, StepError> {
    let bad = |want: &str| {
        StepError::invalid_input(format!(
            "{origin}: '{key}' must be {want}, got {} ({value})",
            value_type(value)
        ))
    };
    let Some(kind) = kind_of(key) else {
        return Err(unknown_key_error(origin, key));
    };
    match (kind, key) {
        (Kind::Special, "epochs") => match as_int(value) {
            Some(n) if n >= 1 => Ok(Value::from(n)),
            _ => Err(bad("an integer >= 1")),
        },
        (Kind::Special, "patience") => match as_int(value) {
            Some(n) if n >= 0 => Ok(Value::from(n)),
            _ => Err(bad("an integer >= 0")),
        },
        (Kind::Special, "imgsz") => match value {
            Value::Array(items)
                if (1..=2).contains(&items.len())
                    && items.iter().all(|i| as_int(i).is_some_and(|n| n >= 1)) =>
            {
                Ok(Value::Array(
                    items.iter().filter_map(as_int).map(Value::from).collect(),
                ))
            }
            _ => match as_int(value) {
                Some(n) if n >= 1 => Ok(Value::from(n)),
                _ => Err(bad("a positive integer (pixels)")),
            },
        },
        (Kind::Special, "batch") => {
            if let Some(n) = as_int(value) {
                if n >= 1 || n == -1 {
                    return Ok(Value::from(n));
                }
            } else if let Some(f) = as_float(value)
                && f > 0.0
                && f < 1.0
            {
                return Ok(float_value(f));
            }
            Err(bad(
                "a positive integer, -1 (auto batch) or a fraction of GPU memory between 0 and 1",
            ))
        }
        (Kind::Special, "device") => match value {
            Value::String(s) if !s.trim().is_empty() => Ok(Value::String(s.trim().to_string())),
            Value::Number(n) if n.as_u64().is_some() => Ok(value.clone()),
            Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.as_u64().is_some()) =>
            {
                Ok(value.clone())
            }
            _ => Err(bad(
                "a device such as cpu, 0, \"0,1\", mps or a list of GPU indices",
            )),
        },
        (Kind::Bool, _) => as_bool(value)
            .map(Value::Bool)
            .ok_or_else(|| bad("true or false")),
        (Kind::Int, _) => as_int(value)
            .map(Value::from)
            .ok_or_else(|| bad("an integer")),
        (Kind::Float, _) => as_float(value)
            .map(float_value)
            .ok_or_else(|| bad("a number")),
        (Kind::Str, _) => match value {
            Value::String(s) => Ok(Value::String(s.clone())),
            Value::Number(_) => Ok(Value::String(value.to_string())),
            _ => Err(bad("a string")),
        },
        (Kind::Any, _) | (Kind::Special, _) => match value {
            Value::Object(_) => Err(bad("a plain value or a list")),
            _ => Ok(value.clone()),
        },
    }
}

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
                value_type(&other)
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

/// A shell-style one-line preview of `program args...` (quoted only where a shell needs it).
pub fn preview(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `arg` for a POSIX shell, leaving `key=value` readable. (shell-words and shlex both
/// quote every `=`, which would quote every Ultralytics argument.)
fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
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

/// An integer value of the config (first element for a list such as imgsz=[640,480]).
pub fn int_of(config: &Map<String, Value>, key: &str, default: i64) -> i64 {
    match config.get(key) {
        Some(Value::Array(items)) => items.iter().filter_map(as_int).max().unwrap_or(default),
        Some(v) => as_int(v).unwrap_or(default),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::ErrorKind;
    use serde_json::json;

    const BASE: &str =
        "model: yolo11n.yaml\nepochs: 50\nimgsz: 640\nbatch: 16\nplots: false\nworkers: 0\n";
    const OUT: &str = "/ws/projects/demo/model/training/run1";

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn resolve_with(mode: Mode, overrides: Value) -> Result<Map<String, Value>, StepError> {
        let overrides = obj(overrides);
        resolve(&ResolveRequest {
            mode,
            data: "/ws/projects/demo/training_data/data.yaml",
            overrides: &overrides,
            base: parse_base_config("base", BASE).unwrap(),
            output_host: OUT,
            report_rejected: false,
        })
    }

    #[test]
    fn user_mode_can_report_rejected_keys_instead_of_failing() {
        let overrides = obj(json!({"epochs": 2, "lr0": 0.02, "mosaic": 0}));
        let req = ResolveRequest {
            mode: Mode::User,
            data: "/d/data.yaml",
            overrides: &overrides,
            base: parse_base_config("base", BASE).unwrap(),
            output_host: OUT,
            report_rejected: true,
        };
        let r = resolve_reporting(&req).unwrap();
        assert_eq!(r.config["epochs"], json!(2));
        assert!(!r.config.contains_key("lr0") && !r.config.contains_key("mosaic"));
        let keys: Vec<&str> = r.rejected.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["lr0", "mosaic"]);
        assert!(
            r.rejected[0].reason.contains("developer mode"),
            "{:?}",
            r.rejected
        );
        // Unknown, reserved and mistyped keys still fail.
        for bad in [
            json!({"epoch": 3}),
            json!({"data": "x"}),
            json!({"epochs": 0}),
        ] {
            let overrides = obj(bad.clone());
            let e = resolve_reporting(&ResolveRequest {
                overrides: &overrides,
                ..req.clone()
            })
            .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
        }
        // Developer mode rejects nothing; without the flag user mode still fails.
        let dev = resolve_reporting(&ResolveRequest {
            mode: Mode::Developer,
            ..req.clone()
        })
        .unwrap();
        assert!(dev.rejected.is_empty());
        assert_eq!(dev.config["lr0"], json!(0.02));
        assert!(
            resolve_reporting(&ResolveRequest {
                report_rejected: false,
                ..req
            })
            .is_err()
        );
    }

    #[test]
    fn known_keys_match_the_real_args_yaml() {
        let yaml = include_str!("../tests/data/ultralytics-8.4.190-args.yaml");
        let keys: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.split_once(':').map(|(k, _)| k))
            .collect();
        let ours: Vec<&str> = KNOWN_KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ours);
        // Every value of the real args.yaml passes our checks.
        let all: Map<String, Value> = serde_norway::from_str(yaml).unwrap();
        for (k, v) in &all {
            if !v.is_null() {
                check_value("args.yaml", k, v).unwrap();
            }
        }
    }

    #[test]
    fn user_mode_merges_allowed_keys() {
        let c = resolve_with(
            Mode::User,
            json!({"epochs": 2, "imgsz": "64", "batch": 4, "device": "cpu", "amp": false}),
        )
        .unwrap();
        assert_eq!(c["epochs"], json!(2));
        assert_eq!(c["imgsz"], json!(64));
        assert_eq!(c["batch"], json!(4));
        assert_eq!(c["device"], json!("cpu"));
        assert_eq!(c["amp"], json!(false));
        assert_eq!(c["model"], json!("yolo11n.yaml"));
        assert_eq!(
            c["data"],
            json!("/ws/projects/demo/training_data/data.yaml")
        );
        assert_eq!(c["project"], json!("/ws/projects/demo/model/training"));
        assert_eq!(c["name"], json!("run1"));
        assert_eq!(c["exist_ok"], json!(true));
    }

    #[test]
    fn user_mode_rejects_developer_keys() {
        let e = resolve_with(Mode::User, json!({"lr0": 0.02})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("'lr0'"), "{}", e.message);
        assert!(e.message.contains("epochs, imgsz, batch"), "{}", e.message);
        assert!(e.message.contains("mode: developer"), "{}", e.message);
        // Developer mode allows it.
        let c = resolve_with(Mode::Developer, json!({"lr0": 0.02, "mosaic": 0})).unwrap();
        assert_eq!(c["lr0"], json!(0.02));
        assert_eq!(c["mosaic"], json!(0.0));
    }

    #[test]
    fn unknown_keys_are_rejected_in_both_modes() {
        for mode in [Mode::User, Mode::Developer] {
            let e = resolve_with(mode, json!({"epoch": 3})).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput);
            assert!(e.message.contains("'epoch' is not an Ultralytics argument"));
            assert!(e.message.contains("did you mean 'epochs'"), "{}", e.message);
        }
        let e = resolve_with(Mode::Developer, json!({"zzzzzzzzzz": 1})).unwrap_err();
        assert!(!e.message.contains("did you mean"), "{}", e.message);
    }

    #[test]
    fn plugin_keys_cannot_be_overridden() {
        for key in [
            "data", "project", "name", "exist_ok", "task", "mode", "resume",
        ] {
            let e = resolve_with(Mode::Developer, json!({ key: "x" })).unwrap_err();
            assert!(
                e.message.contains("cannot be overridden"),
                "{key}: {}",
                e.message
            );
        }
        let e = parse_base_config("detect/default.yaml", "data: x.yaml\n").unwrap_err();
        assert!(e.message.contains("'data'"));
    }

    #[test]
    fn types_are_checked() {
        for bad in [
            json!({"epochs": 0}),
            json!({"epochs": "many"}),
            json!({"epochs": 2.5}),
            json!({"imgsz": -1}),
            json!({"batch": 0}),
            json!({"batch": 1.5}),
            json!({"amp": "yes"}),
            json!({"patience": -3}),
            json!({"device": {"gpu": 0}}),
            json!({"save": 1}),
        ] {
            let e = resolve_with(Mode::User, bad.clone()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
            let key = bad.as_object().unwrap().keys().next().unwrap().clone();
            assert!(e.message.contains(&format!("'{key}'")), "{}", e.message);
        }
        let c = resolve_with(
            Mode::User,
            json!({"batch": -1, "epochs": 3.0, "amp": "True", "device": 0}),
        )
        .unwrap();
        assert_eq!(c["batch"], json!(-1));
        assert_eq!(c["epochs"], json!(3));
        assert_eq!(c["amp"], json!(true));
        let c = resolve_with(Mode::User, json!({"batch": 0.7, "device": [0, 1]})).unwrap();
        assert_eq!(c["batch"], json!(0.7));
        assert!(resolve_with(Mode::Developer, json!({"workers": "two"})).is_err());
        assert!(resolve_with(Mode::Developer, json!({"optimizer": true})).is_err());
    }

    #[test]
    fn renders_the_cli_like_ultralytics_expects() {
        let mut c = resolve_with(
            Mode::Developer,
            json!({"epochs": 2, "imgsz": 64, "batch": 4, "device": "cpu", "amp": false,
                   "freeze": null, "classes": [0, 1], "lr0": 0.01, "fraction": 1.0}),
        )
        .unwrap();
        c.insert("optimizer".into(), json!("auto"));
        let args = train_args("detect", &c);
        assert_eq!(
            args,
            vec![
                "detect",
                "train",
                "model=yolo11n.yaml",
                "data=/ws/projects/demo/training_data/data.yaml",
                "amp=False",
                "batch=4",
                "classes=[0,1]",
                "device=cpu",
                "epochs=2",
                "fraction=1.0",
                "freeze=None",
                "imgsz=64",
                "lr0=0.01",
                "optimizer=auto",
                "plots=False",
                "workers=0",
                "project=/ws/projects/demo/model/training",
                "name=run1",
                "exist_ok=True",
            ]
        );
        let p = preview("yolo", &args);
        assert!(p.starts_with("yolo detect train model=yolo11n.yaml data=/ws/"));
        assert!(p.ends_with("project=/ws/projects/demo/model/training name=run1 exist_ok=True"));
        assert!(p.contains(" 'classes=[0,1]' "), "{p}");
        assert_eq!(render_value(&json!([["a", true]])), "[['a',True]]");
    }

    #[test]
    fn config_round_trips_through_train() {
        let c = resolve_with(Mode::User, json!({"epochs": 2})).unwrap();
        // What train receives is the JSON object; the arguments stay identical.
        let again = check_config(&obj(Value::Object(c.clone()))).unwrap();
        assert_eq!(train_args("segment", &c), train_args("segment", &again));
        assert!(check_config(&obj(json!({"task": "detect"}))).is_err());
        assert!(check_config(&obj(json!({"bogus": 1}))).is_err());
        assert!(check_config(&obj(json!({"epochs": null}))).is_err());
    }

    #[test]
    fn yaml_and_ints() {
        let c = resolve_with(Mode::User, json!({"epochs": 2, "imgsz": 64})).unwrap();
        let y = to_yaml("detect", &c).unwrap();
        assert!(
            y.starts_with("task: detect\nmode: train\nmodel: yolo11n.yaml\n"),
            "{y}"
        );
        assert!(y.contains("exist_ok: true"));
        let back: Map<String, Value> = serde_norway::from_str(&y).unwrap();
        assert_eq!(back["epochs"], json!(2));
        assert_eq!(int_of(&c, "epochs", DEFAULT_EPOCHS), 2);
        assert_eq!(int_of(&c, "imgsz", DEFAULT_IMGSZ), 64);
        assert_eq!(int_of(&Map::new(), "imgsz", DEFAULT_IMGSZ), 640);
    }

    #[test]
    fn output_dir_split() {
        assert_eq!(
            split_output_dir("/a/b/run1/"),
            ("/a/b".to_string(), "run1".to_string())
        );
        assert_eq!(
            split_output_dir("/run1"),
            ("/".to_string(), "run1".to_string())
        );
        assert_eq!(resume_args("detect", "/o/weights/last.pt")[2], "resume");
    }
}

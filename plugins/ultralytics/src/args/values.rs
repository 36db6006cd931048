//! Checking a value given for a key, coercing strings the way Ultralytics' CLI would.

use kiln_plugin_sdk::StepError;
use kiln_plugin_sdk::inputs::type_name;
use serde_json::{Map, Number, Value};

use super::keys::{Kind, kind_of, unknown_key_error};

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
            type_name(value)
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

/// An integer value of the config (first element for a list such as imgsz=[640,480]).
pub fn int_of(config: &Map<String, Value>, key: &str, default: i64) -> i64 {
    match config.get(key) {
        Some(Value::Array(items)) => items.iter().filter_map(as_int).max().unwrap_or(default),
        Some(v) => as_int(v).unwrap_or(default),
        None => default,
    }
}

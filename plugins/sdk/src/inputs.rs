//! Typed access to a step's `with` inputs (`StepContext::inputs_json`).
//!
//! Every accessor fails with an `invalid-input` [`StepError`] whose message names the input.

use crate::StepError;
use serde_json::{Map, Value};

/// The step's resolved `with` object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    map: Map<String, Value>,
}

/// How a JSON value's type reads in an error message: `a string`, `a list`, `null`…
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Inputs {
    /// Parse the inputs JSON; it must be an object (an empty text counts as `{}`).
    pub fn parse(json: &str) -> Result<Inputs, StepError> {
        if json.trim().is_empty() {
            return Ok(Inputs::default());
        }
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(map)) => Ok(Inputs { map }),
            Ok(other) => Err(StepError::invalid_input(format!(
                "the step's inputs must be an object, got {}",
                type_name(&other)
            ))),
            Err(e) => Err(StepError::invalid_input(format!(
                "the step's inputs are not valid JSON: {e}"
            ))),
        }
    }

    pub fn from_map(map: Map<String, Value>) -> Inputs {
        Inputs { map }
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The raw value; `null` counts as absent.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn missing(name: &str) -> StepError {
        StepError::invalid_input(format!("input '{name}' is required"))
    }

    fn wrong(name: &str, want: &str, got: &Value) -> StepError {
        StepError::invalid_input(format!(
            "input '{name}' must be {want}, got {}",
            type_name(got)
        ))
    }

    /// A required, non-empty string.
    pub fn require_str(&self, name: &str) -> Result<&str, StepError> {
        match self.opt_str(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(StepError::invalid_input(format!(
                "input '{name}' must not be empty"
            ))),
            None => Err(Self::missing(name)),
        }
    }

    /// An optional string.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, StepError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong(name, "a string", v)),
        }
    }

    /// An optional string with a default.
    pub fn str_or<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str, StepError> {
        Ok(self.opt_str(name)?.unwrap_or(default))
    }

    /// A path relative to a granted directory (`default` when absent or empty): no absolute
    /// path, no `..`.
    pub fn relative_path_or<'a>(
        &'a self,
        name: &str,
        default: &'a str,
    ) -> Result<&'a str, StepError> {
        let rel = match self.opt_str(name)? {
            Some(given) if !given.trim().is_empty() => given,
            _ => default,
        };
        if rel.starts_with('/')
            || rel.split(['/', '\\']).any(|c| c == "..")
            || rel.trim().is_empty()
        {
            return Err(StepError::invalid_input(format!(
                "input '{name}' must be a relative path inside the config directory, got '{rel}'"
            )));
        }
        Ok(rel)
    }

    /// An optional string that must be one of `allowed` (`default` when absent).
    pub fn choice<'a>(
        &'a self,
        name: &str,
        allowed: &[&'a str],
        default: Option<&'a str>,
    ) -> Result<&'a str, StepError> {
        let value = match (self.opt_str(name)?, default) {
            (Some(v), _) => v,
            (None, Some(d)) => d,
            (None, None) => return Err(Self::missing(name)),
        };
        if allowed.contains(&value) {
            Ok(value)
        } else {
            Err(StepError::invalid_input(format!(
                "input '{name}' must be one of {}, got '{value}'",
                allowed.join(", ")
            )))
        }
    }

    /// An optional boolean; also accepts the strings "true"/"false".
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, StepError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(Self::wrong(name, "a boolean", v)),
        }
    }

    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, StepError> {
        Ok(self.opt_bool(name)?.unwrap_or(default))
    }

    /// An optional integer; also accepts integer strings such as "3".
    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>, StepError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
            Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
                Ok(s.trim().parse::<i64>().ok())
            }
            Some(v) => Err(Self::wrong(name, "an integer", v)),
        }
    }

    pub fn require_i64(&self, name: &str) -> Result<i64, StepError> {
        self.opt_i64(name)?.ok_or_else(|| Self::missing(name))
    }

    /// An optional number; also accepts numeric strings.
    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>, StepError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => {
                Ok(s.trim().parse::<f64>().ok())
            }
            Some(v) => Err(Self::wrong(name, "a number", v)),
        }
    }

    /// An optional object.
    pub fn opt_object(&self, name: &str) -> Result<Option<&Map<String, Value>>, StepError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(Self::wrong(name, "an object", v)),
        }
    }

    /// A required object.
    pub fn require_object(&self, name: &str) -> Result<&Map<String, Value>, StepError> {
        self.opt_object(name)?.ok_or_else(|| Self::missing(name))
    }

    /// An optional list.
    pub fn opt_array(&self, name: &str) -> Result<Option<&Vec<Value>>, StepError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(Self::wrong(name, "a list", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_only() {
        let inputs = |v: &str| {
            Inputs::from_map(
                serde_json::json!({"base_config": v})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
        };
        for good in ["detect/default.yaml", "a.py"] {
            assert_eq!(
                inputs(good).relative_path_or("base_config", "x").unwrap(),
                good
            );
        }
        for bad in ["../secrets.yaml", "/etc/passwd", "a/../../b", "a\\..\\b"] {
            let e = inputs(bad)
                .relative_path_or("base_config", "x")
                .unwrap_err();
            assert!(
                e.message.contains("must be a relative path"),
                "{bad}: {}",
                e.message
            );
        }
        let empty = Inputs::from_map(serde_json::Map::new());
        assert_eq!(
            empty.relative_path_or("base_config", "d/x.yaml").unwrap(),
            "d/x.yaml"
        );
    }
    use crate::ErrorKind;

    fn inputs(json: &str) -> Inputs {
        Inputs::parse(json).unwrap()
    }

    #[test]
    fn parses_objects_only() {
        assert!(Inputs::parse("{}").is_ok());
        assert!(Inputs::parse("").is_ok());
        let e = Inputs::parse("[1]").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(Inputs::parse("{nope").is_err());
    }

    #[test]
    fn strings() {
        let i = inputs(r#"{"data": "/x/data.yaml", "empty": " ", "n": 3, "nil": null}"#);
        assert_eq!(i.require_str("data").unwrap(), "/x/data.yaml");
        let e = i.require_str("missing").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("'missing'"), "{}", e.message);
        assert!(
            i.require_str("empty")
                .unwrap_err()
                .message
                .contains("'empty'")
        );
        let e = i.require_str("n").unwrap_err();
        assert!(e.message.contains("'n'") && e.message.contains("a string"));
        assert_eq!(i.opt_str("nil").unwrap(), None);
        assert_eq!(i.str_or("nil", "d").unwrap(), "d");
    }

    #[test]
    fn choices_bools_numbers_objects() {
        let i = inputs(
            r#"{"task": "detect", "b": "true", "n": "7", "f": 0.5, "o": {"a": 1}, "l": [1]}"#,
        );
        assert_eq!(
            i.choice("task", &["detect", "segment"], None).unwrap(),
            "detect"
        );
        assert_eq!(
            i.choice("mode", &["user", "developer"], Some("user"))
                .unwrap(),
            "user"
        );
        let e = i.choice("task", &["segment"], None).unwrap_err();
        assert!(e.message.contains("'task'") && e.message.contains("segment"));
        assert_eq!(i.opt_bool("b").unwrap(), Some(true));
        assert!(i.opt_bool("n").is_err());
        assert_eq!(i.require_i64("n").unwrap(), 7);
        assert!(i.opt_i64("f").is_err());
        assert_eq!(i.opt_f64("f").unwrap(), Some(0.5));
        assert_eq!(i.opt_object("o").unwrap().unwrap().len(), 1);
        assert!(i.opt_object("l").is_err());
        assert_eq!(i.opt_array("l").unwrap().unwrap().len(), 1);
        assert!(i.require_object("zz").unwrap_err().message.contains("'zz'"));
    }
}

//! Params at run time: defaults, required params and type checks.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::model::{ParamType, Workflow};
use crate::parse::{json_eq, json_kind, json_list};

/// A problem with the params given to a run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// A required param without default was not given.
    #[error("missing required param `{name}`: pass --param {name}=<value>")]
    Missing {
        /// The param.
        name: String,
    },
    /// The workflow declares no such param.
    #[error("unknown param `{name}`: {}", known_params(.known))]
    Unknown {
        /// The given name.
        name: String,
        /// The params the workflow declares.
        known: Vec<String>,
    },
    /// The value is not of the declared type.
    #[error("param `{name}` must be {}, got {found}: pass --param {name}=<{expected}>", article(*.expected))]
    WrongType {
        /// The param.
        name: String,
        /// The declared type.
        expected: ParamType,
        /// What was given ("a string", "an integer"...).
        found: &'static str,
    },
    /// The value is not one of the declared `enum` values.
    #[error("param `{name}` must be one of {}, got {value}", json_list(.allowed))]
    NotAllowed {
        /// The param.
        name: String,
        /// The given value.
        value: Value,
        /// The allowed values.
        allowed: Vec<Value>,
    },
}

fn known_params(known: &[String]) -> String {
    if known.is_empty() {
        "this workflow has no params".to_owned()
    } else {
        format!("this workflow's params are {}", known.join(", "))
    }
}

fn article(ty: ParamType) -> String {
    match ty {
        ParamType::Integer | ParamType::Array | ParamType::Object => format!("an {ty}"),
        _ => format!("a {ty}"),
    }
}

/// Every problem with the params of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamErrors(pub Vec<ParamError>);

impl fmt::Display for ParamErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParamErrors {}

impl IntoIterator for ParamErrors {
    type Item = ParamError;
    type IntoIter = std::vec::IntoIter<ParamError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Checks the params given to a run and fills in defaults.
///
/// Every declared param is in the result: the given value, else the default, else
/// `null` (optional params without default). A given `null` counts as not given.
/// Integers are valid numbers; numbers with a fraction are not integers (`3.0` is, and
/// becomes `3`).
pub fn resolve_params(
    workflow: &Workflow,
    provided: BTreeMap<String, Value>,
) -> Result<Map<String, Value>, ParamErrors> {
    let mut errors = Vec::new();
    let known: Vec<String> = workflow.params.keys().cloned().collect();
    for name in provided.keys() {
        if !workflow.params.contains_key(name) {
            errors.push(ParamError::Unknown {
                name: name.clone(),
                known: known.clone(),
            });
        }
    }
    let mut resolved = Map::new();
    for (name, spec) in &workflow.params {
        let value = match provided.get(name).filter(|value| !value.is_null()) {
            Some(value) => value.clone(),
            None => match &spec.default {
                Some(default) => default.clone(),
                None if spec.required => {
                    errors.push(ParamError::Missing { name: name.clone() });
                    continue;
                }
                None => {
                    resolved.insert(name.clone(), Value::Null);
                    continue;
                }
            },
        };
        if !spec.ty.matches(&value) {
            errors.push(ParamError::WrongType {
                name: name.clone(),
                expected: spec.ty,
                found: json_kind(&value),
            });
            continue;
        }
        let value = normalize(spec.ty, value);
        if let Some(allowed) = &spec.allowed
            && !allowed.iter().any(|candidate| json_eq(candidate, &value))
        {
            errors.push(ParamError::NotAllowed {
                name: name.clone(),
                value,
                allowed: allowed.clone(),
            });
            continue;
        }
        resolved.insert(name.clone(), value);
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(ParamErrors(errors))
    }
}

/// Whole floats given for integer params become integers.
fn normalize(ty: ParamType, value: Value) -> Value {
    if ty == ParamType::Integer
        && let Value::Number(n) = &value
        && !(n.is_i64() || n.is_u64())
        && let Some(f) = n.as_f64()
        && f.fract() == 0.0
        && f >= i64::MIN as f64
        && f < i64::MAX as f64
    {
        return Value::from(f as i64);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workflow() -> Workflow {
        let source = r#"
name: p
params:
  project: {type: string, required: true}
  epochs: {type: integer, default: 3}
  lr: {type: number}
  amp: {type: boolean, default: false}
  task: {type: string, default: detect, enum: [detect, segment]}
  overrides: {type: object, default: {}}
  sizes: {type: array, default: [640]}
steps:
  - id: s
    uses: builtin/x
"#;
        Workflow::parse(source, "p.yaml").unwrap()
    }

    fn given(pairs: Value) -> BTreeMap<String, Value> {
        let Value::Object(map) = pairs else { panic!() };
        map.into_iter().collect()
    }

    #[test]
    fn applies_defaults() {
        let params = resolve_params(&workflow(), given(json!({"project": "demo"}))).unwrap();
        assert_eq!(
            Value::Object(params),
            json!({
                "project": "demo",
                "epochs": 3,
                "lr": null,
                "amp": false,
                "task": "detect",
                "overrides": {},
                "sizes": [640],
            })
        );
    }

    #[test]
    fn accepts_valid_values() {
        let params = resolve_params(
            &workflow(),
            given(json!({
                "project": "demo",
                "epochs": 5.0,
                "lr": 1,
                "amp": true,
                "task": "segment",
                "overrides": {"epochs": 2},
                "sizes": [1, 2],
            })),
        )
        .unwrap();
        assert_eq!(params["epochs"], json!(5));
        assert_eq!(params["lr"], json!(1));
        assert_eq!(params["overrides"], json!({"epochs": 2}));
    }

    #[test]
    fn reports_every_problem() {
        let errors = resolve_params(
            &workflow(),
            given(json!({
                "epochs": 2.5,
                "lr": "fast",
                "task": "classify",
                "nope": 1,
                "overrides": [1],
            })),
        )
        .unwrap_err();
        assert_eq!(
            errors.to_string(),
            "unknown param `nope`: this workflow's params are amp, epochs, lr, overrides, project, sizes, task\n\
             param `epochs` must be an integer, got a number: pass --param epochs=<integer>\n\
             param `lr` must be a number, got a string: pass --param lr=<number>\n\
             param `overrides` must be an object, got an array: pass --param overrides=<object>\n\
             missing required param `project`: pass --param project=<value>\n\
             param `task` must be one of detect, segment, got \"classify\""
        );
    }

    #[test]
    fn null_means_not_given() {
        let errors = resolve_params(&workflow(), given(json!({"project": null}))).unwrap_err();
        assert_eq!(
            errors.0,
            vec![ParamError::Missing {
                name: "project".to_owned()
            }]
        );
    }
}

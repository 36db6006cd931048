//! Expressions in `with` values: `${{ params.x }}`, `${{ steps.<id>.outputs.<name> }}`.
//!
//! Expressions are minijinja expressions between `${{` and `}}`. A string that is exactly
//! one expression evaluates to a value of any type; other strings are rendered as text.

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::Step;
use crate::position::Path;

const START: &str = "${{";
const END: &str = "}}";

/// The environment for workflow expressions: `${{ }}` only, strict undefined.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Blocks and comments are not part of the language: give them delimiters (in the
    // Unicode private use area) that never occur in workflow files.
    let syntax = SyntaxConfig::builder()
        .variable_delimiters(START, END)
        .block_delimiters("\u{F8FF}{%", "%}")
        .comment_delimiters("\u{F8FF}{#", "#}")
        .build();
    if let Ok(syntax) = syntax {
        env.set_syntax(syntax);
    }
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

/// Whether a string holds an expression at all.
pub(crate) fn has_expression(text: &str) -> bool {
    text.contains(START)
}

/// The inside of `${{ ... }}` when `text` is exactly one expression (ignoring
/// surrounding whitespace).
fn single_expression<'t>(env: &Environment<'_>, text: &'t str) -> Option<&'t str> {
    let inner = text.trim().strip_prefix(START)?.strip_suffix(END)?;
    // `a }} b ${{ c` is two expressions. minijinja's expression lexer panics on a `}}`
    // that closes nothing, so such text never reaches it (an expression with `}}` inside,
    // like a nested map literal, is rendered as text instead).
    if inner.contains(END) {
        return None;
    }
    env.compile_expression(inner).ok().map(|_| inner)
}

fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// The variables a string refers to, as dotted paths split at the dots
/// (`["steps", "extract", "outputs", "data_yaml"]`), sorted; or a syntax error.
pub(crate) fn references(text: &str) -> Result<Vec<Vec<String>>, String> {
    let env = environment();
    let names = match single_expression(&env, text) {
        Some(inner) => env
            .compile_expression(inner)
            .map_err(|err| describe(&err))?
            .undeclared_variables(true),
        None => env
            .template_from_str(text)
            .map_err(|err| describe(&err))?
            .undeclared_variables(true),
    };
    let mut refs: Vec<Vec<String>> = names
        .into_iter()
        .map(|name| name.split('.').map(str::to_owned).collect())
        .collect();
    refs.sort();
    Ok(refs)
}

/// Every string holding an expression inside `value`, with its path below `base`.
pub(crate) fn expression_strings<'v>(
    value: &'v Value,
    base: &Path,
    out: &mut Vec<(Path, &'v str)>,
) {
    match value {
        Value::String(text) if has_expression(text) => out.push((base.clone(), text)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                expression_strings(item, &base.index(i), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                expression_strings(item, &base.key(key), out);
            }
        }
        _ => {}
    }
}

/// Ids of the steps whose outputs a step's expressions use, in order of first use.
pub(crate) fn referenced_steps(step: &Step) -> Vec<String> {
    let mut strings = Vec::new();
    for (key, value) in &step.with {
        expression_strings(value, &Path::root().key(key), &mut strings);
    }
    let mut ids: Vec<String> = Vec::new();
    for (_, text) in strings {
        for reference in references(text).unwrap_or_default() {
            if reference.first().map(String::as_str) == Some("steps")
                && let Some(id) = reference.get(1)
                && !ids.contains(id)
            {
                ids.push(id.clone());
            }
        }
    }
    ids
}

/// Values that expressions can use at run time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExprContext {
    /// Resolved params (see [`crate::resolve_params`]): `params.<name>`.
    pub params: Map<String, Value>,
    /// Outputs of finished steps, by step id: `steps.<id>.outputs.<name>`.
    pub outputs: BTreeMap<String, Map<String, Value>>,
}

impl ExprContext {
    /// A context with these params and no step outputs yet.
    pub fn new(params: Map<String, Value>) -> Self {
        Self {
            params,
            outputs: BTreeMap::new(),
        }
    }

    /// Records the outputs of a finished step.
    pub fn set_outputs(&mut self, step_id: impl Into<String>, outputs: Map<String, Value>) {
        self.outputs.insert(step_id.into(), outputs);
    }

    /// Builder form of [`Self::set_outputs`].
    #[must_use]
    pub fn with_outputs(mut self, step_id: impl Into<String>, outputs: Map<String, Value>) -> Self {
        self.set_outputs(step_id, outputs);
        self
    }

    fn to_minijinja(&self) -> minijinja::Value {
        let steps: BTreeMap<&str, Value> = self
            .outputs
            .iter()
            .map(|(id, outputs)| {
                let mut step = Map::new();
                step.insert("outputs".to_owned(), Value::Object(outputs.clone()));
                (id.as_str(), Value::Object(step))
            })
            .collect();
        minijinja::context! {
            params => minijinja::Value::from_serialize(&self.params),
            steps => minijinja::Value::from_serialize(&steps),
        }
    }
}

/// A `with` value that could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step `{step}`: cannot render input `{input}`: {message}")]
pub struct RenderError {
    /// Id of the step.
    pub step: String,
    /// Path of the input below `with`, e.g. `data` or `overrides.epochs`.
    pub input: String,
    /// What went wrong, e.g. ``undefined value in `${{ params.x }}` ``.
    pub message: String,
}

/// Evaluates the expressions in a step's `with` and returns the inputs as a JSON
/// object. A string that is exactly one expression keeps the type of its value; other
/// strings get the values rendered into them.
pub fn render_inputs(step: &Step, ctx: &ExprContext) -> Result<Value, RenderError> {
    let env = environment();
    let context = ctx.to_minijinja();
    let mut inputs = Map::new();
    for (key, value) in &step.with {
        let rendered = render_value(&env, &context, value, &Path::root().key(key)).map_err(
            |(path, message)| RenderError {
                step: step.id.clone(),
                input: path.to_string(),
                message,
            },
        )?;
        inputs.insert(key.clone(), rendered);
    }
    Ok(Value::Object(inputs))
}

fn render_value(
    env: &Environment<'_>,
    ctx: &minijinja::Value,
    value: &Value,
    path: &Path,
) -> Result<Value, (Path, String)> {
    match value {
        Value::String(text) if has_expression(text) => {
            render_string(env, ctx, text).map_err(|message| (path.clone(), message))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| render_value(env, ctx, item, &path.index(i)))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(key, item)| Ok((key.clone(), render_value(env, ctx, item, &path.key(key))?)))
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

fn render_string(
    env: &Environment<'_>,
    ctx: &minijinja::Value,
    text: &str,
) -> Result<Value, String> {
    let failed = |err: minijinja::Error| format!("{} in `{}`", describe(&err), text.trim());
    if let Some(inner) = single_expression(env, text) {
        let value = env
            .compile_expression(inner)
            .and_then(|expr| expr.eval(ctx))
            .map_err(failed)?;
        if value.is_undefined() {
            return Err(format!("undefined value in `{}`", text.trim()));
        }
        return serde_json::to_value(&value)
            .map_err(|err| format!("cannot convert the value of `{}`: {err}", text.trim()));
    }
    env.render_str(text, ctx).map(Value::String).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(with: Value) -> Step {
        let Value::Object(with) = with else {
            panic!("not an object")
        };
        Step {
            id: "s".to_owned(),
            uses: "builtin/x".to_owned(),
            action: None,
            needs: Vec::new(),
            timeout: None,
            with,
            retry: None,
            resources: Default::default(),
            cache: false,
        }
    }

    fn ctx() -> ExprContext {
        let Value::Object(params) = json!({
            "project": "demo",
            "epochs": 3,
            "lr": 0.5,
            "amp": true,
            "overrides": {"epochs": 2, "imgsz": [640, 480]},
        }) else {
            unreachable!()
        };
        let Value::Object(outputs) =
            json!({"data_yaml": "/data/d.yaml", "class_names": ["a", "b"]})
        else {
            unreachable!()
        };
        ExprContext::new(params).with_outputs("extract", outputs)
    }

    #[test]
    fn references_are_dotted_paths() {
        assert_eq!(
            references("${{ params.project }}").unwrap(),
            vec![vec!["params".to_owned(), "project".to_owned()]]
        );
        assert_eq!(
            references("a ${{ steps.x.outputs.y }} b ${{ params.p | upper }}").unwrap(),
            vec![
                vec!["params".to_owned(), "p".to_owned()],
                vec![
                    "steps".to_owned(),
                    "x".to_owned(),
                    "outputs".to_owned(),
                    "y".to_owned()
                ],
            ]
        );
        assert_eq!(
            references("${{ params.overrides.epochs }}").unwrap(),
            vec![vec![
                "params".to_owned(),
                "overrides".to_owned(),
                "epochs".to_owned()
            ]]
        );
        assert_eq!(
            references("${{ foo }}").unwrap(),
            vec![vec!["foo".to_owned()]]
        );
        assert!(
            references("plain text with {% and {# and }}")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = references("${{ params. }}").unwrap_err();
        assert!(err.starts_with("syntax error"), "{err}");
        assert!(references("${{ params.x ").is_err());
        assert!(references("${{ }}").is_err());
        // Must not reach minijinja's expression lexer (it panics on a stray `}}`).
        assert!(references("${{ a }}-${{ b }}").is_ok());
        assert!(references("${{ a }}}}").is_ok());
        assert!(references("${{ a -}}-${{ b }}").is_ok());
    }

    #[test]
    fn single_expressions_keep_their_type() {
        let step = step(json!({
            "n": "${{ params.epochs }}",
            "f": " ${{ params.lr }} ",
            "b": "${{ params.amp }}",
            "o": "${{ params.overrides }}",
            "nested": "${{ params.overrides.epochs }}",
            "list": "${{ steps.extract.outputs.class_names }}",
            "math": "${{ params.epochs * 2 }}",
        }));
        let inputs = render_inputs(&step, &ctx()).unwrap();
        assert_eq!(
            inputs,
            json!({
                "n": 3,
                "f": 0.5,
                "b": true,
                "o": {"epochs": 2, "imgsz": [640, 480]},
                "nested": 2,
                "list": ["a", "b"],
                "math": 6,
            })
        );
    }

    #[test]
    fn strings_are_rendered() {
        let step = step(json!({
            "note": "epochs=${{ params.epochs }} on ${{ params.project }}",
            "path": "${{ steps.extract.outputs.data_yaml }}/x",
            "deep": {"list": ["${{ params.project }}-1", 2, {"k": "${{ params.amp }}"}]},
            "plain": "no {{ expression }} here\n",
            "keep": 5,
        }));
        let inputs = render_inputs(&step, &ctx()).unwrap();
        assert_eq!(
            inputs,
            json!({
                "note": "epochs=3 on demo",
                "path": "/data/d.yaml/x",
                "deep": {"list": ["demo-1", 2, {"k": true}]},
                "plain": "no {{ expression }} here\n",
                "keep": 5,
            })
        );
    }

    #[test]
    fn trailing_newline_is_kept() {
        let step = step(json!({"script": "echo ${{ params.project }}\n"}));
        let inputs = render_inputs(&step, &ctx()).unwrap();
        assert_eq!(inputs, json!({"script": "echo demo\n"}));
    }

    #[test]
    fn undefined_values_are_errors() {
        for text in [
            "${{ params.missing }}",
            "x ${{ params.missing }}",
            "${{ steps.train.outputs.best }}",
            "${{ steps.extract.outputs.nope }}",
            "${{ params.overrides.nope.deeper }}",
        ] {
            let step = step(json!({"deep": {"k": [text]}}));
            let err = render_inputs(&step, &ctx()).unwrap_err();
            assert_eq!(err.step, "s");
            assert_eq!(err.input, "deep.k[0]", "{text}");
            assert!(err.message.contains("undefined"), "{text}: {err}");
        }
    }
}

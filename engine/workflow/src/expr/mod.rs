//! Expressions in `with` values: `${{ params.x }}`, `${{ steps.<id>.outputs.<name> }}`.
//!
//! The language is Kiln's own and small on purpose (`syntax.rs` has the grammar): names,
//! member and index access, literals, `!`, comparisons, `&&` / `||` and a handful of
//! functions. Only `${{ … }}` is special in a string (`template.rs`); there are no
//! statements, blocks, loops, filters or macros under any delimiter. A string that is
//! exactly one expression evaluates to a value of any type; other strings are rendered as
//! text. Parsing is bounded by the length and depth of an expression, and evaluation
//! (`eval.rs`) by a work budget and, at run time, the step's deadline.

mod eval;
mod syntax;
mod template;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use crate::model::Step;
use crate::position::Path;

pub use eval::{Budget as RenderBudget, MAX_RENDER_WORK, MAX_RENDERED_BYTES};
pub use syntax::{MAX_DEPTH, MAX_EXPRESSION_LEN};

use eval::{Budget, Evaluator, Scope};
use syntax::{Expr, SyntaxError};
use template::{START, Template};

/// Whether a string holds an expression at all.
pub(crate) fn has_expression(text: &str) -> bool {
    text.contains(START)
}

/// A syntax error as a message that shows where it is.
fn describe(text: &str, err: &SyntaxError) -> String {
    let at = err.at.min(text.len());
    let start = (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let snippet: String = text[start..].chars().take(24).collect();
    if snippet.is_empty() {
        format!("syntax error: {} (at the end)", err.message)
    } else {
        format!("syntax error: {} (at `{snippet}`)", err.message)
    }
}

fn parse(text: &str) -> Result<Template<'_>, String> {
    Template::parse(text).map_err(|err| describe(text, &err))
}

/// The variables a string refers to, as paths split at the dots and literal indexes
/// (`["steps", "extract", "outputs", "data_yaml"]`), sorted; or a syntax error. A path
/// stops before the first index that is not a literal.
pub(crate) fn references(text: &str) -> Result<Vec<Vec<String>>, String> {
    let template = parse(text)?;
    let mut refs = Vec::new();
    for expr in template.exprs() {
        collect_references(expr, &mut refs)?;
    }
    refs.sort();
    refs.dedup();
    Ok(refs)
}

fn collect_references(expr: &Expr, out: &mut Vec<Vec<String>>) -> Result<(), String> {
    match expr {
        Expr::Literal(_) => Ok(()),
        Expr::Not(inner) => collect_references(inner, out),
        Expr::Binary(_, a, b) => {
            collect_references(a, out)?;
            collect_references(b, out)
        }
        Expr::Logic(_, items) => items
            .iter()
            .try_for_each(|item| collect_references(item, out)),
        Expr::Call(_, args) => args.iter().try_for_each(|arg| collect_references(arg, out)),
        Expr::Var(_) | Expr::Member(..) | Expr::Index(..) => {
            // Walk the chain down to its root, innermost segment last.
            let mut segments: Vec<Option<String>> = Vec::new();
            let mut current = expr;
            loop {
                match current {
                    Expr::Member(base, name) => {
                        segments.push(Some(name.clone()));
                        current = base;
                    }
                    Expr::Index(base, index) => {
                        collect_references(index, out)?;
                        segments.push(match index.as_ref() {
                            Expr::Literal(Value::String(s)) => Some(s.clone()),
                            Expr::Literal(Value::Number(n)) => Some(n.to_string()),
                            _ => None,
                        });
                        current = base;
                    }
                    Expr::Var(name) => {
                        segments.push(Some(name.clone()));
                        break;
                    }
                    // `fromJSON(x).a`, `(a || b).c`: the base's own references.
                    other => return collect_references(other, out),
                }
            }
            let mut path = Vec::new();
            for segment in segments.into_iter().rev() {
                match segment {
                    Some(segment) => path.push(segment),
                    None if path == ["steps"] => {
                        return Err(format!(
                            "`{expr}` chooses a step at run time; name the step literally \
                             (`steps.<id>` or `steps['<id>']`) so that Kiln knows the dependency"
                        ));
                    }
                    None => break,
                }
            }
            out.push(path);
            Ok(())
        }
    }
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

/// Values that expressions can use at run time. Cheap to clone: params and each step's
/// outputs are shared, not copied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExprContext {
    /// Resolved params (see [`crate::resolve_params`]): `params.<name>`.
    params: Arc<Map<String, Value>>,
    /// Outputs of finished steps, by step id: `steps.<id>.outputs.<name>`.
    outputs: HashMap<String, Arc<Map<String, Value>>>,
}

impl ExprContext {
    /// A context with these params and no step outputs yet.
    pub fn new(params: Map<String, Value>) -> Self {
        Self {
            params: Arc::new(params),
            outputs: HashMap::new(),
        }
    }

    /// Records the outputs of a finished step.
    pub fn set_outputs(&mut self, step_id: impl Into<String>, outputs: Map<String, Value>) {
        self.outputs.insert(step_id.into(), Arc::new(outputs));
    }

    /// Builder form of [`Self::set_outputs`].
    #[must_use]
    pub fn with_outputs(mut self, step_id: impl Into<String>, outputs: Map<String, Value>) -> Self {
        self.set_outputs(step_id, outputs);
        self
    }

    /// The params and the outputs of only `steps` (a step's dependencies): what rendering
    /// that step can read, at the cost of the number of `steps`.
    #[must_use]
    pub fn only<'s>(&self, steps: impl IntoIterator<Item = &'s str>) -> Self {
        Self {
            params: Arc::clone(&self.params),
            outputs: steps
                .into_iter()
                .filter_map(|id| Some((id.to_owned(), Arc::clone(self.outputs.get(id)?))))
                .collect(),
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
    render_inputs_until(step, ctx, None)
}

/// [`render_inputs`] that gives up at `deadline` (the step's timeout), besides the work
/// budget ([`MAX_RENDER_WORK`]) that bounds every rendering.
pub fn render_inputs_until(
    step: &Step,
    ctx: &ExprContext,
    deadline: Option<Instant>,
) -> Result<Value, RenderError> {
    let outputs = |id: &str| ctx.outputs.get(id).map(Arc::as_ref);
    let scope = Scope {
        params: &ctx.params,
        outputs: &outputs,
    };
    let mut budget = Budget::new(deadline);
    let mut evaluator = Evaluator {
        scope: &scope,
        budget: &mut budget,
        lenient: false,
    };
    let mut inputs = Map::new();
    for (key, value) in &step.with {
        let rendered = render_value(&mut evaluator, value, &Path::root().key(key)).map_err(
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

/// Renders one input of a step (`None` when the step has no such input), spending from
/// `budget` (which several renderings may share).
pub fn render_input(
    step: &Step,
    key: &str,
    ctx: &ExprContext,
    budget: &mut RenderBudget,
) -> Option<Result<Value, RenderError>> {
    let value = step.with.get(key)?;
    let outputs = |id: &str| ctx.outputs.get(id).map(Arc::as_ref);
    let scope = Scope {
        params: &ctx.params,
        outputs: &outputs,
    };
    let mut evaluator = Evaluator {
        scope: &scope,
        budget,
        lenient: false,
    };
    Some(
        render_value(&mut evaluator, value, &Path::root().key(key)).map_err(|(path, message)| {
            RenderError {
                step: step.id.clone(),
                input: path.to_string(),
                message,
            }
        }),
    )
}

fn render_value(
    evaluator: &mut Evaluator<'_, '_>,
    value: &Value,
    path: &Path,
) -> Result<Value, (Path, String)> {
    match value {
        Value::String(text) if has_expression(text) => {
            let failed = |message: String| (path.clone(), message);
            let template = parse(text).map_err(failed)?;
            evaluator
                .render(&template)
                .map_err(|message| failed(format!("{message} (in `{}`)", text.trim())))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| render_value(evaluator, item, &path.index(i)))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(key, item)| Ok((key.clone(), render_value(evaluator, item, &path.key(key))?)))
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
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
            runs_on: Default::default(),
        }
    }

    fn ctx() -> ExprContext {
        let Value::Object(params) = json!({
            "project": "demo",
            "epochs": 3,
            "lr": 0.5,
            "amp": true,
            "empty": "",
            "none": null,
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

    fn render(text: &str) -> Result<Value, String> {
        render_inputs(&step(json!({ "v": text })), &ctx())
            .map(|inputs| inputs["v"].clone())
            .map_err(|e| e.message)
    }

    fn path(segments: &[&str]) -> Vec<String> {
        segments.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn references_are_paths() {
        assert_eq!(
            references("${{ params.project }}").unwrap(),
            vec![path(&["params", "project"])]
        );
        assert_eq!(
            references("a ${{ steps.x-y.outputs['y'][0] }} b ${{ format('{0}', params.p) }}")
                .unwrap(),
            vec![
                path(&["params", "p"]),
                path(&["steps", "x-y", "outputs", "y", "0"]),
            ]
        );
        assert_eq!(
            references("${{ params.o[params.k].x }}").unwrap(),
            vec![path(&["params", "k"]), path(&["params", "o"])]
        );
        assert_eq!(references("${{ foo }}").unwrap(), vec![path(&["foo"])]);
        assert!(
            references("plain text with {% and {# and }}")
                .unwrap()
                .is_empty()
        );
        let err = references("${{ steps[params.s].outputs.x }}").unwrap_err();
        assert!(err.contains("name the step literally"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = references("${{ params. }}").unwrap_err();
        assert!(err.starts_with("syntax error"), "{err}");
        assert!(err.contains("(at `}}`)"), "{err}");
        assert!(references("${{ params.x ").is_err());
        assert!(references("${{ }}").is_err());
        assert!(references("${{ a }}-${{ b }}").is_ok());
        assert!(references("${{ a }}}}").is_ok());
        assert!(references("${{ a -}}-${{ b }}").is_err());
    }

    #[test]
    fn no_template_syntax_but_expressions() {
        // Statements, blocks, comments, filters, macros: plain text outside `${{ }}`,
        // syntax errors inside, whatever the delimiter (YAML escapes included).
        for text in [
            "{% for i in range(10) %}x{% endfor %}",
            "\u{F8FF}{% for i in range(10) %}x\u{F8FF}{% endfor %}",
            "{{ params.project }}",
            "{# comment #}",
            "#! line statement",
        ] {
            assert_eq!(render(text).unwrap(), json!(text), "{text}");
        }
        for text in [
            "${{ range(10) }}",
            "${{ params.project | upper }}",
            "${{ {% set x = 1 %} }}",
            "${{ params.project * 100000000 }}",
            "${{ lipsum(1000) }}",
            "${{ self }}",
            "${{ params.project.__class__ }}",
            "${{ (params) ~ (params) }}",
        ] {
            assert!(render(text).is_err(), "{text}");
        }
    }

    #[test]
    fn single_expressions_keep_their_type() {
        let step = step(json!({
            "n": "${{ params.epochs }}",
            "f": " ${{ params.lr }} ",
            "b": "${{ params.amp }}",
            "o": "${{ params.overrides }}",
            "nested": "${{ params.overrides.epochs }}",
            "index": "${{ params.overrides['imgsz'][1] }}",
            "list": "${{ steps.extract.outputs.class_names }}",
            "cmp": "${{ params.epochs >= 3 && params.project == 'demo' }}",
            "or": "${{ params.empty || params.none || 'fallback' }}",
            "optional": "${{ params.overrides.nope || params.overrides.imgsz[5] || 7 }}",
            "and": "${{ params.amp && params.epochs }}",
            "not": "${{ !params.none }}",
            "json": "${{ fromJSON('{\"a\": [1, 2]}') }}",
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
                "index": 480,
                "list": ["a", "b"],
                "cmp": true,
                "or": "fallback",
                "optional": 7,
                "and": 3,
                "not": true,
                "json": {"a": [1, 2]},
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
            "values": "${{ params.none }}|${{ params.overrides }}|${{ params.lr }}",
            "format": "${{ format('{0}/{1}-{{x}}', params.project, params.epochs) }}",
            "join": "${{ join(steps.extract.outputs.class_names, '+') }}",
            "json": "${{ toJSON(params.overrides.imgsz) }}",
            "tests": "${{ contains(params.project, 'em') }} ${{ contains(params.overrides.imgsz, 640) }} ${{ startsWith(params.project, 'de') }} ${{ endsWith(params.project, 'x') }}",
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
                "values": "|{\"epochs\":2,\"imgsz\":[640,480]}|0.5",
                "format": "demo/3-{x}",
                "join": "a+b",
                "json": "[640,480]",
                "tests": "true true true false",
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
            "${{ params.overrides.imgsz[2] }}",
            "${{ params.overrides.imgsz[-1] }}",
        ] {
            let step = step(json!({"deep": {"k": [text]}}));
            let err = render_inputs(&step, &ctx()).unwrap_err();
            assert_eq!(err.step, "s");
            assert_eq!(err.input, "deep.k[0]", "{text}");
            assert!(err.message.contains("undefined"), "{text}: {err}");
        }
    }

    #[test]
    fn wrong_types_are_errors() {
        for (text, wanted) in [
            ("${{ params.epochs.x }}", "an integer, not an object"),
            ("${{ params.project[0] }}", "not an array"),
            ("${{ params.overrides < 3 }}", "cannot compare"),
            ("${{ steps.extract }}", "is a step, not a value"),
            ("${{ steps }}", "names no step"),
            ("${{ steps.extract.x }}", "only `outputs`"),
            ("${{ join(params.project) }}", "needs an array"),
            ("${{ format('{1}', 1) }}", "refers to argument 1"),
            ("${{ format('{', 1) }}", "not closed"),
            ("${{ fromJSON('{') }}", "not JSON"),
            ("${{ env.HOME }}", "unknown variable `env`"),
        ] {
            let err = render(text).unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn rendering_is_bounded() {
        let big = "x".repeat(1024 * 1024);
        let Value::Object(params) = json!({ "big": big }) else {
            unreachable!()
        };
        let ctx = ExprContext::new(params);
        // Each copy costs its size: 100 copies of 1 MiB exceed the work budget.
        let many = vec!["${{ params.big }}"; 100].join("");
        let err = render_inputs(&step(json!({ "v": many })), &ctx).unwrap_err();
        assert!(err.message.contains("longer than") || err.message.contains("units of work"));
        let list: Vec<Value> = (0..100)
            .map(|_| json!("${{ params.big == params.big }}"))
            .collect();
        let err = render_inputs(&step(json!({ "v": list })), &ctx).unwrap_err();
        assert!(err.message.contains("units of work"), "{err}");
        // What an operation walks is charged, not what it returns: a big needle, or comparing
        // a big value with a small one.
        let object: Map<String, Value> =
            (0..100_000).map(|i| (format!("k{i}"), json!(i))).collect();
        let array: Vec<Value> = (0..400_000).map(|i| json!(i)).collect();
        let Value::Object(params) = json!({ "o": object, "a": array }) else {
            unreachable!()
        };
        let ctx = ExprContext::new(params);
        for expr in [
            "${{ contains('a', params.o) }}",
            "${{ params.a == 1 }}",
            "${{ contains(params.a, params.o) }}",
        ] {
            let many: Vec<Value> = (0..300).map(|_| json!(expr)).collect();
            let err = render_inputs(&step(json!({ "v": many })), &ctx).unwrap_err();
            assert!(err.message.contains("units of work"), "{expr}: {err}");
        }
        let Value::Object(params) = json!({ "big": "x".repeat(1 << 20) }) else {
            unreachable!()
        };
        let ctx = ExprContext::new(params);
        // A deadline in the past stops rendering once the clock is read.
        let err = render_inputs_until(
            &step(json!({ "v": vec!["${{ toJSON(params.big) }}"; 40] })),
            &ctx,
            Some(Instant::now()),
        )
        .unwrap_err();
        assert!(err.message.contains("timeout"), "{err}");
    }
}

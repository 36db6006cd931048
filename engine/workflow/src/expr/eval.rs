//! Evaluation of expressions against params and step outputs, within a budget.
//!
//! Values are borrowed from the context wherever possible, so looking up
//! `steps.<id>.outputs.<name>` costs the length of the path, not the size of the outputs.
//! Everything that copies, compares or builds text is charged to a [`Budget`] by the number
//! of bytes it touches; when the budget (or the deadline) runs out the evaluation stops with
//! an error. Nothing in the language loops, so the work of an expression is bounded by its
//! size times the size of the values it reads, and the budget bounds that too.

use std::borrow::Cow;
use std::time::Instant;

use serde_json::{Map, Value};

use super::syntax::{BinOp, Expr, Func};
use super::template::{Part, Template};
use crate::parse::{json_eq, json_kind};

/// Work units (about one per byte copied, compared or produced) one step's inputs may cost.
pub const MAX_RENDER_WORK: u64 = 16 * 1024 * 1024;
/// Largest rendered value of one input, in bytes of JSON.
pub const MAX_RENDERED_BYTES: usize = 8 * 1024 * 1024;

/// What rendering may still spend: [`MAX_RENDER_WORK`] units, and the time until a deadline.
/// One budget can be shared by several renderings (all the steps a run names, say).
#[derive(Debug)]
pub struct Budget {
    work: u64,
    deadline: Option<Instant>,
    /// Work done since the clock was last read.
    unclocked: u64,
    spent: bool,
}

impl Budget {
    pub fn new(deadline: Option<Instant>) -> Self {
        Self {
            work: MAX_RENDER_WORK,
            deadline,
            unclocked: 0,
            spent: false,
        }
    }

    /// Whether a rendering ran out of work or time (as opposed to failing on its own).
    pub fn is_spent(&self) -> bool {
        self.spent
    }

    fn charge(&mut self, units: usize) -> Result<(), String> {
        let units = units as u64 + 1;
        if units > self.work {
            self.work = 0;
            self.spent = true;
            return Err(format!(
                "the expressions of this step would do more than {MAX_RENDER_WORK} units of work \
                 (bytes copied, compared or produced); use smaller values"
            ));
        }
        self.work -= units;
        self.unclocked += units;
        if self.unclocked >= 1 << 16 {
            self.unclocked = 0;
            if let Some(deadline) = self.deadline
                && Instant::now() >= deadline
            {
                self.spent = true;
                return Err("the step's timeout ran out while rendering its inputs".to_owned());
            }
        }
        Ok(())
    }
}

/// The size of a value in work units (about its JSON length), counted no further than
/// `limit`.
fn weight(value: &Value, limit: u64) -> usize {
    let mut total = 0usize;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        total += match value {
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                stack.extend(items);
                2 + items.len()
            }
            Value::Object(map) => {
                for (key, item) in map {
                    total += key.len() + 3;
                    stack.push(item);
                }
                2 + map.len()
            }
            _ => 8,
        };
        if total as u64 > limit {
            break;
        }
    }
    total
}

/// A value during evaluation.
#[derive(Debug, Clone)]
enum Val<'a> {
    Json(Cow<'a, Value>),
    Params(&'a Map<String, Value>),
    /// `steps`, waiting for a step id.
    Steps,
    /// `steps.<id>`, waiting for `.outputs`.
    Step(&'a Map<String, Value>),
    /// `steps.<id>.outputs`.
    Outputs(&'a Map<String, Value>),
}

/// Where names resolve.
pub(crate) struct Scope<'a> {
    pub(crate) params: &'a Map<String, Value>,
    pub(crate) outputs: &'a dyn Fn(&str) -> Option<&'a Map<String, Value>>,
}

pub(crate) struct Evaluator<'a, 'b> {
    pub(crate) scope: &'b Scope<'a>,
    pub(crate) budget: &'b mut Budget,
    /// Evaluating the left side of `||`: a missing key or index is `null` there, not an
    /// error (`params.overrides.epochs || 3`).
    pub(crate) lenient: bool,
}

type Evaluated<T> = Result<T, String>;

fn undefined(expr: &Expr, why: String) -> String {
    format!("`{expr}` is undefined: {why}")
}

fn keys(map: &Map<String, Value>) -> String {
    if map.is_empty() {
        return "it has none".to_owned();
    }
    let mut names: Vec<&str> = map.keys().map(String::as_str).take(20).collect();
    if map.len() > names.len() {
        names.push("…");
    }
    format!("keys: {}", names.join(", "))
}

impl<'a> Evaluator<'a, '_> {
    /// Renders a parsed string: a single expression keeps the type of its value, anything
    /// else becomes text.
    pub(crate) fn render(&mut self, template: &Template<'_>) -> Evaluated<Value> {
        if let Some(expr) = template.single() {
            let value = self.eval(expr)?;
            return self.owned_json(expr, value);
        }
        let mut out = String::new();
        for part in &template.parts {
            match part {
                Part::Text(text) => {
                    self.budget.charge(text.len())?;
                    out.push_str(text);
                }
                Part::Expr(expr) => {
                    let value = self.eval(expr)?;
                    let value = self.json(expr, value)?;
                    self.append_text(&mut out, &value)?;
                }
            }
            if out.len() > MAX_RENDERED_BYTES {
                return Err(format!(
                    "the rendered text is longer than {MAX_RENDERED_BYTES} bytes"
                ));
            }
        }
        Ok(Value::String(out))
    }

    fn owned_json(&mut self, expr: &Expr, value: Val<'a>) -> Evaluated<Value> {
        let value = self.json(expr, value)?;
        let size = weight(&value, MAX_RENDERED_BYTES as u64);
        if size > MAX_RENDERED_BYTES {
            return Err(format!(
                "the value of `{expr}` is larger than {MAX_RENDERED_BYTES} bytes"
            ));
        }
        if let Cow::Borrowed(_) = value {
            self.budget.charge(size)?;
        }
        Ok(value.into_owned())
    }

    /// A value as JSON; `steps` and `steps.<id>` are not values.
    fn json(&mut self, expr: &Expr, value: Val<'a>) -> Evaluated<Cow<'a, Value>> {
        match value {
            Val::Json(v) => Ok(v),
            Val::Params(map) | Val::Outputs(map) => {
                let v = Value::Object(map.clone());
                self.budget.charge(weight(&v, u64::MAX))?;
                Ok(Cow::Owned(v))
            }
            Val::Steps => Err(format!(
                "`{expr}` names no step: write `steps.<id>.outputs.<name>`"
            )),
            Val::Step(_) => Err(format!(
                "`{expr}` is a step, not a value: write `{expr}.outputs.<name>`"
            )),
        }
    }

    /// Appends a value as text: strings as they are, `null` as nothing, other values as JSON.
    fn append_text(&mut self, out: &mut String, value: &Value) -> Evaluated<()> {
        let limit = self.budget.work;
        match value {
            Value::String(s) => {
                self.budget.charge(s.len())?;
                out.push_str(s);
            }
            Value::Null => {}
            other => {
                self.budget.charge(weight(other, limit))?;
                out.push_str(&other.to_string());
            }
        }
        Ok(())
    }

    fn eval(&mut self, expr: &Expr) -> Evaluated<Val<'a>> {
        self.budget.charge(0)?;
        match expr {
            Expr::Literal(v) => Ok(Val::Json(Cow::Owned(v.clone()))),
            Expr::Var(name) => match name.as_str() {
                "params" => Ok(Val::Params(self.scope.params)),
                "steps" => Ok(Val::Steps),
                other => Err(format!(
                    "unknown variable `{other}`: expressions can use `params` and `steps`"
                )),
            },
            Expr::Member(base, name) => {
                let value = self.eval(base)?;
                self.member(expr, value, name)
            }
            Expr::Index(base, index) => {
                let value = self.eval(base)?;
                let key = self.eval(index)?;
                let key = self.json(index, key)?;
                match key.as_ref() {
                    Value::String(name) => self.member(expr, value, name),
                    Value::Number(n) => self.element(expr, value, n.as_i64()),
                    other => Err(format!(
                        "`{index}` is {}: an index must be a string or an integer",
                        json_kind(other)
                    )),
                }
            }
            Expr::Not(inner) => {
                let value = self.eval(inner)?;
                let value = self.json(inner, value)?;
                Ok(Val::Json(Cow::Owned(Value::Bool(!truthy(&value)))))
            }
            Expr::Binary(op, a, b) => self.binary(*op, a, b),
            Expr::Logic(op, items) => self.logic(*op, items),
            Expr::Call(func, args) => self.call(expr, *func, args),
        }
    }

    fn member(&mut self, expr: &Expr, value: Val<'a>, name: &str) -> Evaluated<Val<'a>> {
        let base = match expr {
            Expr::Member(base, _) | Expr::Index(base, _) => base.as_ref(),
            other => other,
        };
        let lenient = self.lenient;
        let missing = |map: &Map<String, Value>| {
            if lenient {
                Ok(Val::Json(Cow::Owned(Value::Null)))
            } else {
                Err(undefined(
                    expr,
                    format!("`{base}` has no `{name}` ({})", keys(map)),
                ))
            }
        };
        let found = |map: &'a Map<String, Value>| match map.get(name) {
            Some(v) => Ok(Val::Json(Cow::Borrowed(v))),
            None => missing(map),
        };
        match value {
            Val::Params(map) => map
                .get(name)
                .map(|v| Val::Json(Cow::Borrowed(v)))
                .ok_or_else(|| undefined(expr, format!("no param `{name}`"))),
            Val::Steps => match (self.scope.outputs)(name) {
                Some(outputs) => Ok(Val::Step(outputs)),
                None => Err(undefined(
                    expr,
                    format!("step `{name}` has not succeeded, or does not exist"),
                )),
            },
            Val::Step(outputs) if name == "outputs" => Ok(Val::Outputs(outputs)),
            Val::Step(_) => Err(format!(
                "`{expr}`: a step has only `outputs`; write `{base}.outputs.<name>`"
            )),
            Val::Outputs(map) => found(map),
            Val::Json(Cow::Borrowed(Value::Object(map))) => found(map),
            Val::Json(Cow::Owned(Value::Object(mut map))) => match map.remove(name) {
                Some(v) => Ok(Val::Json(Cow::Owned(v))),
                None => missing(&map),
            },
            Val::Json(other) => Err(format!(
                "cannot read `{name}` of `{base}`: it is {}, not an object",
                json_kind(&other)
            )),
        }
    }

    fn element(&mut self, expr: &Expr, value: Val<'a>, index: Option<i64>) -> Evaluated<Val<'a>> {
        let base = match expr {
            Expr::Index(base, _) => base.as_ref(),
            other => other,
        };
        let value = self.json(base, value)?;
        let Value::Array(items) = value.as_ref() else {
            return Err(format!(
                "cannot index `{base}` with a number: it is {}, not an array",
                json_kind(&value)
            ));
        };
        let len = items.len();
        let Some(i) = index
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < len)
        else {
            if self.lenient {
                return Ok(Val::Json(Cow::Owned(Value::Null)));
            }
            return Err(undefined(
                expr,
                format!("the index is out of range (`{base}` has {len} items)"),
            ));
        };
        Ok(match value {
            Cow::Borrowed(Value::Array(items)) => Val::Json(Cow::Borrowed(&items[i])),
            Cow::Owned(Value::Array(mut items)) => Val::Json(Cow::Owned(items.swap_remove(i))),
            _ => unreachable!("checked to be an array above"),
        })
    }

    /// `a || b || …`: the first truthy value, else the last (`params.x || 'default'`; on the
    /// left of `||` a missing key is `null`). `a && b && …`: the first falsy value, else the last.
    fn logic(&mut self, op: BinOp, items: &[Expr]) -> Evaluated<Val<'a>> {
        let Some((last, rest)) = items.split_last() else {
            return Ok(Val::Json(Cow::Owned(Value::Null)));
        };
        for item in rest {
            let lenient = self.lenient;
            self.lenient = lenient || op == BinOp::Or;
            let value = self.eval(item);
            self.lenient = lenient;
            let value = self.json(item, value?)?;
            if truthy(&value) == (op == BinOp::Or) {
                return Ok(Val::Json(value));
            }
        }
        self.eval(last)
    }

    fn binary(&mut self, op: BinOp, a: &Expr, b: &Expr) -> Evaluated<Val<'a>> {
        let left = self.eval(a)?;
        let left = self.json(a, left)?;
        let right = self.eval(b)?;
        let right = self.json(b, right)?;
        let result = match op {
            BinOp::Eq | BinOp::Ne => {
                // Weighing walks both values: that walk is what is charged.
                let limit = self.budget.work;
                self.budget.charge(weight(&left, limit))?;
                let limit = self.budget.work;
                self.budget.charge(weight(&right, limit))?;
                json_eq_deep(&left, &right) == (op == BinOp::Eq)
            }
            _ => {
                let ordering = match (left.as_ref(), right.as_ref()) {
                    (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()),
                    (Value::String(x), Value::String(y)) => {
                        self.budget.charge(x.len().min(y.len()))?;
                        Some(x.cmp(y))
                    }
                    (x, y) => {
                        return Err(format!(
                            "cannot compare `{a}` ({}) with `{b}` ({}): only two numbers or two \
                             strings can be ordered",
                            json_kind(x),
                            json_kind(y)
                        ));
                    }
                };
                let Some(ordering) = ordering else {
                    return Ok(Val::Json(Cow::Owned(Value::Bool(false))));
                };
                match op {
                    BinOp::Lt => ordering.is_lt(),
                    BinOp::Le => ordering.is_le(),
                    BinOp::Gt => ordering.is_gt(),
                    _ => ordering.is_ge(),
                }
            }
        };
        Ok(Val::Json(Cow::Owned(Value::Bool(result))))
    }

    fn args(&mut self, args: &[Expr]) -> Evaluated<Vec<Cow<'a, Value>>> {
        args.iter()
            .map(|arg| {
                let value = self.eval(arg)?;
                self.json(arg, value)
            })
            .collect()
    }

    fn string_arg<'v>(func: Func, arg: &Expr, value: &'v Value) -> Evaluated<&'v str> {
        value.as_str().ok_or_else(|| {
            format!(
                "`{}` needs a string, but `{arg}` is {}",
                func.name(),
                json_kind(value)
            )
        })
    }

    fn call(&mut self, expr: &Expr, func: Func, args: &[Expr]) -> Evaluated<Val<'a>> {
        let values = self.args(args)?;
        let limit = self.budget.work;
        let out = match func {
            Func::Contains => match values[0].as_ref() {
                Value::String(haystack) => {
                    self.budget.charge(weight(&values[1], limit))?;
                    let needle = text(&values[1]);
                    self.budget.charge(haystack.len())?;
                    Value::Bool(haystack.contains(needle.as_ref()))
                }
                Value::Array(items) => {
                    let mut found = false;
                    self.budget.charge(weight(&values[1], limit))?;
                    for item in items {
                        let limit = self.budget.work;
                        self.budget.charge(weight(item, limit))?;
                        if json_eq_deep(item, &values[1]) {
                            found = true;
                            break;
                        }
                    }
                    Value::Bool(found)
                }
                other => {
                    return Err(format!(
                        "`contains` needs a string or an array, but `{}` is {}",
                        args[0],
                        json_kind(other)
                    ));
                }
            },
            Func::StartsWith | Func::EndsWith => {
                let s = Self::string_arg(func, &args[0], &values[0])?;
                let affix = Self::string_arg(func, &args[1], &values[1])?;
                self.budget.charge(affix.len())?;
                Value::Bool(if func == Func::StartsWith {
                    s.starts_with(affix)
                } else {
                    s.ends_with(affix)
                })
            }
            Func::Format => {
                let pattern = Self::string_arg(func, &args[0], &values[0])?;
                let mut out = String::new();
                self.format(pattern, &values[1..], &mut out)
                    .map_err(|e| format!("in `{expr}`: {e}"))?;
                Value::String(out)
            }
            Func::Join => {
                let Value::Array(items) = values[0].as_ref() else {
                    return Err(format!(
                        "`join` needs an array, but `{}` is {}",
                        args[0],
                        json_kind(&values[0])
                    ));
                };
                let separator = match values.get(1) {
                    Some(v) => Self::string_arg(func, &args[1], v)?.to_owned(),
                    None => ",".to_owned(),
                };
                let mut out = String::new();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.budget.charge(separator.len())?;
                        out.push_str(&separator);
                    }
                    self.append_text(&mut out, item)?;
                    if out.len() > MAX_RENDERED_BYTES {
                        return Err(format!(
                            "`{expr}` is longer than {MAX_RENDERED_BYTES} bytes"
                        ));
                    }
                }
                Value::String(out)
            }
            Func::ToJson => {
                self.budget.charge(weight(&values[0], limit))?;
                Value::String(values[0].to_string())
            }
            Func::FromJson => {
                let s = Self::string_arg(func, &args[0], &values[0])?;
                self.budget.charge(s.len().saturating_mul(4))?;
                serde_json::from_str(s)
                    .map_err(|e| format!("`{expr}`: `{}` is not JSON: {e}", args[0]))?
            }
        };
        Ok(Val::Json(Cow::Owned(out)))
    }

    /// `format('{0}-{1}', a, b)`: `{N}` is argument N as text, `{{` and `}}` are braces.
    fn format(
        &mut self,
        pattern: &str,
        values: &[Cow<'a, Value>],
        out: &mut String,
    ) -> Evaluated<()> {
        let mut rest = pattern;
        while let Some(at) = rest.find(['{', '}']) {
            self.budget.charge(at)?;
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                out.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err("a lone `}` in the format string (write `}}`)".to_owned());
            }
            let close = tail
                .find('}')
                .ok_or("a `{` in the format string is not closed (write `{{` for a brace)")?;
            let index: usize = tail[1..close].trim().parse().map_err(|_| {
                format!(
                    "`{}` in the format string is not `{{N}}` (write `{{{{` for a brace)",
                    &tail[..=close]
                )
            })?;
            let value = values.get(index).ok_or_else(|| {
                format!(
                    "`{{{index}}}` refers to argument {index}, but there are {} after the format string",
                    values.len()
                )
            })?;
            self.append_text(out, value)?;
            if out.len() > MAX_RENDERED_BYTES {
                return Err(format!("longer than {MAX_RENDERED_BYTES} bytes"));
            }
            rest = &tail[close + 1..];
        }
        self.budget.charge(rest.len())?;
        out.push_str(rest);
        Ok(())
    }
}

/// `null`, `false`, `0` and `""` are false; everything else is true.
pub(crate) fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Equality where `3` equals `3.0`, also inside arrays and objects.
fn json_eq_deep(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq_deep(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq_deep(v, w)))
        }
        _ => json_eq(a, b),
    }
}

/// A value as text: strings as they are, `null` as nothing, other values as JSON.
fn text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

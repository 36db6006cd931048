//! Structural checks: YAML syntax, keys, value types and formats.

use std::path::Path as FsPath;

use serde::de::DeserializeOwned;
use serde_norway::{Mapping, Value};

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::limits::{MAX_FILE_BYTES, MAX_STEPS};
use crate::model::{MAX_RETRIES, ParamType, RetryOn, Timeout, Workflow};
use crate::position::{Path, Pos, PositionIndex};

pub(crate) const TOP_LEVEL_KEYS: &[&str] = &["name", "description", "params", "steps"];
pub(crate) const PARAM_KEYS: &[&str] = &["type", "required", "default", "enum", "description"];
pub(crate) const STEP_KEYS: &[&str] = &[
    "id",
    "uses",
    "action",
    "needs",
    "timeout",
    "with",
    "retry",
    "resources",
    "cache",
    "runs_on",
];
pub(crate) const RETRY_KEYS: &[&str] = &["max", "backoff", "on"];
pub(crate) const RESOURCE_KEYS: &[&str] = &["gpus"];

const NAME_HELP: &str =
    "use at most 128 lowercase letters, digits, `_` and `-`, starting with a letter or digit";

/// Longest workflow name or step id.
pub(crate) const MAX_NAME_LEN: usize = 128;

/// `[a-z0-9][a-z0-9_-]*`, at most [`MAX_NAME_LEN`]: workflow names and step ids.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A name from the file as a message shows it: escaped (no control characters reach the
/// terminal) and cut at 80 characters.
fn shown(name: &str) -> String {
    let escaped: String = name.escape_debug().collect();
    match escaped.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped,
    }
}

/// 1 to `max_len` ASCII letters, digits, `_`, `.` and `-`, starting with a letter or digit:
/// names that become path components or labels.
pub fn is_plain_name(name: &str, max_len: usize) -> bool {
    name.len() <= max_len
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An engine label's name: a plain name of at most 63 characters.
pub fn is_label(name: &str) -> bool {
    is_plain_name(name, 63)
}

/// `[A-Za-z_][A-Za-z0-9_]*`: param names, usable as `params.<name>` in expressions.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn parse(source: &str, file: &FsPath) -> Result<Workflow, Diagnostics> {
    // A byte order mark is not part of the YAML.
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    if source.len() > MAX_FILE_BYTES {
        return Err(too_large(file, source.len()).into());
    }
    let positions = PositionIndex::build(source).map_err(|err| {
        Diagnostic::new(file, err.pos.line, err.pos.column, err.message)
            .with_help("workflow files are limited in size and depth; flatten or split it")
    })?;
    let mut root: Value = match serde_norway::from_str(source) {
        Ok(value) => value,
        Err(err) => {
            let message = strip_location(&err.to_string());
            let duplicate = message.starts_with("duplicate entry");
            // serde_norway places duplicate keys at the start of the file.
            let pos = match (positions.first_duplicate_key(), err.location()) {
                (Some(pos), _) if duplicate => pos,
                (_, Some(loc)) => Pos {
                    line: loc.line(),
                    column: loc.column(),
                },
                _ => Pos { line: 1, column: 1 },
            };
            let mut diagnostic = Diagnostic::new(
                file,
                pos.line,
                pos.column,
                format!("invalid YAML: {message}"),
            );
            if duplicate {
                diagnostic = diagnostic.with_help("a key may appear only once in a mapping");
            }
            return Err(diagnostic.into());
        }
    };
    strip_nulls(&mut root);
    let mut checker = Checker {
        file,
        positions,
        diagnostics: Diagnostics::new(),
    };
    checker.workflow(&root);
    let Checker {
        positions,
        diagnostics,
        ..
    } = checker;
    diagnostics.into_result(())?;
    match serde_norway::from_value::<Workflow>(root) {
        Ok(mut workflow) => {
            workflow.file = file.to_owned();
            workflow.positions = positions;
            Ok(workflow)
        }
        // The checks above cover everything serde checks; keep this as a safety net.
        Err(err) => Err(Diagnostic::new(file, 1, 1, strip_location(&err.to_string())).into()),
    }
}

/// The diagnostic for a file over [`MAX_FILE_BYTES`].
pub(crate) fn too_large(file: &FsPath, size: usize) -> Diagnostic {
    Diagnostic::new(
        file,
        1,
        1,
        format!("the workflow file is {size} bytes; at most {MAX_FILE_BYTES} are allowed"),
    )
    .with_help("split it into several workflows")
}

/// Removes ` at line N column M` from YAML error messages (the diagnostic has it).
fn strip_location(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " at line ".len()..];
        let digits = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        let after = &tail[digits..];
        if digits > 0 && after.starts_with(" column ") {
            let tail = &after[" column ".len()..];
            let digits = tail
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(tail.len());
            rest = &tail[digits..];
        } else {
            out.push_str(" at line ");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// `key: ~` (or `key:` with nothing) on an optional key means the key is absent.
fn strip_nulls(root: &mut Value) {
    fn strip(value: &mut Value, keys: &[&str]) {
        if let Value::Mapping(map) = value {
            map.retain(|key, value| {
                !(value.is_null() && key.as_str().is_some_and(|key| keys.contains(&key)))
            });
        }
    }
    strip(root, &["description", "params", "steps"]);
    let Value::Mapping(map) = root else { return };
    if let Some(Value::Mapping(params)) = map.get_mut("params") {
        for (_, spec) in params.iter_mut() {
            strip(spec, &["required", "default", "enum", "description"]);
        }
    }
    if let Some(Value::Sequence(steps)) = map.get_mut("steps") {
        for step in steps {
            strip(
                step,
                &[
                    "action",
                    "needs",
                    "timeout",
                    "with",
                    "retry",
                    "resources",
                    "cache",
                    "runs_on",
                ],
            );
            if let Value::Mapping(step) = step {
                if let Some(retry) = step.get_mut("retry") {
                    strip(retry, &["backoff", "on"]);
                }
                if let Some(resources) = step.get_mut("resources") {
                    strip(resources, &["gpus"]);
                }
            }
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

struct Checker<'a> {
    file: &'a FsPath,
    positions: PositionIndex,
    diagnostics: Diagnostics,
}

impl Checker<'_> {
    fn at(&mut self, pos: Pos, message: String, help: Option<String>) {
        let mut diagnostic = Diagnostic::new(self.file, pos.line, pos.column, message);
        diagnostic.help = help;
        self.diagnostics.push(diagnostic);
    }

    fn at_value(&mut self, path: &Path, message: String, help: Option<String>) {
        let pos = self.positions.value(path);
        self.at(pos, message, help);
    }

    fn at_key(&mut self, path: &Path, message: String, help: Option<String>) {
        let pos = self.positions.key(path);
        self.at(pos, message, help);
    }

    /// Checks the keys of a mapping: all strings, all known, the required ones there.
    fn mapping<'v>(
        &mut self,
        value: &'v Value,
        path: &Path,
        what: &str,
        allowed: &[&str],
        required: &[&str],
    ) -> Option<&'v Mapping> {
        let Value::Mapping(map) = value else {
            self.at_value(
                path,
                format!("{what} must be a mapping, found {}", kind(value)),
                Some(format!("allowed keys: {}", allowed.join(", "))),
            );
            return None;
        };
        for (key, _) in map {
            match key.as_str() {
                Some(name) if allowed.contains(&name) => {}
                Some(name) => {
                    let help = match closest(name, allowed) {
                        Some(close) => format!(
                            "did you mean `{close}`? allowed keys: {}",
                            allowed.join(", ")
                        ),
                        None => format!("allowed keys: {}", allowed.join(", ")),
                    };
                    self.at_key(
                        &path.key(name),
                        format!("unknown key `{name}` in {what}"),
                        Some(help),
                    );
                }
                None => self.at_value(
                    path,
                    format!("keys of {what} must be strings, found {}", kind(key)),
                    None,
                ),
            }
        }
        for name in required {
            if !map.contains_key(*name) {
                self.at_value(
                    path,
                    format!("missing required key `{name}` in {what}"),
                    None,
                );
            }
        }
        Some(map)
    }

    /// Deserializes the optional field `key` of `map`, reporting a type error at it.
    fn field<T: DeserializeOwned>(
        &mut self,
        map: &Mapping,
        path: &Path,
        key: &str,
        what: &str,
    ) -> Option<T> {
        let value = map.get(key)?;
        match serde_norway::from_value::<T>(value.clone()) {
            Ok(value) => Some(value),
            Err(err) => {
                self.at_value(
                    &path.key(key),
                    format!(
                        "invalid `{key}` in {what}: {}",
                        strip_location(&err.to_string())
                    ),
                    None,
                );
                None
            }
        }
    }

    fn workflow(&mut self, root: &Value) {
        let path = Path::root();
        if root.is_null() {
            self.at(
                Pos { line: 1, column: 1 },
                "the workflow file is empty".to_owned(),
                Some("a workflow needs at least `name` and `steps`".to_owned()),
            );
            return;
        }
        let Some(map) = self.mapping(
            root,
            &path,
            "the workflow",
            TOP_LEVEL_KEYS,
            &["name", "steps"],
        ) else {
            return;
        };
        if let Some(name) = self.field::<String>(map, &path, "name", "the workflow")
            && !is_valid_name(&name)
        {
            self.at_value(
                &path.key("name"),
                format!("invalid workflow name `{}`", shown(&name)),
                Some(NAME_HELP.to_owned()),
            );
        }
        self.field::<String>(map, &path, "description", "the workflow");
        if let Some(params) = map.get("params") {
            self.params(params, &path.key("params"));
        }
        if let Some(steps) = map.get("steps") {
            self.steps(steps, &path.key("steps"));
        }
    }

    fn params(&mut self, params: &Value, path: &Path) {
        let Value::Mapping(map) = params else {
            self.at_value(
                path,
                format!(
                    "`params` must be a mapping of param names to specs, found {}",
                    kind(params)
                ),
                None,
            );
            return;
        };
        for (name, spec) in map {
            let Some(name) = name.as_str() else {
                self.at_value(
                    path,
                    format!("param names must be strings, found {}", kind(name)),
                    None,
                );
                continue;
            };
            let spec_path = path.key(name);
            if !is_identifier(name) {
                self.at_key(
                    &spec_path,
                    format!("invalid param name `{}`", shown(name)),
                    Some(
                        "use letters, digits and `_`, not starting with a digit, so that \
                         `params.<name>` works in expressions"
                            .to_owned(),
                    ),
                );
            }
            self.param_spec(name, spec, &spec_path);
        }
    }

    fn param_spec(&mut self, name: &str, spec: &Value, path: &Path) {
        let what = format!("param `{name}`");
        let Some(map) = self.mapping(spec, path, &what, PARAM_KEYS, &["type"]) else {
            return;
        };
        let ty = match map.get("type") {
            Some(Value::String(ty)) => {
                let found = ParamType::ALL.into_iter().find(|t| t.as_str() == ty);
                if found.is_none() {
                    self.at_value(
                        &path.key("type"),
                        format!("unknown type `{ty}` for {what}"),
                        Some(format!(
                            "types: {}",
                            ParamType::ALL.map(ParamType::as_str).join(", ")
                        )),
                    );
                }
                found
            }
            Some(_) => self.field::<ParamType>(map, path, "type", &what),
            None => None,
        };
        self.field::<bool>(map, path, "required", &what);
        self.field::<String>(map, path, "description", &what);
        let default = self.field::<serde_json::Value>(map, path, "default", &what);
        let allowed = self.field::<Vec<serde_json::Value>>(map, path, "enum", &what);
        let Some(ty) = ty else { return };
        if let Some(default) = &default
            && !ty.matches(default)
        {
            self.at_value(
                &path.key("default"),
                format!(
                    "default of {what} must be of type {ty}, found {}",
                    json_kind(default)
                ),
                None,
            );
        }
        if let Some(allowed) = &allowed {
            if allowed.is_empty() {
                self.at_value(
                    &path.key("enum"),
                    format!("`enum` of {what} is empty"),
                    Some("list the allowed values, or remove `enum`".to_owned()),
                );
            }
            for (i, value) in allowed.iter().enumerate() {
                if !ty.matches(value) {
                    self.at_value(
                        &path.key("enum").index(i),
                        format!(
                            "`enum` value of {what} must be of type {ty}, found {}",
                            json_kind(value)
                        ),
                        None,
                    );
                }
            }
            if let Some(default) = &default
                && ty.matches(default)
                && !allowed.is_empty()
                && !allowed.iter().any(|value| json_eq(value, default))
            {
                self.at_value(
                    &path.key("default"),
                    format!("default of {what} is not one of its `enum` values"),
                    Some(format!("allowed values: {}", json_list(allowed))),
                );
            }
        }
    }

    fn steps(&mut self, steps: &Value, path: &Path) {
        let Value::Sequence(items) = steps else {
            self.at_value(
                path,
                format!("`steps` must be a list of steps, found {}", kind(steps)),
                None,
            );
            return;
        };
        if items.is_empty() {
            self.at_value(path, "a workflow needs at least one step".to_owned(), None);
        }
        if items.len() > MAX_STEPS {
            self.at_key(
                path,
                format!(
                    "the workflow has {} steps; at most {MAX_STEPS} are allowed",
                    items.len()
                ),
                Some("split it into several workflows".to_owned()),
            );
            return;
        }
        for (i, step) in items.iter().enumerate() {
            self.step(step, &path.index(i), i);
        }
    }

    fn step(&mut self, step: &Value, path: &Path, index: usize) {
        let id = step.get("id").and_then(Value::as_str);
        let what = match id {
            Some(id) => format!("step `{id}`"),
            None => format!("step #{}", index + 1),
        };
        let Some(map) = self.mapping(step, path, &what, STEP_KEYS, &["id", "uses"]) else {
            return;
        };
        if let Some(id) = self.field::<String>(map, path, "id", &what)
            && !is_valid_name(&id)
        {
            self.at_value(
                &path.key("id"),
                format!("invalid step id `{}`", shown(&id)),
                Some(NAME_HELP.to_owned()),
            );
        }
        if let Some(uses) = self.field::<String>(map, path, "uses", &what)
            && uses.trim().is_empty()
        {
            self.at_value(
                &path.key("uses"),
                format!("`uses` of {what} is empty"),
                None,
            );
        }
        self.field::<String>(map, path, "action", &what);
        match map.get("needs") {
            None | Some(Value::String(_)) => {}
            Some(Value::Sequence(needs)) => {
                for (i, need) in needs.iter().enumerate() {
                    if !need.is_string() {
                        self.at_value(
                            &path.key("needs").index(i),
                            format!("`needs` of {what} must list step ids, found {}", kind(need)),
                            None,
                        );
                    }
                }
            }
            Some(other) => self.at_value(
                &path.key("needs"),
                format!(
                    "`needs` of {what} must be a step id or a list of step ids, found {}",
                    kind(other)
                ),
                None,
            ),
        }
        if let Some(timeout) = self.field::<String>(map, path, "timeout", &what)
            && let Err(err) = Timeout::parse(&timeout)
        {
            self.at_value(
                &path.key("timeout"),
                format!("invalid timeout `{timeout}` in {what}: {err}"),
                Some("write durations like `30s`, `2h` or `1h 30m`".to_owned()),
            );
        }
        if let Some(retry) = map.get("retry") {
            self.retry(retry, &path.key("retry"), &what);
        }
        if let Some(resources) = map.get("resources") {
            let what = format!("`resources` of {what}");
            let path = path.key("resources");
            if let Some(map) = self.mapping(resources, &path, &what, RESOURCE_KEYS, &[]) {
                self.field::<u32>(map, &path, "gpus", &what);
            }
        }
        self.field::<bool>(map, path, "cache", &what);
        if let Some(runs_on) = map.get("runs_on") {
            self.runs_on(runs_on, &path.key("runs_on"), &what);
        }
        if let Some(with) = map.get("with") {
            let with_path = path.key("with");
            let Value::Mapping(inputs) = with else {
                self.at_value(
                    &with_path,
                    format!(
                        "`with` of {what} must be a mapping of inputs, found {}",
                        kind(with)
                    ),
                    None,
                );
                return;
            };
            for (key, value) in inputs {
                let Some(key) = key.as_str() else {
                    self.at_value(
                        &with_path,
                        format!("input names in {what} must be strings, found {}", kind(key)),
                        None,
                    );
                    continue;
                };
                if let Err(err) = serde_norway::from_value::<serde_json::Value>(value.clone()) {
                    self.at_value(
                        &with_path.key(key),
                        format!(
                            "invalid input `{key}` in {what}: {}",
                            strip_location(&err.to_string())
                        ),
                        None,
                    );
                }
            }
        }
    }
}

impl Checker<'_> {
    /// `runs_on: {label: value}` of a step: label names like `gpu_model`, text values.
    fn runs_on(&mut self, runs_on: &Value, path: &Path, what: &str) {
        let Value::Mapping(labels) = runs_on else {
            self.at_value(
                path,
                format!(
                    "`runs_on` of {what} must be a mapping of labels to values, found {}",
                    kind(runs_on)
                ),
                Some("write e.g. `runs_on: {gpu_model: a100}`".to_owned()),
            );
            return;
        };
        for (key, value) in labels {
            let Some(key) = key.as_str().filter(|k| is_label(k)) else {
                let name = match key.as_str() {
                    Some(k) => format!("`{}`", shown(k)),
                    None => kind(key).to_owned(),
                };
                self.at_value(
                    path,
                    format!("`runs_on` of {what} has an invalid label name {name}"),
                    Some(
                        "label names are 1 to 63 letters, digits, `_`, `.` and `-`, starting \
                         with a letter or digit"
                            .to_owned(),
                    ),
                );
                continue;
            };
            let problem = match value {
                Value::String(v) if v.is_empty() => Some("is empty".to_owned()),
                Value::String(v) if v.len() > 253 || v.chars().any(char::is_control) => {
                    Some("is longer than 253 characters or holds control characters".to_owned())
                }
                Value::String(_) => None,
                other => Some(format!("must be a text, found {}", kind(other))),
            };
            if let Some(problem) = problem {
                self.at_value(
                    &path.key(key),
                    format!("label `{key}` in `runs_on` of {what} {problem}"),
                    Some(format!(
                        "write the value an engine offers with `kiln serve --label {key}=VALUE`, \
                         quoted if it looks like a number: `{key}: \"3\"`"
                    )),
                );
            }
        }
    }

    /// `retry: {max, backoff, on}` of a step.
    fn retry(&mut self, retry: &Value, path: &Path, step: &str) {
        let what = format!("`retry` of {step}");
        let Some(map) = self.mapping(retry, path, &what, RETRY_KEYS, &["max"]) else {
            return;
        };
        if let Some(max) = self.field::<u32>(map, path, "max", &what)
            && max > MAX_RETRIES
        {
            self.at_value(
                &path.key("max"),
                format!("`retry.max` of {step} is {max}, more than the {MAX_RETRIES} allowed"),
                Some(format!(
                    "retries are counted per kind of failure; use at most {MAX_RETRIES}"
                )),
            );
        }
        if let Some(backoff) = self.field::<String>(map, path, "backoff", &what)
            && let Err(err) = humantime::parse_duration(backoff.trim())
        {
            self.at_value(
                &path.key("backoff"),
                format!("invalid backoff `{backoff}` in {what}: {err}"),
                Some("write durations like `10s`, `1m` or `1m 30s`".to_owned()),
            );
        }
        let names = RetryOn::ALL.map(RetryOn::as_str);
        let allowed = names.join(", ");
        let on_path = path.key("on");
        match map.get("on") {
            None => {}
            Some(Value::Sequence(kinds)) => {
                if kinds.is_empty() {
                    self.at_value(
                        &on_path,
                        format!("`retry.on` of {step} is empty: nothing would be retried"),
                        Some(format!(
                            "list kinds of failure to retry ({allowed}), or remove `retry`"
                        )),
                    );
                }
                let mut seen = Vec::new();
                for (i, kind_value) in kinds.iter().enumerate() {
                    let item = on_path.index(i);
                    let Value::String(name) = kind_value else {
                        self.at_value(
                            &item,
                            format!(
                                "`retry.on` of {step} must list kinds of failure, found {}",
                                kind(kind_value)
                            ),
                            Some(format!("kinds: {allowed}")),
                        );
                        continue;
                    };
                    if !names.contains(&name.as_str()) {
                        let help = match closest(name, &names) {
                            Some(close) => format!("did you mean `{close}`? kinds: {allowed}"),
                            None => format!("kinds: {allowed}"),
                        };
                        self.at_value(
                            &item,
                            format!("unknown kind of failure `{name}` in `retry.on` of {step}"),
                            Some(help),
                        );
                    } else if seen.contains(name) {
                        self.at_value(
                            &item,
                            format!("`{name}` is listed twice in `retry.on` of {step}"),
                            Some("list each kind once".to_owned()),
                        );
                    } else {
                        seen.push(name.clone());
                    }
                }
            }
            Some(other) => self.at_value(
                &on_path,
                format!(
                    "`retry.on` of {step} must be a list of kinds of failure, found {}",
                    kind(other)
                ),
                Some(match other {
                    Value::String(name) => format!("write `on: [{name}]` (kinds: {allowed})"),
                    _ => format!("kinds: {allowed}"),
                }),
            ),
        }
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|candidate| (strsim::levenshtein(word, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2 && *distance < candidate.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// "a string", "an integer"... for messages about JSON values.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Equality where `3` equals `3.0`.
pub(crate) fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
            x == y || x.as_f64().is_some_and(|x| Some(x) == y.as_f64())
        }
        _ => a == b,
    }
}

/// `detect, segment` for a list of values (strings unquoted).
pub(crate) fn json_list(values: &[serde_json::Value]) -> String {
    values
        .iter()
        .map(|value| match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_locations() {
        assert_eq!(
            strip_location(
                "did not find expected key at line 3 column 5, while parsing a block mapping at line 1 column 1"
            ),
            "did not find expected key, while parsing a block mapping"
        );
        assert_eq!(strip_location("at line x"), "at line x");
    }

    #[test]
    fn suggests_close_keys() {
        assert_eq!(closest("descripton", TOP_LEVEL_KEYS), Some("description"));
        assert_eq!(closest("step", TOP_LEVEL_KEYS), Some("steps"));
        assert_eq!(closest("inputs", STEP_KEYS), None);
    }

    #[test]
    fn names() {
        assert!(is_valid_name("ultralytics-detect"));
        assert!(is_valid_name("0a_b"));
        assert!(!is_valid_name("Abc"));
        assert!(!is_valid_name("-a"));
        assert!(!is_valid_name(""));
        assert!(is_identifier("lr_2"));
        assert!(!is_identifier("2lr"));
        assert!(!is_identifier("a-b"));
    }
}

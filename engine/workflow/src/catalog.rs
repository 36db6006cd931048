//! What steps may use: provided by the caller (builtins and installed plugins).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Describes the actions that steps may use.
pub trait Catalog {
    /// Describe what `uses` (+ `action`) accepts and returns; `Err` (with a message and
    /// a hint) if unknown.
    fn action(&self, uses: &str, action: Option<&str>) -> Result<ActionSpec, CatalogError>;

    /// GPUs of the machine the steps run on; `None` when unknown, which skips the check
    /// of `resources.gpus`.
    fn gpus(&self) -> Option<u32> {
        None
    }
}

/// Inputs and outputs of one action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// Inputs accepted under `with`.
    pub inputs: Vec<InputSpec>,
    /// Names of the outputs, for `${{ steps.<id>.outputs.<name> }}`.
    pub outputs: Vec<String>,
    /// Whether `cache: true` may reuse its outputs. Not for actions whose effects are records
    /// of their own (a dataset's users, a registered model): replaying outputs would skip them.
    pub memoizable: bool,
}

impl ActionSpec {
    /// An action with these required inputs, optional inputs and outputs.
    pub fn new<'a>(
        required: impl IntoIterator<Item = &'a str>,
        optional: impl IntoIterator<Item = &'a str>,
        outputs: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let inputs = required
            .into_iter()
            .map(|name| InputSpec::new(name, true))
            .chain(optional.into_iter().map(|name| InputSpec::new(name, false)))
            .collect();
        Self {
            inputs,
            outputs: outputs.into_iter().map(str::to_owned).collect(),
            memoizable: true,
        }
    }

    /// Checks rendered `inputs` against the kinds the action declares; the error names the
    /// first input of the wrong kind and what it got.
    pub fn check_kinds(&self, inputs: &serde_json::Value) -> Result<(), String> {
        for input in &self.inputs {
            if let Some(value) = inputs.get(&input.name)
                && !input.kind.accepts(value)
            {
                let mut shown = value.to_string();
                if shown.len() > 80 {
                    let mut cut = 80;
                    while !shown.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    shown.truncate(cut);
                    shown.push('…');
                }
                return Err(format!(
                    "input `{}` must be {}, got {shown}",
                    input.name,
                    input.kind.described()
                ));
            }
        }
        Ok(())
    }

    /// The same action, refusing `cache: true`.
    #[must_use]
    pub fn not_memoizable(mut self) -> Self {
        self.memoizable = false;
        self
    }
}

/// One input of an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Key under `with`.
    pub name: String,
    /// Whether the step must set it.
    pub required: bool,
    /// The JSON type of its value; a literal of another type is a validation error.
    pub kind: InputKind,
}

impl InputSpec {
    /// An input of any type.
    pub fn new(name: impl Into<String>, required: bool) -> Self {
        Self {
            name: name.into(),
            required,
            kind: InputKind::Any,
        }
    }

    /// The same input, of type `kind`.
    #[must_use]
    pub fn of_kind(mut self, kind: InputKind) -> Self {
        self.kind = kind;
        self
    }
}

/// The JSON type an input takes (a plugin declares it; see `kiln:plugin@0.2.0`'s `input-kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// Any JSON value.
    #[default]
    Any,
    /// A string.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A list.
    List,
    /// A mapping.
    Object,
    /// A string naming a file or folder (the plugin decides what an empty one means).
    Path,
}

impl InputKind {
    /// How a message names it, with its article ("an integer").
    pub fn described(self) -> &'static str {
        match self {
            InputKind::Any => "any value",
            InputKind::String => "a string",
            InputKind::Integer => "an integer",
            InputKind::Number => "a number",
            InputKind::Boolean => "a boolean (true or false)",
            InputKind::List => "a list",
            InputKind::Object => "a mapping",
            InputKind::Path => "a path (a string)",
        }
    }

    /// Whether a literal `value` is of this kind (`null` stands for "not given").
    pub fn accepts(self, value: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (self, value) {
            (_, V::Null) | (InputKind::Any, _) => true,
            (InputKind::String | InputKind::Path, V::String(_)) => true,
            (InputKind::Integer, V::Number(n)) => n.is_i64() || n.is_u64(),
            (InputKind::Number, V::Number(_)) => true,
            (InputKind::Boolean, V::Bool(_)) => true,
            (InputKind::List, V::Array(_)) => true,
            (InputKind::Object, V::Object(_)) => true,
            _ => false,
        }
    }
}

/// Which part of a step a [`CatalogError`] is about (the diagnostic points there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogErrorKind {
    /// `uses` names no builtin or plugin.
    UnknownUses,
    /// `action` names no action of the plugin.
    UnknownAction,
    /// The plugin needs an `action` and the step has none.
    MissingAction,
    /// The step has an `action` where none is accepted (builtins).
    UnexpectedAction,
}

/// Why a catalog cannot describe a step's action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct CatalogError {
    /// What is wrong, which decides the position reported.
    pub kind: CatalogErrorKind,
    /// E.g. "unknown plugin `ultralytcs`".
    pub message: String,
    /// E.g. "installed plugins: ultralytics".
    pub help: Option<String>,
}

impl CatalogError {
    /// An error without help.
    pub fn new(kind: CatalogErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            help: None,
        }
    }

    /// Adds a hint.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A catalog held in memory: builtins (no `action`) and plugins (with actions).
///
/// ```
/// use kiln_workflow::{ActionSpec, Catalog, MemoryCatalog};
/// let catalog = MemoryCatalog::new()
///     .with_builtin("builtin/echo", ActionSpec::new(["message"], [], ["message"]))
///     .with_plugin_action("ultralytics", "train", ActionSpec::new([], ["config"], ["metrics"]));
/// assert!(catalog.action("ultralytics", Some("train")).is_ok());
/// assert!(catalog.action("ultralytics", None).is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryCatalog {
    builtins: BTreeMap<String, ActionSpec>,
    plugins: BTreeMap<String, BTreeMap<String, ActionSpec>>,
    gpus: Option<u32>,
}

impl MemoryCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a builtin (steps use it without `action`).
    #[must_use]
    pub fn with_builtin(mut self, uses: impl Into<String>, spec: ActionSpec) -> Self {
        self.add_builtin(uses, spec);
        self
    }

    /// Adds an action of a plugin.
    #[must_use]
    pub fn with_plugin_action(
        mut self,
        plugin: impl Into<String>,
        action: impl Into<String>,
        spec: ActionSpec,
    ) -> Self {
        self.add_plugin_action(plugin, action, spec);
        self
    }

    /// Sets the machine's GPU count (unknown by default: `resources.gpus` is not checked).
    #[must_use]
    pub fn with_gpus(mut self, gpus: u32) -> Self {
        self.set_gpus(Some(gpus));
        self
    }

    /// Sets the machine's GPU count; `None` for unknown.
    pub fn set_gpus(&mut self, gpus: Option<u32>) {
        self.gpus = gpus;
    }

    /// Adds a builtin (steps use it without `action`).
    pub fn add_builtin(&mut self, uses: impl Into<String>, spec: ActionSpec) {
        self.builtins.insert(uses.into(), spec);
    }

    /// Adds an action of a plugin.
    pub fn add_plugin_action(
        &mut self,
        plugin: impl Into<String>,
        action: impl Into<String>,
        spec: ActionSpec,
    ) {
        self.plugins
            .entry(plugin.into())
            .or_default()
            .insert(action.into(), spec);
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

impl Catalog for MemoryCatalog {
    fn gpus(&self) -> Option<u32> {
        self.gpus
    }

    fn action(&self, uses: &str, action: Option<&str>) -> Result<ActionSpec, CatalogError> {
        if let Some(spec) = self.builtins.get(uses) {
            return match action {
                None => Ok(spec.clone()),
                Some(action) => Err(CatalogError::new(
                    CatalogErrorKind::UnexpectedAction,
                    format!(
                        "builtin `{uses}` has no actions, but the step sets `action: {action}`"
                    ),
                )
                .with_help("remove `action`")),
            };
        }
        if let Some(actions) = self.plugins.get(uses) {
            return match action {
                Some(action) => actions.get(action).cloned().ok_or_else(|| {
                    CatalogError::new(
                        CatalogErrorKind::UnknownAction,
                        format!("plugin `{uses}` has no action `{action}`"),
                    )
                    .with_help(format!("actions of `{uses}`: {}", list(actions.keys())))
                }),
                None => Err(CatalogError::new(
                    CatalogErrorKind::MissingAction,
                    format!("step uses plugin `{uses}` but sets no `action`"),
                )
                .with_help(format!(
                    "add `action:` with one of: {}",
                    list(actions.keys())
                ))),
            };
        }
        Err(CatalogError::new(
            CatalogErrorKind::UnknownUses,
            format!("unknown `uses`: `{uses}` is neither a builtin nor an installed plugin"),
        )
        .with_help(format!(
            "builtins: {}; plugins: {}",
            list(self.builtins.keys()),
            list(self.plugins.keys())
        )))
    }
}

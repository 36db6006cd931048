//! The workflow file format, as serde types.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::position::PositionIndex;

/// A workflow: named steps that run plugin or builtin actions, in dependency order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Kiln workflow")]
pub struct Workflow {
    /// Name of the workflow: lowercase letters, digits, `_` and `-`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"))]
    pub name: String,
    /// What the workflow does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Parameters given when the workflow is started (`--param name=value`), usable
    /// in expressions as `${{ params.<name> }}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamSpec>,
    /// The steps, run in dependency order.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
    /// File the workflow was read from (for diagnostics).
    #[serde(skip)]
    pub(crate) file: PathBuf,
    /// Positions of the nodes of the source (for diagnostics).
    #[serde(skip)]
    pub(crate) positions: PositionIndex,
    /// Step id → index, built on first use.
    #[serde(skip)]
    index: StepIndex,
}

/// Step id → index into `steps`, so that [`Workflow::step`] costs O(1) however many steps.
#[derive(Debug, Clone, Default)]
struct StepIndex(std::sync::OnceLock<std::collections::HashMap<String, usize>>);

/// Declaration of one workflow parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// Type of the value.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Whether the param must be given when the workflow starts.
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    /// Value used when the param is not given; must be of `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// The only values allowed; each must be of `type`.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<serde_json::Value>>,
    /// What the param is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Type of a workflow parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A string.
    String,
    /// A whole number.
    Integer,
    /// Any number (integers included).
    Number,
    /// `true` or `false`.
    Boolean,
    /// A mapping.
    Object,
    /// A list.
    Array,
}

impl ParamType {
    /// The name used in workflow files.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Object => "object",
            ParamType::Array => "array",
        }
    }

    /// Every type, in the order of the documentation.
    pub const ALL: [ParamType; 6] = [
        ParamType::String,
        ParamType::Integer,
        ParamType::Number,
        ParamType::Boolean,
        ParamType::Object,
        ParamType::Array,
    ];

    /// Whether `value` is of this type. An integer is a number; a number with a
    /// fraction is not an integer (`3.0` is).
    pub fn matches(self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (self, value) {
            (ParamType::String, Value::String(_))
            | (ParamType::Number, Value::Number(_))
            | (ParamType::Boolean, Value::Bool(_))
            | (ParamType::Object, Value::Object(_))
            | (ParamType::Array, Value::Array(_)) => true,
            (ParamType::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique id of the step: lowercase letters, digits, `_` and `-`. Steps referenced in
    /// expressions (`steps.<id>.outputs.<name>`) should not contain `-`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"))]
    pub id: String,
    /// What runs the step: a builtin (`builtin/<name>`) or a plugin name.
    pub uses: String,
    /// The plugin action to run (plugins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Ids of the steps that must finish before this one: a list or a single id.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(with = "StepIds")]
    pub needs: Vec<String>,
    /// Longest time the step may run, e.g. `30s`, `2h`, `1h 30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Inputs of the action. String values may hold expressions such as
    /// `${{ params.project }}` or `${{ steps.extract.outputs.data_yaml }}`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub with: serde_json::Map<String, serde_json::Value>,
    /// Retry the step when it fails, e.g. `{max: 3, backoff: 30s, on: [failure, infrastructure]}`.
    /// Without it, a failed step is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// What the step needs from the machine, e.g. `{gpus: 1}`.
    #[serde(default, skip_serializing_if = "Resources::is_default")]
    pub resources: Resources,
    /// Memoize the step's outputs: reuse them instead of running the step again when it
    /// would run with the same inputs. Off by default.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cache: bool,
    /// Labels the engine executing the run must offer, e.g. `{gpu_model: a100}` (engines
    /// offer `host`, `gpus` and what `kiln serve --label KEY=VALUE` adds). The run waits
    /// `queued` until an engine that offers all its steps' labels claims it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub runs_on: std::collections::BTreeMap<String, String>,
}

/// Most retries `retry.max` allows, per kind of failure.
pub const MAX_RETRIES: u32 = 100;

/// Longest wait between two attempts ([`RetryPolicy::delay`]).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// When and how often a failed step is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries allowed for each kind of failure listed in `on` (each kind has its own
    /// budget), at most 100.
    #[schemars(range(max = 100))]
    pub max: u32,
    /// Wait before the first retry, doubled for each next one (at most 1 hour), e.g.
    /// `10s`, `1m 30s`. Default `10s`.
    #[serde(default = "default_backoff", with = "humantime_duration")]
    #[schemars(
        with = "String",
        description = "Wait before the first retry, doubled for each next one (at most 1 hour), \
                       e.g. `10s` or `1m 30s`. Default `10s`."
    )]
    pub backoff: Duration,
    /// Kinds of failure that are retried: `failure` (the step or its program failed)
    /// and/or `infrastructure` (the machine, process or sandbox failed). Default
    /// `[infrastructure]`.
    #[serde(default = "default_retry_on")]
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    pub on: Vec<RetryOn>,
}

/// A kind of failure that [`RetryPolicy::on`] may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    /// The step failed: its action returned an error or its program exited with failure.
    Failure,
    /// The infrastructure failed: the process was killed, the sandbox or machine failed.
    Infrastructure,
}

impl RetryOn {
    /// The name used in workflow files.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::Failure => "failure",
            RetryOn::Infrastructure => "infrastructure",
        }
    }

    /// Every kind, in the order of the documentation.
    pub const ALL: [RetryOn; 2] = [RetryOn::Failure, RetryOn::Infrastructure];
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `backoff` when not given.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);

fn default_backoff() -> Duration {
    DEFAULT_BACKOFF
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Infrastructure]
}

impl Default for RetryPolicy {
    /// No retries (`max: 0`), default backoff and kinds.
    fn default() -> Self {
        Self {
            max: 0,
            backoff: DEFAULT_BACKOFF,
            on: default_retry_on(),
        }
    }
}

impl RetryPolicy {
    /// Retries allowed for failures of `kind`: `max` if `on` lists it, else 0.
    pub fn retries(&self, kind: RetryOn) -> u32 {
        if self.on.contains(&kind) { self.max } else { 0 }
    }

    /// Wait before retry number `retry_number` (1 for the first retry):
    /// `backoff * 2^(retry_number - 1)`, at most [`MAX_RETRY_DELAY`] (1 hour).
    /// `0` counts as `1`.
    pub fn delay(&self, retry_number: u32) -> Duration {
        let mut delay = self.backoff.min(MAX_RETRY_DELAY);
        // At most ~42 doublings before the cap (1ns * 2^42 > 1h); none for zero.
        for _ in 1..retry_number {
            if delay.is_zero() || delay == MAX_RETRY_DELAY {
                break;
            }
            delay = delay.saturating_mul(2).min(MAX_RETRY_DELAY);
        }
        delay
    }
}

/// A duration as humantime text (`10s`, `1m 30s`); zero allowed.
mod humantime_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map_err(|err| serde::de::Error::custom(format!("invalid duration `{text}`: {err}")))
    }
}

/// What a step needs from the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Number of GPUs the step needs. Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
}

impl Resources {
    /// Whether nothing is asked for (what an absent `resources` means).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// One step id or a list of step ids (schema of `needs`).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum StepIds {
    One(String),
    Many(Vec<String>),
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        One(String),
        Many(Vec<String>),
    }
    // A custom message: the untagged enum's default one says nothing useful.
    match Repr::deserialize(deserializer) {
        Ok(Repr::One(one)) => Ok(vec![one]),
        Ok(Repr::Many(many)) => Ok(many),
        Err(_) => Err(serde::de::Error::custom(
            "expected a step id or a list of step ids",
        )),
    }
}

/// A step timeout, written in humantime format (`30s`, `2h`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(
    with = "String",
    description = "A duration such as `30s`, `2h` or `1h 30m`."
)]
pub struct Timeout(pub Duration);

impl Timeout {
    /// The duration.
    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// Parses `30s`, `2h`, `1h 30m`...; the error says why the text is not a timeout.
    pub fn parse(text: &str) -> Result<Self, String> {
        match humantime::parse_duration(text.trim()) {
            Ok(duration) if duration.is_zero() => {
                Err("a timeout must be longer than zero".to_owned())
            }
            Ok(duration) if duration < crate::limits::MIN_TIMEOUT => Err(format!(
                "a timeout must be at least {}s",
                crate::limits::MIN_TIMEOUT.as_secs()
            )),
            Ok(duration) if duration > crate::limits::MAX_TIMEOUT => Err(format!(
                "a timeout can be at most {} days",
                crate::limits::MAX_TIMEOUT.as_secs() / 86_400
            )),
            Ok(duration) => Ok(Timeout(duration)),
            Err(err) => Err(err.to_string()),
        }
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Timeout {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timeout::parse(&text)
            .map_err(|err| serde::de::Error::custom(format!("invalid timeout `{text}`: {err}")))
    }
}

impl Workflow {
    /// The file the workflow was read from (empty when it was deserialized).
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// The step with this id (the first, if ids repeat).
    pub fn step(&self, id: &str) -> Option<&Step> {
        let index = self.index.0.get_or_init(|| {
            let mut index = std::collections::HashMap::with_capacity(self.steps.len());
            for (i, step) in self.steps.iter().enumerate() {
                index.entry(step.id.clone()).or_insert(i);
            }
            index
        });
        match index.get(id).and_then(|&i| self.steps.get(i)) {
            Some(step) if step.id == id => Some(step),
            // `steps` is public: when it changed since the index was built, look it up.
            _ => self.steps.iter().find(|step| step.id == id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Duration) -> RetryPolicy {
        RetryPolicy {
            max: 5,
            backoff,
            on: vec![RetryOn::Failure],
        }
    }

    #[test]
    fn delay_doubles_up_to_an_hour() {
        let retry = policy(Duration::from_secs(10));
        assert_eq!(retry.delay(0), Duration::from_secs(10));
        assert_eq!(retry.delay(1), Duration::from_secs(10));
        assert_eq!(retry.delay(2), Duration::from_secs(20));
        assert_eq!(retry.delay(3), Duration::from_secs(40));
        assert_eq!(retry.delay(9), Duration::from_secs(2560));
        assert_eq!(retry.delay(10), MAX_RETRY_DELAY);
        assert_eq!(retry.delay(33), MAX_RETRY_DELAY);
        assert_eq!(retry.delay(u32::MAX), MAX_RETRY_DELAY);
        assert_eq!(policy(Duration::from_secs(7200)).delay(1), MAX_RETRY_DELAY);
        assert_eq!(policy(Duration::ZERO).delay(u32::MAX), Duration::ZERO);
        assert_eq!(policy(Duration::MAX).delay(2), MAX_RETRY_DELAY);
        assert_eq!(
            policy(Duration::from_nanos(1)).delay(33),
            Duration::from_nanos(1 << 32)
        );
        assert_eq!(
            policy(Duration::from_nanos(1)).delay(u32::MAX),
            MAX_RETRY_DELAY
        );
    }

    #[test]
    fn retries_per_kind() {
        let retry = policy(DEFAULT_BACKOFF);
        assert_eq!(retry.retries(RetryOn::Failure), 5);
        assert_eq!(retry.retries(RetryOn::Infrastructure), 0);
        let default = RetryPolicy::default();
        assert_eq!(default.on, [RetryOn::Infrastructure]);
        assert_eq!(default.retries(RetryOn::Infrastructure), 0);
    }

    #[test]
    fn retry_on_names() {
        for kind in RetryOn::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::json!(kind.as_str()));
            assert_eq!(kind.to_string(), kind.as_str());
        }
    }
}

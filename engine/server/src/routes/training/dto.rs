//! The request and response types of the training façade: query parameters, bodies and
//! answers, with the OpenAPI schemas the document shows for them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DefaultConfigQuery {
    /// Training framework, e.g. `ultralytics` (a folder under `configs/`).
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub framework: String,
    /// Task, e.g. `detect` (a folder under `configs/<framework>/`).
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub task: String,
}

/// A framework's base config for a task.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefaultConfig {
    pub framework: String,
    pub task: String,
    /// Relative to the workspace, e.g. `configs/ultralytics/detect/default.yaml` or
    /// `configs/mmdetection/detect/default.py`.
    pub path: String,
    /// `yaml`, or `python` for MMDetection's config files.
    pub format: String,
    /// The file as written (YAML or Python, see `format`).
    pub yaml: String,
    /// The file parsed; null for a Python config (POST /training/config/resolve resolves it).
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
}

/// Who a config is resolved for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConfigMode {
    /// Only a few keys (epochs, imgsz, batch, ...) may be overridden.
    #[default]
    User,
    /// Any argument of the framework may be overridden.
    Developer,
}

impl ConfigMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigMode::User => "user",
            ConfigMode::Developer => "developer",
        }
    }
}

/// `POST /training/config/resolve` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveConfig {
    /// An installed plugin with a `resolve-config` action, e.g. `ultralytics`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub framework: String,
    /// e.g. `detect` or `segment`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub task: String,
    #[serde(default)]
    pub mode: ConfigMode,
    /// Base config relative to `configs/<framework>/` (default `<task>/default.yaml`).
    #[serde(default)]
    pub base_config: Option<String>,
    /// Arguments merged onto the base config.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub overrides: Map<String, Value>,
    /// Ultralytics: the dataset's data.yaml as the training will see it (default `<data.yaml>`, a
    /// placeholder). MMDetection previews leave the base config's dataset paths.
    #[serde(default)]
    pub data: Option<String>,
    /// The training the preview is for (default `preview`); only shown in the preview.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub training_name: Option<String>,
    /// With `training_name`: the project a training would start in; the answer then says
    /// whether that name is free (`training_name_problem`).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub project_id: Option<String>,
}

/// An override that user mode dropped.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RejectedKey {
    pub key: String,
    /// Why, and what would allow it.
    pub reason: String,
}

/// An option of a framework's config, for a form: user mode offers those with `user`, developer
/// mode all of them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigOption {
    /// The override's key (MMDetection's developer keys are dotted paths of the config).
    pub key: String,
    /// `int`, `float`, `bool`, `str`, `list` or `any`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value the resolved config has for it; null when the config leaves it to the
    /// framework's own default. Any JSON value.
    #[serde(default)]
    pub default: Value,
    /// Whether user mode may set it.
    pub user: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// A framework trainings can be started with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Framework {
    /// e.g. `ultralytics`: the `framework` of POST /training/start.
    pub name: String,
    /// The workflow a training runs.
    pub workflow: String,
    /// Tasks with a base config (`configs/<framework>/<task>/`).
    pub tasks: Vec<String>,
    /// The installed plugin's version; null when it is not installed.
    pub plugin_version: Option<String>,
    /// Whether a training can be started now.
    pub startable: bool,
    /// Why not, and what to do.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FrameworkList {
    pub frameworks: Vec<Framework>,
}

/// A resolved config.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResolvedConfig {
    /// The config the training will use, as the framework writes it: YAML, or Python for
    /// MMDetection (see `format`).
    pub resolved_yaml: String,
    /// `yaml` or `python`.
    pub format: String,
    /// The exact command line the training will run (placeholders where a run fills in paths).
    pub cli_preview: String,
    #[schema(value_type = Object)]
    pub config: Value,
    /// User mode: overrides dropped because only developer mode may set them. Empty otherwise.
    pub rejected: Vec<RejectedKey>,
    /// The options a form offers, user-mode ones first (empty when the plugin does not
    /// describe them).
    pub options: Vec<ConfigOption>,
    /// With `project_id` and `training_name`: why POST /training/start would refuse that
    /// name (it belongs to a run, or its folder exists without one); null when it is free.
    pub training_name_problem: Option<String>,
}

/// `POST /training/start` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartTraining {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub project_id: String,
    /// Outputs go to `projects/<project_id>/model/training/<training_name>/`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub training_name: String,
    /// e.g. `ultralytics`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub framework: String,
    /// e.g. `detect`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub task: String,
    /// Release ZIP file name under `projects/<project_id>/releases/` (or that full relative path).
    /// Give it or `dataset_path`.
    #[serde(default)]
    #[schema(
        pattern = "^([A-Za-z0-9][A-Za-z0-9._-]{0,127}|projects/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/releases/[A-Za-z0-9][A-Za-z0-9._-]{0,123}[.]zip)$"
    )]
    pub release: Option<String>,
    /// The training plan's name for the dataset: an extracted dataset folder
    /// `projects/<project_id>/training_data/<dataset>/` (extracted by Kiln from a release), or a
    /// release ZIP path. Give it or `release`.
    #[serde(default)]
    #[schema(
        pattern = "^projects/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/(training_data/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/?|releases/[A-Za-z0-9][A-Za-z0-9._-]{0,123}[.]zip)$"
    )]
    pub dataset_path: Option<String>,
    #[serde(default)]
    pub mode: ConfigMode,
    /// Base config relative to `configs/<framework>/` (or as `configs/<framework>/<file>`);
    /// default the task's `default.yaml` / `default.py`.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")]
    pub base_config: Option<String>,
    /// Overrides merged onto the task's base config.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
}

/// `POST /training/stop` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopTraining {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub project_id: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub training_name: String,
}

/// The run behind a training.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingRun {
    pub run_id: String,
    /// queued | running | succeeded | failed | cancelled
    pub status: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrainingQuery {
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub project_id: String,
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub training_name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub project_id: String,
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub training_name: String,
    /// Byte offset into the log: 0, or the `next_offset` of the previous page.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    pub offset: Option<String>,
}

/// Output lines of the training program.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingLogs {
    /// The latest run of the training.
    pub run_id: String,
    /// Lines split on `\n` and `\r`, ANSI escapes removed, empty lines dropped.
    pub lines: Vec<String>,
    /// Pass as `offset` to get what follows.
    pub next_offset: u64,
    /// The run has ended and everything it wrote has been returned.
    pub finished: bool,
}

/// A file of a training's `weights/` folder.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointFile {
    pub name: String,
    /// Relative to the workspace.
    pub path: String,
    pub size: u64,
    /// RFC 3339, UTC.
    pub modified: Option<String>,
    /// `best.pt`, the best weights so far.
    pub best: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Checkpoints {
    pub project_id: String,
    pub training_name: String,
    pub checkpoints: Vec<CheckpointFile>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckExtractedQuery {
    /// `projects/<project>/releases/<file>.zip`
    #[param(
        pattern = "^projects/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/releases/[A-Za-z0-9][A-Za-z0-9._-]{0,123}[.]zip$"
    )]
    pub zip_path: String,
}

/// Whether a release is extracted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtractionState {
    pub zip_path: String,
    /// The dataset folder holds this very archive (same SHA-256).
    pub extracted: bool,
    /// Where it is (or would be) extracted, relative to the workspace.
    pub dataset_dir: String,
    /// The dataset's data.yaml, relative to the workspace, when extracted.
    pub data_yaml: Option<String>,
}

/// `POST /training/extract-release` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractRelease {
    /// `projects/<project>/releases/<file>.zip`
    #[schema(
        pattern = "^projects/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/releases/[A-Za-z0-9][A-Za-z0-9._-]{0,123}[.]zip$"
    )]
    pub zip_path: String,
}

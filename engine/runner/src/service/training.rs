//! The training façade's operations: a training's run, a framework's base configs, a config
//! preview through the framework's plugin, releases and their extraction, a training's weights
//! files, exporting a finished run's best weights again.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use kiln_plugin_host::{FailureKind, ProcessTracker, Role, StepInvocation};
use kiln_store::{RunRecord, TrainingRef};

use super::RunService;
use crate::builtins::{self, BuiltinCtx};
use crate::workspace::check_name;
use crate::{Error, Missing, Result};

/// Stands for the dataset in a config preview when no `data` is given.
const DATA_PLACEHOLDER: &str = "<data.yaml>";
/// Stands for the project and training in a config preview when none is given.
pub const PREVIEW_NAME: &str = "preview";

/// The workflow that each framework's trainings run (`POST /training/start`): extract the
/// release, resolve the config, train, export, register.
pub const FRAMEWORK_WORKFLOWS: &[(&str, &str)] = &[
    ("ultralytics", "ultralytics-detect"),
    ("mmdetection", "mmdetection-detect"),
];

/// Most projects, and releases per project, that [`RunService::projects`] lists.
pub const MAX_LISTED: usize = 1000;

/// A framework trainings can be started with, and whether this workspace can start one now.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameworkInfo {
    pub name: String,
    /// The workflow a training runs.
    pub workflow: String,
    /// Tasks with a base config (`configs/<framework>/<task>/default.*`).
    pub tasks: Vec<String>,
    /// The version of the installed plugin, when it is installed with a `resolve-config` action.
    pub plugin_version: Option<String>,
    /// Why a training cannot be started, and what to do; None when it can.
    pub problem: Option<String>,
}

/// A release ZIP of a project.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseFile {
    pub file: String,
    pub size: u64,
    pub modified: Option<String>,
}

/// A project folder and its release ZIPs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectInfo {
    pub name: String,
    /// Sorted by name, at most [`MAX_LISTED`].
    pub releases: Vec<ReleaseFile>,
    /// More releases than listed.
    pub truncated: bool,
}

/// What to preview: a framework's resolve-config with these inputs, without starting anything.
#[derive(Debug, Clone)]
pub struct ConfigRequest {
    pub framework: String,
    pub task: String,
    /// `user` or `developer`.
    pub mode: String,
    pub overrides: Map<String, Value>,
    pub data: Option<String>,
    pub training_name: Option<String>,
    pub base_config: Option<String>,
}

/// The plugin's resolve-config outputs.
#[derive(Debug, Clone)]
pub struct ConfigPreview {
    /// The resolved config as the framework writes it (see `format`).
    pub resolved_yaml: String,
    /// `yaml` (Ultralytics) or `python` (MMDetection's config files).
    pub format: String,
    pub cli_preview: String,
    pub config: Value,
    /// Keys dropped in user mode (the plugin's `rejected` output), as it gave them.
    pub rejected: Value,
    /// The options a form offers (the plugin's `options` output), as it gave them; null when
    /// the plugin does not describe them.
    pub options: Value,
}

/// A file of a training's `weights/` folder.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointFile {
    pub name: String,
    /// Relative to the workspace.
    pub path: String,
    pub size: u64,
    pub modified: Option<String>,
    pub best: bool,
}

/// The weights folder of a training and its files.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    pub files: Vec<CheckpointFile>,
}

/// A finished run's best weights, exported again.
#[derive(Debug, Clone)]
pub struct ExportedBest {
    pub step: String,
    pub inputs: Value,
    pub outputs: Value,
}

/// A task folder's default base config: `default.yaml` (Ultralytics) or `default.py`
/// (MMDetection's Python configs).
fn default_file(dir: &Path) -> Option<PathBuf> {
    ["default.yaml", "default.py"]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

fn has_default(dir: &Path) -> bool {
    default_file(dir).is_some()
}

/// Sorted names of the plain-named subfolders of `dir` for which `keep` holds.
fn subdirs_with(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir() && keep(&e.path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| check_name("name", n).is_ok())
        .collect();
    out.sort();
    out
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A checkpoint file of a training folder.
pub(crate) struct TrainingFile {
    pub path: PathBuf,
    pub name: String,
    pub meta: std::fs::Metadata,
    /// Written by the framework at the top of the folder, not by export into `weights/`.
    pub framework: bool,
}

/// The checkpoints of a training folder: the files of `weights/` (where export puts the best)
/// and the `.pth` files a framework writes at the top (MMDetection's `epoch_N.pth`,
/// `best_…_epoch_N.pth`); files being written (`.tmp`) are left out. A missing folder has none.
pub(crate) fn checkpoint_files(training: &Path) -> Result<Vec<TrainingFile>> {
    let mut files = Vec::new();
    for (dir, framework) in [
        (training.join("weights"), false),
        (training.to_owned(), true),
    ] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("listing", &dir, e)),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if !meta.is_file() || name.ends_with(".tmp") || (framework && !name.ends_with(".pth")) {
                continue;
            }
            files.push(TrainingFile {
                path: entry.path(),
                name,
                meta,
                framework,
            });
        }
    }
    Ok(files)
}

impl RunService {
    /// The frameworks of [`FRAMEWORK_WORKFLOWS`], each with its tasks and what (if anything)
    /// keeps a training from starting.
    pub fn frameworks(&self) -> Vec<FrameworkInfo> {
        let configs = self.workspace().configs_dir();
        let plugins = self.runner.installed_plugins();
        FRAMEWORK_WORKFLOWS
            .iter()
            .map(|&(name, workflow)| {
                let tasks = subdirs_with(&configs.join(name), has_default);
                let plugin_version = plugins
                    .plugins()
                    .find(|p| {
                        p.info.name == name
                            && p.info.actions.iter().any(|a| a.name == "resolve-config")
                    })
                    .map(|p| p.info.version.clone());
                let has_workflow = matches!(self.workflows().get(workflow), Ok(Some(_)));
                let problem = if plugin_version.is_none() {
                    Some(format!(
                        "the `{name}` plugin is not installed: put its component in the plugins \
                         folder (`kiln init` installs the bundled ones)"
                    ))
                } else if !has_workflow {
                    Some(format!(
                        "the workflow `{workflow}` is missing or invalid in the workflows folder \
                         (GET /workflows shows its diagnostics)"
                    ))
                } else if tasks.is_empty() {
                    Some(format!(
                        "no base config: add configs/{name}/<task>/default.* to the workspace"
                    ))
                } else {
                    None
                };
                FrameworkInfo {
                    name: name.to_owned(),
                    workflow: workflow.to_owned(),
                    tasks,
                    plugin_version,
                    problem,
                }
            })
            .collect()
    }

    /// The project folders under `projects/` (plain names only, sorted, at most
    /// [`MAX_LISTED`]) with their release ZIPs.
    pub fn projects(&self) -> Result<(Vec<ProjectInfo>, bool)> {
        let root = self.workspace().root().join("projects");
        let mut names = subdirs_with(&root, |_| true);
        let truncated = names.len() > MAX_LISTED;
        names.truncate(MAX_LISTED);
        let mut projects = Vec::with_capacity(names.len());
        for name in names {
            let dir = self.workspace().releases_dir(&name)?;
            let mut releases: Vec<ReleaseFile> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let file = e.file_name().to_str()?.to_owned();
                    let meta = e.metadata().ok()?;
                    (meta.is_file()
                        && file.ends_with(".zip")
                        && check_name("release", &file).is_ok())
                    .then(|| ReleaseFile {
                        file,
                        size: meta.len(),
                        modified: meta.modified().ok().map(kiln_store::timestamp),
                    })
                })
                .collect();
            releases.sort_by(|a, b| a.file.cmp(&b.file));
            let more = releases.len() > MAX_LISTED;
            releases.truncate(MAX_LISTED);
            projects.push(ProjectInfo {
                name,
                releases,
                truncated: more,
            });
        }
        Ok((projects, truncated))
    }

    /// Why a new training `project`/`name` could not start now (the rules of
    /// [`crate::ownership`]: the name belongs to a run, or its folder exists without an owner);
    /// None when it can.
    pub async fn training_name_problem(&self, project: &str, name: &str) -> Result<Option<String>> {
        let training = TrainingRef {
            project: project.to_owned(),
            name: name.to_owned(),
        };
        if let Some((run, status)) = self.store().training_owner(&training).await? {
            return Ok(Some(format!(
                "training `{name}` of project `{project}` belongs to run {run} ({status}); \
                 choose another training_name, or delete that run first"
            )));
        }
        match crate::ownership::check_unowned_folder(
            self.workspace(),
            self.store(),
            &training,
            None,
        )
        .await
        {
            Ok(()) => Ok(None),
            Err(Error::Conflict(message)) => Ok(Some(message)),
            Err(e) => Err(e),
        }
    }

    /// The run that owns the training `project`/`name` (see [`crate::ownership`]).
    pub async fn training_run(&self, project: &str, name: &str) -> Result<Option<RunRecord>> {
        let training = TrainingRef {
            project: project.to_owned(),
            name: name.to_owned(),
        };
        match self.store().training_owner(&training).await? {
            Some((run, _)) => Ok(Some(self.store().run(&run).await?)),
            None => Ok(None),
        }
    }

    /// A framework's base config for a task: the path of `configs/<framework>/<task>/default.yaml`
    /// (or `default.py`), its text, and its content when it is YAML (a Python config is only
    /// known once its framework resolves it: None).
    pub fn default_config(
        &self,
        framework: &str,
        task: &str,
    ) -> Result<(PathBuf, String, Option<Value>)> {
        check_name("framework", framework)?;
        check_name("task", task)?;
        let configs = self.workspace().configs_dir();
        let frameworks = subdirs_with(&configs, |d| !subdirs_with(d, has_default).is_empty());
        if !frameworks.iter().any(|f| f == framework) {
            return Err(Error::NotFound(
                Missing::Framework,
                format!(
                    "no base configs for framework `{framework}`; frameworks: {}",
                    list_or_none(&frameworks)
                ),
            ));
        }
        let tasks = subdirs_with(&configs.join(framework), has_default);
        let Some(file) = tasks
            .iter()
            .any(|t| t == task)
            .then(|| default_file(&configs.join(framework).join(task)))
            .flatten()
        else {
            return Err(Error::NotFound(
                Missing::Task,
                format!(
                    "framework `{framework}` has no base config for task `{task}`; tasks: {}",
                    list_or_none(&tasks)
                ),
            ));
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io("reading", &file, e))?;
        if file.extension().is_some_and(|e| e == "py") {
            return Ok((file, text, None));
        }
        let config = if text.trim().is_empty() {
            json!({})
        } else {
            kiln_workflow::limits::check_yaml(&text)
                .and_then(|()| serde_norway::from_str(&text).map_err(|e| e.to_string()))
                .map_err(|e| {
                    Error::Config(format!(
                        "{} is not valid YAML: {e}; the operator must fix it",
                        file.display()
                    ))
                })?
        };
        Ok((file, text, Some(config)))
    }

    /// Runs the framework plugin's `resolve-config` on `request` in a scratch folder: the
    /// merged config and the exact command line, without starting anything.
    pub async fn preview_config(&self, request: &ConfigRequest) -> Result<ConfigPreview> {
        check_name("framework", &request.framework)?;
        check_name("task", &request.task)?;
        let training_name = request.training_name.as_deref().unwrap_or(PREVIEW_NAME);
        check_name("training_name", training_name)?;
        let plugins = self.runner.installed_plugins();
        let resolvers: Vec<String> = plugins
            .plugins()
            .filter(|p| p.info.actions.iter().any(|a| a.name == "resolve-config"))
            .map(|p| p.info.name.clone())
            .collect();
        if !resolvers.contains(&request.framework) {
            return Err(Error::NotFound(
                Missing::Framework,
                format!(
                    "no installed plugin `{}` with a resolve-config action; frameworks: {} \
                     (plugins are .wasm files in .kiln/plugins/)",
                    request.framework,
                    list_or_none(&resolvers)
                ),
            ));
        }
        let ws = self.workspace();
        let config_dir = ws.configs_dir().join(&request.framework);
        if !config_dir.is_dir() {
            return Err(Error::NotFound(
                Missing::Framework,
                format!(
                    "framework `{}` has no config folder {}",
                    request.framework,
                    ws.display(&config_dir)
                ),
            ));
        }
        let mut inputs = json!({
            "project": PREVIEW_NAME,
            "training_name": training_name,
            "task": request.task,
            "mode": request.mode,
            "data": request.data.as_deref().unwrap_or(DATA_PLACEHOLDER),
            "overrides": request.overrides,
            "report_rejected": request.mode == "user",
        });
        if let Some(base) = &request.base_config {
            inputs["base_config"] = Value::String(base.clone());
        }
        let scratch = Scratch(ws.scratch_dir());
        std::fs::create_dir_all(&scratch.0).map_err(|e| Error::io("creating", &scratch.0, e))?;
        let inv = StepInvocation {
            run_id: format!("resolve-{}", uuid::Uuid::new_v4()),
            step_id: "resolve".into(),
            attempt: 1,
            action: "resolve-config".into(),
            inputs,
            dirs: vec![Role::Config.grant(config_dir)],
            log_dir: scratch.0.join("logs"),
            state_dir: scratch.0.join("state"),
            processes: ProcessTracker::default(),
            events: None,
            retry: None,
            gpus: None,
            // A preview runs here, whatever the workspace's launcher.
            launcher: kiln_supervisor::Launcher::Local,
            // A preview records nothing.
            before_launch: None,
        };
        // A short call: it never waits for the steps' slots, which trainings hold for hours.
        let slot = plugins.engine().short_call_slot().await;
        let outputs = plugins
            .run(&request.framework, &inv, slot)
            .await
            .map_err(|f| match f.kind {
                FailureKind::InvalidInput => Error::Input(f.message),
                _ => Error::Plugin(format!(
                    "plugin `{}` could not resolve the config: {}",
                    request.framework, f.message
                )),
            })?;
        drop(scratch);
        let text = |name: &str| {
            outputs
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::Plugin(format!(
                        "plugin `{}` returned no `{name}` from resolve-config",
                        request.framework
                    ))
                })
        };
        Ok(ConfigPreview {
            // Ultralytics gives YAML; a framework whose configs are not YAML says so.
            resolved_yaml: text("resolved_yaml").or_else(|_| text("resolved_text"))?,
            format: outputs
                .get("format")
                .and_then(Value::as_str)
                .unwrap_or("yaml")
                .to_owned(),
            cli_preview: text("cli_preview")?,
            config: outputs.get("config").cloned().unwrap_or_else(|| json!({})),
            rejected: outputs.get("rejected").cloned().unwrap_or(Value::Null),
            options: outputs.get("options").cloned().unwrap_or(Value::Null),
        })
    }

    /// The path of release `file` of `project`, which must exist.
    pub fn release(&self, project: &str, file: &str) -> Result<PathBuf> {
        check_name("project", project)?;
        check_name("release", file)?;
        let zip = self.workspace().releases_dir(project)?.join(file);
        if !zip.is_file() {
            return Err(Error::NotFound(
                Missing::Release,
                format!(
                    "release {} does not exist; upload the release ZIP there first",
                    self.workspace().display(&zip)
                ),
            ));
        }
        Ok(zip)
    }

    /// Where release `file` of `project` is (or would be) extracted, and, when it is extracted
    /// from this very archive, Some (with its data.yaml for a YOLO dataset).
    pub async fn extraction_status(
        &self,
        project: &str,
        file: &str,
    ) -> Result<(PathBuf, Option<Option<PathBuf>>)> {
        self.release(project, file)?;
        let stem = file.trim_end_matches(".zip").to_owned();
        let dataset = self.workspace().training_data_dir(project)?.join(&stem);
        let ws = self.workspace().clone();
        let (project, file) = (project.to_owned(), file.to_owned());
        let status =
            tokio::task::spawn_blocking(move || builtins::extraction_status(&ws, &project, &file))
                .await
                .map_err(|e| Error::Input(format!("checking the extraction: {e}")))??;
        Ok((dataset, status.map(|(_, data_yaml)| data_yaml)))
    }

    /// The release file Kiln extracted into dataset folder `slug` of `project`, if it did.
    pub fn release_of_dataset(&self, project: &str, slug: &str) -> Result<Option<String>> {
        check_name("project", project)?;
        builtins::release_of(self.workspace(), project, slug)
    }

    /// Extracts release `file` of `project` (the `builtin/extract-release` outputs).
    pub async fn extract_release(&self, project: &str, file: &str, by: &str) -> Result<Value> {
        self.release(project, file)?;
        let inputs = json!({"project": project, "release": file});
        let label = format!("projects/{project}/releases/{file}");
        let log = move |message: &str| {
            tracing::info!(target: "operations.training", zip_path = %label, "{message}");
        };
        builtins::run(
            "builtin/extract-release",
            &BuiltinCtx {
                ws: self.workspace(),
                store: self.store(),
                run_id: "",
                step_id: "extract-release",
                created_by: by,
                inputs: &inputs,
                log: &log,
            },
        )
        .await
    }

    /// The weights of a training, the exported best first: the files of its `weights/` folder
    /// (where export puts `best.pt` / `best.pth`), and the checkpoints a framework writes at the
    /// top of the training's folder (MMDetection's `epoch_N.pth`, `best_…_epoch_N.pth`).
    pub fn weight_files(&self, project: &str, name: &str) -> Result<WeightFiles> {
        let ws = self.workspace();
        let training = ws.training_dir(project, name)?;
        let mut files: Vec<CheckpointFile> = checkpoint_files(&training)?
            .into_iter()
            .map(|f| CheckpointFile {
                path: ws.display(&f.path),
                size: f.meta.len(),
                modified: f.meta.modified().ok().map(kiln_store::timestamp),
                best: builtins::is_exported_best(&f.name)
                    || (f.framework && f.name.starts_with("best_")),
                name: f.name,
            })
            .collect();
        files.sort_by(|a, b| b.best.cmp(&a.best).then_with(|| a.name.cmp(&b.name)));
        Ok(WeightFiles { files })
    }

    /// Runs the export of a finished run's best weights again (`builtin/export-best`): with the
    /// inputs its export step recorded, else with the training step's `best_weights` output and
    /// its `project` / `training_name` inputs.
    pub async fn export_best(&self, run: &RunRecord, by: &str) -> Result<ExportedBest> {
        if !run.status.is_terminal() {
            return Err(Error::Conflict(format!(
                "run {} is {}; export its best weights once it has finished, or cancel it first",
                run.id, run.status
            )));
        }
        let steps = self.store().steps(&run.id).await?;
        let export_step = steps.iter().find(|s| s.uses == "builtin/export-best");
        let recorded = export_step.and_then(|s| s.inputs.clone().filter(Value::is_object));
        let inputs = match recorded {
            Some(inputs) => inputs,
            None => {
                let train = steps.iter().find_map(|s| {
                    let best = s.outputs.as_ref()?.get("best_weights")?.as_str()?;
                    let (project, training) = crate::ownership::training_of(s.inputs.as_ref()?)?;
                    let mut built = json!({
                        "project": project,
                        "training_name": training,
                        "best_weights": best,
                    });
                    if let Some(metrics) = s.outputs.as_ref().and_then(|o| o.get("metrics")) {
                        built["metrics"] = metrics.clone();
                    }
                    // The resolved training config, from the step of the same training that
                    // resolved it (`resolved_yaml` output), becomes `artifacts/config.yaml`.
                    let resolved = steps.iter().find_map(|r| {
                        (crate::ownership::training_of(r.inputs.as_ref()?)? == (project, training))
                            .then_some(())?;
                        r.outputs.as_ref()?.get("resolved_yaml")?.as_str()
                    });
                    if let Some(yaml) = resolved {
                        built["resolved_yaml"] = json!(yaml);
                    }
                    Some(built)
                });
                train.ok_or_else(|| {
                    Error::Conflict(format!(
                        "run {} has nothing to export: no `builtin/export-best` step with \
                         recorded inputs and no step with a `best_weights` output and \
                         `project` / `training_name` inputs; only a run whose training \
                         finished can be exported",
                        run.id
                    ))
                })?
            }
        };
        let step = export_step
            .map_or("export", |s| s.step_id.as_str())
            .to_owned();
        let run_id = run.id.clone();
        let log_step = step.clone();
        let log = move |message: &str| {
            tracing::info!(target: "operations.training", run_id = %run_id, step_id = %log_step, "{message}");
        };
        let outputs = builtins::run(
            "builtin/export-best",
            &BuiltinCtx {
                ws: self.workspace(),
                store: self.store(),
                run_id: &run.id,
                step_id: &step,
                created_by: by,
                inputs: &inputs,
                log: &log,
            },
        )
        .await?;
        Ok(ExportedBest {
            step,
            inputs,
            outputs,
        })
    }
}

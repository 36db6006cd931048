//! Who owns what on disk, and what deleting a run may remove.
//!
//! - **Training folders** (`projects/<p>/model/training/<name>/`) have one owner: the run that
//!   claimed the name first. A run claims the trainings its steps name (a step with `project`
//!   and `training_name` inputs works in that folder) when it is created, for names that follow
//!   from its params alone, and otherwise when such a step starts. The name stays taken until
//!   the owning run is deleted; a second run naming it is refused (at creation, or its step
//!   fails) with the owner named. Resuming or retrying the owner is the owner. A folder that
//!   exists with no owner (made outside Kiln, or left by a run deleted without purging) is not
//!   taken over either.
//! - **Extracted datasets** (`projects/<p>/training_data/<slug>/`) are shared: every run that
//!   used one is recorded with the release it held. `extract-release` never replaces a dataset
//!   that another run used with a different release.
//! - **Purging** a run deletes its run folder, the training folders it owns, unless a
//!   registered model references a file in one (then nothing is deleted and the models are
//!   named), and the datasets no other run used. Nothing else.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use kiln_plugin_host::{GrantedDir, Role};
use kiln_store::{Store, TrainingRef};
use kiln_workflow::{ExprContext, RenderBudget, Workflow, render_input};

use crate::workspace::{Workspace, check_name};
use crate::{Error, Result};

/// How long naming a run's trainings may take at most (a hostile expression runs out of it).
const PLANNING_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The training a step's inputs name: its `project` and `training_name`, when both are strings.
pub(crate) fn training_of(inputs: &Value) -> Option<(&str, &str)> {
    Some((
        inputs.get("project")?.as_str()?,
        inputs.get("training_name")?.as_str()?,
    ))
}

/// The directories a plugin step is granted (the files capability's roles): the project's
/// training data (from its `project` input), the training's output folder (with its
/// `training_name` input too) and the plugin's own configuration folder `configs/<plugin>/`.
pub(crate) fn step_dirs(ws: &Workspace, plugin: &str, inputs: &Value) -> Result<Vec<GrantedDir>> {
    let mut dirs = Vec::new();
    if let Some(project) = inputs.get("project").and_then(Value::as_str) {
        dirs.push(Role::TrainingData.grant(ws.training_data_dir(project)?));
        if let Some((project, name)) = training_of(inputs) {
            dirs.push(Role::TrainingOutput.grant(ws.training_dir(project, name)?));
        }
    }
    let config = ws.configs_dir().join(plugin);
    if config.is_dir() {
        dirs.push(Role::Config.grant(config));
    }
    Ok(dirs)
}

fn training_ref(project: &str, name: &str) -> TrainingRef {
    TrainingRef {
        project: project.to_owned(),
        name: name.to_owned(),
    }
}

/// The trainings a run of `workflow` will write that follow from its params alone (inputs that
/// need other steps' outputs are claimed when their step starts). Invalid names are errors now.
pub(crate) fn planned_trainings(
    ws: &Workspace,
    workflow: &Workflow,
    params: &Map<String, Value>,
) -> Result<Vec<TrainingRef>> {
    let ctx = ExprContext::new(params.clone());
    let mut trainings = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // One budget for every step: naming a run's trainings costs one rendering at most.
    let deadline = std::time::Instant::now() + PLANNING_TIME;
    let mut budget = RenderBudget::new(Some(deadline));
    for step in &workflow.steps {
        let project = render_input(step, "project", &ctx, &mut budget);
        let name = render_input(step, "training_name", &ctx, &mut budget);
        let (Some(project), Some(name)) = (project, name) else {
            continue;
        };
        let (project, name) = match (project, name) {
            (Ok(project), Ok(name)) => (project, name),
            // Out of budget: refused. Else it needs other steps' outputs: claimed at its start.
            (Err(e), _) | (_, Err(e)) if budget.is_spent() => {
                return Err(Error::Input(format!(
                    "step `{}`: naming its training costs too much: {}",
                    e.step, e.message
                )));
            }
            _ => continue,
        };
        let (Some(project), Some(name)) = (project.as_str(), name.as_str()) else {
            continue;
        };
        ws.training_dir(project, name)
            .map_err(|e| Error::Input(format!("step `{}`: {e}", step.id)))?;
        let training = training_ref(project, name);
        if seen.insert(training.clone()) {
            trainings.push(training);
        }
    }
    Ok(trainings)
}

fn is_empty_or_missing(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => !dir.exists(),
    }
}

/// Refuses a training whose folder has content but no owner, unless `run` is a run (from
/// before ownership was recorded) whose own steps named it.
pub(crate) async fn check_unowned_folder(
    ws: &Workspace,
    store: &Store,
    training: &TrainingRef,
    run: Option<&str>,
) -> Result<()> {
    let dir = ws.training_dir(&training.project, &training.name)?;
    if is_empty_or_missing(&dir) || store.training_owner(training).await?.is_some() {
        return Ok(());
    }
    if let Some(run) = run {
        let named = store.steps(run).await?.iter().any(|step| {
            step.inputs.as_ref().and_then(training_of)
                == Some((training.project.as_str(), training.name.as_str()))
        });
        if named {
            return Ok(());
        }
    }
    Err(Error::Conflict(format!(
        "{} exists but no run owns it (it was made outside Kiln, or its run was deleted without \
         purging); move it away, or choose another training_name",
        ws.display(&dir)
    )))
}

/// The store's "owned by another run" as the runner's conflict.
pub(crate) fn conflict(e: kiln_store::Error) -> Error {
    match e {
        e @ kiln_store::Error::TrainingTaken { .. } => Error::Conflict(e.to_string()),
        other => Error::Store(other),
    }
}

/// Claims the training a starting step works in (its inputs' `project` and `training_name`).
pub(crate) async fn claim_for_step(
    ws: &Workspace,
    store: &Store,
    run_id: &str,
    inputs: &Value,
) -> Result<()> {
    let Some((project, name)) = training_of(inputs) else {
        return Ok(());
    };
    ws.training_dir(project, name)?;
    let training = training_ref(project, name);
    check_unowned_folder(ws, store, &training, Some(run_id)).await?;
    store
        .claim_training(run_id, &training)
        .await
        .map_err(conflict)?;
    Ok(())
}

/// `path` with `.` dropped and `..` applied, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Where `path` (relative to the workspace, or absolute) really is: with symlinks resolved when
/// it exists, else with `.` and `..` resolved by name.
pub(crate) fn resolve(ws: &Workspace, path: &Path) -> PathBuf {
    let path = ws.root().join(path);
    std::fs::canonicalize(&path).unwrap_or_else(|_| normalize(&path))
}

/// What a purge removed and what it kept, with why.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PurgeReport {
    /// Workspace-relative paths deleted.
    pub deleted: Vec<String>,
    /// Workspace-relative paths kept, each with the reason.
    pub kept: Vec<(String, String)>,
}

/// Deletes what `run_id` owns on disk (see the module doc); the run's records are left to the
/// caller. Refuses, deleting nothing, while a registered model references a file in one of the
/// run's training folders.
pub async fn purge(ws: &Workspace, store: &Store, run_id: &str) -> Result<PurgeReport> {
    let mut report = PurgeReport::default();
    // What would go: the run's training folders, the datasets no other run used, its folder.
    let mut folders = Vec::new();
    for training in store.trainings_of(run_id).await? {
        folders.push(ws.training_dir(&training.project, &training.name)?);
    }
    // Hold the datasets' locks (in name order, as one extraction holds one) until the end, so
    // no extraction starts using one while it is being purged.
    let mut locks = Vec::new();
    let mut datasets = store.datasets_of(run_id).await?;
    datasets.sort();
    for (project, slug) in datasets {
        check_name("project", &project)?;
        check_name("slug", &slug)?;
        let dir = ws.training_data_dir(&project)?.join(&slug);
        locks.push(dataset_lock(ws, &project, &slug).await?);
        let others: Vec<String> = store
            .dataset_users(&project, &slug)
            .await?
            .into_iter()
            .filter(|u| u.run_id != run_id)
            .map(|u| u.run_id)
            .collect();
        if others.is_empty() {
            folders.push(dir);
        } else if dir.exists() {
            report.kept.push((
                ws.display(&dir),
                format!("also used by run(s) {}", others.join(", ")),
            ));
        }
    }
    folders.push(ws.run_dir(run_id));
    // No file a registered model references may go, whatever the model's project, however
    // its path is written, through whatever symlink.
    let roots: Vec<PathBuf> = folders
        .iter()
        .map(|dir| std::fs::canonicalize(dir).unwrap_or_else(|_| normalize(dir)))
        .collect();
    let mut referenced = Vec::new();
    for model in store.list_models(None).await? {
        let files = std::iter::once(model.file_path.as_str()).chain(model.config_path.as_deref());
        for file in files {
            let real = resolve(ws, Path::new(file));
            if roots.iter().any(|root| real.starts_with(root)) {
                referenced.push(format!(
                    "model `{}` version {} of project `{}` ({}) references {file}",
                    model.name, model.version, model.project, model.id
                ));
            }
        }
    }
    if !referenced.is_empty() {
        return Err(Error::Conflict(format!(
            "nothing was purged: {}; delete the run without purging its outputs, or stop using \
             those models first",
            referenced.join("; ")
        )));
    }
    for dir in folders {
        remove_dir(ws, &dir, &mut report)?;
    }
    drop(locks);
    Ok(report)
}

fn remove_dir(ws: &Workspace, dir: &Path, report: &mut PurgeReport) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            report.deleted.push(ws.display(dir));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("deleting", dir, e)),
    }
}

/// The lock that serializes everything done to one extracted dataset (extraction, reuse,
/// purge) across runs and processes. Held until dropped; waiting for it ends when the future
/// is dropped (a cancelled or timed-out step).
pub(crate) async fn dataset_lock(
    ws: &Workspace,
    project: &str,
    slug: &str,
) -> Result<std::fs::File> {
    let locks = ws.kiln_dir().join("locks");
    std::fs::create_dir_all(&locks).map_err(|e| Error::io("creating", &locks, e))?;
    let lock_path = locks.join(format!("extract-{project}-{slug}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("opening", &lock_path, e))?;
    loop {
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(lock),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(Error::io("locking", &lock_path, e.into())),
        }
    }
}

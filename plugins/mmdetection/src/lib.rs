//! Kiln plugin for MMDetection (`uses: mmdetection`).
//!
//! Actions:
//! - `resolve-config`: MMEngine itself reads a base config under `configs/mmdetection/<task>/`
//!   (MMDetection's Python format, `_base_` inheritance included), applies the overrides (user
//!   mode: the safe options; developer mode: any key of the resolved config), points every
//!   dataloader and evaluator at the extracted COCO release, and writes the resolved config to
//!   the training's `artifacts/config.py` with the exact command line `train` will run, and
//!   returns the options a training form offers (`options`: the user-mode options, then the
//!   keys developer mode takes, each with its value in the resolved config). The
//!   plugin launches `python` (granted by the operator) with the resolver in
//!   [`RESOLVER`]: nothing of Python's config semantics is re-implemented here.
//! - `train`: launches MMDetection's `tools/train.py` itself (not `mim`, whose trainer outlives a
//!   SIGTERM) with `--work-dir` = the training's folder, follows its log ([`monitor`]: epoch and
//!   iteration, losses, ETA, `coco/bbox_mAP…` validations), reports `epoch_N.pth` and
//!   `best_coco_bbox_mAP_epoch_N.pth` as checkpoints, resumes with `--resume` on a retry after an
//!   infrastructure failure, and fails a run that ends without detections or best weights.
//!
//! The request and the resolver's answer are plain functions ([`request`], [`answer`]) with
//! native tests; this file's `run` holds the glue to the host.

pub mod monitor;

use kiln_plugin_sdk::lines::LineSplitter;
use kiln_plugin_sdk::process::{Command, describe_exit};
use kiln_plugin_sdk::{
    ActionInfo, GrantedDir, InputKind, Inputs, Plugin, PluginInfo, StepContext, StepError, log,
    progress,
};
use monitor::{Event, Monitor};
use serde_json::{Map, Value, json};

/// The program the operator grants this plugin: the Python that has MMEngine and MMDetection.
pub const PROGRAM: &str = "python";
pub const ROLE_OUTPUT: &str = "training-output";
pub const ROLE_CONFIG: &str = "config";
pub const TASKS: &[&str] = &["detect"];
/// The resolver run in that Python (`python -c RESOLVER REQUEST`).
pub const RESOLVER: &str = include_str!("resolve.py");

const READ_MAX_BYTES: u32 = 64 * 1024;
/// Largest request handed to the resolver (one argument: Linux caps one at 128 KiB).
const MAX_REQUEST_BYTES: usize = 100 * 1024;
const READ_TIMEOUT_MS: u32 = 1000;

pub struct MmDetection;

kiln_plugin_sdk::export_plugin!(MmDetection);

impl Plugin for MmDetection {
    fn describe() -> PluginInfo {
        describe()
    }

    fn run(action: String, ctx: StepContext) -> Result<String, StepError> {
        kiln_plugin_sdk::run_action(
            "mmdetection",
            &[("resolve-config", resolve_config), ("train", train)],
            &action,
            &ctx,
        )
    }
}

/// What describe says of resolve-config's `options` output.
const OPTIONS_DESCRIPTION: &str = "the options a training form offers: a list of {key, type \
     (int, float, bool, str, list or any), default (the resolved config's value, or null), user \
     (whether user mode may set it), description}: the user-mode options first, then the keys \
     developer mode takes by key (the resolved config's leaves, dotted; a list is one value; at \
     most 2000), without those Kiln sets itself";

pub fn describe() -> PluginInfo {
    PluginInfo::new("mmdetection", env!("CARGO_PKG_VERSION"))
        .launches(&["python"])
        .action(
            ActionInfo::new(
                "resolve-config",
                "Resolve a base config under configs/mmdetection/<task>/ with MMEngine, apply the \
             overrides, point it at the dataset, and write it with the exact training command \
             to the training's artifacts/",
            )
            .required("task", InputKind::String, "detect")
            .optional(
                "dataset",
                InputKind::Object,
                "the COCO release: builtin/extract-release's outputs (data_root, annotations, \
             images, class_names); required in a run, optional in a preview",
            )
            .optional(
                "base_config",
                InputKind::Path,
                "base config file under the config directory (default detect/default.py)",
            )
            .optional(
                "mode",
                InputKind::String,
                "user (default: only epochs, batch_size, lr, imgsz, device, checkpoint_interval, \
             val_interval, amp) or developer (any key of the resolved config, dotted, but those \
             Kiln sets and MMEngine's own `_..._` markers)",
            )
            .optional(
                "overrides",
                InputKind::Object,
                "object of options (user mode) or dotted config keys (developer mode)",
            )
            .optional(
                "report_rejected",
                InputKind::Boolean,
                "in user mode, drop overrides only developer mode allows and list them in \
             `rejected` instead of failing (default false; unknown keys still fail)",
            )
            .required("project", InputKind::String, "project name")
            .required(
                "training_name",
                InputKind::String,
                "name of this training; the resolved config lands in its artifacts/",
            )
            .outputs(&[
                "config_path",
                "resolved_text",
                "command",
                "cli_preview",
                "train_script",
                "epochs",
                "imgsz",
                "input_size",
                "device",
                "splits",
                "rejected",
                "config",
                "format",
            ])
            .output("options", OPTIONS_DESCRIPTION),
        )
        .action(
            ActionInfo::new(
                "train",
                "Train with MMDetection's tools/train.py on a config from resolve-config",
            )
            .required("task", InputKind::String, "detect")
            .required(
                "config",
                InputKind::Object,
                "resolve-config's outputs (config_path, epochs, device); the trainer is the one \
             resolve-config recorded in artifacts/command.txt",
            )
            .required("project", InputKind::String, "project name")
            .required(
                "training_name",
                InputKind::String,
                "name of this training (its folder is the work dir)",
            )
            .optional(
                "resume",
                InputKind::Boolean,
                "continue from the work dir's last_checkpoint (--resume; default false; every \
             attempt after the first does)",
            )
            .optional(
                "cpu_threads",
                InputKind::Integer,
                "OMP_NUM_THREADS for the trainer (on a small shared CPU machine 1 is fastest)",
            )
            .outputs(&[
                "work_dir",
                "best_weights",
                "last_checkpoint",
                "checkpoints",
                "metrics",
                "epochs_completed",
                "resumed_from_epoch",
                "scalars_json",
                "config_path",
            ]),
        )
}

/// The COCO dataset part of the request, from the extract step's outputs.
pub fn dataset_of(inputs: &Inputs) -> Result<Value, StepError> {
    let dataset = inputs.require_object("dataset")?;
    match dataset.get("layout").and_then(Value::as_str) {
        Some("coco") | None => {}
        Some(other) => {
            return Err(StepError::invalid_input(format!(
                "input 'dataset' is a {other} release; MMDetection trains on COCO releases \
                 (annotations/<split>.json with the images beside them)"
            )));
        }
    }
    let field = |name: &str| {
        dataset.get(name).ok_or_else(|| {
            StepError::invalid_input(format!(
                "input 'dataset' has no '{name}' (pass builtin/extract-release's outputs of a \
                 COCO release)"
            ))
        })
    };
    let data_root = field("data_root")?
        .as_str()
        .filter(|s| s.starts_with('/'))
        .ok_or_else(|| {
            StepError::invalid_input("input 'dataset.data_root' must be an absolute path")
        })?;
    let paths = |name: &str| -> Result<Map<String, Value>, StepError> {
        let map = field(name)?.as_object().cloned().ok_or_else(|| {
            StepError::invalid_input(format!(
                "input 'dataset.{name}' must be an object of split → path"
            ))
        })?;
        if let Some((split, _)) = map
            .iter()
            .find(|(_, v)| !v.as_str().is_some_and(|p| p.starts_with('/')))
        {
            return Err(StepError::invalid_input(format!(
                "input 'dataset.{name}.{split}' must be an absolute path"
            )));
        }
        Ok(map)
    };
    let annotations = paths("annotations")?;
    let images = paths("images")?;
    if let Some(split) = annotations.keys().find(|k| !images.contains_key(*k)) {
        return Err(StepError::invalid_input(format!(
            "input 'dataset' has annotations for split '{split}' but no images folder for it"
        )));
    }
    let class_names = field("class_names")?
        .as_array()
        .filter(|names| {
            !names.is_empty()
                && names
                    .iter()
                    .all(|n| n.as_str().is_some_and(|s| !s.trim().is_empty()))
        })
        .ok_or_else(|| {
            StepError::invalid_input("input 'dataset.class_names' must be a list of class names")
        })?;
    Ok(json!({
        "data_root": data_root,
        "annotations": annotations,
        "images": images,
        "class_names": class_names,
    }))
}

/// The resolver's request.
pub fn request(
    base_config: &str,
    mode: &str,
    overrides: &Map<String, Value>,
    report_rejected: bool,
    dataset: Value,
    output_dir: Option<&str>,
) -> Value {
    json!({
        "base_config": base_config,
        "mode": mode,
        "overrides": overrides,
        "report_rejected": report_rejected,
        "dataset": dataset,
        "output_dir": output_dir,
    })
}

/// What the resolver printed: its result (hex-encoded JSON over `KILN_RESULT_HEX` lines, ended
/// by `KILN_RESULT_END`), its refusal (a step error), or, when it printed neither, the end of
/// its output to explain the failure.
pub fn answer(output: &[String], exit: &str) -> Result<Value, StepError> {
    let mut hex_text = String::new();
    for line in output {
        if let Some(chunk) = line.strip_prefix("KILN_RESULT_HEX ") {
            hex_text.push_str(chunk.trim());
        } else if line == "KILN_RESULT_END" {
            let bytes = hex::decode(&hex_text).map_err(|e| {
                StepError::internal(format!("the resolver's result is not hex: {e}"))
            })?;
            return serde_json::from_slice(&bytes).map_err(|e| {
                StepError::internal(format!("the resolver's result is not JSON: {e}"))
            });
        } else if let Some(error) = line.strip_prefix("KILN_ERROR ") {
            let parsed: Value = serde_json::from_str(error).unwrap_or_else(|_| json!({}));
            let message = parsed["message"].as_str().unwrap_or(error).to_owned();
            return Err(match parsed["kind"].as_str() {
                Some("invalid_input") => StepError::invalid_input(message),
                _ => StepError::program_failed(message),
            });
        }
    }
    let shown: Vec<&str> = output
        .iter()
        .filter(|l| !l.starts_with("KILN_RESULT_HEX "))
        .map(String::as_str)
        .collect();
    let tail = &shown[shown.len().saturating_sub(12)..];
    Err(StepError::program_failed(format!(
        "the MMEngine resolver ended ({exit}) without a result; its last output:\n{}",
        tail.join("\n")
    )))
}

fn output_dir<'a>(ctx: &'a StepContext, training_name: &str) -> Result<&'a GrantedDir, StepError> {
    let out = ctx.dir(ROLE_OUTPUT)?;
    if !out.writable {
        return Err(StepError::denied(format!(
            "the '{ROLE_OUTPUT}' directory {} was granted read-only",
            out.host_path
        )));
    }
    if !out
        .host_path
        .trim_end_matches('/')
        .ends_with(&format!("/{training_name}"))
    {
        log::warn(format!(
            "training-output directory {} does not end in training_name '{training_name}'",
            out.host_path
        ));
    }
    Ok(out)
}

fn resolve_config(ctx: &StepContext, inputs: &Inputs) -> Result<Value, StepError> {
    inputs.require_str("project")?;
    inputs.choice("task", TASKS, None)?;
    let training_name = inputs.require_str("training_name")?;
    let mode = inputs.choice("mode", &["user", "developer"], Some("user"))?;
    let empty = Map::new();
    let overrides = inputs.opt_object("overrides")?.unwrap_or(&empty);
    let base_rel = inputs.relative_path_or("base_config", "detect/default.py")?;
    let report_rejected = inputs.bool_or("report_rejected", false)?;
    // Without a training folder (a preview outside a run, e.g. from the API) nothing is written
    // and the dataset may be left out: the command line shows placeholders.
    let out = match ctx.dir(ROLE_OUTPUT) {
        Ok(_) => Some(output_dir(ctx, training_name)?),
        Err(_) => {
            log::info(format!(
                "no '{ROLE_OUTPUT}' directory granted: a preview, nothing is written"
            ));
            None
        }
    };
    let dataset = match (out, inputs.contains("dataset")) {
        (None, false) => Value::Null,
        _ => dataset_of(inputs)?,
    };

    let config_dir = ctx.dir(ROLE_CONFIG)?;
    if std::fs::metadata(config_dir.guest(base_rel)).is_err() {
        return Err(StepError::invalid_input(format!(
            "input 'base_config': there is no '{base_rel}' in the config directory ({})",
            config_dir.host_path
        )));
    }
    let request = request(
        &config_dir.host(base_rel),
        mode,
        overrides,
        report_rejected,
        dataset,
        out.map(|o| o.host_path.as_str()),
    );
    let request = request.to_string();
    // It travels as one argument, which the kernel caps at 128 KiB.
    if request.len() > MAX_REQUEST_BYTES {
        return Err(StepError::invalid_input(format!(
            "the overrides and dataset make a request of {} bytes; at most {MAX_REQUEST_BYTES} \
             fit (use fewer or shorter overrides)",
            request.len()
        )));
    }
    log::info(format!(
        "resolving {base_rel} with MMEngine ({mode} mode, {} override(s))",
        overrides.len()
    ));
    let cwd = out.unwrap_or(config_dir).host_path.clone();
    let proc = Command::new(PROGRAM)
        .arg("-c")
        .arg(RESOLVER)
        .arg(request)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .cwd(cwd)
        .launch()?;
    let mut splitter = LineSplitter::new();
    let mut lines = Vec::new();
    loop {
        let chunk = proc.read_output(READ_MAX_BYTES, READ_TIMEOUT_MS)?;
        lines.extend(splitter.push(&chunk.data));
        if chunk.finished {
            break;
        }
    }
    lines.extend(splitter.finish());
    let status = proc.wait()?;
    let mut result = answer(&lines, &describe_exit(&status))?;
    let command: Vec<String> = result["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let cli_preview = command.join(" ");
    log::info(format!(
        "resolved config: {}",
        result["config_path"].as_str().unwrap_or("?")
    ));
    log::info(format!("training command: {cli_preview}"));
    if let Some(rejected) = result["rejected"].as_array() {
        for r in rejected {
            log::warn(format!(
                "override '{}' dropped: {}",
                r["key"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?")
            ));
        }
    }
    // The resolver's count of developer-mode keys beyond the options' cap: said, not an output.
    let left_out = result
        .as_object_mut()
        .and_then(|r| r.remove("options_left_out"))
        .and_then(|n| n.as_u64())
        .unwrap_or(0);
    if left_out > 0 {
        log::warn(format!(
            "`options` lists the first {} developer-mode keys; {left_out} more are left out              (developer mode still takes them)",
            result["options"]
                .as_array()
                .map_or(0, |o| o.iter().filter(|o| o["user"] == false).count())
        ));
    }
    result["cli_preview"] = Value::String(cli_preview);
    Ok(result)
}

/// Turns the trainer's events into progress reports and logs. Checkpoints are reported once the
/// training ends, those still there: MMEngine deletes older epochs (`max_keep_ckpts`) and every
/// earlier best as it goes.
struct Reporter {
    epochs: Option<u32>,
}

impl Reporter {
    fn event(&self, event: Event) {
        let epochs = self.epochs;
        match event {
            Event::Train {
                epoch,
                iter,
                iters,
                eta,
                metrics,
            } => {
                let percent = epochs.filter(|e| *e > 0 && iters > 0).map(|e| {
                    let done =
                        f64::from(epoch.saturating_sub(1)) * f64::from(iters) + f64::from(iter);
                    (done / (f64::from(e) * f64::from(iters)) * 100.0).min(100.0)
                });
                let of = epochs.map(|e| format!("/{e}")).unwrap_or_default();
                let eta = eta.map(|e| format!(", eta {e}")).unwrap_or_default();
                progress::report(&progress::Update {
                    percent,
                    epoch: Some(epoch),
                    epochs,
                    metrics,
                    message: Some(format!("epoch {epoch}{of}, iteration {iter}/{iters}{eta}")),
                });
            }
            Event::Validation { epoch, metrics } => {
                let map = metrics
                    .iter()
                    .find(|(k, _)| k == "coco/bbox_mAP")
                    .map(|(_, v)| format!(": bbox_mAP {v}"))
                    .unwrap_or_default();
                log::info(format!("validation after epoch {epoch}{map}"));
                progress::report(&progress::Update {
                    percent: None,
                    epoch: Some(epoch),
                    epochs,
                    metrics,
                    message: Some(format!("validated epoch {epoch}")),
                });
            }
            Event::Saved { epoch } => log::debug(format!("saving the checkpoint of epoch {epoch}")),
            Event::Best { epoch, file } => {
                log::info(format!("best checkpoint so far: {file} (epoch {epoch})"));
            }
            Event::Resumed { epoch } => log::info(format!("resumed after epoch {epoch}")),
            Event::NoDetections => log::warn(
                "the validation found no detections (CocoMetric: the testing results of the \
                 whole dataset is empty): no metrics and no best checkpoint for this epoch",
            ),
            Event::Warn(w) => log::warn(w),
            Event::Error(e) => log::error(e),
        }
    }
}

/// Every validation the trainer recorded in this work dir, by epoch: each invocation's
/// `<ts>/vis_data/scalars.json`, a later one's over an earlier one's.
fn validations(out: &GrantedDir) -> std::collections::BTreeMap<u32, Map<String, Value>> {
    let mut by_epoch = std::collections::BTreeMap::new();
    for dir in run_dirs(out) {
        if let Ok(text) =
            std::fs::read_to_string(out.guest(&format!("{dir}/vis_data/scalars.json")))
        {
            by_epoch.extend(monitor::validations(&text));
        }
    }
    by_epoch
}

/// The trainer's run folders in the work dir (`<YYYYMMDD_HHMMSS>/`, one per invocation), oldest
/// first.
fn run_dirs(out: &GrantedDir) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(out.guest(""))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    n.len() == 15
                        && n.as_bytes()[8] == b'_'
                        && n.bytes()
                            .enumerate()
                            .all(|(i, b)| i == 8 || b.is_ascii_digit())
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// `epoch_N.pth` → N; `best_…_epoch_N.pth` → N.
fn epoch_of(file: &str) -> Option<u32> {
    file.strip_suffix(".pth")?
        .rsplit_once("epoch_")?
        .1
        .parse()
        .ok()
}

fn train(ctx: &StepContext, inputs: &Inputs) -> Result<Value, StepError> {
    inputs.require_str("project")?;
    inputs.choice("task", TASKS, None)?;
    let training_name = inputs.require_str("training_name")?;
    let out = output_dir(ctx, training_name)?;
    let config = inputs.require_object("config")?;
    let text = |name: &str| {
        config.get(name).and_then(Value::as_str).ok_or_else(|| {
            StepError::invalid_input(format!(
                "input 'config' has no '{name}' (pass resolve-config's outputs)"
            ))
        })
    };
    let config_path = text("config_path")?;
    // The config is Python that the trainer runs: only the one resolve-config wrote for this
    // training is taken.
    let Some(config_rel) = config_path
        .strip_prefix(out.host_path.trim_end_matches('/'))
        .and_then(|r| r.strip_prefix('/'))
        .filter(|r| !r.split('/').any(|c| c == ".."))
    else {
        return Err(StepError::invalid_input(format!(
            "input 'config.config_path' ({config_path}) is not in this training's folder {}; \
             pass the outputs of resolve-config for the same training_name",
            out.host_path
        )));
    };
    if std::fs::metadata(out.guest(config_rel)).is_err() {
        return Err(StepError::invalid_input(format!(
            "input 'config.config_path': {config_path} does not exist; run resolve-config first"
        )));
    }
    // The trainer is the one resolve-config found (command.txt, beside the config it wrote),
    // not a path a workflow passes on.
    let command_txt = std::fs::read_to_string(out.guest("artifacts/command.txt")).map_err(|e| {
        StepError::invalid_input(format!(
            "{} cannot be read ({}); run resolve-config for this training first",
            out.host("artifacts/command.txt"),
            kiln_plugin_sdk::io_message(&e)
        ))
    })?;
    let Some(train_script) = command_txt
        .split_whitespace()
        .nth(1)
        .filter(|s| s.ends_with("/tools/train.py"))
        .map(str::to_owned)
    else {
        return Err(StepError::invalid_input(format!(
            "{} names no MMDetection tools/train.py; run resolve-config for this training again",
            out.host("artifacts/command.txt")
        )));
    };
    let epochs = config
        .get("epochs")
        .and_then(Value::as_u64)
        .and_then(|e| u32::try_from(e).ok());
    let device = config.get("device").and_then(Value::as_str);
    // Any attempt after the first continues from the work dir's last checkpoint (a retry after
    // the machine lost the trainer, or after it failed or was cancelled): the training folder is
    // this run's, so its checkpoints are this step's. Without one, --resume starts afresh.
    let retried = ctx.retry.is_some() || ctx.attempt > 1;
    let resume = inputs.bool_or("resume", false)? || retried;

    let mut command = Command::new(PROGRAM)
        .arg(&train_script)
        .arg(config_path)
        .arg("--work-dir")
        .arg(out.host_path.clone())
        // Lines as they are logged, not when Python's buffer fills.
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .cwd(out.host_path.clone());
    if resume {
        command = command.arg("--resume");
    }
    if device == Some("cpu") {
        command = command.env("CUDA_VISIBLE_DEVICES", "");
    }
    if let Some(threads) = inputs.opt_i64("cpu_threads")? {
        if !(1..=1024).contains(&threads) {
            return Err(StepError::invalid_input(format!(
                "input 'cpu_threads' must be between 1 and 1024, got {threads}"
            )));
        }
        command = command.env("OMP_NUM_THREADS", threads.to_string());
    }
    log::info(format!("running: {}", command.display()));
    let proc = command.launch()?;
    let mut splitter = LineSplitter::new();
    let mut mon = Monitor::new();
    let reporter = Reporter { epochs };
    loop {
        let chunk = proc.read_output(READ_MAX_BYTES, READ_TIMEOUT_MS)?;
        for line in splitter.push(&chunk.data) {
            if let Some(event) = mon.line(&line) {
                reporter.event(event);
            }
        }
        if chunk.finished {
            break;
        }
    }
    if let Some(line) = splitter.finish()
        && let Some(event) = mon.line(&line)
    {
        reporter.event(event);
    }
    let status = proc.wait()?;
    if !status.success {
        return Err(StepError::program_failed(
            mon.failure_message(&describe_exit(&status)),
        ));
    }

    // What the work dir holds now (a resumed run's earlier checkpoints included).
    let files: Vec<String> = std::fs::read_dir(out.guest(""))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    // The best this invocation saved; else (a resume that saved no new best) the one there.
    let best = mon
        .best
        .as_ref()
        .map(|(_, file)| file.clone())
        .filter(|f| files.contains(f))
        .or_else(|| {
            files
                .iter()
                .filter(|f| f.starts_with("best_") && f.ends_with(".pth"))
                .max_by_key(|f| epoch_of(f))
                .cloned()
        });
    let last = std::fs::read_to_string(out.guest("last_checkpoint"))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let epochs_completed = last
        .as_deref()
        .and_then(|l| epoch_of(l.rsplit('/').next().unwrap_or(l)))
        .or(mon.last_epoch_saved);
    let best_weights = match (&best, &last) {
        (Some(best), _) => out.host(best),
        (None, _) if mon.no_detections => {
            return Err(StepError::program_failed(format!(
                "MMDetection finished ({}) but its validation found no detections (\"The \
                 testing results of the whole dataset is empty\"), so it saved no best \
                 checkpoint: train longer, or lower model.test_cfg.score_thr (developer mode)",
                describe_exit(&status)
            )));
        }
        (None, Some(last)) => {
            log::warn(format!(
                "no best checkpoint in {} (the config sets no save_best): the best weights are \
                 the last checkpoint, {last}",
                out.host_path
            ));
            last.clone()
        }
        (None, None) => {
            return Err(StepError::program_failed(format!(
                "MMDetection finished ({}) but wrote no checkpoint in {}",
                describe_exit(&status),
                out.host_path
            )));
        }
    };
    // The metrics of the best weights' epoch (those registered with the model), at full
    // precision from scalars.json; else the last validation.
    let validations = validations(out);
    let best_epoch = best.as_deref().and_then(epoch_of);
    let metrics: Map<String, Value> = best_epoch
        .and_then(|e| validations.get(&e).cloned())
        .or_else(|| validations.values().next_back().cloned())
        .unwrap_or_else(|| {
            mon.last_validation
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.clone(), Value::Number(serde_json::Number::from_f64(*v)?)))
                })
                .collect()
        });
    // The checkpoints still there once the training ended: the epochs MMEngine kept and the best.
    let mut checkpoints: Vec<Value> = Vec::new();
    let mut epoch_files: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("epoch_") && f.ends_with(".pth"))
        .collect();
    epoch_files.sort_by_key(|f| epoch_of(f));
    for file in epoch_files {
        progress::checkpoint(out.host(file), epoch_of(file), false);
        checkpoints.push(json!({"path": out.host(file), "epoch": epoch_of(file), "best": false}));
    }
    if let Some(best) = &best {
        progress::checkpoint(out.host(best), epoch_of(best), true);
        checkpoints.push(json!({"path": out.host(best), "epoch": epoch_of(best), "best": true}));
    }
    let scalars = run_dirs(out)
        .pop()
        .map(|d| out.host(&format!("{d}/vis_data/scalars.json")));
    log::info(format!(
        "training finished: {} epochs, best weights {best_weights}",
        epochs_completed.map_or("?".into(), |n| n.to_string())
    ));
    Ok(json!({
        "work_dir": out.host_path,
        "best_weights": best_weights,
        "last_checkpoint": last,
        "checkpoints": checkpoints,
        "metrics": metrics,
        "epochs_completed": epochs_completed,
        "resumed_from_epoch": mon.resumed_from_epoch,
        "scalars_json": scalars,
        "config_path": config_path,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_resolvers_answer_is_its_marker_lines() {
        // A result longer than an output line may be (64 KiB), over several lines.
        let text = "x ".repeat(50_000);
        let result = json!({"config_path": "/t/artifacts/config.py", "resolved_text": text});
        let hex = hex::encode(result.to_string());
        let mut out = vec!["loading".to_owned()];
        out.extend(
            hex.as_bytes()
                .chunks(32768)
                .map(|c| format!("KILN_RESULT_HEX {}", std::str::from_utf8(c).unwrap())),
        );
        out.push("KILN_RESULT_END".into());
        let ok = answer(&out, "exit code 0").unwrap();
        assert_eq!(ok, result);
        let refused = answer(
            &lines(&[r#"KILN_ERROR {"kind": "invalid_input", "message": "override 'x': unknown option"}"#]),
            "exit code 2",
        )
        .unwrap_err();
        assert_eq!(refused.message, "override 'x': unknown option");
        assert!(matches!(
            refused.kind,
            kiln_plugin_sdk::ErrorKind::InvalidInput
        ));
        let crashed = answer(
            &lines(&[
                "Traceback (most recent call last):",
                "ModuleNotFoundError: No module named 'yaml'",
            ]),
            "exit code 1",
        )
        .unwrap_err();
        assert!(
            crashed.message.contains("(exit code 1) without a result")
                && crashed.message.ends_with("No module named 'yaml'"),
            "{}",
            crashed.message
        );
    }

    #[test]
    fn the_dataset_must_be_a_coco_release_with_absolute_paths() {
        let good = json!({
            "layout": "coco",
            "data_root": "/d",
            "annotations": {"train": "/d/annotations/train.json"},
            "images": {"train": "/d/train"},
            "class_names": ["a"],
        });
        let inputs = |dataset: Value| {
            Inputs::from_map(json!({"dataset": dataset}).as_object().unwrap().clone())
        };
        assert_eq!(
            dataset_of(&inputs(good.clone())).unwrap()["class_names"],
            json!(["a"])
        );
        let mut yolo = good.clone();
        yolo["layout"] = json!("yolo");
        let cases = [
            (yolo, "is a yolo release"),
            (json!({"layout": "coco"}), "has no 'data_root'"),
            (
                {
                    let mut d = good.clone();
                    d["data_root"] = json!("rel");
                    d
                },
                "absolute path",
            ),
            (
                {
                    let mut d = good.clone();
                    d["images"] = json!({});
                    d
                },
                "no images folder for it",
            ),
            (
                {
                    let mut d = good.clone();
                    d["annotations"]["train"] = json!("x.json");
                    d
                },
                "'dataset.annotations.train' must be an absolute path",
            ),
            (
                {
                    let mut d = good.clone();
                    d["class_names"] = json!([]);
                    d
                },
                "list of class names",
            ),
        ];
        for (dataset, expected) in cases {
            let e = dataset_of(&inputs(dataset)).unwrap_err();
            assert!(e.message.contains(expected), "{}", e.message);
        }
    }

    #[test]
    fn describe_lists_resolve_config_and_train() {
        let info = describe();
        assert_eq!(info.name, "mmdetection");
        assert_eq!(info.actions[0].name, "resolve-config");
        assert_eq!(info.actions[1].name, "train");
        assert!(
            info.actions[1]
                .outputs
                .iter()
                .any(|o| o.name == "best_weights")
        );
        assert!(
            info.actions[0]
                .outputs
                .iter()
                .any(|o| o.name == "config_path")
        );
        let options = info.actions[0]
            .outputs
            .iter()
            .find(|o| o.name == "options")
            .unwrap();
        assert!(options.description.contains("developer mode"));
    }

    #[test]
    fn checkpoint_names_give_their_epoch() {
        assert_eq!(epoch_of("epoch_12.pth"), Some(12));
        assert_eq!(epoch_of("best_coco_bbox_mAP_epoch_2.pth"), Some(2));
        assert_eq!(epoch_of("latest.pth"), None);
    }
}

//! Kiln plugin for Ultralytics YOLO training (`uses: ultralytics`).
//!
//! Actions:
//! - `resolve-config`: merge overrides onto `configs/ultralytics/<task>/default.yaml`,
//!   validate them, and return the exact `yolo` command line `train` will run, with the
//!   options a training form offers ([`args::options`]).
//! - `train`: launch `yolo <task> train key=value...`, follow its output (progress,
//!   metrics from results.csv), and return the weights and final metrics.
//!
//! The logic lives in [`args`] and [`monitor`] (plain functions, native tests);
//! this file holds the glue to the host.

pub mod args;
pub mod monitor;

use args::{Mode, ResolveRequest};
use kiln_plugin_sdk::lines::LineSplitter;
use kiln_plugin_sdk::process::{Command, describe_exit};
use kiln_plugin_sdk::{
    ActionInfo, GrantedDir, InputKind, Inputs, Plugin, PluginInfo, RetryReason, StepContext,
    StepError, log, progress,
};
use monitor::{Event, Monitor, Notable};
use serde_json::{Map, Value, json};

/// The program the operator grants this plugin.
pub const PROGRAM: &str = "yolo";
pub const ROLE_OUTPUT: &str = "training-output";
pub const ROLE_CONFIG: &str = "config";
/// Stands for the training-output directory in a resolve-config preview that was granted none.
pub const PREVIEW_OUTPUT: &str = "<training-output>";

pub struct Ultralytics;

kiln_plugin_sdk::export_plugin!(Ultralytics);

impl Plugin for Ultralytics {
    fn describe() -> PluginInfo {
        describe()
    }

    fn run(action: String, ctx: StepContext) -> Result<String, StepError> {
        kiln_plugin_sdk::run_action(
            "ultralytics",
            &[("resolve-config", resolve_config), ("train", train)],
            &action,
            &ctx,
        )
    }
}

/// What describe says of resolve-config's `options` output.
const OPTIONS_DESCRIPTION: &str = "the options a training form offers: a list of {key, type \
     (int, float, bool, str, list or any), default (the resolved config's value, or null), user \
     (whether user mode may set it), description}, the user-mode options first, then every other \
     Ultralytics argument by key; the keys the plugin sets itself are not in it";

pub fn describe() -> PluginInfo {
    PluginInfo::new("ultralytics", env!("CARGO_PKG_VERSION"))
        .launches(&["yolo"])
        .action(
            ActionInfo::new(
                "resolve-config",
                "Merge overrides onto the task's base config (configs/ultralytics/<task>/default.yaml), \
                 validate them and preview the exact yolo command line",
            )
            .required("task", InputKind::String, "detect or segment")
            .optional("mode", InputKind::String, "user (default: only epochs, imgsz, batch, amp, patience, save, device may be overridden) or developer (any Ultralytics argument)")
            .required("data", InputKind::Path, "host path of the dataset's data.yaml")
            .optional("overrides", InputKind::Object, "object of Ultralytics arguments to override (default {})")
            .optional("base_config", InputKind::Path, "base config file under the config directory (default <task>/default.yaml)")
            .required("project", InputKind::String, "project name")
            .required("training_name", InputKind::String, "name of this training; weights land in its training-output directory")
            .optional("report_rejected", InputKind::Boolean, "in user mode, drop overrides only developer mode allows and list them in `rejected` instead of failing (default false; unknown keys still fail)")
            .outputs(&["config", "resolved_yaml", "cli_preview", "imgsz", "epochs", "rejected"])
            .output("options", OPTIONS_DESCRIPTION),
        )
        .action(
            ActionInfo::new(
                "train",
                "Train a YOLO model with `yolo <task> train` using a config from resolve-config",
            )
            .required("task", InputKind::String, "detect or segment")
            .required("config", InputKind::Object, "the resolved config object (resolve-config's `config` output)")
            .required("project", InputKind::String, "project name")
            .required("training_name", InputKind::String, "name of this training")
            .optional("resume", InputKind::Boolean, "resume from weights/last.pt of this training if it exists (default false)")
            .outputs(&[
                "save_dir",
                "best_weights",
                "last_weights",
                "checkpoints",
                "metrics",
                "epochs_completed",
                "results_csv",
                "resumed_from_epoch",
            ]),
        )
}

/// The inputs every step carries; checked so a mistyped workflow fails early.
fn common_inputs(inputs: &Inputs) -> Result<(&str, &str), StepError> {
    inputs.require_str("project")?;
    let task = inputs.choice("task", args::TASKS, None)?;
    let training_name = inputs.require_str("training_name")?;
    Ok((task, training_name))
}

/// The training-output dir, checking its name matches `training_name` (warns otherwise).
fn output_dir<'a>(ctx: &'a StepContext, training_name: &str) -> Result<&'a GrantedDir, StepError> {
    let out = ctx.dir(ROLE_OUTPUT)?;
    if !out.writable {
        return Err(StepError::denied(format!(
            "the '{ROLE_OUTPUT}' directory {} was granted read-only",
            out.host_path
        )));
    }
    let (_, name) = args::split_output_dir(&out.host_path);
    if name != training_name {
        log::warn(format!(
            "training-output directory {} does not end in training_name '{training_name}'; \
             using name={name} so weights land in it",
            out.host_path
        ));
    }
    Ok(out)
}

fn resolve_config(ctx: &StepContext, inputs: &Inputs) -> Result<Value, StepError> {
    let (task, training_name) = common_inputs(inputs)?;
    let mode = Mode::parse(inputs.choice("mode", &["user", "developer"], Some("user"))?)
        .expect("choice() only returns allowed values");
    let data = inputs.require_str("data")?;
    if !data.starts_with('/') {
        log::warn(format!(
            "input 'data' ({data}) is not an absolute path; yolo resolves it against the training-output directory"
        ));
    }
    let empty = Map::new();
    let overrides = inputs.opt_object("overrides")?.unwrap_or(&empty);
    let default_base = format!("{task}/default.yaml");
    let base_rel = inputs.relative_path_or("base_config", &default_base)?;

    let config_dir = ctx.dir(ROLE_CONFIG)?;
    let base_path = config_dir.guest(base_rel);
    let base_text = std::fs::read_to_string(&base_path).map_err(|e| {
        StepError::invalid_input(format!(
            "input 'base_config': cannot read '{base_rel}' in the config directory ({}): {}",
            config_dir.host_path,
            kiln_plugin_sdk::io_message(&e)
        ))
    })?;
    let base = args::parse_base_config(&format!("base config '{base_rel}'"), &base_text)?;

    let report_rejected = inputs.bool_or("report_rejected", false)?;

    // Without a training-output directory (a preview outside a run, e.g. from the API) the
    // command line shows a placeholder where the training will write.
    let output_host = if ctx.dir(ROLE_OUTPUT).is_ok() {
        output_dir(ctx, training_name)?.host_path.clone()
    } else {
        log::info(format!(
            "no '{ROLE_OUTPUT}' directory granted: previewing with {PREVIEW_OUTPUT}/{training_name}"
        ));
        format!("{PREVIEW_OUTPUT}/{training_name}")
    };
    let resolved = args::resolve_reporting(&ResolveRequest {
        mode,
        data,
        overrides,
        base,
        output_host: &output_host,
        report_rejected,
    })?;
    for r in &resolved.rejected {
        log::warn(format!("override '{}' dropped: {}", r.key, r.reason));
    }
    let config = resolved.config;
    let rejected: Vec<Value> = resolved
        .rejected
        .iter()
        .map(|r| json!({"key": r.key, "reason": r.reason}))
        .collect();
    let cli_preview = args::preview(PROGRAM, &args::train_args(task, &config));
    log::info(format!("resolved command: {cli_preview}"));
    Ok(json!({
        "resolved_yaml": args::to_yaml(task, &config)?,
        "cli_preview": cli_preview,
        "imgsz": args::int_of(&config, "imgsz", args::DEFAULT_IMGSZ),
        "epochs": args::int_of(&config, "epochs", args::DEFAULT_EPOCHS),
        "options": args::options(&config),
        "config": Value::Object(config),
        "rejected": rejected,
    }))
}

const READ_MAX_BYTES: u32 = 64 * 1024;
const READ_TIMEOUT_MS: u32 = 1000;
/// How often results.csv is looked at even without a validation line.
const CSV_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// Follows results.csv in the training-output directory.
struct ResultsCsv {
    guest_path: String,
    rows_seen: usize,
    last_len: Option<u64>,
}

impl ResultsCsv {
    /// Rows already there (a resumed training, or one this step re-attached to after the engine
    /// was down) are reported too, at the first look: the epochs a dead engine did not hear
    /// about are not lost to the run's metrics, and reporting an epoch again changes nothing.
    fn new(out: &GrantedDir) -> Self {
        ResultsCsv {
            guest_path: out.guest("results.csv"),
            rows_seen: 0,
            last_len: None,
        }
    }

    fn read(&self) -> Vec<monitor::Row> {
        std::fs::read_to_string(&self.guest_path)
            .map(|t| monitor::parse_results_csv(&t))
            .unwrap_or_default()
    }

    /// The rows added since the previous call, in order: every epoch is reported, also when
    /// several finished between two looks (fast epochs).
    fn new_rows(&mut self) -> Vec<monitor::Row> {
        let Some(len) = std::fs::metadata(&self.guest_path).ok().map(|m| m.len()) else {
            return Vec::new();
        };
        if self.last_len == Some(len) {
            return Vec::new();
        }
        self.last_len = Some(len);
        let rows = self.read();
        if rows.len() <= self.rows_seen {
            return Vec::new();
        }
        let new = rows[self.rows_seen..].to_vec();
        self.rows_seen = rows.len();
        new
    }
}

fn report_row(row: &monitor::Row, epochs: Option<u32>) {
    let epoch = monitor::row_epoch(row);
    let percent = match (epoch, epochs) {
        (Some(e), Some(n)) if n > 0 => Some((f64::from(e) / f64::from(n) * 100.0).min(100.0)),
        _ => None,
    };
    let message = match (epoch, epochs) {
        (Some(e), Some(n)) => format!("epoch {e}/{n} finished"),
        (Some(e), None) => format!("epoch {e} finished"),
        _ => "epoch finished".to_string(),
    };
    progress::report(&progress::Update {
        percent,
        epoch,
        epochs,
        metrics: monitor::row_metrics(row),
        message: Some(message),
    });
}

fn handle(event: Event, mon: &Monitor, csv: &mut ResultsCsv, csv_due: &mut bool) {
    match event {
        Event::Progress(p) => progress::report(&progress::Update {
            percent: Some(p.overall_percent()),
            epoch: Some(p.epoch),
            epochs: Some(p.epochs),
            metrics: Vec::new(),
            message: Some(p.message()),
        }),
        Event::Validation { .. } => {
            // The row is written right after validation: look now and on the next polls.
            *csv_due = true;
            for row in csv.new_rows() {
                report_row(&row, mon.epochs);
            }
        }
        Event::Log(Notable::Info, l) => log::info(l),
        Event::Log(Notable::Warn, l) => log::warn(l),
        Event::Log(Notable::Error, l) => log::error(l),
        Event::Log(Notable::Debug, l) => log::debug(l),
    }
}

fn train(ctx: &StepContext, inputs: &Inputs) -> Result<Value, StepError> {
    let (task, training_name) = common_inputs(inputs)?;
    // An attempt that retries one lost to the infrastructure continues from its checkpoint.
    let infra_retry = ctx
        .retry
        .as_ref()
        .is_some_and(|r| matches!(r.reason, RetryReason::Infrastructure));
    let resume = inputs.bool_or("resume", false)? || infra_retry;
    let out = output_dir(ctx, training_name)?;
    let given = inputs.require_object("config")?;
    let mut config = args::check_config(given)?;
    let data = match config.get("data") {
        Some(Value::String(d)) if !d.trim().is_empty() => d.clone(),
        _ => {
            return Err(StepError::invalid_input(
                "input 'config' has no 'data' (pass resolve-config's `config` output)",
            ));
        }
    };
    args::set_plugin_keys(&mut config, &data, &out.host_path);

    let last_pt_guest = out.guest("weights/last.pt");
    let resuming = resume && std::fs::metadata(&last_pt_guest).is_ok();
    if resume && !resuming {
        log::warn(format!(
            "resume requested but {} does not exist; starting a new training",
            out.host("weights/last.pt")
        ));
    }
    let argv = if resuming {
        args::resume_args(task, &out.host("weights/last.pt"))
    } else {
        args::train_args(task, &config)
    };
    let config_dir_host = out.host(".ultralytics-config");
    // Best effort: yolo creates it too.
    let _ = std::fs::create_dir_all(out.guest(".ultralytics-config"));
    let command = Command::new(PROGRAM)
        .args(argv)
        .env("YOLO_OFFLINE", "1")
        .env("YOLO_CONFIG_DIR", config_dir_host)
        .cwd(out.host_path.clone());
    log::info(format!(
        "running: {}",
        args::preview(PROGRAM, &command.spec().args)
    ));

    let mut csv = ResultsCsv::new(out);
    let planned_epochs = u32::try_from(args::int_of(&config, "epochs", args::DEFAULT_EPOCHS)).ok();
    let proc = command.launch()?;
    let mut splitter = LineSplitter::new();
    let mut mon = Monitor::new();
    // The first look reports the rows already there (see ResultsCsv::new).
    let mut csv_due = true;
    let mut last_poll = std::time::Instant::now();
    loop {
        let chunk = proc.read_output(READ_MAX_BYTES, READ_TIMEOUT_MS)?;
        for line in splitter.push(&chunk.data) {
            for event in mon.line(&line) {
                handle(event, &mon, &mut csv, &mut csv_due);
            }
        }
        if chunk.finished {
            break;
        }
        if chunk.data.is_empty()
            && let Some(partial) = splitter.partial()
            && let Some(event) = mon.partial(&partial)
        {
            handle(event, &mon, &mut csv, &mut csv_due);
        }
        if csv_due || last_poll.elapsed() >= CSV_POLL {
            last_poll = std::time::Instant::now();
            let rows = csv.new_rows();
            if !rows.is_empty() {
                csv_due = false;
            }
            for row in rows {
                report_row(&row, mon.epochs.or(planned_epochs));
            }
        }
    }
    if let Some(line) = splitter.finish() {
        for event in mon.line(&line) {
            handle(event, &mon, &mut csv, &mut csv_due);
        }
    }
    let status = proc.wait()?;
    for row in csv.new_rows() {
        report_row(&row, mon.epochs.or(planned_epochs));
    }
    if !status.success {
        return Err(StepError::program_failed(
            mon.failure_message(&describe_exit(&status)),
        ));
    }

    let best_host = out.host("weights/best.pt");
    let last_host = out.host("weights/last.pt");
    if std::fs::metadata(out.guest("weights/best.pt")).is_err() {
        return Err(StepError::program_failed(format!(
            "yolo exited successfully but {best_host} is missing"
        )));
    }
    let rows = csv.read();
    let final_row = rows.last();
    let epochs_completed = final_row
        .and_then(monitor::row_epoch)
        .or(mon
            .completed_epochs
            .map(|n| n + mon.resumed_from_epoch.unwrap_or(0)))
        .or(mon.current_epoch);
    let metrics: Map<String, Value> = final_row
        .map(|row| {
            row.iter()
                .filter_map(|(k, v)| {
                    serde_json::Number::from_f64(*v).map(|n| (k.clone(), Value::Number(n)))
                })
                .collect()
        })
        .unwrap_or_default();

    let mut checkpoints = Vec::new();
    if std::fs::metadata(&last_pt_guest).is_ok() {
        progress::checkpoint(last_host.clone(), epochs_completed, false);
        checkpoints.push(json!({"path": last_host, "epoch": epochs_completed, "best": false}));
    }
    progress::checkpoint(best_host.clone(), None, true);
    checkpoints.push(json!({"path": best_host, "epoch": null, "best": true}));
    log::info(format!(
        "training finished: {} epochs, best weights {best_host}",
        epochs_completed.map_or("?".to_string(), |n| n.to_string())
    ));

    Ok(json!({
        "save_dir": out.host_path,
        "best_weights": best_host,
        "last_weights": last_host,
        "checkpoints": checkpoints,
        "metrics": metrics,
        "epochs_completed": epochs_completed,
        "results_csv": out.host("results.csv"),
        "resumed_from_epoch": mon.resumed_from_epoch,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_lists_both_actions() {
        let info = describe();
        assert_eq!(info.name, "ultralytics");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        let names: Vec<&str> = info.actions.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["resolve-config", "train"]);
        let train = &info.actions[1];
        assert!(train.outputs.iter().any(|o| o.name == "best_weights"));
        assert!(
            train
                .inputs
                .iter()
                .any(|i| i.name == "config" && i.required)
        );
        let resolve = &info.actions[0];
        assert!(resolve.outputs.iter().any(|o| o.name == "rejected"));
        let options = resolve
            .outputs
            .iter()
            .find(|o| o.name == "options")
            .unwrap();
        assert!(options.description.contains("user mode"));
        assert!(
            resolve
                .inputs
                .iter()
                .any(|i| i.name == "report_rejected" && !i.required)
        );
    }

    #[test]
    fn base_configs_in_the_repo_are_valid() {
        for task in args::TASKS {
            let path = format!(
                "{}/../../configs/ultralytics/{task}/default.yaml",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(&path).unwrap();
            let base = args::parse_base_config(&path, &text).unwrap();
            let model = base["model"].as_str().unwrap();
            assert!(
                model.ends_with(".yaml"),
                "{model}: must build from scratch offline"
            );
            if *task == "segment" {
                assert!(model.contains("-seg"), "{model}");
            }
            assert_eq!(base["plots"], Value::Bool(false));
        }
    }
}

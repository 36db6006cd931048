//! The built component, run by the plugin test harness against a scripted `yolo` that prints
//! the output of a real Ultralytics 8.4.190 training (tests/data, captured with the real
//! trainer) and writes its files.

use kiln_plugin_test::{ErrorKind, InputKind, Plugin, Script, Step};
use serde_json::json;

const TRAIN_LOG: &str = include_str!("data/ultralytics-8.4.190-train.log");
const BAD_DATA_LOG: &str = include_str!("data/ultralytics-8.4.190-bad-data.log");
const RESULTS: &str = include_str!("data/ultralytics-8.4.190-results.csv");

fn plugin() -> Plugin {
    Plugin::build(env!("CARGO_MANIFEST_DIR")).expect("build the component")
}

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ultralytics")
}

/// resolve-config's `config` output for a 2-epoch training into `out`.
fn resolved(plugin: &Plugin, out: &std::path::Path) -> serde_json::Value {
    let outcome = plugin.run(
        "resolve-config",
        Step::new(json!({
            "task": "detect", "project": "demo", "training_name": "first",
            "data": "/datasets/demo/data.yaml", "overrides": {"epochs": 2, "imgsz": 64},
        }))
        .dir("config", configs(), false)
        .dir("training-output", out, true),
    );
    let outputs = outcome.outputs();
    assert!(
        outputs["cli_preview"]
            .as_str()
            .unwrap()
            .starts_with("yolo detect train"),
        "{outputs}"
    );
    outputs["config"].clone()
}

/// The `train` step of training "first" in `out`, with resolve-config's `config`.
fn train_step(config: serde_json::Value, out: &std::path::Path) -> Step {
    Step::new(
        json!({"task": "detect", "project": "demo", "training_name": "first", "config": config}),
    )
    .dir("training-output", out, true)
}

#[test]
fn it_describes_its_actions_inputs_and_programs() {
    let plugin = plugin();
    let info = plugin.info();
    assert_eq!(info.name, "ultralytics");
    assert_eq!(info.programs, ["yolo"]);
    let train = info.actions.iter().find(|a| a.name == "train").unwrap();
    let resume = train.inputs.iter().find(|i| i.name == "resume").unwrap();
    assert_eq!(resume.kind, InputKind::Boolean);
    assert!(train.outputs.iter().any(|o| o.name == "best_weights"));
    let resolve = info
        .actions
        .iter()
        .find(|a| a.name == "resolve-config")
        .unwrap();
    let options = resolve
        .outputs
        .iter()
        .find(|o| o.name == "options")
        .unwrap();
    assert!(!options.description.is_empty());
}

#[test]
fn resolve_config_offers_the_options_a_form_shows() {
    let plugin = plugin();
    // A preview (no training-output directory), as the training API runs it.
    let outcome = plugin.run(
        "resolve-config",
        Step::new(json!({
            "task": "detect", "project": "demo", "training_name": "first",
            "data": "/datasets/demo/data.yaml", "overrides": {"imgsz": 64},
        }))
        .dir("config", configs(), false),
    );
    let outputs = outcome.outputs();
    let options = outputs["options"].as_array().expect("options");
    let find = |key: &str| options.iter().find(|o| o["key"] == key);
    // The base config's epochs (configs/ultralytics/detect/default.yaml), the override's imgsz.
    let base: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(configs().join("detect/default.yaml")).unwrap(),
    )
    .unwrap();
    let epochs = find("epochs").expect("epochs");
    assert_eq!(epochs["user"], true, "{epochs}");
    assert_eq!(epochs["type"], "int", "{epochs}");
    assert_eq!(epochs["default"], base["epochs"], "{epochs}");
    assert!(epochs["description"].is_string(), "{epochs}");
    assert_eq!(find("imgsz").unwrap()["default"], 64);
    // A developer-mode argument, and one neither the base config nor the overrides set.
    let lr0 = find("lr0").expect("lr0");
    assert_eq!(lr0["user"], false, "{lr0}");
    assert_eq!(lr0["default"], serde_json::Value::Null, "{lr0}");
    assert_eq!(find("seed").unwrap()["default"], base["seed"]);
    // The plugin's own keys are not offered.
    for reserved in [
        "data", "project", "name", "exist_ok", "task", "mode", "resume",
    ] {
        assert!(find(reserved).is_none(), "{reserved}");
    }
    // The user-mode options first.
    let users = options.iter().take_while(|o| o["user"] == true).count();
    assert_eq!(users, 7, "{options:?}");
    assert!(options[users..].iter().all(|o| o["user"] == false));
}

#[test]
fn train_follows_a_real_trainers_output_and_reports_its_checkpoints() {
    let plugin = plugin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first");
    let config = resolved(&plugin, &out);
    let yolo = Script::new()
        .writes("weights/best.pt", b"best")
        .writes("weights/last.pt", b"last")
        .writes("results.csv", RESULTS)
        .output(TRAIN_LOG)
        .exits(0);
    let outcome = plugin.run("train", train_step(config, &out).program("yolo", yolo));
    let outputs = outcome.outputs();
    assert_eq!(outcome.launches.len(), 1);
    let launch = &outcome.launches[0];
    assert_eq!(launch.program, "yolo");
    assert_eq!(&launch.args[..2], ["detect", "train"], "{launch:?}");
    assert!(launch.args.contains(&"epochs=2".to_owned()), "{launch:?}");
    assert_eq!(
        outputs["best_weights"],
        out.join("weights/best.pt").display().to_string()
    );
    assert_eq!(outputs["epochs_completed"], 2, "{outputs}");
    assert!(outputs["metrics"].is_object(), "{outputs}");
    assert!(
        outcome
            .checkpoints
            .iter()
            .any(|c| c.best && c.host_path.ends_with("weights/best.pt")),
        "{:?}",
        outcome.checkpoints
    );
    assert!(
        outcome
            .progress
            .iter()
            .any(|u| u.epoch == Some(2) && u.epochs == Some(2)),
        "{:?}",
        outcome.progress
    );
}

#[test]
fn a_failed_training_is_the_trainers_own_error_line() {
    let plugin = plugin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first");
    let config = resolved(&plugin, &out);
    let outcome = plugin.run(
        "train",
        train_step(config, &out).program("yolo", Script::new().output(BAD_DATA_LOG).exits(1)),
    );
    let (kind, message) = outcome.error();
    assert_eq!(*kind, ErrorKind::ProgramFailed);
    let last_error = BAD_DATA_LOG
        .lines()
        .rev()
        .find(|l| l.contains("Error"))
        .unwrap();
    assert!(
        message.contains(last_error.trim()),
        "{message}\nvs {last_error}"
    );
}

#[test]
fn an_ungranted_trainer_is_a_denied_step() {
    let plugin = plugin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first");
    let config = resolved(&plugin, &out);
    let outcome = plugin.run("train", train_step(config, &out));
    let (kind, message) = outcome.error();
    assert!(
        matches!(kind, ErrorKind::Denied | ErrorKind::ProgramFailed),
        "{kind:?}: {message}"
    );
    assert!(message.contains("yolo"), "{message}");
}

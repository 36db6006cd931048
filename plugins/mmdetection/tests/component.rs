//! The built component, run by the plugin test harness against a scripted `python` that prints
//! the output of a real MMDetection 3.3.0 training (tests/data, captured with the real trainer)
//! and writes its work dir.

use kiln_plugin_test::{ErrorKind, Plugin, Script, Step};
use serde_json::json;

const FINAL_LOG: &str = include_str!("data/20_final.stdout");
const SCALARS: &str = include_str!("data/scalars.json");
const TRAIN_PY: &str = "/opt/mmdetection/tools/train.py";

/// A training folder as resolve-config leaves it: the resolved config and the command.
fn resolved(out: &std::path::Path) -> serde_json::Value {
    std::fs::create_dir_all(out.join("artifacts")).unwrap();
    let config = out.join("artifacts/config.py");
    std::fs::write(&config, "# resolved by MMEngine\n").unwrap();
    std::fs::write(
        out.join("artifacts/command.txt"),
        format!(
            "python {TRAIN_PY} {} --work-dir {}\n",
            config.display(),
            out.display()
        ),
    )
    .unwrap();
    json!({"config_path": config.display().to_string(), "epochs": 2, "device": "cpu"})
}

fn train_step(out: &std::path::Path) -> Step {
    Step::new(json!({
        "task": "detect", "project": "demo", "training_name": "final",
        "config": resolved(out), "cpu_threads": 1,
    }))
    .dir("training-output", out, true)
}

#[test]
fn train_runs_tools_train_py_and_returns_the_best_checkpoint_and_its_metrics() {
    let plugin = Plugin::build(env!("CARGO_MANIFEST_DIR")).expect("build the component");
    assert_eq!(plugin.info().programs, ["python"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("final");
    let python = Script::new()
        .writes("epoch_1.pth", b"1")
        .writes("epoch_2.pth", b"2")
        .writes("best_coco_bbox_mAP_epoch_2.pth", b"best")
        .writes(
            "last_checkpoint",
            out.join("epoch_2.pth").display().to_string(),
        )
        .writes("20261206_055238/vis_data/scalars.json", SCALARS)
        .output(FINAL_LOG)
        .exits(0);
    let outcome = plugin.run("train", train_step(&out).program("python", python));
    let outputs = outcome.outputs();
    let launch = &outcome.launches[0];
    assert_eq!(launch.program, "python");
    assert_eq!(launch.args[0], TRAIN_PY);
    assert!(launch.args.contains(&"--work-dir".to_owned()), "{launch:?}");
    assert!(
        launch.env.contains(&("OMP_NUM_THREADS".into(), "1".into())),
        "{launch:?}"
    );
    assert_eq!(
        outputs["best_weights"],
        out.join("best_coco_bbox_mAP_epoch_2.pth")
            .display()
            .to_string()
    );
    assert_eq!(outputs["epochs_completed"], 2, "{outputs}");
    assert_eq!(outputs["metrics"]["coco/bbox_mAP"], 0.061, "{outputs}");
    assert!(
        outcome.progress.iter().any(|u| u.epoch == Some(2)),
        "{:?}",
        outcome.progress
    );
}

#[test]
fn a_config_from_elsewhere_is_refused_before_anything_runs() {
    let plugin = Plugin::build(env!("CARGO_MANIFEST_DIR")).expect("build the component");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("final");
    resolved(&out);
    let outcome = plugin.run(
        "train",
        Step::new(json!({
            "task": "detect", "project": "demo", "training_name": "final",
            "config": {"config_path": "/etc/passwd", "epochs": 2},
        }))
        .dir("training-output", &out, true)
        .program("python", Script::new()),
    );
    let (kind, message) = outcome.error();
    assert_eq!(*kind, ErrorKind::InvalidInput);
    assert!(
        message.contains("is not in this training's folder"),
        "{message}"
    );
    assert!(outcome.launches.is_empty());
}

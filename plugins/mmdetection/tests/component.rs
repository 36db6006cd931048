//! The built component, run by the plugin test harness against a scripted `python` that prints
//! the output of a real MMDetection 3.3.0 training (tests/data, captured with the real trainer)
//! and writes its work dir.

use kiln_plugin_test::{ErrorKind, Level, Outcome, Plugin, Script, Step};
use serde_json::{Value, json};

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

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mmdetection")
}

/// A resolve-config preview (no training folder, as the training API runs it) against the real
/// MMEngine resolver: the component's launch of `python` is run with KILN_TEST_MMDET_PYTHON
/// (scripts/test.sh makes one), and its output replayed to the component. None without it.
fn real_preview(plugin: &Plugin, config_dir: &std::path::Path, with: Value) -> Option<Outcome> {
    let Ok(python) = std::env::var("KILN_TEST_MMDET_PYTHON") else {
        eprintln!("KILN_TEST_MMDET_PYTHON is not set: skipped (scripts/test.sh sets it)");
        return None;
    };
    let mut inputs = json!({"task": "detect", "project": "preview", "training_name": "t"});
    inputs
        .as_object_mut()
        .unwrap()
        .extend(with.as_object().unwrap().clone());
    let step = || Step::new(inputs.clone()).dir("config", config_dir, false);
    let asked = plugin.run("resolve-config", step().program("python", Script::new()));
    let launch = asked.launches.first().expect("the resolver is launched");
    assert_eq!(launch.program, "python");
    let ran = std::process::Command::new(&python)
        .args(&launch.args)
        .envs(launch.env.iter().cloned())
        .current_dir(&launch.cwd)
        .output()
        .expect("run the MMEngine python");
    let replay = Script::new()
        .output(&String::from_utf8_lossy(&ran.stdout))
        .output(&String::from_utf8_lossy(&ran.stderr))
        .exits(ran.status.code().unwrap_or(1));
    Some(plugin.run("resolve-config", step().program("python", replay)))
}

fn option<'a>(options: &'a [Value], key: &str) -> Option<&'a Value> {
    options.iter().find(|o| o["key"] == key)
}

#[test]
fn resolve_config_offers_the_options_a_form_shows() {
    let plugin = Plugin::build(env!("CARGO_MANIFEST_DIR")).expect("build the component");
    let resolve = plugin
        .info()
        .actions
        .iter()
        .find(|a| a.name == "resolve-config")
        .unwrap();
    assert!(resolve.outputs.iter().any(|o| o.name == "options"));
    let Some(outcome) = real_preview(&plugin, &configs(), json!({"overrides": {"lr": 0.02}}))
    else {
        return;
    };
    let outputs = outcome.outputs();
    assert!(outputs.get("options_left_out").is_none(), "{outputs}");
    let options = outputs["options"].as_array().expect("options");
    // The user-mode options first, in their order, with the resolved config's values.
    let keys: Vec<&str> = options.iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys[..8],
        [
            "epochs",
            "batch_size",
            "lr",
            "imgsz",
            "device",
            "checkpoint_interval",
            "val_interval",
            "amp"
        ]
    );
    assert!(options[..8].iter().all(|o| o["user"] == true));
    assert!(options[..8].iter().all(|o| o["description"].is_string()));
    // The base config's (tiny_retinanet_cpu.py: max_epochs=2, img_scale 128), the override's lr.
    let epochs = option(options, "epochs").unwrap();
    assert_eq!(epochs["type"], "int", "{epochs}");
    assert_eq!(epochs["default"], 2, "{epochs}");
    assert_eq!(epochs["default"], outputs["epochs"]);
    assert_eq!(option(options, "lr").unwrap()["default"], 0.02);
    assert_eq!(
        option(options, "imgsz").unwrap()["default"],
        json!([128, 128])
    );
    assert_eq!(option(options, "amp").unwrap()["default"], false);
    assert_eq!(option(options, "device").unwrap()["default"], Value::Null);
    // Then developer mode's keys, by key: the config's leaves, a list as one value.
    let developer = &options[8..];
    assert!(developer.iter().all(|o| o["user"] == false));
    assert!(
        developer
            .windows(2)
            .all(|w| w[0]["key"].as_str() < w[1]["key"].as_str())
    );
    let depth = option(developer, "model.backbone.depth").unwrap();
    assert_eq!(
        *depth,
        json!({"key": "model.backbone.depth", "type": "int", "default": 18, "user": false,
               "description": null})
    );
    assert_eq!(
        option(developer, "optim_wrapper.optimizer.lr").unwrap()["default"],
        0.02
    );
    let pipeline = option(developer, "train_dataloader.dataset.pipeline").unwrap();
    assert_eq!(pipeline["type"], "list");
    assert!(option(developer, "train_dataloader.dataset.pipeline.0").is_none());
    assert!(option(developer, "model.backbone").is_none());
    // Not what Kiln sets (from the dataset, the training's folder), nor MMEngine's markers.
    for key in [
        "model.bbox_head.num_classes",
        "train_dataloader.dataset.data_root",
        "train_dataloader.dataset.ann_file",
        "train_dataloader.dataset.data_prefix.img",
        "train_dataloader.dataset.metainfo.classes",
        "val_evaluator.ann_file",
        "data_root",
        "work_dir",
    ] {
        assert!(option(options, key).is_none(), "{key}");
    }
    assert!(
        !keys
            .iter()
            .any(|k| k.split('.').any(|p| p.starts_with('_')))
    );

    // Developer mode takes every key offered: given their values back, the config is the same.
    let given: serde_json::Map<String, Value> = developer
        .iter()
        .map(|o| (o["key"].as_str().unwrap().to_owned(), o["default"].clone()))
        .collect();
    let again = real_preview(
        &plugin,
        &configs(),
        json!({"mode": "developer", "overrides": given}),
    )
    .unwrap();
    assert_eq!(again.outputs()["config"], outputs["config"]);
    // ... and refuses what is left out.
    for key in ["work_dir", "data_root", "model._scope_"] {
        let refused = real_preview(
            &plugin,
            &configs(),
            json!({"mode": "developer", "overrides": {key: 1}}),
        )
        .unwrap();
        let (kind, message) = refused.error();
        assert_eq!(*kind, ErrorKind::InvalidInput, "{key}: {message}");
        assert!(message.contains(&format!("override '{key}'")), "{message}");
    }
}

#[test]
fn the_options_of_a_huge_config_are_capped() {
    let plugin = Plugin::build(env!("CARGO_MANIFEST_DIR")).expect("build the component");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("detect")).unwrap();
    let leaves: Vec<String> = (0..2500).map(|i| format!("k{i:04}={i}")).collect();
    std::fs::write(
        dir.path().join("detect/huge.py"),
        format!("huge = dict({})\n", leaves.join(", ")),
    )
    .unwrap();
    let Some(outcome) = real_preview(
        &plugin,
        dir.path(),
        json!({"base_config": "detect/huge.py"}),
    ) else {
        return;
    };
    let outputs = outcome.outputs();
    let options = outputs["options"].as_array().unwrap();
    assert_eq!(options.len(), 8 + 2000);
    assert_eq!(options[8]["key"], "huge.k0000");
    assert_eq!(options.last().unwrap()["key"], "huge.k1999");
    assert!(outputs.get("options_left_out").is_none(), "{outputs}");
    assert!(
        outcome
            .logs
            .iter()
            .any(|(level, l)| *level == Level::Warn && l.contains("500 more are left out")),
        "{:?}",
        outcome.logs
    );
}

#[test]
fn the_resolvers_options_are_passed_on_and_its_count_of_more_is_said() {
    // A resolver's answer as it prints it (hex-encoded JSON lines).
    let plugin = Plugin::build(env!("CARGO_MANIFEST_DIR")).expect("build the component");
    let result = json!({
        "config_path": null, "command": ["python", "/x/tools/train.py"], "epochs": 2,
        "options": [
            {"key": "epochs", "type": "int", "default": 2, "user": true,
             "description": "number of training epochs (train_cfg.max_epochs)"},
            {"key": "model.backbone.depth", "type": "int", "default": 18, "user": false,
             "description": null},
        ],
        "options_left_out": 3,
    });
    let python = Script::new()
        .line(format!(
            "KILN_RESULT_HEX {}",
            hex::encode(result.to_string())
        ))
        .line("KILN_RESULT_END");
    let outcome = plugin.run(
        "resolve-config",
        Step::new(json!({"task": "detect", "project": "p", "training_name": "t"}))
            .dir("config", configs(), false)
            .program("python", python),
    );
    let outputs = outcome.outputs();
    assert_eq!(outputs["options"], result["options"]);
    assert!(outputs.get("options_left_out").is_none(), "{outputs}");
    assert!(
        outcome.logs.iter().any(|(level, l)| *level == Level::Warn
            && l.contains("the first 1 developer-mode keys; 3 more are left out")),
        "{:?}",
        outcome.logs
    );
}

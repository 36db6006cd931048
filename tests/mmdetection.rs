//! The mmdetection plugin's `resolve-config` through the real binary, against a real MMEngine
//! (`KILN_TEST_MMDET_PYTHON`: a Python with mmengine and mmdet's configs; scripts/test.sh makes
//! one with scripts/mmdet-venv.sh). Without it these tests say so and check nothing.

mod common;

use common::*;
use serde_json::{Value, json};

/// A workspace whose `.venv/bin/python` is the MMEngine Python, with the COCO demo release.
fn workspace() -> Option<Workspace> {
    let Ok(python) = std::env::var("KILN_TEST_MMDET_PYTHON") else {
        eprintln!("KILN_TEST_MMDET_PYTHON is not set: skipped (scripts/test.sh sets it)");
        return None;
    };
    let ws = Workspace::new();
    let bin = ws.root().join(".venv/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("python");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec '{python}' \"$@\"\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(
        repo_root().join("workflows/data/demo-coco-release.zip"),
        ws.root()
            .join("projects/demo/releases/demo-coco-release.zip"),
    )
    .unwrap();
    Some(ws)
}

/// Extract a release, then resolve with `with` added to the resolve step's inputs, for a new
/// training each time (a training belongs to the run that named it first).
fn resolve(ws: &Workspace, release: &str, with: &str) -> (Option<i32>, Value, std::path::PathBuf) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let wf = ws.workflow(
        "resolve.yaml",
        &format!(
            "name: resolve\nsteps:\n  - id: extract\n    uses: builtin/extract-release\n    \
             with: {{project: demo, release: {release}}}\n  - id: resolve\n    uses: mmdetection\n    \
             action: resolve-config\n    needs: [extract]\n    with:\n      task: detect\n      \
             project: demo\n      training_name: shapes-{n}\n      dataset: ${{{{ steps.extract.outputs }}}}\n{with}"
        ),
    );
    let out = ws.kiln(&["run", &wf]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("started"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let training = ws
        .root()
        .join(format!("projects/demo/model/training/shapes-{n}"));
    (out.status.code(), show, training)
}

#[test]
fn mmengine_resolves_the_base_config_onto_the_coco_release() {
    let Some(ws) = workspace() else { return };
    let (code, show, training) = resolve(
        &ws,
        "demo-coco-release.zip",
        "      overrides: {epochs: 3, imgsz: 160, lr: 0.02}\n",
    );
    assert_eq!(code, Some(0), "{show}");
    let out = &step(&show, "resolve")["outputs"];
    let data = ws
        .root()
        .join("projects/demo/training_data/demo-coco-release");
    let config = training.join("artifacts/config.py");
    assert_eq!(out["config_path"], config.display().to_string());
    assert_eq!(out["epochs"], 3);
    assert_eq!(out["imgsz"], json!([160, 160]));
    assert_eq!(
        out["splits"],
        json!({"train": "train", "val": "val", "test": "val"})
    );
    let command: Vec<&str> = out["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        command[1].ends_with("mmdet/.mim/tools/train.py"),
        "{command:?}"
    );
    assert_eq!(
        command[2..],
        [
            config.display().to_string().as_str(),
            "--work-dir",
            training.display().to_string().as_str()
        ]
    );
    assert_eq!(
        std::fs::read_to_string(training.join("artifacts/command.txt")).unwrap(),
        format!("{}\n", command.join(" "))
    );
    // What MMEngine wrote: every dataloader and evaluator points at the release, leaf by leaf
    // (compared without whitespace: MMEngine wraps long lines its own way).
    let text = std::fs::read_to_string(&config).unwrap();
    let flat: String = text.split_whitespace().collect();
    let root = format!("data_root='{}/'", data.display());
    // The three dataloaders (and the top-level variable, `data_root = ...`).
    assert_eq!(flat.matches(&format!("{root},")).count(), 3, "{text}");
    for expected in [
        "ann_file='annotations/train.json'".to_owned(),
        "ann_file='annotations/val.json'".to_owned(),
        format!("ann_file='{}/annotations/val.json'", data.display()),
        "data_prefix=dict(img='train/')".to_owned(),
        "data_prefix=dict(img='val/')".to_owned(),
        "metainfo=dict(classes=('red_rect','blue_rect',))".to_owned(),
        "num_classes=2".to_owned(),
        "max_epochs=3".to_owned(),
        "lr=0.02".to_owned(),
        "scale=(160,160,)".to_owned(),
    ] {
        assert!(flat.contains(&expected), "{expected} not in\n{text}");
    }
}

#[test]
fn developer_mode_takes_any_key_of_the_resolved_config_and_only_those() {
    let Some(ws) = workspace() else { return };
    let (code, show, _) = resolve(
        &ws,
        "demo-coco-release.zip",
        "      mode: developer\n      overrides: {model.backbone.depthh: 34}\n",
    );
    assert_eq!(code, Some(1));
    let e = step(&show, "resolve")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        e.contains("'model.backbone.depthh' is not a key of the resolved config")
            && e.contains("did you mean 'depth'?"),
        "{e}"
    );
    let (code, show, training) = resolve(
        &ws,
        "demo-coco-release.zip",
        "      mode: developer\n      overrides: {model.backbone.depth: 34, train_cfg.val_interval: 2}\n",
    );
    assert_eq!(code, Some(0), "{show}");
    let config = training.join("artifacts/config.py");
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains("depth=34") && text.contains("val_interval=2"),
        "{text}"
    );
}

#[test]
fn user_mode_refuses_what_only_developer_mode_may_set() {
    let Some(ws) = workspace() else { return };
    let (code, show, _) = resolve(
        &ws,
        "demo-coco-release.zip",
        "      overrides: {model.backbone.depth: 34}\n",
    );
    assert_eq!(code, Some(1));
    let e = step(&show, "resolve")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        e.contains("override 'model.backbone.depth': only developer mode may set it")
            && e.contains("user mode allows: amp, batch_size, checkpoint_interval"),
        "{e}"
    );
    let (code, show, _) = resolve(
        &ws,
        "demo-coco-release.zip",
        "      report_rejected: true\n      overrides: {model.backbone.depth: 34, epochs: 1}\n",
    );
    assert_eq!(code, Some(0), "{show}");
    let out = &step(&show, "resolve")["outputs"];
    assert_eq!(
        out["rejected"],
        json!([{"key": "model.backbone.depth", "reason": "only developer mode may set it"}])
    );
    assert_eq!(out["epochs"], 1);
    for (overrides, expected) in [
        ("{epochs: 0}", "override 'epochs' must be at least 1, got 0"),
        ("{epochs: 1.5}", "override 'epochs' must be a whole number"),
        ("{lr: -1}", "override 'lr'"),
        (
            "{device: gpu}",
            "override 'device' must be cpu, cuda or cuda:N",
        ),
        (
            "{no_such_option: 1}",
            "override 'no_such_option': unknown option",
        ),
    ] {
        let (code, show, _) = resolve(
            &ws,
            "demo-coco-release.zip",
            &format!("      overrides: {overrides}\n"),
        );
        assert_eq!(code, Some(1), "{overrides}");
        let e = step(&show, "resolve")["error_message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(e.contains(expected), "{overrides}: {e}");
    }
}

#[test]
fn a_yolo_release_or_a_missing_base_config_is_refused_before_anything_runs() {
    let Some(ws) = workspace() else { return };
    let (code, show, _) = resolve(&ws, "demo-release.zip", "");
    assert_eq!(code, Some(1));
    let e = step(&show, "resolve")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(e.contains("input 'dataset' is a yolo release"), "{e}");
    let (code, show, _) = resolve(
        &ws,
        "demo-coco-release.zip",
        "      base_config: detect/nope.py\n",
    );
    assert_eq!(code, Some(1));
    let e = step(&show, "resolve")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(e.contains("there is no 'detect/nope.py'"), "{e}");
}

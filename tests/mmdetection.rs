//! The mmdetection plugin through the real binary: `resolve-config` against a real MMEngine
//! (`KILN_TEST_MMDET_PYTHON`: a Python with mmengine and mmdet's configs; scripts/test.sh makes
//! one with scripts/mmdet-venv.sh), `train` against the stand-in for MMDetection's
//! `tools/train.py` (tests/fixtures/bin/mmdet-train, which replays the real trainer's output and
//! files). Without that Python these tests say so and check nothing.

mod common;
#[path = "common/api.rs"]
mod http;

use common::*;
use http::*;
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
    // MMDetection's tools/train.py needs torch: the stand-in plays it; the rest is real.
    let stand_in = repo_root().join("tests/fixtures/bin/mmdet-train");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in */tools/train.py) shift; exec '{}' \"$@\";; esac\nexec '{python}' \"$@\"\n",
            stand_in.display()
        ),
    )
    .unwrap();
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
    assert_eq!(out["input_size"], 160);
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
    let e = step_error(&show, "resolve");
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
    let e = step_error(&show, "resolve");
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
        (
            "{epochs: 0}",
            "override 'epochs' must be between 1 and 1000000, got 0",
        ),
        ("{epochs: 1.5}", "override 'epochs' must be a whole number"),
        ("{lr: -1}", "override 'lr'"),
        ("{device: gpu}", "override 'device' must be cpu or cuda"),
        ("{device: 'cuda:1'}", "which GPUs a step gets is its lease"),
        ("{amp: true, device: cpu}", "mixed precision needs a GPU"),
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
        let e = step_error(&show, "resolve");
        assert!(e.contains(expected), "{overrides}: {e}");
    }
}

#[test]
fn a_yolo_release_or_a_missing_base_config_is_refused_before_anything_runs() {
    let Some(ws) = workspace() else { return };
    let (code, show, _) = resolve(&ws, "demo-release.zip", "");
    assert_eq!(code, Some(1));
    let e = step_error(&show, "resolve");
    assert!(e.contains("input 'dataset' is a yolo release"), "{e}");
    let (code, show, _) = resolve(
        &ws,
        "demo-coco-release.zip",
        "      base_config: detect/nope.py\n",
    );
    assert_eq!(code, Some(1));
    let e = step_error(&show, "resolve");
    assert!(e.contains("there is no 'detect/nope.py'"), "{e}");
}

/// `kiln run` of the reference workflow (release to registered model) on the COCO demo release,
/// for training `name`.
fn reference_args(name: &str, overrides: &str) -> Vec<String> {
    let wf = repo_root().join("workflows/mmdetection-detect.yaml");
    [
        "run".to_owned(),
        wf.display().to_string(),
        "-p".into(),
        "project=demo".into(),
        "-p".into(),
        "release=demo-coco-release.zip".into(),
        "-p".into(),
        format!("training_name={name}"),
        "-p".into(),
        format!("overrides={overrides}"),
    ]
    .into()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The reference workflow run to its end.
fn train(ws: &Workspace, name: &str, overrides: &str) -> (Option<i32>, Value) {
    let out = ws.kiln(&strs(&reference_args(name, overrides)));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    (out.status.code(), show)
}

#[test]
fn the_mmdetection_workflow_trains_and_exports_the_best_weights() {
    let Some(ws) = workspace() else { return };
    let (code, show) = train(&ws, "t1", "{epochs: 2}");
    assert_eq!(code, Some(0), "{show}");
    let dir = ws.root().join("projects/demo/model/training/t1");
    let at = |p: &str| dir.join(p).display().to_string();
    let out = &step(&show, "train")["outputs"];
    assert_eq!(out["work_dir"], dir.display().to_string());
    assert_eq!(out["best_weights"], at("best_coco_bbox_mAP_epoch_2.pth"));
    assert_eq!(out["last_checkpoint"], at("epoch_2.pth"));
    assert_eq!(out["epochs_completed"], 2);
    assert!(out["resumed_from_epoch"].is_null(), "{out}");
    assert!(out["metrics"]["coco/bbox_mAP"].as_f64().is_some(), "{out}");
    let paths: Vec<&str> = out["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&at("epoch_2.pth").as_str()), "{paths:?}");
    assert!(
        paths.contains(&at("best_coco_bbox_mAP_epoch_2.pth").as_str()),
        "{paths:?}"
    );
    assert!(
        out["scalars_json"]
            .as_str()
            .unwrap()
            .ends_with("/vis_data/scalars.json")
    );
    // The progress the run recorded: the last epoch of two.
    let progress = &step(&show, "train")["progress"];
    assert_eq!(progress["epoch"], 2, "{progress}");
    assert_eq!(progress["epochs"], 2, "{progress}");
    // Exported with MMDetection's extension, the resolved config recorded.
    let export = &step(&show, "export")["outputs"];
    assert_eq!(
        export["weights"],
        "projects/demo/model/training/t1/weights/best.pth"
    );
    assert!(dir.join("weights/best.pth").is_file());
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("artifacts/report.json")).unwrap()).unwrap();
    assert_eq!(
        report["config"],
        "projects/demo/model/training/t1/artifacts/config.py"
    );
    assert!(report["metrics"]["coco/bbox_mAP"].is_number(), "{report}");
    // The trainer's log is in the training's folder too (MMDetection writes its own there).
    let run = show["run"]["id"].as_str().unwrap();
    let train_log = std::fs::read_to_string(dir.join("logs").join(run).join("train.log")).unwrap();
    assert!(
        train_log.contains("Epoch(val) [2][4/4]    coco/bbox_mAP:"),
        "{train_log}"
    );
    assert_eq!(
        export["logs_dir"],
        format!("projects/demo/model/training/t1/logs/{run}")
    );
    // Registered with its framework, format, classes, input size and metrics.
    let models = ws.json(&["models", "list", "--json"]);
    let model = &models.as_array().unwrap()[0];
    assert_eq!(model["framework"], "mmdetection", "{model}");
    assert_eq!(model["format"], "pth");
    assert_eq!(
        model["file_path"],
        "projects/demo/model/training/t1/weights/best.pth"
    );
    assert_eq!(model["class_names"], json!(["red_rect", "blue_rect"]));
    assert_eq!(model["input_size"], 128);
    assert_eq!(model["base_model"], "detect/default.py");
    assert!(model["metrics"]["coco/bbox_mAP"].is_number(), "{model}");
}

#[test]
fn a_training_without_detections_fails_and_says_why() {
    let Some(ws) = workspace() else { return };
    let ws = ws.with_env("FAKE_MMDET_NO_DETECTIONS", "1");
    let (code, show) = train(&ws, "t2", "{}");
    assert_eq!(code, Some(1), "{show}");
    let e = step_error(&show, "train");
    assert!(
        e.contains("found no detections") && e.contains("score_thr"),
        "{e}"
    );
    assert_eq!(step(&show, "export")["status"], "skipped");
}

#[test]
fn a_failed_training_reports_the_exception_and_a_retry_resumes_it() {
    let Some(ws) = workspace() else { return };
    let record = ws.root().join("launches.jsonl");
    let failing = ws
        .with_env("FAKE_MMDET_FAIL_AT_EPOCH", "2")
        .with_env("FAKE_MMDET_RECORD", record.to_str().unwrap());
    // The reference workflow as it is: a second attempt of the train step resumes by itself.
    let out = failing.kiln(&strs(&reference_args("t3", "{epochs: 3}")));
    assert_eq!(out.status.code(), Some(1));
    let id = run_id(&out);
    let show = failing.json(&["runs", "show", &id, "--json"]);
    let e = step_error(&show, "train");
    assert!(
        e.starts_with("MMDetection failed (exit code 1): RuntimeError"),
        "{e}"
    );
    let ws = failing.with_env("FAKE_MMDET_FAIL_AT_EPOCH", "");
    let out = ws.kiln(&["runs", "retry", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let show = ws.json(&["runs", "show", &id, "--json"]);
    let train = &step(&show, "train")["outputs"];
    assert_eq!(train["resumed_from_epoch"], 1, "{train}");
    assert_eq!(train["epochs_completed"], 3, "{train}");
    let launches: Vec<Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(launches.len(), 2, "{launches:?}");
    assert!(
        launches[1]["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--resume"),
        "{launches:?}"
    );
}

/// The training façade with `framework: mmdetection`: the default config, a preview resolved by
/// MMEngine, and a start that runs mmdetection-detect to a registered model.
#[test]
fn the_training_api_speaks_mmdetection() {
    let Some(ws) = workspace() else { return };
    let aws = ApiWorkspace::with(ws, None);
    let server = aws.serve();
    let token = aws.token("ui", &[], &["trainer"]);
    let r = server.get(
        "/api/v1/training/config/default?framework=mmdetection&task=detect",
        &token,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["path"], "configs/mmdetection/detect/default.py");
    assert_eq!(v["format"], "python");
    assert!(v["config"].is_null(), "{v}");
    assert!(v["yaml"].as_str().unwrap().contains("_base_"), "{v}");

    let r = server.post(
        "/api/v1/training/config/resolve",
        &token,
        &json!({"framework": "mmdetection", "task": "detect",
                "overrides": {"epochs": 4, "model.backbone.depth": 34}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["format"], "python");
    assert_eq!(v["config"]["train_cfg"]["max_epochs"], 4, "{v}");
    assert_eq!(v["rejected"][0]["key"], "model.backbone.depth", "{v}");
    assert!(
        v["resolved_yaml"]
            .as_str()
            .unwrap()
            .contains("max_epochs=4"),
        "{v}"
    );
    let cli = v["cli_preview"].as_str().unwrap();
    assert!(
        cli.contains("mmdet/.mim/tools/train.py <resolved config> --work-dir <training-output>"),
        "{cli}"
    );
    let v_preview = v.clone();
    let r = server.post(
        "/api/v1/training/config/resolve",
        &token,
        &json!({"framework": "mmdetection", "task": "detect", "mode": "developer",
                "overrides": {"model.backbone.depthh": 34}}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("did you mean 'depth'"), "{}", r.text());

    std::fs::copy(
        repo_root().join("workflows/data/demo-coco-release.zip"),
        aws.ws.root().join("projects/demo/releases/coco.zip"),
    )
    .unwrap();
    // Paths in the workspace are named relative to it.
    assert!(
        !v_preview.to_string().contains(&aws.marker()),
        "{v_preview}"
    );

    let start = json!({"project_id": "demo", "training_name": "api1", "framework": "mmdetection",
        "task": "detection", "release": "coco.zip", "config": {"epochs": 2},
        "base_config": "configs/mmdetection/detect/tiny_retinanet_cpu.py"});
    let r = server.post("/api/v1/training/start", &token, &start);
    assert_eq!(r.status, 201, "{}", r.text());
    let run_id = r.json()["run_id"].as_str().unwrap().to_owned();
    let run = server.wait_run(&run_id, &token, 120);
    assert_eq!(run["status"], "succeeded", "{run}");
    // The extracted COCO release is seen as extracted; the framework's checkpoints are listed.
    let r = server.get(
        "/api/v1/training/check-extracted?zip_path=projects/demo/releases/coco.zip",
        &token,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extracted"], true, "{}", r.text());
    assert!(r.json()["data_yaml"].is_null(), "{}", r.text());
    let r = server.get(
        "/api/v1/training/checkpoints?project_id=demo&training_name=api1",
        &token,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let files: Vec<(String, bool)> = r.json()["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["best"].as_bool().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("best.pth", true),
        ("best_coco_bbox_mAP_epoch_2.pth", true),
        ("epoch_2.pth", false),
    ] {
        assert!(
            files.contains(&(expected.0.to_owned(), expected.1)),
            "{expected:?} not in {files:?}"
        );
    }
    // The run's view of its checkpoints too: the exported best and MMDetection's own.
    let r = server.get(&format!("/api/v1/runs/{run_id}/checkpoints"), &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    for name in [
        "\"best.pth\"",
        "\"epoch_2.pth\"",
        "\"best_coco_bbox_mAP_epoch_2.pth\"",
    ] {
        assert!(text.contains(name), "{name} not in {text}");
    }
    let r = server.get("/api/v1/models?project=demo", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let model = &r.json()[0];
    assert_eq!(model["framework"], "mmdetection", "{model}");
    assert_eq!(
        model["base_model"], "detect/tiny_retinanet_cpu.py",
        "{model}"
    );
    assert_eq!(
        model["file_path"],
        "projects/demo/model/training/api1/weights/best.pth"
    );
}

/// Configs whose dataloaders wrap their datasets (RepeatDataset, ConcatDataset): every dataset
/// inside gets the release, and `imgsz` reaches their pipelines; keys Kiln sets are refused.
#[test]
fn wrapped_datasets_get_the_release_and_kiln_keys_are_not_overridden() {
    let Some(ws) = workspace() else { return };
    let pipeline = "[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True), \
                    dict(type='Resize', scale=(64, 64), keep_ratio=True), dict(type='PackDetInputs')]";
    let inner = |ann: &str| {
        format!(
            "dict(type='CocoDataset', data_root='data/', ann_file='{ann}', \
             data_prefix=dict(img='x/'), pipeline={pipeline})"
        )
    };
    std::fs::write(
        ws.root().join("configs/mmdetection/detect/wrapped.py"),
        format!(
            "_base_ = './tiny_retinanet_cpu.py'\n\
             train_dataloader = dict(dataset=dict(_delete_=True, type='ConcatDataset', \
             datasets=[{}, dict(type='RepeatDataset', times=2, dataset={})]))\n",
            inner("a.json"),
            inner("b.json")
        ),
    )
    .unwrap();
    let (code, show, training) = resolve(
        &ws,
        "demo-coco-release.zip",
        "      base_config: detect/wrapped.py\n      overrides: {imgsz: 96}\n",
    );
    assert_eq!(code, Some(0), "{show}");
    let text = std::fs::read_to_string(training.join("artifacts/config.py")).unwrap();
    let flat: String = text.split_whitespace().collect();
    assert!(!flat.contains("data_root='data/'"), "{text}");
    assert!(
        !flat.contains("'a.json'") && !flat.contains("'b.json'"),
        "{text}"
    );
    // Both inner train datasets, and val and test.
    assert_eq!(
        flat.matches("ann_file='annotations/train.json'").count(),
        2,
        "{text}"
    );
    assert!(!flat.contains("scale=(64,64,)"), "{text}");
    assert_eq!(step(&show, "resolve")["outputs"]["input_size"], 96);

    for key in [
        "model.bbox_head.num_classes",
        "val_evaluator.ann_file",
        "train_dataloader.dataset.data_root",
    ] {
        let (code, show, _) = resolve(
            &ws,
            "demo-coco-release.zip",
            &format!("      mode: developer\n      overrides: {{{key}: 7}}\n"),
        );
        assert_eq!(code, Some(1), "{key}");
        let e = step_error(&show, "resolve");
        assert!(
            e.contains(&format!("override '{key}': Kiln sets it from the dataset")),
            "{e}"
        );
    }
}

/// A cancel stops MMDetection's trainer (SIGTERM to its process group: it dies by the signal,
/// as the real one does) and nothing of the training is left running.
#[test]
fn cancelling_a_training_stops_the_trainer() {
    let Some(ws) = workspace() else { return };
    let ws = ws.with_env("FAKE_MMDET_EPOCH_SECONDS", "30");
    let mut engine = ws.spawn(&strs(&reference_args("c1", "{epochs: 3}")));
    let trainer = || processes_mentioning("training/c1/artifacts/config.py");
    engine.wait_for(300, "the trainer to start", || !trainer().is_empty());
    let runs = ws.json(&["runs", "list", "--json"]);
    let id = runs[0]["id"].as_str().unwrap().to_owned();
    let out = ws.kiln(&["runs", "cancel", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(engine.wait().code(), Some(1), "{}", engine.stderr());
    assert!(trainer().is_empty(), "{:?}", trainer());
    let show = ws.json(&["runs", "show", &id, "--json"]);
    let statuses: Vec<&str> = ["train", "export", "register"]
        .iter()
        .map(|id| step(&show, id)["status"].as_str().unwrap())
        .collect();
    assert_eq!(show["run"]["status"], "cancelled");
    assert_eq!(statuses, ["cancelled", "cancelled", "cancelled"]);
}

/// An engine killed mid-training does not lose or repeat the training: `kiln resume` re-attaches
/// to the trainer that kept running under its supervisor, which is launched once.
#[test]
fn a_killed_engine_resumes_without_a_second_trainer() {
    let Some(ws) = workspace() else { return };
    let record = ws.root().join("launches.jsonl");
    let ws = ws
        .with_env("FAKE_MMDET_EPOCH_SECONDS", "2")
        .with_env("FAKE_MMDET_RECORD", record.to_str().unwrap());
    let mut engine = ws.spawn(&strs(&reference_args("k1", "{epochs: 2}")));
    let trainer = || processes_mentioning("training/k1/artifacts/config.py");
    // Started and recorded (the stand-in writes its record once it runs).
    engine.wait_for(300, "the trainer to start", || {
        !trainer().is_empty() && record.exists()
    });
    kill(engine.id(), "KILL");
    engine.wait();
    assert!(
        !trainer().is_empty(),
        "the trainer outlives the engine: {:?} / {}",
        processes_mentioning("k1"),
        std::fs::read_to_string(ws.root().join("launches.jsonl")).unwrap_or_default()
    );
    let id = ws.json(&["runs", "list", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = ws.kiln(&["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "succeeded");
    let train = &step(&show, "train")["outputs"];
    assert_eq!(train["epochs_completed"], 2, "{train}");
    assert!(train["metrics"]["coco/bbox_mAP"].is_number(), "{train}");
    let launches = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        launches.lines().count(),
        1,
        "one trainer, re-attached: {launches}"
    );
    assert!(trainer().is_empty());
}

//! Criterion micro-benchmarks of the work `kiln run` does in kiln-workflow before and between
//! steps: parsing + validating a workflow, resolving params, rendering a step's inputs.
//!
//! ```sh
//! cargo bench -p kiln-workflow --bench workflow            # all (~30 s after the build)
//! cargo bench -p kiln-workflow --bench workflow -- render  # a filter
//! ```
//!
//! Kept quick on purpose (10 samples, 2 s of measurement each); see benches/README.md at the
//! workspace root for the numbers measured and for the whole-process benchmark.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};

use kiln_workflow::{
    ActionSpec, ExprContext, MemoryCatalog, Workflow, render_inputs, resolve_params,
};

/// What `kiln run` sees for workflows/ultralytics-detect.yaml: the builtins (as in
/// `kiln_runner::builtins::specs`), the Ultralytics plugin's `describe()`, and the test plugin
/// `hostile` used by the generated workflows below.
fn catalog() -> MemoryCatalog {
    let hostile = || ActionSpec::new([], ["project", "training_name"], ["result"]);
    MemoryCatalog::new()
        .with_builtin(
            "builtin/extract-release",
            ActionSpec::new(
                ["project", "release"],
                ["slug"],
                [
                    "data_yaml",
                    "dataset_dir",
                    "class_names",
                    "nc",
                    "slug",
                    "files",
                    "release_sha256",
                    "extracted",
                ],
            ),
        )
        .with_builtin(
            "builtin/export-best",
            ActionSpec::new(
                ["project", "training_name", "best_weights"],
                ["resolved_yaml", "metrics", "extra"],
                [
                    "weights",
                    "weights_sha256",
                    "config_path",
                    "report_path",
                    "artifacts_dir",
                ],
            ),
        )
        .with_builtin(
            "builtin/register-model",
            ActionSpec::new(
                ["name", "project", "weights"],
                [
                    "task",
                    "format",
                    "config_path",
                    "input_size",
                    "class_names",
                    "metrics",
                    "dataset",
                    "base_model",
                ],
                ["model_id", "name", "version", "file_path"],
            ),
        )
        .with_plugin_action(
            "ultralytics",
            "resolve-config",
            ActionSpec::new(
                ["task", "data", "project", "training_name"],
                ["mode", "overrides", "base_config"],
                ["config", "resolved_yaml", "cli_preview", "imgsz", "epochs"],
            ),
        )
        .with_plugin_action(
            "ultralytics",
            "train",
            ActionSpec::new(
                ["task", "config", "project", "training_name"],
                ["resume"],
                [
                    "save_dir",
                    "best_weights",
                    "last_weights",
                    "checkpoints",
                    "metrics",
                    "epochs_completed",
                    "results_csv",
                    "resumed_from_epoch",
                ],
            ),
        )
        .with_plugin_action("hostile", "ok", hostile())
}

fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows/ultralytics-detect.yaml")
}

/// The same fan-out workflow as benches/whole-process.sh: `n` independent `hostile/ok` steps,
/// then one join step that needs them all.
fn fanout_yaml(n: usize) -> String {
    let mut y = String::from("name: bench-fanout\nsteps:\n");
    for i in 0..n {
        y.push_str(&format!("  - {{id: s{i}, uses: hostile, action: ok}}\n"));
    }
    let needs: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    y.push_str(&format!(
        "  - {{id: join, uses: hostile, action: ok, needs: [{}]}}\n",
        needs.join(", ")
    ));
    y
}

/// The params the README's `kiln run` example passes.
fn demo_params() -> BTreeMap<String, Value> {
    [
        ("project", json!("demo")),
        ("release", json!("demo-release.zip")),
        ("training_name", json!("first")),
        (
            "overrides",
            json!({"epochs": 2, "imgsz": 64, "batch": 4, "device": "cpu"}),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Params and plausible outputs of every step before `register`, as the runner holds them
/// when it renders the last step of the demo pipeline.
fn demo_context(workflow: &Workflow) -> ExprContext {
    let params = resolve_params(workflow, demo_params()).expect("demo params are valid");
    ExprContext::new(params)
        .with_outputs(
            "extract",
            obj(json!({
                "data_yaml": "/ws/projects/demo/training_data/demo-release/data.yaml",
                "dataset_dir": "/ws/projects/demo/training_data/demo-release",
                "class_names": ["cat", "dog", "bird"],
                "nc": 3,
                "slug": "demo-release",
                "files": 48,
                "release_sha256": "9f2c7d1e5b4a3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d",
                "extracted": true,
            })),
        )
        .with_outputs(
            "resolve",
            obj(json!({
                "config": {"model": "yolo11n.pt", "epochs": 2, "imgsz": 64, "batch": 4,
                           "device": "cpu", "data": "/data/demo-release/data.yaml",
                           "project": "/output", "name": "train", "exist_ok": true},
                "resolved_yaml": "model: yolo11n.pt\nepochs: 2\nimgsz: 64\nbatch: 4\n",
                "cli_preview": "yolo detect train model=yolo11n.pt epochs=2 imgsz=64 batch=4 device=cpu",
                "imgsz": 64,
                "epochs": 2,
            })),
        )
        .with_outputs(
            "train",
            obj(json!({
                "save_dir": "/ws/projects/demo/model/training/first/train",
                "best_weights": "/ws/projects/demo/model/training/first/train/weights/best.pt",
                "last_weights": "/ws/projects/demo/model/training/first/train/weights/last.pt",
                "checkpoints": [],
                "metrics": {"metrics/mAP50(B)": 0.123, "metrics/mAP50-95(B)": 0.045,
                            "metrics/precision(B)": 0.2, "metrics/recall(B)": 0.3},
                "epochs_completed": 2,
                "results_csv": "/ws/projects/demo/model/training/first/train/results.csv",
                "resumed_from_epoch": null,
            })),
        )
        .with_outputs(
            "export",
            obj(json!({
                "weights": "/ws/projects/demo/model/training/first/weights/best.pt",
                "weights_sha256": "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
                "config_path": "/ws/projects/demo/model/training/first/artifacts/config.yaml",
                "report_path": "/ws/projects/demo/model/training/first/artifacts/report.json",
                "artifacts_dir": "/ws/projects/demo/model/training/first/artifacts",
            })),
        )
}

fn benches(c: &mut Criterion) {
    let path = demo_path();
    let source = std::fs::read_to_string(&path).expect("workflows/ultralytics-detect.yaml");
    let catalog = catalog();
    let workflow = Workflow::parse(&source, &path).expect("demo workflow parses");
    workflow.validate(&catalog).expect("demo workflow is valid");

    // What `kiln run` / `kiln validate` do with the file once it is read.
    c.bench_function("parse+validate/ultralytics-detect", |b| {
        b.iter(|| {
            let wf = Workflow::parse(black_box(&source), &path).unwrap();
            wf.validate(&catalog).unwrap();
            wf
        })
    });
    c.bench_function("parse/ultralytics-detect", |b| {
        b.iter(|| Workflow::parse(black_box(&source), &path).unwrap())
    });

    let fanout = fanout_yaml(100);
    c.bench_function("parse+validate/fanout100", |b| {
        b.iter(|| {
            let wf = Workflow::parse(black_box(&fanout), "fanout100.yaml").unwrap();
            wf.validate(&catalog).unwrap();
            wf
        })
    });

    let given = demo_params();
    c.bench_function("resolve_params/ultralytics-detect", |b| {
        b.iter(|| resolve_params(&workflow, black_box(given.clone())).unwrap())
    });

    let ctx = demo_context(&workflow);
    let register = workflow.step("register").expect("step register");
    let resolve = workflow.step("resolve").expect("step resolve");
    // Sanity: the rendered values keep their JSON types.
    let rendered = render_inputs(register, &ctx).unwrap();
    assert_eq!(rendered["input_size"], json!(64));
    assert_eq!(rendered["class_names"], json!(["cat", "dog", "bird"]));

    // `register` has 11 inputs, every one an expression over params or 4 earlier steps.
    c.bench_function("render_inputs/register (11 inputs)", |b| {
        b.iter(|| render_inputs(black_box(register), &ctx).unwrap())
    });
    c.bench_function("render_inputs/resolve (6 inputs)", |b| {
        b.iter(|| render_inputs(black_box(resolve), &ctx).unwrap())
    });
}

criterion_group! {
    name = workflow;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(workflow);

//! The whole pipeline through the real binary: extract → resolve → train (stand-in yolo under
//! the real supervisor) → export → register, plus trainer failures and cancellation.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn full_pipeline_trains_exports_and_registers_a_model() {
    let ws = Workspace::new();
    let out = ws.run_demo("first", &[]);
    assert!(out.status.success(), "run failed:\n{}", text(&out.stderr));
    let run = run_id(&out);
    let show = ws.json(&["runs", "show", &run, "--json"]);
    assert_eq!(show["run"]["status"], "succeeded");
    assert_eq!(show["run"]["created_by"], "tester");
    assert_eq!(show["run"]["params"]["overrides"]["epochs"], 2);
    assert!(show["run"]["duration_ms"].as_i64().is_some());
    assert!(show["run"]["metrics"].is_object(), "run metrics: {show}");
    for id in ["extract", "resolve", "train", "export", "register"] {
        let s = step(&show, id);
        assert_eq!(s["status"], "succeeded", "{id}: {s}");
        assert_eq!(s["attempt"], 1);
        assert!(s["finished_at"].is_string());
    }
    let train = step(&show, "train");
    assert_eq!(train["plugin_name"], "ultralytics");
    assert!(
        train["plugin_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(train["progress"]["epoch"], 2);
    assert_eq!(train["progress"]["epochs"], 2);
    assert_eq!(train["outputs"]["epochs_completed"], 2);
    let best = train["outputs"]["best_weights"].as_str().unwrap();
    assert!(
        best.ends_with("projects/demo/model/training/first/weights/best.pt"),
        "{best}"
    );
    assert!(
        show["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["is_best"] == true),
        "a best checkpoint is recorded: {show}"
    );

    // Files on disk.
    let tdir = ws.root().join("projects/demo/model/training/first");
    assert!(tdir.join("weights/best.pt").is_file());
    assert!(tdir.join("results.csv").is_file());
    let config = std::fs::read_to_string(tdir.join("artifacts/config.yaml")).unwrap();
    assert!(config.contains("epochs: 2"), "{config}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tdir.join("artifacts/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["run_id"], run.as_str());
    assert_eq!(
        report["weights"],
        "projects/demo/model/training/first/weights/best.pt"
    );

    // The model registry.
    let models = ws.json(&["models", "list", "--json"]);
    let m = &models[0];
    assert_eq!(m["name"], "yolo-detector");
    assert_eq!(m["project"], "demo");
    assert_eq!(m["version"], 1);
    assert_eq!(m["task"], "detect");
    assert_eq!(m["format"], "pt");
    assert_eq!(m["input_size"], 64);
    assert_eq!(m["class_names"], serde_json::json!(["red_box", "blue_box"]));
    assert_eq!(m["is_published"], false);
    assert_eq!(m["training_run_id"], run.as_str());
    assert_eq!(m["dataset"], "demo-release.zip");
    assert_eq!(m["base_model"], "yolo11n.yaml");
    assert_eq!(
        m["config_path"],
        "projects/demo/model/training/first/artifacts/config.yaml"
    );

    // Logs: structured events and the trainer's raw output.
    let logs = ws.kiln(&["logs", &run, "--step", "train"]);
    let logs = text(&logs.stdout);
    assert!(logs.contains("launched"), "{logs}");
    assert!(logs.contains("Starting training for 2 epochs"), "{logs}");
    assert!(logs.contains("2/2"), "{logs}");

    // A second training reuses the extracted release and gets the next model version.
    let out = ws.run_demo("second", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show2 = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    assert_eq!(step(&show2, "extract")["outputs"]["extracted"], false);
    let models = ws.json(&["models", "list", "--project", "demo", "--json"]);
    assert_eq!(models.as_array().unwrap().len(), 2);
    assert!(models.as_array().unwrap().iter().any(|m| m["version"] == 2));

    let stats = ws.json(&["runs", "stats", "--json"]);
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["success_rate"], 1.0);
    let listed = ws.json(&["runs", "list", "--status", "succeeded", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
}

#[test]
fn a_trainer_crash_fails_the_step_with_the_trainers_own_error_line() {
    let ws = Workspace::new().with_env("FAKE_YOLO_FAIL_AT_EPOCH", "2");
    let out = ws.run_demo("crash", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let run = run_id(&out);
    let show = ws.json(&["runs", "show", &run, "--json"]);
    assert_eq!(show["run"]["status"], "failed");
    let train = step(&show, "train");
    assert_eq!(train["status"], "failed");
    let err = train["error_message"].as_str().unwrap();
    assert!(err.starts_with("RuntimeError: "), "{err}");
    assert!(err.contains("exit code 1"), "{err}");
    assert!(
        show["run"]["error_message"]
            .as_str()
            .unwrap()
            .contains("step `train` failed")
    );
    assert!(show["run"]["finished_at"].is_string() && show["run"]["duration_ms"].is_i64());
    for id in ["export", "register"] {
        assert_eq!(step(&show, id)["status"], "skipped", "{id}");
    }
    // The full log is kept.
    let log = std::fs::read_to_string(ws.root().join(format!(".kiln/runs/{run}/logs/train.log")))
        .unwrap();
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(
        ws.json(&["models", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_dataset_with_missing_images_fails_with_the_trainers_message() {
    let ws = Workspace::new();
    let zip_path = ws.root().join("projects/demo/releases/broken.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    z.start_file("data.yaml", opts).unwrap();
    use std::io::Write;
    z.write_all(b"train: nowhere/images\nval: nowhere/images\nnc: 1\nnames: ['thing']\n")
        .unwrap();
    z.finish().unwrap();
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let out = ws.kiln(&[
        "run",
        wf.to_str().unwrap(),
        "-p",
        "project=demo",
        "-p",
        "release=broken.zip",
        "-p",
        "training_name=broken",
        "-p",
        "overrides={epochs: 1, imgsz: 64}",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let err = step(&show, "train")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("images not found"), "{err}");
}

#[test]
fn missing_or_mistyped_params_are_rejected_before_any_run_is_recorded() {
    let ws = Workspace::new();
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let out = ws.kiln(&[
        "run",
        wf.to_str().unwrap(),
        "-p",
        "project=demo",
        "-p",
        "task=classify",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("release"), "{err}");
    assert!(err.contains("training_name"), "{err}");
    assert!(err.contains("classify"), "{err}");
    assert!(
        ws.json(&["runs", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn user_mode_rejects_a_developer_key_naming_it() {
    let ws = Workspace::new();
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let out = ws.kiln(&[
        "run",
        wf.to_str().unwrap(),
        "-p",
        "project=demo",
        "-p",
        "release=demo-release.zip",
        "-p",
        "training_name=usermode",
        "-p",
        "overrides={lr0: 0.1}",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let err = step(&show, "resolve")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("lr0") && err.contains("developer"), "{err}");
    assert_eq!(step(&show, "train")["status"], "skipped");
}

#[test]
fn ctrl_c_cancels_the_run_and_leaves_no_process_behind() {
    let ws = Workspace::new().with_env("FAKE_YOLO_EPOCH_SECONDS", "20");
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let child = ws
        .command(&[
            "run",
            wf.to_str().unwrap(),
            "-p",
            "project=demo",
            "-p",
            "release=demo-release.zip",
            "-p",
            "training_name=cancelme",
            "-p",
            "overrides={epochs: 3, imgsz: 64}",
            "--kill-grace-secs",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The supervisor's and yolo's command lines name the workspace.
    let marker = ws.root().display().to_string();
    let started = Instant::now();
    while processes_mentioning(&marker)
        .iter()
        .all(|(_, c)| !c.contains("yolo"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "yolo never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let left = processes_mentioning(&marker);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    assert_eq!(show["run"]["status"], "cancelled");
    assert_eq!(step(&show, "train")["status"], "cancelled");
    assert_eq!(step(&show, "register")["status"], "cancelled");
    assert!(show["run"]["finished_at"].is_string());
}

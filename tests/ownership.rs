//! Ownership of files on disk: a training name belongs to one run, shared datasets are not
//! swapped or deleted under other runs, and a purge deletes only what its run owns and never a
//! file a registered model references.

mod common;

use common::{Workspace, repo_root, run_id, text};

fn demo_args(training: &str) -> Vec<String> {
    vec![
        "run".into(),
        repo_root()
            .join("workflows/ultralytics-detect.yaml")
            .display()
            .to_string(),
        "-p".into(),
        "project=demo".into(),
        "-p".into(),
        "release=demo-release.zip".into(),
        "-p".into(),
        format!("training_name={training}"),
        "-p".into(),
        "overrides={epochs: 2, imgsz: 64, batch: 4, device: cpu}".into(),
        "--json".into(),
    ]
}

fn run(ws: &Workspace, training: &str) -> std::process::Output {
    let args = demo_args(training);
    ws.kiln(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn run_ids(ws: &Workspace) -> Vec<String> {
    ws.json(&["runs", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn succeeded(ws: &Workspace, training: &str) -> String {
    let out = run(ws, training);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    record["run"]["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_training_name_belongs_to_its_first_run() {
    let ws = Workspace::new();
    // The dataset's slug is the training's name, so a later workflow can name it from outputs.
    let first = succeeded(&ws, "demo-release");
    let weights = ws
        .root()
        .join("projects/demo/model/training/demo-release/weights/best.pt");
    let before = std::fs::read(&weights).unwrap();

    // A second run with the same name is refused before anything is recorded or written.
    let out = run(&ws, "demo-release");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("belongs to run {first}")) && stderr.contains("training_name"),
        "{stderr}"
    );
    assert_eq!(run_ids(&ws), vec![first.clone()]);
    assert_eq!(std::fs::read(&weights).unwrap(), before);

    // A name that comes from another step's outputs is claimed when its step starts: the
    // step fails, naming the owner, and writes nothing.
    let wf = ws.workflow(
        "from-outputs.yaml",
        r#"
name: from-outputs
steps:
  - id: extract
    uses: builtin/extract-release
    with: {project: demo, release: demo-release.zip}
  - id: export
    uses: builtin/export-best
    needs: [extract]
    with:
      project: demo
      training_name: ${{ steps.extract.outputs.slug }}
      best_weights: projects/demo/model/training/demo-release/weights/best.pt
"#,
    );
    let out = ws.kiln(&["run", &wf]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("belongs to run {first}")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&weights).unwrap(), before);

    // Resuming or retrying the owner is the owner: a retry of a finished run is refused for
    // its status, not for its training.
    let out = ws.kiln(&["runs", "retry", &first]);
    assert!(
        !text(&out.stderr).contains("belongs to run"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn purge_deletes_only_what_the_run_owns() {
    let ws = Workspace::new();
    let first = succeeded(&ws, "first");
    let second = succeeded(&ws, "second");
    let model_of_first = ws.json(&["models", "list", "--json"]);
    assert_eq!(model_of_first.as_array().unwrap().len(), 2);
    let root = ws.root();
    let training = |name: &str| root.join("projects/demo/model/training").join(name);
    let dataset = root.join("projects/demo/training_data/demo-release");

    // A registered model references the run's weights: the purge is refused, nothing goes.
    let out = ws.kiln(&["runs", "delete", &second, "--purge-outputs"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nothing was purged")
            && stderr.contains("model `yolo-detector` version 2")
            && stderr.contains("projects/demo/model/training/second/weights/best.pt"),
        "{stderr}"
    );
    assert!(training("second").join("weights/best.pt").is_file());
    assert!(root.join(".kiln/runs").join(&second).is_dir());
    assert_eq!(run_ids(&ws).len(), 2);

    // A third run whose weights no model references (it stops after training): its purge
    // deletes its own training folder and run folder, and keeps the dataset the others use.
    let third = train_only(&ws, "third");
    assert!(training("third").join("weights/best.pt").is_file());
    let out = ws.kiln(&["runs", "delete", &third, "--purge-outputs"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("deleted projects/demo/model/training/third")
            && stderr
                .contains("kept projects/demo/training_data/demo-release: also used by run(s)"),
        "{stderr}"
    );
    assert!(!training("third").exists());
    assert!(!root.join(".kiln/runs").join(&third).exists());
    assert!(training("first").join("weights/best.pt").is_file());
    assert!(training("second").join("weights/best.pt").is_file());
    assert!(dataset.join("data.yaml").is_file() || dataset.is_dir());

    // Deleting without purging frees the records, not the files: the folder stays, and no new
    // run takes it over.
    let out = ws.kiln(&["runs", "delete", &first]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(training("first").join("weights/best.pt").is_file());
    let out = run(&ws, "first");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("exists but no run owns it"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(run_ids(&ws), vec![second.clone()]);
}

#[test]
fn a_dataset_another_run_used_is_not_replaced() {
    let ws = Workspace::new();
    let first = succeeded(&ws, "first");
    let dataset = ws.root().join("projects/demo/training_data/demo-release");
    let marker = std::fs::read(dataset.join(".kiln-release.json")).unwrap();

    // Another archive under the same release name: extracting it would swap the dataset the
    // first run trained on.
    let release = ws.root().join("projects/demo/releases/demo-release.zip");
    let mut bytes = std::fs::read(&release).unwrap();
    bytes.extend_from_slice(b"trailing bytes change the archive's digest");
    std::fs::write(&release, bytes).unwrap();
    let out = run(&ws, "second");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("used by run(s) {first}")) && stderr.contains("slug"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dataset.join(".kiln-release.json")).unwrap(),
        marker
    );

    // Once no other run uses it, the dataset may be replaced.
    let out = ws.kiln(&["runs", "delete", &first]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let failed = run_ids(&ws);
    for id in &failed {
        assert!(ws.kiln(&["runs", "delete", id]).status.success());
    }
    let out = run(&ws, "third");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(
        std::fs::read(dataset.join(".kiln-release.json")).unwrap(),
        marker
    );
}

const REGISTER: &str = r#"
name: register
params:
  project: {type: string, default: demo}
  weights: {type: string, required: true}
  config_path: {type: string}
steps:
  - id: register
    uses: builtin/register-model
    with:
      name: stolen
      project: ${{ params.project }}
      weights: ${{ params.weights }}
      config_path: ${{ params.config_path }}
"#;

/// A run that trains `training` and registers nothing; returns its id.
fn train_only(ws: &Workspace, training: &str) -> String {
    let wf = ws.workflow(
        "train-only.yaml",
        &std::fs::read_to_string(repo_root().join("workflows/ultralytics-detect.yaml"))
            .unwrap()
            .split("\n  - id: register")
            .next()
            .unwrap()
            .replace("name: ultralytics-detect", "name: train-only"),
    );
    let out = ws.kiln(&[
        "run",
        &wf,
        "-p",
        "project=demo",
        "-p",
        "release=demo-release.zip",
        "-p",
        &format!("training_name={training}"),
        "-p",
        "overrides={epochs: 1, imgsz: 64, batch: 4, device: cpu}",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    run_id(&out)
}

fn register(ws: &Workspace, params: &[&str]) -> std::process::Output {
    let wf = ws.workflow("register.yaml", REGISTER);
    let mut args = vec!["run", wf.as_str()];
    for p in params {
        args.extend(["-p", p]);
    }
    ws.kiln(&args)
}

fn purge_refused(ws: &Workspace, run: &str, wanted: &str) {
    let out = ws.kiln(&["runs", "delete", run, "--purge-outputs"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nothing was purged") && stderr.contains(wanted),
        "{stderr}"
    );
}

#[test]
fn purge_refuses_however_a_model_references_its_files() {
    let ws = Workspace::new();
    let root = ws.root().to_owned();

    // A model of another project.
    let a = train_only(&ws, "a");
    let out = register(
        &ws,
        &[
            "project=other",
            "weights=projects/demo/model/training/a/weights/best.pt",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    purge_refused(&ws, &a, "of project `other`");
    assert!(
        root.join("projects/demo/model/training/a/weights/best.pt")
            .is_file()
    );

    // Through a symlink: the registry records where the file really is.
    let b = train_only(&ws, "b");
    std::fs::create_dir_all(root.join("projects/other")).unwrap();
    std::os::unix::fs::symlink(
        root.join("projects/demo/model/training/b/weights"),
        root.join("projects/other/link"),
    )
    .unwrap();
    let out = register(&ws, &["weights=projects/other/link/best.pt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let models = ws.json(&["models", "list", "--json"]);
    assert!(
        models
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["file_path"] == "projects/demo/model/training/b/weights/best.pt"),
        "{models}"
    );
    purge_refused(&ws, &b, "training/b/weights/best.pt");

    // Paths that climb (`..`) or are absolute are not references a model can make.
    for weights in [
        "projects/demo/model/../model/training/b/weights/best.pt".to_owned(),
        root.join("projects/demo/model/training/b/weights/best.pt")
            .display()
            .to_string(),
    ] {
        let out = register(&ws, &[&format!("weights={weights}")]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
        let err = common::step(&show, "register")["error_message"].to_string();
        assert!(
            err.contains("relative to the workspace, without `..`"),
            "{err}"
        );
    }
    let out = register(
        &ws,
        &[
            "weights=projects/demo/model/training/b/weights/best.pt",
            "config_path=projects/demo/../demo/x.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // A model file inside a dataset that only the purged run used.
    std::fs::copy(
        root.join("projects/demo/releases/demo-release.zip"),
        root.join("projects/demo/releases/solo.zip"),
    )
    .unwrap();
    let extract = ws.workflow(
        "extract.yaml",
        "name: extract\nsteps:\n  - {id: extract, uses: builtin/extract-release, with: {project: demo, release: solo.zip}}\n",
    );
    let out = ws.kiln(&["run", &extract]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let solo = run_id(&out);
    let out = register(&ws, &["weights=projects/demo/training_data/solo/data.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    purge_refused(&ws, &solo, "training_data/solo/data.yaml");
    assert!(
        root.join("projects/demo/training_data/solo/data.yaml")
            .is_file()
    );
}

//! `kiln validate`, `kiln schema` and validation errors through the real binary.
//! The exact texts of each error class are pinned by the data-driven cases in
//! tests/workflows/invalid (checked in kiln-workflow); here every case must make the binary exit 2
//! and point at the same file:line:column as the expected diagnostics.

mod common;

use common::*;

#[test]
fn every_invalid_workflow_exits_2_pointing_at_the_problem() {
    let ws = Workspace::new();
    let dir = repo_root().join("tests/workflows/invalid");
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        cases += 1;
        let expected = std::fs::read_to_string(path.with_extension("err")).unwrap();
        let out = ws.kiln(&["validate", path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        // The first expected diagnostic's `file:line:col: error:` prefix must be reported.
        let first = expected.lines().next().unwrap();
        let prefix = &first[..first.find(" error:").unwrap()];
        let name = path.file_name().unwrap().to_str().unwrap();
        let position = &prefix[prefix.find(name).unwrap()..];
        assert!(
            stderr.contains(position),
            "{name}: expected {position} in:\n{stderr}"
        );
        assert!(stderr.contains("error:"), "{stderr}");
    }
    assert!(cases >= 10, "only {cases} invalid cases found");
}

#[test]
fn errors_name_what_is_wrong_and_what_to_do() {
    let ws = Workspace::new();
    let wf = ws.workflow(
        "bad.yaml",
        "name: bad\nsteps:\n  - id: a\n    uses: ultralytix\n    action: train\n  - id: b\n    uses: ultralytics\n    action: trian\n  - id: c\n    uses: ultralytics\n",
    );
    let out = ws.kiln(&["validate", &wf]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:4:11: error: unknown plugin `ultralytix`"),
        "{err}"
    );
    assert!(
        err.contains("installed plugins: hostile, mmdetection, ultralytics"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:8:13: error: plugin `ultralytics` has no action `trian`"),
        "{err}"
    );
    assert!(
        err.contains("actions of `ultralytics`: resolve-config, train"),
        "{err}"
    );
    assert!(err.contains("names no `action`"), "{err}");
}

#[test]
fn the_shipped_workflow_is_valid() {
    let ws = Workspace::new();
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let out = ws.kiln(&["validate", wf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("is valid (5 steps)"));
}

#[test]
fn schema_is_a_json_schema_of_the_workflow_format() {
    let ws = Workspace::new();
    let schema = ws.json(&["schema"]);
    assert!(
        schema["$schema"].as_str().unwrap().contains("2020-12"),
        "{schema}"
    );
    let props = &schema["properties"];
    for key in ["name", "params", "steps"] {
        assert!(props.get(key).is_some(), "schema lacks {key}: {schema}");
    }
}

#[test]
fn odd_inputs_are_clear_errors_with_exit_2() {
    let ws = Workspace::new();
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let wf = wf.to_str().unwrap();
    let base = [
        "run",
        wf,
        "-p",
        "project=demo",
        "-p",
        "release=demo-release.zip",
    ];
    // NaN and infinity are not JSON: never silently a null or the default.
    for bad in ["overrides={a: .nan}", "overrides={a: [1, .inf]}"] {
        let mut args = base.to_vec();
        args.extend(["-p", "training_name=t", "-p", bad]);
        let out = ws.kiln(&args);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("NaN or infinity"),
            "{}",
            text(&out.stderr)
        );
    }
    // A file that is not a regular file; a workflow that starts with a byte order mark.
    let out = ws.kiln(&["validate", "/dev/null"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
    let source =
        std::fs::read_to_string(repo_root().join("workflows/ultralytics-detect.yaml")).unwrap();
    let bom = ws.workflow("bom.yaml", &format!("\u{feff}{source}"));
    let out = ws.kiln(&["validate", &bom]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Bad machine and config options are invalid input too.
    let out = ws.kiln(&["--gpus", "many", "validate", &bom]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    std::fs::write(
        ws.root().join("configs/plugins.yaml"),
        "defaults: {cpu_seconds_per_call: .inf}",
    )
    .unwrap();
    let out = ws.kiln(&["validate", &bom]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cpu_seconds_per_call"),
        "{}",
        text(&out.stderr)
    );
    let deep = format!("defaults: {}1{}", "[".repeat(100_000), "]".repeat(100_000));
    std::fs::write(ws.root().join("configs/plugins.yaml"), deep).unwrap();
    let out = ws.kiln(&["validate", &bom]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("levels deep"),
        "{}",
        text(&out.stderr)
    );
}

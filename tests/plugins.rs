//! Plugin loading: discovery, descriptions, grants, and the compiled-code cache.

mod common;

use common::*;

#[test]
fn plugins_are_listed_with_digest_actions_and_grants() {
    let ws = Workspace::new();
    let list = ws.json(&["plugins", "list", "--json"]);
    let ultra = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ultralytics")
        .expect("ultralytics plugin");
    assert!(ultra["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(ultra["programs"], serde_json::json!(["yolo"]));
    let actions: Vec<&str> = ultra["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["resolve-config", "train"]);
    assert_eq!(ultra["interface"], "0.2.0");
    assert_eq!(ultra["launches"], serde_json::json!(["yolo"]));
    let train = &ultra["actions"][1];
    let resume = train["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "resume")
        .unwrap();
    assert_eq!(resume["kind"], "boolean");
}

/// The `kiln:plugin@0.1.0` build of the test plugin, kept as released (built at the last commit
/// that served only 0.1).
fn hostile_0_1() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/plugins/hostile-0.1.0.wasm")
}

#[test]
fn a_0_1_component_runs_beside_0_2_components() {
    let ws = Workspace::new();
    std::fs::copy(hostile_0_1(), ws.root().join(".kiln/plugins/hostile.wasm")).unwrap();
    let list = ws.json(&["plugins", "list", "--json"]);
    let interfaces: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["interface"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        interfaces.contains(&("hostile".into(), "0.1.0".into()))
            && interfaces.contains(&("ultralytics".into(), "0.2.0".into())),
        "{interfaces:?}"
    );
    let wf = ws.workflow(
        "old.yaml",
        "name: old\nsteps:\n  - id: a\n    uses: hostile\n    action: ok\n    with: {project: demo}\n  - id: b\n    uses: hostile\n    action: ok\n    needs: [a]\n",
    );
    let out = ws.kiln(&["run", &wf]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = run_id(&out);
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(step(&show, "b")["outputs"]["result"], "ok", "{show}");
}

#[test]
fn a_component_of_an_unsupported_interface_is_refused_naming_the_versions() {
    let ws = Workspace::new();
    // The 0.1 component with every `kiln:plugin/…@0.1.0` import renamed to @0.9.0.
    let mut bytes = std::fs::read(hostile_0_1()).unwrap();
    let (from, to) = (b"@0.1.0".as_slice(), b"@0.9.0".as_slice());
    let mut i = 0;
    let mut renamed = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            renamed += 1;
        }
        i += 1;
    }
    assert!(renamed > 0);
    std::fs::write(ws.root().join(".kiln/plugins/hostile.wasm"), bytes).unwrap();
    let out = ws.kiln(&["plugins", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("hostile.wasm")
            && err.contains("kiln:plugin@0.9.0")
            && err.contains("kiln:plugin@0.1.0, kiln:plugin@0.2.0"),
        "{err}"
    );
}

#[test]
fn input_kinds_are_checked_before_the_run_and_once_rendered() {
    let ws = Workspace::new();
    // A literal of the wrong kind: a validation error at its line.
    let wf = ws.workflow(
        "literal.yaml",
        "name: literal\nsteps:\n  - id: a\n    uses: hostile\n    action: ok\n    with:\n      project: 5\n",
    );
    let out = ws.kiln(&["validate", &wf]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("literal.yaml:7:")
            && said
                .contains("input `project` of `hostile` action `ok` in step `a` must be a string"),
        "{said}"
    );
    // A required input set to null is as missing.
    let wf = ws.workflow(
        "null.yaml",
        "name: nulls\nsteps:\n  - id: r\n    uses: ultralytics\n    action: resolve-config\n    with: {task: null, data: d, project: p, training_name: t}\n",
    );
    let out = ws.kiln(&["validate", &wf]);
    assert_eq!(out.status.code(), Some(2));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("sets required input `task`"), "{said}");
    // A param of another declared type: a validation error too.
    let wf = ws.workflow(
        "param.yaml",
        "name: param\nparams:\n  n: {type: integer, default: 3}\nsteps:\n  - id: a\n    uses: hostile\n    action: ok\n    with:\n      project: ${{ params.n }}\n",
    );
    let out = ws.kiln(&["validate", &wf]);
    assert_eq!(out.status.code(), Some(2));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("param.yaml:9:") && said.contains("but param `n` is of type integer"),
        "{said}"
    );
    // A value known only once rendered (another step's output): the step fails before the
    // plugin runs.
    let wf = ws.workflow(
        "rendered.yaml",
        "name: rendered\nsteps:\n  - id: e\n    uses: hostile\n    action: ok\n  - id: a\n    uses: hostile\n    action: ok\n    needs: [e]\n    with:\n      project: ${{ steps.e.outputs }}\n",
    );
    let out = ws.kiln(&["validate", &wf]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = ws.kiln(&["run", &wf]);
    assert!(!out.status.success());
    let id = run_id(&out);
    let show = ws.json(&["runs", "show", &id, "--json"]);
    let error = step_error(&show, "a");
    assert!(
        error.contains("hostile.ok: input `project` must be a string, got {\"result\":\"ok\"}"),
        "{error}"
    );
}

#[test]
fn a_second_start_loads_compiled_plugins_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let ws = Workspace::new().with_env("KILN_CACHE_DIR", cache.path().to_str().unwrap());
    let listing = |dir: &std::path::Path| {
        let mut v: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert!(ws.kiln(&["plugins", "list"]).status.success());
    let first = listing(cache.path());
    let plugins = listing(&ws.root().join(".kiln/plugins")).len();
    assert_eq!(
        first.len(),
        plugins,
        "one compiled file per plugin: {first:?}"
    );
    assert!(first.iter().all(|(n, _)| n.ends_with(".cwasm")));
    assert!(ws.kiln(&["plugins", "list"]).status.success());
    assert_eq!(
        listing(cache.path()),
        first,
        "the second start must not recompile"
    );
}

#[test]
fn a_corrupt_plugin_file_is_reported_by_name() {
    let ws = Workspace::new();
    std::fs::write(ws.root().join(".kiln/plugins/broken.wasm"), b"not wasm").unwrap();
    let out = ws.kiln(&["plugins", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("broken.wasm") && err.contains("not a usable Kiln plugin component"),
        "{err}"
    );
}

/// Files that are not components are refused before they are read: a FIFO (whose open would
/// block), a device that never ends, a file over the size limit.
#[test]
fn fifos_devices_and_huge_files_are_refused_without_reading_them() {
    let ws = Workspace::new();
    let fifo = ws.root().join(".kiln/plugins/pipe.wasm");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // Listing skips what is not a regular file.
    let out = ws.kiln(&["plugins", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in [fifo.to_str().unwrap(), "/dev/zero"] {
        let out = ws.kiln(&["plugin", "inspect", file]);
        assert_eq!(out.status.code(), Some(2), "{file}");
        assert!(
            text(&out.stderr).contains("is not a file"),
            "{}",
            text(&out.stderr)
        );
    }
    std::fs::remove_file(&fifo).unwrap();
    let big = ws.root().join(".kiln/plugins/big.wasm");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(300 * 1024 * 1024)
        .unwrap();
    let out = ws.kiln(&["plugins", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("a plugin component is at most 268435456 bytes"),
        "{}",
        text(&out.stderr)
    );
    let wf = ws.root().join("pipe.yaml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&wf)
            .status()
            .unwrap()
            .success()
    );
    let out = ws.kiln(&["validate", wf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains("not a regular file")
            || text(&out.stderr).contains("not a regular file")
    );
}

/// A grant for a plugin that is not installed (a misspelt name grants nothing to the one meant)
/// is warned about.
#[test]
fn grants_for_plugins_that_are_not_installed_are_warned_about() {
    let ws = Workspace::new();
    let grants = ws.root().join("configs/plugins.yaml");
    let text_ = std::fs::read_to_string(&grants).unwrap();
    std::fs::write(
        &grants,
        format!("{text_}  ultralitycs: {{programs: [yolo]}}\n"),
    )
    .unwrap();
    let out = ws.kiln(&["plugins", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("grants plugin `ultralitycs`, which is not installed"),
        "{}",
        text(&out.stderr)
    );
}

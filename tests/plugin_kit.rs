//! The plugin kit: `kiln init` makes a workspace from the binary alone that trains the demo;
//! `kiln plugin new` scaffolds a crate that `kiln plugin build` builds and installs,
//! `kiln plugin inspect` describes, and a workflow runs, launching a real program.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use sha2::{Digest, Sha256};

/// `kiln ARGS` in `dir`, as a user would run it there (no workspace variables), with the
/// stand-in trainers on PATH and the tests' compiled-plugin cache.
fn kiln_in(dir: &Path, args: &[&str]) -> Output {
    let repo = repo_root();
    let path = format!(
        "{}:{}",
        repo.join("tests/fixtures/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env_remove("KILN_WORKSPACE")
        .env_remove("KILN_DATABASE_URL")
        .env_remove("KILN_PLUGINS_DIR")
        .env("PATH", path)
        .env("KILN_CACHE_DIR", repo.join("target/kiln-test-cache"))
        .env("FAKE_YOLO_EPOCH_SECONDS", "0.05")
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn sha256(path: &Path) -> String {
    hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn kiln_init_makes_a_workspace_that_trains_the_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let said = ok(&kiln_in(tmp.path(), &["init", "ws"]), "kiln init");
    assert!(
        said.contains("kiln run workflows/ultralytics-detect.yaml"),
        "{said}"
    );
    for file in [
        "configs/plugins.yaml",
        "configs/roles.yaml",
        "configs/ultralytics/detect/default.yaml",
        "configs/mmdetection/detect/tiny_retinanet_cpu.py",
        "workflows/ultralytics-detect.yaml",
        "workflows/mmdetection-detect.yaml",
        "projects/demo/releases/demo-release.zip",
        "projects/demo/releases/demo-coco-release.zip",
        ".gitignore",
    ] {
        assert!(ws.join(file).is_file(), "{file} missing");
    }
    // The bundled plugins are the components built from this repository.
    for (plugin, built) in [
        ("ultralytics", "kiln_plugin_ultralytics.wasm"),
        ("mmdetection", "kiln_plugin_mmdetection.wasm"),
    ] {
        assert_eq!(
            sha256(&ws.join(format!(".kiln/plugins/{plugin}.wasm"))),
            sha256(&plugin_wasm(built)),
            "{plugin}"
        );
    }
    // The demo, as `kiln init` says to run it (the stand-in yolo on PATH).
    let run = kiln_in(
        &ws,
        &[
            "run",
            "workflows/ultralytics-detect.yaml",
            "-p",
            "project=demo",
            "-p",
            "release=demo-release.zip",
            "-p",
            "training_name=first",
            "-p",
            "mode=developer",
            "-p",
            "overrides={epochs: 2, imgsz: 64, batch: 4, device: cpu, workers: 0}",
        ],
    );
    ok(&run, "the demo run");
    let models = ok(
        &kiln_in(&ws, &["models", "list", "--project", "demo"]),
        "models list",
    );
    assert!(
        models.contains("yolo-detector") && models.contains("weights/best.pt"),
        "{models}"
    );

    // Never over an existing workspace.
    let again = kiln_in(tmp.path(), &["init", "ws"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("is not empty"),
        "{}",
        text(&again.stderr)
    );

    // What an interrupted init left (its staging folder, part of it moved) is started over.
    let cut = tmp.path().join("cut");
    std::fs::create_dir_all(cut.join(".kiln-init/workflows")).unwrap();
    std::fs::create_dir_all(cut.join("configs")).unwrap();
    std::fs::write(cut.join("configs/plugins.yaml"), "half").unwrap();
    let redo = kiln_in(tmp.path(), &["init", "cut"]);
    ok(&redo, "kiln init after an interrupted one");
    assert!(text(&redo.stderr).contains("was interrupted; starting over"));
    assert!(!cut.join(".kiln-init").exists());
    assert_eq!(
        std::fs::read(cut.join("configs/plugins.yaml")).unwrap(),
        std::fs::read(repo_root().join("configs/plugins.yaml")).unwrap()
    );
}

/// Where scaffolded crates build: a target directory of their own (the tests' own build holds
/// the workspace's), kept between test runs.
fn kit_target() -> PathBuf {
    repo_root().join("target/plugin-kit")
}

/// `kiln plugin build KRATE`, run in the workspace `ws` (the crate builds in [`kit_target`]).
fn plugin_build(ws: &Path, krate: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["plugin", "build", krate.to_str().unwrap()])
        .current_dir(ws)
        .env_remove("KILN_WORKSPACE")
        .env_remove("KILN_PLUGINS_DIR")
        .env("CARGO_TARGET_DIR", kit_target())
        .output()
        .unwrap()
}

#[test]
fn a_new_plugin_is_scaffolded_built_inspected_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    ok(&kiln_in(tmp.path(), &["init", "ws"]), "kiln init");

    let new = kiln_in(tmp.path(), &["plugin", "new", "greeter", "--dir", "crates"]);
    ok(&new, "kiln plugin new");
    let krate = tmp.path().join("crates/greeter");
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "tests/component.rs",
        "README.md",
        "vendor/kiln-plugin-sdk/src/lib.rs",
        "vendor/kiln-plugin-test/src/lib.rs",
        "vendor/wit/0.2.0/plugin.wit",
    ] {
        assert!(krate.join(file).is_file(), "{file} missing");
    }
    let twice = kiln_in(tmp.path(), &["plugin", "new", "greeter", "--dir", "crates"]);
    assert_eq!(twice.status.code(), Some(2), "never over files");
    let bad = kiln_in(tmp.path(), &["plugin", "new", "Bad_Name"]);
    assert_eq!(bad.status.code(), Some(2));

    // Build and install, from the workspace.
    let build = plugin_build(&ws, &krate);
    let said = ok(&build, "kiln plugin build");
    assert!(said.contains("installed greeter 0.1.0"), "{said}");
    assert!(
        said.contains("programs: [echo]"),
        "it says what to grant: {said}"
    );
    let installed = ws.join(".kiln/plugins/greeter.wasm");
    assert!(installed.is_file());
    // Another file providing the plugin: the build refuses to install beside it.
    let other = ws.join(".kiln/plugins/zz-greeter-copy.wasm");
    std::fs::copy(&installed, &other).unwrap();
    let again = plugin_build(&ws, &krate);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("zz-greeter-copy.wasm already provides plugin `greeter`"),
        "{}",
        text(&again.stderr)
    );
    std::fs::remove_file(&other).unwrap();

    // Inspect: what the engine sees.
    let inspect = ok(
        &kiln_in(
            &ws,
            &["plugin", "inspect", ".kiln/plugins/greeter.wasm", "--json"],
        ),
        "kiln plugin inspect",
    );
    let info: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(info["name"], "greeter");
    assert_eq!(info["interface"], "0.2.0");
    assert_eq!(info["loads"], true);
    assert_eq!(info["launches"], serde_json::json!(["echo"]));
    assert_eq!(info["ungranted"], serde_json::json!(["echo"]));
    assert_eq!(info["digest"], format!("sha256:{}", sha256(&installed)));
    let greet = &info["actions"][0];
    assert_eq!(greet["name"], "greet");
    let times = greet["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "times")
        .unwrap();
    assert_eq!(times["kind"], "integer");

    // Granted and used in a workflow: it launches the real `echo`.
    let grants = ws.join("configs/plugins.yaml");
    let mut text_ = std::fs::read_to_string(&grants).unwrap();
    text_.push_str("  greeter:\n    programs: [echo]\n");
    std::fs::write(&grants, text_).unwrap();
    std::fs::write(
        ws.join("workflows/hello.yaml"),
        "name: hello\nparams:\n  who: {type: string, default: world}\nsteps:\n  - id: greet\n    uses: greeter\n    action: greet\n    with:\n      project: demo\n      training_name: hello-1\n      name: ${{ params.who }}\n      times: 2\n",
    )
    .unwrap();
    let run = kiln_in(
        &ws,
        &["run", "workflows/hello.yaml", "-p", "who=kiln", "--json"],
    );
    let record: serde_json::Value = serde_json::from_str(&ok(&run, "the hello run")).unwrap();
    assert_eq!(record["run"]["status"], "succeeded", "{record}");
    assert_eq!(record["steps"][0]["outputs"]["count"], 2, "{record}");
    assert_eq!(
        std::fs::read_to_string(ws.join("projects/demo/model/training/hello-1/greetings.txt"))
            .unwrap(),
        "hello, kiln (1)\nhello, kiln (2)\n"
    );
    // A literal of the wrong kind is refused before the run.
    std::fs::write(
        ws.join("workflows/bad.yaml"),
        "name: bad\nsteps:\n  - id: greet\n    uses: greeter\n    action: greet\n    with: {project: demo, training_name: b, name: x, times: many}\n",
    )
    .unwrap();
    let bad = kiln_in(&ws, &["validate", "workflows/bad.yaml"]);
    assert_eq!(bad.status.code(), Some(2));
    let said = format!("{}{}", text(&bad.stdout), text(&bad.stderr));
    assert!(
        said.contains("input `times`") && said.contains("must be an integer"),
        "{said}"
    );
}

/// The scaffold's own tests (unit tests, and its component under kiln-plugin-test) pass as
/// generated.
#[test]
fn a_new_plugins_own_tests_pass() {
    let tmp = tempfile::tempdir().unwrap();
    ok(
        &kiln_in(tmp.path(), &["plugin", "new", "greeter"]),
        "kiln plugin new",
    );
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--quiet"])
        .current_dir(tmp.path().join("greeter"))
        .env("CARGO_TARGET_DIR", kit_target())
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let said = ok(&out, "cargo test in the scaffold");
    assert!(said.contains("test result: ok. 2 passed"), "{said}");
}

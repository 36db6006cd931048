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
        err.contains("broken.wasm") && err.contains("not a valid kiln:plugin@0.1.0 component"),
        "{err}"
    );
}

//! Data-driven tests over `tests/workflows/` at the workspace root.
//!
//! `invalid/<case>.yaml` must fail with exactly the diagnostics in `<case>.err`
//! (regenerate with `UPDATE_EXPECT=1 cargo test -p kiln-workflow`); `valid/*.yaml` must
//! pass. The catalog describes a machine with one GPU.

use std::path::{Path, PathBuf};

use kiln_workflow::{ActionSpec, MemoryCatalog, Workflow};

fn catalog() -> MemoryCatalog {
    MemoryCatalog::new()
        .with_gpus(1)
        .with_builtin(
            "builtin/extract-release",
            ActionSpec::new(
                ["project", "release"],
                [],
                ["data_yaml", "class_names", "slug", "extracted"],
            )
            .not_memoizable(),
        )
        .with_plugin_action(
            "ultralytics",
            "resolve-config",
            ActionSpec::new(
                [],
                [
                    "task",
                    "mode",
                    "data",
                    "overrides",
                    "project",
                    "training_name",
                ],
                ["config", "resolved_yaml", "cli_preview"],
            ),
        )
        .with_plugin_action(
            "ultralytics",
            "train",
            ActionSpec::new(
                [],
                ["task", "config", "project", "training_name"],
                ["best_weights", "metrics", "save_dir"],
            ),
        )
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workflows")
}

fn cases(dir: &str) -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, path)
        })
        .collect();
    cases.sort();
    cases
}

/// Parses and validates; the diagnostics as text, or `None` when valid.
fn check(dir: &str, name: &str, path: &Path) -> Option<String> {
    let source = std::fs::read_to_string(path).unwrap();
    // A stable relative name for the expected output.
    let file = format!("tests/workflows/{dir}/{name}.yaml");
    let workflow = match Workflow::parse(&source, Path::new(&file)) {
        Ok(workflow) => workflow,
        Err(diagnostics) => return Some(diagnostics.to_string()),
    };
    if let Err(diagnostics) = workflow.validate(&catalog()) {
        return Some(diagnostics.to_string());
    }
    None
}

#[test]
fn invalid_workflows_report_expected_diagnostics() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1");
    let cases = cases("invalid");
    assert!(cases.len() >= 16, "expected the invalid cases to be there");
    let mut failures = Vec::new();
    for (name, path) in cases {
        let actual = check("invalid", &name, &path)
            .unwrap_or_else(|| "<no diagnostics: the workflow is valid>".to_owned());
        let expected_path = path.with_extension("err");
        if update {
            std::fs::write(&expected_path, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != actual.trim_end() {
            failures.push(format!(
                "--- {name}: expected\n{}\n--- {name}: actual\n{actual}",
                expected.trim_end()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(rerun with UPDATE_EXPECT=1 to accept)",
        failures.join("\n")
    );
}

#[test]
fn valid_workflows_pass() {
    let cases = cases("valid");
    assert!(!cases.is_empty());
    for (name, path) in cases {
        if let Some(diagnostics) = check("valid", &name, &path) {
            panic!("{name} should be valid:\n{diagnostics}");
        }
        let workflow = Workflow::load(&path).unwrap();
        let order = workflow.topological_order().unwrap();
        assert_eq!(order.len(), workflow.steps.len());
        for (i, step) in order.iter().enumerate() {
            for dep in workflow.dependencies(&step.id) {
                assert!(
                    order[..i].iter().any(|s| s.id == dep),
                    "{name}: `{}` ordered before its dependency `{dep}`",
                    step.id
                );
            }
        }
    }
}

//! Public API: loading, dependencies, order, schema, rendering end to end.

use std::collections::BTreeMap;
use std::path::Path;

use std::time::Duration;

use kiln_workflow::{
    ActionSpec, Catalog, Diagnostic, ExprContext, MemoryCatalog, Resources, RetryOn, RetryPolicy,
    Workflow, json_schema, render_inputs, resolve_params,
};
use serde_json::{Value, json};

const SOURCE: &str = r#"
name: demo
params:
  project: {type: string, required: true}
  epochs: {type: integer, default: 3}
  overrides: {type: object, default: {}}
steps:
  - id: train
    uses: p
    action: train
    needs: [b, a]
    timeout: 1h 30m
    with:
      config: "${{ steps.a.outputs.config }}"
      note: "epochs=${{ params.overrides.epochs || params.epochs }} on ${{ params.project }}"
  - id: a
    uses: p
    action: resolve
    needs: b
    with:
      data: ${{ steps.b.outputs.data }}
  - id: b
    uses: builtin/extract
  - id: c
    uses: builtin/extract
"#;

fn catalog() -> MemoryCatalog {
    MemoryCatalog::new()
        .with_builtin("builtin/extract", ActionSpec::new([], [], ["data"]))
        .with_plugin_action("p", "resolve", ActionSpec::new(["data"], [], ["config"]))
        .with_plugin_action(
            "p",
            "train",
            ActionSpec::new([], ["config", "note"], ["metrics"]),
        )
}

fn workflow() -> Workflow {
    Workflow::parse(SOURCE, Path::new("demo.yaml")).unwrap()
}

#[test]
fn dependencies_and_order() {
    let workflow = workflow();
    workflow.validate(&catalog()).unwrap();
    assert_eq!(workflow.dependencies("train"), vec!["b", "a"]);
    assert_eq!(workflow.dependencies("a"), vec!["b"]);
    assert!(workflow.dependencies("c").is_empty());
    assert!(workflow.dependencies("nope").is_empty());
    let order: Vec<&str> = workflow
        .topological_order()
        .unwrap()
        .iter()
        .map(|step| step.id.as_str())
        .collect();
    assert_eq!(order, vec!["b", "a", "train", "c"]);
    assert_eq!(
        workflow
            .step("train")
            .unwrap()
            .timeout
            .unwrap()
            .as_duration(),
        std::time::Duration::from_secs(5400)
    );
}

#[test]
fn expression_references_count_as_dependencies() {
    // `x` uses outputs of `y` without `needs`: an error for validate, but the order
    // still puts `y` first.
    let source = "name: d\nsteps:\n  - id: x\n    uses: p\n    with: {a: '${{ steps.y.outputs.data }}'}\n  - id: y\n    uses: builtin/extract\n";
    let workflow = Workflow::parse(source, "d.yaml").unwrap();
    assert_eq!(workflow.dependencies("x"), vec!["y"]);
    let order: Vec<&str> = workflow
        .topological_order()
        .unwrap()
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(order, vec!["y", "x"]);
}

#[test]
fn order_fails_on_cycles() {
    let source = "name: d\nsteps:\n  - id: x\n    uses: p\n    needs: y\n  - id: y\n    uses: p\n    needs: [x]\n";
    let workflow = Workflow::parse(source, "d.yaml").unwrap();
    let err = workflow.topological_order().unwrap_err();
    assert_eq!(
        err.to_string(),
        "d.yaml:5:12: error: dependency cycle: x -> y -> x\n  help: remove one of these `needs`"
    );
}

#[test]
fn end_to_end_render() {
    let workflow = workflow();
    let params = resolve_params(
        &workflow,
        BTreeMap::from([
            ("project".to_owned(), json!("demo")),
            ("overrides".to_owned(), json!({"epochs": 2})),
        ]),
    )
    .unwrap();
    let Value::Object(outputs) = json!({"config": {"lr0": 0.01}}) else {
        unreachable!()
    };
    let ctx = ExprContext::new(params).with_outputs("a", outputs);
    let inputs = render_inputs(workflow.step("train").unwrap(), &ctx).unwrap();
    assert_eq!(
        inputs,
        json!({"config": {"lr0": 0.01}, "note": "epochs=2 on demo"})
    );
    // Without the override, the default filter falls back to `epochs`.
    let params = resolve_params(
        &workflow,
        BTreeMap::from([("project".to_owned(), json!("demo"))]),
    )
    .unwrap();
    let mut ctx = ExprContext::new(params);
    let Value::Object(outputs) = json!({"config": "c"}) else {
        unreachable!()
    };
    ctx.set_outputs("a", outputs);
    let inputs = render_inputs(workflow.step("train").unwrap(), &ctx).unwrap();
    assert_eq!(inputs["note"], json!("epochs=3 on demo"));
    // Outputs of `a` missing: an error naming the step and input.
    let err = render_inputs(workflow.step("train").unwrap(), &ExprContext::default()).unwrap_err();
    assert_eq!(err.step, "train");
    assert_eq!(err.input, "config");
}

#[test]
fn serializes_the_definition() {
    let workflow = workflow();
    let json = serde_json::to_value(&workflow).unwrap();
    assert_eq!(json["steps"][0]["timeout"], json!("1h 30m"));
    assert_eq!(json["steps"][1]["needs"], json!(["b"]));
    assert_eq!(
        json["params"]["epochs"],
        json!({"type": "integer", "default": 3})
    );
    assert!(json["steps"][2].get("with").is_none());
    let back: Workflow = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    assert_eq!(back.steps, workflow.steps);
}

#[test]
fn schema_describes_the_format() {
    let schema = json_schema();
    assert_eq!(
        schema["$schema"],
        json!("https://json-schema.org/draft/2020-12/schema")
    );
    assert_eq!(schema["additionalProperties"], json!(false));
    assert_eq!(schema["required"], json!(["name", "steps"]));
    assert!(schema["properties"]["name"]["description"].is_string());
    assert!(schema["properties"]["name"]["pattern"].is_string());
    let text = schema.to_string();
    for needle in [
        "ParamSpec",
        "Step",
        "timeout",
        "needs",
        "\"enum\"",
        "30s",
        "RetryPolicy",
        "RetryOn",
        "infrastructure",
        "backoff",
        "Resources",
        "gpus",
        "cache",
    ] {
        assert!(text.contains(needle), "schema lacks {needle}: {text}");
    }
}

#[test]
fn load_reports_missing_files() {
    let err = Workflow::load("/nonexistent/kiln/x.yaml").unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/kiln/x.yaml:1:1: error: cannot read")
    );
}

#[test]
fn diagnostic_display() {
    let diagnostic = Diagnostic::new(
        "workflows/x.yaml",
        12,
        7,
        "step `train` needs unknown step `extrct`",
    )
    .with_help("known steps: extract, resolve");
    assert_eq!(
        diagnostic.to_string(),
        "workflows/x.yaml:12:7: error: step `train` needs unknown step `extrct`\n  help: known steps: extract, resolve"
    );
}

/// Bad input never panics: every prefix of a valid file, and some odd documents.
#[test]
fn never_panics() {
    let catalog = catalog();
    let mut inputs: Vec<String> = SOURCE
        .char_indices()
        .map(|(i, _)| SOURCE[..i].to_owned())
        .collect();
    inputs.extend(
        [
            "---\na: 1\n---\nb: 2\n",
            "&a [*a]",
            "name: x\nsteps:\n  - &s {id: a, uses: p, action: train}\n  - *s\n",
            "name: x\nsteps:\n  - id: a\n    uses: p\n    with: {1: 2, ? [x] : y}\n",
            "name: x\nsteps:\n  - id: a\n    uses: p\n    action: train\n    with: {config: '${{ a }}}} ${{ {\"k\": {\"v\": 1}} }} ${{ x -}} }}'}\n",
            "name: x\nsteps:\n  - id: a\n    uses: p\n    action: train\n    with: {config: !tag 1, note: .nan}\n",
            "\t",
            "name: [",
            "{{{{",
            "name: x\nsteps:\n  - id: a\n    uses: p\n    retry: {max: 99999999999, on: [[x]], backoff: [1]}\n",
            "name: x\nsteps:\n  - id: a\n    uses: p\n    retry: {max: 1, on: ~, backoff: ~}\n    resources: {gpus: ~}\n    cache: ~\n",
            "name: x\nsteps:\n  - id: a\n    uses: p\n    retry: {? [max] : 1}\n    resources: {gpus: 4294967296}\n",
        ]
        .map(str::to_owned),
    );
    for input in inputs {
        if let Ok(workflow) = Workflow::parse(&input, "x.yaml") {
            let _ = workflow.validate(&catalog);
            let _ = workflow.topological_order();
            for step in &workflow.steps {
                let _ = workflow.dependencies(&step.id);
                let _ = render_inputs(step, &ExprContext::default());
            }
            let _ = resolve_params(&workflow, BTreeMap::new());
        }
    }
}

const RETRY_SOURCE: &str = r#"
name: demo
steps:
  - id: b
    uses: builtin/extract
    retry: {max: 2}
    cache: true
  - id: a
    uses: p
    action: resolve
    needs: b
    retry:
      max: 3
      backoff: 1m 30s
      on: [failure, infrastructure]
    resources: {gpus: 2}
    with: {data: x}
  - id: c
    uses: builtin/extract
    retry: {max: 1, on: [failure], backoff: 0s}
    resources: {}
"#;

#[test]
fn retry_resources_and_cache() {
    let workflow = Workflow::parse(RETRY_SOURCE, "demo.yaml").unwrap();
    let [b, a, c] = &workflow.steps[..] else {
        panic!("three steps")
    };
    // Defaults: backoff 10s, infrastructure failures only; no GPUs; no cache.
    assert_eq!(
        b.retry,
        Some(RetryPolicy {
            max: 2,
            backoff: Duration::from_secs(10),
            on: vec![RetryOn::Infrastructure],
        })
    );
    assert_eq!(b.resources, Resources::default());
    assert!(b.cache);
    let retry = a.retry.as_ref().unwrap();
    assert_eq!(retry.backoff, Duration::from_secs(90));
    assert_eq!(retry.on, [RetryOn::Failure, RetryOn::Infrastructure]);
    // Separate budgets per kind.
    assert_eq!(retry.retries(RetryOn::Failure), 3);
    assert_eq!(retry.retries(RetryOn::Infrastructure), 3);
    assert_eq!(b.retry.as_ref().unwrap().retries(RetryOn::Failure), 0);
    assert_eq!(a.resources.gpus, 2);
    assert!(!a.cache);
    assert_eq!(c.retry.as_ref().unwrap().delay(3), Duration::ZERO);
    assert!(c.resources.is_default());
    assert!(workflow.step("c").unwrap().retry.as_ref().unwrap().on == [RetryOn::Failure]);

    // Serialized: defaults of the step left out, the policy written in full.
    let json = serde_json::to_value(&workflow).unwrap();
    assert_eq!(
        json["steps"][0],
        json!({
            "id": "b",
            "uses": "builtin/extract",
            "retry": {"max": 2, "backoff": "10s", "on": ["infrastructure"]},
            "cache": true,
        })
    );
    assert_eq!(json["steps"][1]["retry"]["backoff"], json!("1m 30s"));
    assert_eq!(json["steps"][1]["resources"], json!({"gpus": 2}));
    assert!(json["steps"][2].get("resources").is_none());
    let back: Workflow = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back.steps, workflow.steps);
    // Stored definitions without the new fields still deserialize.
    let old: Workflow = serde_json::from_value(json!({
        "name": "old",
        "steps": [{"id": "a", "uses": "builtin/extract", "timeout": "1h"}],
    }))
    .unwrap();
    assert_eq!(old.steps[0].retry, None);
    assert_eq!(old.steps[0].resources.gpus, 0);
    assert!(!old.steps[0].cache);
    let yaml = serde_norway::to_string(&workflow).unwrap();
    let again = Workflow::parse(&yaml, "again.yaml").unwrap();
    assert_eq!(again.steps, workflow.steps);
}

#[test]
fn gpus_are_checked_against_the_catalog() {
    let workflow = Workflow::parse(RETRY_SOURCE, "demo.yaml").unwrap();
    // Unknown GPU count: no check.
    assert_eq!(catalog().gpus(), None);
    workflow.validate(&catalog()).unwrap();
    workflow.validate(&catalog().with_gpus(2)).unwrap();
    let err = workflow.validate(&catalog().with_gpus(1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "demo.yaml:16:23: error: step `a` needs 2 GPUs but this machine has 1\n  \
         help: lower `resources.gpus`, or configure the machine's GPUs (kiln --gpus / KILN_GPUS)"
    );
    let one = RETRY_SOURCE.replace("gpus: 2", "gpus: 1");
    let workflow = Workflow::parse(&one, "demo.yaml").unwrap();
    let err = workflow.validate(&catalog().with_gpus(0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("step `a` needs 1 GPU but this machine has 0"),
        "{err}"
    );
}

/// A catalog that only implements `action` keeps compiling: `gpus` is provided.
#[test]
fn catalog_gpus_default_to_unknown() {
    struct Minimal;
    impl Catalog for Minimal {
        fn action(
            &self,
            uses: &str,
            action: Option<&str>,
        ) -> Result<ActionSpec, kiln_workflow::CatalogError> {
            catalog().action(uses, action)
        }
    }
    assert_eq!(Minimal.gpus(), None);
    let workflow = Workflow::parse(RETRY_SOURCE, "demo.yaml").unwrap();
    workflow.validate(&Minimal).unwrap();
}

#[test]
fn schema_describes_retry_resources_and_cache() {
    let schema = json_schema();
    let step = &schema["$defs"]["Step"]["properties"];
    for key in ["retry", "resources", "cache"] {
        assert!(step[key]["description"].is_string(), "{key}: {step}");
    }
    let retry = &schema["$defs"]["RetryPolicy"];
    assert_eq!(retry["required"], json!(["max"]));
    assert_eq!(retry["properties"]["max"]["maximum"], json!(100));
    assert_eq!(retry["properties"]["backoff"]["type"], json!("string"));
    assert_eq!(
        retry["properties"]["on"]["default"],
        json!(["infrastructure"])
    );
    assert!(schema["$defs"]["Resources"]["properties"]["gpus"]["description"].is_string());
}

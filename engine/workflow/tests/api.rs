//! Public API: loading, dependencies, order, schema, rendering end to end.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_workflow::{
    ActionSpec, Diagnostic, ExprContext, MemoryCatalog, Workflow, json_schema, render_inputs,
    resolve_params,
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
      note: "epochs=${{ params.overrides.epochs | default(params.epochs) }} on ${{ params.project }}"
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
    for needle in ["ParamSpec", "Step", "timeout", "needs", "\"enum\"", "30s"] {
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

//! Hostile input: whatever a workflow file or a param holds, parsing, validating and
//! rendering end with a result or a diagnostic, never a panic, an abort or unbounded work.
//!
//! Each case runs under a watchdog: a case that has not finished after a generous bound
//! fails the test instead of hanging it (this is a bound on runaway work, not a benchmark).

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use kiln_workflow::limits::{MAX_FILE_BYTES, MAX_STEPS, MAX_YAML_DEPTH};
use kiln_workflow::{
    ActionSpec, ExprContext, MemoryCatalog, Workflow, render_inputs, resolve_params,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(60);

/// Runs `f` on a thread with a large stack (so a stack overflow would be a real bug, not
/// the test's small thread) and fails if it does not finish within [`BOUND`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(BOUND) {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {BOUND:?}"),
    }
}

fn catalog() -> MemoryCatalog {
    MemoryCatalog::new().with_plugin_action(
        "p",
        "run",
        ActionSpec::new([], ["a", "b", "c"], ["x", "y"]),
    )
}

/// Parses, validates, orders and renders whatever parses; returns the diagnostics text.
fn exercise(source: String) -> String {
    match Workflow::parse(&source, "hostile.yaml") {
        Err(diagnostics) => diagnostics.to_string(),
        Ok(workflow) => {
            let _ = workflow.validate(&catalog());
            let _ = workflow.topological_order();
            let params = resolve_params(&workflow, BTreeMap::new()).unwrap_or_default();
            let mut ctx = ExprContext::new(params);
            for step in &workflow.steps {
                let _ = workflow.dependencies(&step.id);
                let _ = render_inputs(step, &ctx);
                let Value::Object(outputs) = json!({"x": [1, "two", {"three": 3}], "y": null})
                else {
                    unreachable!()
                };
                ctx.set_outputs(step.id.clone(), outputs);
            }
            String::new()
        }
    }
}

fn expect_error(what: &str, source: String, wanted: &'static str) {
    let diagnostics = bounded(what, move || exercise(source));
    assert!(
        diagnostics.contains(wanted),
        "{what}: expected `{wanted}` in:\n{diagnostics}"
    );
}

fn header() -> String {
    "name: h\nsteps:\n  - id: s\n    uses: p\n    action: run\n    with:\n".to_owned()
}

#[test]
fn deep_flow_nesting_is_refused() {
    for depth in [MAX_YAML_DEPTH + 1, 255, 256, 10_000, 1_000_000] {
        let source = format!("{}      a: {}", header(), "[".repeat(depth));
        expect_error("deep flow", source, "levels deep");
    }
    let source = format!(
        "{}      a: {}1{}\n",
        header(),
        "{k: ".repeat(MAX_YAML_DEPTH),
        "}".repeat(MAX_YAML_DEPTH)
    );
    expect_error("deep flow mappings", source, "levels deep");
}

#[test]
fn deep_block_nesting_is_refused() {
    let mut source = header();
    for i in 0..2_000 {
        source.push_str(&" ".repeat(6 + 2 * i));
        source.push_str("k:\n");
    }
    expect_error("deep block", source, "levels deep");
    let mut source = header();
    source.push_str("      a:\n");
    for i in 0..1_000 {
        source.push_str(&" ".repeat(8 + 2 * i));
        source.push_str("- \n");
    }
    expect_error("deep block lists", source, "levels deep");
}

#[test]
fn alias_bombs_are_refused() {
    let mut source = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        source.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    source.push_str(&header());
    source.push_str("      a: *a11\n");
    let diagnostics = bounded("billion laughs", move || exercise(source));
    assert!(diagnostics.contains("error"), "{diagnostics}");
}

#[test]
fn too_many_steps_and_too_large_files_are_refused() {
    let mut source = "name: many\nsteps:\n".to_owned();
    for i in 0..=MAX_STEPS {
        source.push_str(&format!("  - {{id: s{i}, uses: p, action: run}}\n"));
    }
    expect_error("too many steps", source, "at most 10000 are allowed");
    let source = format!("{}      a: '{}'\n", header(), "x".repeat(MAX_FILE_BYTES));
    expect_error("too large", source, "bytes; at most");
}

#[test]
fn long_chains_validate_in_linear_work() {
    // 10,000 steps, each needing the previous one and reading the first one's outputs:
    // the ancestor check must not build a set of ancestors per step.
    let mut source = "name: chain\nsteps:\n  - {id: s0, uses: p, action: run}\n".to_owned();
    for i in 1..MAX_STEPS {
        source.push_str(&format!(
            "  - {{id: s{i}, uses: p, action: run, needs: [s{}], with: {{a: '${{{{ steps.s0.outputs.x }}}}'}}}}\n",
            i - 1
        ));
    }
    let result = bounded("chain", move || {
        let workflow = Workflow::parse(&source, "chain.yaml").map_err(|d| d.to_string())?;
        workflow.validate(&catalog()).map_err(|d| d.to_string())?;
        Ok::<usize, String>(
            workflow
                .topological_order()
                .map_err(|d| d.to_string())?
                .len(),
        )
    });
    assert_eq!(result, Ok(MAX_STEPS));
}

#[test]
fn huge_values_in_params_are_bounded_when_rendered() {
    let source = format!(
        "name: r\nparams:\n  big: {{type: string}}\nsteps:\n  - id: s\n    uses: p\n    action: run\n    with:\n      a: \"{}\"\n",
        "${{ toJSON(params.big) }}".repeat(200)
    );
    let workflow = Workflow::parse(&source, "r.yaml").unwrap();
    let params = resolve_params(
        &workflow,
        BTreeMap::from([("big".to_owned(), json!("y".repeat(1 << 20)))]),
    )
    .unwrap();
    let step = workflow.steps[0].clone();
    let err = bounded("big param", move || {
        render_inputs(&step, &ExprContext::new(params)).unwrap_err()
    });
    assert_eq!(err.step, "s");
    assert_eq!(err.input, "a");
    assert!(
        err.message.contains("units of work") || err.message.contains("longer than"),
        "{err}"
    );
}

/// YAML-ish text: fragments of YAML syntax, names and expressions in any order.
fn yamlish() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        Just("- ".to_owned()),
        Just(": ".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just(", ".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("? ".to_owned()),
        Just("!tag ".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("\\u007b%".to_owned()),
        Just("${{ ".to_owned()),
        Just(" }}".to_owned()),
        Just(
            "name: x\nsteps:\n  - id: s\n    uses: p\n    action: run\n    with:\n      a: "
                .to_owned()
        ),
        Just("needs: [s]".to_owned()),
        Just("params: {q: {type: string, default: v}}\n".to_owned()),
        "[a-z_]{1,6}".prop_map(|s| s),
        "[0-9.eE+-]{1,5}".prop_map(|s| s),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(fragment, 0..200).prop_map(|parts| parts.concat())
}

/// Expression-ish text: tokens of the language and of other template languages.
fn expressionish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("params".to_owned()),
        Just("steps".to_owned()),
        Just("steps.s.outputs".to_owned()),
        Just(".q".to_owned()),
        Just(".x".to_owned()),
        Just("[0]".to_owned()),
        Just("['x']".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(" || ".to_owned()),
        Just(" && ".to_owned()),
        Just(" == ".to_owned()),
        Just(" < ".to_owned()),
        Just("!".to_owned()),
        Just("'s'".to_owned()),
        Just("\"}}\"".to_owned()),
        Just("1".to_owned()),
        Just("-2.5e3".to_owned()),
        Just("null".to_owned()),
        Just("format('{0}{1}'".to_owned()),
        Just("join(".to_owned()),
        Just("toJSON(".to_owned()),
        Just("fromJSON(".to_owned()),
        Just("contains(".to_owned()),
        Just("{%".to_owned()),
        Just("%}".to_owned()),
        Just("|".to_owned()),
        Just("*".to_owned()),
        Just("}}".to_owned()),
        Just("${{".to_owned()),
    ];
    prop::collection::vec(token, 0..80).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_yaml_never_panics(source in yamlish()) {
        bounded("random yaml", move || exercise(source));
    }

    #[test]
    fn random_expressions_never_panic(expr in expressionish(), text in "[ -~]{0,20}") {
        let source = format!(
            "name: e\nparams:\n  q: {{type: object, default: {{x: [1, 2]}}}}\nsteps:\n  - id: s\n    uses: p\n    action: run\n  - id: t\n    uses: p\n    action: run\n    needs: [s]\n    with:\n      a: {}\n      b: {}\n",
            serde_json::to_string(&format!("${{{{ {expr} }}}}")).unwrap(),
            serde_json::to_string(&format!("{text}${{{{ {expr} }}}}{text}")).unwrap(),
        );
        bounded("random expression", move || exercise(source));
    }
}

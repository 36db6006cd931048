//! Semantic checks: step references, dependency cycles, expressions, the catalog.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;

use crate::catalog::{ActionSpec, Catalog, CatalogErrorKind};
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::expr::{expression_strings, references};
use crate::model::{Step, Workflow};
use crate::position::{Path, Pos};

const EXPRESSION_HELP: &str = "expressions can use `params.<name>` and `steps.<id>.outputs.<name>`";

fn step_path(index: usize) -> Path {
    Path::root().key("steps").index(index)
}

/// `a, b, c`, or `none`.
fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Elementary cycles, one per strongly connected component (self loops included), each
/// as the list of nodes starting from the lowest index, following `edges`.
fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut graph = DiGraph::<usize, ()>::new();
    let nodes: Vec<_> = (0..edges.len()).map(|i| graph.add_node(i)).collect();
    for (from, targets) in edges.iter().enumerate() {
        for &to in targets {
            graph.add_edge(nodes[from], nodes[to], ());
        }
    }
    let mut cycles = Vec::new();
    for component in tarjan_scc(&graph) {
        let members: BTreeSet<usize> = component.iter().map(|n| graph[*n]).collect();
        let Some(&start) = members.first() else {
            continue;
        };
        if members.len() == 1 && !edges[start].contains(&start) {
            continue;
        }
        // Shortest path from `start` back to itself inside the component.
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(node) = queue.pop_front() {
            for &next in &edges[node] {
                if next == start {
                    last = Some(node);
                    break 'search;
                }
                if members.contains(&next) && !parent.contains_key(&next) {
                    parent.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        let Some(mut node) = last else { continue };
        let mut cycle = vec![node];
        while node != start {
            node = parent[&node];
            cycle.push(node);
        }
        cycle.reverse();
        cycles.push(cycle);
    }
    cycles.sort();
    cycles
}

struct Validator<'w> {
    workflow: &'w Workflow,
    diagnostics: Diagnostics,
    /// Step id → index of its first definition.
    ids: HashMap<&'w str, usize>,
}

impl<'w> Validator<'w> {
    fn new(workflow: &'w Workflow) -> Self {
        let mut ids = HashMap::new();
        for (i, step) in workflow.steps.iter().enumerate() {
            ids.entry(step.id.as_str()).or_insert(i);
        }
        Self {
            workflow,
            diagnostics: Diagnostics::new(),
            ids,
        }
    }

    fn at(&mut self, pos: Pos, message: String, help: Option<String>) {
        let mut diagnostic = Diagnostic::new(&self.workflow.file, pos.line, pos.column, message);
        diagnostic.help = help;
        self.diagnostics.push(diagnostic);
    }

    fn at_value(&mut self, path: &Path, message: String, help: Option<String>) {
        let pos = self.workflow.positions.value(path);
        self.at(pos, message, help);
    }

    fn at_key(&mut self, path: &Path, message: String, help: Option<String>) {
        let pos = self.workflow.positions.key(path);
        self.at(pos, message, help);
    }

    fn other_steps(&self, except: &str) -> String {
        let mut seen = BTreeSet::new();
        list(
            self.workflow
                .steps
                .iter()
                .map(|step| step.id.as_str())
                .filter(|id| *id != except && seen.insert(*id)),
        )
    }

    /// Duplicate ids and `needs`; returns the `needs` edges (step index → index).
    fn needs(&mut self) -> Vec<Vec<usize>> {
        let steps = &self.workflow.steps;
        let mut edges = vec![Vec::new(); steps.len()];
        for (i, step) in steps.iter().enumerate() {
            let mut seen = HashSet::new();
            let first = self.ids[step.id.as_str()];
            if first != i {
                let line = self
                    .workflow
                    .positions
                    .value(&step_path(first).key("id"))
                    .line;
                self.at_value(
                    &step_path(i).key("id"),
                    format!(
                        "duplicate step id `{}` (first defined on line {line})",
                        step.id
                    ),
                    Some("give each step a unique id".to_owned()),
                );
            }
            for (j, need) in step.needs.iter().enumerate() {
                let path = step_path(i).key("needs").index(j);
                match self.ids.get(need.as_str()) {
                    Some(&target) => {
                        if seen.insert(target) {
                            edges[i].push(target);
                        }
                    }
                    None => {
                        let help = format!("known steps: {}", self.other_steps(&step.id));
                        self.at_value(
                            &path,
                            format!("step `{}` needs unknown step `{need}`", step.id),
                            Some(help),
                        );
                    }
                }
            }
        }
        edges
    }

    fn cycles(&mut self, edges: &[Vec<usize>]) {
        let steps = &self.workflow.steps;
        for cycle in find_cycles(edges) {
            let names: Vec<&str> = cycle
                .iter()
                .chain(cycle.first())
                .map(|&i| steps[i].id.as_str())
                .collect();
            let start = cycle[0];
            let next = steps[*cycle.get(1).unwrap_or(&start)].id.as_str();
            let j = steps[start]
                .needs
                .iter()
                .position(|need| need == next)
                .unwrap_or(0);
            let message = if cycle.len() == 1 {
                format!("step `{}` needs itself", names[0])
            } else {
                format!("dependency cycle: {}", names.join(" -> "))
            };
            self.at_value(
                &step_path(start).key("needs").index(j),
                message,
                Some("remove one of these `needs`".to_owned()),
            );
        }
    }

    fn catalog(&mut self, catalog: &dyn Catalog) -> Vec<Option<ActionSpec>> {
        let mut specs = Vec::new();
        for (i, step) in self.workflow.steps.iter().enumerate() {
            let path = step_path(i);
            match catalog.action(&step.uses, step.action.as_deref()) {
                Ok(spec) => {
                    self.inputs(i, step, &spec);
                    if step.cache && !spec.memoizable {
                        self.at_value(
                            &path.key("cache"),
                            format!(
                                "step `{}`: `{}` cannot be cached (`cache: true`): it records \
                                 what it does, and reusing its outputs would skip that",
                                step.id, step.uses
                            ),
                            Some(format!(
                                "remove `cache: true`; `{}` already does no work twice",
                                step.uses
                            )),
                        );
                    }
                    specs.push(Some(spec));
                }
                Err(err) => {
                    let at = match err.kind {
                        CatalogErrorKind::UnknownAction | CatalogErrorKind::UnexpectedAction
                            if step.action.is_some() =>
                        {
                            path.key("action")
                        }
                        _ => path.key("uses"),
                    };
                    self.at_value(&at, err.message, err.help);
                    specs.push(None);
                }
            }
        }
        specs
    }

    /// `resources.gpus` against the machine's GPUs, when the catalog knows them.
    fn resources(&mut self, catalog: &dyn Catalog) {
        let Some(available) = catalog.gpus() else {
            return;
        };
        for (i, step) in self.workflow.steps.iter().enumerate() {
            let needed = step.resources.gpus;
            if needed > available {
                let unit = if needed == 1 { "GPU" } else { "GPUs" };
                self.at_value(
                    &step_path(i).key("resources").key("gpus"),
                    format!(
                        "step `{}` needs {needed} {unit} but this machine has {available}",
                        step.id
                    ),
                    Some(
                        "lower `resources.gpus`, or configure the machine's GPUs \
                         (kiln --gpus / KILN_GPUS)"
                            .to_owned(),
                    ),
                );
            }
        }
    }

    /// `runs_on` of all steps together: one engine executes the whole run, so two steps
    /// asking for different values of one label could never run.
    fn labels(&mut self) {
        let mut first: std::collections::BTreeMap<&str, (&str, &str)> = Default::default();
        for (i, step) in self.workflow.steps.iter().enumerate() {
            for (label, value) in &step.runs_on {
                match first.get(label.as_str()) {
                    Some((other, theirs)) if theirs != value => {
                        let message = format!(
                            "step `{}` asks for label {label}={value} but step `{other}` for \
                             {label}={theirs}: one engine executes the whole run",
                            step.id
                        );
                        self.at_value(
                            &step_path(i).key("runs_on").key(label),
                            message,
                            Some(
                                "ask for one value, or split the steps into two workflows"
                                    .to_owned(),
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        first.insert(label, (&step.id, value));
                    }
                }
            }
        }
    }

    /// The param (and its declared type) that `value` is exactly, as in `${{ params.p }}`.
    fn param_of<'v>(&self, value: &'v serde_json::Value) -> Option<(&'v str, crate::ParamType)> {
        let inner = value
            .as_str()?
            .trim()
            .strip_prefix("${{")?
            .strip_suffix("}}")?
            .trim();
        let name = inner.strip_prefix("params.")?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let spec = self.workflow.params.get(name)?;
        Some((name, spec.ty))
    }

    fn inputs(&mut self, i: usize, step: &Step, spec: &ActionSpec) {
        let path = step_path(i);
        let action = match &step.action {
            Some(action) => format!("`{}` action `{action}`", step.uses),
            None => format!("`{}`", step.uses),
        };
        let names = || list(spec.inputs.iter().map(|input| input.name.as_str()));
        for key in step.with.keys() {
            if !spec.inputs.iter().any(|input| &input.name == key) {
                self.at_key(
                    &path.key("with").key(key),
                    format!("unknown input `{key}` for {action} in step `{}`", step.id),
                    Some(format!("inputs: {}", names())),
                );
            }
        }
        for input in &spec.inputs {
            // A value that is exactly `${{ params.p }}` has the param's declared type.
            if let Some(value) = step.with.get(&input.name)
                && let Some((param, ty)) = self.param_of(value)
                && !kind_takes(input.kind, ty)
            {
                self.at_value(
                    &path.key("with").key(&input.name),
                    format!(
                        "input `{}` of {action} in step `{}` must be {}, but param `{param}` is \
                         of type {}",
                        input.name,
                        step.id,
                        input.kind.described(),
                        param_type_name(ty)
                    ),
                    Some(format!(
                        "declare `{param}` with a type that fits, or pass another value"
                    )),
                );
                continue;
            }
            // Another expression is checked once rendered, by the engine; a literal now.
            if let Some(value) = step.with.get(&input.name)
                && !contains_expression(value)
                && !input.kind.accepts(value)
            {
                self.at_value(
                    &path.key("with").key(&input.name),
                    format!(
                        "input `{}` of {action} in step `{}` must be {}",
                        input.name,
                        step.id,
                        input.kind.described()
                    ),
                    Some(format!(
                        "write {} for `{}`",
                        input.kind.described(),
                        input.name
                    )),
                );
            }
        }
        for input in spec.inputs.iter().filter(|input| input.required) {
            // `null` is no value: a required input set to it is as missing.
            if step
                .with
                .get(&input.name)
                .is_some_and(serde_json::Value::is_null)
            {
                self.at_value(
                    &path.key("with").key(&input.name),
                    format!(
                        "step `{}` sets required input `{}` for {action} to null",
                        step.id, input.name
                    ),
                    Some(format!("give `{}` a value", input.name)),
                );
                continue;
            }
            if !step.with.contains_key(&input.name) {
                let at = if step.with.is_empty() {
                    path.key("id")
                } else {
                    path.key("with")
                };
                let pos = if step.with.is_empty() {
                    self.workflow.positions.value(&at)
                } else {
                    self.workflow.positions.key(&at)
                };
                self.at(
                    pos,
                    format!(
                        "step `{}` is missing required input `{}` for {action}",
                        step.id, input.name
                    ),
                    Some(format!("add `{}: <value>` under `with`", input.name)),
                );
            }
        }
    }

    /// Answers "is `target` reachable from `from` through `needs`?" for each query, in time
    /// linear in the graph per 64 distinct targets (one bit per target, propagated in
    /// topological order). Steps on a cycle (already reported) count as reaching everything.
    fn reachable(edges: &[Vec<usize>], queries: &[(usize, usize)]) -> Vec<bool> {
        let n = edges.len();
        // Kahn's algorithm over `needs` (dependencies first).
        let mut waiting: Vec<usize> = edges.iter().map(Vec::len).collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, deps) in edges.iter().enumerate() {
            for &dep in deps {
                dependents[dep].push(i);
            }
        }
        let mut order: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut next = 0;
        while next < order.len() {
            let i = order[next];
            next += 1;
            for &dependent in &dependents[i] {
                waiting[dependent] -= 1;
                if waiting[dependent] == 0 {
                    order.push(dependent);
                }
            }
        }
        let mut on_cycle = vec![true; n];
        for &i in &order {
            on_cycle[i] = false;
        }
        let direct: HashSet<(usize, usize)> = edges
            .iter()
            .enumerate()
            .flat_map(|(i, deps)| deps.iter().map(move |&dep| (i, dep)))
            .collect();
        let mut answers: Vec<bool> = queries
            .iter()
            .map(|&(from, target)| {
                on_cycle[from] || on_cycle[target] || direct.contains(&(from, target))
            })
            .collect();
        let mut targets: Vec<usize> = queries
            .iter()
            .zip(&answers)
            .filter(|(_, answered)| !**answered)
            .map(|(&(_, target), _)| target)
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let mut bit = vec![0u64; n];
        let mut reach = vec![0u64; n];
        for batch in targets.chunks(64) {
            bit.iter_mut().for_each(|b| *b = 0);
            for (k, &target) in batch.iter().enumerate() {
                bit[target] = 1 << k;
            }
            // reach[i]: the batch's targets that `i` reaches through its needs.
            for &i in &order {
                reach[i] = edges[i]
                    .iter()
                    .fold(0, |acc, &dep| acc | reach[dep] | bit[dep]);
            }
            for (answer, &(from, target)) in answers.iter_mut().zip(queries) {
                if let Ok(k) = batch.binary_search(&target) {
                    *answer |= reach[from] & (1 << k) != 0;
                }
            }
        }
        answers
    }

    fn expressions(&mut self, edges: &[Vec<usize>], specs: &[Option<ActionSpec>]) {
        let workflow = self.workflow;
        // Every reference, checked once reachability of the referenced steps is known.
        let mut found: Vec<(usize, Path, Vec<String>)> = Vec::new();
        for (i, step) in workflow.steps.iter().enumerate() {
            let with_path = step_path(i).key("with");
            let mut strings = Vec::new();
            for (key, value) in &step.with {
                expression_strings(value, &Path::root().key(key), &mut strings);
            }
            for (input, text) in strings {
                let mut path = with_path.clone();
                path.0.extend(input.0.iter().cloned());
                match references(text) {
                    Err(err) => self.at_value(
                        &path,
                        format!(
                            "invalid expression in input `{input}` of step `{}`: {err}",
                            step.id
                        ),
                        None,
                    ),
                    Ok(refs) => {
                        found.extend(refs.into_iter().map(|r| (i, path.clone(), r)));
                    }
                }
            }
        }
        let queries: Vec<(usize, usize)> = found
            .iter()
            .filter_map(|(i, _, r)| match r.as_slice() {
                [root, id, ..] if root == "steps" => {
                    self.ids.get(id.as_str()).map(|&target| (*i, target))
                }
                _ => None,
            })
            .collect();
        let mut reachable = Self::reachable(edges, &queries).into_iter();
        for (i, path, reference) in found {
            let is_step_ref = matches!(reference.as_slice(), [root, id, ..]
                if root == "steps" && self.ids.contains_key(id.as_str()));
            let depends = !is_step_ref || reachable.next().unwrap_or(true);
            self.reference(i, &workflow.steps[i], &path, &reference, depends, specs);
        }
    }

    fn reference(
        &mut self,
        i: usize,
        step: &Step,
        path: &Path,
        reference: &[String],
        depends: bool,
        specs: &[Option<ActionSpec>],
    ) {
        let workflow = self.workflow;
        let segs: Vec<&str> = reference.iter().map(String::as_str).collect();
        match segs.as_slice() {
            ["params"] => {}
            ["params", name, ..] => {
                if !workflow.params.contains_key(*name) {
                    let help = if workflow.params.is_empty() {
                        format!("declare it under `params:` (e.g. `{name}: {{type: string}}`)")
                    } else {
                        format!(
                            "declared params: {}",
                            list(workflow.params.keys().map(String::as_str))
                        )
                    };
                    self.at_value(
                        path,
                        format!("unknown param `{name}` in expression of step `{}`", step.id),
                        Some(help),
                    );
                }
            }
            ["steps"] => self.at_value(
                path,
                format!("step `{}` uses `steps` without naming a step", step.id),
                Some("write `steps.<id>.outputs.<name>`".to_owned()),
            ),
            ["steps", id, rest @ ..] => {
                let Some(&target) = self.ids.get(*id) else {
                    let help = format!("known steps: {}", self.other_steps(&step.id));
                    self.at_value(
                        path,
                        format!("unknown step `{id}` in expression of step `{}`", step.id),
                        Some(help),
                    );
                    return;
                };
                if target == i {
                    self.at_value(
                        path,
                        format!("step `{}` uses its own outputs", step.id),
                        Some("a step can only use outputs of the steps it needs".to_owned()),
                    );
                    return;
                }
                if !depends {
                    self.at_value(
                        path,
                        format!(
                            "step `{}` uses outputs of step `{id}` but does not depend on it",
                            step.id
                        ),
                        Some(format!("add `{id}` to needs")),
                    );
                }
                match rest {
                    ["outputs"] => {}
                    ["outputs", output, ..] => {
                        if let Some(Some(spec)) = specs.get(target)
                            && !spec.outputs.iter().any(|name| name == output)
                        {
                            let target_step = &workflow.steps[target];
                            let action = match &target_step.action {
                                Some(action) => format!("`{}` action `{action}`", target_step.uses),
                                None => format!("`{}`", target_step.uses),
                            };
                            self.at_value(
                                path,
                                format!(
                                    "step `{id}` has no output `{output}` (in expression of step `{}`)",
                                    step.id
                                ),
                                Some(format!(
                                    "outputs of {action}: {}",
                                    list(spec.outputs.iter().map(String::as_str))
                                )),
                            );
                        }
                    }
                    _ => self.at_value(
                        path,
                        format!(
                            "step `{}` uses `steps.{id}` without `.outputs.<name>`",
                            step.id
                        ),
                        Some(format!("write `steps.{id}.outputs.<name>`")),
                    ),
                }
            }
            [root, ..] => self.at_value(
                path,
                format!(
                    "unknown variable `{root}` in expression of step `{}`",
                    step.id
                ),
                Some(EXPRESSION_HELP.to_owned()),
            ),
            [] => {}
        }
    }
}

impl Workflow {
    /// Checks everything that needs more than the file itself: step references and
    /// cycles, expressions, `uses` / `action` / `with` against `catalog`, and
    /// `resources.gpus` against [`Catalog::gpus`] when it is known. Reports every
    /// problem found.
    pub fn validate(&self, catalog: &dyn Catalog) -> Result<(), Diagnostics> {
        let mut validator = Validator::new(self);
        let edges = validator.needs();
        validator.cycles(&edges);
        let specs = validator.catalog(catalog);
        validator.resources(catalog);
        validator.labels();
        validator.expressions(&edges, &specs);
        validator.diagnostics.into_result(())
    }

    /// The steps `step_id` depends on: its `needs`, then the steps whose outputs its
    /// expressions use, without duplicates. Unknown ids are left out.
    pub fn dependencies(&self, step_id: &str) -> Vec<&str> {
        let Some(step) = self.step(step_id) else {
            return Vec::new();
        };
        let mut out: Vec<&str> = Vec::new();
        let referenced = crate::expr::referenced_steps(step);
        for id in step.needs.iter().chain(referenced.iter()) {
            if let Some(known) = self.step(id)
                && known.id != step.id
                && !out.contains(&known.id.as_str())
            {
                out.push(known.id.as_str());
            }
        }
        out
    }

    /// The steps in an order where each comes after all its [`dependencies`]; among
    /// steps that are ready at the same time, file order. Fails on duplicate ids,
    /// unknown `needs` and cycles.
    ///
    /// [`dependencies`]: Workflow::dependencies
    pub fn topological_order(&self) -> Result<Vec<&Step>, Diagnostics> {
        let mut validator = Validator::new(self);
        validator.needs();
        if !validator.diagnostics.is_empty() {
            return validator.diagnostics.into_result(Vec::new());
        }
        let edges: Vec<Vec<usize>> = self
            .steps
            .iter()
            .map(|step| {
                self.dependencies(&step.id)
                    .into_iter()
                    .filter_map(|id| validator.ids.get(id).copied())
                    .collect()
            })
            .collect();
        validator.cycles(&edges);
        if !validator.diagnostics.is_empty() {
            return validator.diagnostics.into_result(Vec::new());
        }
        let mut waiting: Vec<usize> = edges.iter().map(Vec::len).collect();
        let mut dependents = vec![Vec::new(); edges.len()];
        for (i, deps) in edges.iter().enumerate() {
            for &dep in deps {
                dependents[dep].push(i);
            }
        }
        let mut ready: BTreeSet<usize> = (0..edges.len()).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(edges.len());
        while let Some(i) = ready.pop_first() {
            order.push(&self.steps[i]);
            for &dependent in &dependents[i] {
                waiting[dependent] -= 1;
                if waiting[dependent] == 0 {
                    ready.insert(dependent);
                }
            }
        }
        Ok(order)
    }
}

/// Whether a value of param type `ty` is of input kind `kind`.
fn kind_takes(kind: crate::InputKind, ty: crate::ParamType) -> bool {
    use crate::{InputKind as K, ParamType as P};
    matches!(
        (kind, ty),
        (K::Any, _)
            | (K::String | K::Path, P::String)
            | (K::Integer, P::Integer)
            | (K::Number, P::Integer | P::Number)
            | (K::Boolean, P::Boolean)
            | (K::List, P::Array)
            | (K::Object, P::Object)
    )
}

fn param_type_name(ty: crate::ParamType) -> &'static str {
    match ty {
        crate::ParamType::String => "string",
        crate::ParamType::Integer => "integer",
        crate::ParamType::Number => "number",
        crate::ParamType::Boolean => "boolean",
        crate::ParamType::Object => "object",
        crate::ParamType::Array => "array",
    }
}

/// Whether `value` holds a `${{ }}` anywhere (its type is then known only once rendered).
fn contains_expression(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => crate::expr::has_expression(s),
        serde_json::Value::Array(items) => items.iter().any(contains_expression),
        serde_json::Value::Object(map) => map.values().any(contains_expression),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cycles_in_order() {
        // 0 -> 1 -> 2 -> 0, 3 -> 3, 4 -> 0
        let edges = vec![vec![1], vec![2], vec![0], vec![3], vec![0]];
        assert_eq!(find_cycles(&edges), vec![vec![0, 1, 2], vec![3]]);
        assert!(find_cycles(&[vec![1], vec![]]).is_empty());
    }
}

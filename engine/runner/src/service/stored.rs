//! Runs' stored workflow definitions, parsed once per distinct definition. Most runs share the
//! text of their workflow file, and every `GET /runs/{id}` lists each step's dependencies from
//! it: parsing it there each time took ~7% of a busy server's CPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hashlink::LruCache;
use kiln_store::RunRecord;
use kiln_workflow::{Diagnostics, Workflow};

/// Distinct definitions kept parsed.
const KEPT: usize = 64;

/// A run's workflow as stored with it, parsed, and each step's dependencies.
#[derive(Debug)]
pub struct StoredDefinition {
    /// The name the definition was parsed under (its file, or `run <id>`): part of its messages.
    file: Option<String>,
    pub workflow: Arc<Workflow>,
    /// Each step's `needs` and the steps whose outputs it uses ([`Workflow::dependencies`]).
    pub dependencies: HashMap<String, Vec<String>>,
}

/// Parsed definitions by their text, the most recently used kept. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StoredDefinitions(Arc<Mutex<LruCache<String, Arc<StoredDefinition>>>>);

impl StoredDefinitions {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(LruCache::new(KEPT))))
    }

    fn cache(&self) -> MutexGuard<'_, LruCache<String, Arc<StoredDefinition>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The definition stored with `run`, parsed (once for every run stored with the same text
    /// from the same file; a run without a file is parsed under its own id, for its messages).
    pub fn of(&self, run: &RunRecord) -> Result<Arc<StoredDefinition>, Diagnostics> {
        if let Some(hit) = self.cache().get(run.workflow_yaml.as_str())
            && run.workflow_file.is_some()
            && hit.file == run.workflow_file
        {
            return Ok(hit.clone());
        }
        let workflow = crate::stored_workflow(run)?;
        let dependencies = workflow
            .steps
            .iter()
            .map(|step| {
                let needs = workflow.dependencies(&step.id);
                (
                    step.id.clone(),
                    needs.into_iter().map(str::to_owned).collect(),
                )
            })
            .collect();
        let parsed = Arc::new(StoredDefinition {
            file: run.workflow_file.clone(),
            workflow: Arc::new(workflow),
            dependencies,
        });
        // A run without a file never shares its parse: kept, it would only push others out.
        if run.workflow_file.is_some() {
            self.cache()
                .insert(run.workflow_yaml.clone(), parsed.clone());
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, yaml: &str, file: Option<&str>) -> RunRecord {
        RunRecord {
            id: id.to_owned(),
            workflow_name: "chain".to_owned(),
            workflow_file: file.map(str::to_owned),
            workflow_yaml: yaml.to_owned(),
            status: kiln_store::RunStatus::Running,
            params: serde_json::json!({}),
            error_message: None,
            metrics: None,
            created_by: "test".to_owned(),
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            engine: None,
        }
    }

    const CHAIN: &str = "name: chain\nsteps:\n  - {id: a, uses: hostile, action: ok}\n  - {id: b, uses: hostile, action: ok, needs: [a]}\n  - id: c\n    uses: hostile\n    action: ok\n    with: {x: \"${{ steps.b.outputs.result }}\"}\n";

    #[test]
    fn a_definition_is_parsed_once_per_text_and_file() {
        let defs = StoredDefinitions::new();
        let one = defs.of(&run("r1", CHAIN, Some("w.yaml"))).unwrap();
        let two = defs.of(&run("r2", CHAIN, Some("w.yaml"))).unwrap();
        assert!(Arc::ptr_eq(&one, &two), "the same text was parsed again");
        assert_eq!(one.dependencies["a"], Vec::<String>::new());
        assert_eq!(one.dependencies["b"], ["a"]);
        assert_eq!(
            one.dependencies["c"],
            ["b"],
            "outputs used make a dependency"
        );
        let other_file = defs.of(&run("r3", CHAIN, Some("v.yaml"))).unwrap();
        assert!(!Arc::ptr_eq(&one, &other_file));
        let edited = defs
            .of(&run(
                "r4",
                &CHAIN.replace("needs: [a]", "needs: []"),
                Some("w.yaml"),
            ))
            .unwrap();
        assert_eq!(edited.dependencies["b"], Vec::<String>::new());
        assert!(defs.of(&run("r5", "name: [", Some("w.yaml"))).is_err());
        // Without a file, each run's definition is parsed under its own id.
        let a = defs.of(&run("r6", CHAIN, None)).unwrap();
        let b = defs.of(&run("r7", CHAIN, None)).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
    }
}

//! The workflows a server can start by name: the `*.yaml` / `*.yml` files of one directory,
//! parsed once and kept current.
//!
//! A file watcher (notify) marks the catalog stale when anything in the directory changes; the
//! next lookup reloads it. Where no watcher can be started (inotify limits, odd file systems),
//! every lookup compares the files' sizes and modification times with what was loaded instead.
//! Files that do not parse are listed with their diagnostics, never started.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kiln_workflow::Workflow;

/// One workflow file of the catalog.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub path: PathBuf,
    /// The file's text, as a run records it.
    pub yaml: Arc<str>,
    /// The parsed workflow, or why it does not parse.
    pub workflow: Result<Arc<Workflow>, String>,
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

#[derive(Default)]
struct Loaded {
    entries: Arc<Vec<CatalogEntry>>,
    fingerprint: Fingerprint,
    loaded: bool,
}

/// The workflows directory, loaded on first use.
pub struct WorkflowCatalog {
    dir: PathBuf,
    loaded: Mutex<Loaded>,
    stale: Arc<AtomicBool>,
    /// Keeps the watcher alive; `None` when none could be started (or not yet).
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    watching: AtomicBool,
}

impl std::fmt::Debug for WorkflowCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowCatalog")
            .field("dir", &self.dir)
            .finish()
    }
}

fn is_workflow_file(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "yaml" || x == "yml")
}

/// The workflow files of `dir` with their sizes and modification times, sorted.
fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    let mut files: Fingerprint = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_workflow_file(p))
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            meta.is_file()
                .then(|| (p, meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    Ok(files)
}

impl WorkflowCatalog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            loaded: Mutex::new(Loaded::default()),
            stale: Arc::new(AtomicBool::new(true)),
            watcher: Mutex::new(None),
            watching: AtomicBool::new(false),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn watch(&self) {
        use notify::Watcher;
        let mut slot = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        let stale = self.stale.clone();
        let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            stale.store(true, Ordering::SeqCst);
        });
        if let Ok(mut watcher) = watcher
            && watcher
                .watch(&self.dir, notify::RecursiveMode::NonRecursive)
                .is_ok()
        {
            *slot = Some(watcher);
            self.watching.store(true, Ordering::SeqCst);
        }
    }

    /// Every workflow file, current: reloaded when the directory changed since the last call.
    pub fn entries(&self) -> std::io::Result<Arc<Vec<CatalogEntry>>> {
        self.watch();
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let watching = self.watching.load(Ordering::SeqCst);
        // Clear the flag before reading, so a change made while loading marks it again.
        let signaled = self.stale.swap(false, Ordering::SeqCst);
        // With a watcher, only its signal (or the first call) costs a look at the directory.
        if watching && loaded.loaded && !signaled {
            return Ok(loaded.entries.clone());
        }
        let now = fingerprint(&self.dir)?;
        if !watching && loaded.loaded && now == loaded.fingerprint {
            return Ok(loaded.entries.clone());
        }
        let previous = loaded.entries.clone();
        let entries: Vec<CatalogEntry> = now
            .iter()
            .map(|(path, size, modified)| {
                // Without a watcher's word, a file whose size and time did not change is not
                // parsed again (a watcher's signal reloads everything: times can be coarse).
                let unchanged = !signaled
                    && loaded
                        .fingerprint
                        .iter()
                        .any(|(p, s, m)| p == path && s == size && m == modified);
                match previous.iter().find(|e| unchanged && &e.path == path) {
                    Some(entry) => entry.clone(),
                    None => load(path),
                }
            })
            .collect();
        loaded.entries = Arc::new(entries);
        loaded.fingerprint = now;
        loaded.loaded = true;
        Ok(loaded.entries.clone())
    }

    /// The workflow named `name`, with its text.
    pub fn get(&self, name: &str) -> std::io::Result<Option<(Arc<Workflow>, Arc<str>)>> {
        Ok(self.entries()?.iter().find_map(|e| match &e.workflow {
            Ok(wf) if wf.name == name => Some((wf.clone(), e.yaml.clone())),
            _ => None,
        }))
    }

    /// Names of the workflows that parse, sorted.
    pub fn names(&self) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .entries()?
            .iter()
            .filter_map(|e| e.workflow.as_ref().ok().map(|w| w.name.clone()))
            .collect();
        names.sort();
        Ok(names)
    }
}

fn load(path: &Path) -> CatalogEntry {
    let yaml = std::fs::read_to_string(path).unwrap_or_default();
    let workflow = Workflow::parse(&yaml, path)
        .map(Arc::new)
        .map_err(|d| d.to_string());
    CatalogEntry {
        path: path.to_owned(),
        yaml: yaml.into(),
        workflow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, name: &str) {
        std::fs::write(
            dir.join(file),
            format!("name: {name}\nsteps:\n  - {{id: a, uses: builtin/extract-release}}\n"),
        )
        .unwrap();
    }

    #[test]
    fn the_catalog_follows_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "one.yaml", "one");
        std::fs::write(dir.path().join("broken.yaml"), "name: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a workflow").unwrap();
        let catalog = WorkflowCatalog::new(dir.path());
        assert_eq!(catalog.names().unwrap(), vec!["one"]);
        assert_eq!(catalog.entries().unwrap().len(), 2);
        assert!(catalog.get("one").unwrap().is_some());
        // Added, changed and removed files are seen on the next lookup (the watcher, or the
        // fingerprint when no watcher runs).
        write(dir.path(), "two.yml", "two");
        std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while catalog.names().unwrap() != vec!["one", "two"] {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                catalog.names()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(catalog.entries().unwrap().len(), 2);
        write(dir.path(), "two.yml", "renamed");
        while catalog.get("renamed").unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(catalog.get("two").unwrap().is_none());
    }
}

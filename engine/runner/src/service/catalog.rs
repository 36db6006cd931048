//! The workflows a server can start by name: the `*.yaml` / `*.yml` files of one directory,
//! parsed once and kept current.
//!
//! A file watcher (notify) marks the catalog stale when anything in the directory changes; the
//! next lookup reloads it. Where no watcher can be started (inotify limits, odd file systems),
//! every lookup compares the files' sizes and modification times with what was loaded instead.
//! A file that does not parse or does not validate (a checker the run service installs: the
//! installed plugins) is listed with its diagnostics and logged; the last valid version of that
//! file, if one was loaded, stays in use until the file is fixed or removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kiln_workflow::{Diagnostics, Workflow};

/// One workflow file of the catalog.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub path: PathBuf,
    /// The text of the version in use, as a run records it.
    pub yaml: Arc<str>,
    /// The version new runs use: the file as it is when it is valid, else the last valid
    /// version of it loaded (`None` when there never was one).
    pub workflow: Option<Arc<Workflow>>,
    /// Why the file as it is now is not used: its diagnostics.
    pub problem: Option<String>,
}

/// Validates a parsed workflow against what the engine has (plugins, GPUs).
pub type Checker = Arc<dyn Fn(&Workflow) -> Result<(), Diagnostics> + Send + Sync>;

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
    checker: Option<Checker>,
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
            checker: None,
        }
    }

    /// The same catalog, validating every file with `checker` as it loads.
    #[must_use]
    pub fn with_checker(mut self, checker: Checker) -> Self {
        self.checker = Some(checker);
        self
    }

    /// Stop relying on the watcher (its directory went away): lookups compare the files instead,
    /// and the next one tries to watch again.
    fn unwatch(&self) {
        self.watching.store(false, Ordering::SeqCst);
        *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Parse and check every file again on the next lookup (the plugins changed).
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Watches the directory unless a watcher already does; true when it started one now.
    fn watch(&self) -> bool {
        use notify::Watcher;
        let mut slot = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return false;
        }
        let stale = self.stale.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_err() || event.is_ok_and(|e| super::reload::is_change(&e)) {
                stale.store(true, Ordering::SeqCst);
            }
        });
        if let Ok(mut watcher) = watcher
            && watcher
                .watch(&self.dir, notify::RecursiveMode::NonRecursive)
                .is_ok()
        {
            *slot = Some(watcher);
            self.watching.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Every workflow file, current: reloaded when the directory changed since the last call.
    pub fn entries(&self) -> std::io::Result<Arc<Vec<CatalogEntry>>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        // Clear the flag before reading, so a change made while loading marks it again.
        let mut signaled = self.stale.swap(false, Ordering::SeqCst);
        if signaled {
            // Watch afresh: the directory may have been replaced (a watcher follows the old one).
            self.unwatch();
        }
        // A new watcher missed what happened before it: look at the directory now.
        signaled |= self.watch();
        let watching = self.watching.load(Ordering::SeqCst);
        // With a watcher, only its signal (or the first call) costs a look at the directory.
        if watching && loaded.loaded && !signaled {
            return Ok(loaded.entries.clone());
        }
        let now = match fingerprint(&self.dir) {
            Ok(now) => now,
            // The directory is gone: no workflows, until it is back (its watcher died with it,
            // so look at it on every lookup meanwhile).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                self.unwatch();
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if !watching && loaded.loaded && now == loaded.fingerprint {
            return Ok(loaded.entries.clone());
        }
        let previous = loaded.entries.clone();
        let mut being_written = false;
        let mut entries: Vec<CatalogEntry> = Vec::with_capacity(now.len());
        for (path, size, modified) in &now {
            // Without a watcher's word, a file whose size and time did not change is not
            // parsed again (a watcher's signal reloads everything: times can be coarse).
            let unchanged = !signaled
                && loaded
                    .fingerprint
                    .iter()
                    .any(|(p, s, m)| p == path && s == size && m == modified);
            let before = previous.iter().find(|e| &e.path == path);
            if let Some(entry) = before.filter(|_| unchanged) {
                entries.push(entry.clone());
                continue;
            }
            // Once loaded, a file changed in the last moments may still be being written: its
            // previous version (if any) stays until it has been quiet for a while. (The first
            // load takes the files as they are.)
            let recent = loaded.loaded
                && modified
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .is_some_and(|age| age < super::reload::QUIET);
            if recent {
                being_written = true;
                if let Some(entry) = before {
                    entries.push(entry.clone());
                }
                continue;
            }
            entries.push(self.load(path, before));
        }
        settle_duplicates(&mut entries, &previous);
        if being_written {
            // Look again at the next lookup.
            self.stale.store(true, Ordering::SeqCst);
        }
        loaded.entries = Arc::new(entries);
        loaded.fingerprint = now;
        loaded.loaded = true;
        Ok(loaded.entries.clone())
    }

    /// The workflow named `name`, with its text.
    pub fn get(&self, name: &str) -> std::io::Result<Option<(Arc<Workflow>, Arc<str>)>> {
        Ok(self.entries()?.iter().find_map(|e| match &e.workflow {
            Some(wf) if wf.name == name => Some((wf.clone(), e.yaml.clone())),
            _ => None,
        }))
    }

    /// Names of the workflows that parse, sorted.
    pub fn names(&self) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .entries()?
            .iter()
            .filter_map(|e| e.workflow.as_ref().map(|w| w.name.clone()))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Two files naming the same workflow: the one that had the name before keeps it (else the
/// first by file name); the other is listed with a problem and not startable. A new file can
/// never take over a workflow silently.
fn settle_duplicates(entries: &mut [CatalogEntry], previous: &[CatalogEntry]) {
    let mut owner: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let established = |e: &CatalogEntry, name: &str| {
        previous
            .iter()
            .any(|p| p.path == e.path && p.workflow.as_ref().is_some_and(|w| w.name == name))
    };
    for i in 0..entries.len() {
        let Some(name) = entries[i].workflow.as_ref().map(|w| w.name.clone()) else {
            continue;
        };
        match owner.get(&name).copied() {
            None => {
                owner.insert(name, i);
            }
            Some(first) => {
                let (keep, drop) =
                    if established(&entries[i], &name) && !established(&entries[first], &name) {
                        (i, first)
                    } else {
                        (first, i)
                    };
                owner.insert(name.clone(), keep);
                let by = entries[keep].path.display().to_string();
                let loser = &mut entries[drop];
                loser.workflow = None;
                loser.yaml = Arc::from("");
                loser.problem = Some(format!(
                    "{}: workflow `{name}` is already defined by {by}; give one of them another \
                     `name:`",
                    loser.path.display()
                ));
            }
        }
    }
}

impl WorkflowCatalog {
    /// `path` as it is now; when it is not valid, `before` (its previous entry) stays in use.
    fn load(&self, path: &Path, before: Option<&CatalogEntry>) -> CatalogEntry {
        let checked = Workflow::load_with_source(path)
            .map_err(|d| d.to_string())
            .and_then(|(workflow, yaml)| {
                if let Some(check) = &self.checker {
                    check(&workflow).map_err(|d| d.to_string())?;
                }
                Ok((yaml, workflow))
            });
        match checked {
            Ok((yaml, workflow)) => {
                let changed = before.is_none_or(|b| *b.yaml != *yaml);
                if changed && self.watching.load(Ordering::SeqCst) {
                    tracing::info!(target: "app.reload", "workflow `{}` loaded from {}", workflow.name, path.display());
                }
                CatalogEntry {
                    path: path.to_owned(),
                    yaml: yaml.into(),
                    workflow: Some(Arc::new(workflow)),
                    problem: None,
                }
            }
            Err(problem) => {
                // The last valid version stays only while it is still valid (the plugins it
                // uses may be gone).
                let kept = before
                    .and_then(|b| b.workflow.clone().map(|w| (w, b.yaml.clone())))
                    .filter(|(wf, _)| self.checker.as_ref().is_none_or(|check| check(wf).is_ok()));
                let still = match &kept {
                    Some((wf, _)) => format!("its last valid version (`{}`) stays in use", wf.name),
                    None => "it is not offered".to_owned(),
                };
                tracing::warn!(target: "app.reload", "workflow file {} is invalid; {still}:\n{problem}", path.display());
                let (workflow, yaml) = match kept {
                    Some((wf, yaml)) => (Some(wf), yaml),
                    None => (None, Arc::from("")),
                };
                CatalogEntry {
                    path: path.to_owned(),
                    yaml,
                    workflow,
                    problem: Some(problem),
                }
            }
        }
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

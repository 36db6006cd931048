//! Hot reload, for an engine that keeps running (`kiln serve`): the workflows directory, the
//! plugins directory and `configs/` are watched (notify), and also looked at every [`POLL`]
//! (what a watcher misses: a folder replaced by another, a file behind a symbolic link, as in a
//! Kubernetes ConfigMap); a burst of changes is debounced (applied once the files have been quiet
//! for [`QUIET`], or after [`MAX_WAIT`] of continuous writing), then:
//!
//! - plugins: the directory is loaded again ([`kiln_plugin_host::PluginRegistry::reload`]): a new or changed
//!   component is used by the runs that start from then on, a removed one is no longer offered,
//!   one that does not load is logged and listed with its error while its previous version stays.
//!   Runs already executing keep the exact components they started with (their runner is pinned).
//! - grants: `configs/plugins.yaml` is read again; when it is invalid, the grants loaded before
//!   stay and the error is listed with the plugins' problems.
//! - workflows: the catalog parses and validates the changed files against the plugins now
//!   installed (see `catalog.rs`: an invalid file keeps its last valid version in use).
//! - other files of `configs/` the caller names ([`OnChange`]; the server's `roles.yaml`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_plugin_host::{Grants, PluginProblem};

use super::RunService;
use crate::{Error, Result};

/// Changes are applied once no file changed for this long.
pub const QUIET: Duration = Duration::from_millis(250);
/// ... or after this long of continuous changes.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// `configs/plugins.yaml` (no file: no grants), checked for size and depth before it is
/// parsed.
pub fn read_grants(path: &Path) -> Result<Grants> {
    let text = match kiln_workflow::limits::read_text(path, kiln_workflow::limits::MAX_FILE_BYTES) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Grants::default()),
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    kiln_workflow::limits::check_yaml(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Grants::parse(&text, path).map_err(|e| Error::Config(e.to_string()))
}

/// Another file of `configs/` to follow, and what to do when it changed (e.g. the server's
/// `roles.yaml`).
pub type OnChange = (PathBuf, Box<dyn Fn() + Send + Sync>);

/// Whether a watcher's event says files changed. Opening or reading a file is not a change:
/// reacting to those, a reload (which opens every file) would trigger the next one forever.
pub(crate) fn is_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        // Written and closed: the end of a write.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // Created, modified, removed, renamed; `Any`/`Other` (e.g. a lost event queue) too.
        _ => true,
    }
}

/// Watching, until dropped.
pub struct HotReload {
    /// Owns the watcher.
    task: tokio::task::JoinHandle<()>,
}

/// How often the watched folders and files are also looked at directly: what a watcher cannot
/// see (a folder replaced, a file behind a symbolic link) is applied within this.
pub const POLL: Duration = Duration::from_secs(1);

/// Identity and version of a path, links followed: device, inode, size, modification time.
type Seen = Option<(u64, u64, u64, Option<std::time::SystemTime>)>;

fn seen(path: &Path) -> Seen {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino(), meta.len(), meta.modified().ok()))
}

/// What the poll compares: the watched folders (their identity), the files in them, and the
/// watched files.
#[derive(PartialEq)]
struct Snapshot {
    dirs: Vec<(PathBuf, Seen)>,
    files: std::collections::BTreeMap<PathBuf, Seen>,
}

impl Snapshot {
    fn take(dirs: &[PathBuf], files: &[PathBuf]) -> Self {
        let mut all = std::collections::BTreeMap::new();
        for dir in dirs {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten().take(100_000) {
                    let path = entry.path();
                    all.insert(path.clone(), seen(&path));
                }
            }
        }
        for file in files {
            all.insert(file.clone(), seen(file));
        }
        Self {
            dirs: dirs
                .iter()
                .map(|d| (d.clone(), seen(d).map(|(dev, ino, ..)| (dev, ino, 0, None))))
                .collect(),
            files: all,
        }
    }

    /// Folders that are another one now (or gone, or back).
    fn replaced_dirs(&self, before: &Snapshot) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .zip(&before.dirs)
            .filter(|(now, then)| now.1 != then.1)
            .map(|(now, _)| now.0.clone())
            .collect()
    }

    /// Every path that differs (added, removed, changed), the replaced folders included.
    fn changed(&self, before: &Snapshot) -> Vec<PathBuf> {
        let mut changed = self.replaced_dirs(before);
        for (path, now) in &self.files {
            if before.files.get(path) != Some(now) {
                changed.push(path.clone());
            }
        }
        for path in before.files.keys() {
            if !self.files.contains_key(path) {
                changed.push(path.clone());
            }
        }
        changed
    }
}

impl Drop for HotReload {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RunService {
    /// Loads the plugins directory and the grants again and installs the result for new runs;
    /// logs what changed. The workflows are validated again on their next lookup.
    pub async fn reload_plugins(&self) -> Result<()> {
        let current = self.runner.installed_plugins();
        let grants_file = self.workspace().grants_file();
        let (engine, grants_problem) = match read_grants(&grants_file) {
            Ok(grants) => (current.engine().with_grants(grants), None),
            Err(e) => (
                current.engine().clone(),
                Some(PluginProblem {
                    path: grants_file.clone(),
                    message: format!("{e}; the grants loaded before stay in use"),
                }),
            ),
        };
        let mut next = current.reload(&engine).await?;
        if let Some(problem) = grants_problem {
            next = next.with_problem(problem);
        }
        for plugin in next.plugins() {
            let info = &plugin.info;
            match current.get(&info.name) {
                Some(old) if old.info.digest == info.digest => {
                    if old.info.programs != info.programs {
                        tracing::info!(target: "app.reload", "plugin `{}` may now launch [{}]", info.name, info.programs.join(", "));
                    }
                }
                Some(old) => tracing::info!(
                    target: "app.reload",
                    "plugin `{}` {} ({}) replaces {} ({}) for new runs; running runs keep theirs",
                    info.name, info.version, info.digest, old.info.version, old.info.digest
                ),
                None => tracing::info!(
                    target: "app.reload",
                    "plugin `{}` {} ({}) loaded from {}",
                    info.name, info.version, info.digest, info.path.display()
                ),
            }
        }
        for old in current.plugins() {
            if next.get(&old.info.name).is_none() {
                tracing::info!(target: "app.reload", "plugin `{}` removed: no longer offered to new runs", old.info.name);
            }
        }
        for problem in next.problems() {
            tracing::warn!(target: "app.reload", "{}", problem.message);
        }
        for name in next.granted_but_missing() {
            tracing::warn!(
                target: "app.reload",
                "{} grants plugin `{name}`, which is not installed (a misspelt name?)",
                grants_file.display()
            );
        }
        self.runner.install_plugins(Arc::new(next));
        self.workflows.invalidate();
        Ok(())
    }

    /// Starts watching the workflows directory, the plugins directory and `configs/`; changes
    /// apply within about a second (see the module docs). Directories that do not exist are
    /// not watched (the plugins directory is created).
    pub fn watch(&self, also: Vec<OnChange>) -> Result<HotReload> {
        use notify::Watcher;
        let plugins_dir = self.runner.installed_plugins().dir().to_owned();
        if !plugins_dir.as_os_str().is_empty() {
            let _ = std::fs::create_dir_all(&plugins_dir);
        }
        let workflows_dir = self.workflows.dir().to_owned();
        let configs_dir = self.workspace().configs_dir();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && is_change(&event)
                {
                    for path in event.paths {
                        let _ = tx.send(path);
                    }
                }
            })
            .map_err(|e| Error::Config(format!("cannot watch files for hot reload: {e}")))?;
        for dir in [&workflows_dir, &plugins_dir, &configs_dir] {
            if dir.is_dir()
                && let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive)
            {
                tracing::warn!(target: "app.reload", "not watching {}: {e}", dir.display());
            }
        }
        let grants_file = self.workspace().grants_file();
        let service = self.clone();
        let dirs = [
            workflows_dir.clone(),
            plugins_dir.clone(),
            configs_dir.clone(),
        ];
        let mut files = vec![grants_file.clone()];
        files.extend(also.iter().map(|(file, _)| file.clone()));
        let task = tokio::spawn(async move {
            let mut watcher = watcher;
            let take = || Snapshot::take(&dirs, &files);
            let mut last = take();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                let mut paths = tokio::select! {
                    path = rx.recv() => match path {
                        Some(path) => vec![path],
                        None => return,
                    },
                    _ = tick.tick() => {
                        // The safety net under the watcher: a folder replaced (its watch went
                        // with the old one), a file behind a symbolic link changed.
                        let now = take();
                        for dir in now.replaced_dirs(&last) {
                            use notify::Watcher;
                            let _ = watcher.unwatch(&dir);
                            if dir.is_dir() {
                                let _ = watcher.watch(&dir, notify::RecursiveMode::NonRecursive);
                            }
                        }
                        let changed = now.changed(&last);
                        last = now;
                        if changed.is_empty() {
                            continue;
                        }
                        changed
                    }
                };
                let started = Instant::now();
                while started.elapsed() < MAX_WAIT {
                    match tokio::time::timeout(QUIET, rx.recv()).await {
                        Ok(Some(path)) => paths.push(path),
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let configs = paths.contains(&configs_dir);
                let plugins = configs
                    || paths.iter().any(|p| {
                        *p == grants_file
                            || *p == plugins_dir
                            || (p.parent() == Some(plugins_dir.as_path())
                                && p.extension().is_some_and(|x| x == "wasm"))
                    });
                let workflows = paths
                    .iter()
                    .any(|p| *p == workflows_dir || p.parent() == Some(workflows_dir.as_path()));
                for (file, changed) in &also {
                    if configs || paths.contains(file) {
                        changed();
                    }
                }
                if plugins && let Err(e) = service.reload_plugins().await {
                    tracing::warn!(target: "app.reload", "reloading the plugins failed; the loaded ones stay: {e}");
                }
                if plugins || workflows {
                    if workflows {
                        service.workflows.invalidate();
                    }
                    // Parse and validate now, so a broken file is logged at once.
                    if let Err(e) = service.workflows.entries() {
                        tracing::warn!(target: "app.reload", "cannot read {}: {e}", workflows_dir.display());
                    }
                }
                last = take();
            }
        });
        Ok(HotReload { task })
    }
}

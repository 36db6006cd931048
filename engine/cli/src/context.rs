//! Opening the workspace: database, plugin engine and registry, built from the global options.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use kiln_plugin_host::{Grants, HostConfig, PluginEngine, PluginRegistry};
use kiln_runner::{RunService, Runner, RunnerConfig, Workspace};
use kiln_store::{Reads, Store};

use crate::cli::{ExecOptions, GlobalArgs};

/// Longest [`Context::close`] waits for a store's connections.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Longest it waits for a store whose database file was replaced: its writer may still be
/// waiting (5 s at most) for a reader of the old file before it can empty the old log.
const LOST_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// A store whose SQLite file was replaced or removed while it was open ([`Context::close`]).
pub struct Lost {
    /// Why it stopped writing (what its refused writes said).
    pub why: String,
    /// The same for the process's last words: with the old log's fate when it is still beside
    /// the file.
    pub report: String,
}

pub struct Context {
    pub ws: Workspace,
    pub global: GlobalArgs,
    /// Detected once per process: detection may run `nvidia-smi`.
    gpus: std::sync::OnceLock<Result<Vec<u32>, String>>,
    /// Every store this command opened, closed by [`Self::close`].
    opened: std::sync::Mutex<Vec<Store>>,
    /// How its stores read: directly for the server, through the pool for a short command.
    reads: Reads,
}

impl Context {
    pub fn new(global: &GlobalArgs, reads: Reads) -> anyhow::Result<Self> {
        let ws = Workspace::new(&global.workspace)
            .with_context(|| format!("workspace {}", global.workspace.display()))?;
        Ok(Self {
            ws,
            global: global.clone(),
            gpus: std::sync::OnceLock::new(),
            opened: std::sync::Mutex::new(Vec::new()),
            reads,
        })
    }

    /// Closes the stores this command opened, once it is done: what is queued is committed
    /// and, on SQLite, the write-ahead log is folded into `kiln.db` and removed, so that after
    /// a clean exit the database file holds everything (a copy of it is whole, and a
    /// `kiln.db` deleted to start afresh meets no old log). Bounded: a connection some task
    /// still holds is not waited for past a few seconds.
    ///
    /// Returns why, when a store's SQLite file was replaced or removed while it was open: that
    /// store was not closed, and the process must end at once, without dropping it (see
    /// [`Store::close`]).
    pub async fn close(&self) -> Option<Lost> {
        self.close_with(false).await
    }

    /// [`Self::close`] for `kiln serve`, once it has handed its runs back: what their aborted
    /// executions queued since is dropped unwritten ([`Store::close_discarding`]).
    pub async fn close_discarding(&self) -> Option<Lost> {
        self.close_with(true).await
    }

    async fn close_with(&self, discarding: bool) -> Option<Lost> {
        let stores = std::mem::take(&mut *self.opened.lock().unwrap_or_else(|e| e.into_inner()));
        let mut lost = None;
        for store in stores {
            let closing = async {
                if discarding {
                    store.close_discarding().await;
                } else {
                    store.close().await;
                }
            };
            // A store whose file was lost waits for its writer to have emptied the old log
            // (or given up), so that the last words say how it went.
            let wait = if store.database_lost().is_some() {
                LOST_CLOSE_WAIT
            } else {
                CLOSE_WAIT
            };
            if tokio::time::timeout(wait, closing).await.is_err() {
                tracing::debug!(target: "store", "the database was not closed within {CLOSE_WAIT:?}");
            }
            if let (Some(why), Some(report)) = (store.database_lost(), store.database_lost_report())
            {
                // Its connections were left open: dropped, the pool would close them.
                std::mem::forget(store);
                lost = Some(Lost { why, report });
            }
        }
        lost
    }

    pub async fn store(&self) -> anyhow::Result<Store> {
        // An empty `KILN_DATABASE_URL=` is how a shell unsets it for one command.
        let url = match self.global.database_url.as_ref().filter(|u| !u.is_empty()) {
            Some(u) => u.clone(),
            None => {
                let dir = self.ws.kiln_dir();
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                self.ws.default_database_url()
            }
        };
        // On a task of its own: it opens the database on another thread while the caller loads
        // plugins (synchronous work, ~1.5 ms) beside it.
        let reads = self.reads;
        let connecting = tokio::spawn(async move { Store::connect_with(&url, reads).await });
        let store = connecting
            .await
            .context("opening the database stopped unexpectedly")??;
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(store.clone());
        Ok(store)
    }

    /// The machine's GPU devices (configured, or detected with nvidia-smi).
    pub fn gpus(&self) -> anyhow::Result<Vec<u32>> {
        self.gpus
            .get_or_init(|| kiln_runner::gpu::detect(self.global.gpus.as_deref()))
            .clone()
            .map_err(|e| kiln_runner::Error::Input(format!("--gpus: {e}")).into())
    }

    /// Where plugin steps' programs run: `configs/launchers.yaml` (absent: here).
    pub fn launcher(&self) -> anyhow::Result<kiln_supervisor::Launcher> {
        Ok(kiln_runner::launchers::read_launcher(
            &self.ws.configs_dir().join("launchers.yaml"),
        )?)
    }

    /// The run service over this workspace's store and plugins, opened together.
    pub async fn service(&self, exec: &ExecOptions) -> anyhow::Result<RunService> {
        let grace = Duration::from_secs(exec.kill_grace_secs);
        // The store first: its first poll starts the connection, which then runs beside the
        // plugins' loading.
        let slots = exec.max_parallel;
        let (store, plugins) = tokio::join!(self.store(), self.plugins(grace, slots));
        self.service_with(store?, exec, plugins?)
    }

    /// This process as an engine: `kind` (`serve` or `cli`), the labels it offers.
    fn engine_config(&self, config: &mut RunnerConfig, kind: &str, labels: &[(String, String)]) {
        config.engine_kind = kind.to_owned();
        config.lease_ttl = self.global.lease_ttl;
        config.labels = labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
    }

    /// [`Self::service`] for `kiln serve`, which keeps running while files change: a plugin
    /// file that does not load is a listed problem (as after a hot reload), not a failed start.
    pub async fn serving_service(
        &self,
        exec: &ExecOptions,
        labels: &[(String, String)],
        instance_slots: usize,
    ) -> anyhow::Result<RunService> {
        let grace = Duration::from_secs(exec.kill_grace_secs);
        let plugins = async {
            let engine = PluginEngine::new(self.host_config(grace, instance_slots)?)?;
            if let Some(why) = engine.unpooled() {
                tracing::warn!(
                    target: "app.backend",
                    "{why}; until then plugin instances are mapped one at a time (slower)"
                );
            }
            let registry = PluginRegistry::load_tolerant(&engine, &self.plugins_dir()).await?;
            for problem in registry.problems() {
                tracing::warn!(target: "app.reload", "{}", problem.message);
            }
            anyhow::Ok(Arc::new(registry))
        };
        let (store, plugins) = tokio::join!(self.store(), plugins);
        self.engine_service(store?, exec, plugins?, "serve", labels)
    }

    fn plugins_dir(&self) -> std::path::PathBuf {
        self.global
            .plugins_dir
            .clone()
            .unwrap_or_else(|| self.ws.plugins_dir())
    }

    /// The run service for commands that start no step (cancel, delete): no plugin loaded.
    pub async fn service_without_plugins(&self) -> anyhow::Result<RunService> {
        let config = self.host_config(Duration::from_secs(10), 0)?;
        let engine = PluginEngine::new(config)?;
        let plugins = Arc::new(PluginRegistry::empty(&engine));
        let exec = ExecOptions {
            max_parallel: 1,
            kill_grace_secs: 10,
            json: false,
        };
        self.service_with(self.store().await?, &exec, plugins)
    }

    /// The run service over an open store and loaded plugins.
    pub fn service_with(
        &self,
        store: Store,
        exec: &ExecOptions,
        plugins: Arc<PluginRegistry>,
    ) -> anyhow::Result<RunService> {
        self.engine_service(store, exec, plugins, "cli", &[])
    }

    fn engine_service(
        &self,
        store: Store,
        exec: &ExecOptions,
        plugins: Arc<PluginRegistry>,
        kind: &str,
        labels: &[(String, String)],
    ) -> anyhow::Result<RunService> {
        let mut config = RunnerConfig {
            max_parallel: exec.max_parallel,
            kill_grace: Duration::from_secs(exec.kill_grace_secs),
            gpus: self.gpus()?,
            launcher: self.launcher()?,
            ..RunnerConfig::default()
        };
        self.engine_config(&mut config, kind, labels);
        let runner = Runner::new(store, plugins, self.ws.clone(), config);
        Ok(RunService::new(runner, self.ws.root().join("workflows")))
    }

    /// Load the installed plugins (compiling them on first use, from the cache after), in an
    /// engine with `instance_slots` for steps (`HostConfig::instance_slots`).
    pub async fn plugins(
        &self,
        kill_grace: Duration,
        instance_slots: usize,
    ) -> anyhow::Result<Arc<PluginRegistry>> {
        let engine = PluginEngine::new(self.host_config(kill_grace, instance_slots)?)?;
        Ok(Arc::new(
            PluginRegistry::load(&engine, &self.plugins_dir()).await?,
        ))
    }

    /// `configs/plugins.yaml` (no file: no grants).
    fn grants(&self) -> anyhow::Result<Grants> {
        Ok(kiln_runner::service::read_grants(&self.ws.grants_file())?)
    }

    /// How the plugin host runs plugins and launches their programs here, with room for
    /// `instance_slots` plugin instances at once.
    pub fn host_config(
        &self,
        kill_grace: Duration,
        instance_slots: usize,
    ) -> anyhow::Result<HostConfig> {
        let grants = self.grants()?;
        let mut search_path = vec![self.ws.root().join(".venv").join("bin")];
        let path_var =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        search_path.extend(std::env::split_paths(&path_var));
        let mut base_env = vec![("PATH".to_owned(), path_var)];
        for key in ["HOME", "LANG", "LC_ALL", "TZ"] {
            if let Ok(v) = std::env::var(key) {
                base_env.push((key.to_owned(), v));
            }
        }
        Ok(HostConfig {
            cache_dir: self
                .global
                .cache_dir
                .clone()
                .unwrap_or_else(|| self.ws.cache_dir()),
            supervisor_exe: supervisor_exe()?,
            program_search_path: search_path,
            program_base_env: base_env,
            kill_grace,
            grants,
            instance_slots,
        })
    }
}

/// What supervises launched programs: `kiln-supervise` beside this executable (it starts
/// faster), else this `kiln` itself (`kiln supervise DIR`).
fn supervisor_exe() -> anyhow::Result<std::path::PathBuf> {
    let kiln = std::env::current_exe().context("cannot find the kiln executable")?;
    let small = kiln.with_file_name("kiln-supervise");
    Ok(if small.is_file() { small } else { kiln })
}

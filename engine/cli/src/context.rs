//! Opening the workspace: database, plugin engine and registry, built from the global options.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use kiln_plugin_host::{Grants, HostConfig, PluginEngine, PluginRegistry};
use kiln_runner::{Runner, RunnerConfig, Workspace};
use kiln_store::Store;

use crate::cli::{ExecOptions, GlobalArgs};

pub struct Context {
    pub ws: Workspace,
    pub global: GlobalArgs,
    /// Detected once per process: detection may run `nvidia-smi`.
    gpus: std::sync::OnceLock<Result<Vec<u32>, String>>,
}

impl Context {
    pub fn new(global: &GlobalArgs) -> anyhow::Result<Self> {
        let ws = Workspace::new(&global.workspace)
            .with_context(|| format!("workspace {}", global.workspace.display()))?;
        Ok(Self {
            ws,
            global: global.clone(),
            gpus: std::sync::OnceLock::new(),
        })
    }

    pub async fn store(&self) -> anyhow::Result<Store> {
        let url = match &self.global.database_url {
            Some(u) => u.clone(),
            None => {
                let dir = self.ws.kiln_dir();
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                self.ws.default_database_url()
            }
        };
        Ok(Store::connect(&url).await?)
    }

    /// The machine's GPU devices (configured, or detected with nvidia-smi).
    pub fn gpus(&self) -> anyhow::Result<Vec<u32>> {
        self.gpus
            .get_or_init(|| kiln_runner::gpu::detect(self.global.gpus.as_deref()))
            .clone()
            .map_err(|e| anyhow::anyhow!("--gpus: {e}"))
    }

    /// A runner over this workspace's store and plugins.
    pub async fn runner(
        &self,
        exec: &ExecOptions,
        plugins: Arc<PluginRegistry>,
    ) -> anyhow::Result<Runner> {
        self.runner_with(self.store().await?, exec, plugins)
    }

    /// A runner over an open store and loaded plugins.
    pub fn runner_with(
        &self,
        store: Store,
        exec: &ExecOptions,
        plugins: Arc<PluginRegistry>,
    ) -> anyhow::Result<Runner> {
        Ok(Runner::new(
            store,
            plugins,
            self.ws.clone(),
            RunnerConfig {
                max_parallel: exec.max_parallel,
                kill_grace: Duration::from_secs(exec.kill_grace_secs),
                gpus: self.gpus()?,
            },
        ))
    }

    /// Load the installed plugins (compiling them on first use, from the cache after).
    pub async fn plugins(&self, kill_grace: Duration) -> anyhow::Result<Arc<PluginRegistry>> {
        let grants = Grants::load(&self.ws.grants_file())?;
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
        let config = HostConfig {
            cache_dir: self
                .global
                .cache_dir
                .clone()
                .unwrap_or_else(|| self.ws.cache_dir()),
            supervisor_exe: std::env::current_exe().context("cannot find the kiln executable")?,
            program_search_path: search_path,
            program_base_env: base_env,
            kill_grace,
            grants,
        };
        let engine = PluginEngine::new(config)?;
        let dir = self
            .global
            .plugins_dir
            .clone()
            .unwrap_or_else(|| self.ws.plugins_dir());
        Ok(Arc::new(PluginRegistry::load(&engine, &dir).await?))
    }
}

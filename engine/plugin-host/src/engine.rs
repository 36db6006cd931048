//! The shared wasmtime engine: configuration, the epoch ticker, compiled-code cache location.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{Error, Grants, Result};

/// How often the epoch advances; the guest CPU budget is checked at this granularity.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Everything the host needs from its embedder.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Compiled components are cached here, keyed by content hash and engine compatibility.
    pub cache_dir: PathBuf,
    /// The executable that runs `supervise DIR` (the `kiln` binary).
    pub supervisor_exe: PathBuf,
    /// Directories searched, in order, for granted program names.
    pub program_search_path: Vec<PathBuf>,
    /// Base environment of launched programs (e.g. PATH, HOME, LANG); plugins add to it.
    pub program_base_env: Vec<(String, String)>,
    /// Grace period between SIGTERM and SIGKILL when a step is cancelled.
    pub kill_grace: Duration,
    pub grants: Grants,
}

/// A wasmtime engine with an epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) config: Arc<HostConfig>,
    _ticker: Arc<Ticker>,
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    pub fn new(config: HostConfig) -> Result<Self> {
        let mut wasm = wasmtime::Config::new();
        wasm.epoch_interruption(true);
        wasm.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&wasm).map_err(|e| Error::Engine(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (weak_engine, flag) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("kiln-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| Error::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            config: Arc::new(config),
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The same engine (compiled code, epoch ticker) with other grants, for plugins loaded
    /// after `configs/plugins.yaml` changed.
    pub fn with_grants(&self, grants: Grants) -> Self {
        let mut config = (*self.config).clone();
        config.grants = grants;
        Self {
            engine: self.engine.clone(),
            config: Arc::new(config),
            _ticker: self._ticker.clone(),
        }
    }
}

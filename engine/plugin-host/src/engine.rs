//! The shared wasmtime engine: configuration, the epoch ticker, compiled-code cache location.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::{Enabled, PoolingAllocationConfig};

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
    /// Plugin instances alive at once (steps running, plugins describing themselves at load);
    /// more wait until one ends. Each is a slot of wasmtime's pooling allocator, reserved
    /// when the engine starts and reused warm (see [`instance_pool`]). At most
    /// [`MAX_INSTANCE_SLOTS`]; see [`instance_slots_for`].
    pub instance_slots: usize,
}

/// The most instance slots an engine reserves: each slot reserves address space (not memory)
/// for [`MEMORIES_PER_INSTANCE`] linear memories of 4 GiB and their guard regions.
pub const MAX_INSTANCE_SLOTS: usize = 4096;

/// Instance slots for an engine that runs at most `steps` plugin steps at once: one per step
/// and two for plugins describing themselves at load, at most [`MAX_INSTANCE_SLOTS`].
pub fn instance_slots_for(steps: usize) -> usize {
    steps.saturating_add(2).min(MAX_INSTANCE_SLOTS)
}

/// Core wasm instances, linear memories and tables one plugin may contain: a component built
/// for `wasm32-wasip2` has one memory and a few instances and tables; one built for
/// `wasm32-wasip1` with the WASI adapter has a few more. A plugin with more does not load
/// (its load error names the limit).
const CORE_INSTANCES_PER_INSTANCE: u32 = 16;
const MEMORIES_PER_INSTANCE: u32 = 2;
const TABLES_PER_INSTANCE: u32 = 4;
/// Elements of one table (the limiter in `sandbox.rs` caps growth at the same number).
pub(crate) const TABLE_ELEMENTS: usize = 100_000;
/// Bytes of a linear memory kept resident when its slot is released, and reset in place (only
/// the pages the instance touched, found with Linux's `PAGEMAP_SCAN`) instead of being handed
/// back to the kernel. Without `PAGEMAP_SCAN` (Linux before 6.7, other systems) memory is
/// handed back, as wasmtime does by default.
const KEEP_RESIDENT: usize = 8 << 20;

/// A wasmtime engine with an epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) config: Arc<HostConfig>,
    /// One permit per instance slot of `engine`'s pool, held by a store until it is dropped.
    pub(crate) slots: Arc<Semaphore>,
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
        let slots = config.instance_slots.clamp(1, MAX_INSTANCE_SLOTS);
        let mut pooled = wasm.clone();
        pooled.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
            instance_pool(slots),
        ));
        let engine = match wasmtime::Engine::new(&pooled) {
            Ok(engine) => engine,
            // Reserving the pool's address space can fail (a `ulimit -v`, a small 32-bit
            // address space): instances are then mapped one by one, as they are without a pool.
            Err(e) => {
                tracing::warn!(
                    "cannot reserve {slots} plugin instance slots ({e}); \
                     plugin instances are allocated one at a time instead"
                );
                wasmtime::Engine::new(&wasm).map_err(|e| Error::Engine(e.to_string()))?
            }
        };
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
            slots: Arc::new(Semaphore::new(slots)),
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
            slots: self.slots.clone(),
            _ticker: self._ticker.clone(),
        }
    }
}

/// wasmtime's pooling allocator for `slots` plugin instances at once.
///
/// Each step runs in a fresh instance. Mapping its memory and stack for every instance, and
/// unmapping them after, cost `kiln serve` about a fifth of its CPU (`munmap`, copy-on-write
/// faults on the memory image, and the TLB shootdowns both send to the other cores). A pool
/// maps them once; a slot released is reset in place, so the next instance finds pristine
/// memory (zeroes and the module's data) without a system call or a page fault.
fn instance_pool(slots: usize) -> PoolingAllocationConfig {
    let slots = u32::try_from(slots).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_stacks(slots)
        .max_core_instances_per_component(CORE_INSTANCES_PER_INSTANCE)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
        .max_memories_per_component(MEMORIES_PER_INSTANCE)
        .max_memories_per_module(MEMORIES_PER_INSTANCE)
        .total_memories(slots.saturating_mul(MEMORIES_PER_INSTANCE))
        .max_tables_per_component(TABLES_PER_INSTANCE)
        .max_tables_per_module(TABLES_PER_INSTANCE)
        .total_tables(slots.saturating_mul(TABLES_PER_INSTANCE))
        .table_elements(TABLE_ELEMENTS);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10);
    }
    pool
}

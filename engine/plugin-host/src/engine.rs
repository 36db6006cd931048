//! The shared wasmtime engine: configuration, the epoch ticker, compiled-code cache location.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    /// Plugin steps that may run at once, each in an instance slot reserved when the engine
    /// starts (see [`instance_pool`]); a step waits for a free one ([`PluginEngine::instance_slot`]).
    /// Short calls that are not steps have [`SHORT_CALL_SLOTS`] of their own. At least 1,
    /// at most [`MAX_INSTANCE_SLOTS`].
    pub instance_slots: usize,
}

/// The most step slots an engine reserves: each reserves address space (not memory) for
/// [`MEMORIES_PER_INSTANCE`] linear memories of 4 GiB and their guard regions.
pub const MAX_INSTANCE_SLOTS: usize = 4096;

/// Slots for short calls that are not steps (a plugin describing itself at load, a config
/// preview), apart from the steps', so a plugin installed or a preview asked for while every
/// step slot is taken runs at once.
pub const SHORT_CALL_SLOTS: usize = 2;

/// Core wasm instances, linear memories and tables one plugin may contain: a component built
/// for `wasm32-wasip2` has one memory and a few instances and tables; one built for
/// `wasm32-wasip1` with the WASI adapter, or linked from shared libraries, has more. A plugin
/// with more does not load (its load error names the limit).
const CORE_INSTANCES_PER_INSTANCE: u32 = 32;
const MEMORIES_PER_INSTANCE: u32 = 2;
const TABLES_PER_INSTANCE: u32 = 4;
/// Elements of one table (the limiter in `sandbox.rs` caps growth at the same number).
pub(crate) const TABLE_ELEMENTS: usize = 100_000;
/// Bytes of a linear memory kept resident when its slot is released, and reset in place (only
/// the pages the instance touched, found with Linux's `PAGEMAP_SCAN`) instead of being handed
/// back to the kernel. Without `PAGEMAP_SCAN` (Linux before 6.7, other systems) memory is
/// handed back, as wasmtime does by default.
const KEEP_RESIDENT: usize = 8 << 20;
/// Address space one slot reserves, rounded up: its memories (wasmtime's default 4 GiB
/// reservation and a 32 MiB guard on each side), fiber stack and tables.
const SLOT_ADDRESS_SPACE: u64 =
    MEMORIES_PER_INSTANCE as u64 * ((4 << 30) + (64 << 20)) + (16 << 20);

/// A wasmtime engine with an epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) config: Arc<HostConfig>,
    /// One permit per step slot of `engine`'s pool, held by a step's store until it is dropped.
    slots: Arc<Semaphore>,
    /// How many step slots there are.
    slot_count: usize,
    /// The slots of short calls that are not steps ([`SHORT_CALL_SLOTS`]).
    short_call_slots: Arc<Semaphore>,
    /// Why the engine has no instance pool, when it has none.
    unpooled: Option<Arc<str>>,
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
        // At least one: a step in an engine asked for none would otherwise wait forever.
        let slots = config.instance_slots.clamp(1, MAX_INSTANCE_SLOTS);
        let pool = slots + SHORT_CALL_SLOTS;
        // Without a pool (the address space it needs is not there), each instance is mapped
        // and unmapped on its own: slower, the same otherwise.
        let mut unpooled = address_space_short(pool);
        let mut engine = None;
        if unpooled.is_none() {
            let mut pooled = wasm.clone();
            pooled.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
                instance_pool(pool),
            ));
            match wasmtime::Engine::new(&pooled) {
                Ok(e) => engine = Some(e),
                Err(e) => {
                    unpooled = Some(format!("cannot reserve {pool} plugin instance slots: {e}"))
                }
            }
        }
        let engine = match engine {
            Some(engine) => engine,
            None => wasmtime::Engine::new(&wasm).map_err(|e| Error::Engine(e.to_string()))?,
        };
        if let Some(why) = &unpooled {
            tracing::debug!("{why}; plugin instances are mapped one at a time");
        }
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
            slot_count: slots,
            short_call_slots: Arc::new(Semaphore::new(SHORT_CALL_SLOTS)),
            unpooled: unpooled.map(Arc::from),
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// A slot for one plugin step, once one is free.
    pub async fn instance_slot(&self) -> InstanceSlot {
        InstanceSlot {
            _permit: acquire(&self.slots).await,
        }
    }

    /// A slot for one plugin step, if one is free now.
    pub fn try_instance_slot(&self) -> Option<InstanceSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(InstanceSlot { _permit: permit })
    }

    /// The step slots there are (see [`HostConfig::instance_slots`]).
    pub fn instance_slots(&self) -> usize {
        self.slot_count
    }

    /// A slot for a short call that is not a step: a plugin describing itself at load, a
    /// config preview. [`SHORT_CALL_SLOTS`] of their own, which steps (a training holds its
    /// slot for hours) never take.
    pub async fn short_call_slot(&self) -> InstanceSlot {
        InstanceSlot {
            _permit: acquire(&self.short_call_slots).await,
        }
    }

    /// Why this engine maps each plugin instance on its own instead of taking it from a pool,
    /// when it does (an address-space limit, `ulimit -v`, too small for the pool).
    pub fn unpooled(&self) -> Option<&str> {
        self.unpooled.as_deref()
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
            slot_count: self.slot_count,
            short_call_slots: self.short_call_slots.clone(),
            unpooled: self.unpooled.clone(),
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

/// A place in the engine's instance pool, held by one plugin instance's store until the store
/// is dropped.
#[derive(Debug)]
pub struct InstanceSlot {
    _permit: OwnedSemaphorePermit,
}

async fn acquire(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    match slots.clone().acquire_owned().await {
        Ok(permit) => permit,
        // The engine never closes its semaphores.
        Err(_) => unreachable!("instance slots are never closed"),
    }
}

/// Why a pool of `slots` does not fit this process's address-space limit (`ulimit -v`), if it
/// does not.
fn address_space_short(slots: usize) -> Option<String> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::As).current?;
    let mapped = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |pages| {
            pages.saturating_mul(rustix::param::page_size() as u64)
        });
    pool_short(slots, limit, mapped)
}

/// Why a pool of `slots` does not fit under an address-space `limit` with `mapped` bytes mapped
/// already, if it does not. The pool may take a quarter of the room left: the rest is for the
/// heap, the threads' stacks, SQLite, and instances mapped later. A pool that only just fit left
/// the process unable to start a thread or allocate.
fn pool_short(slots: usize, limit: u64, mapped: u64) -> Option<String> {
    let room = limit.saturating_sub(mapped) / 4;
    let need = SLOT_ADDRESS_SPACE.saturating_mul(slots as u64);
    if need <= room {
        return None;
    }
    let fits = (room / SLOT_ADDRESS_SPACE).saturating_sub(SHORT_CALL_SLOTS as u64);
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let asked = slots.saturating_sub(SHORT_CALL_SLOTS);
    // The limit at which the pool would take a quarter of the room.
    let enough = need.saturating_mul(4).saturating_add(mapped);
    let what_to_do = if fits == 0 {
        format!(
            "raise it to at least {:.0} GiB to keep the pool",
            gib(enough).ceil()
        )
    } else {
        format!(
            "raise it to at least {:.0} GiB to keep the pool, or ask for at most {fits} \
             (kiln serve --plugin-instances)",
            gib(enough).ceil()
        )
    };
    Some(format!(
        "the address-space limit (ulimit -v: {:.1} GiB) leaves room for {fits} of the {asked} \
         plugin instance slots asked for ({:.1} GiB of address space each); {what_to_do}",
        gib(limit),
        gib(SLOT_ADDRESS_SPACE),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_pool_takes_at_most_a_quarter_of_the_address_space_left() {
        let slot = SLOT_ADDRESS_SPACE;
        assert_eq!(pool_short(6, u64::MAX, 0), None);
        assert_eq!(pool_short(6, 24 * slot + GIB, GIB), None);
        // Where the reservation alone would have fit, and the process crashed after it.
        let tight = pool_short(6, 6 * slot + GIB, GIB / 2).expect("too tight");
        assert!(
            tight.contains("leaves room for 0 of the 4 plugin instance slots asked for"),
            "{tight}"
        );
        assert!(
            tight.ends_with("raise it to at least 196 GiB to keep the pool"),
            "no advice to ask for 0 slots, which is refused: {tight}"
        );
        let serve = pool_short(512 + SHORT_CALL_SLOTS, 200 * GIB, GIB).expect("too small");
        assert!(
            serve.contains("ulimit -v: 200.0 GiB")
                && serve.contains("room for 4 of the 512")
                && serve.contains("or ask for at most 4 (kiln serve --plugin-instances)"),
            "{serve}"
        );
        assert!(
            pool_short(6, GIB, 2 * GIB).is_some(),
            "mapped beyond the limit"
        );
    }
}

//! The per-call sandbox: a fresh Store holding WASI (preopens only), the memory cap, the guest
//! CPU budget, and the capability state.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{
    AsContext, AsContextMut, ResourceLimiter, Store, StoreContext, StoreContextMut, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capability::process::ProcessState;
use crate::engine::InstanceSlot;
use crate::invocation::{GrantedDir, StepEvent};
use crate::{PluginEngine, PluginGrant};

/// Caps linear memory and table growth of one instance.
pub(crate) struct MemoryCap {
    pub limit: usize,
    pub exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= crate::engine::TABLE_ELEMENTS)
    }
}

/// Guest CPU time accounting: wall time of the call minus time spent waiting in host calls.
pub(crate) struct CpuBudget {
    pub limit: Duration,
    pub call_started: Instant,
    pub host_time: Duration,
    pub exceeded: bool,
}

impl CpuBudget {
    pub fn guest_time(&self) -> Duration {
        self.call_started.elapsed().saturating_sub(self.host_time)
    }
}

/// Everything a plugin instance can reach. Nothing else from the engine is visible to it.
pub(crate) struct StepState {
    pub plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    pub memory: MemoryCap,
    pub cpu: CpuBudget,
    pub stderr: MemoryOutputPipe,
    pub events: Option<tokio::sync::mpsc::UnboundedSender<StepEvent>>,
    pub process: ProcessState,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StepState {
    /// Emit an event to the runner; events of a describe call (no runner) are dropped.
    pub fn emit(&self, event: StepEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }
}

/// A store for one plugin call, holding one of the engine's instance slots until it is dropped.
pub(crate) struct Sandbox {
    // Declared first, so dropped first: the instance is back in wasmtime's pool before the
    // slot's permit lets another store allocate one.
    store: Store<StepState>,
    _slot: InstanceSlot,
}

impl Deref for Sandbox {
    type Target = Store<StepState>;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

impl DerefMut for Sandbox {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.store
    }
}

impl AsContext for Sandbox {
    type Data = StepState;
    fn as_context(&self) -> StoreContext<'_, StepState> {
        self.store.as_context()
    }
}

impl AsContextMut for Sandbox {
    fn as_context_mut(&mut self) -> StoreContextMut<'_, StepState> {
        self.store.as_context_mut()
    }
}

/// Build a store for one call of `plugin` with the given directory grants, in `slot`.
pub(crate) fn new_store(
    engine: &PluginEngine,
    plugin: &str,
    grant: &PluginGrant,
    dirs: &[GrantedDir],
    events: Option<tokio::sync::mpsc::UnboundedSender<StepEvent>>,
    process: ProcessState,
    slot: InstanceSlot,
) -> Result<Sandbox, String> {
    let stderr = MemoryOutputPipe::new(64 * 1024);
    let mut wasi = WasiCtxBuilder::new();
    // No environment, no arguments, no network, no stdin; stderr kept for panic messages.
    wasi.stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for dir in dirs {
        let perms = if dir.writable() {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        std::fs::create_dir_all(&dir.host_path).map_err(|e| {
            format!(
                "cannot create granted directory {}: {e}",
                dir.host_path.display()
            )
        })?;
        wasi.preopened_dir(&dir.host_path, dir.guest_path(), perms)
            .map_err(|e| format!("cannot grant {}: {e}", dir.host_path.display()))?;
    }
    let state = StepState {
        plugin: plugin.to_owned(),
        wasi: wasi.build(),
        table: ResourceTable::new(),
        memory: MemoryCap {
            limit: grant.memory_bytes,
            exceeded: false,
        },
        cpu: CpuBudget {
            limit: grant.cpu_per_call,
            call_started: Instant::now(),
            host_time: Duration::ZERO,
            exceeded: false,
        },
        stderr,
        events,
        process,
    };
    let mut store = Store::new(&engine.engine, state);
    store.limiter(|s| &mut s.memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let cpu = &mut ctx.data_mut().cpu;
        if cpu.guest_time() > cpu.limit {
            cpu.exceeded = true;
            return Ok(UpdateDeadline::Interrupt);
        }
        // Yield to the async executor at every tick so one busy plugin cannot starve others.
        Ok(UpdateDeadline::Yield(1))
    });
    Ok(Sandbox { store, _slot: slot })
}

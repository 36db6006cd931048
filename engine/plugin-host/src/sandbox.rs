//! The per-call sandbox: a fresh Store holding WASI (preopens only), the memory cap, the guest
//! CPU budget, and the capability state.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capability::process::ProcessState;
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
        Ok(desired <= 1_000_000)
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

/// Build a store for one call of `plugin` with the given directory grants.
pub(crate) fn new_store(
    engine: &PluginEngine,
    plugin: &str,
    grant: &PluginGrant,
    dirs: &[GrantedDir],
    events: Option<tokio::sync::mpsc::UnboundedSender<StepEvent>>,
    process: ProcessState,
) -> Result<Store<StepState>, String> {
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
    Ok(store)
}

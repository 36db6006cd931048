//! `kiln:plugin@0.1.0` components: their host imports (log, progress, process) are the same as
//! the current version's, so each call is converted and served by the current capability.
//! Nothing here decides anything.

use crate::bindings::v0_1::kiln::plugin as old;
use crate::bindings::{log, process, progress};
use crate::sandbox::StepState;

impl old::types::Host for StepState {}

impl old::log::Host for StepState {
    async fn write(&mut self, level: old::log::Level, message: String) {
        let level = match level {
            old::log::Level::Trace => log::Level::Trace,
            old::log::Level::Debug => log::Level::Debug,
            old::log::Level::Info => log::Level::Info,
            old::log::Level::Warn => log::Level::Warn,
            old::log::Level::Error => log::Level::Error,
        };
        log::Host::write(self, level, message).await
    }
}

impl old::progress::Host for StepState {
    async fn report(&mut self, u: old::progress::Update) {
        let update = progress::Update {
            percent: u.percent,
            epoch: u.epoch,
            epochs: u.epochs,
            metrics: u.metrics,
            message: u.message,
        };
        progress::Host::report(self, update).await
    }

    async fn report_checkpoint(&mut self, c: old::progress::Checkpoint) {
        let checkpoint = progress::Checkpoint {
            host_path: c.host_path,
            epoch: c.epoch,
            best: c.best,
        };
        progress::Host::report_checkpoint(self, checkpoint).await
    }
}

impl old::process::Host for StepState {
    async fn launch(&mut self, s: old::process::Spec) -> Result<u64, String> {
        let spec = process::Spec {
            program: s.program,
            args: s.args,
            env: s.env,
            cwd: s.cwd,
        };
        process::Host::launch(self, spec).await
    }

    async fn read_output(
        &mut self,
        handle: u64,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> Result<old::process::OutputChunk, String> {
        process::Host::read_output(self, handle, max_bytes, timeout_ms)
            .await
            .map(|c| old::process::OutputChunk {
                data: c.data,
                finished: c.finished,
            })
    }

    async fn wait(&mut self, handle: u64) -> Result<old::process::ExitStatus, String> {
        process::Host::wait(self, handle)
            .await
            .map(|e| old::process::ExitStatus {
                code: e.code,
                signal: e.signal,
                success: e.success,
            })
    }
}

//! `kiln:plugin/progress`: progress reports and checkpoints of long-running steps.

use crate::bindings::progress::{Checkpoint, Host, Update};
use crate::invocation::StepEvent;
use crate::sandbox::StepState;

impl Host for StepState {
    async fn report(&mut self, update: Update) {
        let metrics = update
            .metrics
            .into_iter()
            .filter_map(|(k, v)| serde_json::Number::from_f64(v).map(|n| (k, n.into())))
            .collect();
        self.emit(StepEvent::Progress {
            percent: update
                .percent
                .filter(|p| p.is_finite())
                .map(|p| p.clamp(0.0, 100.0)),
            epoch: update.epoch,
            epochs: update.epochs,
            metrics,
            message: update.message,
        });
    }

    async fn report_checkpoint(&mut self, checkpoint: Checkpoint) {
        // Only checkpoints inside a directory granted to the step are recorded.
        let path = std::path::Path::new(&checkpoint.host_path);
        if !self.process.is_inside_grant(path) {
            self.emit(StepEvent::Log {
                level: "warn".into(),
                message: format!(
                    "ignored checkpoint {} outside the step's directories",
                    checkpoint.host_path
                ),
            });
            return;
        }
        self.emit(StepEvent::Checkpoint {
            host_path: checkpoint.host_path,
            epoch: checkpoint.epoch,
            best: checkpoint.best,
        });
    }
}

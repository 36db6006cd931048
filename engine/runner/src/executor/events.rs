//! What a step reports, persisted as it arrives; what a watcher hears; cancel requests from
//! other processes (the run's heartbeat is its lease's renewal: `crate::engine`).

use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use kiln_plugin_host::StepEvent;
use kiln_store::{StepEnd, StepStatus, Store};

use super::RunUpdate;

/// Poll for cancel requests made from other processes (`kiln runs cancel`, another engine's
/// API).
pub(super) async fn watch_run(store: Store, run_id: String, cancel: CancellationToken) {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if store.cancel_requested(&run_id).await.unwrap_or(false) {
            cancel.cancel();
        }
    }
}

/// Store what a step reports, and tell the watcher.
pub(super) async fn persist_events(
    store: Store,
    run_id: String,
    step_id: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StepEvent>,
    updates: Option<UnboundedSender<RunUpdate>>,
) {
    // The metrics reported so far for the epoch being trained: each report's metrics merge
    // into its epoch's row (a loss mid-epoch, the validation metrics at its end).
    let mut epoch_metrics: Option<(u32, serde_json::Map<String, serde_json::Value>)> = None;
    while let Some(event) = rx.recv().await {
        let result = match &event {
            StepEvent::Log { level, message } => {
                notify(
                    &updates,
                    RunUpdate::StepLog {
                        step_id: step_id.clone(),
                        level: level.clone(),
                        message: message.clone(),
                    },
                );
                store.append_event_soon(&run_id, Some(&step_id), level, message);
                Ok(())
            }
            StepEvent::Progress {
                percent,
                epoch,
                epochs,
                metrics,
                message,
            } => {
                notify(
                    &updates,
                    RunUpdate::StepProgress {
                        step_id: step_id.clone(),
                        percent: *percent,
                        epoch: *epoch,
                        epochs: *epochs,
                        message: message.clone(),
                    },
                );
                let progress = json!({
                    "percent": percent, "epoch": epoch, "epochs": epochs,
                    "metrics": metrics, "message": message,
                });
                store.set_step_progress_soon(&run_id, &step_id, &progress);
                if let (Some(epoch), false) = (epoch, metrics.is_empty()) {
                    let merged = match &mut epoch_metrics {
                        Some((e, merged)) if e == epoch => merged,
                        slot => &mut slot.insert((*epoch, serde_json::Map::new())).1,
                    };
                    for (key, value) in metrics {
                        merged.insert(key.clone(), value.clone());
                    }
                    store.set_epoch_metrics_soon(&run_id, &step_id, i64::from(*epoch), merged);
                }
                Ok(())
            }
            StepEvent::Checkpoint {
                host_path,
                epoch,
                best,
            } => {
                store
                    .record_checkpoint(&run_id, &step_id, host_path, epoch.map(i64::from), *best)
                    .await
            }
            StepEvent::Launched {
                program,
                pid,
                log_path,
            } => {
                let message = format!(
                    "launched {program} (pid {pid}); output in {}",
                    log_path.display()
                );
                store.append_event_soon(&run_id, Some(&step_id), "info", &message);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(target: "errors.store", run_id, step_id, "cannot record a step event: {e}");
        }
    }
}

/// The end of a step that did not run (skipped, cancelled), with why.
pub(super) fn ended(status: StepStatus, reason: &str) -> StepEnd {
    StepEnd {
        status,
        outputs: None,
        error_message: Some(reason.to_owned()),
        failure_kind: None,
        cached_from: None,
    }
}

pub(super) fn notify(updates: &Option<UnboundedSender<RunUpdate>>, update: RunUpdate) {
    if let Some(tx) = updates {
        let _ = tx.send(update);
    }
}

pub(super) fn finished(step_id: &str, status: StepStatus, error: Option<String>) -> RunUpdate {
    RunUpdate::StepFinished {
        step_id: step_id.to_owned(),
        status,
        error,
    }
}

//! Live progress of a run: bars per step on a terminal (indicatif), plain lines otherwise.

use crate::output::errln;
use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use kiln_runner::RunUpdate;
use kiln_workflow::Workflow;

pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(workflow: &Workflow, rx: UnboundedReceiver<RunUpdate>) -> Self {
        let ids: Vec<String> = workflow.steps.iter().map(|s| s.id.clone()).collect();
        let task = if std::io::stderr().is_terminal() {
            tokio::spawn(bars(ids, rx))
        } else {
            tokio::spawn(lines(rx))
        };
        Self { task }
    }

    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

async fn bars(ids: Vec<String>, mut rx: UnboundedReceiver<RunUpdate>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let width = ids.iter().map(String::len).max().unwrap_or(4);
    let style = ProgressStyle::with_template(&format!(
        "{{prefix:>{width}}} {{bar:30.cyan/blue}} {{percent:>3}}% {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bars: HashMap<String, ProgressBar> = ids
        .iter()
        .map(|id| {
            let bar = multi.add(ProgressBar::new(100));
            bar.set_style(style.clone());
            bar.set_prefix(id.clone());
            bar.set_message("queued");
            (id.clone(), bar)
        })
        .collect();
    while let Some(update) = rx.recv().await {
        match update {
            RunUpdate::StepStarted { step_id, attempt } => {
                if let Some(b) = bars.get(&step_id) {
                    b.set_message(format!("running (attempt {attempt})"));
                }
            }
            RunUpdate::StepProgress {
                step_id,
                percent,
                epoch,
                epochs,
                message,
            } => {
                if let Some(b) = bars.get(&step_id) {
                    if let Some(p) = percent {
                        b.set_position(p.round() as u64);
                    }
                    let mut m = String::new();
                    if let (Some(e), Some(n)) = (epoch, epochs) {
                        m.push_str(&format!("epoch {e}/{n} "));
                    }
                    if let Some(text) = message {
                        m.push_str(&text);
                    }
                    b.set_message(m);
                }
            }
            RunUpdate::StepLog {
                step_id,
                level,
                message,
            } => {
                if level == "warn" || level == "error" {
                    let _ = multi.println(format!("{step_id}: {level}: {message}"));
                }
            }
            RunUpdate::StepFinished {
                step_id,
                status,
                error,
            } => {
                if let Some(b) = bars.get(&step_id) {
                    if status == kiln_store::StepStatus::Succeeded {
                        b.set_position(100);
                    }
                    b.finish_with_message(match error {
                        Some(e) => format!("{status}: {}", first_line(&e)),
                        None => status.to_string(),
                    });
                }
            }
        }
    }
}

async fn lines(mut rx: UnboundedReceiver<RunUpdate>) {
    let mut last_epoch: HashMap<String, u32> = HashMap::new();
    while let Some(update) = rx.recv().await {
        match update {
            RunUpdate::StepStarted { step_id, attempt } => {
                errln!("step {step_id}: running (attempt {attempt})");
            }
            RunUpdate::StepProgress {
                step_id,
                percent,
                epoch: Some(epoch),
                epochs,
                ..
            } => {
                // One line per epoch, not per redraw.
                if last_epoch.insert(step_id.clone(), epoch) != Some(epoch) {
                    let of = epochs.map(|n| format!("/{n}")).unwrap_or_default();
                    let pct = percent.map(|p| format!(" ({p:.0}%)")).unwrap_or_default();
                    errln!("step {step_id}: epoch {epoch}{of}{pct}");
                }
            }
            RunUpdate::StepProgress { .. } => {}
            RunUpdate::StepLog {
                step_id,
                level,
                message,
            } => {
                // Debug and trace lines stay in the store (`kiln logs`), out of the live view.
                if !matches!(level.as_str(), "debug" | "trace") {
                    errln!("step {step_id}: {level}: {message}");
                }
            }
            RunUpdate::StepFinished {
                step_id,
                status,
                error,
            } => match error {
                Some(e) => errln!("step {step_id}: {status}: {e}"),
                None => errln!("step {step_id}: {status}"),
            },
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

//! `kiln:plugin/log`: structured log lines, stored with the step.

use crate::bindings::log::{Host, Level};
use crate::invocation::StepEvent;
use crate::sandbox::StepState;

/// Longest message kept; longer ones are cut (a plugin must not flood the store).
const MAX_MESSAGE: usize = 16 * 1024;

impl Host for StepState {
    async fn write(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let mut message = message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …[truncated]");
        }
        self.emit(StepEvent::Log {
            level: level.into(),
            message,
        });
    }
}

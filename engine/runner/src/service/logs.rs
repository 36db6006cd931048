//! Log pages and checkpoints of runs.
//!
//! A step's log is the raw output of the programs it launched, `.kiln/runs/<run>/logs/<step>.log`
//! then `<step>-2.log`, … for later launches, read as one stream: `offset` is a byte offset into
//! the concatenation of those files (for a single launch, simply into `<step>.log`), so pages stay
//! stable while the last file grows. Lines are split on `\n` and `\r` (the trainer redraws its
//! progress lines with `\r` + `ESC[K`), ANSI escapes are stripped and empty lines dropped; a
//! partial last line waits until it is completed or the step ends. A step that launched no
//! program (builtins, or a plugin step that ended without output) serves its structured events
//! instead; there `offset` is the run's event sequence number (`source: events`).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};

use kiln_store::{StepRecord, StepStatus};

use super::RunService;
use crate::{Error, Missing, Result};

/// Bytes of program output read per page at most.
const READ_BUDGET: u64 = 1 << 20;
/// A line longer than this without a line break is served in pieces.
const MAX_LINE: usize = 64 << 10;

/// The `source` of a page of program output.
pub const OUTPUT_LEVEL: &str = "output";

/// A line of a log page, with the offset just after it.
pub type LogLine = (String, u64);

/// A page of a step's log.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// The step the page is of.
    pub step: String,
    /// `output` (the programs' output; offsets are bytes) or `events` (structured events of a
    /// step without program output; offsets are event sequence numbers).
    pub source: &'static str,
    /// Each line with the offset after it.
    pub lines: Vec<LogLine>,
    pub next_offset: u64,
    /// The step has ended and no more output is left.
    pub finished: bool,
    pub status: StepStatus,
}

/// A weights file of a run's training.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointView {
    /// The step whose training directory holds the file.
    pub step: String,
    /// File name, e.g. `best.pt`, `last.pt`, `epoch10.pt`.
    pub name: String,
    /// Relative to the workspace.
    pub path: String,
    pub size: u64,
    /// Last modification, RFC 3339 UTC.
    pub modified: Option<String>,
    /// `best.pt` (`best.pth`, …), or reported as the best checkpoint by the training.
    pub best: bool,
    /// Epoch reported with the checkpoint, when known.
    pub epoch: Option<i64>,
}

impl RunService {
    /// The step `want`, or the default step: the running one with program output, else the last
    /// one with program output, else the first.
    pub async fn pick_step(&self, run_id: &str, want: Option<&str>) -> Result<StepRecord> {
        let steps = self.store().steps(run_id).await?;
        let names = || {
            steps
                .iter()
                .map(|s| s.step_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(want) = want {
            return steps
            .iter()
            .find(|s| s.step_id == want)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(Missing::Step, format!(
                    "run {run_id} has no step `{want}`; pass one of its steps as `step`: {}",
                    names()
                ))
            });
        }
        let log_dir = self.workspace().log_dir(run_id);
        let with_output: Vec<&StepRecord> = steps
            .iter()
            .filter(|s| kiln_plugin_host::launch_log(&log_dir, &s.step_id, 1).is_file())
            .collect();
        with_output
            .iter()
            .find(|s| s.status == StepStatus::Running)
            .or(with_output.last())
            .copied()
            .or(steps.first())
            .cloned()
            .ok_or_else(|| Error::NotFound(Missing::Step, format!("run {run_id} has no steps")))
    }

    /// Up to `limit` lines of the step's log after `offset`.
    pub async fn log_page(
        &self,
        run_id: &str,
        step: Option<&str>,
        offset: u64,
        limit: usize,
    ) -> Result<LogPage> {
        let step = self.pick_step(run_id, step).await?;
        let step_id = step.step_id.as_str();
        // The status is read before the output, so output written before the step ended is never
        // missed by a page that says `finished`.
        let run = self.store().run(run_id).await?;
        let ended = step.status.is_terminal() || run.status.is_terminal();
        let log_dir = self.workspace().log_dir(run_id);
        let files = output_files(&log_dir, step_id);
        if !files.is_empty() {
            let total: u64 = files.iter().map(|(_, len)| len).sum();
            let (lines, next_offset) =
                tokio::task::spawn_blocking(move || read_output(&files, offset, limit, ended))
                    .await
                    .map_err(|e| Error::Input(format!("reading the log of {step_id}: {e}")))?
                    .map_err(|e| Error::io("reading the log of", &log_dir.join(step_id), e))?;
            return Ok(LogPage {
                step: step.step_id.clone(),
                source: OUTPUT_LEVEL,
                lines,
                finished: ended && next_offset >= total,
                next_offset,
                status: step.status,
            });
        }
        if !ended && !step.uses.starts_with("builtin/") {
            // A plugin step whose program has not written yet: its output will come.
            return Ok(LogPage {
                step: step.step_id.clone(),
                source: OUTPUT_LEVEL,
                lines: Vec::new(),
                next_offset: offset,
                finished: false,
                status: step.status,
            });
        }
        // Structured events; `events_after` spans the run's steps, so filter in batches.
        const BATCH: i64 = 500;
        let mut lines = Vec::new();
        let mut cursor = offset as i64;
        let mut exhausted = false;
        'batches: while lines.len() < limit {
            let batch = self.store().events_after(run_id, cursor, BATCH).await?;
            for e in &batch {
                cursor = e.seq;
                if e.step_id.as_deref() == Some(step_id) {
                    lines.push((
                        format!("{} {} {}", e.at, e.level, clean(e.message.as_bytes())),
                        e.seq as u64,
                    ));
                    if lines.len() >= limit {
                        break 'batches;
                    }
                }
            }
            if (batch.len() as i64) < BATCH {
                exhausted = true;
                break;
            }
        }
        let next_offset = (cursor.max(0) as u64).max(offset);
        Ok(LogPage {
            step: step.step_id.clone(),
            source: "events",
            lines,
            next_offset,
            finished: ended && exhausted,
            status: step.status,
        })
    }

    /// The checkpoints of run `run_id` (a full id).
    pub async fn checkpoints(&self, run_id: &str) -> Result<Vec<CheckpointView>> {
        let ws = self.workspace();
        let steps = self.store().steps(run_id).await?;
        let recorded = self.store().checkpoints(run_id).await?;
        // Each training folder once, with the steps that name it in their inputs.
        let mut dirs: Vec<(PathBuf, Vec<&StepRecord>)> = Vec::new();
        for step in &steps {
            let Some(inputs) = &step.inputs else { continue };
            let (Some(project), Some(training)) = (
                inputs.get("project").and_then(|v| v.as_str()),
                inputs.get("training_name").and_then(|v| v.as_str()),
            ) else {
                continue;
            };
            let Ok(dir) = ws.training_dir(project, training) else {
                continue;
            };
            match dirs.iter_mut().find(|(d, _)| *d == dir) {
                Some((_, named_by)) => named_by.push(step),
                None => dirs.push((dir, vec![step])),
            }
        }
        let mut out = Vec::new();
        for (training, named_by) in dirs {
            // The training step: the one that reported checkpoints there, else the one whose
            // outputs name its best weights, else the first naming the directory.
            let step = named_by
                .iter()
                .find(|s| {
                    recorded.iter().any(|c| {
                        c.step_id == s.step_id && FsPath::new(&c.path).starts_with(&training)
                    })
                })
                .or_else(|| {
                    named_by.iter().find(|s| {
                        s.outputs
                            .as_ref()
                            .is_some_and(|o| o.get("best_weights").is_some())
                    })
                })
                .unwrap_or(&named_by[0]);
            // A folder that cannot be listed shows nothing.
            let entries = super::training::checkpoint_files(&training).unwrap_or_default();
            let mut files: Vec<CheckpointView> = entries
                .into_iter()
                .map(|f| {
                    let abs = f.path;
                    let rel = ws
                        .relative(&abs)
                        .unwrap_or_else(|| abs.clone())
                        .display()
                        .to_string();
                    let record = recorded.iter().find(|c| {
                        let p = FsPath::new(&c.path);
                        p == abs || p == FsPath::new(&rel)
                    });
                    CheckpointView {
                        step: step.step_id.clone(),
                        best: crate::builtins::is_exported_best(&f.name)
                            || record.is_some_and(|c| c.is_best),
                        epoch: record.and_then(|c| c.epoch),
                        path: rel,
                        size: f.meta.len(),
                        modified: f.meta.modified().ok().map(kiln_store::timestamp),
                        name: f.name,
                    }
                })
                .collect();
            files.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(files);
        }
        Ok(out)
    }
}

/// The step's output files, launch by launch, with their current lengths.
fn output_files(log_dir: &FsPath, step: &str) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    for n in 1.. {
        let path = kiln_plugin_host::launch_log(log_dir, step, n);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push((path, m.len())),
            _ => break,
        }
    }
    files
}

/// Read lines from the concatenation of `files` (with the lengths they had when listed) from
/// byte `offset`. Returns the lines, each with the offset after it, and the offset to continue
/// from. A trailing partial line is held back unless its launch is over (a later file exists, or
/// the step `ended`) or it is longer than [`MAX_LINE`].
fn read_output(
    files: &[(PathBuf, u64)],
    offset: u64,
    limit: usize,
    ended: bool,
) -> std::io::Result<(Vec<(String, u64)>, u64)> {
    let mut lines = Vec::new();
    let mut pos = offset;
    let mut base = 0u64;
    let mut budget = READ_BUDGET;
    for (i, (path, len)) in files.iter().enumerate() {
        let end = base + len;
        if pos >= end {
            base = end;
            continue;
        }
        let start = pos - base;
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.take((len - start).min(budget)).read_to_end(&mut buf)?;
        budget -= buf.len() as u64;
        let buf_end = start + buf.len() as u64;
        let file_done = buf_end >= *len;
        let mut seg = 0;
        for (j, &b) in buf.iter().enumerate() {
            if b == b'\n' || b == b'\r' {
                let line = clean(&buf[seg..j]);
                seg = j + 1;
                pos = base + start + seg as u64;
                if !line.is_empty() {
                    lines.push((line, pos));
                    if lines.len() >= limit {
                        return Ok((lines, pos));
                    }
                }
            }
        }
        let rest = &buf[seg..];
        if !rest.is_empty() {
            let last = i + 1 == files.len();
            if !((file_done && (!last || ended)) || rest.len() >= MAX_LINE) {
                return Ok((lines, pos));
            }
            pos = base + buf_end;
            let line = clean(rest);
            if !line.is_empty() {
                lines.push((line, pos));
                if lines.len() >= limit {
                    return Ok((lines, pos));
                }
            }
        }
        if !file_done || buf.is_empty() {
            // Read budget spent (or the file shrank): continue on the next page.
            return Ok((lines, pos));
        }
        base = end;
    }
    Ok((lines, pos))
}

/// A line without ANSI escape sequences, control characters or trailing blanks.
fn clean(raw: &[u8]) -> String {
    // strip-ansi-escapes drops tabs too: strip between them.
    let text: String = raw
        .split(|b| *b == b'\t')
        .map(|piece| {
            String::from_utf8_lossy(&strip_ansi_escapes::strip(piece))
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\t");
    let trimmed = text.trim_end();
    if trimmed.trim_start().is_empty() {
        String::new()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_redraws_become_lines() {
        assert_eq!(clean(b"\x1b[K  1/2 10%"), "  1/2 10%");
        assert_eq!(clean(b"\x1b[1;32mok\x1b[0m  "), "ok");
        assert_eq!(clean(b"\x1b]0;title\x07x"), "x");
        assert_eq!(clean(b" \x1b[K "), "");
    }

    #[test]
    fn pages_split_on_cr_and_lf_and_hold_back_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("train.log");
        let b = dir.path().join("train-2.log");
        std::fs::write(&a, b"one\r\x1b[Ktwo\r\n\nthree").unwrap();
        std::fs::write(&b, b"four\nfi").unwrap();
        let files = vec![(a.clone(), 18), (b.clone(), 7)];
        let (lines, next) = read_output(&files, 0, 100, false).unwrap();
        let texts: Vec<_> = lines.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three", "four"]);
        assert_eq!(next, 23);
        assert_eq!(lines[0].1, 4);
        // Paging resumes exactly after a line.
        let (lines, next2) = read_output(&files, 0, 2, false).unwrap();
        assert_eq!(lines.len(), 2);
        let (rest, _) = read_output(&files, next2, 100, false).unwrap();
        assert_eq!(rest[0].0, "three");
        // Once the step ended, the partial line is served.
        let (lines, end) = read_output(&files, next, 100, true).unwrap();
        assert_eq!(lines[0].0, "fi");
        assert_eq!(end, 25);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_709_251_200_123);
        assert_eq!(kiln_store::timestamp(t), "2024-03-01T00:00:00.123Z");
    }
}

//! Following the output of `yolo ... train`: progress, notable lines, the error line,
//! and `results.csv`. Pure functions over clean text lines (see
//! `kiln_plugin_sdk::lines::LineSplitter`), unit-tested on real captured output.

/// Training progress parsed from an epoch line such as
/// `        1/2         0G      2.565 ... 64: 50% ━━━━━━────── 2/4 5.4it/s 0.2s<0.4s`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochProgress {
    pub epoch: u32,
    pub epochs: u32,
    /// Percent of this epoch's batches, 0..=100.
    pub batch_percent: u32,
    /// `(done, total)` batches when shown.
    pub batches: Option<(u64, u64)>,
}

impl EpochProgress {
    /// Overall percent of the training: `((epoch-1) + batch_fraction) / epochs * 100`.
    pub fn overall_percent(&self) -> f64 {
        if self.epochs == 0 {
            return 0.0;
        }
        let done = f64::from(self.epoch.saturating_sub(1)) + f64::from(self.batch_percent) / 100.0;
        (done / f64::from(self.epochs) * 100.0).clamp(0.0, 100.0)
    }

    pub fn message(&self) -> String {
        match self.batches {
            Some((done, total)) => format!(
                "epoch {}/{}: {}% ({done}/{total} batches)",
                self.epoch, self.epochs, self.batch_percent
            ),
            None => format!(
                "epoch {}/{}: {}%",
                self.epoch, self.epochs, self.batch_percent
            ),
        }
    }
}

fn parse_fraction(token: &str) -> Option<(u64, u64)> {
    let (a, b) = token.split_once('/')?;
    if a.is_empty() || b.is_empty() || !a.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !b.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Parse an epoch progress line (`^\s*(\d+)/(\d+)\s` ... `NN%`).
pub fn parse_epoch_line(line: &str) -> Option<EpochProgress> {
    let trimmed = line.trim_start();
    let first = trimmed.split_whitespace().next()?;
    // The first token must be followed by whitespace (not the end of the line).
    if trimmed.len() == first.len() {
        return None;
    }
    let (epoch, epochs) = parse_fraction(first)?;
    if epoch == 0 || epochs == 0 || epoch > epochs {
        return None;
    }
    // The last `NN%` token on the line.
    let mut percent = None;
    let mut batches = None;
    for token in trimmed.split_whitespace().skip(1) {
        if let Some(num) = token.strip_suffix('%')
            && let Ok(p) = num.parse::<u32>()
            && p <= 100
        {
            percent = Some(p);
            batches = None;
        } else if percent.is_some() && batches.is_none() {
            batches = parse_fraction(token);
        }
    }
    Some(EpochProgress {
        epoch: u32::try_from(epoch).ok()?,
        epochs: u32::try_from(epochs).ok()?,
        batch_percent: percent?,
        batches,
    })
}

/// Parse a validation summary line `all <images> <instances> P R mAP50 mAP50-95 [mask ...]`;
/// returns the numbers after `all`.
pub fn parse_validation_line(line: &str) -> Option<Vec<f64>> {
    let mut tokens = line.split_whitespace();
    if tokens.next()? != "all" {
        return None;
    }
    let numbers: Vec<f64> = tokens
        .map(|t| t.parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()?;
    (numbers.len() >= 6).then_some(numbers)
}

/// Is this a Python exception line such as `RuntimeError: Dataset '...' error ❌ ...`?
pub fn is_error_line(line: &str) -> bool {
    let head = match line.split_once(':') {
        Some((head, _)) => head,
        None => line.trim_end(),
    };
    let Some(first) = head.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return false;
    }
    if !head
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return false;
    }
    let name = head.rsplit('.').next().unwrap_or(head);
    ["Error", "Exception", "Interrupt", "Exit"]
        .iter()
        .any(|s| (name.ends_with(s) && name.len() > s.len()) || name == "Exception")
}

/// How a line should be logged, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notable {
    Info,
    Warn,
    Error,
    Debug,
}

/// Lines worth a structured log entry (progress redraws are not).
pub fn notable(line: &str) -> Option<Notable> {
    let t = line.trim();
    const INFO_PREFIXES: &[&str] = &[
        "Starting training for",
        "Resuming training",
        "Logging results to",
        "Optimizer stripped from",
        "Validating ",
        "Ultralytics ",
        "Transferred ",
        "Overriding model.yaml",
        "Using ",
        "Closing dataloader mosaic",
        "EarlyStopping",
        "Stopping training early",
        "Results saved to",
    ];
    if is_error_line(line) {
        Some(Notable::Error)
    } else if t.contains("WARNING") {
        Some(Notable::Warn)
    } else if t.starts_with("engine/trainer:") {
        Some(Notable::Debug)
    } else if INFO_PREFIXES.iter().any(|p| t.starts_with(p)) || t.contains(" epochs completed in ")
    {
        Some(Notable::Info)
    } else {
        None
    }
}

/// `Resuming training <path> from epoch 16 to 200 total epochs` → 16.
pub fn parse_resume_line(line: &str) -> Option<u32> {
    let t = line.trim();
    if !t.starts_with("Resuming training") {
        return None;
    }
    let rest = &t[t.rfind(" from epoch ")? + " from epoch ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `2 epochs completed in 0.000 hours.` → 2.
pub fn parse_completed_line(line: &str) -> Option<u32> {
    let t = line.trim();
    let (n, _) = t.split_once(" epochs completed in ")?;
    n.trim().parse().ok()
}

/// `Starting training for 2 epochs...` → 2.
pub fn parse_starting_line(line: &str) -> Option<u32> {
    let rest = line.trim().strip_prefix("Starting training for ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// What the train loop should do about a line.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Report progress (only emitted when epoch or percent changed).
    Progress(EpochProgress),
    /// An epoch's validation finished; results.csv gets its row soon.
    Validation {
        epoch: Option<u32>,
        values: Vec<f64>,
    },
    /// Log this line.
    Log(Notable, String),
}

/// State of a followed training run.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    last_progress: Option<(u32, u32, u32)>,
    pub current_epoch: Option<u32>,
    pub epochs: Option<u32>,
    pub error_line: Option<String>,
    pub resumed_from_epoch: Option<u32>,
    pub completed_epochs: Option<u32>,
    /// Last non-empty lines, for a failure without an exception line.
    tail: std::collections::VecDeque<String>,
}

const TAIL_LINES: usize = 5;

impl Monitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one complete line.
    pub fn line(&mut self, line: &str) -> Vec<Event> {
        let mut events = Vec::new();
        if line.trim().is_empty() {
            return events;
        }
        if let Some(p) = parse_epoch_line(line) {
            self.current_epoch = Some(p.epoch);
            self.epochs = Some(p.epochs);
            if let Some(ev) = self.progress_event(p) {
                events.push(ev);
            }
            return events;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.trim().to_string());
        if let Some(values) = parse_validation_line(line) {
            events.push(Event::Validation {
                epoch: self.current_epoch,
                values,
            });
            return events;
        }
        if is_error_line(line) {
            self.error_line = Some(line.trim().to_string());
        }
        if let Some(n) = parse_resume_line(line) {
            self.resumed_from_epoch = Some(n);
        }
        if let Some(n) = parse_completed_line(line) {
            self.completed_epochs = Some(n);
        }
        if let Some(n) = parse_starting_line(line) {
            self.epochs.get_or_insert(n);
        }
        if let Some(level) = notable(line) {
            events.push(Event::Log(level, line.trim().to_string()));
        }
        events
    }

    /// Look at an unterminated line (a progress bar not yet redrawn): progress only.
    pub fn partial(&mut self, line: &str) -> Option<Event> {
        let p = parse_epoch_line(line)?;
        self.progress_event(p)
    }

    fn progress_event(&mut self, p: EpochProgress) -> Option<Event> {
        let key = (p.epoch, p.epochs, p.batch_percent);
        if self.last_progress == Some(key) {
            return None;
        }
        self.last_progress = Some(key);
        Some(Event::Progress(p))
    }

    /// The message of a failed run: the trainer's own error line (or its last lines) and
    /// how it ended.
    pub fn failure_message(&self, how: &str) -> String {
        match &self.error_line {
            Some(line) => format!("{line} ({how})"),
            None if !self.tail.is_empty() => format!(
                "yolo failed ({how}); last output: {}",
                self.tail.iter().cloned().collect::<Vec<_>>().join(" | ")
            ),
            None => format!("yolo failed ({how}) without output"),
        }
    }
}

/// One row of results.csv: column name (spaces stripped) → value.
pub type Row = Vec<(String, f64)>;

/// Parse results.csv. Column names have their spaces stripped (older versions pad them);
/// a last line without its newline (still being written) is ignored; cells that are not
/// numbers are left out.
pub fn parse_results_csv(text: &str) -> Vec<Row> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    // split leaves "" after a final newline; anything else there is an unfinished line.
    lines.pop();
    let mut lines = lines.into_iter().map(|l| l.trim_end_matches('\r'));
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<String> = header
        .split(',')
        .map(|c| c.chars().filter(|ch| !ch.is_whitespace()).collect())
        .collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            columns
                .iter()
                .zip(l.split(','))
                .filter_map(|(c, v)| v.trim().parse::<f64>().ok().map(|v| (c.clone(), v)))
                .filter(|(_, v)| v.is_finite())
                .collect()
        })
        .collect()
}

/// The `epoch` column of a row.
pub fn row_epoch(row: &Row) -> Option<u32> {
    row.iter()
        .find(|(c, _)| c == "epoch")
        .and_then(|(_, v)| (*v >= 0.0 && v.fract() == 0.0).then_some(*v as u32))
}

/// The metrics of a row for a progress report (everything but `epoch`).
pub fn row_metrics(row: &Row) -> Vec<(String, f64)> {
    row.iter().filter(|(c, _)| c != "epoch").cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::lines::LineSplitter;

    const TRAIN_LOG: &[u8] = include_bytes!("../tests/data/ultralytics-8.4.190-train.log");
    const BAD_LOG: &[u8] = include_bytes!("../tests/data/ultralytics-8.4.190-bad-data.log");
    const RESULTS: &str = include_str!("../tests/data/ultralytics-8.4.190-results.csv");
    const RESUME: &str = include_str!("../tests/data/ultralytics-8.4.190-resume-line.txt");

    /// Feed a log in chunks of `size` bytes, like read-output would.
    fn follow(bytes: &[u8], size: usize) -> (Monitor, Vec<Event>) {
        let mut splitter = LineSplitter::new();
        let mut monitor = Monitor::new();
        let mut events = Vec::new();
        for chunk in bytes.chunks(size) {
            for line in splitter.push(chunk) {
                events.extend(monitor.line(&line));
            }
        }
        if let Some(line) = splitter.finish() {
            events.extend(monitor.line(&line));
        }
        (monitor, events)
    }

    #[test]
    fn progress_over_the_real_train_log() {
        for size in [1, 7, 64, 4096, TRAIN_LOG.len()] {
            let (monitor, events) = follow(TRAIN_LOG, size);
            let progress: Vec<&EpochProgress> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Progress(p) => Some(p),
                    _ => None,
                })
                .collect();
            let seen: Vec<(u32, u32, u32)> = progress
                .iter()
                .map(|p| (p.epoch, p.epochs, p.batch_percent))
                .collect();
            assert_eq!(
                seen,
                vec![
                    (1, 2, 0),
                    (1, 2, 50),
                    (1, 2, 100),
                    (2, 2, 25),
                    (2, 2, 75),
                    (2, 2, 100)
                ],
                "chunk size {size}"
            );
            assert_eq!(progress[1].batches, Some((2, 4)));
            assert_eq!(progress[1].overall_percent(), 25.0);
            assert_eq!(progress[3].overall_percent(), 62.5);
            assert_eq!(progress.last().unwrap().overall_percent(), 100.0);
            assert_eq!(progress[1].message(), "epoch 1/2: 50% (2/4 batches)");

            let validations: Vec<Option<u32>> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Validation { epoch, values } => {
                        assert_eq!(values, &vec![4.0, 6.0, 0.0, 0.0, 0.0, 0.0]);
                        Some(*epoch)
                    }
                    _ => None,
                })
                .collect();
            // Two epochs plus the final validation of best.pt.
            assert_eq!(validations, vec![Some(1), Some(2), Some(2)]);

            let logs: Vec<&str> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Log(Notable::Info, l) => Some(l.as_str()),
                    _ => None,
                })
                .collect();
            assert!(
                logs.contains(&"Starting training for 2 epochs..."),
                "{logs:?}"
            );
            assert!(logs.contains(&"2 epochs completed in 0.000 hours."));
            assert!(logs.iter().all(|l| !l.contains('\u{1b}')));
            assert!(logs.iter().all(|l| parse_epoch_line(l).is_none()));
            assert_eq!(monitor.completed_epochs, Some(2));
            assert_eq!(monitor.epochs, Some(2));
            assert_eq!(monitor.error_line, None);
            assert_eq!(monitor.resumed_from_epoch, None);
        }
    }

    #[test]
    fn partial_lines_report_progress_once() {
        let mut m = Monitor::new();
        let line = "        1/2         0G      2.565      1.721      1.551          7         64: 50% ━━━━━━────── 2/4 5.4it/s 0.2s<0.4s";
        assert!(matches!(m.partial(line), Some(Event::Progress(_))));
        assert_eq!(m.partial(line), None);
        assert!(m.line(line).is_empty());
        // A line cut before its percent is not progress.
        assert_eq!(m.partial("        1/2         0G      2.5"), None);
    }

    #[test]
    fn epoch_line_edge_cases() {
        assert_eq!(parse_epoch_line("1/2"), None);
        assert_eq!(parse_epoch_line("   0/2  x 5%"), None);
        assert_eq!(parse_epoch_line("   3/2  x 5%"), None);
        assert_eq!(parse_epoch_line("  1/2 0G 1.0 no percent"), None);
        assert_eq!(
            parse_epoch_line(
                "      Epoch    GPU_mem   box_loss   cls_loss   dfl_loss  Instances       Size"
            ),
            None
        );
        let p = parse_epoch_line("       17/200      1.2G  1 2 3 4 640: 100% ━━━━ 120/120 3.1it/s")
            .unwrap();
        assert_eq!((p.epoch, p.epochs, p.batch_percent), (17, 200, 100));
        assert!((p.overall_percent() - 8.5).abs() < 1e-9);
    }

    #[test]
    fn error_line_of_the_bad_data_log() {
        let (monitor, events) = follow(BAD_LOG, 100);
        let line = monitor.error_line.clone().unwrap();
        assert!(
            line.starts_with("RuntimeError: Dataset '/data/demo/bad.yaml' error ❌"),
            "{line}"
        );
        assert!(
            line.ends_with("missing path '/data/demo/nowhere/images'"),
            "{line}"
        );
        assert_eq!(
            monitor.failure_message("exit code 1"),
            format!("{line} (exit code 1)")
        );
        assert!(events.contains(&Event::Log(Notable::Error, line.clone())));
        assert!(events.iter().any(
            |e| matches!(e, Event::Log(Notable::Error, l) if l.starts_with("FileNotFoundError: "))
        ));
    }

    #[test]
    fn error_line_detection() {
        assert!(is_error_line("RuntimeError: boom"));
        assert!(is_error_line("torch.OutOfMemoryError: CUDA out of memory"));
        assert!(is_error_line("KeyboardInterrupt"));
        assert!(is_error_line("Exception: x"));
        assert!(!is_error_line("    raise FileNotFoundError(m)"));
        assert!(!is_error_line("Error: not a python exception name?"));
        assert!(!is_error_line("Note dataset download directory is '/x'"));
        assert!(!is_error_line("engine/trainer: agnostic_nms=False"));
        let mut m = Monitor::new();
        m.line("Traceback (most recent call last):");
        m.line("Killed");
        assert_eq!(
            m.failure_message("killed by signal 9"),
            "yolo failed (killed by signal 9); last output: Traceback (most recent call last): | Killed"
        );
    }

    #[test]
    fn resume_line() {
        assert_eq!(parse_resume_line(RESUME), Some(16));
        let mut m = Monitor::new();
        let ev = m.line(RESUME.trim());
        assert_eq!(m.resumed_from_epoch, Some(16));
        assert!(matches!(&ev[..], [Event::Log(Notable::Info, _)]));
    }

    #[test]
    fn results_csv() {
        let rows = parse_results_csv(RESULTS);
        assert_eq!(rows.len(), 2);
        let last = rows.last().unwrap();
        assert_eq!(row_epoch(last), Some(2));
        let get = |name: &str| last.iter().find(|(c, _)| c == name).map(|(_, v)| *v);
        assert_eq!(get("metrics/mAP50(B)"), Some(0.0));
        assert_eq!(get("train/box_loss"), Some(2.93898));
        assert_eq!(get("lr/pg0"), Some(0.000841835));
        assert_eq!(last.len(), 15);
        let metrics = row_metrics(last);
        assert_eq!(metrics.len(), 14);
        assert!(metrics.iter().all(|(c, _)| c != "epoch"));

        // Padded headers (older Ultralytics), CRLF and a row still being written.
        let padded = "  epoch,   train/box_loss\r\n 1, 0.5\r\n 2, 0.4\r\n3,0.";
        let rows = parse_results_csv(padded);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1],
            vec![
                ("epoch".to_string(), 2.0),
                ("train/box_loss".to_string(), 0.4)
            ]
        );
        assert!(parse_results_csv("").is_empty());
        assert!(parse_results_csv("epoch,x\n").is_empty());
    }
}

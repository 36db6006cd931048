//! Reads MMDetection's training output (MMEngine's log lines on stdout, Python tracebacks on
//! stderr, both in the step's log) and `vis_data/scalars.json`, as MMDetection 3.3.0 / MMEngine
//! 0.10.7 write them (captured in `tests/data/`, from ../shared/realclient/mmdetection/).

/// Something worth reporting, from one line.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `Epoch(train) [e][i/n]  lr: …  eta: H:MM:SS  …  loss: …`
    Train {
        epoch: u32,
        iter: u32,
        iters: u32,
        eta: Option<String>,
        metrics: Vec<(String, f64)>,
    },
    /// `Epoch(val) [e][n/n]    coco/bbox_mAP: …` (the line with the metrics).
    Validation {
        epoch: u32,
        metrics: Vec<(String, f64)>,
    },
    /// `Saving checkpoint at N epochs`: `epoch_N.pth` is written.
    Saved {
        epoch: u32,
    },
    /// `The best checkpoint with X coco/bbox_mAP at N epoch is saved to FILE.`
    Best {
        epoch: u32,
        file: String,
    },
    /// `resumed epoch: E, iter: I`
    Resumed {
        epoch: u32,
    },
    /// CocoMetric found no detections: no metrics, and no best checkpoint for this validation.
    NoDetections,
    Warn(String),
    Error(String),
}

/// What the output said so far.
#[derive(Debug, Default)]
pub struct Monitor {
    pub last_epoch_saved: Option<u32>,
    pub resumed_from_epoch: Option<u32>,
    pub no_detections: bool,
    pub last_validation: Vec<(String, f64)>,
    /// The best checkpoint this run saved last: (epoch, file name).
    pub best: Option<(u32, String)>,
    /// The last line that looks like the end of a Python traceback (`SomeError: message`).
    last_exception: Option<String>,
    /// The last ERROR line of MMEngine.
    last_error: Option<String>,
}

impl Monitor {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn line(&mut self, line: &str) -> Option<Event> {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some((level, message)) = mmengine_line(line) {
            let event = match level {
                "WARNING" => Some(Event::Warn(message.to_owned())),
                "ERROR" => {
                    self.last_error = Some(message.to_owned());
                    if message.contains("The testing results of the whole dataset is empty") {
                        self.no_detections = true;
                        Some(Event::NoDetections)
                    } else {
                        Some(Event::Error(message.to_owned()))
                    }
                }
                _ => self.info(message),
            };
            return event;
        }
        if is_exception_line(line) {
            self.last_exception = Some(line.to_owned());
        }
        None
    }

    fn info(&mut self, message: &str) -> Option<Event> {
        if let Some(rest) = message.strip_prefix("Epoch(train)") {
            let Progress {
                epoch,
                iter,
                iters,
                pairs,
            } = epoch_iter(rest)?;
            let mut eta = None;
            let mut metrics = Vec::new();
            for (key, value) in pairs {
                if key == "eta" {
                    eta = Some(value.to_owned());
                } else if let Ok(v) = value.parse::<f64>() {
                    metrics.push((key.to_owned(), v));
                }
            }
            return Some(Event::Train {
                epoch,
                iter,
                iters,
                eta,
                metrics,
            });
        }
        if let Some(rest) = message.strip_prefix("Epoch(val)") {
            let Progress { epoch, pairs, .. } = epoch_iter(rest)?;
            let metrics: Vec<(String, f64)> = pairs
                .into_iter()
                .filter(|(k, _)| k.contains('/'))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse::<f64>().ok()?)))
                .collect();
            if metrics.is_empty() {
                return None;
            }
            self.last_validation = metrics.clone();
            return Some(Event::Validation { epoch, metrics });
        }
        if let Some(rest) = message.strip_prefix("Saving checkpoint at ") {
            let epoch = rest.strip_suffix(" epochs")?.trim().parse().ok()?;
            self.last_epoch_saved = Some(epoch);
            return Some(Event::Saved { epoch });
        }
        if let Some(rest) = message.strip_prefix("The best checkpoint with ") {
            let (before, file) = rest.split_once(" is saved to ")?;
            let epoch = before
                .rsplit_once(" at ")?
                .1
                .strip_suffix(" epoch")?
                .trim()
                .parse()
                .ok()?;
            let file = file.trim_end_matches('.').to_owned();
            self.best = Some((epoch, file.clone()));
            return Some(Event::Best { epoch, file });
        }
        if let Some(rest) = message.strip_prefix("resumed epoch: ") {
            let epoch = rest.split(',').next()?.trim().parse().ok()?;
            self.resumed_from_epoch = Some(epoch);
            return Some(Event::Resumed { epoch });
        }
        None
    }

    /// Why a run that exited with `exit` failed, from what it printed.
    pub fn failure_message(&self, exit: &str) -> String {
        match (&self.last_exception, &self.last_error) {
            (Some(e), _) => format!("MMDetection failed ({exit}): {e}"),
            (None, Some(e)) => format!("MMDetection failed ({exit}); its last error: {e}"),
            (None, None) => format!("MMDetection failed ({exit}); see the step's log"),
        }
    }
}

/// `MM/DD HH:MM:SS - mmengine - LEVEL - message` → (LEVEL, message).
fn mmengine_line(line: &str) -> Option<(&str, &str)> {
    let (_, rest) = line.split_once(" - mmengine - ")?;
    let (level, message) = rest.split_once(" - ")?;
    Some((level, message))
}

/// A line's `[e][i/n]` and its `key: value` pairs.
struct Progress<'a> {
    epoch: u32,
    iter: u32,
    iters: u32,
    pairs: Vec<(&'a str, &'a str)>,
}

/// ` [e][i/n]  key: value  key: value` (numbers may be right-aligned with spaces).
fn epoch_iter(rest: &str) -> Option<Progress<'_>> {
    let rest = rest.trim_start().strip_prefix('[')?;
    let (epoch, rest) = rest.split_once(']')?;
    let rest = rest.strip_prefix('[')?;
    let (progress, rest) = rest.split_once(']')?;
    let (iter, iters) = progress.split_once('/')?;
    let pairs = rest
        .split("  ")
        .filter_map(|p| p.trim().split_once(": "))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    Some(Progress {
        epoch: epoch.trim().parse().ok()?,
        iter: iter.trim().parse().ok()?,
        iters: iters.trim().parse().ok()?,
        pairs,
    })
}

/// `FileNotFoundError: [Errno 2] …`, `RuntimeError: …`, `KeyboardInterrupt`.
fn is_exception_line(line: &str) -> bool {
    let Some((name, _)) = line.split_once(':').or(Some((line, ""))) else {
        return false;
    };
    let name = name.rsplit('.').next().unwrap_or(name);
    !line.starts_with(' ')
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && (name.ends_with("Error") || name.ends_with("Exception") || name == "KeyboardInterrupt")
}

/// The validation records of a `scalars.json` (JSON Lines): per epoch (`step`), its `coco/…`
/// metrics. Train records (with `epoch` and `iter`) are skipped; unreadable lines too.
pub fn validations(scalars: &str) -> Vec<(u32, serde_json::Map<String, serde_json::Value>)> {
    scalars
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let record = v.as_object()?;
            if record.contains_key("iter") || !record.keys().any(|k| k.starts_with("coco/")) {
                return None;
            }
            let step = u32::try_from(record.get("step")?.as_u64()?).ok()?;
            let metrics = record
                .iter()
                .filter(|(k, _)| k.starts_with("coco/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some((step, metrics))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> (Monitor, Vec<Event>) {
        let mut m = Monitor::new();
        let events = text.lines().filter_map(|l| m.line(l)).collect();
        (m, events)
    }

    /// The real 2-epoch training (captures/20_final.stdout).
    #[test]
    fn a_real_training_reads_as_progress_validations_and_checkpoints() {
        let (m, events) = events(include_str!("../tests/data/20_final.stdout"));
        let trains: Vec<(u32, u32, u32)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Train {
                    epoch, iter, iters, ..
                } => Some((*epoch, *iter, *iters)),
                _ => None,
            })
            .collect();
        assert_eq!(
            trains,
            [
                (1, 2, 8),
                (1, 4, 8),
                (1, 6, 8),
                (1, 8, 8),
                (2, 2, 8),
                (2, 4, 8),
                (2, 6, 8),
                (2, 8, 8)
            ]
        );
        let Event::Train { eta, metrics, .. } = events
            .iter()
            .find(|e| matches!(e, Event::Train { .. }))
            .unwrap()
        else {
            unreachable!()
        };
        assert_eq!(eta.as_deref(), Some("0:00:04"));
        assert!(metrics.contains(&("loss".into(), 1.7636)), "{metrics:?}");
        assert!(metrics.contains(&("lr".into(), 2.2857e-3)), "{metrics:?}");
        let notable: Vec<&Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::Train { .. } | Event::Warn(_)))
            .collect();
        assert_eq!(notable.len(), 6, "{notable:?}");
        assert_eq!(*notable[0], Event::Saved { epoch: 1 });
        let Event::Validation { epoch: 1, metrics } = notable[1] else {
            panic!("{:?}", notable[1])
        };
        assert_eq!(metrics[0], ("coco/bbox_mAP".into(), 0.031));
        assert_eq!(metrics.len(), 6, "{metrics:?}");
        assert_eq!(
            *notable[2],
            Event::Best {
                epoch: 1,
                file: "best_coco_bbox_mAP_epoch_1.pth".into()
            }
        );
        assert_eq!(*notable[3], Event::Saved { epoch: 2 });
        assert_eq!(
            *notable[5],
            Event::Best {
                epoch: 2,
                file: "best_coco_bbox_mAP_epoch_2.pth".into()
            }
        );
        assert_eq!(m.last_epoch_saved, Some(2));
        assert!(!m.no_detections);
        assert_eq!(m.last_validation[0], ("coco/bbox_mAP".into(), 0.061));
    }

    #[test]
    fn a_resume_says_where_it_resumed() {
        let (m, events) = events(include_str!("../tests/data/12_resume_b.stdout"));
        assert!(events.contains(&Event::Resumed { epoch: 1 }));
        assert_eq!(m.resumed_from_epoch, Some(1));
        let first = events
            .iter()
            .find_map(|e| match e {
                Event::Train { epoch, iter, .. } => Some((*epoch, *iter)),
                _ => None,
            })
            .unwrap();
        assert_eq!(first, (2, 2));
    }

    #[test]
    fn a_bad_dataset_path_fails_with_the_python_exception() {
        let (mut m, _) = events(
            "12/06 05:40:10 - mmengine - INFO - Checkpoints will be saved to /w.\nloading annotations into memory...",
        );
        for line in include_str!("../tests/data/14_badpath.stderr").lines() {
            m.line(line);
        }
        assert_eq!(
            m.failure_message("exit code 1"),
            "MMDetection failed (exit code 1): FileNotFoundError: [Errno 2] No such file or \
             directory: '/nonexistent/shapes/annotations/train.json'"
        );
    }

    #[test]
    fn no_detections_is_noticed() {
        let (m, events) = events(
            "12/06 05:52:49 - mmengine - ERROR - /venv/lib/python3.11/site-packages/mmdet/evaluation/metrics/coco_metric.py - compute_metrics - 465 - The testing results of the whole dataset is empty.\n\
             12/06 05:52:49 - mmengine - WARNING - Since `metrics` is an empty dict, the behavior to save the best checkpoint will be skipped in this evaluation.",
        );
        assert!(m.no_detections);
        assert_eq!(events[0], Event::NoDetections);
        assert!(matches!(events[1], Event::Warn(_)));
    }

    #[test]
    fn right_aligned_epochs_and_iterations_parse() {
        let mut m = Monitor::new();
        let e = m.line("12/06 06:01:02 - mmengine - INFO - Epoch(train)  [1][ 5/80]  lr: 1.0000e-02  eta: 0:01:10  loss: 1.5");
        assert!(
            matches!(
                e,
                Some(Event::Train {
                    epoch: 1,
                    iter: 5,
                    iters: 80,
                    ..
                })
            ),
            "{e:?}"
        );
        let e = m.line("12/06 06:01:02 - mmengine - INFO - Epoch(train) [10][80/80]  lr: 1.0000e-02  eta: 0:00:00  loss: 1.5");
        assert!(
            matches!(
                e,
                Some(Event::Train {
                    epoch: 10,
                    iter: 80,
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn scalars_json_gives_each_validation() {
        let v = validations(include_str!("../tests/data/scalars.json"));
        let epochs: Vec<u32> = v.iter().map(|(e, _)| *e).collect();
        assert_eq!(epochs, [1, 2]);
        assert_eq!(v[1].1["coco/bbox_mAP"], serde_json::json!(0.061));
        assert!(v[0].1.keys().all(|k| k.starts_with("coco/")));
    }
}

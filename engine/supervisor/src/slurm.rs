//! Launching under Slurm: the supervisor runs as the batch script of a Slurm job, so the
//! program runs on whatever node Slurm picks, under the same supervision contract as a local
//! launch (its own process group, the append-only log, `exit.json` written atomically), in a
//! state directory every node sees (a shared file system). The job id is recorded in the state
//! directory (`slurm-job.json`, fsynced: the job outlives the engine's machine), so any engine
//! re-attaches by job id; the job's name is derived from the state directory, so a job submitted
//! by an engine that died before recording its id is found again (`squeue --name`) instead of
//! submitted twice. Whether the job is alive, and how it ended when no exit record was written
//! (cancelled, timed out, preempted, node failure), is read from `scontrol show job`.
//!
//! Only `sbatch`, `squeue`, `scontrol` and `scancel` are used (no accounting database).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::records::{self, Durability};
use crate::{Error, Result};

const JOB_FILE: &str = "slurm-job.json";
const SCRIPT_FILE: &str = "slurm-job.sh";
/// Longest a Slurm command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How a step's programs are submitted to Slurm (`configs/launchers.yaml`, and what the runner
/// adds per step).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// More `sbatch` arguments, as given (e.g. `--qos=high`, `--constraint=a100`).
    pub sbatch_args: Vec<String>,
    /// `--gres=gpu:N` when N > 0: the step's GPU lease (Slurm sets CUDA_VISIBLE_DEVICES).
    pub gpus: u32,
    /// `--time`, rounded up to whole minutes: the step's timeout.
    pub time_limit: Option<Duration>,
    /// Prefix of the job's name, e.g. `kiln-<run>-<step>`.
    pub name: String,
    /// Where `sbatch`, `squeue`, `scontrol` and `scancel` are looked up (empty: PATH).
    pub bin_dir: Option<PathBuf>,
}

/// The job id of a launch, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub job_id: String,
    pub job_name: String,
    pub submitted_at: String,
}

/// What Slurm says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for resources, priority, a dependency... (`Reason`).
    Pending { reason: String },
    /// Running, configuring, completing, suspended or requeued: not ended.
    Active { state: String },
    /// Ended: COMPLETED, FAILED, CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, OUT_OF_MEMORY...
    Ended { state: String, reason: String },
    /// Slurm no longer knows the job (purged after `MinJobAge`).
    Unknown,
}

impl JobState {
    pub fn is_ended(&self) -> bool {
        matches!(self, JobState::Ended { .. } | JobState::Unknown)
    }

    /// "CANCELLED (reason None)", for error messages.
    pub fn describe(&self) -> String {
        match self {
            JobState::Pending { reason } => format!("PENDING ({reason})"),
            JobState::Active { state } => state.clone(),
            JobState::Ended { state, reason } if reason.is_empty() || reason == "None" => {
                state.clone()
            }
            JobState::Ended { state, reason } => format!("{state} ({reason})"),
            JobState::Unknown => "no longer known to Slurm".into(),
        }
    }
}

impl SlurmOptions {
    fn command(&self, name: &str) -> tokio::process::Command {
        let program = match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        };
        let mut c = tokio::process::Command::new(program);
        c.stdin(std::process::Stdio::null()).kill_on_drop(true);
        c
    }

    /// Run a Slurm command; its stdout, or an error with its stderr (Slurm's own message).
    async fn run(&self, name: &str, args: &[String]) -> Result<String> {
        let out = tokio::time::timeout(COMMAND_TIMEOUT, self.command(name).args(args).output())
            .await
            .map_err(|_| Error::Slurm {
                command: name.to_owned(),
                message: format!("no answer in {} s", COMMAND_TIMEOUT.as_secs()),
            })?
            .map_err(|e| Error::Slurm {
                command: name.to_owned(),
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    match &self.bin_dir {
                        Some(dir) => format!(
                            "`{name}` is not in {} (`slurm.bin_dir` of configs/launchers.yaml)",
                            dir.display()
                        ),
                        None => format!(
                            "`{name}` is not installed or not on PATH (the Slurm launcher needs \
                             sbatch, squeue, scontrol and scancel)"
                        ),
                    }
                } else {
                    e.to_string()
                },
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr
                .lines()
                .map(|l| l.trim_start_matches(&format!("{name}: ")).trim())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::Slurm {
                command: name.to_owned(),
                message: if message.is_empty() {
                    format!("exited with {}", out.status)
                } else {
                    message
                },
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The name of the job of the launch in `state_dir`: the prefix and a hash of the folder,
    /// at most 120 characters, so the job is found again by name.
    pub fn job_name(&self, state_dir: &Path) -> String {
        // FNV-1a over the path's bytes: the same name from every build and machine (an engine
        // upgraded between a crash and its resume still finds the job).
        use std::os::unix::ffi::OsStrExt;
        let hash = state_dir
            .as_os_str()
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        let prefix: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect();
        format!("{prefix}-{hash:016x}")
    }

    /// Submit the supervisor of `state_dir` as a batch job; returns the job id.
    async fn submit(&self, supervisor_exe: &Path, state_dir: &Path) -> Result<String> {
        let state_err = |source| Error::State {
            path: state_dir.to_owned(),
            source,
        };
        let script = state_dir.join(SCRIPT_FILE);
        let body = format!(
            "#!/bin/sh\n# Kiln: the supervisor of one launch (see slurm-job.json beside it).\nexec {} supervise {}\n",
            shell_quote(&supervisor_exe.display().to_string()),
            shell_quote(&state_dir.display().to_string())
        );
        std::fs::write(&script, body).map_err(state_err)?;
        let mut args = vec![
            "--parsable".to_owned(),
            format!("--job-name={}", self.job_name(state_dir)),
            // Relative to --chdir: a `%` in the workspace's path would be a filename pattern.
            "--output=slurm-%j.out".to_owned(),
            format!("--chdir={}", state_dir.display()),
            // Nothing of the engine's environment: the program's comes from spec.json, plus what
            // Slurm sets for the job (CUDA_VISIBLE_DEVICES with --gres).
            "--export=NONE".to_owned(),
            // A job Slurm kills (node failure, preemption) is an infrastructure failure that
            // Kiln's retry policy resumes from the last checkpoint, not a silent rerun.
            "--no-requeue".to_owned(),
        ];
        if self.gpus > 0 {
            args.push(format!("--gres=gpu:{}", self.gpus));
        }
        if let Some(limit) = self.time_limit {
            args.push(format!("--time={}", limit.as_secs().div_ceil(60).max(1)));
        }
        if let Some(p) = &self.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.account {
            args.push(format!("--account={a}"));
        }
        args.extend(self.sbatch_args.iter().cloned());
        args.push(script.display().to_string());
        let out = self.run("sbatch", &args).await?;
        // --parsable: "ID" or "ID;CLUSTER".
        let id = out.trim().split(';').next().unwrap_or("").trim().to_owned();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(Error::Slurm {
                command: "sbatch".into(),
                message: format!("unexpected answer {out:?} (expected a job id)"),
            });
        }
        Ok(id)
    }

    /// The id of a job named `name` that Slurm still knows, if any.
    async fn find(&self, name: &str) -> Result<Option<String>> {
        let out = self
            .run(
                "squeue",
                &[
                    "--noheader".into(),
                    "--format=%i".into(),
                    // Finished jobs too (until Slurm forgets them, MinJobAge).
                    "--states=all".into(),
                    format!("--name={name}"),
                ],
            )
            .await?;
        Ok(out
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned))
    }

    /// What Slurm says about job `id`.
    pub async fn state(&self, id: &str) -> Result<JobState> {
        match self
            .run(
                "scontrol",
                &["show".into(), "job".into(), "--oneliner".into(), id.into()],
            )
            .await
        {
            Ok(out) => Ok(parse_job_state(&out)),
            Err(Error::Slurm { message, .. }) if message.contains("Invalid job id") => {
                Ok(JobState::Unknown)
            }
            Err(e) => Err(e),
        }
    }

    /// Signal every process of job `id` (`scancel --full`), or cancel it (no signal: Slurm sends
    /// SIGTERM, then SIGKILL after its KillWait).
    pub async fn cancel(&self, id: &str, signal: Option<&str>) -> Result<()> {
        let mut args = Vec::new();
        if let Some(sig) = signal {
            args.push(format!("--signal={sig}"));
            args.push("--full".into());
        }
        args.push(id.to_owned());
        self.run("scancel", &args).await.map(|_| ())
    }

    /// Cancel whatever job of the launch in `state_dir` Slurm has, recorded or not (a submission
    /// whose answer was lost, a cancel while sbatch runs).
    pub async fn cancel_launch(&self, state_dir: &Path, grace: Duration) {
        match read_job(state_dir) {
            Ok(Some(job)) => self.terminate(&job.job_id, grace).await,
            _ => {
                if let Ok(Some(id)) = self.find(&self.job_name(state_dir)).await {
                    self.terminate(&id, grace).await;
                }
            }
        }
    }

    /// SIGTERM every process of the job, wait up to `grace` for the job to end, then cancel it
    /// (SIGKILL after Slurm's KillWait) and wait until it has ended (at most a minute more).
    pub async fn terminate(&self, id: &str, grace: Duration) {
        let ended = |s: Result<JobState>| s.map(|s| s.is_ended()).unwrap_or(false);
        match self.state(id).await {
            Ok(s) if s.is_ended() => return,
            // Nothing runs yet: no signal to pass on (scancel --signal waits for a pending job).
            Ok(JobState::Pending { .. }) => {
                if let Err(e) = self.cancel(id, None).await
                    && !ended(self.state(id).await)
                {
                    tracing::warn!(job_id = id, "scancel: {e}");
                }
                return;
            }
            _ => {}
        }
        if let Err(e) = self.cancel(id, Some("TERM")).await
            && !ended(self.state(id).await)
        {
            tracing::warn!(job_id = id, "scancel --signal=TERM: {e}");
        }
        let deadline = tokio::time::Instant::now() + grace.min(crate::MAX_GRACE);
        while tokio::time::Instant::now() < deadline {
            if ended(self.state(id).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Err(e) = self.cancel(id, None).await
            && !ended(self.state(id).await)
        {
            tracing::warn!(job_id = id, "scancel: {e}");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline && !ended(self.state(id).await) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The job of the launch in `state_dir`: the recorded one, or one of its name that an
    /// engine submitted and died before recording, or (`submit` true) a new one. None when there
    /// is none and `submit` is false.
    pub(crate) async fn job_for(
        &self,
        supervisor_exe: &Path,
        state_dir: &Path,
        submit: bool,
    ) -> Result<Option<JobRecord>> {
        if let Some(job) = read_job(state_dir)? {
            return Ok(Some(job));
        }
        let name = self.job_name(state_dir);
        let id = match self.find(&name).await? {
            Some(id) => id,
            None if submit => {
                // A job already ran this launch and Slurm has forgotten it: never a second one.
                if records::read_child(state_dir)?.is_some()
                    || records::read_exit(state_dir)?.is_some()
                {
                    return Ok(None);
                }
                match self.submit(supervisor_exe, state_dir).await {
                    Ok(id) => id,
                    // sbatch may have submitted the job and lost the answer (a timeout, a busy
                    // controller): a queued or running job of this name is that job. One that
                    // ended at once is what sbatch refused (Slurm keeps it as FAILED), and the
                    // error stands.
                    Err(e) => match self.find(&name).await {
                        Ok(Some(id))
                            if matches!(
                                self.state(&id).await,
                                Ok(JobState::Pending { .. } | JobState::Active { .. })
                            ) =>
                        {
                            id
                        }
                        _ => return Err(e),
                    },
                }
            }
            None => return Ok(None),
        };
        let job = JobRecord {
            job_id: id,
            job_name: name,
            submitted_at: records::now_rfc3339(),
        };
        records::write_json_atomic(&state_dir.join(JOB_FILE), &job, Durability::Machine).map_err(
            |source| Error::State {
                path: state_dir.to_owned(),
                source,
            },
        )?;
        Ok(Some(job))
    }
}

/// The Slurm job recorded for the launch in `state_dir`.
pub fn read_job(state_dir: &Path) -> Result<Option<JobRecord>> {
    records::read_json(&state_dir.join(JOB_FILE))
}

fn parse_job_state(out: &str) -> JobState {
    let field = |key: &str| {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or("")
            .to_owned()
    };
    let state = field("JobState");
    let reason = field("Reason");
    match state.as_str() {
        "" => JobState::Unknown,
        "PENDING" => JobState::Pending { reason },
        "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED" | "REQUEUE_HOLD"
        | "REQUEUE_FED" | "RESIZING" | "SIGNALING" | "STAGE_OUT" | "STOPPED" | "RESV_DEL_HOLD" => {
            JobState::Active { state }
        }
        _ => JobState::Ended { state, reason },
    }
}

/// `s` as one word for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_are_read_from_scontrol() {
        let line = "JobId=7 JobName=kiln-x UserId=root(0) JobState=PENDING Reason=Resources Dependency=(null)";
        assert_eq!(
            parse_job_state(line),
            JobState::Pending {
                reason: "Resources".into()
            }
        );
        let line = "JobId=7 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15";
        assert_eq!(
            parse_job_state(line),
            JobState::Ended {
                state: "TIMEOUT".into(),
                reason: "TimeLimit".into()
            }
        );
        assert!(!parse_job_state("JobId=7 JobState=COMPLETING Reason=None").is_ended());
        assert_eq!(parse_job_state(""), JobState::Unknown);
    }

    #[test]
    fn job_names_are_stable_per_launch_and_safe() {
        let o = SlurmOptions {
            name: "kiln-run 1/train".into(),
            ..Default::default()
        };
        let a = o.job_name(Path::new("/ws/.kiln/runs/r/state/train/attempt-1/launch-1"));
        assert_eq!(
            a,
            o.job_name(Path::new("/ws/.kiln/runs/r/state/train/attempt-1/launch-1"))
        );
        assert_ne!(
            a,
            o.job_name(Path::new("/ws/.kiln/runs/r/state/train/attempt-2/launch-1"))
        );
        assert!(a.starts_with("kiln-run_1_train-"), "{a}");
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}

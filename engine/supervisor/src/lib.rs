//! Launching training programs so that they outlive the engine.
//!
//! The engine never spawns a training program directly. It writes a [`LaunchSpec`] into a
//! per-launch *state directory* and starts a small **supervisor** process (`kiln supervise DIR`,
//! the same binary) in a new session. The supervisor starts the program in its own process group,
//! sends its stdout and stderr to an append-only log file, and when the program ends writes the
//! exit status to `DIR/exit.json`. Every record is written atomically (temp file, rename), so an
//! engine that was killed and restarted can learn what happened from disk alone. Only `exit.json`
//! is fsynced: it is the one record that outlives its program; `spec.json` and `child.json`
//! describe a program that a machine crash kills with them, and one of them left unreadable by a
//! crash (written before the last boot) reads as absent: the launch did not start, or is lost.
//!
//! ```text
//! DIR/spec.json    what to run (written by the engine)
//! DIR/child.json   pid, process group and start times of program and supervisor
//! DIR/exit.json    exit code or signal, or why it could not start (written by the supervisor)
//! ```
//!
//! [`Supervised::launch_or_attach`] is keyed by the state directory: called again for the same
//! directory (an engine restarted after a crash), it re-attaches to the program that is running or
//! has ended instead of starting a second copy. A program that is gone without an exit record
//! (the machine rebooted, the supervisor was killed) is reported as [`Error::Lost`].
//!
//! Architecture invariant: this crate knows nothing about plugins, workflows or the database.

mod proc_info;
mod records;
pub mod slurm;
mod supervise;

pub use proc_info::{ProcessIdentity, Sig, group_alive, host_name, machine_id, signal_group};
pub use records::{ChildRecord, ExitRecord, LaunchSpec, read_child, read_exit, read_spec};
pub use slurm::{JobState, SlurmOptions};
pub use supervise::run as supervise_main;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Errors of launching and following supervised programs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write launch state in {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the supervisor {exe}: {source}")]
    SpawnSupervisor {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start `{program}`: {message}")]
    Start { program: String, message: String },
    /// The program is gone and nobody recorded how it ended: an infrastructure failure.
    #[error("`{program}` (pid {pid}) is gone without an exit record ({why}); see {state_dir}")]
    Lost {
        program: String,
        pid: i32,
        why: String,
        state_dir: PathBuf,
    },
    #[error("malformed supervisor record {path}: {message}")]
    Record { path: PathBuf, message: String },
    /// A Slurm command failed; `message` is Slurm's own.
    #[error("Slurm: {command}: {message}")]
    Slurm { command: String, message: String },
}

impl Error {
    /// True for failures of the machine or the engine rather than of the program itself.
    pub fn is_infrastructure(&self) -> bool {
        match self {
            Self::Lost { .. } | Self::SpawnSupervisor { .. } => true,
            // sbatch refusing the job (a bad partition, GPUs no node has) is the step's
            // configuration; Slurm not answering is the cluster's failure.
            Self::Slurm { message, .. } => {
                message.starts_with("no answer") || message.contains("Unable to contact")
            }
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a launch's supervisor runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Launcher {
    /// A process on this machine, in a new session (the default).
    #[default]
    Local,
    /// The batch script of a Slurm job, on whatever node Slurm picks (see [`slurm`]).
    Slurm(SlurmOptions),
}

/// A program running (or ended) under a supervisor.
#[derive(Debug)]
pub struct Supervised {
    /// Our child when we started the supervisor; None after a re-attach or under Slurm.
    supervisor: Option<tokio::process::Child>,
    /// The supervisor's stdout while it is open: it closes once the exit is recorded, before
    /// the record is fsynced (see [`Supervised::wait`]).
    notices: Option<tokio::process::ChildStdout>,
    /// The supervisor holds descriptors of ours (GPU leases): the launch ends with it.
    holds_fds: bool,
    state_dir: PathBuf,
    child: ChildRecord,
    program: String,
    attached: bool,
    /// The Slurm job the supervisor runs as, with the options to ask Slurm about it.
    job: Option<(SlurmOptions, String)>,
}

/// Set in the environment of a supervisor whose stdout is a pipe the engine reads.
pub(crate) const NOTICES_ENV: &str = "KILN_SUPERVISE_NOTICES";

/// How often a launch under Slurm asks Slurm about its job while following it.
const SLURM_POLL: Duration = Duration::from_secs(2);

/// How often a re-attached engine looks for the exit record.
const POLL: Duration = Duration::from_millis(100);

/// How long a launch written on another machine, without a recorded program, is waited for
/// before it is started again here.
const FOREIGN_SPEC_WAIT: Duration = Duration::from_secs(30);

/// How long a supervisor's heartbeat may stand still, as this engine watches it, before its
/// program counts as gone: well past the 8 s after which a supervisor that cannot beat stops
/// its program itself, so a program taken for gone is gone.
const REMOTE_SILENCE: Duration = Duration::from_secs(20);

/// The counter in a launch's heartbeat file (read through `open`, which makes a network file
/// system look again).
fn read_beat(state_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(state_dir.join(records::HEARTBEAT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the supervisor of the launch in `state_dir` beats: its counter changes within
/// [`REMOTE_SILENCE`] of watching it (this engine's own clock: the machines' clocks and the
/// file system's timestamps play no part), or its exit is recorded meanwhile.
pub async fn remote_alive(state_dir: &Path) -> bool {
    let first = read_beat(state_dir);
    let deadline = tokio::time::Instant::now() + REMOTE_SILENCE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if matches!(records::read_exit(state_dir), Ok(Some(_))) {
            return true;
        }
        let now = read_beat(state_dir);
        if now.is_some() && now != first {
            return true;
        }
    }
    false
}

/// Asks the supervisor of the launch in `state_dir` to stop its program (SIGTERM, SIGKILL
/// after `grace`), written whole (by rename).
pub fn request_stop(state_dir: &Path, grace: Duration) {
    let tmp = state_dir.join(format!("{}.tmp", records::STOP_FILE));
    if std::fs::write(&tmp, grace.as_secs().to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, state_dir.join(records::STOP_FILE));
    }
}

/// [`request_stop`], then waits for the exit record while the supervisor beats (at most
/// `grace` + 60 s): how an engine stops a program whose processes it cannot see. Returns
/// whether the program ended (or its supervisor fell silent, which stops it).
pub async fn stop_by_request(state_dir: &Path, grace: Duration) -> bool {
    request_stop(state_dir, grace);
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(60);
    let mut beat = read_beat(state_dir);
    let mut changed = tokio::time::Instant::now();
    loop {
        if matches!(records::read_exit(state_dir), Ok(Some(_))) {
            return true;
        }
        let now = tokio::time::Instant::now();
        let b = read_beat(state_dir);
        if b != beat {
            (beat, changed) = (b, now);
        }
        if changed.elapsed() >= REMOTE_SILENCE {
            return true;
        }
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the launch in `state_dir` was written on this machine (or by an earlier version,
/// which wrote only locally).
fn written_here(state_dir: &Path) -> bool {
    match records::read_spec(state_dir) {
        Ok(Some(spec)) => spec.machine.is_empty() || spec.machine == machine_id(),
        _ => true,
    }
}

/// How long ago the launch's `spec.json` was written (long ago when unknown).
fn spec_age(state_dir: &Path) -> Duration {
    std::fs::metadata(state_dir.join(records::SPEC_FILE))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(Duration::MAX)
}

impl Supervised {
    /// Start `spec` under a supervisor run from `supervisor_exe` (normally the `kiln` binary),
    /// or, when `state_dir` already holds this launch, re-attach to it. `inherit_fds` stay open in
    /// the supervisor and the program (e.g. GPU slot locks, held until the last of them exits).
    /// Returns once the program has started, with its pid and process group known.
    ///
    /// Under [`Launcher::Slurm`] the supervisor is submitted as a batch job (the job id is
    /// recorded in `state_dir`) and this returns once the job has started the program;
    /// meanwhile `on_queue` hears the job's queue state ("PENDING (Resources)") when it changes.
    pub async fn launch_or_attach(
        launcher: &Launcher,
        supervisor_exe: &Path,
        state_dir: &Path,
        spec: &LaunchSpec,
        inherit_fds: &[RawFd],
        on_queue: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Self> {
        if let Launcher::Slurm(options) = launcher {
            return Self::slurm(options, supervisor_exe, state_dir, spec, on_queue).await;
        }
        let program = spec.program.display().to_string();
        let recorded = records::read_spec(state_dir)?.is_some();
        if recorded {
            if let Some(attached) = Self::attach(state_dir, &program).await? {
                return Ok(attached);
            }
            tracing::info!(state_dir = %state_dir.display(), "launch was recorded but never started; starting it");
        }
        Self::launch(supervisor_exe, state_dir, spec, inherit_fds, recorded).await
    }

    /// Re-attach to the launch recorded in `state_dir`. Ok(None) when it never started.
    async fn attach(state_dir: &Path, program: &str) -> Result<Option<Self>> {
        let attached = |child: ChildRecord| Self {
            supervisor: None,
            notices: None,
            holds_fds: false,
            state_dir: state_dir.to_owned(),
            child,
            program: program.to_owned(),
            attached: true,
            job: None,
        };
        // A supervisor may be starting right now: give it a moment to record the child.
        let mut waited = Duration::ZERO;
        loop {
            if let Some(child) = records::read_child(state_dir)? {
                let me = attached(child);
                if me.try_exit()?.is_none() && !me.local() {
                    if remote_alive(state_dir).await {
                        return Ok(Some(me));
                    }
                    // Should it beat again (the folder was out of reach), it stops.
                    request_stop(state_dir, Duration::from_secs(10));
                    let host = &me.child.host;
                    return Err(me.lost(&format!(
                        "it was started on {} (another machine or container), whose processes \
                         this engine cannot see, and its supervisor has not beaten for {} s: \
                         that machine or the supervisor is gone",
                        if host.is_empty() {
                            "another host"
                        } else {
                            host
                        },
                        REMOTE_SILENCE.as_secs()
                    )));
                }
                if me.try_exit()?.is_none() && !me.alive() {
                    return Err(me.lost("neither the program nor its supervisor is running"));
                }
                return Ok(Some(me));
            }
            if let Some(exit) = records::read_exit(state_dir)? {
                return Err(not_started(program, exit));
            }
            if !proc_info::supervisor_running_for(state_dir) || waited > Duration::from_secs(5) {
                // Written by an engine of another machine, whose supervisor this one cannot
                // see starting: started again only once that would have long recorded its
                // program (otherwise two supervisors could start one launch).
                if !written_here(state_dir) && spec_age(state_dir) < FOREIGN_SPEC_WAIT {
                    tokio::time::sleep(POLL).await;
                    waited += POLL;
                    continue;
                }
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
            waited += POLL;
        }
    }

    /// Starts the supervisor of a launch; `restart`: its `spec.json` exists from a launch that
    /// never started (it is replaced), else it must not exist yet.
    async fn launch(
        supervisor_exe: &Path,
        state_dir: &Path,
        spec: &LaunchSpec,
        inherit_fds: &[RawFd],
        restart: bool,
    ) -> Result<Self> {
        let state_err = |source| Error::State {
            path: state_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(state_err)?;
        // Created only if absent: of two engines launching one launch at once (one of them
        // about to learn it lost the run), one launches and the other re-attaches.
        let spec_file = state_dir.join(records::SPEC_FILE);
        let spec = &LaunchSpec {
            machine: machine_id(),
            ..spec.clone()
        };
        let written = match restart {
            true => records::write_json_atomic(&spec_file, spec, records::Durability::Process),
            false => records::write_json_new(&spec_file, spec),
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let program = spec.program.display().to_string();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    if let Some(attached) = Self::attach(state_dir, &program).await? {
                        return Ok(attached);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::State {
                            path: state_dir.to_owned(),
                            source: std::io::Error::other(
                                "another engine launched this at the same moment and has not \
                                 recorded its program",
                            ),
                        });
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
            Err(e) => return Err(state_err(e)),
        }
        let supervisor_log =
            std::fs::File::create(state_dir.join("supervisor.log")).map_err(state_err)?;
        let mut command = tokio::process::Command::new(supervisor_exe);
        command
            .arg("supervise")
            .arg(state_dir)
            .env_clear()
            // Asks for the notices on stdout: a byte once the started program is recorded, the
            // end once its exit record can be read (see `supervise.rs`).
            .env(NOTICES_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(supervisor_log)
            // The supervisor must survive the engine: never kill it when the handle drops.
            .kill_on_drop(false);
        if !inherit_fds.is_empty() {
            let fds = inherit_fds.to_vec();
            // SAFETY: runs in the forked child before exec and only calls fcntl, which is
            // async-signal-safe; it clears close-on-exec so these descriptors are inherited.
            unsafe {
                command.pre_exec(move || {
                    for fd in &fds {
                        proc_info::clear_cloexec(*fd)?;
                    }
                    Ok(())
                });
            }
        }
        let mut supervisor = command.spawn().map_err(|source| Error::SpawnSupervisor {
            exe: supervisor_exe.to_owned(),
            source,
        })?;
        let program = spec.program.display().to_string();
        // Wait for the supervisor to record the started child (or its failure to start): it
        // takes a few milliseconds. The supervisor writes a byte to its stdout once the record
        // is written (an older one closed it instead; it closes when it ends), which wakes this
        // at once; looking every 2 ms is for a supervisor that did neither.
        let mut notices = supervisor.stdout.take();
        loop {
            // The exit record first: a program that ends at once may have both records by the
            // time the second is read, and read the other way round it would look as if it had
            // never started.
            let exit = records::read_exit(state_dir)?;
            if let Some(child) = records::read_child(state_dir)? {
                return Ok(Self {
                    supervisor: Some(supervisor),
                    notices,
                    holds_fds: !inherit_fds.is_empty(),
                    state_dir: state_dir.to_owned(),
                    child,
                    program,
                    attached: false,
                    job: None,
                });
            }
            if let Some(exit) = exit {
                return Err(not_started(&program, exit));
            }
            if let Ok(Some(_)) = supervisor.try_wait()
                && records::read_child(state_dir)?.is_none()
                && records::read_exit(state_dir)?.is_none()
            {
                return Err(Error::Start {
                    program,
                    message: format!(
                        "the supervisor exited without starting it (see {})",
                        state_dir.join("supervisor.log").display()
                    ),
                });
            }
            match notices.as_mut() {
                Some(out) => {
                    use tokio::io::AsyncReadExt as _;
                    let mut drained = [0u8; 512];
                    let read = out.read(&mut drained);
                    // A byte: the record is there. Closed: the record is there, or the
                    // supervisor is gone. Otherwise (a timeout) look again.
                    if let Ok(Ok(0) | Err(_)) =
                        tokio::time::timeout(Duration::from_millis(100), read).await
                    {
                        notices = None;
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// Submit (or find again) the job of `state_dir` and wait until it has started the program.
    async fn slurm(
        options: &SlurmOptions,
        supervisor_exe: &Path,
        state_dir: &Path,
        spec: &LaunchSpec,
        on_queue: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Self> {
        let program = spec.program.display().to_string();
        let state_err = |source| Error::State {
            path: state_dir.to_owned(),
            source,
        };
        let attached = slurm::read_job(state_dir)?.is_some();
        // A launch started without Slurm (the workspace used the local launcher then, or an
        // engine of another machine did): followed as such, here or through its heartbeat.
        if !attached
            && !state_dir.join("slurm-job.sh").exists()
            && records::read_child(state_dir)?.is_some()
            && let Some(me) = Self::attach(state_dir, &program).await?
        {
            return Ok(me);
        }
        if records::read_spec(state_dir)?.is_none() {
            std::fs::create_dir_all(state_dir).map_err(state_err)?;
            // Read on another node once the job starts: made durable like the job record.
            records::write_json_atomic(
                &state_dir.join(records::SPEC_FILE),
                spec,
                records::Durability::Machine,
            )
            .map_err(state_err)?;
        }
        let Some(job) = options.job_for(supervisor_exe, state_dir, true).await? else {
            // The launch ran (its records are here) and Slurm has forgotten its job.
            let child = records::read_child(state_dir)?;
            return match (child, records::read_exit(state_dir)?) {
                (Some(child), Some(_)) => Ok(Self {
                    supervisor: None,
                    notices: None,
                    holds_fds: false,
                    state_dir: state_dir.to_owned(),
                    child,
                    program,
                    attached: true,
                    job: None,
                }),
                (None, Some(exit)) => Err(not_started(&program, exit)),
                (child, None) => Err(Error::Lost {
                    program,
                    pid: child.map_or(0, |c| c.pid),
                    why: "its Slurm job is no longer known to Slurm and recorded no exit".into(),
                    state_dir: state_dir.to_owned(),
                }),
            };
        };
        let id = job.job_id;
        let started = |child: ChildRecord| Self {
            supervisor: None,
            notices: None,
            holds_fds: false,
            state_dir: state_dir.to_owned(),
            child,
            program: program.clone(),
            attached,
            job: Some((options.clone(), id.clone())),
        };
        let mut told = String::new();
        let mut looks = 0u32;
        loop {
            if let Some(child) = records::read_child(state_dir)? {
                return Ok(started(child));
            }
            if let Some(exit) = records::read_exit(state_dir)? {
                return Err(not_started(&program, exit));
            }
            let state = match options.state(&id).await {
                Ok(state) => state,
                // Slurm not answering for a while (a controller restart) loses no place in
                // the queue: keep asking (the step's timeout and a cancel still end the wait).
                Err(e) => {
                    tracing::warn!(job_id = %id, "asking Slurm about the queued job: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match state {
                JobState::Pending { reason } => {
                    let message = format!("Slurm job {id} is PENDING ({reason})");
                    if message != told {
                        on_queue(&message);
                        told = message;
                    }
                }
                JobState::Active { .. } => {}
                ended => {
                    // Records written just before the job ended (a shared file system may show
                    // them a moment late).
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Some(child) = records::read_child(state_dir)? {
                        return Ok(started(child));
                    }
                    if let Some(exit) = records::read_exit(state_dir)? {
                        return Err(not_started(&program, exit));
                    }
                    return Err(Error::Lost {
                        program,
                        pid: 0,
                        why: format!(
                            "Slurm job {id} ended {} before its supervisor started the program \
                             (its output: slurm-{id}.out)",
                            ended.describe()
                        ),
                        state_dir: state_dir.to_owned(),
                    });
                }
            }
            looks += 1;
            let pause = if looks < 20 { 100 } else { 1000 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// When the program was ended by a signal and its Slurm job ended as cancelled, timed out,
    /// preempted or with its node failing: why, for an infrastructure failure (the scheduler
    /// stopped a program that did nothing wrong; Kiln's retry policy resumes it). None for a
    /// local launch or a program that ended by itself.
    pub async fn stopped_by_scheduler(&self, exit: &ExitRecord) -> Option<String> {
        exit.signal?;
        let forwarded = || {
            exit.forwarded_signal.map(|sig| {
                format!(
                    "its Slurm job is no longer known, and its supervisor was sent signal {sig} \
                     (the job was stopped from outside the program: {})",
                    exit.describe()
                )
            })
        };
        let Some((options, id)) = self.job.as_ref() else {
            // Launched under Slurm, its job forgotten: the supervisor's record tells.
            return if self.state_dir.join("slurm-job.sh").exists() {
                forwarded()
            } else {
                None
            };
        };
        // The supervisor writes the record just before the job ends.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let state = loop {
            match options.state(id).await {
                Ok(state) if state.is_ended() => break state,
                _ if tokio::time::Instant::now() >= deadline => return None,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        match &state {
            JobState::Unknown => forwarded(),
            JobState::Ended { state: s, .. }
                // Not TIMEOUT: the time limit is the step's own `timeout`, whose expiry is the
                // step's failure wherever it is enforced.
                if matches!(
                    s.as_str(),
                    "CANCELLED" | "PREEMPTED" | "NODE_FAIL" | "BOOT_FAIL" | "DEADLINE"
                ) =>
            {
                Some(format!(
                    "Slurm job {id} ended {}: the program was stopped by Slurm ({})",
                    state.describe(),
                    exit.describe()
                ))
            }
            _ => None,
        }
    }

    /// The Slurm job the program runs in, if it was launched under Slurm.
    pub fn slurm_job(&self) -> Option<(&SlurmOptions, &str)> {
        self.job.as_ref().map(|(o, id)| (o, id.as_str()))
    }

    /// The started program's identity (pid, process group, start time).
    pub fn child(&self) -> &ChildRecord {
        &self.child
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// True when this handle re-attached to a launch of an earlier engine process.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Whether the recorded pids are this machine's to look up (records of earlier versions
    /// name no machine: they are taken as this one's).
    fn local(&self) -> bool {
        self.child.is_local()
    }

    /// Whether this handle may signal the program's process group: a local launch (not a
    /// Slurm job) on this machine whose exit is not recorded yet. A group number copied from
    /// another machine, or from a program that has ended (the number may be reused), names
    /// nothing of ours.
    pub fn may_signal(&self) -> bool {
        self.job.is_none() && self.local() && matches!(self.try_exit(), Ok(None))
    }

    /// True while the program or its supervisor (which will record the exit) is running: by
    /// their processes here, by the supervisor's heartbeat for another machine's launch.
    fn alive(&self) -> bool {
        if !self.local() {
            // Watched through its heartbeat instead (see `wait`).
            return true;
        }
        let program = ProcessIdentity {
            pid: self.child.pid,
            start_ticks: self.child.start_ticks,
        };
        let supervisor = ProcessIdentity {
            pid: self.child.supervisor_pid,
            start_ticks: self.child.supervisor_start_ticks,
        };
        program.is_running() || supervisor.is_running()
    }

    fn lost(&self, why: &str) -> Error {
        Error::Lost {
            program: self.program.clone(),
            pid: self.child.pid,
            why: why.to_owned(),
            state_dir: self.state_dir.clone(),
        }
    }

    /// Wait for the program to end and return its recorded exit status. Does not hold a thread.
    pub async fn wait(&mut self) -> Result<ExitRecord> {
        if let Some((options, id)) = &self.job {
            let mut asked = tokio::time::Instant::now();
            loop {
                if let Some(exit) = records::read_exit(&self.state_dir)? {
                    return Ok(exit);
                }
                if asked.elapsed() >= SLURM_POLL {
                    asked = tokio::time::Instant::now();
                    match options.state(id).await {
                        Ok(state) if state.is_ended() => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            return records::read_exit(&self.state_dir)?.ok_or_else(|| {
                                self.lost(&format!(
                                    "Slurm job {id} ended {} without an exit record",
                                    state.describe()
                                ))
                            });
                        }
                        Ok(_) => {}
                        // Slurm not answering for a while is not the program's end.
                        Err(e) => tracing::warn!(job_id = %id, "asking Slurm about the job: {e}"),
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }
        if let Some(supervisor) = &mut self.supervisor {
            // The supervisor closes its stdout once the exit record can be read, then makes it
            // durable: this goes on meanwhile (what it records goes to the engine's database).
            // A supervisor holding our descriptors is waited for: they are released with it.
            if let Some(mut notices) = self.notices.take()
                && !self.holds_fds
            {
                use tokio::io::AsyncReadExt as _;
                let mut drained = [0u8; 64];
                while let Ok(1..) = notices.read(&mut drained).await {}
                if let Some(exit) = records::read_exit(&self.state_dir)? {
                    return Ok(exit);
                }
            }
            let _ = supervisor.wait().await;
            return records::read_exit(&self.state_dir)?
                .ok_or_else(|| self.lost("its supervisor ended without recording the exit"));
        }
        let remote = !self.local();
        let mut beat = read_beat(&self.state_dir);
        let mut changed = tokio::time::Instant::now();
        loop {
            if let Some(exit) = records::read_exit(&self.state_dir)? {
                return Ok(exit);
            }
            if remote {
                // Another machine's launch: alive while its supervisor's counter moves.
                let b = read_beat(&self.state_dir);
                if b != beat {
                    (beat, changed) = (b, tokio::time::Instant::now());
                } else if changed.elapsed() >= REMOTE_SILENCE {
                    request_stop(&self.state_dir, Duration::from_secs(10));
                    return records::read_exit(&self.state_dir)?.ok_or_else(|| {
                        self.lost(&format!(
                            "its supervisor on {} has not beaten for {} s",
                            self.child.host,
                            REMOTE_SILENCE.as_secs()
                        ))
                    });
                }
            } else if !self.alive() {
                // The supervisor may have written the record just before it exited.
                return records::read_exit(&self.state_dir)?
                    .ok_or_else(|| self.lost("neither the program nor its supervisor is running"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether this is another machine's launch that still runs (stopped by request, see
    /// [`stop_by_request`]).
    pub fn is_remote_running(&self) -> bool {
        self.job.is_none() && !self.local() && matches!(self.try_exit(), Ok(None))
    }

    /// The exit record if the program has already ended.
    pub fn try_exit(&self) -> Result<Option<ExitRecord>> {
        records::read_exit(&self.state_dir)
    }

    /// Ask the whole process group to stop: SIGTERM, then SIGKILL after `grace`.
    /// Returns once no process of the group remains.
    pub async fn terminate(&mut self, grace: Duration) {
        if let Some((options, id)) = &self.job {
            options.terminate(id, grace).await;
            return;
        }
        if !self.local() {
            stop_by_request(&self.state_dir, grace).await;
            return;
        }
        terminate_group(self.child.pgid, grace).await;
        if let Some(s) = &mut self.supervisor {
            let _ = s.wait().await;
        }
    }
}

/// A launch whose exit was recorded before any started program: why it did not start.
fn not_started(program: &str, exit: ExitRecord) -> Error {
    Error::Start {
        program: program.to_owned(),
        message: exit
            .start_error
            .unwrap_or_else(|| "it exited before it was recorded".into()),
    }
}

/// Longest grace [`terminate_group`] waits between SIGTERM and SIGKILL.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// SIGTERM a process group, wait up to `grace` (at most [`MAX_GRACE`]) for it to empty, then
/// SIGKILL it and wait until it is empty.
pub async fn terminate_group(pgid: i32, grace: Duration) {
    signal_group(pgid, Sig::Term);
    let deadline = tokio::time::Instant::now() + grace.min(MAX_GRACE);
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while group_alive(pgid) {
        signal_group(pgid, Sig::Kill);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests;

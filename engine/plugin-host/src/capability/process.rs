//! `kiln:plugin/process`: launching granted programs under the supervisor and following them.
//!
//! Grants: a plugin may launch only program *names* the operator listed for it in
//! `configs/plugins.yaml`; the name is resolved on the engine's search path, never taken as a
//! path from the plugin. The working directory must lie in a directory granted to the step. The
//! environment is the host's fixed base (PATH, HOME, LANG) plus what the plugin passes. Waiting
//! never holds an OS thread: the supervisor is awaited asynchronously and output is polled from
//! the append-only log file.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_supervisor::{LaunchSpec, Launcher, SlurmOptions, Supervised};

use crate::bindings::process::{ExitStatus, Host, OutputChunk, Spec};
use crate::invocation::StepEvent;
use crate::sandbox::StepState;

/// The file the output of a step's `launch`-th program (from 1) goes to, in the run's log folder:
/// `STEP.log`, then `STEP-2.log`, `STEP-3.log`… The one place this naming is decided.
pub fn launch_log(log_dir: &Path, step: &str, launch: usize) -> PathBuf {
    match launch {
        1 => log_dir.join(format!("{step}.log")),
        n => log_dir.join(format!("{step}-{n}.log")),
    }
}

/// The programs a step has launched, shared with the runner so it can stop them: their
/// process groups, and the state folders of launches still starting (a cancel that arrives
/// while a launch is under way must stop its program too, once the supervisor records it).
#[derive(Clone, Default)]
pub struct ProcessTracker(Arc<Mutex<Tracked>>, Option<StopGuard>);

/// Asked before a step's programs are stopped: whether this engine may still stop them (an
/// engine that lost its run to another engine, which re-attached to them, must not).
pub type StopGuard = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

impl std::fmt::Debug for ProcessTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ProcessTracker")
            .field(&self.0)
            .field(&self.1.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Tracked {
    groups: Vec<i32>,
    /// Slurm jobs the step's programs run in.
    jobs: Vec<(SlurmOptions, String)>,
    /// Launches of another machine this step re-attached to: stopped by request.
    remote: Vec<PathBuf>,
    launching: Vec<(PathBuf, Launcher)>,
}

/// How long stopping waits for a launch under way to record its program.
const LAUNCH_RECORD_WAIT: Duration = Duration::from_secs(10);

impl ProcessTracker {
    /// A tracker whose [`Self::terminate_all`] stops programs only while `guard` says so.
    pub fn guarded(guard: StopGuard) -> Self {
        Self(Default::default(), Some(guard))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn launching(&self, state_dir: &Path, launcher: &Launcher) {
        self.lock()
            .launching
            .push((state_dir.to_owned(), launcher.clone()));
    }

    /// A launch that failed before it started anything: nothing of it to stop.
    fn failed(&self, state_dir: &Path) {
        self.lock().launching.retain(|(d, _)| d != state_dir);
    }

    fn add(&self, state_dir: &Path, supervised: &Supervised) {
        let mut tracked = self.lock();
        tracked.launching.retain(|(d, _)| d != state_dir);
        match supervised.slurm_job() {
            Some((options, id)) => tracked.jobs.push((options.clone(), id.to_owned())),
            // Only a group that is ours to signal: not another machine's, not one that ended.
            None if supervised.may_signal() => tracked.groups.push(supervised.child().pgid),
            None if supervised.is_remote_running() => tracked.remote.push(state_dir.to_owned()),
            None => {}
        }
    }

    /// Process groups launched so far.
    pub fn groups(&self) -> Vec<i32> {
        self.lock().groups.clone()
    }

    /// SIGTERM every launched group, SIGKILL after `grace`; returns when all are gone. A launch
    /// still under way is waited for (at most 10 s) until its supervisor records the program.
    pub async fn terminate_all(&self, grace: Duration) {
        let (mut groups, mut jobs, launching, mut remote) = {
            let tracked = self.lock();
            (
                tracked.groups.clone(),
                tracked.jobs.clone(),
                tracked.launching.clone(),
                tracked.remote.clone(),
            )
        };
        // Programs already gone need no stopping, and no confirmation (which is a commit).
        groups.retain(|g| kiln_supervisor::group_alive(*g));
        remote.retain(|dir| matches!(kiln_supervisor::read_exit(dir), Ok(None)));
        if groups.is_empty() && jobs.is_empty() && launching.is_empty() && remote.is_empty() {
            return;
        }
        if let Some(guard) = &self.1
            && !guard().await
        {
            tracing::warn!(target: "operations.training", "programs left running: this engine no longer holds their run");
            return;
        }
        for (dir, launcher) in launching {
            let deadline = tokio::time::Instant::now() + LAUNCH_RECORD_WAIT;
            if let Launcher::Slurm(options) = launcher {
                // Submitted (or about to be): cancel the job, queued or running; one whose id
                // was never recorded (sbatch still running, its answer lost) by its name.
                loop {
                    if let Ok(Some(job)) = kiln_supervisor::slurm::read_job(&dir) {
                        jobs.push((options, job.job_id));
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        options.cancel_launch(&dir, grace).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
            loop {
                if let Ok(Some(child)) = kiln_supervisor::read_child(&dir) {
                    let ended = matches!(kiln_supervisor::read_exit(&dir), Ok(Some(_)));
                    match (child.is_local(), ended) {
                        (_, true) => {}
                        (true, false) => groups.push(child.pgid),
                        (false, false) => remote.push(dir.clone()),
                    }
                    break;
                }
                // Ended before it recorded a program (or never started): nothing to stop.
                let ended = matches!(kiln_supervisor::read_exit(&dir), Ok(Some(_)));
                if ended
                    || !dir.join("spec.json").exists()
                    || tokio::time::Instant::now() >= deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        groups.sort_unstable();
        groups.dedup();
        jobs.sort_by(|a, b| a.1.cmp(&b.1));
        jobs.dedup_by(|a, b| a.1 == b.1);
        for (options, id) in jobs {
            options.terminate(&id, grace).await;
        }
        for pgid in groups {
            kiln_supervisor::terminate_group(pgid, grace).await;
        }
        for dir in remote {
            kiln_supervisor::stop_by_request(&dir, grace).await;
        }
    }
}

/// Programs this process follows now: launched or re-attached by a plugin call that has not
/// returned yet (for `/metrics`).
static FOLLOWED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many programs this process follows now (see [`FOLLOWED`]).
pub fn programs_followed() -> usize {
    FOLLOWED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a program in [`FOLLOWED`] for as long as it lives.
struct Followed;

impl Followed {
    fn new() -> Self {
        FOLLOWED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        FOLLOWED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Launch {
    _followed: Followed,
    supervised: Supervised,
    log_path: PathBuf,
    /// Bytes of output already handed to the plugin; persisted in the launch's state directory
    /// so that a re-attached plugin continues where the earlier one stopped.
    offset: u64,
    state_dir: PathBuf,
}

const OFFSET_FILE: &str = "read-offset";

fn read_launch_offset(state_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(state_dir.join(OFFSET_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn read_offset(state_dir: &Path) -> u64 {
    read_launch_offset(state_dir).unwrap_or(0)
}

fn write_offset(state_dir: &Path, offset: u64) {
    let tmp = state_dir.join(format!("{OFFSET_FILE}.tmp"));
    if std::fs::write(&tmp, offset.to_string()).is_ok() {
        let _ = std::fs::rename(tmp, state_dir.join(OFFSET_FILE));
    }
}

/// Per-call state of the process capability.
pub(crate) struct ProcessState {
    pub granted_programs: Vec<String>,
    pub search_path: Vec<PathBuf>,
    pub base_env: Vec<(String, String)>,
    pub granted_dirs: Vec<PathBuf>,
    pub default_cwd: Option<PathBuf>,
    pub supervisor_exe: PathBuf,
    pub step_id: String,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    pub tracker: ProcessTracker,
    /// GPUs leased to the step: exported as CUDA_VISIBLE_DEVICES, locks inherited.
    pub gpus: Option<crate::GpuGrant>,
    /// Where the step's programs run: here, or as Slurm jobs (which then hold its GPUs).
    pub launcher: Launcher,
    /// Awaited before each launch (the step's start made durable).
    pub before_launch: Option<crate::BeforeLaunch>,
    /// Set when a launched program was lost without an exit status.
    pub infrastructure_failure: Option<String>,
    launches: Vec<Launch>,
}

impl ProcessState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        granted_programs: Vec<String>,
        search_path: Vec<PathBuf>,
        base_env: Vec<(String, String)>,
        granted_dirs: Vec<PathBuf>,
        default_cwd: Option<PathBuf>,
        supervisor_exe: PathBuf,
        step_id: String,
        log_dir: PathBuf,
        state_dir: PathBuf,
        tracker: ProcessTracker,
    ) -> Self {
        Self {
            granted_programs,
            search_path,
            base_env,
            granted_dirs,
            default_cwd,
            supervisor_exe,
            step_id,
            log_dir,
            state_dir,
            tracker,
            gpus: None,
            launcher: Launcher::Local,
            before_launch: None,
            infrastructure_failure: None,
            launches: Vec::new(),
        }
    }

    pub fn with_gpus(mut self, gpus: Option<crate::GpuGrant>) -> Self {
        self.gpus = gpus;
        self
    }

    pub fn with_launcher(mut self, launcher: Launcher) -> Self {
        self.launcher = launcher;
        self
    }

    pub fn with_before_launch(mut self, before_launch: Option<crate::BeforeLaunch>) -> Self {
        self.before_launch = before_launch;
        self
    }

    /// True when `path` lies inside a directory granted to the step (no `..` escapes).
    pub fn is_inside_grant(&self, path: &Path) -> bool {
        let Ok(path) = normalize(path) else {
            return false;
        };
        self.granted_dirs.iter().any(|d| path.starts_with(d))
    }

    fn resolve_program(&self, plugin: &str, name: &str) -> Result<PathBuf, String> {
        if !self.granted_programs.iter().any(|p| p == name) {
            return Err(format!(
                "plugin `{plugin}` is not granted the program `{name}`; granted: [{}]. An operator \
                 can grant it under `plugins.{plugin}.programs` in configs/plugins.yaml",
                self.granted_programs.join(", ")
            ));
        }
        self.search_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                format!(
                    "program `{name}` (granted to plugin `{plugin}`) was not found in {}; install \
                     it or put it on PATH",
                    self.search_path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                )
            })
    }

    fn launch_mut(&mut self, handle: u64) -> Result<&mut Launch, String> {
        let n = self.launches.len();
        handle
            .checked_sub(1)
            .and_then(|i| self.launches.get_mut(i as usize))
            .ok_or_else(|| format!("unknown process handle {handle} (this step launched {n})"))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Make `path` absolute and lexically remove `.` and `..`; reject relative paths.
fn normalize(path: &Path) -> Result<PathBuf, ()> {
    if !path.is_absolute() {
        return Err(());
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                if !out.pop() {
                    return Err(());
                }
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

impl Host for StepState {
    async fn launch(&mut self, spec: Spec) -> Result<u64, String> {
        let started = Instant::now();
        let result = self.launch_inner(spec).await;
        self.cpu.host_time += started.elapsed();
        result
    }

    async fn read_output(
        &mut self,
        handle: u64,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> Result<OutputChunk, String> {
        let started = Instant::now();
        let result = self.read_output_inner(handle, max_bytes, timeout_ms).await;
        self.cpu.host_time += started.elapsed();
        result
    }

    async fn wait(&mut self, handle: u64) -> Result<ExitStatus, String> {
        let started = Instant::now();
        let result = async {
            let launch = self.process.launch_mut(handle)?;
            let exit = match launch.supervised.wait().await {
                Ok(exit) => exit,
                Err(e) => {
                    if e.is_infrastructure() {
                        self.process.infrastructure_failure = Some(e.to_string());
                    }
                    return Err(e.to_string());
                }
            };
            if let Some(why) = launch.supervised.stopped_by_scheduler(&exit).await {
                self.process.infrastructure_failure = Some(why);
            }
            Ok(ExitStatus {
                code: exit.code,
                signal: exit.signal,
                success: exit.success(),
            })
        }
        .await;
        self.cpu.host_time += started.elapsed();
        result
    }
}

impl StepState {
    async fn launch_inner(&mut self, spec: Spec) -> Result<u64, String> {
        let plugin = self.plugin.clone();
        let program = self.process.resolve_program(&plugin, &spec.program)?;
        let cwd = match &spec.cwd {
            Some(c) => {
                let p = PathBuf::from(c);
                if !self.process.is_inside_grant(&p) {
                    return Err(format!(
                        "working directory {c} is outside the directories granted to step `{}`",
                        self.process.step_id
                    ));
                }
                p
            }
            None => self.process.default_cwd.clone().ok_or(
                "no working directory given and the step has no training-output directory",
            )?,
        };
        std::fs::create_dir_all(&cwd)
            .map_err(|e| format!("cannot create {}: {e}", cwd.display()))?;
        let n = self.process.launches.len() + 1;
        let step = &self.process.step_id;
        let log_path = launch_log(&self.process.log_dir, step, n);
        let state_dir = self.process.state_dir.join(format!("launch-{n}"));
        let mut env = self.process.base_env.clone();
        if let Some(dir) = program.parent() {
            // A program installed in a virtualenv finds its siblings first.
            if let Some((_, path)) = env.iter_mut().find(|(k, _)| k == "PATH") {
                *path = format!("{}:{path}", dir.display());
            }
        }
        for (k, v) in spec.env {
            match env.iter_mut().find(|(ek, _)| *ek == k) {
                Some(slot) => slot.1 = v,
                None => env.push((k, v)),
            }
        }
        // The host decides which GPUs a program sees; a plugin cannot widen its lease.
        let mut inherit = Vec::new();
        if let Some(gpus) = &self.process.gpus {
            let devices = gpus
                .devices
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            env.retain(|(k, _)| k != "CUDA_VISIBLE_DEVICES");
            env.push(("CUDA_VISIBLE_DEVICES".into(), devices));
            inherit.extend_from_slice(&gpus.lock_fds);
        }
        let mut inherit_env = Vec::new();
        if let Launcher::Slurm(options) = &self.process.launcher {
            // Slurm decides which GPUs the job sees (`--gres`); a plugin cannot widen it.
            env.retain(|(k, _)| k != "CUDA_VISIBLE_DEVICES");
            if options.gpus > 0 {
                inherit_env.push("CUDA_VISIBLE_DEVICES".to_owned());
            } else {
                // A step without GPUs sees none of the node's, as a local one.
                env.push(("CUDA_VISIBLE_DEVICES".to_owned(), String::new()));
            }
            inherit_env.push("SLURM_JOB_ID".to_owned());
        }
        let launch_spec = LaunchSpec {
            program: program.clone(),
            args: spec.args,
            env,
            cwd,
            log_path: log_path.clone(),
            inherit_env,
            die_with_supervisor: matches!(self.process.launcher, Launcher::Slurm(_)),
            machine: String::new(),
        };
        // Nothing keyed by the attempt is written before the attempt is durable.
        if let Some(before) = &self.process.before_launch {
            before
                .run()
                .await
                .map_err(|e| format!("cannot launch {}: {e}", program.display()))?;
        }
        // A fresh launch follows its output from the log file's current end: earlier attempts
        // of the step appended to the same file. Recorded before the program can write.
        if read_launch_offset(&state_dir).is_none() {
            let _ = std::fs::create_dir_all(&state_dir);
            let end = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            write_offset(&state_dir, end);
        }
        // Keyed by the step attempt's state directory: after an engine restart the same launch
        // re-attaches to the program it started instead of starting a second copy. Tracked
        // before it starts: a cancel meanwhile still finds the program.
        self.process
            .tracker
            .launching(&state_dir, &self.process.launcher);
        // A job waiting in Slurm's queue says why, as the step's progress message.
        let events = self.events.clone();
        let on_queue = move |message: &str| {
            if let Some(tx) = &events {
                let _ = tx.send(StepEvent::Progress {
                    percent: None,
                    epoch: None,
                    epochs: None,
                    metrics: Default::default(),
                    message: Some(message.to_owned()),
                });
            }
        };
        let supervised = match Supervised::launch_or_attach(
            &self.process.launcher,
            &self.process.supervisor_exe,
            &state_dir,
            &launch_spec,
            &inherit,
            &on_queue,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                // Nothing of a failed launch may run on: a job sbatch submitted although it
                // answered with an error is cancelled (found by its name).
                if let Launcher::Slurm(options) = &self.process.launcher {
                    options
                        .cancel_launch(&state_dir, Duration::from_secs(5))
                        .await;
                }
                self.process.tracker.failed(&state_dir);
                if e.is_infrastructure() {
                    self.process.infrastructure_failure = Some(e.to_string());
                }
                return Err(e.to_string());
            }
        };
        let offset = read_offset(&state_dir);
        let job = supervised
            .slurm_job()
            .map(|(_, id)| format!(" in Slurm job {id}"))
            .unwrap_or_default();
        if supervised.is_attached() {
            self.emit(StepEvent::Log {
                level: "info".into(),
                message: format!(
                    "re-attached to {} (pid {}{job}) started by an earlier engine; following its output from byte {offset}",
                    program.display(),
                    supervised.child().pid
                ),
            });
        } else if !job.is_empty() {
            self.emit(StepEvent::Log {
                level: "info".into(),
                message: format!("{} runs{job}", program.display()),
            });
        }
        let pid = supervised.child().pid;
        self.process.tracker.add(&state_dir, &supervised);
        if !supervised.is_attached() {
            self.emit(StepEvent::Launched {
                program: program.display().to_string(),
                pid,
                log_path: log_path.clone(),
            });
        }
        self.process.launches.push(Launch {
            _followed: Followed::new(),
            supervised,
            log_path,
            offset,
            state_dir,
        });
        Ok(n as u64)
    }

    async fn read_output_inner(
        &mut self,
        handle: u64,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> Result<OutputChunk, String> {
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms.min(60_000)));
        let max = (max_bytes as usize).clamp(1, 1 << 20);
        loop {
            let launch = self.process.launch_mut(handle)?;
            // Check for exit before reading, so that "exited" + "nothing new" means finished.
            let exited = launch
                .supervised
                .try_exit()
                .map_err(|e| e.to_string())?
                .is_some();
            let data = read_from(&launch.log_path, launch.offset, max)?;
            if !data.is_empty() {
                launch.offset += data.len() as u64;
                write_offset(&launch.state_dir, launch.offset);
            }
            if !data.is_empty() || exited || Instant::now() >= deadline {
                return Ok(OutputChunk {
                    finished: exited && data.is_empty(),
                    data,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn read_from(path: &Path, offset: u64, max: usize) -> Result<Vec<u8>, String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut buf = Vec::with_capacity(max.min(64 * 1024));
    f.take(max as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escaping_a_grant_are_outside() {
        let state = ProcessState::new(
            vec![],
            vec![],
            vec![],
            vec![PathBuf::from("/ws/projects/p/model/training/t")],
            None,
            PathBuf::new(),
            "s".into(),
            PathBuf::new(),
            PathBuf::new(),
            ProcessTracker::default(),
        );
        assert!(
            state.is_inside_grant(Path::new("/ws/projects/p/model/training/t/weights/best.pt"))
        );
        assert!(!state.is_inside_grant(Path::new("/ws/projects/p/model/training/t/../../../x")));
        assert!(!state.is_inside_grant(Path::new("relative/path")));
        assert!(!state.is_inside_grant(Path::new("/etc/passwd")));
    }

    #[test]
    fn ungranted_programs_are_denied_naming_plugin_and_program() {
        let state = ProcessState::new(
            vec!["yolo".into()],
            vec![PathBuf::from("/bin")],
            vec![],
            vec![],
            None,
            PathBuf::new(),
            "s".into(),
            PathBuf::new(),
            PathBuf::new(),
            ProcessTracker::default(),
        );
        let e = state.resolve_program("ultralytics", "sh").unwrap_err();
        assert!(e.contains("`ultralytics`") && e.contains("`sh`"), "{e}");
    }
}

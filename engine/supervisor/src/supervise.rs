//! The supervisor process itself (`kiln supervise STATE_DIR`). Synchronous, std only: it runs
//! before any async runtime exists in the process.
//!
//! SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 sent to the supervisor are passed on to the
//! program's process group, and the supervisor stays to record how the program ended: a
//! scheduler that signals its job (Slurm's `scancel --signal`, a time limit, preemption) reaches
//! the program, and the exit is recorded as a signal instead of being lost.

use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::proc_info::ProcessIdentity;
use crate::records::{
    self, CHILD_FILE, ChildRecord, Durability, EXIT_FILE, ExitRecord, HEARTBEAT_FILE, STOP_FILE,
    now_rfc3339, write_json_atomic,
};

/// Run the supervisor for `state_dir`; returns the supervisor's own exit code: the program's
/// (128 + the signal that ended it), so a scheduler's books show how the program ended; 1 when
/// it could not be started or its end not recorded.
pub fn run(state_dir: &Path) -> i32 {
    // A new session: the supervisor and its program outlive the engine and its terminal.
    let _ = rustix::process::setsid();
    match supervise(state_dir) {
        Ok(exit) => exit.code.unwrap_or_else(|| 128 + exit.signal.unwrap_or(0)),
        Err(message) => {
            say(&message);
            let record = ExitRecord {
                code: None,
                signal: None,
                start_error: Some(message),
                finished_at: now_rfc3339(),
                forwarded_signal: None,
            };
            let _ = write_json_atomic(&state_dir.join(EXIT_FILE), &record, Durability::Machine);
            1
        }
    }
}

fn supervise(state_dir: &Path) -> Result<ExitRecord, String> {
    let spec = records::read_spec(state_dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no launch spec in {}", state_dir.display()))?;
    if let Some(dir) = spec.log_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("log dir {}: {e}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|e| format!("log file {}: {e}", spec.log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("log file {}: {e}", spec.log_path.display()))?;
    // Caught from before the program starts: a signal meanwhile is passed on once it runs.
    let signals = termination_signals();
    let mut command = Command::new(&spec.program);
    if spec.die_with_supervisor {
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
    }
    let mut child = command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .envs(
            spec.inherit_env
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
        )
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{}: {e}", spec.program.display()))?;
    let pid = child.id() as i32;
    if let Some(signals) = signals {
        forward_signals(signals, pid);
    }
    // Beating before the program is recorded: whoever reads the record sees a beat.
    if let Err(e) = heartbeat(state_dir.to_owned(), pid) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("cannot start the heartbeat: {e}"));
    }
    let start_ticks = ProcessIdentity::of(pid).map(|p| p.start_ticks).unwrap_or(0);
    let record = ChildRecord {
        pid,
        pgid: pid,
        start_ticks,
        supervisor_pid: std::process::id() as i32,
        supervisor_start_ticks: ProcessIdentity::of(std::process::id() as i32)
            .map(|p| p.start_ticks)
            .unwrap_or(0),
        started_at: now_rfc3339(),
        machine: crate::machine_id(),
        host: crate::host_name(),
    };
    if let Err(e) = write_json_atomic(&state_dir.join(CHILD_FILE), &record, Durability::Process) {
        // Without a record nobody could ever stop it: do not leave it running.
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("cannot record the started program: {e}"));
    }
    // The engine that started this reads stdout, a pipe from it: one byte says the program is
    // recorded. An engine that did not ask for notices (an older one) waits for the end of
    // the pipe instead; stdout is not used for anything else.
    let notify = std::env::var_os(crate::NOTICES_ENV).is_some() && stdout_is_pipe();
    if notify {
        let _ = rustix::io::write(std::io::stdout(), b".");
    } else {
        close_stdout();
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for pid {pid}: {e}"))?;
    REAPED.store(true, std::sync::atomic::Ordering::SeqCst);
    finish_requested_stop(pid);
    let forwarded = FORWARDED.load(std::sync::atomic::Ordering::SeqCst);
    let record = ExitRecord {
        code: status.code(),
        signal: status.signal(),
        start_error: None,
        finished_at: now_rfc3339(),
        forwarded_signal: (forwarded != 0).then_some(forwarded),
    };
    // Complete for readers first (renamed into place), then durable. The engine waiting on
    // stdout goes on as soon as it can read the record, while this makes it durable: what it
    // records from it goes to its own database, which it commits itself. Without an engine, the
    // record is durable before the supervisor ends (ARCHITECTURE.md, "Durability").
    let path = state_dir.join(EXIT_FILE);
    write_json_atomic(&path, &record, Durability::Process)
        .map_err(|e| format!("cannot record the exit status: {e}"))?;
    if notify {
        close_stdout();
    }
    // The record stands (an engine may have acted on it already): a failed sync is only said.
    if let Err(e) = records::make_durable(&path) {
        say(&format!(
            "{} may not survive a crash of the machine: {e}",
            path.display()
        ));
    }
    Ok(record)
}

/// A line on stderr (`supervisor.log` when the engine started this); a failed write is
/// ignored: nothing else could be told.
fn say(message: &str) {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("kiln supervise: {message}\n").as_bytes(),
    );
}

/// Whether stdout is a pipe (the one the engine that asked for notices reads).
fn stdout_is_pipe() -> bool {
    rustix::fs::fstat(std::io::stdout()).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    })
}

/// Point stdout at `/dev/null`: the end of a pipe there wakes the engine reading it.
fn close_stdout() {
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// Set once the program has been reaped: its group number may be reused from then on.
static REAPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The stop request being honoured: when it came (milliseconds since the supervisor started)
/// and its grace in seconds (0: none).
static STOP_SINCE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STOP_GRACE_S: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long the heartbeat may fail to be written before the supervisor stops its program
/// itself: engines elsewhere judge the program gone when its beat stops (they wait longer, see
/// `kiln_supervisor`'s `REMOTE_SILENCE`), so it must not outlive its silence.
const SILENT_STOP: std::time::Duration = std::time::Duration::from_secs(8);

/// While the program runs, rewrite the heartbeat file every second with a growing counter
/// (engines that cannot see this machine's processes watch it change) and honour a stop
/// request: SIGTERM to the group, SIGKILL once the requested grace has passed. When the beat
/// cannot be written for [`SILENT_STOP`], the program's group is killed: elsewhere it is taken
/// for gone and may be started again. The first beat is written before this returns.
fn heartbeat(state_dir: std::path::PathBuf, pgid: i32) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let write_beat = move |dir: &Path, beat: u64| -> std::io::Result<()> {
        let tmp = dir.join(format!("{HEARTBEAT_FILE}.tmp"));
        std::fs::write(&tmp, beat.to_string())?;
        std::fs::rename(&tmp, dir.join(HEARTBEAT_FILE))
    };
    write_beat(&state_dir, 1)?;
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            let mut last_written = std::time::Instant::now();
            for beat in 2u64.. {
                std::thread::sleep(std::time::Duration::from_secs(1));
                if REAPED.load(Ordering::SeqCst) {
                    return;
                }
                match write_beat(&state_dir, beat) {
                    Ok(()) => last_written = std::time::Instant::now(),
                    Err(_) if last_written.elapsed() >= SILENT_STOP => {
                        crate::signal_group(pgid, crate::Sig::Kill);
                    }
                    Err(_) => {}
                }
                let since = STOP_SINCE_MS.load(Ordering::SeqCst);
                if since == 0 {
                    // Read whole or not at all (written by rename); unreadable: next beat.
                    let grace = std::fs::read_to_string(state_dir.join(STOP_FILE))
                        .ok()
                        .and_then(|g| g.trim().parse::<u64>().ok());
                    if let Some(grace) = grace {
                        STOP_GRACE_S.store(grace, Ordering::SeqCst);
                        STOP_SINCE_MS.store(
                            (started.elapsed().as_millis() as u64).max(1),
                            Ordering::SeqCst,
                        );
                        crate::signal_group(pgid, crate::Sig::Term);
                    }
                } else if started.elapsed().as_millis() as u64
                    >= since + STOP_GRACE_S.load(Ordering::SeqCst) * 1000
                {
                    crate::signal_group(pgid, crate::Sig::Kill);
                }
            }
        })?;
    Ok(())
}

/// After a stop request, what is left of the program's group once its leader ended (workers
/// that ignore SIGTERM) is killed after the grace, as a local stop does, before the exit is
/// recorded.
fn finish_requested_stop(pgid: i32) {
    use std::sync::atomic::Ordering;
    if STOP_SINCE_MS.load(Ordering::SeqCst) == 0 {
        return;
    }
    let grace = std::time::Duration::from_secs(STOP_GRACE_S.load(Ordering::SeqCst));
    let waited = std::time::Instant::now();
    while crate::group_alive(pgid) {
        if waited.elapsed() >= grace {
            crate::signal_group(pgid, crate::Sig::Kill);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Pass the termination signals the supervisor gets on to the program's process group `pgid`,
/// from a thread (the main one waits for the program). Without it, such a signal would end the
/// supervisor and leave the program running unrecorded.
/// The first signal [`forward_signals`] passed on (0: none).
static FORWARDED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn forward_signals(mut signals: signal_hook::iterator::Signals, pgid: i32) {
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let _ = FORWARDED.compare_exchange(
                0,
                sig,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            );
            if let (Some(group), Some(sig)) = (
                rustix::process::Pid::from_raw(pgid),
                rustix::process::Signal::from_named_raw(sig),
            ) {
                let _ = rustix::process::kill_process_group(group, sig);
            }
        }
    });
}

/// The signals [`forward_signals`] passes on, caught (a program started after this gets the
/// default dispositions back when it execs).
fn termination_signals() -> Option<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2]).ok()
}

//! Process identity and process-group signals (Linux).

use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};

/// The signals the engine sends to a program's process group.
#[derive(Debug, Clone, Copy)]
pub enum Sig {
    Term,
    Kill,
}

/// Send `sig` to every process of the group. A group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: Sig) {
    let Some(pid) = Pid::from_raw(pgid) else {
        return;
    };
    let signal = match sig {
        Sig::Term => Signal::TERM,
        Sig::Kill => Signal::KILL,
    };
    let _ = kill_process_group(pid, signal);
}

/// True while any process of the group exists.
pub fn group_alive(pgid: i32) -> bool {
    match Pid::from_raw(pgid) {
        Some(pid) => test_kill_process_group(pid).is_ok(),
        None => false,
    }
}

/// A pid together with its start time, so that a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: i32,
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// Read the identity of a running process from `/proc`.
    pub fn of(pid: i32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields resume after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        // `rest` starts at field 3 (state); start time is field 22.
        let start_ticks = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(Self { pid, start_ticks })
    }

    /// True when a process with this pid exists and is the same process (same start time).
    pub fn is_running(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now.start_ticks == self.start_ticks)
    }
}

/// True when some process runs `... supervise <state_dir>` (scanning /proc).
pub(crate) fn supervisor_running_for(state_dir: &std::path::Path) -> bool {
    let needle = state_dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            return false;
        };
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
            let mut args = cmd.split(|b| *b == 0);
            args.any(|a| a == b"supervise") && cmd.split(|b| *b == 0).any(|a| a == needle)
        })
    })
}

/// Let `fd` survive exec (used between fork and exec; async-signal-safe).
pub(crate) fn clear_cloexec(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: the caller owns `fd` for the duration of the spawn.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::empty()).map_err(std::io::Error::from)
}

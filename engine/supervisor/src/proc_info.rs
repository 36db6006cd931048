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

/// True while any live (not zombie) process of the group exists. Zombies are ignored: where
/// PID 1 does not reap orphans (some containers), a dead process can linger as a zombie forever.
pub fn group_alive(pgid: i32) -> bool {
    let Some(pid) = Pid::from_raw(pgid) else {
        return false;
    };
    if test_kill_process_group(pid).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            return false;
        };
        stat_fields(pid).is_some_and(|f| f.pgrp == pgid && !f.zombie)
    })
}

struct StatFields {
    zombie: bool,
    pgrp: i32,
    start_ticks: u64,
}

/// The fields of `/proc/PID/stat` we need: state, process group, start time.
fn stat_fields(pid: i32) -> Option<StatFields> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); pgrp is field 5; start time is field 22.
    Some(StatFields {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Where a pid means something: this machine's boot id and this process's pid namespace
/// (`<boot id>/<pid:[inode]>`). Two processes with the same one see each other's pids; a
/// machine restarted since, or another container, has another.
pub fn machine_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{boot}/{ns}")
}

/// This machine's host name.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A pid together with its start time, so that a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: i32,
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// Read the identity of a process from `/proc`.
    pub fn of(pid: i32) -> Option<Self> {
        let f = stat_fields(pid)?;
        Some(Self {
            pid,
            start_ticks: f.start_ticks,
        })
    }

    /// True when a live (not zombie) process with this pid exists and is the same process
    /// (same start time).
    pub fn is_running(&self) -> bool {
        stat_fields(self.pid).is_some_and(|f| f.start_ticks == self.start_ticks && !f.zombie)
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

//! One engine per run: the executing process holds an exclusive `flock` on
//! `.kiln/runs/<id>/engine.lock`. The kernel drops it when the process dies, so a crashed
//! engine never blocks `kiln resume`, and a live one is never joined by a second.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Take the lock, or say which process holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let path = run_dir.join("engine.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(format!(
                "another kiln process (pid {}) is executing this run",
                holder.trim()
            ));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }

    /// True when some live process holds the lock.
    pub fn is_held(run_dir: &Path) -> bool {
        let Ok(file) = File::open(run_dir.join("engine.lock")) else {
            return false;
        };
        match flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = flock(&file, FlockOperation::Unlock);
                false
            }
            Err(_) => true,
        }
    }
}

//! The SQLite database file a store has open, and whether its path still names it.
//!
//! A file replaced at the same path (a backup restored, `mv other.db kiln.db`) or removed while a
//! process has it open leaves that process writing to the old file, which no one reads again,
//! while new connections, and the next process, open the new one. The journal asks before each
//! commit and refuses to write once the path names another file, saying to restart. That is a
//! warning, not a protection: writes through the pool (claims, leases) are not checked, and
//! SQLite may replay the old file's write-ahead log (shared by path) into the new one, which can
//! damage it. A database is restored with every Kiln process on it stopped.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The file at `path` when the store opened it (its device and inode).
#[derive(Debug, Clone)]
pub(crate) struct DatabaseFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DatabaseFile {
    /// The file `path` names now; `None` when there is none.
    pub(crate) fn at(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Why the store must not write any more: its path names another file, or none.
    pub(crate) fn replaced(&self) -> Option<String> {
        let now = std::fs::metadata(&self.path);
        if now
            .as_ref()
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
        {
            return None;
        }
        let what = if now.is_ok() { "replaced" } else { "removed" };
        Some(format!(
            "the database file {} was {what} while this process had it open: what it wrote \
             since is in the old file, which nothing reads; stop this process (and every other \
             Kiln process on that database) and restart it",
            self.path.display()
        ))
    }
}

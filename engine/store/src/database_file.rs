//! The SQLite database file a store has open, and whether its path still names it.
//!
//! A file replaced at the same path (a backup restored, `mv other.db kiln.db`) or removed while a
//! process has it open leaves that process writing to the old file, which no one reads again,
//! while new connections, and the next process, open the new one. Worse, SQLite finds a
//! database's write-ahead log and shared memory by path: the old file's log is the one the new
//! file's connections find, and the last connection to close removes it by path.
//!
//! So, once the path names another file or none, the store stops: every write is refused (the
//! journal asks before each commit, a transaction before it begins), the process is told
//! ([`FileWatch::lost`]: `kiln serve` stops), and the store is not closed (closing would fold
//! the log into the old file and remove the log that the new file's connections use). The
//! process ends without closing its connections. A database is still restored with every Kiln
//! process on it stopped: a connection that opened the new file beside the old log before the
//! process noticed (within a second) may have replayed that log into it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The file at `path` when the store opened it (its device and inode).
#[derive(Debug, Clone)]
struct DatabaseFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DatabaseFile {
    /// The file `path` names now; `None` when there is none.
    fn at(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Why the store must not write any more: its path names another file, or none.
    fn replaced(&self) -> Option<String> {
        let now = std::fs::metadata(&self.path);
        if now
            .as_ref()
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
        {
            return None;
        }
        let what = if now.is_ok() { "replaced" } else { "removed" };
        Some(format!(
            "the database file {} was {what} while this process had it open: this process \
             stops without writing to it or closing it; stop every other Kiln process on that \
             database too, then start again",
            self.path.display()
        ))
    }
}

/// Whether a store's database file is still the one it opened: shared by the store, its
/// journal and whoever waits for [`Self::lost`]. Without a file (PostgreSQL, or a file the
/// store could not look at), never lost.
#[derive(Debug, Default)]
pub(crate) struct FileWatch {
    file: Option<DatabaseFile>,
    /// Why the store stopped writing, once it did (logged once, when found).
    lost: OnceLock<String>,
    found: tokio::sync::Notify,
}

impl FileWatch {
    /// Watches the file `path` names now (`None`: nothing to watch).
    pub(crate) fn new(path: Option<&Path>) -> Self {
        Self {
            file: path.and_then(DatabaseFile::at),
            ..Self::default()
        }
    }

    /// Why the store must not write any more, looking at the path now (one `stat`) unless that
    /// was found before; `None` while the path names the file the store opened.
    pub(crate) fn check(&self) -> Option<&str> {
        if let Some(lost) = self.lost.get() {
            return Some(lost);
        }
        let message = self.file.as_ref()?.replaced()?;
        if self.lost.set(message.clone()).is_ok() {
            tracing::error!(target: "errors.store", "{message}");
            self.found.notify_waiters();
        }
        self.lost.get().map(String::as_str)
    }

    /// Why the store stopped writing, if it did (found before; does not look now).
    pub(crate) fn lost_already(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    /// Resolves once the file is found replaced or removed, by a write or by a look every
    /// `every`; never without a file.
    pub(crate) async fn lost(&self, every: std::time::Duration) -> String {
        if self.file.is_none() {
            return std::future::pending().await;
        }
        loop {
            let found = self.found.notified();
            if let Some(lost) = self.check() {
                return lost.to_owned();
            }
            tokio::select! {
                () = found => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

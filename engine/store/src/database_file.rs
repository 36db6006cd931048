//! The SQLite database file a store has open, and whether its path still names it.
//!
//! A file replaced at the same path (a backup restored, `mv other.db kiln.db`) or removed while a
//! process has it open leaves that process writing to the old file, which no one reads again,
//! while new connections, and the next process, open the new one. Worse, SQLite finds a
//! database's write-ahead log and shared memory by path: the old file's log is the one the new
//! file's connections find, and the last connection to close removes it by path.
//!
//! So, once the path names another file or none, the store stops: every write is refused (the
//! journal asks before each commit, every write through the pool before it runs), the SQLite
//! writer's thread (which also looks every second) folds the log into the old file and empties
//! it, the process is told ([`FileWatch::lost`]: `kiln serve` and `kiln run` stop), and the
//! store is not closed (closing would remove by path the log that the new file's connections
//! use). The process ends without closing its connections. A database is still restored with
//! every Kiln process on it stopped: a connection that opened the new file beside the old log
//! before the process noticed (within a second) may have replayed that log into it, and a
//! connection reading the old file (another program's) keeps the log from being emptied.

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
/// journal, its SQLite writer's thread and whoever waits for [`Self::lost`]. Without a file
/// (PostgreSQL), never lost.
#[derive(Debug, Default)]
pub(crate) struct FileWatch {
    /// The file, recorded before the store opens it (or, for a file the store creates, once it
    /// exists: [`Self::opened`]).
    file: OnceLock<DatabaseFile>,
    /// Why the store stopped writing, once it did (logged once, when found).
    lost: OnceLock<String>,
    found: tokio::sync::Notify,
    /// Why the write-ahead log could not be emptied into the old file, when the SQLite writer
    /// tried (see `sqlite_writer`).
    log_left: OnceLock<String>,
}

impl FileWatch {
    /// Watches the file `path` names now, before anything opens it: a file replaced while the
    /// store opens it is then found replaced, not taken for the one it opened.
    pub(crate) fn new(path: &Path) -> Self {
        let watch = Self::default();
        if let Some(file) = DatabaseFile::at(path) {
            let _ = watch.file.set(file);
        }
        watch
    }

    /// The store has opened `path`: a file it created is recorded now; one recorded before is
    /// looked at again (replaced while it was being opened: lost at once).
    pub(crate) fn opened(&self, path: &Path) {
        if self.file.get().is_none() {
            if let Some(file) = DatabaseFile::at(path) {
                let _ = self.file.set(file);
            }
        } else {
            self.check();
        }
    }

    /// Why the store must not write any more, looking at the path now (one `stat`) unless that
    /// was found before; `None` while the path names the file the store opened.
    pub(crate) fn check(&self) -> Option<&str> {
        if let Some(lost) = self.lost.get() {
            return Some(lost);
        }
        let message = self.file.get()?.replaced()?;
        if self.lost.set(message.clone()).is_ok() {
            tracing::error!(target: "errors.store", "{message}");
            self.found.notify_waiters();
        }
        self.lost.get().map(String::as_str)
    }

    /// The write-ahead log beside the file could not be emptied into the old file: why.
    pub(crate) fn log_left(&self, why: String) {
        let _ = self.log_left.set(why);
    }

    /// Why the store stopped writing, for its user at the end. A write-ahead log still beside
    /// the path (not emptied: another program's reader kept it, or this store had no writer of
    /// its own to empty it with, its URL naming other options) is the old file's, which the
    /// file now at the path would take for its own: that is said, with what to do.
    pub(crate) fn lost_report(&self) -> Option<String> {
        let lost = self.check()?;
        let file = self.file.get()?;
        let mut wal = file.path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            let why = self.log_left.get().map_or(
                "this process has no connection of its own to the old file to empty it with",
                String::as_str,
            );
            return Some(format!(
                "{lost}. Its write-ahead log {} could not be emptied ({why}): the file now at \
                 that path would take the old file's pages for its own. Stop every process that \
                 has the database open (Kiln or not), then put the file to restore at that path \
                 again, with no `-wal` or `-shm` file beside it",
                std::path::Path::new(&wal).display()
            ));
        }
        Some(lost.to_owned())
    }

    /// Why the store stopped writing, if it did (found before; does not look now).
    pub(crate) fn lost_already(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    /// Resolves once the file is found replaced or removed, by a write or by a look every
    /// `every`; never without a file.
    pub(crate) async fn lost(&self, every: std::time::Duration) -> String {
        if self.file.get().is_none() {
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

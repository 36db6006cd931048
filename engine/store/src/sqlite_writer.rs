//! The journal's synchronous SQLite writer: one thread of its own with its own connection,
//! which applies a batch of writes that are statements ([`Statement`]) in one transaction.
//!
//! Through sqlx every statement is a hand-off between the runtime's thread and the
//! connection's worker thread (and back); here a batch is one hand-off, and the statements,
//! prepared once, run back to back. The journal sends it the batches made only of such writes
//! (a step's start, end and log lines, progress, checkpoints, a run's start and end, a run's
//! creation without training claims); the others (claims, which decide on what they read, a
//! step start whose attempt number is awaited) go through sqlx as before. Batches are applied
//! one after the other whichever way they go, so order is kept.
//!
//! Semantics are the journal's: fenced writes of a run another engine took over are refused
//! with [`Error::LeaseLost`] (the leases are read in one query: `BEGIN IMMEDIATE` holds SQLite's
//! write lock until the commit); a write that fails is rolled back alone (the batch is applied
//! again with a savepoint around each write) and the others commit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::Error;
use crate::database_file::FileWatch;
use crate::journal::{Arg, Fence, Statement, lost};

/// One write of a batch: its statements, what it was doing, the lease it is fenced with.
pub(crate) struct Write {
    pub statements: Vec<Statement>,
    pub doing: &'static str,
    pub fence: Option<(Arc<str>, Fence)>,
}

/// How a batch went: each write's outcome, then the commit's.
pub(crate) type Outcome = (Vec<Result<(), Error>>, Result<(), String>);

type Job = (Vec<Write>, oneshot::Sender<Outcome>);

/// The sending side of the writer thread.
pub(crate) struct SqliteWriter {
    jobs: std::sync::mpsc::Sender<Job>,
    /// Whether the thread opened its connection, until [`Self::opened`] asked.
    /// (In a mutex only to make the writer `Sync`.)
    opened: std::sync::Mutex<Option<std::sync::mpsc::Receiver<Result<(), String>>>>,
    /// Resolves once the thread has closed its connection, after this writer is dropped.
    closed: Option<oneshot::Receiver<()>>,
}

impl SqliteWriter {
    /// Starts the thread, which opens its connection to the database file `path` (beside
    /// whatever the caller does next: see [`Self::opened`]). The database exists; it is
    /// migrated before the first batch. `watch`: whether `path` still names that file, which
    /// the thread also looks at every second (see [`abandon_connection`]).
    pub(crate) fn open(path: &Path, watch: Arc<FileWatch>) -> Self {
        let path = path.to_owned();
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (was_opened, opened) = std::sync::mpsc::sync_channel(1);
        let (was_closed, closed) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("kiln-sqlite-writer".into())
            .spawn(move || {
                let mut conn = match connect(&path) {
                    Ok(conn) => {
                        let _ = was_opened.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = was_opened.send(Err(e));
                        return;
                    }
                };
                let mut abandoned = false;
                loop {
                    match queue.recv_timeout(LOOK_EVERY) {
                        // The journal looked at the file before sending it.
                        Ok((writes, done)) => {
                            let outcome = match watch.lost_already() {
                                Some(lost) => refused(writes.len(), lost),
                                None => apply_batch(&mut conn, &writes),
                            };
                            let _ = done.send(outcome);
                        }
                        // Idle for a second: a look of its own.
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            watch.check();
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    if !abandoned && watch.lost_already().is_some() {
                        abandon_connection(&conn, &watch);
                        abandoned = true;
                    }
                }
                // A last look: replaced since the last second.
                if !abandoned && watch.check().is_some() {
                    abandon_connection(&conn, &watch);
                    abandoned = true;
                }
                if abandoned {
                    // Left open until the process ends: closing it could remove by path the
                    // log that the new file's connections use.
                    std::mem::forget(conn);
                    let _ = was_closed.send(());
                    return;
                }
                // Everything is committed: fold the write-ahead log into the database file
                // now, whichever connection closes last (SQLite does it again, and removes
                // the log, only when the last one closes cleanly). Passive: it waits for no
                // reader, here or in another process.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(target: "store", "no checkpoint at close: {e}");
                }
                drop(conn);
                let _ = was_closed.send(());
            });
        let opened = match spawned {
            Ok(_) => opened,
            Err(e) => {
                let (failed, opened) = std::sync::mpsc::sync_channel(1);
                let _ = failed.send(Err(format!("cannot start its writer thread: {e}")));
                opened
            }
        };
        Self {
            jobs,
            opened: std::sync::Mutex::new(Some(opened)),
            closed: Some(closed),
        }
    }

    /// Waits until the thread has opened its connection; why it could not, if it could not.
    pub(crate) fn opened(&self) -> Result<(), String> {
        let opened = self.opened.lock().unwrap_or_else(|e| e.into_inner()).take();
        match opened {
            Some(opened) => opened
                .recv()
                .unwrap_or_else(|_| Err("its writer thread ended".into())),
            None => Ok(()),
        }
    }

    /// What resolves once the thread has closed its connection (when this writer is dropped
    /// and the thread has applied what it was given). Taken once.
    pub(crate) fn take_closed(&mut self) -> Option<oneshot::Receiver<()>> {
        self.closed.take()
    }

    /// Applies `writes` in one transaction.
    pub(crate) async fn apply(&self, writes: Vec<Write>) -> Outcome {
        let count = writes.len();
        let (done, outcome) = oneshot::channel();
        let gone = || {
            let message = "the SQLite writer thread is gone".to_owned();
            (
                (0..count)
                    .map(|_| {
                        Err(Error::Commit {
                            doing: "writing",
                            message: message.clone(),
                        })
                    })
                    .collect(),
                Err(message.clone()),
            )
        };
        if self.jobs.send((writes, done)).is_err() {
            return gone();
        }
        outcome.await.unwrap_or_else(|_| gone())
    }
}

/// How often the writer's thread looks whether its database file is still the one it opened.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the log's emptying waits for a reader of the old file to let go of it.
const EMPTY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Each write of a batch refused, the database file being lost (`lost`: why).
fn refused(count: usize, lost: &str) -> Outcome {
    (
        (0..count)
            .map(|_| {
                Err(Error::DatabaseLost {
                    doing: "writing",
                    message: lost.to_owned(),
                })
            })
            .collect(),
        Err(lost.to_owned()),
    )
}

/// Empties the write-ahead log for good, as soon as the database file is found replaced or
/// removed at its path (see `database_file`); the connection is then left open until the
/// process ends. What the log holds is the old file's: it is folded into the old file (which
/// this connection still has open) and the log truncated, so that the file now at the path,
/// or the next one created there, does not take those pages for its own (SQLite finds a log by
/// path). A reader of the old file (another program's connection in a transaction) keeps it
/// from being emptied: waited for [`EMPTY_WAIT`], then noted for the process's last words
/// (`FileWatch::lost_report`).
fn abandon_connection(conn: &Connection, watch: &FileWatch) {
    let _ = conn.busy_timeout(EMPTY_WAIT);
    let left = match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(0) => return,
        Ok(_) => "another connection still reads the old database file".to_owned(),
        Err(e) => e.to_string(),
    };
    tracing::error!(target: "errors.store", "the write-ahead log beside the replaced database file could not be emptied: {left}");
    watch.log_left(left);
}

/// The writer's connection to `path`: durable commits (FULL) in WAL mode. The error says
/// what is wrong with the file, and what to do.
fn connect(path: &Path) -> Result<Connection, String> {
    let opened = |e: rusqlite::Error| open_failure(path, &e);
    let conn = Connection::open(path).map_err(opened)?;
    conn.busy_timeout(BUSY).map_err(opened)?;
    // SQLite answers "database is locked" at once, without waiting, where waiting could
    // deadlock: a connection that reads the header to set the journal mode while another
    // process (opening the same new file) wants to write. Nothing was changed then, so the
    // pragmas are tried again, as long as a busy write would wait.
    let deadline = std::time::Instant::now() + BUSY;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
        ) {
            Ok(()) => break,
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(opened(e)),
        }
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// How long a write waits for another connection's (SQLite's busy timeout).
const BUSY: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `e` is SQLite's "database is locked" (`BUSY`, `LOCKED`).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Why the database file `path` could not be opened (`e`), and what to do about it.
fn open_failure(path: &Path, e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode as C;
    let file = path.display();
    match e.sqlite_error_code() {
        Some(C::NotADatabase | C::DatabaseCorrupt) => format!(
            "{file} is not a SQLite database, or is damaged ({e}): move it aside (Kiln creates \
             a new one) or restore it from a backup, or name another file with --database-url"
        ),
        Some(C::CannotOpen | C::PermissionDenied | C::ReadOnly) => {
            // The folder SQLite writes in: the real file's, where `path` is a symbolic link.
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
            let dir = real.parent().unwrap_or(Path::new("/")).display();
            format!(
                "{e}: this user must be able to read and write {file} and its folder {dir} \
                 (SQLite keeps its `-wal` and `-shm` files beside it)"
            )
        }
        _ => format!("{file}: {e}"),
    }
}

fn write_err(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::Write {
        doing,
        message: e.to_string(),
    }
}

fn apply_batch(conn: &mut Connection, writes: &[Write]) -> Outcome {
    if writes
        .iter()
        .all(|w| w.statements.is_empty() && w.fence.is_none())
    {
        // Nothing to write or check: everything queued before is committed already.
        return (writes.iter().map(|_| Ok(())).collect(), Ok(()));
    }
    apply_once(conn, writes, false)
        // A write failed: applied again, each write in a savepoint of its own (which never
        // gives up on the batch).
        .or_else(|()| apply_once(conn, writes, true))
        .unwrap_or_else(|()| {
            let message = "a write failed".to_owned();
            let failed = writes.iter().map(|w| {
                Err(Error::Write {
                    doing: w.doing,
                    message: message.clone(),
                })
            });
            (failed.collect(), Err(message))
        })
}

/// One transaction over `writes`; without savepoints, `Err` when a write failed (rolled back).
fn apply_once(conn: &mut Connection, writes: &[Write], savepoints: bool) -> Result<Outcome, ()> {
    let not_begun = |e: rusqlite::Error| {
        let message = format!("cannot begin a write transaction: {e}");
        tracing::error!(target: "errors.store", writes = writes.len(), "{message}");
        (
            writes
                .iter()
                .map(|w| {
                    Err(Error::Commit {
                        doing: w.doing,
                        message: message.clone(),
                    })
                })
                .collect(),
            Err(message.clone()),
        )
    };
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return Ok(not_begun(e));
    }
    let leases = read_fences(conn, writes);
    let mut outcomes = Vec::with_capacity(writes.len());
    for write in writes {
        let refused = write.fence.as_ref().and_then(|(run, fence)| {
            let held = leases.as_ref().map(|l| l.get(&**run));
            let ours = match held {
                Ok(Some((owner, epoch))) => {
                    owner.as_deref() == Some(&fence.owner) && *epoch == fence.epoch
                }
                Ok(None) => false,
                Err(message) => {
                    return Some(Error::LeaseLost {
                        run: run.to_string(),
                        message: format!("cannot check the run's lease: {message}"),
                    });
                }
            };
            (!ours).then(|| Error::LeaseLost {
                run: run.to_string(),
                message: lost(fence),
            })
        });
        if let Some(refused) = refused {
            outcomes.push(Err(refused));
            continue;
        }
        if savepoints && let Err(e) = conn.execute_batch("SAVEPOINT kiln_write") {
            outcomes.push(Err(write_err(write.doing)(e)));
            continue;
        }
        let result = write
            .statements
            .iter()
            .try_for_each(|s| execute(conn, s).map_err(write_err(write.doing)));
        if savepoints {
            if result.is_err() {
                let _ = conn.execute_batch("ROLLBACK TO SAVEPOINT kiln_write");
            }
            let _ = conn.execute_batch("RELEASE SAVEPOINT kiln_write");
        } else if result.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(());
        }
        outcomes.push(result);
    }
    let committed = conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    });
    Ok((outcomes, committed))
}

/// Executes `statement`, its `$N` parameters bound by number.
fn execute(conn: &Connection, statement: &Statement) -> rusqlite::Result<()> {
    let mut prepared = conn.prepare_cached(&statement.sql)?;
    for (n, arg) in statement.args.iter().enumerate() {
        let Some(index) = prepared.parameter_index(&format!("${}", n + 1))? else {
            continue;
        };
        match arg {
            Arg::Int(v) => prepared.raw_bind_parameter(index, v)?,
            Arg::Text(v) => prepared.raw_bind_parameter(index, v.as_deref())?,
        }
    }
    prepared.raw_execute()?;
    Ok(())
}

/// The lease (owner, epoch) of every run the batch's writes are fenced with, or why they
/// cannot be read.
fn read_fences(
    conn: &Connection,
    writes: &[Write],
) -> Result<HashMap<String, (Option<String>, i64)>, String> {
    let mut runs: Vec<&str> = writes
        .iter()
        .filter_map(|w| w.fence.as_ref().map(|(run, _)| &**run))
        .collect();
    runs.sort_unstable();
    runs.dedup();
    let mut held = HashMap::new();
    for chunk in runs.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|n| format!("?{n}")).collect();
        let sql = format!(
            "SELECT id, lease_owner, lease_epoch FROM runs WHERE id IN ({})",
            marks.join(", ")
        );
        let mut query = conn.prepare(&sql).map_err(|e| e.to_string())?;
        let rows = query
            .query_map(rusqlite::params_from_iter(chunk.iter()), |row| {
                Ok((row.get::<_, String>(0)?, (row.get(1)?, row.get(2)?)))
            })
            .map_err(|e| e.to_string())?;
        for row in rows {
            let (id, lease) = row.map_err(|e| e.to_string())?;
            held.insert(id, lease);
        }
    }
    Ok(held)
}

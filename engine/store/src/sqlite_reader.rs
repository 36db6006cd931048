//! Direct reads of the hottest records (a token, a run, its steps) on a plain SQLite file, on
//! the calling thread, through rusqlite connections of their own.
//!
//! Through sqlx every read is a hand-off to a connection's worker thread and back; with many
//! clients, `kiln serve` spent a fifth of its CPU on such context switches. A point read from
//! SQLite in WAL mode takes microseconds and never waits for a writer, so it runs where it is
//! asked for. Rows are handed to the same row types as sqlx's path (through serde), so both
//! read alike. Whatever fails here (a busy database, a row that does not fit) is read again
//! through sqlx, which reports it as before: this path only ever makes a read faster.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, ToSql};
use serde::de::DeserializeOwned;

/// How long a direct read waits for a lock (only a recovery or a truncating checkpoint by
/// another connection takes one a reader waits for) before it gives the read to sqlx, which
/// waits without holding a thread.
const BUSY: Duration = Duration::from_millis(100);

/// Idle connections always kept (see [`SqliteReader::kept`]).
const MIN_KEPT: usize = 4;

#[derive(Debug)]
pub(crate) struct SqliteReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// How many connections are kept for reuse (see [`Self::kept`]); more are opened when
    /// more reads run at once, then closed.
    kept: std::sync::OnceLock<usize>,
    /// Set by [`Self::close`]: reads go to sqlx (which then fails as a closed pool does).
    closed: AtomicBool,
    /// Reads handed to sqlx after an attempt here.
    fallbacks: AtomicU64,
}

impl SqliteReader {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            kept: std::sync::OnceLock::new(),
            closed: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// How many reads were handed to sqlx after an attempt here.
    pub(crate) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The rows of `sql` with `args`, each deserialized from its columns by name; `Err` (its
    /// message) when the read should go through sqlx instead.
    pub(crate) fn rows<T: DeserializeOwned>(
        &self,
        sql: &str,
        args: &[&dyn ToSql],
    ) -> Result<Vec<T>, String> {
        let rows = self
            .with_connection(|conn| read(conn, sql, args))
            .and_then(|r| r);
        if rows.is_err() {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        rows
    }

    /// `f` on a kept connection (one is opened if none is idle), which is kept again after.
    pub(crate) fn with_connection<R>(&self, f: impl FnOnce(&Connection) -> R) -> Result<R, String> {
        if self.closed.load(Ordering::Acquire) {
            return Err("the store is closed".into());
        }
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = kept
            .map_or_else(|| self.open(), Ok)
            .map_err(|e| e.to_string())?;
        let out = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if !self.closed.load(Ordering::Acquire)
            && (idle.len() < MIN_KEPT || idle.len() < self.kept())
        {
            idle.push(conn);
        }
        Ok(out)
    }

    /// Connections kept for reuse: one per thread that may read at once, at least
    /// [`MIN_KEPT`]. Asked only once more than that are idle (it reads cgroup files).
    fn kept(&self) -> usize {
        *self
            .kept
            .get_or_init(|| std::thread::available_parallelism().map_or(MIN_KEPT, |n| n.get()))
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY)?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    /// Closes the kept connections; reads from now on go to sqlx.
    pub(crate) fn close(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::Release);
        idle.clear();
    }
}

fn read<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    args: &[&dyn ToSql],
) -> Result<Vec<T>, String> {
    let mut statement = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
    let mut rows = statement.query(args).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    // Taken once the statement has run: SQLite prepares it again if the schema changed.
    let mut names: Vec<String> = Vec::new();
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        if names.is_empty() {
            names = row
                .as_ref()
                .column_names()
                .into_iter()
                .map(str::to_owned)
                .collect();
        }
        let mut fields = serde_json::Map::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let value = match row.get_ref(i).map_err(|e| e.to_string())? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(n) => n.into(),
                ValueRef::Real(x) => x.into(),
                ValueRef::Text(t) => std::str::from_utf8(t)
                    .map_err(|e| format!("column {name}: {e}"))?
                    .into(),
                ValueRef::Blob(_) => return Err(format!("column {name} holds a BLOB")),
            };
            fields.insert(name.clone(), value);
        }
        out.push(serde_json::from_value(fields.into()).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

//! Kiln's durable state: runs, steps, events, checkpoints and models in SQL.
//!
//! Architecture invariant: this is the only crate that knows SQL. It speaks to SQLite (the
//! default, a file in the workspace's `.kiln/`) and PostgreSQL through sqlx's `Any` driver with
//! one set of portable migrations (`migrations/` at the repository root) and portable queries;
//! on SQLite the journal's batches of plain statements also go through a rusqlite connection
//! of their own (`sqlite_writer`), and the hottest reads through rusqlite connections on the
//! calling thread (`sqlite_reader`), on the same libsqlite3.

mod cache;
mod columns;
mod database_file;
mod events;
mod journal;
mod leases;
mod models;
mod ownership;
mod runs;
mod sqlite_reader;
mod sqlite_writer;
mod status;
mod steps;
pub mod test_support;
mod time_fmt;
mod tokens;

pub use cache::CachedOutputs;
pub use events::{Checkpoint, EpochMetrics, Event};
pub use journal::LINGER;
pub use leases::{EngineRecord, Lease, LeaseHolder, NewEngine};
pub use models::{ModelRecord, NewModel, STAGES};
pub use ownership::{ClaimOutcome, DatasetUse, TrainingRef};
pub use runs::{NewRun, RunRecord, RunStats, StepStats};
pub use status::{ParseStatusError, RunStatus, StepStatus};
pub use steps::{NewStep, PluginIdentity, StepEnd, StepRecord};
pub use time_fmt::{now, timestamp};
pub use tokens::TokenRecord;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};
use std::str::FromStr;
use std::time::Duration;

/// Errors of the store. Each names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    /// A SQLite file that exists but cannot be opened as Kiln's database (not a database,
    /// damaged, unreadable).
    #[error("cannot open the database {url}: {reason}")]
    Open { url: String, reason: String },
    /// A database URL Kiln cannot use: an unknown scheme, an in-memory database, no file, a
    /// path SQLite would be given altered.
    #[error("cannot use the database {url}: {reason}")]
    DatabaseUrl { url: String, reason: String },
    #[error("cannot migrate the database {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {doing}: {source}")]
    Query {
        doing: &'static str,
        source: sqlx::Error,
    },
    #[error("corrupt record while {doing}: {message}")]
    Corrupt {
        doing: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("database error while {doing}: {message}")]
    Write {
        doing: &'static str,
        message: String,
    },
    #[error("database error while {doing}: the commit failed: {message}")]
    Commit {
        doing: &'static str,
        message: String,
    },
    #[error(
        "training `{name}` of project `{project}` belongs to run {owner} ({status}); choose \
         another training_name, or delete run {owner} to free it"
    )]
    TrainingTaken {
        project: String,
        name: String,
        owner: String,
        status: RunStatus,
    },
    #[error("run {run}: {message}; this engine stopped acting on it")]
    LeaseLost { run: String, message: String },
    /// The SQLite database file was replaced or removed while the store had it open: nothing
    /// is written any more, and the process stops (see `database_file`).
    #[error("cannot write while {doing}: {message}")]
    DatabaseLost {
        doing: &'static str,
        message: String,
    },
    #[error("no model `{0}`")]
    ModelNotFound(String),
    #[error("no run matches `{0}`")]
    RunNotFound(String),
    #[error("`{prefix}` matches several runs ({candidates}); give more characters of the id")]
    AmbiguousRun { prefix: String, candidates: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn query_err(doing: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Query { doing, source }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// `url` as messages show it: a password in it replaced by `***` (in its user part, or a
/// `password` option in any case).
fn shown_url(url: &str) -> String {
    // Read as text, not parsed: a URL that does not parse is shown in the error that says so.
    let mut shown = url.to_owned();
    if !url.starts_with("sqlite:") {
        // The user part starts after `scheme://` (or `scheme:`) and ends at the last `@`: a
        // password may hold `@`, `?` or `/` unescaped, and masking too much is harmless.
        let start = url
            .find("://")
            .map(|i| i + 3)
            .or_else(|| url.find(':').map(|i| i + 1))
            .unwrap_or(0);
        if let Some(at) = url[start..].rfind('@').map(|i| start + i)
            && let Some(colon) = url[start..at].find(':').map(|i| start + i)
        {
            shown = format!("{}***{}", &url[..=colon], &url[at..]);
        }
    }
    if let Some(q) = shown.find('?') {
        let (head, query) = shown.split_at(q + 1);
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                // `password`, `sslpassword`, in any case, escaped or not.
                Some((key, _))
                    if percent_encoding::percent_decode_str(key)
                        .decode_utf8_lossy()
                        .to_ascii_lowercase()
                        .contains("password") =>
                {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        shown = format!("{head}{}", pairs.join("&"));
    }
    shown
}

/// Opens `pool`'s first connection (to the server at `url`). sqlx's pool tries a connection the
/// server refuses (down, a wrong port) again and again until its acquire timeout, 30 s, and then
/// says only that it timed out: when none is open after a second, one connection of its own
/// says why; one that gets no answer in 10 s more says so.
async fn first_connection(pool: &AnyPool, url: &str) -> std::result::Result<(), sqlx::Error> {
    use sqlx::Connection;
    let first = pool.acquire();
    tokio::pin!(first);
    tokio::select! {
        conn = &mut first => return conn.map(drop),
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
    let probe = tokio::time::timeout(Duration::from_secs(10), sqlx::AnyConnection::connect(url));
    tokio::select! {
        conn = &mut first => conn.map(drop),
        probed = probe => match probed {
            Ok(Err(e)) => Err(e),
            // It connects: the pool's own attempt decides.
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                first.await.map(drop)
            }
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from the server in 10 s",
            ))),
        },
    }
}

/// Applies the pending migrations to the database at `url`.
async fn migrate(pool: &AnyPool, url: &str) -> Result<()> {
    MIGRATOR.run(pool).await.map_err(|source| Error::Migrate {
        url: url.to_owned(),
        source,
    })
}

/// Whether the database `conn` is open on has every migration of this build applied, and no
/// other: exactly when sqlx's migrator would find nothing to do and nothing to complain about
/// (its rows are written in the same transaction as the migration they record).
fn migrations_applied(conn: &rusqlite::Connection) -> bool {
    let expected: Vec<(i64, &[u8])> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, &*m.checksum))
        .collect();
    let applied = conn
        .prepare("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
        .and_then(|mut query| {
            query
                .query_map([], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, bool>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
    applied.is_ok_and(|applied| {
        applied.len() == expected.len()
            && applied
                .iter()
                .zip(&expected)
                .all(|((version, checksum, success), (v, c))| {
                    *success && version == v && checksum.as_slice() == *c
                })
    })
}

/// A connection pool to Kiln's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
    journal: journal::Journal,
    /// The run leases this process holds: what its writes are fenced with.
    fences: journal::Fences,
    /// Direct reads of the hottest records, on a plain SQLite file (see `sqlite_reader`).
    reader: Option<std::sync::Arc<sqlite_reader::SqliteReader>>,
    /// Writes left to finish on their own (a dropped lease's release), awaited by `close`.
    background: tokio_util::task::TaskTracker,
    url: String,
    /// Whether the SQLite file is still the one opened (see `database_file`).
    file: std::sync::Arc<database_file::FileWatch>,
}

/// Why `url` is not a database URL Kiln can use, judged before anything is opened: a scheme
/// other than `sqlite:` or `postgres://` (sqlx would take `SQLITE:` for PostgreSQL, or wait
/// 30 s on `mysql://`).
fn unknown_scheme(url: &str) -> Option<String> {
    let known = ["sqlite:", "postgres://", "postgresql://"];
    if known.iter().any(|scheme| url.starts_with(scheme)) {
        return None;
    }
    Some(
        "not a database URL Kiln knows: use sqlite://PATH (a file; relative paths are read \
         from the current directory) or postgres://USER@HOST/DATABASE"
            .into(),
    )
}

/// The options of the SQLite database `url` names, as a file on disk at an absolute path,
/// or why not.
///
/// An in-memory database (`sqlite::memory:`, `mode=memory` however spelt) is refused: it would
/// hold nothing past this process, and each of the store's connections would see a database
/// of its own. The file is created when missing unless the URL names a `mode` (`ro` opens it
/// read-only, `rw` only if it exists). The path is made absolute (against the working
/// directory) because sqlx rebuilds a URL from the options, and that URL must name the same
/// file: with a relative path whose first part holds a `:` it does not parse (sqlx panics),
/// and a `%` in a path is decoded again on the way back.
fn sqlite_file(url: &str) -> std::result::Result<sqlx::sqlite::SqliteConnectOptions, String> {
    use sqlx::ConnectOptions as _;
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    // (An empty one stays empty: `sqlite://?mode=memory` is judged by its mode below.)
    let named = opts.get_filename();
    let path = if named.as_os_str().is_empty() {
        std::path::PathBuf::new()
    } else {
        std::path::absolute(named).map_err(|e| format!("cannot resolve the database path: {e}"))?
    };
    if path.as_os_str().to_str().is_none() {
        return Err("the database path is not valid UTF-8: choose another path".into());
    }
    let opts = opts.filename(&path);
    // The mode as sqlx understood it (decoded, the last one given).
    let rebuilt = opts.to_url_lossy();
    let mode = rebuilt
        .query_pairs()
        .find(|(key, _)| key == "mode")
        .map(|(_, value)| value.into_owned());
    if mode.as_deref() == Some("memory") {
        return Err(
            "an in-memory SQLite database keeps nothing after this process and is not shared \
             between its connections: name a file, e.g. sqlite://.kiln/kiln.db (or leave \
             --database-url out for the workspace's own)"
                .into(),
        );
    }
    if path.as_os_str().is_empty() {
        return Err("the URL names no file: use sqlite://PATH".into());
    }
    let back = sqlx::sqlite::SqliteConnectOptions::from_url(&rebuilt).map_err(|e| e.to_string())?;
    if back.get_filename() != path {
        return Err(format!(
            "SQLite would be given another path than {} (sqlx reads a `%` followed by two hex \
             digits as an escape, and folds `.` and `..` parts): write the path without them, \
             rename it, or name another file with --database-url",
            path.display()
        ));
    }
    let names_mode = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|o| o.starts_with("mode=")));
    Ok(if names_mode {
        opts
    } else {
        opts.create_if_missing(true)
    })
}

/// Why this process cannot read and write the database file `db`, or the `-wal` and `-shm`
/// files beside it, or create it in its folder (its effective user, the modes, a read-only file
/// system); `None` when it can.
fn not_writable(db: &std::path::Path) -> Option<String> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    let access = |path: &std::path::Path, mode| accessat(CWD, path, mode, AtFlags::EACCESS);
    // A new database is created in its folder, with its `-wal` and `-shm` beside it.
    if !db.exists() {
        let dir = db.parent().filter(|d| d.is_dir())?;
        let e = access(dir, Access::WRITE_OK | Access::EXEC_OK).err()?;
        return Some(format!(
            "cannot create {}: this user cannot write its folder {} ({e}); make the folder \
             writable for this user, or name another file with --database-url",
            db.display(),
            dir.display()
        ));
    }
    let mut files = vec![db.to_owned()];
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(name.into());
    }
    files.iter().find_map(|file| {
        match access(file, Access::READ_OK | Access::WRITE_OK) {
            // Only the database file must exist.
            Err(rustix::io::Errno::NOENT) if file != db => None,
            Err(rustix::io::Errno::ROFS) => Some(format!(
                "{} is on a read-only file system: Kiln writes runs and tokens to the database; \
                 copy it to a writable place and name the copy with --database-url",
                file.display()
            )),
            Err(e) => Some(format!(
                "{} cannot be written by this user ({e}): Kiln writes runs and tokens to the \
                 database, and SQLite keeps its `-wal` and `-shm` beside it; make them readable \
                 and writable for this user (for instance `chmod u+rw`, or run as their owner). \
                 To only read it, copy the database and name the copy with --database-url",
                file.display()
            )),
            Ok(()) => None,
        }
    })
}

/// How a store on a plain SQLite file reads its hottest records (a token, a run, its steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// On the calling thread, through connections of the store's own (`sqlite_reader`): for a
    /// process that executes runs (`kiln run`, `kiln serve`). A database that exists and is
    /// migrated is then opened without sqlx: one of those connections checks the migrations,
    /// and sqlx's pool connects when something first needs it.
    Direct,
    /// Through sqlx's pool, opened (with its migrations check) on connecting: for a command
    /// that reads through sqlx anyway (listing runs, models) and exits. A direct read would
    /// open another connection, and parse the schema again.
    Pooled,
}

impl Store {
    /// Connect to `url` (`sqlite://PATH` or `postgres://...`), creating a SQLite file if needed,
    /// and apply pending migrations. Reads are [`Reads::Direct`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Reads::Direct).await
    }

    /// [`Self::connect`], reading as `reads` says.
    pub async fn connect_with(url: &str, reads: Reads) -> Result<Self> {
        sqlx::any::install_default_drivers();
        // The URL as errors show it: without its password.
        let shown = shown_url(url);
        if let Some(reason) = unknown_scheme(url) {
            return Err(Error::DatabaseUrl {
                url: shown.clone(),
                reason,
            });
        }
        let is_sqlite = url.starts_with("sqlite:");
        let connect_err = |source| Error::Connect {
            url: shown.clone(),
            source,
        };
        // Only a plain file on disk, opened read-write: a URL with other options (read-only,
        // immutable, in memory, a shared cache) would mean another database, or writes where
        // none were asked for, to rusqlite; sqlx alone honours them.
        let plain = url
            .split_once('?')
            .is_none_or(|(_, query)| query.split('&').all(|o| o == "mode=rwc" || o == "mode=rw"));
        // The database file, for the journal's writer and the direct reads; whether its path
        // still names it (recorded before anything opens it: see `database_file`).
        let mut file = None;
        let mut watch = std::sync::Arc::new(database_file::FileWatch::default());
        let mut direct = None;
        let mut reader = None;
        // The journal's writer, once its thread has opened its connection.
        let opened = |writer: sqlite_writer::SqliteWriter| {
            writer
                .opened()
                .map(|()| writer)
                .map_err(|reason| Error::Open {
                    url: shown.clone(),
                    reason,
                })
        };
        let pool = if is_sqlite {
            // Durable commits (FULL) in WAL mode; wait for writers instead of failing at once.
            let opts = sqlite_file(url)
                .map_err(|reason| Error::DatabaseUrl {
                    url: shown.clone(),
                    reason,
                })?
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30));
            let db = opts.get_filename().to_owned();
            file = Some(db.clone());
            // An existing database file: the journal's writer opens its connection on its own thread,
            // beside what follows. A database that is migrated already then opens without
            // sqlx (`Reads::Direct`): a reader's connection checks the migrations, and sqlx's
            // pool connects when first used (the journal's claims, reads without a direct
            // path). `kiln run` opens two connections instead of three, and hands no statement
            // to sqlx's worker thread.
            let mut migrated = false;
            if db.is_dir() {
                return Err(Error::Open {
                    url: shown.clone(),
                    reason: format!("{} is a folder: name a file", db.display()),
                });
            }
            // SQLite opens a file this user cannot write read-only, silently: a write would
            // fail, and the `-wal` and `-shm` made meanwhile (read-only like the file) would
            // block runs after the file is made writable again. Whatever the command.
            if plain && let Some(reason) = not_writable(&db) {
                return Err(Error::Open {
                    url: shown.clone(),
                    reason,
                });
            }
            // A file this store may create is created now, empty (it goes the migrator's way
            // below), so that the file is known before anything opens it: one replaced while
            // it is opened, or created, is then found replaced (see `database_file`).
            let may_create = url.split_once('?').is_none_or(|(_, query)| {
                query
                    .split('&')
                    .filter(|o| o.starts_with("mode="))
                    .all(|o| o == "mode=rwc")
            });
            if may_create {
                use std::os::unix::fs::OpenOptionsExt as _;
                // Already there (another process created it first): that one is the file.
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&db);
            }
            watch = std::sync::Arc::new(database_file::FileWatch::new(&db));
            // An empty file may be one another process is creating right now (its first
            // writes are in the write-ahead log): it goes the migrator's way, under the lock.
            let written = std::fs::metadata(&db).is_ok_and(|m| m.is_file() && m.len() > 0);
            if plain && written {
                let writer = sqlite_writer::SqliteWriter::open(&db, watch.clone());
                if reads == Reads::Direct {
                    let checking = sqlite_reader::SqliteReader::new(&db);
                    migrated = checking.with_connection(migrations_applied) == Ok(true);
                    reader = Some(std::sync::Arc::new(checking));
                }
                // A file SQLite cannot open as a database is reported now: sqlx's pool would
                // try again and again until its 30 s timeout.
                direct = Some(opened(writer)?);
            }
            let any: AnyConnectOptions =
                AnyConnectOptions::from_url(&opts.to_url_lossy()).map_err(connect_err)?;
            // `to_url_lossy` names the same file (`sqlite_file`) but drops the pragmas above,
            // so set them on every connection too.
            // Readers never wait long for a connection (WAL: they do not block the writer,
            // which holds one of its own); a local file needs no check before each use.
            let options = AnyPoolOptions::new()
                .max_connections(8)
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        use sqlx::Executor;
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                             PRAGMA foreign_keys=ON; PRAGMA busy_timeout=30000;",
                        )
                        .await?;
                        Ok(())
                    })
                });
            if migrated {
                options.min_connections(0).connect_lazy_with(any)
            } else {
                // SQLite has no migration lock of its own: processes opening a new database at
                // the same time would both create its tables. A file lock beside the database
                // serializes them.
                let lock_path = db.with_extension("migrate-lock");
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .and_then(|f| {
                        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
                        Ok(f)
                    })
                    .map_err(|e| Error::Open {
                        url: shown.clone(),
                        reason: format!(
                            "cannot open its lock file {} ({e}): this user must be able to \
                             write the database's folder {}",
                            lock_path.display(),
                            lock_path
                                .parent()
                                .unwrap_or(std::path::Path::new("/"))
                                .display()
                        ),
                    })?;
                let pool = options
                    // Where the journal writes through sqlx, it keeps a connection of its own,
                    // and the first read must not wait for one to be opened: two, the second
                    // opened in the background. Beside the synchronous writer (a plain file)
                    // one is enough: the journal's sqlx writes are then rare (claims, a step
                    // start whose attempt is awaited).
                    .min_connections(if plain { 1 } else { 2 })
                    .connect_with(any)
                    .await
                    .map_err(connect_err)?;
                migrate(&pool, &shown).await?;
                drop(lock);
                pool
            }
        } else {
            // An engine frozen inside a transaction (stopped, swapped out, a VM paused) would
            // keep its row locks, and no other engine could take its runs over: PostgreSQL ends
            // a session idle in a transaction this long (every transaction here is a few
            // statements sent back to back), which releases them.
            let pool = AnyPoolOptions::new()
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        use sqlx::Executor;
                        conn.execute("SET idle_in_transaction_session_timeout = 5000")
                            .await?;
                        Ok(())
                    })
                })
                .connect_lazy(url)
                .map_err(connect_err)?;
            first_connection(&pool, url).await.map_err(|e| match e {
                sqlx::Error::Io(ref io)
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Error::Open {
                        url: shown.clone(),
                        reason: format!(
                            "{e}: is the PostgreSQL server running, and does it listen at the \
                             host and port the URL names?"
                        ),
                    }
                }
                e => connect_err(e),
            })?;
            migrate(&pool, &shown).await?;
            pool
        };
        // A file sqlx has just created.
        if let Some(db) = file
            .as_deref()
            .filter(|db| direct.is_none() && plain && db.is_file())
        {
            direct = Some(opened(sqlite_writer::SqliteWriter::open(
                db,
                watch.clone(),
            ))?);
            if reads == Reads::Direct {
                reader = Some(std::sync::Arc::new(sqlite_reader::SqliteReader::new(db)));
            }
        }
        let fences = journal::Fences::default();
        if let Some(db) = &file {
            watch.opened(db);
        }
        Ok(Self {
            journal: journal::Journal::start(
                pool.clone(),
                is_sqlite,
                direct,
                watch.clone(),
                fences.clone(),
            ),
            file: watch,
            fences,
            pool,
            sqlite: is_sqlite,
            reader,
            background: tokio_util::task::TaskTracker::new(),
            url: shown.clone(),
        })
    }

    /// The rows of `sql` (a read) read directly, where this store can (see `sqlite_reader`);
    /// `None` when the caller reads them through sqlx.
    pub(crate) fn read_direct<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Option<Vec<T>> {
        let reader = self.reader.as_ref()?;
        let rows = reader.rows(sql, args);
        if let Err(e) = &rows {
            let fallbacks = reader.fallbacks();
            tracing::debug!(target: "store", fallbacks, "read through sqlx instead: {e}");
        }
        rows.ok()
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool, for a write (in a transaction: [`Self::begin_write`]): refused once the
    /// database file was replaced or removed (see `database_file`).
    pub(crate) fn write_pool(&self, doing: &'static str) -> Result<&AnyPool> {
        match self.file.check() {
            Some(lost) => Err(Error::DatabaseLost {
                doing,
                message: lost.to_owned(),
            }),
            None => Ok(&self.pool),
        }
    }

    pub(crate) fn journal(&self) -> &journal::Journal {
        &self.journal
    }

    /// Waits until every write queued so far (log lines, progress, step ends) is durable.
    pub async fn flush(&self) -> Result<()> {
        self.journal.flush(None).await
    }

    /// [`Self::flush`], failing with [`Error::LeaseLost`] when this process's lease on `run_id`
    /// is no longer the run's: a barrier before acting outside the database for the run (a
    /// launch).
    pub async fn flush_run(&self, run_id: &str) -> Result<()> {
        self.journal.flush(Some(run_id)).await
    }

    /// Begin a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first cannot wait for another
    /// process's write and fails with SQLITE_BUSY_SNAPSHOT instead.
    ///
    /// Begun on a task of its own, which always completes: sqlx's SQLite `begin_with` is not
    /// cancel-safe. Dropped after its `BEGIN IMMEDIATE` ran but before it returned (a task
    /// aborted as `kiln serve` stops), it left the transaction open on a pooled connection
    /// with no `Transaction` to roll it back, holding the write lock: every other writer then
    /// waited out the 30 s busy timeout and failed. Here a caller that goes away drops the
    /// task's `Transaction`, which rolls back.
    pub(crate) async fn begin_write(
        &self,
        doing: &'static str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let (pool, sqlite) = (self.write_pool(doing)?.clone(), self.sqlite);
        let begun = tokio::spawn(async move {
            if sqlite {
                pool.begin_with("BEGIN IMMEDIATE").await
            } else {
                pool.begin().await
            }
        });
        begun
            .await
            .unwrap_or(Err(sqlx::Error::WorkerCrashed))
            .map_err(query_err(doing))
    }

    /// Another connection pool to the same database, as another process would open it (its
    /// own journal and leases). For tests of several engines.
    #[doc(hidden)]
    pub async fn reopen(&self) -> Self {
        let url = self.url.clone();
        Self::connect(&url).await.expect("reopening the database")
    }

    /// Waits for the lease releases left running, commits what is queued, stops the journal's
    /// writer and closes the connections. Writes after it fail. A store whose file was
    /// replaced or removed ([`Self::database_lost`]) only stops its writer: its connections
    /// stay open, and the process should end without dropping the store (its pool would close
    /// them).
    pub async fn close(&self) {
        self.close_with(false).await;
    }

    /// This process is handing its runs back (`kiln serve` stopping, before it records its
    /// engine stopped): the writes its aborted executions still queue are refused by their
    /// fences, or dropped by [`Self::close_discarding`], without being logged as errors.
    pub fn handing_back(&self) {
        self.journal.handing_back();
    }

    /// [`Self::close`] for a process that has handed its runs back (`kiln serve` stopping):
    /// the writes still queued, and any queued after, are dropped unwritten. Those are what its
    /// aborted executions queued after their leases were freed: written, each would be refused
    /// by its fence and logged as a lease lost to another engine.
    pub async fn close_discarding(&self) {
        self.close_with(true).await;
    }

    /// Why this store no longer writes, if it does not: its SQLite file was replaced or
    /// removed (looked at now, one `stat`). Such a store is not closed: the process ends with
    /// its connections open (see [`Self::close`]).
    pub fn database_lost(&self) -> Option<String> {
        self.file.check().map(str::to_owned)
    }

    /// [`Self::database_lost`] for the process's last words, once the store is closed: with
    /// what became of the old file's write-ahead log when it is still beside the file, and
    /// what to do.
    pub fn database_lost_report(&self) -> Option<String> {
        self.file.lost_report()
    }

    /// Resolves once this store's SQLite file is found replaced or removed (by a write, or by
    /// a look every `every`), with why; never on PostgreSQL. `kiln serve` stops then.
    pub async fn database_lost_wait(&self, every: std::time::Duration) -> String {
        self.file.lost(every).await
    }

    async fn close_with(&self, discarding: bool) {
        self.background.close();
        self.background.wait().await;
        if self.file.check().is_some() {
            // The file was replaced or removed: its log and shared memory, found by path, may
            // be the new file's now. The last connection to close would fold the log into the
            // old file and remove it. The writer is stopped (what is queued is refused, and
            // its connection left open); nothing else is closed.
            let _ = self.journal.close().await;
            return;
        }
        // The readers first: the last connection to close folds the write-ahead log into the
        // database file and removes it, and a read-only one cannot.
        if let Some(reader) = &self.reader {
            reader.close();
        }
        if discarding {
            self.journal.discard().await;
        } else {
            let _ = self.journal.close().await;
        }
        self.pool.close().await;
        // sqlx's close can miss a connection given back to the pool while it ran (it lands
        // among the idle ones after the close looked): close again until none is left, so
        // the last one closes cleanly (on SQLite, that one removes the write-ahead log).
        for _ in 0..20 {
            if self.pool.size() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            self.pool.close().await;
        }
    }
}

#[cfg(test)]
mod tests;

//! Group commit: the state transitions of runs and steps are written by one writer task, which
//! applies every transition queued at that moment in a single transaction.
//!
//! A write is either *urgent* (its caller waits until it is durable: a step's start, a run's
//! end) or *deferred* (queued; durable with the next commit: log lines, progress, a step's end).
//! The writer commits as soon as an urgent write is queued, taking along everything queued
//! before it; deferred writes alone wait at most [`LINGER`] for company. So concurrent steps
//! share commits, and a finished step's record rides in the same commit as the start of the step
//! that needed it. A write that fails is rolled back alone and reports its error, the others
//! commit (the batch is then applied again with a savepoint around each write).
//!
//! Order is kept: writes are applied in the order they were queued, so a deferred write is never
//! durable after an urgent one queued later (what an urgent write's caller has seen complete is
//! committed with it or before it).
//!
//! Fencing: a write names the run whose state it changes. When this process holds (or held)
//! that run's lease ([`Fences`]), the write carries the lease's owner and epoch as they were
//! when it was queued, and the batch's transaction first checks, once per run and epoch, that
//! the run's `lease_owner` and `lease_epoch` are still those (an `UPDATE` of the row, so on
//! PostgreSQL a takeover waits for this commit; SQLite's direct writer, whose transaction holds
//! the write lock from its start, reads the leases of all the batch's runs in one query); when
//! another engine has taken the run over, those writes are refused with [`Error::LeaseLost`]
//! and the others commit. Captured at queue time: a write queued under a lease stays fenced by
//! it even if the lease is let go before the write is applied.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::database_file::FileWatch;
use crate::sqlite_writer::{SqliteWriter, Write};
use crate::{Error, Result};

/// Longest a deferred write waits for an urgent one before it is committed on its own.
pub const LINGER: Duration = Duration::from_millis(5);
/// Most writes in one transaction.
const MAX_BATCH: usize = 512;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Called with the commit's outcome once the batch is committed (or not).
type Finish = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

/// Records the outcome of a write the synchronous SQLite writer applied.
type Settle = Box<dyn FnOnce(Result<()>) + Send>;

/// The value a write made of statements yields once applied.
pub(crate) type Yields<T> = Box<dyn FnOnce() -> T + Send>;

/// Applies a queued write in the batch's transaction and keeps its outcome for [`Finish`];
/// returns whether it failed. Called again when its batch is replayed. With an error (the
/// write's run is fenced off), nothing is written and that error is its outcome.
type Apply =
    Box<dyn for<'c> FnMut(&'c mut AnyConnection, Option<Error>) -> BoxFuture<'c, bool> + Send>;

struct Queued {
    apply: Apply,
    finish: Finish,
    /// The write as statements, for the synchronous SQLite writer, and what records their
    /// outcome for `finish`.
    statements: Option<(Vec<Statement>, &'static str, Settle)>,
    urgent: bool,
    /// The writer stops after committing it ([`Journal::close`]).
    stops: bool,
    /// The writer drops the writes of its batch unwritten and stops ([`Journal::discard`]).
    discards: bool,
    /// The run whose state the write changes, and the lease this process held on it then.
    fence: Option<(Arc<str>, Fence)>,
}

/// A write that is one SQL statement: its text, with parameters `$1`, `$2`, ..., and their
/// values (kept to be applied again when its batch is replayed).
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub sql: Cow<'static, str>,
    pub args: Vec<Arg>,
}

/// A value bound to a [`Statement`]'s parameter.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}

impl Statement {
    /// Binds the arguments in order to `query`.
    fn bind<'q>(
        args: &'q [Arg],
        mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        for arg in args {
            query = match arg {
                Arg::Int(v) => query.bind(*v),
                Arg::Text(v) => query.bind(v.as_deref()),
            };
        }
        query
    }

    /// Executes the statement alone.
    pub(crate) async fn execute(
        &self,
        conn: &mut AnyConnection,
        doing: &'static str,
    ) -> Result<()> {
        Self::bind(&self.args, sqlx::query(&self.sql))
            .execute(conn)
            .await
            .map_err(crate::query_err(doing))?;
        Ok(())
    }
}

/// A lease this process holds: the owner and epoch a write of its run must still find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    pub owner: String,
    pub epoch: i64,
}

/// The leases this process holds, by run id.
pub(crate) type Fences = Arc<Mutex<HashMap<String, Fence>>>;

/// The sending side of the writer.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    tx: mpsc::UnboundedSender<Queued>,
    fences: Fences,
    /// Resolves once the synchronous SQLite writer has closed its connection; awaited by
    /// [`Journal::close`].
    direct_closed: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    /// Set once this process hands its runs back ([`Journal::handing_back`]).
    handed_back: Arc<AtomicBool>,
    /// Whether the database file is still the one opened: once not, writes are refused.
    file: Arc<FileWatch>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queued {{ urgent: {} }}", self.urgent)
    }
}

impl Journal {
    /// Starts the writer for `pool`, a SQLite database or not; `direct`: SQLite's
    /// synchronous writer, which applies the batches made only of statements; `file`: the
    /// SQLite file, whose path is checked before each commit ([`FileWatch::check`]).
    pub(crate) fn start(
        pool: AnyPool,
        sqlite: bool,
        mut direct: Option<SqliteWriter>,
        file: Arc<FileWatch>,
        fences: Fences,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let direct_closed = direct.as_mut().and_then(SqliteWriter::take_closed);
        tokio::spawn(writer(pool, sqlite, direct, file.clone(), rx));
        Self {
            tx,
            fences,
            direct_closed: Arc::new(Mutex::new(direct_closed)),
            handed_back: Arc::default(),
            file,
        }
    }

    /// Queues `write`, which changes the state of `run` (fenced) or of no run in particular.
    /// It may be applied more than once (a batch in which another write fails is replayed),
    /// each time in a fresh transaction: it must only act on the database.
    /// `statements`: the same write as statements (with the value it yields), which the
    /// synchronous SQLite writer may apply instead.
    pub(crate) fn queue<T: Send + 'static>(
        &self,
        urgent: bool,
        doing: &'static str,
        run: Option<&str>,
        statements: Option<(Vec<Statement>, Yields<T>)>,
        write: impl for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    ) -> oneshot::Receiver<Result<T>> {
        let (done, wait) = oneshot::channel();
        let outcome: Arc<Mutex<Option<Result<T>>>> = Arc::default();
        let apply: Apply = Box::new({
            let outcome = outcome.clone();
            move |conn, refused| {
                let outcome = outcome.clone();
                if let Some(e) = refused {
                    *outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(Err(e));
                    return Box::pin(async { false });
                }
                let applying = write(conn);
                Box::pin(async move {
                    let result = applying.await;
                    let failed = result.is_err();
                    *outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                    failed
                })
            }
        });
        let statements = statements.map(|(statements, value)| {
            let outcome = outcome.clone();
            let settle: Settle = Box::new(move |result| {
                *outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(result.map(|()| value()));
            });
            (statements, doing, settle)
        });
        let file = self.file.clone();
        let finish: Finish = Box::new(move |committed| {
            let applied = outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
            let result = match (applied, committed) {
                (Some(Ok(value)), Ok(())) => Ok(value),
                (Some(Err(e)), _) => Err(e),
                (_, Err(message)) if file.lost_already().is_some() => {
                    Err(Error::DatabaseLost { doing, message })
                }
                (Some(Ok(_)), Err(message)) => Err(Error::Commit { doing, message }),
                (None, Err(message)) => Err(Error::Commit { doing, message }),
                (None, Ok(())) => Err(Error::Commit {
                    doing,
                    message: "the write was not applied".into(),
                }),
            };
            let _ = done.send(result);
        });
        let queued = Queued {
            apply,
            finish,
            statements,
            urgent,
            stops: false,
            discards: false,
            fence: run.and_then(|run| {
                let fence = self
                    .fences
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(run)
                    .cloned()?;
                Some((Arc::from(run), fence))
            }),
        };
        self.send(queued, doing, wait)
    }

    /// Sends `queued` to the writer; `wait` hears its outcome.
    fn send<T: Send + 'static>(
        &self,
        queued: Queued,
        doing: &'static str,
        wait: oneshot::Receiver<Result<T>>,
    ) -> oneshot::Receiver<Result<T>> {
        if let Err(mpsc::error::SendError(_)) = self.tx.send(queued) {
            if self.handed_back.load(Ordering::Relaxed) {
                // Dropped on purpose ([`Self::discard`]): its caller hears that nothing was
                // committed, and nothing is logged.
                return oneshot::channel().1;
            }
            // The writer is gone (the runtime is shutting down): nothing will be written.
            let (done, wait) = oneshot::channel();
            let _ = done.send(Err(Error::Commit {
                doing,
                message: "the store is closed".into(),
            }));
            return wait;
        }
        wait
    }

    /// Writes and waits until the write is durable.
    pub(crate) async fn now<T: Send + 'static>(
        &self,
        doing: &'static str,
        run: Option<&str>,
        write: impl for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    ) -> Result<T> {
        waited(doing, self.queue(true, doing, run, None, write)).await
    }

    /// [`Self::now`] for a write that is one statement.
    pub(crate) async fn now_statement(
        &self,
        doing: &'static str,
        run: Option<&str>,
        statement: Statement,
    ) -> Result<()> {
        waited(doing, self.queue_statement(true, doing, run, statement)).await
    }

    /// Queues a write that is one statement.
    pub(crate) fn queue_statement(
        &self,
        urgent: bool,
        doing: &'static str,
        run: Option<&str>,
        statement: Statement,
    ) -> oneshot::Receiver<Result<()>> {
        let alone = statement.clone();
        self.queue(
            urgent,
            doing,
            run,
            Some((vec![statement], Box::new(|| ()))),
            move |conn| {
                let alone = alone.clone();
                Box::pin(async move { alone.execute(conn, doing).await })
            },
        )
    }

    /// Queues a write that is one statement for the next commit and returns at once. Its
    /// failure is logged.
    pub(crate) fn soon_statement(
        &self,
        doing: &'static str,
        run: Option<&str>,
        statement: Statement,
    ) {
        self.log_failure(self.queue_statement(false, doing, run, statement));
    }

    /// [`Self::soon_statement`] for a write that the synchronous SQLite writer applies as
    /// `statement`, and that is `write` otherwise.
    pub(crate) fn soon_with(
        &self,
        doing: &'static str,
        run: Option<&str>,
        statement: Statement,
        write: impl for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, Result<()>> + Send + 'static,
    ) {
        self.log_failure(self.queue(
            false,
            doing,
            run,
            Some((vec![statement], Box::new(|| ()))),
            write,
        ));
    }

    /// [`Self::now`] for a write that the synchronous SQLite writer may apply as
    /// `statements` (when given), and that is `write` otherwise.
    pub(crate) async fn now_with(
        &self,
        doing: &'static str,
        run: Option<&str>,
        statements: Option<Vec<Statement>>,
        write: impl for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, Result<()>> + Send + 'static,
    ) -> Result<()> {
        let statements = statements.map(|s| (s, Box::new(|| ()) as Yields<()>));
        waited(doing, self.queue(true, doing, run, statements, write)).await
    }

    /// Commits everything queued so far, then stops the writer, which gives its connection
    /// back (a pool waits for it to close). Writes queued after it fail.
    pub(crate) async fn close(&self) -> Result<()> {
        self.stop_writer(false).await
    }

    /// Drops what is queued, unwritten, and stops the writer as [`Self::close`] does. For a
    /// process that has handed its runs back (`kiln serve` stopping): what their aborted
    /// executions queue since is no longer theirs to write, and would only be refused by the
    /// fences. Writes queued after it are dropped quietly.
    pub(crate) async fn discard(&self) {
        self.handing_back();
        let _ = self.stop_writer(true).await;
    }

    /// Queues the marker that stops the writer, after committing what is queued before it or
    /// (`discards`) dropping it, and waits until the writer's connections are closed.
    async fn stop_writer(&self, discards: bool) -> Result<()> {
        const DOING: &str = "closing the journal";
        let (done, stopped) = oneshot::channel();
        let marker = Queued {
            apply: Box::new(|_, _| Box::pin(async { false })),
            finish: Box::new(move |committed| {
                let _ = done.send(committed.map_err(|message| Error::Commit {
                    doing: DOING,
                    message,
                }));
            }),
            statements: Some((Vec::new(), DOING, Box::new(|_| {}))),
            urgent: true,
            stops: true,
            discards,
            fence: None,
        };
        let committed = self.send(marker, DOING, stopped).await.unwrap_or(Ok(()));
        self.direct_closed().await;
        committed
    }

    /// This process is handing its runs back (their leases freed): the writes their aborted
    /// executions still queue will be refused by their fences, or dropped at the close
    /// ([`Self::discard`]), without being logged as errors.
    pub(crate) fn handing_back(&self) {
        self.handed_back.store(true, Ordering::Relaxed);
    }

    /// Once the writer has stopped and dropped the synchronous writer, whose thread then folds
    /// the write-ahead log into the database file and closes its connection. Waited for, so
    /// that the store's last connection, closed after it, removes the log (SQLite does so only
    /// when no other connection has the file open).
    async fn direct_closed(&self) {
        let closed = self
            .direct_closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(closed) = closed {
            let _ = closed.await;
        }
    }

    /// Waits until everything queued so far is durable; with `run`, fails with
    /// [`Error::LeaseLost`] when this process's lease on it is no longer the run's.
    pub(crate) async fn flush(&self, run: Option<&str>) -> Result<()> {
        const DOING: &str = "flushing the journal";
        let nothing = self.queue(
            true,
            DOING,
            run,
            Some((Vec::new(), Box::new(|| ()))),
            |_| Box::pin(async { Ok(()) }),
        );
        waited(DOING, nothing).await
    }
}

/// The outcome of a queued write, once it is known.
async fn waited<T>(doing: &'static str, wait: oneshot::Receiver<Result<T>>) -> Result<T> {
    wait.await.unwrap_or_else(|_| {
        Err(Error::Commit {
            doing,
            message: "the writer stopped before committing".into(),
        })
    })
}

impl Journal {
    /// Logs the failure of a deferred write (its caller has moved on). Once this process hands
    /// its runs back, a write refused by its fence is what the hand-back means, not an error;
    /// once the database file was found replaced, that was logged once.
    fn log_failure(&self, wait: oneshot::Receiver<Result<()>>) {
        let handed_back = self.handed_back.clone();
        tokio::spawn(async move {
            match wait.await {
                Ok(Err(e @ Error::LeaseLost { .. })) if handed_back.load(Ordering::Relaxed) => {
                    tracing::debug!(target: "store.journal", "dropped after the hand-back: {e}");
                }
                // The database file was replaced: said once already.
                Ok(Err(e @ Error::DatabaseLost { .. })) => {
                    tracing::debug!(target: "store.journal", "{e}");
                }
                Ok(Err(e)) => tracing::error!(target: "errors.store", "{e}"),
                _ => {}
            }
        });
    }
}

async fn writer(
    pool: AnyPool,
    sqlite: bool,
    direct: Option<SqliteWriter>,
    file: Arc<FileWatch>,
    rx: mpsc::UnboundedReceiver<Queued>,
) {
    write_batches(pool, sqlite, direct.as_ref(), &file, rx).await;
    // Dropped: the synchronous writer's thread ends (leaving its connection open if the
    // database file was replaced; see `sqlite_writer`).
    drop(direct);
}

/// The writer's loop, until it is stopped (or every sender is gone).
async fn write_batches(
    pool: AnyPool,
    sqlite: bool,
    direct: Option<&SqliteWriter>,
    file: &FileWatch,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut batch: Vec<Queued> = Vec::new();
    // The writer keeps a connection of its own: no wait for readers to give one back. It is
    // dropped when a transaction cannot begin or commit (another is taken).
    let mut conn: Option<PoolConnection<Any>> = None;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        loop {
            while batch.len() < MAX_BATCH
                && let Ok(next) = rx.try_recv()
            {
                batch.push(next);
            }
            if batch.len() >= MAX_BATCH || batch.iter().any(|q| q.urgent) {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        let mut batch = std::mem::take(&mut batch);
        if let Some(at) = batch.iter().position(|q| q.discards) {
            let marker = batch.swap_remove(at);
            tracing::debug!(target: "store.journal", writes = batch.len(), "dropped unwritten at close");
            // Their callers hear that nothing was committed.
            drop(batch);
            (marker.finish)(Ok(()));
            return;
        }
        let stops = batch.iter().any(|q| q.stops);
        if let Some(message) = file.check() {
            // Logged once, when found; each refused write's caller hears it.
            for queued in batch {
                (queued.finish)(Err(message.to_owned()));
            }
            if stops {
                return;
            }
            continue;
        }
        if let Some(direct) = direct
            && batch.iter().all(|q| q.statements.is_some())
        {
            commit_direct(direct, batch).await;
            if stops {
                return;
            }
            continue;
        }
        let held = match conn.take() {
            Some(held) => Ok(held),
            None => pool.acquire().await,
        };
        match held {
            Ok(mut held) => {
                // Kept: giving it back costs a check of the connection each time, and
                // readers have connections of their own (measured: no difference for one
                // `kiln run`, fewer round trips under load).
                if commit(&mut held, sqlite, batch).await {
                    conn = Some(held);
                }
            }
            Err(e) => {
                tracing::error!(target: "errors.store", writes = batch.len(), "cannot get a connection to write: {e}");
            }
        }
        if stops {
            // Writes queued after the close are dropped with the channel: their callers
            // hear that nothing was committed.
            return;
        }
    }
}

/// Applies `batch` in one transaction, then tells each writer how the commit went. The writes
/// are applied one after the other without savepoints (each savepoint costs two more round
/// trips to the database); if one fails, that transaction is rolled back and the batch is
/// applied again with each write in its own savepoint, so the failing write is rolled back
/// alone and reports its error while the others commit. When no transaction can be begun,
/// the writes are dropped and their callers hear that nothing was committed. Returns whether
/// the connection is still fit to use.
async fn commit(conn: &mut AnyConnection, sqlite: bool, mut batch: Vec<Queued>) -> bool {
    let began = std::time::Instant::now();
    let writes = batch.len();
    let (committed, fit) = match apply(conn, sqlite, &mut batch, false).await {
        Pass::Committed(committed) => {
            let fit = committed.is_ok();
            (committed, fit)
        }
        // A write alone: its own error is what its caller hears.
        Pass::WriteFailed { fit } if writes == 1 => (Ok(()), fit),
        Pass::WriteFailed { .. } => match apply(conn, sqlite, &mut batch, true).await {
            Pass::Committed(committed) => {
                let fit = committed.is_ok();
                (committed, fit)
            }
            Pass::WriteFailed { .. } | Pass::NotBegun => return false,
        },
        Pass::NotBegun => return false,
    };
    tracing::debug!(target: "store.journal", writes, micros = began.elapsed().as_micros() as u64, ok = committed.is_ok(), "commit");
    for queued in batch {
        (queued.finish)(committed.clone());
    }
    fit
}

/// Applies `batch`, made only of statements, through the synchronous SQLite writer.
async fn commit_direct(direct: &SqliteWriter, batch: Vec<Queued>) {
    let began = std::time::Instant::now();
    let count = batch.len();
    let mut writes = Vec::with_capacity(count);
    let mut ends = Vec::with_capacity(count);
    for queued in batch {
        // The writer sends only batches whose writes all are statements.
        let (statements, doing, settle) = queued
            .statements
            .unwrap_or_else(|| (Vec::new(), "writing", Box::new(|_| {}) as Settle));
        writes.push(Write {
            statements,
            doing,
            fence: queued.fence,
        });
        ends.push((settle, queued.finish));
    }
    let (outcomes, committed) = direct.apply(writes).await;
    tracing::debug!(target: "store.journal", writes = count, micros = began.elapsed().as_micros() as u64, ok = committed.is_ok(), direct = true, "commit");
    for ((settle, finish), outcome) in ends.into_iter().zip(outcomes) {
        settle(outcome);
        finish(committed.clone());
    }
}

enum Pass {
    Committed(std::result::Result<(), String>),
    /// A write failed without a savepoint around it; the transaction was rolled back.
    WriteFailed {
        fit: bool,
    },
    NotBegun,
}

/// One transaction over `batch`, with or without a savepoint around each write.
async fn apply(
    conn: &mut AnyConnection,
    sqlite: bool,
    batch: &mut [Queued],
    savepoints: bool,
) -> Pass {
    let begin = if sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" };
    let mut tx = match conn.begin_with(begin).await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(target: "errors.store", writes = batch.len(), "cannot begin a write transaction: {e}");
            return Pass::NotBegun;
        }
    };
    // Each fenced run's lease, checked once per transaction and epoch: still ours, or why not.
    let mut leases: HashMap<(Arc<str>, i64), Option<String>> = HashMap::new();
    for queued in batch.iter_mut() {
        let refused = match &queued.fence {
            Some((run, fence)) => {
                let key = (run.clone(), fence.epoch);
                let checked = match leases.get(&key) {
                    Some(checked) => checked.clone(),
                    None => {
                        let checked = check_fence(&mut tx, run, fence).await;
                        leases.insert(key, checked.clone());
                        checked
                    }
                };
                checked.map(|message| Error::LeaseLost {
                    run: run.to_string(),
                    message,
                })
            }
            None => None,
        };
        let savepoint = savepoints
            && refused.is_none()
            && sqlx::query("SAVEPOINT kiln_write")
                .execute(&mut *tx)
                .await
                .is_ok();
        let failed = (queued.apply)(&mut tx, refused).await;
        if savepoint {
            if failed {
                let _ = sqlx::query("ROLLBACK TO SAVEPOINT kiln_write")
                    .execute(&mut *tx)
                    .await;
            }
            // Released at once: SQLite tracks every page written in each open savepoint, so
            // hundreds left open in a large batch would make each write slower.
            let _ = sqlx::query("RELEASE SAVEPOINT kiln_write")
                .execute(&mut *tx)
                .await;
        } else if failed && !savepoints {
            let fit = tx.rollback().await.is_ok();
            return Pass::WriteFailed { fit };
        }
    }
    Pass::Committed(tx.commit().await.map_err(|e| e.to_string()))
}

/// Why a write fenced with `fence` is refused.
pub(crate) fn lost(fence: &Fence) -> String {
    format!(
        "engine {} no longer holds its lease (epoch {}): another engine has taken the run over",
        fence.owner, fence.epoch
    )
}

/// Whether `run`'s lease is still `fence`: `None` when it is, else why not. The check is an
/// `UPDATE` of the run's row, which PostgreSQL keeps locked until the commit: a takeover cannot
/// slip in between the check and the writes.
pub(crate) async fn check_fence(
    conn: &mut AnyConnection,
    run: &str,
    fence: &Fence,
) -> Option<String> {
    let checked = sqlx::query(
        "UPDATE runs SET lease_epoch = lease_epoch WHERE id = $1 AND lease_owner = $2 \
         AND lease_epoch = $3",
    )
    .bind(run)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .execute(&mut *conn)
    .await;
    match checked {
        Ok(done) if done.rows_affected() == 1 => None,
        Ok(_) => Some(lost(fence)),
        Err(e) => Some(format!("cannot check the run's lease: {e}")),
    }
}

//! The realm's storage: one SQLite database file with a group-commit writer.
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a transaction that `COMMIT` has
//! returned for is on stable storage: it survives SIGKILL and power loss. Every write goes through
//! [`Store::submit`] (or a sibling), and a caller is answered only after the transaction holding its
//! write has committed. An acknowledged reservation therefore cannot be lost.
//!
//! # Group commit
//!
//! One dedicated writer thread owns the only write connection. Callers send write *jobs*
//! (closures over a [`WriteTx`]) through a bounded channel. The writer takes every job that is
//! queued (up to [`StoreConfig::max_batch`]), runs them in ONE transaction, each inside its own
//! `SAVEPOINT` so that a job that fails rolls back alone and reports its own error while the others
//! commit, then commits once and answers every caller. Under load this pays one fsync per batch
//! instead of one per operation; [`Store::stats`] reports the batch sizes for the metrics endpoint.
//!
//! Because exactly one thread writes, a job's reads and writes are serialised against every other
//! job: a check ("is the balance enough?") and the write that depends on it cannot be interleaved
//! with another job's write.
//!
//! # Reads
//!
//! Reads run on the caller's thread through [`Store::read`], on a small pool of read-only
//! connections; WAL lets them proceed while the writer commits.
//!
//! # Schema
//!
//! Tables are created by ordered, per-component [`Migration`] lists, recorded in the
//! `schema_version` table. The ledger's and the audit log's lists are built in; other components
//! add theirs through [`StoreConfig::extra_migrations`].

use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use tracing::{debug, error, info, warn};

/// Errors of the storage layer.
///
/// The SQLite errors of the rare start-up variants are boxed so that this type, which every
/// write job's result carries, stays small.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or configured.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: Box<rusqlite::Error>,
    },
    /// SQLite did not accept a setting that durability depends on (for instance WAL mode).
    #[error("database {path}: {setting} is {got}, but the realm needs {wanted}")]
    Setting {
        /// The database file.
        path: PathBuf,
        /// The pragma.
        setting: &'static str,
        /// The value the realm asked for.
        wanted: &'static str,
        /// The value SQLite reports.
        got: String,
    },
    /// The database was written by a newer build: opening it could corrupt it.
    #[error(
        "schema of component {component} is at version {found}, newer than this build knows ({known})"
    )]
    SchemaTooNew {
        /// The component whose schema is too new.
        component: String,
        /// The version recorded in the database.
        found: i64,
        /// The newest version this build knows.
        known: u32,
    },
    /// A migration list is malformed (a programming error caught at start-up, not at run time).
    #[error("migration list of component {component} is invalid: {reason}")]
    InvalidMigrations {
        /// The component.
        component: String,
        /// What is wrong.
        reason: String,
    },
    /// A migration failed; its transaction was rolled back.
    #[error("migration {component} v{version} ({name}) failed: {source}")]
    Migration {
        /// The component.
        component: String,
        /// The migration's version.
        version: u32,
        /// The migration's name.
        name: String,
        /// What SQLite said.
        #[source]
        source: Box<rusqlite::Error>,
    },
    /// Any other SQLite error.
    #[error("SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was shut down; no more writes are accepted.
    #[error("the store is shut down")]
    Closed,
    /// The write queue is full (only from [`Store::try_submit_with`]).
    #[error("the write queue is full")]
    Busy,
    /// The writer thread stopped without answering (it died, or the store was dropped).
    #[error("the writer thread stopped before answering")]
    WriterGone,
    /// The job panicked; its changes were rolled back and the writer carried on.
    #[error("the write job panicked; its changes were rolled back")]
    JobPanicked,
    /// The job succeeded but the transaction holding it did not commit, so nothing of it was kept.
    #[error("the batch holding this job was rolled back: {reason}")]
    BatchAborted {
        /// Why the batch did not commit.
        reason: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// One schema change of one component. A component's migrations carry versions 1, 2, 3, … in
/// order; each runs once, in its own transaction, and is recorded in `schema_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The component that owns the tables (`ledger`, `audit`, `queue`, …).
    pub component: &'static str,
    /// The version this migration brings the component to (1 for the first).
    pub version: u32,
    /// A short human-readable name, recorded with the version.
    pub name: &'static str,
    /// The SQL, possibly several statements.
    pub sql: &'static str,
}

/// Tunables of a [`Store`]. [`StoreConfig::default`] suits a realm; tests may shrink it.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long a connection waits for a lock held by another connection before failing.
    pub busy_timeout: Duration,
    /// The most jobs one transaction holds. Bounds the latency that one batch adds.
    pub max_batch: usize,
    /// How many jobs may wait for the writer before [`Store::submit`] blocks (back-pressure).
    pub queue_capacity: usize,
    /// How many idle read connections are kept.
    pub read_pool: usize,
    /// Migrations of components other than the ledger and the audit log, which are built in.
    pub extra_migrations: Vec<Migration>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
            queue_capacity: 4096,
            read_pool: 4,
            extra_migrations: Vec::new(),
        }
    }
}

/// Upper bounds of the batch-size histogram buckets in [`StoreStats::batch_size_counts`]; the
/// last count is for batches larger than the last bound.
pub const BATCH_SIZE_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// A cheap snapshot of the writer's counters, for `/metrics` and `/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Transactions the writer has run (committed or not).
    pub batches: u64,
    /// Jobs the writer has run.
    pub jobs: u64,
    /// Jobs that failed and were rolled back alone.
    pub failed_jobs: u64,
    /// Batches that did not commit (every job in them was answered with an error).
    pub aborted_batches: u64,
    /// Size of the most recent batch.
    pub last_batch_size: u64,
    /// Largest batch so far.
    pub max_batch_size: u64,
    /// Batch counts per size bucket (not cumulative): entry `i` counts batches whose size is at
    /// most `BATCH_SIZE_BOUNDS[i]` and above the bound before it; the last entry counts larger ones.
    pub batch_size_counts: [u64; 12],
    /// Total time spent running and committing batches, in microseconds.
    pub batch_micros_total: u64,
    /// When the last successful commit finished, in ms since the Unix epoch (0: none yet).
    pub last_commit_unix_ms: u64,
}

impl StoreStats {
    /// The batch-size histogram as Prometheus-style cumulative buckets: `(le, count)`, with
    /// `None` standing for `+Inf`.
    pub fn cumulative_batch_buckets(&self) -> Vec<(Option<u64>, u64)> {
        let mut running = 0u64;
        let mut out = Vec::with_capacity(self.batch_size_counts.len());
        for (i, count) in self.batch_size_counts.iter().enumerate() {
            running = running.saturating_add(*count);
            out.push((BATCH_SIZE_BOUNDS.get(i).copied(), running));
        }
        out
    }
}

#[derive(Default)]
struct StatsCell {
    batches: AtomicU64,
    jobs: AtomicU64,
    failed_jobs: AtomicU64,
    aborted_batches: AtomicU64,
    last_batch_size: AtomicU64,
    max_batch_size: AtomicU64,
    buckets: [AtomicU64; 12],
    batch_micros_total: AtomicU64,
    last_commit_unix_ms: AtomicU64,
}

impl StatsCell {
    fn record(&self, size: usize, failed: usize, committed: bool, took: Duration) {
        // Relaxed is enough: these are independent counters read for reporting only.
        let size = size as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(size, Ordering::Relaxed);
        self.failed_jobs.fetch_add(failed as u64, Ordering::Relaxed);
        self.last_batch_size.store(size, Ordering::Relaxed);
        self.max_batch_size.fetch_max(size, Ordering::Relaxed);
        let bucket = BATCH_SIZE_BOUNDS
            .iter()
            .position(|bound| size <= *bound)
            .unwrap_or(BATCH_SIZE_BOUNDS.len());
        if let Some(cell) = self.buckets.get(bucket) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.batch_micros_total.fetch_add(micros, Ordering::Relaxed);
        if committed {
            self.last_commit_unix_ms
                .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        } else {
            self.aborted_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> StoreStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            batches: load(&self.batches),
            jobs: load(&self.jobs),
            failed_jobs: load(&self.failed_jobs),
            aborted_batches: load(&self.aborted_batches),
            last_batch_size: load(&self.last_batch_size),
            max_batch_size: load(&self.max_batch_size),
            // Both arrays have 12 cells, so `i` is always in range.
            batch_size_counts: std::array::from_fn(|i| load(&self.buckets[i])),
            batch_micros_total: load(&self.batch_micros_total),
            last_commit_unix_ms: load(&self.last_commit_unix_ms),
        }
    }
}

/// The write side of one job: the open transaction of the current batch, inside the job's own
/// savepoint.
///
/// It dereferences to the [`Connection`] so that any component can run its SQL in the same
/// transaction (a ledger capture and its audit record commit together). A job must not run
/// transaction-control statements (`BEGIN`, `COMMIT`, `ROLLBACK`, `RELEASE` of a savepoint it did
/// not open); use [`WriteTx::nested`] for a sub-step that must roll back alone.
pub struct WriteTx<'a> {
    conn: &'a Connection,
}

impl Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// Runs one statement through the connection's statement cache: the writer runs the same few
/// statements thousands of times a second, and parsing them each time was a tenth of its CPU.
fn cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

impl WriteTx<'_> {
    /// `Connection::execute` through the statement cache (shadows the `Deref` method, so every
    /// job's statements are prepared once per connection).
    pub fn execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.conn.prepare_cached(sql)?.execute(params)
    }

    /// `Connection::query_row` through the statement cache.
    pub fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.conn.prepare_cached(sql)?.query_row(params, f)
    }

    /// Runs `step` inside a nested savepoint: if it fails, everything it wrote is rolled back
    /// and the rest of the job (and the batch) carries on. Ledger and audit operations use this,
    /// so a job that handles their error and continues never keeps half an operation.
    pub fn nested<T, E, F>(&self, step: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&WriteTx<'_>) -> Result<T, E>,
    {
        cached(self.conn, "SAVEPOINT mtor_step").map_err(|e| E::from(StoreError::Sqlite(e)))?;
        match step(self) {
            Ok(value) => {
                cached(self.conn, "RELEASE mtor_step")
                    .map_err(|e| E::from(StoreError::Sqlite(e)))?;
                Ok(value)
            }
            Err(err) => {
                // If even the rollback fails, the transaction is unusable; the writer notices
                // (autocommit or a failing RELEASE) and aborts the batch, so no half step commits.
                if let Err(rollback) = cached(self.conn, "ROLLBACK TO mtor_step")
                    .and_then(|()| cached(self.conn, "RELEASE mtor_step"))
                {
                    error!(error = %rollback, "rolling back a nested step failed");
                }
                Err(err)
            }
        }
    }
}

/// A job as the writer sees it: run once inside the batch, then told whether the batch committed.
trait Job: Send {
    /// Runs the job; `true` when it succeeded and its savepoint should be kept.
    fn run(&mut self, tx: &WriteTx<'_>) -> bool;
    /// Answers the caller. `abort` is `Some(reason)` when the batch did not commit.
    fn finish(self: Box<Self>, abort: Option<&str>);
}

struct TypedJob<F, T, E, C> {
    work: Option<F>,
    outcome: Option<Result<T, E>>,
    done: C,
}

impl<F, T, E, C> Job for TypedJob<F, T, E, C>
where
    F: FnOnce(&WriteTx<'_>) -> Result<T, E> + Send,
    T: Send,
    E: From<StoreError> + Send,
    C: FnOnce(Result<T, E>) + Send,
{
    fn run(&mut self, tx: &WriteTx<'_>) -> bool {
        let Some(work) = self.work.take() else {
            // The writer runs each job once; a second run would be a writer bug, and failing
            // the job is the safe answer.
            return false;
        };
        // A panicking job must not take the writer (and every other caller) down with it.
        let outcome = match catch_unwind(AssertUnwindSafe(|| work(tx))) {
            Ok(result) => result,
            Err(_) => Err(E::from(StoreError::JobPanicked)),
        };
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, abort: Option<&str>) {
        let result = match (self.outcome, abort) {
            // A job that failed was rolled back whatever happened to the batch: its own error.
            (Some(Err(err)), _) => Err(err),
            (Some(Ok(value)), None) => Ok(value),
            (Some(Ok(_)), Some(reason)) | (None, Some(reason)) => {
                Err(E::from(StoreError::BatchAborted {
                    reason: reason.to_owned(),
                }))
            }
            (None, None) => Err(E::from(StoreError::BatchAborted {
                reason: "the job never ran".to_owned(),
            })),
        };
        let done = self.done;
        // The callback is the caller's code; its panic must not kill the writer either.
        if catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
            error!("a write job's completion callback panicked");
        }
    }
}

/// The answer to a submitted job, to wait for once the writer has committed (or refused) it.
///
/// Waiting blocks the calling thread until the job's batch has committed, which takes about one
/// fsync. From async code, either wait inside `spawn_blocking`, or use [`Store::submit_with`] and
/// complete an async oneshot channel from the callback instead.
#[must_use = "a job's outcome should be checked"]
pub struct Pending<T, E> {
    rx: Receiver<Result<T, E>>,
}

impl<T, E: From<StoreError>> Pending<T, E> {
    /// Blocks until the job's batch has committed (or failed) and returns the job's outcome.
    pub fn wait(self) -> Result<T, E> {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err(E::from(StoreError::WriterGone)))
    }

    /// Returns the outcome if it has arrived, without blocking; `None` while the job is pending.
    pub fn try_wait(&self) -> Option<Result<T, E>> {
        match self.rx.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(E::from(StoreError::WriterGone))),
        }
    }

    /// Like [`Pending::wait`] but gives up after `timeout`, returning the handle to wait again.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Result<T, E>, Self> {
        match self.rx.recv_timeout(timeout) {
            Ok(result) => Ok(result),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(Err(E::from(StoreError::WriterGone))),
        }
    }
}

struct Inner {
    path: PathBuf,
    config: StoreConfig,
    sender: Mutex<Option<SyncSender<Box<dyn Job>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    stats: Arc<StatsCell>,
}

/// Locks a mutex, ignoring poisoning: every mutex here guards data (a sender, a handle, a pool of
/// connections) that a panic elsewhere cannot leave half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn stop_writer(&self) {
        // Dropping the last sender lets the writer drain what is queued and then exit.
        drop(lock(&self.sender).take());
        let handle = lock(&self.writer).take();
        if let Some(handle) = handle {
            // The last handle may be dropped by a job running on the writer thread itself;
            // joining would then wait for ourselves forever.
            if handle.thread().id() == std::thread::current().id() {
                return;
            }
            if handle.join().is_err() {
                error!("the store's writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// The realm's database: a group-commit writer and a pool of readers. Cheap to clone; the writer
/// stops (after draining its queue) when the last clone is dropped or [`Store::shutdown`] runs.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` with the default configuration, applies
    /// pending migrations and starts the writer.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, StoreConfig::default())
    }

    /// Opens the database at `path` with `config`; see [`Store::open`].
    pub fn open_with(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut migrations: Vec<Migration> = Vec::new();
        migrations.extend_from_slice(crate::ledger::MIGRATIONS);
        migrations.extend_from_slice(crate::audit::MIGRATIONS);
        migrations.extend_from_slice(&config.extra_migrations);
        check_migrations(&migrations)?;

        let conn = open_connection(&path, &config, true)?;
        configure_writer(&conn, &path)?;
        apply_migrations(&conn, &migrations)?;
        // Room for every statement the jobs run, so none is evicted and re-parsed.
        conn.set_prepared_statement_cache_capacity(256);

        let (tx, rx) = mpsc::sync_channel::<Box<dyn Job>>(config.queue_capacity.max(1));
        let stats = Arc::new(StatsCell::default());
        let writer_stats = Arc::clone(&stats);
        let max_batch = config.max_batch.max(1);
        let handle = std::thread::Builder::new()
            .name("mtor-store-writer".to_owned())
            .spawn(move || writer_loop(conn, rx, writer_stats, max_batch))
            .map_err(StoreError::Spawn)?;
        info!(path = %path.display(), "store opened");
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                config,
                sender: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                readers: Mutex::new(Vec::new()),
                stats,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A snapshot of the writer's counters.
    pub fn stats(&self) -> StoreStats {
        self.inner.stats.snapshot()
    }

    /// Queues a write job and returns a handle to wait for its outcome.
    ///
    /// The job runs on the writer thread inside the current batch's transaction and its own
    /// savepoint: if it returns `Err` (or panics), its writes are rolled back and the error comes
    /// back through the handle; if it returns `Ok`, the value comes back once the batch has
    /// committed durably. Jobs should be short: the whole batch waits for each of them. A job
    /// must never wait for another job (it would wait for its own writer thread forever).
    ///
    /// This call blocks only while the queue is full (back-pressure, bounded by
    /// [`StoreConfig::queue_capacity`]); [`Store::try_submit_with`] never blocks.
    pub fn submit<T, E, F>(&self, job: F) -> Result<Pending<T, E>, StoreError>
    where
        F: FnOnce(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        // Capacity 1: the writer answers exactly once and must never block on it.
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.submit_with(job, move |result| {
            // The caller may have dropped its handle; then nobody wants the answer.
            let _ = reply_tx.try_send(result);
        })?;
        Ok(Pending { rx: reply_rx })
    }

    /// Queues a write job whose outcome is handed to `done` on the writer thread once the batch has
    /// committed (or the job failed). `done` must be quick and must not block: completing an
    /// async oneshot channel is the intended use, which lets async code await a write without
    /// tying up a runtime thread. Blocks only while the queue is full.
    pub fn submit_with<T, E, F, C>(&self, job: F, done: C) -> Result<(), StoreError>
    where
        F: FnOnce(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        C: FnOnce(Result<T, E>) + Send + 'static,
    {
        let sender = lock(&self.inner.sender).clone().ok_or(StoreError::Closed)?;
        sender
            .send(boxed_job(job, done))
            .map_err(|_| StoreError::Closed)
    }

    /// Like [`Store::submit_with`] but never blocks: a full queue is [`StoreError::Busy`].
    pub fn try_submit_with<T, E, F, C>(&self, job: F, done: C) -> Result<(), StoreError>
    where
        F: FnOnce(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        C: FnOnce(Result<T, E>) + Send + 'static,
    {
        let sender = lock(&self.inner.sender).clone().ok_or(StoreError::Closed)?;
        sender.try_send(boxed_job(job, done)).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::Busy,
            TrySendError::Disconnected(_) => StoreError::Closed,
        })
    }

    /// Submits a job and blocks until it has committed: `submit(job)?.wait()`.
    pub fn execute<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.submit(job).map_err(E::from)?.wait()
    }

    /// Runs `f` on a read-only connection inside one read transaction, so that everything it
    /// reads comes from one consistent snapshot. Runs on the calling thread and blocks it for as
    /// long as `f` takes; long reads from async code belong in `spawn_blocking`.
    pub fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&Connection) -> Result<T, E>,
    {
        let conn = self.reader().map_err(E::from)?;
        conn.execute_batch("BEGIN DEFERRED")
            .map_err(|e| E::from(StoreError::Sqlite(e)))?;
        let result = f(&conn);
        // A read transaction has nothing to keep: COMMIT just ends it and frees its snapshot.
        let end = conn.execute_batch("COMMIT");
        match (result, end) {
            (Ok(value), Ok(())) => {
                self.return_reader(conn);
                Ok(value)
            }
            (Ok(_), Err(e)) => Err(E::from(StoreError::Sqlite(e))),
            (Err(err), end) => {
                if end.is_ok() && conn.is_autocommit() {
                    self.return_reader(conn);
                }
                Err(err)
            }
        }
    }

    /// Stops accepting writes, lets the writer finish every queued job, and waits for it.
    /// Further submits fail with [`StoreError::Closed`]; reads keep working.
    pub fn shutdown(&self) {
        self.inner.stop_writer();
        info!(path = %self.inner.path.display(), "store writer stopped");
    }

    fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = lock(&self.inner.readers).pop() {
            return Ok(conn);
        }
        let conn = open_connection(&self.inner.path, &self.inner.config, false)?;
        // Defence in depth: a read connection can never write, whatever SQL it is handed.
        conn.pragma_update(None, "query_only", true)
            .map_err(|source| StoreError::Open {
                path: self.inner.path.clone(),
                source: Box::new(source),
            })?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    fn return_reader(&self, conn: Connection) {
        let mut pool = lock(&self.inner.readers);
        if pool.len() < self.inner.config.read_pool {
            pool.push(conn);
        }
    }
}

fn boxed_job<T, E, F, C>(job: F, done: C) -> Box<dyn Job>
where
    F: FnOnce(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    C: FnOnce(Result<T, E>) + Send + 'static,
{
    Box::new(TypedJob {
        work: Some(job),
        outcome: None,
        done,
    })
}

fn open_connection(
    path: &Path,
    config: &StoreConfig,
    create: bool,
) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let wrap = |source| StoreError::Open {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let conn = Connection::open_with_flags(path, flags).map_err(wrap)?;
    conn.busy_timeout(config.busy_timeout).map_err(wrap)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(wrap)?;
    // Indexes on random keys (intent ids, idempotency keys) touch pages all over the file; with
    // SQLite's 2 MiB default cache nearly every lookup was a pread. 64 MiB of cache per
    // connection and a memory map keep the working set off the syscall path.
    conn.pragma_update(None, "cache_size", -65_536)
        .map_err(wrap)?;
    conn.pragma_update(None, "mmap_size", 268_435_456_i64)
        .map_err(wrap)?;
    Ok(conn)
}

/// Sets and checks the pragmas durability depends on: a silent fallback (say, to
/// `journal_mode=memory` on a file system without shared memory) must stop the realm.
fn configure_writer(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let wrap = |source| StoreError::Open {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    // Every job runs in a savepoint, so each page a job first touches is copied to the
    // statement sub-journal; in a temp file that was half the writer's I/O. In memory it is a
    // copy, and it is never needed after a crash (the WAL alone decides what committed).
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(wrap)?;
    // The writer loop checkpoints between batches itself (see `writer_loop`).
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(wrap)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
        .map_err(wrap)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Setting {
            path: path.to_path_buf(),
            setting: "journal_mode",
            wanted: "wal",
            got: mode,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(wrap)?;
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .map_err(wrap)?;
    // 2 is FULL (3 is EXTRA, which is stricter still and also acceptable).
    if sync < 2 {
        return Err(StoreError::Setting {
            path: path.to_path_buf(),
            setting: "synchronous",
            wanted: "FULL (2)",
            got: sync.to_string(),
        });
    }
    Ok(())
}

/// Checks that each component's migrations are numbered 1, 2, 3, … in list order.
fn check_migrations(list: &[Migration]) -> Result<(), StoreError> {
    let mut seen: Vec<(&str, u32)> = Vec::new();
    for m in list {
        let last = seen.iter_mut().find(|(c, _)| *c == m.component);
        let expected = last.as_ref().map_or(1, |(_, v)| v.saturating_add(1));
        if m.version != expected {
            return Err(StoreError::InvalidMigrations {
                component: m.component.to_owned(),
                reason: format!(
                    "migration {:?} has version {}, expected {expected}",
                    m.name, m.version
                ),
            });
        }
        match last {
            Some(entry) => entry.1 = m.version,
            None => seen.push((m.component, m.version)),
        }
    }
    Ok(())
}

fn apply_migrations(conn: &Connection, list: &[Migration]) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             component  TEXT    NOT NULL,
             version    INTEGER NOT NULL,
             name       TEXT    NOT NULL,
             applied_at TEXT    NOT NULL,
             PRIMARY KEY (component, version)
         ) STRICT",
    )?;
    // Refuse a database that a newer build has migrated further than we know, before touching it.
    let mut components: Vec<&str> = list.iter().map(|m| m.component).collect();
    components.dedup();
    for component in &components {
        let known = list
            .iter()
            .filter(|m| m.component == *component)
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let found: i64 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version WHERE component = ?1",
            [component],
            |row| row.get(0),
        )?;
        if found > i64::from(known) {
            return Err(StoreError::SchemaTooNew {
                component: (*component).to_owned(),
                found,
                known,
            });
        }
    }
    for m in list {
        apply_one(conn, m).map_err(|source| StoreError::Migration {
            component: m.component.to_owned(),
            version: m.version,
            name: m.name.to_owned(),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

fn apply_one(conn: &Connection, m: &Migration) -> Result<(), rusqlite::Error> {
    // IMMEDIATE takes the write lock first, so two processes opening the same file at once
    // cannot both decide to apply the same migration.
    cached(conn, "BEGIN IMMEDIATE")?;
    let result = (|| {
        let applied: Option<i64> = conn
            .query_row(
                "SELECT version FROM schema_version WHERE component = ?1 AND version = ?2",
                rusqlite::params![m.component, m.version],
                |row| row.get(0),
            )
            .optional()?;
        if applied.is_some() {
            return Ok(false);
        }
        conn.execute_batch(m.sql)?;
        conn.execute(
            "INSERT INTO schema_version (component, version, name, applied_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![m.component, m.version, m.name, now_rfc3339()],
        )?;
        Ok(true)
    })();
    match result {
        Ok(applied) => {
            cached(conn, "COMMIT")?;
            if applied {
                info!(
                    component = m.component,
                    version = m.version,
                    name = m.name,
                    "migration applied"
                );
            }
            Ok(())
        }
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

/// Commits after which an idle writer checkpoints the WAL.
const CHECKPOINT_IDLE_COMMITS: u32 = 64;
/// Commits after which the writer checkpoints even under load, bounding the WAL.
const CHECKPOINT_MAX_COMMITS: u32 = 2048;

fn writer_loop(
    conn: Connection,
    rx: Receiver<Box<dyn Job>>,
    stats: Arc<StatsCell>,
    max_batch: usize,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    // Checkpoints run here, between batches, rather than inside a commit (SQLite's automatic
    // checkpoint is off on this connection): when the queue is empty after some commits, or
    // after many commits whatever the load, so the WAL stays bounded. Copying the WAL back
    // while jobs wait was a tenth of the writer's time under load.
    let mut commits_since_checkpoint = 0u32;
    // A job taken while checking for idleness starts the next batch.
    let mut next: Option<Box<dyn Job>> = None;
    loop {
        // `recv` fails only once every sender is gone AND the queue is empty: shutdown drains.
        let first = match next.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&conn, &mut batch, &stats);
        commits_since_checkpoint += 1;
        let idle = match rx.try_recv() {
            Ok(job) => {
                next = Some(job);
                false
            }
            Err(_) => true,
        };
        if (idle && commits_since_checkpoint >= CHECKPOINT_IDLE_COMMITS)
            || commits_since_checkpoint >= CHECKPOINT_MAX_COMMITS
        {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                warn!(error = %e, "WAL checkpoint failed; retrying after the next batches");
            }
            commits_since_checkpoint = 0;
        }
    }
    // A clean stop leaves a small WAL behind for the next start.
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        warn!(error = %e, "final WAL checkpoint failed");
    }
    debug!("store writer drained and stopping");
}

fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>, stats: &StatsCell) {
    let started = Instant::now();
    let size = batch.len();
    let mut failed = 0usize;
    let outcome: Result<(), String> = (|| {
        cached(conn, "BEGIN IMMEDIATE").map_err(|e| format!("BEGIN failed: {e}"))?;
        for job in batch.iter_mut() {
            cached(conn, "SAVEPOINT mtor_job").map_err(|e| format!("SAVEPOINT failed: {e}"))?;
            let ok = job.run(&WriteTx { conn });
            if conn.is_autocommit() {
                // SQLite rolls a transaction back by itself after some errors (disk full, I/O
                // error), or a job broke the rules and ended it: every earlier job is lost too.
                return Err("the transaction ended inside a job (SQLite rolled it back)".to_owned());
            }
            if ok {
                cached(conn, "RELEASE mtor_job").map_err(|e| format!("RELEASE failed: {e}"))?;
            } else {
                failed += 1;
                cached(conn, "ROLLBACK TO mtor_job")
                    .and_then(|()| cached(conn, "RELEASE mtor_job"))
                    .map_err(|e| format!("rolling back a failed job failed: {e}"))?;
            }
        }
        cached(conn, "COMMIT").map_err(|e| format!("COMMIT failed: {e}"))
    })();
    let abort = outcome.err();
    if let Some(reason) = &abort {
        error!(batch = size, %reason, "store batch aborted");
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                error!(error = %e, "rolling back an aborted batch failed");
            }
        }
    }
    let took = started.elapsed();
    // Count before answering, so that a caller who has its answer sees its batch in the stats.
    stats.record(size, failed, abort.is_none(), took);
    for job in batch.drain(..) {
        job.finish(abort.as_deref());
    }
    if failed > 0 {
        debug!(
            batch = size,
            failed, "store batch committed with failed jobs rolled back"
        );
    } else if abort.is_none() {
        debug!(
            batch = size,
            micros = took.as_micros() as u64,
            "store batch committed"
        );
    } else {
        warn!(
            batch = size,
            "every job of the aborted batch was answered with an error"
        );
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    // A clock before 1970 is a broken clock; report the epoch rather than fail a commit over it.
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The current time as an RFC 3339 UTC timestamp with millisecond precision and `Z`
/// (`2025-01-31T12:34:56.789Z`), the form every stored `ts` uses.
pub fn now_rfc3339() -> String {
    format_rfc3339_millis(SystemTime::now())
}

/// Formats `t` as an RFC 3339 UTC timestamp with millisecond precision and `Z`. Times before the
/// Unix epoch (a broken clock) are formatted as the epoch.
pub fn format_rfc3339_millis(t: SystemTime) -> String {
    let ms = unix_ms(t);
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); H. Hinnant's algorithm,
/// restricted to non-negative day counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> PathBuf {
        // CARGO_TARGET_TMPDIR exists only for integration tests; unit tests use the OS temp dir.
        let dir = std::env::temp_dir().join(format!("store-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test temp dir");
        dir.join("realm.db")
    }

    #[test]
    fn formats_rfc3339_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(0);
        assert_eq!(format_rfc3339_millis(t), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T23:59:59.007Z: a leap day in a century leap year.
        let t = UNIX_EPOCH + Duration::from_millis(951_868_799_007);
        assert_eq!(format_rfc3339_millis(t), "2000-02-29T23:59:59.007Z");
        // 2024-12-31T00:00:01.999Z
        let t = UNIX_EPOCH + Duration::from_millis(1_735_603_201_999);
        assert_eq!(format_rfc3339_millis(t), "2024-12-31T00:00:01.999Z");
        let t = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(format_rfc3339_millis(t), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn rejects_misnumbered_migrations() {
        let bad = [
            Migration {
                component: "x",
                version: 1,
                name: "a",
                sql: "",
            },
            Migration {
                component: "x",
                version: 3,
                name: "b",
                sql: "",
            },
        ];
        assert!(matches!(
            check_migrations(&bad),
            Err(StoreError::InvalidMigrations { .. })
        ));
        let good = [
            Migration {
                component: "x",
                version: 1,
                name: "a",
                sql: "",
            },
            Migration {
                component: "y",
                version: 1,
                name: "b",
                sql: "",
            },
            Migration {
                component: "x",
                version: 2,
                name: "c",
                sql: "",
            },
        ];
        assert!(check_migrations(&good).is_ok());
    }

    #[test]
    fn opens_in_wal_full_and_records_schema_versions() {
        let path = temp_db("pragmas");
        let store = Store::open(&path).expect("open");
        let (mode, versions): (String, i64) = store
            .read(|c| {
                let mode = c.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
                let versions = c.query_row(
                    "SELECT COUNT(*) FROM schema_version WHERE component IN ('ledger', 'audit')",
                    [],
                    |r| r.get(0),
                )?;
                Ok::<_, StoreError>((mode, versions))
            })
            .expect("read");
        assert_eq!(mode, "wal");
        assert!(versions >= 2);
        // The writer's own connection reports FULL; check it from inside a job.
        let sync: i64 = store
            .execute(|tx| {
                tx.pragma_query_value(None, "synchronous", |r| r.get(0))
                    .map_err(StoreError::from)
            })
            .expect("job");
        assert_eq!(sync, 2);
    }

    #[test]
    fn extra_migrations_apply_once_and_newer_schema_is_refused() {
        let path = temp_db("migrations");
        let extra = vec![Migration {
            component: "unit",
            version: 1,
            name: "create t",
            sql: "CREATE TABLE unit_t (x INTEGER NOT NULL) STRICT;",
        }];
        let config = StoreConfig {
            extra_migrations: extra.clone(),
            ..StoreConfig::default()
        };
        let store = Store::open_with(&path, config.clone()).expect("first open");
        store.shutdown();
        drop(store);
        // Reopening must not re-run the CREATE TABLE (it would fail if it did).
        let store = Store::open_with(&path, config.clone()).expect("second open");
        store
            .execute(|tx| {
                tx.execute(
                    "INSERT INTO schema_version (component, version, name, applied_at)
                     VALUES ('unit', 2, 'from the future', 'x')",
                    [],
                )
                .map_err(StoreError::from)
            })
            .expect("insert future version");
        drop(store);
        match Store::open_with(&path, config) {
            Err(StoreError::SchemaTooNew {
                component,
                found,
                known,
            }) => {
                assert_eq!((component.as_str(), found, known), ("unit", 2, 1));
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    #[test]
    fn panicking_job_is_rolled_back_and_the_writer_survives() {
        let path = temp_db("panic");
        let config = StoreConfig {
            extra_migrations: vec![Migration {
                component: "unit",
                version: 1,
                name: "t",
                sql: "CREATE TABLE unit_t (x INTEGER NOT NULL) STRICT;",
            }],
            ..StoreConfig::default()
        };
        let store = Store::open_with(&path, config).expect("open");
        let result: Result<(), StoreError> = store.execute(|tx| {
            tx.execute("INSERT INTO unit_t (x) VALUES (1)", [])?;
            panic!("job panics on purpose");
        });
        assert!(matches!(result, Err(StoreError::JobPanicked)));
        store
            .execute(|tx| {
                tx.execute("INSERT INTO unit_t (x) VALUES (2)", [])
                    .map_err(StoreError::from)
            })
            .expect("writer still alive");
        let rows: Vec<i64> = store
            .read(|c| {
                let mut stmt = c.prepare("SELECT x FROM unit_t ORDER BY x")?;
                let rows = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<i64>, _>>()?;
                Ok::<_, StoreError>(rows)
            })
            .expect("read");
        assert_eq!(rows, vec![2]);
        store.shutdown();
        assert!(matches!(
            store.submit(|_tx| Ok::<(), StoreError>(())).map(|_| ()),
            Err(StoreError::Closed)
        ));
    }
}

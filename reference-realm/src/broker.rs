//! The broker: one task that owns the queue, the leases and the worker registry.
//!
//! Connections never touch dispatch state; they send [`BrokerMsg`]s and receive serialized
//! events on their own channel. Because one task owns the state, no lock orders exist and every
//! decision (admit, dispatch, accept a result, re-dispatch) sees one consistent state.
//!
//! Money and durable state go through the [`Store`]'s group-commit writer. The broker never
//! blocks on a commit: it submits a job whose completion callback posts a message back into the
//! broker's own inbox, and acts on the commit only then. So `intent.accepted` leaves only after
//! the reservation is durable, and `intent.result` only after the capture is.
//!
//! Intents and their outcomes live in the `realm_intents` table (migration component `broker`),
//! so `intent.fetch` works from any session of the wallet and after a restart, and queued or
//! running intents are re-queued when the realm starts again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::audit::{self, AuditError};
use crate::config::RealmConfig;
use crate::defect::{self, Defect};
use crate::identity;
use crate::intents;
use crate::lease::{Disposition, LeaseConfig, LeaseError, LeaseTable};
use crate::ledger::{self, LedgerError, Reservation, Settlement};
use crate::queue::{IntentState, QueueConfig, SafeQueue, Submission, DEFAULT_PRIORITY};
use crate::registry::{Enrolment, Health, Registry, Reported, WorkerHealth};
use crate::store::{now_rfc3339, Migration, Store, StoreError};
use crate::wire::{self, Code, Contract};

/// The broker's tables, applied through the store's migration mechanism.
pub const MIGRATIONS: &[Migration] = &[Migration {
    component: "broker",
    version: 1,
    name: "intents",
    sql: r#"
CREATE TABLE realm_intents (
    intent_id       TEXT    PRIMARY KEY,
    wallet          TEXT    NOT NULL,
    intent          TEXT    NOT NULL,
    input           TEXT    NOT NULL,
    max_cost        INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL,
    body_hash       TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    output          TEXT,
    cost            INTEGER,
    code            TEXT,
    message         TEXT,
    released        INTEGER,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    submit_id       TEXT,
    delivered       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (wallet, idempotency_key)
) STRICT;
CREATE INDEX realm_intents_state ON realm_intents (state);
CREATE TABLE realm_epochs (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    last_epoch INTEGER NOT NULL
) STRICT;
"#,
}];

/// Errors of broker store jobs.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The same idempotency key was used with another body.
    #[error("idempotency key reused with a different body")]
    IdempotencyConflict,
    /// Stored data is unreadable.
    #[error("stored intent is unreadable: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for BrokerError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

/// Outbound frames of one connection.
pub type Outbox = mpsc::Sender<String>;

/// A checked `intent.submit` body.
#[derive(Debug, Clone)]
pub struct Submit {
    /// Intent name.
    pub intent: String,
    /// Intent input.
    pub input: Value,
    /// Most the client will pay.
    pub max_cost: u64,
    /// Client's idempotency key.
    pub idempotency_key: String,
    /// 0..9, higher first.
    pub priority: u8,
}

/// A worker's report about a task (`task.progress`, `task.result`, `task.failure`).
#[derive(Debug, Clone)]
pub enum TaskReport {
    /// Progress: extends the lease.
    Progress {
        /// Fraction done.
        fraction: f64,
        /// Stage name.
        stage: Option<String>,
    },
    /// Success.
    Result {
        /// Output object.
        output: Value,
        /// Work units used.
        units: u64,
    },
    /// Failure.
    Failure {
        /// Failure code.
        code: String,
        /// Message.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// A snapshot of dispatch state for `/v1/health` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Intents waiting in the queue.
    pub queue_depth: usize,
    /// Tasks running.
    pub running: usize,
    /// Workers.
    pub workers: Vec<WorkerHealth>,
    /// Counters.
    pub counters: Counters,
    /// True once the realm is stopping (health `down`).
    pub stopping: bool,
}

/// Monotonic broker counters (Prometheus).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Intents admitted.
    pub admitted: u64,
    /// Intents rejected at admission.
    pub rejected: u64,
    /// Intents succeeded.
    pub succeeded: u64,
    /// Intents failed (incl. dead-lettered).
    pub failed: u64,
    /// Intents dead-lettered.
    pub dead_lettered: u64,
    /// Intents cancelled.
    pub cancelled: u64,
    /// Tasks dispatched (every attempt).
    pub dispatched: u64,
    /// Leases lapsed or lost with their worker.
    pub lapsed: u64,
    /// Worker reports refused (stale epoch, expired lease, duplicate).
    pub refused: u64,
    /// `task.assign` events with attempt ≥ 2.
    pub redispatched: u64,
    /// `intent.rejected` events by code.
    pub rejected_by_code: std::collections::BTreeMap<&'static str, u64>,
    /// Admission-to-terminal latency histogram: counts per bucket of [`LATENCY_BOUNDS`] (not
    /// cumulative; the last entry is above the last bound), sum in seconds, observations.
    pub latency_counts: [u64; LATENCY_BOUNDS.len() + 1],
    /// Sum of observed latencies in seconds.
    pub latency_sum: f64,
}

/// Upper bounds (seconds) of the `mtor_intent_latency_seconds` buckets.
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Messages to the broker.
#[derive(Debug)]
pub enum BrokerMsg {
    /// A client session became ready.
    SessionOpen {
        /// Session id.
        session_id: String,
        /// Wallet key.
        wallet: String,
        /// Its outbox.
        tx: Outbox,
    },
    /// A client session ended.
    SessionClose {
        /// Session id.
        session_id: String,
    },
    /// `intent.submit`.
    Submit {
        /// Session id.
        session_id: String,
        /// Frame id (corr of the answer).
        corr: String,
        /// Checked body.
        submit: Submit,
    },
    /// `intent.cancel`.
    Cancel {
        /// Session id.
        session_id: String,
        /// Frame id.
        corr: String,
        /// Intent id.
        intent_id: String,
    },
    /// `intent.fetch`.
    Fetch {
        /// Session id.
        session_id: String,
        /// Frame id.
        corr: String,
        /// Intent id.
        intent_id: String,
    },
    /// A worker enrolled.
    WorkerJoin {
        /// Connection id (unique per connection).
        conn: u64,
        /// Worker id.
        worker_id: String,
        /// Worker public key.
        worker_key: String,
        /// Intents served.
        intents: Vec<String>,
        /// Concurrency.
        concurrency: usize,
        /// Declared capabilities (`worker.register` `capabilities`), or null.
        capabilities: Value,
        /// Its outbox.
        tx: Outbox,
    },
    /// A worker connection ended.
    WorkerLeave {
        /// Connection id.
        conn: u64,
    },
    /// `worker.heartbeat` / `worker.drain`.
    Heartbeat {
        /// Connection id.
        conn: u64,
        /// True when the worker is draining.
        draining: bool,
    },
    /// `task.progress`, `task.result`, `task.failure`.
    Task {
        /// Connection id.
        conn: u64,
        /// Frame id.
        corr: String,
        /// Task id.
        task_id: String,
        /// Attempt.
        attempt: u32,
        /// Epoch.
        epoch: u64,
        /// The report.
        report: TaskReport,
    },
    /// `session.hello` `resume` ids, after `session.ready`.
    Resume {
        /// Session id.
        session_id: String,
        /// The hello's id.
        corr: String,
        /// Intent ids to re-attach.
        intent_ids: Vec<String>,
    },
    /// The realm is stopping: refuse new submissions with SHUTTING_DOWN.
    Stopping,
    /// Asks for a snapshot.
    Snapshot(oneshot::Sender<Snapshot>),
    /// Seeded defect `refusals-to-all`: a frame for every client session.
    SeededBroadcast {
        /// The frame.
        frame: String,
    },
    /// A store job finished (internal).
    Done(Box<Done>),
    /// Stop: cancel running tasks with `realm_shutdown` and return.
    Shutdown,
}

/// Completions of store jobs (internal to the broker).
#[derive(Debug)]
pub enum Done {
    /// Admission committed (or failed).
    Admit {
        /// Session id.
        session_id: String,
        /// Frame id.
        corr: String,
        /// The submit.
        submit: Submit,
        /// Wallet.
        wallet: String,
        /// Outcome.
        result: Result<Admitted, BrokerError>,
    },
    /// A settlement (result, failure, dead letter, cancel) committed.
    Settled {
        /// Intent id.
        intent_id: String,
        /// Final state.
        terminal: Terminal,
        /// Worker receipt to send once committed: (conn, corr, task_id, attempt, epoch).
        receipt: Option<(u64, String, String, u32, u64)>,
        /// The requesting session of a cancel: (session, corr).
        cancel_by: Option<(String, String)>,
        /// Outcome.
        result: Result<Settlement, BrokerError>,
    },
    /// The idempotency binding of a submission was read (admission check 3).
    Bound {
        /// Session id.
        session_id: String,
        /// Frame id.
        corr: String,
        /// The submit.
        submit: Submit,
        /// Wallet.
        wallet: String,
        /// The stored intent bound to the key, if any.
        binding: Result<Option<StoredIntent>, BrokerError>,
    },
    /// A store read for `intent.fetch`, `intent.cancel` or a resume finished.
    Read {
        /// Session id.
        session_id: String,
        /// Frame id.
        corr: String,
        /// Why it was read.
        purpose: ReadPurpose,
        /// The stored intent of the session's wallet, if any.
        row: Option<StoredIntent>,
    },
}

/// Why an intent was read from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPurpose {
    /// `intent.fetch`: reply `intent.status` or NOT_FOUND.
    Fetch,
    /// `intent.cancel` of an intent that is not live: reply `intent.status` or NOT_FOUND.
    Cancel,
    /// `resume`: `intent.status`, and the undelivered terminal event; nothing when unknown.
    Resume,
}

/// An admission's outcome.
#[derive(Debug)]
pub enum Admitted {
    /// A new intent.
    New(Reservation),
    /// The key was bound by a racing submission: the stored intent.
    Replay(Box<StoredIntent>),
}

/// How an intent ended.
#[derive(Debug, Clone)]
pub enum Terminal {
    /// Succeeded.
    Succeeded {
        /// Output.
        output: Value,
        /// Cost.
        cost: u64,
        /// Attempts.
        attempts: u32,
        /// The worker whose result was accepted.
        worker_id: String,
    },
    /// Failed or dead-lettered.
    Failed {
        /// Code (WORKER_FAILED, BAD_INPUT, TIMEOUT, DEAD_LETTERED, ...).
        code: Code,
        /// Message.
        message: String,
        /// Attempts.
        attempts: u32,
    },
    /// Cancelled.
    Cancelled,
}

impl Terminal {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "intent.result",
            Self::Failed { .. } => "intent.failed",
            Self::Cancelled => "intent.cancelled",
        }
    }

    fn state(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "succeeded",
            Self::Failed {
                code: Code::DeadLettered,
                ..
            } => "dead",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A handle to the broker task.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    tx: mpsc::UnboundedSender<BrokerMsg>,
}

impl BrokerHandle {
    /// Sends a message; false when the broker has stopped.
    pub fn send(&self, msg: BrokerMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Asks for a snapshot, waiting at most one second.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        if !self.send(BrokerMsg::Snapshot(tx)) {
            return None;
        }
        tokio::time::timeout(Duration::from_secs(1), rx)
            .await
            .ok()?
            .ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiveState {
    Queued,
    Running,
    /// A terminal settlement is being committed; reports for it are duplicates.
    Settling,
}

#[derive(Debug)]
struct LiveIntent {
    wallet: String,
    intent: String,
    input: Value,
    max_cost: u64,
    state: LiveState,
    attempts: u32,
    /// Sessions attached to the intent (the submitter and resumers), in attach order.
    attached: Vec<String>,
    /// The id of the `intent.submit` that created it: the `corr` of deferred events.
    submit_id: Option<String>,
    /// When it was admitted (latency metric).
    admitted_at: Instant,
}

/// The broker's state; run with [`spawn`].
struct Broker {
    config: Arc<RealmConfig>,
    store: Store,
    contract: Arc<Contract>,
    self_tx: mpsc::UnboundedSender<BrokerMsg>,
    started: Instant,
    sessions: HashMap<String, Session>,
    /// The fair queue (queued and running intents).
    queue: SafeQueue,
    /// Fenced leases of running tasks.
    leases: LeaseTable,
    /// Enrolled workers and their health.
    registry: Registry,
    /// Worker id → (connection id, outbox) of its live connection.
    worker_conns: HashMap<String, (u64, Outbox)>,
    /// Connection id → worker id.
    conn_workers: HashMap<u64, String>,
    intents: HashMap<String, LiveIntent>,
    /// Admissions in flight per wallet (not yet committed), counted against the limits.
    pending: HashMap<String, usize>,
    counters: Counters,
    /// True once the realm is stopping.
    stopping: bool,
    /// Settled tasks kept in the lease table for a while so late reports read DUPLICATE /
    /// LEASE_EXPIRED rather than unknown: (settled at ms, task id).
    finished: VecDeque<(u64, String)>,
    /// Seeded defect `health-keeps-dead-workers`: departed workers, still reported healthy.
    departed: Vec<WorkerHealth>,
    /// Inside `tick` (seeded defect `slow-dispatch` dispatches only there).
    ticking: bool,
}

#[derive(Debug)]
struct Session {
    wallet: String,
    tx: Outbox,
}

/// How long running tasks get to finish when the realm stops.
pub const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// How long a settled task's lease record is kept to classify late reports.
const FORGET_AFTER_MS: u64 = 5 * 60 * 1000;

/// Starts the broker task. Queued and running intents found in the store are re-queued.
pub fn spawn(
    config: Arc<RealmConfig>,
    store: Store,
    contract: Arc<Contract>,
) -> Result<(BrokerHandle, tokio::task::JoinHandle<()>), BrokerError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let now_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let stored_epoch: i64 = store.read(|c| {
        c.query_row(
            "SELECT COALESCE(MAX(last_epoch), 0) FROM realm_epochs",
            [],
            |r| r.get(0),
        )
        .map_err(BrokerError::from)
    })?;
    // Epochs must grow across restarts: start above both the persisted high-water mark and the
    // wall clock in ms (which covers epochs issued after the last persisted one).
    let floor = now_unix_ms.max(u64::try_from(stored_epoch).unwrap_or(0));
    let lease_cfg = LeaseConfig {
        grace_ms: config.lease.grace_ms,
        max_attempts: config.lease.max_attempts,
    };
    let mut queue_cfg = QueueConfig {
        capacity: config.limits.queue_capacity,
        per_wallet_inflight: config.limits.per_wallet_inflight,
        ..QueueConfig::default()
    };
    if defect::on(Defect::UnboundedQueue) {
        queue_cfg.capacity = usize::MAX / 2;
    }
    if defect::on(Defect::UnboundedQueue) || defect::on(Defect::FifoUnfair) {
        queue_cfg.per_wallet_inflight = usize::MAX / 2;
    }
    let mut broker = Broker {
        leases: LeaseTable::new(lease_cfg, floor)
            .map_err(|e| BrokerError::Corrupt(e.to_string()))?,
        queue: SafeQueue::new(queue_cfg).map_err(|e| BrokerError::Corrupt(e.to_string()))?,
        registry: Registry::new(config.lease.heartbeat_interval_ms)
            .map_err(|e| BrokerError::Corrupt(e.to_string()))?,
        config,
        store,
        contract,
        self_tx: tx.clone(),
        started: Instant::now(),
        sessions: HashMap::new(),
        worker_conns: HashMap::new(),
        conn_workers: HashMap::new(),
        intents: HashMap::new(),
        pending: HashMap::new(),
        counters: Counters::default(),
        stopping: false,
        finished: VecDeque::new(),
        departed: Vec::new(),
        ticking: false,
    };
    broker.recover()?;
    let join = tokio::spawn(broker.run(rx));
    Ok((BrokerHandle { tx }, join))
}

/// Seeded defect `no-refund-on-dead-letter`: the settlement a dead letter reports when nothing
/// is released (the hold stays where it is).
fn unrefunded(tx: &crate::store::WriteTx<'_>, intent_id: &str) -> Result<Settlement, BrokerError> {
    let r = ledger::reservation_on(tx, intent_id)?
        .ok_or_else(|| BrokerError::Corrupt(format!("no reservation for {intent_id}")))?;
    Ok(Settlement {
        intent_id: intent_id.to_owned(),
        wallet: r.wallet,
        outcome: ledger::SettlementOutcome::Released,
        reserved: r.amount,
        cost: 0,
        fee: 0,
        earned: 0,
        released: 0,
        worker_key: None,
        fee_bps: None,
        capture_seq: None,
        release_seq: None,
        ts: now_rfc3339(),
        replayed: false,
    })
}

fn body_hash(s: &Submit) -> String {
    let canonical = serde_jcs::to_string(&json!({
        "intent": s.intent, "input": s.input, "max_cost": s.max_cost, "priority": s.priority
    }))
    .unwrap_or_default();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn send(tx: &Outbox, frame: String) {
    // A full outbox means a peer that does not read; dropping its frame is safer than letting
    // one slow peer stall the broker. A client recovers state with intent.fetch.
    if let Err(e) = tx.try_send(frame) {
        debug!(error = %e, "dropping a frame for a slow or closed connection");
    }
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Broker {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn recover(&mut self) -> Result<(), BrokerError> {
        if defect::on(Defect::ForgetUnfinishedOnRestart) {
            return Ok(());
        }
        type Row = (
            String,
            String,
            String,
            String,
            i64,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = self.store.read(|c| {
            let mut stmt = c.prepare(
                "SELECT intent_id, wallet, intent, input, max_cost, priority, attempts, submit_id
                 FROM realm_intents WHERE state IN ('queued', 'running') ORDER BY created_at",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                })?
                .collect::<Result<Vec<Row>, _>>()?;
            Ok::<_, BrokerError>(rows)
        })?;
        let now = self.now_ms();
        for (id, wallet, intent, input, max_cost, priority, attempts, submit_id) in rows {
            let input: Value =
                serde_json::from_str(&input).map_err(|e| BrokerError::Corrupt(e.to_string()))?;
            let attempts = u32::try_from(attempts).unwrap_or(0);
            if let Err(e) = self.leases.adopt(&id, attempts) {
                warn!(intent = %id, error = %e, "cannot adopt a recovered intent");
                continue;
            }
            let submission = Submission {
                intent_id: id.clone(),
                wallet: wallet.clone(),
                intent: intents::lane(&intent, &input),
                priority: u8::try_from(priority).unwrap_or(DEFAULT_PRIORITY).min(9),
                cost: 1,
            };
            // Recovered intents were admitted before: they must not be refused for capacity
            // now, but the queue is the only bound we have; log if it refuses.
            if let Err(e) = self.queue.admit(submission, now) {
                warn!(intent = %id, error = %e, "recovered intent does not fit the queue");
                continue;
            }
            self.intents.insert(
                id,
                LiveIntent {
                    wallet,
                    intent,
                    input,
                    max_cost: u64_of(max_cost),
                    state: LiveState::Queued,
                    attempts,
                    attached: Vec::new(),
                    submit_id,
                    admitted_at: Instant::now(),
                },
            );
        }
        if !self.intents.is_empty() {
            info!(
                count = self.intents.len(),
                "re-queued intents found at start"
            );
        }
        Ok(())
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<BrokerMsg>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Also wake exactly when the earliest lease's grace ends, so a lapse is acted on at once
        // (LSE-5) rather than up to a tick later; re-armed only when that time changes.
        let expiry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(expiry);
        let (mut armed, mut fired): (Option<u64>, Option<u64>) = (None, None);
        loop {
            let next = self.leases.next_expiry_ms();
            // A time that already fired is left to the tick: no busy loop if it stays first.
            if next != armed && next != fired {
                armed = next;
                if let Some(ms) = next {
                    let at = self.started + Duration::from_millis(ms);
                    expiry.as_mut().reset(tokio::time::Instant::from_std(at));
                }
            }
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(BrokerMsg::Shutdown) | None => break,
                    Some(msg) => self.handle(msg),
                },
                _ = tick.tick() => self.tick(),
                _ = &mut expiry, if armed.is_some() => {
                    fired = armed.take();
                    self.tick();
                }
            }
        }
        for id in self.intents.keys() {
            if let Some(lease) = self.leases.lease(id).filter(|_| self.leases.is_active(id)) {
                if let Some((_, tx)) = self.worker_conns.get(&lease.worker_id) {
                    send(
                        tx,
                        wire::event(
                            "task.cancel",
                            None,
                            json!({"task_id": id, "epoch": lease.epoch, "reason": "realm_shutdown"}),
                        ),
                    );
                }
            }
        }
        info!("broker stopped");
    }

    fn handle(&mut self, msg: BrokerMsg) {
        match msg {
            BrokerMsg::SessionOpen {
                session_id,
                wallet,
                tx,
            } => {
                self.sessions.insert(session_id, Session { wallet, tx });
            }
            BrokerMsg::SessionClose { session_id } => {
                self.sessions.remove(&session_id);
            }
            BrokerMsg::Submit {
                session_id,
                corr,
                submit,
            } => self.submit(session_id, corr, submit),
            BrokerMsg::Cancel {
                session_id,
                corr,
                intent_id,
            } => self.cancel(session_id, corr, intent_id),
            BrokerMsg::Fetch {
                session_id,
                corr,
                intent_id,
            } => self.fetch(session_id, corr, intent_id),
            BrokerMsg::WorkerJoin {
                conn,
                worker_id,
                worker_key,
                intents,
                concurrency,
                capabilities,
                tx,
            } => self.worker_join(
                conn,
                worker_id,
                worker_key,
                (intents, concurrency, capabilities),
                tx,
            ),
            BrokerMsg::WorkerLeave { conn } => self.worker_left(conn),
            BrokerMsg::Heartbeat { conn, draining } => {
                let now = self.now_ms();
                if let Some(wid) = self.conn_workers.get(&conn) {
                    let reported = if draining {
                        Reported::Draining
                    } else {
                        Reported::Ready
                    };
                    if let Err(e) = self.registry.heartbeat(wid, reported, now) {
                        debug!(error = %e, "heartbeat of an unknown worker");
                    }
                }
                self.dispatch();
            }
            BrokerMsg::Task {
                conn,
                corr,
                task_id,
                attempt,
                epoch,
                report,
            } => self.task_report(conn, corr, task_id, attempt, epoch, report),
            BrokerMsg::Resume {
                session_id,
                corr,
                intent_ids,
            } => {
                let intent_ids = if defect::on(Defect::ResumeIgnored) {
                    Vec::new()
                } else {
                    intent_ids
                };
                for id in intent_ids {
                    self.lookup(session_id.clone(), corr.clone(), id, ReadPurpose::Resume);
                }
            }
            BrokerMsg::Stopping => {
                // ENV-8 / WRK-11: refuse new work, and tell every worker to drain first.
                self.stopping = true;
                let deadline =
                    crate::store::format_rfc3339_millis(std::time::SystemTime::now() + DRAIN_GRACE);
                for (_, tx) in self.worker_conns.values() {
                    send(
                        tx,
                        wire::event(
                            "worker.drain",
                            None,
                            json!({"reason": "realm shutting down", "deadline": deadline}),
                        ),
                    );
                }
                for w in self
                    .registry
                    .workers()
                    .map(|w| w.worker_id.clone())
                    .collect::<Vec<_>>()
                {
                    let _ = self.registry.set_draining(&w, true);
                }
            }
            BrokerMsg::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            BrokerMsg::SeededBroadcast { frame } => {
                for s in self.sessions.values() {
                    send(&s.tx, frame.clone());
                }
            }
            BrokerMsg::Done(done) => self.done(*done),
            BrokerMsg::Shutdown => {}
        }
    }

    fn session_send(&self, session_id: &str, frame: String) {
        if let Some(s) = self.sessions.get(session_id) {
            send(&s.tx, frame);
        }
    }

    fn worker_send(&self, worker_id: &str, frame: String) {
        if let Some((_, tx)) = self.worker_conns.get(worker_id) {
            send(tx, frame);
        }
    }

    /// Sends a deferred event about an intent to its attached, live sessions; returns how many
    /// received it.
    fn intent_send(&self, live: &LiveIntent, kind: &str, body: Value) -> usize {
        let frame = wire::event(kind, live.submit_id.as_deref(), body);
        let mut n = 0;
        for sid in &live.attached {
            if let Some(s) = self.sessions.get(sid) {
                send(&s.tx, frame.clone());
                n += 1;
            }
        }
        n
    }

    fn reject(
        &mut self,
        session_id: &str,
        corr: &str,
        key: &str,
        code: Code,
        message: &str,
        retry: Option<u64>,
    ) {
        self.counters.rejected += 1;
        *self
            .counters
            .rejected_by_code
            .entry(code.as_str())
            .or_default() += 1;
        let mut body = json!({"idempotency_key": key, "code": code.as_str(), "message": message});
        if let (Some(ms), Some(o)) = (retry, body.as_object_mut()) {
            o.insert("retry_after_ms".to_owned(), json!(ms));
        }
        self.session_send(session_id, wire::event("intent.rejected", Some(corr), body));
    }

    fn worker_join(
        &mut self,
        conn: u64,
        worker_id: String,
        worker_key: String,
        (intents, concurrency, capabilities): (Vec<String>, usize, Value),
        tx: Outbox,
    ) {
        // The same key reconnecting before its old connection was noticed as closed: the old
        // connection is over, so its leases are reclaimed first.
        if let Some((old, _)) = self.worker_conns.get(&worker_id).cloned() {
            self.worker_left(old);
        }
        let now = self.now_ms();
        let enrolment = Enrolment {
            worker_id: worker_id.clone(),
            key: worker_key.clone(),
            intents: intents.clone(),
            concurrency: u32::try_from(concurrency).unwrap_or(1),
            capabilities,
        };
        if let Err(e) = self.registry.enroll(enrolment, now) {
            warn!(worker = %worker_id, error = %e, "enrolment refused");
            send(
                &tx,
                wire::error_event(Code::InvalidEvent, &e.to_string(), None, None),
            );
            return;
        }
        self.worker_conns.insert(worker_id.clone(), (conn, tx));
        self.conn_workers.insert(conn, worker_id.clone());
        self.audit(
            "worker.joined",
            &worker_key,
            &worker_id,
            json!({"intents": intents, "concurrency": concurrency}),
        );
        self.dispatch();
    }

    /// Admission, checks 2a and 3 (section 8.1); checks 4-10 follow in [`Broker::admit`] once
    /// the idempotency binding has been read.
    fn submit(&mut self, session_id: String, corr: String, mut submit: Submit) {
        if defect::on(Defect::SanitizeInput) {
            defect::sanitize(&mut submit.input);
        }
        let Some(wallet) = self.sessions.get(&session_id).map(|s| s.wallet.clone()) else {
            return;
        };
        let key = submit.idempotency_key.clone();
        if intents::spec(&submit.intent).is_some() {
            if let Err(m) = self.contract.check_input(&submit.intent, &submit.input) {
                return self.reject(&session_id, &corr, &key, Code::InvalidEvent, &m, None);
            }
            if let Err(m) = intents::check_input(&submit.intent, &submit.input) {
                return self.reject(&session_id, &corr, &key, Code::BadInput, &m, None);
            }
        }
        // The binding is read off the broker task; the admission job re-checks it inside its
        // write transaction, so two racing identical submissions still bind once.
        let store = self.store.clone();
        let back = self.self_tx.clone();
        tokio::task::spawn_blocking(move || {
            let binding = if defect::on(Defect::IgnoreIdempotencyKey) {
                Ok(None)
            } else {
                read_binding(&store, &wallet, &submit.idempotency_key)
            };
            let _ = back.send(BrokerMsg::Done(Box::new(Done::Bound {
                session_id,
                corr,
                submit,
                wallet,
                binding,
            })));
        });
    }

    /// Admission checks 3-10 (section 8.1).
    fn admit(
        &mut self,
        session_id: String,
        corr: String,
        submit: Submit,
        wallet: String,
        binding: Result<Option<StoredIntent>, BrokerError>,
    ) {
        let key = submit.idempotency_key.clone();
        let now = self.now_ms();
        match binding {
            Ok(Some(row)) => return self.replay(&session_id, &corr, &submit, &row),
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "idempotency lookup failed");
                return self.reject(
                    &session_id,
                    &corr,
                    &key,
                    Code::Internal,
                    "admission failed",
                    None,
                );
            }
        }
        if self.stopping {
            return self.reject(
                &session_id,
                &corr,
                &key,
                Code::ShuttingDown,
                "the realm is shutting down",
                None,
            );
        }
        let Some(spec) = intents::spec(&submit.intent) else {
            return self.reject(
                &session_id,
                &corr,
                &key,
                Code::Infeasible,
                "this realm does not offer this intent",
                None,
            );
        };
        // The intent's lane: a pinned probe's (PRB-6) or a GPU request's (SIG-10) needs a
        // worker of that key or with a GPU, not just one that lists the intent.
        let lane = intents::lane(spec.name, &submit.input);
        if !self.registry.servable_lane(spec.name, &lane, now) {
            return self.reject(
                &session_id,
                &corr,
                &key,
                Code::Infeasible,
                "no enrolled worker serves this intent",
                None,
            );
        }
        let price = intents::estimated_cost(spec.name, &submit.input).unwrap_or(spec.min_cost);
        if submit.max_cost < price {
            let m = format!("max_cost {} is below the price {price}", submit.max_cost);
            return self.reject(&session_id, &corr, &key, Code::CostTooLow, &m, None);
        }
        // Admissions whose reservation is still committing count against the limits, so the
        // queue cannot refuse them once they are durable.
        let pending_wallet = self.pending.get(&wallet).copied().unwrap_or(0);
        let pending_total: usize = self.pending.values().sum();
        let retry = self.queue.retry_after_ms(now);
        let no_wallet_limit = defect::on(Defect::UnboundedQueue) || defect::on(Defect::FifoUnfair);
        if self.queue.wallet_inflight(&wallet) + pending_wallet
            >= self.config.limits.per_wallet_inflight
            && !no_wallet_limit
        {
            let m = format!(
                "the wallet has {} intents queued or running, its limit",
                self.config.limits.per_wallet_inflight
            );
            return self.reject(&session_id, &corr, &key, Code::RateLimited, &m, Some(retry));
        }
        if self.queue.depth() + pending_total >= self.config.limits.queue_capacity
            && !defect::on(Defect::UnboundedQueue)
        {
            return self.reject(
                &session_id,
                &corr,
                &key,
                Code::QueueFull,
                "the queue is full",
                Some(retry),
            );
        }
        *self.pending.entry(wallet.clone()).or_default() += 1;
        let intent_id = identity::new_id();
        let hash = body_hash(&submit);
        let job_submit = submit.clone();
        let job_wallet = wallet.clone();
        let submit_id = corr.clone();
        let job = move |tx: &crate::store::WriteTx<'_>| -> Result<Admitted, BrokerError> {
            // Seeded defect `ignore-idempotency-key`: the key is never consulted; each
            // submission is stored under a key of its own.
            let stored_key = if defect::on(Defect::IgnoreIdempotencyKey) {
                intent_id.clone()
            } else {
                job_submit.idempotency_key.clone()
            };
            if let Some(row) = read_binding_on(tx, &job_wallet, &stored_key)? {
                return Ok(Admitted::Replay(Box::new(row)));
            }
            let reservation = ledger::reserve_tx(
                tx,
                &job_wallet,
                &intent_id,
                job_submit.max_cost,
                &stored_key,
            )?;
            let now = now_rfc3339();
            tx.prepare_cached(
                "INSERT INTO realm_intents (intent_id, wallet, intent, input, max_cost,
                     idempotency_key, body_hash, priority, state, attempts, created_at, updated_at,
                     submit_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', 0, ?9, ?9, ?10)",
            )?
            .execute(params![
                intent_id,
                job_wallet,
                job_submit.intent,
                job_submit.input.to_string(),
                i64::try_from(job_submit.max_cost).unwrap_or(i64::MAX),
                stored_key,
                hash,
                i64::from(job_submit.priority),
                now,
                submit_id
            ])?;
            audit::append_tx(
                tx,
                "intent.admitted",
                &job_wallet,
                &intent_id,
                &json!({"intent": job_submit.intent, "reserved": job_submit.max_cost,
                        "entry_seq": reservation.entry_seq}),
            )?;
            Ok(Admitted::New(reservation))
        };
        let back = self.self_tx.clone();
        let (s2, c2, w2) = (session_id.clone(), corr.clone(), wallet.clone());
        let submitted = self.store.submit_with(job, move |result| {
            let _ = back.send(BrokerMsg::Done(Box::new(Done::Admit {
                session_id: s2,
                corr: c2,
                submit,
                wallet: w2,
                result,
            })));
        });
        if let Err(e) = submitted {
            self.unpend(&wallet);
            let code = if matches!(e, StoreError::Closed) {
                Code::ShuttingDown
            } else {
                Code::Internal
            };
            self.reject(
                &session_id,
                &corr,
                &key,
                code,
                "the store is not accepting writes",
                None,
            );
        }
    }

    /// Answers a submission whose idempotency key is already bound (section 8.3).
    fn replay(&mut self, session_id: &str, corr: &str, submit: &Submit, row: &StoredIntent) {
        if row.body_hash != body_hash(submit) {
            return self.reject(
                session_id,
                corr,
                &submit.idempotency_key,
                Code::IdempotencyConflict,
                "this idempotency key is bound to a different submission",
                None,
            );
        }
        let now = self.now_ms();
        let position = self.queue.position(&row.intent_id, now).unwrap_or(0);
        self.session_send(
            session_id,
            wire::event(
                "intent.accepted",
                Some(corr),
                json!({"intent_id": row.intent_id, "idempotency_key": submit.idempotency_key,
                       "reserved": row.max_cost, "position": position, "queue_depth": self.queue.depth()}),
            ),
        );
    }

    fn unpend(&mut self, wallet: &str) {
        if let Some(n) = self.pending.get_mut(wallet) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending.remove(wallet);
            }
        }
    }

    fn admitted(
        &mut self,
        session_id: String,
        corr: String,
        submit: Submit,
        wallet: String,
        result: Result<Admitted, BrokerError>,
    ) {
        self.unpend(&wallet);
        let key = submit.idempotency_key.clone();
        let now = self.now_ms();
        match result {
            Ok(Admitted::New(res)) => {
                let id = res.intent_id.clone();
                let submission = Submission {
                    intent_id: id.clone(),
                    wallet: wallet.clone(),
                    // The queue matches lanes: a pinned probe waits for its own workers (PRB-6).
                    intent: intents::lane(&submit.intent, &submit.input),
                    priority: submit.priority.min(9),
                    cost: 1,
                };
                let admitted = self.queue.admit(submission, now);
                let live = LiveIntent {
                    wallet,
                    intent: submit.intent,
                    input: submit.input,
                    max_cost: submit.max_cost,
                    state: LiveState::Queued,
                    attempts: 0,
                    attached: vec![session_id.clone()],
                    submit_id: Some(corr.clone()),
                    admitted_at: Instant::now(),
                };
                let accepted = match admitted {
                    Ok(a) => a,
                    Err(e) => {
                        // Cannot happen while pending admissions are counted; if it does, the
                        // durable reservation is released and the intent failed, never lost.
                        warn!(intent = %id, error = %e, "queue refused a reserved intent");
                        self.intents.insert(
                            id.clone(),
                            LiveIntent {
                                state: LiveState::Settling,
                                ..live
                            },
                        );
                        let terminal = Terminal::Failed {
                            code: Code::Internal,
                            message: "the queue refused the intent".to_owned(),
                            attempts: 0,
                        };
                        return self.settle(id, terminal, None, None, None);
                    }
                };
                self.counters.admitted += 1;
                self.intents.insert(id.clone(), live);
                self.session_send(
                    &session_id,
                    wire::event(
                        "intent.accepted",
                        Some(&corr),
                        json!({"intent_id": id, "idempotency_key": key, "reserved": res.amount,
                               "position": accepted.position.min(accepted.depth.saturating_sub(1)),
                               "queue_depth": accepted.depth}),
                    ),
                );
                self.dispatch();
            }
            Ok(Admitted::Replay(row)) => self.replay(&session_id, &corr, &submit, &row),
            Err(e) => {
                let (code, message) = match &e {
                    BrokerError::Ledger(LedgerError::InsufficientFunds {
                        available,
                        requested,
                        ..
                    }) => (
                        Code::InsufficientFunds,
                        format!("available {available}, max_cost {requested}"),
                    ),
                    BrokerError::Ledger(LedgerError::IdempotencyConflict { .. }) => (
                        Code::IdempotencyConflict,
                        "this idempotency key is bound to a different submission".to_owned(),
                    ),
                    BrokerError::Store(StoreError::Closed) => {
                        (Code::ShuttingDown, "the realm is shutting down".to_owned())
                    }
                    other => {
                        warn!(error = %other, "admission failed");
                        (Code::Internal, "admission failed".to_owned())
                    }
                };
                self.reject(&session_id, &corr, &key, code, &message, None);
            }
        }
    }

    /// Hands queued intents to healthy workers with free slots, least loaded first, until no
    /// worker can take any queued intent.
    fn dispatch(&mut self) {
        if self.queue.depth() == 0 {
            return;
        }
        // Seeded defect `slow-dispatch`: only the tick dispatches, one task at a time.
        let slow = defect::on(Defect::SlowDispatch);
        if slow && !self.ticking {
            return;
        }
        let now = self.now_ms();
        loop {
            let mut candidates: Vec<(u64, String, Vec<String>)> = self
                .registry
                .workers()
                .filter(|w| {
                    w.has_capacity()
                        && self.registry.health(&w.worker_id, now) == Some(Health::Healthy)
                })
                .map(|w| {
                    let load = u64::from(w.running) * 1_000_000 / u64::from(w.concurrency.max(1));
                    (
                        load,
                        w.worker_id.clone(),
                        intents::worker_lanes(&w.intents, &w.key, &w.capabilities),
                    )
                })
                .collect();
            candidates.sort();
            let mut progressed = false;
            for (_, wid, intents) in candidates {
                if let Some(item) = self.queue.next_for(&intents, now) {
                    self.assign(&wid, item.intent_id, now);
                    progressed = true;
                    break;
                }
            }
            if !progressed || self.queue.depth() == 0 || slow {
                break;
            }
        }
    }

    fn assign(&mut self, worker_id: &str, id: String, now: u64) {
        let lease_ms = self.config.lease.lease_ms;
        let lease = match self.leases.grant(&id, worker_id, now, lease_ms) {
            Ok(l) => l,
            Err(e) => {
                // The queue and the lease table disagree (a bug): fail the intent visibly
                // rather than leave it running forever.
                warn!(intent = %id, error = %e, "lease refused at dispatch");
                let _ = self.queue.finish(&id, now);
                if let Some(live) = self.intents.get_mut(&id) {
                    live.state = LiveState::Settling;
                    let attempts = live.attempts;
                    let terminal = Terminal::Failed {
                        code: Code::Internal,
                        message: e.to_string(),
                        attempts,
                    };
                    self.settle(id, terminal, None, None, None);
                }
                return;
            }
        };
        if let Err(e) = self.registry.start_task(worker_id) {
            warn!(worker = %worker_id, error = %e, "worker slot accounting");
        }
        let Some(live) = self.intents.get_mut(&id) else {
            return;
        };
        live.attempts = lease.attempt;
        live.state = LiveState::Running;
        let deadline = crate::store::format_rfc3339_millis(
            std::time::SystemTime::now() + Duration::from_millis(lease_ms),
        );
        let frame = wire::event(
            "task.assign",
            None,
            json!({"task_id": id, "attempt": lease.attempt, "epoch": lease.epoch, "intent": live.intent,
                   "input": live.input, "deadline": deadline, "lease_ms": lease_ms}),
        );
        self.worker_send(worker_id, frame);
        self.counters.dispatched += 1;
        if lease.attempt >= 2 {
            self.counters.redispatched += 1;
        }
        debug!(task = %id, attempt = lease.attempt, epoch = lease.epoch, worker = %worker_id, "dispatched");
        if let Some(live) = self.intents.get(&id) {
            self.intent_send(
                live,
                "intent.progress",
                json!({"intent_id": id, "fraction": 0.0, "stage": "dispatched"}),
            );
        }
        let (job_id, wid, attempt, epoch) = (id, worker_id.to_owned(), lease.attempt, lease.epoch);
        self.fire(move |tx| {
            tx.execute(
                "UPDATE realm_intents SET state = 'running', attempts = ?2, updated_at = ?3 WHERE intent_id = ?1",
                params![job_id, i64::from(attempt), now_rfc3339()],
            )?;
            tx.execute(
                "INSERT INTO realm_epochs (id, last_epoch) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET last_epoch = MAX(last_epoch, excluded.last_epoch)",
                params![i64::try_from(epoch).unwrap_or(i64::MAX)],
            )?;
            audit::append_tx(tx, "task.dispatched", "realm", &job_id,
                &json!({"attempt": attempt, "epoch": epoch, "worker_id": wid}))?;
            Ok(())
        });
    }

    /// Submits a job whose outcome only needs logging.
    fn fire<F>(&self, job: F)
    where
        F: FnOnce(&crate::store::WriteTx<'_>) -> Result<(), BrokerError> + Send + 'static,
    {
        let r = self.store.submit_with(job, |r: Result<(), BrokerError>| {
            if let Err(e) = r {
                warn!(error = %e, "store job failed");
            }
        });
        if let Err(e) = r {
            warn!(error = %e, "store job not submitted");
        }
    }

    fn audit(&self, kind: &'static str, actor: &str, subject: &str, data: Value) {
        let (actor, subject) = (actor.to_owned(), subject.to_owned());
        self.fire(move |tx| {
            audit::append_tx(tx, kind, &actor, &subject, &data)?;
            Ok(())
        });
    }

    fn receipt(
        &self,
        worker_id: &str,
        corr: &str,
        task_id: &str,
        attempt: u32,
        epoch: u64,
        refused: Option<&str>,
    ) {
        let mut body = json!({"task_id": task_id, "attempt": attempt.max(1), "epoch": epoch.max(1),
                              "status": if refused.is_some() { "refused" } else { "accepted" }});
        if let (Some(code), Some(o)) = (refused, body.as_object_mut()) {
            o.insert("code".to_owned(), json!(code));
        }
        self.worker_send(worker_id, wire::event("task.receipt", Some(corr), body));
    }

    fn task_report(
        &mut self,
        conn: u64,
        corr: String,
        task_id: String,
        attempt: u32,
        epoch: u64,
        report: TaskReport,
    ) {
        let Some(worker_id) = self.conn_workers.get(&conn).cloned() else {
            return;
        };
        let now = self.now_ms();
        let refused = |e: LeaseError| -> &'static str {
            match e.code() {
                // An unknown task is, for its sender, not the current lease.
                "NOT_FOUND" | "INTERNAL" => "STALE_EPOCH",
                code => code,
            }
        };
        match report {
            TaskReport::Progress { fraction, stage } => {
                if let Err(e) = self
                    .leases
                    .progress(&task_id, attempt, epoch, &worker_id, now)
                {
                    self.counters.refused += 1;
                    return self.receipt(
                        &worker_id,
                        &corr,
                        &task_id,
                        attempt,
                        epoch,
                        Some(refused(e)),
                    );
                }
                self.receipt(&worker_id, &corr, &task_id, attempt, epoch, None);
                if let Some(live) = self.intents.get(&task_id) {
                    let mut body =
                        json!({"intent_id": task_id, "fraction": fraction.clamp(0.0, 1.0)});
                    if let (Some(mut s), Some(o)) = (stage, body.as_object_mut()) {
                        wire::truncate(&mut s, 64);
                        o.insert("stage".to_owned(), json!(s));
                    }
                    self.intent_send(live, "intent.progress", body);
                }
            }
            TaskReport::Result { output, .. } => {
                // Seeded defect `accept-stale-epoch`: a result for a running task is taken as
                // the current attempt's, whoever sent it and whatever its epoch.
                let (attempt, epoch, worker_id) = match self
                    .leases
                    .lease(&task_id)
                    .filter(|_| defect::on(Defect::AcceptStaleEpoch))
                    .filter(|_| self.leases.is_active(&task_id))
                {
                    Some(l) => (l.attempt, l.epoch, l.worker_id.clone()),
                    None => (attempt, epoch, worker_id),
                };
                let current = self.leases.is_active(&task_id)
                    && self.leases.lease(&task_id).is_some_and(|l| {
                        l.attempt == attempt && l.epoch == epoch && l.worker_id == worker_id
                    });
                if current {
                    if let Err(why) = self.check_output(&task_id, &output, &worker_id) {
                        // A wrong result is refused and counts as a retryable failure of the
                        // attempt (LSE-12), so another worker gets the task.
                        debug!(task = %task_id, %why, "result refused as invalid");
                        self.counters.refused += 1;
                        self.receipt(
                            &worker_id,
                            &corr,
                            &task_id,
                            attempt,
                            epoch,
                            Some("INVALID_EVENT"),
                        );
                        if let Ok(ended) =
                            self.leases.fail(&task_id, attempt, epoch, &worker_id, true)
                        {
                            let _ = self.registry.end_task(&worker_id);
                            self.after_attempt(
                                &task_id,
                                ended.disposition,
                                Code::WorkerFailed,
                                why,
                                None,
                                now,
                            );
                        }
                        return;
                    }
                }
                if let Err(e) = self.leases.complete(&task_id, attempt, epoch, &worker_id) {
                    self.counters.refused += 1;
                    debug!(task = %task_id, attempt, epoch, error = %e, "result refused");
                    return self.receipt(
                        &worker_id,
                        &corr,
                        &task_id,
                        attempt,
                        epoch,
                        Some(refused(e)),
                    );
                }
                let _ = self.registry.end_task(&worker_id);
                let _ = self.queue.finish(&task_id, now);
                let worker_key = self
                    .registry
                    .get(&worker_id)
                    .map(|w| w.key.clone())
                    .unwrap_or_default();
                let Some(live) = self.intents.get_mut(&task_id) else {
                    return;
                };
                live.state = LiveState::Settling;
                // The price comes from the admitted input, never from the worker's units, and
                // never exceeds what the client allowed.
                let cost = intents::estimated_cost(&live.intent, &live.input)
                    .unwrap_or(0)
                    .min(live.max_cost);
                let terminal = Terminal::Succeeded {
                    output,
                    cost,
                    attempts: live.attempts,
                    worker_id: worker_id.clone(),
                };
                self.settle(
                    task_id,
                    terminal,
                    Some((conn, corr, attempt, epoch)),
                    Some(worker_key),
                    None,
                );
            }
            TaskReport::Failure {
                code,
                message,
                retryable,
            } => {
                let ended = match self
                    .leases
                    .fail(&task_id, attempt, epoch, &worker_id, retryable)
                {
                    Ok(e) => e,
                    Err(e) => {
                        self.counters.refused += 1;
                        return self.receipt(
                            &worker_id,
                            &corr,
                            &task_id,
                            attempt,
                            epoch,
                            Some(refused(e)),
                        );
                    }
                };
                let _ = self.registry.end_task(&worker_id);
                let wire_code = match code.as_str() {
                    "BAD_INPUT" => Code::BadInput,
                    "TIMEOUT" => Code::Timeout,
                    _ => Code::WorkerFailed,
                };
                self.after_attempt(
                    &task_id,
                    ended.disposition,
                    wire_code,
                    message,
                    Some((conn, corr, attempt, epoch)),
                    now,
                );
            }
        }
    }

    /// Checks a result's output: its schema, and for `cert.probe` the echo, digest and worker.
    fn check_output(&self, task_id: &str, output: &Value, worker_id: &str) -> Result<(), String> {
        let Some(live) = self.intents.get(task_id) else {
            return Ok(());
        };
        if defect::on(Defect::AcceptMalformedResult) {
            return Ok(());
        }
        self.contract.check_output(&live.intent, output)?;
        if live.intent == "cert.probe" {
            let nonce = live
                .input
                .get("nonce")
                .and_then(Value::as_str)
                .unwrap_or("");
            if output.get("nonce").and_then(Value::as_str) != Some(nonce) {
                return Err("cert.probe output does not echo the nonce".to_owned());
            }
            if output.get("digest").and_then(Value::as_str)
                != Some(intents::probe_digest(nonce).as_str())
            {
                return Err("cert.probe digest is wrong".to_owned());
            }
            if output.get("worker_id").and_then(Value::as_str) != Some(worker_id) {
                return Err("cert.probe worker_id is not the reporting worker".to_owned());
            }
        }
        Ok(())
    }

    /// Acts on a lease that ended without a result: re-dispatch, dead letter, or fail.
    fn after_attempt(
        &mut self,
        task_id: &str,
        disposition: Disposition,
        code: Code,
        message: String,
        receipt: Option<(u64, String, u32, u64)>,
        now: u64,
    ) {
        let Some(live) = self.intents.get_mut(task_id) else {
            return;
        };
        match disposition {
            Disposition::Redispatch => {
                live.state = LiveState::Queued;
                if let Err(e) = self.queue.requeue_front(task_id, now) {
                    warn!(task = %task_id, error = %e, "requeue failed");
                }
                if let Some((conn, corr, attempt, epoch)) = receipt {
                    if let Some(wid) = self.conn_workers.get(&conn) {
                        self.receipt(wid, &corr, task_id, attempt, epoch, None);
                    }
                }
                self.dispatch();
            }
            Disposition::DeadLetter | Disposition::Fail => {
                live.state = LiveState::Settling;
                let attempts = live.attempts;
                let _ = self.queue.finish(task_id, now);
                let (code, message) = if disposition == Disposition::DeadLetter {
                    (
                        Code::DeadLettered,
                        format!("no result after {attempts} attempts: {message}"),
                    )
                } else {
                    (code, message)
                };
                let terminal = Terminal::Failed {
                    code,
                    message,
                    attempts,
                };
                self.settle(task_id.to_owned(), terminal, receipt, None, None);
            }
        }
    }

    /// Commits an intent's terminal state with its money movement and audit records; the events
    /// go out once it is durable (see [`Done::Settled`]).
    fn settle(
        &mut self,
        intent_id: String,
        terminal: Terminal,
        receipt: Option<(u64, String, u32, u64)>,
        worker_key: Option<String>,
        cancel_by: Option<(String, String)>,
    ) {
        let fee_bps = self.config.fee_bps;
        let job_terminal = terminal.clone();
        let job_id = intent_id.clone();
        let job = move |tx: &crate::store::WriteTx<'_>| -> Result<Settlement, BrokerError> {
            let now = now_rfc3339();
            let state = job_terminal.state();
            let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let settlement = match &job_terminal {
                Terminal::Succeeded {
                    output,
                    cost,
                    attempts,
                    worker_id,
                } => {
                    let key = worker_key.unwrap_or_default();
                    let s = ledger::settle_success_tx(tx, &job_id, *cost, &key, fee_bps)?;
                    tx.execute(
                        "UPDATE realm_intents SET state = ?2, attempts = ?3, output = ?4, cost = ?5,
                             released = ?6, updated_at = ?7 WHERE intent_id = ?1",
                        params![job_id, state, i64::from(*attempts), output.to_string(),
                                to_i64(s.cost), to_i64(s.released), now],
                    )?;
                    audit::append_tx(
                        tx,
                        "intent.completed",
                        worker_id,
                        &job_id,
                        &json!({"cost": s.cost, "units": 1, "attempts": attempts}),
                    )?;
                    if let Some(seq) = s
                        .capture_seq
                        .filter(|_| !defect::on(Defect::SkipCaptureAudit))
                    {
                        audit::append_tx(
                            tx,
                            "ledger.capture",
                            "realm",
                            &job_id,
                            &json!({"entry_seq": seq, "cost": s.cost, "fee": s.fee}),
                        )?;
                    }
                    if let Some(seq) = s.release_seq {
                        audit::append_tx(
                            tx,
                            "ledger.release",
                            "realm",
                            &job_id,
                            &json!({"entry_seq": seq, "amount": s.released}),
                        )?;
                    }
                    s
                }
                Terminal::Failed {
                    code,
                    message,
                    attempts,
                } => {
                    let s = if *code == Code::DeadLettered
                        && defect::on(Defect::NoRefundOnDeadLetter)
                    {
                        unrefunded(tx, &job_id)?
                    } else {
                        ledger::release_tx(tx, &job_id)?
                    };
                    tx.execute(
                        "UPDATE realm_intents SET state = ?2, attempts = ?3, code = ?4, message = ?5,
                             released = ?6, updated_at = ?7 WHERE intent_id = ?1",
                        params![job_id, state, i64::from(*attempts), code.as_str(), message,
                                to_i64(s.released), now],
                    )?;
                    if let Some(seq) = s.release_seq {
                        audit::append_tx(
                            tx,
                            "ledger.release",
                            "realm",
                            &job_id,
                            &json!({"entry_seq": seq, "amount": s.released}),
                        )?;
                    }
                    if *code == Code::DeadLettered {
                        audit::append_tx(
                            tx,
                            "intent.dead_lettered",
                            "realm",
                            &job_id,
                            &json!({"attempts": attempts}),
                        )?;
                    } else {
                        audit::append_tx(
                            tx,
                            "intent.failed",
                            "realm",
                            &job_id,
                            &json!({"code": code.as_str(), "attempts": attempts}),
                        )?;
                    }
                    s
                }
                Terminal::Cancelled => {
                    let s = ledger::release_tx(tx, &job_id)?;
                    tx.execute(
                        "UPDATE realm_intents SET state = 'cancelled', code = 'CANCELLED',
                             released = ?2, updated_at = ?3 WHERE intent_id = ?1",
                        params![job_id, to_i64(s.released), now],
                    )?;
                    if let Some(seq) = s.release_seq {
                        audit::append_tx(
                            tx,
                            "ledger.release",
                            "realm",
                            &job_id,
                            &json!({"entry_seq": seq, "amount": s.released}),
                        )?;
                    }
                    audit::append_tx(tx, "intent.cancelled", "realm", &job_id, &json!({}))?;
                    s
                }
            };
            Ok(settlement)
        };
        let back = self.self_tx.clone();
        let receipt = receipt.map(|(c, corr, a, e)| (c, corr, intent_id.clone(), a, e));
        let r = self.store.submit_with(job, move |result| {
            let _ = back.send(BrokerMsg::Done(Box::new(Done::Settled {
                intent_id,
                terminal,
                receipt,
                cancel_by,
                result,
            })));
        });
        if let Err(e) = r {
            warn!(error = %e, "settlement not submitted; the intent stays in flight until restart");
        }
    }

    fn settled(
        &mut self,
        intent_id: String,
        terminal: Terminal,
        receipt: Option<(u64, String, String, u32, u64)>,
        cancel_by: Option<(String, String)>,
        result: Result<Settlement, BrokerError>,
    ) {
        let settlement = match result {
            Ok(s) => s,
            Err(e) => {
                // Nothing moved, so nothing may be announced; the stored row still says
                // queued/running, so a restart re-queues it.
                warn!(intent = %intent_id, error = %e, "settlement failed");
                return;
            }
        };
        let now = self.now_ms();
        if let Some((conn, corr, task_id, attempt, epoch)) = receipt {
            if let Some(wid) = self.conn_workers.get(&conn) {
                self.receipt(wid, &corr, &task_id, attempt, epoch, None);
            }
        }
        self.finished.push_back((now, intent_id.clone()));
        let Some(live) = self.intents.remove(&intent_id) else {
            return;
        };
        self.observe_latency(live.admitted_at.elapsed().as_secs_f64());
        let body = terminal_body(&intent_id, &terminal, &settlement, &now_rfc3339());
        let kind = terminal.event_type();
        match &terminal {
            Terminal::Succeeded { .. } => self.counters.succeeded += 1,
            Terminal::Failed { code, .. } => {
                self.counters.failed += 1;
                if *code == Code::DeadLettered {
                    self.counters.dead_lettered += 1;
                }
            }
            Terminal::Cancelled => self.counters.cancelled += 1,
        }
        let mut delivered = 0;
        if let Some((session, corr)) = &cancel_by {
            // The cancelling session gets the reply (corr = its cancel); other attached
            // sessions get the deferred event.
            if self.sessions.contains_key(session) {
                self.session_send(session, wire::event(kind, Some(corr), body.clone()));
                delivered += 1;
            }
            let others = LiveIntent {
                attached: live
                    .attached
                    .iter()
                    .filter(|s| *s != session)
                    .cloned()
                    .collect(),
                ..live
            };
            delivered += self.intent_send(&others, kind, body);
        } else {
            if defect::on(Defect::DoubleTerminal) {
                self.intent_send(&live, kind, body.clone());
            }
            delivered += self.intent_send(&live, kind, body);
        }
        if delivered > 0 {
            let id = intent_id.clone();
            self.fire(move |tx| {
                tx.execute(
                    "UPDATE realm_intents SET delivered = 1 WHERE intent_id = ?1",
                    params![id],
                )?;
                Ok(())
            });
        }
        self.dispatch();
    }

    fn observe_latency(&mut self, secs: f64) {
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        if let Some(c) = self.counters.latency_counts.get_mut(i) {
            *c += 1;
        }
        self.counters.latency_sum += secs;
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Admit {
                session_id,
                corr,
                submit,
                wallet,
                result,
            } => self.admitted(session_id, corr, submit, wallet, result),
            Done::Bound {
                session_id,
                corr,
                submit,
                wallet,
                binding,
            } => self.admit(session_id, corr, submit, wallet, binding),
            Done::Settled {
                intent_id,
                terminal,
                receipt,
                cancel_by,
                result,
            } => self.settled(intent_id, terminal, receipt, cancel_by, result),
            Done::Read {
                session_id,
                corr,
                purpose,
                row,
            } => self.answer_read(session_id, corr, purpose, row),
        }
    }

    /// Answers a fetch, a cancel of a finished intent, or a resume from the stored row.
    fn answer_read(
        &mut self,
        session_id: String,
        corr: String,
        purpose: ReadPurpose,
        row: Option<StoredIntent>,
    ) {
        let Some(row) = row else {
            if purpose != ReadPurpose::Resume {
                self.session_send(
                    &session_id,
                    wire::error_event(Code::NotFound, "no such intent", Some(&corr), None),
                );
            }
            return;
        };
        // The intent may have become live meanwhile (a restart re-queued it): answer from memory.
        if self.intents.contains_key(&row.intent_id) {
            return self.live_status(session_id, corr, purpose, &row.intent_id);
        }
        self.session_send(
            &session_id,
            wire::event("intent.status", Some(&corr), row.status_body()),
        );
        let undelivered = !row.delivered || defect::on(Defect::ResumeRedelivers);
        if purpose == ReadPurpose::Resume && row.is_terminal() && undelivered {
            if let Some((kind, body)) = row.terminal_event() {
                self.session_send(
                    &session_id,
                    wire::event(kind, row.submit_id.as_deref(), body),
                );
                let id = row.intent_id.clone();
                self.fire(move |tx| {
                    tx.execute(
                        "UPDATE realm_intents SET delivered = 1 WHERE intent_id = ?1",
                        params![id],
                    )?;
                    Ok(())
                });
            }
        }
    }

    /// Answers about a live intent of the session's wallet (attaching on resume).
    fn live_status(
        &mut self,
        session_id: String,
        corr: String,
        purpose: ReadPurpose,
        intent_id: &str,
    ) {
        let Some(live) = self.intents.get_mut(intent_id) else {
            return;
        };
        if purpose == ReadPurpose::Resume && !live.attached.contains(&session_id) {
            live.attached.push(session_id.clone());
        }
        let state = match live.state {
            LiveState::Queued => "queued",
            LiveState::Running | LiveState::Settling => "running",
        };
        let body = json!({"intent_id": intent_id, "state": state, "intent": live.intent,
            "reserved": live.max_cost, "attempts": live.attempts, "updated_at": now_rfc3339()});
        self.session_send(&session_id, wire::event("intent.status", Some(&corr), body));
    }

    /// Every 100 ms: reclaim lapsed leases, forget old settled tasks, dispatch.
    fn tick(&mut self) {
        self.ticking = true;
        self.tick_inner();
        self.ticking = false;
    }

    fn tick_inner(&mut self) {
        let now = self.now_ms();
        for ended in self.leases.expire(now) {
            let lease = &ended.lease;
            self.counters.lapsed += 1;
            let _ = self.registry.end_task(&lease.worker_id);
            self.worker_send(
                &lease.worker_id,
                wire::event("task.cancel", None, json!({"task_id": lease.task_id, "epoch": lease.epoch, "reason": "lease_lapsed"})),
            );
            info!(task = %lease.task_id, attempt = lease.attempt, epoch = lease.epoch, "lease lapsed");
            self.audit("lease.lapsed", "realm", &lease.task_id,
                json!({"attempt": lease.attempt, "epoch": lease.epoch, "worker_id": lease.worker_id, "cause": "deadline"}));
            self.after_attempt(
                &lease.task_id,
                ended.disposition,
                Code::Timeout,
                "the lease lapsed".to_owned(),
                None,
                now,
            );
        }
        while let Some((at, _)) = self.finished.front() {
            if now.saturating_sub(*at) < FORGET_AFTER_MS {
                break;
            }
            if let Some((_, id)) = self.finished.pop_front() {
                let _ = self.leases.forget(&id);
            }
        }
        self.dispatch();
    }

    fn worker_left(&mut self, conn: u64) {
        let Some(wid) = self.conn_workers.remove(&conn) else {
            return;
        };
        if self.worker_conns.get(&wid).is_some_and(|(c, _)| *c == conn) {
            self.worker_conns.remove(&wid);
        }
        let now = self.now_ms();
        let key = self
            .registry
            .get(&wid)
            .map(|w| w.key.clone())
            .unwrap_or_default();
        if defect::on(Defect::HealthKeepsDeadWorkers) {
            let gone = self
                .registry
                .snapshot(now)
                .into_iter()
                .filter(|w| w.worker_id == wid);
            self.departed.extend(gone.map(|w| WorkerHealth {
                state: Health::Healthy,
                ..w
            }));
        }
        // Out of the registry before its leases are re-dispatched: `after_attempt` dispatches at
        // once, and must not hand the task straight back to the worker that just left.
        self.registry.remove(&wid);
        let lost = self.leases.worker_lost(&wid);
        for ended in lost
            .into_iter()
            .filter(|_| !defect::on(Defect::ForgetLostLeases))
        {
            self.counters.lapsed += 1;
            let lease = &ended.lease;
            info!(task = %lease.task_id, attempt = lease.attempt, epoch = lease.epoch, "lease lost with its worker");
            self.audit("lease.lapsed", "realm", &lease.task_id,
                json!({"attempt": lease.attempt, "epoch": lease.epoch, "worker_id": wid, "cause": "disconnect"}));
            self.after_attempt(
                &lease.task_id,
                ended.disposition,
                Code::WorkerFailed,
                "the worker was lost".to_owned(),
                None,
                now,
            );
        }
        self.audit("worker.left", &key, &wid, json!({"reason": "disconnected"}));
        self.dispatch();
    }

    fn cancel(&mut self, session_id: String, corr: String, intent_id: String) {
        let wallet = self.sessions.get(&session_id).map(|s| s.wallet.clone());
        let state = self
            .intents
            .get(&intent_id)
            .filter(|l| Some(&l.wallet) == wallet.as_ref())
            // Seeded defect `cancel-by-session`: only the submitting session may cancel.
            .filter(|l| !defect::on(Defect::CancelBySession) || l.attached.contains(&session_id))
            .map(|l| l.state);
        match state {
            None => return self.lookup(session_id, corr, intent_id, ReadPurpose::Cancel),
            // A result is being committed: the cancel lost the race (SQ-19); report the state.
            Some(LiveState::Settling) => {
                return self.live_status(session_id, corr, ReadPurpose::Cancel, &intent_id)
            }
            Some(_) => {}
        }
        let now = self.now_ms();
        match self.queue.state(&intent_id) {
            Some(IntentState::Queued) => {
                let _ = self.queue.cancel(&intent_id, now);
                let _ = self.leases.cancel(&intent_id);
            }
            Some(IntentState::Running) => {
                if let Ok(Some(lease)) = self.leases.cancel(&intent_id) {
                    let _ = self.registry.end_task(&lease.worker_id);
                    self.worker_send(
                        &lease.worker_id,
                        wire::event(
                            "task.cancel",
                            None,
                            json!({"task_id": intent_id, "epoch": lease.epoch, "reason": "client_cancel"}),
                        ),
                    );
                }
                let _ = self.queue.finish(&intent_id, now);
            }
            None => {}
        }
        if let Some(live) = self.intents.get_mut(&intent_id) {
            live.state = LiveState::Settling;
        }
        self.settle(
            intent_id,
            Terminal::Cancelled,
            None,
            None,
            Some((session_id, corr)),
        );
    }

    fn fetch(&mut self, session_id: String, corr: String, intent_id: String) {
        // Seeded defect `fetch-by-session`: only the session's own live intents are found.
        if defect::on(Defect::FetchBySession)
            && !self
                .intents
                .get(&intent_id)
                .is_some_and(|l| l.attached.contains(&session_id))
        {
            return self.session_send(
                &session_id,
                wire::error_event(Code::NotFound, "no such intent", Some(&corr), None),
            );
        }
        self.lookup(session_id, corr, intent_id, ReadPurpose::Fetch);
    }

    /// Answers from memory for a live intent of the session's wallet, else from the store.
    fn lookup(
        &mut self,
        session_id: String,
        corr: String,
        intent_id: String,
        purpose: ReadPurpose,
    ) {
        let Some(wallet) = self.sessions.get(&session_id).map(|s| s.wallet.clone()) else {
            return;
        };
        let any_wallet = purpose == ReadPurpose::Resume && defect::on(Defect::ResumeAnyWallet);
        let live = self
            .intents
            .get(&intent_id)
            .is_some_and(|l| (l.wallet == wallet || any_wallet) && l.state != LiveState::Settling);
        if live {
            return self.live_status(session_id, corr, purpose, &intent_id);
        }
        // Settled or settling intents are answered from the store, which holds the outcome.
        let store = self.store.clone();
        let back = self.self_tx.clone();
        tokio::task::spawn_blocking(move || {
            let row = read_intent(&store, &intent_id, &wallet).unwrap_or_else(|e| {
                warn!(error = %e, "intent read failed");
                None
            });
            let _ = back.send(BrokerMsg::Done(Box::new(Done::Read {
                session_id,
                corr,
                purpose,
                row,
            })));
        });
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            queue_depth: self.queue.depth(),
            running: self.queue.running(),
            workers: self
                .registry
                .snapshot(self.now_ms())
                .into_iter()
                .chain(self.departed.iter().cloned())
                .collect(),
            counters: self.counters.clone(),
            stopping: self.stopping,
        }
    }
}

/// An intent as stored in `realm_intents`.
#[derive(Debug, Clone)]
pub struct StoredIntent {
    /// Intent id.
    pub intent_id: String,
    /// Intent name.
    pub intent: String,
    /// State.
    pub state: String,
    /// Reserved amount (max_cost).
    pub max_cost: u64,
    /// Attempts made.
    pub attempts: u64,
    /// Output (succeeded).
    pub output: Option<Value>,
    /// Cost (succeeded).
    pub cost: Option<u64>,
    /// Code (failed, dead, cancelled).
    pub code: Option<String>,
    /// Failure message.
    pub message: Option<String>,
    /// Released amount (terminal).
    pub released: Option<u64>,
    /// Last change.
    pub updated_at: String,
    /// Hash of the submission (idempotency comparison).
    pub body_hash: String,
    /// The creating `intent.submit` id.
    pub submit_id: Option<String>,
    /// Whether its terminal event reached a session.
    pub delivered: bool,
}

impl StoredIntent {
    /// Whether the state is terminal.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "failed" | "dead" | "cancelled"
        )
    }

    /// The `intent.status` body.
    pub fn status_body(&self) -> Value {
        let mut body = json!({"intent_id": self.intent_id, "state": self.state, "intent": self.intent,
            "reserved": self.max_cost, "attempts": self.attempts, "updated_at": self.updated_at});
        if let Some(o) = body.as_object_mut() {
            if self.state == "succeeded" {
                o.insert(
                    "output".to_owned(),
                    self.output.clone().unwrap_or_else(|| json!({})),
                );
                o.insert("cost".to_owned(), json!(self.cost.unwrap_or(0)));
            }
            if matches!(self.state.as_str(), "failed" | "dead" | "cancelled") {
                let code = self.code.clone().unwrap_or_else(|| "INTERNAL".to_owned());
                o.insert("code".to_owned(), json!(code));
            }
        }
        body
    }

    /// The terminal event (type and body) of a terminal intent, rebuilt from the store.
    pub fn terminal_event(&self) -> Option<(&'static str, Value)> {
        let released = self.released.unwrap_or(0);
        match self.state.as_str() {
            "succeeded" => Some((
                "intent.result",
                json!({"intent_id": self.intent_id, "output": self.output.clone().unwrap_or_else(|| json!({})),
                       "cost": self.cost.unwrap_or(0), "released": released,
                       "attempts": self.attempts.max(1), "completed_at": self.updated_at}),
            )),
            "failed" | "dead" => Some((
                "intent.failed",
                json!({"intent_id": self.intent_id, "code": self.code.clone().unwrap_or_else(|| "INTERNAL".to_owned()),
                       "message": self.message.clone().unwrap_or_default(), "released": released,
                       "attempts": self.attempts}),
            )),
            "cancelled" => Some((
                "intent.cancelled",
                json!({"intent_id": self.intent_id, "released": released}),
            )),
            _ => None,
        }
    }
}

const SELECT_INTENT: &str =
    "SELECT intent_id, intent, state, max_cost, attempts, output, cost, code,
     message, released, updated_at, body_hash, submit_id, delivered FROM realm_intents";

fn stored_intent(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredIntent> {
    let output: Option<String> = r.get(5)?;
    Ok(StoredIntent {
        intent_id: r.get(0)?,
        intent: r.get(1)?,
        state: r.get(2)?,
        max_cost: u64_of(r.get(3)?),
        attempts: u64_of(r.get(4)?),
        output: output.and_then(|t| serde_json::from_str(&t).ok()),
        cost: r.get::<_, Option<i64>>(6)?.map(u64_of),
        code: r.get(7)?,
        message: r.get(8)?,
        released: r.get::<_, Option<i64>>(9)?.map(u64_of),
        updated_at: r.get(10)?,
        body_hash: r.get(11)?,
        submit_id: r.get(12)?,
        delivered: r.get::<_, i64>(13)? != 0,
    })
}

/// Reads an intent of `wallet`; `None` when the wallet has no such intent.
pub fn read_intent(
    store: &Store,
    intent_id: &str,
    wallet: &str,
) -> Result<Option<StoredIntent>, BrokerError> {
    store.read(|c| {
        c.query_row(
            &format!("{SELECT_INTENT} WHERE intent_id = ?1 AND wallet = ?2"),
            params![intent_id, wallet],
            stored_intent,
        )
        .optional()
        .map_err(BrokerError::from)
    })
}

/// Reads the intent bound to a wallet's idempotency key.
pub fn read_binding(
    store: &Store,
    wallet: &str,
    key: &str,
) -> Result<Option<StoredIntent>, BrokerError> {
    store.read(|c| read_binding_on(c, wallet, key))
}

fn read_binding_on(
    c: &rusqlite::Connection,
    wallet: &str,
    key: &str,
) -> Result<Option<StoredIntent>, BrokerError> {
    c.prepare_cached(&format!(
        "{SELECT_INTENT} WHERE wallet = ?1 AND idempotency_key = ?2"
    ))?
    .query_row(params![wallet, key], stored_intent)
    .optional()
    .map_err(BrokerError::from)
}

/// The body of a terminal event.
fn terminal_body(
    intent_id: &str,
    terminal: &Terminal,
    s: &Settlement,
    completed_at: &str,
) -> Value {
    match terminal {
        Terminal::Succeeded {
            output, attempts, ..
        } => json!({"intent_id": intent_id, "output": output,
            "cost": s.cost, "released": s.released, "attempts": (*attempts).max(1),
            "completed_at": completed_at}),
        Terminal::Failed {
            code,
            message,
            attempts,
        } => {
            let mut message = message.clone();
            wire::truncate(&mut message, 512);
            json!({"intent_id": intent_id, "code": code.as_str(), "message": message,
                   "released": s.released, "attempts": attempts})
        }
        Terminal::Cancelled => json!({"intent_id": intent_id, "released": s.released}),
    }
}

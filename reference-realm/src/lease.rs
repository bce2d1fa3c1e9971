//! The lease table: every dispatched task runs under a fenced lease.
//!
//! A [`Lease`] is `(task_id, attempt, epoch)` held by one worker until a deadline. The rules
//! (design notes, "Leases"):
//!
//! - [`LeaseTable::grant`] gives the next attempt (`attempt + 1`) and a fresh epoch, strictly
//!   greater than every epoch the realm ever issued. Epochs are never reused, also across
//!   restarts: the table starts from an epoch floor (the last epoch the realm persisted), and the
//!   caller persists [`LeaseTable::last_epoch`] before it sends the `task.assign` that carries it.
//! - [`LeaseTable::progress`] extends the deadline to `now + lease_ms`.
//! - [`LeaseTable::complete`], [`LeaseTable::fail`] and [`LeaseTable::progress`] succeed only for
//!   the current lease, held by the worker that reports. Otherwise they answer
//!   [`LeaseError::StaleEpoch`] (not the current lease, or one the realm revoked),
//!   [`LeaseError::LeaseExpired`] (the current lease, but it lapsed and was reclaimed),
//!   [`LeaseError::Duplicate`] (the current
//!   lease already reported its outcome) or [`LeaseError::NotFound`]. [`LeaseError::code`] gives
//!   the `task.receipt` code. This fence is what makes a late result after a re-dispatch harmless.
//! - [`LeaseTable::expire`] reclaims leases whose `deadline + grace_ms` has passed, and
//!   [`LeaseTable::worker_lost`] reclaims a disconnected worker's leases at once. Each reclaimed
//!   lease comes with its [`Disposition`]: re-dispatch, or dead letter once `max_attempts` attempts
//!   were used.
//! - A lease stays valid until it is reclaimed: a result that arrives after the deadline but
//!   before the caller's next [`LeaseTable::expire`] tick is still accepted, because nobody else
//!   holds the task and the work is done. The caller ticks `expire` often (every few hundred ms).
//!
//! Failures (explicit failures, lapses, lost workers) are recorded per attempt. A worker is blamed
//! for a failure only while no *other* worker failed the same task: a task that fails everywhere
//! is probably bad, not the workers ([`LeaseTable::worker_failures`]).
//!
//! Time is milliseconds since the realm started, passed in by the caller, as in every module of
//! the realm. The table is a pure state machine: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The spec's default lease length.
pub const DEFAULT_LEASE_MS: u64 = 10_000;

/// The spec's default grace after a deadline before the lease is reclaimed.
pub const DEFAULT_GRACE_MS: u64 = 2_000;

/// The spec's default number of attempts before an intent is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Grace and attempt bounds, shared by every lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long after its deadline a lease is still honoured before [`LeaseTable::expire`]
    /// reclaims it (absorbs network delay and clock skew).
    pub grace_ms: u64,
    /// Attempts before a task is dead-lettered (at least 1).
    pub max_attempts: u32,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            grace_ms: DEFAULT_GRACE_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// One lease: the right of one worker to run one attempt of a task until a deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The task.
    pub task_id: String,
    /// The holder.
    pub worker_id: String,
    /// 1 for the first dispatch, +1 for each re-dispatch.
    pub attempt: u32,
    /// The fencing token: unique and increasing across the realm's whole life.
    pub epoch: u64,
    /// When it was granted.
    pub granted_ms: u64,
    /// When it runs out unless progress extends it.
    pub deadline_ms: u64,
    /// What progress extends it by.
    pub lease_ms: u64,
}

/// What to do with a task whose attempt ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Attempts remain: queue it again (at the front) and grant a new lease.
    Redispatch,
    /// `max_attempts` attempts were used: fail the intent with `DEAD_LETTERED` and release its
    /// reservation.
    DeadLetter,
    /// The worker said the failure is not retryable: fail the intent with the worker's code and
    /// release its reservation.
    Fail,
}

/// A lease that ended without a result, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The lease as it was.
    pub lease: Lease,
    /// What the caller does with the task.
    pub disposition: Disposition,
}

/// How an attempt failed, as recorded for attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The worker reported `task.failure`.
    Reported,
    /// The lease lapsed (deadline plus grace passed).
    Lapsed,
    /// The worker disconnected or was declared lost while holding the lease.
    WorkerLost,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The worker that held the lease.
    pub worker_id: String,
    /// The attempt.
    pub attempt: u32,
    /// The lease's epoch.
    pub epoch: u64,
    /// How it failed.
    pub kind: FailureKind,
}

/// Errors of lease operations. The first four are the answers to a worker's report about a lease
/// that is not (or no longer) its current one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The reported `(attempt, epoch)` is not the task's current lease.
    #[error("task {task_id:?}: attempt {attempt} epoch {epoch} is not the current lease")]
    StaleEpoch {
        /// The task.
        task_id: String,
        /// The attempt reported.
        attempt: u32,
        /// The epoch reported.
        epoch: u64,
    },
    /// The current lease lapsed and was reclaimed (or revoked), and was not re-granted.
    #[error("task {0:?}: the lease lapsed and was reclaimed")]
    LeaseExpired(String),
    /// The current lease already reported its outcome.
    #[error("task {0:?}: this lease already reported its outcome")]
    Duplicate(String),
    /// The table holds no such task.
    #[error("task {0:?} is not known")]
    NotFound(String),
    /// The reporting worker does not hold the lease (it names another worker's lease).
    #[error("task {task_id:?}: worker {worker_id:?} does not hold the lease")]
    NotHolder {
        /// The task.
        task_id: String,
        /// The worker that reported.
        worker_id: String,
    },
    /// The task already has an active lease; reclaim it before granting another.
    #[error("task {0:?} already has an active lease")]
    AlreadyLeased(String),
    /// The task is over (completed, failed for good, dead-lettered or cancelled).
    #[error("task {0:?} is finished")]
    Finished(String),
    /// The task used all its attempts.
    #[error("task {task_id:?} used all {max_attempts} attempts")]
    AttemptsExhausted {
        /// The task.
        task_id: String,
        /// The configured maximum.
        max_attempts: u32,
    },
    /// `lease_ms` is 0.
    #[error("lease_ms must be at least 1")]
    InvalidLeaseMs,
    /// No epoch is left (2^64 − 1 were issued): never in practice, but refused rather than reused.
    #[error("no epoch is left to issue")]
    EpochsExhausted,
    /// The configuration cannot work.
    #[error("invalid lease configuration: {0}")]
    InvalidConfig(&'static str),
}

impl LeaseError {
    /// The MTOR/1 code: for `task.receipt` (`STALE_EPOCH`, `LEASE_EXPIRED`, `DUPLICATE`), or the
    /// nearest code for the others. A report from a worker that does not hold the lease is
    /// `STALE_EPOCH`: for that sender it is not the current lease.
    pub fn code(&self) -> &'static str {
        match self {
            Self::StaleEpoch { .. } | Self::NotHolder { .. } => "STALE_EPOCH",
            Self::LeaseExpired(_) => "LEASE_EXPIRED",
            Self::Duplicate(_) => "DUPLICATE",
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyLeased(_)
            | Self::Finished(_)
            | Self::AttemptsExhausted { .. }
            | Self::InvalidLeaseMs
            | Self::EpochsExhausted
            | Self::InvalidConfig(_) => "INTERNAL",
        }
    }
}

/// State of a task's latest lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No lease granted yet (an adopted task).
    Idle,
    /// Held and valid.
    Active,
    /// Reclaimed by `expire` or `worker_lost`.
    Reclaimed(Disposition),
    /// The holder reported a failure.
    Failed(Disposition),
    /// The holder reported a result.
    Completed,
    /// Revoked by `cancel`.
    Revoked,
}

#[derive(Debug, Clone)]
struct Task {
    attempts: u32,
    lease: Option<Lease>,
    state: State,
    failures: Vec<Failure>,
    /// Worker → failed attempts on this task, for attribution.
    failers: BTreeMap<String, u64>,
}

/// The lease table. See the [module documentation](self).
#[derive(Debug)]
pub struct LeaseTable {
    config: LeaseConfig,
    /// The last epoch issued (or the floor given at start).
    last_epoch: u64,
    tasks: HashMap<String, Task>,
    /// Active leases by (deadline, task): `expire` reads only what is due.
    deadlines: BTreeSet<(u64, String)>,
    /// Active leases by worker: `worker_lost` reads only that worker's.
    by_worker: HashMap<String, BTreeSet<String>>,
    /// Failures blamed on each worker (see [`LeaseTable::worker_failures`]).
    blamed: HashMap<String, u64>,
}

impl LeaseTable {
    /// An empty table whose first epoch is `epoch_floor + 1`. Pass the highest epoch the realm
    /// ever persisted (0 for a new realm) so that no epoch is reused after a restart.
    pub fn new(config: LeaseConfig, epoch_floor: u64) -> Result<Self, LeaseError> {
        if config.max_attempts == 0 {
            return Err(LeaseError::InvalidConfig("max_attempts must be at least 1"));
        }
        Ok(Self {
            config,
            last_epoch: epoch_floor,
            tasks: HashMap::new(),
            deadlines: BTreeSet::new(),
            by_worker: HashMap::new(),
            blamed: HashMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// The highest epoch issued so far (or the floor): persist it before sending a lease's
    /// `task.assign`, and pass it as the floor after a restart.
    pub fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    /// Registers a task that already used `attempts_used` attempts (recovery after a restart), so
    /// that its next grant continues the count. A task the table already knows is refused.
    pub fn adopt(&mut self, task_id: &str, attempts_used: u32) -> Result<(), LeaseError> {
        if self.tasks.contains_key(task_id) {
            return Err(LeaseError::AlreadyLeased(task_id.to_owned()));
        }
        self.tasks.insert(
            task_id.to_owned(),
            Task {
                attempts: attempts_used,
                lease: None,
                state: State::Idle,
                failures: Vec::new(),
                failers: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Grants the next attempt of a task to a worker, with a new epoch and the deadline
    /// `now_ms + lease_ms`. Allowed for a new task and after a lapse or retryable failure with
    /// attempts left.
    pub fn grant(
        &mut self,
        task_id: &str,
        worker_id: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Lease, LeaseError> {
        if lease_ms == 0 {
            return Err(LeaseError::InvalidLeaseMs);
        }
        let max_attempts = self.config.max_attempts;
        let attempts = match self.tasks.get(task_id) {
            None => 0,
            Some(task) => match task.state {
                State::Idle
                | State::Reclaimed(Disposition::Redispatch)
                | State::Failed(Disposition::Redispatch) => task.attempts,
                State::Active => return Err(LeaseError::AlreadyLeased(task_id.to_owned())),
                State::Reclaimed(_) | State::Failed(_) | State::Completed | State::Revoked => {
                    return Err(LeaseError::Finished(task_id.to_owned()))
                }
            },
        };
        if attempts >= max_attempts {
            return Err(LeaseError::AttemptsExhausted {
                task_id: task_id.to_owned(),
                max_attempts,
            });
        }
        let epoch = self
            .last_epoch
            .checked_add(1)
            .ok_or(LeaseError::EpochsExhausted)?;
        self.last_epoch = epoch;
        let lease = Lease {
            task_id: task_id.to_owned(),
            worker_id: worker_id.to_owned(),
            attempt: attempts + 1,
            epoch,
            granted_ms: now_ms,
            deadline_ms: now_ms.saturating_add(lease_ms),
            lease_ms,
        };
        let task = self
            .tasks
            .entry(task_id.to_owned())
            .or_insert_with(|| Task {
                attempts: 0,
                lease: None,
                state: State::Idle,
                failures: Vec::new(),
                failers: BTreeMap::new(),
            });
        task.attempts = lease.attempt;
        task.lease = Some(lease.clone());
        task.state = State::Active;
        self.deadlines
            .insert((lease.deadline_ms, task_id.to_owned()));
        self.by_worker
            .entry(worker_id.to_owned())
            .or_default()
            .insert(task_id.to_owned());
        Ok(lease)
    }

    /// Checks that `(task, attempt, epoch)` from `worker` is the task's current, active lease.
    fn check(
        &self,
        task_id: &str,
        attempt: u32,
        epoch: u64,
        worker_id: &str,
    ) -> Result<&Lease, LeaseError> {
        let task = self
            .tasks
            .get(task_id)
            .ok_or_else(|| LeaseError::NotFound(task_id.to_owned()))?;
        let stale = || LeaseError::StaleEpoch {
            task_id: task_id.to_owned(),
            attempt,
            epoch,
        };
        let lease = task.lease.as_ref().ok_or_else(stale)?;
        if lease.epoch != epoch || lease.attempt != attempt {
            return Err(stale());
        }
        if lease.worker_id != worker_id {
            return Err(LeaseError::NotHolder {
                task_id: task_id.to_owned(),
                worker_id: worker_id.to_owned(),
            });
        }
        match task.state {
            State::Active => Ok(lease),
            State::Reclaimed(_) => Err(LeaseError::LeaseExpired(task_id.to_owned())),
            // Section 9.3: a lease the realm ended (client cancel, shutdown) did not lapse; a
            // report on it names a lease that is not current.
            State::Revoked => Err(stale()),
            State::Completed | State::Failed(_) => Err(LeaseError::Duplicate(task_id.to_owned())),
            // An idle task has no lease, so the epoch check above already refused.
            State::Idle => Err(stale()),
        }
    }

    /// Extends the current lease to `now_ms + lease_ms` (never shortens it) and returns the new
    /// deadline.
    pub fn progress(
        &mut self,
        task_id: &str,
        attempt: u32,
        epoch: u64,
        worker_id: &str,
        now_ms: u64,
    ) -> Result<u64, LeaseError> {
        let old = self.check(task_id, attempt, epoch, worker_id)?.deadline_ms;
        let task = self
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| LeaseError::NotFound(task_id.to_owned()))?;
        let lease = task
            .lease
            .as_mut()
            .ok_or_else(|| LeaseError::NotFound(task_id.to_owned()))?;
        let new = if crate::defect::on(crate::defect::Defect::IgnoreProgress) {
            old
        } else {
            old.max(now_ms.saturating_add(lease.lease_ms))
        };
        lease.deadline_ms = new;
        self.deadlines.remove(&(old, task_id.to_owned()));
        self.deadlines.insert((new, task_id.to_owned()));
        Ok(new)
    }

    /// Accepts the current lease's result. The task is then finished; a repeat answers
    /// [`LeaseError::Duplicate`] until the task is [forgotten](LeaseTable::forget).
    pub fn complete(
        &mut self,
        task_id: &str,
        attempt: u32,
        epoch: u64,
        worker_id: &str,
    ) -> Result<Lease, LeaseError> {
        let lease = self.check(task_id, attempt, epoch, worker_id)?.clone();
        self.deactivate(&lease);
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.state = State::Completed;
        }
        Ok(lease)
    }

    /// Accepts the current lease's failure, records it against the worker, and says what to do:
    /// re-dispatch when `retryable` and attempts remain, dead letter when retryable but attempts
    /// are used up, fail the intent when not retryable.
    pub fn fail(
        &mut self,
        task_id: &str,
        attempt: u32,
        epoch: u64,
        worker_id: &str,
        retryable: bool,
    ) -> Result<Ended, LeaseError> {
        let lease = self.check(task_id, attempt, epoch, worker_id)?.clone();
        let retryable = retryable || crate::defect::on(crate::defect::Defect::RetryNonRetryable);
        let disposition = if !retryable {
            Disposition::Fail
        } else {
            self.after_failure(lease.attempt)
        };
        self.deactivate(&lease);
        self.record_failure(&lease, FailureKind::Reported);
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.state = State::Failed(disposition);
        }
        Ok(Ended { lease, disposition })
    }

    fn after_failure(&self, attempt: u32) -> Disposition {
        if attempt >= self.config.max_attempts {
            Disposition::DeadLetter
        } else {
            Disposition::Redispatch
        }
    }

    /// Reclaims every active lease whose `deadline + grace_ms` is before `now_ms`, oldest deadline
    /// first, each with its disposition (re-dispatch, or dead letter after `max_attempts`).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Ended> {
        if crate::defect::on(crate::defect::Defect::NeverLapse) {
            return Vec::new();
        }
        let grace = self.config.grace_ms;
        let due: Vec<String> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| deadline.saturating_add(grace) < now_ms)
            .map(|(_, task)| task.clone())
            .collect();
        due.iter()
            .filter_map(|task| self.reclaim(task, FailureKind::Lapsed))
            .collect()
    }

    /// Reclaims every active lease a worker holds (it disconnected or was declared lost), by
    /// task id, each with its disposition.
    pub fn worker_lost(&mut self, worker_id: &str) -> Vec<Ended> {
        let held: Vec<String> = self
            .by_worker
            .get(worker_id)
            .map(|tasks| tasks.iter().cloned().collect())
            .unwrap_or_default();
        held.iter()
            .filter_map(|task| self.reclaim(task, FailureKind::WorkerLost))
            .collect()
    }

    fn reclaim(&mut self, task_id: &str, kind: FailureKind) -> Option<Ended> {
        let task = self.tasks.get(task_id)?;
        if task.state != State::Active {
            return None;
        }
        let lease = task.lease.clone()?;
        let disposition = self.after_failure(lease.attempt);
        self.deactivate(&lease);
        self.record_failure(&lease, kind);
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.state = State::Reclaimed(disposition);
        }
        Some(Ended { lease, disposition })
    }

    /// Ends a task on the realm's side (client cancel, shutdown). Returns the active lease it
    /// revoked, if any, so the caller can send `task.cancel` with its epoch; later reports on it
    /// answer [`LeaseError::StaleEpoch`] (an ended lease, section 9.3) and it is never granted
    /// again.
    pub fn cancel(&mut self, task_id: &str) -> Result<Option<Lease>, LeaseError> {
        let task = self
            .tasks
            .get(task_id)
            .ok_or_else(|| LeaseError::NotFound(task_id.to_owned()))?;
        let revoked = match task.state {
            State::Active => task.lease.clone(),
            State::Completed
            | State::Failed(Disposition::DeadLetter | Disposition::Fail)
            | State::Reclaimed(Disposition::DeadLetter | Disposition::Fail)
            | State::Revoked => return Err(LeaseError::Finished(task_id.to_owned())),
            State::Idle
            | State::Failed(Disposition::Redispatch)
            | State::Reclaimed(Disposition::Redispatch) => None,
        };
        if let Some(lease) = &revoked {
            self.deactivate(lease);
        }
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.state = State::Revoked;
        }
        Ok(revoked)
    }

    /// Drops a task that is not active (after its outcome was settled and its duplicate window
    /// passed) and returns its failures. Blame already attributed stays with the workers.
    pub fn forget(&mut self, task_id: &str) -> Result<Vec<Failure>, LeaseError> {
        match self.tasks.get(task_id).map(|t| t.state) {
            None => Err(LeaseError::NotFound(task_id.to_owned())),
            Some(State::Active) => Err(LeaseError::AlreadyLeased(task_id.to_owned())),
            Some(_) => Ok(self
                .tasks
                .remove(task_id)
                .map(|t| t.failures)
                .unwrap_or_default()),
        }
    }

    fn deactivate(&mut self, lease: &Lease) {
        self.deadlines
            .remove(&(lease.deadline_ms, lease.task_id.clone()));
        if let Some(tasks) = self.by_worker.get_mut(&lease.worker_id) {
            tasks.remove(&lease.task_id);
            if tasks.is_empty() {
                self.by_worker.remove(&lease.worker_id);
            }
        }
    }

    /// Records a failed attempt and moves blame: a failure counts against its worker only while
    /// that worker is the only one that failed the task; once a second worker fails it, the first
    /// worker's failures on it are taken back and none of the task's further failures count.
    fn record_failure(&mut self, lease: &Lease, kind: FailureKind) {
        let Some(task) = self.tasks.get_mut(&lease.task_id) else {
            return;
        };
        task.failures.push(Failure {
            worker_id: lease.worker_id.clone(),
            attempt: lease.attempt,
            epoch: lease.epoch,
            kind,
        });
        let others: Vec<(String, u64)> = task
            .failers
            .iter()
            .filter(|(w, _)| **w != lease.worker_id)
            .map(|(w, n)| (w.clone(), *n))
            .collect();
        let was_single_blamed = task.failers.len() == 1 && !others.is_empty();
        *task.failers.entry(lease.worker_id.clone()).or_insert(0) += 1;
        if others.is_empty() {
            // Only this worker failed the task so far: blame it.
            *self.blamed.entry(lease.worker_id.clone()).or_insert(0) += 1;
        } else if was_single_blamed {
            // A second worker failed it too: the task is suspect, so un-blame the first.
            for (worker, n) in others {
                if let Some(count) = self.blamed.get_mut(&worker) {
                    *count = count.saturating_sub(n);
                    if *count == 0 {
                        self.blamed.remove(&worker);
                    }
                }
            }
        }
    }

    /// Failures blamed on a worker: its failed attempts on tasks that no other worker failed.
    pub fn worker_failures(&self, worker_id: &str) -> u64 {
        self.blamed.get(worker_id).copied().unwrap_or(0)
    }

    /// Every worker with blamed failures, by worker id.
    pub fn failure_counts(&self) -> BTreeMap<String, u64> {
        self.blamed.iter().map(|(w, n)| (w.clone(), *n)).collect()
    }

    /// A task's failed attempts, oldest first.
    pub fn failures(&self, task_id: &str) -> Option<&[Failure]> {
        self.tasks.get(task_id).map(|t| t.failures.as_slice())
    }

    /// The task's latest lease (active or not).
    pub fn lease(&self, task_id: &str) -> Option<&Lease> {
        self.tasks.get(task_id).and_then(|t| t.lease.as_ref())
    }

    /// Whether the task has an active lease.
    pub fn is_active(&self, task_id: &str) -> bool {
        self.tasks
            .get(task_id)
            .is_some_and(|t| t.state == State::Active)
    }

    /// Active leases, all workers together.
    pub fn active_count(&self) -> usize {
        self.deadlines.len()
    }

    /// The tasks a worker holds active leases on, by task id.
    pub fn held_by(&self, worker_id: &str) -> Vec<String> {
        self.by_worker
            .get(worker_id)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The earliest time at which [`LeaseTable::expire`] will reclaim something, so the caller can
    /// sleep until then rather than poll.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.deadlines.first().map(|(deadline, _)| {
            deadline
                .saturating_add(self.config.grace_ms)
                .saturating_add(1)
        })
    }
}

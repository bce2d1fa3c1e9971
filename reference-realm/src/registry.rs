//! The worker registry: enrolled workers, their heartbeats, health and load.
//!
//! Health follows the spec's thresholds, computed from the time since the last heartbeat with
//! `interval = heartbeat_interval_ms`:
//!
//! | since last heartbeat | state |
//! |---|---|
//! | up to and including 2 × interval | `healthy` |
//! | more than 2 × interval, up to and including 3 × interval | `suspect` (2 heartbeats missed) |
//! | more than 3 × interval | `unhealthy` (3 missed) |
//!
//! A heartbeat is "missed" once its due time has *passed*, so a worker exactly on its second due
//! time is still healthy. The next heartbeat makes the worker healthy again. Health is a pure
//! function of `now`, so the health endpoint reflects a change as soon as it is asked.
//!
//! A draining worker (it said so in its heartbeat, or the realm asked it to drain) takes no new
//! tasks. [`Registry::servable`] (the admission `INFEASIBLE` check) counts workers that are neither
//! draining nor unhealthy; [`Registry::pick`] (dispatch) wants a healthy, non-draining worker with
//! a free slot, least loaded first.
//!
//! Time is milliseconds since the realm started, passed in by the caller. No I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

/// The default heartbeat interval: with it a dead worker is `suspect` after 1 s and `unhealthy`
/// after 1.5 s, inside the spec's 2 s window for health to reflect a change.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 500;

/// The smallest heartbeat interval the wire allows (`worker.enrolled`).
pub const MIN_HEARTBEAT_INTERVAL_MS: u64 = 100;

/// The largest concurrency a worker may declare (`worker.register`).
pub const MAX_CONCURRENCY: u32 = 1024;

/// A worker's health, as the health endpoint reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Heartbeats arrive on time.
    Healthy,
    /// Two heartbeat intervals missed.
    Suspect,
    /// Three heartbeat intervals missed.
    Unhealthy,
    /// Takes no new tasks (it is finishing what it runs). An unhealthy worker reports
    /// `unhealthy` even when draining, since that is the more urgent fact.
    Draining,
}

/// The drain state a worker reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// `state: "ready"`.
    Ready,
    /// `state: "draining"`.
    Draining,
}

/// What a worker declares when it enrols (after its token and key were verified).
#[derive(Debug, Clone, PartialEq)]
pub struct Enrolment {
    /// The realm-assigned worker id.
    pub worker_id: String,
    /// The worker's ed25519 public key (hex).
    pub key: String,
    /// Intent names it serves (at least one).
    pub intents: Vec<String>,
    /// Tasks it runs at once, 1..=1024.
    pub concurrency: u32,
    /// Its declared capabilities (`{"gpu": {...}}`), or `Value::Null`.
    pub capabilities: Value,
}

/// An enrolled worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// The worker id.
    pub worker_id: String,
    /// Its public key.
    pub key: String,
    /// Intent names it serves.
    pub intents: BTreeSet<String>,
    /// Tasks it runs at once.
    pub concurrency: u32,
    /// Its declared capabilities.
    pub capabilities: Value,
    /// Tasks the realm dispatched to it and has not seen end.
    pub running: u32,
    /// When it enrolled.
    pub enrolled_ms: u64,
    /// When it last sent a heartbeat (enrolment counts as one).
    pub last_heartbeat_ms: u64,
    /// It said `draining` in its last heartbeat.
    pub self_draining: bool,
    /// The realm asked it to drain.
    pub drain_requested: bool,
}

impl Worker {
    /// Whether it takes no new tasks.
    pub fn draining(&self) -> bool {
        self.self_draining || self.drain_requested
    }

    /// Its heartbeat health alone (ignoring drain), at `now_ms`.
    pub fn liveness(&self, now_ms: u64, interval_ms: u64) -> Health {
        if crate::defect::on(crate::defect::Defect::HealthIgnoresHeartbeats) {
            return Health::Healthy;
        }
        let since = now_ms.saturating_sub(self.last_heartbeat_ms);
        if since > interval_ms.saturating_mul(3) {
            Health::Unhealthy
        } else if since > interval_ms.saturating_mul(2) {
            Health::Suspect
        } else {
            Health::Healthy
        }
    }

    /// Its reported state at `now_ms`: unhealthy first, then draining, then suspect or healthy.
    pub fn health(&self, now_ms: u64, interval_ms: u64) -> Health {
        match self.liveness(now_ms, interval_ms) {
            Health::Unhealthy => Health::Unhealthy,
            _ if self.draining() => Health::Draining,
            live => live,
        }
    }

    /// Whether it has a free slot.
    pub fn has_capacity(&self) -> bool {
        self.running < self.concurrency
    }
}

/// One worker in the health endpoint's `workers` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerHealth {
    /// The worker id.
    pub worker_id: String,
    /// Its state.
    pub state: Health,
    /// The intents it serves, sorted.
    pub intents: Vec<String>,
    /// Tasks running on it.
    pub running: u32,
    /// Its concurrency.
    pub capacity: u32,
    /// Milliseconds since its last heartbeat.
    pub last_heartbeat_ms: u64,
    /// Its declared capabilities (e.g. `{"gpu": {...}}`); left out of the JSON when null.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub capabilities: Value,
}

/// Errors of registry operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A worker with this id is already enrolled.
    #[error("worker {0:?} is already enrolled")]
    AlreadyEnrolled(String),
    /// No worker has this id.
    #[error("worker {0:?} is not enrolled")]
    NotFound(String),
    /// The enrolment lists no intent.
    #[error("a worker must serve at least one intent")]
    NoIntents,
    /// The concurrency is outside 1..=1024.
    #[error("concurrency {0} is outside 1..={MAX_CONCURRENCY}")]
    InvalidConcurrency(u32),
    /// The worker runs as many tasks as its concurrency allows.
    #[error("worker {0:?} has no free slot")]
    AtCapacity(String),
    /// The worker is draining and takes no new task.
    #[error("worker {0:?} is draining")]
    Draining(String),
    /// The worker runs no task, so none can end.
    #[error("worker {0:?} runs no task")]
    NotRunning(String),
    /// The heartbeat interval is below the wire's minimum.
    #[error("heartbeat interval {0} ms is below {MIN_HEARTBEAT_INTERVAL_MS} ms")]
    InvalidInterval(u64),
}

impl RegistryError {
    /// The MTOR/1 code closest to this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoIntents | Self::InvalidConcurrency(_) => "INVALID_EVENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyEnrolled(_)
            | Self::AtCapacity(_)
            | Self::Draining(_)
            | Self::NotRunning(_)
            | Self::InvalidInterval(_) => "INTERNAL",
        }
    }
}

/// The registry. See the [module documentation](self).
#[derive(Debug)]
pub struct Registry {
    interval_ms: u64,
    /// By worker id: a BTreeMap so that iteration, and with it every tie-break, is deterministic.
    workers: BTreeMap<String, Worker>,
}

impl Registry {
    /// An empty registry whose workers heartbeat every `heartbeat_interval_ms` (at least 100).
    pub fn new(heartbeat_interval_ms: u64) -> Result<Self, RegistryError> {
        if heartbeat_interval_ms < MIN_HEARTBEAT_INTERVAL_MS {
            return Err(RegistryError::InvalidInterval(heartbeat_interval_ms));
        }
        Ok(Self {
            interval_ms: heartbeat_interval_ms,
            workers: BTreeMap::new(),
        })
    }

    /// The heartbeat interval (sent in `worker.enrolled`).
    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Enrolls a worker; enrolment counts as its first heartbeat.
    pub fn enroll(&mut self, enrolment: Enrolment, now_ms: u64) -> Result<(), RegistryError> {
        if enrolment.intents.is_empty() {
            return Err(RegistryError::NoIntents);
        }
        if enrolment.concurrency == 0 || enrolment.concurrency > MAX_CONCURRENCY {
            return Err(RegistryError::InvalidConcurrency(enrolment.concurrency));
        }
        if self.workers.contains_key(&enrolment.worker_id) {
            return Err(RegistryError::AlreadyEnrolled(enrolment.worker_id));
        }
        self.workers.insert(
            enrolment.worker_id.clone(),
            Worker {
                worker_id: enrolment.worker_id,
                key: enrolment.key,
                intents: enrolment.intents.into_iter().collect(),
                concurrency: enrolment.concurrency,
                capabilities: enrolment.capabilities,
                running: 0,
                enrolled_ms: now_ms,
                last_heartbeat_ms: now_ms,
                self_draining: false,
                drain_requested: false,
            },
        );
        Ok(())
    }

    /// Removes a worker (it left or was disconnected) and returns it. The caller reclaims its
    /// leases (`LeaseTable::worker_lost`).
    pub fn remove(&mut self, worker_id: &str) -> Option<Worker> {
        self.workers.remove(worker_id)
    }

    /// Records a heartbeat: the worker is healthy again, and draining if it says so. Returns its
    /// state after the heartbeat.
    pub fn heartbeat(
        &mut self,
        worker_id: &str,
        reported: Reported,
        now_ms: u64,
    ) -> Result<Health, RegistryError> {
        let interval = self.interval_ms;
        let worker = self.get_mut(worker_id)?;
        // A heartbeat older than the last one (reordered delivery) must not make a worker look
        // less alive than it is.
        worker.last_heartbeat_ms = worker.last_heartbeat_ms.max(now_ms);
        worker.self_draining = reported == Reported::Draining;
        Ok(worker.health(now_ms, interval))
    }

    /// Asks a worker to drain (or lifts the request). A draining worker keeps its running tasks
    /// and takes no new ones.
    pub fn set_draining(&mut self, worker_id: &str, draining: bool) -> Result<(), RegistryError> {
        self.get_mut(worker_id)?.drain_requested = draining;
        Ok(())
    }

    /// Counts a task dispatched to the worker. Refused when it is draining or full.
    pub fn start_task(&mut self, worker_id: &str) -> Result<u32, RegistryError> {
        let worker = self.get_mut(worker_id)?;
        if worker.draining() {
            return Err(RegistryError::Draining(worker_id.to_owned()));
        }
        if !worker.has_capacity() {
            return Err(RegistryError::AtCapacity(worker_id.to_owned()));
        }
        worker.running += 1;
        Ok(worker.running)
    }

    /// Counts a task of the worker as ended (result, failure, lapse or cancel).
    pub fn end_task(&mut self, worker_id: &str) -> Result<u32, RegistryError> {
        let worker = self.get_mut(worker_id)?;
        worker.running = worker
            .running
            .checked_sub(1)
            .ok_or_else(|| RegistryError::NotRunning(worker_id.to_owned()))?;
        Ok(worker.running)
    }

    fn get_mut(&mut self, worker_id: &str) -> Result<&mut Worker, RegistryError> {
        self.workers
            .get_mut(worker_id)
            .ok_or_else(|| RegistryError::NotFound(worker_id.to_owned()))
    }

    /// An enrolled worker.
    pub fn get(&self, worker_id: &str) -> Option<&Worker> {
        self.workers.get(worker_id)
    }

    /// The worker enrolled with this key, if any.
    pub fn by_key(&self, key: &str) -> Option<&Worker> {
        self.workers.values().find(|w| w.key == key)
    }

    /// Enrolled workers, by worker id.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// Enrolled workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether no worker is enrolled.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// A worker's state at `now_ms`.
    pub fn health(&self, worker_id: &str, now_ms: u64) -> Option<Health> {
        self.workers
            .get(worker_id)
            .map(|w| w.health(now_ms, self.interval_ms))
    }

    /// Whether some worker that is neither draining nor unhealthy serves `intent`: admission
    /// answers `INFEASIBLE` when not. A suspect worker still counts, since it may only be late.
    pub fn servable(&self, intent: &str, now_ms: u64) -> bool {
        self.servable_by(intent, None, now_ms)
    }

    /// [`Registry::servable`], counting only workers enrolled with `key` when one is given (a
    /// pinned `cert.probe`, PRB-6).
    pub fn servable_by(&self, intent: &str, key: Option<&str>, now_ms: u64) -> bool {
        self.workers.values().any(|w| {
            w.intents.contains(intent)
                && key.is_none_or(|k| w.key == k)
                && !w.draining()
                && w.liveness(now_ms, self.interval_ms) != Health::Unhealthy
        })
    }

    /// Whether some worker that is neither draining nor unhealthy serves `intent` in `lane`
    /// ([`crate::intents::lane`]): the admission check for pinned probes (PRB-6) and for
    /// analyses that ask for a GPU (SIG-10), which only some workers of the intent take.
    pub fn servable_lane(&self, intent: &str, lane: &str, now_ms: u64) -> bool {
        self.workers.values().any(|w| {
            w.intents.contains(intent)
                && !w.draining()
                && w.liveness(now_ms, self.interval_ms) != Health::Unhealthy
                && crate::intents::worker_lanes(&w.intents, &w.key, &w.capabilities)
                    .iter()
                    .any(|l| l == lane)
        })
    }

    /// The worker to dispatch `intent` to: healthy (not suspect), not draining, with a free slot;
    /// the least loaded by `running / concurrency`, then the fewest running, then the smallest
    /// worker id.
    pub fn pick(&self, intent: &str, now_ms: u64) -> Option<&Worker> {
        self.workers
            .values()
            .filter(|w| {
                w.intents.contains(intent)
                    && w.has_capacity()
                    && w.health(now_ms, self.interval_ms) == Health::Healthy
            })
            // Iteration is by worker id, and `min_by` keeps the first of equals: the id breaks ties.
            .min_by(|a, b| {
                // Compare running/concurrency as fractions without floats: a.r * b.c vs b.r * a.c.
                let load_a = u64::from(a.running) * u64::from(b.concurrency);
                let load_b = u64::from(b.running) * u64::from(a.concurrency);
                load_a.cmp(&load_b).then(a.running.cmp(&b.running))
            })
    }

    /// Every worker's health at `now_ms`, by worker id, for the health endpoint.
    pub fn snapshot(&self, now_ms: u64) -> Vec<WorkerHealth> {
        self.workers
            .values()
            .map(|w| WorkerHealth {
                worker_id: w.worker_id.clone(),
                state: w.health(now_ms, self.interval_ms),
                intents: w.intents.iter().cloned().collect(),
                running: w.running,
                capacity: w.concurrency,
                last_heartbeat_ms: now_ms.saturating_sub(w.last_heartbeat_ms),
                capabilities: w.capabilities.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: u64 = 1_000;

    fn enrolment(id: &str, intents: &[&str], concurrency: u32) -> Enrolment {
        Enrolment {
            worker_id: id.to_owned(),
            key: format!("{id}-key"),
            intents: intents.iter().map(|s| (*s).to_owned()).collect(),
            concurrency,
            capabilities: serde_json::json!({"gpu": {"name": "H100"}}),
        }
    }

    fn registry() -> Registry {
        Registry::new(INTERVAL).expect("valid interval")
    }

    #[test]
    fn health_changes_at_the_exact_thresholds() {
        let mut r = registry();
        r.enroll(enrolment("w", &["probe"], 1), 0).unwrap();
        let at = |r: &Registry, t| r.health("w", t).unwrap();
        assert_eq!(at(&r, 2 * INTERVAL), Health::Healthy);
        assert_eq!(at(&r, 2 * INTERVAL + 1), Health::Suspect);
        assert_eq!(at(&r, 3 * INTERVAL), Health::Suspect);
        assert_eq!(at(&r, 3 * INTERVAL + 1), Health::Unhealthy);
        // The next heartbeat makes it healthy again, and the clock restarts from it.
        assert_eq!(
            r.heartbeat("w", Reported::Ready, 5_000),
            Ok(Health::Healthy)
        );
        assert_eq!(at(&r, 5_000 + 2 * INTERVAL), Health::Healthy);
        assert_eq!(at(&r, 5_000 + 2 * INTERVAL + 1), Health::Suspect);
        // A heartbeat delivered late (older than the last) does not age the worker.
        r.heartbeat("w", Reported::Ready, 4_000).unwrap();
        assert_eq!(at(&r, 5_000 + 2 * INTERVAL), Health::Healthy);
        assert_eq!(r.health("nobody", 0), None);
    }

    #[test]
    fn draining_workers_take_no_new_tasks() {
        let mut r = registry();
        r.enroll(enrolment("w", &["probe"], 2), 0).unwrap();
        assert_eq!(
            r.heartbeat("w", Reported::Draining, 10),
            Ok(Health::Draining)
        );
        assert!(!r.servable("probe", 10));
        assert!(r.pick("probe", 10).is_none());
        assert_eq!(r.start_task("w"), Err(RegistryError::Draining("w".into())));
        r.heartbeat("w", Reported::Ready, 20).unwrap();
        assert!(r.servable("probe", 20));
        // A drain the realm asked for outlasts the worker's own "ready".
        r.set_draining("w", true).unwrap();
        r.heartbeat("w", Reported::Ready, 30).unwrap();
        assert_eq!(r.health("w", 30), Some(Health::Draining));
        // Unhealthy is reported over draining.
        assert_eq!(
            r.health("w", 30 + 3 * INTERVAL + 1),
            Some(Health::Unhealthy)
        );
        r.set_draining("w", false).unwrap();
        assert_eq!(r.health("w", 30), Some(Health::Healthy));
        assert_eq!(
            r.set_draining("x", true),
            Err(RegistryError::NotFound("x".into()))
        );
    }

    #[test]
    fn servable_counts_suspect_workers_but_not_unhealthy_ones() {
        let mut r = registry();
        assert!(!r.servable("probe", 0));
        r.enroll(enrolment("w", &["probe", "fft"], 1), 0).unwrap();
        assert!(r.servable("fft", 0));
        assert!(!r.servable("chat", 0));
        let suspect = 2 * INTERVAL + 1;
        assert!(r.servable("probe", suspect));
        assert!(r.pick("probe", suspect).is_none(), "dispatch wants healthy");
        assert!(!r.servable("probe", 3 * INTERVAL + 1));
    }

    #[test]
    fn a_pin_counts_only_the_workers_of_its_key() {
        let mut r = registry();
        r.enroll(enrolment("w", &["probe"], 1), 0).unwrap();
        assert!(r.servable_by("probe", Some("w-key"), 0));
        assert!(!r.servable_by("probe", Some("other-key"), 0));
        assert!(r.servable_by("probe", None, 0));
        assert!(!r.servable_by("probe", Some("w-key"), 3 * INTERVAL + 1));
    }

    #[test]
    fn pick_prefers_the_least_loaded_then_the_smallest_id() {
        let mut r = registry();
        r.enroll(enrolment("b", &["probe"], 4), 0).unwrap();
        r.enroll(enrolment("a", &["probe"], 4), 0).unwrap();
        r.enroll(enrolment("c", &["probe"], 1), 0).unwrap();
        r.enroll(enrolment("d", &["fft"], 8), 0).unwrap();
        let pick = |r: &Registry| r.pick("probe", 0).map(|w| w.worker_id.clone());
        // All idle: the tie goes to the smallest id.
        assert_eq!(pick(&r).as_deref(), Some("a"));
        assert_eq!(r.start_task("a"), Ok(1));
        assert_eq!(pick(&r).as_deref(), Some("b"));
        r.start_task("b").unwrap();
        // a and b at 1/4, c at 0/1: c.
        assert_eq!(pick(&r).as_deref(), Some("c"));
        r.start_task("c").unwrap();
        // c is full (1/1); a and b tie at 1/4.
        assert_eq!(pick(&r).as_deref(), Some("a"));
        assert_eq!(
            r.start_task("c"),
            Err(RegistryError::AtCapacity("c".into()))
        );
        r.start_task("a").unwrap();
        assert_eq!(pick(&r).as_deref(), Some("b"));
        assert_eq!(r.end_task("c"), Ok(0));
        assert_eq!(r.end_task("c"), Err(RegistryError::NotRunning("c".into())));
        assert_eq!(pick(&r).as_deref(), Some("c"));
        assert!(r.pick("chat", 0).is_none());
        for _ in 0..3 {
            r.start_task("a").ok();
            r.start_task("b").ok();
        }
        r.start_task("c").unwrap();
        assert!(r.pick("probe", 0).is_none(), "everyone is full");
    }

    #[test]
    fn enrolment_is_validated() {
        let mut r = registry();
        assert_eq!(
            r.enroll(enrolment("w", &[], 1), 0),
            Err(RegistryError::NoIntents)
        );
        assert_eq!(
            r.enroll(enrolment("w", &["probe"], 0), 0),
            Err(RegistryError::InvalidConcurrency(0))
        );
        assert_eq!(
            r.enroll(enrolment("w", &["probe"], 1025), 0),
            Err(RegistryError::InvalidConcurrency(1025))
        );
        r.enroll(enrolment("w", &["probe"], 1), 0).unwrap();
        assert_eq!(
            r.enroll(enrolment("w", &["fft"], 1), 0),
            Err(RegistryError::AlreadyEnrolled("w".into()))
        );
        assert_eq!(r.by_key("w-key").map(|w| w.worker_id.as_str()), Some("w"));
        assert_eq!(r.len(), 1);
        assert!(r.remove("w").is_some());
        assert!(r.is_empty());
        assert_eq!(
            r.heartbeat("w", Reported::Ready, 0),
            Err(RegistryError::NotFound("w".into()))
        );
        assert!(matches!(
            Registry::new(99),
            Err(RegistryError::InvalidInterval(99))
        ));
    }

    #[test]
    fn snapshot_matches_the_health_schema() {
        let mut r = registry();
        r.enroll(enrolment("w2", &["probe", "fft"], 3), 0).unwrap();
        r.enroll(enrolment("w1", &["probe"], 1), 100).unwrap();
        r.start_task("w2").unwrap();
        let snap = r.snapshot(2_100);
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"worker_id": "w1", "state": "healthy", "intents": ["probe"],
                 "running": 0, "capacity": 1, "last_heartbeat_ms": 2_000,
                 "capabilities": {"gpu": {"name": "H100"}}},
                {"worker_id": "w2", "state": "suspect", "intents": ["fft", "probe"],
                 "running": 1, "capacity": 3, "last_heartbeat_ms": 2_100,
                 "capabilities": {"gpu": {"name": "H100"}}},
            ])
        );
    }
}

//! The `dispatch` suite: an open-loop load generator (wrk2's model) and its case kind,
//! `dispatch-load`.
//!
//! **The generator.** Each funded wallet gets one or more client sessions; every connection sends
//! `intent.submit` (`cert.probe`) on a fixed schedule, whatever the realm answers (open loop: a slow
//! realm cannot slow the arrivals down). Latency is measured from the *intended* send time to the
//! terminal event (corrected for coordinated omission) and from the actual send time (uncorrected),
//! both into HdrHistograms, so memory stays constant whatever the rate or the length. A send made
//! more than [`LATE_US`] after its slot is *late*; one that is more than `max_lag_ms` behind is
//! *dropped* (not sent, counted) rather than fired in a burst that would trip the realm's frame
//! limiter; a send late because the previous one blocked (the realm stopped reading) is counted
//! apart as *held up*, the realm's delay. The generator's CPU time (`/proc/self/stat`) over each
//! phase gives its CPU per event, and it calls itself *saturated* when it was busy on most of its
//! cores, kept fewer than 95 % of its sends on time, or dropped any. Probes are pinned to a worker
//! the harness enrols ([`LoadWorker`]) unless the plan says `workers = "realm"`.
//!
//! **The journal exception.** Every other case journals every frame; at thousands of intents per
//! second that would make the journal the bottleneck. A load phase therefore journals (1) the first
//! `sample_frames` frames of each connection, (2) *every* `intent.rejected` and `error`, and every
//! anomaly (a reply or terminal event the generator cannot place, a second terminal event, a
//! failure nobody asked for, a frame that is not an event), in full, and (3) one
//! `mark:load-phase:<json>` marker per phase with the per-connection counters, the corrected,
//! uncorrected, reply and send-lag histograms as percentile tables, and the generator's CPU. The
//! checkers judge from those markers, and re-count the journaled rejections per connection against
//! the counters: a marker that disagrees with the frames beside it makes the case UNKNOWN, never
//! PASS. A phase that needs every frame as evidence (`dispatch.exactly-once`) sets
//! `journal = "all"`.
//!
//! **The checks** (`params.check`): `sustained-rate` (fixed rate steps up to the plan's target; the
//! realm sustains a step when every submission is accepted and succeeds and the corrected p99 is
//! within the objective), `overload` (every submission answered, overload refused explicitly with
//! `retry_after_ms`, every accepted intent ended), `fairness` (Jain's index of the wallets'
//! throughput, each normalised by its max-min fair share, under overload) and `exactly-once`
//! (every accepted intent ends with exactly one terminal event, and a fetch from a new session
//! agrees); `fairness` also bounds overtaking at the head of each wallet's queue (SQ-11), from the
//! harness worker's dispatch order. Zero samples is a failure, never a pass.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::journal::{frame_text, Dir, Entry, Journal, Record};
use crate::plan::CaseSpec;
use crate::wire::{self, event, login, Conn, Identity};

/// The case kind of this module in plans.
pub const KIND: &str = "dispatch-load";

/// A send this long after its intended time is late (microseconds).
pub const LATE_US: u64 = 10_000;

/// Share of the generator's cores above which it calls itself saturated.
const CPU_SATURATION: f64 = 0.9;

/// Share of late sends above which the generator calls itself saturated.
const LATE_SATURATION: f64 = 0.05;

/// The price of a `cert.probe` (PRB-4), reserved by every submission.
const PROBE_COST: u64 = 1_000;

/// Histogram bounds: 1 µs to 10 minutes, 3 significant digits (about 200 KiB each).
const HIST_MAX_US: u64 = 600_000_000;

/// The quantiles written to markers, reported and charted.
pub const QUANTILES: [f64; 11] = [
    0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 0.99999, 1.0,
];

/// Ids of unanswered submissions or unended intents named per connection as evidence.
const NAMED_PER_CONN: usize = 5;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An acceptance observed by the generator: (when, wallet, probe nonce).
type Accepted = (Instant, usize, String);

// ------------------------------------------------------------------------------------------------
// Parameters

/// A case's parameters, with their defaults.
#[derive(Debug, Clone)]
pub struct Params {
    /// `sustained-rate`, `overload`, `fairness` or `exactly-once`.
    pub check: String,
    /// Funded wallets (`sustained-rate`, `overload`, `exactly-once`; the light wallets for
    /// `fairness`).
    pub wallets: usize,
    /// Connections in all (`sustained-rate`), at least enough to keep each under half the
    /// realm's per-connection frame rate.
    pub connections: usize,
    /// Aggregate rates of the steps, intents/s (`sustained-rate`).
    pub rates: Vec<f64>,
    /// The rate the realm must sustain (`sustained-rate`).
    pub min_rate: f64,
    /// The latency objective: corrected p99, milliseconds (`sustained-rate`).
    pub p99_ms: f64,
    /// Intents/s of each wallet (`overload`, `exactly-once`; each light wallet in `fairness`).
    pub rate_per_wallet: f64,
    /// Intents/s of the heavy wallet (`fairness`).
    pub heavy_rate: f64,
    /// `work_ms` of each probe.
    pub work_ms: u64,
    /// Every n-th probe asks the worker to fail (`fail: true`); 0 for none.
    pub fail_every: u64,
    /// Unmeasured lead-in of each phase.
    pub warmup_ms: u64,
    /// Measured length of each phase (each step).
    pub measure_ms: u64,
    /// The longest wait, after the last send, for outstanding replies and terminal events.
    pub drain_ms: u64,
    /// Frames journaled per connection and phase besides rejections and anomalies.
    pub sample_frames: u64,
    /// `all` journals every frame; `sample` (default) as the module documentation says.
    pub journal_all: bool,
    /// A send this far behind its slot is dropped (counted) instead of sent.
    pub max_lag_ms: u64,
    /// Jain's index the wallets' normalised shares must reach (`fairness`).
    pub min_jain: f64,
    /// The least share of its fair allocation any wallet must get (`fairness`).
    pub min_share: f64,
    /// Micro-tokens minted into each wallet when the harness has the sysop's key.
    pub mint_micro: u64,
    /// `harness` (default): the harness enrols its own worker and pins every probe to it, so
    /// capacity is known and dispatch order is observed; `realm`: the realm's own workers.
    pub harness_worker: bool,
    /// Concurrency of the harness worker.
    pub worker_concurrency: u64,
}

impl Params {
    /// The parameters of `spec`.
    pub fn of(spec: &CaseSpec) -> Self {
        let p = &spec.params;
        let int = |k: &str, d: u64| {
            p.get(k)
                .and_then(|v| v.as_integer())
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(d)
        };
        let float = |k: &str, d: f64| {
            p.get(k)
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(d)
        };
        let rates = p
            .get("rates")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .collect::<Vec<f64>>()
            })
            .unwrap_or_else(|| vec![125.0, 250.0, 500.0, 1000.0]);
        Self {
            check: p
                .get("check")
                .and_then(|v| v.as_str())
                .unwrap_or("sustained-rate")
                .to_owned(),
            wallets: usize::try_from(int("wallets", 8))
                .unwrap_or(8)
                .clamp(1, 256),
            connections: usize::try_from(int("connections", 16))
                .unwrap_or(16)
                .clamp(1, 1024),
            rates,
            min_rate: float("min_rate", 250.0),
            p99_ms: float("p99_ms", 1000.0),
            rate_per_wallet: float("rate_per_wallet", 80.0),
            heavy_rate: float("heavy_rate", 160.0),
            work_ms: int("work_ms", 0).min(5000),
            fail_every: int("fail_every", 0),
            warmup_ms: int("warmup_ms", 500),
            measure_ms: int("measure_ms", 1500).max(1),
            drain_ms: int("drain_ms", 5000),
            sample_frames: int("sample_frames", 20),
            journal_all: p.get("journal").and_then(|v| v.as_str()) == Some("all"),
            max_lag_ms: int("max_lag_ms", 1000),
            min_jain: float("min_jain", 0.9).min(1.0),
            min_share: float("min_share", 0.25).min(1.0),
            mint_micro: int("mint_micro", 1_000_000_000),
            harness_worker: p.get("workers").and_then(|v| v.as_str()) != Some("realm"),
            worker_concurrency: int("worker_concurrency", 64).clamp(1, 1024),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Histograms and the phase marker

/// A latency histogram reduced to what markers and reports carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistSummary {
    /// Values recorded.
    pub count: u64,
    /// Mean, microseconds.
    pub mean_us: f64,
    /// `(quantile, microseconds)` at each of [`QUANTILES`] (empty when `count` is 0).
    pub pcts: Vec<(f64, u64)>,
}

impl HistSummary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: round3(h.mean()),
            pcts: QUANTILES
                .iter()
                .map(|q| {
                    let v = if *q >= 1.0 {
                        h.max()
                    } else if *q <= 0.0 {
                        h.min()
                    } else {
                        h.value_at_quantile(*q)
                    };
                    (*q, v)
                })
                .collect(),
        }
    }

    /// The value at quantile `q` (one of [`QUANTILES`]), microseconds.
    pub fn at(&self, q: f64) -> Option<u64> {
        self.pcts
            .iter()
            .find(|(x, _)| (x - q).abs() < 1e-9)
            .map(|(_, v)| *v)
    }
}

/// What one connection did in one phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnReport {
    /// Connection number, as in the journal.
    pub conn: u32,
    /// Index of its wallet in the phase's `wallets`.
    pub wallet: usize,
    /// Submissions sent.
    pub sent: u64,
    /// Submissions sent in the measured window.
    pub measured: u64,
    /// Submissions answered (accepted, rejected or error).
    pub answered: u64,
    /// `intent.accepted` replies.
    pub accepted: u64,
    /// `intent.rejected` replies by code.
    pub rejected: BTreeMap<String, u64>,
    /// `error` replies by code.
    pub errors: BTreeMap<String, u64>,
    /// `QUEUE_FULL` / `RATE_LIMITED` answers without `retry_after_ms`.
    pub no_retry_after: u64,
    /// `intent.result` events (first per intent).
    pub results: u64,
    /// `intent.failed` events (first per intent).
    pub failed: u64,
    /// `intent.cancelled` events (first per intent).
    pub cancelled: u64,
    /// `intent.failed` for a probe that did not ask to fail.
    pub unexpected_failures: u64,
    /// Terminal events for an intent that had already ended.
    pub duplicates: u64,
    /// Replies or terminal events the generator could not place.
    pub strays: u64,
    /// Submissions with no answer when the phase ended.
    pub unanswered: u64,
    /// Accepted intents with no terminal event when the phase ended.
    pub unterminated: u64,
    /// Sends more than [`LATE_US`] after their slot through the generator's own delay.
    pub late: u64,
    /// Slots skipped because the generator was more than `max_lag_ms` behind.
    pub dropped: u64,
    /// Sends late (or skipped) because the previous send on the connection blocked past their
    /// slot: the realm was not reading (TCP backpressure), which is the realm's delay, not the
    /// generator's, and shows in the corrected latency.
    pub backpressured: u64,
    /// Slots not sent because the connection was gone.
    pub unsent: u64,
    /// `intent.result` events that arrived inside the measured window.
    pub window_results: u64,
    /// Frames sent and received.
    pub events: u64,
    /// `intent.rejected` and `error` frames journaled (every one is).
    pub rejections_journaled: u64,
    /// Why the connection ended during the phase, if it did.
    pub closed: Option<String>,
}

impl ConnReport {
    /// Rejections and errors in all.
    pub fn refusals(&self) -> u64 {
        self.rejected.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }
}

/// The generator's own account of a phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenReport {
    /// CPU time of the harness process over the phase, milliseconds (`None` off Linux).
    pub cpu_ms: Option<f64>,
    /// Wall time of the phase, milliseconds.
    pub wall_ms: f64,
    /// Frames sent and received by the generator.
    pub events: u64,
    /// Cores the process could use.
    pub cores: usize,
    /// Whether it was saturated, and why.
    pub saturated: bool,
    /// The reasons, when saturated.
    pub why: Vec<String>,
}

impl GenReport {
    /// CPU microseconds per event.
    pub fn cpu_us_per_event(&self) -> Option<f64> {
        let cpu = self.cpu_ms?;
        (self.events > 0).then(|| round3(cpu * 1000.0 / self.events as f64))
    }

    /// Share of one core the generator used.
    pub fn cpu_share(&self) -> Option<f64> {
        let cpu = self.cpu_ms?;
        (self.wall_ms > 0.0).then(|| round3(cpu / self.wall_ms))
    }
}

/// One wallet of a phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalletLoad {
    /// `w1`, `light-2`, `heavy`.
    pub label: String,
    /// Offered intents/s.
    pub rate: f64,
    /// Its connections.
    pub conns: usize,
}

/// The `mark:load-phase:` marker: everything the checkers judge a phase by.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhaseReport {
    /// `step-250`, `overload`, `fairness`, `exactly-once`.
    pub name: String,
    /// The wallets and their offered rates.
    pub wallets: Vec<WalletLoad>,
    /// `work_ms` of each probe.
    pub work_ms: u64,
    /// Unmeasured lead-in.
    pub warmup_ms: u64,
    /// Measured window.
    pub measure_ms: u64,
    /// Whole phase, drain included.
    pub elapsed_ms: u64,
    /// Per connection.
    pub conns: Vec<ConnReport>,
    /// Intended send to terminal event, measured successes only (corrected).
    pub corrected: HistSummary,
    /// Actual send to terminal event (uncorrected).
    pub uncorrected: HistSummary,
    /// Actual send to the reply (accepted, rejected or error).
    pub ack: HistSummary,
    /// Actual send minus intended send: how far the generator lagged its schedule.
    pub lag: HistSummary,
    /// The generator.
    pub generator: GenReport,
    /// The harness worker's account of the phase, when probes were pinned to it.
    pub worker: Option<WorkerPhase>,
    /// Overtaking measured against the harness worker's dispatch order (fairness).
    pub order: Option<OrderReport>,
    /// Per wallet, the most intents accepted and not yet ended at once, as the harness saw them
    /// (from `intent.accepted` to the terminal event).
    pub peak_inflight: Vec<u64>,
    /// The same over all wallets.
    pub peak_inflight_total: u64,
    /// The manifest's `limits.per_wallet_inflight` and `limits.queue_capacity`, when given.
    pub declared: Option<DeclaredLimits>,
}

/// The admission limits a realm declares in its manifest (SQ-1, SQ-2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeclaredLimits {
    /// `limits.per_wallet_inflight`.
    pub per_wallet_inflight: Option<u64>,
    /// `limits.queue_capacity`.
    pub queue_capacity: Option<u64>,
}

/// Intents accepted and not yet ended, per wallet and in all, with their peaks: shared by the
/// connection tasks of a phase (one atomic add per acceptance and per end).
struct InFlight {
    now: Vec<AtomicI64>,
    peak: Vec<AtomicI64>,
    total: AtomicI64,
    total_peak: AtomicI64,
}

impl InFlight {
    fn new(wallets: usize) -> Self {
        Self {
            now: (0..wallets).map(|_| AtomicI64::new(0)).collect(),
            peak: (0..wallets).map(|_| AtomicI64::new(0)).collect(),
            total: AtomicI64::new(0),
            total_peak: AtomicI64::new(0),
        }
    }

    fn accepted(&self, wallet: usize) {
        if let (Some(n), Some(p)) = (self.now.get(wallet), self.peak.get(wallet)) {
            p.fetch_max(n.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        let t = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        self.total_peak.fetch_max(t, Ordering::Relaxed);
    }

    fn ended(&self, wallet: usize) {
        if let Some(n) = self.now.get(wallet) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    fn peaks(&self) -> (Vec<u64>, u64) {
        let get = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0);
        (self.peak.iter().map(get).collect(), get(&self.total_peak))
    }
}

/// What the harness worker did in one phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerPhase {
    /// `task.assign` events received.
    pub assigned: u64,
    /// `task.result` / `task.failure` sent.
    pub answered: u64,
    /// `task.receipt` with status `refused`.
    pub refused: u64,
    /// `task.cancel` received.
    pub cancels: u64,
    /// Frames the worker could not place.
    pub strays: u64,
    /// Frames sent and received.
    pub events: u64,
    /// Most tasks held at once.
    pub max_running: u64,
}

/// How far intents were overtaken at the head of their wallet's queue: for each measured intent
/// of a wallet, the number of other wallets' intents the harness worker was given between the
/// later of its acceptance and its wallet's previous dispatch, and its own dispatch. (A wallet's
/// own backlog ahead of an intent is its own doing; SQ-11 bounds what others take meanwhile, and
/// deficit round robin, which the spec names as conforming, keeps this at most n.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderReport {
    /// Intents whose acceptance and dispatch were both observed.
    pub observed: u64,
    /// Wallets in the phase.
    pub wallets: u64,
    /// The most any one intent was overtaken.
    pub max_overtaken: u64,
    /// The 99th percentile of overtaking.
    pub p99_overtaken: u64,
    /// Label of the wallet of the most overtaken intent.
    pub worst_wallet: Option<usize>,
}

/// Counts overtaking from the acceptances `(time, wallet, nonce)` and the worker's dispatches
/// `(time, nonce)`. Nonces carry the wallet (`<phase>-w<wallet>-...`).
pub fn overtaking(
    accepted: &[Accepted],
    assigns: &[(Instant, String)],
    wallets: usize,
) -> OrderReport {
    let wallet_of = |nonce: &str| -> Option<usize> {
        nonce
            .split('-')
            .find_map(|p| p.strip_prefix('w').and_then(|n| n.parse().ok()))
    };
    let mut first_dispatch: HashMap<&str, Instant> = HashMap::new();
    let mut all: Vec<Instant> = Vec::with_capacity(assigns.len());
    let mut by_wallet: HashMap<usize, Vec<Instant>> = HashMap::new();
    for (t, nonce) in assigns {
        if first_dispatch.contains_key(nonce.as_str()) {
            continue; // a re-dispatch (SQ-11 excepts them)
        }
        first_dispatch.insert(nonce.as_str(), *t);
        all.push(*t);
        if let Some(w) = wallet_of(nonce) {
            by_wallet.entry(w).or_default().push(*t);
        }
    }
    all.sort();
    for v in by_wallet.values_mut() {
        v.sort();
    }
    let count = |v: &[Instant], a: Instant, b: Instant| {
        v.partition_point(|t| *t < b)
            .saturating_sub(v.partition_point(|t| *t <= a))
    };
    let mut overtaken: Vec<(u64, usize)> = accepted
        .iter()
        .filter_map(|(a, w, nonce)| {
            let d = *first_dispatch.get(nonce.as_str())?;
            let own: &[Instant] = by_wallet.get(w).map_or(&[], Vec::as_slice);
            let before = own.partition_point(|t| *t < d);
            let start = match before.checked_sub(1).map(|i| own[i]) {
                Some(prev) if prev > *a => prev,
                _ => *a,
            };
            if d <= start {
                return Some((0, *w));
            }
            Some(((count(&all, start, d) - count(own, start, d)) as u64, *w))
        })
        .collect();
    overtaken.sort_unstable();
    let n = overtaken.len();
    let p99 = if n == 0 {
        0
    } else {
        overtaken[((n - 1) as f64 * 0.99).round() as usize].0
    };
    OrderReport {
        observed: n as u64,
        wallets: wallets as u64,
        max_overtaken: overtaken.last().map_or(0, |o| o.0),
        p99_overtaken: p99,
        worst_wallet: overtaken.last().map(|o| o.1),
    }
}

impl PhaseReport {
    /// The aggregate offered rate, intents/s.
    pub fn target_rate(&self) -> f64 {
        self.wallets.iter().map(|w| w.rate).sum()
    }

    /// Sums a counter over the connections.
    pub fn total(&self, f: impl Fn(&ConnReport) -> u64) -> u64 {
        self.conns.iter().map(f).sum()
    }

    /// Refusals by code over the connections, `intent.rejected` and `error` together.
    pub fn codes(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for c in &self.conns {
            for (k, v) in c.rejected.iter().chain(c.errors.iter()) {
                *out.entry(k.clone()).or_default() += v;
            }
        }
        out
    }

    /// Successes inside the measured window per second.
    pub fn achieved_rate(&self) -> f64 {
        round3(self.total(|c| c.window_results) as f64 * 1000.0 / self.measure_ms.max(1) as f64)
    }
}

fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// CPU seconds (user plus system) of this process from `/proc/self/stat`, where there is one.
pub fn process_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5), 12 and 13 after the name, in USER_HZ
    // (100 on every Linux ABI).
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 * 10.0)
}

// ------------------------------------------------------------------------------------------------
// The generator

/// One open load connection: a client session of one wallet, journaled selectively.
pub struct LoadConn {
    ws: Ws,
    /// Connection number, as in the journal.
    pub id: u32,
    /// Index of its wallet.
    pub wallet: usize,
}

/// What one phase offers.
#[derive(Debug, Clone)]
pub struct PhasePlan {
    /// The phase's name in markers and reports.
    pub name: String,
    /// The wallets: labels and offered rates (intents/s); connections come from the sessions.
    pub wallets: Vec<WalletLoad>,
    /// `work_ms` of each probe.
    pub work_ms: u64,
    /// Every n-th probe fails on purpose; 0 for none.
    pub fail_every: u64,
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// Measured window.
    pub measure: Duration,
    /// Longest wait after the last send.
    pub drain: Duration,
    /// Journal every frame.
    pub journal_all: bool,
    /// Frames journaled per connection otherwise.
    pub sample_frames: u64,
    /// Slots further behind than this are dropped.
    pub max_lag: Duration,
    /// The harness worker's key every probe is pinned to (`input.worker_key`), if any.
    pub pin: Option<String>,
    /// Record when each probe was accepted, to measure overtaking against the harness worker's
    /// dispatch order (SQ-11).
    pub track_order: bool,
    /// The realm's declared admission limits, copied into the report for the checker.
    pub declared: Option<DeclaredLimits>,
}

/// What one connection task needs.
struct ConnPlan {
    phase: String,
    first: Instant,
    /// Seconds between sends, `None` for a connection that only listens.
    interval: Option<f64>,
    measure_from: Instant,
    stop_at: Instant,
    drain_until: Instant,
    work_ms: u64,
    fail_every: u64,
    journal_all: bool,
    sample: u64,
    max_lag: Duration,
    journal: Journal,
    case: String,
    pin: Option<String>,
    /// Acceptances (time, wallet, nonce) when dispatch order is tracked.
    accepted_log: Option<Arc<Mutex<Vec<Accepted>>>>,
    inflight: Arc<InFlight>,
}

/// Histograms shared by the connections of a phase (one lock per event: cheap at these rates,
/// and memory stays four histograms whatever the number of connections).
struct Hists {
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    ack: Histogram<u64>,
    lag: Histogram<u64>,
}

impl Hists {
    fn new() -> Option<Self> {
        let h = || Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 3).ok();
        Some(Self {
            corrected: h()?,
            uncorrected: h()?,
            ack: h()?,
            lag: h()?,
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

struct SentProbe {
    intended: Instant,
    actual: Instant,
    measured: bool,
    expect_fail: bool,
    /// Kept only when dispatch order is tracked.
    nonce: Option<String>,
}

/// What a connection task hands back.
struct ConnOutcome {
    conn: Option<LoadConn>,
    report: ConnReport,
    /// Intent ids accepted on this connection (for fetching them afterwards).
    accepted: Vec<String>,
}

/// Runs one phase over `conns` and journals its marker. Connections that survive are handed back
/// for the next phase.
pub async fn run_phase(
    ctx: &Ctx<'_>,
    conns: Vec<LoadConn>,
    plan: &PhasePlan,
    worker: Option<&LoadWorker>,
) -> (Vec<LoadConn>, PhaseReport, Vec<(usize, Vec<String>)>) {
    ctx.mark("load-start", &plan.name);
    let worker_before = worker.map(|w| w.counters.snapshot());
    let accepted_log = plan
        .track_order
        .then(|| Arc::new(Mutex::new(Vec::<Accepted>::new())));
    if let (Some(w), true) = (worker, plan.track_order) {
        w.counters.tracking.store(true, Ordering::Relaxed);
    }
    let Some(hists) = Hists::new() else {
        ctx.abort("cannot allocate the latency histograms");
        return (conns, PhaseReport::default(), Vec::new());
    };
    let hists = Arc::new(Mutex::new(hists));
    let inflight = Arc::new(InFlight::new(plan.wallets.len()));
    let mut per_wallet = vec![0usize; plan.wallets.len()];
    for c in &conns {
        if let Some(n) = per_wallet.get_mut(c.wallet) {
            *n += 1;
        }
    }
    let wallets: Vec<WalletLoad> = plan
        .wallets
        .iter()
        .zip(&per_wallet)
        .map(|(w, n)| WalletLoad {
            label: w.label.clone(),
            rate: w.rate,
            conns: *n,
        })
        .collect();
    let n_conns = conns.len().max(1);
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + plan.warmup;
    let stop_at = measure_from + plan.measure;
    let drain_until = (stop_at + plan.drain).min(ctx.deadline);
    let cpu_before = process_cpu_ms();
    let wall_start = Instant::now();
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, c) in conns.into_iter().enumerate() {
        let w = &wallets[c.wallet.min(wallets.len().saturating_sub(1))];
        let rate = if w.conns > 0 {
            w.rate / w.conns as f64
        } else {
            0.0
        };
        let interval = (rate > 0.0).then(|| 1.0 / rate);
        // Offsets spread the connections' slots evenly over one interval.
        let offset = interval.map_or(0.0, |iv| iv * i as f64 / n_conns as f64);
        let cp = ConnPlan {
            phase: plan.name.clone(),
            first: start + Duration::from_secs_f64(offset),
            interval,
            measure_from,
            stop_at,
            drain_until,
            work_ms: plan.work_ms,
            fail_every: plan.fail_every,
            journal_all: plan.journal_all,
            sample: plan.sample_frames,
            max_lag: plan.max_lag,
            journal: ctx.journal.clone(),
            case: ctx.spec.id.clone(),
            pin: plan.pin.clone(),
            accepted_log: accepted_log.clone(),
            inflight: inflight.clone(),
        };
        let id = c.id;
        let wallet = c.wallet;
        let h = hists.clone();
        tasks.push((id, wallet, tokio::spawn(conn_loop(c, cp, h))));
    }
    let mut back = Vec::new();
    let mut reports = Vec::new();
    let mut accepted = Vec::new();
    for (id, wallet, t) in tasks {
        match t.await {
            Ok(out) => {
                if let Some(c) = out.conn {
                    back.push(c);
                }
                accepted.push((wallet, out.accepted));
                reports.push(out.report);
            }
            Err(e) => {
                // A panicking connection task is a harness defect; the phase is judged without it.
                ctx.note(format!("load connection {id} task failed: {e}"));
                reports.push(ConnReport {
                    conn: id,
                    wallet,
                    closed: Some(format!("harness task failed: {e}")),
                    ..ConnReport::default()
                });
            }
        }
    }
    let wall_ms = wall_start.elapsed().as_secs_f64() * 1000.0;
    let cpu_ms = match (cpu_before, process_cpu_ms()) {
        (Some(a), Some(b)) => Some(round3(b - a)),
        _ => None,
    };
    let (corrected, uncorrected, ack, lag) = {
        let h = match hists.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        (
            HistSummary::of(&h.corrected),
            HistSummary::of(&h.uncorrected),
            HistSummary::of(&h.ack),
            HistSummary::of(&h.lag),
        )
    };
    let worker_phase = match (worker, worker_before) {
        (Some(w), Some(before)) => {
            w.counters.tracking.store(false, Ordering::Relaxed);
            Some(w.counters.snapshot().since(&before))
        }
        _ => None,
    };
    let order = match (worker, &accepted_log) {
        (Some(w), Some(log)) => {
            let assigns = std::mem::take(&mut *match w.counters.assigns.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            });
            let accepted = std::mem::take(&mut *match log.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            });
            Some(overtaking(&accepted, &assigns, plan.wallets.len()))
        }
        _ => None,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut generator = GenReport {
        cpu_ms,
        wall_ms: round3(wall_ms),
        events: reports.iter().map(|r| r.events).sum::<u64>()
            + worker_phase.as_ref().map_or(0, |w| w.events),
        cores,
        saturated: false,
        why: Vec::new(),
    };
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let late: u64 = reports.iter().map(|r| r.late).sum();
    let dropped: u64 = reports.iter().map(|r| r.dropped).sum();
    if let Some(share) = generator.cpu_share() {
        if share >= CPU_SATURATION * cores as f64 {
            generator.why.push(format!(
                "the harness used {:.0} % of its {cores} core(s)",
                share * 100.0
            ));
        }
    }
    if sent > 0 && late as f64 > LATE_SATURATION * sent as f64 {
        generator.why.push(format!(
            "{late} of {sent} sends ({:.1} %) were more than {} ms late",
            late as f64 * 100.0 / sent as f64,
            LATE_US / 1000
        ));
    }
    if dropped > 0 {
        generator.why.push(format!(
            "{dropped} sends were dropped, more than {} ms behind schedule",
            plan.max_lag.as_millis()
        ));
    }
    generator.saturated = !generator.why.is_empty();
    reports.sort_by_key(|r| r.conn);
    let (peak_inflight, peak_inflight_total) = inflight.peaks();
    let report = PhaseReport {
        name: plan.name.clone(),
        wallets,
        work_ms: plan.work_ms,
        warmup_ms: u64::try_from(plan.warmup.as_millis()).unwrap_or(u64::MAX),
        measure_ms: u64::try_from(plan.measure.as_millis()).unwrap_or(u64::MAX),
        elapsed_ms: u64::try_from(wall_start.elapsed().as_millis()).unwrap_or(u64::MAX),
        conns: reports,
        corrected,
        uncorrected,
        ack,
        lag,
        generator,
        worker: worker_phase,
        order,
        peak_inflight,
        peak_inflight_total,
        declared: plan.declared,
    };
    tracing::debug!(
        case = %ctx.spec.id,
        phase = %report.name,
        sent = report.total(|c| c.sent),
        events = report.generator.events,
        cpu_us_per_event = ?report.generator.cpu_us_per_event(),
        "load phase done"
    );
    if report.generator.saturated {
        tracing::warn!(case = %ctx.spec.id, phase = %report.name, why = ?report.generator.why, "the load generator was saturated");
    }
    match serde_json::to_string(&report) {
        Ok(text) => {
            ctx.mark("load-phase", &text);
        }
        Err(e) => ctx.abort(format!("cannot write the phase marker: {e}")),
    }
    (back, report, accepted)
}

fn log_frame(cp: &ConnPlan, conn: u32, dir: Dir, data: String) {
    cp.journal
        .log(Some(&cp.case), Entry::Frame { conn, dir, data });
}

/// Drives one connection through a phase: sends on schedule, reads answers as they come, then
/// drains. Every wait is bounded by the phase's drain deadline.
async fn conn_loop(mut c: LoadConn, cp: ConnPlan, hists: Arc<Mutex<Hists>>) -> ConnOutcome {
    let mut rep = ConnReport {
        conn: c.id,
        wallet: c.wallet,
        ..ConnReport::default()
    };
    let mut pending: HashMap<String, SentProbe> = HashMap::new();
    let mut running: HashMap<String, SentProbe> = HashMap::new();
    let mut ended: HashSet<String> = HashSet::new();
    let mut accepted_ids = Vec::new();
    let mut sampled = 0u64;
    let mut k: u64 = 0;
    let mut sending = cp.interval.is_some();
    let mut alive = true;
    // When the last send returned: a slot that fell due while a send was blocked is late
    // because of the realm (backpressure), not because of the generator.
    let mut last_send_done = cp.first;
    let record = |f: &dyn Fn(&mut Hists)| {
        let mut h = match hists.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut h);
    };
    loop {
        if !sending && pending.is_empty() && running.is_empty() {
            break;
        }
        if Instant::now() >= cp.drain_until {
            break;
        }
        let next = cp
            .interval
            .map(|iv| cp.first + Duration::from_secs_f64(iv * k as f64));
        let wake = match next {
            Some(t) if sending => t.min(cp.drain_until),
            _ => cp.drain_until,
        };
        tokio::select! {
            biased;
            msg = c.ws.next() => {
                let text = match msg {
                    None => {
                        rep.closed = Some("end of stream".into());
                        alive = false;
                        break;
                    }
                    Some(Err(e)) => {
                        rep.closed = Some(e.to_string());
                        alive = false;
                        break;
                    }
                    Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                    Some(Ok(Message::Binary(b))) => {
                        rep.events += 1;
                        rep.strays += 1;
                        log_frame(&cp, c.id, Dir::Recv, frame_text(&b));
                        continue;
                    }
                    Some(Ok(Message::Close(f))) => {
                        rep.closed = Some(f.map_or_else(
                            || "close without a frame".to_owned(),
                            |f| format!("{} {}", u16::from(f.code), f.reason),
                        ));
                        alive = false;
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                rep.events += 1;
                let now = Instant::now();
                let ev: Option<Value> = serde_json::from_str(&text).ok();
                let kind = ev.as_ref().and_then(|e| e["type"].as_str()).unwrap_or("");
                let corr = ev.as_ref().and_then(|e| e["corr"].as_str()).unwrap_or("");
                let intent = ev
                    .as_ref()
                    .and_then(|e| e["body"]["intent_id"].as_str())
                    .unwrap_or("")
                    .to_owned();
                // Rejections, errors and anything the generator cannot place are journaled
                // whatever the sample (the journal exception documented above).
                let mut must = false;
                match kind {
                    "intent.accepted" => match pending.remove(corr) {
                        Some(s) => {
                            rep.answered += 1;
                            rep.accepted += 1;
                            if s.measured {
                                record(&|h| {
                                    let _ = h.ack.record(micros(now - s.actual).min(HIST_MAX_US));
                                });
                            }
                            if running.contains_key(&intent) || ended.contains(&intent) {
                                rep.strays += 1;
                                must = true;
                            }
                            if let (Some(log), Some(nonce), true) = (&cp.accepted_log, &s.nonce, s.measured) {
                                if let Ok(mut l) = log.lock() {
                                    l.push((now, c.wallet, nonce.clone()));
                                }
                            }
                            accepted_ids.push(intent.clone());
                            cp.inflight.accepted(c.wallet);
                            running.insert(intent, s);
                        }
                        None => {
                            rep.strays += 1;
                            must = true;
                        }
                    },
                    "intent.rejected" | "error" => {
                        must = true;
                        rep.rejections_journaled += 1;
                        let code = ev
                            .as_ref()
                            .and_then(|e| e["body"]["code"].as_str())
                            .unwrap_or("?")
                            .to_owned();
                        let retry = ev
                            .as_ref()
                            .is_some_and(|e| e["body"]["retry_after_ms"].as_u64().is_some());
                        let key = if corr.is_empty() {
                            ev.as_ref().and_then(|e| e["body"]["ref"].as_str()).unwrap_or("")
                        } else {
                            corr
                        };
                        match pending.remove(key) {
                            Some(s) => {
                                rep.answered += 1;
                                if matches!(code.as_str(), "QUEUE_FULL" | "RATE_LIMITED") && !retry {
                                    rep.no_retry_after += 1;
                                }
                                let map = if kind == "error" { &mut rep.errors } else { &mut rep.rejected };
                                *map.entry(code).or_default() += 1;
                                if s.measured {
                                    record(&|h| {
                                        let _ = h.ack.record(micros(now - s.actual).min(HIST_MAX_US));
                                    });
                                }
                            }
                            None => rep.strays += 1,
                        }
                    }
                    "intent.result" | "intent.failed" | "intent.cancelled" => {
                        match running.remove(&intent) {
                            Some(s) => {
                                cp.inflight.ended(c.wallet);
                                ended.insert(intent);
                                match kind {
                                    "intent.result" => {
                                        rep.results += 1;
                                        if now >= cp.measure_from && now < cp.stop_at {
                                            rep.window_results += 1;
                                        }
                                        if s.measured {
                                            record(&|h| {
                                                let _ = h.corrected.record(micros(now - s.intended).min(HIST_MAX_US));
                                                let _ = h.uncorrected.record(micros(now - s.actual).min(HIST_MAX_US));
                                            });
                                        }
                                    }
                                    "intent.failed" => {
                                        rep.failed += 1;
                                        if !s.expect_fail {
                                            rep.unexpected_failures += 1;
                                            must = true;
                                        }
                                    }
                                    _ => {
                                        rep.cancelled += 1;
                                        must = true;
                                    }
                                }
                            }
                            None if ended.contains(&intent) => {
                                rep.duplicates += 1;
                                must = true;
                            }
                            None => {
                                rep.strays += 1;
                                must = true;
                            }
                        }
                    }
                    "queue.update" | "intent.progress" => {}
                    _ => {
                        rep.strays += 1;
                        must = true;
                    }
                }
                if cp.journal_all || must || sampled < cp.sample {
                    if !must {
                        sampled += 1;
                    }
                    log_frame(&cp, c.id, Dir::Recv, text);
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let Some(due) = next.filter(|_| sending) else { continue };
                if due >= cp.stop_at {
                    sending = false;
                    continue;
                }
                let now = Instant::now();
                if now < due {
                    continue;
                }
                k += 1;
                let lag = now - due;
                let blocked = last_send_done > due + Duration::from_micros(LATE_US);
                if lag > cp.max_lag {
                    if blocked {
                        rep.backpressured += 1;
                    } else {
                        rep.dropped += 1;
                    }
                    continue;
                }
                if micros(lag) > LATE_US {
                    if blocked {
                        rep.backpressured += 1;
                    } else {
                        rep.late += 1;
                    }
                }
                let expect_fail = cp.fail_every > 0 && k % cp.fail_every == 0;
                let nonce = format!("{}-w{}-{}-{k}", cp.phase, c.wallet, c.id);
                let mut input = json!({ "nonce": nonce });
                if cp.work_ms > 0 {
                    input["work_ms"] = json!(cp.work_ms);
                }
                if let Some(key) = &cp.pin {
                    input["worker_key"] = json!(key);
                }
                if expect_fail {
                    input["fail"] = json!(true);
                }
                let submit = event(
                    "intent.submit",
                    None,
                    json!({ "intent": "cert.probe", "input": input, "max_cost": PROBE_COST, "idempotency_key": wire::new_id() }),
                );
                let id = submit["id"].as_str().unwrap_or_default().to_owned();
                let text = submit.to_string();
                if cp.journal_all || sampled < cp.sample {
                    sampled += 1;
                    log_frame(&cp, c.id, Dir::Send, text.clone());
                }
                let measured = due >= cp.measure_from;
                let actual = Instant::now();
                // A realm that stops reading blocks the send; bounded, and the connection is
                // then treated as lost.
                let sent = timeout_at(actual + Duration::from_secs(2), c.ws.send(Message::text(text))).await;
                match sent {
                    Ok(Ok(())) => {
                        last_send_done = Instant::now();
                        rep.sent += 1;
                        rep.events += 1;
                        if measured {
                            rep.measured += 1;
                            record(&|h| {
                                let _ = h.lag.record(micros(actual - due).min(HIST_MAX_US));
                            });
                        }
                        let nonce = cp.accepted_log.is_some().then_some(nonce);
                        pending.insert(id, SentProbe { intended: due, actual, measured, expect_fail, nonce });
                    }
                    Ok(Err(e)) => {
                        rep.closed = Some(format!("send failed: {e}"));
                        alive = false;
                        break;
                    }
                    Err(_) => {
                        rep.closed = Some("a send blocked for 2 s".into());
                        alive = false;
                        break;
                    }
                }
            }
        }
    }
    if let (false, Some(iv)) = (alive, cp.interval) {
        // Slots the connection never reached because it was gone.
        let end = cp.stop_at.saturating_duration_since(cp.first).as_secs_f64();
        let total = (end / iv).ceil() as u64;
        rep.unsent = total.saturating_sub(k);
    }
    if let Some(why) = &rep.closed {
        cp.journal.log(
            Some(&cp.case),
            Entry::Conn {
                conn: c.id,
                event: "closed".into(),
                detail: why.clone(),
            },
        );
    }
    rep.unanswered = pending.len() as u64;
    rep.unterminated = running.len() as u64;
    for id in pending.keys().take(NAMED_PER_CONN) {
        cp.journal.log(
            Some(&cp.case),
            Entry::Note {
                text: format!("{MARK}load-unanswered:{}:{id}", c.id),
            },
        );
    }
    for id in running.keys().take(NAMED_PER_CONN) {
        cp.journal.log(
            Some(&cp.case),
            Entry::Note {
                text: format!("{MARK}load-unended:{}:{id}", c.id),
            },
        );
    }
    ConnOutcome {
        conn: alive.then_some(c),
        report: rep,
        accepted: accepted_ids,
    }
}

// ------------------------------------------------------------------------------------------------
// The harness worker

/// Counters the harness worker keeps, read by the phases.
#[derive(Default)]
pub struct WorkerCounters {
    assigned: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    cancels: AtomicU64,
    strays: AtomicU64,
    events: AtomicU64,
    max_running: AtomicU64,
    /// While set, every first dispatch is logged as (time, nonce) for [`overtaking`].
    tracking: AtomicBool,
    assigns: Mutex<Vec<(Instant, String)>>,
}

impl WorkerCounters {
    fn snapshot(&self) -> WorkerPhase {
        WorkerPhase {
            assigned: self.assigned.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            cancels: self.cancels.load(Ordering::Relaxed),
            strays: self.strays.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            max_running: self.max_running.swap(0, Ordering::Relaxed),
        }
    }
}

impl WorkerPhase {
    fn since(self, before: &WorkerPhase) -> WorkerPhase {
        WorkerPhase {
            assigned: self.assigned.saturating_sub(before.assigned),
            answered: self.answered.saturating_sub(before.answered),
            refused: self.refused.saturating_sub(before.refused),
            cancels: self.cancels.saturating_sub(before.cancels),
            strays: self.strays.saturating_sub(before.strays),
            events: self.events.saturating_sub(before.events),
            max_running: self.max_running,
        }
    }
}

/// A worker the harness enrols to serve its own load: it lists `cert.probe`, answers each task
/// after the input's `work_ms` (a `fail: true` probe with a non-retryable `WORKER_ERROR`, PRB-3),
/// and keeps its heartbeats. Probes pinned to its key (PRB-6) reach no other worker, so the
/// capacity under test is the plan's (`worker_concurrency` / `work_ms`) and the dispatch order is
/// observed.
pub struct LoadWorker {
    /// The worker key probes are pinned to.
    pub key_hex: String,
    counters: Arc<WorkerCounters>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadWorker {
    /// Stops the worker and closes its connection (bounded).
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

struct Job {
    assign_id: String,
    task_id: Value,
    attempt: Value,
    epoch: Value,
    nonce: String,
    fail: bool,
}

/// Enrols the harness worker, or `None` when the plan asks for the realm's own workers or the
/// harness has no enrolment token.
async fn start_worker(ctx: &Ctx<'_>, p: &Params) -> Result<Option<LoadWorker>, Stop> {
    if !p.harness_worker {
        return Ok(None);
    }
    let Some(token) = ctx.target.enrol_token.clone() else {
        ctx.note("no enrolment token: the load runs on the realm's own workers".to_owned());
        return Ok(None);
    };
    let key = Identity::generate().map_err(|e| Stop::Abort(format!("no randomness: {e}")))?;
    let url = format!("{}/v1/worker", ctx.target.ws_base);
    let mut conn = Conn::open(&url, ctx.journal, Some(&ctx.spec.id), ctx.within(5000))
        .await
        .map_err(|e| Stop::Abort(format!("opening the harness worker's connection: {e}")))?;
    let register = event(
        "worker.register",
        None,
        json!({
            "token": token,
            "worker_key": key.public_hex(),
            "intents": ["cert.probe"],
            "concurrency": p.worker_concurrency,
            "software": concat!("mtor-cert/", env!("CARGO_PKG_VERSION"), " load worker"),
        }),
    );
    let challenge = conn
        .request(&register, ctx.within(3000))
        .await
        .map_err(|e| Stop::Abort(format!("worker.register: {e}")))?;
    if challenge.kind() != Some("session.challenge") {
        return Err(Stop::Abort(format!(
            "worker.register was answered by {:?}",
            challenge.event
        )));
    }
    let body = |k: &str| challenge.body(k).and_then(Value::as_str).unwrap_or("");
    let proof = event(
        "session.proof",
        challenge.event.as_ref().and_then(|e| e["id"].as_str()),
        json!({ "signature": key.session_proof(body("realm_id"), body("nonce")) }),
    );
    let enrolled = conn
        .request(&proof, ctx.within(3000))
        .await
        .map_err(|e| Stop::Abort(format!("the harness worker's proof: {e}")))?;
    if enrolled.kind() != Some("worker.enrolled") {
        return Err(Stop::Abort(format!(
            "the harness worker's proof was answered by {:?}",
            enrolled.event
        )));
    }
    let worker_id = enrolled
        .body("worker_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // Beat at twice the required rate, so scheduling jitter never makes the worker look late.
    let beat = Duration::from_millis(
        enrolled
            .body("heartbeat_interval_ms")
            .and_then(Value::as_u64)
            .unwrap_or(1000)
            .clamp(100, 60_000)
            / 2,
    );
    let (ws, id, _) = conn.into_raw();
    ctx.mark(
        "load-worker",
        &json!({"conn": id, "worker_id": worker_id, "key": key.public_hex(),
                "concurrency": p.worker_concurrency})
        .to_string(),
    );
    let counters = Arc::new(WorkerCounters::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker_loop(WorkerLoop {
        ws,
        conn: id,
        worker_id,
        capacity: p.worker_concurrency,
        beat,
        sample: p.sample_frames,
        journal: ctx.journal.clone(),
        case: ctx.spec.id.clone(),
        until: ctx.deadline,
        counters: counters.clone(),
        stop: stop_rx,
    }));
    Ok(Some(LoadWorker {
        key_hex: key.public_hex(),
        counters,
        stop,
        task,
    }))
}

struct WorkerLoop {
    ws: Ws,
    conn: u32,
    worker_id: String,
    capacity: u64,
    beat: Duration,
    sample: u64,
    journal: Journal,
    case: String,
    until: Instant,
    counters: Arc<WorkerCounters>,
    stop: tokio::sync::watch::Receiver<bool>,
}

async fn worker_loop(mut w: WorkerLoop) {
    use std::cmp::Reverse;
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut jobs: HashMap<u64, Job> = HashMap::new();
    let mut next_job = 0u64;
    let mut next_beat = Instant::now();
    let mut sampled = 0u64;
    let log = |w: &WorkerLoop, dir: Dir, data: String| {
        w.journal.log(
            Some(&w.case),
            Entry::Frame {
                conn: w.conn,
                dir,
                data,
            },
        );
    };
    loop {
        let now = Instant::now();
        if now >= w.until || *w.stop.borrow() {
            break;
        }
        let wake = due
            .peek()
            .map_or(next_beat, |Reverse((t, _))| (*t).min(next_beat))
            .min(w.until);
        let mut out: Vec<Value> = Vec::new();
        tokio::select! {
            biased;
            _ = w.stop.changed() => break,
            msg = w.ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        w.journal.log(Some(&w.case), Entry::Conn {
                            conn: w.conn,
                            event: "closed".into(),
                            detail: "the realm ended the harness worker's connection".into(),
                        });
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                w.counters.events.fetch_add(1, Ordering::Relaxed);
                let ev: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let mut must = false;
                match ev["type"].as_str() {
                    Some("task.assign") => {
                        w.counters.assigned.fetch_add(1, Ordering::Relaxed);
                        let input = &ev["body"]["input"];
                        let nonce = input["nonce"].as_str().unwrap_or("").to_owned();
                        if w.counters.tracking.load(Ordering::Relaxed) {
                            if let Ok(mut a) = w.counters.assigns.lock() {
                                a.push((now, nonce.clone()));
                            }
                        }
                        let work = Duration::from_millis(input["work_ms"].as_u64().unwrap_or(0));
                        jobs.insert(next_job, Job {
                            assign_id: ev["id"].as_str().unwrap_or("").to_owned(),
                            task_id: ev["body"]["task_id"].clone(),
                            attempt: ev["body"]["attempt"].clone(),
                            epoch: ev["body"]["epoch"].clone(),
                            nonce,
                            fail: input["fail"] == true,
                        });
                        due.push(Reverse((now + work, next_job)));
                        next_job += 1;
                        w.counters.max_running.fetch_max(jobs.len() as u64, Ordering::Relaxed);
                    }
                    Some("task.receipt") => {
                        if ev["body"]["status"] == "refused" {
                            w.counters.refused.fetch_add(1, Ordering::Relaxed);
                            must = true;
                        }
                    }
                    Some("task.cancel") => {
                        w.counters.cancels.fetch_add(1, Ordering::Relaxed);
                        must = true;
                        let task = &ev["body"]["task_id"];
                        jobs.retain(|_, j| &j.task_id != task);
                    }
                    _ => {
                        w.counters.strays.fetch_add(1, Ordering::Relaxed);
                        must = true;
                    }
                }
                if must || sampled < w.sample {
                    if !must {
                        sampled += 1;
                    }
                    log(&w, Dir::Recv, text);
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                while let Some(Reverse((t, id))) = due.peek().copied() {
                    if t > now {
                        break;
                    }
                    due.pop();
                    let Some(job) = jobs.remove(&id) else { continue };
                    let answer = if job.fail {
                        event("task.failure", Some(&job.assign_id), json!({
                            "task_id": job.task_id, "attempt": job.attempt, "epoch": job.epoch,
                            "code": "WORKER_ERROR", "message": "failed on request (fail: true)",
                            "retryable": false,
                        }))
                    } else {
                        event("task.result", Some(&job.assign_id), json!({
                            "task_id": job.task_id, "attempt": job.attempt, "epoch": job.epoch,
                            "output": {"nonce": job.nonce, "digest": crate::scripted::probe_digest(&job.nonce),
                                       "worker_id": w.worker_id},
                            "units": 1,
                        }))
                    };
                    out.push(answer);
                }
                if now >= next_beat {
                    out.push(event("worker.heartbeat", None, json!({
                        "running": jobs.len(), "capacity": w.capacity, "state": "ready",
                    })));
                    next_beat = now + w.beat;
                }
            }
        }
        for frame in out {
            let text = frame.to_string();
            if sampled < w.sample {
                sampled += 1;
                log(&w, Dir::Send, text.clone());
            }
            let answer = frame["type"] != "worker.heartbeat";
            match timeout_at(
                Instant::now() + Duration::from_secs(2),
                w.ws.send(Message::text(text)),
            )
            .await
            {
                Ok(Ok(())) => {
                    w.counters.events.fetch_add(1, Ordering::Relaxed);
                    if answer {
                        w.counters.answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {
                    w.journal.log(
                        Some(&w.case),
                        Entry::Conn {
                            conn: w.conn,
                            event: "closed".into(),
                            detail: "a send of the harness worker failed or blocked for 2 s".into(),
                        },
                    );
                    return;
                }
            }
        }
    }
    let _ = timeout_at(
        Instant::now() + Duration::from_millis(300),
        w.ws.close(None),
    )
    .await;
}

// ------------------------------------------------------------------------------------------------
// Wallets and sessions

enum Stop {
    Skip(String),
    Abort(String),
}

/// `n` funded wallets: fresh ones minted by the sysop when the harness has the sysop's key, else
/// the manifest's funded wallet once (when `need_distinct` is false).
async fn fund_wallets(
    ctx: &Ctx<'_>,
    n: usize,
    need_distinct: bool,
    mint: u64,
) -> Result<Vec<Identity>, Stop> {
    let Some(sysop) = ctx.target.sysop.as_ref() else {
        return match (&ctx.target.funded_wallet, need_distinct) {
            (Some(w), false) => Ok(vec![w.clone()]),
            (Some(_), true) => Err(Stop::Skip(
                "this case needs several funded wallets: give `credentials.sysop_secret` in the manifest".into(),
            )),
            (None, _) => Err(Stop::Skip(
                "no money to pay for probes: give `credentials.sysop_secret` or `credentials.wallet_secret` in the manifest".into(),
            )),
        };
    };
    let (mut conn, _) = login(
        &ctx.client_url(),
        sysop,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    .map_err(|e| Stop::Abort(format!("opening the sysop's session: {e}")))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let wallet =
            Identity::generate().map_err(|e| Stop::Abort(format!("no randomness: {e}")))?;
        let mint = event(
            "wallet.mint",
            None,
            json!({"wallet": wallet.public_hex(), "amount": mint.max(PROBE_COST),
                   "idempotency_key": wire::new_id(), "memo": "mtor-cert dispatch suite"}),
        );
        let reply = conn
            .request(&mint, ctx.within(5000))
            .await
            .map_err(|e| Stop::Abort(format!("wallet.mint: {e}")))?;
        if reply.kind() != Some("wallet.minted") {
            return Err(Stop::Abort(format!(
                "wallet.mint was answered by {}",
                reply.event.map(|e| e.to_string()).unwrap_or_default()
            )));
        }
        out.push(wallet);
    }
    conn.close().await;
    Ok(out)
}

/// Opens `per_wallet[i]` client sessions for wallet `i`; returns them and the realm's
/// per-connection frame rate from `session.ready`.
async fn open_sessions(
    ctx: &Ctx<'_>,
    wallets: &[Identity],
    per_wallet: &[usize],
    role: &str,
) -> Result<(Vec<LoadConn>, f64), Stop> {
    let mut out = Vec::new();
    let mut rate_per_s = f64::INFINITY;
    for (i, (who, n)) in wallets.iter().zip(per_wallet).enumerate() {
        for _ in 0..*n {
            let (conn, ready) = login(
                &ctx.client_url(),
                who,
                ctx.journal,
                Some(&ctx.spec.id),
                ctx.within(5000),
            )
            .await
            .map_err(|e| Stop::Abort(format!("could not open a client session: {e}")))?;
            rate_per_s = rate_per_s.min(ready["limits"]["rate_per_s"].as_f64().unwrap_or(100.0));
            let (ws, id, _) = conn.into_raw();
            ctx.mark(
                "load-session",
                &json!({"conn": id, "wallet": i, "role": role, "key": who.public_hex()})
                    .to_string(),
            );
            out.push(LoadConn { ws, id, wallet: i });
        }
    }
    if !rate_per_s.is_finite() || rate_per_s <= 0.0 {
        rate_per_s = 100.0;
    }
    Ok((out, rate_per_s))
}

/// Connections a wallet needs to offer `rate` with each under half the realm's frame rate.
fn conns_for(rate: f64, frame_rate: f64) -> usize {
    let per = (frame_rate * 0.5).max(1.0);
    ((rate / per).ceil() as usize).max(1)
}

async fn close_all(conns: Vec<LoadConn>) {
    for mut c in conns {
        let _ = timeout_at(
            Instant::now() + Duration::from_millis(300),
            c.ws.close(None),
        )
        .await;
    }
}

/// The realm's advertised frame rate: the manifest's `limits.rate_per_s` (the session's own,
/// from `session.ready`, replaces it once sessions are open).
async fn manifest_frame_rate(ctx: &Ctx<'_>) -> f64 {
    let got = wire::http_get(
        &ctx.target.http_base,
        "/v1/manifest",
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(3000),
    )
    .await;
    got.ok()
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|m| m["limits"]["rate_per_s"].as_f64())
        .filter(|r| *r > 0.0)
        .unwrap_or(100.0)
}

/// The manifest's declared admission limits (SQ-1, SQ-2), when it gives any.
async fn manifest_limits(ctx: &Ctx<'_>) -> Option<DeclaredLimits> {
    let (status, body) = wire::http_get(
        &ctx.target.http_base,
        "/v1/manifest",
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(3000),
    )
    .await
    .ok()?;
    let m: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    let limits = DeclaredLimits {
        per_wallet_inflight: m["limits"]["per_wallet_inflight"].as_u64(),
        queue_capacity: m["limits"]["queue_capacity"].as_u64(),
    };
    (limits != DeclaredLimits::default()).then_some(limits)
}

// ------------------------------------------------------------------------------------------------
// Drivers

/// Runs the case's driver. Every outcome is in the journal.
pub async fn drive(ctx: &Ctx<'_>) {
    let p = Params::of(ctx.spec);
    let result = match p.check.as_str() {
        "sustained-rate" => sustained(ctx, &p).await,
        "overload" => overload(ctx, &p).await,
        "fairness" => fairness(ctx, &p).await,
        "exactly-once" => exactly_once(ctx, &p).await,
        other => Err(Stop::Abort(format!(
            "plan parameter `check` = `{other}` is not one of sustained-rate, overload, fairness, exactly-once"
        ))),
    };
    match result {
        Ok(()) => {}
        Err(Stop::Skip(why)) => ctx.skip(why),
        Err(Stop::Abort(why)) => ctx.abort(why),
    }
}

fn phase_plan(
    p: &Params,
    name: &str,
    wallets: Vec<WalletLoad>,
    worker: Option<&LoadWorker>,
) -> PhasePlan {
    PhasePlan {
        name: name.to_owned(),
        wallets,
        work_ms: p.work_ms,
        fail_every: p.fail_every,
        warmup: Duration::from_millis(p.warmup_ms),
        measure: Duration::from_millis(p.measure_ms),
        drain: Duration::from_millis(p.drain_ms),
        journal_all: p.journal_all,
        sample_frames: p.sample_frames,
        max_lag: Duration::from_millis(p.max_lag_ms),
        pin: worker.map(|w| w.key_hex.clone()),
        track_order: false,
        declared: None,
    }
}

/// The rate steps of a sustained-rate case: the plan's, with the minimum rate among them, sorted.
pub fn steps_of(p: &Params) -> Vec<f64> {
    let mut rates = p.rates.clone();
    if p.min_rate > 0.0 && !rates.iter().any(|r| (r - p.min_rate).abs() < 1e-9) {
        rates.push(p.min_rate);
    }
    rates.sort_by(f64::total_cmp);
    rates.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    rates
}

async fn sustained(ctx: &Ctx<'_>, p: &Params) -> Result<(), Stop> {
    let steps = steps_of(p);
    let top = steps.last().copied().unwrap_or(p.min_rate);
    let frame_rate = manifest_frame_rate(ctx).await;
    let wanted = p.connections.max(conns_for(top, frame_rate));
    let wallets = fund_wallets(ctx, p.wallets.min(wanted), false, p.mint_micro).await?;
    let worker = start_worker(ctx, p).await?;
    let w = wallets.len();
    let per_wallet: Vec<usize> = (0..w)
        .map(|i| wanted / w + usize::from(i < wanted % w))
        .collect();
    let (mut conns, session_rate) = open_sessions(ctx, &wallets, &per_wallet, "submit").await?;
    if top / conns.len().max(1) as f64 > session_rate * 0.5 {
        ctx.note(format!(
            "note: {top}/s over {} connections is above half the session's frame rate ({session_rate}/s)",
            conns.len()
        ));
    }
    let step_ms = p.warmup_ms + p.measure_ms + 500;
    // A step at or below the plan's minimum that fails is run once more before it decides the
    // verdict: one stall of a shared host (a slow fsync, a descheduled process) must not fail a
    // certification, while a realm that cannot sustain the rate fails both runs.
    let mut queue: std::collections::VecDeque<(f64, bool)> =
        steps.into_iter().map(|r| (r, false)).collect();
    while let Some((rate, again)) = queue.pop_front() {
        if conns.is_empty() {
            break;
        }
        if Instant::now() + Duration::from_millis(step_ms) > ctx.deadline {
            ctx.note(format!(
                "the case's budget leaves no time for the {rate}/s step"
            ));
            break;
        }
        let loads = (0..w)
            .map(|i| WalletLoad {
                label: format!("w{}", i + 1),
                rate: rate * per_wallet[i] as f64 / per_wallet.iter().sum::<usize>().max(1) as f64,
                conns: per_wallet[i],
            })
            .collect();
        let name = if again {
            format!("step-{}-again", fmt_rate(rate))
        } else {
            format!("step-{}", fmt_rate(rate))
        };
        let plan = phase_plan(p, &name, loads, worker.as_ref());
        let (back, report, _) = run_phase(ctx, conns, &plan, worker.as_ref()).await;
        conns = back;
        if step_outcome(&report, p.p99_ms) != StepOutcome::Sustained {
            if again || rate > p.min_rate + 1e-9 {
                break;
            }
            queue.push_front((rate, true));
        }
    }
    close_all(conns).await;
    if let Some(w) = worker {
        w.stop().await;
    }
    Ok(())
}

async fn overload(ctx: &Ctx<'_>, p: &Params) -> Result<(), Stop> {
    let frame_rate = manifest_frame_rate(ctx).await;
    let declared = manifest_limits(ctx).await;
    let wallets = fund_wallets(ctx, p.wallets, false, p.mint_micro).await?;
    let worker = start_worker(ctx, p).await?;
    let per = conns_for(p.rate_per_wallet, frame_rate);
    let per_wallet = vec![per; wallets.len()];
    let (conns, _) = open_sessions(ctx, &wallets, &per_wallet, "submit").await?;
    let loads = (0..wallets.len())
        .map(|i| WalletLoad {
            label: format!("w{}", i + 1),
            // With one wallet (the manifest's), it offers what all of them would.
            rate: p.rate_per_wallet * (p.wallets as f64 / wallets.len() as f64),
            conns: per,
        })
        .collect();
    let mut plan = phase_plan(p, "overload", loads, worker.as_ref());
    plan.declared = declared;
    let (conns, _, _) = run_phase(ctx, conns, &plan, worker.as_ref()).await;
    close_all(conns).await;
    if let Some(w) = worker {
        w.stop().await;
    }
    Ok(())
}

async fn fairness(ctx: &Ctx<'_>, p: &Params) -> Result<(), Stop> {
    let frame_rate = manifest_frame_rate(ctx).await;
    let wallets = fund_wallets(ctx, p.wallets + 1, true, p.mint_micro).await?;
    let worker = start_worker(ctx, p).await?;
    let light = conns_for(p.rate_per_wallet, frame_rate);
    let heavy = conns_for(p.heavy_rate, frame_rate);
    let mut per_wallet = vec![light; p.wallets];
    per_wallet.push(heavy);
    let (conns, _) = open_sessions(ctx, &wallets, &per_wallet, "submit").await?;
    let mut loads: Vec<WalletLoad> = (0..p.wallets)
        .map(|i| WalletLoad {
            label: format!("light-{}", i + 1),
            rate: p.rate_per_wallet,
            conns: light,
        })
        .collect();
    loads.push(WalletLoad {
        label: "heavy".into(),
        rate: p.heavy_rate,
        conns: heavy,
    });
    let mut plan = phase_plan(p, "fairness", loads, worker.as_ref());
    plan.track_order = worker.is_some();
    let (conns, _, _) = run_phase(ctx, conns, &plan, worker.as_ref()).await;
    close_all(conns).await;
    if let Some(w) = worker {
        w.stop().await;
    }
    Ok(())
}

async fn exactly_once(ctx: &Ctx<'_>, p: &Params) -> Result<(), Stop> {
    let frame_rate = manifest_frame_rate(ctx).await;
    let wallets = fund_wallets(ctx, p.wallets, false, p.mint_micro).await?;
    let worker = start_worker(ctx, p).await?;
    let per = conns_for(p.rate_per_wallet, frame_rate);
    let (conns, session_rate) =
        open_sessions(ctx, &wallets, &vec![per; wallets.len()], "submit").await?;
    let loads = (0..wallets.len())
        .map(|i| WalletLoad {
            label: format!("w{}", i + 1),
            rate: p.rate_per_wallet,
            conns: per,
        })
        .collect();
    let mut plan = phase_plan(p, "exactly-once", loads, worker.as_ref());
    plan.journal_all = true;
    let (conns, _, accepted) = run_phase(ctx, conns, &plan, worker.as_ref()).await;
    close_all(conns).await;
    if let Some(w) = worker {
        w.stop().await;
    }
    // Fetch every accepted intent from a new session of its wallet (EVT-11, INT-10), paced under
    // half the realm's frame rate.
    let mut by_wallet: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (w, ids) in accepted {
        by_wallet.entry(w).or_default().extend(ids);
    }
    ctx.mark(
        "load-fetch",
        &by_wallet.values().map(Vec::len).sum::<usize>().to_string(),
    );
    let pace = Duration::from_secs_f64(1.0 / (session_rate * 0.5).max(1.0));
    let jobs = by_wallet
        .into_iter()
        .filter_map(|(w, ids)| wallets.get(w).map(|who| fetch_all(ctx, w, who, ids, pace)));
    futures_util::future::join_all(jobs).await;
    ctx.mark("load-fetch-done", "");
    Ok(())
}

async fn fetch_all(ctx: &Ctx<'_>, w: usize, who: &Identity, ids: Vec<String>, pace: Duration) {
    let mut conn = match login(
        &ctx.client_url(),
        who,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    {
        Ok((c, _)) => c,
        Err(e) => {
            ctx.note(format!(
                "could not open the fetch session of wallet {w}: {e}"
            ));
            return;
        }
    };
    ctx.mark(
        "load-session",
        &json!({"conn": conn.id, "wallet": w, "role": "fetch", "key": who.public_hex()})
            .to_string(),
    );
    for id in ids {
        if Instant::now() >= ctx.deadline {
            break;
        }
        let slot = Instant::now() + pace;
        for _attempt in 0..3 {
            let fetch = event("intent.fetch", None, json!({ "intent_id": id }));
            match fetch_once(&mut conn, &fetch, ctx.within(5000)).await {
                Some(wait) => tokio::time::sleep_until(ctx.within(wait)).await,
                None => break,
            }
        }
        tokio::time::sleep_until(slot.min(ctx.deadline)).await;
    }
    conn.close().await;
}

/// Sends one fetch and waits for its reply; `Some(ms)` when it was rate-limited and should be
/// retried after `ms`.
async fn fetch_once(conn: &mut Conn, fetch: &Value, deadline: Instant) -> Option<u64> {
    let reply = conn.request(fetch, deadline).await.ok()?;
    let limited = reply.kind() == Some("error")
        && reply.body("code").and_then(Value::as_str) == Some("RATE_LIMITED");
    limited.then(|| {
        reply
            .body("retry_after_ms")
            .and_then(Value::as_u64)
            .unwrap_or(100)
            .min(2000)
    })
}

fn fmt_rate(r: f64) -> String {
    if (r - r.round()).abs() < 1e-9 {
        format!("{}", r.round() as i64)
    } else {
        format!("{r:.1}")
    }
}

// ------------------------------------------------------------------------------------------------
// Checkers

/// How one sustained-rate step went.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Every submission accepted and succeeded, corrected p99 within the objective.
    Sustained,
    /// The realm did not sustain the step.
    Failed(String),
    /// The step failed, but the generator was saturated, so the failure may be its own.
    Inconclusive(String),
}

/// Judges one step against the latency objective (`p99_ms`). Pure: the driver uses it to decide
/// whether to go on, the checker to decide the verdict.
pub fn step_outcome(r: &PhaseReport, p99_ms: f64) -> StepOutcome {
    let sent = r.total(|c| c.sent);
    let measured = r.total(|c| c.measured);
    let zero = || {
        format!(
            "zero samples: {sent} submissions sent, {measured} in the measured window, {} measured successes",
            r.corrected.count
        )
    };
    let why = if sent == 0 || measured == 0 {
        Some(zero())
    } else if let Some(c) = r.conns.iter().find(|c| c.closed.is_some()) {
        Some(format!(
            "connection {} was lost: {}",
            c.conn,
            c.closed.clone().unwrap_or_default()
        ))
    } else if r.total(|c| c.unanswered) > 0 {
        Some(format!(
            "{} of {sent} submissions got no answer",
            r.total(|c| c.unanswered)
        ))
    } else if r.total(ConnReport::refusals) > 0 {
        Some(format!(
            "{} submissions refused: {}",
            r.total(ConnReport::refusals),
            codes_line(&r.codes())
        ))
    } else if r.total(|c| c.unterminated) > 0 {
        Some(format!(
            "{} accepted intents had not ended {} ms after the last send",
            r.total(|c| c.unterminated),
            r.elapsed_ms.saturating_sub(r.warmup_ms + r.measure_ms)
        ))
    } else if r.total(|c| c.failed + c.cancelled) > 0 {
        Some(format!(
            "{} intents failed or were cancelled",
            r.total(|c| c.failed + c.cancelled)
        ))
    } else if r.corrected.count == 0 {
        Some(zero())
    } else {
        let p99 = r.corrected.at(0.99).unwrap_or(u64::MAX) as f64 / 1000.0;
        (p99 > p99_ms)
            .then(|| format!("corrected p99 {p99:.1} ms is above the objective of {p99_ms} ms"))
    };
    match why {
        None => StepOutcome::Sustained,
        Some(w) if r.generator.saturated && !w.starts_with("zero samples") => {
            StepOutcome::Inconclusive(format!(
                "{w}, but the generator was saturated ({})",
                r.generator.why.join("; ")
            ))
        }
        Some(w) => StepOutcome::Failed(w),
    }
}

fn codes_line(codes: &BTreeMap<String, u64>) -> String {
    codes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A phase as the journal holds it: its marker and the records between its start and marker.
struct PhaseRecords<'a> {
    report: PhaseReport,
    seq: u64,
    records: Vec<&'a Record>,
}

/// Parses every phase of a case. `Err` when a marker is unreadable.
fn phases<'a>(records: &[&'a Record]) -> Result<Vec<PhaseRecords<'a>>, String> {
    let mut out = Vec::new();
    let mut from = 0usize;
    for (i, r) in records.iter().enumerate() {
        let Some(m) = note(r, MARK) else { continue };
        if m.starts_with("load-start:") {
            from = i;
        } else if let Some(json) = m.strip_prefix("load-phase:") {
            let report: PhaseReport = serde_json::from_str(json)
                .map_err(|e| format!("load-phase marker #{} is unreadable: {e}", r.seq))?;
            out.push(PhaseRecords {
                report,
                seq: r.seq,
                records: records[from..i].to_vec(),
            });
        }
    }
    Ok(out)
}

/// The journaled `intent.rejected` / `error` frames of a phase's client connections (not the
/// harness worker's), per connection, with their seqs.
fn journaled_refusals<'a>(ph: &PhaseRecords<'a>) -> BTreeMap<u32, Vec<(u64, Value)>> {
    let clients: HashSet<u32> = ph.report.conns.iter().map(|c| c.conn).collect();
    let mut out: BTreeMap<u32, Vec<(u64, Value)>> = BTreeMap::new();
    for r in &ph.records {
        if let Entry::Frame {
            conn,
            dir: Dir::Recv,
            data,
        } = &r.entry
        {
            if !clients.contains(conn) {
                continue;
            }
            if let Ok(ev) = serde_json::from_str::<Value>(data) {
                if matches!(ev["type"].as_str(), Some("intent.rejected" | "error")) {
                    out.entry(*conn).or_default().push((r.seq, ev));
                }
            }
        }
    }
    out
}

/// Checks that the counters agree with the rejections journaled beside them: every refusal is
/// journaled, so the counts must match connection by connection.
fn consistency(ph: &PhaseRecords<'_>) -> Option<String> {
    let journaled = journaled_refusals(ph);
    for c in &ph.report.conns {
        let seen = journaled.get(&c.conn).map_or(0, Vec::len) as u64;
        if seen != c.rejections_journaled || c.refusals() > seen {
            return Some(format!(
                "phase {}: connection {} counts {} refusals, but the journal holds {seen}",
                ph.report.name,
                c.conn,
                c.refusals()
            ));
        }
    }
    None
}

/// Decides a `dispatch-load` case from its records.
pub fn check(spec: &CaseSpec, records: &[&Record]) -> Judgement {
    let p = Params::of(spec);
    let phases = match phases(records) {
        Ok(ph) => ph,
        Err(e) => return Judgement::new(Outcome::Unknown, e, ""),
    };
    if let Some(why) = phases.iter().find_map(consistency) {
        return Judgement::new(
            Outcome::Unknown,
            format!("the load markers disagree with the journal: {why}"),
            "",
        );
    }
    let mut j = match p.check.as_str() {
        "sustained-rate" => check_sustained(&p, &phases),
        "overload" => check_overload(&phases),
        "fairness" => check_fairness(&p, &phases),
        "exactly-once" => check_exactly_once(&phases, records),
        other => Judgement::new(
            Outcome::Unknown,
            format!("plan parameter `check` = `{other}` names no check"),
            "",
        ),
    };
    if !phases.is_empty() {
        j.load = Some(Box::new(load_result(&p, &phases)));
    }
    j
}

fn phase_line(r: &PhaseReport) -> String {
    let codes = r.codes();
    format!(
        "{}: offered {}/s over {} connection(s) and {} wallet(s) for {} ms (+{} ms warm-up): sent {}, accepted {}, refused {}{}, succeeded {}, failed {}, unanswered {}, unended {}; corrected p50 {} / p99 {} / max {} ms; achieved {}/s{}",
        r.name,
        fmt_rate(r.target_rate()),
        r.conns.len(),
        r.wallets.len(),
        r.measure_ms,
        r.warmup_ms,
        r.total(|c| c.sent),
        r.total(|c| c.accepted),
        r.total(ConnReport::refusals),
        if codes.is_empty() { String::new() } else { format!(" ({})", codes_line(&codes)) },
        r.total(|c| c.results),
        r.total(|c| c.failed),
        r.total(|c| c.unanswered),
        r.total(|c| c.unterminated),
        ms(r.corrected.at(0.5)),
        ms(r.corrected.at(0.99)),
        ms(r.corrected.at(1.0)),
        fmt_rate(r.achieved_rate()),
        if r.generator.saturated {
            format!("; GENERATOR SATURATED: {}", r.generator.why.join("; "))
        } else {
            String::new()
        }
    ) + &match r.total(|c| c.backpressured) {
        0 => String::new(),
        n => format!("; {n} sends held up by the realm's backpressure (it stopped reading)"),
    } + &r.worker.as_ref().map_or_else(String::new, |w| {
        format!(
            "; harness worker: {} tasks assigned, {} answered, {} receipts refused, {} cancelled, at most {} at once",
            w.assigned, w.answered, w.refused, w.cancels, w.max_running
        )
    })
}

fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", v as f64 / 1000.0))
}

fn check_sustained(p: &Params, phases: &[PhaseRecords<'_>]) -> Judgement {
    let observed = phases
        .iter()
        .map(|ph| phase_line(&ph.report))
        .collect::<Vec<_>>()
        .join("\n");
    if phases.is_empty() {
        return Judgement::new(Outcome::Unknown, "no rate step was run", "");
    }
    let mut best: Option<f64> = None;
    for (i, ph) in phases.iter().enumerate() {
        let rate = ph.report.target_rate();
        let outcome = step_outcome(&ph.report, p.p99_ms);
        // A failed step that was run again is decided by its second run (see `sustained`).
        let rerun = phases
            .get(i + 1)
            .is_some_and(|next| (next.report.target_rate() - rate).abs() < 1e-6);
        if rerun && outcome != StepOutcome::Sustained {
            continue;
        }
        match outcome {
            StepOutcome::Sustained => best = Some(rate),
            StepOutcome::Failed(why) if rate <= p.min_rate + 1e-9 => {
                return Judgement::new(
                    Outcome::Broken,
                    format!(
                        "the realm did not sustain {}/s (the plan's minimum is {}/s): {why}",
                        fmt_rate(rate),
                        fmt_rate(p.min_rate)
                    ),
                    observed,
                )
                .with(format!("step {}", ph.report.name), vec![ph.seq]);
            }
            StepOutcome::Inconclusive(why) if rate <= p.min_rate + 1e-9 => {
                return Judgement::new(
                    Outcome::Unknown,
                    format!("the {}/s step is undecided: {why}", fmt_rate(rate)),
                    observed,
                )
                .with(format!("step {}", ph.report.name), vec![ph.seq]);
            }
            StepOutcome::Failed(why) | StepOutcome::Inconclusive(why) => {
                return Judgement::new(
                    Outcome::Pass,
                    format!(
                        "the realm sustained {}/s (minimum {}/s) with corrected p99 within {} ms; maximum sustainable rate found: {}/s ({}/s: {why})",
                        fmt_rate(best.unwrap_or(0.0)),
                        fmt_rate(p.min_rate),
                        p.p99_ms,
                        fmt_rate(best.unwrap_or(0.0)),
                        fmt_rate(rate)
                    ),
                    observed,
                )
                .with("rate steps", phases.iter().map(|ph| ph.seq).collect());
            }
        }
    }
    match best {
        Some(b) if b + 1e-9 >= p.min_rate => Judgement::new(
            Outcome::Pass,
            format!(
                "the realm sustained every step up to {}/s (minimum {}/s) with corrected p99 within {} ms; maximum sustainable rate found: at least {}/s (the highest step tried)",
                fmt_rate(b),
                fmt_rate(p.min_rate),
                p.p99_ms,
                fmt_rate(b)
            ),
            observed,
        )
        .with("rate steps", phases.iter().map(|ph| ph.seq).collect()),
        _ => Judgement::new(
            Outcome::Unknown,
            format!(
                "the steps stopped before the plan's minimum rate of {}/s (budget)",
                fmt_rate(p.min_rate)
            ),
            observed,
        ),
    }
}

/// Codes a realm may use to refuse a submission for load (section 8.1 checks 7 and 8; 14.3 row 0).
const OVERLOAD_CODES: &[&str] = &["QUEUE_FULL", "RATE_LIMITED"];

fn check_overload(phases: &[PhaseRecords<'_>]) -> Judgement {
    let Some(ph) = phases.last() else {
        return Judgement::new(Outcome::Unknown, "the overload phase did not run", "");
    };
    let r = &ph.report;
    let observed = phase_line(r);
    let sent = r.total(|c| c.sent);
    let at = vec![ph.seq];
    if sent == 0 {
        return Judgement::new(
            Outcome::Broken,
            "zero samples: no submission was sent, so overload handling was not shown",
            observed,
        )
        .with("phase", at);
    }
    // The connections name their unanswered submissions before the phase marker is written.
    let unanswered_marks: Vec<u64> = ph
        .records
        .iter()
        .filter(|rec| note(rec, MARK).is_some_and(|m| m.starts_with("load-unanswered:")))
        .map(|rec| rec.seq)
        .take(10)
        .collect();
    let unanswered = r.total(|c| c.unanswered);
    if unanswered > 0 {
        return Judgement::new(
            Outcome::Broken,
            format!("{unanswered} of {sent} submissions got no answer at all under overload: the realm dropped them silently instead of refusing them"),
            observed,
        )
        .with("submissions left unanswered (event ids)", unanswered_marks)
        .with("phase", at);
    }
    if let Some(c) = r.conns.iter().find(|c| c.closed.is_some()) {
        return Judgement::new(
            Outcome::Broken,
            format!(
                "a client connection was lost under overload: {}",
                c.closed.clone().unwrap_or_default()
            ),
            observed,
        )
        .with("phase", at);
    }
    let refusals = journaled_refusals(ph);
    let mut capacity = 0u64;
    for (seq, ev) in refusals.values().flatten() {
        let code = ev["body"]["code"].as_str().unwrap_or("?");
        let kind = ev["type"].as_str().unwrap_or("?");
        if OVERLOAD_CODES.contains(&code) {
            capacity += 1;
            if ev["body"]["retry_after_ms"].as_u64().is_none() {
                return Judgement::new(
                    Outcome::Broken,
                    format!("a {kind} {code} under overload carries no retry_after_ms"),
                    observed,
                )
                .with("the refusal", vec![*seq]);
            }
        } else if kind == "error" || code == "INTERNAL" {
            return Judgement::new(
                Outcome::Broken,
                format!("a submission under overload was answered with {kind} {code}, not an explicit overload refusal"),
                observed,
            )
            .with("the answer", vec![*seq]);
        }
    }
    let unended = r.total(|c| c.unterminated);
    if unended > 0 {
        let seqs = ph
            .records
            .iter()
            .filter(|rec| note(rec, MARK).is_some_and(|m| m.starts_with("load-unended:")))
            .map(|rec| rec.seq)
            .take(10)
            .collect();
        return Judgement::new(
            Outcome::Broken,
            format!(
                "{unended} accepted intents had not ended {} ms after the last submission",
                r.elapsed_ms.saturating_sub(r.warmup_ms + r.measure_ms)
            ),
            observed,
        )
        .with("intents that never ended", seqs)
        .with("phase", at);
    }
    if let Some(why) = over_declared(r) {
        return Judgement::new(Outcome::Broken, why, observed).with("phase", at);
    }
    if capacity == 0 {
        return Judgement::new(
            Outcome::Unknown,
            format!(
                "the realm was never overloaded: no QUEUE_FULL or RATE_LIMITED among {sent} submissions; raise the plan's rate_per_wallet or work_ms"
            ),
            observed,
        )
        .with("phase", at);
    }
    Judgement::new(
        Outcome::Pass,
        format!(
            "under overload every one of {sent} submissions was answered: {} accepted (each ended), {capacity} refused explicitly with retry_after_ms; no connection was lost",
            r.total(|c| c.accepted)
        ),
        observed,
    )
    .with(
        "first refusals",
        refusals.values().flatten().map(|(s, _)| *s).take(5).collect(),
    )
    .with("phase", at)
}

/// How far the in-flight count the harness sees may exceed a declared limit before it counts as
/// a breach. The harness sees an intent in flight from `intent.accepted` until its terminal
/// event arrives, a little longer than the realm holds its slot (the slot frees before the
/// settlement is announced), so a quarter of the limit (at least 4) is allowed on top. Measured
/// on the reference realm: peaks of 64-65 per wallet against a limit of 64; a realm without the
/// limit reached 128 in the same phase.
pub fn inflight_allowance(limit: u64) -> u64 {
    limit + (limit / 4).max(4)
}

/// SQ-1 / SQ-2: the realm held more intents in flight, for one wallet or in all, than its
/// manifest declares it ever admits (beyond [`inflight_allowance`]).
pub fn over_declared(r: &PhaseReport) -> Option<String> {
    let d = r.declared?;
    if let Some(limit) = d.per_wallet_inflight.filter(|l| *l > 0) {
        let allowed = inflight_allowance(limit);
        if let Some((w, peak)) = r
            .peak_inflight
            .iter()
            .enumerate()
            .find(|(_, p)| **p > allowed)
        {
            let label = r.wallets.get(w).map_or("?", |x| x.label.as_str());
            return Some(format!(
                "wallet {label} had {peak} intents accepted and not yet ended at once, above the manifest's per_wallet_inflight = {limit} (allowance {allowed}): the realm admits beyond its declared limit instead of refusing (SQ-1, SQ-2)"
            ));
        }
    }
    if let Some(cap) = d.queue_capacity.filter(|c| *c > 0) {
        let allowed = inflight_allowance(cap);
        if r.peak_inflight_total > allowed {
            return Some(format!(
                "{} intents were accepted and not yet ended at once, above the manifest's queue_capacity = {cap} (allowance {allowed}): the queue is not bounded as declared (SQ-1, SQ-2)",
                r.peak_inflight_total
            ));
        }
    }
    None
}

/// Max-min fair allocation of `capacity` among `demands` (water filling).
pub fn max_min_fair(demands: &[f64], capacity: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|a, b| demands[*a].total_cmp(&demands[*b]));
    let mut out = vec![0.0; demands.len()];
    let mut left = capacity.max(0.0);
    for (k, &i) in order.iter().enumerate() {
        let share = left / (order.len() - k) as f64;
        let give = demands[i].min(share);
        out[i] = give;
        left -= give;
    }
    out
}

/// Jain's fairness index of `xs`: 1 when all are equal, 1/n when one takes everything.
pub fn jain(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let sum: f64 = xs.iter().sum();
    let sq: f64 = xs.iter().map(|x| x * x).sum();
    if n == 0.0 || sq == 0.0 {
        0.0
    } else {
        sum * sum / (n * sq)
    }
}

/// Per-wallet offered and served rates of a phase, with their fair shares.
fn shares(r: &PhaseReport) -> Vec<WalletShare> {
    let secs = r.measure_ms.max(1) as f64 / 1000.0;
    let offered: Vec<f64> = (0..r.wallets.len())
        .map(|w| {
            r.conns
                .iter()
                .filter(|c| c.wallet == w)
                .map(|c| c.measured)
                .sum::<u64>() as f64
                / secs
        })
        .collect();
    let served: Vec<f64> = (0..r.wallets.len())
        .map(|w| {
            r.conns
                .iter()
                .filter(|c| c.wallet == w)
                .map(|c| c.window_results)
                .sum::<u64>() as f64
                / secs
        })
        .collect();
    let fair = max_min_fair(&offered, served.iter().sum());
    r.wallets
        .iter()
        .enumerate()
        .map(|(i, w)| WalletShare {
            label: w.label.clone(),
            offered_rate: round3(offered[i]),
            served_rate: round3(served[i]),
            fair_rate: round3(fair[i]),
            normalized: round3(if fair[i] > 0.0 {
                served[i] / fair[i]
            } else {
                0.0
            }),
        })
        .collect()
}

fn check_fairness(p: &Params, phases: &[PhaseRecords<'_>]) -> Judgement {
    let Some(ph) = phases.last() else {
        return Judgement::new(Outcome::Unknown, "the fairness phase did not run", "");
    };
    let r = &ph.report;
    let s = shares(r);
    let table = s
        .iter()
        .map(|w| {
            format!(
                "{}: offered {}/s, served {}/s, fair share {}/s, normalised {:.3}",
                w.label, w.offered_rate, w.served_rate, w.fair_rate, w.normalized
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let served: f64 = s.iter().map(|w| w.served_rate).sum();
    let offered: f64 = s.iter().map(|w| w.offered_rate).sum();
    let xs: Vec<f64> = s.iter().map(|w| w.normalized).collect();
    let index = round3(jain(&xs));
    let order = r.order.as_ref().map_or_else(String::new, |o| {
        format!(
            "\novertaking (dispatch order at the harness worker): {} intents observed, p99 {}, max {}",
            o.observed, o.p99_overtaken, o.max_overtaken
        )
    });
    let observed = format!("{}\n{table}\nJain's index {index}{order}", phase_line(r));
    let at = vec![ph.seq];
    if served <= 0.0 {
        return Judgement::new(
            Outcome::Broken,
            "zero samples: no intent succeeded inside the measured window",
            observed,
        )
        .with("phase", at);
    }
    if served >= 0.9 * offered {
        return Judgement::new(
            Outcome::Unknown,
            format!(
                "the realm was not overloaded (served {served:.1}/s of {offered:.1}/s offered), so fairness under overload was not exercised; raise the plan's rates or work_ms"
            ),
            observed,
        )
        .with("phase", at);
    }
    // SQ-11: at most 4 × n other wallets' intents dispatched ahead of a queued one. `n` is taken
    // as every other wallet of the phase (an upper bound), plus two for observing acceptance and
    // dispatch on different connections.
    if let Some(o) = &r.order {
        let bound = 4 * o.wallets.saturating_sub(1) + 2;
        if o.observed > 0 && o.max_overtaken > bound {
            let who = o
                .worst_wallet
                .and_then(|w| r.wallets.get(w))
                .map_or("?", |w| w.label.as_str());
            return Judgement::new(
                Outcome::Broken,
                format!(
                    "an intent of wallet {who} at the head of its wallet's queue was overtaken by {} intents of other wallets before its dispatch; SQ-11 allows at most 4 × {} (+2 for observation)",
                    o.max_overtaken,
                    o.wallets.saturating_sub(1)
                ),
                format!("{observed}\novertaking: {} intents observed, p99 {}, max {}", o.observed, o.p99_overtaken, o.max_overtaken),
            )
            .with("phase", at);
        }
    }
    if index < p.min_jain {
        return Judgement::new(
            Outcome::Broken,
            format!(
                "under overload the wallets' shares are unfair: Jain's index {index} is below {} (each wallet's throughput divided by its max-min fair share)",
                p.min_jain
            ),
            observed,
        )
        .with("phase", at);
    }
    if let Some(w) = s.iter().find(|w| w.normalized < p.min_share) {
        return Judgement::new(
            Outcome::Broken,
            format!(
                "wallet {} was starved: it got {:.0} % of its fair share (at least {:.0} % required)",
                w.label,
                w.normalized * 100.0,
                p.min_share * 100.0
            ),
            observed,
        )
        .with("phase", at);
    }
    Judgement::new(
        Outcome::Pass,
        format!(
            "under overload ({served:.1}/s served of {offered:.1}/s offered) the wallets got fair shares: Jain's index {index} ≥ {}, every wallet at least {:.0} % of its fair share",
            p.min_jain,
            p.min_share * 100.0
        ),
        observed,
    )
    .with("phase", at)
}

fn check_exactly_once(phases: &[PhaseRecords<'_>], records: &[&Record]) -> Judgement {
    let Some(ph) = phases.last() else {
        return Judgement::new(Outcome::Unknown, "the load phase did not run", "");
    };
    let observed_phase = phase_line(&ph.report);
    // Which connection is whose, and for what.
    let mut role: HashMap<u32, (usize, String)> = HashMap::new();
    for r in records {
        if let Some(v) = note(r, MARK).and_then(|m| m.strip_prefix("load-session:")) {
            if let Ok(v) = serde_json::from_str::<Value>(v) {
                if let (Some(c), Some(w), Some(ro)) = (
                    v["conn"].as_u64().and_then(|c| u32::try_from(c).ok()),
                    v["wallet"].as_u64().and_then(|w| usize::try_from(w).ok()),
                    v["role"].as_str(),
                ) {
                    role.insert(c, (w, ro.to_owned()));
                }
            }
        }
    }
    struct Sub {
        fail: bool,
        nonce: String,
    }
    let mut submits: HashMap<String, (u32, Sub)> = HashMap::new();
    // intent id -> (submit conn, submit id, accepted seq)
    let mut accepted: BTreeMap<String, (u32, String, u64)> = BTreeMap::new();
    let mut terminals: HashMap<String, Vec<(u64, u32, Value)>> = HashMap::new();
    let mut fetches: HashMap<String, (u32, String)> = HashMap::new();
    let mut statuses: HashMap<String, (u64, Value)> = HashMap::new();
    // Fetches refused with anything but RATE_LIMITED (which the driver retries).
    let mut refused_fetches: HashMap<String, (u64, String)> = HashMap::new();
    let mut fetch_started = false;
    for r in records {
        if note(r, MARK).is_some_and(|m| m.starts_with("load-fetch:")) {
            fetch_started = true;
        }
        let Entry::Frame { conn, dir, data } = &r.entry else {
            continue;
        };
        let Ok(ev) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let kind = ev["type"].as_str().unwrap_or("");
        let is_submit_conn = role.get(conn).is_some_and(|(_, ro)| ro == "submit");
        match (dir, kind) {
            (Dir::Send, "intent.submit") if is_submit_conn => {
                let id = ev["id"].as_str().unwrap_or("").to_owned();
                submits.insert(
                    id,
                    (
                        *conn,
                        Sub {
                            fail: ev["body"]["input"]["fail"] == true,
                            nonce: ev["body"]["input"]["nonce"]
                                .as_str()
                                .unwrap_or("")
                                .to_owned(),
                        },
                    ),
                );
            }
            (Dir::Recv, "intent.accepted") => {
                let corr = ev["corr"].as_str().unwrap_or("");
                if let (Some(intent), Some((c, _))) =
                    (ev["body"]["intent_id"].as_str(), submits.get(corr))
                {
                    if *c == *conn {
                        accepted.insert(intent.to_owned(), (*conn, corr.to_owned(), r.seq));
                    }
                }
            }
            (Dir::Recv, "intent.result" | "intent.failed" | "intent.cancelled") => {
                let intent = ev["body"]["intent_id"].as_str().unwrap_or("").to_owned();
                terminals
                    .entry(intent)
                    .or_default()
                    .push((r.seq, *conn, ev));
            }
            (Dir::Send, "intent.fetch") if fetch_started => {
                let id = ev["id"].as_str().unwrap_or("").to_owned();
                let intent = ev["body"]["intent_id"].as_str().unwrap_or("").to_owned();
                fetches.insert(id, (*conn, intent));
            }
            (Dir::Recv, "intent.status") if fetch_started => {
                let corr = ev["corr"].as_str().unwrap_or("");
                if let Some((c, intent)) = fetches.get(corr) {
                    if c == conn {
                        statuses.insert(intent.clone(), (r.seq, ev));
                    }
                }
            }
            (Dir::Recv, "error") if fetch_started => {
                let corr = ev["corr"].as_str().unwrap_or("");
                let code = ev["body"]["code"].as_str().unwrap_or("?");
                if let Some((c, intent)) = fetches.get(corr) {
                    if c == conn && code != "RATE_LIMITED" {
                        refused_fetches.insert(intent.clone(), (r.seq, code.to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    let n = accepted.len();
    let observed = |extra: String| format!("{observed_phase}\n{extra}");
    if n == 0 {
        return Judgement::new(
            Outcome::Broken,
            "zero samples: no submission was accepted, so exactly-once delivery was not shown",
            observed(format!("{} submissions journaled", submits.len())),
        )
        .with("phase", vec![ph.seq]);
    }
    // Terminal events for intents this case never had accepted on that connection (INT-5).
    for (intent, list) in &terminals {
        for (seq, conn, _) in list {
            if accepted.get(intent).is_none_or(|(c, _, _)| c != conn) {
                return Judgement::new(
                    Outcome::Broken,
                    format!("a terminal event for intent {intent} reached connection {conn}, which is not attached to it"),
                    observed(String::new()),
                )
                .with("the stray terminal event", vec![*seq]);
            }
        }
    }
    let mut succeeded = 0usize;
    let mut failed = 0usize;
    for (intent, (conn, submit, acc_seq)) in &accepted {
        let list = terminals.get(intent).map(Vec::as_slice).unwrap_or(&[]);
        let sub = submits.get(submit).map(|(_, s)| s);
        match list {
            [] => {
                return Judgement::new(
                    Outcome::Broken,
                    format!("accepted intent {intent} never got a terminal event"),
                    observed(format!("{n} accepted intents")),
                )
                .with("its acceptance", vec![*acc_seq]);
            }
            [(seq, _, ev)] => {
                let kind = ev["type"].as_str().unwrap_or("");
                let want_fail = sub.is_some_and(|s| s.fail);
                let ok = match (kind, want_fail) {
                    ("intent.result", false) => {
                        let nonce = sub.map(|s| s.nonce.as_str()).unwrap_or("");
                        succeeded += 1;
                        ev["body"]["output"]["nonce"].as_str() == Some(nonce)
                            && ev["body"]["output"]["digest"].as_str()
                                == Some(crate::scripted::probe_digest(nonce).as_str())
                    }
                    ("intent.failed", true) => {
                        failed += 1;
                        ev["body"]["code"] == "WORKER_FAILED"
                    }
                    _ => false,
                };
                if !ok {
                    return Judgement::new(
                        Outcome::Broken,
                        format!(
                            "intent {intent} ended with a terminal event that does not match it ({kind}; the probe {} to fail)",
                            if want_fail { "asked" } else { "did not ask" }
                        ),
                        observed(ev.to_string()),
                    )
                    .with("acceptance and terminal event", vec![*acc_seq, *seq]);
                }
            }
            [(first, _, _), (second, _, _), ..] => {
                return Judgement::new(
                    Outcome::Broken,
                    format!(
                        "intent {intent} got {} terminal events on connection {conn}; exactly one is allowed",
                        list.len()
                    ),
                    observed(format!("{n} accepted intents")),
                )
                .with("acceptance and the repeated terminal events", vec![*acc_seq, *first, *second]);
            }
        }
    }
    // A new session of the same wallet must report the same end.
    let mut missing = Vec::new();
    for (intent, (_, _, acc_seq)) in &accepted {
        let Some((seq, st)) = statuses.get(intent) else {
            if let Some((seq, code)) = refused_fetches.get(intent) {
                return Judgement::new(
                    Outcome::Broken,
                    format!("a fetch of accepted intent {intent} from a new session of its wallet was answered with error {code}"),
                    observed(String::new()),
                )
                .with("acceptance and the refused fetch", vec![*acc_seq, *seq]);
            }
            missing.push(*acc_seq);
            continue;
        };
        let Some((tseq, _, term)) = terminals.get(intent).and_then(|l| l.first()) else {
            continue;
        };
        let state = st["body"]["state"].as_str().unwrap_or("");
        let agrees = match term["type"].as_str() {
            Some("intent.result") => {
                state == "succeeded"
                    && st["body"]["output"] == term["body"]["output"]
                    && st["body"]["cost"] == term["body"]["cost"]
            }
            Some("intent.failed") => {
                matches!(state, "failed" | "dead") && st["body"]["code"] == term["body"]["code"]
            }
            Some("intent.cancelled") => state == "cancelled",
            _ => false,
        };
        if !agrees {
            return Judgement::new(
                Outcome::Broken,
                format!("a fetch of intent {intent} from a new session disagrees with its terminal event (state `{state}`)"),
                observed(st.to_string()),
            )
            .with("terminal event and fetched status", vec![*tseq, *seq]);
        }
    }
    if !missing.is_empty() {
        return Judgement::new(
            Outcome::Unknown,
            format!(
                "{} of {n} accepted intents were not fetched from a new session (budget or connection)",
                missing.len()
            ),
            observed(String::new()),
        )
        .with("acceptances without a fetched status", missing.into_iter().take(10).collect());
    }
    Judgement::new(
        Outcome::Pass,
        format!(
            "each of {n} accepted intents ({succeeded} succeeded, {failed} failed on request) ended with exactly one matching terminal event, and a fetch from a new session of its wallet agreed"
        ),
        observed(format!(
            "{} submissions, {n} accepted, {} fetched",
            submits.len(),
            statuses.len()
        )),
    )
    .with("phase", vec![ph.seq])
}

// ------------------------------------------------------------------------------------------------
// What results.json and the report carry

/// One point of a latency table: `q` in percent (99.9), `ms` milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percentile {
    /// Percentile, 0 to 100.
    pub q: f64,
    /// Latency at it, milliseconds.
    pub ms: f64,
}

/// A latency distribution as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyView {
    /// Values recorded.
    pub count: u64,
    /// The percentile table.
    pub percentiles: Vec<Percentile>,
}

impl From<&HistSummary> for LatencyView {
    fn from(h: &HistSummary) -> Self {
        Self {
            count: h.count,
            percentiles: h
                .pcts
                .iter()
                .map(|(q, us)| Percentile {
                    q: round3(q * 100.0),
                    ms: round3(*us as f64 / 1000.0),
                })
                .collect(),
        }
    }
}

/// One phase as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseView {
    /// Phase name.
    pub name: String,
    /// Offered intents/s.
    pub target_rate: f64,
    /// Successes per second inside the measured window.
    pub achieved_rate: f64,
    /// Measured window, milliseconds.
    pub measure_ms: u64,
    /// Connections.
    pub connections: usize,
    /// Wallets.
    pub wallets: usize,
    /// Submissions sent.
    pub sent: u64,
    /// Accepted.
    pub accepted: u64,
    /// Refused (`intent.rejected` or `error`).
    pub refused: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Unanswered.
    pub unanswered: u64,
    /// Accepted but never ended.
    pub unended: u64,
    /// Sustained-rate steps: whether the realm sustained it.
    pub sustained: Option<bool>,
    /// Whether the generator was saturated during it.
    pub saturated: bool,
    /// Intended send to terminal event.
    pub corrected: LatencyView,
    /// Actual send to terminal event.
    pub uncorrected: LatencyView,
}

/// The generator's account over the case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorView {
    /// Frames the generator sent and received.
    pub events: u64,
    /// Its CPU microseconds per event (null off Linux).
    pub cpu_us_per_event: Option<f64>,
    /// Events per second one core of the generator can drive at that cost.
    pub events_per_core_s: Option<f64>,
    /// Sends more than 10 ms late.
    pub late_sends: u64,
    /// Sends dropped (too far behind schedule).
    pub dropped_sends: u64,
    /// Sends held up because the realm stopped reading (its delay, not the generator's).
    pub backpressured_sends: u64,
    /// Whether any phase saturated it.
    pub saturated: bool,
    /// The warning the report shows when it was saturated.
    pub warning: Option<String>,
}

/// One wallet's share under overload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletShare {
    /// Wallet label.
    pub label: String,
    /// Offered intents/s.
    pub offered_rate: f64,
    /// Succeeded intents/s inside the window.
    pub served_rate: f64,
    /// Its max-min fair share of what was served, intents/s.
    pub fair_rate: f64,
    /// `served_rate / fair_rate`.
    pub normalized: f64,
}

/// Fairness as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairnessView {
    /// Jain's index of the normalised shares.
    pub jain: f64,
    /// The plan's threshold.
    pub min_jain: f64,
    /// Per wallet.
    pub wallets: Vec<WalletShare>,
}

/// The load data of a case in `results.json`, from which the report draws its charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadResult {
    /// The generator's account.
    pub generator: GeneratorView,
    /// The phases, in order.
    pub phases: Vec<PhaseView>,
    /// The corrected-p99 objective, milliseconds (sustained-rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_p99_ms: Option<f64>,
    /// The highest step sustained (sustained-rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sustainable_rate: Option<f64>,
    /// Shares under overload (fairness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness: Option<FairnessView>,
}

fn load_result(p: &Params, phases: &[PhaseRecords<'_>]) -> LoadResult {
    let sustained = p.check == "sustained-rate";
    let mut best = None;
    let mut stopped = false;
    let views = phases
        .iter()
        .map(|ph| {
            let r = &ph.report;
            let outcome = sustained.then(|| step_outcome(r, p.p99_ms));
            if let Some(o) = &outcome {
                if !stopped && *o == StepOutcome::Sustained {
                    best = Some(r.target_rate());
                } else {
                    stopped = true;
                }
            }
            PhaseView {
                name: r.name.clone(),
                target_rate: round3(r.target_rate()),
                achieved_rate: r.achieved_rate(),
                measure_ms: r.measure_ms,
                connections: r.conns.len(),
                wallets: r.wallets.len(),
                sent: r.total(|c| c.sent),
                accepted: r.total(|c| c.accepted),
                refused: r.total(ConnReport::refusals),
                succeeded: r.total(|c| c.results),
                failed: r.total(|c| c.failed),
                unanswered: r.total(|c| c.unanswered),
                unended: r.total(|c| c.unterminated),
                sustained: outcome.map(|o| o == StepOutcome::Sustained),
                saturated: r.generator.saturated,
                corrected: LatencyView::from(&r.corrected),
                uncorrected: LatencyView::from(&r.uncorrected),
            }
        })
        .collect();
    let events: u64 = phases.iter().map(|ph| ph.report.generator.events).sum();
    let cpu: Option<f64> = phases
        .iter()
        .map(|ph| ph.report.generator.cpu_ms)
        .sum::<Option<f64>>();
    let cpu_us_per_event = cpu
        .filter(|_| events > 0)
        .map(|c| round3(c * 1000.0 / events as f64));
    let saturated: Vec<String> = phases
        .iter()
        .filter(|ph| ph.report.generator.saturated)
        .map(|ph| format!("{}: {}", ph.report.name, ph.report.generator.why.join("; ")))
        .collect();
    let generator = GeneratorView {
        events,
        cpu_us_per_event,
        events_per_core_s: cpu_us_per_event
            .filter(|c| *c > 0.0)
            .map(|c| (1_000_000.0 / c).round()),
        late_sends: phases.iter().map(|ph| ph.report.total(|c| c.late)).sum(),
        dropped_sends: phases.iter().map(|ph| ph.report.total(|c| c.dropped)).sum(),
        backpressured_sends: phases
            .iter()
            .map(|ph| ph.report.total(|c| c.backpressured))
            .sum(),
        saturated: !saturated.is_empty(),
        warning: (!saturated.is_empty()).then(|| {
            format!(
                "The load generator was saturated, so its numbers may understate what the realm can do (a saturated step is never counted against the realm). {}",
                saturated.join(" | ")
            )
        }),
    };
    let fairness = (p.check == "fairness").then(|| {
        let r = &phases[phases.len() - 1].report;
        let wallets = shares(r);
        FairnessView {
            jain: round3(jain(
                &wallets.iter().map(|w| w.normalized).collect::<Vec<_>>(),
            )),
            min_jain: p.min_jain,
            wallets,
        }
    });
    LoadResult {
        generator,
        phases: views,
        objective_p99_ms: sustained.then_some(p.p99_ms),
        max_sustainable_rate: best.map(round3),
        fairness,
    }
}

// ------------------------------------------------------------------------------------------------
// The HTML report's view

/// The report's view of a case's load data: tables, the geometry of an inline-SVG latency
/// percentile chart, and the generator's warning. A pure function of [`LoadResult`], so the
/// report renders from `results.json` alone; the template only places it.
#[derive(Debug, Clone, Serialize)]
pub struct LoadHtml {
    /// Shown prominently when the generator was saturated.
    pub warning: Option<String>,
    /// One line about the generator's cost.
    pub generator: String,
    /// One line about the maximum sustainable rate or fairness, if any.
    pub summary: Option<String>,
    /// One row per phase.
    pub phases: Vec<PhaseRow>,
    /// The percentile chart, when some phase has latencies.
    pub chart: Option<LatencyChart>,
    /// Per-wallet shares (fairness).
    pub shares: Vec<WalletShare>,
}

/// One phase in the report's table.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRow {
    /// Name.
    pub name: String,
    /// Offered intents/s.
    pub offered: String,
    /// Successes/s inside the window.
    pub achieved: String,
    /// Counters.
    pub sent: u64,
    /// Accepted.
    pub accepted: u64,
    /// Refused.
    pub refused: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Unanswered plus unended.
    pub lost: u64,
    /// Corrected p50, p99, p99.9, max (ms).
    pub p50: String,
    /// p99.
    pub p99: String,
    /// p99.9.
    pub p999: String,
    /// Max.
    pub max: String,
    /// `sustained`, `missed`, or empty.
    pub status: String,
    /// Whether the generator was saturated.
    pub saturated: bool,
}

/// A tick or a labelled position on an axis (pixels).
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Pixel position along the axis.
    pub pos: f64,
    /// Label.
    pub label: String,
}

/// One line of the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// SVG polyline points, `x,y x,y ...`.
    pub points: String,
    /// Stroke colour.
    pub color: &'static str,
    /// Dashed (uncorrected) or solid (corrected).
    pub dashed: bool,
    /// Legend text.
    pub label: String,
    /// Legend position (pixels from the top).
    pub legend_y: f64,
}

/// A latency-by-percentile chart (HdrHistogram's usual plot): x is the percentile on a log scale
/// of 1 / (1 - p), y the latency in milliseconds; corrected lines solid, uncorrected dashed.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyChart {
    /// SVG width.
    pub width: f64,
    /// SVG height.
    pub height: f64,
    /// Plot area left edge.
    pub left: f64,
    /// Plot area top edge.
    pub top: f64,
    /// Plot area right edge.
    pub right: f64,
    /// Plot area bottom edge.
    pub bottom: f64,
    /// Percentile ticks.
    pub x_ticks: Vec<Tick>,
    /// Latency ticks.
    pub y_ticks: Vec<Tick>,
    /// `latency` or `latency (log scale)`.
    pub y_label: &'static str,
    /// The lines.
    pub series: Vec<Series>,
    /// The latency objective, if any, as a horizontal line.
    pub objective: Option<Tick>,
    /// Whether the objective lies above the scale (named, not drawn).
    pub objective_above: bool,
    /// Legend x.
    pub legend_x: f64,
}

const PALETTE: [&str; 8] = [
    "#0969da", "#1a7f37", "#bc4c00", "#8250df", "#cf222e", "#9a6700", "#1b7c83", "#57606a",
];

/// x position (0 to 5.5) of percentile `q` (0 to 100): log10(1 / (1 - q)), the maximum at 5.5.
fn percentile_x(q: f64) -> f64 {
    if q >= 100.0 {
        5.5
    } else {
        (100.0 / (100.0 - q)).log10().clamp(0.0, 5.0)
    }
}

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn chart(result: &LoadResult) -> Option<LatencyChart> {
    let (left, top, right, bottom) = (64.0, 22.0, 520.0, 262.0);
    let phases: Vec<&PhaseView> = result
        .phases
        .iter()
        .filter(|p| p.corrected.count > 0)
        .collect();
    if phases.is_empty() {
        return None;
    }
    let data_max = phases
        .iter()
        .flat_map(|p| {
            p.corrected
                .percentiles
                .iter()
                .chain(&p.uncorrected.percentiles)
        })
        .map(|p| p.ms)
        .fold(0.0, f64::max);
    // The objective widens the scale only when it is near the data; far above, it would flatten
    // every line, so it is named at the top instead.
    let objective_in = result
        .objective_p99_ms
        .filter(|o| *o <= 2.0 * data_max.max(1.0));
    // Phases an order of magnitude apart (rate steps) share a log scale, so the fast ones are
    // not flattened against the axis by the slow ones.
    let maxima: Vec<f64> = phases
        .iter()
        .map(|p| {
            p.corrected
                .percentiles
                .iter()
                .map(|q| q.ms)
                .fold(0.0, f64::max)
        })
        .collect();
    let smallest = maxima.iter().copied().fold(f64::INFINITY, f64::min);
    let log = smallest > 0.0 && data_max / smallest > 10.0;
    let top_ms = data_max.max(objective_in.unwrap_or(0.0));
    let (y_lo, y_hi) = if log {
        let least = phases
            .iter()
            .flat_map(|p| {
                p.corrected
                    .percentiles
                    .iter()
                    .chain(&p.uncorrected.percentiles)
            })
            .map(|p| p.ms)
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min)
            .max(0.001);
        (
            10f64.powf(least.log10().floor()),
            10f64.powf(top_ms.log10().ceil()),
        )
    } else {
        (0.0, nice_ceiling(top_ms))
    };
    let x = |q: f64| left + (right - left) * percentile_x(q) / 5.5;
    let y = |ms: f64| {
        let f = if log {
            (ms.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()).max(1e-9)
        } else {
            ms / y_hi
        };
        bottom - (bottom - top) * f.clamp(0.0, 1.0)
    };
    let line = |v: &LatencyView| {
        v.percentiles
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.q), y(p.ms)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut series = Vec::new();
    for (i, p) in phases.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        series.push(Series {
            points: line(&p.corrected),
            color,
            dashed: false,
            label: format!("{} corrected", p.name),
            legend_y: 0.0,
        });
        if p.uncorrected.count > 0 {
            series.push(Series {
                points: line(&p.uncorrected),
                color,
                dashed: true,
                label: format!("{} uncorrected", p.name),
                legend_y: 0.0,
            });
        }
    }
    for (i, s) in series.iter_mut().enumerate() {
        s.legend_y = top + 8.0 + 16.0 * i as f64;
    }
    let height = (bottom + 36.0).max(top + 24.0 + 16.0 * series.len() as f64);
    Some(LatencyChart {
        width: 760.0,
        height,
        left,
        top,
        right,
        bottom,
        x_ticks: [
            (0.0, "0%"),
            (90.0, "90%"),
            (99.0, "99%"),
            (99.9, "99.9%"),
            (99.99, "99.99%"),
            (99.999, "99.999%"),
            (100.0, "max"),
        ]
        .iter()
        .map(|(q, l)| Tick {
            pos: round1(x(*q)),
            label: (*l).to_owned(),
        })
        .collect(),
        y_ticks: if log {
            let (a, b) = (y_lo.log10().round() as i32, y_hi.log10().round() as i32);
            (a..=b)
                .map(|e| {
                    let ms = 10f64.powi(e);
                    Tick {
                        pos: round1(y(ms)),
                        label: format!("{} ms", fmt_ms(ms)),
                    }
                })
                .collect()
        } else {
            (0..=4)
                .map(|i| {
                    let ms = y_hi * f64::from(i) / 4.0;
                    Tick {
                        pos: round1(y(ms)),
                        label: if i == 0 {
                            "0 ms".to_owned()
                        } else {
                            format!("{} ms", fmt_ms(ms))
                        },
                    }
                })
                .collect()
        },
        y_label: if log {
            "latency (log scale)"
        } else {
            "latency"
        },
        series,
        objective_above: objective_in.is_none(),
        objective: result.objective_p99_ms.map(|o| match objective_in {
            Some(_) => Tick {
                pos: round1(y(o)),
                label: format!("objective: p99 ≤ {} ms", fmt_ms(o)),
            },
            None => Tick {
                pos: top - 8.0,
                label: format!("objective: p99 ≤ {} ms (above this scale)", fmt_ms(o)),
            },
        }),
        legend_x: right + 16.0,
    })
}

/// The report's view of a case's load data.
pub fn html_view(result: &LoadResult) -> LoadHtml {
    let g = &result.generator;
    let generator = format!(
        "Generator: {} events (frames sent and received, client and harness worker); {}; {} late and {} dropped sends; {} sends held up by the realm's backpressure.",
        g.events,
        match (g.cpu_us_per_event, g.events_per_core_s) {
            (Some(c), Some(e)) => format!("{c:.1} µs of harness CPU per event, about {e:.0} events/s per core"),
            _ => "CPU time not measured on this platform".to_owned(),
        },
        g.late_sends,
        g.dropped_sends,
        g.backpressured_sends
    );
    let at = |v: &LatencyView, q: f64| {
        v.percentiles
            .iter()
            .find(|p| (p.q - q).abs() < 1e-6)
            .map_or_else(|| "-".to_owned(), |p| fmt_ms(p.ms))
    };
    let phases = result
        .phases
        .iter()
        .map(|p| PhaseRow {
            name: p.name.clone(),
            offered: fmt_rate(p.target_rate),
            achieved: fmt_rate(p.achieved_rate),
            sent: p.sent,
            accepted: p.accepted,
            refused: p.refused,
            succeeded: p.succeeded,
            lost: p.unanswered + p.unended,
            p50: at(&p.corrected, 50.0),
            p99: at(&p.corrected, 99.0),
            p999: at(&p.corrected, 99.9),
            max: at(&p.corrected, 100.0),
            status: match p.sustained {
                Some(true) => "sustained".into(),
                Some(false) => "missed".into(),
                None => String::new(),
            },
            saturated: p.saturated,
        })
        .collect();
    let summary = match (&result.max_sustainable_rate, &result.fairness) {
        (Some(r), _) => Some(format!(
            "Maximum sustainable rate found: {}/s (corrected p99 within {} ms).",
            fmt_rate(*r),
            result.objective_p99_ms.map_or_else(|| "-".into(), fmt_ms)
        )),
        (None, Some(f)) => Some(format!(
            "Jain's index of the normalised shares: {:.3} (threshold {}).",
            f.jain, f.min_jain
        )),
        _ => None,
    };
    LoadHtml {
        warning: g.warning.clone(),
        generator,
        summary,
        phases,
        chart: chart(result),
        shares: result
            .fairness
            .as_ref()
            .map(|f| f.wallets.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_for_equal_shares_and_low_for_a_hog() {
        assert!((jain(&[1.0, 1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        // The worst schedule SQ-11 allows for six wallets stays above the plan's 0.9.
        let n = 6.0;
        let worst =
            (1.0 + 4.0 * (n - 1.0)) * (1.0 + 4.0 * (n - 1.0)) / (n * (1.0 + 16.0 * (n - 1.0)));
        assert!(worst > 0.9, "{worst}");
    }

    #[test]
    fn water_filling_gives_small_demands_in_full() {
        let f = max_min_fair(&[10.0, 100.0, 100.0], 90.0);
        assert_eq!(f, vec![10.0, 40.0, 40.0]);
        let f = max_min_fair(&[10.0, 20.0], 100.0);
        assert_eq!(f, vec![10.0, 20.0]);
    }

    fn step(rate: f64, p99_us: u64, saturated: bool) -> PhaseReport {
        PhaseReport {
            name: format!("step-{rate}"),
            wallets: vec![WalletLoad {
                label: "w1".into(),
                rate,
                conns: 1,
            }],
            measure_ms: 1000,
            conns: vec![ConnReport {
                sent: 10,
                measured: 10,
                answered: 10,
                accepted: 10,
                results: 10,
                ..ConnReport::default()
            }],
            corrected: HistSummary {
                count: 10,
                mean_us: 1.0,
                pcts: vec![(0.99, p99_us)],
            },
            generator: GenReport {
                saturated,
                why: vec!["busy".into()],
                ..GenReport::default()
            },
            ..PhaseReport::default()
        }
    }

    #[test]
    fn in_flight_beyond_the_declared_limit_and_its_allowance_is_a_breach() {
        let mut r = step(100.0, 5_000, false);
        r.peak_inflight = vec![80];
        r.peak_inflight_total = 80;
        assert_eq!(
            over_declared(&r),
            None,
            "no declared limits, nothing to hold"
        );
        r.declared = Some(DeclaredLimits {
            per_wallet_inflight: Some(64),
            queue_capacity: Some(1000),
        });
        assert_eq!(inflight_allowance(64), 80);
        assert_eq!(inflight_allowance(8), 12);
        assert_eq!(over_declared(&r), None, "at the allowance: not a breach");
        r.peak_inflight = vec![81];
        assert!(over_declared(&r).is_some_and(|w| w.contains("per_wallet_inflight = 64")));
        r.peak_inflight = vec![10];
        r.peak_inflight_total = 1251;
        assert!(over_declared(&r).is_some_and(|w| w.contains("queue_capacity = 1000")));
    }

    #[test]
    fn steps_are_judged_against_the_objective_and_saturation_is_never_held_against_the_realm() {
        assert_eq!(
            step_outcome(&step(100.0, 5_000, false), 10.0),
            StepOutcome::Sustained
        );
        assert!(matches!(
            step_outcome(&step(100.0, 50_000, false), 10.0),
            StepOutcome::Failed(_)
        ));
        assert!(matches!(
            step_outcome(&step(100.0, 50_000, true), 10.0),
            StepOutcome::Inconclusive(_)
        ));
        let mut zero = step(100.0, 5_000, true);
        zero.conns[0].sent = 0;
        assert!(
            matches!(step_outcome(&zero, 10.0), StepOutcome::Failed(w) if w.starts_with("zero samples"))
        );
    }

    #[test]
    fn the_minimum_rate_is_always_a_step() {
        let spec: CaseSpec = toml::from_str(
            "id = \"dispatch.x\"\ntitle = \"t\"\nrequirements = [\"SQ-3\"]\nlevel = \"MUST\"\nkind = \"dispatch-load\"\nexpectation = \"e\"\nremediation = \"r\"\nparams = { rates = [100, 400], min_rate = 200 }\n",
        )
        .expect("spec");
        assert_eq!(steps_of(&Params::of(&spec)), vec![100.0, 200.0, 400.0]);
    }

    #[test]
    fn a_failed_step_at_the_minimum_is_decided_by_its_second_run() {
        let spec: CaseSpec = toml::from_str(
            "id = \"dispatch.x\"\ntitle = \"t\"\nrequirements = [\"SQ-3\"]\nlevel = \"MUST\"\nkind = \"dispatch-load\"\nexpectation = \"e\"\nremediation = \"r\"\nparams = { rates = [100, 200, 400], min_rate = 200, p99_ms = 10 }\n",
        )
        .expect("spec");
        let p = Params::of(&spec);
        let judge = |steps: &[(f64, u64)]| {
            let phases: Vec<PhaseRecords<'_>> = steps
                .iter()
                .enumerate()
                .map(|(i, (rate, p99_us))| PhaseRecords {
                    report: step(*rate, *p99_us, false),
                    seq: i as u64,
                    records: Vec::new(),
                })
                .collect();
            check_sustained(&p, &phases).outcome
        };
        // A stall in the first 200/s run, a clean second run: the realm sustained 200/s.
        assert_eq!(
            judge(&[
                (100.0, 5_000),
                (200.0, 50_000),
                (200.0, 5_000),
                (400.0, 50_000)
            ]),
            Outcome::Pass
        );
        // Both runs fail: the realm does not sustain the minimum.
        assert_eq!(
            judge(&[(100.0, 5_000), (200.0, 50_000), (200.0, 60_000)]),
            Outcome::Broken
        );
        // A single failed run is still a failure (an older journal, or no budget left).
        assert_eq!(judge(&[(100.0, 5_000), (200.0, 50_000)]), Outcome::Broken);
    }

    #[test]
    fn overtaking_counts_what_others_take_while_an_intent_heads_its_wallets_queue() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let accepted: Vec<(Instant, usize, String)> = (0..3)
            .flat_map(|k| {
                [
                    (at(0), 0, format!("p-w0-1-{k}")),
                    (at(0), 1, format!("p-w1-2-{k}")),
                ]
            })
            .collect();
        // Round robin: 0, 1, 0, 1, 0, 1.
        let rr: Vec<(Instant, String)> = (0..3)
            .flat_map(|k| {
                [
                    (at(10 + 20 * k), format!("p-w0-1-{k}")),
                    (at(20 + 20 * k), format!("p-w1-2-{k}")),
                ]
            })
            .collect();
        let o = overtaking(&accepted, &rr, 2);
        assert_eq!((o.observed, o.max_overtaken), (6, 1));
        // Arrival order with wallet 1 first: wallet 0's head waits for all of wallet 1.
        let fifo: Vec<(Instant, String)> = (0..3)
            .map(|k| (at(10 + 10 * k), format!("p-w1-2-{k}")))
            .chain((0..3).map(|k| (at(50 + 10 * k), format!("p-w0-1-{k}"))))
            .collect();
        let o = overtaking(&accepted, &fifo, 2);
        assert_eq!((o.max_overtaken, o.worst_wallet), (3, Some(0)));
    }

    #[test]
    fn load_data_validates_against_the_results_schema_and_draws_a_chart_with_a_warning() {
        use crate::report::{self, HarnessInfo, PlanInfo, RunResults, Summary, TargetInfo};
        use crate::verdict::{CaseResult, Mode, Verdict};
        let mut h = Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 3).expect("hist");
        for v in 1..=500u64 {
            h.record(v * 100).expect("record");
        }
        let mut r = step(100.0, 5_000, true);
        r.corrected = HistSummary::of(&h);
        r.uncorrected = HistSummary::of(&h);
        let p = Params::of(
            &toml::from_str::<CaseSpec>(
                "id = \"dispatch.x\"\ntitle = \"t\"\nrequirements = [\"SQ-15\"]\nlevel = \"MUST\"\nkind = \"dispatch-load\"\nexpectation = \"e\"\nremediation = \"r\"\n",
            )
            .expect("spec"),
        );
        let phases = vec![PhaseRecords {
            report: r,
            seq: 1,
            records: Vec::new(),
        }];
        let load = load_result(&p, &phases);
        assert!(load.generator.saturated);
        let case = CaseResult {
            id: "dispatch.x".into(),
            title: "t".into(),
            requirements: vec!["SQ-15".into()],
            level: crate::plan::Level::Must,
            kind: KIND.into(),
            verdict: Verdict::Pass,
            reason: "r".into(),
            expected: "e".into(),
            observed: "o".into(),
            remediation: "r".into(),
            evidence: Vec::new(),
            journal_span: Some((1, 2)),
            started_ms: 0,
            duration_ms: 1,
            reproduce: "x".into(),
            load: Some(load),
        };
        let cases = vec![case];
        let results = RunResults {
            format: report::RESULTS_FORMAT.into(),
            harness: HarnessInfo::current(),
            plan: PlanInfo {
                id: "p".into(),
                version: "1.0.0".into(),
                hash: "0".repeat(64),
                source: "embedded:x".into(),
            },
            target: TargetInfo {
                kind: report::TargetKind::Url,
                description: "d".into(),
            },
            realm_manifest: None,
            mode: Mode::Ci,
            seed: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            complete: true,
            summary: Summary::of(Mode::Ci, &cases, true),
            cases,
        };
        let value = serde_json::to_value(&results).expect("json");
        assert_eq!(
            report::validate_results(&value).expect("schema"),
            Vec::<String>::new()
        );
        let back: RunResults = serde_json::from_value(value).expect("round trip");
        assert_eq!(back, results);
        let html = report::render_html(&results, &[]).expect("html");
        assert!(html.contains("<svg class=\"latency\""), "no chart");
        assert!(html.contains("<polyline"), "no line");
        assert!(html.contains("Generator saturated"), "no warning");
    }

    #[test]
    fn a_histogram_summary_reads_back_its_quantiles() {
        let mut h = Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 3).expect("hist");
        for v in 1..=1000u64 {
            h.record(v * 1000).expect("record");
        }
        let s = HistSummary::of(&h);
        assert_eq!(s.count, 1000);
        let p99 = s.at(0.99).expect("p99");
        assert!((989_000..=991_000).contains(&p99), "{p99}");
        assert_eq!(s.at(1.0), Some(h.max()));
    }
}

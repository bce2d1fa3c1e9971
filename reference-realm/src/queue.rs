//! SafeQueue: the realm's bounded, fair intent queue.
//!
//! # What it guarantees
//!
//! - **Bounded.** At most [`QueueConfig::capacity`] intents are *in flight* (admitted and not yet
//!   finished or cancelled: queued plus running). Running intents count because a lapsed lease puts
//!   its intent back with [`SafeQueue::requeue_front`], and that must never fail or overflow: an
//!   admitted intent is never dropped.
//! - **Per-wallet limit.** A wallet has at most [`QueueConfig::per_wallet_inflight`] intents queued
//!   or running (the spec's default is 64).
//! - **Never a silent drop.** [`SafeQueue::admit`] either accepts (with a position estimate and the
//!   depth) or returns an [`AdmitError`] whose [`AdmitError::code`] is the spec's error code and
//!   whose `retry_after_ms` is an estimate from the recent rate at which slots were freed.
//! - **Fair between wallets.** Each wallet has its own sub-queue; wallets take turns by deficit
//!   round robin (DRR): on its turn a wallet's deficit grows by [`QueueConfig::quantum`] and it is
//!   served while its next intent's cost fits in the deficit. A wallet with 1,000 queued intents
//!   therefore cannot delay a wallet with 10 by more than about 10 turns.
//! - **Priority with aging inside a wallet.** Within a wallet's sub-queue, higher priority (0..=9)
//!   goes first and equal priorities are FIFO. An intent's effective priority rises by one for every
//!   [`QueueConfig::aging_step_ms`] it waits (up to 9), so a stream of high-priority intents cannot
//!   starve an older low-priority one.
//! - **Re-dispatch keeps its place.** [`SafeQueue::requeue_front`] puts a running intent (whose
//!   lease lapsed) into a retry lane that is served before any wallet's sub-queue, oldest admission
//!   first, so it never waits behind intents admitted after it.
//! - **Workers see only what they can serve.** [`SafeQueue::next_for`] takes the intent names a
//!   worker serves and runs the fairness rules among the wallets that have work for it; wallets
//!   with no servable work keep their place in the round.
//!
//! # What the caller does
//!
//! The queue is a pure, synchronous state machine: no I/O, no clock. Time is passed in as
//! milliseconds since the realm started (`now_ms`), the unit every module of the realm uses, so
//! tests drive time by hand. The caller (the realm's single-owner dispatch task) must, **before**
//! calling [`SafeQueue::admit`]:
//!
//! - check feasibility: some enrolled, non-draining worker serves the intent (else `INFEASIBLE`;
//!   see `registry::Registry::servable`), and
//! - reserve the intent's `max_cost` in the ledger (else `INSUFFICIENT_FUNDS`), releasing the
//!   reservation again if the queue then refuses the intent.
//!
//! After [`SafeQueue::next_for`] hands an intent out it is *running* until the caller calls
//! [`SafeQueue::finish`] (success, final failure, dead letter, or cancel while running) or
//! [`SafeQueue::requeue_front`] (lease lapsed, retry). Persistence is the caller's job too: the
//! queue holds only what it needs to order intents, keyed by intent id.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// The highest priority an intent may carry (the lowest is 0).
pub const MAX_PRIORITY: u8 = 9;

/// The priority of an `intent.submit` that gives none.
pub const DEFAULT_PRIORITY: u8 = 5;

/// The spec's default limit of queued plus running intents per wallet.
pub const DEFAULT_PER_WALLET_INFLIGHT: usize = 64;

/// The most slot releases remembered for the retry-after estimate: enough for a stable rate, small
/// enough that a burst of cancels cannot grow memory.
const MAX_RELEASE_SAMPLES: usize = 1024;

/// How the queue is bounded, ordered and how it estimates `retry_after_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The most intents in flight (queued plus running) at once; advertised in the manifest as
    /// `limits.queue_capacity`.
    pub capacity: usize,
    /// The most intents one wallet may have in flight (queued plus running).
    pub per_wallet_inflight: usize,
    /// What a wallet's deficit grows by on each of its DRR turns. With cost-1 intents and a
    /// quantum of 1, backlogged wallets strictly alternate.
    pub quantum: u32,
    /// The largest cost weight an intent may carry.
    pub max_cost: u32,
    /// Waiting this long raises an intent's effective priority by one (capped at 9); 0 disables
    /// aging.
    pub aging_step_ms: u64,
    /// Slot releases within this window make up the "recent" rate behind `retry_after_ms`.
    pub rate_window_ms: u64,
    /// The `retry_after_ms` given when no slot was released within the window.
    pub default_retry_after_ms: u64,
    /// The smallest `retry_after_ms` ever given, so clients do not hammer a full queue.
    pub min_retry_after_ms: u64,
    /// The largest `retry_after_ms` ever given.
    pub max_retry_after_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            per_wallet_inflight: DEFAULT_PER_WALLET_INFLIGHT,
            quantum: 1,
            max_cost: 1_000_000,
            aging_step_ms: 10_000,
            rate_window_ms: 60_000,
            default_retry_after_ms: 1_000,
            min_retry_after_ms: 50,
            max_retry_after_ms: 60_000,
        }
    }
}

impl QueueConfig {
    /// Checks that the configuration can work: every bound at least 1 and the retry-after range
    /// ordered.
    pub fn validate(&self) -> Result<(), QueueError> {
        if self.capacity == 0 {
            return Err(QueueError::InvalidConfig("capacity must be at least 1"));
        }
        if self.per_wallet_inflight == 0 {
            return Err(QueueError::InvalidConfig(
                "per_wallet_inflight must be at least 1",
            ));
        }
        if self.quantum == 0 {
            return Err(QueueError::InvalidConfig("quantum must be at least 1"));
        }
        if self.max_cost == 0 {
            return Err(QueueError::InvalidConfig("max_cost must be at least 1"));
        }
        if self.rate_window_ms == 0 {
            return Err(QueueError::InvalidConfig(
                "rate_window_ms must be at least 1",
            ));
        }
        if self.min_retry_after_ms > self.max_retry_after_ms {
            return Err(QueueError::InvalidConfig(
                "min_retry_after_ms must not exceed max_retry_after_ms",
            ));
        }
        Ok(())
    }
}

/// An intent offered to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The realm-minted intent id (unique among intents in flight).
    pub intent_id: String,
    /// The submitting wallet's key.
    pub wallet: String,
    /// The intent name (`cert.probe`, …), matched against the names a worker serves.
    pub intent: String,
    /// 0..=9, higher first within the wallet.
    pub priority: u8,
    /// The DRR cost weight, 1..=[`QueueConfig::max_cost`] (1 for a plain intent).
    pub cost: u32,
}

/// An intent held by the queue, as handed out by [`SafeQueue::next_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedIntent {
    /// The intent id.
    pub intent_id: String,
    /// The submitting wallet.
    pub wallet: String,
    /// The intent name.
    pub intent: String,
    /// The priority it was submitted with.
    pub priority: u8,
    /// Its DRR cost weight.
    pub cost: u32,
    /// When it was admitted (ms since the realm started).
    pub admitted_ms: u64,
    /// How many times it has been handed out by [`SafeQueue::next_for`] (1 on the first dispatch).
    pub dispatches: u32,
}

/// A successful admission: the answer's `position` and `queue_depth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Estimated number of intents served before this one (0: next). See
    /// [`SafeQueue::position`].
    pub position: usize,
    /// Queued intents (not counting running ones), this one included.
    pub depth: usize,
}

/// Where an intent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentState {
    /// Waiting in its wallet's sub-queue or the retry lane.
    Queued,
    /// Handed to a worker; waiting for [`SafeQueue::finish`] or [`SafeQueue::requeue_front`].
    Running,
}

/// Why an intent was not admitted. Every refusal is one of these: the queue never drops an
/// intent silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The queue holds `capacity` intents in flight.
    #[error("the queue is full ({capacity} intents in flight); retry after {retry_after_ms} ms")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
        /// Estimated wait until a slot frees.
        retry_after_ms: u64,
    },
    /// The wallet already has `limit` intents queued or running.
    #[error("the wallet has {limit} intents queued or running, its limit; retry after {retry_after_ms} ms")]
    WalletLimit {
        /// The per-wallet limit.
        limit: usize,
        /// Estimated wait until one of the wallet's intents finishes.
        retry_after_ms: u64,
    },
    /// An intent with this id is already queued or running (a realm bug: ids are minted fresh,
    /// and resubmits are answered from the idempotency key before reaching the queue).
    #[error("intent {0:?} is already queued or running")]
    DuplicateId(String),
    /// The priority is above [`MAX_PRIORITY`].
    #[error("priority {0} is outside 0..={MAX_PRIORITY}")]
    InvalidPriority(u8),
    /// The cost weight is 0 or above the configured maximum.
    #[error("cost {cost} is outside 1..={max}")]
    InvalidCost {
        /// The cost given.
        cost: u32,
        /// The configured maximum.
        max: u32,
    },
}

impl AdmitError {
    /// The MTOR/1 error code for `intent.rejected`. The per-wallet limit answers `QUEUE_FULL` (the
    /// wallet's share of the queue is full), not `RATE_LIMITED`, which the spec keeps for frame
    /// rates.
    pub fn code(&self) -> &'static str {
        match self {
            Self::QueueFull { .. } | Self::WalletLimit { .. } => "QUEUE_FULL",
            Self::InvalidPriority(_) => "INVALID_EVENT",
            Self::DuplicateId(_) | Self::InvalidCost { .. } => "INTERNAL",
        }
    }

    /// The `retry_after_ms` to send (required by the spec with `QUEUE_FULL`).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::QueueFull { retry_after_ms, .. } | Self::WalletLimit { retry_after_ms, .. } => {
                Some(*retry_after_ms)
            }
            _ => None,
        }
    }
}

/// Errors of queue operations other than admission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// No queued or running intent has this id.
    #[error("intent {0:?} is neither queued nor running")]
    NotFound(String),
    /// The intent is running: cancel its lease (and then [`SafeQueue::finish`] it) instead.
    #[error("intent {0:?} is running, not queued")]
    Running(String),
    /// The intent is queued, not running, so it cannot be finished or requeued.
    #[error("intent {0:?} is queued, not running")]
    NotRunning(String),
    /// The configuration cannot work.
    #[error("invalid queue configuration: {0}")]
    InvalidConfig(&'static str),
}

impl QueueError {
    /// The MTOR/1 error code closest to this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NOT_FOUND",
            Self::Running(_) | Self::NotRunning(_) | Self::InvalidConfig(_) => "INTERNAL",
        }
    }
}

/// Where an entry sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// In its wallet's sub-queue, under DRR.
    Fair,
    /// In the retry lane, served first.
    Retry,
    /// Handed out.
    Running,
}

#[derive(Debug, Clone)]
struct Entry {
    item: QueuedIntent,
    slot: Slot,
}

/// What a sub-queue lane keeps per intent: enough to rank it without looking it up.
#[derive(Debug, Clone, Copy)]
struct LaneItem {
    cost: u32,
    admitted_ms: u64,
}

/// Ranking key inside a wallet: higher effective priority first, then admission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// `MAX_PRIORITY - effective priority`, so that smaller sorts first.
    inverse_priority: u8,
    seq: u64,
}

/// One wallet's share of the queue.
#[derive(Debug, Default)]
struct WalletQueue {
    /// intent name → priority → admission seq → item. Split by name so a worker's servable work
    /// is found without scanning intents it cannot serve; split by priority so each lane is FIFO
    /// and its head is its best member.
    lanes: BTreeMap<String, Lanes>,
    /// Intents in `lanes`.
    fair_queued: usize,
    /// Queued (lanes and retry lane) plus running intents of this wallet.
    inflight: usize,
    /// DRR deficit.
    deficit: u64,
    /// Whether the wallet already received its quantum for the current turn.
    in_turn: bool,
}

impl WalletQueue {
    fn has_servable<S: AsRef<str>>(&self, names: &[S]) -> bool {
        names.iter().any(|n| self.lanes.contains_key(n.as_ref()))
    }

    /// The best servable intent: its rank, cost and the lane it is in.
    fn best<S: AsRef<str>>(
        &self,
        names: &[S],
        now_ms: u64,
        aging_step_ms: u64,
    ) -> Option<(Rank, u32, String, u8)> {
        best_of(
            names
                .iter()
                .filter_map(|n| self.lanes.get_key_value(n.as_ref())),
            now_ms,
            aging_step_ms,
        )
    }

    /// The cost of the wallet's best intent for any worker: DRR's head of line.
    fn head_cost(&self, now_ms: u64, aging_step_ms: u64) -> Option<u32> {
        best_of(self.lanes.iter(), now_ms, aging_step_ms).map(|(_, cost, _, _)| cost)
    }

    fn remove(&mut self, intent: &str, priority: u8, seq: u64) -> Option<LaneItem> {
        let by_priority = self.lanes.get_mut(intent)?;
        let lane = by_priority.get_mut(&priority)?;
        let item = lane.remove(&seq)?;
        // Drop empty lanes so that `has_servable` can trust `contains_key`.
        if lane.is_empty() {
            by_priority.remove(&priority);
        }
        if by_priority.is_empty() {
            self.lanes.remove(intent);
        }
        self.fair_queued = self.fair_queued.saturating_sub(1);
        Some(item)
    }

    /// How many of this wallet's lane intents rank before `target`.
    fn ahead_of(&self, target: Rank, now_ms: u64, aging_step_ms: u64) -> usize {
        self.lanes
            .values()
            .flat_map(|by_priority| by_priority.iter())
            .flat_map(|(&priority, lane)| {
                lane.iter().map(move |(&seq, item)| (priority, seq, item))
            })
            .filter(|(priority, seq, item)| {
                rank(*priority, *seq, item.admitted_ms, now_ms, aging_step_ms) < target
            })
            .count()
    }
}

type Lanes = BTreeMap<u8, BTreeMap<u64, LaneItem>>;

/// The best intent among some of a wallet's lanes: its rank, cost, intent name and priority.
fn best_of<'a>(
    lanes: impl Iterator<Item = (&'a String, &'a Lanes)>,
    now_ms: u64,
    aging_step_ms: u64,
) -> Option<(Rank, u32, String, u8)> {
    let mut best: Option<(Rank, u32, &String, u8)> = None;
    for (name, by_priority) in lanes {
        for (&priority, lane) in by_priority {
            // A lane is FIFO at one priority, so its head is both its oldest and its most aged
            // member: the head is the lane's best.
            if let Some((&seq, item)) = lane.first_key_value() {
                let rank = rank(priority, seq, item.admitted_ms, now_ms, aging_step_ms);
                if best.as_ref().is_none_or(|b| rank < b.0) {
                    best = Some((rank, item.cost, name, priority));
                }
            }
        }
    }
    best.map(|(rank, cost, name, priority)| (rank, cost, name.clone(), priority))
}

fn effective_priority(priority: u8, admitted_ms: u64, now_ms: u64, aging_step_ms: u64) -> u8 {
    if aging_step_ms == 0 {
        return priority.min(MAX_PRIORITY);
    }
    let steps = now_ms.saturating_sub(admitted_ms) / aging_step_ms;
    let raised = u64::from(priority).saturating_add(steps);
    // The cap keeps aged intents competing FIFO with fresh priority-9 ones, which they then beat
    // because they are older.
    u8::try_from(raised.min(u64::from(MAX_PRIORITY))).unwrap_or(MAX_PRIORITY)
}

fn rank(priority: u8, seq: u64, admitted_ms: u64, now_ms: u64, aging_step_ms: u64) -> Rank {
    Rank {
        inverse_priority: MAX_PRIORITY
            - effective_priority(priority, admitted_ms, now_ms, aging_step_ms),
        seq,
    }
}

/// The SafeQueue. See the [module documentation](self) for its rules.
#[derive(Debug)]
pub struct SafeQueue {
    config: QueueConfig,
    /// Admission seq → entry. The seq orders FIFO and the retry lane.
    entries: HashMap<u64, Entry>,
    /// Intent id → admission seq.
    ids: HashMap<String, u64>,
    wallets: HashMap<String, WalletQueue>,
    /// Wallets with intents in their lanes, in DRR order; the front has the turn.
    active: VecDeque<String>,
    /// Requeued intents by original admission seq: served before any wallet's lanes.
    retry: BTreeSet<u64>,
    queued: usize,
    running: usize,
    next_seq: u64,
    /// When slots were freed (finish or cancel), oldest first, for `retry_after_ms`.
    releases: VecDeque<u64>,
}

impl SafeQueue {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Result<Self, QueueError> {
        config.validate()?;
        Ok(Self {
            config,
            entries: HashMap::new(),
            ids: HashMap::new(),
            wallets: HashMap::new(),
            active: VecDeque::new(),
            retry: BTreeSet::new(),
            queued: 0,
            running: 0,
            next_seq: 0,
            releases: VecDeque::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The capacity (most intents in flight).
    pub fn capacity(&self) -> usize {
        self.config.capacity
    }

    /// Queued intents (waiting, retry lane included, running ones not).
    pub fn depth(&self) -> usize {
        self.queued
    }

    /// Running intents (handed out, not yet finished or requeued).
    pub fn running(&self) -> usize {
        self.running
    }

    /// Queued plus running intents: what [`QueueConfig::capacity`] bounds.
    pub fn inflight(&self) -> usize {
        self.queued + self.running
    }

    /// A wallet's queued plus running intents: what [`QueueConfig::per_wallet_inflight`] bounds.
    pub fn wallet_inflight(&self, wallet: &str) -> usize {
        self.wallets.get(wallet).map_or(0, |w| w.inflight)
    }

    /// Whether an intent is queued or running, or `None` when the queue does not hold it.
    pub fn state(&self, intent_id: &str) -> Option<IntentState> {
        let entry = self.entry(intent_id)?;
        Some(match entry.slot {
            Slot::Fair | Slot::Retry => IntentState::Queued,
            Slot::Running => IntentState::Running,
        })
    }

    /// A queued or running intent.
    pub fn get(&self, intent_id: &str) -> Option<&QueuedIntent> {
        self.entry(intent_id).map(|e| &e.item)
    }

    fn entry(&self, intent_id: &str) -> Option<&Entry> {
        self.ids
            .get(intent_id)
            .and_then(|seq| self.entries.get(seq))
    }

    /// Admits an intent, or says why not. Feasibility and the balance reservation are the
    /// caller's checks, made before this call (see the [module documentation](self)).
    ///
    /// Refusals are checked in this order: malformed submission, duplicate id, queue full, wallet
    /// at its limit.
    pub fn admit(&mut self, submission: Submission, now_ms: u64) -> Result<Accepted, AdmitError> {
        if submission.priority > MAX_PRIORITY {
            return Err(AdmitError::InvalidPriority(submission.priority));
        }
        if submission.cost == 0 || submission.cost > self.config.max_cost {
            return Err(AdmitError::InvalidCost {
                cost: submission.cost,
                max: self.config.max_cost,
            });
        }
        if self.ids.contains_key(&submission.intent_id) {
            return Err(AdmitError::DuplicateId(submission.intent_id));
        }
        if self.inflight() >= self.config.capacity {
            return Err(AdmitError::QueueFull {
                capacity: self.config.capacity,
                retry_after_ms: self.retry_after_ms(now_ms),
            });
        }
        if self.wallet_inflight(&submission.wallet) >= self.config.per_wallet_inflight {
            return Err(AdmitError::WalletLimit {
                limit: self.config.per_wallet_inflight,
                retry_after_ms: self.wallet_retry_after_ms(now_ms),
            });
        }

        let seq = self.next_seq;
        self.next_seq += 1;
        let wallet = self.wallets.entry(submission.wallet.clone()).or_default();
        wallet
            .lanes
            .entry(submission.intent.clone())
            .or_default()
            .entry(submission.priority)
            .or_default()
            .insert(
                seq,
                LaneItem {
                    cost: submission.cost,
                    admitted_ms: now_ms,
                },
            );
        wallet.fair_queued += 1;
        wallet.inflight += 1;
        if wallet.fair_queued == 1 {
            // A wallet joining the round starts at the back, like a new flow in DRR.
            self.active.push_back(submission.wallet.clone());
        }
        self.queued += 1;
        self.ids.insert(submission.intent_id.clone(), seq);
        self.entries.insert(
            seq,
            Entry {
                item: QueuedIntent {
                    intent_id: submission.intent_id,
                    wallet: submission.wallet,
                    intent: submission.intent,
                    priority: submission.priority,
                    cost: submission.cost,
                    admitted_ms: now_ms,
                    dispatches: 0,
                },
                slot: Slot::Fair,
            },
        );
        Ok(Accepted {
            position: self.position_of(seq, now_ms).unwrap_or(0),
            depth: self.queued,
        })
    }

    /// Hands out the next intent that a worker serving `worker_intents` can run, or `None` when no
    /// queued intent is servable by it. The intent becomes running.
    ///
    /// Order: the retry lane first (oldest admission first), then DRR among the wallets that have
    /// servable work, then priority (with aging) and FIFO within the chosen wallet.
    pub fn next_for<S: AsRef<str>>(
        &mut self,
        worker_intents: &[S],
        now_ms: u64,
    ) -> Option<QueuedIntent> {
        let retried = self.retry.iter().copied().find(|seq| {
            self.entries.get(seq).is_some_and(|e| {
                worker_intents
                    .iter()
                    .any(|n| n.as_ref() == e.item.intent.as_str())
            })
        });
        if let Some(seq) = retried {
            self.retry.remove(&seq);
            return self.mark_running(seq);
        }
        let seq = self.next_fair(worker_intents, now_ms)?;
        self.mark_running(seq)
    }

    /// Deficit round robin over the wallets with servable work; returns the seq taken out of its
    /// wallet's lanes.
    fn next_fair<S: AsRef<str>>(&mut self, names: &[S], now_ms: u64) -> Option<u64> {
        if crate::defect::on(crate::defect::Defect::FifoUnfair) {
            return self.next_fifo(names, now_ms);
        }
        let servable_wallets = self
            .active
            .iter()
            .filter(|w| self.wallets.get(*w).is_some_and(|q| q.has_servable(names)))
            .count();
        if servable_wallets == 0 {
            return None;
        }
        let quantum = u64::from(self.config.quantum);
        let aging = self.config.aging_step_ms;
        let mut unserved_visits = 0usize;
        // Each visit either serves or ends a wallet's turn; after one full cycle without a serve the
        // deficits are fast-forwarded so that the next cycle serves: at most 2 cycles + 1 visit.
        loop {
            let idx = self
                .active
                .iter()
                .position(|w| self.wallets.get(w).is_some_and(|q| q.has_servable(names)))?;
            let wallet_id = self.active.get(idx)?.clone();
            let wallet = self.wallets.get_mut(&wallet_id)?;
            let (rank, cost, intent, priority) = wallet.best(names, now_ms, aging)?;
            if !wallet.in_turn {
                wallet.deficit = wallet.deficit.saturating_add(quantum);
                wallet.in_turn = true;
            }
            if u64::from(cost) <= wallet.deficit {
                wallet.deficit -= u64::from(cost);
                wallet.remove(&intent, priority, rank.seq)?;
                if wallet.fair_queued == 0 {
                    // DRR: an emptied flow leaves the round and forfeits its deficit, so idling
                    // cannot bank credit.
                    wallet.deficit = 0;
                    wallet.in_turn = false;
                    self.active.remove(idx);
                } else if wallet
                    .head_cost(now_ms, aging)
                    .is_some_and(|c| u64::from(c) > wallet.deficit)
                {
                    // Its head of line no longer fits: end the turn now rather than on the next
                    // call, so that the round order (and `position`) shows who is next.
                    wallet.in_turn = false;
                    self.active.remove(idx);
                    self.active.push_back(wallet_id);
                }
                return Some(rank.seq);
            }
            // Cannot afford its best intent: the turn ends, the deficit carries over.
            wallet.in_turn = false;
            self.active.remove(idx);
            self.active.push_back(wallet_id);
            unserved_visits += 1;
            if unserved_visits == servable_wallets {
                self.fast_forward(names, now_ms);
            }
        }
    }

    /// Seeded defect `fifo-unfair`: the oldest servable intent of any wallet, whoever's turn it
    /// is.
    fn next_fifo<S: AsRef<str>>(&mut self, names: &[S], now_ms: u64) -> Option<u64> {
        let aging = self.config.aging_step_ms;
        let (idx, wallet_id, intent, priority, seq) = self
            .active
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let (rank, _, intent, priority) =
                    self.wallets.get(w)?.best(names, now_ms, aging)?;
                Some((i, w.clone(), intent, priority, rank.seq))
            })
            .min_by_key(|t| t.4)?;
        let wallet = self.wallets.get_mut(&wallet_id)?;
        wallet.remove(&intent, priority, seq)?;
        if wallet.fair_queued == 0 {
            wallet.deficit = 0;
            wallet.in_turn = false;
            self.active.remove(idx);
        }
        Some(seq)
    }

    /// After a full cycle in which no servable wallet could afford its best intent, adds the
    /// quanta of the further empty rounds at once instead of looping through them.
    fn fast_forward<S: AsRef<str>>(&mut self, names: &[S], now_ms: u64) {
        let quantum = u64::from(self.config.quantum);
        let aging = self.config.aging_step_ms;
        let mut servable: Vec<&mut WalletQueue> = self
            .wallets
            .values_mut()
            .filter(|q| q.fair_queued > 0 && q.has_servable(names))
            .collect();
        let needed_rounds = |q: &WalletQueue| {
            q.best(names, now_ms, aging).map_or(1, |(_, cost, _, _)| {
                u64::from(cost).saturating_sub(q.deficit).div_ceil(quantum)
            })
        };
        let Some(min_rounds) = servable.iter().map(|q| needed_rounds(q)).min() else {
            return;
        };
        // Nobody can afford anything in the first `min_rounds - 1` rounds, so skipping them
        // changes no outcome and keeps the round order.
        let skip = min_rounds.saturating_sub(1).saturating_mul(quantum);
        for q in &mut servable {
            q.deficit = q.deficit.saturating_add(skip);
        }
    }

    fn mark_running(&mut self, seq: u64) -> Option<QueuedIntent> {
        let entry = self.entries.get_mut(&seq)?;
        entry.slot = Slot::Running;
        entry.item.dispatches = entry.item.dispatches.saturating_add(1);
        self.queued -= 1;
        self.running += 1;
        Some(entry.item.clone())
    }

    /// Removes a queued intent (client cancel) and returns it. A running intent is refused with
    /// [`QueueError::Running`]: revoke its lease, then call [`SafeQueue::finish`].
    pub fn cancel(&mut self, intent_id: &str, now_ms: u64) -> Result<QueuedIntent, QueueError> {
        let seq = *self
            .ids
            .get(intent_id)
            .ok_or_else(|| QueueError::NotFound(intent_id.to_owned()))?;
        let slot = self
            .entries
            .get(&seq)
            .map(|e| e.slot)
            .ok_or_else(|| QueueError::NotFound(intent_id.to_owned()))?;
        match slot {
            Slot::Running => return Err(QueueError::Running(intent_id.to_owned())),
            Slot::Retry => {
                self.retry.remove(&seq);
            }
            Slot::Fair => {
                let (wallet_id, intent, priority) = match self.entries.get(&seq) {
                    Some(e) => (
                        e.item.wallet.clone(),
                        e.item.intent.clone(),
                        e.item.priority,
                    ),
                    None => return Err(QueueError::NotFound(intent_id.to_owned())),
                };
                if let Some(wallet) = self.wallets.get_mut(&wallet_id) {
                    wallet.remove(&intent, priority, seq);
                    if wallet.fair_queued == 0 {
                        wallet.deficit = 0;
                        wallet.in_turn = false;
                        self.active.retain(|w| *w != wallet_id);
                    }
                }
            }
        }
        self.queued -= 1;
        self.release(seq, now_ms)
            .ok_or_else(|| QueueError::NotFound(intent_id.to_owned()))
    }

    /// Forgets a running intent: it succeeded, failed for good, was dead-lettered, or was
    /// cancelled while running. Frees its slot.
    pub fn finish(&mut self, intent_id: &str, now_ms: u64) -> Result<QueuedIntent, QueueError> {
        let seq = self.running_seq(intent_id)?;
        self.running -= 1;
        self.release(seq, now_ms)
            .ok_or_else(|| QueueError::NotFound(intent_id.to_owned()))
    }

    /// Puts a running intent back for re-dispatch (its lease lapsed or its worker was lost). It
    /// goes to the retry lane, which is served before every wallet's sub-queue, so intents
    /// admitted after it cannot overtake it. Never refused for capacity: the intent kept its slot
    /// while running. Returns its new position.
    pub fn requeue_front(&mut self, intent_id: &str, now_ms: u64) -> Result<usize, QueueError> {
        let seq = self.running_seq(intent_id)?;
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.slot = Slot::Retry;
        }
        self.retry.insert(seq);
        self.running -= 1;
        self.queued += 1;
        Ok(self.position_of(seq, now_ms).unwrap_or(0))
    }

    fn running_seq(&self, intent_id: &str) -> Result<u64, QueueError> {
        let seq = *self
            .ids
            .get(intent_id)
            .ok_or_else(|| QueueError::NotFound(intent_id.to_owned()))?;
        match self.entries.get(&seq).map(|e| e.slot) {
            Some(Slot::Running) => Ok(seq),
            Some(_) => Err(QueueError::NotRunning(intent_id.to_owned())),
            None => Err(QueueError::NotFound(intent_id.to_owned())),
        }
    }

    /// Removes an entry that has already left its lane, frees its wallet slot and records the
    /// release for the retry-after estimate.
    fn release(&mut self, seq: u64, now_ms: u64) -> Option<QueuedIntent> {
        let entry = self.entries.remove(&seq)?;
        self.ids.remove(&entry.item.intent_id);
        if let Some(wallet) = self.wallets.get_mut(&entry.item.wallet) {
            wallet.inflight = wallet.inflight.saturating_sub(1);
            if wallet.inflight == 0 {
                self.wallets.remove(&entry.item.wallet);
            }
        }
        self.releases.push_back(now_ms);
        let horizon = now_ms.saturating_sub(self.config.rate_window_ms);
        while self
            .releases
            .front()
            .is_some_and(|&t| t < horizon || self.releases.len() > MAX_RELEASE_SAMPLES)
        {
            self.releases.pop_front();
        }
        Some(entry.item)
    }

    /// Estimated number of intents served before this one (0: it is next), or `None` when it is
    /// not queued (running or unknown).
    ///
    /// It is an estimate: exact when every worker serves every intent, all costs equal the
    /// quantum, no intent ages past another and nothing else arrives; otherwise a guide for
    /// `queue.update`. Retry-lane intents come first; a wallet-queue intent with `k` intents ahead
    /// in its own wallet waits for up to `k + 1` intents of each wallet before its own in the round
    /// and up to `k` of each wallet after it.
    pub fn position(&self, intent_id: &str, now_ms: u64) -> Option<usize> {
        let seq = *self.ids.get(intent_id)?;
        self.position_of(seq, now_ms)
    }

    fn position_of(&self, seq: u64, now_ms: u64) -> Option<usize> {
        let entry = self.entries.get(&seq)?;
        match entry.slot {
            Slot::Running => None,
            Slot::Retry => Some(self.retry.range(..seq).count()),
            Slot::Fair => {
                let aging = self.config.aging_step_ms;
                let wallet = self.wallets.get(&entry.item.wallet)?;
                let target = rank(
                    entry.item.priority,
                    seq,
                    entry.item.admitted_ms,
                    now_ms,
                    aging,
                );
                let ahead = wallet.ahead_of(target, now_ms, aging);
                let own_turn = self.active.iter().position(|w| *w == entry.item.wallet)?;
                let others: usize = self
                    .active
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != own_turn)
                    .map(|(i, w)| {
                        let len = self.wallets.get(w).map_or(0, |q| q.fair_queued);
                        let rounds = if i < own_turn { ahead + 1 } else { ahead };
                        len.min(rounds)
                    })
                    .sum();
                Some(self.retry.len() + ahead + others)
            }
        }
    }

    /// Estimated wait until a slot frees: the mean interval between recent releases (finish or
    /// cancel) within [`QueueConfig::rate_window_ms`], clamped to the configured range;
    /// [`QueueConfig::default_retry_after_ms`] when nothing was released recently.
    pub fn retry_after_ms(&self, now_ms: u64) -> u64 {
        self.interval_estimate(now_ms, 1)
    }

    /// Estimated wait until one of a wallet's intents finishes: the realm-wide interval times the
    /// number of wallets with intents in flight, each wallet's fair share of the releases.
    fn wallet_retry_after_ms(&self, now_ms: u64) -> u64 {
        self.interval_estimate(now_ms, self.wallets.len().max(1))
    }

    fn interval_estimate(&self, now_ms: u64, share: usize) -> u64 {
        let window = self.config.rate_window_ms;
        let horizon = now_ms.saturating_sub(window);
        let recent = self.releases.iter().filter(|&&t| t >= horizon).count() as u64;
        if recent == 0 {
            return self.config.default_retry_after_ms.clamp(
                self.config.min_retry_after_ms,
                self.config.max_retry_after_ms,
            );
        }
        // Early in the realm's life the window reaches back before the start: use the elapsed
        // time, or the rate would look slower than it is.
        let span = window.min(now_ms).max(1);
        span.div_ceil(recent).saturating_mul(share as u64).clamp(
            self.config.min_retry_after_ms,
            self.config.max_retry_after_ms,
        )
    }
}

//! `token-integrity`: a concurrent money-moving workload, recorded as a history and judged by
//! [`crate::history`].
//!
//! The workload is generated with proptest from the run's seed (a deterministic ChaCha runner, as
//! in [`crate::generate`]): several wallets, each funded by the sysop's mint (replayed with the
//! same key, sometimes reused with another amount), each spending from two sessions at once
//! submissions that race near a zero balance, idempotent retries (racing on one session, or
//! after the answer on another), the same key with a different body, and cancels. The harness
//! brings its own workers, which execute `cert.probe` and, steered by the probe's nonce, fail an
//! attempt (retryably), crash mid-task (the connection dropped without a close), or report a
//! result twice; every result they owe after a `task.cancel` is still sent, late, and must be
//! refused. At the end the harness reads every wallet's balance, the whole ledger export and
//! every wallet's statement (signed REST).
//!
//! Every operation is journaled as invoke / ok / fail / info (`Entry::Op`); a walk of the ledger
//! or a statement refers to the HTTP records of its pages. [`history_of`] turns an attempt's
//! records back into a history, and the checker judges it: the driver never decides. When a
//! history is inconsistent, proptest shrinks the workload, each smaller one run afresh against the
//! realm, and the checker reports the smallest failing attempt's witness.
//!
//! One workload feeds all the `tokens.*` cases of a plan: a case finds the workload an earlier
//! case of the run recorded with the same parameters (`mark:tk-done:<signature>`) and judges that
//! (`mark:tk-shared:<case>`), so each case checks one property of the same history.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::audit::{self, Page};
use crate::case::Ctx;
use crate::checker::{case_records, note, Judgement, Outcome, ABORT, MARK, SKIP};
use crate::history::{
    self, Call, Context, Event, LedgerEntry, Op, PageInfo, Property, Refusal, Reply, Validity, Via,
};
use crate::journal::{self, Entry, Journal, Phase, Record};
use crate::plan::CaseSpec;
use crate::wire::{event, http_get, http_get_signed, login, Conn, Identity, WireError};

/// The case kind.
pub const KIND: &str = "token-integrity";

/// The price of a `cert.probe` (PRB-4).
const PROBE_COST: u64 = 1000;

// ------------------------------------------------------------------------------ parameters

/// The plan parameters of a `token-integrity` case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParams {
    /// Wallets funded and spending (`wallets`).
    pub wallets: usize,
    /// Submissions planned per wallet (`steps`).
    pub steps: usize,
    /// Sessions per wallet (`sessions`).
    pub sessions: usize,
    /// Harness workers (`workers`; 0 leaves execution to the realm's own workers).
    pub workers: usize,
    /// Concurrency each harness worker registers (`concurrency`).
    pub concurrency: u64,
    /// Most `work_ms` a probe asks for (`max_work_ms`).
    pub max_work_ms: u64,
    /// Wall-clock budget of one workload, reads included (`attempt_ms`).
    pub attempt_ms: u64,
    /// Wall-clock budget of the workload and its shrinking (`time_budget_ms`).
    pub time_budget_ms: u64,
    /// Most shrink steps after an inconsistent history (`max_shrink_iters`).
    pub max_shrink_iters: u32,
    /// Page size of the ledger and statement walks (`page_limit`).
    pub page_limit: u64,
}

impl Default for TokenParams {
    fn default() -> Self {
        Self {
            wallets: 4,
            steps: 8,
            sessions: 2,
            workers: 2,
            concurrency: 64,
            max_work_ms: 120,
            attempt_ms: 8000,
            time_budget_ms: 20_000,
            max_shrink_iters: 12,
            page_limit: 100,
        }
    }
}

impl TokenParams {
    /// Reads the case's parameters; those it does not give keep their defaults.
    pub fn from_spec(spec: &CaseSpec) -> Self {
        let d = Self::default();
        let int = |k: &str| {
            spec.params
                .get(k)
                .and_then(|v| v.as_integer())
                .and_then(|v| u64::try_from(v).ok())
        };
        let size = |k: &str, d: usize, max: usize| {
            int(k)
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(d)
                .min(max)
        };
        Self {
            wallets: size("wallets", d.wallets, 64).max(1),
            steps: size("steps", d.steps, 256).max(1),
            sessions: size("sessions", d.sessions, 8).max(1),
            workers: size("workers", d.workers, 16),
            concurrency: int("concurrency").unwrap_or(d.concurrency).clamp(1, 1024),
            max_work_ms: int("max_work_ms").unwrap_or(d.max_work_ms).min(5000),
            attempt_ms: int("attempt_ms").unwrap_or(d.attempt_ms).max(1000),
            time_budget_ms: int("time_budget_ms").unwrap_or(d.time_budget_ms),
            max_shrink_iters: int("max_shrink_iters")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(d.max_shrink_iters),
            page_limit: int("page_limit").unwrap_or(d.page_limit).clamp(1, 1000),
        }
    }

    /// What decides the workload: cases with the same signature can share one.
    pub fn signature(&self) -> String {
        let text = format!("{self:?}");
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }
}

// ------------------------------------------------------------------------------ the workload

/// What a harness worker does with a probe, steered by the probe's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Directive {
    /// Execute it.
    Normal,
    /// Fail attempt 1 retryably, then execute.
    Retry,
    /// Drop the connection on attempt 1 (a crash mid-task), re-enrol, then execute.
    Crash,
    /// Report the result twice.
    Duplicate,
}

impl Directive {
    fn name(self) -> &'static str {
        match self {
            Directive::Normal => "normal",
            Directive::Retry => "retry",
            Directive::Crash => "crash",
            Directive::Duplicate => "duplicate",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "retry" => Directive::Retry,
            "crash" => Directive::Crash,
            "duplicate" => Directive::Duplicate,
            _ => Directive::Normal,
        }
    }
}

/// When a submission is sent again with the same key and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retry {
    /// Never.
    No,
    /// Right after the original, on the same session, before its answer.
    Racing,
    /// After the original's answer, from another session of the wallet.
    After,
}

/// One planned submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `max_cost`.
    pub max_cost: u64,
    /// The probe's `work_ms`.
    pub work_ms: u64,
    /// The probe's `fail`.
    pub fail: bool,
    /// What a harness worker does with it.
    pub directive: Directive,
    /// Whether and how it is retried.
    pub retry: Retry,
    /// Whether its key is reused, after its answer, with a different body.
    pub conflict: bool,
    /// Cancel it this long after it was accepted.
    pub cancel_ms: Option<u64>,
    /// Send it this long after the wallet's sessions start.
    pub delay_ms: u64,
    /// Pin it (PRB-6) to one of the harness's workers, so that the scripted behaviour happens
    /// even when the realm has workers of its own.
    pub pin: bool,
}

/// One wallet's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalletPlan {
    /// The mint.
    pub fund: u64,
    /// Replay the mint with the same key and body.
    pub mint_retry: bool,
    /// Reuse the mint's key with another amount.
    pub mint_conflict: bool,
    /// Its submissions.
    pub steps: Vec<Step>,
}

/// A whole workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// The wallets.
    pub wallets: Vec<WalletPlan>,
}

impl Workload {
    /// Planned operations (for choosing the smallest failing workload).
    pub fn size(&self) -> usize {
        self.wallets.iter().map(|w| 1 + w.steps.len()).sum()
    }
}

/// A list that starts with all `n` elements and shrinks by dropping them (proptest's own
/// collections start at a random length).
fn all_of<T: std::fmt::Debug + Clone>(
    element: impl Strategy<Value = T>,
    n: usize,
) -> impl Strategy<Value = Vec<T>> {
    proptest::collection::vec((element, proptest::bool::weighted(1.0)), n).prop_map(|items| {
        items
            .into_iter()
            .filter(|(_, keep)| *keep)
            .map(|(x, _)| x)
            .collect()
    })
}

fn step_strategy(p: &TokenParams) -> impl Strategy<Value = Step> {
    (
        select(vec![1000u64, 1500, 2000, 3000]),
        0..=p.max_work_ms,
        proptest::bool::weighted(0.1),
        select(vec![
            Directive::Normal,
            Directive::Normal,
            Directive::Normal,
            Directive::Retry,
            Directive::Crash,
            Directive::Duplicate,
        ]),
        select(vec![Retry::No, Retry::No, Retry::Racing, Retry::After]),
        proptest::bool::weighted(0.15),
        proptest::option::weighted(0.2, 0..=150u64),
        (0..=30u64, proptest::bool::weighted(0.4)),
    )
        .prop_map(
            |(max_cost, work_ms, fail, directive, retry, conflict, cancel_ms, (delay_ms, pin))| {
                Step {
                    max_cost,
                    work_ms,
                    fail,
                    directive,
                    retry,
                    conflict,
                    cancel_ms,
                    delay_ms,
                    pin,
                }
            },
        )
}

/// The workload strategy: full size at first, then shrunk coarsest first (see [`WorkloadTree`]).
pub fn strategy(p: &TokenParams) -> WorkloadStrategy {
    WorkloadStrategy {
        inner: generator(p),
    }
}

/// Generates full-size workloads whose shrinking drops whole wallets first, then steps, then
/// plain-ifies what is left: each shrink step costs a whole run against the realm, so the first
/// ones must remove the most.
#[derive(Debug)]
pub struct WorkloadStrategy {
    inner: BoxedStrategy<Workload>,
}

impl Strategy for WorkloadStrategy {
    type Tree = WorkloadTree;
    type Value = Workload;

    fn new_tree(&self, runner: &mut TestRunner) -> proptest::strategy::NewTree<Self> {
        let current = self.inner.new_tree(runner)?.current();
        Ok(WorkloadTree {
            base: current.clone(),
            current,
            tried: 0,
        })
    }
}

/// The shrinking of one workload: from the last failing one (`base`), the next simpler
/// candidate in coarse-to-fine order.
#[derive(Debug, Clone)]
pub struct WorkloadTree {
    base: Workload,
    current: Workload,
    tried: usize,
}

fn plain(step: &Step) -> Step {
    Step {
        max_cost: step.max_cost,
        work_ms: 0,
        fail: false,
        directive: Directive::Normal,
        retry: Retry::No,
        conflict: false,
        cancel_ms: None,
        delay_ms: 0,
        pin: false,
    }
}

/// Every one-step simplification of `w`, coarsest first.
pub fn simplifications(w: &Workload) -> Vec<Workload> {
    let mut out = Vec::new();
    for i in (0..w.wallets.len()).rev() {
        let mut x = w.clone();
        x.wallets.remove(i);
        out.push(x);
    }
    for (i, wallet) in w.wallets.iter().enumerate() {
        let n = wallet.steps.len();
        if n > 1 {
            let mut x = w.clone();
            x.wallets[i].steps.truncate(n / 2);
            out.push(x);
        }
        for j in (0..n).rev() {
            let mut x = w.clone();
            x.wallets[i].steps.remove(j);
            out.push(x);
        }
    }
    for (i, wallet) in w.wallets.iter().enumerate() {
        for (j, step) in wallet.steps.iter().enumerate() {
            if *step != plain(step) {
                let mut x = w.clone();
                x.wallets[i].steps[j] = plain(step);
                out.push(x);
            }
        }
        if wallet.mint_retry || wallet.mint_conflict {
            let mut x = w.clone();
            x.wallets[i].mint_retry = false;
            x.wallets[i].mint_conflict = false;
            out.push(x);
        }
    }
    out
}

impl WorkloadTree {
    fn next(&mut self) -> bool {
        match simplifications(&self.base).into_iter().nth(self.tried) {
            Some(x) => {
                self.current = x;
                self.tried += 1;
                true
            }
            None => {
                self.current = self.base.clone();
                false
            }
        }
    }
}

impl ValueTree for WorkloadTree {
    type Value = Workload;

    fn current(&self) -> Workload {
        self.current.clone()
    }

    /// The current workload failed: simplify it further.
    fn simplify(&mut self) -> bool {
        self.base = self.current.clone();
        self.tried = 0;
        self.next()
    }

    /// The last simplification passed: try the next one of the same failing workload.
    fn complicate(&mut self) -> bool {
        self.next()
    }
}

fn generator(p: &TokenParams) -> BoxedStrategy<Workload> {
    let wallet = (
        (3u64..=12).prop_map(|k| k * PROBE_COST + 500),
        proptest::bool::weighted(0.5),
        proptest::bool::weighted(0.3),
        all_of(step_strategy(p), p.steps),
    )
        .prop_map(|(fund, mint_retry, mint_conflict, steps)| WalletPlan {
            fund,
            mint_retry,
            mint_conflict,
            steps,
        });
    all_of(wallet, p.wallets)
        .prop_map(|wallets| Workload { wallets })
        .boxed()
}

/// The ChaCha seed of a case's workload (same seed, same workload and same shrinking).
pub fn seed_bytes(case_seed: u64) -> [u8; 32] {
    Sha256::digest(format!("mtor-cert/token-integrity/{case_seed}").as_bytes()).into()
}

/// A deterministic proptest runner: one workload, then shrinking while it fails.
pub fn runner(case_seed: u64, p: &TokenParams) -> TestRunner {
    let config = Config {
        cases: 1,
        max_shrink_iters: p.max_shrink_iters,
        max_shrink_time: u32::try_from(p.time_budget_ms).unwrap_or(u32::MAX),
        max_global_rejects: 16,
        failure_persistence: None,
        source_file: None,
        verbose: 0,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(case_seed)),
    )
}

/// The first workload a case's runner generates.
pub fn first_workload(case_seed: u64, p: &TokenParams) -> Option<Workload> {
    let mut runner = runner(case_seed, p);
    strategy(p).new_tree(&mut runner).ok().map(|t| t.current())
}

// ------------------------------------------------------------------------------ recording

/// Writes operations to the journal.
struct OpLog<'a> {
    journal: &'a Journal,
    case: &'a str,
    next: AtomicU32,
}

impl OpLog<'_> {
    fn log(&self, process: u32, f: &str, phase: Phase, value: Value) -> u64 {
        self.journal.log(
            Some(self.case),
            Entry::Op {
                process,
                f: f.to_owned(),
                phase,
                value,
            },
        )
    }

    fn invoke(&self, call: &Call) -> u32 {
        let p = self.next.fetch_add(1, Ordering::Relaxed);
        self.log(
            p,
            call.name(),
            Phase::Invoke,
            serde_json::to_value(call).unwrap_or(Value::Null),
        );
        p
    }

    fn ok(&self, p: u32, f: &str, reply: &Reply) {
        self.log(
            p,
            f,
            Phase::Ok,
            serde_json::to_value(reply).unwrap_or(Value::Null),
        );
    }

    fn ok_pages(&self, p: u32, f: &str, http: &[u64]) {
        self.log(p, f, Phase::Ok, json!({"type": "entries", "http": http}));
    }

    fn fail(&self, p: u32, f: &str, code: &str, via: Via) {
        let r = Refusal {
            code: code.to_owned(),
            via,
        };
        self.log(
            p,
            f,
            Phase::Fail,
            serde_json::to_value(r).unwrap_or(Value::Null),
        );
    }

    fn info(&self, p: u32, f: &str, why: impl std::fmt::Display) {
        self.log(p, f, Phase::Info, json!({ "why": why.to_string() }));
    }
}

/// sha256 of the submission as section 8.3 compares it (`priority` 5 when absent).
pub fn body_hash(intent: &str, input: &Value, max_cost: u64) -> String {
    let canonical = serde_jcs::to_string(&json!({
        "intent": intent, "input": input, "max_cost": max_cost, "priority": 5
    }))
    .unwrap_or_default();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// The nonce that tags a submission: `tk.<wallet prefix>.<step>.<directive>[.b]`.
fn tag(wallet: &str, step: usize, d: Directive, conflict: bool) -> String {
    format!(
        "tk.{}.{step}.{}{}",
        &wallet[..12.min(wallet.len())],
        d.name(),
        if conflict { ".b" } else { "" }
    )
}

fn directive_of(nonce: &str) -> Directive {
    nonce
        .strip_prefix("tk.")
        .and_then(|r| r.split('.').nth(2))
        .map_or(Directive::Normal, Directive::parse)
}

// ------------------------------------------------------------------------------ clients

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Original,
    Retry,
    Conflict,
}

enum Planned {
    Submit {
        step: usize,
        variant: Variant,
        at: Instant,
    },
    Cancel {
        intent_id: String,
        at: Instant,
    },
}

impl Planned {
    fn at(&self) -> Instant {
        match self {
            Planned::Submit { at, .. } | Planned::Cancel { at, .. } => *at,
        }
    }
}

enum Pend {
    Submit { step: usize, variant: Variant },
    Cancel { intent_id: String },
}

#[derive(Default)]
struct WalletState {
    /// Intents some session of the wallet awaits (a replay is awaited where it was first seen).
    awaited: HashSet<String>,
    /// Operations planned or in flight; the sessions stop when it reaches 0.
    outstanding: usize,
}

struct WalletRun<'p> {
    who: Identity,
    hex: String,
    plan: &'p WalletPlan,
    state: Mutex<WalletState>,
}

impl WalletRun<'_> {
    fn add(&self, n: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.outstanding += n;
        }
    }

    fn done(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.outstanding = s.outstanding.saturating_sub(1);
        }
    }

    fn outstanding(&self) -> usize {
        self.state.lock().map_or(0, |s| s.outstanding)
    }

    /// Claims an intent for this session to await; false when another already does.
    fn claim(&self, intent_id: &str) -> bool {
        self.state
            .lock()
            .is_ok_and(|mut s| s.awaited.insert(intent_id.to_owned()))
    }
}

fn probe_input(
    wallet: &WalletRun<'_>,
    n: usize,
    variant: Variant,
    pins: &[String],
) -> (Value, String, u64) {
    let step = &wallet.plan.steps[n];
    let t = tag(&wallet.hex, n, step.directive, variant == Variant::Conflict);
    let mut input = json!({ "nonce": t, "work_ms": step.work_ms });
    if step.fail {
        input["fail"] = json!(true);
    }
    if let (true, false) = (step.pin, pins.is_empty()) {
        input["worker_key"] = json!(pins[n % pins.len()]);
    }
    (input, t, step.max_cost)
}

fn terminal_reply(kind: &str, body: &Value) -> Option<Reply> {
    let u = |k: &str| body[k].as_u64().unwrap_or(0);
    match kind {
        "intent.result" => Some(Reply::Succeeded {
            cost: u("cost"),
            released: u("released"),
            worker_id: body["output"]["worker_id"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        }),
        "intent.failed" => Some(Reply::Failed {
            code: body["code"].as_str().unwrap_or("").to_owned(),
            released: u("released"),
        }),
        "intent.cancelled" => Some(Reply::Cancelled {
            released: u("released"),
        }),
        _ => None,
    }
}

struct Session<'a, 'p> {
    log: &'a OpLog<'a>,
    /// Keys of the harness's workers, for pinned probes.
    pins: &'a [String],
    wallet: &'a WalletRun<'p>,
    index: usize,
    peers: &'a [mpsc::UnboundedSender<Planned>],
    queue: Vec<Planned>,
    pending: HashMap<String, (u32, Pend)>,
    awaits: HashMap<String, u32>,
}

impl Session<'_, '_> {
    fn schedule_on(&mut self, session: usize, p: Planned) {
        self.wallet.add(1);
        if session == self.index {
            self.queue.push(p);
        } else if self.peers[session].send(p).is_err() {
            self.wallet.done(); // that session has ended: the operation is never made
        }
    }

    async fn send(&mut self, conn: &mut Conn, p: Planned, deadline: Instant) {
        let (call, ev, pend) = match p {
            Planned::Submit { step, variant, .. } => {
                let (input, t, max_cost) = probe_input(self.wallet, step, variant, self.pins);
                let key = format!("k{step}");
                let call = Call::Submit {
                    wallet: self.wallet.hex.clone(),
                    key: key.clone(),
                    body: body_hash("cert.probe", &input, max_cost),
                    max_cost,
                    tag: t,
                };
                let ev = event(
                    "intent.submit",
                    None,
                    json!({"intent": "cert.probe", "input": input, "max_cost": max_cost, "idempotency_key": key}),
                );
                (call, ev, Pend::Submit { step, variant })
            }
            Planned::Cancel { intent_id, .. } => {
                let call = Call::Cancel {
                    wallet: self.wallet.hex.clone(),
                    intent_id: intent_id.clone(),
                };
                let ev = event("intent.cancel", None, json!({ "intent_id": intent_id }));
                (call, ev, Pend::Cancel { intent_id })
            }
        };
        let f = call.name();
        let process = self.log.invoke(&call);
        let id = ev["id"].as_str().unwrap_or_default().to_owned();
        self.pending.insert(id.clone(), (process, pend));
        if let Err(e) = conn.send_event(&ev, deadline).await {
            self.pending.remove(&id);
            self.log.info(process, f, format!("not sent: {e}"));
            self.wallet.done();
        }
    }

    fn start_await(&mut self, intent_id: &str) {
        if !self.wallet.claim(intent_id) {
            return;
        }
        let p = self.log.invoke(&Call::Await {
            wallet: self.wallet.hex.clone(),
            intent_id: intent_id.to_owned(),
        });
        self.wallet.add(1);
        self.awaits.insert(intent_id.to_owned(), p);
    }

    fn finish_await(&mut self, intent_id: &str, reply: &Reply) {
        if let Some(p) = self.awaits.remove(intent_id) {
            self.log.ok(p, "await", reply);
            self.wallet.done();
        }
    }

    fn handle(&mut self, frame: &Value) {
        let kind = frame["type"].as_str().unwrap_or("");
        let body = &frame["body"];
        let corr = frame["corr"].as_str().unwrap_or("");
        let code = body["code"].as_str().unwrap_or("?");
        if let Some((process, pend)) = self.pending.remove(corr) {
            match pend {
                Pend::Submit { step, variant } => {
                    match kind {
                        "intent.accepted" => {
                            let intent_id = body["intent_id"].as_str().unwrap_or("").to_owned();
                            self.log.ok(
                                process,
                                "submit",
                                &Reply::Accepted {
                                    intent_id: intent_id.clone(),
                                    reserved: body["reserved"].as_u64().unwrap_or(0),
                                },
                            );
                            let first = !self
                                .wallet
                                .state
                                .lock()
                                .is_ok_and(|s| s.awaited.contains(&intent_id));
                            self.start_await(&intent_id);
                            let cancel = self.wallet.plan.steps[step].cancel_ms;
                            if let (true, Variant::Original, Some(ms)) = (first, variant, cancel) {
                                let at = Instant::now() + Duration::from_millis(ms);
                                self.schedule_on(self.index, Planned::Cancel { intent_id, at });
                            }
                        }
                        "intent.rejected" => self.log.fail(process, "submit", code, Via::Rejected),
                        "error" => self.log.fail(process, "submit", code, Via::Error),
                        other => self
                            .log
                            .info(process, "submit", format!("answered by {other}")),
                    }
                    if variant == Variant::Original {
                        let plan = &self.wallet.plan.steps[step];
                        let now = Instant::now();
                        if plan.retry == Retry::After {
                            let other = (self.index + 1) % self.peers.len();
                            self.schedule_on(
                                other,
                                Planned::Submit {
                                    step,
                                    variant: Variant::Retry,
                                    at: now,
                                },
                            );
                        }
                        if plan.conflict {
                            self.schedule_on(
                                self.index,
                                Planned::Submit {
                                    step,
                                    variant: Variant::Conflict,
                                    at: now,
                                },
                            );
                        }
                    }
                }
                Pend::Cancel { intent_id } => match kind {
                    "intent.cancelled" => {
                        let reply = Reply::Cancelled {
                            released: body["released"].as_u64().unwrap_or(0),
                        };
                        self.log.ok(process, "cancel", &reply);
                        // On an attached session the reply is also the terminal event.
                        self.finish_await(&intent_id, &reply);
                    }
                    "intent.status" => self.log.ok(
                        process,
                        "cancel",
                        &Reply::Status {
                            state: body["state"].as_str().unwrap_or("").to_owned(),
                        },
                    ),
                    "error" => self.log.fail(process, "cancel", code, Via::Error),
                    other => self
                        .log
                        .info(process, "cancel", format!("answered by {other}")),
                },
            }
            self.wallet.done();
            return;
        }
        if let Some(reply) = terminal_reply(kind, body) {
            let id = body["intent_id"].as_str().unwrap_or("").to_owned();
            self.finish_await(&id, &reply);
        }
    }

    async fn run(
        &mut self,
        conn: &mut Conn,
        rx: &mut mpsc::UnboundedReceiver<Planned>,
        deadline: Instant,
    ) {
        loop {
            let now = Instant::now();
            while let Some(i) = self.queue.iter().position(|p| p.at() <= now) {
                let p = self.queue.swap_remove(i);
                self.send(conn, p, deadline).await;
            }
            if self.wallet.outstanding() == 0 || Instant::now() >= deadline {
                break;
            }
            let wake = self
                .queue
                .iter()
                .map(Planned::at)
                .min()
                .unwrap_or(deadline)
                .min(deadline)
                // Other sessions' progress can end the wallet's work: look again soon.
                .min(Instant::now() + Duration::from_millis(100));
            tokio::select! {
                r = conn.next_frame(wake) => match r {
                    Ok(frame) => {
                        if let Some(ev) = frame.event {
                            self.handle(&ev);
                        }
                    }
                    Err(WireError::Timeout(..)) => {}
                    Err(_) => break,
                },
                Some(p) = rx.recv() => self.queue.push(p),
            }
        }
        // What never got an answer is indeterminate; what was never sent was never invoked.
        for (_, (p, pend)) in self.pending.drain() {
            let f = match pend {
                Pend::Submit { .. } => "submit",
                Pend::Cancel { .. } => "cancel",
            };
            self.log.info(p, f, "no answer before the deadline");
            self.wallet.done();
        }
        for (_, p) in self.awaits.drain() {
            self.log
                .info(p, "await", "no terminal event before the deadline");
            self.wallet.done();
        }
        for _ in self.queue.drain(..) {
            self.wallet.done();
        }
        rx.close();
        while rx.try_recv().is_ok() {
            self.wallet.done();
        }
    }
}

async fn run_wallet(
    ctx: &Ctx<'_>,
    log: &OpLog<'_>,
    pins: &[String],
    wallet: &WalletRun<'_>,
    sessions: usize,
    deadline: Instant,
) {
    let url = ctx.client_url();
    let mut conns = Vec::new();
    for _ in 0..sessions {
        match login(
            &url,
            &wallet.who,
            ctx.journal,
            Some(&ctx.spec.id),
            ctx.within(5000),
        )
        .await
        {
            Ok((c, _)) => conns.push(c),
            Err(e) => {
                ctx.note(format!(
                    "a session of wallet {} did not open: {e}",
                    wallet.hex
                ));
            }
        }
    }
    if conns.is_empty() {
        return;
    }
    let n = conns.len();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let start = Instant::now();
    wallet.add(wallet.plan.steps.len());
    let mut sessions: Vec<Session<'_, '_>> = (0..n)
        .map(|index| Session {
            log,
            pins,
            wallet,
            index,
            peers: &txs,
            queue: Vec::new(),
            pending: HashMap::new(),
            awaits: HashMap::new(),
        })
        .collect();
    for (step, plan) in wallet.plan.steps.iter().enumerate() {
        let at = start + Duration::from_millis(plan.delay_ms);
        let s = &mut sessions[step % n];
        s.queue.push(Planned::Submit {
            step,
            variant: Variant::Original,
            at,
        });
        if plan.retry == Retry::Racing {
            wallet.add(1);
            s.queue.push(Planned::Submit {
                step,
                variant: Variant::Retry,
                at,
            });
        }
    }
    let runs = sessions
        .iter_mut()
        .zip(conns.iter_mut())
        .zip(rxs)
        .map(|((s, c), mut rx)| async move { s.run(c, &mut rx, deadline).await });
    join_all(runs).await;
    drop(txs);
    for c in conns {
        c.close().await;
    }
}

// ------------------------------------------------------------------------------ workers

struct Task {
    due: Instant,
    body: Value,
    reports: Vec<(&'static str, bool)>, // (task.result | task.failure, retryable)
}

async fn enrol(
    ctx: &Ctx<'_>,
    key: &Identity,
    concurrency: u64,
) -> Result<(Conn, String, u64), String> {
    let token = ctx.target.enrol_token.clone().ok_or("no enrolment token")?;
    let url = format!("{}/v1/worker", ctx.target.ws_base);
    let mut conn = Conn::open(&url, ctx.journal, Some(&ctx.spec.id), ctx.within(5000))
        .await
        .map_err(|e| e.to_string())?;
    let register = event(
        "worker.register",
        None,
        json!({
            "token": token, "worker_key": key.public_hex(), "intents": ["cert.probe"],
            "concurrency": concurrency, "software": concat!("mtor-cert/", env!("CARGO_PKG_VERSION")),
        }),
    );
    let challenge = conn
        .request(&register, ctx.within(3000))
        .await
        .map_err(|e| e.to_string())?;
    if challenge.kind() != Some("session.challenge") {
        return Err(format!(
            "worker.register answered by {:?}",
            challenge.kind()
        ));
    }
    let s = |k: &str| {
        challenge
            .body(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let proof = event(
        "session.proof",
        challenge.event.as_ref().and_then(|e| e["id"].as_str()),
        json!({ "signature": key.session_proof(&s("realm_id"), &s("nonce")) }),
    );
    let enrolled = conn
        .request(&proof, ctx.within(3000))
        .await
        .map_err(|e| e.to_string())?;
    if enrolled.kind() != Some("worker.enrolled") {
        return Err(format!(
            "the worker's proof was answered by {:?}",
            enrolled.kind()
        ));
    }
    let id = enrolled
        .body("worker_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let interval = enrolled
        .body("heartbeat_interval_ms")
        .and_then(Value::as_u64)
        .unwrap_or(1000)
        .clamp(100, 10_000);
    Ok((conn, id, interval))
}

fn probe_output(nonce: &str, worker_id: &str) -> Value {
    let digest = hex::encode(Sha256::digest(format!("cert.probe\n{nonce}").as_bytes()));
    json!({ "nonce": nonce, "digest": digest, "worker_id": worker_id })
}

#[allow(clippy::too_many_arguments)]
async fn run_worker(
    ctx: &Ctx<'_>,
    log: &OpLog<'_>,
    key: Identity,
    concurrency: u64,
    ready: mpsc::UnboundedSender<bool>,
    stop: &AtomicBool,
    deadline: Instant,
) {
    let worker_key = key.public_hex();
    let mut first = true;
    'connection: loop {
        let p = log.invoke(&Call::Enrol {
            worker_key: worker_key.clone(),
        });
        let (mut conn, worker_id, interval) = match enrol(ctx, &key, concurrency).await {
            Ok(x) => {
                log.ok(
                    p,
                    "enrol",
                    &Reply::Enrolled {
                        worker_id: x.1.clone(),
                    },
                );
                x
            }
            Err(e) => {
                log.info(p, "enrol", &e);
                if first {
                    let _ = ready.send(false);
                }
                return;
            }
        };
        if first {
            let _ = ready.send(true);
            first = false;
        }
        let mut tasks: Vec<Task> = Vec::new();
        let mut receipts: HashMap<String, u32> = HashMap::new();
        let mut next_beat = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_beat {
                let beat = event(
                    "worker.heartbeat",
                    None,
                    json!({"running": tasks.len(), "capacity": concurrency, "state": "ready"}),
                );
                let _ = conn.send_event(&beat, ctx.within(1000)).await;
                next_beat = now + Duration::from_millis(interval / 2);
            }
            while let Some(i) = tasks.iter().position(|t| t.due <= Instant::now()) {
                let t = tasks.swap_remove(i);
                let b = &t.body;
                let nonce = b["input"]["nonce"].as_str().unwrap_or("").to_owned();
                for (kind, retryable) in &t.reports {
                    let call = Call::Report {
                        worker_key: worker_key.clone(),
                        worker_id: worker_id.clone(),
                        task_id: b["task_id"].as_str().unwrap_or("").to_owned(),
                        attempt: u32::try_from(b["attempt"].as_u64().unwrap_or(0)).unwrap_or(0),
                        epoch: b["epoch"].as_u64().unwrap_or(0),
                        tag: nonce.clone(),
                        outcome: if *kind == "task.result" {
                            "result"
                        } else {
                            "failure"
                        }
                        .into(),
                    };
                    let process = log.invoke(&call);
                    let lease = json!({"task_id": b["task_id"], "attempt": b["attempt"], "epoch": b["epoch"]});
                    let mut body = lease.clone();
                    if *kind == "task.result" {
                        body["output"] = probe_output(&nonce, &worker_id);
                        body["units"] = json!(1);
                    } else {
                        body["code"] = json!("WORKER_ERROR");
                        body["message"] = json!(if *retryable {
                            "scripted retryable failure"
                        } else {
                            "cert.probe input asked to fail (fail: true)"
                        });
                        body["retryable"] = json!(retryable);
                    }
                    let ev = event(kind, None, body);
                    match conn.send_event(&ev, ctx.within(1000)).await {
                        Ok(id) => {
                            receipts.insert(id, process);
                        }
                        Err(e) => log.info(process, "report", format!("not sent: {e}")),
                    }
                }
            }
            let stopping = stop.load(Ordering::Relaxed);
            if (stopping && tasks.is_empty() && receipts.is_empty()) || Instant::now() >= deadline {
                break 'connection;
            }
            let wake = tasks
                .iter()
                .map(|t| t.due)
                .min()
                .unwrap_or(deadline)
                .min(next_beat)
                .min(deadline)
                .min(Instant::now() + Duration::from_millis(100));
            let frame = match conn.next_frame(wake).await {
                Ok(f) => f,
                Err(WireError::Timeout(..)) => continue,
                Err(_) => break 'connection,
            };
            let Some(ev) = frame.event else { continue };
            let body = &ev["body"];
            match ev["type"].as_str().unwrap_or("") {
                "task.assign" => {
                    let nonce = body["input"]["nonce"].as_str().unwrap_or("");
                    let attempt = body["attempt"].as_u64().unwrap_or(1);
                    let work = Duration::from_millis(
                        body["input"]["work_ms"].as_u64().unwrap_or(0).min(5000),
                    );
                    let directive = directive_of(nonce);
                    let reports = if body["input"]["fail"] == json!(true) {
                        vec![("task.failure", false)]
                    } else {
                        match (directive, attempt) {
                            (Directive::Crash, 1) => {
                                // A crash mid-task: the lease is lost with the connection.
                                ctx.journal.log(Some(&ctx.spec.id), Entry::Fault {
                                    what: "worker-crash".into(),
                                    edge: "start".into(),
                                    proof: format!("worker {worker_id} drops its connection holding task {}", body["task_id"]),
                                });
                                let seq = conn.abort();
                                for (_, p) in receipts.drain() {
                                    log.info(p, "report", "the worker crashed before the receipt");
                                }
                                ctx.journal.log(Some(&ctx.spec.id), Entry::Fault {
                                    what: "worker-crash".into(),
                                    edge: "end".into(),
                                    proof: format!("connection aborted at journal #{seq}; the worker re-enrols"),
                                });
                                // Tasks it held die with it.
                                continue 'connection;
                            }
                            (Directive::Retry, 1) => vec![("task.failure", true)],
                            (Directive::Duplicate, _) => {
                                vec![("task.result", false), ("task.result", false)]
                            }
                            _ => vec![("task.result", false)],
                        }
                    };
                    tasks.push(Task {
                        due: Instant::now() + work,
                        body: body.clone(),
                        reports,
                    });
                }
                "task.receipt" => {
                    let corr = ev["corr"].as_str().unwrap_or("");
                    if let Some(p) = receipts.remove(corr) {
                        if body["status"] == "accepted" {
                            log.ok(p, "report", &Reply::Receipt);
                        } else {
                            log.fail(
                                p,
                                "report",
                                body["code"].as_str().unwrap_or("?"),
                                Via::Receipt,
                            );
                        }
                    }
                }
                // The result it still owes will be sent late, and must be refused.
                _ => {}
            }
        }
    }
    ctx.journal.log(
        Some(&ctx.spec.id),
        Entry::Note {
            text: format!("worker {worker_key} stopped"),
        },
    );
}

// ------------------------------------------------------------------------------ one attempt

/// Runs one workload against the realm, recording every operation in the journal.
async fn attempt(ctx: &Ctx<'_>, p: &TokenParams, w: &Workload, n: usize, deadline: Instant) {
    ctx.mark(
        "tk-try",
        &format!("{n}:{}", serde_json::to_string(w).unwrap_or_default()),
    );
    let _ = http_get(
        &ctx.target.http_base,
        "/v1/manifest",
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(3000),
    )
    .await;
    let log = OpLog {
        journal: ctx.journal,
        case: &ctx.spec.id,
        next: AtomicU32::new(1),
    };
    let Some(sysop) = ctx.target.sysop.as_ref() else {
        return;
    };
    let mut wallets = Vec::new();
    for plan in &w.wallets {
        let Ok(who) = Identity::generate() else {
            ctx.note("no randomness for a wallet key".to_owned());
            return;
        };
        wallets.push(WalletRun {
            hex: who.public_hex(),
            who,
            plan,
            state: Mutex::new(WalletState::default()),
        });
    }
    // Funding: each wallet's mint, its replay, and a conflicting reuse of its key.
    match login(
        &ctx.client_url(),
        sysop,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    {
        Ok((mut conn, _)) => {
            for (i, wallet) in wallets.iter().enumerate() {
                let key = format!("fund-{n}-{i}-{}", &wallet.hex[..8]);
                let mut mints = vec![(wallet.plan.fund, key.clone())];
                if wallet.plan.mint_retry {
                    mints.push((wallet.plan.fund, key.clone()));
                }
                if wallet.plan.mint_conflict {
                    mints.push((wallet.plan.fund + 1, key.clone()));
                }
                for (amount, key) in mints {
                    let memo = format!("mtor-cert {} funding", ctx.spec.id);
                    let call = Call::Mint {
                        wallet: wallet.hex.clone(),
                        amount,
                        key: key.clone(),
                        memo: memo.clone(),
                    };
                    let process = log.invoke(&call);
                    let ev = event(
                        "wallet.mint",
                        None,
                        json!({"wallet": wallet.hex, "amount": amount, "idempotency_key": key, "memo": memo}),
                    );
                    match conn.request(&ev, ctx.within(3000)).await {
                        Ok(r) if r.kind() == Some("wallet.minted") => log.ok(
                            process,
                            "mint",
                            &Reply::Minted {
                                entry_seq: r.body("entry_seq").and_then(Value::as_u64).unwrap_or(0),
                                balance: r.body("balance").and_then(Value::as_u64).unwrap_or(0),
                            },
                        ),
                        Ok(r) => log.fail(
                            process,
                            "mint",
                            r.body("code").and_then(Value::as_str).unwrap_or("?"),
                            Via::Error,
                        ),
                        Err(e) => log.info(process, "mint", e),
                    }
                }
            }
            conn.close().await;
        }
        Err(e) => {
            ctx.abort(format!("the sysop's session did not open: {e}"));
            return;
        }
    }
    // The harness's workers, enrolled before anything is submitted.
    let stop = AtomicBool::new(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let workers = if ctx.target.enrol_token.is_some() {
        p.workers
    } else {
        0
    };
    let mut keys: Vec<Identity> = Vec::new();
    for _ in 0..workers {
        match Identity::generate() {
            Ok(k) => keys.push(k),
            Err(e) => {
                ctx.note(format!("no randomness for a worker key: {e}"));
            }
        }
    }
    let pins: Vec<String> = keys.iter().map(Identity::public_hex).collect();
    let worker_runs: Vec<_> = keys
        .into_iter()
        .map(|k| {
            run_worker(
                ctx,
                &log,
                k,
                p.concurrency,
                ready_tx.clone(),
                &stop,
                deadline,
            )
        })
        .collect();
    drop(ready_tx);
    let clients = async {
        let until = ctx.within(5000);
        for _ in 0..workers {
            match tokio::time::timeout_at(until, ready_rx.recv()).await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        join_all(
            wallets
                .iter()
                .map(|wallet| run_wallet(ctx, &log, &pins, wallet, p.sessions, deadline)),
        )
        .await;
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(join_all(worker_runs), clients);
    // What the realm reports: balances first, then the export, then statements.
    let reads = ctx.within(10_000).max(deadline);
    for wallet in &wallets {
        let process = log.invoke(&Call::Balance {
            wallet: wallet.hex.clone(),
        });
        let path = format!("/v1/wallets/{}/balance", wallet.hex);
        match http_get_signed(
            &ctx.target.http_base,
            &path,
            &wallet.who,
            ctx.journal,
            Some(&ctx.spec.id),
            reads,
        )
        .await
        {
            Ok((200, text)) => match serde_json::from_str::<Value>(&text) {
                Ok(v) => log.ok(
                    process,
                    "balance",
                    &Reply::Balance {
                        available: v["available"].as_i64().unwrap_or(0),
                        held: v["held"].as_i64().unwrap_or(0),
                        as_of_seq: v["as_of_seq"].as_u64().unwrap_or(0),
                    },
                ),
                Err(e) => log.info(process, "balance", format!("not JSON: {e}")),
            },
            Ok((status, text)) => {
                let code = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["code"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| status.to_string());
                log.fail(process, "balance", &code, Via::Http);
            }
            Err(e) => log.info(process, "balance", e),
        }
    }
    let reader = ctx.target.auditor.as_ref().unwrap_or(sysop);
    let process = log.invoke(&Call::Ledger);
    let pages = audit::walk(ctx, "ledger", "/v1/ledger", reader, p.page_limit, reads).await;
    log.ok_pages(process, "ledger", &pages);
    for wallet in &wallets {
        let process = log.invoke(&Call::Statement {
            wallet: wallet.hex.clone(),
        });
        let base = format!("/v1/wallets/{}/statement", wallet.hex);
        let pages = audit::walk(ctx, "statement", &base, &wallet.who, p.page_limit, reads).await;
        log.ok_pages(process, "statement", &pages);
    }
    ctx.mark("tk-end", &n.to_string());
}

// ------------------------------------------------------------------------------ the driver

enum Answer {
    Pass,
    Fail(String),
    Skip,
}

struct Ask {
    workload: Workload,
    answer: oneshot::Sender<Answer>,
}

enum RunnerEnd {
    Passed,
    Failed(String),
    Aborted(String),
}

fn run_property(
    seed: u64,
    p: &TokenParams,
    asks: &mpsc::Sender<Ask>,
    stop: &AtomicBool,
) -> RunnerEnd {
    let mut runner = runner(seed, p);
    let result = runner.run(&strategy(p), |workload| {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        if asks
            .blocking_send(Ask {
                workload,
                answer: tx,
            })
            .is_err()
        {
            stop.store(true, Ordering::Relaxed);
            return Ok(());
        }
        match rx.blocking_recv() {
            Ok(Answer::Fail(why)) => Err(TestCaseError::fail(why)),
            Ok(Answer::Pass | Answer::Skip) => Ok(()),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => RunnerEnd::Passed,
        Err(TestError::Fail(reason, _)) => RunnerEnd::Failed(reason.message().to_owned()),
        Err(TestError::Abort(reason)) => RunnerEnd::Aborted(reason.message().to_owned()),
    }
}

/// An earlier case of this run that recorded a workload with the same parameters.
fn shared_source(ctx: &Ctx<'_>, signature: &str) -> Option<String> {
    let records = journal::read(&ctx.journal.path()).ok()?;
    let want = format!("tk-done:{signature}:");
    records.iter().rev().find_map(|r| {
        let m = note(r, MARK)?;
        let case = r.case.as_deref()?;
        (m.starts_with(&want) && case != ctx.spec.id).then(|| case.to_owned())
    })
}

/// The driver of `token-integrity`.
pub(crate) async fn drive(ctx: &Ctx<'_>) {
    let p = TokenParams::from_spec(ctx.spec);
    let signature = p.signature();
    if let Some(source) = shared_source(ctx, &signature) {
        ctx.mark("tk-shared", &source);
        return;
    }
    if ctx.target.sysop.is_none() {
        return ctx.skip("the token workload funds its wallets by the sysop's mint: give `credentials.sysop_secret` in the manifest");
    }
    ctx.mark("tk-seed", &format!("{}:{}", ctx.run_seed, ctx.seed));
    let (tx, mut rx) = mpsc::channel::<Ask>(1);
    let stop = Arc::new(AtomicBool::new(false));
    let property = {
        let (p, stop, seed) = (p.clone(), stop.clone(), ctx.seed);
        tokio::task::spawn_blocking(move || run_property(seed, &p, &tx, &stop))
    };
    let until = ctx.within(p.time_budget_ms);
    let mut n = 0usize;
    let mut failing: Vec<(usize, usize)> = Vec::new(); // (attempt, workload size)
    while let Some(ask) = rx.recv().await {
        // A shrink step needs a whole attempt's time; stop when that no longer fits.
        let left = until.saturating_duration_since(Instant::now());
        if n > 0 && left < Duration::from_millis(p.attempt_ms) {
            stop.store(true, Ordering::Relaxed);
            let _ = ask.answer.send(Answer::Skip);
            continue;
        }
        n += 1;
        let first = ctx.journal.next_seq();
        let deadline = ctx.within(p.attempt_ms);
        attempt(ctx, &p, &ask.workload, n, deadline).await;
        let answer = match journal::read(&ctx.journal.path()) {
            Ok(all) => {
                let mine: Vec<&Record> = all
                    .iter()
                    .filter(|r| r.seq >= first && r.case.as_deref() == Some(ctx.spec.id.as_str()))
                    .collect();
                match history_of(&mine) {
                    Ok((h, c)) => {
                        let a = history::check(&h, &c);
                        match a
                            .verdicts
                            .iter()
                            .find(|(_, v)| matches!(v, Validity::Invalid { .. }))
                        {
                            Some((prop, _)) => {
                                failing.push((n, ask.workload.size()));
                                Answer::Fail(format!("attempt {n}: {} broken", prop.name()))
                            }
                            None => Answer::Pass,
                        }
                    }
                    Err(_) => Answer::Pass,
                }
            }
            Err(_) => Answer::Pass,
        };
        let _ = ask.answer.send(answer);
    }
    let end = property
        .await
        .unwrap_or_else(|e| RunnerEnd::Aborted(format!("the generator stopped: {e}")));
    let status = match end {
        RunnerEnd::Passed => "passed".to_owned(),
        RunnerEnd::Failed(why) => format!("failed {why}"),
        RunnerEnd::Aborted(why) => format!("aborted {why}"),
    };
    if let Some(&(m, _)) = failing.last() {
        // proptest's last failure is its minimal workload.
        ctx.mark("tk-minimal", &m.to_string());
    }
    ctx.mark("tk-done", &format!("{signature}:{n}:{status}"));
}

// ------------------------------------------------------------------------------ the checker

/// Turns an attempt's journal records into a history: its `Op` records in order, each walk of
/// the ledger or a statement resolved from the HTTP records of its pages, and the realm's
/// `fee_bps` from the manifest read in the attempt.
pub fn history_of(records: &[&Record]) -> Result<(Vec<Op>, Context), String> {
    let http: HashMap<u64, &Record> = records
        .iter()
        .filter(|r| matches!(r.entry, Entry::Http { .. }))
        .map(|r| (r.seq, *r))
        .collect();
    let mut ctx = Context::default();
    let mut ops = Vec::new();
    for r in records {
        match &r.entry {
            Entry::Http {
                path,
                status: 200,
                body,
                ..
            } if path == "/v1/manifest" => {
                ctx.fee_bps = serde_json::from_str::<Value>(body)
                    .ok()
                    .and_then(|v| v["fee_bps"].as_u64());
            }
            Entry::Op {
                process,
                f,
                phase,
                value,
            } => {
                let bad = |e: String| {
                    format!(
                        "journal #{}: a `{f}` {phase:?} op that does not parse: {e}",
                        r.seq
                    )
                };
                let event = match phase {
                    Phase::Invoke => Event::Invoke(
                        serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?,
                    ),
                    Phase::Ok if value["type"] == "entries" && value.get("http").is_some() => {
                        match entries_of(value, &http, f == "ledger") {
                            Some(reply) => Event::Ok(reply),
                            None => Event::Info("the walk did not complete".into()),
                        }
                    }
                    Phase::Ok => Event::Ok(
                        serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?,
                    ),
                    Phase::Fail => Event::Fail(
                        serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?,
                    ),
                    Phase::Info => Event::Info(value["why"].as_str().unwrap_or("").to_owned()),
                };
                ops.push(Op {
                    process: u64::from(*process),
                    event,
                    at: r.seq,
                });
            }
            _ => {}
        }
    }
    Ok((ops, ctx))
}

/// A walk's entries and pages, when every page answered 200 and the walk reached its end.
fn entries_of(value: &Value, http: &HashMap<u64, &Record>, ledger: bool) -> Option<Reply> {
    let seqs = value["http"].as_array()?;
    let mut entries: Vec<LedgerEntry> = Vec::new();
    let mut pages: Vec<PageInfo> = Vec::new();
    for s in seqs {
        let r = http.get(&s.as_u64()?)?;
        let Entry::Http { path, .. } = &r.entry else {
            return None;
        };
        let base = path.split('?').next().unwrap_or(path);
        let page: Page = audit::page_of(r, base)?;
        if page.status != 200 {
            return None;
        }
        let body = page.body.as_ref()?;
        let list = body["entries"].as_array()?;
        let got: Vec<LedgerEntry> = list
            .iter()
            .map(|v| serde_json::from_value(v.clone()).ok())
            .collect::<Option<_>>()?;
        pages.push(PageInfo {
            after: page.after,
            limit: page.limit,
            count: got.len() as u64,
            first: got.first().map(|e| e.seq),
            last: got.last().map(|e| e.seq),
            next_after: body["next_after"].as_u64(),
            head: if ledger {
                body["head_seq"].as_u64()
            } else {
                None
            },
        });
        entries.extend(got);
    }
    // A walk cut short (an error page, the budget) is not a whole export.
    if pages.last().is_none_or(|p| p.next_after.is_some()) {
        return None;
    }
    Some(Reply::Entries { entries, pages })
}

struct Try<'a> {
    n: usize,
    workload: String,
    records: Vec<&'a Record>,
}

fn tries<'a>(records: &[&'a Record]) -> Vec<Try<'a>> {
    let mut out: Vec<Try<'a>> = Vec::new();
    for r in records {
        if let Some(v) = note(r, MARK).and_then(|m| m.strip_prefix("tk-try:")) {
            let (n, w) = v.split_once(':').unwrap_or((v, ""));
            out.push(Try {
                n: n.parse().unwrap_or(0),
                workload: w.to_owned(),
                records: Vec::new(),
            });
        } else if let Some(t) = out.last_mut() {
            t.records.push(r);
        }
    }
    out
}

fn marker<'a>(records: &[&'a Record], name: &str) -> Option<&'a str> {
    records.iter().find_map(|r| {
        note(r, MARK)
            .and_then(|m| m.strip_prefix(name))
            .and_then(|m| m.strip_prefix(':'))
    })
}

fn workload_summary(text: &str) -> String {
    let Ok(w) = serde_json::from_str::<Value>(text) else {
        return "?".into();
    };
    let wallets = w["wallets"].as_array().map_or(0, Vec::len);
    let steps: usize = w["wallets"].as_array().map_or(0, |ws| {
        ws.iter()
            .map(|x| x["steps"].as_array().map_or(0, Vec::len))
            .sum()
    });
    format!("{wallets} wallets, {steps} submissions")
}

/// Decides a `token-integrity` case: the property named by its `property` parameter, over the
/// workload it ran or shares.
pub fn check(spec: &CaseSpec, all: &[Record], records: &[&Record]) -> Judgement {
    let name = spec
        .params
        .get("property")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let Some(property) = Property::from_name(name) else {
        return Judgement::new(
            Outcome::Unknown,
            format!("plan error: no property `{name}`"),
            "",
        );
    };
    let (source_id, source): (String, Vec<&Record>) = match marker(records, "tk-shared") {
        Some(id) => (id.to_owned(), case_records(all, id)),
        None => (spec.id.clone(), records.to_vec()),
    };
    if source_id != spec.id {
        if let Some(r) = source
            .iter()
            .find(|r| note(r, ABORT).is_some() || note(r, SKIP).is_some())
        {
            let why = note(r, ABORT)
                .or_else(|| note(r, SKIP))
                .unwrap_or("")
                .trim();
            let outcome = if note(r, SKIP).is_some() {
                Outcome::Skip
            } else {
                Outcome::Unknown
            };
            return Judgement::new(
                outcome,
                format!("the shared workload of {source_id} was not carried out: {why}"),
                "",
            )
            .with("where it stopped", vec![r.seq]);
        }
    }
    let tries = tries(&source);
    if tries.is_empty() {
        return Judgement::new(Outcome::Unknown, "the token workload did not run", "");
    }
    let seed = marker(&source, "tk-seed").unwrap_or("?").to_owned();
    let minimal: Option<usize> = marker(&source, "tk-minimal").and_then(|m| m.parse().ok());
    let mut first: Option<(Validity, usize)> = None;
    let mut invalid: Vec<(usize, &Try<'_>, Vec<Op>, history::Witness, usize)> = Vec::new();
    for t in &tries {
        let (h, c) = match history_of(&t.records) {
            Ok(x) => x,
            Err(why) => {
                if first.is_none() {
                    first = Some((Validity::Unknown { why }, 0));
                }
                continue;
            }
        };
        let a = history::check(&h, &c);
        let v = a.get(property).clone();
        if let Validity::Invalid {
            witness,
            violations,
        } = &v
        {
            invalid.push((t.n, t, h.clone(), witness.clone(), *violations));
        }
        if first.is_none() {
            first = Some((v, a.stats.ops));
        }
    }
    let shared = if source_id == spec.id {
        String::new()
    } else {
        format!(" (the workload of {source_id})")
    };
    if !invalid.is_empty() {
        // The minimal attempt proptest settled on, else the smallest failing one.
        let pick = invalid
            .iter()
            .position(|x| Some(x.0) == minimal)
            .unwrap_or_else(|| {
                invalid
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, x)| (x.3.ops.len(), x.1.workload.len()))
                    .map_or(0, |(i, _)| i)
            });
        let (n, t, h, w, violations) = &invalid[pick];
        let evidence: Vec<u64> = w
            .ops
            .iter()
            .filter_map(|&i| h.get(i).map(|o| o.at))
            .collect();
        let observed = format!(
            "witness (journal #, process, phase, value):{}\n\nattempt {n} of {} ({}), run seed {seed}{shared}; {violations} violation(s) of {} in that history, {} ops",
            history::render_ops(h, w),
            tries.len(),
            workload_summary(&t.workload),
            property.name(),
            h.len()
        );
        let mut j = Judgement::new(
            Outcome::Broken,
            format!("{} is broken: {}", property.name(), w.explanation),
            observed,
        )
        .with("the witness: the operations involved", evidence);
        if invalid[0].0 != *n {
            let first_fail = &invalid[0];
            j = j.with(
                "the first failing history's witness, before shrinking",
                first_fail
                    .3
                    .ops
                    .iter()
                    .filter_map(|&i| first_fail.2.get(i).map(|o| o.at))
                    .collect(),
            );
        }
        return j;
    }
    match first {
        Some((Validity::Valid { summary }, ops)) => Judgement::new(
            Outcome::Pass,
            format!("{}: {summary}", property.name()),
            format!(
                "{ops} operations in the history of {}{shared}, run seed {seed}",
                workload_summary(&tries[0].workload)
            ),
        )
        .with(
            "the workload",
            tries[0]
                .records
                .first()
                .map(|r| vec![r.seq])
                .unwrap_or_default(),
        ),
        Some((Validity::Unknown { why }, _)) => Judgement::new(
            Outcome::Unknown,
            format!("{} is undecided: {why}", property.name()),
            format!("run seed {seed}{shared}"),
        ),
        _ => Judgement::new(Outcome::Unknown, "no history could be read", ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_plans_the_same_full_size_workload() {
        let p = TokenParams::default();
        let a = first_workload(7, &p).expect("workload");
        let b = first_workload(7, &p).expect("workload");
        assert_eq!(a, b);
        assert_eq!(a.wallets.len(), p.wallets, "starts with every wallet");
        assert!(a.wallets.iter().all(|w| w.steps.len() == p.steps));
        assert_ne!(first_workload(8, &p), Some(a));
    }

    #[test]
    fn nonces_carry_directives() {
        let t = tag("abcdef0123456789", 3, Directive::Crash, false);
        assert_eq!(directive_of(&t), Directive::Crash);
        assert_eq!(directive_of(&format!("{t}.b")), Directive::Crash);
        assert_eq!(directive_of("probe-1"), Directive::Normal);
        assert!(t.len() <= 128);
    }

    #[test]
    fn body_hashes_follow_the_same_submission_rule() {
        let input = json!({"nonce": "n", "work_ms": 1});
        assert_eq!(
            body_hash("cert.probe", &input, 1000),
            body_hash("cert.probe", &input, 1000)
        );
        assert_ne!(
            body_hash("cert.probe", &input, 1000),
            body_hash("cert.probe", &input, 1500)
        );
    }
}

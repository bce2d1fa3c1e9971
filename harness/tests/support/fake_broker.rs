//! TEST DOUBLE: the worker-channel half of the fake realm: a tiny in-memory broker with
//! enrolment, heartbeats and health states, pinned `cert.probe` dispatch, fenced leases with
//! lapse, progress and re-dispatch, dead letter, and a ledger of mint, reserve, capture and
//! release entries behind the balance and statement endpoints. It implements just what the
//! `workers` suite exercises, with switchable defects, so each of those cases can be shown to
//! FAIL against the bug it looks for. It is not a realm: no durability, no fairness, no
//! signature checks on REST, no idempotency.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use mtor_harness::contract::Contract;
use mtor_harness::scripted::probe_digest;
use mtor_harness::wire::{event, new_id};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::fake_realm::Defect;

mod dispatch_ext;
mod ledger_ext;

/// Where a connection's outbound frames go.
pub type Tx = UnboundedSender<String>;

/// The double's lease terms, advertised in its manifest and `worker.enrolled`: short, so the
/// suite runs fast, but with room for a loaded test machine.
pub const LEASE_MS: u64 = 400;
/// Grace after a deadline.
pub const GRACE_MS: u64 = 100;
/// Attempts before dead letter.
pub const MAX_ATTEMPTS: u64 = 3;
/// Heartbeat interval.
pub const HEARTBEAT_MS: u64 = 100;

/// The manifest's `lease` section.
pub fn lease_json() -> Value {
    json!({"lease_ms": LEASE_MS, "grace_ms": GRACE_MS, "max_attempts": MAX_ATTEMPTS,
           "heartbeat_interval_ms": HEARTBEAT_MS})
}

const PROBE_COST: i64 = 1000;
const FEE_BPS: i64 = 500;

struct Worker {
    key: String,
    tx: Tx,
    intents: Vec<String>,
    concurrency: usize,
    running: usize,
    last_beat: Instant,
    connected: bool,
    latched_unhealthy: bool,
}

#[derive(Clone)]
struct Lease {
    worker_id: String,
    attempt: u64,
    epoch: u64,
    deadline: Instant,
    done: bool,
}

#[derive(PartialEq)]
enum State {
    Queued,
    Running,
    Terminal,
}

struct Intent {
    wallet: String,
    session: u64,
    submit_id: String,
    input: Value,
    max_cost: i64,
    key: String,
    state: State,
    attempts: u64,
    lease: Option<Lease>,
    lapsed: Option<(u64, u64)>,
    /// Sessions attached by `resume` (INT-12), besides the submitting one.
    attached: Vec<u64>,
    /// Whether the terminal event reached a session.
    delivered: bool,
}

/// The broker state of the double, shared by every connection under one lock.
pub struct Broker {
    defect: Option<Defect>,
    contract: Contract,
    sysop: String,
    workers: BTreeMap<String, Worker>,
    sessions: BTreeMap<u64, Tx>,
    intents: BTreeMap<String, Intent>,
    queue: VecDeque<String>,
    ledger: Vec<Value>,
    next_epoch: u64,
    next_conn: u64,
    /// Idempotency, cancels, exports and the audit log (the `tokens` and `audit` suites).
    ext: ledger_ext::Ext,
    /// Admission limits, fair dispatch order and fetch (the `dispatch` suite).
    disp: dispatch_ext::Ext,
    /// `/metrics` counters: admitted, dispatched, succeeded (HLT-6).
    counts: [u64; 3],
}

fn send(tx: &Tx, v: Value) {
    let _ = tx.send(v.to_string());
}

fn receipt(corr: Option<&str>, body: &Value, refused: Option<&str>) -> Value {
    let mut b = json!({"task_id": body["task_id"], "attempt": body["attempt"], "epoch": body["epoch"],
                       "status": if refused.is_some() { "refused" } else { "accepted" }});
    if let Some(code) = refused {
        b["code"] = json!(code);
    }
    event("task.receipt", corr, b)
}

fn now_ts() -> String {
    mtor_harness::wire::now_rfc3339()
}

impl Broker {
    /// The connection an intent was submitted on.
    pub fn submitted_on(&self, intent_id: &str) -> Option<u64> {
        self.intents.get(intent_id).map(|i| i.session)
    }

    /// The `/metrics` counters: intents admitted, tasks dispatched, intents succeeded.
    pub fn counts(&self) -> [u64; 3] {
        self.counts
    }

    /// A broker with the given defect; `sysop` may mint.
    pub fn new(defect: Option<Defect>, sysop: String) -> Self {
        Self {
            defect,
            contract: Contract::embedded().expect("contract"),
            sysop,
            workers: BTreeMap::new(),
            sessions: BTreeMap::new(),
            intents: BTreeMap::new(),
            queue: VecDeque::new(),
            ledger: Vec::new(),
            next_epoch: 1,
            next_conn: 1,
            ext: ledger_ext::Ext::new(),
            disp: dispatch_ext::Ext::default(),
            counts: [0; 3],
        }
        .started()
    }

    fn started(mut self) -> Self {
        self.audit(
            "realm.started",
            "realm",
            super::fake_realm::REALM_ID,
            json!({"version": "0.0.0-fake", "fee_bps": FEE_BPS}),
        );
        self
    }

    fn is(&self, d: Defect) -> bool {
        self.defect == Some(d)
    }

    /// A fresh connection number.
    pub fn conn(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    /// Whether `key` is the sysop.
    pub fn is_sysop(&self, key: &str) -> bool {
        key == self.sysop
    }

    /// Whether the double runs with defect `d`.
    pub fn is_defect(&self, d: Defect) -> bool {
        self.is(d)
    }

    /// Sends `frame` to every client session but `except`'s (the `RefusalsToAll` bug).
    pub fn broadcast(&self, frame: &Value, except: u64) {
        for (conn, tx) in &self.sessions {
            if *conn != except {
                send(tx, frame.clone());
            }
        }
    }

    // ---------------------------------------------------------------- ledger

    fn post(&mut self, kind: &str, intent: Option<&str>, idem: &str, postings: &[(String, i64)]) {
        let seq = self.ledger.len() as u64 + 1;
        let postings: Vec<Value> = postings
            .iter()
            .filter(|(_, a)| *a != 0)
            .map(|(account, amount)| json!({"account": account, "amount": amount}))
            .collect();
        self.ledger.push(
            json!({"seq": seq, "ts": now_ts(), "kind": kind, "intent_id": intent,
                                "idempotency_key": idem, "postings": postings}),
        );
    }

    fn balance_of(&self, account: &str) -> i64 {
        self.ledger
            .iter()
            .flat_map(|e| e["postings"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["account"].as_str() == Some(account))
            .filter_map(|p| p["amount"].as_i64())
            .sum()
    }

    /// `wallet.mint` by the sysop: the `wallet.minted` reply.
    pub fn mint(&mut self, corr: Option<&str>, body: &Value) -> Value {
        if let Some(reply) = self.mint_replay(corr, body) {
            return reply;
        }
        let wallet = body["wallet"].as_str().unwrap_or_default().to_owned();
        let amount = body["amount"].as_i64().unwrap_or(0);
        let idem = body["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.post(
            "mint",
            None,
            &idem,
            &[
                ("realm:issuance".into(), -amount),
                (format!("wallet:{wallet}"), amount),
            ],
        );
        let seq = self.head_seq();
        self.minted(body, seq);
        let balance = self.balance_of(&format!("wallet:{wallet}"));
        event(
            "wallet.minted",
            corr,
            json!({"wallet": wallet, "amount": amount, "idempotency_key": idem,
                   "entry_seq": self.ledger.len(), "balance": balance}),
        )
    }

    /// `GET /v1/wallets/{key}/balance`.
    pub fn balance_json(&self, key: &str) -> Value {
        json!({"wallet": key, "available": self.balance_of(&format!("wallet:{key}")),
               "held": self.balance_of(&format!("hold:{key}")), "as_of_seq": self.ledger.len()})
    }

    // ---------------------------------------------------------------- sessions and workers

    /// A client session opened on connection `conn`.
    pub fn session_open(&mut self, conn: u64, tx: Tx) {
        self.sessions.insert(conn, tx);
    }

    /// A client connection closed.
    pub fn session_close(&mut self, conn: u64) {
        self.sessions.remove(&conn);
    }

    /// Enrols a worker; returns its id and the `worker.enrolled` body.
    pub fn enrol(
        &mut self,
        key: &str,
        intents: Vec<String>,
        concurrency: usize,
        tx: Tx,
    ) -> (String, Value) {
        let id = new_id();
        self.workers.insert(
            id.clone(),
            Worker {
                key: key.to_owned(),
                tx,
                intents,
                concurrency: concurrency.max(1),
                running: 0,
                last_beat: Instant::now(),
                connected: true,
                latched_unhealthy: false,
            },
        );
        let attempts = if self.is(Defect::EnrolledTermsDiffer) {
            MAX_ATTEMPTS + 2
        } else {
            MAX_ATTEMPTS
        };
        let body = json!({"worker_id": id, "heartbeat_interval_ms": HEARTBEAT_MS,
                          "lease_ms": LEASE_MS, "max_attempts": attempts});
        self.audit(
            "worker.joined",
            key,
            &id,
            json!({"concurrency": concurrency}),
        );
        self.dispatch();
        (id, body)
    }

    /// A heartbeat.
    pub fn heartbeat(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.last_beat = Instant::now();
        }
        self.dispatch();
    }

    fn state_of(&self, w: &Worker) -> &'static str {
        if self.is(Defect::HealthIgnoresHeartbeats) || !w.connected {
            return "healthy";
        }
        let since = w.last_beat.elapsed();
        let i = Duration::from_millis(HEARTBEAT_MS);
        if w.latched_unhealthy || since > 3 * i {
            "unhealthy"
        } else if since > 2 * i {
            "suspect"
        } else {
            "healthy"
        }
    }

    /// The `workers` of `/v1/health`, from `template` (one item of the corpus example).
    pub fn health_workers(&mut self, template: &Value) -> Vec<Value> {
        if self.is(Defect::HealthWithoutWorkers) {
            return Vec::new();
        }
        let keep_dead = self.is(Defect::HealthKeepsDeadWorkers);
        let stuck = self.is(Defect::StuckUnhealthy);
        let mut out = Vec::new();
        let ids: Vec<String> = self.workers.keys().cloned().collect();
        for id in ids {
            let state = self.state_of(&self.workers[&id]);
            let w = self.workers.get_mut(&id).expect("listed");
            if !w.connected && !keep_dead {
                continue;
            }
            if stuck && state == "unhealthy" {
                w.latched_unhealthy = true;
            }
            let mut item = template.clone();
            item["worker_id"] = json!(id);
            item["state"] = json!(state);
            item["intents"] = json!(w.intents);
            item["running"] = json!(w.running);
            item["capacity"] = json!(w.concurrency);
            item["last_heartbeat_ms"] = json!(w.last_beat.elapsed().as_millis() as u64);
            out.push(item);
        }
        out
    }

    /// A worker's connection closed: its leases lapse at once.
    pub fn worker_lost(&mut self, worker_id: &str) {
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        w.connected = false;
        let key = w.key.clone();
        self.audit(
            "worker.left",
            &key,
            worker_id,
            json!({"reason": "disconnected"}),
        );
        let held: Vec<String> = self
            .intents
            .iter()
            .filter(|(_, i)| {
                i.state == State::Running
                    && i.lease
                        .as_ref()
                        .is_some_and(|l| l.worker_id == worker_id && !l.done)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in held {
            if self.is(Defect::ForgetLostLeases) {
                // The bug: the lease is dropped with its worker and the task is never resumed.
                if let Some(i) = self.intents.get_mut(&id) {
                    i.lease = None;
                }
                continue;
            }
            self.lapse(&id);
        }
        self.dispatch();
    }

    // ---------------------------------------------------------------- intents

    /// `intent.submit` of a session: the admission reply.
    pub fn submit(&mut self, conn: u64, wallet: &str, ev: &Value) -> Value {
        let corr = ev["id"].as_str();
        let body = &ev["body"];
        let idem = body["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let reject = |code: &str| {
            event(
                "intent.rejected",
                corr,
                json!({"idempotency_key": idem, "code": code, "message": code}),
            )
        };
        // Check 3, idempotency, comes before feasibility.
        if let Some(reply) = self.submit_replay(wallet, ev) {
            return reply;
        }
        if body["intent"] != "cert.probe" {
            return reject("INFEASIBLE");
        }
        let mut input = body["input"].clone();
        if self.is(Defect::SanitizeInput) {
            // The bug: a well-meant escape of the nonce on admission (SEC-2 forbids it).
            if let Some(n) = input["nonce"].as_str() {
                let clean: String = n.chars().filter(|c| !c.is_control()).collect();
                input["nonce"] = json!(clean.replace('<', "&lt;"));
            }
        }
        let pin = input["worker_key"].as_str().map(str::to_owned);
        let ignore_pin = self.is(Defect::PinIgnored);
        let feasible = self.workers.values().any(|w| {
            w.connected
                && w.intents.iter().any(|n| n == "cert.probe")
                && (ignore_pin || pin.as_deref().is_none_or(|k| k == w.key))
        });
        if !feasible {
            return reject("INFEASIBLE");
        }
        let max_cost = body["max_cost"].as_i64().unwrap_or(0);
        if max_cost < PROBE_COST {
            return reject("COST_TOO_LOW");
        }
        // Checks 7 and 8 (per-wallet limit, queue capacity) come before the balance.
        if let Some(refusal) = self.admission_limits(wallet, corr, &idem) {
            return refusal;
        }
        let mut available = self.balance_of(&format!("wallet:{wallet}"));
        if self.is(Defect::OverdrawOnRace) {
            // The bug: money reserved for intents in flight still counts as available.
            available += self.balance_of(&format!("hold:{wallet}"));
        }
        if available < max_cost {
            return reject("INSUFFICIENT_FUNDS");
        }
        let id = new_id();
        self.post(
            "reserve",
            Some(&id),
            &idem,
            &[
                (format!("wallet:{wallet}"), -max_cost),
                (format!("hold:{wallet}"), max_cost),
            ],
        );
        self.intents.insert(
            id.clone(),
            Intent {
                wallet: wallet.to_owned(),
                session: conn,
                submit_id: corr.unwrap_or_default().to_owned(),
                input,
                max_cost,
                key: idem.clone(),
                state: State::Queued,
                attempts: 0,
                lease: None,
                lapsed: None,
                attached: Vec::new(),
                delivered: false,
            },
        );
        self.queue.push_back(id.clone());
        self.note_queued(&id);
        let seq = self.head_seq();
        self.admitted(wallet, ev, &id, max_cost, seq);
        self.counts[0] += 1;
        let reply = event(
            "intent.accepted",
            corr,
            json!({"intent_id": id, "idempotency_key": idem, "reserved": max_cost,
                   "position": self.queue.len() - 1, "queue_depth": self.queue.len()}),
        );
        // The acceptance goes out before any dispatch of the intent (INT-4).
        if let Some(tx) = self.sessions.get(&conn) {
            send(tx, reply);
        }
        self.dispatch();
        Value::Null
    }

    fn dispatch(&mut self) {
        let ignore_pin = self.is(Defect::PinIgnored);
        let mut waiting = VecDeque::new();
        self.queue = self.dispatch_order();
        while let Some(id) = self.queue.pop_front() {
            let Some(intent) = self.intents.get(&id) else {
                continue;
            };
            if self.held_back(&id) {
                waiting.push_back(id);
                continue;
            }
            let pin = intent.input["worker_key"].as_str().map(str::to_owned);
            let pick = self
                .workers
                .iter()
                .filter(|(_, w)| {
                    w.connected
                        && w.running < w.concurrency
                        && w.intents.iter().any(|n| n == "cert.probe")
                        && self.state_of(w) != "unhealthy"
                        && (ignore_pin || pin.as_deref().is_none_or(|k| k == w.key))
                })
                .min_by_key(|(wid, w)| (self.tried(&id, wid), w.running))
                .map(|(id, _)| id.clone());
            let Some(wid) = pick else {
                waiting.push_back(id);
                continue;
            };
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let intent = self.intents.get_mut(&id).expect("present");
            intent.attempts += 1;
            intent.state = State::Running;
            intent.lapsed = None;
            intent.lease = Some(Lease {
                worker_id: wid.clone(),
                attempt: intent.attempts,
                epoch,
                deadline: Instant::now() + Duration::from_millis(LEASE_MS),
                done: false,
            });
            let deadline = humantime::format_rfc3339_millis(
                std::time::SystemTime::now() + Duration::from_millis(LEASE_MS),
            )
            .to_string();
            let assign = event(
                "task.assign",
                None,
                json!({"task_id": id, "attempt": intent.attempts, "epoch": epoch,
                       "intent": "cert.probe", "input": intent.input, "deadline": deadline,
                       "lease_ms": LEASE_MS}),
            );
            let attempt = intent.attempts;
            self.dispatched(&id, &wid, attempt, epoch);
            self.counts[1] += 1;
            self.note_dispatch(&id);
            let w = self.workers.get_mut(&wid).expect("picked");
            w.running += 1;
            send(&w.tx, assign);
        }
        self.queue = waiting;
    }

    /// Ends the current lease of `id` without a result: re-dispatch or dead letter.
    fn lapse(&mut self, id: &str) {
        let Some(intent) = self.intents.get_mut(id) else {
            return;
        };
        let Some(lease) = intent.lease.take() else {
            return;
        };
        intent.lapsed = Some((lease.attempt, lease.epoch));
        let data =
            json!({"worker_id": lease.worker_id, "attempt": lease.attempt, "epoch": lease.epoch});
        self.audit("lease.lapsed", "realm", id, data);
        if let Some(w) = self.workers.get_mut(&lease.worker_id) {
            w.running = w.running.saturating_sub(1);
        }
        self.after_attempt(id, true, "WORKER_FAILED");
    }

    fn after_attempt(&mut self, id: &str, retryable: bool, code: &str) {
        let Some(intent) = self.intents.get_mut(id) else {
            return;
        };
        if retryable && intent.attempts < MAX_ATTEMPTS {
            intent.state = State::Queued;
            self.queue.push_front(id.to_owned());
            self.dispatch();
            return;
        }
        let code = if retryable { "DEAD_LETTERED" } else { code };
        let refund = !(code == "DEAD_LETTERED" && self.is(Defect::NoRefundOnDeadLetter));
        self.finish(id, Err(code), refund);
    }

    /// Settles an intent: `Ok((output, worker key))` captures, `Err(code)` fails.
    fn finish(&mut self, id: &str, outcome: Result<(Value, String), &str>, release: bool) {
        let Some(intent) = self.intents.get_mut(id) else {
            return;
        };
        intent.state = State::Terminal;
        let (wallet, key, max_cost, attempts) = (
            intent.wallet.clone(),
            intent.key.clone(),
            intent.max_cost,
            intent.attempts,
        );
        let mut sessions = vec![intent.session];
        sessions.extend(intent.attached.iter().copied());
        let submit_id = intent.submit_id.clone();
        let hold = format!("hold:{wallet}");
        let (frame, captured) = match outcome {
            Ok((output, worker_key)) => {
                let fee = PROBE_COST * FEE_BPS / 10_000;
                let payee = self.payee(id, &worker_key);
                let postings = self.capture_postings(&wallet, &payee, PROBE_COST, fee);
                self.post("capture", Some(id), &key, &postings);
                let seq = self.head_seq();
                let worker = output["worker_id"].as_str().unwrap_or("").to_owned();
                self.ended(
                    id,
                    "succeeded",
                    None,
                    Some(PROBE_COST),
                    Some(output.clone()),
                    &worker,
                );
                self.audit(
                    "ledger.capture",
                    "realm",
                    id,
                    json!({"entry_seq": seq, "cost": PROBE_COST, "fee": fee}),
                );
                self.counts[2] += 1;
                (
                    event(
                        "intent.result",
                        Some(&submit_id),
                        json!({"intent_id": id, "output": output, "cost": PROBE_COST,
                               "released": max_cost - PROBE_COST, "attempts": attempts,
                               "completed_at": now_ts()}),
                    ),
                    PROBE_COST,
                )
            }
            Err(code) => (
                {
                    let state = if code == "DEAD_LETTERED" {
                        "dead"
                    } else {
                        "failed"
                    };
                    self.ended(id, state, Some(code), None, None, "realm");
                    event(
                        "intent.failed",
                        Some(&submit_id),
                        json!({"intent_id": id, "code": code, "message": code,
                           "released": max_cost, "attempts": attempts}),
                    )
                },
                0,
            ),
        };
        let amount = self.to_release(max_cost, captured);
        if release && amount > 0 {
            self.post(
                "release",
                Some(id),
                &key,
                &[(hold, -amount), (format!("wallet:{wallet}"), amount)],
            );
            let seq = self.head_seq();
            self.audit(
                "ledger.release",
                "realm",
                id,
                json!({"entry_seq": seq, "amount": amount}),
            );
        }
        let twice = self.note_terminal(id, &frame);
        let mut delivered = false;
        for tx in sessions.iter().filter_map(|s| self.sessions.get(s)) {
            if twice {
                send(tx, frame.clone());
            }
            send(tx, frame.clone());
            delivered = true;
        }
        if let Some(intent) = self.intents.get_mut(id) {
            intent.delivered = delivered;
        }
    }

    /// `session.hello` `resume` of a session of `wallet`, after its `session.ready` (INT-12,
    /// INT-13): each id of the wallet's intents is answered with `intent.status` (corr = the
    /// hello's id) and attaches the session; a terminal event that reached no session is sent
    /// once. Other ids get nothing.
    pub fn resume(&mut self, conn: u64, wallet: &str, hello_id: &str, ids: &[String]) {
        if self.is(Defect::ResumeIgnored) {
            return;
        }
        let any_wallet = self.is(Defect::ResumeAnyWallet);
        let redeliver = self.is(Defect::ResumeRedelivers);
        let Some(tx) = self.sessions.get(&conn).cloned() else {
            return;
        };
        for id in ids {
            let Some(owner) = self
                .intents
                .get(id)
                .filter(|i| i.wallet == wallet || any_wallet)
                .map(|i| i.wallet.clone())
            else {
                continue;
            };
            let ask = json!({"id": hello_id, "body": {"intent_id": id}});
            send(&tx, self.fetch(&owner, &ask));
            let terminal = self.terminal_of(id);
            let Some(intent) = self.intents.get_mut(id) else {
                continue;
            };
            match terminal {
                Some(frame) if !intent.delivered || redeliver => {
                    intent.delivered = true;
                    send(&tx, frame);
                }
                Some(_) => {}
                None => intent.attached.push(conn),
            }
        }
    }

    fn end_lease(&mut self, task: &str, wid: &str) {
        if let Some(i) = self.intents.get_mut(task) {
            i.lease = None;
        }
        if let Some(w) = self.workers.get_mut(wid) {
            w.running = w.running.saturating_sub(1);
        }
    }

    fn to_worker(&self, wid: &str, frame: Value) {
        if let Some(w) = self.workers.get(wid) {
            send(&w.tx, frame);
        }
    }

    /// `task.progress`, `task.result` or `task.failure` from worker `wid`: its receipt, or
    /// `Null` when the receipt was already sent (before the consequences of the report).
    pub fn task(&mut self, wid: &str, ev: &Value) -> Value {
        let kind = ev["type"].as_str().unwrap_or_default();
        let corr = ev["id"].as_str();
        let body = &ev["body"];
        let task = body["task_id"].as_str().unwrap_or_default().to_owned();
        let (attempt, epoch) = (
            body["attempt"].as_u64().unwrap_or(0),
            body["epoch"].as_u64().unwrap_or(0),
        );
        let accept_stale = self.is(Defect::AcceptStaleEpoch);
        let duplicates_pass =
            self.is(Defect::DeliverDuplicateResult) || self.is(Defect::CaptureTwice);
        let Some(intent) = self.intents.get(&task) else {
            return receipt(corr, body, Some("STALE_EPOCH"));
        };
        let running = intent.state == State::Running;
        let verdict = match &intent.lease {
            None if intent.lapsed == Some((attempt, epoch)) => Some("LEASE_EXPIRED"),
            None => Some("STALE_EPOCH"),
            Some(l) if l.worker_id != wid => Some("STALE_EPOCH"),
            // The AcceptStaleEpoch bug: fencing by holder only, while the task runs.
            Some(l) if (l.attempt, l.epoch) != (attempt, epoch) && !(accept_stale && running) => {
                Some("STALE_EPOCH")
            }
            Some(l) if l.done && !(duplicates_pass && kind == "task.result") => Some("DUPLICATE"),
            Some(_) => None,
        };
        if let Some(code) = verdict {
            return receipt(corr, body, Some(code));
        }
        let repeat = intent.lease.as_ref().is_some_and(|l| l.done);
        let nonce = intent.input["nonce"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (wallet, idem) = (intent.wallet.clone(), intent.key.clone());
        match kind {
            "task.progress" => {
                if !self.is(Defect::ProgressIgnored) {
                    if let Some(l) = self.intents.get_mut(&task).and_then(|i| i.lease.as_mut()) {
                        l.deadline = Instant::now() + Duration::from_millis(LEASE_MS);
                    }
                }
                receipt(corr, body, None)
            }
            "task.failure" => {
                let retryable = body["retryable"].as_bool().unwrap_or(false)
                    || self.is(Defect::RetryNonRetryable);
                let code = match body["code"].as_str() {
                    Some("BAD_INPUT") => "BAD_INPUT",
                    Some("TIMEOUT") => "TIMEOUT",
                    _ => "WORKER_FAILED",
                };
                self.end_lease(&task, wid);
                // The receipt first: the failure's consequences (a re-dispatch) come after it.
                self.to_worker(wid, receipt(corr, body, None));
                self.after_attempt(&task, retryable, code);
                Value::Null
            }
            _ => {
                let output = body["output"].clone();
                let valid = self.is(Defect::AcceptMalformedResult)
                    || (self
                        .contract
                        .validate_with("intents/cert.probe.output", &output)
                        .is_ok_and(|v| v.is_empty())
                        && output["digest"].as_str() == Some(probe_digest(&nonce).as_str())
                        && output["worker_id"].as_str() == Some(wid));
                if !valid {
                    self.end_lease(&task, wid);
                    self.to_worker(wid, receipt(corr, body, Some("INVALID_EVENT")));
                    self.after_attempt(&task, true, "WORKER_FAILED");
                    return Value::Null;
                }
                let key = self
                    .workers
                    .get(wid)
                    .map(|w| w.key.clone())
                    .unwrap_or_default();
                if repeat && self.is(Defect::CaptureTwice) {
                    // The bug: the duplicate is refused on the wire but captured again.
                    self.post(
                        "capture",
                        Some(&task),
                        &idem,
                        &[
                            (format!("hold:{wallet}"), -PROBE_COST),
                            (format!("worker:{key}"), PROBE_COST),
                        ],
                    );
                    return receipt(corr, body, Some("DUPLICATE"));
                }
                if !repeat {
                    if let Some(l) = self.intents.get_mut(&task).and_then(|i| i.lease.as_mut()) {
                        l.done = true;
                    }
                    if let Some(w) = self.workers.get_mut(wid) {
                        w.running = w.running.saturating_sub(1);
                    }
                }
                self.to_worker(wid, receipt(corr, body, None));
                self.finish(&task, Ok((output, key)), !repeat);
                Value::Null
            }
        }
    }

    /// Lapses every lease whose deadline and grace have passed.
    pub fn tick(&mut self) {
        if self.is(Defect::NeverLapse) {
            return;
        }
        let grace = Duration::from_millis(GRACE_MS);
        let now = Instant::now();
        let due: Vec<(String, String, u64)> = self
            .intents
            .iter()
            .filter_map(|(id, i)| {
                let l = i.lease.as_ref()?;
                (i.state == State::Running && !l.done && now > l.deadline + grace)
                    .then(|| (id.clone(), l.worker_id.clone(), l.epoch))
            })
            .collect();
        for (id, wid, epoch) in due {
            if let Some(w) = self.workers.get(&wid).filter(|w| w.connected) {
                send(
                    &w.tx,
                    event(
                        "task.cancel",
                        None,
                        json!({"task_id": id, "epoch": epoch, "reason": "lease_lapsed"}),
                    ),
                );
            }
            self.lapse(&id);
        }
        self.dispatch();
    }
}

//! TEST DOUBLE, the dispatch half of the fake broker: the admission limits of section 8.1 (each
//! wallet's in-flight intents, the queue's capacity) refused explicitly with `retry_after_ms`,
//! round-robin dispatch between wallets (deficit round robin with a quantum of one), and
//! `intent.fetch`. Its defects are the load bugs the `dispatch` suite looks for. A child module of
//! the broker, like `ledger_ext`, so that it can read the broker's private state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use mtor_harness::wire::event;
use serde_json::{json, Value};

use super::{now_ts, Broker, Defect, State};

/// Queued plus running intents a wallet may have (the double's manifest advertises 64).
pub const PER_WALLET_INFLIGHT: usize = 64;
/// Queued intents the double holds (its manifest advertises 1024).
pub const QUEUE_CAPACITY: usize = 1024;
/// The FIFO defect's smaller queue, with no per-wallet limit at all.
const FIFO_QUEUE_CAPACITY: usize = 256;
/// How long the slow-dispatch defect leaves every intent queued, whatever the free capacity.
const SLOW_DISPATCH: Duration = Duration::from_millis(1500);

/// What the broker keeps for dispatch.
#[derive(Default)]
pub struct Ext {
    queued_at: HashMap<String, Instant>,
    /// The wallet served last, so the next round starts after it.
    last_wallet: Option<String>,
    /// Terminal events sent, for `intent.fetch`.
    terminal: HashMap<String, Value>,
}

impl Broker {
    /// Checks 7 and 8 of section 8.1: `Some(refusal)`, or `Some(Null)` when the drop defect
    /// swallows the submission; `None` to go on.
    pub(super) fn admission_limits(
        &self,
        wallet: &str,
        corr: Option<&str>,
        idem: &str,
    ) -> Option<Value> {
        let fifo = self.is(Defect::FifoUnfair);
        let inflight = self
            .intents
            .values()
            .filter(|i| i.wallet == wallet && i.state != State::Terminal)
            .count();
        let capacity = if fifo {
            FIFO_QUEUE_CAPACITY
        } else {
            QUEUE_CAPACITY
        };
        let (code, why) = if !fifo && inflight >= PER_WALLET_INFLIGHT {
            ("RATE_LIMITED", "the wallet has 64 intents in flight")
        } else if self.queue.len() >= capacity {
            ("QUEUE_FULL", "the queue is at capacity")
        } else {
            return None;
        };
        if self.is(Defect::DropUnderOverload) {
            return Some(Value::Null);
        }
        Some(event(
            "intent.rejected",
            corr,
            json!({"idempotency_key": idem, "code": code, "message": why, "retry_after_ms": 250}),
        ))
    }

    /// Notes when an intent was queued.
    pub(super) fn note_queued(&mut self, id: &str) {
        self.disp.queued_at.insert(id.to_owned(), Instant::now());
    }

    /// The queue in the order dispatch should consider it: each wallet's intents in their own
    /// order, the wallets taken in turn starting after the one served last (round robin). The
    /// FIFO defect keeps arrival order.
    pub(super) fn dispatch_order(&mut self) -> VecDeque<String> {
        let queue = std::mem::take(&mut self.queue);
        if self.is(Defect::FifoUnfair) {
            return queue;
        }
        let mut by_wallet: BTreeMap<String, VecDeque<String>> = BTreeMap::new();
        for id in queue {
            let w = self
                .intents
                .get(&id)
                .map(|i| i.wallet.clone())
                .unwrap_or_default();
            by_wallet.entry(w).or_default().push_back(id);
        }
        let mut wallets: Vec<String> = by_wallet.keys().cloned().collect();
        if let Some(last) = &self.disp.last_wallet {
            let start = wallets.partition_point(|w| w <= last);
            wallets.rotate_left(start);
        }
        let mut out = VecDeque::new();
        loop {
            let mut any = false;
            for w in &wallets {
                if let Some(id) = by_wallet.get_mut(w).and_then(VecDeque::pop_front) {
                    out.push_back(id);
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        out
    }

    /// Whether the slow-dispatch defect still holds `id` back.
    pub(super) fn held_back(&self, id: &str) -> bool {
        self.is(Defect::SlowDispatch)
            && self
                .disp
                .queued_at
                .get(id)
                .is_some_and(|t| t.elapsed() < SLOW_DISPATCH)
    }

    /// Notes that `id` was dispatched, so the next round starts after its wallet.
    pub(super) fn note_dispatch(&mut self, id: &str) {
        self.disp.last_wallet = self.intents.get(id).map(|i| i.wallet.clone());
    }

    /// Notes the terminal event sent for `id`; `true` when the double-terminal defect sends it
    /// twice.
    pub(super) fn note_terminal(&mut self, id: &str, frame: &Value) -> bool {
        self.disp.queued_at.remove(id);
        self.disp.terminal.insert(id.to_owned(), frame.clone());
        self.is(Defect::DoubleTerminal)
    }

    /// The terminal event sent for `id`, if it ended.
    pub(super) fn terminal_of(&self, id: &str) -> Option<Value> {
        self.disp.terminal.get(id).cloned()
    }

    /// `intent.fetch` of a session of `wallet` (INT-10).
    pub fn fetch(&self, wallet: &str, ev: &Value) -> Value {
        let corr = ev["id"].as_str();
        let id = ev["body"]["intent_id"].as_str().unwrap_or_default();
        let Some(intent) = self.intents.get(id).filter(|i| i.wallet == wallet) else {
            return event(
                "error",
                corr,
                json!({"code": "NOT_FOUND", "message": "no such intent", "ref": corr}),
            );
        };
        let mut body = json!({"intent_id": id, "intent": "cert.probe", "reserved": intent.max_cost,
                              "attempts": intent.attempts, "updated_at": now_ts()});
        let terminal = self.disp.terminal.get(id);
        body["state"] = json!(match (&intent.state, terminal) {
            (State::Queued, _) => "queued",
            (State::Running, _) => "running",
            (State::Terminal, None) => "cancelled",
            (State::Terminal, Some(t)) => match (t["type"].as_str(), t["body"]["code"].as_str()) {
                (Some("intent.result"), _) => "succeeded",
                (_, Some("DEAD_LETTERED")) => "dead",
                _ => "failed",
            },
        });
        match terminal {
            Some(t) if t["type"] == "intent.result" => {
                body["output"] = t["body"]["output"].clone();
                body["cost"] = t["body"]["cost"].clone();
            }
            Some(t) => body["code"] = t["body"]["code"].clone(),
            None if intent.state == State::Terminal => body["code"] = json!("CANCELLED"),
            None => {}
        }
        event("intent.status", corr, body)
    }
}

//! TEST DOUBLE, the token and audit half of the fake broker: idempotency of submissions and
//! mints, cancels, terminal states for `intent.status`, the paged ledger export and statements,
//! and a hash-chained audit log (RFC 8785 + SHA-256, as section 12 defines it) with its export.
//! Its defects are the token and audit bugs the `tokens` and `audit` suites look for. It is a
//! child module of the broker so that it can keep the broker's state private.

use std::collections::BTreeMap;

use mtor_harness::wire::event;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{now_ts, send, Broker, Defect, State};

/// How an intent ended: (state, code, cost, output).
type Ended = (String, Option<String>, Option<i64>, Option<Value>);

/// What the broker keeps for tokens and audit.
pub struct Ext {
    /// (wallet, key) → (submission hash, intent, reserved).
    bindings: BTreeMap<(String, String), (String, String, i64)>,
    /// Mint key → ((wallet, amount, memo), entry seq).
    mint_bindings: BTreeMap<String, (Value, u64)>,
    /// Workers that held an attempt of each intent, in order.
    tried: BTreeMap<String, Vec<String>>,
    /// Terminal state of each ended intent.
    ended: BTreeMap<String, Ended>,
    /// The audit log.
    audit: Vec<Value>,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn submission_hash(body: &Value) -> String {
    let same = json!({"intent": body["intent"], "input": body["input"], "max_cost": body["max_cost"],
                      "priority": body.get("priority").cloned().unwrap_or(json!(5))});
    sha256_hex(&serde_jcs::to_string(&same).unwrap_or_default())
}

fn page(items: Vec<&Value>, after: u64, limit: u64, skip_one: bool) -> (Vec<Value>, Value) {
    let rest: Vec<&Value> = items
        .into_iter()
        .filter(|v| v["seq"].as_u64().unwrap_or(0) > after)
        .collect();
    let n = usize::try_from(limit).unwrap_or(100);
    let out: Vec<Value> = rest.iter().take(n).map(|v| (*v).clone()).collect();
    let next = if rest.len() > n {
        let last = out.last().and_then(|v| v["seq"].as_u64()).unwrap_or(after);
        // The PagingDropsRecord bug: "next_after" is taken as the first seq not yet returned.
        json!(if skip_one { last + 1 } else { last })
    } else {
        Value::Null
    };
    (out, next)
}

impl Ext {
    /// The state of a fresh double; its audit log starts with `realm.started`.
    pub fn new() -> Self {
        Self {
            bindings: BTreeMap::new(),
            mint_bindings: BTreeMap::new(),
            tried: BTreeMap::new(),
            ended: BTreeMap::new(),
            audit: Vec::new(),
        }
    }
}

impl Broker {
    /// Appends an audit record (section 12.1).
    pub(super) fn audit(&mut self, kind: &str, actor: &str, subject: &str, data: Value) {
        if kind == "ledger.capture" && self.is(Defect::SkipAuditRecord) {
            return; // the bug: captures are not audited
        }
        let log = &mut self.ext.audit;
        let seq = log.len() as u64 + 1;
        let prev = log
            .last()
            .and_then(|r| r["hash"].as_str())
            .unwrap_or(GENESIS)
            .to_owned();
        let mut record = json!({"seq": seq, "ts": now_ts(), "kind": kind, "actor": actor,
                                "subject": subject, "data": data, "prev_hash": prev});
        let mut basis = record.clone();
        if self.defect == Some(Defect::BrokenAuditChain) {
            // The bug: the hash covers the record but not its link to the previous one.
            if let Some(o) = basis.as_object_mut() {
                o.remove("prev_hash");
            }
        }
        record["hash"] = json!(sha256_hex(
            &serde_jcs::to_string(&basis).unwrap_or_default()
        ));
        self.ext.audit.push(record);
    }

    /// Records a failed authentication (`auth.failed`).
    pub fn auth_failed(&mut self, actor: &str, subject: &str, code: &str) {
        let actor = if actor.len() == 64 && actor.bytes().all(|b| b.is_ascii_hexdigit()) {
            actor.to_owned()
        } else {
            "unknown".to_owned()
        };
        self.audit("auth.failed", &actor, subject, json!({ "code": code }));
    }

    /// Admission check 3: a replay or a conflict, when the key is bound.
    pub(super) fn submit_replay(&mut self, wallet: &str, ev: &Value) -> Option<Value> {
        if self.is(Defect::IgnoreIdempotencyKey) {
            return None; // the bug: every submission is a new intent
        }
        let body = &ev["body"];
        let key = body["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (hash, intent, reserved) = self
            .ext
            .bindings
            .get(&(wallet.to_owned(), key.clone()))?
            .clone();
        let corr = ev["id"].as_str();
        if hash != submission_hash(body) {
            return Some(event(
                "intent.rejected",
                corr,
                json!({"idempotency_key": key, "code": "IDEMPOTENCY_CONFLICT", "message": "key bound to another submission"}),
            ));
        }
        let depth = self.queue.len();
        Some(event(
            "intent.accepted",
            corr,
            json!({"intent_id": intent, "idempotency_key": key, "reserved": reserved,
                   "position": 0, "queue_depth": depth}),
        ))
    }

    /// Binds an admitted submission's key and audits the admission.
    pub(super) fn admitted(
        &mut self,
        wallet: &str,
        ev: &Value,
        intent: &str,
        reserved: i64,
        entry_seq: u64,
    ) {
        let body = &ev["body"];
        let key = body["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.ext.bindings.insert(
            (wallet.to_owned(), key),
            (submission_hash(body), intent.to_owned(), reserved),
        );
        self.audit(
            "intent.admitted",
            wallet,
            intent,
            json!({"intent": "cert.probe", "reserved": reserved, "entry_seq": entry_seq}),
        );
    }

    /// Mint idempotency (LED-10): the original reply, or a conflict.
    pub(super) fn mint_replay(&mut self, corr: Option<&str>, body: &Value) -> Option<Value> {
        let key = body["idempotency_key"].as_str().unwrap_or_default();
        let (same, seq) = self.ext.mint_bindings.get(key)?.clone();
        let this = json!([
            body["wallet"],
            body["amount"],
            body.get("memo").cloned().unwrap_or(json!(""))
        ]);
        if this != same {
            return Some(event(
                "error",
                corr,
                json!({"code": "IDEMPOTENCY_CONFLICT", "message": "mint key bound to another mint", "ref": corr}),
            ));
        }
        let wallet = body["wallet"].as_str().unwrap_or_default();
        let balance = self.balance_of(&format!("wallet:{wallet}"));
        Some(event(
            "wallet.minted",
            corr,
            json!({"wallet": wallet, "amount": body["amount"], "idempotency_key": key,
                   "entry_seq": seq, "balance": balance}),
        ))
    }

    /// Binds a mint's key and audits it.
    pub(super) fn minted(&mut self, body: &Value, seq: u64) {
        let key = body["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let same = json!([
            body["wallet"],
            body["amount"],
            body.get("memo").cloned().unwrap_or(json!(""))
        ]);
        self.ext.mint_bindings.insert(key, (same, seq));
        let sysop = self.sysop.clone();
        self.audit(
            "sysop.mint",
            &sysop,
            body["wallet"].as_str().unwrap_or_default(),
            json!({"amount": body["amount"], "entry_seq": seq}),
        );
    }

    /// Whether `worker` already held an attempt of `intent` (re-attempts prefer others, LSE-8).
    pub(super) fn tried(&self, intent: &str, worker: &str) -> bool {
        self.ext
            .tried
            .get(intent)
            .is_some_and(|t| t.iter().any(|w| w == worker))
    }

    /// Notes and audits a dispatch.
    pub(super) fn dispatched(&mut self, intent: &str, worker: &str, attempt: u64, epoch: u64) {
        self.ext
            .tried
            .entry(intent.to_owned())
            .or_default()
            .push(worker.to_owned());
        self.audit(
            "task.dispatched",
            "realm",
            intent,
            json!({"worker_id": worker, "attempt": attempt, "epoch": epoch}),
        );
    }

    /// The key a capture pays: the worker whose result was accepted, or, with the
    /// PayFirstAttemptWorker bug, the holder of the first attempt.
    pub(super) fn payee(&self, intent: &str, worker_key: &str) -> String {
        if self.is(Defect::PayFirstAttemptWorker) {
            let first = self.ext.tried.get(intent).and_then(|t| t.first());
            if let Some(w) = first.and_then(|w| self.workers.get(w)) {
                return w.key.clone();
            }
        }
        worker_key.to_owned()
    }

    /// The postings of a capture of `cost` (section 11.2), with the DropFeeLeg bug.
    pub(super) fn capture_postings(
        &self,
        wallet: &str,
        worker_key: &str,
        cost: i64,
        fee: i64,
    ) -> Vec<(String, i64)> {
        let mut p = vec![
            (format!("hold:{wallet}"), -cost),
            (format!("worker:{worker_key}"), cost - fee),
        ];
        if !self.is(Defect::DropFeeLeg) {
            p.push(("realm:fees".into(), fee));
        }
        p
    }

    /// What a settlement releases: the rest of the reservation (or, with the CaptureAndRelease
    /// bug, all of it).
    pub(super) fn to_release(&self, max_cost: i64, captured: i64) -> i64 {
        if self.is(Defect::CaptureAndRelease) {
            max_cost
        } else {
            max_cost - captured
        }
    }

    /// Records how an intent ended, for `intent.status`, and audits it.
    pub(super) fn ended(
        &mut self,
        intent: &str,
        state: &str,
        code: Option<&str>,
        cost: Option<i64>,
        output: Option<Value>,
        actor: &str,
    ) {
        self.ext.ended.insert(
            intent.to_owned(),
            (state.to_owned(), code.map(str::to_owned), cost, output),
        );
        match state {
            "succeeded" => self.audit(
                "intent.completed",
                actor,
                intent,
                json!({"cost": cost, "units": 1}),
            ),
            "dead" => self.audit("intent.dead_lettered", "realm", intent, json!({})),
            "cancelled" => self.audit("intent.cancelled", "realm", intent, json!({})),
            _ => self.audit("intent.failed", "realm", intent, json!({ "code": code })),
        }
    }

    /// The seq of the last ledger entry.
    pub(super) fn head_seq(&self) -> u64 {
        self.ledger.len() as u64
    }

    /// `intent.cancel` of a session of `wallet` (section 8.6): its reply, or `Null` when sent.
    pub fn cancel(&mut self, wallet: &str, ev: &Value) -> Value {
        let corr = ev["id"].as_str();
        let id = ev["body"]["intent_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let not_found = || {
            event(
                "error",
                corr,
                json!({"code": "NOT_FOUND", "message": "no such intent", "ref": corr}),
            )
        };
        let Some(intent) = self.intents.get(&id).filter(|i| i.wallet == wallet) else {
            return not_found();
        };
        if intent.state == State::Terminal {
            let (state, code, cost, output) =
                self.ext
                    .ended
                    .get(&id)
                    .cloned()
                    .unwrap_or(("failed".into(), None, None, None));
            let mut body = json!({"intent_id": id, "state": state, "intent": "cert.probe",
                                  "reserved": intent.max_cost, "attempts": intent.attempts, "updated_at": now_ts()});
            if let (Some(c), Some(o)) = (cost, output) {
                body["cost"] = json!(c);
                body["output"] = o;
            }
            if let Some(c) = code {
                body["code"] = json!(c);
            }
            return event("intent.status", corr, body);
        }
        let (wallet, key, max_cost) = (intent.wallet.clone(), intent.key.clone(), intent.max_cost);
        if let Some(l) = intent.lease.clone() {
            // Running: the holder is told and its lease ends; no result of it counts afterwards.
            if let Some(w) = self.workers.get(&l.worker_id) {
                send(
                    &w.tx,
                    event(
                        "task.cancel",
                        None,
                        json!({"task_id": id, "epoch": l.epoch, "reason": "client_cancel"}),
                    ),
                );
            }
            self.end_lease(&id, &l.worker_id);
        }
        self.queue.retain(|q| q != &id);
        if let Some(i) = self.intents.get_mut(&id) {
            i.state = State::Terminal;
            i.lapsed = None;
        }
        self.post(
            "release",
            Some(&id),
            &key,
            &[
                (format!("hold:{wallet}"), -max_cost),
                (format!("wallet:{wallet}"), max_cost),
            ],
        );
        let seq = self.head_seq();
        self.audit(
            "ledger.release",
            "realm",
            &id,
            json!({"entry_seq": seq, "amount": max_cost}),
        );
        self.ended(&id, "cancelled", Some("CANCELLED"), None, None, "realm");
        event(
            "intent.cancelled",
            corr,
            json!({"intent_id": id, "released": max_cost}),
        )
    }

    /// `GET /v1/ledger?after=&limit=`.
    pub fn ledger_json(&self, after: u64, limit: u64) -> Value {
        let (entries, next) = page(self.ledger.iter().collect(), after, limit, false);
        json!({"entries": entries, "next_after": next, "head_seq": self.head_seq()})
    }

    /// `GET /v1/wallets/{key}/statement?after=&limit=`.
    pub fn statement_page(&self, key: &str, after: u64, limit: u64) -> Value {
        let mine = [format!("wallet:{key}"), format!("hold:{key}")];
        let omit_mints = self.is(Defect::StatementOmitsMints);
        let entries: Vec<&Value> = self
            .ledger
            .iter()
            .filter(|e| !(omit_mints && e["kind"] == "mint"))
            .filter(|e| {
                e["postings"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| mine.iter().any(|m| p["account"].as_str() == Some(m)))
                })
            })
            .collect();
        let (entries, next) = page(entries, after, limit, false);
        json!({"wallet": key, "entries": entries, "next_after": next})
    }

    /// `GET /v1/audit?after=&limit=`.
    pub fn audit_json(&self, after: u64, limit: u64) -> Value {
        let skip = self.is(Defect::PagingDropsRecord);
        let (records, next) = page(self.ext.audit.iter().collect(), after, limit, skip);
        let head = self
            .ext
            .audit
            .last()
            .map(|r| json!({"seq": r["seq"], "hash": r["hash"]}))
            .unwrap_or(json!({"seq": 0, "hash": GENESIS}));
        json!({"records": records, "next_after": next, "head": head})
    }
}

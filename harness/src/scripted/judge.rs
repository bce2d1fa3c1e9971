//! The pure half of the scripted-worker cases: what the journal shows, and the judgement of each
//! script from it alone. `mtor-cert verify` re-runs these over a bundle's journal.
//!
//! Everything is read from recorded frames, HTTP exchanges and the driver's markers: the lease
//! terms from the `GET /v1/manifest` the case made, worker identities from `worker.register` and
//! `worker.enrolled`, leases from `task.assign`, answers from `task.receipt` (matched by `corr`),
//! the client's view from its `intent.*` events, and money from the signed balance and statement
//! reads. Times are the journal's own (`t_us`, the harness's clock when a frame was sent or
//! received), so no verdict trusts a timestamp the realm wrote.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::{Params, Script, PROBE_COST};
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;

/// The lease terms a realm advertises in its manifest (`lease`), section 9 and 10.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Lease length.
    pub lease_ms: u64,
    /// Grace after a deadline before a lapse is acted on.
    pub grace_ms: u64,
    /// Attempts before dead letter.
    pub max_attempts: u64,
    /// Heartbeat interval I: suspect after 2 I, unhealthy after 3 I.
    pub heartbeat_interval_ms: u64,
}

impl Terms {
    /// The `lease` section of a manifest body, if complete.
    pub fn from_manifest(manifest: &Value) -> Option<Self> {
        let lease = manifest.get("lease")?;
        let num = |k: &str| lease.get(k).and_then(Value::as_u64);
        Some(Self {
            lease_ms: num("lease_ms")?,
            grace_ms: num("grace_ms")?,
            max_attempts: num("max_attempts")?,
            heartbeat_interval_ms: num("heartbeat_interval_ms")?,
        })
    }

    /// The longest a silent lease may take to be re-dispatched: lease + grace + the slack.
    pub fn redispatch_bound_ms(&self, slack_ms: u64) -> u64 {
        self.lease_ms + self.grace_ms + slack_ms
    }
}

/// The cert.probe digest: lowercase hex SHA-256 of `"cert.probe\n" + nonce` (section 15.1).
pub fn probe_digest(nonce: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"cert.probe\n");
    h.update(nonce.as_bytes());
    hex::encode(h.finalize())
}

/// A driver marker.
#[derive(Debug, Clone)]
struct Mark<'r> {
    idx: usize,
    seq: u64,
    t_us: u64,
    name: &'r str,
    value: &'r str,
}

/// A `task.assign` a harness worker received.
#[derive(Debug, Clone)]
struct AssignSeen {
    seq: u64,
    t_us: u64,
    conn: u32,
    task_id: String,
    attempt: u64,
    epoch: u64,
    input: Value,
}

/// A task event a harness worker sent.
#[derive(Debug, Clone)]
struct SentTask {
    idx: usize,
    seq: u64,
    t_us: u64,
    kind: String,
    id: String,
    task_id: String,
    attempt: u64,
    epoch: u64,
}

/// A `task.receipt`.
#[derive(Debug, Clone)]
struct ReceiptSeen {
    seq: u64,
    status: String,
    code: Option<String>,
}

/// A frame on a client connection.
#[derive(Debug, Clone)]
struct ClientEvent {
    idx: usize,
    seq: u64,
    kind: String,
    corr: Option<String>,
    body: Value,
}

/// A harness `intent.submit`.
#[derive(Debug, Clone)]
struct Submitted {
    id: String,
    seq: u64,
    nonce: String,
    pin: Option<String>,
    max_cost: u64,
}

/// An HTTP exchange.
#[derive(Debug, Clone)]
struct HttpSeen {
    idx: usize,
    seq: u64,
    t_us: u64,
    path: String,
    status: u16,
    body: String,
}

/// A worker connection of the harness.
#[derive(Debug, Clone, Default)]
struct WorkerSeen {
    key: String,
    worker_id: String,
    enrolled: Option<(u64, Value)>,
}

/// Everything one scripted case recorded, sorted by kind.
struct Seen<'r> {
    marks: Vec<Mark<'r>>,
    terms: Option<(Terms, u64)>,
    workers: BTreeMap<u32, WorkerSeen>,
    assigns: Vec<AssignSeen>,
    sent: Vec<SentTask>,
    receipts: BTreeMap<String, ReceiptSeen>,
    cancels: Vec<(u64, u64, Value)>,
    beats: Vec<(u32, u64)>,
    client: Vec<ClientEvent>,
    submits: Vec<Submitted>,
    http: Vec<HttpSeen>,
}

fn parse(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
}

impl<'r> Seen<'r> {
    fn read(records: &[&'r Record]) -> Self {
        let marks: Vec<Mark<'r>> = records
            .iter()
            .enumerate()
            .filter_map(|(idx, r)| {
                let rest = note(r, MARK)?;
                let (name, value) = rest.split_once(':').unwrap_or((rest, ""));
                Some(Mark {
                    idx,
                    seq: r.seq,
                    t_us: r.t_us,
                    name,
                    value,
                })
            })
            .collect();
        let client_conns: HashSet<u32> = marks
            .iter()
            .filter(|m| m.name == "client")
            .filter_map(|m| m.value.parse().ok())
            .collect();
        let mut seen = Seen {
            marks,
            terms: None,
            workers: BTreeMap::new(),
            assigns: Vec::new(),
            sent: Vec::new(),
            receipts: BTreeMap::new(),
            cancels: Vec::new(),
            beats: Vec::new(),
            client: Vec::new(),
            submits: Vec::new(),
            http: Vec::new(),
        };
        for (idx, r) in records.iter().enumerate() {
            match &r.entry {
                Entry::Http {
                    path, status, body, ..
                } => {
                    if path == "/v1/manifest" && *status == 200 && seen.terms.is_none() {
                        seen.terms = parse(body)
                            .as_ref()
                            .and_then(Terms::from_manifest)
                            .map(|t| (t, r.seq));
                    }
                    seen.http.push(HttpSeen {
                        idx,
                        seq: r.seq,
                        t_us: r.t_us,
                        path: path.clone(),
                        status: *status,
                        body: body.clone(),
                    });
                }
                Entry::Frame { conn, dir, data } => {
                    let Some(ev) = parse(data) else { continue };
                    let kind = s(&ev, "type");
                    let body = ev.get("body").cloned().unwrap_or(Value::Null);
                    match (dir, kind.as_str()) {
                        (Dir::Send, "worker.register") => {
                            seen.workers.entry(*conn).or_default().key = s(&body, "worker_key");
                        }
                        (Dir::Send, "worker.heartbeat") => seen.beats.push((*conn, r.t_us)),
                        (Dir::Send, "task.progress" | "task.result" | "task.failure") => {
                            seen.sent.push(SentTask {
                                idx,
                                seq: r.seq,
                                t_us: r.t_us,
                                kind: kind.clone(),
                                id: s(&ev, "id"),
                                task_id: s(&body, "task_id"),
                                attempt: u(&body, "attempt"),
                                epoch: u(&body, "epoch"),
                            })
                        }
                        (Dir::Send, "intent.submit") if client_conns.contains(conn) => {
                            let input = body.get("input").cloned().unwrap_or(Value::Null);
                            seen.submits.push(Submitted {
                                id: s(&ev, "id"),
                                seq: r.seq,
                                nonce: s(&input, "nonce"),
                                pin: input
                                    .get("worker_key")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned),
                                max_cost: u(&body, "max_cost"),
                            });
                        }
                        (Dir::Recv, "worker.enrolled") => {
                            let w = seen.workers.entry(*conn).or_default();
                            w.worker_id = s(&body, "worker_id");
                            w.enrolled = Some((r.seq, body));
                        }
                        (Dir::Recv, "task.assign") => seen.assigns.push(AssignSeen {
                            seq: r.seq,
                            t_us: r.t_us,
                            conn: *conn,
                            task_id: s(&body, "task_id"),
                            attempt: u(&body, "attempt"),
                            epoch: u(&body, "epoch"),
                            input: body.get("input").cloned().unwrap_or(Value::Null),
                        }),
                        (Dir::Recv, "task.receipt") => {
                            if let Some(corr) = ev.get("corr").and_then(Value::as_str) {
                                seen.receipts.insert(
                                    corr.to_owned(),
                                    ReceiptSeen {
                                        seq: r.seq,
                                        status: s(&body, "status"),
                                        code: body
                                            .get("code")
                                            .and_then(Value::as_str)
                                            .map(str::to_owned),
                                    },
                                );
                            }
                        }
                        (Dir::Recv, "task.cancel") => seen.cancels.push((r.seq, r.t_us, body)),
                        (Dir::Recv, _) if client_conns.contains(conn) => {
                            seen.client.push(ClientEvent {
                                idx,
                                seq: r.seq,
                                kind,
                                corr: ev.get("corr").and_then(Value::as_str).map(str::to_owned),
                                body,
                            })
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        seen
    }

    fn mark(&self, name: &str) -> Option<&Mark<'r>> {
        self.marks.iter().find(|m| m.name == name)
    }

    fn marks<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Mark<'r>> + 's {
        self.marks.iter().filter(move |m| m.name == name)
    }

    /// The intent the submission `sub` created, from its `intent.accepted`.
    fn intent_of(&self, sub: &Submitted) -> Option<(String, u64)> {
        self.client.iter().find_map(|e| {
            (e.kind == "intent.accepted" && e.corr.as_deref() == Some(sub.id.as_str()))
                .then(|| (s(&e.body, "intent_id"), e.seq))
        })
    }

    /// The terminal events the client saw for `intent` (section 7.1).
    fn terminals(&self, intent: &str) -> Vec<&ClientEvent> {
        self.client
            .iter()
            .filter(|e| {
                matches!(
                    e.kind.as_str(),
                    "intent.result" | "intent.failed" | "intent.cancelled"
                ) && e.body.get("intent_id").and_then(Value::as_str) == Some(intent)
            })
            .collect()
    }

    /// The leases granted for the submission with this nonce, in arrival order.
    fn assigns_for(&self, nonce: &str) -> Vec<&AssignSeen> {
        self.assigns
            .iter()
            .filter(|a| a.input.get("nonce").and_then(Value::as_str) == Some(nonce))
            .collect()
    }

    /// What the harness sent on a lease, in order.
    fn sent_on(&self, a: &AssignSeen) -> Vec<&SentTask> {
        self.sent
            .iter()
            .filter(|t| t.task_id == a.task_id && t.attempt == a.attempt && t.epoch == a.epoch)
            .collect()
    }

    fn receipt(&self, t: &SentTask) -> Option<&ReceiptSeen> {
        self.receipts.get(&t.id)
    }

    fn sent_by_id(&self, id: &str) -> Option<&SentTask> {
        self.sent.iter().find(|t| t.id == id)
    }
}

/// The verdict of a scripted case.
pub fn check(spec: &CaseSpec, records: &[&Record]) -> Judgement {
    let params = Params::of(spec);
    let seen = Seen::read(records);
    let Some(script) = params.script else {
        return Judgement::new(
            Outcome::Unknown,
            format!(
                "plan error: `params.script` names no script this harness knows ({})",
                Script::names()
            ),
            "",
        );
    };
    let Some((terms, manifest_seq)) = seen.terms else {
        return Judgement::new(
            Outcome::Unknown,
            "the realm's manifest gave no complete `lease` section, so no lease bound is known",
            "",
        );
    };
    let ctx = Judge {
        seen: &seen,
        terms,
        manifest_seq,
        params: &params,
    };
    match script {
        Script::EnrolmentTerms => ctx.enrolment_terms(),
        Script::HeartbeatFlapping => ctx.heartbeat_flapping(),
        Script::PinnedRouting => ctx.pinned_routing(),
        _ => ctx.one_intent(script),
    }
}

struct Judge<'a, 'r> {
    seen: &'a Seen<'r>,
    terms: Terms,
    manifest_seq: u64,
    params: &'a Params,
}

/// What the money reads show for one intent.
struct Money {
    captures: Vec<(u64, i64, Vec<String>)>,
    releases: Vec<i64>,
    reserves: Vec<i64>,
    delta_available: Option<i64>,
    delta_held: Option<i64>,
    seqs: Vec<u64>,
}

impl Money {
    fn describe(&self) -> String {
        format!(
            "ledger for the intent: {} reserve {:?}, {} capture {:?}, {} release {:?}; available changed by {}, held by {}",
            self.reserves.len(),
            self.reserves,
            self.captures.len(),
            self.captures.iter().map(|c| c.1).collect::<Vec<_>>(),
            self.releases.len(),
            self.releases,
            self.delta_available.map_or("?".into(), |d| d.to_string()),
            self.delta_held.map_or("?".into(), |d| d.to_string()),
        )
    }
}

fn posting(entry: &Value, account: &str) -> i64 {
    entry["postings"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["account"].as_str() == Some(account))
                .filter_map(|p| p["amount"].as_i64())
                .sum()
        })
        .unwrap_or(0)
}

impl Judge<'_, '_> {
    fn broken(&self, reason: impl Into<String>, observed: impl Into<String>) -> Judgement {
        Judgement::new(Outcome::Broken, reason, observed).with(
            "the realm's advertised lease (GET /v1/manifest)",
            vec![self.manifest_seq],
        )
    }

    fn unknown(&self, reason: impl Into<String>) -> Judgement {
        Judgement::new(Outcome::Unknown, reason, "no decisive observation")
    }

    fn lease_text(&self) -> String {
        let t = self.terms;
        format!(
            "lease_ms {}, grace_ms {}, max_attempts {}, heartbeat_interval_ms {}",
            t.lease_ms, t.grace_ms, t.max_attempts, t.heartbeat_interval_ms
        )
    }

    /// The money the reads show for `intent` of `wallet`.
    fn money(&self, intent: &str, submit_seq: u64) -> Result<Money, Judgement> {
        let Some(wallet) = self.seen.mark("wallet").map(|m| m.value) else {
            return Err(self.unknown("the driver recorded no wallet"));
        };
        let balance_path = format!("/v1/wallets/{wallet}/balance");
        let statement_path = format!("/v1/wallets/{wallet}/statement?");
        let balances: Vec<&HttpSeen> = self
            .seen
            .http
            .iter()
            .filter(|h| h.path == balance_path)
            .collect();
        let before = balances.iter().rev().find(|h| h.seq < submit_seq);
        let after = balances.iter().rev().find(|h| h.seq > submit_seq);
        let statements: Vec<&HttpSeen> = self
            .seen
            .http
            .iter()
            .filter(|h| h.seq > submit_seq && h.path.starts_with(&statement_path))
            .collect();
        let unreadable = [before, after]
            .into_iter()
            .flatten()
            .chain(statements.iter())
            .find(|h| h.status != 200);
        if let Some(h) = unreadable {
            return Err(self
                .unknown(format!(
                    "the wallet's money could not be read: GET {} answered {}",
                    h.path, h.status
                ))
                .with("the read", vec![h.seq]));
        }
        let (Some(before), Some(after)) = (before, after) else {
            return Err(self.unknown("the wallet's balance was not read before and after"));
        };
        if statements.is_empty() {
            return Err(self.unknown("the wallet's statement was not read after the intent"));
        }
        let bal = |h: &HttpSeen, k: &str| parse(&h.body).and_then(|v| v[k].as_i64());
        let delta = |k: &str| Some(bal(after, k)? - bal(before, k)?);
        let mut money = Money {
            captures: Vec::new(),
            releases: Vec::new(),
            reserves: Vec::new(),
            delta_available: delta("available"),
            delta_held: delta("held"),
            seqs: vec![before.seq, after.seq],
        };
        let hold = format!("hold:{wallet}");
        let mut seen_entries = HashSet::new();
        for h in &statements {
            money.seqs.push(h.seq);
            let entries = parse(&h.body)
                .and_then(|v| v["entries"].as_array().cloned())
                .unwrap_or_default();
            for e in entries {
                if e["intent_id"].as_str() != Some(intent)
                    || !seen_entries.insert(e["seq"].as_u64().unwrap_or(0))
                {
                    continue;
                }
                match e["kind"].as_str() {
                    Some("reserve") => money.reserves.push(posting(&e, &hold)),
                    Some("capture") => {
                        let accounts = e["postings"]
                            .as_array()
                            .map(|ps| {
                                ps.iter()
                                    .filter_map(|p| p["account"].as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                        money.captures.push((
                            e["seq"].as_u64().unwrap_or(0),
                            -posting(&e, &hold),
                            accounts,
                        ));
                    }
                    Some("release") => money.releases.push(-posting(&e, &hold)),
                    _ => {}
                }
            }
        }
        Ok(money)
    }

    /// A succeeded probe: one reserve, exactly one capture of the probe's cost to a harness
    /// worker's account, the rest released, and the wallet down by exactly the cost.
    fn paid_once(&self, intent: &str, sub: &Submitted) -> Result<Money, Judgement> {
        let m = self.money(intent, sub.seq)?;
        let keys: Vec<String> = self
            .seen
            .workers
            .values()
            .map(|w| format!("worker:{}", w.key))
            .collect();
        let cost = PROBE_COST as i64;
        let rest = sub.max_cost as i64 - cost;
        let problem = if m.captures.len() != 1 {
            Some(format!(
                "{} capture entries for the intent; exactly one is allowed (LSE-11, LED-6)",
                m.captures.len()
            ))
        } else if m.captures[0].1 != cost {
            Some(format!(
                "the capture took {} from the hold, not the probe's cost {cost} (PRB-4)",
                m.captures[0].1
            ))
        } else if !m.captures[0].2.iter().any(|a| keys.contains(a)) {
            Some(format!(
                "the capture credits {:?}, not the harness worker whose result was accepted (LED-4)",
                m.captures[0].2
            ))
        } else if m.reserves.len() != 1 || m.releases.iter().sum::<i64>() != rest {
            Some(format!(
                "reserve and release do not add up: reserves {:?}, released {:?}, expected {rest} released (LED-6)",
                m.reserves, m.releases
            ))
        } else if m.delta_available != Some(-cost) || m.delta_held != Some(0) {
            Some(format!(
                "the wallet's available balance changed by {:?} and its hold by {:?}; expected -{cost} and 0",
                m.delta_available, m.delta_held
            ))
        } else {
            None
        };
        match problem {
            Some(p) => Err(self
                .broken(
                    format!("the money does not show exactly one capture: {p}"),
                    m.describe(),
                )
                .with(
                    "balance before and after, and the statement",
                    m.seqs.clone(),
                )),
            None => Ok(m),
        }
    }

    /// A failed or dead-lettered probe: nothing captured, the whole reservation released.
    fn refunded(&self, intent: &str, sub: &Submitted) -> Result<Money, Judgement> {
        let m = self.money(intent, sub.seq)?;
        let whole = sub.max_cost as i64;
        let problem = if !m.captures.is_empty() {
            Some(format!(
                "{} capture entries for an intent that did not succeed",
                m.captures.len()
            ))
        } else if m.releases.iter().sum::<i64>() != whole || m.releases.len() != 1 {
            Some(format!(
                "released {:?}, not the whole reservation of {whole} in one release entry",
                m.releases
            ))
        } else if m.delta_available != Some(0) || m.delta_held != Some(0) {
            Some(format!(
                "the wallet's available balance changed by {:?} and its hold by {:?}; a refund leaves both unchanged",
                m.delta_available, m.delta_held
            ))
        } else {
            None
        };
        match problem {
            Some(p) => Err(self
                .broken(
                    format!("the reservation was not refunded (LSE-15, LED-6): {p}"),
                    m.describe(),
                )
                .with(
                    "balance before and after, and the statement",
                    m.seqs.clone(),
                )),
            None => Ok(m),
        }
    }

    /// The single submission of a one-intent script, its intent, its leases and its only
    /// terminal event.
    fn scene(&self) -> Result<Scene<'_>, Judgement> {
        let Some(sub) = self.seen.submits.first() else {
            return Err(self.unknown("the probe was never submitted"));
        };
        let Some((intent, accepted_seq)) = self.seen.intent_of(sub) else {
            let answer = self
                .seen
                .client
                .iter()
                .find(|e| e.corr.as_deref() == Some(sub.id.as_str()));
            return Err(match answer {
                Some(e) => self
                    .unknown(format!(
                        "the pinned probe was not admitted ({} {}), so no lease could be tested",
                        e.kind,
                        s(&e.body, "code")
                    ))
                    .with("the answer", vec![e.seq]),
                None => self.unknown("the pinned probe got no answer"),
            });
        };
        let assigns = self.seen.assigns_for(&sub.nonce);
        let terminals = self.seen.terminals(&intent);
        Ok(Scene {
            sub,
            intent,
            accepted_seq,
            assigns,
            terminals,
        })
    }

    fn one_intent(&self, script: Script) -> Judgement {
        let scene = match self.scene() {
            Ok(s) => s,
            Err(j) => return j,
        };
        let Some(first) = scene.assigns.first() else {
            return self
                .broken(
                    "the pinned probe was admitted but never dispatched to the harness worker enrolled with its worker_key (PRB-6, SQ-15)",
                    "no task.assign",
                )
                .with("intent.accepted", vec![scene.accepted_seq]);
        };
        // LSE-1 for every later attempt: same task, next attempt, greater epoch, same input.
        for pair in scene.assigns.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.task_id == a.task_id && b.attempt > a.attempt + 1 && b.epoch > a.epoch {
                // Only the pinned worker may hold the task, and it never saw the attempts between.
                return self
                    .broken(
                        format!(
                            "attempt {} of the task reached no connected worker of its pinned key: it was granted to a worker that was not there (SQ-14, PRB-6), and cost an attempt",
                            a.attempt + 1
                        ),
                        format!("attempt {} then attempt {} on the harness workers", a.attempt, b.attempt),
                    )
                    .with("the two task.assign frames", vec![a.seq, b.seq]);
            }
            if b.task_id != a.task_id
                || b.attempt != a.attempt + 1
                || b.epoch <= a.epoch
                || b.input != a.input
            {
                return self
                    .broken(
                        "a re-dispatch does not continue the task's lease sequence (LSE-1: same task_id, attempt + 1, a greater epoch, the input as admitted)",
                        format!(
                            "attempt {} epoch {} of {} then attempt {} epoch {} of {}",
                            a.attempt, a.epoch, a.task_id, b.attempt, b.epoch, b.task_id
                        ),
                    )
                    .with("the two task.assign frames", vec![a.seq, b.seq]);
            }
        }
        if first.attempt != 1 {
            return self
                .broken(
                    "the first dispatch is not attempt 1 (LSE-1)",
                    format!("attempt {}", first.attempt),
                )
                .with("task.assign", vec![first.seq]);
        }
        match script {
            Script::CrashAfterAccept => self.crash_after_accept(&scene),
            Script::HangPastLease => self.hang_past_lease(&scene),
            Script::StaleEpoch => self.stale_epoch(&scene),
            Script::DuplicateResult => self.duplicate_result(&scene),
            Script::MalformedResult => self.malformed_result(&scene),
            Script::ProgressExtends => self.progress_extends(&scene),
            Script::DeadLetter => self.dead_letter(&scene),
            Script::RefuseAfterAdvertise => self.refuse_after_advertise(&scene),
            Script::EnrolmentTerms | Script::HeartbeatFlapping | Script::PinnedRouting => {
                self.unknown("not a one-intent script")
            }
        }
    }

    /// Exactly one terminal event, of kind `want`; returns it.
    fn one_terminal<'s>(
        &self,
        scene: &'s Scene<'_>,
        want: &str,
    ) -> Result<&'s ClientEvent, Judgement> {
        match scene.terminals.as_slice() {
            [] => Err(self
                .broken(
                    format!("the client never got a terminal event (expected `{want}`)"),
                    format!("{} task.assign, no intent.result or intent.failed", scene.assigns.len()),
                )
                .with("intent.accepted", vec![scene.accepted_seq])),
            [one] if one.kind == want => Ok(one),
            [one] => Err(self
                .broken(
                    format!("the intent ended with `{}`, not `{want}`", one.kind),
                    format!("{} {}", one.kind, one.body),
                )
                .with("the terminal event", vec![one.seq])),
            many => Err(self
                .broken(
                    format!(
                        "the client got {} terminal events for one intent; exactly one is allowed (INT-6)",
                        many.len()
                    ),
                    many.iter()
                        .map(|e| e.kind.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
                .with("the terminal events", many.iter().map(|e| e.seq).collect())),
        }
    }

    /// A succeeded probe: one `intent.result` whose output is the correct one of the accepted
    /// attempt, with `attempts` as given.
    fn succeeded<'s>(
        &self,
        scene: &'s Scene<'_>,
        attempts: u64,
    ) -> Result<&'s ClientEvent, Judgement> {
        let done = self.one_terminal(scene, "intent.result")?;
        let output = &done.body["output"];
        if output["digest"].as_str() != Some(probe_digest(&scene.sub.nonce).as_str())
            || output["nonce"].as_str() != Some(scene.sub.nonce.as_str())
        {
            return Err(self
                .broken(
                    "the client was given an output that is not the probe's correct output",
                    output.to_string(),
                )
                .with("intent.result", vec![done.seq]));
        }
        if u(&done.body, "attempts") != attempts {
            return Err(self
                .broken(
                    format!(
                        "intent.result says attempts {}, but the result accepted was attempt {attempts} (INT-3)",
                        u(&done.body, "attempts")
                    ),
                    done.body.to_string(),
                )
                .with("intent.result", vec![done.seq]));
        }
        Ok(done)
    }

    fn crash_after_accept(&self, scene: &Scene<'_>) -> Judgement {
        let a1 = scene.assigns[0];
        let Some(crash) = self.seen.mark("crash") else {
            return self.unknown("the harness worker never crashed");
        };
        let Some(a2) = scene.assigns.get(1) else {
            return self
                .broken(
                    format!(
                        "the task was never re-dispatched after its holder disconnected (LSE-6: within lease_ms + grace_ms = {} ms)",
                        self.terms.lease_ms + self.terms.grace_ms
                    ),
                    format!("one task.assign; {}", self.lease_text()),
                )
                .with("task.assign attempt 1", vec![a1.seq])
                .with("the crash", vec![crash.seq]);
        };
        let lag = a2.t_us.saturating_sub(crash.t_us) / 1000;
        let bound = self.terms.redispatch_bound_ms(self.params.slack_ms);
        if lag > bound {
            return self
                .broken(
                    format!("the task was re-dispatched {lag} ms after its holder disconnected; LSE-6 allows lease_ms + grace_ms (+{} ms transport slack) = {bound} ms", self.params.slack_ms),
                    self.lease_text(),
                )
                .with("the crash, then attempt 2", vec![crash.seq, a2.seq]);
        }
        let done = match self.succeeded(scene, a2.attempt) {
            Ok(d) => d,
            Err(j) => return j,
        };
        match self.paid_once(&scene.intent, scene.sub) {
            Err(j) => j,
            Ok(m) => Judgement::new(
                Outcome::Pass,
                format!("the holder crashed after accepting; attempt {} came {lag} ms later (bound {bound} ms), the client got one result and the wallet paid once", a2.attempt),
                format!("attempt 1 epoch {} then attempt {} epoch {}; {}", a1.epoch, a2.attempt, a2.epoch, m.describe()),
            )
            .with("task.assign attempt 1", vec![a1.seq])
            .with("the crash (connection dropped)", vec![crash.seq])
            .with("task.assign attempt 2", vec![a2.seq])
            .with("intent.result", vec![done.seq])
            .with("balance before and after, and the statement", m.seqs),
        }
    }

    /// Attempt 2 must come after the lapse of a silent attempt 1: not before its deadline, and
    /// at most grace after it.
    fn relapse(&self, scene: &Scene<'_>) -> Result<(u64, u64), Judgement> {
        let a1 = scene.assigns[0];
        let bound = self.terms.redispatch_bound_ms(self.params.slack_ms);
        let Some(a2) = scene.assigns.get(1) else {
            return Err(self
                .broken(
                    format!("the silent lease was never re-dispatched (LSE-5: within grace_ms after the deadline, {bound} ms after the dispatch with slack)"),
                    format!("one task.assign; {}", self.lease_text()),
                )
                .with("task.assign attempt 1", vec![a1.seq]));
        };
        let gap = a2.t_us.saturating_sub(a1.t_us) / 1000;
        if gap > bound {
            return Err(self
                .broken(
                    format!("the silent lease was re-dispatched {gap} ms after it was granted; LSE-5 allows lease_ms + grace_ms (+{} ms slack) = {bound} ms", self.params.slack_ms),
                    self.lease_text(),
                )
                .with("attempt 1, then attempt 2", vec![a1.seq, a2.seq]));
        }
        if gap + self.params.slack_ms < self.terms.lease_ms {
            return Err(self
                .broken(
                    format!("the task was re-dispatched {gap} ms after it was granted, before the lease of {} ms could lapse (LSE-3, LSE-5)", self.terms.lease_ms),
                    self.lease_text(),
                )
                .with("attempt 1, then attempt 2", vec![a1.seq, a2.seq]));
        }
        Ok((gap, bound))
    }

    /// The receipt of a marked harness event, which must be refused with `code`.
    fn refused_with(
        &self,
        mark: &str,
        code: &str,
        why: &str,
    ) -> Result<(&SentTask, &ReceiptSeen), Judgement> {
        let Some(sent) = self
            .seen
            .mark(mark)
            .and_then(|m| self.seen.sent_by_id(m.value))
        else {
            return Err(self.unknown(format!("the {mark} event was never sent")));
        };
        let Some(receipt) = self.seen.receipt(sent) else {
            return Err(self
                .broken(
                    format!("the {mark} {} got no task.receipt (LSE-9)", sent.kind),
                    "no receipt",
                )
                .with(format!("the {mark} event"), vec![sent.seq]));
        };
        if receipt.status != "refused" || receipt.code.as_deref() != Some(code) {
            return Err(self
                .broken(
                    format!("{why}: it must be refused with {code} (LSE-9)"),
                    format!(
                        "task.receipt {} {}",
                        receipt.status,
                        receipt.code.as_deref().unwrap_or("")
                    ),
                )
                .with(
                    format!("the {mark} event and its receipt"),
                    vec![sent.seq, receipt.seq],
                ));
        }
        Ok((sent, receipt))
    }

    fn hang_past_lease(&self, scene: &Scene<'_>) -> Judgement {
        let (gap, bound) = match self.relapse(scene) {
            Ok(g) => g,
            Err(j) => return j,
        };
        let a2 = scene.assigns[1];
        let done = match self.succeeded(scene, a2.attempt) {
            Ok(d) => d,
            Err(j) => return j,
        };
        let (late, receipt) = match self.refused_with(
            "late",
            "STALE_EPOCH",
            "the hung worker's late result names a lease that is no longer current",
        ) {
            Ok(x) => x,
            Err(j) => return j,
        };
        match self.paid_once(&scene.intent, scene.sub) {
            Err(j) => j,
            Ok(m) => Judgement::new(
                Outcome::Pass,
                format!("the silent lease was re-dispatched after {gap} ms (bound {bound} ms), the late result of attempt 1 was refused STALE_EPOCH, one result, one capture"),
                m.describe(),
            )
            .with("task.assign attempts 1 and 2", vec![scene.assigns[0].seq, a2.seq])
            .with("intent.result", vec![done.seq])
            .with("the late result and its refusal", vec![late.seq, receipt.seq])
            .with("balance before and after, and the statement", m.seqs),
        }
    }

    fn stale_epoch(&self, scene: &Scene<'_>) -> Judgement {
        if let Err(j) = self.relapse(scene) {
            return j;
        }
        let a2 = scene.assigns[1];
        let (stale, receipt) = match self.refused_with(
            "stale",
            "STALE_EPOCH",
            "a result carrying attempt 1's epoch after attempt 2 was granted",
        ) {
            Ok(x) => x,
            Err(j) => return j,
        };
        let done = match self.succeeded(scene, a2.attempt) {
            Ok(d) => d,
            Err(j) => return j,
        };
        // The stale result must have had no effect (LSE-10): the intent ends only after the
        // current holder's result, which is the one accepted.
        let current = self
            .seen
            .sent_on(a2)
            .into_iter()
            .find(|t| t.kind == "task.result");
        let Some(current) = current else {
            return self
                .broken(
                    "the intent succeeded before the current lease holder answered: the stale result settled it (LSE-10)",
                    done.body.to_string(),
                )
                .with("the stale result and the terminal event", vec![stale.seq, done.seq]);
        };
        if done.idx < current.idx {
            return self
                .broken(
                    "the intent succeeded before the current lease holder answered: the stale result settled it (LSE-10)",
                    done.body.to_string(),
                )
                .with("the stale result and the terminal event", vec![stale.seq, done.seq]);
        }
        match self.seen.receipt(current) {
            Some(r) if r.status == "accepted" => {}
            other => {
                return self
                    .broken(
                        "the current lease holder's result was not accepted after a stale one was refused",
                        other.map_or("no receipt".into(), |r| {
                            format!("{} {}", r.status, r.code.clone().unwrap_or_default())
                        }),
                    )
                    .with("the current result", vec![current.seq]);
            }
        }
        match self.paid_once(&scene.intent, scene.sub) {
            Err(j) => j,
            Ok(m) => Judgement::new(
                Outcome::Pass,
                "a result with attempt 1's epoch, sent while attempt 2 was current, was refused STALE_EPOCH and changed nothing; attempt 2's result settled the intent once",
                m.describe(),
            )
            .with("task.assign attempts 1 and 2", vec![scene.assigns[0].seq, a2.seq])
            .with("the stale result and its refusal", vec![stale.seq, receipt.seq])
            .with("the current result and intent.result", vec![current.seq, done.seq])
            .with("balance before and after, and the statement", m.seqs),
        }
    }

    fn duplicate_result(&self, scene: &Scene<'_>) -> Judgement {
        let a1 = scene.assigns[0];
        let results: Vec<&SentTask> = self
            .seen
            .sent_on(a1)
            .into_iter()
            .filter(|t| t.kind == "task.result")
            .collect();
        if results.len() < 2 {
            return self.unknown("the result was not sent twice");
        }
        let receipts: Vec<Option<&ReceiptSeen>> =
            results.iter().map(|t| self.seen.receipt(t)).collect();
        let accepted = receipts
            .iter()
            .filter(|r| r.is_some_and(|r| r.status == "accepted"))
            .count();
        let duplicate = receipts
            .iter()
            .filter(|r| {
                r.is_some_and(|r| r.status == "refused" && r.code.as_deref() == Some("DUPLICATE"))
            })
            .count();
        let seqs: Vec<u64> = results
            .iter()
            .map(|t| t.seq)
            .chain(receipts.iter().flatten().map(|r| r.seq))
            .collect();
        if accepted != 1 || duplicate != results.len() - 1 {
            return self
                .broken(
                    "the same result sent twice must be accepted once and refused DUPLICATE once (LSE-9, LSE-11)",
                    receipts
                        .iter()
                        .map(|r| {
                            r.map_or("no receipt".to_owned(), |r| {
                                format!("{} {}", r.status, r.code.clone().unwrap_or_default())
                            })
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                )
                .with("both results and their receipts", seqs);
        }
        if scene.assigns.len() > 1 {
            return self
                .broken(
                    "an accepted result was followed by another dispatch",
                    format!("{} task.assign", scene.assigns.len()),
                )
                .with("task.assign", scene.assigns.iter().map(|a| a.seq).collect());
        }
        let done = match self.succeeded(scene, 1) {
            Ok(d) => d,
            Err(j) => return j,
        };
        match self.paid_once(&scene.intent, scene.sub) {
            Err(j) => j,
            Ok(m) => Judgement::new(
                Outcome::Pass,
                "the duplicate result was refused DUPLICATE; the client got one result and the wallet paid once",
                m.describe(),
            )
            .with("both results and their receipts", seqs)
            .with("intent.result", vec![done.seq])
            .with("balance before and after, and the statement", m.seqs),
        }
    }

    fn malformed_result(&self, scene: &Scene<'_>) -> Judgement {
        let (bad, receipt) = match self.refused_with(
            "malformed",
            "INVALID_EVENT",
            "a task.result whose output breaks the cert.probe output schema",
        ) {
            Ok(x) => x,
            Err(j) => return j,
        };
        let bound = self.terms.redispatch_bound_ms(self.params.slack_ms);
        let Some(a2) = scene.assigns.get(1) else {
            if let Some(done) = scene.terminals.first() {
                return self
                    .broken(
                        "the refused output ended the intent instead of counting as a retryable failure (LSE-12)",
                        format!("{} {}", done.kind, done.body),
                    )
                    .with("the malformed result and the terminal event", vec![bad.seq, done.seq]);
            }
            return self
                .broken(
                    "the refused output was not followed by another attempt (LSE-12, LSE-13)",
                    "one task.assign",
                )
                .with(
                    "the malformed result and its refusal",
                    vec![bad.seq, receipt.seq],
                );
        };
        let lag = a2.t_us.saturating_sub(bad.t_us) / 1000;
        if lag > bound {
            return self
                .broken(
                    format!("the next attempt came {lag} ms after the refused output; a retryable failure is re-dispatched as a lapse is, within {bound} ms (LSE-13)"),
                    self.lease_text(),
                )
                .with("the malformed result, then attempt 2", vec![bad.seq, a2.seq]);
        }
        let done = match self.succeeded(scene, a2.attempt) {
            Ok(d) => d,
            Err(j) => return j,
        };
        match self.paid_once(&scene.intent, scene.sub) {
            Err(j) => j,
            Ok(m) => Judgement::new(
                Outcome::Pass,
                format!("the malformed output was refused INVALID_EVENT, attempt {} followed {lag} ms later, and only the correct output reached the client", a2.attempt),
                m.describe(),
            )
            .with("the malformed result and its refusal", vec![bad.seq, receipt.seq])
            .with("task.assign attempt 2", vec![a2.seq])
            .with("intent.result", vec![done.seq])
            .with("balance before and after, and the statement", m.seqs),
        }
    }

    fn progress_extends(&self, scene: &Scene<'_>) -> Judgement {
        let a1 = scene.assigns[0];
        let sent = self.seen.sent_on(a1);
        let progress: Vec<&&SentTask> = sent.iter().filter(|t| t.kind == "task.progress").collect();
        // The lease ended early if the realm re-dispatched or cancelled it as lapsed.
        let lapse_cancel = self.seen.cancels.iter().find(|(_, _, b)| {
            b["task_id"].as_str() == Some(a1.task_id.as_str()) && b["reason"] == "lease_lapsed"
        });
        let ended_at = scene
            .assigns
            .get(1)
            .map(|a| a.t_us)
            .into_iter()
            .chain(lapse_cancel.map(|(_, t, _)| *t))
            .min()
            .unwrap_or(u64::MAX);
        // The test only means something if the harness kept its cadence while the lease ran.
        let mut last = a1.t_us;
        for p in progress.iter().filter(|p| p.t_us < ended_at) {
            let gap = p.t_us.saturating_sub(last) / 1000;
            if gap >= self.terms.lease_ms {
                return self.unknown(format!(
                    "the harness could not keep its progress cadence (a gap of {gap} ms, the lease is {} ms)",
                    self.terms.lease_ms
                ));
            }
            last = p.t_us;
        }
        if let Some(p) = progress
            .iter()
            .filter(|p| p.t_us < ended_at)
            .find(|p| self.seen.receipt(p).is_none_or(|r| r.status != "accepted"))
        {
            let r = self.seen.receipt(p);
            return self
                .broken(
                    "a progress report of the current lease was not accepted (LSE-9)",
                    r.map_or("no receipt".into(), |r| {
                        format!("{} {}", r.status, r.code.clone().unwrap_or_default())
                    }),
                )
                .with(
                    "the progress and its receipt",
                    [Some(p.seq), r.map(|r| r.seq)]
                        .into_iter()
                        .flatten()
                        .collect(),
                );
        }
        if let Some(a2) = scene.assigns.get(1) {
            return self
                .broken(
                    format!(
                        "the task was re-dispatched {} ms after it was granted although the worker reported progress every {} ms or less: progress must extend the lease (LSE-4)",
                        a2.t_us.saturating_sub(a1.t_us) / 1000,
                        self.terms.lease_ms / 3
                    ),
                    format!("{} progress reports accepted; {}", progress.len(), self.lease_text()),
                )
                .with("task.assign attempts 1 and 2", vec![a1.seq, a2.seq]);
        }
        if let Some((seq, _, body)) = lapse_cancel {
            return self
                .broken(
                    "the realm declared the lease lapsed although the worker kept reporting progress (LSE-4)",
                    body.to_string(),
                )
                .with("task.cancel", vec![*seq]);
        }
        let Some(result) = sent.iter().find(|t| t.kind == "task.result") else {
            return self.unknown("the slow worker never sent its result");
        };
        let held = result.t_us.saturating_sub(a1.t_us) / 1000;
        if held <= self.terms.lease_ms + self.terms.grace_ms {
            return self.unknown(format!(
                "the slow worker answered after {held} ms, before an unextended lease would have lapsed"
            ));
        }
        let Some(receipt) = self.seen.receipt(result) else {
            return self
                .broken(
                    "the slow worker's result got no receipt (LSE-9)",
                    "no receipt",
                )
                .with("task.result", vec![result.seq]);
        };
        if receipt.status != "accepted" {
            return self
                .broken(
                    "the slow worker's result was refused although progress kept its lease alive (LSE-4)",
                    format!("{} {}", receipt.status, receipt.code.clone().unwrap_or_default()),
                )
                .with("task.result and its receipt", vec![result.seq, receipt.seq]);
        }
        match self.succeeded(scene, 1) {
            Err(j) => j,
            Ok(done) => Judgement::new(
                Outcome::Pass,
                format!("{} progress reports kept the lease for {held} ms (lease {} ms); no re-dispatch, the result was accepted", progress.len(), self.terms.lease_ms),
                self.lease_text(),
            )
            .with("task.assign", vec![a1.seq])
            .with("the result, its receipt and intent.result", vec![result.seq, receipt.seq, done.seq]),
        }
    }

    fn dead_letter(&self, scene: &Scene<'_>) -> Judgement {
        let max = self.terms.max_attempts;
        let assigns: Vec<u64> = scene.assigns.iter().map(|a| a.seq).collect();
        for a in &scene.assigns {
            let failure = self
                .seen
                .sent_on(a)
                .into_iter()
                .find(|t| t.kind == "task.failure");
            match failure.and_then(|f| self.seen.receipt(f).map(|r| (f, r))) {
                Some((_, r)) if r.status == "accepted" => {}
                Some((f, r)) => {
                    return self
                        .broken(
                            format!("the retryable failure of attempt {} was refused", a.attempt),
                            format!("{} {}", r.status, r.code.clone().unwrap_or_default()),
                        )
                        .with("the failure and its receipt", vec![f.seq, r.seq])
                }
                None => {
                    return self.unknown(format!(
                        "attempt {} got no failure receipt from the realm",
                        a.attempt
                    ))
                }
            }
        }
        if scene.assigns.len() as u64 != max {
            return self
                .broken(
                    format!(
                        "{} attempts were dispatched; a task whose every attempt fails retryably gets exactly max_attempts = {max} (LSE-13)",
                        scene.assigns.len()
                    ),
                    self.lease_text(),
                )
                .with("task.assign", assigns);
        }
        let done = match self.one_terminal(scene, "intent.failed") {
            Ok(d) => d,
            Err(j) => return j,
        };
        let code = s(&done.body, "code");
        if code != "DEAD_LETTERED" || u(&done.body, "attempts") != max {
            return self
                .broken(
                    format!("after max_attempts = {max} failures the intent must be dead-lettered: intent.failed DEAD_LETTERED with attempts {max} (LSE-15, INT-3)"),
                    done.body.to_string(),
                )
                .with("intent.failed", vec![done.seq]);
        }
        match self.refunded(&scene.intent, scene.sub) {
            Err(j) => j,
            Ok(m) => Judgement::new(
                Outcome::Pass,
                format!("{max} retryable failures, then intent.failed DEAD_LETTERED; the whole reservation of {} was refunded", scene.sub.max_cost),
                m.describe(),
            )
            .with("every task.assign", assigns)
            .with("intent.failed", vec![done.seq])
            .with("balance before and after, and the statement", m.seqs),
        }
    }

    fn refuse_after_advertise(&self, scene: &Scene<'_>) -> Judgement {
        let a1 = scene.assigns[0];
        let Some(refusal) = self
            .seen
            .sent_on(a1)
            .into_iter()
            .find(|t| t.kind == "task.failure")
        else {
            return self.unknown("the worker never refused the task");
        };
        match self.seen.receipt(refusal) {
            Some(r) if r.status == "accepted" => {}
            other => {
                return self
                    .broken(
                        "the worker's refusal (task.failure UNSUPPORTED, not retryable) of its current lease was not accepted (LSE-9)",
                        other.map_or("no receipt".into(), |r| {
                            format!("{} {}", r.status, r.code.clone().unwrap_or_default())
                        }),
                    )
                    .with("the refusal", vec![refusal.seq])
            }
        }
        if let Some(a2) = scene.assigns.get(1) {
            return self
                .broken(
                    "a non-retryable failure was re-dispatched; it must fail the intent at once (LSE-14)",
                    format!("attempt {} dispatched", a2.attempt),
                )
                .with("the refusal, then attempt 2", vec![refusal.seq, a2.seq]);
        }
        let done = match self.one_terminal(scene, "intent.failed") {
            Ok(d) => d,
            Err(j) => return j,
        };
        if s(&done.body, "code") != "WORKER_FAILED" || u(&done.body, "attempts") != 1 {
            return self
                .broken(
                    "a non-retryable UNSUPPORTED failure must end the intent with intent.failed WORKER_FAILED after 1 attempt (LSE-14, INT-3)",
                    done.body.to_string(),
                )
                .with("intent.failed", vec![done.seq]);
        }
        match self.refunded(&scene.intent, scene.sub) {
            Err(j) => j,
            Ok(m) => Judgement::new(
                Outcome::Pass,
                "the worker advertised cert.probe, then refused it as UNSUPPORTED: the intent failed WORKER_FAILED at once and was fully refunded",
                m.describe(),
            )
            .with("task.assign and the refusal", vec![a1.seq, refusal.seq])
            .with("intent.failed", vec![done.seq])
            .with("balance before and after, and the statement", m.seqs),
        }
    }

    fn enrolment_terms(&self) -> Judgement {
        let Some((seq, body)) = self.seen.workers.values().find_map(|w| w.enrolled.clone()) else {
            return self.unknown("the harness worker was never enrolled");
        };
        let t = self.terms;
        let got = (
            u(&body, "lease_ms"),
            u(&body, "heartbeat_interval_ms"),
            u(&body, "max_attempts"),
        );
        if got != (t.lease_ms, t.heartbeat_interval_ms, t.max_attempts) {
            return self
                .broken(
                    "worker.enrolled does not carry the manifest's lease values (WRK-3)",
                    format!(
                        "worker.enrolled: lease_ms {}, heartbeat_interval_ms {}, max_attempts {}; manifest: {}",
                        got.0, got.1, got.2,
                        self.lease_text()
                    ),
                )
                .with("worker.enrolled", vec![seq]);
        }
        Judgement::new(
            Outcome::Pass,
            "worker.enrolled carries the manifest's lease_ms, heartbeat_interval_ms and max_attempts",
            self.lease_text(),
        )
        .with("manifest and worker.enrolled", vec![self.manifest_seq, seq])
    }

    fn pinned_routing(&self) -> Judgement {
        let by_key: BTreeMap<&str, (u32, &str)> = self
            .seen
            .workers
            .iter()
            .map(|(c, w)| (w.key.as_str(), (*c, w.worker_id.as_str())))
            .collect();
        let mut evidence = Vec::new();
        let mut checked = 0;
        for sub in &self.seen.submits {
            let Some(pin) = sub.pin.as_deref() else {
                continue;
            };
            let reply = self
                .seen
                .client
                .iter()
                .find(|e| e.corr.as_deref() == Some(sub.id.as_str()));
            let Some(&(conn, worker_id)) = by_key.get(pin) else {
                // Pinned to a key no worker enrolled with: the realm must refuse it.
                match reply {
                    Some(e) if e.kind == "intent.rejected" && s(&e.body, "code") == "INFEASIBLE" => {
                        evidence.push(e.seq);
                        continue;
                    }
                    Some(e) => {
                        return self
                            .broken(
                                "a probe pinned to a worker_key no worker enrolled with must be refused INFEASIBLE (PRB-6)",
                                format!("{} {}", e.kind, e.body),
                            )
                            .with("the submission and its answer", vec![sub.seq, e.seq])
                    }
                    None => return self.unknown("a submission got no answer"),
                }
            };
            let Some((intent, _)) = self.seen.intent_of(sub) else {
                return self.unknown(format!(
                    "a probe pinned to an enrolled harness worker was not admitted: {}",
                    reply.map_or("no answer".into(), |e| format!("{} {}", e.kind, e.body))
                ));
            };
            for a in self.seen.assigns_for(&sub.nonce) {
                if a.conn != conn {
                    return self
                        .broken(
                            "a pinned probe was dispatched to a worker enrolled with another key (PRB-6)",
                            format!("pinned to {pin}, assigned on the worker with key {}", self.seen.workers.get(&a.conn).map_or("?", |w| w.key.as_str())),
                        )
                        .with("task.assign", vec![a.seq]);
                }
            }
            let terminals = self.seen.terminals(&intent);
            let Some(done) = terminals.first() else {
                return self
                    .broken(
                        "a pinned probe never completed although its worker answered every task",
                        format!("intent {intent}"),
                    )
                    .with("the submission", vec![sub.seq]);
            };
            let by = done.body["output"]["worker_id"].as_str().unwrap_or("");
            if done.kind != "intent.result" || by != worker_id {
                return self
                    .broken(
                        "a pinned probe was executed by a worker other than the one enrolled with its worker_key (PRB-6)",
                        format!("{} by worker_id {by:?}; the pinned worker is {worker_id:?}", done.kind),
                    )
                    .with("the terminal event", vec![done.seq]);
            }
            evidence.push(done.seq);
            checked += 1;
        }
        if checked == 0 {
            return self.unknown("no pinned probe was completed");
        }
        Judgement::new(
            Outcome::Pass,
            format!("{checked} pinned probes ran only on the worker of their key; a probe pinned to an unknown key was refused INFEASIBLE"),
            format!("{} harness workers", self.seen.workers.len()),
        )
        .with("results and the refusal", evidence)
    }

    fn heartbeat_flapping(&self) -> Judgement {
        let i = self.terms.heartbeat_interval_ms;
        let window = self.params.window_ms + self.params.slack_ms;
        let Some((&conn, worker)) = self
            .seen
            .workers
            .iter()
            .find(|(_, w)| !w.worker_id.is_empty())
        else {
            return self.unknown("the harness worker was never enrolled");
        };
        let Some(enrolled_t) = self
            .seen
            .marks("enrolled")
            .find(|m| m.value.starts_with(&format!("{conn}:")))
            .map(|m| m.t_us)
        else {
            return self.unknown("the enrolment was not recorded");
        };
        // Signs of life as the harness sent them: enrolment, then every heartbeat.
        let mut life: Vec<u64> = vec![enrolled_t];
        life.extend(
            self.seen
                .beats
                .iter()
                .filter(|(c, _)| *c == conn)
                .map(|(_, t)| *t),
        );
        life.sort_unstable();
        // The state at `t` by the table, had every heartbeat reached the realm `delay` late.
        let state_at = |t: u64, delay: u64| -> &'static str {
            let last = life
                .iter()
                .rev()
                .find(|l| **l + delay <= t)
                .copied()
                .unwrap_or(enrolled_t);
            let since = t.saturating_sub(last) / 1000;
            if since > 3 * i {
                "unhealthy"
            } else if since > 2 * i {
                "suspect"
            } else {
                "healthy"
            }
        };
        let gone = self.seen.mark("closed").map_or(u64::MAX, |m| m.t_us);
        let polls: Vec<(&HttpSeen, Option<String>)> = self
            .seen
            .http
            .iter()
            .filter(|h| h.path == "/v1/health" && h.status == 200 && h.t_us < gone)
            .map(|h| {
                let state = parse(&h.body).and_then(|v| {
                    v["workers"].as_array()?.iter().find_map(|w| {
                        (w["worker_id"].as_str() == Some(worker.worker_id.as_str()))
                            .then(|| w["state"].as_str().unwrap_or("?").to_owned())
                    })
                });
                (h, state)
            })
            .collect();
        // HLT-2: each answer must be true at some instant of the 2 s before it. The table is
        // evaluated every 10 ms of that window (plus the slack either side), with heartbeats
        // arriving at once or up to the slack late (transport and scheduling).
        for (h, state) in &polls {
            if h.t_us < enrolled_t {
                continue;
            }
            let Some(state) = state else {
                return self
                    .broken(
                        "/v1/health does not list the connected, enrolled harness worker (HLT-2)",
                        format!("worker {} missing", worker.worker_id),
                    )
                    .with("the health answer", vec![h.seq]);
            };
            let from = h.t_us.saturating_sub(window * 1000).max(enrolled_t);
            let to = h.t_us + self.params.slack_ms * 1000;
            let slack = self.params.slack_ms * 1000;
            let possible = (from..=to)
                .step_by(10_000)
                .chain([to])
                .any(|t| state_at(t, 0) == state.as_str() || state_at(t, slack) == state.as_str());
            if !possible {
                return self
                    .broken(
                        format!("/v1/health called the worker `{state}`, which the heartbeat table of section 10.2 does not allow at any instant of the {} ms before (WRK-7, HLT-2)", self.params.window_ms),
                        format!("by the heartbeats the harness sent (interval {i} ms) the worker was `{}` then", state_at(h.t_us, 0)),
                    )
                    .with("the health answer", vec![h.seq]);
            }
        }
        let silences: Vec<&Mark<'_>> = self.seen.marks("silent").collect();
        if silences.is_empty() {
            return self.unknown("the worker never fell silent");
        }
        let mut evidence = Vec::new();
        for (n, silent) in silences.iter().enumerate() {
            let last_beat = life
                .iter()
                .rev()
                .find(|t| **t <= silent.t_us)
                .copied()
                .unwrap_or(enrolled_t);
            let due = last_beat + (3 * i + window) * 1000;
            let unhealthy = polls
                .iter()
                .find(|(h, st)| h.idx > silent.idx && st.as_deref() == Some("unhealthy"));
            let Some((h, _)) = unhealthy.filter(|(h, _)| h.t_us <= due) else {
                return self
                    .broken(
                        format!("after the heartbeats stopped (silence {} of {}), /v1/health did not call the worker unhealthy within 3 x {i} ms + {} ms (WRK-7, HLT-3)", n + 1, silences.len(), self.params.window_ms),
                        polls
                            .iter()
                            .filter(|(h, _)| h.idx > silent.idx)
                            .map(|(_, s)| s.clone().unwrap_or_else(|| "unlisted".into()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                    .with("the silence", vec![silent.seq]);
            };
            evidence.push(h.seq);
            let Some(resumed) = self.seen.marks("resumed").find(|m| m.idx > silent.idx) else {
                return self.unknown("the worker never resumed its heartbeats");
            };
            let back = life
                .iter()
                .find(|t| **t >= resumed.t_us)
                .copied()
                .unwrap_or(resumed.t_us);
            let healthy = polls
                .iter()
                .find(|(h, st)| h.idx > resumed.idx && st.as_deref() == Some("healthy"));
            match healthy {
                Some((h, _)) if h.t_us <= back + window * 1000 => evidence.push(h.seq),
                _ => {
                    return self
                        .broken(
                            format!("after the heartbeats resumed, /v1/health did not call the worker healthy again within {} ms (WRK-7, HLT-3)", self.params.window_ms),
                            "still unhealthy",
                        )
                        .with("the resumption", vec![resumed.seq])
                }
            }
        }
        Judgement::new(
            Outcome::Pass,
            format!("{} times silent then back: /v1/health said unhealthy within the window and healthy again after the next heartbeat; every answer fits the table", silences.len()),
            format!("heartbeat_interval_ms {i}; {} health answers", polls.len()),
        )
        .with("unhealthy, then healthy again", evidence)
    }
}

/// One submission's story.
struct Scene<'s> {
    sub: &'s Submitted,
    intent: String,
    accepted_seq: u64,
    assigns: Vec<&'s AssignSeen>,
    terminals: Vec<&'s ClientEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_spec_example() {
        assert_eq!(
            probe_digest("probe-7f3a91c2"),
            "38ff4da64074ad03eaeeb9d832df7ec8b944e9134acc8f304141580806575287"
        );
    }

    #[test]
    fn terms_come_from_the_manifest_lease() {
        let m = serde_json::json!({"lease": {"lease_ms": 1000, "grace_ms": 500, "max_attempts": 3, "heartbeat_interval_ms": 500}});
        let t = Terms::from_manifest(&m).expect("complete");
        assert_eq!(t.redispatch_bound_ms(250), 1750);
        assert!(Terms::from_manifest(&serde_json::json!({"lease": {"lease_ms": 1}})).is_none());
    }
}

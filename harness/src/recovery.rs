//! The `container-kill` and `process-kill` case kinds: SIGKILL the realm (its container, or the
//! process group the harness spawned) with intents in flight, start it again on the same data,
//! and hold the realm to INT-11 and ENV-2 (every acknowledged intent survives, unchanged where it
//! had already settled, unfinished ones resume to a terminal state, and the realm keeps its
//! `realm_id`).
//!
//! The fault is a window in the journal: a `fault` record `kill`/`start` whose proof is the
//! engine's word that the container stopped (state exited, exit code 137) or the process's exit
//! status (signal 9), then the harness's own observations (its WebSocket connection closed,
//! `/v1/health` unreachable), then `kill`/`end` with the restarted realm's state and a 200 from
//! `/v1/health`. The window is always closed: when the restart fails the run's guard still
//! removes the container or process at the end. The moment of the kill is drawn from the case
//! seed, so a run is reproducible and different seeds hit different moments.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::container::ContainerError;
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::wire::{self, event, http_get, login, Identity};

/// The case kind for a realm in a container (`--image`).
pub const KIND: &str = "container-kill";
/// The case kind for a realm process the harness spawned (`--spawn`, or the default).
pub const KIND_PROCESS: &str = "process-kill";

/// What a `cert.probe` costs (PRB-4); each intent reserves twice that.
const PROBE_COST: u64 = 1000;

fn int_param(ctx: &Ctx<'_>, key: &str, default: u64) -> u64 {
    ctx.spec
        .params
        .get(key)
        .and_then(|v| v.as_integer())
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(default)
}

/// A wallet with money for the probes: fresh and funded by the sysop, else the manifest's.
pub(crate) async fn payer(ctx: &Ctx<'_>, amount: u64) -> Result<Identity, String> {
    let Some(sysop) = ctx.target.sysop.as_ref() else {
        return ctx.target.funded_wallet.clone().ok_or_else(|| {
            "no money to pay for probes: give `credentials.sysop_secret` or `credentials.wallet_secret` in the manifest".to_owned()
        });
    };
    let wallet = Identity::generate().map_err(|e| format!("no randomness: {e}"))?;
    let (mut conn, _) = login(
        &ctx.client_url(),
        sysop,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    .map_err(|e| format!("opening the sysop's session: {e}"))?;
    let mint = event(
        "wallet.mint",
        None,
        json!({"wallet": wallet.public_hex(), "amount": amount,
               "idempotency_key": wire::new_id(), "memo": "mtor-cert recovery suite"}),
    );
    let reply = conn
        .request(&mint, ctx.within(5000))
        .await
        .map_err(|e| format!("wallet.mint: {e}"))?;
    conn.close().await;
    if reply.kind() != Some("wallet.minted") {
        return Err(format!("wallet.mint was answered by {:?}", reply.kind()));
    }
    Ok(wallet)
}

async fn realm_id(ctx: &Ctx<'_>) -> Option<String> {
    let (status, body) = http_get(
        &ctx.target.http_base,
        "/v1/manifest",
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(3000),
    )
    .await
    .ok()?;
    let v: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    v["realm_id"].as_str().map(str::to_owned)
}

/// What the fault kills: the realm's container or its process.
enum Victim<'a> {
    Container(&'a crate::container::RealmContainer),
    Process(&'a tokio::sync::Mutex<crate::target::Spawned>),
}

/// Why a restart did not heal.
enum Unhealed {
    /// It started, but the realm never became ready: the realm's failure.
    NotReady(String),
    /// The harness could not start it.
    Failed(String),
}

impl Victim<'_> {
    /// SIGKILL; the proof that it took effect.
    async fn kill(&self, within: Duration) -> Result<String, String> {
        match self {
            Victim::Container(c) => c.kill(within).await.map_err(|e| e.to_string()),
            Victim::Process(p) => {
                let mut p = p.lock().await;
                let pid = p.pid;
                if !p.signal(nix::sys::signal::Signal::SIGKILL) {
                    return Err(format!("kill(-{pid}, SIGKILL) failed"));
                }
                match tokio::time::timeout(within, p.wait()).await {
                    Ok(Ok(status)) => Ok(format!(
                        "kill(-{pid}, SIGKILL): process group {pid} ended, exit status `{status}`"
                    )),
                    Ok(Err(e)) => Err(format!("waiting for process {pid}: {e}")),
                    Err(_) => Err(format!("process {pid} still ran {within:?} after SIGKILL")),
                }
            }
        }
    }

    /// Starts it again on the same data and waits for `/v1/health` to answer 200.
    async fn restart(&self, ctx: &Ctx<'_>, within: Duration) -> Result<String, Unhealed> {
        match self {
            Victim::Container(c) => c.restart(within).await.map_err(|e| match e {
                ContainerError::NotReady(why) => Unhealed::NotReady(why),
                e => Unhealed::Failed(e.to_string()),
            }),
            Victim::Process(p) => {
                let mut p = p.lock().await;
                p.restart().map_err(|e| Unhealed::Failed(e.to_string()))?;
                let (pid, command) = (p.pid, p.command.clone());
                let deadline = tokio::time::Instant::now() + within;
                loop {
                    if let Some(how) = p.exited() {
                        return Err(Unhealed::NotReady(format!(
                            "`{command}` (pid {pid}) {how} before /v1/health answered"
                        )));
                    }
                    let answer = http_get(
                        &ctx.target.http_base,
                        "/v1/health",
                        ctx.journal,
                        Some(&ctx.spec.id),
                        ctx.within(1000),
                    )
                    .await;
                    if matches!(answer, Ok((200, _))) {
                        return Ok(format!(
                            "started `{command}` again (pid {pid}) on the same data; GET /v1/health answered 200"
                        ));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Unhealed::NotReady(format!(
                            "`{command}` (pid {pid}) did not answer /v1/health with 200 within {within:?}"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Drives the case; every observation is in the journal, the verdict is [`check`]'s.
pub async fn drive(ctx: &Ctx<'_>) {
    let victim = match (
        ctx.spec.kind.as_str(),
        &ctx.target.container,
        &ctx.target.process,
    ) {
        (KIND, Some(c), _) => Victim::Container(c),
        (KIND_PROCESS, _, Some(p)) => Victim::Process(p),
        (KIND, ..) => return ctx.skip("needs a realm the harness runs in a container (--image)"),
        _ => return ctx.skip("needs a realm process the harness started (--spawn)"),
    };
    let intents = int_param(ctx, "intents", 6).clamp(1, 50);
    let work_ms = int_param(ctx, "work_ms", 1500).min(5000);
    let ready_ms = int_param(ctx, "ready_ms", 60_000);
    let wallet = match payer(ctx, intents * 2 * PROBE_COST).await {
        Ok(w) => w,
        Err(e) => return ctx.abort(e),
    };
    if let Some(id) = realm_id(ctx).await {
        ctx.mark("realm-before", &id);
    }
    let (mut conn, _) = match login(
        &ctx.client_url(),
        &wallet,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return ctx.abort(format!("could not open the wallet's session: {e}")),
    };
    // Intents in every state at the kill: some settled, some running, some queued.
    let mut accepted = Vec::new();
    for n in 0..intents {
        let submit = event(
            "intent.submit",
            None,
            json!({"intent": "cert.probe",
                   "input": {"nonce": format!("recovery-{n}-{}", wire::new_id()),
                             "work_ms": if n == 0 { 0 } else { work_ms }},
                   "max_cost": 2 * PROBE_COST, "idempotency_key": wire::new_id()}),
        );
        match conn.request(&submit, ctx.within(5000)).await {
            Ok(r) if r.kind() == Some("intent.accepted") => {
                if let Some(id) = r.body("intent_id").and_then(Value::as_str) {
                    ctx.mark("accepted", id);
                    accepted.push(id.to_owned());
                }
            }
            Ok(r) => {
                ctx.note(format!(
                    "submission {n} answered by {:?}, not intent.accepted",
                    r.kind()
                ));
            }
            Err(e) => return ctx.abort(format!("submission {n}: {e}")),
        };
    }
    if accepted.is_empty() {
        return ctx.abort("the realm accepted none of the intents");
    }
    // Let the quick one settle and the slow ones start, so the kill lands mid-flight; then a
    // further pause drawn from the seed, so runs hit different moments of the work.
    let _ = conn
        .wait_for("the first result", ctx.within(work_ms.max(500)), |r| {
            r.kind() == Some("intent.result")
        })
        .await;
    let pause = ctx.seed % (work_ms / 2).max(1);
    ctx.mark("kill-after-ms", &pause.to_string());
    tokio::time::sleep(Duration::from_millis(pause)).await;

    let proof = match victim.kill(Duration::from_secs(15)).await {
        Ok(p) => p,
        Err(e) => {
            // Heal whatever half-happened before giving up.
            let _ = victim
                .restart(ctx, Duration::from_millis(ready_ms.min(30_000)))
                .await;
            return ctx.abort(format!("the SIGKILL did not take effect: {e}"));
        }
    };
    ctx.journal.log(
        Some(&ctx.spec.id),
        Entry::Fault {
            what: "kill".into(),
            edge: "start".into(),
            proof,
        },
    );
    // The harness's own view of the fault: its session ends, and nothing answers any more.
    let dropped = conn
        .wait_for("the connection to drop", ctx.within(5000), |_| false)
        .await;
    ctx.mark(
        "session-dropped",
        &match dropped {
            Err(e) => e.to_string(),
            Ok(_) => "no".into(),
        },
    );
    let _ = http_get(
        &ctx.target.http_base,
        "/v1/health",
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(2000),
    )
    .await;

    let left = ctx
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    match victim
        .restart(ctx, Duration::from_millis(ready_ms).min(left))
        .await
    {
        Ok(proof) => {
            ctx.journal.log(
                Some(&ctx.spec.id),
                Entry::Fault {
                    what: "kill".into(),
                    edge: "end".into(),
                    proof,
                },
            );
        }
        // It started, but the realm never became ready: the realm's failure.
        Err(Unhealed::NotReady(why)) => {
            ctx.mark("not-recovered", &why);
            return close_unhealed(ctx, &why);
        }
        Err(Unhealed::Failed(e)) => {
            ctx.abort(format!("could not restart the realm: {e}"));
            return close_unhealed(ctx, &e);
        }
    }

    if let Some(id) = realm_id(ctx).await {
        ctx.mark("realm-after", &id);
    }
    let (mut conn, _) = match login(
        &ctx.client_url(),
        &wallet,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            ctx.mark("no-session-after", &e.to_string());
            return;
        }
    };
    let mut unfinished = Vec::new();
    for id in &accepted {
        let fetch = event("intent.fetch", None, json!({ "intent_id": id }));
        ctx.mark(
            "fetch",
            &format!("{id}:{}", fetch["id"].as_str().unwrap_or_default()),
        );
        let reply = conn.request(&fetch, ctx.within(5000)).await;
        if !reply.is_ok_and(|r| is_terminal(&r)) {
            unfinished.push(id.clone());
        }
    }
    // ENV-2: the realm resumes what it had: unfinished intents must run to an end. Poll their
    // status (a fresh session is not attached to them, so it gets no terminal event).
    let resume_ms = int_param(ctx, "resume_ms", 20_000);
    let until = tokio::time::Instant::now() + Duration::from_millis(resume_ms);
    while !unfinished.is_empty() && tokio::time::Instant::now() < until.min(ctx.deadline) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut still = Vec::new();
        for id in unfinished {
            let fetch = event("intent.fetch", None, json!({ "intent_id": id }));
            ctx.mark(
                "refetch",
                &format!("{id}:{}", fetch["id"].as_str().unwrap_or_default()),
            );
            let reply = conn.request(&fetch, ctx.within(5000)).await;
            if !reply.is_ok_and(|r| is_terminal(&r)) {
                still.push(id);
            }
        }
        unfinished = still;
    }
    ctx.mark("resume-done", &resume_ms.to_string());
    conn.close().await;
}

const TERMINAL: &[&str] = &["succeeded", "failed", "cancelled", "dead"];

fn is_terminal(r: &wire::Received) -> bool {
    r.kind() == Some("intent.status")
        && r.body("state")
            .and_then(Value::as_str)
            .is_some_and(|s| TERMINAL.contains(&s))
}

/// Closes the fault window when the restart failed: no window stays open in the journal. The
/// run's guard removes the container at the end of the run in any case.
fn close_unhealed(ctx: &Ctx<'_>, why: &str) {
    ctx.journal.log(
        Some(&ctx.spec.id),
        Entry::Fault {
            what: "kill".into(),
            edge: "end".into(),
            proof: format!(
                "NOT healed ({why}); the container or process is removed when the run ends"
            ),
        },
    );
}

/// The value of every marker `name`, with its record's sequence number.
fn marks<'a>(records: &[&'a Record], name: &str) -> Vec<(u64, &'a str)> {
    let prefix = format!("{name}:");
    records
        .iter()
        .filter_map(|r| {
            let rest = note(r, MARK)?;
            rest.strip_prefix(&prefix).map(|v| (r.seq, v))
        })
        .collect()
}

fn fault<'a>(records: &[&'a Record], edge: &str) -> Option<(u64, &'a str)> {
    records.iter().find_map(|r| match &r.entry {
        Entry::Fault {
            what,
            edge: e,
            proof,
        } if what == "kill" && e == edge => Some((r.seq, proof.as_str())),
        _ => None,
    })
}

/// Events received in this case: (sequence number, event).
fn received(records: &[&Record]) -> Vec<(u64, Value)> {
    records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Frame {
                dir: Dir::Recv,
                data,
                ..
            } => serde_json::from_str(data).ok().map(|v| (r.seq, v)),
            _ => None,
        })
        .collect()
}

/// Judges the case from its records.
pub fn check(_spec: &CaseSpec, records: &[&Record]) -> Judgement {
    let accepted = marks(records, "accepted");
    if accepted.is_empty() {
        return Judgement::new(
            Outcome::Unknown,
            "no intent was accepted before the fault",
            "",
        );
    }
    let Some((start_seq, start_proof)) = fault(records, "start") else {
        return Judgement::new(
            Outcome::Unknown,
            "the kill was never journaled as taking effect",
            format!("{} intents accepted", accepted.len()),
        );
    };
    if !start_proof.contains("exit code") && !start_proof.contains("signal: 9") {
        return Judgement::new(
            Outcome::Unknown,
            "the answer does not prove the realm stopped",
            start_proof,
        )
        .with("the fault's start", vec![start_seq]);
    }
    if let Some((seq, why)) = marks(records, "not-recovered").first() {
        return Judgement::new(
            Outcome::Broken,
            "after a SIGKILL and a restart on the same data, the realm never became ready again (INT-11, ENV-2)",
            format!("killed: {start_proof}; restarted: {why}"),
        )
        .with("the kill", vec![start_seq])
        .with("the failed recovery", vec![*seq]);
    }
    let Some((end_seq, end_proof)) = fault(records, "end") else {
        return Judgement::new(
            Outcome::Unknown,
            "the fault window was never closed (no restart recorded)",
            start_proof,
        )
        .with("the kill", vec![start_seq]);
    };
    let events = received(records);
    // What had settled before the kill, as the realm announced it then.
    let settled_before: BTreeMap<String, (u64, Value)> = events
        .iter()
        .filter(|(seq, e)| *seq < start_seq && e["type"] == "intent.result")
        .filter_map(|(seq, e)| {
            Some((
                e["body"]["intent_id"].as_str()?.to_owned(),
                (*seq, e["body"].clone()),
            ))
        })
        .collect();
    let mut problems = Vec::new();
    let mut evidence = vec![start_seq, end_seq];
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    if let (Some((b, before)), Some((a, after))) = (
        marks(records, "realm-before").first(),
        marks(records, "realm-after").first(),
    ) {
        if before != after {
            problems.push(format!(
                "realm_id changed across the restart: {before} before, {after} after (ENV-2)"
            ));
            evidence.extend([*b, *a]);
        }
    }
    if let Some((seq, why)) = marks(records, "no-session-after").first() {
        problems.push(format!(
            "after the restart the wallet could not open a session: {why}"
        ));
        evidence.push(*seq);
    }
    let fetches = marks(records, "fetch");
    for (_, intent_id) in &accepted {
        let Some((fetch_seq, fetch_id)) = fetches.iter().find_map(|(seq, v)| {
            let (i, f) = v.split_once(':')?;
            (i == *intent_id).then_some((*seq, f))
        }) else {
            if marks(records, "no-session-after").is_empty() {
                problems.push(format!(
                    "intent {intent_id} was never fetched after the restart"
                ));
            }
            continue;
        };
        let reply = events
            .iter()
            .find(|(seq, e)| *seq > fetch_seq && e["corr"].as_str() == Some(fetch_id));
        let Some((reply_seq, reply)) = reply else {
            problems.push(format!(
                "intent.fetch of {intent_id}, accepted before the kill, got no answer after the restart (INT-11)"
            ));
            evidence.push(fetch_seq);
            continue;
        };
        if reply["type"] != "intent.status" || reply["body"]["intent_id"] != *intent_id {
            problems.push(format!(
                "intent {intent_id} was acknowledged with intent.accepted before the kill, but after the restart intent.fetch answers {} {} (INT-11)",
                reply["type"].as_str().unwrap_or("?"),
                reply["body"]["code"].as_str().unwrap_or_default()
            ));
            evidence.push(*reply_seq);
            continue;
        }
        let body = &reply["body"];
        let state = body["state"].as_str().unwrap_or("?").to_owned();
        *states.entry(state.clone()).or_default() += 1;
        if let Some((result_seq, result)) = settled_before.get(*intent_id) {
            if state != "succeeded"
                || body["output"] != result["output"]
                || body["cost"] != result["cost"]
            {
                problems.push(format!(
                    "intent {intent_id} had succeeded before the kill (output {}, cost {}), but after the restart it is {state} (output {}, cost {}) (INT-11, INT-2)",
                    result["output"], result["cost"], body["output"], body["cost"]
                ));
                evidence.extend([*result_seq, *reply_seq]);
            }
        }
    }
    // ENV-2: what was unfinished at the restart ran to an end. The last status each intent
    // was seen in (first fetch, then the re-fetches) must be terminal.
    if let Some((_, resume_ms)) = marks(records, "resume-done").first() {
        let asked: Vec<(u64, &str)> = fetches
            .iter()
            .chain(marks(records, "refetch").iter())
            .copied()
            .collect();
        for (_, intent_id) in &accepted {
            let last = asked
                .iter()
                .filter_map(|(seq, v)| {
                    let (i, f) = v.split_once(':')?;
                    (i == *intent_id).then_some((*seq, f))
                })
                .filter_map(|(seq, f)| {
                    events.iter().find(|(s, e)| {
                        *s > seq && e["corr"].as_str() == Some(f) && e["type"] == "intent.status"
                    })
                })
                .max_by_key(|(s, _)| *s);
            if let Some((seq, e)) = last {
                let state = e["body"]["state"].as_str().unwrap_or("?");
                if !TERMINAL.contains(&state) {
                    problems.push(format!(
                        "intent {intent_id} was still {state} {resume_ms} ms after the restart: what the realm had in flight was not resumed (ENV-2)"
                    ));
                    evidence.push(*seq);
                }
            }
        }
    }
    let observed = format!(
        "{} intents accepted, {} settled before the kill; killed: {start_proof}; healed: {end_proof}; after the restart: {}",
        accepted.len(),
        settled_before.len(),
        if states.is_empty() {
            "nothing fetched".to_owned()
        } else {
            states
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let judgement = if problems.is_empty() {
        Judgement::new(
            Outcome::Pass,
            "every intent acknowledged before the SIGKILL was there after the restart, settled ones unchanged, under the same realm_id",
            observed,
        )
    } else {
        Judgement::new(Outcome::Broken, problems.join("; "), observed)
    };
    judgement.with("the fault window and the answers after it", evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, entry: Entry) -> Record {
        Record {
            seq,
            t_us: seq,
            case: Some("recovery.container-kill".into()),
            entry,
        }
    }

    fn mark(seq: u64, text: &str) -> Record {
        rec(
            seq,
            Entry::Note {
                text: format!("{MARK}{text}"),
            },
        )
    }

    fn frame(seq: u64, v: Value) -> Record {
        rec(
            seq,
            Entry::Frame {
                conn: 1,
                dir: Dir::Recv,
                data: v.to_string(),
            },
        )
    }

    fn fault(seq: u64, edge: &str, proof: &str) -> Record {
        rec(
            seq,
            Entry::Fault {
                what: "kill".into(),
                edge: edge.into(),
                proof: proof.into(),
            },
        )
    }

    fn spec() -> CaseSpec {
        toml::from_str(
            r#"id = "recovery.container-kill"
title = "t"
requirements = ["INT-11"]
level = "MUST"
kind = "container-kill"
expectation = "e"
remediation = "r"
requires = ["container"]"#,
        )
        .expect("spec")
    }

    fn history(after_a: Value) -> Vec<Record> {
        vec![
            mark(1, "realm-before:R"),
            mark(2, "accepted:A"),
            mark(3, "accepted:B"),
            frame(
                4,
                json!({"type": "intent.result", "body": {"intent_id": "A", "output": {"n": 1}, "cost": 1000}}),
            ),
            fault(
                5,
                "start",
                "was running ; now exited, exit code 137, finished x",
            ),
            fault(6, "end", "running, pid 9"),
            mark(7, "realm-after:R"),
            mark(8, "fetch:A:f1"),
            frame(9, after_a),
            mark(10, "fetch:B:f2"),
            frame(
                11,
                json!({"type": "intent.status", "corr": "f2", "body": {"intent_id": "B", "state": "queued"}}),
            ),
        ]
    }

    fn judge(records: &[Record]) -> Judgement {
        let refs: Vec<&Record> = records.iter().collect();
        check(&spec(), &refs)
    }

    #[test]
    fn surviving_intents_pass_and_lost_or_changed_ones_do_not() {
        let same = json!({"type": "intent.status", "corr": "f1",
            "body": {"intent_id": "A", "state": "succeeded", "output": {"n": 1}, "cost": 1000}});
        let j = judge(&history(same));
        assert_eq!(j.outcome, Outcome::Pass, "{j:?}");
        assert!(j.observed.contains("1 queued"), "{}", j.observed);

        let lost = json!({"type": "error", "corr": "f1", "body": {"code": "NOT_FOUND"}});
        let j = judge(&history(lost));
        assert_eq!(j.outcome, Outcome::Broken);
        assert!(j.reason.contains("NOT_FOUND"), "{}", j.reason);

        let changed = json!({"type": "intent.status", "corr": "f1",
            "body": {"intent_id": "A", "state": "queued"}});
        assert_eq!(judge(&history(changed)).outcome, Outcome::Broken);
    }

    #[test]
    fn an_unproven_or_unhealed_fault_decides_nothing() {
        let same = json!({"type": "intent.status", "corr": "f1",
            "body": {"intent_id": "A", "state": "succeeded", "output": {"n": 1}, "cost": 1000}});
        let mut records = history(same.clone());
        records.retain(|r| !matches!(&r.entry, Entry::Fault { edge, .. } if edge == "end"));
        assert_eq!(judge(&records).outcome, Outcome::Unknown);
        let mut records = history(same);
        records[4] = fault(5, "start", "docker kill sent");
        assert_eq!(judge(&records).outcome, Outcome::Unknown);
    }

    #[test]
    fn a_realm_that_does_not_come_back_fails() {
        let mut records = history(json!({}));
        records.truncate(5);
        records.push(mark(6, "not-recovered:container exited (code 1)"));
        let j = judge(&records);
        assert_eq!(j.outcome, Outcome::Broken);
        assert!(j.reason.contains("never became ready"), "{}", j.reason);
    }
}

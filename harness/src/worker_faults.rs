//! The `worker-container-fault` case kind: a realm-plus-worker topology (the realm's container
//! and a worker container started from the same image on the run's private network), then a
//! fault on the worker container while it holds a lease: `pause` (frozen, its connection open but
//! silent) or `partition` (cut off the network: its packets go nowhere, nobody sees a close).
//!
//! The harness gives the worker its identity, pins probes to it (PRB-6) so that it alone can run
//! them, and holds the fault until the lease must have lapsed and the worker must be unhealthy.
//! The journal holds the window with proof at both edges, the health the realm reported during
//! it, and the pinned intent's fate after the heal. Judged: the realm called the worker unhealthy
//! in time (WRK-7, HLT-3), did not capture the lapsed attempt's result (LSE-5, LSE-11), and
//! settled the intent exactly once (INT-6) once the worker was back.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::recovery::payer;
use crate::wire::{self, event, http_get, login, Conn, Identity, Received};

/// The case kind.
pub const KIND: &str = "worker-container-fault";

/// What a `cert.probe` costs (PRB-4).
const PROBE_COST: u64 = 1000;

fn int_param(ctx: &Ctx<'_>, key: &str, default: u64) -> u64 {
    ctx.spec
        .params
        .get(key)
        .and_then(|v| v.as_integer())
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(default)
}

/// The realm's lease terms from its manifest: (lease_ms, heartbeat_interval_ms, grace_ms).
async fn lease_terms(ctx: &Ctx<'_>) -> (u64, u64, u64) {
    let manifest = http_get(
        &ctx.target.http_base,
        "/v1/manifest",
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(3000),
    )
    .await
    .ok()
    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
    .unwrap_or(Value::Null);
    let lease = &manifest["lease"];
    let get = |k: &str, d: u64| lease[k].as_u64().unwrap_or(d).min(60_000);
    (
        get("lease_ms", 10_000),
        get("heartbeat_interval_ms", 1000),
        get("grace_ms", 2000),
    )
}

fn probe(worker_key: &str, work_ms: u64) -> Value {
    event(
        "intent.submit",
        None,
        json!({"intent": "cert.probe",
               "input": {"nonce": format!("worker-fault-{}", wire::new_id()),
                         "work_ms": work_ms, "worker_key": worker_key},
               "max_cost": 2 * PROBE_COST, "idempotency_key": wire::new_id()}),
    )
}

fn is_terminal_for(r: &Received, intent_id: &str) -> bool {
    matches!(r.kind(), Some("intent.result") | Some("intent.failed"))
        && r.body("intent_id").and_then(Value::as_str) == Some(intent_id)
}

async fn fetch(ctx: &Ctx<'_>, conn: &mut Conn, intent_id: &str, mark: &str) -> Option<Received> {
    let ev = event("intent.fetch", None, json!({ "intent_id": intent_id }));
    ctx.mark(
        mark,
        &format!("{intent_id}:{}", ev["id"].as_str().unwrap_or_default()),
    );
    conn.request(&ev, ctx.within(5000)).await.ok()
}

async fn health(ctx: &Ctx<'_>) {
    let _ = http_get(
        &ctx.target.http_base,
        "/v1/health",
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(2000),
    )
    .await;
}

/// Drives the case; every observation is in the journal, the verdict is [`check`]'s.
pub async fn drive(ctx: &Ctx<'_>) {
    let Some(realm) = ctx.target.container.as_ref() else {
        return ctx.skip("needs a realm the harness runs in a container (--image)");
    };
    let fault = match ctx.spec.params.get("fault").and_then(|v| v.as_str()) {
        Some(f @ ("pause" | "partition")) => f.to_owned(),
        other => {
            return ctx.abort(format!(
                "plan parameter `fault` is {other:?}, not pause or partition"
            ))
        }
    };
    let work_ms = int_param(ctx, "work_ms", 3000).min(5000);
    let (lease_ms, heartbeat_ms, grace_ms) = lease_terms(ctx).await;
    ctx.mark("terms", &format!("{lease_ms}:{heartbeat_ms}:{grace_ms}"));
    let wallet = match payer(ctx, 6 * PROBE_COST).await {
        Ok(w) => w,
        Err(e) => return ctx.abort(e),
    };
    let key = match Identity::generate() {
        Ok(k) => k,
        Err(e) => return ctx.abort(format!("no randomness: {e}")),
    };
    let worker = match realm.start_worker(&key.secret_hex()).await {
        Ok(name) => name,
        Err(e) => return ctx.abort(format!("could not start the worker container: {e}")),
    };
    ctx.note(format!(
        "topology: realm container {} and worker container {worker} (worker_key {}) on network {}",
        realm.name,
        key.public_hex(),
        realm.network
    ));
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

    // 1. The worker serves a pinned probe: it is enrolled, and its worker_id is learnt.
    let until = Instant::now() + Duration::from_secs(20);
    let worker_id = loop {
        let submit = probe(&key.public_hex(), 0);
        let reply = match conn.request(&submit, ctx.within(5000)).await {
            Ok(r) => r,
            Err(e) => return ctx.abort(format!("submitting the first pinned probe: {e}")),
        };
        if reply.kind() == Some("intent.accepted") {
            let id = reply
                .body("intent_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let done = conn
                .wait_for("the first probe's result", ctx.within(10_000), |r| {
                    is_terminal_for(r, &id)
                })
                .await;
            match done.ok().and_then(|r| {
                r.body("output")
                    .and_then(|o| o["worker_id"].as_str().map(str::to_owned))
            }) {
                Some(w) => break w,
                None => {
                    return ctx.abort("the worker container did not run the first pinned probe")
                }
            }
        }
        // INFEASIBLE until the worker has enrolled.
        if Instant::now() >= until {
            return ctx.abort(format!(
                "the worker container never enrolled: pinned probes were answered {:?}",
                reply.kind()
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    ctx.mark("worker-id", &worker_id);

    // 2. A pinned probe that is running on it (leased) when the fault starts.
    let reply = match conn
        .request(&probe(&key.public_hex(), work_ms), ctx.within(5000))
        .await
    {
        Ok(r) if r.kind() == Some("intent.accepted") => r,
        Ok(r) => return ctx.abort(format!("the pinned probe was answered {:?}", r.kind())),
        Err(e) => return ctx.abort(format!("submitting the pinned probe: {e}")),
    };
    let intent = reply
        .body("intent_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    ctx.mark("in-flight", &intent);
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let status = fetch(ctx, &mut conn, &intent, "fetch-before").await;
        let state = status
            .as_ref()
            .and_then(|r| r.body("state"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if state == "running" || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. The fault, held until the lease has lapsed and the worker must look unhealthy.
    let started = match fault.as_str() {
        "pause" => realm.pause(&worker).await,
        _ => realm.disconnect(&worker).await,
    };
    let proof = match started {
        Ok(p) => p,
        Err(e) => {
            let _ = realm.remove_worker(&worker).await;
            return ctx.abort(format!("the {fault} did not take effect: {e}"));
        }
    };
    ctx.journal.log(
        Some(&ctx.spec.id),
        Entry::Fault {
            what: fault.clone(),
            edge: "start".into(),
            proof,
        },
    );
    let hold = (3 * heartbeat_ms + 2500).max(lease_ms + grace_ms + 500);
    let until = Instant::now() + Duration::from_millis(hold);
    while Instant::now() < until.min(ctx.deadline) {
        health(ctx).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    health(ctx).await;
    let _ = fetch(ctx, &mut conn, &intent, "fetch-during").await;

    // 4. Heal, then let the intent finish on the worker once it is back.
    let healed = match fault.as_str() {
        "pause" => realm.unpause(&worker).await,
        _ => realm.connect(&worker).await,
    };
    let proof = match healed {
        Ok(p) => p,
        Err(e) => format!("NOT healed ({e}); the worker container is removed now"),
    };
    let not_healed = proof.starts_with("NOT healed");
    ctx.journal.log(
        Some(&ctx.spec.id),
        Entry::Fault {
            what: fault.clone(),
            edge: "end".into(),
            proof,
        },
    );
    if not_healed {
        let _ = realm.remove_worker(&worker).await;
        return ctx.abort(format!("the {fault} could not be healed"));
    }
    let until = Instant::now() + Duration::from_millis(int_param(ctx, "settle_ms", 30_000));
    let mut settled = false;
    while !settled && Instant::now() < until.min(ctx.deadline) {
        health(ctx).await;
        settled = conn
            .wait_for("the pinned probe's end", ctx.within(500), |r| {
                is_terminal_for(r, &intent)
            })
            .await
            .is_ok();
    }
    // A second terminal event would be a defect: give it a moment to show.
    let _ = conn
        .wait_for("a second terminal event", ctx.within(1000), |r| {
            is_terminal_for(r, &intent)
        })
        .await;
    health(ctx).await;
    let _ = fetch(ctx, &mut conn, &intent, "fetch-after").await;
    conn.close().await;
    let removed = realm.remove_worker(&worker).await;
    ctx.note(format!("topology taken down: {removed}"));
}

/// Every value of marker `name`, with its record's sequence number.
fn marks<'a>(records: &[&'a Record], name: &str) -> Vec<(u64, &'a str)> {
    let prefix = format!("{name}:");
    records
        .iter()
        .filter_map(|r| note(r, MARK)?.strip_prefix(&prefix).map(|v| (r.seq, v)))
        .collect()
}

/// The reply to the last fetch marked `name`: (its record's seq, the event).
fn fetched(records: &[&Record], events: &[(u64, u64, Value)], name: &str) -> Option<(u64, Value)> {
    let (seq, v) = *marks(records, name).last()?;
    let (_, fetch_id) = v.split_once(':')?;
    events
        .iter()
        .find(|(s, _, e)| *s > seq && e["corr"].as_str() == Some(fetch_id))
        .map(|(s, _, e)| (*s, e.clone()))
}

/// The worker's health state in a health body: `None` when it is not listed.
fn listed_state(body: &Value, worker_id: &str) -> Option<String> {
    body["workers"]
        .as_array()?
        .iter()
        .find(|w| w["worker_id"].as_str() == Some(worker_id))
        .and_then(|w| w["state"].as_str().map(str::to_owned))
}

/// Judges the case from its records.
pub fn check(_spec: &CaseSpec, records: &[&Record]) -> Judgement {
    let Some(&(_, worker_id)) = marks(records, "worker-id").first() else {
        return Judgement::new(
            Outcome::Unknown,
            "the worker container never served a pinned probe, so the fault could not be aimed",
            "",
        );
    };
    let Some(&(_, intent)) = marks(records, "in-flight").first() else {
        return Judgement::new(Outcome::Unknown, "no pinned probe was in flight", "");
    };
    let terms: Vec<u64> = marks(records, "terms")
        .first()
        .map(|(_, v)| v.split(':').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let (heartbeat_ms, lease_ms, grace_ms) = match terms.as_slice() {
        [lease, hb, grace] => (*hb, *lease, *grace),
        _ => (1000, 10_000, 2000),
    };
    let edge = |edge: &str| {
        records.iter().find_map(|r| match &r.entry {
            Entry::Fault {
                edge: e,
                proof,
                what,
            } if e == edge => Some((r.seq, r.t_us, what.clone(), proof.clone())),
            _ => None,
        })
    };
    let Some((start_seq, start_us, what, start_proof)) = edge("start") else {
        return Judgement::new(
            Outcome::Unknown,
            "the fault was never journaled as taking effect",
            "",
        );
    };
    let proven = match what.as_str() {
        "pause" => start_proof.contains("now paused"),
        _ => start_proof.contains("docker network disconnect"),
    };
    if !proven {
        return Judgement::new(
            Outcome::Unknown,
            "the engine's answer does not prove the fault took effect",
            start_proof,
        )
        .with("the fault's start", vec![start_seq]);
    }
    let Some((end_seq, end_us, _, end_proof)) = edge("end") else {
        return Judgement::new(
            Outcome::Unknown,
            "the fault window was never closed",
            start_proof,
        )
        .with("the fault's start", vec![start_seq]);
    };

    // Everything received, with the harness's clock.
    let events: Vec<(u64, u64, Value)> = records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Frame {
                dir: Dir::Recv,
                data,
                ..
            } => serde_json::from_str(data).ok().map(|v| (r.seq, r.t_us, v)),
            _ => None,
        })
        .collect();
    let healths: Vec<(u64, u64, Value)> = records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Http {
                path,
                status: 200,
                body,
                ..
            } if path == "/v1/health" => {
                serde_json::from_str(body).ok().map(|v| (r.seq, r.t_us, v))
            }
            _ => None,
        })
        .collect();

    let mut problems = Vec::new();
    let mut evidence = vec![start_seq, end_seq];
    // WRK-7 and HLT-3: unhealthy once 3 heartbeat intervals are missed, shown within 2 s.
    let due_us = start_us + (3 * heartbeat_ms + 2000 + 300) * 1000;
    let during: Vec<&(u64, u64, Value)> = healths
        .iter()
        .filter(|(s, t, _)| *s > start_seq && *s < end_seq && *t >= due_us)
        .collect();
    let Some((h_seq, h_us, h_body)) = during.first().copied() else {
        return Judgement::new(
            Outcome::Unknown,
            "no health answer came late enough in the fault window to judge the worker's state",
            start_proof,
        )
        .with("the window", evidence);
    };
    let shown = listed_state(h_body, worker_id);
    if shown.as_deref() == Some("healthy") {
        problems.push(format!(
            "{} ms after the worker's {what} began (3 heartbeat intervals of {heartbeat_ms} ms plus 2 s), /v1/health still listed {worker_id} as healthy (WRK-7, HLT-3)",
            (h_us - start_us) / 1000
        ));
        evidence.push(*h_seq);
    }
    // The pinned intent: leased before the fault, so its lease lapsed inside the window.
    let running_before = fetched(records, &events, "fetch-before")
        .is_some_and(|(s, e)| s < start_seq && e["body"]["state"] == "running");
    let lapsed = end_us.saturating_sub(start_us) > (lease_ms + grace_ms) * 1000;
    let terminals: Vec<&(u64, u64, Value)> = events
        .iter()
        .filter(|(_, _, e)| {
            matches!(
                e["type"].as_str(),
                Some("intent.result") | Some("intent.failed")
            ) && e["body"]["intent_id"].as_str() == Some(intent)
        })
        .collect();
    let back = healths
        .iter()
        .any(|(s, _, b)| *s > end_seq && listed_state(b, worker_id).as_deref() == Some("healthy"));
    let after = fetched(records, &events, "fetch-after");
    match terminals.as_slice() {
        [] if !back => {
            return Judgement::new(
                Outcome::Unknown,
                format!("after the heal the worker {worker_id} never showed healthy again, so the pinned intent could not finish; nothing to judge about the realm"),
                format!("fault: {start_proof}; heal: {end_proof}"),
            )
            .with("the window", evidence);
        }
        [] => problems.push(format!(
            "the worker was healthy again after the heal, but the intent pinned to it, {intent}, never settled (LSE-5: a lapsed attempt goes back to the queue and is dispatched again)"
        )),
        [(seq, _, e)] => {
            evidence.push(*seq);
            let body = &e["body"];
            if e["type"] == "intent.result" {
                if body["cost"] != PROBE_COST {
                    problems.push(format!("the intent's cost is {}, not {PROBE_COST} (PRB-4)", body["cost"]));
                }
                if body["output"]["worker_id"].as_str() != Some(worker_id) {
                    problems.push(format!(
                        "the pinned intent's result names worker {}, not {worker_id} (PRB-6)",
                        body["output"]["worker_id"]
                    ));
                }
                if running_before && lapsed && body["attempts"].as_u64() == Some(1) {
                    problems.push(format!(
                        "the result of attempt 1 was captured although its lease lapsed during the {what} (LSE-5, LSE-11)"
                    ));
                }
            }
            if let Some((s, status)) = &after {
                let want = if e["type"] == "intent.result" { "succeeded" } else { "failed/dead" };
                let state = status["body"]["state"].as_str().unwrap_or("?");
                let agrees = match e["type"].as_str() {
                    Some("intent.result") => state == "succeeded",
                    _ => matches!(state, "failed" | "dead"),
                };
                if !agrees {
                    problems.push(format!(
                        "after its terminal {} the intent's status is {state}, not {want} (INT-2)",
                        e["type"].as_str().unwrap_or("?")
                    ));
                    evidence.push(*s);
                }
            }
        }
        many => {
            evidence.extend(many.iter().map(|(s, _, _)| *s));
            problems.push(format!(
                "the pinned intent {intent} got {} terminal events (INT-6, LSE-11)",
                many.len()
            ));
        }
    }
    let outcome_line = terminals
        .first()
        .map(|(_, _, e)| {
            format!(
                "{} after {} attempt(s)",
                e["type"].as_str().unwrap_or("?"),
                e["body"]["attempts"]
            )
        })
        .unwrap_or_else(|| "no terminal event".into());
    let observed = format!(
        "fault: {start_proof}; health {} ms in: {worker_id} {}; heal: {end_proof}; the pinned intent: {outcome_line}; worker healthy again: {}",
        (h_us - start_us) / 1000,
        shown.unwrap_or_else(|| "not listed".into()),
        if back { "yes" } else { "no" }
    );
    let judgement = if problems.is_empty() {
        Judgement::new(
            Outcome::Pass,
            format!("during the worker's {what} the realm called it unhealthy in time, did not capture the lapsed attempt, and settled the pinned intent exactly once after the heal"),
            observed,
        )
    } else {
        Judgement::new(Outcome::Broken, problems.join("; "), observed)
    };
    judgement.with(
        "the fault window, health during it, and the intent's end",
        evidence,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, t_ms: u64, entry: Entry) -> Record {
        Record {
            seq,
            t_us: t_ms * 1000,
            case: Some("workers.container-pause".into()),
            entry,
        }
    }

    fn mark(seq: u64, t: u64, text: &str) -> Record {
        rec(
            seq,
            t,
            Entry::Note {
                text: format!("{MARK}{text}"),
            },
        )
    }

    fn recv(seq: u64, t: u64, v: Value) -> Record {
        rec(
            seq,
            t,
            Entry::Frame {
                conn: 1,
                dir: Dir::Recv,
                data: v.to_string(),
            },
        )
    }

    fn health(seq: u64, t: u64, state: &str) -> Record {
        rec(
            seq,
            t,
            Entry::Http {
                method: "GET".into(),
                path: "/v1/health".into(),
                status: 200,
                body: json!({"workers": [{"worker_id": "W", "state": state}]}).to_string(),
            },
        )
    }

    fn fault(seq: u64, t: u64, edge: &str, proof: &str) -> Record {
        rec(
            seq,
            t,
            Entry::Fault {
                what: "pause".into(),
                edge: edge.into(),
                proof: proof.into(),
            },
        )
    }

    fn result(seq: u64, t: u64, attempts: u64) -> Record {
        recv(
            seq,
            t,
            json!({"type": "intent.result", "body": {"intent_id": "I", "cost": 1000,
                   "attempts": attempts, "output": {"worker_id": "W"}}}),
        )
    }

    /// Lease 1000 ms, heartbeats 500 ms, grace 2000 ms; paused at 10 s for 4.5 s.
    fn history(during: &str, terminals: &[Record]) -> Vec<Record> {
        let mut r = vec![
            mark(1, 0, "terms:1000:500:2000"),
            mark(2, 1, "worker-id:W"),
            mark(3, 2, "in-flight:I"),
            mark(4, 3, "fetch-before:I:f1"),
            recv(
                5,
                4,
                json!({"type": "intent.status", "corr": "f1", "body": {"state": "running"}}),
            ),
            fault(6, 10_000, "start", "docker pause w: now paused, pid 1"),
            health(7, 11_000, "suspect"),
            health(8, 13_900, during),
            fault(9, 14_500, "end", "docker unpause w: now running"),
            health(10, 15_000, "healthy"),
        ];
        r.extend(terminals.iter().cloned());
        r.push(mark(40, 20_000, "fetch-after:I:f2"));
        r.push(recv(
            41,
            20_001,
            json!({"type": "intent.status", "corr": "f2", "body": {"state": "succeeded"}}),
        ));
        r
    }

    fn judge(records: &[Record]) -> Judgement {
        let spec: CaseSpec = toml::from_str(
            "id = \"workers.container-pause\"\ntitle = \"t\"\nrequirements = [\"WRK-7\"]\nlevel = \"MUST\"\nkind = \"worker-container-fault\"\nexpectation = \"e\"\nremediation = \"r\"",
        )
        .expect("spec");
        check(&spec, &records.iter().collect::<Vec<_>>())
    }

    #[test]
    fn a_realm_that_notices_fences_and_settles_once_passes() {
        let j = judge(&history("unhealthy", &[result(30, 17_000, 2)]));
        assert_eq!(j.outcome, Outcome::Pass, "{j:?}");
    }

    #[test]
    fn still_healthy_late_in_the_window_or_a_captured_lapsed_attempt_fails() {
        let j = judge(&history("healthy", &[result(30, 17_000, 2)]));
        assert_eq!(j.outcome, Outcome::Broken);
        assert!(j.reason.contains("WRK-7"), "{}", j.reason);
        let j = judge(&history("unhealthy", &[result(30, 17_000, 1)]));
        assert_eq!(j.outcome, Outcome::Broken);
        assert!(j.reason.contains("LSE-11"), "{}", j.reason);
        let twice = [result(30, 17_000, 2), result(31, 17_100, 2)];
        let j = judge(&history("unhealthy", &twice));
        assert!(j.reason.contains("2 terminal events"), "{}", j.reason);
    }

    #[test]
    fn a_worker_that_never_comes_back_decides_nothing() {
        let mut records = history("unhealthy", &[]);
        records.retain(|r| r.seq != 10);
        assert_eq!(judge(&records).outcome, Outcome::Unknown);
        // Back, but the intent never ends: the realm's failure.
        assert_eq!(judge(&history("unhealthy", &[])).outcome, Outcome::Broken);
    }
}

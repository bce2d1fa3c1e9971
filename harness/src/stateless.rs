//! The `stateless` kind (SQ-17, INT-10): an intent belongs to its wallet, not to the connection
//! that submitted it. Nothing a realm needs to answer for an intent may live only in one
//! connection's memory.
//!
//! One driver per `params.check`, each on the `scripted` stage (a funded wallet's session `A`
//! and a worker of the harness's own, so the intent's progress is in the harness's hands):
//! - `fetch-elsewhere`: a probe submitted on `A` runs to its result; a second session `B` of the
//!   same wallet fetches it and must get `intent.status` `succeeded` with the same output.
//! - `cancel-elsewhere`: a probe submitted on `A` is held by the harness's worker; `B` cancels it
//!   and must get `intent.cancelled`; a fetch on `B` then reads `cancelled`.
//! - `resume-elsewhere` (INT-12, INT-13): two probes are submitted on `A`, which then closes; one
//!   succeeds while no session of the wallet is connected. A session of another wallet naming
//!   both in its hello's `resume` must hear nothing of them; a new session of the wallet naming
//!   both (and an unknown id) must get one `intent.status` each (nothing for the unknown id), the
//!   result that reached no session exactly once, and, attached to the one still running, its
//!   result; a third session resuming the settled one gets its status but not its result again.
//!
//! After a restart the same holds: `recovery.process-kill` fetches from a new session.

use serde_json::{json, Value};

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::scripted::stage::{Assign, Auto, Stage, StageError};
use crate::scripted::Params;
use crate::wire::{event, login, login_resuming, new_id, Conn, Identity};

/// The case kind.
pub const KIND: &str = "stateless";

fn check_param(spec: &CaseSpec) -> &str {
    spec.params
        .get("check")
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

/// Drives the case; the verdict is [`check`]'s.
pub async fn drive(ctx: &Ctx<'_>) {
    let check = check_param(ctx.spec).to_owned();
    if !matches!(
        check.as_str(),
        "fetch-elsewhere" | "cancel-elsewhere" | "resume-elsewhere"
    ) {
        return ctx.abort(format!("unknown stateless check `{check}`"));
    }
    let params = Params::of(ctx.spec);
    let mut stage = match Stage::open(ctx, &params).await {
        Ok(s) => s,
        Err(StageError::Skip(why)) => return ctx.skip(why),
        Err(e) => return ctx.abort(e),
    };
    let r = if check == "resume-elsewhere" {
        resume(ctx, &mut stage).await
    } else {
        run(ctx, &mut stage, &check).await
    };
    stage.finish().await;
    if let Err(e) = r {
        ctx.abort(e);
    }
    ctx.mark("done", "");
}

async fn run(ctx: &Ctx<'_>, stage: &mut Stage<'_>, check: &str) -> Result<(), String> {
    let w = stage.enrol().await.map_err(|e| e.to_string())?;
    let key = stage.worker_key(w);
    if check == "fetch-elsewhere" {
        stage.auto = Some(Auto::Answer);
    }
    let (id, _) = stage.submit(&key).await.map_err(|e| e.to_string())?;
    ctx.mark("intent", &id);
    if check == "fetch-elsewhere" {
        if stage.wait_terminal(&id, 10_000).await.is_none() {
            return Err(format!("intent {id} did not end on the submitting session"));
        }
    } else if stage.next_assign(10_000).await.is_none() {
        return Err(format!(
            "intent {id} was never assigned to the harness's worker"
        ));
    }
    let mut other = second_session(ctx, stage).await?;
    if check == "cancel-elsewhere" {
        ask(ctx, &mut other, "intent.cancel", "cancel", &id).await;
    }
    ask(ctx, &mut other, "intent.fetch", "fetch", &id).await;
    other.close().await;
    Ok(())
}

/// `resume-elsewhere`: see the module's documentation for the script.
async fn resume(ctx: &Ctx<'_>, stage: &mut Stage<'_>) -> Result<(), String> {
    let w = stage.enrol().await.map_err(|e| e.to_string())?;
    let key = stage.worker_key(w);
    let (settled, settled_nonce) = stage.submit(&key).await.map_err(|e| e.to_string())?;
    ctx.mark("settled", &settled);
    let (running, _) = stage.submit(&key).await.map_err(|e| e.to_string())?;
    ctx.mark("running", &running);
    // Both leases are in the harness's hands before the submitting session goes.
    let mut held = Vec::new();
    while held.len() < 2 {
        match stage.next_assign(10_000).await {
            Some(a) => held.push(a),
            None => {
                return Err(
                    "the two probes were not both assigned to the harness's worker within 10 s"
                        .into(),
                )
            }
        }
    }
    if held[0].nonce != settled_nonce {
        held.swap(0, 1);
    }
    let (first, second) = (held.remove(0), held.remove(0));
    stage.close_client().await;
    // The realm must see the session end before the result comes, so that it reaches no one.
    // Until its answer, each lease is kept alive with progress: the realm's lease may be short.
    hold(stage, &[&first, &second], 300).await;
    let first = latest(stage, first).await;
    let answer = stage.answer(&first, Some("answer-settled")).await;
    if stage.wait_receipt(&answer, 5000).await.is_none() {
        return Err(format!(
            "the result of {settled} got no task.receipt within 5 s"
        ));
    }
    hold(stage, &[&second], 200).await;

    let stranger = Identity::generate().map_err(|e| format!("no randomness: {e}"))?;
    let mut conn = resuming(
        ctx,
        &stranger,
        &[settled.clone(), running.clone()],
        "stranger",
    )
    .await?;
    listen(stage, &mut conn, 500, &[&second]).await;
    conn.close().await;

    let unknown = new_id();
    ctx.mark("unknown", &unknown);
    let wallet = stage.wallet().clone();
    let ids = [settled.clone(), running, unknown];
    let mut own = resuming(ctx, &wallet, &ids, "own").await?;
    listen(stage, &mut own, 500, &[&second]).await;
    let second = latest(stage, second).await;
    stage.answer(&second, Some("answer-running")).await;
    listen(stage, &mut own, 1500, &[]).await;
    own.close().await;
    stage.quiet(200).await;

    let mut again = resuming(ctx, &wallet, &[settled], "again").await?;
    listen(stage, &mut again, 500, &[]).await;
    again.close().await;
    Ok(())
}

/// The newest assignment of `a`'s probe: should a lease lapse all the same (a realm whose
/// progress does not extend it), the answer goes to the attempt the realm now waits for, so the
/// case judges resume, not lease keeping.
async fn latest(stage: &mut Stage<'_>, mut a: Assign) -> Assign {
    let mut others = Vec::new();
    while let Some(b) = stage.next_assign(0).await {
        if b.nonce == a.nonce {
            a = b;
        } else {
            others.push(b);
        }
    }
    // Any other probe's assignment stays queued for its own turn.
    for b in others {
        stage.requeue(b);
    }
    a
}

/// Keeps every connection of the stage read for `ms`, sending `task.progress` for each lease in
/// `held` a few times per lease length so that none lapses meanwhile.
async fn hold(stage: &mut Stage<'_>, held: &[&Assign], ms: u64) {
    let step = (stage.terms.lease_ms / 4).max(50);
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        stage.quiet(step.min(left.as_millis() as u64)).await;
        for a in held {
            stage.progress(a, 0.5).await;
        }
    }
}

/// Opens a session of `who` resuming `ids`, marked `name:<connection>:<hello id>`.
async fn resuming(
    ctx: &Ctx<'_>,
    who: &Identity,
    ids: &[String],
    name: &str,
) -> Result<Conn, String> {
    let (conn, _, hello) = login_resuming(
        &ctx.client_url(),
        who,
        ids,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    .map_err(|e| format!("could not open the `{name}` session: {e}"))?;
    ctx.mark(name, &format!("{}:{hello}", conn.id));
    Ok(conn)
}

/// Reads `conn` for `ms` (everything lands in the journal) while the stage keeps its worker
/// beating and the leases in `held` alive.
async fn listen(stage: &mut Stage<'_>, conn: &mut Conn, ms: u64, held: &[&Assign]) {
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    let read = async { while conn.next_frame(until).await.is_ok() {} };
    tokio::join!(hold(stage, held, ms), read);
}

async fn second_session(ctx: &Ctx<'_>, stage: &Stage<'_>) -> Result<Conn, String> {
    let (conn, _) = login(
        &ctx.client_url(),
        stage.wallet(),
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    .map_err(|e| format!("could not open the wallet's second session: {e}"))?;
    ctx.mark("other", &conn.id.to_string());
    Ok(conn)
}

/// Sends `kind` for `intent` on `conn`, labelled `label:<frame id>` for the checker.
async fn ask(ctx: &Ctx<'_>, conn: &mut Conn, kind: &str, label: &str, intent: &str) {
    let ev = event(kind, None, json!({ "intent_id": intent }));
    ctx.mark(label, ev["id"].as_str().unwrap_or_default());
    let _ = conn.request(&ev, ctx.within(5000)).await;
}

fn marked<'a>(records: &[&'a Record], name: &str) -> Option<&'a str> {
    records
        .iter()
        .find_map(|r| note(r, MARK)?.strip_prefix(name)?.strip_prefix(':'))
}

/// Received events: (seq, connection, event).
fn received(records: &[&Record]) -> Vec<(u64, u32, Value)> {
    records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Frame {
                conn,
                dir: Dir::Recv,
                data,
            } => serde_json::from_str(data).ok().map(|v| (r.seq, *conn, v)),
            _ => None,
        })
        .collect()
}

fn reply_to(events: &[(u64, u32, Value)], corr: &str) -> Option<(u64, Value)> {
    events
        .iter()
        .find(|(_, _, e)| e["corr"].as_str() == Some(corr))
        .map(|(s, _, e)| (*s, e.clone()))
}

fn describe(e: &Value) -> String {
    let t = e["type"].as_str().unwrap_or("?");
    match e["body"]["code"].as_str() {
        Some(code) => format!("{t} {code}"),
        None => match e["body"]["state"].as_str() {
            Some(state) => format!("{t} ({state})"),
            None => t.to_owned(),
        },
    }
}

/// Judges the case from its records.
pub fn check(spec: &CaseSpec, records: &[&Record]) -> Judgement {
    if check_param(spec) == "resume-elsewhere" {
        return check_resume(records);
    }
    let Some(intent) = marked(records, "intent") else {
        return Judgement::new(Outcome::Unknown, "no intent was admitted", "");
    };
    if marked(records, "done").is_none() {
        return Judgement::new(Outcome::Unknown, "the case's driver did not finish", "");
    }
    let events = received(records);
    let Some(fetch_id) = marked(records, "fetch") else {
        return Judgement::new(
            Outcome::Unknown,
            "the second session never asked about the intent",
            "",
        );
    };
    let Some((fetch_seq, fetched)) = reply_to(&events, fetch_id) else {
        return Judgement::new(
            Outcome::Broken,
            format!("intent.fetch of {intent} from a second session of its wallet got no answer"),
            "no reply",
        );
    };
    let status_ok = |e: &Value, state: &str| {
        e["type"] == "intent.status"
            && e["body"]["intent_id"] == intent
            && e["body"]["state"] == state
    };
    match check_param(spec) {
        "fetch-elsewhere" => {
            let result = events
                .iter()
                .find(|(_, _, e)| e["type"] == "intent.result" && e["body"]["intent_id"] == intent);
            let Some((result_seq, _, result)) = result else {
                return Judgement::new(Outcome::Unknown, "the intent never succeeded", "");
            };
            if !status_ok(&fetched, "succeeded") {
                return Judgement::new(
                    Outcome::Broken,
                    format!(
                        "intent {intent} succeeded on the session that submitted it, but a second session of the same wallet fetching it got {} (INT-10)",
                        describe(&fetched)
                    ),
                    describe(&fetched),
                )
                .with("the result, and the other session's answer", vec![*result_seq, fetch_seq]);
            }
            if fetched["body"]["output"] != result["body"]["output"] {
                return Judgement::new(
                    Outcome::Broken,
                    "the second session's status carries another output than the result",
                    format!(
                        "result {} ; status {}",
                        result["body"]["output"], fetched["body"]["output"]
                    ),
                )
                .with(
                    "the result, and the other session's answer",
                    vec![*result_seq, fetch_seq],
                );
            }
            Judgement::new(
                Outcome::Pass,
                "a second session of the wallet fetched the intent: succeeded, same output",
                describe(&fetched),
            )
            .with("the other session's answer", vec![fetch_seq])
        }
        "cancel-elsewhere" => {
            let Some(cancel_id) = marked(records, "cancel") else {
                return Judgement::new(Outcome::Unknown, "the cancel was never sent", "");
            };
            let Some((cancel_seq, cancelled)) = reply_to(&events, cancel_id) else {
                return Judgement::new(
                    Outcome::Broken,
                    format!("intent.cancel of {intent} from a second session got no answer"),
                    "no reply",
                );
            };
            let ok =
                cancelled["type"] == "intent.cancelled" && cancelled["body"]["intent_id"] == intent;
            if !ok || !status_ok(&fetched, "cancelled") {
                return Judgement::new(
                    Outcome::Broken,
                    format!(
                        "intent {intent}, running for the session that submitted it, could not be cancelled from a second session of its wallet: the cancel got {}, a fetch then {} (SQ-17, INT-10)",
                        describe(&cancelled),
                        describe(&fetched)
                    ),
                    format!("{} ; {}", describe(&cancelled), describe(&fetched)),
                )
                .with("the other session's answers", vec![cancel_seq, fetch_seq]);
            }
            Judgement::new(
                Outcome::Pass,
                "a second session of the wallet cancelled the running intent, and reads it cancelled",
                format!("{} ; {}", describe(&cancelled), describe(&fetched)),
            )
            .with("the other session's answers", vec![cancel_seq, fetch_seq])
        }
        other => Judgement::new(
            Outcome::Unknown,
            format!("unknown stateless check `{other}`"),
            "",
        ),
    }
}

fn is_terminal(e: &Value) -> bool {
    matches!(
        e["type"].as_str(),
        Some("intent.result" | "intent.failed" | "intent.cancelled")
    )
}

/// A session mark `name:<connection>:<hello id>`.
fn session_mark<'a>(records: &[&'a Record], name: &str) -> Option<(u32, &'a str)> {
    let (conn, hello) = marked(records, name)?.split_once(':')?;
    Some((conn.parse().ok()?, hello))
}

/// The verdict of `resume-elsewhere` (INT-12, INT-13).
fn check_resume(records: &[&Record]) -> Judgement {
    let (Some(settled), Some(running)) = (marked(records, "settled"), marked(records, "running"))
    else {
        return Judgement::new(Outcome::Unknown, "the two probes were not admitted", "");
    };
    if marked(records, "done").is_none() {
        return Judgement::new(Outcome::Unknown, "the case's driver did not finish", "");
    }
    let (Some((stranger, _)), Some((own, own_hello)), Some((again, again_hello)), Some(unknown)) = (
        session_mark(records, "stranger"),
        session_mark(records, "own"),
        session_mark(records, "again"),
        marked(records, "unknown"),
    ) else {
        return Judgement::new(
            Outcome::Unknown,
            "the resuming sessions were not all opened",
            "",
        );
    };
    let events = received(records);
    let on = |conn: u32, id: &str| -> Vec<(u64, Value)> {
        events
            .iter()
            .filter(|(_, c, e)| *c == conn && e["body"]["intent_id"] == id)
            .map(|(s, _, e)| (*s, e.clone()))
            .collect()
    };
    let broken = |reason: String, seen: &[(u64, Value)]| {
        let observed = seen
            .iter()
            .map(|(_, e)| describe(e))
            .collect::<Vec<_>>()
            .join(" ; ");
        Judgement::new(Outcome::Broken, reason, observed).with(
            "the frames involved",
            seen.iter().map(|(s, _)| *s).collect(),
        )
    };

    // INT-13 and SEC-4: another wallet's session hears nothing of this wallet's intents.
    let leaked: Vec<_> = [settled, running]
        .iter()
        .flat_map(|id| on(stranger, id))
        .collect();
    if !leaked.is_empty() {
        return broken(
            format!(
                "a session of another wallet that named intents {settled} and {running} in its hello's resume was sent {} event(s) about them: resume must ignore ids that are not the session's wallet's (INT-13, SEC-4)",
                leaked.len()
            ),
            &leaked,
        );
    }
    let unknown_seen = on(own, unknown);
    if !unknown_seen.is_empty() {
        return broken(
            format!("the resume named an id no intent has ({unknown}) and the realm answered it: unknown ids are ignored, sending nothing (INT-13)"),
            &unknown_seen,
        );
    }

    // INT-12: one intent.status per resumed intent, answering the hello, after session.ready.
    let ready = events
        .iter()
        .find(|(_, c, e)| *c == own && e["type"] == "session.ready")
        .map(|(s, _, _)| *s);
    let mut evidence = Vec::new();
    for (conn, hello, id, states, label) in [
        (
            own,
            own_hello,
            settled,
            &["succeeded"][..],
            "succeeded while no session was connected",
        ),
        (
            own,
            own_hello,
            running,
            &["queued", "running"][..],
            "still held by the harness's worker",
        ),
        (
            again,
            again_hello,
            settled,
            &["succeeded"][..],
            "already delivered",
        ),
    ] {
        let all = on(conn, id);
        let statuses: Vec<_> = all
            .iter()
            .filter(|(_, e)| e["type"] == "intent.status")
            .cloned()
            .collect();
        let answering = statuses.iter().filter(|(_, e)| e["corr"] == hello).count();
        if statuses.len() != 1 || answering != 1 {
            return broken(
                format!(
                    "a new session of the wallet resumed intent {id} ({label}) and got {} intent.status for it, {answering} with corr = the hello's id: exactly one is due (INT-12)",
                    statuses.len()
                ),
                &all,
            );
        }
        let (seq, status) = &statuses[0];
        let state = status["body"]["state"].as_str().unwrap_or("?");
        if !states.contains(&state) {
            return broken(
                format!("the resumed status of intent {id} ({label}) says `{state}`, expected {} (INT-12)", states.join(" or ")),
                &all,
            );
        }
        if conn == own && ready.is_none_or(|r| *seq < r) {
            return broken(
                format!("the resumed status of intent {id} came before session.ready: resume answers follow the session's readiness (INT-12)"),
                &all,
            );
        }
        evidence.push(*seq);
    }

    // The result that reached no session is delivered once, to the first resumer only.
    let terminals = |conn: u32, id: &str| -> Vec<(u64, Value)> {
        on(conn, id)
            .into_iter()
            .filter(|(_, e)| is_terminal(e))
            .collect()
    };
    let first = terminals(own, settled);
    if first.len() != 1 {
        let reason = if first.is_empty() {
            format!("intent {settled} succeeded while no session of its wallet was connected; the session that then resumed it got its status but never its intent.result: a terminal event that reached no session is sent on resume (INT-12)")
        } else {
            format!("the undelivered result of intent {settled} was sent {} times to the session that resumed it: once (INT-12)", first.len())
        };
        return broken(reason, &on(own, settled));
    }
    let repeated = terminals(again, settled);
    if !repeated.is_empty() {
        return broken(
            format!("the result of intent {settled} had already reached a resuming session, yet a later resume sent it again: it is sent once (INT-12)"),
            &repeated,
        );
    }
    // Attached: the running intent's result reaches the session that resumed it.
    let attached = terminals(own, running);
    if attached.len() != 1 {
        let reason = if attached.is_empty() {
            format!("intent {running} was resumed while it ran, then succeeded, and the resuming session never got its result: resume attaches the session to the intent (INT-12)")
        } else {
            format!("the result of resumed intent {running} reached the resuming session {} times (INT-12)", attached.len())
        };
        return broken(reason, &on(own, running));
    }
    evidence.extend([first[0].0, attached[0].0]);
    Judgement::new(
        Outcome::Pass,
        "resume answered one status per own intent, nothing for another wallet's or an unknown id, delivered the unseen result once, and attached the session to the running intent",
        format!("{} ; {}", describe(&first[0].1), describe(&attached[0].1)),
    )
    .with("the resumed statuses and the results delivered", evidence)
}

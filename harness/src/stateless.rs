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
//!
//! After a restart the same holds: `recovery.process-kill` fetches from a new session.

use serde_json::{json, Value};

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::scripted::stage::{Auto, Stage, StageError};
use crate::scripted::Params;
use crate::wire::{event, login, Conn};

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
    if !matches!(check.as_str(), "fetch-elsewhere" | "cancel-elsewhere") {
        return ctx.abort(format!("unknown stateless check `{check}`"));
    }
    let params = Params::of(ctx.spec);
    let mut stage = match Stage::open(ctx, &params).await {
        Ok(s) => s,
        Err(StageError::Skip(why)) => return ctx.skip(why),
        Err(e) => return ctx.abort(e),
    };
    let r = run(ctx, &mut stage, &check).await;
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

//! The `injection` kind (SEC-1, SEC-2, LSE-1): strings that look like markup, script, a query, a
//! format string, a shell command or a path, and strings full of control and unusual Unicode
//! characters, are data. Each travels as a `cert.probe` nonce from the client through the realm to
//! a worker (another party: what a client writes is shown to it) and back, and must arrive
//! unchanged everywhere: in the `task.assign` the harness's worker receives, in the client's
//! `intent.result`, and in the `intent.status` a fetch reads from storage afterwards.
//!
//! The nonce is compared as a decoded JSON string, not as bytes on the wire: `\u003c` and `<` are
//! the same string, and a realm may escape either way.

use serde_json::{json, Value};

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::scripted::stage::{Auto, Stage, StageError};
use crate::scripted::Params;
use crate::wire::{event, login, new_id};

/// The case kind.
pub const KIND: &str = "injection";

/// The payloads, by label. Each, with the 9-character tag put before it, stays within the
/// `cert.probe` nonce's 128 characters.
pub const PAYLOADS: &[(&str, &str)] = &[
    (
        "markup",
        "<script>alert('mtor')</script><img src=x onerror=alert(1)>&amp;&lt;<!--",
    ),
    ("sql", "'; DROP TABLE intents; -- \" OR '1'='1' /* x */ \\'"),
    ("format", "%s%n%x%p%% {0} {} {{7*7}} ${7*7} #{7*7} <%= 7*7 %> ${jndi:x}"),
    ("shell", "$(id) `id` | id; id && id > /tmp/mtor || true & \\ \n id"),
    ("path", "../../../../etc/passwd ..\\..\\windows\\win.ini /dev/null C:\\x"),
    (
        "control",
        "nul\u{0}soh\u{1}bel\u{7}bs\u{8}vt\u{b}ff\u{c}nl\ncr\rtab\tesc\u{1b}[31mdel\u{7f}c1\u{85}\u{9b}",
    ),
    (
        "unicode",
        "e\u{301} \u{e9} \u{202e}gpj.exe \u{200b}\u{200d}\u{feff} \u{1f600}\u{1f3f3}\u{fe0f} \u{fffd}\u{ffff} \u{10ffff} \u{2028}\u{2029}",
    ),
    ("quotes", "\"'\\\"\\\\u0000 \\n /* */ </script> \" } ] , :"),
];

/// Drives the case; the verdict is [`check`]'s.
pub async fn drive(ctx: &Ctx<'_>) {
    let params = Params::of(ctx.spec);
    let mut stage = match Stage::open(ctx, &params).await {
        Ok(s) => s,
        Err(StageError::Skip(why)) => return ctx.skip(why),
        Err(e) => return ctx.abort(e),
    };
    let r = run(ctx, &mut stage).await;
    stage.finish().await;
    if let Err(e) = r {
        ctx.abort(e);
    }
    ctx.mark("done", "");
}

async fn run(ctx: &Ctx<'_>, stage: &mut Stage<'_>) -> Result<(), String> {
    let w = stage.enrol().await.map_err(|e| e.to_string())?;
    let key = stage.worker_key(w);
    // The harness's worker echoes whatever nonce it is given, as PRB-2 asks.
    stage.auto = Some(Auto::Answer);
    let mut admitted = Vec::new();
    for (label, payload) in PAYLOADS {
        // A tag in plain hex keeps each payload findable even in a realm that mangles the rest.
        let tag = &new_id()[..8];
        let nonce = format!("{tag} {payload}");
        ctx.mark("tag", &format!("{label}:{tag}"));
        let reply = stage
            .submit_probe(&key, &nonce)
            .await
            .map_err(|e| e.to_string())?;
        if reply.kind() == Some("intent.accepted") {
            if let Some(id) = reply.body("intent_id").and_then(Value::as_str) {
                admitted.push(id.to_owned());
            }
        }
    }
    for id in &admitted {
        if stage.wait_terminal(id, 10_000).await.is_none() {
            return Err(format!("intent {id} did not end within 10 s"));
        }
    }
    // Read back from storage on a second session: what the realm kept, not what it relayed.
    let (mut conn, _) = login(
        &ctx.client_url(),
        stage.wallet(),
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    .map_err(|e| format!("could not open the wallet's second session: {e}"))?;
    for id in &admitted {
        let ev = event("intent.fetch", None, json!({ "intent_id": id }));
        let _ = conn.request(&ev, ctx.within(5000)).await;
    }
    conn.close().await;
    Ok(())
}

// ---------------------------------------------------------------- checker

/// Frames of the case: (seq, direction, event).
fn frames(records: &[&Record]) -> Vec<(u64, Dir, Value)> {
    records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Frame { dir, data, .. } => {
                serde_json::from_str(data).ok().map(|v| (r.seq, *dir, v))
            }
            _ => None,
        })
        .collect()
}

fn nonce_of(e: &Value, at: &str) -> Option<String> {
    e.pointer(at).and_then(Value::as_str).map(str::to_owned)
}

/// Judges the case from its records.
pub fn check(_spec: &CaseSpec, records: &[&Record]) -> Judgement {
    let tags: Vec<(&str, &str)> = records
        .iter()
        .filter_map(|r| note(r, MARK)?.strip_prefix("tag:")?.split_once(':'))
        .collect();
    if tags.len() != PAYLOADS.len() {
        return Judgement::new(
            Outcome::Unknown,
            format!(
                "{} of {} payloads were submitted",
                tags.len(),
                PAYLOADS.len()
            ),
            "",
        );
    }
    if !records.iter().any(|r| note(r, MARK) == Some("done:")) {
        return Judgement::new(Outcome::Unknown, "the case's driver did not finish", "");
    }
    let frames = frames(records);
    let mut evidence = Vec::new();
    for (label, tag) in tags {
        let prefix = format!("{tag} ");
        // The submission: the nonce exactly as the harness sent it.
        let Some((submit_seq, submit)) = frames.iter().find_map(|(s, d, e)| {
            let hit = *d == Dir::Send
                && e["type"] == "intent.submit"
                && nonce_of(e, "/body/input/nonce").is_some_and(|n| n.starts_with(&prefix));
            hit.then_some((*s, e))
        }) else {
            return Judgement::new(
                Outcome::Unknown,
                format!("the `{label}` probe was not sent"),
                "",
            );
        };
        let sent = nonce_of(submit, "/body/input/nonce").unwrap_or_default();
        let Some((reply_seq, reply)) = frames
            .iter()
            .find(|(_, d, e)| *d == Dir::Recv && e["corr"] == submit["id"])
            .map(|(s, _, e)| (*s, e))
        else {
            return Judgement::new(
                Outcome::Unknown,
                format!("the `{label}` probe got no answer"),
                "",
            );
        };
        if reply["type"] != "intent.accepted" {
            return Judgement::new(
                Outcome::Broken,
                format!(
                    "a valid cert.probe whose nonce holds {label} text was refused: strings are data, whatever characters they contain (SEC-1, SEC-2)"
                ),
                format!("{} {}", reply["type"], reply["body"]["code"]),
            )
            .with("the submission and its answer", vec![submit_seq, reply_seq]);
        }
        let intent = reply["body"]["intent_id"].clone();
        // Every place the nonce comes back: the worker's assignment (found by the tag, which
        // survives most manglings), the client's result and the stored status.
        let assign = frames.iter().find(|(_, d, e)| {
            *d == Dir::Recv
                && e["type"] == "task.assign"
                && nonce_of(e, "/body/input/nonce").is_some_and(|n| n.contains(tag))
        });
        let result = frames.iter().find(|(_, d, e)| {
            *d == Dir::Recv && e["type"] == "intent.result" && e["body"]["intent_id"] == intent
        });
        let status = frames.iter().find(|(_, d, e)| {
            *d == Dir::Recv && e["type"] == "intent.status" && e["body"]["intent_id"] == intent
        });
        let places = [
            (
                "the worker's task.assign",
                assign,
                "/body/input/nonce",
                "LSE-1",
            ),
            (
                "the client's intent.result",
                result,
                "/body/output/nonce",
                "SEC-2",
            ),
            (
                "a later intent.status",
                status,
                "/body/output/nonce",
                "SEC-2",
            ),
        ];
        for (place, frame, at, req) in places {
            let Some((seq, _, e)) = frame else {
                return Judgement::new(
                    Outcome::Unknown,
                    format!("the `{label}` probe never reached {place}"),
                    "",
                );
            };
            let got = nonce_of(e, at).unwrap_or_default();
            if got != sent {
                return Judgement::new(
                    Outcome::Broken,
                    format!(
                        "the {label} nonce came back altered in {place}: received strings are stored and returned unchanged, whatever characters they contain ({req}, SEC-2)"
                    ),
                    format!("sent {sent:?} ; got {got:?}"),
                )
                .with("the submission and the altered copy", vec![submit_seq, *seq]);
            }
            evidence.push(*seq);
        }
    }
    Judgement::new(
        Outcome::Pass,
        format!(
            "all {} hostile nonces (markup, SQL, format strings, shell, paths, control characters, unusual Unicode, quotes) came back unchanged to the worker, in the result and from storage",
            PAYLOADS.len()
        ),
        "",
    )
    .with("the copies compared", evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_fits_the_nonce_with_its_tag() {
        for (label, p) in PAYLOADS {
            assert!(9 + p.chars().count() <= 128, "{label} is too long");
        }
    }
}

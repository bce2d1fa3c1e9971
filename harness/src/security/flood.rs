//! `params.check = "frame-flood"` (LIM-8, LIM-1, LIM-6, LIM-7, SEC-5): the per-connection token
//! bucket, measured from outside.
//!
//! A fresh wallet's session reads `rate_per_s` and `burst` from its `session.ready`, then sends
//! `burst + extra` cheap frames as fast as it can (each an `intent.fetch` of a random unknown id:
//! one `error` `NOT_FOUND` answer when processed, no side effect), all before reading anything.
//! Meanwhile a second wallet's session asks one question and must be answered promptly and hear
//! nothing else. The flood's answers are read, the harness waits the longest `retry_after_ms`
//! given (at least one token's refill time), and one more frame on the flooded connection must be
//! processed.
//!
//! The judgement uses only journal times, so it can be re-derived by `verify`. The realm took
//! every flood frame within `[first frame sent, last answer received]` (the harness's clock), so
//! at most `burst + rate_per_s × window` frames can have found a token: more processed frames is a
//! missing or looser limit, and a window long enough to refill every frame decides nothing
//! (UNKNOWN, never PASS or FAIL on a slow machine). The bucket starts full, so the first
//! `burst − frames sent before the flood` frames must all be processed.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{fresh, marks};
use crate::case::Ctx;
use crate::checker::{Judgement, Outcome};
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::wire::{self, event, login, WireError};

/// LIM-7: after this many consecutive violating frames a realm may close with 1008.
const LIM7_VIOLATIONS: usize = 16;
/// Milliseconds added to the computed wait before the last frame, against timer granularity.
const WAIT_MARGIN_MS: u64 = 50;

/// The case's parameters, with the defaults a plan may leave out.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Params {
    /// Frames sent over the advertised burst.
    pub extra: u64,
    /// The most frames the case will send; a larger burst is skipped.
    pub max_frames: u64,
    /// The other wallet's request must be answered within this.
    pub other_within_ms: u64,
    /// How long the flood's answers are awaited.
    pub answer_ms: u64,
    /// The longest the harness waits for the bucket to refill before its last frame.
    pub max_wait_ms: u64,
    /// Frames of tolerance on both bounds (a realm counting a frame more or less than the
    /// harness sees, rounding in the bucket).
    pub slack: u64,
}

impl Params {
    pub(super) fn of(spec: &CaseSpec) -> Self {
        let int = |key: &str, default: u64| {
            spec.params
                .get(key)
                .and_then(|v| v.as_integer())
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(default)
        };
        Self {
            extra: int("extra", 300),
            max_frames: int("max_frames", 2000),
            other_within_ms: int("other_within_ms", 2000),
            answer_ms: int("answer_ms", 10_000),
            max_wait_ms: int("max_wait_ms", 5000),
            slack: int("slack", 2),
        }
    }
}

/// A cheap frame with exactly one answer and no side effect: the fetch of an id nobody has.
fn unknown_fetch() -> Value {
    event("intent.fetch", None, json!({ "intent_id": wire::new_id() }))
}

fn is_rate_limited(e: &Value) -> bool {
    e["type"] == "error" && e["body"]["code"] == "RATE_LIMITED"
}

/// The frame id an answer is for: its `corr`, else its error's `ref`.
fn answered_id(e: &Value) -> Option<&str> {
    e["corr"].as_str().or_else(|| e["body"]["ref"].as_str())
}

/// Drives the flood; the verdict is [`check`]'s.
pub(super) async fn drive(ctx: &Ctx<'_>) {
    let p = Params::of(ctx.spec);
    let url = ctx.client_url();
    let case = Some(ctx.spec.id.as_str());
    let (Some(flooder), Some(bystander)) = (fresh(ctx), fresh(ctx)) else {
        return;
    };
    let (mut conn, ready) = match login(&url, &flooder, ctx.journal, case, ctx.within(5000)).await {
        Ok(c) => c,
        Err(e) => return ctx.abort(format!("could not open the flooding wallet's session: {e}")),
    };
    let limit = |key: &str| ready["limits"][key].as_u64().filter(|n| *n > 0);
    let (Some(rate), Some(burst)) = (limit("rate_per_s"), limit("burst")) else {
        conn.close().await;
        return ctx.abort(format!(
            "session.ready advertises no positive integer limits.rate_per_s and limits.burst: {}",
            ready["limits"]
        ));
    };
    ctx.mark("limits", &format!("{rate}:{burst}"));
    let total = burst.saturating_add(p.extra);
    if total > p.max_frames {
        conn.close().await;
        return ctx.skip(format!(
            "the advertised burst ({burst}) plus {} frames over it exceeds the plan's cap of {} frames",
            p.extra, p.max_frames
        ));
    }
    let (mut other, _) = match login(&url, &bystander, ctx.journal, case, ctx.within(5000)).await {
        Ok(c) => c,
        Err(e) => {
            conn.close().await;
            return ctx.abort(format!("could not open the other wallet's session: {e}"));
        }
    };
    ctx.mark("other", &other.id.to_string());
    // Built beforehand, so the send loop does nothing but send: the window stays short.
    let frames: Vec<(String, String)> = (0..total)
        .map(|_| {
            let e = unknown_fetch();
            (
                e["id"].as_str().unwrap_or_default().to_owned(),
                e.to_string(),
            )
        })
        .collect();
    ctx.mark("flood", &format!("{}:{total}", conn.id));
    let mut sent = 0usize;
    for (_, text) in &frames {
        match conn.send_text(text, ctx.within(p.answer_ms)).await {
            Ok(_) => sent += 1,
            Err(e) => {
                ctx.note(format!("the flood stopped after {sent} frames: {e}"));
                break;
            }
        }
    }
    ctx.mark("flood-sent", &sent.to_string());
    // The other wallet asks while the realm is still working through the flood.
    let probe = unknown_fetch();
    ctx.mark("probe", probe["id"].as_str().unwrap_or_default());
    let _ = other
        .request(&probe, ctx.within(p.other_within_ms.saturating_add(1000)))
        .await;
    let ids: HashMap<&str, ()> = frames[..sent]
        .iter()
        .map(|(id, _)| (id.as_str(), ()))
        .collect();
    let mut answered = std::collections::HashSet::new();
    let mut longest_retry = 0u64;
    let mut open = true;
    let until = ctx.within(p.answer_ms);
    while answered.len() < ids.len() {
        match conn.next_frame(until).await {
            Ok(r) => {
                let Some(e) = r.event else { continue };
                if is_rate_limited(&e) {
                    let ms = e["body"]["retry_after_ms"].as_u64().unwrap_or(0);
                    longest_retry = longest_retry.max(ms);
                }
                if let Some(id) = answered_id(&e).filter(|id| ids.contains_key(id)) {
                    answered.insert(id.to_owned());
                }
            }
            Err(WireError::Timeout(..)) => break,
            Err(_) => {
                open = false;
                break;
            }
        }
    }
    ctx.mark("flood-read", &answered.len().to_string());
    if open {
        // The bucket only refills: one token's time after the last answer there is a token,
        // and the longest retry_after_ms given is what the realm itself asked for.
        let wait = longest_retry
            .max(1000u64.div_ceil(rate))
            .saturating_add(WAIT_MARGIN_MS)
            .min(p.max_wait_ms);
        tokio::time::sleep_until(ctx.within(wait)).await;
        let after = unknown_fetch();
        ctx.mark("after", after["id"].as_str().unwrap_or_default());
        let _ = conn.request(&after, ctx.within(3000)).await;
    }
    // Whatever reached the other wallet meanwhile is evidence (SEC-5).
    let until = ctx.within(300);
    while other.next_frame(until).await.is_ok() {}
    ctx.mark("done", "");
    conn.close().await;
    other.close().await;
}

// ---------------------------------------------------------------- checker

/// A journaled frame: (seq, microseconds, parsed event).
type Seen = (u64, u64, Value);

fn frames(records: &[&Record], from: usize, to: usize, conn: u32, dir: Dir) -> Vec<Seen> {
    records[from..to.min(records.len())]
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Frame {
                conn: c,
                dir: d,
                data,
            } if *c == conn && *d == dir => Some((r.seq, r.t_us, serde_json::from_str(data).ok()?)),
            _ => None,
        })
        .collect()
}

fn mark_at<'a>(records: &[&'a Record], name: &str) -> Option<(usize, &'a str)> {
    marks(records, name).into_iter().next()
}

/// Decides `frame-flood` from its records.
pub(super) fn check(spec: &CaseSpec, records: &[&Record]) -> Judgement {
    judge(&Params::of(spec), records)
}

fn judge(p: &Params, records: &[&Record]) -> Judgement {
    let unknown = |why: &str| Judgement::new(Outcome::Unknown, why, "");
    let Some((rate, burst)) = mark_at(records, "limits").and_then(|(_, v)| {
        let (r, b) = v.split_once(':')?;
        Some((r.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
    }) else {
        return unknown("the advertised limits were never read");
    };
    let Some((fi, a)) = mark_at(records, "flood").and_then(|(i, v)| {
        let (c, _) = v.split_once(':')?;
        Some((i, c.parse::<u32>().ok()?))
    }) else {
        return unknown("the flood was never sent");
    };
    let Some((si, _)) = mark_at(records, "flood-sent") else {
        return unknown("the flood was never sent");
    };
    let pre = frames(records, 0, fi, a, Dir::Send).len() as u64;
    let flood = frames(records, fi, si, a, Dir::Send);
    let (Some(first), Some(last_sent)) = (flood.first(), flood.last()) else {
        return unknown("no flood frame was sent");
    };
    let position: HashMap<&str, usize> = flood
        .iter()
        .enumerate()
        .filter_map(|(k, (_, _, e))| Some((e["id"].as_str()?, k)))
        .collect();
    let mut answers: Vec<Vec<(u64, u64, &Value)>> = vec![Vec::new(); flood.len()];
    let received = frames(records, fi, records.len(), a, Dir::Recv);
    for (seq, t, e) in &received {
        if let Some(&k) = answered_id(e).and_then(|id| position.get(id)) {
            answers[k].push((*seq, *t, e));
        }
    }
    let closed = records[fi..].iter().find_map(|r| match &r.entry {
        Entry::Conn {
            conn,
            event,
            detail,
        } if *conn == a && event == "closed" => Some((r.seq, detail.as_str())),
        _ => None,
    });
    let mut problems: Vec<(u64, String)> = Vec::new();

    // Exactly one answer per frame (LIM-8 answers every refused frame once; SEC-5 at most one).
    for (k, got) in answers.iter().enumerate() {
        if got.len() > 1 {
            problems.push((
                got[1].0,
                format!("flood frame {} got {} answers", k + 1, got.len()),
            ));
        }
    }
    let unanswered: Vec<usize> = (0..flood.len())
        .filter(|k| answers[*k].is_empty())
        .collect();
    // In send order, each answered frame: refused for the rate or processed.
    let outcome: Vec<(usize, u64, bool)> = answers
        .iter()
        .enumerate()
        .filter_map(|(k, got)| got.first().map(|(s, _, e)| (k, *s, is_rate_limited(e))))
        .collect();
    let mut lim7 = false;
    if let Some(&k) = unanswered.first() {
        let trailing = outcome.iter().rev().take_while(|(_, _, l)| *l).count();
        let answered_prefix = outcome.iter().all(|(j, _, _)| *j < k);
        match closed {
            Some((_, detail))
                if detail.starts_with("1008")
                    && answered_prefix
                    && trailing >= LIM7_VIOLATIONS =>
            {
                lim7 = true;
            }
            Some((seq, detail)) => problems.push((
                seq,
                format!(
                    "the realm closed the flooded connection ({detail}) with {} of {} frames unanswered; LIM-6 forbids closing for refused frames, and LIM-7 allows a 1008 close only after 16 consecutive refusals",
                    unanswered.len(),
                    flood.len()
                ),
            )),
            None => problems.push((
                flood[k].0,
                format!(
                    "{} of {} flood frames got no answer within {} ms (LIM-8: every frame is processed or answered RATE_LIMITED); the first unanswered is frame {}",
                    unanswered.len(),
                    flood.len(),
                    p.answer_ms,
                    k + 1
                ),
            )),
        }
    }

    // Every refusal carries retry_after_ms (LIM-8, the error schema's integer >= 0).
    let limited: Vec<(u64, u64, &Value)> = answers
        .iter()
        .filter_map(|got| got.first().copied())
        .filter(|(_, _, e)| is_rate_limited(e))
        .collect();
    let without_retry: Vec<u64> = limited
        .iter()
        .filter(|(_, _, e)| e["body"]["retry_after_ms"].as_u64().is_none())
        .map(|(s, _, _)| *s)
        .collect();
    if let Some(&seq) = without_retry.first() {
        problems.push((
            seq,
            format!(
                "{} of {} RATE_LIMITED answers carry no integer retry_after_ms (LIM-8)",
                without_retry.len(),
                limited.len()
            ),
        ));
    }
    let longest_retry = limited
        .iter()
        .filter_map(|(_, _, e)| e["body"]["retry_after_ms"].as_u64())
        .max()
        .unwrap_or(0);

    // LIM-1: the bucket starts full, so the first `burst - pre` frames each found a token.
    let guaranteed = burst.saturating_sub(pre).saturating_sub(p.slack);
    if let Some((k, seq, _)) = outcome
        .iter()
        .find(|(k, _, l)| *l && (*k as u64) < guaranteed)
    {
        problems.push((
            *seq,
            format!(
                "flood frame {} was refused RATE_LIMITED, but the advertised burst of {burst} (less the {pre} frames sent before the flood) guarantees a token to each of the first {guaranteed} (LIM-1, LIM-8)",
                k + 1
            ),
        ));
    }

    // The upper bound: no realm window is longer than first send → last answer.
    let processed: Vec<u64> = outcome
        .iter()
        .filter(|(_, _, l)| !*l)
        .map(|(_, s, _)| *s)
        .collect();
    let last_answer_us = received
        .iter()
        .filter(|(_, _, e)| answered_id(e).is_some_and(|id| position.contains_key(id)))
        .map(|(_, t, _)| *t)
        .max()
        .unwrap_or(last_sent.1);
    let window_us = last_answer_us.saturating_sub(first.1);
    let refill = (u128::from(rate) * u128::from(window_us)).div_ceil(1_000_000);
    let allowance = u64::try_from(refill)
        .unwrap_or(u64::MAX)
        .saturating_add(burst)
        .saturating_add(p.slack);
    let window_ms = window_us as f64 / 1000.0;
    let over = processed.len() as u64 > allowance;
    if over {
        let beyond = usize::try_from(allowance).map_or(processed[0], |i| processed[i]);
        problems.push((
            beyond,
            format!(
                "{} of {} flood frames were processed{}; in the {window_ms:.0} ms from the first frame sent to the last answer a bucket of {burst} at {rate}/s gives at most {allowance} tokens (slack {} included): the advertised rate limit is not enforced (LIM-8)",
                processed.len(),
                flood.len(),
                if limited.is_empty() { ", none refused" } else { "" },
                p.slack
            ),
        ));
    }

    // After the realm's own retry_after_ms (at least one token's time), a frame is processed.
    let after = mark_at(records, "after");
    let after_answer = after.and_then(|(i, id)| {
        let send = frames(records, i, records.len(), a, Dir::Send)
            .into_iter()
            .find(|(_, _, e)| e["id"] == id)?;
        let reply = received
            .iter()
            .find(|(_, _, e)| answered_id(e) == Some(id))
            .cloned();
        Some((send, reply))
    });
    let mut after_note = String::new();
    let mut after_seq = None;
    match (&after_answer, lim7) {
        (_, true) => after_note = "; the realm closed the connection with 1008 after 16+ consecutive refusals, as LIM-7 allows".into(),
        (None, false) if unanswered.is_empty() && problems.is_empty() => {
            return unknown("the frame after the flood was never sent")
        }
        (None, false) => {}
        (Some(((sseq, _, _), None)), false) => problems.push((
            *sseq,
            "the frame sent after waiting out the rate limit got no answer (LIM-6, LIM-8)".into(),
        )),
        (Some(((_, sent_us, _), Some((rseq, _, e)))), false) => {
            let waited_ms = sent_us.saturating_sub(last_answer_us) / 1000;
            let needed = longest_retry.max(1000u64.div_ceil(rate));
            if is_rate_limited(e) {
                if waited_ms >= needed {
                    problems.push((
                        *rseq,
                        format!(
                            "a frame sent {waited_ms} ms after the flood's last answer (the longest retry_after_ms was {longest_retry}, one token takes {} ms) was still refused RATE_LIMITED (LIM-8)",
                            1000u64.div_ceil(rate)
                        ),
                    ));
                } else if problems.is_empty() {
                    return Judgement::new(
                        Outcome::Unknown,
                        format!("the harness waited only {waited_ms} ms (max_wait_ms) of the {needed} ms the realm asked for, and the next frame was refused"),
                        "RATE_LIMITED after too short a wait",
                    )
                    .with("the refusal", vec![*rseq]);
                }
            } else {
                after_seq = Some(*rseq);
                after_note = format!("; {waited_ms} ms after the flood one more frame was processed");
            }
        }
    }

    // The other wallet: answered in time, not rate-limited, and told nothing else (SEC-5).
    let Some((oi, b)) =
        mark_at(records, "other").and_then(|(i, v)| Some((i, v.parse::<u32>().ok()?)))
    else {
        return unknown("the other wallet's session was never opened");
    };
    let Some((_, probe)) = mark_at(records, "probe") else {
        return unknown("the other wallet's request was never sent");
    };
    let to_other = frames(records, oi, records.len(), b, Dir::Recv);
    let probe_sent = frames(records, oi, records.len(), b, Dir::Send)
        .into_iter()
        .find(|(_, _, e)| e["id"] == probe);
    let reply = to_other
        .iter()
        .find(|(_, _, e)| e["corr"].as_str() == Some(probe));
    let mut other_note = String::new();
    match (probe_sent, reply) {
        (None, _) => return unknown("the other wallet's request was never sent"),
        (Some((sseq, _, _)), None) => problems.push((
            sseq,
            "another wallet's request sent during the flood got no answer: the flood denied it service".into(),
        )),
        (Some((_, sent_us, _)), Some((rseq, t, e))) => {
            let ms = t.saturating_sub(sent_us) / 1000;
            if is_rate_limited(e) {
                problems.push((
                    *rseq,
                    "another wallet's first request was refused RATE_LIMITED: the bucket is not per connection (LIM-8)".into(),
                ));
            } else if ms > p.other_within_ms {
                problems.push((
                    *rseq,
                    format!(
                        "another wallet's request sent during the flood was answered after {ms} ms, more than {} ms: the flood delayed other connections",
                        p.other_within_ms
                    ),
                ));
            } else {
                other_note = format!("; another wallet's request was answered in {ms} ms");
            }
        }
    }
    for (seq, _, e) in to_other
        .iter()
        .filter(|(_, _, e)| e["corr"].as_str() != Some(probe))
    {
        problems.push((
            *seq,
            format!(
                "another wallet's connection received {} during the flood: a frame on one connection caused a frame on another wallet's (SEC-5)",
                e["type"].as_str().unwrap_or("?")
            ),
        ));
    }

    if !problems.is_empty() {
        let mut j = Judgement::new(
            Outcome::Broken,
            problems[0].1.clone(),
            problems
                .iter()
                .map(|(_, t)| t.as_str())
                .take(10)
                .collect::<Vec<_>>()
                .join("\n"),
        );
        for (seq, text) in problems.into_iter().take(20) {
            j = j.with(text, vec![seq]);
        }
        return j;
    }
    if limited.is_empty() {
        return Judgement::new(
            Outcome::Unknown,
            format!(
                "no flood frame was refused, but the {window_ms:.0} ms the flood took let a bucket of {burst} at {rate}/s refill for all {} frames: the harness was too slow to decide",
                flood.len()
            ),
            format!("{} processed, 0 refused", processed.len()),
        );
    }
    let mut j = Judgement::new(
        Outcome::Pass,
        format!(
            "of {} flood frames, {} were processed (at least {guaranteed}, at most {allowance} in {window_ms:.0} ms) and {} refused RATE_LIMITED with retry_after_ms{after_note}{other_note}, and it received nothing else",
            flood.len(),
            processed.len(),
            limited.len()
        ),
        format!(
            "{} processed, {} RATE_LIMITED (longest retry_after_ms {longest_retry})",
            processed.len(),
            limited.len()
        ),
    )
    .with("the first RATE_LIMITED answer", vec![limited[0].0]);
    if let Some(seq) = after_seq {
        j = j.with("the frame processed after the wait", vec![seq]);
    }
    if let Some((seq, _, _)) = reply {
        j = j.with("the other wallet's answer", vec![*seq]);
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 7;
    const B: u32 = 8;

    /// Builds a journal: `push` appends a record at a time in µs.
    struct J(Vec<Record>);

    impl J {
        fn push(&mut self, t_us: u64, entry: Entry) {
            let seq = self.0.len() as u64 + 1;
            self.0.push(Record {
                seq,
                t_us,
                case: None,
                entry,
            });
        }
        fn mark(&mut self, t: u64, text: &str) {
            self.push(
                t,
                Entry::Note {
                    text: format!("mark:{text}"),
                },
            );
        }
        fn frame(&mut self, t: u64, conn: u32, dir: Dir, e: &Value) {
            self.push(
                t,
                Entry::Frame {
                    conn,
                    dir,
                    data: e.to_string(),
                },
            );
        }
    }

    fn fetch(id: &str) -> Value {
        json!({"proto": "MTOR/1", "type": "intent.fetch", "id": id, "corr": null, "body": {"intent_id": "x"}})
    }

    fn answer(id: &str, limited: bool, retry: Option<u64>) -> Value {
        let mut body = if limited {
            json!({"code": "RATE_LIMITED", "message": "slow down", "ref": id})
        } else {
            json!({"code": "NOT_FOUND", "message": "no such intent", "ref": id})
        };
        if let Some(ms) = retry {
            body["retry_after_ms"] = json!(ms);
        }
        json!({"proto": "MTOR/1", "type": "error", "id": format!("r{id}"), "corr": id, "body": body})
    }

    /// A flood of `n` frames over `window_us`, the first `processed` of them processed.
    fn journal(n: usize, processed: usize, window_us: u64, retry: Option<u64>) -> J {
        let mut j = J(Vec::new());
        j.frame(0, A, Dir::Send, &fetch("hello"));
        j.frame(0, A, Dir::Send, &fetch("proof"));
        j.mark(0, "limits:100:20");
        j.mark(0, &format!("other:{B}"));
        j.mark(0, &format!("flood:{A}:{n}"));
        for k in 0..n {
            j.frame(1000, A, Dir::Send, &fetch(&format!("f{k}")));
        }
        j.mark(1000, &format!("flood-sent:{n}"));
        j.mark(1000, "probe:p");
        j.frame(1000, B, Dir::Send, &fetch("p"));
        j.frame(2000, B, Dir::Recv, &answer("p", false, None));
        for k in 0..n {
            let id = format!("f{k}");
            let limited = k >= processed;
            j.frame(
                1000 + window_us,
                A,
                Dir::Recv,
                &answer(&id, limited, if limited { retry } else { None }),
            );
        }
        j.mark(1000 + window_us, &format!("flood-read:{n}"));
        j.mark(1000 + window_us + 60_000, "after:z");
        j.frame(1000 + window_us + 60_000, A, Dir::Send, &fetch("z"));
        j.frame(
            1000 + window_us + 61_000,
            A,
            Dir::Recv,
            &answer("z", false, None),
        );
        j.mark(1000 + window_us + 62_000, "done:");
        j
    }

    fn outcome(j: &J) -> Judgement {
        let records: Vec<&Record> = j.0.iter().collect();
        let p = Params {
            extra: 30,
            max_frames: 2000,
            other_within_ms: 2000,
            answer_ms: 10_000,
            max_wait_ms: 5000,
            slack: 2,
        };
        judge(&p, &records)
    }

    #[test]
    fn a_bucket_of_the_advertised_size_passes() {
        let j = outcome(&journal(50, 20, 10_000, Some(10)));
        assert_eq!(j.outcome, Outcome::Pass, "{}", j.reason);
    }

    #[test]
    fn no_limit_fails_when_the_window_is_short_and_is_unknown_when_long() {
        let j = outcome(&journal(50, 50, 10_000, None));
        assert_eq!(j.outcome, Outcome::Broken, "{}", j.reason);
        assert!(j.reason.contains("not enforced"), "{}", j.reason);
        // 50 frames over 1 s: a 20-frame bucket at 100/s could have served them all.
        let j = outcome(&journal(50, 50, 1_000_000, None));
        assert_eq!(j.outcome, Outcome::Unknown, "{}", j.reason);
    }

    #[test]
    fn refusals_without_retry_after_fail() {
        let j = outcome(&journal(50, 20, 10_000, None));
        assert_eq!(j.outcome, Outcome::Broken, "{}", j.reason);
        assert!(j.reason.contains("retry_after_ms"), "{}", j.reason);
    }

    #[test]
    fn a_refusal_inside_the_burst_fails() {
        let j = outcome(&journal(50, 5, 10_000, Some(10)));
        assert_eq!(j.outcome, Outcome::Broken, "{}", j.reason);
        assert!(j.reason.contains("LIM-1"), "{}", j.reason);
    }

    #[test]
    fn a_frame_to_the_other_wallet_fails() {
        let mut j = journal(50, 20, 10_000, Some(10));
        let done = j.0.pop().expect("done");
        j.frame(done.t_us, B, Dir::Recv, &answer("f30", true, Some(10)));
        j.0.push(Record {
            seq: j.0.len() as u64 + 1,
            ..done
        });
        let v = outcome(&j);
        assert_eq!(v.outcome, Outcome::Broken, "{}", v.reason);
        assert!(v.reason.contains("SEC-5"), "{}", v.reason);
    }

    #[test]
    fn an_unanswered_frame_fails_unless_lim7_closed_the_connection() {
        let mut j = journal(50, 20, 10_000, Some(10));
        // Drop the last flood answer.
        let last = j
            .0
            .iter()
            .rposition(|r| matches!(&r.entry, Entry::Frame { conn: A, dir: Dir::Recv, data } if data.contains("\"f49\"")))
            .expect("answer");
        j.0.remove(last);
        let v = outcome(&j);
        assert_eq!(v.outcome, Outcome::Broken, "{}", v.reason);
        assert!(v.reason.contains("no answer"), "{}", v.reason);
    }

    #[test]
    fn a_1008_close_after_16_refusals_is_allowed_but_not_before() {
        let closing = |refused_before_close: usize| {
            let mut j = journal(50, 20, 10_000, Some(10));
            let cut = 20 + refused_before_close;
            j.0.retain(|r| match &r.entry {
                Entry::Frame {
                    conn: A,
                    dir: Dir::Recv,
                    data,
                } => !(cut..50).any(|k| data.contains(&format!("\"f{k}\""))),
                Entry::Frame {
                    conn: A,
                    dir: Dir::Send,
                    data,
                } => !data.contains("\"z\""),
                Entry::Note { text } => !text.starts_with("mark:after"),
                _ => true,
            });
            let done = j.0.pop().expect("done");
            j.push(
                done.t_us,
                Entry::Conn {
                    conn: A,
                    event: "closed".into(),
                    detail: "1008 policy".into(),
                },
            );
            j.mark(done.t_us, "done:");
            outcome(&j)
        };
        let v = closing(16);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(v.reason.contains("LIM-7"), "{}", v.reason);
        let v = closing(3);
        assert_eq!(v.outcome, Outcome::Broken, "{}", v.reason);
        assert!(v.reason.contains("LIM-6"), "{}", v.reason);
    }

    #[test]
    fn still_refused_after_the_wait_fails() {
        let mut j = journal(50, 20, 10_000, Some(10));
        for r in j.0.iter_mut() {
            if let Entry::Frame {
                conn: A,
                dir: Dir::Recv,
                data,
            } = &mut r.entry
            {
                if data.contains("\"rz\"") {
                    *data = answer("z", true, Some(10)).to_string();
                }
            }
        }
        let v = outcome(&j);
        assert_eq!(v.outcome, Outcome::Broken, "{}", v.reason);
        assert!(v.reason.contains("still refused"), "{}", v.reason);
    }
}

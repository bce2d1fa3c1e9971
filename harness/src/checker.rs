//! Checkers: pure functions from journal records to a judgement.
//!
//! A case's driver only acts and records; its verdict is decided here, from the journal alone.
//! That is what lets `mtor-cert verify` re-derive every verdict of a bundle offline, and a board
//! trust that the verdict follows from the recorded evidence.

use serde_json::Value;

use crate::contract::Contract;
use crate::generate::{self, AttemptJudgement, AttemptVerdict, Item};
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::verdict::{Evidence, Verdict};

/// Driver markers in the journal: `Note { text: "mark:<name>:<value>" }`.
pub const MARK: &str = "mark:";
/// Driver aborts in the journal: `Note { text: "abort:<reason>" }` (the case could not be run).
pub const ABORT: &str = "abort:";
/// Skips decided by the driver: `Note { text: "skip:<reason>" }`.
pub const SKIP: &str = "skip:";

/// What a checker concluded, before the case's level turns "broken" into FAIL or WARN.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The expectation held.
    Pass,
    /// The expectation was broken.
    Broken,
    /// The evidence does not decide it.
    Unknown,
    /// The case does not apply to this target.
    Skip,
}

/// A checker's judgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Pass, broken, unknown or skip.
    pub outcome: Outcome,
    /// Why, in a sentence.
    pub reason: String,
    /// What was observed.
    pub observed: String,
    /// Evidence pointing into the journal.
    pub evidence: Vec<Evidence>,
    /// Load data for the report's charts (`dispatch-load` cases).
    pub load: Option<Box<crate::load::LoadResult>>,
}

impl Judgement {
    pub(crate) fn new(
        outcome: Outcome,
        reason: impl Into<String>,
        observed: impl Into<String>,
    ) -> Self {
        Self {
            outcome,
            reason: reason.into(),
            observed: observed.into(),
            evidence: Vec::new(),
            load: None,
        }
    }

    pub(crate) fn with(mut self, summary: impl Into<String>, seqs: Vec<u64>) -> Self {
        self.evidence.push(Evidence {
            kind: "journal".into(),
            summary: summary.into(),
            journal: seqs,
        });
        self
    }

    /// The verdict at the case's level.
    pub fn verdict(&self, spec: &CaseSpec) -> Verdict {
        match self.outcome {
            Outcome::Pass => Verdict::Pass,
            Outcome::Broken => Verdict::broken(spec.level),
            Outcome::Unknown => Verdict::Unknown,
            Outcome::Skip => Verdict::Skip,
        }
    }
}

/// The records of the last attempt of case `id` (a resumed run may hold an earlier, interrupted one).
pub fn case_records<'a>(all: &'a [Record], id: &str) -> Vec<&'a Record> {
    let mine: Vec<&Record> = all
        .iter()
        .filter(|r| r.case.as_deref() == Some(id))
        .collect();
    let last_start = mine
        .iter()
        .rposition(|r| matches!(r.entry, Entry::CaseStart { .. }))
        .unwrap_or(0);
    mine[last_start..].to_vec()
}

pub(crate) fn note<'a>(r: &'a Record, prefix: &str) -> Option<&'a str> {
    match &r.entry {
        Entry::Note { text } => text.strip_prefix(prefix),
        _ => None,
    }
}

/// The value of marker `name` and the record's index, if the driver set it.
fn mark<'a>(records: &[&'a Record], name: &str) -> Option<(usize, &'a str)> {
    records.iter().enumerate().find_map(|(i, r)| {
        let rest = note(r, MARK)?;
        let value = rest.strip_prefix(name)?;
        match value.strip_prefix(':') {
            Some(v) => Some((i, v)),
            None if value.is_empty() => Some((i, "")),
            None => None,
        }
    })
}

fn aborted(records: &[&Record]) -> Option<Judgement> {
    records.iter().find_map(|r| {
        if let Some(reason) = note(r, SKIP) {
            return Some(Judgement::new(Outcome::Skip, reason.trim(), "not run"));
        }
        note(r, ABORT).map(|reason| {
            Judgement::new(
                Outcome::Unknown,
                format!("the case could not be carried out: {}", reason.trim()),
                "no decisive observation",
            )
            .with("where it stopped", vec![r.seq])
        })
    })
}

/// A received frame: (record, connection, parsed event if JSON).
fn received<'a>(
    records: &'a [&'a Record],
) -> impl Iterator<Item = (&'a Record, u32, Option<Value>)> + 'a {
    records.iter().copied().filter_map(|r| match &r.entry {
        Entry::Frame {
            conn,
            dir: Dir::Recv,
            data,
        } => Some((r, *conn, serde_json::from_str(data).ok())),
        _ => None,
    })
}

fn closed_after(records: &[&Record], from: usize, conn: u32) -> Option<(u64, String)> {
    records[from..].iter().find_map(|r| match &r.entry {
        Entry::Conn {
            conn: c,
            event,
            detail,
        } if *c == conn && event == "closed" => Some((r.seq, detail.clone())),
        _ => None,
    })
}

/// Decides a case from the journal.
pub fn check(spec: &CaseSpec, all: &[Record], contract: &Contract) -> Judgement {
    let records = case_records(all, &spec.id);
    if let Some(j) = aborted(&records) {
        return j;
    }
    match spec.kind.as_str() {
        "malformed-frame" => check_malformed(spec, &records),
        "session-forgery" => check_forgery(&records),
        "all-events-valid" => check_all_events(spec, all, contract),
        "http-endpoint" => check_http(spec, &records, contract),
        "health-reflects-worker" => check_health_worker(spec, &records),
        "generated-events" => check_generated(&records, contract),
        crate::scripted::KIND => crate::scripted::check(spec, &records),
        crate::recovery::KIND | crate::recovery::KIND_PROCESS => {
            crate::recovery::check(spec, &records)
        }
        crate::load::KIND => crate::load::check(spec, &records),
        crate::worker_faults::KIND => crate::worker_faults::check(spec, &records),
        crate::tokens::KIND => crate::tokens::check(spec, all, &records),
        crate::audit::KIND => crate::audit::check(spec, all, &records, contract),
        crate::security::KIND => crate::security::check(spec, &records),
        crate::metrics::KIND => crate::metrics::check(spec, &records),
        crate::stateless::KIND => crate::stateless::check(spec, &records),
        crate::injection::KIND => crate::injection::check(spec, &records),
        other => Judgement::new(
            Outcome::Unknown,
            format!("no checker for case kind `{other}` in this harness version"),
            "",
        ),
    }
}

fn str_param<'a>(spec: &'a CaseSpec, key: &str) -> Option<&'a str> {
    spec.params.get(key).and_then(|v| v.as_str())
}

/// A bad frame must get the named error, and the same connection must keep working.
fn check_malformed(spec: &CaseSpec, records: &[&Record]) -> Judgement {
    let want = str_param(spec, "expect_code").unwrap_or("INVALID_EVENT");
    let Some((at, sent)) = mark(records, "malformed") else {
        return Judgement::new(Outcome::Unknown, "the bad frame was never sent", "");
    };
    let conn: u32 = sent
        .split(':')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let bad_id = sent.split(':').nth(1).filter(|s| !s.is_empty());
    let after: Vec<&Record> = records[at..].to_vec();
    let errors: Vec<(u64, Value)> = received(&after)
        .filter(|(_, c, _)| *c == conn)
        .filter_map(|(r, _, e)| {
            let e = e?;
            let kind = e.get("type")?.as_str()?;
            matches!(kind, "error" | "intent.rejected").then_some((r.seq, e))
        })
        .collect();
    let codes: Vec<String> = errors
        .iter()
        .filter_map(|(_, e)| e["body"]["code"].as_str().map(str::to_owned))
        .collect();
    let hit = errors
        .iter()
        .find(|(_, e)| e["body"]["code"].as_str() == Some(want));
    let follow = mark(&after, "follow-up").map(|(_, id)| id.to_owned());
    let answered = follow.as_ref().and_then(|id| {
        received(&after)
            .find(|(_, c, e)| {
                *c == conn && e.as_ref().and_then(|e| e["corr"].as_str()) == Some(id.as_str())
            })
            .map(|(r, _, _)| r.seq)
    });
    let closed = closed_after(&after, 0, conn);
    let Some((seq, event)) = hit else {
        let observed = if codes.is_empty() {
            match &closed {
                Some((_, d)) => format!("no error event; the connection was closed ({d})"),
                None => "no error event at all".to_owned(),
            }
        } else {
            format!("error code(s) {codes:?}")
        };
        return Judgement::new(
            Outcome::Broken,
            format!("the realm did not answer the bad frame with `{want}`"),
            observed,
        )
        .with(
            "frames after the bad one",
            after.iter().map(|r| r.seq).take(20).collect(),
        );
    };
    if let Some(id) = bad_id {
        let got = event["body"]["ref"].as_str();
        if event["type"] == "error" && got != Some(id) {
            return Judgement::new(
                Outcome::Broken,
                format!("the `{want}` error does not name the offending frame in `ref`"),
                format!("ref = {}, expected {id:?}", event["body"]["ref"]),
            )
            .with("the error event", vec![*seq]);
        }
    }
    match (answered, closed) {
        (Some(reply), _) => Judgement::new(
            Outcome::Pass,
            format!("`{want}` was answered and the connection kept working"),
            format!("error `{want}`, then the follow-up request was answered"),
        )
        .with("error event", vec![*seq])
        .with("follow-up reply", vec![reply]),
        (None, Some((cseq, detail))) => Judgement::new(
            Outcome::Broken,
            "the realm dropped the connection's other work after one bad frame",
            format!("`{want}` was sent, then the connection closed ({detail})"),
        )
        .with("error event", vec![*seq])
        .with("close", vec![cseq]),
        (None, None) => Judgement::new(
            Outcome::Broken,
            "the connection stopped answering after one bad frame",
            format!("`{want}` was sent, but a valid follow-up request got no reply"),
        )
        .with("error event", vec![*seq]),
    }
}

/// A session proof with a forged signature must not open a session.
fn check_forgery(records: &[&Record]) -> Judgement {
    let Some((at, _)) = mark(records, "forged-proof") else {
        return Judgement::new(Outcome::Unknown, "the forged proof was never sent", "");
    };
    let after = &records[at..];
    let mut rejected = None;
    for (r, _, e) in received(after) {
        let Some(e) = e else { continue };
        match e["type"].as_str() {
            Some("session.ready") => {
                return Judgement::new(
                    Outcome::Broken,
                    "a session opened with a forged signature: anyone can act as any wallet",
                    "session.ready after an invalid session.proof",
                )
                .with("session.ready", vec![r.seq]);
            }
            Some("error") if rejected.is_none() => {
                rejected = Some((r.seq, e["body"]["code"].as_str().unwrap_or("?").to_owned()));
            }
            _ => {}
        }
    }
    match rejected {
        Some((seq, code)) if code == "BAD_SIGNATURE" => Judgement::new(
            Outcome::Pass,
            "the forged proof was refused with BAD_SIGNATURE",
            "error BAD_SIGNATURE, no session",
        )
        .with("refusal", vec![seq]),
        Some((seq, code)) => Judgement::new(
            Outcome::Broken,
            "the forged proof was refused, but not with BAD_SIGNATURE",
            format!("error {code}"),
        )
        .with("refusal", vec![seq]),
        None if closed_after(after, 0, 0).is_some()
            || after
                .iter()
                .any(|r| matches!(&r.entry, Entry::Conn { event, .. } if event == "closed")) =>
        {
            Judgement::new(
                Outcome::Broken,
                "the forged proof got no BAD_SIGNATURE error (the connection was closed instead)",
                "connection closed without an error event",
            )
        }
        None => Judgement::new(
            Outcome::Broken,
            "the forged proof got no answer",
            "no session.ready and no error",
        ),
    }
}

/// Every event the realm sent during the run (before this case) validates against the contract.
fn check_all_events(spec: &CaseSpec, all: &[Record], contract: &Contract) -> Judgement {
    let mut checked = 0usize;
    let mut bad: Vec<(u64, String)> = Vec::new();
    for r in all {
        if r.case.as_deref() == Some(spec.id.as_str()) {
            break;
        }
        let Entry::Frame {
            dir: Dir::Recv,
            data,
            ..
        } = &r.entry
        else {
            continue;
        };
        checked += 1;
        match serde_json::from_str::<Value>(data) {
            Err(e) => bad.push((r.seq, format!("not JSON: {e}"))),
            Ok(event) => {
                if let Some(v) = contract.validate_event(&event).first() {
                    bad.push((
                        r.seq,
                        format!(
                            "{} at \"{}\" [{}]: {}",
                            event["type"].as_str().unwrap_or("?"),
                            v.pointer,
                            v.keyword,
                            v.message
                        ),
                    ));
                }
            }
        }
    }
    if checked == 0 {
        return Judgement::new(
            Outcome::Unknown,
            "the realm sent no events during the run, so there was nothing to validate",
            "0 events",
        );
    }
    if bad.is_empty() {
        return Judgement::new(
            Outcome::Pass,
            format!("all {checked} events the realm sent validate against the MTOR/1 schemas"),
            format!("{checked} events, 0 invalid"),
        );
    }
    let mut j = Judgement::new(
        Outcome::Broken,
        format!(
            "{} of {checked} events the realm sent break the schemas",
            bad.len()
        ),
        bad.iter()
            .take(5)
            .map(|(s, m)| format!("#{s}: {m}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    for (seq, msg) in bad.into_iter().take(20) {
        j = j.with(msg, vec![seq]);
    }
    j
}

/// An HTTP endpoint answers with the expected status and a body that validates.
fn check_http(spec: &CaseSpec, records: &[&Record], contract: &Contract) -> Judgement {
    let path = str_param(spec, "path").unwrap_or("/");
    let Some((seq, status, body)) = records.iter().find_map(|r| match &r.entry {
        Entry::Http {
            path: p,
            status,
            body,
            ..
        } if p == path => Some((r.seq, *status, body.clone())),
        _ => None,
    }) else {
        return Judgement::new(Outcome::Unknown, format!("GET {path} was never sent"), "");
    };
    if status == 0 {
        return Judgement::new(
            Outcome::Unknown,
            format!("GET {path} got no response: {body}"),
            "no response",
        )
        .with("request", vec![seq]);
    }
    if status != 200 {
        return Judgement::new(
            Outcome::Broken,
            format!("GET {path} answered {status}, not 200"),
            format!("status {status}"),
        )
        .with("response", vec![seq]);
    }
    if let Some(schema) = str_param(spec, "schema") {
        let value: Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(e) => {
                return Judgement::new(
                    Outcome::Broken,
                    format!("GET {path} did not return JSON"),
                    e.to_string(),
                )
                .with("response", vec![seq])
            }
        };
        match contract.validate_with(schema, &value) {
            Err(e) => return Judgement::new(Outcome::Unknown, format!("plan error: {e}"), ""),
            Ok(v) if !v.is_empty() => {
                return Judgement::new(
                    Outcome::Broken,
                    format!("GET {path} returned a body that breaks {schema}"),
                    v.iter()
                        .take(5)
                        .map(|v| format!("at \"{}\" [{}]: {}", v.pointer, v.keyword, v.message))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
                .with("response", vec![seq]);
            }
            Ok(_) => {}
        }
    }
    let required: Vec<&str> = spec
        .params
        .get("require_lines")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|name| {
            !body.lines().any(|l| {
                !l.starts_with('#')
                    && l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
            })
        })
        .collect();
    if !missing.is_empty() {
        return Judgement::new(
            Outcome::Broken,
            format!("GET {path} lacks required series"),
            format!("missing: {}", missing.join(", ")),
        )
        .with("response", vec![seq]);
    }
    Judgement::new(
        Outcome::Pass,
        format!("GET {path} answered 200 with a valid body"),
        format!("status 200, {} bytes", body.len()),
    )
    .with("response", vec![seq])
}

/// Health lists an enrolled worker as healthy within the window, and stops listing it as healthy
/// within the window after it disconnects.
fn check_health_worker(spec: &CaseSpec, records: &[&Record]) -> Judgement {
    let window_us = spec
        .params
        .get("window_ms")
        .and_then(|v| v.as_integer())
        .unwrap_or(2000) as u64
        * 1000;
    let Some((at_enrol, worker)) = mark(records, "enrolled") else {
        return Judgement::new(Outcome::Unknown, "the harness worker never enrolled", "");
    };
    let enrolled_t = records[at_enrol].t_us;
    let gone = mark(records, "disconnected");
    let state_of = |body: &str| -> Option<String> {
        let v: Value = serde_json::from_str(body).ok()?;
        v["workers"].as_array()?.iter().find_map(|w| {
            (w["worker_id"].as_str() == Some(worker))
                .then(|| w["state"].as_str().unwrap_or("?").to_owned())
        })
    };
    let polls: Vec<(usize, u64, u64, Option<String>)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.entry {
            Entry::Http {
                path,
                status: 200,
                body,
                ..
            } if path == "/v1/health" => Some((i, r.seq, r.t_us, state_of(body))),
            _ => None,
        })
        .collect();
    let seen_healthy = polls
        .iter()
        .find(|(i, _, _, s)| *i > at_enrol && s.as_deref() == Some("healthy"));
    let Some((_, seen_seq, seen_t, _)) = seen_healthy else {
        return Judgement::new(
            Outcome::Broken,
            "health never listed the enrolled worker as healthy",
            format!(
                "states seen: {:?}",
                polls.iter().map(|p| p.3.clone()).collect::<Vec<_>>()
            ),
        );
    };
    let lag = seen_t.saturating_sub(enrolled_t);
    if lag > window_us {
        return Judgement::new(
            Outcome::Broken,
            format!("health listed the new worker only after {} ms", lag / 1000),
            format!("window is {} ms", window_us / 1000),
        )
        .with("first health listing it", vec![*seen_seq]);
    }
    let Some((at_gone, _)) = gone else {
        return Judgement::new(
            Outcome::Unknown,
            "the harness worker never disconnected",
            "",
        );
    };
    let gone_t = records[at_gone].t_us;
    let cleared = polls
        .iter()
        .find(|(i, _, _, s)| *i > at_gone && s.as_deref() != Some("healthy"));
    match cleared {
        Some((_, seq, t, state)) if t.saturating_sub(gone_t) <= window_us => Judgement::new(
            Outcome::Pass,
            format!(
                "health showed the worker within {} ms and its loss within {} ms",
                lag / 1000,
                t.saturating_sub(gone_t) / 1000
            ),
            format!(
                "after disconnect: {}",
                state.clone().unwrap_or_else(|| "not listed".into())
            ),
        )
        .with("listed healthy", vec![*seen_seq])
        .with("loss reflected", vec![*seq]),
        Some((_, seq, t, _)) => Judgement::new(
            Outcome::Broken,
            format!(
                "health reflected the worker's loss only after {} ms",
                t.saturating_sub(gone_t) / 1000
            ),
            format!("window is {} ms", window_us / 1000),
        )
        .with("loss reflected", vec![*seq]),
        None => Judgement::new(
            Outcome::Broken,
            "health still listed the disconnected worker as healthy",
            "state stayed `healthy`",
        ),
    }
}

/// One generated attempt as the journal holds it.
struct GenAttempt {
    n: usize,
    mutation: String,
    sent: Option<(u64, String)>,
    judgement: AttemptJudgement,
}

/// The generated attempts of a case: each runs from its `gen-try` marker to the next `gen-try`
/// or `gen-done` marker; its frames are those of the connection the marker names.
fn generated_attempts(records: &[&Record], contract: &Contract) -> Vec<GenAttempt> {
    let boundary = |r: &Record| {
        note(r, MARK).is_some_and(|m| m.starts_with("gen-try:") || m.starts_with("gen-done:"))
    };
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let Some(value) = note(r, MARK).and_then(|m| m.strip_prefix("gen-try:")) else {
            continue;
        };
        let mut parts = value.splitn(4, ':');
        let n = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let conn: u32 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let probe_id = parts.next().unwrap_or_default();
        let mutation = parts.next().unwrap_or_default().to_owned();
        let end = records[i + 1..]
            .iter()
            .position(|r| boundary(r))
            .map_or(records.len(), |p| i + 1 + p);
        let mut sent = None;
        let mut items = Vec::new();
        for r in &records[i + 1..end] {
            match &r.entry {
                Entry::Frame {
                    conn: c,
                    dir: Dir::Send,
                    data,
                } if *c == conn && sent.is_none() => sent = Some((r.seq, data.clone())),
                Entry::Frame {
                    conn: c,
                    dir: Dir::Recv,
                    data,
                } if *c == conn => items.push(Item::Frame {
                    seq: r.seq,
                    event: serde_json::from_str(data).ok(),
                }),
                Entry::Conn {
                    conn: c,
                    event,
                    detail,
                } if *c == conn && event == "closed" => items.push(Item::Closed {
                    seq: Some(r.seq),
                    detail: detail.clone(),
                }),
                _ => {}
            }
        }
        let judgement = match sent
            .as_ref()
            .and_then(|(_, text)| serde_json::from_str::<Value>(text).ok())
        {
            Some(event) => generate::judge_attempt(contract, &event, probe_id, &items),
            None => AttemptJudgement {
                verdict: AttemptVerdict::Inconclusive,
                why: "the event was never sent".into(),
                expected: String::new(),
                answer: String::new(),
                seqs: Vec::new(),
            },
        };
        out.push(GenAttempt {
            n,
            mutation,
            sent,
            judgement,
        });
    }
    out
}

/// Generated events: every invalid one gets the code the spec requires, every valid one a
/// proper reply, every event the realm sends is valid, and the connection keeps working.
fn check_generated(records: &[&Record], contract: &Contract) -> Judgement {
    let attempts = generated_attempts(records, contract);
    let seed = mark(records, "gen-seed")
        .and_then(|(_, v)| v.split(':').next())
        .unwrap_or("?")
        .to_owned();
    let done = mark(records, "gen-done").map(|(_, v)| v.to_owned());
    if attempts.is_empty() {
        return Judgement::new(
            Outcome::Unknown,
            "no generated event was sent",
            done.map_or_else(|| "nothing sent".to_owned(), |d| format!("generator: {d}")),
        );
    }
    let failing: Vec<&GenAttempt> = attempts
        .iter()
        .filter(|a| a.judgement.verdict == AttemptVerdict::Fail)
        .collect();
    let conclusive: Vec<&GenAttempt> = attempts
        .iter()
        .filter(|a| a.judgement.verdict != AttemptVerdict::Inconclusive)
        .collect();
    let invalid = conclusive.iter().filter(|a| !a.mutation.is_empty()).count();
    let seqs = |a: &GenAttempt| -> Vec<u64> {
        a.sent
            .iter()
            .map(|(s, _)| *s)
            .chain(a.judgement.seqs.iter().copied())
            .collect()
    };
    if let Some(first) = failing.first() {
        let named: Option<usize> = mark(records, "gen-minimal").and_then(|(_, v)| v.parse().ok());
        let size = |a: &GenAttempt| a.sent.as_ref().map_or(usize::MAX, |(_, t)| t.len());
        // The driver names proptest's minimal case; if the journal does not back that up, the
        // smallest failing event is the witness.
        let witness = named
            .and_then(|n| failing.iter().find(|a| a.n == n))
            .or_else(|| failing.iter().min_by_key(|a| (size(a), usize::MAX - a.n)))
            .copied()
            .unwrap_or(first);
        let kind = if witness.mutation.is_empty() {
            "valid".to_owned()
        } else {
            format!("invalid ({})", witness.mutation)
        };
        let replay = mark(records, "gen-replay")
            .map(|(_, f)| format!("\nreplay file: {f}"))
            .unwrap_or_default();
        let observed = format!(
            "minimal failing event (attempt {} of {}, run seed {seed}, first failure at attempt {}):\n{}\nmutation: {}\nexpected: {}\nanswered: {}{replay}",
            witness.n,
            attempts.len(),
            first.n,
            witness.sent.as_ref().map_or("", |(_, t)| t.as_str()),
            if witness.mutation.is_empty() { "none (a valid event)" } else { &witness.mutation },
            witness.judgement.expected,
            witness.judgement.answer,
        );
        let mut j = Judgement::new(
            Outcome::Broken,
            format!(
                "a generated event got a wrong answer at attempt {} ({} attempts in all, shrinking included); minimal {kind} event: {}",
                first.n,
                attempts.len(),
                witness.judgement.why
            ),
            observed,
        )
        .with(
            "minimal failing event and the realm's answer",
            seqs(witness),
        );
        if first.n != witness.n {
            j = j.with("first failing event, before shrinking", seqs(first));
        }
        return j;
    }
    match done.as_deref() {
        None => Judgement::new(
            Outcome::Unknown,
            "the generator did not finish",
            format!("{} attempts, none failing", attempts.len()),
        ),
        Some(d) if d.contains(":aborted:") => Judgement::new(
            Outcome::Unknown,
            format!(
                "the generator gave up: {}",
                d.split_once(":aborted:").map_or(d, |(_, r)| r)
            ),
            format!(
                "{} attempts, {} conclusive, none failing",
                attempts.len(),
                conclusive.len()
            ),
        ),
        Some(_) if conclusive.is_empty() => Judgement::new(
            Outcome::Unknown,
            "no generated event got a conclusive answer (all were rate-limited)",
            format!("{} attempts", attempts.len()),
        ),
        Some(d) if d.ends_with(":failed") => Judgement::new(
            Outcome::Unknown,
            "the driver reported a failure that the journal does not show",
            format!("{} attempts, none failing", attempts.len()),
        ),
        Some(d) => {
            let budget = if d.ends_with(":budget") {
                " (the time budget ended generation early)"
            } else {
                ""
            };
            Judgement::new(
                Outcome::Pass,
                format!(
                    "{} generated events ({} valid, {invalid} invalid) all got the answers the spec requires{budget}",
                    conclusive.len(),
                    conclusive.len() - invalid
                ),
                format!(
                    "{} attempts, run seed {seed}, 0 failing, {} inconclusive",
                    attempts.len(),
                    attempts.len() - conclusive.len()
                ),
            )
            .with(
                "first and last generated events",
                [attempts.first(), attempts.last()]
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.sent.as_ref().map(|(s, _)| *s))
                    .collect(),
            )
        }
    }
}

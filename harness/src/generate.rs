//! Property-based generation of client events from the MTOR/1 schemas (`generated-events`).
//!
//! With proptest, seeded by the run's `--seed` through a ChaCha [`TestRng`], the harness builds
//! events a client may send on the client channel of a ready wallet session (`intent.submit`,
//! `intent.cancel`, `intent.fetch`): *valid* ones, built per message type as the schemas describe
//! them, and *invalid* ones, each a valid event with exactly one mutation (a member dropped, a
//! value of the wrong JSON type, an undeclared member, a string too long or with a forbidden
//! character, a number out of range, another protocol, an unknown or wrong-channel type).
//!
//! The embedded contract is the judge of every label: a "valid" event that does not validate, or
//! an "invalid" one that does, is discarded before it is sent, so a generator slip can never turn
//! into a false alarm. What the realm must answer is not taken from the mutation either:
//! [`expectation`] derives it from the event itself by the frame-level table of section 14.3 and
//! the admission order of section 8.1, so the checker re-derives it from the journal alone.
//!
//! A failing event is shrunk by proptest to a minimal one; the driver journals every attempt and
//! marks the seed, the number of cases, the first failing attempt and the minimal one, and writes
//! a replay file (`replay-<case>.ndjson`) beside the journal, so the signed bundle carries it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::case::Ctx;
use crate::contract::{Contract, ContractError, PROTOCOL};
use crate::plan::CaseSpec;
use crate::wire::{self, login, Conn, Identity, WireError};

/// The message types a client may send on the client channel (section 3.1).
pub const CLIENT_INBOUND: [&str; 6] = [
    "session.hello",
    "session.proof",
    "intent.submit",
    "intent.cancel",
    "intent.fetch",
    "wallet.mint",
];

/// The `id` generated events carry until the driver gives each attempt its own.
pub const PLACEHOLDER_ID: &str = "gen";

/// The `intent.rejected` codes a schema-valid submission may get (section 8.1, checks 2a to 9).
const ADMISSION_REJECTIONS: [&str; 8] = [
    "BAD_INPUT",
    "IDEMPOTENCY_CONFLICT",
    "SHUTTING_DOWN",
    "INFEASIBLE",
    "COST_TOO_LOW",
    "RATE_LIMITED",
    "QUEUE_FULL",
    "INSUFFICIENT_FUNDS",
];

/// How long the driver waits for the follow-up probe's reply.
const PROBE_WAIT_MS: u64 = 2000;
/// How long the driver waits for the event's own answer before sending the probe anyway (an
/// answer that comes later is still collected, up to the probe's reply): ten times the slowest
/// answer seen so far, within these bounds, so a realm that stays silent costs little per
/// attempt and a slow one is still waited for.
const ANSWER_WAIT_MS: (u64, u64) = (10, 250);
/// Frames kept in hand below the advertised burst, so the harness never trips the rate limit.
const FRAME_MARGIN: u64 = 4;
/// The burst assumed when `session.ready` does not say.
const DEFAULT_BURST: u64 = 200;

/// Why generation could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The embedded contract does not compile.
    #[error("the embedded contract does not load: {0}")]
    Contract(#[from] ContractError),
    /// The replay file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A replay line could not be serialised.
    #[error("cannot serialise a replay line: {0}")]
    Json(#[from] serde_json::Error),
}

// ------------------------------------------------------------------------------ parameters

/// The plan parameters of a `generated-events` case.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    /// Passing cases proptest must see (`cases`).
    pub cases: u32,
    /// Most shrink steps after a failure (`max_shrink_iters`).
    pub max_shrink_iters: u32,
    /// Wall-clock budget for generating, sending and shrinking (`time_budget_ms`).
    pub time_budget_ms: u64,
    /// Share of generated events that are mutated into invalid ones (`invalid_share`, 0..1).
    pub invalid_share: f64,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            cases: 200,
            max_shrink_iters: 256,
            time_budget_ms: 8000,
            invalid_share: 0.75,
        }
    }
}

impl GenParams {
    /// Reads the case's parameters, falling back to the defaults for those it does not give.
    pub fn from_spec(spec: &CaseSpec) -> Self {
        let d = Self::default();
        let int = |k: &str| spec.params.get(k).and_then(|v| v.as_integer());
        Self {
            cases: int("cases")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(d.cases),
            max_shrink_iters: int("max_shrink_iters")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(d.max_shrink_iters),
            time_budget_ms: int("time_budget_ms")
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(d.time_budget_ms),
            // proptest wants a probability strictly between 0 and 1.
            invalid_share: spec
                .params
                .get("invalid_share")
                .and_then(|v| v.as_float())
                .unwrap_or(d.invalid_share)
                .clamp(0.01, 0.99),
        }
    }
}

// ------------------------------------------------------------------------------ the oracle

/// What the spec requires the realm to answer to one event sent in a ready session whose only
/// role is `wallet` (the harness's fresh wallet), by section 14.3 and section 8.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// A frame-level violation: exactly one `error` with this code and `ref` (LIM-4, LIM-5).
    Error {
        /// The code of the first violation in the table of section 14.3.
        code: &'static str,
        /// The frame's id when readable, else `None` (`ref: null`).
        reference: Option<String>,
    },
    /// A schema-valid `intent.submit` whose input breaks its intent's input schema:
    /// `intent.rejected` with `INVALID_EVENT` (section 8.1, check 2a; EVT-4).
    RejectedInput,
    /// A valid request: one reply its type allows (section 4.1), never a schema complaint.
    Reply {
        /// The request's type.
        kind: String,
    },
    /// The spec leaves the answer open in this session (a second handshake); never generated.
    Unspecified,
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Error { code, reference } => write!(
                f,
                "`error` {code} with ref {}",
                reference
                    .as_deref()
                    .map_or_else(|| "null".to_owned(), |r| format!("{r:?}"))
            ),
            Self::RejectedInput => f.write_str(
                "`intent.rejected` INVALID_EVENT (the input breaks its intent's schema)",
            ),
            Self::Reply { kind } => match kind.as_str() {
                "intent.fetch" => f.write_str("`intent.status` or `error` NOT_FOUND"),
                "intent.cancel" => {
                    f.write_str("`intent.cancelled`, `intent.status` or `error` NOT_FOUND")
                }
                "intent.submit" => f.write_str(
                    "`intent.accepted` or `intent.rejected` with an admission code (not INVALID_EVENT)",
                ),
                other => write!(f, "a reply to {other}"),
            },
            Self::Unspecified => f.write_str("no answer the spec pins down"),
        }
    }
}

/// Whether `s` is a `uid` (`^[A-Za-z0-9_-]{1,64}$`), i.e. a readable frame id.
pub fn is_uid(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The answer the spec requires to `event`, sent in a ready wallet session on the client channel.
pub fn expectation(event: &Value, contract: &Contract) -> Expectation {
    let Some(obj) = event.as_object() else {
        // Row 6: JSON, but not an object.
        return Expectation::Error {
            code: "INVALID_EVENT",
            reference: None,
        };
    };
    let reference = obj
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| is_uid(id))
        .map(str::to_owned);
    let error = |code| Expectation::Error {
        code,
        reference: reference.clone(),
    };
    // Rows 7-9 apply only to a `proto` / `type` that is a string; otherwise row 12 does.
    if let Some(Value::String(proto)) = obj.get("proto") {
        if proto != PROTOCOL {
            return error("UNSUPPORTED_PROTOCOL");
        }
    }
    let kind = obj.get("type").and_then(Value::as_str);
    if let Some(kind) = kind {
        if !contract.message_types().any(|t| t == kind) {
            return error("UNKNOWN_TYPE");
        }
        if !CLIENT_INBOUND.contains(&kind) {
            return error("WRONG_CHANNEL");
        }
        match kind {
            // Row 11 comes before the schema: a wallet may not mint, valid body or not.
            "wallet.mint" => return error("FORBIDDEN"),
            "session.hello" | "session.proof" => return Expectation::Unspecified,
            _ => {}
        }
    }
    let violations = contract.validate_event(event);
    match kind {
        Some(kind) if violations.is_empty() => Expectation::Reply {
            kind: kind.to_owned(),
        },
        Some("intent.submit") if violations.iter().all(|v| v.schema.starts_with("intents/")) => {
            Expectation::RejectedInput
        }
        _ => error("INVALID_EVENT"),
    }
}

// ------------------------------------------------------------------------------ the judge

/// One thing seen on the attempt's connection, in journal order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A frame from the realm: its journal record and the event, if it was JSON.
    Frame {
        /// Journal sequence number.
        seq: u64,
        /// The parsed frame.
        event: Option<Value>,
    },
    /// The connection ended.
    Closed {
        /// Journal sequence number, when known.
        seq: Option<u64>,
        /// Close code and reason, or the transport error.
        detail: String,
    },
}

/// The verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptVerdict {
    /// The realm answered as required and kept the connection usable.
    Pass,
    /// It did not.
    Fail,
    /// The attempt says nothing about the event (the frame was rate-limited).
    Inconclusive,
}

/// The judgement of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptJudgement {
    /// Pass, fail or inconclusive.
    pub verdict: AttemptVerdict,
    /// Why, in a sentence.
    pub why: String,
    /// What the spec requires.
    pub expected: String,
    /// What the realm answered.
    pub answer: String,
    /// Journal records of the realm's frames in the attempt.
    pub seqs: Vec<u64>,
}

fn summary(e: &Value) -> String {
    let kind = e["type"].as_str().unwrap_or("?");
    let mut s = format!("`{kind}`");
    if let Some(code) = e["body"]["code"].as_str() {
        s.push_str(&format!(" {code}"));
    }
    if kind == "error" {
        s.push_str(&format!(" (ref {}, corr {})", e["body"]["ref"], e["corr"]));
    } else {
        s.push_str(&format!(" (corr {})", e["corr"]));
    }
    s
}

fn is_error(e: &Value, code: &str) -> bool {
    e["type"] == "error" && e["body"]["code"] == code
}

/// Judges one attempt from what was sent and what came back on its connection: the realm must
/// answer the event exactly once as [`expectation`] requires, send only schema-valid events,
/// and still answer the follow-up probe (whose id is `probe_id`).
pub fn judge_attempt(
    contract: &Contract,
    sent: &Value,
    probe_id: &str,
    items: &[Item],
) -> AttemptJudgement {
    let expected = expectation(sent, contract);
    let id = sent
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| is_uid(id));
    let mut answers: Vec<&Value> = Vec::new();
    let mut probe: Option<&Value> = None;
    let mut closed: Option<&str> = None;
    let mut broken: Option<String> = None;
    let mut seqs = Vec::new();
    for item in items {
        match item {
            Item::Frame { seq, event: None } => {
                seqs.push(*seq);
                broken.get_or_insert_with(|| format!("frame #{seq} is not a JSON event"));
            }
            Item::Frame {
                seq,
                event: Some(e),
            } => {
                seqs.push(*seq);
                if let Some(v) = contract.validate_event(e).first() {
                    broken.get_or_insert_with(|| {
                        format!(
                            "frame #{seq} ({}) breaks the schema at \"{}\" [{}]: {}",
                            e["type"].as_str().unwrap_or("?"),
                            v.pointer,
                            v.keyword,
                            v.message
                        )
                    });
                }
                if probe.is_none() && e["corr"].as_str() == Some(probe_id) {
                    probe = Some(e);
                } else {
                    answers.push(e);
                }
            }
            Item::Closed { seq, detail } => {
                seqs.extend(seq);
                closed.get_or_insert(detail.as_str());
            }
        }
    }
    let answer = match (answers.as_slice(), closed) {
        ([], Some(d)) => format!("nothing; the connection closed ({d})"),
        ([], None) => "nothing".to_owned(),
        (list, _) => list
            .iter()
            .map(|e| summary(e))
            .collect::<Vec<_>>()
            .join(", then "),
    };
    let done = |verdict, why: String| AttemptJudgement {
        verdict,
        why,
        expected: expected.to_string(),
        answer: answer.clone(),
        seqs: seqs.clone(),
    };
    if let Some(b) = broken {
        return done(
            AttemptVerdict::Fail,
            format!("the realm sent an event that breaks the MTOR/1 schemas (EVT-1): {b}"),
        );
    }
    if answers
        .iter()
        .chain(probe.iter())
        .any(|e| is_error(e, "RATE_LIMITED"))
    {
        return done(
            AttemptVerdict::Inconclusive,
            "the frame was rate-limited, so the attempt says nothing about the event".into(),
        );
    }
    if expected == Expectation::Unspecified {
        return done(
            AttemptVerdict::Inconclusive,
            "the spec does not pin down the answer to this event".into(),
        );
    }
    let one = match (answers.as_slice(), closed) {
        ([one], _) => *one,
        ([], Some(d)) => {
            return done(
                AttemptVerdict::Fail,
                format!("the connection closed ({d}) instead of answering the event (LIM-6)"),
            )
        }
        ([], None) => {
            return done(
                AttemptVerdict::Fail,
                format!("the event got no answer; the spec requires {expected}"),
            )
        }
        (many, _) => {
            return done(
                AttemptVerdict::Fail,
                format!(
                    "the event got {} answers; exactly one is required (LIM-4, SQ-2)",
                    many.len()
                ),
            )
        }
    };
    let kind = one["type"].as_str().unwrap_or("");
    let code = one["body"]["code"].as_str().unwrap_or("");
    let right = match &expected {
        Expectation::Error {
            code: want,
            reference,
        } => {
            if kind != "error" || code != *want {
                Err(format!(
                    "expected {expected}, the realm answered {}",
                    summary(one)
                ))
            } else if one["body"]["ref"].as_str() != reference.as_deref() {
                Err(format!(
                    "the `{want}` error's ref is {}, expected {} (LIM-5)",
                    one["body"]["ref"],
                    reference
                        .as_deref()
                        .map_or_else(|| "null".to_owned(), |r| format!("{r:?}"))
                ))
            } else {
                Ok(())
            }
        }
        Expectation::RejectedInput => {
            if kind != "intent.rejected" || code != "INVALID_EVENT" {
                Err(format!(
                    "expected {expected} (SQ-1, EVT-4), the realm answered {}",
                    summary(one)
                ))
            } else if one["body"]["idempotency_key"] != sent["body"]["idempotency_key"] {
                Err("the rejection does not echo the submission's idempotency_key".into())
            } else {
                Ok(())
            }
        }
        Expectation::Reply { kind: request } => {
            let fits = match request.as_str() {
                "intent.fetch" => kind == "intent.status" || is_error(one, "NOT_FOUND"),
                "intent.cancel" => {
                    matches!(kind, "intent.cancelled" | "intent.status")
                        || is_error(one, "NOT_FOUND")
                }
                "intent.submit" => {
                    kind == "intent.accepted"
                        || (kind == "intent.rejected" && ADMISSION_REJECTIONS.contains(&code))
                }
                _ => false,
            };
            if fits {
                Ok(())
            } else {
                Err(format!(
                    "a valid {request} was answered by {}; expected {expected} (EVT-3)",
                    summary(one)
                ))
            }
        }
        Expectation::Unspecified => Ok(()),
    };
    if let Err(why) = right {
        return done(AttemptVerdict::Fail, why);
    }
    if let Some(id) = id {
        if one["corr"].as_str() != Some(id) {
            return done(
                AttemptVerdict::Fail,
                format!(
                    "the answer's corr is {}, not the event's id {id:?} (EVT-8)",
                    one["corr"]
                ),
            );
        }
    }
    if probe.is_none() {
        let why = match closed {
            Some(d) => format!("the connection closed ({d}) after the event (LIM-6)"),
            None => "a valid intent.fetch sent after the event got no reply: the connection stopped working (LIM-6)".into(),
        };
        return done(AttemptVerdict::Fail, why);
    }
    done(
        AttemptVerdict::Pass,
        "answered as required; the connection kept working".into(),
    )
}

// ------------------------------------------------------------------------------ generation

/// One generated input.
#[derive(Debug, Clone, PartialEq)]
pub struct GenCase {
    /// The event to send (its `id` may still be [`PLACEHOLDER_ID`]).
    pub event: Value,
    /// The mutation that made it invalid, in words; `None` for a valid event.
    pub mutation: Option<String>,
}

/// One mutation of a valid event. `at` picks among the candidate locations (modulo their
/// number), so it shrinks towards the first one; the other fields shrink towards the simplest.
#[derive(Debug, Clone)]
enum Mutation {
    Drop {
        at: usize,
    },
    WrongType {
        at: usize,
        with: usize,
    },
    Extra {
        at: usize,
        name: String,
        value: Value,
    },
    Lengthen {
        at: usize,
        by: usize,
    },
    BadChar {
        at: usize,
        ch: char,
        pos: usize,
    },
    Empty {
        at: usize,
    },
    Number {
        at: usize,
        with: usize,
    },
    Proto(&'static str),
    UnknownType(String),
    WrongChannel(String),
}

const UID_ALPHABET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const NAME_TAIL: &str = "abcdefghijklmnopqrstuvwxyz0123456789-";
const PRINTABLE: &str = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
const BAD_CHARS: [char; 9] = [' ', '.', '/', 'é', '\n', '"', '\u{0}', '+', '*'];
const PROTOS: [&str; 7] = [
    "MTOR/2", "MTOR/0", "mtor/1", "MTOR/1.0", "", "MTOR", "HTTP/1.1",
];

fn chars(set: &str) -> Vec<char> {
    set.chars().collect()
}

fn string_of(set: &str, len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(select(chars(set)), len).prop_map(|c| c.into_iter().collect())
}

/// A value of another JSON type than most fields have.
fn wrong_value(i: usize) -> Value {
    match i % 7 {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(7),
        3 => json!(0.5),
        4 => json!("x"),
        5 => json!([]),
        _ => json!({}),
    }
}

/// Numbers outside every range the schemas allow, or not integers.
fn odd_number(i: usize) -> Value {
    match i % 7 {
        0 => json!(-1),
        1 => json!(10),
        2 => json!(5001),
        3 => json!(9_007_199_254_740_992u64),
        4 => json!(u64::MAX),
        5 => json!(1.5),
        _ => json!(-9_007_199_254_740_992i64),
    }
}

fn uid() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => string_of(UID_ALPHABET, 1..=12),
        1 => string_of(UID_ALPHABET, 1..=64),
    ]
}

fn timestamp() -> impl Strategy<Value = String> {
    (
        1970u16..=2099,
        1u8..=12,
        1u8..=28,
        0u8..=23,
        0u8..=59,
        0u8..=59,
        string_of("0123456789", 0..=9),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac)| {
            let frac = if frac.is_empty() {
                String::new()
            } else {
                format!(".{frac}")
            };
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}Z")
        })
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..1000).prop_map(|n| json!(n)),
        string_of(PRINTABLE, 0..=8).prop_map(Value::String),
    ]
}

/// An intent name other than the two MTOR/1 defines (no input schema; realms answer INFEASIBLE).
fn other_intent_name() -> impl Strategy<Value = String> {
    (
        select(chars(LOWER)),
        string_of(NAME_TAIL, 0..=10),
        prop::collection::vec(string_of(NAME_TAIL, 1..=8), 0..=2),
    )
        .prop_map(|(first, rest, segments)| {
            let mut name = format!("{first}{rest}");
            for s in segments {
                name.push('.');
                name.push_str(&s);
            }
            name
        })
        .prop_filter("not an intent MTOR/1 defines", |n| {
            n != "cert.probe" && n != "analyze-signal"
        })
}

/// `(intent, input)` pairs: `cert.probe` with an input valid against its schema, or another
/// intent with a free-form input.
fn intent_and_input() -> impl Strategy<Value = (String, Value)> {
    let nonce = prop_oneof![
        string_of(PRINTABLE, 1..=128),
        prop::collection::vec(any::<char>(), 1..=128).prop_map(|c| c.into_iter().collect()),
    ];
    let probe = (
        nonce,
        prop::option::of(0u32..=5000),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(nonce, work_ms, fail)| {
            let mut input = Map::new();
            input.insert("nonce".into(), json!(nonce));
            if let Some(w) = work_ms {
                input.insert("work_ms".into(), json!(w));
            }
            if let Some(f) = fail {
                input.insert("fail".into(), json!(f));
            }
            ("cert.probe".to_owned(), Value::Object(input))
        });
    let other = (
        other_intent_name(),
        prop::collection::vec((string_of(LOWER, 1..=8), scalar()), 0..=3),
    )
        .prop_map(|(name, members)| (name, Value::Object(members.into_iter().collect())));
    prop_oneof![3 => probe, 1 => other]
}

fn submit_body() -> impl Strategy<Value = Value> {
    (
        intent_and_input(),
        prop_oneof![
            4 => 0u64..=20_000,
            1 => Just(9_007_199_254_740_991u64),
        ],
        uid(),
        prop::option::of(0u8..=9),
    )
        .prop_map(|((intent, input), max_cost, key, priority)| {
            let mut body = json!({
                "intent": intent,
                "input": input,
                "max_cost": max_cost,
                "idempotency_key": key,
            });
            if let (Some(p), Some(obj)) = (priority, body.as_object_mut()) {
                obj.insert("priority".into(), json!(p));
            }
            body
        })
}

/// Valid client events of the three side-effect-free request types. Submissions are safe: the
/// harness's fresh wallet holds nothing, so no admission can reserve or spend anything.
fn base_event() -> impl Strategy<Value = Value> {
    let body = prop_oneof![
        1 => uid().prop_map(|id| ("intent.fetch", json!({ "intent_id": id }))),
        1 => uid().prop_map(|id| ("intent.cancel", json!({ "intent_id": id }))),
        2 => submit_body().prop_map(|b| ("intent.submit", b)),
    ];
    (timestamp(), prop::option::of(uid()), body).prop_map(|(ts, corr, (kind, body))| {
        json!({
            "proto": PROTOCOL,
            "type": kind,
            "id": PLACEHOLDER_ID,
            "ts": ts,
            "corr": corr,
            "body": body,
        })
    })
}

fn mutation(wrong_channel: Vec<String>) -> impl Strategy<Value = Mutation> {
    let at = || 0usize..64;
    let extra_name = prop_oneof![
        3 => string_of(LOWER, 1..=8),
        1 => select(vec!["ID", "Body", "__proto__", "$ref", "type ", ""]).prop_map(str::to_owned),
    ];
    let unknown_type = (
        string_of(LOWER, 1..=10),
        prop::option::of(string_of(LOWER, 1..=10)),
    )
        .prop_map(|(a, b)| match b {
            Some(b) => format!("{a}.{b}"),
            None => a,
        });
    // The envelope-only mutations weigh less: the located ones reach `proto` and `type` too.
    prop_oneof![
        3 => at().prop_map(|at| Mutation::Drop { at }),
        3 => (at(), 0usize..7).prop_map(|(at, with)| Mutation::WrongType { at, with }),
        3 => (at(), extra_name, scalar()).prop_map(|(at, name, value)| Mutation::Extra {
            at,
            name,
            value
        }),
        2 => (at(), 1usize..=200).prop_map(|(at, by)| Mutation::Lengthen { at, by }),
        2 => (at(), select(BAD_CHARS.to_vec()), 0usize..64)
            .prop_map(|(at, ch, pos)| Mutation::BadChar { at, ch, pos }),
        2 => at().prop_map(|at| Mutation::Empty { at }),
        3 => (at(), 0usize..7).prop_map(|(at, with)| Mutation::Number { at, with }),
        1 => select(PROTOS.to_vec()).prop_map(Mutation::Proto),
        1 => unknown_type.prop_map(Mutation::UnknownType),
        1 => select(wrong_channel).prop_map(Mutation::WrongChannel),
    ]
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Every location in `v` as a JSON pointer, in document order, the root (`""`) first.
fn locations(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    walk(child, format!("{at}/{}", escape(k)), out);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

fn pick(candidates: &[String], at: usize) -> Option<&str> {
    (!candidates.is_empty()).then(|| candidates[at % candidates.len()].as_str())
}

fn remove_at(v: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&unescape(last)).is_some(),
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

impl Mutation {
    /// Applies the mutation to `event` and says what it did; "not applicable" leaves it as is.
    fn apply(&self, event: &mut Value) -> String {
        let all = locations(event);
        let of = |keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
            all.iter()
                .filter(|p| event.pointer(p).is_some_and(keep))
                .cloned()
                .collect()
        };
        let members: Vec<String> = all.iter().filter(|p| !p.is_empty()).cloned().collect();
        let strings = of(&|v| v.is_string());
        let integers = of(&|v| v.is_u64() || v.is_i64());
        let objects = of(&|v| v.is_object());
        let na = || "not applicable".to_owned();
        match self {
            Self::Drop { at } => match pick(&members, *at) {
                Some(p) if remove_at(event, p) => format!("dropped {p}"),
                _ => na(),
            },
            Self::WrongType { at, with } => {
                let Some(p) = pick(&members, *at) else {
                    return na();
                };
                let new = wrong_value(*with);
                let said = format!("{p} replaced by {new}");
                match event.pointer_mut(p) {
                    Some(slot) => {
                        *slot = new;
                        said
                    }
                    None => na(),
                }
            }
            Self::Extra { at, name, value } => {
                let Some(p) = pick(&objects, *at) else {
                    return na();
                };
                let said = format!("extra member {p}/{} = {value}", escape(name));
                match event.pointer_mut(p) {
                    Some(Value::Object(m)) => {
                        m.insert(name.clone(), value.clone());
                        said
                    }
                    _ => na(),
                }
            }
            Self::Lengthen { at, by } => match pick(&strings, *at)
                .and_then(|p| Some((p.to_owned(), event.pointer_mut(p)?)))
            {
                Some((p, Value::String(s))) => {
                    s.push_str(&"a".repeat(*by));
                    format!("{p} lengthened by {by} to {} characters", s.chars().count())
                }
                _ => na(),
            },
            Self::BadChar { at, ch, pos } => match pick(&strings, *at)
                .and_then(|p| Some((p.to_owned(), event.pointer_mut(p)?)))
            {
                Some((p, Value::String(s))) => {
                    let index = s
                        .char_indices()
                        .map(|(i, _)| i)
                        .chain(std::iter::once(s.len()))
                        .nth(pos % (s.chars().count() + 1))
                        .unwrap_or(s.len());
                    s.insert(index, *ch);
                    format!("{p}: inserted {ch:?}")
                }
                _ => na(),
            },
            Self::Empty { at } => match pick(&strings, *at)
                .and_then(|p| Some((p.to_owned(), event.pointer_mut(p)?)))
            {
                Some((p, Value::String(s))) => {
                    s.clear();
                    format!("{p} emptied")
                }
                _ => na(),
            },
            Self::Number { at, with } => {
                let Some(p) = pick(&integers, *at) else {
                    return na();
                };
                let new = odd_number(*with);
                let said = format!("{p} = {new}");
                match event.pointer_mut(p) {
                    Some(slot) => {
                        *slot = new;
                        said
                    }
                    None => na(),
                }
            }
            Self::Proto(p) => {
                event["proto"] = json!(p);
                format!("/proto = {p:?}")
            }
            Self::UnknownType(t) | Self::WrongChannel(t) => {
                event["type"] = json!(t);
                format!("/type = {t:?}")
            }
        }
    }
}

/// Whether a generated case is what its label claims, by the contract: a valid event must be a
/// valid request, a mutated one must be refused.
fn fits(case: &GenCase, contract: &Contract) -> bool {
    matches!(
        (&case.mutation, expectation(&case.event, contract)),
        (None, Expectation::Reply { .. })
            | (
                Some(_),
                Expectation::Error { .. } | Expectation::RejectedInput
            )
    )
}

/// The strategy of generated cases: valid events, and (with probability `invalid_share`) a
/// single mutation of one, every one confirmed by the contract.
pub fn strategy(contract: Arc<Contract>, invalid_share: f64) -> BoxedStrategy<GenCase> {
    let wrong_channel: Vec<String> = contract
        .message_types()
        .filter(|t| !CLIENT_INBOUND.contains(t))
        .map(str::to_owned)
        .collect();
    (
        base_event(),
        prop::option::weighted(invalid_share.clamp(0.01, 0.99), mutation(wrong_channel)),
    )
        .prop_map(|(mut event, m)| {
            let mutation = m.map(|m| m.apply(&mut event));
            GenCase { event, mutation }
        })
        .prop_filter("the contract must confirm the case's label", move |c| {
            fits(c, &contract)
        })
        .boxed()
}

/// The 32 ChaCha seed bytes of a case, derived from its seed (the run's seed mixed with the
/// case id), so a run, its `--resume` and its `replay` generate the same events.
pub fn seed_bytes(case_seed: u64) -> [u8; 32] {
    Sha256::digest(format!("mtor-cert/generated-events/{case_seed}").as_bytes()).into()
}

/// A deterministic proptest runner for a case.
pub fn runner(case_seed: u64, params: &GenParams) -> TestRunner {
    // Config::default() also reads PROPTEST_* variables; everything that decides what is
    // generated, or whether anything is written to disk, is set explicitly here.
    let config = Config {
        cases: params.cases,
        max_shrink_iters: params.max_shrink_iters,
        max_shrink_time: u32::try_from(params.time_budget_ms).unwrap_or(u32::MAX),
        max_global_rejects: params.cases.max(16),
        failure_persistence: None,
        source_file: None,
        verbose: 0,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(case_seed)),
    )
}

/// The first `n` cases the runner of `case_seed` generates when every one passes: what a realm
/// that answers everything correctly would be sent. Same seed, same sequence.
pub fn sample(contract: Arc<Contract>, case_seed: u64, params: &GenParams, n: u32) -> Vec<GenCase> {
    let params = GenParams {
        cases: n,
        ..params.clone()
    };
    let seen = Mutex::new(Vec::new());
    let mut runner = runner(case_seed, &params);
    let _ = runner.run(&strategy(contract, params.invalid_share), |case| {
        if let Ok(mut s) = seen.lock() {
            s.push(case);
        }
        Ok(())
    });
    seen.into_inner().unwrap_or_default()
}

// ------------------------------------------------------------------------------ the driver

/// What the wire side tells the property about one case.
enum Answer {
    Pass,
    Fail(String),
    Inconclusive(String),
    /// Out of time: counted as passing so proptest winds down without sending more.
    Skip,
}

struct Ask {
    case: GenCase,
    answer: oneshot::Sender<Answer>,
}

enum RunnerEnd {
    Passed,
    Failed(String),
    Aborted(String),
}

/// Runs proptest on a blocking thread: each case goes to the async driver, which sends it and
/// answers pass / fail / inconclusive; proptest shrinks failures through the same channel.
fn run_property(
    case_seed: u64,
    params: &GenParams,
    contract: Arc<Contract>,
    asks: &mpsc::Sender<Ask>,
    stop: &AtomicBool,
) -> RunnerEnd {
    let strategy = strategy(contract, params.invalid_share);
    let mut runner = runner(case_seed, params);
    let result = runner.run(&strategy, |case| {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        if asks.blocking_send(Ask { case, answer: tx }).is_err() {
            stop.store(true, Ordering::Relaxed);
            return Ok(());
        }
        match rx.blocking_recv() {
            Ok(Answer::Pass) | Ok(Answer::Skip) => Ok(()),
            Ok(Answer::Fail(why)) => Err(TestCaseError::fail(why)),
            Ok(Answer::Inconclusive(why)) => Err(TestCaseError::reject(why)),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => RunnerEnd::Passed,
        Err(TestError::Fail(reason, _)) => RunnerEnd::Failed(reason.message().to_owned()),
        Err(TestError::Abort(reason)) => RunnerEnd::Aborted(reason.message().to_owned()),
    }
}

struct Session {
    conn: Conn,
    frames_left: u64,
}

/// One event as sent, and its judgement.
struct Tried {
    n: usize,
    event: Value,
    mutation: Option<String>,
    judgement: AttemptJudgement,
    /// How long the event's answer took, when it came before the probe was sent.
    latency: Option<std::time::Duration>,
}

/// What one read phase saw.
#[derive(Default)]
struct Seen {
    answered: bool,
    probe: bool,
    closed: bool,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.answered |= other.answered;
        self.probe |= other.probe;
        self.closed |= other.closed;
    }
}

/// Reads frames in arrival order into `items` until `done` says so, the connection ends or the
/// deadline passes (every frame read is journaled, so the checker sees the same items).
async fn read_until(
    conn: &mut Conn,
    deadline: Instant,
    probe_id: &str,
    items: &mut Vec<Item>,
    done: impl Fn(&Seen) -> bool,
) -> Seen {
    let mut seen = Seen::default();
    while !done(&seen) && !seen.closed {
        match conn.next_frame(deadline).await {
            Ok(r) => {
                if r.corr() == Some(probe_id) {
                    seen.probe = true;
                } else {
                    seen.answered = true;
                }
                items.push(Item::Frame {
                    seq: r.seq,
                    event: r.event,
                });
            }
            Err(WireError::Timeout(..)) => break,
            Err(WireError::Closed(detail) | WireError::Ws(detail)) => {
                items.push(Item::Closed { seq: None, detail });
                seen.closed = true;
            }
            Err(other) => {
                items.push(Item::Closed {
                    seq: None,
                    detail: other.to_string(),
                });
                seen.closed = true;
            }
        }
    }
    seen
}

async fn end_session(session: &mut Option<Session>) {
    if let Some(s) = session.take() {
        s.conn.close().await;
    }
}

/// Sends one case and its follow-up probe; `None` when no session could be opened.
async fn attempt(
    ctx: &Ctx<'_>,
    contract: &Contract,
    who: &Identity,
    session: &mut Option<Session>,
    n: usize,
    case: &GenCase,
    answer_wait_ms: u64,
) -> Option<Tried> {
    // A fresh session whenever the advertised burst would run out: the harness must never be
    // the reason a frame is rate-limited.
    if session.as_ref().is_none_or(|s| s.frames_left < 2) {
        end_session(session).await;
        match login(
            &ctx.client_url(),
            who,
            ctx.journal,
            Some(&ctx.spec.id),
            ctx.within(5000),
        )
        .await
        {
            Ok((mut conn, ready)) => {
                conn.clear_backlog();
                let burst = ready["limits"]["burst"].as_u64().unwrap_or(DEFAULT_BURST);
                *session = Some(Session {
                    conn,
                    frames_left: burst.saturating_sub(2 + FRAME_MARGIN).max(2),
                });
            }
            Err(e) => {
                ctx.note(format!("generated events: no session for attempt {n}: {e}"));
                return None;
            }
        }
    }
    let s = session.as_mut()?;
    let mut event = case.event.clone();
    if event.get("id").and_then(Value::as_str) == Some(PLACEHOLDER_ID) {
        // Fixed width, so that ids do not make later attempts look bigger than earlier ones.
        event["id"] = json!(format!("gen-{n:06}"));
    }
    let text = event.to_string();
    let probe = wire::event("intent.fetch", None, json!({ "intent_id": wire::new_id() }));
    let probe_id = probe["id"].as_str().unwrap_or_default().to_owned();
    ctx.mark(
        "gen-try",
        &format!(
            "{n}:{}:{probe_id}:{}",
            s.conn.id,
            case.mutation.as_deref().unwrap_or("")
        ),
    );
    s.frames_left = s.frames_left.saturating_sub(2);
    let mut items = Vec::new();
    // The event's answer is awaited before the probe goes out: one write each way at a time, so
    // no Nagle / delayed-ACK stall, and an in-order realm's answers stay in order.
    let mut seen = Seen::default();
    let mut latency = None;
    if s.conn.send_text(&text, ctx.within(2000)).await.is_ok() {
        let sent_at = Instant::now();
        let wait = ctx.within(answer_wait_ms);
        seen.merge(read_until(&mut s.conn, wait, &probe_id, &mut items, |x| x.answered).await);
        if seen.answered {
            latency = Some(sent_at.elapsed());
        }
        if !seen.closed && s.conn.send_event(&probe, ctx.within(2000)).await.is_ok() {
            let wait = ctx.within(PROBE_WAIT_MS);
            seen.merge(read_until(&mut s.conn, wait, &probe_id, &mut items, |x| x.probe).await);
        }
    }
    if !seen.closed && !seen.probe {
        // A failed send shows up as the connection's end when reading; the journal records it.
        let wait = ctx.within(100);
        seen.merge(read_until(&mut s.conn, wait, &probe_id, &mut items, |x| x.probe).await);
    }
    // Judge what was sent exactly as the checker will read it back from the journal.
    let sent: Value = serde_json::from_str(&text).unwrap_or(event);
    let judgement = judge_attempt(contract, &sent, &probe_id, &items);
    if seen.closed || !seen.probe {
        end_session(session).await;
    }
    Some(Tried {
        n,
        event: sent,
        mutation: case.mutation.clone(),
        judgement,
        latency,
    })
}

/// The driver of `generated-events`.
pub(crate) async fn drive(ctx: &Ctx<'_>) {
    let params = GenParams::from_spec(ctx.spec);
    let contract = match Contract::embedded() {
        Ok(c) => Arc::new(c),
        Err(e) => return ctx.abort(GenError::from(e)),
    };
    let who = match Identity::generate() {
        Ok(w) => w,
        Err(e) => return ctx.abort(format!("no randomness for a wallet key: {e}")),
    };
    ctx.mark("gen-seed", &format!("{}:{}", ctx.run_seed, ctx.seed));
    tracing::debug!(case = %ctx.spec.id, seed = ctx.seed, ?params, "generating events");

    let (tx, mut rx) = mpsc::channel::<Ask>(1);
    let stop = Arc::new(AtomicBool::new(false));
    let property = {
        let (contract, params, stop, seed) =
            (contract.clone(), params.clone(), stop.clone(), ctx.seed);
        tokio::task::spawn_blocking(move || run_property(seed, &params, contract, &tx, &stop))
    };
    let until = ctx.within(params.time_budget_ms);
    let mut session = None;
    let mut tried: Vec<Tried> = Vec::new();
    let mut out_of_time = false;
    let mut slowest: Option<std::time::Duration> = None;
    while let Some(ask) = rx.recv().await {
        if Instant::now() >= until {
            out_of_time = true;
            stop.store(true, Ordering::Relaxed);
            let _ = ask.answer.send(Answer::Skip);
            continue;
        }
        let mut answer = Answer::Inconclusive("no session".into());
        // A rate-limited attempt is repeated once on a fresh connection.
        for _ in 0..2 {
            let n = tried.len() + 1;
            let wait = slowest.map_or(ANSWER_WAIT_MS.1, |d| {
                u64::try_from(d.as_millis() * 10)
                    .unwrap_or(u64::MAX)
                    .clamp(ANSWER_WAIT_MS.0, ANSWER_WAIT_MS.1)
            });
            let Some(t) = attempt(ctx, &contract, &who, &mut session, n, &ask.case, wait).await
            else {
                break;
            };
            slowest = slowest.max(t.latency);
            answer = match t.judgement.verdict {
                AttemptVerdict::Pass => Answer::Pass,
                AttemptVerdict::Fail => Answer::Fail(format!("attempt {n}: {}", t.judgement.why)),
                AttemptVerdict::Inconclusive => Answer::Inconclusive(t.judgement.why.clone()),
            };
            let again = t.judgement.verdict == AttemptVerdict::Inconclusive;
            tried.push(t);
            if !again {
                break;
            }
            end_session(&mut session).await;
        }
        let _ = ask.answer.send(answer);
    }
    end_session(&mut session).await;
    let end = property
        .await
        .unwrap_or_else(|e| RunnerEnd::Aborted(format!("the generator stopped: {e}")));
    let status = match (&end, out_of_time) {
        (RunnerEnd::Failed(_), _) => "failed".to_owned(),
        (RunnerEnd::Passed, true) => "budget".to_owned(),
        (RunnerEnd::Passed, false) => "passed".to_owned(),
        (RunnerEnd::Aborted(why), _) => format!("aborted:{why}"),
    };
    ctx.mark("gen-done", &format!("{}:{status}", tried.len()));
    let RunnerEnd::Failed(reason) = end else {
        return;
    };
    // proptest's last failure is its minimal case; the reason names the attempt that sent it.
    let named = reason
        .strip_prefix("attempt ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse::<usize>().ok());
    let failing = |t: &&Tried| t.judgement.verdict == AttemptVerdict::Fail;
    let minimal = named
        .and_then(|n| tried.iter().find(|t| t.n == n))
        .or_else(|| tried.iter().rev().find(failing));
    let first = tried.iter().find(failing);
    if let (Some(minimal), Some(first)) = (minimal, first) {
        ctx.mark("gen-minimal", &minimal.n.to_string());
        ctx.mark("gen-first-failure", &first.n.to_string());
        let dir = ctx
            .journal
            .path()
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        match write_replay(ctx, &dir, tried.len(), minimal, first).await {
            Ok(name) => {
                ctx.mark("gen-replay", &name);
            }
            Err(e) => {
                ctx.note(format!("generated events: {e}"));
            }
        }
    }
}

/// The replay file's name for a case: flat in the out directory, so the bundle lists and signs it.
pub fn replay_file_name(case_id: &str) -> String {
    format!("replay-{case_id}.ndjson")
}

async fn write_replay(
    ctx: &Ctx<'_>,
    dir: &Path,
    cases_tried: usize,
    minimal: &Tried,
    first: &Tried,
) -> Result<String, GenError> {
    let name = replay_file_name(&ctx.spec.id);
    let line = |role: &str, t: &Tried| {
        json!({
            "role": role,
            "attempt": t.n,
            "event": t.event,
            "mutation": t.mutation,
            "expected": t.judgement.expected,
            "answer": t.judgement.answer,
            "why": t.judgement.why,
        })
    };
    let mut text = serde_json::to_string(&json!({
        "format": "mtor-cert/replay/1",
        "case": ctx.spec.id,
        "kind": ctx.spec.kind,
        "seed": ctx.run_seed,
        "case_seed": ctx.seed,
        "cases_tried": cases_tried,
        "reproduce": format!("mtor-cert replay {} --bundle {}", ctx.spec.id, dir.display()),
    }))?;
    for (role, t) in [("minimal", minimal), ("first-failure", first)] {
        text.push('\n');
        text.push_str(&serde_json::to_string(&line(role, t))?);
    }
    text.push('\n');
    let path = dir.join(&name);
    tokio::fs::write(&path, text)
        .await
        .map_err(|source| GenError::Io { path, source })?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Arc<Contract> {
        Arc::new(Contract::embedded().expect("contract"))
    }

    fn probe_reply(probe: &str) -> Item {
        Item::Frame {
            seq: 99,
            event: Some(
                json!({"proto": "MTOR/1", "type": "error", "id": "r2", "ts": "2026-01-01T00:00:00Z", "corr": probe, "body": {"code": "NOT_FOUND", "message": "m", "ref": probe}}),
            ),
        }
    }

    #[test]
    fn the_oracle_follows_the_frame_level_table() {
        let c = contract();
        let valid = json!({"proto": "MTOR/1", "type": "intent.fetch", "id": "a1", "ts": "2026-01-01T00:00:00Z", "corr": null, "body": {"intent_id": "x"}});
        assert_eq!(
            expectation(&valid, &c),
            Expectation::Reply {
                kind: "intent.fetch".into()
            }
        );
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = valid.clone();
            f(&mut v);
            expectation(&v, &c)
        };
        let err = |code, r: Option<&str>| Expectation::Error {
            code,
            reference: r.map(str::to_owned),
        };
        assert_eq!(
            with(&|v| v["proto"] = json!("MTOR/2")),
            err("UNSUPPORTED_PROTOCOL", Some("a1"))
        );
        assert_eq!(
            with(&|v| v["proto"] = json!(1)),
            err("INVALID_EVENT", Some("a1"))
        );
        assert_eq!(
            with(&|v| v["type"] = json!("no.such")),
            err("UNKNOWN_TYPE", Some("a1"))
        );
        assert_eq!(
            with(&|v| v["type"] = json!("task.result")),
            err("WRONG_CHANNEL", Some("a1"))
        );
        assert_eq!(
            with(&|v| v["type"] = json!("wallet.mint")),
            err("FORBIDDEN", Some("a1"))
        );
        assert_eq!(
            with(&|v| v["id"] = json!("a b")),
            err("INVALID_EVENT", None)
        );
        assert_eq!(
            with(&|v| v["body"]["x"] = json!(1)),
            err("INVALID_EVENT", Some("a1"))
        );
        let submit = json!({"proto": "MTOR/1", "type": "intent.submit", "id": "a1", "ts": "2026-01-01T00:00:00Z", "corr": null,
            "body": {"intent": "cert.probe", "input": {"nonce": ""}, "max_cost": 1000, "idempotency_key": "k"}});
        assert_eq!(expectation(&submit, &c), Expectation::RejectedInput);
    }

    #[test]
    fn the_judge_wants_one_right_answer_and_a_working_connection() {
        let c = contract();
        let sent = json!({"proto": "MTOR/1", "type": "nonsense.type", "id": "g1", "ts": "2026-01-01T00:00:00Z", "corr": null, "body": {}});
        let answer = |code: &str, r: Value| Item::Frame {
            seq: 1,
            event: Some(
                json!({"proto": "MTOR/1", "type": "error", "id": "r1", "ts": "2026-01-01T00:00:00Z", "corr": "g1", "body": {"code": code, "message": "m", "ref": r}}),
            ),
        };
        let ok = judge_attempt(
            &c,
            &sent,
            "p1",
            &[answer("UNKNOWN_TYPE", json!("g1")), probe_reply("p1")],
        );
        assert_eq!(ok.verdict, AttemptVerdict::Pass, "{ok:?}");
        let wrong = judge_attempt(
            &c,
            &sent,
            "p1",
            &[answer("INVALID_EVENT", json!("g1")), probe_reply("p1")],
        );
        assert_eq!(wrong.verdict, AttemptVerdict::Fail);
        let no_ref = judge_attempt(
            &c,
            &sent,
            "p1",
            &[answer("UNKNOWN_TYPE", Value::Null), probe_reply("p1")],
        );
        assert!(no_ref.why.contains("LIM-5"), "{no_ref:?}");
        let dead = judge_attempt(&c, &sent, "p1", &[answer("UNKNOWN_TYPE", json!("g1"))]);
        assert!(dead.why.contains("LIM-6"), "{dead:?}");
        let silent = judge_attempt(&c, &sent, "p1", &[probe_reply("p1")]);
        assert_eq!(silent.verdict, AttemptVerdict::Fail);
        let limited = judge_attempt(
            &c,
            &sent,
            "p1",
            &[answer("RATE_LIMITED", json!("g1")), probe_reply("p1")],
        );
        assert_eq!(limited.verdict, AttemptVerdict::Inconclusive);
    }

    #[test]
    fn the_same_seed_generates_the_same_events_and_every_label_is_confirmed() {
        let c = contract();
        let params = GenParams::default();
        let a = sample(c.clone(), 7, &params, 300);
        let b = sample(c.clone(), 7, &params, 300);
        assert_eq!(a.len(), 300);
        assert_eq!(a, b);
        assert_ne!(a, sample(c.clone(), 8, &params, 300));
        let invalid = a.iter().filter(|g| g.mutation.is_some()).count();
        assert!((150..=270).contains(&invalid), "{invalid} invalid of 300");
        let mut codes = std::collections::BTreeSet::new();
        for g in &a {
            match expectation(&g.event, &c) {
                Expectation::Reply { .. } => assert!(g.mutation.is_none()),
                Expectation::Error { code, .. } => {
                    assert!(g.mutation.is_some());
                    codes.insert(code);
                }
                Expectation::RejectedInput => {
                    codes.insert("rejected INVALID_EVENT");
                }
                Expectation::Unspecified => panic!("{g:?}"),
            }
        }
        for want in [
            "INVALID_EVENT",
            "UNKNOWN_TYPE",
            "WRONG_CHANNEL",
            "UNSUPPORTED_PROTOCOL",
            "rejected INVALID_EVENT",
        ] {
            assert!(codes.contains(want), "{want} never generated: {codes:?}");
        }
    }

    #[test]
    fn mutations_land_where_they_say() {
        let mut v = json!({"a": {"b": "xy"}, "c": 1});
        assert_eq!(
            Mutation::Drop { at: 1 }.apply(&mut v.clone()),
            "dropped /a/b"
        );
        assert_eq!(
            Mutation::Lengthen { at: 0, by: 2 }.apply(&mut v),
            "/a/b lengthened by 2 to 4 characters"
        );
        assert_eq!(v["a"]["b"], "xyaa");
        assert_eq!(Mutation::Number { at: 0, with: 0 }.apply(&mut v), "/c = -1");
        assert!(remove_at(&mut v, "/a/b"));
        assert_eq!(v, json!({"a": {}, "c": -1}));
    }
}

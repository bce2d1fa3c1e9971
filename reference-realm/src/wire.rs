//! The wire: frame limits, envelope parsing, schema checks, error codes and event constructors.
//!
//! Every inbound frame goes through [`Contract::parse`], which checks, in order: size
//! (`FRAME_TOO_LARGE`), nesting depth on the raw text *before* any JSON parser recurses
//! (`TOO_DEEP`), JSON syntax (`BAD_JSON`), the protocol name (`UNSUPPORTED_PROTOCOL`), the type
//! (`UNKNOWN_TYPE`), the channel (`WRONG_CHANNEL`) and finally the type's JSON Schema
//! (`INVALID_EVENT`). The schemas are the files of `fixtures/schemas`, embedded at build time, so
//! the realm enforces exactly the contract the harness checks.

use std::collections::HashMap;

use jsonschema::Validator;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::identity;
use crate::store::now_rfc3339;

/// The protocol name every envelope carries.
pub const PROTO: &str = "MTOR/1";

/// MTOR/1 error codes (the exact strings of the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[allow(missing_docs)]
pub enum Code {
    BadJson,
    BadUtf8,
    FrameTooLarge,
    TooDeep,
    UnsupportedProtocol,
    UnknownType,
    InvalidEvent,
    WrongChannel,
    Unauthenticated,
    BadSignature,
    ChallengeExpired,
    BadToken,
    Forbidden,
    RateLimited,
    QueueFull,
    InsufficientFunds,
    Infeasible,
    CostTooLow,
    IdempotencyConflict,
    NotFound,
    StaleEpoch,
    LeaseExpired,
    Duplicate,
    Cancelled,
    DeadLettered,
    WorkerFailed,
    BadInput,
    Timeout,
    Internal,
    ShuttingDown,
}

impl Code {
    /// The code's wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "BAD_JSON",
            Self::BadUtf8 => "BAD_UTF8",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::TooDeep => "TOO_DEEP",
            Self::UnsupportedProtocol => "UNSUPPORTED_PROTOCOL",
            Self::UnknownType => "UNKNOWN_TYPE",
            Self::InvalidEvent => "INVALID_EVENT",
            Self::WrongChannel => "WRONG_CHANNEL",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::BadSignature => "BAD_SIGNATURE",
            Self::ChallengeExpired => "CHALLENGE_EXPIRED",
            Self::BadToken => "BAD_TOKEN",
            Self::Forbidden => "FORBIDDEN",
            Self::RateLimited => "RATE_LIMITED",
            Self::QueueFull => "QUEUE_FULL",
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::Infeasible => "INFEASIBLE",
            Self::CostTooLow => "COST_TOO_LOW",
            Self::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            Self::NotFound => "NOT_FOUND",
            Self::StaleEpoch => "STALE_EPOCH",
            Self::LeaseExpired => "LEASE_EXPIRED",
            Self::Duplicate => "DUPLICATE",
            Self::Cancelled => "CANCELLED",
            Self::DeadLettered => "DEAD_LETTERED",
            Self::WorkerFailed => "WORKER_FAILED",
            Self::BadInput => "BAD_INPUT",
            Self::Timeout => "TIMEOUT",
            Self::Internal => "INTERNAL",
            Self::ShuttingDown => "SHUTTING_DOWN",
        }
    }

    /// Parses a wire string.
    pub fn parse(s: &str) -> Option<Self> {
        ALL_CODES.iter().copied().find(|c| c.as_str() == s)
    }
}

const ALL_CODES: [Code; 30] = [
    Code::BadJson,
    Code::BadUtf8,
    Code::FrameTooLarge,
    Code::TooDeep,
    Code::UnsupportedProtocol,
    Code::UnknownType,
    Code::InvalidEvent,
    Code::WrongChannel,
    Code::Unauthenticated,
    Code::BadSignature,
    Code::ChallengeExpired,
    Code::BadToken,
    Code::Forbidden,
    Code::RateLimited,
    Code::QueueFull,
    Code::InsufficientFunds,
    Code::Infeasible,
    Code::CostTooLow,
    Code::IdempotencyConflict,
    Code::NotFound,
    Code::StaleEpoch,
    Code::LeaseExpired,
    Code::Duplicate,
    Code::Cancelled,
    Code::DeadLettered,
    Code::WorkerFailed,
    Code::BadInput,
    Code::Timeout,
    Code::Internal,
    Code::ShuttingDown,
];

/// Which WebSocket endpoint a frame arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `GET /v1/client`.
    Client,
    /// `GET /v1/worker`.
    Worker,
    /// `GET /v1/federation`.
    Federation,
}

impl Channel {
    /// The message types a peer may send to the realm on this channel.
    pub fn inbound(self) -> &'static [&'static str] {
        match self {
            Self::Client => &[
                "session.hello",
                "session.proof",
                "intent.submit",
                "intent.cancel",
                "intent.fetch",
                "wallet.mint",
            ],
            Self::Worker => &[
                "worker.register",
                "session.proof",
                "worker.heartbeat",
                "task.progress",
                "task.result",
                "task.failure",
                "worker.drain",
            ],
            Self::Federation => &[
                "federation.hello",
                "session.proof",
                "federation.forward",
                "federation.settle",
            ],
        }
    }
}

/// A frame the realm refused: the code, a message, and the offending frame's id when readable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct WireError {
    /// The error code.
    pub code: Code,
    /// A human-readable explanation (at most 512 chars on the wire).
    pub message: String,
    /// The id of the offending frame, when it could be read.
    pub ref_id: Option<String>,
}

impl WireError {
    /// A new wire error.
    pub fn new(code: Code, message: impl Into<String>, ref_id: Option<String>) -> Self {
        Self {
            code,
            message: message.into(),
            ref_id,
        }
    }

    /// The `error` event reporting this error.
    pub fn to_event(&self) -> String {
        error_event(self.code, &self.message, self.ref_id.as_deref(), None)
    }
}

/// A frame that passed rows 1-9 of the frame-level checks.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The message type, when it is a string (then one of the channel's inbound types).
    pub kind: Option<String>,
    /// The frame's id when readable.
    pub id: Option<String>,
    /// The parsed object.
    pub value: Value,
}

/// A parsed, schema-valid inbound event.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The message type.
    pub kind: String,
    /// The sender's event id.
    pub id: String,
    /// The id this event answers, if any.
    pub corr: Option<String>,
    /// The body (valid against the type's schema).
    pub body: Value,
}

/// Errors of building the contract from the embedded schemas (a build defect).
#[derive(Debug, thiserror::Error)]
#[error("embedded schema {name} is invalid: {reason}")]
pub struct ContractError {
    /// The schema file.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

macro_rules! schemas {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../fixtures/schemas/", $name, ".schema.json")))),*]
    };
}

/// Every message type's schema, embedded at build time.
const MESSAGE_SCHEMAS: &[(&str, &str)] = schemas![
    "session.hello",
    "session.challenge",
    "session.proof",
    "session.ready",
    "intent.submit",
    "intent.accepted",
    "intent.rejected",
    "intent.progress",
    "intent.result",
    "intent.failed",
    "intent.cancel",
    "intent.cancelled",
    "intent.fetch",
    "intent.status",
    "queue.update",
    "error",
    "wallet.mint",
    "wallet.minted",
    "worker.register",
    "worker.enrolled",
    "worker.heartbeat",
    "task.assign",
    "task.progress",
    "task.result",
    "task.failure",
    "task.receipt",
    "task.cancel",
    "worker.drain",
    "federation.hello",
    "federation.forward",
    "federation.settle",
];

/// Intent input schemas, embedded at build time.
const INPUT_SCHEMAS: &[(&str, &str)] = &[
    (
        "cert.probe",
        include_str!("../../fixtures/schemas/intents/cert.probe.input.schema.json"),
    ),
    (
        "analyze-signal",
        include_str!("../../fixtures/schemas/intents/analyze-signal.input.schema.json"),
    ),
];

/// Intent output schemas, embedded at build time.
const OUTPUT_SCHEMAS: &[(&str, &str)] = &[
    (
        "cert.probe",
        include_str!("../../fixtures/schemas/intents/cert.probe.output.schema.json"),
    ),
    (
        "analyze-signal",
        include_str!("../../fixtures/schemas/intents/analyze-signal.output.schema.json"),
    ),
];

/// The compiled contract: one validator per message type and per intent input.
pub struct Contract {
    messages: HashMap<&'static str, Validator>,
    inputs: HashMap<&'static str, Validator>,
    outputs: HashMap<&'static str, Validator>,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("messages", &self.messages.len())
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

fn compile(name: &str, text: &str) -> Result<Validator, ContractError> {
    let err = |reason: String| ContractError {
        name: name.to_owned(),
        reason,
    };
    let schema: Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    jsonschema::draft202012::new(&schema).map_err(|e| err(e.to_string()))
}

impl Contract {
    /// Compiles the embedded schemas.
    pub fn new() -> Result<Self, ContractError> {
        let mut messages = HashMap::new();
        for (name, text) in MESSAGE_SCHEMAS {
            messages.insert(*name, compile(name, text)?);
        }
        let mut inputs = HashMap::new();
        for (name, text) in INPUT_SCHEMAS {
            inputs.insert(*name, compile(name, text)?);
        }
        let mut outputs = HashMap::new();
        for (name, text) in OUTPUT_SCHEMAS {
            outputs.insert(*name, compile(name, text)?);
        }
        Ok(Self {
            messages,
            inputs,
            outputs,
        })
    }

    /// Checks rows 1-9 of the frame-level table (size, JSON, depth, object, protocol, type,
    /// channel) and returns the frame for the session checks (rows 10-11) and
    /// [`Contract::validate`] (row 12).
    pub fn pre_parse(
        &self,
        text: &str,
        channel: Channel,
        max_frame_bytes: usize,
        max_depth: usize,
    ) -> Result<Frame, WireError> {
        if text.len() > max_frame_bytes {
            return Err(WireError::new(
                Code::FrameTooLarge,
                format!(
                    "frame is {} bytes; the limit is {max_frame_bytes}",
                    text.len()
                ),
                None,
            ));
        }
        // Depth is measured on the raw text before any recursive parser runs, so that a frame
        // of a million `[` cannot exhaust the stack; such a frame is then checked for JSON
        // syntax by an iterative scanner, because "not JSON" outranks "too deep".
        if let Some(depth) = exceeds_depth(text, max_depth) {
            if !is_json_iterative(text) {
                return Err(WireError::new(Code::BadJson, "frame is not JSON", None));
            }
            return Err(WireError::new(
                Code::TooDeep,
                format!("nesting exceeds depth {max_depth} (reached {depth})"),
                None,
            ));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| WireError::new(Code::BadJson, format!("frame is not JSON: {e}"), None))?;
        if !value.is_object() {
            return Err(WireError::new(
                Code::InvalidEvent,
                "an event must be a JSON object",
                None,
            ));
        }
        let ref_id = value
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| identity::is_uid(id))
            .map(str::to_owned);
        if let Some(Value::String(p)) = value.get("proto") {
            if p != PROTO {
                return Err(WireError::new(
                    Code::UnsupportedProtocol,
                    format!("this realm speaks {PROTO} only"),
                    ref_id,
                ));
            }
        }
        let kind = value.get("type").and_then(Value::as_str).map(str::to_owned);
        if let Some(kind) = &kind {
            if !self.messages.contains_key(kind.as_str()) {
                return Err(WireError::new(
                    Code::UnknownType,
                    "unknown message type",
                    ref_id,
                ));
            }
            if !channel.inbound().contains(&kind.as_str()) {
                return Err(WireError::new(
                    Code::WrongChannel,
                    format!("{kind} may not be sent to the realm on this channel"),
                    ref_id,
                ));
            }
        }
        Ok(Frame {
            kind,
            id: ref_id,
            value,
        })
    }

    /// Row 12: validates the envelope and body against the type's schema.
    pub fn validate(&self, frame: Frame) -> Result<Envelope, WireError> {
        let Frame { kind, id, value } = frame;
        let invalid = |m: String| WireError::new(Code::InvalidEvent, m, id.clone());
        let Some(kind) = kind else {
            return Err(invalid("type is missing or not a string".to_owned()));
        };
        let Some(validator) = self.messages.get(kind.as_str()) else {
            return Err(invalid("unknown type".to_owned()));
        };
        if let Some(first) = validator.iter_errors(&value).next() {
            // Only the location and the rule: an error must not echo the frame's content.
            let mut message = format!(
                "schema violation at {:?} ({})",
                first.instance_path().as_str(),
                first.kind().keyword()
            );
            truncate(&mut message, 512);
            return Err(invalid(message));
        }
        let Value::Object(mut obj) = value else {
            return Err(invalid("an event must be a JSON object".to_owned()));
        };
        let corr = obj.get("corr").and_then(Value::as_str).map(str::to_owned);
        let body = obj
            .remove("body")
            .unwrap_or_else(|| Value::Object(Map::new()));
        Ok(Envelope {
            kind,
            id: id.unwrap_or_default(),
            corr,
            body,
        })
    }

    /// Parses and fully checks one frame (rows 1-9 and 12; no session checks).
    pub fn parse(
        &self,
        text: &str,
        channel: Channel,
        max_frame_bytes: usize,
        max_depth: usize,
    ) -> Result<Envelope, WireError> {
        let frame = self.pre_parse(text, channel, max_frame_bytes, max_depth)?;
        self.validate(frame)
    }

    /// Checks an intent's output against its output schema.
    pub fn check_output(&self, intent: &str, output: &Value) -> Result<(), String> {
        match self.outputs.get(intent) {
            Some(v) => match v.iter_errors(output).next() {
                Some(e) => Err(format!(
                    "output violates its schema at {:?} ({})",
                    e.instance_path().as_str(),
                    e.kind().keyword()
                )),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Checks an intent's input against its input schema; `Err` carries the first violation.
    /// Intents without an input schema are accepted as they are.
    pub fn check_input(&self, intent: &str, input: &Value) -> Result<(), String> {
        match self.inputs.get(intent) {
            Some(v) => match v.iter_errors(input).next() {
                Some(e) => {
                    // Location and rule only: the message must not echo the input.
                    let mut m = format!(
                        "input violates its schema at {:?} ({})",
                        e.instance_path().as_str(),
                        e.kind().keyword()
                    );
                    truncate(&mut m, 512);
                    Err(m)
                }
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Checks an outbound event against its schema (debug aid and tests).
    pub fn check_outbound(&self, event: &Value) -> Result<(), String> {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let v = self
            .messages
            .get(kind)
            .ok_or_else(|| format!("unknown type {kind:?}"))?;
        match v.iter_errors(event).next() {
            Some(e) => Err(format!("{e} at {}", e.instance_path().as_str())),
            None => Ok(()),
        }
    }
}

/// Returns `Some(depth)` when the JSON text nests deeper than `max`, counting `{` and `[` outside
/// strings; the text need not be valid JSON.
pub fn exceeds_depth(text: &str, max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(depth);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Whether `text` is one JSON value (RFC 8259), checked without recursion so that any depth is
/// safe. Used only for frames already known to be too deep for the recursive parser.
pub fn is_json_iterative(text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Ctx {
        /// In an array: expecting a value or `]` (first) / `,` or `]` (after a value).
        Array { after_value: bool },
        /// In an object: expecting key / colon / value / `,` or `}`.
        Object { state: u8 },
    }
    let b = text.as_bytes();
    let mut i = 0usize;
    let mut stack: Vec<Ctx> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
            *i += 1;
        }
    };
    // Scans a string starting at b[i] == '"'; returns the index after it.
    let string = |mut i: usize| -> Option<usize> {
        i += 1;
        while i < b.len() {
            match b[i] {
                b'"' => return Some(i + 1),
                b'\\' => {
                    let e = *b.get(i + 1)?;
                    if e == b'u' {
                        let hex = b.get(i + 2..i + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i += 6;
                    } else if matches!(e, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') {
                        i += 2;
                    } else {
                        return None;
                    }
                }
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
        None
    };
    let number = |mut i: usize| -> Option<usize> {
        let start = i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !b.get(i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !b.get(i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        (i > start).then_some(i)
    };
    // `expect_value`: the next token must start a value.
    let mut expect_value = true;
    let mut done = false;
    loop {
        skip_ws(&mut i);
        if expect_value {
            let Some(&c) = b.get(i) else { return false };
            match c {
                b'{' => {
                    stack.push(Ctx::Object { state: 0 });
                    i += 1;
                    expect_value = false;
                    continue;
                }
                b'[' => {
                    stack.push(Ctx::Array { after_value: false });
                    i += 1;
                    skip_ws(&mut i);
                    if b.get(i) == Some(&b']') {
                        stack.pop();
                        i += 1;
                    } else {
                        continue;
                    }
                }
                b'"' => match string(i) {
                    Some(n) => i = n,
                    None => return false,
                },
                b't' | b'f' | b'n' => {
                    let lit: &[u8] = match c {
                        b't' => b"true",
                        b'f' => b"false",
                        _ => b"null",
                    };
                    if b.get(i..i + lit.len()) != Some(lit) {
                        return false;
                    }
                    i += lit.len();
                }
                _ => match number(i) {
                    Some(n) => i = n,
                    None => return false,
                },
            }
            // A value is complete.
            expect_value = false;
            match stack.last_mut() {
                None => done = true,
                Some(Ctx::Array { after_value }) => *after_value = true,
                Some(Ctx::Object { state }) => *state = 3,
            }
            if done {
                skip_ws(&mut i);
                return i == b.len();
            }
            continue;
        }
        let Some(&c) = b.get(i) else { return false };
        match stack.last_mut() {
            None => return false,
            Some(Ctx::Array { after_value }) => match c {
                b',' if *after_value => {
                    *after_value = false;
                    i += 1;
                    expect_value = true;
                }
                b']' => {
                    stack.pop();
                    i += 1;
                    match stack.last_mut() {
                        None => {
                            skip_ws(&mut i);
                            return i == b.len();
                        }
                        Some(Ctx::Array { after_value }) => *after_value = true,
                        Some(Ctx::Object { state }) => *state = 3,
                    }
                }
                _ => return false,
            },
            Some(Ctx::Object { state }) => match (*state, c) {
                // 0: first key or `}`; 1: key after a comma; 2: colon; 3: `,` or `}`.
                (0 | 1, b'"') => match string(i) {
                    Some(n) => {
                        i = n;
                        *state = 2;
                    }
                    None => return false,
                },
                (2, b':') => {
                    i += 1;
                    expect_value = true;
                }
                (3, b',') => {
                    i += 1;
                    *state = 1;
                }
                (0 | 3, b'}') => {
                    stack.pop();
                    i += 1;
                    match stack.last_mut() {
                        None => {
                            skip_ws(&mut i);
                            return i == b.len();
                        }
                        Some(Ctx::Array { after_value }) => *after_value = true,
                        Some(Ctx::Object { state }) => *state = 3,
                    }
                }
                _ => return false,
            },
        }
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while cut > 0 && !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Builds an outbound event with a fresh id and the current time.
pub fn event(kind: &str, corr: Option<&str>, body: Value) -> String {
    let value = json!({
        "proto": PROTO,
        "type": kind,
        "id": identity::new_id(),
        "ts": now_rfc3339(),
        "corr": corr,
        "body": body,
    });
    value.to_string()
}

/// An `error` event; `ref_id` is the offending frame's id, or `None` when it was unreadable.
pub fn error_event(
    code: Code,
    message: &str,
    ref_id: Option<&str>,
    retry_after_ms: Option<u64>,
) -> String {
    let mut message = message.to_owned();
    truncate(&mut message, 512);
    let mut body = json!({ "code": code.as_str(), "message": message, "ref": ref_id });
    if let (Some(ms), Some(obj)) = (retry_after_ms, body.as_object_mut()) {
        obj.insert("retry_after_ms".to_owned(), json!(ms));
    }
    event("error", ref_id, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert_eq!(exceeds_depth(r#"{"a":[[1]]}"#, 3), None);
        assert_eq!(exceeds_depth(r#"{"a":[[[1]]]}"#, 3), Some(4));
        assert_eq!(exceeds_depth(r#"{"a":"[[[[[[\"[[["}"#, 1), None);
        let deep = "[".repeat(1_000_000);
        assert!(exceeds_depth(&deep, 32).is_some());
    }

    #[test]
    fn iterative_json_check_agrees_with_serde() {
        for t in [
            r#"{"a":[1,2,{"b":null}],"c":"x\\"y","d":-1.5e3}"#,
            "[]",
            "{}",
            "[[[[[]]]]]",
            r#"{"a":1,}"#,
            "[1,]",
            "{\"a\" 1}",
            "[1 2]",
            "tru",
            r#""\u00zz""#,
            "01",
            "[1]]",
            "",
        ] {
            assert_eq!(
                is_json_iterative(t),
                serde_json::from_str::<Value>(t).is_ok(),
                "{t}"
            );
        }
        let deep_ok = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(is_json_iterative(&deep_ok));
        let deep_bad = format!("{}1{}", "[".repeat(100_000), "]".repeat(99_999));
        assert!(!is_json_iterative(&deep_bad));
    }

    #[test]
    fn parse_orders_checks_and_reports_ref() {
        let Ok(c) = Contract::new() else {
            panic!("embedded schemas must compile");
        };
        let parse = |t: &str| c.parse(t, Channel::Client, 1024, 8);
        assert_eq!(
            parse("{not json").map(|_| ()).unwrap_err().code,
            Code::BadJson
        );
        let deep = format!("{}{}", "[".repeat(50), "]".repeat(50));
        assert_eq!(parse(&deep).map(|_| ()).unwrap_err().code, Code::TooDeep);
        let big = format!("\"{}\"", "x".repeat(2000));
        assert_eq!(
            parse(&big).map(|_| ()).unwrap_err().code,
            Code::FrameTooLarge
        );
        let e = parse(r#"{"proto":"MTOR/2","type":"intent.fetch","id":"abc","ts":"2025-01-01T00:00:00Z","corr":null,"body":{}}"#)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            (e.code, e.ref_id.as_deref()),
            (Code::UnsupportedProtocol, Some("abc"))
        );
        let e = parse(r#"{"proto":"MTOR/1","type":"task.result","id":"x1","ts":"2025-01-01T00:00:00Z","corr":null,"body":{}}"#)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code, Code::WrongChannel);
        let e = parse(r#"{"proto":"MTOR/1","type":"intent.fetch","id":"x2","ts":"2025-01-01T00:00:00Z","corr":null,"body":{}}"#)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidEvent);
        let ok = parse(
            r#"{"proto":"MTOR/1","type":"intent.fetch","id":"x3","ts":"2025-01-01T00:00:00Z","corr":null,"body":{"intent_id":"i1"}}"#,
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn error_event_is_schema_valid() {
        let Ok(c) = Contract::new() else {
            panic!("embedded schemas must compile");
        };
        let e: Value = serde_json::from_str(&error_event(Code::BadJson, "x", None, None))
            .unwrap_or(Value::Null);
        assert_eq!(c.check_outbound(&e), Ok(()));
        let e: Value = serde_json::from_str(&error_event(
            Code::RateLimited,
            "slow",
            Some("a1"),
            Some(50),
        ))
        .unwrap_or(Value::Null);
        assert_eq!(c.check_outbound(&e), Ok(()));
    }
}

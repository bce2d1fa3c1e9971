//! The MTOR/1 wire contract: the JSON Schemas of `fixtures/schemas`, embedded at build time.
//!
//! The harness and the reference realm share no Rust code; these schemas are their only agreement.
//! This module compiles them once and validates events, REST bodies and intent payloads against them.

use std::collections::BTreeMap;

use jsonschema::Validator;
use serde::Serialize;
use serde_json::Value;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/schemas.rs"));
}

pub use embedded::SCHEMA_FILES;

/// The envelope's `proto` value for this version of the protocol.
pub const PROTOCOL: &str = "MTOR/1";

/// One broken rule: where in the instance, which schema keyword, and a readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer (RFC 6901) into the checked value; empty for the root.
    pub pointer: String,
    /// The JSON Schema keyword that failed (`required`, `pattern`, ...), or a harness rule name
    /// (`json`, `utf8`, `known-type`) for problems a schema cannot express.
    pub keyword: String,
    /// Which schema reported it (`envelope`, a message type, `rest/health`, ...).
    pub schema: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Why the contract could not be loaded or a schema could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// A schema file is not JSON.
    #[error("schema file {file} is not valid JSON: {source}")]
    SchemaJson {
        /// Path relative to `fixtures/schemas`.
        file: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A schema file is JSON but not a valid draft 2020-12 schema.
    #[error("schema file {file} is not a valid JSON Schema 2020-12 document: {message}")]
    SchemaInvalid {
        /// Path relative to `fixtures/schemas`.
        file: String,
        /// The compiler's explanation.
        message: String,
    },
    /// The contract has no `envelope.schema.json`.
    #[error("the contract has no envelope.schema.json")]
    NoEnvelope,
    /// A schema was asked for by a name the contract does not have.
    #[error("no schema named `{name}`; known: {known}")]
    UnknownSchema {
        /// The name asked for.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
}

/// The compiled contract.
pub struct Contract {
    envelope: Validator,
    /// Message schemas keyed by the envelope `type` they describe.
    messages: BTreeMap<String, Validator>,
    /// Other schemas keyed by their path without `.schema.json` (`rest/health`, `intents/cert.probe.input`).
    others: BTreeMap<String, Validator>,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("messages", &self.messages.keys().collect::<Vec<_>>())
            .field("others", &self.others.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Contract {
    /// Compiles the schemas embedded in this binary.
    pub fn embedded() -> Result<Self, ContractError> {
        Self::from_files(SCHEMA_FILES.iter().copied())
    }

    /// Compiles a contract from `(path relative to fixtures/schemas, schema text)` pairs.
    ///
    /// Top-level `<type>.schema.json` files are message schemas; files in sub-folders are other
    /// schemas (REST bodies, intent payloads, harness results).
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ContractError> {
        let mut envelope = None;
        let mut messages = BTreeMap::new();
        let mut others = BTreeMap::new();
        for (file, text) in files {
            let Some(name) = file.strip_suffix(".schema.json") else {
                continue;
            };
            let schema: Value =
                serde_json::from_str(text).map_err(|source| ContractError::SchemaJson {
                    file: file.to_owned(),
                    source,
                })?;
            let validator = jsonschema::draft202012::new(&schema).map_err(|e| {
                ContractError::SchemaInvalid {
                    file: file.to_owned(),
                    message: e.to_string(),
                }
            })?;
            if name == "envelope" {
                envelope = Some(validator);
            } else if name.contains('/') {
                others.insert(name.to_owned(), validator);
            } else {
                messages.insert(name.to_owned(), validator);
            }
        }
        Ok(Self {
            envelope: envelope.ok_or(ContractError::NoEnvelope)?,
            messages,
            others,
        })
    }

    /// Every message type the contract defines, sorted.
    pub fn message_types(&self) -> impl Iterator<Item = &str> {
        self.messages.keys().map(String::as_str)
    }

    /// Names of the non-message schemas (`rest/health`, `intents/cert.probe.input`, ...), sorted.
    pub fn other_schemas(&self) -> impl Iterator<Item = &str> {
        self.others.keys().map(String::as_str)
    }

    /// Validates one event: the envelope, then the schema its `type` names, then (for events that
    /// carry an intent's input) the intent's input schema when the contract defines one.
    ///
    /// Returns every violation found, sorted by pointer; an empty list means the event is valid.
    pub fn validate_event(&self, event: &Value) -> Vec<Violation> {
        let mut found = collect(&self.envelope, "envelope", event, "");
        // A missing or non-string type is already reported by the envelope schema.
        if let Some(kind) = event.get("type").and_then(Value::as_str) {
            match self.messages.get(kind) {
                Some(validator) => {
                    found.extend(collect(validator, kind, event, ""));
                    found.extend(self.validate_intent_input(kind, event));
                }
                None => found.push(Violation {
                    pointer: "/type".into(),
                    keyword: "known-type".into(),
                    schema: "envelope".into(),
                    message: format!("`{kind}` is not a message type of {PROTOCOL}"),
                }),
            }
        }
        found.sort_by(|a, b| (&a.pointer, &a.keyword).cmp(&(&b.pointer, &b.keyword)));
        found.dedup_by(|a, b| a.pointer == b.pointer && a.keyword == b.keyword);
        found
    }

    /// Validates `value` against a named non-message schema or a message type's schema.
    pub fn validate_with(
        &self,
        name: &str,
        value: &Value,
    ) -> Result<Vec<Violation>, ContractError> {
        let validator = self
            .others
            .get(name)
            .or_else(|| self.messages.get(name))
            .or_else(|| (name == "envelope").then_some(&self.envelope))
            .ok_or_else(|| ContractError::UnknownSchema {
                name: name.to_owned(),
                known: std::iter::once("envelope")
                    .chain(self.message_types())
                    .chain(self.other_schemas())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(collect(validator, name, value, ""))
    }

    /// `intent.submit`, `task.assign` and `federation.forward` carry an intent's input in
    /// `body.input`; check it against `intents/<intent>.input` when the contract has that schema.
    fn validate_intent_input(&self, kind: &str, event: &Value) -> Vec<Violation> {
        if !matches!(kind, "intent.submit" | "task.assign" | "federation.forward") {
            return Vec::new();
        }
        let body = event.get("body");
        let intent = body.and_then(|b| b.get("intent")).and_then(Value::as_str);
        let input = body.and_then(|b| b.get("input"));
        match (intent, input) {
            (Some(intent), Some(input)) => {
                let name = format!("intents/{intent}.input");
                match self.others.get(&name) {
                    Some(validator) => collect(validator, &name, input, "/body/input"),
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }
}

fn collect(validator: &Validator, schema: &str, value: &Value, prefix: &str) -> Vec<Violation> {
    validator
        .iter_errors(value)
        .map(|e| Violation {
            pointer: format!("{prefix}{}", e.instance_path().as_str()),
            keyword: e.kind().keyword().to_owned(),
            schema: schema.to_owned(),
            message: e.to_string(),
        })
        .collect()
}

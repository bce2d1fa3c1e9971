//! `lint-events`: offline validation of captured events against the contract.
//!
//! Applicants run it over captured traffic: single JSON files (one event per file) or NDJSON
//! captures (one event a line). Every event gets every violation it has, located by file, line and
//! JSON pointer.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::contract::{Contract, ContractError, Violation};

/// One event read from an input file, located by its 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The file it came from.
    pub file: PathBuf,
    /// 1-based line where the event starts.
    pub line: usize,
    /// The parsed event, or why it could not be parsed.
    pub event: Result<Value, Violation>,
}

/// The findings for one invalid event.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The file it came from.
    pub file: PathBuf,
    /// 1-based line where the event starts.
    pub line: usize,
    /// The event's `id`, when it has a readable one.
    pub id: Option<String>,
    /// The event's `type`, when it has a readable one.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Every rule it breaks.
    pub violations: Vec<Violation>,
}

/// The outcome of linting a set of inputs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Events read.
    pub events: usize,
    /// Events that broke at least one rule.
    pub invalid: usize,
    /// One entry per invalid event, in input order.
    pub findings: Vec<Finding>,
}

/// Why an input could not be linted at all (as opposed to holding invalid events).
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The path given.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `--schema` named a schema the contract does not have.
    #[error(transparent)]
    Schema(#[from] ContractError),
}

/// Reads the events in one file.
///
/// A `.ndjson` or `.jsonl` file is one event a line. Any other file is one JSON document; if it
/// does not parse as one but has several non-empty lines, it is read as NDJSON.
pub fn read_events(path: &Path) -> Result<Vec<Located>, LintError> {
    let bytes = std::fs::read(path).map_err(|source| LintError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let ndjson = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("ndjson") || e.eq_ignore_ascii_case("jsonl"));
    if !ndjson {
        if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
            let line = first_content_line(&bytes);
            return Ok(vec![Located {
                file: path.to_owned(),
                line,
                event: Ok(value),
            }]);
        }
        let content_lines = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
            .count();
        if content_lines <= 1 {
            let line = first_content_line(&bytes);
            return Ok(vec![Located {
                file: path.to_owned(),
                line,
                event: parse(&bytes),
            }]);
        }
    }
    Ok(bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, l)| Located {
            file: path.to_owned(),
            line: i + 1,
            event: parse(l),
        })
        .collect())
}

fn first_content_line(bytes: &[u8]) -> usize {
    let skipped = bytes
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .filter(|b| **b == b'\n')
        .count();
    skipped + 1
}

fn parse(bytes: &[u8]) -> Result<Value, Violation> {
    let text = std::str::from_utf8(bytes).map_err(|e| Violation {
        pointer: String::new(),
        keyword: "utf8".into(),
        schema: "envelope".into(),
        message: format!(
            "not valid UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        ),
    })?;
    serde_json::from_str(text).map_err(|e| Violation {
        pointer: String::new(),
        keyword: "json".into(),
        schema: "envelope".into(),
        message: format!("not a JSON document: {e}"),
    })
}

/// Lints every event in `paths`. With `schema`, each document is checked against that named
/// schema (for instance `rest/health`) instead of as an event.
pub fn lint(
    contract: &Contract,
    paths: &[PathBuf],
    schema: Option<&str>,
) -> Result<Summary, LintError> {
    let mut summary = Summary::default();
    for path in paths {
        for located in read_events(path)? {
            summary.events += 1;
            let (violations, value) = match located.event {
                Err(v) => (vec![v], None),
                Ok(value) => {
                    let v = match schema {
                        Some(name) => contract.validate_with(name, &value)?,
                        None => contract.validate_event(&value),
                    };
                    (v, Some(value))
                }
            };
            if violations.is_empty() {
                continue;
            }
            summary.invalid += 1;
            let field = |k: &str| {
                value
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            summary.findings.push(Finding {
                file: located.file,
                line: located.line,
                id: field("id"),
                kind: field("type"),
                violations,
            });
        }
    }
    Ok(summary)
}

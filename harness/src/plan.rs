//! Pinned test plans: data in `suites/`, embedded in the binary, identified by id, semver and the
//! sha256 of their exact bytes.
//!
//! A plan lists cases; each case has a stable id, the requirement IDs it checks, its level, the
//! `kind` (which Rust code runs it), parameters, an expectation and remediation advice.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/plans.rs"));
}

pub use embedded::PLAN_FILES;

/// The requirement level a case checks; it decides whether a broken expectation is FAIL or WARN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// A MUST: a broken expectation is a FAIL.
    Must,
    /// A SHOULD: a broken expectation is a WARN.
    Should,
    /// A MAY: informational only.
    May,
}

/// One case of a plan, as written in the plan file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    /// Stable id, `<suite>.<name>` in lowercase with dashes (`events.bad-json`).
    pub id: String,
    /// One-line title.
    pub title: String,
    /// Requirement IDs of `docs/protocol.md` this case checks.
    pub requirements: Vec<String>,
    /// MUST, SHOULD or MAY.
    pub level: Level,
    /// The case kind: which code in `case` runs it.
    pub kind: String,
    /// What a conforming realm does.
    pub expectation: String,
    /// What to change when the case does not pass.
    pub remediation: String,
    /// Time budget in milliseconds; the case is stopped and judged UNKNOWN past it.
    #[serde(default)]
    pub budget_ms: Option<u64>,
    /// Kind-specific parameters.
    #[serde(default)]
    pub params: toml::Table,
    /// What the target must offer for the case to apply (see [`CAPABILITIES`]); a case whose
    /// target lacks one is not applicable and is left out of the run, never skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

/// Target capabilities a case may require. `container`: the realm runs in a container the harness
/// started (`--image`), so container faults (kill, restart) can be applied. `worker-container`:
/// the image also says how to run a worker node from it (label `org.mtor.cert.worker`), so the
/// harness can build a realm-plus-workers topology and pause or cut off a worker container.
/// `process`: the harness started the realm's process itself (`--spawn`, or the reference realm
/// by default), so it can SIGKILL it and start the same command again on the same data.
pub const CAPABILITIES: &[&str] = &["container", "worker-container", "process"];

impl CaseSpec {
    /// The suite a case belongs to: its id up to the first dot.
    pub fn suite(&self) -> &str {
        self.id.split('.').next().unwrap_or(&self.id)
    }

    /// The case's parameters as JSON (for kinds and for the report).
    pub fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    id: String,
    version: String,
    protocol: String,
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_budget")]
    default_budget_ms: u64,
    #[serde(rename = "case", default)]
    cases: Vec<CaseSpec>,
}

fn default_budget() -> u64 {
    10_000
}

/// A loaded, checked plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `mtor-1.0/standard`.
    pub id: String,
    /// Semantic version of the plan.
    pub version: String,
    /// Protocol the plan certifies (`MTOR/1`).
    pub protocol: String,
    /// Title.
    pub title: String,
    /// Longer description.
    pub description: String,
    /// sha256 of the plan file's exact bytes, lowercase hex.
    pub hash: String,
    /// Where it came from: `embedded:<path>` or a file path.
    pub source: String,
    /// Budget of a case that names none.
    pub default_budget_ms: u64,
    /// The cases, in plan order.
    pub cases: Vec<CaseSpec>,
}

/// Why a plan could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file could not be read.
    #[error("cannot read plan {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the plan's shape.
    #[error("plan {source_name} is malformed: {message}")]
    Malformed {
        /// Where the plan came from.
        source_name: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parses but breaks a rule of plans.
    #[error("plan {source_name}: {message}")]
    Invalid {
        /// Where the plan came from.
        source_name: String,
        /// Which rule, and where.
        message: String,
    },
    /// No plan has that id.
    #[error("no plan `{0}`; `mtor-cert plans` lists the plans this binary carries")]
    NotFound(String),
}

impl Plan {
    /// Parses and checks a plan from its text.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, PlanError> {
        let file: PlanFile = toml::from_str(text).map_err(|e| PlanError::Malformed {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| PlanError::Invalid {
            source_name: source_name.to_owned(),
            message,
        };
        if !is_semver(&file.version) {
            return Err(invalid(format!(
                "version `{}` is not MAJOR.MINOR.PATCH",
                file.version
            )));
        }
        if file.cases.is_empty() {
            return Err(invalid("has no cases".into()));
        }
        let mut ids = BTreeSet::new();
        for case in &file.cases {
            if !is_case_id(&case.id) {
                return Err(invalid(format!(
                    "case id `{}` is not `<suite>.<name>` in lowercase letters, digits and dashes",
                    case.id
                )));
            }
            if !ids.insert(case.id.as_str()) {
                return Err(invalid(format!("case id `{}` appears twice", case.id)));
            }
            if case.requirements.is_empty() {
                return Err(invalid(format!("case `{}` checks no requirement", case.id)));
            }
            if let Some(bad) = case.requirements.iter().find(|r| !is_requirement_id(r)) {
                return Err(invalid(format!(
                    "case `{}`: `{bad}` is not a requirement ID like `EVT-3`",
                    case.id
                )));
            }
            if let Some(bad) = case
                .requires
                .iter()
                .find(|r| !CAPABILITIES.contains(&r.as_str()))
            {
                return Err(invalid(format!(
                    "case `{}` requires `{bad}`, which is not a target capability ({})",
                    case.id,
                    CAPABILITIES.join(", ")
                )));
            }
            if case.expectation.trim().is_empty() || case.remediation.trim().is_empty() {
                return Err(invalid(format!(
                    "case `{}` needs an expectation and remediation advice",
                    case.id
                )));
            }
        }
        Ok(Self {
            id: file.id,
            version: file.version,
            protocol: file.protocol,
            title: file.title,
            description: file.description,
            hash: hex::encode(Sha256::digest(text.as_bytes())),
            source: source_name.to_owned(),
            default_budget_ms: file.default_budget_ms,
            cases: file.cases,
        })
    }

    /// Every plan embedded in this binary, sorted by id.
    pub fn embedded() -> Result<Vec<Self>, PlanError> {
        let mut plans = PLAN_FILES
            .iter()
            .map(|(path, text)| Self::parse(&format!("embedded:suites/{path}"), text))
            .collect::<Result<Vec<_>, _>>()?;
        plans.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(plans)
    }

    /// Finds a plan by id among the embedded ones, or loads it from a file path when `name`
    /// ends in `.toml`.
    pub fn find(name: &str) -> Result<Self, PlanError> {
        if name.ends_with(".toml") {
            let text =
                std::fs::read_to_string(Path::new(name)).map_err(|source| PlanError::Read {
                    path: name.to_owned(),
                    source,
                })?;
            return Self::parse(name, &text);
        }
        Self::embedded()?
            .into_iter()
            .find(|p| p.id == name)
            .ok_or_else(|| PlanError::NotFound(name.to_owned()))
    }

    /// Whether this plan is one of those pinned in this binary (certification accepts only those).
    pub fn is_pinned(&self) -> bool {
        self.source.starts_with("embedded:")
    }

    /// The cases selected by `--cases` and `--exclude` glob patterns (comma-separated, `*`
    /// matches any run of characters), in plan order.
    pub fn select(&self, include: Option<&str>, exclude: Option<&str>) -> Vec<&CaseSpec> {
        self.cases
            .iter()
            .filter(|c| include.is_none_or(|p| matches_any(p, &c.id)))
            .filter(|c| !exclude.is_some_and(|p| matches_any(p, &c.id)))
            .collect()
    }

    /// Whether `case` applies to a target offering `capabilities`.
    pub fn applies(case: &CaseSpec, capabilities: &[&str]) -> bool {
        case.requires
            .iter()
            .all(|r| capabilities.contains(&r.as_str()))
    }

    /// The budget of a case: its own, else the plan's default.
    pub fn budget_ms(&self, case: &CaseSpec) -> u64 {
        case.budget_ms.unwrap_or(self.default_budget_ms)
    }
}

fn matches_any(patterns: &str, id: &str) -> bool {
    patterns
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|p| glob(p.as_bytes(), id.as_bytes()))
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

fn is_semver(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn is_case_id(id: &str) -> bool {
    let mut parts = id.split('.');
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if ok(a) && ok(b))
}

/// `EVT-3`: uppercase family, dash, number.
pub fn is_requirement_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(fam, n)| {
        !fam.is_empty()
            && fam.chars().all(|c| c.is_ascii_uppercase())
            && !n.is_empty()
            && n.chars().all(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
id = "t/p"
version = "1.0.0"
protocol = "MTOR/1"
title = "t"

[[case]]
id = "events.bad-json"
title = "x"
requirements = ["LIM-3"]
level = "MUST"
kind = "malformed-frame"
expectation = "e"
remediation = "r"
params = { frame = "{" }
"#;

    #[test]
    fn a_minimal_plan_parses_and_hashes_its_bytes() {
        let plan = Plan::parse("t", MINIMAL).expect("valid");
        assert_eq!(plan.cases.len(), 1);
        assert_eq!(plan.hash, hex::encode(Sha256::digest(MINIMAL.as_bytes())));
        assert_eq!(plan.cases[0].params_json()["frame"], "{");
        let other =
            Plan::parse("t", &MINIMAL.replace("title = \"x\"", "title = \"y\"")).expect("valid");
        assert_ne!(plan.hash, other.hash);
    }

    #[test]
    fn broken_plans_get_precise_errors() {
        let cases = [
            (MINIMAL.replace("1.0.0", "1.0"), "not MAJOR.MINOR.PATCH"),
            (
                MINIMAL.replace("events.bad-json", "Events.Bad"),
                "is not `<suite>.<name>`",
            ),
            (
                MINIMAL.replace("[\"LIM-3\"]", "[]"),
                "checks no requirement",
            ),
            (
                MINIMAL.replace("[\"LIM-3\"]", "[\"lim3\"]"),
                "`lim3` is not a requirement ID",
            ),
            (
                MINIMAL.replace("remediation = \"r\"", "remediation = \" \""),
                "remediation advice",
            ),
            (
                MINIMAL.replace("level = \"MUST\"", "level = \"MUSTN'T\""),
                "malformed",
            ),
            (MINIMAL.replace("kind = ", "knid = "), "malformed"),
            (
                MINIMAL.replace("params = ", "requires = [\"gpu\"]\nparams = "),
                "requires `gpu`, which is not a target capability",
            ),
            (
                format!(
                    "{MINIMAL}{}",
                    &MINIMAL[MINIMAL.find("[[case]]").unwrap_or(0)..]
                ),
                "appears twice",
            ),
        ];
        for (text, want) in cases {
            let err = Plan::parse("t", &text).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }

    #[test]
    fn selection_by_glob() {
        assert!(glob(b"events.*", b"events.bad-json"));
        assert!(glob(b"*json", b"events.bad-json"));
        assert!(!glob(b"health.*", b"events.bad-json"));
        let plan = Plan::parse("t", MINIMAL).expect("valid");
        assert_eq!(plan.select(Some("health.*,events.*"), None).len(), 1);
        assert_eq!(plan.select(None, Some("events.bad-*")).len(), 0);
    }

    #[test]
    fn required_capabilities_decide_applicability() {
        let text = MINIMAL.replace("params = ", "requires = [\"container\"]\nparams = ");
        let plan = Plan::parse("t", &text).expect("valid");
        assert!(!Plan::applies(&plan.cases[0], &[]));
        assert!(Plan::applies(&plan.cases[0], &["container"]));
        let plain = Plan::parse("t", MINIMAL).expect("valid");
        assert!(Plan::applies(&plain.cases[0], &[]));
    }
}

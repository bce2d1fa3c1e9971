//! Verdicts and the canonical result of a run (`results.json`), from which every report renders.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::Level;

/// The verdict of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// The expectation held.
    Pass,
    /// A MUST was broken.
    Fail,
    /// A SHOULD was broken.
    Warn,
    /// Not run (excluded, or not applicable to this target), with the reason.
    Skip,
    /// Could not decide (for instance the realm died or the budget ran out), with the reason.
    Unknown,
    /// The harness itself failed.
    Error,
}

impl Verdict {
    /// All verdicts, most severe first (the order reports use).
    pub const BY_SEVERITY: [Verdict; 6] = [
        Verdict::Fail,
        Verdict::Error,
        Verdict::Unknown,
        Verdict::Warn,
        Verdict::Skip,
        Verdict::Pass,
    ];

    /// The verdict for a broken expectation at `level`.
    pub fn broken(level: Level) -> Self {
        match level {
            Level::Must => Verdict::Fail,
            Level::Should | Level::May => Verdict::Warn,
        }
    }

    /// Upper-case name, as in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Warn => "WARN",
            Verdict::Skip => "SKIP",
            Verdict::Unknown => "UNKNOWN",
            Verdict::Error => "ERROR",
        }
    }
}

/// A piece of evidence a case attaches to its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// What this is (`frame`, `http`, `note`, `fault`).
    pub kind: String,
    /// One-line description.
    pub summary: String,
    /// Journal sequence numbers this evidence comes from, for the wire-log excerpt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<u64>,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// Stable case id.
    pub id: String,
    /// Title from the plan.
    pub title: String,
    /// Requirement IDs it checks.
    pub requirements: Vec<String>,
    /// Level from the plan.
    pub level: Level,
    /// The case kind.
    pub kind: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why: one or two sentences a board member can read.
    pub reason: String,
    /// What a conforming realm does (from the plan).
    pub expected: String,
    /// What was observed.
    pub observed: String,
    /// Remediation advice (from the plan).
    pub remediation: String,
    /// Evidence items.
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// First and last journal sequence numbers recorded by this case.
    pub journal_span: Option<(u64, u64)>,
    /// Milliseconds since the run started when the case started.
    pub started_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// A command that re-runs just this case with the same seed.
    pub reproduce: String,
    /// Load data (latency percentiles, generator, fairness) of a `dispatch-load` case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<crate::load::LoadResult>,
}

/// Totals by verdict.
pub type Counts = BTreeMap<Verdict, usize>;

/// Counts verdicts.
pub fn count(cases: &[CaseResult]) -> Counts {
    let mut counts: Counts = Verdict::BY_SEVERITY.iter().map(|v| (*v, 0)).collect();
    for case in cases {
        *counts.entry(case.verdict).or_default() += 1;
    }
    counts
}

/// The run's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// For the board: pinned plan only, no skips, UNKNOWN means not certified.
    Certification,
    /// For a realm's CI: any plan, skips allowed, same exit codes.
    Ci,
    /// For development: anything goes, nothing certifies.
    Explore,
}

/// The documented exit codes of `mtor-cert`.
pub mod exit {
    /// Every required case passed.
    pub const OK: u8 = 0;
    /// Some case FAILED.
    pub const FAIL: u8 = 1;
    /// Some case was UNKNOWN or the run is incomplete (or, in certification mode, SKIPPED).
    pub const INCOMPLETE: u8 = 2;
    /// Usage, input or manifest error.
    pub const USAGE: u8 = 3;
    /// The harness itself failed.
    pub const INTERNAL: u8 = 4;
}

/// The exit code and whether the run certifies, from the verdicts and the mode.
pub fn outcome(mode: Mode, counts: &Counts, complete: bool) -> (u8, bool) {
    let n = |v: Verdict| counts.get(&v).copied().unwrap_or(0);
    let code = if n(Verdict::Error) > 0 {
        exit::INTERNAL
    } else if n(Verdict::Fail) > 0 {
        exit::FAIL
    } else if n(Verdict::Unknown) > 0
        || !complete
        || (mode == Mode::Certification && n(Verdict::Skip) > 0)
    {
        exit::INCOMPLETE
    } else {
        exit::OK
    };
    (code, code == exit::OK && mode == Mode::Certification)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(Verdict, usize)]) -> Counts {
        pairs.iter().copied().collect()
    }

    #[test]
    fn exit_codes_follow_the_worst_verdict() {
        use Verdict::*;
        let c = Mode::Certification;
        assert_eq!(outcome(c, &counts(&[(Pass, 3)]), true), (0, true));
        assert_eq!(outcome(Mode::Ci, &counts(&[(Pass, 3)]), true), (0, false));
        assert_eq!(
            outcome(c, &counts(&[(Pass, 3), (Warn, 1)]), true),
            (0, true)
        );
        assert_eq!(
            outcome(c, &counts(&[(Pass, 3), (Fail, 1), (Unknown, 1)]), true).0,
            1
        );
        assert_eq!(
            outcome(c, &counts(&[(Pass, 3), (Unknown, 1)]), true),
            (2, false)
        );
        assert_eq!(outcome(c, &counts(&[(Pass, 3)]), false), (2, false));
        assert_eq!(
            outcome(c, &counts(&[(Pass, 3), (Skip, 1)]), true),
            (2, false)
        );
        assert_eq!(
            outcome(Mode::Ci, &counts(&[(Pass, 3), (Skip, 1)]), true),
            (0, false)
        );
        assert_eq!(outcome(c, &counts(&[(Fail, 1), (Error, 1)]), true).0, 4);
    }
}

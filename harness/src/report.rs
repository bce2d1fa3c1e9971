//! The canonical result of a run (`results.json`) and its renderings: the HTML report for the
//! board, the Markdown remediation report for the applicant, and JUnit XML for CI.
//!
//! Every renderer is a pure function of [`RunResults`] (plus, for the HTML wire-log excerpts, the
//! journal records), so a bundle can be re-rendered later from `results.json` alone and a reader
//! can trust that the HTML says exactly what the signed JSON says.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::journal::{Dir, Entry, Phase, Record};
use crate::plan::Plan;
use crate::run::RunOutput;
use crate::verdict::{self, CaseResult, Counts, Mode, Verdict};

/// The `format` of `results.json` this module writes and reads.
pub const RESULTS_FORMAT: &str = "mtor-cert/results/1";

/// The JSON Schema of `results.json` (`fixtures/schemas/harness/results.schema.json`).
pub const RESULTS_SCHEMA: &str = include_str!("../../fixtures/schemas/harness/results.schema.json");

/// The HTML report template (`reports/report.html.tera`).
const HTML_TEMPLATE: &str = include_str!("../../reports/report.html.tera");

/// The most journal records shown for one case in the HTML report; the rest are in the journal.
pub const WIRE_EXCERPT_MAX: usize = 200;

/// The most characters of one journal record's text shown in the HTML report.
const WIRE_TEXT_MAX: usize = 2000;

/// Why a report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The HTML template failed to compile or render (a harness bug, never the realm's fault).
    #[error("HTML report template: {0}")]
    Template(String),
    /// The results could not be turned into JSON.
    #[error("cannot serialize the results: {0}")]
    Json(#[from] serde_json::Error),
    /// A run reported a target kind this format has no name for.
    #[error("unknown target kind `{0}` (expected url, spawn or image)")]
    TargetKind(String),
    /// The embedded results schema does not compile (a build defect).
    #[error("the embedded results schema is invalid: {0}")]
    Schema(String),
}

/// The harness that produced a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HarnessInfo {
    /// `mtor-cert`.
    pub name: String,
    /// The harness's semantic version.
    pub version: String,
}

impl HarnessInfo {
    /// This harness.
    pub fn current() -> Self {
        Self {
            name: "mtor-cert".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// The plan a run followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInfo {
    /// Plan id (`mtor-1.0/standard`).
    pub id: String,
    /// Plan semver.
    pub version: String,
    /// sha256 of the plan file's bytes, lowercase hex.
    pub hash: String,
    /// `embedded:<path>` or a file path.
    pub source: String,
}

impl From<&Plan> for PlanInfo {
    fn from(plan: &Plan) -> Self {
        Self {
            id: plan.id.clone(),
            version: plan.version.clone(),
            hash: plan.hash.clone(),
            source: plan.source.clone(),
        }
    }
}

/// How the harness reached the realm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A realm already running at a URL.
    Url,
    /// A command the harness started.
    Spawn,
    /// A container image the harness started.
    Image,
}

impl std::str::FromStr for TargetKind {
    type Err = ReportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "url" => Ok(Self::Url),
            "spawn" => Ok(Self::Spawn),
            "image" => Ok(Self::Image),
            other => Err(ReportError::TargetKind(other.to_owned())),
        }
    }
}

/// The realm under test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetInfo {
    /// url, spawn or image.
    pub kind: TargetKind,
    /// One line: the URL, the command or the image.
    pub description: String,
}

/// Totals of a run and what they mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Number of cases with each verdict (every verdict present, zero included).
    pub counts: Counts,
    /// Number of cases.
    pub total: usize,
    /// The exit code `mtor-cert` returns for this run.
    pub exit_code: u8,
    /// Whether this run certifies the realm.
    pub certified: bool,
}

impl Summary {
    /// The summary of `cases` in `mode`, by the documented rules of [`verdict::outcome`].
    pub fn of(mode: Mode, cases: &[CaseResult], complete: bool) -> Self {
        let counts = verdict::count(cases);
        let (exit_code, certified) = verdict::outcome(mode, &counts, complete);
        Self {
            counts,
            total: cases.len(),
            exit_code,
            certified,
        }
    }
}

/// The canonical result of one run: the content of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunResults {
    /// Always [`RESULTS_FORMAT`].
    pub format: String,
    /// The harness that ran.
    pub harness: HarnessInfo,
    /// The plan it followed.
    pub plan: PlanInfo,
    /// The realm it tested.
    pub target: TargetInfo,
    /// What the realm's `/v1/manifest` answered, when it answered with JSON.
    pub realm_manifest: Option<Value>,
    /// Certification, ci or explore.
    pub mode: Mode,
    /// The seed of generated inputs.
    pub seed: u64,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Whether every selected case got a result.
    pub complete: bool,
    /// Totals, exit code, certification.
    pub summary: Summary,
    /// One result per case, in plan order.
    pub cases: Vec<CaseResult>,
}

impl RunResults {
    /// The results of a finished run.
    pub fn from_run(
        plan: &Plan,
        mode: Mode,
        seed: u64,
        output: &RunOutput,
    ) -> Result<Self, ReportError> {
        Ok(Self {
            format: RESULTS_FORMAT.into(),
            harness: HarnessInfo::current(),
            plan: PlanInfo::from(plan),
            target: TargetInfo {
                kind: output.target_kind.parse()?,
                description: output.target_description.clone(),
            },
            realm_manifest: output.realm_manifest.clone(),
            mode,
            seed,
            started_at: output.started_at.clone(),
            finished_at: output.finished_at.clone(),
            complete: output.complete,
            summary: Summary::of(mode, &output.cases, output.complete),
            cases: output.cases.clone(),
        })
    }

    /// Ways in which these results contradict themselves: a wrong format id, totals that are not
    /// the cases' totals, an exit code or certification that the rules do not give, duplicate
    /// case ids. An edited `results.json` that still matches the schema shows up here.
    pub fn inconsistencies(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.format != RESULTS_FORMAT {
            found.push(format!(
                "format is `{}`, expected `{RESULTS_FORMAT}`",
                self.format
            ));
        }
        let expected = Summary::of(self.mode, &self.cases, self.complete);
        if self.summary.counts != expected.counts || self.summary.total != expected.total {
            found.push(format!(
                "summary counts {} do not match the cases ({})",
                counts_line(&self.summary.counts),
                counts_line(&expected.counts)
            ));
        }
        if (self.summary.exit_code, self.summary.certified)
            != (expected.exit_code, expected.certified)
        {
            found.push(format!(
                "summary says exit code {} and certified {}, but the verdicts give {} and {}",
                self.summary.exit_code,
                self.summary.certified,
                expected.exit_code,
                expected.certified
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for case in &self.cases {
            if !seen.insert(case.id.as_str()) {
                found.push(format!("case `{}` appears twice", case.id));
            }
        }
        found
    }

    /// The outcome in words, as the reports' headers state it.
    pub fn outcome_words(&self) -> &'static str {
        match (self.mode, self.summary.certified) {
            (Mode::Certification, true) => "CERTIFIED",
            (Mode::Certification, false) => "NOT CERTIFIED",
            _ => "NOT A CERTIFICATION RUN",
        }
    }

    /// What the exit code means, in one sentence.
    pub fn exit_meaning(&self) -> String {
        let base = match self.summary.exit_code {
            verdict::exit::OK => "every required check passed",
            verdict::exit::FAIL => "some case failed",
            verdict::exit::INCOMPLETE if !self.complete => "the run is incomplete",
            verdict::exit::INCOMPLETE => {
                "some case could not be decided (or, in certification mode, was skipped)"
            }
            verdict::exit::INTERNAL => "the harness itself failed on some case",
            _ => "usage or input error",
        };
        format!("exit code {}: {base}", self.summary.exit_code)
    }
}

fn counts_line(counts: &Counts) -> String {
    Verdict::BY_SEVERITY
        .iter()
        .map(|v| format!("{} {}", v.as_str(), counts.get(v).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates a `results.json` document against the results schema; returns each violation as
/// `pointer: message` (empty when valid).
pub fn validate_results(value: &Value) -> Result<Vec<String>, ReportError> {
    let schema: Value = serde_json::from_str(RESULTS_SCHEMA)?;
    let validator =
        jsonschema::draft202012::new(&schema).map_err(|e| ReportError::Schema(e.to_string()))?;
    Ok(validator
        .iter_errors(value)
        .map(|e| {
            let at = e.instance_path().as_str().to_owned();
            format!("{}: {e}", if at.is_empty() { "/" } else { &at })
        })
        .collect())
}

/// Serializes any value as canonical JSON: object keys sorted by their UTF-8 bytes, no
/// insignificant whitespace, newline-terminated. Sorting is done here rather than trusted to
/// `serde_json::Map`, because another crate in the build could switch on `preserve_order`.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out)?;
    out.push(b'\n');
    Ok(out)
}

/// `results.json`: the results as canonical JSON (see [`canonical_json`]).
pub fn to_canonical_json(results: &RunResults) -> Result<Vec<u8>, ReportError> {
    Ok(canonical_json(results)?)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

/// Replaces characters that XML 1.0 forbids (and that HTML treats as parse errors: C0 controls
/// other than tab, LF and CR, DEL, C1 controls, U+FFFE, U+FFFF) with U+FFFD, so hostile realm
/// output can neither break a report's syntax nor hide in it.
pub fn sanitize_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
            _ => c,
        })
        .collect()
}

/// Escapes text for XML 1.0 element content, replacing forbidden characters first. Newlines and
/// tabs stay as they are (readable in the raw file); CR is kept as a reference because parsers
/// would otherwise fold it into LF.
pub fn xml_escape(text: &str) -> String {
    escape_xml(text, false)
}

/// Escapes text for an XML 1.0 attribute value: as [`xml_escape`], and newlines and tabs as
/// references too, because parsers normalise raw ones in attributes to spaces.
pub fn xml_attr(text: &str) -> String {
    escape_xml(text, true)
}

fn escape_xml(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in sanitize_text(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// The suite of a case: its id up to the first dot.
pub fn suite_of(case_id: &str) -> &str {
    case_id.split('.').next().unwrap_or(case_id)
}

/// The requirement family of a requirement id: the part before the first dash (`EVT` of `EVT-3`).
pub fn family_of(requirement: &str) -> &str {
    requirement.split('-').next().unwrap_or(requirement)
}

/// Whether a verdict is a finding the applicant must act on (or should look at).
pub fn is_finding(v: Verdict) -> bool {
    matches!(
        v,
        Verdict::Fail | Verdict::Error | Verdict::Unknown | Verdict::Warn
    )
}

fn severity_rank(v: Verdict) -> usize {
    Verdict::BY_SEVERITY
        .iter()
        .position(|x| *x == v)
        .unwrap_or(Verdict::BY_SEVERITY.len())
}

/// The findings (FAIL, ERROR, UNKNOWN, WARN), most severe first, then in plan order.
pub fn findings(results: &RunResults) -> Vec<&CaseResult> {
    let mut found: Vec<&CaseResult> = results
        .cases
        .iter()
        .filter(|c| is_finding(c.verdict))
        .collect();
    // A stable sort keeps plan order within one verdict.
    found.sort_by_key(|c| severity_rank(c.verdict));
    found
}

/// Groups cases by suite, suites in order of first appearance (plan order).
fn by_suite(cases: &[CaseResult]) -> Vec<(&str, Vec<&CaseResult>)> {
    let mut groups: Vec<(&str, Vec<&CaseResult>)> = Vec::new();
    for case in cases {
        let suite = suite_of(&case.id);
        match groups.iter_mut().find(|(s, _)| *s == suite) {
            Some((_, list)) => list.push(case),
            None => groups.push((suite, vec![case])),
        }
    }
    groups
}

/// Cuts `text` to at most `max` characters, saying how much was left out.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!(
            "{}… ({} more bytes in the journal)",
            &text[..at],
            text.len() - at
        ),
    }
}

// ------------------------------------------------------------------------------------------------
// HTML

#[derive(Serialize)]
struct Cell {
    label: &'static str,
    count: usize,
    class: String,
}

#[derive(Serialize)]
struct MatrixRow {
    name: String,
    cells: Vec<Cell>,
    total: usize,
}

#[derive(Serialize)]
struct Bar {
    label: &'static str,
    class: String,
    count: usize,
    y: usize,
    width: usize,
    text_x: usize,
}

#[derive(Serialize)]
struct Chart {
    width: usize,
    height: usize,
    bars: Vec<Bar>,
}

#[derive(Serialize)]
struct WireLine {
    anchor: String,
    seq: u64,
    time: String,
    arrow: &'static str,
    label: String,
    text: String,
}

#[derive(Serialize)]
struct JournalRef {
    seq: u64,
    /// The wire line's anchor, when that record is in the excerpt.
    anchor: Option<String>,
}

#[derive(Serialize)]
struct EvidenceView {
    kind: String,
    summary: String,
    journal: Vec<JournalRef>,
}

#[derive(Serialize)]
struct CaseView {
    id: String,
    title: String,
    verdict: &'static str,
    class: String,
    requirements: Vec<String>,
    level: String,
    kind: String,
    reason: String,
    expected: String,
    observed: String,
    remediation: String,
    reproduce: String,
    duration_ms: u64,
    evidence: Vec<EvidenceView>,
    span: Option<String>,
    wire: Vec<WireLine>,
    wire_omitted: usize,
    /// Load tables and the latency percentile chart (`dispatch-load` cases).
    load: Option<crate::load::LoadHtml>,
}

#[derive(Serialize)]
struct HtmlView {
    outcome: &'static str,
    outcome_class: &'static str,
    exit_meaning: String,
    complete: bool,
    harness_name: String,
    harness_version: String,
    plan_id: String,
    plan_version: String,
    plan_hash: String,
    plan_source: String,
    target_kind: String,
    target: String,
    mode: String,
    seed: u64,
    started_at: String,
    finished_at: String,
    realm_manifest: Option<String>,
    verdicts: Vec<Cell>,
    totals: MatrixRow,
    families: Vec<MatrixRow>,
    suites: Vec<MatrixRow>,
    chart: Chart,
    cases: Vec<CaseView>,
}

fn verdict_class(v: Verdict) -> String {
    format!("v-{}", v.as_str().to_ascii_lowercase())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Certification => "certification",
        Mode::Ci => "ci",
        Mode::Explore => "explore",
    }
}

fn matrix_row(name: &str, cases: &[&CaseResult]) -> MatrixRow {
    let cells = Verdict::BY_SEVERITY
        .iter()
        .map(|v| {
            let count = cases.iter().filter(|c| c.verdict == *v).count();
            Cell {
                label: v.as_str(),
                count,
                // Zero cells are dimmed so the eye lands on what happened.
                class: if count == 0 {
                    "zero".to_owned()
                } else {
                    verdict_class(*v)
                },
            }
        })
        .collect();
    MatrixRow {
        name: name.to_owned(),
        total: cases.len(),
        cells,
    }
}

fn family_rows(cases: &[CaseResult]) -> Vec<MatrixRow> {
    let mut families: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for case in cases {
        // A case counts once in each family it checks, however many of its requirements it has.
        let mut mine: Vec<&str> = case.requirements.iter().map(|r| family_of(r)).collect();
        mine.sort_unstable();
        mine.dedup();
        for family in mine {
            families.entry(family).or_default().push(case);
        }
    }
    families
        .iter()
        .map(|(name, list)| matrix_row(name, list))
        .collect()
}

fn chart(counts: &Counts) -> Chart {
    const BAR_MAX: usize = 400;
    const LABEL_W: usize = 90;
    const ROW_H: usize = 26;
    let max = counts.values().copied().max().unwrap_or(0).max(1);
    let bars = Verdict::BY_SEVERITY
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let count = counts.get(v).copied().unwrap_or(0);
            // A non-zero count always gets a visible bar, however small next to the largest.
            let width = if count == 0 {
                0
            } else {
                (count * BAR_MAX / max).max(2)
            };
            Bar {
                label: v.as_str(),
                class: verdict_class(*v),
                count,
                y: i * ROW_H + 4,
                width,
                text_x: LABEL_W + width + 6,
            }
        })
        .collect();
    Chart {
        width: LABEL_W + BAR_MAX + 60,
        height: Verdict::BY_SEVERITY.len() * ROW_H + 8,
        bars,
    }
}

fn wire_anchor(case_id: &str, seq: u64) -> String {
    format!("{case_id}@{seq}")
}

fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// One journal record as a wire-log line: an arrow for the direction, a label, and the text.
fn wire_line(case_id: &str, record: &Record) -> WireLine {
    let (arrow, label, text) = match &record.entry {
        Entry::Frame { conn, dir, data } => match dir {
            Dir::Send => ("→", format!("ws#{conn} send"), data.clone()),
            Dir::Recv => ("←", format!("ws#{conn} recv"), data.clone()),
        },
        Entry::Conn {
            conn,
            event,
            detail,
        } => ("⇄", format!("ws#{conn} {event}"), detail.clone()),
        Entry::Http {
            method,
            path,
            status,
            body,
        } => (
            "⇆",
            "http".to_owned(),
            if *status == 0 {
                format!("{method} {path} → no response\n{body}")
            } else {
                format!("{method} {path} → {status}\n{body}")
            },
        ),
        Entry::Op {
            process,
            f,
            phase,
            value,
        } => {
            let phase = match phase {
                Phase::Invoke => "invoke",
                Phase::Ok => "ok",
                Phase::Fail => "fail",
                Phase::Info => "info",
            };
            (
                "·",
                format!("op p{process}"),
                format!("{f} {phase} {}", json_text(value)),
            )
        }
        Entry::Fault { what, edge, proof } => ("⚡", format!("fault {what} {edge}"), proof.clone()),
        Entry::Note { text } => ("✎", "note".to_owned(), text.clone()),
        Entry::CaseStart { params } => ("▶", "case start".to_owned(), json_text(params)),
        Entry::CaseEnd { result } => (
            "■",
            "case end".to_owned(),
            result.verdict.as_str().to_owned(),
        ),
        Entry::RunStart { plan, seed, .. } => (
            "▶",
            "run start".to_owned(),
            format!("plan {plan} seed {seed}"),
        ),
        Entry::RunEnd { at } => ("■", "run end".to_owned(), at.clone()),
    };
    WireLine {
        anchor: wire_anchor(case_id, record.seq),
        seq: record.seq,
        time: format!("{}.{:03} ms", record.t_us / 1000, record.t_us % 1000),
        arrow,
        label: sanitize_text(&label),
        text: sanitize_text(&clip(&text, WIRE_TEXT_MAX)),
    }
}

fn case_view(case: &CaseResult, journal: &[Record]) -> CaseView {
    let in_span: Vec<&Record> = match case.journal_span {
        Some((first, last)) => journal
            .iter()
            .filter(|r| r.seq >= first && r.seq <= last)
            // Records of another case cannot be evidence for this one; run-level notes can.
            .filter(|r| r.case.as_deref().is_none_or(|c| c == case.id))
            .collect(),
        None => Vec::new(),
    };
    let wire: Vec<WireLine> = in_span
        .iter()
        .take(WIRE_EXCERPT_MAX)
        .map(|r| wire_line(&case.id, r))
        .collect();
    let shown: std::collections::BTreeSet<u64> = wire.iter().map(|w| w.seq).collect();
    let evidence = case
        .evidence
        .iter()
        .map(|e| EvidenceView {
            kind: sanitize_text(&e.kind),
            summary: sanitize_text(&e.summary),
            journal: e
                .journal
                .iter()
                .map(|seq| JournalRef {
                    seq: *seq,
                    anchor: shown.contains(seq).then(|| wire_anchor(&case.id, *seq)),
                })
                .collect(),
        })
        .collect();
    CaseView {
        id: case.id.clone(),
        title: sanitize_text(&case.title),
        verdict: case.verdict.as_str(),
        class: verdict_class(case.verdict),
        requirements: case.requirements.clone(),
        level: format!("{:?}", case.level).to_ascii_uppercase(),
        kind: sanitize_text(&case.kind),
        reason: sanitize_text(&case.reason),
        expected: sanitize_text(&case.expected),
        observed: sanitize_text(&case.observed),
        remediation: sanitize_text(&case.remediation),
        reproduce: sanitize_text(&case.reproduce),
        duration_ms: case.duration_ms,
        evidence,
        span: case
            .journal_span
            .map(|(a, b)| format!("journal.ndjson records {a}–{b}")),
        wire_omitted: in_span.len().saturating_sub(WIRE_EXCERPT_MAX),
        load: case.load.as_ref().map(crate::load::html_view),
        wire,
    }
}

/// Renders the self-contained HTML report (inline CSS, no scripts, no external assets).
/// `journal` supplies the wire-log excerpts; pass an empty slice to render without them.
pub fn render_html(results: &RunResults, journal: &[Record]) -> Result<String, ReportError> {
    let counts = &results.summary.counts;
    let view = HtmlView {
        outcome: results.outcome_words(),
        outcome_class: match results.outcome_words() {
            "CERTIFIED" => "ok",
            "NOT CERTIFIED" => "bad",
            _ => "neutral",
        },
        exit_meaning: results.exit_meaning(),
        complete: results.complete,
        harness_name: sanitize_text(&results.harness.name),
        harness_version: sanitize_text(&results.harness.version),
        plan_id: sanitize_text(&results.plan.id),
        plan_version: sanitize_text(&results.plan.version),
        plan_hash: sanitize_text(&results.plan.hash),
        plan_source: sanitize_text(&results.plan.source),
        target_kind: format!("{:?}", results.target.kind).to_ascii_lowercase(),
        target: sanitize_text(&results.target.description),
        mode: mode_name(results.mode).to_owned(),
        seed: results.seed,
        started_at: sanitize_text(&results.started_at),
        finished_at: sanitize_text(&results.finished_at),
        realm_manifest: results
            .realm_manifest
            .as_ref()
            .map(|m| sanitize_text(&serde_json::to_string_pretty(m).unwrap_or_default())),
        verdicts: Verdict::BY_SEVERITY
            .iter()
            .map(|v| Cell {
                label: v.as_str(),
                count: counts.get(v).copied().unwrap_or(0),
                class: verdict_class(*v),
            })
            .collect(),
        totals: matrix_row("all", &results.cases.iter().collect::<Vec<_>>()),
        families: family_rows(&results.cases),
        suites: by_suite(&results.cases)
            .iter()
            .map(|(name, list)| matrix_row(name, list))
            .collect(),
        chart: chart(counts),
        cases: results
            .cases
            .iter()
            .map(|c| case_view(c, journal))
            .collect(),
    };
    let mut tera = tera::Tera::default();
    // Escaping is what keeps realm-controlled text inert: insist on it for this template name
    // rather than rely on Tera's default suffix list.
    tera.autoescape_on(vec![".html"]);
    tera.add_raw_template("report.html", HTML_TEMPLATE)
        .map_err(|e| ReportError::Template(error_chain(&e)))?;
    let context =
        tera::Context::from_serialize(&view).map_err(|e| ReportError::Template(error_chain(&e)))?;
    tera.render("report.html", &context)
        .map_err(|e| ReportError::Template(error_chain(&e)))
}

/// Tera's top-level message hides the useful part (which variable, which line) in its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

// ------------------------------------------------------------------------------------------------
// Markdown

/// Escapes Markdown inline syntax (and raw HTML) with backslashes, which CommonMark defines for
/// every ASCII punctuation character, so realm text renders as the text it is.
fn md_inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in sanitize_text(text).chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' | '!' | '{' | '}' | '~'
            | '&' => {
                out.push('\\');
                out.push(c);
            }
            // Keep one finding's text on its line so it cannot start a heading or a list.
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A fenced code block whose fence is longer than any backtick run inside, so nothing in the
/// text can close it early.
fn md_block(text: &str) -> String {
    let text = sanitize_text(text);
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(longest.max(2) + 1);
    let body = if text.trim().is_empty() {
        "(nothing)"
    } else {
        text.trim_end()
    };
    format!("{fence}text\n{body}\n{fence}\n")
}

/// Renders `remediation.md`: every finding (FAIL, ERROR, UNKNOWN, WARN), most severe first, with
/// what to change and how to reproduce it. PASS and SKIP are left out.
pub fn render_markdown(results: &RunResults) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# MTOR/1 remediation report: {}\n",
        results.outcome_words()
    );
    let _ = writeln!(
        md,
        "- Plan: `{}` {} (sha256 `{}`)",
        md_code(&results.plan.id),
        md_inline(&results.plan.version),
        md_code(&results.plan.hash)
    );
    let _ = writeln!(md, "- Target: {}", md_inline(&results.target.description));
    let _ = writeln!(
        md,
        "- Harness: {} {}; mode {}; seed {}",
        md_inline(&results.harness.name),
        md_inline(&results.harness.version),
        mode_name(results.mode),
        results.seed
    );
    let _ = writeln!(
        md,
        "- Run: {} to {}{}",
        md_inline(&results.started_at),
        md_inline(&results.finished_at),
        if results.complete {
            ""
        } else {
            " (incomplete)"
        }
    );
    let _ = writeln!(
        md,
        "- Result: {}; {}\n",
        md_inline(&results.exit_meaning()),
        counts_line(&results.summary.counts)
    );
    let found = findings(results);
    if found.is_empty() {
        let _ = writeln!(
            md,
            "No findings: no case failed, errored, was undecided or warned. Nothing to remediate."
        );
        return md;
    }
    let _ = writeln!(md, "{} finding(s), most severe first.\n", found.len());
    for case in found {
        let _ = writeln!(
            md,
            "## {} `{}`: {}\n",
            case.verdict.as_str(),
            md_code(&case.id),
            md_inline(&case.title)
        );
        let _ = writeln!(
            md,
            "- Requirements: {} ({})",
            case.requirements
                .iter()
                .map(|r| md_inline(r))
                .collect::<Vec<_>>()
                .join(", "),
            format!("{:?}", case.level).to_ascii_uppercase()
        );
        let _ = writeln!(md, "- Why: {}\n", md_inline(&case.reason));
        let _ = writeln!(md, "Expected:\n\n{}", md_block(&case.expected));
        let _ = writeln!(md, "Observed:\n\n{}", md_block(&case.observed));
        if !case.evidence.is_empty() {
            let _ = writeln!(md, "Evidence:\n");
            for e in &case.evidence {
                // Only digits and commas: nothing to escape.
                let seqs = if e.journal.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (journal records {})",
                        e.journal
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let _ = writeln!(
                    md,
                    "- {}: {}{seqs}",
                    md_inline(&e.kind),
                    md_inline(&e.summary)
                );
            }
            md.push('\n');
        }
        let _ = writeln!(md, "Remediation: {}\n", md_inline(&case.remediation));
        let _ = writeln!(md, "Reproduce:\n\n{}", md_block(&case.reproduce));
    }
    md
}

/// Text for inside a single-backtick code span: backticks cannot be escaped there, so they are
/// replaced; case ids and hashes never contain them in practice.
fn md_code(text: &str) -> String {
    sanitize_text(text).replace(['`', '\n', '\r'], "'")
}

// ------------------------------------------------------------------------------------------------
// JUnit

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn case_text(case: &CaseResult) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Requirements: {} ({})",
        case.requirements.join(", "),
        format!("{:?}", case.level).to_ascii_uppercase()
    );
    let _ = writeln!(text, "Reason: {}", case.reason);
    let _ = writeln!(text, "Expected: {}", case.expected);
    let _ = writeln!(text, "Observed: {}", case.observed);
    for e in &case.evidence {
        let _ = writeln!(text, "Evidence ({}): {}", e.kind, e.summary);
    }
    let _ = writeln!(text, "Remediation: {}", case.remediation);
    let _ = writeln!(text, "Reproduce: {}", case.reproduce);
    text
}

#[derive(Default)]
struct JunitTotals {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    ms: u64,
}

impl JunitTotals {
    fn add(&mut self, case: &CaseResult) {
        self.tests += 1;
        self.ms = self.ms.saturating_add(case.duration_ms);
        match case.verdict {
            // UNKNOWN is a failure for CI: an undecided case must never read as passing.
            Verdict::Fail | Verdict::Unknown => self.failures += 1,
            Verdict::Error => self.errors += 1,
            Verdict::Skip => self.skipped += 1,
            Verdict::Pass | Verdict::Warn => {}
        }
    }

    fn attrs(&self) -> String {
        format!(
            "tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\"",
            self.tests,
            self.failures,
            self.errors,
            self.skipped,
            seconds(self.ms)
        )
    }
}

/// Renders `junit.xml`: one `<testsuite>` per suite, one `<testcase>` per case. FAIL and UNKNOWN
/// are failures, ERROR an error, SKIP skipped, WARN a pass with its warning in `<system-out>`.
pub fn render_junit(results: &RunResults) -> String {
    let mut all = JunitTotals::default();
    for case in &results.cases {
        all.add(case);
    }
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"{}\" {}>",
        xml_attr(&format!("mtor-cert {}", results.plan.id)),
        all.attrs()
    );
    for (suite, cases) in by_suite(&results.cases) {
        let mut totals = JunitTotals::default();
        for case in &cases {
            totals.add(case);
        }
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" timestamp=\"{}\" {}>",
            xml_attr(suite),
            xml_attr(&results.started_at),
            totals.attrs()
        );
        xml.push_str("    <properties>\n");
        for (name, value) in [
            ("plan", results.plan.id.clone()),
            ("plan_version", results.plan.version.clone()),
            ("plan_hash", results.plan.hash.clone()),
            ("harness_version", results.harness.version.clone()),
            ("target", results.target.description.clone()),
            ("mode", mode_name(results.mode).to_owned()),
            ("seed", results.seed.to_string()),
        ] {
            let _ = writeln!(
                xml,
                "      <property name=\"{}\" value=\"{}\"/>",
                xml_attr(name),
                xml_attr(&value)
            );
        }
        xml.push_str("    </properties>\n");
        for case in cases {
            let open = format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\"",
                xml_attr(suite),
                xml_attr(&case.id),
                seconds(case.duration_ms)
            );
            let message = xml_attr(&case.reason);
            let body = xml_escape(&case_text(case));
            match case.verdict {
                Verdict::Pass => {
                    let _ = writeln!(xml, "{open}/>");
                }
                Verdict::Fail | Verdict::Unknown => {
                    let _ = writeln!(
                        xml,
                        "{open}>\n      <failure type=\"{}\" message=\"{message}\">{body}</failure>\n    </testcase>",
                        case.verdict.as_str()
                    );
                }
                Verdict::Error => {
                    let _ = writeln!(
                        xml,
                        "{open}>\n      <error type=\"ERROR\" message=\"{message}\">{body}</error>\n    </testcase>"
                    );
                }
                Verdict::Skip => {
                    let _ = writeln!(
                        xml,
                        "{open}>\n      <skipped message=\"{message}\"/>\n    </testcase>"
                    );
                }
                Verdict::Warn => {
                    let _ = writeln!(
                        xml,
                        "{open}>\n      <system-out>WARN: {body}</system-out>\n    </testcase>"
                    );
                }
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Level;
    use crate::verdict::Evidence;

    fn case(id: &str, verdict: Verdict, reqs: &[&str]) -> CaseResult {
        CaseResult {
            id: id.into(),
            title: format!("title of {id}"),
            requirements: reqs.iter().map(|s| (*s).to_owned()).collect(),
            level: Level::Must,
            kind: "k".into(),
            verdict,
            reason: "because".into(),
            expected: "e".into(),
            observed: "o".into(),
            remediation: "fix it".into(),
            evidence: vec![Evidence {
                kind: "note".into(),
                summary: "s".into(),
                journal: vec![2],
            }],
            journal_span: Some((1, 3)),
            started_ms: 0,
            duration_ms: 1500,
            reproduce: format!("mtor-cert run --cases {id}"),
            load: None,
        }
    }

    fn results(cases: Vec<CaseResult>) -> RunResults {
        RunResults {
            format: RESULTS_FORMAT.into(),
            harness: HarnessInfo::current(),
            plan: PlanInfo {
                id: "p".into(),
                version: "1.0.0".into(),
                hash: "0".repeat(64),
                source: "embedded:x".into(),
            },
            target: TargetInfo {
                kind: TargetKind::Url,
                description: "ws://127.0.0.1:1".into(),
            },
            realm_manifest: None,
            mode: Mode::Ci,
            seed: 7,
            started_at: "2025-01-01T00:00:00.000Z".into(),
            finished_at: "2025-01-01T00:00:01.000Z".into(),
            complete: true,
            summary: Summary::of(Mode::Ci, &cases, true),
            cases,
        }
    }

    #[test]
    fn xml_escape_handles_markup_and_forbidden_characters() {
        assert_eq!(xml_escape("<&\"'>"), "&lt;&amp;&quot;&apos;&gt;".to_owned());
        assert_eq!(
            xml_escape("a\u{0}b\u{1b}c\u{ffff}"),
            "a\u{fffd}b\u{fffd}c\u{fffd}"
        );
        assert_eq!(xml_escape("x\ny\tz\r"), "x\ny\tz&#13;");
        assert_eq!(xml_attr("x\ny\tz\r"), "x&#10;y&#9;z&#13;");
        assert_eq!(xml_escape("héllo ✓"), "héllo ✓");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_is_compact() {
        let v = serde_json::json!({"b": {"z": 1, "a": [ {"y": 2, "x": "é\n"} ]}, "a": null});
        let bytes = canonical_json(&v).expect("canonical");
        assert_eq!(
            String::from_utf8(bytes).expect("utf8"),
            "{\"a\":null,\"b\":{\"a\":[{\"x\":\"é\\n\",\"y\":2}],\"z\":1}}\n"
        );
    }

    #[test]
    fn findings_are_ordered_by_severity_then_plan_order() {
        let r = results(vec![
            case("a.warn", Verdict::Warn, &["EVT-1"]),
            case("a.fail2", Verdict::Fail, &["EVT-1"]),
            case("a.pass", Verdict::Pass, &["EVT-1"]),
            case("a.unknown", Verdict::Unknown, &["EVT-1"]),
            case("a.fail1", Verdict::Fail, &["EVT-1"]),
            case("a.error", Verdict::Error, &["EVT-1"]),
            case("a.skip", Verdict::Skip, &["EVT-1"]),
        ]);
        let ids: Vec<&str> = findings(&r).iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["a.fail2", "a.fail1", "a.error", "a.unknown", "a.warn"]
        );
    }

    #[test]
    fn families_count_a_case_once_per_family() {
        let rows = family_rows(&[
            case("a.x", Verdict::Fail, &["EVT-1", "EVT-2", "LIM-1"]),
            case("a.y", Verdict::Pass, &["LIM-2"]),
        ]);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["EVT", "LIM"]);
        assert_eq!(rows[0].total, 1);
        assert_eq!(rows[1].total, 2);
        // Columns are in severity order: FAIL first, PASS last.
        let counts: Vec<usize> = rows[1].cells.iter().map(|c| c.count).collect();
        assert_eq!(counts, vec![1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn inconsistent_summaries_are_reported() {
        let mut r = results(vec![case("a.x", Verdict::Fail, &["EVT-1"])]);
        assert!(r.inconsistencies().is_empty());
        r.summary.exit_code = 0;
        assert!(r.inconsistencies()[0].contains("exit code 0"));
        r.summary = Summary::of(Mode::Ci, &[], true);
        assert!(r.inconsistencies()[0].contains("do not match"));
    }

    #[test]
    fn markdown_code_blocks_cannot_be_closed_by_the_text() {
        let block = md_block("a ``` b ```` c");
        assert!(block.starts_with("`````text\n"), "{block}");
        assert!(md_inline("<b>*x*</b>").starts_with("\\<b\\>\\*x"));
    }

    #[test]
    fn clip_cuts_on_character_boundaries() {
        assert_eq!(clip("ééé", 5), "ééé");
        assert_eq!(clip("éééé", 2), "éé… (4 more bytes in the journal)");
    }
}

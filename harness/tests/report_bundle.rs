//! Reports and the signed bundle: what the board reads must say what the results say, escape
//! whatever the realm sent, and any change to any file of a signed bundle must be caught and
//! named.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use mtor_harness::bundle::{self, BundleError, RenderFormat};
use mtor_harness::journal::{Dir, Entry, Record};
use mtor_harness::plan::Level;
use mtor_harness::report::{
    self, HarnessInfo, PlanInfo, RunResults, Summary, TargetInfo, TargetKind, RESULTS_FORMAT,
};
use mtor_harness::verdict::{CaseResult, Evidence, Mode, Verdict};
use serde_json::Value;

const HOSTILE: &str = "<script>alert('x')</script> & \"quoted\"";

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("report_bundle")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// Cases of every verdict, each with a journal span of four records: start, send, receive, end.
fn cases() -> Vec<CaseResult> {
    let spec: [(&str, Verdict, &[&str], Level); 8] = [
        ("events.bad-json", Verdict::Pass, &["LIM-3"], Level::Must),
        (
            "events.unknown-type",
            Verdict::Warn,
            &["EVT-2"],
            Level::Should,
        ),
        (
            "events.missing-id",
            Verdict::Fail,
            &["EVT-1", "EVT-4"],
            Level::Must,
        ),
        ("health.truthful", Verdict::Unknown, &["HLT-1"], Level::Must),
        (
            "health.shape",
            Verdict::Pass,
            &["HLT-2", "EVT-1"],
            Level::Must,
        ),
        ("ledger.conserved", Verdict::Fail, &["TOK-1"], Level::Must),
        ("ledger.audit", Verdict::Error, &["AUD-1"], Level::Must),
        ("ledger.escrow", Verdict::Skip, &["TOK-9"], Level::May),
    ];
    spec.iter()
        .enumerate()
        .map(|(i, (id, verdict, reqs, level))| {
            let first = 2 + 4 * i as u64;
            CaseResult {
                id: (*id).into(),
                title: format!("Title of {id}"),
                requirements: reqs.iter().map(|r| (*r).to_owned()).collect(),
                level: *level,
                kind: "probe".into(),
                verdict: *verdict,
                reason: format!("reason for {id} <&\"'> \u{1}"),
                expected: format!("expected of {id}"),
                observed: format!("observed of {id}: {HOSTILE}"),
                remediation: format!("remediation for {id}"),
                evidence: vec![Evidence {
                    kind: "frame".into(),
                    summary: format!("evidence of {id}"),
                    journal: vec![first + 2],
                }],
                journal_span: Some((first, first + 2)),
                started_ms: 10 * i as u64,
                duration_ms: 1234,
                reproduce: format!("mtor-cert run --cases {id} --seed 42"),
                load: None,
            }
        })
        .collect()
}

fn results_for(mode: Mode, cases: Vec<CaseResult>) -> RunResults {
    RunResults {
        format: RESULTS_FORMAT.into(),
        harness: HarnessInfo::current(),
        plan: PlanInfo {
            id: "mtor-1.0/standard".into(),
            version: "1.0.0".into(),
            hash: "ab".repeat(32),
            source: "embedded:suites/standard.toml".into(),
        },
        target: TargetInfo {
            kind: TargetKind::Url,
            description: "http://realm.example:8080".into(),
        },
        realm_manifest: Some(serde_json::json!({"realm": "test", "note": HOSTILE})),
        mode,
        seed: 42,
        started_at: "2025-03-01T12:00:00.000Z".into(),
        finished_at: "2025-03-01T12:01:00.000Z".into(),
        complete: true,
        summary: Summary::of(mode, &cases, true),
        cases,
    }
}

fn sample() -> RunResults {
    results_for(Mode::Ci, cases())
}

/// The journal matching [`cases`]: deterministic (fixed times) so bundles can be compared.
fn journal_records(results: &RunResults) -> Vec<Record> {
    let mut records = vec![Record {
        seq: 1,
        t_us: 0,
        case: None,
        entry: Entry::RunStart {
            plan: results.plan.id.clone(),
            plan_hash: results.plan.hash.clone(),
            seed: results.seed,
            target: results.target.description.clone(),
            at: results.started_at.clone(),
        },
    }];
    for case in &results.cases {
        let id = Some(case.id.clone());
        let mut push = |entry: Entry| {
            let seq = records.len() as u64 + 1;
            records.push(Record {
                seq,
                t_us: seq * 1500,
                case: id.clone(),
                entry,
            });
        };
        push(Entry::CaseStart {
            params: serde_json::json!({"n": 1}),
        });
        push(Entry::Frame {
            conn: 1,
            dir: Dir::Send,
            data: format!("{{\"type\":\"probe\",\"case\":\"{}\"}}", case.id),
        });
        push(Entry::Frame {
            conn: 1,
            dir: Dir::Recv,
            data: format!("reply {HOSTILE} \u{0}"),
        });
        push(Entry::CaseEnd {
            result: Box::new(case.clone()),
        });
    }
    records
}

fn write_journal(path: &Path, records: &[Record]) {
    let mut f = std::fs::File::create(path).expect("journal");
    for r in records {
        writeln!(f, "{}", serde_json::to_string(r).expect("record")).expect("write");
    }
}

fn fixed_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// Writes a bundle for [`sample`] into `<tmp>/<name>/bundle`.
fn make_bundle(name: &str, key: &SigningKey) -> (PathBuf, bundle::BundleInfo, RunResults) {
    let results = sample();
    let dir = tmp(name).join("bundle");
    std::fs::create_dir_all(&dir).expect("mkdir");
    write_journal(&dir.join("journal.ndjson"), &journal_records(&results));
    let info = bundle::write_bundle(&dir, &results, &dir.join("journal.ndjson"), key)
        .expect("write bundle");
    (dir, info, results)
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn problems(report: &bundle::VerifyReport) -> String {
    report
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// --- results.json ---------------------------------------------------------------------------------

fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/schemas/harness/results.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("schema JSON")
}

#[test]
fn results_validate_against_the_schema_and_broken_ones_do_not() {
    let validator = jsonschema::draft202012::new(&schema()).expect("schema compiles");
    let good: Value = serde_json::from_slice(&report::to_canonical_json(&sample()).expect("json"))
        .expect("parse");
    let errors: Vec<String> = validator
        .iter_errors(&good)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(report::validate_results(&good).expect("schema").is_empty());

    type Breaker = fn(&mut Value);
    let breakages: [(&str, Breaker); 6] = [
        ("no summary", |v| {
            v.as_object_mut().map(|o| o.remove("summary"));
        }),
        ("unknown verdict", |v| {
            v["cases"][0]["verdict"] = "MAYBE".into()
        }),
        ("negative seed", |v| v["seed"] = (-1).into()),
        ("bad format", |v| v["format"] = "mtor-cert/results/2".into()),
        ("short plan hash", |v| v["plan"]["hash"] = "abc".into()),
        ("extra field", |v| v["cases"][1]["secret"] = true.into()),
    ];
    for (what, breaker) in breakages {
        let mut bad = good.clone();
        breaker(&mut bad);
        assert!(!validator.is_valid(&bad), "{what} should not validate");
        assert!(
            !report::validate_results(&bad).expect("schema").is_empty(),
            "{what}"
        );
    }
}

#[test]
fn canonical_json_is_deterministic_sorted_compact_and_round_trips() {
    let results = sample();
    let a = report::to_canonical_json(&results).expect("json");
    let b = report::to_canonical_json(&results.clone()).expect("json");
    assert_eq!(a, b);
    let text = String::from_utf8(a.clone()).expect("utf8");
    assert!(text.ends_with("}\n"));
    assert_eq!(
        text.matches('\n').count(),
        1,
        "one line, newline-terminated"
    );
    assert!(
        text.starts_with("{\"cases\":["),
        "keys sorted: {:.40}",
        text
    );
    assert!(!text.contains("\": "), "no insignificant whitespace");
    let back: RunResults = serde_json::from_slice(&a).expect("round trip");
    assert_eq!(back, results);
}

// --- HTML ------------------------------------------------------------------------------------------

#[test]
fn html_has_every_case_the_numbers_and_the_outcome_and_escapes_realm_text() {
    let results = sample();
    let html = report::render_html(&results, &journal_records(&results)).expect("html");
    for case in &results.cases {
        assert!(
            html.contains(&format!("id=\"{}\"", case.id)),
            "anchor {}",
            case.id
        );
        assert!(
            html.contains(&format!("href=\"#{}\"", case.id)),
            "link {}",
            case.id
        );
    }
    assert!(html.contains("NOT A CERTIFICATION RUN"));
    assert!(html.contains(&results.plan.hash));
    assert!(html.contains(&results.harness.version));
    assert!(html.contains(">42<"), "seed shown");
    // The totals row: 2 FAIL, 1 ERROR, 1 UNKNOWN, 1 WARN, 1 SKIP, 2 PASS, 8 cases.
    for (verdict, n) in [
        ("FAIL", 2),
        ("ERROR", 1),
        ("UNKNOWN", 1),
        ("WARN", 1),
        ("SKIP", 1),
        ("PASS", 2),
    ] {
        assert!(
            html.contains(&format!("title=\"all {verdict}\">{n}</td>")),
            "total {verdict} {n}"
        );
    }
    // Family EVT: events.unknown-type (WARN), events.missing-id (FAIL), health.shape (PASS).
    assert!(html.contains("title=\"EVT FAIL\">1</td>"));
    assert!(html.contains("title=\"EVT WARN\">1</td>"));
    assert!(html.contains("title=\"EVT PASS\">1</td>"));
    // Suites in plan order, with their counts.
    let events = html.find("<tr><th>events</th>").expect("events row");
    let ledger = html.find("<tr><th>ledger</th>").expect("ledger row");
    assert!(events < ledger);
    assert!(html.contains("<svg"), "chart");

    assert!(!html.contains("<script"), "realm text must be escaped");
    assert!(html.contains("&lt;script&gt;"));
    assert!(
        !html.contains('\u{0}') && !html.contains('\u{1}'),
        "control characters replaced"
    );
    // Self-contained: no external asset of any kind.
    for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
        assert!(!html.contains(needle), "found {needle}");
    }
    // Wire log with directions.
    assert!(html.contains("→") && html.contains("←"));
    assert!(
        html.contains("id=\"events.missing-id@12\""),
        "wire line anchor"
    );
    assert!(
        html.contains("href=\"#events.missing-id@12\""),
        "evidence links its record"
    );
}

#[test]
fn html_outcome_words_follow_mode_and_certification() {
    let pass: Vec<CaseResult> = cases()
        .into_iter()
        .map(|mut c| {
            c.verdict = Verdict::Pass;
            c
        })
        .collect();
    let certified =
        report::render_html(&results_for(Mode::Certification, pass.clone()), &[]).expect("html");
    assert!(certified.contains(">CERTIFIED<"));
    let failed =
        report::render_html(&results_for(Mode::Certification, cases()), &[]).expect("html");
    assert!(failed.contains(">NOT CERTIFIED<"));
    assert!(!failed.contains(">CERTIFIED<"));
}

#[test]
fn html_wire_excerpt_is_capped_at_200_records() {
    let mut results = sample();
    results.cases.truncate(1);
    results.cases[0].journal_span = Some((1, 250));
    results.summary = Summary::of(results.mode, &results.cases, true);
    let records: Vec<Record> = (1..=250)
        .map(|seq| Record {
            seq,
            t_us: seq,
            case: Some(results.cases[0].id.clone()),
            entry: Entry::Note {
                text: format!("note {seq}"),
            },
        })
        .collect();
    let html = report::render_html(&results, &records).expect("html");
    assert!(html.contains("note 200<"));
    assert!(!html.contains("note 201<"));
    assert!(html.contains("50 more record(s)"));
}

// --- Markdown --------------------------------------------------------------------------------------

#[test]
fn markdown_lists_findings_most_severe_first_and_omits_passes() {
    let md = report::render_markdown(&sample());
    let at = |id: &str| md.find(&format!("`{id}`")).unwrap_or(usize::MAX);
    for passing in ["events.bad-json", "health.shape", "ledger.escrow"] {
        assert_eq!(at(passing), usize::MAX, "{passing} is not a finding");
    }
    let order = [
        "events.missing-id",
        "ledger.conserved",
        "ledger.audit",
        "health.truthful",
        "events.unknown-type",
    ];
    for pair in order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{} before {}", pair[0], pair[1]);
        assert!(at(pair[1]) != usize::MAX, "{} present", pair[1]);
    }
    assert!(md.contains("## FAIL `events.missing-id`"));
    assert!(md.contains("EVT-1, EVT-4"));
    assert!(md.contains("remediation for ledger.conserved"));
    assert!(md.contains("mtor-cert run --cases ledger.conserved --seed 42"));
    // Outside code blocks (where text is literal), markup is backslash-escaped.
    assert!(
        md.contains("reason for events.missing-id \\<\\&\"'\\> "),
        "{md}"
    );
    let mut in_fence = false;
    for line in md.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence {
            for (i, _) in line.match_indices('<') {
                assert!(
                    line[..i].ends_with('\\'),
                    "raw < outside a code block: {line}"
                );
            }
        }
    }

    let clean = results_for(
        Mode::Ci,
        cases()
            .into_iter()
            .filter(|c| c.verdict == Verdict::Pass)
            .collect(),
    );
    assert!(report::render_markdown(&clean).contains("No findings"));
}

// --- JUnit -----------------------------------------------------------------------------------------

/// A tiny XML checker: tags balance, attribute values are quoted, no raw `<` or `&` in text.
/// Returns (element name, attributes) of every start tag in document order.
fn parse_xml(xml: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let body = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
        .expect("XML declaration");
    let mut stack: Vec<String> = Vec::new();
    let mut starts = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        assert!(!text.contains('>'), "raw > in text: {text:.80}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity)
                    || entity.starts_with("&#"),
                "bad entity {entity:.20}"
            );
        }
        let close = rest[open..].find('>').expect("tag closes") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "raw < inside a tag: {tag:.80}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "unbalanced </{name}>");
        } else {
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let (name, mut attrs_text) = tag.split_once(' ').unwrap_or((tag, ""));
            let mut attrs = BTreeMap::new();
            while let Some(eq) = attrs_text.find("=\"") {
                let key = attrs_text[..eq].trim().to_owned();
                let after = &attrs_text[eq + 2..];
                let end = after.find('"').expect("attribute value closes");
                attrs.insert(key, after[..end].to_owned());
                attrs_text = &after[end + 1..];
            }
            assert!(
                attrs_text.trim().is_empty(),
                "junk in tag: {attrs_text:.40}"
            );
            starts.push((name.to_owned(), attrs));
            if !self_closing {
                stack.push(name.to_owned());
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(rest.trim().is_empty());
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    starts
}

#[test]
fn junit_is_well_formed_and_counts_unknown_as_failure() {
    let xml = report::render_junit(&sample());
    assert!(
        !xml.contains('\u{1}') && !xml.contains('\u{0}'),
        "no forbidden characters"
    );
    let tags = parse_xml(&xml);
    let get = |name: &str| tags.iter().filter(|(n, _)| n == name).collect::<Vec<_>>();
    let root = &get("testsuites")[0].1;
    assert_eq!(root["tests"], "8");
    assert_eq!(root["failures"], "3", "2 FAIL + 1 UNKNOWN");
    assert_eq!(root["errors"], "1");
    assert_eq!(root["skipped"], "1");
    let suites = get("testsuite");
    let names: Vec<&str> = suites.iter().map(|(_, a)| a["name"].as_str()).collect();
    assert_eq!(names, ["events", "health", "ledger"]);
    let ledger = &suites[2].1;
    assert_eq!(
        (
            ledger["tests"].as_str(),
            ledger["failures"].as_str(),
            ledger["errors"].as_str(),
            ledger["skipped"].as_str()
        ),
        ("3", "1", "1", "1")
    );
    let total: usize = suites
        .iter()
        .map(|(_, a)| a["tests"].parse::<usize>().expect("n"))
        .sum();
    assert_eq!(total, get("testcase").len());
    assert_eq!(get("failure").len(), 3);
    assert_eq!(get("error").len(), 1);
    assert_eq!(get("skipped").len(), 1);
    assert_eq!(
        get("system-out").len(),
        1,
        "WARN reported as output of a pass"
    );
    assert!(get("failure").iter().any(|(_, a)| a["type"] == "UNKNOWN"));
    let case = get("testcase")
        .into_iter()
        .find(|(_, a)| a["name"] == "events.missing-id")
        .expect("case");
    assert_eq!(case.1["classname"], "events");
    assert_eq!(case.1["time"], "1.234");
    // The reason, with markup and a control character, is escaped in the message attribute.
    assert!(
        xml.contains("message=\"reason for events.missing-id &lt;&amp;&quot;&apos;&gt; \u{fffd}\"")
    );
}

#[test]
fn xml_escaper_escapes_markup_and_replaces_forbidden_characters() {
    assert_eq!(report::xml_escape("<&\"'>"), "&lt;&amp;&quot;&apos;&gt;");
    assert_eq!(
        report::xml_escape("a\u{0}\u{8}\u{b}\u{1f}b"),
        "a\u{fffd}\u{fffd}\u{fffd}\u{fffd}b"
    );
    assert_eq!(report::xml_escape("\u{fffe}\u{ffff}"), "\u{fffd}\u{fffd}");
    assert_eq!(report::xml_escape("ok ✓ \u{10000}"), "ok ✓ \u{10000}");
}

// --- bundle ----------------------------------------------------------------------------------------

#[test]
fn a_fresh_bundle_verifies_as_a_directory_and_as_an_archive() {
    let key = bundle::generate_run_key().expect("key");
    let results = sample();
    let dir = tmp("fresh").join("bundle");
    std::fs::create_dir_all(dir.join("realm-data")).expect("mkdir");
    std::fs::write(dir.join("realm-data/db.sqlite"), b"not part of the bundle").expect("write");
    // The journal may live elsewhere: it is copied in.
    let journal = tmp("fresh-journal").join("j.ndjson");
    write_journal(&journal, &journal_records(&results));
    let info = bundle::write_bundle(&dir, &results, &journal, &key).expect("write");

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "journal.ndjson",
            "junit.xml",
            "manifest.json",
            "manifest.sig",
            "realm-data",
            "remediation.md",
            "report.html",
            "results.json"
        ]
    );
    let listed: Vec<&str> = info.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        listed,
        [
            "journal.ndjson",
            "junit.xml",
            "remediation.md",
            "report.html",
            "results.json"
        ]
    );
    assert_eq!(
        info.archive,
        std::fs::canonicalize(&dir)
            .expect("canonical")
            .with_file_name("bundle.tar.gz")
    );

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["format"], "mtor-cert/bundle/1");
    assert_eq!(manifest["plan"]["hash"], results.plan.hash);
    assert_eq!(
        manifest["public_key"],
        hex::encode(key.verifying_key().to_bytes())
    );

    // The run key's secret is nowhere in the bundle.
    let secret = hex::encode(key.to_bytes());
    for name in [
        "journal.ndjson",
        "junit.xml",
        "manifest.json",
        "manifest.sig",
        "remediation.md",
        "report.html",
        "results.json",
    ] {
        let bytes = std::fs::read(dir.join(name)).expect("read");
        assert!(!String::from_utf8_lossy(&bytes).contains(&secret), "{name}");
        assert!(!bytes.windows(32).any(|w| w == key.to_bytes()), "{name}");
    }

    let report = bundle::verify_bundle(&dir).expect("verify dir");
    assert!(report.is_valid(), "{}", problems(&report));
    assert_eq!(report.ignored, ["realm-data"]);
    assert_eq!(report.results.as_ref(), Some(&results));

    let report = bundle::verify_bundle(&info.archive).expect("verify archive");
    assert!(report.is_valid(), "{}", problems(&report));
    assert_eq!(report.results.as_ref(), Some(&results));
    let journal = report.journal.clone().expect("journal path");
    assert_eq!(
        mtor_harness::journal::read(&journal).expect("journal readable while the report lives"),
        journal_records(&results)
    );
    let extracted = report.dir.clone();
    drop(report);
    assert!(
        !extracted.exists(),
        "the extraction is removed with the report"
    );
}

#[test]
fn bundles_and_archives_are_deterministic_and_rerender_reproduces_them() {
    let key = fixed_key();
    let (a, info_a, _) = make_bundle("det-a", &key);
    let (b, info_b, _) = make_bundle("det-b", &key);
    assert_eq!(info_a.manifest_sha256, info_b.manifest_sha256);
    assert_eq!(
        std::fs::read(&info_a.archive).expect("a"),
        std::fs::read(&info_b.archive).expect("b"),
        "same inputs, same archive bytes"
    );
    for (format, file) in [
        (RenderFormat::Html, "report.html"),
        (RenderFormat::Md, "remediation.md"),
        (RenderFormat::Junit, "junit.xml"),
        (RenderFormat::Json, "results.json"),
    ] {
        let original = std::fs::read_to_string(a.join(file)).expect("file");
        assert_eq!(
            bundle::rerender(&a, format).expect("rerender"),
            original,
            "{file}"
        );
        assert_eq!(
            bundle::rerender(&info_b.archive, format).expect("rerender"),
            original,
            "{file}"
        );
    }
    assert_eq!(
        bundle::failed_cases(&b).expect("failed"),
        [
            "events.unknown-type",
            "events.missing-id",
            "health.truthful",
            "ledger.conserved",
            "ledger.audit"
        ]
    );
    // No temporary file of the atomic writes is left behind.
    for entry in std::fs::read_dir(&a).expect("read_dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(!name.starts_with(".mtor-tmp-"), "{name}");
    }
}

#[test]
fn flipping_one_byte_of_any_file_fails_verification_naming_that_file() {
    let (dir, _, _) = make_bundle("flip", &fixed_key());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 7);
    for name in &names {
        let copy = tmp("flip-copies").join(name);
        copy_dir(&dir, &copy);
        let path = copy.join(name);
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let report = bundle::verify_bundle(&copy).expect("verify");
        assert!(!report.is_valid(), "{name} flipped but the bundle verifies");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.file == *name || p.message.contains(name.as_str())),
            "{name} not named in:\n{}",
            problems(&report)
        );
        if !name.starts_with("manifest.") {
            let p = report
                .problems
                .iter()
                .find(|p| p.file == *name)
                .expect("named");
            assert!(p.message.contains("sha256 mismatch (manifest "), "{p}");
            assert!(report.signature_valid, "the manifest itself is intact");
        }
    }
}

#[test]
fn missing_and_unlisted_files_are_named() {
    let (dir, _, _) = make_bundle("missing", &fixed_key());
    std::fs::remove_file(dir.join("junit.xml")).expect("rm");
    std::fs::write(dir.join("extra.txt"), b"smuggled").expect("write");
    let report = bundle::verify_bundle(&dir).expect("verify");
    assert!(!report.is_valid());
    let text = problems(&report);
    assert!(
        text.contains("junit.xml: listed in the manifest but missing"),
        "{text}"
    );
    assert!(
        text.contains("extra.txt: present but not listed in the manifest"),
        "{text}"
    );
    assert_eq!(report.problems.len(), 2, "{text}");
}

#[test]
fn a_manifest_edited_to_cover_a_changed_file_fails_its_signature() {
    let (dir, _, _) = make_bundle("tamper", &fixed_key());
    // The classic forgery: change the report, then fix its hash in the manifest.
    let forged = b"<html>CERTIFIED</html>";
    std::fs::write(dir.join("report.html"), forged).expect("write");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("read"))
            .expect("json");
    for f in manifest["files"].as_array_mut().expect("files") {
        if f["path"] == "report.html" {
            f["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(forged)).into();
            f["bytes"] = forged.len().into();
        }
    }
    std::fs::write(
        dir.join("manifest.json"),
        report::canonical_json(&manifest).expect("json"),
    )
    .expect("write");
    let report = bundle::verify_bundle(&dir).expect("verify");
    assert!(!report.signature_valid);
    assert!(!report.is_valid());
    let text = problems(&report);
    assert!(
        text.contains("manifest.json: signature in manifest.sig does not verify"),
        "{text}"
    );
}

#[test]
fn edited_results_that_keep_their_schema_are_caught_by_consistency() {
    // Even re-signed with the same key, a results.json whose summary lies is reported.
    let key = fixed_key();
    let mut results = sample();
    results.summary.exit_code = 0;
    let dir = tmp("lying").join("bundle");
    std::fs::create_dir_all(&dir).expect("mkdir");
    write_journal(&dir.join("journal.ndjson"), &journal_records(&results));
    bundle::write_bundle(&dir, &results, &dir.join("journal.ndjson"), &key).expect("write");
    let report = bundle::verify_bundle(&dir).expect("verify");
    assert!(report.signature_valid);
    assert!(!report.is_valid());
    assert!(
        problems(&report).contains("results.json: summary says exit code 0"),
        "{}",
        problems(&report)
    );
}

/// A `.tar.gz` with one regular entry whose stored name is written raw, bypassing the tar
/// crate's own refusal of such names.
fn archive_with_raw_entry(path: &Path, raw_name: &str, kind: tar::EntryType) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut ok = tar::Header::new_ustar();
    ok.set_path("bundle/results.json").expect("path");
    ok.set_size(2);
    ok.set_mode(0o644);
    ok.set_cksum();
    builder.append(&ok, &b"{}"[..]).expect("append");
    let mut evil = tar::Header::new_ustar();
    evil.set_path("bundle/placeholder").expect("path");
    evil.as_old_mut().name = [0; 100];
    evil.as_old_mut().name[..raw_name.len()].copy_from_slice(raw_name.as_bytes());
    evil.set_entry_type(kind);
    evil.set_size(if kind == tar::EntryType::Regular {
        4
    } else {
        0
    });
    if kind == tar::EntryType::Symlink {
        evil.set_link_name("/etc/passwd").expect("link");
    }
    evil.set_mode(0o644);
    evil.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"evil"
    } else {
        b""
    };
    builder.append(&evil, data).expect("append");
    let tar_bytes = builder.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).expect("gz");
    std::fs::write(path, gz.finish().expect("gz")).expect("write");
}

#[test]
fn unsafe_archives_are_refused() {
    let dir = tmp("evil");
    let cases = [
        ("../evil", tar::EntryType::Regular, "`..`"),
        ("bundle/../../evil", tar::EntryType::Regular, "`..`"),
        ("/tmp/evil", tar::EntryType::Regular, "absolute"),
        ("bundle/link", tar::EntryType::Symlink, "links"),
        ("bundle/results.json", tar::EntryType::Regular, "twice"),
        ("other/x", tar::EntryType::Regular, "one top folder"),
        ("bundle/sub/x", tar::EntryType::Regular, "directly under"),
    ];
    for (i, (name, kind, why)) in cases.into_iter().enumerate() {
        let archive = dir.join(format!("evil-{i}.tar.gz"));
        archive_with_raw_entry(&archive, name, kind);
        match bundle::verify_bundle(&archive) {
            Err(BundleError::UnsafeArchive { entry, reason, .. }) => {
                assert_eq!(entry, name);
                assert!(reason.contains(why), "{name}: {reason}");
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    assert!(!dir.join("evil").exists());
}

#[test]
fn a_directory_without_a_manifest_is_reported_not_crashed_on() {
    let dir = tmp("empty");
    let report = bundle::verify_bundle(&dir).expect("verify");
    assert!(!report.is_valid());
    assert!(problems(&report).starts_with("manifest.json: missing"));
    assert!(matches!(
        bundle::verify_bundle(&dir.join("nope")),
        Err(BundleError::Io { .. })
    ));
}

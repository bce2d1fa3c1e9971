//! The contract's own consistency: corpus against schemas, schemas against the spec, the spec's
//! requirement IDs, and the AsyncAPI document's references.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mtor_harness::contract::Contract;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stem(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".json"))
        .expect("a .json file name")
        .to_owned()
}

#[test]
fn the_contract_compiles_with_at_least_25_message_types() {
    let contract = Contract::embedded().expect("embedded schemas compile");
    let n = contract.message_types().count();
    assert!(n >= 25, "only {n} message types");
}

#[test]
fn every_valid_corpus_event_passes() {
    let contract = Contract::embedded().expect("contract");
    let files = json_files(&root().join("fixtures/corpus/valid"));
    assert!(!files.is_empty());
    for file in files {
        let violations = contract.validate_event(&load(&file));
        assert!(violations.is_empty(), "{}: {violations:#?}", file.display());
    }
}

#[test]
fn every_valid_rest_and_intent_example_passes_its_schema() {
    let contract = Contract::embedded().expect("contract");
    for (folder, prefix) in [("rest", "rest/"), ("intents", "intents/")] {
        let files = json_files(&root().join("fixtures/corpus/valid").join(folder));
        assert!(!files.is_empty(), "no examples in valid/{folder}");
        for file in files {
            // `<schema>[--variant].json`
            let name = stem(&file);
            let schema = name.split("--").next().expect("split yields one item");
            let violations = contract
                .validate_with(&format!("{prefix}{schema}"), &load(&file))
                .expect("example names an existing schema");
            assert!(violations.is_empty(), "{}: {violations:#?}", file.display());
        }
    }
}

/// `EXPECTED.tsv`: relative path, instance pointer, failing keyword.
fn expected() -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(root().join("fixtures/corpus/invalid/EXPECTED.tsv"))
        .expect("EXPECTED.tsv");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 3, "EXPECTED.tsv line {l:?} needs 3 columns");
            (cols[0].to_owned(), (cols[1].to_owned(), cols[2].to_owned()))
        })
        .collect()
}

#[test]
fn every_invalid_corpus_file_fails_at_the_expected_place() {
    let contract = Contract::embedded().expect("contract");
    let expected = expected();
    let base = root().join("fixtures/corpus/invalid");
    let mut seen = BTreeSet::new();
    for (sub, is_event) in [("", true), ("intents", false)] {
        for file in json_files(&base.join(sub)) {
            let rel = if sub.is_empty() {
                format!("{}.json", stem(&file))
            } else {
                format!("{sub}/{}.json", stem(&file))
            };
            let value = load(&file);
            let violations = if is_event {
                contract.validate_event(&value)
            } else {
                let name = stem(&file);
                let schema = name.split("--").next().expect("one item");
                contract
                    .validate_with(&format!("intents/{schema}"), &value)
                    .expect("named schema exists")
            };
            assert!(!violations.is_empty(), "{rel} should be invalid but passes");
            let (pointer, keyword) = expected
                .get(&rel)
                .unwrap_or_else(|| panic!("{rel} is not listed in EXPECTED.tsv"));
            assert!(
                violations
                    .iter()
                    .any(|v| &v.pointer == pointer && &v.keyword == keyword),
                "{rel}: expected [{keyword}] at {pointer:?}, got {violations:#?}"
            );
            seen.insert(rel);
        }
    }
    let listed: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(listed, seen, "EXPECTED.tsv and the invalid corpus disagree");
    assert!(seen.len() >= 30, "only {} invalid examples", seen.len());
}

#[test]
fn invalid_files_are_named_after_the_rule_they_break() {
    for file in json_files(&root().join("fixtures/corpus/invalid")) {
        let name = stem(&file);
        let (subject, rule) = name
            .split_once("--")
            .unwrap_or_else(|| panic!("{name}: want <type>--<rule>.json"));
        assert!(!subject.is_empty() && !rule.is_empty(), "{name}");
    }
}

fn spec() -> String {
    std::fs::read_to_string(root().join("docs/protocol.md")).expect("docs/protocol.md")
}

/// Message types the spec names through their schema file `fixtures/schemas/<type>.schema.json`.
fn spec_message_types(spec: &str) -> BTreeSet<String> {
    let mut types = BTreeSet::new();
    for piece in spec.split("fixtures/schemas/").skip(1) {
        if let Some((name, _)) = piece.split_once(".schema.json") {
            if !name.contains('/') && name != "envelope" && !name.contains('<') {
                types.insert(name.to_owned());
            }
        }
    }
    types
}

#[test]
fn every_message_type_in_the_spec_has_a_schema_and_a_valid_example() {
    let contract = Contract::embedded().expect("contract");
    let in_spec = spec_message_types(&spec());
    let in_schemas: BTreeSet<String> = contract.message_types().map(str::to_owned).collect();
    assert_eq!(
        in_spec, in_schemas,
        "spec and schemas name different message types"
    );
    let examples: BTreeSet<String> = json_files(&root().join("fixtures/corpus/valid"))
        .iter()
        .filter_map(|f| {
            load(f)
                .get("type")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let missing: Vec<_> = in_schemas.difference(&examples).collect();
    assert!(missing.is_empty(), "no valid example for {missing:?}");
}

#[test]
fn every_schema_declares_draft_2020_12_and_a_unique_id() {
    let mut ids = BTreeSet::new();
    for (file, text) in mtor_harness::contract::SCHEMA_FILES {
        let schema: Value = serde_json::from_str(text).expect("schema JSON");
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{file}"
        );
        let id = schema["$id"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no $id"));
        assert!(ids.insert(id.to_owned()), "{file}: duplicate $id {id}");
        // Schemas are self-contained: only local references, so any validator can load one file.
        for piece in text.split("\"$ref\"").skip(1) {
            let target = piece.trim_start_matches([' ', ':']).trim_start_matches('"');
            assert!(
                target.starts_with('#'),
                "{file}: non-local $ref {target:.40}"
            );
        }
    }
}

/// A requirement as the spec states it: `**ID** (LEVEL)`.
fn requirements(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("**") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("**") else { break };
        let id = &after[..end];
        let tail = &after[end + 2..];
        let is_id = id.split_once('-').is_some_and(|(fam, n)| {
            !fam.is_empty()
                && fam.chars().all(|c| c.is_ascii_uppercase())
                && !n.is_empty()
                && n.chars().all(|c| c.is_ascii_digit())
        });
        if is_id {
            if let Some(level) = ["MUST", "SHOULD", "MAY"]
                .iter()
                .find(|l| tail.trim_start().starts_with(&format!("({l})")))
            {
                out.push((id.to_owned(), (*level).to_owned()));
            }
        }
        rest = tail;
    }
    out
}

#[test]
fn requirement_ids_are_unique_gapless_and_indexed() {
    let spec = spec();
    let (body, appendix) = spec
        .split_once("\n## Appendix")
        .expect("the spec has an appendix index");
    let stated = requirements(body);
    assert!(stated.len() >= 100, "only {} requirements", stated.len());
    let mut by_family: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut levels = BTreeMap::new();
    for (id, level) in &stated {
        assert!(
            levels.insert(id.clone(), level.clone()).is_none(),
            "{id} stated twice"
        );
        let (fam, n) = id.split_once('-').expect("checked above");
        by_family
            .entry(fam.to_owned())
            .or_default()
            .push(n.parse().expect("digits"));
    }
    for (fam, mut numbers) in by_family {
        numbers.sort_unstable();
        let want: Vec<u32> = (1..=numbers.len() as u32).collect();
        assert_eq!(
            numbers, want,
            "family {fam} is not numbered 1..n without gaps"
        );
    }
    // The appendix: `| ID | Level | Summary |` rows.
    let mut indexed = BTreeMap::new();
    for line in appendix.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() >= 4 && levels.contains_key(cols[1].trim_matches('`').trim_matches('*')) {
            let id = cols[1].trim_matches('`').trim_matches('*').to_owned();
            indexed.insert(id, cols[2].to_owned());
        }
    }
    assert_eq!(
        indexed.keys().collect::<Vec<_>>(),
        levels.keys().collect::<Vec<_>>(),
        "appendix index and stated requirements differ"
    );
    for (id, level) in &levels {
        assert_eq!(&indexed[id], level, "{id}: level differs in the appendix");
    }
}

#[test]
fn asyncapi_references_resolve_and_cover_every_message_type() {
    let docs = root().join("docs");
    let text = std::fs::read_to_string(docs.join("asyncapi.yaml")).expect("docs/asyncapi.yaml");
    assert!(
        text.contains("asyncapi: 3.0.0")
            || text.contains("asyncapi: '3.0.0'")
            || text.contains("asyncapi: \"3.0.0\"")
    );
    let mut referenced = BTreeSet::new();
    for line in text.lines() {
        let Some((_, target)) = line.split_once("$ref:") else {
            continue;
        };
        let target = target.trim().trim_matches(['\'', '"']);
        if target.starts_with('#') {
            continue;
        }
        let file = target.split('#').next().expect("one item");
        let path = docs.join(file);
        assert!(path.is_file(), "asyncapi.yaml refers to missing {target}");
        if let Some(name) = file
            .strip_prefix("../fixtures/schemas/")
            .and_then(|n| n.strip_suffix(".schema.json"))
        {
            referenced.insert(name.to_owned());
        }
    }
    let contract = Contract::embedded().expect("contract");
    for kind in contract.message_types() {
        assert!(referenced.contains(kind), "asyncapi.yaml lacks {kind}");
    }
}

#[test]
fn every_requirement_a_plan_names_is_in_the_spec() {
    let spec = spec();
    let (body, _) = spec.split_once("\n## Appendix").expect("appendix");
    let stated: BTreeMap<String, String> = requirements(body).into_iter().collect();
    let plans = mtor_harness::plan::Plan::embedded().expect("plans parse");
    assert!(!plans.is_empty());
    for plan in plans {
        for case in &plan.cases {
            for req in &case.requirements {
                assert!(
                    stated.contains_key(req),
                    "{}: case {} names {req}, which the spec does not state",
                    plan.id,
                    case.id
                );
            }
            // A case judged at MUST must check at least one MUST.
            if case.level == mtor_harness::plan::Level::Must {
                assert!(
                    case.requirements.iter().any(|r| stated[r] == "MUST"),
                    "{}: case {} is MUST but checks no MUST requirement",
                    plan.id,
                    case.id
                );
            }
        }
    }
}

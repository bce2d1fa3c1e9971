//! `mtor-cert lint-events` as a user runs it: a real process, real files, real exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtor-cert"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run mtor-cert")
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lint_cli");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn first_valid(kind: &str) -> String {
    let text = std::fs::read_to_string(root().join(format!("fixtures/corpus/valid/{kind}.json")))
        .expect("valid example");
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    serde_json::to_string(&value).expect("one line")
}

#[test]
fn valid_events_exit_0() {
    let out = cert(&[
        "lint-events",
        "fixtures/corpus/valid/intent.submit.json",
        "fixtures/corpus/valid/session.hello.json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_invalid_event_exits_1_and_names_the_pointer_and_rule() {
    let bad = first_valid("intent.submit").replacen("\"max_cost\":", "\"max_cost\":-1,\"x\":", 1);
    let path = scratch("negative.json", bad.as_bytes());
    let out = cert(&["lint-events", path.to_str().expect("utf8 path")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("negative.json:1:"), "{stdout}");
    assert!(stdout.contains("\"/body/max_cost\" [minimum]"), "{stdout}");
}

#[test]
fn ndjson_captures_are_checked_line_by_line() {
    let good = first_valid("session.hello");
    let unknown = good.replacen("session.hello", "session.nonsense", 1);
    let mut capture = format!("{good}\n{unknown}\n\n{{not json\n").into_bytes();
    capture.extend_from_slice(b"{\"proto\":\"MTOR/1\",\"x\":\"\xff\"}\n");
    capture.extend_from_slice(format!("{good}\n").as_bytes());
    let path = scratch("capture.ndjson", &capture);
    let out = cert(&[
        "lint-events",
        "--format",
        "json",
        path.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let findings: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON finding"))
        .collect();
    let lines: Vec<u64> = findings
        .iter()
        .map(|f| f["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, vec![2, 4, 5]);
    assert_eq!(findings[0]["violations"][0]["keyword"], "known-type");
    assert_eq!(findings[0]["violations"][0]["pointer"], "/type");
    assert_eq!(findings[1]["violations"][0]["keyword"], "json");
    assert_eq!(findings[2]["violations"][0]["keyword"], "utf8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("5 event(s) checked, 2 valid, 3 invalid"),
        "{stderr}"
    );
}

#[test]
fn unreadable_input_exits_3() {
    let out = cert(&["lint-events", "does/not/exist.json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does/not/exist.json"));
}

#[test]
fn no_files_is_a_usage_error() {
    assert_eq!(cert(&["lint-events"]).status.code(), Some(3));
}

#[test]
fn rest_bodies_are_checked_against_a_named_schema() {
    let ok = cert(&[
        "lint-events",
        "--schema",
        "rest/health",
        "fixtures/corpus/valid/rest/health.json",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let wrong = cert(&[
        "lint-events",
        "--schema",
        "rest/health",
        "fixtures/corpus/valid/rest/manifest.json",
    ]);
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    let unknown = cert(&[
        "lint-events",
        "--schema",
        "rest/nope",
        "fixtures/corpus/valid/rest/health.json",
    ]);
    assert_eq!(unknown.status.code(), Some(3), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no schema named `rest/nope`"));
}

#[test]
fn an_intent_input_is_checked_against_its_intent_schema() {
    // A well-formed submit whose cert.probe input lacks the required nonce.
    let bad = first_valid("intent.submit");
    let mut value: serde_json::Value = serde_json::from_str(&bad).expect("json");
    value["body"]["intent"] = "cert.probe".into();
    value["body"]["input"] = serde_json::json!({ "work_ms": 1 });
    let path = scratch("probe-no-nonce.json", value.to_string().as_bytes());
    let out = cert(&["lint-events", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"/body/input\" [required]"));
}

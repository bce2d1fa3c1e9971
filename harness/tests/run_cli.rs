//! `mtor-cert run`, `verify`, `report` and `--resume` as a user runs them: a real process,
//! real files, the documented exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cert(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtor-cert"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run mtor-cert")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("run_cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn an_unreachable_realm_exits_2_with_a_full_bundle_that_verifies_until_tampered() {
    let dir = scratch("unreachable");
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let out = cert(&["run", "--realm", &url, "--out", "b", "--seed", "7"], &dir);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("report:"), "{stdout}");
    for f in [
        "results.json",
        "report.html",
        "remediation.md",
        "junit.xml",
        "journal.ndjson",
        "manifest.json",
        "manifest.sig",
    ] {
        assert!(dir.join("b").join(f).is_file(), "{f} missing");
    }
    assert!(dir.join("b.tar.gz").is_file());
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("b/results.json")).expect("read"))
            .expect("json");
    assert_eq!(results["seed"], 7);
    assert!(results["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .all(|c| c["verdict"] == "UNKNOWN"));

    let ok = cert(&["verify", "b"], &dir);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let ok = cert(&["verify", "b.tar.gz"], &dir);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");

    // The board's copy of the run key must match; any other key is refused.
    let wrong = cert(&["verify", "b", "--key", &"ab".repeat(32)], &dir);
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");

    // One byte changed in the report: verify fails and names the file.
    let html = dir.join("b/report.html");
    let mut bytes = std::fs::read(&html).expect("read");
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    std::fs::write(&html, bytes).expect("write");
    let bad = cert(&["verify", "b"], &dir);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stdout).contains("report.html"));

    // Re-rendering works from the bundle alone.
    let md = cert(&["report", "b", "--format", "md"], &dir);
    assert_eq!(md.status.code(), Some(0), "{md:?}");
    assert!(String::from_utf8_lossy(&md.stdout).contains("UNKNOWN"));
}

#[test]
fn a_used_out_directory_needs_resume_and_resume_keeps_decided_cases() {
    let dir = scratch("resume");
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let first = cert(
        &["run", "--realm", &url, "--out", "b", "--cases", "health.*"],
        &dir,
    );
    assert_eq!(first.status.code(), Some(2), "{first:?}");
    let again = cert(
        &["run", "--realm", &url, "--out", "b", "--cases", "health.*"],
        &dir,
    );
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = cert(
        &[
            "run", "--realm", &url, "--out", "b", "--cases", "health.*", "--resume",
        ],
        &dir,
    );
    assert_eq!(resumed.status.code(), Some(2), "{resumed:?}");
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("from the interrupted run"));
    let journal = std::fs::read_to_string(dir.join("b/journal.ndjson")).expect("journal");
    // Each case was decided once: resuming did not run them again.
    let ends = journal
        .lines()
        .filter(|l| l.contains("\"rec\":\"case_end\""))
        .count();
    let health = mtor_harness::plan::Plan::find("mtor-1.0/standard")
        .expect("plan")
        .cases
        .iter()
        .filter(|c| c.id.starts_with("health."))
        .count();
    assert_eq!(ends, health);
}

#[test]
fn usage_and_manifest_errors_exit_3_with_a_precise_message() {
    let dir = scratch("usage");
    std::fs::write(
        dir.join("bad.toml"),
        "[credentials]\nsysop_secret = \"xyz\"\n",
    )
    .expect("write");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "run",
                "--realm",
                "ws://127.0.0.1:1",
                "--manifest",
                "bad.toml",
            ],
            "credentials.sysop_secret",
        ),
        (
            &[
                "run",
                "--realm",
                "ws://127.0.0.1:1",
                "--plan",
                "no/such-plan",
            ],
            "no plan `no/such-plan`",
        ),
        (
            &["run", "--realm", "ftp://x", "--out", "o"],
            "not ws://HOST:PORT",
        ),
        (
            &[
                "run",
                "--realm",
                "ws://127.0.0.1:1",
                "--mode",
                "certification",
                "--cases",
                "events.*",
            ],
            "certification mode runs the whole plan",
        ),
    ];
    for (args, want) in cases {
        let out = cert(args, &dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr:?} should contain {want:?}"
        );
    }
}

#[test]
fn plans_lists_the_pinned_plan_with_its_hash() {
    let out = cert(&["plans"], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mtor-1.0/standard\t1.0.0"), "{stdout}");
    assert!(stdout.contains("sha256:"), "{stdout}");
}

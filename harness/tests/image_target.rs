//! `mtor-cert run --image` against the real container engine: the realm image built by
//! `ci/build-images.sh` (`mtor-realm:<version>`, or `MTOR_TEST_IMAGE`) is certified, killed and
//! restarted, interrupted, and nothing it started may be left behind.
//!
//! Without an engine or without the image, the tests that need them print a `SKIPPED` line with
//! the reason straight to stderr (past libtest's capture, so it shows) and return. With
//! `MTOR_REQUIRE_DOCKER=1` (CI sets it), or `CI` set, that is a failure instead: CI has an engine,
//! and these tests must not pass there without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn cert(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtor-cert"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run mtor-cert")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("image_target")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn image() -> String {
    std::env::var("MTOR_TEST_IMAGE")
        .unwrap_or_else(|_| format!("mtor-realm:{}", env!("CARGO_PKG_VERSION")))
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new(std::env::var("MTOR_DOCKER").unwrap_or_else(|_| "docker".into()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn required() -> bool {
    match std::env::var("MTOR_REQUIRE_DOCKER").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false"),
    }
}

/// `true` when the engine answers and holds the image; otherwise says why (SKIPPED, or a panic
/// where the engine is required).
fn engine_and_image(test: &str) -> bool {
    let why = match docker(&["version", "--format", "{{.Server.Version}}"]) {
        Err(e) => format!("no container engine reachable ({e})"),
        Ok(_) => match docker(&["image", "inspect", "--format", "{{.Id}}", &image()]) {
            Err(_) => format!(
                "image {} is not built (run ci/build-images.sh first)",
                image()
            ),
            Ok(_) => return true,
        },
    };
    if required() {
        panic!("{test}: {why}, but MTOR_REQUIRE_DOCKER=1 or CI says the engine is required");
    }
    // Straight to the process's stderr: libtest captures only the print macros.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// Every `mtor-cert-xxxxxxxx` name a journal mentions (the run's network and containers).
fn names_in(journal: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(journal).expect("journal");
    let mut names: Vec<String> = text
        .match_indices("mtor-cert-")
        .filter_map(|(i, _)| {
            let hex = text.get(i + 10..i + 18)?;
            hex.chars()
                .all(|c| c.is_ascii_hexdigit())
                .then(|| format!("mtor-cert-{hex}"))
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_nothing_left(label_filter: &str) {
    let containers =
        docker(&["ps", "--all", "--quiet", "--filter", label_filter]).expect("docker ps");
    assert!(
        containers.is_empty(),
        "containers left behind ({label_filter}): {containers}"
    );
    let networks =
        docker(&["network", "ls", "--quiet", "--filter", label_filter]).expect("docker network ls");
    assert!(
        networks.is_empty(),
        "networks left behind ({label_filter}): {networks}"
    );
}

#[test]
fn without_an_engine_image_fails_fast_with_exit_3() {
    let dir = scratch("no-engine");
    let started = Instant::now();
    let out = cert(
        &["run", "--image", "mtor-realm:any", "--out", "b"],
        &dir,
        &[("DOCKER_HOST", "unix:///nonexistent/mtor-cert-test.sock")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stderr.contains("no container engine reachable"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "not fast");
    assert!(
        !dir.join("b").exists(),
        "nothing is written without a target"
    );
}

#[test]
fn container_cases_do_not_apply_to_other_targets() {
    let dir = scratch("not-applicable");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("ws://127.0.0.1:{closed}");
    // Only container cases selected: nothing could run, so it is a usage error.
    let only = cert(
        &[
            "run",
            "--realm",
            &url,
            "--cases",
            "recovery.*",
            "--out",
            "a",
        ],
        &dir,
        &[],
    );
    assert_eq!(only.status.code(), Some(3), "{only:?}");
    assert!(String::from_utf8_lossy(&only.stderr).contains("--image"));
    // Mixed: the container case is left out (not skipped) and the journal says why.
    let mixed = cert(
        &[
            "run",
            "--realm",
            &url,
            "--cases",
            "health.health,recovery.*",
            "--out",
            "b",
        ],
        &dir,
        &[],
    );
    assert_eq!(mixed.status.code(), Some(2), "{mixed:?}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("b/results.json")).expect("results"))
            .expect("json");
    let ids: Vec<&str> = results["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, ["health.health"]);
    let journal = std::fs::read_to_string(dir.join("b/journal.ndjson")).expect("journal");
    assert!(
        journal
            .contains("not applicable to this target: recovery.container-kill requires container"),
        "{journal}"
    );
}

#[test]
fn a_missing_image_is_a_usage_error() {
    if !engine_and_image("a_missing_image_is_a_usage_error") {
        return;
    }
    let dir = scratch("no-image");
    let out = cert(
        &[
            "run",
            "--image",
            "mtor-cert-test-no-such-image:0",
            "--out",
            "b",
        ],
        &dir,
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("never pulls"));
}

#[test]
fn an_image_is_certified_killed_restarted_and_removed() {
    if !engine_and_image("an_image_is_certified_killed_restarted_and_removed") {
        return;
    }
    let dir = scratch("e2e");
    let out = cert(
        &[
            "run",
            "--image",
            &image(),
            "--cases",
            "health.*,recovery.*,workers.container-*,events.bad-json,events.all-valid",
            "--out",
            "b",
        ],
        &dir,
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("b/results.json")).expect("results"))
            .expect("json");
    assert_eq!(results["target"]["kind"], "image");
    let kill = results["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["id"] == "recovery.container-kill")
        .expect("the container case ran");
    assert_eq!(kill["verdict"], "PASS", "{kill}");
    // The realm-plus-worker topology: a worker container paused, another cut off the network.
    for id in ["workers.container-pause", "workers.container-partition"] {
        let case = results["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|c| c["id"] == id)
            .expect("the worker-container case ran");
        assert_eq!(case["verdict"], "PASS", "{case}");
    }

    // The fault window is in the journal, opened and closed, each edge with its proof.
    let journal = dir.join("b/journal.ndjson");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&journal)
        .expect("journal")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let faults: Vec<&serde_json::Value> = records.iter().filter(|r| r["rec"] == "fault").collect();
    // kill, pause and partition: each window opened and closed, in that order, with proof.
    let windows: Vec<(&str, &str)> = faults
        .iter()
        .map(|f| {
            (
                f["what"].as_str().unwrap_or_default(),
                f["edge"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        windows,
        [
            ("kill", "start"),
            ("kill", "end"),
            ("pause", "start"),
            ("pause", "end"),
            ("partition", "start"),
            ("partition", "end")
        ],
        "{faults:?}"
    );
    assert!(
        faults[0]["proof"]
            .as_str()
            .is_some_and(|p| p.contains("exit code 137")),
        "{:?}",
        faults[0]
    );
    assert!(faults.iter().all(|f| f["proof"]
        .as_str()
        .is_some_and(|p| !p.is_empty() && !p.starts_with("NOT healed"))));
    assert!(records.iter().any(|r| r["rec"] == "note"
        && r["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("realm container stopped") && t.contains("removed"))));
    assert!(
        dir.join("b/realm.log").is_file(),
        "the container's output is kept"
    );

    let names = names_in(&journal);
    assert!(!names.is_empty(), "the journal names the run's network");
    for name in names {
        assert_nothing_left(&format!("label=org.mtor.cert.run={name}"));
    }
    let verify = cert(&["verify", "b.tar.gz"], &dir, &[]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
}

#[test]
fn an_interrupted_image_run_removes_its_container_and_network() {
    if !engine_and_image("an_interrupted_image_run_removes_its_container_and_network") {
        return;
    }
    let dir = scratch("interrupt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtor-cert"))
        .args(["run", "--image", &image(), "--out", "b"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mtor-cert");
    let label = format!("label=org.mtor.cert.pid={}", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = docker(&["ps", "--quiet", "--filter", &label]).unwrap_or_default();
        if !running.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no container appeared within 60 s"
        );
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "mtor-cert ended before its container appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Mid-run (or mid-start-up): the same signal a terminal's Ctrl-C sends.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("mtor-cert did not exit within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert_nothing_left(&label);
}

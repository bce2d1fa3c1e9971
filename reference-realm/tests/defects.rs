//! Seeded defects cannot slip into a clean realm: a build without the `defects` feature refuses
//! to start when `MTOR_DEFECT` is set, and a build with it refuses a name it does not know. Both
//! must fail before the realm listens or touches its data directory.

use std::process::Command;
use std::time::Duration;

fn up_with(defect: &str) -> (bool, String, bool) {
    let data =
        std::env::temp_dir().join(format!("mtor-defect-test-{}-{defect}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtor-realm"))
        .args(["up", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("MTOR_DEFECT", defect)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mtor-realm");
    // A realm that started would run until stopped: bound the wait, then kill it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let created = data.exists();
    let _ = std::fs::remove_dir_all(&data);
    (
        status.is_some_and(|s| !s.success()),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        created,
    )
}

#[cfg(not(feature = "defects"))]
#[test]
fn a_clean_build_refuses_to_start_with_a_seeded_defect() {
    let (failed, stderr, created) = up_with("never-lapse");
    assert!(
        failed,
        "a clean realm started with MTOR_DEFECT set: {stderr}"
    );
    assert!(
        stderr.contains("this build has no seeded defects"),
        "unclear error: {stderr}"
    );
    assert!(
        !created,
        "the data directory was created before the refusal"
    );
}

#[cfg(feature = "defects")]
#[test]
fn a_defects_build_refuses_an_unknown_defect() {
    let (failed, stderr, created) = up_with("no-such-defect");
    assert!(failed, "the realm started with an unknown defect: {stderr}");
    assert!(
        stderr.contains("not a known defect"),
        "unclear error: {stderr}"
    );
    assert!(
        !created,
        "the data directory was created before the refusal"
    );
}

/// Every seeded defect has a row in the self-certification matrix, and every row names a seeded
/// defect: a defect without a row is never shown to be caught, a row without a defect is a typo
/// that would fail only deep inside CI's self-certification.
#[test]
fn the_self_certification_matrix_lists_exactly_the_catalogue() {
    use std::collections::BTreeSet;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/defect-matrix.toml");
    let text = std::fs::read_to_string(path).expect("ci/defect-matrix.toml");
    // Each `[[defect]]` table's first line is its `name` (the file's reviewed layout).
    let mut rows = BTreeSet::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "[[defect]]" {
            let name = lines.next().unwrap_or_default();
            let name = name
                .strip_prefix("name = \"")
                .and_then(|n| n.strip_suffix('"'))
                .unwrap_or_else(|| panic!("a [[defect]] table must start with its name: {name}"));
            assert!(rows.insert(name.to_owned()), "{name} has two rows");
        }
    }
    let catalogue: BTreeSet<String> = mtor_realm::defect::CATALOGUE
        .iter()
        .map(|(_, name, _)| (*name).to_owned())
        .collect();
    assert_eq!(
        catalogue.difference(&rows).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "seeded defects without a row in ci/defect-matrix.toml"
    );
    assert_eq!(
        rows.difference(&catalogue).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "rows of ci/defect-matrix.toml that name no seeded defect"
    );
}

//! The events and health suites against a test double with one defect at a time: every case must
//! FAIL against exactly the defects it exists for, and pass against the clean double.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use mtor_harness::contract::Contract;
use mtor_harness::plan::Plan;
use mtor_harness::run::{self, RunOptions, TargetSpec};
use mtor_harness::target::Manifest;
use mtor_harness::verdict::{CaseResult, Mode, Verdict};
use support::fake_realm::{self, Defect};

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("run_cases")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(url: String, name: &str) -> RunOptions {
    let mut manifest = Manifest::default();
    manifest.credentials.enrol_token = Some(fake_realm::TOKEN.into());
    RunOptions {
        plan: Plan::find("mtor-1.0/standard").expect("standard plan"),
        target: TargetSpec::Url(url),
        manifest,
        out: out_dir(name),
        include: None,
        exclude: None,
        only: None,
        seed: 42,
        mode: Mode::Ci,
        resume: false,
        progress: false,
    }
}

async fn run_against(defect: Option<Defect>, name: &str) -> Vec<CaseResult> {
    let realm = fake_realm::start(defect).await;
    let opts = options(format!("ws://{}", realm.addr), name);
    let contract = Contract::embedded().expect("contract");
    let output = run::run(&opts, &contract).await.expect("run completes");
    assert!(output.complete);
    // Every verdict must be re-derivable from the journal alone.
    let differing =
        run::recheck(&opts.plan, &output.cases, &output.journal, &contract).expect("recheck");
    assert!(
        differing.is_empty(),
        "{name}: verdicts differ on recheck: {differing:?}"
    );
    output.cases
}

fn failing(cases: &[CaseResult]) -> BTreeSet<String> {
    cases
        .iter()
        .filter(|c| c.verdict != Verdict::Pass)
        .map(|c| format!("{} {}", c.id, c.verdict.as_str()))
        .collect()
}

fn fails(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| format!("{id} FAIL")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clean_double_passes_every_case() {
    let cases = run_against(None, "clean").await;
    let plan = Plan::find("mtor-1.0/standard").expect("plan");
    assert_eq!(cases.len(), plan.cases.len());
    assert_eq!(failing(&cases), BTreeSet::new(), "{cases:#?}");
}

macro_rules! defect_test {
    ($name:ident, $defect:expr, [$($case:literal),+ $(,)?]) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let cases = run_against(Some($defect), stringify!($name)).await;
            assert_eq!(failing(&cases), fails(&[$($case),+]), "{:#?}", cases.iter().filter(|c| c.verdict != Verdict::Pass).collect::<Vec<_>>());
        }
    };
}

defect_test!(
    ignoring_bad_json_is_caught,
    Defect::IgnoreBadJson,
    ["events.bad-json"]
);
defect_test!(
    closing_on_a_bad_frame_is_caught,
    Defect::CloseOnBadFrame,
    [
        "events.bad-json",
        "events.invalid-utf8",
        "events.binary-frame",
        "events.oversized-frame",
        "events.deep-nesting",
        "events.missing-field",
        "events.wrong-typed-field",
    ]
);
defect_test!(
    accepting_binary_frames_is_caught,
    Defect::AcceptBinary,
    ["events.invalid-utf8", "events.binary-frame"]
);
defect_test!(
    one_error_code_for_everything_is_caught,
    Defect::OneErrorCodeForAll,
    [
        "events.bad-json",
        "events.invalid-utf8",
        "events.binary-frame",
        "events.unknown-type",
        "events.wrong-protocol",
        "events.oversized-frame",
        "events.deep-nesting",
        "events.unauthenticated",
        "events.wrong-channel",
        "events.forged-session",
    ]
);
defect_test!(
    no_frame_limit_is_caught,
    Defect::NoFrameLimit,
    ["events.oversized-frame"]
);
defect_test!(
    no_depth_limit_is_caught,
    Defect::NoDepthLimit,
    ["events.deep-nesting"]
);
defect_test!(
    ignoring_unknown_types_is_caught,
    Defect::IgnoreUnknownType,
    ["events.unknown-type"]
);
defect_test!(
    accepting_forged_proofs_is_caught,
    Defect::AcceptForgedProof,
    ["events.forged-session"]
);
defect_test!(
    no_authentication_is_caught,
    Defect::NoAuthRequired,
    ["events.unauthenticated"]
);
defect_test!(
    no_channel_check_is_caught,
    Defect::NoChannelCheck,
    ["events.wrong-channel"]
);
defect_test!(
    errors_without_ref_are_caught,
    Defect::NoRef,
    [
        "events.unknown-type",
        "events.wrong-protocol",
        "events.missing-field",
        "events.wrong-typed-field",
        "events.unauthenticated",
        "events.wrong-channel",
    ]
);
defect_test!(
    a_manifest_without_licence_is_caught,
    Defect::ManifestWithoutLicence,
    ["health.manifest"]
);
defect_test!(
    health_without_workers_is_caught,
    Defect::HealthWithoutWorkers,
    ["health.worker-reflected"]
);
defect_test!(
    health_keeping_dead_workers_is_caught,
    Defect::HealthKeepsDeadWorkers,
    ["health.worker-reflected"]
);
defect_test!(
    missing_metrics_are_caught,
    Defect::MetricsMissingSeries,
    ["health.metrics"]
);
defect_test!(
    emitting_a_wrong_typed_field_is_caught,
    Defect::EmitWrongTypedField,
    ["events.all-valid"]
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_where_nothing_listens_gives_unknown_everywhere_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let opts = options(format!("ws://127.0.0.1:{port}"), "nothing-listens");
    let contract = Contract::embedded().expect("contract");
    let started = std::time::Instant::now();
    let output = run::run(&opts, &contract).await.expect("run completes");
    // A hang guard, not a speed target: the run must not wait out case budgets.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(
        output.cases.iter().all(|c| c.verdict == Verdict::Unknown),
        "{:#?}",
        output.cases
    );
    assert!(output
        .cases
        .iter()
        .all(|c| c.reason.contains("unreachable")));
}

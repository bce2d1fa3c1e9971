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
    // Per process: two test runs at once (say, a developer's and a CI script's) must not
    // share, and corrupt, each other's journals.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("run_cases-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(url: String, name: &str) -> RunOptions {
    let mut manifest = Manifest::default();
    manifest.credentials.enrol_token = Some(fake_realm::TOKEN.into());
    manifest.credentials.sysop_secret = Some(fake_realm::SYSOP_SECRET.into());
    let mut plan = Plan::find("mtor-1.0/standard").expect("standard plan");
    quick_dispatch(&mut plan);
    RunOptions {
        plan,
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
    // The clean run includes the dispatch suite's load: it runs alone (see `LOAD`).
    let (_alone, _shared);
    if defect.is_none() {
        _alone = LOAD.write().await;
    } else {
        _shared = LOAD.read().await;
    }
    let realm = fake_realm::start(defect).await;
    let mut opts = options(format!("ws://{}", realm.addr), name);
    // The dispatch suite is load: it runs against the clean double and against its own defects
    // (`run_dispatch` below), not once more for every other suite's defect.
    if defect.is_some() {
        opts.exclude = Some("dispatch.*".into());
    }
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
    // A URL target offers no container: the cases that need one are left out, not run.
    let applicable = plan.cases.iter().filter(|c| Plan::applies(c, &[])).count();
    assert!(
        applicable < plan.cases.len(),
        "the plan has container cases"
    );
    assert_eq!(cases.len(), applicable);
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
    // `maybe`: cases whose randomised workload reaches the defect only in some runs (the token
    // workload dead-letters or crashes a task only when timing makes it so). They may FAIL or
    // be UNKNOWN, never anything else; the required cases must FAIL every time.
    ($name:ident, $defect:expr, [$($case:literal),+ $(,)?], maybe [$($maybe:literal),+ $(,)?]) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let cases = run_against(Some($defect), stringify!($name)).await;
            let got = failing(&cases);
            let required = fails(&[$($case),+]);
            let maybe: &[&str] = &[$($maybe),+];
            let allowed = |entry: &String| {
                maybe.iter().any(|id| *entry == format!("{id} FAIL") || *entry == format!("{id} UNKNOWN"))
            };
            let detail = cases.iter().filter(|c| c.verdict != Verdict::Pass).collect::<Vec<_>>();
            assert!(required.is_subset(&got), "required failures missing: {:#?}", detail);
            assert!(
                got.iter().all(|e| required.contains(e) || allowed(e)),
                "unmapped failures: {:#?}",
                detail
            );
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
        "events.generated",
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
        "events.generated",
        "security.worker-bad-token",
        "security.sysop-mint-forbidden",
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
    ["events.unknown-type", "events.generated"]
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
    ["events.wrong-channel", "events.generated"]
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
        "events.generated",
    ]
);
defect_test!(
    accepting_undeclared_body_members_is_caught,
    Defect::AcceptExtraBodyField,
    ["events.generated"]
);
defect_test!(
    a_manifest_without_licence_is_caught,
    Defect::ManifestWithoutLicence,
    ["health.manifest"]
);
defect_test!(
    health_without_workers_is_caught,
    Defect::HealthWithoutWorkers,
    ["health.worker-reflected", "workers.heartbeat-flapping"]
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
    frozen_metrics_are_caught,
    Defect::MetricsFrozen,
    ["health.metrics-move"]
);
// ---- stateless: an intent belongs to its wallet, not to the connection that submitted it.
defect_test!(
    fetch_bound_to_the_session_is_caught,
    Defect::SessionBoundFetch,
    // The cancel case confirms its cancel with a fetch from the second session too.
    ["stateless.fetch-elsewhere", "stateless.cancel-elsewhere"],
    // Its read-back from storage is a fetch from a second session: refused, it cannot judge.
    maybe["security.strings-round-trip"]
);
defect_test!(
    cancel_bound_to_the_session_is_caught,
    Defect::SessionBoundCancel,
    ["stateless.cancel-elsewhere"]
);
defect_test!(
    an_ignored_resume_is_caught,
    Defect::ResumeIgnored,
    ["stateless.resume-elsewhere"]
);
defect_test!(
    resuming_another_wallets_intents_is_caught,
    Defect::ResumeAnyWallet,
    ["stateless.resume-elsewhere"]
);
defect_test!(
    resending_a_delivered_result_on_resume_is_caught,
    Defect::ResumeRedelivers,
    ["stateless.resume-elsewhere"]
);
defect_test!(
    emitting_a_wrong_typed_field_is_caught,
    Defect::EmitWrongTypedField,
    ["events.all-valid"]
);

// ---- workers: the scripted-worker cases against lease, settlement and health bugs.

defect_test!(
    enrolment_terms_that_differ_are_caught,
    Defect::EnrolledTermsDiffer,
    ["workers.enrolment-terms"]
);
defect_test!(
    ignoring_the_pin_is_caught,
    Defect::PinIgnored,
    ["workers.pinned-routing"]
);
defect_test!(
    forgetting_a_lost_workers_leases_is_caught,
    Defect::ForgetLostLeases,
    ["workers.crash-after-accept"],
    // The token workload's crashed tasks are never re-dispatched either.
    maybe ["tokens.worker-earnings", "tokens.settle-once", "tokens.conservation", "audit.critical-events-recorded"]
);
defect_test!(
    leases_that_never_lapse_are_caught,
    Defect::NeverLapse,
    ["workers.hang-past-lease", "workers.stale-epoch"]
);
defect_test!(
    ignoring_progress_is_caught,
    Defect::ProgressIgnored,
    ["workers.progress-extends"]
);
defect_test!(
    fencing_without_the_epoch_is_caught,
    Defect::AcceptStaleEpoch,
    ["workers.stale-epoch"]
);
defect_test!(
    delivering_a_duplicate_result_is_caught,
    Defect::DeliverDuplicateResult,
    [
        "workers.duplicate-result",
        // The token workload's duplicate reports are captured twice too.
        "tokens.settle-once",
        "tokens.no-overdraft",
        "tokens.conservation"
    ]
);
defect_test!(
    capturing_a_duplicate_is_caught,
    Defect::CaptureTwice,
    [
        "workers.duplicate-result",
        // The token workload's duplicate reports: a second capture, paying cost without fee.
        "tokens.settle-once",
        "tokens.no-overdraft",
        "tokens.conservation",
        "tokens.worker-earnings"
    ]
);
defect_test!(
    delivering_a_malformed_result_is_caught,
    Defect::AcceptMalformedResult,
    ["workers.malformed-result"]
);
defect_test!(
    no_refund_on_dead_letter_is_caught,
    Defect::NoRefundOnDeadLetter,
    [
        "workers.dead-letter",
        // intent.failed announces a release that is never recorded.
        "audit.critical-events-recorded"
    ],
    // When the token workload dead-letters one of its own intents, the missing release shows.
    maybe ["tokens.conservation", "tokens.settle-once", "tokens.no-overdraft", "tokens.worker-earnings"]
);
defect_test!(
    retrying_a_non_retryable_failure_is_caught,
    Defect::RetryNonRetryable,
    ["workers.refuse-after-advertise"]
);
defect_test!(
    health_ignoring_heartbeats_is_caught,
    Defect::HealthIgnoresHeartbeats,
    ["workers.heartbeat-flapping"]
);
defect_test!(
    a_worker_stuck_unhealthy_is_caught,
    Defect::StuckUnhealthy,
    ["workers.heartbeat-flapping"]
);

// ---- tokens and audit: the token workload's history checker and the audit log checks against
// ledger and audit bugs. A broken hold (CaptureAndRelease) also breaks LED-9's "hold = open
// reservations" and LED-3's "no negative account", so those cases fail with it.

defect_test!(
    overdrawing_on_a_race_is_caught,
    Defect::OverdrawOnRace,
    ["tokens.no-overdraft"]
);
defect_test!(
    ignoring_idempotency_keys_is_caught,
    Defect::IgnoreIdempotencyKey,
    ["tokens.idempotency"]
);
defect_test!(
    capturing_and_releasing_in_full_is_caught,
    Defect::CaptureAndRelease,
    [
        "tokens.settle-once",
        "tokens.no-overdraft",
        "tokens.conservation",
        // The workers suite reads the refunds of its own intents, and sees them too large.
        "workers.crash-after-accept",
        "workers.duplicate-result",
        "workers.hang-past-lease",
        "workers.malformed-result",
        "workers.stale-epoch"
    ]
);
defect_test!(
    a_capture_without_its_fee_leg_is_caught,
    Defect::DropFeeLeg,
    ["tokens.conservation"]
);
defect_test!(
    paying_the_first_attempts_worker_is_caught,
    Defect::PayFirstAttemptWorker,
    ["tokens.worker-earnings"]
);
defect_test!(
    statements_without_mints_are_caught,
    Defect::StatementOmitsMints,
    ["tokens.ledger-replays"]
);
defect_test!(
    an_audit_chain_that_does_not_link_is_caught,
    Defect::BrokenAuditChain,
    ["audit.chain-verifies"]
);
defect_test!(
    unaudited_captures_are_caught,
    Defect::SkipAuditRecord,
    ["audit.critical-events-recorded"]
);
defect_test!(
    paging_that_skips_a_record_is_caught,
    Defect::PagingDropsRecord,
    ["audit.paging-complete"]
);

// ---- security: impersonation, token theft, injection and amplification.

defect_test!(
    security_any_enrolment_token_is_caught,
    Defect::AcceptAnyToken,
    ["security.worker-bad-token"]
);
defect_test!(
    security_mint_by_any_wallet_is_caught,
    Defect::MintByAnyone,
    // The actor's mint into the observer's wallet is then answered with wallet.minted, which
    // names the observer's key to the actor.
    [
        "security.sysop-mint-forbidden",
        "security.no-wallet-broadcast"
    ]
);
defect_test!(
    security_rest_without_owner_check_is_caught,
    Defect::RestAnySigner,
    ["security.rest-wrong-signer"]
);
defect_test!(
    security_rest_without_timestamp_check_is_caught,
    Defect::NoTimestampCheck,
    ["security.rest-replay"]
);
defect_test!(
    security_naive_static_files_are_caught,
    Defect::ServeStaticNaively,
    ["security.path-traversal"]
);
defect_test!(
    security_errors_echoing_the_frame_are_caught,
    Defect::EchoInErrors,
    ["security.no-wallet-broadcast"]
);
defect_test!(
    security_sanitised_input_is_caught,
    Defect::SanitizeInput,
    ["security.strings-round-trip"]
);
defect_test!(
    security_refusals_sent_to_everyone_are_caught,
    Defect::RefusalsToAll,
    ["security.no-amplification"]
);
defect_test!(
    security_a_flood_without_rate_limit_is_caught,
    Defect::NoRateLimit,
    ["security.frame-flood"]
);
defect_test!(
    security_rate_limited_without_retry_after_is_caught,
    Defect::RateLimitedWithoutRetry,
    ["security.frame-flood"]
);

// ---- dispatch: the load cases against their own defects, one load test at a time.

/// Load tests run alone: beside another test in the same process they would share its CPU (which
/// the generator measures) and slow that test's timed cases down. Other runs hold it shared.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The dispatch suite at test scale: the same cases and checks, with lower rates and shorter
/// phases sized for the double (its harness worker's capacity is concurrency / work_ms).
fn quick_dispatch(plan: &mut Plan) {
    for case in plan.cases.iter_mut().filter(|c| c.suite() == "dispatch") {
        let quick = match case.id.as_str() {
            "dispatch.sustained-rate" => "rates = [50, 100]\nmin_rate = 50\nwallets = 2\nconnections = 2\nwarmup_ms = 200\nmeasure_ms = 600\ndrain_ms = 2500\nworker_concurrency = 16",
            "dispatch.overload-explicit" => "wallets = 2\nrate_per_wallet = 150\nworker_concurrency = 16\nmeasure_ms = 1500\ndrain_ms = 6000",
            "dispatch.fairness" => "rate_per_wallet = 15\nheavy_rate = 60\nwork_ms = 100\nworker_concurrency = 8\nwarmup_ms = 1800\nmeasure_ms = 1500\ndrain_ms = 500",
            "dispatch.exactly-once" => "wallets = 2\nrate_per_wallet = 40\nwork_ms = 50\nworker_concurrency = 16\nmeasure_ms = 800\ndrain_ms = 5000",
            _ => "",
        };
        let quick: toml::Table = toml::from_str(quick).expect("quick params");
        case.params.extend(quick);
    }
}

async fn run_dispatch(defect: Option<Defect>, name: &str) -> Vec<CaseResult> {
    let _alone = LOAD.write().await;
    let realm = fake_realm::start(defect).await;
    let mut opts = options(format!("ws://{}", realm.addr), name);
    opts.include = Some("dispatch.*".into());
    let contract = Contract::embedded().expect("contract");
    let output = run::run(&opts, &contract).await.expect("run completes");
    let differing =
        run::recheck(&opts.plan, &output.cases, &output.journal, &contract).expect("recheck");
    assert!(differing.is_empty(), "{name}: {differing:?}");
    assert_eq!(output.cases.len(), 4);
    output.cases
}

macro_rules! dispatch_defect_test {
    ($name:ident, $defect:expr, [$($case:literal),+ $(,)?]) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let cases = run_dispatch(Some($defect), stringify!($name)).await;
            assert_eq!(failing(&cases), fails(&[$($case),+]), "{:#?}", cases.iter().filter(|c| c.verdict != Verdict::Pass).collect::<Vec<_>>());
        }
    };
}

dispatch_defect_test!(
    dropping_submissions_under_overload_is_caught,
    Defect::DropUnderOverload,
    ["dispatch.overload-explicit"]
);
dispatch_defect_test!(
    a_fifo_that_lets_a_heavy_wallet_starve_others_is_caught,
    Defect::FifoUnfair,
    // Without a per-wallet limit its 256-intent queue (plus 16 running) holds more than
    // 64 + 16 for at least one of the overload phase's two wallets: beyond the declared limit.
    ["dispatch.fairness", "dispatch.overload-explicit"]
);
dispatch_defect_test!(
    a_terminal_event_sent_twice_is_caught,
    Defect::DoubleTerminal,
    ["dispatch.exactly-once"]
);
dispatch_defect_test!(
    slow_dispatch_is_caught,
    Defect::SlowDispatch,
    ["dispatch.sustained-rate"]
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatch_suite_reports_latency_and_the_generator() {
    let cases = run_dispatch(None, "dispatch-clean").await;
    assert_eq!(failing(&cases), BTreeSet::new(), "{cases:#?}");
    let sustained = cases
        .iter()
        .find(|c| c.id == "dispatch.sustained-rate")
        .expect("case");
    let load = sustained.load.as_ref().expect("load data");
    assert!(load.max_sustainable_rate.is_some_and(|r| r >= 50.0));
    assert!(load.phases.iter().all(|p| p.corrected.count > 0));
    assert!(load.generator.cpu_us_per_event.is_some());
    let fair = cases
        .iter()
        .find(|c| c.id == "dispatch.fairness")
        .and_then(|c| c.load.as_ref())
        .and_then(|l| l.fairness.as_ref())
        .expect("fairness data");
    assert!(fair.jain >= 0.9, "{fair:?}");
}

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

/// The events the generated case sent, in order, as the journal holds them.
fn generated_frames(journal: &std::path::Path) -> Vec<String> {
    use mtor_harness::journal::{self, Dir, Entry};
    let records = journal::read(journal).expect("journal");
    let mut out = Vec::new();
    let mut want: Option<u32> = None;
    for r in &records {
        match &r.entry {
            Entry::Note { text } => {
                if let Some(v) = text.strip_prefix("mark:gen-try:") {
                    want = v.split(':').nth(1).and_then(|c| c.parse().ok());
                }
            }
            Entry::Frame {
                conn,
                dir: Dir::Send,
                data,
            } if Some(*conn) == want => {
                out.push(data.clone());
                want = None;
            }
            _ => {}
        }
    }
    out
}

fn marker(journal: &std::path::Path, name: &str) -> Option<String> {
    use mtor_harness::journal::{self, Entry};
    let prefix = format!("mark:{name}:");
    journal::read(journal)
        .expect("journal")
        .into_iter()
        .find_map(|r| match r.entry {
            Entry::Note { text } => text.strip_prefix(&prefix).map(str::to_owned),
            _ => None,
        })
}

async fn run_generated(defect: Option<Defect>, name: &str, seed: u64) -> run::RunOutput {
    let realm = fake_realm::start(defect).await;
    let mut opts = options(format!("ws://{}", realm.addr), name);
    opts.include = Some("events.generated".into());
    opts.seed = seed;
    let contract = Contract::embedded().expect("contract");
    let output = run::run(&opts, &contract).await.expect("run completes");
    let differing =
        run::recheck(&opts.plan, &output.cases, &output.journal, &contract).expect("recheck");
    assert!(differing.is_empty(), "{name}: {differing:?}");
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_failure_is_shrunk_replayable_and_signed() {
    let output = run_generated(Some(Defect::AcceptExtraBodyField), "generated-shrunk", 42).await;
    let case = &output.cases[0];
    assert_eq!(case.verdict, Verdict::Fail, "{case:#?}");
    assert!(case.observed.contains("minimal failing event"), "{case:#?}");
    assert!(case.observed.contains("extra member /body/"), "{case:#?}");
    assert!(!case.evidence.is_empty());

    // The shrunk witness is no bigger than the first failing input.
    let frames = generated_frames(&output.journal);
    let nth = |name: &str| -> usize {
        marker(&output.journal, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} marker"))
    };
    let (first, minimal) = (nth("gen-first-failure"), nth("gen-minimal"));
    assert!(minimal >= first);
    let (first, minimal) = (&frames[first - 1], &frames[minimal - 1]);
    assert!(minimal.len() <= first.len(), "{minimal}\nvs first\n{first}");
    assert!(case.observed.contains(minimal.as_str()), "{case:#?}");

    // The replay file names the seed and the minimal event, and the signed bundle lists it.
    let dir = output.journal.parent().expect("out dir").to_owned();
    let name = mtor_harness::generate::replay_file_name("events.generated");
    let replay = std::fs::read_to_string(dir.join(&name)).expect("replay file");
    let lines: Vec<serde_json::Value> = replay
        .lines()
        .map(|l| serde_json::from_str(l).expect("ndjson"))
        .collect();
    assert_eq!(lines[0]["seed"], 42);
    assert_eq!(lines[1]["role"], "minimal");
    assert_eq!(lines[1]["event"].to_string(), *minimal);
    let plan = Plan::find("mtor-1.0/standard").expect("plan");
    let results =
        mtor_harness::report::RunResults::from_run(&plan, Mode::Ci, 42, &output).expect("results");
    let key = mtor_harness::bundle::generate_run_key().expect("key");
    let info =
        mtor_harness::bundle::write_bundle(&dir, &results, &output.journal, &key).expect("bundle");
    assert!(
        info.files.iter().any(|f| f.path == name),
        "{:?}",
        info.files
    );
    let report = mtor_harness::bundle::verify_bundle(&info.archive).expect("verify");
    assert!(report.is_valid(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_sends_the_same_generated_events() {
    let a = run_generated(Some(Defect::AcceptExtraBodyField), "generated-seed-a", 7).await;
    let b = run_generated(Some(Defect::AcceptExtraBodyField), "generated-seed-b", 7).await;
    let (fa, fb) = (generated_frames(&a.journal), generated_frames(&b.journal));
    assert!(fa.len() > 10);
    assert_eq!(fa, fb, "same seed, same events, same shrinking");
    assert_eq!(a.cases[0].observed, b.cases[0].observed);
    let c = run_generated(None, "generated-seed-c", 7).await;
    assert_eq!(c.cases[0].verdict, Verdict::Pass, "{:#?}", c.cases[0]);
    let d = run_generated(None, "generated-seed-d", 8).await;
    assert_ne!(generated_frames(&c.journal), generated_frames(&d.journal));
}

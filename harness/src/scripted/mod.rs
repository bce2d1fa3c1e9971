//! Scripted workers: the `workers` suite's case kind, `scripted-worker`.
//!
//! The harness enrols workers of its own over the real worker channel (with the manifest's
//! enrolment token), submits `cert.probe` intents as a client with a funded wallet, *pins* each
//! probe to its own worker's key (`input.worker_key`, PRB-6) so the realm's other workers never
//! take them, and makes the worker misbehave as the case's script says: crash after accepting,
//! hang past the lease, report progress slowly, answer with a malformed or duplicate result,
//! answer with a stale epoch, fail every attempt, refuse an intent it advertised, or let its
//! heartbeats flap. The lease terms come from the realm's manifest, never from assumptions, and
//! every wait is bounded by them and by the case budget.
//!
//! As everywhere in the harness, the driver ([`drive`], on a [`stage::Stage`]) only acts and
//! leaves markers; [`check`] (in `judge`) decides from the journal alone.
//!
//! Markers (`mark:<name>:<value>`): `script`, `wallet:<key>`, `client:<conn>`,
//! `enrolled:<conn>:<worker_id>`, `submit:<event id>`, `crash:<conn>`, `late|stale|malformed|
//! duplicate:<event id>` (the harness event the script is about), `silent:<conn>`,
//! `resumed:<conn>`, `closed:<conn>`.

mod judge;
pub(crate) mod stage;

pub use judge::{check, probe_digest, Terms};

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::case::Ctx;
use crate::plan::CaseSpec;
use stage::{Auto, Stage, StageError};

/// The case kind of this module in plans.
pub const KIND: &str = "scripted-worker";

/// The price of a `cert.probe` (PRB-4).
pub const PROBE_COST: u64 = 1_000;

/// What the harness worker does; `params.script` in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// `worker.enrolled` must carry the manifest's lease values.
    EnrolmentTerms,
    /// Probes pinned to one key reach only that key's worker; unknown keys are INFEASIBLE.
    PinnedRouting,
    /// Progress, then the connection drops; reconnect with the same key and answer attempt 2.
    CrashAfterAccept,
    /// Silent past the lease (heartbeats go on); answer attempt 2, then send attempt 1's result.
    HangPastLease,
    /// Silent past the lease; when attempt 2 comes, first send a result with attempt 1's epoch.
    StaleEpoch,
    /// The correct result, sent twice back to back.
    DuplicateResult,
    /// A result whose output breaks the output schema; then answer attempt 2.
    MalformedResult,
    /// Progress every lease/3 for longer than lease + grace, then the result.
    ProgressExtends,
    /// Every attempt fails with a retryable `task.failure`.
    DeadLetter,
    /// The worker lists `cert.probe`, then refuses it: `UNSUPPORTED`, not retryable.
    RefuseAfterAdvertise,
    /// Heartbeats stop until health says unhealthy, then resume; `flaps` times.
    HeartbeatFlapping,
}

const SCRIPTS: &[(&str, Script)] = &[
    ("enrolment-terms", Script::EnrolmentTerms),
    ("pinned-routing", Script::PinnedRouting),
    ("crash-after-accept", Script::CrashAfterAccept),
    ("hang-past-lease", Script::HangPastLease),
    ("stale-epoch", Script::StaleEpoch),
    ("duplicate-result", Script::DuplicateResult),
    ("malformed-result", Script::MalformedResult),
    ("progress-extends", Script::ProgressExtends),
    ("dead-letter", Script::DeadLetter),
    ("refuse-after-advertise", Script::RefuseAfterAdvertise),
    ("heartbeat-flapping", Script::HeartbeatFlapping),
];

impl Script {
    /// The script of this name.
    pub fn parse(name: &str) -> Option<Self> {
        SCRIPTS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// Every script name, for error messages.
    pub fn names() -> String {
        SCRIPTS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A case's parameters, with their defaults.
#[derive(Debug, Clone)]
pub struct Params {
    /// The script.
    pub script: Option<Script>,
    /// Allowance for transport and scheduling when timing the realm on the harness's clock.
    pub slack_ms: u64,
    /// The `max_cost` of each probe; above the price, so success shows a capture and a release.
    pub max_cost: u64,
    /// How often heartbeats stop and resume.
    pub flaps: u64,
    /// The window within which health must reflect a change (HLT-2, HLT-3).
    pub window_ms: u64,
}

impl Params {
    /// The parameters of `spec`.
    pub fn of(spec: &CaseSpec) -> Self {
        let int = |k: &str, d: u64| {
            spec.params
                .get(k)
                .and_then(|v| v.as_integer())
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(d)
        };
        Self {
            script: spec
                .params
                .get("script")
                .and_then(|v| v.as_str())
                .and_then(Script::parse),
            slack_ms: int("slack_ms", 250),
            max_cost: int("max_cost", 2 * PROBE_COST).max(PROBE_COST),
            flaps: int("flaps", 2).clamp(1, 10),
            window_ms: int("window_ms", 2000),
        }
    }
}

/// Runs the case's script. Every outcome is in the journal.
pub async fn drive(ctx: &Ctx<'_>) {
    let params = Params::of(ctx.spec);
    let Some(script) = params.script else {
        return ctx.abort(format!(
            "plan error: `params.script` must be one of {}",
            Script::names()
        ));
    };
    ctx.mark("script", &format!("{script:?}"));
    let result = match Stage::open(ctx, &params).await {
        Ok(mut stage) => {
            let r = run(&mut stage, script, &params).await;
            stage.finish().await;
            r
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {}
        Err(StageError::Skip(why)) => ctx.skip(why),
        Err(e) => ctx.abort(e),
    }
}

async fn run(stage: &mut Stage<'_>, script: Script, p: &Params) -> Result<(), StageError> {
    let t = stage.terms;
    // The longest a lapse can take to show, with a second of margin for a loaded host.
    let relapse = t.redispatch_bound_ms(p.slack_ms) + 1000;
    let quiet = (t.grace_ms / 2).clamp(100, 500);
    match script {
        Script::EnrolmentTerms => {
            stage.enrol().await?;
            Ok(())
        }
        Script::PinnedRouting => pinned_routing(stage).await,
        Script::HeartbeatFlapping => heartbeat_flapping(stage, p).await,
        _ => {
            // What the script may wait at most at these terms; refuse to start beyond the budget.
            stage.need_ms(match script {
                Script::DuplicateResult | Script::RefuseAfterAdvertise => relapse + 3000,
                Script::ProgressExtends | Script::HangPastLease => 3 * relapse + 3000,
                Script::DeadLetter => t.max_attempts * relapse + 3000,
                _ => 2 * relapse + 3000,
            })?;
            let w = stage.enrol().await?;
            stage.balance().await;
            // Set before the submission: the first assignment may come with its admission.
            stage.auto = match script {
                Script::DeadLetter => Some(Auto::Fail("WORKER_ERROR", true)),
                Script::RefuseAfterAdvertise => Some(Auto::Fail("UNSUPPORTED", false)),
                _ => None,
            };
            let key = stage.worker_key(w);
            let (intent, _) = stage.submit(&key).await?;
            match script {
                Script::DeadLetter => {
                    stage.wait_terminal(&intent, t.max_attempts * relapse).await;
                }
                Script::RefuseAfterAdvertise => {
                    stage.wait_terminal(&intent, relapse).await;
                }
                _ => one_intent(stage, script, w, &intent, relapse).await,
            }
            stage.quiet(quiet).await;
            stage.balance().await;
            stage.statement().await;
            Ok(())
        }
    }
}

/// The scripts with one pinned probe and a hand-played worker.
async fn one_intent(stage: &mut Stage<'_>, script: Script, w: usize, intent: &str, relapse: u64) {
    let t = stage.terms;
    // A missing assignment is evidence, not an error: the script stops acting and the judge
    // decides what the absence means.
    let Some(a1) = stage.next_assign(relapse).await else {
        return;
    };
    match script {
        Script::CrashAfterAccept => {
            let p = stage.progress(&a1, 0.1).await;
            stage.wait_receipt(&p, 2000).await;
            stage.crash(w);
            // A restarted worker process comes back with the same key, a moment later.
            stage.quiet((t.lease_ms / 4).clamp(50, 250)).await;
            if let Err(e) = stage.reconnect(w).await {
                stage.note(format!("the crashed worker could not reconnect: {e}"));
                return;
            }
            if let Some(a2) = stage.next_assign(relapse).await {
                stage.answer(&a2, None).await;
            }
        }
        Script::HangPastLease => {
            let Some(a2) = stage.next_assign(relapse).await else {
                return;
            };
            let r = stage.answer(&a2, None).await;
            stage.wait_receipt(&r, 2000).await;
            stage.wait_terminal(intent, 3000).await;
            // The hung worker wakes up and delivers attempt 1 after all.
            let late = stage.answer(&a1, Some("late")).await;
            stage.wait_receipt(&late, 2000).await;
        }
        Script::StaleEpoch => {
            let Some(a2) = stage.next_assign(relapse).await else {
                return;
            };
            let stale = stage.answer(&a1, Some("stale")).await;
            stage.wait_receipt(&stale, 2000).await;
            stage.answer(&a2, None).await;
        }
        Script::DuplicateResult => {
            let first = stage.answer(&a1, None).await;
            let again = stage.answer(&a1, Some("duplicate")).await;
            stage.wait_receipt(&first, 2000).await;
            stage.wait_receipt(&again, 2000).await;
        }
        Script::MalformedResult => {
            let output = json!({"nonce": a1.nonce, "digest": "not-a-sha256-digest", "worker_id": stage.worker_id(w)});
            let bad = stage.result(&a1, output, Some("malformed")).await;
            stage.wait_receipt(&bad, 2000).await;
            if let Some(a2) = stage.next_assign(relapse).await {
                stage.answer(&a2, None).await;
            }
        }
        Script::ProgressExtends => {
            // Long enough that an unextended lease would certainly have lapsed and been acted on.
            let hold = Duration::from_millis(t.lease_ms + t.grace_ms + t.lease_ms / 2 + 250);
            let every = Duration::from_millis((t.lease_ms / 3).max(30));
            let until = Instant::now() + hold;
            let mut fraction = 0.0;
            while Instant::now() < until {
                fraction = (fraction + 0.1_f64).min(0.9);
                stage.progress(&a1, fraction).await;
                let next = (Instant::now() + every).min(until);
                if stage.pump_until(next, |s| s.has_news_for(&a1)).await {
                    break; // re-dispatched or cancelled: the judge will say so
                }
            }
            stage.answer(&a1, None).await;
        }
        _ => {}
    }
    stage.wait_terminal(intent, relapse).await;
}

async fn pinned_routing(stage: &mut Stage<'_>) -> Result<(), StageError> {
    let a = stage.enrol().await?;
    let b = stage.enrol().await?;
    stage.auto = Some(Auto::Answer);
    let keys = [stage.worker_key(a), stage.worker_key(b)];
    let mut intents = Vec::new();
    for n in 0..4 {
        let (id, _) = stage.submit(&keys[n % 2]).await?;
        intents.push(id);
    }
    // A key no worker enrolled with: nothing can run it.
    let stranger = crate::wire::Identity::generate()
        .map_err(|e| StageError::Abort(format!("no randomness for a key: {e}")))?;
    stage
        .submit_expecting_refusal(&stranger.public_hex())
        .await?;
    for id in &intents {
        stage.wait_terminal(id, 5000).await;
    }
    Ok(())
}

async fn heartbeat_flapping(stage: &mut Stage<'_>, p: &Params) -> Result<(), StageError> {
    let i = stage.terms.heartbeat_interval_ms;
    let w = stage.enrol().await?;
    stage.need_ms(p.flaps * (3 * i + 2 * (p.window_ms + p.slack_ms)) + 3000)?;
    let poll = Duration::from_millis((i / 4).clamp(50, 200));
    // Listed healthy first.
    stage
        .poll_health(w, "healthy", p.window_ms + p.slack_ms, poll)
        .await;
    for _ in 0..p.flaps {
        stage.set_beating(w, false);
        stage
            .poll_health(w, "unhealthy", 3 * i + p.window_ms + p.slack_ms, poll)
            .await;
        stage.set_beating(w, true);
        stage
            .poll_health(w, "healthy", p.window_ms + p.slack_ms, poll)
            .await;
    }
    stage.close_worker(w).await;
    Ok(())
}

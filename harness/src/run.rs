//! One certification run: prepare the out directory and journal, set up the target, drive and
//! judge every selected case within its budget, stop the target, and hand back the results.
//!
//! Nothing here can hang on a misbehaving realm: every case has a budget enforced by a timeout
//! around its driver, and every wire wait inside a driver has its own deadline as well.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::case::{self, Ctx, KINDS};
use crate::checker::{self, ABORT};
use crate::contract::Contract;
use crate::journal::{self, Entry, Journal, JournalError};
use crate::plan::{CaseSpec, Plan};
use crate::target::{Target, TargetError};
use crate::verdict::{CaseResult, Mode};
use crate::wire;

/// How to reach the realm.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A realm already running at this URL.
    Url(String),
    /// A command the harness starts.
    Spawn(String),
    /// A container image the harness starts (after [`crate::container::Docker::preflight`]).
    Image(crate::container::ImageInfo),
}

impl TargetSpec {
    /// What this kind of target offers to cases that require something (`CaseSpec::requires`).
    pub fn capabilities(&self) -> &'static [&'static str] {
        match self {
            TargetSpec::Image(i) if i.worker.is_some() => &["container", "worker-container"],
            TargetSpec::Image(_) => &["container"],
            TargetSpec::Spawn(_) => &["process"],
            TargetSpec::Url(_) => &[],
        }
    }
}

/// Options of `mtor-cert run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The plan.
    pub plan: Plan,
    /// The target.
    pub target: TargetSpec,
    /// The applicant's manifest.
    pub manifest: crate::target::Manifest,
    /// The bundle directory.
    pub out: PathBuf,
    /// `--cases`.
    pub include: Option<String>,
    /// `--exclude`.
    pub exclude: Option<String>,
    /// Only these case ids (from `--rerun-failed` or `replay`).
    pub only: Option<Vec<String>>,
    /// The seed.
    pub seed: u64,
    /// The mode.
    pub mode: Mode,
    /// Continue an interrupted run in `out`.
    pub resume: bool,
    /// Print progress lines.
    pub progress: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// One result per selected case, in plan order.
    pub cases: Vec<CaseResult>,
    /// Whether every selected case got a result.
    pub complete: bool,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// What the realm's `/v1/manifest` said, if it answered with JSON.
    pub realm_manifest: Option<serde_json::Value>,
    /// Target kind (`url`, `spawn`).
    pub target_kind: String,
    /// One line describing the target.
    pub target_description: String,
    /// The journal's path.
    pub journal: PathBuf,
}

/// Why a run could not be carried out at all (as opposed to cases not passing).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Usage: conflicting options, an out directory in use...
    #[error("{0}")]
    Usage(String),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Local I/O.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The seed of one case: the run's seed mixed with the case id, so each case is reproducible alone.
pub fn case_seed(seed: u64, id: &str) -> u64 {
    let digest = Sha256::digest(format!("{seed}:{id}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

/// A command that re-runs one case with the same plan and seed.
pub fn reproduce_command(opts: &RunOptions, id: &str) -> String {
    let target = match &opts.target {
        TargetSpec::Url(u) => format!("--realm {u}"),
        TargetSpec::Spawn(c) => format!("--spawn '{}'", c.replace('\'', "'\\''")),
        TargetSpec::Image(i) => format!("--image {}", i.reference),
    };
    format!(
        "mtor-cert run {target} --plan {} --cases {id} --seed {} --mode explore --out out-{id}",
        opts.plan.id, opts.seed
    )
}

/// Runs the plan.
pub async fn run(opts: &RunOptions, contract: &Contract) -> Result<RunOutput, RunError> {
    let wanted: Vec<&CaseSpec> = opts
        .plan
        .select(opts.include.as_deref(), opts.exclude.as_deref());
    if !wanted.is_empty()
        && !wanted
            .iter()
            .any(|c| Plan::applies(c, opts.target.capabilities()))
    {
        return Err(RunError::Usage(
            "none of the selected cases applies to this target: they require a container (run with --image)".into(),
        ));
    }
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| RunError::Io(opts.out.display().to_string(), e))?;
    let journal_path = opts.out.join("journal.ndjson");
    if journal_path.exists() && !opts.resume {
        return Err(RunError::Usage(format!(
            "{} already holds a run; pass --resume to continue it, or choose another --out",
            opts.out.display()
        )));
    }
    let (journal, existing) = Journal::open(&journal_path)?;
    let started_at = existing.iter().find_map(|r| match &r.entry {
        Entry::RunStart { at, plan_hash, .. } => Some((at.clone(), plan_hash.clone())),
        _ => None,
    });
    let started_at = match started_at {
        Some((at, hash)) if hash == opts.plan.hash => at,
        Some((_, hash)) => {
            return Err(RunError::Usage(format!(
                "cannot resume: the journal was written by plan hash {hash}, this is {}",
                opts.plan.hash
            )))
        }
        None => {
            let at = wire::now_rfc3339();
            journal.log(
                None,
                Entry::RunStart {
                    plan: opts.plan.id.clone(),
                    plan_hash: opts.plan.hash.clone(),
                    seed: opts.seed,
                    target: match &opts.target {
                        TargetSpec::Url(u) => u.clone(),
                        TargetSpec::Spawn(c) => format!("spawn: {c}"),
                        TargetSpec::Image(i) => format!("image: {} ({})", i.reference, i.id),
                    },
                    at: at.clone(),
                },
            );
            at
        }
    };
    // Results already decided in an interrupted run are kept, not re-run.
    let mut done: BTreeMap<String, CaseResult> = existing
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::CaseEnd { result } => Some((result.id.clone(), (**result).clone())),
            _ => None,
        })
        .collect();

    let selected: Vec<&CaseSpec> = opts
        .plan
        .select(opts.include.as_deref(), opts.exclude.as_deref())
        .into_iter()
        .filter(|c| opts.only.as_ref().is_none_or(|only| only.contains(&c.id)))
        .collect();
    // A case needing what this kind of target cannot offer (a container to kill) does not apply:
    // it is left out and said so, never run and skipped (certification forbids skips).
    let capabilities = opts.target.capabilities();
    let (selected, not_applicable): (Vec<&CaseSpec>, Vec<&CaseSpec>) = selected
        .into_iter()
        .partition(|c| Plan::applies(c, capabilities));
    for spec in &not_applicable {
        let why = format!(
            "not applicable to this target: {} requires {} (run it with --image)",
            spec.id,
            spec.requires.join(", ")
        );
        journal.log(None, Entry::Note { text: why.clone() });
        if opts.progress {
            eprintln!("[-] {why}");
        }
    }

    let (mut target, setup_error) = setup(opts, &journal).await;
    let realm_manifest = match &target {
        Some(t) => fetch_manifest(t, &journal).await,
        None => None,
    };
    let unreachable = match (&target, &setup_error) {
        (_, Some(e)) => Some(e.clone()),
        (Some(t), None) => reachable(t).await.err(),
        (None, None) => Some("no target".into()),
    };
    if let Some(why) = &unreachable {
        journal.log(
            None,
            Entry::Note {
                text: format!("realm unreachable: {why}"),
            },
        );
    }

    let run_start = Instant::now();
    let total = selected.len();
    let mut results = Vec::with_capacity(total);
    for (n, spec) in selected.iter().enumerate() {
        if let Some(r) = done.remove(&spec.id) {
            if opts.progress {
                eprintln!(
                    "[{}/{total}] {} {} (from the interrupted run)",
                    n + 1,
                    spec.id,
                    r.verdict.as_str()
                );
            }
            results.push(r);
            continue;
        }
        let started_ms = u64::try_from(run_start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let case_start = Instant::now();
        let first = journal.log(
            Some(&spec.id),
            Entry::CaseStart {
                params: spec.params_json(),
            },
        );
        let budget = Duration::from_millis(opts.plan.budget_ms(spec));
        match (&target, &unreachable) {
            (_, Some(why)) => {
                journal.log(
                    Some(&spec.id),
                    Entry::Note {
                        text: format!("{ABORT} realm unreachable: {why}"),
                    },
                );
            }
            (Some(t), None) if !KINDS.contains(&spec.kind.as_str()) => {
                let _ = t;
                journal.log(
                    Some(&spec.id),
                    Entry::Note {
                        text: format!("{ABORT} this harness has no case kind `{}`", spec.kind),
                    },
                );
            }
            (Some(t), None) => {
                let ctx = Ctx {
                    target: t,
                    journal: &journal,
                    spec,
                    deadline: Instant::now() + budget,
                    seed: case_seed(opts.seed, &spec.id),
                    run_seed: opts.seed,
                };
                // The budget is enforced here too, not only by each wait inside the driver.
                if tokio::time::timeout(budget + Duration::from_millis(500), case::drive(&ctx))
                    .await
                    .is_err()
                {
                    journal.log(
                        Some(&spec.id),
                        Entry::Note {
                            text: format!("{ABORT} the case's budget of {budget:?} ran out"),
                        },
                    );
                }
            }
            (None, None) => {}
        }
        journal.sync()?;
        let records = journal::read(&journal.path())?;
        let judgement = checker::check(spec, &records, contract);
        let last = journal.next_seq().saturating_sub(1);
        let result = CaseResult {
            id: spec.id.clone(),
            title: spec.title.clone(),
            requirements: spec.requirements.clone(),
            level: spec.level,
            kind: spec.kind.clone(),
            verdict: judgement.verdict(spec),
            reason: judgement.reason.clone(),
            expected: spec.expectation.trim().to_owned(),
            observed: judgement.observed.clone(),
            remediation: spec.remediation.trim().to_owned(),
            evidence: judgement.evidence.clone(),
            journal_span: Some((first, last)),
            started_ms,
            duration_ms: u64::try_from(case_start.elapsed().as_millis()).unwrap_or(u64::MAX),
            reproduce: reproduce_command(opts, &spec.id),
            load: judgement.load.as_deref().cloned(),
        };
        journal.log(
            Some(&spec.id),
            Entry::CaseEnd {
                result: Box::new(result.clone()),
            },
        );
        journal.sync()?;
        if opts.progress {
            eprintln!(
                "[{}/{total}] {:<40} {:<7} {:>6} ms  elapsed {:.1} s",
                n + 1,
                spec.id,
                result.verdict.as_str(),
                result.duration_ms,
                run_start.elapsed().as_secs_f64()
            );
        }
        results.push(result);
    }

    if let Some(t) = target.as_mut() {
        if let Some(c) = t.container.as_ref() {
            let how = c.remove().await;
            journal.log(
                None,
                Entry::Note {
                    text: format!("realm container stopped: {how}"),
                },
            );
        }
        if let Some(p) = t.process.as_mut() {
            let how = p.get_mut().stop(Duration::from_secs(5)).await;
            journal.log(
                None,
                Entry::Note {
                    text: format!("realm stopped: {how}"),
                },
            );
        }
    }
    let finished_at = wire::now_rfc3339();
    journal.log(
        None,
        Entry::RunEnd {
            at: finished_at.clone(),
        },
    );
    journal.sync()?;
    let (kind, description) = match (&target, &opts.target) {
        (Some(t), _) => (t.kind.to_owned(), t.description.clone()),
        (None, TargetSpec::Url(u)) => ("url".to_owned(), format!("realm at {u}")),
        (None, TargetSpec::Spawn(c)) => ("spawn".to_owned(), format!("spawn (failed): {c}")),
        (None, TargetSpec::Image(i)) => (
            "image".to_owned(),
            format!("image (failed): {} ({})", i.reference, i.id),
        ),
    };
    Ok(RunOutput {
        complete: results.len() == total,
        cases: results,
        started_at,
        finished_at,
        realm_manifest,
        target_kind: kind,
        target_description: description,
        journal: journal_path,
    })
}

async fn setup(opts: &RunOptions, journal: &Journal) -> (Option<Target>, Option<String>) {
    let result: Result<Target, TargetError> = match &opts.target {
        TargetSpec::Url(url) => Target::at_url(url, &opts.manifest),
        TargetSpec::Spawn(cmd) => {
            let ready = Duration::from_secs(
                opts.manifest
                    .spawn
                    .as_ref()
                    .map_or(30, |s| s.ready_timeout_s),
            );
            Target::spawn(cmd, &opts.out, ready).await
        }
        TargetSpec::Image(image) => {
            let ready = Duration::from_secs(
                opts.manifest
                    .image
                    .as_ref()
                    .map_or(crate::target::default_image_ready(), |i| i.ready_timeout_s),
            );
            crate::container::start_realm(
                &crate::container::Docker::from_env(),
                image.clone(),
                &opts.manifest,
                &opts.out,
                ready,
            )
            .await
        }
    };
    match result {
        Ok(t) => {
            journal.log(
                None,
                Entry::Note {
                    text: format!("target: {}", t.description),
                },
            );
            (Some(t), None)
        }
        Err(e) => {
            journal.log(
                None,
                Entry::Note {
                    text: format!("target setup failed: {e}"),
                },
            );
            (None, Some(e.to_string()))
        }
    }
}

async fn reachable(t: &Target) -> Result<(), String> {
    let host = t.http_base.trim_start_matches("http://").to_owned();
    match tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&host),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{host}: {e}")),
        Err(_) => Err(format!("{host}: no answer within 3 s")),
    }
}

async fn fetch_manifest(t: &Target, journal: &Journal) -> Option<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let (status, body) = wire::http_get(&t.http_base, "/v1/manifest", journal, None, deadline)
        .await
        .ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// Re-derives every verdict from a journal, for `verify`: returns the cases whose recorded
/// verdict differs from the checker's, as (case id, recorded, re-derived).
pub fn recheck(
    plan: &Plan,
    cases: &[CaseResult],
    journal_path: &Path,
    contract: &Contract,
) -> Result<Vec<(String, String, String)>, RunError> {
    let records = journal::read(journal_path)?;
    let mut differing = Vec::new();
    for result in cases {
        let Some(spec) = plan.cases.iter().find(|c| c.id == result.id) else {
            differing.push((
                result.id.clone(),
                result.verdict.as_str().into(),
                "case not in plan".into(),
            ));
            continue;
        };
        // Judge with the records the case saw when it was decided: everything before its end.
        let end = records
            .iter()
            .position(|r| {
                r.case.as_deref() == Some(result.id.as_str())
                    && matches!(r.entry, Entry::CaseEnd { .. })
            })
            .unwrap_or(records.len());
        let judgement = checker::check(spec, &records[..end], contract);
        let again = judgement.verdict(spec);
        if again != result.verdict {
            differing.push((
                result.id.clone(),
                result.verdict.as_str().into(),
                again.as_str().into(),
            ));
        }
    }
    Ok(differing)
}

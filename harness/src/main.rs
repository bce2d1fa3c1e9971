//! `mtor-cert`: the MTOR/1 certification harness.
//!
//! Exit codes: 0 all required checks passed, 1 some check failed, 2 unknown or incomplete,
//! 3 usage, input or manifest error, 4 internal error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mtor_harness::bundle::{self, RenderFormat};
use mtor_harness::container::Docker;
use mtor_harness::contract::Contract;
use mtor_harness::lint::{self, LintError};
use mtor_harness::plan::Plan;
use mtor_harness::report::RunResults;
use mtor_harness::run::{self, RunOptions, TargetSpec};
use mtor_harness::target::{self, Manifest};
use mtor_harness::verdict::Mode;

/// Exit code: every check passed.
const EXIT_OK: u8 = 0;
/// Exit code: some check failed.
const EXIT_FAIL: u8 = 1;
/// Exit code: some check undecided, or the run incomplete (also: interrupted).
const EXIT_INCOMPLETE: u8 = 2;
/// Exit code: bad usage, unreadable input or an invalid manifest.
const EXIT_USAGE: u8 = 3;
/// Exit code: the harness itself failed.
const EXIT_INTERNAL: u8 = 4;

#[derive(Parser)]
#[command(name = "mtor-cert", version, about = "MTOR/1 certification harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certify a realm: run a pinned plan against it and write the report bundle. With no
    /// target, certifies the reference realm `mtor-realm` found beside this binary or on PATH.
    Run(RunArgs),
    /// List the plans this binary carries, with version and content hash.
    Plans,
    /// Verify a report bundle (directory or .tar.gz): signature, every file's hash, the results
    /// against their schema, and every verdict re-derived from the journal. Exit 0 when it
    /// verifies, 1 when it does not, 3 when it cannot be read.
    Verify {
        /// The bundle directory or archive.
        bundle: PathBuf,
        /// The run's public key (hex) as the board received it; without it, the signature only
        /// proves the bundle matches the key named inside it.
        #[arg(long)]
        key: Option<String>,
    },
    /// Re-render a report from a bundle's results.json to standard output.
    Report {
        /// The bundle directory or archive.
        bundle: PathBuf,
        /// html, md, junit or json.
        #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
        format: ReportFormat,
    },
    /// Re-run one case of a bundle with the same plan and seed against a realm.
    Replay {
        /// The case id.
        case: String,
        /// The bundle it came from.
        #[arg(long)]
        bundle: PathBuf,
        /// A running realm (default: the bundle's target when it was a URL).
        #[arg(long, conflicts_with = "spawn")]
        realm: Option<String>,
        /// A command that starts the realm (default: the reference realm).
        #[arg(long)]
        spawn: Option<String>,
        /// A container image that holds the realm.
        #[arg(long, conflicts_with_all = ["realm", "spawn"])]
        image: Option<String>,
        /// The applicant's manifest.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Where to write the replay's bundle.
        #[arg(long, default_value = "mtor-cert-replay")]
        out: PathBuf,
    },
    /// Validate captured events (JSON files, or NDJSON with one event a line) against the
    /// MTOR/1 schemas embedded in this binary. Exit 0 when all are valid, 1 when any is not,
    /// 3 on unreadable input.
    LintEvents {
        /// Files to check: `.json` (one event) or `.ndjson` / `.jsonl` (one event a line).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Check each document against this schema instead of as an event
        /// (for instance `rest/health` or `intents/cert.probe.input`).
        #[arg(long)]
        schema: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List the schemas embedded in this binary.
    Schemas,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A running realm: ws://HOST:PORT or http://HOST:PORT.
    #[arg(long, conflicts_with = "spawn")]
    realm: Option<String>,
    /// A command that starts the realm; placeholders {port} {listen} {data_dir} {enrol_token}
    /// {sysop_key} are filled in, and MTOR_* environment variables are set.
    #[arg(long)]
    spawn: Option<String>,
    /// A container image (NAME:TAG or id) already in the local engine: the harness runs it on a
    /// private network with MTOR_* credentials, publishes its port on 127.0.0.1, waits for
    /// health, and removes the container and network afterwards. Needs `docker` (or
    /// MTOR_DOCKER); exit 3 when no engine answers.
    #[arg(long, conflicts_with_all = ["realm", "spawn"])]
    image: Option<String>,
    /// The applicant's manifest (TOML).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Plan id (see `mtor-cert plans`) or a path to a plan file (not in certification mode).
    #[arg(long, default_value = "mtor-1.0/standard")]
    plan: String,
    /// Bundle directory.
    #[arg(long, default_value = "mtor-cert-out")]
    out: PathBuf,
    /// Only cases matching these comma-separated globs (`events.*`).
    #[arg(long)]
    cases: Option<String>,
    /// Leave out cases matching these comma-separated globs.
    #[arg(long)]
    exclude: Option<String>,
    /// Seed for generated inputs (default: random, recorded in the results).
    #[arg(long)]
    seed: Option<u64>,
    /// certification (board), ci (regression gate) or explore.
    #[arg(long, value_enum, default_value_t = Mode::Ci)]
    mode: Mode,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    resume: bool,
    /// Re-run only the cases that did not pass in this earlier bundle.
    #[arg(long)]
    rerun_failed: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Html,
    Md,
    Junit,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One line per violation, for people.
    Text,
    /// One JSON object per invalid event (NDJSON), for tools.
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let contract = match Contract::embedded() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mtor-cert: internal error: embedded contract does not load: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    match cli.command {
        Command::Run(args) => run_command(&contract, args),
        Command::Verify { bundle, key } => verify_command(&contract, &bundle, key.as_deref()),
        Command::Report { bundle, format } => {
            let format = match format {
                ReportFormat::Html => RenderFormat::Html,
                ReportFormat::Md => RenderFormat::Md,
                ReportFormat::Junit => RenderFormat::Junit,
                ReportFormat::Json => RenderFormat::Json,
            };
            match bundle::rerender(&bundle, format) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => usage(e),
            }
        }
        Command::Replay {
            case,
            bundle,
            realm,
            spawn,
            image,
            manifest,
            out,
        } => replay_command(
            &contract,
            case,
            &bundle,
            (realm, spawn, image),
            manifest,
            out,
        ),
        Command::Plans => match Plan::embedded() {
            Ok(plans) => {
                for p in plans {
                    println!(
                        "{}\t{}\t{} cases\tsha256:{}\t{}",
                        p.id,
                        p.version,
                        p.cases.len(),
                        p.hash,
                        p.title
                    );
                }
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("mtor-cert: internal error: {e}");
                ExitCode::from(EXIT_INTERNAL)
            }
        },
        Command::LintEvents {
            files,
            schema,
            format,
        } => lint_events(&contract, &files, schema.as_deref(), format),
        Command::Schemas => {
            println!("envelope");
            for name in contract.message_types().chain(contract.other_schemas()) {
                println!("{name}");
            }
            ExitCode::from(EXIT_OK)
        }
    }
}

fn lint_events(
    contract: &Contract,
    files: &[PathBuf],
    schema: Option<&str>,
    format: Format,
) -> ExitCode {
    let summary = match lint::lint(contract, files, schema) {
        Ok(s) => s,
        Err(e @ (LintError::Unreadable { .. } | LintError::Schema(_))) => {
            eprintln!("mtor-cert: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for finding in &summary.findings {
        match format {
            Format::Json => match serde_json::to_string(finding) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("mtor-cert: internal error: {e}");
                    return ExitCode::from(EXIT_INTERNAL);
                }
            },
            Format::Text => {
                let what = match (&finding.kind, &finding.id) {
                    (Some(t), Some(id)) => format!(" ({t} {id})"),
                    (Some(t), None) => format!(" ({t})"),
                    _ => String::new(),
                };
                for v in &finding.violations {
                    println!(
                        "{}:{}:{what} at \"{}\" [{}] {}",
                        finding.file.display(),
                        finding.line,
                        v.pointer,
                        v.keyword,
                        v.message
                    );
                }
            }
        }
    }
    eprintln!(
        "{} event(s) checked, {} valid, {} invalid",
        summary.events,
        summary.events - summary.invalid,
        summary.invalid
    );
    ExitCode::from(if summary.invalid == 0 {
        EXIT_OK
    } else {
        EXIT_FAIL
    })
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mtor-cert: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn run_command(contract: &Contract, args: RunArgs) -> ExitCode {
    let manifest = match &args.manifest {
        Some(path) => match Manifest::load(path) {
            Ok(m) => m,
            Err(e) => return usage(e),
        },
        None => Manifest::default(),
    };
    let plan = match Plan::find(&args.plan) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    if args.mode == Mode::Certification && !plan.is_pinned() {
        return usage(
            "certification mode runs only the plans pinned in this binary (see `mtor-cert plans`)",
        );
    }
    if args.mode == Mode::Certification
        && (args.cases.is_some() || args.exclude.is_some() || args.rerun_failed.is_some())
    {
        return usage("certification mode runs the whole plan: --cases, --exclude and --rerun-failed are not allowed");
    }
    // Flags first (--realm, --spawn, --image), then the manifest in the same order.
    let image = args.image.clone().or_else(|| {
        (args.realm.is_none()
            && args.spawn.is_none()
            && manifest.endpoints.base.is_none()
            && manifest.spawn.is_none())
        .then(|| manifest.image.as_ref().and_then(|i| i.name.clone()))
        .flatten()
    });
    let target = match (&args.realm, &args.spawn, &image, &manifest.endpoints.base, &manifest.spawn) {
        (Some(url), _, _, _, _) => TargetSpec::Url(url.clone()),
        (None, Some(cmd), _, _, _) => TargetSpec::Spawn(cmd.clone()),
        // Fail fast, before any directory or container exists, when no engine answers or the
        // image is not there.
        (None, None, Some(image), _, _) => match Docker::from_env().preflight(image) {
            Ok(info) => TargetSpec::Image(info),
            Err(e) => return usage(format!("--image {image}: {e}")),
        },
        (None, None, None, Some(url), _) => TargetSpec::Url(url.clone()),
        (None, None, None, None, Some(spawn)) => TargetSpec::Spawn(spawn.command.clone()),
        (None, None, None, None, None) => match target::reference_realm_binary() {
            Some(bin) => {
                let cmd = format!(
                    "{} up --listen 127.0.0.1:{{port}} --data {{data_dir}} --workers 2",
                    bin.display()
                );
                eprintln!("mtor-cert: no target given: certifying the reference realm {}", bin.display());
                TargetSpec::Spawn(cmd)
            }
            None => {
                return usage("no target: give --realm URL or --spawn CMD (no mtor-realm binary beside mtor-cert or on PATH)")
            }
        },
    };
    if let TargetSpec::Url(url) = &target {
        if let Err(e) = target::Target::normalise(url) {
            return usage(format!("--realm: {e}"));
        }
    }
    let only = match &args.rerun_failed {
        None => None,
        Some(dir) => match bundle::failed_cases(dir) {
            Ok(ids) => Some(ids),
            Err(e) => return usage(e),
        },
    };
    let seed = args.seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        mtor_harness::wire::fill_random(&mut b);
        u64::from_le_bytes(b)
    });
    let opts = RunOptions {
        plan,
        target,
        manifest,
        out: args.out.clone(),
        include: args.cases.clone(),
        exclude: args.exclude.clone(),
        only,
        seed,
        mode: args.mode,
        resume: args.resume,
        progress: true,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mtor-cert: internal error: no async runtime: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    // SIGINT, SIGTERM or SIGHUP drop the run future: the target's guards then stop the spawned
    // realm and remove its container and network before the process exits.
    let finished = runtime.block_on(async {
        tokio::select! {
            r = run::run(&opts, contract) => Ok(r),
            signal = interrupted() => Err(signal),
        }
    });
    let output = match finished {
        Err(signal) => {
            eprintln!(
                "mtor-cert: interrupted by {signal}: the realm was stopped and everything the run started removed; the journal in {} keeps the decided cases (continue with --resume)",
                opts.out.display()
            );
            return ExitCode::from(EXIT_INCOMPLETE);
        }
        Ok(r) => r,
    };
    let output = match output {
        Ok(o) => o,
        Err(run::RunError::Usage(m)) => return usage(m),
        Err(e) => {
            eprintln!("mtor-cert: internal error: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    finish_run(&opts, output)
}

/// The first of SIGINT, SIGTERM and SIGHUP; never, when the handlers cannot be installed.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

fn finish_run(opts: &RunOptions, output: run::RunOutput) -> ExitCode {
    let results = match RunResults::from_run(&opts.plan, opts.mode, opts.seed, &output) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mtor-cert: internal error: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    let key = match bundle::generate_run_key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("mtor-cert: internal error: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    let info = match bundle::write_bundle(&opts.out, &results, &output.journal, &key) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("mtor-cert: internal error: could not write the bundle: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    let s = &results.summary;
    let counts: Vec<String> = s
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(v, n)| format!("{n} {}", v.as_str()))
        .collect();
    println!("{}: {}", results.outcome_words(), counts.join(", "));
    println!(
        "report:      {}",
        info.dir.join(bundle::REPORT_HTML).display()
    );
    println!(
        "remediation: {}",
        info.dir.join(bundle::REMEDIATION_MD).display()
    );
    println!(
        "junit:       {}",
        info.dir.join(bundle::JUNIT_XML).display()
    );
    println!("bundle:      {}", info.archive.display());
    println!(
        "run key:     {} (give it to the board with the bundle)",
        info.public_key
    );
    println!("exit {}: {}", s.exit_code, results.exit_meaning());
    ExitCode::from(s.exit_code)
}

fn verify_command(contract: &Contract, path: &std::path::Path, key: Option<&str>) -> ExitCode {
    let report = match bundle::verify_bundle(path) {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    let mut bad = false;
    for p in &report.problems {
        println!("FAIL {p}");
        bad = true;
    }
    if !report.signature_valid {
        println!("FAIL manifest.sig: not a valid signature of manifest.json");
        bad = true;
    }
    if let (Some(want), Some(m)) = (key, &report.manifest) {
        if !m.public_key.eq_ignore_ascii_case(want.trim()) {
            println!(
                "FAIL manifest.json: signed by {}, not by the key given ({want})",
                m.public_key
            );
            bad = true;
        }
    }
    match (&report.results, &report.journal) {
        (Some(results), Some(journal)) => {
            let plan = Plan::embedded().ok().and_then(|plans| {
                plans
                    .into_iter()
                    .find(|p| p.id == results.plan.id && p.hash == results.plan.hash)
            });
            match plan {
                None => {
                    println!(
                        "FAIL results.json: plan {} (sha256 {}) is not pinned in this mtor-cert, so its verdicts cannot be re-derived",
                        results.plan.id, results.plan.hash
                    );
                    bad = true;
                }
                Some(plan) => match run::recheck(&plan, &results.cases, journal, contract) {
                    Ok(differing) => {
                        for (id, recorded, again) in &differing {
                            println!("FAIL journal.ndjson: case {id} is recorded {recorded}, but its journal gives {again}");
                        }
                        bad |= !differing.is_empty();
                        if differing.is_empty() {
                            println!(
                                "ok   {} verdicts re-derived from the journal",
                                results.cases.len()
                            );
                        }
                    }
                    Err(e) => {
                        println!("FAIL journal.ndjson: {e}");
                        bad = true;
                    }
                },
            }
        }
        _ => bad = true,
    }
    if bad {
        println!("bundle {} does NOT verify", path.display());
        ExitCode::from(EXIT_FAIL)
    } else {
        println!("bundle {} verifies", path.display());
        ExitCode::from(EXIT_OK)
    }
}

fn replay_command(
    contract: &Contract,
    case: String,
    bundle_path: &std::path::Path,
    (realm, spawn, image): (Option<String>, Option<String>, Option<String>),
    manifest: Option<PathBuf>,
    out: PathBuf,
) -> ExitCode {
    let (results, _) = match bundle::load_results(bundle_path) {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if !results.cases.iter().any(|c| c.id == case) {
        return usage(format!("case `{case}` is not in {}", bundle_path.display()));
    }
    let realm = realm.or_else(|| {
        (results.target.description.starts_with("realm at ")).then(|| {
            results
                .target
                .description
                .trim_start_matches("realm at ")
                .to_owned()
        })
    });
    let args = RunArgs {
        realm,
        spawn,
        image,
        manifest,
        plan: results.plan.id.clone(),
        out,
        cases: Some(case),
        exclude: None,
        seed: Some(results.seed),
        mode: Mode::Explore,
        resume: false,
        rerun_failed: None,
    };
    run_command(contract, args)
}

//! `mtor-realm`: the MTOR/1 reference realm.
//!
//! - `mtor-realm up`: run a realm with built-in workers.
//! - `mtor-realm worker`: run a worker node against a realm (`--gpu auto|off|require`).
//! - `mtor-realm bench-signal`: time the analyze-signal GPU (or CPU) path.
//! - `mtor-realm wallet new|balance|mint`, `mtor-realm ask`: a small terminal client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{error, info};

use mtor_realm::cli::ClientSession;
use mtor_realm::config::{Overrides, RealmConfig};
use mtor_realm::identity::{self, KeyPair};
use mtor_realm::signal::gpu::{self, GpuMode};
use mtor_realm::{intents, server, signal, worker};

/// The MTOR/1 reference realm.
#[derive(Parser)]
#[command(name = "mtor-realm", version, about = "The MTOR/1 reference realm")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a realm (with built-in workers).
    Up {
        /// Address to listen on [env MTOR_LISTEN; default 127.0.0.1:7700].
        #[arg(long)]
        listen: Option<String>,
        /// Data directory [env MTOR_DATA_DIR; default ./realm-data].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Built-in workers [default: number of cores].
        #[arg(long)]
        workers: Option<usize>,
        /// Enrolment token [env MTOR_ENROL_TOKEN; default: generated into the data dir].
        #[arg(long)]
        enrol_token: Option<String>,
        /// Sysop public key, hex [env MTOR_SYSOP_KEY; default: generated into the data dir].
        #[arg(long)]
        sysop_key: Option<String>,
        /// Lease length in ms [env MTOR_LEASE_MS; default 10000].
        #[arg(long, hide = true)]
        lease_ms: Option<u64>,
        /// GPU for analyze-signal (auto|off|require): built-in worker 0 takes the GPU when one
        /// is usable, the others stay on the CPU.
        #[arg(long, default_value = "auto")]
        gpu: GpuMode,
    },
    /// Run a worker node.
    Worker {
        /// Realm URL, ws://HOST:PORT.
        #[arg(long)]
        realm: String,
        /// Enrolment token.
        #[arg(long)]
        token: String,
        /// Comma-separated intents to serve.
        #[arg(long, default_value = "cert.probe,analyze-signal")]
        intents: String,
        /// Tasks run at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// The worker's key file (created if missing, mode 0600); unused when MTOR_WORKER_KEY
        /// (hex seed) is set.
        #[arg(long, default_value = "./worker.key")]
        key_file: PathBuf,
        /// GPU for analyze-signal: auto (use one if usable, else the CPU, saying why), off, or
        /// require (exit with an error when no usable GPU is found).
        #[arg(long, default_value = "auto")]
        gpu: GpuMode,
    },
    /// Benchmark the analyze-signal GPU path: prints samples per second and achieved memory
    /// bandwidth; with --gpu off (or no GPU under auto) it times the CPU path instead.
    BenchSignal {
        /// auto, off (CPU only) or require (exit 1 without a usable GPU).
        #[arg(long, default_value = "require")]
        gpu: GpuMode,
        /// FFT length (power of two, 16..65536).
        #[arg(long, default_value_t = 4096)]
        fft_len: usize,
        /// Segments per run.
        #[arg(long, default_value_t = 4096)]
        batch: usize,
        /// Timed runs.
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// Probe a realm's health endpoint: exit 0 when it answers 2xx, 1 otherwise (the container
    /// image's HEALTHCHECK, which has no shell or curl).
    Health {
        /// URL to GET [default: http://127.0.0.1:<port of MTOR_LISTEN, else 7700>/v1/health].
        #[arg(long)]
        url: Option<String>,
        /// Deadline in milliseconds for the whole probe.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Wallet commands.
    Wallet {
        #[command(subcommand)]
        command: WalletCommand,
    },
    /// Submit an intent and print its result.
    Ask {
        /// Intent name (cert.probe, analyze-signal).
        intent: String,
        /// Input object as JSON; for cert.probe, a random nonce is used when omitted.
        #[arg(long)]
        input: Option<String>,
        /// Realm URL, ws://HOST:PORT.
        #[arg(long, default_value = "ws://127.0.0.1:7700")]
        realm: String,
        /// Wallet key file.
        #[arg(long, default_value = "./wallet.key")]
        key_file: PathBuf,
        /// Most to pay, in micro-tokens (default: the manifest price).
        #[arg(long)]
        max_cost: Option<u64>,
        /// Seconds to wait for the result.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
    },
}

#[derive(Subcommand)]
enum WalletCommand {
    /// Create a wallet key file and print the wallet id.
    New {
        /// Where to write the key (mode 0600; never overwritten).
        #[arg(long, default_value = "./wallet.key")]
        key_file: PathBuf,
    },
    /// Print a wallet's balance (signed REST request).
    Balance {
        /// Realm URL, ws://HOST:PORT.
        #[arg(long, default_value = "ws://127.0.0.1:7700")]
        realm: String,
        /// Wallet key file.
        #[arg(long, default_value = "./wallet.key")]
        key_file: PathBuf,
    },
    /// Mint tokens to a wallet (needs the sysop key).
    Mint {
        /// Realm URL, ws://HOST:PORT.
        #[arg(long, default_value = "ws://127.0.0.1:7700")]
        realm: String,
        /// The sysop's secret key file.
        #[arg(long, default_value = "./realm-data/sysop.key")]
        sysop_key_file: PathBuf,
        /// Wallet id (public key hex) to credit.
        #[arg(long)]
        wallet: String,
        /// Amount in micro-tokens.
        #[arg(long)]
        amount: u64,
        /// Idempotency key (default: fresh).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Tasks each built-in worker runs at once. Tasks are async (CPU work such as analyze-signal
/// runs on the blocking pool), so a slot costs little; too few slots make dispatch wait for
/// settlement round trips instead of the CPU.
const BUILTIN_CONCURRENCY: usize = 64;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain; a backtrace helps nobody at a terminal.
            eprintln!("mtor-realm: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Opens the process's GPU for analyze-signal under `mode` (off the async threads: opening
/// compiles the kernels with NVRTC).
async fn open_gpu(mode: GpuMode) -> anyhow::Result<Option<std::sync::Arc<gpu::GpuEngine>>> {
    let opened = tokio::task::spawn_blocking(move || gpu::engine_for(mode))
        .await
        .context("opening the GPU")?;
    opened.map_err(|e| anyhow::anyhow!("--gpu require: no usable GPU: {e}"))
}

/// `mtor-realm bench-signal`: times the analyze-signal pipeline on synthetic noise.
fn bench_signal(mode: GpuMode, fft_len: usize, batch: usize, iters: usize) -> anyhow::Result<()> {
    if !(16..=65_536).contains(&fft_len) || !fft_len.is_power_of_two() {
        bail!("--fft-len must be a power of two in 16..65536");
    }
    let batch = batch.max(1);
    let samples = fft_len * batch;
    println!("analyze-signal benchmark: fft_len {fft_len}, batch {batch} ({samples} complex samples per run), {iters} runs");
    match gpu::engine_for(mode) {
        Ok(Some(engine)) => {
            let r = engine
                .bench(fft_len, batch, iters)
                .context("GPU benchmark")?;
            let (major, minor) = r.info.compute_capability;
            println!(
                "device: {} ({:.1} GiB, compute capability {major}.{minor})",
                r.info.name,
                r.info.memory_bytes as f64 / (1u64 << 30) as f64
            );
            println!(
                "gpu window+fft+power (device-resident): {:.3e} samples/s, achieved memory bandwidth {:.1} GB/s ({} B/sample model)",
                r.device_samples_per_s,
                r.device_gb_per_s,
                gpu::BYTES_PER_SAMPLE
            );
            println!(
                "gpu whole analysis from host memory:    {:.3e} samples/s",
                r.end_to_end_samples_per_s
            );
            Ok(())
        }
        Ok(None) => {
            if mode == GpuMode::Auto {
                println!("no usable GPU: timing the CPU path instead");
            }
            let x = signal::synth::generate(&signal::synth::Spec {
                sample_rate_hz: 1e6,
                len: samples,
                noise_power: 1.0,
                tones: vec![],
                seed: 1,
            });
            let params = signal::SignalParams {
                sample_rate_hz: 1e6,
                fft_len,
                window: signal::Window::Hann,
                averages: batch,
                peaks: 8,
                threshold_db: 6.0,
                backend: signal::BackendRequest::Cpu,
                drift_max_hz_per_s: None,
            };
            let threads = signal::cpu::default_threads();
            let t = std::time::Instant::now();
            for _ in 0..iters.max(1) {
                std::hint::black_box(signal::cpu::analyze(&x, &params));
            }
            let rate = (samples * iters.max(1)) as f64 / t.elapsed().as_secs_f64();
            println!("cpu ({threads} threads): {rate:.3e} samples/s");
            Ok(())
        }
        Err(e) => bail!("--gpu require: no usable GPU, nothing to benchmark: {e}"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            listen,
            data,
            workers,
            enrol_token,
            sysop_key,
            lease_ms,
            gpu,
        } => {
            up(
                Overrides {
                    listen,
                    data_dir: data,
                    enrol_token,
                    sysop_key,
                    lease_ms,
                },
                workers,
                gpu,
            )
            .await
        }
        Command::BenchSignal {
            gpu,
            fft_len,
            batch,
            iters,
        } => tokio::task::spawn_blocking(move || bench_signal(gpu, fft_len, batch, iters))
            .await
            .context("benchmark thread")?,
        Command::Worker {
            realm,
            token,
            intents,
            concurrency,
            key_file,
            gpu,
        } => {
            let gpu = open_gpu(gpu).await?;
            // MTOR_WORKER_KEY (a hex seed) lets whoever starts a worker container choose its
            // identity, as the harness does to pin probes to it; otherwise the key file.
            let key = match std::env::var("MTOR_WORKER_KEY") {
                Ok(seed) if !seed.trim().is_empty() => KeyPair::from_seed_hex(&seed)
                    .context("MTOR_WORKER_KEY must be a 64-hex-char secret seed")?,
                _ => {
                    let (key, created) = KeyPair::load_or_create(&key_file)
                        .with_context(|| format!("worker key {}", key_file.display()))?;
                    if created {
                        info!(file = %key_file.display(), "created worker key");
                    }
                    key
                }
            };
            let opts = worker::WorkerOptions {
                realm,
                token,
                intents: intents
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
                concurrency: concurrency.clamp(1, 1024),
                label: format!("w-{}", &key.public_hex()[..8]),
                key,
                gpu,
            };
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                let _ = tx.send(true);
            });
            worker::run(opts, rx).await?;
            Ok(())
        }
        Command::Health { url, timeout_ms } => {
            let url = url.unwrap_or_else(mtor_realm::probe::default_url);
            let within = Duration::from_millis(timeout_ms);
            // Blocking std I/O with its own deadline; off the async workers.
            let status =
                tokio::task::spawn_blocking(move || mtor_realm::probe::probe(&url, within))
                    .await
                    .context("health probe task")??;
            println!("{status}");
            Ok(())
        }
        Command::Wallet { command } => wallet(command).await,
        Command::Ask {
            intent,
            input,
            realm,
            key_file,
            max_cost,
            wait_s,
        } => ask(intent, input, realm, key_file, max_cost, wait_s).await,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn up(overrides: Overrides, workers: Option<usize>, gpu: GpuMode) -> anyhow::Result<()> {
    // Before anything starts: a seeded defect (debug builds with `--features defects` only)
    // must be in force from the first frame, and a clean build refuses to pretend to carry one.
    mtor_realm::defect::init()?;
    let gpu = open_gpu(gpu).await?;
    let (cfg, report) = RealmConfig::resolve(overrides).context("configuration")?;
    let workers =
        workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let data_dir = cfg.data_dir.clone();
    let token = cfg.enrol_token.clone();
    let sysop = cfg.sysop_key.clone();
    let realm = server::start(cfg).await.context("starting the realm")?;
    let addr = realm.addr;
    let ws = format!("ws://{addr}");
    println!(
        "MTOR/1 realm {} listening on {addr}",
        realm.state.config.realm_id()
    );
    println!("  client channel:  {ws}/v1/client");
    println!("  worker channel:  {ws}/v1/worker");
    println!("  manifest:        http://{addr}/v1/manifest");
    println!("  health:          http://{addr}/v1/health");
    println!("  metrics:         http://{addr}/metrics");
    println!("  data dir:        {}", data_dir.display());
    println!(
        "  realm key:       {}{}",
        report.realm_key_file.display(),
        if report.realm_key_created {
            " (created)"
        } else {
            ""
        }
    );
    match &report.sysop_key_file {
        Some(p) => println!(
            "  sysop key:       {} (secret, mode 0600{}) public {sysop}",
            p.display(),
            if report.sysop_key_created {
                ", created"
            } else {
                ""
            }
        ),
        None => println!("  sysop key:       {sysop} (configured)"),
    }
    match &report.token_file {
        Some(p) => println!("  enrolment token: {}", p.display()),
        None => println!("  enrolment token: (configured)"),
    }
    println!(
        "  connect a worker: mtor-realm worker --realm {ws} --token $(cat {})",
        report
            .token_file
            .as_ref()
            .map_or_else(|| "TOKEN_FILE".to_owned(), |p| p.display().to_string())
    );
    println!("  built-in workers: {workers}");

    let (wtx, wrx) = watch::channel(false);
    let mut handles = Vec::new();
    for i in 0..workers {
        let path = data_dir.join("workers").join(format!("builtin-{i}.key"));
        let (key, _) = KeyPair::load_or_create(&path)
            .with_context(|| format!("worker key {}", path.display()))?;
        let opts = worker::WorkerOptions {
            realm: ws.clone(),
            token: token.clone(),
            intents: intents::CATALOG.iter().map(|s| s.name.to_owned()).collect(),
            concurrency: BUILTIN_CONCURRENCY,
            label: format!("builtin-{i}"),
            key,
            // One GPU worker per GPU: the others keep the CPU path busy.
            gpu: if i == 0 { gpu.clone() } else { None },
        };
        let rx = wrx.clone();
        handles.push(tokio::spawn(async move {
            if let Err(e) = worker::run(opts, rx).await {
                error!(error = %e, "built-in worker stopped");
            }
        }));
    }
    wait_for_signal().await;
    info!("shutting down");
    // The realm drains first, so the built-in workers can finish what they run.
    realm.stop().await;
    let _ = wtx.send(true);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    Ok(())
}

async fn wallet(command: WalletCommand) -> anyhow::Result<()> {
    match command {
        WalletCommand::New { key_file } => {
            if key_file.exists() {
                bail!("{} exists; refusing to overwrite a key", key_file.display());
            }
            let key = KeyPair::generate()?;
            key.save(&key_file)?;
            println!("{}", key.public_hex());
            eprintln!("wallet key written to {} (mode 0600)", key_file.display());
            Ok(())
        }
        WalletCommand::Balance { realm, key_file } => {
            let key = KeyPair::load(&key_file)?;
            let path = format!("/v1/wallets/{}/balance", key.public_hex());
            let (status, body) = mtor_realm::cli::signed_get(&realm, &path, &key).await?;
            if status != 200 {
                bail!("realm answered {status}: {body}");
            }
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(())
        }
        WalletCommand::Mint {
            realm,
            sysop_key_file,
            wallet,
            amount,
            idempotency_key,
        } => {
            if !identity::is_key(&wallet) {
                bail!("--wallet must be a 64-hex-char public key");
            }
            let key = KeyPair::load(&sysop_key_file)?;
            let mut s = ClientSession::connect(&realm, &key).await?;
            let idem = idempotency_key.unwrap_or_else(identity::new_id);
            let ev = s
                .request(
                    "wallet.mint",
                    json!({"wallet": wallet, "amount": amount, "idempotency_key": idem}),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&ev["body"])?);
            s.close().await;
            Ok(())
        }
    }
}

async fn ask(
    intent: String,
    input: Option<String>,
    realm: String,
    key_file: PathBuf,
    max_cost: Option<u64>,
    wait_s: u64,
) -> anyhow::Result<()> {
    let key = KeyPair::load(&key_file).with_context(|| {
        format!(
            "wallet key {} (create one with `mtor-realm wallet new`)",
            key_file.display()
        )
    })?;
    let input: Value = match input {
        Some(text) => serde_json::from_str(&text).context("--input must be a JSON object")?,
        None if intent == "cert.probe" => json!({"nonce": identity::new_id()}),
        None => bail!("--input is required for {intent}"),
    };
    let max_cost = max_cost
        .or_else(|| intents::estimated_cost(&intent, &input))
        .unwrap_or(1_000);
    let mut s = ClientSession::connect(&realm, &key).await?;
    let accepted = s
        .request("intent.submit", json!({"intent": intent, "input": input, "max_cost": max_cost, "idempotency_key": identity::new_id()}))
        .await?;
    if accepted["type"] != "intent.accepted" {
        bail!("not accepted: {}", accepted["body"]);
    }
    let id = accepted["body"]["intent_id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    eprintln!("accepted as {id}; waiting");
    let done = s.wait_terminal(&id, Duration::from_secs(wait_s)).await?;
    println!("{}", serde_json::to_string_pretty(&done["body"])?);
    s.close().await;
    if done["type"] != "intent.result" {
        bail!("intent did not succeed");
    }
    Ok(())
}

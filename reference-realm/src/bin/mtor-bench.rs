//! `mtor-bench`: an open-loop load generator for a realm's client channel (wrk2's model).
//!
//! Each connection is one wallet's session and sends `intent.submit` (cert.probe) on a fixed
//! schedule; latency is measured from the *intended* send time (corrected for coordinated
//! omission) and from the actual send time (uncorrected), to the terminal `intent.result`.
//! Histograms are HdrHistograms, so memory stays constant whatever the run length.
//!
//! With no `--realm`, it starts `mtor-realm up` (the binary beside this one) on a fresh data
//! directory with the durable ledger, and stops it at the end. This is realm-side tooling until
//! the harness's own load suite exists; it is not part of the certification path.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use mtor_realm::identity::{self, KeyPair};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// Every wait on the realm has this deadline: a bench must not hang either.
const WAIT: Duration = Duration::from_secs(15);

#[derive(Parser, Debug)]
#[command(
    name = "mtor-bench",
    about = "Open-loop load generator for an MTOR/1 realm"
)]
struct Args {
    /// Realm URL (ws://HOST:PORT). Without it, a reference realm is started for the run.
    #[arg(long)]
    realm: Option<String>,
    /// The sysop secret key file of `--realm` (to fund the bench wallets).
    #[arg(long)]
    sysop_key_file: Option<PathBuf>,
    /// Built-in workers of the realm this bench starts.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Target arrival rates in intents per second (each is one measured step).
    #[arg(long, value_delimiter = ',', default_value = "5000")]
    rate: Vec<u64>,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Unmeasured seconds at the step's rate before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    /// Connections (one wallet each). The spec's per-connection rate limit (100 frames/s by
    /// default) means rate / connections must stay below it.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Threads of the generator's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Counters and histograms of one step, shared by every connection task.
struct Stats {
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    ack: Histogram<u64>,
    sent: u64,
    accepted: u64,
    rejected: u64,
    /// Rejections and errors by code.
    codes: std::collections::BTreeMap<String, u64>,
    results: u64,
    failed: u64,
    errors: u64,
    /// Sends made more than 10 ms after their intended time: the generator fell behind.
    late_sends: u64,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        let h = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds");
        Ok(Self {
            corrected: h()?,
            uncorrected: h()?,
            ack: h()?,
            sent: 0,
            accepted: 0,
            rejected: 0,
            codes: Default::default(),
            results: 0,
            failed: 0,
            errors: 0,
            late_sends: 0,
        })
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mtor-bench: error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mtor-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A realm this bench started; killed (and its data dir removed) on drop.
struct Spawned {
    child: Child,
    data: PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn spawn_realm(workers: usize, sysop: &KeyPair) -> anyhow::Result<(Spawned, String)> {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe().context("locating mtor-bench")?;
    let bin = exe
        .parent()
        .map(|d| d.join("mtor-realm"))
        .filter(|p| p.exists())
        .context("mtor-realm is not beside mtor-bench; build it (cargo build --release --bins) or pass --realm")?;
    let data = std::env::temp_dir().join(format!("mtor-bench-{}", identity::new_id()));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let mut child = Command::new(&bin)
        .args(["up", "--listen", "127.0.0.1:0", "--workers"])
        .arg(workers.to_string())
        .arg("--data")
        .arg(&data)
        .args(["--sysop-key", &sysop.public_hex()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("realm stdout")?;
    let spawned = Spawned { child, data };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_owned());
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .context("the realm did not say where it listens within 15 s")?;
    Ok((spawned, format!("ws://{addr}")))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn event(kind: &str, body: Value) -> (String, String) {
    let id = identity::new_id();
    let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let ev =
        json!({"proto": "MTOR/1", "type": kind, "id": id, "ts": ts, "corr": null, "body": body});
    (id, ev.to_string())
}

async fn next_event(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no event from the realm within 15 s")?
            .context("the realm closed the connection")??;
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).context("the realm sent non-JSON");
        }
    }
}

async fn answer(ws: &mut Ws, id: &str) -> anyhow::Result<Value> {
    loop {
        let ev = next_event(ws).await?;
        if ev["corr"].as_str() == Some(id) {
            return Ok(ev);
        }
    }
}

/// Opens a ready client session for `key`.
async fn session(realm: &str, key: &KeyPair) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(format!("{realm}/v1/client"), None, true),
    )
    .await
    .context("connect timed out")??;
    let wallet = key.public_hex();
    let (hello, text) = event(
        "session.hello",
        json!({"wallet": wallet, "client": "mtor-bench"}),
    );
    ws.send(Message::Text(text.into())).await?;
    let ch = answer(&mut ws, &hello).await?;
    let (Some(realm_id), Some(nonce)) = (
        ch["body"]["realm_id"].as_str(),
        ch["body"]["nonce"].as_str(),
    ) else {
        bail!("expected session.challenge, got {ch}");
    };
    let msg = identity::session_message(realm_id, nonce, &wallet);
    let (proof, text) = event(
        "session.proof",
        json!({"signature": key.sign_hex(msg.as_bytes())}),
    );
    ws.send(Message::Text(text.into())).await?;
    let ready = answer(&mut ws, &proof).await?;
    if ready["type"] != "session.ready" {
        bail!("expected session.ready, got {ready}");
    }
    Ok(ws)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 || args.rate.contains(&0) {
        bail!("--connections and every --rate must be positive");
    }
    let (sysop, spawned, realm) = match &args.realm {
        Some(url) => {
            let file = args
                .sysop_key_file
                .as_deref()
                .context("--realm needs --sysop-key-file to fund the bench wallets")?;
            (KeyPair::load(file)?, None, url.clone())
        }
        None => {
            let sysop = KeyPair::generate()?;
            let (spawned, url) = spawn_realm(args.workers, &sysop)?;
            eprintln!(
                "mtor-bench: started a reference realm at {url} with {} built-in workers",
                args.workers
            );
            (sysop, Some(spawned), url)
        }
    };

    // Fund one wallet per connection, generously: the bench measures dispatch, not admission
    // refusals for funds.
    let keys: Vec<KeyPair> = (0..args.connections)
        .map(|_| KeyPair::generate())
        .collect::<Result<_, _>>()?;
    let mut admin = session(&realm, &sysop).await?;
    for k in &keys {
        let (id, text) = event(
            "wallet.mint",
            json!({"wallet": k.public_hex(), "amount": 1_000_000_000_000u64, "idempotency_key": identity::new_id()}),
        );
        admin.send(Message::Text(text.into())).await?;
        let ev = answer(&mut admin, &id).await?;
        if ev["type"] != "wallet.minted" {
            bail!("minting failed: {ev}");
        }
    }
    let mut conns = Vec::with_capacity(keys.len());
    for k in &keys {
        conns.push(session(&realm, k).await?);
    }
    eprintln!("mtor-bench: {} sessions ready", conns.len());

    let mut steps = Vec::new();
    for &rate in &args.rate {
        let realm_pid = spawned.as_ref().map(|s| s.child.id());
        let (c, step) = step(conns, rate, &args, realm_pid).await?;
        conns = c;
        print_step(&step);
        steps.push(step);
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({"steps": steps}))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(admin);
    Ok(())
}

fn print_step(s: &Value) {
    let codes = s["codes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    println!(
        "rate {:>6}/s  achieved {:>8.0}/s  results {:>7}  rejected {:>5}  failed {:>3}  errors {:>3}  late-sends {:>6} {}\n  \
         end-to-end (corrected)  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms\n  \
         end-to-end (uncorrected) p50 {:>6.2} ms  p99 {:>7.2} ms;  ack p50 {:.2} ms  p99 {:.2} ms\n  \
         CPU per intent: realm {} us, generator {} us",
        s["target_rate"], s["achieved_rate"].as_f64().unwrap_or(0.0), s["results"], s["rejected"], s["failed"],
        s["errors"], s["late_sends"], codes,
        ms(&s["corrected"]["p50"]), ms(&s["corrected"]["p90"]), ms(&s["corrected"]["p99"]),
        ms(&s["corrected"]["p999"]), ms(&s["corrected"]["max"]),
        ms(&s["uncorrected"]["p50"]), ms(&s["uncorrected"]["p99"]),
        ms(&s["ack"]["p50"]), ms(&s["ack"]["p99"]),
        s["realm_cpu_us_per_intent"], s["generator_cpu_us_per_intent"],
    );
}

fn ms(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / 1000.0
}

fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "unit": "us",
    })
}

/// One measured step at `rate`: warm-up, then `duration_s` measured, then a drain of in-flight
/// intents. Returns the connections for the next step.
async fn step(
    conns: Vec<Ws>,
    rate: u64,
    args: &Args,
    realm_pid: Option<u32>,
) -> anyhow::Result<(Vec<Ws>, Value)> {
    let cpu_before = (
        cpu_seconds("self"),
        realm_pid.and_then(|p| cpu_seconds(&p.to_string())),
    );
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let n = conns.len() as u64;
    // Each connection sends every `interval`, offset so the aggregate is evenly spaced.
    let interval = Duration::from_nanos(1_000_000_000 * n / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs(args.warmup_s);
    let stop_at = measure_from + Duration::from_secs(args.duration_s);
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let offset = Duration::from_nanos(1_000_000_000 * i as u64 / rate);
        let stats = stats.clone();
        tasks.push(tokio::spawn(connection(
            ws,
            start + offset,
            interval,
            measure_from,
            stop_at,
            stats,
        )));
    }
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.context("a connection task panicked")??);
    }
    let s = stats.lock().await;
    let secs = args.duration_s as f64;
    // CPU per intent is what contention on a shared machine distorts least: report it beside
    // the rates (warm-up and drain included, over every intent sent in the step).
    let all_sent = (s.sent as f64 * (args.duration_s + args.warmup_s) as f64 / secs).max(1.0);
    let per_intent = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) => json!(((a - b) * 1e6 / all_sent).round()),
        _ => Value::Null,
    };
    let cpu_after = (
        cpu_seconds("self"),
        realm_pid.and_then(|p| cpu_seconds(&p.to_string())),
    );
    let step = json!({
        "target_rate": rate,
        "connections": n,
        "duration_s": args.duration_s,
        "sent": s.sent,
        "accepted": s.accepted,
        "rejected": s.rejected,
        "codes": s.codes,
        "results": s.results,
        "failed": s.failed,
        "errors": s.errors,
        "late_sends": s.late_sends,
        "achieved_rate": s.results as f64 / secs,
        "corrected": summary(&s.corrected),
        "uncorrected": summary(&s.uncorrected),
        "ack": summary(&s.ack),
        "generator_cpu_us_per_intent": per_intent(cpu_before.0, cpu_after.0),
        "realm_cpu_us_per_intent": per_intent(cpu_before.1, cpu_after.1),
    });
    Ok((back, step))
}

/// Drives one connection: sends on schedule, reads answers as they come, then drains.
async fn connection(
    mut ws: Ws,
    first: Instant,
    interval: Duration,
    measure_from: Instant,
    stop_at: Instant,
    stats: Arc<Mutex<Stats>>,
) -> anyhow::Result<Ws> {
    use std::collections::HashMap;
    // submit id -> (intended, actual, measured); intent id -> the same once accepted.
    let mut by_submit: HashMap<String, (Instant, Instant, bool)> = HashMap::new();
    let mut by_intent: HashMap<String, (Instant, Instant, bool)> = HashMap::new();
    let mut local = Stats::new()?;
    let mut next_send = first;
    let mut sending = true;
    let drain_deadline = stop_at + WAIT;
    loop {
        if !sending && by_submit.is_empty() && by_intent.is_empty() {
            break;
        }
        if Instant::now() > drain_deadline {
            bail!(
                "{} intents still unanswered 15 s after the step ended",
                by_submit.len() + by_intent.len()
            );
        }
        let wake = if sending { next_send } else { drain_deadline };
        tokio::select! {
            biased;
            msg = ws.next() => {
                let msg = msg.context("the realm closed a bench connection")??;
                let Message::Text(t) = msg else { continue };
                let ev: Value = serde_json::from_str(t.as_str()).context("non-JSON event")?;
                let now = Instant::now();
                match ev["type"].as_str() {
                    Some("intent.accepted") => {
                        let corr = ev["corr"].as_str().unwrap_or_default();
                        if let Some(entry) = by_submit.remove(corr) {
                            if entry.2 {
                                local.accepted += 1;
                                let _ = local.ack.record(micros(now - entry.1));
                            }
                            let intent = ev["body"]["intent_id"].as_str().unwrap_or_default().to_owned();
                            by_intent.insert(intent, entry);
                        }
                    }
                    Some("intent.rejected") | Some("error") => {
                        let corr = ev["corr"].as_str().unwrap_or_default();
                        if let Some(entry) = by_submit.remove(corr) {
                            if entry.2 {
                                if ev["type"] == "error" { local.errors += 1 } else { local.rejected += 1 }
                                let code = ev["body"]["code"].as_str().unwrap_or("?").to_owned();
                                *local.codes.entry(code).or_default() += 1;
                            }
                        }
                    }
                    Some(kind @ ("intent.result" | "intent.failed" | "intent.cancelled")) => {
                        let intent = ev["body"]["intent_id"].as_str().unwrap_or_default();
                        if let Some((intended, actual, measured)) = by_intent.remove(intent) {
                            if measured {
                                if kind == "intent.result" {
                                    local.results += 1;
                                    let _ = local.corrected.record(micros(now - intended));
                                    let _ = local.uncorrected.record(micros(now - actual));
                                } else {
                                    local.failed += 1;
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(wake.into()), if sending => {
                let intended = next_send;
                if intended >= stop_at {
                    sending = false;
                    continue;
                }
                let measured = intended >= measure_from;
                let (id, text) = event(
                    "intent.submit",
                    json!({"intent": "cert.probe", "input": {"nonce": identity::new_id()},
                           "max_cost": 1000, "idempotency_key": identity::new_id()}),
                );
                let actual = Instant::now();
                if measured {
                    local.sent += 1;
                    if actual > intended + Duration::from_millis(10) {
                        local.late_sends += 1;
                    }
                }
                by_submit.insert(id, (intended, actual, measured));
                ws.send(Message::Text(text.into())).await?;
                next_send += interval;
            }
        }
    }
    let mut s = stats.lock().await;
    s.corrected.add(&local.corrected)?;
    s.uncorrected.add(&local.uncorrected)?;
    s.ack.add(&local.ack)?;
    s.sent += local.sent;
    s.accepted += local.accepted;
    s.rejected += local.rejected;
    for (code, n) in local.codes {
        *s.codes.entry(code).or_default() += n;
    }
    s.results += local.results;
    s.failed += local.failed;
    s.errors += local.errors;
    s.late_sends += local.late_sends;
    Ok(ws)
}

/// User plus system CPU seconds of a process (`self` or a pid) from `/proc`, where there is one.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name; Linux
    // reports them in USER_HZ, which is 100 on every Linux ABI.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

//! Crash test of the realm process: under load, `mtor-realm up` is killed with SIGKILL at random
//! moments (at least 20 times) and restarted on the same data directory. After every restart,
//! through the realm's public interfaces only (REST exports, and `intent.fetch` / `intent.submit`
//! / `wallet.mint` on NEW sessions), the test checks that:
//!
//! - every acknowledged intent is known and has its reservation in the ledger (acknowledged means
//!   durable), and is completed, still pending, or failed/cancelled with its reservation released;
//! - a submission left unanswered by the crash, sent again with the same idempotency key, binds
//!   to at most one intent and one reservation;
//! - the ledger balances: zero-sum entries, no account but issuance ever negative, the sum of all
//!   accounts equals the sum of mints equals what the sysop was told it minted, and the holds
//!   equal the unsettled reservations;
//! - the audit chain verifies, and the history committed before a crash is unchanged after it.
//!
//! At the end the realm drains, and every acknowledged intent must have reached exactly one
//! terminal state: captured once, or released once, with money conserved.
//!
//! The kill moments and the load's choices come from a seeded PRNG. The seed is printed;
//! `MTOR_CRASH_SEED=<n>` reruns that schedule and `MTOR_CRASH_KILLS=<n>` changes the number of
//! kills (20 by default, the minimum).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{envelope, rest, Conn, TOKEN};
use futures_util::{SinkExt, StreamExt};
use mtor_realm::identity::KeyPair;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

/// The issue asks for at least 20 kill/restart cycles.
const DEFAULT_KILLS: usize = 20;
const DEFAULT_SEED: u64 = 0x4d54_4f52_2f31; // "MTOR/1"
const WALLETS: usize = 3;
const CONNS_PER_WALLET: usize = 2;
/// Submissions each load connection keeps outstanding.
const WINDOW: usize = 4;
/// Upper bound of a probe's `work_ms`: long enough that admission outruns the built-in workers,
/// so queues are deep (up to the per-wallet limit) when the kill lands, short enough to drain in
/// a few seconds.
const WORK_MS: u64 = 400;
const BUILTIN_WORKERS: usize = 2;
const INITIAL_MINT: u64 = 1_000_000_000;
/// The price of one `cert.probe` (manifest: 1,000 micro per task).
const PROBE_PRICE: i64 = 1_000;
/// Fetches per session: below the connection's burst (200), so no fetch is rate-limited.
const FETCH_CHUNK: usize = 100;
const ISSUANCE: &str = "realm:issuance";
const TERMINAL: [&str; 4] = ["succeeded", "failed", "dead", "cancelled"];

/// SplitMix64: small, seedable, and good enough to pick kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One `mtor-realm up` process in its own process group, so that signals meant for the test
/// (Ctrl-C) do not reach it and our SIGKILL reaches nothing else. Killed on drop.
struct Realm {
    child: Child,
    addr: String,
}

impl Realm {
    /// Starts the realm on a port the kernel picks (port 0 cannot race with another process for
    /// the port between restarts) and waits until `/v1/health` reports it ready.
    async fn start(data: &Path, sysop: &KeyPair, log: &Path, n: u64) -> Self {
        let mut logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the realm log");
        writeln!(logf, "===== start {n} =====").expect("write the realm log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_mtor-realm"))
            .args(["up", "--listen", "127.0.0.1:0"])
            .args(["--workers", &BUILTIN_WORKERS.to_string()])
            .arg("--data")
            .arg(data)
            .args(["--enrol-token", TOKEN, "--sysop-key", &sysop.public_hex()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logf))
            .process_group(0)
            .spawn()
            .expect("spawn mtor-realm up");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Reads the banner for the address, then keeps draining stdout so the realm never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_owned());
                    }
                }
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "restart {n} on the same data dir failed ({status:?}); realm log tail:\n{}",
                    log_tail(log)
                );
            }
        };
        let realm = Self { child, addr };
        realm.wait_ready(n, log).await;
        realm
    }

    fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Polls `/v1/health` until the realm is `ok` with all its built-in workers healthy.
    async fn wait_ready(&self, n: u64, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, h) = rest(&self.addr, "/v1/health", None).await;
            let healthy = h["workers"]
                .as_array()
                .map_or(0, |w| w.iter().filter(|w| w["state"] == "healthy").count());
            if status == 200 && h["status"] == "ok" && healthy >= BUILTIN_WORKERS {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "realm start {n} not ready within 30 s: {status} {h}; log tail:\n{}",
                log_tail(log)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends SIGKILL and reaps the process; asserts it really died of the signal (a realm that
    /// had already exited on its own is a crash of its own, and a failure).
    async fn kill9(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"));
        kill(pid, Signal::SIGKILL).expect("SIGKILL the realm");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the realm") {
                assert_eq!(
                    status.signal(),
                    Some(Signal::SIGKILL as i32),
                    "the realm exited before the kill: {status}"
                );
                return;
            }
            assert!(Instant::now() < deadline, "the killed realm was not reaped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Realm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The client's view of one submission, keyed by its idempotency key.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// No answer arrived before the kill: the realm may or may not have admitted it.
    Unanswered,
    Accepted {
        intent_id: String,
        reserved: u64,
    },
    /// `intent.rejected`, or an `error` answering the submit: nothing may be reserved.
    Rejected(String),
}

#[derive(Debug, Clone)]
struct Sub {
    wallet: usize,
    body: Value,
    answer: Answer,
}

#[derive(Debug, Clone)]
struct Mint {
    wallet: usize,
    amount: u64,
    acked: bool,
}

/// What one load connection saw.
#[derive(Default)]
struct LoadOutcome {
    subs: Vec<(String, Sub)>,
    /// Terminal events received live (`intent.result`, `.failed`, `.cancelled`).
    terminals: Vec<Value>,
}

/// Everything the clients know, accumulated over the run: the model the realm is checked against.
#[derive(Default)]
struct Model {
    subs: HashMap<String, Sub>,
    mints: HashMap<String, Mint>,
    /// Acknowledged intent id → idempotency key.
    intents: HashMap<String, String>,
    /// Terminal events received live, by intent id.
    live_terminal: HashMap<String, Value>,
    /// Last fetched status body, by intent id.
    state: HashMap<String, Value>,
    starts: u64,
    /// The audit head seen at the previous check: (seq, hash).
    audit_head: Option<(u64, String)>,
    /// Acknowledged intents found still pending right after a restart (work the crash cut).
    pending_after_restart: usize,
    /// Acknowledged intents admitted before a kill and ended after a restart (from the audit).
    crossed: usize,
    resubmitted: usize,
}

impl Model {
    fn record_terminal(&mut self, ev: Value) {
        let id = ev["body"]["intent_id"]
            .as_str()
            .expect("terminal event names its intent")
            .to_owned();
        // Catches a second terminal event for one intent on the session that submitted it:
        // a double settlement, or a redelivery after a re-dispatch.
        if let Some(first) = self.live_terminal.get(&id) {
            panic!("two terminal events for intent {id}: {first} then {ev}");
        }
        self.live_terminal.insert(id, ev);
    }
}

/// One load connection: keeps [`WINDOW`] `cert.probe` submissions outstanding, cancels some of
/// the accepted ones, and runs until the realm is killed under it.
async fn submitter(mut c: Conn, wallet: usize, tag: String, seed: u64) -> LoadOutcome {
    let mut rng = Rng(seed);
    let mut out = LoadOutcome::default();
    // Submit frame id → index in out.subs.
    let mut outstanding: HashMap<String, usize> = HashMap::new();
    // Only a safety net: the kill comes after at most 400 ms.
    let hard_stop = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0u64;
    'run: loop {
        while outstanding.len() < WINDOW {
            n += 1;
            let key = format!("{tag}-{n}");
            let mut input = json!({"nonce": key, "work_ms": rng.below(WORK_MS)});
            if rng.below(10) == 0 {
                input["fail"] = json!(true);
            }
            let max_cost = PROBE_PRICE as u64 + rng.below(2_001);
            let body = json!({"intent": "cert.probe", "input": input, "max_cost": max_cost,
                              "idempotency_key": key});
            let (id, text) = envelope("intent.submit", body.clone());
            out.subs.push((
                key,
                Sub {
                    wallet,
                    body,
                    answer: Answer::Unanswered,
                },
            ));
            outstanding.insert(id, out.subs.len() - 1);
            let sent = tokio::time::timeout(
                Duration::from_secs(5),
                c.ws.send(Message::Text(text.into())),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                break 'run;
            }
        }
        let msg = match tokio::time::timeout_at(hard_stop, c.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            Ok(Some(Ok(_))) => continue,
        };
        let ev: Value = serde_json::from_str(msg.as_str()).expect("the realm sent non-JSON");
        let corr = ev["corr"].as_str().unwrap_or_default().to_owned();
        match ev["type"].as_str().unwrap_or_default() {
            "intent.accepted" => {
                let Some(i) = outstanding.remove(&corr) else {
                    continue;
                };
                let intent_id = ev["body"]["intent_id"]
                    .as_str()
                    .expect("intent.accepted names the intent")
                    .to_owned();
                let reserved = ev["body"]["reserved"].as_u64().expect("reserved");
                out.subs[i].1.answer = Answer::Accepted {
                    intent_id: intent_id.clone(),
                    reserved,
                };
                if rng.below(8) == 0 {
                    let (_, text) = envelope("intent.cancel", json!({"intent_id": intent_id}));
                    let sent = tokio::time::timeout(
                        Duration::from_secs(5),
                        c.ws.send(Message::Text(text.into())),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
            }
            kind @ ("intent.rejected" | "error") => {
                let Some(i) = outstanding.remove(&corr) else {
                    continue;
                };
                let code = ev["body"]["code"].as_str().unwrap_or("?").to_owned();
                out.subs[i].1.answer = Answer::Rejected(format!("{kind} {code}"));
                // Back off a little on a limit instead of spinning on refusals.
                if let Some(ms) = ev["body"]["retry_after_ms"].as_u64() {
                    tokio::time::sleep(Duration::from_millis(ms.min(25))).await;
                }
            }
            "intent.result" | "intent.failed" | "intent.cancelled" => out.terminals.push(ev),
            _ => {}
        }
    }
    out
}

/// Mints small amounts during the load, one at a time, so that mints are cut by crashes too.
async fn minter(mut c: Conn, wallets: Vec<String>, tag: String, seed: u64) -> Vec<(String, Mint)> {
    let mut rng = Rng(seed);
    let mut out: Vec<(String, Mint)> = Vec::new();
    let hard_stop = tokio::time::Instant::now() + Duration::from_secs(15);
    for n in 1.. {
        let wallet = rng.below(wallets.len() as u64) as usize;
        let amount = 1 + rng.below(1_000);
        let key = format!("{tag}-{n}");
        let (id, text) = envelope(
            "wallet.mint",
            json!({"wallet": wallets[wallet], "amount": amount, "idempotency_key": key}),
        );
        out.push((
            key,
            Mint {
                wallet,
                amount,
                acked: false,
            },
        ));
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            c.ws.send(Message::Text(text.into())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
        loop {
            let msg = match tokio::time::timeout_at(hard_stop, c.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return out
                }
                Ok(Some(Ok(_))) => continue,
            };
            let ev: Value = serde_json::from_str(msg.as_str()).expect("the realm sent non-JSON");
            if ev["corr"] == id.as_str() {
                assert_eq!(ev["type"], "wallet.minted", "mint refused: {ev}");
                if let Some(last) = out.last_mut() {
                    last.1.acked = true;
                }
                break;
            }
        }
    }
    out
}

/// Re-raises a spawned task's panic with its own message.
async fn join<T>(h: tokio::task::JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(Duration::from_secs(30), h).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what} did not finish within 30 s"),
    }
}

/// Sends `intent.fetch` for `ids` of one wallet on a new session; returns the status bodies.
async fn fetch_chunk(ws: String, key: KeyPair, ids: Vec<String>) -> Vec<(String, Value)> {
    let mut c = Conn::client(&ws, &key).await;
    let mut asked: HashMap<String, String> = HashMap::new();
    for id in ids {
        let fid = c.send("intent.fetch", json!({"intent_id": id})).await;
        asked.insert(fid, id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while !asked.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no answer to intent.fetch of {:?} within 20 s",
            asked.values().collect::<Vec<_>>()
        );
        // `next` schema-checks every event, so a malformed recovered status fails here.
        let ev = c.next(left.as_secs().max(1)).await;
        let Some(id) = ev["corr"].as_str().and_then(|corr| asked.remove(corr)) else {
            continue;
        };
        // Catches an acknowledged intent that the realm no longer knows after a crash.
        assert_eq!(
            ev["type"], "intent.status",
            "intent.fetch of acknowledged intent {id} on a new session after a restart: {ev}"
        );
        assert_eq!(ev["body"]["intent_id"], id.as_str(), "{ev}");
        out.push((id, ev["body"].clone()));
    }
    out
}

/// Fetches the status of every `(wallet, intent id)`, on new sessions, chunked under the rate limit.
async fn fetch_states(
    ws: &str,
    wallets: &[KeyPair],
    ids: &[(usize, String)],
) -> HashMap<String, Value> {
    let mut tasks = Vec::new();
    for (w, key) in wallets.iter().enumerate() {
        let mine: Vec<String> = ids
            .iter()
            .filter(|(i, _)| *i == w)
            .map(|(_, id)| id.clone())
            .collect();
        for chunk in mine.chunks(FETCH_CHUNK) {
            tasks.push(tokio::spawn(fetch_chunk(
                ws.to_owned(),
                key.clone(),
                chunk.to_vec(),
            )));
        }
    }
    let mut out = HashMap::new();
    for t in tasks {
        out.extend(join(t, "fetch").await);
    }
    out
}

/// Sends the unanswered submissions again with the same idempotency key and body, as a client
/// that lost its connection to a crash would, and records the answers.
async fn resubmit(m: &mut Model, ws: &str, wallets: &[KeyPair]) {
    for (w, key) in wallets.iter().enumerate() {
        let mut todo: Vec<String> = m
            .subs
            .iter()
            .filter(|(_, s)| s.wallet == w && s.answer == Answer::Unanswered)
            .map(|(k, _)| k.clone())
            .collect();
        if todo.is_empty() {
            continue;
        }
        todo.sort();
        let mut c = Conn::client(ws, key).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(k) = todo.pop() {
            let body = m.subs[&k].body.clone();
            let fid = c.send("intent.submit", body).await;
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "resubmissions did not finish in 20 s");
            let ev = c.answer(&fid, left.as_secs().max(1)).await;
            let code = ev["body"]["code"].as_str().unwrap_or_default().to_owned();
            let answer = match ev["type"].as_str().unwrap_or_default() {
                "intent.accepted" => Answer::Accepted {
                    intent_id: ev["body"]["intent_id"]
                        .as_str()
                        .expect("intent id")
                        .to_owned(),
                    reserved: ev["body"]["reserved"].as_u64().expect("reserved"),
                },
                // A limit: retry the same key after the advised delay.
                _ if matches!(code.as_str(), "RATE_LIMITED" | "QUEUE_FULL") => {
                    let ms = ev["body"]["retry_after_ms"].as_u64().unwrap_or(50);
                    tokio::time::sleep(Duration::from_millis(ms.clamp(5, 500))).await;
                    todo.push(k);
                    continue;
                }
                kind => Answer::Rejected(format!("{kind} {code}")),
            };
            m.resubmitted += 1;
            if let Answer::Accepted { intent_id, .. } = &answer {
                m.intents.insert(intent_id.clone(), k.clone());
            }
            if let Some(s) = m.subs.get_mut(&k) {
                s.answer = answer;
            }
        }
    }
}

/// Sends the unanswered mints again with the same idempotency key.
async fn remint(m: &mut Model, ws: &str, sysop: &KeyPair, wallets: &[KeyPair]) {
    let todo: Vec<String> = m
        .mints
        .iter()
        .filter(|(_, x)| !x.acked)
        .map(|(k, _)| k.clone())
        .collect();
    if todo.is_empty() {
        return;
    }
    let mut c = Conn::client(ws, sysop).await;
    for k in todo {
        let mint = m.mints[&k].clone();
        let id = c
            .send(
                "wallet.mint",
                json!({"wallet": wallets[mint.wallet].public_hex(), "amount": mint.amount,
                       "idempotency_key": k}),
            )
            .await;
        let ev = c.answer(&id, 15).await;
        assert_eq!(ev["type"], "wallet.minted", "mint {k} sent again: {ev}");
        if let Some(x) = m.mints.get_mut(&k) {
            x.acked = true;
        }
    }
}

/// Reads every page of a paged export (`/v1/ledger` or `/v1/audit`) after `after`.
async fn export(addr: &str, path: &str, field: &str, after: u64, sysop: &KeyPair) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = after;
    for _ in 0..10_000 {
        let (status, page) = rest(
            addr,
            &format!("{path}?after={after}&limit=1000"),
            Some(sysop),
        )
        .await;
        assert_eq!(status, 200, "{path}: {page}");
        out.extend(
            page[field]
                .as_array()
                .unwrap_or_else(|| panic!("{path} has no {field}: {page}"))
                .iter()
                .cloned(),
        );
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
    panic!("{path}: more than 10,000 pages");
}

/// One intent's money as the ledger export tells it.
#[derive(Debug, Default)]
struct Money {
    wallet: String,
    key: String,
    reserved: i64,
    reserves: u32,
    captured: i64,
    captures: u32,
    released: i64,
    releases: u32,
}

impl Money {
    fn held(&self) -> i64 {
        self.reserved - self.captured - self.released
    }
}

/// The ledger replayed from its export.
#[derive(Debug, Default)]
struct LedgerView {
    balances: BTreeMap<String, i64>,
    minted: i64,
    /// Mint idempotency key → (wallet account, amount), per entry.
    mints: HashMap<String, Vec<(String, i64)>>,
    intents: HashMap<String, Money>,
    /// (wallet, idempotency key) → intents reserved under it.
    by_key: HashMap<(String, String), Vec<String>>,
}

fn postings(e: &Value) -> Vec<(String, i64)> {
    e["postings"]
        .as_array()
        .unwrap_or_else(|| panic!("entry without postings: {e}"))
        .iter()
        .map(|p| {
            (
                p["account"].as_str().expect("account").to_owned(),
                p["amount"].as_i64().expect("amount"),
            )
        })
        .collect()
}

/// Replays the export and asserts the ledger's own invariants; each assertion names the defect
/// it catches.
fn analyse_ledger(entries: &[Value], fee_bps: i64) -> LedgerView {
    let mut v = LedgerView::default();
    for (i, e) in entries.iter().enumerate() {
        let seq = e["seq"].as_u64().expect("seq");
        // A gap: a committed entry vanished, or a torn write survived recovery.
        assert_eq!(seq, i as u64 + 1, "ledger seq gap at {e}");
        let ps = postings(e);
        // Double entry: money created or destroyed inside one entry.
        assert_eq!(
            ps.iter().map(|p| p.1).sum::<i64>(),
            0,
            "entry does not balance: {e}"
        );
        for (account, amount) in &ps {
            let b = v.balances.entry(account.clone()).or_default();
            *b += amount;
            // An overdraft: funds reserved or spent twice.
            assert!(
                *b >= 0 || account == ISSUANCE,
                "{account} is negative ({b}) after entry {seq}"
            );
        }
        let intent = e["intent_id"].as_str().unwrap_or_default().to_owned();
        let key = e["idempotency_key"].as_str().unwrap_or_default().to_owned();
        let amount_on = |prefix: &str| -> (String, i64) {
            ps.iter()
                .find(|(a, _)| a.starts_with(prefix))
                .cloned()
                .unwrap_or_else(|| panic!("no {prefix} posting in {e}"))
        };
        match e["kind"].as_str().unwrap_or_default() {
            "mint" => {
                let (_, issued) = amount_on(ISSUANCE);
                let (wallet, amount) = amount_on("wallet:");
                assert_eq!((ps.len(), -issued), (2, amount), "malformed mint {e}");
                v.minted += amount;
                v.mints.entry(key).or_default().push((wallet, amount));
            }
            "reserve" => {
                let (wallet, out) = amount_on("wallet:");
                let (hold, held) = amount_on("hold:");
                let w = wallet.trim_start_matches("wallet:").to_owned();
                assert_eq!(
                    (ps.len(), -out, hold.as_str()),
                    (2, held, format!("hold:{w}").as_str()),
                    "malformed reserve {e}"
                );
                let m = v.intents.entry(intent.clone()).or_default();
                m.reserves += 1;
                m.reserved = held;
                m.wallet = w.clone();
                m.key = key.clone();
                v.by_key.entry((w, key)).or_default().push(intent);
            }
            "capture" => {
                let (hold, taken) = amount_on("hold:");
                let m = v
                    .intents
                    .get_mut(&intent)
                    .unwrap_or_else(|| panic!("capture without a reservation: {e}"));
                assert_eq!(
                    hold,
                    format!("hold:{}", m.wallet),
                    "capture off another hold"
                );
                let fee = ps
                    .iter()
                    .find(|(a, _)| a == "realm:fees")
                    .map_or(0, |p| p.1);
                // The fee split: floor(cost × fee_bps / 10000), the rest to one worker, nothing
                // to anyone else (zero-sum alone would let a capture pay a wallet).
                assert_eq!(fee, -taken * fee_bps / 10_000, "wrong fee in {e}");
                let (_, earned) = amount_on("worker:");
                let shape = ps.len() == 2 + usize::from(fee > 0);
                assert!(shape && earned == -taken - fee, "malformed capture {e}");
                m.captured += -taken;
                m.captures += 1;
            }
            "release" => {
                let (hold, back) = amount_on("hold:");
                let (wallet, got) = amount_on("wallet:");
                let m = v
                    .intents
                    .get_mut(&intent)
                    .unwrap_or_else(|| panic!("release without a reservation: {e}"));
                assert_eq!(
                    (hold, wallet, got),
                    (
                        format!("hold:{}", m.wallet),
                        format!("wallet:{}", m.wallet),
                        -back
                    ),
                    "malformed release {e}"
                );
                m.released += got;
                m.releases += 1;
            }
            other => panic!("unexpected ledger entry kind {other:?}: {e}"),
        }
    }
    for (id, m) in &v.intents {
        // Settled twice (two captures / releases): the exactly-once settlement broke.
        assert!(
            m.reserves == 1 && m.captures <= 1 && m.releases <= 1,
            "intent {id} moved money twice: {m:?}"
        );
        // Half a settlement (a capture without its release) survived a crash: the settlement
        // was not one transaction.
        let held = m.held();
        assert!(
            held == 0 || held == m.reserved,
            "intent {id} is partly settled: {m:?}"
        );
        assert!(
            m.captures == 0 || m.captured == PROBE_PRICE,
            "intent {id} captured {} instead of the price {PROBE_PRICE}",
            m.captured
        );
    }
    for ((wallet, key), ids) in &v.by_key {
        // One idempotency key reserved twice: the binding was lost (e.g. in a crash).
        assert_eq!(ids.len(), 1, "key {key} of {wallet} reserved {ids:?}");
    }
    // Every hold account equals the unsettled reservations of its wallet: no money stuck on
    // hold for an intent that was settled, none missing for one that is not.
    let mut holds: BTreeMap<String, i64> = BTreeMap::new();
    for m in v.intents.values() {
        *holds.entry(format!("hold:{}", m.wallet)).or_default() += m.held();
    }
    for (account, balance) in &v.balances {
        if account.starts_with("hold:") {
            assert_eq!(
                *balance,
                holds.get(account).copied().unwrap_or(0),
                "{account} does not equal its unsettled reservations"
            );
        }
    }
    // Conservation: the sum of all accounts equals the sum of the mints.
    let total: i64 = v
        .balances
        .iter()
        .filter(|(a, _)| *a != ISSUANCE)
        .map(|(_, b)| *b)
        .sum();
    assert_eq!(total, v.minted, "sum of accounts is not the sum of mints");
    assert_eq!(
        -v.balances.get(ISSUANCE).copied().unwrap_or(0),
        v.minted,
        "issuance does not mirror the mints"
    );
    v
}

fn is_terminal(status: &Value) -> bool {
    TERMINAL.contains(&status["state"].as_str().unwrap_or_default())
}

/// Checks a terminal status against the ledger: succeeded was captured once at its cost, the
/// other terminal states were released in full.
fn check_settled(id: &str, status: &Value, money: &Money) {
    match status["state"].as_str().unwrap_or_default() {
        "succeeded" => assert!(
            money.captures == 1
                && status["cost"].as_i64() == Some(money.captured)
                && money.held() == 0,
            "intent {id} succeeded but the ledger shows {money:?}: {status}"
        ),
        "failed" | "dead" | "cancelled" => assert!(
            money.captures == 0 && money.releases == 1 && money.released == money.reserved,
            "intent {id} ended {} but its reservation was not released: {money:?}",
            status["state"]
        ),
        _ => {}
    }
}

/// Checks the ledger against what the clients were told.
fn check_model(m: &Model, v: &LedgerView, wallets: &[KeyPair], fresh: &HashMap<String, Value>) {
    // Every mint the sysop was told about is in the ledger once, and nothing else is: a lost
    // acknowledged mint, or a mint applied twice for one key.
    let told: i64 = m
        .mints
        .values()
        .map(|x| i64::try_from(x.amount).expect("amount"))
        .sum();
    assert_eq!(v.minted, told, "minted in the ledger != minted as told");
    for (k, x) in &m.mints {
        let entries = v.mints.get(k).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            entries,
            [(
                format!("wallet:{}", wallets[x.wallet].public_hex()),
                i64::try_from(x.amount).expect("amount")
            )],
            "mint {k}"
        );
    }
    let mut claimed: HashSet<&str> = HashSet::new();
    for (k, s) in &m.subs {
        let wallet = wallets[s.wallet].public_hex();
        let reserved = v.by_key.get(&(wallet, k.clone()));
        match &s.answer {
            Answer::Accepted {
                intent_id,
                reserved: amount,
            } => {
                // Acknowledged but not durable: the reservation is gone after the crash (or
                // a resubmission bound the key to another intent).
                assert_eq!(
                    reserved.map(Vec::as_slice),
                    Some(&[intent_id.clone()][..]),
                    "acknowledged intent {intent_id} (key {k}) has no reservation of its own"
                );
                let money = &v.intents[intent_id];
                assert_eq!(
                    money.reserved,
                    i64::try_from(*amount).expect("amount"),
                    "{intent_id}"
                );
                claimed.insert(intent_id);
            }
            // Money held for a submission that was refused.
            Answer::Rejected(why) => {
                assert!(
                    reserved.is_none(),
                    "rejected ({why}) key {k} holds {reserved:?}"
                )
            }
            Answer::Unanswered => panic!("submission {k} still unanswered after resubmission"),
        }
    }
    // A reservation no client was told about (resubmissions answered every open key).
    for id in v.intents.keys() {
        assert!(
            claimed.contains(id.as_str()),
            "reservation {id} belongs to no acknowledged intent"
        );
    }
    for (id, status) in fresh {
        let money = &v.intents[id];
        assert_eq!(
            status["reserved"].as_i64(),
            Some(money.reserved),
            "{status}"
        );
        check_settled(id, status, money);
    }
    // A terminal event went out only after its settlement committed, so the crash cannot undo
    // it: the ledger shows the settlement, and the fetched state agrees with the event.
    for (id, ev) in &m.live_terminal {
        let money = v
            .intents
            .get(id)
            .unwrap_or_else(|| panic!("terminal event for unknown intent: {ev}"));
        let settled = match ev["type"].as_str().unwrap_or_default() {
            "intent.result" => {
                money.captures == 1 && ev["body"]["cost"].as_i64() == Some(money.captured)
            }
            _ => money.captures == 0 && money.releases == 1,
        };
        assert!(settled, "a client saw {ev} but the ledger shows {money:?}");
        if let Some(status) = m.state.get(id) {
            let expected: &[&str] = match ev["type"].as_str().unwrap_or_default() {
                "intent.result" => &["succeeded"],
                "intent.failed" => &["failed", "dead"],
                _ => &["cancelled"],
            };
            assert!(
                expected.contains(&status["state"].as_str().unwrap_or_default()),
                "a client saw {ev} but the realm now says {status}"
            );
        }
    }
}

fn record_hash(r: &Value) -> String {
    let mut fields = r.as_object().expect("record is an object").clone();
    fields.remove("hash");
    let canonical = serde_jcs::to_vec(&Value::Object(fields)).expect("canonical JSON");
    hex::encode(Sha256::digest(&canonical))
}

/// Verifies the audit chain independently of the realm's code. Incremental after the first
/// check: the previous head must be unchanged (history committed before the crash was neither
/// rewritten nor cut off) and every newer record must chain onto it. `full` verifies from seq 1.
async fn check_audit(m: &mut Model, addr: &str, sysop: &KeyPair, full: bool) -> Vec<Value> {
    let prev = m.audit_head.clone();
    let after = match (&prev, full) {
        (Some((seq, _)), false) => seq - 1,
        _ => 0,
    };
    let records = export(addr, "/v1/audit", "records", after, sysop).await;
    let mut head: Option<(u64, String)> = None;
    for r in &records {
        let seq = r["seq"].as_u64().expect("seq");
        let hash = r["hash"].as_str().expect("hash").to_owned();
        // Tampering or a torn record: the stored hash is not the hash of the content.
        assert_eq!(
            record_hash(r),
            hash,
            "audit record {seq} does not hash: {r}"
        );
        match &head {
            None if after == 0 => {
                assert_eq!(seq, 1, "the audit log does not start at seq 1");
                assert_eq!(r["prev_hash"], "0".repeat(64), "genesis prev_hash");
            }
            // The first record of an incremental check is the previous head itself.
            None => {}
            Some((pseq, phash)) => {
                assert_eq!(seq, pseq + 1, "audit seq gap after {pseq}");
                assert_eq!(
                    r["prev_hash"],
                    phash.as_str(),
                    "audit chain broken at {seq}"
                );
            }
        }
        if let Some((pseq, phash)) = &prev {
            if seq == *pseq {
                assert_eq!(
                    &hash, phash,
                    "audit record {seq} changed across the crash (it was exported before)"
                );
            }
        }
        head = Some((seq, hash));
    }
    let head = head.expect("the audit log is empty");
    if let Some((pseq, _)) = &prev {
        // The log was cut off below what an earlier export showed.
        assert!(
            head.0 >= *pseq,
            "audit log shrank from {pseq} to {}",
            head.0
        );
    }
    m.audit_head = Some(head);
    records
}

/// Waits (poll with a deadline) until the realm has nothing queued or running.
async fn wait_drained(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, h) = rest(addr, "/v1/health", None).await;
        if h["queue"]["depth"] == 0 && h["queue"]["running"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the realm did not drain: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Ctx {
    sysop: KeyPair,
    wallets: Vec<KeyPair>,
    fee_bps: i64,
}

/// The checks after a restart. `last` adds the end-of-run checks (drained, all terminal,
/// exactly-once audit records, REST balances).
async fn check_realm(m: &mut Model, realm: &Realm, ctx: &Ctx, last: bool) {
    let ws = realm.ws();
    // A client that lost its answer to the crash sends again with the same key.
    resubmit(m, &ws, &ctx.wallets).await;
    remint(m, &ws, &ctx.sysop, &ctx.wallets).await;
    if last {
        wait_drained(&realm.addr).await;
    }
    // Fetch before the ledger export: a terminal status is then already in the export.
    let mut fresh: HashMap<String, Value> = HashMap::new();
    let mut ask: Vec<(usize, String)> = m
        .intents
        .iter()
        .filter(|(id, _)| last || !m.state.get(*id).is_some_and(is_terminal))
        .map(|(id, k)| (m.subs[k].wallet, id.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first = true;
    loop {
        let got = fetch_states(&ws, &ctx.wallets, &ask).await;
        if first {
            m.pending_after_restart += got.values().filter(|s| !is_terminal(s)).count();
            first = false;
        }
        for (id, status) in got {
            if let Some(before) = m.state.get(&id).filter(|s| is_terminal(s)) {
                // A terminal state must never change, in particular not back to pending.
                assert_eq!(
                    (&before["state"], &before["cost"]),
                    (&status["state"], &status["cost"]),
                    "intent {id} changed after it ended"
                );
            }
            m.state.insert(id.clone(), status.clone());
            fresh.insert(id, status);
        }
        if !last {
            break;
        }
        // At the end every acknowledged intent must reach a terminal state; the last few may
        // still be committing their settlement, so poll them with a deadline.
        ask.retain(|(_, id)| !fresh.get(id).is_some_and(is_terminal));
        if ask.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged intents never ended: {:?}",
            ask.iter()
                .map(|(_, id)| &fresh[id])
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entries = export(&realm.addr, "/v1/ledger", "entries", 0, &ctx.sysop).await;
    let view = analyse_ledger(&entries, ctx.fee_bps);
    check_model(m, &view, &ctx.wallets, &fresh);
    let records = check_audit(m, &realm.addr, &ctx.sysop, last).await;
    if !last {
        return;
    }

    // Drained: nothing on hold, every reservation settled.
    for (id, money) in &view.intents {
        assert_eq!(
            money.held(),
            0,
            "intent {id} still holds money after the drain"
        );
    }
    // Exactly one terminal audit record per intent, of the kind its state says, and one
    // admission record: a settlement audited twice, or a crash that lost the record of one.
    let mut terminal_records: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut admitted: HashMap<&str, usize> = HashMap::new();
    // Audit seqs: of each intent's admission and end, and of every (re)start.
    let mut spans: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut starts: Vec<u64> = Vec::new();
    for r in &records {
        let subject = r["subject"].as_str().unwrap_or_default();
        let seq = r["seq"].as_u64().unwrap_or_default();
        match r["kind"].as_str().unwrap_or_default() {
            k @ ("intent.completed"
            | "intent.failed"
            | "intent.dead_lettered"
            | "intent.cancelled") => {
                terminal_records.entry(subject).or_default().push(k);
                spans.entry(subject).or_default().1 = seq;
            }
            "intent.admitted" => {
                *admitted.entry(subject).or_default() += 1;
                spans.entry(subject).or_default().0 = seq;
            }
            "realm.started" => starts.push(seq),
            _ => {}
        }
    }
    assert_eq!(
        starts.len() as u64,
        m.starts,
        "realm.started records != starts"
    );
    // Intents admitted before a kill and ended after the restart: work the crashes really cut.
    m.crossed = spans
        .values()
        .filter(|(a, t)| starts.iter().any(|s| a < s && s < t))
        .count();
    for id in m.intents.keys() {
        let expected = match m.state[id]["state"].as_str().unwrap_or_default() {
            "succeeded" => "intent.completed",
            "failed" => "intent.failed",
            "dead" => "intent.dead_lettered",
            _ => "intent.cancelled",
        };
        assert_eq!(
            terminal_records.get(id.as_str()).map(Vec::as_slice),
            Some(&[expected][..]),
            "terminal audit records of {id} ({})",
            m.state[id]
        );
        assert_eq!(
            admitted.get(id.as_str()),
            Some(&1),
            "admission records of {id}"
        );
    }
    // The REST balance of each wallet is the one the ledger export derives.
    for key in &ctx.wallets {
        let w = key.public_hex();
        let (status, bal) = rest(&realm.addr, &format!("/v1/wallets/{w}/balance"), Some(key)).await;
        assert_eq!(status, 200, "{bal}");
        let ledger = |a: String| view.balances.get(&a).copied().unwrap_or(0);
        assert_eq!(
            (bal["available"].as_i64(), bal["held"].as_i64()),
            (Some(ledger(format!("wallet:{w}"))), Some(0)),
            "balance of {w}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_intent_and_no_money() {
    let seed = env_u64("MTOR_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let kills = env_u64("MTOR_CRASH_KILLS").map_or(DEFAULT_KILLS, |n| n as usize);
    println!(
        "crash_sigkill: seed {seed}, {kills} kills; reproduce with MTOR_CRASH_SEED={seed} \
         cargo test -p mtor-realm --test crash_sigkill -- --nocapture"
    );
    let t0 = Instant::now();
    let dir = common::temp_dir("crash-sigkill");
    let data = dir.join("data");
    let log: PathBuf = dir.join("realm.log");
    println!(
        "crash_sigkill: data {}, realm log {}",
        data.display(),
        log.display()
    );
    let mut rng = Rng(seed);
    let sysop = KeyPair::generate().expect("key");
    let wallets: Vec<KeyPair> = (0..WALLETS)
        .map(|_| KeyPair::generate().expect("key"))
        .collect();
    let mut m = Model::default();

    let mut realm = Realm::start(&data, &sysop, &log, 1).await;
    m.starts = 1;
    let (_, manifest) = rest(&realm.addr, "/v1/manifest", None).await;
    let fee_bps = manifest["fee_bps"].as_i64().expect("manifest fee_bps");
    let mut admin = Conn::client(&realm.ws(), &sysop).await;
    for (i, w) in wallets.iter().enumerate() {
        let key = format!("initial-{i}");
        let id = admin
            .send(
                "wallet.mint",
                json!({"wallet": w.public_hex(), "amount": INITIAL_MINT, "idempotency_key": key}),
            )
            .await;
        assert_eq!(admin.answer(&id, 10).await["type"], "wallet.minted");
        m.mints.insert(
            key,
            Mint {
                wallet: i,
                amount: INITIAL_MINT,
                acked: true,
            },
        );
    }
    drop(admin);
    let ctx = Ctx {
        sysop,
        wallets,
        fee_bps,
    };
    let wallet_ids: Vec<String> = ctx.wallets.iter().map(KeyPair::public_hex).collect();

    for cycle in 1..=kills {
        let delay = 50 + rng.below(351);
        // Sessions open before the clock starts, so the kill lands in the load, not a handshake.
        let ws = realm.ws();
        let mut tasks = Vec::new();
        for (w, key) in ctx.wallets.iter().enumerate() {
            for k in 0..CONNS_PER_WALLET {
                let c = Conn::client(&ws, key).await;
                let tag = format!("c{cycle}-w{w}-{k}");
                tasks.push(tokio::spawn(submitter(c, w, tag, rng.next())));
            }
        }
        let c = Conn::client(&ws, &ctx.sysop).await;
        let mint_task = tokio::spawn(minter(
            c,
            wallet_ids.clone(),
            format!("m{cycle}"),
            rng.next(),
        ));
        // The random kill moment (not a synchronisation: the load runs until the kill).
        tokio::time::sleep(Duration::from_millis(delay)).await;
        realm.kill9().await;

        let (mut sent, mut acked, mut open, mut refused) = (0, 0, 0, 0);
        for t in tasks {
            let out = join(t, "load connection").await;
            for ev in out.terminals {
                m.record_terminal(ev);
            }
            for (key, sub) in out.subs {
                sent += 1;
                match &sub.answer {
                    Answer::Accepted { intent_id, .. } => {
                        acked += 1;
                        m.intents.insert(intent_id.clone(), key.clone());
                    }
                    Answer::Unanswered => open += 1,
                    Answer::Rejected(_) => refused += 1,
                }
                m.subs.insert(key, sub);
            }
        }
        for (key, mint) in join(mint_task, "minter").await {
            m.mints.insert(key, mint);
        }

        let restart = Instant::now();
        realm = Realm::start(&data, &ctx.sysop, &log, cycle as u64 + 1).await;
        m.starts += 1;
        let ready_ms = restart.elapsed().as_millis();
        let before = m.pending_after_restart;
        let resubmitted = m.resubmitted;
        check_realm(&mut m, &realm, &ctx, false).await;
        println!(
            "cycle {cycle:2}: killed after {delay:3} ms; sent {sent:3}, acked {acked:3}, \
             refused {refused:3}, unanswered {open:2} (resubmitted {}); ready in {ready_ms} ms; \
             {} acked intents pending after restart",
            m.resubmitted - resubmitted,
            m.pending_after_restart - before
        );
    }

    check_realm(&mut m, &realm, &ctx, true).await;
    let count = |s: &str| m.state.values().filter(|v| v["state"] == s).count();
    println!(
        "crash_sigkill: {kills} kills in {:.1} s; {} intents acknowledged ({} by resubmission): \
         {} succeeded, {} failed, {} dead, {} cancelled; {} crossed a crash; {} mints",
        t0.elapsed().as_secs_f64(),
        m.intents.len(),
        m.resubmitted,
        count("succeeded"),
        count("failed"),
        count("dead"),
        count("cancelled"),
        m.crossed,
        m.mints.len()
    );
    // Zero samples must fail, not pass: the run has to have exercised what it claims to check.
    assert!(m.intents.len() >= 100, "too little load to mean anything");
    assert!(count("succeeded") > 0 && count("failed") > 0);
    assert!(m.crossed > 0, "no kill ever interrupted acknowledged work");
    assert!(m.resubmitted > 0, "no kill ever cut a submission in flight");
    drop(realm);
    // Only a passing run cleans up: a failing one leaves its data dir and log to look at.
    let _ = std::fs::remove_dir_all(&dir);
}

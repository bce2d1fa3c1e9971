//! TEST DOUBLE: a small in-process MTOR/1 "realm" that implements just the frame handling, sessions,
//! worker enrolment and REST endpoints the events, health and workers suites exercise, with
//! switchable defects. It exists to prove each harness case FAILS against the defect it looks for
//! (and passes against the clean double) until the reference realm's defect catalogue lands. It is
//! not a realm. The worker channel, leases and ledger live in [`super::fake_broker`].

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use futures_util::{SinkExt, StreamExt};
use mtor_harness::contract::Contract;
use mtor_harness::wire::{event, new_id};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// One realistic bug each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// Frames that are not JSON are silently ignored.
    IgnoreBadJson,
    /// Any bad frame closes the connection.
    CloseOnBadFrame,
    /// Binary frames are parsed as if they were text.
    AcceptBinary,
    /// Every frame-level problem is answered with INVALID_EVENT.
    OneErrorCodeForAll,
    /// No size check of its own: the WebSocket layer's limit closes the connection.
    NoFrameLimit,
    /// No depth check: a deep document kills the connection's task.
    NoDepthLimit,
    /// Unknown types are ignored.
    IgnoreUnknownType,
    /// Session proofs are not verified.
    AcceptForgedProof,
    /// Events are accepted before a session exists.
    NoAuthRequired,
    /// Worker messages are accepted on the client channel.
    NoChannelCheck,
    /// Error events carry `ref: null` even when the frame id was readable.
    NoRef,
    /// The manifest lacks the licence.
    ManifestWithoutLicence,
    /// Health never lists workers.
    HealthWithoutWorkers,
    /// Health keeps a disconnected worker healthy.
    HealthKeepsDeadWorkers,
    /// A metric is missing.
    MetricsMissingSeries,
    /// Every series is there, but the counters never move.
    MetricsFrozen,
    /// `session.ready` carries a wrong-typed field.
    EmitWrongTypedField,
    /// Undeclared members in the body of an `intent.*` request are ignored instead of refused
    /// (a request struct deserialised without `deny_unknown_fields`).
    AcceptExtraBodyField,
    /// `worker.enrolled` advertises other lease terms than the manifest.
    EnrolledTermsDiffer,
    /// A pinned probe goes to any worker, and a pin to an unknown key is admitted.
    PinIgnored,
    /// A disconnected worker's leases are dropped, their tasks never resumed.
    ForgetLostLeases,
    /// Leases never lapse by deadline.
    NeverLapse,
    /// Progress is acknowledged but does not extend the lease.
    ProgressIgnored,
    /// Results are fenced by holder only, not by epoch, while the task runs.
    AcceptStaleEpoch,
    /// A repeated result is accepted and delivered again.
    DeliverDuplicateResult,
    /// A repeated result is refused DUPLICATE, but captured a second time.
    CaptureTwice,
    /// Outputs are not checked: a malformed one is accepted and delivered.
    AcceptMalformedResult,
    /// A dead-lettered intent's reservation is never released.
    NoRefundOnDeadLetter,
    /// Non-retryable failures are retried.
    RetryNonRetryable,
    /// Health says healthy whatever the heartbeats.
    HealthIgnoresHeartbeats,
    /// A worker once unhealthy stays unhealthy after its heartbeats resume.
    StuckUnhealthy,
    // ---- tokens and audit: the token workload's and the audit log's bugs.
    /// The funds check counts money held for intents in flight as available, so racing
    /// submissions overdraw the wallet.
    OverdrawOnRace,
    /// Idempotency keys are ignored: every submission is a new intent.
    IgnoreIdempotencyKey,
    /// A succeeded intent is captured and then released in full.
    CaptureAndRelease,
    /// Captures leave out the fee leg: money disappears.
    DropFeeLeg,
    /// A capture pays the worker of the first attempt, not the one whose result was accepted.
    PayFirstAttemptWorker,
    /// Statements leave out mint entries.
    StatementOmitsMints,
    /// Audit hashes do not cover `prev_hash`: the chain does not verify.
    BrokenAuditChain,
    /// Captures are not recorded in the audit log.
    SkipAuditRecord,
    /// The audit export's `next_after` skips one record at each page boundary.
    PagingDropsRecord,
    // ---- dispatch: load, overload and fairness bugs.
    /// Under overload, submissions beyond the limits are silently ignored instead of refused.
    DropUnderOverload,
    /// One global FIFO queue, no per-wallet limit: a heavy wallet starves the others.
    FifoUnfair,
    /// Every terminal event is sent twice.
    DoubleTerminal,
    /// Every intent waits 1.5 s in the queue even when the worker is free.
    SlowDispatch,
    // ---- security: impersonation, token theft, injection and amplification bugs.
    /// `worker.register` is challenged whatever its token.
    AcceptAnyToken,
    /// `wallet.mint` is honoured in any session, not only the sysop's.
    MintByAnyone,
    /// Signed REST reads check the signature but not who may read (no TRN-11 check).
    RestAnySigner,
    /// Signed REST requests are accepted whatever their `MTOR-Timestamp`.
    NoTimestampCheck,
    /// `/static/...` is joined onto a directory after percent-decoding, `..` and all.
    ServeStaticNaively,
    /// A refused `wallet.mint` is answered with an error whose message echoes the frame's body.
    EchoInErrors,
    /// A refused `wallet.mint`'s error is also sent to every other client session.
    RefusalsToAll,
    /// `intent.fetch` answers NOT_FOUND unless asked on the connection that submitted.
    SessionBoundFetch,
    /// `intent.cancel` answers NOT_FOUND unless asked on the connection that submitted.
    SessionBoundCancel,
    /// `cert.probe` nonces are escaped and stripped of control characters on admission.
    SanitizeInput,
    /// `session.hello`'s `resume` list is ignored.
    ResumeIgnored,
    /// `resume` attaches intents of any wallet, not only the session's own.
    ResumeAnyWallet,
    /// Every `resume` resends the terminal event, delivered or not.
    ResumeRedelivers,
    // ---- the frame rate limit (LIM-8).
    /// The token bucket never refuses: a flood is processed in full.
    NoRateLimit,
    /// Frames refused for the rate are answered `RATE_LIMITED` without `retry_after_ms`.
    RateLimitedWithoutRetry,
}

type State = super::fake_broker::Broker;

/// A running test double.
pub struct FakeRealm {
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRealm {
    fn drop(&mut self) {
        self.task.abort();
        self.ticker.abort();
    }
}

/// The realm id the double announces in challenges.
pub const REALM_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
/// The enrolment token it accepts.
pub const TOKEN: &str = "fake-realm-enrolment-token";
/// The sysop's secret seed (hex), for the harness manifest's `credentials.sysop_secret`.
pub const SYSOP_SECRET: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn sysop_key() -> String {
    let seed = [0x5a_u8; 32];
    hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes(),
    )
}

/// Starts the double on an ephemeral loopback port.
pub async fn start(defect: Option<Defect>) -> FakeRealm {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let state = Arc::new(Mutex::new(State::new(defect, sysop_key())));
    let contract = Arc::new(Contract::embedded().expect("contract"));
    let clock = state.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            clock.lock().expect("state").tick();
        }
    });
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            let contract = contract.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(60),
                    serve(stream, defect, state, contract),
                )
                .await;
            });
        }
    });
    FakeRealm { addr, task, ticker }
}

async fn serve(
    stream: TcpStream,
    defect: Option<Defect>,
    state: Arc<Mutex<State>>,
    contract: Arc<Contract>,
) {
    let mut buf = vec![0u8; 8192];
    let head = loop {
        let Ok(n) = stream.peek(&mut buf).await else {
            return;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains("\r\n\r\n") || n == buf.len() {
            break text;
        }
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    match path.as_str() {
        "/v1/client" | "/v1/worker" => {
            let limit = if defect == Some(Defect::NoFrameLimit) {
                1 << 20
            } else {
                64 << 20
            };
            let config = WebSocketConfig::default()
                .max_message_size(Some(limit))
                .max_frame_size(Some(limit));
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            socket(ws, path == "/v1/worker", defect, state, contract).await;
        }
        _ => http(stream, &path, &head, defect, &state).await,
    }
}

/// A query parameter of a request target.
fn query(path: &str, name: &str) -> Option<u64> {
    path.split_once('?')?.1.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

/// Section 3.3: the signer of a signed request, or the 401 to answer (recorded as `auth.failed`).
fn signer(path: &str, head: &str, state: &Mutex<State>) -> Result<String, (u16, String)> {
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let route = path.split('?').next().unwrap_or(path);
    let refuse = |code: &str, actor: &str| {
        state.lock().expect("state").auth_failed(actor, route, code);
        (
            401,
            format!("{{\"code\":\"{code}\",\"message\":\"{code}\"}}"),
        )
    };
    let (Some(key), Some(ts), Some(sig)) = (
        header("MTOR-Key"),
        header("MTOR-Timestamp"),
        header("MTOR-Signature"),
    ) else {
        return Err(refuse("UNAUTHENTICATED", "unknown"));
    };
    if !verify(&key, &format!("MTOR/1 rest\nGET\n{path}\n{ts}"), &sig) {
        return Err(refuse("BAD_SIGNATURE", &key));
    }
    // TRN-10: 60 s either way of the double's clock.
    let skew = humantime::parse_rfc3339(&ts).ok().and_then(|at| {
        let now = std::time::SystemTime::now();
        now.duration_since(at)
            .or_else(|_| at.duration_since(now))
            .ok()
    });
    let no_check = state
        .lock()
        .expect("state")
        .is_defect(Defect::NoTimestampCheck);
    if !no_check && skew.is_none_or(|d| d > Duration::from_secs(60)) {
        return Err(refuse("CHALLENGE_EXPIRED", &key));
    }
    Ok(key)
}

/// `SessionBoundFetch` / `SessionBoundCancel`: the intent was submitted on another connection.
fn not_this_sessions(state: &State, ev: &Value, conn: u64, fetch: bool, cancel: bool) -> bool {
    let id = ev["body"]["intent_id"].as_str().unwrap_or_default();
    (fetch || cancel) && state.submitted_on(id) != Some(conn)
}

/// Percent-decoding as a naive static file server does it (for `ServeStaticNaively`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn http(
    mut stream: TcpStream,
    path: &str,
    head: &str,
    defect: Option<Defect>,
    state: &Mutex<State>,
) {
    let wallet_path = path
        .strip_prefix("/v1/wallets/")
        .and_then(|rest| rest.split_once('/'));
    let mut sink = vec![0u8; 8192];
    let _ = stream.read(&mut sink).await;
    let signed =
        wallet_path.is_some() || path.starts_with("/v1/ledger") || path.starts_with("/v1/audit");
    let who = if signed {
        Some(signer(path, head, state))
    } else {
        None
    };
    let after = query(path, "after").unwrap_or(0);
    let limit = query(path, "limit").unwrap_or(100);
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/corpus/valid/rest/"
    );
    // TRN-11: a wallet path for its own key or the sysop; the exports for the sysop only.
    let allowed = match &who {
        Some(Ok(key)) => {
            defect == Some(Defect::RestAnySigner)
                || state.lock().expect("state").is_sysop(key)
                || wallet_path.is_some_and(|(k, _)| k == key)
        }
        _ => true,
    };
    let (status, body) = match path {
        _ if matches!(who, Some(Err(_))) => who.and_then(Result::err).unwrap_or_default(),
        _ if !allowed => (
            403,
            "{\"code\":\"FORBIDDEN\",\"message\":\"not yours to read\"}".to_owned(),
        ),
        _ if defect == Some(Defect::ServeStaticNaively) && path.starts_with("/static/") => {
            let file = format!("{root}{}", percent_decode(&path["/static/".len()..]));
            match std::fs::read_to_string(&file) {
                Ok(text) => (200, text),
                Err(_) => (
                    404,
                    "{\"code\":\"NOT_FOUND\",\"message\":\"no such file\"}".to_owned(),
                ),
            }
        }
        _ if path.starts_with("/v1/ledger?") => (
            200,
            state
                .lock()
                .expect("state")
                .ledger_json(after, limit)
                .to_string(),
        ),
        _ if path.starts_with("/v1/audit?") => (
            200,
            state
                .lock()
                .expect("state")
                .audit_json(after, limit)
                .to_string(),
        ),
        "/v1/manifest" => {
            let mut m: Value = serde_json::from_str(
                &std::fs::read_to_string(format!("{root}manifest.json")).unwrap_or_default(),
            )
            .unwrap_or(Value::Null);
            if defect == Some(Defect::ManifestWithoutLicence) {
                if let Some(o) = m.as_object_mut() {
                    o.remove("licence");
                }
            }
            m["lease"] = super::fake_broker::lease_json();
            (200, m.to_string())
        }
        "/v1/health" => {
            let mut h: Value = serde_json::from_str(
                &std::fs::read_to_string(format!("{root}health.json")).unwrap_or_default(),
            )
            .unwrap_or(Value::Null);
            let template = h["workers"].get(0).cloned().unwrap_or(Value::Null);
            let workers = state.lock().expect("state").health_workers(&template);
            h["workers"] = json!(workers);
            (200, h.to_string())
        }
        "/metrics" => {
            let [admitted, dispatched, succeeded] = if defect == Some(Defect::MetricsFrozen) {
                [0; 3]
            } else {
                state.lock().expect("state").counts()
            };
            let counted = [
                format!("mtor_intents_admitted_total {admitted}"),
                format!("mtor_tasks_dispatched_total {dispatched}"),
                format!("mtor_intent_latency_seconds_count {succeeded}"),
            ];
            let mut names = vec![
                "mtor_queue_depth 0",
                counted[0].as_str(),
                "mtor_intents_rejected_total{code=\"QUEUE_FULL\"} 0",
                counted[1].as_str(),
                "mtor_tasks_redispatched_total 0",
                "mtor_intents_dead_lettered_total 0",
                counted[2].as_str(),
                "mtor_ledger_commit_batch_size_count 0",
                "mtor_workers{state=\"healthy\"} 0",
            ];
            if defect == Some(Defect::MetricsMissingSeries) {
                names.retain(|n| !n.starts_with("mtor_tasks_redispatched_total"));
            }
            (200, names.join("\n") + "\n")
        }
        _ if wallet_path.is_some_and(|(_, rest)| rest == "balance") => {
            let key = wallet_path.map_or("", |(k, _)| k);
            (
                200,
                state.lock().expect("state").balance_json(key).to_string(),
            )
        }
        _ if wallet_path.is_some_and(|(_, rest)| rest.starts_with("statement")) => {
            let (key, _) = wallet_path.unwrap_or_default();
            let page = state
                .lock()
                .expect("state")
                .statement_page(key, after, limit);
            (200, page.to_string())
        }
        _ => (
            404,
            "{\"code\":\"NOT_FOUND\",\"message\":\"no such endpoint\"}".to_owned(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
}

fn depth(text: &str) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for c in text.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => {
                d += 1;
                max = max.max(d);
            }
            '}' | ']' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The frame rate the double advertises (`limits.rate_per_s`, manifest and `session.ready`).
const RATE_PER_S: f64 = 100.0;
/// The bucket size it advertises (`limits.burst`).
const BURST: f64 = 200.0;

/// LIM-8: one connection's token bucket at the advertised limits, full at the start.
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn new() -> Self {
        Self {
            tokens: BURST,
            at: std::time::Instant::now(),
        }
    }

    /// Takes a token, or says in how many ms one will be there.
    fn take(&mut self) -> Result<(), u64> {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * RATE_PER_S;
        self.tokens = (self.tokens + refill).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        // At least 1 ms: the next token is never there at once.
        Err(((1.0 - self.tokens) / RATE_PER_S * 1000.0).ceil().max(1.0) as u64)
    }
}

/// What a client may send (section 3.1).
const CLIENT_TYPES: &[&str] = &[
    "session.hello",
    "session.proof",
    "intent.submit",
    "intent.cancel",
    "intent.fetch",
    "wallet.mint",
];

/// The body members the client request types declare.
const DECLARED_BODY_MEMBERS: &[&str] = &[
    "intent_id",
    "intent",
    "input",
    "max_cost",
    "idempotency_key",
    "priority",
];

fn is_uid(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

const WORKER_TYPES: &[&str] = &[
    "worker.register",
    "worker.heartbeat",
    "task.progress",
    "task.result",
    "task.failure",
    "worker.drain",
];

async fn socket(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    worker_channel: bool,
    defect: Option<Defect>,
    state: Arc<Mutex<State>>,
    contract: Arc<Contract>,
) {
    let is = |d: Defect| defect == Some(d);
    let mut pending: Option<(String, String)> = None; // (key, nonce)
    let mut pending_intents: Option<Vec<String>> = None;
    let mut pending_concurrency = 1usize;
    // `session.hello`'s id and `resume` list, answered after `session.ready`.
    let mut pending_resume: Option<(String, Vec<String>)> = None;
    let mut session: Option<String> = None;
    let mut worker_id: Option<String> = None;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let conn = state.lock().expect("state").conn();
    let mut bucket = Bucket::new();
    loop {
        let msg = tokio::select! {
            m = ws.next() => match m {
                Some(Ok(m)) => m,
                _ => break,
            },
            out = rx.recv() => {
                // Frames the broker pushes: task assignments, receipts, intent events.
                let Some(frame) = out else { break };
                if ws.send(Message::text(frame)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        // Row 0 of section 14.3, before any parsing. Client connections only: the worker
        // channel's extra token per task.assign (LIM-8) is not modelled, and the harness's
        // workers under load answer faster than 100 frames/s.
        let data = matches!(msg, Message::Text(_) | Message::Binary(_));
        if data && !worker_channel && !is(Defect::NoRateLimit) {
            if let Err(ms) = bucket.take() {
                let id = match &msg {
                    Message::Text(t) => serde_json::from_str::<Value>(t)
                        .ok()
                        .and_then(|v| v["id"].as_str().filter(|s| is_uid(s)).map(str::to_owned)),
                    _ => None,
                };
                let mut refusal = error("RATE_LIMITED", id.as_deref());
                if !is(Defect::RateLimitedWithoutRetry) {
                    refusal["body"]["retry_after_ms"] = json!(ms);
                }
                if ws.send(Message::text(refusal.to_string())).await.is_err() {
                    break;
                }
                continue;
            }
        }
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Binary(b) if is(Defect::AcceptBinary) => {
                String::from_utf8_lossy(&b).into_owned()
            }
            Message::Binary(_) => {
                if is(Defect::CloseOnBadFrame) {
                    break;
                }
                let code = if is(Defect::OneErrorCodeForAll) {
                    "INVALID_EVENT"
                } else {
                    "BAD_UTF8"
                };
                let _ = ws.send(Message::text(error(code, None).to_string())).await;
                continue;
            }
            Message::Close(_) => break,
            _ => continue,
        };
        let reply = |code: &str, r: Option<&str>| {
            let code = if is(Defect::OneErrorCodeForAll) {
                "INVALID_EVENT"
            } else {
                code
            };
            let reference = if is(Defect::NoRef) { None } else { r };
            let mut e = error(code, reference);
            e["corr"] = json!(r);
            e
        };
        if text.len() > (1 << 20) {
            let e = reply("FRAME_TOO_LARGE", None);
            if is(Defect::CloseOnBadFrame) {
                break;
            }
            let _ = ws.send(Message::text(e.to_string())).await;
            continue;
        }
        if depth(&text) > 32 {
            if is(Defect::NoDepthLimit) {
                break; // the connection task "crashes"
            }
            if is(Defect::CloseOnBadFrame) {
                break;
            }
            let _ = ws
                .send(Message::text(reply("TOO_DEEP", None).to_string()))
                .await;
            continue;
        }
        let Ok(ev) = serde_json::from_str::<Value>(&text) else {
            if is(Defect::IgnoreBadJson) {
                continue;
            }
            if is(Defect::CloseOnBadFrame) {
                break;
            }
            let _ = ws
                .send(Message::text(reply("BAD_JSON", None).to_string()))
                .await;
            continue;
        };
        if !ev.is_object() {
            let _ = ws
                .send(Message::text(reply("INVALID_EVENT", None).to_string()))
                .await;
            continue;
        }
        // Section 14.3: an id is readable only when it is a `uid`.
        let id = ev["id"].as_str().filter(|s| is_uid(s)).map(str::to_owned);
        let kind = ev["type"].as_str().unwrap_or("").to_owned();
        let kind_is_string = ev["type"].is_string();
        let answer = |e: Value| e;
        if ev["proto"].is_string() && ev["proto"] != "MTOR/1" {
            let _ = ws
                .send(Message::text(
                    reply("UNSUPPORTED_PROTOCOL", id.as_deref()).to_string(),
                ))
                .await;
            continue;
        }
        if kind_is_string && !contract.message_types().any(|t| t == kind) {
            if is(Defect::IgnoreUnknownType) {
                continue;
            }
            let _ = ws
                .send(Message::text(
                    reply("UNKNOWN_TYPE", id.as_deref()).to_string(),
                ))
                .await;
            continue;
        }
        let inbound = if worker_channel {
            WORKER_TYPES
        } else {
            CLIENT_TYPES
        };
        if kind_is_string
            && !inbound.contains(&kind.as_str())
            && kind != "session.proof"
            && !is(Defect::NoChannelCheck)
        {
            let _ = ws
                .send(Message::text(
                    reply("WRONG_CHANNEL", id.as_deref()).to_string(),
                ))
                .await;
            continue;
        }
        // Rows 10 and 11 come before the schema.
        let opening = matches!(
            kind.as_str(),
            "session.hello" | "session.proof" | "worker.register"
        );
        if kind_is_string
            && !opening
            && session.is_none()
            && !worker_channel
            && !is(Defect::NoAuthRequired)
        {
            let _ = ws
                .send(Message::text(
                    reply("UNAUTHENTICATED", id.as_deref()).to_string(),
                ))
                .await;
            continue;
        }
        if kind == "wallet.mint"
            && !is(Defect::MintByAnyone)
            && session
                .as_deref()
                .is_some_and(|k| !state.lock().expect("state").is_sysop(k))
        {
            let mut refusal = reply("FORBIDDEN", id.as_deref());
            if is(Defect::EchoInErrors) {
                let echo: String = format!("FORBIDDEN: {}", ev["body"])
                    .chars()
                    .take(500)
                    .collect();
                refusal["body"]["message"] = json!(echo);
            }
            if is(Defect::RefusalsToAll) {
                state.lock().expect("state").broadcast(&refusal, conn);
            }
            let _ = ws.send(Message::text(refusal.to_string())).await;
            continue;
        }
        let checked = if is(Defect::AcceptExtraBodyField) && kind.starts_with("intent.") {
            // The bug: undeclared body members are dropped before validation, not refused.
            let mut lax = ev.clone();
            if let Some(body) = lax.get_mut("body").and_then(Value::as_object_mut) {
                body.retain(|k, _| DECLARED_BODY_MEMBERS.contains(&k.as_str()));
            }
            lax
        } else {
            ev.clone()
        };
        let violations = contract.validate_event(&checked);
        if !violations.is_empty() {
            if is(Defect::CloseOnBadFrame) {
                break;
            }
            // Section 8.1, check 2a: a bad intent input is a rejection, not an error event.
            let out = if kind == "intent.submit"
                && violations.iter().all(|v| v.schema.starts_with("intents/"))
            {
                event(
                    "intent.rejected",
                    id.as_deref(),
                    json!({"idempotency_key": ev["body"]["idempotency_key"], "code": "INVALID_EVENT", "message": "input breaks its schema"}),
                )
            } else {
                reply("INVALID_EVENT", id.as_deref())
            };
            let _ = ws.send(Message::text(out.to_string())).await;
            continue;
        }
        let out = match kind.as_str() {
            "session.hello" | "worker.register" => {
                if kind == "worker.register"
                    && ev["body"]["token"] != TOKEN
                    && !is(Defect::AcceptAnyToken)
                {
                    let claimed = ev["body"]["worker_key"].as_str().unwrap_or("unknown");
                    state
                        .lock()
                        .expect("state")
                        .auth_failed(claimed, "/v1/worker", "BAD_TOKEN");
                    reply("BAD_TOKEN", id.as_deref())
                } else {
                    let key = ev["body"]["wallet"]
                        .as_str()
                        .or(ev["body"]["worker_key"].as_str())
                        .unwrap_or("")
                        .to_owned();
                    let nonce = new_id() + &new_id();
                    pending = Some((key, nonce.clone()));
                    if kind == "session.hello" {
                        let ids = ev["body"]["resume"].as_array().map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        });
                        pending_resume = ids.map(|ids| (id.clone().unwrap_or_default(), ids));
                    }
                    if kind == "worker.register" {
                        pending_intents = ev["body"]["intents"].as_array().map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        });
                        pending_concurrency =
                            ev["body"]["concurrency"].as_u64().unwrap_or(1) as usize;
                    }
                    event(
                        "session.challenge",
                        id.as_deref(),
                        json!({"nonce": nonce, "realm_id": REALM_ID, "expires_at": "2099-01-01T00:00:00Z"}),
                    )
                }
            }
            "session.proof" => match pending.take() {
                None => reply("UNAUTHENTICATED", id.as_deref()),
                Some((key, nonce)) => {
                    let ok = is(Defect::AcceptForgedProof)
                        || verify(
                            &key,
                            &format!("MTOR/1 session\n{REALM_ID}\n{nonce}\n{key}"),
                            ev["body"]["signature"].as_str().unwrap_or(""),
                        );
                    if !ok {
                        let channel = if worker_channel {
                            "/v1/worker"
                        } else {
                            "/v1/client"
                        };
                        state
                            .lock()
                            .expect("state")
                            .auth_failed(&key, channel, "BAD_SIGNATURE");
                        reply("BAD_SIGNATURE", id.as_deref())
                    } else if worker_channel {
                        let intents: Vec<String> = pending_intents.take().unwrap_or_default();
                        let (wid, body) = state.lock().expect("state").enrol(
                            &key,
                            intents,
                            pending_concurrency,
                            tx.clone(),
                        );
                        worker_id = Some(wid);
                        event("worker.enrolled", id.as_deref(), body)
                    } else {
                        session = Some(key.clone());
                        let mut st = state.lock().expect("state");
                        st.session_open(conn, tx.clone());
                        // Queued behind `session.ready`, which is sent straight from this loop.
                        if let Some((hello, ids)) = pending_resume.take() {
                            st.resume(conn, &key, &hello, &ids);
                        }
                        drop(st);
                        let limits = if is(Defect::EmitWrongTypedField) {
                            json!({"max_frame_bytes": "1MiB", "max_depth": 32, "rate_per_s": 100, "burst": 200})
                        } else {
                            json!({"max_frame_bytes": 1048576, "max_depth": 32, "rate_per_s": 100, "burst": 200})
                        };
                        event(
                            "session.ready",
                            id.as_deref(),
                            json!({"wallet": key, "session_id": new_id(), "roles": ["wallet"], "limits": limits}),
                        )
                    }
                }
            },
            "worker.heartbeat" => {
                if let Some(w) = &worker_id {
                    state.lock().expect("state").heartbeat(w);
                }
                continue;
            }
            "task.progress" | "task.result" | "task.failure" => match &worker_id {
                Some(w) => state.lock().expect("state").task(w, &ev),
                None => reply("UNAUTHENTICATED", id.as_deref()),
            },
            "wallet.mint" => state
                .lock()
                .expect("state")
                .mint(id.as_deref(), &ev["body"]),
            "intent.cancel" | "intent.fetch"
                if session.is_some()
                    && not_this_sessions(
                        &state.lock().expect("state"),
                        &ev,
                        conn,
                        is(Defect::SessionBoundFetch) && kind == "intent.fetch",
                        is(Defect::SessionBoundCancel) && kind == "intent.cancel",
                    ) =>
            {
                reply("NOT_FOUND", id.as_deref())
            }
            "intent.cancel" if session.is_some() => {
                let wallet = session.clone().unwrap_or_default();
                state.lock().expect("state").cancel(&wallet, &ev)
            }
            "intent.fetch" if session.is_some() => {
                let wallet = session.clone().unwrap_or_default();
                state.lock().expect("state").fetch(&wallet, &ev)
            }
            "intent.fetch" | "intent.cancel" => reply("NOT_FOUND", id.as_deref()),
            "intent.submit" => match &session {
                Some(wallet) => state.lock().expect("state").submit(conn, wallet, &ev),
                None => event(
                    "intent.rejected",
                    id.as_deref(),
                    json!({"idempotency_key": ev["body"]["idempotency_key"], "code": "INFEASIBLE", "message": "no worker"}),
                ),
            },
            _ => reply("FORBIDDEN", id.as_deref()),
        };
        let out = answer(out);
        // Null: the broker already queued its answer (and what follows from it) in order.
        if out.is_null() {
            continue;
        }
        if ws.send(Message::text(out.to_string())).await.is_err() {
            break;
        }
    }
    let mut s = state.lock().expect("state");
    match worker_id {
        Some(w) => s.worker_lost(&w),
        None => s.session_close(conn),
    }
}

fn error(code: &str, r: Option<&str>) -> Value {
    event(
        "error",
        r,
        json!({"code": code, "message": format!("{code}"), "ref": r}),
    )
}

fn verify(key_hex: &str, message: &str, sig_hex: &str) -> bool {
    let (Ok(k), Ok(s)) = (hex::decode(key_hex), hex::decode(sig_hex)) else {
        return false;
    };
    let (Ok(k), Ok(s)) = (<[u8; 32]>::try_from(k), <[u8; 64]>::try_from(s)) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&k) else {
        return false;
    };
    key.verify(message.as_bytes(), &Signature::from_bytes(&s))
        .is_ok()
}

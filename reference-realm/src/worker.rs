//! The worker client: enrols with a realm over `GET /v1/worker` and runs its tasks.
//!
//! Used by `mtor-realm worker` and by the built-in workers of `mtor-realm up`, which connect over
//! loopback with exactly this protocol (no private shortcut): register → challenge → proof →
//! enrolled, heartbeats, `task.assign` → `task.progress`* → `task.result` | `task.failure`,
//! `task.cancel`. A lost connection is re-established with capped exponential backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::identity::{self, KeyPair};
use crate::intents;
use crate::signal::gpu::GpuEngine;
use crate::wire;

/// How long connecting and each handshake step may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the realm may stay silent before the worker reconnects (the realm pings every 20 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Errors that end a worker for good (everything else is retried).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The realm refused the enrolment token.
    #[error("the realm refused the enrolment token")]
    BadToken,
    /// The realm URL is not usable.
    #[error("invalid realm URL {0:?}: expected ws://HOST:PORT")]
    BadUrl(String),
    /// One connection failed (retried by [`run`]).
    #[error("{0}")]
    Connection(String),
}

/// What a worker needs to run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Realm base URL, `ws://HOST:PORT` (a trailing `/v1/worker` is accepted).
    pub realm: String,
    /// Enrolment token.
    pub token: String,
    /// Intents served.
    pub intents: Vec<String>,
    /// Tasks run at once.
    pub concurrency: usize,
    /// The worker's key.
    pub key: KeyPair,
    /// A label for logs.
    pub label: String,
    /// The GPU `analyze-signal` runs on, if any; reported as `capabilities.gpu` at enrolment.
    pub gpu: Option<Arc<GpuEngine>>,
}

/// The worker endpoint URL of a realm base URL.
pub fn worker_url(realm: &str) -> Result<String, WorkerError> {
    let base = realm.trim_end_matches('/');
    if !(base.starts_with("ws://") || base.starts_with("wss://")) {
        return Err(WorkerError::BadUrl(realm.to_owned()));
    }
    if base.ends_with("/v1/worker") {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}/v1/worker"))
    }
}

/// Runs the worker until `shutdown` turns true, reconnecting after failures.
pub async fn run(
    opts: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let url = worker_url(&opts.realm)?;
    let mut backoff = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match connection(&opts, &url, &mut shutdown).await {
            Ok(enrolled) => {
                if *shutdown.borrow() {
                    return Ok(());
                }
                if enrolled {
                    backoff = Duration::from_millis(200);
                }
            }
            Err(WorkerError::BadToken) => return Err(WorkerError::BadToken),
            Err(e) => warn!(worker = %opts.label, error = %e, "worker connection failed"),
        }
        // Jitter spreads the reconnects of many workers after a realm restart.
        let jitter = identity::random_hex(1)
            .ok()
            .and_then(|h| u64::from_str_radix(&h, 16).ok())
            .unwrap_or(0);
        let wait = backoff + Duration::from_millis(jitter);
        debug!(worker = %opts.label, ?wait, "reconnecting after backoff");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn frame(kind: &str, corr: Option<&str>, body: Value) -> Message {
    Message::Text(wire::event(kind, corr, body).into())
}

async fn next_event<S>(stream: &mut S) -> Result<Value, WorkerError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.next())
            .await
            .map_err(|_| WorkerError::Connection("the realm did not answer in time".to_owned()))?
            .ok_or_else(|| WorkerError::Connection("the realm closed the connection".to_owned()))?
            .map_err(|e| WorkerError::Connection(e.to_string()))?;
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str())
                .map_err(|e| WorkerError::Connection(format!("realm sent bad JSON: {e}")));
        }
    }
}

fn handshake_error(ev: &Value) -> WorkerError {
    let code = ev["body"]["code"].as_str().unwrap_or("");
    if code == "BAD_TOKEN" {
        WorkerError::BadToken
    } else {
        WorkerError::Connection(format!(
            "enrolment refused: {code} {}",
            ev["body"]["message"]
        ))
    }
}

/// One connection: returns Ok(true) when it had enrolled before ending.
async fn connection(
    opts: &WorkerOptions,
    url: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, WorkerError> {
    let (ws, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await
    .map_err(|_| WorkerError::Connection("connect timed out".to_owned()))?
    .map_err(|e| WorkerError::Connection(e.to_string()))?;
    let (mut sink, mut stream) = ws.split();
    let key = opts.key.public_hex();
    let mut body = json!({"token": opts.token, "worker_key": key, "intents": opts.intents,
               "concurrency": opts.concurrency, "software": format!("mtor-realm/{}", env!("CARGO_PKG_VERSION"))});
    if let Some(gpu) = &opts.gpu {
        // SIG-10: the realm routes `backend: "cuda"` analyses only to workers that declare this.
        body["capabilities"] = json!({"gpu": gpu.info().to_json()});
    }
    let register = frame("worker.register", None, body);
    timed_send(&mut sink, register).await?;
    let ev = next_event(&mut stream).await?;
    if ev["type"] != "session.challenge" {
        return Err(handshake_error(&ev));
    }
    let nonce = ev["body"]["nonce"].as_str().unwrap_or("");
    let realm_id = ev["body"]["realm_id"].as_str().unwrap_or("");
    let sig = opts
        .key
        .sign_hex(identity::session_message(realm_id, nonce, &key).as_bytes());
    timed_send(
        &mut sink,
        frame(
            "session.proof",
            ev["id"].as_str(),
            json!({"signature": sig}),
        ),
    )
    .await?;
    let ev = next_event(&mut stream).await?;
    if ev["type"] != "worker.enrolled" {
        return Err(handshake_error(&ev));
    }
    let worker_id = ev["body"]["worker_id"].as_str().unwrap_or("").to_owned();
    let hb_ms = ev["body"]["heartbeat_interval_ms"]
        .as_u64()
        .unwrap_or(2_000)
        .max(100);
    let lease_ms = ev["body"]["lease_ms"].as_u64().unwrap_or(10_000).max(100);
    info!(worker = %opts.label, %worker_id, "enrolled");

    let (done_tx, mut done_rx) = mpsc::channel::<Message>(256);
    let mut running: HashMap<String, (u64, tokio::task::AbortHandle)> = HashMap::new();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(hb_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = timed_send(&mut sink, frame("worker.drain", None, json!({"reason": "worker shutting down"}))).await;
                break Ok(true);
            }
            _ = heartbeat.tick() => {
                running.retain(|_, (_, h)| !h.is_finished());
                let hb = frame("worker.heartbeat", None, json!({"running": running.len(),
                    "capacity": opts.concurrency, "state": "ready",
                    "load": (running.len() as f64 / opts.concurrency.max(1) as f64).min(1.0)}));
                if let Err(e) = timed_send(&mut sink, hb).await { break Err(e); }
            }
            Some(out) = done_rx.recv() => {
                if let Err(e) = timed_send(&mut sink, out).await { break Err(e); }
            }
            msg = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => {
                let msg = match msg {
                    Err(_) => break Err(WorkerError::Connection("the realm went silent".to_owned())),
                    Ok(None) => break Err(WorkerError::Connection("the realm closed the connection".to_owned())),
                    Ok(Some(Err(e))) => break Err(WorkerError::Connection(e.to_string())),
                    Ok(Some(Ok(m))) => m,
                };
                let Message::Text(text) = msg else { continue };
                let Ok(ev) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                match ev["type"].as_str().unwrap_or("") {
                    "task.assign" => {
                        running.retain(|_, (_, h)| !h.is_finished());
                        let b = &ev["body"];
                        let task_id = b["task_id"].as_str().unwrap_or("").to_owned();
                        let attempt = b["attempt"].as_u64().unwrap_or(1);
                        let epoch = b["epoch"].as_u64().unwrap_or(1);
                        let intent = b["intent"].as_str().unwrap_or("").to_owned();
                        let input = b["input"].clone();
                        if running.len() >= opts.concurrency {
                            let f = frame("task.failure", None, json!({"task_id": task_id, "attempt": attempt,
                                "epoch": epoch, "code": "WORKER_ERROR", "message": "worker at capacity", "retryable": true}));
                            if let Err(e) = timed_send(&mut sink, f).await { break Err(e); }
                            continue;
                        }
                        let tx = done_tx.clone();
                        let wid = worker_id.clone();
                        let tid = task_id.clone();
                        let gpu = opts.gpu.clone();
                        let handle = tokio::spawn(async move {
                            run_task(tid, attempt, epoch, intent, input, wid, lease_ms, tx, gpu).await;
                        });
                        running.insert(task_id, (epoch, handle.abort_handle()));
                    }
                    "task.cancel" => {
                        let b = &ev["body"];
                        let task_id = b["task_id"].as_str().unwrap_or("");
                        let epoch = b["epoch"].as_u64().unwrap_or(0);
                        if let Some((_, h)) = running.get(task_id).filter(|(e, _)| *e == epoch) {
                            h.abort();
                            running.remove(task_id);
                            debug!(task = %task_id, "task cancelled by the realm");
                        }
                    }
                    "task.receipt" if ev["body"]["status"] == "refused" => {
                        debug!(task = %ev["body"]["task_id"], code = %ev["body"]["code"], "report refused");
                    }
                    "error" => warn!(worker = %opts.label, body = %ev["body"], "realm reported an error"),
                    _ => {}
                }
            }
        }
    };
    for (_, (_, h)) in running {
        h.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    result
}

async fn timed_send<S>(sink: &mut S, msg: Message) -> Result<(), WorkerError>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, sink.send(msg))
        .await
        .map_err(|_| WorkerError::Connection("send timed out".to_owned()))?
        .map_err(|e| WorkerError::Connection(e.to_string()))
}

#[allow(clippy::too_many_arguments)]
async fn run_task(
    task_id: String,
    attempt: u64,
    epoch: u64,
    intent: String,
    input: Value,
    worker_id: String,
    lease_ms: u64,
    tx: mpsc::Sender<Message>,
    gpu: Option<Arc<GpuEngine>>,
) {
    let ids = json!({"task_id": task_id, "attempt": attempt, "epoch": epoch});
    let with = |extra: Value| {
        let mut body = ids.clone();
        if let (Some(o), Value::Object(e)) = (body.as_object_mut(), extra) {
            o.extend(e);
        }
        body
    };
    // Progress at a third of the lease keeps the lease alive through long tasks.
    let mut progress = tokio::time::interval(Duration::from_millis((lease_ms / 3).max(50)));
    progress.tick().await;
    let work = intents::run(&intent, &input, &worker_id, gpu);
    tokio::pin!(work);
    let outcome = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = progress.tick() => {
                let _ = tx.send(frame("task.progress", None, with(json!({"fraction": 0.5, "stage": "running"})))).await;
            }
        }
    };
    let msg = match outcome {
        Ok(out) => frame(
            "task.result",
            None,
            with(json!({"output": out.output, "units": out.units})),
        ),
        Err(e) => {
            let mut m = e.message;
            wire::truncate(&mut m, 512);
            frame(
                "task.failure",
                None,
                with(json!({"code": e.code, "message": m, "retryable": e.retryable})),
            )
        }
    };
    let _ = tx.send(msg).await;
}

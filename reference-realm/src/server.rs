//! The realm's HTTP and WebSocket front: axum routes, connection state machines, REST bodies.
//!
//! Each WebSocket connection has a reader (this module's loop: parse, authenticate, forward to
//! the broker) and a writer task draining a bounded outbox, so the broker never waits on a slow
//! socket. Every wait has a timeout: the handshake must finish in [`HANDSHAKE_TIMEOUT`], an idle
//! connection is pinged and dropped after [`IDLE_TIMEOUT`], and a send that stalls for
//! [`SEND_TIMEOUT`] ends the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::audit;
use crate::broker::{self, BrokerHandle, BrokerMsg, Submit, TaskReport};
use crate::config::RealmConfig;
use crate::defect::{self, Defect};
use crate::identity;
use crate::ledger::{self, LedgerError};
use crate::store::{Store, StoreError};
use crate::wire::{self, Channel, Code, Contract, Envelope, Frame, WireError};

/// How long a peer has from connecting to a ready session or an enrolled worker.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay silent (pongs count) before it is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the realm pings a connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long one outbound frame may take to send.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a challenge stays valid.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(30);
/// Largest age of a signed REST request's timestamp.
pub const REST_SKEW: Duration = Duration::from_secs(60);

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding or serving failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Frame counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Frames received on all WebSocket channels.
    pub frames_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// Error events sent, by code.
    pub errors: Mutex<HashMap<&'static str, u64>>,
    /// WebSocket connections currently open.
    pub connections: AtomicU64,
    /// Failed authentications.
    pub auth_failures: AtomicU64,
}

impl Metrics {
    fn error(&self, code: Code) {
        let mut m = self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(code.as_str()).or_default() += 1;
    }
}

/// State shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// Configuration.
    pub config: Arc<RealmConfig>,
    /// The database.
    pub store: Store,
    /// The compiled contract.
    pub contract: Arc<Contract>,
    /// The broker.
    pub broker: BrokerHandle,
    /// When the realm started.
    pub started: Instant,
    /// Connection ids.
    pub conn_seq: AtomicU64,
    /// Counters.
    pub metrics: Metrics,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// The router of a realm.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/client", get(client_ws))
        .route("/v1/worker", get(worker_ws))
        .route("/v1/federation", get(federation_ws))
        .route("/v1/manifest", get(manifest))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/wallets/{key}/balance", get(balance))
        .route("/v1/wallets/{key}/statement", get(statement))
        .route("/v1/ledger", get(ledger_export))
        .route("/v1/audit", get(audit_export))
        .route("/static/{*path}", get(seeded_static))
        .fallback(|| async {
            rest_error(StatusCode::NOT_FOUND, Code::NotFound, "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            rest_error(StatusCode::NOT_FOUND, Code::NotFound, "no such endpoint")
        })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    use axum::serve::ListenerExt;
    // Events are small frames written one at a time: with Nagle's algorithm each one after the
    // first waits for the peer's delayed ACK (up to 40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

fn rest_error(status: StatusCode, code: Code, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code.as_str(), "message": message})),
    )
        .into_response()
}

fn upgrade(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    // The socket accepts frames above the protocol limit so that the realm can answer them
    // with FRAME_TOO_LARGE instead of a bare close; beyond 4× it just closes.
    let hard = state.config.limits.max_frame_bytes.saturating_mul(4);
    ws.max_message_size(hard).max_frame_size(hard)
}

async fn client_ws(ws: WebSocketUpgrade, State(state): State<Arc<AppState>>) -> Response {
    upgrade(ws, &state).on_upgrade(move |socket| connection(socket, state, Channel::Client))
}

async fn worker_ws(ws: WebSocketUpgrade, State(state): State<Arc<AppState>>) -> Response {
    upgrade(ws, &state).on_upgrade(move |socket| connection(socket, state, Channel::Worker))
}

async fn federation_ws(ws: WebSocketUpgrade, State(state): State<Arc<AppState>>) -> Response {
    upgrade(ws, &state).on_upgrade(move |socket| connection(socket, state, Channel::Federation))
}

/// A token bucket: `rate` frames per second, `burst` at most.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes a token, or returns how many ms until one is available.
    fn take(&mut self) -> Result<(), u64> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }
}

/// Per-connection protocol state.
enum Phase {
    New,
    Challenged {
        key: String,
        nonce: String,
        expires: Instant,
        /// Worker registration (worker channel only).
        worker: Option<(Vec<String>, usize, Value)>,
    },
    ClientReady {
        session_id: String,
        wallet: String,
        roles: Vec<&'static str>,
    },
    WorkerReady {
        conn: u64,
    },
}

struct Conn {
    state: Arc<AppState>,
    channel: Channel,
    out: mpsc::Sender<String>,
    phase: Phase,
    conn: u64,
    /// `session.hello` resume ids, answered once the session is ready.
    pending_resume: Vec<String>,
    /// The hello's id, the corr of the resume answers.
    resume_corr: Option<String>,
}

impl Conn {
    fn send(&self, frame: String) {
        if self.out.try_send(frame).is_err() {
            debug!("outbox full or closed; frame dropped");
        }
    }

    fn error(&self, code: Code, message: &str, ref_id: Option<&str>) {
        let code = if defect::on(Defect::OneErrorCode) {
            Code::InvalidEvent
        } else {
            code
        };
        self.state.metrics.error(code);
        self.send(wire::error_event(code, message, ref_id, None));
    }

    fn auth_failed(&self, key: &str, code: Code) {
        self.state
            .metrics
            .auth_failures
            .fetch_add(1, Ordering::Relaxed);
        // The claimed key is only recorded when it has the shape of a key: anything else is
        // attacker-controlled text that has no place in the audit log.
        let key = if identity::is_key(key) {
            key.to_owned()
        } else {
            "unknown".to_owned()
        };
        let channel = match self.channel {
            Channel::Client => "/v1/client",
            Channel::Worker => "/v1/worker",
            Channel::Federation => "/v1/federation",
        };
        let r = self.state.store.submit_with(
            move |tx| {
                audit::append_tx(
                    tx,
                    "auth.failed",
                    &key,
                    channel,
                    &json!({"code": code.as_str()}),
                )
                .map(|_| ())
            },
            |r: Result<(), audit::AuditError>| {
                if let Err(e) = r {
                    warn!(error = %e, "audit of a failed authentication failed");
                }
            },
        );
        if let Err(e) = r {
            warn!(error = %e, "audit not submitted");
        }
    }

    fn ready(&self) -> bool {
        matches!(
            self.phase,
            Phase::ClientReady { .. } | Phase::WorkerReady { .. }
        )
    }

    fn challenge(
        &mut self,
        ev: &Envelope,
        key: String,
        worker: Option<(Vec<String>, usize, Value)>,
    ) {
        let nonce = match identity::random_hex(32) {
            Ok(n) => n,
            Err(e) => return self.error(Code::Internal, &e.to_string(), Some(&ev.id)),
        };
        let expires_at = crate::store::format_rfc3339_millis(SystemTime::now() + CHALLENGE_TTL);
        self.send(wire::event(
            "session.challenge",
            Some(&ev.id),
            json!({"nonce": nonce, "realm_id": self.state.config.realm_id(), "expires_at": expires_at}),
        ));
        self.phase = Phase::Challenged {
            key,
            nonce,
            expires: Instant::now() + CHALLENGE_TTL,
            worker,
        };
    }

    /// Rows 10 and 11 of the frame-level checks: a session is needed, and its roles permit the
    /// type.
    fn session_check(&self, frame: &Frame) -> Result<(), WireError> {
        let Some(kind) = frame.kind.as_deref() else {
            return Ok(());
        };
        let opening = matches!(
            kind,
            "session.hello" | "session.proof" | "worker.register" | "federation.hello"
        );
        let refuse = |code, m: &str| Err(WireError::new(code, m, frame.id.clone()));
        if !self.ready() && !opening {
            return refuse(
                Code::Unauthenticated,
                "authenticate first (hello or register, then proof)",
            );
        }
        if self.ready() && opening && kind != "session.proof" {
            return refuse(Code::Forbidden, "this connection already has a session");
        }
        if kind == "wallet.mint" && !defect::on(Defect::MintByAnyone) {
            let sysop =
                matches!(&self.phase, Phase::ClientReady { roles, .. } if roles.contains(&"sysop"));
            if !sysop {
                return refuse(Code::Forbidden, "wallet.mint needs the sysop role");
            }
        }
        Ok(())
    }

    fn handle(&mut self, ev: Envelope) {
        let str_of = |k: &str| {
            ev.body
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        match (ev.kind.as_str(), self.channel) {
            ("session.hello", Channel::Client) => {
                let key = str_of("wallet");
                self.challenge(&ev, key, None);
                // `resume` ids are answered with their status once the session is ready.
                if let Some(ids) = ev.body.get("resume").and_then(Value::as_array) {
                    let ids: Vec<String> = ids
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect();
                    if let Phase::Challenged { .. } = self.phase {
                        self.pending_resume = ids;
                        self.resume_corr = Some(ev.id.clone());
                    }
                }
            }
            ("worker.register", Channel::Worker) => {
                let token = str_of("token");
                if !constant_time_eq(token.as_bytes(), self.state.config.enrol_token.as_bytes())
                    && !defect::on(Defect::AcceptAnyToken)
                {
                    self.auth_failed(&str_of("worker_key"), Code::BadToken);
                    return self.error(
                        Code::BadToken,
                        "the enrolment token is not valid",
                        Some(&ev.id),
                    );
                }
                let intents: Vec<String> = ev
                    .body
                    .get("intents")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                let concurrency = ev
                    .body
                    .get("concurrency")
                    .and_then(Value::as_u64)
                    .unwrap_or(1) as usize;
                // Optional (SIG-10): what the worker has, e.g. its GPU; stored, shown in health,
                // and used to route work that asks for a GPU.
                let capabilities = ev.body.get("capabilities").cloned().unwrap_or(Value::Null);
                self.challenge(
                    &ev,
                    str_of("worker_key"),
                    Some((intents, concurrency, capabilities)),
                );
            }
            ("federation.hello", Channel::Federation) => {
                let speaks = ev
                    .body
                    .get("protocol_versions")
                    .and_then(Value::as_array)
                    .is_some_and(|v| v.iter().any(|p| p == wire::PROTO));
                if speaks {
                    // This realm has no certified peers yet: every peer is refused.
                    self.error(
                        Code::Forbidden,
                        "this realm is not federated with that realm",
                        Some(&ev.id),
                    );
                } else {
                    self.error(
                        Code::UnsupportedProtocol,
                        "this realm speaks MTOR/1 only",
                        Some(&ev.id),
                    );
                }
            }
            ("session.proof", _) => self.proof(&ev),
            _ if !self.ready() => self.error(
                Code::Unauthenticated,
                "authenticate first (hello or register, then proof)",
                Some(&ev.id),
            ),
            (kind, Channel::Client) => self.client_event(kind, &ev),
            (kind, Channel::Worker) => self.worker_event(kind, &ev),
            (_, Channel::Federation) => self.error(
                Code::Forbidden,
                "this realm does not federate yet",
                Some(&ev.id),
            ),
        }
    }

    fn proof(&mut self, ev: &Envelope) {
        if !matches!(self.phase, Phase::Challenged { .. }) {
            // An established session stays as it is; there is no challenge to answer.
            return self.error(
                Code::Unauthenticated,
                "no challenge is pending",
                Some(&ev.id),
            );
        }
        // Each challenge admits one proof attempt: taking it out makes it single-use.
        let Phase::Challenged {
            key,
            nonce,
            expires,
            worker,
        } = std::mem::replace(&mut self.phase, Phase::New)
        else {
            return;
        };
        if Instant::now() > expires {
            self.auth_failed(&key, Code::ChallengeExpired);
            return self.error(
                Code::ChallengeExpired,
                "the challenge expired; start again",
                Some(&ev.id),
            );
        }
        let sig = ev
            .body
            .get("signature")
            .and_then(Value::as_str)
            .unwrap_or("");
        let msg = identity::session_message(&self.state.config.realm_id(), &nonce, &key);
        if identity::verify(&key, msg.as_bytes(), sig).is_err()
            && !defect::on(Defect::AcceptForgedProof)
        {
            self.auth_failed(&key, Code::BadSignature);
            return self.error(
                Code::BadSignature,
                "the proof does not verify",
                Some(&ev.id),
            );
        }
        let cfg = &self.state.config;
        match worker {
            None => {
                let mut roles = vec!["wallet"];
                if key == cfg.sysop_key {
                    roles.push("sysop");
                }
                if cfg.auditor_key.as_deref() == Some(key.as_str()) {
                    roles.push("auditor");
                }
                let session_id = identity::new_id();
                let l = cfg.limits;
                let max_depth = if defect::on(Defect::EmitWrongTypedField) {
                    json!(l.max_depth.to_string())
                } else {
                    json!(l.max_depth)
                };
                self.send(wire::event(
                    "session.ready",
                    Some(&ev.id),
                    json!({"wallet": key, "session_id": session_id, "roles": roles,
                           "limits": {"max_frame_bytes": l.max_frame_bytes, "max_depth": max_depth,
                                      "rate_per_s": l.rate_per_s, "burst": l.burst}}),
                ));
                self.state.broker.send(BrokerMsg::SessionOpen {
                    session_id: session_id.clone(),
                    wallet: key.clone(),
                    tx: self.out.clone(),
                });
                let corr = self.resume_corr.take().unwrap_or_else(|| ev.id.clone());
                let intent_ids = std::mem::take(&mut self.pending_resume);
                if !intent_ids.is_empty() {
                    self.state.broker.send(BrokerMsg::Resume {
                        session_id: session_id.clone(),
                        corr,
                        intent_ids,
                    });
                }
                info!(wallet = %key, session = %session_id, "session ready");
                self.phase = Phase::ClientReady {
                    session_id,
                    wallet: key,
                    roles,
                };
            }
            Some((intents, concurrency, capabilities)) => {
                // A worker's id is derived from its key, so it is stable across reconnects.
                let worker_id = format!("w-{}", &key[..20.min(key.len())]);
                self.send(wire::event(
                    "worker.enrolled",
                    Some(&ev.id),
                    json!({"worker_id": worker_id, "heartbeat_interval_ms": cfg.lease.heartbeat_interval_ms,
                           "lease_ms": if defect::on(Defect::EnrolledTermsDiffer) { cfg.lease.lease_ms * 2 } else { cfg.lease.lease_ms },
                           "max_attempts": cfg.lease.max_attempts}),
                ));
                // Enrolled is queued before the broker learns of the worker, so it precedes any
                // task.assign on the socket.
                self.state.broker.send(BrokerMsg::WorkerJoin {
                    conn: self.conn,
                    worker_id: worker_id.clone(),
                    worker_key: key,
                    intents,
                    concurrency,
                    capabilities,
                    tx: self.out.clone(),
                });
                info!(worker = %worker_id, concurrency, "worker enrolled");
                self.phase = Phase::WorkerReady { conn: self.conn };
            }
        }
    }

    fn client_event(&mut self, kind: &str, ev: &Envelope) {
        let Phase::ClientReady {
            session_id,
            wallet,
            roles,
        } = &self.phase
        else {
            return;
        };
        let body = &ev.body;
        let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let session_id = session_id.clone();
        match kind {
            "intent.submit" => {
                let submit = Submit {
                    intent: s("intent"),
                    input: body.get("input").cloned().unwrap_or_else(|| json!({})),
                    max_cost: body.get("max_cost").and_then(Value::as_u64).unwrap_or(0),
                    idempotency_key: s("idempotency_key"),
                    priority: body
                        .get("priority")
                        .and_then(Value::as_u64)
                        .unwrap_or(5)
                        .min(9) as u8,
                };
                self.state.broker.send(BrokerMsg::Submit {
                    session_id,
                    corr: ev.id.clone(),
                    submit,
                });
            }
            "intent.cancel" => {
                self.state.broker.send(BrokerMsg::Cancel {
                    session_id,
                    corr: ev.id.clone(),
                    intent_id: s("intent_id"),
                });
            }
            "intent.fetch" => {
                self.state.broker.send(BrokerMsg::Fetch {
                    session_id,
                    corr: ev.id.clone(),
                    intent_id: s("intent_id"),
                });
            }
            "wallet.mint" => {
                if !roles.contains(&"sysop") && !defect::on(Defect::MintByAnyone) {
                    return self.error(
                        Code::Forbidden,
                        "wallet.mint needs the sysop role",
                        Some(&ev.id),
                    );
                }
                let (target, key) = (s("wallet"), s("idempotency_key"));
                let memo = body.get("memo").and_then(Value::as_str).map(str::to_owned);
                let amount = body.get("amount").and_then(Value::as_u64).unwrap_or(0);
                let sysop = wallet.clone();
                let out = self.out.clone();
                let corr = ev.id.clone();
                let r = self.state.store.submit_with(
                    move |tx| {
                        // LED-11: the total minted (minus the issuance balance) must stay a
                        // safe integer; checked here, before the ledger writes anything.
                        let minted = ledger::account_balance_on(tx, ledger::ISSUANCE_ACCOUNT)?
                            .unsigned_abs();
                        if minted.saturating_add(amount) > ledger::MAX_MICRO {
                            return Err(LedgerError::Invalid {
                                field: "amount",
                                reason: "the total minted would exceed 2^53 - 1".to_owned(),
                            });
                        }
                        let mut m = ledger::mint_tx(tx, &target, amount, &key)?;
                        if m.replayed {
                            // LED-14: the balance is the one at reply time, not the original.
                            let now = ledger::account_balance_on(tx, &ledger::wallet_account(&target))?;
                            m.balance = u64::try_from(now).unwrap_or(0);
                        } else {
                            let mut data = json!({"amount": amount, "entry_seq": m.entry_seq});
                            if let (Some(memo), Some(o)) = (memo, data.as_object_mut()) {
                                o.insert("memo".to_owned(), json!(memo));
                            }
                            audit::append_tx(tx, "sysop.mint", &sysop, &target, &data)
                                .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
                        }
                        Ok::<_, LedgerError>(m)
                    },
                    move |r| {
                        let frame = match r {
                            Ok(m) => wire::event("wallet.minted", Some(&corr),
                                json!({"wallet": m.wallet, "amount": m.amount, "idempotency_key": m.idempotency_key,
                                       "entry_seq": m.entry_seq, "balance": m.balance})),
                            Err(e) => {
                                let code = Code::parse(e.code()).unwrap_or(Code::Internal);
                                let message = match code {
                                    Code::IdempotencyConflict => "this idempotency key was used for a different mint",
                                    Code::InvalidEvent => "the mint is not valid (amount or total minted out of range)",
                                    Code::ShuttingDown => "the realm is shutting down",
                                    _ => {
                                        warn!(error = %e, "mint failed");
                                        "the realm could not complete the mint"
                                    }
                                };
                                wire::error_event(code, message, Some(&corr), None)
                            }
                        };
                        let _ = out.try_send(frame);
                    },
                );
                if r.is_err() {
                    self.error(
                        Code::ShuttingDown,
                        "the store is not accepting writes",
                        Some(&ev.id),
                    );
                }
            }
            _ => self.error(Code::WrongChannel, "not a client event", Some(&ev.id)),
        }
    }

    fn worker_event(&mut self, kind: &str, ev: &Envelope) {
        let Phase::WorkerReady { conn } = self.phase else {
            return;
        };
        let b = &ev.body;
        let task_id = b
            .get("task_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let attempt = b.get("attempt").and_then(Value::as_u64).unwrap_or(0) as u32;
        let epoch = b.get("epoch").and_then(Value::as_u64).unwrap_or(0);
        let report = match kind {
            "worker.heartbeat" => {
                let draining = b.get("state").and_then(Value::as_str) == Some("draining");
                self.state
                    .broker
                    .send(BrokerMsg::Heartbeat { conn, draining });
                return;
            }
            "worker.drain" => {
                self.state.broker.send(BrokerMsg::Heartbeat {
                    conn,
                    draining: true,
                });
                return;
            }
            "task.progress" => TaskReport::Progress {
                fraction: b.get("fraction").and_then(Value::as_f64).unwrap_or(0.0),
                stage: b.get("stage").and_then(Value::as_str).map(str::to_owned),
            },
            "task.result" => TaskReport::Result {
                output: b.get("output").cloned().unwrap_or_else(|| json!({})),
                units: b.get("units").and_then(Value::as_u64).unwrap_or(0),
            },
            "task.failure" => TaskReport::Failure {
                code: b
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("WORKER_ERROR")
                    .to_owned(),
                message: b
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                retryable: b.get("retryable").and_then(Value::as_bool).unwrap_or(false),
            },
            _ => return self.error(Code::WrongChannel, "not a worker event", Some(&ev.id)),
        };
        self.state.broker.send(BrokerMsg::Task {
            conn,
            corr: ev.id.clone(),
            task_id,
            attempt,
            epoch,
            report,
        });
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare hashes so that neither the length nor the first differing byte leaks via timing.
    use sha2::{Digest, Sha256};
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn connection(socket: WebSocket, state: Arc<AppState>, channel: Channel) {
    let conn_id = state.conn_seq.fetch_add(1, Ordering::Relaxed) + 1;
    state.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<String>(1024);
    let metrics_state = state.clone();
    // LIM-8: every task.assign sent on a worker connection grants one token for its answer.
    let lease_tokens = Arc::new(AtomicU64::new(0));
    let granted = lease_tokens.clone();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        let grant = |f: &str| {
            // Our own serialisation (wire::event) writes the type as exactly this.
            if channel == Channel::Worker && f.contains(r#""type":"task.assign""#) {
                granted.fetch_add(1, Ordering::Relaxed);
            }
        };
        loop {
            let first = tokio::select! {
                frame = out_rx.recv() => match frame {
                    Some(f) => f,
                    None => break,
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Ping(Vec::new().into()))).await {
                        Ok(Ok(())) => continue,
                        _ => break,
                    }
                }
            };
            // Everything already queued goes out with one flush: under load a connection
            // carries several events at once, and a write syscall each was a large share of
            // the realm's CPU. Nothing waits for more to arrive, so latency is unchanged.
            let sent = tokio::time::timeout(SEND_TIMEOUT, async {
                grant(&first);
                sink.feed(Message::Text(first.into())).await?;
                let mut n = 1u64;
                while n < 64 {
                    let Ok(f) = out_rx.try_recv() else { break };
                    grant(&f);
                    sink.feed(Message::Text(f.into())).await?;
                    n += 1;
                }
                sink.flush().await.map(|()| n)
            })
            .await;
            match sent {
                Ok(Ok(n)) => {
                    metrics_state
                        .metrics
                        .frames_out
                        .fetch_add(n, Ordering::Relaxed);
                }
                _ => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });
    let mut c = Conn {
        state: state.clone(),
        channel,
        out: out_tx,
        phase: Phase::New,
        conn: conn_id,
        pending_resume: Vec::new(),
        resume_corr: None,
    };
    let limits = state.config.limits;
    let mut bucket = Bucket::new(limits.rate_per_s, limits.burst);
    let opened = Instant::now();
    let mut shutdown = state.shutdown.clone();
    loop {
        // Before authentication the whole handshake shares one deadline; afterwards silence
        // is bounded by the idle timeout (pongs to our pings count as traffic).
        let wait = if c.ready() {
            IDLE_TIMEOUT
        } else {
            HANDSHAKE_TIMEOUT.saturating_sub(opened.elapsed())
        };
        let next = tokio::select! {
            n = tokio::time::timeout(wait, stream.next()) => n,
            _ = shutdown.changed() => break,
        };
        let msg = match next {
            Err(_) => {
                debug!(conn = conn_id, "connection timed out");
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(m))) => m,
        };
        let (text, binary) = match msg {
            Message::Text(t) => (Some(t), None),
            Message::Binary(b) => (None, Some(b.len())),
            Message::Close(_) => break,
            // Pings are answered by the WebSocket layer; control frames are not events.
            _ => continue,
        };
        state.metrics.frames_in.fetch_add(1, Ordering::Relaxed);
        // Row 0: the token bucket comes first, so a flood costs no parsing beyond the id.
        let rate_limited = bucket.take().err().filter(|_| {
            lease_tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        });
        // Seeded `no-rate-limit`: the bucket is kept but its verdict is ignored.
        let rate_limited = rate_limited.filter(|_| !defect::on(Defect::NoRateLimit));
        if let Some(ms) = rate_limited {
            state.metrics.error(Code::RateLimited);
            let ref_id = text
                .as_ref()
                .filter(|t| t.len() <= 65_536)
                .and_then(|t| {
                    state
                        .contract
                        .pre_parse(
                            t.as_str(),
                            channel,
                            limits.max_frame_bytes,
                            limits.max_depth,
                        )
                        .ok()
                })
                .and_then(|f| f.id);
            // Seeded `rate-limited-without-retry`: the refusal leaves out when to come back.
            let retry = Some(ms).filter(|_| !defect::on(Defect::RateLimitedWithoutRetry));
            c.send(wire::error_event(
                Code::RateLimited,
                "too many frames",
                ref_id.as_deref(),
                retry,
            ));
            continue;
        }
        let Some(text) = text else {
            let len = binary.unwrap_or(0);
            let code = if len > limits.max_frame_bytes {
                Code::FrameTooLarge
            } else {
                Code::BadUtf8
            };
            c.error(
                code,
                "binary messages are not accepted; send UTF-8 JSON text",
                None,
            );
            if defect::on(Defect::CloseOnBadFrame) {
                break;
            }
            continue;
        };
        let max_depth = if defect::on(Defect::NoDepthLimit) {
            usize::MAX
        } else {
            limits.max_depth
        };
        let checked = state
            .contract
            .pre_parse(text.as_str(), channel, limits.max_frame_bytes, max_depth)
            .and_then(|frame| c.session_check(&frame).map(|()| frame))
            .and_then(|frame| state.contract.validate(frame));
        match checked {
            Ok(ev) => c.handle(ev),
            Err(mut e) => {
                if seeded_silence(e.code) {
                    continue;
                }
                if defect::on(Defect::OneErrorCode) {
                    e.code = Code::InvalidEvent;
                }
                seeded_echo(&mut e, text.as_str());
                state.metrics.error(e.code);
                let event = e.to_event();
                if defect::on(Defect::RefusalsToAll) && c.channel == Channel::Client {
                    state.broker.send(BrokerMsg::SeededBroadcast {
                        frame: event.clone(),
                    });
                }
                c.send(event);
                if defect::on(Defect::CloseOnBadFrame) {
                    break;
                }
            }
        }
    }
    match &c.phase {
        Phase::ClientReady { session_id, .. } => {
            state.broker.send(BrokerMsg::SessionClose {
                session_id: session_id.clone(),
            });
        }
        Phase::WorkerReady { conn } => {
            info!(conn, "worker disconnected");
            state.broker.send(BrokerMsg::WorkerLeave { conn: *conn });
        }
        _ => {}
    }
    drop(c);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    state.metrics.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Seeded defect `serve-static-naively`: files under `<data_dir>/static`, the decoded path
/// joined on unchecked. A clean realm has no static files: the route answers 404 like any other
/// unknown path.
async fn seeded_static(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> Response {
    if !defect::on(Defect::ServeStaticNaively) {
        return rest_error(StatusCode::NOT_FOUND, Code::NotFound, "no such endpoint");
    }
    let root = state.config.data_dir.join("static");
    // The folder must exist for `..` to resolve through it, as it would for a real web client.
    let _ = tokio::fs::create_dir_all(&root).await;
    let file = format!("{}/{path}", root.display());
    match tokio::fs::read(&file).await {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(_) => rest_error(StatusCode::NOT_FOUND, Code::NotFound, "no such file"),
    }
}

/// Seeded defects `ignore-bad-json` and `ignore-unknown-type`: refusals of these codes are
/// dropped without an answer.
fn seeded_silence(code: Code) -> bool {
    (code == Code::BadJson && defect::on(Defect::IgnoreBadJson))
        || (code == Code::UnknownType && defect::on(Defect::IgnoreUnknownType))
}

/// Seeded defect `echo-in-errors`: a refused `wallet.mint` quotes the frame it refuses, so
/// whatever the frame named (another wallet's key) is told back.
fn seeded_echo(e: &mut WireError, text: &str) {
    if defect::on(Defect::EchoInErrors) && text.contains("\"wallet.mint\"") {
        let mut quoted = text.to_owned();
        wire::truncate(&mut quoted, 400);
        e.message = format!("refused: {quoted}");
    }
}

async fn manifest(State(state): State<Arc<AppState>>) -> Response {
    let cfg = &state.config;
    let l = cfg.limits;
    let intents: Vec<Value> = crate::intents::CATALOG
        .iter()
        .map(|s| json!({"name": s.name, "min_cost": s.min_cost, "unit_price": s.unit_price, "description": s.description}))
        .collect();
    let mut body = json!({
        "protocol": wire::PROTO,
        "realm_id": cfg.realm_id(),
        "name": cfg.name,
        "version": env!("CARGO_PKG_VERSION"),
        "licence": "GPL-3.0-or-later",
        "source_url": "https://github.com/mtor-realm/mtor",
        "public_key": cfg.realm_id(),
        "intents": intents,
        "limits": {"max_frame_bytes": l.max_frame_bytes, "max_depth": l.max_depth, "rate_per_s": l.rate_per_s,
                   "burst": l.burst, "queue_capacity": l.queue_capacity, "per_wallet_inflight": l.per_wallet_inflight},
        "lease": {"lease_ms": cfg.lease.lease_ms, "heartbeat_interval_ms": cfg.lease.heartbeat_interval_ms,
                  "max_attempts": cfg.lease.max_attempts, "grace_ms": cfg.lease.grace_ms},
        "fee_bps": cfg.fee_bps,
        "endpoints": {"client": "/v1/client", "worker": "/v1/worker", "federation": "/v1/federation",
                      "health": "/v1/health", "metrics": "/metrics", "audit": "/v1/audit", "ledger": "/v1/ledger"},
    });
    if defect::on(Defect::ManifestWithoutLicence) {
        if let Some(o) = body.as_object_mut() {
            o.remove("licence");
        }
    }
    Json(body).into_response()
}

fn ledger_entries(store: &Store) -> u64 {
    store.read(ledger::head_seq_on).unwrap_or(0)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let snap = state.broker.snapshot().await;
    let store = state.store.clone();
    let stats = store.stats();
    let entries = tokio::task::spawn_blocking(move || ledger_entries(&store))
        .await
        .unwrap_or(0);
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let last_commit_ms = if stats.last_commit_unix_ms == 0 {
        state.started.elapsed().as_millis() as u64
    } else {
        now_ms.saturating_sub(stats.last_commit_unix_ms)
    };
    let Some(snap) = snap else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "down", "realm_id": state.config.realm_id(),
                "uptime_s": state.started.elapsed().as_secs(),
                "queue": {"depth": 0, "capacity": state.config.limits.queue_capacity, "running": 0},
                "workers": [], "ledger": {"entries": entries, "last_commit_ms": last_commit_ms}}),
            ),
        )
            .into_response();
    };
    // Section 13.1: down while refusing all work; degraded when a worker is suspect or
    // unhealthy, or an offered intent has no healthy worker.
    use crate::registry::Health;
    let some_unwell = snap
        .workers
        .iter()
        .any(|w| matches!(w.state, Health::Suspect | Health::Unhealthy));
    let uncovered = crate::intents::CATALOG.iter().any(|spec| {
        !snap
            .workers
            .iter()
            .any(|w| w.state == Health::Healthy && w.intents.iter().any(|i| i == spec.name))
    });
    let (status, code) = if snap.stopping {
        ("down", StatusCode::SERVICE_UNAVAILABLE)
    } else if some_unwell || uncovered {
        ("degraded", StatusCode::OK)
    } else {
        ("ok", StatusCode::OK)
    };
    (code, Json(json!({
        "status": status,
        "realm_id": state.config.realm_id(),
        "uptime_s": state.started.elapsed().as_secs(),
        "queue": {"depth": if defect::on(Defect::HealthWrongTyped) { json!(snap.queue_depth.to_string()) } else { json!(snap.queue_depth) },
                  "capacity": state.config.limits.queue_capacity, "running": snap.running},
        "workers": snap.workers,
        "ledger": {"entries": entries, "last_commit_ms": last_commit_ms},
    })))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    use crate::registry::Health;
    use std::fmt::Write;
    let mut snap = state.broker.snapshot().await.unwrap_or_default();
    let stats = state.store.stats();
    if defect::on(Defect::MetricsFrozen) {
        snap.counters = broker::Counters::default();
    }
    let c = &snap.counters;
    let mut out = String::new();
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    head(
        &mut out,
        "mtor_queue_depth",
        "gauge",
        "Intents in state queued.",
    );
    let _ = writeln!(out, "mtor_queue_depth {}", snap.queue_depth);
    head(
        &mut out,
        "mtor_intents_admitted_total",
        "counter",
        "Intents admitted (idempotent replays not counted).",
    );
    let _ = writeln!(out, "mtor_intents_admitted_total {}", c.admitted);
    head(
        &mut out,
        "mtor_intents_rejected_total",
        "counter",
        "intent.rejected events sent, by code.",
    );
    // Known admission codes start at zero so the series exists before the first
    // rejection (a scraper cannot tell "none yet" from "not exported" otherwise).
    let mut rejected: std::collections::BTreeMap<&str, u64> = [
        Code::QueueFull,
        Code::InsufficientFunds,
        Code::Infeasible,
        Code::CostTooLow,
        Code::IdempotencyConflict,
        Code::RateLimited,
        Code::ShuttingDown,
        Code::InvalidEvent,
        Code::BadInput,
    ]
    .iter()
    .map(|code| (code.as_str(), 0))
    .collect();
    for (code, n) in &c.rejected_by_code {
        rejected.insert(code, *n);
    }
    for (code, n) in &rejected {
        let _ = writeln!(out, "mtor_intents_rejected_total{{code=\"{code}\"}} {n}");
    }
    head(
        &mut out,
        "mtor_tasks_dispatched_total",
        "counter",
        "task.assign events sent (all attempts).",
    );
    let _ = writeln!(out, "mtor_tasks_dispatched_total {}", c.dispatched);
    head(
        &mut out,
        "mtor_tasks_redispatched_total",
        "counter",
        "task.assign events sent with attempt >= 2.",
    );
    let _ = writeln!(out, "mtor_tasks_redispatched_total {}", c.redispatched);
    head(
        &mut out,
        "mtor_intents_dead_lettered_total",
        "counter",
        "Intents dead-lettered.",
    );
    let _ = writeln!(out, "mtor_intents_dead_lettered_total {}", c.dead_lettered);
    head(
        &mut out,
        "mtor_intent_latency_seconds",
        "histogram",
        "Time from admission to terminal state.",
    );
    let mut cumulative = 0u64;
    for (i, bound) in crate::broker::LATENCY_BOUNDS.iter().enumerate() {
        cumulative += c.latency_counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "mtor_intent_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += c.latency_counts.last().copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "mtor_intent_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(out, "mtor_intent_latency_seconds_sum {}", c.latency_sum);
    let _ = writeln!(out, "mtor_intent_latency_seconds_count {cumulative}");
    // The store commits ledger entries in group-commit batches; its batch-size histogram is the
    // closest measure of entries per durable commit that the store exposes.
    head(
        &mut out,
        "mtor_ledger_commit_batch_size",
        "histogram",
        "Jobs (ledger movements among them) per durable commit.",
    );
    let buckets = stats.cumulative_batch_buckets();
    let mut total = 0;
    for (le, n) in &buckets {
        match le {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "mtor_ledger_commit_batch_size_bucket{{le=\"{b}\"}} {n}"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "mtor_ledger_commit_batch_size_bucket{{le=\"+Inf\"}} {n}"
                );
                total = *n;
            }
        }
    }
    let _ = writeln!(out, "mtor_ledger_commit_batch_size_sum {}", stats.jobs);
    let _ = writeln!(out, "mtor_ledger_commit_batch_size_count {total}");
    head(
        &mut out,
        "mtor_workers",
        "gauge",
        "Connected enrolled workers by state.",
    );
    for (label, st) in [
        ("healthy", Health::Healthy),
        ("suspect", Health::Suspect),
        ("unhealthy", Health::Unhealthy),
        ("draining", Health::Draining),
    ] {
        let n = snap.workers.iter().filter(|w| w.state == st).count();
        let _ = writeln!(out, "mtor_workers{{state=\"{label}\"}} {n}");
    }
    let m = &state.metrics;
    head(
        &mut out,
        "mtor_tasks_running",
        "gauge",
        "Intents in state running.",
    );
    let _ = writeln!(out, "mtor_tasks_running {}", snap.running);
    head(
        &mut out,
        "mtor_frames_received_total",
        "counter",
        "WebSocket messages received.",
    );
    let _ = writeln!(
        out,
        "mtor_frames_received_total {}",
        m.frames_in.load(Ordering::Relaxed)
    );
    head(
        &mut out,
        "mtor_errors_total",
        "counter",
        "error events sent for frame-level violations, by code.",
    );
    let errors: Vec<(&str, u64)> = m
        .errors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    for (code, n) in errors {
        let _ = writeln!(out, "mtor_errors_total{{code=\"{code}\"}} {n}");
    }
    head(
        &mut out,
        "mtor_auth_failures_total",
        "counter",
        "Failed authentications.",
    );
    let _ = writeln!(
        out,
        "mtor_auth_failures_total {}",
        m.auth_failures.load(Ordering::Relaxed)
    );
    head(
        &mut out,
        "mtor_connections",
        "gauge",
        "Open WebSocket connections.",
    );
    let _ = writeln!(
        out,
        "mtor_connections {}",
        m.connections.load(Ordering::Relaxed)
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

/// Checks a signed REST request (section 3.3) and returns the signer's key. A 401 is recorded in
/// the audit log as `auth.failed`.
fn signed_key(
    state: &AppState,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<String, Refusal> {
    let h = |name: &str| headers.get(name).map(|v| v.to_str().map(str::to_owned));
    let refuse = |code: Code, message: &str, claimed: Option<&str>| -> Refusal {
        state.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        let actor = claimed
            .filter(|k| identity::is_key(k))
            .unwrap_or("unknown")
            .to_owned();
        let path = uri.path().to_owned();
        let r = state.store.submit_with(
            move |tx| {
                audit::append_tx(
                    tx,
                    "auth.failed",
                    &actor,
                    &path,
                    &json!({"code": code.as_str()}),
                )
                .map(|_| ())
            },
            |r: Result<(), audit::AuditError>| {
                if let Err(e) = r {
                    warn!(error = %e, "audit of a failed REST authentication failed");
                }
            },
        );
        if let Err(e) = r {
            warn!(error = %e, "audit not submitted");
        }
        Box::new(rest_error(StatusCode::UNAUTHORIZED, code, message))
    };
    let (Some(key), Some(ts), Some(sig)) =
        (h("mtor-key"), h("mtor-timestamp"), h("mtor-signature"))
    else {
        return Err(refuse(
            Code::Unauthenticated,
            "sign the request: MTOR-Key, MTOR-Timestamp, MTOR-Signature",
            None,
        ));
    };
    let (Ok(key), Ok(ts), Ok(sig)) = (key, ts, sig) else {
        return Err(refuse(
            Code::BadSignature,
            "a signature header is malformed",
            None,
        ));
    };
    let Some(when) = identity::parse_ts(&ts) else {
        return Err(refuse(
            Code::BadSignature,
            "MTOR-Timestamp is not an RFC 3339 UTC timestamp",
            Some(&key),
        ));
    };
    let now = SystemTime::now();
    let skew = now
        .duration_since(when)
        .or_else(|_| when.duration_since(now))
        .unwrap_or(Duration::MAX);
    if skew > REST_SKEW && !defect::on(Defect::NoTimestampCheck) {
        return Err(refuse(
            Code::ChallengeExpired,
            "MTOR-Timestamp is more than 60 s from the realm clock",
            Some(&key),
        ));
    }
    let pq = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let msg = identity::rest_message(method, &pq, &ts);
    if identity::verify(&key, msg.as_bytes(), &sig).is_err() {
        return Err(refuse(
            Code::BadSignature,
            "the request signature does not verify",
            Some(&key),
        ));
    }
    Ok(key)
}

fn privileged(state: &AppState, key: &str) -> bool {
    defect::on(Defect::RestAnySigner)
        || key == state.config.sysop_key
        || state.config.auditor_key.as_deref() == Some(key)
}

/// Parses `after` (integer ≥ 0, default 0) and `limit` (1..=1000, default 100); anything else is
/// 400 `INVALID_EVENT`.
fn page(q: &HashMap<String, String>) -> Result<(u64, u32), Refusal> {
    let bad = || {
        Box::new(rest_error(
            StatusCode::BAD_REQUEST,
            Code::InvalidEvent,
            "after must be an integer >= 0 and limit an integer in 1..1000",
        ))
    };
    let after = match q.get("after") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| bad())?,
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v.parse::<u32>().map_err(|_| bad())?,
    };
    if !(1..=1000).contains(&limit) {
        return Err(bad());
    }
    Ok((after, limit))
}

/// A REST refusal, boxed because a `Response` is large.
type Refusal = Box<Response>;

fn ledger_failure(e: &LedgerError) -> Response {
    let status = match e {
        LedgerError::Store(StoreError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
        LedgerError::Invalid { .. } | LedgerError::InvalidLimit(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = Code::parse(e.code()).unwrap_or(Code::Internal);
    // SEC-3: internal failures are logged, never described to the requester.
    let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
        warn!(error = %e, "ledger read failed");
        "the realm could not read the ledger".to_owned()
    } else {
        e.to_string()
    };
    rest_error(status, code, &message)
}

async fn blocking<T>(f: impl FnOnce() -> Result<T, Refusal> + Send + 'static) -> Response
where
    T: serde::Serialize + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(r)) => *r,
        Err(_) => rest_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            "read failed",
        ),
    }
}

async fn balance(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let signer = match signed_key(&state, "GET", &uri, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if signer != key && !privileged(&state, &signer) {
        return rest_error(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            "only the wallet, the sysop or the auditor may read it",
        );
    }
    let store = state.store.clone();
    blocking(move || {
        store
            .read(|c| ledger::balance_on(c, &key))
            .map_err(|e| Box::new(ledger_failure(&e)))
    })
    .await
}

async fn statement(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let signer = match signed_key(&state, "GET", &uri, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if signer != key && !privileged(&state, &signer) {
        return rest_error(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            "only the wallet, the sysop or the auditor may read it",
        );
    }
    let (after, limit) = match page(&q) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let store = state.store.clone();
    blocking(move || {
        store
            .read(|c| ledger::statement_on(c, &key, after, limit))
            .map_err(|e| Box::new(ledger_failure(&e)))
    })
    .await
}

/// The checks of a privileged export: a signed request by the sysop or auditor, and its page.
fn privileged_page(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    what: &str,
) -> Result<(u64, u32), Refusal> {
    let signer = signed_key(state, "GET", uri, headers)?;
    if !privileged(state, &signer) {
        return Err(Box::new(rest_error(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            &format!("the {what} export needs the sysop or auditor key"),
        )));
    }
    page(q)
}

async fn ledger_export(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (after, limit) = match privileged_page(&state, &uri, &headers, &q, "ledger") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let store = state.store.clone();
    blocking(move || {
        store
            .read(|c| ledger::export_on(c, after, limit))
            .map_err(|e| Box::new(ledger_failure(&e)))
    })
    .await
}

async fn audit_export(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (after, limit) = match privileged_page(&state, &uri, &headers, &q, "audit") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let store = state.store.clone();
    blocking(move || {
        store
            .read(|c| audit::export_on(c, after, limit))
            .map_err(|e| {
                warn!(error = %e, "audit export failed");
                Box::new(rest_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Code::Internal,
                    "the realm could not read the audit log",
                ))
            })
    })
    .await
}

/// A running realm (server, broker and store), started by [`start`].
#[derive(Debug)]
pub struct Realm {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Shared state.
    pub state: Arc<AppState>,
    shutdown_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), ServerError>>,
    broker_task: tokio::task::JoinHandle<()>,
}

/// Errors of starting a realm.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The contract did not compile.
    #[error(transparent)]
    Contract(#[from] wire::ContractError),
    /// The broker could not recover.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Error.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the store, starts the broker and serves on `config.listen`.
pub async fn start(config: RealmConfig) -> Result<Realm, StartError> {
    let config = Arc::new(config);
    let store_cfg = crate::store::StoreConfig {
        extra_migrations: broker::MIGRATIONS.to_vec(),
        ..Default::default()
    };
    let path = crate::config::db_path(&config.data_dir);
    let store = tokio::task::spawn_blocking(move || Store::open_with(path, store_cfg))
        .await
        .map_err(|e| StoreError::BatchAborted {
            reason: e.to_string(),
        })??;
    let contract = Arc::new(Contract::new()?);
    let (broker, broker_task) = broker::spawn(config.clone(), store.clone(), contract.clone())?;
    let rid = config.realm_id();
    let fee_bps = config.fee_bps;
    let s2 = store.clone();
    let _ = tokio::task::spawn_blocking(move || {
        s2.execute(move |tx| {
            audit::append_tx(
                tx,
                "realm.started",
                "realm",
                &rid,
                &json!({"version": env!("CARGO_PKG_VERSION"), "fee_bps": fee_bps}),
            )
            .map(|_| ())
        })
    })
    .await;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        config,
        store,
        contract,
        broker,
        started: Instant::now(),
        conn_seq: AtomicU64::new(0),
        metrics: Metrics::default(),
        shutdown: shutdown_rx.clone(),
    });
    let mut rx = shutdown_rx;
    let server = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = rx.changed().await;
    }));
    info!(%addr, "realm listening");
    Ok(Realm {
        addr,
        state,
        shutdown_tx,
        server,
        broker_task,
    })
}

impl Realm {
    /// Stops accepting work, closes connections, stops the broker and flushes the store.
    pub async fn stop(self) {
        // Refuse new submissions and drain workers, give running tasks a short grace to
        // finish (their results are settled normally), then cancel the rest and close.
        self.state.broker.send(BrokerMsg::Stopping);
        let deadline = Instant::now() + broker::DRAIN_GRACE;
        while Instant::now() < deadline {
            match self.state.broker.snapshot().await {
                Some(s) if s.running > 0 => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => break,
            }
        }
        self.state.broker.send(BrokerMsg::Shutdown);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.broker_task).await;
        let _ = self.shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.server).await;
        let store = self.state.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
        info!("realm stopped");
    }
}

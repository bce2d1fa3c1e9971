//! The stage of a scripted-worker case: a client session with a funded wallet, up to two harness
//! workers enrolled over the real worker channel, and a pump that reads every connection, keeps
//! the workers' heartbeats going and files what arrives for the script.
//!
//! Every frame goes through [`Conn`], so the journal holds all of it. The stage never judges: a
//! step that finds nothing (no re-dispatch, no receipt) returns `None` and the script moves on,
//! leaving the judge to say what the absence means.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::judge::{probe_digest, Terms};
use super::{Params, PROBE_COST};
use crate::case::Ctx;
use crate::wire::{
    self, event, http_get, http_get_signed, login, Conn, Identity, Received, WireError,
};

/// Why a stage could not be set up or a step could not be taken; the driver turns it into a
/// `skip:` (the target lacks what the case needs) or an `abort:` (the case could not be run).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The target gives the harness no way to run the case (no token, no money).
    #[error("{0}")]
    Skip(String),
    /// A step failed on the wire.
    #[error("{step}: {source}")]
    Wire {
        /// What the harness was doing.
        step: &'static str,
        /// The wire error.
        #[source]
        source: WireError,
    },
    /// The realm answered something the case cannot use, or the budget is too small.
    #[error("{0}")]
    Abort(String),
}

fn wire(step: &'static str) -> impl FnOnce(WireError) -> StageError {
    move |source| StageError::Wire { step, source }
}

/// How the pump answers the harness's own task assignments without the script's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auto {
    /// With the correct output.
    Answer,
    /// With `task.failure` of this code and retryability.
    Fail(&'static str, bool),
}

/// A task assignment a harness worker received for one of the harness's probes.
#[derive(Debug, Clone)]
pub struct Assign {
    /// Index of the worker.
    pub worker: usize,
    /// The `task.assign` event id.
    pub id: String,
    /// Task id.
    pub task_id: String,
    /// Attempt.
    pub attempt: u64,
    /// Epoch.
    pub epoch: u64,
    /// The probe's nonce.
    pub nonce: String,
}

/// A harness worker.
struct Worker {
    conn: Option<Conn>,
    key: Identity,
    worker_id: String,
    beat_every: Duration,
    next_beat: Instant,
    beating: bool,
    running: BTreeSet<(String, u64)>,
}

/// The concurrency the harness's workers register with.
const CONCURRENCY: u64 = 4;

/// A case's connections and what they received.
pub struct Stage<'a> {
    ctx: &'a Ctx<'a>,
    /// The lease terms the realm advertises.
    pub terms: Terms,
    /// Answers the harness's own assignments when set.
    pub auto: Option<Auto>,
    max_cost: u64,
    token: String,
    wallet: Identity,
    client: Option<Conn>,
    workers: Vec<Worker>,
    assigns: VecDeque<Assign>,
    cancels: Vec<(String, u64)>,
    receipts: HashMap<String, Received>,
    client_events: Vec<Received>,
    nonces: HashSet<String>,
    balance_seq: u64,
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
}

impl<'a> Stage<'a> {
    /// Reads the realm's lease terms, funds a wallet and opens its client session.
    pub async fn open(ctx: &'a Ctx<'a>, params: &Params) -> Result<Stage<'a>, StageError> {
        let Some(token) = ctx.target.enrol_token.clone() else {
            return Err(StageError::Skip(
                "no enrolment token: give `credentials.enrol_token` in the manifest".into(),
            ));
        };
        let (status, body) = http_get(
            &ctx.target.http_base,
            "/v1/manifest",
            ctx.journal,
            Some(&ctx.spec.id),
            ctx.within(3000),
        )
        .await
        .map_err(wire("reading the manifest"))?;
        let terms = serde_json::from_str::<Value>(&body)
            .ok()
            .filter(|_| status == 200)
            .as_ref()
            .and_then(Terms::from_manifest)
            .ok_or_else(|| {
                StageError::Abort(format!(
                    "GET /v1/manifest answered {status} without a complete `lease` section"
                ))
            })?;
        let wallet = fund(ctx, params.max_cost * 20).await?;
        ctx.mark("wallet", &wallet.public_hex());
        let (client, _) = login(
            &ctx.client_url(),
            &wallet,
            ctx.journal,
            Some(&ctx.spec.id),
            ctx.within(5000),
        )
        .await
        .map_err(wire("opening the wallet's session"))?;
        ctx.mark("client", &client.id.to_string());
        Ok(Stage {
            ctx,
            terms,
            auto: None,
            max_cost: params.max_cost,
            token,
            wallet,
            client: Some(client),
            workers: Vec::new(),
            assigns: VecDeque::new(),
            cancels: Vec::new(),
            receipts: HashMap::new(),
            client_events: Vec::new(),
            nonces: HashSet::new(),
            balance_seq: 0,
        })
    }

    /// Refuses to start a script that the budget cannot hold at this realm's lease terms.
    pub fn need_ms(&self, ms: u64) -> Result<(), StageError> {
        let left = self
            .ctx
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        if left < ms {
            return Err(StageError::Abort(format!(
                "at this realm's lease terms (lease_ms {}, grace_ms {}, max_attempts {}, heartbeat_interval_ms {}) the script needs up to {ms} ms, but only {left} ms of the case budget are left",
                self.terms.lease_ms, self.terms.grace_ms, self.terms.max_attempts, self.terms.heartbeat_interval_ms
            )));
        }
        Ok(())
    }

    /// A free-text note in the journal.
    pub fn note(&self, text: String) {
        self.ctx.note(text);
    }

    fn until(&self, ms: u64) -> Instant {
        self.ctx.within(ms)
    }

    /// Enrols a new harness worker (fresh key) listing only `cert.probe`; returns its index.
    pub async fn enrol(&mut self) -> Result<usize, StageError> {
        let key = Identity::generate()
            .map_err(|e| StageError::Abort(format!("no randomness for a key: {e}")))?;
        let worker = self.connect(key).await?;
        self.workers.push(worker);
        Ok(self.workers.len() - 1)
    }

    /// Reconnects worker `w` with its key, as a restarted worker process would.
    pub async fn reconnect(&mut self, w: usize) -> Result<(), StageError> {
        let key = self.workers[w].key.clone();
        let fresh = self.connect(key).await?;
        self.workers[w] = fresh;
        Ok(())
    }

    async fn connect(&self, key: Identity) -> Result<Worker, StageError> {
        let ctx = self.ctx;
        let url = format!("{}/v1/worker", ctx.target.ws_base);
        let mut conn = Conn::open(&url, ctx.journal, Some(&ctx.spec.id), self.until(5000))
            .await
            .map_err(wire("opening a worker connection"))?;
        let register = event(
            "worker.register",
            None,
            json!({
                "token": self.token,
                "worker_key": key.public_hex(),
                "intents": ["cert.probe"],
                "concurrency": CONCURRENCY,
                "software": concat!("mtor-cert/", env!("CARGO_PKG_VERSION"), " scripted worker"),
            }),
        );
        let challenge = conn
            .request(&register, self.until(3000))
            .await
            .map_err(wire("worker.register"))?;
        if challenge.kind() != Some("session.challenge") {
            return Err(StageError::Abort(format!(
                "worker.register was answered by {:?}",
                challenge.event
            )));
        }
        let body = |k: &str| challenge.body(k).and_then(Value::as_str).unwrap_or("");
        let proof = event(
            "session.proof",
            challenge.event.as_ref().and_then(|e| e["id"].as_str()),
            json!({ "signature": key.session_proof(body("realm_id"), body("nonce")) }),
        );
        let enrolled = conn
            .request(&proof, self.until(3000))
            .await
            .map_err(wire("the worker's session.proof"))?;
        if enrolled.kind() != Some("worker.enrolled") {
            return Err(StageError::Abort(format!(
                "the worker's proof was answered by {:?}",
                enrolled.event
            )));
        }
        let worker_id = enrolled
            .body("worker_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // Beat at twice the required rate (WRK-6), so that scheduling jitter never makes the
        // worker look late; the manifest's interval rules when the two differ.
        let interval = enrolled
            .body("heartbeat_interval_ms")
            .and_then(Value::as_u64)
            .unwrap_or(self.terms.heartbeat_interval_ms)
            .min(self.terms.heartbeat_interval_ms)
            .clamp(100, 60_000);
        ctx.mark("enrolled", &format!("{}:{worker_id}", conn.id));
        let beat_every = Duration::from_millis(interval / 2);
        Ok(Worker {
            conn: Some(conn),
            key,
            worker_id,
            beat_every,
            next_beat: Instant::now() + beat_every,
            beating: true,
            running: BTreeSet::new(),
        })
    }

    /// The stage's funded wallet (its client session's identity).
    pub fn wallet(&self) -> &Identity {
        &self.wallet
    }

    /// Worker `w`'s key, hex.
    pub fn worker_key(&self, w: usize) -> String {
        self.workers[w].key.public_hex()
    }

    /// Worker `w`'s realm-assigned id.
    pub fn worker_id(&self, w: usize) -> String {
        self.workers[w].worker_id.clone()
    }

    /// Drops worker `w`'s connection without a close frame (a crash).
    pub fn crash(&mut self, w: usize) {
        if let Some(conn) = self.workers[w].conn.take() {
            self.ctx.mark("crash", &conn.id.to_string());
            conn.abort();
        }
    }

    /// Closes worker `w`'s connection politely.
    pub async fn close_worker(&mut self, w: usize) {
        if let Some(conn) = self.workers[w].conn.take() {
            self.ctx.mark("closed", &conn.id.to_string());
            conn.close().await;
        }
    }

    /// Closes the wallet's client session politely (marked `client-closed`): the realm must
    /// keep what it owes that session for a later one (section 7.4).
    pub async fn close_client(&mut self) {
        if let Some(conn) = self.client.take() {
            self.ctx.mark("client-closed", &conn.id.to_string());
            conn.close().await;
        }
    }

    /// Stops or resumes worker `w`'s heartbeats; a resumed worker beats at once.
    pub fn set_beating(&mut self, w: usize, on: bool) {
        let worker = &mut self.workers[w];
        worker.beating = on;
        worker.next_beat = Instant::now();
        let conn = worker.conn.as_ref().map_or(0, |c| c.id);
        self.ctx
            .mark(if on { "resumed" } else { "silent" }, &conn.to_string());
    }

    /// Submits a `cert.probe` pinned to `pin` and waits for its admission; returns the intent id
    /// and the nonce.
    pub async fn submit(&mut self, pin: &str) -> Result<(String, String), StageError> {
        let (nonce, reply) = self.submit_raw(pin).await?;
        match reply.kind() {
            Some("intent.accepted") => Ok((
                reply
                    .body("intent_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                nonce,
            )),
            _ => Err(StageError::Abort(format!(
                "the pinned probe was not admitted: {}",
                reply.event.map(|e| e.to_string()).unwrap_or_default()
            ))),
        }
    }

    /// Submits a probe pinned to a key no worker holds; the judge expects INFEASIBLE.
    pub async fn submit_expecting_refusal(&mut self, pin: &str) -> Result<(), StageError> {
        self.submit_raw(pin).await.map(|_| ())
    }

    async fn submit_raw(&mut self, pin: &str) -> Result<(String, Received), StageError> {
        let nonce = format!("wk-{}", wire::new_id());
        let reply = self.submit_probe(pin, &nonce).await?;
        Ok((nonce, reply))
    }

    /// Submits a `cert.probe` pinned to `pin` with `nonce` and returns the realm's answer,
    /// whatever it is (marked `submit:<frame id>`).
    pub async fn submit_probe(&mut self, pin: &str, nonce: &str) -> Result<Received, StageError> {
        let nonce = nonce.to_owned();
        self.nonces.insert(nonce.clone());
        let submit = event(
            "intent.submit",
            None,
            json!({
                "intent": "cert.probe",
                "input": {"nonce": nonce, "worker_key": pin},
                "max_cost": self.max_cost,
                "idempotency_key": wire::new_id(),
            }),
        );
        let id = submit["id"].as_str().unwrap_or_default().to_owned();
        self.ctx.mark("submit", &id);
        let deadline = self.until(5000);
        let Some(client) = self.client.as_mut() else {
            return Err(StageError::Abort("the client session is gone".into()));
        };
        client
            .send_event(&submit, deadline)
            .await
            .map_err(wire("intent.submit"))?;
        let reply = |s: &Stage<'_>| {
            s.client_events
                .iter()
                .find(|r| r.corr() == Some(id.as_str()))
                .cloned()
        };
        self.pump_until(deadline, |s| reply(s).is_some()).await;
        reply(self)
            .ok_or_else(|| StageError::Abort("intent.submit got no answer within 5 s".into()))
    }

    /// The next assignment of one of the harness's probes, within `ms`.
    pub async fn next_assign(&mut self, ms: u64) -> Option<Assign> {
        let until = self.until(ms);
        self.pump_until(until, |s| !s.assigns.is_empty()).await;
        self.assigns.pop_front()
    }

    /// Puts an assignment taken with [`Stage::next_assign`] back at the end of the queue.
    pub fn requeue(&mut self, a: Assign) {
        self.assigns.push_back(a);
    }

    /// Whether anything arrived that ends lease `a`: a later assignment of its probe, or a
    /// `task.cancel` of its task.
    pub fn has_news_for(&self, a: &Assign) -> bool {
        self.assigns.iter().any(|b| b.nonce == a.nonce)
            || self.cancels.iter().any(|(t, _)| *t == a.task_id)
    }

    /// Sends the correct result for lease `a` (marked `mark` when given); returns the event id.
    pub async fn answer(&mut self, a: &Assign, mark: Option<&str>) -> String {
        let output = json!({
            "nonce": a.nonce,
            "digest": probe_digest(&a.nonce),
            "worker_id": self.workers[a.worker].worker_id,
        });
        self.result(a, output, mark).await
    }

    /// Sends `task.result` with `output` for lease `a`.
    pub async fn result(&mut self, a: &Assign, output: Value, mark: Option<&str>) -> String {
        let body = json!({"task_id": a.task_id, "attempt": a.attempt, "epoch": a.epoch,
                          "output": output, "units": 1});
        self.task_event(a, "task.result", body, mark, true).await
    }

    /// Sends `task.failure` for lease `a`.
    pub async fn fail(&mut self, a: &Assign, code: &str, retryable: bool) -> String {
        let body = json!({"task_id": a.task_id, "attempt": a.attempt, "epoch": a.epoch,
                          "code": code, "message": format!("scripted failure: {code}"),
                          "retryable": retryable});
        self.task_event(a, "task.failure", body, None, true).await
    }

    /// Sends `task.progress` for lease `a`.
    pub async fn progress(&mut self, a: &Assign, fraction: f64) -> String {
        let body = json!({"task_id": a.task_id, "attempt": a.attempt, "epoch": a.epoch,
                          "fraction": fraction, "stage": "scripted"});
        self.task_event(a, "task.progress", body, None, false).await
    }

    async fn task_event(
        &mut self,
        a: &Assign,
        kind: &str,
        body: Value,
        mark: Option<&str>,
        ends: bool,
    ) -> String {
        let ev = event(kind, Some(&a.id), body);
        let id = ev["id"].as_str().unwrap_or_default().to_owned();
        if let Some(m) = mark {
            self.ctx.mark(m, &id);
        }
        let deadline = self.until(3000);
        let worker = &mut self.workers[a.worker];
        if ends {
            worker.running.remove(&(a.task_id.clone(), a.epoch));
        }
        if let Some(conn) = worker.conn.as_mut() {
            if let Err(e) = conn.send_event(&ev, deadline).await {
                self.ctx.note(format!("sending {kind} failed: {e}"));
            }
        }
        id
    }

    /// Waits up to `ms` for the `task.receipt` answering event `id`.
    pub async fn wait_receipt(&mut self, id: &str, ms: u64) -> Option<Received> {
        let until = self.until(ms);
        self.pump_until(until, |s| s.receipts.contains_key(id))
            .await;
        self.receipts.get(id).cloned()
    }

    /// Waits up to `ms` for the client's terminal event about `intent`.
    pub async fn wait_terminal(&mut self, intent: &str, ms: u64) -> Option<Received> {
        let until = self.until(ms);
        let find = |s: &Stage<'_>| {
            s.client_events
                .iter()
                .find(|r| {
                    matches!(
                        r.kind(),
                        Some("intent.result" | "intent.failed" | "intent.cancelled")
                    ) && r.body("intent_id").and_then(Value::as_str) == Some(intent)
                })
                .cloned()
        };
        self.pump_until(until, |s| find(s).is_some()).await;
        find(self)
    }

    /// Keeps every connection read (and the heartbeats going) for `ms`: whatever arrives late, a
    /// duplicate terminal event or an unwanted re-dispatch, lands in the journal.
    pub async fn quiet(&mut self, ms: u64) {
        let until = self.until(ms);
        self.pump_until(until, |_| false).await;
    }

    /// Reads the wallet's balance (signed); remembers its `as_of_seq` for the statement.
    pub async fn balance(&mut self) {
        let path = format!("/v1/wallets/{}/balance", self.wallet.public_hex());
        if let Ok((200, body)) = self.signed(&path).await {
            let seq = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["as_of_seq"].as_u64());
            if self.balance_seq == 0 {
                self.balance_seq = seq.unwrap_or(0);
            }
        }
    }

    /// Reads the wallet's statement from the first balance read on, every page.
    pub async fn statement(&mut self) {
        let mut after = self.balance_seq;
        for _ in 0..20 {
            let path = format!(
                "/v1/wallets/{}/statement?after={after}&limit=1000",
                self.wallet.public_hex()
            );
            let Ok((200, body)) = self.signed(&path).await else {
                return;
            };
            match serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["next_after"].as_u64())
            {
                Some(next) if next > after => after = next,
                _ => return,
            }
        }
    }

    async fn signed(&self, path: &str) -> Result<(u16, String), WireError> {
        http_get_signed(
            &self.ctx.target.http_base,
            path,
            &self.wallet,
            self.ctx.journal,
            Some(&self.ctx.spec.id),
            self.until(3000),
        )
        .await
    }

    /// Polls `/v1/health` every `every` (keeping connections read) until worker `w` is listed
    /// as `want`, for at most `ms`.
    pub async fn poll_health(&mut self, w: usize, want: &str, ms: u64, every: Duration) {
        let until = self.until(ms);
        let id = self.workers[w].worker_id.clone();
        loop {
            let got = http_get(
                &self.ctx.target.http_base,
                "/v1/health",
                self.ctx.journal,
                Some(&self.ctx.spec.id),
                self.until(2000),
            )
            .await
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|h| {
                h["workers"].as_array()?.iter().find_map(|x| {
                    (x["worker_id"].as_str() == Some(id.as_str()))
                        .then(|| x["state"].as_str().unwrap_or("").to_owned())
                })
            });
            if got.as_deref() == Some(want) || Instant::now() >= until {
                return;
            }
            let next = (Instant::now() + every).min(until);
            self.pump_until(next, |_| false).await;
        }
    }

    /// Pumps until `done` holds or `until`; returns whether it held.
    pub async fn pump_until(&mut self, until: Instant, done: impl Fn(&Self) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            self.pump_once(until).await;
        }
    }

    /// Sends due heartbeats, then waits for one frame on any connection (or the next heartbeat,
    /// or `until`) and files it.
    async fn pump_once(&mut self, until: Instant) {
        self.beat().await;
        let wake = self
            .workers
            .iter()
            .filter(|w| w.beating && w.conn.is_some())
            .map(|w| w.next_beat)
            .fold(until, Instant::min);
        let mut slots = self.workers.iter_mut().map(|w| w.conn.as_mut());
        let (w0, w1) = (slots.next().flatten(), slots.next().flatten());
        let (side, got) = tokio::select! {
            r = recv(self.client.as_mut(), wake) => (None, r),
            r = recv(w0, wake) => (Some(0), r),
            r = recv(w1, wake) => (Some(1), r),
        };
        match (side, got) {
            (_, None) | (_, Some(Err(WireError::Timeout(..)))) => {}
            (None, Some(Err(_))) => self.client = None,
            (Some(w), Some(Err(_))) => self.workers[w].conn = None,
            (None, Some(Ok(r))) => self.client_events.push(r),
            (Some(w), Some(Ok(r))) => self.worker_frame(w, r).await,
        }
    }

    async fn worker_frame(&mut self, w: usize, r: Received) {
        match r.kind() {
            Some("task.receipt") => {
                if let Some(corr) = r.corr() {
                    self.receipts.insert(corr.to_owned(), r);
                }
            }
            Some("task.cancel") => {
                let task = r.body("task_id").and_then(Value::as_str).map(str::to_owned);
                let epoch = r.body("epoch").and_then(Value::as_u64).unwrap_or(0);
                if let Some(task) = task {
                    self.workers[w].running.remove(&(task.clone(), epoch));
                    self.cancels.push((task, epoch));
                }
            }
            Some("task.assign") => {
                let Some(ev) = r.event.as_ref() else { return };
                let body = &ev["body"];
                let a = Assign {
                    worker: w,
                    id: text(ev, "id"),
                    task_id: text(body, "task_id"),
                    attempt: body["attempt"].as_u64().unwrap_or(0),
                    epoch: body["epoch"].as_u64().unwrap_or(0),
                    nonce: text(&body["input"], "nonce"),
                };
                self.workers[w].running.insert((a.task_id.clone(), a.epoch));
                let ours = self.nonces.contains(&a.nonce);
                match (ours, self.auto) {
                    // Someone else's probe (an unpinned one): serve it like a good worker.
                    (false, _) | (true, Some(Auto::Answer)) => {
                        self.answer(&a, None).await;
                    }
                    (true, Some(Auto::Fail(code, retryable))) => {
                        self.fail(&a, code, retryable).await;
                    }
                    (true, None) => self.assigns.push_back(a),
                }
            }
            _ => {}
        }
    }

    async fn beat(&mut self) {
        let now = Instant::now();
        let deadline = self.until(1000);
        for w in &mut self.workers {
            if !w.beating || now < w.next_beat {
                continue;
            }
            w.next_beat = now + w.beat_every;
            let running = w.running.len() as u64;
            if let Some(conn) = w.conn.as_mut() {
                let beat = event(
                    "worker.heartbeat",
                    None,
                    json!({"running": running, "capacity": CONCURRENCY, "state": "ready"}),
                );
                let _ = conn.send_event(&beat, deadline).await;
            }
        }
    }

    /// Closes every connection.
    pub async fn finish(mut self) {
        for w in 0..self.workers.len() {
            self.close_worker(w).await;
        }
        if let Some(c) = self.client.take() {
            c.close().await;
        }
    }
}

async fn recv(conn: Option<&mut Conn>, wake: Instant) -> Option<Result<Received, WireError>> {
    match conn {
        Some(c) => Some(c.next_frame(wake).await),
        None => {
            tokio::time::sleep_until(wake).await;
            None
        }
    }
}

/// A wallet with money: a fresh one funded by the sysop when the harness has the sysop's key,
/// else the manifest's funded wallet.
async fn fund(ctx: &Ctx<'_>, amount: u64) -> Result<Identity, StageError> {
    let Some(sysop) = ctx.target.sysop.as_ref() else {
        return ctx.target.funded_wallet.clone().ok_or_else(|| {
            StageError::Skip(
                "no money to pay for probes: give `credentials.sysop_secret` or `credentials.wallet_secret` in the manifest".into(),
            )
        });
    };
    let wallet =
        Identity::generate().map_err(|e| StageError::Abort(format!("no randomness: {e}")))?;
    let (mut conn, _) = login(
        &ctx.client_url(),
        sysop,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    .map_err(wire("opening the sysop's session"))?;
    let mint = event(
        "wallet.mint",
        None,
        json!({"wallet": wallet.public_hex(), "amount": amount.max(PROBE_COST),
               "idempotency_key": wire::new_id(), "memo": "mtor-cert workers suite"}),
    );
    let reply = conn
        .request(&mint, ctx.within(5000))
        .await
        .map_err(wire("wallet.mint"))?;
    conn.close().await;
    if reply.kind() != Some("wallet.minted") {
        return Err(StageError::Abort(format!(
            "wallet.mint was answered by {}",
            reply.event.map(|e| e.to_string()).unwrap_or_default()
        )));
    }
    Ok(wallet)
}

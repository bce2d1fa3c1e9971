//! Case drivers: the code that acts on the realm for each case kind and records what happened.
//!
//! A driver never decides a verdict; it leaves markers (`mark:`), aborts (`abort:`) and skips
//! (`skip:`) in the journal, and [`crate::checker::check`] judges from the records. A driver that
//! fails half-way records why and returns; the run goes on.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::checker::{ABORT, MARK, SKIP};
use crate::journal::{Entry, Journal};
use crate::plan::CaseSpec;
use crate::target::Target;
use crate::wire::{self, event, http_get, login, Conn, Identity};

/// The case kinds this harness version can run.
pub const KINDS: &[&str] = &[
    "malformed-frame",
    "session-forgery",
    "all-events-valid",
    "http-endpoint",
    "health-reflects-worker",
    "generated-events",
    crate::scripted::KIND,
    crate::recovery::KIND,
    crate::recovery::KIND_PROCESS,
    crate::worker_faults::KIND,
    crate::tokens::KIND,
    crate::audit::KIND,
    crate::load::KIND,
    crate::security::KIND,
    crate::metrics::KIND,
    crate::stateless::KIND,
    crate::injection::KIND,
];

/// What a driver needs.
pub struct Ctx<'a> {
    /// The realm.
    pub target: &'a Target,
    /// The run's journal.
    pub journal: &'a Journal,
    /// The case.
    pub spec: &'a CaseSpec,
    /// When the case's budget runs out.
    pub deadline: Instant,
    /// The run's seed mixed with the case id, for reproducible inputs.
    pub seed: u64,
    /// The run's own seed (`--seed`), for reproduce commands and replay files.
    pub run_seed: u64,
}

impl Ctx<'_> {
    pub(crate) fn note(&self, text: String) -> u64 {
        self.journal.log(Some(&self.spec.id), Entry::Note { text })
    }

    pub(crate) fn mark(&self, name: &str, value: &str) -> u64 {
        self.note(format!("{MARK}{name}:{value}"))
    }

    pub(crate) fn abort(&self, why: impl std::fmt::Display) {
        self.note(format!("{ABORT} {why}"));
    }

    pub(crate) fn skip(&self, why: impl std::fmt::Display) {
        self.note(format!("{SKIP} {why}"));
    }

    /// A deadline `ms` from now, but never past the case's budget.
    pub(crate) fn within(&self, ms: u64) -> Instant {
        (Instant::now() + Duration::from_millis(ms)).min(self.deadline)
    }

    pub(crate) fn client_url(&self) -> String {
        format!("{}/v1/client", self.target.ws_base)
    }

    fn str_param(&self, key: &str) -> Option<&str> {
        self.spec.params.get(key).and_then(|v| v.as_str())
    }

    fn int_param(&self, key: &str) -> Option<i64> {
        self.spec.params.get(key).and_then(|v| v.as_integer())
    }
}

/// Runs the driver of `ctx.spec.kind`. Every outcome is in the journal.
pub async fn drive(ctx: &Ctx<'_>) {
    match ctx.spec.kind.as_str() {
        "malformed-frame" => malformed_frame(ctx).await,
        "session-forgery" => session_forgery(ctx).await,
        // Judged over the whole journal; nothing to do on the wire.
        "all-events-valid" => {}
        "http-endpoint" => {
            let path = ctx.str_param("path").unwrap_or("/");
            let _ = http_get(
                &ctx.target.http_base,
                path,
                ctx.journal,
                Some(&ctx.spec.id),
                ctx.deadline,
            )
            .await;
        }
        "health-reflects-worker" => health_reflects_worker(ctx).await,
        "generated-events" => crate::generate::drive(ctx).await,
        crate::scripted::KIND => crate::scripted::drive(ctx).await,
        crate::recovery::KIND | crate::recovery::KIND_PROCESS => crate::recovery::drive(ctx).await,
        crate::worker_faults::KIND => crate::worker_faults::drive(ctx).await,
        crate::tokens::KIND => crate::tokens::drive(ctx).await,
        crate::audit::KIND => crate::audit::drive(ctx).await,
        crate::load::KIND => crate::load::drive(ctx).await,
        crate::security::KIND => crate::security::drive(ctx).await,
        crate::metrics::KIND => crate::metrics::drive(ctx).await,
        crate::stateless::KIND => crate::stateless::drive(ctx).await,
        crate::injection::KIND => crate::injection::drive(ctx).await,
        other => ctx.abort(format!("this harness has no driver for kind `{other}`")),
    }
}

fn fill(template: &str, id: &str) -> String {
    template
        .replace("{id}", id)
        .replace("{ts}", &wire::now_rfc3339())
}

/// Builds a JSON document nested `depth` levels deep inside an otherwise valid event body.
fn deep_event(depth: usize, id: &str) -> String {
    let mut nested = String::from("0");
    for _ in 0..depth {
        nested = format!("[{nested}]");
    }
    format!(
        "{{\"proto\":\"MTOR/1\",\"type\":\"intent.fetch\",\"id\":\"{id}\",\"ts\":\"{}\",\"corr\":null,\"body\":{{\"intent_id\":\"x\",\"deep\":{nested}}}}}",
        wire::now_rfc3339()
    )
}

async fn malformed_frame(ctx: &Ctx<'_>) {
    let url = ctx.client_url();
    let mut conn = if ctx.spec.params.get("login").and_then(|v| v.as_bool()) == Some(false) {
        match Conn::open(&url, ctx.journal, Some(&ctx.spec.id), ctx.within(5000)).await {
            Ok(c) => c,
            Err(e) => return ctx.abort(e),
        }
    } else {
        let who = match Identity::generate() {
            Ok(w) => w,
            Err(e) => return ctx.abort(format!("no randomness for a key: {e}")),
        };
        match login(
            &url,
            &who,
            ctx.journal,
            Some(&ctx.spec.id),
            ctx.within(5000),
        )
        .await
        {
            Ok((c, _)) => c,
            Err(e) => return ctx.abort(format!("could not open a session: {e}")),
        }
    };
    let id = wire::new_id();
    let send = if let Some(text) = ctx.str_param("text") {
        ctx.mark(
            "malformed",
            &format!(
                "{}:{}",
                conn.id,
                if text.contains("{id}") {
                    id.as_str()
                } else {
                    ""
                }
            ),
        );
        conn.send_text(&fill(text, &id), ctx.within(3000)).await
    } else if let Some(h) = ctx.str_param("hex") {
        let bytes = match hex::decode(h) {
            Ok(b) => b,
            Err(e) => return ctx.abort(format!("plan parameter `hex` is not hex: {e}")),
        };
        ctx.mark("malformed", &format!("{}:", conn.id));
        if ctx.spec.params.get("binary").and_then(|v| v.as_bool()) == Some(true) {
            conn.send_binary(&bytes, ctx.within(3000)).await
        } else {
            // Invalid UTF-8 in a text frame cannot be sent through a conforming client library,
            // so a raw-bytes text frame is sent as binary with the same bytes when asked.
            conn.send_binary(&bytes, ctx.within(3000)).await
        }
    } else if let Some(size) = ctx.int_param("oversize_bytes") {
        let size = usize::try_from(size).unwrap_or(0);
        let pad = "a".repeat(size);
        let text = format!(
            "{{\"proto\":\"MTOR/1\",\"type\":\"intent.fetch\",\"id\":\"{id}\",\"ts\":\"{}\",\"corr\":null,\"body\":{{\"intent_id\":\"{pad}\"}}}}",
            wire::now_rfc3339()
        );
        ctx.mark("malformed", &format!("{}:", conn.id));
        conn.send_text(&text, ctx.within(10_000)).await
    } else if let Some(depth) = ctx.int_param("depth") {
        ctx.mark("malformed", &format!("{}:", conn.id));
        conn.send_text(
            &deep_event(usize::try_from(depth).unwrap_or(0), &id),
            ctx.within(3000),
        )
        .await
    } else {
        return ctx.abort("plan gives none of text, hex, oversize_bytes, depth");
    };
    if let Err(e) = send {
        ctx.note(format!("sending the bad frame failed: {e}"));
    }
    // Give the realm time to answer the bad frame before probing the connection again.
    let _ = conn
        .wait_for("an error event", ctx.within(3000), |r| {
            matches!(r.kind(), Some("error") | Some("intent.rejected"))
        })
        .await;
    let follow = event("intent.fetch", None, json!({ "intent_id": wire::new_id() }));
    ctx.mark("follow-up", follow["id"].as_str().unwrap_or_default());
    let _ = conn.request(&follow, ctx.within(3000)).await;
    conn.close().await;
}

async fn session_forgery(ctx: &Ctx<'_>) {
    let url = ctx.client_url();
    let mut conn = match Conn::open(&url, ctx.journal, Some(&ctx.spec.id), ctx.within(5000)).await {
        Ok(c) => c,
        Err(e) => return ctx.abort(e),
    };
    let (victim, forger) = match (Identity::generate(), Identity::generate()) {
        (Ok(v), Ok(f)) => (v, f),
        _ => return ctx.abort("no randomness for keys"),
    };
    let hello = event(
        "session.hello",
        None,
        json!({ "wallet": victim.public_hex(), "client": "mtor-cert" }),
    );
    let challenge = match conn.request(&hello, ctx.within(3000)).await {
        Ok(c) => c,
        Err(e) => return ctx.abort(format!("no challenge: {e}")),
    };
    let nonce = challenge
        .body("nonce")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let realm = challenge
        .body("realm_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // The forger signs the victim's challenge with its own key.
    let message = format!("MTOR/1 session\n{realm}\n{nonce}\n{}", victim.public_hex());
    let proof = event(
        "session.proof",
        challenge.event.as_ref().and_then(|e| e["id"].as_str()),
        json!({ "signature": forger.sign_hex(message.as_bytes()) }),
    );
    ctx.mark("forged-proof", &conn.id.to_string());
    let _ = conn.request(&proof, ctx.within(3000)).await;
    conn.close().await;
}

async fn poll_health(ctx: &Ctx<'_>) -> Option<Value> {
    let deadline = ctx.within(2000);
    http_get(
        &ctx.target.http_base,
        "/v1/health",
        ctx.journal,
        Some(&ctx.spec.id),
        deadline,
    )
    .await
    .ok()
    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
}

async fn health_reflects_worker(ctx: &Ctx<'_>) {
    let Some(token) = ctx.target.enrol_token.clone() else {
        return ctx.skip("no enrolment token: give `credentials.enrol_token` in the manifest");
    };
    let url = format!("{}/v1/worker", ctx.target.ws_base);
    let mut conn = match Conn::open(&url, ctx.journal, Some(&ctx.spec.id), ctx.within(5000)).await {
        Ok(c) => c,
        Err(e) => return ctx.abort(e),
    };
    let key = match Identity::generate() {
        Ok(k) => k,
        Err(e) => return ctx.abort(e),
    };
    let register = event(
        "worker.register",
        None,
        json!({
            "token": token,
            "worker_key": key.public_hex(),
            "intents": ["cert.probe"],
            "concurrency": 1,
            "software": concat!("mtor-cert/", env!("CARGO_PKG_VERSION")),
        }),
    );
    let challenge = match conn.request(&register, ctx.within(3000)).await {
        Ok(c) if c.kind() == Some("session.challenge") => c,
        Ok(other) => return ctx.abort(format!("worker.register answered by {:?}", other.kind())),
        Err(e) => return ctx.abort(format!("no answer to worker.register: {e}")),
    };
    let nonce = challenge
        .body("nonce")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let realm = challenge
        .body("realm_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let proof = event(
        "session.proof",
        challenge.event.as_ref().and_then(|e| e["id"].as_str()),
        json!({ "signature": key.session_proof(&realm, &nonce) }),
    );
    let enrolled = match conn.request(&proof, ctx.within(3000)).await {
        Ok(e) if e.kind() == Some("worker.enrolled") => e,
        Ok(other) => return ctx.abort(format!("worker proof answered by {:?}", other.kind())),
        Err(e) => return ctx.abort(format!("no answer to the worker's proof: {e}")),
    };
    let worker_id = enrolled
        .body("worker_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let interval = enrolled
        .body("heartbeat_interval_ms")
        .and_then(Value::as_u64)
        .unwrap_or(1000)
        .clamp(100, 10_000);
    ctx.mark("enrolled", &worker_id);
    let window = u64::try_from(ctx.int_param("window_ms").unwrap_or(2000)).unwrap_or(2000);
    let listed_healthy = |health: &Option<Value>, id: &str| {
        health
            .as_ref()
            .and_then(|h| h["workers"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|w| w["worker_id"].as_str() == Some(id) && w["state"] == "healthy")
    };
    // Phase 1: keep the worker alive with heartbeats and poll until health lists it.
    let until = Instant::now() + Duration::from_millis(window + 1000);
    let mut next_beat = Instant::now();
    loop {
        if Instant::now() >= next_beat {
            let beat = event(
                "worker.heartbeat",
                None,
                json!({ "running": 0, "capacity": 1, "state": "ready" }),
            );
            let _ = conn.send_event(&beat, ctx.within(1000)).await;
            next_beat = Instant::now() + Duration::from_millis(interval / 2);
        }
        if listed_healthy(&poll_health(ctx).await, &worker_id)
            || Instant::now() >= until.min(ctx.deadline)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Phase 2: disconnect and poll until health no longer calls it healthy.
    conn.close().await;
    ctx.mark("disconnected", &worker_id);
    let until = Instant::now() + Duration::from_millis(window + 1000);
    loop {
        if !listed_healthy(&poll_health(ctx).await, &worker_id)
            || Instant::now() >= until.min(ctx.deadline)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Lease fencing against a scripted worker on a real socket: a lapsed lease is re-dispatched with
//! a greater epoch, stale and duplicate reports are refused by `task.receipt`, a task that never
//! finishes is dead-lettered and refunded, and a running intent can be cancelled.

mod common;

use std::time::Duration;

use common::*;
use mtor_realm::identity::{self, KeyPair};
use serde_json::{json, Value};

/// A worker driven by the test, heartbeating while it waits.
struct FakeWorker {
    conn: Conn,
    /// The worker id the realm gave it.
    id: String,
    last_beat: tokio::time::Instant,
    /// Events read but not yet consumed by `expect` / `report`.
    backlog: std::collections::VecDeque<Value>,
}

impl FakeWorker {
    async fn enrol(ws: &str) -> Self {
        Self::enrol_as(ws, &KeyPair::generate().unwrap()).await
    }

    /// Enrols with a given key (a worker process that restarts keeps its key).
    async fn enrol_as(ws: &str, key: &KeyPair) -> Self {
        let mut conn = Conn::open(&format!("{ws}/v1/worker")).await;
        let reg = conn
            .send(
                "worker.register",
                json!({"token": TOKEN, "worker_key": key.public_hex(),
                                             "intents": ["cert.probe"], "concurrency": 4}),
            )
            .await;
        let ch = conn.answer(&reg, 5).await;
        assert_eq!(ch["type"], "session.challenge", "{ch}");
        let msg = identity::session_message(
            ch["body"]["realm_id"].as_str().unwrap(),
            ch["body"]["nonce"].as_str().unwrap(),
            &key.public_hex(),
        );
        let proof = conn
            .send(
                "session.proof",
                json!({"signature": key.sign_hex(msg.as_bytes())}),
            )
            .await;
        let enrolled = conn.answer(&proof, 5).await;
        assert_eq!(enrolled["type"], "worker.enrolled", "{enrolled}");
        Self {
            id: enrolled["body"]["worker_id"].as_str().unwrap().to_owned(),
            conn,
            last_beat: tokio::time::Instant::now(),
            backlog: Default::default(),
        }
    }

    async fn beat_if_due(&mut self) {
        if self.last_beat.elapsed() >= Duration::from_millis(200) {
            self.conn
                .send(
                    "worker.heartbeat",
                    json!({"running": 0, "capacity": 4, "state": "ready"}),
                )
                .await;
            self.last_beat = tokio::time::Instant::now();
        }
    }

    /// Waits (heartbeating) for the first event matching `pred`, keeping the others.
    async fn wait_for(&mut self, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(i) = self.backlog.iter().position(&pred) {
                if let Some(ev) = self.backlog.remove(i) {
                    return ev;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no matching event within {secs}s; seen {:?}",
                self.conn.seen
            );
            self.beat_if_due().await;
            let more = self.conn.drain(100).await;
            self.backlog.extend(more);
        }
    }

    /// Waits for an event of `kind`.
    async fn expect(&mut self, kind: &str, secs: u64) -> Value {
        let kind = kind.to_owned();
        self.wait_for(secs, move |ev| ev["type"] == kind.as_str())
            .await
    }

    async fn report(&mut self, kind: &str, assign: &Value, extra: Value) -> Value {
        let b = &assign["body"];
        let mut body =
            json!({"task_id": b["task_id"], "attempt": b["attempt"], "epoch": b["epoch"]});
        if let (Some(o), Value::Object(e)) = (body.as_object_mut(), extra) {
            o.extend(e);
        }
        let id = self.conn.send(kind, body).await;
        self.wait_for(5, move |ev| {
            ev["type"] == "task.receipt" && ev["corr"] == id.as_str()
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_leases_are_fenced_redispatched_and_dead_lettered() {
    let data = temp_dir("leases");
    let sysop = KeyPair::generate().unwrap();
    let realm = RealmProc::start(&data, 0, &["--lease-ms", "600"], sysop.clone());
    let ws = realm.ws();
    let mut w = FakeWorker::enrol(&ws).await;

    let wallet = KeyPair::generate().unwrap();
    let mut admin = Conn::client(&ws, &sysop).await;
    admin.mint(&wallet.public_hex(), 10_000).await;
    let mut c = Conn::client(&ws, &wallet).await;

    // 1. Lapse → re-dispatch with attempt 2 and a greater epoch; stale reports are refused.
    let acc = c.probe("fenced", json!({}), 1_000).await;
    let intent_id = acc["body"]["intent_id"].as_str().unwrap().to_owned();
    let first = w.expect("task.assign", 5).await;
    assert_eq!(first["body"]["task_id"], intent_id.as_str());
    assert_eq!(first["body"]["attempt"], 1);
    let cancel = w.expect("task.cancel", 5).await;
    assert_eq!(cancel["body"]["reason"], "lease_lapsed");
    assert_eq!(cancel["body"]["epoch"], first["body"]["epoch"]);
    let second = w.expect("task.assign", 5).await;
    assert_eq!(second["body"]["attempt"], 2);
    assert!(second["body"]["epoch"].as_u64() > first["body"]["epoch"].as_u64());

    let output = json!({"output": {"nonce": "fenced", "digest": digest("fenced"), "worker_id": w.id}, "units": 1});
    let stale = w.report("task.result", &first, output.clone()).await;
    assert_eq!(
        (
            stale["body"]["status"].as_str(),
            stale["body"]["code"].as_str()
        ),
        (Some("refused"), Some("STALE_EPOCH"))
    );
    let stale = w
        .report("task.progress", &first, json!({"fraction": 0.5}))
        .await;
    assert_eq!(stale["body"]["code"], "STALE_EPOCH");
    // A wrong digest from the current holder is refused and costs the attempt.
    let wrong = json!({"output": {"nonce": "fenced", "digest": digest("other"), "worker_id": w.id}, "units": 1});
    let bad = w.report("task.result", &second, wrong).await;
    assert_eq!(bad["body"]["code"], "INVALID_EVENT", "{bad}");
    let third = w.expect("task.assign", 5).await;
    assert_eq!(third["body"]["attempt"], 3);
    let ok = w.report("task.result", &third, output.clone()).await;
    assert_eq!(ok["body"]["status"], "accepted", "{ok}");
    let dup = w.report("task.result", &third, output).await;
    assert_eq!(dup["body"]["code"], "DUPLICATE");

    let result = c.terminal(&intent_id, 5).await;
    assert_eq!(result["type"], "intent.result");
    assert_eq!(result["body"]["attempts"], 3);
    assert_eq!(result["body"]["cost"], 1_000);

    // 2. A task that never finishes is dead-lettered after max_attempts (3) and refunded.
    let acc = c.probe("never", json!({}), 2_000).await;
    let dead_id = acc["body"]["intent_id"].as_str().unwrap().to_owned();
    for attempt in 1..=3 {
        let a = w.expect("task.assign", 5).await;
        assert_eq!(a["body"]["attempt"], attempt);
    }
    let failed = c.terminal(&dead_id, 10).await;
    assert_eq!(failed["type"], "intent.failed", "{failed}");
    assert_eq!(failed["body"]["code"], "DEAD_LETTERED");
    assert_eq!(failed["body"]["released"], 2_000);
    assert_eq!(failed["body"]["attempts"], 3);

    // 3. A running intent is cancelled: the worker is told, the hold released, late work refused.
    let acc = c.probe("cancel-me", json!({}), 1_500).await;
    let cancel_id = acc["body"]["intent_id"].as_str().unwrap().to_owned();
    let cid = cancel_id.clone();
    let a = w
        .wait_for(5, move |ev| {
            ev["type"] == "task.assign" && ev["body"]["task_id"] == cid.as_str()
        })
        .await;
    let req = c
        .send("intent.cancel", json!({"intent_id": cancel_id}))
        .await;
    let cancelled = c.answer(&req, 5).await;
    assert_eq!(cancelled["type"], "intent.cancelled", "{cancelled}");
    assert_eq!(cancelled["body"]["released"], 1_500);
    let cid = cancel_id.clone();
    let tc = w
        .wait_for(5, move |ev| {
            ev["type"] == "task.cancel"
                && ev["body"]["task_id"] == cid.as_str()
                && ev["body"]["reason"] != "lease_lapsed"
        })
        .await;
    assert_eq!(tc["body"]["reason"], "client_cancel");
    let late = w
        .report("task.result", &a, json!({"output": {}, "units": 1}))
        .await;
    assert_eq!(late["body"]["status"], "refused");
    let req = c
        .send("intent.cancel", json!({"intent_id": cancel_id}))
        .await;
    // Cancelling a terminal intent answers its status and moves no money (SQ-18).
    let again = c.answer(&req, 5).await;
    assert_eq!(again["type"], "intent.status", "{again}");
    assert_eq!(again["body"]["state"], "cancelled");
    let req = c
        .send("intent.cancel", json!({"intent_id": "no-such-intent"}))
        .await;
    assert_eq!(c.answer(&req, 5).await["body"]["code"], "NOT_FOUND");

    // Fetch reports each outcome.
    for (id, state) in [
        (&intent_id, "succeeded"),
        (&dead_id, "dead"),
        (&cancel_id, "cancelled"),
    ] {
        let req = c.send("intent.fetch", json!({"intent_id": id})).await;
        let st = c.answer(&req, 5).await;
        assert_eq!(st["body"]["state"], state, "{st}");
    }

    // Money: only the one success was charged.
    let (_, bal) = rest(
        &realm.addr,
        &format!("/v1/wallets/{}/balance", wallet.public_hex()),
        Some(&wallet),
    )
    .await;
    assert_eq!(
        (bal["available"].as_u64(), bal["held"].as_u64()),
        (Some(9_000), Some(0)),
        "{bal}"
    );
    let (_, audit) = rest(&realm.addr, "/v1/audit?limit=1000", Some(&sysop)).await;
    let recs = audit["records"].as_array().unwrap();
    assert!(recs
        .iter()
        .any(|r| r["kind"] == "intent.dead_lettered" && r["subject"] == dead_id.as_str()));
    assert!(recs.iter().filter(|r| r["kind"] == "lease.lapsed").count() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_probes_follow_their_key_and_a_lost_lease_goes_to_a_live_worker() {
    let data = temp_dir("pinned");
    let sysop = KeyPair::generate().unwrap();
    // A long lease: a task handed back to the worker that just left would only come back after
    // lease + grace, far beyond the waits below.
    let realm = RealmProc::start(&data, 0, &["--lease-ms", "8000"], sysop.clone());
    let ws = realm.ws();
    let key = KeyPair::generate().unwrap();
    let mut a = FakeWorker::enrol_as(&ws, &key).await;
    let mut other = FakeWorker::enrol(&ws).await;

    let wallet = KeyPair::generate().unwrap();
    let mut admin = Conn::client(&ws, &sysop).await;
    admin.mint(&wallet.public_hex(), 10_000).await;
    let mut c = Conn::client(&ws, &wallet).await;

    // PRB-6: a pin to a key no worker enrolled with is infeasible.
    let stranger = KeyPair::generate().unwrap().public_hex();
    let refused = c
        .probe("nobody", json!({"worker_key": stranger}), 1_000)
        .await;
    assert_eq!(refused["type"], "intent.rejected", "{refused}");
    assert_eq!(refused["body"]["code"], "INFEASIBLE");

    // The pinned probe goes to A, never to the idle other worker.
    let acc = c
        .probe("pinned", json!({"worker_key": key.public_hex()}), 1_000)
        .await;
    let intent_id = acc["body"]["intent_id"].as_str().unwrap().to_owned();
    let first = a.expect("task.assign", 5).await;
    assert_eq!(first["body"]["attempt"], 1);

    // A's connection drops; the same key comes back. Attempt 2 must reach it at once: not be
    // granted to the departed connection (which would cost an attempt and lease + grace).
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut back = FakeWorker::enrol_as(&ws, &key).await;
    let second = back.expect("task.assign", 3).await;
    assert_eq!(second["body"]["attempt"], 2, "{second}");
    assert!(second["body"]["epoch"].as_u64() > first["body"]["epoch"].as_u64());
    let output = json!({"output": {"nonce": "pinned", "digest": digest("pinned"), "worker_id": back.id}, "units": 1});
    let ok = back.report("task.result", &second, output).await;
    assert_eq!(ok["body"]["status"], "accepted", "{ok}");
    let result = c.terminal(&intent_id, 5).await;
    assert_eq!(result["body"]["attempts"], 2, "{result}");
    let stray = other.conn.drain(300).await;
    assert!(
        stray.iter().all(|ev| ev["type"] != "task.assign"),
        "the pinned probe reached another key's worker: {stray:?}"
    );
}

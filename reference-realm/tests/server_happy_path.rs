//! `mtor-realm up` serves cert.probe end to end over real sockets: session auth, admission with a
//! durable reservation, dispatch to a built-in worker, result, capture, audit, REST views, and
//! fetch from a new session and after a restart.

mod common;

use common::*;
use mtor_realm::identity::KeyPair;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_probe_end_to_end_with_ledger_audit_and_fetch() {
    let data = temp_dir("happy");
    let sysop = KeyPair::generate().unwrap();
    let realm = RealmProc::start(&data, 1, &[], sysop.clone());
    let ws = realm.ws();

    // REST views are schema-valid and truthful.
    let (status, manifest) = rest(&realm.addr, "/v1/manifest", None).await;
    assert_eq!(status, 200);
    assert_valid("rest/manifest", &manifest);
    assert_eq!(manifest["realm_id"], manifest["public_key"]);

    let wallet = KeyPair::generate().unwrap();
    let mut admin = Conn::client(&ws, &sysop).await;
    let minted = admin.mint(&wallet.public_hex(), 10_000).await;
    assert_eq!(minted["body"]["balance"], 10_000);

    let mut c = Conn::client(&ws, &wallet).await;
    // A session of the same wallet that is not attached to the intent gets none of its events.
    let mut bystander = Conn::client(&ws, &wallet).await;

    // Wait for the built-in worker: health must report it.
    let mut healthy = false;
    for _ in 0..50 {
        let (_, h) = rest(&realm.addr, "/v1/health", None).await;
        assert_valid("rest/health", &h);
        if h["status"] == "ok" && h["workers"].as_array().is_some_and(|w| !w.is_empty()) {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "the built-in worker never became healthy");

    let accepted = c.probe("hello-realm", json!({"work_ms": 300}), 2_500).await;
    assert_eq!(accepted["type"], "intent.accepted", "{accepted}");
    assert_eq!(accepted["body"]["reserved"], 2_500);
    let intent_id = accepted["body"]["intent_id"].as_str().unwrap().to_owned();
    // A second session resumes the intent: it gets its status now and its result later.
    let (mut other, hello_id) =
        Conn::client_resume(&ws, &wallet, &[&intent_id, "unknown-intent"]).await;
    let status = other.answer(&hello_id, 5).await;
    assert_eq!(status["type"], "intent.status", "{status}");
    assert_eq!(status["body"]["intent_id"], intent_id.as_str());

    let result = c.terminal(&intent_id, 15).await;
    assert_eq!(result["type"], "intent.result", "{result}");
    let body = &result["body"];
    assert_eq!(body["output"]["nonce"], "hello-realm");
    assert_eq!(body["output"]["digest"], digest("hello-realm"));
    assert_valid("intents/cert.probe.output", &body["output"]);
    assert_eq!(body["cost"], 1_000);
    assert_eq!(body["released"], 1_500);
    assert_eq!(body["attempts"], 1);
    let result2 = other.terminal(&intent_id, 5).await;
    assert_eq!(result2["body"], result["body"]);
    let extra = other.drain(300).await;
    assert!(
        !extra.iter().any(|e| e["type"] == "intent.result"),
        "duplicate result: {extra:?}"
    );
    // The unknown resume id produced nothing; the bystander saw nothing of the intent.
    assert_eq!(
        other
            .seen
            .iter()
            .filter(|e| e["corr"] == hello_id.as_str())
            .count(),
        2,
        "{:?}",
        other.seen
    );
    let seen_by_bystander = bystander.drain(200).await;
    assert!(seen_by_bystander.is_empty(), "{seen_by_bystander:?}");

    // Money: charged exactly the cost, nothing left on hold.
    let (status, bal) = rest(
        &realm.addr,
        &format!("/v1/wallets/{}/balance", wallet.public_hex()),
        Some(&wallet),
    )
    .await;
    assert_eq!(status, 200, "{bal}");
    assert_valid("rest/balance", &bal);
    assert_eq!(
        (bal["available"].as_u64(), bal["held"].as_u64()),
        (Some(9_000), Some(0))
    );
    // Another wallet may not read it.
    let stranger = KeyPair::generate().unwrap();
    let (status, err) = rest(
        &realm.addr,
        &format!("/v1/wallets/{}/balance", wallet.public_hex()),
        Some(&stranger),
    )
    .await;
    assert_eq!(status, 403);
    assert_valid("rest/error", &err);
    let (status, st) = rest(
        &realm.addr,
        &format!(
            "/v1/wallets/{}/statement?after=0&limit=50",
            wallet.public_hex()
        ),
        Some(&wallet),
    )
    .await;
    assert_eq!(status, 200);
    assert_valid("rest/statement", &st);
    let kinds: Vec<&str> = st["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["mint", "reserve", "capture", "release"]);

    // Audit: the critical events are recorded and the chain links.
    let (status, audit) = rest(&realm.addr, "/v1/audit?after=0&limit=1000", Some(&sysop)).await;
    assert_eq!(status, 200, "{audit}");
    assert_valid("rest/audit-export", &audit);
    let records = audit["records"].as_array().unwrap();
    for kind in [
        "realm.started",
        "worker.joined",
        "sysop.mint",
        "intent.admitted",
        "task.dispatched",
        "ledger.capture",
        "intent.completed",
    ] {
        assert!(
            records.iter().any(|r| r["kind"] == kind),
            "no {kind} audit record"
        );
    }
    for pair in records.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let (status, _) = rest(&realm.addr, "/v1/audit", Some(&wallet)).await;
    assert_eq!(status, 403, "a plain wallet must not export the audit log");
    let (status, ledger) = rest(&realm.addr, "/v1/ledger?limit=100", Some(&sysop)).await;
    assert_eq!(status, 200);
    assert_valid("rest/ledger-export", &ledger);

    // analyze-signal on the CPU path: the worked example of the spec, priced 10 per 1024 samples.
    let signal = json!({
        "sample_rate_hz": 48000, "encoding": "cf32le-base64",
        "samples": "iLl8P3t70TwUIDI/ifwwP713Pr0NRX0/a8kmv8tyOj9bunK/r+ZLPF73L7+spTK/1JqqvYMNdb9GgDs/bKIuv71Zaj/7krK93KEpP8oGLz+rOHo8jml/P9JZLr96zCw/cQx8vxhyoTxdez2/8ggfv7n84zynrXC/PhQtPzJ8Pr+hmHs/V1yuuyUcPT//Mjg/kDy3vGTAcz/Srju/qqVEP70rhb+hgUg8VY8vv4oWSL891x47s0dvv0g8Gz/AIjm/NKR+P/pfJ73MYjs/3zg0Pxj7lb1YTIU/rHMsv0kgQT9zj22/AGCUPB1+M78QpkW/5hX8PE7qg7+JOS8/aDVFvw==",
        "fft_len": 16, "window": "hann", "averages": 2, "peaks": 4, "threshold_db": 6
    });
    let id = c
        .send("intent.submit", json!({"intent": "analyze-signal", "input": signal, "max_cost": 50, "idempotency_key": "sig-1"}))
        .await;
    let acc = c.answer(&id, 5).await;
    assert_eq!(acc["type"], "intent.accepted", "{acc}");
    let sig_id = acc["body"]["intent_id"].as_str().unwrap().to_owned();
    let done = c.terminal(&sig_id, 15).await;
    assert_eq!(done["type"], "intent.result", "{done}");
    assert_valid("intents/analyze-signal.output", &done["body"]["output"]);
    assert_eq!(done["body"]["cost"], 10);
    assert_eq!(done["body"]["output"]["peaks"][0]["bin"], 2);
    let (_, bal) = rest(
        &realm.addr,
        &format!("/v1/wallets/{}/balance", wallet.public_hex()),
        Some(&wallet),
    )
    .await;
    assert_eq!(bal["available"], 8_990, "{bal}");

    // Admission refusals.
    let low = c.probe("cheap", json!({}), 999).await;
    assert_eq!(
        (low["type"].as_str(), low["body"]["code"].as_str()),
        (Some("intent.rejected"), Some("COST_TOO_LOW"))
    );
    let poor = KeyPair::generate().unwrap();
    let mut p = Conn::client(&ws, &poor).await;
    let broke = p.probe("broke", json!({}), 1_000).await;
    assert_eq!(broke["body"]["code"], "INSUFFICIENT_FUNDS", "{broke}");
    let id = c.send("intent.submit", json!({"intent": "imagine", "input": {}, "max_cost": 5000, "idempotency_key": "k-imagine"})).await;
    let inf = c.answer(&id, 5).await;
    assert_eq!(inf["body"]["code"], "INFEASIBLE", "{inf}");
    let id = admin
        .send(
            "wallet.mint",
            json!({"wallet": wallet.public_hex(), "amount": 1, "idempotency_key": "x"}),
        )
        .await;
    let ok = admin.answer(&id, 5).await;
    assert_eq!(ok["type"], "wallet.minted");
    assert_eq!(ok["body"]["balance"], 8_991);
    let id = c
        .send(
            "wallet.mint",
            json!({"wallet": wallet.public_hex(), "amount": 1, "idempotency_key": "y"}),
        )
        .await;
    let forbidden = c.answer(&id, 5).await;
    assert_eq!(forbidden["body"]["code"], "FORBIDDEN");

    // Fetch from a brand-new session works.
    let mut fresh = Conn::client(&ws, &wallet).await;
    let id = fresh
        .send("intent.fetch", json!({"intent_id": intent_id}))
        .await;
    let status = fresh.answer(&id, 5).await;
    assert_eq!(status["type"], "intent.status", "{status}");
    assert_eq!(status["body"]["state"], "succeeded");
    assert_eq!(status["body"]["output"]["digest"], digest("hello-realm"));
    // Another wallet cannot see it.
    let id = p
        .send("intent.fetch", json!({"intent_id": intent_id}))
        .await;
    assert_eq!(p.answer(&id, 5).await["body"]["code"], "NOT_FOUND");

    // The metrics endpoint exposes the required metrics and counts what happened.
    let (status, ctype, metrics) = http_get(&realm.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/plain; version=0.0.4");
    for name in [
        "mtor_queue_depth",
        "mtor_intents_admitted_total",
        "mtor_intents_rejected_total",
        "mtor_tasks_dispatched_total",
        "mtor_tasks_redispatched_total",
        "mtor_intents_dead_lettered_total",
        "mtor_intent_latency_seconds",
        "mtor_ledger_commit_batch_size",
        "mtor_workers",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing"
        );
    }
    assert!(
        metrics.contains("mtor_intents_rejected_total{code=\"COST_TOO_LOW\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mtor_workers{state=\"healthy\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mtor_workers{state=\"draining\"} 0"),
        "{metrics}"
    );
    // Paging and method errors follow the REST error table.
    let (status, err) = rest(&realm.addr, "/v1/ledger?limit=0", Some(&sysop)).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("INVALID_EVENT")));
    let (status, _, _) = http_get(&realm.addr, "/v1/nothing-here").await;
    assert_eq!(status, 404);
    drop((c, other, admin, p, fresh, bystander));

    // Restart on the same data: the result is still there.
    let addr_before = realm.addr.clone();
    realm.stop();
    let realm = RealmProc::start(&data, 0, &[], sysop.clone());
    assert_ne!(realm.addr, "", "{addr_before}");
    let mut after = Conn::client(&realm.ws(), &wallet).await;
    let id = after
        .send("intent.fetch", json!({"intent_id": intent_id}))
        .await;
    let status: Value = after.answer(&id, 5).await;
    assert_eq!(status["body"]["state"], "succeeded", "{status}");
    assert_eq!(status["body"]["cost"], 1_000);
}

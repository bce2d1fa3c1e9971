//! Malformed frames get an `error` event with the right code and `ref`, and the same connection
//! stays usable: it still completes an intent afterwards.

mod common;

use common::*;
use mtor_realm::identity::KeyPair;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_answered_and_the_connection_survives() {
    let data = temp_dir("badframes");
    let sysop = KeyPair::generate().unwrap();
    let realm = RealmProc::start(&data, 1, &[], sysop.clone());
    let ws = realm.ws();

    // Before authentication: a submit is UNAUTHENTICATED, with ref = its id.
    let mut anon = Conn::open(&format!("{ws}/v1/client")).await;
    let id = anon
        .send("intent.submit", json!({"intent": "cert.probe", "input": {"nonce": "x"}, "max_cost": 1000, "idempotency_key": "k1"}))
        .await;
    let err = anon.next(5).await;
    assert_eq!(
        (err["type"].as_str(), err["body"]["code"].as_str()),
        (Some("error"), Some("UNAUTHENTICATED"))
    );
    assert_eq!(err["body"]["ref"], id.as_str());
    // A wrong signature is refused.
    let hello = anon
        .send(
            "session.hello",
            json!({"wallet": KeyPair::generate().unwrap().public_hex(), "client": "t"}),
        )
        .await;
    let _challenge = anon.answer(&hello, 5).await;
    let proof = anon
        .send("session.proof", json!({"signature": "ab".repeat(64)}))
        .await;
    assert_eq!(
        anon.answer(&proof, 5).await["body"]["code"],
        "BAD_SIGNATURE"
    );

    let wallet = KeyPair::generate().unwrap();
    let mut admin = Conn::client(&ws, &sysop).await;
    admin.mint(&wallet.public_hex(), 5_000).await;
    let mut c = Conn::client(&ws, &wallet).await;

    // Not JSON: BAD_JSON, ref null.
    c.send_text("{this is not json".to_owned()).await;
    let err = c.next(5).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["body"]["code"], "BAD_JSON");
    assert!(err["body"]["ref"].is_null());

    // Very deep nesting: TOO_DEEP, and the realm does not crash.
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    c.send_text(deep).await;
    assert_eq!(c.next(5).await["body"]["code"], "TOO_DEEP");
    // Deep and broken: "not JSON" outranks "too deep" (section 14.3).
    let broken = format!("{}{}", "[".repeat(200_000), "]".repeat(199_999));
    c.send_text(broken).await;
    assert_eq!(c.next(5).await["body"]["code"], "BAD_JSON");
    // Exactly max_depth (32, the envelope object included) is accepted.
    let mut nested = json!(1);
    for _ in 0..29 {
        nested = json!([nested]);
    }
    let accepted_depth = c
        .send("intent.submit", json!({"intent": "cert.probe", "input": {"nonce": "d", "x": nested}, "max_cost": 1000, "idempotency_key": "deep-ok"}))
        .await;
    let answer = c.answer(&accepted_depth, 5).await;
    assert_eq!(answer["type"], "intent.rejected", "{answer}");
    assert_eq!(
        answer["body"]["code"], "INVALID_EVENT",
        "input schema refuses the extra member"
    );
    // Session rules: a second hello is FORBIDDEN, a stray proof UNAUTHENTICATED.
    let id = c
        .send(
            "session.hello",
            json!({"wallet": wallet.public_hex(), "client": "again"}),
        )
        .await;
    assert_eq!(c.answer(&id, 5).await["body"]["code"], "FORBIDDEN");
    let id = c
        .send("session.proof", json!({"signature": "00".repeat(64)}))
        .await;
    assert_eq!(c.answer(&id, 5).await["body"]["code"], "UNAUTHENTICATED");

    // Wrong protocol version, unknown type, schema violation, wrong channel: each with its ref.
    let (id, text) = envelope("intent.fetch", json!({"intent_id": "abc"}));
    c.send_text(text.replace("MTOR/1", "MTOR/9")).await;
    let err = c.next(5).await;
    assert_eq!(
        (err["body"]["code"].as_str(), err["body"]["ref"].as_str()),
        (Some("UNSUPPORTED_PROTOCOL"), Some(id.as_str()))
    );
    let id = c.send("intent.teleport", json!({})).await;
    let err = c.next(5).await;
    assert_eq!(
        (err["body"]["code"].as_str(), err["body"]["ref"].as_str()),
        (Some("UNKNOWN_TYPE"), Some(id.as_str()))
    );
    let id = c.send("intent.submit", json!({"intent": "cert.probe", "input": {"nonce": "x"}, "max_cost": -5, "idempotency_key": "k"})).await;
    let err = c.next(5).await;
    assert_eq!(
        (err["body"]["code"].as_str(), err["body"]["ref"].as_str()),
        (Some("INVALID_EVENT"), Some(id.as_str()))
    );
    let id = c
        .send(
            "task.result",
            json!({"task_id": "t", "attempt": 1, "epoch": 1, "output": {}, "units": 1}),
        )
        .await;
    let err = c.next(5).await;
    assert_eq!(
        (err["body"]["code"].as_str(), err["body"]["ref"].as_str()),
        (Some("WRONG_CHANNEL"), Some(id.as_str()))
    );
    // Too large.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_100_000));
    c.send_text(big).await;
    assert_eq!(c.next(5).await["body"]["code"], "FRAME_TOO_LARGE");

    // The same connection still completes an intent.
    let accepted = c.probe("after-garbage", json!({}), 1_000).await;
    assert_eq!(accepted["type"], "intent.accepted", "{accepted}");
    let intent_id = accepted["body"]["intent_id"].as_str().unwrap().to_owned();
    let result = c.terminal(&intent_id, 15).await;
    assert_eq!(result["type"], "intent.result", "{result}");
    assert_eq!(result["body"]["output"]["digest"], digest("after-garbage"));

    // A resubmit with the same idempotency key and body is answered with the same intent; with
    // another body it is a conflict; neither charges again.
    let body = json!({"intent": "cert.probe", "input": {"nonce": "idem"}, "max_cost": 1000, "idempotency_key": "idem-1"});
    let a = c.send("intent.submit", body.clone()).await;
    let first = c.answer(&a, 5).await;
    let first_id = first["body"]["intent_id"].as_str().unwrap().to_owned();
    c.terminal(&first_id, 15).await;
    let b = c.send("intent.submit", body).await;
    let again = c.answer(&b, 5).await;
    assert_eq!(again["body"]["intent_id"], first_id.as_str(), "{again}");
    let d = c.send("intent.submit", json!({"intent": "cert.probe", "input": {"nonce": "other"}, "max_cost": 1000, "idempotency_key": "idem-1"})).await;
    assert_eq!(
        c.answer(&d, 5).await["body"]["code"],
        "IDEMPOTENCY_CONFLICT"
    );
    let (_, bal) = rest(
        &realm.addr,
        &format!("/v1/wallets/{}/balance", wallet.public_hex()),
        Some(&wallet),
    )
    .await;
    assert_eq!(
        bal["available"], 3_000,
        "two intents charged 1000 each: {bal}"
    );

    // Binary frames are refused with BAD_UTF8.
    use futures_util::SinkExt;
    c.ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        vec![0xff, 0xfe].into(),
    ))
    .await
    .unwrap();
    let err = c.next(5).await;
    assert_eq!(err["body"]["code"], "BAD_UTF8");
}

//! A separate `mtor-realm worker` process killed with SIGKILL mid-task: the task is re-dispatched
//! to another worker process, the client gets exactly one result, and is charged once.

mod common;

use common::*;
use mtor_realm::identity::KeyPair;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_task_is_redispatched_and_charged_once() {
    let data = temp_dir("kill");
    let sysop = KeyPair::generate().unwrap();
    let realm = RealmProc::start(&data, 0, &[], sysop.clone());
    let ws = realm.ws();

    let key_a = KeyPair::generate().unwrap();
    let key_b = KeyPair::generate().unwrap();
    let (file_a, file_b) = (data.join("a.key"), data.join("b.key"));
    key_a.save(&file_a).unwrap();
    key_b.save(&file_b).unwrap();
    let id_a = format!("w-{}", &key_a.public_hex()[..20]);
    let id_b = format!("w-{}", &key_b.public_hex()[..20]);

    let mut worker_a = WorkerProc::start(&ws, &file_a, 1);
    let wallet = KeyPair::generate().unwrap();
    let mut admin = Conn::client(&ws, &sysop).await;
    admin.mint(&wallet.public_hex(), 10_000).await;
    let mut c = Conn::client(&ws, &wallet).await;

    // Wait until worker A is enrolled and healthy.
    let mut ready = false;
    for _ in 0..100 {
        let (_, h) = rest(&realm.addr, "/v1/health", None).await;
        if h["workers"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w["worker_id"] == id_a.as_str() && w["state"] == "healthy")
        }) {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "worker A never became healthy");

    let accepted = c
        .probe("survive-the-kill", json!({"work_ms": 1500}), 3_000)
        .await;
    assert_eq!(accepted["type"], "intent.accepted", "{accepted}");
    let intent_id = accepted["body"]["intent_id"].as_str().unwrap().to_owned();
    // The realm announces the dispatch; the task is now running on A.
    let iid = intent_id.clone();
    c.until(10, move |ev| {
        ev["type"] == "intent.progress" && ev["body"]["intent_id"] == iid.as_str()
    })
    .await;
    let (_, h) = rest(&realm.addr, "/v1/health", None).await;
    assert_eq!(h["queue"]["running"], 1, "{h}");

    worker_a.child.kill().expect("SIGKILL worker A");
    worker_a.child.wait().unwrap();
    let _worker_b = WorkerProc::start(&ws, &file_b, 1);

    let result = c.terminal(&intent_id, 20).await;
    assert_eq!(result["type"], "intent.result", "{result}");
    assert_eq!(result["body"]["attempts"], 2);
    assert_eq!(result["body"]["output"]["worker_id"], id_b.as_str());
    assert_eq!(
        result["body"]["output"]["digest"],
        digest("survive-the-kill")
    );
    assert_eq!(result["body"]["cost"], 1_000);
    assert_eq!(result["body"]["released"], 2_000);

    // Exactly one result for the intent, however long we wait.
    c.drain(1_000).await;
    let results = c
        .seen
        .iter()
        .filter(|e| e["type"] == "intent.result" && e["body"]["intent_id"] == intent_id.as_str())
        .count();
    assert_eq!(results, 1);

    // Charged once: one capture, nothing held.
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
    let (_, ledger) = rest(&realm.addr, "/v1/ledger?limit=1000", Some(&sysop)).await;
    let captures = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "capture" && e["intent_id"] == intent_id.as_str())
        .count();
    assert_eq!(captures, 1);
    // The lost lease is on the audit record.
    let (_, audit) = rest(&realm.addr, "/v1/audit?limit=1000", Some(&sysop)).await;
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "lease.lapsed" && r["subject"] == intent_id.as_str()));
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "worker.left"));
}

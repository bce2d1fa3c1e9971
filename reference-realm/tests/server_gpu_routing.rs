//! Routing by capability (SIG-10) on a real socket: an analysis that asks for `backend: "cuda"`
//! is INFEASIBLE while no GPU worker is enrolled, then goes to the worker that declared a GPU and
//! never to the realm's CPU-only built-in worker; health shows the declared capabilities.

mod common;

use std::time::Duration;

use common::*;
use mtor_realm::identity::{self, KeyPair};
use mtor_realm::signal::{synth, Complex32};
use serde_json::{json, Value};

async fn enrol_gpu_worker(ws: &str, key: &KeyPair) -> Conn {
    let mut conn = Conn::open(&format!("{ws}/v1/worker")).await;
    let gpu = json!({"name": "Test GPU", "memory_bytes": 1u64 << 34, "compute_capability": "9.0"});
    let reg = conn
        .send(
            "worker.register",
            json!({"token": TOKEN, "worker_key": key.public_hex(), "intents": ["analyze-signal"],
                   "concurrency": 2, "capabilities": {"gpu": gpu}}),
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
    conn
}

fn input(backend: &str) -> Value {
    json!({"sample_rate_hz": 1000.0, "encoding": "cf32le-base64",
           "samples": synth::to_base64(&[Complex32::new(1.0, 0.0); 64]),
           "fft_len": 16, "window": "rect", "averages": 4, "peaks": 2, "backend": backend})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_analyses_go_only_to_workers_that_declared_a_gpu() {
    let data = temp_dir("gpu-routing");
    let sysop = KeyPair::generate().unwrap();
    // The built-in worker stays on the CPU whatever this machine has.
    let realm = RealmProc::start(&data, 1, &["--gpu", "off"], sysop.clone());
    let ws = realm.ws();
    let wallet = KeyPair::generate().unwrap();
    let mut admin = Conn::client(&ws, &sysop).await;
    admin.mint(&wallet.public_hex(), 10_000).await;
    let mut c = Conn::client(&ws, &wallet).await;
    // Wait for the built-in worker.
    for _ in 0..50 {
        let (_, h) = rest(&realm.addr, "/v1/health", None).await;
        if h["workers"].as_array().is_some_and(|w| !w.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let submit = |key: &str, backend: &str| {
        json!({"intent": "analyze-signal", "input": input(backend), "max_cost": 100,
               "idempotency_key": key})
    };
    let id = c.send("intent.submit", submit("cuda-1", "cuda")).await;
    let refused = c.answer(&id, 5).await;
    assert_eq!(
        (refused["type"].as_str(), refused["body"]["code"].as_str()),
        (Some("intent.rejected"), Some("INFEASIBLE")),
        "{refused}"
    );

    let key = KeyPair::generate().unwrap();
    let mut gpu = enrol_gpu_worker(&ws, &key).await;
    let (_, h) = rest(&realm.addr, "/v1/health", None).await;
    assert_valid("rest/health", &h);
    let declared: Vec<&Value> = h["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["capabilities"]["gpu"]["name"] == "Test GPU")
        .collect();
    assert_eq!(declared.len(), 1, "{h}");

    let id = c.send("intent.submit", submit("cuda-2", "cuda")).await;
    let acc = c.answer(&id, 5).await;
    assert_eq!(acc["type"], "intent.accepted", "{acc}");
    let intent_id = acc["body"]["intent_id"].as_str().unwrap().to_owned();
    let assign = gpu.until(10, |e| e["type"] == "task.assign").await;
    assert_eq!(assign["body"]["input"]["backend"], "cuda");
    let b = &assign["body"];
    let output = json!({"fft_len": 16, "bin_hz": 62.5, "spectra_averaged": 4,
        "noise_floor_db": -300.0, "peaks": [{"bin": 0, "freq_hz": 0.0, "power_db": 0.0, "snr_db": 300.0}],
        "backend": "cuda"});
    gpu.send(
        "task.result",
        json!({"task_id": b["task_id"], "attempt": b["attempt"], "epoch": b["epoch"],
               "output": output, "units": 1}),
    )
    .await;
    let done = c.terminal(&intent_id, 10).await;
    assert_eq!(done["type"], "intent.result", "{done}");
    assert_eq!(done["body"]["output"]["backend"], "cuda");

    // A plain analysis still runs on the CPU built-in worker or the GPU worker, as before; the
    // CPU worker answers here because the GPU worker stays silent on anything else it gets.
    let id = c.send("intent.submit", submit("cpu-1", "cpu")).await;
    let acc = c.answer(&id, 5).await;
    assert_eq!(acc["type"], "intent.accepted", "{acc}");
    realm.stop();
}

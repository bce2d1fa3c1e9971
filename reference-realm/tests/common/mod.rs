//! Shared helpers of the `server_*` tests: real realm and worker processes, a WebSocket client
//! that validates every event the realm sends against `fixtures/schemas`, and signed REST calls.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonschema::Validator;
use mtor_realm::identity::{self, KeyPair};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub const BIN: &str = env!("CARGO_BIN_EXE_mtor-realm");
pub const TOKEN: &str = "test-enrolment-token-0123456789";

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/schemas")
}

type Validators = Mutex<HashMap<String, Arc<Validator>>>;

fn validators() -> &'static Validators {
    static V: OnceLock<Validators> = OnceLock::new();
    V.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The validator of a schema file (relative to fixtures/schemas, without `.schema.json`).
pub fn validator(name: &str) -> Arc<Validator> {
    let mut map = validators().lock().unwrap();
    map.entry(name.to_owned())
        .or_insert_with(|| {
            let path = schema_dir().join(format!("{name}.schema.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let schema: Value = serde_json::from_str(&text).unwrap();
            Arc::new(jsonschema::draft202012::new(&schema).unwrap())
        })
        .clone()
}

/// Asserts that `value` is valid against the named schema.
pub fn assert_valid(name: &str, value: &Value) {
    let v = validator(name);
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path().as_str()))
        .collect();
    assert!(errors.is_empty(), "{name} violations {errors:?} in {value}");
}

/// Asserts an event the realm sent is valid: envelope, then its type's schema.
pub fn assert_event(ev: &Value) {
    assert_valid("envelope", ev);
    let kind = ev["type"].as_str().unwrap();
    assert_valid(kind, ev);
}

/// A realm process (`mtor-realm up`), killed on drop.
pub struct RealmProc {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
    pub sysop: KeyPair,
}

impl RealmProc {
    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Starts `mtor-realm up` in `data` with `workers` built-in workers.
    pub fn start(data: &Path, workers: usize, extra: &[&str], sysop: KeyPair) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                &workers.to_string(),
            ])
            .arg("--data")
            .arg(data)
            .args(["--enrol-token", TOKEN, "--sysop-key", &sysop.public_hex()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mtor-realm up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let _ = tx.send(rest.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("realm did not start");
        Self {
            child,
            addr,
            data: data.to_path_buf(),
            sysop,
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "realm exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("realm did not stop within 5 s of SIGTERM");
    }
}

impl Drop for RealmProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker process (`mtor-realm worker`), killed on drop.
pub struct WorkerProc {
    pub child: Child,
}

impl WorkerProc {
    pub fn start(realm: &str, key_file: &Path, concurrency: usize) -> Self {
        let child = Command::new(BIN)
            .args([
                "worker",
                "--realm",
                realm,
                "--token",
                TOKEN,
                "--intents",
                "cert.probe",
            ])
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--key-file")
            .arg(key_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mtor-realm worker");
        Self { child }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh temporary directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", identity::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw test connection; every event it receives is schema-checked.
pub struct Conn {
    pub ws: Ws,
    /// Every event received, in order.
    pub seen: Vec<Value>,
}

pub fn envelope(kind: &str, body: Value) -> (String, String) {
    let id = identity::new_id();
    let ev = json!({"proto": "MTOR/1", "type": kind, "id": id, "ts": "2026-01-01T00:00:00.000Z",
                    "corr": null, "body": body});
    (id, ev.to_string())
}

impl Conn {
    pub async fn open(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("connect timeout")
        .expect("connect");
        Self {
            ws,
            seen: Vec::new(),
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends an event and returns its id.
    pub async fn send(&mut self, kind: &str, body: Value) -> String {
        let (id, text) = envelope(kind, body);
        self.send_text(text).await;
        id
    }

    /// The next event (schema-checked), waiting at most `secs`.
    pub async fn next(&mut self, secs: u64) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(secs), self.ws.next())
                .await
                .expect("timed out waiting for an event")
                .expect("connection closed")
                .expect("ws error");
            if let Message::Text(t) = msg {
                let ev: Value = serde_json::from_str(t.as_str()).expect("realm sent non-JSON");
                assert_event(&ev);
                self.seen.push(ev.clone());
                return ev;
            }
        }
    }

    /// Waits for an event matching `pred`.
    pub async fn until(&mut self, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs()
                .max(1);
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in {secs}s; seen {:?}",
                self.seen
            );
            let ev = self.next(left).await;
            if pred(&ev) {
                return ev;
            }
        }
    }

    /// Waits for the answer to event `id`.
    pub async fn answer(&mut self, id: &str, secs: u64) -> Value {
        let id = id.to_owned();
        self.until(secs, move |ev| ev["corr"].as_str() == Some(id.as_str()))
            .await
    }

    /// Opens an authenticated client session for `key`.
    pub async fn client(realm: &str, key: &KeyPair) -> Self {
        Self::client_resume(realm, key, &[]).await.0
    }

    /// Opens an authenticated client session that resumes `ids`; returns it and the hello's id.
    pub async fn client_resume(realm: &str, key: &KeyPair, ids: &[&str]) -> (Self, String) {
        let mut c = Self::open(&format!("{realm}/v1/client")).await;
        let wallet = key.public_hex();
        let mut body = json!({"wallet": wallet, "client": "server-tests"});
        if !ids.is_empty() {
            body["resume"] = json!(ids);
        }
        let hello = c.send("session.hello", body).await;
        let ch = c.answer(&hello, 10).await;
        assert_eq!(ch["type"], "session.challenge", "{ch}");
        let msg = identity::session_message(
            ch["body"]["realm_id"].as_str().unwrap(),
            ch["body"]["nonce"].as_str().unwrap(),
            &wallet,
        );
        let proof = c
            .send(
                "session.proof",
                json!({"signature": key.sign_hex(msg.as_bytes())}),
            )
            .await;
        let ready = c.answer(&proof, 10).await;
        assert_eq!(ready["type"], "session.ready", "{ready}");
        (c, hello)
    }

    /// Mints `amount` to `wallet` (this must be a sysop session).
    pub async fn mint(&mut self, wallet: &str, amount: u64) -> Value {
        let id = self
            .send(
                "wallet.mint",
                json!({"wallet": wallet, "amount": amount, "idempotency_key": identity::new_id()}),
            )
            .await;
        let ev = self.answer(&id, 10).await;
        assert_eq!(ev["type"], "wallet.minted", "{ev}");
        ev
    }

    /// Submits cert.probe and returns the `intent.accepted` / `intent.rejected` answer.
    pub async fn probe(&mut self, nonce: &str, extra: Value, max_cost: u64) -> Value {
        let mut input = json!({"nonce": nonce});
        if let (Some(o), Value::Object(e)) = (input.as_object_mut(), extra) {
            o.extend(e);
        }
        let id = self
            .send(
                "intent.submit",
                json!({"intent": "cert.probe", "input": input, "max_cost": max_cost,
                                           "idempotency_key": identity::new_id()}),
            )
            .await;
        self.answer(&id, 15).await
    }

    /// Waits for the terminal event of `intent_id`.
    pub async fn terminal(&mut self, intent_id: &str, secs: u64) -> Value {
        let id = intent_id.to_owned();
        self.until(secs, move |ev| {
            matches!(
                ev["type"].as_str(),
                Some("intent.result" | "intent.failed" | "intent.cancelled")
            ) && ev["body"]["intent_id"].as_str() == Some(id.as_str())
        })
        .await
    }

    /// Reads whatever arrives within `ms` (schema-checked), for "nothing more" assertions.
    pub async fn drain(&mut self, ms: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(t) = msg {
                let ev: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_event(&ev);
                self.seen.push(ev.clone());
                out.push(ev);
            }
        }
        out
    }
}

/// A signed REST GET; returns (status, body).
pub async fn rest(addr: &str, path: &str, key: Option<&KeyPair>) -> (u16, Value) {
    match key {
        Some(k) => mtor_realm::cli::signed_get(&format!("ws://{addr}"), path, k)
            .await
            .expect("rest"),
        None => {
            let throwaway = KeyPair::generate().unwrap();
            mtor_realm::cli::signed_get(&format!("ws://{addr}"), path, &throwaway)
                .await
                .expect("rest")
        }
    }
}

/// Hex SHA-256 of `"cert.probe\n" + nonce`, computed here independently of the realm.
pub fn digest(nonce: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("cert.probe\n{nonce}").as_bytes()))
}

/// A plain HTTP GET; returns (status, content type, body text).
pub async fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

//! Speaking MTOR/1 to a realm: journaled WebSocket connections, events, identities and sessions.
//!
//! Every frame in either direction is written to the journal before it is interpreted, and every
//! wait has a deadline: a misbehaving realm can make a case fail or go UNKNOWN, never hang the run.

use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::contract::PROTOCOL;
use crate::journal::{frame_text, Dir, Entry, Journal};

/// Why talking to the realm did not work.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Could not connect (nothing listens, handshake refused...).
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// No answer in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The realm closed the connection.
    #[error("the realm closed the connection ({0})")]
    Closed(String),
    /// A transport error.
    #[error("WebSocket error: {0}")]
    Ws(String),
    /// The realm answered something the case cannot use.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A fresh random id for an event (32 hex characters, valid as an MTOR/1 uid).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    hex::encode(bytes)
}

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // No OS randomness is a broken host, not a realm defect; fall back to time-derived bytes so
        // ids stay unique within the run (keys are made elsewhere and do fail loudly).
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8 ^ (i as u8);
        }
    }
}

/// Now as RFC 3339 UTC with milliseconds (`2026-11-23T10:00:00.123Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Builds an MTOR/1 event.
pub fn event(kind: &str, corr: Option<&str>, body: Value) -> Value {
    json!({
        "proto": PROTOCOL,
        "type": kind,
        "id": new_id(),
        "ts": now_rfc3339(),
        "corr": corr,
        "body": body,
    })
}

/// An ed25519 identity: a wallet, a worker, the sysop.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public_hex())
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self::from_seed(seed))
    }

    /// The identity with this secret seed (deterministic; for replay and tests).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The secret seed, hex (for handing a sysop key to a spawned realm's operator files).
    pub fn secret_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// The public key, 64 lowercase hex characters: the wallet id.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Signs `message`, hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }

    /// The session proof signature for a challenge, per the spec.
    pub fn session_proof(&self, realm_id: &str, nonce: &str) -> String {
        let message = format!("MTOR/1 session\n{realm_id}\n{nonce}\n{}", self.public_hex());
        self.sign_hex(message.as_bytes())
    }
}

/// One journaled WebSocket connection to a realm.
pub struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Connection number within the run, as in the journal.
    pub id: u32,
    journal: Journal,
    case: Option<String>,
    /// Events received but not yet consumed by a matching wait.
    backlog: std::collections::VecDeque<Received>,
}

/// One frame received, as the case sees it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Journal sequence number of the frame.
    pub seq: u64,
    /// The parsed event, or `None` when it was not JSON.
    pub event: Option<Value>,
}

impl Received {
    /// The event's `type`, if readable.
    pub fn kind(&self) -> Option<&str> {
        self.event.as_ref()?.get("type")?.as_str()
    }

    /// The event's `corr`, if it has one.
    pub fn corr(&self) -> Option<&str> {
        self.event.as_ref()?.get("corr")?.as_str()
    }

    /// A field of the body.
    pub fn body(&self, field: &str) -> Option<&Value> {
        self.event.as_ref()?.get("body")?.get(field)
    }
}

static NEXT_CONN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

impl Conn {
    /// Opens a connection to `url`, journaling the attempt, within `deadline`.
    pub async fn open(
        url: &str,
        journal: &Journal,
        case: Option<&str>,
        deadline: Instant,
    ) -> Result<Self, WireError> {
        let id = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Allow frames larger than any realm limit, so oversized-frame cases can send them.
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let attempt = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        let result = timeout_at(deadline, attempt).await;
        let log = |event: &str, detail: String| {
            journal.log(
                case,
                Entry::Conn {
                    conn: id,
                    event: event.into(),
                    detail,
                },
            )
        };
        match result {
            Err(_) => {
                log("timeout", url.to_owned());
                Err(WireError::Connect {
                    url: url.to_owned(),
                    message: "timed out".into(),
                })
            }
            Ok(Err(e)) => {
                log("refused", format!("{url}: {e}"));
                Err(WireError::Connect {
                    url: url.to_owned(),
                    message: e.to_string(),
                })
            }
            Ok(Ok((ws, _))) => {
                log("open", url.to_owned());
                Ok(Self {
                    ws,
                    id,
                    journal: journal.clone(),
                    case: case.map(str::to_owned),
                    backlog: Default::default(),
                })
            }
        }
    }

    fn log(&self, entry: Entry) -> u64 {
        self.journal.log(self.case.as_deref(), entry)
    }

    /// Sends a text frame exactly as given (it may be deliberately malformed).
    pub async fn send_text(&mut self, text: &str, deadline: Instant) -> Result<u64, WireError> {
        let seq = self.log(Entry::Frame {
            conn: self.id,
            dir: Dir::Send,
            data: text.to_owned(),
        });
        self.send(Message::text(text), deadline).await?;
        Ok(seq)
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8], deadline: Instant) -> Result<u64, WireError> {
        let seq = self.log(Entry::Frame {
            conn: self.id,
            dir: Dir::Send,
            data: format!("hex:{}", hex::encode(bytes)),
        });
        self.send(Message::binary(bytes.to_vec()), deadline).await?;
        Ok(seq)
    }

    /// Sends an event; returns its id.
    pub async fn send_event(
        &mut self,
        event: &Value,
        deadline: Instant,
    ) -> Result<String, WireError> {
        self.send_text(&event.to_string(), deadline).await?;
        Ok(event["id"].as_str().unwrap_or_default().to_owned())
    }

    async fn send(&mut self, message: Message, deadline: Instant) -> Result<(), WireError> {
        match timeout_at(deadline, self.ws.send(message)).await {
            Err(_) => Err(WireError::Timeout(Duration::ZERO, "send".into())),
            Ok(Err(e)) => Err(WireError::Ws(e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Receives the next frame from the wire (not from the backlog).
    async fn recv_wire(&mut self, deadline: Instant) -> Result<Received, WireError> {
        loop {
            let next = match timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(WireError::Timeout(Duration::ZERO, "a frame".into())),
                Ok(None) => {
                    self.log(Entry::Conn {
                        conn: self.id,
                        event: "closed".into(),
                        detail: "end of stream".into(),
                    });
                    return Err(WireError::Closed("end of stream".into()));
                }
                Ok(Some(Err(e))) => {
                    self.log(Entry::Conn {
                        conn: self.id,
                        event: "closed".into(),
                        detail: e.to_string(),
                    });
                    return Err(WireError::Ws(e.to_string()));
                }
                Ok(Some(Ok(m))) => m,
            };
            let bytes: Vec<u8> = match next {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(frame) => {
                    let detail = frame.map_or_else(
                        || "no close frame".to_owned(),
                        |f| format!("{} {}", u16::from(f.code), f.reason),
                    );
                    self.log(Entry::Conn {
                        conn: self.id,
                        event: "closed".into(),
                        detail: detail.clone(),
                    });
                    return Err(WireError::Closed(detail));
                }
                // Pings are answered by tungstenite; neither is an MTOR event.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let seq = self.log(Entry::Frame {
                conn: self.id,
                dir: Dir::Recv,
                data: frame_text(&bytes),
            });
            let event = serde_json::from_slice(&bytes).ok();
            return Ok(Received { seq, event });
        }
    }

    /// Waits for the first frame satisfying `want`, keeping other frames for later waits.
    pub async fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        mut want: impl FnMut(&Received) -> bool,
    ) -> Result<Received, WireError> {
        if let Some(i) = self.backlog.iter().position(&mut want) {
            if let Some(r) = self.backlog.remove(i) {
                return Ok(r);
            }
        }
        loop {
            let r = match self.recv_wire(deadline).await {
                Err(WireError::Timeout(_, _)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return Err(WireError::Timeout(left, what.to_owned()));
                }
                other => other?,
            };
            if want(&r) {
                return Ok(r);
            }
            self.backlog.push_back(r);
        }
    }

    /// Waits for the reply to the event with id `corr`.
    pub async fn reply_to(&mut self, corr: &str, deadline: Instant) -> Result<Received, WireError> {
        let what = format!("a reply to {corr}");
        self.wait_for(&what, deadline, |r| r.corr() == Some(corr))
            .await
    }

    /// Sends `event` and waits for its reply.
    pub async fn request(
        &mut self,
        event: &Value,
        deadline: Instant,
    ) -> Result<Received, WireError> {
        let id = self.send_event(event, deadline).await?;
        self.reply_to(&id, deadline).await
    }

    /// Frames received so far that no wait consumed.
    pub fn backlog(&self) -> impl Iterator<Item = &Received> {
        self.backlog.iter()
    }

    /// Forgets the frames no wait consumed; returns how many there were.
    pub fn clear_backlog(&mut self) -> usize {
        let n = self.backlog.len();
        self.backlog.clear();
        n
    }

    /// The next frame in arrival order: the oldest one no wait consumed, else the next from the
    /// wire. A case that must see every frame (and in the journal's order) reads with this.
    pub async fn next_frame(&mut self, deadline: Instant) -> Result<Received, WireError> {
        if let Some(r) = self.backlog.pop_front() {
            return Ok(r);
        }
        self.recv_wire(deadline).await
    }

    /// Drops the connection without a WebSocket close handshake, as a crashing peer would: the
    /// TCP socket just closes. Journaled, since the moment is evidence for lease cases.
    pub fn abort(self) -> u64 {
        self.log(Entry::Conn {
            conn: self.id,
            event: "aborted".into(),
            detail: "closed by the harness without a close frame".into(),
        })
    }

    /// Hands over the open WebSocket with its connection number and the frames no wait consumed:
    /// the load generator (`load`) journals a sample of its frames, not every one.
    pub fn into_raw(
        self,
    ) -> (
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        u32,
        Vec<Received>,
    ) {
        (self.ws, self.id, self.backlog.into_iter().collect())
    }

    /// Closes the connection politely (best effort, bounded).
    pub async fn close(mut self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        let _ = timeout_at(deadline, self.ws.close(None)).await;
    }
}

/// Opens a client session: hello → challenge → proof → ready. Returns the connection and the
/// `session.ready` body.
pub async fn login(
    url: &str,
    who: &Identity,
    journal: &Journal,
    case: Option<&str>,
    deadline: Instant,
) -> Result<(Conn, Value), WireError> {
    login_resuming(url, who, &[], journal, case, deadline)
        .await
        .map(|(conn, ready, _)| (conn, ready))
}

/// [`login`] with a `resume` list in the hello (section 7.4); also returns the hello's id, the
/// `corr` of the realm's `intent.status` answers to it. With an empty list the hello has no
/// `resume` field at all.
pub async fn login_resuming(
    url: &str,
    who: &Identity,
    resume: &[String],
    journal: &Journal,
    case: Option<&str>,
    deadline: Instant,
) -> Result<(Conn, Value, String), WireError> {
    let mut conn = Conn::open(url, journal, case, deadline).await?;
    let mut body = json!({ "wallet": who.public_hex(), "client": concat!("mtor-cert/", env!("CARGO_PKG_VERSION")) });
    if !resume.is_empty() {
        body["resume"] = json!(resume);
    }
    let hello = event("session.hello", None, body);
    let hello_id = hello["id"].as_str().unwrap_or_default().to_owned();
    let challenge = conn.request(&hello, deadline).await?;
    if challenge.kind() != Some("session.challenge") {
        return Err(WireError::Unexpected(format!(
            "session.hello was answered by {:?}, not session.challenge",
            challenge.kind()
        )));
    }
    let nonce = challenge
        .body("nonce")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let realm = challenge
        .body("realm_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let corr = challenge
        .event
        .as_ref()
        .and_then(|e| e.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let proof = event(
        "session.proof",
        corr.as_deref(),
        json!({ "signature": who.session_proof(realm, nonce) }),
    );
    let ready = conn.request(&proof, deadline).await?;
    if ready.kind() != Some("session.ready") {
        return Err(WireError::Unexpected(format!(
            "session.proof was answered by {:?}: {}",
            ready.kind(),
            ready
                .event
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default()
        )));
    }
    let body = ready
        .event
        .and_then(|e| e.get("body").cloned())
        .unwrap_or(Value::Null);
    Ok((conn, body, hello_id))
}

/// A minimal HTTP/1.1 GET over loopback TCP with a deadline, journaled. Returns (status, body).
///
/// Hand-written on purpose: the harness must see exactly what the realm sent (a status line it
/// cannot parse is evidence, not an error to hide), and it needs no TLS stack for a local realm.
pub async fn http_get(
    base: &str,
    path: &str,
    journal: &Journal,
    case: Option<&str>,
    deadline: Instant,
) -> Result<(u16, String), WireError> {
    get(base, path, "", journal, case, deadline).await
}

/// [`http_get`] signed by `who` as section 3.3 of the spec defines (`MTOR-Key`, `MTOR-Timestamp`,
/// `MTOR-Signature` over `"MTOR/1 rest\nGET\n" + path + "\n" + timestamp`), for balances,
/// statements and the ledger and audit exports.
pub async fn http_get_signed(
    base: &str,
    path: &str,
    who: &Identity,
    journal: &Journal,
    case: Option<&str>,
    deadline: Instant,
) -> Result<(u16, String), WireError> {
    let ts = now_rfc3339();
    let signature = who.sign_hex(format!("MTOR/1 rest\nGET\n{path}\n{ts}").as_bytes());
    let headers = format!(
        "MTOR-Key: {}\r\nMTOR-Timestamp: {ts}\r\nMTOR-Signature: {signature}\r\n",
        who.public_hex()
    );
    get(base, path, &headers, journal, case, deadline).await
}

/// [`http_get_signed`] with a given `MTOR-Timestamp` (signed over it): a request captured and
/// replayed later, or prepared in advance, which a realm must refuse outside its 60 s window.
pub async fn http_get_signed_at(
    base: &str,
    path: &str,
    who: &Identity,
    ts: &str,
    journal: &Journal,
    case: Option<&str>,
    deadline: Instant,
) -> Result<(u16, String), WireError> {
    let signature = who.sign_hex(format!("MTOR/1 rest\nGET\n{path}\n{ts}").as_bytes());
    let headers = format!(
        "MTOR-Key: {}\r\nMTOR-Timestamp: {ts}\r\nMTOR-Signature: {signature}\r\n",
        who.public_hex()
    );
    get(base, path, &headers, journal, case, deadline).await
}

/// A GET that claims to come from `claimed` but is signed by `signer`: a forged signed request,
/// which a realm must refuse with 401 `BAD_SIGNATURE` and record as `auth.failed`.
pub async fn http_get_forged(
    base: &str,
    path: &str,
    claimed: &Identity,
    signer: &Identity,
    journal: &Journal,
    case: Option<&str>,
    deadline: Instant,
) -> Result<(u16, String), WireError> {
    let ts = now_rfc3339();
    let signature = signer.sign_hex(format!("MTOR/1 rest\nGET\n{path}\n{ts}").as_bytes());
    let headers = format!(
        "MTOR-Key: {}\r\nMTOR-Timestamp: {ts}\r\nMTOR-Signature: {signature}\r\n",
        claimed.public_hex()
    );
    get(base, path, &headers, journal, case, deadline).await
}

async fn get(
    base: &str,
    path: &str,
    extra_headers: &str,
    journal: &Journal,
    case: Option<&str>,
    deadline: Instant,
) -> Result<(u16, String), WireError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let result = timeout_at(deadline, async {
        let mut stream = TcpStream::connect(&host)
            .await
            .map_err(|e| WireError::Connect {
                url: format!("http://{host}{path}"),
                message: e.to_string(),
            })?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n{extra_headers}\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| WireError::Ws(e.to_string()))?;
        let mut raw = Vec::new();
        // Bounded read: a realm that streams forever must not exhaust the harness.
        let mut limited = stream.take(16 << 20);
        limited
            .read_to_end(&mut raw)
            .await
            .map_err(|e| WireError::Ws(e.to_string()))?;
        Ok::<_, WireError>(raw)
    })
    .await;
    let raw = match result {
        Err(_) => {
            journal.log(
                case,
                Entry::Http {
                    method: "GET".into(),
                    path: path.into(),
                    status: 0,
                    body: "timed out".into(),
                },
            );
            return Err(WireError::Timeout(Duration::ZERO, format!("GET {path}")));
        }
        Ok(Err(e)) => {
            journal.log(
                case,
                Entry::Http {
                    method: "GET".into(),
                    path: path.into(),
                    status: 0,
                    body: e.to_string(),
                },
            );
            return Err(e);
        }
        Ok(Ok(raw)) => raw,
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    journal.log(
        case,
        Entry::Http {
            method: "GET".into(),
            path: path.into(),
            status,
            body: body.chars().take(JOURNAL_BODY_CHARS).collect(),
        },
    );
    Ok((status, body))
}

/// How much of an HTTP body the journal keeps. Large enough for a full page of a ledger or audit
/// export (1000 items), which the token and audit checkers re-judge from the journal alone.
pub const JOURNAL_BODY_CHARS: usize = 8 << 20;

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_envelope_and_valid_ids() {
        let e = event("intent.fetch", Some("abc"), json!({"intent_id": "x"}));
        assert_eq!(e["proto"], "MTOR/1");
        assert_eq!(e["corr"], "abc");
        let id = e["id"].as_str().expect("id");
        assert_eq!(id.len(), 32);
        assert_ne!(
            id,
            event("x.y", None, json!({}))["id"].as_str().expect("id")
        );
        assert!(e["ts"].as_str().expect("ts").ends_with('Z'));
    }

    #[test]
    fn a_session_proof_verifies_with_the_public_key() {
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};
        let who = Identity::from_seed([7; 32]);
        let sig = who.session_proof("realm", "nonce");
        let key_bytes: [u8; 32] = hex::decode(who.public_hex())
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let key = VerifyingKey::from_bytes(&key_bytes).expect("key");
        let sig_bytes: [u8; 64] = hex::decode(sig).expect("hex").try_into().expect("64 bytes");
        let msg = format!("MTOR/1 session\nrealm\nnonce\n{}", who.public_hex());
        assert!(key
            .verify(msg.as_bytes(), &Signature::from_bytes(&sig_bytes))
            .is_ok());
    }

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }
}

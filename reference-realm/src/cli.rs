//! A small terminal client of the client channel and the signed REST API, for `mtor-realm
//! wallet` and `mtor-realm ask`.

use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::identity::{self, KeyPair};
use crate::store::format_rfc3339_millis;
use crate::wire;

/// How long any single network step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of the terminal client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or a network step failed.
    #[error("network: {0}")]
    Net(String),
    /// The realm answered with an error.
    #[error("realm refused: {code}: {message}")]
    Refused {
        /// Code.
        code: String,
        /// Message.
        message: String,
    },
    /// The realm's answer was not what the protocol says.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An authenticated client session.
pub struct ClientSession {
    ws: Ws,
    /// The session's wallet key.
    pub wallet: String,
    /// Roles granted by the realm.
    pub roles: Vec<String>,
}

fn base(realm: &str) -> String {
    realm
        .trim_end_matches('/')
        .trim_end_matches("/v1/client")
        .to_owned()
}

impl ClientSession {
    /// Connects to `realm` (`ws://HOST:PORT`) and authenticates with `key`.
    pub async fn connect(realm: &str, key: &KeyPair) -> Result<Self, ClientError> {
        let url = format!("{}/v1/client", base(realm));
        let (ws, _) = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .map_err(|_| ClientError::Timeout("connect"))?
        .map_err(|e| ClientError::Net(e.to_string()))?;
        let wallet = key.public_hex();
        let mut s = Self {
            ws,
            wallet: wallet.clone(),
            roles: Vec::new(),
        };
        let ch = s
            .request(
                "session.hello",
                json!({"wallet": wallet, "client": "mtor-realm-cli"}),
            )
            .await?;
        let nonce = ch["body"]["nonce"].as_str().unwrap_or("");
        let realm_id = ch["body"]["realm_id"].as_str().unwrap_or("");
        let sig = key.sign_hex(identity::session_message(realm_id, nonce, &wallet).as_bytes());
        let ready = s
            .request("session.proof", json!({"signature": sig}))
            .await?;
        if ready["type"] != "session.ready" {
            return Err(ClientError::Protocol(ready.to_string()));
        }
        s.roles = ready["body"]["roles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(s)
    }

    /// Sends an event and returns the first answer whose `corr` is its id; an `error` answer is
    /// returned as [`ClientError::Refused`].
    pub async fn request(&mut self, kind: &str, body: Value) -> Result<Value, ClientError> {
        let text = wire::event(kind, None, body);
        let id = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        tokio::time::timeout(STEP_TIMEOUT, self.ws.send(Message::Text(text.into())))
            .await
            .map_err(|_| ClientError::Timeout("send"))?
            .map_err(|e| ClientError::Net(e.to_string()))?;
        loop {
            let ev = self.next(STEP_TIMEOUT).await?;
            if ev["corr"].as_str() == Some(id.as_str()) {
                if ev["type"] == "error" {
                    return Err(ClientError::Refused {
                        code: ev["body"]["code"].as_str().unwrap_or("").to_owned(),
                        message: ev["body"]["message"].as_str().unwrap_or("").to_owned(),
                    });
                }
                return Ok(ev);
            }
        }
    }

    /// The next event, waiting at most `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Value, ClientError> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout("an event"))?
                .ok_or_else(|| ClientError::Net("connection closed".to_owned()))?
                .map_err(|e| ClientError::Net(e.to_string()))?;
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| ClientError::Protocol(e.to_string()));
            }
        }
    }

    /// Waits for the terminal event (`intent.result`, `intent.failed`, `intent.cancelled`) of
    /// `intent_id`.
    pub async fn wait_terminal(
        &mut self,
        intent_id: &str,
        wait: Duration,
    ) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = self.next(left).await?;
            let t = ev["type"].as_str().unwrap_or("");
            if matches!(t, "intent.result" | "intent.failed" | "intent.cancelled")
                && ev["body"]["intent_id"].as_str() == Some(intent_id)
            {
                return Ok(ev);
            }
        }
    }

    /// Closes the session.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// A signed `GET` of a REST path (e.g. `/v1/wallets/KEY/balance`); returns status and JSON body.
pub async fn signed_get(
    realm: &str,
    path_and_query: &str,
    key: &KeyPair,
) -> Result<(u16, Value), ClientError> {
    let b = base(realm);
    let host = b
        .trim_start_matches("ws://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let ts = format_rfc3339_millis(SystemTime::now());
    let sig = key.sign_hex(identity::rest_message("GET", path_and_query, &ts).as_bytes());
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nMTOR-Key: {}\r\nMTOR-Timestamp: {ts}\r\nMTOR-Signature: {sig}\r\n\r\n",
        key.public_hex()
    );
    let work = async {
        let mut s = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| ClientError::Net(e.to_string()))?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| ClientError::Net(e.to_string()))?;
        let mut buf = Vec::new();
        s.take(16 * 1024 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| ClientError::Net(e.to_string()))?;
        Ok::<_, ClientError>(buf)
    };
    let buf = tokio::time::timeout(STEP_TIMEOUT, work)
        .await
        .map_err(|_| ClientError::Timeout("HTTP response"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol("no HTTP header end".to_owned()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol("no HTTP status".to_owned()))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let json =
        serde_json::from_str(&body).map_err(|e| ClientError::Protocol(format!("{e}: {body}")))?;
    Ok((status, json))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(tail)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        s = tail.trim_start_matches("\r\n");
    }
    out
}

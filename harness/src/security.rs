//! The `security` kind (the `security` suite): impersonation, token theft, injection and
//! amplification probes (sections 2.5, 3.3 and 14.5 of the spec).
//!
//! One kind, several checks (`params.check`). Each driver acts and leaves markers; each checker
//! judges from the journal alone, so `mtor-cert verify` re-derives the verdicts. A signed REST
//! request is labelled by a `req:<label>` marker written just before it: the first HTTP record
//! after the marker is its answer.
//!
//! `frame-flood` (the per-connection rate limit under a flood) lives in `security/flood.rs`.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::wire::{self, event, http_get, login, Conn, Identity};

mod flood;

/// The case kind.
pub const KIND: &str = "security";

/// Text that would show a file was served: `/etc/passwd`, a PEM key, an SQLite database.
const FILE_MARKERS: &[&str] = &["root:x:0:0", "-----BEGIN", "SQLite format"];

fn check_param(spec: &CaseSpec) -> &str {
    spec.params
        .get("check")
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

/// Runs the driver of `params.check`.
pub async fn drive(ctx: &Ctx<'_>) {
    match check_param(ctx.spec) {
        "worker-bad-token" => worker_bad_token(ctx).await,
        "mint-forbidden" => mint_forbidden(ctx).await,
        "rest-wrong-signer" => rest_wrong_signer(ctx).await,
        "rest-stale" => rest_stale(ctx).await,
        "path-traversal" => path_traversal(ctx).await,
        "isolation" | "no-amplification" | "no-wallet-broadcast" => isolation(ctx).await,
        "frame-flood" => flood::drive(ctx).await,
        other => ctx.abort(format!("unknown security check `{other}`")),
    }
}

fn fresh(ctx: &Ctx<'_>) -> Option<Identity> {
    match Identity::generate() {
        Ok(i) => Some(i),
        Err(e) => {
            ctx.abort(format!("no randomness for a key: {e}"));
            None
        }
    }
}

// ---------------------------------------------------------------- drivers

/// WRK-1: `worker.register` with a wrong token. If a challenge comes anyway, the proof is sent
/// properly, to show whether the wrong token really buys an enrolment.
async fn worker_bad_token(ctx: &Ctx<'_>) {
    let url = format!("{}/v1/worker", ctx.target.ws_base);
    let mut conn = match Conn::open(&url, ctx.journal, Some(&ctx.spec.id), ctx.within(5000)).await {
        Ok(c) => c,
        Err(e) => return ctx.abort(e),
    };
    let Some(key) = fresh(ctx) else { return };
    // Never the real token, whatever the manifest says: a random one of the same shape.
    let token = format!("mtor-cert-wrong-{}", wire::new_id());
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
    ctx.mark(
        "register",
        &format!("{}:{}", conn.id, register["id"].as_str().unwrap_or("")),
    );
    let answer = conn.request(&register, ctx.within(3000)).await;
    if let Ok(challenge) = answer {
        if challenge.kind() == Some("session.challenge") {
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
            let _ = conn.request(&proof, ctx.within(3000)).await;
        }
    }
    // Anything else the realm volunteers (a late challenge, an enrolment) is evidence too.
    let _ = conn
        .wait_for("nothing more", ctx.within(300), |_| false)
        .await;
    ctx.mark("done", "");
    conn.close().await;
}

/// SES-7 / SEC-9: a plain wallet session sends `wallet.mint` into its own wallet.
async fn mint_forbidden(ctx: &Ctx<'_>) {
    let Some(who) = fresh(ctx) else { return };
    let (mut conn, _) = match login(
        &ctx.client_url(),
        &who,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(5000),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return ctx.abort(format!("could not open a wallet session: {e}")),
    };
    let mint = event(
        "wallet.mint",
        None,
        json!({"wallet": who.public_hex(), "amount": 1_000_000,
               "idempotency_key": wire::new_id(), "memo": "mtor-cert: must be refused"}),
    );
    ctx.mark(
        "mint",
        &format!("{}:{}", conn.id, mint["id"].as_str().unwrap_or("")),
    );
    let _ = conn.request(&mint, ctx.within(3000)).await;
    conn.close().await;
    ctx.mark("req", "balance");
    let path = format!("/v1/wallets/{}/balance", who.public_hex());
    let _ = wire::http_get_signed(
        &ctx.target.http_base,
        &path,
        &who,
        ctx.journal,
        Some(&ctx.spec.id),
        ctx.within(3000),
    )
    .await;
    ctx.mark("done", "");
}

/// TRN-9 / TRN-11: another wallet's balance with a forged signature, then validly signed by
/// the wrong wallet, then the ledger export signed by a plain wallet; the owner's own read is the
/// control that shows the endpoint works.
async fn rest_wrong_signer(ctx: &Ctx<'_>) {
    let (Some(victim), Some(thief)) = (fresh(ctx), fresh(ctx)) else {
        return;
    };
    let base = &ctx.target.http_base;
    let case = Some(ctx.spec.id.as_str());
    let path = format!("/v1/wallets/{}/balance", victim.public_hex());
    ctx.mark("req", "forged");
    let _ = wire::http_get_forged(
        base,
        &path,
        &victim,
        &thief,
        ctx.journal,
        case,
        ctx.within(3000),
    )
    .await;
    ctx.mark("req", "other-signer");
    let _ = wire::http_get_signed(base, &path, &thief, ctx.journal, case, ctx.within(3000)).await;
    ctx.mark("req", "other-statement");
    let statement = format!(
        "/v1/wallets/{}/statement?after=0&limit=10",
        victim.public_hex()
    );
    let _ = wire::http_get_signed(
        base,
        &statement,
        &thief,
        ctx.journal,
        case,
        ctx.within(3000),
    )
    .await;
    ctx.mark("req", "wallet-ledger");
    let _ = wire::http_get_signed(
        base,
        "/v1/ledger?after=0&limit=1",
        &thief,
        ctx.journal,
        case,
        ctx.within(3000),
    )
    .await;
    ctx.mark("req", "own");
    let _ = wire::http_get_signed(base, &path, &victim, ctx.journal, case, ctx.within(3000)).await;
    ctx.mark("done", "");
}

/// TRN-10: a correctly signed request whose timestamp lies `skew_s` in the past (a captured
/// request replayed later) or in the future (one prepared in advance).
async fn rest_stale(ctx: &Ctx<'_>) {
    let Some(who) = fresh(ctx) else { return };
    let skew = u64::try_from(
        ctx.spec
            .params
            .get("skew_s")
            .and_then(|v| v.as_integer())
            .unwrap_or(120),
    )
    .unwrap_or(120)
    .max(61);
    let base = &ctx.target.http_base;
    let case = Some(ctx.spec.id.as_str());
    let path = format!("/v1/wallets/{}/balance", who.public_hex());
    let now = SystemTime::now();
    let past = now
        .checked_sub(Duration::from_secs(skew))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let future = now + Duration::from_secs(skew);
    for (label, at) in [("stale", past), ("future", future)] {
        let ts = humantime::format_rfc3339_millis(at).to_string();
        ctx.mark("req", label);
        let _ =
            wire::http_get_signed_at(base, &path, &who, &ts, ctx.journal, case, ctx.within(3000))
                .await;
    }
    ctx.mark("req", "fresh");
    let _ = wire::http_get_signed(base, &path, &who, ctx.journal, case, ctx.within(3000)).await;
    ctx.mark("done", "");
}

/// SEC-7: traversal attempts on every route a realm could serve files under.
async fn path_traversal(ctx: &Ctx<'_>) {
    let paths: Vec<String> = ctx
        .spec
        .params
        .get("paths")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if paths.is_empty() {
        return ctx.abort("plan gives no `paths`");
    }
    for path in &paths {
        ctx.mark("req", path);
        let _ = http_get(
            &ctx.target.http_base,
            path,
            ctx.journal,
            Some(&ctx.spec.id),
            ctx.within(3000),
        )
        .await;
    }
    ctx.mark("done", "");
}

/// SEC-4 / SEC-5: an actor wallet sends a submission and several frames that must be refused
/// while an idle observer wallet (and the sysop, after funding the actor) listen. The refused
/// mint names the observer's wallet, so a realm echoing it would disclose that key.
async fn isolation(ctx: &Ctx<'_>) {
    let url = ctx.client_url();
    let case = Some(ctx.spec.id.as_str());
    let (Some(actor), Some(observer)) = (fresh(ctx), fresh(ctx)) else {
        return;
    };
    let (mut watch, _) = match login(&url, &observer, ctx.journal, case, ctx.within(5000)).await {
        Ok(c) => c,
        Err(e) => return ctx.abort(format!("could not open the observer's session: {e}")),
    };
    ctx.mark(
        "wallet",
        &format!("{}:{}:observer", watch.id, observer.public_hex()),
    );
    ctx.mark("quiet", &watch.id.to_string());
    let mut sysop_conn = None;
    if let Some(sysop) = ctx.target.sysop.as_ref() {
        match login(&url, sysop, ctx.journal, case, ctx.within(5000)).await {
            Ok((mut s, _)) => {
                ctx.mark("wallet", &format!("{}:{}:sysop", s.id, sysop.public_hex()));
                let mint = event(
                    "wallet.mint",
                    None,
                    json!({"wallet": actor.public_hex(), "amount": 1_000_000,
                           "idempotency_key": wire::new_id(), "memo": "mtor-cert security suite"}),
                );
                let _ = s.request(&mint, ctx.within(3000)).await;
                ctx.mark("quiet", &s.id.to_string());
                sysop_conn = Some(s);
            }
            Err(e) => {
                ctx.note(format!("no sysop session, the actor stays unfunded: {e}"));
            }
        }
    }
    let (mut conn, _) = match login(&url, &actor, ctx.journal, case, ctx.within(5000)).await {
        Ok(c) => c,
        Err(e) => return ctx.abort(format!("could not open the actor's session: {e}")),
    };
    ctx.mark(
        "wallet",
        &format!("{}:{}:actor", conn.id, actor.public_hex()),
    );
    // An admitted submission: its events go to the actor only.
    let submit = event(
        "intent.submit",
        None,
        json!({"intent": "cert.probe", "input": {"nonce": "mtor-cert security"},
               "max_cost": 100_000, "idempotency_key": wire::new_id()}),
    );
    ctx.mark(
        "sent",
        &format!("{}:{}", conn.id, submit["id"].as_str().unwrap_or("")),
    );
    let _ = conn.send_event(&submit, ctx.within(2000)).await;
    let refused: Vec<(&str, String)> = vec![
        (
            "mint-into-observer",
            event(
                "wallet.mint",
                None,
                json!({"wallet": observer.public_hex(), "amount": 5_000,
                       "idempotency_key": wire::new_id(), "memo": "<script>alert(1)</script>"}),
            )
            .to_string(),
        ),
        (
            "fetch-unknown",
            event("intent.fetch", None, json!({"intent_id": wire::new_id()})).to_string(),
        ),
        (
            "cancel-unknown",
            event("intent.cancel", None, json!({"intent_id": wire::new_id()})).to_string(),
        ),
        (
            "bad-id",
            event(
                "intent.fetch",
                None,
                json!({"intent_id": "<img src=x onerror=alert(1)>"}),
            )
            .to_string(),
        ),
        ("bad-json", "{\"proto\":\"MTOR/1\",\"type\":".to_owned()),
    ];
    for (label, text) in &refused {
        let id = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        ctx.mark("refused", &format!("{label}:{}:{id}", conn.id));
        let _ = conn.send_text(text, ctx.within(2000)).await;
    }
    let window = u64::try_from(
        ctx.spec
            .params
            .get("window_ms")
            .and_then(|v| v.as_integer())
            .unwrap_or(1500),
    )
    .unwrap_or(1500);
    // Read everything each connection got: the actor's for the window, then what the others
    // buffered meanwhile (their frames only need to be journaled, not timed).
    let until = ctx.within(window);
    while conn.next_frame(until).await.is_ok() {}
    let until = ctx.within(300);
    while watch.next_frame(until).await.is_ok() {}
    if let Some(s) = sysop_conn.as_mut() {
        let until = ctx.within(300);
        while s.next_frame(until).await.is_ok() {}
    }
    for path in ["/v1/manifest", "/v1/health", "/metrics"] {
        let _ = http_get(
            &ctx.target.http_base,
            path,
            ctx.journal,
            case,
            ctx.within(2000),
        )
        .await;
    }
    ctx.mark("done", "");
    conn.close().await;
    watch.close().await;
    if let Some(s) = sysop_conn {
        s.close().await;
    }
}

// ---------------------------------------------------------------- checkers

/// Every marker `name` with its record index and value.
fn marks<'a>(records: &[&'a Record], name: &str) -> Vec<(usize, &'a str)> {
    let prefix = format!("{name}:");
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let rest = note(r, MARK)?;
            rest.strip_prefix(prefix.as_str()).map(|v| (i, v))
        })
        .collect()
}

/// A frame received on `conn`, parsed when it is JSON.
fn frames_on<'a>(
    records: &[&'a Record],
    from: usize,
    conn: u32,
) -> Vec<(u64, &'a str, Option<Value>)> {
    records[from..]
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Frame {
                conn: c,
                dir: Dir::Recv,
                data,
            } if *c == conn => Some((r.seq, data.as_str(), serde_json::from_str(data).ok())),
            _ => None,
        })
        .collect()
}

/// An HTTP answer as journaled: (seq, status, body); status 0 when none came.
type Answer<'a> = (u64, u16, &'a str);

/// The answer to each labelled request: label → answer.
fn answers<'a>(records: &[&'a Record]) -> Vec<(&'a str, Option<Answer<'a>>)> {
    marks(records, "req")
        .into_iter()
        .map(|(i, label)| {
            let answer = records[i + 1..].iter().find_map(|r| match &r.entry {
                Entry::Http { status, body, .. } => Some((r.seq, *status, body.as_str())),
                _ => None,
            });
            (label, answer)
        })
        .collect()
}

fn code_of(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
}

/// Decides a `security` case from its records.
pub fn check(spec: &CaseSpec, records: &[&Record]) -> Judgement {
    if marks(records, "done").is_empty() {
        return Judgement::new(
            Outcome::Unknown,
            "the case's driver did not finish",
            "no `done` marker",
        );
    }
    match check_param(spec) {
        "worker-bad-token" => check_bad_token(records),
        "mint-forbidden" => check_mint_forbidden(records),
        "rest-wrong-signer" => check_rest(
            records,
            &[
                ("forged", 401, "BAD_SIGNATURE"),
                ("other-signer", 403, "FORBIDDEN"),
                ("other-statement", 403, "FORBIDDEN"),
                ("wallet-ledger", 403, "FORBIDDEN"),
            ],
            "own",
        ),
        "rest-stale" => check_rest(
            records,
            &[
                ("stale", 401, "CHALLENGE_EXPIRED"),
                ("future", 401, "CHALLENGE_EXPIRED"),
            ],
            "fresh",
        ),
        "path-traversal" => check_traversal(records),
        "no-amplification" => check_amplification(records),
        "no-wallet-broadcast" => check_broadcast(records),
        "frame-flood" => flood::check(spec, records),
        other => Judgement::new(
            Outcome::Unknown,
            format!("no checker for security check `{other}`"),
            "",
        ),
    }
}

fn check_bad_token(records: &[&Record]) -> Judgement {
    let Some((at, value)) = marks(records, "register").into_iter().next() else {
        return Judgement::new(Outcome::Unknown, "worker.register was never sent", "");
    };
    let mut parts = value.splitn(2, ':');
    let conn: u32 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let id = parts.next().unwrap_or("");
    let frames = frames_on(records, at, conn);
    if let Some((seq, _, e)) = frames.iter().find(|(_, _, e)| {
        matches!(
            e.as_ref().and_then(|e| e["type"].as_str()),
            Some("session.challenge" | "worker.enrolled")
        )
    }) {
        let kind = e
            .as_ref()
            .and_then(|e| e["type"].as_str())
            .unwrap_or("?")
            .to_owned();
        let enrolled = frames.iter().any(|(_, _, e)| {
            e.as_ref().and_then(|e| e["type"].as_str()) == Some("worker.enrolled")
        });
        return Judgement::new(
            Outcome::Broken,
            if enrolled {
                "a worker enrolled with a wrong enrolment token: anyone can join and be paid"
            } else {
                "a worker.register with a wrong token was answered with a challenge"
            },
            format!("{kind} after a wrong token"),
        )
        .with("the answer", vec![*seq]);
    }
    let reply = frames
        .iter()
        .find(|(_, _, e)| e.as_ref().and_then(|e| e["corr"].as_str()) == Some(id));
    match reply {
        Some((seq, _, e)) => {
            let code = e
                .as_ref()
                .and_then(|e| e["body"]["code"].as_str())
                .unwrap_or("?");
            let kind = e.as_ref().and_then(|e| e["type"].as_str()).unwrap_or("?");
            if kind == "error" && code == "BAD_TOKEN" {
                Judgement::new(
                    Outcome::Pass,
                    "the wrong enrolment token was refused with BAD_TOKEN and no challenge",
                    "error BAD_TOKEN",
                )
                .with("refusal", vec![*seq])
            } else {
                Judgement::new(
                    Outcome::Broken,
                    "the wrong enrolment token was not refused with BAD_TOKEN",
                    format!("{kind} {code}"),
                )
                .with("the answer", vec![*seq])
            }
        }
        None => Judgement::new(
            Outcome::Broken,
            "worker.register with a wrong token got no answer",
            "no BAD_TOKEN error",
        ),
    }
}

fn check_mint_forbidden(records: &[&Record]) -> Judgement {
    let Some((at, value)) = marks(records, "mint").into_iter().next() else {
        return Judgement::new(Outcome::Unknown, "wallet.mint was never sent", "");
    };
    let mut parts = value.splitn(2, ':');
    let conn: u32 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let id = parts.next().unwrap_or("");
    let reply = frames_on(records, at, conn)
        .into_iter()
        .find(|(_, _, e)| e.as_ref().and_then(|e| e["corr"].as_str()) == Some(id));
    let Some((seq, _, reply)) = reply else {
        return Judgement::new(
            Outcome::Broken,
            "a wallet's wallet.mint got no answer (SES-7 requires FORBIDDEN)",
            "no reply",
        );
    };
    let kind = reply
        .as_ref()
        .and_then(|e| e["type"].as_str())
        .unwrap_or("?");
    let code = reply
        .as_ref()
        .and_then(|e| e["body"]["code"].as_str())
        .unwrap_or("");
    if kind == "wallet.minted" {
        return Judgement::new(
            Outcome::Broken,
            "a plain wallet minted money into itself: only the sysop may mint",
            "wallet.minted to a session without the sysop role",
        )
        .with("wallet.minted", vec![seq]);
    }
    if kind != "error" || code != "FORBIDDEN" {
        return Judgement::new(
            Outcome::Broken,
            "a wallet's wallet.mint was not refused with FORBIDDEN",
            format!("{kind} {code}"),
        )
        .with("the answer", vec![seq]);
    }
    let balance = answers(records)
        .into_iter()
        .find(|(l, _)| *l == "balance")
        .and_then(|(_, a)| a);
    match balance {
        Some((bseq, 200, body)) => {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let (available, held) = (v["available"].as_i64(), v["held"].as_i64());
            if available == Some(0) && held == Some(0) {
                Judgement::new(
                    Outcome::Pass,
                    "a wallet's wallet.mint was refused with FORBIDDEN and its balance stayed 0",
                    "error FORBIDDEN; balance available 0, held 0",
                )
                .with("refusal", vec![seq])
                .with("balance", vec![bseq])
            } else {
                Judgement::new(
                    Outcome::Broken,
                    "the refused mint still changed the wallet's balance",
                    format!("balance after the refusal: {body}"),
                )
                .with("refusal", vec![seq])
                .with("balance", vec![bseq])
            }
        }
        Some((bseq, status, _)) => Judgement::new(
            Outcome::Unknown,
            format!("the wallet's own balance could not be read (status {status})"),
            "refusal seen, balance unknown",
        )
        .with("balance request", vec![bseq]),
        None => Judgement::new(
            Outcome::Unknown,
            "the wallet's balance was never read",
            "refusal seen, balance unknown",
        ),
    }
}

/// Each labelled request must get its status and `rest/error` code; `control` must get 200, or
/// the endpoint itself does not work and nothing is decided.
fn check_rest(records: &[&Record], want: &[(&str, u16, &str)], control: &str) -> Judgement {
    let got = answers(records);
    let find = |label: &str| got.iter().find(|(l, _)| *l == label).and_then(|(_, a)| *a);
    let mut problems = Vec::new();
    let mut seqs = Vec::new();
    for (label, status, code) in want {
        match find(label) {
            None => {
                return Judgement::new(
                    Outcome::Unknown,
                    format!("the `{label}` request got no HTTP answer"),
                    "",
                )
            }
            Some((seq, 0, body)) => {
                return Judgement::new(
                    Outcome::Unknown,
                    format!("the `{label}` request got no response: {body}"),
                    "",
                )
                .with("request", vec![seq])
            }
            Some((seq, s, body)) => {
                seqs.push(seq);
                let c = code_of(body);
                if s != *status || c.as_deref() != Some(*code) {
                    let served = if (200..300).contains(&s) {
                        " (the data was served)"
                    } else {
                        ""
                    };
                    problems.push((
                        seq,
                        format!(
                            "`{label}`: {s} {}{served}, expected {status} {code}",
                            c.unwrap_or_else(|| "no code".into())
                        ),
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        let mut j = Judgement::new(
            Outcome::Broken,
            format!(
                "{} of {} signed requests that must be refused were not refused as section 3.3 requires",
                problems.len(),
                want.len()
            ),
            problems
                .iter()
                .map(|(_, p)| p.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        for (seq, p) in problems {
            j = j.with(p, vec![seq]);
        }
        return j;
    }
    match find(control) {
        Some((seq, 200, _)) => Judgement::new(
            Outcome::Pass,
            format!(
                "all {} requests were refused with the required status and code; the correctly signed control was served",
                want.len()
            ),
            want.iter()
                .map(|(l, s, c)| format!("{l}: {s} {c}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
        .with("refusals", seqs)
        .with("control", vec![seq]),
        Some((seq, s, _)) => Judgement::new(
            Outcome::Unknown,
            format!("the correctly signed control request was answered {s}, so the refusals prove nothing"),
            format!("control: {s}"),
        )
        .with("control", vec![seq]),
        None => Judgement::new(Outcome::Unknown, "the control request got no answer", ""),
    }
}

fn check_traversal(records: &[&Record]) -> Judgement {
    let got = answers(records);
    let mut bad = Vec::new();
    let mut unanswered = Vec::new();
    for (path, answer) in &got {
        let Some((seq, status, body)) = answer else {
            unanswered.push(*path);
            continue;
        };
        let leaked = FILE_MARKERS.iter().find(|m| body.contains(*m));
        match (status, leaked) {
            (_, Some(m)) => bad.push((*seq, format!("GET {path}: {status}, body holds `{m}`"))),
            (0, None) => unanswered.push(*path),
            (400 | 404, None) => {}
            (s, None) => bad.push((*seq, format!("GET {path}: {s}, expected 404 NOT_FOUND"))),
        }
    }
    if !bad.is_empty() {
        let mut j = Judgement::new(
            Outcome::Broken,
            format!(
                "{} of {} traversal requests were not refused with 404",
                bad.len(),
                got.len()
            ),
            bad.iter()
                .map(|(_, b)| b.as_str())
                .take(10)
                .collect::<Vec<_>>()
                .join("\n"),
        );
        for (seq, b) in bad.into_iter().take(20) {
            j = j.with(b, vec![seq]);
        }
        return j;
    }
    if !unanswered.is_empty() {
        return Judgement::new(
            Outcome::Unknown,
            format!("{} traversal requests got no response", unanswered.len()),
            unanswered.join("\n"),
        );
    }
    Judgement::new(
        Outcome::Pass,
        format!(
            "all {} traversal requests were refused (404 or 400) and served no file",
            got.len()
        ),
        "no 2xx, no file content",
    )
}

/// SEC-5: observers get nothing after they went quiet; each refused frame gets at most one frame.
fn check_amplification(records: &[&Record]) -> Judgement {
    let mut problems: Vec<(u64, String)> = Vec::new();
    let quiet = marks(records, "quiet");
    for (at, conn) in &quiet {
        let conn: u32 = conn.parse().unwrap_or(0);
        for (seq, data, e) in frames_on(records, *at, conn) {
            let kind = e
                .as_ref()
                .and_then(|e| e["type"].as_str())
                .unwrap_or("?")
                .to_owned();
            problems.push((
                seq,
                format!(
                    "connection {conn} of another wallet, which sent nothing, received {kind} ({} bytes)",
                    data.len()
                ),
            ));
        }
    }
    let refused = marks(records, "refused");
    for (k, (at, value)) in refused.iter().enumerate() {
        let mut parts = value.splitn(3, ':');
        let label = parts.next().unwrap_or("?");
        let conn: u32 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let id = parts.next().unwrap_or("");
        let answers: Vec<u64> = if id.is_empty() {
            // No readable id: its answers are the `ref: null` errors before the next probe.
            let end = refused.get(k + 1).map_or(records.len(), |(i, _)| *i);
            frames_on(&records[..end], *at, conn)
                .into_iter()
                .filter(|(_, _, e)| {
                    e.as_ref().is_some_and(|e| {
                        e["type"] == "error" && e["body"]["ref"].is_null() && e["corr"].is_null()
                    })
                })
                .map(|(s, _, _)| s)
                .collect()
        } else {
            frames_on(records, *at, conn)
                .into_iter()
                .filter(|(_, _, e)| {
                    e.as_ref().is_some_and(|e| {
                        e["corr"].as_str() == Some(id) || e["body"]["ref"].as_str() == Some(id)
                    })
                })
                .map(|(s, _, _)| s)
                .collect()
        };
        if answers.len() > 1 {
            problems.push((
                answers[0],
                format!(
                    "the refused frame `{label}` caused {} frames to its sender",
                    answers.len()
                ),
            ));
        }
    }
    if refused.is_empty() {
        return Judgement::new(Outcome::Unknown, "no frame to be refused was sent", "");
    }
    if !problems.is_empty() {
        let mut j = Judgement::new(
            Outcome::Broken,
            "one client frame caused frames beyond its own bounded answer",
            problems
                .iter()
                .map(|(_, p)| p.as_str())
                .take(10)
                .collect::<Vec<_>>()
                .join("\n"),
        );
        for (seq, p) in problems.into_iter().take(20) {
            j = j.with(p, vec![seq]);
        }
        return j;
    }
    Judgement::new(
        Outcome::Pass,
        format!(
            "{} refused frames got at most one answer each, and {} other sessions received nothing",
            refused.len(),
            quiet.len()
        ),
        "no frame on another wallet's connection",
    )
}

/// SEC-4: no frame to a session names a known wallet other than its own (the sysop's mint
/// replies excepted), and manifest, health and metrics name none.
fn check_broadcast(records: &[&Record]) -> Judgement {
    let wallets: Vec<(u32, &str, &str)> = marks(records, "wallet")
        .into_iter()
        .filter_map(|(_, v)| {
            let mut p = v.splitn(3, ':');
            Some((p.next()?.parse().ok()?, p.next()?, p.next()?))
        })
        .collect();
    if wallets.len() < 2 {
        return Judgement::new(
            Outcome::Unknown,
            "fewer than two wallet sessions were opened",
            "",
        );
    }
    let mut leaks: Vec<(u64, String)> = Vec::new();
    for (conn, own, role) in &wallets {
        for (seq, data, e) in frames_on(records, 0, *conn) {
            let kind = e
                .as_ref()
                .and_then(|e| e["type"].as_str())
                .unwrap_or("?")
                .to_owned();
            if *role == "sysop" && kind == "wallet.minted" {
                continue;
            }
            for (_, other, other_role) in &wallets {
                if other != own && data.contains(other) {
                    leaks.push((
                        seq,
                        format!("{kind} to the {role}'s session names the {other_role}'s wallet"),
                    ));
                }
            }
        }
    }
    let mut served = 0;
    for r in records {
        if let Entry::Http { path, body, .. } = &r.entry {
            served += 1;
            for (_, key, role) in &wallets {
                if body.contains(key) {
                    leaks.push((r.seq, format!("GET {path} names the {role}'s wallet")));
                }
            }
        }
    }
    if !leaks.is_empty() {
        let mut j = Judgement::new(
            Outcome::Broken,
            "a wallet key was disclosed to another party",
            leaks
                .iter()
                .map(|(_, l)| l.as_str())
                .take(10)
                .collect::<Vec<_>>()
                .join("\n"),
        );
        for (seq, l) in leaks.into_iter().take(20) {
            j = j.with(l, vec![seq]);
        }
        return j;
    }
    Judgement::new(
        Outcome::Pass,
        format!(
            "no frame to {} sessions and none of {served} public endpoint answers named another wallet",
            wallets.len()
        ),
        "no disclosed wallet key",
    )
}

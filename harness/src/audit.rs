//! The audit log as the harness verifies it (section 12), and the paged walks of the REST exports.
//!
//! Kind `audit-log`, one case per `check` parameter:
//! - `chain`: the whole export is walked and the hash chain is recomputed from the spec's own
//!   definition (RFC 8785 canonical JSON of the record without `hash`, SHA-256, lowercase hex;
//!   `prev_hash` links, 64 zeros at `seq` 1), with every page validated against its schema and the
//!   `head` of the last page checked (AUD-1, AUD-2, AUD-10).
//! - `paging`: the audit and ledger exports are walked twice, with the largest `limit` and with a
//!   small one; each walk's pages must fit together (TRN-12) and the small walk must hold every
//!   item exactly once, identical to the large walk's (nothing missing, nothing twice).
//! - `critical`: a forged signed request is sent first (the realm must refuse it and record
//!   `auth.failed`); then every critical event the harness caused or saw during the run (from the
//!   journal: admissions, results, captures, releases, mints, dispatches, lapses, enrolments,
//!   departures, authentication failures) must have its record (AUD-5), every record that names a
//!   ledger entry must match the ledger export (section 12.3 step 6), and no record may contain
//!   an enrolment token (AUD-9).
//!
//! Drivers only walk and mark (`mark:walk:<name>:<base path>`); the checks are pure functions of
//! the journal, re-run by `verify`.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::case::Ctx;
use crate::checker::{note, Judgement, Outcome, MARK};
use crate::contract::Contract;
use crate::history::PageInfo;
use crate::journal::{Dir, Entry, Record};
use crate::plan::CaseSpec;
use crate::wire::{http_get_forged, http_get_signed, Identity};

/// The case kind.
pub const KIND: &str = "audit-log";

/// The largest page the spec allows (section 3.4).
pub const MAX_LIMIT: u64 = 1000;
/// Pages a walk reads at most, so a realm whose `next_after` never ends cannot stall a case.
const MAX_PAGES: usize = 20_000;
/// How long before the audit walk an event must have been seen for its record to be due: the
/// realm writes records as it acts, but a commit may trail the frame that told the harness.
const GRACE_US: u64 = 500_000;
/// WRK-12: a departed worker's `worker.left` is due within 2 s.
const LEFT_GRACE_US: u64 = 2_000_000;
/// The genesis `prev_hash`.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why a record's hash could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The record is not a JSON object.
    #[error("an audit record is not a JSON object")]
    NotObject,
    /// RFC 8785 serialisation failed.
    #[error("cannot canonicalise an audit record: {0}")]
    Canonical(String),
}

/// The `hash` a record must carry: lowercase hex SHA-256 of the RFC 8785 (JCS) serialisation of
/// the record without its `hash` member (section 12.1).
pub fn record_hash(record: &Value) -> Result<String, AuditError> {
    let mut without = record.as_object().ok_or(AuditError::NotObject)?.clone();
    without.remove("hash");
    let canonical =
        serde_jcs::to_string(&without).map_err(|e| AuditError::Canonical(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(canonical.as_bytes())))
}

// ------------------------------------------------------------------------------ walks

/// One page of a paged walk, as the journal holds it.
#[derive(Debug, Clone)]
pub struct Page {
    /// Journal seq of the HTTP record.
    pub seq: u64,
    /// Journal time of the record.
    pub t_us: u64,
    /// The request's `after`.
    pub after: u64,
    /// The request's `limit`.
    pub limit: u64,
    /// HTTP status (0: no response).
    pub status: u16,
    /// The body, when it is JSON.
    pub body: Option<Value>,
}

/// A paged walk: its pages in order.
#[derive(Debug, Clone)]
pub struct Walk {
    /// The driver's name for it (`audit-full`, `ledger-small`...).
    pub name: String,
    /// The path walked (`/v1/audit`).
    pub base: String,
    /// Journal seq of the walk's marker.
    pub mark: u64,
    /// Journal time of the marker.
    pub t_us: u64,
    /// The pages.
    pub pages: Vec<Page>,
}

fn query_u64(path: &str, name: &str) -> Option<u64> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

/// The page described by one HTTP record of a walk of `base`.
pub fn page_of(r: &Record, base: &str) -> Option<Page> {
    let Entry::Http {
        path, status, body, ..
    } = &r.entry
    else {
        return None;
    };
    let rest = path.strip_prefix(base)?;
    if !(rest.is_empty() || rest.starts_with('?')) {
        return None;
    }
    Some(Page {
        seq: r.seq,
        t_us: r.t_us,
        after: query_u64(path, "after").unwrap_or(0),
        limit: query_u64(path, "limit").unwrap_or(100),
        status: *status,
        body: serde_json::from_str(body).ok(),
    })
}

/// The walks the driver marked in `records`, each with the HTTP pages that followed its marker.
pub fn walks(records: &[&Record]) -> Vec<Walk> {
    let mut out: Vec<Walk> = Vec::new();
    let mut open = false;
    for r in records {
        if let Some(m) = note(r, MARK) {
            if let Some(v) = m.strip_prefix("walk:") {
                let (name, base) = v.split_once(':').unwrap_or((v, ""));
                out.push(Walk {
                    name: name.to_owned(),
                    base: base.to_owned(),
                    mark: r.seq,
                    t_us: r.t_us,
                    pages: Vec::new(),
                });
                open = true;
            } else if m.starts_with("walk-end:") {
                open = false;
            }
            continue;
        }
        if !open {
            continue;
        }
        if let Some(w) = out.last_mut() {
            if let Some(p) = page_of(r, &w.base) {
                w.pages.push(p);
            }
        }
    }
    out
}

/// A walk's page facts, and its items each with the journal seq of the page that held it.
pub type Walked = (Vec<PageInfo>, Vec<(Value, u64)>);

/// The page facts and items of a walk's pages. `Err` holds why the walk cannot be used: a page
/// without a response (`Unknown`) or with an error status or a body of the wrong shape (`Broken`).
pub fn items(walk: &Walk, key: &str) -> Result<Walked, Judgement> {
    let mut infos = Vec::new();
    let mut items = Vec::new();
    if walk.pages.is_empty() {
        return Err(Judgement::new(
            Outcome::Unknown,
            format!("the walk of {} read no page", walk.base),
            "no page",
        ));
    }
    for p in &walk.pages {
        if p.status == 0 {
            return Err(Judgement::new(
                Outcome::Unknown,
                format!("GET {} got no response", walk.base),
                "no response",
            )
            .with("the request", vec![p.seq]));
        }
        let body = match (&p.body, p.status) {
            (Some(b), 200) => b,
            _ => {
                return Err(Judgement::new(
                    Outcome::Broken,
                    format!(
                        "GET {}?after={}&limit={} answered {} to a signed request of the sysop or auditor",
                        walk.base, p.after, p.limit, p.status
                    ),
                    format!("status {}", p.status),
                )
                .with("the response", vec![p.seq]))
            }
        };
        let Some(list) = body.get(key).and_then(Value::as_array) else {
            return Err(Judgement::new(
                Outcome::Broken,
                format!("a page of {} has no `{key}` array", walk.base),
                "malformed page",
            )
            .with("the response", vec![p.seq]));
        };
        let seq_of = |v: &Value| v.get("seq").and_then(Value::as_u64);
        infos.push(PageInfo {
            after: p.after,
            limit: p.limit,
            count: list.len() as u64,
            first: list.first().and_then(seq_of),
            last: list.last().and_then(seq_of),
            next_after: body.get("next_after").and_then(Value::as_u64),
            head: body.get("head_seq").and_then(Value::as_u64).or_else(|| {
                body.get("head")
                    .and_then(|h| h.get("seq"))
                    .and_then(Value::as_u64)
            }),
        });
        items.extend(list.iter().map(|v| (v.clone(), p.seq)));
    }
    Ok((infos, items))
}

/// What is wrong with how a walk's pages fit together (TRN-12), as (problem, page seqs).
pub fn paging_problems(
    walk: &Walk,
    infos: &[PageInfo],
    items: &[(Value, u64)],
) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    let mut expect_after = 0u64;
    let mut k = 0usize;
    for (n, (info, page)) in infos.iter().zip(&walk.pages).enumerate() {
        let last_page = n + 1 == infos.len();
        let mut prev = info.after;
        for (item, _) in &items[k..k + info.count as usize] {
            let s = item.get("seq").and_then(Value::as_u64).unwrap_or(0);
            if s <= prev {
                out.push((
                    format!(
                        "page after={} returned seq {s} after {prev}: not ascending above `after`",
                        info.after
                    ),
                    vec![page.seq],
                ));
                break;
            }
            prev = s;
        }
        k += info.count as usize;
        if info.after != expect_after {
            out.push((
                format!(
                    "page {} asked after={} where the previous next_after was {expect_after}",
                    n + 1,
                    info.after
                ),
                vec![page.seq],
            ));
        }
        if info.count > info.limit {
            out.push((
                format!("{} items on a page with limit {}", info.count, info.limit),
                vec![page.seq],
            ));
        }
        match (info.next_after, last_page) {
            (Some(na), false) if Some(na) == info.last => {}
            (Some(na), false) => out.push((
                format!(
                    "next_after {na} is not the seq of the last item returned ({})",
                    info.last.map_or("none".into(), |l| l.to_string())
                ),
                vec![page.seq],
            )),
            (None, false) => out.push(("next_after null before the end".into(), vec![page.seq])),
            (Some(na), true) => out.push((
                format!("the walk stopped with next_after {na} still set (page limit or budget)"),
                vec![page.seq],
            )),
            (None, true) => {
                if let Some(h) = info.head {
                    if h > info.last.unwrap_or(info.after) {
                        out.push((
                            format!(
                                "next_after is null but the head ({h}) is past the last item returned ({})",
                                info.last.unwrap_or(info.after)
                            ),
                            vec![page.seq],
                        ));
                    }
                }
            }
        }
        expect_after = info.next_after.unwrap_or(0);
    }
    out
}

// ------------------------------------------------------------------------------ drivers

/// Walks `base` (`/v1/audit`, `/v1/ledger`, a statement) page by page, signed by `who`, with
/// `limit`, marking the walk for the checker. Returns the journal seqs of the pages read.
pub(crate) async fn walk(
    ctx: &Ctx<'_>,
    name: &str,
    base: &str,
    who: &Identity,
    limit: u64,
    deadline: Instant,
) -> Vec<u64> {
    ctx.mark("walk", &format!("{name}:{base}"));
    let mut after = 0u64;
    let mut seqs = Vec::new();
    for _ in 0..MAX_PAGES {
        let path = format!("{base}?after={after}&limit={limit}");
        let result = http_get_signed(
            &ctx.target.http_base,
            &path,
            who,
            ctx.journal,
            Some(&ctx.spec.id),
            deadline,
        )
        .await;
        seqs.push(ctx.journal.next_seq().saturating_sub(1));
        let Ok((200, body)) = result else { break };
        let next = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("next_after").and_then(Value::as_u64));
        match next {
            // A next_after that does not move forward would loop; the checker reports it.
            Some(n) if n > after && Instant::now() < deadline => after = n,
            _ => break,
        }
    }
    ctx.mark("walk-end", name);
    seqs
}

fn u64_param(spec: &CaseSpec, key: &str, default: u64) -> u64 {
    spec.params
        .get(key)
        .and_then(|v| v.as_integer())
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(default)
}

/// The driver of `audit-log`.
pub(crate) async fn drive(ctx: &Ctx<'_>) {
    let check = ctx
        .spec
        .params
        .get("check")
        .and_then(|v| v.as_str())
        .unwrap_or("chain");
    let Some(reader) = ctx.target.auditor.as_ref().or(ctx.target.sysop.as_ref()) else {
        return ctx.skip(
            "reading the audit log needs the auditor's or the sysop's key: give `credentials.auditor_secret` or `credentials.sysop_secret` in the manifest",
        );
    };
    let full = u64_param(ctx.spec, "page_limit", MAX_LIMIT).clamp(1, MAX_LIMIT);
    let small = u64_param(ctx.spec, "small_limit", 50).clamp(1, MAX_LIMIT);
    let deadline = ctx.deadline;
    match check {
        "paging" => {
            walk(ctx, "audit-full", "/v1/audit", reader, full, deadline).await;
            walk(ctx, "audit-small", "/v1/audit", reader, small, deadline).await;
            walk(ctx, "ledger-full", "/v1/ledger", reader, full, deadline).await;
            walk(ctx, "ledger-small", "/v1/ledger", reader, small, deadline).await;
        }
        "critical" => {
            // A forged request: someone claiming the reader's key without it.
            match Identity::generate() {
                Ok(forger) => {
                    let path = "/v1/audit?after=0&limit=1";
                    ctx.mark("forged-rest", path);
                    let _ = http_get_forged(
                        &ctx.target.http_base,
                        path,
                        reader,
                        &forger,
                        ctx.journal,
                        Some(&ctx.spec.id),
                        ctx.within(3000),
                    )
                    .await;
                }
                Err(e) => {
                    ctx.note(format!("no randomness for a forger's key: {e}"));
                }
            }
            // Let the realm commit what it recorded for the refusal (and for recent events).
            tokio::time::sleep(std::time::Duration::from_micros(GRACE_US + 100_000)).await;
            walk(ctx, "audit-full", "/v1/audit", reader, full, deadline).await;
            walk(ctx, "ledger-full", "/v1/ledger", reader, full, deadline).await;
        }
        _ => {
            walk(ctx, "audit-full", "/v1/audit", reader, full, deadline).await;
        }
    }
}

// ------------------------------------------------------------------------------ checks

/// Decides an `audit-log` case from the journal: `records` are the case's own, `all` the whole
/// journal up to the case's end (the critical-events check reads what earlier cases saw).
pub fn check(
    spec: &CaseSpec,
    all: &[Record],
    records: &[&Record],
    contract: &Contract,
) -> Judgement {
    let walks = walks(records);
    let find = |name: &str| walks.iter().find(|w| w.name == name);
    match spec
        .params
        .get("check")
        .and_then(|v| v.as_str())
        .unwrap_or("chain")
    {
        "paging" => check_paging(&[
            (
                find("audit-full"),
                find("audit-small"),
                "records",
                "/v1/audit",
            ),
            (
                find("ledger-full"),
                find("ledger-small"),
                "entries",
                "/v1/ledger",
            ),
        ]),
        "critical" => match (find("audit-full"), find("ledger-full")) {
            (Some(a), Some(l)) => check_critical(all, records, a, l),
            _ => Judgement::new(Outcome::Unknown, "the exports were not walked", ""),
        },
        _ => match find("audit-full") {
            Some(w) => check_chain(w, contract),
            None => Judgement::new(Outcome::Unknown, "the audit export was not walked", ""),
        },
    }
}

/// The hash chain over the whole export (AUD-1, AUD-2, AUD-10).
pub fn check_chain(walk: &Walk, contract: &Contract) -> Judgement {
    let (infos, records) = match items(walk, "records") {
        Ok(x) => x,
        Err(j) => return j,
    };
    for p in &walk.pages {
        if let Some(body) = &p.body {
            match contract.validate_with("rest/audit-export", body) {
                Ok(v) if !v.is_empty() => {
                    return Judgement::new(
                        Outcome::Broken,
                        "a page of the audit export breaks rest/audit-export (AUD-1)",
                        v.iter()
                            .take(5)
                            .map(|v| format!("at \"{}\" [{}]: {}", v.pointer, v.keyword, v.message))
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                    .with("the page", vec![p.seq]);
                }
                Err(e) => return Judgement::new(Outcome::Unknown, format!("contract: {e}"), ""),
                Ok(_) => {}
            }
        }
    }
    if records.is_empty() {
        return Judgement::new(
            Outcome::Broken,
            "the audit export is empty, yet every start of a realm records `realm.started` (AUD-5)",
            "0 records",
        )
        .with("the page", walk.pages.iter().map(|p| p.seq).collect());
    }
    let mut prev_hash = GENESIS.to_owned();
    for (i, (record, page)) in records.iter().enumerate() {
        let want_seq = i as u64 + 1;
        let seq = record.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if seq != want_seq {
            return Judgement::new(
                Outcome::Broken,
                format!("the audit log's seq runs {} then {seq}: seq must run 1, 2, 3, ... without gaps or repeats (AUD-1)", want_seq - 1),
                format!("record {i} of the walk has seq {seq}, expected {want_seq}"),
            )
            .with("the page holding it", vec![*page]);
        }
        let got_prev = record
            .get("prev_hash")
            .and_then(Value::as_str)
            .unwrap_or("");
        if got_prev != prev_hash {
            return Judgement::new(
                Outcome::Broken,
                format!(
                    "record {seq}'s prev_hash is not the hash of record {} (AUD-2)",
                    seq - 1
                ),
                format!("prev_hash {got_prev}\nexpected  {prev_hash}"),
            )
            .with("the page holding it", vec![*page]);
        }
        let want = match record_hash(record) {
            Ok(h) => h,
            Err(e) => {
                return Judgement::new(Outcome::Broken, format!("record {seq}: {e}"), "")
                    .with("the page holding it", vec![*page])
            }
        };
        let got = record.get("hash").and_then(Value::as_str).unwrap_or("");
        if got != want {
            return Judgement::new(
                Outcome::Broken,
                format!("record {seq}'s hash is not the SHA-256 of its RFC 8785 form without `hash` (AUD-2)"),
                format!(
                    "hash     {got}\nexpected {want}\nover {}",
                    serde_jcs::to_string(&{
                        let mut r = record.clone();
                        if let Some(o) = r.as_object_mut() {
                            o.remove("hash");
                        }
                        r
                    })
                    .unwrap_or_default()
                ),
            )
            .with("the page holding it", vec![*page]);
        }
        prev_hash = want;
    }
    // Step 5: the head names a record read, with its hash.
    let last_page = walk.pages.last().and_then(|p| p.body.as_ref());
    let head = last_page.and_then(|b| b.get("head"));
    let head_seq = head.and_then(|h| h.get("seq")).and_then(Value::as_u64);
    let head_hash = head.and_then(|h| h.get("hash")).and_then(Value::as_str);
    let n = records.len() as u64;
    if let (Some(hs), Some(hh)) = (head_seq, head_hash) {
        let at = usize::try_from(hs)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| records.get(i));
        let matches = at.is_some_and(|(r, _)| r.get("hash").and_then(Value::as_str) == Some(hh));
        if hs > n || !matches {
            return Judgement::new(
                Outcome::Broken,
                format!("the export's head ({hs}, {hh}) is not a record the walk read (AUD-10)"),
                format!("{n} records read; last hash {prev_hash}"),
            )
            .with(
                "the last page",
                walk.pages.last().map(|p| vec![p.seq]).unwrap_or_default(),
            );
        }
    }
    Judgement::new(
        Outcome::Pass,
        format!("the {n} audit records chain from the genesis to the head, every hash recomputed from RFC 8785 + SHA-256"),
        format!("{n} records in {} pages; head {}", infos.len(), prev_hash),
    )
    .with("first and last pages", walk.pages.iter().map(|p| p.seq).take(1).chain(walk.pages.last().map(|p| p.seq)).collect())
}

/// Both exports walked with two limits: the pages fit, and nothing is missing or read twice.
fn check_paging(pairs: &[(Option<&Walk>, Option<&Walk>, &str, &str)]) -> Judgement {
    let mut summary = Vec::new();
    for &(full, small, key, base) in pairs {
        let (Some(full), Some(small)) = (full, small) else {
            return Judgement::new(Outcome::Unknown, format!("{base} was not walked twice"), "");
        };
        let (full_infos, full_items) = match items(full, key) {
            Ok(x) => x,
            Err(j) => return j,
        };
        let (small_infos, small_items) = match items(small, key) {
            Ok(x) => x,
            Err(j) => return j,
        };
        for (w, infos, its) in [
            (full, &full_infos, &full_items),
            (small, &small_infos, &small_items),
        ] {
            if let Some((why, seqs)) = paging_problems(w, infos, its).into_iter().next() {
                return Judgement::new(
                    Outcome::Broken,
                    format!("the pages of {base} do not fit together: {why} (TRN-12)"),
                    format!("walk with limit {}", infos.first().map_or(0, |i| i.limit)),
                )
                .with("the page", seqs);
            }
        }
        // Nothing twice, nothing missing: seq 1..n exactly once in the small walk.
        let mut seen: HashSet<u64> = HashSet::new();
        for (i, (item, page)) in small_items.iter().enumerate() {
            let s = item.get("seq").and_then(Value::as_u64).unwrap_or(0);
            if !seen.insert(s) {
                return Judgement::new(
                    Outcome::Broken,
                    format!(
                        "walking {base} with limit {} returned item {s} twice (TRN-12)",
                        small_infos[0].limit
                    ),
                    format!("item {i} of the walk"),
                )
                .with("the page", vec![*page]);
            }
            if s != i as u64 + 1 {
                return Judgement::new(
                    Outcome::Broken,
                    format!(
                        "walking {base} with limit {} skipped item {} (next read: {s}) (TRN-12, {})",
                        small_infos[0].limit,
                        i + 1,
                        if key == "records" { "AUD-1" } else { "LED-1" }
                    ),
                    format!("{} items read before the gap", i),
                )
                .with("the page after the gap", vec![*page]);
            }
        }
        let small_last = small_items.len() as u64;
        let full_last = full_items.len() as u64;
        if small_last < full_last {
            return Judgement::new(
                Outcome::Broken,
                format!(
                    "walking {base} with limit {} ended at {small_last} although {full_last} items were read before with limit {} (TRN-12)",
                    small_infos[0].limit, full_infos[0].limit
                ),
                format!("{small_last} < {full_last}"),
            )
            .with("the last page", small.pages.last().map(|p| vec![p.seq]).unwrap_or_default());
        }
        // Read twice, identical (AUD-3, LED-8; section 12.3 step 7).
        for ((a, pa), (b, pb)) in full_items.iter().zip(&small_items) {
            if a != b {
                let s = a.get("seq").and_then(Value::as_u64).unwrap_or(0);
                return Judgement::new(
                    Outcome::Broken,
                    format!(
                        "item {s} of {base} read differently by two walks ({})",
                        if key == "records" {
                            "AUD-3, AUD-10"
                        } else {
                            "LED-8, LED-13"
                        }
                    ),
                    format!("first: {a}\nthen:  {b}"),
                )
                .with("the two pages", vec![*pa, *pb]);
            }
        }
        summary.push(format!(
            "{base}: {small_last} items in {} pages of {} and {} pages of {}",
            small_infos.len(),
            small_infos[0].limit,
            full_infos.len(),
            full_infos[0].limit
        ));
    }
    Judgement::new(
        Outcome::Pass,
        "the audit and ledger exports page completely: every item exactly once, in order, identical across walks",
        summary.join("\n"),
    )
}

/// One record the journal shows must exist.
struct Due {
    kind: &'static str,
    subject: String,
    /// `data.attempt` or `data.entry_seq` it must carry, when the record carries that member.
    member: Option<(&'static str, u64)>,
    /// Journal seq of the evidence, and its time.
    seq: u64,
    t_us: u64,
    grace: u64,
}

fn channel_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned())
}

/// Every critical event of the run is recorded (AUD-5), records that name ledger entries match
/// the export (section 12.3 step 6), and no record holds an enrolment token (AUD-9).
fn check_critical(all: &[Record], records: &[&Record], audit: &Walk, ledger: &Walk) -> Judgement {
    let (_, audit_items) = match items(audit, "records") {
        Ok(x) => x,
        Err(j) => return j,
    };
    let (_, entries) = match items(ledger, "entries") {
        Ok(x) => x,
        Err(j) => return j,
    };
    let walk_seq = audit.mark;
    let walk_t = audit.t_us;
    // What the journal shows happened before the walk.
    let mut due: Vec<Due> = Vec::new();
    let mut channels: HashMap<u32, String> = HashMap::new();
    let mut worker_of: HashMap<u32, String> = HashMap::new();
    let mut assigned: Vec<(String, u64, u64, u64)> = Vec::new(); // task, attempt, seq, t
    let mut reported: HashSet<(String, u64)> = HashSet::new();
    let mut tokens: HashSet<String> = HashSet::new();
    let mut push = |kind: &'static str,
                    subject: &str,
                    member: Option<(&'static str, u64)>,
                    r: &Record,
                    grace: u64| {
        due.push(Due {
            kind,
            subject: subject.to_owned(),
            member,
            seq: r.seq,
            t_us: r.t_us,
            grace,
        });
    };
    for r in all.iter().take_while(|r| r.seq < walk_seq) {
        match &r.entry {
            Entry::Conn {
                conn,
                event,
                detail,
            } if event == "open" => {
                channels.insert(*conn, channel_of(detail));
            }
            Entry::Conn { conn, event, .. } if event == "closed" || event == "aborted" => {
                if let Some(w) = worker_of.remove(conn) {
                    push("worker.left", &w, None, r, LEFT_GRACE_US);
                }
            }
            Entry::Http {
                path, status: 401, ..
            } => {
                let p = path.split('?').next().unwrap_or(path);
                push("auth.failed", p, None, r, GRACE_US);
            }
            Entry::Frame {
                dir: Dir::Send,
                data,
                ..
            } => {
                let Ok(e) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                let b = &e["body"];
                match e["type"].as_str() {
                    Some("worker.register") => {
                        if let Some(t) = b["token"].as_str().filter(|t| t.len() >= 16) {
                            tokens.insert(t.to_owned());
                        }
                    }
                    Some("task.result" | "task.failure") => {
                        if let (Some(t), Some(a)) = (b["task_id"].as_str(), b["attempt"].as_u64()) {
                            reported.insert((t.to_owned(), a));
                        }
                    }
                    _ => {}
                }
            }
            Entry::Frame {
                conn,
                dir: Dir::Recv,
                data,
            } => {
                let Ok(e) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                let b = &e["body"];
                let s = |k: &str| b[k].as_str().unwrap_or("").to_owned();
                let u = |k: &str| b[k].as_u64().unwrap_or(0);
                let worker = channels.get(conn).is_some_and(|c| c == "/v1/worker");
                match e["type"].as_str().unwrap_or("") {
                    "intent.accepted" => {
                        push("intent.admitted", &s("intent_id"), None, r, GRACE_US)
                    }
                    "intent.result" => {
                        push("intent.completed", &s("intent_id"), None, r, GRACE_US);
                        if u("cost") > 0 {
                            push("ledger.capture", &s("intent_id"), None, r, GRACE_US);
                        }
                        if u("released") > 0 {
                            push("ledger.release", &s("intent_id"), None, r, GRACE_US);
                        }
                    }
                    "intent.failed" => {
                        if u("released") > 0 {
                            push("ledger.release", &s("intent_id"), None, r, GRACE_US);
                        }
                        if s("code") == "DEAD_LETTERED" {
                            push("intent.dead_lettered", &s("intent_id"), None, r, GRACE_US);
                        }
                    }
                    "intent.cancelled" if u("released") > 0 => {
                        push("ledger.release", &s("intent_id"), None, r, GRACE_US);
                    }
                    "wallet.minted" => {
                        push(
                            "sysop.mint",
                            &s("wallet"),
                            Some(("entry_seq", u("entry_seq"))),
                            r,
                            GRACE_US,
                        );
                    }
                    "worker.enrolled" if worker => {
                        worker_of.insert(*conn, s("worker_id"));
                        push("worker.joined", &s("worker_id"), None, r, GRACE_US);
                    }
                    "task.assign" if worker => {
                        push(
                            "task.dispatched",
                            &s("task_id"),
                            Some(("attempt", u("attempt"))),
                            r,
                            GRACE_US,
                        );
                        assigned.push((s("task_id"), u("attempt"), r.seq, r.t_us));
                    }
                    "task.cancel" if worker && s("reason") == "lease_lapsed" => {
                        push("lease.lapsed", &s("task_id"), None, r, GRACE_US);
                    }
                    "task.receipt" if worker && s("code") == "LEASE_EXPIRED" => {
                        push("lease.lapsed", &s("task_id"), None, r, GRACE_US);
                    }
                    "error" => {
                        if matches!(
                            s("code").as_str(),
                            "BAD_SIGNATURE" | "CHALLENGE_EXPIRED" | "BAD_TOKEN"
                        ) {
                            let ch = channels
                                .get(conn)
                                .cloned()
                                .unwrap_or_else(|| "/v1/client".into());
                            push("auth.failed", &ch, None, r, GRACE_US);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    // An attempt the harness held and never answered, followed by a later attempt, lapsed.
    let mut later: HashMap<&str, u64> = HashMap::new();
    for (t, a, _, _) in &assigned {
        let m = later.entry(t.as_str()).or_insert(0);
        *m = (*m).max(*a);
    }
    for (t, a, seq, t_us) in &assigned {
        if later.get(t.as_str()).is_some_and(|m| m > a) && !reported.contains(&(t.clone(), *a)) {
            due.push(Due {
                kind: "lease.lapsed",
                subject: t.clone(),
                member: None,
                seq: *seq,
                t_us: *t_us,
                grace: GRACE_US,
            });
        }
    }
    // The records, by (kind, subject).
    let mut by: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
    for (rec, _) in &audit_items {
        if let (Some(k), Some(s)) = (rec["kind"].as_str(), rec["subject"].as_str()) {
            by.entry((k, s)).or_default().push(rec);
        }
    }
    let mut missing: Vec<&Due> = Vec::new();
    let mut required = 0usize;
    for d in &due {
        // Only what was certainly due when the walk began (t_us restarts on --resume).
        if walk_t.checked_sub(d.t_us).is_some_and(|age| age < d.grace) {
            continue;
        }
        required += 1;
        let found = by.get(&(d.kind, d.subject.as_str())).is_some_and(|rs| {
            rs.iter().any(|rec| match d.member {
                Some((m, v)) => rec["data"]
                    .get(m)
                    .and_then(Value::as_u64)
                    .is_none_or(|x| x == v),
                None => true,
            })
        }) || (d.kind == "auth.failed"
            && by.iter().any(|((k, s), _)| {
                *k == "auth.failed" && s.split('?').next() == Some(d.subject.as_str())
            }));
        if !found {
            missing.push(d);
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .take(10)
            .map(|d| {
                format!(
                    "{} for {}{} (seen at journal #{})",
                    d.kind,
                    d.subject,
                    d.member
                        .map(|(m, v)| format!(" with {m} {v}"))
                        .unwrap_or_default(),
                    d.seq
                )
            })
            .collect();
        return Judgement::new(
            Outcome::Broken,
            format!(
                "{} of the {required} critical events the harness saw have no audit record (AUD-5); first: {} for {}",
                missing.len(),
                missing[0].kind,
                missing[0].subject
            ),
            list.join("\n"),
        )
        .with("where the harness saw the events", missing.iter().take(20).map(|d| d.seq).collect())
        .with("the audit export", audit.pages.iter().map(|p| p.seq).collect());
    }
    // Step 6: records that name ledger entries match them.
    let by_seq: HashMap<u64, &Value> = entries
        .iter()
        .filter_map(|(e, _)| e.get("seq").and_then(Value::as_u64).map(|s| (s, e)))
        .collect();
    let head = by_seq.keys().max().copied().unwrap_or(0);
    for (rec, page) in &audit_items {
        let kind = rec["kind"].as_str().unwrap_or("");
        let want = match kind {
            "ledger.capture" => "capture",
            "ledger.release" => "release",
            "sysop.mint" => "mint",
            "intent.admitted" => "reserve",
            _ => continue,
        };
        let Some(s) = rec["data"].get("entry_seq").and_then(Value::as_u64) else {
            continue;
        };
        if s > head {
            continue; // committed after the ledger walk's head: cannot be checked
        }
        let subject = rec["subject"].as_str().unwrap_or("");
        let ok = by_seq.get(&s).is_some_and(|e| {
            e["kind"] == want
                && if want == "mint" {
                    e["postings"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["account"].as_str() == Some(&format!("wallet:{subject}")))
                    })
                } else {
                    e["intent_id"].as_str() == Some(subject)
                }
        });
        if !ok {
            return Judgement::new(
                Outcome::Broken,
                format!(
                    "audit record {} ({kind} of {subject}) names ledger entry #{s}, which is not a {want} of it (section 12.3 step 6, AUD-5)",
                    rec["seq"]
                ),
                format!("entry #{s}: {}", by_seq.get(&s).map_or("missing".to_owned(), |e| e.to_string())),
            )
            .with("the audit page", vec![*page]);
        }
    }
    // AUD-9: no enrolment token in any record.
    for (rec, page) in &audit_items {
        let text = rec.to_string();
        if let Some(t) = tokens.iter().find(|t| text.contains(t.as_str())) {
            return Judgement::new(
                Outcome::Broken,
                format!(
                    "audit record {} contains an enrolment token (AUD-9)",
                    rec["seq"]
                ),
                format!("token {}…", &t[..8.min(t.len())]),
            )
            .with("the audit page", vec![*page]);
        }
    }
    let forged = records
        .iter()
        .any(|r| note(r, MARK).is_some_and(|m| m.starts_with("forged-rest:")));
    let kinds: HashSet<&str> = due.iter().map(|d| d.kind).collect();
    Judgement::new(
        Outcome::Pass,
        format!(
            "all {required} critical events the harness saw during the run have their audit records{}",
            if forged { ", the forged request's `auth.failed` included" } else { "" }
        ),
        format!(
            "{} records checked against {} expectations of kinds {}; {} ledger entries cross-checked",
            audit_items.len(),
            required,
            {
                let mut k: Vec<&str> = kinds.into_iter().collect();
                k.sort_unstable();
                k.join(", ")
            },
            entries.len()
        ),
    )
    .with("the audit export", audit.pages.iter().map(|p| p.seq).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_spec_example_hashes_as_the_spec_says() {
        let record = json!({
            "seq": 1, "ts": "2026-11-23T08:13:20.000Z", "kind": "realm.started", "actor": "realm",
            "subject": "d9ce83d9473ba4bfdf27cf17880bca2ac8e5fc018e9f1de8d05398fc02494a0b",
            "data": {"version": "0.1.0", "fee_bps": 500}, "prev_hash": GENESIS
        });
        assert_eq!(
            record_hash(&record).expect("hash"),
            "0241512066b0c51cfbef7624ec9652d31b133f373f8f189846e863a41be5bf8e"
        );
    }

    fn fixture_walk() -> Walk {
        let text = include_str!("../../fixtures/corpus/valid/rest/audit-export.json");
        let body: Value = serde_json::from_str(text).expect("fixture");
        Walk {
            name: "audit-full".into(),
            base: "/v1/audit".into(),
            mark: 1,
            t_us: 0,
            pages: vec![Page {
                seq: 2,
                t_us: 0,
                after: 0,
                limit: 1000,
                status: 200,
                body: Some(body),
            }],
        }
    }

    #[test]
    fn the_corpus_export_chains_and_a_tampered_one_does_not() {
        let contract = Contract::embedded().expect("contract");
        let walk = fixture_walk();
        let j = check_chain(&walk, &contract);
        assert_eq!(j.outcome, Outcome::Pass, "{j:?}");

        let mut tampered = walk.clone();
        let body = tampered.pages[0].body.as_mut().expect("body");
        body["records"][2]["data"]["concurrency"] = json!(5);
        let j = check_chain(&tampered, &contract);
        assert_eq!(j.outcome, Outcome::Broken, "{j:?}");
        assert!(j.reason.contains("record 3's hash"), "{}", j.reason);

        let mut unlinked = walk.clone();
        let body = unlinked.pages[0].body.as_mut().expect("body");
        let records = body["records"].as_array_mut().expect("records");
        records.remove(1);
        let j = check_chain(&unlinked, &contract);
        assert_eq!(j.outcome, Outcome::Broken, "{j:?}");
        assert!(j.reason.contains("seq"), "{}", j.reason);
    }

    #[test]
    fn pages_must_fit_together() {
        let page = |seq: u64, after: u64, items: &[u64], next: Option<u64>| Page {
            seq,
            t_us: 0,
            after,
            limit: 2,
            status: 200,
            body: Some(json!({
                "records": items.iter().map(|s| json!({"seq": s})).collect::<Vec<_>>(),
                "next_after": next,
                "head": {"seq": 4, "hash": GENESIS},
            })),
        };
        let good = Walk {
            name: "x".into(),
            base: "/v1/audit".into(),
            mark: 0,
            t_us: 0,
            pages: vec![page(1, 0, &[1, 2], Some(2)), page(2, 2, &[3, 4], None)],
        };
        let (infos, its) = items(&good, "records").expect("items");
        assert!(paging_problems(&good, &infos, &its).is_empty());
        // A realm that skips one past the page end.
        let bad = Walk {
            pages: vec![page(1, 0, &[1, 2], Some(3)), page(2, 3, &[4], None)],
            ..good.clone()
        };
        let (infos, its) = items(&bad, "records").expect("items");
        let problems = paging_problems(&bad, &infos, &its);
        assert!(problems[0].0.contains("next_after 3"), "{problems:?}");
        // A last page that stops short of the head.
        let short = Walk {
            pages: vec![page(1, 0, &[1, 2], None)],
            ..good
        };
        let (infos, its) = items(&short, "records").expect("items");
        let problems = paging_problems(&short, &infos, &its);
        assert!(problems[0].0.contains("head"), "{problems:?}");
    }

    #[test]
    fn channels_come_from_urls() {
        assert_eq!(channel_of("ws://127.0.0.1:7700/v1/worker"), "/v1/worker");
        assert_eq!(channel_of("ws://h:1"), "/");
    }
}

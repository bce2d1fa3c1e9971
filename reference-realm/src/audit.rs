//! The audit log: append-only and hash-chained, in the realm's database.
//!
//! Each [`Record`] is `{seq, ts, kind, actor, subject, data, prev_hash, hash}`. `hash` is the
//! lowercase hex SHA-256 of the RFC 8785 (JCS) canonical JSON of the record without `hash`;
//! `prev_hash` is the previous record's `hash`, or 64 zeros ([`GENESIS_HASH`]) for seq 1. Changing,
//! inserting or removing any record therefore breaks the chain at that record or the next, which
//! [`verify_chain_on`] (on the database) and [`verify_records`] (on exported JSON) report with the
//! first broken seq and the reason. Cutting records off the *end* leaves a valid shorter chain:
//! an auditor detects it by comparing the [`ChainHead`] with one exported earlier.
//!
//! [`append_tx`] runs inside a [`Store`] write job, so a critical event's record commits in the
//! same transaction as the change it records (a ledger capture and its `ledger.capture` record):
//!
//! ```no_run
//! # use mtor_realm::{audit, ledger, store::{Store, StoreError}};
//! # #[derive(Debug)] enum E { S(StoreError), L(ledger::LedgerError), A(audit::AuditError) }
//! # impl From<StoreError> for E { fn from(e: StoreError) -> Self { E::S(e) } }
//! # impl From<ledger::LedgerError> for E { fn from(e: ledger::LedgerError) -> Self { E::L(e) } }
//! # impl From<audit::AuditError> for E { fn from(e: audit::AuditError) -> Self { E::A(e) } }
//! # fn demo(store: &Store, worker: String) -> Result<(), E> {
//! let settled = store.execute(move |tx| {
//!     let s = ledger::settle_success_tx(tx, "intent-1", 1_000, &worker, 500)?;
//!     audit::append_tx(tx, "ledger.capture", "realm", "intent-1",
//!         &serde_json::json!({ "cost": s.cost, "fee": s.fee, "worker": worker }))?;
//!     Ok::<_, E>(s)
//! })?;
//! # Ok(()) }
//! ```
//!
//! Data values must be JSON objects whose integers are within ±(2^53 − 1): JCS writes numbers as
//! IEEE doubles, so a larger integer would hash differently in another implementation.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::store::{now_rfc3339, Migration, Store, StoreError, WriteTx};

/// `prev_hash` of the first record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The largest page [`export_on`] returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// The largest `data` object accepted, in bytes of JSON.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// The largest `actor` or `subject`, in bytes.
const MAX_NAME_BYTES: usize = 512;

/// The largest `kind`, in bytes.
const MAX_KIND_BYTES: usize = 64;

/// The largest integer JCS (and JavaScript) represent exactly.
const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// The audit log's schema, in order.
pub const MIGRATIONS: &[Migration] = &[Migration {
    component: "audit",
    version: 1,
    name: "hash-chained audit records",
    sql: AUDIT_V1,
}];

const AUDIT_V1: &str = r#"
CREATE TABLE audit_records (
    seq       INTEGER PRIMARY KEY,
    ts        TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    data      TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
) STRICT;
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
"#;

/// Errors of audit operations.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A field is malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `data` holds an integer beyond ±(2^53 − 1), which JCS cannot hash portably.
    #[error("data holds an integer beyond 2^53 - 1 at {pointer}")]
    UnsafeNumber {
        /// JSON pointer to the number.
        pointer: String,
    },
    /// The record could not be canonicalised.
    #[error("cannot canonicalise the record: {0}")]
    Canonical(String),
    /// A page limit is outside 1..=1000.
    #[error("limit {0} is outside 1..={MAX_PAGE_LIMIT}")]
    InvalidLimit(u32),
    /// Stored data cannot be read back as a record (tampering or a bug).
    #[error("stored audit record {seq} is unreadable: {reason}")]
    Corrupt {
        /// The record's seq.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

/// One audit record, as stored and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it was appended (RFC 3339 UTC, milliseconds, `Z`).
    pub ts: String,
    /// What happened (`intent.admitted`, `ledger.capture`, `auth.failed`, …).
    pub kind: String,
    /// Who did it (a wallet or worker key, `realm`, `sysop`, …).
    pub actor: String,
    /// What it was done to (an intent id, a wallet, a worker, …).
    pub subject: String,
    /// Details: a JSON object.
    pub data: Value,
    /// The previous record's hash ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// SHA-256 (lowercase hex) of the JCS canonical JSON of this record without `hash`.
    pub hash: String,
}

/// What the hash covers: the record without `hash` (the serde form, kept as the test reference).
#[cfg(test)]
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    ts: &'a str,
    kind: &'a str,
    actor: &'a str,
    subject: &'a str,
    data: &'a Value,
    prev_hash: &'a str,
}

impl Record {
    /// Recomputes this record's hash from its other fields.
    pub fn compute_hash(&self) -> Result<String, AuditError> {
        // The members of `Hashed` in JCS order (actor, data, kind, prev_hash, seq, subject, ts),
        // written directly; a test holds this equal to serde_jcs over `Hashed`.
        let mut out = Vec::with_capacity(512);
        let fail = |e: serde_json::Error| AuditError::Canonical(e.to_string());
        out.extend_from_slice(b"{\"actor\":");
        crate::canonical::write_str(&self.actor, &mut out).map_err(fail)?;
        out.extend_from_slice(b",\"data\":");
        crate::canonical::write(&self.data, &mut out).map_err(fail)?;
        out.extend_from_slice(b",\"kind\":");
        crate::canonical::write_str(&self.kind, &mut out).map_err(fail)?;
        out.extend_from_slice(b",\"prev_hash\":");
        crate::canonical::write_str(&self.prev_hash, &mut out).map_err(fail)?;
        out.extend_from_slice(b",\"seq\":");
        crate::canonical::write(&Value::from(self.seq), &mut out).map_err(fail)?;
        out.extend_from_slice(b",\"subject\":");
        crate::canonical::write_str(&self.subject, &mut out).map_err(fail)?;
        out.extend_from_slice(b",\"ts\":");
        crate::canonical::write_str(&self.ts, &mut out).map_err(fail)?;
        out.push(b'}');
        Ok(hex::encode(Sha256::digest(&out)))
    }

    /// The hash as `serde_jcs` computes it over [`Hashed`]: the reference the fast path above
    /// is tested against.
    #[cfg(test)]
    fn reference_hash(&self) -> String {
        let canonical = serde_jcs::to_vec(&Hashed {
            seq: self.seq,
            ts: &self.ts,
            kind: &self.kind,
            actor: &self.actor,
            subject: &self.subject,
            data: &self.data,
            prev_hash: &self.prev_hash,
        })
        .expect("serde_jcs");
        hex::encode(Sha256::digest(&canonical))
    }
}

/// The last record of the chain: `{seq: 0, hash: GENESIS_HASH}` for an empty log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The last seq (0 when empty).
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

impl ChainHead {
    /// The head of an empty log.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// A page of the audit log, the body of `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditExport {
    /// The records, by seq.
    pub records: Vec<Record>,
    /// The `after` for the next page; `None` when this page is the last.
    pub next_after: Option<u64>,
    /// The log's last record when the page was read.
    pub head: ChainHead,
}

/// Why the chain is broken at a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum BreakReason {
    /// The seq is not the one after the previous record's.
    #[error("seq {found} follows seq {}, expected {expected}", expected.saturating_sub(1))]
    SeqGap {
        /// The seq that should come next.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// `prev_hash` is not the previous record's hash.
    #[error("prev_hash {found} is not the previous record's hash {expected}")]
    PrevHashMismatch {
        /// The previous record's hash.
        expected: String,
        /// The `prev_hash` found.
        found: String,
    },
    /// The stored hash is not the hash of the record's content.
    #[error("stored hash {stored} is not the hash of the record's content, {computed}")]
    HashMismatch {
        /// The stored hash.
        stored: String,
        /// The hash recomputed from the content.
        computed: String,
    },
    /// The hash is not 64 lowercase hex characters.
    #[error("hash {0:?} is not 64 lowercase hex characters")]
    MalformedHash(String),
    /// The timestamp is not RFC 3339 UTC with `Z`.
    #[error("ts {0:?} is not an RFC 3339 UTC timestamp")]
    MalformedTimestamp(String),
    /// `data` is not a JSON object.
    #[error("data is not a JSON object")]
    DataNotObject,
    /// The record cannot be read or canonicalised.
    #[error("record is unreadable: {0}")]
    Unreadable(String),
}

/// The first broken record of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {reason}")]
pub struct ChainBreak {
    /// The first record that does not verify.
    pub seq: u64,
    /// Why.
    pub reason: BreakReason,
}

/// The outcome of verifying a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Records that verified (all of them when the chain is intact).
    pub verified: u64,
    /// The last record that verified.
    pub head: ChainHead,
    /// The first broken record, if any.
    pub first_break: Option<ChainBreak>,
}

impl ChainReport {
    /// True when every record verified.
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Checks records one at a time, so that a long export can be verified page by page.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    head: ChainHead,
    verified: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// A verifier expecting seq 1 with the genesis `prev_hash`.
    pub fn new() -> Self {
        Self::resume(ChainHead::genesis())
    }

    /// A verifier expecting the record after `head` (trusted, e.g. from an earlier audit).
    pub fn resume(head: ChainHead) -> Self {
        Self { head, verified: 0 }
    }

    /// Checks the next record: its seq follows, its `prev_hash` is the previous hash, and its hash
    /// is the hash of its content. On success the record becomes the head.
    pub fn check(&mut self, record: &Record) -> Result<(), ChainBreak> {
        let fail = |reason| ChainBreak {
            seq: record.seq,
            reason,
        };
        let expected = self.head.seq.saturating_add(1);
        if record.seq != expected {
            return Err(fail(BreakReason::SeqGap {
                expected,
                found: record.seq,
            }));
        }
        if record.prev_hash != self.head.hash {
            return Err(fail(BreakReason::PrevHashMismatch {
                expected: self.head.hash.clone(),
                found: record.prev_hash.clone(),
            }));
        }
        if !is_hex64(&record.hash) {
            return Err(fail(BreakReason::MalformedHash(record.hash.clone())));
        }
        if !is_rfc3339_utc(&record.ts) {
            return Err(fail(BreakReason::MalformedTimestamp(record.ts.clone())));
        }
        if !record.data.is_object() {
            return Err(fail(BreakReason::DataNotObject));
        }
        let computed = record
            .compute_hash()
            .map_err(|e| fail(BreakReason::Unreadable(e.to_string())))?;
        if computed != record.hash {
            return Err(fail(BreakReason::HashMismatch {
                stored: record.hash.clone(),
                computed,
            }));
        }
        self.head = ChainHead {
            seq: record.seq,
            hash: record.hash.clone(),
        };
        self.verified += 1;
        Ok(())
    }

    /// The last record that verified.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// How many records verified.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    fn report(self, first_break: Option<ChainBreak>) -> ChainReport {
        ChainReport {
            verified: self.verified,
            head: self.head,
            first_break,
        }
    }
}

/// Verifies a complete chain (starting at seq 1), for instance the concatenated pages of an
/// export, independently of any database. Use [`ChainVerifier::resume`] for a chain that starts
/// later.
pub fn verify_records(records: &[Record]) -> ChainReport {
    let mut verifier = ChainVerifier::new();
    for record in records {
        if let Err(broken) = verifier.check(record) {
            return verifier.report(Some(broken));
        }
    }
    verifier.report(None)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `YYYY-MM-DDTHH:MM:SS(.f{1,9})?Z`, the shape every MTOR/1 timestamp has.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    // The length test comes first, so the fixed indices below are in range.
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    match &b[19..] {
        [b'Z'] => true,
        [b'.', rest @ .., b'Z'] => {
            (1..=9).contains(&rest.len()) && rest.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), AuditError> {
    if value.is_empty() || value.len() > max {
        return Err(AuditError::Invalid {
            field,
            reason: format!("must be 1..{max} bytes"),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(AuditError::Invalid {
            field,
            reason: "must not contain control characters".to_owned(),
        });
    }
    Ok(())
}

fn check_kind(kind: &str) -> Result<(), AuditError> {
    check_name("kind", kind, MAX_KIND_BYTES)?;
    if !kind
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
    {
        return Err(AuditError::Invalid {
            field: "kind",
            reason: "must use a-z, 0-9, '.', '_' and '-' only".to_owned(),
        });
    }
    Ok(())
}

/// Refuses integers that JCS would round (it writes every number as an IEEE double).
fn check_numbers(value: &Value, pointer: &mut String) -> Result<(), AuditError> {
    match value {
        Value::Number(n) => {
            let unsafe_int = n.as_u64().is_some_and(|u| u > MAX_SAFE_INTEGER)
                || n.as_i64()
                    .is_some_and(|i| i.unsigned_abs() > MAX_SAFE_INTEGER);
            if unsafe_int {
                return Err(AuditError::UnsafeNumber {
                    pointer: pointer.clone(),
                });
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                check_numbers(item, pointer)?;
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                check_numbers(item, pointer)?;
                pointer.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
    Ok(())
}

/// Appends a record, inside a write job, chained to the current head. `kind` is 1..64 bytes of
/// `a-z0-9._-`; `actor` and `subject` are 1..512 bytes without control characters; `data` is a
/// JSON object of at most 64 KiB whose integers fit in ±(2^53 − 1).
pub fn append_tx(
    tx: &WriteTx<'_>,
    kind: &str,
    actor: &str,
    subject: &str,
    data: &Value,
) -> Result<Record, AuditError> {
    check_kind(kind)?;
    check_name("actor", actor, MAX_NAME_BYTES)?;
    check_name("subject", subject, MAX_NAME_BYTES)?;
    if !data.is_object() {
        return Err(AuditError::Invalid {
            field: "data",
            reason: "must be a JSON object".to_owned(),
        });
    }
    check_numbers(data, &mut String::new())?;
    let data_text =
        serde_json::to_string(data).map_err(|e| AuditError::Canonical(e.to_string()))?;
    if data_text.len() > MAX_DATA_BYTES {
        return Err(AuditError::Invalid {
            field: "data",
            reason: format!("is {} bytes, above {MAX_DATA_BYTES}", data_text.len()),
        });
    }
    let head = head_on(tx)?;
    let mut record = Record {
        seq: head.seq.checked_add(1).ok_or_else(|| AuditError::Corrupt {
            seq: i64::MAX,
            reason: "seq overflow".to_owned(),
        })?,
        ts: now_rfc3339(),
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        subject: subject.to_owned(),
        data: data.clone(),
        prev_hash: head.hash,
        hash: String::new(),
    };
    record.hash = if crate::defect::on(crate::defect::Defect::BrokenAuditChain) {
        // Seeded defect `broken-audit-chain`: the hash leaves out the link to the previous one.
        Record {
            prev_hash: GENESIS_HASH.to_owned(),
            ..record.clone()
        }
        .compute_hash()?
    } else {
        record.compute_hash()?
    };
    let seq = i64::try_from(record.seq).map_err(|_| AuditError::Corrupt {
        seq: i64::MAX,
        reason: "seq overflow".to_owned(),
    })?;
    tx.prepare_cached(
        "INSERT INTO audit_records (seq, ts, kind, actor, subject, data, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        seq,
        record.ts,
        record.kind,
        record.actor,
        record.subject,
        data_text,
        record.prev_hash,
        record.hash
    ])?;
    debug!(seq, kind, "audit record appended");
    Ok(record)
}

/// The last record's seq and hash (genesis for an empty log).
pub fn head_on(conn: &Connection) -> Result<ChainHead, AuditError> {
    let head = conn
        .prepare_cached("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .optional()?;
    match head {
        None => Ok(ChainHead::genesis()),
        Some((seq, hash)) => Ok(ChainHead {
            seq: u64::try_from(seq).map_err(|_| AuditError::Corrupt {
                seq,
                reason: "negative seq".to_owned(),
            })?,
            hash,
        }),
    }
}

/// A stored row, before its data text is parsed.
struct RawRecord {
    seq: i64,
    ts: String,
    kind: String,
    actor: String,
    subject: String,
    data: String,
    prev_hash: String,
    hash: String,
}

impl RawRecord {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: row.get(0)?,
            ts: row.get(1)?,
            kind: row.get(2)?,
            actor: row.get(3)?,
            subject: row.get(4)?,
            data: row.get(5)?,
            prev_hash: row.get(6)?,
            hash: row.get(7)?,
        })
    }

    fn into_record(self) -> Result<Record, AuditError> {
        let seq = u64::try_from(self.seq).map_err(|_| AuditError::Corrupt {
            seq: self.seq,
            reason: "negative seq".to_owned(),
        })?;
        let data = serde_json::from_str(&self.data).map_err(|e| AuditError::Corrupt {
            seq: self.seq,
            reason: format!("data is not JSON: {e}"),
        })?;
        Ok(Record {
            seq,
            ts: self.ts,
            kind: self.kind,
            actor: self.actor,
            subject: self.subject,
            data,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

const SELECT_RECORDS: &str =
    "SELECT seq, ts, kind, actor, subject, data, prev_hash, hash FROM audit_records";

/// The records with seq above `after`, at most `limit` (1..=1000), with the current head.
pub fn export_on(conn: &Connection, after: u64, limit: u32) -> Result<AuditExport, AuditError> {
    if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
        return Err(AuditError::InvalidLimit(limit));
    }
    let head = head_on(conn)?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT_RECORDS} WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let raw = stmt
        .query_map(params![after, i64::from(limit) + 1], RawRecord::from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut records = raw
        .into_iter()
        .map(RawRecord::into_record)
        .collect::<Result<Vec<_>, _>>()?;
    let next_after = if records.len() > limit as usize {
        records.truncate(limit as usize);
        // Seeded defect `paging-drops-record`: an off-by-one cursor skips a record per page.
        let skip = u64::from(crate::defect::on(crate::defect::Defect::PagingDropsRecord));
        records.last().map(|r| r.seq + skip)
    } else {
        None
    };
    Ok(AuditExport {
        records,
        next_after,
        head,
    })
}

/// Recomputes every hash of the stored chain (run it inside one read transaction, as
/// [`Audit::verify_chain`] does) and reports the first broken record.
pub fn verify_chain_on(conn: &Connection) -> Result<ChainReport, AuditError> {
    let mut verifier = ChainVerifier::new();
    let mut stmt = conn.prepare(&format!("{SELECT_RECORDS} ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let raw = RawRecord::from_row(row)?;
        let seq = u64::try_from(raw.seq).unwrap_or(0);
        let record = match raw.into_record() {
            Ok(record) => record,
            Err(e) => {
                let reason = match e {
                    AuditError::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Ok(verifier.report(Some(ChainBreak {
                    seq,
                    reason: BreakReason::Unreadable(reason),
                })));
            }
        };
        if let Err(broken) = verifier.check(&record) {
            return Ok(verifier.report(Some(broken)));
        }
    }
    Ok(verifier.report(None))
}

/// The audit log over a [`Store`], for callers that need nothing else in the same transaction.
/// [`Audit::append`] blocks until its batch has committed; use [`append_tx`] inside a job to
/// commit a record together with the change it records.
#[derive(Debug, Clone)]
pub struct Audit {
    store: Store,
}

impl Audit {
    /// The audit log on `store` (whose migrations created the table).
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// See [`append_tx`].
    pub fn append(
        &self,
        kind: &str,
        actor: &str,
        subject: &str,
        data: Value,
    ) -> Result<Record, AuditError> {
        let (kind, actor, subject) = (kind.to_owned(), actor.to_owned(), subject.to_owned());
        self.store
            .execute(move |tx| append_tx(tx, &kind, &actor, &subject, &data))
    }

    /// See [`head_on`].
    pub fn head(&self) -> Result<ChainHead, AuditError> {
        self.store.read(head_on)
    }

    /// See [`export_on`].
    pub fn export(&self, after: u64, limit: u32) -> Result<AuditExport, AuditError> {
        self.store.read(|conn| export_on(conn, after, limit))
    }

    /// See [`verify_chain_on`]; runs on one consistent snapshot.
    pub fn verify_chain(&self) -> Result<ChainReport, AuditError> {
        self.store.read(verify_chain_on)
    }
}

#[cfg(test)]
mod hash_tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #[test]
        fn fast_hash_equals_the_serde_jcs_reference(
            seq in any::<u64>(),
            ts in "\\PC{0,30}",
            kind in any::<String>(),
            actor in any::<String>(),
            subject in "\\PC{0,30}",
            n in any::<i64>(),
            f in -1e9f64..1e9,
            text in any::<String>(),
        ) {
            let r = Record {
                seq, ts, kind, actor, subject,
                data: json!({"n": n, "f": f, "text": text, "nested": {"z": [1, 2], "a": null}}),
                prev_hash: GENESIS_HASH.to_owned(),
                hash: String::new(),
            };
            prop_assert_eq!(r.compute_hash().expect("hash"), r.reference_hash());
        }
    }
}

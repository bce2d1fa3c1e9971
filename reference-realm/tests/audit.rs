//! Audit log behaviour on real SQLite files: the hash chain verifies, exports verify standalone,
//! tampering is located, and audit records commit atomically with ledger writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use mtor_realm::audit::{
    self, verify_records, Audit, AuditError, BreakReason, ChainHead, ChainVerifier, Record,
    GENESIS_HASH,
};
use mtor_realm::ledger::{self, Ledger, LedgerError};
use mtor_realm::store::{Store, StoreError};
use serde_json::json;

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn fresh_db(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "audit-{name}-{}-{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir.join("realm.db")
}

fn key(i: u64) -> String {
    format!("{i:064x}")
}

/// Appends `n` records with varied data and returns the log.
fn filled(name: &str, n: u64) -> (PathBuf, Audit) {
    let path = fresh_db(name);
    let audit = Audit::new(Store::open(&path).expect("open"));
    for i in 0..n {
        audit
            .append(
                "intent.admitted",
                &key(i),
                &format!("intent-{i}"),
                json!({ "i": i, "ratio": 0.5 + i as f64, "note": "naïve ✓", "nested": { "z": [i, null, true] } }),
            )
            .expect("append");
    }
    (path, audit)
}

fn export_all(audit: &Audit, limit: u32) -> Vec<Record> {
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let page = audit.export(after, limit).expect("export");
        records.extend(page.records);
        match page.next_after {
            Some(next) => after = next,
            None => break,
        }
    }
    records
}

/// A raw connection, as an attacker with the file would have.
fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("raw connection");
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

#[test]
fn hash_matches_an_independent_jcs_computation() {
    // Computed independently with Python: json.dumps(record without hash, sort_keys=True,
    // separators=(",", ":"), ensure_ascii=False), then SHA-256.
    let record = Record {
        seq: 1,
        ts: "2025-01-01T00:00:00.000Z".to_owned(),
        kind: "realm.started".to_owned(),
        actor: "realm".to_owned(),
        subject: "realm-1".to_owned(),
        data: json!({ "b": [1, 2.5, "é"], "a": null, "n": { "z": true, "y": -7 } }),
        prev_hash: GENESIS_HASH.to_owned(),
        hash: String::new(),
    };
    assert_eq!(
        record.compute_hash().expect("hash"),
        "cdedc9e5f62aa4f050b9710ce1f25bdfb62ad007f0fa56c1d49632b4da11ad1e"
    );
}

#[test]
fn chain_verifies_and_exports_page_by_page() {
    let (_, audit) = filled("chain", 12);
    let report = audit.verify_chain().expect("verify");
    assert!(report.is_intact(), "{:?}", report.first_break);
    assert_eq!(report.verified, 12);

    let first = audit.export(0, 5).expect("page 1");
    assert_eq!(first.records.len(), 5);
    assert_eq!(first.next_after, Some(5));
    assert_eq!(first.head, report.head);
    assert_eq!(first.records[0].prev_hash, GENESIS_HASH);
    assert_eq!(first.records[0].seq, 1);
    let last = audit.export(10, 5).expect("last page");
    assert_eq!(last.records.len(), 2);
    assert_eq!(last.next_after, None);
    assert!(matches!(
        audit.export(0, 0),
        Err(AuditError::InvalidLimit(0))
    ));
    assert!(matches!(
        audit.export(0, 1001),
        Err(AuditError::InvalidLimit(1001))
    ));

    let records = export_all(&audit, 5);
    assert_eq!(records.len(), 12);
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    let standalone = verify_records(&records);
    assert!(standalone.is_intact());
    assert_eq!(standalone.head, report.head);

    // Page by page with a resumable verifier gives the same head.
    let mut verifier = ChainVerifier::new();
    for r in &records[..6] {
        verifier.check(r).expect("first half");
    }
    let mut resumed = ChainVerifier::resume(verifier.head().clone());
    for r in &records[6..] {
        resumed.check(r).expect("second half");
    }
    assert_eq!(resumed.head(), &report.head);
}

#[test]
fn exported_json_verifies_standalone_and_edits_are_located() {
    let (_, audit) = filled("json", 6);
    let page = audit.export(0, 100).expect("export");
    let text = serde_json::to_string(&page).expect("serialise export");
    // What the harness receives: plain JSON.
    let parsed: audit::AuditExport = serde_json::from_str(&text).expect("parse export");
    assert!(verify_records(&parsed.records).is_intact());
    assert_eq!(parsed.head.seq, 6);

    let mut edited = parsed.records.clone();
    edited[3].data["i"] = json!(1000);
    let report = verify_records(&edited);
    let broken = report.first_break.expect("edit detected");
    assert_eq!(broken.seq, 4);
    assert!(matches!(broken.reason, BreakReason::HashMismatch { .. }));
    assert_eq!(report.verified, 3);
    assert!(broken.to_string().contains("seq 4"));

    let mut dropped = parsed.records.clone();
    dropped.remove(2);
    let broken = verify_records(&dropped).first_break.expect("gap detected");
    assert_eq!(broken.seq, 4);
    assert!(matches!(
        broken.reason,
        BreakReason::SeqGap {
            expected: 3,
            found: 4
        }
    ));

    let mut reordered = parsed.records;
    reordered.swap(1, 2);
    assert_eq!(
        verify_records(&reordered)
            .first_break
            .expect("swap detected")
            .seq,
        3
    );
}

#[test]
fn tampered_row_is_detected_at_its_seq() {
    let (path, audit) = filled("tamper", 8);
    let conn = raw(&path);
    // The table refuses updates; an attacker with the file drops the guard first.
    assert!(conn
        .execute(
            "UPDATE audit_records SET actor = 'mallory' WHERE seq = 5",
            []
        )
        .is_err());
    conn.execute_batch("DROP TRIGGER audit_records_no_update")
        .expect("drop trigger");
    conn.execute(
        "UPDATE audit_records SET data = '{\"i\":4,\"stolen\":true}' WHERE seq = 5",
        [],
    )
    .expect("tamper");
    let report = audit.verify_chain().expect("verify");
    let broken = report.first_break.expect("tamper detected");
    assert_eq!(broken.seq, 5);
    assert!(
        matches!(broken.reason, BreakReason::HashMismatch { .. }),
        "{broken}"
    );
    assert_eq!(report.verified, 4);
    assert_eq!(report.head.seq, 4);
}

#[test]
fn rehashed_tamper_is_detected_at_the_next_seq() {
    let (path, audit) = filled("rehash", 6);
    let mut records = export_all(&audit, 100);
    // Rewrite record 3 consistently with itself: its own hash checks out, record 4's link does not.
    records[2].actor = "mallory".to_owned();
    records[2].hash = records[2].compute_hash().expect("hash");
    let conn = raw(&path);
    conn.execute_batch("DROP TRIGGER audit_records_no_update")
        .expect("drop trigger");
    conn.execute(
        "UPDATE audit_records SET actor = ?1, hash = ?2 WHERE seq = 3",
        [&records[2].actor, &records[2].hash],
    )
    .expect("tamper");
    let broken = audit
        .verify_chain()
        .expect("verify")
        .first_break
        .expect("tamper detected");
    assert_eq!(broken.seq, 4);
    assert!(matches!(
        broken.reason,
        BreakReason::PrevHashMismatch { .. }
    ));
}

#[test]
fn deleted_or_unreadable_rows_are_detected() {
    let (path, audit) = filled("delete", 5);
    let conn = raw(&path);
    assert!(conn
        .execute("DELETE FROM audit_records WHERE seq = 2", [])
        .is_err());
    conn.execute_batch(
        "DROP TRIGGER audit_records_no_delete; DROP TRIGGER audit_records_no_update;",
    )
    .expect("drop triggers");
    conn.execute("DELETE FROM audit_records WHERE seq = 2", [])
        .expect("delete");
    let broken = audit
        .verify_chain()
        .expect("verify")
        .first_break
        .expect("gap detected");
    assert_eq!(broken.seq, 3);
    assert!(matches!(
        broken.reason,
        BreakReason::SeqGap {
            expected: 2,
            found: 3
        }
    ));

    let (path, audit) = filled("garbage", 3);
    let conn = raw(&path);
    conn.execute_batch("DROP TRIGGER audit_records_no_update")
        .expect("drop trigger");
    conn.execute(
        "UPDATE audit_records SET data = 'not json' WHERE seq = 2",
        [],
    )
    .expect("tamper");
    let broken = audit
        .verify_chain()
        .expect("verify reports, not fails")
        .first_break
        .expect("garbage detected");
    assert_eq!(broken.seq, 2);
    assert!(matches!(broken.reason, BreakReason::Unreadable(_)));
}

#[test]
fn invalid_appends_are_refused_and_leave_the_chain_alone() {
    let (_, audit) = filled("invalid", 2);
    let head = audit.head().expect("head");
    assert!(matches!(
        audit.append("intent.admitted", "realm", "x", json!([1, 2])),
        Err(AuditError::Invalid { field: "data", .. })
    ));
    assert!(matches!(
        audit.append("intent.admitted", "realm", "x", json!({ "big": 9_007_199_254_740_992u64 })),
        Err(AuditError::UnsafeNumber { pointer }) if pointer == "/big"
    ));
    assert!(matches!(
        audit.append("Bad Kind", "realm", "x", json!({})),
        Err(AuditError::Invalid { field: "kind", .. })
    ));
    assert!(matches!(
        audit.append("auth.failed", "", "x", json!({})),
        Err(AuditError::Invalid { field: "actor", .. })
    ));
    assert!(matches!(
        audit.append("auth.failed", "realm", "line\nbreak", json!({})),
        Err(AuditError::Invalid {
            field: "subject",
            ..
        })
    ));
    assert_eq!(audit.head().expect("head"), head);
    assert!(audit.verify_chain().expect("verify").is_intact());
}

#[test]
fn empty_log_has_the_genesis_head() {
    let audit = Audit::new(Store::open(fresh_db("empty")).expect("open"));
    let page = audit.export(0, 100).expect("export");
    assert!(page.records.is_empty());
    assert_eq!(page.head, ChainHead::genesis());
    assert_eq!(page.next_after, None);
    let report = audit.verify_chain().expect("verify");
    assert!(report.is_intact());
    assert_eq!(report.verified, 0);
}

/// The error of a job that writes to both the ledger and the audit log.
// The payloads are only read through Debug, when an assertion fails.
#[allow(dead_code)]
#[derive(Debug)]
enum JobError {
    Store(StoreError),
    Ledger(LedgerError),
    Audit(AuditError),
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<LedgerError> for JobError {
    fn from(e: LedgerError) -> Self {
        Self::Ledger(e)
    }
}

impl From<AuditError> for JobError {
    fn from(e: AuditError) -> Self {
        Self::Audit(e)
    }
}

#[test]
fn audit_records_commit_atomically_with_ledger_writes() {
    let store = Store::open(fresh_db("atomic")).expect("open");
    let ledger = Ledger::new(store.clone());
    let audit = Audit::new(store.clone());
    let (wallet, worker) = (key(1), key(2));
    ledger.mint(&wallet, 1_000, "m").expect("mint");
    ledger.reserve(&wallet, "job", 400, "r").expect("reserve");

    // Capture and its audit record in one job: both commit.
    let w = worker.clone();
    let settled = store
        .execute(move |tx| {
            let s = ledger::settle_success_tx(tx, "job", 300, &w, 500)?;
            let record = audit::append_tx(
                tx,
                "ledger.capture",
                "realm",
                "job",
                &json!({ "cost": s.cost, "fee": s.fee, "capture_seq": s.capture_seq }),
            )?;
            Ok::<_, JobError>((s, record))
        })
        .expect("capture job");
    assert_eq!(settled.0.fee, 15);
    assert_eq!(settled.1.data["capture_seq"], json!(settled.0.capture_seq));

    // A reserve and its audit record, then a failure: neither survives.
    let head_ledger = ledger.head_seq().expect("ledger head");
    let head_audit = audit.head().expect("audit head");
    let w = wallet.clone();
    let failed = store.execute(move |tx| {
        ledger::reserve_tx(tx, &w, "job-2", 100, "r2")?;
        audit::append_tx(tx, "intent.admitted", "realm", "job-2", &json!({}))?;
        // The audit append refuses this data, after both writes above succeeded.
        audit::append_tx(
            tx,
            "intent.admitted",
            "realm",
            "job-2",
            &json!("not an object"),
        )?;
        Ok::<_, JobError>(())
    });
    assert!(matches!(
        failed,
        Err(JobError::Audit(AuditError::Invalid { field: "data", .. }))
    ));
    assert_eq!(ledger.head_seq().expect("ledger head"), head_ledger);
    assert_eq!(audit.head().expect("audit head"), head_audit);
    assert!(ledger.reservation("job-2").expect("lookup").is_none());

    // A job may handle a refused ledger step and still record it: the refused step left nothing.
    let w = wallet.clone();
    let record = store
        .execute(move |tx| match ledger::reserve_tx(tx, &w, "job-3", 10_000, "r3") {
            Err(LedgerError::InsufficientFunds {
                available,
                requested,
                ..
            }) => audit::append_tx(
                tx,
                "intent.rejected",
                "realm",
                "job-3",
                &json!({ "code": "INSUFFICIENT_FUNDS", "available": available, "requested": requested }),
            )
            .map_err(JobError::from),
            other => Err(JobError::Ledger(LedgerError::Corrupt(format!(
                "expected insufficient funds, got {other:?}"
            )))),
        })
        .expect("rejection recorded");
    assert_eq!(record.seq, head_audit.seq + 1);
    assert_eq!(ledger.head_seq().expect("ledger head"), head_ledger);

    assert!(ledger.verify().expect("verify").is_ok());
    assert!(audit.verify_chain().expect("verify").is_intact());
}

#[test]
fn contract_example_export_verifies() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/corpus/valid/rest/audit-export.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
    let export: audit::AuditExport = serde_json::from_str(&text).expect("parse example");
    let report = verify_records(&export.records);
    assert!(report.is_intact(), "{:?}", report.first_break);
    assert_eq!(report.head, export.head);

    let mut edited = export.records;
    edited[1].data["amount"] = json!(50_000_001);
    let broken = verify_records(&edited).first_break.expect("edit detected");
    assert_eq!(broken.seq, 2);
}

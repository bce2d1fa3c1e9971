//! The token ledger: double-entry and append-only, on the realm's [`Store`].
//!
//! # Model
//!
//! Amounts are integer micro-tokens. Every movement is an [`Entry`] whose [`Posting`]s sum to
//! zero; entries are only ever appended (SQLite triggers refuse `UPDATE` and `DELETE`), and a
//! correction is a new, compensating entry. Accounts are strings:
//!
//! | account | holds |
//! |---|---|
//! | `wallet:<key>` | a wallet's available balance |
//! | `hold:<key>` | the wallet's reservations for admitted intents |
//! | `worker:<key>` | what a worker's operator has earned |
//! | `realm:fees` | the realm's fees |
//! | `realm:issuance` | the source of minted tokens: the only account that may go negative |
//!
//! The life of an intent's money:
//!
//! - [`reserve_tx`] (kind `reserve`): `wallet:<w> −amount`, `hold:<w> +amount`, refused with
//!   [`LedgerError::InsufficientFunds`] when the wallet's available balance is too small. The check
//!   and the write run in one job of the single-writer [`Store`], so two racing reserves cannot
//!   both spend the same funds.
//! - [`settle_success_tx`]: one `capture` entry `hold:<w> −cost`, `worker:<k> +(cost − fee)`,
//!   `realm:fees +fee` with `fee = floor(cost × fee_bps / 10000)`, then one `release` entry returning
//!   the rest of the hold to `wallet:<w>`. Zero amounts are left out (no capture entry for a zero
//!   cost, no release entry when the cost took the whole hold).
//! - [`release_tx`] (kind `release`): the whole hold back to the wallet (failure, cancel, dead
//!   letter).
//!
//! Every entry of an intent carries the intent id and the idempotency key of its reservation (as
//! in the contract's example exports), so an auditor can follow one request from end to end.
//!
//! Each intent is settled exactly once: a repeated settle or release answers the first outcome
//! (with [`Settlement::replayed`] set) and writes nothing; a release after a capture, or a capture
//! after a release, is refused.
//!
//! Balances are derived from postings. For speed the ledger keeps a `ledger_balances` cache table
//! updated in the same transaction as the postings; [`verify_on`] recomputes every balance from
//! the postings and compares.
//!
//! # Idempotency
//!
//! A mint or reserve carries an idempotency key. The same key with the same parameters returns the
//! original result without writing; with different parameters it is
//! [`LedgerError::IdempotencyConflict`]. Mint keys are scoped to the sysop (one namespace), reserve
//! keys to the wallet. A reserve's parameters are the wallet and the amount, **not** the intent id:
//! the realm mints a fresh intent id for each submit, so a client's retry of the same submit
//! returns the original [`Reservation`], whose `intent_id` is the one to use.
//!
//! # Transactions
//!
//! The `*_tx` functions run inside a [`Store`] write job, so a caller can combine them with other
//! writes (an audit record, a queue change) in one atomic job; each of them runs in its own
//! nested savepoint, so a failed operation leaves nothing behind even if the job carries on. The
//! `*_on` functions read from any connection. [`Ledger`] wraps both for callers that need nothing
//! else in the same transaction.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::store::{now_rfc3339, Migration, Store, StoreError, WriteTx};

/// The largest amount the wire can carry (2^53 − 1 micro-tokens); no amount or balance other than
/// the issuance account may exceed it.
pub const MAX_MICRO: u64 = 9_007_199_254_740_991;

/// The largest page `statement` and `export` return.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// The realm's fee account.
pub const FEES_ACCOUNT: &str = "realm:fees";

/// The issuance account: minted tokens come from here, so it is the only one that may be negative.
pub const ISSUANCE_ACCOUNT: &str = "realm:issuance";

/// Idempotency scope of mints: the sysop's keys form one namespace.
const MINT_SCOPE: &str = "mint";

/// The most violations [`verify_on`] lists (it still counts all of them).
const MAX_LISTED_VIOLATIONS: usize = 100;

/// The ledger's schema, in order.
pub const MIGRATIONS: &[Migration] = &[Migration {
    component: "ledger",
    version: 1,
    name: "entries, postings, balance cache, idempotency, reservations, settlements",
    sql: LEDGER_V1,
}];

const LEDGER_V1: &str = r#"
CREATE TABLE ledger_entries (
    seq             INTEGER PRIMARY KEY,
    ts              TEXT    NOT NULL,
    kind            TEXT    NOT NULL
                    CHECK (kind IN ('mint', 'reserve', 'capture', 'release', 'earn', 'fee')),
    intent_id       TEXT,
    idempotency_key TEXT
) STRICT;
CREATE INDEX ledger_entries_by_intent ON ledger_entries (intent_id) WHERE intent_id IS NOT NULL;

CREATE TABLE ledger_postings (
    entry_seq INTEGER NOT NULL REFERENCES ledger_entries (seq),
    idx       INTEGER NOT NULL,
    account   TEXT    NOT NULL,
    amount    INTEGER NOT NULL,
    PRIMARY KEY (entry_seq, idx)
) STRICT, WITHOUT ROWID;
CREATE INDEX ledger_postings_by_account ON ledger_postings (account, entry_seq);

-- Derived cache of each account's balance; verify_on() recomputes it from the postings.
CREATE TABLE ledger_balances (
    account  TEXT    PRIMARY KEY,
    balance  INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE ledger_idempotency (
    scope  TEXT NOT NULL,
    key    TEXT NOT NULL,
    op     TEXT NOT NULL,
    params TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT, WITHOUT ROWID;

CREATE TABLE ledger_reservations (
    intent_id       TEXT    PRIMARY KEY,
    wallet          TEXT    NOT NULL,
    amount          INTEGER NOT NULL,
    reserve_seq     INTEGER NOT NULL REFERENCES ledger_entries (seq),
    idempotency_key TEXT    NOT NULL,
    ts              TEXT    NOT NULL
) STRICT, WITHOUT ROWID;

-- One row per settled intent: its primary key is what makes settlement exactly-once.
CREATE TABLE ledger_settlements (
    intent_id   TEXT    PRIMARY KEY REFERENCES ledger_reservations (intent_id),
    outcome     TEXT    NOT NULL CHECK (outcome IN ('captured', 'released')),
    cost        INTEGER NOT NULL,
    fee         INTEGER NOT NULL,
    earned      INTEGER NOT NULL,
    released    INTEGER NOT NULL,
    worker_key  TEXT,
    fee_bps     INTEGER,
    capture_seq INTEGER REFERENCES ledger_entries (seq),
    release_seq INTEGER REFERENCES ledger_entries (seq),
    ts          TEXT    NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER ledger_postings_no_update BEFORE UPDATE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'ledger postings are append-only'); END;
CREATE TRIGGER ledger_postings_no_delete BEFORE DELETE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'ledger postings are append-only'); END;
CREATE TRIGGER ledger_idempotency_no_update BEFORE UPDATE ON ledger_idempotency
    BEGIN SELECT RAISE(ABORT, 'idempotency records are append-only'); END;
CREATE TRIGGER ledger_idempotency_no_delete BEFORE DELETE ON ledger_idempotency
    BEGIN SELECT RAISE(ABORT, 'idempotency records are append-only'); END;
CREATE TRIGGER ledger_reservations_no_update BEFORE UPDATE ON ledger_reservations
    BEGIN SELECT RAISE(ABORT, 'reservations are append-only'); END;
CREATE TRIGGER ledger_reservations_no_delete BEFORE DELETE ON ledger_reservations
    BEGIN SELECT RAISE(ABORT, 'reservations are append-only'); END;
CREATE TRIGGER ledger_settlements_no_update BEFORE UPDATE ON ledger_settlements
    BEGIN SELECT RAISE(ABORT, 'settlements are append-only'); END;
CREATE TRIGGER ledger_settlements_no_delete BEFORE DELETE ON ledger_settlements
    BEGIN SELECT RAISE(ABORT, 'settlements are append-only'); END;
"#;

/// Errors of ledger operations.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An argument is malformed (a key, an id, an account, a posting list).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An amount is zero where it must not be, or above [`MAX_MICRO`].
    #[error("invalid amount {amount}: {reason}")]
    InvalidAmount {
        /// The amount.
        amount: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The wallet's available balance is below the requested reservation.
    #[error("insufficient funds in wallet {wallet}: available {available}, requested {requested}")]
    InsufficientFunds {
        /// The wallet key.
        wallet: String,
        /// Its available balance.
        available: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// The idempotency key was used before with different parameters.
    #[error("idempotency key {key} was already used with different parameters")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// The intent already has a reservation (under another idempotency key).
    #[error("intent {intent_id} already has a reservation")]
    DuplicateIntent {
        /// The intent.
        intent_id: String,
    },
    /// No reservation exists for the intent.
    #[error("no reservation for intent {intent_id}")]
    UnknownIntent {
        /// The intent.
        intent_id: String,
    },
    /// The intent was captured: its hold can no longer be released.
    #[error("intent {intent_id} was already captured; its hold cannot be released")]
    AlreadyCaptured {
        /// The intent.
        intent_id: String,
    },
    /// The intent was released: it can no longer be captured.
    #[error("intent {intent_id} was already released; it cannot be captured")]
    AlreadyReleased {
        /// The intent.
        intent_id: String,
    },
    /// The cost to capture is above what was reserved.
    #[error("cost {cost} exceeds the reservation {reserved} of intent {intent_id}")]
    CostExceedsReservation {
        /// The intent.
        intent_id: String,
        /// The cost asked for.
        cost: u64,
        /// The reserved amount.
        reserved: u64,
    },
    /// `fee_bps` is above 10,000 (100 %).
    #[error("fee_bps {0} is above 10000")]
    InvalidFeeBps(u32),
    /// The postings of an entry do not sum to zero; nothing was written.
    #[error("postings do not balance: they sum to {sum}")]
    Unbalanced {
        /// The sum of the postings.
        sum: i128,
    },
    /// The entry would drive an account other than `realm:issuance` below zero.
    #[error("account {account} would go negative ({balance})")]
    NegativeBalance {
        /// The account.
        account: String,
        /// The balance it would have.
        balance: i128,
    },
    /// A sum left the representable range.
    #[error("arithmetic overflow: {0}")]
    Overflow(String),
    /// A page limit is outside 1..=1000.
    #[error("limit {0} is outside 1..={MAX_PAGE_LIMIT}")]
    InvalidLimit(u32),
    /// Stored data contradicts what the ledger writes (tampering or a bug).
    #[error("stored ledger data is inconsistent: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

impl LedgerError {
    /// The MTOR/1 error code that reports this error on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InsufficientFunds { .. } => "INSUFFICIENT_FUNDS",
            Self::IdempotencyConflict { .. } => "IDEMPOTENCY_CONFLICT",
            Self::UnknownIntent { .. } => "NOT_FOUND",
            Self::Invalid { .. } | Self::InvalidAmount { .. } | Self::InvalidLimit(_) => {
                "INVALID_EVENT"
            }
            Self::Store(StoreError::Closed) => "SHUTTING_DOWN",
            _ => "INTERNAL",
        }
    }
}

/// The kind of a ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Tokens created by the sysop: issuance to a wallet.
    Mint,
    /// A wallet's funds put on hold for an intent.
    Reserve,
    /// A hold spent on a successful intent: to the worker and the realm's fees.
    Capture,
    /// A hold (or its unspent rest) returned to the wallet.
    Release,
    /// A payment to a worker outside a capture (compensating entries).
    Earn,
    /// A fee movement outside a capture (compensating entries).
    Fee,
}

impl EntryKind {
    /// The kind's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mint => "mint",
            Self::Reserve => "reserve",
            Self::Capture => "capture",
            Self::Release => "release",
            Self::Earn => "earn",
            Self::Fee => "fee",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mint" => Self::Mint,
            "reserve" => Self::Reserve,
            "capture" => Self::Capture,
            "release" => Self::Release,
            "earn" => Self::Earn,
            "fee" => Self::Fee,
            _ => return None,
        })
    }
}

/// One line of an entry: a signed amount on one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    /// The account (`wallet:<key>`, `hold:<key>`, `worker:<key>`, `realm:fees`, `realm:issuance`).
    pub account: String,
    /// Micro-tokens, positive into the account, negative out of it.
    pub amount: i64,
}

/// A ledger entry as stored and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the ledger, from 1, without gaps.
    pub seq: u64,
    /// When it was written (RFC 3339 UTC, milliseconds, `Z`).
    pub ts: String,
    /// What kind of movement it is.
    pub kind: EntryKind,
    /// The intent it belongs to, if any.
    pub intent_id: Option<String>,
    /// The idempotency key of the request that caused it, if any.
    pub idempotency_key: Option<String>,
    /// The postings; they sum to zero.
    pub postings: Vec<Posting>,
}

/// A compensating entry to append with [`post_tx`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// [`EntryKind::Earn`] or [`EntryKind::Fee`]: the other kinds have dedicated operations that
    /// keep the per-intent bookkeeping right.
    pub kind: EntryKind,
    /// The intent it relates to, if any.
    pub intent_id: Option<String>,
    /// The request's idempotency key, if any (recorded, not deduplicated).
    pub idempotency_key: Option<String>,
    /// At least two postings on distinct accounts, non-zero, summing to zero.
    pub postings: Vec<Posting>,
}

/// The result of a mint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintOutcome {
    /// The wallet key.
    pub wallet: String,
    /// Micro-tokens minted.
    pub amount: u64,
    /// The request's idempotency key.
    pub idempotency_key: String,
    /// The mint entry's seq.
    pub entry_seq: u64,
    /// The wallet's available balance just after the mint.
    pub balance: u64,
    /// True when this is the original result returned again for a repeated key.
    #[serde(skip)]
    pub replayed: bool,
}

/// An intent's reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The intent (for a replayed key: the intent of the original request).
    pub intent_id: String,
    /// The wallet key.
    pub wallet: String,
    /// Micro-tokens on hold.
    pub amount: u64,
    /// The request's idempotency key.
    pub idempotency_key: String,
    /// The reserve entry's seq.
    pub entry_seq: u64,
    /// When it was made.
    pub ts: String,
    /// True when this is the original result returned again for a repeated key.
    #[serde(skip)]
    pub replayed: bool,
}

/// How an intent's hold was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettlementOutcome {
    /// The intent succeeded: its cost was captured and the rest released.
    Captured,
    /// The intent failed or was cancelled: the whole hold went back.
    Released,
}

/// The settlement of an intent's hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// The intent.
    pub intent_id: String,
    /// The wallet key.
    pub wallet: String,
    /// Captured or released.
    pub outcome: SettlementOutcome,
    /// What was on hold.
    pub reserved: u64,
    /// What was captured (0 for a release).
    pub cost: u64,
    /// The realm's fee out of the cost.
    pub fee: u64,
    /// The worker's share of the cost (`cost − fee`).
    pub earned: u64,
    /// What went back to the wallet (`reserved − cost`).
    pub released: u64,
    /// The worker paid, for a capture.
    pub worker_key: Option<String>,
    /// The fee rate applied, for a capture.
    pub fee_bps: Option<u32>,
    /// The capture entry's seq (none for a release or a zero cost).
    pub capture_seq: Option<u64>,
    /// The release entry's seq (none when the cost took the whole hold).
    pub release_seq: Option<u64>,
    /// When it was settled.
    pub ts: String,
    /// True when this is the first outcome returned again for a repeated call.
    #[serde(skip)]
    pub replayed: bool,
}

/// A wallet's balance, derived from the postings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// The wallet key.
    pub wallet: String,
    /// Spendable micro-tokens.
    pub available: u64,
    /// Micro-tokens on hold for admitted intents.
    pub held: u64,
    /// The ledger's last entry when this was read.
    pub as_of_seq: u64,
}

/// A page of the entries touching one wallet (its `wallet:` or `hold:` account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The wallet key.
    pub wallet: String,
    /// The entries, by seq.
    pub entries: Vec<Entry>,
    /// The `after` for the next page; `None` when this page is the last.
    pub next_after: Option<u64>,
}

/// A page of the whole ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerExport {
    /// The entries, by seq.
    pub entries: Vec<Entry>,
    /// The `after` for the next page; `None` when this page is the last.
    pub next_after: Option<u64>,
    /// The ledger's last seq (0 when empty).
    pub head_seq: u64,
}

/// One inconsistency found by [`verify_on`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The entry concerned, when there is one.
    pub seq: Option<u64>,
    /// The account, intent or table concerned.
    pub subject: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "seq {seq}, {}: {}", self.subject, self.reason),
            None => write!(f, "{}: {}", self.subject, self.reason),
        }
    }
}

/// What [`verify_on`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The last seq checked.
    pub head_seq: u64,
    /// Entries checked.
    pub entries: u64,
    /// Accounts with postings.
    pub accounts: u64,
    /// Intents with a reservation.
    pub intents: u64,
    /// Everything ever minted (minus `realm:issuance`'s balance).
    pub total_minted: i128,
    /// How many inconsistencies were found.
    pub violation_count: u64,
    /// The first of them (at most 100).
    pub violations: Vec<Violation>,
}

impl VerifyReport {
    /// True when the ledger is consistent.
    pub fn is_ok(&self) -> bool {
        self.violation_count == 0
    }
}

/// The account of a wallet's available funds.
pub fn wallet_account(wallet: &str) -> String {
    format!("wallet:{wallet}")
}

/// The account of a wallet's reserved funds.
pub fn hold_account(wallet: &str) -> String {
    format!("hold:{wallet}")
}

/// The account of a worker's earnings.
pub fn worker_account(worker_key: &str) -> String {
    format!("worker:{worker_key}")
}

/// True for `wallet:<key>`, `hold:<key>`, `worker:<key>`, `realm:fees` and `realm:issuance`.
pub fn is_valid_account(account: &str) -> bool {
    if account == FEES_ACCOUNT || account == ISSUANCE_ACCOUNT {
        return true;
    }
    match account.split_once(':') {
        Some(("wallet" | "hold" | "worker", key)) => is_key(key),
        _ => false,
    }
}

fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_uid(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_key(field: &'static str, value: &str) -> Result<(), LedgerError> {
    if is_key(value) {
        Ok(())
    } else {
        Err(LedgerError::Invalid {
            field,
            reason: "must be 64 lowercase hex characters".to_owned(),
        })
    }
}

fn check_uid(field: &'static str, value: &str) -> Result<(), LedgerError> {
    if is_uid(value) {
        Ok(())
    } else {
        Err(LedgerError::Invalid {
            field,
            reason: "must be 1..64 characters of A-Z, a-z, 0-9, '_' or '-'".to_owned(),
        })
    }
}

/// A positive amount that fits the wire, as the signed type postings use.
fn positive_amount(amount: u64) -> Result<i64, LedgerError> {
    if amount == 0 {
        return Err(LedgerError::InvalidAmount {
            amount,
            reason: "must be at least 1",
        });
    }
    to_signed(amount)
}

fn to_signed(amount: u64) -> Result<i64, LedgerError> {
    if amount > MAX_MICRO {
        return Err(LedgerError::InvalidAmount {
            amount,
            reason: "exceeds 2^53 - 1",
        });
    }
    i64::try_from(amount).map_err(|_| LedgerError::InvalidAmount {
        amount,
        reason: "exceeds 2^53 - 1",
    })
}

fn check_limit(limit: u32) -> Result<i64, LedgerError> {
    if (1..=MAX_PAGE_LIMIT).contains(&limit) {
        Ok(i64::from(limit))
    } else {
        Err(LedgerError::InvalidLimit(limit))
    }
}

/// `after` as a SQL integer; anything past `i64::MAX` is past every seq anyway.
fn after_param(after: u64) -> i64 {
    i64::try_from(after).unwrap_or(i64::MAX)
}

fn stored_u64(value: i64, what: &str) -> Result<u64, LedgerError> {
    u64::try_from(value).map_err(|_| LedgerError::Corrupt(format!("{what} is negative ({value})")))
}

/// Validates a posting list before anything is written.
fn check_postings(postings: &[Posting]) -> Result<(), LedgerError> {
    if postings.len() < 2 {
        return Err(LedgerError::Invalid {
            field: "postings",
            reason: "an entry needs at least two postings".to_owned(),
        });
    }
    let mut sum: i128 = 0;
    for (i, p) in postings.iter().enumerate() {
        if !is_valid_account(&p.account) {
            return Err(LedgerError::Invalid {
                field: "account",
                reason: format!("{:?} is not a ledger account", p.account),
            });
        }
        if p.amount == 0 {
            return Err(LedgerError::Invalid {
                field: "postings",
                reason: format!("posting to {} has a zero amount", p.account),
            });
        }
        if p.amount.unsigned_abs() > MAX_MICRO {
            return Err(LedgerError::InvalidAmount {
                amount: p.amount.unsigned_abs(),
                reason: "exceeds 2^53 - 1",
            });
        }
        if postings[..i].iter().any(|q| q.account == p.account) {
            return Err(LedgerError::Invalid {
                field: "postings",
                reason: format!("account {} appears twice", p.account),
            });
        }
        sum += i128::from(p.amount);
    }
    if sum != 0 {
        return Err(LedgerError::Unbalanced { sum });
    }
    Ok(())
}

/// Writes an entry whose postings were checked, updating the balance cache. Callers run it inside
/// a nested savepoint, so a refused posting (negative balance, overflow) leaves nothing behind.
fn write_entry(
    tx: &WriteTx<'_>,
    kind: EntryKind,
    intent_id: Option<&str>,
    idempotency_key: Option<&str>,
    postings: Vec<Posting>,
) -> Result<Entry, LedgerError> {
    check_postings(&postings)?;
    let ts = now_rfc3339();
    tx.prepare_cached(
        "INSERT INTO ledger_entries (ts, kind, intent_id, idempotency_key) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![ts, kind.as_str(), intent_id, idempotency_key])?;
    let seq = tx.last_insert_rowid();
    for (idx, p) in postings.iter().enumerate() {
        let idx = i64::try_from(idx).map_err(|_| LedgerError::Overflow("posting index".into()))?;
        tx.prepare_cached(
            "INSERT INTO ledger_postings (entry_seq, idx, account, amount) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![seq, idx, p.account, p.amount])?;
        apply_to_balance(tx, &p.account, p.amount, seq)?;
    }
    debug!(seq, kind = kind.as_str(), intent_id, "ledger entry written");
    Ok(Entry {
        seq: stored_u64(seq, "entry seq")?,
        ts,
        kind,
        intent_id: intent_id.map(str::to_owned),
        idempotency_key: idempotency_key.map(str::to_owned),
        postings,
    })
}

fn apply_to_balance(
    tx: &WriteTx<'_>,
    account: &str,
    delta: i64,
    seq: i64,
) -> Result<(), LedgerError> {
    let current = account_balance_on(tx, account)?;
    let new = current
        .checked_add(delta)
        .ok_or_else(|| LedgerError::Overflow(format!("balance of {account}")))?;
    // Seeded defects `overdraw-on-race` and `capture-and-release` also lack this second line
    // of defence (for wallets, for holds): their bug reaches the books.
    let unguarded = (crate::defect::on(crate::defect::Defect::OverdrawOnRace)
        && account.starts_with("wallet:"))
        || (crate::defect::on(crate::defect::Defect::CaptureAndRelease)
            && account.starts_with("hold:"));
    if account != ISSUANCE_ACCOUNT {
        if new < 0 && !unguarded {
            return Err(LedgerError::NegativeBalance {
                account: account.to_owned(),
                balance: i128::from(new),
            });
        }
        if new.unsigned_abs() > MAX_MICRO {
            return Err(LedgerError::Overflow(format!(
                "balance of {account} would exceed 2^53 - 1"
            )));
        }
    }
    tx.prepare_cached(
        "INSERT INTO ledger_balances (account, balance, last_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (account) DO UPDATE SET balance = excluded.balance, last_seq = excluded.last_seq",
    )?
    .execute(params![account, new, seq])?;
    Ok(())
}

struct IdemRecord {
    op: String,
    params: String,
    result: String,
}

fn find_idempotent(
    conn: &Connection,
    scope: &str,
    key: &str,
) -> Result<Option<IdemRecord>, LedgerError> {
    Ok(conn
        .prepare_cached(
            "SELECT op, params, result FROM ledger_idempotency WHERE scope = ?1 AND key = ?2",
        )?
        .query_row(params![scope, key], |row| {
            Ok(IdemRecord {
                op: row.get(0)?,
                params: row.get(1)?,
                result: row.get(2)?,
            })
        })
        .optional()?)
}

fn replay<T: DeserializeOwned>(
    record: IdemRecord,
    op: &str,
    params: &str,
    key: &str,
) -> Result<T, LedgerError> {
    if record.op != op || record.params != params {
        return Err(LedgerError::IdempotencyConflict {
            key: key.to_owned(),
        });
    }
    serde_json::from_str(&record.result)
        .map_err(|e| LedgerError::Corrupt(format!("stored result of key {key}: {e}")))
}

fn remember<T: Serialize>(
    tx: &WriteTx<'_>,
    scope: &str,
    key: &str,
    op: &str,
    params: &str,
    result: &T,
) -> Result<(), LedgerError> {
    let result = serde_json::to_string(result)
        .map_err(|e| LedgerError::Corrupt(format!("cannot encode result: {e}")))?;
    tx.prepare_cached(
        "INSERT INTO ledger_idempotency (scope, key, op, params, result) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![scope, key, op, params, result])?;
    Ok(())
}

/// Canonical text of an operation's parameters, compared on a repeated key.
fn canonical_params(value: &serde_json::Value) -> Result<String, LedgerError> {
    serde_jcs::to_string(value)
        .map_err(|e| LedgerError::Corrupt(format!("cannot canonicalise parameters: {e}")))
}

/// Mints `amount` micro-tokens to `wallet` (from `realm:issuance`), inside a write job.
pub fn mint_tx(
    tx: &WriteTx<'_>,
    wallet: &str,
    amount: u64,
    idempotency_key: &str,
) -> Result<MintOutcome, LedgerError> {
    check_key("wallet", wallet)?;
    check_uid("idempotency_key", idempotency_key)?;
    let signed = positive_amount(amount)?;
    let params = canonical_params(&serde_json::json!({ "wallet": wallet, "amount": amount }))?;
    tx.nested(|tx| {
        if let Some(record) = find_idempotent(tx, MINT_SCOPE, idempotency_key)? {
            let mut original: MintOutcome = replay(record, "mint", &params, idempotency_key)?;
            original.replayed = true;
            return Ok(original);
        }
        let account = wallet_account(wallet);
        let entry = write_entry(
            tx,
            EntryKind::Mint,
            None,
            Some(idempotency_key),
            vec![
                Posting {
                    account: ISSUANCE_ACCOUNT.to_owned(),
                    amount: -signed,
                },
                Posting {
                    account: account.clone(),
                    amount: signed,
                },
            ],
        )?;
        let outcome = MintOutcome {
            wallet: wallet.to_owned(),
            amount,
            idempotency_key: idempotency_key.to_owned(),
            entry_seq: entry.seq,
            balance: stored_u64(account_balance_on(tx, &account)?, "wallet balance")?,
            replayed: false,
        };
        remember(tx, MINT_SCOPE, idempotency_key, "mint", &params, &outcome)?;
        Ok(outcome)
    })
}

/// Puts `amount` of `wallet`'s available funds on hold for `intent_id`, inside a write job.
///
/// Refused with [`LedgerError::InsufficientFunds`] when the available balance is smaller. A
/// repeated `idempotency_key` for the same wallet and amount returns the original reservation
/// (whose `intent_id` may differ from the one passed now); with another amount it is a conflict.
pub fn reserve_tx(
    tx: &WriteTx<'_>,
    wallet: &str,
    intent_id: &str,
    amount: u64,
    idempotency_key: &str,
) -> Result<Reservation, LedgerError> {
    check_key("wallet", wallet)?;
    check_uid("intent_id", intent_id)?;
    check_uid("idempotency_key", idempotency_key)?;
    let signed = positive_amount(amount)?;
    let scope = format!("reserve:{wallet}");
    let params = canonical_params(&serde_json::json!({ "wallet": wallet, "amount": amount }))?;
    tx.nested(|tx| {
        if let Some(record) = find_idempotent(tx, &scope, idempotency_key)? {
            let mut original: Reservation = replay(record, "reserve", &params, idempotency_key)?;
            original.replayed = true;
            return Ok(original);
        }
        if reservation_on(tx, intent_id)?.is_some() {
            return Err(LedgerError::DuplicateIntent {
                intent_id: intent_id.to_owned(),
            });
        }
        let account = wallet_account(wallet);
        let mut available = stored_u64(account_balance_on(tx, &account)?, "wallet balance")?;
        if crate::defect::on(crate::defect::Defect::OverdrawOnRace) {
            // Seeded defect `overdraw-on-race`: money held for intents in flight counts too.
            let held = account_balance_on(tx, &hold_account(wallet))?;
            available = available.saturating_add(u64::try_from(held).unwrap_or(0));
        }
        if available < amount {
            return Err(LedgerError::InsufficientFunds {
                wallet: wallet.to_owned(),
                available,
                requested: amount,
            });
        }
        let entry = write_entry(
            tx,
            EntryKind::Reserve,
            Some(intent_id),
            Some(idempotency_key),
            vec![
                Posting {
                    account,
                    amount: -signed,
                },
                Posting {
                    account: hold_account(wallet),
                    amount: signed,
                },
            ],
        )?;
        let seq = i64::try_from(entry.seq)
            .map_err(|_| LedgerError::Overflow("entry seq".to_owned()))?;
        tx.prepare_cached(
            "INSERT INTO ledger_reservations (intent_id, wallet, amount, reserve_seq, idempotency_key, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![intent_id, wallet, signed, seq, idempotency_key, entry.ts])?;
        let reservation = Reservation {
            intent_id: intent_id.to_owned(),
            wallet: wallet.to_owned(),
            amount,
            idempotency_key: idempotency_key.to_owned(),
            entry_seq: entry.seq,
            ts: entry.ts,
            replayed: false,
        };
        remember(
            tx,
            &scope,
            idempotency_key,
            "reserve",
            &params,
            &reservation,
        )?;
        Ok(reservation)
    })
}

/// Settles a successful intent, inside a write job: captures `cost` from its hold, pays the
/// worker `cost − fee` and the realm `fee = floor(cost × fee_bps / 10000)`, and releases the rest.
///
/// Exactly once: a repeated call returns the first outcome (with `replayed` set) and writes
/// nothing, whatever its arguments; after a release it is [`LedgerError::AlreadyReleased`].
pub fn settle_success_tx(
    tx: &WriteTx<'_>,
    intent_id: &str,
    cost: u64,
    worker_key: &str,
    fee_bps: u32,
) -> Result<Settlement, LedgerError> {
    check_uid("intent_id", intent_id)?;
    check_key("worker_key", worker_key)?;
    if fee_bps > 10_000 {
        return Err(LedgerError::InvalidFeeBps(fee_bps));
    }
    to_signed(cost)?;
    tx.nested(|tx| {
        let reservation =
            reservation_on(tx, intent_id)?.ok_or_else(|| LedgerError::UnknownIntent {
                intent_id: intent_id.to_owned(),
            })?;
        if let Some(mut first) = settlement_on(tx, intent_id)? {
            return match first.outcome {
                SettlementOutcome::Captured => {
                    first.replayed = true;
                    Ok(first)
                }
                SettlementOutcome::Released => Err(LedgerError::AlreadyReleased {
                    intent_id: intent_id.to_owned(),
                }),
            };
        }
        if cost > reservation.amount {
            return Err(LedgerError::CostExceedsReservation {
                intent_id: intent_id.to_owned(),
                cost,
                reserved: reservation.amount,
            });
        }
        // u128: cost (< 2^53) × 10^4 can exceed u64. fee ≤ cost because fee_bps ≤ 10000.
        let fee = u64::try_from(u128::from(cost) * u128::from(fee_bps) / 10_000)
            .map_err(|_| LedgerError::Overflow("fee".to_owned()))?;
        let earned = cost - fee;
        let rest = reservation.amount - cost;
        let wallet = reservation.wallet.as_str();
        let capture_seq = if cost > 0 {
            let mut postings = vec![Posting {
                account: hold_account(wallet),
                amount: -to_signed(cost)?,
            }];
            if earned > 0 {
                postings.push(Posting {
                    account: worker_account(worker_key),
                    amount: to_signed(earned)?,
                });
            }
            if fee > 0 {
                if crate::defect::on(crate::defect::Defect::FeeToWorker) {
                    // Seeded defect `fee-to-worker`: the fee is added to the worker's leg.
                    if let Some(worker) = postings.get_mut(1) {
                        worker.amount = to_signed(cost)?;
                    }
                } else {
                    postings.push(Posting {
                        account: FEES_ACCOUNT.to_owned(),
                        amount: to_signed(fee)?,
                    });
                }
            }
            let key = Some(reservation.idempotency_key.as_str());
            Some(write_entry(tx, EntryKind::Capture, Some(intent_id), key, postings)?.seq)
        } else {
            None
        };
        // Seeded defect `capture-and-release`: the whole reservation goes back as well.
        let returned = if crate::defect::on(crate::defect::Defect::CaptureAndRelease) {
            reservation.amount
        } else {
            rest
        };
        let release_seq = release_rest(tx, &reservation, returned)?;
        let settlement = Settlement {
            intent_id: intent_id.to_owned(),
            wallet: wallet.to_owned(),
            outcome: SettlementOutcome::Captured,
            reserved: reservation.amount,
            cost,
            fee,
            earned,
            released: rest,
            worker_key: Some(worker_key.to_owned()),
            fee_bps: Some(fee_bps),
            capture_seq,
            release_seq,
            ts: now_rfc3339(),
            replayed: false,
        };
        insert_settlement(tx, &settlement)?;
        Ok(settlement)
    })
}

/// Returns an intent's whole hold to its wallet (failure, cancel, dead letter), inside a write
/// job. Exactly once: a repeated call returns the first outcome; after a capture it is
/// [`LedgerError::AlreadyCaptured`].
pub fn release_tx(tx: &WriteTx<'_>, intent_id: &str) -> Result<Settlement, LedgerError> {
    check_uid("intent_id", intent_id)?;
    tx.nested(|tx| {
        let reservation =
            reservation_on(tx, intent_id)?.ok_or_else(|| LedgerError::UnknownIntent {
                intent_id: intent_id.to_owned(),
            })?;
        if let Some(mut first) = settlement_on(tx, intent_id)? {
            return match first.outcome {
                SettlementOutcome::Released => {
                    first.replayed = true;
                    Ok(first)
                }
                SettlementOutcome::Captured => Err(LedgerError::AlreadyCaptured {
                    intent_id: intent_id.to_owned(),
                }),
            };
        }
        let release_seq = release_rest(tx, &reservation, reservation.amount)?;
        let settlement = Settlement {
            intent_id: intent_id.to_owned(),
            wallet: reservation.wallet.clone(),
            outcome: SettlementOutcome::Released,
            reserved: reservation.amount,
            cost: 0,
            fee: 0,
            earned: 0,
            released: reservation.amount,
            worker_key: None,
            fee_bps: None,
            capture_seq: None,
            release_seq,
            ts: now_rfc3339(),
            replayed: false,
        };
        insert_settlement(tx, &settlement)?;
        Ok(settlement)
    })
}

/// Returns `amount` of a reservation's hold to its wallet; no entry for a zero amount.
fn release_rest(
    tx: &WriteTx<'_>,
    reservation: &Reservation,
    amount: u64,
) -> Result<Option<u64>, LedgerError> {
    if amount == 0 {
        return Ok(None);
    }
    let signed = to_signed(amount)?;
    let wallet = reservation.wallet.as_str();
    let entry = write_entry(
        tx,
        EntryKind::Release,
        Some(&reservation.intent_id),
        Some(&reservation.idempotency_key),
        vec![
            Posting {
                account: hold_account(wallet),
                amount: -signed,
            },
            Posting {
                account: wallet_account(wallet),
                amount: signed,
            },
        ],
    )?;
    Ok(Some(entry.seq))
}

fn opt_signed(value: Option<u64>) -> Result<Option<i64>, LedgerError> {
    value
        .map(|v| i64::try_from(v).map_err(|_| LedgerError::Overflow("seq".to_owned())))
        .transpose()
}

fn insert_settlement(tx: &WriteTx<'_>, s: &Settlement) -> Result<(), LedgerError> {
    let outcome = match s.outcome {
        SettlementOutcome::Captured => "captured",
        SettlementOutcome::Released => "released",
    };
    tx.prepare_cached(
        "INSERT INTO ledger_settlements (intent_id, outcome, cost, fee, earned, released,
             worker_key, fee_bps, capture_seq, release_seq, ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        s.intent_id,
        outcome,
        to_signed(s.cost)?,
        to_signed(s.fee)?,
        to_signed(s.earned)?,
        to_signed(s.released)?,
        s.worker_key,
        s.fee_bps,
        opt_signed(s.capture_seq)?,
        opt_signed(s.release_seq)?,
        s.ts,
    ])?;
    Ok(())
}

/// Appends a compensating entry (kind `earn` or `fee`), inside a write job.
///
/// The postings must name valid accounts, be non-zero, name each account once and sum to zero;
/// they may not touch `hold:` accounts or `realm:issuance`, whose movements belong to the
/// dedicated operations. Nothing is written when a check fails.
pub fn post_tx(tx: &WriteTx<'_>, entry: &NewEntry) -> Result<Entry, LedgerError> {
    if !matches!(entry.kind, EntryKind::Earn | EntryKind::Fee) {
        return Err(LedgerError::Invalid {
            field: "kind",
            reason: format!(
                "{} entries are written by their own operation, not posted",
                entry.kind.as_str()
            ),
        });
    }
    if let Some(intent_id) = &entry.intent_id {
        check_uid("intent_id", intent_id)?;
    }
    if let Some(key) = &entry.idempotency_key {
        check_uid("idempotency_key", key)?;
    }
    check_postings(&entry.postings)?;
    if let Some(p) = entry
        .postings
        .iter()
        .find(|p| p.account.starts_with("hold:") || p.account == ISSUANCE_ACCOUNT)
    {
        return Err(LedgerError::Invalid {
            field: "postings",
            reason: format!("{} cannot be posted to directly", p.account),
        });
    }
    tx.nested(|tx| {
        write_entry(
            tx,
            entry.kind,
            entry.intent_id.as_deref(),
            entry.idempotency_key.as_deref(),
            entry.postings.clone(),
        )
    })
}

/// The balance of any account from the derived cache (0 for an account never posted to).
pub fn account_balance_on(conn: &Connection, account: &str) -> Result<i64, LedgerError> {
    Ok(conn
        .prepare_cached("SELECT balance FROM ledger_balances WHERE account = ?1")?
        .query_row([account], |row| row.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

/// The ledger's last seq (0 when empty).
pub fn head_seq_on(conn: &Connection) -> Result<u64, LedgerError> {
    let head: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM ledger_entries")?
        .query_row([], |row| row.get(0))?;
    stored_u64(head, "head seq")
}

/// A wallet's available and held balance, read on `conn`.
pub fn balance_on(conn: &Connection, wallet: &str) -> Result<Balance, LedgerError> {
    check_key("wallet", wallet)?;
    Ok(Balance {
        wallet: wallet.to_owned(),
        available: stored_u64(
            account_balance_on(conn, &wallet_account(wallet))?,
            "wallet balance",
        )?,
        held: stored_u64(
            account_balance_on(conn, &hold_account(wallet))?,
            "hold balance",
        )?,
        as_of_seq: head_seq_on(conn)?,
    })
}

/// The reservation of an intent, if it has one.
pub fn reservation_on(
    conn: &Connection,
    intent_id: &str,
) -> Result<Option<Reservation>, LedgerError> {
    let row = conn
        .prepare_cached(
            "SELECT wallet, amount, reserve_seq, idempotency_key, ts
             FROM ledger_reservations WHERE intent_id = ?1",
        )?
        .query_row([intent_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
            ))
        })
        .optional()?;
    row.map(|(wallet, amount, seq, key, ts)| {
        Ok(Reservation {
            intent_id: intent_id.to_owned(),
            wallet,
            amount: stored_u64(amount, "reserved amount")?,
            idempotency_key: key,
            entry_seq: stored_u64(seq, "reserve seq")?,
            ts,
            replayed: false,
        })
    })
    .transpose()
}

/// The settlement of an intent, if it was settled.
pub fn settlement_on(
    conn: &Connection,
    intent_id: &str,
) -> Result<Option<Settlement>, LedgerError> {
    // Single-table lookups with scalar subqueries: a join on the bound id made SQLite re-plan
    // (sqlite3Reprepare) at every new binding, a tenth of the writer's time at settlement.
    let mut stmt = conn.prepare_cached(
        "SELECT s.outcome, s.cost, s.fee, s.earned, s.released, s.worker_key, s.fee_bps,
                s.capture_seq, s.release_seq, s.ts,
                (SELECT wallet FROM ledger_reservations WHERE intent_id = s.intent_id),
                (SELECT amount FROM ledger_reservations WHERE intent_id = s.intent_id)
         FROM ledger_settlements s
         WHERE s.intent_id = ?1",
    )?;
    let mut rows = stmt.query([intent_id])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    Ok(Some(settlement_from_row(intent_id, row)?))
}

fn settlement_from_row(intent_id: &str, row: &Row<'_>) -> Result<Settlement, LedgerError> {
    let outcome = match row.get::<_, String>(0)?.as_str() {
        "captured" => SettlementOutcome::Captured,
        "released" => SettlementOutcome::Released,
        other => {
            return Err(LedgerError::Corrupt(format!(
                "settlement of {intent_id} has outcome {other:?}"
            )))
        }
    };
    let opt_seq = |v: Option<i64>| v.map(|s| stored_u64(s, "settlement seq")).transpose();
    Ok(Settlement {
        intent_id: intent_id.to_owned(),
        wallet: row.get(10)?,
        outcome,
        reserved: stored_u64(row.get(11)?, "reserved amount")?,
        cost: stored_u64(row.get(1)?, "cost")?,
        fee: stored_u64(row.get(2)?, "fee")?,
        earned: stored_u64(row.get(3)?, "earned")?,
        released: stored_u64(row.get(4)?, "released")?,
        worker_key: row.get(5)?,
        fee_bps: row.get(6)?,
        capture_seq: opt_seq(row.get(7)?)?,
        release_seq: opt_seq(row.get(8)?)?,
        ts: row.get(9)?,
        replayed: false,
    })
}

/// Loads entries (with their postings) from a query returning `seq, ts, kind, intent_id,
/// idempotency_key`.
fn load_entries(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Entry>, LedgerError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next()? {
        let kind: String = row.get(2)?;
        let kind = EntryKind::parse(&kind)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown entry kind {kind:?}")))?;
        entries.push(Entry {
            seq: stored_u64(row.get(0)?, "entry seq")?,
            ts: row.get(1)?,
            kind,
            intent_id: row.get(3)?,
            idempotency_key: row.get(4)?,
            postings: Vec::new(),
        });
    }
    let mut postings = conn.prepare_cached(
        "SELECT account, amount FROM ledger_postings WHERE entry_seq = ?1 ORDER BY idx",
    )?;
    for entry in &mut entries {
        let seq = after_param(entry.seq);
        entry.postings = postings
            .query_map([seq], |row| {
                Ok(Posting {
                    account: row.get(0)?,
                    amount: row.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(entries)
}

/// Splits a page fetched with `limit + 1` rows into the page and its `next_after`.
fn paginate(mut entries: Vec<Entry>, limit: i64) -> (Vec<Entry>, Option<u64>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if entries.len() > limit {
        entries.truncate(limit);
        let next = entries.last().map(|e| e.seq);
        (entries, next)
    } else {
        (entries, None)
    }
}

/// The entries touching `wallet` (its `wallet:` or `hold:` account) with seq above `after`, at most
/// `limit` (1..=1000).
pub fn statement_on(
    conn: &Connection,
    wallet: &str,
    after: u64,
    limit: u32,
) -> Result<Statement, LedgerError> {
    check_key("wallet", wallet)?;
    let limit = check_limit(limit)?;
    let entries = load_entries(
        conn,
        "SELECT seq, ts, kind, intent_id, idempotency_key FROM ledger_entries
         WHERE seq IN (SELECT entry_seq FROM ledger_postings
                       WHERE account IN (?1, ?2) AND entry_seq > ?3)
         ORDER BY seq LIMIT ?4",
        params![
            wallet_account(wallet),
            hold_account(wallet),
            after_param(after),
            limit + 1
        ],
    )?;
    let (mut entries, next_after) = paginate(entries, limit);
    if crate::defect::on(crate::defect::Defect::StatementOmitsMints) {
        entries.retain(|e| e.kind != EntryKind::Mint);
    }
    Ok(Statement {
        wallet: wallet.to_owned(),
        entries,
        next_after,
    })
}

/// The entries with seq above `after`, at most `limit` (1..=1000).
pub fn export_on(conn: &Connection, after: u64, limit: u32) -> Result<LedgerExport, LedgerError> {
    let limit = check_limit(limit)?;
    let head_seq = head_seq_on(conn)?;
    let entries = load_entries(
        conn,
        "SELECT seq, ts, kind, intent_id, idempotency_key FROM ledger_entries
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        params![after_param(after), limit + 1],
    )?;
    let (entries, next_after) = paginate(entries, limit);
    Ok(LedgerExport {
        entries,
        next_after,
        head_seq,
    })
}

/// An entry being read back for verification: seq, kind, intent, postings.
type RawEntry = (u64, String, Option<String>, Vec<(String, i64)>);

#[derive(Default)]
struct IntentTally {
    wallet: Option<String>,
    reserves: u32,
    reserved: i128,
    reserve_seq: Option<u64>,
    captures: u32,
    captured: i128,
    capture_seq: Option<u64>,
    releases: u32,
    released: i128,
    release_seq: Option<u64>,
}

struct Checker {
    violation_count: u64,
    violations: Vec<Violation>,
    balances: HashMap<String, i128>,
    intents: BTreeMap<String, IntentTally>,
    minted: i128,
    expected_seq: u64,
    entries: u64,
}

impl Checker {
    fn flag(&mut self, seq: Option<u64>, subject: impl Into<String>, reason: impl Into<String>) {
        self.violation_count += 1;
        if self.violations.len() < MAX_LISTED_VIOLATIONS {
            self.violations.push(Violation {
                seq,
                subject: subject.into(),
                reason: reason.into(),
            });
        }
    }

    fn entry(
        &mut self,
        seq: u64,
        kind: &str,
        intent_id: Option<String>,
        postings: &[(String, i64)],
    ) {
        self.entries += 1;
        let at = Some(seq);
        if seq != self.expected_seq {
            self.flag(
                at,
                "ledger",
                format!("seq gap: expected {}", self.expected_seq),
            );
        }
        self.expected_seq = seq.saturating_add(1);
        let sum: i128 = postings.iter().map(|(_, a)| i128::from(*a)).sum();
        if postings.len() < 2 {
            self.flag(at, "entry", "fewer than two postings");
        }
        if sum != 0 {
            self.flag(at, "entry", format!("postings sum to {sum}, not 0"));
        }
        for (account, amount) in postings {
            if !is_valid_account(account) {
                self.flag(at, account.clone(), "not a ledger account");
            }
            if *amount == 0 {
                self.flag(at, account.clone(), "zero-amount posting");
            }
            *self.balances.entry(account.clone()).or_default() += i128::from(*amount);
        }
        let Some(kind) = EntryKind::parse(kind) else {
            self.flag(at, "entry", format!("unknown kind {kind:?}"));
            return;
        };
        let find = |prefix: &str, positive: bool| -> Vec<(String, i128)> {
            postings
                .iter()
                .filter(|(a, v)| a.starts_with(prefix) && (*v > 0) == positive)
                .map(|(a, v)| (a[prefix.len()..].to_owned(), i128::from(*v)))
                .collect()
        };
        match kind {
            EntryKind::Mint => {
                let issued = find(ISSUANCE_ACCOUNT, false);
                let credited = find("wallet:", true);
                if intent_id.is_some()
                    || postings.len() != 2
                    || issued.len() != 1
                    || credited.len() != 1
                {
                    self.flag(
                        at,
                        "mint",
                        "a mint moves realm:issuance to one wallet, without intent",
                    );
                }
                self.minted += credited.iter().map(|(_, v)| v).sum::<i128>();
            }
            EntryKind::Reserve | EntryKind::Capture | EntryKind::Release => {
                let Some(intent) = intent_id else {
                    self.flag(at, kind.as_str(), "entry has no intent_id");
                    return;
                };
                let holds_in = find("hold:", true);
                let holds_out = find("hold:", false);
                let (hold, wallet_side) = match kind {
                    EntryKind::Reserve => (holds_in.clone(), find("wallet:", false)),
                    EntryKind::Release => (holds_out.clone(), find("wallet:", true)),
                    _ => (holds_out.clone(), Vec::new()),
                };
                let shape_ok = holds_in.len() + holds_out.len() == 1
                    && hold.len() == 1
                    && match kind {
                        EntryKind::Capture => postings.iter().all(|(a, v)| {
                            a.starts_with("hold:")
                                || (*v > 0 && (a.starts_with("worker:") || a == FEES_ACCOUNT))
                        }),
                        _ => {
                            postings.len() == 2
                                && wallet_side.len() == 1
                                && wallet_side[0].0 == hold[0].0
                        }
                    };
                if !shape_ok {
                    self.flag(
                        at,
                        intent.clone(),
                        format!("malformed {} entry", kind.as_str()),
                    );
                    return;
                }
                // shape_ok established hold.len() == 1.
                let (wallet, amount) = (hold[0].0.clone(), hold[0].1.abs());
                let tally = self.intents.entry(intent.clone()).or_default();
                let wallet_mismatch = tally.wallet.as_ref().is_some_and(|w| *w != wallet);
                tally.wallet.get_or_insert(wallet);
                match kind {
                    EntryKind::Reserve => {
                        tally.reserves += 1;
                        tally.reserved += amount;
                        tally.reserve_seq = Some(seq);
                    }
                    EntryKind::Capture => {
                        tally.captures += 1;
                        tally.captured += amount;
                        tally.capture_seq = Some(seq);
                    }
                    _ => {
                        tally.releases += 1;
                        tally.released += amount;
                        tally.release_seq = Some(seq);
                    }
                }
                if wallet_mismatch {
                    self.flag(at, intent, "entry moves another wallet's hold");
                }
            }
            EntryKind::Earn | EntryKind::Fee => {
                if postings
                    .iter()
                    .any(|(a, _)| a.starts_with("hold:") || a == ISSUANCE_ACCOUNT)
                {
                    self.flag(
                        at,
                        kind.as_str(),
                        "compensating entry touches a hold or issuance",
                    );
                }
            }
        }
    }
}

/// Checks the whole ledger on `conn` (run it inside one read transaction, as [`Ledger::verify`]
/// does): every entry balances, seqs have no gaps, the sum of all accounts is 0, no account but
/// `realm:issuance` is negative, the non-issuance accounts hold exactly what was minted, the
/// balance cache equals the balances recomputed from postings, and every intent was reserved once,
/// captured at most once, released at most once, never for more than was reserved, in agreement
/// with the reservation and settlement records.
pub fn verify_on(conn: &Connection) -> Result<VerifyReport, LedgerError> {
    let mut c = Checker {
        violation_count: 0,
        violations: Vec::new(),
        balances: HashMap::new(),
        intents: BTreeMap::new(),
        minted: 0,
        expected_seq: 1,
        entries: 0,
    };
    {
        let mut stmt = conn.prepare(
            "SELECT e.seq, e.kind, e.intent_id, p.account, p.amount
             FROM ledger_entries e LEFT JOIN ledger_postings p ON p.entry_seq = e.seq
             ORDER BY e.seq, p.idx",
        )?;
        let mut rows = stmt.query([])?;
        let mut current: Option<RawEntry> = None;
        while let Some(row) = rows.next()? {
            let seq = stored_u64(row.get(0)?, "entry seq")?;
            if current.as_ref().is_none_or(|(s, ..)| *s != seq) {
                if let Some((s, kind, intent, postings)) = current.take() {
                    c.entry(s, &kind, intent, &postings);
                }
                current = Some((seq, row.get(1)?, row.get(2)?, Vec::new()));
            }
            let account: Option<String> = row.get(3)?;
            let amount: Option<i64> = row.get(4)?;
            if let (Some((.., postings)), Some(account), Some(amount)) =
                (current.as_mut(), account, amount)
            {
                postings.push((account, amount));
            }
        }
        if let Some((s, kind, intent, postings)) = current.take() {
            c.entry(s, &kind, intent, &postings);
        }
    }
    let head_seq = c.expected_seq.saturating_sub(1);

    // Conservation.
    let total: i128 = c.balances.values().sum();
    if total != 0 {
        c.flag(None, "ledger", format!("accounts sum to {total}, not 0"));
    }
    let mut negatives: Vec<(String, i128)> = c
        .balances
        .iter()
        .filter(|(a, b)| a.as_str() != ISSUANCE_ACCOUNT && **b < 0)
        .map(|(a, b)| (a.clone(), *b))
        .collect();
    negatives.sort();
    for (account, balance) in negatives {
        c.flag(None, account, format!("negative balance {balance}"));
    }
    let issuance = c.balances.get(ISSUANCE_ACCOUNT).copied().unwrap_or(0);
    if -issuance != c.minted {
        c.flag(
            None,
            ISSUANCE_ACCOUNT,
            format!("balance {issuance} does not mirror the {} minted", c.minted),
        );
    }

    // The balance cache against the recomputed balances.
    {
        let mut stmt = conn.prepare("SELECT account, balance FROM ledger_balances")?;
        let cached: HashMap<String, i64> = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut accounts: Vec<&String> = c.balances.keys().chain(cached.keys()).collect();
        accounts.sort();
        accounts.dedup();
        let mut mismatches = Vec::new();
        for account in accounts {
            let computed = c.balances.get(account).copied().unwrap_or(0);
            let stored = cached.get(account).copied().map_or(0, i128::from);
            if computed != stored {
                mismatches.push((account.clone(), computed, stored));
            }
        }
        for (account, computed, stored) in mismatches {
            c.flag(
                None,
                account,
                format!("cached balance {stored} differs from the postings' {computed}"),
            );
        }
    }

    // Per intent: reserved once, captured and released at most once, never beyond the hold.
    let mut open_holds: HashMap<String, i128> = HashMap::new();
    let intents = std::mem::take(&mut c.intents);
    for (intent, t) in &intents {
        if t.reserves != 1 {
            c.flag(
                t.reserve_seq,
                intent.clone(),
                format!("reserved {} times", t.reserves),
            );
        }
        if t.captures > 1 {
            c.flag(
                t.capture_seq,
                intent.clone(),
                format!("captured {} times", t.captures),
            );
        }
        if t.releases > 1 {
            c.flag(
                t.release_seq,
                intent.clone(),
                format!("released {} times", t.releases),
            );
        }
        if t.captured + t.released > t.reserved {
            c.flag(
                None,
                intent.clone(),
                format!(
                    "captured {} + released {} exceed the {} reserved",
                    t.captured, t.released, t.reserved
                ),
            );
        }
        if let Some(wallet) = &t.wallet {
            *open_holds.entry(wallet.clone()).or_default() += t.reserved - t.captured - t.released;
        }
    }
    for (account, balance) in &c.balances.clone() {
        if let Some(wallet) = account.strip_prefix("hold:") {
            let open = open_holds.get(wallet).copied().unwrap_or(0);
            if open != *balance {
                c.flag(
                    None,
                    account.clone(),
                    format!("hold {balance} differs from the {open} its open intents reserve"),
                );
            }
        }
    }

    // The reservation and settlement records against the entries.
    {
        let mut stmt = conn.prepare(
            "SELECT intent_id, wallet, amount, reserve_seq FROM ledger_reservations ORDER BY intent_id",
        )?;
        let rows: Vec<(String, String, i64, i64)> = stmt
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let reservations = rows.len();
        for (intent, wallet, amount, seq) in rows {
            let ok = intents.get(&intent).is_some_and(|t| {
                t.wallet.as_deref() == Some(wallet.as_str())
                    && t.reserved == i128::from(amount)
                    && t.reserve_seq.map(after_param) == Some(seq)
            });
            if !ok {
                c.flag(
                    None,
                    intent,
                    "reservation record disagrees with the reserve entry",
                );
            }
        }
        let reserved_intents = intents.values().filter(|t| t.reserves > 0).count();
        if reservations != reserved_intents {
            c.flag(
                None,
                "ledger_reservations",
                format!("{reservations} records for {reserved_intents} reserved intents"),
            );
        }
    }
    {
        let mut stmt = conn.prepare(
            "SELECT intent_id, outcome, cost, fee, earned, released, capture_seq, release_seq
             FROM ledger_settlements ORDER BY intent_id",
        )?;
        type SettlementRow = (String, String, i64, i64, i64, i64, Option<i64>, Option<i64>);
        let rows: Vec<SettlementRow> = stmt
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                    row.get(7)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut settled: Vec<String> = Vec::with_capacity(rows.len());
        for (intent, outcome, cost, fee, earned, released, capture_seq, release_seq) in rows {
            let Some(t) = intents.get(&intent) else {
                c.flag(None, intent, "settlement of an intent without entries");
                continue;
            };
            let seq_of = |s: Option<u64>| s.map(after_param);
            let ok = match outcome.as_str() {
                "captured" => {
                    i128::from(cost) == t.captured
                        && i128::from(released) == t.released
                        && t.captured + t.released == t.reserved
                        && fee.checked_add(earned) == Some(cost)
                        && seq_of(t.capture_seq) == capture_seq
                        && seq_of(t.release_seq) == release_seq
                }
                "released" => {
                    t.captures == 0
                        && cost == 0
                        && i128::from(released) == t.released
                        && t.released == t.reserved
                        && seq_of(t.release_seq) == release_seq
                }
                _ => false,
            };
            if !ok {
                c.flag(
                    None,
                    intent.clone(),
                    "settlement record disagrees with the entries",
                );
            }
            settled.push(intent);
        }
        settled.sort();
        for (intent, t) in &intents {
            if (t.captures > 0 || t.releases > 0) && settled.binary_search(intent).is_err() {
                c.flag(
                    None,
                    intent.clone(),
                    "captured or released without a settlement record",
                );
            }
        }
    }

    Ok(VerifyReport {
        head_seq,
        entries: c.entries,
        accounts: c.balances.len() as u64,
        intents: intents.len() as u64,
        total_minted: c.minted,
        violation_count: c.violation_count,
        violations: c.violations,
    })
}

/// The ledger over a [`Store`], for callers that need nothing else in the same transaction.
/// Every write blocks until its batch has committed (see [`Store::submit`]); to combine a ledger
/// operation with other writes, or to avoid blocking, call the `*_tx` functions from a job.
#[derive(Debug, Clone)]
pub struct Ledger {
    store: Store,
}

impl Ledger {
    /// A ledger on `store` (whose migrations created the tables).
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// See [`mint_tx`].
    pub fn mint(
        &self,
        wallet: &str,
        amount: u64,
        idempotency_key: &str,
    ) -> Result<MintOutcome, LedgerError> {
        let (wallet, key) = (wallet.to_owned(), idempotency_key.to_owned());
        self.store
            .execute(move |tx| mint_tx(tx, &wallet, amount, &key))
    }

    /// See [`reserve_tx`].
    pub fn reserve(
        &self,
        wallet: &str,
        intent_id: &str,
        amount: u64,
        idempotency_key: &str,
    ) -> Result<Reservation, LedgerError> {
        let (wallet, intent, key) = (
            wallet.to_owned(),
            intent_id.to_owned(),
            idempotency_key.to_owned(),
        );
        self.store
            .execute(move |tx| reserve_tx(tx, &wallet, &intent, amount, &key))
    }

    /// See [`settle_success_tx`].
    pub fn settle_success(
        &self,
        intent_id: &str,
        cost: u64,
        worker_key: &str,
        fee_bps: u32,
    ) -> Result<Settlement, LedgerError> {
        let (intent, worker) = (intent_id.to_owned(), worker_key.to_owned());
        self.store
            .execute(move |tx| settle_success_tx(tx, &intent, cost, &worker, fee_bps))
    }

    /// See [`release_tx`].
    pub fn release(&self, intent_id: &str) -> Result<Settlement, LedgerError> {
        let intent = intent_id.to_owned();
        self.store.execute(move |tx| release_tx(tx, &intent))
    }

    /// See [`post_tx`].
    pub fn post(&self, entry: NewEntry) -> Result<Entry, LedgerError> {
        self.store.execute(move |tx| post_tx(tx, &entry))
    }

    /// See [`balance_on`].
    pub fn balance(&self, wallet: &str) -> Result<Balance, LedgerError> {
        self.store.read(|conn| balance_on(conn, wallet))
    }

    /// The balance of any account (may be negative only for `realm:issuance`).
    pub fn account_balance(&self, account: &str) -> Result<i64, LedgerError> {
        self.store.read(|conn| account_balance_on(conn, account))
    }

    /// See [`reservation_on`].
    pub fn reservation(&self, intent_id: &str) -> Result<Option<Reservation>, LedgerError> {
        self.store.read(|conn| reservation_on(conn, intent_id))
    }

    /// See [`settlement_on`].
    pub fn settlement(&self, intent_id: &str) -> Result<Option<Settlement>, LedgerError> {
        self.store.read(|conn| settlement_on(conn, intent_id))
    }

    /// See [`statement_on`].
    pub fn statement(
        &self,
        wallet: &str,
        after: u64,
        limit: u32,
    ) -> Result<Statement, LedgerError> {
        self.store
            .read(|conn| statement_on(conn, wallet, after, limit))
    }

    /// See [`export_on`].
    pub fn export(&self, after: u64, limit: u32) -> Result<LedgerExport, LedgerError> {
        self.store.read(|conn| export_on(conn, after, limit))
    }

    /// The ledger's last seq (0 when empty).
    pub fn head_seq(&self) -> Result<u64, LedgerError> {
        self.store.read(head_seq_on)
    }

    /// See [`verify_on`]; runs on one consistent snapshot.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        self.store.read(verify_on)
    }
}

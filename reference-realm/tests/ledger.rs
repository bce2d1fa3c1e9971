//! Ledger and store behaviour on real SQLite files: conservation under random operations, racing
//! reserves, exactly-once settlement, idempotency, durability across reopen and SIGKILL, and
//! group commit.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;

use mtor_realm::audit::Audit;
use mtor_realm::ledger::{
    self, Entry, EntryKind, Ledger, LedgerError, MintOutcome, NewEntry, Posting, SettlementOutcome,
    MAX_MICRO,
};
use mtor_realm::store::{Pending, Store, StoreError};
use proptest::prelude::*;

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A fresh database path under the target's temp dir, unique per test and per process.
fn fresh_db(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "ledger-{name}-{}-{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir.join("realm.db")
}

/// A valid wallet or worker key (64 lowercase hex) derived from `i`.
fn key(i: u64) -> String {
    format!("{i:064x}")
}

/// Every entry of the ledger, read page by page with a small page size to exercise paging.
fn export_all(ledger: &Ledger) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = ledger.export(after, 7).expect("export");
        assert!(page.entries.len() <= 7);
        entries.extend(page.entries);
        match page.next_after {
            Some(next) => after = next,
            None => break,
        }
    }
    entries
}

/// Balances recomputed from exported entries alone, independently of the ledger's own code.
fn balances_from(entries: &[Entry]) -> BTreeMap<String, i128> {
    let mut balances = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.seq, i as u64 + 1, "seqs are contiguous from 1");
        let sum: i128 = entry.postings.iter().map(|p| i128::from(p.amount)).sum();
        assert_eq!(sum, 0, "entry {} balances", entry.seq);
        for p in &entry.postings {
            *balances.entry(p.account.clone()).or_insert(0) += i128::from(p.amount);
        }
    }
    balances.retain(|_, v| *v != 0);
    balances
}

fn assert_verified(ledger: &Ledger) {
    let report = ledger.verify().expect("verify runs");
    assert!(
        report.is_ok(),
        "ledger verification failed: {:?}",
        report.violations
    );
}

// ---------------------------------------------------------------------------------------------
// Conservation under random operation sequences, checked against a model.

#[derive(Debug, Clone)]
enum Op {
    Mint {
        wallet: u64,
        amount: u64,
        key: u8,
    },
    Reserve {
        wallet: u64,
        amount: u64,
        key: u8,
    },
    Settle {
        pick: usize,
        cost_pct: u64,
        worker: u64,
        fee_bps: u32,
    },
    Release {
        pick: usize,
    },
    /// Repeats the previous operation verbatim (same keys, same intent id): a client retry.
    Retry,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..4u64, 1..5_000u64, 0..4u8)
            .prop_map(|(wallet, amount, key)| Op::Mint { wallet, amount, key }),
        4 => (1..4u64, 1..3_000u64, 0..6u8)
            .prop_map(|(wallet, amount, key)| Op::Reserve { wallet, amount, key }),
        3 => (any::<usize>(), 0..=100u64, 1..3u64, prop_oneof![Just(0u32), Just(10_000u32), 0..=10_000u32])
            .prop_map(|(pick, cost_pct, worker, fee_bps)| Op::Settle { pick, cost_pct, worker, fee_bps }),
        2 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        2 => Just(Op::Retry),
    ]
}

/// A call with every argument fixed, so that a retry repeats it exactly.
#[derive(Debug, Clone)]
enum Call {
    Mint {
        wallet: String,
        amount: u64,
        key: String,
    },
    Reserve {
        wallet: String,
        intent: String,
        amount: u64,
        key: String,
    },
    Settle {
        intent: String,
        cost: u64,
        worker: String,
        fee_bps: u32,
    },
    Release {
        intent: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Settled {
    Captured { cost: u64, fee: u64, worker: String },
    Released,
}

#[derive(Default)]
struct Model {
    balances: BTreeMap<String, i128>,
    mint_keys: HashMap<String, (String, u64, u64)>,
    reserve_keys: HashMap<(String, String), (u64, String)>,
    intents: Vec<(String, String, u64)>,
    settled: HashMap<String, Settled>,
}

impl Model {
    fn add(&mut self, account: String, amount: i128) {
        *self.balances.entry(account).or_insert(0) += amount;
    }

    fn get(&self, account: &str) -> i128 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    /// Runs `call` on the ledger and checks its outcome against the model, then updates it.
    fn apply(&mut self, ledger: &Ledger, call: &Call) -> Result<(), TestCaseError> {
        match call {
            Call::Mint {
                wallet,
                amount,
                key,
            } => {
                let result = ledger.mint(wallet, *amount, key);
                match self.mint_keys.get(key).cloned() {
                    Some((w, a, seq)) if w == *wallet && a == *amount => {
                        let out = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(out.replayed);
                        prop_assert_eq!(out.entry_seq, seq);
                    }
                    Some(_) => prop_assert!(
                        matches!(result, Err(LedgerError::IdempotencyConflict { .. })),
                        "expected a conflict, got {:?}",
                        result
                    ),
                    None => {
                        let out = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(!out.replayed);
                        self.add(ledger::ISSUANCE_ACCOUNT.to_owned(), -i128::from(*amount));
                        self.add(ledger::wallet_account(wallet), i128::from(*amount));
                        prop_assert_eq!(
                            i128::from(out.balance),
                            self.get(&ledger::wallet_account(wallet))
                        );
                        self.mint_keys
                            .insert(key.clone(), (wallet.clone(), *amount, out.entry_seq));
                    }
                }
            }
            Call::Reserve {
                wallet,
                intent,
                amount,
                key,
            } => {
                let result = ledger.reserve(wallet, intent, *amount, key);
                let scope = (wallet.clone(), key.clone());
                match self.reserve_keys.get(&scope).cloned() {
                    Some((a, original)) if a == *amount => {
                        let out = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(out.replayed);
                        prop_assert_eq!(out.intent_id, original);
                    }
                    Some(_) => prop_assert!(
                        matches!(result, Err(LedgerError::IdempotencyConflict { .. })),
                        "expected a conflict, got {:?}",
                        result
                    ),
                    None => {
                        let available = self.get(&ledger::wallet_account(wallet));
                        if available < i128::from(*amount) {
                            match result {
                                Err(LedgerError::InsufficientFunds {
                                    available: a,
                                    requested,
                                    ..
                                }) => {
                                    prop_assert_eq!(i128::from(a), available);
                                    prop_assert_eq!(requested, *amount);
                                }
                                other => prop_assert!(
                                    false,
                                    "expected InsufficientFunds, got {:?}",
                                    other
                                ),
                            }
                        } else {
                            let out = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert!(!out.replayed);
                            prop_assert_eq!(&out.intent_id, intent);
                            self.add(ledger::wallet_account(wallet), -i128::from(*amount));
                            self.add(ledger::hold_account(wallet), i128::from(*amount));
                            self.reserve_keys.insert(scope, (*amount, intent.clone()));
                            self.intents.push((intent.clone(), wallet.clone(), *amount));
                        }
                    }
                }
            }
            Call::Settle {
                intent,
                cost,
                worker,
                fee_bps,
            } => {
                let result = ledger.settle_success(intent, *cost, worker, *fee_bps);
                let Some((_, wallet, reserved)) =
                    self.intents.iter().find(|(i, ..)| i == intent).cloned()
                else {
                    prop_assert!(
                        matches!(result, Err(LedgerError::UnknownIntent { .. })),
                        "expected UnknownIntent, got {:?}",
                        result
                    );
                    return Ok(());
                };
                match self.settled.get(intent).cloned() {
                    Some(Settled::Captured {
                        cost: c,
                        fee: f,
                        worker: w,
                    }) => {
                        let out = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(out.replayed);
                        prop_assert_eq!((out.cost, out.fee, out.worker_key), (c, f, Some(w)));
                    }
                    Some(Settled::Released) => prop_assert!(
                        matches!(result, Err(LedgerError::AlreadyReleased { .. })),
                        "expected AlreadyReleased, got {:?}",
                        result
                    ),
                    None => {
                        let out = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        let fee = cost * u64::from(*fee_bps) / 10_000;
                        prop_assert!(!out.replayed);
                        prop_assert_eq!(out.outcome, SettlementOutcome::Captured);
                        prop_assert_eq!(out.fee, fee);
                        prop_assert_eq!(out.earned, cost - fee);
                        prop_assert_eq!(out.released, reserved - cost);
                        self.add(ledger::hold_account(&wallet), -i128::from(reserved));
                        self.add(ledger::worker_account(worker), i128::from(cost - fee));
                        self.add(ledger::FEES_ACCOUNT.to_owned(), i128::from(fee));
                        self.add(ledger::wallet_account(&wallet), i128::from(reserved - cost));
                        self.settled.insert(
                            intent.clone(),
                            Settled::Captured {
                                cost: *cost,
                                fee,
                                worker: worker.clone(),
                            },
                        );
                    }
                }
            }
            Call::Release { intent } => {
                let result = ledger.release(intent);
                let Some((_, wallet, reserved)) =
                    self.intents.iter().find(|(i, ..)| i == intent).cloned()
                else {
                    prop_assert!(
                        matches!(result, Err(LedgerError::UnknownIntent { .. })),
                        "expected UnknownIntent, got {:?}",
                        result
                    );
                    return Ok(());
                };
                match self.settled.get(intent) {
                    Some(Settled::Released) => {
                        let out = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(out.replayed);
                        prop_assert_eq!(out.released, reserved);
                    }
                    Some(Settled::Captured { .. }) => prop_assert!(
                        matches!(result, Err(LedgerError::AlreadyCaptured { .. })),
                        "expected AlreadyCaptured, got {:?}",
                        result
                    ),
                    None => {
                        let out = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(!out.replayed);
                        prop_assert_eq!(out.released, reserved);
                        self.add(ledger::hold_account(&wallet), -i128::from(reserved));
                        self.add(ledger::wallet_account(&wallet), i128::from(reserved));
                        self.settled.insert(intent.clone(), Settled::Released);
                    }
                }
            }
        }
        Ok(())
    }
}

fn run_sequence(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = Store::open(fresh_db("prop")).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let ledger = Ledger::new(store);
    let mut model = Model::default();
    let mut last: Option<Call> = None;
    for (n, op) in ops.into_iter().enumerate() {
        let pick_intent = |pick: usize, model: &Model| {
            if model.intents.is_empty() {
                "no-such-intent".to_owned()
            } else {
                model.intents[pick % model.intents.len()].0.clone()
            }
        };
        let call = match op {
            Op::Mint {
                wallet,
                amount,
                key: k,
            } => Call::Mint {
                wallet: key(wallet),
                amount,
                key: format!("m{k}"),
            },
            Op::Reserve {
                wallet,
                amount,
                key: k,
            } => Call::Reserve {
                wallet: key(wallet),
                intent: format!("intent-{n}"),
                amount,
                key: format!("r{k}"),
            },
            Op::Settle {
                pick,
                cost_pct,
                worker,
                fee_bps,
            } => {
                let intent = pick_intent(pick, &model);
                let reserved = model
                    .intents
                    .iter()
                    .find(|(i, ..)| *i == intent)
                    .map_or(0, |(_, _, a)| *a);
                Call::Settle {
                    intent,
                    cost: reserved * cost_pct / 100,
                    worker: key(100 + worker),
                    fee_bps,
                }
            }
            Op::Release { pick } => Call::Release {
                intent: pick_intent(pick, &model),
            },
            Op::Retry => match &last {
                Some(call) => call.clone(),
                None => continue,
            },
        };
        model.apply(&ledger, &call)?;
        last = Some(call);
    }

    // The independent checker: recompute every balance from the exported entries.
    let entries = export_all(&ledger);
    let recomputed = balances_from(&entries);
    let mut expected = model.balances.clone();
    expected.retain(|_, v| *v != 0);
    prop_assert_eq!(&recomputed, &expected);
    prop_assert_eq!(recomputed.values().sum::<i128>(), 0);
    for (account, balance) in &recomputed {
        prop_assert!(
            account == ledger::ISSUANCE_ACCOUNT || *balance >= 0,
            "{} is negative",
            account
        );
    }
    for w in 1..4 {
        let wallet = key(w);
        let balance = ledger
            .balance(&wallet)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            i128::from(balance.available),
            model.get(&ledger::wallet_account(&wallet))
        );
        prop_assert_eq!(
            i128::from(balance.held),
            model.get(&ledger::hold_account(&wallet))
        );
        prop_assert_eq!(balance.as_of_seq, entries.len() as u64);
    }
    // Per intent: one reserve, at most one capture and one release, never beyond the hold.
    let mut per_intent: HashMap<&str, (u32, u32, u32, i128, i128)> = HashMap::new();
    for entry in &entries {
        let Some(intent) = entry.intent_id.as_deref() else {
            continue;
        };
        let hold: i128 = entry
            .postings
            .iter()
            .filter(|p| p.account.starts_with("hold:"))
            .map(|p| i128::from(p.amount))
            .sum();
        let t = per_intent.entry(intent).or_default();
        match entry.kind {
            EntryKind::Reserve => {
                t.0 += 1;
                t.3 += hold;
            }
            EntryKind::Capture => {
                t.1 += 1;
                t.4 -= hold;
            }
            EntryKind::Release => {
                t.2 += 1;
                t.4 -= hold;
            }
            other => prop_assert!(false, "unexpected {:?} entry for an intent", other),
        }
    }
    for (intent, (reserves, captures, releases, reserved, out)) in per_intent {
        prop_assert_eq!(reserves, 1, "{} reserves", intent);
        prop_assert!(captures <= 1 && releases <= 1, "{} settled twice", intent);
        prop_assert!(out <= reserved, "{} paid out more than reserved", intent);
    }
    let report = ledger
        .verify()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.is_ok(), "verify: {:?}", report.violations);
    prop_assert_eq!(report.head_seq, entries.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        // Regressions are reported with the shrunk case; no files are written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn conservation_holds_under_random_operations(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run_sequence(ops)?;
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_reserves_never_overdraw() {
    let ledger = Ledger::new(Store::open(fresh_db("race")).expect("open"));
    let wallet = key(7);
    ledger.mint(&wallet, 1_000, "seed").expect("mint");

    const THREADS: usize = 8;
    const PER_THREAD: usize = 30;
    let outcomes: Vec<Result<u64, LedgerError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let ledger = ledger.clone();
                let wallet = wallet.clone();
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            ledger
                                .reserve(&wallet, &format!("i-{t}-{i}"), 7, &format!("k-{t}-{i}"))
                                .map(|r| r.amount)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    let granted = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
    for outcome in &outcomes {
        match outcome {
            Ok(amount) => assert_eq!(*amount, 7),
            Err(LedgerError::InsufficientFunds {
                available,
                requested,
                ..
            }) => {
                assert!(*available < 7 && *requested == 7);
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    // 1000 / 7 = 142 reservations fit, and exactly that many must be granted.
    assert_eq!(granted, 142);
    let balance = ledger.balance(&wallet).expect("balance");
    assert_eq!(balance.available, 1_000 - 142 * 7);
    assert_eq!(balance.held, 142 * 7);

    // At the edge: 6 left, many threads each want 6; exactly one wins.
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let ledger = ledger.clone();
                let wallet = wallet.clone();
                s.spawn(move || {
                    ledger.reserve(&wallet, &format!("edge-{t}"), 6, &format!("edge-{t}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .filter(|r| r.is_ok())
            .count()
    });
    assert_eq!(winners, 1);
    assert_eq!(ledger.balance(&wallet).expect("balance").available, 0);
    assert_verified(&ledger);
}

#[test]
fn settlement_is_exactly_once_and_splits_cost_and_fee() {
    let ledger = Ledger::new(Store::open(fresh_db("settle")).expect("open"));
    let (wallet, worker) = (key(1), key(2));
    ledger.mint(&wallet, 10_000, "m").expect("mint");
    ledger.reserve(&wallet, "job", 5_000, "r").expect("reserve");

    // Cost above the hold is refused and writes nothing.
    let head = ledger.head_seq().expect("head");
    assert!(matches!(
        ledger.settle_success("job", 5_001, &worker, 250),
        Err(LedgerError::CostExceedsReservation {
            cost: 5_001,
            reserved: 5_000,
            ..
        })
    ));
    assert!(matches!(
        ledger.settle_success("job", 1, &worker, 10_001),
        Err(LedgerError::InvalidFeeBps(10_001))
    ));
    assert_eq!(ledger.head_seq().expect("head"), head);

    let first = ledger
        .settle_success("job", 1_001, &worker, 250)
        .expect("settle");
    // floor(1001 × 250 / 10000) = floor(25.025) = 25.
    assert_eq!(
        (first.cost, first.fee, first.earned, first.released),
        (1_001, 25, 976, 3_999)
    );
    assert!(!first.replayed);
    let head = ledger.head_seq().expect("head");
    assert_eq!(head, 4, "mint, reserve, capture, release");

    // A second settle (even with other numbers) answers the first outcome and writes nothing.
    let again = ledger
        .settle_success("job", 2_000, &key(3), 0)
        .expect("replay");
    assert!(again.replayed);
    assert_eq!(
        (
            again.cost,
            again.fee,
            again.earned,
            again.capture_seq,
            again.release_seq
        ),
        (
            first.cost,
            first.fee,
            first.earned,
            first.capture_seq,
            first.release_seq
        )
    );
    assert_eq!(ledger.head_seq().expect("head"), head);
    assert!(matches!(
        ledger.release("job"),
        Err(LedgerError::AlreadyCaptured { .. })
    ));
    assert_eq!(ledger.head_seq().expect("head"), head);

    let balance = ledger.balance(&wallet).expect("balance");
    assert_eq!((balance.available, balance.held), (10_000 - 1_001, 0));
    assert_eq!(
        ledger
            .account_balance(&ledger::worker_account(&worker))
            .expect("worker"),
        976
    );
    assert_eq!(
        ledger.account_balance(ledger::FEES_ACCOUNT).expect("fees"),
        25
    );
    assert_eq!(
        ledger
            .account_balance(ledger::ISSUANCE_ACCOUNT)
            .expect("issuance"),
        -10_000
    );

    // The full cost of a hold: a capture and no release entry.
    ledger.reserve(&wallet, "all", 100, "r2").expect("reserve");
    let all = ledger
        .settle_success("all", 100, &worker, 10_000)
        .expect("settle all");
    assert_eq!(
        (all.fee, all.earned, all.released, all.release_seq),
        (100, 0, 0, None)
    );
    // A zero cost: no capture entry, the whole hold released.
    ledger.reserve(&wallet, "free", 50, "r3").expect("reserve");
    let free = ledger
        .settle_success("free", 0, &worker, 250)
        .expect("settle free");
    assert_eq!((free.capture_seq, free.released), (None, 50));

    assert!(matches!(
        ledger.settle_success("never-reserved", 1, &worker, 0),
        Err(LedgerError::UnknownIntent { .. })
    ));
    assert_verified(&ledger);
}

#[test]
fn release_is_exactly_once_and_blocks_capture() {
    let ledger = Ledger::new(Store::open(fresh_db("release")).expect("open"));
    let wallet = key(1);
    ledger.mint(&wallet, 500, "m").expect("mint");
    ledger.reserve(&wallet, "job", 300, "r").expect("reserve");
    assert_eq!(ledger.balance(&wallet).expect("balance").held, 300);

    let first = ledger.release("job").expect("release");
    assert_eq!(
        (first.outcome, first.released, first.replayed),
        (SettlementOutcome::Released, 300, false)
    );
    let head = ledger.head_seq().expect("head");
    let again = ledger.release("job").expect("replayed release");
    assert!(again.replayed);
    assert_eq!(again.release_seq, first.release_seq);
    assert!(matches!(
        ledger.settle_success("job", 10, &key(2), 0),
        Err(LedgerError::AlreadyReleased { .. })
    ));
    assert_eq!(ledger.head_seq().expect("head"), head);
    let balance = ledger.balance(&wallet).expect("balance");
    assert_eq!((balance.available, balance.held), (500, 0));
    assert!(matches!(
        ledger.release("ghost"),
        Err(LedgerError::UnknownIntent { .. })
    ));
    assert_verified(&ledger);
}

#[test]
fn idempotency_replays_same_parameters_and_refuses_different_ones() {
    let ledger = Ledger::new(Store::open(fresh_db("idem")).expect("open"));
    let (a, b) = (key(1), key(2));
    let first = ledger.mint(&a, 1_000, "mint-1").expect("mint");
    let replay = ledger.mint(&a, 1_000, "mint-1").expect("replay");
    assert!(replay.replayed);
    assert_eq!(
        (replay.entry_seq, replay.balance),
        (first.entry_seq, first.balance)
    );
    assert_eq!(
        ledger.head_seq().expect("head"),
        1,
        "a replay writes nothing"
    );
    assert!(matches!(
        ledger.mint(&a, 999, "mint-1"),
        Err(LedgerError::IdempotencyConflict { .. })
    ));
    // Mint keys are the sysop's: the same key for another wallet is a different request.
    assert!(matches!(
        ledger.mint(&b, 1_000, "mint-1"),
        Err(LedgerError::IdempotencyConflict { .. })
    ));

    let r = ledger
        .reserve(&a, "intent-a", 100, "submit-1")
        .expect("reserve");
    // A client retry: the realm made up a new intent id, but the key wins.
    let retry = ledger
        .reserve(&a, "intent-b", 100, "submit-1")
        .expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.intent_id, r.intent_id);
    assert!(ledger.reservation("intent-b").expect("lookup").is_none());
    assert!(matches!(
        ledger.reserve(&a, "intent-c", 101, "submit-1"),
        Err(LedgerError::IdempotencyConflict { .. })
    ));
    // Reserve keys are per wallet: another wallet may use the same key.
    ledger.mint(&b, 100, "mint-2").expect("mint b");
    ledger
        .reserve(&b, "intent-d", 100, "submit-1")
        .expect("b's own key");
    // One intent, one reservation.
    assert!(matches!(
        ledger.reserve(&a, "intent-a", 100, "submit-2"),
        Err(LedgerError::DuplicateIntent { .. })
    ));
    let balance = ledger.balance(&a).expect("balance");
    assert_eq!((balance.available, balance.held), (900, 100));
    assert_verified(&ledger);
}

#[test]
fn unbalanced_and_invalid_entries_are_rejected_and_never_written() {
    let ledger = Ledger::new(Store::open(fresh_db("unbalanced")).expect("open"));
    let (wallet, worker) = (key(1), key(2));
    ledger.mint(&wallet, 100, "m").expect("mint");
    let head = ledger.head_seq().expect("head");

    let unbalanced = NewEntry {
        kind: EntryKind::Fee,
        intent_id: None,
        idempotency_key: None,
        postings: vec![
            Posting {
                account: ledger::wallet_account(&wallet),
                amount: -10,
            },
            Posting {
                account: ledger::FEES_ACCOUNT.to_owned(),
                amount: 11,
            },
        ],
    };
    assert!(matches!(
        ledger.post(unbalanced),
        Err(LedgerError::Unbalanced { sum: 1 })
    ));

    let overdraw = NewEntry {
        kind: EntryKind::Fee,
        intent_id: None,
        idempotency_key: None,
        postings: vec![
            Posting {
                account: ledger::wallet_account(&wallet),
                amount: -101,
            },
            Posting {
                account: ledger::FEES_ACCOUNT.to_owned(),
                amount: 101,
            },
        ],
    };
    assert!(matches!(
        ledger.post(overdraw),
        Err(LedgerError::NegativeBalance { .. })
    ));

    let bad_account = NewEntry {
        kind: EntryKind::Earn,
        intent_id: None,
        idempotency_key: None,
        postings: vec![
            Posting {
                account: ledger::wallet_account(&wallet),
                amount: -1,
            },
            Posting {
                account: "worker:WORKER".to_owned(),
                amount: 1,
            },
        ],
    };
    assert!(matches!(
        ledger.post(bad_account),
        Err(LedgerError::Invalid {
            field: "account",
            ..
        })
    ));

    let touches_hold = NewEntry {
        kind: EntryKind::Fee,
        intent_id: None,
        idempotency_key: None,
        postings: vec![
            Posting {
                account: ledger::hold_account(&wallet),
                amount: -1,
            },
            Posting {
                account: ledger::FEES_ACCOUNT.to_owned(),
                amount: 1,
            },
        ],
    };
    assert!(matches!(
        ledger.post(touches_hold),
        Err(LedgerError::Invalid { .. })
    ));
    let wrong_kind = NewEntry {
        kind: EntryKind::Mint,
        intent_id: None,
        idempotency_key: None,
        postings: vec![
            Posting {
                account: ledger::ISSUANCE_ACCOUNT.to_owned(),
                amount: -1,
            },
            Posting {
                account: ledger::wallet_account(&wallet),
                amount: 1,
            },
        ],
    };
    assert!(matches!(
        ledger.post(wrong_kind),
        Err(LedgerError::Invalid { field: "kind", .. })
    ));

    assert!(matches!(
        ledger.mint(&wallet, 0, "z"),
        Err(LedgerError::InvalidAmount { .. })
    ));
    assert!(matches!(
        ledger.mint(&wallet, MAX_MICRO + 1, "big"),
        Err(LedgerError::InvalidAmount { .. })
    ));
    assert!(matches!(
        ledger.mint("not-a-key", 1, "k"),
        Err(LedgerError::Invalid {
            field: "wallet",
            ..
        })
    ));
    assert!(matches!(
        ledger.mint(&wallet, 1, "bad key!"),
        Err(LedgerError::Invalid { .. })
    ));
    // A balance beyond what the wire carries is an overflow, not a wrap.
    assert!(matches!(
        ledger.mint(&wallet, MAX_MICRO, "huge"),
        Err(LedgerError::Overflow(_))
    ));
    assert!(matches!(
        ledger.export(0, 0),
        Err(LedgerError::InvalidLimit(0))
    ));
    assert!(matches!(
        ledger.export(0, 1001),
        Err(LedgerError::InvalidLimit(1001))
    ));
    assert_eq!(
        ledger.head_seq().expect("head"),
        head,
        "nothing was written"
    );

    // A valid compensating entry goes through.
    let fee = NewEntry {
        kind: EntryKind::Fee,
        intent_id: None,
        idempotency_key: Some("adjust-1".to_owned()),
        postings: vec![
            Posting {
                account: ledger::wallet_account(&wallet),
                amount: -10,
            },
            Posting {
                account: ledger::worker_account(&worker),
                amount: 10,
            },
        ],
    };
    let entry = ledger.post(fee).expect("post");
    assert_eq!(entry.seq, head + 1);
    assert_eq!(ledger.balance(&wallet).expect("balance").available, 90);
    assert_verified(&ledger);
}

#[test]
fn statement_and_export_page_correctly() {
    let ledger = Ledger::new(Store::open(fresh_db("paging")).expect("open"));
    let (a, b) = (key(1), key(2));
    for i in 0..5 {
        ledger.mint(&a, 10, &format!("a{i}")).expect("mint a");
        ledger.mint(&b, 10, &format!("b{i}")).expect("mint b");
    }
    ledger.reserve(&a, "ia", 5, "ra").expect("reserve");
    ledger.release("ia").expect("release");

    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = ledger.statement(&a, after, 2).expect("statement");
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.iter().map(|e| e.seq));
        for e in &page.entries {
            assert!(e.postings.iter().any(|p| p.account.ends_with(&a)));
        }
        match page.next_after {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, vec![1, 3, 5, 7, 9, 11, 12]);
    let all = ledger.export(0, 1000).expect("export");
    assert_eq!(
        (all.entries.len(), all.next_after, all.head_seq),
        (12, None, 12)
    );
    let tail = ledger.export(10, 1000).expect("export tail");
    assert_eq!(
        tail.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![11, 12]
    );
    let exact = ledger.export(0, 12).expect("exact page");
    assert_eq!(
        exact.next_after, None,
        "a page that ends at the head has no next page"
    );
    // Entries serialise with the wire's field names and null for absent ids.
    let json = serde_json::to_value(&all.entries[0]).expect("json");
    assert_eq!(json["kind"], "mint");
    assert!(json["intent_id"].is_null());
    assert_eq!(json["idempotency_key"], "a0");
    assert!(json["ts"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.len() == 24));
}

#[test]
fn reopened_database_keeps_everything() {
    let path = fresh_db("reopen");
    let (wallet, worker) = (key(1), key(2));
    let (entries_before, balance_before, head_before) = {
        let store = Store::open(&path).expect("open");
        let ledger = Ledger::new(store.clone());
        let audit = Audit::new(store.clone());
        ledger.mint(&wallet, 1_000, "m").expect("mint");
        ledger.reserve(&wallet, "i1", 400, "r1").expect("reserve");
        ledger.reserve(&wallet, "i2", 300, "r2").expect("reserve");
        ledger
            .settle_success("i1", 100, &worker, 1_000)
            .expect("settle");
        ledger.release("i2").expect("release");
        ledger
            .reserve(&wallet, "i3", 50, "r3")
            .expect("reserve open");
        for i in 0..3 {
            audit
                .append(
                    "intent.admitted",
                    "realm",
                    &format!("i{i}"),
                    serde_json::json!({ "n": i }),
                )
                .expect("append");
        }
        let head = audit.head().expect("head");
        let out = (
            export_all(&ledger),
            ledger.balance(&wallet).expect("balance"),
            head,
        );
        store.shutdown();
        out
    };

    let store = Store::open(&path).expect("reopen");
    let ledger = Ledger::new(store.clone());
    let audit = Audit::new(store);
    assert_eq!(export_all(&ledger), entries_before);
    assert_eq!(ledger.balance(&wallet).expect("balance"), balance_before);
    assert_eq!(
        (balance_before.available, balance_before.held),
        (1_000 - 100 - 50, 50)
    );
    assert_verified(&ledger);
    let chain = audit.verify_chain().expect("verify chain");
    assert!(chain.is_intact(), "{:?}", chain.first_break);
    assert_eq!(chain.head, head_before);
    // Exactly-once and idempotency survive the restart.
    assert!(
        ledger
            .settle_success("i1", 100, &worker, 1_000)
            .expect("replay")
            .replayed
    );
    assert!(ledger.mint(&wallet, 1_000, "m").expect("replay").replayed);
    assert!(matches!(
        ledger.release("i1"),
        Err(LedgerError::AlreadyCaptured { .. })
    ));
    // The chain continues from the stored head.
    let next = audit
        .append("realm.started", "realm", "realm", serde_json::json!({}))
        .expect("append");
    assert_eq!(
        (next.seq, next.prev_hash),
        (head_before.seq + 1, head_before.hash)
    );
}

#[test]
fn tampering_outside_the_api_is_refused_or_detected() {
    let path = fresh_db("tamper");
    let ledger = Ledger::new(Store::open(&path).expect("open"));
    let wallet = key(1);
    ledger.mint(&wallet, 1_000, "m").expect("mint");
    ledger.reserve(&wallet, "i", 100, "r").expect("reserve");

    let raw = rusqlite::Connection::open(&path).expect("raw connection");
    raw.busy_timeout(std::time::Duration::from_secs(5))
        .expect("timeout");
    // The entries themselves are append-only.
    assert!(raw
        .execute(
            "UPDATE ledger_postings SET amount = amount + 1 WHERE entry_seq = 1",
            []
        )
        .is_err());
    assert!(raw
        .execute("DELETE FROM ledger_entries WHERE seq = 2", [])
        .is_err());
    // The balance cache is not, but verify() recomputes it from the postings.
    raw.execute(
        "UPDATE ledger_balances SET balance = balance + 5 WHERE account = ?1",
        [ledger::wallet_account(&wallet)],
    )
    .expect("update cache");
    let report = ledger.verify().expect("verify");
    assert!(!report.is_ok());
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.subject == ledger::wallet_account(&wallet)
                && v.reason.contains("cached balance")),
        "{:?}",
        report.violations
    );
}

// ---------------------------------------------------------------------------------------------
// Group commit.

#[test]
fn group_commit_batches_jobs_and_isolates_a_failing_one() {
    let store = Store::open(fresh_db("group")).expect("open");
    let ledger = Ledger::new(store.clone());
    assert_eq!(store.stats().batches, 0);

    // Hold the writer inside a first job so that everything submitted meanwhile queues up.
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let blocker = store
        .submit(move |_tx| {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
            Ok::<_, StoreError>(())
        })
        .expect("submit blocker");
    started_rx.recv().expect("writer started the blocker");

    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 25;
    let pendings: Vec<Pending<MintOutcome, LedgerError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let wallet = key(t + 1);
                            let idem = format!("g-{t}-{i}");
                            store
                                .submit(move |tx| ledger::mint_tx(tx, &wallet, 10, &idem))
                                .expect("submit")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    // A job that writes, then fails: only its own savepoint may roll back.
    let doomed_wallet = key(99);
    let failing = store
        .submit(move |tx| {
            ledger::mint_tx(tx, &doomed_wallet, 5, "doomed")?;
            Err::<(), LedgerError>(LedgerError::Corrupt("failing on purpose".to_owned()))
        })
        .expect("submit failing job");
    assert!(
        failing.try_wait().is_none(),
        "nothing is answered before its batch commits"
    );

    go_tx.send(()).expect("release the blocker");
    blocker.wait().expect("blocker");
    for pending in pendings {
        let out = pending.wait().expect("mint committed");
        assert!(!out.replayed);
    }
    assert!(matches!(failing.wait(), Err(LedgerError::Corrupt(_))));

    let stats = store.stats();
    let queued = THREADS * PER_THREAD + 1;
    assert_eq!(
        stats.batches, 2,
        "the blocker's batch, then one batch for all the queued jobs"
    );
    assert_eq!(stats.last_batch_size, queued);
    assert_eq!(stats.max_batch_size, queued);
    assert_eq!(stats.jobs, queued + 1);
    assert_eq!(stats.failed_jobs, 1);
    assert_eq!(stats.aborted_batches, 0);
    assert!(stats.last_commit_unix_ms > 0);
    // 101 falls in the (64, 128] bucket; the blocker's batch of 1 in the first.
    assert_eq!(stats.batch_size_counts[0], 1);
    assert_eq!(stats.batch_size_counts[7], 1);
    let cumulative = stats.cumulative_batch_buckets();
    assert_eq!(cumulative.last(), Some(&(None, 2)));

    for t in 0..THREADS {
        assert_eq!(
            ledger.balance(&key(t + 1)).expect("balance").available,
            10 * PER_THREAD
        );
    }
    assert_eq!(ledger.balance(&key(99)).expect("balance").available, 0);
    assert!(
        !ledger
            .mint(&key(99), 5, "doomed")
            .expect("key unused")
            .replayed
    );
    assert_verified(&ledger);

    // Shutdown drains what is queued, then refuses new work.
    let queued: Vec<_> = (0..20)
        .map(|i| {
            let w = key(50);
            store
                .submit(move |tx| ledger::mint_tx(tx, &w, 1, &format!("late-{i}")))
                .expect("submit")
        })
        .collect();
    store.shutdown();
    for pending in queued {
        pending.wait().expect("drained before shutdown");
    }
    assert!(matches!(
        ledger.mint(&key(50), 1, "after"),
        Err(LedgerError::Store(StoreError::Closed))
    ));
    assert_eq!(
        ledger
            .balance(&key(50))
            .expect("reads still work")
            .available,
        20
    );
}

// ---------------------------------------------------------------------------------------------
// Durability across SIGKILL: a child process (this test binary, re-run on the helper test below)
// mints and reports each acknowledged mint; the parent kills it with SIGKILL mid-stream and
// checks that every acknowledged mint is in the reopened database.

const CHILD_DB_ENV: &str = "MTOR_TEST_SIGKILL_CHILD_DB";

/// Not a test on its own: the body of the child process of
/// `acknowledged_writes_survive_sigkill`. Without the environment variable it does nothing.
#[test]
fn sigkill_child_writer() {
    let Ok(path) = std::env::var(CHILD_DB_ENV) else {
        return;
    };
    let ledger = Ledger::new(Store::open(path).expect("child open"));
    let wallet = key(1);
    let mut stdout = std::io::stdout();
    for i in 0u64.. {
        ledger
            .mint(&wallet, 1, &format!("k{i}"))
            .expect("child mint");
        writeln!(stdout, "acked {i}").expect("child stdout");
        stdout.flush().expect("child flush");
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let path = fresh_db("sigkill");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "sigkill_child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DB_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse::<u64>().expect("number") + 1;
            if acked >= 60 {
                break;
            }
        }
    }
    // On Unix, Child::kill is SIGKILL: no destructor, no clean shutdown.
    child.kill().expect("kill child");
    let status = child.wait().expect("reap child");
    assert!(!status.success());
    assert_eq!(
        acked, 60,
        "the child acknowledged 60 mints before it was killed"
    );

    let ledger = Ledger::new(Store::open(&path).expect("reopen after kill"));
    let balance = ledger.balance(&key(1)).expect("balance");
    assert!(
        balance.available >= acked,
        "lost acknowledged mints: {balance:?}"
    );
    for i in 0..acked {
        let again = ledger.mint(&key(1), 1, &format!("k{i}")).expect("replay");
        assert!(again.replayed, "acknowledged mint k{i} is missing");
    }
    assert_verified(&ledger);
}

// ---------------------------------------------------------------------------------------------
// The contract's examples (fixtures/corpus/valid/rest) as conformance checks.

fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/corpus/valid/rest")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Drops `ts`, which depends on the clock, from every entry.
fn without_ts(mut entries: serde_json::Value) -> serde_json::Value {
    if let Some(list) = entries.as_array_mut() {
        for entry in list {
            if let Some(obj) = entry.as_object_mut() {
                obj.remove("ts");
            }
        }
    }
    entries
}

#[test]
fn contract_example_flow_produces_the_documented_entries() {
    let expected = fixture("statement.json");
    let wallet = expected["wallet"].as_str().expect("wallet").to_owned();
    let worker = "693ed50996d4c4e4e484187cd6039261957f109f37a557eb6f6e96fd13595957";
    let intent = "01M83YDR4866HQ51GAXAHK0476";
    let ledger = Ledger::new(Store::open(fresh_db("contract")).expect("open"));
    ledger
        .mint(&wallet, 50_000_000, "77cea6d9-c65b-4ca0-b5f7-947b2a6218d2")
        .expect("mint");
    ledger
        .reserve(
            &wallet,
            intent,
            5_000,
            "0024c91e-2beb-47e5-9b23-9430a1eac769",
        )
        .expect("reserve");
    ledger
        .settle_success(intent, 1_000, worker, 500)
        .expect("settle");

    let statement =
        serde_json::to_value(ledger.statement(&wallet, 0, 100).expect("statement")).expect("json");
    assert_eq!(statement["wallet"], expected["wallet"]);
    assert_eq!(statement["next_after"], expected["next_after"]);
    assert_eq!(
        without_ts(statement["entries"].clone()),
        without_ts(expected["entries"].clone())
    );
    let balance = serde_json::to_value(ledger.balance(&wallet).expect("balance")).expect("json");
    assert_eq!(balance, fixture("balance.json"));

    // The export example parses into the realm's types and serialises back unchanged.
    let export = fixture("ledger-export.json");
    let parsed: ledger::LedgerExport =
        serde_json::from_value(export.clone()).expect("parse export example");
    assert_eq!(serde_json::to_value(&parsed).expect("json"), export);
    let mine = serde_json::to_value(ledger.export(0, 2).expect("export")).expect("json");
    assert_eq!(mine["next_after"], export["next_after"]);
    assert_eq!(mine["head_seq"], export["head_seq"]);
    assert_eq!(
        without_ts(mine["entries"].clone()),
        without_ts(export["entries"].clone())
    );
}

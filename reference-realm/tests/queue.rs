//! SafeQueue behaviour: admission bounds and codes, fairness between wallets, priority and FIFO
//! within a wallet, aging, re-dispatch, and a model-based property test over random sequences.

use std::collections::{BTreeMap, BTreeSet};

use mtor_realm::queue::{
    AdmitError, IntentState, QueueConfig, QueueError, QueuedIntent, SafeQueue, Submission,
};
use proptest::prelude::*;

fn sub(id: &str, wallet: &str, intent: &str, priority: u8, cost: u32) -> Submission {
    Submission {
        intent_id: id.to_owned(),
        wallet: wallet.to_owned(),
        intent: intent.to_owned(),
        priority,
        cost,
    }
}

fn queue(config: QueueConfig) -> SafeQueue {
    SafeQueue::new(config).expect("test config is valid")
}

fn config() -> QueueConfig {
    QueueConfig {
        capacity: 10_000,
        per_wallet_inflight: 5_000,
        aging_step_ms: 0,
        ..QueueConfig::default()
    }
}

const ALL: &[&str] = &["probe", "fft", "chat"];

fn take(q: &mut SafeQueue, now: u64) -> QueuedIntent {
    q.next_for(ALL, now).expect("a servable intent is queued")
}

/// Jain's fairness index over per-wallet served counts: 1.0 is perfectly even.
fn jain(counts: &[f64]) -> f64 {
    let sum: f64 = counts.iter().sum();
    let squares: f64 = counts.iter().map(|c| c * c).sum();
    sum * sum / (counts.len() as f64 * squares)
}

#[test]
fn invalid_configs_are_refused() {
    for bad in [
        QueueConfig {
            capacity: 0,
            ..QueueConfig::default()
        },
        QueueConfig {
            per_wallet_inflight: 0,
            ..QueueConfig::default()
        },
        QueueConfig {
            quantum: 0,
            ..QueueConfig::default()
        },
        QueueConfig {
            min_retry_after_ms: 10,
            max_retry_after_ms: 5,
            ..QueueConfig::default()
        },
    ] {
        assert!(matches!(
            SafeQueue::new(bad),
            Err(QueueError::InvalidConfig(_))
        ));
    }
}

#[test]
fn admission_reports_position_and_depth() {
    let mut q = queue(config());
    let a1 = q.admit(sub("a1", "A", "probe", 5, 1), 0).unwrap();
    assert_eq!((a1.position, a1.depth), (0, 1));
    let a2 = q.admit(sub("a2", "A", "probe", 5, 1), 0).unwrap();
    assert_eq!((a2.position, a2.depth), (1, 2));
    // B arrives later but DRR alternates: only a1 is served before b1.
    let b1 = q.admit(sub("b1", "B", "probe", 5, 1), 0).unwrap();
    assert_eq!((b1.position, b1.depth), (1, 3));
    assert_eq!(q.position("a2", 0), Some(2));
    assert_eq!(q.depth(), 3);
    assert_eq!(q.state("a1"), Some(IntentState::Queued));
    assert_eq!(take(&mut q, 0).intent_id, "a1");
    assert_eq!(q.state("a1"), Some(IntentState::Running));
    assert_eq!(
        q.position("a1", 0),
        None,
        "a running intent has no position"
    );
    assert_eq!((q.depth(), q.running(), q.inflight()), (2, 1, 3));
    assert_eq!(q.position("b1", 0), Some(0));
    assert_eq!(q.position("nope", 0), None);
}

#[test]
fn full_queue_rejects_with_queue_full_and_running_intents_hold_their_slots() {
    let mut q = queue(QueueConfig {
        capacity: 2,
        ..config()
    });
    q.admit(sub("a", "A", "probe", 5, 1), 0).unwrap();
    q.admit(sub("b", "B", "probe", 5, 1), 0).unwrap();
    let err = q.admit(sub("c", "C", "probe", 5, 1), 0).unwrap_err();
    assert!(matches!(err, AdmitError::QueueFull { capacity: 2, .. }));
    assert_eq!(err.code(), "QUEUE_FULL");
    assert_eq!(err.retry_after_ms(), Some(1_000), "no history: the default");
    assert!(q.get("c").is_none(), "a refused intent leaves no trace");

    // Dequeuing does not free a slot: the running intent may come back via requeue_front.
    let running = take(&mut q, 0);
    assert!(matches!(
        q.admit(sub("c", "C", "probe", 5, 1), 0),
        Err(AdmitError::QueueFull { .. })
    ));
    q.finish(&running.intent_id, 10).unwrap();
    assert!(q.admit(sub("c", "C", "probe", 5, 1), 10).is_ok());
}

#[test]
fn wallet_limit_rejects_that_wallet_only() {
    let mut q = queue(QueueConfig {
        per_wallet_inflight: 2,
        ..config()
    });
    q.admit(sub("a1", "A", "probe", 5, 1), 0).unwrap();
    q.admit(sub("a2", "A", "probe", 5, 1), 0).unwrap();
    let first = take(&mut q, 0);
    assert_eq!(first.intent_id, "a1");
    let err = q.admit(sub("a3", "A", "probe", 5, 1), 0).unwrap_err();
    assert!(matches!(err, AdmitError::WalletLimit { limit: 2, .. }));
    assert_eq!(err.code(), "QUEUE_FULL");
    assert!(err.retry_after_ms().is_some());
    assert!(q.admit(sub("b1", "B", "probe", 5, 1), 0).is_ok());
    assert_eq!(q.wallet_inflight("A"), 2);
    q.finish("a1", 5).unwrap();
    assert_eq!(q.wallet_inflight("A"), 1);
    assert!(q.admit(sub("a3", "A", "probe", 5, 1), 5).is_ok());
}

#[test]
fn malformed_or_duplicate_submissions_are_refused_with_codes() {
    let mut q = queue(QueueConfig {
        max_cost: 10,
        ..config()
    });
    let err = q.admit(sub("x", "A", "probe", 10, 1), 0).unwrap_err();
    assert_eq!(err, AdmitError::InvalidPriority(10));
    assert_eq!(err.code(), "INVALID_EVENT");
    assert!(matches!(
        q.admit(sub("x", "A", "probe", 5, 0), 0),
        Err(AdmitError::InvalidCost { cost: 0, max: 10 })
    ));
    assert!(matches!(
        q.admit(sub("x", "A", "probe", 5, 11), 0),
        Err(AdmitError::InvalidCost { cost: 11, .. })
    ));
    q.admit(sub("x", "A", "probe", 5, 1), 0).unwrap();
    let dup = q.admit(sub("x", "B", "fft", 1, 1), 0).unwrap_err();
    assert_eq!(dup, AdmitError::DuplicateId("x".to_owned()));
    assert_eq!(dup.retry_after_ms(), None);
    assert_eq!(q.depth(), 1);
}

#[test]
fn retry_after_follows_the_recent_release_rate() {
    let window = 1_000;
    let mut q = queue(QueueConfig {
        capacity: 3,
        rate_window_ms: window,
        min_retry_after_ms: 1,
        max_retry_after_ms: 100_000,
        ..config()
    });
    // Ten releases 100 ms apart, all within the last second before t = 10_000.
    for i in 0..10u64 {
        let t = 9_100 + 100 * i;
        let id = format!("i{i}");
        q.admit(sub(&id, "A", "probe", 5, 1), t).unwrap();
        take(&mut q, t);
        q.finish(&id, t).unwrap();
    }
    for id in ["f1", "f2", "f3"] {
        q.admit(sub(id, "B", "probe", 5, 1), 10_000).unwrap();
    }
    let fast = q
        .admit(sub("late", "C", "probe", 5, 1), 10_000)
        .unwrap_err();
    assert_eq!(fast.retry_after_ms(), Some(100), "1000 ms / 10 releases");
    // 550 ms later only five releases are still in the window: the estimate doubles.
    assert_eq!(q.retry_after_ms(10_550), 200);
    // Nothing released within the window: back to the default.
    assert_eq!(q.retry_after_ms(20_000), 1_000);
}

#[test]
fn priority_first_then_fifo_within_a_wallet() {
    let mut q = queue(config());
    let priorities = [5u8, 9, 5, 0, 9, 5, 7];
    for (i, p) in priorities.iter().enumerate() {
        q.admit(sub(&format!("i{i}"), "A", "probe", *p, 1), i as u64)
            .unwrap();
    }
    assert_eq!(q.position("i1", 10), Some(0));
    assert_eq!(q.position("i3", 10), Some(6));
    let order: Vec<String> = (0..priorities.len())
        .map(|_| take(&mut q, 10).intent_id)
        .collect();
    assert_eq!(order, ["i1", "i4", "i6", "i0", "i2", "i5", "i3"]);
    assert!(q.next_for(ALL, 10).is_none());
}

#[test]
fn aging_lets_an_old_low_priority_intent_through() {
    let mut q = queue(QueueConfig {
        aging_step_ms: 1_000,
        ..config()
    });
    q.admit(sub("old", "A", "probe", 0, 1), 0).unwrap();
    // At 8 s the old intent's effective priority is 8: a fresh 9 still goes first.
    q.admit(sub("new1", "A", "probe", 9, 1), 8_000).unwrap();
    assert_eq!(take(&mut q, 8_000).intent_id, "new1");
    // At 9 s it reaches 9 and, being older, beats a fresh 9.
    q.admit(sub("new2", "A", "probe", 9, 1), 9_000).unwrap();
    assert_eq!(q.position("old", 9_000), Some(0));
    assert_eq!(take(&mut q, 9_000).intent_id, "old");

    // Without aging the same stream would starve it.
    let mut q = queue(config());
    q.admit(sub("old", "A", "probe", 0, 1), 0).unwrap();
    q.admit(sub("new1", "A", "probe", 9, 1), 8_000).unwrap();
    q.admit(sub("new2", "A", "probe", 9, 1), 9_000).unwrap();
    assert_eq!(take(&mut q, 1_000_000).intent_id, "new1");
    assert_eq!(take(&mut q, 1_000_000).intent_id, "new2");
}

#[test]
fn next_for_serves_only_what_the_worker_serves() {
    let mut q = queue(config());
    q.admit(sub("a-fft", "A", "fft", 9, 1), 0).unwrap();
    q.admit(sub("a-probe", "A", "probe", 1, 1), 0).unwrap();
    q.admit(sub("b-fft", "B", "fft", 5, 1), 0).unwrap();
    assert!(q.next_for(&["chat"], 0).is_none());
    assert!(q.next_for::<&str>(&[], 0).is_none());
    // A's best intent is fft, but a probe-only worker gets A's probe.
    assert_eq!(q.next_for(&["probe"], 0).unwrap().intent_id, "a-probe");
    assert!(q.next_for(&["probe"], 0).is_none());
    let names = vec!["fft".to_owned()];
    let mut fft: Vec<String> = (0..2)
        .map(|_| q.next_for(&names, 0).unwrap().intent_id)
        .collect();
    fft.sort();
    assert_eq!(fft, ["a-fft", "b-fft"]);
    assert_eq!(q.depth(), 0);
}

#[test]
fn a_light_wallet_is_served_promptly_behind_a_heavy_backlog() {
    let mut q = queue(config());
    for i in 0..1000 {
        q.admit(sub(&format!("h{i}"), "heavy", "probe", 5, 1), 0)
            .unwrap();
    }
    // The heavy wallet has been served alone for a while before the light one arrives.
    for _ in 0..50 {
        assert_eq!(take(&mut q, 1).wallet, "heavy");
    }
    let mut light_positions = Vec::new();
    for i in 0..10 {
        let accepted = q
            .admit(sub(&format!("l{i}"), "light", "probe", 5, 1), 2)
            .unwrap();
        light_positions.push(accepted.position);
    }
    assert!(
        light_positions.iter().all(|p| *p <= 20),
        "positions promised to the light wallet: {light_positions:?}"
    );

    let mut served: BTreeMap<&str, f64> = BTreeMap::new();
    let mut last_light = None;
    let mut n = 0;
    while q.wallet_inflight("light") > 0 {
        // Both wallets are backlogged for the whole of this loop.
        let item = take(&mut q, 3);
        n += 1;
        let wallet = if item.wallet == "light" {
            last_light = Some(n);
            "light"
        } else {
            "heavy"
        };
        *served.entry(wallet).or_default() += 1.0;
        q.finish(&item.intent_id, 3).unwrap();
    }
    let last_light = last_light.expect("the light wallet was served");
    assert!(
        last_light <= 20,
        "the light wallet's 10 intents took {last_light} dequeues"
    );
    let counts: Vec<f64> = served.values().copied().collect();
    assert_eq!(counts.len(), 2);
    let index = jain(&counts);
    assert!(index >= 0.95, "Jain's index {index} over {served:?}");
    assert_eq!(served["light"], 10.0);
}

#[test]
fn costs_weight_the_share_of_each_wallet() {
    // Quantum 2: a wallet of cost-1 intents gets two per turn, one of cost-2 intents one.
    let mut q = queue(QueueConfig {
        quantum: 2,
        ..config()
    });
    for i in 0..100 {
        q.admit(sub(&format!("a{i}"), "A", "probe", 5, 2), 0)
            .unwrap();
        q.admit(sub(&format!("b{i}"), "B", "probe", 5, 1), 0)
            .unwrap();
    }
    let mut counts = BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        *counts.entry(take(&mut q, 0).wallet).or_default() += 1;
    }
    assert_eq!(counts["A"], 10);
    assert_eq!(counts["B"], 20);
}

#[test]
fn costs_far_above_the_quantum_are_served_without_spinning() {
    // Quantum 1 with costs of 500 and 1000: hundreds of empty rounds are fast-forwarded, and the
    // shares still follow the costs (B twice as often as A).
    let mut q = queue(config());
    assert!(q.next_for(ALL, 0).is_none());
    for i in 0..40 {
        q.admit(sub(&format!("a{i}"), "A", "probe", 5, 1000), 0)
            .unwrap();
        q.admit(sub(&format!("b{i}"), "B", "probe", 5, 500), 0)
            .unwrap();
    }
    let first = take(&mut q, 0);
    assert_eq!(first.wallet, "B", "B affords its first intent sooner");
    let mut counts = BTreeMap::<String, u32>::new();
    *counts.entry(first.wallet).or_default() += 1;
    for _ in 1..30 {
        *counts.entry(take(&mut q, 0).wallet).or_default() += 1;
    }
    assert!((9..=11).contains(&counts["A"]), "{counts:?}");
    assert!((19..=21).contains(&counts["B"]), "{counts:?}");

    // Cheap intents beside an expensive one: the expensive one waits about cost/quantum turns.
    let mut q = queue(config());
    q.admit(sub("big", "A", "probe", 5, 1000), 0).unwrap();
    for i in 0..2000 {
        q.admit(sub(&format!("s{i}"), "B", "probe", 5, 1), 0)
            .unwrap();
    }
    let at = (1..=2001)
        .find(|_| take(&mut q, 0).intent_id == "big")
        .expect("the expensive intent is served");
    assert!((995..=1005).contains(&at), "served at dequeue {at}");
}

#[test]
fn cancel_removes_only_queued_intents() {
    let mut q = queue(config());
    q.admit(sub("a1", "A", "probe", 5, 1), 0).unwrap();
    q.admit(sub("a2", "A", "probe", 5, 1), 0).unwrap();
    q.admit(sub("b1", "B", "probe", 5, 1), 0).unwrap();
    assert_eq!(q.position("b1", 0), Some(1));
    let cancelled = q.cancel("a1", 0).unwrap();
    assert_eq!(cancelled.intent_id, "a1");
    assert_eq!(q.depth(), 2);
    assert_eq!(q.position("a2", 0), Some(0));
    assert_eq!(
        q.cancel("a1", 0),
        Err(QueueError::NotFound("a1".to_owned()))
    );
    let running = take(&mut q, 0);
    assert_eq!(running.intent_id, "a2");
    assert_eq!(q.cancel("a2", 0), Err(QueueError::Running("a2".to_owned())));
    assert_eq!(q.cancel("b1", 0).unwrap().wallet, "B");
    assert!(q.next_for(ALL, 0).is_none());
    assert_eq!(q.wallet_inflight("B"), 0);
    assert_eq!(q.wallet_inflight("A"), 1);
}

#[test]
fn a_requeued_intent_goes_before_later_arrivals() {
    let mut q = queue(QueueConfig {
        capacity: 4,
        ..config()
    });
    q.admit(sub("a1", "A", "probe", 0, 1), 0).unwrap();
    let first = take(&mut q, 0);
    assert_eq!(first.dispatches, 1);
    q.admit(sub("a2", "A", "probe", 9, 1), 1).unwrap();
    q.admit(sub("b1", "B", "probe", 9, 1), 1).unwrap();
    q.admit(sub("c1", "C", "probe", 9, 1), 1).unwrap();
    // Full, yet the lapsed intent goes back: it kept its slot while running.
    assert!(q.admit(sub("d1", "D", "probe", 9, 1), 1).is_err());
    assert_eq!(q.requeue_front("a1", 2), Ok(0));
    assert_eq!(q.inflight(), 4);
    assert_eq!(q.position("b1", 2), Some(2));
    let again = take(&mut q, 3);
    assert_eq!(again.intent_id, "a1");
    assert_eq!(again.dispatches, 2);
    assert_eq!(
        q.requeue_front("b1", 3),
        Err(QueueError::NotRunning("b1".to_owned()))
    );
    assert_eq!(
        q.requeue_front("zz", 3),
        Err(QueueError::NotFound("zz".to_owned()))
    );
}

#[test]
fn the_retry_lane_respects_worker_intents() {
    let mut q = queue(config());
    q.admit(sub("x", "A", "fft", 5, 1), 0).unwrap();
    q.admit(sub("y", "B", "probe", 5, 1), 0).unwrap();
    assert_eq!(q.next_for(&["fft"], 0).unwrap().intent_id, "x");
    q.requeue_front("x", 1).unwrap();
    assert_eq!(q.next_for(&["probe"], 1).unwrap().intent_id, "y");
    assert_eq!(q.next_for(&["probe", "fft"], 1).unwrap().intent_id, "x");
}

#[derive(Debug, Clone)]
enum Op {
    Admit {
        wallet: u8,
        intent: u8,
        priority: u8,
        cost: u32,
    },
    Next {
        mask: u8,
    },
    Cancel {
        pick: usize,
    },
    Finish {
        pick: usize,
    },
    Requeue {
        pick: usize,
    },
    Tick {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..3, 0u8..=9, 1u32..=3).prop_map(|(wallet, intent, priority, cost)| {
            Op::Admit { wallet, intent, priority, cost }
        }),
        3 => (0u8..8).prop_map(|mask| Op::Next { mask }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Finish { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Requeue { pick }),
        1 => (0u64..3_000).prop_map(|ms| Op::Tick { ms }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelState {
    Queued,
    Running,
    Ended,
}

struct Model {
    intent: String,
    wallet: String,
    state: ModelState,
    endings: u32,
}

const CAPACITY: usize = 12;
const PER_WALLET: usize = 5;
const NAMES: [&str; 3] = ["probe", "fft", "chat"];

fn check_invariants(q: &SafeQueue, model: &BTreeMap<String, Model>, now: u64) {
    let count = |s: ModelState| model.values().filter(|m| m.state == s).count();
    assert_eq!(q.depth(), count(ModelState::Queued));
    assert_eq!(q.running(), count(ModelState::Running));
    assert!(q.inflight() <= CAPACITY, "capacity exceeded");
    let mut per_wallet: BTreeMap<&str, usize> = BTreeMap::new();
    for m in model.values().filter(|m| m.state != ModelState::Ended) {
        *per_wallet.entry(m.wallet.as_str()).or_default() += 1;
    }
    for (wallet, n) in per_wallet {
        assert!(n <= PER_WALLET, "wallet {wallet} over its limit");
        assert_eq!(q.wallet_inflight(wallet), n);
    }
    for (id, m) in model {
        match m.state {
            ModelState::Queued => {
                assert_eq!(q.state(id), Some(IntentState::Queued));
                let p = q.position(id, now).expect("queued intents have a position");
                assert!(p < q.depth(), "position {p} beyond depth {}", q.depth());
            }
            ModelState::Running => assert_eq!(q.state(id), Some(IntentState::Running)),
            ModelState::Ended => assert_eq!(q.state(id), None),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every admitted intent ends (finished or cancelled) exactly once, the bounds always hold,
    /// nothing is refused below the bounds, a worker only gets what it serves and gets something
    /// whenever something servable is queued, and everything drains at the end.
    #[test]
    fn random_sequences_keep_the_queue_invariants(ops in prop::collection::vec(op(), 1..200)) {
        let mut q = queue(QueueConfig {
            capacity: CAPACITY,
            per_wallet_inflight: PER_WALLET,
            quantum: 2,
            max_cost: 3,
            aging_step_ms: 1_000,
            ..QueueConfig::default()
        });
        let mut model: BTreeMap<String, Model> = BTreeMap::new();
        let mut now = 0u64;
        let mut next_id = 0u32;
        for op in ops {
            match op {
                Op::Admit { wallet, intent, priority, cost } => {
                    let id = format!("i{next_id}");
                    next_id += 1;
                    let wallet = format!("w{wallet}");
                    let inflight = model.values().filter(|m| m.state != ModelState::Ended).count();
                    let wallet_inflight = model
                        .values()
                        .filter(|m| m.state != ModelState::Ended && m.wallet == wallet)
                        .count();
                    let name = NAMES[usize::from(intent)];
                    let result = q.admit(sub(&id, &wallet, name, priority, cost), now);
                    if inflight >= CAPACITY {
                        let full = matches!(result, Err(AdmitError::QueueFull { .. }));
                        prop_assert!(full, "expected QUEUE_FULL, got {:?}", result);
                    } else if wallet_inflight >= PER_WALLET {
                        let limited = matches!(result, Err(AdmitError::WalletLimit { .. }));
                        prop_assert!(limited, "expected the wallet limit, got {:?}", result);
                    } else {
                        let accepted = result.expect("below both bounds: accepted");
                        prop_assert!(accepted.position < accepted.depth);
                        model.insert(id, Model {
                            intent: name.to_owned(),
                            wallet,
                            state: ModelState::Queued,
                            endings: 0,
                        });
                    }
                }
                Op::Next { mask } => {
                    let names: Vec<&str> = NAMES
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << i) != 0)
                        .map(|(_, n)| *n)
                        .collect();
                    match q.next_for(&names, now) {
                        Some(item) => {
                            let m = model.get_mut(&item.intent_id).expect("known id");
                            prop_assert_eq!(m.state, ModelState::Queued);
                            prop_assert!(names.contains(&m.intent.as_str()));
                            m.state = ModelState::Running;
                        }
                        None => {
                            let servable = model.values().any(|m| {
                                m.state == ModelState::Queued && names.contains(&m.intent.as_str())
                            });
                            prop_assert!(!servable, "servable work was left queued");
                        }
                    }
                }
                Op::Cancel { pick } => {
                    if model.is_empty() {
                        continue;
                    }
                    let id = model.keys().nth(pick % model.len()).cloned().unwrap_or_default();
                    let m = model.get_mut(&id).expect("picked from the model");
                    let result = q.cancel(&id, now);
                    match m.state {
                        ModelState::Queued => {
                            prop_assert_eq!(result.map(|i| i.intent_id), Ok(id.clone()));
                            m.state = ModelState::Ended;
                            m.endings += 1;
                        }
                        ModelState::Running => {
                            prop_assert_eq!(result, Err(QueueError::Running(id.clone())));
                        }
                        ModelState::Ended => {
                            prop_assert_eq!(result, Err(QueueError::NotFound(id.clone())));
                        }
                    }
                }
                Op::Finish { pick } | Op::Requeue { pick } => {
                    let running: Vec<String> = model
                        .iter()
                        .filter(|(_, m)| m.state == ModelState::Running)
                        .map(|(id, _)| id.clone())
                        .collect();
                    if running.is_empty() {
                        continue;
                    }
                    let id = &running[pick % running.len()];
                    let m = model.get_mut(id).expect("picked from the model");
                    if matches!(op, Op::Finish { .. }) {
                        prop_assert!(q.finish(id, now).is_ok());
                        m.state = ModelState::Ended;
                        m.endings += 1;
                    } else {
                        let position = q.requeue_front(id, now).expect("running intents requeue");
                        m.state = ModelState::Queued;
                        prop_assert!(position < q.depth());
                    }
                }
                Op::Tick { ms } => now += ms,
            }
            check_invariants(&q, &model, now);
        }
        // Drain: a worker serving everything empties the queue.
        while let Some(item) = q.next_for(&NAMES, now) {
            prop_assert!(q.finish(&item.intent_id, now).is_ok());
            let m = model.get_mut(&item.intent_id).expect("known id");
            m.state = ModelState::Ended;
            m.endings += 1;
        }
        let running: Vec<String> = model
            .iter()
            .filter(|(_, m)| m.state == ModelState::Running)
            .map(|(id, _)| id.clone())
            .collect();
        for id in running {
            prop_assert!(q.finish(&id, now).is_ok());
            if let Some(m) = model.get_mut(&id) {
                m.state = ModelState::Ended;
                m.endings += 1;
            }
        }
        prop_assert_eq!(q.inflight(), 0);
        let once: BTreeSet<u32> = model.values().map(|m| m.endings).collect();
        prop_assert!(once.is_empty() || once == BTreeSet::from([1]), "endings {:?}", once);
    }
}

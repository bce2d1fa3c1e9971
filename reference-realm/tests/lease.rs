//! Lease table behaviour: fencing (stale epoch, expired, duplicate), progress, expiry with grace,
//! dead letters after max attempts, monotonic epochs, lost workers and failure attribution.

use std::collections::BTreeMap;

use mtor_realm::lease::{
    Disposition, FailureKind, LeaseConfig, LeaseError, LeaseTable, DEFAULT_GRACE_MS,
};
use proptest::prelude::*;

const LEASE_MS: u64 = 1_000;
const GRACE_MS: u64 = DEFAULT_GRACE_MS;

fn table() -> LeaseTable {
    LeaseTable::new(LeaseConfig::default(), 0).expect("default config is valid")
}

#[test]
fn zero_max_attempts_and_zero_lease_are_refused() {
    assert!(matches!(
        LeaseTable::new(
            LeaseConfig {
                max_attempts: 0,
                ..LeaseConfig::default()
            },
            0
        ),
        Err(LeaseError::InvalidConfig(_))
    ));
    assert_eq!(
        table().grant("t", "w", 0, 0),
        Err(LeaseError::InvalidLeaseMs)
    );
}

#[test]
fn grant_starts_above_the_epoch_floor_and_epochs_strictly_increase() {
    let mut leases = LeaseTable::new(LeaseConfig::default(), 41).unwrap();
    assert_eq!(leases.last_epoch(), 41);
    let a = leases.grant("a", "w1", 100, LEASE_MS).unwrap();
    assert_eq!((a.attempt, a.epoch, a.deadline_ms), (1, 42, 1_100));
    let b = leases.grant("b", "w1", 100, LEASE_MS).unwrap();
    assert_eq!((b.attempt, b.epoch), (1, 43));
    assert_eq!(
        leases.grant("a", "w2", 100, LEASE_MS),
        Err(LeaseError::AlreadyLeased("a".to_owned()))
    );
    assert_eq!(leases.last_epoch(), 43, "a refused grant uses no epoch");
    let lost = leases.worker_lost("w1");
    assert_eq!(lost.len(), 2);
    let a2 = leases.grant("a", "w2", 200, LEASE_MS).unwrap();
    assert_eq!((a2.attempt, a2.epoch), (2, 44));

    // A restart resumes from the persisted high-water mark: no epoch is ever reused.
    let mut restarted = LeaseTable::new(LeaseConfig::default(), leases.last_epoch()).unwrap();
    assert_eq!(restarted.grant("c", "w1", 0, LEASE_MS).unwrap().epoch, 45);
}

#[test]
fn a_stale_epoch_is_refused_after_re_dispatch() {
    let mut leases = table();
    let first = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
    let reclaimed = leases.expire(LEASE_MS + GRACE_MS + 1);
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].disposition, Disposition::Redispatch);
    let second = leases.grant("t", "w2", 5_000, LEASE_MS).unwrap();
    assert!(second.epoch > first.epoch);

    let late = leases
        .complete("t", first.attempt, first.epoch, "w1")
        .unwrap_err();
    assert!(matches!(late, LeaseError::StaleEpoch { attempt: 1, .. }));
    assert_eq!(late.code(), "STALE_EPOCH");
    assert!(matches!(
        leases.progress("t", 1, first.epoch, "w1", 5_001),
        Err(LeaseError::StaleEpoch { .. })
    ));
    assert!(matches!(
        leases.fail("t", 1, first.epoch, "w1", true),
        Err(LeaseError::StaleEpoch { .. })
    ));
    // The right epoch with the wrong attempt is not the current lease either.
    assert!(matches!(
        leases.complete("t", 1, second.epoch, "w2"),
        Err(LeaseError::StaleEpoch { .. })
    ));
    assert_eq!(leases.complete("t", 2, second.epoch, "w2").unwrap(), second);
}

#[test]
fn a_lapsed_lease_answers_lease_expired_until_re_granted() {
    let mut leases = table();
    let lease = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
    leases.expire(LEASE_MS + GRACE_MS + 1);
    let err = leases
        .complete("t", lease.attempt, lease.epoch, "w1")
        .unwrap_err();
    assert_eq!(err, LeaseError::LeaseExpired("t".to_owned()));
    assert_eq!(err.code(), "LEASE_EXPIRED");
    assert!(matches!(
        leases.progress("t", 1, lease.epoch, "w1", 4_000),
        Err(LeaseError::LeaseExpired(_))
    ));
    leases.grant("t", "w2", 4_000, LEASE_MS).unwrap();
    assert!(matches!(
        leases.complete("t", 1, lease.epoch, "w1"),
        Err(LeaseError::StaleEpoch { .. })
    ));
}

#[test]
fn a_repeated_outcome_is_a_duplicate() {
    let mut leases = table();
    let lease = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
    leases.complete("t", 1, lease.epoch, "w1").unwrap();
    let dup = leases.complete("t", 1, lease.epoch, "w1").unwrap_err();
    assert_eq!(dup, LeaseError::Duplicate("t".to_owned()));
    assert_eq!(dup.code(), "DUPLICATE");
    assert!(matches!(
        leases.fail("t", 1, lease.epoch, "w1", true),
        Err(LeaseError::Duplicate(_))
    ));
    assert!(matches!(
        leases.progress("t", 1, lease.epoch, "w1", 10),
        Err(LeaseError::Duplicate(_))
    ));
    assert_eq!(
        leases.grant("t", "w1", 10, LEASE_MS),
        Err(LeaseError::Finished("t".to_owned()))
    );
    // A failure, too, is reported once.
    let other = leases.grant("u", "w1", 0, LEASE_MS).unwrap();
    leases.fail("u", 1, other.epoch, "w1", true).unwrap();
    assert!(matches!(
        leases.fail("u", 1, other.epoch, "w1", true),
        Err(LeaseError::Duplicate(_))
    ));
}

#[test]
fn unknown_tasks_and_other_workers_are_refused() {
    let mut leases = table();
    let err = leases.complete("ghost", 1, 1, "w1").unwrap_err();
    assert_eq!(err, LeaseError::NotFound("ghost".to_owned()));
    assert_eq!(err.code(), "NOT_FOUND");
    let lease = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
    let theft = leases.complete("t", 1, lease.epoch, "w2").unwrap_err();
    assert!(matches!(theft, LeaseError::NotHolder { .. }));
    assert_eq!(theft.code(), "STALE_EPOCH");
    assert!(leases.is_active("t"), "a refused report changes nothing");
    leases.complete("t", 1, lease.epoch, "w1").unwrap();
}

#[test]
fn progress_extends_the_lease_and_expiry_waits_for_the_grace() {
    let mut leases = table();
    let lease = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
    assert_eq!(lease.deadline_ms, LEASE_MS);
    assert_eq!(leases.next_expiry_ms(), Some(LEASE_MS + GRACE_MS + 1));
    assert_eq!(
        leases.progress("t", 1, lease.epoch, "w1", 900),
        Ok(900 + LEASE_MS)
    );
    // Without the progress the lease would be reclaimed here.
    assert!(leases.expire(LEASE_MS + GRACE_MS + 1).is_empty());
    // Exactly at deadline + grace it is still honoured; one millisecond later it is not.
    assert!(leases.expire(900 + LEASE_MS + GRACE_MS).is_empty());
    assert!(leases.is_active("t"));
    let ended = leases.expire(900 + LEASE_MS + GRACE_MS + 1);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].lease.deadline_ms, 900 + LEASE_MS);
    assert!(!leases.is_active("t"));
    assert!(leases.expire(1_000_000).is_empty(), "reclaimed only once");
    assert_eq!(leases.next_expiry_ms(), None);
}

#[test]
fn progress_never_shortens_a_lease() {
    let mut leases = table();
    let lease = leases.grant("t", "w1", 5_000, LEASE_MS).unwrap();
    // A report stamped earlier than the grant (reordered) keeps the later deadline.
    assert_eq!(
        leases.progress("t", 1, lease.epoch, "w1", 0),
        Ok(5_000 + LEASE_MS)
    );
}

#[test]
fn a_result_within_the_grace_is_accepted() {
    let mut leases = table();
    let lease = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
    assert!(leases.expire(LEASE_MS + GRACE_MS / 2).is_empty());
    assert!(leases.complete("t", 1, lease.epoch, "w1").is_ok());
}

#[test]
fn max_attempts_lead_to_a_dead_letter() {
    let mut leases = table();
    let mut now = 0;
    let mut dispositions = Vec::new();
    for attempt in 1..=3 {
        let lease = leases
            .grant("t", &format!("w{attempt}"), now, LEASE_MS)
            .unwrap();
        assert_eq!(lease.attempt, attempt);
        now += LEASE_MS + GRACE_MS + 1;
        let ended = leases.expire(now);
        assert_eq!(ended.len(), 1);
        dispositions.push(ended[0].disposition);
    }
    assert_eq!(
        dispositions,
        [
            Disposition::Redispatch,
            Disposition::Redispatch,
            Disposition::DeadLetter
        ]
    );
    assert_eq!(
        leases.grant("t", "w4", now, LEASE_MS),
        Err(LeaseError::Finished("t".to_owned()))
    );
    let kinds: Vec<FailureKind> = leases
        .failures("t")
        .unwrap()
        .iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, [FailureKind::Lapsed; 3]);
}

#[test]
fn reported_failures_retry_dead_letter_or_fail() {
    let mut leases = table();
    // Retryable failures: retry until the last attempt, then dead letter.
    let mut outcomes = Vec::new();
    for attempt in 1..=3 {
        let lease = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
        outcomes.push(
            leases
                .fail("t", attempt, lease.epoch, "w1", true)
                .unwrap()
                .disposition,
        );
    }
    assert_eq!(
        outcomes,
        [
            Disposition::Redispatch,
            Disposition::Redispatch,
            Disposition::DeadLetter
        ]
    );
    // A non-retryable failure ends the task at once.
    let lease = leases.grant("u", "w1", 0, LEASE_MS).unwrap();
    let ended = leases.fail("u", 1, lease.epoch, "w1", false).unwrap();
    assert_eq!(ended.disposition, Disposition::Fail);
    assert!(matches!(
        leases.grant("u", "w1", 0, LEASE_MS),
        Err(LeaseError::Finished(_))
    ));
}

#[test]
fn adopted_tasks_continue_their_attempt_count() {
    let mut leases = table();
    leases.adopt("t", 2).unwrap();
    assert_eq!(
        leases.adopt("t", 0),
        Err(LeaseError::AlreadyLeased("t".to_owned()))
    );
    let lease = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
    assert_eq!(lease.attempt, 3);
    let ended = leases.worker_lost("w1");
    assert_eq!(ended[0].disposition, Disposition::DeadLetter);
    leases.adopt("u", 3).unwrap();
    assert_eq!(
        leases.grant("u", "w1", 0, LEASE_MS),
        Err(LeaseError::AttemptsExhausted {
            task_id: "u".to_owned(),
            max_attempts: 3
        })
    );
}

#[test]
fn worker_lost_reclaims_only_that_workers_leases_at_once() {
    let mut leases = table();
    let a = leases.grant("a", "w1", 0, LEASE_MS).unwrap();
    leases.grant("b", "w1", 0, LEASE_MS).unwrap();
    leases.grant("c", "w2", 0, LEASE_MS).unwrap();
    assert_eq!(leases.held_by("w1"), ["a", "b"]);
    let lost = leases.worker_lost("w1");
    let tasks: Vec<&str> = lost.iter().map(|e| e.lease.task_id.as_str()).collect();
    assert_eq!(tasks, ["a", "b"], "long before any deadline");
    assert!(lost
        .iter()
        .all(|e| e.disposition == Disposition::Redispatch));
    assert!(leases.held_by("w1").is_empty());
    assert!(leases.is_active("c"));
    assert_eq!(leases.active_count(), 1);
    assert!(matches!(
        leases.complete("a", 1, a.epoch, "w1"),
        Err(LeaseError::LeaseExpired(_))
    ));
    assert!(leases.worker_lost("w1").is_empty());
    assert_eq!(
        leases.failures("a").unwrap()[0].kind,
        FailureKind::WorkerLost
    );
    // The lapsed leases are not reclaimed a second time by expiry.
    assert_eq!(leases.expire(LEASE_MS + GRACE_MS + 1).len(), 1);
}

#[test]
fn a_failure_is_not_blamed_on_a_worker_when_the_task_failed_elsewhere_too() {
    let mut leases = table();
    // Task "bad" fails on w1: blamed on w1 while nobody else failed it.
    let l1 = leases.grant("bad", "w1", 0, LEASE_MS).unwrap();
    leases.fail("bad", 1, l1.epoch, "w1", true).unwrap();
    assert_eq!(leases.worker_failures("w1"), 1);
    // It fails on w2 too: the task is suspect, neither worker is blamed.
    let l2 = leases.grant("bad", "w2", 0, LEASE_MS).unwrap();
    leases.fail("bad", 2, l2.epoch, "w2", true).unwrap();
    assert_eq!(leases.worker_failures("w1"), 0);
    assert_eq!(leases.worker_failures("w2"), 0);
    // And on a third worker (a lapse this time): still nobody.
    leases.grant("bad", "w3", 0, LEASE_MS).unwrap();
    leases.expire(LEASE_MS + GRACE_MS + 1);
    assert_eq!(leases.worker_failures("w3"), 0);

    // w1 fails two different tasks that then succeed elsewhere: both count against w1.
    for task in ["x", "y"] {
        let lease = leases.grant(task, "w1", 10, LEASE_MS).unwrap();
        leases.fail(task, 1, lease.epoch, "w1", true).unwrap();
        let retry = leases.grant(task, "w2", 10, LEASE_MS).unwrap();
        leases.complete(task, 2, retry.epoch, "w2").unwrap();
    }
    // w4 loses a task twice in a row: both count against w4.
    for _ in 0..2 {
        leases.grant("z", "w4", 10, LEASE_MS).unwrap();
        leases.worker_lost("w4");
    }
    assert_eq!(
        leases.failure_counts(),
        BTreeMap::from([("w1".to_owned(), 2), ("w4".to_owned(), 2)])
    );
    // Forgetting a settled task keeps the blame already attributed.
    leases.forget("x").unwrap();
    assert_eq!(leases.worker_failures("w1"), 2);
    assert_eq!(leases.failures("x"), None);
}

#[test]
fn cancel_revokes_the_active_lease() {
    let mut leases = table();
    let lease = leases.grant("t", "w1", 0, LEASE_MS).unwrap();
    assert_eq!(
        leases.forget("t"),
        Err(LeaseError::AlreadyLeased("t".to_owned()))
    );
    assert_eq!(leases.cancel("t"), Ok(Some(lease.clone())));
    // An ended lease is not a lapsed one: STALE_EPOCH, not LEASE_EXPIRED (section 9.3).
    assert!(matches!(
        leases.complete("t", 1, lease.epoch, "w1"),
        Err(LeaseError::StaleEpoch { .. })
    ));
    assert!(leases.expire(u64::MAX).is_empty());
    assert!(matches!(
        leases.grant("t", "w1", 0, LEASE_MS),
        Err(LeaseError::Finished(_))
    ));
    assert!(matches!(leases.cancel("t"), Err(LeaseError::Finished(_))));
    // A task waiting for re-dispatch is cancelled without a lease to revoke.
    leases.grant("u", "w1", 0, LEASE_MS).unwrap();
    leases.worker_lost("w1");
    assert_eq!(leases.cancel("u"), Ok(None));
    assert_eq!(leases.worker_failures("w1"), 1);
    assert_eq!(
        leases.cancel("ghost"),
        Err(LeaseError::NotFound("ghost".to_owned()))
    );
}

#[derive(Debug, Clone)]
enum Op {
    Grant { task: u8, worker: u8 },
    Complete { task: u8 },
    Fail { task: u8, retryable: bool },
    Progress { task: u8 },
    Lost { worker: u8 },
    Tick { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u8..3).prop_map(|(task, worker)| Op::Grant { task, worker }),
        2 => (0u8..6).prop_map(|task| Op::Complete { task }),
        2 => (0u8..6, any::<bool>()).prop_map(|(task, retryable)| Op::Fail { task, retryable }),
        2 => (0u8..6).prop_map(|task| Op::Progress { task }),
        1 => (0u8..3).prop_map(|worker| Op::Lost { worker }),
        3 => (0u64..2_500).prop_map(|ms| Op::Tick { ms }),
    ]
}

proptest! {
    /// Over random histories: epochs strictly increase, attempts never exceed the maximum, at
    /// most one lease per task is active, and only the current lease's holder can report.
    #[test]
    fn epochs_increase_and_only_the_current_lease_reports(ops in prop::collection::vec(op(), 1..150)) {
        let mut leases = LeaseTable::new(LeaseConfig::default(), 7).unwrap();
        let mut last_epoch = 7u64;
        let mut now = 0u64;
        let mut issued: Vec<(String, u32, u64, String)> = Vec::new();
        for op in ops {
            match op {
                Op::Grant { task, worker } => {
                    let task = format!("t{task}");
                    let was_active = leases.is_active(&task);
                    match leases.grant(&task, &format!("w{worker}"), now, LEASE_MS) {
                        Ok(lease) => {
                            prop_assert!(!was_active);
                            prop_assert!(lease.epoch > last_epoch);
                            prop_assert!(lease.attempt >= 1 && lease.attempt <= 3);
                            last_epoch = lease.epoch;
                            issued.push((task, lease.attempt, lease.epoch, lease.worker_id));
                        }
                        Err(LeaseError::AlreadyLeased(_)) => prop_assert!(was_active),
                        Err(e) => prop_assert!(
                            matches!(e, LeaseError::Finished(_) | LeaseError::AttemptsExhausted { .. }),
                            "unexpected {e:?}"
                        ),
                    }
                }
                Op::Complete { task } | Op::Fail { task, .. } | Op::Progress { task } => {
                    let task = format!("t{task}");
                    // Report every lease ever issued for the task: at most the current one may
                    // be accepted, and only when it is active.
                    let mut accepted = 0;
                    for (t, attempt, epoch, worker) in issued.iter().filter(|i| i.0 == task) {
                        let current = leases.lease(t).is_some_and(|l| l.epoch == *epoch);
                        let active = leases.is_active(t);
                        let result = match op {
                            Op::Complete { .. } => leases.complete(t, *attempt, *epoch, worker).map(|_| ()),
                            Op::Fail { retryable, .. } => {
                                leases.fail(t, *attempt, *epoch, worker, retryable).map(|_| ())
                            }
                            _ => leases.progress(t, *attempt, *epoch, worker, now).map(|_| ()),
                        };
                        match result {
                            Ok(()) => {
                                prop_assert!(current && active);
                                accepted += 1;
                            }
                            Err(LeaseError::StaleEpoch { .. }) => prop_assert!(!current),
                            Err(LeaseError::LeaseExpired(_) | LeaseError::Duplicate(_)) => {
                                prop_assert!(current && !active);
                            }
                            Err(e) => prop_assert!(false, "unexpected {e:?}"),
                        }
                    }
                    prop_assert!(accepted <= 1);
                }
                Op::Lost { worker } => {
                    let worker = format!("w{worker}");
                    let held = leases.held_by(&worker);
                    let ended = leases.worker_lost(&worker);
                    prop_assert_eq!(ended.len(), held.len());
                    prop_assert!(leases.held_by(&worker).is_empty());
                }
                Op::Tick { ms } => {
                    now += ms;
                    for ended in leases.expire(now) {
                        prop_assert!(ended.lease.deadline_ms + GRACE_MS < now);
                        let dead = ended.disposition == Disposition::DeadLetter;
                        prop_assert_eq!(dead, ended.lease.attempt == 3);
                    }
                }
            }
            prop_assert_eq!(leases.last_epoch(), last_epoch);
        }
    }
}

//! The memory store's sliding logs, reservations and settlements (issue 12).

use nonzero_ext::nonzero;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::algorithm::{Algorithm, Quota};
use crate::clock::ManualClock;
use crate::policy::{Limits, TierSpec};

use super::tests::{admitted_by_threads, store, START};

fn tier(spec: TierSpec) -> Limits {
    Limits::builder().tier("anonymous", spec).build().unwrap()
}

fn remaining<C: Clock>(store: &MemoryStore<C>, key: &Key, tier: &Tier) -> Vec<u64> {
    store.decide(key, tier, Charge::new(0)).policies().iter().map(|p| p.remaining).collect()
}

#[test]
fn many_threads_on_one_log_admit_exactly_the_burst() {
    let limits = Arc::new(tier(
        TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(1_000u32)))
            .daily(5_000)
            .algorithm(Algorithm::SlidingLog),
    ));
    let (store, _clock) = store();
    let store = Arc::new(store);
    let admitted = admitted_by_threads(&store, &limits, 2_000);
    assert_eq!(admitted, 1_000, "the clock is frozen: exactly the burst");
}

#[test]
fn idle_logs_are_swept() {
    let limits = tier(TierSpec::new(Quota::per_second(nonzero!(10u32))).algorithm(Algorithm::SlidingLog));
    let clock = ManualClock::new(START);
    let store = MemoryStore::with_clock(clock.clone()).shards(1);
    for i in 0..2_000 {
        store.decide(&Key::new(format!("k{i}")), limits.default_tier(), Charge::new(1));
    }
    assert_eq!(store.len(), 2_000);
    clock.advance(Duration::from_secs(2)); // every entry left its window of 1 s
    for i in 0..2_100 {
        store.decide(&Key::new(format!("fresh{i}")), limits.default_tier(), Charge::new(1));
    }
    assert!(store.len() < 2_200, "the idle logs were dropped: {}", store.len());
}

/// A reload that makes a bucket a log (or a log a bucket) carries the tokens used over.
#[test]
fn a_reload_between_a_bucket_and_a_log_carries_the_tokens_used() {
    let spec = |algorithm| {
        TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))).algorithm(algorithm)
    };
    let bucket = tier(spec(Algorithm::TokenBucket));
    let (store, clock) = store();
    let key = Key::new("k");
    assert!(store.decide(&key, bucket.default_tier(), Charge::new(4)).is_admitted());
    let mut log = tier(spec(Algorithm::SlidingLog));
    log.continue_from(&bucket, Nanos::ZERO);
    assert_eq!(remaining(&store, &key, log.default_tier()), [6]);
    assert!(store.decide(&key, log.default_tier(), Charge::new(6)).is_admitted());
    assert!(!store.decide(&key, log.default_tier(), Charge::new(1)).is_admitted());
    clock.advance(Duration::from_secs(5));
    let mut back = tier(spec(Algorithm::TokenBucket));
    back.continue_from(&log, Nanos::ZERO);
    assert_eq!(remaining(&store, &key, back.default_tier()), [0], "10 used in the last 10 s");
    clock.advance(Duration::from_secs(1));
    assert_eq!(remaining(&store, &key, back.default_tier()), [1]);
}

/// A token bucket refunds exactly while no earlier refund slid the client's bucket; after
/// one did, older charges stand (conservative), newer ones are refunded again.
#[test]
fn refunds_after_a_slide_leave_older_charges_alone() {
    let limits = tier(TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))));
    let tier = limits.default_tier();
    let (store, clock) = store();
    let key = Key::new("k");
    let first = store.decide(&key, tier, Charge::new(3));
    let second = store.decide(&key, tier, Charge::new(3));
    assert_eq!(remaining(&store, &key, tier), [4]);
    // The first settles while the second is charged after it: the second's slot slides back.
    let settled = store.settle_now(&key, tier, first.settlement(0));
    assert_eq!(settled.policies()[0].remaining, 7);
    // The second's receipt no longer says where its slot ends: its refund is left alone.
    clock.advance(Duration::from_millis(1));
    let settled = store.settle_now(&key, tier, second.settlement(0));
    assert_eq!(settled.policies()[0].remaining, 7);
    // A charge made after the slide is refunded again.
    clock.advance(Duration::from_millis(1));
    let third = store.decide(&key, tier, Charge::new(2));
    assert_eq!(store.settle_now(&key, tier, third.settlement(1)).policies()[0].remaining, 6);
    // An extra charge always applies, into debt if need be.
    let owed = store.settle_now(&key, tier, third.settlement(20));
    assert_eq!(owed.policies()[0].remaining, 0);
    assert_eq!(owed.charged(), 20);
}

/// A tier of two policies holds a request until both have room, and charges both at that
/// instant; beyond the delay nothing is charged.
#[test]
fn two_policies_reserve_at_one_instant() {
    let limits = tier(
        TierSpec::new(Quota::per_second(nonzero!(5u32)).allow_burst(nonzero!(2u32)))
            .daily(4)
            .max_delay(Nanos::from_millis(1_000)),
    );
    let tier = limits.default_tier();
    let (store, _clock) = store();
    let key = Key::new("k");
    let waits: Vec<u64> = (0..4)
        .map(|_| store.decide(&key, tier, Charge::new(1)))
        .map(|d| {
            assert!(d.is_admitted());
            d.wait().as_nanos() / 1_000_000
        })
        .collect();
    assert_eq!(waits, [0, 0, 200, 400]);
    // The daily quota (4) is spent: its next token is 6 hours away, far beyond the delay.
    let refused = store.decide(&key, tier, Charge::new(1));
    assert_eq!(refused.verdict(), Verdict::Rejected);
    assert!(refused.retry_after().unwrap() > Nanos::from_secs(3_600));
    assert_eq!(remaining(&store, &key, tier), [0, 0]);
}

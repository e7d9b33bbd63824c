//! Issue 12 on a real Redis: the sliding log, requests held for their tokens, and costs settled
//! from the answer decide exactly as the memory store does at the same instant; a held request
//! that goes away gives its reservation back; two instances share one exact log. Needs the
//! Redis at 127.0.0.1:6379 (skipped without it, failing under `CI=true`).
#![cfg(feature = "redis")]

#[path = "redis_support.rs"]
mod support;

use nonzero_ext::nonzero;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tollgate::algorithm::{Algorithm, Quota};
use tollgate::clock::{ManualClock, Nanos};
use tollgate::key::Key;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, Decision, MemoryStore, OnError, Receipt, RedisStore, Store, Verdict};

fn limits(spec: TierSpec) -> Limits {
    Limits::builder().tier("anonymous", spec).build().unwrap()
}

fn store(prefix: &str) -> RedisStore {
    // No over-limit cache: every decision here must come from Redis.
    RedisStore::builder(SHARED_URL)
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
        .on_error(OnError::Deny) // a slow Redis is an error, never a fallback's decision
        .blocked_keys(0)
        .build()
        .unwrap()
}

/// The memory store's decision as Redis gives it: waits rounded up to whole microseconds (the
/// script's unit), receipts left out (each store writes its own).
fn comparable(d: Decision) -> Decision {
    let micros = |n: Nanos| Nanos::from_micros(n.as_micros_ceil());
    let mut out =
        Decision::new(d.verdict(), d.now(), d.fraction_before(), d.charged()).held(micros(d.wait()));
    for p in d.policies() {
        out = out.with(tollgate::store::PolicyState {
            reset_after: micros(p.reset_after),
            retry_after: micros(p.retry_after),
            next_after: micros(p.next_after),
            ..*p
        });
    }
    out
}

fn redis_side(d: Decision) -> Decision {
    comparable(d.with_receipt(Receipt::default()))
}

/// One step of a comparison: a check, or a settlement of the n-th admission.
#[derive(Debug, Clone, Copy)]
enum Step {
    Check(Charge),
    /// Settle the admission made by step `n` at this actual cost.
    Settle(usize, u64),
    /// Let real time pass in Redis.
    Sleep(u64),
}

/// Runs `steps` through Redis and, at the instant Redis decided, through a memory store: every
/// decision and every settlement must be the same.
async fn compare(spec: TierSpec, steps: &[Step], test: &str) -> Vec<Decision> {
    let limits = limits(spec);
    let tier = limits.default_tier();
    let redis = store(&unique_prefix(test));
    let clock = ManualClock::new(Duration::ZERO);
    let memory = MemoryStore::with_clock(clock.clone());
    let key = Key::new("compare-client");
    let mut made: Vec<(Decision, Decision)> = Vec::new();
    let mut seen = Vec::new();
    for (i, &step) in steps.iter().enumerate() {
        let (from_redis, from_memory) = match step {
            Step::Check(charge) => {
                let from_redis = redis.check(&key, tier, charge).await.unwrap();
                clock.set(from_redis.now());
                (from_redis, memory.decide(&key, tier, charge))
            }
            Step::Settle(n, actual) => {
                let (r, m) = made[n];
                let from_redis = redis.settle(&key, tier, r.settlement(actual)).await.unwrap();
                clock.set(from_redis.now());
                // The memory store's receipt, charged at the same (Redis) instant.
                (from_redis, memory.settle_now(&key, tier, m.settlement(actual)))
            }
            Step::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                made.push(made.last().copied().unwrap_or_else(|| {
                    let d = Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, 0);
                    (d, d)
                }));
                continue;
            }
        };
        assert_eq!(redis_side(from_redis), comparable(from_memory), "step {i}: {step:?}");
        made.push((from_redis, from_memory));
        seen.push(from_redis);
    }
    seen
}

fn checks(costs: &[u64]) -> Vec<Step> {
    costs.iter().map(|&c| Step::Check(Charge::new(c))).collect()
}

/// The sorted-set log decides as the in-process log: burst, exceeds, a daily log too, and the
/// window edge where entries leave (real time passes in Redis between the steps).
#[tokio::test]
async fn the_sliding_log_decides_as_in_memory() {
    if shared_redis().is_none() {
        return;
    }
    // 10 a minute, burst 10, plus 12 a day: the daily log bites first.
    let spec = TierSpec::new(Quota::per_minute(nonzero!(10u32))).daily(12).algorithm(Algorithm::SlidingLog);
    let seen = compare(spec, &checks(&[0, 3, 1, 0, 11, 4, 5, 2, 1, 1, 0]), "log-compare").await;
    for outcome in [Verdict::Admitted, Verdict::Rejected, Verdict::Exceeds] {
        assert!(seen.iter().any(|d| d.verdict() == outcome), "{outcome:?} never happened");
    }
    // 50 a second, burst 5: a window of 100 ms, crossed by real time between the steps.
    let spec = TierSpec::new(Quota::per_second(nonzero!(50u32)).allow_burst(nonzero!(5u32)))
        .algorithm(Algorithm::SlidingLog);
    let mut steps = Vec::new();
    for i in 0..30 {
        steps.push(Step::Check(Charge::new(1 + i % 3)));
        steps.push(Step::Sleep(9));
    }
    // (Whether a step is refused depends on how long the sleeps really took; that each is
    // decided as in memory does not.)
    let seen = compare(spec, &steps, "log-edge").await;
    // Without entries leaving, at most the burst (5) could ever be admitted; the steps span at
    // least 270 ms of Redis time, so more than that must have been.
    let span = seen.last().unwrap().now() - seen[0].now();
    assert!(span >= Nanos::from_millis(260), "the steps spanned {span:?}");
    let admitted: u64 = seen.iter().filter(|d| d.is_admitted()).map(|d| d.charged()).sum();
    assert!(admitted > 5, "entries left the window: {admitted} admitted");
}

/// Requests held for their tokens: the same waits, in order, on Redis (the script reserves)
/// as in memory, for the token bucket, the log, and a tier of two policies. (2 a second,
/// burst 2, held up to 2 s: a refusal and the waits asserted below need the checks to take
/// less than 500 ms of Redis time in all, a wide margin for a handful of round trips.)
#[tokio::test]
async fn holds_reserve_in_order_as_in_memory() {
    if shared_redis().is_none() {
        return;
    }
    let delay = Nanos::from_millis(2_000);
    let quota = Quota::per_second(nonzero!(2u32)).allow_burst(nonzero!(2u32));
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingLog] {
        let spec = TierSpec::new(quota).algorithm(algorithm).max_delay(delay);
        let seen = compare(spec, &checks(&[1, 1, 1, 1, 1, 1, 1, 1, 2]), "hold-compare").await;
        let admitted: Vec<&Decision> = seen.iter().filter(|d| d.is_admitted()).collect();
        let released: Vec<Nanos> = admitted.iter().map(|d| d.now() + d.wait()).collect();
        assert!(released.windows(2).all(|w| w[0] <= w[1]), "{algorithm:?}: released in order: {released:?}");
        assert!(admitted.iter().all(|d| d.wait() <= delay), "{algorithm:?}");
        assert!(admitted.len() >= 6, "{algorithm:?}: {} held or admitted", admitted.len());
        let refused = seen.iter().find(|d| !d.is_admitted()).expect("a wait beyond the delay");
        assert!(refused.retry_after().unwrap() > delay);
    }
    // Two policies: held until both have room (the daily one never binds here).
    let spec = TierSpec::new(quota).daily(1_000).max_delay(delay);
    let seen = compare(spec, &checks(&[1, 1, 1, 1]), "hold-two").await;
    assert!(seen[2].wait() > Nanos::ZERO && seen[3].wait() > seen[2].wait());
}

/// Settlements: a refund, an extra charge into debt, a held request given back, each the same
/// on Redis (one script call) as in memory.
#[tokio::test]
async fn settlements_give_back_and_charge_as_in_memory() {
    if shared_redis().is_none() {
        return;
    }
    let quota = Quota::per_second(nonzero!(1u32)).allow_burst(nonzero!(10u32));
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let spec = TierSpec::new(quota).algorithm(algorithm).daily(100);
        let steps = [
            Step::Check(Charge::new(5)),
            Step::Settle(0, 2), // cost 2: 3 back
            Step::Check(Charge::new(4)),
            Step::Settle(2, 12), // cost 12: 8 more, into debt
            Step::Check(Charge::new(1)),
        ];
        let seen = compare(spec, &steps, "settle-compare").await;
        assert_eq!(seen[1].policies()[0].remaining, 8, "{algorithm:?}");
        assert_eq!(seen[3].policies()[0].remaining, 0, "{algorithm:?}");
        assert_eq!(seen[4].verdict(), Verdict::Rejected, "{algorithm:?}: still in debt");
    }
    // A whole refund (a login that succeeded, a cost of 0) leaves nothing counted.
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let steps = [Step::Check(Charge::new(5)), Step::Settle(0, 0), Step::Check(Charge::new(10))];
        let seen = compare(TierSpec::new(quota).algorithm(algorithm), &steps, "refund-all").await;
        assert_eq!(seen[1].policies()[0].remaining, 10, "{algorithm:?}: all 5 back");
        assert!(seen[2].is_admitted(), "{algorithm:?}: the whole burst again");
    }
    // A counter's debt is held to what its count can hold (15 at a burst of 10) on both.
    let spec = TierSpec::new(quota).algorithm(Algorithm::SlidingWindow);
    let steps = [Step::Check(Charge::new(5)), Step::Settle(0, 40), Step::Check(Charge::new(1))];
    let seen = compare(spec, &steps, "counter-debt").await;
    assert_eq!(seen[2].verdict(), Verdict::Rejected, "in debt");
    // A held request that goes away: its place is given back. (5 a second, burst 2: the
    // token bucket holds them 200 and 400 ms, the log 400 and 400 ms.)
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingLog] {
        let spec = TierSpec::new(Quota::per_second(nonzero!(5u32)).allow_burst(nonzero!(2u32)))
            .algorithm(algorithm)
            .max_delay(Nanos::from_millis(1_000));
        let steps = [
            Step::Check(Charge::new(1)),
            Step::Check(Charge::new(1)),
            Step::Check(Charge::new(1)), // held
            Step::Check(Charge::new(1)), // held behind it
            Step::Settle(2, 0),          // the first held one goes away
            Step::Check(Charge::new(1)), // takes its place: with the one behind, not after it
        ];
        let seen = compare(spec, &steps, "release-compare").await;
        let (behind, after) = (seen[3], seen[5]);
        let released = |d: Decision| d.now() + d.wait();
        assert!(after.is_admitted());
        assert!(
            released(after) < released(behind) + Nanos::from_millis(100),
            "{algorithm:?}: {behind:?} then {after:?}"
        );
    }
}

/// Two instances on one log: exactly the burst, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_exact_log() {
    if shared_redis().is_none() {
        return;
    }
    let prefix = unique_prefix("log-two");
    let limits =
        Arc::new(limits(TierSpec::new(Quota::per_hour(nonzero!(20u32))).algorithm(Algorithm::SlidingLog)));
    let stores = [store(&prefix), store(&prefix)];
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (store, limits) = (stores[i % 2].clone(), Arc::clone(&limits));
        tasks.push(tokio::spawn(async move {
            store.check(&Key::new("shared"), limits.default_tier(), Charge::new(1)).await.unwrap()
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap().is_admitted());
    }
    assert_eq!(admitted, 20);
}

// -------------------------------------------------------------------------------------------
// The sliding-window counter's script, on a manual clock.

/// algorithms.lua on a manual clock: the time comes from the script's last two arguments
/// (seconds, microseconds) instead of Redis' `TIME`, and keys live an hour of real time instead
/// of until their state is idle on the manual clock (which may run slower than the real one:
/// a key that expired in real time between two steps a microsecond apart would read as
/// fresh). Keeping an idle state longer changes no decision, as the memory store shows: an
/// idle state reads as a fresh one; when keys expire is tested on the real clock elsewhere.
fn algorithms_on_a_manual_clock() -> String {
    const TIME: &str = "local time = redis.call('TIME')";
    const TTL: &str = "return max(math.ceil(micros / 1000), 1)";
    let algorithms = include_str!("../src/store/redis/algorithms.lua");
    assert_eq!(algorithms.matches(TIME).count(), 1, "algorithms.lua reads TIME once, here");
    assert_eq!(algorithms.matches(TTL).count(), 1, "algorithms.lua sets every TTL here");
    algorithms.replace(TIME, "local time = { ARGV[#ARGV - 1], ARGV[#ARGV] }").replace(TTL, "return 3600000")
}

/// check.lua as the store runs it, on a manual clock: the same arithmetic, driven at chosen
/// instants.
fn script_on_a_manual_clock() -> redis::Script {
    redis::Script::new(&format!(
        "{}{}",
        algorithms_on_a_manual_clock(),
        include_str!("../src/store/redis/check.lua")
    ))
}

/// One request of cost 1 through the script at `now` (whole microseconds), on a counter:
/// admitted, and the policy's remaining, reset_after, retry_after and next_after
/// (microseconds).
fn script_check(
    conn: &mut redis::Connection,
    script: &redis::Script,
    key: &str,
    quota: &Quota,
    now: Nanos,
) -> (bool, [u64; 4]) {
    script_check_with(conn, script, key, 1, quota, now)
}

/// The same, with the algorithm's number in the script (0 GCRA, 1 counter, 2 log).
fn script_check_with(
    conn: &mut redis::Connection,
    script: &redis::Script,
    key: &str,
    algorithm: u8,
    quota: &Quota,
    now: Nanos,
) -> (bool, [u64; 4]) {
    let (outcome, standing) = script_decide(conn, script, key, algorithm, quota, now, 1);
    (outcome == 0, standing)
}

/// A request of `cost` through the script at `now`: the outcome (0 admitted, 1 refused, 2
/// never at this tier) and the policy's remaining, reset_after, retry_after and next_after
/// (microseconds).
fn script_decide(
    conn: &mut redis::Connection,
    script: &redis::Script,
    key: &str,
    algorithm: u8,
    quota: &Quota,
    now: Nanos,
    cost: u64,
) -> (i64, [u64; 4]) {
    let micros = now.as_nanos() / 1_000;
    let reply: Vec<i64> = script
        .key(key)
        .arg(cost)
        .arg(0) // reduced_below
        .arg(cost) // reduced_cost
        .arg(0) // max_wait
        .arg(algorithm)
        .arg(quota.emission().as_micros_ceil())
        .arg(quota.burst())
        .arg(0)
        .arg(micros / 1_000_000)
        .arg(micros % 1_000_000)
        .invoke(conn)
        .unwrap();
    let p = |i: usize| u64::try_from(reply[5 + i]).unwrap();
    (reply[0], [p(0), p(1), p(2), p(3)])
}

/// The same request through the memory store at the same instant, in the script's units.
fn memory_check(
    memory: &MemoryStore<ManualClock>,
    clock: &ManualClock,
    limits: &Limits,
    now: Nanos,
) -> (bool, [u64; 4]) {
    let (outcome, standing) = memory_decide(memory, clock, limits, now, 1);
    (outcome == 0, standing)
}

fn memory_decide(
    memory: &MemoryStore<ManualClock>,
    clock: &ManualClock,
    limits: &Limits,
    now: Nanos,
    cost: u64,
) -> (i64, [u64; 4]) {
    clock.set(now);
    let d = memory.decide(&Key::new("counter-client"), limits.default_tier(), Charge::new(cost));
    let p = d.policies()[0];
    let micros = |n: Nanos| n.as_micros_ceil();
    let outcome = match d.verdict() {
        Verdict::Admitted => 0,
        Verdict::Rejected => 1,
        Verdict::Exceeds => 2,
    };
    (outcome, [p.remaining, micros(p.reset_after), micros(p.retry_after), micros(p.next_after)])
}

/// Random traces (gaps from 0 to 2 emission intervals, costs from 0 to burst + 1) through each
/// algorithm's script on a manual clock and through the memory store at the same instants:
/// every outcome and every figure of the standing agree.
#[test]
fn every_script_decides_random_traces_as_in_memory() {
    let Some(mut conn) = shared_redis() else { return };
    let script = script_on_a_manual_clock();
    let prefix = unique_prefix("random-traces");
    let mut rng = fastrand::Rng::with_seed(2026);
    let algorithms =
        [(0u8, Algorithm::TokenBucket), (1, Algorithm::SlidingWindow), (2, Algorithm::SlidingLog)];
    let mut outcomes = [0usize; 3];
    for (run, (rate, burst)) in [(10u64, 1u64), (10, 3), (8, 10), (50, 40)].into_iter().enumerate() {
        let quota = Quota::new(rate, Nanos::SECOND, burst).unwrap();
        let t = quota.emission().as_nanos() / 1_000;
        for (number, algorithm) in algorithms {
            let limits = limits(TierSpec::new(quota).algorithm(algorithm));
            let clock = ManualClock::new(Duration::ZERO);
            let memory = MemoryStore::with_clock(clock.clone());
            let key = format!("{prefix}:{run}:{number}");
            let mut now = Nanos::from_secs(1_800_000_000) + Nanos::from_micros(rng.u64(0..t));
            for i in 0..150 {
                now += Nanos::from_micros(rng.u64(0..2 * t));
                let cost = rng.u64(0..burst + 2);
                let from_script = script_decide(&mut conn, &script, &key, number, &quota, now, cost);
                let from_memory = memory_decide(&memory, &clock, &limits, now, cost);
                assert_eq!(
                    from_script, from_memory,
                    "{algorithm:?}, {rate}/s, burst {burst}: step {i}, cost {cost}"
                );
                outcomes[from_script.0 as usize] += 1;
            }
        }
    }
    assert!(outcomes.iter().all(|&n| n > 50), "admitted, refused, never: {outcomes:?}");
}

/// The counter's script decides as the memory store does, request for request, and never
/// refuses a client at exactly the rate: one emission interval apart, from several phases
/// (the defect of issue 12 refused 1 in `burst` of them), then a random trace at twice the
/// rate. Windows whose emission interval is a whole number of microseconds (the script's unit),
/// so that the two agree to the last figure.
#[test]
fn the_counter_script_admits_a_client_at_exactly_the_rate_as_in_memory() {
    let Some(mut conn) = shared_redis() else { return };
    let script = script_on_a_manual_clock();
    let prefix = unique_prefix("counter-rate");
    let start = Nanos::from_secs(1_800_000_000);
    let mut rng = fastrand::Rng::with_seed(12);
    let mut run = 0;
    for (rate, burst) in [(10u64, 1u64), (10, 2), (10, 10), (8, 37), (50, 100)] {
        let quota = Quota::new(rate, Nanos::SECOND, burst).unwrap();
        let t = quota.emission();
        assert_eq!(t.as_nanos() % 1_000, 0, "a whole number of microseconds");
        let w = quota.refill_time();
        let limits = limits(TierSpec::new(quota).algorithm(Algorithm::SlidingWindow));
        for phase in [Nanos::ZERO, Nanos::from_micros(1), t / 3, t - Nanos::from_micros(1), w - t] {
            // Whole microseconds, as Redis' clock.
            let phase = Nanos::from_micros(phase.as_nanos() / 1_000);
            // Three windows and more at the rate, then 60 at random (light on a shared Redis).
            let paced: Vec<Nanos> = (0..3 * burst + 10).map(|i| start + phase + t * i).collect();
            let random: Vec<Nanos> = (0..60)
                .scan(*paced.last().unwrap(), |at, _| {
                    *at += Nanos::from_micros(rng.u64(0..t.as_nanos() / 1_000));
                    Some(*at)
                })
                .collect();
            run += 1;
            let key = format!("{prefix}:{run}");
            let clock = ManualClock::new(Duration::ZERO);
            let memory = MemoryStore::with_clock(clock.clone());
            for (i, &now) in paced.iter().chain(&random).enumerate() {
                let from_script = script_check(&mut conn, &script, &key, &quota, now);
                let from_memory = memory_check(&memory, &clock, &limits, now);
                assert_eq!(from_script, from_memory, "{rate}/s, burst {burst}, phase {phase:?}: request {i}");
                if i < paced.len() {
                    assert!(
                        from_script.0,
                        "{rate}/s, burst {burst}, phase {phase:?}: paced request {i} refused"
                    );
                }
            }
        }
    }
}

/// A rate whose emission interval is not a whole number of microseconds (3 a second): the
/// script rounds it up to 333 334 µs, never faster than configured, and a client keeping to
/// that is never refused.
#[test]
fn the_counter_script_never_refuses_a_paced_client_when_the_rate_rounds() {
    let Some(mut conn) = shared_redis() else { return };
    let script = script_on_a_manual_clock();
    let key = unique_prefix("counter-round");
    let quota = Quota::new(3, Nanos::SECOND, 3).unwrap();
    let t = Nanos::from_micros(quota.emission().as_micros_ceil());
    let start = Nanos::from_secs(1_800_000_000) + Nanos::from_micros(123_457);
    for i in 0..200 {
        let (admitted, _) = script_check(&mut conn, &script, &key, &quota, start + t * i);
        assert!(admitted, "request {i} refused");
    }
}

/// The log's script at its window edge, to the microsecond (60 a minute, burst 3: w = 3 s):
/// admissions at 0, 1 and 2 s; one microsecond before the first leaves, refused and told to
/// wait exactly that microsecond; at the edge, admitted. Request for request as in memory.
#[test]
fn the_log_script_is_exact_at_the_window_edge() {
    let Some(mut conn) = shared_redis() else { return };
    let script = script_on_a_manual_clock();
    let key = unique_prefix("log-edge");
    let quota = Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(3u32));
    let limits = limits(TierSpec::new(quota).algorithm(Algorithm::SlidingLog));
    let clock = ManualClock::new(Duration::ZERO);
    let memory = MemoryStore::with_clock(clock.clone());
    let start = Nanos::from_secs(1_800_000_000) + Nanos::from_micros(777);
    let us = Nanos::from_micros(1);
    let edge = start + Nanos::from_secs(3);
    let steps = [start, start + Nanos::SECOND, start + Nanos::from_secs(2), edge - us, edge, edge];
    let mut seen = Vec::new();
    for (i, &now) in steps.iter().enumerate() {
        let from_script = script_check_with(&mut conn, &script, &key, 2, &quota, now);
        assert_eq!(from_script, memory_check(&memory, &clock, &limits, now), "step {i}");
        seen.push(from_script);
    }
    let admitted: Vec<bool> = seen.iter().map(|s| s.0).collect();
    assert_eq!(admitted, [true, true, true, false, true, false]);
    assert_eq!(seen[3].1[2], 1, "Retry-After: the one microsecond until the first leaves");
    assert_eq!(seen[4].1[3], 1_000_000, "t: until the entry at 1 s leaves");
}

/// settle.lua as the store runs it, on a manual clock.
fn settle_script_on_a_manual_clock() -> redis::Script {
    redis::Script::new(&format!(
        "{}{}",
        algorithms_on_a_manual_clock(),
        include_str!("../src/store/redis/settle.lua")
    ))
}

/// Random traces of admissions and settlements (refunds, a whole refund, extra charges into
/// debt, in any order and after any delay) through each algorithm's scripts on a manual clock
/// and through the memory store at the same instants: every decision and every standing after a
/// settlement agree.
#[test]
fn every_script_settles_random_traces_as_in_memory() {
    let Some(mut conn) = shared_redis() else { return };
    let check = script_on_a_manual_clock();
    let settle = settle_script_on_a_manual_clock();
    let prefix = unique_prefix("random-settle");
    let mut rng = fastrand::Rng::with_seed(12_2026);
    let algorithms =
        [(0u8, Algorithm::TokenBucket), (1, Algorithm::SlidingWindow), (2, Algorithm::SlidingLog)];
    let mut settled = 0;
    for (run, (rate, burst)) in [(10u64, 2u64), (8, 10), (50, 40)].into_iter().enumerate() {
        let quota = Quota::new(rate, Nanos::SECOND, burst).unwrap();
        let t = quota.emission().as_nanos() / 1_000;
        for (number, algorithm) in algorithms {
            let limits = limits(TierSpec::new(quota).algorithm(algorithm));
            let tier = limits.default_tier();
            let clock = ManualClock::new(Duration::ZERO);
            let memory = MemoryStore::with_clock(clock.clone());
            let key = format!("{prefix}:{run}:{number}");
            let client = Key::new("counter-client");
            let mut now = Nanos::from_secs(1_800_000_000) + Nanos::from_micros(rng.u64(0..t));
            // (script receipt, charged at in µs, the memory store's decision)
            let mut open: Vec<(i64, u64, Decision)> = Vec::new();
            for i in 0..200 {
                now += Nanos::from_micros(rng.u64(0..2 * t));
                let micros = now.as_nanos() / 1_000;
                if !open.is_empty() && rng.u8(0..3) == 0 {
                    let (receipt, charged_at, decision) = open.swap_remove(rng.usize(0..open.len()));
                    let charged = decision.charged();
                    let actual = match rng.u8(0..3) {
                        0 => 0,
                        1 => rng.u64(0..charged),
                        _ => charged + 1 + rng.u64(0..2 * burst),
                    };
                    let reply: Vec<i64> = settle
                        .key(&key)
                        .arg(charged)
                        .arg(actual)
                        .arg(charged_at)
                        .arg(number)
                        .arg(quota.emission().as_micros_ceil())
                        .arg(burst)
                        .arg(receipt)
                        .arg(micros / 1_000_000)
                        .arg(micros % 1_000_000)
                        .invoke(&mut conn)
                        .unwrap();
                    let from_script = [reply[5], reply[6], reply[8]].map(|v| u64::try_from(v).unwrap());
                    clock.set(now);
                    let p = memory.settle_now(&client, tier, decision.settlement(actual)).policies()[0];
                    let from_memory =
                        [p.remaining, p.reset_after.as_micros_ceil(), p.next_after.as_micros_ceil()];
                    assert_eq!(
                        from_script, from_memory,
                        "{algorithm:?}, {rate}/s, burst {burst}: step {i}, settling {charged} at {actual}"
                    );
                    settled += 1;
                    continue;
                }
                let cost = rng.u64(1..burst + 1);
                let reply: Vec<i64> = check
                    .key(&key)
                    .arg(cost)
                    .arg(0)
                    .arg(cost)
                    .arg(0)
                    .arg(number)
                    .arg(quota.emission().as_micros_ceil())
                    .arg(burst)
                    .arg(0)
                    .arg(micros / 1_000_000)
                    .arg(micros % 1_000_000)
                    .invoke(&mut conn)
                    .unwrap();
                clock.set(now);
                let decision = memory.decide(&client, tier, Charge::new(cost));
                let p = decision.policies()[0];
                let from_script = [reply[5], reply[6], reply[7], reply[8]].map(|v| u64::try_from(v).unwrap());
                let micros_of = |n: Nanos| n.as_micros_ceil();
                let from_memory = [
                    p.remaining,
                    micros_of(p.reset_after),
                    micros_of(p.retry_after),
                    micros_of(p.next_after),
                ];
                assert_eq!(reply[0] == 0, decision.is_admitted(), "{algorithm:?}: step {i}, cost {cost}");
                assert_eq!(
                    from_script, from_memory,
                    "{algorithm:?}, {rate}/s, burst {burst}: step {i}, cost {cost}"
                );
                if decision.is_admitted() {
                    open.push((reply[11], micros, decision));
                }
            }
        }
    }
    assert!(settled > 300, "{settled} settlements");
}

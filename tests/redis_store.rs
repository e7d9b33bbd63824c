//! The Redis store against a real Redis: exact limits across instances, the same decisions as
//! the memory store, no charge on rejection, expiring keys, and an over-limit cache that spares
//! Redis. Needs the Redis at 127.0.0.1:6379 (skipped without it, failing under `CI=true`) and,
//! for the command-count test, `redis-server` to start a private one.
#![cfg(feature = "redis")]

#[path = "redis_support.rs"]
mod support;

use nonzero_ext::nonzero;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;
use tollgate::algorithm::{Algorithm, Quota};
use tollgate::clock::{ManualClock, Nanos};
use tollgate::key::Key;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, Decision, MemoryStore, OnError, RedisStore, Store, Verdict};

fn limits(spec: TierSpec) -> Limits {
    Limits::builder().tier("anonymous", spec).build().unwrap()
}

fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url).prefix(prefix).timeout(Duration::from_secs(2)).build().unwrap()
}

/// A store whose every decision comes from Redis, to compare with the memory store: no
/// over-limit cache, and a Redis that is slow to answer (a loaded machine) is an error, never
/// an in-process fallback's decision (the default `on_error = "local"` with a 50 ms timeout
/// made the comparison fail on a busy machine with a decision Redis never made).
fn comparing_store(test: &str) -> RedisStore {
    RedisStore::builder(SHARED_URL)
        .prefix(unique_prefix(test))
        .blocked_keys(0)
        .timeout(Duration::from_secs(2))
        .on_error(OnError::Deny)
        .build()
        .unwrap()
}

/// Two instances (two stores, two connections), 64 concurrent requests on one key.
async fn admitted_under_concurrency(algorithm: Algorithm, test: &str) -> Option<(usize, Vec<Decision>)> {
    shared_redis()?;
    let prefix = unique_prefix(test);
    let limits = Arc::new(limits(
        TierSpec::new(Quota::per_hour(nonzero!(1u32)).allow_burst(nonzero!(20u32))).algorithm(algorithm),
    ));
    let stores = [store(SHARED_URL, &prefix), store(SHARED_URL, &prefix)];
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = stores[i % 2].clone();
        let limits = Arc::clone(&limits);
        tasks.push(tokio::spawn(async move {
            store.check(&Key::new("shared-client"), limits.default_tier(), Charge::new(1)).await.unwrap()
        }));
    }
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.push(task.await.unwrap());
    }
    let admitted = decisions.iter().filter(|d| d.is_admitted()).count();
    Some((admitted, decisions))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_admit_exactly_the_burst_token_bucket() {
    let Some((admitted, decisions)) = admitted_under_concurrency(Algorithm::TokenBucket, "tb-burst").await
    else {
        return;
    };
    assert_eq!(admitted, 20);
    for d in decisions.iter().filter(|d| !d.is_admitted()) {
        assert_eq!(d.verdict(), Verdict::Rejected);
        let wait = d.retry_after().unwrap();
        // One token an hour: every rejected request waits almost all of it.
        assert!(wait > Nanos::from_secs(3_590) && wait <= Nanos::from_secs(3_600), "{wait:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_admit_exactly_the_burst_sliding_window() {
    let Some((admitted, _)) = admitted_under_concurrency(Algorithm::SlidingWindow, "sw-burst").await else {
        return;
    };
    assert_eq!(admitted, 20);
}

/// The memory store's decision as the Redis store gives it: sliding-window waits rounded up to
/// whole microseconds (the script's unit; everything else is exact for these quotas).
/// Receipts are left out: each store writes its own (nanoseconds here, microseconds there).
fn in_micros(d: Decision) -> Decision {
    let mut out = Decision::new(d.verdict(), d.now(), d.fraction_before(), d.charged())
        .held(Nanos::from_micros(d.wait().as_micros_ceil()));
    for p in d.policies() {
        out = out.with(tollgate::store::PolicyState {
            reset_after: Nanos::from_micros(p.reset_after.as_micros_ceil()),
            retry_after: Nanos::from_micros(p.retry_after.as_micros_ceil()),
            next_after: Nanos::from_micros(p.next_after.as_micros_ceil()),
            ..*p
        });
    }
    out
}

fn without_receipt(d: Decision) -> Decision {
    d.with_receipt(tollgate::store::Receipt::default())
}

/// Runs `charges` through Redis and, at the instant Redis decided, through a memory store.
async fn compare(spec: TierSpec, charges: &[Charge], test: &str) {
    if shared_redis().is_none() {
        return;
    }
    let limits = limits(spec);
    let tier = limits.default_tier();
    // No over-limit cache: every decision here must come from Redis.
    let redis = comparing_store(test);
    let clock = ManualClock::new(Duration::ZERO);
    let memory = MemoryStore::with_clock(clock.clone());
    let key = Key::new("compare-client");
    let mut verdicts = Vec::new();
    for (i, &charge) in charges.iter().enumerate() {
        let from_redis = redis.check(&key, tier, charge).await.unwrap();
        clock.set(from_redis.now());
        let from_memory = in_micros(memory.decide(&key, tier, charge));
        assert_eq!(without_receipt(from_redis), from_memory, "request {i} ({charge:?})");
        verdicts.push(from_redis.verdict());
    }
    // The sequences are built to see every outcome.
    for outcome in [Verdict::Admitted, Verdict::Rejected, Verdict::Exceeds] {
        assert!(verdicts.contains(&outcome), "{outcome:?} never happened: {verdicts:?}");
    }
}

fn mixed_charges() -> Vec<Charge> {
    let mut charges = vec![Charge::new(0), Charge::new(3), Charge::new(1), Charge::new(0), Charge::new(11)];
    charges.extend([Charge::new(4), Charge::new(5), Charge::new(5).reduced(0.5, 1), Charge::new(2)]);
    charges.extend([Charge::new(5).reduced(0.5, 1), Charge::new(1), Charge::new(1), Charge::new(0)]);
    charges
}

#[tokio::test]
async fn costs_reduced_costs_and_daily_quotas_decide_as_in_memory_token_bucket() {
    // 10 per minute, burst 10, plus 12 a day: the daily quota bites first.
    let spec = TierSpec::new(Quota::per_minute(nonzero!(10u32))).daily(12);
    compare(spec, &mixed_charges(), "compare-tb").await;
}

#[tokio::test]
async fn costs_reduced_costs_and_daily_quotas_decide_as_in_memory_sliding_window() {
    let spec =
        TierSpec::new(Quota::per_minute(nonzero!(10u32))).daily(12).algorithm(Algorithm::SlidingWindow);
    compare(spec, &mixed_charges(), "compare-sw").await;
}

#[tokio::test]
async fn a_fast_refill_decides_as_in_memory_across_windows() {
    // Windows of 100 ms: the requests below straddle several, and refill between them.
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow] {
        let spec = TierSpec::new(Quota::per_second(nonzero!(50u32)).allow_burst(nonzero!(5u32)))
            .algorithm(algorithm);
        let mut charges: Vec<Charge> = (0..40).map(|i| Charge::new(1 + i % 3)).collect();
        charges.push(Charge::new(6));
        if shared_redis().is_none() {
            return;
        }
        let limits = limits(spec);
        let tier = limits.default_tier();
        let redis = comparing_store("compare-fast");
        let clock = ManualClock::new(Duration::ZERO);
        let memory = MemoryStore::with_clock(clock.clone());
        let key = Key::from_ip("192.0.2.9".parse().unwrap());
        for charge in charges {
            let from_redis = redis.check(&key, tier, charge).await.unwrap();
            clock.set(from_redis.now());
            let from_memory = in_micros(memory.decide(&key, tier, charge));
            assert_eq!(without_receipt(from_redis), from_memory, "{algorithm:?} {charge:?}");
            tokio::time::sleep(Duration::from_millis(7)).await; // real time must pass in Redis
        }
    }
}

#[tokio::test]
async fn a_rejection_charges_nothing_and_keys_expire_when_full_again() {
    let Some(mut conn) = shared_redis() else { return };
    let prefix = unique_prefix("expire");
    let limits =
        limits(TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))).daily(100));
    let tier = limits.default_tier();
    let store = store(SHARED_URL, &prefix);
    let key = Key::new("sk_live_very_secret");
    let (burst_key, daily_key) =
        (store.key_of(&key, &tier.policies()[0]), store.key_of(&key, &tier.policies()[1]));

    assert!(store.check(&key, tier, Charge::new(4)).await.unwrap().is_admitted());
    // Full again 4 s (one token a second) and 4 × 864 s from now.
    let pttl: i64 = conn.pttl(&burst_key).unwrap();
    assert!((3_900..=4_000).contains(&pttl), "burst key PTTL {pttl}");
    let pttl: i64 = conn.pttl(&daily_key).unwrap();
    assert!((3_455_900..=3_456_000).contains(&pttl), "daily key PTTL {pttl}");

    let before: (String, String) = (conn.get(&burst_key).unwrap(), conn.get(&daily_key).unwrap());
    let rejected = store.check(&key, tier, Charge::new(7)).await.unwrap();
    assert_eq!(rejected.verdict(), Verdict::Rejected);
    assert_eq!(rejected.charged(), 0);
    let after: (String, String) = (conn.get(&burst_key).unwrap(), conn.get(&daily_key).unwrap());
    assert_eq!(before, after, "a rejection wrote nothing");
    let exceeds = store.check(&key, tier, Charge::new(11)).await.unwrap();
    assert_eq!(exceeds.verdict(), Verdict::Exceeds);
    let after: (String, String) = (conn.get(&burst_key).unwrap(), conn.get(&daily_key).unwrap());
    assert_eq!(before, after, "an impossible request wrote nothing");

    // No raw API key in Redis' key space.
    let names: Vec<String> = conn.keys(format!("{prefix}:*")).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| !n.contains("secret")), "{names:?}");

    // A sliding window's key lives until nothing it counts is within the last window: for one
    // request, until its window ends (at most 1 s here).
    let limits =
        self::limits(TierSpec::new(Quota::per_second(nonzero!(5u32))).algorithm(Algorithm::SlidingWindow));
    let tier = limits.default_tier();
    let key = Key::new("window-client");
    assert!(store.check(&key, tier, Charge::new(1)).await.unwrap().is_admitted());
    let pttl: i64 = conn.pttl(store.key_of(&key, &tier.policies()[0])).unwrap();
    assert!((1..=1_000).contains(&pttl), "window key PTTL {pttl}");
}

#[tokio::test]
async fn a_cached_rejection_sends_no_command_to_redis() {
    if !have_redis_binaries() {
        return;
    }
    let server = RedisServer::start(&[]);
    let limits = limits(TierSpec::new(Quota::per_minute(nonzero!(6u32)).allow_burst(nonzero!(2u32))));
    let tier = limits.default_tier();
    let store = store(&server.url(), "cache");
    let abuser = Key::new("abuser");

    // The script is loaded on first use, and again after Redis forgets it (NOSCRIPT).
    assert!(store.check(&abuser, tier, Charge::new(1)).await.unwrap().is_admitted());
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut server.connection().unwrap()).unwrap();
    assert!(store.check(&abuser, tier, Charge::new(1)).await.unwrap().is_admitted());
    // From before the refusal that sets the deadline: whatever the counting in between takes
    // (INFO calls, slow on a loaded machine), the waits cannot shrink by more than this.
    let started = Instant::now();
    let first = store.check(&abuser, tier, Charge::new(1)).await.unwrap();
    assert_eq!(first.verdict(), Verdict::Rejected);
    let first_wait = first.retry_after().unwrap();
    let evalsha = server.calls("evalsha");
    let all_before = command_calls(&server);

    let mut last_wait = first_wait;
    for _ in 0..1_000 {
        let d = store.check(&abuser, tier, Charge::new(1)).await.unwrap();
        assert_eq!(d.verdict(), Verdict::Rejected);
        let wait = d.retry_after().unwrap();
        assert!(wait <= last_wait && wait > Nanos::ZERO, "{wait:?} after {last_wait:?}");
        last_wait = wait;
    }
    // The deadline is the one Redis gave: waits shrink exactly with local time.
    let elapsed = started.elapsed();
    assert!(
        first_wait - last_wait <= Nanos::from(elapsed) + Nanos::from_millis(5),
        "{first_wait:?} {last_wait:?}"
    );
    assert_eq!(server.calls("evalsha"), evalsha, "the flood reached Redis");
    // Nothing but this test's own connections and INFO calls in between.
    let all_after = command_calls(&server);
    let reached: Vec<_> = all_after
        .iter()
        .filter(|(name, calls)| all_before.get(*name) != Some(*calls))
        .filter(|(name, _)| !["info", "ping", "client|setinfo", "hello"].contains(&name.as_str()))
        .collect();
    assert!(reached.is_empty(), "commands reached Redis during the flood: {reached:?}");
    assert_eq!(store.stats().cached_rejections, 1_000);
    assert_eq!(store.blocked_len(), 1);

    // Another client, and another charge of the same client, still ask Redis.
    assert!(store.check(&Key::new("polite"), tier, Charge::new(1)).await.unwrap().is_admitted());
    assert_eq!(store.check(&abuser, tier, Charge::new(2)).await.unwrap().verdict(), Verdict::Rejected);
    assert_eq!(server.calls("evalsha"), evalsha + 2);
    assert_eq!(store.stats().redis_decisions, 5);
}

/// Calls per command, from `INFO commandstats`.
fn command_calls(server: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    let info: String =
        redis::cmd("INFO").arg("commandstats").query(&mut server.connection().unwrap()).unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

/// Issue 11, item 5: the over-limit cache was keyed by (client, tier position), so once the
/// strict limiter's tier 0 rejected a client, the loose limiter's tier 0 (another tier, other
/// Redis keys) answered that client from the cache, with the strict limiter's wait.
#[tokio::test]
async fn the_over_limit_cache_is_kept_per_policy_not_per_position() {
    if shared_redis().is_none() {
        return;
    }
    let store = store(SHARED_URL, &unique_prefix("blocked-identity"));
    let strict = Limits::builder().tier("strict", TierSpec::new(Quota::per_hour(nonzero!(1u32))));
    let strict = strict.default_tier("strict").build().unwrap();
    let loose = Limits::builder().tier("loose", TierSpec::new(Quota::per_second(nonzero!(100u32))));
    let loose = loose.default_tier("loose").build().unwrap();
    let key = Key::new("shared-client");
    assert!(store.check(&key, strict.default_tier(), Charge::new(1)).await.unwrap().is_admitted());
    let refused = store.check(&key, strict.default_tier(), Charge::new(1)).await.unwrap();
    assert_eq!(refused.verdict(), Verdict::Rejected);
    assert_eq!(store.blocked_len(), 1);
    let loose_answer = store.check(&key, loose.default_tier(), Charge::new(1)).await.unwrap();
    assert!(loose_answer.is_admitted(), "{loose_answer:?}");
    assert_eq!(loose_answer.policies()[0].remaining, 99);
    assert_eq!(store.stats().cached_rejections, 0);
}

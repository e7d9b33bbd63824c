//! The Redis store against hostile timing (issue 11): a client's state reset behind the
//! over-limit cache's back, and a call that times out but still runs on Redis. Needs the Redis
//! at 127.0.0.1:6379 and `redis-server` (skipped without them, failing under `CI=true`).
#![cfg(feature = "redis")]

#[path = "redis_support.rs"]
mod support;

use nonzero_ext::nonzero;
use std::time::Duration;

use redis::Commands;
use support::*;
use tollgate::algorithm::Quota;
use tollgate::key::Key;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, OnError, RedisStore, Store, Verdict};

fn limits(burst: std::num::NonZeroU32) -> Limits {
    // One token an hour: nothing comes back during a test.
    Limits::builder()
        .tier("anonymous", TierSpec::new(Quota::per_hour(nonzero!(1u32)).allow_burst(burst)))
        .build()
        .unwrap()
}

/// Finding 6: "state only gets worse until the deadline" is false after an operator's DEL (or
/// an eviction, a failover): the over-limit cache kept refusing locally until the next token,
/// an hour later. A local refusal now rests on an answer of Redis at most `blocked_recheck` old.
#[tokio::test]
async fn a_reset_behind_the_over_limit_cache_is_noticed_within_the_bound() {
    let Some(mut conn) = shared_redis() else { return };
    let prefix = unique_prefix("blocked-recheck");
    let store = RedisStore::builder(SHARED_URL)
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
        .blocked_recheck(Duration::from_millis(300))
        .build()
        .unwrap();
    let limits = limits(nonzero!(2u32));
    let tier = limits.default_tier();
    let key = Key::new("reset-client");
    let check = || store.check(&key, tier, Charge::new(1));
    assert!(check().await.unwrap().is_admitted());
    assert!(check().await.unwrap().is_admitted());
    assert_eq!(check().await.unwrap().verdict(), Verdict::Rejected, "Redis refuses for an hour");
    let asked = store.stats().redis_decisions;
    // The operator forgives the client.
    let _: () = conn.del(store.key_of(&key, &tier.policies()[0])).unwrap();
    // For now this instance still refuses it locally, without asking Redis…
    assert_eq!(check().await.unwrap().verdict(), Verdict::Rejected);
    assert_eq!(store.stats().redis_decisions, asked);
    assert_eq!(store.stats().cached_rejections, 1);
    // …but for no longer than the bound.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let after = check().await.unwrap();
    assert!(after.is_admitted(), "Redis was asked again: {after:?}");
    assert_eq!(after.policies()[0].remaining, 1);
}

/// Suspected: "a call that times out still runs on Redis, and the local fallback is also
/// charged, so the client is charged twice". Checked: each ledger charges the request once.
/// The late script charges Redis (the request was indeed served, by the fallback), the
/// fallback's own charge stays in the fallback, which is left behind once Redis answers; so
/// once Redis answers again, the client's standing there counts each request exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_times_out_but_runs_is_charged_once_in_the_ledger_in_force() {
    if shared_redis().is_none() || !have_redis_binaries() {
        return;
    }
    let server = RedisServer::start(&["--enable-debug-command", "yes"]);
    let store = RedisStore::builder(server.url())
        .prefix(unique_prefix("timeout-once"))
        .timeout(Duration::from_millis(50))
        .breaker(3, Duration::from_millis(250))
        .on_error(OnError::Local)
        .build()
        .unwrap();
    let limits = limits(nonzero!(10u32));
    let tier = limits.default_tier();
    let key = Key::new("slow-redis-client");
    // Warm the connection and load the script.
    assert_eq!(store.check(&key, tier, Charge::new(1)).await.unwrap().policies()[0].remaining, 9);
    // Redis stalls for 400 ms: the next call times out, the fallback decides, and the script
    // still runs on Redis once it wakes.
    let mut stall = server.connection().unwrap();
    let sleeper =
        std::thread::spawn(move || redis::cmd("DEBUG").arg("SLEEP").arg("0.4").query::<()>(&mut stall));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = store.check(&key, tier, Charge::new(1)).await.unwrap();
    assert!(during.is_admitted());
    assert_eq!(during.policies()[0].remaining, 9, "the fallback's own ledger, charged once");
    assert_eq!((store.stats().timeouts, store.stats().local_decisions), (1, 1));
    sleeper.join().unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Redis again: it counted the first request and the timed-out one, once each.
    let after = store.check(&key, tier, Charge::new(0)).await.unwrap();
    assert_eq!(store.stats().local_decisions, 1, "answered by Redis");
    assert_eq!(after.policies()[0].remaining, 8);
}

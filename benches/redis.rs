//! The Redis store against raw redis-rs running the same script (issue 6, item 5).
//!
//! `cargo bench --bench redis` — needs the Redis at 127.0.0.1:6379 (`TOLLGATE_BENCH_REDIS` to
//! use another); without it, says so and exits 0.
//!
//! * **store**: `RedisStore::check` (digest of the client key, key names, breaker, timeout,
//!   reply parsing into a `Decision`, over-limit cache look-up) on a multiplexed
//!   `ConnectionManager`;
//! * **raw**: redis-rs `Script::prepare_invoke().invoke_async` of the *same* `check.lua`, with
//!   the same keys (`RedisStore::key_of`, built before timing) and the same ARGV, on its own
//!   `ConnectionManager`, reply read as `Vec<i64>` and nothing else.
//!
//! Both sides: 64 concurrent tokio tasks on a 2-worker multi-thread runtime, `OPS` checks per
//! side per round, each task cycling over its own 16 clients (1 024 clients), a one-policy tier
//! so generous every check is admitted (and writes). The sides alternate for `ROUNDS` rounds
//! (order swapped every round); the ratio is the median of the per-round throughput ratios.
//! Before each side `CONFIG RESETSTAT`, after it `INFO commandstats`: Redis' own µs per EVALSHA.
//!
//! Then the flood: one client spent (burst 1 per hour), then `FLOOD` checks of it from 64 tasks;
//! EVALSHA calls counted by Redis before and after.

use nonzero_ext::nonzero;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::AsyncCommands;
use tollgate::algorithm::{Algorithm, Quota};
use tollgate::key::Key;
use tollgate::policy::{Limits, Tier, TierSpec};
use tollgate::store::{Charge, RedisStore, Store};

const SCRIPT: &str =
    concat!(include_str!("../src/store/redis/algorithms.lua"), include_str!("../src/store/redis/check.lua"));
const TASKS: usize = 64;
const CLIENTS_PER_TASK: usize = 16;
const OPS: usize = 20_480; // 320 per task
const ROUNDS: usize = 9;
const FLOOD: usize = 102_400; // 1 600 per task

/// Redis' count of EVALSHA calls and their total µs since the last `CONFIG RESETSTAT`.
async fn evalsha_stats(admin: &mut MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(admin).await.unwrap();
    let Some(line) = info.lines().find(|l| l.starts_with("cmdstat_evalsha:")) else {
        return (0, 0);
    };
    let field = |name: &str| {
        line["cmdstat_evalsha:".len()..]
            .split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}

async fn reset_stats(admin: &mut MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(admin).await.unwrap();
}

/// One side's round: throughput (checks/s), Redis calls, Redis µs per call.
struct Sample {
    per_sec: f64,
    calls: u64,
    usec_per_call: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `TASKS` tasks, each doing `OPS / TASKS` calls of `op(task, i)`.
async fn timed<F, Fut>(admin: &mut MultiplexedConnection, op: F) -> Sample
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    reset_stats(admin).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                for i in 0..OPS / TASKS {
                    op(t, i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let (calls, usec) = evalsha_stats(admin).await;
    Sample {
        per_sec: (OPS / TASKS * TASKS) as f64 / elapsed.as_secs_f64(),
        calls,
        usec_per_call: if calls == 0 { 0.0 } else { usec as f64 / calls as f64 },
    }
}

fn store(url: &str, prefix: &str) -> RedisStore {
    // A generous timeout: a slow call under 64-way load must not fall back to the local store.
    RedisStore::builder(url).prefix(prefix).timeout(Duration::from_secs(1)).build().unwrap()
}

async fn cleanup(admin: &mut MultiplexedConnection, prefix: &str) -> usize {
    let mut keys: Vec<String> = Vec::new();
    {
        let mut iter: redis::AsyncIter<String> = admin.scan_match(format!("{prefix}:*")).await.unwrap();
        while let Some(key) = iter.next_item().await {
            keys.push(key.unwrap());
        }
    }
    for chunk in keys.chunks(500) {
        let _: () = admin.del(chunk).await.unwrap();
    }
    keys.len()
}

async fn run(url: String) {
    let client = redis::Client::open(url.as_str()).unwrap();
    let connect = tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection());
    let mut admin = match connect.await {
        Ok(Ok(mut conn)) => match redis::cmd("PING").query_async::<String>(&mut conn).await {
            Ok(_) => conn,
            Err(e) => return println!("redis bench skipped: {url} does not answer PING: {e}"),
        },
        Ok(Err(e)) => return println!("redis bench skipped: {url} is unreachable: {e}"),
        Err(_) => return println!("redis bench skipped: {url} did not answer within 2 s"),
    };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("tollgate-bench:{}:{nanos}", std::process::id());

    // Every check admitted: 10⁶ tokens a second, burst 10⁶.
    let limits = Limits::builder()
        .tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1_000_000u32))))
        .build()
        .unwrap();
    let tier: Tier = limits.default_tier().clone();
    let store = store(&url, &prefix);
    let clients: Arc<Vec<Key>> =
        Arc::new((0..TASKS * CLIENTS_PER_TASK).map(|i| Key::new(format!("client-{i}"))).collect());

    // The raw side's keys and ARGV, exactly as the store builds them.
    let policy = tier.policies()[0].clone();
    let names: Arc<Vec<String>> = Arc::new(clients.iter().map(|k| store.key_of(k, &policy)).collect());
    let algorithm: u8 = match policy.algorithm() {
        Algorithm::TokenBucket => 0,
        Algorithm::SlidingWindow => 1,
        Algorithm::SlidingLog => 2,
    };
    let emission = policy.quota().emission().as_micros_ceil();
    let burst = policy.quota().burst();
    let charge = Charge::new(1);
    let script = Arc::new(redis::Script::new(SCRIPT));
    let raw_conn = ConnectionManager::new(client.clone()).await.unwrap();

    let store_op = {
        let (store, clients, tier) = (store.clone(), Arc::clone(&clients), tier.clone());
        move |t: usize, i: usize| {
            let fut = store.check(&clients[t * CLIENTS_PER_TASK + i % CLIENTS_PER_TASK], &tier, charge);
            async move {
                assert!(fut.await.unwrap().is_admitted());
            }
        }
    };
    let raw_op = {
        let (script, names, conn) = (Arc::clone(&script), Arc::clone(&names), raw_conn.clone());
        move |t: usize, i: usize| {
            let (script, names, mut conn) = (Arc::clone(&script), Arc::clone(&names), conn.clone());
            async move {
                let mut invocation = script.prepare_invoke();
                invocation.key(&names[t * CLIENTS_PER_TASK + i % CLIENTS_PER_TASK]);
                invocation.arg(charge.cost).arg(charge.reduced_below).arg(charge.reduced_cost).arg(0);
                invocation.arg(algorithm).arg(emission).arg(burst);
                let reply: Vec<i64> = invocation.invoke_async(&mut conn).await.unwrap();
                assert_eq!(reply[0], 0);
            }
        }
    };
    let store_op = Arc::new(store_op);
    let raw_op = Arc::new(raw_op);

    // Warm-up: connections made, script loaded, both paths exercised.
    {
        let (s, r) = (Arc::clone(&store_op), Arc::clone(&raw_op));
        timed(&mut admin, move |t, i| s(t, i)).await;
        timed(&mut admin, move |t, i| r(t, i)).await;
    }

    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for round in 0..ROUNDS {
        for side in 0..2 {
            let store_first = round % 2 == 0;
            if (side == 0) == store_first {
                let s = Arc::clone(&store_op);
                ours.push(timed(&mut admin, move |t, i| s(t, i)).await);
            } else {
                let r = Arc::clone(&raw_op);
                raw.push(timed(&mut admin, move |t, i| r(t, i)).await);
            }
        }
    }
    let stats_after_rounds = store.stats();

    // The flood: one client rejected by Redis once, then FLOOD more checks.
    let flood_limits =
        Limits::builder().tier("anonymous", TierSpec::new(Quota::per_hour(nonzero!(1u32)))).build().unwrap();
    let flood_tier = flood_limits.default_tier().clone();
    let abuser = Key::new("abusive-client");
    assert!(store.check(&abuser, &flood_tier, charge).await.unwrap().is_admitted());
    assert!(!store.check(&abuser, &flood_tier, charge).await.unwrap().is_admitted());
    let cached_before = store.stats().cached_rejections;
    reset_stats(&mut admin).await;
    let (calls_before, _) = evalsha_stats(&mut admin).await;
    let flood_start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, abuser, tier) = (store.clone(), abuser.clone(), flood_tier.clone());
            tokio::spawn(async move {
                for _ in 0..FLOOD / TASKS {
                    let d = store.check(&abuser, &tier, charge).await.unwrap();
                    assert!(!d.is_admitted() && d.retry_after().is_some());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let flood_elapsed = flood_start.elapsed();
    let (calls_after, _) = evalsha_stats(&mut admin).await;
    let flood_checks = FLOOD / TASKS * TASKS;
    let cached = store.stats().cached_rejections - cached_before;
    let removed = cleanup(&mut admin, &prefix).await;

    // Closing table.
    println!();
    println!(
        "RedisStore::check vs raw redis-rs EVALSHA of the same check.lua ({TASKS} tasks, 2 workers, \
         {OPS} checks per side per round, {ROUNDS} rounds alternating; median)"
    );
    println!("| round | store checks/s | raw checks/s | store / raw | store µs/call (Redis) | raw µs/call (Redis) | store calls | raw calls |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut ratios = Vec::new();
    for (round, (o, r)) in ours.iter().zip(&raw).enumerate() {
        let ratio = o.per_sec / r.per_sec;
        ratios.push(ratio);
        println!(
            "| {round} | {:.0} | {:.0} | {:.3} | {:.2} | {:.2} | {} | {} |",
            o.per_sec, r.per_sec, ratio, o.usec_per_call, r.usec_per_call, o.calls, r.calls
        );
    }
    let med = |f: &dyn Fn(&Sample) -> f64, v: &[Sample]| median(&mut v.iter().map(f).collect::<Vec<_>>());
    let ratio = median(&mut ratios);
    println!(
        "| **median** | **{:.0}** | **{:.0}** | **{ratio:.3}** | {:.2} | {:.2} | | |",
        med(&|s| s.per_sec, &ours),
        med(&|s| s.per_sec, &raw),
        med(&|s| s.usec_per_call, &ours),
        med(&|s| s.usec_per_call, &raw),
    );
    println!();
    println!(
        "target: store ≥ 0.80 × raw throughput: {} (median ratio {ratio:.3})",
        if ratio >= 0.8 { "met" } else { "NOT met" }
    );
    println!(
        "store stats after the rounds: redis_decisions={} errors={} timeouts={} local_decisions={}",
        stats_after_rounds.redis_decisions,
        stats_after_rounds.errors,
        stats_after_rounds.timeouts,
        stats_after_rounds.local_decisions
    );
    println!();
    println!("Flood of one rejected client ({flood_checks} checks, {TASKS} tasks):");
    println!("| EVALSHA calls before | after | added | cached_rejections added | ns/check |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {calls_before} | {calls_after} | **{}** | {cached} | {:.0} |",
        calls_after - calls_before,
        flood_elapsed.as_nanos() as f64 / flood_checks as f64
    );
    println!();
    println!("cleanup: deleted {removed} keys under {prefix}:*");
}

fn main() {
    let url = std::env::var("TOLLGATE_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(url));
}

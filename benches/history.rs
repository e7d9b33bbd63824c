//! What the usage history costs: per request on the memory store and on the Redis store, side
//! by side with the same store without history, and in memory per identified client.
//!
//! `cargo bench --bench history` (Redis at `TOLLGATE_BENCH_REDIS`, default
//! `redis://127.0.0.1:6379`; the Redis part is skipped when it does not answer). Prints three
//! tables:
//! 1. ns per request, one thread and two: `MemoryStore::decide` alone, then followed by
//!    `History::record` into the in-process history, then into the Redis history's batch (what
//!    a request pays for the Redis form: no I/O). 10 000 identified clients, interleaved rounds
//!    (the variants take turns in 3 ms blocks, 31 rounds; medians).
//! 2. Requests per second through `RedisStore::check` (64 tasks on 2 workers), without and
//!    with the Redis history recording every request and flushing in the background,
//!    alternating rounds, and the round trips the history made.
//! 3. Heap bytes per identified client with 1 000 000 clients in the in-process history,
//!    counted by a global allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{interleaved, median, median_ratio, run_threads};
use nonzero_ext::nonzero;
use tollgate::algorithm::Quota;
use tollgate::history::{History, Visit};
use tollgate::key::Key;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, MemoryStore, RedisStore, Store};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CLIENTS: usize = 10_000;
const ROUNDS: usize = 31;
const BLOCK: Duration = Duration::from_millis(3);
const TASKS: usize = 64;
const OPS: usize = 64 * 200;
const REDIS_ROUNDS: usize = 9;

fn limits() -> Limits {
    Limits::builder()
        .tier(
            "anonymous",
            TierSpec::new(
                Quota::per_second(nonzero!(1_000_000_000u32)).allow_burst(nonzero!(1_000_000_000u32)),
            ),
        )
        .build()
        .unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn memory_table(redis_url: &str) {
    let limits = limits();
    let tier = limits.default_tier();
    let store = MemoryStore::new();
    let keys: Vec<Key> = (0..CLIENTS).map(|i| Key::new(format!("client-key-{i:06}"))).collect();
    let memory = History::memory();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The Redis history's task is started on this runtime; the bench measures `record` alone.
    let batched = runtime.block_on(async {
        let history =
            History::redis(redis_url, format!("tollgate-bench-history:{}", std::process::id())).unwrap();
        history.record(&Visit::new(&keys[0], "pro", "/api/search", now_secs(), true, 1));
        history
    });
    let at = now_secs();
    for key in &keys {
        let _ = store.decide(key, tier, Charge::new(1));
        memory.record(&Visit::new(key, "pro", "/api/search", at, true, 1));
    }
    let decide = |t: usize, i: u64| {
        let key = &keys[(i as usize + t * CLIENTS / 2) % CLIENTS];
        black_box(store.decide(key, tier, Charge::new(1)));
    };
    let with = |history: &History, t: usize, i: u64| {
        let key = &keys[(i as usize + t * CLIENTS / 2) % CLIENTS];
        let d = store.decide(key, tier, Charge::new(1));
        history.record(&Visit::new(key, "pro", "/api/search", at, d.is_admitted(), d.charged()));
        black_box(d);
    };
    println!();
    println!(
        "## History cost per request, memory store ({CLIENTS} identified clients; median of {ROUNDS} rounds)"
    );
    println!();
    println!(
        "| threads | decide ns/op | + memory history ns/op | ratio | + Redis history batch ns/op | ratio |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for threads in [1, 2] {
        let rounds = interleaved(
            ROUNDS,
            BLOCK,
            &[
                &|n| run_threads(threads, n, decide),
                &|n| run_threads(threads, n, |t, i| with(&memory, t, i)),
                &|n| run_threads(threads, n, |t, i| with(&batched, t, i)),
            ],
        );
        println!(
            "| {threads} | {:.1} | {:.1} | {:.2} | {:.1} | {:.2} |",
            median(&rounds[0]),
            median(&rounds[1]),
            median_ratio(&rounds[1], &rounds[0]),
            median(&rounds[2]),
            median_ratio(&rounds[2], &rounds[0]),
        );
    }
    drop(runtime);
}

async fn redis_table(url: String) {
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin =
        match tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection()).await {
            Ok(Ok(conn)) => conn,
            _ => return println!("\nRedis part skipped: {url} does not answer"),
        };
    let prefix = format!("tollgate-bench-history:{}:{}", std::process::id(), now_secs());
    let limits = limits();
    let tier = limits.default_tier().clone();
    let store = RedisStore::builder(&url).prefix(&prefix).timeout(Duration::from_secs(1)).build().unwrap();
    let history = History::redis(&url, &prefix).unwrap();
    let keys: Arc<Vec<Key>> =
        Arc::new((0..TASKS * 16).map(|i| Key::new(format!("client-key-{i:06}"))).collect());

    async fn round(
        store: &RedisStore,
        tier: &tollgate::policy::Tier,
        keys: &Arc<Vec<Key>>,
        history: Option<&History>,
    ) -> f64 {
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (store, tier, keys, history) =
                    (store.clone(), tier.clone(), Arc::clone(keys), history.cloned());
                tokio::spawn(async move {
                    for i in 0..OPS / TASKS {
                        let key = &keys[t * 16 + i % 16];
                        let d = store.check(key, &tier, Charge::new(1)).await.unwrap();
                        if let Some(history) = &history {
                            history.record(&Visit::new(
                                key,
                                "pro",
                                "/api/search",
                                d.now().as_secs(),
                                d.is_admitted(),
                                d.charged(),
                            ));
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        OPS as f64 / start.elapsed().as_secs_f64()
    }

    round(&store, &tier, &keys, Some(&history)).await; // warm-up: connections, script
    history.flush().await.unwrap();
    let flushes_before = history.stats().flushes;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut with_time = Duration::ZERO;
    for r in 0..REDIS_ROUNDS {
        for side in 0..2 {
            if (side == 0) == (r % 2 == 0) {
                without.push(round(&store, &tier, &keys, None).await);
            } else {
                let t = Instant::now();
                with.push(round(&store, &tier, &keys, Some(&history)).await);
                with_time += t.elapsed();
            }
        }
    }
    history.flush().await.unwrap();
    let flushes = history.stats().flushes - flushes_before;
    let recorded = (OPS * REDIS_ROUNDS) as f64;
    let ratios: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w / o).collect();
    println!();
    println!("## RedisStore::check with and without the Redis history ({TASKS} tasks, 2 workers, {OPS} requests a round, {REDIS_ROUNDS} rounds alternating; median)");
    println!();
    println!("| store alone req/s | store + history req/s | with / without | history round trips | requests per history round trip |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {:.0} | {:.0} | {:.3} | {flushes} (in {:.1} s of recording) | {:.0} |",
        median(&without),
        median(&with),
        median(&ratios),
        with_time.as_secs_f64(),
        recorded / flushes.max(1) as f64
    );
    let mut keys_removed = 0;
    let found: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut admin).await.unwrap();
    for chunk in found.chunks(500) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut admin).await.unwrap();
        keys_removed += chunk.len();
    }
    println!();
    println!("cleanup: deleted {keys_removed} keys under {prefix}:*");
}

fn footprint() {
    const N: usize = 1_000_000;
    let keys: Vec<Key> = (0..N).map(|i| Key::new(format!("client-key-{i:07}"))).collect();
    let at = now_secs();
    let before = LIVE.load(Ordering::Relaxed);
    let history = History::memory_bounded(2 * N, 0);
    for (i, key) in keys.iter().enumerate() {
        history.record(
            &Visit::new(key, "pro", "/api/search", at - (i as u64 % 3_600), true, 1).name("Acme Corp"),
        );
    }
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64;
    println!();
    println!("## Memory of the in-process history");
    println!();
    println!("| identified clients | heap bytes | bytes per client |");
    println!("| ---: | ---: | ---: |");
    println!("| {N} | {:.0} | {:.0} |", bytes, bytes / N as f64);
    drop(black_box(history));
}

fn main() {
    let url = std::env::var("TOLLGATE_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    memory_table(&url);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(redis_table(url));
    footprint();
}

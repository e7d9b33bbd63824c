//! tollgate's `MemoryStore::decide` against governor's keyed limiter (`RateLimiter::keyed`, a
//! DashMap on a quanta clock), same keys, same quotas, same run.
//!
//! `cargo bench --bench limiter` — Criterion's report, then a table of ns/op and the ratio
//! tollgate / governor from an interleaved run (the two take turns in 3 ms blocks, 31 rounds;
//! the ratio is the median of the per-round ratios, robust to load that comes and goes).
//!
//! Keys are IPv4 addresses for both (tollgate: `Key::from_ip`, governor: `IpAddr`), built before
//! timing; each operation checks the next key of the set, cost 1. The cases:
//! * key sets of 1 (one hot key), 10 000 and 1 048 576 keys, all present before timing;
//! * *admitted*: a quota of 10⁹ per second with a burst of 10⁹, so every check admits and
//!   writes; *rejected*: 1 per hour with a burst of 1, every key spent before timing, so every
//!   check is refused;
//! * one thread, and two threads at once (two threads start half the key set apart; on the hot
//!   key both hammer the same state). Times are per operation per thread.
//!
//! tollgate does more per check than governor: its `Decision` carries remaining tokens, reset
//! time and the fraction of the burst left (everything the headers need), where governor's
//! `check_key` answers yes or "not until".

mod common;

use nonzero_ext::nonzero;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use common::{interleaved, run_threads, Pair};
use criterion::Criterion;
use governor::{DefaultKeyedRateLimiter, Quota as GQuota, RateLimiter};
use tollgate::algorithm::Quota;
use tollgate::key::Key;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, MemoryStore};

const SAMPLES: usize = 20;
/// Rounds of the interleaved comparison, and the length of each side's block in a round.
const ROUNDS: usize = 31;
const BLOCK: Duration = Duration::from_millis(3);

/// True unless a filter on the command line (`cargo bench --bench limiter -- hot`) leaves
/// `name` out.
fn filter_matches(name: &str) -> bool {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    filter.is_none_or(|f| name.contains(&f))
}

#[derive(Clone, Copy)]
enum Path {
    Admitted,
    Rejected,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Admitted => "admitted",
            Path::Rejected => "rejected",
        }
    }

    fn quotas(self) -> (Quota, GQuota) {
        match self {
            Path::Admitted => (
                Quota::per_second(nonzero!(1_000_000_000u32)),
                GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
                    .allow_burst(NonZeroU32::new(1_000_000_000).unwrap()),
            ),
            Path::Rejected => (
                Quota::per_hour(nonzero!(1u32)),
                GQuota::per_hour(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::new(1).unwrap()),
            ),
        }
    }
}

fn ip(i: usize) -> IpAddr {
    // 10.x.y.z, spread over the whole space of the index.
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32))
}

fn label(keys: usize) -> String {
    match keys {
        1 => "hot key".into(),
        n if n >= 1 << 20 => "1M keys".into(),
        n => format!("{}k keys", n / 1000),
    }
}

fn bench_case(c: &mut Criterion, pairs: &mut Vec<Pair>, keys: usize, path: Path) {
    let (quota, gquota) = path.quotas();
    let limits = Limits::builder().tier("anonymous", TierSpec::new(quota)).build().unwrap();
    let tier = limits.default_tier();
    let store = MemoryStore::new();
    let governor: DefaultKeyedRateLimiter<IpAddr> = RateLimiter::keyed(gquota);

    let ours: Vec<Key> = (0..keys).map(|i| Key::from_ip(ip(i))).collect();
    let theirs: Vec<IpAddr> = (0..keys).map(ip).collect();
    // Every key present (and, on the rejected path, spent) before timing.
    for (k, g) in ours.iter().zip(&theirs) {
        let _ = store.decide(k, tier, Charge::new(1));
        let _ = governor.check_key(g);
    }

    for threads in [1usize, 2] {
        let group_name = format!("{} {} {}t", label(keys), path.name(), threads);
        let mut group = c.benchmark_group(&group_name);
        let offset = |t: usize, i: u64| (t * keys / 2 + i as usize) % keys;

        let tollgate = |iters: u64| {
            run_threads(threads, iters, |t, i| {
                let key = &ours[offset(t, i)];
                black_box(store.decide(black_box(key), tier, Charge::new(1)));
            })
        };
        let peer = |iters: u64| {
            run_threads(threads, iters, |t, i| {
                let key = &theirs[offset(t, i)];
                let _ = black_box(governor.check_key(black_box(key)));
            })
        };
        group.bench_function("tollgate", |b| b.iter_custom(tollgate));
        group.bench_function("governor", |b| b.iter_custom(peer));
        group.finish();
        if filter_matches(&group_name) {
            let mut rounds = interleaved(ROUNDS, BLOCK, &[&tollgate, &peer]).into_iter();
            let (ours, peer) = (rounds.next().unwrap(), rounds.next().unwrap());
            pairs.push(Pair {
                label: format!("{}, {}, {threads} thread(s)", label(keys), path.name()),
                ours,
                peer,
            });
        }
    }
}

/// The clock read every check starts with: tollgate's `SystemClock` (the TSC through quanta)
/// against what it was before, `Instant::elapsed` anchored to the epoch.
fn bench_clock(c: &mut Criterion, pairs: &mut Vec<Pair>) {
    use tollgate::clock::{Clock, SystemClock};
    let clock = SystemClock::new();
    let start = std::time::Instant::now();
    let instant = |iters: u64| {
        let t = common::thread_cpu();
        for _ in 0..iters {
            let e = black_box(start).elapsed();
            black_box(
                1_700_000_000_000_000_000u64 + e.as_secs() * 1_000_000_000 + u64::from(e.subsec_nanos()),
            );
        }
        common::thread_cpu() - t
    };
    let tsc = |iters: u64| {
        let t = common::thread_cpu();
        for _ in 0..iters {
            black_box(black_box(&clock).now());
        }
        common::thread_cpu() - t
    };
    let mut group = c.benchmark_group("clock");
    group.bench_function("SystemClock (quanta)", |b| b.iter_custom(tsc));
    group.bench_function("Instant::elapsed", |b| b.iter_custom(instant));
    group.finish();
    if filter_matches("clock") {
        let mut rounds = interleaved(ROUNDS, BLOCK, &[&tsc, &instant]).into_iter();
        let (ours, peer) = (rounds.next().unwrap(), rounds.next().unwrap());
        pairs.push(Pair { label: "clock read: SystemClock (TSC) vs Instant::elapsed".into(), ours, peer });
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut pairs = Vec::new();
    let mut clock = Vec::new();
    bench_clock(&mut c, &mut clock);
    for keys in [1, 10_000, 1 << 20] {
        for path in [Path::Admitted, Path::Rejected] {
            bench_case(&mut c, &mut pairs, keys, path);
        }
    }
    c.final_summary();
    common::print_ratios(
        "MemoryStore::decide vs governor keyed check_key (interleaved, median of 31 rounds)",
        "tollgate",
        "governor",
        &pairs,
        0.8,
    );
    if !clock.is_empty() {
        println!("Clock read, ns (the old SystemClock was Instant::elapsed):");
        println!("| case | SystemClock ns | Instant ns | ratio |");
        println!("| --- | ---: | ---: | ---: |");
        for pair in &clock {
            println!(
                "| {} | {:.1} | {:.1} | {:.2} |",
                pair.label,
                common::median(&pair.ours),
                common::median(&pair.peer),
                common::median_ratio(&pair.ours, &pair.peer)
            );
        }
    }
}

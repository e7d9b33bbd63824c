//! Layer overhead in-process: the same axum `Router` and trivial handler, bare, behind
//! tollgate's `RateLimitLayer` (demo configuration: API-key extractor, costs table, headers on,
//! every request admitted) and behind tower_governor's `GovernorLayer` (same key header, rate
//! and burst, `use_headers`), driven as Tower services without sockets, in one run.
//!
//! `cargo bench --bench layer` — Criterion's report, then a table from an interleaved run (the
//! variants take turns in ~5 ms blocks, 31 rounds): ns per request, what each layer adds to the
//! bare request, and tollgate's addition against tower_governor's.
//!
//! Each operation builds the request (`GET /api/simple`, `X-API-Key: enterprise-demo-key`),
//! serves it to completion and drops the response; the same for every variant. The variants
//! "tollgate, headers = legacy" (three `X-RateLimit-*` headers, closest to tower_governor's
//! two) and "headers = none" show what the header values cost.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::apps;
use common::{interleaved, median};
use criterion::Criterion;

const SAMPLES: usize = 20;

fn main() {
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let no_headers = apps::CONFIG.replace("headers = \"both\"", "headers = \"none\"");
    let legacy = apps::CONFIG.replace("headers = \"both\"", "headers = \"legacy\"");
    let variants: [(&str, axum::Router); 5] = [
        ("bare", apps::bare()),
        ("tollgate", apps::tollgate()),
        ("tower_governor", apps::tower_governor()),
        ("tollgate, headers = legacy", apps::tollgate_with(&legacy)),
        ("tollgate, headers = none", apps::tollgate_with(&no_headers)),
    ];
    let runs: Vec<_> = variants
        .iter()
        .map(|(_, app)| {
            move |iters: u64| {
                let mut svc = app.clone();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(apps::serve(&mut svc, black_box(apps::request())));
                }
                start.elapsed()
            }
        })
        .collect();
    let mut group = c.benchmark_group("layer");
    for ((name, app), run) in variants.iter().zip(&runs) {
        // Sanity: every variant answers 200 (and the limiters admit).
        let mut svc = app.clone();
        assert_eq!(apps::serve(&mut svc, apps::request()).status(), 200, "{name}");
        group.bench_function(*name, |b| b.iter_custom(run));
    }
    group.finish();
    c.final_summary();

    // The comparison: the variants take turns, 31 rounds of ~5 ms blocks each.
    let dyn_runs: Vec<&dyn Fn(u64) -> Duration> =
        runs.iter().map(|r| r as &dyn Fn(u64) -> Duration).collect();
    let rounds = interleaved(31, Duration::from_millis(5), &dyn_runs);
    let bare = &rounds[0];
    println!();
    println!("## In-process layer overhead (interleaved, median of 31 rounds)");
    println!();
    println!("| variant | ns/request | added to bare | added % of bare (median of rounds) |");
    println!("| --- | ---: | ---: | ---: |");
    for ((name, _), per_op) in variants.iter().zip(&rounds) {
        let added: Vec<f64> = per_op.iter().zip(bare).map(|(t, b)| (t - b) / b).collect();
        println!(
            "| {name} | {:.0} | {:+.0} ns | {:+.1}% |",
            median(per_op),
            median(per_op) - median(bare),
            100.0 * median(&added)
        );
    }
    let added = |i: usize| -> f64 {
        let per_round: Vec<f64> = rounds[i].iter().zip(bare).map(|(t, b)| (t - b) / b).collect();
        median(&per_round)
    };
    let (ours, peer) = (added(1), added(2));
    println!();
    println!(
        "tollgate adds {:.1}% to the bare request (target ≤ 3%: {}); tower_governor adds {:.1}% \
         (tollgate adds less: {})",
        100.0 * ours,
        if ours <= 0.03 { "met" } else { "NOT met" },
        100.0 * peer,
        if ours < peer { "yes" } else { "no" },
    );
}

//! Layer overhead in-process: the same axum `Router` and trivial handler, bare, behind
//! tollgate's `RateLimitLayer` (demo configuration: API-key extractor, costs table, headers,
//! degradation bands, near-quota alerts, every request admitted) and behind tower_governor's
//! `GovernorLayer` (same key header, rate and burst, `use_headers`), driven as Tower services
//! without sockets, in one run.
//!
//! `cargo bench --bench layer` — Criterion's report, then a table from an interleaved run:
//! the variants take turns in ~5 ms blocks of the thread's CPU time (`common::thread_cpu`)
//! for 61 rounds (order reversed every other round),
//! and for each round the cost a layer adds is its time minus the bare router's time in that
//! same round. The table gives the medians, and for tollgate the **median of the per-round
//! ratios** of what it adds to what tower_governor adds, so load that comes and goes (other
//! builds on the same two cores) hits both sides of a ratio alike.
//!
//! Each operation builds the request (`GET /api/simple`, `X-API-Key: enterprise-demo-key`),
//! serves it to completion and drops the response; the same for every variant. Variants:
//! tollgate with each header mode, tollgate with the demo's `MetricsObserver` on a
//! Prometheus recorder (the observer alone is the per-round difference to the same layer
//! without it), and a no-op layer (what `Router::layer` costs any layer).

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::apps;
use common::{interleaved, median, thread_cpu};
use criterion::Criterion;

const SAMPLES: usize = 20;
const ROUNDS: usize = 61;
const BLOCK: Duration = Duration::from_millis(5);

/// Targets of issue 14: tollgate's added cost over tower_governor's.
const TARGET_BOTH: f64 = 1.0;
const TARGET_NONE: f64 = 0.7;
const TARGET_METRICS: f64 = 1.3;
/// What the metrics observer alone may add, ns per request.
const TARGET_OBSERVER_NS: f64 = 150.0;

fn main() {
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let variants: Vec<(&str, axum::Router)> = vec![
        ("bare", apps::bare()),
        ("tower_governor", apps::tower_governor()),
        ("tollgate, headers = both", apps::tollgate()),
        ("tollgate, both + MetricsObserver", apps::tollgate_metrics()),
        ("tollgate, headers = legacy", apps::tollgate_with(&apps::with_headers("legacy"))),
        ("tollgate, headers = ietf", apps::tollgate_with(&apps::with_headers("ietf"))),
        ("tollgate, headers = none", apps::tollgate_with(&apps::with_headers("none"))),
        ("no-op layer", apps::noop()),
    ];
    let runs: Vec<_> = variants
        .iter()
        .map(|(_, app)| {
            move |iters: u64| {
                let mut svc = app.clone();
                let start = thread_cpu();
                for _ in 0..iters {
                    black_box(apps::serve(&mut svc, black_box(apps::request())));
                }
                thread_cpu() - start
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

    let dyn_runs: Vec<&dyn Fn(u64) -> Duration> =
        runs.iter().map(|r| r as &dyn Fn(u64) -> Duration).collect();
    let rounds = interleaved(ROUNDS, BLOCK, &dyn_runs);
    let index = |name: &str| variants.iter().position(|(n, _)| *n == name).expect("a variant");
    let bare = &rounds[0];
    let added = |i: usize| -> Vec<f64> { rounds[i].iter().zip(bare).map(|(t, b)| t - b).collect() };
    let peer = added(index("tower_governor"));
    println!();
    println!("## In-process layer overhead (interleaved, {ROUNDS} rounds; medians of per-round values)");
    println!();
    println!("| variant | ns/request | added to bare, ns | added / tower_governor's added | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for (i, (name, _)) in variants.iter().enumerate() {
        let ours = added(i);
        let ratio: Vec<f64> = ours.iter().zip(&peer).map(|(a, p)| a / p).collect();
        let target = match *name {
            "tollgate, headers = both" => Some(TARGET_BOTH),
            "tollgate, headers = none" => Some(TARGET_NONE),
            "tollgate, both + MetricsObserver" => Some(TARGET_METRICS),
            _ => None,
        };
        let (ratio_text, verdict) = match (i, target) {
            (0, _) => (String::new(), String::new()),
            (_, Some(t)) => (
                format!("{:.2}", median(&ratio)),
                format!("≤ {t}: {}", if median(&ratio) <= t { "met" } else { "NOT met" }),
            ),
            _ => (format!("{:.2}", median(&ratio)), String::new()),
        };
        println!(
            "| {name} | {:.0} | {} | {ratio_text} | {verdict} |",
            median(&rounds[i]),
            if i == 0 { String::new() } else { format!("{:+.0}", median(&ours)) },
        );
    }
    let observer: Vec<f64> = rounds[index("tollgate, both + MetricsObserver")]
        .iter()
        .zip(&rounds[index("tollgate, headers = both")])
        .map(|(with, without)| with - without)
        .collect();
    println!();
    println!(
        "The MetricsObserver alone (same layer with and without it, per round): {:+.0} ns/request \
         (target ≤ {TARGET_OBSERVER_NS}: {}).",
        median(&observer),
        if median(&observer) <= TARGET_OBSERVER_NS { "met" } else { "NOT met" }
    );
}

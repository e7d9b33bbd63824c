//! Layer overhead in-process: the same axum `Router` and trivial handler, bare, behind
//! tollgate's `RateLimitLayer` (demo configuration: API-key extractor, costs table, headers on,
//! every request admitted) and behind tower_governor's `GovernorLayer` (same key header, rate
//! and burst, `use_headers`), driven as Tower services without sockets, in one run.
//!
//! `cargo bench --bench layer` — ends with a table: ns per request, what each layer adds to the
//! bare request, and tollgate's addition against tower_governor's.
//!
//! Each operation builds the request (`GET /api/simple`, `X-API-Key: enterprise-demo-key`),
//! serves it to completion and drops the response; the same for every variant. The variant
//! "tollgate, headers = none" is the same configuration without rate-limit headers, to show what
//! the five header values cost.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::apps;
use common::{median_ns, record};
use criterion::Criterion;

const SAMPLES: usize = 30;

fn main() {
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let no_headers = apps::CONFIG.replace("headers = \"both\"", "headers = \"none\"");
    let variants: [(&str, axum::Router); 4] = [
        ("bare", apps::bare()),
        ("tollgate", apps::tollgate()),
        ("tower_governor", apps::tower_governor()),
        ("tollgate, headers = none", apps::tollgate_with(&no_headers)),
    ];
    let mut group = c.benchmark_group("layer");
    for (name, app) in &variants {
        // Sanity: every variant answers 200 (and the limiters admit).
        let mut svc = app.clone();
        assert_eq!(apps::serve(&mut svc, apps::request()).status(), 200, "{name}");
        let id = format!("layer/{name}");
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut svc = app.clone();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(apps::serve(&mut svc, black_box(apps::request())));
                }
                record(&id, iters, start.elapsed())
            })
        });
    }
    group.finish();
    c.final_summary();

    let ns = |name: &str| median_ns(&format!("layer/{name}"), SAMPLES);
    println!();
    println!("## In-process layer overhead (median of samples)");
    println!();
    println!("| variant | ns/request | added to bare | added % of bare |");
    println!("| --- | ---: | ---: | ---: |");
    let Some(bare) = ns("bare") else {
        println!("(bare not run: no table)");
        return;
    };
    for (name, _) in &variants {
        if let Some(t) = ns(name) {
            println!("| {name} | {t:.0} | {:+.0} ns | {:+.1}% |", t - bare, 100.0 * (t - bare) / bare);
        }
    }
    if let (Some(ours), Some(peer)) = (ns("tollgate"), ns("tower_governor")) {
        let (ours, peer) = (ours - bare, peer - bare);
        println!();
        println!(
            "tollgate adds {:.1}% to the bare request (target ≤ 3%: {}); tower_governor adds {:.1}% \
             (tollgate adds less: {})",
            100.0 * ours / bare,
            if ours / bare <= 0.03 { "met" } else { "NOT met" },
            100.0 * peer / bare,
            if ours < peer { "yes" } else { "no" },
        );
    }
}

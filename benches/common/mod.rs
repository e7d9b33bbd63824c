//! Shared by the benches: timing on several threads, and a closing table of ratios.
//!
//! These machines are noisy, so no bench claims an absolute time: each prints, at the end, the
//! ratio of tollgate's time per operation to its peer's, both measured in the same run.
//!
//! Every routine runs through `Criterion::iter_custom`, and every call is recorded here. Criterion
//! calls a routine during warm-up first and then exactly `sample_size` times to measure, so the
//! last `sample_size` records of a benchmark are its samples; the table uses their median
//! (time / iterations), which shrugs off the odd descheduled sample.

#![allow(dead_code)] // each bench uses part of it

pub mod apps;

use std::collections::BTreeMap;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

static RECORDS: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Notes one sample of benchmark `id`: `iters` operations took `elapsed`.
pub fn record(id: &str, iters: u64, elapsed: Duration) -> Duration {
    let per_op = elapsed.as_nanos() as f64 / iters.max(1) as f64;
    RECORDS.lock().unwrap().entry(id.to_owned()).or_default().push(per_op);
    elapsed
}

/// The median time per operation (ns) over the last `samples` samples of `id`.
pub fn median_ns(id: &str, samples: usize) -> Option<f64> {
    let records = RECORDS.lock().unwrap();
    let all = records.get(id)?;
    let mut last: Vec<f64> = all[all.len().saturating_sub(samples)..].to_vec();
    last.sort_by(f64::total_cmp);
    last.get(last.len() / 2).copied()
}

/// Runs `op(thread, i)` for `i in 0..iters` on each of `threads` threads at once, and returns
/// the wall time from the moment all threads are released until the last one finishes
/// (thread start-up is not counted). Each thread does `iters` operations, so the result is the
/// time per operation *per thread*: flat when threads scale perfectly, doubled when they
/// serialise completely.
pub fn run_threads<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    if threads == 1 {
        let start = Instant::now();
        for i in 0..iters {
            op(0, i);
        }
        return start.elapsed();
    }
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        op(t, i);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let start = spans.iter().map(|s| s.0).min().unwrap();
    let end = spans.iter().map(|s| s.1).max().unwrap();
    end - start
}

/// One line of the closing table: tollgate's benchmark id and its peer's.
pub struct Pair {
    pub label: String,
    pub ours: String,
    pub peer: String,
}

impl Pair {
    pub fn new(label: impl Into<String>, ours: impl Into<String>, peer: impl Into<String>) -> Self {
        Self { label: label.into(), ours: ours.into(), peer: peer.into() }
    }
}

/// Prints the medians of each pair and their ratio, and whether it meets `target`
/// (ours / peer ≤ target).
pub fn print_ratios(
    title: &str,
    ours_name: &str,
    peer_name: &str,
    pairs: &[Pair],
    samples: usize,
    target: f64,
) {
    println!();
    println!("## {title}");
    println!();
    println!("| case | {ours_name} ns/op | {peer_name} ns/op | ratio | target ≤ {target} |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for pair in pairs {
        match (median_ns(&pair.ours, samples), median_ns(&pair.peer, samples)) {
            (Some(ours), Some(peer)) => {
                let ratio = ours / peer;
                let verdict = if ratio <= target { "met" } else { "NOT met" };
                println!("| {} | {ours:.1} | {peer:.1} | {ratio:.2} | {verdict} |", pair.label);
            }
            _ => println!("| {} | (not run) | | | |", pair.label),
        }
    }
    println!();
}

//! Shared by the benches: timing on several threads, and a closing table of ratios.
//!
//! These machines are noisy, so no bench claims an absolute time: each prints, at the end, the
//! ratio of tollgate's time per operation to its peer's, both measured in the same run.
//!
//! Two ways to get those ratios:
//! * [`interleaved`]: the peers take turns, block after block, and the table reports the median
//!   of the per-round ratios. Load that comes and goes (other builds on the same two cores)
//!   hits both sides of a round alike, so this is the number the closing tables print.
//! * Criterion's own runs, one benchmark after the other, for its usual report (and its
//!   change detection between runs); the same routines, through `Criterion::iter_custom`.

#![allow(dead_code)] // each bench uses part of it

pub mod apps;

use std::sync::Barrier;
use std::time::Duration;

/// The CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`). The benches time with it
/// rather than with the wall clock: on these shared machines (two cores, several engineers'
/// builds) a thread is often descheduled in the middle of a timed block, and wall time counts
/// that wait as if the code under test had taken it; CPU time does not. (What load still
/// does, caches warmed by someone else's process, hits both sides of an interleaved round.)
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `op(thread, i)` for `i in 0..iters` on each of `threads` threads at once (released
/// together; thread start-up is not counted), and returns the CPU time each thread used, on
/// average ([`thread_cpu`]). Each thread does `iters` operations, so the result is the time
/// per operation *per thread*: flat when threads scale perfectly, higher when they contend
/// (a contended compare-and-swap retries, a lock word bounces between the cores: all of it
/// CPU time).
pub fn run_threads<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    if threads == 1 {
        let start = thread_cpu();
        for i in 0..iters {
            op(0, i);
        }
        return thread_cpu() - start;
    }
    let barrier = Barrier::new(threads);
    let spent: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    barrier.wait();
                    let start = thread_cpu();
                    for i in 0..iters {
                        op(t, i);
                    }
                    thread_cpu() - start
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    spent.iter().sum::<Duration>() / threads as u32
}

/// Runs the `variants` in turns: `rounds` rounds, each running every variant once for a block
/// of operations sized to take about `block` (calibrated on the first variant). Each variant
/// is `f(iters) -> elapsed`. Returns, per variant, the ns per operation of each round.
pub fn interleaved(rounds: usize, block: Duration, variants: &[&dyn Fn(u64) -> Duration]) -> Vec<Vec<f64>> {
    let mut iters = 16u64;
    while variants[0](iters) < block / 2 && iters < 1 << 32 {
        iters *= 2;
    }
    let mut per_op = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        // Alternate the order, so neither side always runs right after the other.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..variants.len()).collect() } else { (0..variants.len()).rev().collect() };
        for i in order {
            let elapsed = variants[i](iters);
            per_op[i].push(elapsed.as_nanos() as f64 / iters as f64);
        }
    }
    per_op
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The median over rounds of `a[i] / b[i]`.
pub fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    median(&ratios)
}

/// One line of a closing table: a case, tollgate's and its peer's ns per operation per round.
pub struct Pair {
    pub label: String,
    pub ours: Vec<f64>,
    pub peer: Vec<f64>,
}

/// Prints each pair's medians and the median of its per-round ratios, and whether that meets
/// `target` (ours / peer ≤ target).
pub fn print_ratios(title: &str, ours_name: &str, peer_name: &str, pairs: &[Pair], target: f64) {
    println!();
    println!("## {title}");
    println!();
    println!("| case | {ours_name} ns/op | {peer_name} ns/op | ratio | target ≤ {target} |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for pair in pairs {
        let ratio = median_ratio(&pair.ours, &pair.peer);
        let verdict = if ratio <= target { "met" } else { "NOT met" };
        println!(
            "| {} | {:.1} | {:.1} | {ratio:.2} | {verdict} |",
            pair.label,
            median(&pair.ours),
            median(&pair.peer)
        );
    }
    println!();
}

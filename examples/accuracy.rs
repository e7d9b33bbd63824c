//! How far the sliding-window counter and the sliding log are from the exact sliding window,
//! on replayed traces: the accuracy table of BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release --example accuracy
//! ```
//!
//! Each trace is a list of requests of cost 1 offered to one client. It is replayed, on its
//! own, through four deciders with a manual clock (the instants of the trace):
//!
//! * **exact**: the definition, by brute force: a request at `t` is admitted iff fewer than
//!   `burst` admissions lie in `(t − w, t]`, `w` = burst ÷ rate;
//! * **log**: `algorithm = "sliding_log"` ([`tollgate::algorithm::Log`]);
//! * **counter**: `algorithm = "sliding_window"` ([`Rule`] with [`Algorithm::SlidingWindow`]);
//! * **textbook**: the two-window estimate the counter used before issue 12
//!   (`cur + prev · (w − e) / w`, the previous window weighted by its overlap), for comparison.
//!
//! For each it reports the share of decisions that differ from the exact one (admitted where
//! the definition refuses, or refused where it admits) and the most admissions in any interval
//! of length `w` (at most `burst` is what the definition promises). The program checks what
//! the documentation claims and exits non-zero if any of it fails: the log never differs, the
//! counter never refuses a client at exactly the rate, and it never admits more than
//! `2 · burst` in an interval of `w`. Traces come from a fixed seed: the table is the same on
//! every run.

use std::process::ExitCode;

use tollgate::algorithm::{Algorithm, Log, Quota, Rule};
use tollgate::clock::Nanos;

/// Ten tokens a second: one every 100 ms.
const RATE_PER_SECOND: u64 = 10;
/// Requests per trace (about).
const REQUESTS: usize = 20_000;
/// An instant on a multiple of every window used here, so traces start on a window edge.
const START: u64 = 1_700_000_000 * 1_000_000_000;

/// One decider of requests of cost 1.
trait Decider {
    /// Would a request at `at` be admitted? Changes nothing.
    fn decide(&self, at: u64) -> bool;
    /// Counts an admission at `at` (its own, or one the definition made).
    fn record(&mut self, at: u64);
    /// Decides, and counts the request when admitted.
    fn admit(&mut self, at: u64) -> bool {
        let ok = self.decide(at);
        if ok {
            self.record(at);
        }
        ok
    }
}

/// The definition, by brute force.
struct Exact {
    burst: usize,
    w: u64,
    admitted: Vec<u64>,
}

impl Decider for Exact {
    fn decide(&self, at: u64) -> bool {
        self.admitted.iter().rev().take_while(|&&t| t + self.w > at).count() < self.burst
    }

    fn record(&mut self, at: u64) {
        self.admitted.push(at);
    }
}

struct Counter {
    rule: Rule,
    state: u64,
}

impl Decider for Counter {
    fn decide(&self, at: u64) -> bool {
        self.rule.check(self.state, Nanos::new(at), 1).new_state().is_some()
    }

    fn record(&mut self, at: u64) {
        // One more in the current window, as an admission counts it, admitted or not.
        self.state = self.rule.settle(self.state, Nanos::new(at), self.state, 0, 1, false).state;
    }
}

struct SlidingLog {
    quota: Quota,
    log: Log,
}

impl Decider for SlidingLog {
    fn decide(&self, at: u64) -> bool {
        self.log.peek(&self.quota, Nanos::new(at)).remaining >= 1
    }

    fn record(&mut self, at: u64) {
        let at = Nanos::new(at);
        if self.log.check(&self.quota, at, 1, Nanos::ZERO).new_state().is_none() {
            self.log.settle(&self.quota, at, at, 0, 1);
        }
    }
}

/// The estimate before the fix: the previous window's count weighted by the share of it that
/// still overlaps the last `w`, which is never 0 inside the current window.
struct Textbook {
    burst: u64,
    w: u64,
    index: u64,
    prev: u64,
    cur: u64,
}

impl Textbook {
    /// (previous, current) counts as of the window of `at`.
    fn counts(&self, at: u64) -> (u64, u64) {
        let index = at / self.w;
        if index == self.index {
            (self.prev, self.cur)
        } else if index == self.index + 1 {
            (self.cur, 0)
        } else {
            (0, 0)
        }
    }
}

impl Decider for Textbook {
    fn decide(&self, at: u64) -> bool {
        let (prev, cur) = self.counts(at);
        let e = u128::from(at % self.w);
        let w = u128::from(self.w);
        // cur + prev · (w − e) / w + 1 ≤ burst, in integers.
        let used = u128::from(cur) * w + u128::from(prev) * (w - e);
        used + w <= u128::from(self.burst) * w
    }

    fn record(&mut self, at: u64) {
        (self.prev, self.cur) = self.counts(at);
        self.index = at / self.w;
        self.cur += 1;
    }
}

/// The most instants of `admitted` (sorted) in any interval `[s, s + w)`.
fn worst_in_any_w(admitted: &[u64], w: u64) -> usize {
    let mut worst = 0;
    let mut first = 0;
    for (last, &t) in admitted.iter().enumerate() {
        while admitted[first] + w <= t {
            first += 1;
        }
        worst = worst.max(last + 1 - first);
    }
    worst
}

/// Exponential gaps with mean `mean` nanoseconds.
fn poisson(rng: &mut fastrand::Rng, mean: f64, n: usize) -> Vec<u64> {
    let mut at = START;
    (0..n)
        .map(|_| {
            // 1 − U is in (0, 1]: its logarithm is finite.
            at += (-(1.0 - rng.f64()).ln() * mean).round() as u64;
            at
        })
        .collect()
}

/// The traces: a name, and the instants of its requests.
fn traces(quota: &Quota, seed: u64) -> Vec<(&'static str, Vec<u64>)> {
    let t = quota.emission().as_nanos();
    let w = quota.refill_time().as_nanos();
    let b = quota.burst();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mean = t as f64;
    let mut out = vec![
        ("Poisson, 0.5× the rate", poisson(&mut rng, 2.0 * mean, REQUESTS)),
        ("Poisson, 1× the rate", poisson(&mut rng, mean, REQUESTS)),
        ("Poisson, 2× the rate", poisson(&mut rng, 0.5 * mean, REQUESTS)),
    ];
    // On for w at 4× the rate (Poisson), then off for 2w: 4/3 of the rate on average.
    let mut on_off = Vec::new();
    let mut phase = START;
    while on_off.len() < REQUESTS {
        let mut at = phase;
        loop {
            at += (-(1.0 - rng.f64()).ln() * mean / 4.0).round() as u64;
            if at >= phase + w {
                break;
            }
            on_off.push(at);
        }
        phase += 3 * w;
    }
    out.push(("on/off: w at 4×, then 2w off", on_off));
    // One emission interval apart, from a random phase.
    let offset = rng.u64(0..t);
    out.push(("exactly the rate", (0..REQUESTS as u64).map(|i| START + offset + i * t).collect()));
    // The fixed-window exploit: a burst just before a window edge, another just after; again
    // every 4 windows.
    let mut edge = Vec::new();
    let mut window = START + w;
    while edge.len() < REQUESTS {
        edge.extend((0..b).map(|i| window - b + i)); // the last `b` nanoseconds before the edge
        edge.extend((0..b).map(|i| window + i)); // and the first after it
        window += 4 * w;
    }
    out.push(("window edge: burst before, burst after", edge));
    // The counter's own worst case: a burst at the end of one window, then a burst in the last
    // emission interval of the next (where the previous window no longer counts).
    let mut last_slot = Vec::new();
    let mut window = START + w;
    while last_slot.len() < REQUESTS {
        last_slot.extend((0..b).map(|i| window - b + i));
        last_slot.extend((0..b).map(|i| window + w - t + i));
        window += 4 * w;
    }
    out.push(("burst at an edge, burst in the next window's last slot", last_slot));
    out
}

struct Row {
    trace: &'static str,
    burst: u64,
    offered: usize,
    exact_admitted: usize,
    /// Per decider (counter, textbook, log), each on its own history: (differs, admitted where
    /// exact refused, refused where exact admitted, worst in any w).
    deciders: [(usize, usize, usize, usize); 3],
    /// Per decider, on the definition's history: decisions that differ.
    same_history: [usize; 3],
    exact_worst: usize,
}

fn deciders(quota: Quota) -> (Exact, Counter, Textbook, SlidingLog) {
    let w = quota.refill_time().as_nanos();
    (
        Exact { burst: quota.burst() as usize, w, admitted: Vec::new() },
        Counter { rule: Rule::new(Algorithm::SlidingWindow, quota), state: 0 },
        Textbook { burst: quota.burst(), w, index: 0, prev: 0, cur: 0 },
        SlidingLog { quota, log: Log::default() },
    )
}

/// Each decider on its own: what the definition decides, and what each of them does.
fn replay(quota: Quota, trace: &[u64]) -> (Vec<bool>, Vec<[bool; 3]>) {
    let (mut exact, mut counter, mut textbook, mut log) = deciders(quota);
    let mut expected = Vec::with_capacity(trace.len());
    let mut decided = Vec::with_capacity(trace.len());
    for &at in trace {
        expected.push(exact.admit(at));
        decided.push([counter.admit(at), textbook.admit(at), log.admit(at)]);
    }
    (expected, decided)
}

/// Every decider fed the definition's admissions: how many single decisions differ from it,
/// with no drift between histories.
fn replay_on_the_definitions_history(quota: Quota, trace: &[u64]) -> [usize; 3] {
    let (mut exact, mut counter, mut textbook, mut log) = deciders(quota);
    let mut differ = [0; 3];
    for &at in trace {
        let ok = exact.decide(at);
        for (n, decider) in [&counter as &dyn Decider, &textbook, &log].into_iter().enumerate() {
            differ[n] += usize::from(decider.decide(at) != ok);
        }
        if ok {
            exact.record(at);
            counter.record(at);
            textbook.record(at);
            log.record(at);
        }
    }
    differ
}

fn row(trace_name: &'static str, quota: Quota, trace: &[u64]) -> Row {
    let w = quota.refill_time().as_nanos();
    let (expected, decided) = replay(quota, trace);
    let admitted_by = |pick: &dyn Fn(usize) -> bool| -> Vec<u64> {
        trace.iter().enumerate().filter(|&(i, _)| pick(i)).map(|(_, &t)| t).collect()
    };
    let mut deciders = [(0, 0, 0, 0); 3];
    for (d, out) in deciders.iter_mut().enumerate() {
        let more = (0..trace.len()).filter(|&i| decided[i][d] && !expected[i]).count();
        let fewer = (0..trace.len()).filter(|&i| !decided[i][d] && expected[i]).count();
        let worst = worst_in_any_w(&admitted_by(&|i| decided[i][d]), w);
        *out = (more + fewer, more, fewer, worst);
    }
    Row {
        trace: trace_name,
        burst: quota.burst(),
        offered: trace.len(),
        exact_admitted: expected.iter().filter(|&&ok| ok).count(),
        deciders,
        same_history: replay_on_the_definitions_history(quota, trace),
        exact_worst: worst_in_any_w(&admitted_by(&|i| expected[i]), w),
    }
}

fn percent(n: usize, of: usize) -> String {
    let p = 100.0 * n as f64 / of as f64;
    if n == 0 {
        "0".to_owned()
    } else if p < 0.01 {
        "<0.01".to_owned()
    } else {
        format!("{p:.2}")
    }
}

fn main() -> ExitCode {
    let mut failures = Vec::new();
    println!(
        "| trace | burst | requests | exact admits | counter: % differ (+more / −fewer) | \
         textbook: % differ (+more / −fewer) | log: % differ | same history: counter / textbook / log | \
         most in any w: exact / counter / textbook / log |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, burst) in [1u64, 10, 100].into_iter().enumerate() {
        let quota = Quota::new(RATE_PER_SECOND, Nanos::SECOND, burst).expect("a valid quota");
        for (name, trace) in traces(&quota, 0x7011_6a7e + i as u64) {
            let r = row(name, quota, &trace);
            let [counter, textbook, log] = r.deciders;
            let differ = |(d, more, fewer, _): (usize, usize, usize, usize)| {
                format!(
                    "{} (+{} / −{})",
                    percent(d, r.offered),
                    percent(more, r.offered),
                    percent(fewer, r.offered)
                )
            };
            let [same_counter, same_textbook, same_log] = r.same_history.map(|n| percent(n, r.offered));
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {same_counter} / {same_textbook} / {same_log} | {} / {} / {} / {} |",
                r.trace,
                r.burst,
                r.offered,
                r.exact_admitted,
                differ(counter),
                differ(textbook),
                percent(log.0, r.offered),
                r.exact_worst,
                counter.3,
                textbook.3,
                log.3,
            );
            let b = burst as usize;
            if log.0 != 0 || r.same_history[2] != 0 || log.3 > b || r.exact_worst > b {
                failures.push(format!("{name}, burst {burst}: the log is not the definition"));
            }
            if counter.3 > 2 * b {
                failures
                    .push(format!("{name}, burst {burst}: the counter admitted more than 2 · burst in w"));
            }
            if name == "exactly the rate" && (counter.2 != 0 || r.exact_admitted != r.offered) {
                failures.push(format!("{name}, burst {burst}: a client at the rate was refused"));
            }
        }
    }
    println!(
        "\nRate {RATE_PER_SECOND}/s (w = burst ÷ rate: 0.1 s, 1 s, 10 s); requests of cost 1; \
         \"+more\": admitted where the definition refuses, \"−fewer\": refused where it admits; \
         \"same history\": every decider fed the definition's admissions."
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for failure in &failures {
            eprintln!("FAILED: {failure}");
        }
        ExitCode::FAILURE
    }
}

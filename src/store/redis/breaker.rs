//! The circuit breaker: once Redis is known down, stop paying a timeout per request.
//!
//! * **Closed**: every request goes to Redis. `threshold` failures in a row (timeouts, I/O
//!   errors, bad answers) open it.
//! * **Open**: no request goes to Redis; the store answers at once (in-process fallback, or a
//!   fault for the layer's `allow`/`deny`). Every `probe_interval`, exactly one request is let
//!   through as a probe: its success closes the breaker, its failure keeps it open for another
//!   interval. So a dead Redis costs one timeout per interval, not one per request.
//!
//! Lock-free: two atomics, and time is passed in (nanoseconds, from the store's clock), so tests
//! drive it with a manual clock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::clock::Nanos;

/// What the breaker lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Closed: ask Redis.
    Ask,
    /// Open, and this request is the probe: ask Redis.
    Probe,
    /// Open: do not ask Redis.
    Refuse,
}

/// A transition, for the caller to count and log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    Opened,
    Closed,
}

#[derive(Debug)]
pub(super) struct Breaker {
    threshold: u32,
    probe_interval: Nanos,
    /// Failures since the last success.
    failures: AtomicU32,
    /// 0 while closed; else the earliest time of the next probe (nanoseconds since the epoch).
    open_until: AtomicU64,
}

impl Breaker {
    /// Opens after `threshold` failures in a row (at least 1); probes every `probe_interval`
    /// (at least 1 ns).
    pub(super) fn new(threshold: u32, probe_interval: Nanos) -> Self {
        Self {
            threshold: threshold.max(1),
            probe_interval: probe_interval.max(Nanos::new(1)),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    /// May a request made at `now` ask Redis?
    #[inline]
    pub(super) fn gate(&self, now: Nanos) -> Gate {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Gate::Ask;
        }
        if now.as_nanos() >= until
            && self
                .open_until
                .compare_exchange(until, self.next_probe(now), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Gate::Probe;
        }
        Gate::Refuse
    }

    /// Redis answered.
    #[inline]
    pub(super) fn success(&self) -> Option<Transition> {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Acquire) != 0 && self.open_until.swap(0, Ordering::AcqRel) != 0 {
            return Some(Transition::Closed);
        }
        None
    }

    /// Redis failed to answer a request made under a permit, at `now`.
    pub(super) fn failure(&self, now: Nanos) -> Option<Transition> {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if failures >= self.threshold
            && self
                .open_until
                .compare_exchange(0, self.next_probe(now), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Some(Transition::Opened);
        }
        None
    }

    /// True while open.
    pub(super) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    fn next_probe(&self, now: Nanos) -> u64 {
        now.saturating_add(self.probe_interval).as_nanos().max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    const MS: Nanos = Nanos::new(1_000_000);

    fn setup() -> (Breaker, ManualClock) {
        (Breaker::new(3, 250 * MS), ManualClock::new(Duration::from_secs(1_700_000_000)))
    }

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let (breaker, clock) = setup();
        assert_eq!(breaker.gate(clock.now()), Gate::Ask);
        assert_eq!(breaker.failure(clock.now()), None);
        assert_eq!(breaker.failure(clock.now()), None);
        assert!(!breaker.is_open());
        assert_eq!(breaker.failure(clock.now()), Some(Transition::Opened));
        assert!(breaker.is_open());
        assert_eq!(breaker.gate(clock.now()), Gate::Refuse);
        // More failures (requests that were in flight) do not reopen it.
        assert_eq!(breaker.failure(clock.now()), None);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (breaker, clock) = setup();
        breaker.failure(clock.now());
        breaker.failure(clock.now());
        assert_eq!(breaker.success(), None);
        breaker.failure(clock.now());
        breaker.failure(clock.now());
        assert!(!breaker.is_open());
        assert_eq!(breaker.failure(clock.now()), Some(Transition::Opened));
    }

    #[test]
    fn lets_one_probe_through_per_interval() {
        let (breaker, clock) = setup();
        for _ in 0..3 {
            breaker.failure(clock.now());
        }
        clock.advance(Duration::from_millis(249));
        assert_eq!(breaker.gate(clock.now()), Gate::Refuse);
        clock.advance(Duration::from_millis(1));
        assert_eq!(breaker.gate(clock.now()), Gate::Probe);
        // Only one probe per interval, even while the first is in flight.
        assert_eq!(breaker.gate(clock.now()), Gate::Refuse);
        // The probe fails: still open, next probe one interval later.
        assert_eq!(breaker.failure(clock.now()), None);
        assert!(breaker.is_open());
        clock.advance(Duration::from_millis(200));
        assert_eq!(breaker.gate(clock.now()), Gate::Refuse);
        clock.advance(Duration::from_millis(50));
        assert_eq!(breaker.gate(clock.now()), Gate::Probe);
        // This probe succeeds: closed, every request asks again.
        assert_eq!(breaker.success(), Some(Transition::Closed));
        assert!(!breaker.is_open());
        assert_eq!(breaker.gate(clock.now()), Gate::Ask);
        assert_eq!(breaker.success(), None);
    }

    #[test]
    fn reopening_needs_the_threshold_again() {
        let (breaker, clock) = setup();
        for _ in 0..3 {
            breaker.failure(clock.now());
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(breaker.gate(clock.now()), Gate::Probe);
        assert_eq!(breaker.success(), Some(Transition::Closed));
        assert_eq!(breaker.failure(clock.now()), None);
        assert_eq!(breaker.failure(clock.now()), None);
        assert_eq!(breaker.failure(clock.now()), Some(Transition::Opened));
    }

    #[test]
    fn works_at_time_zero() {
        let breaker = Breaker::new(1, Nanos::new(10));
        assert_eq!(breaker.failure(Nanos::ZERO), Some(Transition::Opened));
        assert_eq!(breaker.gate(Nanos::ZERO), Gate::Refuse);
        assert_eq!(breaker.gate(Nanos::new(10)), Gate::Probe);
    }
}

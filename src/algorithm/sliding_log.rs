//! The sliding log: the exact sliding window.
//!
//! A request of cost `n` at `now` is admitted iff the cost admitted in `(now − W, now]`, plus
//! `n`, is at most `burst` (`W = burst × emission`, the nominal `burst ÷ rate` rounded up to
//! whole nanoseconds per token). Then, and only then, in *any* interval of length `W` at most
//! `burst` is admitted, and nothing the definition admits is refused (both property-tested).
//!
//! A [`Log`] keeps the admissions still inside the window, oldest first, as runs of
//! `(instant, cost)` (requests at the same instant share a run). Everything a decision needs
//! is at the front or the back:
//! * entries at or before `now − W` are dropped from the front;
//! * a request that does not fit waits until enough of the oldest cost has left:
//!   `excess = used + n − burst` tokens, i.e. until the run that completes `excess` is `W` old;
//! * `t` (the next token) is when the oldest run leaves, and the log is empty (full quota)
//!   `W` after its newest run.
//!
//! **Reserving ahead** works as for the token bucket: a request allowed to wait is entered at
//! the instant it will be released, never before the newest entry, so held requests come out
//! in arrival order, and any interval of length `W` still holds at most `burst` (an entry at
//! `t ≥` every other only has to fit `(t − W, t]`).
//!
//! **Memory** is proportional to what the window holds: at most `burst` runs of 16 bytes per
//! key, and the work of a decision is proportional to the runs it reads (one, for cost 1). This
//! is why a sliding log is refused above a burst of [`SLIDING_LOG_MAX_BURST`](super::SLIDING_LOG_MAX_BURST):
//! 160 KB per busy client in memory (and 10 000 sorted-set members in Redis) is already a lot,
//! and the token bucket holds any burst in 8 bytes.

use std::collections::VecDeque;

use super::{Check, Quota};
use crate::clock::Nanos;

/// Requests admitted at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// When (nanoseconds since the epoch): the instant admitted, or released when held.
    at: u64,
    /// Their total cost.
    cost: u64,
}

/// One key's sliding log for one policy: the admissions inside the window, oldest first.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::{Log, Quota};
/// use tollgate::clock::Nanos;
///
/// // 2 per second, burst 2: a window of one second.
/// let quota = Quota::per_second(nonzero!(2u32));
/// let mut log = Log::default();
/// let now = Nanos::from_secs(1_000);
/// assert!(log.check(&quota, now, 1, Nanos::ZERO).new_state().is_some());
/// assert!(log.check(&quota, now + Nanos::from_millis(400), 1, Nanos::ZERO).new_state().is_some());
/// let refused = log.check(&quota, now + Nanos::from_millis(900), 1, Nanos::ZERO);
/// assert!(refused.new_state().is_none());
/// // The first request leaves the window one second after it was admitted.
/// assert_eq!(refused.retry_after, Nanos::from_millis(100));
/// assert!(log.check(&quota, now + Nanos::SECOND, 1, Nanos::ZERO).new_state().is_some());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Log {
    runs: VecDeque<Run>,
    /// The sum of the runs' costs.
    total: u64,
}

impl Log {
    /// Decides a request of `cost` at `now` that may wait up to `max_wait` for room, and
    /// records it when admitted. On admission, [`Check::new_state`] is the instant the request
    /// was entered at (its receipt, for [`settle`](Self::settle)); [`Check::wait`] is how long
    /// it is held first.
    pub fn check(&mut self, quota: &Quota, now: Nanos, cost: u64, max_wait: Nanos) -> Check {
        let w = quota.refill_time().as_nanos();
        let now = now.as_nanos();
        self.forget(now, w);
        let burst = quota.burst();
        if cost > burst {
            let (available, next, reset) = self.standing(burst, now, w);
            return Check::never(available, reset, next);
        }
        let at = self.earliest(burst, now, w, cost);
        let wait = at - now;
        if wait > 0 && wait > max_wait.as_nanos() {
            let (available, next, reset) = self.standing(burst, now, w);
            return Check::deny(available, reset, wait, next);
        }
        self.push(at, cost);
        let (remaining, next, reset) = self.standing(burst, now, w);
        let check = Check::admit(at, remaining, reset, next);
        if wait > 0 {
            check.held(wait)
        } else {
            check
        }
    }

    /// The instant at which `cost` fits at the earliest (at or after `now`, and never before
    /// the newest entry, so entries stay in order), for a tier whose policies must all be
    /// charged at one instant.
    pub fn earliest_at(&mut self, quota: &Quota, now: Nanos, cost: u64) -> Nanos {
        let w = quota.refill_time().as_nanos();
        self.forget(now.as_nanos(), w);
        Nanos::new(self.earliest(quota.burst(), now.as_nanos(), w, cost.min(quota.burst())))
    }

    /// Enters `cost` at `at` (from [`earliest_at`](Self::earliest_at) of this log or later,
    /// under the same lock) and reports the standing at `now`.
    pub fn charge_at(&mut self, quota: &Quota, now: Nanos, cost: u64, at: Nanos) -> Check {
        let w = quota.refill_time().as_nanos();
        let (now, at) = (now.as_nanos(), at.as_nanos().max(now.as_nanos()));
        debug_assert!(at >= self.earliest(quota.burst(), now, w, cost.min(quota.burst())));
        self.push(at, cost);
        let (remaining, next, reset) = self.standing(quota.burst(), now, w);
        let check = Check::admit(at, remaining, reset, next);
        if at > now {
            check.held(at - now)
        } else {
            check
        }
    }

    /// The standing at `now` without charging anything (a request of cost 0).
    pub fn peek(&self, quota: &Quota, now: Nanos) -> Check {
        let w = quota.refill_time().as_nanos();
        let (available, next, reset) = self.standing(quota.burst(), now.as_nanos(), w);
        Check::admit(0, available, reset, next)
    }

    /// The fraction of the burst available at `now`, in `[0, 1]`.
    pub fn fraction(&self, quota: &Quota, now: Nanos) -> f64 {
        let w = quota.refill_time().as_nanos();
        let burst = quota.burst();
        let used = self.total - self.expired(now.as_nanos(), w);
        burst.saturating_sub(used) as f64 / burst as f64
    }

    /// A request entered at `receipt` (its [`Check::new_state`]) for `charged` turned out to
    /// cost `actual`. A refund takes the difference out of its own entry, if that is still in
    /// the window (once it has left, the request no longer counts anyway); an extra charge is
    /// entered at the back (`now`, or the newest entry's instant when requests are held),
    /// capped at `burst`: any more would change nothing, as the client waits until that entry
    /// leaves either way.
    pub fn settle(&mut self, quota: &Quota, now: Nanos, receipt: Nanos, charged: u64, actual: u64) {
        let w = quota.refill_time().as_nanos();
        let now = now.as_nanos();
        self.forget(now, w);
        if actual < charged {
            let mut back = charged - actual;
            if let Ok(i) = self.runs.binary_search_by_key(&receipt.as_nanos(), |r| r.at) {
                let run = &mut self.runs[i];
                back = back.min(run.cost);
                run.cost -= back;
                self.total -= back;
                if run.cost == 0 {
                    self.runs.remove(i);
                }
            }
        } else if actual > charged {
            let extra = (actual - charged).min(quota.burst());
            let at = self.runs.back().map_or(now, |r| r.at.max(now));
            self.push(at, extra);
        }
    }

    /// True when nothing is left in the window at `now`: the log can be forgotten.
    pub fn is_idle(&self, quota: &Quota, now: Nanos) -> bool {
        let w = quota.refill_time().as_nanos();
        self.runs.back().is_none_or(|r| r.at.saturating_add(w) <= now.as_nanos())
    }

    /// The tokens counted at `now`: admitted inside the window (and reserved ahead).
    pub fn used(&self, quota: &Quota, now: Nanos) -> u64 {
        self.total - self.expired(now.as_nanos(), quota.refill_time().as_nanos())
    }

    /// A log of `used` tokens (at most the burst) admitted at `now`: what a store makes of
    /// another algorithm's state when a reload makes a policy a sliding log (the tokens used
    /// carry over, and leave the window `w` from now).
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::{Log, Quota};
    /// use tollgate::clock::Nanos;
    ///
    /// let quota = Quota::per_second(nonzero!(5u32));
    /// let now = Nanos::from_secs(1_000);
    /// let log = Log::with_used(&quota, 3, now);
    /// assert_eq!(log.used(&quota, now), 3);
    /// assert_eq!(log.peek(&quota, now).remaining, 2);
    /// assert!(log.is_idle(&quota, now + Nanos::SECOND));
    /// ```
    pub fn with_used(quota: &Quota, used: u64, now: Nanos) -> Self {
        let mut log = Self::default();
        log.push(now.as_nanos(), used.min(quota.burst()));
        log
    }

    /// The runs kept (for memory accounting).
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Drops the runs that left the window (`at + W ≤ now`) and returns memory a burst left
    /// behind.
    fn forget(&mut self, now: u64, w: u64) {
        while let Some(front) = self.runs.front() {
            if front.at.saturating_add(w) > now {
                break;
            }
            self.total -= front.cost;
            self.runs.pop_front();
        }
        if self.runs.capacity() > 4 * self.runs.len() + 16 {
            self.runs.shrink_to(2 * self.runs.len());
        }
    }

    /// The cost at the front that has left the window at `now`, without dropping it.
    fn expired(&self, now: u64, w: u64) -> u64 {
        self.runs.iter().take_while(|r| r.at.saturating_add(w) <= now).map(|r| r.cost).sum()
    }

    /// The instant from which the oldest runs, `excess` tokens of them, have all left the
    /// window; `from` when nothing has to leave.
    fn when_left(&self, excess: u64, w: u64, from: u64) -> u64 {
        let mut left = 0;
        let mut at = from;
        for run in &self.runs {
            if left >= excess {
                break;
            }
            left += run.cost;
            at = at.max(run.at.saturating_add(w));
        }
        at
    }

    /// The instant from which `cost` fits (the runs up to `now − W` already dropped).
    fn earliest(&self, burst: u64, now: u64, w: u64, cost: u64) -> u64 {
        let newest = self.runs.back().map_or(now, |r| r.at.max(now));
        let excess = (self.total + cost).saturating_sub(burst);
        self.when_left(excess, w, newest)
    }

    fn push(&mut self, at: u64, cost: u64) {
        if cost == 0 {
            return;
        }
        self.total += cost;
        match self.runs.back_mut() {
            Some(back) if back.at == at => back.cost += cost,
            _ => self.runs.push_back(Run { at, cost }),
        }
    }

    /// Whole tokens available at `now`, the wait for one more (0 when all are), and the wait
    /// until all are (the runs before `now − W` already dropped, or skipped).
    fn standing(&self, burst: u64, now: u64, w: u64) -> (u64, u64, u64) {
        let expired = self.expired(now, w);
        let used = self.total - expired;
        let available = burst.saturating_sub(used);
        if available >= burst {
            return (available, 0, 0);
        }
        // One more token once `used − (burst − available) + 1` tokens have left.
        let excess = expired + used - (burst - available) + 1;
        let next = self.when_left(excess, w, now) - now;
        let reset = self.runs.back().map_or(now, |r| r.at.saturating_add(w)).saturating_sub(now);
        (available, next, reset)
    }
}

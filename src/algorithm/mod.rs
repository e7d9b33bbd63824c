//! The limiting algorithms: pure arithmetic on `(state, now, cost)`.
//!
//! Nothing here reads a clock, touches a map or does I/O. A key's whole state for one policy is
//! a single `u64`, so a store can keep it in one `AtomicU64` (the memory store) or one Redis
//! string (the Redis store) and update it with a compare-and-swap loop:
//!
//! * [`Algorithm::TokenBucket`] is GCRA, the token bucket written as one timestamp (the
//!   *theoretical arrival time*). Capacity `burst`, refilled continuously. Exact.
//! * [`Algorithm::SlidingWindow`] is the two-window weighted counter: windows of
//!   `burst / rate` seconds, at most `burst` requests estimated in any window.
//!
//! A state of `0` is "never seen": a full bucket, an empty window.
//!
//! ```
//! use tollgate::algorithm::{Algorithm, Quota, Rule};
//! use tollgate::clock::Nanos;
//!
//! let rule = Rule::new(Algorithm::TokenBucket, Quota::per_minute(60, 10).unwrap());
//! let now = Nanos::from_secs(1_000);
//! let first = rule.check(0, now, 3);
//! assert_eq!(first.new_state().is_some(), true);
//! assert_eq!(first.remaining, 7);
//! // An 11-token request can never fit a burst of 10.
//! assert!(rule.check(0, now, 11).exceeds());
//! ```

mod gcra;
mod sliding_window;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Nanos;

/// Which algorithm a policy uses.
///
/// ```
/// use tollgate::algorithm::Algorithm;
/// assert_eq!(Algorithm::default(), Algorithm::TokenBucket);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// A token bucket (GCRA): capacity `burst`, refilled continuously at the rate.
    #[default]
    TokenBucket,
    /// A sliding-window counter: at most `burst` requests in any window of `burst / rate`
    /// seconds, with the previous window weighted by how much of it still overlaps.
    SlidingWindow,
}

/// The largest burst a sliding-window policy can have (its counters are packed in 20 bits).
pub const SLIDING_WINDOW_MAX_BURST: u64 = (1 << 20) - 1;

/// How much a policy lets through: `burst` tokens of capacity, one token back every
/// [`emission_interval`](Quota::emission_interval).
///
/// ```
/// use tollgate::algorithm::Quota;
/// use tollgate::clock::Nanos;
///
/// let q = Quota::per_minute(30, 5).unwrap();
/// assert_eq!(q.burst(), 5);
/// assert_eq!(q.emission(), Nanos::from_secs(2));
/// assert_eq!(q.refill_time(), Nanos::from_secs(10));
/// assert!(Quota::per_minute(0, 5).is_none());
/// assert!(Quota::per_minute(30, 0).is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    burst: u64,
    /// Nanoseconds per token, rounded up so the rate is never exceeded.
    emission: u64,
}

/// The longest time a bucket may take to refill from empty (about 146 years): keeps all
/// arithmetic on nanosecond timestamps far from overflow.
const MAX_REFILL_NANOS: u64 = 1 << 62;

impl Quota {
    /// `count` tokens every `period`, with a capacity of `burst`. `None` when any is zero, when
    /// the rate is faster than one token per nanosecond, or the refill time absurdly long.
    pub fn new(count: u64, period: Duration, burst: u64) -> Option<Self> {
        let period = u64::try_from(period.as_nanos()).ok()?;
        if count == 0 || burst == 0 || period == 0 {
            return None;
        }
        let emission = period.div_ceil(count);
        Self::from_emission(emission, burst)
    }

    /// A quota from the interval between two tokens, in nanoseconds.
    pub(crate) fn from_emission(emission: u64, burst: u64) -> Option<Self> {
        if emission == 0 || burst == 0 {
            return None;
        }
        let refill = emission.checked_mul(burst)?;
        (refill <= MAX_REFILL_NANOS).then_some(Self { burst, emission })
    }

    /// `count` per second, capacity `burst`.
    pub fn per_second(count: u64, burst: u64) -> Option<Self> {
        Self::new(count, Duration::from_secs(1), burst)
    }

    /// `count` per minute, capacity `burst`.
    pub fn per_minute(count: u64, burst: u64) -> Option<Self> {
        Self::new(count, Duration::from_secs(60), burst)
    }

    /// `count` per hour, capacity `burst`.
    pub fn per_hour(count: u64, burst: u64) -> Option<Self> {
        Self::new(count, Duration::from_secs(3_600), burst)
    }

    /// `count` per day with a capacity of `count`: a daily quota that refills continuously
    /// over 24 hours (rolling, no midnight reset).
    pub fn per_day(count: u64) -> Option<Self> {
        Self::new(count, Duration::from_secs(86_400), count)
    }

    /// The capacity: how many cost-1 requests a full bucket admits back to back.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The time for one token to come back (the emission interval).
    pub fn emission(&self) -> Nanos {
        Nanos::new(self.emission)
    }

    /// The time to refill from empty to full.
    pub fn refill_time(&self) -> Nanos {
        Nanos::new(self.emission * self.burst)
    }

    /// Whole seconds to refill from empty, rounded up (the `w` of `RateLimit-Policy`).
    pub fn window_secs(&self) -> u64 {
        self.refill_time().as_secs_ceil()
    }
}

/// The answer of one policy to one request: admitted with a new state, denied, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    verdict: Verdict,
    /// Whole tokens left after this request (when admitted) or now (when not).
    pub remaining: u64,
    /// Until the bucket is full again (after this request, when admitted).
    pub reset_after: Nanos,
    /// Until this request would be admitted; zero when it is.
    pub retry_after: Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Admit(u64),
    Deny,
    Exceeds,
}

impl Check {
    // The algorithms compute in raw nanoseconds; these wrap their answers.

    pub(crate) fn admit(state: u64, remaining: u64, reset_after: u64) -> Self {
        Self {
            verdict: Verdict::Admit(state),
            remaining,
            reset_after: Nanos::new(reset_after),
            retry_after: Nanos::ZERO,
        }
    }

    pub(crate) fn deny(remaining: u64, reset_after: u64, retry_after: u64) -> Self {
        Self {
            verdict: Verdict::Deny,
            remaining,
            reset_after: Nanos::new(reset_after),
            retry_after: Nanos::new(retry_after.max(1)),
        }
    }

    pub(crate) fn never(remaining: u64, reset_after: u64) -> Self {
        Self {
            verdict: Verdict::Exceeds,
            remaining,
            reset_after: Nanos::new(reset_after),
            retry_after: Nanos::ZERO,
        }
    }

    /// The state to store when the request is admitted; `None` when it is not.
    pub fn new_state(&self) -> Option<u64> {
        match self.verdict {
            Verdict::Admit(state) => Some(state),
            _ => None,
        }
    }

    /// True when the request costs more than the burst: it can never be admitted.
    pub fn exceeds(&self) -> bool {
        self.verdict == Verdict::Exceeds
    }
}

/// An algorithm with its quota: everything needed to decide on one policy's state.
///
/// ```
/// use tollgate::algorithm::{Algorithm, Quota, Rule};
///
/// let rule = Rule::new(Algorithm::SlidingWindow, Quota::per_second(1, 2).unwrap());
/// let now = tollgate::clock::Nanos::from_secs(5);
/// let a = rule.check(0, now, 1).new_state().unwrap();
/// let b = rule.check(a, now, 1).new_state().unwrap();
/// assert!(rule.check(b, now, 1).new_state().is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    algorithm: Algorithm,
    quota: Quota,
}

impl Rule {
    /// A rule for `quota` under `algorithm`.
    ///
    /// # Panics
    /// When a sliding window's burst exceeds [`SLIDING_WINDOW_MAX_BURST`]; configuration
    /// validation refuses such a policy before it gets here.
    pub fn new(algorithm: Algorithm, quota: Quota) -> Self {
        assert!(
            algorithm != Algorithm::SlidingWindow || quota.burst <= SLIDING_WINDOW_MAX_BURST,
            "a sliding-window burst is at most {SLIDING_WINDOW_MAX_BURST}"
        );
        Self { algorithm, quota }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Decides whether `cost` tokens can be taken from `state` at `now`.
    #[inline]
    pub fn check(&self, state: u64, now: Nanos, cost: u64) -> Check {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::check(&self.quota, state, now, cost),
            Algorithm::SlidingWindow => sliding_window::check(&self.quota, state, now, cost),
        }
    }

    /// The fraction of the burst available at `now` (before any charge), in `[0, 1]`.
    #[inline]
    pub fn fraction(&self, state: u64, now: Nanos) -> f64 {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::fraction(&self.quota, state, now),
            Algorithm::SlidingWindow => sliding_window::fraction(&self.quota, state, now),
        }
    }

    /// Gives back `cost` tokens taken from a state (when a later policy of the same tier
    /// refused the request). Never gives back more than was taken.
    #[inline]
    pub fn refund(&self, state: u64, now: Nanos, cost: u64) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::refund(&self.quota, state, cost),
            Algorithm::SlidingWindow => sliding_window::refund(&self.quota, state, now, cost),
        }
    }

    /// True when `state` at `now` is indistinguishable from a never-seen key, so a store can
    /// forget it.
    #[inline]
    pub fn is_idle(&self, state: u64, now: Nanos) -> bool {
        match self.algorithm {
            Algorithm::TokenBucket => state <= now.as_nanos(),
            Algorithm::SlidingWindow => sliding_window::is_idle(&self.quota, state, now),
        }
    }
}

#[cfg(test)]
mod tests;

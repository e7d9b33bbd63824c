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
//! use nonzero_ext::nonzero;
//! use tollgate::algorithm::{Algorithm, Quota, Rule};
//! use tollgate::clock::Nanos;
//!
//! let rule = Rule::new(Algorithm::TokenBucket, Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)));
//! let now = Nanos::from_secs(1_000);
//! let first = rule.check(0, now, 3);
//! assert_eq!(first.new_state().is_some(), true);
//! assert_eq!(first.remaining, 7);
//! // An 11-token request can never fit a burst of 10.
//! assert!(rule.check(0, now, 11).exceeds());
//! ```

mod gcra;
mod sliding_window;

use std::num::NonZeroU32;

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
/// [`emission`](Quota::emission).
///
/// The common forms are `const` and cannot fail, as governor's are: a rate per second, minute,
/// hour or day over [`NonZeroU32`] (the burst starts equal to the rate), then
/// [`allow_burst`](Quota::allow_burst). [`Quota::new`] takes any count, period and burst and
/// says `None` for nonsense.
///
/// ```
/// use std::num::NonZeroU32;
/// use tollgate::algorithm::Quota;
/// use tollgate::clock::Nanos;
///
/// const THIRTY: NonZeroU32 = NonZeroU32::new(30).unwrap();
/// const FIVE: NonZeroU32 = NonZeroU32::new(5).unwrap();
/// const Q: Quota = Quota::per_minute(THIRTY).allow_burst(FIVE);
/// assert_eq!(Q.burst(), 5);
/// assert_eq!(Q.emission(), Nanos::from_secs(2));
/// assert_eq!(Q.refill_time(), Nanos::from_secs(10));
///
/// assert_eq!(Quota::new(30, Nanos::from_secs(60), 5), Some(Q));
/// assert_eq!(Quota::new(0, Nanos::from_secs(60), 5), None);
/// assert_eq!(Quota::new(30, Nanos::from_secs(60), 0), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    burst: u64,
    /// Nanoseconds per token, rounded up so the rate is never exceeded.
    emission: u64,
    /// Nanoseconds to refill from empty at the nominal rate, before the emission interval was
    /// rounded (rounded up to a nanosecond): what `w` shows, so a daily quota says 86400, never
    /// the 86401 that `emission × burst` would round to.
    window: u64,
}

/// The longest time a bucket may take to refill from empty (about 146 years): keeps all
/// arithmetic on nanosecond timestamps far from overflow.
const MAX_REFILL_NANOS: u64 = 1 << 62;

const SECOND: u64 = 1_000_000_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

impl Quota {
    /// `count` tokens every `period`, with a capacity of `burst`. `None` when any is zero, or
    /// when the refill time is absurdly long (over 146 years). A rate faster than one token per
    /// nanosecond is held to one per nanosecond.
    pub fn new(count: u64, period: impl Into<Nanos>, burst: u64) -> Option<Self> {
        let period = period.into().as_nanos();
        if count == 0 || burst == 0 || period == 0 {
            return None;
        }
        let window = u128::from(burst) * u128::from(period);
        let window = u64::try_from(window.div_ceil(u128::from(count))).ok()?;
        Self::checked(period.div_ceil(count), burst, window)
    }

    /// `rate` tokens (any positive number) every `period`, capacity `burst`: the configuration
    /// file's `requests_per_minute = 0.5`.
    pub(crate) fn from_rate(rate: f64, period: Nanos, burst: u64) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        if rate.fract() == 0.0 && rate <= u64::MAX as f64 {
            return Self::new(rate as u64, period, burst); // exact integer arithmetic
        }
        let period = period.as_nanos() as f64;
        let emission = (period / rate).ceil();
        let window = (burst as f64 * period / rate).round();
        if !(emission >= 1.0 && emission < MAX_REFILL_NANOS as f64 && window < MAX_REFILL_NANOS as f64) {
            return None;
        }
        Self::checked(emission as u64, burst, window as u64)
    }

    fn checked(emission: u64, burst: u64, window: u64) -> Option<Self> {
        let refill = emission.checked_mul(burst)?;
        (burst > 0 && refill <= MAX_REFILL_NANOS).then_some(Self { burst, emission, window })
    }

    /// `rate` tokens every `period` nanoseconds, capacity `rate`.
    const fn per(rate: NonZeroU32, period: u64) -> Self {
        let rate = rate.get() as u64;
        // `period` is at most a day and `rate` at most 2³²: the refill stays far below the cap.
        Self { burst: rate, emission: period.div_ceil(rate), window: period }
    }

    /// `count` per rolling day, with a capacity of `count`: the `requests_per_day` policy.
    pub(crate) fn daily(count: u64) -> Option<Self> {
        Self::new(count, Nanos::new(DAY), count)
    }

    /// `rate` per second, with a capacity of `rate` (see [`allow_burst`](Self::allow_burst)).
    pub const fn per_second(rate: NonZeroU32) -> Self {
        Self::per(rate, SECOND)
    }

    /// `rate` per minute, with a capacity of `rate`.
    pub const fn per_minute(rate: NonZeroU32) -> Self {
        Self::per(rate, MINUTE)
    }

    /// `rate` per hour, with a capacity of `rate`.
    pub const fn per_hour(rate: NonZeroU32) -> Self {
        Self::per(rate, HOUR)
    }

    /// `rate` per day with a capacity of `rate`: a daily quota that refills continuously over
    /// 24 hours (rolling, no midnight reset).
    pub const fn per_day(rate: NonZeroU32) -> Self {
        Self::per(rate, DAY)
    }

    /// The same rate with a capacity of `burst`.
    ///
    /// A bucket that would take more than about 146 years to refill from empty (one token a
    /// day with a burst above 53 000) is held to 146 years' worth of tokens.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use tollgate::algorithm::Quota;
    ///
    /// let seven = NonZeroU32::new(7).unwrap();
    /// let q = Quota::per_minute(seven).allow_burst(NonZeroU32::new(10).unwrap());
    /// assert_eq!(q.burst(), 10);
    /// assert_eq!(q.window_secs(), 86); // 10 tokens at 7 a minute: 85.7 s
    /// assert_eq!(Quota::per_day(seven).window_secs(), 86_400);
    /// ```
    pub const fn allow_burst(self, burst: NonZeroU32) -> Self {
        let mut burst = burst.get() as u64;
        if burst > MAX_REFILL_NANOS / self.emission {
            burst = MAX_REFILL_NANOS / self.emission;
        }
        // The nominal window scales with the burst: window / burst is the exact time per token.
        let window = (self.window as u128 * burst as u128).div_ceil(self.burst as u128) as u64;
        Self { burst, emission: self.emission, window }
    }

    /// The capacity: how many cost-1 requests a full bucket admits back to back.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// The time for one token to come back (the emission interval), rounded up to a
    /// nanosecond so the rate is never exceeded.
    pub const fn emission(&self) -> Nanos {
        Nanos::new(self.emission)
    }

    /// The time the arithmetic takes to refill from empty to full: `emission × burst`.
    pub const fn refill_time(&self) -> Nanos {
        Nanos::new(self.emission * self.burst)
    }

    /// The time to refill from empty at the nominal rate, before any rounding: `burst ÷ rate`.
    pub const fn window(&self) -> Nanos {
        Nanos::new(self.window)
    }

    /// Whole seconds to refill from empty at the nominal rate, rounded up: the `w` of
    /// `RateLimit-Policy`. Exactly 86400 for a daily quota, 3600 for an hourly one that fills
    /// in an hour: the nanosecond rounding of the emission interval never adds a second.
    pub const fn window_secs(&self) -> u64 {
        self.window().as_secs_ceil()
    }
}

/// The answer of one policy to one request: admitted with a new state, denied, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    kind: Kind,
    /// Whole tokens left after this request (when admitted) or now (when not).
    pub remaining: u64,
    /// Until the bucket is full again (after this request, when admitted).
    pub reset_after: Nanos,
    /// Until this request would be admitted; zero when it is.
    pub retry_after: Nanos,
    /// Until one more whole token is available than [`remaining`](Self::remaining) says
    /// (after this request, when admitted): the `t` of the `RateLimit` header. Zero when the
    /// bucket is full. Never more than [`retry_after`](Self::retry_after) of a refusal: the
    /// refused request needs at least that one more token.
    pub next_after: Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Admit(u64),
    Deny,
    Exceeds,
}

impl Check {
    // The algorithms compute in raw nanoseconds; these wrap their answers.

    pub(crate) fn admit(state: u64, remaining: u64, reset_after: u64, next_after: u64) -> Self {
        Self {
            kind: Kind::Admit(state),
            remaining,
            reset_after: Nanos::new(reset_after),
            retry_after: Nanos::ZERO,
            next_after: Nanos::new(next_after),
        }
    }

    pub(crate) fn deny(remaining: u64, reset_after: u64, retry_after: u64, next_after: u64) -> Self {
        Self {
            kind: Kind::Deny,
            remaining,
            reset_after: Nanos::new(reset_after),
            retry_after: Nanos::new(retry_after.max(1)),
            next_after: Nanos::new(next_after),
        }
    }

    pub(crate) fn never(remaining: u64, reset_after: u64, next_after: u64) -> Self {
        Self {
            kind: Kind::Exceeds,
            remaining,
            reset_after: Nanos::new(reset_after),
            retry_after: Nanos::ZERO,
            next_after: Nanos::new(next_after),
        }
    }

    /// The state to store when the request is admitted; `None` when it is not.
    pub fn new_state(&self) -> Option<u64> {
        match self.kind {
            Kind::Admit(state) => Some(state),
            _ => None,
        }
    }

    /// True when the request costs more than the burst: it can never be admitted.
    pub fn exceeds(&self) -> bool {
        self.kind == Kind::Exceeds
    }
}

/// An algorithm with its quota: everything needed to decide on one policy's state.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::{Algorithm, Quota, Rule};
///
/// let rule = Rule::new(Algorithm::SlidingWindow, Quota::per_second(nonzero!(1u32)).allow_burst(nonzero!(2u32)));
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

    /// `state`, kept under the rule `from`, as a state of this rule as of `at`: what a store
    /// does with a client's state when a reload changes its policy's rule (`at` is when the
    /// new rule took over). The tokens the client had used carry over: raising the burst gives
    /// the difference, and lowering it takes nothing back beyond the new burst (at worst the
    /// bucket is empty at `at`, and refills from there).
    ///
    /// * Token bucket to token bucket: the time to refill is scaled to the new rate (the same
    ///   tokens owed, rounded up), and held to one full bucket of the new rule.
    /// * Sliding window to sliding window with the same window: the counts are kept as they are
    ///   (the burst is only what they are compared with; counts above a lowered burst slide out
    ///   within two windows).
    /// * Anything else (another window, another algorithm): the tokens used (rounded up, at
    ///   most the new burst) are charged to the new rule at `at`; a sliding window counts them
    ///   in its current window.
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::{Algorithm, Quota, Rule};
    /// use tollgate::clock::Nanos;
    ///
    /// let now = Nanos::from_secs(1_000);
    /// let per_minute = |rate, burst| Rule::new(Algorithm::TokenBucket, Quota::per_minute(rate).allow_burst(burst));
    /// let five = per_minute(nonzero!(60u32), nonzero!(5u32));
    /// let used_3 = five.check(0, now, 3).new_state().unwrap();
    ///
    /// // The burst becomes 20: 17 left.
    /// let twenty = per_minute(nonzero!(60u32), nonzero!(20u32));
    /// assert_eq!(twenty.check(twenty.carry(&five, used_3, now), now, 0).remaining, 17);
    /// // The rate doubles too: still 3 used, 17 left.
    /// let faster = per_minute(nonzero!(120u32), nonzero!(20u32));
    /// assert_eq!(faster.check(faster.carry(&five, used_3, now), now, 0).remaining, 17);
    /// // The burst becomes 2: empty, the next token in one second.
    /// let two = per_minute(nonzero!(60u32), nonzero!(2u32));
    /// let check = two.check(two.carry(&five, used_3, now), now, 1);
    /// assert_eq!((check.remaining, check.retry_after), (0, Nanos::from_secs(1)));
    /// ```
    pub fn carry(&self, from: &Rule, state: u64, at: Nanos) -> u64 {
        if from.is_idle(state, at) {
            return 0;
        }
        match (from.algorithm, self.algorithm) {
            (Algorithm::TokenBucket, Algorithm::TokenBucket) => {
                gcra::carry(&from.quota, &self.quota, state, at)
            }
            (Algorithm::SlidingWindow, Algorithm::SlidingWindow)
                if from.quota.refill_time() == self.quota.refill_time() =>
            {
                state
            }
            _ => {
                let used = match from.algorithm {
                    Algorithm::TokenBucket => gcra::used(&from.quota, state, at),
                    Algorithm::SlidingWindow => sliding_window::used(&from.quota, state, at),
                };
                match self.algorithm {
                    Algorithm::TokenBucket => gcra::with_used(&self.quota, used, at),
                    Algorithm::SlidingWindow => sliding_window::with_used(&self.quota, used, at),
                }
            }
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

//! The limiting algorithms: pure arithmetic on `(state, now, cost)`.
//!
//! Nothing here reads a clock, touches a map or does I/O.
//!
//! * [`Algorithm::TokenBucket`] is GCRA, the token bucket written as one timestamp (the
//!   *theoretical arrival time*). Capacity `burst`, refilled continuously: in any interval of
//!   length `t`, at most `burst + rate · t`. Exact. It can reserve ahead (a request held until
//!   its tokens exist: `max_delay_ms`).
//! * [`Algorithm::SlidingWindow`] is the two-window counter: windows of `w = burst ÷ rate`,
//!   the previous one weighted by how much of it still overlaps the last `w`. At most `burst`
//!   per aligned window and at most `2 · burst` in any interval of length `w` (tight for any
//!   two-counter estimate); a client sending at the rate or slower is never refused. It cannot
//!   reserve ahead.
//! * [`Algorithm::SlidingLog`] is the exact sliding window: admitted iff the cost admitted in
//!   the last `w`, plus the request's own, is at most `burst`. At most `burst` in any interval
//!   of length `w`, and nothing the definition admits is refused. Its state is a [`Log`] of the
//!   admissions inside the window (memory proportional to the burst, which is why it is
//!   limited to [`SLIDING_LOG_MAX_BURST`]). It can reserve ahead.
//!
//! The token bucket's and the counter's whole state for one policy is a single `u64`, so a
//! store can keep it in one `AtomicU64` (the memory store) or one Redis string (the Redis
//! store) and update it with a compare-and-swap loop; [`Rule`] decides on it. A state of `0` is
//! "never seen": a full bucket, an empty window.
//!
//! **Settling.** A request charged up front may turn out to cost something else (a handler
//! reports it, or the route charges only failures): [`Rule::settle`] and [`Log::settle`] take
//! the receipt of the charge (the state it wrote, or the log entry's instant) and give back or
//! charge the difference. An extra charge may put the client in debt, which refill repays.
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
mod sliding_log;
mod sliding_window;

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

pub use sliding_log::Log;

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
    /// A sliding-window counter: windows of `burst / rate` seconds, the previous one weighted
    /// by how much of it still overlaps; at most `burst` per aligned window, at most
    /// `2 · burst` in any interval of that length, and never a refusal for a client at or
    /// below the rate.
    SlidingWindow,
    /// The exact sliding window (a log of admissions): at most `burst` in any interval of
    /// `burst / rate` seconds, and nothing refused that fits it.
    SlidingLog,
}

impl Algorithm {
    /// True when a request may be held until its tokens exist (`max_delay_ms`): the token
    /// bucket and the sliding log can reserve ahead; the counter cannot (it keeps counts, not
    /// times, so it has nowhere to put a future charge).
    ///
    /// ```
    /// use tollgate::algorithm::Algorithm;
    /// assert!(Algorithm::TokenBucket.reserves_ahead());
    /// assert!(Algorithm::SlidingLog.reserves_ahead());
    /// assert!(!Algorithm::SlidingWindow.reserves_ahead());
    /// ```
    pub fn reserves_ahead(self) -> bool {
        !matches!(self, Self::SlidingWindow)
    }

    /// `Ok` when this algorithm can enforce `quota`, else why not: a sliding log holds at most
    /// [`SLIDING_LOG_MAX_BURST`]; a sliding window at most [`SLIDING_WINDOW_MAX_BURST`], over a
    /// window long enough for its state to keep the window's full index (at a burst of `b`,
    /// `2^(2·bits(b))` ns: 1.05 ms at a burst of 1 000).
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::{Algorithm, Quota};
    ///
    /// let q = Quota::per_second(nonzero!(100u32)).allow_burst(nonzero!(20_000u32));
    /// assert!(Algorithm::TokenBucket.check_quota(&q).is_ok());
    /// assert!(Algorithm::SlidingLog.check_quota(&q).unwrap_err().contains("10000"));
    /// let fast = Quota::per_second(nonzero!(1_000_000u32)).allow_burst(nonzero!(1_000u32));
    /// assert!(Algorithm::SlidingWindow.check_quota(&fast).is_err());
    /// ```
    pub fn check_quota(self, quota: &Quota) -> Result<(), String> {
        match self {
            Self::TokenBucket => Ok(()),
            Self::SlidingWindow => sliding_window::fits(quota),
            Self::SlidingLog if quota.burst() > SLIDING_LOG_MAX_BURST => Err(format!(
                "a sliding log holds at most {SLIDING_LOG_MAX_BURST} (its memory grows with the burst: \
                 one entry per admission inside the window)"
            )),
            Self::SlidingLog => Ok(()),
        }
    }
}

/// The largest burst a sliding-window policy can have (its counters are packed in at most 20
/// bits each, next to the window's index).
pub const SLIDING_WINDOW_MAX_BURST: u64 = (1 << 20) - 1;

/// The largest burst a sliding-log policy can have: its memory per client is proportional to
/// the burst (up to 16 bytes per admission inside the window in memory, one sorted-set member
/// per token in Redis), and finding when a large cost fits reads that many entries.
pub const SLIDING_LOG_MAX_BURST: u64 = 10_000;

/// How far ahead of now a token bucket's TAT may be pushed by settled costs (about 146 years):
/// keeps the arithmetic far from overflow, whatever a handler reports.
pub(crate) const MAX_AHEAD: u64 = 1 << 62;

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
    /// How long an admitted request is held before it is released: its tokens were reserved
    /// ahead. Zero when it goes now (and for every refusal).
    pub wait: Nanos,
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
            wait: Nanos::ZERO,
        }
    }

    /// The same admission, released `wait` nanoseconds from now.
    pub(crate) fn held(mut self, wait: u64) -> Self {
        self.wait = Nanos::new(wait);
        self
    }

    pub(crate) fn deny(remaining: u64, reset_after: u64, retry_after: u64, next_after: u64) -> Self {
        Self {
            kind: Kind::Deny,
            remaining,
            reset_after: Nanos::new(reset_after),
            retry_after: Nanos::new(retry_after.max(1)),
            next_after: Nanos::new(next_after),
            wait: Nanos::ZERO,
        }
    }

    pub(crate) fn never(remaining: u64, reset_after: u64, next_after: u64) -> Self {
        Self {
            kind: Kind::Exceeds,
            remaining,
            reset_after: Nanos::new(reset_after),
            retry_after: Nanos::ZERO,
            next_after: Nanos::new(next_after),
            wait: Nanos::ZERO,
        }
    }

    /// The state to store when the request is admitted; `None` when it is not. For a
    /// [`Log`], the instant the request was entered at.
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

/// The outcome of [`Rule::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The state to store.
    pub state: u64,
    /// True when this refund slid the tokens of requests charged after the settled one (a
    /// token bucket, settling a request that was not the client's latest charge): the store
    /// remembers the instant, and refunds of requests charged before it are then left alone.
    pub shifted: bool,
}

/// An algorithm with its quota: everything needed to decide on one policy's `u64` state (the
/// token bucket's or the sliding-window counter's; a sliding log keeps a [`Log`] instead).
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
    /// When `algorithm` cannot enforce `quota` ([`Algorithm::check_quota`]); configuration
    /// validation refuses such a policy before it gets here.
    pub fn new(algorithm: Algorithm, quota: Quota) -> Self {
        if let Err(why) = algorithm.check_quota(&quota) {
            panic!("{why}");
        }
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
    ///
    /// Only for the algorithms whose state is a `u64`: a sliding log's state is a [`Log`]
    /// (for it this answers as for an empty window).
    #[inline]
    pub fn check(&self, state: u64, now: Nanos, cost: u64) -> Check {
        self.check_within(state, now, cost, Nanos::ZERO)
    }

    /// Decides a request that may wait up to `max_wait` for its tokens: when they exist by
    /// then, it is admitted now with its tokens reserved ahead and [`Check::wait`] says how long
    /// to hold it. A sliding-window counter cannot reserve ahead and decides as
    /// [`check`](Self::check) does.
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::{Algorithm, Quota, Rule};
    /// use tollgate::clock::Nanos;
    ///
    /// // 5 a second, burst 2: a token every 200 ms.
    /// let rule = Rule::new(Algorithm::TokenBucket, Quota::per_second(nonzero!(5u32)).allow_burst(nonzero!(2u32)));
    /// let now = Nanos::from_secs(1_000);
    /// let mut state = 0;
    /// for _ in 0..2 {
    ///     state = rule.check(state, now, 1).new_state().unwrap();
    /// }
    /// let held = rule.check_within(state, now, 1, Nanos::from_millis(500));
    /// assert_eq!(held.wait, Nanos::from_millis(200));
    /// let state = held.new_state().unwrap();
    /// // The next one queues behind it, 200 ms later.
    /// assert_eq!(rule.check_within(state, now, 1, Nanos::from_millis(500)).wait, Nanos::from_millis(400));
    /// // A wait beyond the delay is refused at once.
    /// assert!(rule.check_within(state, now, 3, Nanos::from_millis(500)).new_state().is_none());
    /// ```
    #[inline]
    pub fn check_within(&self, state: u64, now: Nanos, cost: u64, max_wait: Nanos) -> Check {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::check(&self.quota, state, now, cost, max_wait.as_nanos()),
            Algorithm::SlidingWindow => sliding_window::check(&self.quota, state, now, cost),
            Algorithm::SlidingLog => Log::default().check(&self.quota, now, cost, max_wait),
        }
    }

    /// Charges `cost` as if the request arrived at `at` (at or after `now`): what a tier whose
    /// other policy makes the request wait until `at` charges this one. Admitted iff it fits at
    /// `at`; the standing is reported at `now`. A counter cannot charge ahead: for it, `at`
    /// must be `now`.
    #[inline]
    pub fn check_at(&self, state: u64, now: Nanos, cost: u64, at: Nanos) -> Check {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::check_at(&self.quota, state, now, cost, at),
            Algorithm::SlidingWindow if at <= now => sliding_window::check(&self.quota, state, now, cost),
            Algorithm::SlidingWindow => {
                let check = sliding_window::check(&self.quota, state, now, cost);
                Check::deny(
                    check.remaining,
                    check.reset_after.as_nanos(),
                    (at - now).as_nanos(),
                    check.next_after.as_nanos(),
                )
            }
            Algorithm::SlidingLog => Log::default().check(&self.quota, now, cost, at.saturating_sub(now)),
        }
    }

    /// The fraction of the burst available at `now` (before any charge), in `[0, 1]`.
    #[inline]
    pub fn fraction(&self, state: u64, now: Nanos) -> f64 {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::fraction(&self.quota, state, now),
            Algorithm::SlidingWindow => sliding_window::fraction(&self.quota, state, now),
            Algorithm::SlidingLog => 1.0,
        }
    }

    /// Gives back `cost` tokens taken from a state at `now` (when a later policy of the same
    /// tier refused the request, at the same instant).
    #[inline]
    pub fn refund(&self, state: u64, now: Nanos, cost: u64) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::refund(&self.quota, state, cost),
            Algorithm::SlidingWindow => sliding_window::refund(&self.quota, state, now, cost),
            Algorithm::SlidingLog => state,
        }
    }

    /// A request whose charge wrote `receipt` (its [`Check::new_state`]) for `charged` tokens
    /// turned out to cost `actual`: the state with the difference given back or charged.
    ///
    /// `shifted` tells a token bucket whether a refund has slid this client's bucket since the
    /// charge (the returned [`Settled::shifted`] says whether this one did: a store remembers
    /// when, per client and policy). Never gives back more than "as if every request had cost
    /// its actual cost from the start" would: a token bucket refunds the part of the request's
    /// own tokens still outstanding (all of it for a request still held), and nothing when an
    /// earlier refund slid its slot; a counter refunds while the window it was counted in still
    /// counts. An extra charge is taken now and may leave the client in debt (a token bucket's
    /// debt is repaid by refill; a counter forgets it with the window).
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::{Algorithm, Quota, Rule};
    /// use tollgate::clock::Nanos;
    ///
    /// let rule = Rule::new(Algorithm::TokenBucket, Quota::per_second(nonzero!(1u32)).allow_burst(nonzero!(10u32)));
    /// let now = Nanos::from_secs(1_000);
    /// let receipt = rule.check(0, now, 5).new_state().unwrap();
    /// // It cost 2: 3 tokens back.
    /// let state = rule.settle(receipt, now, receipt, 5, 2, false).state;
    /// assert_eq!(rule.check(state, now, 0).remaining, 8);
    /// // It cost 25: 20 more, 10 of them owed.
    /// let state = rule.settle(receipt, now, receipt, 5, 25, false).state;
    /// assert_eq!(rule.check(state, now, 0).remaining, 0);
    /// assert_eq!(rule.check(state, now, 1).retry_after, Nanos::from_secs(16));
    /// ```
    #[inline]
    pub fn settle(
        &self,
        state: u64,
        now: Nanos,
        receipt: u64,
        charged: u64,
        actual: u64,
        shifted: bool,
    ) -> Settled {
        let (state, shifted) = match self.algorithm {
            Algorithm::TokenBucket => {
                gcra::settle(&self.quota, state, now, receipt, charged, actual, shifted)
            }
            Algorithm::SlidingWindow => {
                (sliding_window::settle(&self.quota, state, now, receipt, charged, actual), false)
            }
            Algorithm::SlidingLog => (state, false),
        };
        Settled { state, shifted }
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
    /// * A sliding log keeps a [`Log`], not a `u64`: a store converts logs itself (a log stays
    ///   a log; between a log and a `u64` state the tokens used carry over, see
    ///   [`Log::used`] and [`Log::with_used`]), and this answers 0 for them.
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
        if from.algorithm == Algorithm::SlidingLog || self.algorithm == Algorithm::SlidingLog {
            return 0;
        }
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
                // The counts are kept; their width follows the burst.
                sliding_window::recount(&from.quota, &self.quota, state, at)
            }
            _ => self.state_with_used(from.used(state, at), at),
        }
    }

    /// The tokens a `u64` state has used at `now` (whole, rounded up).
    pub(crate) fn used(&self, state: u64, now: Nanos) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::used(&self.quota, state, now),
            Algorithm::SlidingWindow => sliding_window::used(&self.quota, state, now),
            Algorithm::SlidingLog => 0,
        }
    }

    /// A `u64` state that has used `used` tokens at `now` (at most the burst).
    pub(crate) fn state_with_used(&self, used: u64, now: Nanos) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => gcra::with_used(&self.quota, used, now),
            Algorithm::SlidingWindow => sliding_window::with_used(&self.quota, used, now),
            Algorithm::SlidingLog => 0,
        }
    }

    /// True when `state` at `now` is indistinguishable from a never-seen key, so a store can
    /// forget it.
    #[inline]
    pub fn is_idle(&self, state: u64, now: Nanos) -> bool {
        match self.algorithm {
            Algorithm::TokenBucket => state <= now.as_nanos(),
            Algorithm::SlidingWindow => sliding_window::is_idle(&self.quota, state, now),
            Algorithm::SlidingLog => true,
        }
    }
}

#[cfg(test)]
mod tests;

//! GCRA: the token bucket as one timestamp.
//!
//! The state is the *theoretical arrival time* (TAT): the instant at which the bucket would be
//! full again. With `T` the emission interval and `τ = T · burst` the refill time, a request of
//! cost `n` at `now` is admitted iff `max(TAT, now) + n·T ≤ now + τ`, and then
//! `TAT ← max(TAT, now) + n·T`. A denial leaves the state untouched.
//!
//! The standing is read from `x = now + τ − max(TAT, now)`, the room left in nanoseconds:
//! `⌊x / T⌋` whole tokens, and the next one arrives in `T − x mod T` (none is awaited when the
//! bucket is full). Quotient and remainder come from one division.

use super::{Check, Quota};
use crate::clock::Nanos;

#[inline]
pub(super) fn check(quota: &Quota, tat: u64, now: Nanos, cost: u64) -> Check {
    let now = now.as_nanos();
    let t = quota.emission().as_nanos();
    let tau = quota.refill_time().as_nanos();
    let burst = quota.burst();
    let base = tat.max(now);
    let horizon = now + tau;
    // The standing at `tat`: whole tokens, and the wait for the next one. Only a refusal
    // reports the standing before the request (one division saved on the admitted path).
    let standing = |tat: u64| {
        let room = horizon.saturating_sub(tat);
        let (tokens, part) = (room / t, room % t);
        let next = if tokens >= burst { 0 } else { t - part };
        (tokens, next)
    };
    if cost > burst {
        let (available, next) = standing(base);
        return Check::never(available, base - now, next);
    }
    let new_tat = base + cost * t;
    if new_tat <= horizon {
        let (remaining, next) = standing(new_tat);
        Check::admit(new_tat, remaining, new_tat - now, next)
    } else {
        let (available, next) = standing(base);
        Check::deny(available, base - now, new_tat - horizon, next)
    }
}

#[inline]
pub(super) fn fraction(quota: &Quota, tat: u64, now: Nanos) -> f64 {
    let tau = quota.refill_time().as_nanos();
    let used = tat.saturating_sub(now.as_nanos()).min(tau);
    (tau - used) as f64 / tau as f64
}

#[inline]
pub(super) fn refund(quota: &Quota, tat: u64, cost: u64) -> u64 {
    tat.saturating_sub(cost * quota.emission().as_nanos())
}

/// `tat`, written under `from`, as a TAT of `to` as of `at`: the same time to refill, scaled
/// to the new emission interval (rounded up), and at most a full bucket of `to` (lowering the
/// burst empties the bucket at worst: it takes nothing back beyond the new burst).
pub(super) fn carry(from: &Quota, to: &Quota, tat: u64, at: Nanos) -> u64 {
    let at = at.as_nanos();
    let owed = tat.saturating_sub(at);
    if owed == 0 {
        return 0;
    }
    let (from_t, to_t) = (from.emission().as_nanos(), to.emission().as_nanos());
    let owed = if from_t == to_t {
        owed
    } else {
        let scaled = (u128::from(owed) * u128::from(to_t)).div_ceil(u128::from(from_t));
        u64::try_from(scaled).unwrap_or(u64::MAX)
    };
    at + owed.min(to.refill_time().as_nanos())
}

/// Tokens used at `now` (whole, rounded up).
pub(super) fn used(quota: &Quota, tat: u64, now: Nanos) -> u64 {
    let owed = tat.saturating_sub(now.as_nanos()).min(quota.refill_time().as_nanos());
    owed.div_ceil(quota.emission().as_nanos())
}

/// The TAT of a bucket with `used` tokens used at `now` (at most a full bucket).
pub(super) fn with_used(quota: &Quota, used: u64, now: Nanos) -> u64 {
    if used == 0 {
        return 0;
    }
    now.as_nanos() + used.min(quota.burst()) * quota.emission().as_nanos()
}

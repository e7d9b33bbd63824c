//! GCRA: the token bucket as one timestamp.
//!
//! The state is the *theoretical arrival time* (TAT): the instant at which the bucket would be
//! full again. With `T` the emission interval and `τ = T · burst` the refill time, a request of
//! cost `n` at `now` is admitted iff `max(TAT, now) + n·T ≤ now + τ`, and then
//! `TAT ← max(TAT, now) + n·T`. A denial leaves the state untouched.

use super::{Check, Quota};
use crate::clock::Nanos;

#[inline]
pub(super) fn check(quota: &Quota, tat: u64, now: Nanos, cost: u64) -> Check {
    let now = now.as_nanos();
    let t = quota.emission().as_nanos();
    let tau = quota.refill_time().as_nanos();
    let base = tat.max(now);
    let horizon = now + tau;
    // Whole tokens available before this request (only a refusal reports it: one division
    // saved on the admitted path).
    let available = || horizon.saturating_sub(base) / t;
    if cost > quota.burst() {
        return Check::never(available(), base - now);
    }
    let new_tat = base + cost * t;
    if new_tat <= horizon {
        Check::admit(new_tat, (horizon - new_tat) / t, new_tat - now)
    } else {
        Check::deny(available(), base - now, new_tat - horizon)
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

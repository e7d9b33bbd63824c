//! GCRA: the token bucket as one timestamp.
//!
//! The state is the *theoretical arrival time* (TAT): the instant at which the bucket would be
//! full again. With `T` the emission interval and `τ = T · burst` the refill time, a request of
//! cost `n` at `now` is admitted iff `max(TAT, now) + n·T ≤ now + τ`, and then
//! `TAT ← max(TAT, now) + n·T`. A denial leaves the state untouched.
//!
//! **Reserving ahead.** The same request fits at `max(TAT, now) + n·T − τ` at the earliest. A
//! request allowed to wait up to `d` is admitted when that is at most `now + d`, with the same
//! new TAT: its tokens are taken now, it is released when they exist, and every later request
//! queues behind it (its own earliest time starts from the new TAT). Held requests therefore
//! come out in arrival order and never faster than the rate; and since a reservation is at
//! most `d` ahead, at most `rate × d` tokens per client are reserved and waiting at once.
//!
//! The standing is read from `x = now + τ − TAT`, the room left in nanoseconds (negative while
//! tokens are reserved ahead or owed): `⌊x / T⌋` whole tokens (never below 0), and the next one
//! arrives in `T − x mod T` (none is awaited when the bucket is full). Quotient and remainder
//! come from one division.

use super::{Check, Quota, MAX_AHEAD};
use crate::clock::Nanos;

/// Whole tokens at `tat` seen from `horizon = now + τ`, and the wait for one more (0 when full).
#[inline]
fn standing(tat: u64, horizon: u64, t: u64, burst: u64) -> (u64, u64) {
    match horizon.checked_sub(tat) {
        Some(room) => {
            let (tokens, part) = (room / t, room % t);
            let next = if tokens >= burst { 0 } else { t - part };
            (tokens, next)
        }
        // Reserved ahead or in debt: the first token comes once the TAT is one T inside.
        None => (0, (tat - horizon).saturating_add(t)),
    }
}

/// Decides a request of `cost` at `now` that may wait until `now + max_wait` for its tokens.
#[inline]
pub(super) fn check(quota: &Quota, tat: u64, now: Nanos, cost: u64, max_wait: u64) -> Check {
    let now = now.as_nanos();
    let t = quota.emission().as_nanos();
    let tau = quota.refill_time().as_nanos();
    let burst = quota.burst();
    let base = tat.max(now);
    let horizon = now + tau;
    // Only a refusal reports the standing before the request (one division saved on the
    // admitted path).
    if cost > burst {
        let (available, next) = standing(base, horizon, t, burst);
        return Check::never(available, base - now, next);
    }
    let new_tat = base + cost * t;
    if new_tat <= horizon {
        let (remaining, next) = standing(new_tat, horizon, t, burst);
        return Check::admit(new_tat, remaining, new_tat - now, next);
    }
    let wait = new_tat - horizon;
    if wait <= max_wait {
        let (remaining, next) = standing(new_tat, horizon, t, burst);
        return Check::admit(new_tat, remaining, new_tat - now, next).held(wait);
    }
    let (available, next) = standing(base, horizon, t, burst);
    Check::deny(available, base - now, wait, next)
}

/// The request charged as if it arrived at `at ≥ now` (another policy of its tier makes it
/// wait until then): admitted iff it fits at `at`; the standing is reported at `now`.
#[inline]
pub(super) fn check_at(quota: &Quota, tat: u64, now: Nanos, cost: u64, at: Nanos) -> Check {
    let (now, at) = (now.as_nanos(), at.as_nanos().max(now.as_nanos()));
    let t = quota.emission().as_nanos();
    let tau = quota.refill_time().as_nanos();
    let burst = quota.burst();
    let base = tat.max(now);
    if cost > burst {
        let (available, next) = standing(base, now + tau, t, burst);
        return Check::never(available, base - now, next);
    }
    let new_tat = tat.max(at) + cost * t;
    if new_tat <= at + tau {
        let (remaining, next) = standing(new_tat, now + tau, t, burst);
        return Check::admit(new_tat, remaining, new_tat - now, next).held(at - now);
    }
    let (available, next) = standing(base, now + tau, t, burst);
    Check::deny(available, base - now, new_tat - tau - now, next)
}

#[inline]
pub(super) fn fraction(quota: &Quota, tat: u64, now: Nanos) -> f64 {
    let tau = quota.refill_time().as_nanos();
    let used = tat.saturating_sub(now.as_nanos()).min(tau);
    (tau - used) as f64 / tau as f64
}

/// A request whose charge left the TAT at `receipt` turned out to cost `actual` instead of
/// `charged`; `shifted` says whether a refund has slid this client's bucket since that charge.
/// Returns the new TAT, and whether this refund slid the slots of requests charged after it.
///
/// * An extra charge is taken now, at the back (from `max(TAT, now)`); it may put the client
///   in debt (a TAT beyond `now + τ`, repaid by refill), at most [`MAX_AHEAD`] ahead.
/// * A refund gives back the part of the request's own slot, `[receipt − charged·T, receipt]`,
///   that is still ahead of `now`, up to the tokens refunded: the TAT moves back by
///   `min((charged − actual)·T, receipt − now)`. The part behind `now` has refilled already.
///   Every request charged after this one has its slot after `receipt` and arrived before
///   `now`, so sliding those slots back by at most `receipt − now` never starts one before
///   its own arrival: the bucket never ends up fuller than if every request had been charged
///   its actual cost from the start (property-tested).
/// * That needs `receipt` to still be where the request's slot ends. Only a refund of an
///   earlier request slides it, so a store remembers when a refund slid a client's bucket
///   (the second value returned); when one did since this charge, the charge stands.
///   Conservative, and rare: it takes two requests of one client in flight at once, settled
///   out of order.
#[inline]
pub(super) fn settle(
    quota: &Quota,
    tat: u64,
    now: Nanos,
    receipt: u64,
    charged: u64,
    actual: u64,
    shifted: bool,
) -> (u64, bool) {
    let now = now.as_nanos();
    let t = quota.emission().as_nanos();
    if actual < charged {
        if shifted {
            return (tat, false);
        }
        let back = (charged - actual).saturating_mul(t).min(receipt.saturating_sub(now));
        (tat.saturating_sub(back), back > 0 && tat != receipt)
    } else {
        let extra = (actual - charged).saturating_mul(t);
        (tat.max(now).saturating_add(extra).min(now.saturating_add(MAX_AHEAD)), false)
    }
}

/// Gives back `cost` charged at `now` (the same instant: a later policy refused).
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

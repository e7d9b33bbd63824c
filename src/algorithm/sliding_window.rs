//! The sliding-window counter: two fixed windows, the previous one weighted.
//!
//! Windows last `W = burst / rate`. The estimate at `now` is
//! `prev · (W − elapsed) / W + cur`, and a request of cost `n` is admitted iff
//! `estimate + n ≤ burst`. The state packs the window's index (24 low bits of
//! `now / W`) and both counters (20 bits each) into one `u64`.

use super::{Check, Quota};
use crate::clock::Nanos;

const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const INDEX_MASK: u64 = (1 << 24) - 1;

#[derive(Clone, Copy)]
struct Window {
    /// Requests counted in the previous window.
    prev: u64,
    /// Requests counted in the current window.
    cur: u64,
    /// Nanoseconds since the current window began.
    elapsed: u64,
    /// The current window's index tag.
    tag: u64,
}

#[inline]
fn unpack(quota: &Quota, state: u64, now: Nanos) -> Window {
    let now = now.as_nanos();
    let w = quota.refill_time().as_nanos();
    let tag = (now / w) & INDEX_MASK;
    let elapsed = now % w;
    let index = state >> (2 * COUNT_BITS);
    let prev = (state >> COUNT_BITS) & COUNT_MASK;
    let cur = state & COUNT_MASK;
    let (prev, cur) = if state == 0 {
        (0, 0)
    } else if index == tag {
        (prev, cur)
    } else if index == (tag.wrapping_sub(1) & INDEX_MASK) {
        (cur, 0)
    } else {
        (0, 0)
    };
    Window { prev, cur, elapsed, tag }
}

#[inline]
fn pack(tag: u64, prev: u64, cur: u64) -> u64 {
    (tag << (2 * COUNT_BITS)) | (prev << COUNT_BITS) | cur
}

/// `estimate · W`, in request-nanoseconds (exact, no rounding).
#[inline]
fn scaled_estimate(win: &Window, w: u64) -> u128 {
    u128::from(win.prev) * u128::from(w - win.elapsed) + u128::from(win.cur) * u128::from(w)
}

/// Nanoseconds until the estimate is zero again.
#[inline]
fn reset_after(win: &Window, w: u64, cur: u64) -> u64 {
    if cur > 0 {
        (w - win.elapsed) + w
    } else if win.prev > 0 {
        w - win.elapsed
    } else {
        0
    }
}

// Not inlined, like `fraction`: its 128-bit arithmetic would be hoisted into the store's
// compare-and-swap loop and run for token buckets too.
#[inline(never)]
pub(super) fn check(quota: &Quota, state: u64, now: Nanos, cost: u64) -> Check {
    let w = quota.refill_time().as_nanos();
    let limit = quota.burst();
    let win = unpack(quota, state, now);
    let capacity = u128::from(limit) * u128::from(w);
    let estimate = scaled_estimate(&win, w);
    let available = (capacity.saturating_sub(estimate) / u128::from(w)) as u64;
    if cost > limit {
        let next = next_token(&win, w, limit, available);
        return Check::never(available, reset_after(&win, w, win.cur), next);
    }
    let needed = estimate + u128::from(cost) * u128::from(w);
    if needed <= capacity {
        let cur = win.cur + cost;
        let remaining = ((capacity - needed) / u128::from(w)) as u64;
        let after = Window { cur, ..win };
        let next = next_token(&after, w, limit, remaining);
        return Check::admit(pack(win.tag, win.prev, cur), remaining, reset_after(&win, w, cur), next);
    }
    let next = next_token(&win, w, limit, available);
    Check::deny(available, reset_after(&win, w, win.cur), wait_for(&win, w, limit, cost), next)
}

/// Nanoseconds until `cost` fits, for a cost that does not fit now (and is at most `limit`).
#[inline]
fn wait_for(win: &Window, w: u64, limit: u64, cost: u64) -> u64 {
    if win.cur + cost <= limit {
        // Later in this window, once enough of the previous window has slid out:
        // prev · (W − e) ≤ (limit − cur − cost) · W.
        let room = u128::from(limit - win.cur - cost) * u128::from(w);
        let keep = (room / u128::from(win.prev)) as u64; // win.prev > 0 here
        (w - keep).saturating_sub(win.elapsed)
    } else {
        // In the next window, where `cur` becomes the weighted previous window.
        let room = u128::from(limit - cost) * u128::from(w);
        let keep = (room / u128::from(win.cur)).min(u128::from(w)) as u64;
        (w - win.elapsed) + (w - keep)
    }
}

/// Nanoseconds until one more whole token than `available` is there: 0 when the window is
/// empty (all `limit` available).
#[inline]
fn next_token(win: &Window, w: u64, limit: u64, available: u64) -> u64 {
    if available >= limit {
        0
    } else {
        // `available` is the floor of what is left, so `available + 1` does not fit now.
        wait_for(win, w, limit, available + 1)
    }
}

// Not inlined: its 128-bit product converted to a float is loop-invariant arithmetic that the
// compiler would otherwise hoist out of the store's retry loop, ahead of the choice of
// algorithm, where every token-bucket request would pay for it (36 instructions, callgrind).
#[inline(never)]
pub(super) fn fraction(quota: &Quota, state: u64, now: Nanos) -> f64 {
    let w = quota.refill_time().as_nanos();
    let win = unpack(quota, state, now);
    let capacity = u128::from(quota.burst()) * u128::from(w);
    let left = capacity.saturating_sub(scaled_estimate(&win, w));
    left as f64 / capacity as f64
}

#[inline]
pub(super) fn refund(quota: &Quota, state: u64, now: Nanos, cost: u64) -> u64 {
    let win = unpack(quota, state, now);
    // Only the current window's count can be given back; if the window rolled meanwhile the
    // charge stays (conservative: never admits more).
    if (state >> (2 * COUNT_BITS)) == win.tag {
        pack(win.tag, win.prev, win.cur.saturating_sub(cost))
    } else {
        state
    }
}

#[inline]
pub(super) fn is_idle(quota: &Quota, state: u64, now: Nanos) -> bool {
    let win = unpack(quota, state, now);
    win.prev == 0 && win.cur == 0
}

/// Requests counted at `now` (whole, rounded up).
pub(super) fn used(quota: &Quota, state: u64, now: Nanos) -> u64 {
    let w = quota.refill_time().as_nanos();
    let win = unpack(quota, state, now);
    scaled_estimate(&win, w).div_ceil(u128::from(w)) as u64
}

/// A window with `used` requests counted in its current window at `now` (at most the limit).
pub(super) fn with_used(quota: &Quota, used: u64, now: Nanos) -> u64 {
    if used == 0 {
        return 0;
    }
    let tag = (now.as_nanos() / quota.refill_time().as_nanos()) & INDEX_MASK;
    pack(tag, 0, used.min(quota.burst()).min(COUNT_MASK))
}

//! The sliding-window counter: two aligned windows, the previous one weighted.
//!
//! Windows last `W = burst × emission` (the nominal `burst ÷ rate`, rounded up to whole
//! nanoseconds per token) and are aligned on multiples of `W` since the epoch. At `e`
//! nanoseconds into the current window, the previous window's `p` requests are assumed evenly
//! spread, one at the start of each of `p` equal slots, so
//!
//! ```text
//! still_in(e) = p − 1 − ⌊p · e / W⌋      (0 when p = 0)
//! ```
//!
//! of them are still inside the last `W` nanoseconds: the count of slot starts after
//! `now − W`. A request of cost `n` is admitted iff `cur + still_in(e) + n ≤ burst`.
//!
//! # Why `− 1`
//! The textbook estimate, `p · (W − e) / W`, spreads each request over its slot instead of
//! placing it at the slot's start. A client sending at exactly the rate fills its previous
//! window (`p = burst`) and, one slot before the end of the current one, has `cur = burst − 1`
//! with a fraction of a request still "in" the previous window: `burst − 1 + ε + 1 > burst`,
//! refused, once every `burst` requests (half of them at a burst of 1). Counting whole slot
//! starts instead admits any client whose requests are at least one emission interval apart,
//! forever (property-tested).
//!
//! # What it bounds (proved in the tests' comments, property-tested)
//! * **At most `burst` per aligned window**: `cur + n ≤ burst` is part of the test.
//! * **At most `2 · burst` in any interval of length `W`**, and that is tight. An interval
//!   `[s, s + W)` spans the end of window `j − 1` (at most `p` admissions) and the start of
//!   window `j` before offset `e` (at most `burst − still_in(e) ≤ burst`). The bound is reached
//!   by `burst` requests at the very end of one window, then `burst` requests in the last slot
//!   of the next; and *any* two-counter estimate that admits a client at exactly the rate
//!   admits that trace too: at every step the two are in the same state (`p = burst`, the same
//!   `cur` and `e`). A counter sees counts, not times; for an exact bound use the sliding log.
//!
//! # State
//! One `u64`: the window's **full** index (`now / W`) in the high bits, then the previous and
//! current counts in `bits(burst)` bits each. The index is never truncated, so a key idle for
//! any length of time is never mistaken for a current one: [`fits`] requires
//! `W ≥ 2^(2 · bits(burst))` nanoseconds, which makes `u64::MAX / W` fit the bits left over
//! (configuration refuses a window shorter than that, e.g. under 1 ms at a burst of 1 000). A
//! count saturates at `2^bits − 1` (a debt from a settled cost larger than that is forgiven).

use super::{Check, Quota};
use crate::clock::Nanos;

/// The bits of one count: enough for `burst`.
#[inline]
fn count_bits(quota: &Quota) -> u32 {
    u64::BITS - quota.burst().leading_zeros()
}

/// `Ok` when a window of this quota can keep its full index next to its counts: see the
/// module documentation.
pub(super) fn fits(quota: &Quota) -> Result<(), String> {
    let bits = count_bits(quota);
    if quota.burst() > super::SLIDING_WINDOW_MAX_BURST {
        return Err(format!("a sliding window holds at most {}", super::SLIDING_WINDOW_MAX_BURST));
    }
    let shortest = 1u64 << (2 * bits);
    if quota.refill_time().as_nanos() < shortest {
        return Err(format!(
            "a sliding window with a burst of {} must last at least {} µs (burst ÷ rate), so that its \
             state can hold the window's full index; use a lower rate or the token bucket",
            quota.burst(),
            shortest.div_ceil(1_000)
        ));
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Window {
    /// Requests counted in the previous window.
    prev: u64,
    /// Requests counted in the current window.
    cur: u64,
    /// Nanoseconds since the current window began.
    elapsed: u64,
    /// The current window's index.
    index: u64,
    /// The window length, in nanoseconds.
    w: u64,
    /// Bits per count.
    bits: u32,
}

impl Window {
    #[inline]
    fn mask(&self) -> u64 {
        (1 << self.bits) - 1
    }

    /// Requests of the previous window still inside the last `W`: the slot starts after
    /// `now − W` when its `prev` requests are spread evenly from its start.
    #[inline]
    fn still_in(&self, prev: u64, elapsed: u64) -> u64 {
        if prev == 0 {
            0
        } else {
            // e < W, so ⌊p·e/W⌋ ≤ p − 1.
            prev - 1 - ((u128::from(prev) * u128::from(elapsed)) / u128::from(self.w)) as u64
        }
    }

    /// Tokens counted against the burst now.
    #[inline]
    fn used(&self) -> u64 {
        self.cur.saturating_add(self.still_in(self.prev, self.elapsed))
    }

    /// The smallest offset into a window at which `still_in(prev, e) ≤ room`.
    #[inline]
    fn offset_for(&self, prev: u64, room: u64) -> u64 {
        // p − 1 − ⌊p·e/W⌋ ≤ room  ⟺  ⌊p·e/W⌋ ≥ k  ⟺  e ≥ ⌈k·W/p⌉, with k = p − 1 − room.
        match (prev.saturating_sub(1)).checked_sub(room) {
            None | Some(0) => 0,
            Some(k) => (u128::from(k) * u128::from(self.w)).div_ceil(u128::from(prev)) as u64,
        }
    }

    fn pack(&self, prev: u64, cur: u64) -> u64 {
        let mask = self.mask();
        (self.index << (2 * self.bits)) | (prev.min(mask) << self.bits) | cur.min(mask)
    }
}

#[inline]
fn unpack(quota: &Quota, state: u64, now: Nanos) -> Window {
    let now = now.as_nanos();
    let w = quota.refill_time().as_nanos();
    let bits = count_bits(quota);
    let index = now / w;
    let elapsed = now % w;
    let mask = (1u64 << bits) - 1;
    let stored = state >> (2 * bits);
    let prev = (state >> bits) & mask;
    let cur = state & mask;
    let (prev, cur) = if stored == index {
        (prev, cur)
    } else if stored.checked_add(1) == Some(index) {
        (cur, 0)
    } else if stored > index {
        // A clock behind the state's (never, with a monotonic clock): keep the counts.
        (prev, cur)
    } else {
        (0, 0)
    };
    Window { prev, cur, elapsed, index, w, bits }
}

/// Nanoseconds until nothing is counted any more.
#[inline]
fn reset_after(win: &Window, cur: u64) -> u64 {
    if cur > 0 {
        // In the next window, once `cur` evenly spread requests have all slid out.
        (win.w - win.elapsed) + win.offset_for(cur, 0)
    } else {
        win.offset_for(win.prev, 0).saturating_sub(win.elapsed)
    }
}

/// Nanoseconds until `cost` fits, for a cost that does not fit now (and is at most `limit`).
#[inline]
fn wait_for(win: &Window, limit: u64, cost: u64) -> u64 {
    if win.cur + cost <= limit {
        // Later in this window, once enough of the previous one has slid out.
        win.offset_for(win.prev, limit - win.cur - cost).saturating_sub(win.elapsed)
    } else {
        // In the next window, where `cur` becomes the previous window.
        (win.w - win.elapsed) + win.offset_for(win.cur, limit - cost)
    }
}

/// Nanoseconds until one more whole token than `available` is there: 0 when nothing is used.
#[inline]
fn next_token(win: &Window, limit: u64, available: u64) -> u64 {
    if available >= limit {
        0
    } else {
        wait_for(win, limit, available + 1)
    }
}

// Not inlined, like `fraction`: its 128-bit arithmetic would be hoisted into the store's
// compare-and-swap loop and run for token buckets too.
#[inline(never)]
pub(super) fn check(quota: &Quota, state: u64, now: Nanos, cost: u64) -> Check {
    let limit = quota.burst();
    let win = unpack(quota, state, now);
    let used = win.used();
    let available = limit.saturating_sub(used);
    if cost > limit {
        let next = next_token(&win, limit, available);
        return Check::never(available, reset_after(&win, win.cur), next);
    }
    if cost <= available {
        let cur = win.cur + cost;
        let remaining = available - cost;
        let after = Window { cur, ..win };
        let next = next_token(&after, limit, remaining);
        return Check::admit(win.pack(win.prev, cur), remaining, reset_after(&win, cur), next);
    }
    let next = next_token(&win, limit, available);
    Check::deny(available, reset_after(&win, win.cur), wait_for(&win, limit, cost), next)
}

// Not inlined: its 128-bit product converted to a float is loop-invariant arithmetic that the
// compiler would otherwise hoist out of the store's retry loop, ahead of the choice of
// algorithm, where every token-bucket request would pay for it (36 instructions, callgrind).
#[inline(never)]
pub(super) fn fraction(quota: &Quota, state: u64, now: Nanos) -> f64 {
    let win = unpack(quota, state, now);
    let limit = quota.burst();
    limit.saturating_sub(win.used()) as f64 / limit as f64
}

/// Gives back `cost` charged at `now` (the same instant: a later policy refused).
#[inline]
pub(super) fn refund(quota: &Quota, state: u64, now: Nanos, cost: u64) -> u64 {
    settle(quota, state, now, state, cost, 0)
}

/// A request charged `charged` in the window of `receipt` (the state its charge wrote) turned
/// out to cost `actual`. A refund comes out of the count it went into, while that window is
/// still counted (current or previous); an extra charge goes into the current window.
#[inline]
pub(super) fn settle(quota: &Quota, state: u64, now: Nanos, receipt: u64, charged: u64, actual: u64) -> u64 {
    let win = unpack(quota, state, now);
    let charged_in = receipt >> (2 * win.bits);
    let (mut prev, mut cur) = (win.prev, win.cur);
    if actual < charged {
        let back = charged - actual;
        if charged_in == win.index {
            cur = cur.saturating_sub(back);
        } else if charged_in.checked_add(1) == Some(win.index) {
            prev = prev.saturating_sub(back);
        }
    } else {
        cur = cur.saturating_add(actual - charged);
    }
    win.pack(prev, cur)
}

#[inline]
pub(super) fn is_idle(quota: &Quota, state: u64, now: Nanos) -> bool {
    let win = unpack(quota, state, now);
    win.used() == 0 && win.cur == 0
}

/// Requests counted at `now`.
pub(super) fn used(quota: &Quota, state: u64, now: Nanos) -> u64 {
    unpack(quota, state, now).used()
}

/// A window with `used` requests counted in its current window at `now` (at most the limit).
pub(super) fn with_used(quota: &Quota, used: u64, now: Nanos) -> u64 {
    if used == 0 {
        return 0;
    }
    let win = unpack(quota, 0, now);
    win.pack(0, used.min(quota.burst()))
}

/// `state` of a window of `from`, as a state of `to` (a window of the same length): the same
/// counts, in `to`'s widths (a count above what `to` can hold is held at its most).
pub(super) fn recount(from: &Quota, to: &Quota, state: u64, now: Nanos) -> u64 {
    let old = unpack(from, state, now);
    let new = unpack(to, 0, now);
    new.pack(old.prev, old.cur)
}

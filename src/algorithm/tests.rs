use nonzero_ext::nonzero;
use proptest::prelude::*;

use super::*;
use crate::clock::Nanos;

const SEC: Nanos = Nanos::SECOND;
const NS: Nanos = Nanos::new(1);
const START: Nanos = Nanos::from_secs(1_700_000_000);

const MINUTE: Nanos = Nanos::from_secs(60);
const HOUR: Nanos = Nanos::from_secs(3_600);
const DAY: Nanos = Nanos::from_secs(86_400);

fn bucket(per_minute: u64, burst: u64) -> Rule {
    Rule::new(Algorithm::TokenBucket, Quota::new(per_minute, MINUTE, burst).unwrap())
}

fn window(per_minute: u64, burst: u64) -> Rule {
    Rule::new(Algorithm::SlidingWindow, Quota::new(per_minute, MINUTE, burst).unwrap())
}

#[test]
fn full_bucket_admits_burst_then_denies() {
    let rule = bucket(30, 5);
    let mut state = 0;
    for left in (0..5).rev() {
        let check = rule.check(state, START, 1);
        state = check.new_state().expect("admitted");
        assert_eq!(check.remaining, left);
    }
    let denied = rule.check(state, START, 1);
    assert_eq!(denied.new_state(), None);
    assert_eq!(denied.remaining, 0);
    assert_eq!(denied.retry_after, 2 * SEC, "one token every 2 s");
    assert_eq!(denied.reset_after, 10 * SEC, "5 tokens at 2 s each");
}

#[test]
fn token_bucket_retry_after_is_exact() {
    let rule = bucket(60, 3);
    let mut state = 0;
    for _ in 0..3 {
        state = rule.check(state, START, 1).new_state().unwrap();
    }
    let wait = rule.check(state, START, 2).retry_after;
    assert_eq!(wait, 2 * SEC);
    assert!(rule.check(state, START + wait - NS, 2).new_state().is_none());
    assert!(rule.check(state, START + wait, 2).new_state().is_some());
}

#[test]
fn cost_above_burst_is_never_admitted() {
    for rule in [bucket(60, 10), window(60, 10)] {
        let check = rule.check(0, START, 11);
        assert!(check.exceeds(), "{rule:?}");
        assert_eq!(check.new_state(), None);
        assert_eq!(check.remaining, 10);
        assert!(!rule.check(0, START, 10).exceeds());
    }
}

#[test]
fn zero_cost_changes_nothing_and_reports_standing() {
    let rule = bucket(60, 10);
    let state = rule.check(0, START, 4).new_state().unwrap();
    let check = rule.check(state, START, 0);
    assert_eq!(check.new_state(), Some(state));
    assert_eq!(check.remaining, 6);
}

#[test]
fn fraction_reports_the_share_of_burst_left() {
    let rule = bucket(60, 10);
    assert_eq!(rule.fraction(0, START), 1.0);
    let state = rule.check(0, START, 4).new_state().unwrap();
    assert!((rule.fraction(state, START) - 0.6).abs() < 1e-9);
    assert_eq!(rule.fraction(state, START + 4 * SEC), 1.0);
}

#[test]
fn refund_gives_back_exactly_the_charge() {
    for rule in [bucket(60, 10), window(60, 10)] {
        let a = rule.check(0, START, 3).new_state().unwrap();
        let b = rule.check(a, START, 4).new_state().unwrap();
        let back = rule.refund(b, START, 4);
        assert_eq!(rule.check(back, START, 0).remaining, 7, "{rule:?}");
    }
}

#[test]
fn idle_states_can_be_forgotten() {
    let rule = bucket(60, 10);
    let state = rule.check(0, START, 2).new_state().unwrap();
    assert!(!rule.is_idle(state, START));
    assert!(!rule.is_idle(state, START + 2 * SEC - NS));
    assert!(rule.is_idle(state, START + 2 * SEC));
    let rule = window(60, 10); // 10 s windows
    let state = rule.check(0, START, 2).new_state().unwrap();
    assert!(!rule.is_idle(state, START + 10 * SEC));
    assert!(rule.is_idle(state, START + 20 * SEC));
    assert!(rule.is_idle(0, START));
}

#[test]
fn sliding_window_weights_the_previous_window() {
    let rule = window(60, 10); // windows of 10 s
    let aligned = START - START % (10 * SEC);
    let mut state = 0;
    for _ in 0..10 {
        state = rule.check(state, aligned, 1).new_state().unwrap();
    }
    assert!(rule.check(state, aligned + 9 * SEC, 1).new_state().is_none());
    // Halfway through the next window, the previous window's requests spread one a second
    // from its start: those at 6, 7, 8 and 9 s are still within the last 10 s.
    let half = rule.check(state, aligned + 15 * SEC, 0);
    assert_eq!(half.remaining, 6);
    let denied = rule.check(state, aligned + 15 * SEC, 7);
    assert_eq!(denied.new_state(), None);
    assert_eq!(denied.retry_after, SEC, "one more of them must slide out");
    assert!(rule.check(state, aligned + 16 * SEC - NS, 7).new_state().is_none());
    assert!(rule.check(state, aligned + 16 * SEC, 7).new_state().is_some());
}

#[test]
fn sliding_window_retry_after_in_the_next_window() {
    let rule = window(60, 10);
    let aligned = START - START % (10 * SEC);
    let mut state = 0;
    for _ in 0..10 {
        state = rule.check(state, aligned + 2 * SEC, 1).new_state().unwrap();
    }
    let denied = rule.check(state, aligned + 2 * SEC, 4);
    // Next window starts in 8 s; there the 10 requests count as one a second from its start,
    // and at most 6 of them may still be in the last 10 s: e ≥ 3 s.
    assert_eq!(denied.retry_after, 11 * SEC);
    assert!(rule.check(state, aligned + 13 * SEC - NS, 4).new_state().is_none());
    assert!(rule.check(state, aligned + 13 * SEC, 4).new_state().is_some());
}

#[test]
fn quota_rejects_nonsense() {
    assert!(Quota::new(0, SEC, 1).is_none());
    assert!(Quota::new(1, SEC, 0).is_none());
    assert!(Quota::new(1, Nanos::ZERO, 1).is_none());
    assert!(Quota::new(1, Nanos::from_secs(u64::MAX / 4), u64::MAX).is_none());
    assert_eq!(
        Quota::per_second(nonzero!(3u32)).allow_burst(nonzero!(1u32)).emission(),
        Nanos::new(333_333_334)
    );
    assert_eq!(Quota::per_day(nonzero!(10_000u32)).window_secs(), 86_400);
    assert_eq!(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)).window_secs(), 10);
}

/// `w` is the nominal time to refill: the emission interval's rounding up to a nanosecond
/// (7 a day is 12 342 857 142 857.14 ns a token, so 7 tokens take 86 400.000000006 s) never
/// shows up as an extra second.
#[test]
fn window_is_exact_for_day_hour_and_minute() {
    for (rate, period, secs) in [(7, DAY, 86_400), (7, HOUR, 3_600), (7, MINUTE, 60), (13, DAY, 86_400)] {
        let quota = Quota::new(rate, period, rate).unwrap();
        assert!(quota.refill_time() > period, "the arithmetic rounds the emission up");
        assert_eq!(quota.window_secs(), secs, "{rate} per {period:?}");
        assert_eq!(quota.window(), period);
    }
    let seven = nonzero!(7u32);
    assert_eq!(Quota::per_day(seven).window_secs(), 86_400);
    assert_eq!(Quota::per_hour(seven).window_secs(), 3_600);
    assert_eq!(Quota::per_minute(seven).window_secs(), 60);
    assert_eq!(Quota::daily(7).unwrap().window_secs(), 86_400);
    // A burst that is not the rate: 10 tokens at 7 a minute take 85.71 s, shown as 86.
    assert_eq!(Quota::per_minute(seven).allow_burst(nonzero!(10u32)).window_secs(), 86);
    assert_eq!(Quota::per_hour(seven).allow_burst(nonzero!(14u32)).window_secs(), 7_200);
    // Rates from the configuration file, whole or not.
    assert_eq!(Quota::from_rate(7.0, DAY, 7).unwrap().window_secs(), 86_400);
    assert_eq!(Quota::from_rate(0.5, SEC, 2).unwrap().window_secs(), 4);
    assert_eq!(Quota::from_rate(2.5, MINUTE, 5).unwrap().window_secs(), 120);
    assert!(Quota::from_rate(f64::NAN, SEC, 1).is_none());
    assert!(Quota::from_rate(-1.0, SEC, 1).is_none());
}

#[test]
fn const_constructors_match_the_general_one() {
    const Q: Quota = Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32));
    assert_eq!(Some(Q), Quota::new(30, MINUTE, 5));
    assert_eq!(Some(Quota::per_second(nonzero!(4u32))), Quota::new(4, SEC, 4));
    assert_eq!(Some(Quota::per_hour(nonzero!(100u32))), Quota::new(100, HOUR, 100));
    assert_eq!(Some(Quota::per_day(nonzero!(10_000u32))), Quota::daily(10_000));
    // A burst whose refill would exceed 146 years is held there, never an overflow.
    let huge = Quota::per_day(nonzero!(1u32)).allow_burst(NonZeroU32::MAX);
    assert!(huge.refill_time() <= Nanos::new(1 << 62) && huge.burst() > 50_000);
}

/// `t`: the wait for the next whole token, not for a full bucket; zero when full.
#[test]
fn next_after_is_the_next_token_and_zero_when_full() {
    let rule = bucket(30, 5); // a token every 2 s
    let full = rule.check(0, START, 0);
    assert_eq!((full.remaining, full.next_after), (5, Nanos::ZERO));
    let one = rule.check(0, START, 1);
    assert_eq!((one.remaining, one.next_after, one.reset_after), (4, 2 * SEC, 2 * SEC));
    let state = rule.check(one.new_state().unwrap(), START, 3).new_state().unwrap();
    let later = rule.check(state, START + SEC / 2, 0);
    assert_eq!(later.remaining, 1);
    assert_eq!(later.next_after, SEC + SEC / 2, "the next token, not the 7.5 s to full");
    assert_eq!(later.reset_after, 7 * SEC + SEC / 2);
    // A refusal says when one more token comes, never later than the request's own wait.
    let denied = rule.check(state, START + SEC / 2, 3);
    assert_eq!(denied.next_after, SEC + SEC / 2);
    assert_eq!(denied.retry_after, 3 * SEC + SEC / 2);
    // Back to full: zero again.
    assert_eq!(rule.check(state, START + 8 * SEC, 0).next_after, Nanos::ZERO);

    let rule = window(60, 10); // 10 s windows
    assert_eq!(rule.check(0, START, 0).next_after, Nanos::ZERO);
}

/// A request stream: gaps between requests and their costs.
fn requests() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0..3 * SEC.as_nanos(), 0u64..4), 1..150)
}

/// Runs a stream through a rule; returns (time, cost) of every admitted request.
fn admitted(rule: &Rule, stream: &[(u64, u64)]) -> Vec<(Nanos, u64)> {
    let mut state = 0;
    let mut now = START;
    let mut out = Vec::new();
    for &(gap, cost) in stream {
        now += Nanos::new(gap);
        let check = rule.check(state, now, cost);
        if let Some(next) = check.new_state() {
            state = next;
            out.push((now, cost));
        } else {
            assert!(check.exceeds() || check.retry_after > Nanos::ZERO, "a denial says when to retry");
        }
    }
    out
}

proptest! {
    /// In any interval of length `t`, a token bucket admits at most `burst + rate · t` tokens.
    #[test]
    fn token_bucket_never_admits_more_than_burst_plus_rate(
        per_minute in 1u64..600, burst in 1u64..20, stream in requests()
    ) {
        let rule = bucket(per_minute, burst);
        let emission = rule.quota().emission();
        let admitted = admitted(&rule, &stream);
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let mut total = 0;
            for &(at, cost) in &admitted[i..] {
                total += cost;
                let allowed = burst + (at - start) / emission;
                prop_assert!(total <= allowed, "{total} tokens in {:?}, allowed {allowed}", at - start);
            }
        }
    }

    /// A denied request is admitted exactly `retry_after` later (absent other traffic), not before.
    #[test]
    fn retry_after_is_honest(
        per_minute in 1u64..600, burst in 1u64..20, stream in requests(),
        cost in 1u64..20, sliding in any::<bool>()
    ) {
        let algorithm = if sliding { Algorithm::SlidingWindow } else { Algorithm::TokenBucket };
        let rule = Rule::new(algorithm, Quota::new(per_minute, MINUTE, burst).unwrap());
        let mut state = 0;
        let mut now = START;
        for &(gap, c) in &stream {
            now += Nanos::new(gap);
            if let Some(next) = rule.check(state, now, c).new_state() {
                state = next;
            }
        }
        let check = rule.check(state, now, cost);
        if check.new_state().is_none() && !check.exceeds() {
            let wait = check.retry_after;
            prop_assert!(rule.check(state, now + wait, cost).new_state().is_some());
            prop_assert!(rule.check(state, now + wait - NS, cost).new_state().is_none());
        }
    }

    /// `next_after` is exactly when one more whole token is there (absent other traffic), it is
    /// zero only for a full bucket, and a refusal's wait is never shorter.
    #[test]
    fn next_after_is_honest(
        per_minute in 1u64..600, burst in 1u64..20, stream in requests(),
        cost in 0u64..20, sliding in any::<bool>()
    ) {
        let algorithm = if sliding { Algorithm::SlidingWindow } else { Algorithm::TokenBucket };
        let rule = Rule::new(algorithm, Quota::new(per_minute, MINUTE, burst).unwrap());
        let mut state = 0;
        let mut now = START;
        for &(gap, c) in &stream {
            now += Nanos::new(gap);
            if let Some(next) = rule.check(state, now, c).new_state() {
                state = next;
            }
        }
        let check = rule.check(state, now, cost);
        if let Some(next) = check.new_state() {
            state = next;
        }
        let next = check.next_after;
        prop_assert_eq!(next.is_zero(), check.remaining == burst);
        if !next.is_zero() {
            prop_assert_eq!(rule.check(state, now + next - NS, 0).remaining, check.remaining);
            prop_assert_eq!(rule.check(state, now + next, 0).remaining, check.remaining + 1);
        }
        if check.new_state().is_none() && !check.exceeds() {
            prop_assert!(next <= check.retry_after, "t {:?} after Retry-After {:?}", next, check.retry_after);
        }
    }

    /// A sliding window never counts more than `burst` in one of its own windows, so any
    /// interval of length `t` admits at most `burst · (⌈t / W⌉ + 1)`.
    #[test]
    fn sliding_window_bounds_every_interval(
        per_minute in 1u64..600, burst in 1u64..20, stream in requests()
    ) {
        let rule = window(per_minute, burst);
        let w = rule.quota().refill_time();
        let admitted = admitted(&rule, &stream);
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let mut total = 0;
            for &(at, cost) in &admitted[i..] {
                total += cost;
                let windows = (at - start).as_nanos().div_ceil(w.as_nanos()) + 1;
                prop_assert!(total <= burst * windows);
            }
        }
        let mut per_window = std::collections::HashMap::new();
        for &(at, cost) in &admitted {
            *per_window.entry(at / w).or_insert(0) += cost;
        }
        prop_assert!(per_window.values().all(|&n| n <= burst));
    }

    /// Remaining never exceeds the burst and the fraction stays in [0, 1].
    #[test]
    fn standing_stays_in_range(per_minute in 1u64..600, burst in 1u64..20, stream in requests(), sliding in any::<bool>()) {
        let algorithm = if sliding { Algorithm::SlidingWindow } else { Algorithm::TokenBucket };
        let rule = Rule::new(algorithm, Quota::new(per_minute, MINUTE, burst).unwrap());
        let mut state = 0;
        let mut now = START;
        for &(gap, cost) in &stream {
            now += Nanos::new(gap);
            let fraction = rule.fraction(state, now);
            prop_assert!((0.0..=1.0).contains(&fraction));
            let check = rule.check(state, now, cost);
            prop_assert!(check.remaining <= burst);
            if let Some(next) = check.new_state() {
                state = next;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sliding-window counter: a client at the rate is never refused, and what it does bound.

/// The defect the fix is for: at a burst of 1, a client sending exactly once per window was
/// refused every other time (the previous window's weight never reached 0 inside the next).
#[test]
fn sliding_window_admits_a_client_at_exactly_the_rate() {
    for burst in [1, 2, 10, 37] {
        let rule = window(60, burst); // a token a second, windows of `burst` seconds
        let t = rule.quota().emission();
        for phase in [Nanos::ZERO, NS, t / 3, t - NS] {
            let mut state = 0;
            let mut now = START + phase;
            for i in 0..10 * burst {
                let check = rule.check(state, now, 1);
                state = check
                    .new_state()
                    .unwrap_or_else(|| panic!("burst {burst}, phase {phase:?}: request {i} refused"));
                now += t;
            }
        }
    }
}

/// The bound of 2 · burst in an interval of length W is reached: a burst at the very end of
/// one window, then a burst in the last slot of the next. A client at the rate goes through
/// the same states, so no counter that admits it can refuse this.
#[test]
fn sliding_window_reaches_two_bursts_in_one_interval_and_no_more() {
    let rule = window(60, 10); // windows of 10 s
    let w = rule.quota().refill_time();
    let aligned = START - START % w;
    let mut state = 0;
    let mut admitted = Vec::new();
    for at in [aligned + w - NS; 10].into_iter().chain([aligned + 2 * w - 2 * NS; 11]) {
        if let Some(next) = rule.check(state, at, 1).new_state() {
            state = next;
            admitted.push(at);
        }
    }
    assert_eq!(admitted.len(), 20, "the 21st is refused: 10 in the window already");
    assert!(admitted[19] - admitted[0] < w, "20 = 2 · burst within one W");
}

/// A state from any time ago is never mistaken for a current one: the full window index is
/// kept (before, a 24-bit tag made a key idle for 2^24 windows look current again).
#[test]
fn sliding_window_state_never_wraps() {
    // 1 000 a second, burst 1: windows of 1 ms (the shortest allowed at this burst is 4 ns).
    let rule = Rule::new(Algorithm::SlidingWindow, Quota::new(1_000, SEC, 1).unwrap());
    let w = rule.quota().refill_time();
    let state = rule.check(0, START, 1).new_state().unwrap();
    assert!(rule.check(state, START, 1).new_state().is_none());
    for windows in [1u64 << 24, (1 << 24) + 1, 1 << 40, (u64::MAX - START.as_nanos()) / w.as_nanos()] {
        let later = START + w * windows;
        assert!(rule.is_idle(state, later), "{windows} windows later");
        assert_eq!(rule.check(state, later, 1).remaining, 0, "admitted as a fresh key");
        assert!(rule.check(state, later, 1).new_state().is_some());
    }
    // A window too short for its burst is refused up front.
    let fast = Quota::new(1_000_000, SEC, 1_000).unwrap(); // W = 1 ms, needs 2^20 ns
    assert!(Algorithm::SlidingWindow.check_quota(&fast).is_err());
    assert!(Algorithm::SlidingWindow.check_quota(&Quota::new(100_000, SEC, 1_000).unwrap()).is_ok());
}

#[test]
fn sliding_window_settles_into_the_window_charged() {
    let rule = window(60, 10); // windows of 10 s
    let w = rule.quota().refill_time();
    let aligned = START - START % w;
    let receipt = rule.check(0, aligned, 6).new_state().unwrap();
    // Same window: the refund comes off the current count.
    assert_eq!(
        rule.check(rule.settle(receipt, aligned + SEC, receipt, 6, 1, false).state, aligned + SEC, 0)
            .remaining,
        9
    );
    // Next window: off the previous count (1 left of 6: none of it still in the last W at 5 s).
    let later = aligned + w + 5 * SEC;
    let settled = rule.settle(receipt, later, receipt, 6, 1, false).state;
    assert_eq!(rule.check(settled, later, 0).remaining, 10);
    assert_eq!(rule.check(receipt, later, 0).remaining, 8, "unsettled: 6 spread, 2 still in");
    // Two windows on: nothing left to refund, and nothing wrongly taken from newer counts.
    let newer = rule.check(0, aligned + 2 * w, 3).new_state().unwrap();
    assert_eq!(rule.settle(newer, aligned + 2 * w, receipt, 6, 0, false).state, newer);
    // An extra charge goes into the current window, up to a debt.
    let owed = rule.settle(receipt, aligned, receipt, 6, 14, false).state;
    assert_eq!(rule.check(owed, aligned, 0).remaining, 0);
    // 14 spread over the next window, 10/14 s apart: at most 9 of them may still count.
    let wait = w + Nanos::new((4 * w.as_nanos()).div_ceil(14));
    assert_eq!(rule.check(owed, aligned, 1).retry_after, wait);
}

// ---------------------------------------------------------------------------------------------
// The token bucket reserving ahead, and settling.

#[test]
fn token_bucket_reserves_in_order_and_refuses_beyond_the_delay() {
    let rule = Rule::new(Algorithm::TokenBucket, Quota::new(5, SEC, 2).unwrap()); // 200 ms a token
    let delay = Nanos::from_millis(1_000);
    let mut state = 0;
    let mut waits = Vec::new();
    loop {
        let check = rule.check_within(state, START, 1, delay);
        match check.new_state() {
            Some(next) => {
                state = next;
                waits.push(check.wait.as_nanos() / 1_000_000);
            }
            None => {
                assert_eq!(check.retry_after, Nanos::from_millis(1_200));
                break;
            }
        }
    }
    // 2 now, then one every 200 ms up to the delay: rate × delay = 5 held at most.
    assert_eq!(waits, [0, 0, 200, 400, 600, 800, 1_000]);
    // A held request that goes away gives its tokens back: the next one takes its place.
    let released = rule.settle(state, START, state, 1, 0, false).state;
    assert_eq!(rule.check_within(released, START, 1, delay).wait, Nanos::from_millis(1_000));
}

#[test]
fn token_bucket_refunds_only_what_is_still_outstanding() {
    let rule = bucket(60, 10); // a token a second
    let receipt = rule.check(0, START, 5).new_state().unwrap(); // tokens back by START + 5 s
    assert_eq!(
        rule.check(rule.settle(receipt, START + 2 * SEC, receipt, 5, 0, false).state, START + 2 * SEC, 0)
            .remaining,
        10
    );
    // Queued behind it, a request that arrived at 1 s may not slide to before its arrival: 3 s
    // of the first one's slot are still ahead at 2 s, and only those come back.
    let queued = rule.check(receipt, START + SEC, 5).new_state().unwrap();
    let settled = rule.settle(queued, START + 2 * SEC, receipt, 5, 0, false);
    assert!(settled.shifted, "the queued request's slot slid back");
    let settled = settled.state;
    assert_eq!(settled, queued - 3 * SEC.as_nanos());
    assert_eq!(rule.check(settled, START + 2 * SEC, 0).remaining, 5, "6 as if the first were free");
    // Once its tokens are back, a refund would give tokens never lost.
    let other = rule.check(receipt, START + 5 * SEC, 10).new_state().unwrap();
    assert_eq!(rule.settle(other, START + 5 * SEC, receipt, 5, 0, false).state, other);
    // After a refund slid the bucket, an older receipt may no longer say where its slot ends.
    let first = rule.check(0, START, 2).new_state().unwrap();
    let second = rule.check(first, START, 2).new_state().unwrap();
    assert_eq!(rule.settle(second, START, first, 2, 0, true).state, second);
}

// ---------------------------------------------------------------------------------------------
// The sliding log against the exact definition.

/// The exact sliding window, by brute force: admitted iff the cost admitted in `(t − w, t]`
/// plus the request's own is at most `burst`.
fn exact(burst: u64, w: Nanos, trace: &[(Nanos, u64)]) -> Vec<bool> {
    let mut admitted: Vec<(Nanos, u64)> = Vec::new();
    trace
        .iter()
        .map(|&(at, cost)| {
            let inside: u64 = admitted.iter().filter(|&&(t, _)| t + w > at).map(|&(_, c)| c).sum();
            let ok = cost <= burst && inside + cost <= burst;
            if ok {
                admitted.push((at, cost));
            }
            ok
        })
        .collect()
}

fn log_quota(per_minute: u64, burst: u64) -> Quota {
    Quota::new(per_minute, MINUTE, burst).unwrap()
}

/// A trace from gaps: absolute times and costs.
fn trace(stream: &[(u64, u64)]) -> Vec<(Nanos, u64)> {
    let mut now = START;
    stream
        .iter()
        .map(|&(gap, cost)| {
            now += Nanos::new(gap);
            (now, cost)
        })
        .collect()
}

#[test]
fn sliding_log_is_exact_at_the_window_edge() {
    let quota = log_quota(60, 3); // w = 3 s
    let w = quota.refill_time();
    let mut log = Log::default();
    for at in [START, START + SEC, START + 2 * SEC] {
        assert!(log.check(&quota, at, 1, Nanos::ZERO).new_state().is_some());
    }
    // One nanosecond before the first leaves: refused, and told exactly how long.
    let refused = log.check(&quota, START + w - NS, 1, Nanos::ZERO);
    assert_eq!(refused.retry_after, NS);
    assert_eq!((refused.remaining, refused.next_after), (0, NS));
    // At the edge, (t − w, t] no longer holds it.
    let edge = log.check(&quota, START + w, 1, Nanos::ZERO);
    assert!(edge.new_state().is_some());
    assert_eq!(edge.remaining, 0);
    assert_eq!(edge.next_after, SEC, "t: until the oldest entry (at 1 s) leaves");
    assert_eq!(edge.reset_after, w, "empty when the newest (now) leaves");
    // A cost of 2 needs the two oldest gone.
    assert_eq!(log.check(&quota, START + w, 2, Nanos::ZERO).retry_after, 2 * SEC);
    assert!(log.check(&quota, START + w, 4, Nanos::ZERO).exceeds());
}

#[test]
fn sliding_log_holds_in_order_and_settles() {
    let quota = log_quota(300, 2); // 5 a second, burst 2: w = 400 ms
    let delay = Nanos::from_millis(1_000);
    let mut log = Log::default();
    let mut released = Vec::new();
    loop {
        let check = log.check(&quota, START, 1, delay);
        match check.new_state() {
            Some(at) => released.push((at - START.as_nanos()) / 1_000_000),
            None => break,
        }
    }
    assert_eq!(released, [0, 0, 400, 400, 800, 800]);
    // The last held one goes away: its place is free for the next.
    let last = START + Nanos::from_millis(800);
    log.settle(&quota, START, last, 1, 0);
    assert_eq!(log.check(&quota, START, 1, delay).wait, Nanos::from_millis(800));
    // An extra charge queues behind the held ones; a refund of an entry that left is nothing.
    let mut log = Log::default();
    let at = Nanos::new(log.check(&quota, START, 1, Nanos::ZERO).new_state().unwrap());
    log.settle(&quota, START, at, 1, 5);
    assert_eq!(log.check(&quota, START, 0, Nanos::ZERO).remaining, 0);
    assert_eq!(log.check(&quota, START, 1, Nanos::ZERO).retry_after, quota.refill_time());
    log.settle(&quota, START + SEC, at, 5, 0);
    assert!(log.is_idle(&quota, START + SEC));
}

proptest! {
    /// Keeping to the rate (requests at least one emission interval apart, any phase) is
    /// never refused by the counter.
    #[test]
    fn sliding_window_never_refuses_a_paced_client(
        per_minute in 1u64..6_000, burst in 1u64..50, phase in 0u64..u64::from(u32::MAX),
        slack in prop::collection::vec(0u64..2_000_000_000, 1..300)
    ) {
        let rule = window(per_minute, burst);
        let t = rule.quota().emission();
        let mut now = START + Nanos::new(phase);
        let mut state = 0;
        for (i, extra) in slack.iter().enumerate() {
            let check = rule.check(state, now, 1);
            prop_assert!(check.new_state().is_some(), "request {} refused", i);
            state = check.new_state().unwrap();
            // Half the gaps exactly one emission interval, the others a little longer.
            now += t + Nanos::new(if i % 2 == 0 { 0 } else { *extra % t.as_nanos() });
        }
    }

    /// The counter's bounds: at most `burst` per aligned window, at most `2 · burst` in any
    /// interval of length W.
    #[test]
    fn sliding_window_bounds_any_interval_of_w_by_two_bursts(
        per_minute in 1u64..600, burst in 1u64..20, stream in requests()
    ) {
        let rule = window(per_minute, burst);
        let w = rule.quota().refill_time();
        let admitted = admitted(&rule, &stream);
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let total: u64 = admitted[i..].iter().take_while(|&&(at, _)| at < start + w).map(|&(_, c)| c).sum();
            prop_assert!(total <= 2 * burst, "{} in an interval of W", total);
        }
    }

    /// The sliding log decides exactly as the definition: the same admissions, so never more
    /// than `burst` in any interval of length w and nothing refused that the definition admits.
    #[test]
    fn sliding_log_is_the_exact_definition(
        per_minute in 1u64..600, burst in 1u64..20, stream in requests()
    ) {
        let quota = log_quota(per_minute, burst);
        let w = quota.refill_time();
        let trace = trace(&stream);
        let expected = exact(burst, w, &trace);
        let mut log = Log::default();
        let mut admitted = Vec::new();
        for (&(at, cost), &ok) in trace.iter().zip(&expected) {
            let check = log.check(&quota, at, cost, Nanos::ZERO);
            prop_assert_eq!(check.new_state().is_some(), ok, "at {:?} cost {}", at, cost);
            if ok {
                admitted.push((at, cost));
            } else if !check.exceeds() {
                // Retry-After: exactly when the definition admits it (absent other traffic).
                let wait = check.retry_after;
                let mut probe = log.clone();
                prop_assert!(probe.check(&quota, at + wait - NS, cost, Nanos::ZERO).new_state().is_none());
                prop_assert!(probe.check(&quota, at + wait, cost, Nanos::ZERO).new_state().is_some());
            }
        }
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let total: u64 = admitted[i..].iter().take_while(|&&(at, _)| at < start + w).map(|&(_, c)| c).sum();
            prop_assert!(total <= burst);
        }
    }

    /// `t` of the log: more quota exactly then; zero only when nothing is used.
    #[test]
    fn sliding_log_next_after_is_honest(per_minute in 1u64..600, burst in 1u64..20, stream in requests()) {
        let quota = log_quota(per_minute, burst);
        let mut log = Log::default();
        let mut now = START;
        for &(at, cost) in &trace(&stream) {
            log.check(&quota, at, cost, Nanos::ZERO);
            now = at;
        }
        let standing = log.peek(&quota, now);
        prop_assert_eq!(standing.next_after.is_zero(), standing.remaining == burst);
        if !standing.next_after.is_zero() {
            let next = standing.next_after;
            prop_assert_eq!(log.peek(&quota, now + next - NS).remaining, standing.remaining);
            // One more at least: a run of cost n brings n back at once.
            prop_assert!(log.peek(&quota, now + next).remaining > standing.remaining);
        }
    }

    /// Reservations never exceed the rate: the instants held requests are released at are in
    /// arrival order, never more than `burst + rate · t` in any interval of length `t` (token
    /// bucket) or `burst` in any interval of length w (log), and never later than the delay.
    #[test]
    fn reservations_never_exceed_the_rate(
        per_minute in 1u64..600, burst in 1u64..20, stream in requests(),
        delay_ms in 0u64..20_000, log_algorithm in any::<bool>()
    ) {
        let quota = log_quota(per_minute, burst);
        let delay = Nanos::from_millis(delay_ms);
        let rule = Rule::new(Algorithm::TokenBucket, quota);
        let (mut state, mut log) = (0, Log::default());
        let mut released: Vec<(Nanos, u64)> = Vec::new();
        for &(at, cost) in &trace(&stream) {
            let check = if log_algorithm {
                log.check(&quota, at, cost, delay)
            } else {
                rule.check_within(state, at, cost, delay)
            };
            if let Some(next) = check.new_state() {
                state = next;
                prop_assert!(check.wait <= delay);
                let out = at + check.wait;
                if let Some(&(last, _)) = released.last() {
                    prop_assert!(out >= last, "released out of order");
                }
                released.push((out, cost));
            } else if !check.exceeds() {
                prop_assert!(check.retry_after > delay, "refused a wait within the delay");
            }
        }
        let w = quota.refill_time();
        for (i, &(start, _)) in released.iter().enumerate() {
            let mut total = 0;
            for &(at, cost) in &released[i..] {
                total += cost;
                if log_algorithm {
                    if at < start + w {
                        prop_assert!(total <= burst);
                    }
                } else {
                    prop_assert!(total <= burst + (at - start) / quota.emission());
                }
            }
        }
    }

    /// Refunds never give more than charging the settled costs up front would have: with
    /// the same admissions, the settled bucket's TAT is never below the one charged the
    /// actual costs at admission.
    #[test]
    fn refunds_never_beat_charging_the_actual_cost(
        per_minute in 1u64..600, burst in 1u64..20, stream in requests(),
        actual in prop::collection::vec(0u64..30, 150), lag in prop::collection::vec(0u64..4_000_000_000, 150)
    ) {
        let rule = bucket(per_minute, burst);
        let mut state = 0; // charged the route's cost, then settled when the "answer" comes
        // (settle at, charged at, receipt, charged, actual)
        let mut pending: Vec<(Nanos, Nanos, u64, u64, u64)> = Vec::new();
        let mut last_shift = Nanos::ZERO; // what a store remembers
        let mut reference = 0; // charged the actual cost up front
        for (i, &(at, cost)) in trace(&stream).iter().enumerate() {
            pending.sort_by_key(|p| p.0);
            while pending.first().is_some_and(|p| p.0 <= at) {
                let (when, charged_at, receipt, charged, real) = pending.remove(0);
                let settled = rule.settle(state, when, receipt, charged, real, last_shift >= charged_at);
                state = settled.state;
                if settled.shifted {
                    last_shift = when;
                }
                prop_assert!(state.max(when.as_nanos()) >= reference.max(when.as_nanos()));
            }
            let check = rule.check(state, at, cost);
            if let Some(next) = check.new_state() {
                state = next;
                let real = actual[i] % (cost + 1);
                pending.push((at + Nanos::new(lag[i]), at, next, cost, real));
                reference = rule.settle(reference, at, reference, 0, real, false).state;
            }
            prop_assert!(state.max(at.as_nanos()) >= reference.max(at.as_nanos()));
        }
    }
}

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
    // Halfway through the next window, half of the previous one still counts.
    let half = rule.check(state, aligned + 15 * SEC, 0);
    assert_eq!(half.remaining, 5);
    let denied = rule.check(state, aligned + 15 * SEC, 6);
    assert_eq!(denied.new_state(), None);
    assert_eq!(denied.retry_after, SEC, "one more tenth of the window must slide out");
    assert!(rule.check(state, aligned + 16 * SEC, 6).new_state().is_some());
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
    // Next window starts in 8 s; there 10·(W−e)/W ≤ 6 needs e ≥ 4 s.
    assert_eq!(denied.retry_after, 12 * SEC);
    assert!(rule.check(state, aligned + 14 * SEC - NS, 4).new_state().is_none());
    assert!(rule.check(state, aligned + 14 * SEC, 4).new_state().is_some());
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

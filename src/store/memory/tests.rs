use nonzero_ext::nonzero;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::algorithm::{Algorithm, Quota};
use crate::clock::ManualClock;
use crate::clock::Nanos;
use crate::policy::{Limits, Tier, TierSpec};

pub(super) const START: Duration = Duration::from_secs(1_700_000_000);

fn limits() -> Limits {
    Limits::builder()
        .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))))
        .tier(
            "daily",
            TierSpec::new(Quota::per_minute(nonzero!(600u32)).allow_burst(nonzero!(10u32))).daily(15),
        )
        .tier(
            "window",
            TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)))
                .algorithm(Algorithm::SlidingWindow),
        )
        .tier(
            "log",
            TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)))
                .algorithm(Algorithm::SlidingLog),
        )
        .build()
        .unwrap()
}

pub(super) fn store() -> (MemoryStore<ManualClock>, ManualClock) {
    let clock = ManualClock::new(START);
    (MemoryStore::with_clock(clock.clone()), clock)
}

/// Eight threads each ask `each` times for one token of the key `hot` in `limits`' default tier:
/// how many were admitted in all.
pub(super) fn admitted_by_threads(
    store: &Arc<MemoryStore<ManualClock>>,
    limits: &Limits,
    each: usize,
) -> usize {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, limits) = (store.clone(), limits.clone());
            std::thread::spawn(move || {
                let key = Key::new("hot");
                let tier = limits.default_tier();
                (0..each).filter(|_| store.decide(&key, tier, Charge::new(1)).is_admitted()).count()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

#[test]
fn many_threads_on_one_key_admit_exactly_the_burst() {
    let limits = Arc::new(
        Limits::builder()
            .tier(
                "anonymous",
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(1_000u32)))
                    .daily(100_000),
            )
            .build()
            .unwrap(),
    );
    let (store, _clock) = store();
    let store = Arc::new(store);
    let admitted = admitted_by_threads(&store, &limits, 5_000);
    assert_eq!(admitted, 1_000, "the clock is frozen: exactly the burst");
    // Both policies were charged exactly once per admission.
    let d = store.decide(&Key::new("hot"), limits.default_tier(), Charge::new(0));
    assert_eq!(d.policies()[0].remaining, 0);
    assert_eq!(d.policies()[1].remaining, 100_000 - 1_000);
}

#[test]
fn a_rejection_charges_no_policy() {
    let limits = limits();
    let tier = limits.tier("daily").unwrap();
    let (store, clock) = store();
    let key = Key::new("k");
    for _ in 0..10 {
        assert!(store.decide(&key, tier, Charge::new(1)).is_admitted());
    }
    // The burst policy refuses; the daily one must not be charged by the refusal.
    for _ in 0..5 {
        assert!(!store.decide(&key, tier, Charge::new(1)).is_admitted());
    }
    let d = store.decide(&key, tier, Charge::new(0));
    assert_eq!(d.policies()[1].remaining, 5);
    // Refill the burst; the daily quota (15) now refuses after 5 more, and the burst policy
    // is given back what it was charged for the refused request.
    clock.advance(Duration::from_secs(1));
    for _ in 0..5 {
        assert!(store.decide(&key, tier, Charge::new(1)).is_admitted());
    }
    let refused = store.decide(&key, tier, Charge::new(1));
    assert_eq!(refused.verdict(), Verdict::Rejected);
    assert_eq!(refused.headline().index, 1, "the daily policy is the violated one");
    let d = store.decide(&key, tier, Charge::new(0));
    assert_eq!(d.policies()[0].remaining, 5, "the refused request was refunded");
}

#[test]
fn reduced_cost_applies_below_the_threshold() {
    let limits = limits();
    let tier = limits.default_tier();
    let (store, _) = store();
    let key = Key::new("k");
    let charge = Charge::new(4).reduced(0.5, 1);
    let first = store.decide(&key, tier, charge);
    assert_eq!((first.charged(), first.fraction_before()), (4, 1.0));
    let second = store.decide(&key, tier, charge);
    assert_eq!(second.charged(), 4);
    let third = store.decide(&key, tier, charge);
    assert!((third.fraction_before() - 0.2).abs() < 1e-9);
    assert_eq!(third.charged(), 1);
}

#[test]
fn idle_keys_are_forgotten_without_a_cleanup_task() {
    let limits = limits();
    let tier = limits.default_tier();
    let (store, clock) = store();
    let store = store.shards(1);
    for i in 0..10_000 {
        store.decide(&Key::new(format!("k{i}")), tier, Charge::new(1));
        clock.advance(Duration::from_millis(1));
    }
    // Each key is full again a second after its request: at most ~1 000 + one sweep's slack.
    assert!(store.len() < 2 * MIN_SWEEP + 1_000, "{} states kept", store.len());
}

fn ip(n: u32) -> Key {
    Key::from_ip(std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)))
}

/// Issue 11, finding 7: at the cap, new keys shared one overflow bucket per shard, so in a
/// flood of new addresses a first-time legitimate client was refused.
#[test]
fn at_the_cap_a_newcomer_in_a_flood_is_admitted_and_the_idle_longest_make_room() {
    let limits = limits();
    let tier = limits.default_tier();
    let clock = ManualClock::new(START);
    let store = MemoryStore::with_clock(clock.clone()).shards(1).capacity(100);
    for i in 0..10_000 {
        assert!(store.decide(&ip(i), tier, Charge::new(1)).is_admitted(), "flooder {i} is new too");
        assert!(store.len() <= 100);
        clock.advance(Duration::from_micros(10));
    }
    // In the middle of the flood, a first-time client is admitted on its first request.
    let newcomer = Key::from_ip("192.0.2.1".parse().unwrap());
    let first = store.decide(&newcomer, tier, Charge::new(1));
    assert!(first.is_admitted());
    assert_eq!(first.policies()[0].remaining, 9, "a bucket of its own");
    // The flooders idle longest made room; the latest ones keep their standing.
    assert_eq!(store.decide(&ip(9_999), tier, Charge::new(0)).policies()[0].remaining, 9);
    assert_eq!(store.decide(&newcomer, tier, Charge::new(0)).policies()[0].remaining, 9);
    assert_eq!(store.decide(&ip(0), tier, Charge::new(0)).policies()[0].remaining, 10, "evicted");
}

/// Issue 11, finding 7: clients with an identity never share state with anonymous ones, nor
/// lose their own, because of a flood of addresses.
#[test]
fn a_flood_of_addresses_never_costs_an_identified_client_its_bucket() {
    let limits = limits();
    let (anonymous, daily) = (limits.default_tier(), limits.tier("daily").unwrap());
    let clock = ManualClock::new(START);
    let store = MemoryStore::with_clock(clock.clone()).shards(1).capacity(64);
    let alice = Key::new("alice-api-key");
    for _ in 0..4 {
        assert!(store.decide(&alice, daily, Charge::new(1)).is_admitted());
    }
    for i in 0..5_000 {
        store.decide(&ip(i), anonymous, Charge::new(3));
        let standing = store.decide(&alice, daily, Charge::new(0));
        assert_eq!((standing.policies()[0].remaining, standing.policies()[1].remaining), (6, 11), "at {i}");
    }
    for _ in 0..6 {
        assert!(store.decide(&alice, daily, Charge::new(1)).is_admitted());
    }
    assert!(!store.decide(&alice, daily, Charge::new(1)).is_admitted(), "exactly her burst");
    // A shard full of identified clients: an anonymous newcomer still gets an answer (the
    // overflow bucket, shared with anonymous newcomers only), and no identified client moves.
    let store = MemoryStore::with_clock(clock.clone()).shards(1).capacity(64);
    let users: Vec<Key> = (0..32).map(|i| Key::new(format!("user-{i}"))).collect();
    for user in &users {
        store.decide(user, daily, Charge::new(2));
    }
    assert_eq!(store.len(), 64);
    for i in 0..20 {
        store.decide(&ip(i), anonymous, Charge::new(1));
    }
    for user in &users[..20] {
        assert_eq!(store.decide(user, daily, Charge::new(0)).policies()[1].remaining, 13, "untouched");
    }
}

#[test]
fn cost_zero_and_impossible_costs_store_nothing() {
    let limits = limits();
    let tier = limits.default_tier();
    let (store, _) = store();
    assert!(store.decide(&Key::new("a"), tier, Charge::new(0)).is_admitted());
    assert_eq!(store.decide(&Key::new("a"), tier, Charge::new(11)).verdict(), Verdict::Exceeds);
    assert_eq!(store.len(), 0);
    // Over one policy's burst: every policy reports its standing untouched.
    let daily = limits.tier("daily").unwrap();
    let never = store.decide(&Key::new("a"), daily, Charge::new(12));
    assert_eq!(never.verdict(), Verdict::Exceeds);
    assert_eq!((never.policies()[0].remaining, never.policies()[1].remaining), (10, 15));
    // Refused by the burst policy: the daily one reports what it has, not what it would have.
    for _ in 0..10 {
        store.decide(&Key::new("b"), daily, Charge::new(1));
    }
    let refused = store.decide(&Key::new("b"), daily, Charge::new(1));
    assert_eq!(refused.verdict(), Verdict::Rejected);
    assert_eq!(refused.policies()[1].remaining, 5);
}

proptest! {
    /// Every request is either admitted (and charged) or refused (and not): over any stream,
    /// admitted + refused = sent, and the tokens charged equal the standing's drop.
    #[test]
    fn decisions_partition_requests(costs in prop::collection::vec(0u64..12, 1..100), tier in 0usize..3) {
        let limits = limits();
        let tier = &limits.tiers()[tier];
        let (store, _) = store();
        let key = Key::new("p");
        let (mut admitted, mut refused, mut charged) = (0, 0, 0);
        for &cost in &costs {
            let d = store.decide(&key, tier, Charge::new(cost));
            match d.verdict() {
                Verdict::Admitted => { admitted += 1; charged += d.charged(); prop_assert_eq!(d.charged(), cost); }
                _ => { refused += 1; prop_assert_eq!(d.charged(), 0); }
            }
        }
        prop_assert_eq!(admitted + refused, costs.len());
        let standing = store.decide(&key, tier, Charge::new(0));
        prop_assert_eq!(standing.policies()[0].remaining, 10 - charged.min(10));
    }
}

proptest! {
    /// The one-policy fast path decides exactly as the general path: same verdicts, standings,
    /// fractions and charges, over streams of costs (reduced below half the burst), time steps
    /// and keys, on a store small enough to hit its capacity and make room.
    #[test]
    fn one_policy_fast_path_matches_the_general_path(
        steps in prop::collection::vec((0u64..12, 0u64..4_000, 0usize..6), 1..150),
        tier in prop::sample::select(vec!["anonymous", "window"]),
    ) {
        let limits = limits();
        let tier = limits.tier(tier).unwrap();
        prop_assert_eq!(tier.policies().len(), 1);
        let clock = ManualClock::new(START);
        let fast = MemoryStore::with_clock(clock.clone()).shards(1).capacity(3);
        let mut general = MemoryStore::with_clock(clock.clone()).shards(1).capacity(3);
        // The same digests, so that both make room alike.
        general.hasher = fast.hasher.clone();
        for (cost, advance_ms, key) in steps {
            clock.advance(Duration::from_millis(advance_ms));
            let key = if key % 2 == 0 { Key::new(format!("k{key}")) } else { ip(key as u32) };
            let charge = Charge::new(cost).reduced(0.5, 1);
            let a = fast.decide(&key, tier, charge);
            let digest = general.hasher.hash_one(&key);
            let shard = &general.shards[((digest >> 32) & general.shard_mask) as usize];
            let b = general.decide_all(shard, Whose { digest, class: Class::of(&key) }, tier.policies(), Nanos::ZERO, clock.now(), charge);
            prop_assert_eq!(a, b);
            prop_assert_eq!(fast.len(), general.len());
        }
    }
}

fn one_tier(quota: Quota) -> Limits {
    Limits::builder().tier("anonymous", TierSpec::new(quota)).build().unwrap()
}

/// The limits a reload of `previous` to `next` puts in force.
fn reload(previous: &Limits, mut next: Limits) -> Limits {
    next.continue_from(previous, Nanos::ZERO);
    next
}

fn remaining<C: Clock>(store: &MemoryStore<C>, key: &Key, tier: &Tier) -> Vec<u64> {
    store.decide(key, tier, Charge::new(0)).policies().iter().map(|p| p.remaining).collect()
}

/// Issue 11, item 5: state was indexed by the policy's position, so policy 0 of two limiters
/// sharing a store was one bucket, and the strict limiter's refusal (Retry-After an hour)
/// answered the loose one's client.
#[test]
fn limiters_sharing_a_store_never_share_a_bucket() {
    let strict = one_tier(Quota::per_hour(nonzero!(1u32)));
    let loose = one_tier(Quota::per_second(nonzero!(100u32)));
    let same_as_strict = one_tier(Quota::per_hour(nonzero!(1u32)));
    let (store, _) = store();
    let key = Key::new("client");
    assert!(store.decide(&key, strict.default_tier(), Charge::new(1)).is_admitted());
    assert!(!store.decide(&key, strict.default_tier(), Charge::new(1)).is_admitted());
    let d = store.decide(&key, loose.default_tier(), Charge::new(1));
    assert!(d.is_admitted(), "{d:?}");
    assert_eq!(d.policies()[0].remaining, 99);
    // Separately built limits never share, even with the same names and rules; clones do.
    assert!(store.decide(&key, same_as_strict.default_tier(), Charge::new(1)).is_admitted());
    assert!(!store.decide(&key, strict.clone().default_tier(), Charge::new(1)).is_admitted());
    assert_eq!(store.len(), 3);
}

/// The contract's example: a client who used 3 of a burst of 5 has 17 left when the burst
/// becomes 20, plus what refills; lowering the burst takes nothing back beyond the new burst.
#[test]
fn used_tokens_carry_over_a_burst_change() {
    let per_minute = |burst| Quota::per_minute(nonzero!(60u32)).allow_burst(burst);
    let five = one_tier(per_minute(nonzero!(5u32)));
    let (store, clock) = store();
    let key = Key::new("k");
    let other = Key::new("untouched");
    for _ in 0..3 {
        assert!(store.decide(&key, five.default_tier(), Charge::new(1)).is_admitted());
    }
    store.decide(&other, five.default_tier(), Charge::new(1));
    let twenty = reload(&five, one_tier(per_minute(nonzero!(20u32))));
    assert_eq!(remaining(&store, &key, twenty.default_tier()), [17]);
    clock.advance(Duration::from_secs(1));
    assert_eq!(remaining(&store, &key, twenty.default_tier()), [18], "plus what refilled");
    assert_eq!(remaining(&store, &other, twenty.default_tier()), [20]);
    for _ in 0..18 {
        assert!(store.decide(&key, twenty.default_tier(), Charge::new(1)).is_admitted());
    }
    // 20 used; the burst becomes 2: nothing left until 19 of them have refilled (use is never
    // forgotten: raising the burst again gives nothing extra).
    let two = reload(&twenty, one_tier(per_minute(nonzero!(2u32))));
    let refused = store.decide(&key, two.default_tier(), Charge::new(1));
    assert!(!refused.is_admitted());
    assert_eq!(refused.retry_after(), Some(Nanos::from_secs(19)));
    assert_eq!(refused.policies()[0].next_after, Nanos::from_secs(19));
    let twenty_again = reload(&two, one_tier(per_minute(nonzero!(20u32))));
    assert_eq!(remaining(&store, &key, twenty_again.default_tier()), [0]);
    clock.advance(Duration::from_secs(19));
    assert!(store.decide(&key, two.default_tier(), Charge::new(1)).is_admitted());
}

/// A new rate (or algorithm) converts the state: the tokens used carry over, and refill at
/// the new rate.
#[test]
fn used_tokens_carry_over_a_rate_or_algorithm_change() {
    let ten = one_tier(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)));
    let (store, clock) = store();
    let key = Key::new("k");
    assert!(store.decide(&key, ten.default_tier(), Charge::new(4)).is_admitted());
    let faster = reload(&ten, one_tier(Quota::per_minute(nonzero!(120u32)).allow_burst(nonzero!(10u32))));
    assert_eq!(remaining(&store, &key, faster.default_tier()), [6]);
    clock.advance(Duration::from_secs(1));
    assert_eq!(remaining(&store, &key, faster.default_tier()), [8], "two tokens a second now");
    let window = TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)))
        .algorithm(Algorithm::SlidingWindow);
    let window = reload(&faster, Limits::builder().tier("anonymous", window).build().unwrap());
    assert_eq!(remaining(&store, &key, window.default_tier()), [8]);
}

/// A policy that is gone is forgotten: added back later, it starts full. A new policy starts
/// full; the others keep their state.
#[test]
fn gone_policies_are_forgotten_and_new_ones_start_full() {
    let with_daily = |daily| {
        let spec = TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)));
        Limits::builder().tier("anonymous", if daily { spec.daily(100) } else { spec }).build().unwrap()
    };
    let (store, _) = store();
    let key = Key::new("k");
    let first = with_daily(true);
    assert!(store.decide(&key, first.default_tier(), Charge::new(5)).is_admitted());
    assert_eq!(remaining(&store, &key, first.default_tier()), [5, 95]);
    let without = reload(&first, with_daily(false));
    assert_eq!(remaining(&store, &key, without.default_tier()), [5]);
    let again = reload(&without, with_daily(true));
    assert_eq!(remaining(&store, &key, again.default_tier()), [5, 100], "the daily quota starts full");
}

/// A request planned under the limits before a reload that reaches the store after a request
/// under the new ones is decided by the newest rule: states never go back to an older one.
#[test]
fn the_newest_rule_decides_for_requests_of_an_older_generation() {
    let per_minute = |burst| one_tier(Quota::per_minute(nonzero!(60u32)).allow_burst(burst));
    let old = per_minute(nonzero!(5u32));
    let (store, _) = store();
    let key = Key::new("k");
    assert!(store.decide(&key, old.default_tier(), Charge::new(3)).is_admitted());
    let new = reload(&old, per_minute(nonzero!(20u32)));
    assert_eq!(remaining(&store, &key, new.default_tier()), [17]);
    let late = store.decide(&key, old.default_tier(), Charge::new(1));
    assert_eq!((late.policies()[0].limit, late.policies()[0].remaining), (20, 16));
    assert_eq!(remaining(&store, &key, new.default_tier()), [16]);
}

/// One step of a client's life across reloads.
#[derive(Debug, Clone)]
enum Step {
    /// A request of this cost under the limits in force.
    Request(u64),
    /// A request planned under the limits before the last reload, decided now.
    Late(u64),
    /// Time passes (milliseconds).
    Wait(u64),
    /// The limits become (tokens per minute, burst, sliding window?).
    Reload(u32, u32, bool),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => (1u64..4).prop_map(Step::Request),
        1 => (1u64..4).prop_map(Step::Late),
        3 => (0u64..3_000).prop_map(Step::Wait),
        1 => (1u32..240, 1u32..12, prop::bool::weighted(0.2)).prop_map(|(r, b, w)| Step::Reload(r, b, w)),
    ];
    prop::collection::vec(step, 1..200)
}

fn rule_limits(per_minute: u32, burst: u32, window: bool) -> Limits {
    let quota = Quota::per_minute(std::num::NonZeroU32::new(per_minute).unwrap())
        .allow_burst(std::num::NonZeroU32::new(burst).unwrap());
    let spec = TierSpec::new(quota);
    let spec = if window { spec.algorithm(Algorithm::SlidingWindow) } else { spec };
    Limits::builder().tier("anonymous", spec).build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For any sequence of requests and reloads (rates, bursts and algorithms changing, with
    /// requests planned before a reload decided after it), no client is admitted more than the
    /// limits in force allow over any interval: at most the largest burst in force during it,
    /// plus what the fastest rate in force refills over its length (when a sliding window was
    /// in force: twice that, the window's own bound).
    #[test]
    fn no_client_gets_more_than_the_limits_in_force_allow(steps in steps()) {
        let (store, clock) = store();
        let store = store.shards(1);
        let key = Key::new("k");
        let mut current = rule_limits(60, 5, false);
        let mut previous = current.clone();
        // (time, limits in force from then on); admissions as (time, cost).
        let mut eras = vec![(clock.now(), 60u32, 5u32, false)];
        let mut admitted: Vec<(Nanos, u64)> = Vec::new();
        for step in steps {
            match step {
                Step::Request(cost) | Step::Late(cost) => {
                    let limits = if matches!(step, Step::Late(_)) { &previous } else { &current };
                    let d = store.decide(&key, limits.default_tier(), Charge::new(cost));
                    if d.is_admitted() {
                        admitted.push((clock.now(), cost));
                    }
                }
                Step::Wait(ms) => clock.advance(Duration::from_millis(ms)),
                Step::Reload(rate, burst, window) => {
                    let next = reload(&current, rule_limits(rate, burst, window));
                    store.carry_over(&next);
                    previous = std::mem::replace(&mut current, next);
                    eras.push((clock.now(), rate, burst, window));
                }
            }
        }
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let mut sum = 0;
            for &(end, cost) in &admitted[i..] {
                sum += cost;
                // The limits in force at any time in [start, end] (the one in force at `start`
                // began at or before it).
                let in_force = eras.iter().enumerate().filter(|(j, (from, ..))| {
                    *from <= end && eras.get(j + 1).is_none_or(|(next, ..)| *next >= start)
                });
                let (mut burst, mut per_minute, mut window) = (0u64, 0u64, false);
                for (_, &(_, r, b, w)) in in_force {
                    burst = burst.max(u64::from(b));
                    per_minute = per_minute.max(u64::from(r));
                    window |= w;
                }
                let span = (end - start).as_secs_f64();
                let refill = span * per_minute as f64 / 60.0;
                let bound = if window { 2.0 * burst as f64 + 2.0 * refill } else { burst as f64 + refill };
                prop_assert!(
                    sum as f64 <= bound + 1e-6,
                    "{sum} admitted in {span} s, bound {bound} (eras {eras:?}, admitted {admitted:?})"
                );
            }
        }
    }
}
/// One step of a stream at the cap: who asks (an address of many, or one of a few identified
/// clients), for what cost, and how much later.
#[derive(Debug, Clone)]
enum Who {
    Address(u32),
    Identified(u8),
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        3 => (0u32..400).prop_map(Who::Address),
        1 => (0u8..4).prop_map(Who::Identified),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Under any interleaving of keys, costs and clock steps at the cap: the store never keeps
    /// more states than its capacity, every identified client is decided exactly as by a store
    /// without a cap (same verdicts, standings, waits), and an address seen for the first time
    /// is admitted for any cost its tier can hold.
    #[test]
    fn at_the_cap_states_are_bounded_and_identified_clients_exact(
        steps in prop::collection::vec((who(), 0u64..12, 0u64..3_000), 1..400),
        capacity in 32usize..96,
        tier in prop::sample::select(vec!["anonymous", "daily", "window", "log"]),
    ) {
        let limits = limits();
        let tier = limits.tier(tier).unwrap();
        let clock = ManualClock::new(START);
        let capped = MemoryStore::with_clock(clock.clone()).shards(1).capacity(capacity);
        let model = MemoryStore::with_clock(clock.clone()).shards(1);
        let mut seen = std::collections::HashSet::new();
        for (who, cost, advance_ms) in steps {
            clock.advance(Duration::from_millis(advance_ms));
            let charge = Charge::new(cost).reduced(0.5, 1);
            match who {
                Who::Identified(n) => {
                    let key = Key::new(format!("user-{n}"));
                    // The same answer (the receipt's raw state aside: an idle state the capped
                    // store swept and one the model kept are the same standing).
                    let (a, b) = (capped.decide(&key, tier, charge), model.decide(&key, tier, charge));
                    let seen = |d: &Decision| (d.verdict(), d.now(), d.fraction_before(), d.charged(), d.policies().to_vec());
                    prop_assert_eq!(seen(&a), seen(&b));
                }
                Who::Address(n) => {
                    let decision = capped.decide(&ip(n), tier, charge);
                    if seen.insert(n) && (1..=tier.max_cost()).contains(&cost) {
                        prop_assert!(decision.is_admitted(), "a first request of cost {}", cost);
                    }
                }
            }
            prop_assert!(capped.len() <= capacity, "{} states of {}", capped.len(), capacity);
        }
    }
}

/// Threads flooding a small store with new addresses while others spend one identified
/// client's burst: the client is admitted exactly its burst (the clock is frozen), and the
/// store never holds more than its capacity.
#[test]
fn a_threaded_flood_at_the_cap_leaves_identified_clients_exact() {
    let limits = Arc::new(
        Limits::builder()
            .tier(
                "anonymous",
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(500u32))),
            )
            .build()
            .unwrap(),
    );
    let (store, _clock) = store();
    let store = Arc::new(store.capacity(256));
    let flood: Vec<_> = (0..3u32)
        .map(|t| {
            let (store, limits) = (store.clone(), limits.clone());
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    store.decide(&ip(t * 1_000_000 + i), limits.default_tier(), Charge::new(1));
                    assert!(store.len() <= 256, "{} states", store.len());
                }
            })
        })
        .collect();
    let spenders: Vec<_> = (0..2)
        .map(|_| {
            let (store, limits) = (store.clone(), limits.clone());
            std::thread::spawn(move || {
                let key = Key::new("identified");
                (0..2_000)
                    .filter(|_| store.decide(&key, limits.default_tier(), Charge::new(1)).is_admitted())
                    .count()
            })
        })
        .collect();
    flood.into_iter().for_each(|t| t.join().unwrap());
    let admitted: usize = spenders.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 500);
    assert!(store.len() <= 256);
}

/// Issue 14: the shards' biased locks (`bias.rs`) under every kind of writer at once. Readers
/// charge two identified clients (one policy: `decide_one`; two: `decide_all`) while threads
/// flood a small store with new addresses (insertions, sweeps, evictions: each a write that
/// revokes a shard's bias) and a reload thread converts every shard again and again
/// (`carry_over`, the same quotas under a new version). `clock` steps forward meanwhile when
/// `steps` is not zero. Returns what each client was admitted, and the time that passed.
fn charge_through_writers(barrier: Barrier, steps: u32) -> (usize, usize, Nanos) {
    let build = || {
        Limits::builder()
            .tier(
                "anonymous",
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(400u32))),
            )
            .tier(
                "two",
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(300u32)))
                    .daily(100_000),
            )
            .build()
            .unwrap()
    };
    let limits = Arc::new(build());
    let (store, clock) = store();
    let store = Arc::new(store.capacity(256).barrier(barrier));
    assert!(store.shards.iter().all(|s| s.data.barrier() == barrier));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..2u32)
        .map(|t| {
            let (store, limits, stop) = (store.clone(), limits.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    store.decide(&ip(t * 10_000_000 + i), limits.default_tier(), Charge::new(1));
                    assert!(store.len() <= 256, "{} states", store.len());
                    i += 1;
                }
            })
        })
        .collect();
    let reloads = {
        let (store, limits, stop) = (store.clone(), limits.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut current = (*limits).clone();
            while !stop.load(Ordering::Relaxed) {
                current = reload(&current, build());
                store.carry_over(&current);
                std::thread::yield_now();
            }
        })
    };
    let ticks = {
        let (clock, stop) = (clock.clone(), stop.clone());
        std::thread::spawn(move || {
            for _ in 0..steps {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                clock.advance(Duration::from_millis(10));
                std::thread::yield_now();
            }
        })
    };
    let spend = |name: &'static str, tier: &'static str| {
        let (store, limits) = (store.clone(), limits.clone());
        std::thread::spawn(move || {
            let key = Key::new(name);
            let tier = limits.tier(tier).unwrap();
            (0..20_000).filter(|_| store.decide(&key, tier, Charge::new(1)).is_admitted()).count()
        })
    };
    let spenders = [spend("one", "anonymous"), spend("one", "anonymous"), spend("two", "two")];
    let [a, b, two] = spenders.map(|t| t.join().unwrap());
    stop.store(true, Ordering::Relaxed);
    flood.into_iter().for_each(|t| t.join().unwrap());
    reloads.join().unwrap();
    ticks.join().unwrap();
    assert!(store.len() <= 256);
    (a + b, two, clock.now() - Nanos::from(START))
}

#[test]
fn biased_shards_keep_counts_exact_under_floods_and_reloads() {
    for barrier in [Barrier::detect(), Barrier::Fences] {
        let (one, two, _) = charge_through_writers(barrier, 0);
        assert_eq!((one, two), (400, 300), "{barrier:?}: the clock is frozen: exactly the bursts");
    }
}

#[test]
fn biased_shards_never_admit_more_than_burst_and_rate_under_floods_and_reloads() {
    for barrier in [Barrier::detect(), Barrier::Fences] {
        let (one, two, elapsed) = charge_through_writers(barrier, 2_000);
        // One token a second: the burst plus what the elapsed time refilled.
        let refilled = (elapsed.as_nanos() / Nanos::SECOND.as_nanos()) as usize;
        assert!((400..=400 + refilled + 1).contains(&one), "{barrier:?}: {one} in {elapsed:?}");
        assert!((300..=300 + refilled + 1).contains(&two), "{barrier:?}: {two} in {elapsed:?}");
    }
}

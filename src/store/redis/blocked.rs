//! The over-limit cache: once Redis has rejected a client until some instant, reject the same
//! request locally until then, without asking Redis again.
//!
//! Sound as long as limiter state only gets worse for a client until its deadline: other
//! instances can spend more of its tokens, never give them back. So a request identical to the
//! rejected one (same cost, same reduced cost) is rejected before the deadline, and the
//! `Retry-After` computed from the cached deadline is the one Redis gave (absent other
//! traffic). A request with a different charge asks Redis (and may replace the entry). A
//! rejection at the full cost of a degradable charge is not cached: other traffic could move the
//! client into the cheaper band, where the reduced cost might fit before the deadline.
//!
//! But state can get better behind our back: an operator deletes the client's keys, Redis
//! evicts them under `maxmemory`, a failover loses the latest writes. Then the local refusal is
//! wrong, and it stays wrong until the entry ends. So an entry ends at the earliest of: the
//! deadline, the first token any policy gets back, and `recheck` (one second by default) after
//! Redis' answer. **A local refusal is never based on an answer of Redis more than `recheck`
//! old**: after a reset, a client is refused for at most `recheck` longer than Redis would
//! refuse it, and a flood from one refused client costs Redis one call per `recheck`.
//!
//! Bounded: at most `capacity` entries, split over a few mutex-guarded shards; a full shard
//! drops its expired entries and, if still full, caches nothing more until some expire (those
//! keys keep asking Redis, which stays correct). Keys are digests under a per-process random
//! seed; time is passed in (nanoseconds, from the store's clock), so tests use a manual clock.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use crate::clock::Nanos;
use crate::key::Key;
use crate::policy::Tier;
use crate::store::{Charge, Decision, PolicyState, Verdict};

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    /// Local time of the rejection.
    at: Nanos,
    /// Local time until which the request is rejected.
    until: Nanos,
    /// The charge that was rejected.
    charge: Charge,
    /// Redis' answer.
    decision: Decision,
}

#[derive(Debug)]
pub(super) struct Blocked {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    per_shard: usize,
    /// The longest an entry lives: the bound on how stale a local refusal can be.
    recheck: Nanos,
    hasher: foldhash::quality::RandomState,
}

impl Blocked {
    /// A cache of at most about `capacity` entries (0 disables it), each kept at most
    /// `recheck` (at least 1 ns).
    pub(super) fn new(capacity: usize, recheck: Nanos) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            recheck: recheck.max(Nanos::new(1)),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// The entry of one client under one tier's policies, by their identities and rules
    /// (never by position: limiters sharing this store, or the limits before and after a
    /// reload, have entries of their own).
    pub(super) fn digest(&self, key: &Key, tier: &Tier) -> u64 {
        self.hasher.hash_one((key, tier.state_id()))
    }

    fn shard(&self, digest: u64) -> &Mutex<HashMap<u64, Entry>> {
        &self.shards[(digest >> 59) as usize % SHARDS]
    }

    /// A rejection of `charge` at local time `now`, if one is cached.
    #[inline]
    pub(super) fn get(&self, digest: u64, charge: Charge, now: Nanos) -> Option<Decision> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(digest).lock().unwrap_or_else(PoisonError::into_inner);
        let entry = *shard.get(&digest)?;
        if now >= entry.until {
            shard.remove(&digest);
            return None;
        }
        drop(shard);
        (entry.charge == charge).then(|| aged(&entry.decision, now.saturating_sub(entry.at)))
    }

    /// Forgets the rejection of one client in one tier (a refund may let it in sooner).
    pub(super) fn forget(&self, digest: u64) {
        if self.per_shard > 0 {
            self.shard(digest).lock().unwrap_or_else(PoisonError::into_inner).remove(&digest);
        }
    }

    /// Remembers that Redis rejected `charge` at local time `now`, for a tier that holds a
    /// request for up to `hold`: the same request is held rather than refused once its wait is
    /// within `hold`, so the entry ends `hold` before Redis' deadline.
    pub(super) fn insert(&self, digest: u64, charge: Charge, decision: &Decision, hold: Nanos, now: Nanos) {
        let Some(wait) = decision.retry_after() else { return };
        let wait = wait.saturating_sub(hold);
        if wait.is_zero() {
            return;
        }
        if self.per_shard == 0 || decision.verdict() != Verdict::Rejected {
            return;
        }
        // Rejected at the full cost of a charge that has a cheaper band: other instances could
        // push the client into that band, where the cheaper cost might fit before the deadline.
        if charge.cost_for(decision.fraction_before()) > charge.reduced_cost.min(charge.cost) {
            return;
        }
        // Until the first token arrives in any policy the standing is exactly the one Redis gave,
        // aged: no token count changes. Past it, `remaining` and `t` would be stale, so the entry
        // ends there (for a request of cost 1 that is the deadline itself).
        let first_token = decision.policies().iter().map(|p| p.next_after).filter(|t| !t.is_zero()).min();
        // And never longer than `recheck`: state may have got better behind our back.
        let valid = first_token.map_or(wait, |t| t.min(wait)).min(self.recheck);
        let entry = Entry { at: now, until: now.saturating_add(valid), charge, decision: *decision };
        let mut shard = self.shard(digest).lock().unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, e| e.until > now);
            if shard.len() >= self.per_shard {
                return;
            }
        }
        shard.insert(digest, entry);
    }

    /// Entries held now (expired ones included until they are swept).
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }
}

/// `decision`, `elapsed` later: the same standing, with its waits shortened.
fn aged(decision: &Decision, elapsed: Nanos) -> Decision {
    let mut aged = Decision::new(
        Verdict::Rejected,
        decision.now().saturating_add(elapsed),
        decision.fraction_before(),
        0,
    );
    for p in decision.policies() {
        aged = aged.with(PolicyState {
            reset_after: p.reset_after.saturating_sub(elapsed),
            retry_after: if p.retry_after.is_zero() {
                Nanos::ZERO
            } else {
                p.retry_after.saturating_sub(elapsed).max(Nanos::new(1))
            },
            next_after: if p.next_after.is_zero() {
                Nanos::ZERO
            } else {
                p.next_after.saturating_sub(elapsed).max(Nanos::new(1))
            },
            ..*p
        });
    }
    aged
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::Quota;
    use crate::clock::{Clock, ManualClock};
    use crate::policy::{Limits, TierSpec};
    use nonzero_ext::nonzero;

    const SEC: Nanos = Nanos::SECOND;

    fn tier() -> Limits {
        Limits::builder()
            .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(5u32))))
            .build()
            .unwrap()
    }

    fn rejection(now: Nanos, retry: Nanos) -> Decision {
        Decision::new(Verdict::Rejected, now, 0.0, 0).with(PolicyState {
            index: 0,
            limit: 5,
            remaining: 0,
            reset_after: 5 * SEC,
            retry_after: retry,
            next_after: retry,
        })
    }

    /// A refusal of 2 tokens when the next one is due sooner: the cached answer would tell a
    /// stale `t` (and `remaining`) once that token arrives, so the entry ends there.
    #[test]
    fn an_entry_ends_when_the_first_token_arrives() {
        let limits = tier();
        let blocked = Blocked::new(100, 3_600 * SEC);
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let digest = blocked.digest(&Key::new("abuser"), limits.default_tier());
        let charge = Charge::new(2);
        let decision = Decision::new(Verdict::Rejected, clock.now(), 0.0, 0).with(PolicyState {
            index: 0,
            limit: 5,
            remaining: 0,
            reset_after: 5 * SEC,
            retry_after: 2 * SEC,
            next_after: SEC,
        });
        blocked.insert(digest, charge, &decision, Nanos::ZERO, clock.now());
        clock.advance(Duration::from_millis(999));
        let aged = blocked.get(digest, charge, clock.now()).expect("cached");
        assert_eq!(aged.policies()[0].next_after, Nanos::from_millis(1));
        assert_eq!(aged.retry_after(), Some(Nanos::from_millis(1_001)));
        clock.advance(Duration::from_millis(1));
        assert_eq!(blocked.get(digest, charge, clock.now()), None, "Redis is asked again");
    }

    #[test]
    fn rejects_until_the_deadline_with_the_exact_wait() {
        let limits = tier();
        let blocked = Blocked::new(100, 3_600 * SEC);
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let digest = blocked.digest(&Key::new("abuser"), limits.default_tier());
        let charge = Charge::new(1);
        let redis_now = 77 * SEC; // Redis' clock need not be ours.
        blocked.insert(digest, charge, &rejection(redis_now, 2 * SEC), Nanos::ZERO, clock.now());

        clock.advance(Duration::from_millis(500));
        let d = blocked.get(digest, charge, clock.now()).expect("cached");
        assert_eq!(d.verdict(), Verdict::Rejected);
        assert_eq!(d.retry_after(), Some(Nanos::from_millis(1_500)));
        assert_eq!(d.now(), redis_now + SEC / 2);
        assert_eq!(d.policies()[0].reset_after, 4 * SEC + SEC / 2);
        assert_eq!(d.charged(), 0);

        clock.advance(Duration::from_millis(1_499));
        assert_eq!(
            blocked.get(digest, charge, clock.now()).unwrap().retry_after(),
            Some(Nanos::from_millis(1))
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(blocked.get(digest, charge, clock.now()), None);
        assert_eq!(blocked.len(), 0, "an expired entry is dropped when met");
    }

    #[test]
    fn only_the_same_charge_and_client_hit() {
        let limits = tier();
        let blocked = Blocked::new(100, 3_600 * SEC);
        let now = 1_000 * SEC;
        let tier = limits.default_tier();
        let digest = blocked.digest(&Key::new("abuser"), tier);
        blocked.insert(digest, Charge::new(5), &rejection(now, SEC), Nanos::ZERO, now);
        assert!(blocked.get(digest, Charge::new(5), now).is_some());
        assert!(blocked.get(digest, Charge::new(1), now).is_none());
        assert!(blocked.get(digest, Charge::new(5).reduced(0.5, 1), now).is_none());
        assert!(blocked.get(blocked.digest(&Key::new("other"), tier), Charge::new(5), now).is_none());
    }

    #[test]
    fn a_rejection_above_a_cheaper_band_is_not_cached() {
        let limits = tier();
        let blocked = Blocked::new(100, 3_600 * SEC);
        let digest = blocked.digest(&Key::new("a"), limits.default_tier());
        let charge = Charge::new(5).reduced(0.2, 1);
        // 40% left (2 tokens): the full cost 5 was refused; 1 could fit if the band were reached.
        let high = Decision::new(Verdict::Rejected, Nanos::ZERO, 0.4, 0)
            .with(PolicyState { retry_after: SEC, ..PolicyState::default() });
        blocked.insert(digest, charge, &high, Nanos::ZERO, Nanos::ZERO);
        assert_eq!(blocked.get(digest, charge, Nanos::ZERO), None);
        // 0% left: even the reduced cost was refused, so every such request is until the deadline.
        let low = Decision::new(Verdict::Rejected, Nanos::ZERO, 0.0, 0)
            .with(PolicyState { retry_after: SEC, ..PolicyState::default() });
        blocked.insert(digest, charge, &low, Nanos::ZERO, Nanos::ZERO);
        assert!(blocked.get(digest, charge, Nanos::ZERO).is_some());
    }

    #[test]
    fn admissions_are_never_cached() {
        let limits = tier();
        let blocked = Blocked::new(100, 3_600 * SEC);
        let digest = blocked.digest(&Key::new("a"), limits.default_tier());
        let admitted = Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, 1);
        blocked.insert(digest, Charge::new(1), &admitted, Nanos::ZERO, Nanos::ZERO);
        assert_eq!(blocked.len(), 0);
    }

    #[test]
    fn memory_is_bounded_and_expired_entries_make_room() {
        let limits = tier();
        let tier = limits.default_tier();
        let blocked = Blocked::new(SHARDS * 2, 3_600 * SEC); // two per shard
        let clock = ManualClock::new(Duration::from_secs(1_000));
        for i in 0..1_000 {
            let digest = blocked.digest(&Key::new(format!("k{i}")), tier);
            blocked.insert(digest, Charge::new(1), &rejection(Nanos::ZERO, SEC), Nanos::ZERO, clock.now());
        }
        assert!(blocked.len() <= SHARDS * 2, "{} entries", blocked.len());
        // Once they expire, new keys find room again.
        clock.advance(Duration::from_secs(2));
        let fresh = blocked.digest(&Key::new("fresh"), tier);
        blocked.insert(fresh, Charge::new(1), &rejection(Nanos::ZERO, SEC), Nanos::ZERO, clock.now());
        assert!(blocked.get(fresh, Charge::new(1), clock.now()).is_some());
        assert!(blocked.len() <= SHARDS * 2);
    }

    /// Issue 11, finding 6: "state only gets worse until the deadline" is false after an
    /// operator's DEL, an eviction or a failover, yet a refusal for an hour was replayed
    /// locally for the whole hour. A local refusal now lives at most `recheck`.
    #[test]
    fn a_local_refusal_is_never_older_than_the_recheck_bound() {
        let limits = tier();
        let blocked = Blocked::new(100, SEC);
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let digest = blocked.digest(&Key::new("abuser"), limits.default_tier());
        let charge = Charge::new(1);
        // Refused for an hour (a daily quota spent, say), the next token an hour away too.
        blocked.insert(digest, charge, &rejection(Nanos::ZERO, 3_600 * SEC), Nanos::ZERO, clock.now());
        clock.advance(Duration::from_millis(999));
        assert_eq!(
            blocked.get(digest, charge, clock.now()).unwrap().retry_after(),
            Some(3_599 * SEC + SEC / 1_000)
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(blocked.get(digest, charge, clock.now()), None, "Redis is asked again after a second");
    }

    #[test]
    fn a_zero_capacity_disables_it() {
        let limits = tier();
        let blocked = Blocked::new(0, 3_600 * SEC);
        let digest = blocked.digest(&Key::new("a"), limits.default_tier());
        blocked.insert(digest, Charge::new(1), &rejection(Nanos::ZERO, SEC), Nanos::ZERO, Nanos::ZERO);
        assert_eq!(blocked.get(digest, Charge::new(1), Nanos::ZERO), None);
    }
}

//! The in-process store: a sharded map of atomic states.
//!
//! * Each (key, policy) state is one `AtomicU64`, charged with a compare-and-swap loop: no lock
//!   is held across the decision, and concurrent requests on one key never lose an update.
//!   A sliding log's state is a [`Log`] behind a mutex of its own (taken for one decision, in
//!   policy order when a tier has two).
//! * A tier with a `max_delay` reserves ahead: its policies are charged at the instant the
//!   request's tokens exist in all of them (at most the delay away), and the decision says how
//!   long to hold it.
//! * Settling a cost ([`Store::settle`]) changes the states in place. A token bucket's refund
//!   needs to know whether an earlier refund slid the client's bucket since the charge (see
//!   [`Rule::settle`]): each shard remembers, for a while, when refunds slid which states.
//! * The map is split into many shards (at least 16, sixteen per core), each behind its own
//!   reader-writer lock taken for reading on the hot path; only a key's first request takes a
//!   shard's write lock. There is no global lock.
//! * Keys are hashed with a per-store random seed (foldhash), so a client cannot aim many keys
//!   at one shard, and only the 64-bit digest is kept, never the key itself.
//! * Idle states (a full bucket, an empty window) are indistinguishable from a new key, so they
//!   are dropped by amortised sweeps that run when a shard has doubled since its last sweep.
//!   No cleanup task is needed.
//! * A hard [`capacity`](MemoryStore::capacity) bounds the number of states. When a shard is
//!   full of busy keys even after a sweep, new keys of that shard share one overflow bucket per
//!   policy until room frees up: nobody escapes a limit and memory stays bounded, at the price of
//!   new clients sharing a bucket while the store is saturated (the `tracked` count shows it).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use crate::algorithm::{Algorithm, Check, Log, Rule};
use crate::clock::{Clock, Nanos, SystemClock};
use crate::key::Key;
use crate::policy::{Policy, Tier, MAX_POLICIES};

use super::{
    Charge, Decision, PolicyState, Receipt, Settlement, Store, StoreFuture, Verdict, DEFAULT_CAPACITY,
};

/// States a shard may reach before its first sweep.
const MIN_SWEEP: usize = 1_024;

/// The digest is already a good hash: hand it to the map unchanged.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 digests are hashed")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, AtomicU64, BuildHasherDefault<Passthrough>>;
type LogMap = HashMap<u64, Mutex<Log>, BuildHasherDefault<Passthrough>>;

#[derive(Default)]
struct ShardData {
    /// One map per policy uid (empty for sliding logs).
    maps: Vec<Map>,
    /// One map of logs per policy uid (empty but for sliding logs).
    logs: Vec<LogMap>,
    /// The rule of each policy uid seen, for sweeping.
    rules: Vec<Option<Rule>>,
    /// One overflow state per policy uid, used while the shard is at capacity.
    overflow: Vec<AtomicU64>,
    /// One overflow log per policy uid, likewise.
    overflow_logs: Vec<Mutex<Log>>,
    len: usize,
    next_sweep: usize,
    last_full_sweep: Nanos,
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ShardData {
    fn grow_to(&mut self, policies: &[Policy]) {
        for policy in policies {
            let uid = policy.uid();
            if self.maps.len() <= uid {
                self.maps.resize_with(uid + 1, Map::default);
                self.logs.resize_with(uid + 1, LogMap::default);
                self.rules.resize(uid + 1, None);
                self.overflow.resize_with(uid + 1, AtomicU64::default);
                self.overflow_logs.resize_with(uid + 1, Mutex::default);
            }
            self.rules[uid] = Some(*policy.rule());
        }
    }

    fn sweep(&mut self, now: Nanos) {
        let mut len = 0;
        for ((map, logs), rule) in self.maps.iter_mut().zip(&mut self.logs).zip(&self.rules) {
            if let Some(rule) = rule {
                map.retain(|_, state| !rule.is_idle(state.load(Ordering::Relaxed), now));
                if map.capacity() > 4 * map.len().max(64) {
                    map.shrink_to_fit();
                }
                let quota = rule.quota();
                logs.retain(|_, log| !lock(log).is_idle(&quota, now));
                if logs.capacity() > 4 * logs.len().max(64) {
                    logs.shrink_to_fit();
                }
            }
            len += map.len() + logs.len();
        }
        self.len = len;
        self.next_sweep = (2 * len).max(MIN_SWEEP);
    }
}

/// When refunds slid token-bucket states of this shard: a refund of a request charged before
/// that instant leaves its charge alone (see [`Rule::settle`]). An entry is needed only while a
/// receipt written before it could still be refunded, i.e. for the policy's refill time plus
/// the tier's delay; past [`MAX_SHIFTS`] live entries the shard just remembers the latest
/// instant for all its keys (more conservative, never wrong).
#[derive(Default)]
struct Shifts {
    /// (digest, policy uid) → (slid at, needed until).
    at: HashMap<(u64, usize), (Nanos, Nanos), foldhash::fast::RandomState>,
    /// The latest slide forgotten for want of room: it counts for every key.
    overflowed: Nanos,
}

const MAX_SHIFTS: usize = 256;

impl Shifts {
    fn since(&self, digest: u64, uid: usize, charged_at: Nanos) -> bool {
        self.overflowed >= charged_at || self.at.get(&(digest, uid)).is_some_and(|&(at, _)| at >= charged_at)
    }

    fn record(&mut self, digest: u64, uid: usize, now: Nanos, needed_for: Nanos) {
        if self.at.len() >= MAX_SHIFTS && !self.at.contains_key(&(digest, uid)) {
            self.at.retain(|_, &mut (_, until)| until > now);
            if self.at.len() >= MAX_SHIFTS {
                self.overflowed = now;
                return;
            }
        }
        self.at.insert((digest, uid), (now, now.saturating_add(needed_for)));
    }
}

#[repr(align(64))]
#[derive(Default)]
struct Shard {
    data: RwLock<ShardData>,
    shifts: Mutex<Shifts>,
}

/// The default store: lock-free per-key state in a sharded, self-cleaning, bounded map.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::Quota;
/// use tollgate::clock::{ManualClock, Nanos};
/// use tollgate::key::Key;
/// use tollgate::policy::{Limits, TierSpec};
/// use tollgate::store::{Charge, MemoryStore, Store};
/// use std::time::Duration;
///
/// let limits = Limits::builder()
///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(2u32))))
///     .build().unwrap();
/// let tier = limits.default_tier();
/// let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
/// let store = MemoryStore::with_clock(clock.clone());
/// let key = Key::new("alice");
///
/// let check = |store: &MemoryStore<ManualClock>| {
///     store.check(&key, tier, Charge::new(1)).try_take().unwrap().unwrap()
/// };
/// assert!(check(&store).is_admitted());
/// assert!(check(&store).is_admitted());
/// let third = check(&store);
/// assert!(!third.is_admitted());
/// assert_eq!(third.retry_after(), Some(Nanos::from_secs(2)));
/// clock.advance(Duration::from_secs(2));
/// assert!(check(&store).is_admitted());
/// ```
pub struct MemoryStore<C = SystemClock> {
    shards: Box<[Shard]>,
    shard_mask: u64,
    hasher: foldhash::quality::RandomState,
    clock: C,
    per_shard: usize,
}

impl<C: Clock + std::fmt::Debug> std::fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("capacity", &(self.per_shard * self.shards.len()))
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl MemoryStore<SystemClock> {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock::new())
    }
}

impl Default for MemoryStore<SystemClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> MemoryStore<C> {
    /// A store reading time from `clock`.
    pub fn with_clock(clock: C) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::build(clock, (cores * 16).next_power_of_two().clamp(16, 1024), DEFAULT_CAPACITY)
    }

    fn build(clock: C, shards: usize, capacity: usize) -> Self {
        let shards = shards.next_power_of_two().clamp(1, 1024);
        Self {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            shard_mask: shards as u64 - 1,
            hasher: foldhash::quality::RandomState::default(),
            clock,
            per_shard: capacity.div_ceil(shards).max(1),
        }
    }

    /// Keeps at most about `states` states (one per key and policy); 2 097 152 by default.
    /// See the module documentation for what happens at the cap.
    pub fn capacity(self, states: usize) -> Self {
        let shards = self.shards.len();
        Self::build(self.clock, shards, states)
    }

    /// Splits the map into `shards` shards (rounded up to a power of two, at most 1024).
    pub fn shards(self, shards: usize) -> Self {
        let capacity = self.per_shard * self.shards.len();
        Self::build(self.clock, shards, capacity)
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The number of states kept now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.data.read().unwrap_or_else(PoisonError::into_inner).len).sum()
    }

    /// True when no state is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Charges `charge` to `key` under `tier` now. The synchronous heart of [`Store::check`].
    pub fn decide(&self, key: &Key, tier: &Tier, charge: Charge) -> Decision {
        let now = self.clock.now();
        let digest = self.hasher.hash_one(key);
        // The map uses the low bits (bucket) and the top 7 (tag): shard by bits in between.
        let shard = &self.shards[((digest >> 32) & self.shard_mask) as usize];
        let wait = tier.max_delay();
        match tier.policies() {
            [policy] if policy.algorithm() != Algorithm::SlidingLog => {
                self.decide_one(shard, digest, policy, wait, now, charge)
            }
            policies if policies[0].algorithm() == Algorithm::SlidingLog => {
                self.decide_logs(shard, digest, policies, tier.max_cost(), wait, now, charge)
            }
            policies => self.decide_all(shard, digest, policies, tier.max_cost(), wait, now, charge),
        }
    }

    /// Settles `settlement` for `key` under `tier` now: the synchronous heart of
    /// [`Store::settle`]. A state that is gone (forgotten as idle: nothing left to refund) takes
    /// an extra charge afresh.
    pub fn settle_now(&self, key: &Key, tier: &Tier, settlement: Settlement) -> Decision {
        let now = self.clock.now();
        let digest = self.hasher.hash_one(key);
        let shard = &self.shards[((digest >> 32) & self.shard_mask) as usize];
        let policies = tier.policies();
        let Settlement { receipt, charged_at, charged, actual } = settlement;
        loop {
            {
                let data = shard.data.read().unwrap_or_else(PoisonError::into_inner);
                let missing = policies.iter().any(|p| match p.algorithm() {
                    Algorithm::SlidingLog => self.log_slot(&data, p.uid(), digest, now).is_none(),
                    _ => self.slot(&data, p.uid(), digest, now).is_none(),
                });
                if !missing || actual <= charged {
                    let mut decision = Decision::new(Verdict::Admitted, now, 1.0, actual);
                    let mut fraction = 1.0_f64;
                    for (i, policy) in policies.iter().enumerate() {
                        let (rule, quota, uid) = (policy.rule(), policy.quota(), policy.uid());
                        let check = if policy.algorithm() == Algorithm::SlidingLog {
                            let Some(slot) = self.log_slot(&data, uid, digest, now) else {
                                decision = decision.with(policy_state(
                                    i,
                                    policy,
                                    &Log::default().peek(&quota, now),
                                    Verdict::Admitted,
                                ));
                                continue;
                            };
                            let mut log = lock(slot);
                            log.settle(&quota, now, Nanos::new(receipt.get(i)), charged, actual);
                            fraction = fraction.min(log.fraction(&quota, now));
                            log.peek(&quota, now)
                        } else {
                            let Some(slot) = self.slot(&data, uid, digest, now) else {
                                decision = decision.with(policy_state(
                                    i,
                                    policy,
                                    &rule.check(0, now, 0),
                                    Verdict::Admitted,
                                ));
                                continue;
                            };
                            let gcra = policy.algorithm() == Algorithm::TokenBucket;
                            let shifted = gcra
                                && actual < charged
                                && shard
                                    .shifts
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .since(digest, uid, charged_at);
                            let mut slid = false;
                            let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                                let settled =
                                    rule.settle(state, now, receipt.get(i), charged, actual, shifted);
                                slid = settled.shifted;
                                Some(settled.state)
                            });
                            if slid {
                                let needed_for = quota.refill_time().saturating_add(tier.max_delay());
                                shard
                                    .shifts
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .record(digest, uid, now, needed_for);
                            }
                            let state = slot.load(Ordering::Acquire);
                            fraction = fraction.min(rule.fraction(state, now));
                            rule.check(state, now, 0)
                        };
                        decision = decision.with(policy_state(i, policy, &check, Verdict::Admitted));
                    }
                    let mut settled = Decision::new(Verdict::Admitted, now, fraction, actual);
                    for state in decision.policies() {
                        settled = settled.with(*state);
                    }
                    return settled;
                }
            }
            // An extra charge on a state forgotten as idle: make it again, then charge.
            self.insert(shard, digest, policies, now);
        }
    }

    /// At capacity, new keys share the overflow states, except when a sweep (at most one a
    /// second) might make room: then the insert path tries.
    #[inline]
    fn at_cap(&self, data: &ShardData, now: Nanos) -> bool {
        data.len >= self.per_shard && now.saturating_sub(data.last_full_sweep) < Nanos::SECOND
    }

    /// The state of `digest` under policy `uid`: its own, or the shared overflow state when the
    /// shard is full; `None` when it has to be inserted.
    #[inline]
    fn slot<'a>(&self, data: &'a ShardData, uid: usize, digest: u64, now: Nanos) -> Option<&'a AtomicU64> {
        match data.maps.get(uid).and_then(|map| map.get(&digest)) {
            Some(slot) => Some(slot),
            None if self.at_cap(data, now) => data.overflow.get(uid),
            None => None,
        }
    }

    /// [`decide`](Self::decide) for a tier of one policy (most tiers): the same decisions as
    /// [`decide_all`](Self::decide_all), without the bookkeeping that several policies need
    /// (no refunds, and a refusal reports the check that refused instead of loading again).
    #[inline]
    fn decide_one(
        &self,
        shard: &Shard,
        digest: u64,
        policy: &Policy,
        max_wait: Nanos,
        now: Nanos,
        charge: Charge,
    ) -> Decision {
        let rule = policy.rule();
        loop {
            {
                let data = shard.data.read().unwrap_or_else(PoisonError::into_inner);
                let slot = self.slot(&data, policy.uid(), digest, now);
                let current = slot.map_or(0, |s| s.load(Ordering::Acquire));
                let fraction = rule.fraction(current, now);
                let cost = charge.cost_for(fraction);
                if cost == 0 || cost > policy.quota().burst() {
                    return standing(std::slice::from_ref(policy), &[current], now, cost, fraction);
                }
                if let Some(slot) = slot {
                    return match charge_slot(slot, current, rule, now, cost, max_wait) {
                        Ok((check, state)) => Decision::new(Verdict::Admitted, now, fraction, cost)
                            .with(policy_state(0, policy, &check, Verdict::Admitted))
                            .held(check.wait)
                            .with_receipt(Receipt::default().with(0, state)),
                        Err(check) => Decision::new(Verdict::Rejected, now, fraction, 0).with(policy_state(
                            0,
                            policy,
                            &check,
                            Verdict::Rejected,
                        )),
                    };
                }
            }
            self.insert(shard, digest, std::slice::from_ref(policy), now);
        }
    }

    /// [`decide`](Self::decide) for any number of policies, charged all or none.
    #[allow(clippy::too_many_arguments)]
    fn decide_all(
        &self,
        shard: &Shard,
        digest: u64,
        policies: &[Policy],
        max_cost: u64,
        max_wait: Nanos,
        now: Nanos,
        charge: Charge,
    ) -> Decision {
        loop {
            {
                let data = shard.data.read().unwrap_or_else(PoisonError::into_inner);
                let mut slots: [Option<&AtomicU64>; MAX_POLICIES] = [None; MAX_POLICIES];
                let mut missing = false;
                for (slot, policy) in slots.iter_mut().zip(policies) {
                    *slot = self.slot(&data, policy.uid(), digest, now);
                    missing |= slot.is_none();
                }
                let mut states = [0u64; MAX_POLICIES];
                for (state, slot) in states.iter_mut().zip(&slots) {
                    *state = slot.map_or(0, |s| s.load(Ordering::Acquire));
                }
                let fraction = policies
                    .iter()
                    .zip(&states)
                    .map(|(p, &s)| p.rule().fraction(s, now))
                    .fold(1.0_f64, f64::min);
                let cost = charge.cost_for(fraction);
                if cost == 0 || cost > max_cost {
                    return standing(policies, &states, now, cost, fraction);
                }
                if !missing {
                    if max_wait.is_zero() {
                        return charge_all(policies, &slots, now, cost, fraction);
                    }
                    if let Some(decision) = reserve_all(policies, &slots, now, cost, max_wait, fraction) {
                        return decision;
                    }
                    continue; // another request moved a state in between: decide again
                }
            }
            self.insert(shard, digest, policies, now);
        }
    }

    /// [`decide`](Self::decide) for a tier of sliding logs: each log locked in policy order,
    /// charged all or none at the one instant every log has room.
    #[allow(clippy::too_many_arguments)]
    fn decide_logs(
        &self,
        shard: &Shard,
        digest: u64,
        policies: &[Policy],
        max_cost: u64,
        max_wait: Nanos,
        now: Nanos,
        charge: Charge,
    ) -> Decision {
        loop {
            {
                let data = shard.data.read().unwrap_or_else(PoisonError::into_inner);
                let mut slots: [Option<&Mutex<Log>>; MAX_POLICIES] = [None; MAX_POLICIES];
                for (slot, policy) in slots.iter_mut().zip(policies) {
                    *slot = self.log_slot(&data, policy.uid(), digest, now);
                }
                if slots[..policies.len()].iter().all(Option::is_some) {
                    let mut logs: [Option<MutexGuard<'_, Log>>; MAX_POLICIES] = Default::default();
                    for (log, slot) in logs.iter_mut().zip(&slots[..policies.len()]) {
                        *log = slot.map(lock);
                    }
                    let mut logs: Vec<&mut Log> = logs.iter_mut().flatten().map(|g| &mut **g).collect();
                    return decide_in_logs(policies, &mut logs, max_cost, max_wait, now, charge);
                }
            }
            self.insert(shard, digest, policies, now);
        }
    }

    /// The log of `digest` under policy `uid`, as [`slot`](Self::slot) finds a state.
    #[inline]
    fn log_slot<'a>(
        &self,
        data: &'a ShardData,
        uid: usize,
        digest: u64,
        now: Nanos,
    ) -> Option<&'a Mutex<Log>> {
        match data.logs.get(uid).and_then(|map| map.get(&digest)) {
            Some(slot) => Some(slot),
            None if self.at_cap(data, now) => data.overflow_logs.get(uid),
            None => None,
        }
    }

    #[cold]
    fn insert(&self, shard: &Shard, digest: u64, policies: &[Policy], now: Nanos) {
        let mut data = shard.data.write().unwrap_or_else(PoisonError::into_inner);
        data.grow_to(policies);
        if data.len >= data.next_sweep {
            data.sweep(now);
        }
        if data.len >= self.per_shard && now.saturating_sub(data.last_full_sweep) >= Nanos::SECOND {
            // At capacity: sweep at most once a second, so a flood of new keys cannot turn
            // every request into a full scan.
            data.last_full_sweep = now;
            data.sweep(now);
        }
        if data.len >= self.per_shard {
            return; // The overflow states (already grown) serve new keys.
        }
        let mut added = 0;
        for policy in policies {
            use std::collections::hash_map::Entry::Vacant;
            let uid = policy.uid();
            if policy.algorithm() == Algorithm::SlidingLog {
                if let Vacant(e) = data.logs[uid].entry(digest) {
                    e.insert(Mutex::default());
                    added += 1;
                }
            } else if let Vacant(e) = data.maps[uid].entry(digest) {
                e.insert(AtomicU64::new(0));
                added += 1;
            }
        }
        data.len += added;
    }
}

/// A decision that charges nothing: cost 0, or a cost that can never fit.
fn standing(policies: &[Policy], states: &[u64], now: Nanos, cost: u64, fraction: f64) -> Decision {
    let outcome = if cost == 0 { Verdict::Admitted } else { Verdict::Exceeds };
    let mut decision = Decision::new(outcome, now, fraction, 0);
    for (index, (policy, &state)) in policies.iter().zip(states).enumerate() {
        // Report the standing as it is: nothing is charged.
        let check = policy.rule().check(state, now, 0);
        decision = decision.with(policy_state(index, policy, &check, outcome));
    }
    decision
}

fn policy_state(index: usize, policy: &Policy, check: &Check, outcome: Verdict) -> PolicyState {
    PolicyState {
        index: index as u8,
        limit: policy.quota().burst(),
        remaining: check.remaining,
        reset_after: check.reset_after,
        retry_after: if outcome == Verdict::Rejected { check.retry_after } else { Nanos::ZERO },
        next_after: check.next_after,
    }
}

/// Takes `cost` from one state, starting from its value `current`, waiting up to `max_wait`
/// for it: the one compare-and-swap loop of the store. `Ok` with the check and the state
/// written; `Err` with the refusing check when the rule refuses (nothing is written then).
#[inline]
fn charge_slot(
    slot: &AtomicU64,
    mut current: u64,
    rule: &Rule,
    now: Nanos,
    cost: u64,
    max_wait: Nanos,
) -> Result<(Check, u64), Check> {
    loop {
        let check = rule.check_within(current, now, cost, max_wait);
        let Some(next) = check.new_state() else { return Err(check) };
        match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok((check, next)),
            Err(actual) => current = actual,
        }
    }
}

/// Charges every policy at the one instant all of them have room (at most `max_wait` away):
/// each policy's own earliest instant first, then all at the latest of them. `None` when a
/// concurrent request moved a state in between (what was taken is given back; decide again).
fn reserve_all(
    policies: &[Policy],
    slots: &[Option<&AtomicU64>; MAX_POLICIES],
    now: Nanos,
    cost: u64,
    max_wait: Nanos,
    fraction: f64,
) -> Option<Decision> {
    let mut at = now;
    for (i, policy) in policies.iter().enumerate() {
        let state = slots[i].expect("every slot present").load(Ordering::Acquire);
        let check = policy.rule().check_within(state, now, cost, max_wait);
        if check.new_state().is_none() {
            return Some(rejected(policies, slots, now, cost, fraction));
        }
        at = at.max(now + check.wait);
    }
    let mut checks = [None; MAX_POLICIES];
    let mut receipt = Receipt::default();
    for (i, policy) in policies.iter().enumerate() {
        let slot = slots[i].expect("every slot present");
        let current = slot.load(Ordering::Acquire);
        let check = policy.rule().check_at(current, now, cost, at);
        let written = check.new_state().filter(|&next| {
            slot.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire).is_ok()
        });
        let Some(next) = written else {
            for (j, earlier) in policies[..i].iter().enumerate() {
                let slot = slots[j].expect("every slot present");
                let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                    Some(earlier.rule().refund(s, now, cost))
                });
            }
            return None;
        };
        checks[i] = Some(check);
        receipt = receipt.with(i, next);
    }
    let mut decision =
        Decision::new(Verdict::Admitted, now, fraction, cost).held(at - now).with_receipt(receipt);
    for (index, (policy, check)) in policies.iter().zip(&checks).enumerate() {
        let check = check.expect("every policy charged");
        decision = decision.with(policy_state(index, policy, &check, Verdict::Admitted));
    }
    Some(decision)
}

/// A tier of sliding logs, all locked: charged all or none, at the instant all have room.
fn decide_in_logs(
    policies: &[Policy],
    logs: &mut [&mut Log],
    max_cost: u64,
    max_wait: Nanos,
    now: Nanos,
    charge: Charge,
) -> Decision {
    let fraction =
        policies.iter().zip(logs.iter()).map(|(p, l)| l.fraction(&p.quota(), now)).fold(1.0_f64, f64::min);
    let cost = charge.cost_for(fraction);
    if cost == 0 || cost > max_cost {
        let outcome = if cost == 0 { Verdict::Admitted } else { Verdict::Exceeds };
        let mut decision = Decision::new(outcome, now, fraction, 0);
        for (index, (policy, log)) in policies.iter().zip(logs.iter()).enumerate() {
            decision = decision.with(policy_state(index, policy, &log.peek(&policy.quota(), now), outcome));
        }
        return decision;
    }
    let mut at = now;
    let mut earliest = [Nanos::ZERO; MAX_POLICIES];
    for (i, (policy, log)) in policies.iter().zip(logs.iter_mut()).enumerate() {
        earliest[i] = log.earliest_at(&policy.quota(), now, cost);
        at = at.max(earliest[i]);
    }
    let wait = at - now;
    if !wait.is_zero() && wait > max_wait {
        let mut decision = Decision::new(Verdict::Rejected, now, fraction, 0);
        for (index, (policy, log)) in policies.iter().zip(logs.iter()).enumerate() {
            let mut check = log.peek(&policy.quota(), now);
            check.retry_after = earliest[index].saturating_sub(now);
            decision = decision.with(policy_state(index, policy, &check, Verdict::Rejected));
        }
        return decision;
    }
    let mut decision = Decision::new(Verdict::Admitted, now, fraction, cost).held(wait);
    let mut receipt = Receipt::default();
    for (index, (policy, log)) in policies.iter().zip(logs.iter_mut()).enumerate() {
        let check = log.charge_at(&policy.quota(), now, cost, at);
        receipt = receipt.with(index, at.as_nanos());
        decision = decision.with(policy_state(index, policy, &check, Verdict::Admitted));
    }
    decision.with_receipt(receipt)
}

/// Charges every policy; on the first refusal gives back what was taken and reports why.
fn charge_all(
    policies: &[Policy],
    slots: &[Option<&AtomicU64>; MAX_POLICIES],
    now: Nanos,
    cost: u64,
    fraction: f64,
) -> Decision {
    let mut checks = [None; MAX_POLICIES];
    let mut receipt = Receipt::default();
    for (i, policy) in policies.iter().enumerate() {
        let slot = slots[i].expect("every slot present");
        match charge_slot(slot, slot.load(Ordering::Acquire), policy.rule(), now, cost, Nanos::ZERO) {
            Ok((check, state)) => {
                checks[i] = Some(check);
                receipt = receipt.with(i, state);
            }
            Err(_) => {
                // Refused: undo the policies already charged, then report the standing.
                for (j, earlier) in policies[..i].iter().enumerate() {
                    let slot = slots[j].expect("every slot present");
                    let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                        Some(earlier.rule().refund(s, now, cost))
                    });
                }
                return rejected(policies, slots, now, cost, fraction);
            }
        }
    }
    let mut decision = Decision::new(Verdict::Admitted, now, fraction, cost).with_receipt(receipt);
    for (index, (policy, check)) in policies.iter().zip(&checks).enumerate() {
        let check = check.expect("every policy charged");
        decision = decision.with(policy_state(index, policy, &check, Verdict::Admitted));
    }
    decision
}

fn rejected(
    policies: &[Policy],
    slots: &[Option<&AtomicU64>; MAX_POLICIES],
    now: Nanos,
    cost: u64,
    fraction: f64,
) -> Decision {
    let mut decision = Decision::new(Verdict::Rejected, now, fraction, 0);
    for (index, policy) in policies.iter().enumerate() {
        let state = slots[index].map_or(0, |s| s.load(Ordering::Acquire));
        let check = policy.rule().check(state, now, cost);
        // A policy that would have admitted reports its standing as it is (nothing charged).
        let check = if check.new_state().is_some() { policy.rule().check(state, now, 0) } else { check };
        decision = decision.with(policy_state(index, policy, &check, Verdict::Rejected));
    }
    decision
}

impl<C: Clock> Store for MemoryStore<C> {
    #[inline]
    fn check(&self, key: &Key, tier: &Tier, charge: Charge) -> StoreFuture {
        StoreFuture::ready(Ok(self.decide(key, tier, charge)))
    }

    fn settle(&self, key: &Key, tier: &Tier, settlement: Settlement) -> StoreFuture {
        StoreFuture::ready(Ok(self.settle_now(key, tier, settlement)))
    }

    fn tracked(&self) -> Option<usize> {
        Some(self.len())
    }
}

#[cfg(test)]
mod tests;

//! The in-process store: a sharded map of atomic states.
//!
//! * Each (key, policy) state is one `AtomicU64`, charged with a compare-and-swap loop: no lock
//!   is held across the decision, and concurrent requests on one key never lose an update.
//! * The map is split into many shards (at least 16, sixteen per core), each behind its own
//!   reader-writer lock taken for reading on the hot path; only a key's first request takes a
//!   shard's write lock. There is no global lock.
//! * Keys are hashed with a per-store random seed (foldhash), so a client cannot aim many keys
//!   at one shard, and only the 64-bit digest is kept, never the key itself.
//! * States are kept per policy [identity](crate::policy::Policy::id), never by a policy's
//!   position: limiters sharing a store never share a bucket, and the limits a reload makes
//!   find each client's state under the same policy name. Each shard keeps, per policy, the
//!   newest rule it has seen; a state kept under an older rule is converted when the new one
//!   first meets it ([`Rule::carry`](crate::algorithm::Rule::carry), or all at once with
//!   [`carry_over`](MemoryStore::carry_over)), and a request still planned under the older
//!   limits is decided by the newer rule, so states never go back.
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
use std::sync::{PoisonError, RwLock};

use crate::algorithm::{Check, Rule};
use crate::clock::{Clock, Nanos, SystemClock};
use crate::key::Key;
use crate::policy::{Limits, Policy, Tier, MAX_POLICIES};

use super::{Charge, Decision, PolicyState, Store, StoreFuture, Verdict, DEFAULT_CAPACITY};

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

/// The states of one policy (by [`id`](Policy::id)) in one shard.
struct PolicyMap {
    /// The newest version of the policy seen: its rule is the one every state here is kept
    /// under.
    policy: Policy,
    map: Map,
    /// Shared by new keys while the shard is at capacity.
    overflow: AtomicU64,
}

/// Where a policy's state is in a shard, as a request under one version of it finds it.
enum Lookup<'a> {
    /// Kept under this version of the policy (the request's, or a newer one a reload made:
    /// the newest rule decides).
    Found(&'a PolicyMap),
    /// Nothing kept for this policy in this shard: every key is new (the standing of a new
    /// key needs no write).
    Absent,
    /// Kept under an older version: the write path converts it first.
    Stale,
}

#[derive(Default)]
struct ShardData {
    /// One entry per policy seen; a few, found by a short scan.
    policies: Vec<PolicyMap>,
    len: usize,
    next_sweep: usize,
    last_full_sweep: Nanos,
}

impl ShardData {
    #[inline]
    fn lookup(&self, policy: &Policy) -> Lookup<'_> {
        match self.policies.iter().find(|p| p.policy.id() == policy.id()) {
            Some(found) if found.policy.version() >= policy.version() => Lookup::Found(found),
            Some(_) => Lookup::Stale,
            None => Lookup::Absent,
        }
    }

    /// The entry of `policy`, made current: created, or converted from an older version (the
    /// states of a policy that was gone in between are forgotten).
    fn current(&mut self, policy: &Policy, now: Nanos) -> &mut PolicyMap {
        let index = match self.policies.iter().position(|p| p.policy.id() == policy.id()) {
            Some(index) => index,
            None => {
                let entry =
                    PolicyMap { policy: policy.clone(), map: Map::default(), overflow: AtomicU64::new(0) };
                self.policies.push(entry);
                self.policies.len() - 1
            }
        };
        let entry = &mut self.policies[index];
        if entry.policy.version() < policy.version() {
            if entry.policy.version() < policy.since() {
                self.len -= entry.map.len();
                entry.map = Map::default();
                *entry.overflow.get_mut() = 0;
            } else if entry.policy.rule() != policy.rule() {
                let (from, to) = (*entry.policy.rule(), *policy.rule());
                for state in entry.map.values_mut().chain(std::iter::once(&mut entry.overflow)) {
                    *state.get_mut() = to.carry(&from, *state.get_mut(), now);
                }
            }
            entry.policy = policy.clone();
        }
        entry
    }

    fn sweep(&mut self, now: Nanos) {
        let mut len = 0;
        for entry in &mut self.policies {
            let rule = *entry.policy.rule();
            entry.map.retain(|_, state| !rule.is_idle(state.load(Ordering::Relaxed), now));
            if entry.map.capacity() > 4 * entry.map.len().max(64) {
                entry.map.shrink_to_fit();
            }
            len += entry.map.len();
        }
        // A policy with nothing kept is forgotten (a request finds it again as new).
        self.policies.retain(|e| {
            !e.map.is_empty() || !e.policy.rule().is_idle(e.overflow.load(Ordering::Relaxed), now)
        });
        self.len = len;
        self.next_sweep = (2 * len).max(MIN_SWEEP);
    }
}

#[repr(align(64))]
#[derive(Default)]
struct Shard {
    data: RwLock<ShardData>,
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
    ///
    /// State is kept per [`Policy::id`]: limiters sharing this store never share a bucket.
    /// After a reload, a state kept under an older version of a policy is converted to the new
    /// rule the first time the new version meets it ([`Rule::carry`]: the tokens used carry
    /// over), and a request still running under the older version is decided under the newer
    /// rule: the newest rule a store has seen is the one it keeps states under.
    pub fn decide(&self, key: &Key, tier: &Tier, charge: Charge) -> Decision {
        let now = self.clock.now();
        let digest = self.hasher.hash_one(key);
        // The map uses the low bits (bucket) and the top 7 (tag): shard by bits in between.
        let shard = &self.shards[((digest >> 32) & self.shard_mask) as usize];
        match tier.policies() {
            [policy] => self.decide_one(shard, digest, policy, now, charge),
            policies => self.decide_all(shard, digest, policies, now, charge),
        }
    }

    /// Converts now every state kept under an older version of a policy of `limits` (the
    /// limits a reload put in force), one shard at a time, so that each client's tokens used
    /// carry over as of the reload ([`Rule::carry`]). Without this, each shard converts
    /// when a request under the new limits first meets it, as of then.
    pub fn carry_over(&self, limits: &Limits) {
        let now = self.clock.now();
        let policies: Vec<&Policy> = limits.tiers().iter().flat_map(|t| t.policies()).collect();
        for shard in self.shards.iter() {
            let mut data = shard.data.write().unwrap_or_else(PoisonError::into_inner);
            for policy in &policies {
                if matches!(data.lookup(policy), Lookup::Stale) {
                    data.current(policy, now);
                }
            }
        }
    }

    /// At capacity, new keys share the overflow states, except when a sweep (at most one a
    /// second) might make room: then the insert path tries.
    #[inline]
    fn at_cap(&self, data: &ShardData, now: Nanos) -> bool {
        data.len >= self.per_shard && now.saturating_sub(data.last_full_sweep) < Nanos::SECOND
    }

    /// The state of `digest` in `entry`: its own, or the shared overflow state when the shard is
    /// full; `None` when it has to be inserted.
    #[inline]
    fn slot<'a>(
        &self,
        data: &ShardData,
        entry: &'a PolicyMap,
        digest: u64,
        now: Nanos,
    ) -> Option<&'a AtomicU64> {
        match entry.map.get(&digest) {
            Some(slot) => Some(slot),
            None if self.at_cap(data, now) => Some(&entry.overflow),
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
        now: Nanos,
        charge: Charge,
    ) -> Decision {
        loop {
            {
                let data = shard.data.read().unwrap_or_else(PoisonError::into_inner);
                let found = match data.lookup(policy) {
                    Lookup::Found(entry) => Some((&entry.policy, self.slot(&data, entry, digest, now))),
                    Lookup::Absent => Some((policy, None)),
                    Lookup::Stale => None,
                };
                if let Some((policy, slot)) = found {
                    let rule = policy.rule();
                    let current = slot.map_or(0, |s| s.load(Ordering::Acquire));
                    let fraction = rule.fraction(current, now);
                    let cost = charge.cost_for(fraction);
                    if cost == 0 || cost > policy.quota().burst() {
                        return standing(&[policy], &[current], now, cost, fraction);
                    }
                    if let Some(slot) = slot {
                        return match charge_slot(slot, current, rule, now, cost) {
                            Ok(check) => Decision::new(Verdict::Admitted, now, fraction, cost)
                                .with(policy_state(0, policy, &check, Verdict::Admitted)),
                            Err(check) => Decision::new(Verdict::Rejected, now, fraction, 0)
                                .with(policy_state(0, policy, &check, Verdict::Rejected)),
                        };
                    }
                }
            }
            self.insert(shard, digest, std::slice::from_ref(policy), now);
        }
    }

    /// [`decide`](Self::decide) for any number of policies, charged all or none.
    fn decide_all(
        &self,
        shard: &Shard,
        digest: u64,
        policies: &[Policy],
        now: Nanos,
        charge: Charge,
    ) -> Decision {
        loop {
            {
                let data = shard.data.read().unwrap_or_else(PoisonError::into_inner);
                let mut effective: [&Policy; MAX_POLICIES] = [&policies[0]; MAX_POLICIES];
                let mut slots: [Option<&AtomicU64>; MAX_POLICIES] = [None; MAX_POLICIES];
                let mut states = [0u64; MAX_POLICIES];
                let (mut stale, mut missing) = (false, false);
                for (i, policy) in policies.iter().enumerate() {
                    match data.lookup(policy) {
                        Lookup::Found(entry) => {
                            effective[i] = &entry.policy;
                            slots[i] = self.slot(&data, entry, digest, now);
                        }
                        Lookup::Absent => effective[i] = policy,
                        Lookup::Stale => stale = true,
                    }
                    missing |= slots[i].is_none();
                    states[i] = slots[i].map_or(0, |s| s.load(Ordering::Acquire));
                }
                if !stale {
                    let effective = &effective[..policies.len()];
                    let fraction = effective
                        .iter()
                        .zip(&states)
                        .map(|(p, &s)| p.rule().fraction(s, now))
                        .fold(1.0_f64, f64::min);
                    let max_cost = effective.iter().map(|p| p.quota().burst()).min().unwrap_or(0);
                    let cost = charge.cost_for(fraction);
                    if cost == 0 || cost > max_cost {
                        return standing(effective, &states, now, cost, fraction);
                    }
                    if !missing {
                        return charge_all(effective, &slots, now, cost, fraction);
                    }
                }
            }
            self.insert(shard, digest, policies, now);
        }
    }

    /// The write path: makes each policy's entry current and gives `digest` a state in each
    /// (unless the shard is at capacity: then the overflow states serve it).
    #[cold]
    fn insert(&self, shard: &Shard, digest: u64, policies: &[Policy], now: Nanos) {
        let mut data = shard.data.write().unwrap_or_else(PoisonError::into_inner);
        for policy in policies {
            data.current(policy, now);
        }
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
            // The overflow states serve new keys; the sweeps above may have dropped an entry.
            for policy in policies {
                data.current(policy, now);
            }
            return;
        }
        let mut added = 0;
        for policy in policies {
            let entry = data.current(policy, now);
            if let std::collections::hash_map::Entry::Vacant(e) = entry.map.entry(digest) {
                e.insert(AtomicU64::new(0));
                added += 1;
            }
        }
        data.len += added;
    }
}

/// A decision that charges nothing: cost 0, or a cost that can never fit.
fn standing(policies: &[&Policy], states: &[u64], now: Nanos, cost: u64, fraction: f64) -> Decision {
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

/// Takes `cost` from one state, starting from its value `current`: the one compare-and-swap
/// loop of the store. `Err` with the refusing check when the rule refuses; nothing is written
/// then.
#[inline]
fn charge_slot(
    slot: &AtomicU64,
    mut current: u64,
    rule: &Rule,
    now: Nanos,
    cost: u64,
) -> Result<Check, Check> {
    loop {
        let check = rule.check(current, now, cost);
        let Some(next) = check.new_state() else { return Err(check) };
        match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(check),
            Err(actual) => current = actual,
        }
    }
}

/// Charges every policy; on the first refusal gives back what was taken and reports why.
fn charge_all(
    policies: &[&Policy],
    slots: &[Option<&AtomicU64>; MAX_POLICIES],
    now: Nanos,
    cost: u64,
    fraction: f64,
) -> Decision {
    let mut checks = [None; MAX_POLICIES];
    for (i, policy) in policies.iter().enumerate() {
        let slot = slots[i].expect("every slot present");
        match charge_slot(slot, slot.load(Ordering::Acquire), policy.rule(), now, cost) {
            Ok(check) => checks[i] = Some(check),
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
    let mut decision = Decision::new(Verdict::Admitted, now, fraction, cost);
    for (index, (policy, check)) in policies.iter().zip(&checks).enumerate() {
        let check = check.expect("every policy charged");
        decision = decision.with(policy_state(index, policy, &check, Verdict::Admitted));
    }
    decision
}

fn rejected(
    policies: &[&Policy],
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

    fn tracked(&self) -> Option<usize> {
        Some(self.len())
    }

    fn carry_over(&self, limits: &Limits) {
        MemoryStore::carry_over(self, limits);
    }
}

#[cfg(test)]
mod tests;

//! The in-process store: a sharded map of atomic states.
//!
//! * Each (key, policy) state is one `AtomicU64`, charged with a compare-and-swap loop: no lock
//!   is held across the decision, and concurrent requests on one key never lose an update.
//!   A sliding log's state is a [`Log`] behind a mutex of its own, held for one decision (in
//!   policy order when a tier has two).
//! * A tier with a `max_delay` reserves ahead: its policies are charged at the one instant the
//!   request's tokens exist in all of them (at most the delay away), and the decision says how
//!   long to hold it.
//! * Settling a cost ([`Store::settle`]) changes the states in place. A token bucket's refund
//!   needs to know whether an earlier refund slid the client's bucket since the charge (see
//!   [`Rule::settle`]): each shard remembers, for a while, when refunds slid which states.
//! * The map is split into many shards (at least 16, sixteen per core), each behind its own
//!   reader-writer lock, biased towards readers (BRAVO, in `memory/bias.rs`): a request for a
//!   known key reads its shard with no locked instruction at all (it publishes the shard's
//!   address in a slot of its thread, and a writer waits such readers out after a
//!   `membarrier`), so the state's compare-and-swap is the one locked instruction of the hot
//!   path. Only a key's first request (and a sweep, a reload) takes a shard's write lock; the
//!   shard's readers then take the plain read lock for a while (nine times as long as the
//!   writer took to revoke the bias), so a flood of new keys pays little for the bias. There
//!   is no global lock.
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
//! * A hard [`capacity`](MemoryStore::capacity) (`[store] max_keys`) bounds the number of
//!   states, whatever arrives: memory stays flat under a flood of new addresses. See
//!   [At the cap](MemoryStore#at-the-cap).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use bias::{Barrier, BiasedRwLock};

use crate::algorithm::{Algorithm, Check, Log, Rule};
use crate::clock::{Clock, Nanos, SystemClock};
use crate::key::Key;
use crate::policy::{Limits, Policy, PolicyId, Tier, MAX_POLICIES};

use super::{
    Charge, Decision, PolicyState, Receipt, Settlement, Store, StoreFuture, Verdict, DEFAULT_CAPACITY,
};

/// States a shard may reach before its first sweep.
const MIN_SWEEP: usize = 1_024;

/// The fewest states a shard is given when the store's capacity is small.
const MIN_PER_SHARD: usize = 64;

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

/// Whose a state is. At the cap, an anonymous state makes room for any newcomer; an identified
/// one only for another identified client, so a flood of addresses never costs a client with
/// an identity its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Keyed by address: anyone can make up more of these.
    Anonymous = 0,
    /// Keyed by a name (an API key of the table, an auth layer's identity, the one key of
    /// unrecognised requests): nobody can make up more of these.
    Identified = 1,
}

/// A client as the store finds its states: the digest of its key, and its class.
#[derive(Debug, Clone, Copy)]
struct Whose {
    digest: u64,
    class: Class,
}

impl Class {
    #[inline]
    fn of(key: &Key) -> Self {
        if key.ip().is_some() {
            Self::Anonymous
        } else {
            Self::Identified
        }
    }
}

/// The states of one policy (by [`id`](Policy::id)) in one shard.
struct PolicyMap {
    /// The newest version of the policy seen: its rule is the one every state here is kept
    /// under.
    policy: Policy,
    /// `u64` states (token bucket, sliding window), by [`Class`].
    maps: [Map; 2],
    /// Shared by anonymous newcomers while the shard holds nothing they may evict (it is full
    /// of identified clients).
    overflow: AtomicU64,
    /// A sliding log's states (when the policy is one), by [`Class`].
    logs: [LogMap; 2],
    /// The overflow state of a sliding log.
    overflow_log: Mutex<Log>,
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PolicyMap {
    fn new(policy: &Policy) -> Self {
        Self {
            policy: policy.clone(),
            maps: Default::default(),
            overflow: AtomicU64::new(0),
            logs: Default::default(),
            overflow_log: Mutex::default(),
        }
    }

    fn is_log(&self) -> bool {
        self.policy.algorithm() == Algorithm::SlidingLog
    }

    fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum::<usize>() + self.logs.iter().map(HashMap::len).sum::<usize>()
    }

    /// The states of anonymous clients.
    fn anonymous(&self) -> usize {
        self.maps[Class::Anonymous as usize].len() + self.logs[Class::Anonymous as usize].len()
    }

    /// Keeps the states under `to` instead of `from` (a reload changed the rule). A log stays
    /// a log (its entries do not depend on the rule); between a log and a `u64` state, the
    /// tokens used carry over as admitted at `now`.
    fn convert(&mut self, from: &Rule, to: &Rule, now: Nanos) {
        let (from_log, to_log) =
            (from.algorithm() == Algorithm::SlidingLog, to.algorithm() == Algorithm::SlidingLog);
        match (from_log, to_log) {
            (false, false) => {
                let [anonymous, identified] = &mut self.maps;
                let states = anonymous.values_mut().chain(identified.values_mut());
                for state in states.chain(std::iter::once(&mut self.overflow)) {
                    *state.get_mut() = to.carry(from, *state.get_mut(), now);
                }
            }
            (true, true) => {}
            (true, false) => {
                let quota = from.quota();
                let used = |log: &mut Mutex<Log>| {
                    let log = log.get_mut().unwrap_or_else(PoisonError::into_inner);
                    to.state_with_used(log.used(&quota, now), now)
                };
                for (map, logs) in self.maps.iter_mut().zip(&mut self.logs) {
                    *map = logs.iter_mut().map(|(&k, log)| (k, AtomicU64::new(used(log)))).collect();
                    *logs = LogMap::default();
                }
                *self.overflow.get_mut() = used(&mut self.overflow_log);
                self.overflow_log = Mutex::default();
            }
            (false, true) => {
                let quota = to.quota();
                let log = |state: &mut AtomicU64| {
                    Mutex::new(Log::with_used(&quota, from.used(*state.get_mut(), now), now))
                };
                for (map, logs) in self.maps.iter_mut().zip(&mut self.logs) {
                    *logs = map.iter_mut().map(|(&k, state)| (k, log(state))).collect();
                    *map = Map::default();
                }
                self.overflow_log = log(&mut self.overflow);
                *self.overflow.get_mut() = 0;
            }
        }
    }
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
    /// States kept, of both classes.
    len: usize,
    /// Of which anonymous.
    anonymous: usize,
    next_sweep: usize,
    /// When an anonymous newcomer last found no room (every state identified): anonymous
    /// newcomers share the overflow states for a second, then look for room again.
    crowded: Option<Nanos>,
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
                self.policies.push(PolicyMap::new(policy));
                self.policies.len() - 1
            }
        };
        let entry = &mut self.policies[index];
        if entry.policy.version() < policy.version() {
            if entry.policy.version() < policy.since() {
                self.len -= entry.len();
                self.anonymous -= entry.anonymous();
                *entry = PolicyMap::new(policy);
            } else if entry.policy.rule() != policy.rule() {
                let (from, to) = (*entry.policy.rule(), *policy.rule());
                entry.convert(&from, &to, now);
            }
            entry.policy = policy.clone();
        }
        entry
    }

    fn sweep(&mut self, now: Nanos) {
        let (mut len, mut anonymous) = (0, 0);
        for entry in &mut self.policies {
            let rule = *entry.policy.rule();
            for map in &mut entry.maps {
                map.retain(|_, state| !rule.is_idle(state.load(Ordering::Relaxed), now));
                if map.capacity() > 4 * map.len().max(64) {
                    map.shrink_to_fit();
                }
            }
            let quota = rule.quota();
            for logs in &mut entry.logs {
                logs.retain(|_, log| !lock(log).is_idle(&quota, now));
                if logs.capacity() > 4 * logs.len().max(64) {
                    logs.shrink_to_fit();
                }
            }
            len += entry.len();
            anonymous += entry.anonymous();
        }
        // A policy with nothing kept is forgotten (a request finds it again as new).
        self.policies.retain(|e| {
            e.len() > 0
                || !e.policy.rule().is_idle(e.overflow.load(Ordering::Relaxed), now)
                || !lock(&e.overflow_log).is_idle(&e.policy.quota(), now)
        });
        self.len = len;
        self.anonymous = anonymous;
        self.next_sweep = (2 * len).max(MIN_SWEEP);
    }

    /// Makes room for `needed` more states of a `class` newcomer in a shard of `per_shard`
    /// states: drops idle states, then the anonymous states that are idle longest (the soonest
    /// full again), then, for an identified newcomer only, identified ones the same way. Makes
    /// room for a batch of newcomers at once (an eighth of the shard), so that this scan is paid
    /// once per many insertions.
    fn make_room(&mut self, now: Nanos, class: Class, needed: usize, per_shard: usize) {
        self.sweep(now);
        let target = per_shard.saturating_sub(needed + per_shard / 8);
        if self.len > target {
            self.evict(Class::Anonymous, self.len - target, now);
        }
        if self.len > target && class == Class::Identified {
            self.evict(Class::Identified, self.len - target, now);
        }
    }

    /// Drops the `count` states of `class` that are idle longest: those whose buckets are full
    /// again soonest (for GCRA, the smallest theoretical arrival time), so a client loses the
    /// least it could be owed.
    fn evict(&mut self, class: Class, count: usize, now: Nanos) {
        // (full again in, policy entry, digest)
        let mut ranked: Vec<(Nanos, usize, u64)> = Vec::new();
        for (index, entry) in self.policies.iter().enumerate() {
            let (rule, quota) = (entry.policy.rule(), entry.policy.quota());
            for (&digest, state) in &entry.maps[class as usize] {
                ranked.push((rule.check(state.load(Ordering::Relaxed), now, 0).reset_after, index, digest));
            }
            for (&digest, log) in &entry.logs[class as usize] {
                ranked.push((lock(log).peek(&quota, now).reset_after, index, digest));
            }
        }
        let count = count.min(ranked.len());
        if count == 0 {
            return;
        }
        if count < ranked.len() {
            ranked.select_nth_unstable(count - 1);
        }
        for &(_, index, digest) in &ranked[..count] {
            let entry = &mut self.policies[index];
            if entry.maps[class as usize].remove(&digest).is_none() {
                entry.logs[class as usize].remove(&digest);
            }
        }
        self.len -= count;
        if class == Class::Anonymous {
            self.anonymous -= count;
        }
    }

    /// Anonymous newcomers share the overflow states now (for a second after they found no room).
    #[inline]
    fn crowded_at(&self, now: Nanos) -> bool {
        self.crowded.is_some_and(|at| now.saturating_sub(at) < Nanos::SECOND)
    }
}

/// When refunds slid token-bucket states of this shard: a refund of a request charged before
/// that instant leaves its charge alone (see [`Rule::settle`]). An entry is needed only while a
/// receipt written before it could still be refunded, i.e. for the policy's refill time plus
/// the tier's delay; past [`MAX_SHIFTS`] live entries the shard just remembers the latest
/// instant for all its keys (more conservative, never wrong).
#[derive(Default)]
struct Shifts {
    /// (digest, policy id) → (slid at, needed until).
    at: HashMap<(u64, u64), (Nanos, Nanos), foldhash::fast::RandomState>,
    /// The latest slide forgotten for want of room: it counts for every key.
    overflowed: Nanos,
}

const MAX_SHIFTS: usize = 256;

impl Shifts {
    fn since(&self, digest: u64, policy: u64, charged_at: Nanos) -> bool {
        self.overflowed >= charged_at
            || self.at.get(&(digest, policy)).is_some_and(|&(at, _)| at >= charged_at)
    }

    fn record(&mut self, digest: u64, policy: u64, now: Nanos, needed_for: Nanos) {
        if self.at.len() >= MAX_SHIFTS && !self.at.contains_key(&(digest, policy)) {
            self.at.retain(|_, &mut (_, until)| until > now);
            if self.at.len() >= MAX_SHIFTS {
                self.overflowed = now;
                return;
            }
        }
        self.at.insert((digest, policy), (now, now.saturating_add(needed_for)));
    }
}

#[repr(align(64))]
struct Shard {
    data: BiasedRwLock<ShardData>,
    shifts: Mutex<Shifts>,
}

impl Shard {
    fn new(barrier: Barrier) -> Self {
        Self { data: BiasedRwLock::new(ShardData::default(), barrier), shifts: Mutex::default() }
    }
}

/// The default store: lock-free per-key state in a sharded, self-cleaning, bounded map.
///
/// # At the cap
/// The store keeps at most [`capacity`](Self::capacity) states (`[store] max_keys`; one per
/// client and policy), split evenly over its shards, whatever arrives. When a new client finds
/// its shard full:
/// * states that are idle (a full bucket) are dropped first: they are indistinguishable from
///   new ones;
/// * then the states **idle longest** make room: those whose buckets are full again soonest
///   (for GCRA, the smallest theoretical arrival time; read off each state, no bookkeeping on
///   the hot path), so the clients evicted lose the least they could be owed. A new anonymous
///   client arriving in the middle of a flood of random addresses is therefore admitted on its
///   first request, with its own bucket;
/// * a client keyed by address (anonymous) only ever makes room by evicting other anonymous
///   clients. A client with an identity (an API key, an authentication layer's
///   [`Client`](crate::key::Client)) is never evicted, nor made to share a bucket, because of
///   anonymous clients: its limits stay exact through any flood. Only when a shard holds
///   identified clients alone does an identified newcomer evict the one idle longest, and an
///   anonymous newcomer share one bucket per policy with the other anonymous newcomers of that
///   shard (for a second, then it looks for room again).
///
/// So size `max_keys` above the number of identified clients times their policies, with room to
/// spare: each shard holds `capacity / shards` states (with a small capacity the store uses
/// fewer shards, at least 64 states each). Room is made for a batch of newcomers at once, so
/// the scan it takes is paid once per many insertions; the hot path (a known client) never
/// pays anything for it.
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
    /// The newest version of each policy a reload told of ([`carry_over`](Self::carry_over)):
    /// a request planned under an older one never starts a state under its older rule.
    newest: RwLock<HashMap<PolicyId, Policy, foldhash::fast::RandomState>>,
    shard_mask: u64,
    hasher: foldhash::quality::RandomState,
    clock: C,
    per_shard: usize,
    /// The barriers of the shards' locks: membarrier where the OS has it (tests force fences).
    barrier: Barrier,
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
        Self::build(clock, Self::default_shards(DEFAULT_CAPACITY), DEFAULT_CAPACITY, Barrier::detect())
    }

    /// Sixteen shards per core, but no fewer than 64 states a shard: a small capacity spread
    /// thin would fill some shards long before the store is full.
    fn default_shards(capacity: usize) -> usize {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let most = (capacity / MIN_PER_SHARD).max(1);
        let most = if most.is_power_of_two() { most } else { most.next_power_of_two() / 2 };
        (cores * 16).next_power_of_two().clamp(16, 1024).min(most)
    }

    fn build(clock: C, shards: usize, capacity: usize, barrier: Barrier) -> Self {
        let shards = shards.next_power_of_two().clamp(1, 1024);
        Self {
            shards: (0..shards).map(|_| Shard::new(barrier)).collect(),
            newest: RwLock::default(),
            shard_mask: shards as u64 - 1,
            hasher: foldhash::quality::RandomState::default(),
            clock,
            per_shard: capacity.div_ceil(shards).max(MAX_POLICIES),
            barrier,
        }
    }

    /// Keeps at most about `states` states (one per key and policy); 2 097 152 by default.
    /// See [At the cap](Self#at-the-cap) for what happens when they are all taken. A small
    /// capacity also lowers the number of shards (to keep at least 64 states each), unless
    /// [`shards`](Self::shards) is called afterwards.
    ///
    /// ```
    /// use tollgate::store::MemoryStore;
    /// let store = MemoryStore::new().capacity(1_000);
    /// assert!(format!("{store:?}").contains("capacity: 1000"));
    /// ```
    pub fn capacity(self, states: usize) -> Self {
        let shards = self.shards.len().min(Self::default_shards(states));
        Self::build(self.clock, shards, states, self.barrier)
    }

    /// Splits the map into `shards` shards (rounded up to a power of two, at most 1024).
    pub fn shards(self, shards: usize) -> Self {
        let capacity = self.per_shard * self.shards.len();
        Self::build(self.clock, shards, capacity, self.barrier)
    }

    /// The same store with its shards' locks passing `barrier` (tests: the fallback).
    #[cfg(test)]
    fn barrier(self, barrier: Barrier) -> Self {
        let (shards, capacity) = (self.shards.len(), self.per_shard * self.shards.len());
        Self::build(self.clock, shards, capacity, barrier)
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The number of states kept now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.data.read().len).sum()
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
        let whose = Whose { digest, class: Class::of(key) };
        match tier.policies() {
            [policy] if tier.max_delay().is_zero() && policy.algorithm() != Algorithm::SlidingLog => {
                self.decide_one(shard, whose, policy, tier, now, charge)
            }
            policies => self.decide_all(shard, whose, policies, tier.max_delay(), now, charge),
        }
    }

    /// Converts now every state kept under an older version of a policy of `limits` (the
    /// limits a reload put in force), one shard at a time, so that each client's tokens used
    /// carry over as of the reload ([`Rule::carry`]). Without this, each shard converts
    /// when a request under the new limits first meets it, as of then.
    pub fn carry_over(&self, limits: &Limits) {
        let now = self.clock.now();
        let policies: Vec<&Policy> = limits.tiers().iter().flat_map(|t| t.policies()).collect();
        {
            let mut newest = self.newest.write().unwrap_or_else(PoisonError::into_inner);
            for policy in &policies {
                let known = newest.get(&policy.id()).is_some_and(|p| p.version() >= policy.version());
                if !known {
                    newest.insert(policy.id(), (*policy).clone());
                }
            }
        }
        for shard in self.shards.iter() {
            let mut data = shard.data.write();
            for policy in &policies {
                if matches!(data.lookup(policy), Lookup::Stale) {
                    data.current(policy, now);
                }
            }
        }
    }

    /// The state of `digest` of `class` in `entry`: its own, or, for an anonymous newcomer
    /// while its shard holds nothing it may evict, the shared overflow state; `None` when it
    /// has to be inserted.
    #[inline]
    fn slot<'a>(
        data: &ShardData,
        entry: &'a PolicyMap,
        class: Class,
        digest: u64,
        now: Nanos,
    ) -> Option<&'a AtomicU64> {
        match entry.maps[class as usize].get(&digest) {
            Some(slot) => Some(slot),
            None if class == Class::Anonymous && data.crowded_at(now) => Some(&entry.overflow),
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
        whose: Whose,
        policy: &Policy,
        tier: &Tier,
        now: Nanos,
        charge: Charge,
    ) -> Decision {
        let Whose { digest, class } = whose;
        loop {
            {
                let data = shard.data.read();
                let found = match data.lookup(policy) {
                    // A reload made it a log: the general path keeps logs.
                    Lookup::Found(entry) if entry.is_log() => Err(()),
                    Lookup::Found(entry) => {
                        Ok(Some((&entry.policy, Self::slot(&data, entry, class, digest, now))))
                    }
                    Lookup::Absent => Ok(Some((policy, None))),
                    Lookup::Stale => Ok(None),
                };
                let Ok(found) = found else {
                    drop(data);
                    return self.decide_all(shard, whose, tier.policies(), tier.max_delay(), now, charge);
                };
                if let Some((policy, slot)) = found {
                    let rule = policy.rule();
                    let current = slot.map_or(0, |s| s.load(Ordering::Acquire));
                    let fraction = rule.fraction(current, now);
                    let cost = charge.cost_for(fraction);
                    if cost == 0 || cost > policy.quota().burst() {
                        return standing(&[policy], &[current], &[], now, cost, fraction);
                    }
                    if let Some(slot) = slot {
                        return match charge_slot(slot, current, rule, now, cost, Nanos::ZERO) {
                            Ok((check, state)) => Decision::new(Verdict::Admitted, now, fraction, cost)
                                .with(policy_state(0, policy, &check, Verdict::Admitted))
                                .with_receipt(Receipt::default().with(0, state)),
                            Err(check) => Decision::new(Verdict::Rejected, now, fraction, 0)
                                .with(policy_state(0, policy, &check, Verdict::Rejected)),
                        };
                    }
                }
            }
            self.insert(shard, digest, class, std::slice::from_ref(policy), now);
        }
    }

    /// [`decide`](Self::decide) for any number of policies of any algorithm, charged all or
    /// none, and for a tier that may hold a request up to `max_wait`.
    fn decide_all(
        &self,
        shard: &Shard,
        whose: Whose,
        policies: &[Policy],
        max_wait: Nanos,
        now: Nanos,
        charge: Charge,
    ) -> Decision {
        let Whose { digest, class } = whose;
        loop {
            {
                let data = shard.data.read();
                let mut effective: [&Policy; MAX_POLICIES] = [&policies[0]; MAX_POLICIES];
                let mut slots: [Option<&AtomicU64>; MAX_POLICIES] = [None; MAX_POLICIES];
                let mut logs: [Option<&Mutex<Log>>; MAX_POLICIES] = [None; MAX_POLICIES];
                let (mut stale, mut missing) = (false, false);
                for (i, policy) in policies.iter().enumerate() {
                    match data.lookup(policy) {
                        Lookup::Found(entry) => {
                            effective[i] = &entry.policy;
                            if entry.is_log() {
                                logs[i] = Self::log_slot(&data, entry, class, digest, now);
                            } else {
                                slots[i] = Self::slot(&data, entry, class, digest, now);
                            }
                        }
                        Lookup::Absent => effective[i] = policy,
                        Lookup::Stale => stale = true,
                    }
                    missing |= slots[i].is_none() && logs[i].is_none();
                }
                if !stale {
                    let effective = &effective[..policies.len()];
                    // Logs are locked in policy order (every decision takes them so).
                    let mut held: [Option<MutexGuard<'_, Log>>; MAX_POLICIES] = Default::default();
                    for (guard, log) in held.iter_mut().zip(&logs) {
                        *guard = log.map(lock);
                    }
                    let mut states = [0u64; MAX_POLICIES];
                    for (state, slot) in states.iter_mut().zip(&slots) {
                        *state = slot.map_or(0, |s| s.load(Ordering::Acquire));
                    }
                    let empty = Log::default();
                    let fraction = effective
                        .iter()
                        .enumerate()
                        .map(|(i, p)| match &held[i] {
                            Some(log) => log.fraction(&p.quota(), now),
                            None if p.algorithm() == Algorithm::SlidingLog => empty.fraction(&p.quota(), now),
                            None => p.rule().fraction(states[i], now),
                        })
                        .fold(1.0_f64, f64::min);
                    let max_cost = effective.iter().map(|p| p.quota().burst()).min().unwrap_or(0);
                    let cost = charge.cost_for(fraction);
                    if cost == 0 || cost > max_cost {
                        return standing(effective, &states, &held, now, cost, fraction);
                    }
                    if !missing {
                        if max_wait.is_zero() && logs.iter().all(Option::is_none) {
                            return charge_all(effective, &slots, now, cost, fraction);
                        }
                        if let Some(decision) =
                            reserve_all(effective, &slots, &mut held, now, cost, max_wait, fraction)
                        {
                            return decision;
                        }
                        continue; // another request moved a state in between: decide again
                    }
                }
            }
            self.insert(shard, digest, class, policies, now);
        }
    }

    /// Settles `settlement` for `key` under `tier` now: the synchronous heart of
    /// [`Store::settle`]. A refund of a state that is gone (forgotten as idle: nothing left to
    /// refund) does nothing; an extra charge makes it again. A state shared while the shard is
    /// at capacity takes extra charges, never refunds (its receipts may be anyone's).
    pub fn settle_now(&self, key: &Key, tier: &Tier, settlement: Settlement) -> Decision {
        let now = self.clock.now();
        let digest = self.hasher.hash_one(key);
        let shard = &self.shards[((digest >> 32) & self.shard_mask) as usize];
        let class = Class::of(key);
        let policies = tier.policies();
        let Settlement { receipt, charged_at, charged, actual } = settlement;
        loop {
            {
                let data = shard.data.read();
                let mut entries: [Option<&PolicyMap>; MAX_POLICIES] = [None; MAX_POLICIES];
                let mut redo = false;
                for (i, policy) in policies.iter().enumerate() {
                    match data.lookup(policy) {
                        Lookup::Found(entry) => {
                            entries[i] = Some(entry);
                            let own = if entry.is_log() {
                                entry.logs[class as usize].contains_key(&digest)
                            } else {
                                entry.maps[class as usize].contains_key(&digest)
                            };
                            let shared = class == Class::Anonymous && data.crowded_at(now);
                            redo |= !own && actual > charged && !shared;
                        }
                        Lookup::Absent => redo |= actual > charged,
                        Lookup::Stale => redo = true,
                    }
                }
                if !redo {
                    let mut decision = Decision::new(Verdict::Admitted, now, 1.0, actual);
                    let mut fraction = 1.0_f64;
                    for (i, policy) in policies.iter().enumerate() {
                        let Some(entry) = entries[i] else {
                            // Nothing kept for this policy here: a full bucket.
                            let check = match policy.algorithm() {
                                Algorithm::SlidingLog => Log::default().peek(&policy.quota(), now),
                                _ => policy.rule().check(0, now, 0),
                            };
                            decision = decision.with(policy_state(i, policy, &check, Verdict::Admitted));
                            continue;
                        };
                        let (policy, quota) = (&entry.policy, entry.policy.quota());
                        let check = if entry.is_log() {
                            let mut log = match entry.logs[class as usize].get(&digest) {
                                Some(log) => lock(log),
                                None => lock(&entry.overflow_log),
                            };
                            log.settle(&quota, now, Nanos::new(receipt.get(i)), charged, actual);
                            fraction = fraction.min(log.fraction(&quota, now));
                            log.peek(&quota, now)
                        } else {
                            let own = entry.maps[class as usize].get(&digest);
                            let slot = own.unwrap_or(&entry.overflow);
                            let rule = policy.rule();
                            if actual > charged || own.is_some() {
                                self.settle_slot(shard, slot, rule, digest, policy, tier, settlement, now);
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
                let _ = (receipt, charged_at);
            }
            // An extra charge on a state forgotten as idle (or kept under an older rule): make
            // it current, then charge.
            self.insert(shard, digest, class, policies, now);
        }
    }

    /// Settles one `u64` state in place, remembering when a token-bucket refund slid it.
    #[allow(clippy::too_many_arguments)]
    fn settle_slot(
        &self,
        shard: &Shard,
        slot: &AtomicU64,
        rule: &Rule,
        digest: u64,
        policy: &Policy,
        tier: &Tier,
        settlement: Settlement,
        now: Nanos,
    ) {
        let Settlement { receipt, charged_at, charged, actual } = settlement;
        let index = tier.policies().iter().position(|p| p.id() == policy.id()).unwrap_or(0);
        let id = policy.id().get();
        let shifted = rule.algorithm() == Algorithm::TokenBucket
            && actual < charged
            && shard.shifts.lock().unwrap_or_else(PoisonError::into_inner).since(digest, id, charged_at);
        let mut slid = false;
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
            let settled = rule.settle(state, now, receipt.get(index), charged, actual, shifted);
            slid = settled.shifted;
            Some(settled.state)
        });
        if slid {
            let needed_for = rule.quota().refill_time().saturating_add(tier.max_delay());
            shard.shifts.lock().unwrap_or_else(PoisonError::into_inner).record(digest, id, now, needed_for);
        }
    }

    /// The log of `digest` in `entry`, as [`slot`](Self::slot) finds a state.
    #[inline]
    fn log_slot<'a>(
        data: &ShardData,
        entry: &'a PolicyMap,
        class: Class,
        digest: u64,
        now: Nanos,
    ) -> Option<&'a Mutex<Log>> {
        match entry.logs[class as usize].get(&digest) {
            Some(log) => Some(log),
            None if class == Class::Anonymous && data.crowded_at(now) => Some(&entry.overflow_log),
            None => None,
        }
    }

    /// The write path: makes each policy's entry current and gives `digest` a state of `class`
    /// in each, making room when the shard is full ([At the cap](Self#at-the-cap)). An
    /// anonymous newcomer that finds nothing it may evict is left to the overflow states.
    #[cold]
    fn insert(&self, shard: &Shard, digest: u64, class: Class, policies: &[Policy], now: Nanos) {
        // A request planned before a reload starts no state under its older rule.
        let newest = self.newest.read().unwrap_or_else(PoisonError::into_inner);
        let newer: Vec<Policy> = policies
            .iter()
            .map(|p| match newest.get(&p.id()) {
                Some(n) if n.version() > p.version() => n.clone(),
                _ => p.clone(),
            })
            .collect();
        drop(newest);
        let policies = &newer[..];
        let mut data = shard.data.write();
        for policy in policies {
            data.current(policy, now);
        }
        let kept = |data: &ShardData, policy: &Policy| {
            data.policies.iter().find(|e| e.policy.id() == policy.id()).is_some_and(|e| {
                e.maps[class as usize].contains_key(&digest) || e.logs[class as usize].contains_key(&digest)
            })
        };
        if policies.iter().all(|p| kept(&data, p)) {
            return; // another request of this client got here first
        }
        if data.len >= data.next_sweep {
            data.sweep(now);
        }
        let needed = policies.len();
        if data.len + needed > self.per_shard {
            data.make_room(now, class, needed, self.per_shard);
            // The sweep may have dropped an entry.
            for policy in policies {
                data.current(policy, now);
            }
        }
        if data.len + needed > self.per_shard {
            // Only an anonymous newcomer in a shard of identified clients gets here.
            data.crowded = Some(now);
            return;
        }
        let mut added = 0;
        for policy in policies {
            use std::collections::hash_map::Entry::Vacant;
            let entry = data.current(policy, now);
            if entry.is_log() {
                if let Vacant(e) = entry.logs[class as usize].entry(digest) {
                    e.insert(Mutex::default());
                    added += 1;
                }
            } else if let Vacant(e) = entry.maps[class as usize].entry(digest) {
                e.insert(AtomicU64::new(0));
                added += 1;
            }
        }
        data.len += added;
        if class == Class::Anonymous {
            data.anonymous += added;
        }
    }
}

/// A decision that charges nothing: cost 0, or a cost that can never fit.
fn standing(
    policies: &[&Policy],
    states: &[u64],
    logs: &[Option<MutexGuard<'_, Log>>],
    now: Nanos,
    cost: u64,
    fraction: f64,
) -> Decision {
    let outcome = if cost == 0 { Verdict::Admitted } else { Verdict::Exceeds };
    let mut decision = Decision::new(outcome, now, fraction, 0);
    for (index, (policy, &state)) in policies.iter().zip(states).enumerate() {
        // Report the standing as it is: nothing is charged.
        decision =
            decision.with(policy_state(index, policy, &peek(policy, state, logs.get(index), now), outcome));
    }
    decision
}

/// A policy's standing now, charging nothing.
fn peek(policy: &Policy, state: u64, log: Option<&Option<MutexGuard<'_, Log>>>, now: Nanos) -> Check {
    match log {
        Some(Some(log)) => log.peek(&policy.quota(), now),
        _ if policy.algorithm() == Algorithm::SlidingLog => Log::default().peek(&policy.quota(), now),
        _ => policy.rule().check(state, now, 0),
    }
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

/// Charges every policy (`u64` states and locked logs) at the one instant all of them have
/// room, at most `max_wait` away: each policy's own earliest instant first, then all at the
/// latest of them. `None` when a concurrent request moved a state in between (what was taken
/// is given back; decide again).
fn reserve_all(
    policies: &[&Policy],
    slots: &[Option<&AtomicU64>; MAX_POLICIES],
    logs: &mut [Option<MutexGuard<'_, Log>>; MAX_POLICIES],
    now: Nanos,
    cost: u64,
    max_wait: Nanos,
    fraction: f64,
) -> Option<Decision> {
    let mut earliest = [now; MAX_POLICIES];
    let mut states = [0u64; MAX_POLICIES];
    let mut at = now;
    for (i, policy) in policies.iter().enumerate() {
        earliest[i] = match logs[i].as_mut() {
            Some(log) => log.earliest_at(&policy.quota(), now, cost),
            None => {
                states[i] = slots[i].map_or(0, |s| s.load(Ordering::Acquire));
                let check = policy.rule().check_within(states[i], now, cost, max_wait);
                match check.new_state() {
                    Some(_) => now + check.wait,
                    None => now + check.retry_after,
                }
            }
        };
        // A counter cannot wait: a later instant refuses it.
        if earliest[i] > now && !policy.algorithm().reserves_ahead() {
            earliest[i] = earliest[i].max(now + max_wait + Nanos::new(1));
        }
        at = at.max(earliest[i]);
    }
    if at - now > max_wait {
        let mut decision = Decision::new(Verdict::Rejected, now, fraction, 0);
        for (index, policy) in policies.iter().enumerate() {
            let mut check = peek(policy, states[index], logs.get(index), now);
            check.retry_after = earliest[index] - now;
            decision = decision.with(policy_state(index, policy, &check, Verdict::Rejected));
        }
        return Some(decision);
    }
    let mut checks = [None; MAX_POLICIES];
    let mut receipt = Receipt::default();
    for (i, policy) in policies.iter().enumerate() {
        let check = match logs[i].as_mut() {
            Some(log) => {
                receipt = receipt.with(i, at.as_nanos());
                log.charge_at(&policy.quota(), now, cost, at)
            }
            None => {
                let slot = slots[i].expect("every slot present");
                let current = slot.load(Ordering::Acquire);
                let check = policy.rule().check_at(current, now, cost, at);
                let written = check.new_state().filter(|&next| {
                    slot.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire).is_ok()
                });
                let Some(next) = written else {
                    undo(policies, slots, logs, i, now, cost, at);
                    return None;
                };
                receipt = receipt.with(i, next);
                check
            }
        };
        checks[i] = Some(check);
    }
    let mut decision =
        Decision::new(Verdict::Admitted, now, fraction, cost).held(at - now).with_receipt(receipt);
    for (index, (policy, check)) in policies.iter().zip(&checks).enumerate() {
        let check = check.expect("every policy charged");
        decision = decision.with(policy_state(index, policy, &check, Verdict::Admitted));
    }
    Some(decision)
}

/// Gives back the charges of the first `charged` policies, made at `at` a moment ago.
fn undo(
    policies: &[&Policy],
    slots: &[Option<&AtomicU64>; MAX_POLICIES],
    logs: &mut [Option<MutexGuard<'_, Log>>; MAX_POLICIES],
    charged: usize,
    now: Nanos,
    cost: u64,
    at: Nanos,
) {
    for (j, earlier) in policies[..charged].iter().enumerate() {
        match logs[j].as_mut() {
            Some(log) => log.settle(&earlier.quota(), now, at, cost, 0),
            None => {
                let slot = slots[j].expect("every slot present");
                let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                    Some(earlier.rule().refund(s, now, cost))
                });
            }
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

    fn settle(&self, key: &Key, tier: &Tier, settlement: Settlement) -> StoreFuture {
        StoreFuture::ready(Ok(self.settle_now(key, tier, settlement)))
    }

    fn tracked(&self) -> Option<usize> {
        Some(self.len())
    }

    fn carry_over(&self, limits: &Limits) {
        MemoryStore::carry_over(self, limits);
    }
}

mod bias;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod charging_tests;

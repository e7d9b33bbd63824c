//! The in-process history: sharded maps of fixed rings, bounded in clients.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::ring::{periods, Counts, Ring};
use super::{client_label, AdminReport, ClientUsage, NamedCount, UsageHistory, Visit};
use crate::key::Key;

/// Shards of the maps: a request locks one, for a few nanoseconds.
const SHARDS: usize = 32;
/// Distinct tier or route names counted before the rest are counted as `"(other)"`: a router
/// without `MatchedPath` reports raw paths, which a client could make up without end.
const MAX_NAMES: usize = 256;
/// What names beyond [`MAX_NAMES`] are counted as.
pub(super) const OTHER: &str = "(other)";

/// One client: 60 minutes and 24 hours of counts (1 016 bytes) plus its label and tier.
#[derive(Debug)]
struct Entry {
    label: Box<str>,
    tier: Arc<str>,
    last_seen: u32,
    minutes: Ring<60>,
    hours: Ring<24>,
}

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

/// Clients by the 64-bit digest of their key (per-history random seed): the key is hashed once
/// per request, and never kept.
type Clients = HashMap<u64, Box<Entry>, BuildHasherDefault<Passthrough>>;

#[derive(Debug, Default)]
struct Shard {
    identified: Clients,
    anonymous: Clients,
    totals: Ring<60>,
    rejected_by_tier: HashMap<Arc<str>, Ring<60>, foldhash::fast::RandomState>,
    rejected_by_route: HashMap<Arc<str>, Ring<60>, foldhash::fast::RandomState>,
}

/// Interned names (tiers, routes): one allocation per distinct name, ever, at most
/// [`MAX_NAMES`].
#[derive(Debug, Default)]
pub(super) struct Names(RwLock<Vec<Arc<str>>>);

impl Names {
    pub(super) fn get(&self, name: &str) -> Arc<str> {
        if let Some(found) =
            self.0.read().unwrap_or_else(PoisonError::into_inner).iter().find(|n| &***n == name)
        {
            return found.clone();
        }
        let mut names = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = names.iter().find(|n| &***n == name) {
            return found.clone();
        }
        if names.len() >= MAX_NAMES {
            return Arc::from(OTHER);
        }
        let name: Arc<str> = Arc::from(name);
        names.push(name.clone());
        name
    }
}

/// The history kept in this process; see [`History::memory`](super::History::memory).
#[derive(Debug)]
pub(super) struct MemoryHistory {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Clients kept per shard, identified and anonymous.
    identified_per_shard: usize,
    anonymous_per_shard: usize,
    names: Names,
}

impl MemoryHistory {
    pub(super) fn new(max_identified: usize, max_anonymous: usize) -> Self {
        Self {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            identified_per_shard: max_identified.div_ceil(SHARDS).max(1),
            anonymous_per_shard: max_anonymous.div_ceil(SHARDS),
            names: Names::default(),
        }
    }

    /// The key's digest, and its shard, locked.
    fn shard(&self, key: &Key) -> (u64, std::sync::MutexGuard<'_, Shard>) {
        let digest = self.hasher.hash_one(key);
        // The map uses the low bits of the digest; the shard, the high ones.
        let index = (digest >> 58) as usize % SHARDS;
        (digest, self.shards[index].lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn record(&self, visit: &Visit<'_>) {
        let minute = (visit.at / 60) as u32;
        let hour = (visit.at / 3_600) as u32;
        let counts = Counts::one(visit.admitted, visit.tokens);
        let rejected = (!visit.admitted).then(|| (self.names.get(visit.tier), self.names.get(visit.route)));
        let (digest, mut shard) = self.shard(visit.key);
        shard.totals.add(minute, counts);
        if let Some((tier, route)) = rejected {
            shard.rejected_by_tier.entry(tier).or_default().add(minute, counts);
            shard.rejected_by_route.entry(route).or_default().add(minute, counts);
        }
        let (map, cap) = if visit.identified {
            (&mut shard.identified, self.identified_per_shard)
        } else {
            (&mut shard.anonymous, self.anonymous_per_shard)
        };
        if cap == 0 {
            return;
        }
        let entry = match map.get_mut(&digest) {
            Some(entry) => entry,
            None => {
                if map.len() >= cap {
                    evict_older_half(map);
                }
                map.entry(digest).or_insert_with(|| {
                    Box::new(Entry {
                        label: client_label(visit.key, visit.name).into(),
                        tier: self.names.get(visit.tier),
                        last_seen: minute,
                        minutes: Ring::default(),
                        hours: Ring::default(),
                    })
                })
            }
        };
        if let Some(name) = visit.name {
            if *entry.label != *name {
                entry.label = name.into();
            }
        }
        if *entry.tier != *visit.tier {
            entry.tier = self.names.get(visit.tier);
        }
        entry.last_seen = entry.last_seen.max(minute);
        entry.minutes.add(minute, counts);
        if visit.identified {
            entry.hours.add(hour, counts);
        }
    }

    pub(super) fn client(&self, key: &Key, now: u64) -> UsageHistory {
        let (digest, shard) = self.shard(key);
        match shard.identified.get(&digest) {
            Some(entry) => UsageHistory {
                minutes: entry.minutes.periods((now / 60) as u32, 60),
                hours: entry.hours.periods((now / 3_600) as u32, 3_600),
            },
            None => UsageHistory::default(),
        }
    }

    pub(super) fn report(&self, now: u64, limit: usize) -> AdminReport {
        let minute = (now / 60) as u32;
        let mut clients = Vec::new();
        let mut totals = [Counts::default(); 60];
        let mut by_tier: HashMap<Arc<str>, u64> = HashMap::new();
        let mut by_route: HashMap<Arc<str>, u64> = HashMap::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.totals.add_into(minute, &mut totals);
            for (tier, ring) in &shard.rejected_by_tier {
                *by_tier.entry(tier.clone()).or_default() += u64::from(ring.sum(minute).rejected);
            }
            for (route, ring) in &shard.rejected_by_route {
                *by_route.entry(route.clone()).or_default() += u64::from(ring.sum(minute).rejected);
            }
            for entry in shard.identified.values().chain(shard.anonymous.values()) {
                let hour = entry.minutes.sum(minute);
                if !hour.is_empty() {
                    clients.push(ClientUsage {
                        client: entry.label.to_string(),
                        tier: entry.tier.to_string(),
                        admitted: u64::from(hour.admitted),
                        rejected: u64::from(hour.rejected),
                        tokens: u64::from(hour.tokens),
                    });
                }
            }
        }
        AdminReport::assemble(
            clients,
            limit,
            NamedCount::sorted(by_tier),
            NamedCount::sorted(by_route),
            periods(&totals, minute, 60),
        )
    }

    /// (identified, anonymous) clients held.
    #[cfg(test)]
    pub(super) fn len(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(i, a), shard| {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            (i + shard.identified.len(), a + shard.anonymous.len())
        })
    }
}

/// Makes room: drops the clients seen longest ago, half of the map (amortised O(1) per
/// insertion). Under a flood of new clients, a busy one is seen every minute and stays.
fn evict_older_half(map: &mut Clients) {
    let mut seen: Vec<u32> = map.values().map(|e| e.last_seen).collect();
    let middle = seen.len() / 2;
    let (_, &mut median, _) = seen.select_nth_unstable(middle);
    let mut to_drop = map.len() - middle;
    // Strictly older first; then, among those seen in the median minute, as many as needed.
    map.retain(|_, e| {
        if e.last_seen < median && to_drop > 0 {
            to_drop -= 1;
            false
        } else {
            true
        }
    });
    map.retain(|_, e| {
        if e.last_seen == median && to_drop > 0 {
            to_drop -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit<'a>(key: &'a Key, at: u64, admitted: bool, tokens: u64) -> Visit<'a> {
        Visit {
            key,
            name: None,
            identified: key.ip().is_none(),
            tier: "free",
            route: "/api/simple",
            at,
            admitted,
            tokens,
        }
    }

    #[test]
    fn eviction_keeps_the_most_recent_half() {
        let history = MemoryHistory::new(SHARDS * 10, 0);
        // 20 clients in one shard's worth is hard to aim; instead fill every shard well past
        // its cap and check the bound and that the newest clients survived.
        for i in 0..2_000u64 {
            let key = Key::new(format!("client-{i}"));
            history.record(&visit(&key, 1_700_000_000 + i * 60, true, 1));
        }
        let (identified, anonymous) = history.len();
        assert!(identified <= SHARDS * 10, "{identified}");
        assert_eq!(anonymous, 0, "anonymous clients are not kept with a cap of 0");
        let newest = Key::new("client-1999");
        assert_eq!(history.client(&newest, 1_700_000_000 + 1_999 * 60).minutes.len(), 1);
    }

    proptest::proptest! {
        /// Whatever the order and spread of requests within the hour, each client's minutes
        /// and hours add up to what it did, and the operator's totals to what everyone did.
        #[test]
        fn sums_match_the_requests_made(
            visits in proptest::collection::vec((0u8..6, 0u64..3_600, proptest::bool::ANY, 0u64..50), 1..300)
        ) {
            let history = MemoryHistory::new(1_000, 1_000);
            let start = 1_700_000_000 / 3_600 * 3_600;
            let keys: Vec<Key> = (0..6u8)
                .map(|i| if i < 4 { Key::new(format!("key-{i}")) } else { Key::from_ip([192, 0, 2, i].into()) })
                .collect();
            for &(who, at, admitted, tokens) in &visits {
                history.record(&visit(&keys[usize::from(who)], start + at, admitted, if admitted { tokens } else { 0 }));
            }
            let now = start + 3_599;
            for (i, key) in keys.iter().enumerate() {
                let mine = visits.iter().filter(|v| usize::from(v.0) == i);
                let admitted = mine.clone().filter(|v| v.2).count() as u64;
                let rejected = mine.clone().filter(|v| !v.2).count() as u64;
                let tokens: u64 = mine.filter(|v| v.2).map(|v| v.3).sum();
                let h = history.client(key, now);
                if key.ip().is_some() {
                    proptest::prop_assert!(h.minutes.is_empty() && h.hours.is_empty());
                    continue;
                }
                for list in [&h.minutes, &h.hours] {
                    proptest::prop_assert_eq!(list.iter().map(|p| p.admitted).sum::<u64>(), admitted);
                    proptest::prop_assert_eq!(list.iter().map(|p| p.rejected).sum::<u64>(), rejected);
                    proptest::prop_assert_eq!(list.iter().map(|p| p.tokens).sum::<u64>(), tokens);
                    proptest::prop_assert!(list.windows(2).all(|w| w[0].start < w[1].start), "oldest first");
                }
            }
            let report = history.report(now, 100);
            let all: u64 = report.minutes.iter().map(|p| p.admitted + p.rejected).sum();
            proptest::prop_assert_eq!(all, visits.len() as u64);
            let listed: u64 = report.clients.iter().map(|c| c.admitted + c.rejected).sum();
            proptest::prop_assert_eq!(listed, visits.len() as u64);
            let rejected = visits.iter().filter(|v| !v.2).count() as u64;
            proptest::prop_assert_eq!(report.rejected_by_tier.iter().map(|c| c.rejected).sum::<u64>(), rejected);
            proptest::prop_assert!(report.clients.windows(2).all(|w| w[0].tokens >= w[1].tokens), "sorted");
        }
    }

    #[test]
    fn names_beyond_the_cap_are_other() {
        let names = Names::default();
        for i in 0..MAX_NAMES {
            assert_eq!(&*names.get(&format!("/r{i}")), format!("/r{i}"));
        }
        assert_eq!(&*names.get("/one-too-many"), OTHER);
        assert_eq!(&*names.get("/r0"), "/r0");
    }
}

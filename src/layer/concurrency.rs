//! Per-key concurrency limits: how many requests one client may have in flight at once.
//!
//! A slot is taken before the rate limit is charged (so a request refused for concurrency costs
//! no tokens) and given back when the response body has been sent in full, or when the response
//! or its future is dropped: a [`Slot`] is given back on drop, whatever happens.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use crate::key::Key;

const SHARDS: usize = 16;

/// The in-flight counts of one layer. Only keys with requests in flight take memory.
pub(crate) struct InFlight {
    shards: Box<[Mutex<HashMap<u64, u32>>]>,
    hasher: foldhash::quality::RandomState,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

/// What a limit counts: one tier's requests (by name: a reload may reorder the tiers), or one
/// route's.
#[derive(Debug, Clone, Copy, Hash)]
pub(crate) enum Scope<'a> {
    Tier(&'a str),
    Route(&'a str),
}

impl InFlight {
    pub(crate) fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), hasher: Default::default() }
    }

    fn shard(&self, digest: u64) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.shards[(digest >> 32) as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot of `key` in `scope` if fewer than `limit` are taken.
    pub(crate) fn acquire(self: &Arc<Self>, key: &Key, scope: Scope<'_>, limit: u32) -> Option<Slot> {
        let digest = self.hasher.hash_one((key, scope));
        let mut shard = self.shard(digest);
        let count = shard.entry(digest).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                shard.remove(&digest);
            }
            return None;
        }
        *count += 1;
        Some(Slot { owner: self.clone(), digest })
    }

    /// Keys with requests in flight.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// One taken slot of a client's in-flight count; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<InFlight>,
    digest: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = self.owner.shard(self.digest);
        if let Some(count) = shard.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.digest);
            }
        }
    }
}

/// The slots one request holds (a tier's and a route's).
#[derive(Debug, Default)]
pub(crate) struct Slots(pub(crate) [Option<Slot>; 2]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_scope_and_come_back_on_drop() {
        let inflight = Arc::new(InFlight::new());
        let a = Key::new("a");
        let first = inflight.acquire(&a, Scope::Tier("free"), 2).unwrap();
        let second = inflight.acquire(&a, Scope::Tier("free"), 2).unwrap();
        assert!(inflight.acquire(&a, Scope::Tier("free"), 2).is_none());
        assert!(inflight.acquire(&Key::new("b"), Scope::Tier("free"), 2).is_some(), "another key");
        assert!(inflight.acquire(&a, Scope::Route("/x"), 1).is_some(), "another scope");
        drop(first);
        let third = inflight.acquire(&a, Scope::Tier("free"), 2).unwrap();
        drop((second, third));
        assert_eq!(inflight.keys(), 0, "idle keys take no memory");
        assert!(inflight.acquire(&a, Scope::Tier("free"), 0).is_none());
        assert_eq!(inflight.keys(), 0);
    }
}

//! The per-client response cache behind the `cached` band.
//!
//! * Keyed by (client key, method, path and query); an entry remembers its owner in full and a
//!   lookup compares it, so a hash collision can never hand one client another's answer.
//! * Only successful (2xx) answers to GET/HEAD, whose body is at most `max_entry_bytes`, and
//!   whose `Cache-Control` does not say `no-store` or `private`, are kept; never an answer that
//!   sets a cookie or says `Vary: *`, nor one to a request that carried `Cookie` or
//!   `Authorization` (it may be personal, and clients keyed by IP may share an address).
//! * Bounded in entries and bytes (oldest evicted first, per shard) and expired after `ttl`.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, SET_COOKIE, TRANSFER_ENCODING, VARY};
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::clock::Nanos;
use crate::key::Key;

const SHARDS: usize = 16;

/// Bounds of the response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Entries kept at most.
    pub max_entries: usize,
    /// Body bytes kept at most, over all entries.
    pub max_bytes: usize,
    /// The largest body kept.
    pub max_entry_bytes: usize,
    /// How long an entry may be replayed.
    pub ttl: Nanos,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 16 << 20,
            max_entry_bytes: 64 << 10,
            ttl: Nanos::from_secs(300),
        }
    }
}

/// One remembered answer.
#[derive(Debug)]
pub(crate) struct Cached {
    owner: Key,
    method: Method,
    target: Box<str>,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// When it was stored, by the limiter's clock.
    pub(crate) stored_at: Nanos,
}

impl Cached {
    fn is_for(&self, owner: &Key, method: &Method, target: &str) -> bool {
        self.owner == *owner && self.method == *method && &*self.target == target
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Arc<Cached>>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, digest: u64) {
        if let Some(old) = self.map.remove(&digest) {
            self.bytes -= old.body.len();
        }
    }
}

/// The response cache of one layer.
pub(crate) struct ResponseCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::quality::RandomState,
    limits: CacheLimits,
    /// The latest time the limiter reported, for expiry at lookup.
    latest: AtomicU64,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache").field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn target(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

impl ResponseCache {
    pub(crate) fn new(limits: CacheLimits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::quality::RandomState::default(),
            limits,
            latest: AtomicU64::new(0),
        }
    }

    fn digest(&self, owner: &Key, method: &Method, target: &str) -> u64 {
        self.hasher.hash_one((owner, method.as_str(), target))
    }

    fn shard(&self, digest: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(digest >> 32) as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes the limiter's clock.
    pub(crate) fn tick(&self, now: Nanos) {
        self.latest.fetch_max(now.as_nanos(), Ordering::Relaxed);
    }

    /// The caller's own fresh copy of this request's answer, if any.
    pub(crate) fn get(&self, owner: &Key, method: &Method, uri: &Uri) -> Option<Arc<Cached>> {
        let target = target(uri);
        let digest = self.digest(owner, method, target);
        let mut shard = self.shard(digest);
        let entry = shard.map.get(&digest)?.clone();
        if !entry.is_for(owner, method, target) {
            return None;
        }
        let latest = Nanos::new(self.latest.load(Ordering::Relaxed));
        if latest.saturating_sub(entry.stored_at) > self.limits.ttl {
            shard.remove(digest);
            return None;
        }
        Some(entry)
    }

    /// Whether an answer with these parts may be kept.
    pub(crate) fn admits(&self, method: &Method, status: StatusCode, headers: &HeaderMap) -> bool {
        let cacheable_method = *method == Method::GET || *method == Method::HEAD;
        let forbidden = headers.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',').any(|d| {
                    let d = d.trim();
                    d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private")
                })
            })
        });
        // A cookie being set, or an answer that varies on everything, is personal or
        // unpredictable: never replayed.
        let personal = headers.contains_key(SET_COOKIE)
            || headers
                .get_all(VARY)
                .iter()
                .any(|v| v.as_bytes().split(|&b| b == b',').any(|d| d.trim_ascii() == b"*"));
        let too_big = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|n| n > self.limits.max_entry_bytes);
        cacheable_method && status.is_success() && !forbidden && !personal && !too_big
    }

    pub(crate) fn max_entry_bytes(&self) -> usize {
        self.limits.max_entry_bytes
    }

    /// Keeps an answer for its owner.
    pub(crate) fn put(&self, pending: Pending, body: Bytes) {
        if body.len() > self.limits.max_entry_bytes {
            return;
        }
        let Pending { owner, method, uri, status, mut headers, stored_at, .. } = pending;
        for hop in [CONNECTION, TRANSFER_ENCODING, CONTENT_LENGTH] {
            headers.remove(hop);
        }
        let target = target(&uri);
        let digest = self.digest(&owner, &method, target);
        let entry =
            Arc::new(Cached { target: target.into(), owner, method, status, headers, body, stored_at });
        let per_shard_entries = self.limits.max_entries.div_ceil(SHARDS).max(1);
        let per_shard_bytes = self.limits.max_bytes.div_ceil(SHARDS).max(1);
        let mut shard = self.shard(digest);
        shard.remove(digest);
        shard.bytes += entry.body.len();
        shard.map.insert(digest, entry);
        shard.order.push_back(digest);
        while shard.map.len() > per_shard_entries || shard.bytes > per_shard_bytes {
            let Some(oldest) = shard.order.pop_front() else { break };
            shard.remove(oldest);
        }
        // Forget order entries of keys already replaced or removed.
        if shard.order.len() > 2 * shard.map.len() + 16 {
            let Shard { map, order, .. } = &mut *shard;
            order.retain(|d| map.contains_key(d));
        }
    }

    /// Entries kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().map.len()).sum()
    }

    /// Body bytes kept now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().bytes).sum()
    }
}

/// An answer on its way to the client, to be kept once its body is complete.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) cache: Arc<ResponseCache>,
    pub(crate) owner: Key,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) stored_at: Nanos,
}

impl Pending {
    /// Starts recording the answer `response` to the pending request, if it may be kept.
    /// Called before the limiter merges its own headers: a replay gets fresh ones.
    pub(crate) fn start<B>(mut self: Box<Self>, response: &http::Response<B>) -> Option<Box<Recorder>> {
        if !self.cache.admits(&self.method, response.status(), response.headers()) {
            return None;
        }
        self.status = response.status();
        self.headers = response.headers().clone();
        Some(Box::new(Recorder::new(*self)))
    }
}

/// Records a response body as it streams, and keeps it when it ends.
#[derive(Debug)]
pub(crate) struct Recorder {
    cache: Arc<ResponseCache>,
    pending: Option<Pending>,
    buffer: bytes::BytesMut,
}

impl Recorder {
    fn new(pending: Pending) -> Self {
        Self { cache: pending.cache.clone(), pending: Some(pending), buffer: bytes::BytesMut::new() }
    }

    /// A chunk went by.
    pub(crate) fn data(&mut self, chunk: &[u8]) {
        if self.pending.is_some() {
            if self.buffer.len() + chunk.len() > self.cache.max_entry_bytes() {
                self.abandon();
            } else {
                self.buffer.extend_from_slice(chunk);
            }
        }
    }

    /// Trailers or an error: not a plain answer to replay.
    pub(crate) fn abandon(&mut self) {
        self.pending = None;
        self.buffer = bytes::BytesMut::new();
    }

    /// The body ended: keep it.
    pub(crate) fn finish(&mut self) {
        if let Some(pending) = self.pending.take() {
            let body = std::mem::take(&mut self.buffer).freeze();
            self.cache.put(pending, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn pending(owner: &str, uri: &str, stored_at: u64) -> Pending {
        let stored_at = Nanos::new(stored_at);
        Pending {
            cache: Arc::new(ResponseCache::new(CacheLimits::default())),
            owner: Key::new(owner),
            method: Method::GET,
            uri: uri.parse().unwrap(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            stored_at,
        }
    }

    #[test]
    fn answers_are_never_shared_between_clients() {
        let cache = ResponseCache::new(CacheLimits::default());
        cache.put(pending("alice", "/s?q=1", 0), Bytes::from_static(b"alice's"));
        let uri: Uri = "/s?q=1".parse().unwrap();
        assert_eq!(cache.get(&Key::new("alice"), &Method::GET, &uri).unwrap().body, "alice's");
        assert!(cache.get(&Key::new("bob"), &Method::GET, &uri).is_none());
        assert!(cache.get(&Key::new("alice"), &Method::HEAD, &uri).is_none());
        assert!(cache.get(&Key::new("alice"), &Method::GET, &"/s?q=2".parse().unwrap()).is_none());
    }

    #[test]
    fn entries_expire() {
        let cache = ResponseCache::new(CacheLimits { ttl: Nanos::from_secs(10), ..CacheLimits::default() });
        cache.put(pending("a", "/x", 1_000), Bytes::from_static(b"x"));
        let uri: Uri = "/x".parse().unwrap();
        cache.tick(Nanos::new(1_000 + 10_000_000_000));
        assert!(cache.get(&Key::new("a"), &Method::GET, &uri).is_some());
        cache.tick(Nanos::new(1_000 + 10_000_000_001));
        assert!(cache.get(&Key::new("a"), &Method::GET, &uri).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn memory_stays_within_its_bounds() {
        let limits =
            CacheLimits { max_entries: 160, max_bytes: 16 * 1024, max_entry_bytes: 512, ttl: Nanos::MAX };
        let cache = ResponseCache::new(limits);
        for i in 0..10_000 {
            cache.put(pending(&format!("c{i}"), "/x", 0), Bytes::from(vec![b'x'; 300]));
            assert!(
                cache.len() <= 160 && cache.bytes() <= 16 * 1024,
                "{} entries {} bytes",
                cache.len(),
                cache.bytes()
            );
        }
        cache.put(pending("big", "/x", 0), Bytes::from(vec![b'x'; 513]));
        assert!(cache.get(&Key::new("big"), &Method::GET, &"/x".parse().unwrap()).is_none());
    }

    #[test]
    fn only_plain_successful_reads_are_kept() {
        let cache = ResponseCache::new(CacheLimits::default());
        let ok = HeaderMap::new();
        assert!(cache.admits(&Method::GET, StatusCode::OK, &ok));
        assert!(!cache.admits(&Method::POST, StatusCode::OK, &ok));
        assert!(!cache.admits(&Method::GET, StatusCode::NOT_FOUND, &ok));
        for value in ["no-store", "max-age=0, private", "PRIVATE"] {
            let mut h = HeaderMap::new();
            h.insert(CACHE_CONTROL, HeaderValue::from_static(value));
            assert!(!cache.admits(&Method::GET, StatusCode::OK, &h), "{value}");
        }
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("999999"));
        assert!(!cache.admits(&Method::GET, StatusCode::OK, &h));
        let mut h = HeaderMap::new();
        h.insert(SET_COOKIE, HeaderValue::from_static("session=abc"));
        assert!(!cache.admits(&Method::GET, StatusCode::OK, &h), "a cookie is personal");
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("accept, *"));
        assert!(!cache.admits(&Method::GET, StatusCode::OK, &h));
        h.insert(VARY, HeaderValue::from_static("accept-encoding"));
        assert!(cache.admits(&Method::GET, StatusCode::OK, &h));
    }
}

//! The per-client response cache behind the `cached` band.
//!
//! * Keyed by (client key, method, path and query); an entry remembers its owner in full and a
//!   lookup compares it, so a hash collision can never hand one client another's answer.
//! * `Vary` is honoured in full: the request headers an answer varies on (their values, as the
//!   request that got the answer sent them) are part of the entry, and a later request is
//!   replayed the copy only when it sends the same values. An answer that varies on `*`, or on
//!   a name that is not a header name, is not kept.
//! * Only complete `200 OK` answers to GET/HEAD are kept: never a `206` (a part of a body), a
//!   `204`, an answer whose body ended early or with trailers or an error, or whose body is not
//!   as long as its `Content-Length` says. Never a body over `max_entry_bytes`, never an answer
//!   whose `Cache-Control` says `no-store` or `private`, that sets a cookie, nor one to a request
//!   that carried `Cookie` or `Authorization`.
//! * Bounded in entries and in **bytes**: an entry's weight is every byte it holds (body, path
//!   and query, the owner's name, each header's name and value plus a fixed overhead per header,
//!   the captured `Vary` values, and a fixed overhead for the entry itself), and it holds only
//!   bytes of its own (header values are copied, never slices of a request's buffer). Oldest
//!   entries are evicted first, per shard.
//! * Expired after `ttl`, without waiting for a lookup: every insertion drops the expired
//!   entries at the front of its shard, and every degradable request sweeps one shard.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, SET_COOKIE, TRAILER, TRANSFER_ENCODING, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use crate::clock::Nanos;
use crate::key::Key;

const SHARDS: usize = 16;

/// The most request headers an answer may vary on and still be kept.
const MAX_VARY: usize = 16;

/// What a header costs beyond its name and value: the map's entry, index and links.
const HEADER_OVERHEAD: usize = 64;

/// What an entry costs beyond what it holds: the `Arc`, the map's slot and the queue's slot.
const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<Cached>() + 16 + std::mem::size_of::<(u64, Arc<Cached>)>() + 1 + 16;

/// Bounds of the response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Entries kept at most.
    pub max_entries: usize,
    /// Bytes kept at most, over all entries: everything an entry holds (body, path and query,
    /// headers, the owner's name, the `Vary` values it was stored under) and its overhead.
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

/// The request headers an answer varies on, with the values the request sent (in order;
/// empty when it sent none).
type Varied = Box<[(HeaderName, Box<[HeaderValue]>)]>;

/// One remembered answer.
#[derive(Debug)]
pub(crate) struct Cached {
    owner: Key,
    method: Method,
    target: Box<str>,
    vary: Varied,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// When it was stored, by the limiter's clock.
    pub(crate) stored_at: Nanos,
    /// Its place in its shard's queue (a replaced entry's old place is stale).
    seq: u64,
    /// Every byte it holds, with its overhead.
    weight: usize,
}

impl Cached {
    fn is_for(&self, owner: &Key, method: &Method, target: &str, request: &HeaderMap) -> bool {
        self.owner == *owner
            && self.method == *method
            && &*self.target == target
            && self.vary.iter().all(|(name, values)| request.get_all(name).iter().eq(values.iter()))
    }

    fn weigh(&mut self) {
        let header =
            |name: &HeaderName, value: &HeaderValue| name.as_str().len() + value.len() + HEADER_OVERHEAD;
        let headers: usize = self.headers.iter().map(|(n, v)| header(n, v)).sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(name, values)| {
                name.as_str().len() + HEADER_OVERHEAD + values.iter().map(|v| v.len() + 32).sum::<usize>()
            })
            .sum();
        let owner = self.owner.name().map_or(0, str::len);
        self.weight = ENTRY_OVERHEAD + self.body.len() + self.target.len() + owner + headers + vary;
    }

    fn expired(&self, now: Nanos, ttl: Nanos) -> bool {
        now.saturating_sub(self.stored_at) > ttl
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Arc<Cached>>,
    /// Insertion order: (digest, seq) of each entry, oldest first; stale places are skipped.
    order: VecDeque<(u64, u64)>,
    bytes: usize,
    next_seq: u64,
}

impl Shard {
    fn remove(&mut self, digest: u64) {
        if let Some(old) = self.map.remove(&digest) {
            self.bytes -= old.weight;
        }
    }

    /// Drops the oldest entry (or a stale place in the queue); false when the queue is empty.
    fn pop_oldest(&mut self) -> bool {
        let Some((digest, seq)) = self.order.pop_front() else { return false };
        if self.map.get(&digest).is_some_and(|e| e.seq == seq) {
            self.remove(digest);
        }
        true
    }

    /// Drops the expired entries at the front of the queue.
    fn expire(&mut self, now: Nanos, ttl: Nanos) {
        while let Some(&(digest, seq)) = self.order.front() {
            match self.map.get(&digest) {
                Some(entry) if entry.seq == seq && !entry.expired(now, ttl) => break,
                _ => {
                    self.pop_oldest();
                }
            }
        }
    }
}

/// The response cache of one layer.
pub(crate) struct ResponseCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::quality::RandomState,
    limits: CacheLimits,
    /// The latest time the limiter reported, for expiry.
    latest: AtomicU64,
    /// The next shard a tick sweeps.
    cursor: AtomicUsize,
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
            cursor: AtomicUsize::new(0),
        }
    }

    fn digest(&self, owner: &Key, method: &Method, target: &str) -> u64 {
        self.hasher.hash_one((owner, method.as_str(), target))
    }

    fn shard(&self, digest: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(digest >> 32) as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn per_shard_entries(&self) -> usize {
        self.limits.max_entries.div_ceil(SHARDS).max(1)
    }

    fn per_shard_bytes(&self) -> usize {
        self.limits.max_bytes.div_ceil(SHARDS).max(1)
    }

    /// Notes the limiter's clock, and drops the expired entries of one shard (in turn), so
    /// that entries nobody asks for again still go.
    pub(crate) fn tick(&self, now: Nanos) {
        let latest = Nanos::new(self.latest.fetch_max(now.as_nanos(), Ordering::Relaxed).max(now.as_nanos()));
        let next = self.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        if let Ok(mut shard) = self.shards[next].try_lock() {
            shard.expire(latest, self.limits.ttl);
        }
    }

    /// The caller's own fresh copy of this request's answer, if any: same owner, method, path
    /// and query, and the same values of every header the answer varies on.
    pub(crate) fn get(
        &self,
        owner: &Key,
        method: &Method,
        uri: &Uri,
        request: &HeaderMap,
    ) -> Option<Arc<Cached>> {
        let target = target(uri);
        let digest = self.digest(owner, method, target);
        let mut shard = self.shard(digest);
        let entry = shard.map.get(&digest)?.clone();
        if !entry.is_for(owner, method, target, request) {
            return None;
        }
        let latest = Nanos::new(self.latest.load(Ordering::Relaxed));
        if entry.expired(latest, self.limits.ttl) {
            shard.remove(digest);
            return None;
        }
        Some(entry)
    }

    /// Whether an answer with these parts may be kept (its body and `Vary` are checked later).
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
        // A cookie being set is personal; trailers are not a plain answer to replay.
        let personal = headers.contains_key(SET_COOKIE) || headers.contains_key(TRAILER);
        let too_big = content_length(headers).is_some_and(|n| n > self.limits.max_entry_bytes);
        // Only a complete answer: a 206 is a part of a body, a 203 or 204 is not the resource.
        cacheable_method && status == StatusCode::OK && !forbidden && !personal && !too_big
    }

    pub(crate) fn max_entry_bytes(&self) -> usize {
        self.limits.max_entry_bytes
    }

    /// Keeps an answer for its owner.
    pub(crate) fn put(&self, pending: Pending, vary: Varied, body: Bytes) {
        if body.len() > self.limits.max_entry_bytes {
            return;
        }
        let Pending { owner, method, uri, status, headers, stored_at, .. } = pending;
        // Copies of the handler's headers, so the entry holds no slice of a larger buffer.
        let mut own = HeaderMap::with_capacity(headers.len());
        for (name, value) in &headers {
            if name == CONNECTION || name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
                continue;
            }
            let copy = HeaderValue::from_bytes(value.as_bytes()).expect("a header value stays valid");
            own.append(name.clone(), copy);
        }
        let target = target(&uri);
        let digest = self.digest(&owner, &method, target);
        let mut entry = Cached {
            target: target.into(),
            owner,
            method,
            vary,
            status,
            headers: own,
            body,
            stored_at,
            seq: 0,
            weight: 0,
        };
        entry.weigh();
        if entry.weight > self.per_shard_bytes() {
            return;
        }
        let now = Nanos::new(self.latest.load(Ordering::Relaxed)).max(stored_at);
        let (max_entries, max_bytes) = (self.per_shard_entries(), self.per_shard_bytes());
        let mut shard = self.shard(digest);
        shard.expire(now, self.limits.ttl);
        shard.remove(digest);
        entry.seq = shard.next_seq;
        shard.next_seq += 1;
        shard.bytes += entry.weight;
        shard.order.push_back((digest, entry.seq));
        shard.map.insert(digest, Arc::new(entry));
        while shard.map.len() > max_entries || shard.bytes > max_bytes {
            if !shard.pop_oldest() {
                break;
            }
        }
        // Forget the places of entries already replaced or removed.
        if shard.order.len() > 2 * shard.map.len() + 16 {
            let Shard { map, order, .. } = &mut *shard;
            order.retain(|(d, seq)| map.get(d).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Entries kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().map.len()).sum()
    }

    /// Bytes kept now, by the cache's own count.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().bytes).sum()
    }

    /// What the entries hold, counted from outside the cache's own bookkeeping: body, path and
    /// query, header names and values.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.shards
            .iter()
            .flat_map(|s| s.lock().unwrap().map.values().cloned().collect::<Vec<_>>())
            .map(|e| {
                e.body.len()
                    + e.target.len()
                    + e.headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum::<usize>()
                    + e.vary.iter().flat_map(|(_, v)| v.iter()).map(HeaderValue::len).sum::<usize>()
            })
            .sum()
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
}

/// The request headers an answer with `response` headers varies on, with the values `request`
/// sent (copied): `None` when the answer may not be kept (`Vary: *`, a name that is not a
/// header name, or more than a few names).
fn varied(request: &HeaderMap, response: &HeaderMap) -> Option<Varied> {
    let mut varied: Vec<(HeaderName, Box<[HeaderValue]>)> = Vec::new();
    for line in response.get_all(VARY) {
        for name in line.as_bytes().split(|&b| b == b',') {
            let name = name.trim_ascii();
            if name.is_empty() {
                continue;
            }
            if name == b"*" {
                return None; // varies on everything: never replayable
            }
            let name = HeaderName::from_bytes(name).ok()?;
            if varied.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if varied.len() == MAX_VARY {
                return None;
            }
            let values = request
                .get_all(&name)
                .iter()
                .map(|v| HeaderValue::from_bytes(v.as_bytes()).expect("a header value stays valid"))
                .collect();
            varied.push((name, values));
        }
    }
    Some(varied.into())
}

/// An answer on its way to the client, to be kept once its body is complete.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) cache: Arc<ResponseCache>,
    pub(crate) owner: Key,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    /// The request's headers, for the ones the answer turns out to vary on.
    pub(crate) request: HeaderMap,
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
        let vary = varied(&self.request, response.headers())?;
        self.request = HeaderMap::new();
        self.status = response.status();
        self.headers = response.headers().clone();
        // A HEAD answer has no body, whatever its Content-Length says.
        let expected = (self.method != Method::HEAD).then(|| content_length(response.headers())).flatten();
        Some(Box::new(Recorder::new(*self, vary, expected)))
    }
}

/// Records a response body as it streams, and keeps it when it ends complete.
#[derive(Debug)]
pub(crate) struct Recorder {
    cache: Arc<ResponseCache>,
    pending: Option<(Pending, Varied)>,
    /// The body's length as its `Content-Length` announced it.
    expected: Option<usize>,
    buffer: bytes::BytesMut,
}

impl Recorder {
    fn new(pending: Pending, vary: Varied, expected: Option<usize>) -> Self {
        // A body of known length is kept in a buffer of exactly its size.
        let buffer =
            bytes::BytesMut::with_capacity(expected.unwrap_or(0).min(pending.cache.max_entry_bytes()));
        Self { cache: pending.cache.clone(), pending: Some((pending, vary)), expected, buffer }
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

    /// The body ended: keep it, when it is all there.
    pub(crate) fn finish(&mut self) {
        if let Some((pending, vary)) = self.pending.take() {
            let buffer = std::mem::take(&mut self.buffer);
            // The entry holds exactly its bytes, not a buffer grown by doubling.
            let body = if buffer.capacity() == buffer.len() {
                buffer.freeze()
            } else {
                Bytes::copy_from_slice(&buffer)
            };
            if self.expected.is_none_or(|n| n == body.len()) {
                self.cache.put(pending, vary, body);
            }
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
            request: HeaderMap::new(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            stored_at,
        }
    }

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::try_from(*name).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// Records `response` (status and headers) to a request with `request` headers through the
    /// same path the layer uses: `Pending::start`, the body's frames, then `finish`.
    fn record(
        cache: &Arc<ResponseCache>,
        request: HeaderMap,
        response: http::Response<()>,
        body: &[&[u8]],
    ) -> bool {
        let pending = Box::new(Pending {
            cache: cache.clone(),
            owner: Key::new("alice"),
            method: Method::GET,
            uri: "/doc".parse().unwrap(),
            request,
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            stored_at: Nanos::ZERO,
        });
        let Some(mut recorder) = pending.start(&response) else { return false };
        for chunk in body {
            recorder.data(chunk);
        }
        recorder.finish();
        true
    }

    fn lookup(cache: &ResponseCache, request: &HeaderMap) -> Option<Arc<Cached>> {
        cache.get(&Key::new("alice"), &Method::GET, &"/doc".parse().unwrap(), request)
    }

    #[test]
    fn answers_are_never_shared_between_clients() {
        let cache = ResponseCache::new(CacheLimits::default());
        cache.put(pending("alice", "/s?q=1", 0), Varied::default(), Bytes::from_static(b"alice's"));
        let uri: Uri = "/s?q=1".parse().unwrap();
        assert_eq!(cache.get(&Key::new("alice"), &Method::GET, &uri, &none()).unwrap().body, "alice's");
        assert!(cache.get(&Key::new("bob"), &Method::GET, &uri, &none()).is_none());
        assert!(cache.get(&Key::new("alice"), &Method::HEAD, &uri, &none()).is_none());
        assert!(cache.get(&Key::new("alice"), &Method::GET, &"/s?q=2".parse().unwrap(), &none()).is_none());
    }

    /// Issue 11, finding 2: an answer with `Vary: X-API-Key` was replayed to a request with
    /// another key. The varied headers are now part of the entry.
    #[test]
    fn a_copy_is_replayed_only_to_requests_with_the_same_varied_headers() {
        let cache = Arc::new(ResponseCache::new(CacheLimits::default()));
        let response = http::Response::builder().header(VARY, "x-api-key, Accept-Language").body(()).unwrap();
        let alice = headers(&[("x-api-key", "alice-secret"), ("accept-language", "fr")]);
        assert!(record(&cache, alice.clone(), response, &[b"alice's private answer"]));
        assert_eq!(lookup(&cache, &alice).unwrap().body, "alice's private answer");
        for other in [
            headers(&[("x-api-key", "bob-secret"), ("accept-language", "fr")]),
            headers(&[("x-api-key", "alice-secret"), ("accept-language", "en")]),
            headers(&[("x-api-key", "alice-secret")]),
            headers(&[("x-api-key", "alice-secret"), ("accept-language", "fr"), ("accept-language", "en")]),
            none(),
        ] {
            assert!(lookup(&cache, &other).is_none(), "{other:?}");
        }
        // Headers the answer does not vary on do not matter.
        let mut same = alice.clone();
        same.insert("user-agent", HeaderValue::from_static("curl"));
        assert!(lookup(&cache, &same).is_some());
        // `Vary: *`, or a name that is not a header name, is never kept.
        for vary in ["*", "accept, *", "bad name"] {
            let cache = Arc::new(ResponseCache::new(CacheLimits::default()));
            let response = http::Response::builder().header(VARY, vary).body(()).unwrap();
            assert!(!record(&cache, alice.clone(), response, &[b"x"]), "{vary}");
            assert_eq!(cache.len(), 0, "{vary}");
        }
    }

    /// Issue 11, finding 2: a `206` to a `Range` request was kept and replayed to a later
    /// plain GET. Only complete `200` answers are kept now.
    #[test]
    fn only_complete_200_answers_are_kept() {
        let statuses =
            [StatusCode::PARTIAL_CONTENT, StatusCode::NO_CONTENT, StatusCode::NON_AUTHORITATIVE_INFORMATION];
        for status in statuses {
            let cache = Arc::new(ResponseCache::new(CacheLimits::default()));
            let response = http::Response::builder().status(status).body(()).unwrap();
            assert!(!record(&cache, none(), response, &[b"part"]), "{status}");
            assert_eq!(cache.len(), 0);
        }
        // A body shorter than its Content-Length ended early: not complete.
        let cache = Arc::new(ResponseCache::new(CacheLimits::default()));
        let response = http::Response::builder().header(CONTENT_LENGTH, "10").body(()).unwrap();
        assert!(record(&cache, none(), response, &[b"12345"]));
        assert_eq!(cache.len(), 0, "5 of 10 bytes");
        let response = http::Response::builder().header(CONTENT_LENGTH, "10").body(()).unwrap();
        assert!(record(&cache, none(), response, &[b"12345", b"67890"]));
        assert_eq!(lookup(&cache, &none()).unwrap().body, "1234567890");
    }

    #[test]
    fn entries_expire() {
        let cache = ResponseCache::new(CacheLimits { ttl: Nanos::from_secs(10), ..CacheLimits::default() });
        cache.put(pending("a", "/x", 1_000), Varied::default(), Bytes::from_static(b"x"));
        let uri: Uri = "/x".parse().unwrap();
        cache.tick(Nanos::new(1_000 + 10_000_000_000));
        assert!(cache.get(&Key::new("a"), &Method::GET, &uri, &none()).is_some());
        cache.tick(Nanos::new(1_000 + 10_000_000_001));
        assert!(cache.get(&Key::new("a"), &Method::GET, &uri, &none()).is_none());
        assert_eq!(cache.len(), 0);
    }

    /// Issue 11, finding 4: entries expired only when looked up again, so answers nobody asked
    /// for twice stayed until evicted.
    #[test]
    fn expired_entries_go_without_a_lookup() {
        let ttl = Nanos::from_secs(10);
        let cache = ResponseCache::new(CacheLimits { ttl, ..CacheLimits::default() });
        for i in 0..1_000u64 {
            cache.put(
                pending(&format!("c{i}"), &format!("/x?{i}"), i),
                Varied::default(),
                Bytes::from_static(b"x"),
            );
        }
        assert_eq!(cache.len(), 1_000);
        // Later, other requests go by: the ticks sweep every shard in turn.
        let later = Nanos::from_secs(11) + Nanos::new(1_000);
        for _ in 0..SHARDS {
            cache.tick(later);
        }
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        // An insertion also drops what has expired before it in its shard.
        for i in 0..100u64 {
            cache.put(pending(&format!("d{i}"), "/y", i), Varied::default(), Bytes::from_static(b"y"));
        }
        cache.tick(Nanos::ZERO); // notes no later time
        let much_later = Nanos::from_secs(100);
        cache.put(pending("last", "/z", much_later.as_nanos()), Varied::default(), Bytes::from_static(b"z"));
        for i in 0..100u64 {
            let uri: Uri = "/y".parse().unwrap();
            let _ = cache.get(&Key::new(format!("d{i}")), &Method::GET, &uri, &none());
        }
        assert_eq!(cache.len(), 1, "only the fresh entry is left");
    }

    #[test]
    fn memory_stays_within_its_bounds() {
        let limits =
            CacheLimits { max_entries: 160, max_bytes: 64 * 1024, max_entry_bytes: 512, ttl: Nanos::MAX };
        let cache = ResponseCache::new(limits);
        for i in 0..10_000 {
            cache.put(pending(&format!("c{i}"), "/x", 0), Varied::default(), Bytes::from(vec![b'x'; 300]));
            assert!(
                cache.len() <= 160 && cache.bytes() <= 64 * 1024,
                "{} entries {} bytes",
                cache.len(),
                cache.bytes()
            );
        }
        cache.put(pending("big", "/x", 0), Varied::default(), Bytes::from(vec![b'x'; 513]));
        assert!(cache.get(&Key::new("big"), &Method::GET, &"/x".parse().unwrap(), &none()).is_none());
    }

    /// Issue 11, finding 4: only body bytes were counted, so 10 500 answers to GETs with 60 KB
    /// query strings grew the process by 575 MB under a "16 MiB" cache. Every byte counts now:
    /// a thousand of them (60 MB) are held to the limit.
    #[test]
    fn every_byte_an_entry_holds_counts() {
        let limits = CacheLimits::default();
        let cache = ResponseCache::new(limits);
        let query = "q".repeat(60 << 10);
        let mut fat = pending("x", "/", 0);
        fat.headers.insert("x-padding", HeaderValue::from_str(&"p".repeat(4 << 10)).unwrap());
        for i in 0..1_000 {
            let mut p = pending(&format!("c{i}"), &format!("/s?{query}{i}"), 0);
            p.headers = fat.headers.clone();
            cache.put(p, Varied::default(), Bytes::from_static(b"{}"));
        }
        assert!(cache.held() <= limits.max_bytes, "{} bytes held", cache.held());
        assert!(cache.bytes() <= limits.max_bytes && cache.bytes() >= cache.held());
        assert!(cache.len() <= limits.max_bytes / (64 << 10), "{} entries of 64 KB", cache.len());
    }

    #[test]
    fn only_plain_successful_reads_are_kept() {
        let cache = ResponseCache::new(CacheLimits::default());
        let ok = HeaderMap::new();
        assert!(cache.admits(&Method::GET, StatusCode::OK, &ok));
        assert!(!cache.admits(&Method::POST, StatusCode::OK, &ok));
        assert!(!cache.admits(&Method::GET, StatusCode::NOT_FOUND, &ok));
        assert!(!cache.admits(&Method::GET, StatusCode::PARTIAL_CONTENT, &ok));
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
        assert!(varied(&none(), &headers(&[("vary", "accept, *")])).is_none());
        assert_eq!(varied(&none(), &headers(&[("vary", "accept-encoding")])).unwrap().len(), 1);
    }
}

//! One request's degradation, from plan to answer: which band, the replay of a cached copy, and
//! the recording of a full answer for later.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION, COOKIE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};

use super::cache::{Cached, Pending, ResponseCache};
use crate::clock::Nanos;
use crate::key::Key;
use crate::policy::Bands;
use crate::store::{Charge, Decision};

/// What degradation may do for one request, settled before the store is asked.
///
/// The band rule lives here and only here. A request of a degradable route costs its route's
/// cost, or 1 token when the fraction of the burst left before the charge is below
/// [`threshold`](Self::threshold): `minimal_below`, or `cached_below` when the caller has a
/// cached copy to replay. The store applies that [`Charge`] atomically (it alone knows the
/// fraction); [`choose`](Self::choose) then reads the same fraction from its decision:
/// below `minimal_below` the handler answers minimally, below the threshold the copy is
/// replayed, otherwise the answer is full (and, for a read with no credentials of its own,
/// recorded for later).
///
/// Only a client with an identity of its own (an API key, an auth layer's [`Client`]) has a
/// cache: a plan made without one never replays or records, so its bands are full and minimal.
///
/// [`Client`]: crate::key::Client
#[derive(Debug)]
pub(crate) struct BandPlan {
    bands: Bands,
    cache: Option<Arc<ResponseCache>>,
    /// The caller's own fresh copy of this answer.
    copy: Option<Arc<Cached>>,
    /// A full answer to this request may be kept: a read without credentials of its own, by a
    /// client with a cache.
    recordable: bool,
}

/// The [`Band`](super::Band) a decision put the request in, with what that band needs.
#[derive(Debug)]
pub(crate) enum Chosen {
    /// The handler answers in full; keep its answer when it may be replayed later.
    Full(Option<Box<Pending>>),
    /// Replay this copy instead of calling the handler.
    Cached(Arc<Cached>),
    /// The handler answers with essential fields only.
    Minimal,
}

/// The request a full answer would be kept for: its owner, method, target and headers (for
/// the ones the answer turns out to vary on).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked<'a> {
    pub(crate) owner: &'a Key,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
}

impl BandPlan {
    /// The plan of a request to a degradable route, by `key`, with the client's `cache` (none
    /// for a client without an identity of its own).
    pub(crate) fn new(bands: Bands, cache: Option<&Arc<ResponseCache>>, key: &Key, parts: &Parts) -> Self {
        let Some(cache) = cache else {
            return Self { bands, cache: None, copy: None, recordable: false };
        };
        let copy = cache.get(key, &parts.method, &parts.uri, &parts.headers);
        // The privacy rule: only reads are replayed, and a request with credentials of its own
        // may get a personal answer, never kept.
        let read = matches!(parts.method, Method::GET | Method::HEAD);
        let personal = parts.headers.contains_key(COOKIE) || parts.headers.contains_key(AUTHORIZATION);
        Self { bands, cache: Some(cache.clone()), copy, recordable: read && !personal }
    }

    /// Whether a full answer may be kept (its request's headers are needed then).
    pub(crate) fn recordable(&self) -> bool {
        self.recordable
    }

    /// The fraction of the burst below which the request costs 1 token.
    fn threshold(&self) -> f64 {
        if self.copy.is_some() {
            self.bands.cached_below
        } else {
            self.bands.minimal_below
        }
    }

    /// What the store takes for a request of `cost`.
    pub(crate) fn charge(&self, cost: u64) -> Charge {
        Charge::new(cost).reduced(self.threshold(), 1)
    }

    /// The band of an admitted request (`asked`), from the fraction the store saw before
    /// charging.
    pub(crate) fn choose(self, decision: &Decision, asked: Asked<'_>) -> Chosen {
        if let Some(cache) = &self.cache {
            cache.tick(decision.now());
        }
        let fraction = decision.fraction_before();
        if fraction < self.bands.minimal_below {
            return Chosen::Minimal;
        }
        match self.copy {
            Some(copy) if fraction < self.bands.cached_below => Chosen::Cached(copy),
            _ => Chosen::Full(self.cache.filter(|_| self.recordable).map(|cache| {
                // Whether it is kept is decided when its status, headers and size are known.
                Box::new(Pending {
                    cache,
                    owner: asked.owner.clone(),
                    method: asked.method.clone(),
                    uri: asked.uri.clone(),
                    request: asked.headers.clone(),
                    status: StatusCode::OK,
                    headers: HeaderMap::new(),
                    stored_at: decision.now(),
                })
            })),
        }
    }
}

/// The caller's cached answer, replayed at `now` for a request of `method`, with its `Age`
/// (the caller merges fresh rate-limit headers).
pub(crate) fn replay(copy: &Cached, method: &Method, now: Nanos) -> Response<Bytes> {
    let body = if *method == Method::HEAD { Bytes::new() } else { copy.body.clone() };
    let mut response = Response::new(body);
    *response.status_mut() = copy.status;
    *response.headers_mut() = copy.headers.clone();
    let age = now.saturating_sub(copy.stored_at).as_secs();
    response.headers_mut().insert(AGE, HeaderValue::from(age));
    response
}

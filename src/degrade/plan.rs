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
#[derive(Debug)]
pub(crate) struct BandPlan {
    bands: Bands,
    cache: Arc<ResponseCache>,
    /// The caller's own fresh copy of this answer.
    copy: Option<Arc<Cached>>,
    /// A full answer to this request may be kept: a read without credentials of its own.
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

impl BandPlan {
    /// The plan of a request to a degradable route, by `key`.
    pub(crate) fn new(bands: Bands, cache: &Arc<ResponseCache>, key: &Key, parts: &Parts) -> Self {
        let copy = cache.get(key, &parts.method, &parts.uri);
        // The privacy rule: only reads are replayed, and a request with credentials of its own
        // may get a personal answer, never kept (clients keyed by IP may share an address).
        let read = matches!(parts.method, Method::GET | Method::HEAD);
        let personal = parts.headers.contains_key(COOKIE) || parts.headers.contains_key(AUTHORIZATION);
        Self { bands, cache: cache.clone(), copy, recordable: read && !personal }
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

    /// The band of an admitted request by `owner` for `method` and `uri`, from the fraction
    /// the store saw before charging.
    pub(crate) fn choose(self, decision: &Decision, owner: &Key, method: &Method, uri: &Uri) -> Chosen {
        self.cache.tick(decision.now());
        let fraction = decision.fraction_before();
        if fraction < self.bands.minimal_below {
            return Chosen::Minimal;
        }
        match self.copy {
            Some(copy) if fraction < self.bands.cached_below => Chosen::Cached(copy),
            _ => Chosen::Full(self.recordable.then(|| {
                // Whether it is kept is decided when its status, headers and size are known.
                Box::new(Pending {
                    cache: self.cache,
                    owner: owner.clone(),
                    method: method.clone(),
                    uri: uri.clone(),
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

//! The part of the limiter every clone shares: limits, store, answers. Not generic, so the
//! response future does not carry the extractor's type.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};

use super::concurrency::{InFlight, Permits, Scope};
use super::future::{Next, OwnResponse};
use crate::answer::{
    retry_after_secs, HeaderMode, Problem, RateLimitHeaders, PROBLEM_CONCURRENCY, PROBLEM_OVER_CAPACITY,
    PROBLEM_RATE_LIMITED, PROBLEM_UNAVAILABLE,
};
use crate::clock::{Clock, Nanos, SystemClock};
use crate::degrade::Band;
use crate::degrade::{Cached, Pending, ResponseCache};
use crate::key::{Key, KeyExtractor};
use crate::observe::{Event, Observer, Outcome as Seen};
use crate::policy::{Limits, RouteRule, Tier};
use crate::store::{Charge, Decision, OnError, Outcome, Store, StoreError};

static PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

pub(crate) struct Core {
    pub(crate) limits: Limits,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) headers: HeaderMode,
    pub(crate) on_error: OnError,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    pub(crate) cache: Option<Arc<ResponseCache>>,
    pub(crate) inflight: Arc<InFlight>,
    /// Reads the time for the layer's own needs (the fault log's throttle).
    pub(crate) clock: Arc<dyn Clock>,
    unidentified: Key,
    warned_unidentified: AtomicBool,
    last_fault_log: AtomicU64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("tiers", &self.limits.tiers().len())
            .field("headers", &self.headers)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// What the limiter settled on before asking the store.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) tier: usize,
    pub(crate) cost: u64,
    /// The route is degradable (and bands are configured).
    pub(crate) degrade: bool,
    /// The caller's own cached copy of this answer, when the route is degradable.
    pub(crate) cached: Option<Arc<Cached>>,
    /// Concurrency slots held until the response is sent.
    pub(crate) permits: Permits,
}

/// What travels with a forwarded request until its response is complete.
#[derive(Debug, Default)]
pub(crate) struct After {
    pub(crate) headers: Option<RateLimitHeaders>,
    pub(crate) permits: Permits,
    /// Keep the answer in the cache if it is cacheable.
    pub(crate) record: Option<Box<Pending>>,
}

fn limits_cache(limits: &Limits) -> Option<Arc<ResponseCache>> {
    limits.bands.map(|_| Arc::new(ResponseCache::new(limits.cache)))
}

impl Core {
    pub(crate) fn new(limits: Limits, store: Arc<dyn Store>, headers: HeaderMode, on_error: OnError) -> Self {
        let cache = limits_cache(&limits);
        Self {
            limits,
            store,
            headers,
            on_error,
            observer: None,
            cache,
            inflight: Arc::new(InFlight::new()),
            clock: Arc::new(SystemClock::new()),
            unidentified: Key::new("unidentified"),
            warned_unidentified: AtomicBool::new(false),
            last_fault_log: AtomicU64::new(0),
        }
    }

    /// The route's rule, from axum's matched route template or else the URI path.
    #[inline]
    pub(crate) fn route(&self, parts: &Parts) -> RouteRule {
        self.limits.routes.lookup(&parts.method, route_path(parts))
    }

    /// Who is asking, and in which tier.
    #[inline]
    pub(crate) fn identify<K: KeyExtractor + ?Sized>(&self, extractor: &K, parts: &Parts) -> (Key, &Tier) {
        match extractor.extract(parts) {
            Some(client) => {
                let (key, tier) = client.into_parts();
                let tier =
                    tier.and_then(|name| self.limits.tier(&name)).unwrap_or(self.limits.default_tier());
                (key, tier)
            }
            None => {
                if !self.warned_unidentified.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "tollgate: a request matched no key extractor (no client address: serve with \
                         into_make_service_with_connect_info?); such requests share one bucket"
                    );
                }
                (self.unidentified.clone(), self.limits.default_tier())
            }
        }
    }

    /// Settles cost, band inputs and concurrency before the store is asked; `Err` is an answer
    /// given at once (too many requests in flight).
    #[inline]
    pub(crate) fn prepare(
        &self,
        rule: RouteRule,
        key: &Key,
        tier: &Tier,
        parts: &Parts,
    ) -> Result<(Prepared, Charge), Box<OwnResponse>> {
        let mut permits = Permits::default();
        if let Some(limit) = tier.concurrency() {
            permits.0[0] = Some(
                self.inflight
                    .acquire(key, Scope::Tier(tier.index()), limit)
                    .ok_or_else(|| Box::new(too_many_in_flight(tier, limit)))?,
            );
        }
        if rule.concurrency > 0 {
            let scope = Scope::Route(route_path(parts));
            permits.0[1] = Some(
                self.inflight
                    .acquire(key, scope, rule.concurrency)
                    .ok_or_else(|| Box::new(too_many_in_flight(tier, rule.concurrency)))?,
            );
        }
        let cost = u64::from(rule.cost);
        let (charge, degrade, cached) = match (self.limits.bands, &self.cache) {
            (Some(bands), Some(cache)) if rule.degrade => {
                let cached = cache.get(key, &parts.method, &parts.uri);
                let below = if cached.is_some() { bands.cached_below } else { bands.minimal_below };
                (Charge::new(cost).reduced(below, 1), true, cached)
            }
            _ => (Charge::new(cost), false, None),
        };
        Ok((Prepared { tier: tier.index(), cost, degrade, cached, permits }, charge))
    }

    /// Turns the store's answer into what happens next.
    pub(crate) fn decided<B>(
        &self,
        prepared: Prepared,
        key: &Key,
        result: Result<Decision, StoreError>,
        mut req: Request<B>,
    ) -> Next<B> {
        let tier = &self.limits.tiers[prepared.tier];
        let decision = match result {
            Ok(decision) => decision,
            Err(error) => {
                self.observe(&req, key, tier, prepared.cost, Seen::StoreFault(&error));
                return self.fault(&error, req, prepared.permits);
            }
        };
        let mut headers = RateLimitHeaders::new(self.headers, tier, &decision);
        match decision.outcome() {
            Outcome::Admitted => {
                let mut after = After { headers: None, permits: prepared.permits, record: None };
                let band = match (prepared.degrade, self.limits.bands, &self.cache) {
                    (true, Some(bands), Some(cache)) => {
                        cache.tick(decision.now());
                        let fraction = decision.fraction_before();
                        if fraction < bands.minimal_below {
                            Band::Minimal
                        } else if fraction < bands.cached_below && prepared.cached.is_some() {
                            Band::Cached
                        } else {
                            // A full answer to a read is recorded; whether it is kept is
                            // decided when its status, headers and size are known.
                            // A request with credentials of its own may get a personal answer:
                            // never kept (clients keyed by IP may share an address).
                            let personal = req.headers().contains_key(http::header::COOKIE)
                                || req.headers().contains_key(http::header::AUTHORIZATION);
                            if !personal && matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
                                after.record = Some(Box::new(Pending {
                                    cache: cache.clone(),
                                    owner: key.clone(),
                                    method: req.method().clone(),
                                    uri: req.uri().clone(),
                                    status: StatusCode::OK,
                                    headers: http::HeaderMap::new(),
                                    stored_at: decision.now(),
                                }));
                            }
                            Band::Full
                        }
                    }
                    _ => Band::Full,
                };
                match band {
                    Band::Full => self.observe(&req, key, tier, prepared.cost, Seen::Admitted(&decision)),
                    band => self.observe(&req, key, tier, prepared.cost, Seen::Degraded(&decision, band)),
                }
                match band {
                    Band::Cached => {
                        headers.degraded("cached");
                        let copy = prepared.cached.expect("the cached band has a copy");
                        Next::Answer(replay(&copy, req.method(), decision.now(), headers))
                    }
                    Band::Minimal => {
                        headers.degraded("minimal");
                        req.extensions_mut().insert(Band::Minimal);
                        after.headers = Some(headers);
                        Next::Forward(req, after)
                    }
                    Band::Full => {
                        after.headers = Some(headers);
                        Next::Forward(req, after)
                    }
                }
            }
            Outcome::Rejected => {
                self.observe(&req, key, tier, prepared.cost, Seen::Rejected(&decision));
                Next::Answer(too_many_requests(tier, &decision, headers))
            }
            Outcome::Exceeds => {
                self.observe(&req, key, tier, prepared.cost, Seen::Exceeds(&decision));
                Next::Answer(over_capacity(tier, &decision, prepared.cost, headers))
            }
        }
    }

    #[inline]
    fn observe<B>(&self, req: &Request<B>, key: &Key, tier: &Tier, cost: u64, outcome: Seen<'_>) {
        if let Some(observer) = &self.observer {
            let route = route_path_of(req.extensions(), req.uri());
            observer.on_event(&Event { key, tier, method: req.method(), route, cost, outcome });
        }
    }

    fn fault<B>(&self, error: &StoreError, req: Request<B>, permits: Permits) -> Next<B> {
        // At most one warning a second, whatever the rate of faults.
        let second = self.clock.now().as_secs();
        if self.last_fault_log.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(%error, on_error = ?self.on_error, "tollgate: rate-limit store fault");
        }
        match self.on_error {
            OnError::Deny => Next::Answer(unavailable()),
            OnError::Allow | OnError::Local => Next::Forward(req, After { permits, ..After::default() }),
        }
    }
}

/// The route template axum matched, else the request path.
#[inline]
pub(crate) fn route_path(parts: &Parts) -> &str {
    route_path_of(&parts.extensions, &parts.uri)
}

#[inline]
fn route_path_of<'a>(extensions: &'a http::Extensions, uri: &'a http::Uri) -> &'a str {
    #[cfg(feature = "axum")]
    if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    let _ = extensions;
    uri.path()
}

fn problem_response(status: StatusCode, body: Bytes, headers: RateLimitHeaders) -> OwnResponse {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON.clone());
    headers.apply(response.headers_mut());
    response
}

fn too_many_requests(tier: &Tier, decision: &Decision, headers: RateLimitHeaders) -> OwnResponse {
    let violated = decision.headline();
    let policy = tier.policies().get(usize::from(violated.index));
    let wait = retry_after_secs(violated.retry_after);
    let name = policy.map_or(tier.name(), |p| p.name());
    let detail = format!(
        "The {} tier allows {} requests in a burst (policy \"{name}\"); this request can be retried in {wait} s.",
        tier.name(),
        violated.limit
    );
    let mut problem = Problem::new(PROBLEM_RATE_LIMITED, "Too Many Requests", 429, &detail).tier(tier.name());
    problem.policy = Some(name);
    problem.limit = Some(violated.limit);
    problem.remaining = Some(violated.remaining);
    problem.retry_after = Some(wait);
    problem.upgrade_url = tier.upgrade_url();
    problem_response(StatusCode::TOO_MANY_REQUESTS, problem.to_bytes(), headers)
}

fn over_capacity(tier: &Tier, decision: &Decision, cost: u64, headers: RateLimitHeaders) -> OwnResponse {
    let smallest = decision.policies().iter().min_by_key(|p| p.limit).copied().unwrap_or_default();
    let policy = tier.policies().get(usize::from(smallest.index));
    let name = policy.map_or(tier.name(), |p| p.name());
    let detail = format!(
        "This request costs {cost} tokens but the {} tier holds at most {} (policy \"{name}\"): it can never \
         be admitted at this tier. Waiting will not help; a higher tier will.",
        tier.name(),
        smallest.limit
    );
    let mut problem =
        Problem::new(PROBLEM_OVER_CAPACITY, "Request exceeds the tier's capacity", 403, &detail)
            .tier(tier.name());
    problem.policy = Some(name);
    problem.limit = Some(smallest.limit);
    problem.cost = Some(cost);
    problem.upgrade_url = tier.upgrade_url();
    problem_response(StatusCode::FORBIDDEN, problem.to_bytes(), headers)
}

/// The caller's cached answer, replayed with fresh rate-limit headers and its `Age`.
fn replay(copy: &Cached, method: &http::Method, now: Nanos, headers: RateLimitHeaders) -> OwnResponse {
    let body = if *method == http::Method::HEAD { Bytes::new() } else { copy.body.clone() };
    let mut response = Response::new(body);
    *response.status_mut() = copy.status;
    *response.headers_mut() = copy.headers.clone();
    let age = now.saturating_sub(copy.stored_at).as_secs();
    response.headers_mut().insert(http::header::AGE, HeaderValue::from(age));
    headers.apply(response.headers_mut());
    response
}

fn too_many_in_flight(tier: &Tier, limit: u32) -> OwnResponse {
    let detail = format!(
        "The {} tier allows {limit} requests in flight at once; wait for one to finish.",
        tier.name()
    );
    let mut problem = Problem::new(PROBLEM_CONCURRENCY, "Too Many Concurrent Requests", 429, &detail)
        .tier(tier.name())
        .retry_after(1);
    problem.limit = Some(u64::from(limit));
    problem.upgrade_url = tier.upgrade_url();
    let mut response =
        problem_response(StatusCode::TOO_MANY_REQUESTS, problem.to_bytes(), RateLimitHeaders::default());
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn unavailable() -> OwnResponse {
    let problem = Problem::new(
        PROBLEM_UNAVAILABLE,
        "Rate limiter unavailable",
        503,
        "The rate limiter's store cannot be reached and this service is configured to refuse requests \
         until it can. Please retry shortly.",
    )
    .retry_after(1);
    let mut response =
        problem_response(StatusCode::SERVICE_UNAVAILABLE, problem.to_bytes(), RateLimitHeaders::default());
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

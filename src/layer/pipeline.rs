//! One request through the limiter, top to bottom: [`RateLimit::call`] runs the steps below in
//! order, and each value a step works out (the route, the client, the plan, the decision) is
//! handed on to the next, never worked out again.
//!
//! 1. **Route** ([`Core::route`], [`policy::Routes`](crate::policy::Routes)): the route
//!    template axum matched (else the URI path) and its rule. An exempt route is forwarded
//!    untouched.
//! 2. **Client** ([`Core::identify`], [`key`](crate::key)): who is asking, and their tier.
//! 3. **Plan** ([`Core::prepare`], [`Plan`]): concurrency slots ([`concurrency`](super::concurrency);
//!    a 429 at once when the client has too many in flight), the degradation band plan
//!    ([`BandPlan`]) and the [`Charge`].
//! 4. **Decision** ([`store`](crate::store)): the store charges every policy of the tier at
//!    once, running an [`algorithm`](crate::algorithm) against its [`clock`](crate::clock).
//! 5. **Outcome** ([`Core::settle`]): the plan and the decision become what happens next:
//!    forward with headers (perhaps degraded), replay a cached copy, or answer 429/403/503
//!    ([`answer`](crate::answer)); the observers are told ([`observe`](crate::observe)).
//!    An admission whose tokens were reserved ahead (a tier with `max_delay_ms`) is held for
//!    its wait first: a timer in the response future; dropped before it fires, the request
//!    gives its reservation back.
//! 6. **Response** (`future.rs`, `body.rs`, `settle.rs`): when the answer's cost differs from
//!    the charge (the route's `charge` refunds this status, or the handler reported an
//!    [`ActualCost`](super::ActualCost)) the store settles the difference and the headers are
//!    written from the standing it answers with; then the headers are merged into the
//!    handler's answer, which is recorded for the cached band when it may be, and the slots
//!    come back once the body is sent.
//!
//! An in-process store answers in step 4 at once, and steps 5 and 6 run inside `call` with
//! everything borrowed. A store doing I/O answers later: the plan is [detached](Plan::detach)
//! (it takes a share of the limits it was made under) and settled in the response future.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Body;
use tower_service::Service;

use super::body::ResponseBody;
use super::concurrency::{Scope, Slots};
use super::core::{Core, Snapshot};
use super::future::{next, After, ResponseFuture, Settled};
use super::service::RateLimit;
use super::settle::{Account, Bill, RouteHandle};
use super::ReadStanding;
use crate::answer::{self, OwnResponse, RateLimitHeaders, Unavailable};
use crate::clock::Nanos;
use crate::degrade::{self, Asked, Band, BandPlan, Chosen};
use crate::key::{Identified, Key, KeyExtractor, Who};
use crate::observe::{Event, Outcome};
use crate::policy::{ChargeOn, Mode, RouteId, RouteRule, Tier};
use crate::store::{Charge, Decision, OnError, StoreError, Verdict};

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyExtractor,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let core = &*self.state.core;
        // Every step reads the limits of this one snapshot, loaded once (lock-free): a reload
        // swaps in a new one for the next request, and this one finishes under these.
        let live = self.state.shared.live.load();
        let snapshot = &live.snapshot;

        // 1. Route.
        let route = Core::route(snapshot, &parts);
        if route.rule.exempt {
            return ResponseFuture::inner(
                self.inner.call(Request::from_parts(parts, body)),
                After::default(),
            );
        }
        // 2. Client: the allow list first (no store call, no headers), then who is asking.
        if !snapshot.allow.is_empty() && snapshot.allow.allows(&parts) {
            return ResponseFuture::inner(
                self.inner.call(Request::from_parts(parts, body)),
                After::default(),
            );
        }
        let (key, tier, who) = core.identify(snapshot, &*live.extractor, &parts);
        // 3. Plan.
        let plan = match core.prepare(snapshot, route, key, who, tier, &parts) {
            Ok(plan) => plan,
            Err(Early::Answer(answer)) => return ResponseFuture::ready(*answer),
            Err(Early::Forward) => {
                return ResponseFuture::inner(
                    self.inner.call(Request::from_parts(parts, body)),
                    After::default(),
                )
            }
        };
        // 4. Decision.
        let mut check = core.store.check(&plan.key, plan.tier, plan.charge);
        match check.try_take() {
            // 5. Outcome, now; 6. the response, in the future.
            Some(result) => {
                let settled = self.state.core.settle(plan, result);
                next(settled, &mut self.inner, Request::from_parts(parts, body))
            }
            None => {
                // The store does I/O: the plan outlives this call, and the instance polled
                // ready moves into the future while a clone takes its place (see "Be careful
                // when cloning inner services" in tower's docs).
                let detached = plan.detach();
                let core = self.state.core.clone();
                let settle = Box::new(move |result| detached.settle(&core, result));
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::checking(check, settle, inner, parts, body)
            }
        }
    }
}

/// A request settled before the store was asked.
pub(crate) enum Early {
    /// The limiter answers (too many requests in flight).
    Answer(Box<OwnResponse>),
    /// Forwarded untouched: shadow mode, where enforcement would have answered.
    Forward,
}

/// A request's route: the template it matched, and the rule of that template.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route<'a> {
    /// axum's matched route template, else the request path.
    pub(crate) path: &'a str,
    /// axum's `MatchedPath`, when there is one (a bill keeps it for observers).
    pub(crate) handle: Option<&'a RouteHandle>,
    pub(crate) rule: RouteRule,
    /// `path` is one of a bounded set: a template axum matched, or a route of the table (not
    /// a raw path a client made up).
    pub(crate) known: bool,
    /// `path`'s number in the snapshot's route table, when it is one of its routes.
    pub(crate) id: Option<RouteId>,
}

/// Everything the limiter settled about one request before asking the store, and all that
/// turning the store's decision into an outcome needs: the one value handed from step 3 to
/// step 5.
///
/// Borrowed from the request and from the [`Snapshot`] of the limits it was made under, so
/// making one copies nothing but the key. The tier says the mode (enforce or shadow), read in
/// [`Core::settle`]. Room for what comes next: a delay the request may be held for, and how
/// its cost is settled from the answer, are each one more field here.
pub(crate) struct Plan<'a> {
    /// The limits the plan was made under.
    snapshot: &'a Arc<Snapshot>,
    pub(crate) tier: &'a Tier,
    pub(crate) key: Key,
    /// The client's name and address, for observers (history, emails).
    who: Who,
    route: &'a str,
    /// `route` is a template, not a raw path (see [`Route::known`]).
    known_route: bool,
    route_id: Option<RouteId>,
    handle: Option<&'a RouteHandle>,
    method: &'a Method,
    /// Where a full answer may be recorded for the cached band.
    uri: &'a Uri,
    /// The request's headers, for those a recorded answer varies on.
    headers: &'a HeaderMap,
    /// The route's cost.
    cost: u64,
    /// Which answers keep the charge.
    charge_on: ChargeOn,
    /// What the store takes (the cost, or less in a degradation band).
    pub(crate) charge: Charge,
    band: Option<BandPlan>,
    /// Concurrency slots, held until the response is sent.
    slots: Slots,
}

impl Plan<'_> {
    /// The plan as a value of its own, for a decision that arrives after `call` returned: it
    /// keeps a share of its snapshot (so it finishes under the limits it started with) and its
    /// own copies of the route and method.
    fn detach(self) -> Detached {
        Detached {
            snapshot: self.snapshot.clone(),
            tier: self.tier.index(),
            key: self.key,
            who: self.who,
            route: self.route.into(),
            known_route: self.known_route,
            route_id: self.route_id,
            handle: self.handle.cloned(),
            method: self.method.clone(),
            uri: self.uri.clone(),
            // Only an answer that may be recorded needs them (no allocation otherwise).
            headers: if self.band.as_ref().is_some_and(BandPlan::recordable) {
                self.headers.clone()
            } else {
                HeaderMap::new()
            },
            cost: self.cost,
            charge_on: self.charge_on,
            charge: self.charge,
            band: self.band,
            slots: self.slots,
        }
    }
}

/// A [`Plan`] that owns what it borrowed.
struct Detached {
    snapshot: Arc<Snapshot>,
    tier: usize,
    key: Key,
    who: Who,
    route: Box<str>,
    known_route: bool,
    route_id: Option<RouteId>,
    handle: Option<RouteHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    cost: u64,
    charge_on: ChargeOn,
    charge: Charge,
    band: Option<BandPlan>,
    slots: Slots,
}

impl Detached {
    fn settle(self, core: &Arc<Core>, result: Result<Decision, StoreError>) -> Settled {
        let Self {
            snapshot,
            tier,
            key,
            who,
            route,
            known_route,
            route_id,
            handle,
            method,
            uri,
            headers,
            cost,
            charge_on,
            charge,
            band,
            slots,
        } = self;
        let tier = &snapshot.limits.tiers()[tier];
        let plan = Plan {
            snapshot: &snapshot,
            tier,
            key,
            who,
            route: &route,
            known_route,
            route_id,
            handle: handle.as_ref(),
            method: &method,
            uri: &uri,
            headers: &headers,
            cost,
            charge_on,
            charge,
            band,
            slots,
        };
        core.settle(plan, result)
    }
}

/// The route template axum matched (with axum's handle on it), else the request path.
#[inline]
fn route_path(parts: &Parts) -> (&str, Option<&RouteHandle>) {
    #[cfg(feature = "axum")]
    if let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return (matched.as_str(), Some(matched));
    }
    (parts.uri.path(), None)
}

impl Core {
    /// Step 1: the route's rule.
    #[inline]
    pub(crate) fn route<'a>(snapshot: &Snapshot, parts: &'a Parts) -> Route<'a> {
        let (path, matched) = route_path(parts);
        let (rule, id) = snapshot.limits.routes().resolve(&parts.method, path);
        Route { path, handle: matched, rule, known: matched.is_some() || id.is_some(), id }
    }

    /// Step 2: who is asking, and in which tier.
    #[inline]
    pub(crate) fn identify<'a, K: KeyExtractor + ?Sized>(
        &self,
        snapshot: &'a Snapshot,
        extractor: &K,
        parts: &Parts,
    ) -> (Key, &'a Tier, Who) {
        let limits = &snapshot.limits;
        match extractor.identify(parts, limits) {
            Some(Identified { key, tier, who }) => (key, tier.unwrap_or(limits.default_tier()), who),
            None => {
                if !self.warnings.unidentified.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "tollgate: a request matched no key extractor (no client address: serve with \
                         into_make_service_with_connect_info?); such requests share one bucket"
                    );
                }
                (self.unidentified.clone(), limits.default_tier(), Who::default())
            }
        }
    }

    /// Tells the configuration's alerts, then the layer's observers, of one decision.
    #[inline]
    pub(crate) fn tell(&self, snapshot: &Snapshot, event: &Event<'_>) {
        if let Some(alerts) = &snapshot.alerts {
            alerts.on_event(event);
        }
        if let Some(observer) = &self.observer {
            observer.on_event(event);
        }
    }

    /// A client with `limit` requests in flight already: a 429, or in shadow mode a would-be
    /// refusal, counted and forwarded.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn too_many_in_flight(
        &self,
        snapshot: &Snapshot,
        route: Route<'_>,
        key: &Key,
        who: &Who,
        tier: &Tier,
        parts: &Parts,
        limit: u32,
    ) -> Early {
        if tier.mode() == Mode::Enforce {
            return Early::Answer(Box::new(answer::too_many_in_flight(tier, limit)));
        }
        let event = Event {
            key,
            name: who.name.as_deref(),
            email: who.email.as_deref(),
            identified: who.identified,
            tier,
            method: &parts.method,
            route: route.path,
            known_route: route.known,
            cost: u64::from(route.rule.cost),
            outcome: Outcome::ShadowRejected(None),
            mode: Mode::Shadow,
        };
        self.tell(snapshot, &event);
        shadow_log(&event, None, Some(limit));
        Early::Forward
    }

    /// Step 3: concurrency, band plan and charge; `Err` is settled at once: too many requests
    /// in flight (answered, or in shadow mode counted and forwarded).
    #[inline]
    pub(crate) fn prepare<'a>(
        &self,
        snapshot: &'a Arc<Snapshot>,
        route: Route<'a>,
        key: Key,
        who: Who,
        tier: &'a Tier,
        parts: &'a Parts,
    ) -> Result<Plan<'a>, Early> {
        let mut slots = Slots::default();
        if let Some(limit) = tier.concurrency() {
            match self.inflight.acquire(&key, Scope::Tier(tier.name()), limit) {
                Some(slot) => slots.0[0] = Some(slot),
                None => return Err(self.too_many_in_flight(snapshot, route, &key, &who, tier, parts, limit)),
            }
        }
        let in_flight = route.rule.concurrency;
        if in_flight > 0 {
            match self.inflight.acquire(&key, Scope::Route(route.path), in_flight) {
                Some(slot) => slots.0[1] = Some(slot),
                None => {
                    return Err(self.too_many_in_flight(snapshot, route, &key, &who, tier, parts, in_flight))
                }
            }
        }
        let cost = u64::from(route.rule.cost);
        let band = match (snapshot.limits.bands(), &snapshot.cache) {
            (Some(bands), Some(cache)) if route.rule.degrade => {
                // An address is not an identity (users behind one NAT share it), nor is the key
                // of requests nobody recognised: "the caller's own last answer" cannot be
                // promised to them, so they get no cached band.
                Some(BandPlan::new(bands, who.identified.then_some(cache), &key, parts))
            }
            _ => None,
        };
        let charge = band.as_ref().map_or(Charge::new(cost), |band| band.charge(cost));
        Ok(Plan {
            snapshot,
            tier,
            key,
            who,
            route: route.path,
            known_route: route.known,
            route_id: route.id,
            handle: route.handle,
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            cost,
            charge_on: route.rule.charge,
            charge,
            band,
            slots,
        })
    }

    /// Step 5: the plan and the store's decision become what happens next. The one place that
    /// does. (Inlined into `call`: the plan and the outcome are large values, better not
    /// copied through a call.)
    #[inline]
    pub(crate) fn settle(self: &Arc<Self>, plan: Plan<'_>, result: Result<Decision, StoreError>) -> Settled {
        let Plan {
            snapshot,
            tier,
            key,
            who,
            route,
            known_route,
            route_id,
            handle,
            method,
            uri,
            headers: asked_headers,
            cost,
            charge_on,
            band,
            slots,
            ..
        } = plan;
        let mode = tier.mode();
        let observe = |outcome: Outcome<'_>| {
            let event = Event {
                key: &key,
                name: who.name.as_deref(),
                email: who.email.as_deref(),
                identified: who.identified,
                tier,
                method,
                route,
                known_route,
                cost,
                outcome,
                mode,
            };
            self.tell(snapshot, &event);
            if let Outcome::ShadowRejected(decision) = outcome {
                shadow_log(&event, decision, None);
            }
        };
        let decision = match result {
            Ok(decision) => decision,
            Err(error) => {
                observe(Outcome::StoreFault(&error));
                return match mode {
                    // The handler answers, whatever happens: never a 503.
                    Mode::Shadow => Settled::Forward(After { slots, ..After::default() }, None, Nanos::ZERO),
                    Mode::Enforce => self.fault(&error, slots),
                };
            }
        };
        // What settling the answer's cost needs (made last: it takes the client's key).
        let bill = |key: Key, who: Who, band: Option<Band>| {
            let account = Account {
                snapshot,
                tier,
                key,
                who,
                method,
                route_id,
                parts_route: handle,
                known_route,
                cost,
                charge: charge_on,
            };
            Some(Bill::new(account, &decision, band))
        };
        if mode == Mode::Shadow {
            // Decided and charged as enforcement would (a refusal charged nothing, a held
            // request its reservation, a settled cost its settlement); answered by the handler,
            // in full, at once, without headers.
            return match decision.verdict() {
                Verdict::Admitted => {
                    // Kept for the cached band exactly when enforcement would have kept it.
                    let asked = Asked { owner: &key, method, uri, headers: asked_headers };
                    let record = match band.map(|b| b.choose(&decision, asked)) {
                        Some(Chosen::Full(record)) => record,
                        _ => None,
                    };
                    observe(Outcome::Admitted(&decision));
                    let standing = self.standing(cost, &key, tier, &decision);
                    let bill = bill(key, who, None);
                    Settled::Forward(
                        After { headers: None, slots, record, bill, standing },
                        None,
                        Nanos::ZERO,
                    )
                }
                Verdict::Rejected | Verdict::Exceeds => {
                    observe(Outcome::ShadowRejected(Some(&decision)));
                    Settled::Forward(After { slots, ..After::default() }, None, Nanos::ZERO)
                }
            };
        }
        let mut headers = RateLimitHeaders::new(snapshot.headers, snapshot.answers.of(tier), &decision);
        let wait = decision.wait();
        match decision.verdict() {
            Verdict::Admitted => {
                match band.map_or(Chosen::Full(None), |b| {
                    b.choose(&decision, Asked { owner: &key, method, uri, headers: asked_headers })
                }) {
                    Chosen::Full(record) => {
                        if wait.is_zero() {
                            observe(Outcome::Admitted(&decision));
                        } else {
                            observe(Outcome::Delayed(&decision));
                        }
                        let standing = self.standing(cost, &key, tier, &decision);
                        let bill = bill(key, who, None);
                        let after = After { headers: Some(headers), slots, record, bill, standing };
                        Settled::Forward(after, None, wait)
                    }
                    Chosen::Cached(copy) => {
                        observe(Outcome::Degraded(&decision, Band::Cached));
                        headers.degraded(Band::Cached);
                        let mut response = degrade::replay(&copy, method, decision.now());
                        headers.apply(response.headers_mut());
                        Settled::Answer(response)
                    }
                    Chosen::Minimal => {
                        observe(Outcome::Degraded(&decision, Band::Minimal));
                        headers.degraded(Band::Minimal);
                        let bill = bill(key, who, Some(Band::Minimal));
                        Settled::Forward(
                            After { headers: Some(headers), slots, record: None, bill, standing: None },
                            Some(Band::Minimal),
                            wait,
                        )
                    }
                }
            }
            Verdict::Rejected => {
                observe(Outcome::Rejected(&decision));
                Settled::Answer(answer::too_many_requests(tier, &decision, headers))
            }
            Verdict::Exceeds => {
                observe(Outcome::Exceeds(&decision));
                Settled::Answer(answer::over_capacity(tier, &decision, cost, headers))
            }
        }
    }

    /// What a request of cost 0 hands its handler: the standing just read, so that `/usage`
    /// and `/dashboard` ([`RateLimitLayer::standing`](super::RateLimitLayer::standing)) make no
    /// second store call (issue 11, finding 8). Nothing for a request that was charged.
    fn standing(
        self: &Arc<Self>,
        cost: u64,
        key: &Key,
        tier: &Tier,
        decision: &Decision,
    ) -> Option<Box<ReadStanding>> {
        (cost == 0 && decision.charged() == 0).then(|| {
            Box::new(ReadStanding {
                core: Arc::as_ptr(self) as usize,
                key: key.clone(),
                tier: tier.clone(),
                decision: *decision,
            })
        })
    }

    /// The store could not decide: `on_error` says what happens.
    fn fault(&self, error: &StoreError, slots: Slots) -> Settled {
        // At most one warning a second, whatever the rate of faults.
        let second = self.clock.now().as_secs();
        if self.warnings.last_fault.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(%error, on_error = ?self.on_error, "tollgate: rate-limit store fault");
        }
        match self.on_error {
            OnError::Deny => Settled::Answer(answer::unavailable(Unavailable::Limit)),
            OnError::Allow | OnError::Local => {
                Settled::Forward(After { slots, ..After::default() }, None, crate::clock::Nanos::ZERO)
            }
        }
    }
}

/// Logs a request shadow mode forwarded that enforcement would have refused: one line each,
/// at `info` under the target `tollgate::shadow` (filter it with `RUST_LOG`, e.g.
/// `tollgate::shadow=off` or `=info`). The client shows as its address, or as the tail of a
/// long key: never a whole API key.
fn shadow_log(event: &Event<'_>, decision: Option<&Decision>, in_flight: Option<u32>) {
    let client = crate::observe::redacted(event.key);
    match decision {
        Some(decision) => {
            let headline = decision.headline();
            let policy = event.tier.policies().get(usize::from(headline.index)).map_or("", |p| p.name());
            let why = if decision.verdict() == Verdict::Exceeds {
                "over capacity (403)"
            } else {
                "rate limited (429)"
            };
            tracing::info!(
                target: "tollgate::shadow",
                tier = event.tier.name(),
                route = event.route,
                %client,
                policy,
                remaining = headline.remaining,
                retry_after_ms = decision.retry_after().map_or(0, |w| w.as_nanos() / 1_000_000),
                "tollgate: would have refused: {why}",
            );
        }
        None => tracing::info!(
            target: "tollgate::shadow",
            tier = event.tier.name(),
            route = event.route,
            %client,
            in_flight_limit = in_flight.unwrap_or(0),
            "tollgate: would have refused: too many requests in flight (429)",
        ),
    }
}

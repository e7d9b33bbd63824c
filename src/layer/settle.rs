//! Paying for the work actually done: the cost a handler reports ([`ActualCost`]), the route's
//! [`ChargeOn`], and the settlement that follows the answer.
//!
//! A forwarded request carries a [`Bill`]: what its admission charged and the receipt the store
//! wrote. When the response head is known, the bill works out what the request really cost:
//! nothing when the route's `charge` does not keep this status, else the handler's
//! [`ActualCost`] if it set one, else the charge. When that differs, the store settles the
//! difference ([`Store::settle`](crate::store::Store::settle): one call, and for Redis one round
//! trip, only then) and the rate-limit headers are written from the standing it answers with,
//! so `X-RateLimit-Remaining` on this very answer already reflects the actual cost. A held
//! request that goes away before it is forwarded settles at 0: its reservation is given back.

use std::sync::Arc;

use http::{Method, Response};

use super::core::Snapshot;
use crate::answer::RateLimitHeaders;
use crate::clock::Nanos;
use crate::degrade::Band;
use crate::key::{Key, Who};
use crate::observe::{Event, Outcome};
use crate::policy::RouteId;
use crate::policy::{ChargeOn, Tier};
use crate::store::{Decision, Receipt, Settlement, StoreError, StoreFuture};

/// What a request really cost, reported by its handler as a response extension: the limiter
/// charged the route's cost up front and settles the difference before it writes the
/// rate-limit headers (a refund, or an extra charge that may leave the client in debt: later
/// requests are refused until refill repays it, and `Retry-After` says when).
///
/// With axum, return it alongside the answer:
///
/// ```
/// use axum::Json;
/// use serde_json::{json, Value};
/// use tollgate::ActualCost;
///
/// async fn generate() -> (ActualCost, Json<Value>) {
///     let tokens = 42; // what the work turned out to cost
///     (ActualCost(tokens), Json(json!({ "generated": tokens })))
/// }
/// # let _ = generate;
/// ```
///
/// Any other service sets it on its response: `response.extensions_mut().insert(ActualCost(n))`.
///
/// ```
/// use tollgate::ActualCost;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(ActualCost(3));
/// assert_eq!(ActualCost::of(&response), Some(3));
/// ```
///
/// On a route whose `charge` does not keep the answer's status (`"failures"` and a success,
/// `"successes"` and a failure) the request costs nothing, whatever the handler reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActualCost(pub u64);

impl ActualCost {
    /// The cost `response` reports, if it reports one.
    pub fn of<B>(response: &Response<B>) -> Option<u64> {
        response.extensions().get::<Self>().map(|cost| cost.0)
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponseParts for ActualCost {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        mut parts: axum::response::ResponseParts,
    ) -> Result<axum::response::ResponseParts, Self::Error> {
        parts.extensions_mut().insert(self);
        Ok(parts)
    }
}

/// An admitted request's account, kept until its answer: settled then if it cost something
/// else. Owns what settling needs (the limits it was decided under, the client, the receipt),
/// so it outlives the call that made it.
///
/// Made for every admitted request, so it shares one thing only (issue 14): the snapshot of the
/// limits, which holds the layer's [`Core`](super::core::Core) too. The route is a number in that snapshot's route
/// table when it is one of its routes; only a template the table does not list keeps a share
/// of axum's `MatchedPath`.
pub(crate) struct Bill {
    snapshot: Arc<Snapshot>,
    key: Key,
    who: Who,
    method: Method,
    /// The route template, kept cheaply for observers: a route of the snapshot's table (by
    /// number), else axum's (shared), else none.
    route: Option<RouteId>,
    matched: Option<RouteHandle>,
    /// What was charged, and the receipt: the admission's [`Settlement`] but its `actual`.
    receipt: Receipt,
    charged_at: Nanos,
    charged: u64,
    /// The route's cost (what observers are told the request cost up front).
    cost: u32,
    tier: u32,
    known_route: bool,
    charge: ChargeOn,
    band: Option<Band>,
}

impl std::fmt::Debug for Bill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bill")
            .field("charged", &self.charged)
            .field("charge", &self.charge)
            .finish_non_exhaustive()
    }
}

/// What a [`Bill`] needs from the plan, borrowed.
pub(crate) struct Account<'a> {
    pub(crate) snapshot: &'a Arc<Snapshot>,
    pub(crate) tier: &'a Tier,
    pub(crate) key: Key,
    pub(crate) who: Who,
    pub(crate) method: &'a Method,
    /// The route's number in the snapshot's table, when it is one of its routes.
    pub(crate) route_id: Option<RouteId>,
    pub(crate) parts_route: Option<&'a RouteHandle>,
    pub(crate) known_route: bool,
    pub(crate) cost: u64,
    pub(crate) charge: ChargeOn,
}

/// The route handle the plan found (axum's `MatchedPath`), cloned into a bill.
#[cfg(feature = "axum")]
pub(crate) type RouteHandle = axum::extract::MatchedPath;
/// The route handle the plan found (none without axum).
#[cfg(not(feature = "axum"))]
pub(crate) type RouteHandle = ();

impl Bill {
    #[inline]
    pub(crate) fn new(account: Account<'_>, decision: &Decision, band: Option<Band>) -> Self {
        let settlement = decision.settlement(decision.charged());
        Self {
            snapshot: account.snapshot.clone(),
            key: account.key,
            who: account.who,
            method: account.method.clone(),
            route: account.route_id,
            matched: match account.route_id {
                Some(_) => None,
                None => account.parts_route.cloned(),
            },
            receipt: settlement.receipt,
            charged_at: settlement.charged_at,
            charged: settlement.charged,
            // A route's cost is a `u32` (`RouteRule::cost`).
            cost: u32::try_from(account.cost).unwrap_or(u32::MAX),
            tier: u32::try_from(account.tier.index()).expect("fewer than 2³² tiers"),
            known_route: account.known_route,
            charge: account.charge,
            band,
        }
    }

    fn route(&self) -> &str {
        match (self.route, &self.matched) {
            (Some(id), _) => self.snapshot.limits.routes().path(id),
            #[cfg(feature = "axum")]
            (None, Some(matched)) => matched.as_str(),
            _ => "",
        }
    }

    fn tier(&self) -> &Tier {
        &self.snapshot.limits.tiers()[self.tier as usize]
    }

    /// What the request really cost, from its answer.
    fn actual<B>(&self, response: &Response<B>) -> u64 {
        if !self.charge.keeps(response.status()) {
            return 0;
        }
        ActualCost::of(response).unwrap_or(self.charged)
    }

    /// Starts settling when the answer's cost differs from the charge; `None` when it does
    /// not (nothing to do).
    pub(crate) fn settle_for<B>(&self, response: &Response<B>) -> Option<StoreFuture> {
        let actual = self.actual(response);
        (actual != self.charged).then(|| self.start(actual))
    }

    fn start(&self, actual: u64) -> StoreFuture {
        let settlement =
            Settlement { receipt: self.receipt, charged_at: self.charged_at, charged: self.charged, actual };
        self.snapshot.core.store.settle(&self.key, self.tier(), settlement)
    }

    /// The headers of the answer after a settlement: from the standing the store answered
    /// with, or `headers` (the admission's) when it could not settle.
    pub(crate) fn settled(
        &self,
        result: Result<Decision, StoreError>,
        headers: Option<RateLimitHeaders>,
    ) -> Option<RateLimitHeaders> {
        match result {
            Ok(decision) => {
                self.observe(&decision);
                headers.as_ref()?;
                let mut fresh = RateLimitHeaders::new(
                    self.snapshot.headers,
                    self.snapshot.answers.of(self.tier()),
                    &decision,
                );
                if let Some(band) = self.band {
                    fresh.degraded(band);
                }
                Some(fresh)
            }
            Err(error) => {
                tracing::debug!(%error, "tollgate: could not settle a request's cost; its charge stands");
                headers
            }
        }
    }

    fn observe(&self, decision: &Decision) {
        let tier = self.tier();
        let route = self.route();
        self.snapshot.core.tell(
            &self.snapshot,
            &Event {
                key: &self.key,
                name: self.who.name.as_deref(),
                email: self.who.email.as_deref(),
                identified: self.who.identified,
                tier,
                method: &self.method,
                route,
                known_route: self.known_route && !route.is_empty(),
                cost: u64::from(self.cost),
                outcome: Outcome::Settled(decision),
                mode: tier.mode(),
            },
        );
    }

    /// The request goes away before it was forwarded: its reservation is given back (settled
    /// at 0). An asynchronous store finishes on the runtime, off the dropping thread.
    pub(crate) fn release(self) {
        if self.charged == 0 {
            return;
        }
        let mut settling = self.start(0);
        match settling.try_take() {
            Some(result) => {
                if let Ok(decision) = result {
                    self.observe(&decision);
                }
            }
            None => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        if let Ok(decision) = settling.await {
                            self.observe(&decision);
                        }
                    });
                }
                Err(_) => {
                    tracing::debug!("tollgate: a held request went away outside a runtime; its charge stands")
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;

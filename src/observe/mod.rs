//! Watching decisions: the [`Observer`] hook.
//!
//! The layer reports every decision it makes (admitted, degraded, rejected, never admitted,
//! store fault) to its observer, after the decision and before the response is sent. An
//! observer must be quick and must never block: anything slow (a webhook, a log shipper)
//! belongs on a queue of its own.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use tollgate::observe::{Event, Observer, Outcome};
//!
//! #[derive(Default)]
//! struct CountRejections(AtomicUsize);
//!
//! impl Observer for CountRejections {
//!     fn on_event(&self, event: &Event<'_>) {
//!         if matches!(event.outcome, Outcome::Rejected(_)) {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//! # let _ = CountRejections::default();
//! ```
//!
//! Ready observers:
//! * [`NearQuota`]: tells an [`OnNearQuota`] hook when a client's usage of a policy crosses
//!   a threshold (`[alerts] near_quota`): [`LogNearQuota`] logs it, [`Webhook`] (feature
//!   `webhook`) POSTs it as JSON from a background task.
//! * [`MetricsObserver`] (feature `metrics`): counters and histograms through the `metrics`
//!   facade.
//!
//! Combine them with a tuple: `layer.observer((MetricsObserver::new(), NearQuota::new(LogNearQuota)))`.

#[cfg(feature = "email")]
mod email;
#[cfg(feature = "metrics")]
mod metrics;
mod near_quota;
#[cfg(feature = "webhook")]
mod webhook;

#[cfg(feature = "metrics")]
pub use self::metrics::{
    MetricsObserver, DECISIONS, DEGRADED, KEYS_TRACKED, REMAINING_RATIO, STORE_FAULTS, TOKENS_CHARGED,
};
#[cfg(feature = "email")]
pub use email::{EmailAlerts, EmailAlertsBuilder, EmailError, EmailStats, Notice};
pub use near_quota::{LogNearQuota, NearQuota, NearQuotaEvent, OnNearQuota, DEFAULT_NEAR_QUOTA};
#[cfg(feature = "webhook")]
pub use webhook::{Webhook, WebhookBuilder, WebhookError, WebhookStats};

use http::Method;

use crate::degrade::Band;
use crate::key::Key;
use crate::policy::Tier;
use crate::store::{Decision, StoreError};

/// What happened to one request.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// Admitted and served in full.
    Admitted(&'a Decision),
    /// Admitted with its tokens reserved ahead: held [`Decision::wait`] before it is served
    /// (a tier with `max_delay_ms`).
    Delayed(&'a Decision),
    /// An admitted request's cost was settled from its answer (the handler reported its actual
    /// cost, or the route's `charge` refunded it, or a held request went away): the decision is
    /// the standing afterwards and [`Decision::charged`] what it really cost, where the
    /// event's `cost` is what it was charged up front.
    Settled(&'a Decision),
    /// Admitted in a degradation band (cached or minimal).
    Degraded(&'a Decision, Band),
    /// Rejected for now (429).
    Rejected(&'a Decision),
    /// Never admitted at this tier (403): the cost exceeds the burst.
    Exceeds(&'a Decision),
    /// The store could not decide.
    StoreFault(&'a StoreError),
}

/// One decision, as an observer sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Event<'a> {
    /// The client's key.
    pub key: &'a Key,
    /// How people know the client (`name` in `[api_keys]`, or an authentication layer's
    /// [`Client::with_name`](crate::key::Client::with_name)).
    pub name: Option<&'a str>,
    /// Where near-quota emails to the client go, when it has an address.
    pub email: Option<&'a str>,
    /// True for a client identified by an API key or an authentication layer (not by its
    /// address).
    pub identified: bool,
    /// The client's tier.
    pub tier: &'a Tier,
    /// The request method.
    pub method: &'a Method,
    /// The route template (or path) charged.
    pub route: &'a str,
    /// True when `route` is a route template: one axum matched, or one the route table names.
    /// False for a raw request path (a 404, a service without templates), which a client can
    /// make up at will: an observer keeping something per route should keep one for all
    /// such paths together.
    pub known_route: bool,
    /// The route's cost.
    pub cost: u64,
    /// What happened.
    pub outcome: Outcome<'a>,
}

/// Sees every decision of a layer. Implemented for closures `Fn(&Event<'_>)`, for `Arc`s, and
/// for tuples of two observers (both are told).
pub trait Observer: Send + Sync + 'static {
    /// Called once per limited request.
    fn on_event(&self, event: &Event<'_>);
}

impl<F> Observer for F
where
    F: Fn(&Event<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event<'_>) {
        self(event)
    }
}

impl<O: Observer + ?Sized> Observer for std::sync::Arc<O> {
    fn on_event(&self, event: &Event<'_>) {
        (**self).on_event(event)
    }
}

impl<A: Observer, B: Observer> Observer for (A, B) {
    fn on_event(&self, event: &Event<'_>) {
        self.0.on_event(event);
        self.1.on_event(event);
    }
}

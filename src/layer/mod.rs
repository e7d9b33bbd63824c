//! The Tower layer: [`RateLimitLayer`] and the [`RateLimit`] service.
//!
//! For each request the service
//! 1. looks up the route's rule (axum's `MatchedPath` template, else the URI path): exempt
//!    routes pass straight through, untouched;
//! 2. finds the client with its [`KeyExtractor`] and resolves the client's tier;
//! 3. charges the route's cost to the [`Store`], every policy of the tier at once;
//! 4. forwards the request and merges the rate-limit headers into the response, or answers
//!    429 (with `Retry-After`), 403 (cost above the burst) or, for a store fault with
//!    `on_error = "deny"`, 503 — all with `application/problem+json` bodies.
//!
//! Rejections are responses, never errors: the service's error type is the inner service's,
//! so it fits axum's `Router::layer` and `route_layer` and hyper alike. An in-process store
//! answers synchronously inside `call`; an asynchronous one (Redis) moves the inner service
//! that was polled ready into the response future.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tollgate::{Config, RateLimitLayer};
//!
//! let config = Config::from_toml(r#"
//!     [tiers.anonymous]
//!     requests_per_minute = 30
//!     burst = 5
//! "#).unwrap();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(RateLimitLayer::new(config));
//! # let _ = app;
//! ```
//!
//! Per-route costs live in the route table, which a router-level layer can read because
//! `Router::layer` runs after routing (`MatchedPath` is known). An `Extension` on a single
//! route would run *inside* the limiter and arrive too late, so routes are annotated in the
//! table instead: in the configuration's `[routes]`, or in code with
//! [`RateLimitLayer::route_cost`] and [`RateLimitLayer::exempt`].

mod body;
mod concurrency;
pub(crate) mod core;
mod future;
mod service;

use std::sync::Arc;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use service::RateLimit;
use tower_layer::Layer;

use self::core::Core;
use crate::answer::HeaderMode;
use crate::config::{Config, ConfigError};
use crate::key::Key;
use crate::key::{ApiKeys, ClientIp, FromExtension, KeyExtractor, Or};
use crate::observe::Observer;
use crate::policy::Tier;
use crate::policy::{Limits, RouteRule};
use crate::store::{Charge, Decision, StoreError};
use crate::store::{MemoryStore, OnError, Store};
use http::request::Parts;

/// The extractor a configuration builds: a [`Client`](crate::key::Client) set by an auth
/// layer, else a known API key (`X-API-Key`), else the client IP.
pub type DefaultExtractor = Or<Or<FromExtension, ApiKeys>, ClientIp>;

/// A layer that rate-limits every request to the wrapped service.
///
/// Holds only configuration behind `Arc`s: cloning it is cheap and every clone (and every
/// service it makes) shares one store, so limits hold across clones.
#[derive(Debug)]
pub struct RateLimitLayer<K = DefaultExtractor> {
    core: Arc<Core>,
    extractor: Arc<K>,
}

impl<K> Clone for RateLimitLayer<K> {
    fn clone(&self) -> Self {
        Self { core: self.core.clone(), extractor: self.extractor.clone() }
    }
}

impl RateLimitLayer<DefaultExtractor> {
    /// A layer enforcing a configuration, on the store it names.
    ///
    /// # Panics
    /// When the configuration is invalid (the message names the offending key) or names a
    /// store this build cannot reach; [`try_new`](Self::try_new) returns the error instead.
    pub fn new(config: Config) -> Self {
        match Self::try_new(config) {
            Ok(layer) => layer,
            Err(error) => panic!("invalid rate-limit configuration: {error}"),
        }
    }

    /// A layer enforcing a configuration, or why it cannot.
    pub fn try_new(config: Config) -> Result<Self, ConfigError> {
        let limits = config.limits()?;
        let store = config.store.build(&limits)?;
        let extractor = config.extractor();
        let core = Core::new(limits, store, config.headers, config.store.on_error);
        Ok(Self { core: Arc::new(core), extractor: Arc::new(extractor) })
    }
}

impl RateLimitLayer<ClientIp> {
    /// A layer enforcing limits defined in code, keyed by client IP, on an in-process store.
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::Quota;
    /// use tollgate::policy::{Limits, TierSpec};
    /// use tollgate::RateLimitLayer;
    ///
    /// let limits = Limits::builder()
    ///     .tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(10u32)).allow_burst(nonzero!(20u32))))
    ///     .build()
    ///     .unwrap();
    /// let layer = RateLimitLayer::from_limits(limits);
    /// assert_eq!(layer.limits().default_tier().name(), "anonymous");
    /// ```
    pub fn from_limits(limits: Limits) -> Self {
        let core = Core::new(limits, Arc::new(MemoryStore::new()), HeaderMode::Both, OnError::default());
        Self { core: Arc::new(core), extractor: Arc::new(ClientIp::new()) }
    }
}

impl<K> RateLimitLayer<K> {
    /// The limits enforced.
    pub fn limits(&self) -> &Limits {
        &self.core.limits
    }

    /// The store charged.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    /// The key extractor.
    pub fn key_extractor(&self) -> &K {
        &self.extractor
    }

    fn rebuild(self, f: impl FnOnce(&mut Core)) -> Self {
        let mut core = Core::new(
            self.core.limits.clone(),
            self.core.store.clone(),
            self.core.headers,
            self.core.on_error,
        );
        core.observer = self.core.observer.clone();
        core.clock = self.core.clock.clone();
        f(&mut core);
        Self { core: Arc::new(core), extractor: self.extractor }
    }

    /// Finds clients with `extractor` instead.
    ///
    /// ```
    /// # use nonzero_ext::nonzero;
    /// use tollgate::key::{Client, Key};
    /// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
    /// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)))).build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits).extractor(|parts: &http::request::Parts| {
    ///     let user = parts.headers.get("x-user")?.to_str().ok()?;
    ///     Some(Client::new(Key::new(user)))
    /// });
    /// # let _ = layer;
    /// ```
    pub fn extractor<K2: KeyExtractor>(self, extractor: K2) -> RateLimitLayer<K2> {
        RateLimitLayer { core: self.core, extractor: Arc::new(extractor) }
    }

    /// Charges `store` instead (pass an `Arc` to keep a handle on it).
    pub fn with_store(self, store: impl Store) -> Self {
        self.rebuild(|c| c.store = Arc::new(store))
    }

    /// Sends these rate-limit headers.
    pub fn headers(self, mode: HeaderMode) -> Self {
        self.rebuild(|c| c.headers = mode)
    }

    /// Does this when the store faults.
    pub fn on_error(self, policy: OnError) -> Self {
        self.rebuild(|c| c.on_error = policy)
    }

    /// Reads the time from `clock` for the layer's own needs (its stores keep their own
    /// clocks): tests pass a [`ManualClock`](crate::clock::ManualClock).
    pub fn clock(self, clock: impl crate::clock::Clock) -> Self {
        self.rebuild(|c| c.clock = Arc::new(clock))
    }

    /// Tells `observer` of every decision (replacing any earlier observer; combine several
    /// with a tuple `(a, b)`).
    pub fn observer(self, observer: impl Observer) -> Self {
        self.rebuild(|c| c.observer = Some(Arc::new(observer)))
    }

    /// Sets the cost of `route` (`"/path"` or `"METHOD /path"`, an axum route template): the
    /// in-code annotation for routes that need no configuration.
    ///
    /// # Panics
    /// When `route` is not a route.
    ///
    /// ```
    /// # use nonzero_ext::nonzero;
    /// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
    /// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)).allow_burst(nonzero!(10u32)))).build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits)
    ///     .route_cost("POST /reports/{id}", 8)
    ///     .exempt("/health");
    /// assert_eq!(layer.limits().routes().lookup(&http::Method::POST, "/reports/{id}").cost, 8);
    /// ```
    pub fn route_cost(self, route: &str, cost: u32) -> Self {
        self.rebuild(|c| {
            let set = |r: &mut RouteRule| {
                r.cost = cost;
                r.exempt = false;
            };
            c.limits.routes.update(route, set).unwrap_or_else(|e| panic!("{e}"));
        })
    }

    /// Never limits `route`.
    ///
    /// # Panics
    /// When `route` is not a route.
    pub fn exempt(self, route: &str) -> Self {
        self.rebuild(|c| {
            let set = |r: &mut RouteRule| *r = RouteRule::EXEMPT;
            c.limits.routes.update(route, set).unwrap_or_else(|e| panic!("{e}"));
        })
    }
}

/// A client's standing, read without charging anything: see [`RateLimitLayer::standing`].
#[derive(Debug, Clone)]
pub struct Standing<'a> {
    /// The client's key.
    pub key: Key,
    /// The client's tier.
    pub tier: &'a Tier,
    /// The store's answer for a request of cost 0: every policy's limit, remaining and reset.
    pub decision: Decision,
}

impl<K: KeyExtractor> RateLimitLayer<K> {
    /// Who is asking, in which tier, and how much they have left, without charging: what a
    /// usage endpoint shows.
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
    /// # tokio_test_block_on(async {
    /// let limits = Limits::builder()
    ///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
    ///     .build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits);
    /// let mut req = http::Request::new(());
    /// req.extensions_mut().insert("192.0.2.1:9".parse::<std::net::SocketAddr>().unwrap());
    /// let (parts, _) = req.into_parts();
    /// let standing = layer.standing(&parts).await.unwrap();
    /// assert_eq!(standing.tier.name(), "anonymous");
    /// assert_eq!(standing.decision.policies()[0].remaining, 5);
    /// # });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub async fn standing(&self, parts: &Parts) -> Result<Standing<'_>, StoreError> {
        let (key, tier) = self.core.identify(&*self.extractor, parts);
        let decision = self.core.store.check(&key, tier, Charge::new(0)).await?;
        Ok(Standing { key, tier, decision })
    }
}

impl<S, K> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self)
    }
}

#[cfg(test)]
mod tests;

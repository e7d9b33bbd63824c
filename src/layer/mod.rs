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
use crate::key::{ApiKeys, ClientIp, FromExtension, KeyExtractor, Or};
use crate::policy::{Limits, RouteRule};
use crate::store::{MemoryStore, OnError, Store};

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
        Self {
            core: self.core.clone(),
            extractor: self.extractor.clone(),
        }
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
        Ok(Self {
            core: Arc::new(core),
            extractor: Arc::new(extractor),
        })
    }
}

impl RateLimitLayer<ClientIp> {
    /// A layer enforcing limits defined in code, keyed by client IP, on an in-process store.
    ///
    /// ```
    /// use tollgate::algorithm::Quota;
    /// use tollgate::policy::{Limits, TierSpec};
    /// use tollgate::RateLimitLayer;
    ///
    /// let limits = Limits::builder()
    ///     .tier("anonymous", TierSpec::new(Quota::per_second(10, 20).unwrap()))
    ///     .build()
    ///     .unwrap();
    /// let layer = RateLimitLayer::from_limits(limits);
    /// assert_eq!(layer.limits().default_tier().name(), "anonymous");
    /// ```
    pub fn from_limits(limits: Limits) -> Self {
        let core = Core::new(
            limits,
            Arc::new(MemoryStore::new()),
            HeaderMode::Both,
            OnError::default(),
        );
        Self {
            core: Arc::new(core),
            extractor: Arc::new(ClientIp::new()),
        }
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

    fn rebuild(
        &self,
        f: impl FnOnce(&mut Limits, &mut Arc<dyn Store>, &mut HeaderMode, &mut OnError),
    ) -> Arc<Core> {
        let mut limits = self.core.limits.clone();
        let mut store = self.core.store.clone();
        let mut headers = self.core.headers;
        let mut on_error = self.core.on_error;
        f(&mut limits, &mut store, &mut headers, &mut on_error);
        Arc::new(Core::new(limits, store, headers, on_error))
    }

    /// Finds clients with `extractor` instead.
    ///
    /// ```
    /// use tollgate::key::{Client, Key};
    /// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
    /// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(1, 1).unwrap())).build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits).extractor(|parts: &http::request::Parts| {
    ///     let user = parts.headers.get("x-user")?.to_str().ok()?;
    ///     Some(Client::new(Key::new(user)))
    /// });
    /// # let _ = layer;
    /// ```
    pub fn extractor<K2: KeyExtractor>(self, extractor: K2) -> RateLimitLayer<K2> {
        RateLimitLayer {
            core: self.core,
            extractor: Arc::new(extractor),
        }
    }

    /// Charges `store` instead (shared by reference: pass an `Arc` to keep a handle).
    pub fn with_store(self, store: impl Store) -> Self {
        let core = self.rebuild(|_, s, _, _| *s = Arc::new(store));
        Self {
            core,
            extractor: self.extractor,
        }
    }

    /// Sends these rate-limit headers.
    pub fn headers(self, mode: HeaderMode) -> Self {
        let core = self.rebuild(|_, _, h, _| *h = mode);
        Self {
            core,
            extractor: self.extractor,
        }
    }

    /// Does this when the store faults.
    pub fn on_error(self, policy: OnError) -> Self {
        let core = self.rebuild(|_, _, _, e| *e = policy);
        Self {
            core,
            extractor: self.extractor,
        }
    }

    /// Sets the cost of `route` (`"/path"` or `"METHOD /path"`, an axum route template): the
    /// in-code annotation for routes that need no configuration.
    ///
    /// # Panics
    /// When `route` is not a route.
    ///
    /// ```
    /// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
    /// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(1, 10).unwrap())).build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits)
    ///     .route_cost("POST /reports/{id}", 8)
    ///     .exempt("/health");
    /// assert_eq!(layer.limits().routes().lookup(&http::Method::POST, "/reports/{id}").cost, 8);
    /// ```
    pub fn route_cost(self, route: &str, cost: u32) -> Self {
        let core = self.rebuild(|l, _, _, _| {
            l.routes
                .update(route, |r| {
                    r.cost = cost;
                    r.exempt = false;
                })
                .unwrap_or_else(|e| panic!("{e}"));
        });
        Self {
            core,
            extractor: self.extractor,
        }
    }

    /// Never limits `route`.
    ///
    /// # Panics
    /// When `route` is not a route.
    pub fn exempt(self, route: &str) -> Self {
        let core = self.rebuild(|l, _, _, _| {
            l.routes
                .update(route, |r| *r = RouteRule::EXEMPT)
                .unwrap_or_else(|e| panic!("{e}"));
        });
        Self {
            core,
            extractor: self.extractor,
        }
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

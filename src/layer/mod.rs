//! The Tower layer: [`RateLimitLayer`] and the [`RateLimit`] service.
//!
//! For each request the service runs the crate's [pipeline](crate#the-pipeline): it looks up
//! the route's rule (axum's `MatchedPath` template, else the URI path; exempt routes pass
//! straight through, untouched), finds the client with its [`KeyExtractor`] and the client's
//! tier, plans the request (concurrency, degradation band, charge), has the [`Store`] charge
//! every policy of the tier at once, and then forwards the request with the rate-limit headers
//! merged into the response, or answers 429 (with `Retry-After`), 403 (cost above the burst)
//! or, for a store fault with `on_error = "deny"`, 503, all with `application/problem+json`
//! bodies. The flow reads top to bottom in `src/layer/pipeline.rs`.
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
mod core;
mod future;
mod pipeline;
mod reload;
mod service;
mod settle;

use std::sync::Arc;

pub use body::ResponseBody;
pub use future::ResponseFuture;
#[cfg(feature = "watch")]
pub use reload::ConfigWatcher;
pub use reload::{ReloadStats, Reloader};
pub use service::RateLimit;
pub use settle::ActualCost;
use tower_layer::Layer;

use self::core::{Core, Live, Shared, Snapshot};
use crate::answer::HeaderMode;
use crate::config::{ConfigError, Settings};
use crate::degrade::CacheLimits;
use crate::history::History;
use crate::key::{AllowList, ClientIp, DefaultExtractor, Key, KeyExtractor};
use crate::observe::Observer;
use crate::policy::{Limits, RouteRule, Tier};
use crate::store::{Charge, Decision, MemoryStore, OnError, Store, StoreError};
use crate::Config;
use http::request::Parts;

/// A layer that rate-limits every request to the wrapped service.
///
/// Holds only configuration behind `Arc`s: cloning it is cheap and every clone (and every
/// service it makes) shares one store, so limits hold across clones. Its builder methods
/// change the layer in place; only a layer that was already cloned is copied first (its
/// clones keep what they had).
///
/// The limits in force can be replaced while it serves, atomically and without a lock on the
/// request path: see [`reloader`](Self::reloader).
#[derive(Debug)]
pub struct RateLimitLayer<K = DefaultExtractor> {
    state: Arc<LayerState<K>>,
}

/// What a layer and every service made from it hold: behind one `Arc`, because axum's
/// `Router::layer` clones the layer and makes a service from it for every request, and each
/// `Arc` is a shared reference count incremented and decremented each time (issue 14: one
/// instead of two saves six locked operations per request).
#[derive(Debug)]
pub(crate) struct LayerState<K> {
    pub(crate) core: Arc<Core>,
    pub(crate) shared: Arc<Shared<K>>,
}

impl<K> Clone for LayerState<K> {
    fn clone(&self) -> Self {
        Self { core: self.core.clone(), shared: self.shared.clone() }
    }
}

impl<K> LayerState<K> {
    fn new(core: Arc<Core>, shared: Shared<K>) -> Arc<Self> {
        Arc::new(Self { core, shared: Arc::new(shared) })
    }
}

impl<K> Clone for RateLimitLayer<K> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone() }
    }
}

impl RateLimitLayer<DefaultExtractor> {
    /// The limiter `config` describes: its limits and client keys, headers, store and
    /// `on_error`, response cache, and near-quota alerts (logged, and POSTed to
    /// `[alerts] webhook` when one is set).
    ///
    /// # Panics
    /// When the limiter cannot be built: a webhook outside a Tokio runtime, or a store this
    /// build lacks. [`try_new`](Self::try_new) returns the error instead.
    pub fn new(config: Config) -> Self {
        match Self::try_new(config) {
            Ok(layer) => layer,
            Err(error) => panic!("invalid rate-limit configuration: {error}"),
        }
    }

    /// The limiter `config` describes, or why it cannot be built. Checks nothing again: a
    /// [`Config`] was checked when it was made.
    pub fn try_new(config: Config) -> Result<Self, ConfigError> {
        let extractor = config.extractor();
        let allow = config.allow_list();
        let (settings, limits) = config.into_parts();
        let store = settings.store.build()?;
        let core = Arc::new(Core::new(store, settings.store.on_error));
        let snapshot = snapshot_of(&core, &settings, limits, allow, None)?;
        let live = Live { snapshot: Arc::new(snapshot), extractor: Arc::new(extractor) };
        let history = history(&settings)?;
        let rebuild: fn(&Config) -> DefaultExtractor = Config::extractor;
        let shared = Shared::new(live, Some(settings), Some(rebuild));
        let layer = Self { state: LayerState::new(core, shared) };
        Ok(match history {
            Some(history) => layer.history(history),
            None => layer,
        })
    }
}

/// Everything of `settings` that a reload replaces, around `limits`. With `previous` (a
/// reload), what did not change is kept as it is: the response cache with its copies, and the
/// alerts with what they remember (and their background tasks).
pub(crate) fn snapshot_of(
    core: &Arc<Core>,
    settings: &Settings,
    limits: Limits,
    allow: AllowList,
    previous: Option<(&Settings, &Snapshot)>,
) -> Result<Snapshot, ConfigError> {
    let mut snapshot = Snapshot::new(core.clone(), limits, settings.headers);
    snapshot.allow = allow;
    snapshot.admin_keys = settings.admin.keys.iter().map(|k| Box::from(k.as_str())).collect();
    if let Some(degrade) = &settings.degrade {
        snapshot.cache_limits = degrade.cache_limits();
    }
    snapshot.fit_cache(previous.map(|(_, snapshot)| snapshot));
    snapshot.alerts = match previous {
        Some((before, snapshot)) if before.alerts == settings.alerts => snapshot.alerts.clone(),
        _ => Some(alerts(settings)?),
    };
    Ok(snapshot)
}

/// The usage history of `[history]`: in process, or in Redis with `backend = "redis"`.
fn history(settings: &Settings) -> Result<Option<History>, ConfigError> {
    use crate::config::Backend;
    let config = &settings.history;
    if !config.enabled {
        return Ok(None);
    }
    let store = &settings.store;
    match store.backend {
        Backend::Memory => Ok(Some(History::memory_bounded(config.max_clients, config.max_anonymous))),
        #[cfg(feature = "redis")]
        Backend::Redis => {
            let history = if store.nodes.is_empty() {
                History::redis(&store.url, store.prefix.as_str())
            } else {
                History::redis_cluster(&store.nodes, store.prefix.as_str())
            };
            history.map(Some).map_err(|e| ConfigError::invalid("store.url", e.to_string()))
        }
        #[cfg(not(feature = "redis"))]
        Backend::Redis => Ok(None),
    }
}

/// The near-quota alerts of `[alerts]`: logged, and POSTed to the webhook when one is set.
fn alerts(settings: &Settings) -> Result<Arc<dyn Observer>, ConfigError> {
    use crate::observe::{LogNearQuota, NearQuota};
    let threshold = settings.alerts.near_quota;
    #[cfg(feature = "webhook")]
    let webhook = match &settings.alerts.webhook {
        Some(url) => Some(
            crate::observe::Webhook::new(url.as_str())
                .map_err(|e| ConfigError::invalid("alerts.webhook", e.to_string()))?,
        ),
        None => None,
    };
    #[cfg(not(feature = "webhook"))]
    let webhook = ();
    #[cfg(feature = "email")]
    let email = match &settings.alerts.email {
        Some(email) => Some(email_alerts(email, &settings.store)?),
        None => None,
    };
    #[cfg(not(feature = "email"))]
    let email = ();
    Ok(Arc::new(NearQuota::new((LogNearQuota, (webhook, email))).threshold(threshold)))
}

/// The near-quota emails of `[alerts.email]`; with `backend = "redis"`, deduplicated through
/// Redis for every instance.
#[cfg(feature = "email")]
fn email_alerts(
    email: &crate::config::EmailConfig,
    store: &crate::config::StoreConfig,
) -> Result<crate::observe::EmailAlerts, ConfigError> {
    let builder = crate::observe::EmailAlerts::builder(email.smtp.as_str(), email.from.as_str())
        .min_interval(std::time::Duration::from_secs(email.min_interval_s));
    #[cfg(feature = "redis")]
    let builder = match (store.backend, store.nodes.is_empty()) {
        (crate::config::Backend::Redis, true) => builder.redis(store.url.as_str(), store.prefix.as_str()),
        (crate::config::Backend::Redis, false) => builder.redis_cluster(&store.nodes, store.prefix.as_str()),
        _ => builder,
    };
    #[cfg(not(feature = "redis"))]
    let _ = store;
    builder.start().map_err(|e| ConfigError::invalid("alerts.email", e.to_string()))
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
        let core = Arc::new(Core::new(Arc::new(MemoryStore::new()), OnError::default()));
        let snapshot = Snapshot::new(core.clone(), limits, HeaderMode::Both);
        let live = Live { snapshot: Arc::new(snapshot), extractor: Arc::new(ClientIp::new()) };
        Self { state: LayerState::new(core, Shared::new(live, None, None)) }
    }
}

impl<K> RateLimitLayer<K> {
    /// The limits in force now (a reload replaces them; this is a share of the ones in force
    /// when it was called).
    pub fn limits(&self) -> Arc<Limits> {
        self.state.shared.live.load().snapshot.limits.clone()
    }

    /// The store charged.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.state.core.store
    }

    /// The key extractor in force now (a reload of a layer built from a [`Config`] replaces
    /// it with the one the new configuration describes).
    pub fn key_extractor(&self) -> Arc<K> {
        self.state.shared.live.load().extractor.clone()
    }

    /// The handle that replaces this layer's limits while it serves (every clone of the layer,
    /// and every service made from one, sees the swap at once): see [`Reloader`].
    ///
    /// Take it once the layer is built: a builder method called afterwards makes a layer of
    /// its own, which this handle does not reach.
    pub fn reloader(&self) -> Reloader<K> {
        Reloader::new(self.state.core.clone(), self.state.shared.clone())
    }

    /// The snapshot in force.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.state.shared.live.load().snapshot.clone()
    }

    /// Changes a copy of the shared part (its clones, and a reloader taken before, keep
    /// theirs), and puts it in the snapshot in force too (the snapshot shares it with requests
    /// in flight).
    fn edit(mut self, f: impl FnOnce(&mut Core)) -> Self {
        let mut core = Core::clone(&self.state.core);
        f(&mut core);
        let core = Arc::new(core);
        Arc::make_mut(&mut self.state).core = core.clone();
        self.edit_live(|s| s.core = core)
    }

    /// Changes the limits in force, in a shared part of this layer's own (its clones, and a
    /// reloader taken before, keep theirs).
    fn edit_live(mut self, f: impl FnOnce(&mut Snapshot)) -> Self {
        let live = self.state.shared.live.load_full();
        let mut snapshot = (*live.snapshot).clone();
        f(&mut snapshot);
        let live = Live { snapshot: Arc::new(snapshot), extractor: live.extractor.clone() };
        let shared = Arc::new(self.state.shared.fork(live));
        Arc::make_mut(&mut self.state).shared = shared;
        self
    }

    /// Finds clients with `extractor` instead.
    ///
    /// ```
    /// use tollgate::key::{Client, Key};
    /// # use nonzero_ext::nonzero;
    /// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
    /// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)))).build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits).extractor(|parts: &http::request::Parts| {
    ///     let user = parts.headers.get("x-user")?.to_str().ok()?;
    ///     Some(Client::new(Key::new(user)))
    /// });
    /// # let _ = layer;
    /// ```
    pub fn extractor<K2: KeyExtractor>(self, extractor: K2) -> RateLimitLayer<K2> {
        let snapshot = self.snapshot();
        let settings = self
            .state
            .shared
            .built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .settings
            .clone();
        let live = Live { snapshot, extractor: Arc::new(extractor) };
        RateLimitLayer {
            state: Arc::new(LayerState {
                core: self.state.core.clone(),
                shared: Arc::new(Shared::new(live, settings, None)),
            }),
        }
    }

    /// Charges `store` instead (pass an `Arc` to keep a handle on it).
    pub fn with_store(self, store: impl Store) -> Self {
        self.edit(|c| c.store = Arc::new(store))
    }

    /// Sends these rate-limit headers.
    pub fn headers(self, mode: HeaderMode) -> Self {
        self.edit_live(|s| s.headers = mode)
    }

    /// Does this when the store faults.
    pub fn on_error(self, policy: OnError) -> Self {
        self.edit(|c| c.on_error = policy)
    }

    /// Bounds the response cache of the `cached` band (a new, empty cache).
    ///
    /// ```
    /// # use nonzero_ext::nonzero;
    /// # use tollgate::{algorithm::Quota, policy::{Bands, Limits, TierSpec}, RateLimitLayer};
    /// use tollgate::clock::Nanos;
    /// use tollgate::degrade::CacheLimits;
    /// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32))))
    /// #     .degrade(["/search"], Bands::default()).build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits)
    ///     .cache_limits(CacheLimits { ttl: Nanos::from_secs(60), ..CacheLimits::default() });
    /// # let _ = layer;
    /// ```
    pub fn cache_limits(self, limits: CacheLimits) -> Self {
        self.edit_live(|s| {
            s.cache_limits = limits;
            s.fit_cache(None);
        })
    }

    /// Never limits the clients `allow` lets through (`[allow]` in a configuration): no
    /// charge, no store call, no rate-limit headers.
    ///
    /// ```
    /// # use nonzero_ext::nonzero;
    /// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
    /// use tollgate::key::AllowList;
    /// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)))).build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits)
    ///     .allow(AllowList::new().ips(["10.0.0.0/8".parse().unwrap()]).keys(["monitor-key"]));
    /// # let _ = layer;
    /// ```
    pub fn allow(self, allow: AllowList) -> Self {
        self.edit_live(|s| s.allow = allow)
    }

    /// Reads the time from `clock` for the layer's own needs (its stores keep their own
    /// clocks): tests pass a [`ManualClock`](crate::clock::ManualClock).
    pub fn clock(self, clock: impl crate::clock::Clock) -> Self {
        self.edit(|c| c.clock = Arc::new(clock))
    }

    /// Keeps `history` of every decision (and serves it in the usage routes): one more
    /// observer. A layer built from a [`Config`] has the history of its `[history]` table.
    ///
    /// ```
    /// # use nonzero_ext::nonzero;
    /// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
    /// use tollgate::history::History;
    /// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)))).build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits).history(History::memory());
    /// assert!(layer.usage_history().is_some());
    /// ```
    pub fn history(self, history: History) -> Self {
        let observer = history.clone();
        self.edit(|c| c.history = Some(history)).observer(observer)
    }

    /// The usage history kept, if any.
    pub fn usage_history(&self) -> Option<&History> {
        self.state.core.history.as_ref()
    }

    /// Lets the holders of these `X-API-Key` values read the operator's view (`/admin`,
    /// `/admin/usage` of `UsageRoutes`); `[admin] keys` in a configuration.
    pub fn admin_keys<I: IntoIterator<Item = S>, S: AsRef<str>>(self, keys: I) -> Self {
        let keys: Arc<[Box<str>]> = keys.into_iter().map(|k| Box::from(k.as_ref())).collect();
        self.edit_live(|s| s.admin_keys = keys)
    }

    /// True when `parts` carries one of the admin keys (compared without an early exit, so
    /// the time taken says nothing of how much of a key was right).
    #[cfg(feature = "usage")]
    pub(crate) fn is_admin(&self, parts: &Parts) -> bool {
        let Some(given) = parts.headers.get("x-api-key").map(http::HeaderValue::as_bytes) else {
            return false;
        };
        let mut found = false;
        for key in self.snapshot().admin_keys.iter() {
            let key = key.as_bytes();
            let same =
                key.len() == given.len() && key.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            found |= same;
        }
        found
    }

    /// The layer's clock, read now (Unix epoch seconds).
    #[cfg(feature = "usage")]
    pub(crate) fn now_secs(&self) -> u64 {
        self.state.core.clock.now().as_secs()
    }

    /// Also tells `observer` of every decision, after the observers it has (a layer built
    /// from a [`Config`] starts with its near-quota alerts).
    pub fn observer(self, observer: impl Observer) -> Self {
        self.edit(|c| {
            c.observer = Some(match c.observer.take() {
                Some(earlier) => Arc::new((earlier, observer)),
                None => Arc::new(observer),
            })
        })
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
        self.edit_live(|s| {
            let set = |r: &mut RouteRule| {
                r.cost = cost;
                r.exempt = false;
            };
            s.limits_mut().routes.update(route, set).unwrap_or_else(|e| panic!("{e}"));
        })
    }

    /// Never limits `route`.
    ///
    /// # Panics
    /// When `route` is not a route.
    pub fn exempt(self, route: &str) -> Self {
        self.edit_live(|s| {
            let set = |r: &mut RouteRule| *r = RouteRule::EXEMPT;
            s.limits_mut().routes.update(route, set).unwrap_or_else(|e| panic!("{e}"));
        })
    }
}

/// A client's standing, read without charging anything: see [`RateLimitLayer::standing`].
#[derive(Debug, Clone)]
pub struct Standing {
    /// The client's key.
    pub key: Key,
    /// How people know the client, when it has a name.
    pub name: Option<std::sync::Arc<str>>,
    /// The client's tier, in the limits in force when the standing was read.
    pub tier: Tier,
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
    pub async fn standing(&self, parts: &Parts) -> Result<Standing, StoreError> {
        let (key, tier, who) = {
            let live = self.state.shared.live.load();
            let (key, tier, who) = self.state.core.identify(&live.snapshot, &*live.extractor, parts);
            (key, tier.clone(), who)
        };
        // Behind this layer, on a route of cost 0, the layer has just read it (issue 11,
        // finding 8: one store call for `/usage`, not two).
        let read = parts.extensions.get::<ReadStanding>().filter(|read| {
            read.core == Arc::as_ptr(&self.state.core) as usize
                && read.key == key
                && read.tier.name() == tier.name()
        });
        if let Some(read) = read {
            return Ok(Standing { key, name: who.name, tier: read.tier.clone(), decision: read.decision });
        }
        let decision = self.state.core.store.check(&key, &tier, Charge::new(0)).await?;
        Ok(Standing { key, name: who.name, tier, decision })
    }
}

/// The standing a layer read for a request of cost 0, handed to the handler in the request's
/// extensions: [`RateLimitLayer::standing`] answers from it instead of asking the store again.
/// `core` names the layer that read it (a request may pass several).
#[derive(Debug, Clone)]
pub(crate) struct ReadStanding {
    pub(crate) core: usize,
    pub(crate) key: Key,
    pub(crate) tier: Tier,
    pub(crate) decision: Decision,
}

impl<S, K> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self)
    }
}

#[cfg(test)]
mod tests;

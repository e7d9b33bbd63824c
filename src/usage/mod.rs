//! Usage, for people and programs: ready-made axum routes that show callers their limits.
//!
//! * `GET /usage`: the caller's own standing as JSON ([`UsageReport`]): `tier`, `limit`,
//!   `remaining`, `reset` (Unix epoch seconds) for the headline policy, each policy of the
//!   tier, and `upgrade_url` when the tier has one. The caller's key is never shown: only
//!   whether it is keyed by IP (and that address) or by a key.
//! * `GET /policy`: every tier's limits and every route's cost ([`PublishedLimits`]).
//! * `GET /dashboard`: the caller's standing as a self-contained HTML page (inline CSS, no
//!   script): a bar per policy, when it is full again, and the upgrade link.
//! * `GET /metrics` (feature `prometheus`): the Prometheus text format.
//!
//! The handlers read the caller's standing with [`RateLimitLayer::standing`], which charges
//! nothing; the limiter in front of them charges the route's cost as for any route. Give
//! `/usage` and `/dashboard` a cost of 0 (reading your usage should not use it up) and exempt
//! `/policy` and `/metrics`, as `config/ratelimit.toml` does. A store fault answers 503 with
//! a problem+json body, never 500.
//!
//! **Who is the caller?** Whoever the layer's key extractor says: the same client the limiter
//! charges. A program sends its `X-API-Key`; a browser cannot add that header, so a browser
//! sees the dashboard of its IP address (the anonymous tier) unless an authentication layer in
//! front of the limiter recognises it (a session cookie, say) and inserts a
//! [`Client`](crate::key::Client) into the request extensions, which the default extractor
//! honours first. API keys are never accepted in the URL: a key in a query string ends up in
//! logs, histories and `Referer` headers.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tollgate::{Config, RateLimitLayer};
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let config = Config::from_toml(r#"
//!     [tiers.anonymous]
//!     requests_per_minute = 30
//!     burst = 5
//!     [routes]
//!     "/usage" = 0
//!     "/dashboard" = 0
//!     [exempt]
//!     routes = ["/policy"]
//! "#).unwrap();
//! let layer = RateLimitLayer::new(config);
//! let app: Router = Router::new()
//!     .route("/api", get(|| async { "ok" }))
//!     .merge(tollgate::usage::routes(layer.clone()))
//!     .layer(layer);
//!
//! let call = |path: &str| {
//!     let mut req = http::Request::get(path).body(axum::body::Body::empty()).unwrap();
//!     req.extensions_mut().insert("192.0.2.1:9".parse::<std::net::SocketAddr>().unwrap());
//!     app.clone().oneshot(req)
//! };
//! call("/api").await.unwrap();
//! let usage = call("/usage").await.unwrap();
//! let body = axum::body::to_bytes(usage.into_body(), 1 << 16).await.unwrap();
//! let usage: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(usage["tier"], "anonymous");
//! assert_eq!(usage["remaining"], 4);
//! # });
//! ```
//!
//! Everything together: usage routes, `/metrics`, and metrics next to the near-quota alerts the
//! configuration describes (logged, and POSTed to `[alerts] webhook` when it names one):
//!
#![cfg_attr(all(feature = "prometheus", feature = "webhook"), doc = "```no_run")]
#![cfg_attr(not(all(feature = "prometheus", feature = "webhook")), doc = "```ignore")]
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//! use tollgate::observe::MetricsObserver;
//! use tollgate::usage::{install_prometheus, UsageRoutes};
//! use tollgate::{Config, RateLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load("config/ratelimit.toml")?;
//! let prometheus = install_prometheus()?; // once per process
//! let layer = RateLimitLayer::try_new(config)?.observer(MetricsObserver::new());
//!
//! let app = Router::new()
//!     .route("/api/simple", get(|| async { "{}" }))
//!     .merge(UsageRoutes::new(layer.clone()).prometheus(prometheus).into_router())
//!     .layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//! * `usage` (default): this module (needs `axum`).
//! * `prometheus`: the `/metrics` route, [`install_prometheus`], and the
//!   [`MetricsObserver`](crate::observe::MetricsObserver) (`metrics`) that feeds it.
//! * `webhook`: [`Webhook`](crate::observe::Webhook), near-quota alerts POSTed as JSON.

mod admin_page;
mod calendar;
mod chart;
mod handlers;
mod html;
mod page;
mod policy_page;
#[cfg(feature = "prometheus")]
mod prometheus;
mod report;

use axum::routing::get;
use axum::Router;

pub use handlers::{admin, admin_usage, dashboard, policy, usage, AdminQuery};

/// The `/policy` page for people: every tier of `limits` side by side like a pricing table
/// (rates per minute and per day, burst, quotas, upgrade link, cheapest tier first) and what
/// each route costs, as one self-contained HTML document (inline CSS, no script, no asset
/// from elsewhere). Every interpolated string is escaped.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::Quota;
/// use tollgate::policy::{Limits, TierSpec};
/// use tollgate::usage::{policy_page, PublishedLimits};
///
/// let limits = Limits::builder()
///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
///     .tier("free", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))).upgrade_url("https://example.com/pricing"))
///     .route("/api/search", 5)
///     .build().unwrap();
/// let html = policy_page(&PublishedLimits::new(&limits));
/// assert!(html.contains("60 per minute"));
/// assert!(html.contains("href=\"https://example.com/pricing\""));
/// assert!(html.contains("<code>/api/search</code>"));
/// ```
pub fn policy_page(limits: &PublishedLimits) -> String {
    policy_page::render(limits)
}

/// The operator's page: a chart of everyone's requests in the last hour, the busiest clients
/// (by name, address or key prefix: never a whole key), and rejections by tier and by route,
/// as of `now` (Unix epoch seconds). One self-contained HTML document.
///
/// ```
/// use tollgate::history::{History, Visit};
/// use tollgate::key::Key;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let history = History::memory();
/// let key = Key::new("sk_live_0123456789abcdef");
/// history.record(&Visit::new(&key, "pro", "/api", 1_700_000_000, true, 3).name("Acme Corp"));
/// let report = history.report(1_700_000_000, 20).await.unwrap();
/// let html = tollgate::usage::admin_page(&report, 1_700_000_000);
/// assert!(html.contains("Acme Corp") && html.contains("<svg"));
/// assert!(!html.contains("sk_live"));
/// # });
/// ```
pub fn admin_page(report: &crate::history::AdminReport, now: u64) -> String {
    admin_page::render(report, now)
}
pub use html::escape_html;
#[cfg(feature = "prometheus")]
pub use prometheus::{install_prometheus, metrics, MetricsState};
pub use report::{KeyedBy, PolicyLimits, PolicyUsage, PublishedLimits, RouteCost, TierLimits, UsageReport};

use crate::key::KeyExtractor;
use crate::RateLimitLayer;

/// A router with `GET /usage`, `GET /policy` and `GET /dashboard` for `layer`'s clients:
/// merge it into your app, then wrap the whole app in `layer`.
///
/// Same as `UsageRoutes::new(layer).into_router()`.
pub fn routes<K: KeyExtractor, S: Clone + Send + Sync + 'static>(layer: RateLimitLayer<K>) -> Router<S> {
    UsageRoutes::new(layer).into_router()
}

/// Builds the usage routes; see the [module documentation](self).
///
/// ```
/// use tollgate::usage::UsageRoutes;
/// # use nonzero_ext::nonzero;
/// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
/// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)))).build().unwrap();
/// let layer = RateLimitLayer::from_limits(limits);
/// let router: axum::Router = UsageRoutes::new(layer.clone()).into_router();
/// # let _ = router;
/// ```
#[derive(Debug)]
pub struct UsageRoutes<K> {
    layer: RateLimitLayer<K>,
    #[cfg(feature = "prometheus")]
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl<K: KeyExtractor> UsageRoutes<K> {
    /// The routes of `layer`'s clients.
    pub fn new(layer: RateLimitLayer<K>) -> Self {
        Self {
            layer,
            #[cfg(feature = "prometheus")]
            prometheus: None,
        }
    }

    /// Adds `GET /metrics`, rendered from `handle` (see [`install_prometheus`]).
    #[cfg(feature = "prometheus")]
    pub fn prometheus(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// The router.
    pub fn into_router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let router = Router::new()
            .route("/usage", get(usage::<K>))
            .route("/policy", get(policy::<K>))
            .route("/dashboard", get(dashboard::<K>))
            .route("/admin", get(admin::<K>))
            .route("/admin/usage", get(admin_usage::<K>))
            .with_state(self.layer.clone());
        #[cfg(feature = "prometheus")]
        let router = match self.prometheus {
            Some(handle) => router.merge(
                Router::new()
                    .route("/metrics", get(metrics::<K>))
                    .with_state(MetricsState { handle, layer: self.layer }),
            ),
            None => router,
        };
        router
    }
}

//! The three services the layer benches compare, all the same axum `Router` with one trivial
//! handler, driven in-process as Tower services (no sockets):
//! * `bare`: the router alone;
//! * `tollgate`: plus `RateLimitLayer::new(Config::from_toml(CONFIG))`: the demo configuration
//!   (API-key extractor, costs table, `headers = "both"`, degradation bands, near-quota alerts)
//!   with an enterprise tier so generous that every request is admitted; `tollgate_metrics`
//!   adds the demo's `MetricsObserver` on a Prometheus recorder;
//! * `tower_governor`: plus tower_governor's `GovernorLayer`, keyed by the same `X-API-Key`
//!   header, same rate and burst, with its rate-limit headers on (`use_headers`).

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, Uri};
use tollgate::{Config, RateLimitLayer};
use tower::{Service, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

pub const API_KEY: &str = "enterprise-demo-key";

/// The demo configuration (config/ratelimit.toml: degradation bands on `/api/search`,
/// near-quota alerts at 0.8), with an enterprise tier of 10⁹ requests per second and a burst
/// of 1 000, so nothing is ever refused and `remaining` stays in the hundreds, as for a real
/// tier.
pub const CONFIG: &str = r#"
algorithm = "token_bucket"
default_tier = "anonymous"
headers = "both"

[tiers.anonymous]
requests_per_minute = 30
burst = 5

[tiers.free]
requests_per_minute = 60
burst = 10
requests_per_day = 10000
upgrade_url = "https://example.com/pricing"

[tiers.pro]
requests_per_minute = 600
burst = 100

[tiers.enterprise]
requests_per_second = 1000000000
burst = 1000

[routes]
"/api/simple" = 1
"/api/search" = 5
"POST /api/generate" = 20
"/usage" = 0
"/dashboard" = 0
"POST /login" = { cost = 1, charge = "failures" }

[exempt]
routes = ["/health", "/metrics", "/policy"]

[api_keys]
"free-demo-key" = "free"
"pro-demo-key" = "pro"
"enterprise-demo-key" = "enterprise"

[degrade]
routes = ["/api/search"]
cached_below = 0.5
minimal_below = 0.1

[alerts]
near_quota = 0.8
"#;

pub fn router() -> Router {
    Router::new().route("/api/simple", get(|| async { "ok" })).route("/health", get(|| async { "ok" }))
}

pub fn bare() -> Router {
    router()
}

pub fn tollgate() -> Router {
    tollgate_with(CONFIG)
}

pub fn tollgate_with(config: &str) -> Router {
    router().layer(layer(config))
}

fn layer(config: &str) -> RateLimitLayer {
    RateLimitLayer::new(Config::from_toml(config).expect("valid bench configuration"))
}

/// The configuration with `headers = "<mode>"`.
pub fn with_headers(mode: &str) -> String {
    CONFIG.replace("headers = \"both\"", &format!("headers = \"{mode}\""))
}

/// `tollgate` plus the demo server's `MetricsObserver`, recording to a Prometheus recorder
/// (installed for the whole process on first use, as the demo server does).
pub fn tollgate_metrics() -> Router {
    static RECORDER: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    RECORDER.get_or_init(|| tollgate::usage::install_prometheus().expect("the only recorder"));
    router().layer(layer(CONFIG).observer(tollgate::observe::MetricsObserver::new()))
}

/// A layer that does nothing, applied the same way: what `Router::layer` costs by itself.
pub fn noop() -> Router {
    router().layer(tower::util::MapRequestLayer::new(|req: Request<Body>| req))
}

/// tower_governor's key: the raw `X-API-Key` header value (cloning it is a reference count).
#[derive(Debug, Clone, Copy)]
pub struct ApiKeyHeader;

impl KeyExtractor for ApiKeyHeader {
    type Key = HeaderValue;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        req.headers().get("x-api-key").cloned().ok_or(GovernorError::UnableToExtractKey)
    }
}

pub fn tower_governor() -> Router {
    let mut builder = GovernorConfigBuilder::default().key_extractor(ApiKeyHeader);
    let config = builder
        .per_nanosecond(1)
        .burst_size(1_000)
        .use_headers()
        .finish()
        .expect("valid governor configuration");
    router().layer(GovernorLayer::new(config))
}

/// The request every variant serves: `GET /api/simple` with the enterprise key. Built from
/// static parts, so building it costs the same (two small allocations for the header map)
/// for every variant.
pub fn request() -> Request<Body> {
    let mut req = Request::new(Body::empty());
    *req.uri_mut() = Uri::from_static("/api/simple");
    req.headers_mut().insert("x-api-key", HeaderValue::from_static(API_KEY));
    req
}

/// Serves one request in-process: `ready`, `call`, and the future, which completes at once for
/// these services (no runtime needed).
#[inline]
pub fn serve(service: &mut Router, req: Request<Body>) -> Response<Body> {
    let ready = ServiceExt::<Request<Body>>::ready(service).now_or_never().expect("always ready");
    let service = ready.expect("infallible");
    service.call(req).now_or_never().expect("completes at once").expect("infallible")
}

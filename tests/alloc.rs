//! Heap allocations per admitted request, counted by a global allocator.
//!
//! The same axum router is served in-process, bare and behind the limiter, many times; the
//! difference in allocations per request is what the limiter costs. The key already exists
//! (warm-up), headers are on (`headers = "both"`, five headers), every request is admitted.
//!
//! What we find, and assert exactly:
//! * `MemoryStore::decide` allocates nothing.
//! * The layer's own work (key, tier, decision, the five header values) allocates nothing in
//!   steady state: header values are slices of a per-thread 16 KiB chunk, which is reclaimed in
//!   place once the values sliced from it are dropped, as they are here.
//! * Merging five headers into a response that already carries two (`content-type`,
//!   `content-length`) makes that response's `HeaderMap` grow past its first six slots: one
//!   reallocation of its index table and one of its entries, i.e. 2 allocations per request
//!   that any middleware adding that many headers pays (with `headers = "legacy"` or
//!   `"ietf"` the map does not grow and the layer adds 0).
//! * Through `Router::layer`, axum boxes and clones the layered route for each request, which a
//!   layer that does nothing pays too (3 allocations). The limiter pays 2 more there: axum
//!   clones the layer itself into a box per request (any layer that holds state pays it: a
//!   no-op layer holding one `Arc` does), and boxes the limiter's `ResponseBody<Body>` to turn
//!   it into its own `Body`. With `headers = "both"`, 2 more: the response map's growth.
//!   tower_governor, measured the same way, allocates 3 more per request than that.

use nonzero_ext::nonzero;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use futures_util::FutureExt;
use http::{HeaderValue, Request, Uri};
use tollgate::algorithm::Quota;
use tollgate::key::Key;
use tollgate::observe::MetricsObserver;
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::{Charge, MemoryStore};
use tollgate::{Config, RateLimitLayer};
use tower::{Layer, Service, ServiceExt};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed by this thread.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn live(delta: i64) {
    LIVE.with(|n| n.set(n.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        live(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        live(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while running `f`.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const REQUESTS: u64 = 20_000;

fn config(headers: &str) -> Config {
    Config::from_toml(&format!(
        r#"
        headers = "{headers}"
        [tiers.anonymous]
        requests_per_minute = 30
        burst = 5
        [tiers.enterprise]
        requests_per_second = 1000000000
        burst = 1000
        [routes]
        "/api/simple" = 1
        [api_keys]
        "enterprise-demo-key" = "enterprise"
        "#
    ))
    .unwrap()
}

fn router() -> Router {
    Router::new().route("/api/simple", get(|| async { "ok" }))
}

fn request() -> Request<Body> {
    let mut req = Request::new(Body::empty());
    *req.uri_mut() = Uri::from_static("/api/simple");
    req.headers_mut().insert("x-api-key", HeaderValue::from_static("enterprise-demo-key"));
    req
}

/// Allocations per request of `service`, after a warm-up, over many requests.
fn per_request<S, B>(service: S) -> f64
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    measure(service).0
}

/// Allocations per request of `service`, and the bytes it kept (allocated and not freed)
/// over all of them, after a warm-up.
fn measure<S, B>(mut service: S) -> (f64, i64)
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut serve = move || {
        let ready = ServiceExt::<Request<Body>>::ready(&mut service).now_or_never().unwrap().unwrap();
        let response = ready.call(request()).now_or_never().expect("completes at once").unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
    };
    for _ in 0..2_000 {
        serve();
    }
    let before = LIVE.with(Cell::get);
    let n = allocations(|| (0..REQUESTS).for_each(|_| serve()));
    (n as f64 / REQUESTS as f64, LIVE.with(Cell::get) - before)
}

/// (layered - bare) allocations per request.
fn added(layered: f64, bare: f64) -> f64 {
    layered - bare
}

#[test]
fn decide_allocates_nothing() {
    let limits = Limits::builder()
        .tier(
            "anonymous",
            TierSpec::new(Quota::per_second(nonzero!(1_000_000_000u32)).allow_burst(nonzero!(1_000u32))),
        )
        .build()
        .unwrap();
    let tier = limits.default_tier();
    let store = MemoryStore::new();
    let key = Key::new("enterprise-demo-key");
    assert!(store.decide(&key, tier, Charge::new(1)).is_admitted());
    let n = allocations(|| {
        for _ in 0..REQUESTS {
            assert!(store.decide(&key, tier, Charge::new(1)).is_admitted());
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn the_layer_adds_no_allocation_of_its_own() {
    let bare = per_request(router());
    for (headers, growth) in [("none", 0.0), ("legacy", 0.0), ("ietf", 0.0), ("both", 2.0)] {
        let limited = RateLimitLayer::new(config(headers)).layer(router());
        let limited = per_request(limited);
        println!("headers = {headers}: bare {bare} allocations/request, limited {limited}");
        assert_eq!(added(limited, bare), growth, "headers = {headers}");
    }
}

#[test]
fn through_router_layer_the_limiter_costs_what_any_layer_costs() {
    // A layer that does nothing at all, applied the same way: what axum's `Router::layer`
    // costs by itself (the layered route is boxed and cloned per request).
    let noop = per_request(router().layer(tower::util::MapRequestLayer::new(|req: Request<Body>| req)));
    let limited = per_request(router().layer(RateLimitLayer::new(config("none"))));
    println!("Router::layer: no-op layer {noop} allocations/request, limiter (headers = none) {limited}");
    // Two more than a no-op layer, and none of them in the limiter's own code (which adds 0
    // around the whole router, above): axum's box of the layer, cloned per request (paid by
    // any layer holding state), and its box of the limiter's response body (see
    // `through_router_layer_a_layer_with_state_pays_one_box`).
    assert_eq!(added(limited, noop), 2.0);
    let limited = per_request(router().layer(RateLimitLayer::new(config("both"))));
    println!("Router::layer: no-op layer {noop}, limiter (headers = both) {limited}");
    assert_eq!(added(limited, noop), 4.0, "plus the response map's growth, as above");
}

/// What the two allocations beyond a no-op layer (`headers = "none"`) are, measured against
/// layers that carry state, as every real limiter does:
/// * axum's `Router::layer` clones the layer into a fresh box for every request: free for the
///   zero-sized no-op layer above, one allocation for any layer that holds something (here a
///   no-op layer holding one `Arc`; tower_governor's layer pays it too);
/// * axum boxes any response body that is not already its own `Body`: the limiter's
///   `ResponseBody<Body>` (which carries the concurrency slots and the cached-band recorder)
///   is one box; a no-op layer keeps axum's body and pays nothing.
///
/// tower_governor, same router, same key header, its two headers, for comparison: it
/// allocates more per request than tollgate with all five headers.
#[test]
fn through_router_layer_a_layer_with_state_pays_one_box() {
    let noop = per_request(router().layer(tower::util::MapRequestLayer::new(|req: Request<Body>| req)));
    let state = std::sync::Arc::new(0u64);
    let with_state =
        per_request(router().layer(tower::util::MapRequestLayer::new(move |req: Request<Body>| {
            std::hint::black_box(&state);
            req
        })));
    let governor = per_request(governor_router());
    let none = per_request(router().layer(RateLimitLayer::new(config("none"))));
    let both = per_request(router().layer(RateLimitLayer::new(config("both"))));
    println!(
        "Router::layer, allocations/request: no-op {noop}, no-op holding an Arc {with_state}, \
         tower_governor {governor}, tollgate none {none}, tollgate both {both}"
    );
    assert_eq!(added(with_state, noop), 1.0, "the layer's box, per request");
    assert_eq!(added(none, with_state), 1.0, "the limiter's response body, boxed by axum");
    // tower_governor (0.8, as locked) allocates more than that: 6 beyond the no-op layer
    // holding an Arc, where tollgate with all five headers allocates 3.
    assert_eq!(added(both, with_state), 3.0);
    assert!(both < governor, "tollgate {both} allocations/request, tower_governor {governor}");
    // Seven headers (two of the handler's, five of ours) do not fit the six slots `http`
    // gives a response's map: it grows once (its index table and its entries).
    assert_eq!(added(both, none), 2.0);
}

/// The router behind tower_governor keyed by the raw `X-API-Key` value, with its headers (as
/// in the benches).
fn governor_router() -> Router {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .key_extractor(ApiKeyHeader)
        .per_nanosecond(1)
        .burst_size(1_000)
        .use_headers()
        .finish()
        .unwrap();
    router().layer(tower_governor::GovernorLayer::new(config))
}

#[derive(Debug, Clone, Copy)]
struct ApiKeyHeader;

impl tower_governor::key_extractor::KeyExtractor for ApiKeyHeader {
    type Key = HeaderValue;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, tower_governor::GovernorError> {
        req.headers().get("x-api-key").cloned().ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// The demo's `MetricsObserver` on a Prometheus recorder, nobody scraping: it allocates
/// nothing per request, and the process keeps no memory per request (a recorder's own
/// histogram would keep every sample until a scrape drains it).
#[test]
fn the_metrics_observer_allocates_nothing_and_keeps_nothing() {
    let _handle = tollgate::usage::install_prometheus().expect("the only recorder of this process");
    let layer = || RateLimitLayer::new(config("both"));
    let (without, _) = measure(layer().layer(router()));
    let (with, kept) = measure(layer().observer(MetricsObserver::new()).layer(router()));
    println!("MetricsObserver: {without} allocations/request without, {with} with; {kept} bytes kept");
    assert_eq!(with, without);
    assert_eq!(kept, 0, "bytes kept over {REQUESTS} requests");
}

use nonzero_ext::nonzero;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::strategy::Strategy as _;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

use super::*;
use crate::algorithm::Quota;
use crate::clock::ManualClock;
use crate::degrade::Band;
use crate::key::{Client, Key, KeyExtractor};
use crate::policy::{Bands, TierSpec};
use crate::store::{Charge, StoreError, StoreFuture};

const START: Duration = Duration::from_secs(1_700_000_000);

fn limits() -> Limits {
    Limits::builder()
        .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
        .tier(
            "free",
            TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)))
                .daily(12)
                .upgrade_url("https://example.com/pricing"),
        )
        .tier("pro", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(20u32))))
        .route("/search", 5)
        .route("POST /generate", 20)
        .route("/usage", 0)
        .exempt("/health")
        .degrade(["/search"], Bands { cached_below: 0.5, minimal_below: 0.1 })
        .build()
        .unwrap()
}

/// Clients name themselves with `x-user`; `x-tier` picks the tier.
fn by_header(parts: &http::request::Parts) -> Option<Client> {
    let user = parts.headers.get("x-user")?.to_str().ok()?;
    let client = Client::new(Key::new(user));
    Some(match parts.headers.get("x-tier").and_then(|t| t.to_str().ok()) {
        Some(tier) => client.with_tier(tier),
        None => client,
    })
}

type Handler = tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn handler(calls: Arc<AtomicUsize>) -> Handler {
    tower::util::BoxCloneService::new(service_fn(move |req: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let band = Band::of(req.extensions());
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{band:?}"))))) }
    }))
}

fn layer(clock: &ManualClock) -> RateLimitLayer<fn(&http::request::Parts) -> Option<Client>> {
    RateLimitLayer::from_limits(limits())
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>)
}

fn get(path: &str, user: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("x-user", user).body(Full::default()).unwrap()
}

async fn send<S>(svc: &mut S, req: Request<Full<Bytes>>) -> (Response<()>, String)
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResponseBody<Full<Bytes>>>, Error = Infallible>,
{
    let response = svc.ready().await.unwrap().call(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn admits_the_burst_then_answers_429_with_an_honest_retry_after() {
    let clock = ManualClock::new(START);
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(Arc::default()));
    for left in (0..5).rev() {
        let (res, _) = send(&mut svc, get("/a", "ann")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-ratelimit-limit"], "5");
        assert_eq!(res.headers()["x-ratelimit-remaining"], left.to_string().as_str());
        assert_eq!(res.headers()["ratelimit-policy"], "\"anonymous\";q=5;w=10");
    }
    let (res, body) = send(&mut svc, get("/a", "ann")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "2");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(res.headers()["x-ratelimit-reset"], (START.as_secs() + 10).to_string().as_str());
    // t: the next token (2 s), not the 10 s to full that X-RateLimit-Reset gives.
    assert_eq!(res.headers()["ratelimit"], "\"anonymous\";r=0;t=2");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], 429);
    assert_eq!(json["retry_after"], 2);
    assert_eq!(json["tier"], "anonymous");
    assert_eq!(json["policy"], "anonymous");
    assert_eq!(json["limit"], 5);
    assert!(json.get("upgrade_url").is_none());

    clock.advance(Duration::from_secs(2) - Duration::from_nanos(1));
    assert_eq!(send(&mut svc, get("/a", "ann")).await.0.status(), StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_nanos(1));
    assert_eq!(send(&mut svc, get("/a", "ann")).await.0.status(), StatusCode::OK);
    // Another client is untouched.
    assert_eq!(send(&mut svc, get("/a", "bob")).await.0.status(), StatusCode::OK);
}

/// Parses `"name";r=R;t=T, ...` into (name, r, t) triples.
fn ratelimit(res: &Response<()>) -> Vec<(String, u64, u64)> {
    let text = res.headers()["ratelimit"].to_str().unwrap();
    text.split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap().trim_matches('"').to_owned();
            let num = |p: Option<&str>, key: &str| p.unwrap().strip_prefix(key).unwrap().parse().unwrap();
            (name, num(parts.next(), "r="), num(parts.next(), "t="))
        })
        .collect()
}

/// `t` is the wait for the next whole token (rounded up), 0 when the policy is full, and on a
/// 429 `Retry-After` is never earlier than the violated policy's `t`.
#[tokio::test]
async fn ratelimit_t_is_the_next_token_and_retry_after_covers_it() {
    let clock = ManualClock::new(START);
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(Arc::default()));
    // A cost-0 route reports the standing of a full bucket: no token is awaited.
    let (res, _) = send(&mut svc, get("/usage", "ann")).await;
    assert_eq!(ratelimit(&res), [("anonymous".to_owned(), 5, 0)]);
    // One token spent (a token every 2 s): the next one in 2 s; full again in 2 s too.
    let (res, _) = send(&mut svc, get("/a", "ann")).await;
    assert_eq!(ratelimit(&res), [("anonymous".to_owned(), 4, 2)]);
    // 1.5 s later, a second one: 2.5 s to full, but the next token comes in 0.5 s (t = 1).
    clock.advance(Duration::from_millis(1_500));
    let (res, _) = send(&mut svc, get("/a", "ann")).await;
    assert_eq!(ratelimit(&res), [("anonymous".to_owned(), 3, 1)]);
    assert_eq!(res.headers()["x-ratelimit-reset"], (START.as_secs() + 4).to_string().as_str());

    // Two policies: 60 a minute with a burst of 10, and 12 a day (a token every 2 hours).
    let user = |path| get(path, "fay").tap_tier("free");
    for _ in 0..10 {
        assert_eq!(send(&mut svc, user("/a")).await.0.status(), StatusCode::OK);
    }
    let (res, _) = send(&mut svc, user("/a")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // The burst policy is violated: Retry-After is its t; the daily one's t may be longer.
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(ratelimit(&res), [("free".to_owned(), 0, 1), ("free-daily".to_owned(), 2, 7_200)]);
    clock.advance(Duration::from_secs(2));
    for _ in 0..2 {
        assert_eq!(send(&mut svc, user("/a")).await.0.status(), StatusCode::OK);
    }
    let (res, _) = send(&mut svc, user("/a")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // Now the daily policy is violated: its next token is the first one spent, 2 h after it.
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 7_198);
    let daily = &ratelimit(&res)[1];
    assert_eq!((daily.1, daily.2), (0, 7_198));
    assert!(retry_after >= daily.2);
    // A request of cost 5 waits for five tokens, longer than t, the wait for one.
    for _ in 0..4 {
        assert_eq!(send(&mut svc, get("/a", "ann")).await.0.status(), StatusCode::OK);
    }
    let (res, _) = send(&mut svc, get("/search", "ann")).await;
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after > ratelimit(&res)[0].2, "{res:?}");
}

trait TapTier {
    fn tap_tier(self, tier: &str) -> Self;
}

impl TapTier for Request<Full<Bytes>> {
    fn tap_tier(mut self, tier: &str) -> Self {
        self.headers_mut().insert("x-tier", tier.parse().unwrap());
        self
    }
}

#[tokio::test]
async fn a_rejection_does_not_call_the_handler() {
    let clock = ManualClock::new(START);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(calls.clone()));
    for _ in 0..8 {
        send(&mut svc, get("/a", "ann")).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn exempt_routes_pass_untouched() {
    let clock = ManualClock::new(START);
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(Arc::default()));
    for _ in 0..20 {
        let (res, _) = send(&mut svc, get("/health", "ann")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
    assert_eq!(send(&mut svc, get("/a", "ann")).await.0.headers()["x-ratelimit-remaining"], "4");
}

#[tokio::test]
async fn costs_come_from_the_route_table() {
    let clock = ManualClock::new(START);
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(Arc::default()));
    let req =
        || Request::get("/a").header("x-user", "f").header("x-tier", "free").body(Full::default()).unwrap();
    let (res, _) = send(&mut svc, req()).await;
    assert_eq!(res.headers()["ratelimit"], "\"free\";r=9;t=1, \"free-daily\";r=11;t=7200");
    let (res, _) = send(&mut svc, get("/usage", "f")).await;
    assert_eq!(res.headers()["x-ratelimit-remaining"], "5", "cost 0 charges nothing");
    let (res, _) = send(&mut svc, get("/usage", "f")).await;
    assert_eq!(res.headers()["x-ratelimit-remaining"], "5");
    // GET /generate costs the default 1: the 20 is for POST only.
    assert_eq!(send(&mut svc, get("/generate", "f")).await.0.headers()["x-ratelimit-remaining"], "4");
}

#[tokio::test]
async fn a_cost_above_the_burst_is_403_without_retry_after() {
    let clock = ManualClock::new(START);
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(Arc::default()));
    let req = Request::post("/generate")
        .header("x-user", "f")
        .header("x-tier", "free")
        .body(Full::default())
        .unwrap();
    let (res, body) = send(&mut svc, req).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(res.headers()["x-ratelimit-limit"], "10");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["upgrade_url"], "https://example.com/pricing");
    assert_eq!(json["cost"], 20);
    assert_eq!(json["status"], 403);
    // Nothing was charged.
    let (res, _) = send(&mut svc, get("/usage", "f")).await;
    assert_eq!(res.headers()["x-ratelimit-remaining"], "5");
}

#[tokio::test]
async fn a_daily_quota_is_a_second_policy() {
    let clock = ManualClock::new(START);
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(Arc::default()));
    let req =
        || Request::get("/a").header("x-user", "f").header("x-tier", "free").body(Full::default()).unwrap();
    for _ in 0..10 {
        assert_eq!(send(&mut svc, req()).await.0.status(), StatusCode::OK);
    }
    clock.advance(Duration::from_secs(60));
    assert_eq!(send(&mut svc, req()).await.0.status(), StatusCode::OK);
    assert_eq!(send(&mut svc, req()).await.0.status(), StatusCode::OK);
    let (res, body) = send(&mut svc, req()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["policy"], "free-daily");
    assert_eq!(json["limit"], 12);
    assert_eq!(res.headers()["x-ratelimit-limit"], "12", "legacy headers describe the violated policy");
    // One token of the daily quota comes back every 2 hours.
    assert_eq!(res.headers()["retry-after"], "7140");
}

#[tokio::test]
async fn clones_share_one_limit() {
    let clock = ManualClock::new(START);
    let svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(Arc::default()));
    let mut admitted = 0;
    for _ in 0..10 {
        let mut clone = svc.clone();
        if send(&mut clone, get("/a", "ann")).await.0.status() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}

/// A store that answers asynchronously, as Redis does.
#[derive(Clone)]
struct Deferred(Arc<MemoryStore<ManualClock>>);

impl Store for Deferred {
    fn check(&self, key: &Key, tier: &crate::policy::Tier, charge: Charge) -> StoreFuture {
        let decision = self.0.decide(key, tier, charge);
        StoreFuture::boxed(async move {
            tokio::task::yield_now().await;
            Ok(decision)
        })
    }
}

#[tokio::test]
async fn asynchronous_stores_work_through_the_response_future() {
    let clock = ManualClock::new(START);
    let store = Deferred(Arc::new(MemoryStore::with_clock(clock.clone())));
    let layer = layer(&clock).with_store(store);
    let mut svc = ServiceBuilder::new().layer(layer).service(handler(Arc::default()));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(&mut svc, get("/a", "ann")).await.0.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
}

struct Broken;

impl Store for Broken {
    fn check(&self, _: &Key, _: &crate::policy::Tier, _: Charge) -> StoreFuture {
        StoreFuture::boxed(async { Err(StoreError::new("connection refused", None)) })
    }
}

#[tokio::test]
async fn a_store_fault_is_never_a_500_nor_a_429() {
    let clock = ManualClock::new(START);
    let mut deny = ServiceBuilder::new()
        .layer(layer(&clock).with_store(Broken).on_error(OnError::Deny))
        .service(handler(Arc::default()));
    let (res, body) = send(&mut deny, get("/a", "ann")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(body.contains("store-unavailable"));

    let calls = Arc::new(AtomicUsize::new(0));
    let mut allow = ServiceBuilder::new()
        .layer(layer(&clock).with_store(Broken).on_error(OnError::Allow))
        .service(handler(calls.clone()));
    for _ in 0..10 {
        let (res, _) = send(&mut allow, get("/a", "ann")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn unidentified_clients_share_one_bucket_of_the_default_tier() {
    let clock = ManualClock::new(START);
    let layer = RateLimitLayer::from_limits(limits()).with_store(MemoryStore::with_clock(clock.clone()));
    let mut svc = ServiceBuilder::new().layer(layer).service(handler(Arc::default()));
    let mut ok = 0;
    for _ in 0..8 {
        // No peer address in the extensions: ClientIp cannot recognise anyone.
        let req = Request::get("/a").body(Full::default()).unwrap();
        if send(&mut svc, req).await.0.status() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 5);
}

/// A builder chain changes one layer in place (no new shared part per call); a layer that was
/// cloned before is copied first, keeps what it had, and still shares the store and its state.
#[test]
fn builder_methods_leave_earlier_clones_alone() {
    let layer = RateLimitLayer::from_limits(limits());
    let layer = layer.headers(crate::answer::HeaderMode::None).on_error(OnError::Deny).route_cost("/x", 2);
    // The snapshot in force carries the layer's core (a bill shares it): the edited one.
    assert!(Arc::ptr_eq(&layer.snapshot().core, &layer.state.core), "one core");
    assert_eq!(layer.snapshot().core.on_error, OnError::Deny);

    let before = layer.clone();
    let after = layer.route_cost("/x", 3);
    assert_eq!(after.limits().routes().lookup(&http::Method::GET, "/x").cost, 3);
    assert_eq!(before.limits().routes().lookup(&http::Method::GET, "/x").cost, 2, "the clone keeps its own");
    assert!(Arc::ptr_eq(before.store(), after.store()), "one store");
    assert!(Arc::ptr_eq(&before.state.core.inflight, &after.state.core.inflight), "one in-flight count");
    let after = after.on_error(OnError::Allow);
    assert!(Arc::ptr_eq(&after.snapshot().core, &after.state.core), "one core");
    assert_eq!(before.state.core.on_error, OnError::Deny, "the clone keeps its own");
}

#[test]
fn route_annotations_in_code() {
    let layer = RateLimitLayer::from_limits(limits()).route_cost("/report/{id}", 3).exempt("/search");
    let limits = layer.limits();
    let routes = limits.routes();
    assert_eq!(routes.lookup(&http::Method::GET, "/report/{id}").cost, 3);
    assert!(routes.lookup(&http::Method::GET, "/search").exempt);
    let _: &dyn KeyExtractor = &*layer.key_extractor();
}

/// A handler whose answers are numbered, so a replay is recognisable; `?nostore` answers carry
/// `Cache-Control: no-store`.
fn numbered(calls: Arc<AtomicUsize>) -> Handler {
    tower::util::BoxCloneService::new(service_fn(move |req: Request<Full<Bytes>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let band = Band::of(req.extensions());
        let nostore = req.uri().query() == Some("nostore");
        async move {
            let mut res = Response::new(Full::new(Bytes::from(format!("{band:?} #{n}"))));
            res.headers_mut().insert("x-handler", http::HeaderValue::from_static("yes"));
            if nostore {
                res.headers_mut().insert("cache-control", http::HeaderValue::from_static("no-store"));
            }
            Ok::<_, Infallible>(res)
        }
    }))
}

fn pro(path: &str, user: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("x-user", user).header("x-tier", "pro").body(Full::default()).unwrap()
}

#[tokio::test]
async fn a_client_walks_down_the_bands() {
    let clock = ManualClock::new(START);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(numbered(calls.clone()));
    // pro: burst 20, 1 token/s; /search costs 5; cached below 50 %, minimal below 10 %.
    for (n, left) in [(1, "15"), (2, "10"), (3, "5")] {
        let (res, body) = send(&mut svc, pro("/search?q=1", "p")).await;
        assert_eq!(body, format!("Full #{n}"), "full band, the handler runs");
        assert_eq!(res.headers()["x-ratelimit-remaining"], left);
        assert!(res.headers().get("x-ratelimit-degraded").is_none());
    }
    // 5 tokens = 25 %: the cached band replays the last answer for 1 token.
    let (res, body) = send(&mut svc, pro("/search?q=1", "p")).await;
    assert_eq!(body, "Full #3");
    assert_eq!(res.headers()["x-ratelimit-degraded"], "cached");
    assert_eq!(res.headers()["age"], "0");
    assert_eq!(res.headers()["x-handler"], "yes", "the handler's own headers are replayed");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "4");
    clock.advance(Duration::from_secs(3));
    let (res, body) = send(&mut svc, pro("/search?q=1", "p")).await;
    assert_eq!((body.as_str(), &res.headers()["age"]), ("Full #3", &http::HeaderValue::from_static("3")));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "replays never call the handler");
    // Drain to 1 token (5 %): minimal band, the handler is told.
    for _ in 0..5 {
        send(&mut svc, pro("/search?q=1", "p")).await;
    }
    let (res, body) = send(&mut svc, pro("/search?q=1", "p")).await;
    assert_eq!(body, "Minimal #4");
    assert_eq!(res.headers()["x-ratelimit-degraded"], "minimal");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    // Nothing left: 429.
    assert_eq!(send(&mut svc, pro("/search?q=1", "p")).await.0.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn cached_answers_are_never_shared_and_no_store_is_respected() {
    let clock = ManualClock::new(START);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(numbered(calls.clone()));
    for _ in 0..3 {
        send(&mut svc, pro("/search?q=1", "a")).await;
        send(&mut svc, pro("/search?nostore", "b")).await;
    }
    // Both are in the cached band now; only `a` has a copy.
    let (res, body) = send(&mut svc, pro("/search?q=1", "a")).await;
    assert_eq!(
        (body.as_str(), &res.headers()["x-ratelimit-degraded"]),
        ("Full #5", &http::HeaderValue::from_static("cached"))
    );
    // `b`'s answers said no-store: served in full (5 tokens), not replayed.
    let (res, body) = send(&mut svc, pro("/search?nostore", "b")).await;
    assert_eq!(body, "Full #7");
    assert!(res.headers().get("x-ratelimit-degraded").is_none());
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    // `d` sends a cookie: its answers may be personal and are never kept.
    for _ in 0..3 {
        let req = Request::get("/search?q=1")
            .header("x-user", "d")
            .header("x-tier", "pro")
            .header("cookie", "session=1")
            .body(Full::default())
            .unwrap();
        send(&mut svc, req).await;
    }
    let req =
        Request::get("/search?q=1").header("x-user", "d").header("x-tier", "pro").header("cookie", "s=1");
    let (res, _) = send(&mut svc, req.body(Full::default()).unwrap()).await;
    assert!(res.headers().get("x-ratelimit-degraded").is_none(), "no copy: served in full");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    // `c` asks for `a`'s URL: no copy of its own, so it gets its own full answer.
    let (res, body) = send(&mut svc, pro("/search?q=1", "c")).await;
    assert_eq!(body, "Full #12");
    assert!(res.headers().get("x-ratelimit-degraded").is_none());
    // A different query is a different answer: no copy, so the full cost (5) is due, and `a`
    // has only 4 tokens left.
    let (res, _) = send(&mut svc, pro("/search?q=2", "a")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["x-ratelimit-remaining"], "4");
    assert_eq!(calls.load(Ordering::SeqCst), 12);
}

fn concurrency_limits() -> Limits {
    Limits::builder()
        .tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1_000u32))).concurrency(2))
        .route_concurrency("/slow", 1)
        .build()
        .unwrap()
}

/// A handler that keeps user `u`'s requests in flight until released; others pass at once.
fn gated(gate: Arc<tokio::sync::Semaphore>) -> Handler {
    tower::util::BoxCloneService::new(service_fn(move |req: Request<Full<Bytes>>| {
        let gate = gate.clone();
        let wait = req.headers()["x-user"] == "u" && req.uri().path() != "/other";
        async move {
            if wait {
                gate.acquire().await.unwrap().forget();
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
        }
    }))
}

#[tokio::test]
async fn concurrency_slots_are_held_until_the_body_is_sent_and_always_come_back() {
    let clock = ManualClock::new(START);
    let layer = RateLimitLayer::from_limits(concurrency_limits())
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let svc = ServiceBuilder::new().layer(layer).service(gated(gate.clone()));
    let call = |path: &str| {
        let mut svc = svc.clone();
        let req = get(path, "u");
        async move { svc.ready().await.unwrap().call(req).await.unwrap() }
    };
    let first = tokio::spawn(call("/a"));
    let second = tokio::spawn(call("/a"));
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(0)).await;
    // Give the two spawned requests a chance to enter the handler.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let third = tokio::time::timeout(Duration::from_secs(5), call("/a")).await.expect("refused at once");
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = third.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("too-many-in-flight"));

    // A dropped request gives its slot back.
    first.abort();
    let _ = first.await;
    let fourth = tokio::spawn(call("/a"));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(call("/a").await.status(), StatusCode::TOO_MANY_REQUESTS);

    // A finished response holds its slot until its body is read.
    gate.add_permits(2);
    let second = second.await.unwrap();
    let fourth = fourth.await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    drop(fourth); // dropped without reading: its slot comes back
    gate.add_permits(1);
    let extra = call("/a").await;
    assert_eq!(extra.status(), StatusCode::OK, "one slot (fourth's) is free");
    gate.add_permits(1);
    assert_eq!(
        call("/a").await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "second and extra still hold theirs"
    );
    second.into_body().collect().await.unwrap();
    drop(extra);
    gate.add_permits(2);
    assert_eq!(call("/a").await.status(), StatusCode::OK);
    assert_eq!(call("/a").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_route_can_cap_in_flight_requests_per_key() {
    let clock = ManualClock::new(START);
    let layer = RateLimitLayer::from_limits(concurrency_limits())
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let svc = ServiceBuilder::new().layer(layer).service(gated(gate.clone()));
    let call = |path: &str, user: &str| {
        let mut svc = svc.clone();
        let req = get(path, user);
        async move { svc.ready().await.unwrap().call(req).await.unwrap() }
    };
    let held = tokio::spawn(call("/slow", "u"));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(call("/slow", "u").await.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another key is not affected; neither is another route of the same key.
    assert_eq!(call("/slow", "v").await.status(), StatusCode::OK);
    assert_eq!(call("/other", "u").await.status(), StatusCode::OK);
    held.abort();
    let _ = held.await;
    gate.add_permits(1);
    assert_eq!(call("/slow", "u").await.status(), StatusCode::OK);
}

/// Issue 11, item 5: two limiters sharing one store shared buckets by policy position, so the
/// strict limiter's refusal (Retry-After an hour) answered the loose limiter's client.
#[tokio::test]
async fn limiters_sharing_a_store_keep_their_own_buckets() {
    let clock = ManualClock::new(START);
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let one_tier = |quota| Limits::builder().tier("anonymous", TierSpec::new(quota)).build().unwrap();
    let build = |limits| {
        let layer = RateLimitLayer::from_limits(limits)
            .with_store(store.clone())
            .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
        ServiceBuilder::new().layer(layer).service(handler(Arc::default()))
    };
    let mut strict = build(one_tier(Quota::per_hour(nonzero!(1u32))));
    let mut loose = build(one_tier(Quota::per_second(nonzero!(100u32))));
    assert_eq!(send(&mut strict, get("/a", "ann")).await.0.status(), StatusCode::OK);
    let (refused, _) = send(&mut strict, get("/a", "ann")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "3600");
    for left in (90..100).rev() {
        let (res, _) = send(&mut loose, get("/a", "ann")).await;
        assert_eq!(res.status(), StatusCode::OK, "the loose limiter's own bucket");
        assert_eq!(res.headers()["x-ratelimit-remaining"], left.to_string().as_str());
    }
}

fn limits_with(burst: std::num::NonZeroU32, mode: crate::policy::Mode) -> Limits {
    Limits::builder()
        .mode(mode)
        .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(burst)))
        .route("/search", 2)
        .route("/huge", 50)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_reload_takes_effect_at_once_for_every_clone_and_keeps_what_was_used() {
    let clock = ManualClock::new(START);
    let layer = RateLimitLayer::from_limits(limits_with(nonzero!(5u32), crate::policy::Mode::Enforce))
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
    let reloader = layer.reloader();
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(handler(Arc::default()));
    for _ in 0..3 {
        assert_eq!(send(&mut svc, get("/a", "ann")).await.0.status(), StatusCode::OK);
    }
    reloader.reload_limits(limits_with(nonzero!(20u32), crate::policy::Mode::Enforce));
    let (res, _) = send(&mut svc.clone(), get("/a", "ann")).await;
    assert_eq!(res.headers()["x-ratelimit-limit"], "20");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "16", "3 of 5 used: 17 left, then this one");
    assert_eq!(layer.limits().generation(), 1);
    assert_eq!(reloader.stats().ok, 1);
}

#[tokio::test]
async fn a_request_in_flight_finishes_under_the_limits_it_started_with() {
    let clock = ManualClock::new(START);
    let store = Deferred(Arc::new(MemoryStore::with_clock(clock.clone())));
    let layer = RateLimitLayer::from_limits(limits_with(nonzero!(5u32), crate::policy::Mode::Enforce))
        .with_store(store)
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
    let reloader = layer.reloader();
    let mut svc = ServiceBuilder::new().layer(layer).service(handler(Arc::default()));
    // Planned (and decided) under burst 5; its answer is written after the reload.
    let pending = svc.ready().await.unwrap().call(get("/a", "ann"));
    reloader.reload_limits(limits_with(nonzero!(20u32), crate::policy::Mode::Enforce));
    let res = pending.await.unwrap();
    assert_eq!(res.headers()["x-ratelimit-limit"], "5");
    assert_eq!(res.headers()["ratelimit-policy"], "\"anonymous\";q=5;w=10");
    let (next, _) = send(&mut svc, get("/a", "ann")).await;
    assert_eq!(next.headers()["x-ratelimit-limit"], "20");
    assert_eq!(next.headers()["x-ratelimit-remaining"], "18");
}

/// A store that counts its calls.
#[derive(Clone)]
struct Counting(Arc<MemoryStore<ManualClock>>, Arc<AtomicUsize>);

impl Store for Counting {
    fn check(&self, key: &Key, tier: &crate::policy::Tier, charge: Charge) -> StoreFuture {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.check(key, tier, charge)
    }
}

#[tokio::test]
async fn allowed_clients_are_never_limited_nor_charged_and_cost_no_store_call() {
    let clock = ManualClock::new(START);
    let calls = Arc::new(AtomicUsize::new(0));
    let store = Counting(Arc::new(MemoryStore::with_clock(clock.clone())), calls.clone());
    let allow = crate::key::AllowList::new()
        .ips(["10.20.0.0/16".parse().unwrap()])
        .keys(["monitor-key"])
        .resolver(crate::key::ClientIp::new().trusted(["192.0.2.0/24".parse().unwrap()]));
    let layer = RateLimitLayer::from_limits(limits_with(nonzero!(2u32), crate::policy::Mode::Enforce))
        .with_store(store)
        .allow(allow);
    let mut svc = ServiceBuilder::new().layer(layer).service(handler(Arc::default()));
    let from = |peer: &str, headers: &[(&str, &str)]| {
        let mut req = Request::get("/a").body(Full::default()).unwrap();
        for (name, value) in headers {
            req.headers_mut()
                .insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        req.extensions_mut().insert(peer.parse::<std::net::SocketAddr>().unwrap());
        req
    };
    for _ in 0..20 {
        for req in [
            from("10.20.1.1:5000", &[]),
            from("192.0.2.9:5000", &[("x-forwarded-for", "10.20.7.7")]),
            from("203.0.113.5:5000", &[("x-api-key", "monitor-key")]),
        ] {
            let (res, _) = send(&mut svc, req).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert!(
                res.headers().get("x-ratelimit-limit").is_none() && res.headers().get("ratelimit").is_none()
            );
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no store call for allowed clients");
    // A forged forwarding header from an untrusted peer is no way in.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let res = send(&mut svc, from("203.0.113.5:5000", &[("x-forwarded-for", "10.20.7.7")])).await.0;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test]
async fn shadow_mode_never_refuses_never_adds_headers_and_counts_each_would_be_refusal() {
    use crate::observe::{Event, Outcome};
    let clock = ManualClock::new(START);
    let shadowed = Arc::new(AtomicUsize::new(0));
    let count = shadowed.clone();
    let layer = RateLimitLayer::from_limits(limits_with(nonzero!(3u32), crate::policy::Mode::Shadow))
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>)
        .observer(move |event: &Event<'_>| {
            if let Outcome::ShadowRejected(_) = event.outcome {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(handler(calls.clone()));
    for path in ["/a", "/a", "/a", "/a", "/huge", "/a"] {
        let (res, _) = send(&mut svc, get(path, "ann")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()
                .iter()
                .all(|(name, _)| !name.as_str().contains("ratelimit") && name != "retry-after"),
            "{:?}",
            res.headers()
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6, "the handler answered every request");
    assert_eq!(shadowed.load(Ordering::SeqCst), 3, "two 429s and one 403 under enforcement");
    // The standing is what enforcement would have left: 3 used, the refusals charged nothing.
    let mut req = get("/usage", "ann").into_parts().0;
    req.extensions.insert(Client::new(Key::new("ann")));
    let standing = layer.standing(&req).await.unwrap();
    assert_eq!(standing.decision.policies()[0].remaining, 0);
    clock.advance(Duration::from_secs(2));
    assert_eq!(layer.standing(&req).await.unwrap().decision.policies()[0].remaining, 1);
}

/// What a test's log subscriber wrote.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Each would-be refusal is one log line at `info` under the target `tollgate::shadow`, which
/// an operator can filter on its own (here: `tollgate::shadow=info` with everything else off),
/// naming the tier, the route and the policy, and never the whole API key.
#[tokio::test]
async fn shadow_mode_logs_each_would_be_refusal_under_a_target_of_its_own() {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("off,tollgate::shadow=info"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let clock = ManualClock::new(START);
    let layer = RateLimitLayer::from_limits(limits_with(nonzero!(2u32), crate::policy::Mode::Shadow))
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
    let mut svc = ServiceBuilder::new().layer(layer).service(handler(Arc::default()));
    let key = "secret-api-key-0123456789";
    for path in ["/a", "/a", "/a", "/search", "/huge"] {
        assert_eq!(send(&mut svc, get(path, key)).await.0.status(), StatusCode::OK);
    }
    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "one line per would-be refusal (two 429s, one 403):\n{log}");
    for line in &lines {
        assert!(line.contains(" INFO tollgate::shadow:"), "{line}");
        assert!(line.contains("would have refused") && line.contains("tier=\"anonymous\""), "{line}");
        assert!(line.contains("policy=\"anonymous\"") && line.contains("key:…6789"), "{line}");
        assert!(!line.contains(key), "never the whole key: {line}");
    }
    assert!(lines[2].contains("route=\"/huge\"") && lines[2].contains("over capacity (403)"), "{}", lines[2]);
}

/// A tier in shadow mode moves to enforcement by a reload, its clients' state intact.
#[tokio::test]
async fn a_reload_moves_a_tier_from_shadow_to_enforce_with_its_state() {
    let clock = ManualClock::new(START);
    let layer = RateLimitLayer::from_limits(limits_with(nonzero!(3u32), crate::policy::Mode::Shadow))
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
    let reloader = layer.reloader();
    let mut svc = ServiceBuilder::new().layer(layer).service(handler(Arc::default()));
    for _ in 0..5 {
        assert_eq!(send(&mut svc, get("/a", "ann")).await.0.status(), StatusCode::OK);
    }
    reloader.reload_limits(limits_with(nonzero!(3u32), crate::policy::Mode::Enforce));
    assert_eq!(send(&mut svc, get("/a", "ann")).await.0.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(&mut svc, get("/a", "bob")).await.0.status(), StatusCode::OK);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Shadow mode decides exactly as enforcement: for any sequence of requests (clients,
    /// routes of several costs, time passing), a shadow layer counts a would-be refusal exactly
    /// where an enforcing layer answers 429 or 403, and forwards everything.
    #[test]
    fn shadow_counts_exactly_the_refusals_enforcement_makes(
        steps in proptest::collection::vec((0usize..3, 0usize..3, 0u64..1_500), 1..80),
    ) {
        use crate::observe::{Event, Outcome};
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let clock = ManualClock::new(START);
            let build = |mode| RateLimitLayer::from_limits(limits_with(nonzero!(4u32), mode))
                .with_store(MemoryStore::with_clock(clock.clone()))
                .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
            let mut enforce = ServiceBuilder::new().layer(build(crate::policy::Mode::Enforce)).service(handler(Arc::default()));
            let shadowed = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = shadowed.clone();
            let shadow_layer = build(crate::policy::Mode::Shadow).observer(move |event: &Event<'_>| {
                if let Outcome::ShadowRejected(_) = event.outcome {
                    seen.lock().unwrap().push(event.route.to_owned());
                }
            });
            let mut shadow = ServiceBuilder::new().layer(shadow_layer).service(handler(Arc::default()));
            let (mut refused, mut expected) = (0, 0);
            for (user, route, advance_ms) in steps {
                clock.advance(Duration::from_millis(advance_ms));
                let path = ["/a", "/search", "/huge"][route];
                let user = ["ann", "bob", "cid"][user];
                let enforced = send(&mut enforce, get(path, user)).await.0.status();
                let before = shadowed.lock().unwrap().len();
                let shadowed_now = send(&mut shadow, get(path, user)).await.0;
                assert_eq!(shadowed_now.status(), StatusCode::OK);
                let counted = shadowed.lock().unwrap().len() - before;
                if enforced != StatusCode::OK {
                    expected += 1;
                }
                refused += counted;
                assert_eq!(counted, usize::from(enforced != StatusCode::OK), "{path} for {user}: {enforced}");
            }
            assert_eq!(refused, expected);
        });
    }
}

/// In shadow mode, a client over its concurrency limit is forwarded (the handler answers) and
/// the would-be 429 is counted, with no decision behind it.
#[tokio::test]
async fn shadow_mode_counts_a_concurrency_refusal_and_forwards_it() {
    use crate::observe::{Event, Outcome};
    let clock = ManualClock::new(START);
    let limits = Limits::builder()
        .mode(crate::policy::Mode::Shadow)
        .tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1_000u32))).concurrency(2))
        .route_concurrency("/slow", 1)
        .build()
        .unwrap();
    let shadowed = Arc::new(AtomicUsize::new(0));
    let count = shadowed.clone();
    let layer = RateLimitLayer::from_limits(limits)
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>)
        .observer(move |event: &Event<'_>| {
            if let Outcome::ShadowRejected(None) = event.outcome {
                assert_eq!(event.mode, crate::policy::Mode::Shadow);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let svc = ServiceBuilder::new().layer(layer).service(gated(gate.clone()));
    let call = |path: &str, user: &str| {
        let mut svc = svc.clone();
        let req = get(path, user);
        async move { svc.ready().await.unwrap().call(req).await.unwrap() }
    };
    let held = tokio::spawn(call("/slow", "u"));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let second = tokio::spawn(call("/slow", "u"));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(shadowed.load(Ordering::SeqCst), 1, "the second /slow would have been a 429");
    gate.add_permits(2);
    assert_eq!(held.await.unwrap().status(), StatusCode::OK);
    let res = second.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("x-ratelimit-limit").is_none());
}

/// Issue 11, finding 8: a request to `/usage` (cost 0) made two store calls, one by the layer
/// for its headers and one by the handler for the standing it shows. The layer now hands the
/// standing it read to the handler: one call, and the page and the headers agree.
#[tokio::test]
async fn a_usage_page_behind_the_layer_costs_one_store_call() {
    let clock = ManualClock::new(START);
    let calls = Arc::new(AtomicUsize::new(0));
    let store = Counting(Arc::new(MemoryStore::with_clock(clock.clone())), calls.clone());
    let layer = RateLimitLayer::from_limits(limits())
        .with_store(store)
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>);
    let page = layer.clone();
    let usage = service_fn(move |req: Request<Full<Bytes>>| {
        let layer = page.clone();
        async move {
            let (parts, _) = req.into_parts();
            if parts.uri.path() != "/usage" {
                return Ok::<_, Infallible>(Response::new(Full::default()));
            }
            let standing = layer.standing(&parts).await.unwrap();
            let remaining = standing.decision.policies()[0].remaining;
            Ok(Response::new(Full::new(Bytes::from(remaining.to_string()))))
        }
    });
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(usage);
    let (res, _) = send(&mut svc, get("/a", "ann")).await;
    assert_eq!(res.headers()["x-ratelimit-remaining"], "4");
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1, "a charged request: the layer's call alone");
    for _ in 0..10 {
        let (res, body) = send(&mut svc, get("/usage", "ann")).await;
        assert_eq!((res.headers()["x-ratelimit-remaining"].to_str().unwrap(), body.as_str()), ("4", "4"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10, "one store call per /usage, not two");
    // Outside the layer (or behind another one) the standing is read from the store.
    let (parts, _) = get("/usage", "ann").into_parts();
    assert_eq!(layer.standing(&parts).await.unwrap().decision.policies()[0].remaining, 4);
    assert_eq!(calls.load(Ordering::SeqCst), 11);
}

/// One step of a layer's life, for the property test below.
#[derive(Debug, Clone)]
enum LayerStep {
    /// A client (0 or 1) asks for a route of this cost (1 to 3).
    Request(usize, u64),
    /// Time passes (milliseconds).
    Wait(u64),
    /// The reloader puts new limits in force: tokens per minute, burst, an optional daily
    /// quota, shadow mode.
    Reload(u32, u32, Option<u64>, bool),
}

fn layer_limits(per_minute: u32, burst: u32, daily: Option<u64>, shadow: bool) -> Limits {
    let quota = Quota::per_minute(std::num::NonZeroU32::new(per_minute).unwrap())
        .allow_burst(std::num::NonZeroU32::new(burst).unwrap());
    let spec = TierSpec::new(quota);
    let spec = match daily {
        Some(daily) => spec.daily(daily),
        None => spec,
    };
    let mode = if shadow { crate::policy::Mode::Shadow } else { crate::policy::Mode::Enforce };
    Limits::builder().mode(mode).tier("anonymous", spec).route("/c2", 2).route("/c3", 3).build().unwrap()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Through the whole layer and its reloader, with a manual clock: for any sequence of
    /// requests and reloads (rates, bursts, a daily quota coming and going, enforcement and
    /// shadow mode in turn), no client is admitted (charged, in either mode) more than the
    /// limits in force allow over any interval: the largest burst in force during it plus what
    /// the fastest rate in force refills over its length. In enforcement mode, what the
    /// handler answers is exactly what was admitted.
    #[test]
    fn through_the_reloader_no_client_gets_more_than_the_limits_in_force_allow(
        steps in proptest::collection::vec(proptest::prop_oneof![
            6 => (0usize..2, 1u64..4).prop_map(|(who, cost)| LayerStep::Request(who, cost)),
            3 => (0u64..3_000).prop_map(LayerStep::Wait),
            1 => (1u32..240, 1u32..12, proptest::option::of(3u64..40), proptest::bool::ANY)
                .prop_map(|(r, b, d, s)| LayerStep::Reload(r, b, d, s)),
        ], 1..150),
    ) {
        use crate::observe::{Event, Outcome};
        use crate::clock::Clock as _;
        use proptest::prelude::{prop_assert, TestCaseError};
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let clock = ManualClock::new(START);
            // Admissions per client as (time, cost), from the observer.
            let admitted = Arc::new(std::sync::Mutex::new([Vec::new(), Vec::new()]));
            let seen = admitted.clone();
            let at = clock.clone();
            let layer = RateLimitLayer::from_limits(layer_limits(60, 5, None, false))
                .with_store(MemoryStore::with_clock(clock.clone()))
                .extractor(by_header as fn(&http::request::Parts) -> Option<Client>)
                .observer(move |event: &Event<'_>| {
                    if let Outcome::Admitted(_) = event.outcome {
                        let who = usize::from(event.key.name() == Some("u1"));
                        seen.lock().unwrap()[who].push((at.now(), event.cost));
                    }
                });
            let reloader = layer.reloader();
            let mut svc = ServiceBuilder::new().layer(layer).service(handler(Arc::default()));
            // (from, tokens per minute, burst): the limits in force from then on.
            let mut eras = vec![(clock.now(), 60u64, 5u64)];
            let mut shadow = false;
            for step in steps {
                match step {
                    LayerStep::Request(who, cost) => {
                        let path = ["/c1", "/c2", "/c3"][cost as usize - 1];
                        let before = admitted.lock().unwrap()[who].len();
                        let (res, _) = send(&mut svc, get(path, ["u0", "u1"][who])).await;
                        let now_admitted = admitted.lock().unwrap()[who].len() > before;
                        if shadow {
                            assert_eq!(res.status(), StatusCode::OK, "shadow mode forwards everything");
                        } else {
                            assert_eq!(res.status() == StatusCode::OK, now_admitted, "{path}: {}", res.status());
                        }
                    }
                    LayerStep::Wait(ms) => clock.advance(Duration::from_millis(ms)),
                    LayerStep::Reload(rate, burst, daily, s) => {
                        reloader.reload_limits(layer_limits(rate, burst, daily, s));
                        shadow = s;
                        eras.push((clock.now(), u64::from(rate), u64::from(burst)));
                    }
                }
            }
            for admissions in admitted.lock().unwrap().iter() {
                for (i, &(start, _)) in admissions.iter().enumerate() {
                    let mut sum = 0;
                    for &(end, cost) in &admissions[i..] {
                        sum += cost;
                        let (mut burst, mut per_minute) = (0, 0);
                        for (j, &(from, rate, b)) in eras.iter().enumerate() {
                            let until = eras.get(j + 1).map(|e| e.0);
                            if from <= end && until.is_none_or(|next| next >= start) {
                                burst = burst.max(b);
                                per_minute = per_minute.max(rate);
                            }
                        }
                        let span = (end - start).as_secs_f64();
                        let bound = burst as f64 + span * per_minute as f64 / 60.0;
                        prop_assert!(
                            sum as f64 <= bound + 1e-6,
                            "{sum} admitted in {span} s, bound {bound} (eras {eras:?}, admitted {admissions:?})"
                        );
                    }
                }
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}

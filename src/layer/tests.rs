use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
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
        .tier("anonymous", TierSpec::new(Quota::per_minute(30, 5).unwrap()))
        .tier(
            "free",
            TierSpec::new(Quota::per_minute(60, 10).unwrap())
                .daily(12)
                .upgrade_url("https://example.com/pricing"),
        )
        .tier("pro", TierSpec::new(Quota::per_minute(60, 20).unwrap()))
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
    assert_eq!(res.headers()["ratelimit"], "\"anonymous\";r=0;t=10");
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

#[tokio::test]
async fn low_tokens_ask_the_handler_for_a_minimal_answer() {
    let clock = ManualClock::new(START);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new().layer(layer(&clock)).service(handler(calls.clone()));
    let req = || {
        Request::get("/search").header("x-user", "p").header("x-tier", "pro").body(Full::default()).unwrap()
    };
    // 20 tokens: four full searches (5 each) leave none.
    for _ in 0..4 {
        let (res, body) = send(&mut svc, req()).await;
        assert_eq!((res.status(), body.as_str()), (StatusCode::OK, "Full"));
        assert!(res.headers().get("x-ratelimit-degraded").is_none());
    }
    // Nothing left: not even a minimal answer can be paid.
    assert_eq!(send(&mut svc, req()).await.0.status(), StatusCode::TOO_MANY_REQUESTS);
    // One token back = 5 % of the burst, below minimal_below: the handler is told.
    clock.advance(Duration::from_secs(1));
    let (res, body) = send(&mut svc, req()).await;
    assert_eq!((res.status(), body.as_str()), (StatusCode::OK, "Minimal"));
    assert_eq!(res.headers()["x-ratelimit-degraded"], "minimal");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0", "a minimal answer costs 1 token");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // With 2 tokens (10 %), not below minimal_below: a full search (5) is refused.
    clock.advance(Duration::from_secs(2));
    assert_eq!(send(&mut svc, req()).await.0.status(), StatusCode::TOO_MANY_REQUESTS);
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

#[test]
fn route_annotations_in_code() {
    let layer = RateLimitLayer::from_limits(limits()).route_cost("/report/{id}", 3).exempt("/search");
    let routes = layer.limits().routes();
    assert_eq!(routes.lookup(&http::Method::GET, "/report/{id}").cost, 3);
    assert!(routes.lookup(&http::Method::GET, "/search").exempt);
    let _: &dyn KeyExtractor = layer.key_extractor();
}

//! Holding and settling through the layer: virtual time for the timers (`start_paused`), a
//! manual clock for the store.

use nonzero_ext::nonzero;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

use crate::algorithm::{Algorithm, Quota};
use crate::clock::{ManualClock, Nanos};
use crate::key::{Client, Key};
use crate::policy::{ChargeOn, Limits, TierSpec};
use crate::store::MemoryStore;
use crate::{ActualCost, RateLimitLayer};

const START: Duration = Duration::from_secs(1_700_000_000);

fn by_header(parts: &http::request::Parts) -> Option<Client> {
    let user = parts.headers.get("x-user")?.to_str().ok()?;
    Some(Client::new(Key::new(user)))
}

type Layer = RateLimitLayer<fn(&http::request::Parts) -> Option<Client>>;

fn layer(limits: Limits, clock: &ManualClock) -> Layer {
    RateLimitLayer::from_limits(limits)
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_header as fn(&http::request::Parts) -> Option<Client>)
}

/// 5 a second (a token every 200 ms), burst 2, held up to a second.
fn batch(algorithm: Algorithm) -> Limits {
    let quota = Quota::per_second(nonzero!(5u32)).allow_burst(nonzero!(2u32));
    Limits::builder()
        .tier("anonymous", TierSpec::new(quota).algorithm(algorithm).max_delay(Nanos::from_millis(1_000)))
        .route("/gen", 5)
        .route_charged("POST /login", 1, ChargeOn::Failures)
        .build()
        .unwrap()
}

/// A handler that notes when (virtual time since `origin`) it ran, and answers with the status
/// and actual cost the request asks for (`x-status`, `x-cost`).
fn handler(
    origin: Instant,
    ran: Arc<Mutex<Vec<(String, u128)>>>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    service_fn(move |req: Request<Full<Bytes>>| {
        let at = origin.elapsed().as_millis();
        let id = req.headers().get("x-id").map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        ran.lock().unwrap().push((id, at));
        let status = req.headers().get("x-status").map_or(200, |v| v.to_str().unwrap().parse().unwrap());
        let cost = req.headers().get("x-cost").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(cost) = cost {
                response.extensions_mut().insert(ActualCost(cost));
            }
            Ok::<_, Infallible>(response)
        }
    })
}

fn request(method: &str, path: &str, id: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-user", "ann")
        .header("x-id", id)
        .body(Full::default())
        .unwrap()
}

fn header<B>(res: &Response<B>, name: &str) -> String {
    res.headers()[name].to_str().unwrap().to_owned()
}

/// Held requests come out in arrival order, one emission interval apart, up to the delay;
/// the next one (its wait beyond the delay) is refused at once with the usual 429.
#[tokio::test(start_paused = true)]
async fn held_requests_are_released_in_order_at_the_rate() {
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingLog] {
        let clock = ManualClock::new(START);
        let ran = Arc::new(Mutex::new(Vec::new()));
        let origin = Instant::now();
        let mut svc = ServiceBuilder::new()
            .layer(layer(batch(algorithm), &clock))
            .service(handler(origin, ran.clone()));
        let mut pending = Vec::new();
        for i in 0..8 {
            let fut = svc.ready().await.unwrap().call(request("GET", "/a", &i.to_string()));
            pending.push(fut);
        }
        let answers = join_all(pending).await;
        let statuses: Vec<u16> = answers.iter().map(|r| r.as_ref().unwrap().status().as_u16()).collect();
        let ran = ran.lock().unwrap().clone();
        match algorithm {
            // 2 at once, then one every 200 ms up to the delay: rate × delay = 5 held.
            Algorithm::TokenBucket => {
                assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 429], "{algorithm:?}");
                let expected: Vec<(String, u128)> = [0, 0, 200, 400, 600, 800, 1_000]
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| (i.to_string(), t))
                    .collect();
                assert_eq!(ran, expected, "{algorithm:?}");
            }
            // The exact window (400 ms): 2 now, 2 when those leave, 2 more 400 ms later.
            _ => {
                assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429], "{algorithm:?}");
                let expected: Vec<(String, u128)> =
                    [0, 0, 400, 400, 800, 800].iter().enumerate().map(|(i, &t)| (i.to_string(), t)).collect();
                assert_eq!(ran, expected, "{algorithm:?}");
            }
        }
        let refused = answers.last().unwrap().as_ref().unwrap();
        assert!(refused.headers().contains_key("retry-after"));
    }
}

/// A held request whose client goes away (its response future dropped) gives its reservation
/// back: the next request takes its place in the queue.
#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_held_gives_its_reservation_back() {
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingLog] {
        let clock = ManualClock::new(START);
        let ran = Arc::new(Mutex::new(Vec::new()));
        let origin = Instant::now();
        let mut svc = ServiceBuilder::new()
            .layer(layer(batch(algorithm), &clock))
            .service(handler(origin, ran.clone()));
        let (a, b) = (
            svc.ready().await.unwrap().call(request("GET", "/a", "a")),
            svc.ready().await.unwrap().call(request("GET", "/a", "b")),
        ); // the burst
        let held = svc.ready().await.unwrap().call(request("GET", "/a", "held"));
        let behind = svc.ready().await.unwrap().call(request("GET", "/a", "behind"));
        // The held request's client goes away before its turn.
        let mut held = Box::pin(held);
        assert!(futures_util::FutureExt::now_or_never(held.as_mut()).is_none(), "held");
        drop(held);
        let last = svc.ready().await.unwrap().call(request("GET", "/a", "last"));
        let answers = join_all([Box::pin(a), Box::pin(b), Box::pin(behind), Box::pin(last)]).await;
        assert!(answers.iter().all(|r| r.as_ref().unwrap().status() == StatusCode::OK));
        let ran = ran.lock().unwrap().clone();
        let when = |id: &str| ran.iter().find(|(i, _)| i == id).map(|(_, t)| *t);
        assert_eq!(when("held"), None, "never forwarded");
        match algorithm {
            Algorithm::TokenBucket => {
                assert_eq!(when("behind"), Some(400));
                assert_eq!(when("last"), Some(400), "in the place given back, not at 600 ms");
            }
            _ => {
                assert_eq!(when("behind"), Some(400));
                assert_eq!(when("last"), Some(400), "the dropped entry left the log");
            }
        }
    }
}

/// The handler's reported cost is settled before the headers are written: a refund, more, a
/// debt that later requests wait out.
#[tokio::test]
async fn costs_reported_by_the_handler_are_settled_before_the_headers() {
    let limits = Limits::builder()
        .tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)).allow_burst(nonzero!(10u32))))
        .route("/gen", 5)
        .build()
        .unwrap();
    let clock = ManualClock::new(START);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut svc = ServiceBuilder::new().layer(layer(limits, &clock)).service(handler(Instant::now(), ran));
    let gen = |cost: Option<u64>| {
        let mut req = request("GET", "/gen", "");
        if let Some(cost) = cost {
            req.headers_mut().insert("x-cost", cost.into());
        }
        req
    };
    // Charged 5 up front; it cost 2: 8 left, on this very answer.
    let res = svc.ready().await.unwrap().call(gen(Some(2))).await.unwrap();
    assert_eq!(header(&res, "x-ratelimit-remaining"), "8");
    assert_eq!(header(&res, "ratelimit"), "\"anonymous\";r=8;t=1");
    // No report: the route's cost stands.
    let res = svc.ready().await.unwrap().call(gen(None)).await.unwrap();
    assert_eq!(header(&res, "x-ratelimit-remaining"), "3");
    // Two seconds later (5 left) it cost 15: 10 more than charged, all of them owed.
    clock.advance(Duration::from_secs(2));
    let res = svc.ready().await.unwrap().call(gen(Some(15))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    // A cost-1 request waits for the debt and its own token: 11 s, and Retry-After says so.
    let res = svc.ready().await.unwrap().call(request("GET", "/a", "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "11");
    clock.advance(Duration::from_secs(11) - Duration::from_nanos(1));
    let res = svc.ready().await.unwrap().call(request("GET", "/a", "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_nanos(1));
    let res = svc.ready().await.unwrap().call(request("GET", "/a", "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// `charge = "failures"`: a success is refunded as soon as its head is known, a failure keeps
/// its charge, so the right password is never locked out by earlier successes.
#[tokio::test]
async fn a_login_route_charges_only_failures() {
    let clock = ManualClock::new(START);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut svc = ServiceBuilder::new()
        .layer(layer(batch(Algorithm::TokenBucket), &clock))
        .service(handler(Instant::now(), ran));
    let login = |status: u16| {
        let mut req = request("POST", "/login", "");
        req.headers_mut().insert("x-status", status.into());
        req
    };
    for _ in 0..5 {
        let res = svc.ready().await.unwrap().call(login(200)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-ratelimit-remaining"), "2", "a success costs nothing");
    }
    let res = svc.ready().await.unwrap().call(login(401)).await.unwrap();
    assert_eq!((res.status(), header(&res, "x-ratelimit-remaining")), (StatusCode::UNAUTHORIZED, "1".into()));
    let res = svc.ready().await.unwrap().call(login(401)).await.unwrap();
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
}

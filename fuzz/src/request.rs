//! Whole requests through an axum app behind the layer: the fifth boundary, where everything a
//! client sends (method, path, query, every header, its address) meets the route table, the
//! key extractors, the allow list, the degradation bands and the response cache at once.

use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::Router;
use http::header::VARY;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tollgate::clock::ManualClock;
use tollgate::degrade::Band;
use tollgate::store::MemoryStore;
use tollgate::{Config, RateLimitLayer};
use tower::ServiceExt;

use super::{header_map, runtime, Line, Peer};

const CONFIG: &str = r#"
    trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
    [tiers.anonymous]
    requests_per_minute = 60
    burst = 6
    [tiers.pro]
    requests_per_minute = 600
    burst = 20
    requests_per_day = 1000
    [routes]
    "/api/simple" = 1
    "/api/search" = 5
    "POST /api/generate" = 20
    "/usage" = 0
    "/items/{id}" = 2
    [exempt]
    routes = ["/health"]
    [api_keys]
    "pro-key" = "pro"
    "anon-key" = "anonymous"
    [allow]
    ips = ["10.99.0.0/16"]
    keys = ["monitor-key"]
    [degrade]
    routes = ["/api/search", "/items/{id}"]
    cached_below = 0.5
    minimal_below = 0.1
"#;

/// The limiter's own identified clients.
const KEYS: [&str; 2] = ["pro-key", "anon-key"];

const PATHS: [&str; 9] = [
    "/items/1",
    "/api/search?q=a",
    "/api/simple",
    "/api/search",
    "/items/2?x=y",
    "/api/generate",
    "/usage",
    "/health",
    "/nowhere",
];

const HEADERS: [&str; 10] = [
    "x-api-key",
    "x-forwarded-for",
    "x-fuzz-vary",
    "x-fuzz-status",
    "accept-language",
    "x-app-user",
    "cookie",
    "authorization",
    "range",
    "forwarded",
];

#[derive(Debug, Arbitrary)]
struct Step {
    method: u8,
    path: u8,
    /// Who asks: one of [`KEYS`], the allowed key, or no key of its own (then `lines` may
    /// still carry any `X-API-Key`).
    key: u8,
    /// Milliseconds the clock moves before this request.
    wait_ms: u16,
    peer: Peer,
    lines: Vec<Line>,
    raw_method: Vec<u8>,
    raw_target: Vec<u8>,
}

/// The request headers the handler's answer to `headers` varies on: `x-fuzz-vary` and
/// `x-fuzz-status` always, and the names `x-fuzz-vary` lists.
fn varied(headers: &HeaderMap) -> (Vec<HeaderName>, Option<HeaderValue>) {
    let mut names = vec![HeaderName::from_static("x-fuzz-vary"), HeaderName::from_static("x-fuzz-status")];
    let listed = headers.get("x-fuzz-vary").cloned();
    if let Some(listed) = &listed {
        for name in listed.as_bytes().split(|&b| b == b',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim_ascii()) {
                names.push(name);
            }
        }
    }
    (names, listed)
}

/// What the handler answers: the method, the target, and the values of every header the
/// answer varies on, in a status the request may choose among 2xx ones. A pure function of
/// the request, so a replayed copy can be checked against it.
fn answer(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    band: Band,
) -> (StatusCode, Option<HeaderValue>, Vec<u8>) {
    let (names, listed) = varied(headers);
    let status = headers
        .get("x-fuzz-status")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(200 + s % 7).ok())
        .unwrap_or(StatusCode::OK);
    let mut body = format!("{method} {target} {}\n", band.as_str()).into_bytes();
    for name in &names {
        body.extend_from_slice(name.as_str().as_bytes());
        for value in headers.get_all(name) {
            body.push(b'=');
            body.extend_from_slice(value.as_bytes());
        }
        body.push(b'\n');
    }
    let mut vary = b"x-fuzz-vary, x-fuzz-status".to_vec();
    if let Some(listed) = listed {
        vary.extend_from_slice(b", ");
        vary.extend_from_slice(listed.as_bytes());
    }
    (status, HeaderValue::from_bytes(&vary).ok(), body)
}

async fn handler(req: Request<Body>) -> Response<Body> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let (status, vary, body) = answer(req.method(), &target, req.headers(), Band::of(req.extensions()));
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    if let Some(vary) = vary {
        res.headers_mut().insert(VARY, vary);
    }
    res
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/health", get(handler))
        .route("/api/simple", get(handler))
        .route("/api/search", get(handler))
        .route("/api/generate", post(handler))
        .route("/usage", get(handler))
        .route("/items/{id}", get(handler).put(handler).delete(handler))
        .layer(layer)
}

fn method_of(step: &Step) -> Method {
    match step.method % 8 {
        0..=2 => Method::GET,
        3 => Method::HEAD,
        4 => Method::POST,
        5 => Method::PUT,
        6 => Method::DELETE,
        _ => Method::from_bytes(&step.raw_method).unwrap_or(Method::OPTIONS),
    }
}

fn header_u64(res: &Response<Body>, name: &str) -> Option<u64> {
    res.headers().get(name).map(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not a number: {v:?}"))
    })
}

/// How many cached replays the check has compared with the handler's answer (in this
/// process): the corpus test asserts the committed corpus reaches that check at all.
pub static REPLAYS_CHECKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whole requests through the layer, one after another on a manual clock: never a 5xx, the
/// rate-limit headers honest (remaining within the limit, `Retry-After` of at least a second on
/// a 429), none for exempt routes and allowed clients, and a replayed copy (the cached band)
/// only ever for a client the limiter identified, byte for byte the handler's answer to this
/// very request.
pub fn request(data: &[u8]) {
    // A count, then that many steps: once the bytes run out the steps are all zeros (GET
    // /items/1 by an identified client, no wait), so even a short input reaches deep states
    // (the third such request is answered from the cache).
    let mut u = Unstructured::new(data);
    let Ok(count) = u.int_in_range(1..=24u8) else { return };
    let Ok(steps) = (0..count).map(|_| Step::arbitrary(&mut u)).collect::<Result<Vec<_>, _>>() else {
        return;
    };
    thread_local! {
        static PARSED: Config = Config::from_toml(CONFIG).expect("the fuzz configuration is valid");
    }
    // A new layer and store for every input (so that an input always replays the same), from a
    // configuration parsed once.
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let layer = RateLimitLayer::try_new(PARSED.with(Config::clone))
        .expect("a layer")
        .with_store(MemoryStore::with_clock(clock.clone()).capacity(1024));
    let app = app(layer);
    runtime().block_on(async {
        for step in steps {
            clock.advance(Duration::from_millis(u64::from(step.wait_ms)));
            let method = method_of(&step);
            // Mostly the app's routes; one value in `PATHS.len() + 1` is a raw target.
            let target = match PATHS.get(usize::from(step.path) % (PATHS.len() + 1)) {
                Some(path) => (*path).to_owned(),
                None => String::from_utf8_lossy(&step.raw_target).into_owned(),
            };
            let Ok(uri) = target.parse::<http::Uri>() else { continue };
            if uri.path_and_query().is_none() {
                continue;
            }
            let mut req = Request::new(Body::empty());
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.clone();
            *req.headers_mut() = header_map(&step.lines, &HEADERS);
            let key = match step.key % 4 {
                0 => Some(KEYS[1]),
                1 => Some(KEYS[0]),
                2 => Some("monitor-key"),
                _ => None,
            };
            if let Some(key) = key {
                req.headers_mut().insert("x-api-key", HeaderValue::from_static(key));
            }
            req.extensions_mut().insert(ConnectInfo(SocketAddr::new(step.peer.ip(), 443)));
            let headers = req.headers().clone();
            let res = app.clone().oneshot(req).await.expect("infallible");
            check(&method, &uri, &headers, step.peer.ip(), res).await;
        }
    });
}

async fn check(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    res: Response<Body>,
) {
    let status = res.status();
    assert!(!status.is_server_error(), "{status} for {method} {uri} {headers:?}");
    let limit = header_u64(&res, "x-ratelimit-limit");
    let remaining = header_u64(&res, "x-ratelimit-remaining");
    if let (Some(limit), Some(remaining)) = (limit, remaining) {
        assert!(remaining <= limit, "remaining {remaining} of {limit}");
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let wait = header_u64(&res, "retry-after").expect("a 429 says when to come back");
        assert!(wait >= 1, "Retry-After {wait}");
    }
    let api_key = headers.get("x-api-key").map(HeaderValue::as_bytes);
    let resolver = tollgate::key::ClientIp::new()
        .trusted(["10.0.0.0/8".parse().expect("a network"), "fd00::/8".parse().expect("a network")]);
    let client = resolver.resolve(peer, headers);
    let allowed = api_key == Some(b"monitor-key".as_slice())
        || matches!(client, std::net::IpAddr::V4(v4) if v4.octets()[..2] == [10, 99]);
    if uri.path() == "/health" || allowed {
        assert!(
            limit.is_none() && remaining.is_none(),
            "no rate-limit headers for {uri} (allowed: {allowed})"
        );
        // Never refused: the handler's answer, or the router's 404 or 405.
        let routed = [StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&status);
        assert!(status.is_success() || routed, "{status}");
    }
    let degraded = res.headers().get("x-ratelimit-degraded").cloned();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.expect("a body");
    if degraded.as_ref().is_some_and(|d| d == "cached") {
        REPLAYS_CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            KEYS.iter().any(|k| api_key == Some(k.as_bytes())),
            "a copy replayed to a client the limiter did not identify: {headers:?}"
        );
        assert_eq!(status, StatusCode::OK, "only complete answers are replayed");
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let (fresh_status, _, fresh) = answer(method, target, headers, Band::Full);
        assert_eq!(fresh_status, StatusCode::OK, "a replay where the handler would not answer 200");
        if *method == Method::HEAD {
            assert!(body.is_empty());
        } else {
            assert!(
                body == fresh,
                "replayed {:?}, but the handler answers this request {:?}",
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&fresh)
            );
        }
    }
}

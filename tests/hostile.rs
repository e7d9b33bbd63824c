//! Hostile clients over real HTTP (issue 11): each test reproduces one escape an attacker
//! found, against a real listener and a real client, and holds the fix to it.
//!
//! The stores run on a manual clock, so limits are exact and nothing sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::HeaderValue;
use reqwest::StatusCode;
use tollgate::clock::ManualClock;
use tollgate::store::MemoryStore;
use tollgate::{Config, RateLimitLayer};

const START: Duration = Duration::from_secs(1_800_000_000);

/// Serves `app` behind the layer `config` describes, on a memory store with a manual clock.
async fn serve(config: &str, app: Router) -> (String, ManualClock) {
    let clock = ManualClock::new(START);
    let layer = RateLimitLayer::try_new(Config::from_toml(config).unwrap())
        .unwrap()
        .with_store(MemoryStore::with_clock(clock.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.layer(layer).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), clock)
}

fn ok_app() -> Router {
    Router::new().route("/api", get(|| async { "ok" }))
}

/// The loopback listener plays the proxy: it is trusted, and it wrote `X-Forwarded-For`.
const BEHIND_A_PROXY: &str = r#"
    trusted_proxies = ["127.0.0.0/8"]
    [tiers.anonymous]
    requests_per_minute = 30
    burst = 5
"#;

/// Finding 1: behind nginx (which writes only `X-Forwarded-For`), a client rotating its own
/// `Forwarded: for=<random>` got 100 of 100 requests through on a burst of 5.
#[tokio::test]
async fn rotating_headers_the_proxy_does_not_write_buys_nothing() {
    let (base, _clock) = serve(BEHIND_A_PROXY, ok_app()).await;
    let http = reqwest::Client::new();
    let mut admitted = 0;
    for i in 0..100 {
        let res = http
            .get(format!("{base}/api"))
            .header("forwarded", format!("for=198.51.100.{i}"))
            .header("x-real-ip", format!("192.0.2.{i}"))
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await
            .unwrap();
        admitted += usize::from(res.status() == StatusCode::OK);
    }
    assert_eq!(admitted, 5, "one client, one burst");
}

/// Finding 1: one non-ASCII byte in `X-Forwarded-For` keyed the client as the proxy, so
/// every such client shared the proxy's one bucket.
#[tokio::test]
async fn an_unreadable_hop_never_keys_a_client_as_its_proxy() {
    let (base, _clock) = serve(BEHIND_A_PROXY, ok_app()).await;
    let http = reqwest::Client::new();
    let mut admitted = 0;
    for client in ["203.0.113.1", "203.0.113.2"] {
        let mut raw = b"\xff\xfe, ".to_vec();
        raw.extend_from_slice(client.as_bytes());
        for _ in 0..5 {
            let res = http
                .get(format!("{base}/api"))
                .header("x-forwarded-for", HeaderValue::from_bytes(&raw).unwrap())
                .send()
                .await
                .unwrap();
            admitted += usize::from(res.status() == StatusCode::OK);
        }
    }
    assert_eq!(admitted, 10, "two clients, two buckets of 5");
}

/// Degradable `/doc` and `/me` (2 tokens each), a plain `/other` (1 token), burst 10 that
/// does not refill on its own (the clock is manual), cached band below 50 %.
const DEGRADING: &str = r#"
    [tiers.anonymous]
    requests_per_minute = 1
    burst = 10
    [api_keys]
    "key-of-carol" = "anonymous"
    [routes]
    "/doc" = 2
    "/me" = 2
    "/greet" = 2
    [degrade]
    routes = ["/doc", "/me", "/greet"]
    cached_below = 0.5
    minimal_below = 0.1
"#;

/// An app that checks its own keys (unknown to the limiter) and says so with `Vary`, a
/// document served in parts to `Range` requests, and a greeting in the asked language.
fn app_with_private_answers() -> Router {
    use axum::http::{HeaderMap, StatusCode as Status};
    Router::new()
        .route(
            "/me",
            get(|headers: HeaderMap| async move {
                let user =
                    headers.get("x-app-key").and_then(|v| v.to_str().ok()).unwrap_or("nobody").to_owned();
                ([("vary", "x-app-key")], format!("private answer for {user}"))
            }),
        )
        .route(
            "/doc",
            get(|headers: HeaderMap| async move {
                if headers.contains_key("range") {
                    (Status::PARTIAL_CONTENT, [("content-range", "bytes 0-3/20")], "the ").into_response()
                } else {
                    "the whole document !".into_response()
                }
            }),
        )
        .route(
            "/greet",
            get(|headers: HeaderMap| async move {
                let fr = headers.get("accept-language").is_some_and(|v| v.as_bytes().starts_with(b"fr"));
                ([("vary", "accept-language")], if fr { "bonjour" } else { "hello" })
            }),
        )
        .route("/other", get(|| async { "other" }))
}

use axum::response::IntoResponse;

async fn body_of(res: reqwest::Response) -> (StatusCode, Option<String>, String) {
    let degraded = res.headers().get("x-ratelimit-degraded").map(|v| v.to_str().unwrap().to_owned());
    (res.status(), degraded, res.text().await.unwrap())
}

/// Finding 2: two users behind one NAT share an IP key; the app tells them apart by its own
/// key and says `Vary: X-App-Key`, yet Alice's answer was replayed to Bob.
#[tokio::test]
async fn users_behind_one_address_never_get_each_others_answers() {
    let (base, _clock) = serve(DEGRADING, app_with_private_answers()).await;
    let http = reqwest::Client::new();
    let me = |user: &str| http.get(format!("{base}/me")).header("x-app-key", user).send();
    for _ in 0..3 {
        assert_eq!(body_of(me("alice").await.unwrap()).await.2, "private answer for alice");
    }
    // 4 tokens of 10 left: the cached band, were there a copy to replay.
    let (status, degraded, body) = body_of(me("bob").await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "private answer for bob"));
    assert_eq!(degraded, None, "an address is not an identity: no cached band for it");
}

/// Finding 2: a `206` answer to a `Range` request was kept, and replayed to a later plain GET
/// as if it were the whole document.
#[tokio::test]
async fn a_partial_answer_is_never_replayed_as_the_whole() {
    let (base, _clock) = serve(DEGRADING, app_with_private_answers()).await;
    let http = reqwest::Client::new();
    let carol = |path: &str| http.get(format!("{base}{path}")).header("x-api-key", "key-of-carol");
    let part = body_of(carol("/doc").header("range", "bytes=0-3").send().await.unwrap()).await;
    assert_eq!((part.0, part.2.as_str()), (StatusCode::PARTIAL_CONTENT, "the "));
    for _ in 0..4 {
        carol("/other").send().await.unwrap();
    }
    // 4 tokens of 10 left: the cached band, were there a copy to replay.
    let (status, _, body) = body_of(carol("/doc").send().await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "the whole document !"));
}

/// Finding 2: `Vary` is honoured in full: a copy is replayed only to a request that sends the
/// same values of the headers the answer varies on.
#[tokio::test]
async fn a_copy_is_replayed_only_to_the_same_variant() {
    let (base, _clock) = serve(DEGRADING, app_with_private_answers()).await;
    let http = reqwest::Client::new();
    let greet = |lang: &str| {
        http.get(format!("{base}/greet"))
            .header("x-api-key", "key-of-carol")
            .header("accept-language", lang)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(body_of(greet("fr").await.unwrap()).await.2, "bonjour");
    }
    let (status, degraded, body) = body_of(greet("en").await.unwrap()).await;
    assert_eq!((status, degraded, body.as_str()), (StatusCode::OK, None, "hello"));
    // That answer is now the copy, and the same variant gets it: the cached band works for an
    // identified client.
    let (status, degraded, body) = body_of(greet("en").await.unwrap()).await;
    assert_eq!((status, degraded.as_deref(), body.as_str()), (StatusCode::OK, Some("cached"), "hello"));
}

/// Finding 3: axum answers HEAD with the GET handler, yet `"GET /export" = 50` charged a HEAD
/// 1 token, and ten concurrent HEADs all passed a `concurrency = 1` route.
#[tokio::test]
async fn head_pays_what_get_pays_cost_and_concurrency() {
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let app = Router::new().route("/export", get(|| async { "a large export" })).route(
        "/slow",
        get(move || {
            let gate = held.clone();
            async move {
                let _ = gate.acquire().await;
                "slow"
            }
        }),
    );
    let config = r#"
        [tiers.anonymous]
        requests_per_minute = 1
        burst = 60
        [routes]
        "GET /export" = 50
        "GET /slow" = 0
        [concurrency]
        "GET /slow" = 1
    "#;
    let (base, _clock) = serve(config, app).await;
    let http = reqwest::Client::new();
    let res = http.head(format!("{base}/export")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratelimit-remaining"], "10", "a HEAD costs what a GET costs");
    let res = http.head(format!("{base}/export")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

    let heads: Vec<_> = (0..10).map(|_| tokio::spawn(http.head(format!("{base}/slow")).send())).collect();
    let mut statuses = Vec::new();
    let mut pending = heads;
    // Those refused answer at once; the one admitted waits for the gate (opened after 9
    // answers, or after 5 s if more than one was let through).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while statuses.len() < 9 && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for task in pending {
            if task.is_finished() {
                statuses.push(task.await.unwrap().unwrap().status());
            } else {
                still.push(task);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.add_permits(10);
    for task in pending {
        statuses.push(task.await.unwrap().unwrap().status());
    }
    let admitted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((admitted, refused), (1, 9), "{statuses:?}");
}

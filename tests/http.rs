//! The demo router on a real listener, driven by a real HTTP client.
//!
//! The store runs on a manual clock, so limits are exact and nothing sleeps.

#[path = "../examples/server/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value;
use tollgate::clock::ManualClock;
use tollgate::store::MemoryStore;
use tollgate::Config;

struct Server {
    base: String,
    clock: ManualClock,
    http: Client,
}

async fn start_with(config: Config) -> Server {
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let layer = app::layer(config).unwrap().with_store(MemoryStore::with_clock(clock.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app::router(layer).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { base: format!("http://{addr}"), clock, http: Client::new() }
}

async fn start() -> Server {
    start_with(Config::load("config/ratelimit.toml").unwrap()).await
}

impl Server {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers().get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

#[tokio::test]
async fn every_limited_answer_carries_the_headers() {
    let server = start().await;
    let res = server.get("/api/simple").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-limit"), "5");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "4");
    assert_eq!(header(&res, "x-ratelimit-reset"), "1800000002");
    assert_eq!(header(&res, "ratelimit-policy"), "\"anonymous\";q=5;w=10");
    assert_eq!(header(&res, "ratelimit"), "\"anonymous\";r=4;t=2");
    let body: Value = res.json().await.unwrap();
    assert!(body["served_at_ms"].as_u64().unwrap() > 1_600_000_000_000);
}

#[tokio::test]
async fn a_burst_ends_in_429_with_a_retry_after_that_works() {
    let server = start().await;
    for _ in 0..5 {
        assert_eq!(server.get("/api/simple").send().await.unwrap().status(), StatusCode::OK);
    }
    let res = server.get("/api/simple").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = header(&res, "retry-after").parse().unwrap();
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["retry_after"], wait);
    assert_eq!(body["tier"], "anonymous");
    assert_eq!(body["limit"], 5);
    assert!(body["type"].as_str().unwrap().starts_with("https://"));
    assert!(body["title"].is_string() && body["detail"].is_string());
    // One second short: still refused. After exactly Retry-After: admitted.
    server.clock.advance(Duration::from_secs(wait - 1));
    assert_eq!(server.get("/api/simple").send().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    server.clock.advance(Duration::from_secs(1));
    assert_eq!(server.get("/api/simple").send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn tiers_and_costs_follow_the_config() {
    let server = start().await;
    let free = |path: &str| server.get(path).header("x-api-key", "free-demo-key");
    let res = free("/api/search?q=rust").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-limit"), "10");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "5");
    assert_eq!(header(&res, "ratelimit-policy"), "\"free\";q=10;w=10, \"free-daily\";q=10000;w=86400");
    // t: the next token of each policy (1 s, and 8.64 s for 10 000 a day), not the time to full.
    assert_eq!(header(&res, "ratelimit"), "\"free\";r=5;t=1, \"free-daily\";r=9995;t=9");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["results"].as_array().unwrap().len(), 5);

    let pro = server.get("/api/simple").header("x-api-key", "pro-demo-key").send().await.unwrap();
    assert_eq!(header(&pro, "x-ratelimit-limit"), "100");
    assert_eq!(header(&pro, "x-ratelimit-remaining"), "99");
    let enterprise =
        server.post("/api/generate").header("x-api-key", "enterprise-demo-key").send().await.unwrap();
    assert_eq!(enterprise.status(), StatusCode::OK);
    assert_eq!(header(&enterprise, "x-ratelimit-remaining"), "980");
    // /usage costs nothing.
    let usage: Value = free("/usage").send().await.unwrap().json().await.unwrap();
    assert_eq!((usage["tier"].as_str(), usage["remaining"].as_u64()), (Some("free"), Some(5)));
}

#[tokio::test]
async fn a_cost_above_the_burst_is_403_with_the_upgrade_url() {
    let server = start().await;
    let res = server.post("/api/generate").header("x-api-key", "free-demo-key").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(header(&res, "x-ratelimit-limit"), "10");
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["upgrade_url"], "https://example.com/pricing");
    assert_eq!(body["status"], 403);
    // Anonymous clients (burst 5) can never generate either.
    assert_eq!(server.post("/api/generate").send().await.unwrap().status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn exempt_routes_are_never_limited() {
    let server = start().await;
    for _ in 0..30 {
        let res = server.get("/health").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
    let policy: Value = server.get("/policy").send().await.unwrap().json().await.unwrap();
    assert_eq!(policy["tiers"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn forged_forwarding_headers_and_invented_keys_share_the_ip_bucket() {
    let server = start().await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let res = server
            .get("/api/simple")
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .header("forwarded", format!("for=198.51.100.{i}"))
            .header("x-real-ip", format!("192.0.2.{i}"))
            .header("x-api-key", format!("invented-{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
}

#[tokio::test]
async fn malformed_and_huge_headers_never_cause_a_5xx() {
    let server = start().await;
    let huge = "k".repeat(8 * 1024);
    let attempts = [
        server
            .get("/api/simple")
            .header("x-api-key", reqwest::header::HeaderValue::from_bytes(b"\xff\xfekey").unwrap()),
        server.get("/api/simple").header("x-api-key", huge.as_str()),
        server.get("/api/simple").header("x-forwarded-for", "not an address, ,,, ::::"),
        server.get("/api/simple").header("forwarded", "for=\"[::1\";;;=="),
        server.get("/api/simple").header("x-api-key", ""),
        server.get("/api/search?q=%ff%fe"),
        server.get("/no/such/route"),
    ];
    for request in attempts {
        let res = request.send().await.unwrap();
        assert!(res.status().is_success() || res.status().is_client_error(), "{}", res.status());
    }
    // Far too many headers: hyper refuses with a 4xx (or drops the connection), never a 5xx.
    let mut request = server.get("/api/simple");
    for i in 0..200 {
        request = request.header(format!("x-junk-{i}"), "x".repeat(1000));
    }
    if let Ok(res) = request.send().await {
        assert!(!res.status().is_server_error(), "{}", res.status());
    }
}

#[tokio::test]
async fn concurrent_requests_on_one_key_admit_exactly_the_burst() {
    let server = start().await;
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let request = server.get("/api/simple").header("x-api-key", "free-demo-key");
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        let status = task.await.unwrap();
        assert!(status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS, "{status}");
        admitted += usize::from(status == StatusCode::OK);
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn a_degradable_route_answers_minimally_when_tokens_run_low() {
    let config = Config::from_toml(
        r#"
        [tiers.anonymous]
        requests_per_second = 1
        burst = 20
        [routes]
        "/api/search" = 5
        [degrade]
        routes = ["/api/search"]
        "#,
    )
    .unwrap();
    let server = start_with(config).await;
    // Four different queries: no cached copy to fall back on, so each is served in full.
    for q in 0..4 {
        let body: Value =
            server.get(&format!("/api/search?q={q}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["minimal"], false);
    }
    server.clock.advance(Duration::from_secs(1));
    let res = server.get("/api/search?q=a").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-degraded"), "minimal");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["minimal"], true);
    assert!(body["results"][0].get("title").is_none());
}

#[tokio::test]
async fn the_cached_band_replays_the_callers_own_last_answer() {
    let server = start().await;
    let search = |key: &'static str| server.get("/api/search?q=tolls").header("x-api-key", key);
    let first: Value = search("free-demo-key").send().await.unwrap().json().await.unwrap();
    let second = search("free-demo-key").send().await.unwrap();
    assert!(second.headers().get("x-ratelimit-degraded").is_none(), "5 of 10 left: not below 0.5");
    let second: Value = second.json().await.unwrap();
    assert_ne!(first["served_at_ms"], Value::Null);
    // 4 s later: 4 tokens (40 %), in the cached band: the last answer, for one token.
    server.clock.advance(Duration::from_secs(4));
    let res = search("free-demo-key").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-degraded"), "cached");
    assert_eq!(header(&res, "age"), "4");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "3");
    let replay: Value = res.json().await.unwrap();
    assert_eq!(replay, second, "the very same answer, handler not called");
    // Another client (the pro key) never sees it.
    let other: Value = search("pro-demo-key").send().await.unwrap().json().await.unwrap();
    assert_ne!(other["served_at_ms"], Value::Null);
    assert!(other["results"][0]["title"].is_string());
}

//! `/usage`, `/policy` and `/dashboard` over real HTTP: a bound listener, `axum::serve` with
//! connect info, and reqwest.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use serde_json::Value;
use tollgate::key::Key;
use tollgate::policy::Tier;
use tollgate::store::{Charge, OnError, StoreError, StoreFuture};
use tollgate::{Config, RateLimitLayer};

const CONFIG: &str = r#"
default_tier = "anonymous"

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

[routes]
"/api/simple" = 1
"/api/search" = 5
"POST /api/generate" = 20
"/usage" = 0
"/dashboard" = 0

[exempt]
routes = ["/health", "/metrics", "/policy"]

[api_keys]
"free-demo-key" = "free"
"pro-demo-key" = "pro"
"#;

/// Serves `layer` in front of the demo routes and the usage routes; returns the base URL.
async fn serve<K: tollgate::key::KeyExtractor>(layer: RateLimitLayer<K>) -> String {
    let app = Router::new()
        .route("/api/simple", get(|| async { "{}" }))
        .route("/api/search", get(|| async { "{}" }))
        .route("/health", get(|| async { "ok" }))
        .merge(tollgate::usage::routes(layer.clone()))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    format!("http://{addr}")
}

fn layer() -> RateLimitLayer {
    RateLimitLayer::new(Config::from_toml(CONFIG).unwrap())
}

async fn get_json(client: &reqwest::Client, url: &str, key: Option<&str>) -> (u16, String, Value) {
    let mut req = client.get(url);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
    (status, content_type, json)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn usage_reflects_requests_made() {
    let base = serve(layer()).await;
    let client = reqwest::Client::new();

    let (status, content_type, usage) = get_json(&client, &format!("{base}/usage"), None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    assert_eq!(usage["tier"], "anonymous");
    assert_eq!(usage["keyed_by"], "ip");
    assert_eq!(usage["ip"], "127.0.0.1");
    assert_eq!(usage["limit"], 5);
    assert_eq!(usage["remaining"], 5);
    assert!(usage.get("upgrade_url").is_none(), "{usage}");
    assert_eq!(usage["policies"].as_array().unwrap().len(), 1);
    assert_eq!(usage["policies"][0]["name"], "anonymous");
    assert_eq!(usage["policies"][0]["window"], 10);

    for _ in 0..2 {
        let res = client.get(format!("{base}/api/simple")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let (_, _, usage) = get_json(&client, &format!("{base}/usage"), None).await;
    assert_eq!(usage["remaining"], 3, "{usage}");
    assert_eq!(usage["policies"][0]["remaining"], 3);
    // Two tokens short of full at 2 s a token: full again in about 4 s.
    let reset = usage["reset"].as_u64().unwrap();
    let now = now_secs();
    assert!(reset > now && reset <= now + 5, "reset {reset}, now {now}");

    // Reading the usage costs nothing.
    let (_, _, again) = get_json(&client, &format!("{base}/usage"), None).await;
    assert_eq!(again["remaining"], 3);
}

#[tokio::test]
async fn usage_of_a_keyed_client_shows_every_policy_and_the_upgrade_url_but_never_the_key() {
    let base = serve(layer()).await;
    let client = reqwest::Client::new();
    let res =
        client.get(format!("{base}/api/search")).header("x-api-key", "free-demo-key").send().await.unwrap();
    assert_eq!(res.status(), 200);

    let url = format!("{base}/usage");
    let text =
        client.get(&url).header("x-api-key", "free-demo-key").send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("free-demo-key"), "the key leaked: {text}");
    let (_, _, usage) = get_json(&client, &url, Some("free-demo-key")).await;
    assert_eq!(usage["tier"], "free");
    assert_eq!(usage["keyed_by"], "key");
    assert!(usage.get("ip").is_none());
    assert_eq!(usage["upgrade_url"], "https://example.com/pricing");
    // The headline is the policy with the smallest share left: the burst (5 of 10).
    assert_eq!((usage["limit"].as_u64(), usage["remaining"].as_u64()), (Some(10), Some(5)));
    let policies = usage["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    assert_eq!(policies[1]["name"], "free-daily");
    assert_eq!(policies[1]["limit"], 10_000);
    assert_eq!(policies[1]["remaining"], 9_995);
    assert_eq!(policies[1]["window"], 86_400);

    // Another client (by IP) is untouched.
    let (_, _, anonymous) = get_json(&client, &url, None).await;
    assert_eq!(anonymous["remaining"], 5);
}

#[tokio::test]
async fn policy_lists_tiers_and_route_costs() {
    let base = serve(layer()).await;
    let client = reqwest::Client::new();
    let (status, _, policy) = get_json(&client, &format!("{base}/policy"), None).await;
    assert_eq!(status, 200);
    assert_eq!(policy["default_tier"], "anonymous");
    assert_eq!(policy["default_cost"], 1);

    let tiers = policy["tiers"].as_array().unwrap();
    let names: Vec<&str> = tiers.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3);
    for name in ["anonymous", "free", "pro"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let free = tiers.iter().find(|t| t["name"] == "free").unwrap();
    assert_eq!(free["upgrade_url"], "https://example.com/pricing");
    let burst = &free["policies"][0];
    assert_eq!(burst["name"], "free");
    assert_eq!(burst["algorithm"], "token_bucket");
    assert_eq!(burst["burst"], 10);
    assert_eq!(burst["requests_per_second"], 1.0);
    assert_eq!(burst["requests_per_minute"], 60.0);
    assert_eq!(burst["window"], 10);
    let daily = &free["policies"][1];
    assert_eq!(daily["name"], "free-daily");
    assert_eq!(daily["burst"], 10_000);
    assert_eq!(daily["window"], 86_400);
    let anonymous = tiers.iter().find(|t| t["name"] == "anonymous").unwrap();
    assert_eq!(anonymous["policies"][0]["requests_per_minute"], 30.0);

    let routes = policy["routes"].as_array().unwrap();
    let route =
        |r: &str| routes.iter().find(|x| x["route"] == r).unwrap_or_else(|| panic!("{r}: {routes:?}"));
    assert_eq!(route("/api/simple")["cost"], 1);
    assert_eq!(route("/api/search")["cost"], 5);
    assert_eq!(route("POST /api/generate")["cost"], 20);
    assert_eq!(route("/usage")["cost"], 0);
    assert_eq!(route("/usage")["exempt"], false);
    assert_eq!(route("/health")["exempt"], true);
    assert_eq!(route("/policy")["exempt"], true);

    // /policy is exempt: no rate-limit headers, no charge.
    let res = client.get(format!("{base}/policy")).send().await.unwrap();
    assert!(res.headers().get("x-ratelimit-remaining").is_none());
}

#[tokio::test]
async fn dashboard_is_html_with_the_callers_numbers() {
    let base = serve(layer()).await;
    let client = reqwest::Client::new();
    client.get(format!("{base}/api/search")).header("x-api-key", "free-demo-key").send().await.unwrap();
    let res =
        client.get(format!("{base}/dashboard")).header("x-api-key", "free-demo-key").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<strong id="tier">free</strong>"#), "{html}");
    assert!(html.contains(r#"data-policy="free" data-remaining="5" data-limit="10""#), "{html}");
    assert!(html.contains(r#"data-policy="free-daily" data-remaining="9995""#), "{html}");
    assert!(html.contains(r#"href="https://example.com/pricing""#));
    assert!(!html.contains("free-demo-key"));
    assert!(!html.contains("<script"), "no script needed");
    assert!(!html.contains("src="), "no external assets");
}

/// A store that is always down.
#[derive(Debug)]
struct Down;

impl tollgate::store::Store for Down {
    fn check(&self, _: &Key, _: &Tier, _: Charge) -> StoreFuture {
        StoreFuture::ready(Err(StoreError::new("connection refused", None)))
    }
}

#[tokio::test]
async fn a_store_fault_answers_503_problem_json_never_500() {
    let base = serve(layer().with_store(Down).on_error(OnError::Allow)).await;
    let client = reqwest::Client::new();
    // The limiter fails open for the API...
    assert_eq!(client.get(format!("{base}/api/simple")).send().await.unwrap().status(), 200);
    // ...but cannot say how much anyone has left.
    for path in ["/usage", "/dashboard"] {
        let (status, content_type, problem) = get_json(&client, &format!("{base}{path}"), None).await;
        assert_eq!(status, 503, "{path}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(problem["status"], 503);
        assert!(problem["type"].as_str().unwrap().ends_with("#store-unavailable"));
    }
    // The published limits need no store.
    let (status, _, _) = get_json(&client, &format!("{base}/policy"), None).await;
    assert_eq!(status, 200);
}

/// A memory store that counts the decisions it is asked for.
#[derive(Debug, Default)]
struct Counting {
    inner: tollgate::store::MemoryStore,
    calls: std::sync::atomic::AtomicUsize,
}

impl tollgate::store::Store for Counting {
    fn check(&self, key: &Key, tier: &Tier, charge: Charge) -> StoreFuture {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.check(key, tier, charge)
    }
}

/// Issue 11, finding 8: `/usage` and `/dashboard` (cost 0) asked the store twice, once in the
/// layer for the headers and once in the handler for the page. One call now, and the page
/// shows what the headers say.
#[tokio::test]
async fn usage_and_dashboard_ask_the_store_once() {
    use std::sync::atomic::Ordering;
    let store = std::sync::Arc::new(Counting::default());
    let base = serve(layer().with_store(store.clone())).await;
    let client = reqwest::Client::new();
    client.get(format!("{base}/api/simple")).header("x-api-key", "free-demo-key").send().await.unwrap();
    assert_eq!(store.calls.swap(0, Ordering::SeqCst), 1);
    for _ in 0..5 {
        let res =
            client.get(format!("{base}/usage")).header("x-api-key", "free-demo-key").send().await.unwrap();
        let remaining = res.headers()["x-ratelimit-remaining"].to_str().unwrap().to_owned();
        let usage: Value = res.json().await.unwrap();
        assert_eq!(usage["remaining"].to_string(), remaining, "{usage}");
        let res = client
            .get(format!("{base}/dashboard"))
            .header("x-api-key", "free-demo-key")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(store.calls.load(Ordering::SeqCst), 10, "one store call per page, not two");
}

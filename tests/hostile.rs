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

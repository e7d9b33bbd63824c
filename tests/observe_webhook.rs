//! Near-quota alerts over a webhook: received by a real local HTTP listener, and never
//! blocking a request when the webhook's queue is full.

#![cfg(feature = "webhook")]

use nonzero_ext::nonzero;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tollgate::algorithm::Quota;
use tollgate::key::{Client, Key};
use tollgate::observe::{NearQuota, NearQuotaEvent, Webhook};
use tollgate::policy::{Limits, TierSpec};
use tollgate::RateLimitLayer;
use tower::{service_fn, Layer, ServiceExt};

fn by_user(parts: &http::request::Parts) -> Option<Client> {
    let user = parts.headers.get("x-user")?.to_str().ok()?;
    Some(Client::new(Key::new(user)))
}

/// Serves a webhook receiver; returns its URL and the bodies it received.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let tx = tx.clone();
            async move {
                tx.send(body).unwrap();
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

#[tokio::test]
async fn the_webhook_is_received_by_a_local_listener() {
    let (url, mut received) = receiver().await;
    let webhook = Webhook::new(url).unwrap();
    let stats = webhook.clone();
    let crossings = Arc::new(AtomicUsize::new(0));
    let count = crossings.clone();
    let config = tollgate::Config::from_toml(
        r#"
        [tiers.anonymous]
        requests_per_hour = 60
        burst = 5
        [tiers.free]
        requests_per_hour = 60
        burst = 10
        [api_keys]
        "sk_test_0123456789abcdef" = "free"
        [alerts]
        near_quota = 0.8
        "#,
    )
    .unwrap();
    let threshold = config.settings().alerts.near_quota;
    let layer = RateLimitLayer::new(config);
    let alerts = NearQuota::new((webhook, move |_: &NearQuotaEvent| {
        count.fetch_add(1, Ordering::SeqCst);
    }))
    .threshold(threshold);
    let layer = layer.observer(alerts);
    let app = Router::new().route("/api", get(|| async { "ok" })).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap()
    });

    let client = reqwest::Client::new();
    // The keyed client: 10 requests, the eighth crosses 80 % of 10.
    for _ in 0..10 {
        let res = client
            .get(format!("{base}/api"))
            .header("x-api-key", "sk_test_0123456789abcdef")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let event = tokio::time::timeout(Duration::from_secs(10), received.recv()).await.unwrap().unwrap();
    assert_eq!(event["tier"], "free");
    assert_eq!(event["policy"], "free");
    assert_eq!(event["limit"], 10);
    assert_eq!(event["remaining"], 2);
    assert_eq!(event["used"], 0.8);
    assert_eq!(event["client"], "key:…cdef", "the API key is redacted: {event}");
    assert!(!event.to_string().contains("sk_test"));
    assert!(event["reset"].as_u64().unwrap() > 1_700_000_000);

    // The anonymous client: 4 of 5 crosses.
    for _ in 0..5 {
        client.get(format!("{base}/api")).send().await.unwrap();
    }
    let event = tokio::time::timeout(Duration::from_secs(10), received.recv()).await.unwrap().unwrap();
    assert_eq!(event["tier"], "anonymous");
    assert_eq!(event["client"], "ip:127.0.0.1");
    assert_eq!(event["remaining"], 1);

    assert_eq!(crossings.load(Ordering::SeqCst), 2, "one event per crossing");
    assert_eq!(stats.stats().dropped, 0);
    // The second delivery is counted once the receiver has answered; wait for the sender.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.stats().sent < 2 && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert_eq!(stats.stats().sent, 2);
    assert!(received.try_recv().is_err(), "no third event");
}

/// `[alerts] webhook` needs no code: the layer a configuration builds POSTs to it.
#[tokio::test]
async fn the_configured_webhook_is_wired_by_the_layer() {
    let (url, mut received) = receiver().await;
    let config = tollgate::Config::from_toml(&format!(
        "[tiers.anonymous]\nrequests_per_hour = 60\nburst = 5\n[alerts]\nnear_quota = 0.8\nwebhook = \"{url}\"\n"
    ))
    .unwrap();
    let app =
        Router::new().route("/api", get(|| async { "ok" })).layer(RateLimitLayer::try_new(config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap()
    });
    let client = reqwest::Client::new();
    for _ in 0..5 {
        client.get(format!("{base}/api")).send().await.unwrap();
    }
    let event = tokio::time::timeout(Duration::from_secs(10), received.recv()).await.unwrap().unwrap();
    assert_eq!(event["tier"], "anonymous");
    assert_eq!(event["remaining"], 1, "4 of 5 used crosses 80 %");
    // A URL the webhook cannot use is refused when the configuration is read, naming the key.
    let err = tollgate::Config::from_toml(
        "[tiers.anonymous]\nrequests_per_hour = 60\nburst = 5\n[alerts]\nwebhook = \"https://x/\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("alerts.webhook"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_never_blocks_requests() {
    // An endpoint that accepts connections and never answers.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", stalled.local_addr().unwrap());
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (socket, _) = stalled.accept().await.unwrap();
            held_tx.send(socket).unwrap(); // kept open, never read
        }
    });
    let webhook = Webhook::builder(url).queue(1).timeout(Duration::from_secs(300)).start().unwrap();
    let stats = webhook.clone();

    let limits =
        Limits::builder().tier("anonymous", TierSpec::new(Quota::per_hour(nonzero!(1u32)))).build().unwrap();
    let layer = RateLimitLayer::from_limits(limits).extractor(by_user).observer(NearQuota::new(webhook));
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));

    // 500 clients each spend their single token: 500 crossings, 500 events.
    const CLIENTS: u64 = 500;
    let started = Instant::now();
    for i in 0..CLIENTS {
        let req = Request::get("/").header("x-user", format!("client-{i}")).body(()).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(5), service.clone().oneshot(req))
            .await
            .expect("a request never waits for the webhook")
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    // The sender holds one event on the stalled connection and the queue one more: the
    // rest were dropped and counted.
    let _connection = tokio::time::timeout(Duration::from_secs(10), held_rx.recv()).await.unwrap().unwrap();
    let s = stats.stats();
    assert_eq!(s.sent, 0);
    assert!(s.dropped >= CLIENTS - 2, "{s:?}");
    assert!(s.dropped <= CLIENTS, "{s:?}");
}

//! The flood of `scripts/flood.sh`, shorter (CI): first-time clients behind a trusted proxy
//! against a store capped at 1 000 states, over real HTTP.
//!
//! Issue 11, finding 7: at the cap, new clients shared one overflow bucket, so first-time
//! clients in a flood were refused. Now every one is admitted on its first request, the
//! identified client is answered exactly throughout, the store never holds more than its cap,
//! and the process' memory stays flat once the store is full.

#[path = "../examples/flood/driver.rs"]
#[allow(dead_code, unreachable_pub)]
mod driver;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tollgate::{Config, RateLimitLayer};

const CONFIG: &str = r#"
    trusted_proxies = ["127.0.0.0/8"]
    [tiers.anonymous]
    requests_per_minute = 30
    burst = 5
    [tiers.partner]
    requests_per_hour = 1
    burst = 20
    [api_keys]
    "flood-partner-key" = "partner"
    [store]
    max_keys = 1000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_clients_behind_a_proxy() {
    let layer = RateLimitLayer::try_new(Config::from_toml(CONFIG).unwrap()).unwrap();
    let store = Arc::clone(layer.store());
    let app = Router::new().route("/api/simple", get(|| async { "ok" })).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let addresses = 20_000;
    let options = driver::Options {
        base: format!("http://{addr}"),
        path: "/api/simple".into(),
        addresses,
        concurrency: 8,
        partner: Some(("flood-partner-key".into(), 20)),
        pid: std::process::id(),
        scrape: None,
    };
    let report = driver::flood(&options).await;
    report.print();
    assert_eq!(report.sent, addresses);
    assert_eq!(report.admitted, addresses, "every first-time client is admitted: {:?}", report.refused);
    assert!(report.partner_exact(20), "the identified client, exactly: {:?}", report.partner);
    assert!(store.tracked().unwrap() <= 1_000, "{:?} states", store.tracked());
    // Flat: from a quarter of the flood (the store long full) to its end, the process (server
    // and client both) grows by less than the 15 000 flooders it has yet to see would take
    // if each kept even ~300 bytes.
    let (first, last) = report.growth_after(0.25).unwrap();
    assert!(last.saturating_sub(first) < 8 * 1024, "rss {first} KiB -> {last} KiB");
}

//! The tower_governor server of `scripts/load.sh`: the bare server's `/api/simple` handler
//! (same JSON, same runtime, same `axum::serve`) behind tower_governor's `GovernorLayer`,
//! keyed by the `X-API-Key` header, 10⁹ requests per second with a burst of 1 000 (so it
//! admits everything, like the demo server's raised enterprise tier) and its rate-limit
//! headers on: the peer a team compares tollgate with.
//!
//!     cargo run --release --example governor_server -- [--bind ADDR]
//!
//! Prints `listening on http://ADDR` once it accepts connections (default 127.0.0.1:3002).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderValue, Request};
use serde_json::{json, Value};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

async fn simple() -> Json<Value> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Json(json!({ "served_at_ms": now, "message": "hello from tollgate" }))
}

/// The raw `X-API-Key` header value (cloning it is a reference count).
#[derive(Debug, Clone, Copy)]
struct ApiKeyHeader;

impl KeyExtractor for ApiKeyHeader {
    type Key = HeaderValue;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        req.headers().get("x-api-key").cloned().ok_or(GovernorError::UnableToExtractKey)
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut bind = String::from("127.0.0.1:3002");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => bind = args.next().expect("--bind needs an address"),
            other => panic!("unknown argument {other}; usage: governor_server [--bind ADDR]"),
        }
    }
    let mut builder = GovernorConfigBuilder::default().key_extractor(ApiKeyHeader);
    let config = builder
        .per_nanosecond(1)
        .burst_size(1_000)
        .use_headers()
        .finish()
        .expect("valid governor configuration");
    let listener = tokio::net::TcpListener::bind(&bind).await.expect("cannot listen");
    println!("listening on http://{}", listener.local_addr().expect("bound"));
    let app = Router::new().route("/api/simple", get(simple)).layer(GovernorLayer::new(config));
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("server failed");
}

//! The bare server of `scripts/load.sh`: the demo's `/api/simple` handler (same JSON) on the
//! same runtime and the same `axum::serve`, with no rate limiter, so a load test can put the
//! demo server's numbers next to what the machine does without tollgate.
//!
//!     cargo run --release --example bare_server -- [--bind ADDR]
//!
//! Prints `listening on http://ADDR` once it accepts connections (default 127.0.0.1:3001).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

async fn simple() -> Json<Value> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Json(json!({ "served_at_ms": now, "message": "hello from tollgate" }))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut bind = String::from("127.0.0.1:3001");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => bind = args.next().expect("--bind needs an address"),
            other => panic!("unknown argument {other}; usage: bare_server [--bind ADDR]"),
        }
    }
    let listener = tokio::net::TcpListener::bind(&bind).await.expect("cannot listen");
    println!("listening on http://{}", listener.local_addr().expect("bound"));
    let app = Router::new().route("/api/simple", get(simple));
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("server failed");
}

//! The demo API: the routes of CONTRACT.md behind one `RateLimitLayer`.
//!
//! Shared by `examples/server/main.rs` and the integration tests (`tests/http.rs`), which
//! run exactly this router on a real listener.

use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::OnceLock;

use axum::extract::Query;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate::degrade::Band;
use tollgate::observe::MetricsObserver;
use tollgate::usage::{install_prometheus, UsageRoutes};
use tollgate::{Config, RateLimitLayer};

/// The demo's limiter: the one the configuration describes (its near-quota alerts included:
/// logged, and POSTed to `[alerts] webhook` when one is set), with metrics watching every
/// decision too.
pub fn layer(config: Config) -> Result<RateLimitLayer, Box<dyn std::error::Error>> {
    Ok(RateLimitLayer::try_new(config)?.observer(MetricsObserver::new()))
}

/// The process-wide Prometheus recorder (a process has one).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| install_prometheus().expect("no other metrics recorder is installed")).clone()
}

/// The demo router with `layer` applied to every route.
pub fn router(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/simple", get(simple))
        .route("/api/search", get(search))
        .route("/api/generate", post(generate))
        .merge(UsageRoutes::new(layer.clone()).prometheus(prometheus()).into_router())
        .layer(layer)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn simple() -> Json<Value> {
    Json(json!({ "served_at_ms": now_ms(), "message": "hello from tollgate" }))
}

#[derive(Deserialize)]
struct SearchParams {
    #[serde(default)]
    q: String,
}

/// A search that knows how to answer minimally: ids only, no titles or snippets.
async fn search(band: Band, Query(params): Query<SearchParams>) -> Json<Value> {
    let q = params.q.chars().take(100).collect::<String>();
    let results: Vec<Value> = (1..=5)
        .map(|i| {
            if band == Band::Minimal {
                json!({ "id": i })
            } else {
                json!({ "id": i, "title": format!("Result {i} for {q:?}"), "snippet": "…a longer excerpt…" })
            }
        })
        .collect();
    Json(
        json!({ "served_at_ms": now_ms(), "query": q, "minimal": band == Band::Minimal, "results": results }),
    )
}

async fn generate() -> Json<Value> {
    Json(json!({ "served_at_ms": now_ms(), "generated": "a very expensive paragraph" }))
}

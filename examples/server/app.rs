//! The demo API: the routes of CONTRACT.md behind one `RateLimitLayer`.
//!
//! Shared by `examples/server/main.rs` and the integration tests (`tests/http.rs`), which
//! run exactly this router on a real listener.

use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::OnceLock;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate::degrade::Band;
use tollgate::observe::MetricsObserver;
use tollgate::usage::{install_prometheus, UsageRoutes};
use tollgate::{ActualCost, Config, RateLimitLayer};

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
        .route("/login", post(login))
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

/// The most tokens one generation may report (a bigger number is a 400, not a century of debt).
const MAX_TOKENS: u64 = 1_000_000;

/// Generates `tokens` tokens (JSON body `{"tokens": N}`) and reports that as its cost, which
/// the limiter settles against the route's up-front cost; without `tokens` (or without a body)
/// the route's cost stands.
async fn generate(body: Bytes) -> Response {
    let tokens = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(fields)) => match fields.get("tokens") {
                None | Some(Value::Null) => None,
                Some(n) => match n.as_u64() {
                    Some(n) if n <= MAX_TOKENS => Some(n),
                    _ => return bad_request(&format!("`tokens` is a whole number from 0 to {MAX_TOKENS}")),
                },
            },
            _ => return bad_request("the body is a JSON object: {\"tokens\": N}"),
        }
    };
    let answer = Json(json!({
        "served_at_ms": now_ms(),
        "generated": "a very expensive paragraph",
        "tokens": tokens,
    }));
    match tokens {
        Some(n) => (ActualCost(n), answer).into_response(),
        None => answer.into_response(),
    }
}

fn bad_request(detail: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "status": 400, "detail": detail }))).into_response()
}

/// 200 for the password `open-sesame`, 401 otherwise. The route charges only failures
/// (`charge = "failures"`), so a user who gets it right is never locked out by successes.
async fn login(body: Bytes) -> Response {
    let password = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("password").and_then(Value::as_str).map(str::to_owned));
    if password.as_deref() == Some("open-sesame") {
        Json(json!({ "logged_in": true })).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, Json(json!({ "status": 401, "detail": "wrong password" }))).into_response()
    }
}

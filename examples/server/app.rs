//! The demo API: the routes of CONTRACT.md behind one `RateLimitLayer`.
//!
//! Shared by `examples/server/main.rs` and the integration tests (`tests/http.rs`), which
//! run exactly this router on a real listener.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate::degrade::Band;
use tollgate::RateLimitLayer;

/// The demo router with `layer` applied to every route.
pub fn router(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/simple", get(simple))
        .route("/api/search", get(search))
        .route("/api/generate", post(generate))
        .route("/usage", get(usage))
        .route("/policy", get(policy))
        .route("/dashboard", get(not_yet))
        .route("/metrics", get(not_yet))
        .with_state(layer.clone())
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

async fn usage(State(layer): State<RateLimitLayer>, parts: Parts) -> Response {
    match layer.standing(&parts).await {
        Ok(standing) => {
            let decision = standing.decision;
            let headline = decision.headline();
            let policies: Vec<Value> = decision
                .policies()
                .iter()
                .map(|p| {
                    let policy = &standing.tier.policies()[usize::from(p.index)];
                    json!({
                        "name": policy.name(),
                        "limit": p.limit,
                        "remaining": p.remaining,
                        "reset": decision.reset_epoch_secs(p),
                        "window_secs": policy.quota().window_secs(),
                    })
                })
                .collect();
            Json(json!({
                "tier": standing.tier.name(),
                "limit": headline.limit,
                "remaining": headline.remaining,
                "reset": decision.reset_epoch_secs(&headline),
                "policies": policies,
                "upgrade_url": standing.tier.upgrade_url(),
            }))
            .into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "rate-limit store unavailable").into_response(),
    }
}

async fn policy(State(layer): State<RateLimitLayer>) -> Json<Value> {
    let limits = layer.limits();
    let tiers: Vec<Value> = limits
        .tiers()
        .iter()
        .map(|t| {
            let policies: Vec<Value> = t
                .policies()
                .iter()
                .map(|p| json!({ "name": p.name(), "burst": p.quota().burst(), "window_secs": p.quota().window_secs() }))
                .collect();
            json!({ "name": t.name(), "policies": policies, "upgrade_url": t.upgrade_url() })
        })
        .collect();
    let routes: Vec<Value> = limits
        .routes()
        .entries()
        .map(|(route, rule)| json!({ "route": route, "cost": rule.cost, "exempt": rule.exempt }))
        .collect();
    Json(json!({ "default_tier": limits.default_tier().name(), "tiers": tiers, "routes": routes }))
}

async fn not_yet() -> (StatusCode, &'static str) {
    (StatusCode::NOT_IMPLEMENTED, "not implemented yet")
}

//! The axum handlers.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::request::Parts;
use http::HeaderValue;

use super::page;
use super::report::{PublishedLimits, UsageReport};
use crate::answer::{self, Unavailable};
use crate::key::KeyExtractor;
use crate::store::StoreError;
use crate::RateLimitLayer;

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
/// A caller's standing changes with every request: never cache it.
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// `GET /usage`: the caller's standing as JSON ([`UsageReport`]), read without charging.
/// A store fault answers 503 with a problem+json body.
pub async fn usage<K: KeyExtractor>(State(layer): State<RateLimitLayer<K>>, parts: Parts) -> Response {
    match layer.standing(&parts).await {
        Ok(standing) => {
            let body = serde_json::to_vec(&UsageReport::new(&standing)).expect("a report always serialises");
            ([(CONTENT_TYPE, JSON.clone()), (CACHE_CONTROL, NO_STORE.clone())], body).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// `GET /policy`: every tier's limits and every route's cost as JSON ([`PublishedLimits`]).
pub async fn policy<K: KeyExtractor>(State(layer): State<RateLimitLayer<K>>) -> Response {
    let body = serde_json::to_vec(&PublishedLimits::new(layer.limits())).expect("limits always serialise");
    ([(CONTENT_TYPE, JSON.clone())], body).into_response()
}

/// `GET /dashboard`: the caller's standing as a self-contained HTML page: a bar per policy,
/// when each is full again, and the tier's upgrade link. A store fault answers 503 with a
/// problem+json body.
pub async fn dashboard<K: KeyExtractor>(State(layer): State<RateLimitLayer<K>>, parts: Parts) -> Response {
    match layer.standing(&parts).await {
        Ok(standing) => {
            let now = standing.decision.now().as_secs();
            let html = page::render(&UsageReport::new(&standing), now);
            ([(CONTENT_TYPE, HTML.clone()), (CACHE_CONTROL, NO_STORE.clone())], html).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// 503 with a problem+json body: the store could not say how much the caller has left.
pub(crate) fn unavailable(error: &StoreError) -> Response {
    tracing::debug!(%error, "tollgate: usage unavailable: store fault");
    answer::unavailable(Unavailable::Usage).map(axum::body::Body::from).into_response()
}

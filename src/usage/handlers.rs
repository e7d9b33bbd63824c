//! The axum handlers.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, VARY};
use http::request::Parts;
use http::HeaderValue;

use super::page;
use super::report::{PublishedLimits, UsageReport};
use crate::answer::{self, Unavailable};
use crate::history::AdminReport;
use crate::key::KeyExtractor;
use crate::store::StoreError;
use crate::RateLimitLayer;

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
/// A caller's standing changes with every request: never cache it.
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// The caller's report, with its history when the layer keeps one (a history that cannot be
/// read is left out, and logged: the standing is still worth showing).
async fn report<K: KeyExtractor>(
    layer: &RateLimitLayer<K>,
    parts: &Parts,
) -> Result<(UsageReport, u64), StoreError> {
    let standing = layer.standing(parts).await?;
    let now = standing.decision.now().as_secs();
    let mut report = UsageReport::new(&standing);
    if let Some(history) = layer.usage_history() {
        match history.client(&standing.key, now).await {
            Ok(history) => report.history = Some(history),
            Err(error) => tracing::debug!(%error, "tollgate: usage history unavailable"),
        }
    }
    Ok((report, now))
}

/// `GET /usage`: the caller's standing as JSON ([`UsageReport`]), read without charging, with
/// its `history` when the layer keeps one. A store fault answers 503 with a problem+json body.
pub async fn usage<K: KeyExtractor>(State(layer): State<RateLimitLayer<K>>, parts: Parts) -> Response {
    match report(&layer, &parts).await {
        Ok((report, _)) => {
            let body = serde_json::to_vec(&report).expect("a report always serialises");
            ([(CONTENT_TYPE, JSON.clone()), (CACHE_CONTROL, NO_STORE.clone())], body).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// `GET /policy`: every tier's limits and every route's cost: JSON ([`PublishedLimits`]) for
/// programs, and for a browser (an `Accept` that prefers `text/html`) the same as a page that
/// reads like a pricing table ([`policy_page`](super::policy_page)).
pub async fn policy<K: KeyExtractor>(State(layer): State<RateLimitLayer<K>>, parts: Parts) -> Response {
    let published = PublishedLimits::new(layer.limits());
    let vary = (VARY, HeaderValue::from_static("accept"));
    if prefers_html(&parts.headers) {
        let html = super::policy_page::render(&published);
        ([(CONTENT_TYPE, HTML.clone()), vary], html).into_response()
    } else {
        let body = serde_json::to_vec(&published).expect("limits always serialise");
        ([(CONTENT_TYPE, JSON.clone()), vary], body).into_response()
    }
}

/// True when the `Accept` header ranks `text/html` above `application/json` (a browser's
/// `text/html,…,*/*;q=0.8` does; `*/*`, `application/json` or no header do not).
pub(crate) fn prefers_html(headers: &http::HeaderMap) -> bool {
    let (mut html, mut json) = (0.0f32, 0.0f32);
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()))
                .next()
                .unwrap_or(1.0);
            match media.as_str() {
                "text/html" => html = html.max(q),
                "application/json" => json = json.max(q),
                "*/*" | "application/*" => json = json.max(q),
                _ => {}
            }
        }
    }
    html > 0.0 && html > json
}

/// `GET /dashboard`: the caller's standing as a self-contained HTML page: charts of the last
/// hour and day (when the layer keeps a history and the caller is identified), then a bar per
/// policy, when each is full again, and the tier's upgrade link. A store fault answers 503
/// with a problem+json body.
pub async fn dashboard<K: KeyExtractor>(State(layer): State<RateLimitLayer<K>>, parts: Parts) -> Response {
    match report(&layer, &parts).await {
        Ok((report, now)) => {
            let html = page::render(&report, now);
            ([(CONTENT_TYPE, HTML.clone()), (CACHE_CONTROL, NO_STORE.clone())], html).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// The query of `GET /admin/usage`.
#[derive(Debug, serde::Deserialize)]
pub struct AdminQuery {
    /// How many of the busiest clients to list (20 by default, at most 1000).
    pub limit: Option<usize>,
}

/// The operator's report, or the answer that replaces it (403 without an admin key, 503 when
/// the history cannot be read).
async fn admin_report<K: KeyExtractor>(
    layer: &RateLimitLayer<K>,
    parts: &Parts,
    limit: Option<usize>,
) -> Result<(AdminReport, u64), Response> {
    if !layer.is_admin(parts) {
        return Err(answer::not_an_admin().map(axum::body::Body::from).into_response());
    }
    let now = layer.now_secs();
    let limit = limit.unwrap_or(20).clamp(1, 1_000);
    let report = match layer.usage_history() {
        Some(history) => history.report(now, limit).await.map_err(|error| {
            tracing::debug!(%error, "tollgate: operator's view unavailable");
            answer::unavailable(Unavailable::History).map(axum::body::Body::from).into_response()
        })?,
        None => AdminReport::default(),
    };
    Ok((report, now))
}

/// `GET /admin/usage`: the operator's view of the last hour as JSON ([`AdminReport`]): the
/// busiest clients (`?limit=`, 20 by default), rejections by tier and by route, everyone's
/// requests per minute. 403 without an admin key (`X-API-Key`, one of `[admin] keys`).
pub async fn admin_usage<K: KeyExtractor>(
    State(layer): State<RateLimitLayer<K>>,
    Query(query): Query<AdminQuery>,
    parts: Parts,
) -> Response {
    match admin_report(&layer, &parts, query.limit).await {
        Ok((report, _)) => {
            let body = serde_json::to_vec(&report).expect("a report always serialises");
            ([(CONTENT_TYPE, JSON.clone()), (CACHE_CONTROL, NO_STORE.clone())], body).into_response()
        }
        Err(answer) => answer,
    }
}

/// `GET /admin`: the operator's view as a page with a chart ([`admin_page`](super::admin_page)).
/// 403 without an admin key.
pub async fn admin<K: KeyExtractor>(
    State(layer): State<RateLimitLayer<K>>,
    Query(query): Query<AdminQuery>,
    parts: Parts,
) -> Response {
    match admin_report(&layer, &parts, query.limit).await {
        Ok((report, now)) => {
            let html = super::admin_page::render(&report, now);
            ([(CONTENT_TYPE, HTML.clone()), (CACHE_CONTROL, NO_STORE.clone())], html).into_response()
        }
        Err(answer) => answer,
    }
}

/// 503 with a problem+json body: the store could not say how much the caller has left.
pub(crate) fn unavailable(error: &StoreError) -> Response {
    tracing::debug!(%error, "tollgate: usage unavailable: store fault");
    answer::unavailable(Unavailable::Usage).map(axum::body::Body::from).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn browsers_get_html_and_programs_get_json() {
        // Chromium's and Firefox's navigation Accept.
        assert!(prefers_html(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
        )));
        assert!(prefers_html(&accept("text/html")));
        assert!(!prefers_html(&http::HeaderMap::new()), "no Accept: JSON as before");
        assert!(!prefers_html(&accept("*/*")), "curl");
        assert!(!prefers_html(&accept("application/json")));
        assert!(!prefers_html(&accept("application/json, text/html;q=0.5")));
        assert!(!prefers_html(&accept("text/html;q=0")));
        assert!(prefers_html(&accept("application/json;q=0.5, text/html")));
    }
}

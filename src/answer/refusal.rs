//! The answers the limiter writes itself: 429 (over the rate, or too many in flight), 403 (a
//! cost no bucket of the tier can ever hold) and 503 (the store is down and `on_error =
//! "deny"`), each an RFC 9457 problem with its rate-limit headers.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use super::headers::{retry_after_secs, RateLimitHeaders};
use super::problem::{
    Problem, PROBLEM_CONCURRENCY, PROBLEM_JSON, PROBLEM_OVER_CAPACITY, PROBLEM_RATE_LIMITED,
    PROBLEM_UNAVAILABLE,
};
use crate::policy::Tier;
use crate::store::Decision;

/// A response the limiter wrote, with a body of its own.
pub(crate) type OwnResponse = Response<Bytes>;

static ONE_SECOND: HeaderValue = HeaderValue::from_static("1");

fn problem_response(status: StatusCode, problem: &Problem<'_>, headers: RateLimitHeaders) -> OwnResponse {
    let mut response = Response::new(problem.to_bytes());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON.clone());
    headers.apply(response.headers_mut());
    response
}

/// The name a problem gives a policy of `tier`: the policy's, else the tier's.
fn policy_name(tier: &Tier, index: u8) -> &str {
    tier.policies().get(usize::from(index)).map_or(tier.name(), |p| p.name())
}

/// 429: the request does not fit now. `headers` carry `Retry-After`.
pub(crate) fn too_many_requests(tier: &Tier, decision: &Decision, headers: RateLimitHeaders) -> OwnResponse {
    let violated = decision.headline();
    let wait = retry_after_secs(violated.retry_after);
    let name = policy_name(tier, violated.index);
    let detail = format!(
        "The {} tier allows {} requests in a burst (policy \"{name}\"); this request can be retried in {wait} s.",
        tier.name(),
        violated.limit
    );
    let mut problem = Problem::new(PROBLEM_RATE_LIMITED, "Too Many Requests", 429, &detail).tier(tier.name());
    problem.policy = Some(name);
    problem.limit = Some(violated.limit);
    problem.remaining = Some(violated.remaining);
    problem.retry_after = Some(wait);
    problem.upgrade_url = tier.upgrade_url();
    problem_response(StatusCode::TOO_MANY_REQUESTS, &problem, headers)
}

/// 403: the request costs more than the tier's smallest burst; waiting will not help.
pub(crate) fn over_capacity(
    tier: &Tier,
    decision: &Decision,
    cost: u64,
    headers: RateLimitHeaders,
) -> OwnResponse {
    let smallest = decision.policies().iter().min_by_key(|p| p.limit).copied().unwrap_or_default();
    let name = policy_name(tier, smallest.index);
    let detail = format!(
        "This request costs {cost} tokens but the {} tier holds at most {} (policy \"{name}\"): it can never \
         be admitted at this tier. Waiting will not help; a higher tier will.",
        tier.name(),
        smallest.limit
    );
    let mut problem =
        Problem::new(PROBLEM_OVER_CAPACITY, "Request exceeds the tier's capacity", 403, &detail)
            .tier(tier.name());
    problem.policy = Some(name);
    problem.limit = Some(smallest.limit);
    problem.cost = Some(cost);
    problem.upgrade_url = tier.upgrade_url();
    problem_response(StatusCode::FORBIDDEN, &problem, headers)
}

/// 429: the client already has `limit` requests in flight (of its tier, or on this route).
pub(crate) fn too_many_in_flight(tier: &Tier, limit: u32) -> OwnResponse {
    let detail = format!(
        "The {} tier allows {limit} requests in flight at once; wait for one to finish.",
        tier.name()
    );
    let mut problem = Problem::new(PROBLEM_CONCURRENCY, "Too Many Concurrent Requests", 429, &detail)
        .tier(tier.name())
        .retry_after(1);
    problem.limit = Some(u64::from(limit));
    problem.upgrade_url = tier.upgrade_url();
    let mut response = problem_response(StatusCode::TOO_MANY_REQUESTS, &problem, RateLimitHeaders::default());
    response.headers_mut().insert(RETRY_AFTER, ONE_SECOND.clone());
    response
}

/// What could not be done because the store could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "usage"), allow(dead_code))] // the usage routes' answers
pub(crate) enum Unavailable {
    /// Limit the request (`on_error = "deny"`).
    Limit,
    /// Read the caller's usage (`/usage`, `/dashboard`).
    Usage,
    /// Read the usage history of the operator's view (`/admin`, `/admin/usage`).
    History,
}

/// 503: the store cannot be reached. Never a 500, never a 429.
pub(crate) fn unavailable(what: Unavailable) -> OwnResponse {
    let detail = match what {
        Unavailable::Limit => {
            "The rate limiter's store cannot be reached and this service is configured to refuse requests \
             until it can. Please retry shortly."
        }
        Unavailable::Usage => {
            "The rate limiter's store cannot be reached, so your usage cannot be read right now. \
             Please retry shortly."
        }
        Unavailable::History => {
            "The usage history cannot be read from the rate limiter's store right now. Please retry \
             shortly."
        }
    };
    let problem = Problem::new(PROBLEM_UNAVAILABLE, "Rate limiter unavailable", 503, detail).retry_after(1);
    let mut response =
        problem_response(StatusCode::SERVICE_UNAVAILABLE, &problem, RateLimitHeaders::default());
    response.headers_mut().insert(RETRY_AFTER, ONE_SECOND.clone());
    response
}

/// 403 for the operator's routes: no admin key, or not one of `[admin] keys`.
#[cfg(feature = "usage")]
pub(crate) fn not_an_admin() -> OwnResponse {
    let problem = Problem::new(
        super::problem::PROBLEM_ADMIN_ONLY,
        "Forbidden",
        403,
        "The operator's view needs an admin key in the X-API-Key header (one of [admin] keys).",
    );
    problem_response(StatusCode::FORBIDDEN, &problem, RateLimitHeaders::default())
}

//! What the client is told: rate-limit headers and RFC 9457 problem bodies. Every answer the
//! limiter writes itself is built here: 429 (over the rate, or too many requests in flight),
//! 403 (a cost the tier can never hold) and 503 (store unreachable, for the layer and for the
//! usage routes). A degraded answer is the handler's (or a replay of it, see
//! [`degrade`](crate::degrade)) with these headers merged in.
//!
//! Headers, per [`HeaderMode`]:
//! * legacy: `X-RateLimit-Limit` (the burst), `X-RateLimit-Remaining` (whole tokens left),
//!   `X-RateLimit-Reset` (Unix epoch seconds when the bucket is full again), describing the
//!   policy with the smallest remaining fraction (on a 429, the violated one);
//! * ietf: `RateLimit-Policy` and `RateLimit` of draft-ietf-httpapi-ratelimit-headers-10,
//!   structured-field lists with one item per policy, written with the `sfv` crate:
//!   `RateLimit-Policy: "free";q=10;w=10` (`w`: seconds to refill from empty at the nominal
//!   rate, exactly 86400 for a daily quota) and `RateLimit: "free";r=3;t=1` (`t`: seconds until
//!   the next whole token, rounded up; 0 when the policy is full).
//!
//! Rejections carry `Retry-After` (whole seconds, rounded up: at most one second more than the
//! exact wait, and never less than the violated policy's `t`) and an
//! `application/problem+json` body whose `type` is one of the URIs below.
//!
//! No header value is formatted with `format!`: integers are written with `itoa` into a
//! per-thread buffer whose slices become header values without copying (one allocation per
//! 16 KiB of header text), and every per-tier constant (`X-RateLimit-Limit`,
//! `RateLimit-Policy`) is built once.

mod headers;
mod problem;
mod refusal;

pub use headers::HeaderMode;
pub(crate) use headers::{Answers, RateLimitHeaders};
pub use problem::{
    Problem, PROBLEM_ADMIN_ONLY, PROBLEM_CONCURRENCY, PROBLEM_OVER_CAPACITY, PROBLEM_RATE_LIMITED,
    PROBLEM_UNAVAILABLE,
};
#[cfg(feature = "usage")]
pub(crate) use refusal::not_an_admin;
pub(crate) use refusal::{
    over_capacity, too_many_in_flight, too_many_requests, unavailable, OwnResponse, Unavailable,
};

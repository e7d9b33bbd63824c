//! What the client is told: rate-limit headers and RFC 9457 problem bodies.
//!
//! Headers, per [`HeaderMode`]:
//! * legacy: `X-RateLimit-Limit` (the burst), `X-RateLimit-Remaining` (whole tokens left),
//!   `X-RateLimit-Reset` (Unix epoch seconds when the bucket is full again), describing the
//!   policy with the smallest remaining fraction (on a 429, the violated one);
//! * ietf: `RateLimit-Policy` and `RateLimit` of draft-ietf-httpapi-ratelimit-headers-10,
//!   structured-field lists with one item per policy, written with the `sfv` crate:
//!   `RateLimit-Policy: "free";q=10;w=10` and `RateLimit: "free";r=3;t=7`.
//!
//! Rejections carry `Retry-After` (whole seconds, rounded up: at most one second more than the
//! exact wait) and an `application/problem+json` body whose `type` is one of the URIs below.
//!
//! No header value is formatted with `format!`: integers are written with `itoa` into a
//! per-thread buffer whose slices become header values without copying (one allocation per
//! 16 KiB of header text), and every per-tier constant (`X-RateLimit-Limit`,
//! `RateLimit-Policy`) is built once.

mod headers;
mod problem;

pub use headers::HeaderMode;
pub(crate) use headers::{policy_header, retry_after_secs, sf_name, RateLimitHeaders};
pub use problem::{
    Problem, PROBLEM_CONCURRENCY, PROBLEM_OVER_CAPACITY, PROBLEM_RATE_LIMITED, PROBLEM_UNAVAILABLE,
};

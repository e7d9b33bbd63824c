//! Client side: be a well-behaved consumer of rate-limited APIs, whatever dialect they speak.
//!
//! [`RetryLayer`] wraps any `tower::Service<http::Request<B>>` client (hyper-util's legacy
//! `Client`, for one) and
//!
//! - **reads every common dialect** of rate-limit headers into one [`RateLimitSignal`]:
//!   `Retry-After`, the IETF `RateLimit` / `RateLimit-Policy` fields (String or Token policy
//!   names), express-rate-limit's draft-7 combined `RateLimit: limit=…, remaining=…, reset=…`
//!   and draft-6 `RateLimit-Limit/-Remaining/-Reset`, and the `X-RateLimit-*` trio of GitHub
//!   and many others (see [`Dialect`]). Every wait read is capped at
//!   [`RateLimitSignal::MAX_WAIT`] (one day);
//! - **recognises a refusal by its meaning** ([`Classifier`], by default
//!   [`DefaultClassifier`]): 429, 503, and a 403 that carries a rate-limit signal (GitHub's
//!   primary and secondary limits); a plain 403 is never retried;
//! - **retries refusals** after the wait the server named (`Retry-After`, else the reset of the
//!   exhausted quota), or without one after exponential [`Backoff`] with full jitter, within a
//!   cap on attempts and on the total time waited. A wait beyond the budget is not slept
//!   through: the refusal is returned at once. Only requests that are safe to repeat are
//!   repeated ([`Repeatable`]: idempotent methods by default; the body must be `Clone`);
//! - **queues and paces** requests host by host ([`Pacer`]): concurrent requests to one host
//!   wait their turn and are released one at a time at the pace the server published, never
//!   all at once; a request dropped while queued gives its place up; the queue is bounded;
//! - **reports**: every wait is a `tracing` event (target `tollgate::client`, with `attempt`,
//!   `reason`, `delay_ms`), and the final response carries a [`RetryReport`] extension
//!   (attempts, total wait, last status, why it stopped). Inner errors, and requests never
//!   sent, come back as [`RetryError`] with the same report.
//!
//! The decisions are shared with the `reqwest` feature's `reqwest::RetryMiddleware` for
//! `reqwest-middleware` users.
//!
//! # Why not `tower::retry`
//!
//! `tower::retry::Policy` sees a request and its finished result, and nothing in between. The
//! pacer needs more than that, so the loop is our own:
//!
//! - each attempt first takes a place in its host's queue, and the [`Permit`] it gets spans
//!   the send: it is answered with the response (which sets the host's pace, knowing how many
//!   releases the server had not yet counted) or dropped unanswered on an error or a cancel
//!   (which frees a probe's place). A `Policy` has no hook before the first attempt and none
//!   around the inner call;
//! - one budget ([`RetryPolicy::max_wait`]) covers the time in the queue and the waits before
//!   retries, and a retried request keeps its place ahead of later arrivals: per-request state
//!   that the per-host queue must see;
//! - an error carries the [`RetryReport`] ([`RetryError`]), where `tower::retry::Retry` keeps
//!   the inner error type;
//! - `tower::retry::backoff::ExponentialBackoff` adds a proportional jitter on top of the base
//!   (waits in `[base, base × (1 + jitter)]`), while clients refused together should spread
//!   over the whole `[0, base]` ("full jitter"), and a server's own wait must replace it.
//!
//! The same bookkeeping drives the reqwest middleware, so both adapters behave alike.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tollgate::client::{RetryLayer, RetryPolicy, RetryReport, StopReason};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! // Stands in for `hyper_util::client::legacy::Client`: always 429, come back in 5 s.
//! let api = service_fn(|_req: Request<String>| async {
//!     let mut res = Response::new(String::new());
//!     *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
//!     res.headers_mut().insert("retry-after", "5".parse().unwrap());
//!     Ok::<_, std::convert::Infallible>(res)
//! });
//!
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(
//!         RetryPolicy::new().max_attempts(3).max_wait(Duration::from_secs(60)),
//!     ))
//!     .service(api);
//!
//! let res = client
//!     .oneshot(Request::get("http://api.test/items").body(String::new()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! let report = res.extensions().get::<RetryReport>().unwrap();
//! assert_eq!(report.attempts, 3);
//! assert_eq!(report.total_wait, Duration::from_secs(10));
//! assert_eq!(report.stop, StopReason::MaxAttempts);
//! # }
//! ```

mod classify;
mod dialect;
mod error;
mod future;
mod layer;
mod pacer;
mod policy;
mod repeatable;
mod report;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
mod service;
mod signal;

pub use self::classify::{Classifier, DefaultClassifier, Verdict};
pub use self::error::RetryError;
pub use self::future::ResponseFuture;
pub use self::layer::RetryLayer;
pub use self::pacer::{Acquire, AcquireError, Pacer, Permit};
pub use self::policy::{Backoff, RetryPolicy};
pub use self::repeatable::{AnyMethod, IdempotentMethods, Repeatable};
pub use self::report::{RetryReport, StopReason, Wait, WaitReason};
pub use self::service::Retry;
pub use self::signal::{Dialect, Quota, RateLimitSignal};

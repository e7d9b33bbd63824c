//! Client side: be a well-behaved consumer of rate-limited APIs.
//!
//! [`RetryLayer`] wraps any `tower::Service<http::Request<B>>` client (hyper-util's legacy
//! `Client`, for one) and
//!
//! - **retries 429 and 503** after the server's `Retry-After` (delay-seconds or HTTP-date), or
//!   without one after exponential [`Backoff`] with full jitter, within a cap on attempts and on
//!   the total time waited. A `Retry-After` beyond the wait budget is not slept through: the 429
//!   is returned at once. Only requests that are safe to repeat are repeated ([`Repeatable`]:
//!   idempotent methods by default; the body must be `Clone` to be replayed);
//! - **paces itself** ([`Pacer`]) from the server's `RateLimit` (draft-ietf-httpapi-ratelimit-headers)
//!   or `X-RateLimit-Remaining` / `X-RateLimit-Reset` headers, per host: when nothing remains it
//!   waits for the reset before sending, when little remains it spreads what is left;
//! - **reports**: every wait is a `tracing` event (target `tollgate::client`, with `attempt`,
//!   `reason`, `delay_ms`), and the final response carries a [`RetryReport`] extension
//!   (attempts, total wait, last status, why it stopped). Inner errors come back as
//!   [`RetryError`] with the same report.
//!
//! The decisions are pure functions ([`headers`], [`Backoff`], [`RetryPolicy`]) shared with the
//! `reqwest` feature's `reqwest::RetryMiddleware` for `reqwest-middleware` users.
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

mod error;
mod future;
pub mod headers;
mod layer;
mod pacer;
mod policy;
mod repeatable;
mod report;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
mod service;

pub use self::error::RetryError;
pub use self::future::ResponseFuture;
pub use self::layer::RetryLayer;
pub use self::pacer::Pacer;
pub use self::policy::{Backoff, RetryPolicy};
pub use self::repeatable::{AnyMethod, IdempotentMethods, Repeatable};
pub use self::report::{RetryReport, StopReason, Wait, WaitReason};
pub use self::service::Retry;

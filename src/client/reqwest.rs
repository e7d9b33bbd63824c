//! [`RetryMiddleware`]: the same retries and pacing for `reqwest-middleware` users.
//!
//! Decisions come from the same [`RetryPolicy`] as the tower [`RetryLayer`](super::RetryLayer),
//! so a header is understood the same way by both. A request is repeated only when the policy's
//! [`Repeatable`](super::Repeatable) allows it *and* `reqwest::Request::try_clone` can copy it
//! (a streaming body cannot be replayed).
//!
//! ```
//! use std::time::Duration;
//! use tollgate::client::{reqwest::RetryMiddleware, RetryPolicy};
//!
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(RetryMiddleware::new(RetryPolicy::new().max_wait(Duration::from_secs(20))))
//!     .build();
//! # drop(client);
//! ```
//!
//! The final response carries a [`RetryReport`](super::RetryReport) extension
//! (`response.extensions().get::<RetryReport>()`). When the request fails, the error is
//! `reqwest_middleware::Error::Middleware` holding a
//! [`RetryError`]`<reqwest_middleware::Error>` (reach it with `anyhow`'s `downcast_ref`), whose
//! `inner()` is the original error (`None` when the request was never sent: its host's queue
//! was full, or its turn would have come after its wait budget).

use std::sync::Arc;

use http::Extensions;
use reqwest_middleware::reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use super::policy::{Decision, Tracker};
use super::{RetryError, RetryPolicy};

/// `reqwest_middleware::Middleware` retrying refusals and pacing from rate-limit headers.
///
/// ```
/// use tollgate::client::{reqwest::RetryMiddleware, RetryPolicy};
///
/// let middleware = RetryMiddleware::new(RetryPolicy::new().max_attempts(5));
/// assert_eq!(middleware.policy().get_max_attempts(), 5);
/// ```
#[derive(Clone, Debug, Default)]
pub struct RetryMiddleware {
    policy: RetryPolicy,
}

impl RetryMiddleware {
    /// A middleware applying `policy`.
    ///
    /// ```
    /// let m = tollgate::client::reqwest::RetryMiddleware::new(Default::default());
    /// assert_eq!(m.policy().get_max_attempts(), 4);
    /// ```
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }

    /// The policy this middleware applies.
    ///
    /// ```
    /// let m = tollgate::client::reqwest::RetryMiddleware::default();
    /// assert!(m.policy().get_pacer().is_some());
    /// ```
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

fn host_key(request: &Request) -> Option<Arc<str>> {
    let url = request.url();
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}").into(),
        None => host.into(),
    })
}

#[async_trait::async_trait]
impl Middleware for RetryMiddleware {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let repeatable =
            self.policy.is_repeatable(request.method(), request.headers()) && request.try_clone().is_some();
        let mut tracker = Tracker::new(self.policy.clone(), host_key(&request), repeatable);
        let mut pending = Some(request);
        loop {
            let permit = match tracker.admission() {
                Some(acquire) => match tracker.admitted(acquire.await) {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        let error = RetryError::<reqwest_middleware::Error>::not_sent(tracker.into_report());
                        return Err(reqwest_middleware::Error::middleware(error));
                    }
                },
                None => None,
            };
            let attempt =
                if repeatable { pending.as_ref().and_then(Request::try_clone) } else { pending.take() }
                    .expect("a request is kept for every attempt");
            tracker.sent();
            let mut response = match next.clone().run(attempt, extensions).await {
                Ok(response) => response,
                Err(e) => {
                    drop(permit); // unanswered
                    let error = RetryError::new(e, tracker.into_report());
                    return Err(reqwest_middleware::Error::middleware(error));
                }
            };
            match tracker.on_response(response.status(), response.headers(), permit) {
                Decision::Wait(delay, _) => {
                    drop(response);
                    tokio::time::sleep(delay).await;
                }
                Decision::Stop(_) => {
                    response.extensions_mut().insert(tracker.into_report());
                    return Ok(response);
                }
            }
        }
    }
}

//! [`Retry`]: the client service that retries refusals and paces itself.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::policy::{host_key, Tracker};
use super::{RetryError, RetryLayer, RetryPolicy, RetryReport};

/// Retries refusals (429, 503, and 403s that carry a rate-limit signal: see
/// [`DefaultClassifier`](super::DefaultClassifier)) and paces requests host by host from the
/// servers' rate-limit headers (see [`Pacer`](super::Pacer)).
///
/// Works with any `Service<http::Request<B>>` answering `http::Response<_>`, such as
/// hyper-util's legacy `Client`. To replay a request the body must be `Clone`
/// (`String`, `Bytes`, `http_body_util::Full<Bytes>`, `Empty<Bytes>`…); buffer streaming
/// bodies into `Full<Bytes>` first. Which requests are replayed at all is the policy's
/// [`Repeatable`](super::Repeatable) choice (idempotent methods by default).
///
/// The final response carries a [`RetryReport`] extension. An inner error is returned as
/// [`RetryError`], with the report so far; inner errors are not retried. So is a request that
/// was never sent because its host's queue was full or its turn would have come after its
/// wait budget.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use http::{Request, Response, StatusCode};
/// use tollgate::client::{Retry, RetryPolicy, RetryReport, WaitReason};
/// use tower::{service_fn, ServiceExt};
///
/// // A server that says "429, come back in 2 s" once, then answers.
/// let calls = Arc::new(AtomicU32::new(0));
/// let server = service_fn(move |_req: Request<String>| {
///     let n = calls.fetch_add(1, Ordering::SeqCst);
///     async move {
///         let mut res = Response::new(String::new());
///         if n == 0 {
///             *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
///             res.headers_mut().insert("retry-after", "2".parse().unwrap());
///         }
///         Ok::<_, std::convert::Infallible>(res)
///     }
/// });
///
/// let client = Retry::new(server, RetryPolicy::new());
/// let start = tokio::time::Instant::now();
/// let res = client.oneshot(Request::get("http://api.test/").body(String::new()).unwrap()).await.unwrap();
///
/// assert_eq!(res.status(), StatusCode::OK);
/// assert_eq!(start.elapsed(), Duration::from_secs(2));
/// let report = res.extensions().get::<RetryReport>().unwrap();
/// assert_eq!(report.attempts, 2);
/// assert_eq!(report.waits[0].reason, WaitReason::RetryAfter);
/// assert_eq!(report.last_status, Some(StatusCode::OK));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S> Retry<S> {
    /// Wraps `inner` with `policy`.
    ///
    /// ```
    /// # use tollgate::client::{Retry, RetryPolicy};
    /// let svc = Retry::new((), RetryPolicy::new().max_attempts(2));
    /// assert_eq!(svc.policy().get_max_attempts(), 2);
    /// ```
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// A [`RetryLayer`] applying `policy`.
    ///
    /// ```
    /// # use tollgate::client::{Retry, RetryPolicy};
    /// let layer = Retry::<()>::layer(RetryPolicy::new());
    /// assert_eq!(layer.policy().get_max_attempts(), 4);
    /// ```
    pub fn layer(policy: RetryPolicy) -> RetryLayer {
        RetryLayer::new(policy)
    }

    /// The policy.
    ///
    /// ```
    /// # use tollgate::client::{Retry, RetryPolicy};
    /// assert!(Retry::new((), RetryPolicy::new()).policy().get_pacer().is_some());
    /// ```
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The inner service.
    ///
    /// ```
    /// # use tollgate::client::{Retry, RetryPolicy};
    /// assert_eq!(*Retry::new(5, RetryPolicy::new()).get_ref(), 5);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// # use tollgate::client::{Retry, RetryPolicy};
    /// let mut svc = Retry::new(5, RetryPolicy::new());
    /// *svc.get_mut() = 6;
    /// assert_eq!(*svc.get_ref(), 6);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    ///
    /// ```
    /// # use tollgate::client::{Retry, RetryPolicy};
    /// assert_eq!(Retry::new(5, RetryPolicy::new()).into_inner(), 5);
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    B: Clone,
{
    type Response = Response<ResBody>;
    type Error = RetryError<S::Error>;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| RetryError::new(e, RetryReport::default()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The instance polled ready moves into the future; `self` keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let repeatable = self.policy.is_repeatable(request.method(), request.headers());
        let host = host_key(request.uri(), request.headers());
        let tracker = Tracker::new(self.policy.clone(), host, repeatable);
        ResponseFuture::new(inner, request, repeatable, tracker)
    }
}

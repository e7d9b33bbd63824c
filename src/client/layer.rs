//! [`RetryLayer`]: applies [`Retry`] to a client service.

use tower_layer::Layer;

use super::{Classifier, Retry, RetryPolicy};

/// Layer that wraps a client service in [`Retry`].
///
/// Holds only the [`RetryPolicy`]; cheap to clone. Services made by one layer share its
/// [`Pacer`](super::Pacer).
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::{RetryLayer, RetryPolicy};
/// use tower::{Layer, service_fn};
///
/// let layer = RetryLayer::new(RetryPolicy::new().max_wait(Duration::from_secs(10)));
/// let service = layer.layer(service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// }));
/// assert_eq!(service.policy().get_max_wait(), Duration::from_secs(10));
/// ```
#[derive(Clone, Debug, Default)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// A layer applying `policy`.
    ///
    /// ```
    /// let layer = tollgate::client::RetryLayer::new(tollgate::client::RetryPolicy::new());
    /// assert_eq!(layer.policy().get_max_attempts(), 4);
    /// ```
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }

    /// The same layer with another [`Classifier`]: the rules that tell a refusal from an
    /// answer (see [`RetryPolicy::classifier`]).
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use tollgate::client::{Classifier, DefaultClassifier, RateLimitSignal, RetryLayer, Verdict};
    ///
    /// // Also retry 502s from a flaky gateway, after the backoff.
    /// let layer = RetryLayer::default().classifier(|signal: &RateLimitSignal, headers: &HeaderMap| {
    ///     if signal.status() == StatusCode::BAD_GATEWAY {
    ///         Verdict::Refused
    ///     } else {
    ///         DefaultClassifier.classify(signal, headers)
    ///     }
    /// });
    /// let signal = RateLimitSignal::parse(StatusCode::BAD_GATEWAY, &HeaderMap::new(), std::time::SystemTime::now());
    /// assert_eq!(layer.policy().classify(&signal, &HeaderMap::new()), Verdict::Refused);
    /// ```
    pub fn classifier(mut self, classifier: impl Classifier) -> Self {
        self.policy = self.policy.classifier(classifier);
        self
    }

    /// The policy this layer applies.
    ///
    /// ```
    /// let layer = tollgate::client::RetryLayer::default();
    /// assert!(layer.policy().get_pacer().is_some());
    /// ```
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone())
    }
}

//! Which responses are refusals: the [`Classifier`] extension point.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::RateLimitSignal;

/// What a [`Classifier`] makes of a response.
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::Verdict;
///
/// assert!(!Verdict::NotRefused.is_refused());
/// assert!(Verdict::Refused.is_refused());
/// assert!(Verdict::RefusedFor(Duration::from_secs(2)).is_refused());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Not a rate-limit refusal: the response goes back to the caller as it is.
    NotRefused,
    /// A refusal: retry after the wait the server named ([`RateLimitSignal::wait`]: its
    /// `Retry-After`, else the reset of its exhausted quota), or after the jittered backoff when
    /// it named none.
    Refused,
    /// A refusal, to retry after this wait, read by the classifier itself (a dialect of its
    /// own). Cut to [`RateLimitSignal::MAX_WAIT`].
    RefusedFor(Duration),
}

impl Verdict {
    /// `true` unless [`NotRefused`](Verdict::NotRefused).
    ///
    /// ```
    /// assert!(!tollgate::client::Verdict::NotRefused.is_refused());
    /// ```
    pub fn is_refused(&self) -> bool {
        !matches!(self, Verdict::NotRefused)
    }
}

/// Decides whether a response is a rate-limit refusal: the rules in one place.
///
/// Implemented by [`DefaultClassifier`] (the default), and by every
/// `Fn(&RateLimitSignal, &HeaderMap) -> Verdict + Send + Sync + 'static` closure, so a dialect
/// of your own is a closure that falls back to the default:
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, StatusCode};
/// use tollgate::client::{Classifier, DefaultClassifier, RateLimitSignal, RetryLayer, Verdict};
///
/// // An API that answers 400 with `X-Throttled: <seconds>` when it is overloaded.
/// let throttled = |signal: &RateLimitSignal, headers: &HeaderMap| {
///     let seconds = headers.get("x-throttled").and_then(|v| v.to_str().ok()?.parse().ok());
///     match seconds {
///         Some(s) if signal.status() == StatusCode::BAD_REQUEST => Verdict::RefusedFor(Duration::from_secs(s)),
///         _ => DefaultClassifier.classify(signal, headers),
///     }
/// };
///
/// let mut headers = HeaderMap::new();
/// headers.insert("x-throttled", "4".parse().unwrap());
/// let signal = RateLimitSignal::parse(StatusCode::BAD_REQUEST, &headers, std::time::SystemTime::now());
/// assert_eq!(throttled.classify(&signal, &headers), Verdict::RefusedFor(Duration::from_secs(4)));
///
/// let layer = RetryLayer::default().classifier(throttled);
/// # drop(layer);
/// ```
pub trait Classifier: Send + Sync + 'static {
    /// The verdict on a response, from what it says about rate limits and its headers.
    fn classify(&self, signal: &RateLimitSignal, headers: &HeaderMap) -> Verdict;
}

/// The default rules: a refusal is recognised by its meaning, not only its status.
///
/// - **429 Too Many Requests** and **503 Service Unavailable** are refusals.
/// - **403 Forbidden** is a refusal only when it carries a rate-limit signal: a `Retry-After`
///   (GitHub's secondary limit), or a quota with nothing remaining, which always comes with a
///   reset (GitHub's primary limit: `x-ratelimit-remaining: 0` and `x-ratelimit-reset`; the same
///   in any [`Dialect`](super::Dialect)).
/// - Everything else, a plain 403 (a permission error) included, is not: it is never retried.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, StatusCode};
/// use tollgate::client::{Classifier, DefaultClassifier, RateLimitSignal, Verdict};
///
/// let classify = |status: StatusCode, pairs: &[(&'static str, &'static str)]| {
///     let mut headers = HeaderMap::new();
///     for (name, value) in pairs {
///         headers.insert(*name, value.parse().unwrap());
///     }
///     let signal = RateLimitSignal::parse(status, &headers, SystemTime::now());
///     DefaultClassifier.classify(&signal, &headers)
/// };
///
/// assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, &[]), Verdict::Refused);
/// assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, &[]), Verdict::Refused);
/// assert_eq!(classify(StatusCode::FORBIDDEN, &[("retry-after", "60")]), Verdict::Refused);
/// assert_eq!(
///     classify(StatusCode::FORBIDDEN, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30")]),
///     Verdict::Refused,
/// );
/// // A permission error, even from an API that sends rate-limit headers on every answer.
/// assert_eq!(classify(StatusCode::FORBIDDEN, &[]), Verdict::NotRefused);
/// assert_eq!(
///     classify(StatusCode::FORBIDDEN, &[("x-ratelimit-remaining", "4999"), ("x-ratelimit-reset", "30")]),
///     Verdict::NotRefused,
/// );
/// assert_eq!(classify(StatusCode::FORBIDDEN, &[("x-ratelimit-remaining", "0")]), Verdict::NotRefused);
/// assert_eq!(classify(StatusCode::OK, &[("retry-after", "60")]), Verdict::NotRefused);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl Classifier for DefaultClassifier {
    fn classify(&self, signal: &RateLimitSignal, _headers: &HeaderMap) -> Verdict {
        match signal.status() {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Verdict::Refused,
            StatusCode::FORBIDDEN if signal.retry_after().is_some() || signal.is_exhausted() => {
                Verdict::Refused
            }
            _ => Verdict::NotRefused,
        }
    }
}

impl<F> Classifier for F
where
    F: Fn(&RateLimitSignal, &HeaderMap) -> Verdict + Send + Sync + 'static,
{
    fn classify(&self, signal: &RateLimitSignal, headers: &HeaderMap) -> Verdict {
        self(signal, headers)
    }
}

/// `Debug` for a boxed classifier whose concrete type may be a closure.
pub(crate) struct DebugClassifier;

impl fmt::Debug for DebugClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Classifier")
    }
}

//! Which requests are safe to send more than once: the [`Repeatable`] extension point.

use std::fmt;

use http::{HeaderMap, Method};

/// Decides whether a request may be sent again after a 429 or 503.
///
/// The layer can only repeat what it can replay (see [`Retry`](super::Retry) for the body
/// requirement); this trait decides what it *should* repeat. Implemented by
/// [`IdempotentMethods`] (the default), [`AnyMethod`], and every
/// `Fn(&Method, &HeaderMap) -> bool + Send + Sync + 'static` closure.
///
/// ```
/// use http::{HeaderMap, Method};
/// use tollgate::client::{IdempotentMethods, Repeatable};
///
/// // Repeat a POST only when it carries an idempotency key.
/// let with_key = |method: &Method, headers: &HeaderMap| {
///     IdempotentMethods.is_repeatable(method, headers) || headers.contains_key("idempotency-key")
/// };
/// let mut headers = HeaderMap::new();
/// assert!(!with_key.is_repeatable(&Method::POST, &headers));
/// headers.insert("idempotency-key", "8e03978e".parse().unwrap());
/// assert!(with_key.is_repeatable(&Method::POST, &headers));
/// ```
pub trait Repeatable: Send + Sync + 'static {
    /// `true` if a request with this method and these headers may be sent again.
    fn is_repeatable(&self, method: &Method, headers: &HeaderMap) -> bool;
}

/// The default: repeat only idempotent methods (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, PUT,
/// DELETE and TRACE.
///
/// ```
/// use http::{HeaderMap, Method};
/// use tollgate::client::{IdempotentMethods, Repeatable};
///
/// let headers = HeaderMap::new();
/// assert!(IdempotentMethods.is_repeatable(&Method::PUT, &headers));
/// assert!(!IdempotentMethods.is_repeatable(&Method::POST, &headers));
/// assert!(!IdempotentMethods.is_repeatable(&Method::PATCH, &headers));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct IdempotentMethods;

impl Repeatable for IdempotentMethods {
    fn is_repeatable(&self, method: &Method, _headers: &HeaderMap) -> bool {
        matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
        )
    }
}

/// Opt-in: repeat every request, POST and PATCH included.
///
/// Use it only when the server is known to reject a rate-limited request before acting on it
/// (a 429 from a limiter in front of the handler), or when every request carries its own
/// idempotency key.
///
/// ```
/// use http::{HeaderMap, Method};
/// use tollgate::client::{AnyMethod, Repeatable};
///
/// assert!(AnyMethod.is_repeatable(&Method::POST, &HeaderMap::new()));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AnyMethod;

impl Repeatable for AnyMethod {
    fn is_repeatable(&self, _method: &Method, _headers: &HeaderMap) -> bool {
        true
    }
}

impl<F> Repeatable for F
where
    F: Fn(&Method, &HeaderMap) -> bool + Send + Sync + 'static,
{
    fn is_repeatable(&self, method: &Method, headers: &HeaderMap) -> bool {
        self(method, headers)
    }
}

/// `Debug` for a boxed policy whose concrete type may be a closure.
pub(crate) struct DebugRepeatable;

impl fmt::Debug for DebugRepeatable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Repeatable")
    }
}

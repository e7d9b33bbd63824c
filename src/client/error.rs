//! [`RetryError`]: the request failed, or was never sent; with what the layer did before.

use std::error::Error as StdError;
use std::fmt;

use super::{RetryReport, StopReason};

/// The request ended without a response: the inner service failed, or the request was never
/// sent (the pacer's queue for its host was full, or its turn would have come after its wait
/// budget). Carries the inner error, if any, and the [`RetryReport`] up to that point; the
/// report's [`stop`](RetryReport::stop) says which.
///
/// The layer does not retry inner errors (connection refused, timeouts): they say nothing
/// about rate limits. Put a dedicated retry layer inside this one for that.
///
/// ```
/// use std::error::Error as _;
/// use tollgate::client::{RetryError, RetryReport, StopReason};
///
/// let err = RetryError::new(std::io::Error::other("refused"), RetryReport::default());
/// assert_eq!(err.report().stop, StopReason::InnerError);
/// assert_eq!(err.inner().unwrap().to_string(), "refused");
/// assert_eq!(err.source().unwrap().to_string(), "refused");
/// assert_eq!(err.to_string(), "request failed after 0 attempts (waited 0.0 s)");
/// ```
pub struct RetryError<E> {
    inner: Option<E>,
    report: RetryReport,
}

impl<E> RetryError<E> {
    /// Wraps the inner service's error; the report's `stop` is set to
    /// [`StopReason::InnerError`].
    ///
    /// ```
    /// # use tollgate::client::{RetryError, RetryReport};
    /// let err = RetryError::new("boom", RetryReport::default());
    /// assert_eq!(err.inner(), Some(&"boom"));
    /// ```
    pub fn new(inner: E, mut report: RetryReport) -> Self {
        report.stop = StopReason::InnerError;
        Self { inner: Some(inner), report }
    }

    /// A request that was not sent; `report.stop` says why
    /// ([`StopReason::QueueFull`] or [`StopReason::WaitBudget`]).
    pub(crate) fn not_sent(report: RetryReport) -> Self {
        Self { inner: None, report }
    }

    /// The inner service's error; `None` when the request was not sent.
    ///
    /// ```
    /// # use tollgate::client::{RetryError, RetryReport};
    /// assert_eq!(RetryError::new(7, RetryReport::default()).inner(), Some(&7));
    /// ```
    pub fn inner(&self) -> Option<&E> {
        self.inner.as_ref()
    }

    /// What the layer did before the error.
    ///
    /// ```
    /// # use tollgate::client::{RetryError, RetryReport};
    /// assert_eq!(RetryError::new(7, RetryReport::default()).report().attempts, 0);
    /// ```
    pub fn report(&self) -> &RetryReport {
        &self.report
    }

    /// The inner service's error, dropping the report.
    ///
    /// ```
    /// # use tollgate::client::{RetryError, RetryReport};
    /// assert_eq!(RetryError::new(7, RetryReport::default()).into_inner(), Some(7));
    /// ```
    pub fn into_inner(self) -> Option<E> {
        self.inner
    }

    /// The inner error (if any) and the report.
    ///
    /// ```
    /// # use tollgate::client::{RetryError, RetryReport};
    /// let (inner, report) = RetryError::new(7, RetryReport::default()).into_parts();
    /// assert_eq!((inner, report.attempts), (Some(7), 0));
    /// ```
    pub fn into_parts(self) -> (Option<E>, RetryReport) {
        (self.inner, self.report)
    }
}

impl<E: fmt::Debug> fmt::Debug for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryError").field("inner", &self.inner).field("report", &self.report).finish()
    }
}

impl<E> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waited = self.report.total_wait.as_secs_f64();
        match self.inner {
            Some(_) => {
                write!(f, "request failed after {} attempts (waited {waited:.1} s)", self.report.attempts)
            }
            None => write!(
                f,
                "request not sent after {} attempts (waited {waited:.1} s): {}",
                self.report.attempts, self.report.stop
            ),
        }
    }
}

impl<E: StdError + 'static> StdError for RetryError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.as_ref().map(|e| e as &(dyn StdError + 'static))
    }
}

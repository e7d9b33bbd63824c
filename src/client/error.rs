//! [`RetryError`]: the inner service's error plus what the layer did before it.

use std::error::Error as StdError;
use std::fmt;

use super::RetryReport;

/// The inner service failed; carries its error and the [`RetryReport`] up to that point.
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
/// assert_eq!(err.inner().to_string(), "refused");
/// assert_eq!(err.source().unwrap().to_string(), "refused");
/// assert_eq!(err.to_string(), "request failed after 0 attempts (waited 0.0 s)");
/// ```
pub struct RetryError<E> {
    inner: E,
    report: RetryReport,
}

impl<E> RetryError<E> {
    /// Wraps `inner`; the report's `stop` is set to [`StopReason::InnerError`](super::StopReason::InnerError).
    ///
    /// ```
    /// # use tollgate::client::{RetryError, RetryReport};
    /// let err = RetryError::new("boom", RetryReport::default());
    /// assert_eq!(*err.inner(), "boom");
    /// ```
    pub fn new(inner: E, mut report: RetryReport) -> Self {
        report.stop = super::StopReason::InnerError;
        Self { inner, report }
    }

    /// The inner service's error.
    ///
    /// ```
    /// # use tollgate::client::{RetryError, RetryReport};
    /// assert_eq!(*RetryError::new(7, RetryReport::default()).inner(), 7);
    /// ```
    pub fn inner(&self) -> &E {
        &self.inner
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
    /// assert_eq!(RetryError::new(7, RetryReport::default()).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> E {
        self.inner
    }

    /// The inner error and the report.
    ///
    /// ```
    /// # use tollgate::client::{RetryError, RetryReport};
    /// let (inner, report) = RetryError::new(7, RetryReport::default()).into_parts();
    /// assert_eq!((inner, report.attempts), (7, 0));
    /// ```
    pub fn into_parts(self) -> (E, RetryReport) {
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
        write!(
            f,
            "request failed after {} attempts (waited {:.1} s)",
            self.report.attempts,
            self.report.total_wait.as_secs_f64()
        )
    }
}

impl<E: StdError + 'static> StdError for RetryError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.inner)
    }
}

//! What happened to one request: [`RetryReport`], attached to the final response.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// The story of one logical request through the retry layer.
///
/// The final response carries it as an extension (`response.extensions().get::<RetryReport>()`),
/// and a [`RetryError`](super::RetryError) carries it when the inner service failed.
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::{RetryReport, StopReason};
///
/// let report = RetryReport::default();
/// assert_eq!(report.attempts, 0);
/// assert_eq!(report.total_wait, Duration::ZERO);
/// assert_eq!(report.last_status, None);
/// assert_eq!(report.stop, StopReason::Completed);
/// assert!(report.waits.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryReport {
    /// How many times the request was sent to the inner service (1 when it was never retried).
    pub attempts: u32,
    /// Sum of every wait for this request: in the pacer's queue, and before retries.
    pub total_wait: Duration,
    /// Status of the last response received, `None` if no response came back.
    pub last_status: Option<StatusCode>,
    /// Why the layer stopped and returned.
    pub stop: StopReason,
    /// Every wait, in order.
    pub waits: Vec<Wait>,
}

/// One wait before sending an attempt.
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::{Wait, WaitReason};
///
/// let wait = Wait::new(2, WaitReason::RetryAfter, Duration::from_secs(1));
/// assert_eq!((wait.attempt, wait.reason, wait.delay), (2, WaitReason::RetryAfter, Duration::from_secs(1)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Wait {
    /// The attempt (1-based) that waited before being sent.
    pub attempt: u32,
    /// Why it waited.
    pub reason: WaitReason,
    /// How long it waited.
    pub delay: Duration,
}

impl Wait {
    /// A wait of `delay` before attempt number `attempt`, for `reason`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate::client::{Wait, WaitReason};
    /// assert_eq!(Wait::new(1, WaitReason::Pacing, Duration::ZERO).attempt, 1);
    /// ```
    pub fn new(attempt: u32, reason: WaitReason, delay: Duration) -> Self {
        Self { attempt, reason, delay }
    }
}

/// Why the layer waited.
///
/// ```
/// use tollgate::client::WaitReason;
///
/// assert_eq!(WaitReason::RetryAfter.to_string(), "retry-after");
/// assert_eq!(WaitReason::Backoff.to_string(), "backoff");
/// assert_eq!(WaitReason::Reset.to_string(), "reset");
/// assert_eq!(WaitReason::Pacing.to_string(), "pacing");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WaitReason {
    /// A refusal's `Retry-After` (or a wait a custom [`Classifier`](super::Classifier) read).
    RetryAfter,
    /// A refusal without `Retry-After`, whose exhausted quota named its reset (GitHub's
    /// primary limit: `x-ratelimit-reset`).
    Reset,
    /// A refusal that named no wait: exponential backoff with full jitter.
    Backoff,
    /// Waiting in the [`Pacer`](super::Pacer)'s queue for the host's turn.
    Pacing,
}

impl WaitReason {
    /// A short lowercase name, as used in tracing events.
    ///
    /// ```
    /// assert_eq!(tollgate::client::WaitReason::Backoff.as_str(), "backoff");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            WaitReason::RetryAfter => "retry-after",
            WaitReason::Reset => "reset",
            WaitReason::Backoff => "backoff",
            WaitReason::Pacing => "pacing",
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the layer stopped retrying and returned to the caller.
///
/// ```
/// use tollgate::client::StopReason;
///
/// assert_eq!(StopReason::WaitBudget.to_string(), "the wait budget would be exceeded");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The response was not a refusal (see [`Classifier`](super::Classifier)): nothing to
    /// retry (a success, or another error status).
    #[default]
    Completed,
    /// A refusal of a request that is not safe to repeat (see
    /// [`Repeatable`](super::Repeatable)).
    NotRepeatable,
    /// A refusal after the maximum number of attempts.
    MaxAttempts,
    /// A refusal whose wait would go past the total wait budget, returned without waiting; or
    /// a request whose turn in the pacer's queue would have come after it, not sent.
    WaitBudget,
    /// The pacer's queue for the host was full: not sent.
    QueueFull,
    /// The inner service returned an error.
    InnerError,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Completed => "completed",
            StopReason::NotRepeatable => "the request is not safe to repeat",
            StopReason::MaxAttempts => "the maximum number of attempts was reached",
            StopReason::WaitBudget => "the wait budget would be exceeded",
            StopReason::QueueFull => "the host's queue is full",
            StopReason::InnerError => "the inner service failed",
        })
    }
}

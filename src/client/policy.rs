//! [`RetryPolicy`] and [`Backoff`]: the decisions, shared by the tower layer and the reqwest
//! middleware. Nothing here sleeps or sends; it only says how long to wait.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::classify::DebugClassifier;
use super::repeatable::DebugRepeatable;
use super::{
    Acquire, AcquireError, Classifier, DefaultClassifier, IdempotentMethods, Pacer, Permit, RateLimitSignal,
    Repeatable, RetryReport, StopReason, Verdict, Wait, WaitReason,
};

/// A refusal's wait read from a reset is at least this long: resets have whole-second
/// precision, and a reset already past by our clock (a server clock a little behind) must not
/// make the client retry in a tight loop.
const MIN_RESET_WAIT: Duration = Duration::from_secs(1);

/// Pacing waits shorter than this (the time to take a free place in a queue) are not reported.
const REPORTED_PACING: Duration = Duration::from_millis(1);

/// Exponential backoff with full jitter, for a 429/503 without a usable `Retry-After`.
///
/// Before retry number `n` (0 for the first retry) the wait is drawn uniformly from
/// `[0, min(cap, base × 2ⁿ)]` ("full jitter": clients that were rejected together do not
/// come back together).
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// assert_eq!(backoff.bound(0), Duration::from_millis(100));
/// assert_eq!(backoff.bound(3), Duration::from_millis(800));
/// assert_eq!(backoff.bound(10), Duration::from_secs(2));
/// assert!(backoff.delay(3) <= Duration::from_millis(800));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    /// Backoff starting at `base`, doubling per retry, never above `cap`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = tollgate::client::Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
    /// assert_eq!(b.bound(5), Duration::from_secs(4));
    /// ```
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The upper end of the wait before retry number `retry` (0-based): `min(cap, base × 2^retry)`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = tollgate::client::Backoff::default();
    /// assert_eq!(b.bound(1), Duration::from_millis(200));
    /// assert_eq!(b.bound(u32::MAX), Duration::from_secs(10));
    /// ```
    pub fn bound(&self, retry: u32) -> Duration {
        1u32.checked_shl(retry)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |bound| bound.min(self.cap))
    }

    /// A random wait in `[0, bound(retry)]`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = tollgate::client::Backoff::default();
    /// let waits: Vec<_> = (0..100).map(|_| b.delay(2)).collect();
    /// assert!(waits.iter().all(|w| *w <= Duration::from_millis(400)));
    /// assert!(waits.iter().any(|w| *w != waits[0]), "jitter varies");
    /// ```
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, fastrand::f64())
    }

    /// `bound(retry)` scaled by `unit` in `[0, 1]`: the deterministic core of [`delay`](Self::delay).
    pub(crate) fn delay_with(&self, retry: u32, unit: f64) -> Duration {
        let bound = self.bound(retry);
        if !unit.is_finite() || unit <= 0.0 {
            return Duration::ZERO;
        }
        // `try_from` guards the float round trip of bounds near `Duration::MAX`.
        Duration::try_from_secs_f64(bound.as_secs_f64() * unit.min(1.0))
            .map_or(bound, |delay| delay.min(bound))
    }
}

/// What the client layer does about refusals, and how it paces itself.
///
/// Shared by [`RetryLayer`](super::RetryLayer) and, with the `reqwest` feature,
/// `tollgate::client::reqwest::RetryMiddleware`. Cheap to clone.
///
/// | knob | default | meaning |
/// | --- | --- | --- |
/// | [`max_attempts`](Self::max_attempts) | 4 | sends per logical request, the first included |
/// | [`max_wait`](Self::max_wait) | 30 s | total of all waits for one request, in the queue and before retries; a wait beyond what is left is not waited for |
/// | [`backoff`](Self::backoff) | 100 ms … 10 s | for a refusal that names no wait |
/// | [`repeatable`](Self::repeatable) | [`IdempotentMethods`] | which requests may be sent again |
/// | [`classifier`](Self::classifier) | [`DefaultClassifier`] | which responses are refusals |
/// | [`pacer`](Self::pacer) | `Some(Pacer::new())` | per-host queues paced from the servers' headers; `None` to disable |
/// | [`wall_clock`](Self::wall_clock) | `SystemTime::now` | the time Unix-time resets and HTTP dates are read against |
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::{AnyMethod, Backoff, DefaultClassifier, Pacer, RetryPolicy};
///
/// let policy = RetryPolicy::new()
///     .max_attempts(6)
///     .max_wait(Duration::from_secs(60))
///     .backoff(Backoff::new(Duration::from_millis(50), Duration::from_secs(5)))
///     .repeatable(AnyMethod)
///     .classifier(DefaultClassifier)
///     .pacer(Pacer::new().max_hosts(64));
/// assert_eq!(policy.get_max_attempts(), 6);
/// assert_eq!(policy.get_max_wait(), Duration::from_secs(60));
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    max_wait: Duration,
    backoff: Backoff,
    repeatable: Arc<dyn Repeatable>,
    classifier: Arc<dyn Classifier>,
    pacer: Option<Pacer>,
    wall_clock: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("max_wait", &self.max_wait)
            .field("backoff", &self.backoff)
            .field("repeatable", &DebugRepeatable)
            .field("classifier", &DebugClassifier)
            .field("pacer", &self.pacer)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// The defaults in the table above.
    ///
    /// ```
    /// let policy = tollgate::client::RetryPolicy::new();
    /// assert_eq!(policy.get_max_attempts(), 4);
    /// ```
    pub fn new() -> Self {
        Self {
            max_attempts: 4,
            max_wait: Duration::from_secs(30),
            backoff: Backoff::default(),
            repeatable: Arc::new(IdempotentMethods),
            classifier: Arc::new(DefaultClassifier),
            pacer: Some(Pacer::new()),
            wall_clock: Arc::new(SystemTime::now),
        }
    }

    /// Send each request at most `max_attempts` times, the first included (at least 1;
    /// 1 = never retry).
    ///
    /// ```
    /// let policy = tollgate::client::RetryPolicy::new().max_attempts(0);
    /// assert_eq!(policy.get_max_attempts(), 1);
    /// ```
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Wait at most this long in total for one request: in the pacer's queue and before
    /// retries together.
    ///
    /// A refusal whose wait is longer than what is left is returned at once; a backoff is
    /// shortened to what is left. A request whose turn in the queue is known to come later
    /// than that fails at once, and one still queued when the budget runs out fails then,
    /// with a [`RetryError`](super::RetryError) whose report says
    /// [`StopReason::WaitBudget`], without being sent.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let policy = tollgate::client::RetryPolicy::new().max_wait(Duration::from_secs(5));
    /// assert_eq!(policy.get_max_wait(), Duration::from_secs(5));
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The backoff used when a refusal names no wait.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tollgate::client::{Backoff, RetryPolicy};
    /// let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
    /// assert_eq!(RetryPolicy::new().backoff(backoff).get_backoff(), backoff);
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Which requests may be repeated; see [`Repeatable`].
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// let policy = tollgate::client::RetryPolicy::new()
    ///     .repeatable(|m: &Method, _: &HeaderMap| m == Method::GET);
    /// assert!(!policy.is_repeatable(&Method::PUT, &HeaderMap::new()));
    /// ```
    pub fn repeatable(mut self, repeatable: impl Repeatable) -> Self {
        self.repeatable = Arc::new(repeatable);
        self
    }

    /// Which responses are refusals; see [`Classifier`] and [`DefaultClassifier`].
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use tollgate::client::{DefaultClassifier, RateLimitSignal, RetryPolicy, Verdict, Classifier};
    ///
    /// // Never retry 503s, only rate-limit refusals.
    /// let policy = RetryPolicy::new().classifier(|signal: &RateLimitSignal, headers: &HeaderMap| {
    ///     match signal.status() {
    ///         StatusCode::SERVICE_UNAVAILABLE => Verdict::NotRefused,
    ///         _ => DefaultClassifier.classify(signal, headers),
    ///     }
    /// });
    /// let signal = RateLimitSignal::parse(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), std::time::SystemTime::now());
    /// assert_eq!(policy.classify(&signal, &HeaderMap::new()), Verdict::NotRefused);
    /// ```
    pub fn classifier(mut self, classifier: impl Classifier) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// Pace from the servers' headers with this [`Pacer`] (share one between clients by
    /// cloning it), or `None` to never pace.
    ///
    /// ```
    /// use tollgate::client::{Pacer, RetryPolicy};
    /// assert!(RetryPolicy::new().pacer(None).get_pacer().is_none());
    /// assert!(RetryPolicy::new().pacer(Pacer::new()).get_pacer().is_some());
    /// ```
    pub fn pacer(mut self, pacer: impl Into<Option<Pacer>>) -> Self {
        self.pacer = pacer.into();
        self
    }

    /// The wall clock that Unix-time resets (`X-RateLimit-Reset: 1700000000`) and HTTP-date
    /// `Retry-After` values are read against. The default is [`SystemTime::now`]; tests that
    /// pause tokio's clock pass one that moves with it.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let fixed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let policy = tollgate::client::RetryPolicy::new().wall_clock(move || fixed);
    /// assert_eq!(policy.now(), fixed);
    /// ```
    pub fn wall_clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.wall_clock = Arc::new(now);
        self
    }

    /// The configured maximum number of attempts.
    ///
    /// ```
    /// assert_eq!(tollgate::client::RetryPolicy::new().max_attempts(2).get_max_attempts(), 2);
    /// ```
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The configured total wait budget.
    ///
    /// ```
    /// assert_eq!(tollgate::client::RetryPolicy::new().get_max_wait().as_secs(), 30);
    /// ```
    pub fn get_max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The configured backoff.
    ///
    /// ```
    /// use tollgate::client::{Backoff, RetryPolicy};
    /// assert_eq!(RetryPolicy::new().get_backoff(), Backoff::default());
    /// ```
    pub fn get_backoff(&self) -> Backoff {
        self.backoff
    }

    /// The configured pacer, if any.
    ///
    /// ```
    /// assert!(tollgate::client::RetryPolicy::new().get_pacer().is_some());
    /// ```
    pub fn get_pacer(&self) -> Option<&Pacer> {
        self.pacer.as_ref()
    }

    /// Whether the configured [`Repeatable`] allows sending this request again.
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// let policy = tollgate::client::RetryPolicy::new();
    /// assert!(policy.is_repeatable(&Method::GET, &HeaderMap::new()));
    /// assert!(!policy.is_repeatable(&Method::POST, &HeaderMap::new()));
    /// ```
    pub fn is_repeatable(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.repeatable.is_repeatable(method, headers)
    }

    /// The configured [`Classifier`]'s verdict.
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use tollgate::client::{RateLimitSignal, RetryPolicy, Verdict};
    /// let signal = RateLimitSignal::parse(StatusCode::FORBIDDEN, &HeaderMap::new(), std::time::SystemTime::now());
    /// assert_eq!(RetryPolicy::new().classify(&signal, &HeaderMap::new()), Verdict::NotRefused);
    /// ```
    pub fn classify(&self, signal: &RateLimitSignal, headers: &HeaderMap) -> Verdict {
        self.classifier.classify(signal, headers)
    }

    /// The configured wall clock's time.
    ///
    /// ```
    /// let now = tollgate::client::RetryPolicy::new().now();
    /// assert!(now > std::time::SystemTime::UNIX_EPOCH);
    /// ```
    pub fn now(&self) -> SystemTime {
        (self.wall_clock)()
    }

    /// The decision after a response, as a pure function of what is known.
    ///
    /// `unit` is a random number in `[0, 1)` for the jitter.
    pub(crate) fn decide(&self, input: DecideInput, unit: f64) -> Decision {
        if !input.refused {
            return Decision::Stop(StopReason::Completed);
        }
        if !input.repeatable {
            return Decision::Stop(StopReason::NotRepeatable);
        }
        if input.attempts >= self.max_attempts {
            return Decision::Stop(StopReason::MaxAttempts);
        }
        let left = self.max_wait.saturating_sub(input.waited);
        match input.wait {
            Some((delay, _)) if delay > left => Decision::Stop(StopReason::WaitBudget),
            Some((delay, reason)) => Decision::Wait(delay, reason),
            None if left.is_zero() => Decision::Stop(StopReason::WaitBudget),
            None => {
                let retry = input.attempts.saturating_sub(1);
                let delay = self.backoff.delay_with(retry, unit).min(left);
                Decision::Wait(delay, WaitReason::Backoff)
            }
        }
    }
}

/// Inputs of [`RetryPolicy::decide`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecideInput {
    /// The classifier's verdict: a refusal.
    pub(crate) refused: bool,
    /// The wait the refusal names, and where it comes from.
    pub(crate) wait: Option<(Duration, WaitReason)>,
    pub(crate) repeatable: bool,
    /// Sends so far.
    pub(crate) attempts: u32,
    /// Time already waited.
    pub(crate) waited: Duration,
}

/// What to do after a response.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Decision {
    /// Wait this long, then send again.
    Wait(Duration, WaitReason),
    /// Return the response to the caller.
    Stop(StopReason),
}

/// The wait a refusal names: the classifier's own, `Retry-After`, or the reset of an
/// exhausted quota (at least [`MIN_RESET_WAIT`]).
fn refusal_wait(verdict: Verdict, signal: &RateLimitSignal) -> Option<(Duration, WaitReason)> {
    match verdict {
        Verdict::NotRefused => None,
        Verdict::RefusedFor(delay) => Some((delay.min(RateLimitSignal::MAX_WAIT), WaitReason::RetryAfter)),
        Verdict::Refused => match signal.retry_after() {
            Some(delay) => Some((delay, WaitReason::RetryAfter)),
            None => signal.reset_wait().map(|reset| (reset.max(MIN_RESET_WAIT), WaitReason::Reset)),
        },
    }
}

/// The bookkeeping of one logical request, shared by both adapters: it takes the request's
/// turns from the pacer, asks the classifier and the policy, records every wait in the report
/// and emits the tracing events.
#[derive(Debug)]
pub(crate) struct Tracker {
    policy: RetryPolicy,
    host: Option<Arc<str>>,
    repeatable: bool,
    report: RetryReport,
    /// The request's place in its host's queue, kept across retries.
    queue_id: Option<u64>,
    /// When the current wait for a turn began.
    queued_at: Option<Instant>,
}

impl Tracker {
    pub(crate) fn new(policy: RetryPolicy, host: Option<Arc<str>>, repeatable: bool) -> Self {
        Self { policy, host, repeatable, report: RetryReport::default(), queue_id: None, queued_at: None }
    }

    /// A place in the host's queue for the next attempt, or `None` when not pacing. Its
    /// deadline is what is left of the wait budget.
    pub(crate) fn admission(&mut self) -> Option<Acquire> {
        let (pacer, host) = (self.policy.pacer.as_ref()?, self.host.as_ref()?);
        let now = Instant::now();
        let left = self.policy.max_wait.saturating_sub(self.report.total_wait);
        self.queued_at = Some(now);
        let acquire = pacer.acquire(Arc::clone(host)).priority(self.queue_id);
        Some(match now.checked_add(left) {
            Some(deadline) => acquire.deadline(deadline),
            None => acquire,
        })
    }

    /// The outcome of [`admission`](Self::admission): the wait is recorded; a refusal to queue
    /// ends the request (its report says why).
    pub(crate) fn admitted(&mut self, result: Result<Permit, AcquireError>) -> Result<Permit, StopReason> {
        let waited = self.queued_at.take().map_or(Duration::ZERO, |at| at.elapsed());
        let attempt = self.report.attempts.saturating_add(1);
        if waited >= REPORTED_PACING {
            tracing::info!(
                target: "tollgate::client",
                host = self.host.as_deref(),
                attempt,
                reason = WaitReason::Pacing.as_str(),
                delay_ms = millis(waited),
                "waited for a turn",
            );
            self.add_wait(waited, WaitReason::Pacing);
        }
        match result {
            Ok(permit) => {
                self.queue_id = Some(permit.id());
                Ok(permit)
            }
            Err(error) => {
                let stop = match error {
                    AcquireError::QueueFull => StopReason::QueueFull,
                    AcquireError::Deadline => StopReason::WaitBudget,
                };
                self.report.stop = stop;
                tracing::debug!(
                    target: "tollgate::client",
                    host = self.host.as_deref(),
                    attempt,
                    waited_ms = millis(self.report.total_wait),
                    reason = %stop,
                    "not sent",
                );
                Err(stop)
            }
        }
    }

    /// Counts one send.
    pub(crate) fn sent(&mut self) {
        self.report.attempts = self.report.attempts.saturating_add(1);
    }

    /// Learns from a response and decides; the permit (if paced) reports the answer to the
    /// pacer, and a wait is recorded and traced.
    pub(crate) fn on_response(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        permit: Option<Permit>,
    ) -> Decision {
        let signal = RateLimitSignal::parse(status, headers, self.policy.now());
        self.report.last_status = Some(status);
        let verdict = self.policy.classify(&signal, headers);
        let wait = refusal_wait(verdict, &signal);
        if let Some(permit) = permit {
            permit.answer(&signal, wait.map(|(delay, _)| delay));
        }
        let decision = self.policy.decide(
            DecideInput {
                refused: verdict.is_refused(),
                wait,
                repeatable: self.repeatable,
                attempts: self.report.attempts,
                waited: self.report.total_wait,
            },
            fastrand::f64(),
        );
        match decision {
            Decision::Wait(delay, reason) => {
                tracing::info!(
                    target: "tollgate::client",
                    host = self.host.as_deref(),
                    attempt = self.report.attempts.saturating_add(1),
                    status = status.as_u16(),
                    dialect = signal.dialect().map(|d| d.as_str()),
                    reason = reason.as_str(),
                    delay_ms = millis(delay),
                    "waiting before sending",
                );
                self.add_wait(delay, reason);
            }
            Decision::Stop(stop) => {
                self.report.stop = stop;
                if stop != StopReason::Completed {
                    tracing::debug!(
                        target: "tollgate::client",
                        host = self.host.as_deref(),
                        attempts = self.report.attempts,
                        status = status.as_u16(),
                        wait_ms = wait.map(|(delay, _)| millis(delay)),
                        reason = %stop,
                        "giving up",
                    );
                }
            }
        }
        decision
    }

    fn add_wait(&mut self, delay: Duration, reason: WaitReason) {
        let attempt = self.report.attempts.saturating_add(1);
        self.report.total_wait = self.report.total_wait.saturating_add(delay);
        self.report.waits.push(Wait::new(attempt, reason, delay));
    }

    pub(crate) fn into_report(self) -> RetryReport {
        self.report
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The pacing key of a request: its authority, lowercased, with the scheme's default port
/// made explicit, or the `Host` header for origin-form URIs.
pub(crate) fn host_key(uri: &http::Uri, headers: &HeaderMap) -> Option<Arc<str>> {
    let (host, port) = match uri.authority() {
        Some(authority) => (authority.host().to_owned(), authority.port_u16()),
        None => {
            let value = headers.get(http::header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = value.parse().ok()?;
            (authority.host().to_owned(), authority.port_u16())
        }
    };
    let port = port.or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    let host = host.to_ascii_lowercase();
    Some(match port {
        Some(port) => format!("{host}:{port}").into(),
        None => host.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal (unless `refused` is false) naming `retry_after` seconds.
    fn input(refused: bool, retry_after: Option<u64>, attempts: u32, waited: u64) -> DecideInput {
        DecideInput {
            refused,
            wait: retry_after.map(|s| (Duration::from_secs(s), WaitReason::RetryAfter)),
            repeatable: true,
            attempts,
            waited: Duration::from_secs(waited),
        }
    }

    fn signal(status: u16, pairs: &[(&'static str, &'static str)]) -> (RateLimitSignal, HeaderMap) {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        (RateLimitSignal::parse(StatusCode::from_u16(status).unwrap(), &headers, now), headers)
    }

    #[test]
    fn only_refusals_are_retried() {
        let policy = RetryPolicy::new();
        assert_eq!(policy.decide(input(false, Some(1), 1, 0), 0.5), Decision::Stop(StopReason::Completed));
        assert_eq!(
            policy.decide(input(true, Some(1), 1, 0), 0.5),
            Decision::Wait(Duration::from_secs(1), WaitReason::RetryAfter)
        );
    }

    #[test]
    fn the_wait_a_refusal_names() {
        let wait = |status, pairs: &[(&'static str, &'static str)]| {
            let (signal, headers) = signal(status, pairs);
            refusal_wait(RetryPolicy::new().classify(&signal, &headers), &signal)
        };
        let secs = Duration::from_secs;
        // Retry-After first, then the exhausted quota's reset (GitHub primary), at least 1 s.
        assert_eq!(wait(429, &[("retry-after", "3")]), Some((secs(3), WaitReason::RetryAfter)));
        let github = [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1700000042")];
        assert_eq!(wait(403, &github), Some((secs(42), WaitReason::Reset)));
        let past = [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1699999999")];
        assert_eq!(wait(403, &past), Some((secs(1), WaitReason::Reset)));
        assert_eq!(wait(403, &[("retry-after", "60")]), Some((secs(60), WaitReason::RetryAfter)));
        // A refusal that names nothing backs off; a non-refusal names nothing.
        assert_eq!(wait(503, &[]), None);
        assert_eq!(wait(403, &[]), None);
        assert_eq!(wait(200, &github), None);
        // A classifier's own wait is capped like any other.
        let (signal, _) = signal(400, &[]);
        let capped = refusal_wait(Verdict::RefusedFor(Duration::MAX), &signal);
        assert_eq!(capped, Some((RateLimitSignal::MAX_WAIT, WaitReason::RetryAfter)));
    }

    #[test]
    fn caps() {
        let policy = RetryPolicy::new().max_attempts(3).max_wait(Duration::from_secs(10));
        assert_eq!(policy.decide(input(true, Some(1), 3, 0), 0.5), Decision::Stop(StopReason::MaxAttempts));
        assert_eq!(policy.decide(input(true, Some(11), 1, 0), 0.5), Decision::Stop(StopReason::WaitBudget));
        assert_eq!(
            policy.decide(input(true, Some(4), 2, 6), 0.5),
            Decision::Wait(Duration::from_secs(4), WaitReason::RetryAfter)
        );
        assert_eq!(policy.decide(input(true, Some(5), 2, 6), 0.5), Decision::Stop(StopReason::WaitBudget));
        // Backoff is cut to what is left, and stops when nothing is.
        let policy = policy.backoff(Backoff::new(Duration::from_secs(8), Duration::from_secs(8)));
        assert_eq!(
            policy.decide(input(true, None, 1, 7), 1.0),
            Decision::Wait(Duration::from_secs(3), WaitReason::Backoff)
        );
        assert_eq!(policy.decide(input(true, None, 1, 10), 1.0), Decision::Stop(StopReason::WaitBudget));
    }

    #[test]
    fn not_repeatable_is_returned() {
        let mut i = input(true, Some(1), 1, 0);
        i.repeatable = false;
        assert_eq!(RetryPolicy::new().decide(i, 0.5), Decision::Stop(StopReason::NotRepeatable));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let bounds: Vec<u64> = (0..6).map(|n| b.bound(n).as_millis() as u64).collect();
        assert_eq!(bounds, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.bound(40), Duration::from_secs(1));
        assert_eq!(b.delay_with(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay_with(3, 0.5), Duration::from_millis(400));
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay_with(3, 7.0), Duration::from_millis(800));
        assert_eq!(b.delay_with(3, f64::NAN), Duration::ZERO);
        assert_eq!(b.delay_with(3, -1.0), Duration::ZERO);
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.bound(5), Duration::MAX);
        assert_eq!(huge.delay_with(5, 1.0), Duration::MAX);
        // The decision's backoff uses retry number attempts - 1.
        let policy = RetryPolicy::new().backoff(b);
        assert_eq!(
            policy.decide(input(true, None, 3, 0), 1.0),
            Decision::Wait(Duration::from_millis(400), WaitReason::Backoff)
        );
    }

    #[test]
    fn full_jitter_is_uniform_over_the_whole_range() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut rng = fastrand::Rng::with_seed(7);
        let bound = b.bound(4).as_secs_f64();
        let samples: Vec<f64> = (0..1000).map(|_| b.delay_with(4, rng.f64()).as_secs_f64() / bound).collect();
        let mut buckets = [0u32; 10];
        for s in &samples {
            assert!((0.0..=1.0).contains(s));
            buckets[((s * 10.0) as usize).min(9)] += 1;
        }
        // 100 expected per bucket; a uniform draw stays well within [60, 140].
        assert!(buckets.iter().all(|&n| (60..=140).contains(&n)), "{buckets:?}");
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }

    #[test]
    fn host_keys() {
        let h = HeaderMap::new();
        let key = |uri: &str| host_key(&uri.parse().unwrap(), &h).map(|k| k.to_string());
        assert_eq!(key("http://Example.COM/x").as_deref(), Some("example.com:80"));
        assert_eq!(key("https://example.com/x").as_deref(), Some("example.com:443"));
        assert_eq!(key("http://127.0.0.1:3000/").as_deref(), Some("127.0.0.1:3000"));
        assert_eq!(key("/relative"), None);
        let mut with_host = HeaderMap::new();
        with_host.insert(http::header::HOST, "api.test:8080".parse().unwrap());
        assert_eq!(host_key(&"/x".parse().unwrap(), &with_host).as_deref(), Some("api.test:8080"));
        with_host.insert(http::header::HOST, "bad host".parse().unwrap());
        assert_eq!(host_key(&"/x".parse().unwrap(), &with_host), None);
    }
}

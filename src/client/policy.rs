//! [`RetryPolicy`] and [`Backoff`]: the decisions, shared by the tower layer and the reqwest
//! middleware. Nothing here sleeps or sends; it only says how long to wait.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};

use super::repeatable::DebugRepeatable;
use super::{headers, IdempotentMethods, Pacer, Repeatable, RetryReport, StopReason, Wait, WaitReason};

/// Statuses that are retried: 429 Too Many Requests and 503 Service Unavailable.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

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

/// What the client layer does about 429 and 503 answers, and how it paces itself.
///
/// Shared by [`RetryLayer`](super::RetryLayer) and, with the `reqwest` feature,
/// `tollgate::client::reqwest::RetryMiddleware`. Cheap to clone.
///
/// | knob | default | meaning |
/// | --- | --- | --- |
/// | [`max_attempts`](Self::max_attempts) | 4 | sends per logical request, the first included |
/// | [`max_wait`](Self::max_wait) | 30 s | total of all waits for one request; a `Retry-After` beyond what is left is not waited for |
/// | [`backoff`](Self::backoff) | 100 ms … 10 s | when there is no usable `Retry-After` |
/// | [`repeatable`](Self::repeatable) | [`IdempotentMethods`] | which requests may be sent again |
/// | [`pacer`](Self::pacer) | `Some(Pacer::new())` | pace from `RateLimit` / `X-RateLimit-*`; `None` to disable |
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::{AnyMethod, Backoff, Pacer, RetryPolicy};
///
/// let policy = RetryPolicy::new()
///     .max_attempts(6)
///     .max_wait(Duration::from_secs(60))
///     .backoff(Backoff::new(Duration::from_millis(50), Duration::from_secs(5)))
///     .repeatable(AnyMethod)
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
    pacer: Option<Pacer>,
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
            .field("pacer", &self.pacer)
            .finish()
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
            pacer: Some(Pacer::new()),
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

    /// Wait at most this long in total for one request (pacing and retries together).
    ///
    /// A `Retry-After` longer than what is left makes the layer give up at once and return
    /// the 429; a backoff is shortened to what is left; a pacing wait longer than what is left
    /// is skipped (the request is sent, and the server decides).
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

    /// The backoff used when a 429/503 has no usable `Retry-After`.
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

    /// Pace from the server's headers with this [`Pacer`] (share one between clients by
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

    /// The decision after a response, as a pure function of what is known.
    ///
    /// `attempts` is how many sends were made so far, `waited` the time already waited,
    /// `unit` a random number in `[0, 1)` for the jitter.
    pub(crate) fn decide(&self, input: DecideInput, unit: f64) -> Decision {
        if !is_retryable_status(input.status) {
            return Decision::Stop(StopReason::Completed);
        }
        if !input.repeatable {
            return Decision::Stop(StopReason::NotRepeatable);
        }
        if input.attempts >= self.max_attempts {
            return Decision::Stop(StopReason::MaxAttempts);
        }
        let left = self.max_wait.saturating_sub(input.waited);
        match input.retry_after {
            Some(delay) if delay > left => Decision::Stop(StopReason::WaitBudget),
            Some(delay) => Decision::Wait(delay, WaitReason::RetryAfter),
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
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) repeatable: bool,
    pub(crate) attempts: u32,
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

/// The bookkeeping of one logical request, shared by both adapters: it asks the policy and the
/// pacer, records every wait in the report and emits the tracing events.
#[derive(Debug)]
pub(crate) struct Tracker {
    policy: RetryPolicy,
    host: Option<Box<str>>,
    repeatable: bool,
    report: RetryReport,
}

impl Tracker {
    pub(crate) fn new(policy: RetryPolicy, host: Option<Box<str>>, repeatable: bool) -> Self {
        Self { policy, host, repeatable, report: RetryReport::default() }
    }

    /// The pacing wait before the next attempt, if any (already recorded and traced).
    pub(crate) fn pace(&mut self) -> Option<Duration> {
        let pacer = self.policy.pacer.as_ref()?;
        let host = self.host.as_deref()?;
        let delay = pacer.delay(host);
        if delay.is_zero() {
            return None;
        }
        let attempt = self.report.attempts + 1;
        let left = self.policy.max_wait.saturating_sub(self.report.total_wait);
        if delay > left {
            tracing::debug!(
                target: "tollgate::client",
                host,
                attempt,
                delay_ms = millis(delay),
                budget_left_ms = millis(left),
                "pacing wait exceeds the wait budget; sending without waiting",
            );
            return None;
        }
        self.record_wait(delay, WaitReason::Pacing);
        Some(delay)
    }

    /// Counts one send.
    pub(crate) fn sent(&mut self) {
        self.report.attempts = self.report.attempts.saturating_add(1);
    }

    /// Learns from a response and decides; a wait is recorded and traced.
    pub(crate) fn on_response(&mut self, status: StatusCode, headers: &HeaderMap) -> Decision {
        let now = SystemTime::now();
        self.report.last_status = Some(status);
        if let (Some(pacer), Some(host)) = (&self.policy.pacer, &self.host) {
            pacer.observe(host, status, headers, now);
        }
        let retry_after = if is_retryable_status(status) { headers::retry_after(headers, now) } else { None };
        let decision = self.policy.decide(
            DecideInput {
                status,
                retry_after,
                repeatable: self.repeatable,
                attempts: self.report.attempts,
                waited: self.report.total_wait,
            },
            fastrand::f64(),
        );
        match decision {
            Decision::Wait(delay, reason) => self.record_wait(delay, reason),
            Decision::Stop(stop) => {
                self.report.stop = stop;
                if stop != StopReason::Completed {
                    tracing::debug!(
                        target: "tollgate::client",
                        host = self.host.as_deref(),
                        attempts = self.report.attempts,
                        status = status.as_u16(),
                        retry_after_ms = retry_after.map(millis),
                        reason = %stop,
                        "giving up",
                    );
                }
            }
        }
        decision
    }

    fn record_wait(&mut self, delay: Duration, reason: WaitReason) {
        let attempt = self.report.attempts.saturating_add(1);
        tracing::info!(
            target: "tollgate::client",
            host = self.host.as_deref(),
            attempt,
            reason = reason.as_str(),
            delay_ms = millis(delay),
            "waiting before sending",
        );
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
pub(crate) fn host_key(uri: &http::Uri, headers: &HeaderMap) -> Option<Box<str>> {
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

    fn input(status: u16, retry_after: Option<u64>, attempts: u32, waited: u64) -> DecideInput {
        DecideInput {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: retry_after.map(Duration::from_secs),
            repeatable: true,
            attempts,
            waited: Duration::from_secs(waited),
        }
    }

    #[test]
    fn only_429_and_503_are_retried() {
        let policy = RetryPolicy::new();
        for status in [200, 201, 204, 301, 400, 403, 404, 500, 502, 504] {
            assert_eq!(
                policy.decide(input(status, Some(1), 1, 0), 0.5),
                Decision::Stop(StopReason::Completed),
                "{status}"
            );
        }
        for status in [429, 503] {
            assert_eq!(
                policy.decide(input(status, Some(1), 1, 0), 0.5),
                Decision::Wait(Duration::from_secs(1), WaitReason::RetryAfter)
            );
        }
    }

    #[test]
    fn caps() {
        let policy = RetryPolicy::new().max_attempts(3).max_wait(Duration::from_secs(10));
        assert_eq!(policy.decide(input(429, Some(1), 3, 0), 0.5), Decision::Stop(StopReason::MaxAttempts));
        assert_eq!(policy.decide(input(429, Some(11), 1, 0), 0.5), Decision::Stop(StopReason::WaitBudget));
        assert_eq!(
            policy.decide(input(429, Some(4), 2, 6), 0.5),
            Decision::Wait(Duration::from_secs(4), WaitReason::RetryAfter)
        );
        assert_eq!(policy.decide(input(429, Some(5), 2, 6), 0.5), Decision::Stop(StopReason::WaitBudget));
        // Backoff is cut to what is left, and stops when nothing is.
        let policy = policy.backoff(Backoff::new(Duration::from_secs(8), Duration::from_secs(8)));
        assert_eq!(
            policy.decide(input(503, None, 1, 7), 1.0),
            Decision::Wait(Duration::from_secs(3), WaitReason::Backoff)
        );
        assert_eq!(policy.decide(input(503, None, 1, 10), 1.0), Decision::Stop(StopReason::WaitBudget));
    }

    #[test]
    fn not_repeatable_is_returned() {
        let mut i = input(429, Some(1), 1, 0);
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
            policy.decide(input(429, None, 3, 0), 1.0),
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
        let key = |uri: &str| host_key(&uri.parse().unwrap(), &h).map(String::from);
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

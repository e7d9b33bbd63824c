//! [`RateLimitSignal`]: everything one response says about rate limits, in any dialect.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use super::dialect;

/// The rate-limit header dialects the client understands.
///
/// One response is read in one dialect: the first of these, in this order, that yields at
/// least one [`Quota`]. `Retry-After` is read alongside whichever it is.
///
/// | dialect | example |
/// | --- | --- |
/// | [`Ietf`](Dialect::Ietf) | `RateLimit: "free";r=3;t=7` (or `free;r=3;t=7`), `RateLimit-Policy: "free";q=10;w=10` |
/// | [`Draft7`](Dialect::Draft7) | `RateLimit: limit=5, remaining=3, reset=2`, `RateLimit-Policy: 5;w=3` |
/// | [`Draft6`](Dialect::Draft6) | `RateLimit-Limit: 5`, `RateLimit-Remaining: 3`, `RateLimit-Reset: 2`, `RateLimit-Policy: 5;w=3` |
/// | [`XRateLimit`](Dialect::XRateLimit) | `X-RateLimit-Limit: 5000`, `X-RateLimit-Remaining: 0`, `X-RateLimit-Reset: 1700000060` |
///
/// ```
/// use tollgate::client::Dialect;
/// assert_eq!(Dialect::Draft7.to_string(), "draft-7 RateLimit dictionary");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// draft-ietf-httpapi-ratelimit-headers-08 and later (express-rate-limit's `draft-8`): a
    /// structured-field list `RateLimit`, one item per quota policy, named by an sf-String or an
    /// sf-Token, with `r` (remaining) and `t` (seconds until more quota) parameters; the matching
    /// `RateLimit-Policy` item gives `q` (quota) and `w` (window in seconds).
    Ietf,
    /// draft-07 (express-rate-limit's `standardHeaders: 'draft-7'`): one structured-field
    /// dictionary `RateLimit: limit=L, remaining=R, reset=T`, with `RateLimit-Policy: L;w=W`.
    Draft7,
    /// draft-06 (express-rate-limit's `standardHeaders: 'draft-6'`): structured-field integers
    /// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (delta seconds), with
    /// `RateLimit-Policy: L;w=W`.
    Draft6,
    /// The de-facto `X-RateLimit-Limit` / `-Remaining` / `-Reset` trio of GitHub, express-rate-limit's
    /// legacy headers and many others (also spelled `X-Rate-Limit-*`). Not structured fields:
    /// plain decimal numbers, the reset in epoch seconds, epoch milliseconds or delta seconds
    /// (see [`RateLimitSignal`] for the rule).
    XRateLimit,
}

impl Dialect {
    /// A short description, as used in tracing events.
    ///
    /// ```
    /// assert_eq!(tollgate::client::Dialect::Ietf.as_str(), "IETF RateLimit list");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            Dialect::Ietf => "IETF RateLimit list",
            Dialect::Draft7 => "draft-7 RateLimit dictionary",
            Dialect::Draft6 => "draft-6 RateLimit-* fields",
            Dialect::XRateLimit => "X-RateLimit-* fields",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One quota as a server describes it: what remains, and when more comes back.
///
/// `reset` is "seconds until additional quota is made available": the next token of a token
/// bucket (draft-ietf-httpapi-ratelimit-headers-10), the end of a fixed window
/// (express-rate-limit, GitHub). `limit` and `window` come from the policy when the server
/// publishes one (`q` and `w`, `RateLimit-Policy: 5;w=3`, `RateLimit-Limit`, `X-RateLimit-Limit`);
/// with both, [`interval`](Quota::interval) is the time one unit of quota takes to come back,
/// the pace the client keeps once the quota is spent.
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::Quota;
///
/// let quota = Quota::new(0, Duration::from_secs(1)).limit(5).window(Duration::from_secs(3));
/// assert_eq!(quota.remaining(), 0);
/// assert!(quota.is_exhausted());
/// assert_eq!(quota.interval(), Some(Duration::from_millis(600)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    name: Option<Box<str>>,
    remaining: u64,
    reset: Duration,
    limit: Option<u64>,
    window: Option<Duration>,
}

impl Quota {
    /// A quota with `remaining` units left and more coming back `reset` from now (capped at
    /// [`RateLimitSignal::MAX_WAIT`]).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let q = tollgate::client::Quota::new(3, Duration::from_secs(7));
    /// assert_eq!((q.remaining(), q.reset()), (3, Duration::from_secs(7)));
    /// assert_eq!(q.get_limit(), None);
    /// ```
    pub fn new(remaining: u64, reset: Duration) -> Self {
        Self { name: None, remaining, reset: reset.min(RateLimitSignal::MAX_WAIT), limit: None, window: None }
    }

    /// The same quota with the policy's capacity (`q`, `limit`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let q = tollgate::client::Quota::new(3, Duration::ZERO).limit(10);
    /// assert_eq!(q.get_limit(), Some(10));
    /// ```
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The same quota with the policy's window (`w`: the time to restore the whole quota),
    /// capped at [`RateLimitSignal::MAX_WAIT`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let q = tollgate::client::Quota::new(3, Duration::ZERO).window(Duration::from_secs(60));
    /// assert_eq!(q.get_window(), Some(Duration::from_secs(60)));
    /// ```
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window.min(RateLimitSignal::MAX_WAIT));
        self
    }

    /// The same quota with the policy's name (IETF dialect).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let q = tollgate::client::Quota::new(3, Duration::ZERO).named("free");
    /// assert_eq!(q.name(), Some("free"));
    /// ```
    pub fn named(mut self, name: impl Into<Box<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The policy's name, when the dialect names policies.
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(tollgate::client::Quota::new(1, Duration::ZERO).name(), None);
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Units left (`r`, `remaining`, `RateLimit-Remaining`, `X-RateLimit-Remaining`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(tollgate::client::Quota::new(5, Duration::ZERO).remaining(), 5);
    /// ```
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Time from the response until more quota comes back (at most
    /// [`RateLimitSignal::MAX_WAIT`]).
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(tollgate::client::Quota::new(5, Duration::from_secs(9)).reset().as_secs(), 9);
    /// ```
    pub fn reset(&self) -> Duration {
        self.reset
    }

    /// The policy's capacity, when published.
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(tollgate::client::Quota::new(5, Duration::ZERO).get_limit(), None);
    /// ```
    pub fn get_limit(&self) -> Option<u64> {
        self.limit
    }

    /// The policy's window, when published.
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(tollgate::client::Quota::new(5, Duration::ZERO).get_window(), None);
    /// ```
    pub fn get_window(&self) -> Option<Duration> {
        self.window
    }

    /// `true` when nothing remains.
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert!(tollgate::client::Quota::new(0, Duration::from_secs(1)).is_exhausted());
    /// ```
    pub fn is_exhausted(&self) -> bool {
        self.remaining == 0
    }

    /// The time one unit takes to come back, `window / limit`, when both are published and
    /// the result is at least a nanosecond.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::client::Quota;
    ///
    /// let per_minute = Quota::new(9, Duration::ZERO).limit(60).window(Duration::from_secs(60));
    /// assert_eq!(per_minute.interval(), Some(Duration::from_secs(1)));
    /// assert_eq!(Quota::new(9, Duration::ZERO).limit(60).interval(), None);
    /// ```
    pub fn interval(&self) -> Option<Duration> {
        let (limit, window) = (self.limit?, self.window?);
        if limit == 0 {
            return None;
        }
        let nanos = window.as_nanos() / u128::from(limit);
        // `window` is at most a day, so `nanos` fits a u64.
        (nanos > 0).then(|| Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }
}

/// Everything one response says about rate limits: its status, `Retry-After`, and the quotas
/// of whichever [`Dialect`] it speaks.
///
/// [`parse`](RateLimitSignal::parse) is the client's only reader of rate-limit headers, a pure
/// function of the status, the headers and the wall-clock time. A
/// [`Classifier`](super::Classifier) decides from it whether a response is a refusal; the
/// [`Pacer`](super::Pacer) paces from its quotas.
///
/// # Invariants
///
/// Whatever the bytes, `parse` never panics, allocates only for the result, reads at most
/// [`MAX_HEADER_LEN`](Self::MAX_HEADER_LEN) bytes per field and keeps at most
/// [`MAX_QUOTAS`](Self::MAX_QUOTAS) quotas, and every duration in the result is at most
/// [`MAX_WAIT`](Self::MAX_WAIT). A value that cannot be read (not ASCII, not a number,
/// negative, a field over the length limit, a field repeated with different values) counts as
/// absent; a readable wait longer than `MAX_WAIT` is cut to `MAX_WAIT`.
///
/// # Reading a reset
///
/// A reset is a plain number of seconds (a decimal fraction is allowed outside structured
/// fields), read by its size: below 10⁹ it is a number of seconds from now (10⁹ s is 31 years,
/// longer than any real window); from 10⁹ up to 10¹² it is a Unix time in seconds (10⁹ is
/// September 2001, 10¹² is the year 33658); from 10¹² up it is a Unix time in milliseconds.
/// A Unix time in the past means "now". The rule is applied to every dialect, so a server that
/// sends epoch seconds where its draft asks for a delta is still understood.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, StatusCode};
/// use tollgate::client::{Dialect, RateLimitSignal};
///
/// // GitHub's primary limit: a 403 with the window spent.
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-limit", "5000".parse().unwrap());
/// headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
/// headers.insert("x-ratelimit-reset", "1700000042".parse().unwrap());
/// let signal = RateLimitSignal::parse(StatusCode::FORBIDDEN, &headers, now);
///
/// assert_eq!(signal.dialect(), Some(Dialect::XRateLimit));
/// assert!(signal.is_exhausted());
/// assert_eq!(signal.reset_wait(), Some(Duration::from_secs(42)));
/// assert_eq!(signal.wait(), Some(Duration::from_secs(42)));
///
/// // Hostile values never exceed the cap.
/// headers.insert("retry-after", "99999999999999999999999999".parse().unwrap());
/// let signal = RateLimitSignal::parse(StatusCode::TOO_MANY_REQUESTS, &headers, now);
/// assert_eq!(signal.retry_after(), Some(RateLimitSignal::MAX_WAIT));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitSignal {
    status: StatusCode,
    retry_after: Option<Duration>,
    dialect: Option<Dialect>,
    quotas: Vec<Quota>,
}

impl RateLimitSignal {
    /// The longest wait any header can ask for: one day (the longest window commonly
    /// published, a daily quota). Longer asks are cut to this. A client still never waits
    /// longer than its own budget ([`RetryPolicy::max_wait`](super::RetryPolicy::max_wait)).
    ///
    /// ```
    /// assert_eq!(tollgate::client::RateLimitSignal::MAX_WAIT.as_secs(), 86_400);
    /// ```
    pub const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

    /// The longest field (in bytes, all lines of a field together) that is read at all.
    ///
    /// ```
    /// assert_eq!(tollgate::client::RateLimitSignal::MAX_HEADER_LEN, 4096);
    /// ```
    pub const MAX_HEADER_LEN: usize = 4096;

    /// Most quotas read from one response; further items are ignored.
    ///
    /// ```
    /// assert_eq!(tollgate::client::RateLimitSignal::MAX_QUOTAS, 16);
    /// ```
    pub const MAX_QUOTAS: usize = 16;

    /// Reads a response. `now` is the wall-clock time, used for Unix-time resets and HTTP-date
    /// `Retry-After` values. See the [type docs](Self) for the invariants.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use http::{HeaderMap, StatusCode};
    /// use tollgate::client::{Dialect, RateLimitSignal};
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("ratelimit", "limit=5, remaining=0, reset=2".parse().unwrap());
    /// headers.insert("ratelimit-policy", "5;w=3".parse().unwrap());
    /// let signal = RateLimitSignal::parse(StatusCode::TOO_MANY_REQUESTS, &headers, SystemTime::now());
    ///
    /// assert_eq!(signal.status(), StatusCode::TOO_MANY_REQUESTS);
    /// assert_eq!(signal.dialect(), Some(Dialect::Draft7));
    /// let quota = &signal.quotas()[0];
    /// assert_eq!((quota.remaining(), quota.reset()), (0, Duration::from_secs(2)));
    /// assert_eq!(quota.interval(), Some(Duration::from_millis(600)));
    /// ```
    pub fn parse(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Self {
        let retry_after = dialect::retry_after(headers, now);
        let (dialect, quotas) = match dialect::quotas(headers, now) {
            Some((dialect, quotas)) => (Some(dialect), quotas),
            None => (None, Vec::new()),
        };
        Self { status, retry_after, dialect, quotas }
    }

    /// A signal made of parts, for classifier tests and custom dialects.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::StatusCode;
    /// use tollgate::client::{Quota, RateLimitSignal};
    ///
    /// let signal = RateLimitSignal::new(StatusCode::OK, None, vec![Quota::new(0, Duration::from_secs(3))]);
    /// assert!(signal.is_exhausted());
    /// assert_eq!(signal.dialect(), None);
    /// ```
    pub fn new(status: StatusCode, retry_after: Option<Duration>, mut quotas: Vec<Quota>) -> Self {
        quotas.truncate(Self::MAX_QUOTAS);
        Self { status, retry_after: retry_after.map(|d| d.min(Self::MAX_WAIT)), dialect: None, quotas }
    }

    /// The response's status.
    ///
    /// ```
    /// # use http::{HeaderMap, StatusCode};
    /// # use tollgate::client::RateLimitSignal;
    /// let signal = RateLimitSignal::parse(StatusCode::OK, &HeaderMap::new(), std::time::SystemTime::now());
    /// assert_eq!(signal.status(), StatusCode::OK);
    /// ```
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// `Retry-After` (RFC 9110 §10.2.3), delay-seconds or HTTP-date, whatever the status; a
    /// date in the past is `Duration::ZERO`.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use http::{HeaderMap, StatusCode};
    /// use tollgate::client::RateLimitSignal;
    ///
    /// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
    /// let mut headers = HeaderMap::new();
    /// headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
    /// let signal = RateLimitSignal::parse(StatusCode::SERVICE_UNAVAILABLE, &headers, now);
    /// assert_eq!(signal.retry_after(), Some(Duration::from_secs(10)));
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The dialect the quotas were read in, `None` when the response has no usable quota.
    ///
    /// ```
    /// # use http::{HeaderMap, StatusCode};
    /// # use tollgate::client::{Dialect, RateLimitSignal};
    /// let mut headers = HeaderMap::new();
    /// headers.insert("ratelimit", "free;r=3;t=7".parse().unwrap());
    /// let signal = RateLimitSignal::parse(StatusCode::OK, &headers, std::time::SystemTime::now());
    /// assert_eq!(signal.dialect(), Some(Dialect::Ietf));
    /// ```
    pub fn dialect(&self) -> Option<Dialect> {
        self.dialect
    }

    /// The quotas, in the order the server listed them.
    ///
    /// ```
    /// # use http::{HeaderMap, StatusCode};
    /// # use tollgate::client::RateLimitSignal;
    /// let mut headers = HeaderMap::new();
    /// headers.insert("ratelimit", r#""free";r=3;t=7, "free-daily";r=9950;t=41000"#.parse().unwrap());
    /// let signal = RateLimitSignal::parse(StatusCode::OK, &headers, std::time::SystemTime::now());
    /// let names: Vec<_> = signal.quotas().iter().map(|q| q.name().unwrap()).collect();
    /// assert_eq!(names, ["free", "free-daily"]);
    /// ```
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// `true` when some quota has nothing left. (Every quota carries a reset: a remaining count
    /// without one is not read as a quota.)
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use http::StatusCode;
    /// # use tollgate::client::{Quota, RateLimitSignal};
    /// let quotas = vec![Quota::new(4, Duration::ZERO), Quota::new(0, Duration::from_secs(60))];
    /// assert!(RateLimitSignal::new(StatusCode::OK, None, quotas).is_exhausted());
    /// ```
    pub fn is_exhausted(&self) -> bool {
        self.quotas.iter().any(Quota::is_exhausted)
    }

    /// The longest reset among exhausted quotas: when the server will take a request again.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use http::StatusCode;
    /// # use tollgate::client::{Quota, RateLimitSignal};
    /// let quotas = vec![Quota::new(4, Duration::from_secs(90)), Quota::new(0, Duration::from_secs(60))];
    /// let signal = RateLimitSignal::new(StatusCode::OK, None, quotas);
    /// assert_eq!(signal.reset_wait(), Some(Duration::from_secs(60)));
    /// ```
    pub fn reset_wait(&self) -> Option<Duration> {
        self.quotas.iter().filter(|q| q.is_exhausted()).map(Quota::reset).max()
    }

    /// How long the server asks a refused client to wait: `Retry-After` when present, else
    /// [`reset_wait`](Self::reset_wait).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use http::StatusCode;
    /// # use tollgate::client::{Quota, RateLimitSignal};
    /// let quotas = vec![Quota::new(0, Duration::from_secs(60))];
    /// let signal = RateLimitSignal::new(StatusCode::FORBIDDEN, Some(Duration::from_secs(5)), quotas);
    /// assert_eq!(signal.wait(), Some(Duration::from_secs(5)));
    /// ```
    pub fn wait(&self) -> Option<Duration> {
        self.retry_after.or_else(|| self.reset_wait())
    }
}

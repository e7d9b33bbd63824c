//! [`Pacer`]: slow down before the server has to say no, host by host.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::headers;

/// Remembers, per host, when the server's own headers allow the next request.
///
/// After each response the pacer reads [`headers::quotas`] (IETF `RateLimit`, else
/// `X-RateLimit-Remaining` / `X-RateLimit-Reset`) and keeps the longest
/// [`Quota::pace`](headers::Quota::pace) of them: when nothing remains, the next request to that
/// host waits until the reset; when fewer than [`spread_below`](Pacer::spread_below) remain,
/// they are spread over the time to the reset. A 429 or 503 with a `Retry-After` sets the next
/// allowed time to exactly that.
///
/// Hosts are keyed by authority (`host:port`). Only hosts that currently need a wait are
/// stored, and at most [`max_hosts`](Pacer::max_hosts) of them: past that, the entry updated
/// longest ago is evicted. Clones share their state, so one pacer can serve several clients.
/// Time is [`tokio::time::Instant`], so paused-time tests work.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, StatusCode};
/// use tollgate::client::Pacer;
///
/// let pacer = Pacer::new();
/// let mut headers = HeaderMap::new();
/// headers.insert("ratelimit", r#""free";r=0;t=5"#.parse().unwrap());
/// pacer.observe("api.example.com:443", StatusCode::OK, &headers, SystemTime::now());
///
/// assert_eq!(pacer.delay("api.example.com:443"), Duration::from_secs(5));
/// assert_eq!(pacer.delay("other.example.com:443"), Duration::ZERO);
/// tokio::time::advance(Duration::from_secs(2)).await;
/// assert_eq!(pacer.delay("api.example.com:443"), Duration::from_secs(3));
/// # }
/// ```
#[derive(Clone)]
pub struct Pacer {
    max_hosts: usize,
    spread_below: u64,
    hosts: Arc<Mutex<HashMap<Box<str>, Entry>>>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    next_send: Instant,
    updated: Instant,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("max_hosts", &self.max_hosts)
            .field("spread_below", &self.spread_below)
            .field("tracked_hosts", &self.tracked_hosts())
            .finish()
    }
}

impl Pacer {
    /// A pacer tracking up to 1024 hosts, spreading requests when fewer than 2 remain.
    ///
    /// ```
    /// let pacer = tollgate::client::Pacer::new();
    /// assert_eq!(pacer.tracked_hosts(), 0);
    /// ```
    pub fn new() -> Self {
        Self { max_hosts: 1024, spread_below: 2, hosts: Arc::default() }
    }

    /// Track at most `max_hosts` hosts (at least 1); the one updated longest ago is evicted.
    ///
    /// ```
    /// let pacer = tollgate::client::Pacer::new().max_hosts(16);
    /// # assert!(format!("{pacer:?}").contains("max_hosts: 16"));
    /// ```
    pub fn max_hosts(mut self, max_hosts: usize) -> Self {
        self.max_hosts = max_hosts.max(1);
        self
    }

    /// Spread the remaining requests over the time to the reset when fewer than
    /// `spread_below` remain (default 2; 0 or 1 = wait only when nothing remains).
    ///
    /// ```
    /// let pacer = tollgate::client::Pacer::new().spread_below(5);
    /// # assert!(format!("{pacer:?}").contains("spread_below: 5"));
    /// ```
    pub fn spread_below(mut self, spread_below: u64) -> Self {
        self.spread_below = spread_below;
        self
    }

    /// How long a request to `host` should wait now before being sent.
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(tollgate::client::Pacer::new().delay("example.com:80"), Duration::ZERO);
    /// ```
    pub fn delay(&self, host: &str) -> Duration {
        let now = Instant::now();
        let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        hosts.get(host).map_or(Duration::ZERO, |entry| entry.next_send.saturating_duration_since(now))
    }

    /// Learns from a response from `host`. `now` is the wall-clock time used to read
    /// `X-RateLimit-Reset` and HTTP-date `Retry-After` values.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::{Duration, SystemTime};
    /// use http::{HeaderMap, StatusCode};
    /// use tollgate::client::Pacer;
    ///
    /// let pacer = Pacer::new();
    /// let mut headers = HeaderMap::new();
    /// headers.insert("retry-after", "3".parse().unwrap());
    /// pacer.observe("a:80", StatusCode::TOO_MANY_REQUESTS, &headers, SystemTime::now());
    /// assert_eq!(pacer.delay("a:80"), Duration::from_secs(3));
    ///
    /// // A later response that says there is room clears the wait.
    /// headers.clear();
    /// headers.insert("ratelimit", r#""p";r=9;t=1"#.parse().unwrap());
    /// pacer.observe("a:80", StatusCode::OK, &headers, SystemTime::now());
    /// assert_eq!(pacer.delay("a:80"), Duration::ZERO);
    /// # }
    /// ```
    pub fn observe(&self, host: &str, status: StatusCode, headers: &HeaderMap, now: SystemTime) {
        let retry_after = if super::policy::is_retryable_status(status) {
            headers::retry_after(headers, now)
        } else {
            None
        };
        let wait = retry_after.unwrap_or_else(|| {
            headers::quotas(headers, now)
                .iter()
                .map(|quota| quota.pace(self.spread_below))
                .max()
                .unwrap_or(Duration::ZERO)
        });
        self.set_wait(host, wait);
    }

    fn set_wait(&self, host: &str, wait: Duration) {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        // `wait` is at most `headers::MAX_DELAY` (one year), so this cannot overflow in practice;
        // `checked_add` keeps it that way for any future caller.
        let next_send = match now.checked_add(wait) {
            Some(at) if !wait.is_zero() => at,
            _ => {
                hosts.remove(host);
                return;
            }
        };
        let entry = Entry { next_send, updated: now };
        if let Some(existing) = hosts.get_mut(host) {
            *existing = entry;
            return;
        }
        if hosts.len() >= self.max_hosts {
            hosts.retain(|_, entry| entry.next_send > now);
        }
        if hosts.len() >= self.max_hosts {
            let oldest = hosts.iter().min_by_key(|(_, entry)| entry.updated).map(|(host, _)| host.clone());
            if let Some(oldest) = oldest {
                hosts.remove(&oldest);
            }
        }
        hosts.insert(host.into(), entry);
    }

    /// How many hosts currently have a pending wait recorded.
    ///
    /// ```
    /// assert_eq!(tollgate::client::Pacer::new().tracked_hosts(), 0);
    /// ```
    pub fn tracked_hosts(&self) -> usize {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(remaining: u64, reset: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit", format!("\"p\";r={remaining};t={reset}").parse().unwrap());
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn longest_pace_of_all_quotas_wins() {
        let pacer = Pacer::new();
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit", r#""free";r=5;t=7, "free-daily";r=0;t=40"#.parse().unwrap());
        pacer.observe("h:1", StatusCode::OK, &headers, SystemTime::now());
        assert_eq!(pacer.delay("h:1"), Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn spreads_when_low() {
        let pacer = Pacer::new().spread_below(3);
        pacer.observe("h:1", StatusCode::OK, &limited(2, 9), SystemTime::now());
        assert_eq!(pacer.delay("h:1"), Duration::from_secs(3));
        pacer.observe("h:1", StatusCode::OK, &limited(3, 9), SystemTime::now());
        assert_eq!(pacer.delay("h:1"), Duration::ZERO);
        assert_eq!(pacer.tracked_hosts(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_only_counts_on_429_and_503() {
        let pacer = Pacer::new();
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "4".parse().unwrap());
        pacer.observe("h:1", StatusCode::OK, &headers, SystemTime::now());
        assert_eq!(pacer.delay("h:1"), Duration::ZERO);
        pacer.observe("h:1", StatusCode::SERVICE_UNAVAILABLE, &headers, SystemTime::now());
        assert_eq!(pacer.delay("h:1"), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_and_oldest_is_evicted() {
        let pacer = Pacer::new().max_hosts(3);
        for host in ["a", "b", "c"] {
            pacer.observe(host, StatusCode::OK, &limited(0, 100), SystemTime::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(pacer.tracked_hosts(), 3);
        // Refresh "a" so that "b" is now the oldest.
        pacer.observe("a", StatusCode::OK, &limited(0, 100), SystemTime::now());
        pacer.observe("d", StatusCode::OK, &limited(0, 100), SystemTime::now());
        assert_eq!(pacer.tracked_hosts(), 3);
        assert_eq!(pacer.delay("b"), Duration::ZERO);
        assert!(pacer.delay("a") > Duration::ZERO);
        assert!(pacer.delay("c") > Duration::ZERO);
        assert!(pacer.delay("d") > Duration::ZERO);
        for i in 0..10_000 {
            let host = format!("host-{i}");
            pacer.observe(&host, StatusCode::OK, &limited(0, 100), SystemTime::now());
        }
        assert_eq!(pacer.tracked_hosts(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_dropped_first() {
        let pacer = Pacer::new().max_hosts(2);
        pacer.observe("short", StatusCode::OK, &limited(0, 1), SystemTime::now());
        pacer.observe("long", StatusCode::OK, &limited(0, 100), SystemTime::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        pacer.observe("new", StatusCode::OK, &limited(0, 100), SystemTime::now());
        // "short" had expired, so the older but still relevant "long" was kept.
        assert!(pacer.delay("long") > Duration::ZERO);
        assert!(pacer.delay("new") > Duration::ZERO);
        assert_eq!(pacer.tracked_hosts(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_state() {
        let pacer = Pacer::new();
        let clone = pacer.clone();
        clone.observe("h", StatusCode::OK, &limited(0, 5), SystemTime::now());
        assert_eq!(pacer.delay("h"), Duration::from_secs(5));
    }
}

//! [`Pacer`]: one queue per host, releasing requests one at a time at the host's published pace.

mod acquire;
mod host;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

pub use self::acquire::{Acquire, AcquireError, Permit};
use self::host::{Host, Turn};

/// Paces requests host by host from what the servers publish, so that concurrent callers are
/// released one at a time, never all at once.
///
/// Every request to a host takes a place in that host's queue ([`acquire`](Pacer::acquire)),
/// and only the head of the queue may go, when the host's pace allows; the [`Permit`] it gets
/// reports the answer back ([`Permit::answer`]), which sets the pace:
///
/// - **First contact**: nothing is known of a new host, so one request goes first (a probe)
///   and the others wait for its answer, at most [`probe_timeout`](Pacer::probe_timeout).
///   An answer without rate-limit headers opens the host: no pace to keep.
/// - **A published rate** (`RateLimit-Policy` `q` and `w`, or a draft-06/07 limit and window):
///   the pacer mirrors the server's bucket (GCRA with one unit every `w / q`): what remains goes
///   at once, then one request every `w / q`, the first when the quota's reset says more is
///   available (`t`, "seconds until additional quota", draft-ietf-httpapi-ratelimit-headers-10).
///   The other requests still in flight, which the server may not have counted yet, are taken
///   off what it says remains.
/// - **Only "R left until the reset"** (GitHub's `x-ratelimit-*`): the R go (spread over the
///   time to the reset when fewer than [`spread_below`](Pacer::spread_below) remain), then
///   nothing until the reset, then a probe again.
/// - **A refusal's wait** (`Retry-After`, or the reset of an exhausted quota) holds every
///   request to the host that long; then the published rate resumes, or a probe goes first.
///   A refusal that no exhausted quota explains (GitHub's secondary limit: a 403 with
///   `Retry-After` while quota remains) is a limit on concurrency: for twice its wait, the
///   host gets one request in flight at a time, as GitHub advises.
///
/// An answer to a request older than the newest one applied may only tighten the pace (the
/// server took requests in another order than they were sent), never loosen it.
///
/// Bounds: at most [`max_queue`](Pacer::max_queue) waiters per host (past that,
/// [`AcquireError::QueueFull`]) and [`max_hosts`](Pacer::max_hosts) hosts (past that, the idle
/// host seen longest ago is forgotten; when every host is busy, a request to a new host goes
/// unpaced). A dropped [`Acquire`] gives its place up. The queues sit behind one
/// `std::sync::Mutex`, held only for a few arithmetic steps and never across an `.await`.
/// Clones share their state, so one pacer can serve several clients. Time is
/// [`tokio::time::Instant`], so paused-time tests work.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, StatusCode};
/// use tokio::time::Instant;
/// use tollgate::client::{Pacer, RateLimitSignal};
///
/// let pacer = Pacer::new();
/// let start = Instant::now();
/// // The first answer: 2 of 5 left, 5 per 5 s (one a second), the next one in 1 s.
/// let mut headers = HeaderMap::new();
/// headers.insert("ratelimit", r#""p";r=2;t=1"#.parse().unwrap());
/// headers.insert("ratelimit-policy", r#""p";q=5;w=5"#.parse().unwrap());
/// let signal = RateLimitSignal::parse(StatusCode::OK, &headers, SystemTime::now());
/// pacer.acquire("api.test:443").await.unwrap().answer(&signal, None);
///
/// // Five concurrent callers: the two that remain go at once, then one a second.
/// let callers: Vec<_> = (0..5)
///     .map(|_| {
///         let pacer = pacer.clone();
///         tokio::spawn(async move {
///             let _permit = pacer.acquire("api.test:443").await.unwrap();
///             start.elapsed().as_millis()
///         })
///     })
///     .collect();
/// let mut released = Vec::new();
/// for caller in callers {
///     released.push(caller.await.unwrap());
/// }
/// released.sort();
/// assert_eq!(released, [0, 0, 1000, 2000, 3000]);
/// # }
/// ```
#[derive(Clone)]
pub struct Pacer {
    config: Config,
    state: Arc<State>,
}

/// The pacer's settings, copied into every future and permit.
#[derive(Clone, Copy, Debug)]
struct Config {
    max_hosts: usize,
    max_queue: usize,
    spread_below: u64,
    probe_timeout: Duration,
}

/// The hosts, and the source of queue ids.
#[derive(Debug, Default)]
struct State {
    hosts: Mutex<HashMap<Box<str>, Host>>,
    next_id: AtomicU64,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Host>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Where a new waiter ended up.
enum Registered {
    Queued,
    Full,
    Untracked,
}

/// Queues `id` for `host`, making room for the host when needed.
fn register(
    hosts: &mut HashMap<Box<str>, Host>,
    host: &str,
    id: u64,
    now: Instant,
    config: &Config,
) -> Registered {
    if let Some(entry) = hosts.get_mut(host) {
        if entry.queue.len() >= config.max_queue {
            return Registered::Full;
        }
        entry.enqueue(id);
        entry.touched = now;
        return Registered::Queued;
    }
    if hosts.len() >= config.max_hosts {
        let idle = hosts.iter().filter(|(_, h)| h.is_idle()).min_by_key(|(_, h)| h.touched);
        let Some(evict) = idle.map(|(name, _)| name.clone()) else { return Registered::Untracked };
        hosts.remove(&evict);
    }
    if config.max_queue == 0 {
        return Registered::Full;
    }
    let mut entry = Host::new(now);
    entry.enqueue(id);
    hosts.insert(host.into(), entry);
    Registered::Queued
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("max_hosts", &self.config.max_hosts)
            .field("max_queue", &self.config.max_queue)
            .field("spread_below", &self.config.spread_below)
            .field("probe_timeout", &self.config.probe_timeout)
            .field("tracked_hosts", &self.tracked_hosts())
            .finish()
    }
}

impl Pacer {
    /// Up to 1024 hosts, 1024 waiters per host, spreading when fewer than 2 remain, probes
    /// waited for up to 2 s.
    ///
    /// ```
    /// let pacer = tollgate::client::Pacer::new();
    /// assert_eq!(pacer.tracked_hosts(), 0);
    /// ```
    pub fn new() -> Self {
        let config = Config {
            max_hosts: 1024,
            max_queue: 1024,
            spread_below: 2,
            probe_timeout: Duration::from_secs(2),
        };
        Self { config, state: Arc::default() }
    }

    /// Track at most `max_hosts` hosts (at least 1). Configure before cloning: clones share
    /// the hosts but keep the settings they were made with.
    ///
    /// ```
    /// let pacer = tollgate::client::Pacer::new().max_hosts(16);
    /// assert!(format!("{pacer:?}").contains("max_hosts: 16"));
    /// ```
    pub fn max_hosts(mut self, max_hosts: usize) -> Self {
        self.config.max_hosts = max_hosts.max(1);
        self
    }

    /// Let at most `max_queue` requests wait for one host (0: none may wait, every request
    /// fails with [`AcquireError::QueueFull`]).
    ///
    /// ```
    /// let pacer = tollgate::client::Pacer::new().max_queue(64);
    /// assert!(format!("{pacer:?}").contains("max_queue: 64"));
    /// ```
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.config.max_queue = max_queue;
        self
    }

    /// When the server publishes no rate, spread the last requests over the time to the reset
    /// when fewer than `spread_below` remain (default 2; 0 or 1: wait only when none remain).
    ///
    /// ```
    /// let pacer = tollgate::client::Pacer::new().spread_below(5);
    /// assert!(format!("{pacer:?}").contains("spread_below: 5"));
    /// ```
    pub fn spread_below(mut self, spread_below: u64) -> Self {
        self.config.spread_below = spread_below;
        self
    }

    /// How long the others wait for a probe's answer before going anyway (default 2 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let pacer = tollgate::client::Pacer::new().probe_timeout(Duration::from_millis(500));
    /// assert!(format!("{pacer:?}").contains("probe_timeout: 500ms"));
    /// ```
    pub fn probe_timeout(mut self, probe_timeout: Duration) -> Self {
        self.config.probe_timeout = probe_timeout;
        self
    }

    /// A place in `host`'s queue: resolves to a [`Permit`] when it is this request's turn.
    /// `host` is any stable key; the retry layer uses the authority, `host:port`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use tollgate::client::{AcquireError, Pacer};
    ///
    /// let pacer = Pacer::new().max_queue(1);
    /// let first = pacer.acquire("a:80").await.unwrap();
    /// // The probe is out: the next one waits for its answer...
    /// let second = tokio::spawn(pacer.acquire("a:80"));
    /// tokio::task::yield_now().await;
    /// assert_eq!(pacer.queued("a:80"), 1);
    /// // ... and takes the only place in the queue.
    /// assert_eq!(pacer.acquire("a:80").await.unwrap_err(), AcquireError::QueueFull);
    /// drop(first); // no answer: the next request probes
    /// assert!(second.await.unwrap().is_ok());
    /// # }
    /// ```
    pub fn acquire(&self, host: impl Into<Arc<str>>) -> Acquire {
        Acquire::new(Arc::clone(&self.state), self.config, host.into())
    }

    /// How long the head of `host`'s queue would wait now, as far as is known (zero for a host
    /// never seen; a wait for a probe's answer counts in full).
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(tollgate::client::Pacer::new().delay("example.com:80"), Duration::ZERO);
    /// ```
    pub fn delay(&self, host: &str) -> Duration {
        let now = Instant::now();
        match self.state.lock().get_mut(host).map(|h| h.turn(now)) {
            Some(Turn::Wait { until, .. }) => until - now,
            Some(Turn::Now) | None => Duration::ZERO,
        }
    }

    /// How many requests wait in `host`'s queue.
    ///
    /// ```
    /// assert_eq!(tollgate::client::Pacer::new().queued("example.com:80"), 0);
    /// ```
    pub fn queued(&self, host: &str) -> usize {
        self.state.lock().get(host).map_or(0, |h| h.queue.len())
    }

    /// How many released requests to `host` have not been answered yet.
    ///
    /// ```
    /// assert_eq!(tollgate::client::Pacer::new().in_flight("example.com:80"), 0);
    /// ```
    pub fn in_flight(&self, host: &str) -> u64 {
        self.state.lock().get(host).map_or(0, Host::in_flight)
    }

    /// How many hosts the pacer currently remembers.
    ///
    /// ```
    /// assert_eq!(tollgate::client::Pacer::new().tracked_hosts(), 0);
    /// ```
    pub fn tracked_hosts(&self) -> usize {
        self.state.lock().len()
    }
}

#[cfg(test)]
mod tests;

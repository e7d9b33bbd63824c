//! Usage over time: per client, how many requests were admitted and rejected and how many
//! tokens they took, per minute for the last hour and per hour for the last day; and, for the
//! operator, the busiest clients of the last hour and where rejections happen.
//!
//! A [`History`] is told of every limited request ([`History::record`], a few tens of
//! nanoseconds, no I/O) and answers two questions:
//! * [`History::client`]: one client's [`UsageHistory`], served in `/usage` as `history` and
//!   drawn by `/dashboard`. Kept for *identified* clients (an API key, or an identity an
//!   authentication layer gave): a client keyed by its address has no history of its own.
//! * [`History::report`]: the [`AdminReport`] of `GET /admin/usage`: the busiest clients of
//!   the last hour by tokens (anonymous ones by address too), rejections by tier and by route,
//!   and the totals per minute.
//!
//! Two forms:
//! * [`History::memory`]: in this process. Each client costs a fixed 1 016 bytes of counts
//!   (60 + 24 periods of three 32-bit counts) plus its map entry and label, about 1.1 KiB:
//!   the default bound of 100 000 identified clients is about 110 MiB at worst, a million
//!   would be about 1.1 GiB (`cargo bench --bench history` measures it). When the bound is
//!   reached, the half of the clients seen longest ago make room. Anonymous clients, kept only
//!   for the operator's view (60 minutes), have a bound of their own (10 000 by default), so a
//!   flood of new addresses never pushes out an identified client's history.
//! * [`History::redis`] (feature `redis`): shared by every instance. Each record only adds to
//!   an in-process batch; a background task writes the batches to Redis about once a second
//!   (`HINCRBY` on per-minute and per-hour hashes that expire by themselves), so the history
//!   costs a request no round trip at all. See [`History::redis`] for the keys.
//!
//! ```
//! use tollgate::history::{History, Visit};
//! use tollgate::key::Key;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let history = History::memory();
//! let acme = Key::new("acme-key");
//! let at = 1_700_000_000; // Unix epoch seconds
//! history.record(&Visit::new(&acme, "pro", "/api/search", at, true, 5).name("Acme Corp"));
//! history.record(&Visit::new(&acme, "pro", "/api/search", at + 1, false, 0).name("Acme Corp"));
//!
//! let mine = history.client(&acme, at + 2).await.unwrap();
//! assert_eq!(mine.minutes.len(), 1);
//! assert_eq!((mine.minutes[0].admitted, mine.minutes[0].rejected, mine.minutes[0].tokens), (1, 1, 5));
//! assert_eq!(mine.hours[0].start, at / 3600 * 3600);
//!
//! let report = history.report(at + 2, 10).await.unwrap();
//! assert_eq!(report.clients[0].client, "Acme Corp");
//! assert_eq!(report.rejected_by_route[0].name, "/api/search");
//! # });
//! ```

mod memory;
#[cfg(feature = "redis")]
mod redis;
mod ring;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::key::Key;
use crate::observe::{Event, Observer, Outcome};

/// Identified clients the in-process history keeps by default.
pub const DEFAULT_MAX_CLIENTS: usize = 100_000;
/// Anonymous clients (by address) the in-process history keeps by default, for the operator.
pub const DEFAULT_MAX_ANONYMOUS: usize = 10_000;
/// The operator's window: the last hour.
pub const WINDOW_S: u64 = 3_600;

/// One limited request, as the history records it.
///
/// ```
/// use tollgate::history::Visit;
/// use tollgate::key::Key;
/// let key = Key::from_ip("192.0.2.1".parse().unwrap());
/// let visit = Visit::new(&key, "anonymous", "/api/simple", 1_700_000_000, false, 0);
/// assert!(!visit.identified, "a client keyed by address is anonymous");
/// assert!(Visit::new(&Key::new("k"), "free", "/", 0, true, 1).identified);
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Visit<'a> {
    /// The client.
    pub key: &'a Key,
    /// How people know the client (`name` in `[api_keys]`); `None`: an address, or a short
    /// prefix of the key.
    pub name: Option<&'a str>,
    /// True for a client with an API key or an identity from an authentication layer: only
    /// those have a history of their own.
    pub identified: bool,
    /// The client's tier.
    pub tier: &'a str,
    /// The route charged (a template such as `/users/{id}`).
    pub route: &'a str,
    /// When, in Unix epoch seconds.
    pub at: u64,
    /// Admitted (served, perhaps degraded) or rejected (429 or 403).
    pub admitted: bool,
    /// Tokens charged.
    pub tokens: u64,
}

impl<'a> Visit<'a> {
    /// A request of `key` (identified unless it is an address).
    pub fn new(key: &'a Key, tier: &'a str, route: &'a str, at: u64, admitted: bool, tokens: u64) -> Self {
        Self { key, name: None, identified: key.ip().is_none(), tier, route, at, admitted, tokens }
    }

    /// The client's name.
    pub fn name(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }
}

/// What a client (or everyone) did in one period.
///
/// ```
/// use tollgate::history::Period;
/// let p = Period { start: 1_700_000_040, admitted: 3, rejected: 1, tokens: 7 };
/// assert_eq!(serde_json::to_value(p).unwrap()["start"], 1_700_000_040);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// Unix epoch seconds at which the period starts (a whole minute or hour).
    pub start: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests rejected (429 or 403).
    pub rejected: u64,
    /// Tokens charged.
    pub tokens: u64,
}

/// One client's usage over time: the `history` of `/usage`. Periods without requests are left
/// out; both lists are oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageHistory {
    /// Minutes of the last hour (the current minute included).
    pub minutes: Vec<Period>,
    /// Hours of the last day (the current hour included).
    pub hours: Vec<Period>,
}

impl UsageHistory {
    /// A history of these periods.
    pub fn new(minutes: Vec<Period>, hours: Vec<Period>) -> Self {
        Self { minutes, hours }
    }
}

/// One client in the operator's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClientUsage {
    /// The client's name, its address, or a short prefix of its key: never a whole API key.
    pub client: String,
    /// Its tier.
    pub tier: String,
    /// Requests admitted in the window.
    pub admitted: u64,
    /// Requests rejected in the window.
    pub rejected: u64,
    /// Tokens charged in the window.
    pub tokens: u64,
}

/// A name (a tier, a route) and how many requests it rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NamedCount {
    /// The tier or route.
    pub name: String,
    /// Requests rejected.
    pub rejected: u64,
}

impl NamedCount {
    /// Most first, then by name; zero counts left out.
    fn sorted<N: AsRef<str>>(counts: HashMap<N, u64>) -> Vec<Self> {
        let mut list: Vec<Self> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, rejected)| Self { name: name.as_ref().to_owned(), rejected })
            .collect();
        list.sort_by(|a, b| b.rejected.cmp(&a.rejected).then_with(|| a.name.cmp(&b.name)));
        list
    }
}

/// The operator's view of the last hour: the body of `GET /admin/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AdminReport {
    /// The window, in seconds (3600).
    pub window_s: u64,
    /// The busiest clients, most tokens first (then most requests, then by name).
    pub clients: Vec<ClientUsage>,
    /// Rejections by tier, most first.
    pub rejected_by_tier: Vec<NamedCount>,
    /// Rejections by route, most first.
    pub rejected_by_route: Vec<NamedCount>,
    /// Everyone's requests per minute, oldest first (minutes without requests left out).
    pub minutes: Vec<Period>,
}

impl AdminReport {
    fn assemble(
        mut clients: Vec<ClientUsage>,
        limit: usize,
        rejected_by_tier: Vec<NamedCount>,
        rejected_by_route: Vec<NamedCount>,
        minutes: Vec<Period>,
    ) -> Self {
        clients.sort_by(|a, b| {
            b.tokens
                .cmp(&a.tokens)
                .then_with(|| (b.admitted + b.rejected).cmp(&(a.admitted + a.rejected)))
                .then_with(|| a.client.cmp(&b.client))
        });
        clients.truncate(limit);
        Self { window_s: WINDOW_S, clients, rejected_by_tier, rejected_by_route, minutes }
    }
}

/// How a client is shown to people: its `name`; else its address; else the first four
/// characters of its key and an ellipsis (keys shorter than 12 characters show none), so a
/// whole API key is never shown.
///
/// ```
/// use tollgate::history::client_label;
/// use tollgate::key::Key;
/// assert_eq!(client_label(&Key::new("sk_live_0123456789"), Some("Acme Corp")), "Acme Corp");
/// assert_eq!(client_label(&Key::new("sk_live_0123456789"), None), "sk_l…");
/// assert_eq!(client_label(&Key::new("short-key"), None), "…");
/// assert_eq!(client_label(&Key::from_ip("192.0.2.1".parse().unwrap()), None), "192.0.2.1");
/// ```
pub fn client_label(key: &Key, name: Option<&str>) -> String {
    if let Some(name) = name {
        return name.to_owned();
    }
    if let Some(ip) = key.ip() {
        return ip.to_string();
    }
    let shown = key.to_string();
    let secret = shown.strip_prefix("id:").unwrap_or(&shown);
    if secret.chars().count() < 12 {
        "…".to_owned()
    } else {
        let mut label: String = secret.chars().take(4).collect();
        label.push('…');
        label
    }
}

/// What a Redis history has written so far; each count only grows.
///
/// ```
/// let stats = tollgate::history::History::memory().stats();
/// assert_eq!(stats.failed_flushes, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryStats {
    /// Batches written.
    pub flushes: u64,
    /// Batches that could not be written.
    pub failed_flushes: u64,
    /// Requests left out of the history because their batch could not be written.
    pub lost: u64,
}

/// Why a history could not be read (the Redis form only).
#[derive(Debug)]
#[non_exhaustive]
pub enum HistoryError {
    /// Redis could not answer.
    Redis(String),
    /// The Redis URL is invalid.
    BadUrl(String),
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(why) => write!(f, "the usage history cannot be read from Redis: {why}"),
            Self::BadUrl(why) => write!(f, "invalid Redis address for the usage history: {why}"),
        }
    }
}

impl std::error::Error for HistoryError {}

#[derive(Debug)]
enum Kind {
    Memory(memory::MemoryHistory),
    #[cfg(feature = "redis")]
    Redis(redis::RedisHistory),
}

/// The usage history; see the [module documentation](self). Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct History(Arc<Kind>);

impl History {
    /// An in-process history with the default bounds ([`DEFAULT_MAX_CLIENTS`] identified,
    /// [`DEFAULT_MAX_ANONYMOUS`] anonymous clients).
    pub fn memory() -> Self {
        Self::memory_bounded(DEFAULT_MAX_CLIENTS, DEFAULT_MAX_ANONYMOUS)
    }

    /// An in-process history keeping at most about `identified` identified clients and
    /// `anonymous` anonymous ones (0: none; the operator's view then lists only identified
    /// clients).
    ///
    /// ```
    /// let history = tollgate::history::History::memory_bounded(1_000, 0);
    /// # let _ = history;
    /// ```
    pub fn memory_bounded(identified: usize, anonymous: usize) -> Self {
        Self(Arc::new(Kind::Memory(memory::MemoryHistory::new(identified, anonymous))))
    }

    /// A history shared by every instance through the Redis at `url` (a node; see
    /// [`redis_cluster`](Self::redis_cluster)), under keys that start with `prefix`. Connects
    /// to nothing until the first request; the flushing task starts then, on the runtime that
    /// serves requests.
    ///
    /// # Keys
    /// Per identified client, `<prefix>:hist:{<digest>}:m:<minute>` (expires after 62 minutes)
    /// and `<prefix>:hist:{<digest>}:h:<hour>` (25 hours): hashes of `a` (admitted), `r`
    /// (rejected) and `t` (tokens), where `<digest>` is the client digest of the Redis store
    /// (no API key appears in Redis) and `<minute>`, `<hour>` count from the Unix epoch. For the
    /// operator, per minute, under `<prefix>:{adm}:` (one Cluster slot): sorted sets `t:<m>`,
    /// `a:<m>`, `r:<m>` of clients by tokens, admitted and rejected, a hash `w:<m>` of each
    /// client's tier and label, hashes `rt:<m>` and `rr:<m>` of rejections by tier and by
    /// route, and `tot:<m>` of everyone's counts. Every key expires by itself.
    ///
    /// # Cost
    /// [`record`](Self::record) adds to an in-process batch (a lock held for a few
    /// nanoseconds); about once a second the batches are written with one pipelined round trip
    /// (one per Cluster slot on a Cluster, sent concurrently). A batch that cannot be written
    /// is dropped, logged (at most once a minute) and counted in [`stats`](Self::stats): the
    /// history is best effort, the limits never depend on it. Of anonymous clients, at most
    /// 256 per shard and minute are batched, and the 100 busiest per flush are written.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let history = tollgate::history::History::redis("redis://127.0.0.1:6379", "my-api").unwrap();
    /// assert!(tollgate::history::History::redis("not a url", "p").is_err());
    /// # let _ = history;
    /// # });
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(url: &str, prefix: impl Into<String>) -> Result<Self, HistoryError> {
        let side =
            crate::side_redis::SideRedis::node(url).map_err(|e| HistoryError::BadUrl(e.to_string()))?;
        Ok(Self(Arc::new(Kind::Redis(redis::RedisHistory::new(side, prefix.into())))))
    }

    /// Like [`redis`](Self::redis), on the Redis Cluster that `nodes` belong to.
    #[cfg(feature = "redis")]
    pub fn redis_cluster(nodes: &[String], prefix: impl Into<String>) -> Result<Self, HistoryError> {
        let side =
            crate::side_redis::SideRedis::cluster(nodes).map_err(|e| HistoryError::BadUrl(e.to_string()))?;
        Ok(Self(Arc::new(Kind::Redis(redis::RedisHistory::new(side, prefix.into())))))
    }

    /// What the Redis form has written: batches flushed, flushes that failed, and the requests
    /// left out of the history with them. All zero for the in-process form.
    pub fn stats(&self) -> HistoryStats {
        match &*self.0 {
            Kind::Memory(_) => HistoryStats::default(),
            #[cfg(feature = "redis")]
            Kind::Redis(history) => {
                let (flushes, failed_flushes, lost) = history.stats();
                HistoryStats { flushes, failed_flushes, lost }
            }
        }
    }

    /// Records one limited request. Never blocks on I/O.
    pub fn record(&self, visit: &Visit<'_>) {
        match &*self.0 {
            Kind::Memory(history) => history.record(visit),
            #[cfg(feature = "redis")]
            Kind::Redis(history) => history.record(visit),
        }
    }

    /// `key`'s history as of `now` (Unix epoch seconds). Empty for a client that is not
    /// identified.
    pub async fn client(&self, key: &Key, now: u64) -> Result<UsageHistory, HistoryError> {
        match &*self.0 {
            Kind::Memory(history) => Ok(history.client(key, now)),
            #[cfg(feature = "redis")]
            Kind::Redis(history) => history.client(key, now).await,
        }
    }

    /// The operator's view of the hour before `now`, with the `limit` busiest clients.
    pub async fn report(&self, now: u64, limit: usize) -> Result<AdminReport, HistoryError> {
        match &*self.0 {
            Kind::Memory(history) => Ok(history.report(now, limit)),
            #[cfg(feature = "redis")]
            Kind::Redis(history) => history.report(now, limit).await,
        }
    }

    /// Writes what this instance has batched (the Redis form; the in-process one has nothing
    /// to write). Reads flush first, so an instance always reads its own requests.
    pub async fn flush(&self) -> Result<(), HistoryError> {
        match &*self.0 {
            Kind::Memory(_) => Ok(()),
            #[cfg(feature = "redis")]
            Kind::Redis(history) => history.flush().await,
        }
    }
}

/// A history records the decisions it is told of: admitted and degraded requests that were
/// charged as admitted, 429 and 403 answers as rejected. Not recorded: a request that cost
/// nothing (reading `/usage` or the dashboard, a route of cost 0: it used none of the
/// client's limits), and a store fault (nothing was decided).
impl Observer for History {
    fn on_event(&self, event: &Event<'_>) {
        let (decision, admitted) = match event.outcome {
            Outcome::Admitted(d) | Outcome::Delayed(d) | Outcome::Degraded(d, _) => (d, true),
            Outcome::Rejected(d) | Outcome::Exceeds(d) => (d, false),
            // The tokens recorded are those charged up front: a cost settled from the answer
            // is not a visit of its own.
            Outcome::Settled(_) | Outcome::StoreFault(_) => return,
        };
        if admitted && decision.charged() == 0 {
            return;
        }
        self.record(&Visit {
            key: event.key,
            name: event.name,
            identified: event.identified,
            tier: event.tier.name(),
            route: event.route,
            at: decision.now().as_secs(),
            admitted,
            tokens: decision.charged(),
        });
    }
}

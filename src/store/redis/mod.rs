//! The Redis store: see [`RedisStore`].

mod blocked;
mod breaker;
mod connection;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blocked::Blocked;
use breaker::{Breaker, Gate, Transition};
use connection::{Lazy, Target};

use super::{
    redis_defaults, Charge, Decision, MemoryStore, OnError, PolicyState, Receipt, Settlement, Store,
    StoreError, StoreFuture, Verdict, DEFAULT_CAPACITY,
};
use crate::algorithm::Algorithm;
use crate::clock::{Clock, Nanos, SystemClock};
use crate::key::Key;
use crate::policy::{Policy, Tier};

/// Check and charge: the shared algorithms, then the decision.
const SCRIPT: &str = concat!(include_str!("algorithms.lua"), include_str!("check.lua"));
/// Settle a cost that changed: the shared algorithms, then the settlement.
const SETTLE: &str = concat!(include_str!("algorithms.lua"), include_str!("settle.lua"));

/// The longest an open breaker waits between probes.
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(60);

/// Where the store connects.
#[derive(Debug, Clone)]
enum Endpoint {
    Node(String),
    Cluster(Vec<String>),
}

/// Settings of a [`RedisStore`]; see [`RedisStore::builder`] and [`RedisStore::cluster`].
///
/// ```
/// use std::time::Duration;
/// use tollgate::store::{OnError, RedisStore};
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("api")
///     .timeout(Duration::from_millis(20))
///     .breaker(5, Duration::from_millis(500))
///     .blocked_keys(1_000)
///     .on_error(OnError::Deny)
///     .build()
///     .unwrap();
/// assert_eq!(store.prefix(), "api");
/// assert!(RedisStore::builder("not a url").build().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    endpoint: Endpoint,
    prefix: String,
    timeout: Duration,
    on_error: OnError,
    breaker_failures: u32,
    probe_interval: Duration,
    blocked_keys: usize,
    blocked_recheck: Duration,
    fallback_capacity: usize,
}

impl RedisStoreBuilder {
    fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            prefix: redis_defaults::PREFIX.to_owned(),
            timeout: redis_defaults::TIMEOUT,
            on_error: OnError::default(),
            breaker_failures: redis_defaults::BREAKER_FAILURES,
            probe_interval: redis_defaults::PROBE_INTERVAL,
            blocked_keys: redis_defaults::BLOCKED_KEYS,
            blocked_recheck: redis_defaults::BLOCKED_RECHECK,
            fallback_capacity: DEFAULT_CAPACITY,
        }
    }

    /// Starts every key with `prefix` (`tollgate` by default).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Gives up on a call after `timeout` (50 ms by default; at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// What to do when Redis cannot answer ([`OnError::Local`] by default). Give the layer the
    /// same policy: with `Local` this store never fails; with `Allow` or `Deny` it fails and the
    /// layer applies the policy.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// Opens the circuit breaker after `failures` failed calls in a row (3 by default), and
    /// then lets one probe through every `probe_interval` (250 ms by default; held between
    /// 1 ms and 60 s, so that an open breaker always finds out soon that Redis is back).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::store::RedisStore;
    /// let store = RedisStore::builder("redis://127.0.0.1:6379").breaker(5, Duration::MAX).build();
    /// assert!(store.is_ok()); // probes once a minute at most, never "never"
    /// ```
    pub fn breaker(mut self, failures: u32, probe_interval: Duration) -> Self {
        self.breaker_failures = failures.max(1);
        self.probe_interval = probe_interval.clamp(Duration::from_millis(1), MAX_PROBE_INTERVAL);
        self
    }

    /// Remembers at most `entries` rejected clients locally (10 000 by default; 0 disables the
    /// over-limit cache).
    pub fn blocked_keys(mut self, entries: usize) -> Self {
        self.blocked_keys = entries;
        self
    }

    /// Asks Redis again about a client refused locally after at most `recheck` (1 s by
    /// default; between 1 ms and 60 s): the bound on how long a local refusal can be wrong
    /// after the client's state got better behind this instance's back (an operator deleted
    /// its keys, Redis evicted them, a failover lost writes). See "Over-limit cache" on
    /// [`RedisStore`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::store::RedisStore;
    /// let store = RedisStore::builder("redis://127.0.0.1:6379")
    ///     .blocked_recheck(Duration::from_millis(250))
    ///     .build();
    /// assert!(store.is_ok());
    /// ```
    pub fn blocked_recheck(mut self, recheck: Duration) -> Self {
        self.blocked_recheck = recheck.clamp(Duration::from_millis(1), Duration::from_secs(60));
        self
    }

    /// Caps the states of the in-process fallback used with [`OnError::Local`].
    pub fn fallback_capacity(mut self, states: usize) -> Self {
        self.fallback_capacity = states.max(1);
        self
    }

    /// Checks the URLs and makes the store. Connects to nothing: the first request does.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let target = match &self.endpoint {
            Endpoint::Node(url) => Target::node(url),
            Endpoint::Cluster(nodes) => Target::cluster(nodes),
        }
        .map_err(|e| StoreError::new("invalid Redis address", Some(Box::new(e) as _)))?;
        let clock = SystemClock::new();
        let fallback = (self.on_error == OnError::Local)
            .then(|| MemoryStore::with_clock(clock).capacity(self.fallback_capacity));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn: Lazy::new(target),
                script: redis::Script::new(SCRIPT),
                settle: redis::Script::new(SETTLE),
                prefix: self.prefix,
                timeout: self.timeout,
                on_error: self.on_error,
                breaker: Breaker::new(self.breaker_failures, Nanos::from(self.probe_interval)),
                blocked: Blocked::new(self.blocked_keys, Nanos::from(self.blocked_recheck)),
                fallback,
                clock,
                counters: Counters::default(),
            }),
        })
    }
}

/// What a [`RedisStore`] has done since it was built: each count only grows.
///
/// ```
/// use tollgate::store::RedisStore;
/// let store = RedisStore::builder("redis://127.0.0.1:6379").build().unwrap();
/// let stats = store.stats();
/// assert_eq!(stats.redis_decisions, 0);
/// assert!(!stats.breaker_open);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Requests Redis decided.
    pub redis_decisions: u64,
    /// Calls that failed: timeouts, connection errors, bad answers.
    pub errors: u64,
    /// Of those, calls that timed out.
    pub timeouts: u64,
    /// Times the circuit breaker opened (Redis considered down).
    pub breaker_opened: u64,
    /// Times it closed again (Redis answered a probe or a late call).
    pub breaker_closed: u64,
    /// Probes let through while the breaker was open.
    pub probes: u64,
    /// Requests not sent to Redis because the breaker was open.
    pub short_circuited: u64,
    /// Requests decided by the in-process fallback ([`OnError::Local`]).
    pub local_decisions: u64,
    /// Requests rejected from the over-limit cache, without asking Redis.
    pub cached_rejections: u64,
    /// True while the breaker is open.
    pub breaker_open: bool,
}

#[derive(Debug, Default)]
struct Counters {
    redis_decisions: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    breaker_opened: AtomicU64,
    breaker_closed: AtomicU64,
    probes: AtomicU64,
    short_circuited: AtomicU64,
    local_decisions: AtomicU64,
    cached_rejections: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The Redis store: one limit shared by every instance of a service. Cheap to clone; clones
/// share the connection, breaker, caches and counts.
///
/// ```no_run
/// # use nonzero_ext::nonzero;
/// use std::time::Duration;
/// use tollgate::store::{OnError, RedisStore};
/// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
/// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32)))).build().unwrap();
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("my-api")
///     .timeout(Duration::from_millis(50))
///     .on_error(OnError::Local)
///     .build()?;
/// let layer = RateLimitLayer::from_limits(limits)
///     .with_store(store.clone())
///     .on_error(OnError::Local);
/// # Ok::<(), tollgate::store::StoreError>(())
/// ```
///
/// With a configuration file, `[store] backend = "redis"` (or `TOLLGATE_STORE__BACKEND=redis`)
/// builds this store from `url` (or the Cluster's `nodes`), `prefix`, `timeout_ms`, `on_error`,
/// `breaker_failures`, `probe_interval_ms`, `blocked_keys` and `blocked_recheck_ms`.
///
/// # One round trip, atomic
/// Each request runs one Lua script (`EVALSHA`; the script is loaded on first use and again
/// whenever Redis answers `NOSCRIPT`, e.g. after a restart). The script reads Redis' clock
/// (`TIME`: instances never need synchronised clocks), runs the same GCRA or sliding-window
/// arithmetic as the [memory store](MemoryStore) on every policy of the client's tier
/// (in microseconds, so Lua's doubles stay exact), and charges all of them or none. It answers
/// with everything a [`Decision`] holds. Emission intervals are rounded up to whole
/// microseconds (never faster than configured), and so are sliding-window waits; otherwise its
/// decisions are the memory store's at the same instant (the integration tests compare them).
///
/// # Keys
/// `<prefix>:{<digest>}:<policy>`, e.g. `tollgate:{3f1c…}:free-daily`, where the digest is the
/// first 128 bits of the SHA-1 of the client [`Key`] (`id:<api key>` or `ip:<address>`), in hex:
/// a raw API key never appears in Redis, and the `{…}` hash tag puts all of a client's policies
/// in one Cluster slot, which the script needs. A GCRA key holds
/// `"g <tat> <slid> <emission> <at>"`: the theoretical arrival time, the last instant a refund
/// slid the bucket, the emission interval (microseconds) and when it was written; a
/// sliding-window key holds `"w <window> <previous> <current> <window length> <at>"`; a sliding log
/// is a sorted set.
/// Every key expires (`PX`) when its bucket would be full again, so idle clients cost nothing.
/// See [`RedisStore::key_of`].
///
/// # Reloads
/// Keys are named by policy, and each state says which rule wrote it, so when a reload
/// changes a policy's rate, burst, window or algorithm (between a token bucket and a sliding
/// window; a sliding log converts as its own documentation says), the script converts each client's
/// state the next time it meets it ([`Rule::carry`](crate::algorithm::Rule::carry): the
/// tokens used carry over, as of the reload): no key is rewritten in bulk, and a reload costs
/// no round trip. Instances that reload a moment apart agree: only an admitted request writes,
/// under its own rule, and a state is read under the reader's. (The forms of earlier versions,
/// without the rule, are read as written under the reader's rule; an earlier version reads
/// these forms as a full bucket, so upgrade every instance of a service together.) A policy
/// that a reload removed and a later one adds back starts full: the script forgets a state
/// written before the removal (as this instance's reloader saw it; an instance started since
/// knows of no removal and reads such a state until the client's next admission rewrites it).
///
/// # When Redis cannot answer
/// Every call is bounded by a timeout (50 ms by default). A circuit breaker opens after
/// [`breaker_failures`](RedisStoreBuilder::breaker) failures in a row; while it is open no
/// request waits on Redis, and one request per probe interval (250 ms by default) is let through
/// to find out whether Redis is back. Then:
/// * [`OnError::Local`]: the store never fails. An in-process [`MemoryStore`] limits each
///   instance on its own (so `n` instances admit up to `n` times the limit) until Redis answers
///   again; its state is then left behind and Redis' own is used.
/// * [`OnError::Allow`] / [`OnError::Deny`]: the store returns a [`StoreError`] (at once while
///   the breaker is open) and the layer forwards without headers or answers 503.
///
/// Every transition is logged with `tracing` and counted: see [`RedisStore::stats`].
///
/// # Over-limit cache
/// Once Redis rejects a client until some instant, this instance rejects the same request
/// (same charge) locally, with the remaining wait as `Retry-After`, without asking Redis:
/// until the deadline, until the first token comes back, and never longer than
/// [`blocked_recheck`](RedisStoreBuilder::blocked_recheck) (1 s by default) after Redis'
/// answer. That last bound is how long a local refusal can be wrong when the client's state
/// got better behind this instance's back (an operator's `DEL`, an eviction, a failover): at
/// most 1 s. A flood from one abusive key costs Redis one call a second per instance. At most
/// [`blocked_keys`](RedisStoreBuilder::blocked_keys) entries are kept (10 000 by default).
///
/// # Runtime
/// Building a store connects to nothing, so it works in synchronous code and while Redis is
/// down. The connection is started by the first request, inside the Tokio runtime that polls
/// it, and is kept (and re-established in the background) by that runtime's tasks: use one
/// store within one runtime.
///
/// # Key names
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::{Algorithm, Quota};
/// use tollgate::key::Key;
/// use tollgate::policy::Policy;
/// use tollgate::store::RedisStore;
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379").prefix("shop").build().unwrap();
/// let policy = Policy::new("free", Algorithm::TokenBucket, Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)));
/// let key = store.key_of(&Key::new("secret-api-key"), &policy);
/// assert!(key.starts_with("shop:{") && key.ends_with("}:free"));
/// assert!(!key.contains("secret"));
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Lazy,
    script: redis::Script,
    settle: redis::Script,
    prefix: String,
    timeout: Duration,
    on_error: OnError,
    breaker: Breaker,
    blocked: Blocked,
    fallback: Option<MemoryStore<SystemClock>>,
    clock: SystemClock,
    counters: Counters,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisStore")
            .field("conn", &inner.conn)
            .field("prefix", &inner.prefix)
            .field("timeout", &inner.timeout)
            .field("on_error", &inner.on_error)
            .field("breaker_open", &inner.breaker.is_open())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS when redis-rs is built with it).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Endpoint::Node(url.into()))
    }

    /// A store on the Redis Cluster reachable at any of `nodes` (URLs).
    ///
    /// ```
    /// use tollgate::store::RedisStore;
    /// let store = RedisStore::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).build();
    /// assert!(store.is_ok());
    /// assert!(RedisStore::cluster(Vec::<String>::new()).build().is_err());
    /// ```
    pub fn cluster(nodes: impl IntoIterator<Item = impl Into<String>>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Endpoint::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key holding `key`'s state for `policy`.
    pub fn key_of(&self, key: &Key, policy: &Policy) -> String {
        let mut name = self.inner.client_prefix(key);
        name.push_str(policy.name());
        name
    }

    /// The counts so far, and whether the breaker is open now.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            redis_decisions: get(&c.redis_decisions),
            errors: get(&c.errors),
            timeouts: get(&c.timeouts),
            breaker_opened: get(&c.breaker_opened),
            breaker_closed: get(&c.breaker_closed),
            probes: get(&c.probes),
            short_circuited: get(&c.short_circuited),
            local_decisions: get(&c.local_decisions),
            cached_rejections: get(&c.cached_rejections),
            breaker_open: self.inner.breaker.is_open(),
        }
    }

    /// Clients rejected locally until their deadline (expired entries included until swept).
    pub fn blocked_len(&self) -> usize {
        self.inner.blocked.len()
    }
}

/// The script's arguments for one request.
struct Call {
    keys: Vec<String>,
    charge: Charge,
    /// How long the request may be held (whole microseconds, rounded down: never longer).
    max_wait: u64,
    policies: Vec<(u8, u64, u64, u64)>,
    /// When a reload last removed each policy (microseconds since the epoch), or empty when
    /// none was ever removed (the common case: no extra arguments).
    gone: Vec<u64>,
    limits: Vec<u64>,
}

impl Inner {
    /// `<prefix>:{<digest>}:`
    fn client_prefix(&self, key: &Key) -> String {
        let digest = sha1_smol::Sha1::from(key.to_string()).digest().bytes();
        let mut name = String::with_capacity(self.prefix.len() + 48);
        name.push_str(&self.prefix);
        name.push_str(":{");
        for byte in &digest[..16] {
            use fmt::Write;
            let _ = write!(name, "{byte:02x}");
        }
        name.push_str("}:");
        name
    }

    fn call(&self, key: &Key, tier: &Tier, charge: Charge) -> Call {
        let client = self.client_prefix(key);
        let policies = tier.policies();
        Call {
            keys: policies.iter().map(|p| format!("{client}{}", p.name())).collect(),
            charge,
            max_wait: tier.max_delay().as_nanos() / 1_000,
            policies: policies
                .iter()
                .map(|p| {
                    let algorithm = match p.algorithm() {
                        Algorithm::TokenBucket => 0,
                        Algorithm::SlidingWindow => 1,
                        Algorithm::SlidingLog => 2,
                    };
                    let quota = p.quota();
                    (
                        algorithm,
                        quota.emission().as_micros_ceil(),
                        quota.burst(),
                        p.changed_at().as_micros_ceil(),
                    )
                })
                .collect(),
            gone: if policies.iter().any(|p| !p.gone_at().is_zero()) {
                policies.iter().map(|p| p.gone_at().as_micros_ceil()).collect()
            } else {
                Vec::new()
            },
            limits: policies.iter().map(|p| p.quota().burst()).collect(),
        }
    }

    /// Runs the settlement script for `settlement` (a receipt Redis wrote); `call` names the
    /// client's keys and policies.
    async fn ask_settle(&self, call: &Call, settlement: &Settlement) -> Result<Decision, Fault> {
        let mut conn = self.conn.get().map_err(Fault::Redis)?;
        let mut invocation = self.settle.prepare_invoke();
        for key in &call.keys {
            invocation.key(key);
        }
        invocation
            .arg(settlement.charged)
            .arg(settlement.actual)
            .arg(settlement.charged_at.as_nanos() / 1_000);
        for (i, &(algorithm, emission, burst, _)) in call.policies.iter().enumerate() {
            invocation.arg(algorithm).arg(emission).arg(burst).arg(settlement.receipt.get(i));
        }
        let reply = match tokio::time::timeout(self.timeout, conn.invoke(&invocation)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => return Err(Fault::Redis(error)),
            Err(_) => return Err(Fault::Timeout(self.timeout)),
        };
        parse(&reply, &call.limits).ok_or(Fault::BadReply)
    }

    async fn ask(&self, call: &Call) -> Result<Decision, Fault> {
        let mut conn = self.conn.get().map_err(Fault::Redis)?;
        let mut invocation = self.script.prepare_invoke();
        for key in &call.keys {
            invocation.key(key);
        }
        invocation
            .arg(call.charge.cost)
            .arg(call.charge.reduced_below)
            .arg(call.charge.reduced_cost)
            .arg(call.max_wait);
        for &(algorithm, emission, burst, changed) in &call.policies {
            invocation.arg(algorithm).arg(emission).arg(burst).arg(changed);
        }
        if !call.gone.is_empty() {
            invocation.arg("gone");
            for &gone in &call.gone {
                invocation.arg(gone);
            }
        }
        let reply = match tokio::time::timeout(self.timeout, conn.invoke(&invocation)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => return Err(Fault::Redis(error)),
            Err(_) => return Err(Fault::Timeout(self.timeout)),
        };
        parse(&reply, &call.limits).ok_or(Fault::BadReply)
    }

    fn succeeded(&self) {
        bump(&self.counters.redis_decisions);
        if self.breaker.success() == Some(Transition::Closed) {
            bump(&self.counters.breaker_closed);
            tracing::info!(prefix = %self.prefix, "tollgate: Redis answers again; circuit breaker closed");
        }
    }

    fn failed(&self, fault: &Fault, now: Nanos) {
        bump(&self.counters.errors);
        if matches!(fault, Fault::Timeout(_)) {
            bump(&self.counters.timeouts);
        }
        tracing::debug!(error = %fault, "tollgate: Redis call failed");
        if self.breaker.failure(now) == Some(Transition::Opened) {
            bump(&self.counters.breaker_opened);
            tracing::warn!(
                error = %fault,
                on_error = ?self.on_error,
                prefix = %self.prefix,
                "tollgate: Redis unreachable; circuit breaker open",
            );
        }
    }

    /// The answer when Redis cannot give one.
    fn without_redis(
        &self,
        key: &Key,
        tier: &Tier,
        charge: Charge,
        fault: Fault,
    ) -> Result<Decision, StoreError> {
        match &self.fallback {
            Some(local) => {
                bump(&self.counters.local_decisions);
                let decision = local.decide(key, tier, charge);
                Ok(decision.with_receipt(decision.receipt().local()))
            }
            None => Err(fault.into_error()),
        }
    }

    fn remember_rejection(&self, digest: u64, charge: Charge, decision: &Decision, hold: Nanos) {
        if decision.verdict() == Verdict::Rejected {
            self.blocked.insert(digest, charge, decision, hold, self.clock.now());
        }
    }
}

/// Why Redis gave no decision.
#[derive(Debug)]
enum Fault {
    Redis(redis::RedisError),
    Timeout(Duration),
    BadReply,
    Open,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(error) => write!(f, "{error}"),
            Self::Timeout(after) => write!(f, "no answer within {} ms", after.as_millis()),
            Self::BadReply => f.write_str("unexpected reply from the rate-limit script"),
            Self::Open => f.write_str("circuit breaker open (Redis recently unreachable)"),
        }
    }
}

impl Fault {
    fn into_error(self) -> StoreError {
        match self {
            Self::Redis(error) => StoreError::new("Redis call failed", Some(Box::new(error) as _)),
            other => StoreError::new(format!("Redis call failed: {other}"), None),
        }
    }
}

/// Reads a script's reply: outcome, now (s, µs), charged, wait (µs), then seven numbers per
/// policy (remaining, reset, retry, next, the fraction left as numerator and denominator, the
/// receipt).
fn parse(reply: &[i64], limits: &[u64]) -> Option<Decision> {
    const HEAD: usize = 5;
    const PER_POLICY: usize = 7;
    if reply.len() != HEAD + PER_POLICY * limits.len() {
        return None;
    }
    let nonneg = |v: i64| u64::try_from(v).ok();
    let outcome = match reply[0] {
        0 => Verdict::Admitted,
        1 => Verdict::Rejected,
        2 => Verdict::Exceeds,
        _ => return None,
    };
    let now = Nanos::from_secs(nonneg(reply[1])?).checked_add(Nanos::from_micros(nonneg(reply[2])?))?;
    let charged = nonneg(reply[3])?;
    let wait = Nanos::from_micros(nonneg(reply[4])?);
    let micros = |v: i64| Some(Nanos::from_micros(nonneg(v)?));
    let mut fraction = 1.0_f64;
    let mut states = Vec::with_capacity(limits.len());
    let mut receipt = Receipt::default();
    for (index, (chunk, &limit)) in reply[HEAD..].chunks_exact(PER_POLICY).zip(limits).enumerate() {
        let (num, den) = (u128::from(nonneg(chunk[4])?) * 1_000, u128::from(nonneg(chunk[5])?) * 1_000);
        if den > 0 {
            fraction = fraction.min(num as f64 / den as f64);
        }
        receipt = receipt.with(index, nonneg(chunk[6])?);
        states.push(PolicyState {
            index: u8::try_from(index).ok()?,
            limit,
            remaining: nonneg(chunk[0])?,
            reset_after: micros(chunk[1])?,
            retry_after: micros(chunk[2])?,
            next_after: micros(chunk[3])?,
        });
    }
    let decision = Decision::new(outcome, now, fraction, charged).held(wait).with_receipt(receipt);
    Some(states.into_iter().fold(decision, Decision::with))
}

impl Store for RedisStore {
    /// Redis converts each state lazily, in the script; the in-process fallback converts now.
    fn carry_over(&self, limits: &crate::policy::Limits) {
        if let Some(fallback) = &self.inner.fallback {
            fallback.carry_over(limits);
        }
    }

    fn check(&self, key: &Key, tier: &Tier, charge: Charge) -> StoreFuture {
        let inner = &self.inner;
        let now = inner.clock.now();
        let digest = inner.blocked.digest(key, tier);
        if let Some(decision) = inner.blocked.get(digest, charge, now) {
            bump(&inner.counters.cached_rejections);
            return StoreFuture::ready(Ok(decision));
        }
        match inner.breaker.gate(now) {
            Gate::Ask => {}
            Gate::Probe => bump(&inner.counters.probes),
            Gate::Refuse => {
                bump(&inner.counters.short_circuited);
                return StoreFuture::ready(inner.without_redis(key, tier, charge, Fault::Open));
            }
        }
        let call = inner.call(key, tier, charge);
        let hold = tier.max_delay();
        // The fallback needs the client and tier after the round trip.
        let fallback = inner.fallback.is_some().then(|| (key.clone(), tier.clone()));
        let inner = Arc::clone(&self.inner);
        StoreFuture::boxed(async move {
            match inner.ask(&call).await {
                Ok(decision) => {
                    inner.succeeded();
                    inner.remember_rejection(digest, charge, &decision, hold);
                    Ok(decision)
                }
                Err(fault) => {
                    inner.failed(&fault, inner.clock.now());
                    match &fallback {
                        Some((key, tier)) => inner.without_redis(key, tier, charge, fault),
                        None => Err(fault.into_error()),
                    }
                }
            }
        })
    }

    /// One round trip (the settlement script), made only when a cost changed. A refund also
    /// forgets this instance's cached rejection of the client, which it may have made too
    /// early now (other instances keep theirs until it expires: at worst they refuse the
    /// client until the deadline Redis gave before the refund). A decision of the in-process
    /// fallback is settled there. When Redis cannot answer, the charge stands (an error).
    fn settle(&self, key: &Key, tier: &Tier, settlement: Settlement) -> StoreFuture {
        let inner = &self.inner;
        if settlement.actual < settlement.charged {
            inner.blocked.forget(inner.blocked.digest(key, tier));
        }
        if settlement.receipt.is_local() {
            return StoreFuture::ready(match &inner.fallback {
                Some(local) => Ok(local.settle_now(key, tier, settlement)),
                None => Err(StoreError::new("no in-process fallback to settle with", None)),
            });
        }
        let now = inner.clock.now();
        if inner.breaker.gate(now) == Gate::Refuse {
            bump(&inner.counters.short_circuited);
            return StoreFuture::ready(Err(Fault::Open.into_error()));
        }
        let call = inner.call(key, tier, Charge::new(0));
        let inner = Arc::clone(&self.inner);
        StoreFuture::boxed(async move {
            match inner.ask_settle(&call, &settlement).await {
                Ok(decision) => {
                    inner.succeeded();
                    Ok(decision)
                }
                Err(fault) => {
                    inner.failed(&fault, inner.clock.now());
                    Err(fault.into_error())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonzero_ext::nonzero;

    /// Issue 11 (suspected, confirmed): the probe interval had no upper bound, so an open
    /// breaker could stop probing for good.
    #[test]
    fn an_open_breaker_always_probes_again_within_a_minute() {
        let builder = RedisStore::builder("redis://127.0.0.1:1").breaker(1, Duration::MAX);
        assert_eq!(builder.probe_interval, MAX_PROBE_INTERVAL);
        let breaker = Breaker::new(1, Nanos::from(builder.probe_interval));
        let t0 = Nanos::from_secs(1_000);
        assert_eq!(breaker.failure(t0), Some(Transition::Opened));
        assert_eq!(breaker.gate(t0 + Nanos::from_secs(59)), Gate::Refuse);
        assert_eq!(breaker.gate(t0 + Nanos::from_secs(60)), Gate::Probe);
    }

    #[test]
    fn parses_a_reply() {
        let reply = [
            1,
            1_700_000_000,
            250_000,
            0,
            0,
            0,
            5_000_000,
            1_500_000,
            1_500_000,
            0,
            10_000_000,
            0,
            9,
            86_400_000,
            0,
            8_640_000,
            9,
            10,
            0,
        ];
        let d = parse(&reply, &[10, 10]).unwrap();
        assert_eq!(d.verdict(), Verdict::Rejected);
        assert_eq!(d.now(), Nanos::new(1_700_000_000_250_000_000));
        assert_eq!(d.policies()[0].reset_after, Nanos::from_secs(5));
        assert_eq!(d.retry_after(), Some(Nanos::from_millis(1_500)));
        assert_eq!(d.policies()[1].remaining, 9);
        assert_eq!(d.policies()[1].next_after, Nanos::from_millis(8_640));
        assert_eq!(d.fraction_before(), 0.0);
        assert!(parse(&reply[..5], &[10, 10]).is_none());
        assert!(parse(&[7, 0, 0, 0, 0], &[]).is_none());
        // A held admission: its wait and its receipts.
        let held = [0, 1_700_000_000, 0, 1, 400_000, 0, 2_400_000, 0, 200_000, 1, 2, 1_700_000_002_400_000];
        let d = parse(&held, &[2]).unwrap();
        assert_eq!(d.wait(), Nanos::from_millis(400));
        assert_eq!(d.receipt().get(0), 1_700_000_002_400_000);
    }

    #[test]
    fn keys_hide_the_client_and_share_a_hash_tag() {
        let store = RedisStore::builder("redis://127.0.0.1:1").prefix("p").build().unwrap();
        let quota = crate::algorithm::Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32));
        let a = Policy::new("free", Algorithm::TokenBucket, quota);
        let b = Policy::new("free-daily", Algorithm::TokenBucket, quota);
        let key = Key::new("sk_live_secret");
        let (ka, kb) = (store.key_of(&key, &a), store.key_of(&key, &b));
        assert_eq!(ka.len(), "p:{".len() + 32 + "}:free".len());
        assert!(!ka.contains("sk_live"));
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&ka), tag(&kb));
        assert_ne!(tag(&ka), tag(&store.key_of(&Key::new("other"), &a)));
        // Stable across stores and processes (no random seed): instances agree.
        let again = RedisStore::builder("redis://127.0.0.1:1").prefix("p").build().unwrap();
        assert_eq!(again.key_of(&key, &a), ka);
        // Pinned: changing the digest would split every deployed limit in two.
        let demo = RedisStore::builder("redis://127.0.0.1:1").build().unwrap();
        let daily = Policy::new("free-daily", Algorithm::TokenBucket, quota);
        assert_eq!(
            demo.key_of(&Key::new("free-demo-key"), &daily),
            "tollgate:{c0ad4a26e71e75542cedbafa7f2e1c62}:free-daily"
        );
    }
}

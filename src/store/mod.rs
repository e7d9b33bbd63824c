//! Where limiter state lives: the [`Store`] trait, its [`Decision`], and the in-process
//! [`MemoryStore`].
//!
//! A store charges a [`Charge`] against every policy of a client's [`Tier`] atomically (all or
//! none) and answers with a [`Decision`] that carries everything the answer needs: admitted or
//! not, each policy's limit, remaining tokens and time to full, the retry-after, and the fraction
//! of the burst that was left before the charge (for degradation bands).
//!
//! The trait is asynchronous (a Redis store does I/O) but a store that can answer at once
//! returns [`StoreFuture::ready`], which the layer resolves without allocating or polling.
//! A store knows nothing of HTTP.
//!
//! Two things may follow a decision:
//! * **Holding.** A tier with a [`max_delay`](crate::policy::Tier::max_delay) is charged ahead
//!   when its tokens arrive within the delay: the decision is admitted with a
//!   [`wait`](Decision::wait), and the layer holds the request that long (a timer) before
//!   forwarding it.
//! * **Settling.** Every admission carries a [`Receipt`]; when the request turns out to cost
//!   something else (a handler reported its actual cost, the route charges only failures, a
//!   held request went away), [`Store::settle`] gives back or charges the difference and
//!   answers with the client's standing afterwards.

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

#[cfg(feature = "redis")]
pub use self::redis::{RedisStats, RedisStore, RedisStoreBuilder};
pub use memory::MemoryStore;

use crate::clock::Nanos;
use crate::key::Key;
use crate::policy::{Limits, Tier, MAX_POLICIES};

/// The most states (one per key and policy) a memory store keeps unless told otherwise; also
/// the bound of the Redis store's in-process fallback.
pub const DEFAULT_CAPACITY: usize = 1 << 21;

/// What a [`RedisStore`](crate::store::RedisStore) uses unless told otherwise, and the
/// defaults of the configuration's `[store]` (written here once for both).
pub(crate) mod redis_defaults {
    use std::time::Duration;

    pub(crate) const URL: &str = "redis://127.0.0.1:6379";
    pub(crate) const PREFIX: &str = "tollgate";
    pub(crate) const TIMEOUT: Duration = Duration::from_millis(50);
    pub(crate) const BREAKER_FAILURES: u32 = 3;
    pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(250);
    pub(crate) const BLOCKED_KEYS: usize = 10_000;
    pub(crate) const BLOCKED_RECHECK: Duration = Duration::from_secs(1);
}

/// What the limiter does when its store cannot answer (`on_error` in the configuration).
///
/// ```
/// use tollgate::store::OnError;
/// assert_eq!(OnError::default(), OnError::Local);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail open: forward the request, without rate-limit headers.
    Allow,
    /// Fail closed: answer 503 with a problem body.
    Deny,
    /// Limit in-process until the store is back (a store that supports it never reports a
    /// fault; one that does not is treated as `Allow`).
    #[default]
    Local,
}

/// What to take from a client's buckets.
///
/// `cost` tokens, or `reduced_cost` when the fraction of the burst left *before* charging is
/// below `reduced_below` (a degradation band: a cheaper answer costs less).
///
/// ```
/// use tollgate::store::Charge;
/// let c = Charge::new(5).reduced(0.5, 1);
/// assert_eq!(c.cost_for(0.8), 5);
/// assert_eq!(c.cost_for(0.3), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charge {
    /// Tokens taken in the normal case.
    pub cost: u64,
    /// Below this fraction of the burst, `reduced_cost` is taken instead.
    pub reduced_below: f64,
    /// The cheaper cost.
    pub reduced_cost: u64,
}

impl Charge {
    /// Takes `cost` tokens.
    pub fn new(cost: u64) -> Self {
        Self { cost, reduced_below: 0.0, reduced_cost: cost }
    }

    /// Takes `cost` tokens instead when less than `below` of the burst is left.
    pub fn reduced(mut self, below: f64, cost: u64) -> Self {
        self.reduced_below = below;
        self.reduced_cost = cost.min(self.cost);
        self
    }

    /// The cost to take when `fraction` of the burst is left.
    #[inline]
    pub fn cost_for(&self, fraction: f64) -> u64 {
        if fraction < self.reduced_below {
            self.reduced_cost
        } else {
            self.cost
        }
    }
}

/// How a store answered (what the layer then does with the request is an
/// [`observe::Outcome`](crate::observe::Outcome)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; every policy was charged.
    Admitted,
    /// Not now: some policy lacks tokens. Nothing was charged.
    Rejected,
    /// Never at this tier: the cost exceeds some policy's burst. Nothing was charged.
    Exceeds,
}

/// One policy's standing after a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// The policy's index in its tier.
    pub index: u8,
    /// The policy's capacity (burst).
    pub limit: u64,
    /// Whole tokens left (after the charge, when admitted).
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_after: Nanos,
    /// Until the request would fit this policy; zero when it does.
    pub retry_after: Nanos,
    /// Until one more whole token is there than `remaining` says; zero when full (the `t` of
    /// the `RateLimit` header).
    pub next_after: Nanos,
}

impl PolicyState {
    /// The share of the capacity left, in `[0, 1]`.
    pub fn fraction(&self) -> f64 {
        if self.limit == 0 {
            0.0
        } else {
            self.remaining as f64 / self.limit as f64
        }
    }
}

/// What an admission wrote, per policy of the tier: what [`Store::settle`] needs to give back
/// or charge the difference later. Opaque to everyone but the store that made it.
///
/// ```
/// use tollgate::store::Receipt;
/// let r = Receipt::default().with(1, 42);
/// assert_eq!((r.get(0), r.get(1)), (0, 42));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Receipt {
    values: [u64; MAX_POLICIES],
    /// Written by a store's in-process fallback rather than the store itself.
    local: bool,
}

impl Receipt {
    /// The receipt with policy `index`'s value set (an index beyond [`MAX_POLICIES`] is ignored).
    pub fn with(mut self, index: usize, value: u64) -> Self {
        if let Some(slot) = self.values.get_mut(index) {
            *slot = value;
        }
        self
    }

    /// Policy `index`'s value (0 when unset).
    pub fn get(&self, index: usize) -> u64 {
        self.values.get(index).copied().unwrap_or(0)
    }

    /// Marks the receipt as written by a store's in-process fallback (settled there too).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn local(mut self) -> Self {
        self.local = true;
        self
    }

    /// True when a store's in-process fallback wrote it (only the Redis store has one).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn is_local(&self) -> bool {
        self.local
    }
}

/// A request whose cost turned out to differ from its charge: what [`Store::settle`] settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// The admission's receipt ([`Decision::receipt`]).
    pub receipt: Receipt,
    /// When it was decided ([`Decision::now`]).
    pub charged_at: Nanos,
    /// The tokens it was charged ([`Decision::charged`]).
    pub charged: u64,
    /// What it really cost: less is given back, more is charged (and may leave the client in
    /// debt).
    pub actual: u64,
}

/// A store's answer for one request.
///
/// ```
/// use tollgate::clock::Nanos;
/// use tollgate::store::{Decision, PolicyState, Verdict};
///
/// let d = Decision::new(Verdict::Rejected, Nanos::from_secs(1), 1.0, 0).with(PolicyState {
///     index: 0,
///     limit: 10,
///     remaining: 0,
///     reset_after: Nanos::from_secs(5),
///     retry_after: Nanos::from_millis(1_500),
///     next_after: Nanos::from_millis(1_500),
/// });
/// assert!(!d.is_admitted());
/// assert_eq!(d.retry_after(), Some(Nanos::from_millis(1_500)));
/// assert_eq!(d.headline().limit, 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    verdict: Verdict,
    now: Nanos,
    fraction_before: f64,
    charged: u64,
    wait: Nanos,
    receipt: Receipt,
    len: u8,
    policies: [PolicyState; MAX_POLICIES],
}

impl Decision {
    /// A decision made at `now` (since the Unix epoch) with no policies yet.
    #[inline]
    pub fn new(verdict: Verdict, now: Nanos, fraction_before: f64, charged: u64) -> Self {
        Self {
            verdict,
            now,
            fraction_before,
            charged,
            wait: Nanos::ZERO,
            receipt: Receipt::default(),
            len: 0,
            policies: [PolicyState::default(); MAX_POLICIES],
        }
    }

    /// The same admission, with its tokens reserved ahead: the request is to be held `wait`
    /// before it is forwarded.
    #[inline]
    pub fn held(mut self, wait: Nanos) -> Self {
        self.wait = wait;
        self
    }

    /// The same decision, carrying what its charge wrote (for [`Store::settle`]).
    #[inline]
    pub fn with_receipt(mut self, receipt: Receipt) -> Self {
        self.receipt = receipt;
        self
    }

    /// How long to hold an admitted request before forwarding it (its tokens were reserved
    /// ahead); zero to forward it now.
    pub fn wait(&self) -> Nanos {
        self.wait
    }

    /// What the charge wrote, to settle a different cost later.
    pub fn receipt(&self) -> Receipt {
        self.receipt
    }

    /// The settlement of this admission at `actual` tokens instead of [`charged`](Self::charged).
    pub fn settlement(&self, actual: u64) -> Settlement {
        Settlement { receipt: self.receipt, charged_at: self.now, charged: self.charged, actual }
    }

    /// Adds one policy's standing (at most [`MAX_POLICIES`]; more are ignored).
    #[inline]
    pub fn with(mut self, state: PolicyState) -> Self {
        if usize::from(self.len) < MAX_POLICIES {
            self.policies[usize::from(self.len)] = state;
            self.len += 1;
        }
        self
    }

    /// Admitted, rejected for now, or never at this tier.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// True when the request was admitted (and charged).
    pub fn is_admitted(&self) -> bool {
        self.verdict == Verdict::Admitted
    }

    /// When the decision was made, since the Unix epoch (the store's clock).
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// The smallest fraction of any policy's burst that was left before this request.
    pub fn fraction_before(&self) -> f64 {
        self.fraction_before
    }

    /// The tokens charged (0 unless admitted).
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// Each policy's standing, in the tier's order.
    pub fn policies(&self) -> &[PolicyState] {
        &self.policies[..usize::from(self.len)]
    }

    /// How long until the request would be admitted, when it was rejected for now.
    pub fn retry_after(&self) -> Option<Nanos> {
        (self.verdict == Verdict::Rejected)
            .then(|| self.policies().iter().map(|p| p.retry_after).max().unwrap_or(Nanos::ZERO))
    }

    /// The policy the single-policy headers describe: on a rejection the violated one (the
    /// longest wait), otherwise the one with the smallest remaining fraction.
    pub fn headline(&self) -> PolicyState {
        let policies = self.policies();
        let pick = if self.verdict == Verdict::Admitted {
            policies.iter().min_by(|a, b| a.fraction().total_cmp(&b.fraction()))
        } else {
            policies.iter().max_by_key(|p| (p.retry_after, u64::MAX - p.remaining))
        };
        pick.copied().unwrap_or_default()
    }

    /// Unix epoch seconds at which the headline policy's bucket is full again (rounded up).
    pub fn reset_epoch_secs(&self, state: &PolicyState) -> u64 {
        self.now.saturating_add(state.reset_after).as_secs_ceil()
    }
}

/// A store fault: the store could not decide (unreachable, timed out, a bad answer).
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A fault described by `message`, caused by `source`.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Option<Box<dyn std::error::Error + Send + Sync>>>,
    ) -> Self {
        Self { message: message.into(), source: source.into() }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

/// The future of a [`Store::check`]: either already resolved (no allocation, no polling) or a
/// boxed future doing I/O.
pub struct StoreFuture {
    kind: FutureKind,
}

enum FutureKind {
    Ready(Option<Result<Decision, StoreError>>),
    Boxed(BoxFuture),
}

impl StoreFuture {
    /// An answer known at once.
    pub fn ready(result: Result<Decision, StoreError>) -> Self {
        Self { kind: FutureKind::Ready(Some(result)) }
    }

    /// An answer that needs I/O.
    pub fn boxed(future: impl Future<Output = Result<Decision, StoreError>> + Send + 'static) -> Self {
        Self { kind: FutureKind::Boxed(Box::pin(future)) }
    }

    /// The answer, if it is already known.
    pub fn try_take(&mut self) -> Option<Result<Decision, StoreError>> {
        match &mut self.kind {
            FutureKind::Ready(result) => result.take(),
            FutureKind::Boxed(_) => None,
        }
    }
}

impl fmt::Debug for StoreFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FutureKind::Ready(_) => "ready",
            FutureKind::Boxed(_) => "pending",
        };
        f.debug_struct("StoreFuture").field("kind", &kind).finish()
    }
}

impl Future for StoreFuture {
    type Output = Result<Decision, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.kind {
            FutureKind::Ready(result) => {
                Poll::Ready(result.take().expect("StoreFuture polled after completion"))
            }
            FutureKind::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

/// Keeps limiter state and charges it.
///
/// Implementations charge every policy of `tier` atomically: the request is admitted only if
/// every policy admits it, and a rejection charges nothing. A tier with a
/// [`max_delay`](Tier::max_delay) admits a request whose tokens arrive within the delay, with
/// its tokens reserved ahead and [`Decision::wait`] set.
pub trait Store: Send + Sync + 'static {
    /// Charges `charge` to `key` under `tier`'s policies.
    fn check(&self, key: &Key, tier: &Tier, charge: Charge) -> StoreFuture;

    /// Gives back (or charges) the difference between what an admission charged and what the
    /// request really cost, and answers with the client's standing afterwards (an admitted
    /// [`Decision`] whose [`charged`](Decision::charged) is the actual cost). A store that
    /// cannot settle answers with an error, and the charge stands.
    fn settle(&self, key: &Key, tier: &Tier, settlement: Settlement) -> StoreFuture {
        let _ = (key, tier, settlement);
        StoreFuture::ready(Err(StoreError::new("this store cannot settle costs", None)))
    }

    /// How many policy states the store keeps now (for metrics; `None` when unknown).
    fn tracked(&self) -> Option<usize> {
        None
    }

    /// Told when `limits`, made by a reload, come into force: every client's state carries
    /// over by policy ([`Policy::id`](crate::policy::Policy::id)), and a policy whose rule
    /// changed has a new [`version`](crate::algorithm::Rule::carry). A store may convert the
    /// states it keeps under older versions now ([`MemoryStore`] does) or when it next meets
    /// them (the Redis store does, in its script: a reload costs no round trip). Does nothing
    /// by default.
    fn carry_over(&self, limits: &Limits) {
        let _ = limits;
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn check(&self, key: &Key, tier: &Tier, charge: Charge) -> StoreFuture {
        (**self).check(key, tier, charge)
    }

    fn settle(&self, key: &Key, tier: &Tier, settlement: Settlement) -> StoreFuture {
        (**self).settle(key, tier, settlement)
    }

    fn tracked(&self) -> Option<usize> {
        (**self).tracked()
    }

    fn carry_over(&self, limits: &Limits) {
        (**self).carry_over(limits)
    }
}

//! Near-quota alerts: the [`NearQuota`] observer and the [`OnNearQuota`] hook it calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use super::{Event, Observer, Outcome};
use crate::clock::Nanos;
use crate::key::Key;
use crate::policy::PolicyId;
use crate::store::Decision;

/// The default near-quota threshold: 80 % of a policy used.
pub const DEFAULT_NEAR_QUOTA: f64 = 0.8;

/// How many `(key, policy)` pairs [`NearQuota`] remembers to hold back repeats. Beyond that,
/// expired entries are dropped; when none has expired, events fire without being remembered
/// (an alert too many rather than one missed).
const REMEMBERED: usize = 10_000;

/// A client's usage of one policy crossed the near-quota threshold.
///
/// Serialises (for a webhook) without the client's key: see [`client`](Self::client).
///
/// ```
/// use tollgate::key::Key;
/// use tollgate::observe::NearQuotaEvent;
///
/// let event = NearQuotaEvent::new(Key::new("sk_live_0123456789abcdef"), "free", "free", 10, 2, 1_700_000_010);
/// assert_eq!(event.used, 0.8);
/// let json = serde_json::to_value(&event).unwrap();
/// assert_eq!(json["tier"], "free");
/// assert_eq!(json["remaining"], 2);
/// assert_eq!(json["client"], "key:…cdef");
/// assert!(!json.to_string().contains("sk_live"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NearQuotaEvent {
    /// The client's key (its `Debug` hides API keys). Not serialised: see [`client`](Self::client).
    #[serde(serialize_with = "serialize_client", rename = "client")]
    pub key: Key,
    /// The client's tier.
    pub tier: String,
    /// The policy whose usage crossed the threshold.
    pub policy: String,
    /// The fraction of the policy's capacity used after the request, in `[0, 1]`.
    pub used: f64,
    /// The policy's capacity (burst).
    pub limit: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// Unix epoch seconds at which the policy's bucket is full again.
    pub reset: u64,
    /// Unix epoch seconds at which the threshold was crossed (0 when not known).
    pub at: u64,
    /// How people know the client (`name` in `[api_keys]`), when it has a name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The client's address for near-quota emails. Not serialised: a webhook gets no
    /// personal data it did not ask for.
    #[serde(skip)]
    pub email: Option<String>,
    /// The tier's upgrade page, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<String>,
}

impl NearQuotaEvent {
    /// The event for `key` of `tier`, whose `policy` of capacity `limit` has `remaining` whole
    /// tokens left and is full again at `reset` (Unix epoch seconds). `used` is computed.
    pub fn new(
        key: Key,
        tier: impl Into<String>,
        policy: impl Into<String>,
        limit: u64,
        remaining: u64,
        reset: u64,
    ) -> Self {
        let used = if limit == 0 { 1.0 } else { limit.saturating_sub(remaining) as f64 / limit as f64 };
        Self {
            key,
            tier: tier.into(),
            policy: policy.into(),
            used,
            limit,
            remaining,
            reset,
            at: 0,
            name: None,
            email: None,
            upgrade_url: None,
        }
    }

    /// The client as it may be shown outside the process: `ip:ADDR` for a client keyed by
    /// address, and for a named key (perhaps a secret API key) only its last four characters,
    /// `key:…abcd`, or `key:…` when the key is shorter than 12 characters.
    ///
    /// ```
    /// use tollgate::key::Key;
    /// # use tollgate::observe::NearQuotaEvent;
    /// let mut e = NearQuotaEvent::new(Key::new("short"), "free", "free", 10, 1, 0);
    /// assert_eq!(e.client(), "key:…");
    /// e.key = Key::from_ip("192.0.2.1".parse().unwrap());
    /// assert_eq!(e.client(), "ip:192.0.2.1");
    /// ```
    pub fn client(&self) -> String {
        redacted(&self.key)
    }
}

fn redacted(key: &Key) -> String {
    if let Some(ip) = key.ip() {
        return format!("ip:{ip}");
    }
    let shown = key.to_string();
    let name = shown.strip_prefix("id:").unwrap_or(&shown);
    let chars = name.chars().count();
    if chars < 12 {
        "key:…".to_owned()
    } else {
        let tail: String = name.chars().skip(chars - 4).collect();
        format!("key:…{tail}")
    }
}

fn serialize_client<S: serde::Serializer>(key: &Key, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted(key))
}

/// Told when a client nears a policy's quota: the hook [`NearQuota`] calls.
///
/// Implemented by [`LogNearQuota`], by the webhook sender ([`Webhook`](super::Webhook), with
/// the `webhook` feature), by closures `Fn(&NearQuotaEvent)`, by `()` and `None` (do
/// nothing), by `Some(hook)`, by `Arc`s, and by pairs `(A, B)` (both are told). Called on the request's path: it must return at once.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use tollgate::observe::{NearQuota, NearQuotaEvent, OnNearQuota};
///
/// let count = Arc::new(AtomicUsize::new(0));
/// let seen = count.clone();
/// let hook = move |_: &NearQuotaEvent| { seen.fetch_add(1, Ordering::Relaxed); };
/// let observer = NearQuota::new(hook);
/// # let _ = (observer, count);
/// ```
pub trait OnNearQuota: Send + Sync + 'static {
    /// A client crossed the threshold of one policy.
    fn on_near_quota(&self, event: &NearQuotaEvent);
}

impl<F> OnNearQuota for F
where
    F: Fn(&NearQuotaEvent) + Send + Sync + 'static,
{
    fn on_near_quota(&self, event: &NearQuotaEvent) {
        self(event)
    }
}

impl OnNearQuota for () {
    fn on_near_quota(&self, _: &NearQuotaEvent) {}
}

impl<A: OnNearQuota, B: OnNearQuota> OnNearQuota for (A, B) {
    fn on_near_quota(&self, event: &NearQuotaEvent) {
        self.0.on_near_quota(event);
        self.1.on_near_quota(event);
    }
}

/// An optional hook: `None` does nothing. Handy for a webhook that only some configurations
/// name.
///
/// ```
/// use tollgate::observe::{LogNearQuota, NearQuota, OnNearQuota};
/// let webhook_url: Option<&str> = None; // e.g. config.settings().alerts.webhook
/// let optional = webhook_url.map(|_| LogNearQuota);
/// let alerts = NearQuota::new((LogNearQuota, optional));
/// # let _ = alerts;
/// ```
impl<H: OnNearQuota> OnNearQuota for Option<H> {
    fn on_near_quota(&self, event: &NearQuotaEvent) {
        if let Some(hook) = self {
            hook.on_near_quota(event);
        }
    }
}

impl<H: OnNearQuota + ?Sized> OnNearQuota for Arc<H> {
    fn on_near_quota(&self, event: &NearQuotaEvent) {
        (**self).on_near_quota(event)
    }
}

/// Logs near-quota events through `tracing` at `INFO`, target `tollgate::near_quota`. The key
/// is logged through its `Debug`, which hides API keys.
///
/// ```
/// use tollgate::observe::{LogNearQuota, NearQuota};
/// let observer = NearQuota::new(LogNearQuota);
/// # let _ = observer;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LogNearQuota;

impl OnNearQuota for LogNearQuota {
    fn on_near_quota(&self, e: &NearQuotaEvent) {
        tracing::info!(
            target: "tollgate::near_quota",
            key = ?e.key,
            tier = %e.tier,
            policy = %e.policy,
            used = e.used,
            limit = e.limit,
            remaining = e.remaining,
            reset = e.reset,
            "client is near its quota"
        );
    }
}

/// An [`Observer`] that tells an [`OnNearQuota`] hook when a client's usage of a policy
/// crosses a threshold (by default 80 %, [`DEFAULT_NEAR_QUOTA`]).
///
/// A crossing is a charge that takes a policy's used fraction from below the threshold to at
/// or above it. It is found from the decision alone: for an admitted request, the whole tokens
/// left before the charge were `remaining + charged`. Each charge is one atomic step of the
/// store, so however many requests race, exactly one of them makes each crossing.
///
/// A client that hovers at the threshold (refilling a token, spending it) would cross it
/// again and again, so after an event for a key and policy, further crossings of the same
/// pair are held back for one period of the policy (its time to refill from empty, by the
/// store's clock). [`every_crossing`](Self::every_crossing) turns that off.
///
/// ```
/// use nonzero_ext::nonzero;
/// use std::sync::{Arc, Mutex};
/// use tollgate::algorithm::Quota;
/// use tollgate::observe::{NearQuota, NearQuotaEvent};
/// use tollgate::policy::{Limits, TierSpec};
/// use tollgate::RateLimitLayer;
///
/// let limits = Limits::builder()
///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
///     .build().unwrap();
/// let events = Arc::new(Mutex::new(Vec::new()));
/// let sink = events.clone();
/// let alerts = NearQuota::new(move |e: &NearQuotaEvent| sink.lock().unwrap().push(e.clone()))
///     .threshold(0.8);
/// let layer = RateLimitLayer::from_limits(limits).observer(alerts);
/// # let _ = layer;
/// ```
///
/// A layer built from a [`Config`](crate::Config) has one already: `NearQuota` with
/// [`LogNearQuota`] (and the webhook of `[alerts] webhook`), at `[alerts] near_quota`.
#[derive(Debug)]
pub struct NearQuota<H> {
    hook: H,
    threshold: f64,
    repeat: bool,
    /// `(key, policy uid)` → store time before which crossings are held back.
    recent: Mutex<HashMap<(Key, PolicyId), Nanos>>,
}

impl<H: OnNearQuota> NearQuota<H> {
    /// Calls `hook` when usage crosses [`DEFAULT_NEAR_QUOTA`].
    pub fn new(hook: H) -> Self {
        Self { hook, threshold: DEFAULT_NEAR_QUOTA, repeat: false, recent: Mutex::default() }
    }

    /// Fires at `fraction` of a policy used instead (clamped to `(0, 1]`; a value that is not
    /// a number keeps the current threshold).
    ///
    /// ```
    /// # use tollgate::observe::NearQuota;
    /// assert_eq!(NearQuota::new(()).threshold(0.9).fraction(), 0.9);
    /// assert_eq!(NearQuota::new(()).threshold(7.0).fraction(), 1.0);
    /// ```
    pub fn threshold(mut self, fraction: f64) -> Self {
        if !fraction.is_nan() {
            self.threshold = fraction.clamp(f64::MIN_POSITIVE, 1.0);
        }
        self
    }

    /// Fires on every crossing, even when the same key crossed the same policy's threshold
    /// less than a period ago.
    pub fn every_crossing(mut self) -> Self {
        self.repeat = true;
        self
    }

    /// The threshold, as a fraction of a policy used.
    pub fn fraction(&self) -> f64 {
        self.threshold
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// Indexes (in the tier) of the policies of `decision` whose usage this charge took
    /// across the threshold.
    fn crossings<'d>(&self, decision: &'d Decision) -> impl Iterator<Item = usize> + 'd {
        let charged = decision.charged();
        let threshold = self.threshold;
        decision.policies().iter().filter_map(move |p| {
            if charged == 0 || p.limit == 0 {
                return None;
            }
            // used / limit ≥ threshold, without a division: this runs on every admitted request.
            // (Counts go through i64, whose conversion to f64 is one instruction; tokens never
            // reach 2^63.)
            let float = |n: u64| n.min(i64::MAX as u64) as i64 as f64;
            let mark = threshold * float(p.limit);
            let after = p.limit.saturating_sub(p.remaining);
            let before = p.limit.saturating_sub(p.remaining.saturating_add(charged));
            (float(before) < mark && float(after) >= mark).then_some(usize::from(p.index))
        })
    }

    /// True when this crossing should fire (and remembers it for a period).
    fn first_in_period(&self, key: &Key, policy: PolicyId, now: Nanos, period: Nanos) -> bool {
        if self.repeat {
            return true;
        }
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let pair = (key.clone(), policy);
        if recent.get(&pair).is_some_and(|&until| now < until) {
            return false;
        }
        if recent.len() >= REMEMBERED && !recent.contains_key(&pair) {
            recent.retain(|_, &mut until| now < until);
            if recent.len() >= REMEMBERED {
                return true;
            }
        }
        recent.insert(pair, now.saturating_add(period));
        true
    }
}

impl<H: OnNearQuota> NearQuota<H> {
    /// A crossing of the policy at `index`: tells the hook, unless it was told of this key and
    /// policy less than a period ago. Kept out of [`on_event`](Observer::on_event), which every
    /// request runs and which mostly finds no crossing.
    #[cold]
    #[inline(never)]
    fn crossed(&self, event: &Event<'_>, decision: &Decision, index: usize) {
        let Some(policy) = event.tier.policies().get(index) else { return };
        let state = decision.policies()[index];
        let period = policy.quota().refill_time().max(Nanos::SECOND);
        if !self.first_in_period(event.key, policy.id(), decision.now(), period) {
            return;
        }
        let mut alert = NearQuotaEvent::new(
            event.key.clone(),
            event.tier.name(),
            policy.name(),
            state.limit,
            state.remaining,
            decision.reset_epoch_secs(&state),
        );
        alert.at = decision.now().as_secs();
        alert.name = event.name.map(str::to_owned);
        alert.email = event.email.map(str::to_owned);
        alert.upgrade_url = event.tier.upgrade_url().map(str::to_owned);
        self.hook.on_near_quota(&alert);
    }
}

impl<H: OnNearQuota> Observer for NearQuota<H> {
    fn on_event(&self, event: &Event<'_>) {
        let extra;
        let decision = match event.outcome {
            Outcome::Admitted(d) | Outcome::Delayed(d) | Outcome::Degraded(d, _) => d,
            // A settlement that charged more may cross the threshold: by what it added.
            Outcome::Settled(d) if d.charged() > event.cost => {
                let added =
                    Decision::new(d.verdict(), d.now(), d.fraction_before(), d.charged() - event.cost);
                extra = d.policies().iter().fold(added, |acc, p| acc.with(*p));
                &extra
            }
            _ => return,
        };
        for index in self.crossings(decision) {
            self.crossed(event, decision, index);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http::Method;

    use super::*;
    use crate::algorithm::Quota;
    use crate::clock::ManualClock;
    use crate::policy::{Limits, TierSpec};
    use crate::store::{Charge, MemoryStore, PolicyState, Verdict};
    use nonzero_ext::nonzero;

    fn limits() -> Limits {
        Limits::builder()
            .tier(
                "anonymous",
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))).daily(1_000),
            )
            .build()
            .unwrap()
    }

    fn admitted(remaining: u64, charged: u64) -> Decision {
        Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, charged).with(PolicyState {
            index: 0,
            limit: 10,
            remaining,
            reset_after: Nanos::ZERO,
            retry_after: Nanos::ZERO,
            next_after: Nanos::ZERO,
        })
    }

    #[test]
    fn crossing_is_before_below_and_after_at_or_above() {
        let nq = NearQuota::new(());
        // 10 → 2 left after a charge of 1: used 0.7 → 0.8, crosses.
        assert_eq!(nq.crossings(&admitted(2, 1)).count(), 1);
        // Already at 0.8 before: no new crossing.
        assert_eq!(nq.crossings(&admitted(1, 1)).count(), 0);
        // Still below after.
        assert_eq!(nq.crossings(&admitted(3, 1)).count(), 0);
        // A big charge jumping from 0.0 to 1.0 crosses once.
        assert_eq!(nq.crossings(&admitted(0, 10)).count(), 1);
        // Nothing charged (a cost-0 standing): never.
        assert_eq!(nq.crossings(&admitted(0, 0)).count(), 0);
    }

    #[test]
    fn fires_once_while_draining_then_again_in_a_later_period() {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let store = MemoryStore::with_clock(clock.clone());
        let limits = limits();
        let tier = limits.default_tier();
        let fired = Arc::new(AtomicUsize::new(0));
        let count = fired.clone();
        let nq = NearQuota::new(move |e: &NearQuotaEvent| {
            assert_eq!(e.policy, "anonymous");
            assert_eq!(e.remaining, 2);
            count.fetch_add(1, Ordering::SeqCst);
        });
        let key = Key::new("client");
        let drive = |n| {
            for _ in 0..n {
                let d = store.decide(&key, tier, Charge::new(1));
                let outcome = if d.is_admitted() { Outcome::Admitted(&d) } else { Outcome::Rejected(&d) };
                let event = Event {
                    key: &key,
                    name: None,
                    email: None,
                    identified: true,
                    tier,
                    method: &Method::GET,
                    route: "/",
                    known_route: true,
                    cost: 1,
                    outcome,
                };
                nq.on_event(&event);
            }
        };
        drive(30);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        // Two tokens back: usage drops below 0.8 and crosses again, but within the period.
        clock.advance(Duration::from_secs(3));
        drive(3);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        // A full period later (10 s to refill from empty), a new crossing fires.
        clock.advance(Duration::from_secs(10));
        drive(10);
        assert_eq!(fired.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn every_crossing_fires_on_each_recrossing() {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let store = MemoryStore::with_clock(clock.clone());
        let limits = limits();
        let tier = limits.default_tier();
        let fired = Arc::new(AtomicUsize::new(0));
        let count = fired.clone();
        let nq = NearQuota::new(move |_: &NearQuotaEvent| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .every_crossing();
        let key = Key::new("client");
        for round in 0..3 {
            for _ in 0..8 {
                let d = store.decide(&key, tier, Charge::new(1));
                let event = Event {
                    key: &key,
                    name: None,
                    email: None,
                    identified: true,
                    tier,
                    method: &Method::GET,
                    route: "/",
                    known_route: true,
                    cost: 1,
                    outcome: Outcome::Admitted(&d),
                };
                nq.on_event(&event);
            }
            assert_eq!(fired.load(Ordering::SeqCst), round + 1);
            // Eight tokens back, full again, less than a period (10 s) later.
            clock.advance(Duration::from_secs(8));
        }
    }

    #[test]
    fn redaction_never_shows_more_than_four_characters() {
        assert_eq!(redacted(&Key::new("sk_live_secretvalue")), "key:…alue");
        assert_eq!(redacted(&Key::new("user-1")), "key:…");
        assert_eq!(redacted(&Key::from_ip("2001:db8::".parse().unwrap())), "ip:2001:db8::");
    }
}

//! Counting decisions through the `metrics` facade: [`MetricsObserver`].
//!
//! The observer runs on every limited request, so it does the least it can there:
//!
//! * **Handles, resolved once.** The `metrics` macros build a key (the name and label strings)
//!   and look it up in the recorder's registry on every call. The observer instead keeps, per
//!   (tier, route) label pair, the [`Counter`] handles it has registered, one per outcome,
//!   each resolved the first time it is used. A request then costs one lock-free table look-up
//!   (a hash of the tier name and the route, against a snapshot held in an [`ArcSwap`]) and
//!   the increments themselves: no `String`, no allocation, no lock.
//! * **A bounded histogram.** [`REMAINING_RATIO`] is counted here, in fixed buckets (tenths:
//!   one atomic add per decision), and published to the recorder as Prometheus histogram
//!   series made of counters (`_bucket{le}`, `_count`) and a gauge (`_sum`). A recorder's own
//!   histogram keeps every sample until it is drained: with nobody scraping, that grew the demo
//!   server by about 20 bytes per request. This form takes the same memory whether or not
//!   anyone scrapes. The buckets are published at most once a second from the request path
//!   (the first decision after the second is up does it), and by [`MetricsObserver::flush`],
//!   which a scrape handler calls just before rendering (`tollgate::usage::metrics` does).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use arc_swap::ArcSwap;
use metrics::{counter, describe_counter, describe_gauge, gauge, Counter, Gauge, Label, SharedString, Unit};

use super::{Event, Observer, Outcome};
use crate::clock::Nanos;
use crate::degrade::Band;
use crate::store::Store;

/// Decisions, by `tier`, `route` and `outcome` (`admitted`, `delayed`, `degraded`, `rejected`,
/// `exceeds`, `store_fault`, and in shadow mode `shadow_rejected`: a request enforcement would
/// have refused, forwarded).
pub const DECISIONS: &str = "tollgate_decisions_total";
/// Degraded answers, by `tier`, `route` and `band` (`cached`, `minimal`).
pub const DEGRADED: &str = "tollgate_degraded_total";
/// Store faults, by `tier`.
pub const STORE_FAULTS: &str = "tollgate_store_faults_total";
/// Tokens charged, by `tier` and `route`.
pub const TOKENS_CHARGED: &str = "tollgate_tokens_charged_total";
/// The share of the capacity left after each decision (the headline policy's), by `tier`: a
/// histogram in tenths, published as the series `tollgate_remaining_ratio_bucket{le}` and
/// `tollgate_remaining_ratio_count` (counters) and `tollgate_remaining_ratio_sum` (a gauge).
pub const REMAINING_RATIO: &str = "tollgate_remaining_ratio";
/// Policy states the store keeps (keys tracked × policies), when the store knows.
pub const KEYS_TRACKED: &str = "tollgate_keys_tracked";
/// Configuration reloads, by `result` (`ok`, `error`): see [`Reloader`](crate::layer::Reloader).
pub const CONFIG_RELOADS: &str = "tollgate_config_reloads_total";

const RATIO_BUCKET: &str = "tollgate_remaining_ratio_bucket";
const RATIO_COUNT: &str = "tollgate_remaining_ratio_count";
const RATIO_SUM: &str = "tollgate_remaining_ratio_sum";

/// The label value of routes (and tiers) past the limit of distinct values, and of raw paths.
const OTHER: &str = "other";
/// The route under which every raw path (not a route template) is counted: no template is
/// empty.
const RAW_PATH: &str = "";

/// The upper bounds of the [`REMAINING_RATIO`] buckets, in tenths, then `+Inf`.
const BOUNDS: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
const BUCKETS: usize = BOUNDS.len() + 1;
const BOUND_LABELS: [&str; BUCKETS] =
    ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1", "+Inf"];

/// The sum of ratios is kept in millionths (an integer, so one atomic add records it).
const SUM_SCALE: f64 = 1_000_000.0;

/// How often the request path publishes the histogram buckets.
const PUBLISH_EVERY: Nanos = Nanos::SECOND;

/// An [`Observer`] that records every decision through the [`metrics`] facade, for whichever
/// recorder the application installed (Prometheus, StatsD, …).
///
/// Label values are bounded so a scan of random paths cannot explode the number of series:
/// `tier` is a configured tier name, `outcome` and `band` are fixed words, and `route` is the
/// route template the limiter charged: axum's `MatchedPath`, or a route of the route table.
/// A raw path that is neither (a 404 under `Router::layer`, a service without templates whose
/// path the table does not name) is whatever the client asked for, so all such paths share the
/// label value `other`: a scan of random paths never takes the label of a real route. Past
/// [`max_routes`](Self::max_routes) distinct templates (100 by default), later ones are
/// counted as `other` too.
///
/// Recorded: [`DECISIONS`], [`DEGRADED`], [`STORE_FAULTS`], [`TOKENS_CHARGED`] (counters),
/// [`REMAINING_RATIO`] (a histogram in tenths, kept in fixed buckets: see the module
/// documentation) and, through [`record_tracked`](Self::record_tracked), [`KEYS_TRACKED`]
/// (gauge).
///
/// Each handle is registered with the recorder installed when its series is first used, and
/// kept: install the recorder before serving requests (as `metrics` recommends anyway).
///
/// ```
/// # use nonzero_ext::nonzero;
/// use tollgate::observe::{LogNearQuota, MetricsObserver, NearQuota};
/// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
/// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)))).build().unwrap();
/// let layer = RateLimitLayer::from_limits(limits)
///     .observer((MetricsObserver::new(), NearQuota::new(LogNearQuota)));
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct MetricsObserver {
    shared: Arc<Shared>,
}

impl Default for MetricsObserver {
    fn default() -> Self {
        Self::new()
    }
}

/// Every live observer's histograms, for [`MetricsObserver::flush`].
static OBSERVERS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

impl MetricsObserver {
    /// An observer recording to the global recorder. Describes the metrics to the recorder
    /// installed now (see [`describe`](Self::describe)).
    pub fn new() -> Self {
        Self::describe();
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(Table::default()),
            labels: Mutex::new(Labels { max_routes: 100, max_tiers: 1_000, ..Labels::default() }),
            next_publish: AtomicU64::new(0),
            hasher: foldhash::fast::RandomState::default(),
        });
        let mut observers = OBSERVERS.lock().unwrap_or_else(PoisonError::into_inner);
        observers.retain(|o| o.strong_count() > 0);
        observers.push(Arc::downgrade(&shared));
        Self { shared }
    }

    /// Gives at most `routes` distinct routes a label value of their own.
    ///
    /// ```
    /// # use tollgate::observe::MetricsObserver;
    /// let observer = MetricsObserver::new().max_routes(20);
    /// # let _ = observer;
    /// ```
    pub fn max_routes(self, routes: usize) -> Self {
        self.shared.labels.lock().unwrap_or_else(PoisonError::into_inner).max_routes = routes;
        self
    }

    /// Tells the installed recorder the unit and meaning of each metric (its `# HELP`).
    /// Called by [`new`](Self::new); call it again if the recorder is installed later.
    pub fn describe() {
        describe_counter!(DECISIONS, Unit::Count, "Rate-limit decisions by tier, route and outcome.");
        describe_counter!(DEGRADED, Unit::Count, "Degraded answers by tier, route and band.");
        describe_counter!(STORE_FAULTS, Unit::Count, "Requests the rate-limit store could not decide.");
        describe_counter!(TOKENS_CHARGED, Unit::Count, "Tokens charged by tier and route.");
        describe_counter!(
            RATIO_BUCKET,
            Unit::Count,
            "Decisions by the share of the capacity left after them (the policy closest to its \
             limit), at most le (cumulative, in tenths)."
        );
        describe_counter!(RATIO_COUNT, Unit::Count, "Decisions counted in tollgate_remaining_ratio_bucket.");
        describe_gauge!(RATIO_SUM, "Sum of the shares of the capacity left after each decision.");
        describe_gauge!(KEYS_TRACKED, Unit::Count, "Policy states the rate-limit store keeps.");
        describe_counter!(CONFIG_RELOADS, Unit::Count, "Configuration reloads by result (ok, error).");
    }

    /// Sets the [`KEYS_TRACKED`] gauge from `store` (when the store knows the number). A
    /// scrape handler calls it just before rendering.
    ///
    /// ```
    /// use tollgate::observe::MetricsObserver;
    /// use tollgate::store::MemoryStore;
    /// MetricsObserver::record_tracked(&MemoryStore::new());
    /// ```
    pub fn record_tracked(store: &dyn Store) {
        if let Some(tracked) = store.tracked() {
            gauge!(KEYS_TRACKED).set(tracked as f64);
        }
    }

    /// Publishes what every observer of this process has counted in its [`REMAINING_RATIO`]
    /// buckets since it last did. The request path does it at most once a second; a scrape
    /// handler calls this just before rendering, so a scrape sees every decision made before
    /// it.
    ///
    /// ```
    /// use tollgate::observe::MetricsObserver;
    /// MetricsObserver::flush();
    /// ```
    pub fn flush() {
        let observers: Vec<Arc<Shared>> = {
            let mut observers = OBSERVERS.lock().unwrap_or_else(PoisonError::into_inner);
            observers.retain(|o| o.strong_count() > 0);
            observers.iter().filter_map(Weak::upgrade).collect()
        };
        for shared in observers {
            shared.publish();
        }
    }
}

impl Observer for MetricsObserver {
    fn on_event(&self, event: &Event<'_>) {
        // A raw path is whatever a client asked for (a scan of 404s): one series for all of
        // them, so that it never takes the label of a real route.
        let route = if event.known_route { event.route } else { RAW_PATH };
        let table = self.shared.table.load();
        let hash = self.shared.hasher.hash_one((event.tier.name(), route));
        let made;
        let series = match table.find(hash, event.tier.name(), route) {
            Some(series) => series,
            None => {
                made = self.shared.series(hash, event.tier.name(), route);
                &made
            }
        };
        let decision = match event.outcome {
            Outcome::Admitted(d) => {
                series.decision(Word::Admitted);
                d
            }
            Outcome::Delayed(d) => {
                series.decision(Word::Delayed);
                d
            }
            Outcome::Settled(d) => {
                // Counters only grow: an extra charge is counted, a refund is not taken back.
                let extra = d.charged().saturating_sub(event.cost);
                if extra > 0 {
                    series.tokens().increment(extra);
                }
                return;
            }
            Outcome::Degraded(d, band) => {
                series.decision(Word::Degraded);
                series.degraded(band);
                d
            }
            Outcome::Rejected(d) => {
                series.decision(Word::Rejected);
                d
            }
            Outcome::Exceeds(d) => {
                series.decision(Word::Exceeds);
                d
            }
            Outcome::StoreFault(_) => {
                series.decision(Word::StoreFault);
                series.store_fault();
                return;
            }
            Outcome::ShadowRejected(decision) => {
                // Forwarded, charged nothing: counted, and the standing recorded when there is one.
                series.decision(Word::ShadowRejected);
                match decision {
                    Some(d) => d,
                    None => return,
                }
            }
        };
        if decision.charged() > 0 {
            series.tokens().increment(decision.charged());
        }
        series.ratio.record(decision.headline().fraction());
        let now = decision.now().as_nanos();
        let due = self.shared.next_publish.load(Ordering::Relaxed);
        if now >= due
            && self
                .shared
                .next_publish
                .compare_exchange(
                    due,
                    now.saturating_add(PUBLISH_EVERY.as_nanos()),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.shared.publish();
        }
    }
}

/// An `outcome` label value; its discriminant is its index in [`Series::decisions`].
#[derive(Debug, Clone, Copy)]
enum Word {
    Admitted,
    Delayed,
    Degraded,
    Rejected,
    Exceeds,
    StoreFault,
    ShadowRejected,
}

impl Word {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::Delayed => "delayed",
            Self::Degraded => "degraded",
            Self::Rejected => "rejected",
            Self::Exceeds => "exceeds",
            Self::StoreFault => "store_fault",
            Self::ShadowRejected => "shadow_rejected",
        }
    }
}

/// What every clone of one observer shares.
#[derive(Debug)]
struct Shared {
    /// The series seen so far, read without a lock; replaced (under `labels`) when a new
    /// (tier, route) pair appears.
    table: ArcSwap<Table>,
    /// The label values given out, and their caps: changed only by a new pair.
    labels: Mutex<Labels>,
    /// When the request path publishes the histogram buckets next (nanoseconds, the
    /// decisions' clock).
    next_publish: AtomicU64,
    /// Hashes (tier, route) for the table.
    hasher: foldhash::fast::RandomState,
}

impl Shared {
    /// The series of (`tier`, `route`), made on first sight (the slow path, under a lock).
    #[cold]
    fn series(&self, hash: u64, tier: &str, route: &str) -> Arc<Series> {
        let mut labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        let table = self.table.load_full();
        if let Some(series) = table.find(hash, tier, route) {
            return series.clone();
        }
        let tier_label = labels.tier(tier);
        let (route_label, known) = labels.route(route);
        let ratio = labels
            .ratios
            .entry(tier_label.clone())
            .or_insert_with(|| Arc::new(Ratio::new(tier_label.clone())))
            .clone();
        let series = Arc::new(Series::new(tier, route, tier_label, route_label, ratio));
        // A route past the cap is counted as `other`, but its raw name does not go in the table
        // (a scan of random paths would grow it without bound): the next request of such a
        // route comes here again. Only chosen label values make the table grow.
        if known {
            let mut next = Table::clone(&table);
            next.by_hash.entry(hash).or_insert_with(|| series.clone());
            self.table.store(Arc::new(next));
        }
        series
    }

    /// Publishes the histogram buckets counted since the last time (allocating nothing, once
    /// the handles exist).
    fn publish(&self) {
        let labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        for ratio in labels.ratios.values() {
            ratio.publish();
        }
    }
}

/// The series seen so far, by the hash of (tier, route).
#[derive(Debug, Default, Clone)]
struct Table {
    by_hash: HashMap<u64, Arc<Series>, BuildPassthrough>,
}

impl Table {
    #[inline]
    fn find(&self, hash: u64, tier: &str, route: &str) -> Option<&Arc<Series>> {
        self.by_hash.get(&hash).filter(|s| &*s.tier == tier && &*s.route == route)
    }
}

/// The label values handed out so far.
#[derive(Debug, Default)]
struct Labels {
    tiers: HashMap<Box<str>, SharedString>,
    routes: HashMap<Box<str>, SharedString>,
    max_tiers: usize,
    max_routes: usize,
    /// One histogram per tier label.
    ratios: HashMap<SharedString, Arc<Ratio>>,
}

impl Labels {
    fn tier(&mut self, tier: &str) -> SharedString {
        Self::label(&mut self.tiers, self.max_tiers, tier).0
    }

    /// The label of `route`; raw paths ([`RAW_PATH`]) are `other`, and have a series (one per
    /// tier) in the table.
    fn route(&mut self, route: &str) -> (SharedString, bool) {
        if route == RAW_PATH {
            return (SharedString::const_str(OTHER), true);
        }
        Self::label(&mut self.routes, self.max_routes, route)
    }

    /// The label value of `value`: itself while fewer than `max` values are known, else
    /// `other`. True when `value` has a label of its own.
    fn label(known: &mut HashMap<Box<str>, SharedString>, max: usize, value: &str) -> (SharedString, bool) {
        if let Some(label) = known.get(value) {
            return (label.clone(), true);
        }
        if known.len() >= max {
            return (SharedString::const_str(OTHER), false);
        }
        let label = SharedString::from(Arc::<str>::from(value));
        known.insert(value.into(), label.clone());
        (label, true)
    }
}

/// The handles of one (tier, route) label pair, each registered on first use.
#[derive(Debug)]
struct Series {
    /// The tier name and route this series answers for (the table's key).
    tier: Box<str>,
    route: Box<str>,
    tier_label: SharedString,
    route_label: SharedString,
    decisions: [OnceLock<Counter>; 7],
    degraded: [OnceLock<Counter>; 3],
    tokens: OnceLock<Counter>,
    store_faults: OnceLock<Counter>,
    ratio: Arc<Ratio>,
}

impl Series {
    fn new(
        tier: &str,
        route: &str,
        tier_label: SharedString,
        route_label: SharedString,
        ratio: Arc<Ratio>,
    ) -> Self {
        Self {
            tier: tier.into(),
            route: route.into(),
            tier_label,
            route_label,
            decisions: Default::default(),
            degraded: Default::default(),
            tokens: OnceLock::new(),
            store_faults: OnceLock::new(),
            ratio,
        }
    }

    fn labels(&self) -> [Label; 2] {
        [Label::new("tier", self.tier_label.clone()), Label::new("route", self.route_label.clone())]
    }

    #[inline]
    fn decision(&self, outcome: Word) {
        self.decisions[outcome as usize]
            .get_or_init(|| {
                let [tier, route] = self.labels();
                counter!(DECISIONS, vec![tier, route, Label::new("outcome", outcome.as_str())])
            })
            .increment(1);
    }

    #[inline]
    fn degraded(&self, band: Band) {
        let (index, word) = match band {
            Band::Cached => (0, "cached"),
            Band::Minimal => (1, "minimal"),
            Band::Full => (2, "full"),
        };
        self.degraded[index]
            .get_or_init(|| {
                let [tier, route] = self.labels();
                counter!(DEGRADED, vec![tier, route, Label::new("band", word)])
            })
            .increment(1);
    }

    #[inline]
    fn tokens(&self) -> &Counter {
        self.tokens.get_or_init(|| counter!(TOKENS_CHARGED, self.labels().to_vec()))
    }

    fn store_fault(&self) {
        self.store_faults
            .get_or_init(|| counter!(STORE_FAULTS, vec![Label::new("tier", self.tier_label.clone())]))
            .increment(1);
    }
}

/// One tier's [`REMAINING_RATIO`] histogram: counted here, published now and then.
#[derive(Debug)]
struct Ratio {
    tier: SharedString,
    /// Decisions per bucket (not cumulative) since the last publication.
    buckets: [AtomicU64; BUCKETS],
    /// Their sum, in millionths.
    sum: AtomicU64,
    handles: OnceLock<RatioHandles>,
}

#[derive(Debug)]
struct RatioHandles {
    buckets: [Counter; BUCKETS],
    count: Counter,
    sum: Gauge,
}

impl Ratio {
    fn new(tier: SharedString) -> Self {
        Self { tier, buckets: Default::default(), sum: AtomicU64::new(0), handles: OnceLock::new() }
    }

    /// Counts one decision that left `ratio` of the capacity.
    #[inline]
    fn record(&self, ratio: f64) {
        self.buckets[bucket(ratio)].fetch_add(1, Ordering::Relaxed);
        let micros = (ratio.clamp(0.0, 1.0) * SUM_SCALE).round() as u64;
        if micros > 0 {
            self.sum.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// Adds what was counted since the last time to the recorder's series: each decision is
    /// taken out of the buckets exactly once, so two publications at once never count one
    /// twice.
    fn publish(&self) {
        let counts: [u64; BUCKETS] = std::array::from_fn(|i| self.buckets[i].swap(0, Ordering::Relaxed));
        let sum = self.sum.swap(0, Ordering::Relaxed);
        let total: u64 = counts.iter().sum();
        if total == 0 && sum == 0 {
            return;
        }
        let handles = self.handles.get_or_init(|| {
            let tier = || Label::new("tier", self.tier.clone());
            RatioHandles {
                buckets: std::array::from_fn(|i| {
                    counter!(RATIO_BUCKET, vec![tier(), Label::new("le", BOUND_LABELS[i])])
                }),
                count: counter!(RATIO_COUNT, vec![tier()]),
                sum: gauge!(RATIO_SUM, vec![tier()]),
            }
        });
        let mut cumulative = 0;
        for (handle, count) in handles.buckets.iter().zip(counts) {
            cumulative += count;
            // Every bucket is written at least once, so a scrape shows the whole histogram.
            handle.increment(cumulative);
        }
        handles.count.increment(total);
        handles.sum.increment(sum as f64 / SUM_SCALE);
    }
}

/// The bucket of `ratio`: the first bound it does not exceed (Prometheus' `le`), else `+Inf`.
#[inline]
fn bucket(ratio: f64) -> usize {
    if ratio.is_nan() || ratio > 1.0 {
        return BUCKETS - 1; // above every bound
    }
    if ratio <= 0.0 {
        return 0;
    }
    // ceil(10·r) is the bucket, except where 10·r rounds up past a bound r equals.
    let i = ((ratio * 10.0).ceil() as usize).min(BOUNDS.len() - 1);
    if ratio <= BOUNDS[i - 1] {
        i - 1
    } else {
        i
    }
}

/// The table's keys are already hashes.
#[derive(Debug, Default, Clone, Copy)]
struct BuildPassthrough;

impl BuildHasher for BuildPassthrough {
    type Hasher = Passthrough;
    fn build_hasher(&self) -> Passthrough {
        Passthrough(0)
    }
}

#[derive(Debug)]
struct Passthrough(u64);

impl std::hash::Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::Method;
    use metrics::{CounterFn, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder};
    use nonzero_ext::nonzero;

    use super::*;
    use crate::algorithm::Quota;
    use crate::key::Key as ClientKey;
    use crate::policy::{Limits, TierSpec};
    use crate::store::{Decision, PolicyState, StoreError, Verdict};

    /// A recorder keeping every counter and gauge by its rendered key: `name{label=value,…}`.
    #[derive(Default)]
    struct Recorded(Mutex<BTreeMap<String, Arc<Cell>>>);

    #[derive(Default)]
    struct Cell(AtomicU64);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.fetch_max(value, Ordering::Relaxed);
        }
    }

    impl GaugeFn for Cell {
        fn increment(&self, value: f64) {
            let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((f64::from_bits(v) + value).to_bits())
            });
        }
        fn decrement(&self, value: f64) {
            GaugeFn::increment(self, -value);
        }
        fn set(&self, value: f64) {
            self.0.store(value.to_bits(), Ordering::Relaxed);
        }
    }

    impl Recorded {
        fn cell(&self, key: &Key) -> Arc<Cell> {
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            self.0.lock().unwrap().entry(name).or_default().clone()
        }

        fn get(&self, name: &str) -> Option<u64> {
            self.0.lock().unwrap().get(name).map(|c| c.0.load(Ordering::Relaxed))
        }

        fn gauge(&self, name: &str) -> Option<f64> {
            self.get(name).map(f64::from_bits)
        }
    }

    impl Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.cell(key))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            panic!("MetricsObserver records no histogram samples")
        }
    }

    fn limits() -> Limits {
        Limits::builder()
            .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))))
            .build()
            .unwrap()
    }

    /// A decision at `now` seconds that charged `charged` and left `remaining` of 10.
    fn decision(verdict: Verdict, now: u64, charged: u64, remaining: u64) -> Decision {
        Decision::new(verdict, Nanos::from_secs(now), 1.0, charged).with(PolicyState {
            index: 0,
            limit: 10,
            remaining,
            reset_after: Nanos::ZERO,
            retry_after: Nanos::ZERO,
            next_after: Nanos::ZERO,
        })
    }

    fn tell(observer: &MetricsObserver, limits: &Limits, route: &str, outcome: Outcome<'_>) {
        tell_raw(observer, limits, route, true, outcome)
    }

    fn tell_raw(
        observer: &MetricsObserver,
        limits: &Limits,
        route: &str,
        known_route: bool,
        outcome: Outcome<'_>,
    ) {
        let key = ClientKey::new("alice");
        let event = Event {
            key: &key,
            name: None,
            email: None,
            identified: true,
            tier: limits.default_tier(),
            method: &Method::GET,
            route,
            known_route,
            cost: 1,
            outcome,
            mode: crate::policy::Mode::Enforce,
        };
        observer.on_event(&event);
    }

    #[test]
    fn counts_each_outcome_with_handles_kept_per_series() {
        let recorded = Recorded::default();
        let limits = limits();
        metrics::with_local_recorder(&recorded, || {
            let observer = MetricsObserver::new();
            for remaining in [9, 8, 7] {
                tell(
                    &observer,
                    &limits,
                    "/a",
                    Outcome::Admitted(&decision(Verdict::Admitted, 0, 1, remaining)),
                );
            }
            tell(&observer, &limits, "/a", Outcome::Rejected(&decision(Verdict::Rejected, 0, 0, 0)));
            let degraded = decision(Verdict::Admitted, 0, 2, 0);
            tell(&observer, &limits, "/b", Outcome::Degraded(&degraded, Band::Minimal));
            tell(&observer, &limits, "/b", Outcome::Exceeds(&decision(Verdict::Exceeds, 0, 0, 10)));
            tell(&observer, &limits, "/b", Outcome::StoreFault(&StoreError::new("down", None)));
            tell(&observer, &limits, "/b", Outcome::Delayed(&decision(Verdict::Admitted, 0, 1, 0)));
            // Settled from the answer: 4 where 1 was charged up front (3 more), then a refund.
            tell(&observer, &limits, "/b", Outcome::Settled(&decision(Verdict::Admitted, 0, 4, 0)));
            tell(&observer, &limits, "/b", Outcome::Settled(&decision(Verdict::Admitted, 0, 0, 0)));
            // One table entry per (tier, route) seen.
            assert_eq!(observer.shared.table.load().by_hash.len(), 2);
        });
        let decisions = |route: &str, outcome: &str| {
            recorded.get(&format!("{DECISIONS}{{tier=anonymous,route={route},outcome={outcome}}}"))
        };
        assert_eq!(decisions("/a", "admitted"), Some(3));
        assert_eq!(decisions("/a", "rejected"), Some(1));
        assert_eq!(decisions("/a", "degraded"), None, "a series is registered only once used");
        assert_eq!(decisions("/b", "degraded"), Some(1));
        assert_eq!(decisions("/b", "exceeds"), Some(1));
        assert_eq!(decisions("/b", "store_fault"), Some(1));
        assert_eq!(decisions("/b", "delayed"), Some(1));
        assert_eq!(decisions("/b", "settled"), None, "a settlement is not a decision");
        assert_eq!(recorded.get(&format!("{TOKENS_CHARGED}{{tier=anonymous,route=/a}}")), Some(3));
        assert_eq!(recorded.get(&format!("{TOKENS_CHARGED}{{tier=anonymous,route=/b}}")), Some(2 + 1 + 3));
        assert_eq!(recorded.get(&format!("{DEGRADED}{{tier=anonymous,route=/b,band=minimal}}")), Some(1));
        assert_eq!(recorded.get(&format!("{STORE_FAULTS}{{tier=anonymous}}")), Some(1));
    }

    #[test]
    fn routes_past_the_cap_are_counted_as_other_and_never_enter_the_table() {
        let recorded = Recorded::default();
        let limits = limits();
        metrics::with_local_recorder(&recorded, || {
            let observer = MetricsObserver::new().max_routes(2);
            for i in 0..50 {
                let route = format!("/scan/{i}");
                tell(&observer, &limits, &route, Outcome::Admitted(&decision(Verdict::Admitted, 0, 1, 9)));
            }
            assert_eq!(
                observer.shared.table.load().by_hash.len(),
                2,
                "only routes with a label of their own"
            );
        });
        let admitted = |route: &str| {
            recorded.get(&format!("{DECISIONS}{{tier=anonymous,route={route},outcome=admitted}}"))
        };
        assert_eq!(admitted("/scan/0"), Some(1));
        assert_eq!(admitted("/scan/1"), Some(1));
        assert_eq!(admitted("/scan/2"), None);
        assert_eq!(admitted("other"), Some(48));
    }

    #[test]
    fn the_histogram_is_published_cumulatively_at_most_once_a_second_and_on_flush() {
        let recorded = Recorded::default();
        let limits = limits();
        let bucket = |le: &str| recorded.get(&format!("{RATIO_BUCKET}{{tier=anonymous,le={le}}}"));
        let count = || recorded.get(&format!("{RATIO_COUNT}{{tier=anonymous}}"));
        metrics::with_local_recorder(&recorded, || {
            let observer = MetricsObserver::new();
            // The first decision publishes at once (nothing was published yet): remaining 9/10.
            tell(&observer, &limits, "/a", Outcome::Admitted(&decision(Verdict::Admitted, 100, 1, 9)));
            assert_eq!(
                (bucket("0.8"), bucket("0.9"), bucket("1"), bucket("+Inf")),
                (Some(0), Some(1), Some(1), Some(1))
            );
            // Within the second: counted, not yet published.
            for remaining in [5, 0, 0] {
                tell(
                    &observer,
                    &limits,
                    "/a",
                    Outcome::Admitted(&decision(Verdict::Admitted, 100, 1, remaining)),
                );
            }
            assert_eq!(count(), Some(1));
            // A second later, the next decision publishes everything counted so far.
            tell(&observer, &limits, "/a", Outcome::Rejected(&decision(Verdict::Rejected, 101, 0, 0)));
            assert_eq!(count(), Some(5));
            assert_eq!(
                BOUND_LABELS.map(bucket),
                [3, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5].map(Some),
                "cumulative: 0, 0, 0 | 0.5 | 0.9"
            );
            assert_eq!(recorded.gauge(&format!("{RATIO_SUM}{{tier=anonymous}}")), Some(1.4));
            // Within the next second, only a flush publishes.
            tell(&observer, &limits, "/a", Outcome::Admitted(&decision(Verdict::Admitted, 101, 1, 10)));
            assert_eq!(count(), Some(5));
            observer.shared.publish();
            assert_eq!(count(), Some(6));
            assert_eq!(bucket("0.9"), Some(5));
            assert_eq!(bucket("1"), Some(6));
            // Nothing new: publishing again changes nothing.
            observer.shared.publish();
            assert_eq!(count(), Some(6));
        });
    }

    /// Issue 11 (suspected, confirmed): the first 100 route values got their own label, so a
    /// scan of 404s on raw paths took every slot before the real routes got one. Raw paths
    /// share one series, `other`, which takes no route's slot and one table entry per tier.
    #[test]
    fn a_scan_of_raw_paths_never_takes_a_real_routes_label() {
        let recorded = Recorded::default();
        let limits = limits();
        metrics::with_local_recorder(&recorded, || {
            let observer = MetricsObserver::new().max_routes(1);
            let admitted = decision(Verdict::Admitted, 0, 1, 9);
            for i in 0..1_000 {
                tell_raw(
                    &observer,
                    &limits,
                    &format!("/wp-admin/{i}.php"),
                    false,
                    Outcome::Admitted(&admitted),
                );
            }
            tell(&observer, &limits, "/api/orders/{id}", Outcome::Admitted(&admitted));
            assert_eq!(observer.shared.table.load().by_hash.len(), 2);
        });
        let admitted = |route: &str| {
            recorded.get(&format!("{DECISIONS}{{tier=anonymous,route={route},outcome=admitted}}"))
        };
        assert_eq!(admitted("/api/orders/{id}"), Some(1));
        assert_eq!(admitted("other"), Some(1_000));
        assert!(recorded.0.lock().unwrap().keys().all(|k| !k.contains("wp-admin")));
    }

    #[test]
    fn routes_past_the_cap_are_other() {
        let mut labels = Labels { max_routes: 2, max_tiers: 10, ..Labels::default() };
        assert_eq!(&*labels.route("/a").0, "/a");
        assert_eq!(&*labels.route("/b").0, "/b");
        assert_eq!(labels.route("/c"), (SharedString::const_str("other"), false));
        assert_eq!(labels.route("/a"), (SharedString::const_str("/a"), true));
    }

    /// Each ratio lands in the first bucket whose bound it does not exceed, exactly as a
    /// Prometheus histogram with these bounds would count it.
    #[test]
    fn buckets_match_prometheus_le() {
        for (ratio, expected) in [
            (0.0, 0),
            (1e-9, 1),
            (0.1, 1),
            (0.1000001, 2),
            (0.3, 3),
            (3.0 / 10.0, 3),
            (0.7, 7),
            (7.0 / 10.0, 7),
            (0.95, 10),
            (1.0, 10),
            (1.5, 11),
            (f64::NAN, 11),
            (-0.5, 0),
        ] {
            assert_eq!(bucket(ratio), expected, "{ratio}");
        }
        for remaining in 0..=1_000u64 {
            for limit in [3u64, 7, 10, 30, 1_000] {
                let ratio = remaining.min(limit) as f64 / limit as f64;
                let expected = BOUNDS.iter().position(|&b| ratio <= b).unwrap_or(BUCKETS - 1);
                assert_eq!(bucket(ratio), expected, "{remaining}/{limit}");
            }
        }
    }
}
